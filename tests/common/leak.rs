//! Proof that a secret reached no part of an image: its `docker save`
//! archive (config, manifest, every layer tar and every file in them) and
//! its `docker history --no-trunc` must not contain the secret's bytes.

use std::io::Read;
use std::path::Path;

use super::docker;

/// Panics, naming where, if `secret` occurs anywhere in `image`.
#[track_caller]
pub fn assert_no_secret_in_image(image: &str, secret: &[u8]) {
    assert!(!secret.is_empty(), "an empty secret is in every image");
    let dir = tempfile::tempdir().expect("tempdir");
    let archive = dir.path().join("image.tar");
    docker(&["save", "-o", archive.to_str().unwrap(), image]);
    let hits = scan_save(&archive, secret);
    assert!(
        hits.is_empty(),
        "the secret is in image `{image}`: {}",
        hits.join(", ")
    );
    let history = docker(&["history", "--no-trunc", "--format", "{{.CreatedBy}}", image]);
    assert!(
        find(history.as_bytes(), secret).is_none(),
        "the secret is in the history of `{image}`"
    );
    let inspect = docker(&["image", "inspect", image]);
    assert!(
        find(inspect.as_bytes(), secret).is_none(),
        "the secret is in the config of `{image}`"
    );
}

/// Where `secret` occurs in a `docker save` archive: `archive` itself,
/// entries of it, and entries of every layer tar inside it.
fn scan_save(archive: &Path, secret: &[u8]) -> Vec<String> {
    let bytes = std::fs::read(archive).expect("read the saved image");
    let mut hits = Vec::new();
    if find(&bytes, secret).is_some() {
        hits.push("the saved archive".to_string());
    }
    let mut outer = tar::Archive::new(bytes.as_slice());
    for entry in outer.entries().expect("read the saved image") {
        let mut entry = entry.expect("read an entry of the saved image");
        let name = entry.path().unwrap().display().to_string();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        if find(&data, secret).is_some() {
            hits.push(format!("entry `{name}`"));
        }
        assert!(
            !data.starts_with(&[0x1f, 0x8b]),
            "`{name}` is compressed; this check reads uncompressed layers only"
        );
        // Layer tars: legacy `<id>/layer.tar`, OCI `blobs/sha256/<digest>`.
        if name.ends_with(".tar") || name.starts_with("blobs/") {
            let mut layer = tar::Archive::new(data.as_slice());
            let Ok(entries) = layer.entries() else {
                continue;
            };
            for file in entries.flatten() {
                let mut file = file;
                let path = file
                    .path()
                    .map(|p| p.display().to_string())
                    .unwrap_or_default();
                let mut content = Vec::new();
                if file.read_to_end(&mut content).is_ok() && find(&content, secret).is_some() {
                    hits.push(format!("`{path}` in layer `{name}`"));
                }
                if find(path.as_bytes(), secret).is_some() {
                    hits.push(format!("a file name in layer `{name}`"));
                }
            }
        }
    }
    hits
}

/// The first offset of `needle` in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    if needle.is_empty() || needle.len() > haystack.len() {
        return None;
    }
    haystack.windows(needle.len()).position(|w| w == needle)
}

#[cfg(test)]
mod tests {
    use super::find;

    #[test]
    fn find_locates_needles() {
        assert_eq!(find(b"abcdef", b"cd"), Some(2));
        assert_eq!(find(b"abc", b"abcd"), None);
        assert_eq!(find(b"abc", b""), None);
    }
}
