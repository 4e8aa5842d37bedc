//! Unit tests of the merger on crafted layer tars, of both archive layouts,
//! and of a whole squash against an engine that serves a crafted archive.

use std::collections::BTreeMap;
use std::io::{Cursor, Read};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use futures_util::StreamExt;
use serde_json::json;

use super::budget::Budget;
use super::layout::{read_save, Layout, ReadPlan};
use super::write::{sha256, write_layer};
use super::{
    merge_layers, rewrite_config, rfc3339, squash, squash_labelled, Keep, Method, SquashError,
    SquashReport,
};
use crate::engine::{
    BuildRequest, BuiltImage, ByteStream, Engine, EngineError, ImageDetails, ImageInfo, LineSink,
    RunRequest,
};
use crate::layer::Compression;

/// One entry of a crafted layer.
#[derive(Clone)]
enum E {
    Dir(&'static str),
    File(&'static str, &'static str),
    Mode(&'static str, &'static str, u32),
    Symlink(&'static str, &'static str),
    HardLink(&'static str, &'static str),
    Whiteout(&'static str),
    Opaque(&'static str),
}

fn layer(entries: &[E]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for e in entries {
        let mut h = tar::Header::new_gnu();
        h.set_mtime(1_700_000_000);
        h.set_uid(0);
        h.set_gid(0);
        match e {
            E::Dir(p) => {
                h.set_entry_type(tar::EntryType::Directory);
                h.set_mode(0o755);
                h.set_size(0);
                b.append_data(&mut h, format!("{p}/"), std::io::empty())
                    .unwrap();
            }
            E::File(p, c) | E::Mode(p, c, _) => {
                let mode = if let E::Mode(_, _, m) = e { *m } else { 0o644 };
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(mode);
                h.set_size(c.len() as u64);
                b.append_data(&mut h, p, c.as_bytes()).unwrap();
            }
            E::Symlink(p, t) | E::HardLink(p, t) => {
                let kind = if matches!(e, E::Symlink(..)) {
                    tar::EntryType::Symlink
                } else {
                    tar::EntryType::Link
                };
                h.set_entry_type(kind);
                h.set_mode(0o777);
                h.set_size(0);
                b.append_link(&mut h, p, t).unwrap();
            }
            E::Whiteout(p) => {
                let (dir, name) = p.rsplit_once('/').map_or(("", *p), |(d, n)| (d, n));
                let path = if dir.is_empty() {
                    format!(".wh.{name}")
                } else {
                    format!("{dir}/.wh.{name}")
                };
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o600);
                h.set_size(0);
                b.append_data(&mut h, path, std::io::empty()).unwrap();
            }
            E::Opaque(d) => {
                h.set_entry_type(tar::EntryType::Regular);
                h.set_mode(0o600);
                h.set_size(0);
                b.append_data(&mut h, format!("{d}/.wh..wh..opq"), std::io::empty())
                    .unwrap();
            }
        }
    }
    b.into_inner().unwrap()
}

/// A filesystem node as a test sees it: kind, mode, content or target.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    kind: char,
    mode: u32,
    data: String,
}

/// Applies layer tars the way the daemon does and returns the result.
fn apply(layers: &[Vec<u8>]) -> BTreeMap<String, Node> {
    let mut fs: BTreeMap<String, Node> = BTreeMap::new();
    let remove = |fs: &mut BTreeMap<String, Node>, path: &str, itself: bool| {
        let prefix = format!("{path}/");
        fs.retain(|p, _| !(p.starts_with(&prefix) || (itself && p == path)));
    };
    for bytes in layers {
        let mut archive = tar::Archive::new(Cursor::new(bytes));
        let mut entries = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = String::from_utf8(entry.path_bytes().into_owned())
                .unwrap()
                .trim_end_matches('/')
                .to_string();
            let mut data = String::new();
            entry.read_to_string(&mut data).unwrap();
            let link = entry
                .link_name_bytes()
                .map(|l| String::from_utf8(l.into_owned()).unwrap());
            entries.push((
                path,
                entry.header().entry_type(),
                entry.header().mode().unwrap(),
                data,
                link,
            ));
        }
        for (path, _, _, _, _) in &entries {
            let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
            if name == ".wh..wh..opq" {
                remove(&mut fs, dir, false);
            } else if let Some(gone) = name.strip_prefix(".wh.") {
                let gone = if dir.is_empty() {
                    gone.to_string()
                } else {
                    format!("{dir}/{gone}")
                };
                remove(&mut fs, &gone, true);
            }
        }
        for (path, kind, mode, data, link) in entries {
            if path.rsplit('/').next().unwrap().starts_with(".wh.") {
                continue;
            }
            let node = match kind {
                tar::EntryType::Directory => Node {
                    kind: 'd',
                    mode,
                    data: String::new(),
                },
                tar::EntryType::Symlink => Node {
                    kind: 'l',
                    mode,
                    data: link.unwrap(),
                },
                tar::EntryType::Link => {
                    let target = fs
                        .get(&link.unwrap())
                        .expect("hard link target exists")
                        .clone();
                    target
                }
                _ => Node {
                    kind: 'f',
                    mode,
                    data,
                },
            };
            let merge_dir = node.kind == 'd' && fs.get(&path).is_some_and(|n| n.kind == 'd');
            if !merge_dir {
                remove(&mut fs, &path, true);
            }
            fs.insert(path, node);
        }
    }
    fs
}

/// Spools `layers` to files, squashes all but the bottom `keep`, and
/// returns the squashed layer.
fn squash_layers(layers: &[Vec<u8>], keep: usize) -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let paths: Vec<PathBuf> = layers
        .iter()
        .enumerate()
        .map(|(i, bytes)| {
            let path = dir.path().join(format!("{i}.tar"));
            std::fs::write(&path, bytes).unwrap();
            path
        })
        .collect();
    let (emits, size) = merge_layers(&paths, Vec::new(), &[], keep).unwrap();
    let out = write_layer(&emits, &paths, Vec::new(), false).unwrap();
    assert_eq!(out.len() as u64, size, "the measured size is exact");
    out
}

fn names(layer: &[u8]) -> Vec<String> {
    let mut archive = tar::Archive::new(Cursor::new(layer));
    archive
        .entries()
        .unwrap()
        .map(|e| String::from_utf8(e.unwrap().path_bytes().into_owned()).unwrap())
        .collect()
}

/// Squashing keeps the filesystem: kept layers + squashed layer = all.
fn assert_equivalent(layers: &[Vec<u8>], keep: usize) -> Vec<u8> {
    let squashed = squash_layers(layers, keep);
    let mut stack: Vec<Vec<u8>> = layers[..keep].to_vec();
    stack.push(squashed.clone());
    assert_eq!(apply(&stack), apply(layers));
    squashed
}

fn stack() -> Vec<Vec<u8>> {
    vec![
        layer(&[
            E::Dir("etc"),
            E::File("etc/keep", "base"),
            E::File("etc/gone", "base"),
            E::Dir("opt"),
            E::Dir("opt/old"),
            E::File("opt/old/a", "a"),
            E::Dir("var"),
            E::File("var/x", "x"),
        ]),
        layer(&[
            E::Dir("app"),
            E::File("app/secret.txt", "top secret"),
            E::File("app/bin", "v1"),
            E::Dir("tmpdir"),
            E::File("tmpdir/f", "f"),
        ]),
        layer(&[
            E::Dir("app"),
            E::Whiteout("app/secret.txt"),
            E::Mode("app/bin", "v2", 0o755),
            E::Dir("etc"),
            E::Whiteout("etc/gone"),
            E::Whiteout("tmpdir"),
            E::Dir("opt"),
            E::Dir("opt/old"),
            E::Opaque("opt/old"),
            E::File("opt/old/b", "b"),
        ]),
    ]
}

#[test]
fn squashing_everything_leaves_no_whiteouts_and_no_deleted_bytes() {
    let layers = stack();
    let squashed = assert_equivalent(&layers, 0);
    let names = names(&squashed);
    assert!(names.iter().all(|n| !n.contains(".wh.")), "{names:?}");
    assert!(!names
        .iter()
        .any(|n| n.contains("secret") || n.contains("tmpdir")));
    assert!(!String::from_utf8_lossy(&squashed).contains("top secret"));
    assert!(!names.contains(&"opt/old/a".to_string()));
}

#[test]
fn keeping_the_base_whites_out_only_what_the_base_had() {
    let layers = stack();
    let squashed = assert_equivalent(&layers, 1);
    let names = names(&squashed);
    let markers: Vec<&String> = names.iter().filter(|n| n.contains(".wh.")).collect();
    // `etc/gone` and `opt/old/a` (under an opaque directory) came from the
    // kept layer; the secret and
    // `tmpdir` never existed below the squashed layers.
    assert_eq!(markers, ["etc/.wh.gone", "opt/old/.wh.a"]);
    assert!(!String::from_utf8_lossy(&squashed).contains("top secret"));
    // Untouched kept files are not copied.
    assert!(!names.contains(&"var/x".to_string()));
}

#[test]
fn a_deleted_then_recreated_kept_directory_is_opaque() {
    let layers = vec![
        layer(&[E::Dir("d"), E::File("d/old", "old")]),
        layer(&[E::Whiteout("d")]),
        layer(&[E::Dir("d"), E::File("d/new", "new")]),
    ];
    let squashed = assert_equivalent(&layers, 1);
    assert!(names(&squashed).contains(&"d/.wh..wh..opq".to_string()));
}

#[test]
fn files_replaced_by_directories_and_back() {
    let layers = vec![
        layer(&[E::File("x", "file"), E::Dir("y"), E::File("y/inner", "i")]),
        layer(&[
            E::Dir("x"),
            E::File("x/child", "c"),
            E::File("y", "now a file"),
        ]),
        layer(&[E::Dir("y"), E::File("y/again", "a")]),
    ];
    for keep in 0..3 {
        assert_equivalent(&layers, keep);
    }
    let squashed = squash_layers(&layers, 1);
    // `y` was a directory in the kept layer, replaced by a file, then a
    // directory again: its old content must not show through.
    assert!(names(&squashed).contains(&"y/.wh..wh..opq".to_string()));
}

#[test]
fn hard_links_follow_their_content() {
    let layers = vec![
        layer(&[
            E::Dir("bin"),
            E::File("bin/tool", "tool v1"),
            E::HardLink("bin/alias", "bin/tool"),
        ]),
        // The original name is removed: the link keeps the content.
        layer(&[E::Whiteout("bin/tool")]),
        layer(&[E::File("other", "o"), E::HardLink("other-link", "other")]),
    ];
    let squashed = assert_equivalent(&layers, 0);
    let fs = apply(std::slice::from_ref(&squashed));
    assert_eq!(fs["bin/alias"].data, "tool v1");
    assert_eq!(fs["other-link"].data, "o");
    assert!(!names(&squashed).contains(&"bin/tool".to_string()));
}

#[test]
fn a_hard_link_to_a_kept_file_carries_its_target() {
    let layers = vec![
        layer(&[E::Dir("lib"), E::File("lib/a.so", "so")]),
        layer(&[E::Dir("lib"), E::HardLink("lib/b.so", "lib/a.so")]),
    ];
    let squashed = assert_equivalent(&layers, 1);
    // The daemon extracts a layer on its own: the target must be in it.
    assert!(names(&squashed).contains(&"lib/a.so".to_string()));
}

#[test]
fn symlinks_and_modes_survive() {
    let layers = vec![
        layer(&[
            E::Mode("run", "#!/bin/sh", 0o755),
            E::Mode("key", "k", 0o600),
        ]),
        layer(&[E::Symlink("current", "run")]),
    ];
    let squashed = assert_equivalent(&layers, 0);
    let fs = apply(&[squashed]);
    assert_eq!(fs["run"].mode, 0o755);
    assert_eq!(fs["key"].mode, 0o600);
    assert_eq!(
        fs["current"],
        Node {
            kind: 'l',
            mode: 0o777,
            data: "run".into()
        }
    );
}

#[test]
fn long_paths_survive() {
    let long: &'static str = Box::leak(format!("{}/file", "d".repeat(150)).into_boxed_str());
    let dir: &'static str = Box::leak("d".repeat(150).into_boxed_str());
    let layers = vec![layer(&[E::Dir(dir), E::File(long, "deep")])];
    let squashed = assert_equivalent(&layers, 0);
    assert_eq!(apply(&[squashed])[long].data, "deep");
}

/// A saved image in the OCI layout of Docker 25+ (no `manifest.json`).
fn oci_archive(layers: &[Vec<u8>], config: &serde_json::Value) -> Vec<u8> {
    oci_archive_of(layers, "application/vnd.oci.image.layer.v1.tar", config)
}

/// A saved image in the OCI layout whose layer blobs are `layers` as
/// given (compressed or not), all with `media_type`.
fn oci_archive_of(layers: &[Vec<u8>], media_type: &str, config: &serde_json::Value) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let mut add = |name: &str, data: &[u8]| {
        let mut h = tar::Header::new_gnu();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, name, data).unwrap();
    };
    let config_bytes = serde_json::to_vec(config).unwrap();
    let config_digest = sha256(&config_bytes);
    let layer_descriptors: Vec<_> = layers
        .iter()
        .map(|l| json!({"mediaType": media_type, "digest": sha256(l), "size": l.len()}))
        .collect();
    let manifest = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": config_digest},
        "layers": layer_descriptors,
    }))
    .unwrap();
    let manifest_digest = sha256(&manifest);
    let index = serde_json::to_vec(&json!({
        "schemaVersion": 2,
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json", "digest": manifest_digest}],
    }))
    .unwrap();
    // Index first, blobs after: members come in any order.
    add("index.json", &index);
    add("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    add(
        &format!("blobs/sha256/{}", &manifest_digest[7..]),
        &manifest,
    );
    for l in layers {
        add(&format!("blobs/sha256/{}", &sha256(l)[7..]), l);
    }
    add(
        &format!("blobs/sha256/{}", &config_digest[7..]),
        &config_bytes,
    );
    b.into_inner().unwrap()
}

/// A saved image in the legacy layout, `manifest.json` last and a layer
/// stored once and linked from a second directory.
fn legacy_archive(layers: &[Vec<u8>], config: &serde_json::Value) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    let config_bytes = serde_json::to_vec(config).unwrap();
    let mut names = Vec::new();
    for (i, l) in layers.iter().enumerate() {
        let mut h = tar::Header::new_gnu();
        h.set_size(l.len() as u64);
        h.set_mode(0o644);
        b.append_data(&mut h, format!("layer{i}/layer.tar"), l.as_slice())
            .unwrap();
        names.push(format!("layer{i}/layer.tar"));
    }
    let mut h = tar::Header::new_gnu();
    h.set_entry_type(tar::EntryType::Symlink);
    h.set_size(0);
    b.append_link(&mut h, "alias/layer.tar", "../layer0/layer.tar")
        .unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(config_bytes.len() as u64);
    b.append_data(&mut h, "cfg.json", config_bytes.as_slice())
        .unwrap();
    names[0] = "alias/layer.tar".into();
    let manifest =
        serde_json::to_vec(&json!([{"Config": "cfg.json", "RepoTags": ["x:1"], "Layers": names}]))
            .unwrap();
    let mut h = tar::Header::new_gnu();
    h.set_size(manifest.len() as u64);
    b.append_data(&mut h, "manifest.json", manifest.as_slice())
        .unwrap();
    b.into_inner().unwrap()
}

fn config_for(layers: &[Vec<u8>]) -> serde_json::Value {
    json!({
        "architecture": "amd64",
        "os": "linux",
        "config": {"Env": ["PATH=/bin", "A=1"], "Cmd": ["/app/bin"], "WorkingDir": "/app", "User": "1000", "Labels": {"l": "v"}, "ExposedPorts": {"80/tcp": {}}, "StopSignal": "SIGINT"},
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| sha256(l)).collect::<Vec<_>>()},
        "history": [
            {"created_by": "base"},
            {"created_by": "ENV A=1", "empty_layer": true},
            {"created_by": "COPY secret.txt"},
            {"created_by": "RUN rm secret.txt"},
        ],
    })
}

#[test]
fn both_save_layouts_read_the_same_image() {
    let layers = stack();
    let config = config_for(&layers);
    for (archive, layout) in [
        (oci_archive(&layers, &config), Layout::Oci),
        (legacy_archive(&layers, &config), Layout::Legacy),
    ] {
        let dir = tempfile::tempdir().unwrap();
        let saved = read_save(Cursor::new(archive), dir.path(), &unbounded()).unwrap();
        assert_eq!(saved.layout, layout);
        assert_eq!(saved.config, config);
        let read: Vec<Vec<u8>> = saved
            .layers
            .iter()
            .map(|p| std::fs::read(p).unwrap())
            .collect();
        assert_eq!(read, layers);
    }
}

fn gzip(data: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(data, 3).unwrap()
}

#[test]
fn oci_saves_with_gzip_and_zstd_layers_read_like_plain_ones() {
    let layers = stack();
    let config = config_for(&layers);
    type Compress = fn(&[u8]) -> Vec<u8>;
    let cases: [(Compress, Compression, &str); 3] = [
        (
            gzip,
            Compression::Gzip,
            "application/vnd.oci.image.layer.v1.tar+gzip",
        ),
        (
            zstd,
            Compression::Zstd,
            "application/vnd.oci.image.layer.v1.tar+zstd",
        ),
        // The media type is not what tells the compression.
        (
            gzip,
            Compression::Gzip,
            "application/vnd.oci.image.layer.v1.tar",
        ),
    ];
    for (compress, compression, media_type) in cases {
        let blobs: Vec<Vec<u8>> = layers.iter().map(|l| compress(l)).collect();
        let dir = tempfile::tempdir().unwrap();
        let archive = oci_archive_of(&blobs, media_type, &config);
        let saved = read_save(Cursor::new(archive), dir.path(), &unbounded()).unwrap();
        assert_eq!(saved.layout, Layout::Oci);
        let read: Vec<Vec<u8>> = saved
            .layers
            .iter()
            .map(|p| std::fs::read(p).unwrap())
            .collect();
        assert_eq!(read, layers, "{compression}");
        for (blob, bytes) in saved.blobs.iter().zip(&blobs) {
            assert_eq!(blob.compression, compression);
            assert_eq!(blob.digest, sha256(bytes));
            assert_eq!(blob.size, bytes.len() as u64);
            assert_eq!(std::fs::read(&blob.path).unwrap(), *bytes);
        }
        // The merge reads the decompressed layers.
        let squashed = {
            let (emits, _) = merge_layers(&saved.layers, Vec::new(), &[], 0).unwrap();
            write_layer(&emits, &saved.layers, Vec::new(), false).unwrap()
        };
        assert_eq!(apply(&[squashed]), apply(&layers));
    }
}

#[test]
fn unreadable_layers_are_refused_naming_index_and_digest() {
    let layers = stack();
    let config = config_for(&layers);
    let good = gzip(&layers[1]);
    let mut truncated_gzip = good.clone();
    truncated_gzip.truncate(good.len() - 10);
    let mut bad_crc = good.clone();
    let n = bad_crc.len();
    bad_crc[n - 8] ^= 0xff;
    let mut bzip2 = b"BZh91AY&SY".to_vec();
    bzip2.resize(600, 1);
    let not_a_tar = vec![7u8; 4096];
    let cases: [(Vec<u8>, &str); 5] = [
        (truncated_gzip, "is not valid gzip"),
        (bad_crc, "is not valid gzip"),
        (
            bzip2,
            "is bzip2 data, which is not a supported layer format",
        ),
        (
            not_a_tar,
            "is not a tar and of unknown compression (first bytes 07 07",
        ),
        (
            zstd(&layers[0]),
            "does not match the config: its diff id is",
        ),
    ];
    for (blob, expected) in cases {
        let digest = sha256(&blob);
        let blobs = vec![gzip(&layers[0]), blob, gzip(&layers[2])];
        // In the legacy layout nothing but the diff id and the bytes can
        // tell a broken layer: Docker 25+ names its blobs by digest there.
        let dir = tempfile::tempdir().unwrap();
        let err = read_save(
            Cursor::new(oci_archive_of(&blobs, "x", &config)),
            dir.path(),
            &unbounded(),
        )
        .unwrap_err();
        let message = err.to_string();
        assert!(
            message.starts_with(&format!("unreadable image archive: layer 2 (`{digest}`) ")),
            "{message}"
        );
        assert!(message.contains(expected), "{message}");
        assert!(
            message.ends_with("; the image was not changed"),
            "{message}"
        );
    }

    // A blob that is not what its digest says; a blob that is missing.
    let mut archive = oci_archive(&layers, &config);
    let digest = sha256(&layers[1]);
    let mut members = members(&archive);
    let name = format!("blobs/sha256/{}", &digest[7..]);
    members.get_mut(&name).unwrap().truncate(512);
    let rebuild = |members: &BTreeMap<String, Vec<u8>>| {
        let mut b = tar::Builder::new(Vec::new());
        for (name, data) in members {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            b.append_data(&mut h, name, data.as_slice()).unwrap();
        }
        b.into_inner().unwrap()
    };
    archive = rebuild(&members);
    let dir = tempfile::tempdir().unwrap();
    let err = read_save(Cursor::new(archive), dir.path(), &unbounded()).unwrap_err();
    assert!(
        err.to_string().starts_with(&format!(
            "unreadable image archive: layer 2 (`{digest}`) does not match its digest: the blob's is `sha256:"
        )),
        "{err}"
    );
    members.remove(&name);
    let err = read_save(Cursor::new(rebuild(&members)), dir.path(), &unbounded()).unwrap_err();
    assert_eq!(
        err.to_string(),
        format!("unreadable image archive: layer 2 (`{digest}`) is missing: the archive has no member `{name}`; the image was not changed")
    );
}

#[test]
fn archive_errors_say_what_is_missing() {
    let dir = tempfile::tempdir().unwrap();
    let mut b = tar::Builder::new(Vec::new());
    let mut h = tar::Header::new_gnu();
    h.set_size(2);
    b.append_data(&mut h, "other.json", b"{}".as_slice())
        .unwrap();
    let err = read_save(
        Cursor::new(b.into_inner().unwrap()),
        dir.path(),
        &unbounded(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "unreadable image archive: the archive has neither `manifest.json` nor `index.json`"
    );

    // A config that lists more layers than the manifest.
    let layers = stack();
    let err = read_save(
        Cursor::new(oci_archive(&[], &config_for(&layers))),
        dir.path(),
        &unbounded(),
    )
    .unwrap_err();
    assert_eq!(
        err.to_string(),
        "unreadable image archive: the config lists 3 layer(s) but the manifest 0"
    );
}

#[test]
fn error_messages() {
    assert_eq!(
        SquashError::NotABase {
            base: "alpine".into(),
            image: "app".into()
        }
        .to_string(),
        "`alpine` is not a base of `app`: its layers are not the bottom layers of `app`"
    );
    assert_eq!(
        SquashError::NothingToSquash {
            image: "app".into(),
            layers: 2,
            kept: 2
        }
        .to_string(),
        "nothing to squash: `app` has 2 layer(s) and 2 are kept"
    );
    assert_eq!(
        SquashError::NoBase { image: "app".into() }.to_string(),
        "cannot tell the base image of `app`: no tagged image in its history; use `--from BASE` or `--all`"
    );
    assert_eq!(
        SquashError::Layer {
            index: 2,
            digest: "sha256:ab12".into(),
            problem: "is bzip2 data".into()
        }
        .to_string(),
        "unreadable image archive: layer 2 (`sha256:ab12`) is bzip2 data; the image was not changed"
    );
}

#[test]
fn history_and_diff_ids_are_rewritten_consistently() {
    let layers = stack();
    let config = config_for(&layers);
    let new = rewrite_config(&config, 1, "sha256:new", "app", "2024-01-01T00:00:00Z");
    assert_eq!(
        new["rootfs"]["diff_ids"],
        json!([sha256(&layers[0]), "sha256:new"])
    );
    let history = new["history"].as_array().unwrap();
    assert_eq!(history.len(), 2);
    assert_eq!(history[0]["created_by"], "base");
    assert_eq!(
        history[1]["comment"],
        "squashed 2 layer(s) (3 history entries) of app into one"
    );
    let non_empty = history
        .iter()
        .filter(|h| h["empty_layer"] != json!(true))
        .count();
    assert_eq!(non_empty, 2);
    assert_eq!(new["config"], config["config"]);
    assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
    assert_eq!(rfc3339(1_709_251_199), "2024-02-29T23:59:59Z");
}

/// Serves one crafted saved image and records what is loaded.
struct ArchiveEngine {
    archive: Vec<u8>,
    details: ImageDetails,
    loaded: Mutex<Vec<u8>>,
}

impl ArchiveEngine {
    /// An engine whose image `sha256:app` has `layers` and `config`, and
    /// which saves it as `archive`.
    fn new(archive: Vec<u8>, layers: &[Vec<u8>], config: &serde_json::Value) -> ArchiveEngine {
        ArchiveEngine {
            archive,
            details: ImageDetails {
                id: "sha256:app".into(),
                diff_ids: layers.iter().map(|l| sha256(l)).collect(),
                config: config["config"].clone(),
                author: String::new(),
                architecture: "amd64".into(),
                os: "linux".into(),
            },
            loaded: Mutex::new(Vec::new()),
        }
    }
}

#[async_trait::async_trait]
impl Engine for ArchiveEngine {
    async fn ping(&self) -> Result<(), EngineError> {
        Ok(())
    }
    async fn build(
        &self,
        _: BuildRequest,
        _: crate::engine::BuildSink,
    ) -> Result<BuiltImage, EngineError> {
        Err(EngineError::Api("no builds here".into()))
    }
    async fn run(&self, _: RunRequest, _: LineSink) -> Result<i64, EngineError> {
        Err(EngineError::Api("no runs here".into()))
    }
    async fn inspect_image(&self, _: &str) -> Result<Option<ImageInfo>, EngineError> {
        Ok(None)
    }
    async fn remove_image(&self, _: &str, _: bool, _: bool) -> Result<(), EngineError> {
        Ok(())
    }
    async fn remove_containers_with_label(&self, _: &str, _: &str) -> Result<usize, EngineError> {
        Ok(0)
    }
    async fn tag_image(&self, _: &str, _: &str) -> Result<(), EngineError> {
        unimplemented!()
    }
    async fn push_image(&self, _: &str, _: LineSink) -> Result<crate::engine::Pushed, EngineError> {
        unimplemented!()
    }
    async fn pull_image(&self, _: &str, _: LineSink) -> Result<bool, EngineError> {
        unimplemented!()
    }
    async fn save_image(&self, _: &str) -> Result<ByteStream, EngineError> {
        let chunks: Vec<Result<bytes::Bytes, EngineError>> = self
            .archive
            .chunks(1000)
            .map(|c| Ok(bytes::Bytes::copy_from_slice(c)))
            .collect();
        Ok(Box::pin(futures_util::stream::iter(chunks)))
    }
    async fn load_image(&self, mut archive: ByteStream, _: LineSink) -> Result<(), EngineError> {
        let mut all = Vec::new();
        while let Some(chunk) = archive.next().await {
            all.extend_from_slice(&chunk?);
        }
        *self.loaded.lock().unwrap() = all;
        Ok(())
    }
    async fn image_details(&self, image: &str) -> Result<Option<ImageDetails>, EngineError> {
        if image == "app" {
            return Ok(Some(self.details.clone()));
        }
        // The squashed image: its id is the digest of the loaded config.
        let loaded = self.loaded.lock().unwrap().clone();
        let members = members(&loaded);
        let manifest: serde_json::Value =
            serde_json::from_slice(&members["manifest.json"]).unwrap();
        let config = &members[manifest[0]["Config"].as_str().unwrap()];
        Ok(Some(ImageDetails {
            id: sha256(config),
            ..self.details.clone()
        }))
    }

    // Not simulated: squashing a saved image needs none of these.

    async fn image_history(
        &self,
        image: &str,
    ) -> Result<Vec<crate::engine::HistoryEntry>, EngineError> {
        Err(crate::engine::fake::unsupported(
            "read the history of",
            image,
        ))
    }
    async fn export_filesystem(
        &self,
        image: &str,
        _: BTreeMap<String, String>,
    ) -> Result<ByteStream, EngineError> {
        Err(crate::engine::fake::unsupported("export", image))
    }
    async fn import_image(
        &self,
        _: ByteStream,
        reference: &str,
        _: Vec<String>,
        _: &str,
    ) -> Result<String, EngineError> {
        Err(crate::engine::fake::unsupported("import", reference))
    }
    async fn create_container(
        &self,
        req: crate::engine::ContainerRequest,
    ) -> Result<String, EngineError> {
        Err(crate::engine::fake::unsupported(
            "create a container of",
            &req.image,
        ))
    }
    async fn archive(&self, _: &str, path: &str) -> Result<ByteStream, EngineError> {
        Err(crate::engine::fake::unsupported("read", path))
    }
    async fn exec(&self, id: &str, _: Vec<String>, _: LineSink) -> Result<i64, EngineError> {
        Err(crate::engine::fake::unsupported("exec in", id))
    }
    async fn commit(&self, id: &str, _: &str) -> Result<String, EngineError> {
        Err(crate::engine::fake::unsupported("commit", id))
    }
    async fn remove_container(&self, id: &str) -> Result<(), EngineError> {
        Err(crate::engine::fake::unsupported("remove", id))
    }
    async fn create_network(
        &self,
        name: &str,
        _: &BTreeMap<String, String>,
        _: Option<&str>,
    ) -> Result<String, EngineError> {
        Err(EngineError::Api(format!(
            "this engine cannot create network `{name}`"
        )))
    }
    async fn remove_network(&self, name: &str) -> Result<(), EngineError> {
        Err(EngineError::Api(format!(
            "this engine cannot remove network `{name}`"
        )))
    }
    /// No networks.
    async fn network_subnets(&self) -> Result<Vec<String>, EngineError> {
        Ok(Vec::new())
    }
    /// Nothing was left behind.
    async fn list_labelled(&self, _: &str) -> Result<Vec<crate::engine::Leftover>, EngineError> {
        Ok(Vec::new())
    }
    /// No container is attached.
    async fn containers_on_network(&self, _: &str) -> Result<Vec<(String, bool)>, EngineError> {
        Ok(Vec::new())
    }
}

fn members(archive: &[u8]) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut a = tar::Archive::new(Cursor::new(archive));
    for e in a.entries().unwrap() {
        let mut e = e.unwrap();
        let name = e.path().unwrap().to_string_lossy().into_owned();
        let mut data = Vec::new();
        e.read_to_end(&mut data).unwrap();
        out.insert(name, data);
    }
    out
}

#[tokio::test]
async fn a_crafted_oci_save_is_squashed_and_loaded_with_its_config() {
    let layers = stack();
    let config = config_for(&layers);
    let engine = ArchiveEngine::new(oci_archive(&layers, &config), &layers, &config);
    let sink: LineSink = Arc::new(|_| {});
    let report = squash(
        &engine,
        "app",
        "app:squashed",
        Keep::Layers(1),
        u64::MAX,
        sink,
    )
    .await
    .unwrap();
    assert_eq!(
        (report.layers_before, report.layers_after, report.kept),
        (3, 2, 1)
    );
    assert_eq!(report.method, Method::Merge);

    let loaded = members(&engine.loaded.lock().unwrap());
    let manifest: serde_json::Value = serde_json::from_slice(&loaded["manifest.json"]).unwrap();
    assert_eq!(manifest[0]["RepoTags"], json!(["app:squashed"]));
    let config_name = manifest[0]["Config"].as_str().unwrap();
    let new_config: serde_json::Value = serde_json::from_slice(&loaded[config_name]).unwrap();
    assert_eq!(report.image_id, sha256(&loaded[config_name]));
    assert_eq!(new_config["config"], config["config"]);
    let squashed = &loaded[manifest[0]["Layers"][1].as_str().unwrap()];
    assert_eq!(
        new_config["rootfs"]["diff_ids"],
        json!([sha256(&layers[0]), sha256(squashed)])
    );
    // The kept layer is not sent again: the daemon has it.
    assert!(loaded[manifest[0]["Layers"][0].as_str().unwrap()].is_empty());
    assert_eq!(
        apply(&[layers[0].clone(), squashed.clone()]),
        apply(&layers)
    );
}

/// A committed image carries its container's labels, in `config` and in
/// `container_config`; squashed with the step's own labels, neither keeps
/// them.
#[tokio::test]
async fn a_labelled_squash_keeps_only_the_given_labels() {
    let layers = stack();
    let mut config = config_for(&layers);
    let committed = json!({"l": "v", "habitus.build": "b1", "habitus.container": "b1", "habitus.owner.pid": "42"});
    config["config"]["Labels"] = committed.clone();
    config["container_config"] = json!({"Cmd": ["/bin/sh"], "Labels": committed});
    let engine = ArchiveEngine::new(legacy_archive(&layers, &config), &layers, &config);
    let sink: LineSink = Arc::new(|_| {});
    let own = BTreeMap::from([("l".to_string(), "v".to_string())]);
    let report = squash_labelled(
        &engine,
        "app",
        "app:squashed",
        Keep::Layers(1),
        &own,
        u64::MAX,
        sink,
    )
    .await
    .unwrap();
    assert_eq!(report.method, Method::Merge);
    let loaded = members(&engine.loaded.lock().unwrap());
    let manifest: serde_json::Value = serde_json::from_slice(&loaded["manifest.json"]).unwrap();
    let new_config: serde_json::Value =
        serde_json::from_slice(&loaded[manifest[0]["Config"].as_str().unwrap()]).unwrap();
    assert_eq!(new_config["config"]["Labels"], json!({"l": "v"}));
    assert_eq!(new_config["container_config"]["Labels"], json!({"l": "v"}));
    // The rest of the config is the committed image's.
    assert_eq!(new_config["config"]["Cmd"], config["config"]["Cmd"]);
    assert_eq!(new_config["container_config"]["Cmd"], json!(["/bin/sh"]));
}

#[tokio::test]
async fn a_gzip_oci_save_loads_as_oci_naming_the_kept_blobs() {
    let layers = stack();
    let config = config_for(&layers);
    let blobs: Vec<Vec<u8>> = layers.iter().map(|l| gzip(l)).collect();
    let engine = ArchiveEngine::new(
        oci_archive_of(
            &blobs,
            "application/vnd.oci.image.layer.v1.tar+gzip",
            &config,
        ),
        &layers,
        &config,
    );
    let sink: LineSink = Arc::new(|_| {});
    let report = squash(
        &engine,
        "app",
        "app:squashed",
        Keep::Layers(1),
        u64::MAX,
        sink,
    )
    .await
    .unwrap();
    assert_eq!((report.layers_after, report.kept), (2, 1));

    let loaded = members(&engine.loaded.lock().unwrap());
    assert_eq!(loaded["oci-layout"], br#"{"imageLayoutVersion":"1.0.0"}"#);
    let index: serde_json::Value = serde_json::from_slice(&loaded["index.json"]).unwrap();
    let entry = &index["manifests"][0];
    assert_eq!(
        entry["annotations"]["io.containerd.image.name"],
        "docker.io/library/app:squashed"
    );
    let manifest_digest = entry["digest"].as_str().unwrap();
    let manifest_bytes = &loaded[&format!("blobs/sha256/{}", &manifest_digest[7..])];
    assert_eq!(sha256(manifest_bytes), manifest_digest);
    let manifest: serde_json::Value = serde_json::from_slice(manifest_bytes).unwrap();
    // The kept layer is named by the gzip blob the daemon saved, and not
    // sent: the store has it.
    assert_eq!(
        manifest["layers"][0],
        json!({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
               "digest": sha256(&blobs[0]), "size": blobs[0].len()})
    );
    assert!(!loaded.contains_key(&format!("blobs/sha256/{}", &sha256(&blobs[0])[7..])));
    // The squashed layer is an uncompressed tar under its digest.
    let squashed_digest = manifest["layers"][1]["digest"].as_str().unwrap();
    assert_eq!(
        manifest["layers"][1]["mediaType"],
        "application/vnd.oci.image.layer.v1.tar"
    );
    let squashed = &loaded[&format!("blobs/sha256/{}", &squashed_digest[7..])];
    assert_eq!(sha256(squashed), squashed_digest);
    let config_digest = manifest["config"]["digest"].as_str().unwrap();
    let new_config: serde_json::Value =
        serde_json::from_slice(&loaded[&format!("blobs/sha256/{}", &config_digest[7..])]).unwrap();
    assert_eq!(
        new_config["rootfs"]["diff_ids"],
        json!([sha256(&layers[0]), squashed_digest])
    );
    assert_eq!(new_config["config"], config["config"]);
    assert_eq!(
        apply(&[layers[0].clone(), squashed.clone()]),
        apply(&layers)
    );
    // Graph-driver daemons read `manifest.json` of the same archive.
    let legacy: serde_json::Value = serde_json::from_slice(&loaded["manifest.json"]).unwrap();
    assert_eq!(
        legacy[0]["Layers"][1],
        format!("blobs/sha256/{}", &squashed_digest[7..])
    );
}

#[tokio::test]
async fn keeping_every_layer_is_refused() {
    let layers = stack();
    let config = config_for(&layers);
    let engine = ArchiveEngine::new(Vec::new(), &layers, &config);
    let sink: LineSink = Arc::new(|_| {});
    let err = squash(&engine, "app", "t", Keep::Layers(3), u64::MAX, sink)
        .await
        .unwrap_err();
    assert_eq!(
        err.to_string(),
        "nothing to squash: `app` has 3 layer(s) and 3 are kept"
    );
}

#[test]
fn the_containerd_name_of_a_reference_follows_the_docker_cli_registry_rule() {
    use super::write::full_name;
    for (reference, full) in [
        ("app:1", "docker.io/library/app:1"),
        ("team/app:1", "docker.io/team/app:1"),
        ("docker.io/app:1", "docker.io/library/app:1"),
        ("index.docker.io/team/app:1", "docker.io/team/app:1"),
        ("localhost/app:1", "localhost/app:1"),
        ("LOCALHOST/app:1", "LOCALHOST/app:1"),
        ("registry:5000/app:1", "registry:5000/app:1"),
        ("reg.example/team/app:1", "reg.example/team/app:1"),
    ] {
        assert_eq!(full_name(reference), full, "{reference}");
    }
}

/// A read plan that spools everything, with no bound.
fn unbounded() -> ReadPlan {
    ReadPlan::spool_all(Budget::new(u64::MAX))
}

/// An engine that saves `layers` in `layout` (plain tars for the legacy
/// one, gzip blobs for the OCI one).
fn engine_of(layers: &[Vec<u8>], layout: Layout) -> ArchiveEngine {
    let config = config_for(layers);
    let archive = match layout {
        Layout::Legacy => legacy_archive(layers, &config),
        Layout::Oci => {
            let blobs: Vec<Vec<u8>> = layers.iter().map(|l| gzip(l)).collect();
            oci_archive_of(
                &blobs,
                "application/vnd.oci.image.layer.v1.tar+gzip",
                &config,
            )
        }
    };
    ArchiveEngine::new(archive, layers, &config)
}

/// Squashes with the bottom layer kept; the report or the error, and the
/// progress lines.
async fn squash_keeping_one(
    engine: &ArchiveEngine,
    limit: u64,
) -> (Result<SquashReport, SquashError>, Vec<String>) {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let seen = Arc::clone(&lines);
    let sink: LineSink = Arc::new(move |l: &str| seen.lock().unwrap().push(l.to_string()));
    let result = squash(engine, "app", "app:squashed", Keep::Layers(1), limit, sink).await;
    let lines = lines.lock().unwrap().clone();
    (result, lines)
}

/// The squashed layer of what `engine` loaded.
fn loaded_squashed_layer(engine: &ArchiveEngine) -> Vec<u8> {
    let loaded = members(&engine.loaded.lock().unwrap());
    let manifest: serde_json::Value = serde_json::from_slice(&loaded["manifest.json"]).unwrap();
    loaded[manifest[0]["Layers"][1].as_str().unwrap()].clone()
}

/// Four MiB of `x`: a kept file far larger than everything else.
fn big() -> &'static str {
    static BIG: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIG.get_or_init(|| "x".repeat(4 << 20))
}

#[tokio::test]
async fn a_kept_layer_is_never_spooled_in_either_layout() {
    let layers = vec![
        layer(&[
            E::Dir("usr"),
            E::Dir("usr/lib"),
            E::File("usr/lib/big", big()),
        ]),
        // No parent directories: the squashed layer takes them from the
        // kept layer's headers.
        layer(&[E::File("usr/lib/new", "n")]),
        layer(&[E::File("usr/lib/other", "o")]),
    ];
    for layout in [Layout::Legacy, Layout::Oci] {
        let engine = engine_of(&layers, layout);
        let (report, lines) = squash_keeping_one(&engine, 1 << 20).await;
        let report = report.unwrap_or_else(|e| panic!("{layout:?}: {e}\n{lines:?}"));
        // The 4 MiB kept layer (the limit is 1 MiB) was only streamed;
        // the gzip blob of the OCI save is a few KiB.
        assert!(report.temp_bytes < 64 << 10, "{layout:?}: {report:?}");
        assert!(
            !lines.iter().any(|l| l.contains("kept layers spooled")),
            "{lines:?}"
        );
        let squashed = loaded_squashed_layer(&engine);
        assert_eq!(
            names(&squashed),
            ["usr", "usr/lib", "usr/lib/new", "usr/lib/other"],
            "{layout:?}"
        );
        assert_eq!(
            apply(&[layers[0].clone(), squashed.clone()]),
            apply(&layers)
        );
    }
}

#[tokio::test]
async fn a_hard_link_to_a_kept_file_squashes_again_with_the_kept_layers_spooled() {
    let layers = vec![
        layer(&[E::Dir("lib"), E::File("lib/a.so", "so")]),
        layer(&[E::Dir("lib"), E::HardLink("lib/b.so", "lib/a.so")]),
    ];
    for layout in [Layout::Legacy, Layout::Oci] {
        let engine = engine_of(&layers, layout);
        let (report, lines) = squash_keeping_one(&engine, u64::MAX).await;
        report.unwrap_or_else(|e| panic!("{layout:?}: {e}\n{lines:?}"));
        assert!(
            lines.iter().any(|l| l.contains(
                "the squashed layer needs a file of a kept layer: squashing again with the kept layers spooled"
            )),
            "{layout:?}: {lines:?}"
        );
        let squashed = loaded_squashed_layer(&engine);
        assert!(names(&squashed).contains(&"lib/a.so".to_string()));
        assert_eq!(apply(&[layers[0].clone(), squashed]), apply(&layers));
    }
}

#[tokio::test]
async fn a_squashed_layer_over_the_temp_limit_stops_the_squash_naming_it() {
    let layers = vec![
        layer(&[E::Dir("etc"), E::File("etc/base", "b")]),
        layer(&[E::Dir("opt"), E::File("opt/big", big())]),
    ];
    for layout in [Layout::Legacy, Layout::Oci] {
        let engine = engine_of(&layers, layout);
        let (result, _) = squash_keeping_one(&engine, 1 << 20).await;
        let err = result.unwrap_err();
        let SquashError::TempLimit { what, limit, .. } = &err else {
            panic!("{layout:?}: {err}");
        };
        assert_eq!(*limit, 1 << 20);
        assert!(what.starts_with("layer 2 (`sha256:"), "{layout:?}: {err}");
        assert!(engine.loaded.lock().unwrap().is_empty(), "nothing loaded");
    }
    assert_eq!(
        SquashError::TempLimit {
            image: "app:1".into(),
            what: "layer 2 (`sha256:ab12`)".into(),
            written: 1000,
            limit: 1 << 20,
        }
        .to_string(),
        "squashing `app:1` stopped while writing layer 2 (`sha256:ab12`): its temporary files would exceed the limit (1000 bytes written = 1000 bytes, the limit is 1048576 bytes = 1.0 MiB); the image was not changed and the temporary files are removed; if the image really needs more, raise the limit with `--squash-temp-limit SIZE` (or HABITUS_SQUASH_TEMP_LIMIT)"
    );
}
