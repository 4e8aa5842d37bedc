//! How bollard's requests reach the daemon: a pool of HTTP/1 connections
//! opened by the [`Dialer`] (unix socket, TCP, TLS with a client
//! certificate), and a path rewrite that sends every request under
//! `/v{negotiated}/`, as the docker CLI does.
//!
//! bollard 0.21 builds each URI by joining an absolute path onto
//! `…/v1.xx/`, which drops the version (bollard issue #736): unversioned,
//! every request would be answered at the daemon's own newest API, whatever
//! was negotiated, and response shapes would change under habitus on newer
//! daemons. The rewrite here does not rely on bollard's prefix: a request is
//! sent unversioned while the version is being negotiated (the ping and
//! `GET /version`), and under the negotiated version afterwards, replacing
//! any prefix bollard put there.

use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bollard::errors::Error as BollardError;
use bollard::{BollardRequest, ClientVersion, Docker};
use bytes::Bytes;
use http_body_util::{Either, Full, StreamBody};
use hyper::body::Frame;
use hyper::http::uri::PathAndQuery;
use hyper::Uri;
use hyper_util::client::legacy::connect::{Connected, Connection};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};

use super::buildkit::dial::DialError;
use super::buildkit::dial::Stream as DialedStream;
use super::buildkit::Dialer;

/// The request body bollard hands its transports (bollard's `BodyType`,
/// which it does not export under that name).
type Body = Either<
    Full<Bytes>,
    StreamBody<Pin<Box<dyn futures_util::Stream<Item = Result<Frame<Bytes>, io::Error>> + Send>>>,
>;

/// How long an idle connection stays in the pool.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);

/// The connections to one daemon, shared by every bollard client made from
/// it (the one that negotiates and the one that works afterwards).
#[derive(Clone)]
pub(super) struct Pool {
    client: Client<Connector, Body>,
    /// `http://authority` that bollard puts in front of each path; the
    /// authority is only the `Host` header: the dialer decides where the
    /// connection goes.
    base: String,
}

impl std::fmt::Debug for Pool {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pool")
            .field("base", &self.base)
            .finish_non_exhaustive()
    }
}

impl Pool {
    /// A pool of connections opened by `dialer`; `authority` becomes the
    /// `Host` header (`host:port`, or `api.moby.localhost` for a socket, as
    /// the docker CLI sends).
    pub(super) fn new(dialer: Dialer, authority: &str) -> Pool {
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(IDLE_TIMEOUT)
            .pool_timer(TokioTimer::new())
            .build(Connector { dialer });
        Pool {
            client,
            base: format!("http://{authority}"),
        }
    }

    /// A bollard client whose requests go through this pool: under
    /// `/v{version}/` with a version, unversioned without one (for the ping
    /// and the negotiation). `timeout` (seconds) bounds each request until
    /// its response headers arrive.
    pub(super) fn docker(
        &self,
        version: Option<&ClientVersion>,
        timeout: u64,
    ) -> Result<Docker, BollardError> {
        let client = self.client.clone();
        let prefix = version.map(|v| format!("/v{v}"));
        let transport = move |request: BollardRequest| {
            let client = client.clone();
            let request = versioned(request, prefix.as_deref());
            async move { client.request(request?).await.map_err(BollardError::from) }
        };
        let client_version = version.unwrap_or(bollard::API_DEFAULT_VERSION);
        Docker::connect_with_custom_transport(
            transport,
            Some(self.base.as_str()),
            timeout,
            client_version,
        )
    }
}

/// `request` with its path under `prefix` (`/v1.41`), or with no version
/// prefix when `prefix` is `None`.
fn versioned(
    request: BollardRequest,
    prefix: Option<&str>,
) -> Result<BollardRequest, BollardError> {
    let (mut parts, body) = request.into_parts();
    let mut uri = parts.uri.into_parts();
    if let Some(path_and_query) = &uri.path_and_query {
        let rewritten = with_version(path_and_query.as_str(), prefix);
        uri.path_and_query = Some(rewritten.parse::<PathAndQuery>()?);
    }
    parts.uri = Uri::from_parts(uri)?;
    Ok(BollardRequest::from_parts(parts, body))
}

/// `/images/json?all=1` under `/v1.41` is `/v1.41/images/json?all=1`; a
/// path that already has a version prefix (`/v1.53/_ping`) has it replaced
/// (or removed, without `prefix`).
pub(super) fn with_version(path_and_query: &str, prefix: Option<&str>) -> String {
    let rest = strip_version(path_and_query).unwrap_or(path_and_query);
    match prefix {
        Some(prefix) => format!("{prefix}{rest}"),
        None => rest.to_string(),
    }
}

/// The path after a `/v<major>.<minor>` prefix, if there is one.
fn strip_version(path: &str) -> Option<&str> {
    let after_v = path.strip_prefix("/v")?;
    let end = after_v.find(['/', '?']).unwrap_or(after_v.len());
    let (major, minor) = after_v[..end].split_once('.')?;
    let digits = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_digit());
    (digits(major) && digits(minor)).then(|| &after_v[end..])
}

/// Opens the pool's connections with the [`Dialer`], wherever the URI
/// points.
#[derive(Clone)]
struct Connector {
    dialer: Dialer,
}

impl tower_service::Service<Uri> for Connector {
    type Response = DaemonIo;
    type Error = DialError;
    type Future = Pin<Box<dyn Future<Output = Result<DaemonIo, DialError>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), DialError>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let dialer = self.dialer.clone();
        Box::pin(async move { Ok(DaemonIo(TokioIo::new(dialer.open().await?))) })
    }
}

/// One dialed connection, as hyper reads and writes it.
struct DaemonIo(TokioIo<Pin<Box<dyn DialedStream>>>);

impl Connection for DaemonIo {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for DaemonIo {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for DaemonIo {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().0).poll_shutdown(cx)
    }

    fn is_write_vectored(&self) -> bool {
        self.0.is_write_vectored()
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().0).poll_write_vectored(cx, bufs)
    }
}

#[cfg(test)]
mod tests {
    use super::with_version;

    #[test]
    fn paths_go_under_the_negotiated_version() {
        let v = Some("/v1.41");
        assert_eq!(with_version("/_ping", v), "/v1.41/_ping");
        assert_eq!(
            with_version("/images/json?all=true", v),
            "/v1.41/images/json?all=true"
        );
        // A prefix bollard put there (fixed upstream in 0.22) is replaced.
        assert_eq!(with_version("/v1.53/version", v), "/v1.41/version");
        assert_eq!(with_version("/v1.53?x=1", v), "/v1.41?x=1");
        // Negotiating: unversioned.
        assert_eq!(with_version("/v1.53/version", None), "/version");
        assert_eq!(with_version("/version", None), "/version");
        // Not a version prefix.
        assert_eq!(with_version("/volumes/v1.2", v), "/v1.41/volumes/v1.2");
        assert_eq!(with_version("/vx.1/a", v), "/v1.41/vx.1/a");
    }
}
