//! Reading one layer to its last byte: the tar walked by hand, and every
//! file that is itself an archive opened and searched in turn.
//!
//! The walk reads the layer's tar itself rather than through a tar library,
//! so that it sees every byte: each entry's content, but also its header
//! blocks, its padding and whatever follows the end-of-archive blocks (all
//! of which ship with the image). PAX records and GNU long names are read
//! with a size limit ([`MAX_META`]), so a crafted header cannot make the
//! audit hold more than that in memory.
//!
//! A file whose first bytes say it is gzip, zstd, zip (jar, wheel, apk) or
//! tar is searched twice: as it is (its names, headers and any stored
//! bytes) and unpacked, recursively. Unpacking is limited in depth
//! ([`MAX_DEPTH`]), expanded size ([`MAX_EXPANDED`]) and ratio
//! ([`MAX_RATIO`]); a file beyond a limit, or one that cannot be unpacked,
//! is named as not searched, with the reason, never skipped in silence.
//! Its packed bytes are still searched.

use std::cell::Cell;
use std::io::{self, BufReader, Read};

use super::{Found, LayerHit, LayerScan, Part, Scanner, Search};
use crate::layer::read_full;

/// How deep archives inside a layer are opened (a `.tgz` is two: gzip,
/// then tar).
pub const MAX_DEPTH: usize = 8;
/// The most one nested file may expand to.
pub const MAX_EXPANDED: u64 = 1 << 30;
/// The most a nested file may expand, relative to its packed size (once it
/// has expanded past [`RATIO_GRACE`]).
pub const MAX_RATIO: u64 = 100;
/// Expansion up to this size is never held against the ratio.
pub const RATIO_GRACE: u64 = 1 << 20;
/// Largest PAX header or GNU long name or link name read.
pub const MAX_META: u64 = 1 << 20;
/// The largest window a nested zstd frame may ask for (2^23 = 8 MiB).
const ZSTD_WINDOW_LOG: u32 = 23;

/// Where a stream sits in a layer.
#[derive(Debug, Clone, Default)]
struct Place {
    /// The display path: `app.tgz!/keys/id_rsa`.
    path: String,
    /// What was unpacked to reach it: `["gzip", "tar"]`.
    within: Vec<&'static str>,
    /// Archives opened to reach it.
    depth: usize,
}

impl Place {
    /// The same stream after unpacking `how` (gzip, zstd).
    fn unpacked(&self, how: &'static str) -> Place {
        let mut within = self.within.clone();
        within.push(how);
        Place {
            path: self.path.clone(),
            within,
            depth: self.depth + 1,
        }
    }

    /// A member `name` of the archive this stream is (`how`: tar, zip).
    fn member(&self, how: &'static str, name: &str) -> Place {
        let mut within = self.within.clone();
        within.push(how);
        Place {
            path: format!("{}!/{}", self.path, name.trim_start_matches('/')),
            within,
            depth: self.depth + 1,
        }
    }
}

/// Why a walk stopped.
#[derive(Debug)]
enum Problem {
    /// Reading failed.
    Io(io::Error),
    /// The bytes are not what they claim to be.
    Format(String),
}

impl From<io::Error> for Problem {
    fn from(e: io::Error) -> Self {
        Problem::Io(e)
    }
}

impl std::fmt::Display for Problem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Problem::Io(e) => write!(f, "{e}"),
            Problem::Format(why) => f.write_str(why),
        }
    }
}

/// A nested stream went past a limit: carried through the decoder as an
/// I/O error, told apart from a corrupt stream by its type.
#[derive(Debug)]
struct Limit(String);

impl std::fmt::Display for Limit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Limit {}

/// Searches every byte of one layer's tar, read from `layer` to its end.
pub(super) fn walk_layer(scanner: &Scanner, layer: &mut dyn Read) -> Result<LayerScan, String> {
    let mut walk = Walk {
        scanner,
        scan: LayerScan::default(),
    };
    match walk.tar(layer, &Place::default(), true) {
        Ok(()) => Ok(walk.scan),
        Err(problem) => Err(problem.to_string()),
    }
}

struct Walk<'s> {
    scanner: &'s Scanner,
    scan: LayerScan,
}

/// What an entry's header blocks said.
#[derive(Default)]
struct Pending {
    path: Option<Vec<u8>>,
    link: Option<Vec<u8>>,
    size: Option<u64>,
    /// Hits in PAX records, named when the entry's path is known.
    records: Vec<(String, Found)>,
    /// Header blocks and metadata of the entry, searched as one.
    headers: Vec<u8>,
}

impl Walk<'_> {
    fn hit(&mut self, place: &Place, found: Found, record: Option<String>, part: Option<Part>) {
        self.scan.hits.push(LayerHit {
            path: place.path.clone(),
            record,
            part,
            within: place.within.clone(),
            found,
        });
    }

    fn not_searched(&mut self, place: &Place, reason: String) {
        self.scan.not_searched.push((place.path.clone(), reason));
    }

    /// Walks a tar read from `r` to the end of `r`. `top`: the layer
    /// itself, whose files make the image's filesystem.
    fn tar(&mut self, r: &mut dyn Read, at: &Place, top: bool) -> Result<(), Problem> {
        let mut pending = Pending::default();
        let mut block = [0u8; 512];
        loop {
            let n = read_full(r, &mut block)?;
            if n == 0 && pending.headers.is_empty() {
                return Ok(());
            }
            if n < block.len() {
                return Err(Problem::Format("the tar ends inside a header".into()));
            }
            if block.iter().all(|&b| b == 0) {
                // The end-of-archive blocks; whatever follows still ships.
                let mut after = Search::new(self.scanner);
                after.feed_from(r)?;
                for found in after.finish() {
                    self.hit(at, found, None, Some(Part::AfterEnd));
                }
                return Ok(());
            }
            if !crate::layer::tar_checksum_ok(&block) {
                return Err(Problem::Format(
                    "a tar header with a wrong checksum (not a tar, or corrupt)".into(),
                ));
            }
            pending.headers.extend_from_slice(&block);
            let kind = block[156];
            let size = match pending.size.take() {
                Some(size) => size,
                None => numeric(&block[124..136])?,
            };
            match kind {
                b'x' | b'g' | b'L' | b'K' => self.meta(r, kind, size, &mut pending)?,
                b'S' => {
                    return Err(Problem::Format(
                        "a GNU sparse entry, which the audit cannot read".into(),
                    ))
                }
                _ => self.entry(r, &block, size, std::mem::take(&mut pending), at, top)?,
            }
        }
    }

    /// Reads a PAX header or a GNU long name or link name of `size` bytes.
    fn meta(
        &mut self,
        r: &mut dyn Read,
        kind: u8,
        size: u64,
        pending: &mut Pending,
    ) -> Result<(), Problem> {
        let what = match kind {
            b'x' | b'g' => "PAX header",
            b'L' => "GNU long name",
            _ => "GNU long link name",
        };
        if size > MAX_META {
            return Err(Problem::Format(format!(
                "a {what} of {size} bytes, beyond the limit of {MAX_META} bytes"
            )));
        }
        let mut data = Vec::with_capacity(size as usize);
        r.take(size).read_to_end(&mut data)?;
        if (data.len() as u64) < size {
            return Err(Problem::Format(format!("the tar ends inside a {what}")));
        }
        skip_padding(r, size, &mut pending.headers)?;
        let trimmed = || data.split(|&b| b == 0).next().unwrap_or_default().to_vec();
        match kind {
            b'L' => pending.path = Some(trimmed()),
            b'K' => pending.link = Some(trimmed()),
            _ => {
                for (key, value) in pax_records(&data)? {
                    let name = self.scanner.redact(&String::from_utf8_lossy(key));
                    for part in [key, value] {
                        for found in self.scanner.scan_bytes(part) {
                            pending.records.push((name.clone(), found));
                        }
                    }
                    if kind == b'x' {
                        match key {
                            b"path" => pending.path = Some(value.to_vec()),
                            b"linkpath" => pending.link = Some(value.to_vec()),
                            b"size" => pending.size = Some(pax_size(value)?),
                            _ => {}
                        }
                    }
                }
            }
        }
        Ok(())
    }

    /// One entry whose last header block is `block`: its name, link name,
    /// records, content and padding.
    fn entry(
        &mut self,
        r: &mut dyn Read,
        block: &[u8; 512],
        size: u64,
        pending: Pending,
        at: &Place,
        top: bool,
    ) -> Result<(), Problem> {
        let name = pending.path.unwrap_or_else(|| header_path(block));
        let link = pending
            .link
            .unwrap_or_else(|| nul_terminated(&block[157..257]).to_vec());
        // A name that holds a secret is named without it.
        let path = self.scanner.redact(&String::from_utf8_lossy(&name));
        let place = if top {
            Place {
                path: path.clone(),
                ..Place::default()
            }
        } else {
            at.member("tar", &path)
        };
        let kind = block[156];
        let regular = matches!(kind, b'0' | 0 | b'7');
        if top {
            self.scan.files.push(super::LayerFile {
                path,
                size,
                regular,
            });
        }
        let before = self.scan.hits.len();
        for found in self.scanner.scan_bytes(&name) {
            self.hit(&place, found, None, None);
        }
        for found in self.scanner.scan_bytes(&link) {
            self.hit(&place, found, None, None);
        }
        for (record, found) in pending.records {
            self.hit(&place, found, Some(record), None);
        }
        let mut content = r.take(size);
        self.file(&mut content, &place)?;
        if content.limit() > 0 {
            return Err(Problem::Format(format!(
                "the tar ends inside the content of `{}`",
                place.path
            )));
        }
        let mut headers = pending.headers;
        skip_padding(r, size, &mut headers)?;
        // The header blocks and padding: only what the name, link name
        // and records did not already show.
        for found in self.scanner.scan_bytes(&headers) {
            if !self.scan.hits[before..].iter().any(|h| h.found == found) {
                self.hit(&place, found, None, Some(Part::Header));
            }
        }
        Ok(())
    }

    /// Searches one file's content, read from `r` to its end; opens it if
    /// it is an archive. Returns an error only when `r` fails.
    fn file(&mut self, r: &mut dyn Read, place: &Place) -> io::Result<()> {
        let mut head = [0u8; 512];
        let n = read_full(r, &mut head)?;
        let mut kind = packing(&head[..n]);
        if let Some(how) = kind {
            if place.depth >= MAX_DEPTH {
                self.not_searched(
                    place,
                    format!(
                        "{how} nested {} deep, beyond the limit of {MAX_DEPTH}",
                        place.depth
                    ),
                );
                kind = None;
            }
        }
        let failed = Cell::new(false);
        let consumed = Cell::new(0u64);
        let mut source = Source {
            inner: io::Cursor::new(&head[..n]).chain(r),
            failed: &failed,
            consumed: &consumed,
            search: Search::new(self.scanner),
            searching: kind != Some("tar"),
        };
        let before = self.scan.hits.len();
        if let Some(how) = kind {
            self.scan.nested += 1;
            let outcome = self.unpack(how, &mut source, place);
            if failed.get() {
                // The stream beneath failed, not the archive: the layer
                // cannot be read.
                return Err(match outcome {
                    Err(Problem::Io(e)) => e,
                    _ => io::Error::other("reading the layer failed"),
                });
            }
            if let Err(problem) = outcome {
                let reason = match &problem {
                    Problem::Io(e) => match e.get_ref().and_then(|e| e.downcast_ref::<Limit>()) {
                        Some(limit) => limit.to_string(),
                        None => format!("cannot be unpacked as {how}: {e}"),
                    },
                    Problem::Format(why) => format!("cannot be unpacked as {how}: {why}"),
                };
                self.not_searched(place, reason);
                // What was not walked is still searched as it is.
                source.searching = true;
            }
        }
        drain(&mut source)?;
        let packed = std::mem::replace(&mut source.search, Search::new(self.scanner)).finish();
        let part = kind.map(|_| Part::Packed);
        for found in packed {
            // A secret found unpacked is named there, not twice.
            if !self.scan.hits[before..].iter().any(|h| h.found == found) {
                self.hit(place, found, None, part);
            }
        }
        Ok(())
    }

    /// Unpacks `source` as `how` and searches what it holds.
    fn unpack(
        &mut self,
        how: &'static str,
        source: &mut Source<'_, '_>,
        place: &Place,
    ) -> Result<(), Problem> {
        let consumed = source.consumed;
        match how {
            "tar" => self.tar(source, place, false),
            "gzip" => {
                let decoder = flate2::bufread::MultiGzDecoder::new(BufReader::new(source));
                self.expanded(decoder, consumed, &place.unpacked(how))
            }
            "zstd" => {
                let mut decoder = zstd::stream::read::Decoder::new(source)?;
                decoder.window_log_max(ZSTD_WINDOW_LOG)?;
                self.expanded(decoder, consumed, &place.unpacked(how))
            }
            _ => self.zip(&mut BufReader::new(source), consumed, place),
        }
    }

    /// Searches the output of a decoder as the file at `place`, within the
    /// limits.
    fn expanded(
        &mut self,
        decoder: impl Read,
        consumed: &Cell<u64>,
        place: &Place,
    ) -> Result<(), Problem> {
        let mut out = Bounded {
            inner: decoder,
            consumed,
            start: consumed.get(),
            produced: 0,
        };
        self.file(&mut out, place)?;
        Ok(())
    }

    /// Walks a zip's local entries in stream order (as `unzip` of a pipe
    /// would); the central directory at its end is searched as packed
    /// bytes only.
    fn zip(
        &mut self,
        r: &mut BufReader<&mut Source<'_, '_>>,
        consumed: &Cell<u64>,
        place: &Place,
    ) -> Result<(), Problem> {
        loop {
            let mut sig = [0u8; 4];
            if read_full(r, &mut sig)? < 4 || sig != *b"PK\x03\x04" {
                // The central directory, or the end: searched as packed.
                return Ok(());
            }
            let mut fixed = [0u8; 26];
            if read_full(r, &mut fixed)? < 26 {
                return Err(Problem::Format("the zip ends inside a header".into()));
            }
            let le16 = |i: usize| u64::from(u16::from_le_bytes([fixed[i], fixed[i + 1]]));
            let le32 = |i: usize| {
                u64::from(u32::from_le_bytes([
                    fixed[i],
                    fixed[i + 1],
                    fixed[i + 2],
                    fixed[i + 3],
                ]))
            };
            let (flags, method) = (le16(2), le16(4));
            let (mut packed, mut size) = (le32(14), le32(18));
            let mut name = vec![0u8; le16(22) as usize];
            let mut extra = vec![0u8; le16(24) as usize];
            r.read_exact(&mut name)?;
            r.read_exact(&mut extra)?;
            let zip64 = zip64_sizes(&extra, &mut size, &mut packed);
            let name = self.scanner.redact(&String::from_utf8_lossy(&name));
            let member = place.member("zip", &name);
            let described = flags & 8 != 0;
            if flags & 1 != 0 {
                self.not_searched(&member, "an encrypted zip entry".into());
                if described {
                    return Err(Problem::Format("an encrypted entry of unknown size".into()));
                }
                io::copy(&mut (&mut *r).take(packed), &mut io::sink())?;
                continue;
            }
            match method {
                0 if described && packed == 0 => {
                    return Err(Problem::Format(format!(
                        "`{name}` is stored with its size after its data"
                    )))
                }
                0 => {
                    let mut data = (&mut *r).take(packed);
                    self.file(&mut data, &member)?;
                }
                8 if described => {
                    let decoder = flate2::bufread::DeflateDecoder::new(&mut *r);
                    self.expanded(decoder, consumed, &member)?;
                    skip_descriptor(r, zip64)?;
                }
                8 => {
                    let decoder = flate2::bufread::DeflateDecoder::new((&mut *r).take(packed));
                    self.expanded(decoder, consumed, &member)?;
                }
                other if !described => {
                    self.not_searched(
                        &member,
                        format!("zip compression method {other}, which the audit cannot unpack"),
                    );
                    io::copy(&mut (&mut *r).take(packed), &mut io::sink())?;
                }
                other => {
                    return Err(Problem::Format(format!(
                        "`{name}` uses zip compression method {other} with its size after its data"
                    )))
                }
            }
        }
    }
}

/// The packed bytes of a nested file: counted, searched as they pass (if
/// `searching`), and any failure of the stream beneath remembered, so that
/// it is not mistaken for a corrupt archive.
struct Source<'c, 'r> {
    inner: io::Chain<io::Cursor<&'r [u8]>, &'r mut dyn Read>,
    failed: &'c Cell<bool>,
    consumed: &'c Cell<u64>,
    search: Search<'c>,
    searching: bool,
}

impl Read for Source<'_, '_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self
            .inner
            .read(buf)
            .inspect_err(|_| self.failed.set(true))?;
        self.consumed.set(self.consumed.get() + n as u64);
        if self.searching {
            self.search.feed(&buf[..n]);
        }
        Ok(n)
    }
}

/// A decoder's output, stopped with a [`Limit`] error past
/// [`MAX_EXPANDED`] or [`MAX_RATIO`] times the packed bytes consumed.
struct Bounded<'c, R> {
    inner: R,
    consumed: &'c Cell<u64>,
    /// `consumed` when this output began.
    start: u64,
    produced: u64,
}

impl<R: Read> Read for Bounded<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.produced += n as u64;
        if self.produced > MAX_EXPANDED {
            return Err(io::Error::other(Limit(format!(
                "expands beyond the limit of {} MiB",
                MAX_EXPANDED >> 20
            ))));
        }
        if self.produced > RATIO_GRACE
            && self.produced > MAX_RATIO * (self.consumed.get() - self.start).max(1)
        {
            return Err(io::Error::other(Limit(format!(
                "expands more than {MAX_RATIO} times its packed size (a decompression bomb?), beyond the limit"
            ))));
        }
        Ok(n)
    }
}

/// What the first bytes of a file say it packs: `gzip`, `zstd`, `zip`,
/// `tar`, or nothing.
fn packing(head: &[u8]) -> Option<&'static str> {
    if head.starts_with(&[0x1f, 0x8b, 0x08]) {
        Some("gzip")
    } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        Some("zstd")
    } else if head.starts_with(b"PK\x03\x04") {
        Some("zip")
    } else if head.len() == 512
        && &head[257..262] == b"ustar"
        && crate::layer::tar_checksum_ok(head)
    {
        Some("tar")
    } else {
        None
    }
}

/// Reads `r` to its end in large blocks (what passes is searched by the
/// readers beneath).
fn drain(r: &mut impl Read) -> io::Result<()> {
    // Most files are small: a block on the stack first.
    let mut small = [0u8; 8 << 10];
    if read_full(r, &mut small)? < small.len() {
        return Ok(());
    }
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match r.read(&mut buf) {
            Ok(0) => return Ok(()),
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
}

/// Reads the padding after `size` bytes of data into `into`.
fn skip_padding(r: &mut dyn Read, size: u64, into: &mut Vec<u8>) -> Result<(), Problem> {
    let pad = (512 - size % 512) % 512;
    let start = into.len();
    into.resize(start + pad as usize, 0);
    if read_full(r, &mut into[start..])? < pad as usize {
        return Err(Problem::Format(
            "the tar ends inside an entry's padding".into(),
        ));
    }
    Ok(())
}

fn nul_terminated(field: &[u8]) -> &[u8] {
    field.split(|&b| b == 0).next().unwrap_or_default()
}

/// A header's path: `prefix/name` in the POSIX ustar format, `name` else.
fn header_path(block: &[u8; 512]) -> Vec<u8> {
    let name = nul_terminated(&block[..100]);
    let prefix = nul_terminated(&block[345..500]);
    if &block[257..263] == b"ustar\0" && !prefix.is_empty() {
        [prefix, b"/", name].concat()
    } else {
        name.to_vec()
    }
}

/// A numeric header field: octal text, or base-256 (first byte's high bit).
fn numeric(field: &[u8]) -> Result<u64, Problem> {
    if field.first().is_some_and(|b| b & 0x80 != 0) {
        let mut value: u64 = u64::from(field[0] & 0x7f);
        for &b in &field[1..] {
            value = value
                .checked_mul(256)
                .and_then(|v| v.checked_add(u64::from(b)))
                .ok_or_else(|| Problem::Format("a tar size field too large".into()))?;
        }
        return Ok(value);
    }
    let text: String = field
        .iter()
        .map(|&b| b as char)
        .filter(|c| !matches!(c, '\0' | ' '))
        .collect();
    if text.is_empty() {
        return Ok(0);
    }
    u64::from_str_radix(&text, 8)
        .map_err(|_| Problem::Format(format!("a tar size field that is not a number: `{text}`")))
}

fn pax_size(value: &[u8]) -> Result<u64, Problem> {
    std::str::from_utf8(value)
        .ok()
        .and_then(|v| v.parse().ok())
        .ok_or_else(|| Problem::Format("a PAX `size` record that is not a number".into()))
}

/// A PAX record's key and value.
type Record<'a> = (&'a [u8], &'a [u8]);

/// The records of a PAX header: `<len> <key>=<value>\n`, each.
fn pax_records(data: &[u8]) -> Result<Vec<Record<'_>>, Problem> {
    let bad = || Problem::Format("a malformed PAX header".into());
    let mut records = Vec::new();
    let mut rest = data;
    while !rest.is_empty() && rest[0] != 0 {
        let space = rest.iter().position(|&b| b == b' ').ok_or_else(bad)?;
        let len: usize = std::str::from_utf8(&rest[..space])
            .ok()
            .and_then(|l| l.parse().ok())
            .filter(|&l| l > space + 1 && l <= rest.len())
            .ok_or_else(bad)?;
        let record = &rest[space + 1..len];
        let record = record.strip_suffix(b"\n").ok_or_else(bad)?;
        let eq = record.iter().position(|&b| b == b'=').ok_or_else(bad)?;
        records.push((&record[..eq], &record[eq + 1..]));
        rest = &rest[len..];
    }
    Ok(records)
}

/// Applies a zip64 extra field to sizes marked `0xffffffff`; says whether
/// the entry is zip64 (its data descriptor then has 8-byte sizes).
fn zip64_sizes(extra: &[u8], size: &mut u64, packed: &mut u64) -> bool {
    let mut rest = extra;
    while rest.len() >= 4 {
        let id = u16::from_le_bytes([rest[0], rest[1]]);
        let len = usize::from(u16::from_le_bytes([rest[2], rest[3]])).min(rest.len() - 4);
        let mut data = &rest[4..4 + len];
        if id == 1 {
            let mut next = || {
                let v = data
                    .get(..8)
                    .map(|b| u64::from_le_bytes(b.try_into().unwrap_or_default()));
                data = data.get(8..).unwrap_or_default();
                v
            };
            if *size == 0xffff_ffff {
                *size = next().unwrap_or(*size);
            }
            if *packed == 0xffff_ffff {
                *packed = next().unwrap_or(*packed);
            }
            return true;
        }
        rest = &rest[4 + len..];
    }
    false
}

/// Reads a zip data descriptor: an optional signature, the CRC and both
/// sizes (8 bytes each for zip64).
fn skip_descriptor(r: &mut impl Read, zip64: bool) -> io::Result<()> {
    let mut first = [0u8; 4];
    r.read_exact(&mut first)?;
    let sizes = if zip64 { 16 } else { 8 };
    let rest = if first == *b"PK\x07\x08" {
        4 + sizes
    } else {
        sizes
    };
    io::copy(&mut r.take(rest), &mut io::sink())?;
    Ok(())
}
