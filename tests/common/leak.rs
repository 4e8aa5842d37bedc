//! Proof that a secret reached no part of an image: its `docker save`
//! archive (config, manifest, every layer tar and every file in them) and
//! its `docker history --no-trunc` must not contain the secret's bytes.

use std::io::Read;

use super::docker;

/// Panics, naming where, if `secret` occurs anywhere in `image`.
#[track_caller]
pub fn assert_no_secret_in_image(image: &str, secret: &[u8]) {
    assert!(!secret.is_empty(), "an empty secret is in every image");
    let hits = scan_save(image, secret);
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

/// Where `secret` occurs in `docker save IMAGE`: the archive itself, its
/// members, and every file (name and content) of every layer, read through
/// [`saved_image`](super::saved::saved_image), which fails the test on a
/// layer it cannot read.
fn scan_save(image: &str, secret: &[u8]) -> Vec<String> {
    let saved = super::saved::saved_image(image);
    let mut hits = Vec::new();
    if find(&saved.archive, secret).is_some() {
        hits.push("the saved archive".to_string());
    }
    for (name, data) in &saved.members {
        if find(data, secret).is_some() {
            hits.push(format!("entry `{name}`"));
        }
    }
    for layer in &saved.layers {
        let mut files = tar::Archive::new(layer.tar.as_slice());
        for file in files.entries().unwrap() {
            let mut file = file.unwrap();
            let path = file.path().unwrap().display().to_string();
            let mut content = Vec::new();
            file.read_to_end(&mut content).unwrap();
            if find(&content, secret).is_some() {
                hits.push(format!("`{path}` in layer `{}`", layer.member));
            }
            if find(path.as_bytes(), secret).is_some() {
                hits.push(format!("a file name in layer `{}`", layer.member));
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
