//! Image layers as `docker save` carries them: a tar, plain or compressed
//! with gzip or zstd.
//!
//! The compression is recognised by the stream's first bytes, never by a
//! member's name: the legacy layout names plain tars `layer.tar`, the OCI
//! layout names every blob by its digest, and the containerd image store
//! of current Docker saves gzip-compressed blobs. A stream that is none of
//! these is an error that says what it looks like, so that nothing reading
//! layers can mistake an unreadable layer for an empty one.
//!
//! [`Layer`] decompresses as it is read (memory bounded by the decoders'
//! windows), counts the bytes and hashes them: [`Layer::finish`] reads to
//! the end of the stream (so that gzip's CRC and length are checked) and
//! returns the layer's diff id, the sha256 of its uncompressed tar, which
//! an image config lists in `rootfs.diff_ids`.

use std::fmt;
use std::io::{self, Read};

/// How a layer's bytes are compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (`1f 8b`), one or more members.
    Gzip,
    /// zstd (`28 b5 2f fd`), one or more frames.
    Zstd,
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::None => "uncompressed",
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
        })
    }
}

const GZIP_MAGIC: [u8; 2] = [0x1f, 0x8b];
const ZSTD_MAGIC: [u8; 4] = [0x28, 0xb5, 0x2f, 0xfd];

/// How many leading bytes [`sniff`] looks at: one tar header block.
pub const SNIFF_LEN: usize = 512;

/// What the first bytes of a stream say it is: a layer in one of the
/// supported compressions, or a description of what it is instead.
pub fn sniff(head: &[u8]) -> Result<Compression, String> {
    if head.starts_with(&GZIP_MAGIC) {
        return Ok(Compression::Gzip);
    }
    if head.starts_with(&ZSTD_MAGIC) {
        return Ok(Compression::Zstd);
    }
    if head.len() >= 262 && &head[257..262] == b"ustar" {
        return Ok(Compression::None);
    }
    // An empty tar is two zero blocks; a tar of old format has no magic but
    // a valid header checksum.
    if head.len() == SNIFF_LEN && (head.iter().all(|&b| b == 0) || tar_checksum_ok(head)) {
        return Ok(Compression::None);
    }
    Err(describe(head))
}

/// Whether a 512-byte block carries a valid tar header checksum.
pub(crate) fn tar_checksum_ok(block: &[u8]) -> bool {
    let field = &block[148..156];
    let text: String = field
        .iter()
        .take_while(|&&b| b != 0 && b != b' ')
        .map(|&b| b as char)
        .collect();
    let Ok(stored) = u32::from_str_radix(text.trim(), 8) else {
        return false;
    };
    let sum: u32 = block
        .iter()
        .enumerate()
        .map(|(i, &b)| {
            if (148..156).contains(&i) {
                32
            } else {
                u32::from(b)
            }
        })
        .sum();
    sum == stored
}

fn describe(head: &[u8]) -> String {
    let known: [(&[u8], &str); 4] = [
        (b"BZh", "bzip2"),
        (&[0xfd, b'7', b'z', b'X', b'Z', 0], "xz"),
        (&[0x04, 0x22, 0x4d, 0x18], "lz4"),
        (b"{", "JSON"),
    ];
    for (magic, name) in known {
        if head.starts_with(magic) {
            return format!(
                "{name} data, which is not a supported layer format (tar, gzip or zstd)"
            );
        }
    }
    if head.is_empty() {
        return "empty, not a tar".to_string();
    }
    if head.len() < SNIFF_LEN {
        return format!(
            "{} bytes long, shorter than one tar block (unknown format or truncated)",
            head.len()
        );
    }
    let first: Vec<String> = head.iter().take(8).map(|b| format!("{b:02x}")).collect();
    format!(
        "not a tar and of unknown compression (first bytes {})",
        first.join(" ")
    )
}

/// Reads until `buf` is full or the stream ends; returns how much was read.
pub(crate) fn read_full(reader: &mut (impl Read + ?Sized), buf: &mut [u8]) -> io::Result<usize> {
    let mut filled = 0;
    while filled < buf.len() {
        match reader.read(&mut buf[filled..]) {
            Ok(0) => break,
            Ok(n) => filled += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(filled)
}

/// What reading a layer to its end showed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LayerSummary {
    pub compression: Compression,
    /// Bytes of the uncompressed tar.
    pub bytes: u64,
    /// `sha256:<hex>` of the uncompressed tar.
    pub diff_id: String,
}

/// A layer stream, decompressed, counted and hashed as it is read.
pub struct Layer<'a> {
    inner: Box<dyn Read + 'a>,
    compression: Compression,
    bytes: u64,
    digest: Digest,
}

impl fmt::Debug for Layer<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Layer")
            .field("compression", &self.compression)
            .field("bytes", &self.bytes)
            .finish_non_exhaustive()
    }
}

/// Why a stream cannot be read as a layer.
#[derive(Debug, thiserror::Error)]
pub enum LayerError {
    /// The stream is not a tar, gzip or zstd.
    #[error("{0}")]
    Format(String),
    /// Reading failed.
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl<'a> Layer<'a> {
    /// Opens `reader` as a layer: sniffs its first bytes and puts the
    /// matching decoder in front of it.
    pub fn open(mut reader: impl Read + 'a) -> Result<Layer<'a>, LayerError> {
        let mut head = vec![0u8; SNIFF_LEN];
        let n = read_full(&mut reader, &mut head)?;
        head.truncate(n);
        let compression = sniff(&head).map_err(LayerError::Format)?;
        let raw = io::Cursor::new(head).chain(reader);
        let inner: Box<dyn Read + 'a> = match compression {
            Compression::None => Box::new(raw),
            Compression::Gzip => Box::new(flate2::read::MultiGzDecoder::new(raw)),
            Compression::Zstd => Box::new(zstd::stream::read::Decoder::new(raw)?),
        };
        Ok(Layer {
            inner,
            compression,
            bytes: 0,
            digest: Digest::Inline(ring::digest::Context::new(&ring::digest::SHA256)),
        })
    }

    /// The layer's compression.
    pub fn compression(&self) -> Compression {
        self.compression
    }

    /// Uncompressed bytes read so far.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Reads the rest of the stream (a tar reader stops at the end-of-archive
    /// blocks, before gzip's trailer) and returns what the whole layer was.
    pub fn finish(mut self) -> io::Result<LayerSummary> {
        io::copy(&mut self, &mut io::sink())?;
        Ok(LayerSummary {
            compression: self.compression,
            bytes: self.bytes,
            diff_id: format!("sha256:{}", hex(self.digest.finish()?.as_ref())),
        })
    }
}

impl Read for Layer<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.bytes += n as u64;
        self.digest.update(&buf[..n], self.bytes)?;
        Ok(n)
    }
}

/// Bytes hashed on the reading thread before the rest of a layer is
/// hashed on a thread of its own: small layers cost no thread.
const HASH_INLINE: u64 = 4 << 20;
/// Bytes handed to the hashing thread at a time.
const HASH_CHUNK: usize = 512 << 10;
/// Chunks that may wait for the hashing thread; with the one it hashes,
/// the one being filled and one on its way back, a layer holds at most
/// `HASH_DEPTH + 3` chunks.
const HASH_DEPTH: usize = 2;

/// A layer's SHA-256: on the reading thread for its first `HASH_INLINE`
/// bytes, then on a thread of its own, so that hashing (about a fifth of
/// an audit's CPU time) runs beside decompression and search instead of
/// after them.
enum Digest {
    Inline(ring::digest::Context),
    Threaded(Hasher),
    /// Between states, or after the hashing thread failed.
    Gone,
}

/// The reading side of a hashing thread: full chunks go to it, emptied
/// ones come back to be filled again.
struct Hasher {
    filling: Vec<u8>,
    to: std::sync::mpsc::SyncSender<Vec<u8>>,
    back: std::sync::mpsc::Receiver<Vec<u8>>,
    thread: std::thread::JoinHandle<Option<ring::digest::Digest>>,
}

fn hasher_gone() -> io::Error {
    io::Error::other("the thread hashing the layer stopped")
}

impl Digest {
    /// Hashes `data`; `total` is how much of the layer has been read.
    fn update(&mut self, data: &[u8], total: u64) -> io::Result<()> {
        match self {
            Digest::Inline(context) => {
                context.update(data);
                if total >= HASH_INLINE {
                    self.go_threaded();
                }
                Ok(())
            }
            Digest::Threaded(hasher) => {
                hasher.filling.extend_from_slice(data);
                if hasher.filling.len() < HASH_CHUNK {
                    return Ok(());
                }
                let next = match hasher.back.try_recv() {
                    Ok(mut empty) => {
                        empty.clear();
                        empty
                    }
                    Err(_) => Vec::with_capacity(HASH_CHUNK),
                };
                let full = std::mem::replace(&mut hasher.filling, next);
                hasher.to.send(full).map_err(|_| hasher_gone())
            }
            Digest::Gone => Err(hasher_gone()),
        }
    }

    /// Moves the hashing to a thread of its own; if no thread can be
    /// started, hashing stays here.
    fn go_threaded(&mut self) {
        let (hand_over, handed) = std::sync::mpsc::sync_channel(1);
        let (to, work) = std::sync::mpsc::sync_channel::<Vec<u8>>(HASH_DEPTH);
        let (give_back, back) = std::sync::mpsc::channel();
        let spawned = std::thread::Builder::new()
            .name("layer-sha256".into())
            .spawn(move || {
                let mut context: ring::digest::Context = handed.recv().ok()?;
                for chunk in work {
                    context.update(&chunk);
                    let _ = give_back.send(chunk);
                }
                Some(context.finish())
            });
        let Ok(thread) = spawned else {
            return;
        };
        let Digest::Inline(context) = std::mem::replace(self, Digest::Gone) else {
            return;
        };
        if hand_over.send(context).is_ok() {
            *self = Digest::Threaded(Hasher {
                filling: Vec::with_capacity(HASH_CHUNK),
                to,
                back,
                thread,
            });
        }
    }

    fn finish(self) -> io::Result<ring::digest::Digest> {
        match self {
            Digest::Inline(context) => Ok(context.finish()),
            Digest::Threaded(hasher) => {
                if !hasher.filling.is_empty() {
                    hasher.to.send(hasher.filling).map_err(|_| hasher_gone())?;
                }
                drop(hasher.to);
                hasher.thread.join().ok().flatten().ok_or_else(hasher_gone)
            }
            Digest::Gone => Err(hasher_gone()),
        }
    }
}

/// A member path of a `docker save` archive in canonical form:
/// `./a//b/../c/` → `a/c`.
pub fn member_path(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    parts.join("/")
}

/// The member a symbolic link at `link` pointing to `target` names (Docker
/// 25+ links `<id>/layer.tar` to `../blobs/sha256/…`).
pub fn link_target(link: &str, target: &str) -> String {
    match link.rsplit_once('/') {
        Some((dir, _)) if !target.starts_with('/') => member_path(&format!("{dir}/{target}")),
        _ => member_path(target),
    }
}

/// The member a link entry at `path` of a `docker save` archive names: a
/// hard link's target is an archive path, a symbolic link's is relative to
/// the link's directory. `None` for an entry that is not a link.
pub fn link_member<R: Read>(path: &str, entry: &tar::Entry<'_, R>) -> Option<String> {
    let kind = entry.header().entry_type();
    if !kind.is_symlink() && !kind.is_hard_link() {
        return None;
    }
    let target = entry
        .link_name_bytes()
        .map(|t| String::from_utf8_lossy(&t).into_owned())
        .unwrap_or_default();
    Some(if kind.is_hard_link() {
        member_path(&target)
    } else {
        link_target(path, &target)
    })
}

/// Lowercase hex of `bytes`.
pub fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    bytes
        .iter()
        .fold(String::with_capacity(bytes.len() * 2), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

#[cfg(test)]
mod tests {
    use super::{hex, sniff, Compression, Layer, LayerError};
    use std::io::{Read, Write};

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
            hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
        )
    }

    fn files_of(layer: Layer<'_>) -> (Vec<(String, Vec<u8>)>, super::LayerSummary) {
        let mut archive = tar::Archive::new(layer);
        let mut out = Vec::new();
        for entry in archive.entries().unwrap() {
            let mut entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            let mut data = Vec::new();
            entry.read_to_end(&mut data).unwrap();
            out.push((path, data));
        }
        let summary = archive.into_inner().finish().unwrap();
        (out, summary)
    }

    #[test]
    fn plain_gzip_and_zstd_layers_read_the_same_files_and_diff_id() {
        let plain = tar_of(&[("etc/key", b"secret bytes"), ("bin/sh", b"#!")]);
        let zstd = zstd::stream::encode_all(plain.as_slice(), 3).unwrap();
        for (data, compression) in [
            (plain.clone(), Compression::None),
            (gzip(&plain), Compression::Gzip),
            (zstd, Compression::Zstd),
        ] {
            let layer = Layer::open(data.as_slice()).unwrap();
            assert_eq!(layer.compression(), compression);
            let (files, summary) = files_of(layer);
            assert_eq!(files.len(), 2, "{compression}");
            assert_eq!(files[0], ("etc/key".to_string(), b"secret bytes".to_vec()));
            assert_eq!(summary.bytes, plain.len() as u64);
            assert_eq!(summary.diff_id, sha256(&plain), "{compression}");
        }
    }

    #[test]
    fn a_layer_hashed_on_its_own_thread_has_the_same_diff_id() {
        // Past the inline part, in uneven reads and chunks, with a
        // partial last chunk.
        let big: Vec<u8> = (0..(super::HASH_INLINE as usize + 3 * super::HASH_CHUNK + 12_345))
            .map(|i| (i * 7 + i / 4099) as u8)
            .collect();
        let plain = tar_of(&[("big", &big), ("small", b"tail")]);
        for data in [plain.clone(), gzip(&plain)] {
            let mut layer = Layer::open(data.as_slice()).unwrap();
            let mut buf = vec![0u8; 77_777];
            let mut odd = 1;
            while layer.read(&mut buf[..odd]).unwrap() > 0 {
                odd = odd * 31 % 77_777 + 1;
            }
            assert!(matches!(layer.digest, super::Digest::Threaded(_)));
            let summary = layer.finish().unwrap();
            assert_eq!(summary.bytes, plain.len() as u64);
            assert_eq!(summary.diff_id, sha256(&plain));
        }
    }

    #[test]
    fn an_empty_tar_is_a_layer() {
        let layer = Layer::open(&[0u8; 1024][..]).unwrap();
        assert_eq!(layer.compression(), Compression::None);
        assert_eq!(files_of(layer).0.len(), 0);
    }

    #[test]
    fn unknown_formats_are_named_not_read_as_empty() {
        let cases: [(&[u8], &str); 5] = [
            (b"BZh91AY&SY", "bzip2"),
            (&[0xfd, b'7', b'z', b'X', b'Z', 0, 0], "xz"),
            (b"", "empty"),
            (b"short", "shorter than one tar block"),
            (&[7u8; 600], "first bytes 07 07 07"),
        ];
        for (data, expected) in cases {
            let err = sniff(&data[..data.len().min(512)]).unwrap_err();
            assert!(err.contains(expected), "{err}");
            assert!(matches!(Layer::open(data), Err(LayerError::Format(_))));
        }
    }

    #[test]
    fn a_truncated_gzip_layer_is_an_error_at_finish() {
        let plain = tar_of(&[("a", &[9u8; 100_000])]);
        let packed = gzip(&plain);
        let cut = &packed[..packed.len() - 6];
        let mut layer = Layer::open(cut).unwrap();
        let mut sink = Vec::new();
        let result = layer
            .read_to_end(&mut sink)
            .and_then(|_| layer.finish().map(|_| ()));
        assert!(
            result.is_err(),
            "a truncated gzip stream must not read clean"
        );
    }

    #[test]
    fn a_corrupt_gzip_crc_is_an_error() {
        let plain = tar_of(&[("a", b"hello world")]);
        let mut packed = gzip(&plain);
        let n = packed.len();
        packed[n - 8] ^= 0xff; // CRC32 of the trailer
        let layer = Layer::open(packed.as_slice()).unwrap();
        let mut archive = tar::Archive::new(layer);
        for entry in archive.entries().unwrap() {
            let _ = std::io::copy(&mut entry.unwrap(), &mut std::io::sink());
        }
        assert!(archive.into_inner().finish().is_err());
    }
}
