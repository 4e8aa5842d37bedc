//! The protobuf messages of a BuildKit build (the solve status the daemon
//! streams, the session's requests, the FileSync packets a receiver sends)
//! and their progress lines on arbitrary bytes: never a panic, and a
//! decoded status always prints.
#![no_main]

use habitus::engine::buildkit::filesync::{incoming, next_message};
use habitus::engine::buildkit::proto::{agent_id, credentials_host, secret_id, status_response};
use habitus::engine::buildkit::Progress;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = secret_id(data);
    let _ = credentials_host(data);
    let _ = agent_id(data);
    let _ = incoming(data);
    let mut pending = data.to_vec();
    while let Ok(Some(message)) = next_message(&mut pending) {
        let _ = incoming(&message);
    }
    if let Ok(status) = status_response(data) {
        let mut progress = Progress::default();
        progress.feed(status.clone(), &|_: &str| {});
        progress.feed(status, &|_: &str| {});
        progress.finish(&|_: &str| {});
        let (total, cached) = progress.counts();
        assert!(cached <= total);
    }
});
