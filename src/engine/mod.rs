//! The container engine: the only module that talks to Docker (through
//! bollard, in [`docker`]). The runner sees only the [`Engine`] trait, so its
//! unit tests run against an in-memory fake (`fake::FakeEngine`, built for
//! tests only).

pub mod buildkit;
pub mod docker;
#[cfg(test)]
pub mod fake;
mod transport;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;

use crate::model::Builder;

impl EngineError {
    /// What the user can do about it, when habitus knows.
    pub fn hint(&self) -> Option<String> {
        match self {
            EngineError::Unreachable { .. } => Some("start it (`sudo systemctl start docker`, or `dockerd &`), or point `--host`/DOCKER_HOST at a running daemon".into()),
            EngineError::NoBuildKit { .. } => Some("build with `--builder legacy` (or `builder: legacy` for the step), or upgrade the daemon".into()),
            EngineError::BuildFailed { hint, .. } => hint.clone(),
            EngineError::Push { name, message } => docker::push_hint(name, message),
            _ => None,
        }
    }
}

/// Receives daemon output, one line at a time (without the newline).
pub type LineSink = Arc<dyn Fn(&str) + Send + Sync>;

/// What a build reports while it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BuildOutput<'a> {
    /// A line of the daemon's output (without the newline).
    Line(&'a str),
    /// The daemon starts an instruction, as `[3/7] RUN make` (or
    /// `[stage 1/2] FROM x` with BuildKit). The line that announced it
    /// follows as a [`BuildOutput::Line`].
    Instruction(&'a str),
}

/// Receives what a build reports.
pub type BuildSink = Arc<dyn Fn(BuildOutput<'_>) + Send + Sync>;

/// A build sink that passes the lines to `sink` and drops the rest.
pub fn lines_only(sink: LineSink) -> BuildSink {
    Arc::new(move |out: BuildOutput<'_>| {
        if let BuildOutput::Line(line) = out {
            sink(line);
        }
    })
}

/// The line sink the daemon's stream parsers write to: a line that
/// announces an instruction (`Step 3/7 : RUN make` from the classic
/// builder, `#5 [3/7] RUN make` from BuildKit) reaches `sink` as an
/// [`BuildOutput::Instruction`] first; every line then as a line.
fn announcing(sink: BuildSink) -> LineSink {
    Arc::new(move |line: &str| {
        if let Some(instruction) = instruction_of(line) {
            sink(BuildOutput::Instruction(&instruction));
        }
        sink(BuildOutput::Line(line));
    })
}

/// The instruction a line of build output announces, as `[3/7] RUN make`.
fn instruction_of(line: &str) -> Option<String> {
    if let Some(rest) = line.strip_prefix("Step ") {
        let (counter, instruction) = rest.split_once(" : ")?;
        return Some(format!("[{counter}] {instruction}"));
    }
    let (_, name) = line.strip_prefix('#')?.split_once(' ')?;
    buildkit::instruction(name).map(|_| name.to_string())
}

/// Errors from the engine.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    /// No daemon answers at the address tried.
    #[error("cannot connect to the Docker daemon at `{address}`: {message}")]
    Unreachable {
        /// What we tried (`unix:///var/run/docker.sock`, `tcp://…`).
        address: String,
        /// The underlying error.
        message: String,
    },
    /// The TLS settings (`--use-tls`, `--certs`, DOCKER_CERT_PATH) are unusable.
    #[error("docker TLS settings: {0}")]
    Tls(String),
    /// The daemon rejected or failed a build.
    #[error("{message}")]
    BuildFailed {
        /// The last Dockerfile instruction the daemon announced
        /// (`Step 3/5 : RUN make`), if any.
        instruction: Option<String>,
        /// The daemon's error message.
        message: String,
        /// What to change, when habitus knows.
        hint: Option<String>,
    },
    /// Reading the build context failed.
    #[error("build context `{path}`: {message}")]
    Context {
        /// The context directory.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// `--builder buildkit` against a daemon that cannot build with BuildKit.
    #[error("the Docker daemon at `{address}` ({daemon}) cannot build with BuildKit: it needs API 1.39 (Docker 18.09) or newer, on Linux")]
    NoBuildKit {
        /// The daemon address.
        address: String,
        /// `Docker 18.06.3, API 1.38, linux`.
        daemon: String,
    },
    /// Registry credentials could not be resolved (a credential helper
    /// failed); the text names the helper and the registry, never a
    /// credential.
    #[error("{0}")]
    Credentials(String),
    /// A push failed (`name` is the reference pushed); the message is the
    /// registry's, as the daemon relayed it. Its hint says what a 401,
    /// 403, 404 or timeout means.
    #[error("pushing `{name}`: {message}")]
    Push { name: String, message: String },
    /// Any other daemon API error.
    #[error("docker: {0}")]
    Api(String),
}

/// An image a registry now holds: the digest it serves for the name
/// pushed (its `Docker-Content-Digest`), and the manifest's size.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pushed {
    pub digest: String,
    pub size: u64,
}

/// Everything needed to build one image.
#[derive(Debug, Clone, Default)]
pub struct BuildRequest {
    /// The image reference to tag the result with (`name-uid:tag`).
    pub tag: String,
    /// The context directory (its `.dockerignore` is honoured).
    pub context_dir: PathBuf,
    /// Files added to the context tar (name in the tar, content). Used for
    /// the rewritten Dockerfile; nothing is written into `context_dir`.
    pub extra_files: Vec<(String, Vec<u8>)>,
    /// The Dockerfile's name inside the context tar.
    pub dockerfile: String,
    pub target: Option<String>,
    pub build_args: BTreeMap<String, String>,
    pub no_cache: bool,
    /// Remove intermediate containers after a successful build.
    pub rm: bool,
    /// Always remove intermediate containers.
    pub force_rm: bool,
    /// `networkmode` for RUN instructions.
    pub network_mode: Option<String>,
    /// Memory limit in bytes.
    pub memory: Option<i64>,
    pub cpuset_cpus: Option<String>,
    pub cpu_shares: Option<i64>,
    /// Labels set on the image (`habitus.build`, `habitus.step`).
    pub labels: BTreeMap<String, String>,
    /// The builder that runs the Dockerfile.
    pub builder: Builder,
    /// Images whose layers the build may reuse (`cachefrom`), pulled
    /// beforehand by the caller.
    pub cache_from: Vec<String>,
    /// Secrets offered to `RUN --mount=type=secret,id=NAME` (BuildKit).
    pub mounts: MountSecrets,
    /// The SSH agent socket offered to `RUN --mount=type=ssh` (BuildKit).
    pub ssh_agent: Option<PathBuf>,
}

/// Reports one secret request of a build: the id, and whether it was served.
pub type MountLog = Arc<dyn Fn(&str, bool) + Send + Sync>;

/// A value a BuildKit build may mount (`RUN --mount=type=secret`). The
/// engine only reads its bytes, to answer BuildKit's request; whoever
/// owns the value keeps it in memory that is zeroed on drop.
pub trait MountValue: Send + Sync {
    /// The bytes to send; never logged.
    fn bytes(&self) -> &[u8];
}

/// The secrets a BuildKit build may mount, by name.
#[derive(Clone, Default)]
pub struct MountSecrets {
    pub secrets: BTreeMap<String, Arc<dyn MountValue>>,
    /// Called for every request, served or refused.
    pub on_fetch: Option<MountLog>,
}

/// Names only, never values.
impl std::fmt::Debug for MountSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MountSecrets")
            .field("names", &self.secrets.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

/// What a successful build produced.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BuiltImage {
    /// `sha256:…`.
    pub id: String,
    /// Instructions the daemon reported as `Using cache`.
    pub cached_steps: usize,
    /// Instructions in total (`Step N/M`).
    pub total_steps: usize,
}

/// How a guard removes its container.
type Removal = Box<dyn FnOnce(String) -> futures_util::future::BoxFuture<'static, ()> + Send>;

/// Removes a container when dropped while still armed: if the future that
/// uses the container is dropped (a cancelled step), the removal is spawned
/// onto the current runtime.
pub struct ContainerGuard {
    id: Option<String>,
    remove: Option<Removal>,
}

impl ContainerGuard {
    /// Guards container `id`, removed by `remove` if the guard drops armed.
    pub fn new<F, Fut>(id: &str, remove: F) -> ContainerGuard
    where
        F: FnOnce(String) -> Fut + Send + 'static,
        Fut: std::future::Future<Output = ()> + Send + 'static,
    {
        ContainerGuard {
            id: Some(id.to_string()),
            remove: Some(Box::new(move |id| Box::pin(remove(id)))),
        }
    }

    /// Guards container `id` of `engine`.
    pub fn arm(engine: Arc<dyn Engine>, id: &str) -> ContainerGuard {
        ContainerGuard::new(id, move |id| async move {
            let _ = engine.remove_container(&id).await;
        })
    }

    /// The caller removes the container itself from here on.
    pub fn disarm(mut self) {
        self.id = None;
    }

    /// The container's id, which the caller now removes itself (`None`
    /// once taken).
    pub fn take(&mut self) -> Option<String> {
        self.id.take()
    }
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        let (Some(id), Some(remove)) = (self.id.take(), self.remove.take()) else {
            return;
        };
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(remove(id));
        }
    }
}

/// Facts about an image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageInfo {
    pub id: String,
    pub size: i64,
    pub layers: usize,
    pub labels: BTreeMap<String, String>,
}

/// A network or a container a habitus build made, as the daemon lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Leftover {
    /// `network` or `container`.
    pub kind: &'static str,
    pub id: String,
    pub name: String,
    pub labels: BTreeMap<String, String>,
    /// When the daemon created it.
    pub created: Option<std::time::SystemTime>,
    /// A container that runs (networks: false).
    pub running: bool,
}

/// A command to run in a fresh container of an image.
#[derive(Debug, Clone, Default)]
pub struct RunRequest {
    pub image: String,
    /// Run with `sh -c <command>`.
    pub command: String,
    pub labels: BTreeMap<String, String>,
    pub network_mode: Option<String>,
}

/// A container to create from an image.
#[derive(Debug, Clone, Default)]
pub struct ContainerRequest {
    pub image: String,
    pub labels: BTreeMap<String, String>,
    /// `false`: the container is only created (never started), for reading
    /// files with [`Engine::archive`]; the image needs no shell.
    /// `true`: its process is `/bin/sh` waiting on an open stdin, so that it
    /// stays up for [`Engine::exec`] until removed; the image needs only
    /// `/bin/sh`.
    pub keep_alive: bool,
}

/// What habitus asks of a container engine. No method has a default body:
/// every engine says what each one does, so a missing operation is a
/// compile error rather than a failure at run time.
#[async_trait::async_trait]
pub trait Engine: Send + Sync {
    /// Checks that the daemon answers.
    async fn ping(&self) -> Result<(), EngineError>;

    /// Builds an image, streaming the daemon's output to `sink`. Dropping
    /// the future cancels the build.
    async fn build(&self, req: BuildRequest, sink: BuildSink) -> Result<BuiltImage, EngineError>;

    /// Runs `sh -c command` in a new container of `req.image`, streams its
    /// output to `sink`, removes the container and returns the exit code.
    /// Dropping the future must not leave the container behind: callers
    /// also sweep by label on teardown.
    async fn run(&self, req: RunRequest, sink: LineSink) -> Result<i64, EngineError>;

    /// Inspects an image; `Ok(None)` if it does not exist.
    async fn inspect_image(&self, image: &str) -> Result<Option<ImageInfo>, EngineError>;

    /// Removes an image by reference or id.
    async fn remove_image(
        &self,
        image: &str,
        force: bool,
        noprune: bool,
    ) -> Result<(), EngineError>;

    /// Adds the name `name` (`registry/repo:tag`) to `image`.
    async fn tag_image(&self, image: &str, name: &str) -> Result<(), EngineError>;

    /// Pushes `name` with the credentials of its registry, streaming each
    /// layer's progress to `sink`; returns the digest the registry serves
    /// for it. Dropping the future cancels the push.
    async fn push_image(&self, name: &str, sink: LineSink) -> Result<Pushed, EngineError>;

    /// Pulls `reference` with the credentials of its registry;
    /// `Ok(false)` when the registry has no such image.
    async fn pull_image(&self, reference: &str, sink: LineSink) -> Result<bool, EngineError>;

    /// Removes (forcibly) every container that carries `label=value`;
    /// returns how many were removed.
    async fn remove_containers_with_label(
        &self,
        label: &str,
        value: &str,
    ) -> Result<usize, EngineError>;

    // Containers for artifacts and cleanup.

    /// Creates a container (see [`ContainerRequest::keep_alive`]) and, when
    /// it is to stay alive, starts it; returns its id.
    async fn create_container(&self, req: ContainerRequest) -> Result<String, EngineError>;

    /// Streams a tar archive of `path` inside container `id` (the archive
    /// API, as `docker cp` reads it): a file gives one entry named after it,
    /// a directory its tree under its own name. A symlink at `path` is
    /// archived as the symlink.
    async fn archive(&self, id: &str, path: &str) -> Result<ByteStream, EngineError>;

    /// Runs `cmd` as root in the running container `id`, streams its output
    /// to `sink` and returns its exit code.
    async fn exec(&self, id: &str, cmd: Vec<String>, sink: LineSink) -> Result<i64, EngineError>;

    /// Commits container `id` as a new untagged image whose config (Env,
    /// Cmd, Entrypoint, WorkingDir, User, Labels, ExposedPorts, Volumes…)
    /// is that of image `config_of`, not the container's; returns its id.
    async fn commit(&self, id: &str, config_of: &str) -> Result<String, EngineError>;

    /// Removes (forcibly) one container; a container that is already gone
    /// is not an error.
    async fn remove_container(&self, id: &str) -> Result<(), EngineError>;

    // Networks, for the secrets server, and what builds left behind.

    /// Creates a bridge network `name` with `labels` (on `subnet` when
    /// given, e.g. `10.213.0.16/28`) and returns its gateway address (from
    /// its IPAM config), e.g. `172.18.0.1`.
    async fn create_network(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        subnet: Option<&str>,
    ) -> Result<String, EngineError>;

    /// The IPv4 subnets of every network the daemon has (`172.17.0.0/16`).
    async fn network_subnets(&self) -> Result<Vec<String>, EngineError>;

    /// Networks and containers that carry the label `key`, whatever its
    /// value: what builds left behind is found by `habitus.build`.
    async fn list_labelled(&self, key: &str) -> Result<Vec<Leftover>, EngineError>;

    /// Containers (in any state) attached to the network whose id is
    /// exactly `id` (never one whose id merely starts with it, nor one
    /// named so): id and whether it runs.
    async fn containers_on_network(&self, id: &str) -> Result<Vec<(String, bool)>, EngineError>;

    /// Removes network `name` (or id); a network that does not exist is
    /// not an error.
    async fn remove_network(&self, name: &str) -> Result<(), EngineError>;

    // Image transfer, used by `squash`.

    /// Streams `docker save IMAGE` (`GET /images/{name}/get`).
    async fn save_image(&self, image: &str) -> Result<ByteStream, EngineError>;

    /// Loads an image archive (`POST /images/load`), streaming `archive`
    /// and the daemon's messages to `sink`.
    async fn load_image(&self, archive: ByteStream, sink: LineSink) -> Result<(), EngineError>;

    /// Layers, config and platform of an image; `Ok(None)` if it does not
    /// exist.
    async fn image_details(&self, image: &str) -> Result<Option<ImageDetails>, EngineError>;

    /// The image's history, newest first.
    async fn image_history(&self, image: &str) -> Result<Vec<HistoryEntry>, EngineError>;

    /// Streams the merged filesystem of `image`: the export of a created,
    /// never started container labelled with `labels`. The caller removes
    /// the container afterwards with `remove_containers_with_label`; it is
    /// also removed when the stream is dropped.
    async fn export_filesystem(
        &self,
        image: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<ByteStream, EngineError>;

    /// Creates a one-layer image tagged `reference` from a filesystem tar
    /// (`POST /images/create?fromSrc=-`), applying Dockerfile-style
    /// `changes` (`CMD […]`, `ENV k=v`, …); returns the image id.
    async fn import_image(
        &self,
        rootfs: ByteStream,
        reference: &str,
        changes: Vec<String>,
        message: &str,
    ) -> Result<String, EngineError>;
}

/// A stream of bytes to or from the daemon (an image archive, a filesystem
/// tar).
pub type ByteStream =
    std::pin::Pin<Box<dyn futures_util::Stream<Item = Result<bytes::Bytes, EngineError>> + Send>>;

/// What `squash` needs to know about an image beyond [`ImageInfo`].
#[derive(Debug, Clone, PartialEq)]
pub struct ImageDetails {
    /// `sha256:…`.
    pub id: String,
    /// `rootfs.diff_ids`, bottom layer first.
    pub diff_ids: Vec<String>,
    /// The runtime config (Env, Cmd, Entrypoint, …) as the daemon reports
    /// it, in the Engine API's JSON shape.
    pub config: serde_json::Value,
    pub author: String,
    pub architecture: String,
    pub os: String,
}

/// One entry of an image's history, newest first as the daemon lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HistoryEntry {
    /// The id of the image this instruction produced, or `<missing>`.
    pub id: String,
    /// Tags pointing at that image.
    pub tags: Vec<String>,
    pub created_by: String,
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use super::{announcing, instruction_of, BuildOutput, BuildSink};

    #[test]
    fn both_builders_announce_instructions_in_one_shape() {
        assert_eq!(
            instruction_of("Step 3/7 : RUN make").as_deref(),
            Some("[3/7] RUN make")
        );
        assert_eq!(
            instruction_of("#5 [2/3] RUN make").as_deref(),
            Some("[2/3] RUN make")
        );
        assert_eq!(
            instruction_of("#2 [build 1/2] FROM x").as_deref(),
            Some("[build 1/2] FROM x")
        );
        assert_eq!(instruction_of("#1 [internal] load build definition"), None);
        assert_eq!(instruction_of(" ---> Running in 0123"), None);
    }

    #[test]
    fn an_instruction_comes_before_the_line_that_announced_it() {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let kept = Arc::clone(&seen);
        let sink: BuildSink = Arc::new(move |out: BuildOutput<'_>| {
            kept.lock().unwrap().push(format!("{out:?}"));
        });
        let lines = announcing(sink);
        lines("Step 1/2 : FROM base");
        lines(" ---> abc");
        assert_eq!(
            *seen.lock().unwrap(),
            [
                r#"Instruction("[1/2] FROM base")"#,
                r#"Line("Step 1/2 : FROM base")"#,
                r#"Line(" ---> abc")"#
            ]
        );
    }
}
