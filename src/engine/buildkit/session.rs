//! A BuildKit session: the connection on which the daemon calls habitus
//! back during a build.
//!
//! habitus opens `POST /session` with `Upgrade: h2c`, the daemon answers
//! `101 Switching Protocols`, and from then on the daemon is the HTTP/2
//! (gRPC) client and habitus the server, offering:
//!
//! - `moby.buildkit.secrets.v1.Secrets/GetSecret`: the secrets the step
//!   declares, by name, straight from their zeroized buffers (a
//!   `RUN --mount=type=secret,id=NAME` reads them); any other id is
//!   answered `NOT_FOUND` and recorded, so the build error can say which
//!   undeclared secret the Dockerfile mounts;
//! - `moby.filesync.v1.Auth/Credentials`: registry credentials from
//!   `~/.docker/config.json`, for `FROM` images BuildKit pulls;
//! - `moby.sshforward.v1.SSH/CheckAgent` and `ForwardAgent`, when the step
//!   forwards the host's SSH agent (`ssh: true`): each connection a `RUN
//!   --mount=type=ssh` makes to its socket becomes a stream of bytes to
//!   and from the agent's socket;
//! - `moby.filesync.v1.FileSync/DiffCopy`: the build context and the
//!   rewritten Dockerfile ([`super::filesync`]);
//! - `grpc.health.v1.Health/Check`, which the daemon polls.

use std::collections::HashMap;
use std::convert::Infallible;
use std::sync::{Arc, Mutex};

use bollard::auth::DockerCredentials;
use bytes::Bytes;
use http_body_util::combinators::BoxBody;
use http_body_util::{BodyExt, Empty, Limited, StreamBody};
use hyper::body::{Frame, Incoming};
use hyper::header::{HeaderMap, HeaderValue, CONNECTION, CONTENT_TYPE, HOST, UPGRADE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};

use super::dial::Dialer;
use super::filesync::{self, Sources, DIFF_COPY};
use super::proto;
use crate::engine::{EngineError, MountSecrets, MountValue};

const HEALTH_CHECK: &str = "/grpc.health.v1.Health/Check";
const GET_SECRET: &str = "/moby.buildkit.secrets.v1.Secrets/GetSecret";
const CREDENTIALS: &str = "/moby.filesync.v1.Auth/Credentials";
const CHECK_AGENT: &str = "/moby.sshforward.v1.SSH/CheckAgent";
const FORWARD_AGENT: &str = "/moby.sshforward.v1.SSH/ForwardAgent";

/// The only SSH agent id offered (`RUN --mount=type=ssh` without `id=`).
const AGENT_ID: &str = "default";

/// Largest message of an agent stream (agent messages are at most 256 KiB).
const MAX_AGENT_MESSAGE: usize = 1024 * 1024;

/// Largest gRPC request habitus reads (requests carry a name or a host).
const MAX_REQUEST: usize = 64 * 1024;

/// gRPC status codes used here.
const GRPC_OK: u32 = 0;
const GRPC_INVALID_ARGUMENT: u32 = 3;
const GRPC_NOT_FOUND: u32 = 5;
const GRPC_UNAVAILABLE: u32 = 14;
const GRPC_UNIMPLEMENTED: u32 = 12;

type GrpcBody = BoxBody<Bytes, Infallible>;

/// What the session serves.
struct Offer {
    secrets: MountSecrets,
    /// The host's SSH agent socket, for steps that forward it.
    ssh_agent: Option<std::path::PathBuf>,
    credentials: Arc<HashMap<String, DockerCredentials>>,
    /// Secret ids the build asked for and this step does not declare.
    refused: Mutex<Vec<String>>,
    /// The context and the Dockerfile.
    sources: Arc<Sources>,
}

/// A running session; dropping it closes the connection, and with it the
/// daemon's access to the step's secrets.
pub struct Session {
    id: String,
    offer: Arc<Offer>,
    task: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for Session {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Session")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

impl Drop for Session {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Session {
    /// Opens a session on the daemon (API `version`, like `1.41`), ready
    /// before this returns: a build request naming [`Session::id`] finds it.
    pub async fn open(
        dialer: &Dialer,
        version: &str,
        secrets: MountSecrets,
        ssh_agent: Option<std::path::PathBuf>,
        credentials: Arc<HashMap<String, DockerCredentials>>,
        sources: Sources,
    ) -> Result<Session, EngineError> {
        let id = new_id();
        let stream = dialer.dial().await?;
        let failed = |what: &str, err: &dyn std::fmt::Display| {
            EngineError::Api(format!("BuildKit session: {what}: {err}"))
        };
        let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
            .await
            .map_err(|e| failed("handshake", &e))?;
        let connection = tokio::spawn(connection.with_upgrades());

        let mut request = Request::post(format!("/v{version}/session"))
            .header(HOST, "docker")
            .header(CONNECTION, "Upgrade")
            .header(UPGRADE, "h2c")
            .header("X-Docker-Expose-Session-Uuid", &id)
            .header("X-Docker-Expose-Session-Name", "habitus")
            .header("X-Docker-Expose-Session-Sharedkey", &id);
        let mut methods = vec![HEALTH_CHECK, GET_SECRET, CREDENTIALS, DIFF_COPY];
        if ssh_agent.is_some() {
            methods.extend([CHECK_AGENT, FORWARD_AGENT]);
        }
        for method in methods {
            request = request.header("X-Docker-Expose-Session-Grpc-Method", method);
        }
        let request = request
            .body(Empty::<Bytes>::new())
            .map_err(|e| failed("request", &e))?;
        let response = sender
            .send_request(request)
            .await
            .map_err(|e| failed("request", &e))?;
        if response.status() != StatusCode::SWITCHING_PROTOCOLS {
            let message = refusal(response).await;
            connection.abort();
            return Err(EngineError::Api(format!(
                "the daemon refused a BuildKit session: {message}"
            )));
        }
        let upgraded = hyper::upgrade::on(response)
            .await
            .map_err(|e| failed("upgrade", &e))?;

        let offer = Arc::new(Offer {
            secrets,
            ssh_agent,
            credentials,
            refused: Mutex::new(Vec::new()),
            sources: Arc::new(sources),
        });
        let served = Arc::clone(&offer);
        let service = hyper::service::service_fn(move |request: Request<Incoming>| {
            let offer = Arc::clone(&served);
            async move {
                if request.uri().path() == DIFF_COPY {
                    return Ok::<_, Infallible>(filesync::diff_copy(
                        Arc::clone(&offer.sources),
                        request,
                    ));
                }
                Ok::<_, Infallible>(answer(&offer, request).await)
            }
        });
        let task = tokio::spawn(async move {
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(upgraded, service)
                .await;
        });
        Ok(Session { id, offer, task })
    }

    /// The id a build request names in its `session` parameter.
    pub fn id(&self) -> &str {
        &self.id
    }

    /// The first error sending the context or the Dockerfile hit: the
    /// vertex that shows the transfer, and the message.
    pub fn sync_failure(&self) -> Option<super::filesync::SyncFailure> {
        self.offer.sources.failure()
    }

    /// Secret ids the build asked for that the step does not declare.
    pub fn refused(&self) -> Vec<String> {
        self.offer
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

/// A random session id (BuildKit accepts any unique string).
fn new_id() -> String {
    use rand::Rng;
    let bytes: [u8; 16] = rand::rng().random();
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// What the daemon said when it refused a request: the `message` of its
/// error body, and the status.
pub(super) async fn refusal(response: hyper::Response<Incoming>) -> String {
    let status = response.status();
    let body = response
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes())
        .unwrap_or_default();
    format!("{} ({status})", daemon_message(&body))
}

/// The `message` of a daemon error body, or the body itself.
fn daemon_message(body: &[u8]) -> String {
    #[derive(serde::Deserialize)]
    struct Message {
        message: String,
    }
    match serde_json::from_slice::<Message>(body) {
        Ok(m) => m.message,
        Err(_) => String::from_utf8_lossy(body).trim().to_string(),
    }
}

async fn answer(offer: &Offer, request: Request<Incoming>) -> Response<GrpcBody> {
    let path = request.uri().path().to_string();
    let agent = offer.ssh_agent.as_ref();
    if agent.is_some() && path == FORWARD_AGENT {
        return forward_agent(agent, request).await;
    }
    let known = [HEALTH_CHECK, GET_SECRET, CREDENTIALS].contains(&path.as_str())
        || (agent.is_some() && path == CHECK_AGENT);
    if !known {
        return reply(Vec::new(), GRPC_UNIMPLEMENTED, "unknown method");
    }
    let message = match read_message(request).await {
        Ok(message) => message,
        Err(why) => return reply(Vec::new(), GRPC_INVALID_ARGUMENT, why),
    };
    match path.as_str() {
        // BuildKit asks for "" when the mount names no id.
        CHECK_AGENT => match proto::agent_id(&message) {
            Ok(id) if id.is_empty() || id == AGENT_ID => {
                reply(vec![frame(Vec::new())], GRPC_OK, "")
            }
            _ => reply(
                Vec::new(),
                GRPC_NOT_FOUND,
                "only the default SSH agent is forwarded",
            ),
        },
        HEALTH_CHECK => reply(vec![frame(proto::health_serving())], GRPC_OK, ""),
        GET_SECRET => {
            let Ok(id) = proto::secret_id(&message) else {
                return reply(Vec::new(), GRPC_INVALID_ARGUMENT, "malformed request");
            };
            let Some(secret) = offer.secrets.secrets.get(&id) else {
                if let Some(log) = &offer.secrets.on_fetch {
                    log(&id, false);
                }
                offer
                    .refused
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .push(id.clone());
                return reply(
                    Vec::new(),
                    GRPC_NOT_FOUND,
                    "secret not declared for this step",
                );
            };
            if let Some(log) = &offer.secrets.on_fetch {
                log(&id, true);
            }
            // GetSecretResponse { data }: the field header here, the bytes
            // borrowed from the secret's own buffer (see SecretBytes).
            let header = proto::secret_response_header(secret.bytes().len());
            let len = header.len() + secret.bytes().len();
            let mut prefix = grpc_prefix(len);
            prefix.extend_from_slice(&header);
            let data = Bytes::from_owner(SecretBytes(Arc::clone(secret)));
            reply(vec![Bytes::from(prefix), data], GRPC_OK, "")
        }
        _ => {
            let Ok(host) = proto::credentials_host(&message) else {
                return reply(Vec::new(), GRPC_INVALID_ARGUMENT, "malformed request");
            };
            let out = match credentials_for(&offer.credentials, &host) {
                Some(creds) => match creds.identitytoken.as_deref().filter(|t| !t.is_empty()) {
                    // An identity token travels as the secret, without a
                    // user name.
                    Some(token) => proto::credentials("", token),
                    None => proto::credentials(
                        creds.username.as_deref().unwrap_or(""),
                        creds.password.as_deref().unwrap_or(""),
                    ),
                },
                None => proto::credentials("", ""),
            };
            reply(vec![frame(out)], GRPC_OK, "")
        }
    }
}

/// Lets a response borrow the secret's buffer instead of copying it into
/// memory that would not be zeroed.
struct SecretBytes(Arc<dyn MountValue>);

impl AsRef<[u8]> for SecretBytes {
    fn as_ref(&self) -> &[u8] {
        // The GetSecret answer is the one place the value must leave.
        self.0.bytes()
    }
}

/// The credentials for registry `host` as BuildKit names it
/// (`registry-1.docker.io`, `ghcr.io`, `localhost:5000`), looked up the way
/// the docker CLI stores them in `config.json`.
pub fn credentials_for<'a>(
    all: &'a HashMap<String, DockerCredentials>,
    host: &str,
) -> Option<&'a DockerCredentials> {
    let hub = matches!(
        host,
        "registry-1.docker.io" | "docker.io" | "index.docker.io"
    );
    if hub {
        if let Some(creds) = all.get("https://index.docker.io/v1/") {
            return Some(creds);
        }
    }
    all.iter()
        .find(|(key, _)| {
            let bare = key
                .trim_start_matches("https://")
                .trim_start_matches("http://");
            let bare = bare.split('/').next().unwrap_or(bare);
            bare == host
        })
        .map(|(_, creds)| creds)
}

/// One `ForwardAgent` stream: the bytes of `BytesMessage`s from the daemon
/// go to a new connection to the agent's socket, what the agent answers
/// comes back as `BytesMessage`s, until either side closes.
async fn forward_agent(
    agent: Option<&std::path::PathBuf>,
    request: Request<Incoming>,
) -> Response<GrpcBody> {
    let id = request
        .headers()
        .get("buildkit.ssh.id")
        .and_then(|v| v.to_str().ok())
        .unwrap_or(AGENT_ID);
    let (Some(path), true) = (agent, id.is_empty() || id == AGENT_ID) else {
        return reply(
            Vec::new(),
            GRPC_NOT_FOUND,
            "only the default SSH agent is forwarded",
        );
    };
    let socket = match tokio::net::UnixStream::connect(path).await {
        Ok(socket) => socket,
        Err(_) => {
            return reply(
                Vec::new(),
                GRPC_UNAVAILABLE,
                "the SSH agent does not answer",
            )
        }
    };
    let (from_agent, to_agent) = socket.into_split();
    tokio::spawn(daemon_to_agent(request.into_body(), to_agent));
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Result<Frame<Bytes>, Infallible>>(4);
    tokio::spawn(agent_to_daemon(from_agent, tx));
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    let mut response = Response::new(StreamBody::new(stream).boxed());
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    response
}

/// Writes the bytes of the daemon's `BytesMessage`s to the agent, until the
/// daemon's stream ends (then closes the agent's input) or is malformed.
async fn daemon_to_agent(mut body: Incoming, mut to_agent: tokio::net::unix::OwnedWriteHalf) {
    use tokio::io::AsyncWriteExt;

    let mut pending: Vec<u8> = Vec::new();
    while let Some(Ok(frame)) = body.frame().await {
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while pending.len() >= 5 {
            let len = u32::from_be_bytes([pending[1], pending[2], pending[3], pending[4]]) as usize;
            if pending[0] != 0 || len > MAX_AGENT_MESSAGE {
                return;
            }
            if pending.len() < 5 + len {
                break;
            }
            let message: Vec<u8> = pending.drain(..5 + len).skip(5).collect();
            let Ok(bytes) = proto::agent_bytes(&message) else {
                return;
            };
            if to_agent.write_all(&bytes).await.is_err() {
                return;
            }
        }
    }
    let _ = to_agent.shutdown().await;
}

/// Sends what the agent answers back as `BytesMessage` frames, then an OK
/// status once the agent closes.
async fn agent_to_daemon(
    mut from_agent: tokio::net::unix::OwnedReadHalf,
    tx: tokio::sync::mpsc::Sender<Result<Frame<Bytes>, Infallible>>,
) {
    use tokio::io::AsyncReadExt;

    let mut buf = vec![0u8; 32 * 1024];
    loop {
        let n = match from_agent.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        let message = proto::agent_message(&buf[..n]);
        if tx.send(Ok(Frame::data(frame(message)))).await.is_err() {
            return;
        }
    }
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(GRPC_OK));
    let _ = tx.send(Ok(Frame::trailers(trailers))).await;
}

/// Reads the one length-prefixed message of a unary gRPC request.
async fn read_message(request: Request<Incoming>) -> Result<Vec<u8>, &'static str> {
    let body = Limited::new(request.into_body(), MAX_REQUEST + 5)
        .collect()
        .await
        .map_err(|_| "request too large or cut short")?
        .to_bytes();
    if body.len() < 5 {
        return Err("request shorter than its gRPC prefix");
    }
    if body[0] != 0 {
        return Err("compressed requests are not supported");
    }
    let len = u32::from_be_bytes([body[1], body[2], body[3], body[4]]) as usize;
    if body.len() != 5 + len {
        return Err("request length does not match its prefix");
    }
    Ok(body[5..].to_vec())
}

/// The 5-byte gRPC message prefix (uncompressed, `len` bytes follow).
fn grpc_prefix(len: usize) -> Vec<u8> {
    let mut out = Vec::with_capacity(5 + 16);
    out.push(0);
    out.extend_from_slice(&(len as u32).to_be_bytes());
    out
}

fn frame(message: Vec<u8>) -> Bytes {
    let mut out = grpc_prefix(message.len());
    out.extend_from_slice(&message);
    Bytes::from(out)
}

/// A gRPC response: `data` then the trailers with `status`.
fn reply(data: Vec<Bytes>, status: u32, message: &str) -> Response<GrpcBody> {
    let mut trailers = HeaderMap::new();
    trailers.insert("grpc-status", HeaderValue::from(status));
    if let Ok(message) = HeaderValue::from_str(message) {
        if !message.is_empty() {
            trailers.insert("grpc-message", message);
        }
    }
    let mut frames: Vec<Result<Frame<Bytes>, Infallible>> =
        data.into_iter().map(|d| Ok(Frame::data(d))).collect();
    frames.push(Ok(Frame::trailers(trailers)));
    let mut response = Response::new(StreamBody::new(futures_util::stream::iter(frames)).boxed());
    response
        .headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/grpc"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn creds(user: &str) -> DockerCredentials {
        DockerCredentials {
            username: Some(user.into()),
            password: Some("pw".into()),
            ..Default::default()
        }
    }

    #[test]
    fn registry_hosts_find_their_config_entries() {
        let mut all = HashMap::new();
        all.insert("https://index.docker.io/v1/".to_string(), creds("hub"));
        all.insert("ghcr.io".to_string(), creds("gh"));
        all.insert("https://localhost:5000".to_string(), creds("local"));
        let user = |host: &str| credentials_for(&all, host).and_then(|c| c.username.clone());
        assert_eq!(user("registry-1.docker.io").as_deref(), Some("hub"));
        assert_eq!(user("ghcr.io").as_deref(), Some("gh"));
        assert_eq!(user("localhost:5000").as_deref(), Some("local"));
        assert_eq!(user("quay.io"), None);
    }

    #[test]
    fn daemon_errors_show_their_message() {
        assert_eq!(daemon_message(br#"{"message":"no"}"#), "no");
        assert_eq!(daemon_message(b"plain\n"), "plain");
    }

    #[test]
    fn session_ids_are_unique_hex() {
        let (a, b) = (new_id(), new_id());
        assert_ne!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.bytes().all(|c| c.is_ascii_hexdigit()));
    }
}
