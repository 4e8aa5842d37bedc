//! Extracting an arbitrary byte stream as an artifact never panics and
//! never creates anything outside the destination directory.
#![no_main]

use habitus::artifacts::extract;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dest = tmp.path().join("dest");
    std::fs::create_dir(&dest).expect("create dest");
    let _ = extract(data, &dest);
    let mut names: Vec<_> = std::fs::read_dir(tmp.path())
        .expect("read tmp")
        .map(|e| e.expect("entry").file_name())
        .collect();
    names.sort();
    assert_eq!(names, ["dest"], "an entry landed outside the destination");
    // The destination is still a directory, not something an entry
    // replaced it with.
    let meta = std::fs::symlink_metadata(&dest).expect("dest");
    assert!(meta.is_dir(), "the destination was replaced");
});
