//! Builds: with BuildKit through [`buildkit`], or with the classic builder,
//! to which the context goes as a tar streamed from a blocking writer. A
//! failed classic build's committed images are removed again; a
//! successful one's intermediates are recorded for `remove_image`.

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bollard::errors::Error as BollardError;
use bollard::query_parameters::{BuildImageOptions, RemoveImageOptions};
use bollard::{body_try_stream, Docker};
use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;

use super::progress::BuildProgress;
use super::{api, images, DockerEngine};
use crate::engine::buildkit;
use crate::engine::{BuildRequest, BuildSink, BuiltImage, EngineError, LineSink};
use crate::model::Builder;

/// Size of one chunk of the streamed build context.
const CONTEXT_CHUNK: usize = 64 * 1024;

/// Chunks of build context in flight between the tar writer and the socket.
const CONTEXT_CHUNKS_IN_FLIGHT: usize = 8;

/// The receiving end of the build context: chunks of tar, or the error
/// that cut it short.
type ContextChunks = mpsc::Receiver<Result<Bytes, std::io::Error>>;

/// The blocking task writing the build context, and whether it stopped
/// because nobody read any more.
struct ContextWriter {
    task: tokio::task::JoinHandle<Result<(), String>>,
    receiver_gone: Arc<AtomicBool>,
}

/// Builds `req` with the builder it names.
pub(super) async fn build(
    engine: &DockerEngine,
    req: BuildRequest,
    sink: BuildSink,
) -> Result<BuiltImage, EngineError> {
    let sink = super::super::announcing(sink);
    let options = build_options(&req)?;
    if req.builder == Builder::BuildKit {
        return build_with_buildkit(engine, &req, &sink).await;
    }
    // On the containerd image store another build sharing the daemon may
    // remove an image this one took from the cache while it runs (that
    // build's own intermediates): the daemon then fails the instruction
    // after it with `unable to find image`. Built again, the instruction
    // no longer finds that cache entry.
    let again = req.clone();
    match build_classic(engine, req, options, &sink).await {
        Err(EngineError::BuildFailed { message, .. })
            if message.starts_with("unable to find image \"sha256:") =>
        {
            sink(&format!(
                "habitus: {message} (another build removed a cached image meanwhile): building again"
            ));
            let options = build_options(&again)?;
            build_classic(engine, again, options, &sink).await
        }
        other => other,
    }
}

/// Builds with BuildKit. The daemon asks the build's session for the
/// context and the Dockerfile; no tar is written.
async fn build_with_buildkit(
    engine: &DockerEngine,
    req: &BuildRequest,
    sink: &LineSink,
) -> Result<BuiltImage, EngineError> {
    engine.check_buildkit().await?;
    let version = engine.docker.client_version().to_string();
    let credentials = engine.credentials().await?;
    let outcome = buildkit::build(&engine.dialer, &version, credentials, req, &**sink).await?;
    let id = engine.image_id(outcome.image_id, &req.tag, None).await?;
    Ok(BuiltImage {
        id,
        cached_steps: outcome.cached_steps,
        total_steps: outcome.total_steps,
    })
}

/// Builds with the classic builder, the context streamed as a tar.
async fn build_classic(
    engine: &DockerEngine,
    mut req: BuildRequest,
    options: BuildImageOptions,
    sink: &LineSink,
) -> Result<BuiltImage, EngineError> {
    let (writer, chunks) = write_context(&mut req);
    let mut progress = BuildProgress::default();
    let mut fresh = FreshImages {
        docker: engine.docker.clone(),
        ids: Vec::new(),
        armed: true,
    };
    let failure = follow_build(engine, options, chunks, &mut progress, sink).await;
    progress.finish(&**sink);

    context_written(writer, failure.is_some(), &req).await?;
    if let Some(err) = failure {
        // The daemon keeps the images of the instructions that did
        // succeed; they are this build's and nobody's cache yet.
        fresh.ids = std::mem::take(&mut progress.fresh);
        fresh.remove_now().await;
        return Err(err);
    }
    fresh.disarm();
    let id = engine
        .image_id(
            progress.image_id.clone(),
            &req.tag,
            progress.last_step.clone(),
        )
        .await?;
    engine.record_intermediates(&id, &progress.chain).await;
    Ok(BuiltImage {
        id,
        cached_steps: progress.cached,
        total_steps: progress.total,
    })
}

/// Starts writing the context (and `req.extra_files`) as a tar.
///
/// A blocking thread writes into a bounded channel that feeds the request
/// body, so memory use does not depend on the context's size. If the build
/// future is dropped, the receiver goes away, the writer stops at its next
/// chunk, and the daemon sees the connection close and cancels the build.
fn write_context(req: &mut BuildRequest) -> (ContextWriter, ContextChunks) {
    let (tx, rx) = mpsc::channel::<Result<Bytes, std::io::Error>>(CONTEXT_CHUNKS_IN_FLIGHT);
    let receiver_gone = Arc::new(AtomicBool::new(false));
    let dir = req.context_dir.clone();
    let extra = std::mem::take(&mut req.extra_files);
    let gone = receiver_gone.clone();
    let task = tokio::task::spawn_blocking(move || {
        let mut out = ChannelWriter {
            tx: tx.clone(),
            buf: Vec::with_capacity(CONTEXT_CHUNK),
            receiver_gone: gone,
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
    });
    let writer = ContextWriter {
        task,
        receiver_gone,
    };
    (writer, rx)
}

/// Sends the build request with the context as its body and follows the
/// daemon's output; returns the error that ended the build, if one did.
async fn follow_build(
    engine: &DockerEngine,
    options: BuildImageOptions,
    mut chunks: ContextChunks,
    progress: &mut BuildProgress,
    sink: &LineSink,
) -> Option<EngineError> {
    let body = futures_util::stream::poll_fn(move |cx| chunks.poll_recv(cx));
    let credentials = match engine.credentials().await {
        Ok(all) => (!all.is_empty()).then(|| HashMap::clone(&all)),
        Err(e) => return Some(e),
    };
    let mut stream = engine
        .docker
        .build_image(options, credentials, Some(body_try_stream(body)));
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Err(err) = progress.feed(&info, &**sink) {
                    return Some(err);
                }
            }
            Err(
                BollardError::DockerResponseServerError { message, .. }
                | BollardError::DockerStreamError { error: message },
            ) => {
                return Some(EngineError::BuildFailed {
                    instruction: progress.last_step.clone(),
                    message,
                    hint: None,
                });
            }
            Err(err) => return Some(api(err)),
        }
    }
    None
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
        match images::inspect_image(self, tag).await? {
            Some(info) => Ok(info.id),
            None => Err(EngineError::BuildFailed {
                instruction,
                message: format!("the daemon reported no image for `{tag}`"),
                hint: None,
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

    /// Records the images of a classic build's instructions below image
    /// `id` (see [`DockerEngine`]'s `intermediates`).
    async fn record_intermediates(&self, id: &str, chain: &[String]) {
        let below: Vec<String> = chain
            .iter()
            .filter(|fresh| !id.trim_start_matches("sha256:").starts_with(fresh.as_str()))
            .cloned()
            .collect();
        if below.is_empty() {
            return;
        }
        // Keyed by the id inspect gives (on the containerd store the
        // build stream's id is the config's, inspect's the manifest's),
        // which is what `remove_image` looks up.
        let key = match self.docker.inspect_image(id).await {
            Ok(inspected) => inspected.id.unwrap_or_else(|| id.to_string()),
            Err(_) => id.to_string(),
        };
        self.intermediates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(key, below);
    }
}

/// Waits for the build context writer. A context that could not be read
/// is the build's error, unless the writer only stopped because the daemon
/// stopped reading after the build `failed`.
async fn context_written(
    writer: ContextWriter,
    failed: bool,
    req: &BuildRequest,
) -> Result<(), EngineError> {
    let written = writer
        .task
        .await
        .map_err(|err| EngineError::Api(format!("build context writer: {err}")))?;
    match written {
        Err(message) if !(failed && writer.receiver_gone.load(Ordering::SeqCst)) => {
            Err(EngineError::Context {
                path: req.context_dir.clone(),
                message,
            })
        }
        _ => Ok(()),
    }
}

/// The query options of a classic build; refuses limits the API cannot
/// carry.
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
        cachefrom: (!req.cache_from.is_empty()).then(|| req.cache_from.clone()),
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
pub(super) async fn remove_fresh(docker: &Docker, ids: Vec<String>) {
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

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::build_options;
    use crate::engine::BuildRequest;

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
