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
/// its members, and the files of every layer its `manifest.json` lists
/// (plain, gzip or zstd). Panics if a listed layer cannot be read to its
/// end or if the archive lists no layer: a check that read nothing proves
/// nothing.
fn scan_save(archive: &Path, secret: &[u8]) -> Vec<String> {
    let bytes = std::fs::read(archive).expect("read the saved image");
    let mut hits = Vec::new();
    if find(&bytes, secret).is_some() {
        hits.push("the saved archive".to_string());
    }
    let mut members = std::collections::BTreeMap::new();
    let mut outer = tar::Archive::new(bytes.as_slice());
    for entry in outer.entries().expect("read the saved image") {
        let mut entry = entry.expect("read an entry of the saved image");
        let name = entry.path().unwrap().display().to_string();
        let target = entry.link_name().unwrap().map(|t| t.display().to_string());
        let mut data = Vec::new();
        entry.read_to_end(&mut data).unwrap();
        if find(&data, secret).is_some() {
            hits.push(format!("entry `{name}`"));
        }
        match target {
            // Docker 25+ links `<id>/layer.tar` to `../blobs/sha256/…`.
            Some(target) => {
                let dir = Path::new(&name).parent().unwrap_or(Path::new(""));
                let resolved = normalize(&dir.join(target).display().to_string());
                members.insert(normalize(&name), Member::Link(resolved));
            }
            None => {
                members.insert(normalize(&name), Member::Data(data));
            }
        }
    }
    let manifest: serde_json::Value = serde_json::from_slice(
        member(&members, "manifest.json").expect("the saved image has a manifest.json"),
    )
    .expect("manifest.json is JSON");
    let layers: Vec<String> = manifest[0]["Layers"]
        .as_array()
        .expect("manifest.json lists layers")
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect();
    assert!(!layers.is_empty(), "the saved image lists no layer");
    for name in &layers {
        let data = member(&members, name)
            .unwrap_or_else(|| panic!("layer `{name}` is missing from the saved image"));
        let layer = habitus::layer::Layer::open(data)
            .unwrap_or_else(|e| panic!("layer `{name}` cannot be read: {e}"));
        let mut files = tar::Archive::new(layer);
        for file in files
            .entries()
            .unwrap_or_else(|e| panic!("layer `{name}` is not a tar: {e}"))
        {
            let mut file = file.unwrap_or_else(|e| panic!("layer `{name}`: {e}"));
            let path = file.path().unwrap().display().to_string();
            let mut content = Vec::new();
            file.read_to_end(&mut content)
                .unwrap_or_else(|e| panic!("`{path}` in layer `{name}`: {e}"));
            if find(&content, secret).is_some() {
                hits.push(format!("`{path}` in layer `{name}`"));
            }
            if find(path.as_bytes(), secret).is_some() {
                hits.push(format!("a file name in layer `{name}`"));
            }
        }
        files
            .into_inner()
            .finish()
            .unwrap_or_else(|e| panic!("layer `{name}` cannot be read to its end: {e}"));
    }
    hits
}

enum Member {
    Data(Vec<u8>),
    Link(String),
}

/// The bytes of member `name`, following links.
fn member<'m>(
    members: &'m std::collections::BTreeMap<String, Member>,
    name: &str,
) -> Option<&'m [u8]> {
    let mut name = normalize(name);
    for _ in 0..8 {
        match members.get(&name)? {
            Member::Data(data) => return Some(data),
            Member::Link(target) => name = target.clone(),
        }
    }
    None
}

/// `a/./b/../c` → `a/c`.
fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    parts.join("/")
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
