//! The audit against everyday encodings, nested archives and the bytes of
//! an image that are not files.

use std::io::Write;

use base64::Engine as _;

use super::{audit_archive, Encoding, ImageAudit, Location, Part, Scanner};

/// A three-line value, as keys are.
const KEY: &[u8] = b"-----BEGIN TEST KEY-----\nQm9yaW5nIGJ1dCBsb25nIGVub3VnaCB0byB3cmFwIGF0IHNpeHR5LWZvdXIgY29sdW1ucw\nc2Vjb25kIGxpbmUgb2YgdGhlIGtleSBib2R5IHdpdGggbW9yZSBieXRlcw==\n-----END TEST KEY-----\n";

fn scanner() -> Scanner {
    Scanner::new([("key", KEY)]).0
}

fn wrap(text: &str, width: usize, eol: &str) -> String {
    text.as_bytes()
        .chunks(width)
        .map(|c| format!("{}{eol}", std::str::from_utf8(c).unwrap()))
        .collect()
}

fn hex(data: &[u8]) -> String {
    data.iter().map(|b| format!("{b:02x}")).collect()
}

#[test]
fn wrapped_base64_and_hex_are_found_at_any_width_and_line_ending() {
    let scanner = scanner();
    let b64 = base64::engine::general_purpose::STANDARD.encode(KEY);
    let url = base64::engine::general_purpose::URL_SAFE.encode([b"xy", KEY].concat());
    let cases = [
        (wrap(&b64, 76, "\n"), Encoding::Base64),
        (wrap(&b64, 64, "\r\n"), Encoding::Base64),
        (
            format!("key: {}", wrap(&url, 50, "\n")),
            Encoding::Base64Url,
        ),
        (wrap(&hex(KEY), 60, "\n"), Encoding::HexLower),
        (
            format!("00000000: {}", wrap(&hex(KEY).to_uppercase(), 32, "\r\n")),
            Encoding::HexUpper,
        ),
    ];
    for (text, encoding) in cases {
        let found = scanner.scan_bytes(text.as_bytes());
        assert!(
            // Where URL-safe base64 has no `-` or `_`, it is named base64.
            found.iter().any(|f| f.encoding == encoding
                || (encoding == Encoding::Base64Url && f.encoding == Encoding::Base64)),
            "{encoding}: {found:?}"
        );
    }
    let part = wrap(&b64[..40], 76, "\n");
    assert!(
        scanner.scan_bytes(part.as_bytes()).is_empty(),
        "{:?}",
        scanner.scan_bytes(part.as_bytes())
    );
}

#[test]
fn url_encoding_with_lowercase_hex_and_plus_for_space_is_found() {
    let (scanner, _) = Scanner::new([("p", &b"pa ss/w:rd!"[..])]);
    for text in [
        "q=pa+ss%2fw%3ard%21",
        "q=pa%20ss%2Fw%3Ard%21&x",
        "pa+ss%2Fw%3Ard%21",
    ] {
        assert_eq!(
            scanner.scan_bytes(text.as_bytes())[0].encoding,
            Encoding::UrlEncoded,
            "{text}"
        );
    }
}

#[test]
fn every_value_is_searched_and_named_by_every_declaration() {
    let (scanner, skipped) = Scanner::new([
        ("a: file/id_rsa", &b"first-value-of-id_rsa"[..]),
        ("b: file/id_rsa", &b"second-value-of-id_rsa"[..]),
        ("c: file/id_rsa", &b"first-value-of-id_rsa\n"[..]),
    ]);
    assert!(skipped.is_empty());
    assert_eq!(
        scanner.scan_bytes(b"..second-value-of-id_rsa..")[0].secret,
        "b: file/id_rsa"
    );
    assert_eq!(
        scanner.scan_bytes(b"first-value-of-id_rsa")[0].secret,
        "a: file/id_rsa, c: file/id_rsa"
    );
}

fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap()
}

fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

fn sha256(data: &[u8]) -> String {
    format!(
        "sha256:{}",
        crate::layer::hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
    )
}

/// A zip as `jar` writes it: deflated entries whose sizes follow their
/// data (flag bit 3), then a central directory; `stored` entries instead
/// carry their sizes in the header.
fn zip_of(files: &[(&str, &[u8])], stored: bool) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, data) in files {
        let (flags, method, body): (u16, u16, Vec<u8>) = if stored {
            (0, 0, data.to_vec())
        } else {
            let mut e = flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(data).unwrap();
            (8, 8, e.finish().unwrap())
        };
        let sized = |n: usize| if stored { n as u32 } else { 0 };
        out.extend_from_slice(b"PK\x03\x04");
        out.extend_from_slice(&20u16.to_le_bytes());
        out.extend_from_slice(&flags.to_le_bytes());
        out.extend_from_slice(&method.to_le_bytes());
        out.extend_from_slice(&[0; 8]); // time, date, crc
        out.extend_from_slice(&sized(body.len()).to_le_bytes());
        out.extend_from_slice(&sized(data.len()).to_le_bytes());
        out.extend_from_slice(&(name.len() as u16).to_le_bytes());
        out.extend_from_slice(&0u16.to_le_bytes());
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(&body);
        if !stored {
            out.extend_from_slice(b"PK\x07\x08");
            out.extend_from_slice(&0u32.to_le_bytes());
            out.extend_from_slice(&(body.len() as u32).to_le_bytes());
            out.extend_from_slice(&(data.len() as u32).to_le_bytes());
        }
    }
    out.extend_from_slice(b"PK\x01\x02 central directory follows");
    out
}

/// A legacy `docker save` archive of one image with these layer tars.
fn saved(layers: &[Vec<u8>]) -> Vec<u8> {
    let config = serde_json::json!({
        "rootfs": {"type": "layers", "diff_ids": layers.iter().map(|l| sha256(l)).collect::<Vec<_>>()},
    });
    let names: Vec<String> = (0..layers.len())
        .map(|i| format!("l{i}/layer.tar"))
        .collect();
    let manifest = serde_json::json!([{"Config": "config.json", "Layers": names}]);
    let mut members: Vec<(String, Vec<u8>)> = vec![
        ("manifest.json".into(), manifest.to_string().into_bytes()),
        ("config.json".into(), config.to_string().into_bytes()),
    ];
    for (name, layer) in names.iter().zip(layers) {
        members.push((name.clone(), layer.clone()));
    }
    let refs: Vec<(&str, &[u8])> = members
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    tar_of(&refs)
}

fn audit_layer(files: &[(&str, &[u8])]) -> ImageAudit {
    audit_archive(&scanner(), saved(&[tar_of(files)]).as_slice()).unwrap()
}

fn paths(audit: &ImageAudit) -> Vec<String> {
    audit
        .hits
        .iter()
        .filter_map(|h| match &h.location {
            Location::Layer { path, .. } => Some(path.clone()),
            _ => None,
        })
        .collect()
}

#[test]
fn a_secret_inside_gzip_zstd_zip_and_tar_files_is_found_and_named_inside() {
    let tgz = gzip(&tar_of(&[("keys/id_rsa", KEY)]));
    let zst = zstd::encode_all(KEY, 3).unwrap();
    let jar = zip_of(&[("META-INF/x", b"hello"), ("keys/id_rsa", KEY)], false);
    let stored = zip_of(&[("keys/id_rsa", KEY)], true);
    let inner_zip_in_tgz = gzip(&tar_of(&[("b.zip", &jar)]));
    let audit = audit_layer(&[
        ("k.gz", &gzip(KEY)),
        ("app.tgz", &tgz),
        ("k.zst", &zst),
        ("app.jar", &jar),
        ("stored.zip", &stored),
        ("deep.tgz", &inner_zip_in_tgz),
        ("clean.gz", &gzip(b"nothing here")),
    ]);
    let found = paths(&audit);
    for want in [
        "k.gz",
        "app.tgz!/keys/id_rsa",
        "k.zst",
        "app.jar!/keys/id_rsa",
        "stored.zip!/keys/id_rsa",
        "deep.tgz!/b.zip!/keys/id_rsa",
    ] {
        assert!(found.iter().any(|p| p == want), "{want} in {found:?}");
    }
    assert!(!found.iter().any(|p| p.starts_with("clean")), "{found:?}");
    assert_eq!(audit.nested, 10, "{:?}", audit.nested);
    assert!(audit.not_searched.is_empty(), "{:?}", audit.not_searched);
    let line = audit
        .hits
        .iter()
        .find(|h| matches!(&h.location, Location::Layer { path, .. } if path == "app.tgz!/keys/id_rsa"))
        .unwrap()
        .describe("img");
    assert!(
        line.ends_with("at `/app.tgz!/keys/id_rsa`, inside gzip, tar"),
        "{line}"
    );
}

#[test]
fn a_bomb_and_deep_nesting_are_named_as_not_searched() {
    // 64 MiB of zeros deflate to about 64 KiB: a 1000:1 ratio.
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    let zeros = vec![0u8; 1 << 20];
    for _ in 0..64 {
        e.write_all(&zeros).unwrap();
    }
    let bomb = e.finish().unwrap();
    let mut deep = KEY.to_vec();
    for _ in 0..20 {
        deep = gzip(&deep);
    }
    let audit = audit_layer(&[("bomb.gz", &bomb), ("deep.gz", &deep)]);
    let reasons: Vec<(String, String)> = audit
        .not_searched
        .iter()
        .map(|n| (n.path.clone(), n.reason.clone()))
        .collect();
    assert!(
        reasons
            .iter()
            .any(|(p, r)| p == "bomb.gz" && r.contains("times its packed size")),
        "{reasons:?}"
    );
    assert!(
        reasons
            .iter()
            .any(|(p, r)| p == "deep.gz" && r.contains("beyond the limit of 8")),
        "{reasons:?}"
    );
    assert!(audit.hits.is_empty(), "{:?}", audit.hits);
}

#[test]
fn bytes_after_the_end_of_the_tar_and_in_headers_are_searched() {
    let mut layer = tar_of(&[("etc/motd", b"hello")]);
    layer.extend_from_slice(KEY);
    let audit = audit_archive(&scanner(), saved(&[layer]).as_slice()).unwrap();
    assert_eq!(audit.hits.len(), 1, "{:?}", audit.hits);
    assert!(matches!(
        audit.hits[0].location,
        Location::Layer {
            part: Some(Part::AfterEnd),
            ..
        }
    ));

    // The owner's name field of a header.
    let (scanner, _) = Scanner::new([("u", &b"user-s3cret"[..])]);
    let mut h = tar::Header::new_ustar();
    h.set_size(2);
    h.set_username("user-s3cret").unwrap();
    h.set_cksum();
    let mut b = tar::Builder::new(Vec::new());
    b.append_data(&mut h, "f", &b"hi"[..]).unwrap();
    let audit = audit_archive(&scanner, saved(&[b.into_inner().unwrap()]).as_slice()).unwrap();
    assert!(
        audit.hits[0].describe("img").contains("in its tar header"),
        "{:?}",
        audit.hits
    );
}

#[test]
fn an_oversized_pax_record_fails_the_audit_naming_the_limit() {
    let mut b = tar::Builder::new(Vec::new());
    let big = vec![b'a'; 2 << 20];
    b.append_pax_extensions([("comment", big.as_slice())])
        .unwrap();
    let mut h = tar::Header::new_ustar();
    h.set_size(0);
    h.set_cksum();
    b.append_data(&mut h, "f", std::io::empty()).unwrap();
    let err = audit_archive(&scanner(), saved(&[b.into_inner().unwrap()]).as_slice()).unwrap_err();
    assert!(err.to_string().contains("PAX header of"), "{err}");
}

/// An OCI archive whose index lists one manifest per platform; with
/// `drop`, the blobs of that platform are left out.
fn multi_platform(layers: &[(&str, Vec<u8>)], drop: Option<&str>) -> Vec<u8> {
    let mut members: Vec<(String, Vec<u8>)> = Vec::new();
    let mut manifests = Vec::new();
    let path = |d: &str| format!("blobs/sha256/{}", &d[7..]);
    for (platform, layer) in layers {
        let blob = gzip(layer);
        let config = serde_json::json!({"rootfs": {"type": "layers", "diff_ids": [sha256(layer)]}})
            .to_string();
        let manifest = serde_json::json!({
            "config": {"digest": sha256(config.as_bytes())},
            "layers": [{"digest": sha256(&blob)}],
        })
        .to_string();
        let (os, arch) = platform.split_once('/').unwrap();
        manifests.push(serde_json::json!({
            "digest": sha256(manifest.as_bytes()),
            "platform": {"os": os, "architecture": arch},
        }));
        if drop != Some(platform) {
            members.push((path(&sha256(&blob)), blob));
            members.push((path(&sha256(config.as_bytes())), config.into_bytes()));
            members.push((path(&sha256(manifest.as_bytes())), manifest.into_bytes()));
        }
    }
    let index = serde_json::json!({"manifests": manifests}).to_string();
    members.push(("index.json".into(), index.into_bytes()));
    let refs: Vec<(&str, &[u8])> = members
        .iter()
        .map(|(n, d)| (n.as_str(), d.as_slice()))
        .collect();
    tar_of(&refs)
}

#[test]
fn every_platform_of_an_index_is_searched_and_a_missing_one_named() {
    let clean = tar_of(&[("etc/motd", b"hello")]);
    let leaky = tar_of(&[("root/key", KEY)]);
    let both = [("linux/amd64", clean.clone()), ("linux/arm64", leaky)];
    let audit = audit_archive(&scanner(), multi_platform(&both, None).as_slice()).unwrap();
    assert_eq!(audit.images, 2);
    assert_eq!(audit.hits.len(), 1, "{:?}", audit.hits);
    assert!(
        audit.hits[0]
            .describe("img")
            .contains("of linux/arm64 at `/root/key`"),
        "{}",
        audit.hits[0].describe("img")
    );
    let audit = audit_archive(
        &scanner(),
        multi_platform(&both, Some("linux/arm64")).as_slice(),
    )
    .unwrap();
    assert!(audit.hits.is_empty());
    assert_eq!(audit.not_searched.len(), 1);
    assert!(audit.not_searched[0]
        .describe("img")
        .starts_with("img: not searched: of linux/arm64: the index lists manifest"));
}

#[test]
fn a_secret_in_a_gzip_layer_blob_header_is_found() {
    let layer = tar_of(&[("etc/motd", b"hello")]);
    let name = std::str::from_utf8(&KEY[25..95]).unwrap();
    for (filename, comment) in [(Some(name), None), (None, Some(name))] {
        let mut builder = flate2::GzBuilder::new();
        if let Some(f) = filename {
            builder = builder.filename(f);
        }
        if let Some(c) = comment {
            builder = builder.comment(c);
        }
        let mut e = builder.write(Vec::new(), flate2::Compression::fast());
        e.write_all(&layer).unwrap();
        let blob = e.finish().unwrap();
        let config =
            serde_json::json!({"rootfs": {"type": "layers", "diff_ids": [sha256(&layer)]}})
                .to_string();
        let manifest =
            serde_json::json!([{"Config": "c.json", "Layers": ["l.tar.gz"]}]).to_string();
        let archive = tar_of(&[
            ("manifest.json", manifest.as_bytes()),
            ("c.json", config.as_bytes()),
            ("l.tar.gz", &blob),
        ]);
        let audit = audit_archive(&scanner(), archive.as_slice()).unwrap();
        assert_eq!(audit.hits.len(), 1, "{:?}", audit.hits);
        assert!(
            audit.hits[0]
                .describe("img")
                .contains("compressed blob's own bytes"),
            "{}",
            audit.hits[0].describe("img")
        );
    }
}

#[test]
fn a_path_or_record_name_that_holds_a_secret_is_named_without_it() {
    let (scanner, _) = Scanner::new([("t", &b"token-0123456789"[..])]);
    assert_eq!(
        scanner.redact("srv/token-0123456789/é.txt"),
        "srv/***/é.txt"
    );
    let name = "keys/token-0123456789";
    let audit = audit_archive(&scanner, saved(&[tar_of(&[(name, b"x")])]).as_slice()).unwrap();
    let line = audit.hits[0].describe("img");
    assert!(line.contains("at `/keys/***`"), "{line}");
    assert!(!line.contains("0123456789"), "{line}");
    assert!(!format!("{:?}", audit.layer_files).contains("0123456789"));
}
