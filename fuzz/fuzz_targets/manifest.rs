//! build.yml parsing and validation never panics, whatever the text.
#![no_main]

use std::path::Path;
use std::sync::OnceLock;

use habitus::manifest::{parse, EnvSource, LoadOptions};
use habitus::model::SecretKind;
use libfuzzer_sys::fuzz_target;

fn workdir() -> &'static Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("Dockerfile"), "FROM scratch\n").unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        dir
    })
    .path()
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let env = EnvSource::Given(Default::default());
    let file = workdir().join("build.yml");
    let opts = LoadOptions {
        file: &file,
        workdir: workdir(),
        env: &env,
        sec_providers: &SecretKind::ALL,
        untrusted: None,
    };
    if let Err(diagnostics) = parse(text, &opts) {
        // Every error renders.
        let _ = diagnostics.to_string();
    }
});
