//! The protobuf messages of a BuildKit build (the solve status the daemon
//! streams, the session's requests) and their progress lines on arbitrary
//! bytes: never a panic, and a decoded status always prints.
#![no_main]

use habitus::engine::buildkit::proto::{status_response, string_field};
use habitus::engine::buildkit::Progress;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = string_field(data, 1);
    if let Ok(status) = status_response(data) {
        let mut progress = Progress::default();
        progress.feed(status.clone(), &|_: &str| {});
        progress.feed(status, &|_: &str| {});
        progress.finish(&|_: &str| {});
        let (total, cached) = progress.counts();
        assert!(cached <= total);
    }
});
