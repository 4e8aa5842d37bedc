//! Artifacts: the files a step's image hands over to the host, so that the
//! next steps' build contexts can `ADD` them.
//!
//! Each `artifacts:` entry is read with the archive API from a container of
//! the step's image that is created and never started (so images without a
//! shell, `FROM scratch` ones included, work), streamed from the daemon
//! through a bounded channel into a tar reader on a blocking thread (memory
//! use does not depend on the artifact's size) and extracted under
//! `<workdir>/<dest>`, as Go Habitus lays them out: `/usr/bin/app` lands at
//! `<workdir>/app`, `/etc/app/conf:config` at `<workdir>/config/conf`.
//!
//! The extractor ([`extract`]) trusts nothing in the archive: an entry with
//! a `..` or `.git` component or an absolute name, an entry under a symlink (the
//! archive's own or one already on the host), a hard link to anything
//! outside the destination, is refused with an error naming the entry.
//! Files, directories, symlinks and hard links are created; mode bits and
//! mtime come from the tar headers, per file; ownership is not changed.
//!
//! [`HostArtifacts`] remembers, before the build, which artifact paths do
//! not exist yet, so that only what habitus created is removed afterwards.

use std::collections::{BTreeMap, HashSet};
use std::fs::{File, OpenOptions, Permissions};
use std::io::{ErrorKind, Read, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Component, Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use crate::engine::{ContainerGuard, ContainerRequest, Engine, EngineError, LineSink};
use crate::manifest::{Artifact, Step};
use crate::workpath::{self, DirError};

/// Chunks of archive in flight between the daemon and the extractor. The
/// daemon's chunks are at most a few tens of KiB, so this bounds memory to
/// a few MiB whatever the artifact's size.
const CHUNKS_IN_FLIGHT: usize = 32;

/// Size of the buffer file data is copied through.
const COPY_BUFFER: usize = 256 * 1024;

/// Permission bits kept from the tar headers: rwx for all, and the sticky
/// bit. Set-user-id and set-group-id are dropped: the files are not chowned
/// to the image's owner, so those bits would grant the host user's rights.
const MODE_MASK: u32 = 0o1777;

/// Why an archive could not be extracted.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// An entry name has a `..` component.
    #[error("entry `{entry}` has a `..` component: it would land outside the destination")]
    ParentDir {
        /// The entry name as written in the archive.
        entry: String,
    },
    /// An entry name is absolute.
    #[error("entry `{entry}` has an absolute name")]
    Absolute {
        /// The entry name as written in the archive.
        entry: String,
    },
    /// An entry (or a hard link's target) has a `.git` component: git runs
    /// the hooks and reads the configuration found there.
    #[error("entry `{entry}` would land inside a `.git` folder, where git finds the hooks and configuration it runs")]
    GitDir {
        /// The entry name (or link target) as written in the archive.
        entry: String,
    },
    /// An entry lies under a symlink, which could point anywhere.
    #[error("entry `{entry}` goes through the symlink `{link}`")]
    ThroughSymlink {
        /// The entry name as written in the archive.
        entry: String,
        /// The symlink, relative to the destination.
        link: String,
    },
    /// A hard link points outside the destination.
    #[error("hard link `{entry}` points outside the destination: `{target}`")]
    HardLinkOutside {
        /// The entry name as written in the archive.
        entry: String,
        /// The link's target as written in the archive.
        target: String,
    },
    /// An entry would replace something it must not (a directory by a
    /// file, a file or symlink by a directory).
    #[error("entry `{entry}` cannot replace the {what} `{path}`")]
    Conflict {
        /// The entry name as written in the archive.
        entry: String,
        /// What is in the way: `directory`, `file`, `symlink`.
        what: &'static str,
        /// Its path, relative to the destination.
        path: String,
    },
    /// An entry of a type artifacts cannot hold (device, fifo…).
    #[error("entry `{entry}` is a {kind}, which an artifact cannot hold")]
    Unsupported {
        /// The entry name as written in the archive.
        entry: String,
        /// The tar entry type.
        kind: String,
    },
    /// Writing on the host failed.
    #[error("entry `{entry}`: cannot write `{}`: {source}", path.display())]
    Write {
        /// The entry name as written in the archive.
        entry: String,
        /// The host path.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// The archive itself is unreadable or was cut short.
    #[error("reading the archive: {0}")]
    Read(std::io::Error),
}

/// Why a step's artifacts could not be copied.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The daemon failed (creating the container, reading the archive).
    #[error("artifact `{source_path}`: {error}")]
    Engine {
        /// The artifact's path in the image.
        source_path: String,
        /// The engine's error.
        error: EngineError,
    },
    /// The archive could not be extracted safely.
    #[error("artifact `{source_path}`: {error}")]
    Extract {
        /// The artifact's path in the image.
        source_path: String,
        /// What went wrong.
        error: ExtractError,
    },
    /// The destination directory could not be created, or a component of
    /// it is a symlink (never written through) or not a directory.
    #[error("artifact `{source_path}`: cannot create `{}`: {error}\n  help: an artifact destination must be real folders inside the work directory", dest.display())]
    Destination {
        /// The artifact's path in the image.
        source_path: String,
        /// The destination directory.
        dest: PathBuf,
        /// What is wrong with it.
        error: DirError,
    },
}

/// What an extraction created.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Extracted {
    /// Regular files (hard links included).
    pub files: u64,
    pub dirs: u64,
    pub symlinks: u64,
    /// Bytes of file data written.
    pub bytes: u64,
}

/// Extracts the tar archive read from `reader` under `dest`, which must
/// exist; see the module docs for what is refused. A file that was being
/// written when an error struck is removed.
pub fn extract<R: Read>(reader: R, dest: &Path) -> Result<Extracted, ExtractError> {
    let mut archive = tar::Archive::new(reader);
    let mut extractor = Extractor {
        dest,
        known_dirs: HashSet::new(),
        dirs: Vec::new(),
        buf: vec![0; COPY_BUFFER],
        stats: Extracted::default(),
    };
    for entry in archive.entries().map_err(ExtractError::Read)? {
        let mut entry = entry.map_err(ExtractError::Read)?;
        extractor.entry(&mut entry)?;
    }
    extractor.finish()
}

struct Extractor<'a> {
    dest: &'a Path,
    /// Paths (relative to `dest`) known to be real directories, not
    /// symlinks: created by this extraction or checked once.
    known_dirs: HashSet<PathBuf>,
    /// Directories from the archive with their mode and mtime, applied at
    /// the end (children change a directory's mtime; a read-only mode
    /// would stop its children from being written).
    dirs: Vec<(PathBuf, u32, u64)>,
    buf: Vec<u8>,
    stats: Extracted,
}

/// Where an entry lands on the host, with the header fields every kind of
/// entry uses.
struct Placed {
    /// The entry name as written in the archive.
    name: String,
    /// Its path relative to the destination.
    rel: PathBuf,
    /// Its host path.
    target: PathBuf,
    mode: u32,
    mtime: u64,
}

impl Placed {
    /// The error of writing the entry's host path.
    fn write_error(&self) -> impl FnOnce(std::io::Error) -> ExtractError + '_ {
        write_error(&self.name, &self.target)
    }
}

impl Extractor<'_> {
    /// Extracts one entry: checks its name and parents, then creates it
    /// according to its kind.
    fn entry<R: Read>(&mut self, entry: &mut tar::Entry<'_, R>) -> Result<(), ExtractError> {
        let name = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let kind = entry.header().entry_type();
        if matches!(
            kind,
            tar::EntryType::XGlobalHeader
                | tar::EntryType::XHeader
                | tar::EntryType::GNULongName
                | tar::EntryType::GNULongLink
        ) {
            return Ok(());
        }
        let path = entry.path().map_err(ExtractError::Read)?;
        let Some(rel) = clean(&path, &name)? else {
            // `.` or `./`: the destination itself.
            return Ok(());
        };
        let mode = entry.header().mode().map_err(ExtractError::Read)? & MODE_MASK;
        let mtime = entry.header().mtime().map_err(ExtractError::Read)?;
        self.parents(&rel, &name, true)?;
        let target = self.dest.join(&rel);
        let at = Placed {
            name,
            rel,
            target,
            mode,
            mtime,
        };
        match kind {
            tar::EntryType::Directory => self.directory(at),
            tar::EntryType::Regular | tar::EntryType::Continuous | tar::EntryType::GNUSparse => {
                self.file(entry, &at, kind)
            }
            tar::EntryType::Symlink => self.symlink(entry, &at),
            tar::EntryType::Link => self.hard_link(entry, &at),
            other => Err(ExtractError::Unsupported {
                entry: at.name,
                kind: entry_kind(other),
            }),
        }
    }

    /// Creates a directory entry (or finds it there), and remembers its
    /// mode and mtime for the end.
    fn directory(&mut self, at: Placed) -> Result<(), ExtractError> {
        match std::fs::symlink_metadata(&at.target) {
            Ok(meta) if meta.is_dir() => {}
            Ok(meta) => {
                return Err(ExtractError::Conflict {
                    entry: at.name,
                    what: describe(&meta),
                    path: display(&at.rel),
                })
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {
                std::fs::create_dir(&at.target).map_err(at.write_error())?;
                self.stats.dirs += 1;
            }
            Err(e) => return Err(at.write_error()(e)),
        }
        self.known_dirs.insert(at.rel);
        self.dirs.push((at.target, at.mode, at.mtime));
        Ok(())
    }

    /// Writes a file entry; a file cut short is removed.
    fn file<R: Read>(
        &mut self,
        entry: &mut tar::Entry<'_, R>,
        at: &Placed,
        kind: tar::EntryType,
    ) -> Result<(), ExtractError> {
        let file = self.create_file(&at.target, &at.rel, &at.name, at.mode)?;
        // A sparse entry expands to more than it holds in the archive.
        let expected = (kind != tar::EntryType::GNUSparse).then(|| entry.size());
        let written = copy_into(entry, file, &mut self.buf, at.mode, at.mtime, expected);
        match written {
            Ok(bytes) => {
                self.stats.files += 1;
                self.stats.bytes += bytes;
                Ok(())
            }
            Err(e) => {
                let _ = std::fs::remove_file(&at.target);
                Err(match e {
                    CopyError::Read(e) => ExtractError::Read(e),
                    CopyError::Write(e) => at.write_error()(e),
                })
            }
        }
    }

    /// Creates a symlink entry, in place of a file or symlink there.
    fn symlink<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        at: &Placed,
    ) -> Result<(), ExtractError> {
        let link = entry
            .link_name()
            .map_err(ExtractError::Read)?
            .ok_or_else(|| {
                ExtractError::Read(std::io::Error::new(
                    ErrorKind::InvalidData,
                    format!("symlink `{}` has no target", at.name),
                ))
            })?;
        self.make_room(&at.target, &at.rel, &at.name)?;
        std::os::unix::fs::symlink(&link, &at.target).map_err(at.write_error())?;
        self.stats.symlinks += 1;
        Ok(())
    }

    /// Creates a hard link entry to a file inside the destination, reached
    /// through real directories only.
    fn hard_link<R: Read>(
        &mut self,
        entry: &tar::Entry<'_, R>,
        at: &Placed,
    ) -> Result<(), ExtractError> {
        let link_bytes = entry.link_name_bytes().unwrap_or_default();
        let link_name = String::from_utf8_lossy(&link_bytes).into_owned();
        let outside = || ExtractError::HardLinkOutside {
            entry: at.name.clone(),
            target: link_name.clone(),
        };
        let link = entry.link_name().map_err(ExtractError::Read)?;
        let link_rel = match link.as_deref().map(|l| clean(l, &link_name)) {
            Some(Ok(Some(rel))) => rel,
            Some(Err(git @ ExtractError::GitDir { .. })) => return Err(git),
            _ => return Err(outside()),
        };
        // The target's own directories must not be symlinks either.
        self.parents(&link_rel, &at.name, false)?;
        self.make_room(&at.target, &at.rel, &at.name)?;
        std::fs::hard_link(self.dest.join(&link_rel), &at.target).map_err(at.write_error())?;
        self.stats.files += 1;
        Ok(())
    }

    /// Checks that every directory above `rel` is a real directory inside
    /// the destination, creating missing ones when `create`.
    fn parents(&mut self, rel: &Path, entry: &str, create: bool) -> Result<(), ExtractError> {
        let Some(parent) = rel.parent() else {
            return Ok(());
        };
        let mut prefix = PathBuf::new();
        for component in parent.components() {
            prefix.push(component);
            if self.known_dirs.contains(&prefix) {
                continue;
            }
            let path = self.dest.join(&prefix);
            match std::fs::symlink_metadata(&path) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    return Err(ExtractError::ThroughSymlink {
                        entry: entry.to_string(),
                        link: display(&prefix),
                    })
                }
                Ok(meta) if meta.is_dir() => {}
                Ok(meta) => {
                    return Err(ExtractError::Conflict {
                        entry: entry.to_string(),
                        what: describe(&meta),
                        path: display(&prefix),
                    })
                }
                Err(e) if e.kind() == ErrorKind::NotFound && create => {
                    std::fs::create_dir(&path).map_err(write_error(entry, &path))?;
                    self.stats.dirs += 1;
                }
                Err(source) => return Err(write_error(entry, &path)(source)),
            }
            self.known_dirs.insert(prefix.clone());
        }
        Ok(())
    }

    /// Removes a file or symlink at `target` so that an entry can take its
    /// place (never following it); a directory is refused.
    fn make_room(&self, target: &Path, rel: &Path, entry: &str) -> Result<(), ExtractError> {
        match std::fs::symlink_metadata(target) {
            Ok(meta) if meta.is_dir() => Err(ExtractError::Conflict {
                entry: entry.to_string(),
                what: "directory",
                path: display(rel),
            }),
            Ok(_) => std::fs::remove_file(target).map_err(write_error(entry, target)),
            Err(e) if e.kind() == ErrorKind::NotFound => Ok(()),
            Err(source) => Err(write_error(entry, target)(source)),
        }
    }

    /// Creates a new file at `target`, replacing a file or symlink there
    /// (a symlink is replaced, never written through).
    fn create_file(
        &self,
        target: &Path,
        rel: &Path,
        entry: &str,
        mode: u32,
    ) -> Result<File, ExtractError> {
        let open = || {
            OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(mode & 0o777)
                .open(target)
        };
        let file = match open() {
            Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                self.make_room(target, rel, entry)?;
                open()
            }
            other => other,
        };
        file.map_err(write_error(entry, target))
    }

    /// Applies the directories' modes and mtimes, deepest last-seen first.
    fn finish(self) -> Result<Extracted, ExtractError> {
        for (path, mode, mtime) in self.dirs.iter().rev() {
            let apply = || -> std::io::Result<()> {
                std::fs::set_permissions(path, Permissions::from_mode(*mode))?;
                File::open(path)?.set_modified(time(*mtime))
            };
            apply().map_err(|source| ExtractError::Write {
                entry: display(path.strip_prefix(self.dest).unwrap_or(path)),
                path: path.clone(),
                source,
            })?;
        }
        Ok(self.stats)
    }
}

/// The error of writing `path` for the archive entry `entry`.
fn write_error<'a>(
    entry: &'a str,
    path: &'a Path,
) -> impl FnOnce(std::io::Error) -> ExtractError + 'a {
    move |source| ExtractError::Write {
        entry: entry.to_string(),
        path: path.to_path_buf(),
        source,
    }
}

enum CopyError {
    Read(std::io::Error),
    Write(std::io::Error),
}

/// Copies an entry's data into `file`, then sets its mode and mtime.
fn copy_into<R: Read>(
    entry: &mut R,
    mut file: File,
    buf: &mut [u8],
    mode: u32,
    mtime: u64,
    expected: Option<u64>,
) -> Result<u64, CopyError> {
    let mut total = 0u64;
    loop {
        let n = match entry.read(buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(CopyError::Read(e)),
        };
        file.write_all(&buf[..n]).map_err(CopyError::Write)?;
        total += n as u64;
    }
    if expected.is_some_and(|size| size != total) {
        return Err(CopyError::Read(std::io::Error::new(
            ErrorKind::UnexpectedEof,
            "the archive ends inside a file",
        )));
    }
    // The file was created with `mode`; the umask may have taken bits away.
    if mode & !0o777 != 0 || mode & umask() != 0 {
        file.set_permissions(Permissions::from_mode(mode))
            .map_err(CopyError::Write)?;
    }
    file.set_modified(time(mtime)).map_err(CopyError::Write)?;
    Ok(total)
}

/// The process's umask, found once by creating a file with mode 0777 (no
/// safe way to read it otherwise); `0o777` (always chmod) if that fails.
fn umask() -> u32 {
    static UMASK: OnceLock<u32> = OnceLock::new();
    *UMASK.get_or_init(|| {
        tempfile::Builder::new()
            .prefix(".habitus-umask")
            .permissions(Permissions::from_mode(0o777))
            .tempfile()
            .and_then(|f| f.as_file().metadata())
            .map_or(0o777, |meta| 0o777 & !meta.mode())
    })
}

fn time(mtime: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(mtime)
}

/// The entry's path relative to the destination, without `.` components;
/// `None` for the destination itself. A `.git` component is refused: an
/// artifact `/dir/.` spills the folder's content, its `.git` included,
/// into a destination that build.yml's check found free of `.git`.
fn clean(path: &Path, name: &str) -> Result<Option<PathBuf>, ExtractError> {
    if workpath::in_git_dir(path) {
        return Err(ExtractError::GitDir {
            entry: name.to_string(),
        });
    }
    let mut rel = PathBuf::new();
    for component in path.components() {
        match component {
            Component::Normal(part) => rel.push(part),
            Component::CurDir => {}
            Component::ParentDir => {
                return Err(ExtractError::ParentDir {
                    entry: name.to_string(),
                })
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(ExtractError::Absolute {
                    entry: name.to_string(),
                })
            }
        }
    }
    Ok((!rel.as_os_str().is_empty()).then_some(rel))
}

fn display(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

fn describe(meta: &std::fs::Metadata) -> &'static str {
    let kind = meta.file_type();
    if kind.is_symlink() {
        "symlink"
    } else if kind.is_dir() {
        "directory"
    } else {
        "file"
    }
}

fn entry_kind(kind: tar::EntryType) -> String {
    match kind {
        tar::EntryType::Char => "character device".into(),
        tar::EntryType::Block => "block device".into(),
        tar::EntryType::Fifo => "fifo".into(),
        other => format!("tar entry of type `{}`", other.as_byte() as char),
    }
}

/// Reads the chunks the async side sends. The stream ending without the
/// sender saying it is complete (cancellation, daemon error) is an error,
/// so a cut-short archive never passes for a whole one.
struct ChannelReader {
    rx: mpsc::Receiver<Bytes>,
    current: Bytes,
    complete: Arc<AtomicBool>,
}

impl Read for ChannelReader {
    fn read(&mut self, out: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rx.blocking_recv() {
                Some(chunk) => self.current = chunk,
                None if self.complete.load(Ordering::SeqCst) => return Ok(0),
                None => {
                    return Err(std::io::Error::new(
                        ErrorKind::UnexpectedEof,
                        "the archive stream was cut short",
                    ))
                }
            }
        }
        let n = out.len().min(self.current.len());
        out[..n].copy_from_slice(&self.current.split_to(n));
        Ok(n)
    }
}

/// Streams the archive of `source` in container `id` into `dest` (which
/// must exist).
async fn fetch(
    engine: &dyn Engine,
    id: &str,
    source: &str,
    dest: PathBuf,
) -> Result<Extracted, ArtifactError> {
    let engine_error = |error| ArtifactError::Engine {
        source_path: source.to_string(),
        error,
    };
    let mut stream = engine.archive(id, source).await.map_err(engine_error)?;
    let (tx, rx) = mpsc::channel::<Bytes>(CHUNKS_IN_FLIGHT);
    let complete = Arc::new(AtomicBool::new(false));
    let reader = ChannelReader {
        rx,
        current: Bytes::new(),
        complete: Arc::clone(&complete),
    };
    let extractor = tokio::task::spawn_blocking(move || extract(reader, &dest));
    let mut stream_error = None;
    loop {
        match stream.next().await {
            Some(Ok(chunk)) => {
                // A closed channel: the extractor is done (end of archive)
                // or failed; its result says which.
                if tx.send(chunk).await.is_err() {
                    break;
                }
            }
            Some(Err(error)) => {
                stream_error = Some(error);
                break;
            }
            None => {
                complete.store(true, Ordering::SeqCst);
                break;
            }
        }
    }
    drop(tx);
    let extracted = extractor.await;
    if let Some(error) = stream_error {
        return Err(engine_error(error));
    }
    match extracted {
        Ok(Ok(stats)) => Ok(stats),
        Ok(Err(error)) => Err(ArtifactError::Extract {
            source_path: source.to_string(),
            error,
        }),
        Err(join) => Err(engine_error(EngineError::Api(format!(
            "artifact extractor: {join}"
        )))),
    }
}

/// The host directory an artifact is extracted into: `<workdir>/<dest>`.
pub fn destination(workdir: &Path, artifact: &Artifact) -> PathBuf {
    workdir.join(&artifact.dest)
}

/// Copies `artifacts` out of `image` onto the host under `workdir`, one
/// created (never started) container for all of them, labelled `labels`
/// and removed on every path. Reports one line per artifact on `report`.
pub async fn copy(
    engine: Arc<dyn Engine>,
    image: &str,
    labels: BTreeMap<String, String>,
    workdir: &Path,
    artifacts: &[Artifact],
    report: LineSink,
) -> Result<Vec<Extracted>, ArtifactError> {
    let Some(first) = artifacts.first() else {
        return Ok(Vec::new());
    };
    let id = engine
        .create_container(ContainerRequest {
            image: image.to_string(),
            labels,
            keep_alive: false,
        })
        .await
        .map_err(|error| ArtifactError::Engine {
            source_path: first.source.clone(),
            error,
        })?;
    let guard = ContainerGuard::arm(Arc::clone(&engine), &id);
    let mut result = Ok(Vec::with_capacity(artifacts.len()));
    for artifact in artifacts {
        let started = Instant::now();
        let dest = destination(workdir, artifact);
        // Checked right before use: a symlink made since `habitus check`
        // (by an earlier step's artifact, say) is refused all the same.
        if let Err(error) = workpath::create_dirs(workdir, &artifact.dest) {
            result = Err(ArtifactError::Destination {
                source_path: artifact.source.clone(),
                dest,
                error,
            });
            break;
        }
        match fetch(&*engine, &id, &artifact.source, dest.clone()).await {
            Ok(stats) => {
                let name = Path::new(&artifact.source)
                    .file_name()
                    .map(|n| dest.join(n))
                    .unwrap_or(dest);
                report(&format!(
                    "copied artifact `{}` to `{}` in {:.2}s ({} file(s), {} dir(s), {} symlink(s), {} bytes)",
                    artifact.source,
                    name.strip_prefix(workdir).unwrap_or(&name).display(),
                    started.elapsed().as_secs_f64(),
                    stats.files,
                    stats.dirs,
                    stats.symlinks,
                    stats.bytes
                ));
                if let Ok(all) = &mut result {
                    all.push(stats);
                }
            }
            Err(error) => {
                result = Err(error);
                break;
            }
        }
    }
    guard.disarm();
    let removed = engine.remove_container(&id).await;
    let copied = result?;
    removed.map_err(|error| ArtifactError::Engine {
        source_path: first.source.clone(),
        error,
    })?;
    Ok(copied)
}

/// The artifact paths on the host that did not exist before the build:
/// for each artifact, the first component of `<dest>/<name>` under the work
/// dir that is missing (Go Habitus's rule). Removing them removes exactly
/// what the build created; files and directories that were there before
/// stay, even when an artifact lands inside them.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostArtifacts {
    roots: Vec<PathBuf>,
}

impl HostArtifacts {
    /// Looks at the host before the build.
    pub fn before_build(workdir: &Path, steps: &[Step]) -> HostArtifacts {
        let mut roots: Vec<PathBuf> = Vec::new();
        for artifact in steps.iter().flat_map(|s| &s.artifacts) {
            let Some(name) = Path::new(&artifact.source).file_name() else {
                continue;
            };
            let rel = artifact.dest.join(name);
            let mut path = workdir.to_path_buf();
            for component in rel.components() {
                path.push(component);
                let meta = std::fs::symlink_metadata(&path);
                // Nothing is ever written through a symlink, so nothing
                // beyond one is removed either.
                if meta.as_ref().is_ok_and(|m| m.file_type().is_symlink()) {
                    break;
                }
                if meta.is_err() {
                    if !roots.iter().any(|r| path.starts_with(r)) {
                        roots.retain(|r| !r.starts_with(&path));
                        roots.push(path.clone());
                    }
                    break;
                }
            }
        }
        HostArtifacts { roots }
    }

    /// The paths that will be removed.
    pub fn roots(&self) -> &[PathBuf] {
        &self.roots
    }

    /// Removes every root that exists now; returns the ones removed and
    /// the errors met.
    pub fn remove(&self) -> (Vec<PathBuf>, Vec<(PathBuf, std::io::Error)>) {
        let mut removed = Vec::new();
        let mut errors = Vec::new();
        for root in &self.roots {
            match remove_path(root) {
                Ok(true) => removed.push(root.clone()),
                Ok(false) => {}
                Err(e) => errors.push((root.clone(), e)),
            }
        }
        (removed, errors)
    }
}

/// Removes a file, symlink (not its target) or directory tree; `false` if
/// nothing was there. Directories an artifact made read-only are made
/// writable first.
fn remove_path(path: &Path) -> std::io::Result<bool> {
    let meta = match std::fs::symlink_metadata(path) {
        Ok(meta) => meta,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(e),
    };
    if !meta.is_dir() {
        std::fs::remove_file(path)?;
        return Ok(true);
    }
    match std::fs::remove_dir_all(path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == ErrorKind::PermissionDenied => {
            make_writable(path)?;
            std::fs::remove_dir_all(path)?;
            Ok(true)
        }
        Err(e) => Err(e),
    }
}

fn make_writable(dir: &Path) -> std::io::Result<()> {
    let meta = std::fs::symlink_metadata(dir)?;
    if !meta.is_dir() {
        return Ok(());
    }
    std::fs::set_permissions(dir, Permissions::from_mode(meta.mode() | 0o700))?;
    for entry in std::fs::read_dir(dir)? {
        make_writable(&entry?.path())?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::path::{Path, PathBuf};

    use super::{clean, extract, ExtractError, HostArtifacts};
    use crate::manifest::Artifact;

    /// A tar builder that writes names verbatim (the `tar` crate's own
    /// `append_*` refuse `..` and absolute names).
    #[derive(Default)]
    struct Tar(Vec<u8>);

    impl Tar {
        fn entry(
            mut self,
            name: &str,
            kind: tar::EntryType,
            mode: u32,
            link: &str,
            data: &[u8],
        ) -> Tar {
            let mut header = tar::Header::new_ustar();
            {
                let raw = header.as_old_mut();
                raw.name[..name.len()].copy_from_slice(name.as_bytes());
                raw.linkname[..link.len()].copy_from_slice(link.as_bytes());
            }
            header.set_entry_type(kind);
            header.set_mode(mode);
            header.set_size(data.len() as u64);
            header.set_mtime(1_500_000_000);
            header.set_cksum();
            self.0.extend_from_slice(header.as_bytes());
            self.0.extend_from_slice(data);
            let pad = (512 - data.len() % 512) % 512;
            self.0.extend(std::iter::repeat_n(0, pad));
            self
        }
        fn file(self, name: &str, mode: u32, data: &[u8]) -> Tar {
            self.entry(name, tar::EntryType::Regular, mode, "", data)
        }
        fn dir(self, name: &str, mode: u32) -> Tar {
            self.entry(name, tar::EntryType::Directory, mode, "", b"")
        }
        fn symlink(self, name: &str, target: &str) -> Tar {
            self.entry(name, tar::EntryType::Symlink, 0o777, target, b"")
        }
        fn hardlink(self, name: &str, target: &str) -> Tar {
            self.entry(name, tar::EntryType::Link, 0o644, target, b"")
        }
        fn bytes(mut self) -> Vec<u8> {
            self.0.extend(std::iter::repeat_n(0, 1024));
            self.0
        }
    }

    /// A destination inside a sandbox, so that escapes are visible.
    struct Sandbox {
        root: tempfile::TempDir,
    }

    impl Sandbox {
        fn new() -> Sandbox {
            let root = tempfile::tempdir().unwrap();
            std::fs::create_dir(root.path().join("dest")).unwrap();
            Sandbox { root }
        }
        fn dest(&self) -> PathBuf {
            self.root.path().join("dest")
        }
        /// Every path in the sandbox outside `dest`.
        fn outside(&self) -> Vec<PathBuf> {
            let mut found = Vec::new();
            walk(self.root.path(), &mut found);
            found.retain(|p| !p.starts_with(self.dest()));
            found
        }
    }

    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            out.push(path.clone());
            if std::fs::symlink_metadata(&path).unwrap().is_dir() {
                walk(&path, out);
            }
        }
    }

    fn refused(tar: Vec<u8>) -> (String, Sandbox) {
        let sandbox = Sandbox::new();
        let err = extract(&tar[..], &sandbox.dest()).unwrap_err();
        assert!(sandbox.outside().is_empty(), "{:?}", sandbox.outside());
        (err.to_string(), sandbox)
    }

    #[test]
    fn parent_dir_entries_are_refused() {
        let (err, _) = refused(Tar::default().file("../x", 0o644, b"evil").bytes());
        assert_eq!(
            err,
            "entry `../x` has a `..` component: it would land outside the destination"
        );
        let (err, _) = refused(Tar::default().file("a/../../x", 0o644, b"evil").bytes());
        assert_eq!(
            err,
            "entry `a/../../x` has a `..` component: it would land outside the destination"
        );
    }

    #[test]
    fn entries_into_a_git_folder_are_refused() {
        for name in ["./.git/config", ".git", "app/.GIT/hooks/post-checkout"] {
            let (err, sandbox) = refused(Tar::default().file(name, 0o644, b"evil").bytes());
            assert_eq!(
                err,
                format!("entry `{name}` would land inside a `.git` folder, where git finds the hooks and configuration it runs")
            );
            assert_eq!(
                std::fs::read_dir(sandbox.dest()).unwrap().count(),
                0,
                "{name}"
            );
        }
        let (err, _) = refused(
            Tar::default()
                .file("a", 0o644, b"x")
                .hardlink("b", ".git/config")
                .bytes(),
        );
        assert!(
            err.contains("`.git/config` would land inside a `.git` folder"),
            "{err}"
        );
        let ok = Sandbox::new();
        extract(
            &Tar::default().file(".gitignore", 0o644, b"x").bytes()[..],
            &ok.dest(),
        )
        .unwrap();
    }

    #[test]
    fn absolute_entries_are_refused() {
        let (err, _) = refused(Tar::default().file("/etc/x", 0o644, b"evil").bytes());
        assert_eq!(err, "entry `/etc/x` has an absolute name");
    }

    #[test]
    fn entries_through_a_symlink_are_refused() {
        let sandbox = Sandbox::new();
        let outside = sandbox.root.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        let tar = Tar::default()
            .symlink("link", outside.to_str().unwrap())
            .file("link/file", 0o644, b"evil")
            .bytes();
        let err = extract(&tar[..], &sandbox.dest()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "entry `link/file` goes through the symlink `link`"
        );
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);

        let (err, _) = refused(
            Tar::default()
                .symlink("link", "/tmp")
                .file("link/file", 0o644, b"evil")
                .bytes(),
        );
        assert_eq!(err, "entry `link/file` goes through the symlink `link`");
        assert!(!Path::new("/tmp/file").exists() || std::fs::read("/tmp/file").unwrap() != b"evil");
    }

    #[test]
    fn a_symlink_already_on_the_host_is_not_followed() {
        let sandbox = Sandbox::new();
        let outside = sandbox.root.path().join("outside");
        std::fs::create_dir(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, sandbox.dest().join("app")).unwrap();
        let tar = Tar::default().file("app/bin", 0o755, b"x").bytes();
        let err = extract(&tar[..], &sandbox.dest()).unwrap_err();
        assert_eq!(
            err.to_string(),
            "entry `app/bin` goes through the symlink `app`"
        );
        assert_eq!(std::fs::read_dir(&outside).unwrap().count(), 0);
    }

    #[test]
    fn a_file_replaces_a_symlink_instead_of_writing_through_it() {
        let sandbox = Sandbox::new();
        let outside = sandbox.root.path().join("victim");
        std::fs::write(&outside, "keep").unwrap();
        let tar = Tar::default()
            .symlink("app", outside.to_str().unwrap())
            .file("app", 0o644, b"new")
            .bytes();
        extract(&tar[..], &sandbox.dest()).unwrap();
        assert_eq!(std::fs::read_to_string(&outside).unwrap(), "keep");
        assert_eq!(std::fs::read(sandbox.dest().join("app")).unwrap(), b"new");
    }

    #[test]
    fn hard_links_outside_are_refused() {
        let (err, _) = refused(
            Tar::default()
                .hardlink("passwd", "../../../etc/passwd")
                .bytes(),
        );
        assert_eq!(
            err,
            "hard link `passwd` points outside the destination: `../../../etc/passwd`"
        );
        let (err, _) = refused(Tar::default().hardlink("passwd", "/etc/passwd").bytes());
        assert_eq!(
            err,
            "hard link `passwd` points outside the destination: `/etc/passwd`"
        );
        // Through a symlink that points outside.
        let (err, _) = refused(
            Tar::default()
                .symlink("etc", "/etc")
                .hardlink("passwd", "etc/passwd")
                .bytes(),
        );
        assert_eq!(err, "entry `passwd` goes through the symlink `etc`");
    }

    #[test]
    fn devices_are_refused() {
        let (err, _) = refused(
            Tar::default()
                .entry("null", tar::EntryType::Char, 0o666, "", b"")
                .bytes(),
        );
        assert_eq!(
            err,
            "entry `null` is a character device, which an artifact cannot hold"
        );
    }

    #[test]
    fn a_cut_archive_leaves_no_partial_file() {
        let sandbox = Sandbox::new();
        let tar = Tar::default().file("big", 0o644, &[7u8; 4096]).bytes();
        let err = extract(&tar[..1024], &sandbox.dest()).unwrap_err();
        assert!(matches!(err, ExtractError::Read(_)), "{err}");
        assert!(!sandbox.dest().join("big").exists());
    }

    #[test]
    fn files_dirs_links_keep_modes_and_mtimes() {
        let sandbox = Sandbox::new();
        let dest = sandbox.dest();
        let tar = Tar::default()
            .dir("conf/", 0o750)
            .dir("conf/sub/", 0o555)
            .file("conf/sub/app", 0o755, b"#!/bin/sh\n")
            .file("conf/secret", 0o600, b"s")
            .file("conf/suid", 0o4755, b"x")
            .symlink("conf/latest", "sub/app")
            .hardlink("conf/again", "conf/secret")
            .bytes();
        let stats = extract(&tar[..], &dest).unwrap();
        assert_eq!(
            (stats.files, stats.dirs, stats.symlinks, stats.bytes),
            (4, 2, 1, 12)
        );
        let mode = |p: &str| std::fs::symlink_metadata(dest.join(p)).unwrap().mode() & 0o7777;
        assert_eq!(mode("conf"), 0o750);
        assert_eq!(mode("conf/sub"), 0o555);
        assert_eq!(mode("conf/sub/app"), 0o755);
        assert_eq!(mode("conf/secret"), 0o600);
        assert_eq!(mode("conf/suid"), 0o755, "set-uid is dropped");
        assert_eq!(
            std::fs::read_link(dest.join("conf/latest")).unwrap(),
            Path::new("sub/app")
        );
        assert_eq!(
            std::fs::read(dest.join("conf/latest")).unwrap(),
            b"#!/bin/sh\n"
        );
        assert_eq!(
            std::fs::metadata(dest.join("conf/again")).unwrap().ino(),
            std::fs::metadata(dest.join("conf/secret")).unwrap().ino()
        );
        for p in ["conf", "conf/sub", "conf/sub/app", "conf/secret"] {
            assert_eq!(
                std::fs::symlink_metadata(dest.join(p)).unwrap().mtime(),
                1_500_000_000,
                "{p}"
            );
        }
        // Clean up the read-only directory for the tempdir's removal.
        std::fs::set_permissions(
            dest.join("conf/sub"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
    }

    #[test]
    fn parents_missing_from_the_archive_are_created() {
        let sandbox = Sandbox::new();
        let tar = Tar::default().file("a/b/c", 0o644, b"c").bytes();
        extract(&tar[..], &sandbox.dest()).unwrap();
        assert_eq!(std::fs::read(sandbox.dest().join("a/b/c")).unwrap(), b"c");
    }

    #[test]
    fn a_directory_is_not_replaced_by_a_file() {
        let (err, _) = refused(
            Tar::default()
                .dir("app/", 0o755)
                .file("app", 0o644, b"x")
                .bytes(),
        );
        assert_eq!(err, "entry `app` cannot replace the directory `app`");
    }

    #[test]
    fn clean_drops_dot_components() {
        assert_eq!(
            clean(Path::new("./a/./b"), "./a/./b").unwrap(),
            Some(PathBuf::from("a/b"))
        );
        assert_eq!(clean(Path::new("./"), "./").unwrap(), None);
    }

    #[test]
    fn host_roots_are_the_first_missing_components() {
        let dir = tempfile::tempdir().unwrap();
        let w = dir.path();
        std::fs::create_dir(w.join("config")).unwrap();
        std::fs::write(w.join("existing"), "x").unwrap();
        let step = |artifacts: Vec<Artifact>| crate::manifest::Step {
            artifacts,
            ..test_step()
        };
        let art = |source: &str, dest: &str| Artifact {
            source: source.into(),
            dest: dest.into(),
        };
        let roots = HostArtifacts::before_build(
            w,
            &[step(vec![
                art("/usr/bin/app", ""),
                art("/etc/app/conf", "config"),
                art("/x/existing", ""),
                art("/a/b", "out/deep"),
                art("/a/c", "out"),
            ])],
        );
        assert_eq!(
            roots.roots(),
            [w.join("app"), w.join("config/conf"), w.join("out")]
        );
    }

    fn test_step() -> crate::manifest::Step {
        crate::manifest::Step {
            dockerfile_path: "Dockerfile".into(),
            context: ".".into(),
            ..crate::manifest::Step::for_test("s")
        }
    }
}
