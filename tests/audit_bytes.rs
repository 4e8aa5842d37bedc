//! `habitus audit` reads every byte an image ships: bytes after a layer
//! tar's end-of-archive blocks, tar header fields no tar reader returns,
//! gzip header fields, every platform of an OCI index (and says which
//! platforms it could not search), records of any size in bounded memory;
//! and a build searches each step's secrets by value, whatever their names.
//!
//! Crafted archives are served by a stand-in daemon that streams them
//! (`common/stream_daemon.rs`); the registry test and the build run on the
//! real daemon (Docker 20.10, or Docker 26 with the containerd image store).

use std::io::{Read, Write};
use std::process::{Command, Stdio};
use std::sync::Arc;

use crate::common::{docker, from_base, image_exists, project, Cleanup, Habitus, Output};

#[path = "common/stream_daemon.rs"]
mod stream_daemon;

const SECRET: &str = "hunter2-the-deploy-key-0xC0FFEE";

/// Peak RSS habitus may reach on any archive.
const MAX_RSS_KIB: u64 = 64 * 1024;

// ---------------------------------------------------------------------------
// Archives as streams: literal bytes and runs of one byte, never held whole.

#[derive(Clone)]
enum Part {
    Bytes(Arc<[u8]>),
    Fill(u8, u64),
}

/// A byte stream described by its parts.
#[derive(Clone, Default)]
struct Parts(Vec<Part>);

impl Parts {
    fn bytes(mut self, bytes: impl AsRef<[u8]>) -> Parts {
        self.0.push(Part::Bytes(bytes.as_ref().into()));
        self
    }

    fn fill(mut self, byte: u8, n: u64) -> Parts {
        self.0.push(Part::Fill(byte, n));
        self
    }

    fn then(mut self, other: Parts) -> Parts {
        self.0.extend(other.0);
        self
    }

    /// Zeros up to the next 512-byte block.
    fn pad(self) -> Parts {
        let rest = (512 - self.len() % 512) % 512;
        self.fill(0, rest)
    }

    fn len(&self) -> u64 {
        self.0
            .iter()
            .map(|p| match p {
                Part::Bytes(b) => b.len() as u64,
                Part::Fill(_, n) => *n,
            })
            .sum()
    }

    fn reader(&self) -> PartsReader {
        PartsReader {
            parts: self.0.clone(),
            index: 0,
            offset: 0,
            run: Vec::new(),
        }
    }

    /// `sha256:<hex>` of the stream, read in 1 MiB pieces.
    fn sha256(&self) -> String {
        let mut context = ring::digest::Context::new(&ring::digest::SHA256);
        let mut reader = self.reader();
        let mut buf = vec![0u8; 1 << 20];
        loop {
            let n = reader.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            context.update(&buf[..n]);
        }
        format!("sha256:{}", habitus::layer::hex(context.finish().as_ref()))
    }
}

struct PartsReader {
    parts: Vec<Part>,
    index: usize,
    offset: u64,
    /// 1 MiB of the current run's byte, copied from (fast in debug builds).
    run: Vec<u8>,
}

impl Read for PartsReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while let Some(part) = self.parts.get(self.index) {
            let left = match part {
                Part::Bytes(b) => b.len() as u64 - self.offset,
                Part::Fill(_, n) => n - self.offset,
            };
            if left == 0 {
                self.index += 1;
                self.offset = 0;
                continue;
            }
            let n = (buf.len() as u64).min(left).min(1 << 20) as usize;
            match part {
                Part::Bytes(b) => {
                    let start = self.offset as usize;
                    buf[..n].copy_from_slice(&b[start..start + n]);
                }
                Part::Fill(byte, _) => {
                    if self.run.first() != Some(byte) {
                        self.run = vec![*byte; 1 << 20];
                    }
                    buf[..n].copy_from_slice(&self.run[..n]);
                }
            }
            self.offset += n as u64;
            return Ok(n);
        }
        Ok(0)
    }
}

// ---------------------------------------------------------------------------
// Tar pieces.

/// One ustar (or GNU) header block.
fn header(kind: tar::EntryType, path: &[u8], size: u64, gnu: bool) -> tar::Header {
    let mut h = if gnu {
        tar::Header::new_gnu()
    } else {
        tar::Header::new_ustar()
    };
    h.set_entry_type(kind);
    h.as_old_mut().name = [0; 100];
    h.as_old_mut().name[..path.len()].copy_from_slice(path);
    h.set_size(size);
    h.set_mode(0o644);
    h.set_mtime(0);
    h.set_uid(0);
    h.set_gid(0);
    h
}

fn block(mut h: tar::Header) -> Parts {
    h.set_cksum();
    Parts::default().bytes(h.as_bytes())
}

/// A regular file: header, content, padding.
fn file_entry(path: &str, content: &[u8]) -> Parts {
    block(header(
        tar::EntryType::Regular,
        path.as_bytes(),
        content.len() as u64,
        false,
    ))
    .bytes(content)
    .pad()
}

/// The end-of-archive blocks.
fn end() -> Parts {
    Parts::default().fill(0, 1024)
}

/// A layer tar of regular files.
fn layer_tar(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, content) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(content.len() as u64);
        h.set_mode(0o644);
        h.set_mtime(0);
        h.set_cksum();
        b.append_data(&mut h, path, *content).unwrap();
    }
    b.into_inner().unwrap()
}

fn motd_layer() -> Vec<u8> {
    layer_tar(&[("etc/motd", b"hello\n")])
}

fn sha256(data: &[u8]) -> String {
    format!(
        "sha256:{}",
        habitus::layer::hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
    )
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(data).unwrap();
    gz.finish().unwrap()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(data, 3).unwrap()
}

// ---------------------------------------------------------------------------
// `docker save` archives.

/// The outer tar of a save: members in order, then the end blocks.
fn save_of(members: Vec<(String, Parts)>) -> Parts {
    let mut out = Parts::default();
    for (name, content) in members {
        let mut h = header(
            tar::EntryType::Regular,
            name.as_bytes(),
            content.len(),
            false,
        );
        h.set_mode(0o644);
        out = out.then(block(h)).then(content).pad();
    }
    out.then(end())
}

fn json_bytes(value: &serde_json::Value) -> Vec<u8> {
    serde_json::to_vec(value).unwrap()
}

fn config_json(arch: &str, diff_ids: &[String], labels: &serde_json::Value) -> Vec<u8> {
    json_bytes(&serde_json::json!({
        "architecture": arch, "os": "linux",
        "config": { "Cmd": ["sh"], "Labels": labels },
        "rootfs": { "type": "layers", "diff_ids": diff_ids },
        "history": [{ "created_by": "COPY motd /etc/motd" }],
    }))
}

/// A one-layer image in the legacy layout of Docker 20.10 (`<id>/layer.tar`,
/// `<config>.json`, `manifest.json`); the layer is streamed.
fn legacy_save(layer: Parts, arch: &str, tag: &str, labels: &serde_json::Value) -> Parts {
    let diff_id = layer.sha256();
    let config = config_json(arch, std::slice::from_ref(&diff_id), labels);
    let id = &diff_id[7..];
    let config_name = format!("{}.json", &sha256(&config)[7..]);
    let layer_name = format!("{id}/layer.tar");
    let manifest = json_bytes(&serde_json::json!([{
        "Config": config_name, "RepoTags": [tag], "Layers": [layer_name],
    }]));
    save_of(vec![
        (layer_name, layer),
        (config_name, Parts::default().bytes(config)),
        ("manifest.json".into(), Parts::default().bytes(manifest)),
    ])
}

const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
const LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
const MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
const INDEX: &str = "application/vnd.oci.image.index.v1+json";

/// One platform's image in the OCI layout: its manifest, config and layer
/// blobs.
struct OciImage {
    arch: &'static str,
    manifest: Vec<u8>,
    config: Vec<u8>,
    blob: Vec<u8>,
}

/// `blob` is the layer as stored (compressed per `media`), `tar` what it
/// decompresses to.
fn oci_image(
    arch: &'static str,
    tar: &[u8],
    blob: Vec<u8>,
    media: &str,
    labels: &serde_json::Value,
) -> OciImage {
    let config = config_json(arch, &[sha256(tar)], labels);
    let manifest = json_bytes(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST,
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config), "size": config.len() },
        "layers": [{ "mediaType": media, "digest": sha256(&blob), "size": blob.len() }],
    }));
    OciImage {
        arch,
        manifest,
        config,
        blob,
    }
}

fn blob_path(data: &[u8]) -> String {
    format!("blobs/sha256/{}", &sha256(data)[7..])
}

/// How the index of an OCI save is laid out.
#[derive(Clone, Copy, Debug)]
enum Shape {
    /// `index.json` names an image index blob that lists the platforms,
    /// and `manifest.json` names the first platform's image: what Docker
    /// 26 with the containerd store saves.
    Nested,
    /// `index.json` lists the platforms' manifests itself (an OCI layout
    /// as `buildx --output type=oci` writes it); no `manifest.json`.
    Flat,
}

/// An OCI-layout save of `images` (one per platform) named `name`
/// (`repo:tag`); the blobs of the images whose `present` is false are
/// left out, as when the store holds only some platforms.
fn oci_save(images: &[OciImage], present: &[bool], shape: Shape, name: &str) -> Vec<u8> {
    let platforms: Vec<serde_json::Value> = images
        .iter()
        .map(|i| {
            serde_json::json!({
                "mediaType": MANIFEST, "digest": sha256(&i.manifest), "size": i.manifest.len(),
                "platform": { "architecture": i.arch, "os": "linux" },
            })
        })
        .collect();
    let annotations = serde_json::json!({
        "io.containerd.image.name": format!("docker.io/{name}"),
        "org.opencontainers.image.ref.name": name.rsplit(':').next().unwrap(),
    });
    let mut members: Vec<(String, Vec<u8>)> = Vec::new();
    let index = match shape {
        Shape::Nested => {
            let inner = json_bytes(&serde_json::json!({
                "schemaVersion": 2, "mediaType": INDEX, "manifests": platforms,
            }));
            let index = serde_json::json!({
                "schemaVersion": 2, "mediaType": INDEX,
                "manifests": [{
                    "mediaType": INDEX, "digest": sha256(&inner), "size": inner.len(),
                    "annotations": annotations,
                }],
            });
            members.push((blob_path(&inner), inner));
            index
        }
        Shape::Flat => {
            let manifests: Vec<serde_json::Value> = platforms
                .into_iter()
                .map(|mut p| {
                    p["annotations"] = annotations.clone();
                    p
                })
                .collect();
            serde_json::json!({ "schemaVersion": 2, "mediaType": INDEX, "manifests": manifests })
        }
    };
    for (image, present) in images.iter().zip(present) {
        if *present {
            for data in [&image.manifest, &image.config, &image.blob] {
                if !members.iter().any(|(n, _)| *n == blob_path(data)) {
                    members.push((blob_path(data), data.clone()));
                }
            }
        }
    }
    members.push(("index.json".into(), json_bytes(&index)));
    if let Shape::Nested = shape {
        let first = &images[0];
        let manifest = serde_json::json!([{
            "Config": blob_path(&first.config),
            "RepoTags": [name],
            "Layers": [blob_path(&first.blob)],
        }]);
        members.push(("manifest.json".into(), json_bytes(&manifest)));
    }
    members.push((
        "oci-layout".into(),
        br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
    ));
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in &members {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    b.into_inner().unwrap()
}

/// A one-platform OCI save of one layer.
fn oci_single(tar: &[u8], blob: Vec<u8>, media: &str) -> Parts {
    let image = oci_image("amd64", tar, blob, media, &serde_json::json!({}));
    Parts::default().bytes(oci_save(&[image], &[true], Shape::Flat, "hb/crafted:1"))
}

// ---------------------------------------------------------------------------
// Running habitus against the stand-in daemon.

/// `habitus --host <stand-in> audit hb/crafted ARGS --secret-env
/// AUDIT_TOKEN` (`AUDIT_TOKEN` set to the secret) with `archive` as the
/// save; with `measure`, under `/usr/bin/time`, returning habitus's peak
/// RSS in KiB too.
fn audit_streamed(archive: Parts, args: &[&str], measure: bool) -> (Output, Option<u64>) {
    let fake = tempfile::tempdir().unwrap();
    let len = archive.len();
    let body: stream_daemon::Body = Arc::new(move || (len, Box::new(archive.reader())));
    let daemon = stream_daemon::start(fake.path(), body);
    let rss_file = fake.path().join("rss");
    let mut cmd = if measure {
        assert!(
            std::path::Path::new("/usr/bin/time").exists(),
            "this test measures habitus's peak RSS with /usr/bin/time: `apt-get install time`"
        );
        let mut cmd = Command::new("/usr/bin/time");
        cmd.args(["-f", "%M", "-o"])
            .arg(&rss_file)
            .arg(env!("CARGO_BIN_EXE_habitus"));
        cmd
    } else {
        Command::new(env!("CARGO_BIN_EXE_habitus"))
    };
    cmd.env("AUDIT_TOKEN", SECRET)
        .arg("--host")
        .arg(daemon.host())
        .args(["audit", "hb/crafted", "--secret-env", "AUDIT_TOKEN"])
        .args(args)
        .stdin(Stdio::null());
    let out = cmd.output().expect("run habitus");
    let out = Output {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    };
    let rss = measure.then(|| {
        // `Command exited with non-zero status N` may come first.
        let text = std::fs::read_to_string(&rss_file).unwrap();
        text.lines()
            .last()
            .and_then(|l| l.trim().parse::<u64>().ok())
            .unwrap_or_else(|| panic!("no peak RSS from /usr/bin/time: {text}"))
    });
    (out, rss)
}

/// Hits name where a secret is, never the secret: not even a path that
/// holds it (the 4 KiB long name).
#[track_caller]
fn assert_not_printed(case: &str, out: &Output) {
    assert!(
        !out.stdout.contains(SECRET) && !out.stderr.contains(SECRET),
        "{case}: habitus printed the secret:\n{}\n{}",
        out.stdout,
        out.stderr
    );
}

fn audit_of(archive: Parts, args: &[&str]) -> Output {
    audit_streamed(archive, args, false).0
}

#[track_caller]
fn assert_hit(case: &str, out: &Output) {
    assert_not_printed(case, out);
    assert_eq!(
        out.code(),
        Some(1),
        "{case}: a leak must exit 1\n--- stdout\n{}\n--- stderr\n{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stdout
            .lines()
            .any(|l| l.contains("hb/crafted: secret `AUDIT_TOKEN`") && l.contains("layer 0")),
        "{case}: no hit naming layer 0\n--- stdout\n{}\n--- stderr\n{}",
        out.stdout,
        out.stderr
    );
}

#[track_caller]
fn assert_clean(case: &str, out: &Output) {
    assert_not_printed(case, out);
    assert_eq!(
        out.code(),
        Some(0),
        "{case}: the control archive must be clean\n--- stdout\n{}\n--- stderr\n{}",
        out.stdout,
        out.stderr
    );
    assert!(
        out.stderr.contains("no secret in"),
        "{case}: {}",
        out.stderr
    );
}

// ---------------------------------------------------------------------------
// 1. Crafted archives.

#[test]
fn a_secret_after_a_layer_tars_end_of_archive_blocks_is_found() {
    let tar = motd_layer();
    assert!(
        tar.ends_with(&[0; 1024]),
        "tar::Builder writes the end blocks"
    );
    // The tar, then `gap` zero bytes, then `tail`, then zeros to a block.
    let trailing = |gap: u64, tail: &[u8]| -> Vec<u8> {
        let mut out = Vec::new();
        Parts::default()
            .bytes(&tar)
            .fill(0, gap)
            .bytes(tail)
            .pad()
            .reader()
            .read_to_end(&mut out)
            .unwrap();
        out
    };
    let none = serde_json::json!({});
    let legacy = |layer: Vec<u8>| {
        legacy_save(
            Parts::default().bytes(layer),
            "amd64",
            "hb/crafted:1",
            &none,
        )
    };
    let secret = SECRET.as_bytes();
    let clean = [b'z'; SECRET.len()];
    // Controls first: the same archives without the secret are clean.
    let cases: Vec<(&str, Parts, bool)> = vec![
        ("legacy, control", legacy(trailing(0, &clean)), false),
        (
            "OCI gzip, control",
            {
                let layer = trailing(0, &clean);
                oci_single(&layer, gzip(&layer), LAYER_GZIP)
            },
            false,
        ),
        (
            "legacy, right after the end blocks",
            legacy(trailing(0, secret)),
            true,
        ),
        // GNU tar pads an archive to 10 KiB records.
        (
            "legacy, after the record's zero padding",
            legacy(trailing(10240 - tar.len() as u64 % 10240, secret)),
            true,
        ),
        (
            "OCI gzip, right after the end blocks",
            {
                let layer = trailing(0, secret);
                oci_single(&layer, gzip(&layer), LAYER_GZIP)
            },
            true,
        ),
        (
            "OCI zstd, right after the end blocks",
            {
                let layer = trailing(512, secret);
                oci_single(&layer, zstd(&layer), LAYER_ZSTD)
            },
            true,
        ),
    ];
    for (case, archive, leaks) in cases {
        let out = audit_of(archive, &[]);
        if leaks {
            assert_hit(case, &out);
        } else {
            assert_clean(case, &out);
        }
    }
}

#[test]
fn a_secret_in_tar_header_fields_no_reader_returns_is_found() {
    let secret = SECRET.as_bytes();
    let motd = file_entry("etc/motd", b"hello\n");
    let with_owner = |user: &[u8], group: &[u8]| {
        let mut h = header(tar::EntryType::Regular, b"etc/motd", 6, false);
        h.set_username(std::str::from_utf8(user).unwrap()).unwrap();
        h.set_groupname(std::str::from_utf8(group).unwrap())
            .unwrap();
        block(h).bytes(b"hello\n").pad().then(end())
    };
    // A PAX header entry's own name (`PaxHeaders.0/…` by convention): tar
    // readers apply its records and drop the name.
    let pax_named = |name: &[u8]| {
        let record = b"20 path=etc/mo/motd\n";
        block(header(
            tar::EntryType::XHeader,
            name,
            record.len() as u64,
            false,
        ))
        .bytes(record)
        .pad()
        .then(motd.clone())
        .then(end())
    };
    // A GNU long name entry's own name (`././@LongLink` by convention).
    let long_named = |name: &[u8]| {
        let long = b"etc/a-long-name-for-the-motd\0";
        block(header(
            tar::EntryType::GNULongName,
            name,
            long.len() as u64,
            true,
        ))
        .bytes(long)
        .pad()
        .then(block(header(tar::EntryType::Regular, b"etc/a", 6, true)))
        .bytes(b"hello\n")
        .pad()
        .then(end())
    };
    let pax_prefix = [b"PaxHeaders.0/".as_slice(), secret].concat();
    let cases: Vec<(&str, Parts, bool)> = vec![
        ("owner control", with_owner(b"root", b"root"), false),
        ("PAX control", pax_named(b"PaxHeaders.0/motd"), false),
        ("long name control", long_named(b"././@LongLink"), false),
        ("uname", with_owner(secret, b"root"), true),
        ("gname", with_owner(b"root", secret), true),
        ("a PAX header's name", pax_named(&pax_prefix), true),
        ("a GNU long name header's name", long_named(secret), true),
    ];
    let none = serde_json::json!({});
    for (case, layer, leaks) in cases {
        let out = audit_of(legacy_save(layer, "amd64", "hb/crafted:1", &none), &[]);
        if leaks {
            assert_hit(case, &out);
        } else {
            assert_clean(case, &out);
        }
    }
}

/// A gzip member written by hand: header with the optional fields, a
/// deflate body of `data`, CRC-32 and length.
fn gzip_member(
    data: &[u8],
    extra: Option<&[u8]>,
    name: Option<&[u8]>,
    comment: Option<&[u8]>,
) -> Vec<u8> {
    const FEXTRA: u8 = 4;
    const FNAME: u8 = 8;
    const FCOMMENT: u8 = 16;
    let mut flags = 0;
    if extra.is_some() {
        flags |= FEXTRA;
    }
    if name.is_some() {
        flags |= FNAME;
    }
    if comment.is_some() {
        flags |= FCOMMENT;
    }
    // ID1 ID2 CM FLG MTIME(4) XFL OS (255: unknown)
    let mut out = vec![0x1f, 0x8b, 8, flags, 0, 0, 0, 0, 0, 255];
    if let Some(data) = extra {
        // One subfield, `HB`, holding `data`.
        let len = u16::try_from(data.len()).unwrap();
        out.extend_from_slice(&(len + 4).to_le_bytes());
        out.extend_from_slice(b"HB");
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(data);
    }
    for text in [name, comment].into_iter().flatten() {
        out.extend_from_slice(text);
        out.push(0);
    }
    let mut deflate =
        flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
    deflate.write_all(data).unwrap();
    out.extend(deflate.finish().unwrap());
    let mut crc = flate2::Crc::new();
    crc.update(data);
    out.extend_from_slice(&crc.sum().to_le_bytes());
    out.extend_from_slice(&u32::try_from(data.len()).unwrap().to_le_bytes());
    out
}

#[test]
fn a_secret_in_a_gzip_layers_header_fields_is_found() {
    let tar = layer_tar(&[
        ("etc/motd", b"hello\n".as_slice()),
        ("etc/issue", b"habitus\n".as_slice()),
    ]);
    let secret = SECRET.as_bytes();
    let split = 1024; // after the first file: both halves whole blocks
    let cases: Vec<(&str, Vec<u8>, bool)> = vec![
        ("FNAME", gzip_member(&tar, None, Some(secret), None), true),
        (
            "FCOMMENT",
            gzip_member(&tar, None, Some(b"layer.tar"), Some(secret)),
            true,
        ),
        ("FEXTRA", gzip_member(&tar, Some(secret), None, None), true),
        (
            "FNAME of the second gzip member",
            [
                gzip_member(&tar[..split], None, Some(b"layer.tar"), None),
                gzip_member(&tar[split..], None, Some(secret), None),
            ]
            .concat(),
            true,
        ),
    ];
    for (case, blob, leaks) in cases {
        let out = audit_of(oci_single(&tar, blob, LAYER_GZIP), &[]);
        if leaks {
            assert_hit(case, &out);
        } else {
            assert_clean(case, &out);
        }
    }
    // Bytes after the gzip stream ship too: searched or refused, never
    // passed as clean.
    let blob = [gzip_member(&tar, None, None, None), secret.to_vec()].concat();
    let out = audit_of(oci_single(&tar, blob, LAYER_GZIP), &[]);
    assert_not_printed("after the gzip stream", &out);
    assert!(
        matches!(out.code(), Some(1 | 2)),
        "a secret after the gzip stream: exit {:?}\n--- stdout\n{}\n--- stderr\n{}",
        out.code(),
        out.stdout,
        out.stderr
    );
}

/// An amd64 image with a clean layer and an arm64 image whose layer holds
/// the secret in `/root/.ssh/id_rsa` (clean too unless `leaky`).
fn two_platforms(leaky: bool, labels: &serde_json::Value) -> [OciImage; 2] {
    let clean = motd_layer();
    let key = if leaky {
        format!("{SECRET}\n")
    } else {
        "not a key at all, just text\n".to_string()
    };
    let arm = layer_tar(&[
        ("etc/motd", b"hello\n".as_slice()),
        ("root/.ssh/id_rsa", key.as_bytes()),
    ]);
    [
        oci_image("amd64", &clean, gzip(&clean), LAYER_GZIP, labels),
        oci_image("arm64", &arm, gzip(&arm), LAYER_GZIP, labels),
    ]
}

#[test]
fn every_platform_of_an_index_is_searched_and_a_hit_names_its_platform() {
    let none = serde_json::json!({});
    for shape in [Shape::Nested, Shape::Flat] {
        let save = |leaky: bool, present: &[bool]| {
            Parts::default().bytes(oci_save(
                &two_platforms(leaky, &none),
                present,
                shape,
                "hb/crafted:1",
            ))
        };
        // Both platforms clean: exit 0, nothing "not searched".
        let out = audit_of(save(false, &[true, true]), &[]);
        assert_clean(&format!("{shape:?}, both platforms clean"), &out);
        assert!(
            !format!("{}{}", out.stdout, out.stderr).contains("not searched"),
            "{}\n{}",
            out.stdout,
            out.stderr
        );

        let out = audit_of(save(true, &[true, true]), &[]);
        assert_not_printed("two platforms", &out);
        assert_eq!(
            out.code(),
            Some(1),
            "{shape:?}: the arm64 image holds the secret\n--- stdout\n{}\n--- stderr\n{}",
            out.stdout,
            out.stderr
        );
        let hits: Vec<&str> = out
            .stdout
            .lines()
            .filter(|l| l.contains("secret `AUDIT_TOKEN`"))
            .collect();
        assert!(
            !hits.is_empty()
                && hits
                    .iter()
                    .all(|l| l.contains("linux/arm64") && !l.contains("linux/amd64")),
            "{shape:?}: every hit names linux/arm64:\n{}",
            out.stdout
        );
        assert!(
            hits.iter().any(|l| l.contains("/root/.ssh/id_rsa")),
            "{shape:?}: {}",
            out.stdout
        );

        // The arm64 blobs are not in the archive: the amd64 image is
        // searched, the arm64 one is named as not searched (a warning),
        // and `--strict` makes that exit 2.
        let out = audit_of(save(true, &[true, false]), &[]);
        assert_not_printed("arm64 absent", &out);
        assert_eq!(
            out.code(),
            Some(0),
            "{shape:?}: arm64 absent\n--- stdout\n{}\n--- stderr\n{}",
            out.stdout,
            out.stderr
        );
        // The line names the platform (habitus prints it with the hits, on
        // stdout, and counts it in the summary on stderr).
        assert!(
            out.stdout
                .lines()
                .chain(out.stderr.lines())
                .any(|l| l.contains("not searched") && l.contains("linux/arm64")),
            "{shape:?}: arm64 absent\n--- stdout\n{}\n--- stderr\n{}",
            out.stdout,
            out.stderr
        );
        let out = audit_of(save(true, &[true, false]), &["--strict"]);
        assert_not_printed("arm64 absent, --strict", &out);
        assert_eq!(
            out.code(),
            Some(2),
            "{shape:?}: arm64 absent, --strict\n--- stdout\n{}\n--- stderr\n{}",
            out.stdout,
            out.stderr
        );
        assert!(
            format!("{}{}", out.stdout, out.stderr).contains("linux/arm64"),
            "{shape:?}: --strict\n--- stdout\n{}\n--- stderr\n{}",
            out.stdout,
            out.stderr
        );
    }
}

/// What the big entry of [`big_layer`] is.
#[derive(Clone, Copy, Debug)]
enum Big {
    /// A PAX extended header holding one record `SCHILY.xattr.user.big`.
    PaxRecord,
    /// A GNU long name (`L`) for a regular file.
    LongName,
    /// A GNU long link name (`K`) for a symlink.
    LinkName,
}

/// A layer whose first entry carries a `filler`-byte record, name or link
/// name that ends in the secret (or, without `secret`, in as many `z`s),
/// followed by `/etc/motd`. Streamed: never held whole.
fn big_layer(kind: Big, filler: u64, secret: bool) -> Parts {
    let tail: &[u8] = if secret {
        SECRET.as_bytes()
    } else {
        &[b'z'; SECRET.len()]
    };
    let motd = file_entry("etc/motd", b"hello\n");
    let layer = match kind {
        Big::PaxRecord => {
            // "<len> <key>=<value>\n", <len> counting its own digits.
            let key = "SCHILY.xattr.user.big";
            let rest = 1 + key.len() as u64 + 1 + filler + tail.len() as u64 + 1;
            let mut len = rest + 1;
            while len != rest + len.to_string().len() as u64 {
                len = rest + len.to_string().len() as u64;
            }
            block(header(
                tar::EntryType::XHeader,
                b"PaxHeaders.0/etc/motd",
                len,
                false,
            ))
            .bytes(format!("{len} {key}="))
            .fill(b'v', filler)
            .bytes(tail)
            .bytes(b"\n")
            .pad()
            .then(motd)
        }
        Big::LongName => block(header(
            tar::EntryType::GNULongName,
            b"././@LongLink",
            filler + tail.len() as u64 + 1,
            true,
        ))
        .fill(b'n', filler)
        .bytes(tail)
        .bytes(b"\0")
        .pad()
        .then(block(header(
            tar::EntryType::Regular,
            &[b'n'; 100],
            6,
            true,
        )))
        .bytes(b"hello\n")
        .pad()
        .then(motd),
        Big::LinkName => {
            let mut link = header(tar::EntryType::Symlink, b"etc/link", 0, true);
            link.as_old_mut().linkname = [b'l'; 100];
            block(header(
                tar::EntryType::GNULongLink,
                b"././@LongLink",
                filler + tail.len() as u64 + 1,
                true,
            ))
            .fill(b'l', filler)
            .bytes(tail)
            .bytes(b"\0")
            .pad()
            .then(block(link))
            .then(motd)
        }
    };
    layer.then(end())
}

#[test]
fn huge_pax_records_and_long_names_are_searched_or_refused_in_bounded_memory() {
    let none = serde_json::json!({});
    let save = |kind, filler, secret| {
        legacy_save(
            big_layer(kind, filler, secret),
            "amd64",
            "hb/crafted:1",
            &none,
        )
    };
    // Small ones first: the generator writes layers habitus reads, and a
    // secret in them is found.
    for kind in [Big::PaxRecord, Big::LongName, Big::LinkName] {
        assert_hit(
            &format!("{kind:?}, 4 KiB"),
            &audit_of(save(kind, 4096, true), &[]),
        );
        assert_clean(
            &format!("{kind:?}, 4 KiB, control"),
            &audit_of(save(kind, 4096, false), &[]),
        );
    }
    // Then past any limit, streamed from the stand-in daemon: a 512 MiB
    // PAX record and 96 MiB names, each ending in the secret. Either the
    // secret is found (exit 1) or the entry is refused naming it (exit 2);
    // never exit 0, and never more than 64 MiB of memory.
    let cases = [
        (
            Big::PaxRecord,
            512u64 << 20,
            ["pax", "schily.xattr.user.big"],
        ),
        (Big::LongName, 96 << 20, ["long name", "name"]),
        (Big::LinkName, 96 << 20, ["link name", "link"]),
    ];
    for (kind, filler, names) in cases {
        let started = std::time::Instant::now();
        let (out, rss) = audit_streamed(save(kind, filler, true), &[], true);
        let rss = rss.unwrap();
        let case = format!("{kind:?} of {} MiB", filler >> 20);
        match out.code() {
            Some(1) => assert_hit(&case, &out),
            Some(2) => {
                assert_not_printed(&case, &out);
                let stderr = out.stderr.to_lowercase();
                assert!(
                    stderr.contains("layer 0") && names.iter().any(|n| stderr.contains(n)),
                    "{case}: exit 2 must name the entry:\n{}",
                    out.stderr
                );
            }
            code => panic!(
                "{case}: exit {code:?} (must be 1 or 2)\n--- stdout\n{}\n--- stderr\n{}",
                out.stdout, out.stderr
            ),
        }
        assert!(
            rss <= MAX_RSS_KIB,
            "{case}: habitus peaked at {} MiB of RSS (at most {} MiB)\n--- stderr\n{}",
            rss / 1024,
            MAX_RSS_KIB / 1024,
            out.stderr
        );
        eprintln!(
            "{case}: exit {:?}, peak RSS {} KiB, {:?}",
            out.code(),
            rss,
            started.elapsed()
        );
    }
}

// ---------------------------------------------------------------------------
// 2. A multi-platform image on the real daemon, pushed to the test registry.

/// Whether the daemon keeps images in the containerd image store (Docker
/// 26 here), which holds multi-platform images; the graph drivers of
/// Docker 20.10 hold one platform per image.
fn containerd_store() -> bool {
    docker(&["info", "--format", "{{json .DriverStatus}}"]).contains("io.containerd.snapshotter")
}

/// The manifest (or index) the registry serves for `repo:tag`, fetched
/// with curl and the login: what a pull gets, independent of the daemon.
fn served_manifest(
    registry: &crate::common::registry::Registry,
    repo: &str,
    tag: &str,
) -> serde_json::Value {
    let out = Command::new("curl")
        .args(["-fsS", "--cacert"])
        .arg(registry.ca_pem_path())
        .args(["-u", &format!("{}:{}", registry.user(), registry.password())])
        .args([
            "-H",
            "Accept: application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json",
        ])
        .arg(format!("https://{}/v2/{repo}/manifests/{tag}", registry.host()))
        .stdin(Stdio::null())
        .output()
        .expect("run curl");
    assert!(
        out.status.success(),
        "GET {repo}:{tag}: {}{}",
        String::from_utf8_lossy(&out.stderr),
        registry.log_tail()
    );
    serde_json::from_slice(&out.stdout).expect("the registry serves JSON")
}

#[test]
fn a_secret_only_in_the_arm64_image_of_a_pushed_index_is_found_naming_the_platform() {
    let c = Cleanup::new("auditb-reg");
    let registry = crate::common::registry::start();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("id_rsa");
    std::fs::write(&key_file, format!("{SECRET}\n")).unwrap();
    let repo = format!("audit-bytes-{}", c.uid());
    let local = format!("hb/{repo}:1");
    let remote = format!("{}/{repo}:1", registry.host());
    let labels = serde_json::json!({ crate::common::UID_LABEL: c.uid() });
    let archive = dir.path().join("image.tar");
    let multi = containerd_store();
    if multi {
        // Docker 26, containerd store: the index with both platforms
        // loads whole (only the host's platform is unpacked, so nothing
        // needs to run arm64 code) and pushes whole.
        let images = two_platforms(true, &labels);
        std::fs::write(
            &archive,
            oci_save(&images, &[true, true], Shape::Nested, &local),
        )
        .unwrap();
    } else {
        // Docker 20.10 holds one platform per image and loads only the
        // legacy layout: it gets the arm64 image alone (an image of
        // another architecture loads and pushes; it only cannot run), and
        // the hit can name no platform.
        let arm = layer_tar(&[
            ("etc/motd", b"hello\n".as_slice()),
            ("root/.ssh/id_rsa", format!("{SECRET}\n").as_bytes()),
        ]);
        let mut bytes = Vec::new();
        legacy_save(Parts::default().bytes(arm), "arm64", &local, &labels)
            .reader()
            .read_to_end(&mut bytes)
            .unwrap();
        std::fs::write(&archive, bytes).unwrap();
    }
    docker(&["load", "-q", "-i", archive.to_str().unwrap()]);
    docker(&["tag", &local, &remote]);
    registry.docker(&["push", "-q", &remote]);
    // What the registry holds is what ships: on Docker 26 an index of
    // both platforms.
    let served = served_manifest(&registry, &repo, "1");
    if multi {
        let platforms: Vec<String> = served["manifests"]
            .as_array()
            .map(|m| {
                m.iter()
                    .map(|d| format!("{}/{}", d["platform"]["os"], d["platform"]["architecture"]))
                    .collect()
            })
            .unwrap_or_default();
        assert_eq!(
            platforms,
            ["\"linux\"/\"amd64\"", "\"linux\"/\"arm64\""],
            "the registry serves: {served}"
        );
    } else {
        assert_eq!(
            served["layers"].as_array().map(Vec::len),
            Some(1),
            "{served}"
        );
    }

    let out = Habitus::new()
        .no_workdir()
        .args([
            "audit",
            &remote,
            "--secret-file",
            key_file.to_str().unwrap(),
        ])
        .run();
    assert_eq!(
        out.code(),
        Some(1),
        "the arm64 image holds the key\n--- stdout\n{}\n--- stderr\n{}",
        out.stdout,
        out.stderr
    );
    let hits: Vec<&str> = out
        .stdout
        .lines()
        .filter(|l| l.contains("/root/.ssh/id_rsa"))
        .collect();
    assert!(!hits.is_empty(), "{}\n{}", out.stdout, out.stderr);
    if multi {
        assert!(
            hits.iter().all(|l| l.contains("linux/arm64")),
            "the hit names the platform:\n{}",
            out.stdout
        );
    }
    assert!(!out.stdout.contains(SECRET) && !out.stderr.contains(SECRET));
}

// ---------------------------------------------------------------------------
// 3. A build whose steps declare secrets of one name with different values.

const TWO_KEYS_YML: &str = "build:
  version: 2016-03-14
  steps:
    a:
      name: hb/audit-bytes-a
      dockerfile: Dockerfile.a
      secrets:
        id_rsa:
          type: file
          value: a_id_rsa
    b:
      name: hb/audit-bytes-b
      dockerfile: Dockerfile.b
      secrets:
        id_rsa:
          type: file
          value: b_id_rsa
";

/// Fetches the step's `id_rsa` into `/root/.ssh/id_rsa`, and deletes it in
/// the same `RUN` only with `delete`.
fn fetch_key(delete: bool) -> String {
    format!(
        r#"ARG HABITUS_URL
ARG HABITUS_CA
ARG HABITUS_TOKEN
RUN printf '%s' "$HABITUS_CA" > /tmp/ca.pem && mkdir -p /root/.ssh \
 && curl -fsS --cacert /tmp/ca.pem -H "Authorization: Bearer $HABITUS_TOKEN" "$HABITUS_URL/v1/secrets/file/id_rsa" -o /root/.ssh/id_rsa \
 && wc -c /root/.ssh/id_rsa {} && rm -f /tmp/ca.pem
"#,
        if delete {
            "&& rm -f /root/.ssh/id_rsa"
        } else {
            ""
        }
    )
}

#[test]
fn a_secret_of_one_name_is_searched_for_each_step_that_declares_it() {
    let (h, c) = project("auditb-keys", TWO_KEYS_YML);
    let uid = c.uid().to_string();
    let key_a = format!("key-of-step-a-{uid}-{:08x}", rand::random::<u32>());
    let key_b = format!("key-of-step-b-{uid}-{:08x}", rand::random::<u32>());
    let out = h
        .file("a_id_rsa", &key_a)
        .file("b_id_rsa", &key_b)
        // `a` uses its key and deletes it; `b` keeps its key in its image.
        .file("Dockerfile.a", from_base(&fetch_key(true)))
        .file("Dockerfile.b", from_base(&fetch_key(false)))
        .run();
    assert_eq!(
        out.code(),
        Some(1),
        "step b's key is in its image: the audit must fail the build\n--- stdout\n{}\n--- stderr\n{}",
        out.stdout,
        out.stderr
    );
    let image_b = format!("hb/audit-bytes-b-{uid}");
    assert!(
        out.stderr.contains("a secret reached an image"),
        "{}",
        out.stderr
    );
    let hits: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains(&format!("{image_b}: secret `")))
        .collect();
    assert!(
        hits.iter()
            .any(|l| l.contains("secret `b: file/id_rsa`") && l.contains("at `/root/.ssh/id_rsa`")),
        "the hit names step b's secret:\n{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains("secret `a: file/id_rsa`"),
        "step a's key is in no image:\n{}",
        out.stderr
    );
    for key in [&key_a, &key_b] {
        assert!(!out.stderr.contains(key.as_str()) && !out.stdout.contains(key.as_str()));
    }
    assert!(!image_exists(&image_b), "`{image_b}` is still there");
}
