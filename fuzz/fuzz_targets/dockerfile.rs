//! Dockerfile rewriting never panics and keeps the number of lines.
#![no_main]

use std::collections::BTreeMap;

use habitus::dockerfile::{from_images, rewrite};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut images = BTreeMap::new();
    images.insert("app".to_string(), "app-uid".to_string());
    images.insert("org/base:1".to_string(), "org/base-uid:1".to_string());
    if let Ok(out) = rewrite(text, &images) {
        assert_eq!(out.text.lines().count(), text.lines().count());
    }
    let _ = from_images(text);
});
