//! Dockerfile rewriting never panics, keeps the number of lines and, with
//! nothing to rewrite, every byte (UTF-8 or not).
#![no_main]

use std::collections::BTreeMap;

use habitus::dockerfile::{from_images, rewrite};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut images = BTreeMap::new();
    images.insert("app".to_string(), "app-uid".to_string());
    images.insert("org/base:1".to_string(), "org/base-uid:1".to_string());
    let newlines = |bytes: &[u8]| bytes.iter().filter(|&&b| b == b'\n').count();
    if let Ok(out) = rewrite(data, &images) {
        assert_eq!(newlines(&out.text), newlines(data));
        assert_eq!(rewrite(data, &BTreeMap::new()).unwrap().text, data);
    }
    let _ = from_images(data);
});
