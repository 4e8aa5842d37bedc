//! The Docker engine: [`DockerEngine`] implements [`Engine`] over bollard,
//! against a daemon reached through a unix socket or TCP (plain or TLS with a
//! client certificate). It owns the translation between habitus requests and
//! Docker's wire types: the streamed build context, the build output stream
//! (lines, steps, cache hits, errors), throw-away containers for `command:`,
//! and registry credentials from `~/.docker/config.json`. Like the docker
//! CLI, it negotiates the API version on connect (unversioned `GET
//! /version`, the lower of the daemon's and bollard's) and sends every later
//! request under `/v{negotiated}/` (see `engine::transport`).

use std::collections::{BTreeMap, HashMap};
use std::error::Error as StdError;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::engine::Leftover;

use bollard::auth::DockerCredentials;
use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::{
    BuildInfo, ContainerConfig, ContainerCreateBody, ContainerSummaryStateEnum, ExecConfig,
    HostConfig, Ipam, IpamConfig, NetworkCreateRequest,
};
use bollard::query_parameters::{
    AttachContainerOptions, BuildImageOptions, CommitContainerOptions, CreateContainerOptions,
    DownloadFromContainerOptions, ListContainersOptions, ListNetworksOptions,
    RemoveContainerOptions, RemoveImageOptions, WaitContainerOptions,
};
use bollard::query_parameters::{CreateImageOptions, ImportImageOptions};
use bollard::{body_try_stream, Docker};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::buildkit::{self, Dialer};
use super::transport::Pool;
use super::{
    BuildRequest, BuiltImage, ContainerRequest, Engine, EngineError, ImageInfo, LineSink,
    RunRequest,
};
use super::{Builder, ByteStream, HistoryEntry, ImageDetails};

/// The daemon address used when neither `--host` nor DOCKER_HOST is set.
pub const DEFAULT_HOST: &str = "unix:///var/run/docker.sock";

/// How long `connect` waits for the daemon to answer the first ping.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// bollard applies one timeout to every request, measured until the response
/// headers arrive. The classic builder sends its first byte only after it has
/// received the whole context, and a container wait may last as long as the
/// command runs, so the timeout must be longer than any build: a day.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

/// Size of one chunk of the streamed build context.
const CONTEXT_CHUNK: usize = 64 * 1024;

/// Chunks of build context in flight between the tar writer and the socket.
const CONTEXT_CHUNKS_IN_FLIGHT: usize = 8;

/// Where and how to reach the Docker daemon. The command line fills it from
/// its flags on top of [`DockerOptions::from_env`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DockerOptions {
    /// `unix:///path`, `tcp://host:port` (also `http://`, `https://`);
    /// `None` means [`DEFAULT_HOST`].
    pub host: Option<String>,
    /// Talk TLS to a `tcp://` daemon (`--use-tls`).
    pub use_tls: bool,
    /// Talk TLS and verify the daemon (DOCKER_TLS_VERIFY). habitus always
    /// verifies the daemon's certificate against `ca.pem` when it talks TLS,
    /// so this implies `use_tls`.
    pub tls_verify: bool,
    /// Directory holding `ca.pem`, `cert.pem` and `key.pem`; `None` means
    /// `~/.docker`.
    pub cert_path: Option<PathBuf>,
}

impl DockerOptions {
    /// Reads DOCKER_HOST, DOCKER_TLS_VERIFY (any non-empty value turns TLS
    /// on) and DOCKER_CERT_PATH as Docker's own tools do.
    pub fn from_env() -> DockerOptions {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> DockerOptions {
        let non_empty = |name: &str| lookup(name).filter(|v| !v.is_empty());
        let tls_verify = non_empty("DOCKER_TLS_VERIFY").is_some();
        DockerOptions {
            host: non_empty("DOCKER_HOST"),
            use_tls: tls_verify,
            tls_verify,
            cert_path: non_empty("DOCKER_CERT_PATH").map(PathBuf::from),
        }
    }

    /// The address to connect to.
    pub fn address(&self) -> &str {
        self.host.as_deref().unwrap_or(DEFAULT_HOST)
    }

    /// The certificate directory: `cert_path`, else `~/.docker`.
    pub fn cert_dir(&self) -> PathBuf {
        match &self.cert_path {
            Some(path) => path.clone(),
            None => home_dir().unwrap_or_default().join(".docker"),
        }
    }

    fn tls(&self) -> bool {
        self.use_tls || self.tls_verify
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
    /// Registry credentials sent with builds (for `FROM` pulls).
    credentials: Arc<HashMap<String, DockerCredentials>>,
    /// Raw connections for BuildKit builds and their sessions.
    dialer: Dialer,
    /// The daemon's version and whether it builds with BuildKit, asked
    /// once, on the first BuildKit build.
    buildkit: Arc<tokio::sync::OnceCell<Result<(), EngineError>>>,
    /// Image id of a classic build → the images of its instructions below
    /// it (committed by it or taken from the cache), bottom first. On the
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
        let mut registries: Vec<&String> = self.credentials.keys().collect();
        registries.sort();
        f.debug_struct("DockerEngine")
            .field("address", &self.address)
            .field("registries", &registries)
            .finish_non_exhaustive()
    }
}

impl DockerEngine {
    /// Connects to the daemon, checks that it answers and settles on the
    /// highest API version both sides speak, as the docker CLI does: the
    /// ping and `GET /version` go out unversioned, every later request under
    /// `/v{negotiated}/`.
    pub async fn connect(opts: &DockerOptions) -> Result<DockerEngine, EngineError> {
        let address = opts.address().to_string();
        let unreachable = |message: String| EngineError::Unreachable {
            address: address.clone(),
            message,
        };
        let (pool, dialer) = open(opts, &address)?;
        let timeout = REQUEST_TIMEOUT.as_secs();
        let probe = pool
            .docker(None, timeout)
            .map_err(|err| unreachable(error_chain(&err)))?;
        match tokio::time::timeout(CONNECT_TIMEOUT, probe.ping()).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => {
                let tls = match tls_failure(&err) {
                    Some(tls) => Some(tls),
                    None => dialer.probe_tls().await,
                };
                if let Some(tls) = tls {
                    return Err(EngineError::Tls(describe_tls_failure(
                        &address,
                        &opts.cert_dir(),
                        &tls,
                    )));
                }
                return Err(unreachable(error_chain(&err)));
            }
            Err(_) => {
                return Err(unreachable(format!(
                    "no answer within {} seconds",
                    CONNECT_TIMEOUT.as_secs()
                )))
            }
        }
        let negotiated = probe
            .negotiate_version()
            .await
            .map_err(|err| unreachable(format!("API version negotiation: {}", error_chain(&err))))?
            .client_version();
        let (major, minor) = MIN_API_VERSION;
        if (
            negotiated.major_version as u64,
            negotiated.minor_version as u64,
        ) < MIN_API_VERSION
        {
            return Err(EngineError::Api(format!(
                "the daemon at `{address}` speaks API `{negotiated}`; habitus needs API `{major}.{minor}` (Docker 18.06) or newer"
            )));
        }
        let docker = pool
            .docker(Some(&negotiated), timeout)
            .map_err(|err| unreachable(error_chain(&err)))?;
        Ok(DockerEngine {
            docker,
            address,
            credentials: Arc::new(docker_config_credentials()),
            dialer,
            buildkit: Arc::new(tokio::sync::OnceCell::new()),
            intermediates: Arc::default(),
        })
    }

    /// The daemon address this engine talks to.
    pub fn address(&self) -> &str {
        &self.address
    }
}

/// The oldest Engine API habitus speaks: every build sends `version`
/// (the builder to use), which API 1.38 (Docker 18.06) introduced.
pub const MIN_API_VERSION: (u64, u64) = (1, 38);

/// What `habitus version --verbose` and the tests show of a daemon.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DaemonInfo {
    /// `26.1.5+dfsg1`.
    pub version: String,
    /// The newest API the daemon speaks: `1.45`.
    pub api_version: String,
    /// The oldest API the daemon accepts: `1.24`.
    pub min_api_version: String,
    /// The API version settled on at connect: the lower of the daemon's
    /// and the client library's.
    pub negotiated: String,
    /// `overlayfs`, `fuse-overlayfs`, …
    pub storage_driver: String,
    /// `io.containerd.snapshotter.v1` when images live in containerd's
    /// store (the storage driver is then a snapshotter), else empty.
    pub driver_type: String,
    /// Whether the daemon can build with BuildKit.
    pub buildkit: bool,
}

/// Parses `1.45` into `(1, 45)`.
pub fn parse_api_version(version: &str) -> Option<(u64, u64)> {
    let (major, minor) = version.trim().split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

impl DockerEngine {
    /// Every container (running or not) that `filters` select.
    async fn all_containers(
        &self,
        filters: HashMap<String, Vec<String>>,
    ) -> Result<Vec<bollard::models::ContainerSummary>, EngineError> {
        self.docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(api)
    }

    /// Asks the daemon for its versions, storage and BuildKit support.
    pub async fn daemon_info(&self) -> Result<DaemonInfo, EngineError> {
        let version = self.docker.version().await.map_err(api)?;
        let info = self.docker.info().await.map_err(api)?;
        let api_version = version.api_version.unwrap_or_default();
        let os = version.os.unwrap_or_default();
        let driver_type = info
            .driver_status
            .unwrap_or_default()
            .into_iter()
            .find_map(|pair| match pair.as_slice() {
                [label, value] if label == "driver-type" => Some(value.clone()),
                _ => None,
            })
            .unwrap_or_default();
        Ok(DaemonInfo {
            buildkit: buildkit::supports(&api_version) && (os.is_empty() || os == "linux"),
            version: version.version.unwrap_or_default(),
            api_version,
            min_api_version: version.min_api_version.unwrap_or_default(),
            negotiated: self.docker.client_version().to_string(),
            storage_driver: info.driver.unwrap_or_default(),
            driver_type,
        })
    }
}

/// Creates the connection pool for bollard's requests and the dialer for
/// BuildKit's own connections, both opening connections the same way (no
/// I/O yet, except reading the TLS files).
fn open(opts: &DockerOptions, address: &str) -> Result<(Pool, Dialer), EngineError> {
    let dialer = if let Some(path) = address.strip_prefix("unix://") {
        if opts.tls() {
            return Err(EngineError::Tls(format!(
                "TLS needs a `tcp://` host, not `{address}`"
            )));
        }
        Dialer::unix(address, Path::new(path))
    } else if let Some(rest) = address
        .strip_prefix("tcp://")
        .or_else(|| address.strip_prefix("http://"))
        .or_else(|| address.strip_prefix("https://"))
    {
        if opts.tls() || address.starts_with("https://") {
            Dialer::tls(address, rest, &tls_files(&opts.cert_dir())?)?
        } else {
            Dialer::tcp(address, rest)
        }
    } else {
        return Err(EngineError::Unreachable {
            address: address.to_string(),
            message: "unsupported address: use `unix:///path` or `tcp://host:port`".to_string(),
        });
    };
    // The `Host` header: what the docker CLI sends.
    let authority = match address.split_once("://") {
        Some(("unix", _)) | None => "api.moby.localhost",
        Some((_, host_port)) => host_port,
    };
    Ok((Pool::new(dialer.clone(), authority), dialer))
}

/// Checks that `ca.pem`, `cert.pem` and `key.pem` exist in `dir` and parse,
/// so a wrong directory is reported before any handshake.
fn tls_files(dir: &Path) -> Result<[PathBuf; 3], EngineError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let ca = dir.join("ca.pem");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    for path in [&ca, &cert] {
        let certs: Vec<_> = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|err| {
                EngineError::Tls(format!(
                    "cannot read a certificate from `{}`: {err}",
                    path.display()
                ))
            })?;
        if certs.is_empty() {
            return Err(EngineError::Tls(format!(
                "no certificate in `{}`",
                path.display()
            )));
        }
    }
    PrivateKeyDer::from_pem_file(&key).map_err(|err| {
        EngineError::Tls(format!(
            "cannot read a private key from `{}`: {err}",
            key.display()
        ))
    })?;
    Ok([ca, cert, key])
}

/// `2026-11-30T22:23:10.149679216Z` (or with a `+01:00` offset) as a time.
fn parse_rfc3339(text: &str) -> Option<std::time::SystemTime> {
    let (date, time) = text.split_once('T')?;
    let mut d = date.splitn(3, '-').map(str::parse::<i64>);
    let (y, m, day) = (d.next()?.ok()?, d.next()?.ok()?, d.next()?.ok()?);
    let (clock, offset) = match time.find(['Z', '+', '-']) {
        Some(at) => time.split_at(at),
        None => (time, "Z"),
    };
    let mut t = clock
        .split('.')
        .next()?
        .splitn(3, ':')
        .map(str::parse::<i64>);
    let (hh, mm, ss) = (t.next()?.ok()?, t.next()?.ok()?, t.next()?.ok()?);
    let offset_secs = match offset {
        "Z" => 0,
        o => {
            let sign = if o.starts_with('-') { -1 } else { 1 };
            let (oh, om) = o[1..].split_once(':')?;
            sign * (oh.parse::<i64>().ok()? * 3600 + om.parse::<i64>().ok()? * 60)
        }
    };
    // Days from the civil date (Howard Hinnant's algorithm).
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let doy = (153 * (m + if m > 2 { -3 } else { 9 }) + 2) / 5 + day - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    let secs = days * 86_400 + hh * 3600 + mm * 60 + ss - offset_secs;
    Some(std::time::UNIX_EPOCH + Duration::from_secs(u64::try_from(secs).ok()?))
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

/// The TLS error behind a failed request, if that is what failed it.
fn tls_failure(err: &(dyn StdError + 'static)) -> Option<rustls::Error> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls.clone());
        }
        // `io::Error::source` skips the error it wraps; look at it directly.
        if let Some(tls) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls.clone());
        }
        current = e.source();
    }
    None
}

/// Says which side of a failed handshake to look at.
fn describe_tls_failure(address: &str, cert_dir: &Path, err: &rustls::Error) -> String {
    use rustls::AlertDescription;
    match err {
        rustls::Error::AlertReceived(
            AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateRequired
            | AlertDescription::CertificateUnknown
            | AlertDescription::AccessDenied,
        ) => format!(
            "the daemon at `{address}` did not accept the client certificate `{}`: {err}",
            cert_dir.join("cert.pem").display()
        ),
        rustls::Error::InvalidCertificate(_) => format!(
            "the certificate of the daemon at `{address}` is not trusted by `{}`: {err}",
            cert_dir.join("ca.pem").display()
        ),
        _ => format!("the TLS handshake with `{address}` failed: {err}"),
    }
}

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
        self.docker
            .ping()
            .await
            .map(|_| ())
            .map_err(|err| EngineError::Unreachable {
                address: self.address.clone(),
                message: error_chain(&err),
            })
    }

    async fn build(
        &self,
        mut req: BuildRequest,
        sink: LineSink,
    ) -> Result<BuiltImage, EngineError> {
        let options = build_options(&req)?;
        if req.builder == Builder::BuildKit {
            self.check_buildkit().await?;
            // The daemon asks the build's session for the context and the
            // Dockerfile; no tar is written.
            let version = self.docker.client_version().to_string();
            let outcome = buildkit::build(
                &self.dialer,
                &version,
                Arc::clone(&self.credentials),
                &req,
                &*sink,
            )
            .await?;
            let id = self.image_id(outcome.image_id, &req.tag, None).await?;
            return Ok(BuiltImage {
                id,
                cached_steps: outcome.cached_steps,
                total_steps: outcome.total_steps,
            });
        }

        // The context is written by a blocking thread into a bounded channel
        // that feeds the request body, so memory use does not depend on the
        // context's size. If the build future is dropped, the receiver goes
        // away, the writer stops at its next chunk, and the daemon sees the
        // connection close and cancels the build.
        let (tx, mut rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(CONTEXT_CHUNKS_IN_FLIGHT);
        let receiver_gone = Arc::new(AtomicBool::new(false));
        let writer = {
            let dir = req.context_dir.clone();
            let extra = std::mem::take(&mut req.extra_files);
            let receiver_gone = receiver_gone.clone();
            let tx = tx.clone();
            tokio::task::spawn_blocking(move || {
                let mut out = ChannelWriter {
                    tx: tx.clone(),
                    buf: Vec::with_capacity(CONTEXT_CHUNK),
                    receiver_gone,
                };
                let result = crate::context::write_tar(&dir, &extra, &mut out)
                    .map_err(|err| err.to_string())
                    .and_then(|()| out.flush().map_err(|err| err.to_string()));
                if let Err(message) = &result {
                    // Abort the request body: a truncated tar must never
                    // reach the daemon as if it were the whole context.
                    let _ = tx.blocking_send(Err(std::io::Error::other(message.clone())));
                }
                result
            })
        };
        drop(tx);
        let body = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));

        let mut progress = BuildProgress::default();
        let mut failure = None;
        let mut fresh = FreshImages {
            docker: self.docker.clone(),
            ids: Vec::new(),
            armed: true,
        };
        {
            let credentials =
                (!self.credentials.is_empty()).then(|| HashMap::clone(&self.credentials));
            let mut stream =
                self.docker
                    .build_image(options, credentials, Some(body_try_stream(body)));
            while let Some(item) = stream.next().await {
                match item {
                    Ok(info) => {
                        if let Err(err) = progress.feed(&info, &*sink) {
                            failure = Some(err);
                            break;
                        }
                    }
                    Err(
                        BollardError::DockerResponseServerError { message, .. }
                        | BollardError::DockerStreamError { error: message },
                    ) => {
                        failure = Some(EngineError::BuildFailed {
                            instruction: progress.last_step.clone(),
                            message,
                        });
                        break;
                    }
                    Err(err) => {
                        failure = Some(api(err));
                        break;
                    }
                }
            }
        }
        progress.finish(&*sink);

        context_written(writer, &receiver_gone, failure.is_some(), &req).await?;
        if let Some(err) = failure {
            // The daemon keeps the images of the instructions that did
            // succeed; they are this build's and nobody's cache yet.
            fresh.ids = std::mem::take(&mut progress.fresh);
            fresh.remove_now().await;
            return Err(err);
        }
        fresh.disarm();
        let id = self
            .image_id(
                progress.image_id.clone(),
                &req.tag,
                progress.last_step.clone(),
            )
            .await?;
        let below: Vec<String> = progress
            .chain
            .iter()
            .filter(|fresh| !id.trim_start_matches("sha256:").starts_with(fresh.as_str()))
            .cloned()
            .collect();
        if !below.is_empty() {
            // Keyed by the id inspect gives (on the containerd store the
            // build stream's id is the config's, inspect's the manifest's),
            // which is what `remove_image` looks up.
            let key = match self.docker.inspect_image(&id).await {
                Ok(inspected) => inspected.id.unwrap_or_else(|| id.clone()),
                Err(_) => id.clone(),
            };
            self.intermediates
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(key, below);
        }
        Ok(BuiltImage {
            id,
            cached_steps: progress.cached,
            total_steps: progress.total,
        })
    }

    async fn run(&self, req: RunRequest, sink: LineSink) -> Result<i64, EngineError> {
        let body = ContainerCreateBody {
            image: Some(req.image.clone()),
            cmd: Some(vec!["sh".into(), "-c".into(), req.command.clone()]),
            labels: Some(req.labels.clone().into_iter().collect()),
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            host_config: Some(HostConfig {
                network_mode: req.network_mode.clone(),
                ..Default::default()
            }),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(None::<CreateContainerOptions>, body)
            .await
            .map_err(api)?;
        let mut guard = ContainerGuard {
            docker: self.docker.clone(),
            id: Some(created.id.clone()),
        };
        let result = self.run_created(&created.id, &sink).await;
        // Remove it now rather than from the guard, so that the container
        // is gone when `run` returns.
        let id = guard.id.take().unwrap_or_default();
        let removed = self
            .docker
            .remove_container(&id, Some(force_remove()))
            .await;
        let code = result?;
        match removed {
            Err(err) if !is_not_found(&err) => Err(api(err)),
            _ => Ok(code),
        }
    }

    async fn inspect_image(&self, image: &str) -> Result<Option<ImageInfo>, EngineError> {
        let inspect = match self.docker.inspect_image(image).await {
            Ok(inspect) => inspect,
            Err(err) if is_not_found(&err) => return Ok(None),
            Err(err) => return Err(api(err)),
        };
        Ok(Some(ImageInfo {
            id: inspect.id.unwrap_or_default(),
            size: inspect.size.unwrap_or_default(),
            layers: inspect
                .root_fs
                .and_then(|fs| fs.layers)
                .map_or(0, |layers| layers.len()),
            labels: inspect
                .config
                .and_then(|c| c.labels)
                .unwrap_or_default()
                .into_iter()
                .collect(),
        }))
    }

    async fn remove_image(
        &self,
        image: &str,
        force: bool,
        noprune: bool,
    ) -> Result<(), EngineError> {
        let options = RemoveImageOptions {
            force,
            noprune,
            platforms: None,
        };
        // The key the build recorded its intermediates under: the id
        // inspect gives, or `image` itself when it is an id of an image
        // that is already gone (a squash moved its tag away).
        let key = match self.docker.inspect_image(image).await {
            Ok(inspected) => inspected.id,
            Err(_) => image.starts_with("sha256:").then(|| image.to_string()),
        };
        match self.docker.remove_image(image, Some(options), None).await {
            Ok(_) => {}
            // Already gone: its intermediates may still be there.
            Err(err) if is_not_found(&err) => {}
            Err(err) => return Err(api(err)),
        }
        let below = key.and_then(|key| {
            self.intermediates
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .remove(&key)
        });
        if let Some(below) = below.filter(|_| !noprune) {
            // Untagged ones only, newest first; on a graph driver the
            // daemon has already pruned them.
            remove_fresh(&self.docker, below).await;
        }
        Ok(())
    }

    async fn remove_containers_with_label(
        &self,
        label: &str,
        value: &str,
    ) -> Result<usize, EngineError> {
        let filters = HashMap::from([("label".to_string(), vec![format!("{label}={value}")])]);
        let containers = self.all_containers(filters).await?;
        let mut removed = 0;
        for id in containers.into_iter().filter_map(|c| c.id) {
            match self
                .docker
                .remove_container(&id, Some(force_remove()))
                .await
            {
                Ok(()) => removed += 1,
                Err(err) if is_gone_or_going(&err) => {}
                Err(err) => return Err(api(err)),
            }
        }
        Ok(removed)
    }

    async fn create_network(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        subnet: Option<&str>,
    ) -> Result<String, EngineError> {
        let request = NetworkCreateRequest {
            name: name.to_string(),
            driver: Some("bridge".to_string()),
            labels: Some(labels.clone().into_iter().collect()),
            // The first address of the subnet is the gateway, as Docker
            // would choose; given explicitly, it shows in the IPAM config.
            ipam: subnet.map(|subnet| Ipam {
                config: Some(vec![IpamConfig {
                    subnet: Some(subnet.to_string()),
                    gateway: crate::netpool::Net::parse(subnet)
                        .ok()
                        .map(|net| std::net::Ipv4Addr::from(net.addr + 1).to_string()),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        };
        self.docker.create_network(request).await.map_err(api)?;
        let inspected = self.docker.inspect_network(name, None).await;
        let gateway = inspected.as_ref().ok().and_then(|n| {
            n.ipam
                .as_ref()?
                .config
                .as_ref()?
                .iter()
                .find_map(|c| c.gateway.clone().filter(|g| !g.is_empty()))
        });
        match (inspected, gateway) {
            (_, Some(gateway)) => Ok(gateway),
            (Err(err), None) => {
                let _ = self.docker.remove_network(name).await;
                Err(api(err))
            }
            (Ok(_), None) => {
                let _ = self.docker.remove_network(name).await;
                Err(EngineError::Api(format!(
                    "network `{name}` has no gateway in its IPAM config"
                )))
            }
        }
    }

    async fn network_subnets(&self) -> Result<Vec<String>, EngineError> {
        let networks = self
            .docker
            .list_networks(None::<ListNetworksOptions>)
            .await
            .map_err(api)?;
        Ok(networks
            .into_iter()
            .filter_map(|n| n.ipam?.config)
            .flatten()
            .filter_map(|c| c.subnet)
            .collect())
    }

    async fn list_labelled(&self, key: &str) -> Result<Vec<Leftover>, EngineError> {
        let filters = HashMap::from([("label".to_string(), vec![key.to_string()])]);
        let networks = self
            .docker
            .list_networks(Some(ListNetworksOptions {
                filters: Some(filters.clone()),
            }))
            .await
            .map_err(api)?;
        let containers = self.all_containers(filters).await?;
        let mut out: Vec<Leftover> = networks
            .into_iter()
            .map(|n| Leftover {
                kind: "network",
                id: n.id.unwrap_or_default(),
                name: n.name.unwrap_or_default(),
                labels: n.labels.unwrap_or_default().into_iter().collect(),
                created: n.created.as_deref().and_then(parse_rfc3339),
                running: false,
            })
            .collect();
        out.extend(containers.into_iter().map(|c| {
            Leftover {
                kind: "container",
                name: c
                    .names
                    .unwrap_or_default()
                    .first()
                    .map(|n| n.trim_start_matches('/').to_string())
                    .unwrap_or_default(),
                id: c.id.unwrap_or_default(),
                labels: c.labels.unwrap_or_default().into_iter().collect(),
                created: c
                    .created
                    .and_then(|secs| u64::try_from(secs).ok())
                    .map(|secs| std::time::UNIX_EPOCH + Duration::from_secs(secs)),
                running: matches!(
                    c.state,
                    Some(
                        ContainerSummaryStateEnum::RUNNING
                            | ContainerSummaryStateEnum::RESTARTING
                            | ContainerSummaryStateEnum::PAUSED
                    )
                ),
            }
        }));
        Ok(out)
    }

    async fn containers_on_network(&self, name: &str) -> Result<Vec<(String, bool)>, EngineError> {
        let filters = HashMap::from([("network".to_string(), vec![name.to_string()])]);
        let containers = self.all_containers(filters).await?;
        Ok(containers
            .into_iter()
            .map(|c| {
                let running = !matches!(
                    c.state,
                    Some(
                        ContainerSummaryStateEnum::EXITED
                            | ContainerSummaryStateEnum::CREATED
                            | ContainerSummaryStateEnum::DEAD
                    )
                );
                (c.id.unwrap_or_default(), running)
            })
            .collect())
    }

    async fn remove_network(&self, name: &str) -> Result<(), EngineError> {
        match self.docker.remove_network(name).await {
            Ok(()) => Ok(()),
            Err(err) if is_not_found(&err) => Ok(()),
            Err(err) => Err(api(err)),
        }
    }

    // Image transfer, used by `squash`.

    async fn save_image(&self, image: &str) -> Result<ByteStream, EngineError> {
        Ok(Box::pin(
            self.docker.export_image(image).map(|r| r.map_err(api)),
        ))
    }

    async fn load_image(&self, archive: ByteStream, sink: LineSink) -> Result<(), EngineError> {
        let options = ImportImageOptions {
            quiet: false,
            platform: None,
        };
        let mut stream = self.docker.import_image_stream(options, archive, None);
        let mut lines = LineBuffer::default();
        while let Some(item) = stream.next().await {
            let info = item.map_err(|err| match err {
                BollardError::DockerStreamError { error } => EngineError::Api(error),
                other => api(other),
            })?;
            if let Some(text) = &info.stream {
                lines.push(text.as_bytes(), &*sink);
            }
        }
        lines.finish(&*sink);
        Ok(())
    }

    async fn image_details(&self, image: &str) -> Result<Option<ImageDetails>, EngineError> {
        let inspect = match self.docker.inspect_image(image).await {
            Ok(inspect) => inspect,
            Err(err) if is_not_found(&err) => return Ok(None),
            Err(err) => return Err(api(err)),
        };
        let config = serde_json::to_value(inspect.config.unwrap_or_default())
            .map_err(|err| EngineError::Api(format!("image config of `{image}`: {err}")))?;
        Ok(Some(ImageDetails {
            id: inspect.id.unwrap_or_default(),
            diff_ids: inspect.root_fs.and_then(|fs| fs.layers).unwrap_or_default(),
            config,
            author: inspect.author.unwrap_or_default(),
            architecture: inspect.architecture.unwrap_or_default(),
            os: inspect.os.unwrap_or_default(),
        }))
    }

    async fn image_history(&self, image: &str) -> Result<Vec<HistoryEntry>, EngineError> {
        let items = self.docker.image_history(image).await.map_err(api)?;
        Ok(items
            .into_iter()
            .map(|item| HistoryEntry {
                id: item.id,
                tags: item.tags,
                created_by: item.created_by,
            })
            .collect())
    }

    async fn export_filesystem(
        &self,
        image: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<ByteStream, EngineError> {
        // The container is never started; the command only satisfies
        // images that have neither CMD nor ENTRYPOINT.
        let body = ContainerCreateBody {
            image: Some(image.to_string()),
            cmd: Some(vec!["/habitus-export".into()]),
            labels: Some(labels.into_iter().collect()),
            network_disabled: Some(true),
            ..Default::default()
        };
        let created = self
            .docker
            .create_container(None::<CreateContainerOptions>, body)
            .await
            .map_err(api)?;
        // The container goes away when the export ends (before the stream
        // does) or, if the stream is dropped early, through the guard.
        let guard = ContainerGuard {
            docker: self.docker.clone(),
            id: Some(created.id.clone()),
        };
        let export = Box::pin(self.docker.export_container(&created.id));
        let stream = futures_util::stream::unfold(
            (export, guard, false),
            |(mut export, mut guard, done)| async move {
                if done {
                    return None;
                }
                match export.next().await {
                    Some(Ok(bytes)) => Some((Ok(bytes), (export, guard, false))),
                    Some(Err(err)) => Some((Err(api(err)), (export, guard, true))),
                    None => {
                        let id = guard.id.take().unwrap_or_default();
                        match guard
                            .docker
                            .remove_container(&id, Some(force_remove()))
                            .await
                        {
                            Err(err) if !is_not_found(&err) => {
                                Some((Err(api(err)), (export, guard, true)))
                            }
                            _ => None,
                        }
                    }
                }
            },
        );
        Ok(Box::pin(stream))
    }

    async fn import_image(
        &self,
        rootfs: ByteStream,
        reference: &str,
        changes: Vec<String>,
        message: &str,
    ) -> Result<String, EngineError> {
        let options = CreateImageOptions {
            from_src: Some("-".into()),
            repo: Some(reference.to_string()),
            message: Some(message.to_string()),
            changes,
            ..Default::default()
        };
        let body = body_try_stream(rootfs.map(|r| r.map_err(std::io::Error::other)));
        let mut stream = self.docker.create_image(Some(options), Some(body), None);
        let mut id = None;
        while let Some(item) = stream.next().await {
            let info = item.map_err(|err| match err {
                BollardError::DockerStreamError { error } => EngineError::Api(error),
                other => api(other),
            })?;
            if let Some(status) = info.status.filter(|s| s.starts_with("sha256:")) {
                id = Some(status);
            }
        }
        match id {
            Some(id) => Ok(id),
            None => Err(EngineError::Api(format!(
                "the daemon reported no image for `{reference}`"
            ))),
        }
    }

    async fn create_container(&self, req: ContainerRequest) -> Result<String, EngineError> {
        let mut body = ContainerCreateBody {
            image: Some(req.image.clone()),
            labels: Some(req.labels.clone().into_iter().collect()),
            ..Default::default()
        };
        if req.keep_alive {
            // `/bin/sh` reading an open stdin that nobody writes to waits
            // forever and needs nothing else in the image. The image's own
            // entrypoint is replaced only when it has one: `commit` then
            // restores exactly what the image had.
            let has_entrypoint = self
                .docker
                .inspect_image(&req.image)
                .await
                .map_err(api)?
                .config
                .and_then(|c| c.entrypoint)
                .is_some_and(|e| !e.is_empty());
            if has_entrypoint {
                body.entrypoint = Some(vec!["/bin/sh".into()]);
                body.cmd = Some(Vec::new());
            } else {
                body.cmd = Some(vec!["/bin/sh".into()]);
            }
            body.open_stdin = Some(true);
        } else {
            // Never started: the command only lets the daemon create a
            // container of an image that has neither CMD nor ENTRYPOINT.
            body.cmd = Some(vec!["habitus-never-started".into()]);
        }
        let created = self
            .docker
            .create_container(None::<CreateContainerOptions>, body)
            .await
            .map_err(api)?;
        if req.keep_alive {
            if let Err(err) = self
                .docker
                .start_container(
                    &created.id,
                    None::<bollard::query_parameters::StartContainerOptions>,
                )
                .await
            {
                let _ = self
                    .docker
                    .remove_container(&created.id, Some(force_remove()))
                    .await;
                return Err(api(err));
            }
        }
        Ok(created.id)
    }

    async fn archive(&self, id: &str, path: &str) -> Result<ByteStream, EngineError> {
        let options = DownloadFromContainerOptions {
            path: path.to_string(),
        };
        let stream = self.docker.download_from_container(id, Some(options));
        Ok(Box::pin(stream.map(|item| {
            item.map_err(|err| match err {
                BollardError::DockerResponseServerError { message, .. } => {
                    EngineError::Api(message)
                }
                other => api(other),
            })
        })))
    }

    async fn exec(&self, id: &str, cmd: Vec<String>, sink: LineSink) -> Result<i64, EngineError> {
        let config = ExecConfig {
            attach_stdout: Some(true),
            attach_stderr: Some(true),
            tty: Some(false),
            user: Some("0".into()),
            cmd: Some(cmd),
            ..Default::default()
        };
        let created = self.docker.create_exec(id, config).await.map_err(api)?;
        let started = self
            .docker
            .start_exec(
                &created.id,
                Some(StartExecOptions {
                    detach: false,
                    tty: false,
                    output_capacity: None,
                }),
            )
            .await
            .map_err(api)?;
        if let StartExecResults::Attached { mut output, .. } = started {
            let mut stdout = LineBuffer::default();
            let mut stderr = LineBuffer::default();
            while let Some(chunk) = output.next().await {
                match chunk.map_err(api)? {
                    LogOutput::StdErr { message } => stderr.push(&message, &*sink),
                    LogOutput::StdOut { message } | LogOutput::Console { message } => {
                        stdout.push(&message, &*sink)
                    }
                    LogOutput::StdIn { .. } => {}
                }
            }
            stdout.finish(&*sink);
            stderr.finish(&*sink);
        }
        // The output ends when the process does; the daemon may record the
        // exit code a moment later (seconds on a loaded machine).
        for _ in 0..1500 {
            let inspect = self.docker.inspect_exec(&created.id).await.map_err(api)?;
            if inspect.running != Some(true) {
                if let Some(code) = inspect.exit_code {
                    return Ok(code);
                }
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Err(EngineError::Api(format!(
            "exec in container `{id}` ended without an exit code"
        )))
    }

    async fn commit(&self, id: &str, config_of: &str) -> Result<String, EngineError> {
        let image_config = self
            .docker
            .inspect_image(config_of)
            .await
            .map_err(api)?
            .config
            .unwrap_or_default();
        let mut config: ContainerConfig = serde_json::to_value(image_config)
            .and_then(serde_json::from_value)
            .map_err(|err| EngineError::Api(format!("image config of `{config_of}`: {err}")))?;
        // The daemon fills what the given config leaves empty from the
        // container's own config (the keep-alive shell, habitus' labels).
        // Nothing may be empty, then: labels become `{}`, and an image with
        // neither ENTRYPOINT nor CMD gets the entrypoint `[""]`, which
        // Docker treats as no entrypoint at all.
        if config.labels.is_none() {
            config.labels = Some(HashMap::new());
        }
        let no_entrypoint = config.entrypoint.as_ref().is_none_or(|e| e.is_empty());
        let no_cmd = config.cmd.as_ref().is_none_or(|c| c.is_empty());
        if no_entrypoint && no_cmd {
            config.entrypoint = Some(vec![String::new()]);
        }
        let options = CommitContainerOptions {
            container: Some(id.to_string()),
            pause: true,
            comment: Some("habitus cleanup".into()),
            ..Default::default()
        };
        let committed = self
            .docker
            .commit_container(options, config)
            .await
            .map_err(api)?;
        Ok(committed.id)
    }

    async fn remove_container(&self, id: &str) -> Result<(), EngineError> {
        match self.docker.remove_container(id, Some(force_remove())).await {
            Err(err) if !is_gone_or_going(&err) => Err(api(err)),
            _ => Ok(()),
        }
    }
}

impl DockerEngine {
    /// The id of the image a build produced: the one the daemon reported,
    /// else that of `tag`.
    async fn image_id(
        &self,
        reported: Option<String>,
        tag: &str,
        instruction: Option<String>,
    ) -> Result<String, EngineError> {
        if let Some(id) = reported {
            return Ok(id);
        }
        match self.inspect_image(tag).await? {
            Some(info) => Ok(info.id),
            None => Err(EngineError::BuildFailed {
                instruction,
                message: format!("the daemon reported no image for `{tag}`"),
            }),
        }
    }

    /// Fails with [`EngineError::NoBuildKit`] unless the daemon can build
    /// with BuildKit; asks the daemon once.
    async fn check_buildkit(&self) -> Result<(), EngineError> {
        let checked = self
            .buildkit
            .get_or_init(|| async {
                let version = self.docker.version().await.map_err(api)?;
                let api_version = version.api_version.clone().unwrap_or_default();
                let os = version.os.clone().unwrap_or_default();
                if buildkit::supports(&api_version) && (os.is_empty() || os == "linux") {
                    Ok(())
                } else {
                    Err(EngineError::NoBuildKit {
                        address: self.address.clone(),
                        daemon: format!(
                            "Docker {}, API {api_version}, {os}",
                            version.version.unwrap_or_else(|| "?".into())
                        ),
                    })
                }
            })
            .await;
        match checked {
            Ok(()) => Ok(()),
            Err(EngineError::NoBuildKit { address, daemon }) => Err(EngineError::NoBuildKit {
                address: address.clone(),
                daemon: daemon.clone(),
            }),
            Err(other) => Err(EngineError::Api(other.to_string())),
        }
    }

    /// Attaches to, starts and waits for a created container; returns its
    /// exit code.
    async fn run_created(&self, id: &str, sink: &LineSink) -> Result<i64, EngineError> {
        // Stream only, as `docker run` attaches: the daemon subscribes to the
        // container's output before it answers the attach, and the container
        // starts only after that, so nothing is missed. With `logs` too, the
        // daemon would replay the log after subscribing, and a line written
        // in between (a start that follows the attach quickly, as on a
        // reused connection) would arrive twice.
        let attach = AttachContainerOptions {
            stream: true,
            logs: false,
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let mut attached = self
            .docker
            .attach_container(id, Some(attach))
            .await
            .map_err(api)?;
        self.docker
            .start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
            .await
            .map_err(api)?;
        let mut stdout = LineBuffer::default();
        let mut stderr = LineBuffer::default();
        while let Some(chunk) = attached.output.next().await {
            match chunk.map_err(api)? {
                LogOutput::StdErr { message } => stderr.push(&message, &**sink),
                LogOutput::StdOut { message } | LogOutput::Console { message } => {
                    stdout.push(&message, &**sink)
                }
                LogOutput::StdIn { .. } => {}
            }
        }
        stdout.finish(&**sink);
        stderr.finish(&**sink);
        let mut wait = self.docker.wait_container(id, None::<WaitContainerOptions>);
        match wait.next().await {
            Some(Ok(response)) => Ok(response.status_code),
            Some(Err(BollardError::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(err)) => Err(api(err)),
            None => Err(EngineError::Api(format!(
                "container `{id}` ended without an exit code"
            ))),
        }
    }
}

fn force_remove() -> RemoveContainerOptions {
    RemoveContainerOptions {
        force: true,
        v: true,
        link: false,
    }
}

/// Waits for the build context writer. A context that could not be read
/// is the build's error, unless the writer only stopped because the daemon
/// stopped reading after the build `failed`.
async fn context_written(
    writer: tokio::task::JoinHandle<Result<(), String>>,
    receiver_gone: &AtomicBool,
    failed: bool,
    req: &BuildRequest,
) -> Result<(), EngineError> {
    let written = writer
        .await
        .map_err(|err| EngineError::Api(format!("build context writer: {err}")))?;
    match written {
        Err(message) if !(failed && receiver_gone.load(Ordering::SeqCst)) => {
            Err(EngineError::Context {
                path: req.context_dir.clone(),
                message,
            })
        }
        _ => Ok(()),
    }
}

/// Removes a container when dropped while still armed: if the future that
/// runs it is dropped, the removal is spawned onto the current runtime.
struct ContainerGuard {
    docker: Docker,
    id: Option<String>,
}

impl Drop for ContainerGuard {
    fn drop(&mut self) {
        let Some(id) = self.id.take() else { return };
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            let docker = self.docker.clone();
            handle.spawn(async move {
                let _ = docker.remove_container(&id, Some(force_remove())).await;
            });
        }
    }
}

fn build_options(req: &BuildRequest) -> Result<BuildImageOptions, EngineError> {
    let memory = match req.memory {
        None => None,
        Some(bytes) => Some(i32::try_from(bytes).map_err(|_| {
            EngineError::Api(format!(
                "memory limit `{bytes}` bytes is above the 2 GiB this client can send"
            ))
        })?),
    };
    let cpushares = match req.cpu_shares {
        None => None,
        Some(shares) => Some(
            i32::try_from(shares)
                .map_err(|_| EngineError::Api(format!("cpu shares `{shares}` out of range")))?,
        ),
    };
    let dockerfile = if req.dockerfile.is_empty() {
        "Dockerfile".to_string()
    } else {
        req.dockerfile.clone()
    };
    let to_map = |map: &BTreeMap<String, String>| {
        (!map.is_empty()).then(|| map.clone().into_iter().collect::<HashMap<_, _>>())
    };
    Ok(BuildImageOptions {
        dockerfile,
        t: (!req.tag.is_empty()).then(|| req.tag.clone()),
        target: req.target.clone().unwrap_or_default(),
        buildargs: to_map(&req.build_args),
        labels: to_map(&req.labels),
        nocache: req.no_cache,
        rm: req.rm,
        forcerm: req.force_rm,
        networkmode: req.network_mode.clone(),
        memory,
        cpusetcpus: req.cpuset_cpus.clone(),
        cpushares,
        ..Default::default()
    })
}

/// A `Write` that hands fixed-size chunks to the request body channel.
struct ChannelWriter {
    tx: mpsc::Sender<Result<Bytes, std::io::Error>>,
    buf: Vec<u8>,
    receiver_gone: Arc<AtomicBool>,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(
            &mut self.buf,
            Vec::with_capacity(CONTEXT_CHUNK),
        ));
        self.tx.blocking_send(Ok(chunk)).map_err(|_| {
            self.receiver_gone.store(true, Ordering::SeqCst);
            std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the daemon stopped reading the build context",
            )
        })
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
        let room = CONTEXT_CHUNK - self.buf.len();
        let n = data.len().min(room);
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CONTEXT_CHUNK {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        self.send()
    }
}

/// Splits a byte stream into lines for a sink, keeping a partial last line
/// until its newline arrives.
#[derive(Debug, Default)]
struct LineBuffer {
    partial: Vec<u8>,
}

impl LineBuffer {
    /// Feeds bytes; calls `sink` with each completed line (no newline, no
    /// carriage return).
    fn push(&mut self, data: &[u8], sink: &(dyn Fn(&str) + Send + Sync)) {
        self.push_with(data, &mut |line| sink(line));
    }

    fn push_with(&mut self, data: &[u8], each: &mut dyn FnMut(&str)) {
        self.partial.extend_from_slice(data);
        while let Some(pos) = self.partial.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.partial.drain(..=pos).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            each(&String::from_utf8_lossy(&line));
        }
    }

    /// Emits what is left (a last line without a newline).
    fn finish(&mut self, sink: &(dyn Fn(&str) + Send + Sync)) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            sink(&String::from_utf8_lossy(&line));
        }
    }
}

/// Removes the untagged images a failed or cancelled build committed. If
/// the build's future is dropped, the removal runs as a detached task.
struct FreshImages {
    docker: Docker,
    ids: Vec<String>,
    armed: bool,
}

impl FreshImages {
    fn disarm(&mut self) {
        self.armed = false;
    }

    async fn remove_now(&mut self) {
        let ids = std::mem::take(&mut self.ids);
        remove_fresh(&self.docker, ids).await;
    }
}

/// Removes images newest first; one that another build now uses (as a
/// parent or a running container's image) is left alone.
async fn remove_fresh(docker: &Docker, ids: Vec<String>) {
    for id in ids.iter().rev() {
        // Another build may have taken one as its cached result and
        // tagged it meanwhile: `rmi <id>` would delete that build's image.
        match docker.inspect_image(id).await {
            Ok(image) if image.repo_tags.as_ref().is_some_and(|t| !t.is_empty()) => continue,
            Err(_) => continue,
            Ok(_) => {}
        }
        let options = RemoveImageOptions {
            force: false,
            noprune: false,
            ..Default::default()
        };
        let _ = docker.remove_image(id, Some(options), None).await;
    }
}

impl Drop for FreshImages {
    fn drop(&mut self) {
        if !self.armed || self.ids.is_empty() {
            return;
        }
        let docker = self.docker.clone();
        let ids = std::mem::take(&mut self.ids);
        if let Ok(runtime) = tokio::runtime::Handle::try_current() {
            runtime.spawn(async move { remove_fresh(&docker, ids).await });
        }
    }
}

/// Follows a classic-builder output stream: lines, steps, cache hits, the
/// resulting image id, and the error, if any.
#[derive(Debug, Default)]
struct BuildProgress {
    lines: LineBuffer,
    /// The last `Step N/M : INSTRUCTION` line.
    last_step: Option<String>,
    /// `M` of the last `Step N/M` line.
    total: usize,
    /// ` ---> Using cache` lines seen.
    cached: usize,
    /// From the `aux` message that closes a successful build.
    image_id: Option<String>,
    /// Images the daemon committed for this build (not taken from the
    /// cache), bottom first: removed again if the build fails.
    fresh: Vec<String>,
    /// The current instruction commits an image and did not come from the
    /// cache: the next ` ---> <id>` is fresh.
    committing: bool,
    /// Every image id the stream named after an instruction other than
    /// `FROM`, fresh or from the cache, bottom first.
    chain: Vec<String>,
    /// The current instruction is not a `FROM`.
    below: bool,
}

impl BuildProgress {
    /// Takes one message of the build stream; an error message ends the
    /// build with [`EngineError::BuildFailed`].
    fn feed(
        &mut self,
        info: &BuildInfo,
        sink: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<(), EngineError> {
        if let Some(text) = &info.stream {
            let Self {
                lines,
                last_step,
                total,
                cached,
                fresh,
                committing,
                chain,
                below,
                ..
            } = self;
            lines.push_with(text.as_bytes(), &mut |line| {
                let trimmed = line.trim();
                if let Some((_, m)) = parse_step(line) {
                    *total = m;
                    *last_step = Some(trimmed.to_string());
                    // Every instruction but FROM commits an image (COPY and
                    // ADD without a `Running in` line); FROM names one.
                    *committing = !line.split_once(" : ").is_some_and(|(_, instruction)| {
                        instruction
                            .trim_start()
                            .get(..4)
                            .is_some_and(|k| k.eq_ignore_ascii_case("FROM"))
                    });
                    *below = *committing;
                } else if trimmed == "---> Using cache" {
                    *cached += 1;
                    *committing = false;
                } else if let Some(id) = trimmed
                    .strip_prefix("---> ")
                    .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit()))
                {
                    if *committing {
                        fresh.push(id.to_string());
                    }
                    if *below {
                        chain.push(id.to_string());
                    }
                    *committing = false;
                    *below = false;
                }
                // Other `--->` lines (`Running in …`; Docker 25+ also
                // prints `---> Removed intermediate container …` before
                // the id) come before the committed image's id.
                sink(line);
            });
        }
        if let Some(status) = &info.status {
            let has_progress = info
                .progress_detail
                .as_ref()
                .is_some_and(|p| p.total.is_some() || p.current.is_some());
            if !has_progress {
                match &info.id {
                    Some(id) => sink(&format!("{id}: {status}")),
                    None => sink(status),
                }
            }
        }
        if let Some(id) = info.aux.as_ref().and_then(|aux| aux.id.clone()) {
            self.image_id = Some(id);
        }
        if let Some(detail) = &info.error_detail {
            self.finish(sink);
            return Err(EngineError::BuildFailed {
                instruction: self.last_step.clone(),
                message: detail
                    .message
                    .clone()
                    .unwrap_or_else(|| "the build failed".to_string()),
            });
        }
        Ok(())
    }

    fn finish(&mut self, sink: &(dyn Fn(&str) + Send + Sync)) {
        self.lines.finish(sink);
    }
}

/// Parses `Step N/M : …` into `(N, M)`.
fn parse_step(line: &str) -> Option<(usize, usize)> {
    let rest = line.trim_start().strip_prefix("Step ")?;
    let (counts, _) = rest.split_once(" : ")?;
    let (n, m) = counts.split_once('/')?;
    Some((n.parse().ok()?, m.parse().ok()?))
}

/// Reads registry credentials from `$DOCKER_CONFIG/config.json` or
/// `~/.docker/config.json`. Best effort: a missing or unreadable file means
/// no credentials. Credential helpers (`credsStore`) are not consulted.
fn docker_config_credentials() -> HashMap<String, DockerCredentials> {
    let dir = match std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => match home_dir() {
            Some(home) => home.join(".docker"),
            None => return HashMap::new(),
        },
    };
    std::fs::read_to_string(dir.join("config.json"))
        .map(|text| parse_docker_config(&text))
        .unwrap_or_default()
}

/// The `auths` section of a Docker `config.json`: registry → credentials,
/// with `auth` (base64 of `user:password`) split into user and password.
fn parse_docker_config(text: &str) -> HashMap<String, DockerCredentials> {
    #[derive(serde::Deserialize)]
    struct Config {
        #[serde(default)]
        auths: HashMap<String, Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        auth: Option<String>,
        username: Option<String>,
        password: Option<String>,
        email: Option<String>,
        identitytoken: Option<String>,
    }
    let Ok(config) = serde_json::from_str::<Config>(text) else {
        return HashMap::new();
    };
    config
        .auths
        .into_iter()
        .map(|(registry, entry)| {
            let (mut username, mut password) = (entry.username, entry.password);
            if let Some(decoded) = entry
                .auth
                .as_deref()
                .and_then(|text| crate::secrets::base64_decode(text.trim().as_bytes()))
                .and_then(|raw| String::from_utf8(raw).ok())
            {
                if let Some((user, pass)) = decoded.split_once(':') {
                    username = Some(user.to_string());
                    password = Some(pass.to_string());
                }
            }
            let creds = DockerCredentials {
                username,
                password,
                email: entry.email,
                serveraddress: Some(registry.clone()),
                identitytoken: entry.identitytoken,
                ..Default::default()
            };
            (registry, creds)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, HashMap};
    use std::path::Path;
    use std::sync::{Arc, Mutex};

    use bollard::models::BuildInfo;
    use bollard::{Docker, API_DEFAULT_VERSION};

    use super::{
        build_options, describe_tls_failure, open, parse_docker_config, parse_step, BuildProgress,
        DockerEngine, DockerOptions,
    };
    use crate::engine::{BuildRequest, EngineError, LineSink};

    fn collector() -> (Arc<Mutex<Vec<String>>>, LineSink) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink_lines = lines.clone();
        let sink: LineSink = Arc::new(move |line: &str| {
            sink_lines.lock().unwrap().push(line.to_string());
        });
        (lines, sink)
    }

    fn stream(text: &str) -> BuildInfo {
        BuildInfo {
            stream: Some(text.to_string()),
            ..Default::default()
        }
    }

    #[test]
    fn options_from_env_read_docker_variables() {
        let env = HashMap::from([
            ("DOCKER_HOST", "tcp://10.0.0.1:2376"),
            ("DOCKER_TLS_VERIFY", "1"),
            ("DOCKER_CERT_PATH", "/certs"),
        ]);
        let opts = DockerOptions::from_lookup(|k| env.get(k).map(|v| v.to_string()));
        assert_eq!(
            opts,
            DockerOptions {
                host: Some("tcp://10.0.0.1:2376".into()),
                use_tls: true,
                tls_verify: true,
                cert_path: Some("/certs".into()),
            }
        );
    }

    #[test]
    fn empty_tls_verify_means_off_and_defaults_apply() {
        let env = HashMap::from([("DOCKER_TLS_VERIFY", ""), ("DOCKER_HOST", "")]);
        let opts = DockerOptions::from_lookup(|k| env.get(k).map(|v| v.to_string()));
        assert!(!opts.tls_verify && !opts.use_tls);
        assert_eq!(opts.address(), "unix:///var/run/docker.sock");
    }

    #[test]
    fn unsupported_scheme_is_unreachable_naming_it() {
        let opts = DockerOptions {
            host: Some("ssh://me@box".into()),
            ..Default::default()
        };
        let err = open(&opts, opts.address()).unwrap_err();
        assert_eq!(
            err.to_string().lines().next().unwrap(),
            "cannot connect to the Docker daemon at `ssh://me@box`: unsupported address: use `unix:///path` or `tcp://host:port`"
        );
    }

    #[test]
    fn missing_tls_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let opts = DockerOptions {
            host: Some("tcp://127.0.0.1:2376".into()),
            use_tls: true,
            cert_path: Some(dir.path().to_path_buf()),
            ..Default::default()
        };
        let err = open(&opts, opts.address()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "docker TLS settings: cannot read a certificate from `{}`",
                dir.path().join("ca.pem").display()
            )),
            "{text}"
        );
    }

    #[test]
    fn tls_failures_say_which_certificate_to_check() {
        let dir = Path::new("/certs");
        assert_eq!(
            describe_tls_failure(
                "tcp://h:2376",
                dir,
                &rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA)
            ),
            "the daemon at `tcp://h:2376` did not accept the client certificate `/certs/cert.pem`: received fatal alert: UnknownCA"
        );
        assert_eq!(
            describe_tls_failure(
                "tcp://h:2376",
                dir,
                &rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
            ),
            "the certificate of the daemon at `tcp://h:2376` is not trusted by `/certs/ca.pem`: invalid peer certificate: UnknownIssuer"
        );
    }

    #[test]
    fn build_stream_lines_are_split_and_partial_lines_kept() {
        let (lines, sink) = collector();
        let mut progress = BuildProgress::default();
        progress
            .feed(&stream("Step 1/2 : FROM base\n ---> ab"), &*sink)
            .unwrap();
        progress.feed(&stream("c123\r\n"), &*sink).unwrap();
        progress
            .feed(&stream("Step 2/2 : RUN make\n"), &*sink)
            .unwrap();
        progress
            .feed(&stream(" ---> Using cache\n ---> def\nlast"), &*sink)
            .unwrap();
        progress.finish(&*sink);
        assert_eq!(
            *lines.lock().unwrap(),
            [
                "Step 1/2 : FROM base",
                " ---> abc123",
                "Step 2/2 : RUN make",
                " ---> Using cache",
                " ---> def",
                "last"
            ]
        );
        assert_eq!(progress.total, 2);
        assert_eq!(progress.cached, 1);
        assert_eq!(progress.last_step.as_deref(), Some("Step 2/2 : RUN make"));
    }

    #[test]
    fn a_secret_split_across_stream_chunks_is_redacted() {
        use crate::secrets::{Redactor, Secret};
        let secrets = [Arc::new(Secret::new(b"tok-5ecr3t-value".to_vec()))];
        let redactor = Redactor::new(&secrets);
        let (lines, sink) = collector();
        let redacting: LineSink = Arc::new(move |line: &str| sink(&redactor.redact(line)));
        let mut progress = BuildProgress::default();
        for chunk in [
            "Step 1/1 : RUN x
printed: tok-5e",
            "cr3t",
            "-value
after
",
        ] {
            progress.feed(&stream(chunk), &*redacting).unwrap();
        }
        progress.finish(&*redacting);
        assert_eq!(
            *lines.lock().unwrap(),
            ["Step 1/1 : RUN x", "printed: ***", "after"]
        );
    }

    #[test]
    fn committed_images_are_fresh_on_docker_20_and_26() {
        // Docker 20.10 prints `Removing intermediate container` plain,
        // Docker 25+ after an arrow, both before the committed id.
        for removed in [
            "Removing intermediate container c1",
            " ---> Removed intermediate container c1",
        ] {
            let (_, sink) = collector();
            let mut progress = BuildProgress::default();
            let text = format!(
                "Step 1/3 : FROM base\n ---> 0a1b\nStep 2/3 : RUN x\n ---> Running in c1\nout\n{removed}\n ---> 2c3d\nStep 3/3 : RUN y\n ---> Using cache\n ---> 4e5f\n"
            );
            progress.feed(&stream(&text), &*sink).unwrap();
            assert_eq!(progress.fresh, ["2c3d"], "{removed}");
            // The images below the result, cached or not; not the base.
            assert_eq!(progress.chain, ["2c3d", "4e5f"], "{removed}");
        }
    }

    #[test]
    fn aux_id_is_the_image_id() {
        let (_, sink) = collector();
        let mut progress = BuildProgress::default();
        let info: BuildInfo = serde_json::from_str(r#"{"aux":{"ID":"sha256:0123"}}"#).unwrap();
        progress.feed(&info, &*sink).unwrap();
        assert_eq!(progress.image_id.as_deref(), Some("sha256:0123"));
    }

    #[test]
    fn error_detail_fails_the_build_with_the_last_step() {
        let (_, sink) = collector();
        let mut progress = BuildProgress::default();
        progress
            .feed(&stream("Step 3/5 : RUN make\n"), &*sink)
            .unwrap();
        let info: BuildInfo = serde_json::from_str(
            r#"{"errorDetail":{"code":2,"message":"The command '/bin/sh -c make' returned a non-zero code: 2"},"error":"The command '/bin/sh -c make' returned a non-zero code: 2"}"#,
        )
        .unwrap();
        let err = progress.feed(&info, &*sink).unwrap_err();
        match err {
            EngineError::BuildFailed {
                instruction,
                message,
            } => {
                assert_eq!(instruction.as_deref(), Some("Step 3/5 : RUN make"));
                assert_eq!(
                    message,
                    "The command '/bin/sh -c make' returned a non-zero code: 2"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn step_lines_parse() {
        assert_eq!(parse_step("Step 3/15 : RUN a : b"), Some((3, 15)));
        assert_eq!(parse_step("Step x/2 : RUN"), None);
        assert_eq!(parse_step("Steps 1/2 : RUN"), None);
    }

    #[test]
    fn base64_decodes_with_and_without_padding() {
        let decode = |t: &str| crate::secrets::base64_decode(t.as_bytes());
        assert_eq!(decode("dXNlcjpwYXNz").unwrap(), b"user:pass");
        assert_eq!(decode("YQ==").unwrap(), b"a");
        assert_eq!(decode("YWI").unwrap(), b"ab");
        assert!(decode("a*b").is_none());
    }

    #[test]
    fn docker_config_auths_become_credentials() {
        let creds = parse_docker_config(
            r#"{"auths":{"registry.example.com":{"auth":"dXNlcjpwYTpzcw=="},"other.io":{}},"credsStore":"desktop"}"#,
        );
        let reg = &creds["registry.example.com"];
        assert_eq!(reg.username.as_deref(), Some("user"));
        assert_eq!(reg.password.as_deref(), Some("pa:ss"));
        assert_eq!(reg.serveraddress.as_deref(), Some("registry.example.com"));
        assert_eq!(creds["other.io"].username, None);
        assert!(parse_docker_config("not json").is_empty());
    }

    #[test]
    fn debug_output_never_shows_credentials() {
        let engine = DockerEngine {
            docker: Docker::connect_with_http("tcp://127.0.0.1:1", 1, API_DEFAULT_VERSION).unwrap(),
            address: "tcp://127.0.0.1:1".into(),
            credentials: Arc::new(parse_docker_config(
                r#"{"auths":{"reg.io":{"auth":"dXNlcjpodW50ZXIy"}}}"#,
            )),
            dialer: super::Dialer::tcp("tcp://127.0.0.1:1", "127.0.0.1:1"),
            buildkit: Arc::new(tokio::sync::OnceCell::new()),
            intermediates: Arc::default(),
        };
        assert_eq!(
            format!("{engine:?}"),
            r#"DockerEngine { address: "tcp://127.0.0.1:1", registries: ["reg.io"], .. }"#
        );
    }

    #[test]
    fn build_options_map_the_request() {
        let req = BuildRequest {
            tag: "app-uid:latest".into(),
            dockerfile: "Dockerfile.x".into(),
            target: Some("build".into()),
            build_args: BTreeMap::from([("A".into(), "1".into())]),
            labels: BTreeMap::from([("habitus.build".into(), "b".into())]),
            no_cache: true,
            force_rm: true,
            memory: Some(1 << 20),
            cpu_shares: Some(512),
            ..Default::default()
        };
        let opts = build_options(&req).unwrap();
        assert_eq!(opts.t.as_deref(), Some("app-uid:latest"));
        assert_eq!(opts.dockerfile, "Dockerfile.x");
        assert_eq!(opts.target, "build");
        assert_eq!(opts.buildargs.unwrap()["A"], "1");
        assert_eq!(opts.labels.unwrap()["habitus.build"], "b");
        assert!(opts.nocache && opts.forcerm && !opts.rm);
        assert_eq!(opts.memory, Some(1 << 20));
        assert_eq!(opts.cpushares, Some(512));
    }

    #[test]
    fn memory_above_two_gib_is_refused() {
        let req = BuildRequest {
            memory: Some(4 << 30),
            ..Default::default()
        };
        assert_eq!(
            build_options(&req).unwrap_err().to_string(),
            "docker: memory limit `4294967296` bytes is above the 2 GiB this client can send"
        );
    }
}
