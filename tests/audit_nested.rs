//! `habitus audit` on keys as users reshape them with the host's own tools
//! (`base64`, `openssl base64`, `xxd -p`, CRLF, `gzip`, `zstd`, `zip`,
//! `tar czf`), on archives nested inside archives, and on a zip bomb and a
//! 20-deep nesting, which are named as not searched in bounded memory.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use crate::common::{base_image, docker, Cleanup, Habitus, Output};

/// Peak RSS allowed to an audit of a bomb or a deep nesting.
const PEAK_RSS_LIMIT_KIB: u64 = 64 * 1024;

/// Runs `script` with `sh -eu` in `dir`; panics with its stderr on failure.
#[track_caller]
fn sh(dir: &Path, script: &str) {
    let out = Command::new("sh")
        .args(["-euc", script])
        .current_dir(dir)
        .stdin(Stdio::null())
        .output()
        .expect("run sh");
    assert!(
        out.status.success(),
        "`{script}` failed (needs openssh-client, openssl, xxd, zip, zstd; `.ci/run` installs them): {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A new private key without passphrase in `dir`, by `ssh-keygen`:
/// `rsa` (4096 bits, PEM) or `ed25519`. Returns its path.
fn keygen(dir: &Path, kind: &str) -> PathBuf {
    let name = format!("id_{kind}");
    let args = match kind {
        "rsa" => "-t rsa -b 4096 -m PEM",
        _ => "-t ed25519",
    };
    sh(dir, &format!("ssh-keygen -q {args} -N '' -C '' -f {name}"));
    dir.join(name)
}

fn audit(args: &[&str]) -> Output {
    Habitus::new().no_workdir().arg("audit").args(args).run()
}

/// Builds `FROM <base> / COPY files/ /leak/` from `context` (which holds
/// `files/`) as `tag`.
fn build_leak_image(context: &Path, tag: &str) {
    std::fs::write(
        context.join("Dockerfile"),
        format!("FROM {}\nCOPY files/ /leak/\n", base_image()),
    )
    .unwrap();
    docker(&["build", "-q", "-t", tag, context.to_str().unwrap()]);
}

/// The line of `stdout` that reports a hit `at `path``.
fn hit_line<'o>(stdout: &'o str, path: &str) -> Option<&'o str> {
    let at = format!("at `{path}`");
    stdout
        .lines()
        .find(|l| l.contains(" secret `") && l.contains(&at))
}

/// A line of the key's body (not its armour): what must never be printed.
fn body_line(key: &str) -> &str {
    key.lines()
        .find(|l| !l.starts_with("-----") && l.len() >= 40)
        .expect("a body line")
}

/// Where a reshaped key lands in the image and what its hit line names:
/// the encoding and the containers it is inside (none for a plain file).
struct Expected {
    path: String,
    encoding: &'static str,
    inside: Option<&'static str>,
}

/// Writes into `context/files/` what users do to the key at `key` with the
/// host's tools, and returns where each lands in the image (under
/// `/leak/`) with what its hit line must say.
fn reshaped_by_tools(key: &Path, context: &Path) -> Vec<Expected> {
    let files = context.join("files");
    std::fs::create_dir_all(files.join("tree/keys")).unwrap();
    let name = key.file_name().unwrap().to_str().unwrap();
    std::fs::copy(key, files.join("tree/keys").join(name)).unwrap();
    std::fs::copy(key, files.join(name)).unwrap();
    let script = format!(
        "base64 {name} > key.b64
basenc --base64url {name} > key.b64url
openssl base64 -in {name} -out key.openssl-b64
base64 -w 64 {name} > key.b64-w64
base64 {name} | sed 's/$/\\r/' > key.b64-crlf
xxd -p {name} > key.hex
xxd -p -u {name} > key.HEX
gzip -c {name} > key.gz
zstd -q -c {name} > key.zst
zip -q key.zip {name}
(cd tree && tar czf ../app.tgz keys/)
rm -r tree {name}"
    );
    sh(&files, &script);
    // Wrapped as the tools wrap: base64 at 76 columns, openssl at 64, xxd's
    // hex at 60; one copy with CRLF.
    let crlf = std::fs::read_to_string(files.join("key.b64-crlf")).unwrap();
    let lines: Vec<&str> = crlf.split_terminator('\n').collect();
    assert!(
        lines.len() > 2 && lines.iter().all(|l| l.ends_with('\r')),
        "`key.b64-crlf` is not CRLF-wrapped ({} lines)",
        lines.len()
    );
    let at = |path: &str, encoding, inside| Expected {
        path: format!("/leak/{path}"),
        encoding,
        inside,
    };
    vec![
        at("key.b64", "base64", None),
        at("key.b64url", "base64", None),
        at("key.openssl-b64", "base64", None),
        at("key.b64-w64", "base64", None),
        at("key.b64-crlf", "base64", None),
        at("key.hex", "hex", None),
        at("key.HEX", "HEX", None),
        at("key.gz", "raw", Some("gzip")),
        at("key.zst", "raw", Some("zstd")),
        at(&format!("key.zip!/{name}"), "raw", Some("zip")),
        at(&format!("app.tgz!/keys/{name}"), "raw", Some("gzip, tar")),
    ]
}

#[test]
fn keys_wrapped_compressed_zipped_or_tarred_by_the_usual_tools_are_found_at_every_path() {
    let c = Cleanup::new("audit-tools");
    let dir = tempfile::tempdir().unwrap();
    let keys = dir.path().join("keys");
    std::fs::create_dir(&keys).unwrap();
    let rsa = keygen(&keys, "rsa");
    let ed25519 = keygen(&keys, "ed25519");

    let mut images = Vec::new();
    for key in [&rsa, &ed25519] {
        let name = key.file_name().unwrap().to_str().unwrap();
        let context = dir.path().join(format!("ctx-{name}"));
        let expected = reshaped_by_tools(key, &context);
        let tag = format!("hb/audit-tools-{}-{}", name.replace('_', "-"), c.uid());
        build_leak_image(&context, &tag);
        images.push((key, tag, expected));
    }

    for (key, tag, expected) in &images {
        let key_text = std::fs::read_to_string(key).unwrap();
        let out = audit(&[tag, "--secret-file", key.to_str().unwrap()]);
        let both = format!("--- stdout\n{}\n--- stderr\n{}", out.stdout, out.stderr);
        assert_eq!(out.code(), Some(1), "{}: {both}", key.display());
        let mut missed = Vec::new();
        for e in expected {
            let Some(line) = hit_line(&out.stdout, &e.path) else {
                missed.push(format!("`{}`: no hit", e.path));
                continue;
            };
            let inside_ok = match e.inside {
                Some(inside) => line.ends_with(&format!(", inside {inside}")),
                None => !line.contains(", inside"),
            };
            let named = format!("secret `{}` ({})", key.display(), e.encoding);
            if !line.contains(&named) || !inside_ok {
                missed.push(format!(
                    "`{}`: expected ({}) inside {:?}: {line}",
                    e.path, e.encoding, e.inside
                ));
            }
        }
        assert!(
            missed.is_empty(),
            "{}:\n{}\n{both}",
            key.display(),
            missed.join("\n")
        );
        // The tgz hit is named inside the archive, not as the archive.
        assert!(
            hit_line(&out.stdout, "/leak/app.tgz").is_none(),
            "the tgz named without its inner path: {both}"
        );
        let line = body_line(&key_text);
        assert!(
            !out.stdout.contains(line) && !out.stderr.contains(line),
            "the key's bytes were printed: {both}"
        );
    }

    // The same tools' output of a different key: clean, archives opened;
    // also for another key of the same type, whose OpenSSH header line is
    // the same.
    let others = dir.path().join("others");
    std::fs::create_dir(&others).unwrap();
    let (rsa2, ed2) = (keygen(&others, "rsa"), keygen(&others, "ed25519"));
    let (rsa_image, ed_image) = (&images[0].1, &images[1].1);
    for (image, other) in [
        (rsa_image, &ed25519),
        (ed_image, &rsa),
        (rsa_image, &rsa2),
        (ed_image, &ed2),
    ] {
        let out = audit(&[image, "--secret-file", other.to_str().unwrap()]);
        assert_eq!(
            out.code(),
            Some(0),
            "{image} with {}:\n--- stdout\n{}\n--- stderr\n{}",
            other.display(),
            out.stdout,
            out.stderr
        );
        assert!(out.stderr.contains("no secret in"), "{}", out.stderr);
        assert!(!out.stdout.contains("not searched"), "{}", out.stdout);
    }
}

#[test]
fn a_key_three_archives_deep_is_found_with_its_inner_path() {
    let c = Cleanup::new("audit-deep3");
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "ed25519");
    let context = dir.path().join("ctx");
    let files = context.join("files");
    std::fs::create_dir_all(files.join("inner")).unwrap();
    std::fs::copy(&key, files.join("inner/id_ed25519")).unwrap();
    // a.tgz (gzip, tar) holding b.zip holding the key.
    sh(
        &files,
        "(cd inner && zip -q ../b.zip id_ed25519) && tar czf a.tgz b.zip && rm -r inner b.zip",
    );
    let tag = format!("hb/audit-deep3-{}", c.uid());
    build_leak_image(&context, &tag);
    let out = audit(&[&tag, "--secret-file", key.to_str().unwrap()]);
    let both = format!("--- stdout\n{}\n--- stderr\n{}", out.stdout, out.stderr);
    assert_eq!(out.code(), Some(1), "{both}");
    let line = hit_line(&out.stdout, "/leak/a.tgz!/b.zip!/id_ed25519")
        .unwrap_or_else(|| panic!("no hit at `/leak/a.tgz!/b.zip!/id_ed25519`: {both}"));
    assert!(line.contains("(raw)"), "{line}");
    assert!(line.contains("gzip, tar, zip"), "{line}");
    let body = std::fs::read_to_string(&key).unwrap();
    let body = body_line(&body);
    assert!(!out.stdout.contains(body) && !out.stderr.contains(body));
}

/// A zip whose one member `zeros` is `mib` MiB of zeros, deflated: the
/// deflate stream of one MiB of zeros, sync-flushed (it refers to nothing
/// before it, so copies of it may follow one another), `mib` times, then
/// an empty final block. About 1 KiB per MiB.
fn zip_bomb(mib: u32) -> Vec<u8> {
    let zeros = vec![0u8; 1 << 20];
    let mut compress = flate2::Compress::new(flate2::Compression::best(), false);
    let mut block = Vec::with_capacity(1 << 16);
    compress
        .compress_vec(&zeros, &mut block, flate2::FlushCompress::Sync)
        .unwrap();
    assert_eq!(compress.total_in(), 1 << 20, "one call deflates the MiB");
    assert!(block.ends_with(&[0, 0, 0xff, 0xff]), "sync-flushed");
    let mut data = Vec::with_capacity(block.len() * mib as usize + 2);
    let mut crc = flate2::Crc::new();
    for _ in 0..mib {
        data.extend_from_slice(&block);
        crc.update(&zeros);
    }
    data.extend_from_slice(&[0x03, 0x00]);
    let size = u32::try_from(u64::from(mib) << 20).expect("under 4 GiB: no zip64");
    let csize = u32::try_from(data.len()).unwrap();
    let name = b"zeros";
    // method 8 (deflate), 1980-01-01 00:00.
    let common = |out: &mut Vec<u8>| {
        for v in [20u16, 0, 8, 0, 0x21] {
            out.extend_from_slice(&v.to_le_bytes());
        }
        for v in [crc.sum(), csize, size] {
            out.extend_from_slice(&v.to_le_bytes());
        }
    };
    let mut zip = Vec::new();
    zip.extend_from_slice(&0x0403_4b50u32.to_le_bytes());
    common(&mut zip);
    zip.extend_from_slice(&(name.len() as u16).to_le_bytes());
    zip.extend_from_slice(&0u16.to_le_bytes());
    zip.extend_from_slice(name);
    zip.extend_from_slice(&data);
    let central = zip.len() as u32;
    zip.extend_from_slice(&0x0201_4b50u32.to_le_bytes());
    zip.extend_from_slice(&0x031eu16.to_le_bytes()); // made by: unix
    common(&mut zip);
    for v in [name.len() as u16, 0, 0, 0, 0] {
        zip.extend_from_slice(&v.to_le_bytes());
    }
    zip.extend_from_slice(&(0o100644u32 << 16).to_le_bytes());
    zip.extend_from_slice(&0u32.to_le_bytes()); // local header at 0
    zip.extend_from_slice(name);
    let central_size = zip.len() as u32 - central;
    zip.extend_from_slice(&0x0605_4b50u32.to_le_bytes());
    for v in [0u16, 0, 1, 1] {
        zip.extend_from_slice(&v.to_le_bytes());
    }
    zip.extend_from_slice(&central_size.to_le_bytes());
    zip.extend_from_slice(&central.to_le_bytes());
    zip.extend_from_slice(&0u16.to_le_bytes());
    zip
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

fn tar_of(name: &str, data: &[u8]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_ustar();
    h.set_size(data.len() as u64);
    h.set_mode(0o644);
    h.set_cksum();
    b.append_data(&mut h, name, data).unwrap();
    b.into_inner().unwrap()
}

/// The peak RSS in KiB that `/usr/bin/time -v` reports on `stderr`.
fn peak_rss_kib(stderr: &str) -> u64 {
    stderr
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no peak RSS from /usr/bin/time:\n{stderr}"))
}

/// `habitus audit ARGS` under `/usr/bin/time -v`: its output (stderr with
/// time's report) and peak RSS in KiB.
fn audit_timed(args: &[&str]) -> (Output, u64) {
    let out = Command::new("/usr/bin/time")
        .arg("-v")
        .arg(env!("CARGO_BIN_EXE_habitus"))
        .arg("audit")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run /usr/bin/time habitus (apt-get install time)");
    let out = Output {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    let rss = peak_rss_kib(&out.stderr);
    (out, rss)
}

/// The stdout line naming `path` (or a path under it, `!/…`) as not searched.
fn not_searched_line<'o>(stdout: &'o str, path: &str) -> Option<&'o str> {
    stdout.lines().find(|l| {
        l.contains("not searched: `")
            && (l.contains(&format!("`{path}`")) || l.contains(&format!("`{path}!/")))
    })
}

#[test]
fn a_zip_bomb_and_a_20_deep_nesting_are_named_not_searched_in_bounded_memory() {
    let c = Cleanup::new("audit-bomb");
    let dir = tempfile::tempdir().unwrap();
    let key = keygen(dir.path(), "ed25519");
    let context = dir.path().join("ctx");
    let files = context.join("files");
    std::fs::create_dir_all(&files).unwrap();
    // 2 GiB of zeros in about 2 MiB.
    let bomb = zip_bomb(2048);
    assert!(bomb.len() < 4 << 20, "{} bytes", bomb.len());
    std::fs::write(files.join("bomb.zip"), &bomb).unwrap();
    // gzip of gzip of … 20 times; a tar holding a tar holding … 20 deep.
    let mut deep_gz = b"twenty gzips down\n".to_vec();
    let mut deep_tar = b"twenty tars down\n".to_vec();
    for level in (1..=20).rev() {
        deep_gz = gzip(&deep_gz);
        deep_tar = tar_of(&format!("d{level}.tar"), &deep_tar);
    }
    std::fs::write(files.join("deep.gz"), &deep_gz).unwrap();
    std::fs::write(files.join("deep.tar"), &deep_tar).unwrap();
    let tag = format!("hb/audit-bomb-{}", c.uid());
    build_leak_image(&context, &tag);
    let key = key.to_str().unwrap();

    let (out, rss) = audit_timed(&[&tag, "--secret-file", key]);
    let both = format!("--- stdout\n{}\n--- stderr\n{}", out.stdout, out.stderr);
    assert_eq!(out.code(), Some(0), "a warning, not a failure: {both}");
    let mut missing = Vec::new();
    for (path, limit) in [
        ("/leak/bomb.zip", None),
        // `gzip nested 8 deep, beyond the limit of 8`
        ("/leak/deep.gz", Some("nested 8 deep")),
        ("/leak/deep.tar", Some("nested 8 deep")),
    ] {
        match not_searched_line(&out.stdout, path) {
            Some(line) => {
                if let Some(limit) = limit {
                    if !(line.contains(limit) && line.contains("limit")) {
                        missing.push(format!("`{path}`: the limit ({limit}) not named: {line}"));
                    }
                }
            }
            None => missing.push(format!("`{path}` not named as not searched")),
        }
    }
    assert!(missing.is_empty(), "{}\n{both}", missing.join("\n"));
    // The bomb stops at its expansion ratio, long before its 2 GiB.
    let bomb_line = not_searched_line(&out.stdout, "/leak/bomb.zip").unwrap();
    assert!(
        bomb_line.contains("expands more than") && bomb_line.contains("limit"),
        "the bomb's limit is not named: {bomb_line}"
    );
    // The nesting is cut where the limit is, with the inner path so far.
    assert!(
        out.stdout.contains(
            "not searched: `/leak/deep.tar!/d1.tar!/d2.tar!/d3.tar!/d4.tar!/d5.tar!/d6.tar!/d7.tar!/d8.tar` in layer "
        ),
        "{both}"
    );
    assert!(
        rss <= PEAK_RSS_LIMIT_KIB,
        "peak RSS {rss} KiB > {PEAK_RSS_LIMIT_KIB} KiB: {both}"
    );
    assert!(out.stderr.contains("no secret in"), "{both}");

    // --strict: what was not searched fails the audit.
    let out = audit(&[&tag, "--secret-file", key, "--strict"]);
    let both = format!("--- stdout\n{}\n--- stderr\n{}", out.stdout, out.stderr);
    assert_eq!(out.code(), Some(2), "{both}");
    assert!(
        not_searched_line(&out.stdout, "/leak/bomb.zip").is_some()
            || not_searched_line(&out.stderr, "/leak/bomb.zip").is_some(),
        "{both}"
    );

    // --json: each not-searched file with its layer, digest, path (as in
    // the layer, as hits' `path`) and reason.
    let top = docker(&["inspect", "--format", "{{len .RootFS.Layers}}", &tag])
        .trim()
        .parse::<u64>()
        .unwrap()
        - 1;
    let out = audit(&[&tag, "--secret-file", key, "--json"]);
    out.assert_code(0);
    let report: serde_json::Value =
        serde_json::from_str(out.stdout.trim()).unwrap_or_else(|e| panic!("{e}: {}", out.stdout));
    let skipped = report["not_searched"]
        .as_array()
        .unwrap_or_else(|| panic!("no `not_searched`: {report}"));
    assert_eq!(skipped.len(), 3, "{report}");
    for (path, reason) in [
        ("leak/bomb.zip", "expands more than"),
        ("leak/deep.gz", "nested 8 deep"),
        (
            "leak/deep.tar!/d1.tar!/d2.tar!/d3.tar!/d4.tar!/d5.tar!/d6.tar!/d7.tar!/d8.tar",
            "nested 8 deep",
        ),
    ] {
        let entry = skipped
            .iter()
            .find(|e| e["path"] == path)
            .unwrap_or_else(|| panic!("`{path}` not in `not_searched`: {report}"));
        assert_eq!(entry["layer"], top, "{entry}");
        let digest = entry["digest"].as_str().unwrap_or_default();
        let hex = digest.strip_prefix("sha256:").unwrap_or(digest);
        assert!(
            hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_hexdigit()),
            "{entry}"
        );
        assert!(
            entry["reason"].as_str().is_some_and(|r| r.contains(reason)),
            "{entry}"
        );
    }
    assert!(
        report["hits"].as_array().is_some_and(Vec::is_empty),
        "{report}"
    );
    assert!(
        report["nested"].as_u64().is_some_and(|n| n >= 3),
        "{report}"
    );
}
