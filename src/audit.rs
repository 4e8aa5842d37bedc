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

use aho_corasick::{AhoCorasick, MatchKind};

mod walk;
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

/// Which form of a secret matched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Form {
    /// The whole value, as the provider gives it.
    Whole,
    /// The whole value with its line breaks turned into spaces (what
    /// `echo $KEY` writes).
    NewlinesAsSpaces,
    /// The whole value with CRLF line endings.
    Crlf,
    /// One line of a multi-line value alone (1-based).
    Line(usize),
}

impl std::fmt::Display for Form {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Form::Whole => f.write_str("whole"),
            Form::NewlinesAsSpaces => f.write_str("newlines-as-spaces"),
            Form::Crlf => f.write_str("crlf"),
            Form::Line(n) => write!(f, "line-{n}"),
        }
    }
}

impl serde::Serialize for Form {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
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
        /// The PAX record of the entry (an extended attribute is one,
        /// `SCHILY.xattr.NAME`), when the secret is there rather than in
        /// the file's name or content.
        #[serde(skip_serializing_if = "Option::is_none")]
        record: Option<String>,
        /// Bytes of the layer that are neither a name nor content, when
        /// the secret is there.
        #[serde(skip_serializing_if = "Option::is_none")]
        part: Option<Part>,
        /// What was unpacked to reach the file (`gzip`, `tar`, `zip`).
        #[serde(skip_serializing_if = "Vec::is_empty")]
        within: Vec<&'static str>,
        /// The image's platform (`linux/arm64`), when the archive holds
        /// more than one image.
        #[serde(skip_serializing_if = "Option::is_none")]
        platform: Option<String>,
    },
    /// In a string of the image config.
    Config {
        /// A JSON path such as `config.Env[2]` or `history[4].created_by`.
        field: String,
        /// The image's platform, when the archive holds more than one.
        #[serde(skip_serializing_if = "Option::is_none")]
        platform: Option<String>,
    },
    /// In another JSON document of the saved image: `index.json`,
    /// `manifest.json`, an OCI manifest (annotations).
    Metadata {
        /// The document's path in the save archive.
        document: String,
        /// A JSON path in it.
        field: String,
    },
}

/// Bytes of a layer that are not a file's name or content.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Part {
    /// The entry's tar header blocks or the padding after its content.
    Header,
    /// After the tar's end-of-archive blocks.
    AfterEnd,
    /// The packed bytes of a compressed layer or nested archive: headers
    /// (gzip's name, comment and extra field; zip's names and directory)
    /// and anything its unpacked content does not hold.
    Packed,
}

/// One secret found in one place.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Hit {
    /// The secret's name (never its value).
    pub secret: String,
    pub encoding: Encoding,
    /// Which form of the secret matched.
    pub form: Form,
    #[serde(flatten)]
    pub location: Location,
}

/// A secret's name, and the encoding and form in which it matched.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Found {
    pub secret: String,
    pub encoding: Encoding,
    pub form: Form,
}

impl Found {
    fn at(self, location: Location) -> Hit {
        Hit {
            secret: self.secret,
            encoding: self.encoding,
            form: self.form,
            location,
        }
    }
}

/// Errors of the audit.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    /// The image archive could not be read.
    #[error("cannot read the image archive: {0}")]
    Io(#[from] std::io::Error),
    /// The archive is not a `docker save` archive, or lacks a part.
    #[error("not a readable image archive: {0}")]
    Format(String),
    /// A layer the image lists could not be read to its end.
    #[error("cannot read layer {index} (`{digest}`): {reason}")]
    Layer {
        /// 0-based, bottom first.
        index: usize,
        /// Its digest or path in the archive.
        digest: String,
        /// What is wrong with it.
        reason: String,
    },
}

/// Searches bytes for every encoded form of a set of secrets.
pub struct Scanner {
    automaton: AhoCorasick,
    /// Pattern index → what it stands for.
    needles: Vec<Found>,
    longest: usize,
}

/// Lines of a multi-line secret shorter than this are not searched for
/// alone: they would match by chance.
pub const MIN_LINE_LEN: usize = 16;

/// How much of a file [`Scanner::scan_reader`] searches at a time.
pub const SCAN_BLOCK: usize = 1 << 20;

/// At most this many lines of one secret are searched for alone (a key
/// has a few dozen); the whole value is always searched.
pub const MAX_LINES: usize = 512;

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

/// `secret` percent-encoded: hex digits in upper or lower case, a space
/// as `%20` or (form encoding) as `+`.
fn url_encode(secret: &[u8], upper: bool, plus: bool) -> Vec<u8> {
    let mut out = Vec::with_capacity(secret.len() * 3);
    for &b in secret {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b);
        } else if b == b' ' && plus {
            out.push(b'+');
        } else if upper {
            out.extend_from_slice(format!("%{b:02X}").as_bytes());
        } else {
            out.extend_from_slice(format!("%{b:02x}").as_bytes());
        }
    }
    out
}

/// `pattern` without its line breaks: the audit searches text with its
/// line breaks removed (see [`Search`]), so patterns are matched the same
/// way.
fn without_breaks(pattern: &[u8]) -> Zeroizing<Vec<u8>> {
    Zeroizing::new(
        pattern
            .iter()
            .copied()
            .filter(|&b| b != b'\n' && b != b'\r')
            .collect(),
    )
}

/// The forms of a secret that are searched for, each in every encoding:
/// the value, and for a multi-line value the value with its line breaks
/// as spaces and as CRLF, and each line of at least [`MIN_LINE_LEN`] bytes
/// that is not PEM armour (`-----BEGIN …-----`, shared by every key).
fn forms_of(value: &[u8]) -> Vec<(Zeroizing<Vec<u8>>, Form)> {
    let mut forms = vec![(Zeroizing::new(value.to_vec()), Form::Whole)];
    let lines: Vec<&[u8]> = value
        .split(|&b| b == b'\n')
        .map(|line| line.strip_suffix(b"\r").unwrap_or(line))
        .collect();
    if lines.len() < 2 {
        return forms;
    }
    forms.push((Zeroizing::new(lines.join(&b' ')), Form::NewlinesAsSpaces));
    forms.push((Zeroizing::new(lines.join(&b"\r\n"[..])), Form::Crlf));
    // Lines every key of a kind shares: PEM armour, and the first body
    // line of an OpenSSH key (`openssh-key-v1`, cipher, KDF, key type),
    // which is the same for every unencrypted key of one type.
    let armour = |line: &[u8]| {
        (line.starts_with(b"-----") && line.ends_with(b"-----"))
            || line.starts_with(OPENSSH_MAGIC_BASE64)
    };
    for (n, line) in lines.iter().enumerate().take(MAX_LINES) {
        let line = line.trim_ascii();
        if line.len() >= MIN_LINE_LEN && !armour(line) {
            forms.push((Zeroizing::new(line.to_vec()), Form::Line(n + 1)));
        }
    }
    forms
}

/// `openssh-key-v1\0` in base64: the start of every OpenSSH private key.
const OPENSSH_MAGIC_BASE64: &[u8] = b"b3BlbnNzaC1rZXktdjE";

/// `value` in every encoding the audit searches for.
fn encodings_of(value: &[u8]) -> Vec<(Zeroizing<Vec<u8>>, Encoding)> {
    let mut out: Vec<(Zeroizing<Vec<u8>>, Encoding)> =
        vec![(Zeroizing::new(value.to_vec()), Encoding::Raw)];
    for align in 0..3 {
        out.push((
            Zeroizing::new(
                base64_core(&base64::engine::general_purpose::STANDARD, value, align).into_bytes(),
            ),
            Encoding::Base64,
        ));
        out.push((
            Zeroizing::new(
                base64_core(&base64::engine::general_purpose::URL_SAFE, value, align).into_bytes(),
            ),
            Encoding::Base64Url,
        ));
    }
    let hex = Zeroizing::new(crate::layer::hex(value));
    out.push((
        Zeroizing::new(hex.to_uppercase().into_bytes()),
        Encoding::HexUpper,
    ));
    out.push((Zeroizing::new(hex.as_bytes().to_vec()), Encoding::HexLower));
    for (upper, plus) in [(true, false), (false, false), (true, true), (false, true)] {
        out.push((
            Zeroizing::new(url_encode(value, upper, plus)),
            Encoding::UrlEncoded,
        ));
    }
    out
}

impl Scanner {
    /// A scanner for `secrets` (name, value). Secrets are keyed by value:
    /// every value is searched, and a value given under several names is
    /// searched once and named by all of them (`a: file/id_rsa, b:
    /// file/id_rsa`). Values shorter than [`MIN_SECRET_LEN`] are skipped;
    /// their names are returned.
    pub fn new<'a>(
        secrets: impl IntoIterator<Item = (&'a str, &'a [u8])>,
    ) -> (Scanner, Vec<String>) {
        let mut values: Vec<(Vec<&'a str>, &'a [u8])> = Vec::new();
        for (name, value) in secrets {
            // A trailing newline is how files usually end; the secret is
            // what comes before it.
            let trimmed = value.strip_suffix(b"\n").unwrap_or(value);
            let trimmed = trimmed.strip_suffix(b"\r").unwrap_or(trimmed);
            match values.iter_mut().find(|(_, v)| *v == trimmed) {
                Some((names, _)) if !names.contains(&name) => names.push(name),
                Some(_) => {}
                None => values.push((vec![name], trimmed)),
            }
        }
        let mut patterns: Vec<Zeroizing<Vec<u8>>> = Vec::new();
        let mut needles = Vec::new();
        let mut skipped = Vec::new();
        for (names, value) in values {
            if value.len() < MIN_SECRET_LEN {
                skipped.extend(names.iter().map(|n| n.to_string()));
                continue;
            }
            let name = names.join(", ");
            let first = patterns.len();
            for (form_value, form) in forms_of(value) {
                for (pattern, encoding) in encodings_of(&form_value) {
                    let pattern = without_breaks(&pattern);
                    // Each pattern once per value: identical forms (an
                    // alphanumeric secret is its own URL encoding; a CRLF
                    // value without its breaks is the value) are searched
                    // under the first encoding and form.
                    if pattern.len() < MIN_SECRET_LEN
                        || patterns[first..].iter().any(|p| **p == *pattern)
                    {
                        continue;
                    }
                    patterns.push(pattern);
                    needles.push(Found {
                        secret: name.clone(),
                        encoding,
                        form,
                    });
                }
            }
        }
        let longest = patterns.iter().map(|p| p.len()).max().unwrap_or(0);
        // Leftmost-longest: where forms overlap (a line inside the whole
        // value), the longest is named; and it is the match kind whose
        // searches use the vectorised prefilter, several times faster on
        // layer data than the standard kind's DFA walk.
        let automaton = AhoCorasick::builder()
            .match_kind(MatchKind::LeftmostLongest)
            .build(patterns.iter().map(|p| p.as_slice()))
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

    /// Every form of a secret found in `reader`, read to its end.
    pub fn scan_reader<R: Read>(&self, mut reader: R) -> std::io::Result<Vec<Found>> {
        let mut search = Search::new(self);
        search.feed_from(&mut reader)?;
        Ok(search.finish())
    }

    /// Every form of a secret found in `bytes`.
    pub fn scan_bytes(&self, bytes: &[u8]) -> Vec<Found> {
        let mut search = Search::new(self);
        search.feed(bytes);
        search.finish()
    }

    /// Searches a layer (plain, gzip or zstd) to the end of its stream and
    /// says how many bytes it had and its diff id.
    fn scan_whole_layer(
        &self,
        layer: crate::layer::Layer<'_>,
    ) -> Result<(LayerScan, crate::layer::LayerSummary), AuditError> {
        let mut layer = layer;
        let scan = walk::walk_layer(self, &mut layer).map_err(AuditError::Format)?;
        let summary = layer.finish()?;
        Ok((scan, summary))
    }

    /// `text` with every searched form of a secret in it replaced by `***`:
    /// a path or field name that holds a secret is printed without it.
    pub fn redact(&self, text: &str) -> String {
        if self.is_empty() {
            return text.to_string();
        }
        let mut out = String::with_capacity(text.len());
        let mut last = 0;
        for m in self.automaton.find_iter(text.as_bytes()) {
            // Patterns may end inside a UTF-8 character: widen to whole
            // characters.
            let mut start = m.start();
            while !text.is_char_boundary(start) {
                start -= 1;
            }
            let mut end = m.end();
            while !text.is_char_boundary(end) {
                end += 1;
            }
            if start >= last {
                out.push_str(&text[last..start]);
                out.push_str("***");
                last = end;
            }
        }
        out.push_str(&text[last..]);
        out
    }

    /// Searches every string (and key) of a JSON document; fields are
    /// named by their JSON path.
    pub fn scan_json(&self, value: &serde_json::Value) -> Vec<(String, Found)> {
        let mut hits = Vec::new();
        self.walk_json(value, String::new(), &mut hits);
        hits
    }

    fn walk_json(&self, value: &serde_json::Value, path: String, hits: &mut Vec<(String, Found)>) {
        match value {
            serde_json::Value::String(s) => {
                for found in self.scan_bytes(s.as_bytes()) {
                    hits.push((path.clone(), found));
                }
            }
            serde_json::Value::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    self.walk_json(item, format!("{path}[{i}]"), hits);
                }
            }
            serde_json::Value::Object(map) => {
                for (key, item) in map {
                    let key = self.redact(key);
                    let child = if path.is_empty() {
                        key.clone()
                    } else {
                        format!("{path}.{key}")
                    };
                    for found in self.scan_bytes(key.as_bytes()) {
                        hits.push((child.clone(), found));
                    }
                    self.walk_json(item, child, hits);
                }
            }
            _ => {}
        }
    }
}

/// One stream searched as it is fed, piece by piece.
///
/// Line breaks (`\r`, `\n`) are dropped before matching, and the patterns
/// have none: base64 and hex wrapped at any width (coreutils `base64`,
/// `openssl base64`, PEM bodies, `xxd -p`), with LF or CRLF, match as if
/// unwrapped. The text is searched in blocks of [`SCAN_BLOCK`] bytes, each
/// together with the last `longest - 1` bytes of the one before, so that
/// a match across a block boundary is found. (A block search uses the
/// automaton's prefilters; its stream search runs the DFA byte by byte,
/// several times slower.)
pub struct Search<'s> {
    scanner: &'s Scanner,
    /// Text not searched yet, after the overlap kept from the last block.
    window: Vec<u8>,
    found: Vec<Found>,
}

impl<'s> Search<'s> {
    /// An empty search for `scanner`'s patterns.
    pub fn new(scanner: &'s Scanner) -> Search<'s> {
        Search {
            scanner,
            window: Vec::new(),
            found: Vec::new(),
        }
    }

    /// Searches `bytes` as the continuation of what was fed before.
    pub fn feed(&mut self, mut bytes: &[u8]) {
        if self.scanner.is_empty() {
            return;
        }
        while let Some(at) = memchr::memchr2(b'\n', b'\r', bytes) {
            self.window.extend_from_slice(&bytes[..at]);
            bytes = &bytes[at + 1..];
        }
        self.window.extend_from_slice(bytes);
        if self.window.len() >= SCAN_BLOCK + self.scanner.longest {
            self.search();
            let keep = self.scanner.longest.saturating_sub(1);
            let cut = self.window.len().saturating_sub(keep);
            self.window.drain(..cut);
        }
    }

    /// Feeds everything `reader` has, to its end.
    pub fn feed_from<R: Read + ?Sized>(&mut self, reader: &mut R) -> std::io::Result<u64> {
        let mut buf = vec![0u8; 64 << 10];
        let mut total = 0;
        loop {
            let n = match reader.read(&mut buf) {
                Ok(0) => return Ok(total),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            total += n as u64;
            self.feed(&buf[..n]);
        }
    }

    fn search(&mut self) {
        for m in self.scanner.automaton.find_iter(&self.window) {
            let needle = &self.scanner.needles[m.pattern().as_usize()];
            if !self.found.contains(needle) {
                self.found.push(needle.clone());
            }
        }
    }

    /// Every form of a secret found in what was fed.
    pub fn finish(mut self) -> Vec<Found> {
        if !self.window.is_empty() {
            self.search();
        }
        self.found
    }
}

/// A file of a layer, for the shadow report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerFile {
    pub path: String,
    pub size: u64,
    pub regular: bool,
}

/// A secret found in an entry of a layer.
#[derive(Debug, Clone)]
pub struct LayerHit {
    /// The entry's path; inside a nested archive `outer!/inner`.
    pub path: String,
    /// The PAX record it is in, if not in the name or content.
    pub record: Option<String>,
    /// The bytes it is in, if not a name or content.
    pub part: Option<Part>,
    /// What was unpacked to reach it.
    pub within: Vec<&'static str>,
    pub found: Found,
}

/// What a layer's scan found.
#[derive(Debug, Clone, Default)]
pub struct LayerScan {
    pub hits: Vec<LayerHit>,
    pub files: Vec<LayerFile>,
    /// Nested files not searched (whole or in part): path and why.
    pub not_searched: Vec<(String, String)>,
    /// Nested archives and compressed files opened.
    pub nested: usize,
}

/// Something of an image the audit did not search, and why.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct NotSearched {
    /// 0-based layer index (none for a whole platform).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub layer: Option<usize>,
    /// The layer's digest, or the platform's manifest digest.
    pub digest: String,
    /// The path in the layer (`outer!/inner` when nested).
    #[serde(skip_serializing_if = "String::is_empty")]
    pub path: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub platform: Option<String>,
    /// Why, naming the limit.
    pub reason: String,
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
    /// Layers read, each to its end.
    pub layers: usize,
    /// Uncompressed bytes of those layers.
    pub bytes: u64,
    /// Per layer (bottom first), its files (of the first image).
    pub layer_files: Vec<Vec<LayerFile>>,
    /// What could not be searched: nested files beyond a limit, platforms
    /// whose blobs the archive lacks.
    pub not_searched: Vec<NotSearched>,
    /// Nested archives and compressed files opened and searched.
    pub nested: usize,
    /// Images (platforms) read.
    pub images: usize,
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
                let hidden: Vec<String> = if name == ".wh..wh..opq" {
                    // Everything below `dir` from lower layers is hidden.
                    live.range(dir.clone()..)
                        .take_while(|(p, _)| p.starts_with(&dir))
                        .map(|(p, _)| p.clone())
                        .collect()
                } else if let Some(target) = name.strip_prefix(".wh.") {
                    let target = format!("{dir}{target}");
                    let prefix = format!("{target}/");
                    live.keys()
                        .filter(|p| **p == target || p.starts_with(&prefix))
                        .cloned()
                        .collect()
                } else {
                    if file.regular {
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
                    continue;
                };
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
            }
        }
        out
    }
}

/// What became of one member of the save archive.
#[derive(Debug)]
enum Member {
    /// A layer, read to its end.
    Layer {
        scan: LayerScan,
        summary: crate::layer::LayerSummary,
    },
    /// Something that could not be read as a layer or a JSON document.
    Unreadable(String),
    /// A JSON document (manifest, index, config, OCI manifest).
    Json(serde_json::Value),
    /// A link to another member, resolved to its archive path.
    Link(String),
}

/// Largest JSON document of an archive (configs, manifests) read: larger
/// members are read as layers, in a stream.
const MAX_JSON: u64 = 8 << 20;

/// Audits one image archive (`docker save` output) read from `archive`.
///
/// The archive's members may come in any order, so each is read as it
/// arrives: JSON documents are kept, anything else is opened as a layer
/// (plain, gzip or zstd, whatever its name) and searched to its end. Once
/// the whole archive has been read, its manifests say which members are
/// layers of which image (every image of `manifest.json`, every platform
/// of `index.json`), and the audit fails closed: a listed layer that is
/// missing, could not be read to its end, or whose content is not the one
/// the image config's `rootfs.diff_ids` names is an error naming the layer;
/// so is a missing config. A platform the index lists but whose manifest
/// the archive lacks is named as not searched. "Clean" therefore always
/// means every byte of every layer and every string of the config was
/// searched, or the output says what was not.
pub fn audit_archive<R: Read>(scanner: &Scanner, archive: R) -> Result<ImageAudit, AuditError> {
    let members = read_members(scanner, archive)?;
    let listed = find_images(&members)?;
    let mut audit = ImageAudit {
        images: listed.images.len(),
        ..ImageAudit::default()
    };
    let several = listed.images.len() > 1;
    let mut counted = std::collections::BTreeSet::new();
    for (n, image) in listed.images.iter().enumerate() {
        let platform = several.then(|| {
            image
                .platform
                .clone()
                .unwrap_or_else(|| format!("image {}", n + 1))
        });
        audit.add_image(scanner, &members, image, platform, n == 0, &mut counted)?;
    }
    for (platform, digest) in listed.missing {
        audit.not_searched.push(NotSearched {
            layer: None,
            digest: digest.clone(),
            path: String::new(),
            platform: Some(platform),
            reason: format!("the index lists manifest `{digest}`, which is not in the saved image (the daemon does not hold that platform)"),
        });
    }
    let configs: Vec<&str> = listed.images.iter().map(|i| i.config.as_str()).collect();
    audit.add_metadata(scanner, &members, &configs);
    audit.hits.sort();
    audit.hits.dedup();
    audit.not_searched.sort();
    audit.not_searched.dedup();
    Ok(audit)
}

/// Reads every member of the archive as it arrives: links are resolved to
/// the path they name, regular members read (see [`read_member`]).
fn read_members<R: Read>(
    scanner: &Scanner,
    archive: R,
) -> Result<BTreeMap<String, Member>, AuditError> {
    let mut outer = tar::Archive::new(archive);
    let mut members: BTreeMap<String, Member> = BTreeMap::new();
    for entry in outer.entries()? {
        let mut entry = entry?;
        let path = crate::layer::member_path(&entry.path()?.to_string_lossy());
        if let Some(resolved) = crate::layer::link_member(&path, &entry) {
            members.insert(path, Member::Link(resolved));
            continue;
        }
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let size = entry.header().size()?;
        let member = read_member(scanner, &mut entry, size)?;
        members.insert(path, member);
    }
    Ok(members)
}

impl ImageAudit {
    /// Adds one image of the archive: its config's strings and each of its
    /// layers (`first`: its files make the shadow report; `counted`: the
    /// layers already counted in `layers` and `bytes`).
    fn add_image(
        &mut self,
        scanner: &Scanner,
        members: &BTreeMap<String, Member>,
        image: &ImagePaths,
        platform: Option<String>,
        first: bool,
        counted: &mut std::collections::BTreeSet<String>,
    ) -> Result<(), AuditError> {
        let Some(Member::Json(config)) = follow(members, &image.config) else {
            return Err(AuditError::Format(format!(
                "the image config `{}` is missing from the archive or is not JSON",
                image.config
            )));
        };
        for (field, found) in scanner.scan_json(config) {
            self.hits.push(found.at(Location::Config {
                field,
                platform: platform.clone(),
            }));
        }
        let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
            .as_array()
            .map(|ids| {
                ids.iter()
                    .filter_map(|id| id.as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        if diff_ids.len() != image.layers.len() {
            return Err(AuditError::Format(format!(
                "the manifest lists {} layer(s) but the image config {} diff id(s)",
                image.layers.len(),
                diff_ids.len()
            )));
        }
        for (index, layer_path) in image.layers.iter().enumerate() {
            let at = LayerAt {
                index,
                path: layer_path,
                platform: platform.as_deref(),
            };
            let scan = self.add_layer(members, &at, &diff_ids[index], counted)?;
            if first {
                self.layer_files.push(scan.files.clone());
            }
        }
        Ok(())
    }

    /// Adds the layer `at`, which must have been read to its end with the
    /// content `diff_id` names: its size, hits and what was not searched.
    fn add_layer<'m>(
        &mut self,
        members: &'m BTreeMap<String, Member>,
        at: &LayerAt<'_>,
        diff_id: &str,
        counted: &mut std::collections::BTreeSet<String>,
    ) -> Result<&'m LayerScan, AuditError> {
        let digest = display_digest(at.path);
        let unreadable = |reason: String| AuditError::Layer {
            index: at.index,
            digest: digest.clone(),
            reason: match at.platform {
                Some(platform) => format!("{reason} ({platform})"),
                None => reason,
            },
        };
        let (scan, summary) = match follow(members, at.path) {
            Some(Member::Layer { scan, summary }) => (scan, summary),
            Some(Member::Unreadable(reason)) => return Err(unreadable(reason.clone())),
            Some(Member::Json(_)) => return Err(unreadable("it is a JSON document".into())),
            Some(Member::Link(_)) => return Err(unreadable("too many links".into())),
            None => return Err(unreadable("it is missing from the archive".into())),
        };
        if summary.diff_id != diff_id {
            return Err(unreadable(format!(
                "its content ({}) is not the layer the image config lists ({})",
                summary.diff_id, diff_id
            )));
        }
        if counted.insert(summary.diff_id.clone()) {
            self.layers += 1;
            self.bytes += summary.bytes;
            self.nested += scan.nested;
        }
        let platform = at.platform.map(str::to_string);
        for hit in &scan.hits {
            self.hits.push(hit.found.clone().at(Location::Layer {
                index: Some(at.index),
                digest: digest.clone(),
                path: hit.path.clone(),
                record: hit.record.clone(),
                part: hit.part,
                within: hit.within.clone(),
                platform: platform.clone(),
            }));
        }
        for (path, reason) in &scan.not_searched {
            self.not_searched.push(NotSearched {
                layer: Some(at.index),
                digest: digest.clone(),
                path: path.clone(),
                platform: platform.clone(),
                reason: reason.clone(),
            });
        }
        Ok(scan)
    }

    /// Adds the hits of every JSON document of the archive but the config
    /// (index.json and its annotations, manifest.json, OCI manifests): they
    /// ship with the image too.
    fn add_metadata(
        &mut self,
        scanner: &Scanner,
        members: &BTreeMap<String, Member>,
        configs: &[&str],
    ) {
        for (document, member) in members {
            if let Member::Json(value) = member {
                if !configs.contains(&document.as_str()) {
                    for (field, found) in scanner.scan_json(value) {
                        self.hits.push(found.at(Location::Metadata {
                            document: document.clone(),
                            field,
                        }));
                    }
                }
            }
        }
    }
}

/// Reads one regular member: JSON is parsed and kept, anything else is
/// searched as a layer to its end. Errors of the member's own content are
/// recorded (they matter only if the member turns out to be a layer);
/// errors of the archive stream are returned.
fn read_member<R: Read>(
    scanner: &Scanner,
    entry: &mut tar::Entry<'_, R>,
    size: u64,
) -> Result<Member, AuditError> {
    let mut head = Vec::with_capacity(crate::layer::SNIFF_LEN);
    (&mut *entry)
        .take(crate::layer::SNIFF_LEN as u64)
        .read_to_end(&mut head)?;
    let json = matches!(
        head.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'{' | b'[')
    );
    let member = if json && size <= MAX_JSON {
        let mut text = head;
        entry.read_to_end(&mut text)?;
        match serde_json::from_slice::<serde_json::Value>(&text) {
            Ok(value) => Member::Json(value),
            Err(e) => Member::Unreadable(format!("invalid JSON: {e}")),
        }
    } else {
        // The member's bytes pass through `Counted` so that a short
        // archive (fewer bytes than the header promised) is told apart
        // from a layer that ends early.
        // A compressed layer's own bytes are searched too: gzip's name,
        // comment and extra field ship with it.
        let packed = matches!(
            crate::layer::sniff(&head),
            Ok(crate::layer::Compression::Gzip | crate::layer::Compression::Zstd)
        );
        let mut counted = Counted {
            inner: std::io::Cursor::new(head).chain(&mut *entry),
            read: 0,
            search: packed.then(|| Search::new(scanner)),
        };
        let member = match crate::layer::Layer::open(&mut counted) {
            Err(crate::layer::LayerError::Format(why)) => Member::Unreadable(why),
            Err(crate::layer::LayerError::Io(e)) => Member::Unreadable(e.to_string()),
            Ok(layer) => match scanner.scan_whole_layer(layer) {
                Ok((scan, summary)) => Member::Layer { scan, summary },
                Err(e) => Member::Unreadable(e.to_string()),
            },
        };
        let member = match (member, counted.search.take()) {
            (Member::Layer { mut scan, summary }, Some(search)) => {
                for found in search.finish() {
                    if !scan.hits.iter().any(|h| h.found == found) {
                        scan.hits.push(LayerHit {
                            path: String::new(),
                            record: None,
                            part: Some(Part::Packed),
                            within: Vec::new(),
                            found,
                        });
                    }
                }
                Member::Layer { scan, summary }
            }
            (member, _) => member,
        };
        // Whatever happened, the rest of the member is consumed so the next
        // one can be read; an archive that ends early is an error here.
        std::io::copy(&mut counted, &mut std::io::sink())?;
        if counted.read != size {
            return Err(AuditError::Format(format!(
                "the archive ends inside a member: {} of {size} bytes",
                counted.read
            )));
        }
        member
    };
    std::io::copy(entry, &mut std::io::sink())?;
    Ok(member)
}

/// A reader that counts what passes through it.
struct Counted<'s, R> {
    inner: R,
    read: u64,
    /// Searches the bytes as they pass, if set.
    search: Option<Search<'s>>,
}

impl<R: Read> Read for Counted<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.read += n as u64;
        if let Some(search) = &mut self.search {
            search.feed(&buf[..n]);
        }
        Ok(n)
    }
}

/// `blobs/sha256/ab…` → `sha256:ab…`; `<id>/layer.tar` → `<id>`.
fn display_digest(path: &str) -> String {
    path.trim_start_matches("blobs/")
        .trim_end_matches("/layer.tar")
        .replacen('/', ":", 1)
}

/// The member behind `path`, following links inside the archive.
fn follow<'m>(members: &'m BTreeMap<String, Member>, path: &str) -> Option<&'m Member> {
    let mut path = path.to_string();
    for _ in 0..8 {
        match members.get(&path)? {
            Member::Link(target) => path = target.clone(),
            other => return Some(other),
        }
    }
    members.get(&path)
}

/// One layer of one image.
struct LayerAt<'a> {
    index: usize,
    path: &'a str,
    platform: Option<&'a str>,
}

/// One image of an archive: its config's and its layers' paths.
#[derive(Debug, PartialEq, Eq)]
struct ImagePaths {
    config: String,
    layers: Vec<String>,
    /// `os/architecture[/variant]`, as the index names it.
    platform: Option<String>,
}

/// The images of an archive, and the platforms its index lists but whose
/// manifests it lacks (platform, manifest digest).
#[derive(Default)]
struct Listed {
    images: Vec<ImagePaths>,
    missing: Vec<(String, String)>,
}

/// How deep image indexes may nest.
const MAX_INDEX_DEPTH: usize = 8;

/// Finds every image of the archive: each entry of `manifest.json` (both
/// layouts of current Docker write it) and each manifest reachable from
/// the OCI `index.json`, through nested indexes (every platform).
fn find_images(members: &BTreeMap<String, Member>) -> Result<Listed, AuditError> {
    let mut listed = Listed::default();
    if let Some(manifest) = json_member(members, "manifest.json") {
        let entries = manifest
            .as_array()
            .filter(|a| !a.is_empty())
            .ok_or_else(|| AuditError::Format("`manifest.json` lists no image".into()))?;
        for entry in entries {
            let config = entry["Config"]
                .as_str()
                .map(crate::layer::member_path)
                .ok_or_else(|| AuditError::Format("`manifest.json` names no config".into()))?;
            let layers = strings(&entry["Layers"])
                .ok_or_else(|| AuditError::Format("`manifest.json` lists no layers".into()))?;
            listed.add(config, layers, None);
        }
    }
    if let Some(index) = json_member(members, "index.json") {
        list_index(members, index, "index.json", 0, &mut listed)?;
    } else if listed.images.is_empty() {
        return Err(AuditError::Format(
            "the archive has neither `manifest.json` nor `index.json`".into(),
        ));
    }
    if listed.images.is_empty() {
        return Err(AuditError::Format(
            "the archive's index lists no image".into(),
        ));
    }
    Ok(listed)
}

impl Listed {
    /// Adds an image once; an image `manifest.json` listed gets the
    /// platform the index names.
    fn add(&mut self, config: String, layers: Vec<String>, platform: Option<String>) {
        match self
            .images
            .iter_mut()
            .find(|i| i.config == config && i.layers == layers)
        {
            Some(known) => known.platform = known.platform.take().or(platform),
            None => self.images.push(ImagePaths {
                config,
                layers,
                platform,
            }),
        }
    }
}

fn json_member<'m>(
    members: &'m BTreeMap<String, Member>,
    path: &str,
) -> Option<&'m serde_json::Value> {
    match follow(members, path) {
        Some(Member::Json(value)) => Some(value),
        _ => None,
    }
}

fn strings(v: &serde_json::Value) -> Option<Vec<String>> {
    v.as_array()?
        .iter()
        .map(|x| x.as_str().map(crate::layer::member_path))
        .collect()
}

fn blob_path(digest: &str) -> String {
    format!("blobs/{}", digest.replacen(':', "/", 1))
}

/// `os/architecture[/variant]` of an index entry.
fn platform_of(descriptor: &serde_json::Value) -> Option<String> {
    let p = &descriptor["platform"];
    let os = p["os"].as_str()?;
    let arch = p["architecture"].as_str()?;
    Some(match p["variant"].as_str() {
        Some(variant) => format!("{os}/{arch}/{variant}"),
        None => format!("{os}/{arch}"),
    })
}

/// Adds every manifest `index` (the document at `path`) lists.
fn list_index(
    members: &BTreeMap<String, Member>,
    index: &serde_json::Value,
    path: &str,
    depth: usize,
    listed: &mut Listed,
) -> Result<(), AuditError> {
    if depth >= MAX_INDEX_DEPTH {
        return Err(AuditError::Format(format!(
            "image indexes nest deeper than {MAX_INDEX_DEPTH} levels"
        )));
    }
    let manifests = index["manifests"]
        .as_array()
        .ok_or_else(|| AuditError::Format(format!("`{path}` lists no manifest")))?;
    for descriptor in manifests {
        let digest = descriptor["digest"].as_str().ok_or_else(|| {
            AuditError::Format(format!("`{path}` lists a manifest without a digest"))
        })?;
        let platform = platform_of(descriptor);
        let Some(blob) = json_member(members, &blob_path(digest)) else {
            listed.missing.push((
                platform.unwrap_or_else(|| "an image".into()),
                digest.to_string(),
            ));
            continue;
        };
        if blob.get("manifests").is_some() {
            list_index(members, blob, digest, depth + 1, listed)?;
            continue;
        }
        let Some(layers) = blob["layers"].as_array() else {
            return Err(AuditError::Format(format!(
                "manifest `{digest}` lists no layers"
            )));
        };
        let attestation = descriptor["annotations"]["vnd.docker.reference.type"].as_str()
            == Some("attestation-manifest");
        let layers = layers
            .iter()
            .map(|l| l["digest"].as_str().map(blob_path))
            .collect::<Option<Vec<_>>>()
            .ok_or_else(|| {
                AuditError::Format(format!("manifest `{digest}` has a layer without a digest"))
            })?;
        if attestation {
            // An attestation's layers are JSON documents (in-toto
            // statements), searched as such; one that is missing is named.
            for layer in layers {
                if json_member(members, &layer).is_none() {
                    listed.missing.push((
                        format!("attestation of {}", platform.clone().unwrap_or_default()),
                        display_digest(&layer),
                    ));
                }
            }
            continue;
        }
        let config = blob["config"]["digest"]
            .as_str()
            .map(blob_path)
            .ok_or_else(|| AuditError::Format(format!("manifest `{digest}` names no config")))?;
        listed.add(config, layers, platform);
    }
    Ok(())
}

#[cfg(test)]
mod proof_tests;
#[cfg(test)]
mod tests {
    use super::{audit_archive, base64_core, Encoding, Form, Found, Location, Scanner};
    use base64::Engine as _;

    const SECRET: &[u8] = b"s3cr3t-value-42";

    fn whole(secret: &str, encoding: Encoding) -> Found {
        Found {
            secret: secret.to_string(),
            encoding,
            form: Form::Whole,
        }
    }

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

    /// `archive` of members whose names are owned strings.
    fn archive_owned(members: &[(String, Vec<u8>)]) -> Vec<u8> {
        archive(
            &members
                .iter()
                .map(|(p, d)| (p.as_str(), d.clone()))
                .collect::<Vec<_>>(),
        )
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
            assert_eq!(found, [whole("tok", encoding)], "{encoding}");
        }
        let (url_scanner, _) = Scanner::new([("p", &b"pa ss/w:rd"[..])]);
        assert_eq!(
            url_scanner.scan_bytes(b"q=pa%20ss%2Fw%3Ard&x"),
            [whole("p", Encoding::UrlEncoded)]
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
        assert_eq!(found, [whole("tok", Encoding::Raw)]);
    }

    type Pack = fn(&[u8]) -> Vec<u8>;
    type Tamper = fn(Vec<u8>) -> Vec<u8>;

    fn diff_id(tar: &[u8]) -> String {
        format!(
            "sha256:{}",
            crate::layer::hex(ring::digest::digest(&ring::digest::SHA256, tar).as_ref())
        )
    }

    fn gzip(data: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        e.write_all(data).unwrap();
        e.finish().unwrap()
    }

    fn config_for(layers: &[Vec<u8>], env: &[String]) -> serde_json::Value {
        serde_json::json!({
            "config": { "Env": env },
            "rootfs": { "type": "layers", "diff_ids": layers.iter().map(|l| diff_id(l)).collect::<Vec<_>>() },
            "history": [{ "created_by": "/bin/sh -c echo hi" }],
        })
    }

    /// An OCI layout archive as the containerd image store saves it: every
    /// layer blob passed through `pack` (gzip, zstd or nothing).
    fn oci_archive(layers: &[Vec<u8>], pack: fn(&[u8]) -> Vec<u8>) -> Vec<u8> {
        let blobs: Vec<Vec<u8>> = layers.iter().map(|l| pack(l)).collect();
        let config = serde_json::to_vec(&config_for(layers, &[])).unwrap();
        let manifest = serde_json::json!({
            "config": { "digest": diff_id(&config) },
            "layers": blobs.iter().map(|b| serde_json::json!({ "digest": diff_id(b) })).collect::<Vec<_>>(),
        });
        let manifest = serde_json::to_vec(&manifest).unwrap();
        let path = |data: &[u8]| format!("blobs/sha256/{}", &diff_id(data)[7..]);
        let mut members = vec![
            (
                "oci-layout".to_string(),
                br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
            ),
            (
                "index.json".to_string(),
                serde_json::to_vec(
                    &serde_json::json!({"manifests": [{"digest": diff_id(&manifest)}]}),
                )
                .unwrap(),
            ),
            (path(&manifest), manifest.clone()),
            (path(&config), config.clone()),
        ];
        // Layers last and in reverse: nothing may depend on member order.
        for blob in blobs.iter().rev() {
            members.push((path(blob), blob.clone()));
        }
        archive_owned(&members)
    }

    #[test]
    fn legacy_archive_hits_name_layer_path_and_config_field() {
        let (scanner, _) = Scanner::new([("tok", SECRET)]);
        let layers = [
            layer(&[("root/.ssh/id", SECRET), ("etc/.wh.gone", b"")]),
            layer(&[("etc/other", b"clean")]),
        ];
        let config = config_for(
            &layers,
            &[
                "PATH=/bin".into(),
                format!("TOKEN={}", String::from_utf8_lossy(SECRET)),
            ],
        );
        let bytes = archive(&[
            ("bbb/layer.tar", layers[1].clone()),
            ("aaa/layer.tar", layers[0].clone()),
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
        assert_eq!(audit.bytes, (layers[0].len() + layers[1].len()) as u64);
        assert_eq!(audit.hits.len(), 2, "{:?}", audit.hits);
        assert_eq!(
            audit.hits[0].location,
            Location::Layer {
                index: Some(0),
                digest: "aaa".into(),
                path: "root/.ssh/id".into(),
                record: None,
                part: None,
                within: Vec::new(),
                platform: None,
            }
        );
        assert_eq!(
            audit.hits[1].location,
            Location::Config {
                field: "config.Env[1]".into(),
                platform: None,
            }
        );
    }

    #[test]
    fn oci_archive_layers_are_found_plain_gzip_and_zstd() {
        let (scanner, _) = Scanner::new([("tok", SECRET)]);
        let encoded = base64::engine::general_purpose::STANDARD.encode(SECRET);
        let layers = vec![
            layer(&[("bin/sh", b"busybox")]),
            layer(&[("app/key.b64", encoded.as_bytes())]),
        ];
        let packs: [(&str, Pack); 3] = [
            ("plain", |d| d.to_vec()),
            ("gzip", gzip),
            ("zstd", |d| zstd::stream::encode_all(d, 3).unwrap()),
        ];
        for (name, pack) in packs {
            let audit = audit_archive(&scanner, oci_archive(&layers, pack).as_slice())
                .unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(audit.layers, 2, "{name}");
            assert_eq!(audit.hits.len(), 1, "{name}: {:?}", audit.hits);
            let Location::Layer { index, path, .. } = &audit.hits[0].location else {
                panic!("{name}: {:?}", audit.hits[0]);
            };
            assert_eq!((*index, path.as_str()), (Some(1), "app/key.b64"), "{name}");
            assert_eq!(audit.hits[0].encoding, Encoding::Base64, "{name}");
        }
    }

    /// The archive of `oci_archive` with the blob of layer `index`
    /// replaced by `with(blob)`.
    fn tampered(layers: &[Vec<u8>], index: usize, with: fn(Vec<u8>) -> Vec<u8>) -> Vec<u8> {
        let good = gzip(&layers[index]);
        let name = format!("blobs/sha256/{}", &diff_id(&good)[7..]);
        let mut outer = tar::Archive::new(std::io::Cursor::new(oci_archive(layers, gzip)));
        let mut members = Vec::new();
        for entry in outer.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
            if path == name {
                data = with(data);
            }
            members.push((path, data));
        }
        archive_owned(&members)
    }

    #[test]
    fn a_layer_that_cannot_be_read_to_its_end_fails_the_audit_naming_it() {
        let (scanner, _) = Scanner::new([("tok", SECRET)]);
        let layers = vec![
            layer(&[("bin/sh", b"busybox")]),
            layer(&[("app/key", SECRET), ("pad", &[7u8; 70_000])]),
        ];
        let cases: [(&str, Tamper, &str); 5] = [
            ("bzip2", |_| b"BZh91AY&SY".repeat(60), "bzip2"),
            ("truncated gzip", |d| d[..d.len() / 2].to_vec(), "layer 1"),
            (
                "bad crc",
                |mut d| {
                    let n = d.len();
                    d[n - 8] ^= 1;
                    d
                },
                "layer 1",
            ),
            ("not a tar inside", |_| gzip(&[9u8; 4096]), "layer 1"),
            ("missing", |_| Vec::new(), "empty"),
        ];
        for (name, with, expected) in cases {
            let err = audit_archive(&scanner, tampered(&layers, 1, with).as_slice())
                .expect_err(name)
                .to_string();
            assert!(
                err.contains("cannot read layer 1 (`sha256:"),
                "{name}: {err}"
            );
            assert!(err.contains(expected), "{name}: {err}");
        }
    }

    #[test]
    fn a_layer_whose_content_is_not_the_listed_one_fails_the_audit() {
        let (scanner, _) = Scanner::new([("tok", SECRET)]);
        let layers = vec![layer(&[("a", b"one")]), layer(&[("b", b"two")])];
        // A valid gzip tar, but not the layer the config lists.
        let err = audit_archive(
            &scanner,
            tampered(&layers, 0, |_| gzip(&layer(&[("c", b"other")]))).as_slice(),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("cannot read layer 0"), "{err}");
        assert!(
            err.contains("is not the layer the image config lists"),
            "{err}"
        );
    }

    #[test]
    fn an_archive_without_its_config_or_cut_short_fails_the_audit() {
        let (scanner, _) = Scanner::new([("tok", SECRET)]);
        let layers = vec![layer(&[("a", b"one")])];
        let whole = oci_archive(&layers, gzip);
        for cut in [whole.len() / 3, whole.len() - 1536] {
            assert!(
                audit_archive(&scanner, &whole[..cut]).is_err(),
                "an archive cut at {cut} of {} read clean",
                whole.len()
            );
        }
        let no_manifest = archive(&[("blobs/sha256/x", layers[0].clone())]);
        let err = audit_archive(&scanner, no_manifest.as_slice()).unwrap_err();
        assert!(
            err.to_string()
                .contains("neither `manifest.json` nor `index.json`"),
            "{err}"
        );
    }

    /// A made-up key in PEM armour: four lines of key material.
    const KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACDx0mRkL7kAVh4n9lN0q1d2j3Vh4QzF0xRkKkUuV7r0AAAAJh1y2c1dctnN
dXKJ7Qz3b1Qk0n2ZcmxN4p5eM8hG2pQ7yR9sT1uVwXaYbZcD3eF4gH5iJ6kL7mN8oP9qRs
AAAEBw9RnJ3Y0w6mZ1kQ2x8fN7c5a4b3d2e1f0g9h8i7j6k5l4m3n2o1p0q9r8s7t6u5==
-----END OPENSSH PRIVATE KEY-----
";

    fn key_scanner() -> Scanner {
        Scanner::new([("id_ed25519", KEY.as_bytes())]).0
    }

    #[test]
    fn a_multi_line_key_is_found_joined_by_spaces_with_crlf_and_line_by_line() {
        let scanner = key_scanner();
        let body: Vec<&str> = KEY.trim_end().lines().collect();
        let cases = [
            (format!("KEY={}\n", body.join(" ")), Form::NewlinesAsSpaces),
            // Line breaks do not count: CRLF is the value itself.
            (body.join("\r\n"), Form::Whole),
            (format!("x {} y", body[3]), Form::Line(4)),
        ];
        for (haystack, form) in cases {
            let found = scanner.scan_bytes(haystack.as_bytes());
            assert!(
                found
                    .iter()
                    .any(|f| f.form == form && f.encoding == Encoding::Raw),
                "{form}: {found:?}"
            );
        }
        // Encoded forms of a line are found too.
        let line = base64::engine::general_purpose::STANDARD.encode(body[2]);
        assert!(scanner
            .scan_bytes(line.as_bytes())
            .iter()
            .any(|f| f.form == Form::Line(3) && f.encoding == Encoding::Base64));
        // The armour lines are every key's: alone they are no hit; nor is
        // the OpenSSH header line, the same in every ed25519 key.
        let armour = format!("{}\n{}\n{}\n", body[0], body[1], body[body.len() - 1]);
        assert!(scanner.scan_bytes(armour.as_bytes()).is_empty());
    }

    #[test]
    fn a_secret_in_a_pax_record_or_an_annotation_is_found() {
        let scanner = key_scanner();
        let line = KEY.lines().nth(2).unwrap();
        // A layer whose only trace of the key is an extended attribute.
        let mut b = tar::Builder::new(Vec::new());
        b.append_pax_extensions([("SCHILY.xattr.user.note", line.as_bytes())])
            .unwrap();
        let mut h = tar::Header::new_ustar();
        h.set_size(5);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "etc/motd", &b"hello"[..]).unwrap();
        let layers = vec![b.into_inner().unwrap()];
        let audit = audit_archive(&scanner, oci_archive(&layers, gzip).as_slice()).unwrap();
        assert_eq!(audit.hits.len(), 1, "{:?}", audit.hits);
        assert_eq!(
            audit.hits[0].location,
            Location::Layer {
                index: Some(0),
                digest: format!("sha256:{}", &diff_id(&gzip(&layers[0]))[7..]),
                path: "etc/motd".into(),
                record: Some("SCHILY.xattr.user.note".into()),
                part: None,
                within: Vec::new(),
                platform: None,
            }
        );
        assert!(audit.hits[0]
            .describe("img")
            .ends_with("at `/etc/motd`, in its PAX record `SCHILY.xattr.user.note`"));

        // An index whose annotation holds a line of the key.
        let clean = vec![layer(&[("etc/motd", b"hello")])];
        let mut members = Vec::new();
        let mut outer = tar::Archive::new(std::io::Cursor::new(oci_archive(&clean, gzip)));
        for entry in outer.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
            if path == "index.json" {
                let mut index: serde_json::Value = serde_json::from_slice(&data).unwrap();
                index["manifests"][0]["annotations"] =
                    serde_json::json!({ "org.example.note": line });
                data = serde_json::to_vec(&index).unwrap();
            }
            members.push((path, data));
        }
        let bytes = archive(
            &members
                .iter()
                .map(|(p, d)| (p.as_str(), d.clone()))
                .collect::<Vec<_>>(),
        );
        let audit = audit_archive(&scanner, bytes.as_slice()).unwrap();
        assert_eq!(audit.hits.len(), 1, "{:?}", audit.hits);
        assert_eq!(
            audit.hits[0].location,
            Location::Metadata {
                document: "index.json".into(),
                field: "manifests[0].annotations.org.example.note".into(),
            }
        );
        assert_eq!(audit.hits[0].form, Form::Line(3));
    }

    #[test]
    fn shadowed_files_are_listed_with_their_layers() {
        let layers = [
            layer(&[("src/main.go", b"package main"), ("keep", b"k")]),
            layer(&[("src/.wh.main.go", b""), ("keep", b"kk")]),
        ];
        let bytes = archive(&[
            ("l0/layer.tar", layers[0].clone()),
            ("l1/layer.tar", layers[1].clone()),
            (
                "c.json",
                serde_json::to_vec(&config_for(&layers, &[])).unwrap(),
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

/// How many bytes of the save stream may wait, read from the daemon but
/// not yet searched.
const PREFETCH: usize = 8 << 20;

/// Audits `image` on the daemon: streams `docker save` through the scanner
/// on a blocking thread.
///
/// A task reads the stream from the daemon ahead of the search, up to
/// `PREFETCH` bytes: the daemon (which reads and tars layers, or sends
/// compressed blobs) and the search (decompression, hashing, matching)
/// then run at the same time instead of taking turns, so the audit takes
/// about as long as the save alone.
pub async fn audit_image(
    engine: &dyn crate::engine::Engine,
    image: &str,
    scanner: std::sync::Arc<Scanner>,
) -> Result<ImageAudit, ImageAuditError> {
    use futures_util::StreamExt;
    let mut stream = engine
        .save_image(image)
        .await
        .map_err(|source| ImageAuditError::Engine {
            image: image.to_string(),
            source,
        })?;
    let budget = std::sync::Arc::new(tokio::sync::Semaphore::new(PREFETCH));
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let reader_budget = std::sync::Arc::clone(&budget);
    let prefetch = tokio::spawn(async move {
        while let Some(item) = stream.next().await {
            let item = item.map_err(std::io::Error::other);
            if let Ok(chunk) = &item {
                // A chunk larger than the whole budget takes all of it.
                let n = chunk.len().clamp(1, PREFETCH);
                let Ok(permits) = reader_budget.acquire_many(n as u32).await else {
                    return;
                };
                permits.forget();
            }
            let failed = item.is_err();
            if tx.send(item).is_err() || failed {
                return;
            }
        }
    });
    let reader = Prefetched {
        rx,
        budget,
        chunk: bytes::Bytes::new(),
        taken: 0,
    };
    let name = image.to_string();
    let result = tokio::task::spawn_blocking(move || audit_archive(&scanner, reader)).await;
    prefetch.abort();
    result
        .map_err(|e| ImageAuditError::Audit {
            image: name.clone(),
            source: AuditError::Format(format!("audit task failed: {e}")),
        })?
        .map_err(|source| ImageAuditError::Audit {
            image: name,
            source,
        })
}

/// The blocking side of the prefetch: chunks in arrival order, each
/// returning its bytes to the budget once consumed. Reads are served from
/// the chunks themselves (no buffer in between: small reads, such as tar
/// headers, cost no copy of the stream).
struct Prefetched {
    rx: tokio::sync::mpsc::UnboundedReceiver<std::io::Result<bytes::Bytes>>,
    budget: std::sync::Arc<tokio::sync::Semaphore>,
    chunk: bytes::Bytes,
    /// Permits taken for `chunk`, given back when it is used up.
    taken: usize,
}

impl Prefetched {
    /// Makes the next chunk current; waits for one only if `wait`. False
    /// when there is none (yet, or at all).
    fn next_chunk(&mut self, wait: bool) -> std::io::Result<bool> {
        self.budget.add_permits(std::mem::take(&mut self.taken));
        let next = if wait {
            self.rx.blocking_recv()
        } else {
            self.rx.try_recv().ok()
        };
        match next {
            None => Ok(false),
            Some(Err(e)) => Err(e),
            Some(Ok(chunk)) => {
                self.taken = chunk.len().clamp(1, PREFETCH);
                self.chunk = chunk;
                Ok(true)
            }
        }
    }
}

impl Read for Prefetched {
    /// Fills `buf` with every byte already received (the daemon's chunks
    /// are small; large reads keep the per-read costs of the layers above
    /// — decompression, hashing, matching — low), waiting only when none is.
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let mut filled = 0;
        while filled < buf.len() {
            if self.chunk.is_empty() && !self.next_chunk(filled == 0)? {
                break;
            }
            let n = (buf.len() - filled).min(self.chunk.len());
            buf[filled..filled + n].copy_from_slice(&self.chunk.split_to(n));
            filled += n;
        }
        Ok(filled)
    }
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
        let form = match self.form {
            Form::Whole => String::new(),
            Form::NewlinesAsSpaces => ", its newlines as spaces".to_string(),
            Form::Crlf => ", with CRLF line endings".to_string(),
            Form::Line(n) => format!(", line {n} of it alone"),
        };
        let what = format!(
            "{image}: secret `{}` ({}{form})",
            self.secret, self.encoding
        );
        match &self.location {
            Location::Layer {
                index,
                digest,
                path,
                record,
                part,
                within,
                platform,
            } => {
                let layer = format!(
                    "{what} in layer {} ({digest}){}",
                    index.map_or("?".to_string(), |i| i.to_string()),
                    platform
                        .as_ref()
                        .map(|p| format!(" of {p}"))
                        .unwrap_or_default(),
                );
                let file = if path.is_empty() {
                    String::new()
                } else {
                    format!(" at `/{path}`")
                };
                let record = record
                    .as_ref()
                    .map(|r| format!(", in its PAX record `{r}`"))
                    .unwrap_or_default();
                let part = match part {
                    None => "",
                    Some(Part::Header) => ", in its tar header or padding",
                    Some(Part::AfterEnd) => ", after the end of the tar archive",
                    Some(Part::Packed) if path.is_empty() => {
                        ", in the compressed blob's own bytes (headers, name, comment)"
                    }
                    Some(Part::Packed) => ", in its packed bytes (headers, names, comment)",
                };
                let within = if within.is_empty() {
                    String::new()
                } else {
                    format!(", inside {}", within.join(", "))
                };
                format!("{layer}{file}{record}{part}{within}")
            }
            Location::Config { field, platform } => format!(
                "{what} in the image config{} at `{field}`",
                platform
                    .as_ref()
                    .map(|p| format!(" of {p}"))
                    .unwrap_or_default()
            ),
            Location::Metadata { document, field } => {
                format!("{what} in `{document}` of the saved image at `{field}`")
            }
        }
    }
}

impl NotSearched {
    /// One line for humans: what was not searched, and why.
    pub fn describe(&self, image: &str) -> String {
        let platform = self
            .platform
            .as_ref()
            .map(|p| format!(" of {p}"))
            .unwrap_or_default();
        match self.layer {
            Some(layer) => format!(
                "{image}: not searched: `/{}` in layer {layer} ({}){platform}: {}",
                self.path, self.digest, self.reason
            ),
            None => format!("{image}: not searched:{platform}: {}", self.reason),
        }
    }
}
