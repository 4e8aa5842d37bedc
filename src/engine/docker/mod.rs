//! The Docker engine: [`DockerEngine`] implements [`Engine`] over bollard,
//! against a daemon reached through a unix socket or TCP (plain or TLS with a
//! client certificate). It owns the translation between habitus requests and
//! Docker's wire types: the streamed build context, the build output stream
//! (lines, steps, cache hits, errors), throw-away containers for `command:`,
//! and registry credentials from `~/.docker/config.json`. Like the docker
//! CLI, it negotiates the API version on connect (unversioned `GET
//! /version`, the lower of the daemon's and bollard's) and sends every later
//! request under `/v{negotiated}/` (see `engine::transport`).
//!
//! The parts: `connect` (addresses, TLS, version negotiation, what the
//! daemon can do), `build` (classic and BuildKit builds), `progress` (the
//! classic builder's output stream as lines), `containers`, `networks`,
//! `images`, and `credentials` (`config.json`). The [`Engine`] impl here
//! only hands each call to its part.

mod build;
mod connect;
mod containers;
mod credentials;
mod images;
mod networks;
mod progress;
mod push;
pub use credentials::DEFAULT_HELPER_TIMEOUT as DEFAULT_CREDENTIAL_HELPER_TIMEOUT;
pub use push::push_hint;

use std::collections::{BTreeMap, HashMap};
use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use bollard::auth::DockerCredentials;
use bollard::errors::Error as BollardError;
use bollard::Docker;

pub use connect::{parse_api_version, DaemonInfo, MIN_API_VERSION};

use super::buildkit::Dialer;
use super::{
    BuildRequest, BuildSink, BuiltImage, ByteStream, ContainerRequest, Engine, EngineError,
    HistoryEntry, ImageDetails, ImageInfo, Leftover, LineSink, Pushed, RunRequest,
};

/// The daemon address used when neither `--host` nor DOCKER_HOST is set.
pub const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";

/// Where and how to reach the Docker daemon. The engine reads no DOCKER_*
/// variable: `config` resolves the flags and the environment, and fills
/// this in.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerOptions {
    /// `unix:///path`, `tcp://host:port` (also `http://`, `https://`);
    /// `None` means [`DEFAULT_HOST`].
    pub host: Option<String>,
    /// Talk TLS to a `tcp://` daemon (`--use-tls`, DOCKER_TLS_VERIFY).
    /// habitus always verifies the daemon's certificate against `ca.pem`
    /// when it talks TLS.
    pub use_tls: bool,
    /// Directory holding `ca.pem`, `cert.pem` and `key.pem`; needed to
    /// talk TLS (config fills in `~/.docker` when no flag or variable
    /// names one).
    pub cert_path: Option<PathBuf>,
}

impl DockerOptions {
    /// The address to connect to.
    pub fn address(&self) -> &str {
        self.host.as_deref().unwrap_or(DEFAULT_HOST)
    }

    /// The certificate directory, which TLS needs.
    pub fn cert_dir(&self) -> Result<&Path, EngineError> {
        self.cert_path.as_deref().ok_or_else(|| {
            EngineError::Tls(format!(
                "`{}` talks TLS, but no certificate directory is given (--certs, DOCKER_CERT_PATH)",
                self.address()
            ))
        })
    }
}

fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// An [`Engine`] backed by a Docker daemon.
#[derive(Clone)]
pub struct DockerEngine {
    docker: Docker,
    address: String,
    /// Registry credentials sent with builds (for `FROM` pulls), resolved
    /// on the first build (helpers run then, not for other commands).
    credentials: Arc<tokio::sync::OnceCell<Arc<HashMap<String, DockerCredentials>>>>,
    /// How long a credential helper may take (30 s by default).
    helper_timeout: std::time::Duration,
    /// Raw connections for BuildKit builds and their sessions.
    dialer: Dialer,
    /// The daemon's version and whether it builds with BuildKit, asked
    /// once, on the first BuildKit build.
    buildkit: Arc<tokio::sync::OnceCell<Result<(), EngineError>>>,
    /// Image id of a classic build → the images it committed for its
    /// instructions below it, bottom first (not those it took from the
    /// cache: they are the build's that made them, which may still be
    /// running and need them). On the
    /// containerd image store (Docker 25+ with `containerd-snapshotter`)
    /// these are not parents of the final image: `rmi` leaves them behind
    /// as `<none>` images that still hold every intermediate layer — a
    /// file a later instruction or a cleanup deleted among them.
    /// [`Engine::remove_image`] removes the untagged ones with the image
    /// (unless `noprune`), as the graph drivers' `rmi` prunes untagged
    /// parents.
    intermediates: Arc<std::sync::Mutex<HashMap<String, Vec<String>>>>,
}

/// Shows the address and the registries it holds credentials for, never
/// the credentials.
impl std::fmt::Debug for DockerEngine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let mut registries: Vec<&String> = self
            .credentials
            .get()
            .map(|all| all.keys().collect())
            .unwrap_or_default();
        registries.sort();
        f.debug_struct("DockerEngine")
            .field("address", &self.address)
            .field("registries", &registries)
            .finish_non_exhaustive()
    }
}

/// Sets its flag when dropped.
struct StopOnDrop(Arc<std::sync::atomic::AtomicBool>);

impl Drop for StopOnDrop {
    fn drop(&mut self) {
        self.0.store(true, std::sync::atomic::Ordering::SeqCst);
    }
}

impl DockerEngine {
    /// How long a credential helper may take before it is killed and the
    /// build fails naming it.
    pub fn with_credential_helper_timeout(mut self, timeout: std::time::Duration) -> Self {
        self.helper_timeout = timeout;
        self
    }

    /// The registry credentials of `config.json` and its helpers, resolved
    /// once (a helper that fails is an error naming it and the registry).
    pub(super) async fn credentials(
        &self,
    ) -> Result<Arc<HashMap<String, DockerCredentials>>, EngineError> {
        self.credentials
            .get_or_try_init(|| async {
                let config = credentials::load_config();
                let timeout = self.helper_timeout;
                // Set when this future is dropped (the build cancelled):
                // the helper running then is killed, so that habitus ends.
                let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
                let _stop_on_drop = StopOnDrop(Arc::clone(&stop));
                tokio::task::spawn_blocking(move || {
                    let run = move |helper: &str, action: &str, input: &str| {
                        credentials::run_helper(helper, action, input, timeout, &stop)
                    };
                    credentials::all_credentials(&config, &run)
                })
                .await
                .map_err(|e| EngineError::Api(format!("registry credentials: {e}")))?
                .map(Arc::new)
                .map_err(|e| EngineError::Credentials(e.to_string()))
            })
            .await
            .cloned()
    }
}

/// Joins an error and its sources into one line, skipping repeats.
fn error_chain(err: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current = Some(err);
    while let Some(e) = current {
        let text = e.to_string();
        if !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = e.source();
    }
    parts.join(": ")
}

/// A bollard error as the engine's: a failed connection says so.
fn api(err: BollardError) -> EngineError {
    // A transport failure mid-request: the daemon went away or its socket
    // closed. Say so, rather than only what hyper saw.
    let transport = matches!(
        err,
        BollardError::HyperResponseError { .. }
            | BollardError::HyperLegacyError { .. }
            | BollardError::IOError { .. }
            | BollardError::RequestTimeoutError
    );
    if transport {
        EngineError::Api(format!(
            "the connection to the Docker daemon failed: {}",
            error_chain(&err)
        ))
    } else {
        EngineError::Api(error_chain(&err))
    }
}

/// The daemon answered 404: no such image, container or network.
fn is_not_found(err: &BollardError) -> bool {
    matches!(
        err,
        BollardError::DockerResponseServerError {
            status_code: 404,
            ..
        }
    )
}

/// A container removal that failed because the container is gone, or
/// because another removal of it (a guard's, in the background) is under
/// way: either way it will not be left behind.
fn is_gone_or_going(err: &BollardError) -> bool {
    is_not_found(err)
        || matches!(
            err,
            BollardError::DockerResponseServerError { status_code: 409, message }
                if message.contains("already in progress")
        )
}

#[async_trait::async_trait]
impl Engine for DockerEngine {
    async fn ping(&self) -> Result<(), EngineError> {
        connect::ping(self).await
    }

    async fn build(&self, req: BuildRequest, sink: BuildSink) -> Result<BuiltImage, EngineError> {
        build::build(self, req, sink).await
    }

    async fn run(&self, req: RunRequest, sink: LineSink) -> Result<i64, EngineError> {
        containers::run(self, req, sink).await
    }

    async fn inspect_image(&self, image: &str) -> Result<Option<ImageInfo>, EngineError> {
        images::inspect_image(self, image).await
    }

    async fn remove_image(
        &self,
        image: &str,
        force: bool,
        noprune: bool,
    ) -> Result<(), EngineError> {
        images::remove_image(self, image, force, noprune).await
    }

    async fn tag_image(&self, image: &str, name: &str) -> Result<(), EngineError> {
        push::tag_image(self, image, name).await
    }

    async fn push_image(&self, name: &str, sink: LineSink) -> Result<Pushed, EngineError> {
        push::push_image(self, name, sink).await
    }

    async fn pull_image(&self, reference: &str, sink: LineSink) -> Result<bool, EngineError> {
        push::pull_image(self, reference, sink).await
    }

    async fn remove_containers_with_label(
        &self,
        label: &str,
        value: &str,
    ) -> Result<usize, EngineError> {
        containers::remove_containers_with_label(self, label, value).await
    }

    async fn create_network(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        subnet: Option<&str>,
    ) -> Result<String, EngineError> {
        networks::create_network(self, name, labels, subnet).await
    }

    async fn network_subnets(&self) -> Result<Vec<String>, EngineError> {
        networks::network_subnets(self).await
    }

    async fn list_labelled(&self, key: &str) -> Result<Vec<Leftover>, EngineError> {
        networks::list_labelled(self, key).await
    }

    async fn containers_on_network(&self, id: &str) -> Result<Vec<(String, bool)>, EngineError> {
        networks::containers_on_network(self, id).await
    }

    async fn remove_network(&self, name: &str) -> Result<(), EngineError> {
        networks::remove_network(self, name).await
    }

    async fn save_image(&self, image: &str) -> Result<ByteStream, EngineError> {
        images::save_image(self, image).await
    }

    async fn load_image(&self, archive: ByteStream, sink: LineSink) -> Result<(), EngineError> {
        images::load_image(self, archive, sink).await
    }

    async fn image_details(&self, image: &str) -> Result<Option<ImageDetails>, EngineError> {
        images::image_details(self, image).await
    }

    async fn image_history(&self, image: &str) -> Result<Vec<HistoryEntry>, EngineError> {
        images::image_history(self, image).await
    }

    async fn export_filesystem(
        &self,
        image: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<ByteStream, EngineError> {
        containers::export_filesystem(self, image, labels).await
    }

    async fn import_image(
        &self,
        rootfs: ByteStream,
        reference: &str,
        changes: Vec<String>,
        message: &str,
    ) -> Result<String, EngineError> {
        images::import_image(self, rootfs, reference, changes, message).await
    }

    async fn create_container(&self, req: ContainerRequest) -> Result<String, EngineError> {
        containers::create_container(self, req).await
    }

    async fn archive(&self, id: &str, path: &str) -> Result<ByteStream, EngineError> {
        containers::archive(self, id, path).await
    }

    async fn exec(&self, id: &str, cmd: Vec<String>, sink: LineSink) -> Result<i64, EngineError> {
        containers::exec(self, id, cmd, sink).await
    }

    async fn commit(&self, id: &str, config_of: &str) -> Result<String, EngineError> {
        containers::commit(self, id, config_of).await
    }

    async fn remove_container(&self, id: &str) -> Result<(), EngineError> {
        containers::remove_container(self, id).await
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use bollard::{Docker, API_DEFAULT_VERSION};

    use super::credentials::parse_docker_config;
    use super::DockerEngine;

    #[test]
    fn debug_output_never_shows_credentials() {
        let engine = DockerEngine {
            docker: Docker::connect_with_http("tcp://127.0.0.1:1", 1, API_DEFAULT_VERSION).unwrap(),
            address: "tcp://127.0.0.1:1".into(),
            credentials: Arc::new(tokio::sync::OnceCell::new_with(Some(Arc::new(
                parse_docker_config(r#"{"auths":{"reg.io":{"auth":"dXNlcjpodW50ZXIy"}}}"#),
            )))),
            helper_timeout: super::credentials::DEFAULT_HELPER_TIMEOUT,
            dialer: super::Dialer::tcp("tcp://127.0.0.1:1", "127.0.0.1:1"),
            buildkit: Arc::new(tokio::sync::OnceCell::new()),
            intermediates: Arc::default(),
        };
        assert_eq!(
            format!("{engine:?}"),
            r#"DockerEngine { address: "tcp://127.0.0.1:1", registries: ["reg.io"], .. }"#
        );
    }
}
