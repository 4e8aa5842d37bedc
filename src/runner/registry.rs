//! A build and its registries: the names a step's image gets (`tags:`,
//! and `name` when it is pushed), its push once the image is final (after
//! cleanup and, with secrets, after its audit), the images it takes its
//! cache from (pulled first), and the metadata file.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use super::build::Build;
use super::{lock, BuildError, Summary};
use crate::engine::{EngineError, LineSink};
use crate::manifest::Step;
use crate::model::{normalize_reference, Builder};
use crate::progress::{Event, Severity};

/// One name a step's image was pushed under.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PushedImage {
    /// The step label.
    pub step: String,
    /// The name pushed (`registry/repository:tag`).
    pub name: String,
    /// The digest the registry serves for it.
    pub digest: String,
    /// The manifest's size in bytes.
    pub size: u64,
}

/// Cache images as this build found them, each looked up once.
pub type CacheImages = BTreeMap<String, Arc<tokio::sync::OnceCell<CacheImage>>>;

/// A cache image as this build found it.
#[derive(Debug, Clone)]
pub struct CacheImage {
    /// The daemon has it (it was there, or was pulled).
    available: bool,
    /// Its id, when this build pulled it and the daemon had no image of
    /// that name before: removed at the end.
    pulled: Option<String>,
}

impl Build {
    /// Whether step `i`'s image is pushed: `push: true`, or `--push` and
    /// the image is kept at the end (`keep:`, `--keep-all`, or no step
    /// depends on it).
    pub fn pushes(&self, i: usize) -> bool {
        let step = &self.manifest.steps[i];
        step.push
            || (self.options.push
                && (step.keep || self.options.keep_all || self.plan.dependents(i).is_empty()))
    }

    /// The names `step`'s image is pushed under: `name` first, then
    /// `tags:`, each once (`app` and `app:latest` are one name).
    fn push_names(step: &Step) -> Vec<String> {
        let mut names: Vec<String> = Vec::new();
        for name in std::iter::once(&step.name).chain(&step.tags) {
            if !names
                .iter()
                .any(|n| normalize_reference(n) == normalize_reference(name))
            {
                names.push(name.clone());
            }
        }
        names
    }

    /// Gives the final image of step `i` its other names: `tags:`, and
    /// `name` when the build tags it with a unique one (`--uid`) and it is
    /// pushed; each once, and never the image's own name again.
    pub async fn name_image(&self, i: usize, image: &str) -> Result<(), BuildError> {
        let step = &self.manifest.steps[i];
        let mut names = Build::push_names(step);
        if !self.pushes(i) {
            names.remove(0);
        }
        names.retain(|n| normalize_reference(n) != normalize_reference(image));
        for name in names {
            self.tag(&step.label, image, &name).await?;
            lock(&self.named)
                .entry(step.label.clone())
                .or_default()
                .push(name);
        }
        Ok(())
    }

    /// Tags `image` as `name` for step `label`.
    async fn tag(&self, label: &str, image: &str, name: &str) -> Result<(), BuildError> {
        self.engine
            .tag_image(image, name)
            .await
            .map_err(|source| BuildError::Engine {
                step: label.to_string(),
                source,
            })?;
        self.reporter
            .step(Severity::Info, label, &format!("tagged `{name}`"));
        Ok(())
    }

    /// Removes the names [`Build::name_image`] gave step `label`'s image
    /// `image` (when the image itself goes); a name that meanwhile names
    /// another image (another build's) is left alone.
    pub async fn remove_names(&self, label: &str, image: &str) {
        let names = lock(&self.named).remove(label).unwrap_or_default();
        if names.is_empty() {
            return;
        }
        let Ok(Some(ours)) = self.engine.inspect_image(image).await else {
            return;
        };
        for name in names {
            match self.engine.inspect_image(&name).await {
                Ok(Some(info)) if info.id == ours.id => {}
                _ => continue,
            }
            if let Err(e) = self.engine.remove_image(&name, false, true).await {
                self.reporter.step(
                    Severity::Warning,
                    label,
                    &format!("could not remove the name `{name}`: {e}"),
                );
            }
        }
    }

    /// Pushes step `i`'s final image under each of its names; with
    /// secrets, audits it first: an image the audit did not clear is never
    /// pushed. Each name is set on the audited image again right before
    /// its push, and checked to name it.
    pub async fn push_step(&self, i: usize, image: String) -> Result<Vec<PushedImage>, BuildError> {
        let step = &self.manifest.steps[i];
        let engine_error = |source| BuildError::Engine {
            step: step.label.clone(),
            source,
        };
        let audited = self
            .engine
            .inspect_image(&image)
            .await
            .map_err(engine_error)?
            .map(|info| info.id)
            .unwrap_or_default();
        let hits = self.audit_image(&step.label, &image).await?;
        if !hits.is_empty() {
            return Err(BuildError::Leak { hits });
        }
        let mut pushed = Vec::new();
        for name in Build::push_names(step) {
            if normalize_reference(&name) != normalize_reference(&image) {
                self.tag(&step.label, &image, &name).await?;
            }
            let now = self
                .engine
                .inspect_image(&name)
                .await
                .map_err(engine_error)?;
            if now.as_ref().map(|info| info.id.as_str()) != Some(audited.as_str()) {
                return Err(engine_error(crate::engine::EngineError::Push {
                    name: name.clone(),
                    message: format!(
                        "the name no longer names the image this build made ({audited}): another build moved it"
                    ),
                }));
            }
            self.reporter
                .step(Severity::Info, &step.label, &format!("pushing `{name}`"));
            self.reporter
                .step_activity(&step.label, &format!("pushing `{name}`"));
            let sink: LineSink = {
                let reporter = Arc::clone(&self.reporter);
                let (label, name) = (step.label.clone(), name.clone());
                Arc::new(move |line: &str| {
                    reporter.step_output(&label, line);
                    reporter.step_activity(&label, &format!("pushing `{name}`: {line}"));
                })
            };
            let result = self
                .engine
                .push_image(&name, sink)
                .await
                .map_err(|source| BuildError::Engine {
                    step: step.label.clone(),
                    source,
                })?;
            self.reporter.event(Event::ImagePushed {
                step: &step.label,
                name: &name,
                digest: &result.digest,
                size: result.size,
            });
            let done = format!("pushed `{name}`: {}", result.digest);
            self.reporter.step(Severity::Info, &step.label, &done);
            self.reporter.step_activity(&step.label, &done);
            pushed.push(PushedImage {
                step: step.label.clone(),
                name,
                digest: result.digest,
                size: result.size,
            });
        }
        Ok(pushed)
    }

    /// The images `step` may take its cache from (`cache_from:` and
    /// `--cache-from`), each pulled once per build with the credentials of
    /// its registry; one that cannot be had is a warning, and left out.
    pub async fn cache_sources(&self, step: &Step) -> Vec<String> {
        let mut wanted: Vec<String> = step.cache_from.clone();
        for image in &self.options.cache_from {
            if !wanted.contains(image) {
                wanted.push(image.clone());
            }
        }
        let mut sources = Vec::new();
        for image in wanted {
            // One cell per image: two steps with the same cache image pull
            // it once; different images are pulled at the same time.
            let cell = Arc::clone(lock(&self.cache).entry(image.clone()).or_default());
            let found = cell.get_or_init(|| self.pull_cache(step, &image)).await;
            if found.available {
                sources.push(image);
            }
        }
        sources
    }

    /// Pulls cache image `image` for `step`.
    async fn pull_cache(&self, step: &Step, image: &str) -> CacheImage {
        // An image the daemon cannot say it lacks counts as one it had.
        let before = match self.engine.inspect_image(image).await {
            Ok(found) => found.map(|_| ()),
            Err(_) => Some(()),
        };
        self.reporter.step(
            Severity::Info,
            &step.label,
            &format!("pulling cache image `{image}`"),
        );
        let why = match self.engine.pull_image(image, self.sink(&step.label)).await {
            Ok(true) => {
                // Only a name the daemon did not have is removed again: a
                // name it had now names what the registry holds, as after
                // `docker pull`.
                let pulled = match before {
                    Some(_) => None,
                    None => self
                        .engine
                        .inspect_image(image)
                        .await
                        .ok()
                        .flatten()
                        .map(|a| a.id),
                };
                return CacheImage {
                    available: true,
                    pulled,
                };
            }
            Ok(false) => "is not in its registry".to_string(),
            Err(EngineError::Credentials(m)) => format!("could not be pulled ({m})"),
            Err(e) => format!(
                "could not be pulled ({})",
                self.reporter.redact(&e.to_string()).into_string()
            ),
        };
        let fallback = if before.is_some() {
            "using the local one"
        } else {
            "building without it"
        };
        self.reporter.step(
            Severity::Warning,
            &step.label,
            &format!("cache image `{image}` {why}: {fallback}"),
        );
        CacheImage {
            available: before.is_some(),
            pulled: None,
        }
    }

    /// Removes the cache images this build pulled, by id: a name the
    /// build moved to its own image keeps it; an image a step's image
    /// still is, or that carries other names, stays.
    pub async fn remove_pulled_cache(&self, summary: &Summary) {
        let pulled: Vec<(String, String)> = lock(&self.cache)
            .iter()
            .filter_map(|(image, c)| {
                c.get()
                    .and_then(|c| c.pulled.clone())
                    .map(|id| (image.clone(), id))
            })
            .collect();
        for (image, id) in pulled {
            if summary.steps.iter().any(|s| s.image_id == id) {
                continue;
            }
            // By name, and only while the name still names what was
            // pulled: other names and digests of it stay.
            match self.engine.inspect_image(&image).await {
                Ok(Some(info)) if info.id == id => {}
                _ => continue,
            }
            match self.engine.remove_image(&image, false, false).await {
                Ok(()) => self.reporter.message(
                    Severity::Debug,
                    &format!("removed the cache image `{image}` this build pulled"),
                ),
                Err(e) => self.reporter.message(
                    Severity::Debug,
                    &format!("kept the cache image `{image}` this build pulled: {e}"),
                ),
            }
        }
    }

    /// The build arguments that make a BuildKit step embed its cache
    /// (`cache_to: inline`, `--cache-to inline`).
    pub fn cache_to_args(&self, step: &Step, builder: Builder) -> BTreeMap<String, String> {
        let inline = step.cache_to_inline || self.options.cache_to_inline;
        if inline && builder == Builder::BuildKit {
            BTreeMap::from([("BUILDKIT_INLINE_CACHE".to_string(), "1".to_string())])
        } else {
            BTreeMap::new()
        }
    }
}

/// Writes `--metadata-file`: JSON keyed by step label, for each step whose
/// image the build kept or pushed: `image`, `image_id`, and for pushed
/// steps `digest` and `names` (and `kept: false` when the image was
/// removed from the daemon at the end). Written 0600, whole, then renamed
/// into place, privately (see `write_private`).
pub fn write_metadata(path: &Path, summary: &Summary) -> Result<(), BuildError> {
    let mut out = serde_json::Map::new();
    for step in &summary.steps {
        let pushed: Vec<&PushedImage> = summary
            .pushed
            .iter()
            .filter(|p| p.step == step.label)
            .collect();
        let kept = !summary.removed_images.contains(&step.image);
        if step.folded_into.is_some() || (!kept && pushed.is_empty()) {
            continue;
        }
        let mut entry = serde_json::Map::new();
        entry.insert("image".into(), step.image.clone().into());
        entry.insert("image_id".into(), step.image_id.clone().into());
        if !kept {
            // Pushed, then removed from the daemon at the end.
            entry.insert("kept".into(), false.into());
        }
        if let Some(first) = pushed.first() {
            entry.insert("digest".into(), first.digest.clone().into());
            entry.insert(
                "names".into(),
                pushed
                    .iter()
                    .map(|p| p.name.clone())
                    .collect::<Vec<_>>()
                    .into(),
            );
        }
        out.insert(step.label.clone(), entry.into());
    }
    let fail = |message: String| BuildError::Metadata {
        path: path.to_path_buf(),
        message,
    };
    let text = serde_json::to_string_pretty(&serde_json::Value::Object(out))
        .map_err(|e| fail(e.to_string()))?;
    write_private(path, format!("{text}\n").as_bytes()).map_err(fail)
}

/// Writes `bytes` to `path` atomically and privately: the folder is
/// opened without following a symlink (a symlinked folder is refused), a
/// temporary file is created in it with mode 0600 (the umask can only
/// narrow it) and `O_NOFOLLOW`, written, synced and renamed over `path`.
/// An existing `path` that is a symlink is refused, never written
/// through. Errors are the message, with the fix.
fn write_private(path: &Path, bytes: &[u8]) -> Result<(), String> {
    use rustix::fs::{AtFlags, Mode, OFlags};
    let (dirfd, dir, name) = open_folder(path)?;
    let temp = format!(
        ".{}.{:016x}.tmp",
        name.to_string_lossy(),
        rand::random::<u64>()
    );
    let create =
        OFlags::WRONLY | OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rustix::fs::openat(&dirfd, temp.as_str(), create, Mode::from_raw_mode(0o600))
        .map_err(|e| format!("cannot create a file in `{}`: {e}", dir.display()))?;
    let mut file = std::fs::File::from(fd);
    let written = std::io::Write::write_all(&mut file, bytes)
        .and_then(|()| file.sync_all())
        .map_err(|e| e.to_string())
        .and_then(|()| {
            rustix::fs::renameat(&dirfd, temp.as_str(), &dirfd, name)
                .map_err(|e| format!("cannot rename it into place: {e}"))
        });
    if written.is_err() {
        let _ = rustix::fs::unlinkat(&dirfd, temp.as_str(), AtFlags::empty());
    }
    written
}

/// Checks `--metadata-file` before the build, as [`write_metadata`] will
/// at the end: neither its folder nor the file may be a symlink. A build
/// that would fail to write it fails before it starts.
pub fn check_metadata_path(path: &Path) -> Result<(), BuildError> {
    open_folder(path)
        .map(drop)
        .map_err(|message| BuildError::Metadata {
            path: path.to_path_buf(),
            message,
        })
}

/// The folder of `path` opened without following a symlink, the folder's
/// path and the file's name; refuses a `path` that is a symlink.
fn open_folder(path: &Path) -> Result<(rustix::fd::OwnedFd, &Path, &std::ffi::OsStr), String> {
    use rustix::fs::{AtFlags, FileType, Mode, OFlags};
    let (dir, name) = match (path.parent(), path.file_name()) {
        (Some(d), Some(n)) if !d.as_os_str().is_empty() => (d, n),
        (_, Some(n)) => (Path::new("."), n),
        _ => return Err("is not a file name; name a file, e.g. `metadata.json`".into()),
    };
    let dir_flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let dirfd = rustix::fs::open(dir, dir_flags, Mode::empty()).map_err(|e| match e {
        rustix::io::Errno::LOOP | rustix::io::Errno::NOTDIR if is_symlink(dir) => format!(
            "its folder `{}` is a symlink; the metadata file is never written through one: name the real folder",
            dir.display()
        ),
        e => format!("cannot open its folder `{}`: {e}", dir.display()),
    })?;
    match rustix::fs::statat(&dirfd, name, AtFlags::SYMLINK_NOFOLLOW) {
        Ok(stat) if FileType::from_raw_mode(stat.st_mode) == FileType::Symlink => Err(
            "is a symlink; the metadata file is never written through one: remove the symlink or name another path"
                .into(),
        ),
        _ => Ok((dirfd, dir, name)),
    }
}

fn is_symlink(path: &Path) -> bool {
    std::fs::symlink_metadata(path).is_ok_and(|m| m.file_type().is_symlink())
}
