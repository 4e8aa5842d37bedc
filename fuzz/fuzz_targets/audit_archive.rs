//! Reading an arbitrary image archive never panics.
#![no_main]

use habitus::audit::{audit_archive, Scanner};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let (scanner, _) = Scanner::new([("s", &b"secret-value"[..])]);
    if let Ok(audit) = audit_archive(&scanner, data) {
        let _ = audit.shadowed();
    }
});
