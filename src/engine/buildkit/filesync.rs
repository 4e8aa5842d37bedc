//! The session's FileSync service: how the build context and the Dockerfile
//! reach BuildKit.
//!
//! A build request with `remote=client-session` carries no context; the
//! dockerfile frontend asks the session for two directories instead, by
//! name, in the gRPC metadata of a `moby.filesync.v1.FileSync/DiffCopy`
//! call: `dockerfile` (habitus serves the rewritten Dockerfile from memory,
//! so nothing is written into the user's directory) and `context` (the
//! step's context directory). The call's metadata also carries
//! `include-patterns`, `exclude-patterns` (the `.dockerignore` lines the
//! frontend read from an earlier call) and `followpaths`.
//!
//! The stream is fsutil's diff-copy protocol, one `fsutil.types.Packet` per
//! gRPC message: habitus sends a STAT packet for every entry, in fsutil's
//! walk order (component-wise sorted, parents before children), then an
//! empty STAT; the daemon sends REQ for the ids of the regular files it
//! wants (an entry's id is its position among the STATs), habitus answers
//! with DATA chunks and an empty DATA per file; the daemon's FIN is
//! answered with FIN.
//!
//! The sender never leaves the context: the walk does not follow symlinks
//! (they are sent as symlinks), `followpaths` are resolved only while they
//! stay inside the directory, a file is sent only if it is still the file
//! that was walked, and a REQ for an id that is not a regular file of this
//! walk is refused. Files stream in [`CHUNK`]-sized packets: memory use
//! does not depend on their size.

use std::convert::Infallible;
use std::fs::{self, File, Metadata};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use bollard_buildkit_proto::fsutil::types::{packet::PacketType, Packet, Stat};
use bytes::Bytes;
use http_body_util::{BodyExt, StreamBody};
use hyper::body::Frame;
use hyper::header::{HeaderMap, HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response};
use prost::Message;
use tokio::sync::mpsc;

use crate::context::{self, ContextError, DockerIgnore};

/// The gRPC method the daemon calls.
pub const DIFF_COPY: &str = "/moby.filesync.v1.FileSync/DiffCopy";

/// Size of the DATA packets a file is cut into (fsutil's own buffer size).
pub const CHUNK: usize = 32 * 1024;

/// Largest packet accepted from the daemon (it sends REQ, FIN and ERR).
const MAX_PACKET: usize = 64 * 1024;

/// Most patterns (or follow paths) accepted in one request.
const MAX_PATTERNS: usize = 16 * 1024;

/// Longest pattern, follow path or directory name accepted.
const MAX_PATH: usize = 4096;

/// Most symlinks resolved for one follow path (Linux's own limit).
const MAX_LINK_HOPS: usize = 40;

/// Packets in flight between the sender thread and the connection.
const FRAMES_IN_FLIGHT: usize = 8;

/// Go's `os.FileMode` bits, which `Stat.mode` carries.
mod mode {
    pub const DIR: u32 = 1 << 31;
    pub const SYMLINK: u32 = 1 << 27;
    pub const DEVICE: u32 = 1 << 26;
    pub const NAMED_PIPE: u32 = 1 << 25;
    pub const SETUID: u32 = 1 << 23;
    pub const SETGID: u32 = 1 << 22;
    pub const CHAR_DEVICE: u32 = 1 << 21;
    pub const STICKY: u32 = 1 << 20;
    /// The bits of a type other than a regular file (Go's `ModeType`).
    pub const TYPE: u32 = DIR | SYMLINK | NAMED_PIPE | (1 << 24) | DEVICE | CHAR_DEVICE | (1 << 19);
}

/// The directory names the dockerfile frontend asks for.
pub const CONTEXT: &str = "context";
pub const DOCKERFILE: &str = "dockerfile";

/// The first transfer that failed in a build: the vertex BuildKit shows
/// for it, the error and its hint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SyncFailure {
    pub vertex: String,
    pub message: String,
    pub hint: Option<&'static str>,
}

/// Why a file sync failed.
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    /// The daemon asked for a directory the session does not offer.
    #[error("the daemon asked for the directory `{name}`, which this build does not offer")]
    UnknownDir {
        /// The name it asked for.
        name: String,
    },
    /// A metadata header is malformed or too large.
    #[error("the daemon sent a malformed `{key}` header: {reason}")]
    Header {
        /// The header.
        key: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A pattern the daemon sent is not valid.
    #[error(transparent)]
    Pattern(#[from] ContextError),
    /// A file or directory of the context cannot be read.
    #[error("cannot read `{}`: {source}", path.display())]
    Io {
        /// The path on disk.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A file changed while it was being sent.
    #[error("`{}` changed while the build context was being sent", path.display())]
    Changed {
        /// The path on disk.
        path: PathBuf,
    },
    /// A name in the context is not UTF-8, which fsutil's paths must be.
    #[error("`{}` cannot be sent to BuildKit: its name is not UTF-8", path.display())]
    NotUtf8 {
        /// The path on disk.
        path: PathBuf,
    },
    /// A packet from the daemon is malformed or not expected.
    #[error("the daemon sent a malformed file sync packet: {reason}")]
    Packet {
        /// What is wrong with it.
        reason: String,
    },
    /// The daemon asked for an id that is not a regular file of the walk.
    #[error("the daemon asked for file `{id}`, which this transfer did not offer")]
    UnknownId {
        /// The id.
        id: u32,
    },
    /// The daemon reported an error.
    #[error("the daemon failed to receive the build context: {message}")]
    Receiver {
        /// Its message.
        message: String,
    },
}

impl SyncError {
    /// What the user can do about it, when habitus knows.
    pub fn hint(&self) -> Option<&'static str> {
        match self {
            SyncError::UnknownDir { .. } => Some("habitus offers `context` and `dockerfile`; a Dockerfile frontend that needs more is not supported"),
            SyncError::Header { .. } => Some("this is a bug in the daemon or a proxy in between; report it with the Docker version"),
            SyncError::Io { .. } => Some("check its permissions, or list it in `.dockerignore`"),
            SyncError::Changed { .. } => Some("run the build again once nothing writes into the context"),
            SyncError::NotUtf8 { .. } => Some("rename it, or list it in `.dockerignore`"),
            SyncError::Packet { .. } => Some("this is a bug in the daemon or a proxy in between; report it with the Docker version"),
            SyncError::UnknownId { .. } => Some("this is a bug in the daemon; report it with the Docker version"),
            _ => None,
        }
    }
}

/// What the session's FileSync serves for one build.
pub struct Sources {
    /// The step's context directory.
    pub context: PathBuf,
    /// The files of the `dockerfile` directory (name, content), from
    /// memory: the rewritten Dockerfile.
    pub dockerfile: Vec<(String, Vec<u8>)>,
    /// The first error a transfer hit (the directory, the message), for
    /// the build's error message.
    pub failure: Mutex<Option<SyncFailure>>,
}

impl Sources {
    /// Sources for `context` and the in-memory `dockerfile` files.
    pub fn new(context: PathBuf, dockerfile: Vec<(String, Vec<u8>)>) -> Sources {
        Sources {
            context,
            dockerfile,
            failure: Mutex::new(None),
        }
    }

    /// The first error a transfer hit: the vertex BuildKit shows for that
    /// transfer, and the message.
    pub fn failure(&self) -> Option<SyncFailure> {
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    fn record(&self, dir: &str, error: &SyncError) {
        let vertex = match dir {
            DOCKERFILE => "[internal] load build definition",
            _ => "[internal] load build context",
        };
        self.failure
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get_or_insert_with(|| SyncFailure {
                vertex: vertex.to_string(),
                message: error.to_string(),
                hint: error.hint(),
            });
    }
}

impl std::fmt::Debug for Sources {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sources")
            .field("context", &self.context)
            .finish_non_exhaustive()
    }
}

/// What one DiffCopy call asks for.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Wanted {
    /// `dir-name`.
    pub dir: String,
    /// `include-patterns`: when any, only what they match (and the
    /// directories leading to it) is sent.
    pub includes: Vec<String>,
    /// `exclude-patterns`: `.dockerignore` lines.
    pub excludes: Vec<String>,
    /// `followpaths`: paths sent even if they are symlinks, with the
    /// (in-context) targets of those symlinks.
    pub follow_paths: Vec<String>,
}

impl Wanted {
    /// Reads the request's gRPC metadata. Values are URL-encoded when
    /// `<key>-encoded` is `1` (BuildKit 0.12+ encodes non-ASCII ones).
    pub fn from_headers(headers: &HeaderMap) -> Result<Wanted, SyncError> {
        let values = |key: &'static str| -> Result<Vec<String>, SyncError> {
            let encoded = headers
                .get(format!("{key}-encoded"))
                .and_then(|v| v.to_str().ok())
                .is_some_and(|v| matches!(v, "1" | "t" | "true" | "TRUE" | "True"));
            let mut out = Vec::new();
            for value in headers.get_all(key) {
                if out.len() >= MAX_PATTERNS {
                    return Err(SyncError::Header {
                        key,
                        reason: format!("more than {MAX_PATTERNS} values"),
                    });
                }
                let bad = |reason: &str| SyncError::Header {
                    key,
                    reason: reason.to_string(),
                };
                let text = value
                    .to_str()
                    .map_err(|_| bad("a value is not ASCII text"))?;
                let text = if encoded {
                    query_unescape(text).ok_or_else(|| bad("a value is not URL-encoded UTF-8"))?
                } else {
                    text.to_string()
                };
                if text.len() > MAX_PATH {
                    return Err(bad(&format!("a value is longer than {MAX_PATH} bytes")));
                }
                if text.contains('\0') {
                    return Err(bad("a value holds a NUL byte"));
                }
                out.push(text);
            }
            Ok(out)
        };
        let dir = values("dir-name")?.into_iter().next().unwrap_or_default();
        Ok(Wanted {
            dir,
            includes: values("include-patterns")?,
            excludes: values("exclude-patterns")?,
            follow_paths: values("followpaths")?,
        })
    }
}

/// Go's `url.QueryUnescape`: `%XX` and `+` for a space.
fn query_unescape(text: &str) -> Option<String> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let hex = std::str::from_utf8(bytes.get(i + 1..i + 3)?).ok()?;
                out.push(u8::from_str_radix(hex, 16).ok()?);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            b => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8(out).ok()
}

/// Where an entry's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Source {
    /// Not a regular file: nothing to request.
    None,
    /// A file on disk, identified by device and inode as walked.
    Disk { path: PathBuf, dev: u64, ino: u64 },
    /// One of [`Sources::dockerfile`].
    Memory(usize),
}

/// One entry of a transfer, in the order it is announced.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    pub stat: Stat,
    source: Source,
}

/// What to send of a directory.
struct Filter {
    excludes: Option<DockerIgnore>,
    includes: Option<DockerIgnore>,
    /// The include patterns' literal beginnings, to skip directories that
    /// cannot hold anything they match.
    include_prefixes: Vec<String>,
}

impl Filter {
    fn new(excludes: &[&str], includes: &[String]) -> Result<Filter, SyncError> {
        let excludes = (!excludes.is_empty())
            .then(|| DockerIgnore::from_patterns("exclude-patterns", excludes.iter().copied()))
            .transpose()?;
        let includes = (!includes.is_empty())
            .then(|| {
                DockerIgnore::from_patterns("include-patterns", includes.iter().map(String::as_str))
            })
            .transpose()?;
        let include_prefixes = includes
            .as_ref()
            .map(|i| {
                i.literal_prefixes()
                    .into_iter()
                    .map(str::to_string)
                    .collect()
            })
            .unwrap_or_default();
        Ok(Filter {
            excludes,
            includes,
            include_prefixes,
        })
    }

    /// Whether directory `dir` may hold something the include patterns
    /// match (it does not match one itself).
    fn may_include_under(&self, dir: &str) -> bool {
        let dir = format!("{dir}/");
        self.include_prefixes
            .iter()
            .any(|prefix| prefix.starts_with(&dir) || dir.starts_with(prefix.as_str()))
    }
}

/// The entries of `wanted` in `sources`, in walk order.
pub fn entries(sources: &Sources, wanted: &Wanted) -> Result<Vec<Entry>, SyncError> {
    match wanted.dir.as_str() {
        CONTEXT => {
            // As the docker CLI does, the context's own `.dockerignore`
            // applies unless the daemon asks for named paths (which is how
            // it reads `.dockerignore` itself).
            let on_disk = if wanted.follow_paths.is_empty() {
                lines_of_dockerignore(&sources.context)?
            } else {
                Vec::new()
            };
            let mut excludes: Vec<&str> = on_disk.iter().map(String::as_str).collect();
            excludes.extend(wanted.excludes.iter().map(String::as_str));
            let mut includes = wanted.includes.clone();
            includes.extend(follow(&sources.context, &wanted.follow_paths));
            if includes.is_empty() && !wanted.follow_paths.is_empty() {
                return Ok(Vec::new());
            }
            walk(&sources.context, &Filter::new(&excludes, &includes)?)
        }
        DOCKERFILE => {
            let excludes: Vec<&str> = wanted.excludes.iter().map(String::as_str).collect();
            let mut includes = wanted.includes.clone();
            includes.extend(wanted.follow_paths.iter().cloned());
            in_memory(&sources.dockerfile, &Filter::new(&excludes, &includes)?)
        }
        other => Err(SyncError::UnknownDir {
            name: other.to_string(),
        }),
    }
}

/// The pattern lines of `dir/.dockerignore`, parsed (and so checked) by
/// the same matcher as the classic builder's context.
fn lines_of_dockerignore(dir: &Path) -> Result<Vec<String>, SyncError> {
    // Parsing reports a bad pattern with its line; the lines themselves are
    // then sent as patterns. The file is read once, confined and limited.
    let Some(text) = context::dockerignore_text(dir)? else {
        return Ok(Vec::new());
    };
    if context::parse_dockerignore(dir, &text)?.is_empty() {
        return Ok(Vec::new());
    }
    Ok(text
        .trim_start_matches('\u{feff}')
        .split('\n')
        .filter(|line| !line.starts_with('#'))
        .map(|line| line.trim().to_string())
        .filter(|line| !line.is_empty())
        .collect())
}

/// The follow paths, and the targets of those that are symlinks, as long
/// as they stay inside `root`; every component but the last must be a
/// real directory, so nothing outside `root` is even looked at.
fn follow(root: &Path, paths: &[String]) -> Vec<String> {
    let mut out = Vec::new();
    for path in paths {
        let mut current = inside(path);
        for _ in 0..MAX_LINK_HOPS {
            let Some(rel) = current.take() else { break };
            out.push(rel.clone());
            let Some(meta) = lstat_inside(root, &rel) else {
                break;
            };
            if !meta.file_type().is_symlink() {
                break;
            }
            let Ok(target) = fs::read_link(root.join(&rel)) else {
                break;
            };
            let Some(target) = target.to_str() else { break };
            current = if target.starts_with('/') {
                inside(target)
            } else {
                let parent = rel.rsplit_once('/').map_or("", |(parent, _)| parent);
                inside(&format!("{parent}/{target}"))
            };
        }
    }
    out
}

/// `path` cleaned and relative to the root, unless it leaves it.
fn inside(path: &str) -> Option<String> {
    let clean = context::clean(&format!("/{path}"));
    let rel = clean.trim_start_matches('/');
    (!rel.is_empty()).then(|| rel.to_string())
}

/// `lstat` of `root/rel` whose parent components are all real directories.
fn lstat_inside(root: &Path, rel: &str) -> Option<Metadata> {
    let mut path = root.to_path_buf();
    let mut parts = rel.split('/').peekable();
    while let Some(part) = parts.next() {
        path.push(part);
        let meta = fs::symlink_metadata(&path).ok()?;
        if parts.peek().is_none() {
            return Some(meta);
        }
        if !meta.file_type().is_dir() {
            return None;
        }
    }
    None
}

/// One directory being walked.
struct Dir {
    path: PathBuf,
    /// Relative to the root; empty for the root.
    rel: String,
    excluded_by: Option<Vec<bool>>,
    included_by: Option<Vec<bool>>,
    /// Its entry, while it has not been sent (it is sent before the first
    /// entry inside it that is).
    unsent: Option<Entry>,
    /// Its entries, sorted, last first.
    pending: Vec<std::ffi::OsString>,
}

/// Walks `root` as fsutil does: depth first, each directory's entries in
/// byte order, never following a symlink; a directory that is not sent
/// itself is sent once something inside it is.
fn walk(root: &Path, filter: &Filter) -> Result<Vec<Entry>, SyncError> {
    let mut out = Vec::new();
    let mut stack = vec![Dir {
        path: root.to_path_buf(),
        rel: String::new(),
        excluded_by: None,
        included_by: None,
        unsent: None,
        pending: read_dir_sorted(root)?,
    }];
    while let Some(dir) = stack.last_mut() {
        let Some(name) = dir.pending.pop() else {
            stack.pop();
            continue;
        };
        let path = dir.path.join(&name);
        let rel = if dir.rel.is_empty() {
            String::from_utf8_lossy(name.as_bytes()).into_owned()
        } else {
            format!("{}/{}", dir.rel, String::from_utf8_lossy(name.as_bytes()))
        };
        let meta = fs::symlink_metadata(&path).map_err(|source| SyncError::Io {
            path: path.clone(),
            source,
        })?;
        let file_type = meta.file_type();
        if file_type.is_socket() {
            continue;
        }
        let (excluded, excluded_by) = match &filter.excludes {
            Some(ex) => ex.eval(&rel, dir.excluded_by.as_deref()),
            None => (false, Vec::new()),
        };
        let (included, included_by) = match &filter.includes {
            Some(inc) => inc.eval(&rel, dir.included_by.as_deref()),
            None => (true, Vec::new()),
        };
        let is_dir = file_type.is_dir();
        let send = !excluded && included;
        let descend = is_dir
            && (!excluded
                || filter
                    .excludes
                    .as_ref()
                    .is_some_and(|ex| ex.has_exception_under(&rel)))
            && (included || filter.may_include_under(&rel));
        if !send && !descend {
            continue;
        }
        if name.to_str().is_none() {
            return Err(SyncError::NotUtf8 { path });
        }
        let entry = disk_entry(&path, &rel, &meta)?;
        if send {
            for parent in stack.iter_mut() {
                if let Some(unsent) = parent.unsent.take() {
                    out.push(unsent);
                }
            }
            out.push(entry.clone());
        }
        if descend {
            let pending = read_dir_sorted(&path)?;
            stack.push(Dir {
                path,
                rel,
                excluded_by: Some(excluded_by),
                included_by: Some(included_by),
                unsent: (!send).then_some(entry),
                pending,
            });
        }
    }
    Ok(out)
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<std::ffi::OsString>, SyncError> {
    crate::context::sorted_names(dir).map_err(|source| SyncError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

/// The entry of a file on disk, owned by root as the docker CLI sends it.
fn disk_entry(path: &Path, rel: &str, meta: &Metadata) -> Result<Entry, SyncError> {
    let file_type = meta.file_type();
    let raw = meta.mode();
    let mut bits = raw & 0o777;
    for (unix, go) in [
        (0o4000, mode::SETUID),
        (0o2000, mode::SETGID),
        (0o1000, mode::STICKY),
    ] {
        if raw & unix != 0 {
            bits |= go;
        }
    }
    let mut stat = Stat {
        path: rel.to_string(),
        mod_time: meta.mtime() * 1_000_000_000 + meta.mtime_nsec(),
        ..Stat::default()
    };
    let mut source = Source::None;
    if file_type.is_dir() {
        bits |= mode::DIR;
    } else if file_type.is_symlink() {
        bits |= mode::SYMLINK;
        let target = fs::read_link(path).map_err(|source| SyncError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        stat.linkname = target
            .to_str()
            .ok_or_else(|| SyncError::NotUtf8 {
                path: path.to_path_buf(),
            })?
            .to_string();
    } else if file_type.is_block_device() || file_type.is_char_device() {
        bits |= mode::DEVICE;
        if file_type.is_char_device() {
            bits |= mode::CHAR_DEVICE;
        }
        let (major, minor) = context::device_numbers(meta.rdev());
        stat.devmajor = i64::from(major);
        stat.devminor = i64::from(minor);
    } else if file_type.is_fifo() {
        bits |= mode::NAMED_PIPE;
    } else {
        stat.size = i64::try_from(meta.len()).unwrap_or(i64::MAX);
        source = Source::Disk {
            path: path.to_path_buf(),
            dev: meta.dev(),
            ino: meta.ino(),
        };
    }
    stat.mode = bits;
    Ok(Entry { stat, source })
}

/// The in-memory files that the filter lets through, sorted.
fn in_memory(files: &[(String, Vec<u8>)], filter: &Filter) -> Result<Vec<Entry>, SyncError> {
    let mut out = Vec::new();
    for (index, (name, data)) in files.iter().enumerate() {
        if name.is_empty() || name.contains('/') || name == "." || name == ".." {
            return Err(SyncError::Pattern(ContextError::ExtraName {
                name: name.clone(),
            }));
        }
        let excluded = filter
            .excludes
            .as_ref()
            .is_some_and(|ex| ex.eval(name, None).0);
        let included = filter
            .includes
            .as_ref()
            .is_none_or(|inc| inc.eval(name, None).0);
        if excluded || !included {
            continue;
        }
        out.push(Entry {
            stat: Stat {
                path: name.clone(),
                mode: 0o644,
                size: i64::try_from(data.len()).unwrap_or(i64::MAX),
                ..Stat::default()
            },
            source: Source::Memory(index),
        });
    }
    out.sort_by(|a, b| a.stat.path.as_bytes().cmp(b.stat.path.as_bytes()));
    Ok(out)
}

/// What the daemon sent, once checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Received {
    /// REQ: send file `id`.
    Req(u32),
    /// FIN: the receiver has everything.
    Fin,
    /// ERR: the receiver failed.
    Err(String),
}

/// Decodes one packet from the daemon.
pub fn incoming(message: &[u8]) -> Result<Received, SyncError> {
    let bad = |reason: String| SyncError::Packet { reason };
    if message.len() > MAX_PACKET {
        return Err(bad(format!("longer than {MAX_PACKET} bytes")));
    }
    let packet = Packet::decode(message).map_err(|e| bad(e.to_string()))?;
    match PacketType::try_from(packet.r#type) {
        Ok(PacketType::PacketReq) => Ok(Received::Req(packet.id)),
        Ok(PacketType::PacketFin) => Ok(Received::Fin),
        Ok(PacketType::PacketErr) => Ok(Received::Err(
            String::from_utf8_lossy(&packet.data).into_owned(),
        )),
        Ok(other) => Err(bad(format!(
            "a receiver does not send `{}`",
            other.as_str_name()
        ))),
        Err(_) => Err(bad(format!("unknown packet type `{}`", packet.r#type))),
    }
}

/// Splits the next whole gRPC message off `pending`; an error if it is
/// compressed or longer than 64 KiB.
pub fn next_message(pending: &mut Vec<u8>) -> Result<Option<Vec<u8>>, SyncError> {
    if pending.len() < 5 {
        return Ok(None);
    }
    let bad = |reason: &str| SyncError::Packet {
        reason: reason.to_string(),
    };
    if pending[0] != 0 {
        return Err(bad("compressed messages are not supported"));
    }
    let len = u32::from_be_bytes([pending[1], pending[2], pending[3], pending[4]]) as usize;
    if len > MAX_PACKET {
        return Err(bad(&format!("longer than {MAX_PACKET} bytes")));
    }
    if pending.len() < 5 + len {
        return Ok(None);
    }
    let message = pending[5..5 + len].to_vec();
    pending.drain(..5 + len);
    Ok(Some(message))
}

/// A packet as one gRPC message.
fn framed(packet: &Packet) -> Bytes {
    let len = packet.encoded_len();
    let mut out = Vec::with_capacity(5 + len);
    out.push(0);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    packet.encode(&mut out).expect("a Vec grows as needed");
    Bytes::from(out)
}

fn packet(kind: PacketType) -> Packet {
    Packet {
        r#type: kind as i32,
        ..Packet::default()
    }
}

/// Writes packets to the response; `false` once the connection is gone.
trait Out {
    fn send(&mut self, packet: &Packet) -> bool;
}

impl Out for mpsc::Sender<Result<Frame<Bytes>, Infallible>> {
    fn send(&mut self, packet: &Packet) -> bool {
        self.blocking_send(Ok(Frame::data(framed(packet)))).is_ok()
    }
}

/// The sending side of one transfer: the STATs, then what the daemon
/// requests, until FIN. Runs on a blocking thread. `Ok(false)` when the
/// connection went away.
fn send(
    sources: &Sources,
    entries: &[Entry],
    out: &mut dyn Out,
    requests: &mut mpsc::Receiver<Result<Received, SyncError>>,
) -> Result<bool, SyncError> {
    let mut served = vec![false; entries.len()];
    for (announced, entry) in entries.iter().enumerate() {
        // Requests are served as they come, while STATs are still going
        // out, as fsutil's sender does.
        while let Ok(request) = requests.try_recv() {
            match answer(sources, &entries[..announced], &mut served, request?, out)? {
                Step::Continue => {}
                Step::Done => return Ok(true),
                Step::Gone => return Ok(false),
            }
        }
        let stat = Packet {
            stat: Some(entry.stat.clone()),
            ..packet(PacketType::PacketStat)
        };
        if !out.send(&stat) {
            return Ok(false);
        }
    }
    if !out.send(&packet(PacketType::PacketStat)) {
        return Ok(false);
    }
    while let Some(request) = requests.blocking_recv() {
        match answer(sources, entries, &mut served, request?, out)? {
            Step::Continue => {}
            Step::Done => return Ok(true),
            Step::Gone => return Ok(false),
        }
    }
    Ok(false)
}

enum Step {
    Continue,
    Done,
    Gone,
}

fn answer(
    sources: &Sources,
    entries: &[Entry],
    served: &mut [bool],
    request: Received,
    out: &mut dyn Out,
) -> Result<Step, SyncError> {
    let id = match request {
        Received::Fin => {
            return Ok(if out.send(&packet(PacketType::PacketFin)) {
                Step::Done
            } else {
                Step::Gone
            })
        }
        Received::Err(message) => return Err(SyncError::Receiver { message }),
        Received::Req(id) => id,
    };
    // `entries` are those announced so far.
    let index = id as usize;
    let entry = entries.get(index).ok_or(SyncError::UnknownId { id })?;
    if entry.stat.mode & mode::TYPE != 0 || served[index] {
        return Err(SyncError::UnknownId { id });
    }
    served[index] = true;
    let data = |chunk: &[u8]| Packet {
        id,
        data: chunk.to_vec(),
        ..packet(PacketType::PacketData)
    };
    match &entry.source {
        Source::None => return Err(SyncError::UnknownId { id }),
        Source::Memory(index) => {
            let bytes = &sources.dockerfile[*index].1;
            for chunk in bytes.chunks(CHUNK) {
                if !out.send(&data(chunk)) {
                    return Ok(Step::Gone);
                }
            }
        }
        Source::Disk { path, dev, ino } => {
            let io = |source| SyncError::Io {
                path: path.clone(),
                source,
            };
            let mut file = File::open(path).map_err(io)?;
            let opened = file.metadata().map_err(io)?;
            if !opened.file_type().is_file() || opened.dev() != *dev || opened.ino() != *ino {
                return Err(SyncError::Changed { path: path.clone() });
            }
            let mut remaining = u64::try_from(entry.stat.size).unwrap_or(0);
            let mut buf = vec![0u8; CHUNK];
            loop {
                let n = match file.read(&mut buf) {
                    Ok(n) => n,
                    Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(io(e)),
                };
                if n == 0 {
                    break;
                }
                remaining = remaining
                    .checked_sub(n as u64)
                    .ok_or_else(|| SyncError::Changed { path: path.clone() })?;
                if !out.send(&data(&buf[..n])) {
                    return Ok(Step::Gone);
                }
            }
            if remaining != 0 {
                return Err(SyncError::Changed { path: path.clone() });
            }
        }
    }
    Ok(if out.send(&data(&[])) {
        Step::Continue
    } else {
        Step::Gone
    })
}

type GrpcBody = http_body_util::combinators::BoxBody<Bytes, Infallible>;

/// Serves one DiffCopy call.
pub fn diff_copy(
    sources: Arc<Sources>,
    request: Request<hyper::body::Incoming>,
) -> Response<GrpcBody> {
    let (frames, rx) = mpsc::channel::<Result<Frame<Bytes>, Infallible>>(FRAMES_IN_FLIGHT);
    let (requests_tx, mut requests) = mpsc::channel::<Result<Received, SyncError>>(1024);
    let wanted = Wanted::from_headers(request.headers());
    let mut body = request.into_body();
    tokio::spawn(async move {
        let mut pending = Vec::new();
        while let Some(Ok(frame)) = body.frame().await {
            let Ok(data) = frame.into_data() else {
                continue;
            };
            pending.extend_from_slice(&data);
            loop {
                let next =
                    next_message(&mut pending).and_then(|m| m.map(|m| incoming(&m)).transpose());
                match next {
                    Ok(None) => break,
                    Ok(Some(message)) => {
                        if requests_tx.send(Ok(message)).await.is_err() {
                            return;
                        }
                    }
                    Err(error) => {
                        let _ = requests_tx.send(Err(error)).await;
                        return;
                    }
                }
            }
        }
    });
    tokio::task::spawn_blocking(move || {
        let mut frames = frames;
        let dir = wanted.as_ref().map(|w| w.dir.clone()).unwrap_or_default();
        let result = wanted
            .and_then(|wanted| entries(&sources, &wanted))
            .and_then(|entries| send(&sources, &entries, &mut frames, &mut requests));
        let status = match &result {
            Ok(true) => Some((0u32, String::new())),
            Ok(false) => None,
            Err(error) => {
                sources.record(&dir, error);
                let mut err = packet(PacketType::PacketErr);
                err.data = error.to_string().into_bytes();
                let _ = Out::send(&mut frames, &err);
                Some((2, error.to_string()))
            }
        };
        if let Some((code, message)) = status {
            let mut trailers = HeaderMap::new();
            trailers.insert("grpc-status", HeaderValue::from(code));
            let message = message.replace(['\n', '\r'], " ");
            if let Ok(value) = HeaderValue::from_str(&percent_for_grpc(&message)) {
                if !message.is_empty() {
                    trailers.insert("grpc-message", value);
                }
            }
            let _ = frames.blocking_send(Ok(Frame::trailers(trailers)));
        }
    });
    let mut rx = rx;
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let mut response = Response::new(StreamBody::new(stream).boxed());
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    response
}

/// gRPC's percent-encoding of `grpc-message`.
fn percent_for_grpc(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if (0x20..0x7f).contains(&b) && b != b'%' {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::unix::fs::symlink;

    /// Collects what the sender writes; DATA payloads are counted, and kept
    /// only while small.
    #[derive(Default)]
    struct Collect {
        packets: Vec<Packet>,
        largest_data: usize,
        data_bytes: usize,
        /// What the receiver sends once it has the last STAT.
        replies: Option<(Vec<Received>, Requests)>,
    }

    type Requests = mpsc::Sender<Result<Received, SyncError>>;

    /// Runs a transfer of `entries` whose receiver answers the STATs with
    /// `replies`.
    fn run(
        src: &Sources,
        entries: &[Entry],
        replies: &[Received],
    ) -> (Result<bool, SyncError>, Collect) {
        let (tx, mut rx) = mpsc::channel(replies.len().max(1));
        let mut out = Collect {
            replies: Some((replies.to_vec(), tx)),
            ..Collect::default()
        };
        let result = send(src, entries, &mut out, &mut rx);
        (result, out)
    }

    impl Out for Collect {
        fn send(&mut self, packet: &Packet) -> bool {
            if packet.r#type == PacketType::PacketStat as i32 && packet.stat.is_none() {
                if let Some((replies, tx)) = self.replies.take() {
                    for reply in replies {
                        tx.try_send(Ok(reply)).unwrap();
                    }
                }
            }
            self.largest_data = self.largest_data.max(packet.data.len());
            self.data_bytes += packet.data.len();
            let mut kept = packet.clone();
            if kept.data.len() > 64 {
                kept.data.clear();
            }
            self.packets.push(kept);
            true
        }
    }

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir_all(root.join("a/y")).unwrap();
        fs::write(root.join("a/x"), "x").unwrap();
        fs::write(root.join("a/y/z"), "z").unwrap();
        fs::write(root.join("a.txt"), "a").unwrap();
        fs::write(root.join("b"), "bee").unwrap();
        symlink("../outside", root.join("link")).unwrap();
        symlink("b", root.join("to-b")).unwrap();
        dir
    }

    fn wanted(dir: &str) -> Wanted {
        Wanted {
            dir: dir.into(),
            ..Wanted::default()
        }
    }

    fn paths(entries: &[Entry]) -> Vec<&str> {
        entries.iter().map(|e| e.stat.path.as_str()).collect()
    }

    fn sources(dir: &Path) -> Sources {
        Sources::new(
            dir.to_path_buf(),
            vec![(
                ".habitus-b1-app.Dockerfile".into(),
                b"FROM scratch\n".to_vec(),
            )],
        )
    }

    /// The error as the user sees it: its text, then its hint.
    fn shown(error: &SyncError) -> String {
        match error.hint() {
            Some(hint) => format!("{error}\nhint: {hint}"),
            None => error.to_string(),
        }
    }

    #[test]
    fn entries_come_in_fsutil_walk_order_with_go_modes() {
        let dir = tree();
        let all = entries(&sources(dir.path()), &wanted(CONTEXT)).unwrap();
        assert_eq!(
            paths(&all),
            ["a", "a/x", "a/y", "a/y/z", "a.txt", "b", "link", "to-b"]
        );
        assert_eq!(all[0].stat.mode & mode::DIR, mode::DIR);
        assert_eq!(all[1].stat.mode & mode::TYPE, 0);
        assert_eq!(all[1].stat.size, 1);
        // A symlink is a symlink, pointing where it points; never followed.
        assert_eq!(all[6].stat.mode & mode::TYPE, mode::SYMLINK);
        assert_eq!(all[6].stat.linkname, "../outside");
        assert_eq!(all[6].source, Source::None);
        assert!(all.iter().all(|e| e.stat.uid == 0 && e.stat.gid == 0));
    }

    /// Security round 2: a symlinked directory that leads out of the
    /// context (to another directory, or `..`) is sent as a symlink and
    /// nothing beyond it is read, even when the daemon follows paths.
    #[test]
    fn a_symlinked_directory_out_of_the_context_is_sent_as_a_symlink() {
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        fs::write(outside.path().join("secret"), "not for the image").unwrap();
        fs::write(dir.path().join("f"), "x").unwrap();
        symlink(outside.path(), dir.path().join("escape")).unwrap();
        symlink("..", dir.path().join("up")).unwrap();
        let all = entries(&sources(dir.path()), &wanted(CONTEXT)).unwrap();
        assert_eq!(paths(&all), ["escape", "f", "up"]);
        for i in [0, 2] {
            assert_eq!(all[i].stat.mode & mode::TYPE, mode::SYMLINK);
            assert_eq!(all[i].source, Source::None);
        }
        assert_eq!(all[0].stat.linkname, outside.path().to_str().unwrap());
        let mut w = wanted(CONTEXT);
        w.follow_paths = vec!["escape/secret".into(), "up".into()];
        let followed = entries(&sources(dir.path()), &w).unwrap();
        assert!(
            followed.iter().all(|e| !e.stat.path.contains("secret")),
            "{:?}",
            paths(&followed)
        );
    }

    #[test]
    fn exclude_patterns_and_their_exceptions_are_honoured() {
        let dir = tree();
        let mut w = wanted(CONTEXT);
        w.excludes = vec!["a".into(), "!a/y/z".into(), "*.txt".into()];
        let sent = entries(&sources(dir.path()), &w).unwrap();
        // `a` and `a/y` are excluded, but sent before the file an exception
        // brings back, so the receiver sees its parents first.
        assert_eq!(paths(&sent), ["a", "a/y", "a/y/z", "b", "link", "to-b"]);
    }

    #[test]
    fn the_contexts_dockerignore_applies_unless_paths_are_followed() {
        let dir = tree();
        fs::write(dir.path().join(".dockerignore"), "# comment\nb\na/\n").unwrap();
        let sent = entries(&sources(dir.path()), &wanted(CONTEXT)).unwrap();
        assert_eq!(paths(&sent), [".dockerignore", "a.txt", "link", "to-b"]);
        // The frontend reads `.dockerignore` itself with `followpaths`.
        let mut w = wanted(CONTEXT);
        w.follow_paths = vec![".dockerignore".into()];
        let sent = entries(&sources(dir.path()), &w).unwrap();
        assert_eq!(paths(&sent), [".dockerignore"]);
    }

    #[test]
    fn include_patterns_send_only_what_they_match_and_its_parents() {
        let dir = tree();
        let mut w = wanted(CONTEXT);
        w.includes = vec!["a/y".into()];
        let sent = entries(&sources(dir.path()), &w).unwrap();
        assert_eq!(paths(&sent), ["a", "a/y", "a/y/z"]);
        w.includes = vec!["*.txt".into()];
        let sent = entries(&sources(dir.path()), &w).unwrap();
        assert_eq!(paths(&sent), ["a.txt"]);
    }

    #[test]
    fn follow_paths_add_symlink_targets_only_inside_the_context() {
        let dir = tree();
        let mut w = wanted(CONTEXT);
        w.follow_paths = vec!["to-b".into(), "link".into(), "../b".into()];
        let sent = entries(&sources(dir.path()), &w).unwrap();
        // `to-b` brings `b`; `../b` is cleaned to `b`, inside; `link`'s
        // target is resolved as in a chroot (as fsutil does), to the
        // context's `outside`, which does not exist.
        assert_eq!(paths(&sent), ["b", "link", "to-b"]);
        assert_eq!(
            follow(dir.path(), &["link".into(), "/a/../to-b".into()]),
            ["link", "outside", "to-b", "b"]
        );
        // A follow path through a symlinked directory is not looked at.
        symlink("/etc", dir.path().join("etc")).unwrap();
        assert_eq!(follow(dir.path(), &["etc/passwd".into()]), ["etc/passwd"]);
    }

    #[test]
    fn the_dockerfile_is_served_from_memory_and_nothing_is_written() {
        let dir = tree();
        let before = read_dir_sorted(dir.path()).unwrap();
        let src = sources(dir.path());
        let mut w = wanted(DOCKERFILE);
        w.includes = vec![
            ".habitus-b1-app.Dockerfile".into(),
            ".habitus-b1-app.Dockerfile.dockerignore".into(),
        ];
        let sent = entries(&src, &w).unwrap();
        assert_eq!(paths(&sent), [".habitus-b1-app.Dockerfile"]);
        assert_eq!(sent[0].stat.mode, 0o644);
        let (result, out) = run(&src, &sent, &[Received::Req(0), Received::Fin]);
        assert!(result.unwrap());
        let kinds: Vec<(i32, u32, &[u8], bool)> = out
            .packets
            .iter()
            .map(|p| (p.r#type, p.id, p.data.as_slice(), p.stat.is_some()))
            .collect();
        let (stat, data, fin) = (
            PacketType::PacketStat as i32,
            PacketType::PacketData as i32,
            PacketType::PacketFin as i32,
        );
        assert_eq!(
            kinds,
            [
                (stat, 0, &b""[..], true),
                (stat, 0, &b""[..], false),
                (data, 0, &b"FROM scratch\n"[..], false),
                (data, 0, &b""[..], false),
                (fin, 0, &b""[..], false),
            ]
        );
        assert_eq!(read_dir_sorted(dir.path()).unwrap(), before);
        // Another directory is not offered.
        let err = entries(&src, &wanted("secrets")).unwrap_err();
        assert_eq!(
            shown(&err),
            "the daemon asked for the directory `secrets`, which this build does not offer\nhint: habitus offers `context` and `dockerfile`; a Dockerfile frontend that needs more is not supported"
        );
    }

    #[test]
    fn requests_for_unknown_ids_directories_or_twice_are_refused() {
        let dir = tree();
        let src = sources(dir.path());
        let all = entries(&src, &wanted(CONTEXT)).unwrap();
        for ids in [&[99][..], &[0], &[6], &[1, 1]] {
            let replies: Vec<Received> = ids.iter().map(|&id| Received::Req(id)).collect();
            let err = run(&src, &all, &replies).0.unwrap_err();
            let id = ids[ids.len() - 1];
            assert_eq!(
                shown(&err),
                format!("the daemon asked for file `{id}`, which this transfer did not offer\nhint: this is a bug in the daemon; report it with the Docker version")
            );
        }
    }

    #[test]
    fn malformed_or_unexpected_packets_are_refused() {
        assert!(incoming(&[0xff, 0xff, 0xff]).is_err());
        let stat = packet(PacketType::PacketStat).encode_to_vec();
        assert_eq!(
            shown(&incoming(&stat).unwrap_err()),
            "the daemon sent a malformed file sync packet: a receiver does not send `PACKET_STAT`\nhint: this is a bug in the daemon or a proxy in between; report it with the Docker version"
        );
        let unknown = Packet {
            r#type: 9,
            ..Packet::default()
        }
        .encode_to_vec();
        assert!(incoming(&unknown).is_err());
        let req = Packet {
            id: 7,
            ..packet(PacketType::PacketReq)
        };
        let mut pending = framed(&req).to_vec();
        pending.extend_from_slice(&[0, 0, 0]);
        let message = next_message(&mut pending).unwrap().unwrap();
        assert_eq!(incoming(&message).unwrap(), Received::Req(7));
        assert_eq!(next_message(&mut pending).unwrap(), None);
        assert!(next_message(&mut vec![1, 0, 0, 0, 0]).is_err());
        assert!(next_message(&mut vec![0, 0, 0x10, 0, 1]).is_err());
        // An error from the receiver ends the transfer with its message.
        let src = sources(Path::new("/nonexistent"));
        let err = run(&src, &[], &[Received::Err("disk full".into())])
            .0
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "the daemon failed to receive the build context: disk full"
        );
    }

    #[test]
    fn headers_are_read_with_their_encoding_and_limits() {
        let mut headers = HeaderMap::new();
        headers.insert("dir-name", HeaderValue::from_static("context"));
        headers.append(
            "exclude-patterns",
            HeaderValue::from_static("%C3%A9t%C3%A9+x"),
        );
        headers.append("exclude-patterns", HeaderValue::from_static("b"));
        headers.insert("exclude-patterns-encoded", HeaderValue::from_static("1"));
        headers.insert("followpaths", HeaderValue::from_static("a+b"));
        let w = Wanted::from_headers(&headers).unwrap();
        assert_eq!(w.dir, "context");
        assert_eq!(w.excludes, ["été x", "b"]);
        assert_eq!(w.follow_paths, ["a+b"]);
        let long = "a".repeat(MAX_PATH + 1);
        headers.insert("include-patterns", HeaderValue::from_str(&long).unwrap());
        assert_eq!(
            shown(&Wanted::from_headers(&headers).unwrap_err()),
            "the daemon sent a malformed `include-patterns` header: a value is longer than 4096 bytes\nhint: this is a bug in the daemon or a proxy in between; report it with the Docker version"
        );
    }

    #[test]
    fn a_large_file_streams_in_bounded_chunks() {
        let dir = tempfile::tempdir().unwrap();
        let big = File::create(dir.path().join("big.bin")).unwrap();
        let size: u64 = 200 * 1024 * 1024;
        big.set_len(size).unwrap();
        let src = Sources::new(dir.path().to_path_buf(), Vec::new());
        let all = entries(&src, &wanted(CONTEXT)).unwrap();
        let (result, out) = run(&src, &all, &[Received::Req(0), Received::Fin]);
        assert!(result.unwrap());
        assert_eq!(out.data_bytes as u64, size);
        assert_eq!(out.largest_data, CHUNK);
        // A file that changes size while it is sent is an error.
        fs::OpenOptions::new()
            .append(true)
            .open(dir.path().join("big.bin"))
            .unwrap()
            .write_all(b"more")
            .unwrap();
        let err = run(&src, &all, &[Received::Req(0)]).0.unwrap_err();
        assert!(matches!(err, SyncError::Changed { .. }), "{err}");
    }
}
