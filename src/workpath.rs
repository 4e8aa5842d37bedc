//! Paths under the work directory, resolved the way the kernel resolves
//! them rather than read as text. A repository can commit a symlink
//! (`out -> /home/ci/.ssh`, `ctx -> ..`, `Dockerfile -> /etc/passwd`), so a
//! path that looks inside the work directory may lead out of it.
//!
//! [`resolve`] follows symlinks component by component, as `open(2)` would,
//! and names the symlink that leads out; `habitus check` reports it.
//! [`create_dirs`] makes artifact destinations at write time and refuses a
//! symlink in any component, checked right before use.

use std::ffi::OsString;
use std::fs::File;
use std::io::{self, ErrorKind, Read};
use std::path::{Component, Path, PathBuf};

/// Symlinks followed before giving up, as Linux's `MAXSYMLINKS`.
const MAX_LINKS: usize = 40;

/// A path under a root, resolved.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Resolved {
    /// The real path: no symlinks in the components that exist; missing
    /// components are appended as written.
    pub path: PathBuf,
    /// Set when `path` is outside the root.
    pub escape: Option<Escape>,
}

/// How a resolved path left the root.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Escape {
    /// The symlink that led out, relative to the root, if one did.
    pub link: Option<PathBuf>,
    /// What that symlink points to, as stored in it.
    pub target: PathBuf,
}

/// Resolves `rel` below `root` following symlinks as the kernel does (a
/// `..` after a symlink goes up from the symlink's target). `root` must be
/// a real path (see [`real_root`]); `rel` is taken relative to it even when
/// it starts with `/`.
pub fn resolve(root: &Path, rel: &Path) -> io::Result<Resolved> {
    let mut pending: Vec<OsString> = Vec::new();
    push_front(&mut pending, rel);
    let mut current = root.to_path_buf();
    let mut links = 0;
    let mut missing = false;
    // The last symlink inside the root that was expanded, and the one in
    // effect when the path last left the root.
    let mut last_link: Option<(PathBuf, PathBuf)> = None;
    let mut culprit: Option<(PathBuf, PathBuf)> = None;
    while let Some(part) = pending.pop() {
        let was_inside = current.starts_with(root);
        if part == ".." {
            current.pop();
        } else if part == "/" {
            current = PathBuf::from("/");
        } else {
            let next = current.join(&part);
            if missing {
                current = next;
                continue;
            }
            match std::fs::symlink_metadata(&next) {
                Ok(meta) if meta.file_type().is_symlink() => {
                    links += 1;
                    if links > MAX_LINKS {
                        return Err(io::Error::new(
                            ErrorKind::InvalidInput,
                            format!("too many levels of symlinks at `{}`", next.display()),
                        ));
                    }
                    let target = std::fs::read_link(&next)?;
                    if let Ok(inside) = next.strip_prefix(root) {
                        last_link = Some((inside.to_path_buf(), target.clone()));
                    }
                    push_front(&mut pending, &target);
                    if target.is_absolute() {
                        current = PathBuf::from("/");
                    }
                }
                Ok(_) => current = next,
                Err(e) if e.kind() == ErrorKind::NotFound => {
                    missing = true;
                    current = next;
                }
                Err(e) => return Err(e),
            }
        }
        if was_inside && !current.starts_with(root) {
            culprit.clone_from(&last_link);
        }
    }
    let escape = (!current.starts_with(root)).then(|| match culprit {
        Some((link, target)) => Escape {
            link: Some(link),
            target,
        },
        None => Escape {
            link: None,
            target: current.clone(),
        },
    });
    Ok(Resolved {
        path: current,
        escape,
    })
}

/// Puts `path`'s components on the stack so that its first component is
/// popped next; an absolute path starts with `/`.
fn push_front(pending: &mut Vec<OsString>, path: &Path) {
    let mut parts = Vec::new();
    for component in path.components() {
        match component {
            Component::RootDir => parts.push(OsString::from("/")),
            Component::Prefix(_) | Component::CurDir => {}
            Component::ParentDir => parts.push(OsString::from("..")),
            Component::Normal(part) => parts.push(part.to_os_string()),
        }
    }
    pending.extend(parts.into_iter().rev());
}

/// The work directory with every symlink in it resolved.
pub fn real_root(workdir: &Path) -> io::Result<PathBuf> {
    std::fs::canonicalize(workdir)
}

/// Resolves `path` (the work directory `workdir` joined with a path that
/// build.yml names) again right before it is used, and returns the real
/// path, or an error naming the symlink that now leads out of the work
/// directory. `habitus check` ran the same resolution at load time; an
/// artifact extracted by an earlier step may have planted a link since.
pub fn confine(workdir: &Path, path: &Path) -> io::Result<PathBuf> {
    let root = real_root(workdir)?;
    let rel = path.strip_prefix(workdir).map_err(|_| {
        io::Error::new(
            ErrorKind::InvalidInput,
            format!("is not under the work directory `{}`", workdir.display()),
        )
    })?;
    let resolved = resolve(&root, rel)?;
    match resolved.escape {
        None => Ok(resolved.path),
        Some(Escape {
            link: Some(link),
            target,
        }) => Err(io::Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "leads out of the work directory through the symlink `{}` -> `{}`; paths are resolved, not read: remove the symlink",
                link.display(),
                target.display()
            ),
        )),
        Some(Escape { link: None, target }) => Err(io::Error::new(
            ErrorKind::PermissionDenied,
            format!(
                "resolves outside the work directory, to `{}`",
                target.display()
            ),
        )),
    }
}

/// Reads the file at `path` under `workdir`, opened with [`open_beneath`]:
/// a Dockerfile never comes from outside the work directory. Its bytes, as
/// they are: a Dockerfile need not be UTF-8.
pub async fn read_inside(workdir: &Path, path: &Path) -> io::Result<Vec<u8>> {
    let (workdir, path) = (workdir.to_path_buf(), path.to_path_buf());
    tokio::task::spawn_blocking(move || {
        let rel = path
            .strip_prefix(&workdir)
            .map_err(|_| not_under(&workdir))?;
        let mut bytes = Vec::new();
        open_beneath(&workdir, rel, WORKDIR)?.read_to_end(&mut bytes)?;
        Ok(bytes)
    })
    .await
    .map_err(io::Error::other)?
}

fn not_under(workdir: &Path) -> io::Error {
    io::Error::new(
        ErrorKind::InvalidInput,
        format!("is not under the work directory `{}`", workdir.display()),
    )
}

/// What [`open_beneath`]'s errors call the work directory.
pub const WORKDIR: &str = "the work directory";

/// How often an open beneath the root is tried again when the kernel
/// reports that a rename raced with it (`EAGAIN`).
const RACE_RETRIES: usize = 8;

/// Opens the regular file `rel` beneath the directory `root` (called
/// `name` in errors, e.g. [`WORKDIR`]) for reading,
/// in one step that cannot be redirected: the kernel resolves every
/// component with `openat2(RESOLVE_BENEATH | RESOLVE_NO_MAGICLINKS)` from
/// a handle on `root`. Symlinks that stay beneath `root` are followed
/// (`Dockerfile -> docker/Dockerfile` is fine); one that leads out — to an
/// absolute path, or through `..` above `root` — fails the open, so a
/// symlink swapped in after `habitus check` resolved the path is refused,
/// not followed. An absolute symlink that points back inside `root` is
/// followed too: the path is resolved as [`resolve`] does and the real
/// path opened beneath `root` again. Anything but a regular file (a FIFO,
/// a device, a directory) is refused without blocking.
///
/// On kernels without `openat2` (before Linux 5.6) the path is resolved
/// with [`confine`] and its last component opened with `O_NOFOLLOW`.
pub fn open_beneath(root: &Path, rel: &Path, name: &str) -> io::Result<File> {
    use rustix::fs::{Mode, OFlags, ResolveFlags};
    let dir = File::open(root)?;
    let flags = OFlags::RDONLY | OFlags::CLOEXEC | OFlags::NOCTTY | OFlags::NONBLOCK;
    let how = ResolveFlags::BENEATH | ResolveFlags::NO_MAGICLINKS;
    let open = |rel: &Path| -> io::Result<File> {
        let mut tries = 0;
        loop {
            match rustix::fs::openat2(&dir, rel, flags, Mode::empty(), how) {
                Err(rustix::io::Errno::AGAIN) if tries < RACE_RETRIES => tries += 1,
                other => return other.map(File::from).map_err(io::Error::from),
            }
        }
    };
    let rel = relative(rel);
    let file = match open(&rel) {
        Ok(file) => file,
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::XDEV.raw_os_error()) => {
            let real = real_root(root)?;
            let resolved = resolve(&real, &rel)?;
            if resolved.escape.is_some() {
                return Err(escape_error(root, name, resolved.escape));
            }
            let inside = resolved.path.strip_prefix(&real).unwrap_or(Path::new(""));
            open(inside).map_err(|e| match e.raw_os_error() {
                Some(code) if code == rustix::io::Errno::XDEV.raw_os_error() => {
                    escape_error(root, name, None)
                }
                _ => e,
            })?
        }
        Err(e) if e.raw_os_error() == Some(rustix::io::Errno::NOSYS.raw_os_error()) => {
            let real = confine(root, &root.join(&rel))?;
            let file = rustix::fs::open(&real, flags | OFlags::NOFOLLOW, Mode::empty())
                .map_err(io::Error::from)?;
            File::from(file)
        }
        Err(e) => return Err(e),
    };
    let kind = file.metadata()?.file_type();
    if !kind.is_file() {
        return Err(io::Error::new(
            ErrorKind::InvalidInput,
            "is not a regular file; name a file",
        ));
    }
    Ok(file)
}

/// `rel` without a leading `/` or `.` (it is taken relative to the root).
fn relative(rel: &Path) -> PathBuf {
    rel.components()
        .filter(|c| matches!(c, Component::Normal(_) | Component::ParentDir))
        .collect()
}

/// The error for a path that leads out of the root, naming the symlink
/// when one is known.
fn escape_error(root: &Path, name: &str, escape: Option<Escape>) -> io::Error {
    let root = root.display();
    let message = match escape {
        Some(Escape {
            link: Some(link),
            target,
        }) => format!(
            "leads out of {name} through the symlink `{}` -> `{}`; paths are resolved, not read: remove the symlink or point it to a file inside {name} `{root}`",
            link.display(),
            target.display()
        ),
        Some(Escape { link: None, target }) => format!(
            "resolves outside {name}, to `{}`; name a file inside {name} `{root}`",
            target.display()
        ),
        None => format!("leads out of {name} through a symlink that changed while it was opened; remove the symlink or point it to a file inside {name} `{root}`"),
    };
    io::Error::new(ErrorKind::PermissionDenied, message)
}

/// Why a destination directory could not be made.
#[derive(Debug, thiserror::Error)]
pub enum DirError {
    /// A component is a symlink, which could point anywhere.
    #[error("`{}` is a symlink; artifacts are never written through one", link.display())]
    Symlink {
        /// The symlink, relative to the root.
        link: PathBuf,
    },
    /// A component is something other than a directory.
    #[error("`{}` is not a directory", path.display())]
    NotDir {
        /// The component, relative to the root.
        path: PathBuf,
    },
    /// Reading or creating a component failed.
    #[error("`{}`: {source}", path.display())]
    Io {
        /// The component, relative to the root.
        path: PathBuf,
        /// The error.
        source: io::Error,
    },
}

/// Creates `root/rel` as real directories, checking every component below
/// `root` with `symlink_metadata` right before use: a symlink or a
/// non-directory is refused, a missing directory created. `rel` must not
/// hold `..` (a validated artifact destination does not). Returns
/// `root.join(rel)`.
pub fn create_dirs(root: &Path, rel: &Path) -> Result<PathBuf, DirError> {
    let mut prefix = PathBuf::new();
    for component in rel.components() {
        let Component::Normal(part) = component else {
            if component == Component::ParentDir {
                return Err(DirError::Io {
                    path: rel.to_path_buf(),
                    source: io::Error::new(ErrorKind::InvalidInput, "`..` in a destination"),
                });
            }
            continue;
        };
        prefix.push(part);
        let path = root.join(&prefix);
        match std::fs::symlink_metadata(&path) {
            Ok(meta) if meta.file_type().is_symlink() => {
                return Err(DirError::Symlink { link: prefix })
            }
            Ok(meta) if meta.is_dir() => {}
            Ok(_) => return Err(DirError::NotDir { path: prefix }),
            Err(e) if e.kind() == ErrorKind::NotFound => match std::fs::create_dir(&path) {
                Ok(()) => {}
                // Made by someone else since: check it again.
                Err(e) if e.kind() == ErrorKind::AlreadyExists => {
                    let meta = std::fs::symlink_metadata(&path).map_err(|source| DirError::Io {
                        path: prefix.clone(),
                        source,
                    })?;
                    if meta.file_type().is_symlink() {
                        return Err(DirError::Symlink { link: prefix });
                    }
                    if !meta.is_dir() {
                        return Err(DirError::NotDir { path: prefix });
                    }
                }
                Err(source) => {
                    return Err(DirError::Io {
                        path: prefix,
                        source,
                    })
                }
            },
            Err(source) => {
                return Err(DirError::Io {
                    path: prefix,
                    source,
                })
            }
        }
    }
    Ok(root.join(rel))
}

/// Whether `path` has a component named `.git` (in any case: `.GIT` is
/// the same folder on a case-insensitive file system). Git reads its
/// configuration and hooks there, so a file written into it runs code at
/// the next git command (`core.hooksPath`, `core.fsmonitor`).
pub fn in_git_dir(path: &Path) -> bool {
    path.components().any(|component| match component {
        Component::Normal(part) => part.eq_ignore_ascii_case(".git"),
        _ => false,
    })
}

#[cfg(test)]
mod tests {
    use super::{
        confine, create_dirs, in_git_dir, open_beneath, real_root, resolve, DirError, Escape,
        WORKDIR,
    };
    use std::io::Read;
    use std::os::unix::fs::symlink;
    use std::path::{Path, PathBuf};

    fn dirs() -> (tempfile::TempDir, PathBuf, tempfile::TempDir, PathBuf) {
        let work = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let root = real_root(work.path()).unwrap();
        let out = real_root(outside.path()).unwrap();
        (work, root, outside, out)
    }

    #[test]
    fn a_plain_path_resolves_inside() {
        let (_w, root, _o, _out) = dirs();
        std::fs::create_dir(root.join("a")).unwrap();
        let r = resolve(&root, Path::new("a/missing/deeper")).unwrap();
        assert_eq!(r.path, root.join("a/missing/deeper"));
        assert_eq!(r.escape, None);
    }

    #[test]
    fn a_link_to_another_directory_escapes_naming_the_link() {
        let (_w, root, _o, out) = dirs();
        symlink(&out, root.join("out")).unwrap();
        let r = resolve(&root, Path::new("out/authorized_keys")).unwrap();
        assert_eq!(r.path, out.join("authorized_keys"));
        assert_eq!(
            r.escape,
            Some(Escape {
                link: Some("out".into()),
                target: out.clone(),
            })
        );
    }

    #[test]
    fn a_link_to_the_parent_escapes() {
        let (_w, root, _o, _out) = dirs();
        std::fs::create_dir(root.join("sub")).unwrap();
        symlink("../..", root.join("sub/ctx")).unwrap();
        let r = resolve(&root, Path::new("sub/ctx")).unwrap();
        assert_eq!(Some(r.path.as_path()), root.parent());
        let escape = r.escape.unwrap();
        assert_eq!(escape.link, Some(PathBuf::from("sub/ctx")));
        assert_eq!(escape.target, PathBuf::from("../.."));
    }

    #[test]
    fn a_link_to_a_file_outside_escapes() {
        let (_w, root, _o, out) = dirs();
        std::fs::write(out.join("passwd"), "root:x:0:0\n").unwrap();
        symlink(out.join("passwd"), root.join("Dockerfile")).unwrap();
        let r = resolve(&root, Path::new("Dockerfile")).unwrap();
        assert_eq!(r.escape.unwrap().link, Some(PathBuf::from("Dockerfile")));
    }

    #[test]
    fn links_that_stay_inside_are_fine() {
        let (_w, root, _o, _out) = dirs();
        std::fs::create_dir_all(root.join("real/deep")).unwrap();
        symlink("real/deep", root.join("short")).unwrap();
        symlink(root.join("real"), root.join("abs")).unwrap();
        symlink("..", root.join("real/up")).unwrap();
        for rel in ["short", "abs/deep", "real/up/short", "short/../deep"] {
            let r = resolve(&root, Path::new(rel)).unwrap();
            assert_eq!(r.escape, None, "{rel}");
        }
        assert_eq!(
            resolve(&root, Path::new("short/..")).unwrap().path,
            root.join("real")
        );
    }

    #[test]
    fn a_chain_names_the_link_inside_that_leads_out() {
        let (_w, root, _o, out) = dirs();
        std::fs::create_dir(root.join("real")).unwrap();
        symlink("real", root.join("innocent")).unwrap();
        symlink(&out, root.join("real/bad")).unwrap();
        let r = resolve(&root, Path::new("innocent/bad/x")).unwrap();
        assert_eq!(r.escape.unwrap().link, Some(PathBuf::from("real/bad")));
    }

    #[test]
    fn a_symlink_loop_is_an_error() {
        let (_w, root, _o, _out) = dirs();
        symlink("b", root.join("a")).unwrap();
        symlink("a", root.join("b")).unwrap();
        assert!(resolve(&root, Path::new("a/x")).is_err());
    }

    #[test]
    fn create_dirs_refuses_a_symlink_and_creates_nothing_through_it() {
        let (_w, root, _o, out) = dirs();
        symlink(&out, root.join("out")).unwrap();
        let err = create_dirs(&root, Path::new("out/deeper")).unwrap_err();
        assert!(matches!(&err, DirError::Symlink { link } if link == Path::new("out")));
        assert_eq!(
            err.to_string(),
            "`out` is a symlink; artifacts are never written through one"
        );
        assert_eq!(std::fs::read_dir(&out).unwrap().count(), 0);
    }

    #[test]
    fn create_dirs_makes_real_directories() {
        let (_w, root, _o, _out) = dirs();
        let made = create_dirs(&root, Path::new("a/b/c")).unwrap();
        assert!(made.is_dir());
        std::fs::write(root.join("file"), "").unwrap();
        assert!(matches!(
            create_dirs(&root, Path::new("file/x")),
            Err(DirError::NotDir { .. })
        ));
    }

    #[test]
    fn confine_resolves_again_and_names_a_link_out() {
        let (work, root, outside, out) = dirs();
        std::fs::write(root.join("Dockerfile"), "FROM scratch\n").unwrap();
        std::fs::create_dir(root.join("real")).unwrap();
        symlink("real", root.join("inside")).unwrap();
        assert_eq!(
            confine(work.path(), &work.path().join("inside")).unwrap(),
            root.join("real")
        );
        symlink(outside.path(), root.join("ctx")).unwrap();
        let err = confine(work.path(), &work.path().join("ctx/Dockerfile")).unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
        assert_eq!(
            err.to_string(),
            format!(
                "leads out of the work directory through the symlink `ctx` -> `{}`; paths are resolved, not read: remove the symlink",
                outside.path().display()
            )
        );
        let err = confine(work.path(), &out.join("x")).unwrap_err();
        assert!(err
            .to_string()
            .starts_with("is not under the work directory"));
    }

    fn read_beneath(root: &Path, rel: &str) -> std::io::Result<String> {
        let mut text = String::new();
        open_beneath(root, Path::new(rel), WORKDIR)?.read_to_string(&mut text)?;
        Ok(text)
    }

    #[test]
    fn open_beneath_follows_links_that_stay_inside() {
        let (work, root, _o, _out) = dirs();
        std::fs::create_dir(root.join("docker")).unwrap();
        std::fs::write(root.join("docker/Dockerfile"), "FROM scratch\n").unwrap();
        symlink("docker/Dockerfile", root.join("Dockerfile")).unwrap();
        symlink(root.join("docker"), root.join("abs")).unwrap();
        symlink("../docker", root.join("docker/up")).unwrap();
        for rel in [
            "Dockerfile",
            "abs/Dockerfile",
            "docker/up/Dockerfile",
            "./Dockerfile",
        ] {
            assert_eq!(read_beneath(work.path(), rel).unwrap(), "FROM scratch\n");
        }
    }

    #[test]
    fn open_beneath_refuses_links_out_naming_the_link_and_the_fix() {
        let (work, root, outside, _out) = dirs();
        std::fs::write(outside.path().join("secret"), "outside").unwrap();
        symlink("/etc/passwd", root.join("passwd")).unwrap();
        symlink("../outside", root.join("up")).unwrap();
        symlink(outside.path(), root.join("dir")).unwrap();
        for (rel, link, target) in [
            ("passwd", "passwd", "/etc/passwd".to_string()),
            ("up", "up", "../outside".into()),
            ("dir/secret", "dir", outside.path().display().to_string()),
        ] {
            let err = read_beneath(work.path(), rel).unwrap_err();
            assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied, "{rel}");
            assert_eq!(
                err.to_string(),
                format!(
                    "leads out of the work directory through the symlink `{link}` -> `{target}`; paths are resolved, not read: remove the symlink or point it to a file inside the work directory `{}`",
                    work.path().display()
                )
            );
        }
        let err = read_beneath(work.path(), "../x").unwrap_err();
        assert_eq!(err.kind(), std::io::ErrorKind::PermissionDenied);
    }

    #[test]
    fn open_beneath_refuses_what_is_not_a_file_without_blocking() {
        let (work, root, _o, _out) = dirs();
        std::fs::create_dir(root.join("dir")).unwrap();
        let fifo = std::process::Command::new("mkfifo")
            .arg(root.join("fifo"))
            .status()
            .unwrap();
        assert!(fifo.success());
        for rel in ["dir", "fifo"] {
            let err = read_beneath(work.path(), rel).unwrap_err();
            assert_eq!(
                err.to_string(),
                "is not a regular file; name a file",
                "{rel}"
            );
        }
    }

    #[test]
    fn git_folders_are_found_in_any_case_and_depth() {
        for path in [
            ".git",
            ".git/config",
            "a/.GIT/hooks",
            "./.Git/",
            "x/../.git",
        ] {
            assert!(in_git_dir(Path::new(path)), "{path}");
        }
        for path in ["", ".", "git", ".gitignore", "a/.github/x", "a.git/b"] {
            assert!(!in_git_dir(Path::new(path)), "{path}");
        }
    }
}
