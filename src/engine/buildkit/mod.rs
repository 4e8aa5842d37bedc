//! Builds with BuildKit, through the daemon's own BuildKit (`POST /build`
//! with `version=2`), with a session that serves the step's secrets to
//! `RUN --mount=type=secret` from memory.
//!
//! bollard 0.21 builds with BuildKit too, but the session it opens offers
//! only registry credentials, and its secrets come from files or
//! environment variables; habitus's secrets live in zeroized memory and
//! must stay there. So this module opens the session itself (`session`)
//! and sends the build request on its own connection (`dial`). As with
//! the docker CLI, the request (`remote=client-session`) has no body: the
//! daemon asks the session for the context and the Dockerfile
//! ([`filesync`]). The daemon's solve status is decoded ([`proto`]) into
//! lines ([`progress`]).
//!
//! Tested on BuildKit 0.8 (Docker 20.10) and 0.13 (Docker 26, containerd
//! image store); both end a build with a `moby.image.id` message, and only
//! 0.8 adds a `Successfully tagged` line.

pub(crate) mod dial;
pub mod filesync;
pub mod progress;
pub mod proto;
mod session;

use std::collections::HashMap;
use std::sync::Arc;

use base64::Engine as _;
use bollard::auth::DockerCredentials;
use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper::header::HOST;
use hyper::{Request, StatusCode};
use hyper_util::rt::TokioIo;

use super::{BuildRequest, EngineError};
pub use dial::Dialer;
pub use progress::instruction;
pub use progress::Progress;
pub use session::credentials_for;
use session::{refusal, Session};

/// Longest line of the daemon's build stream habitus accepts.
const MAX_MESSAGE: usize = 32 * 1024 * 1024;

/// The oldest API that builds with BuildKit sessions (Docker 18.09).
pub const MIN_API: (u64, u64) = (1, 39);

/// Network modes BuildKit can run `RUN` in.
pub const NETWORK_MODES: [&str; 3] = ["default", "host", "none"];

/// What a BuildKit build produced.
#[derive(Debug)]
pub struct Outcome {
    pub image_id: Option<String>,
    pub total_steps: usize,
    pub cached_steps: usize,
}

/// Why a BuildKit build failed: the error, and whether the daemon reported
/// it (as opposed to the connection failing).
type Failure = EngineError;

/// Builds `req` with BuildKit; the session serves its context directory
/// and its `extra_files` (the rewritten Dockerfile).
pub async fn build(
    dialer: &Dialer,
    version: &str,
    credentials: Arc<HashMap<String, DockerCredentials>>,
    req: &BuildRequest,
    sink: &(dyn Fn(&str) + Send + Sync),
) -> Result<Outcome, Failure> {
    check_network_mode(req)?;
    let session = Session::open(
        dialer,
        version,
        req.mounts.clone(),
        req.ssh_agent.clone(),
        credentials,
        filesync::Sources::new(req.context_dir.clone(), req.extra_files.clone()),
    )
    .await?;
    let uri = format!("/v{version}/build?{}", query(req, session.id()));
    let (response, connection) = send_build(dialer, uri).await?;

    let mut progress = Progress::default();
    let mut image_id = None;
    let failure = read_stream(response.into_body(), &mut progress, &mut image_id, sink).await?;
    progress.finish(sink);
    drop(connection);

    if let Some(message) = failure {
        return Err(failed(message, &session, &progress));
    }
    let (total_steps, cached_steps) = progress.counts();
    Ok(Outcome {
        image_id,
        total_steps,
        cached_steps,
    })
}

/// Refuses a network mode BuildKit cannot run `RUN` in, before any I/O.
fn check_network_mode(req: &BuildRequest) -> Result<(), EngineError> {
    if let Some(mode) = req
        .network_mode
        .as_deref()
        .filter(|m| !NETWORK_MODES.contains(m))
    {
        return Err(EngineError::BuildFailed {
            instruction: None,
            message: format!(
                "BuildKit runs `RUN` only on the `default`, `host` or `none` network, not `{mode}`"
            ),
            hint: Some(
                "leave --network out for this step, or build it with `builder: legacy`".into(),
            ),
        });
    }
    Ok(())
}

/// The task driving a request's connection; aborted when dropped.
pub type Connection = AbortOnDrop<Result<(), hyper::Error>>;

/// Sends the build request (no body) on a connection of its own; a refusal
/// fails the build with the daemon's answer.
async fn send_build(
    dialer: &Dialer,
    uri: String,
) -> Result<(hyper::Response<Incoming>, Connection), EngineError> {
    let request = Request::post(uri)
        .header(HOST, "docker")
        .body(Empty::<Bytes>::new())
        .map_err(|e| EngineError::Api(e.to_string()))?;
    let (response, connection) = send(dialer, request).await?;
    if response.status() != StatusCode::OK {
        return Err(EngineError::BuildFailed {
            instruction: None,
            message: refusal(response).await,
            hint: None,
        });
    }
    Ok((response, connection))
}

/// Sends `request` to the daemon on a connection of its own and returns
/// the response, whatever its status, and the connection's task (the
/// connection closes when it drops).
pub async fn send(
    dialer: &Dialer,
    request: Request<Empty<Bytes>>,
) -> Result<(hyper::Response<Incoming>, Connection), EngineError> {
    let stream = dialer.dial().await?;
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| transport(&e))?;
    let connection = AbortOnDrop(tokio::spawn(connection));
    let response = sender
        .send_request(request)
        .await
        .map_err(|e| transport(&e))?;
    Ok((response, connection))
}

/// What the daemon answered to a refused request: its `message`, or the
/// status.
pub async fn refused(response: hyper::Response<Incoming>) -> String {
    refusal(response).await
}

/// Reads the build stream message by message; returns the error message
/// that ended the build, if one did.
async fn read_stream(
    mut body: Incoming,
    progress: &mut Progress,
    image_id: &mut Option<String>,
    sink: &(dyn Fn(&str) + Send + Sync),
) -> Result<Option<String>, EngineError> {
    let mut pending: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| transport(&e))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            if let Some(message) = handle(&line, progress, image_id, sink)? {
                return Ok(Some(message));
            }
        }
        if pending.len() > MAX_MESSAGE {
            return Err(EngineError::Api(format!(
                "the daemon sent a build message longer than {} MiB",
                MAX_MESSAGE >> 20
            )));
        }
    }
    if pending.is_empty() {
        return Ok(None);
    }
    handle(&pending, progress, image_id, sink)
}

/// The error of a build the daemon failed: a failed transfer and secrets
/// the Dockerfile mounts but the step does not declare are named with it.
fn failed(mut message: String, session: &Session, progress: &Progress) -> EngineError {
    // A failed transfer is what failed, whichever instruction BuildKit
    // was running (or cancelling) beside it.
    let sync = session.sync_failure();
    let mut hint = None;
    if let Some(sync) = &sync {
        if !message.contains(sync.message.as_str()) {
            message = format!("{message}\ncaused by: {}", sync.message);
        }
        hint = sync.hint.map(str::to_string);
    }
    let refused = session.refused();
    if !refused.is_empty() {
        hint = Some(format!(
            "the Dockerfile mounts secret(s) {} that this step does not declare; add them under the step's `secrets:` in build.yml",
            refused
                .iter()
                .map(|id| format!("`{id}`"))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    EngineError::BuildFailed {
        instruction: sync
            .map(|failure| failure.vertex)
            .or(progress.failed.clone())
            .or(progress.last_instruction.clone()),
        message,
        hint,
    }
}

/// One JSON message of the build stream. Returns the error message if the
/// message ends the build.
fn handle(
    line: &[u8],
    progress: &mut Progress,
    image_id: &mut Option<String>,
    sink: &(dyn Fn(&str) + Send + Sync),
) -> Result<Option<String>, EngineError> {
    #[derive(serde::Deserialize)]
    struct Message {
        id: Option<String>,
        aux: Option<serde_json::Value>,
        stream: Option<String>,
        error: Option<String>,
        #[serde(rename = "errorDetail")]
        error_detail: Option<ErrorDetail>,
    }
    #[derive(serde::Deserialize)]
    struct ErrorDetail {
        message: Option<String>,
    }
    let line = line.trim_ascii();
    if line.is_empty() {
        return Ok(None);
    }
    let message: Message = serde_json::from_slice(line)
        .map_err(|e| EngineError::Api(format!("the daemon sent a malformed build message: {e}")))?;
    if let Some(detail) = message.error_detail {
        return Ok(Some(
            detail
                .message
                .or(message.error)
                .unwrap_or_else(|| "the build failed".into()),
        ));
    }
    if let Some(error) = message.error {
        return Ok(Some(error));
    }
    match (message.id.as_deref(), message.aux) {
        (Some("moby.buildkit.trace"), Some(serde_json::Value::String(encoded))) => {
            let bytes = base64::engine::general_purpose::STANDARD
                .decode(encoded.as_bytes())
                .map_err(|e| EngineError::Api(format!("malformed BuildKit status: {e}")))?;
            let status = proto::status_response(&bytes)
                .map_err(|e| EngineError::Api(format!("BuildKit status: {e}")))?;
            progress.feed(status, sink);
        }
        (Some("moby.image.id"), Some(aux)) => {
            if let Some(id) = aux.get("ID").and_then(|v| v.as_str()) {
                *image_id = Some(id.to_string());
            }
        }
        _ => {}
    }
    if let Some(text) = message.stream {
        for line in text.lines().filter(|l| !l.trim().is_empty()) {
            sink(line);
        }
    }
    Ok(None)
}

/// The query of a BuildKit build request.
fn query(req: &BuildRequest, session: &str) -> String {
    let mut pairs: Vec<(&str, String)> = vec![
        ("version", "2".into()),
        ("session", session.into()),
        ("remote", "client-session".into()),
        ("t", req.tag.clone()),
        ("dockerfile", req.dockerfile.clone()),
        ("rm", "1".into()),
    ];
    if let Some(target) = &req.target {
        pairs.push(("target", target.clone()));
    }
    if req.no_cache {
        pairs.push(("nocache", "1".into()));
    }
    if !req.build_args.is_empty() {
        pairs.push((
            "buildargs",
            serde_json::to_string(&req.build_args).unwrap_or_default(),
        ));
    }
    if !req.cache_from.is_empty() {
        pairs.push((
            "cachefrom",
            serde_json::to_string(&req.cache_from).unwrap_or_default(),
        ));
    }
    if !req.labels.is_empty() {
        pairs.push((
            "labels",
            serde_json::to_string(&req.labels).unwrap_or_default(),
        ));
    }
    if let Some(mode) = &req.network_mode {
        pairs.push(("networkmode", mode.clone()));
    }
    if let Some(memory) = req.memory {
        pairs.push(("memory", memory.to_string()));
    }
    if let Some(cpus) = &req.cpuset_cpus {
        pairs.push(("cpusetcpus", cpus.clone()));
    }
    if let Some(shares) = req.cpu_shares {
        pairs.push(("cpushares", shares.to_string()));
    }
    pairs
        .iter()
        .map(|(k, v)| format!("{k}={}", percent_encode(v)))
        .collect::<Vec<_>>()
        .join("&")
}

/// Percent-encodes everything but RFC 3986's unreserved characters.
pub fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn transport(err: &dyn std::error::Error) -> EngineError {
    EngineError::Api(format!("the connection to the Docker daemon failed: {err}"))
}

/// Whether API `version` (`1.41`) can build with BuildKit.
pub fn supports(version: &str) -> bool {
    let mut parts = version.split('.').map(|p| p.parse::<u64>().unwrap_or(0));
    let major = parts.next().unwrap_or(0);
    let minor = parts.next().unwrap_or(0);
    (major, minor) >= MIN_API
}

/// Aborts the task when dropped.
pub struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn the_query_carries_the_request_and_the_session() {
        let mut build_args = BTreeMap::new();
        build_args.insert("A".to_string(), "x y&z".to_string());
        let req = BuildRequest {
            tag: "app-1:latest".into(),
            dockerfile: ".habitus-b-app.Dockerfile".into(),
            target: Some("build".into()),
            no_cache: true,
            build_args,
            ..BuildRequest::default()
        };
        assert_eq!(
            query(&req, "s1"),
            "version=2&session=s1&remote=client-session&t=app-1%3Alatest&dockerfile=.habitus-b-app.Dockerfile&rm=1&target=build&nocache=1&buildargs=%7B%22A%22%3A%22x%20y%26z%22%7D"
        );
    }

    #[test]
    fn api_versions_from_1_39_support_buildkit() {
        assert!(supports("1.41"));
        assert!(supports("1.39"));
        assert!(!supports("1.38"));
        assert!(supports("2.0"));
        assert!(!supports("garbage"));
    }

    #[test]
    fn stream_messages_end_the_build_on_errors_and_give_the_image_id() {
        let mut progress = Progress::default();
        let mut id = None;
        let sink = |_: &str| {};
        let msg = br#"{"id":"moby.image.id","aux":{"ID":"sha256:abc"}}"#;
        assert_eq!(handle(msg, &mut progress, &mut id, &sink).unwrap(), None);
        assert_eq!(id.as_deref(), Some("sha256:abc"));
        let err = br#"{"errorDetail":{"message":"boom"},"error":"boom"}"#;
        assert_eq!(
            handle(err, &mut progress, &mut id, &sink)
                .unwrap()
                .as_deref(),
            Some("boom")
        );
        assert!(handle(b"{not json", &mut progress, &mut id, &sink).is_err());
        // As Docker 20.10 (BuildKit 0.8) ends a build: the id, then a
        // stream line; Docker 26 (BuildKit 0.13) sends only the id (of the
        // image's manifest on the containerd image store).
        let mut id = None;
        let lines = std::sync::Mutex::new(Vec::new());
        let sink = |l: &str| lines.lock().unwrap().push(l.to_string());
        for msg in [
            &br#"{"id":"moby.image.id","aux":{"ID":"sha256:7cb1"}}"#[..],
            br#"{"stream":"Successfully tagged hb/a:latest\n"}"#,
        ] {
            assert_eq!(handle(msg, &mut progress, &mut id, &sink).unwrap(), None);
        }
        assert_eq!(id.as_deref(), Some("sha256:7cb1"));
        assert_eq!(*lines.lock().unwrap(), ["Successfully tagged hb/a:latest"]);
        let bad = br#"{"id":"moby.buildkit.trace","aux":"!!"}"#;
        assert!(handle(bad, &mut progress, &mut id, &sink).is_err());
    }
}
