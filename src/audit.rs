//! The leak audit: proves that no secret reached any layer or the config
//! of an image.
//!
//! An image is read as the tar stream `docker save` produces (the legacy
//! layout with `manifest.json` and `<id>/layer.tar`, or the OCI layout of
//! Docker 25+ with `index.json` and `blobs/sha256/…`). Every layer tar is
//! searched separately — so a file that a later layer deletes is still
//! found, since it still ships — and so is every string of the image config
//! (history `created_by`, Env, Labels, Cmd, Entrypoint, …). Each secret is
//! searched for raw, in base64 (standard and URL-safe, at all three byte
//! alignments), in hex (lower and upper case) and URL-encoded.
//!
//! Everything streams: a layer is searched as it is read, never held whole
//! in memory. Hits name the layer, the path and the encoding, never the
//! secret's bytes. The search automaton holds the encoded forms of the
//! secrets for the length of the audit (see SECURITY.md).

use std::collections::BTreeMap;
use std::io::Read;

use aho_corasick::AhoCorasick;
use base64::Engine as _;
use zeroize::Zeroizing;

/// Shorter secrets are not searched for: they would match by chance.
pub const MIN_SECRET_LEN: usize = 6;

/// How a secret was encoded where it was found.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Encoding {
    Raw,
    Base64,
    Base64Url,
    HexLower,
    HexUpper,
    UrlEncoded,
}

impl std::fmt::Display for Encoding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Encoding::Raw => "raw",
            Encoding::Base64 => "base64",
            Encoding::Base64Url => "base64url",
            Encoding::HexLower => "hex",
            Encoding::HexUpper => "HEX",
            Encoding::UrlEncoded => "url-encoded",
        })
    }
}

/// Where in an image a secret was found.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(tag = "in", rename_all = "snake_case")]
pub enum Location {
    /// In a file of a layer.
    Layer {
        /// 0-based index of the layer, bottom first (`None` if the image's
        /// manifest does not list it).
        index: Option<usize>,
        /// The layer's digest or path in the save archive.
        digest: String,
        /// The path of the file inside the layer.
        path: String,
    },
    /// In a string of the image config.
    Config {
        /// A JSON path such as `config.Env[2]` or `history[4].created_by`.
        field: String,
    },
}

/// One secret found in one place.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Hit {
    /// The secret's name (never its value).
    pub secret: String,
    pub encoding: Encoding,
    #[serde(flatten)]
    pub location: Location,
}

/// Errors of the audit.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The image archive could not be read.
    #[error("cannot read the image archive: {0}")]
    Io(#[from] std::io::Error),
    /// The archive is not a `docker save` archive.
    #[error("not an image archive: {0}")]
    Format(String),
}

/// Searches bytes for every encoded form of a set of secrets.
pub struct Scanner {
    automaton: AhoCorasick,
    /// Pattern index → (secret name, encoding).
    needles: Vec<(String, Encoding)>,
    longest: usize,
}

impl std::fmt::Debug for Scanner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scanner")
            .field("patterns", &self.needles.len())
            .finish_non_exhaustive()
    }
}

/// The base64 text that any base64 encoding of data containing `secret` at
/// byte offset ≡ `align` (mod 3) contains, whatever surrounds it.
fn base64_core(engine: &base64::engine::GeneralPurpose, secret: &[u8], align: usize) -> String {
    let mut data = vec![0u8; align];
    data.extend_from_slice(secret);
    let encoded = engine.encode(&data);
    // Characters before `skip` carry bits of the padding bytes; those from
    // `end` on carry bits of whatever follows the secret.
    let skip = (align * 8).div_ceil(6);
    let end = (data.len() * 8) / 6;
    encoded.get(skip..end).unwrap_or_default().to_string()
}

fn url_encode(secret: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(secret.len() * 3);
    for &b in secret {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b);
        } else {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        }
    }
    out
}

impl Scanner {
    /// A scanner for `secrets` (name, value). Secrets shorter than
    /// [`MIN_SECRET_LEN`] are skipped; their names are returned.
    pub fn new<'a>(
        secrets: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> (Scanner, Vec<String>) {
        let mut patterns: Vec<Zeroizing<Vec<u8>>> = Vec::new();
        let mut needles = Vec::new();
        let mut skipped = Vec::new();
        for (name, value) in secrets {
            // A trailing newline is how files usually end; the secret is
            // what comes before it.
            let trimmed = value.strip_suffix(b"\n").unwrap_or(value);
            let trimmed = trimmed.strip_suffix(b"\r").unwrap_or(trimmed);
            if trimmed.len() < MIN_SECRET_LEN {
                skipped.push(name.to_string());
                continue;
            }
            let mut forms: Vec<(Zeroizing<Vec<u8>>, Encoding)> =
                vec![(Zeroizing::new(trimmed.to_vec()), Encoding::Raw)];
            for align in 0..3 {
                forms.push((
                    Zeroizing::new(
                        base64_core(&base64::engine::general_purpose::STANDARD, trimmed, align)
                            .into_bytes(),
                    ),
                    Encoding::Base64,
                ));
                forms.push((
                    Zeroizing::new(
                        base64_core(&base64::engine::general_purpose::URL_SAFE, trimmed, align)
                            .into_bytes(),
                    ),
                    Encoding::Base64Url,
                ));
            }
            let hex: String = trimmed.iter().map(|b| format!("{b:02x}")).collect();
            forms.push((
                Zeroizing::new(hex.to_uppercase().into_bytes()),
                Encoding::HexUpper,
            ));
            forms.push((Zeroizing::new(hex.into_bytes()), Encoding::HexLower));
            forms.push((Zeroizing::new(url_encode(trimmed)), Encoding::UrlEncoded));
            for (form, encoding) in forms {
                // Identical forms (an alphanumeric secret is its own URL
                // encoding; URL-safe base64 often equals standard) are
                // searched once, under the first encoding.
                if form.len() >= MIN_SECRET_LEN
                    && !patterns.iter().zip(&needles).any(
                        |(p, (n, _)): (&Zeroizing<Vec<u8>>, &(String, Encoding))| {
                            n == name && p.as_slice() == form.as_slice()
                        },
                    )
                {
                    patterns.push(form);
                    needles.push((name.to_string(), encoding));
                }
            }
        }
        let longest = patterns.iter().map(|p| p.len()).max().unwrap_or(0);
        let automaton = AhoCorasick::new(patterns.iter().map(|p| p.as_slice()))
            .expect("patterns of bounded size always build");
        (
            Scanner {
                automaton,
                needles,
                longest,
            },
            skipped,
        )
    }

    /// True if there is nothing to search for.
    pub fn is_empty(&self) -> bool {
        self.needles.is_empty()
    }

    /// Every (secret, encoding) found in `reader`, streamed.
    pub fn scan_reader<R: Read>(&self, reader: R) -> std::io::Result<Vec<(String, Encoding)>> {
        let mut found = Vec::new();
        if self.is_empty() {
            // Still drain the reader: callers rely on it being consumed.
            std::io::copy(&mut { reader }, &mut std::io::sink())?;
            return Ok(found);
        }
        for m in self.automaton.stream_find_iter(reader) {
            let m = m?;
            let needle = &self.needles[m.pattern().as_usize()];
            if !found.contains(needle) {
                found.push(needle.clone());
            }
        }
        Ok(found)
    }

    /// Every (secret, encoding) found in `bytes`.
    pub fn scan_bytes(&self, bytes: &[u8]) -> Vec<(String, Encoding)> {
        let mut found = Vec::new();
        // The automaton uses the standard match kind, which supports
        // overlapping search: every pattern present is reported.
        for m in self.automaton.find_overlapping_iter(bytes) {
            let needle = &self.needles[m.pattern().as_usize()];
            if !found.contains(needle) {
                found.push(needle.clone());
            }
        }
        found
    }

    /// Searches every file of one layer tar; returns (path, secret,
    /// encoding) and, for the shadow report, every regular file with its
    /// size.
    pub fn scan_layer<R: Read>(&self, layer: R) -> Result<LayerScan, AuditError> {
        let mut scan = LayerScan::default();
        let mut archive = tar::Archive::new(layer);
        for entry in archive.entries()? {
            let entry = entry?;
            let path = entry.path()?.to_string_lossy().into_owned();
            let kind = entry.header().entry_type();
            let size = entry.header().size().unwrap_or(0);
            let link = entry
                .link_name()
                .ok()
                .flatten()
                .map(|l| l.to_string_lossy().into_owned());
            scan.files.push(LayerFile {
                path: path.clone(),
                size,
                regular: kind.is_file(),
            });
            // A symlink's target can hold a secret too.
            if let Some(link) = link {
                for (secret, encoding) in self.scan_bytes(link.as_bytes()) {
                    scan.hits.push((path.clone(), secret, encoding));
                }
            }
            for (secret, encoding) in self.scan_bytes(path.as_bytes()) {
                scan.hits.push((path.clone(), secret, encoding));
            }
            for (secret, encoding) in self.scan_reader(entry)? {
                scan.hits.push((path.clone(), secret, encoding));
            }
        }
        Ok(scan)
    }

    /// Searches every string of a JSON document; fields are named by their
    /// JSON path.
    pub fn scan_json(&self, value: &serde_json::Value) -> Vec<(String, String, Encoding)> {
        let mut hits = Vec::new();
        self.walk_json(value, String::new(), &mut hits);
        hits
    }

    fn walk_json(
        &self,
        value: &serde_json::Value,
        path: String,
        hits: &mut Vec<(String, String, Encoding)>,
    ) {
        match value {
            serde_json::Value::String(s) => {
                for (secret, encoding) in self.scan_bytes(s.as_bytes()) {
                    hits.push((path.clone(), secret, encoding));
                }
            }
            serde_json::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.walk_json(item, format!("{path}[{i}]"), hits);
                }
            }
            serde_json::Value::Object(map) => {
                for (key, item) in map {
                    for (secret, encoding) in self.scan_bytes(key.as_bytes()) {
                        hits.push((format!("{path}.{key}"), secret, encoding));
                    }
                    let child = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    self.walk_json(item, child, hits);
                }
            }
            _ => {}
        }
    }

    /// The longest pattern, in bytes.
    pub fn longest_pattern(&self) -> usize {
        self.longest
    }
}

/// A file of a layer, for the shadow report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerFile {
    pub path: String,
    pub size: u64,
    pub regular: bool,
}

/// What a layer's scan found.
#[derive(Debug, Clone, Default)]
pub struct LayerScan {
    /// (path, secret, encoding).
    pub hits: Vec<(String, String, Encoding)>,
    pub files: Vec<LayerFile>,
}

/// A file that a layer adds and a later layer deletes or overwrites: it
/// still ships with the image.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Shadowed {
    pub path: String,
    pub size: u64,
    /// Layer that added it.
    pub added_in: usize,
    /// Layer that deleted (whiteout) or replaced it.
    pub hidden_in: usize,
    /// `deleted` or `overwritten`.
    pub how: &'static str,
}

/// The result of auditing one image archive.
#[derive(Debug, Clone, Default)]
pub struct ImageAudit {
    pub hits: Vec<Hit>,
    pub layers: usize,
    /// Per layer (bottom first), its files.
    pub layer_files: Vec<Vec<LayerFile>>,
}

impl ImageAudit {
    /// Files added by one layer and deleted or overwritten by a later one.
    pub fn shadowed(&self) -> Vec<Shadowed> {
        let mut live: BTreeMap<String, (usize, u64)> = BTreeMap::new();
        let mut out = Vec::new();
        for (index, files) in self.layer_files.iter().enumerate() {
            for file in files {
                let path = file.path.trim_start_matches("./").trim_end_matches('/');
                let (dir, name) = match path.rsplit_once('/') {
                    Some((d, n)) => (format!("{d}/"), n),
                    None => (String::new(), path),
                };
                if name == ".wh..wh..opq" {
                    // Everything below `dir` from lower layers is hidden.
                    let hidden: Vec<String> = live
                        .range(dir.clone()..)
                        .take_while(|(p, _)| p.starts_with(&dir))
                        .map(|(p, _)| p.clone())
                        .collect();
                    for p in hidden {
                        let (added_in, size) = live.remove(&p).unwrap_or_default();
                        out.push(Shadowed {
                            path: p,
                            size,
                            added_in,
                            hidden_in: index,
                            how: "deleted",
                        });
                    }
                } else if let Some(target) = name.strip_prefix(".wh.") {
                    let target = format!("{dir}{target}");
                    let prefix = format!("{target}/");
                    let hidden: Vec<String> = live
                        .keys()
                        .filter(|p| **p == target || p.starts_with(&prefix))
                        .cloned()
                        .collect();
                    for p in hidden {
                        let (added_in, size) = live.remove(&p).unwrap_or_default();
                        out.push(Shadowed {
                            path: p,
                            size,
                            added_in,
                            hidden_in: index,
                            how: "deleted",
                        });
                    }
                } else if file.regular {
                    if let Some((added_in, size)) =
                        live.insert(path.to_string(), (index, file.size))
                    {
                        if added_in != index {
                            out.push(Shadowed {
                                path: path.to_string(),
                                size,
                                added_in,
                                hidden_in: index,
                                how: "overwritten",
                            });
                        }
                    }
                }
            }
        }
        out
    }
}

fn is_tar(head: &[u8]) -> bool {
    head.len() >= 262 && &head[257..262] == b"ustar"
}

/// Audits one image archive (`docker save` output) read from `archive`.
/// The archive's members may come in any order: layer hits are attributed
/// to layer indexes once the manifest has been read.
pub fn audit_archive<R: Read>(scanner: &Scanner, archive: R) -> Result<ImageAudit, AuditError> {
    let mut outer = tar::Archive::new(archive);
    // Path in the archive → its scan.
    let mut layers: BTreeMap<String, LayerScan> = BTreeMap::new();
    let mut configs: BTreeMap<String, serde_json::Value> = BTreeMap::new();
    let mut manifest: Option<serde_json::Value> = None;
    let mut index: Option<serde_json::Value> = None;
    let mut config_hits = Vec::new();
    for entry in outer.entries()? {
        let mut entry = entry?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let path = entry.path()?.to_string_lossy().into_owned();
        // Sniff the member: a tar (a layer) or JSON (config, manifest).
        let mut head = Vec::with_capacity(512);
        (&mut entry).take(512).read_to_end(&mut head)?;
        let rest = std::io::Cursor::new(head.clone()).chain(entry);
        if path.ends_with("layer.tar") || is_tar(&head) {
            let scan = scanner.scan_layer(rest)?;
            layers.insert(path, scan);
        } else if head.first() == Some(&b'{') || path.ends_with(".json") {
            let mut text = Vec::new();
            // Configs and manifests are small; cap them all the same.
            rest.take(64 << 20).read_to_end(&mut text)?;
            let Ok(value) = serde_json::from_slice::<serde_json::Value>(&text) else {
                continue;
            };
            if path == "manifest.json" {
                manifest = Some(value);
            } else if path == "index.json" {
                index = Some(value);
            } else if value.get("rootfs").is_some() || value.get("history").is_some() {
                for (field, secret, encoding) in scanner.scan_json(&value) {
                    config_hits.push(Hit {
                        secret,
                        encoding,
                        location: Location::Config { field },
                    });
                }
                configs.insert(path, value);
            } else if value.get("layers").is_some() || value.get("manifests").is_some() {
                // An OCI manifest or index blob: remember it by its path.
                configs.insert(path, value);
            }
        } else {
            let _ = std::io::copy(&mut { rest }, &mut std::io::sink());
        }
    }
    let order = layer_order(manifest.as_ref(), index.as_ref(), &configs)
        .ok_or_else(|| AuditError::Format("no manifest.json or index.json".into()))?;
    let mut audit = ImageAudit {
        layers: order.len(),
        ..ImageAudit::default()
    };
    for layer_path in &order {
        audit.layer_files.push(
            layers
                .get(layer_path)
                .map(|s| s.files.clone())
                .unwrap_or_default(),
        );
    }
    for (layer_path, scan) in &layers {
        let index = order.iter().position(|p| p == layer_path);
        for (path, secret, encoding) in &scan.hits {
            audit.hits.push(Hit {
                secret: secret.clone(),
                encoding: *encoding,
                location: Location::Layer {
                    index,
                    digest: layer_path
                        .trim_start_matches("blobs/")
                        .trim_end_matches("/layer.tar")
                        .replacen('/', ":", 1),
                    path: path.clone(),
                },
            });
        }
    }
    audit.hits.extend(config_hits);
    audit.hits.sort();
    audit.hits.dedup();
    Ok(audit)
}

/// The layer paths of the (first) image in the archive, bottom first.
fn layer_order(
    manifest: Option<&serde_json::Value>,
    index: Option<&serde_json::Value>,
    blobs: &BTreeMap<String, serde_json::Value>,
) -> Option<Vec<String>> {
    let strings = |v: &serde_json::Value| -> Vec<String> {
        v.as_array()
            .map(|a| {
                a.iter()
                    .filter_map(|x| x.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    };
    if let Some(first) = manifest.and_then(|m| m.as_array()).and_then(|a| a.first()) {
        return Some(strings(&first["Layers"]));
    }
    // OCI: index.json → manifest blob → layers[].digest.
    let blob_path = |digest: &str| format!("blobs/{}", digest.replacen(':', "/", 1));
    let mut manifest_digest = index?["manifests"][0]["digest"].as_str()?.to_string();
    // An index may point at another index (multi-platform).
    for _ in 0..4 {
        let blob = blobs.get(&blob_path(&manifest_digest))?;
        if let Some(layers) = blob["layers"].as_array() {
            return Some(
                layers
                    .iter()
                    .filter_map(|l| l["digest"].as_str().map(blob_path))
                    .collect(),
            );
        }
        manifest_digest = blob["manifests"][0]["digest"].as_str()?.to_string();
    }
    None
}

#[cfg(test)]
mod tests {
    use super::{audit_archive, base64_core, Encoding, Location, Scanner};
    use base64::Engine as _;

    const SECRET: &[u8] = b"s3cr3t-value-42";

    fn layer(files: &[(&str, &[u8])]) -> Vec<u8> {
        let mut b = tar::Builder::new(Vec::new());
        for (path, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, path, *data).unwrap();
        }
        b.into_inner().unwrap()
    }

    fn archive(members: &[(&str, Vec<u8>)]) -> Vec<u8> {
        layer(
            &members
                .iter()
                .map(|(p, d)| (*p, d.as_slice()))
                .collect::<Vec<_>>(),
        )
    }

    #[test]
    fn base64_core_is_found_at_every_alignment() {
        let engine = &base64::engine::general_purpose::STANDARD;
        for prefix in 0..6 {
            let mut data = vec![b'x'; prefix];
            data.extend_from_slice(SECRET);
            data.extend_from_slice(b"tail");
            let encoded = engine.encode(&data);
            let core = base64_core(engine, SECRET, prefix % 3);
            assert!(
                encoded.contains(&core),
                "prefix {prefix}: {core} in {encoded}"
            );
            assert!(core.len() >= 16);
        }
    }

    #[test]
    fn every_encoding_is_found_and_named() {
        let (scanner, skipped) = Scanner::new([("tok", SECRET), ("short", &b"abc"[..])]);
        assert_eq!(skipped, ["short"]);
        let hexed: String = SECRET.iter().map(|b| format!("{b:02x}")).collect();
        let cases: Vec<(Vec<u8>, Encoding)> = vec![
            (SECRET.to_vec(), Encoding::Raw),
            (
                format!(
                    "x{}",
                    base64::engine::general_purpose::STANDARD.encode([b"ab", SECRET].concat())
                )
                .into_bytes(),
                Encoding::Base64,
            ),
            (hexed.clone().into_bytes(), Encoding::HexLower),
            (hexed.to_uppercase().into_bytes(), Encoding::HexUpper),
        ];
        for (haystack, encoding) in cases {
            let found = scanner.scan_bytes(&haystack);
            assert_eq!(found, [("tok".to_string(), encoding)], "{encoding}");
        }
        let (url_scanner, _) = Scanner::new([("p", &b"pa ss/w:rd"[..])]);
        assert_eq!(
            url_scanner.scan_bytes(b"q=pa%20ss%2Fw%3Ard&x"),
            [("p".to_string(), Encoding::UrlEncoded)]
        );
        assert!(scanner.scan_bytes(b"nothing to see").is_empty());
    }

    #[test]
    fn streamed_search_spans_chunk_boundaries() {
        let (scanner, _) = Scanner::new([("tok", SECRET)]);
        let mut data = vec![b'.'; 1 << 20];
        data.extend_from_slice(SECRET);
        data.extend(vec![b'.'; 1 << 20]);
        // A reader that hands out 7 bytes at a time.
        struct Slow<'a>(&'a [u8]);
        impl std::io::Read for Slow<'_> {
            fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
                let n = buf.len().min(7).min(self.0.len());
                buf[..n].copy_from_slice(&self.0[..n]);
                self.0 = &self.0[n..];
                Ok(n)
            }
        }
        let found = scanner.scan_reader(Slow(&data)).unwrap();
        assert_eq!(found, [("tok".to_string(), Encoding::Raw)]);
    }

    #[test]
    fn legacy_archive_hits_name_layer_path_and_config_field() {
        let (scanner, _) = Scanner::new([("tok", SECRET)]);
        let config = serde_json::json!({
            "config": { "Env": ["PATH=/bin", format!("TOKEN={}", String::from_utf8_lossy(SECRET))] },
            "rootfs": { "type": "layers", "diff_ids": ["sha256:a", "sha256:b"] },
            "history": [{ "created_by": "/bin/sh -c echo hi" }],
        });
        let bytes = archive(&[
            ("bbb/layer.tar", layer(&[("etc/other", b"clean")])),
            (
                "aaa/layer.tar",
                layer(&[("root/.ssh/id", SECRET), ("etc/.wh.gone", b"")]),
            ),
            ("cfg.json", serde_json::to_vec(&config).unwrap()),
            (
                "manifest.json",
                serde_json::to_vec(&serde_json::json!([{
                    "Config": "cfg.json",
                    "Layers": ["aaa/layer.tar", "bbb/layer.tar"],
                }]))
                .unwrap(),
            ),
        ]);
        let audit = audit_archive(&scanner, bytes.as_slice()).unwrap();
        assert_eq!(audit.layers, 2);
        assert_eq!(audit.hits.len(), 2, "{:?}", audit.hits);
        assert_eq!(
            audit.hits[0].location,
            Location::Layer {
                index: Some(0),
                digest: "aaa".into(),
                path: "root/.ssh/id".into()
            }
        );
        assert_eq!(
            audit.hits[1].location,
            Location::Config {
                field: "config.Env[1]".into()
            }
        );
    }

    #[test]
    fn oci_archive_layers_are_ordered_through_index_and_manifest() {
        let (scanner, _) = Scanner::new([("tok", SECRET)]);
        let manifest = serde_json::json!({
            "config": { "digest": "sha256:cfg" },
            "layers": [ { "digest": "sha256:l1" }, { "digest": "sha256:l2" } ],
        });
        let bytes = archive(&[
            ("oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec()),
            ("blobs/sha256/l2", layer(&[("app/key", SECRET)])),
            ("blobs/sha256/l1", layer(&[("bin/sh", b"busybox")])),
            ("blobs/sha256/mf", serde_json::to_vec(&manifest).unwrap()),
            (
                "blobs/sha256/cfg",
                serde_json::to_vec(&serde_json::json!({"rootfs": {}, "history": []})).unwrap(),
            ),
            (
                "index.json",
                serde_json::to_vec(&serde_json::json!({"manifests": [{"digest": "sha256:mf"}]}))
                    .unwrap(),
            ),
        ]);
        let audit = audit_archive(&scanner, bytes.as_slice()).unwrap();
        assert_eq!(audit.layers, 2);
        assert_eq!(
            audit.hits[0].location,
            Location::Layer {
                index: Some(1),
                digest: "sha256:l2".into(),
                path: "app/key".into()
            }
        );
    }

    #[test]
    fn shadowed_files_are_listed_with_their_layers() {
        let bytes = archive(&[
            (
                "l0/layer.tar",
                layer(&[("src/main.go", b"package main"), ("keep", b"k")]),
            ),
            (
                "l1/layer.tar",
                layer(&[("src/.wh.main.go", b""), ("keep", b"kk")]),
            ),
            (
                "manifest.json",
                serde_json::to_vec(&serde_json::json!([{
                    "Config": "c.json", "Layers": ["l0/layer.tar", "l1/layer.tar"],
                }]))
                .unwrap(),
            ),
        ]);
        let (scanner, _) = Scanner::new(std::iter::empty());
        let audit = audit_archive(&scanner, bytes.as_slice()).unwrap();
        let shadowed = audit.shadowed();
        assert_eq!(shadowed.len(), 2, "{shadowed:?}");
        assert_eq!(shadowed[0].path, "src/main.go");
        assert_eq!((shadowed[0].added_in, shadowed[0].hidden_in), (0, 1));
        assert_eq!(shadowed[0].how, "deleted");
        assert_eq!(shadowed[0].size, 12);
        assert_eq!(shadowed[1].path, "keep");
        assert_eq!(shadowed[1].how, "overwritten");
    }
}

/// Audits `image` on the daemon: streams `docker save` through the scanner
/// on a blocking thread.
pub async fn audit_image(
    engine: &dyn crate::engine::Engine,
    image: &str,
    scanner: std::sync::Arc<Scanner>,
) -> Result<ImageAudit, ImageAuditError> {
    use futures_util::TryStreamExt;
    let stream = engine
        .save_image(image)
        .await
        .map_err(|source| ImageAuditError::Engine {
            image: image.to_string(),
            source,
        })?;
    let reader = tokio_util::io::StreamReader::new(stream.map_err(std::io::Error::other));
    let reader = tokio_util::io::SyncIoBridge::new(reader);
    let name = image.to_string();
    tokio::task::spawn_blocking(move || audit_archive(&scanner, reader))
        .await
        .map_err(|e| ImageAuditError::Audit {
            image: name.clone(),
            source: AuditError::Format(format!("audit task failed: {e}")),
        })?
        .map_err(|source| ImageAuditError::Audit {
            image: name,
            source,
        })
}

/// Errors of [`audit_image`].
#[derive(Debug, thiserror::Error)]
pub enum ImageAuditError {
    /// The daemon could not save the image.
    #[error("audit of `{image}`: {source}")]
    Engine {
        /// The image.
        image: String,
        /// The engine's error.
        source: crate::engine::EngineError,
    },
    /// The saved image could not be read.
    #[error("audit of `{image}`: {source}")]
    Audit {
        /// The image.
        image: String,
        /// What went wrong.
        source: AuditError,
    },
}

impl Hit {
    /// One line for humans: where, which secret, which encoding.
    pub fn describe(&self, image: &str) -> String {
        match &self.location {
            Location::Layer {
                index,
                digest,
                path,
            } => format!(
                "{image}: secret `{}` ({}) in layer {} ({digest}) at `/{path}`",
                self.secret,
                self.encoding,
                index.map_or("?".to_string(), |i| i.to_string()),
            ),
            Location::Config { field } => format!(
                "{image}: secret `{}` ({}) in the image config at `{field}`",
                self.secret, self.encoding
            ),
        }
    }
}
