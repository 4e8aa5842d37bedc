//! The secrets server: HTTPS (HTTP/1.1 over rustls) on one address, for
//! the lifetime of one build or one `habitus serve`.
//!
//! Routes (the Go Habitus paths):
//!
//! - `GET /v1/secrets/{type}/{name}`: the secret's bytes, for
//!   `Authorization: Bearer <token>` where the token was issued to a step
//!   that declares the secret. In basic-auth compatibility mode, the right
//!   `Authorization: Basic` credentials are served any declared secret.
//! - `GET /v1/ping` (`pong`) and `GET /v1/version`: no credentials needed.
//!
//! Status codes: 400 malformed path (`..`, encoded characters, empty or
//! extra segments), 401 missing, invalid or revoked credentials, 403 a
//! secret the step does not declare, 404 unknown secret or route, 405 any
//! method but GET, 413 a request with a body, 431 oversized headers.
//!
//! Defences against slow or greedy clients: a connection has 2 s to
//! finish the TLS handshake and get a slot; a header read timeout (also
//! closes keep-alive connections idle for 10 s); a cap on a connection's
//! lifetime; a cap on connections being served (those past the handshake)
//! and a separate cap on connections not yet past it, where a new
//! connection evicts the oldest waiting one, so sockets that never start
//! TLS cannot starve real clients; a cap on header size.
//! Tokens and passwords are compared in constant time. Every request is
//! reported to the access log with step, secret, peer and status; never
//! with a value.
//!
//! Shutdown is graceful: the listener closes at once (the port refuses
//! connections), connections finish the request in flight and close, and
//! the rest are cut after a short grace period. Tokens and the TLS key are
//! dropped then; secrets when the last reference goes.

use std::collections::{BTreeMap, VecDeque};
use std::convert::Infallible;
use std::fmt;
use std::net::{IpAddr, SocketAddr};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, ALLOW, AUTHORIZATION, CACHE_CONTROL, CONTENT_TYPE};
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use subtle::ConstantTimeEq;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use zeroize::Zeroizing;

use crate::model::SecretKind;

use super::provider::{SecretKey, SecretStore};
use super::secret::{Secret, Token};
use super::tls;

/// Credentials for basic-auth compatibility mode
/// (`--authentication-secret-server`). Zeroed on drop.
#[derive(Clone)]
pub struct BasicAuth {
    user: Zeroizing<String>,
    password: Zeroizing<String>,
}

impl BasicAuth {
    /// Credentials `user`/`password`.
    pub fn new(user: &str, password: &str) -> BasicAuth {
        BasicAuth {
            user: Zeroizing::new(user.to_string()),
            password: Zeroizing::new(password.to_string()),
        }
    }

    /// The user name (not secret).
    pub fn user(&self) -> &str {
        &self.user
    }

    /// The password.
    ///
    /// Use: the runner passes it to steps as the `habitus_password` build
    /// argument, as Go Habitus did; that is what the compatibility mode is.
    pub fn expose_password(&self) -> &str {
        &self.password
    }

    /// Constant-time check of a presented `user:password`.
    fn matches(&self, user: &[u8], password: &[u8]) -> bool {
        let user_ok = self.user.as_bytes().ct_eq(user);
        let password_ok = self.password.as_bytes().ct_eq(password);
        (user_ok & password_ok).into()
    }
}

impl fmt::Debug for BasicAuth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("BasicAuth")
            .field("user", &*self.user)
            .finish_non_exhaustive()
    }
}

/// Resource limits of the server.
#[derive(Debug, Clone)]
pub struct Limits {
    /// Time for a client to complete the TLS handshake and get one of
    /// [`Limits::max_connections`]; then the connection is dropped.
    pub handshake_timeout: Duration,
    /// Time for a client to send a request's headers, counted from the
    /// moment the server waits for them (so also idle keep-alive time).
    pub header_read_timeout: Duration,
    /// Longest life of one connection.
    pub max_connection_lifetime: Duration,
    /// Connections served at once (past the TLS handshake); more wait,
    /// within [`Limits::handshake_timeout`].
    pub max_connections: usize,
    /// Connections accepted but not yet served (in the TLS handshake or
    /// waiting for a slot); a new connection beyond this evicts the
    /// oldest of them.
    pub max_pending: usize,
    /// Largest request head (request line and headers), in bytes; larger
    /// gets 431.
    pub max_header_bytes: usize,
    /// How long shutdown waits for connections to finish.
    pub shutdown_grace: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            handshake_timeout: Duration::from_secs(2),
            header_read_timeout: Duration::from_secs(10),
            max_connection_lifetime: Duration::from_secs(120),
            max_connections: 256,
            max_pending: 256,
            max_header_bytes: 8 * 1024,
            shutdown_grace: Duration::from_secs(2),
        }
    }
}

/// One line of the access log. Holds no secret value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AccessRecord {
    /// The step whose token was used; `basic-auth` for basic credentials;
    /// `None` if no valid credentials were presented.
    pub step: Option<String>,
    pub method: String,
    /// The request path (`/v1/secrets/file/id_rsa`), cut to 200 characters.
    pub path: String,
    pub peer: SocketAddr,
    pub status: u16,
}

impl fmt::Display for AccessRecord {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "secrets server: {} {} from {} by step `{}`: {}",
            self.method,
            self.path,
            self.peer,
            self.step.as_deref().unwrap_or("-"),
            self.status
        )
    }
}

/// Receives every [`AccessRecord`].
pub type AccessLog = Arc<dyn Fn(&AccessRecord) + Send + Sync>;

/// How to start the server.
#[derive(Clone)]
pub struct ServerOptions {
    /// Address to bind.
    pub bind: IpAddr,
    /// Port to bind; 0 = any free port.
    pub port: u16,
    /// Names put into the server certificate besides [`tls::names_for`]
    /// of `bind`.
    pub extra_names: Vec<String>,
    /// Basic-auth compatibility mode; `None` = tokens only.
    pub basic_auth: Option<BasicAuth>,
    pub limits: Limits,
    pub log: AccessLog,
}

impl fmt::Debug for ServerOptions {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerOptions")
            .field("bind", &self.bind)
            .field("port", &self.port)
            .field("extra_names", &self.extra_names)
            .field("basic_auth", &self.basic_auth)
            .field("limits", &self.limits)
            .finish_non_exhaustive()
    }
}

impl ServerOptions {
    /// Options for `bind:port` with default limits, no basic auth and no
    /// access log.
    pub fn new(bind: IpAddr, port: u16) -> ServerOptions {
        ServerOptions {
            bind,
            port,
            extra_names: Vec::new(),
            basic_auth: None,
            limits: Limits::default(),
            log: Arc::new(|_| {}),
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The TLS identity could not be made.
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    /// The address could not be bound.
    #[error("secrets server: cannot listen on `{address}`: {source}")]
    Bind {
        /// `ip:port`.
        address: SocketAddr,
        /// The operating system's reason.
        source: std::io::Error,
    },
}

/// A token's rights: one step's secrets while the step builds.
struct Grant {
    token: Token,
    step: String,
    secrets: BTreeMap<SecretKey, Arc<Secret>>,
}

struct Shared {
    store: SecretStore,
    grants: RwLock<Vec<Grant>>,
    basic_auth: Option<BasicAuth>,
    log: AccessLog,
}

/// A running server. Dropping it stops the server too (without waiting);
/// [`ServerHandle::shutdown`] stops it and waits.
pub struct ServerHandle {
    addr: SocketAddr,
    ca_pem: String,
    tokens: Tokens,
    stop: CancellationToken,
    task: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

impl fmt::Debug for ServerHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ServerHandle")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Issues and revokes tokens of one server; cheap to clone.
#[derive(Clone)]
pub struct Tokens {
    shared: Arc<Shared>,
}

impl fmt::Debug for Tokens {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Tokens").finish_non_exhaustive()
    }
}

impl Tokens {
    /// A fresh token for `step`, valid for the secrets that step declares
    /// until [`Tokens::revoke`] (or the server stops).
    pub fn issue(&self, step: &str) -> Token {
        let token = Token::generate();
        let grant = Grant {
            token: token.clone(),
            step: step.to_string(),
            secrets: self.shared.store.of_step(step),
        };
        write(&self.shared.grants).push(grant);
        token
    }

    /// Makes `token` invalid from now on (requests with it get 401).
    pub fn revoke(&self, token: &Token) {
        write(&self.shared.grants).retain(|g| g.token != *token);
    }
}

/// Starts the server for the secrets in `store`: makes the TLS identity,
/// binds, and serves in the background until [`ServerHandle::shutdown`].
pub async fn start(
    options: ServerOptions,
    store: SecretStore,
) -> Result<ServerHandle, ServerError> {
    let mut names = tls::names_for(options.bind);
    for name in &options.extra_names {
        if !names.contains(name) {
            names.push(name.clone());
        }
    }
    let identity = tls::generate(&names)?;
    let address = SocketAddr::new(options.bind, options.port);
    let listener = TcpListener::bind(address)
        .await
        .map_err(|source| ServerError::Bind { address, source })?;
    let addr = listener
        .local_addr()
        .map_err(|source| ServerError::Bind { address, source })?;
    let shared = Arc::new(Shared {
        store,
        grants: RwLock::new(Vec::new()),
        basic_auth: options.basic_auth.clone(),
        log: Arc::clone(&options.log),
    });
    let stop = CancellationToken::new();
    let task = tokio::spawn(serve(
        listener,
        TlsAcceptor::from(identity.config),
        Arc::clone(&shared),
        options.limits,
        stop.clone(),
    ));
    Ok(ServerHandle {
        addr,
        ca_pem: identity.ca_pem,
        tokens: Tokens { shared },
        stop,
        task: Mutex::new(Some(task)),
    })
}

impl ServerHandle {
    /// The address the server listens on.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `https://host:port` (IPv6 hosts in brackets).
    pub fn url(&self) -> String {
        format!("https://{}", self.addr)
    }

    /// The CA certificate clients must trust, PEM.
    pub fn ca_pem(&self) -> &str {
        &self.ca_pem
    }

    /// A fresh token for `step`, valid for the secrets that step declares
    /// until [`ServerHandle::revoke`].
    pub fn issue_token(&self, step: &str) -> Token {
        self.tokens.issue(step)
    }

    /// Makes `token` invalid from now on (requests with it get 401).
    pub fn revoke(&self, token: &Token) {
        self.tokens.revoke(token);
    }

    /// The token issuer, for holders that outlive a borrow of the handle.
    pub fn tokens(&self) -> Tokens {
        self.tokens.clone()
    }

    /// Stops the server: closes the listener, lets connections finish
    /// their request in flight (cut after the grace period), drops every
    /// token and the TLS key. Calling it again does nothing.
    pub async fn shutdown(&self) {
        self.stop.cancel();
        write(&self.tokens.shared.grants).clear();
        let task = self.task.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(task) = task {
            let _ = task.await;
        }
    }
}

impl Drop for ServerHandle {
    fn drop(&mut self) {
        self.stop.cancel();
        write(&self.tokens.shared.grants).clear();
    }
}

fn write<T>(lock: &RwLock<T>) -> std::sync::RwLockWriteGuard<'_, T> {
    lock.write().unwrap_or_else(|e| e.into_inner())
}

fn read<T>(lock: &RwLock<T>) -> std::sync::RwLockReadGuard<'_, T> {
    lock.read().unwrap_or_else(|e| e.into_inner())
}

async fn serve(
    listener: TcpListener,
    acceptor: TlsAcceptor,
    shared: Arc<Shared>,
    limits: Limits,
    stop: CancellationToken,
) {
    let slots = Arc::new(Semaphore::new(limits.max_connections.max(1)));
    let pending = Arc::new(Pending::new(limits.max_pending.max(1)));
    let mut http = hyper::server::conn::http1::Builder::new();
    http.timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .max_header_size(limits.max_header_bytes)
        .max_headers(64)
        .keep_alive(true);
    let http = Arc::new(http);
    let mut connections = JoinSet::new();
    loop {
        let (tcp, peer) = tokio::select! {
            _ = stop.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                // Out of file descriptors and the like: back off a little.
                Err(_) => {
                    tokio::time::sleep(Duration::from_millis(20)).await;
                    continue;
                }
            },
        };
        // Reap finished connections so the set does not grow.
        while connections.try_join_next().is_some() {}
        let _ = tcp.set_nodelay(true);
        let ticket = Pending::admit(&pending);
        let acceptor = acceptor.clone();
        let slots = Arc::clone(&slots);
        let shared = Arc::clone(&shared);
        let http = Arc::clone(&http);
        let stop = stop.clone();
        let limits = limits.clone();
        connections.spawn(async move {
            let setup = async {
                let tls = acceptor.accept(tcp).await.ok()?;
                let permit = slots.acquire_owned().await.ok()?;
                Some((tls, permit))
            };
            let ready = tokio::select! {
                _ = stop.cancelled() => None,
                _ = ticket.evicted.cancelled() => None,
                ready = tokio::time::timeout(limits.handshake_timeout, setup) => ready.ok().flatten(),
            };
            drop(ticket);
            let Some((tls, _permit)) = ready else {
                return;
            };
            let service = service_fn(move |req| {
                let shared = Arc::clone(&shared);
                async move { Ok::<_, Infallible>(handle(&shared, peer, &req)) }
            });
            let conn = http.serve_connection(TokioIo::new(tls), service);
            let mut conn = std::pin::pin!(conn);
            tokio::select! {
                _ = conn.as_mut() => return,
                _ = stop.cancelled() => {}
                _ = tokio::time::sleep(limits.max_connection_lifetime) => {}
            }
            conn.as_mut().graceful_shutdown();
            let _ = tokio::time::timeout(limits.shutdown_grace, conn).await;
        });
    }
    // The listener closes here: new connections are refused.
    drop(listener);
    let grace = tokio::time::sleep(limits.shutdown_grace + Duration::from_millis(500));
    tokio::pin!(grace);
    loop {
        tokio::select! {
            next = connections.join_next() => if next.is_none() { break },
            _ = &mut grace => {
                connections.abort_all();
                while connections.join_next().await.is_some() {}
                break;
            }
        }
    }
}

/// Connections accepted but not yet served, oldest first; at most `cap`.
struct Pending {
    cap: usize,
    state: Mutex<(u64, VecDeque<(u64, CancellationToken)>)>,
}

/// A connection's place in [`Pending`]; leaves it when dropped.
struct Ticket {
    id: u64,
    evicted: CancellationToken,
    pending: Arc<Pending>,
}

impl Pending {
    fn new(cap: usize) -> Pending {
        Pending {
            cap,
            state: Mutex::new((0, VecDeque::new())),
        }
    }

    /// Enters a new connection, evicting the oldest ones beyond the cap.
    fn admit(pending: &Arc<Pending>) -> Ticket {
        let mut state = pending.state.lock().unwrap_or_else(|e| e.into_inner());
        let (next, queue) = &mut *state;
        while queue.len() >= pending.cap {
            if let Some((_, oldest)) = queue.pop_front() {
                oldest.cancel();
            }
        }
        let id = *next;
        *next += 1;
        let evicted = CancellationToken::new();
        queue.push_back((id, evicted.clone()));
        Ticket {
            id,
            evicted,
            pending: Arc::clone(pending),
        }
    }
}

impl Drop for Ticket {
    fn drop(&mut self) {
        let mut state = self.pending.state.lock().unwrap_or_else(|e| e.into_inner());
        state.1.retain(|(id, _)| *id != self.id);
    }
}

type Body = Full<Bytes>;

/// The request path, checked: `None` for anything but plain segments.
fn segments(path: &str) -> Option<Vec<&str>> {
    let rest = path.strip_prefix('/')?;
    let parts: Vec<&str> = rest.split('/').collect();
    let plain = |s: &&str| {
        !s.is_empty()
            && *s != "."
            && *s != ".."
            && !s.contains(['%', '\\'])
            && s.bytes().all(|b| b.is_ascii_graphic())
    };
    parts.iter().all(plain).then_some(parts)
}

fn handle(shared: &Shared, peer: SocketAddr, req: &Request<Incoming>) -> Response<Body> {
    let path = req.uri().path();
    let mut record = AccessRecord {
        step: None,
        method: req.method().as_str().chars().take(16).collect(),
        path: path.chars().take(200).collect(),
        peer,
        status: 0,
    };
    let response = route(shared, req, &mut record);
    record.status = response.status().as_u16();
    (shared.log)(&record);
    response
}

/// What a request asks for, decided from its method, path and headers
/// alone, before any credential is looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Route {
    /// 400: not plain segments (`..`, encoded characters, empty
    /// segments), or a secrets path with missing or extra segments.
    MalformedPath,
    /// 404: no such route.
    NotFound,
    /// 405: a method other than GET on a known route.
    MethodNotAllowed,
    /// 413: a request that carries a body.
    HasBody,
    /// `GET /v1/ping`.
    Ping,
    /// `GET /v1/version`.
    Version,
    /// `GET /v1/secrets/{kind}/{name}`.
    Secret(SecretKey),
    /// `GET /v1/secrets/{kind}/{name}` with a `{kind}` habitus does not
    /// know: no step can declare it, so once the credentials pass it is
    /// answered as any secret no step declares.
    UnknownKind,
}

/// Classifies a request; the checks run in the order of the status codes
/// a client sees: path, route, method, body.
pub fn classify(method: &Method, path: &str, headers: &HeaderMap) -> Route {
    let Some(parts) = segments(path) else {
        return Route::MalformedPath;
    };
    let known = matches!(
        parts.as_slice(),
        ["v1", "ping"] | ["v1", "version"] | ["v1", "secrets", ..]
    );
    if !known {
        return Route::NotFound;
    }
    if method != Method::GET {
        return Route::MethodNotAllowed;
    }
    let has_body = headers
        .get(hyper::header::CONTENT_LENGTH)
        .is_some_and(|v| v.as_bytes() != b"0")
        || headers.contains_key(hyper::header::TRANSFER_ENCODING);
    if has_body {
        return Route::HasBody;
    }
    match parts.as_slice() {
        ["v1", "ping"] => Route::Ping,
        ["v1", "version"] => Route::Version,
        ["v1", "secrets", kind, name] => match SecretKind::parse(kind) {
            Some(kind) => Route::Secret(SecretKey {
                kind,
                name: name.to_string(),
            }),
            None => Route::UnknownKind,
        },
        _ => Route::MalformedPath,
    }
}

/// What an `Authorization` header presents. `Debug` shows no password
/// and no token.
#[derive(PartialEq, Eq)]
pub enum Credentials<'a> {
    /// No header, an unknown scheme or undecodable basic credentials.
    None,
    /// `Bearer <token>` (scheme case-insensitive, token trimmed).
    Bearer(&'a [u8]),
    /// `Basic base64(user:password)`, decoded; zeroed on drop.
    Basic {
        /// Up to the first `:`.
        user: Zeroizing<Vec<u8>>,
        /// After the first `:`.
        password: Zeroizing<Vec<u8>>,
    },
}

impl fmt::Debug for Credentials<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Credentials::None => f.write_str("None"),
            Credentials::Bearer(token) => write!(f, "Bearer({} bytes)", token.len()),
            Credentials::Basic { user, .. } => f
                .debug_struct("Basic")
                .field("user", &String::from_utf8_lossy(user))
                .finish_non_exhaustive(),
        }
    }
}

/// Parses an `Authorization` header value.
pub fn credentials(header: Option<&[u8]>) -> Credentials<'_> {
    let Some(header) = header else {
        return Credentials::None;
    };
    if let Some(presented) = strip_prefix_ignore_case(header, b"Bearer ") {
        return Credentials::Bearer(presented.trim_ascii());
    }
    if let Some(encoded) = strip_prefix_ignore_case(header, b"Basic ") {
        let Some(decoded) = crate::model::base64_decode(encoded.trim_ascii()) else {
            return Credentials::None;
        };
        let decoded = Zeroizing::new(decoded);
        let Some(colon) = decoded.iter().position(|&b| b == b':') else {
            return Credentials::None;
        };
        return Credentials::Basic {
            user: Zeroizing::new(decoded[..colon].to_vec()),
            password: Zeroizing::new(decoded[colon + 1..].to_vec()),
        };
    }
    Credentials::None
}

fn route(shared: &Shared, req: &Request<Incoming>, record: &mut AccessRecord) -> Response<Body> {
    let key = match classify(req.method(), req.uri().path(), req.headers()) {
        Route::MalformedPath => return text(StatusCode::BAD_REQUEST, "malformed path\n"),
        Route::NotFound => return text(StatusCode::NOT_FOUND, "not found\n"),
        Route::MethodNotAllowed => {
            let mut response = text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n");
            response
                .headers_mut()
                .insert(ALLOW, HeaderValue::from_static("GET"));
            return response;
        }
        Route::HasBody => return text(StatusCode::PAYLOAD_TOO_LARGE, "requests carry no body\n"),
        Route::Ping => return text(StatusCode::OK, "pong\n"),
        Route::Version => {
            return text(
                StatusCode::OK,
                concat!("habitus ", env!("CARGO_PKG_VERSION"), "\n"),
            )
        }
        Route::Secret(key) => Some(key),
        Route::UnknownKind => None,
    };
    let key = key.as_ref();
    let header = req.headers().get(AUTHORIZATION).map(HeaderValue::as_bytes);
    let secret = match authorize(shared, credentials(header), key) {
        Auth::Denied => return unauthorized(shared),
        Auth::Step { step, secret } => {
            record.step = Some(step);
            match secret {
                Some(secret) => secret,
                None if key.is_some_and(|key| shared.store.declared_anywhere(key)) => {
                    return text(StatusCode::FORBIDDEN, "secret not declared for this step\n")
                }
                None => return text(StatusCode::NOT_FOUND, "unknown secret\n"),
            }
        }
        Auth::Basic => {
            record.step = Some("basic-auth".into());
            match key.and_then(|key| shared.store.any_step(key)) {
                Some(secret) => secret,
                None => return text(StatusCode::NOT_FOUND, "unknown secret\n"),
            }
        }
    };
    let mut response = Response::new(Full::new(Bytes::from_owner(SecretBytes(secret))));
    let headers = response.headers_mut();
    headers.insert(
        CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
    response
}

/// Lets a response body borrow the secret's buffer instead of copying it
/// into memory that would not be zeroed.
struct SecretBytes(Arc<Secret>);

impl AsRef<[u8]> for SecretBytes {
    fn as_ref(&self) -> &[u8] {
        // The response body is the one place the value must leave.
        self.0.expose()
    }
}

enum Auth {
    Denied,
    /// A live token of `step`; `secret` is the requested one if the step
    /// declares it.
    Step {
        step: String,
        secret: Option<Arc<Secret>>,
    },
    /// Valid basic-auth credentials (compatibility mode).
    Basic,
}

/// Checks the presented credentials for a request of `key` (`None` for a
/// kind habitus does not know). Every live token is compared (no early
/// exit), so timing does not tell how many tokens exist or which one
/// matched.
fn authorize(shared: &Shared, credentials: Credentials<'_>, key: Option<&SecretKey>) -> Auth {
    match credentials {
        Credentials::None => Auth::Denied,
        Credentials::Bearer(presented) => {
            let grants = read(&shared.grants);
            let mut found: Option<&Grant> = None;
            for grant in grants.iter() {
                if grant.token.matches(presented) {
                    found = Some(grant);
                }
            }
            match found {
                Some(grant) => Auth::Step {
                    step: grant.step.clone(),
                    secret: key.and_then(|key| grant.secrets.get(key).cloned()),
                },
                None => Auth::Denied,
            }
        }
        Credentials::Basic { user, password } => match &shared.basic_auth {
            Some(basic) if basic.matches(&user, &password) => Auth::Basic,
            _ => Auth::Denied,
        },
    }
}

fn strip_prefix_ignore_case<'a>(value: &'a [u8], prefix: &[u8]) -> Option<&'a [u8]> {
    (value.len() >= prefix.len() && value[..prefix.len()].eq_ignore_ascii_case(prefix))
        .then(|| &value[prefix.len()..])
}

fn unauthorized(shared: &Shared) -> Response<Body> {
    let mut response = text(StatusCode::UNAUTHORIZED, "unauthorized\n");
    let challenge = if shared.basic_auth.is_some() {
        "Basic realm=\"habitus\""
    } else {
        "Bearer realm=\"habitus\""
    };
    response
        .headers_mut()
        .insert("www-authenticate", HeaderValue::from_static(challenge));
    response
}

fn text(status: StatusCode, body: &'static str) -> Response<Body> {
    let mut response = Response::new(Full::new(Bytes::from_static(body.as_bytes())));
    *response.status_mut() = status;
    response.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use hyper::header::{HeaderMap, HeaderValue, CONTENT_LENGTH, TRANSFER_ENCODING};
    use hyper::Method;

    use super::{classify, credentials, segments, AccessRecord, BasicAuth, Credentials, Route};
    use crate::model::SecretKind;
    use crate::secrets::provider::SecretKey;

    #[test]
    fn requests_are_classified_by_path_then_route_then_method_then_body() {
        let none = HeaderMap::new();
        let get = Method::GET;
        assert_eq!(
            classify(&get, "/v1/secrets/file/id_rsa", &none),
            Route::Secret(SecretKey {
                kind: SecretKind::File,
                name: "id_rsa".into()
            })
        );
        assert_eq!(
            classify(&get, "/v1/secrets/vault/id_rsa", &none),
            Route::UnknownKind
        );
        assert_eq!(classify(&get, "/v1/ping", &none), Route::Ping);
        assert_eq!(classify(&get, "/v1/version", &none), Route::Version);
        assert_eq!(
            classify(&get, "/v1/secrets/file", &none),
            Route::MalformedPath
        );
        assert_eq!(
            classify(&get, "/v1/secrets/a/b/c", &none),
            Route::MalformedPath
        );
        assert_eq!(
            classify(&get, "/v1/secrets/a/../b", &none),
            Route::MalformedPath
        );
        assert_eq!(classify(&get, "/v2/ping", &none), Route::NotFound);
        assert_eq!(
            classify(&Method::POST, "/v1/ping", &none),
            Route::MethodNotAllowed
        );
        assert_eq!(
            classify(&Method::POST, "/elsewhere", &none),
            Route::NotFound
        );
        let mut body = HeaderMap::new();
        body.insert(CONTENT_LENGTH, HeaderValue::from_static("3"));
        assert_eq!(classify(&get, "/v1/ping", &body), Route::HasBody);
        let mut empty = HeaderMap::new();
        empty.insert(CONTENT_LENGTH, HeaderValue::from_static("0"));
        assert_eq!(classify(&get, "/v1/ping", &empty), Route::Ping);
        let mut chunked = HeaderMap::new();
        chunked.insert(TRANSFER_ENCODING, HeaderValue::from_static("chunked"));
        assert_eq!(classify(&get, "/v1/ping", &chunked), Route::HasBody);
    }

    #[test]
    fn authorization_headers_are_parsed_without_showing_secrets() {
        assert_eq!(credentials(None), Credentials::None);
        assert_eq!(
            credentials(Some(b"bearer  abc \t")),
            Credentials::Bearer(b"abc")
        );
        let basic = credentials(Some(b"Basic aGFiaXR1czphZDpt"));
        assert_eq!(format!("{basic:?}"), "Basic { user: \"habitus\", .. }");
        match basic {
            Credentials::Basic { user, password } => {
                assert_eq!((&user[..], &password[..]), (&b"habitus"[..], &b"ad:m"[..]));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(
            format!("{:?}", credentials(Some(b"Bearer s3cret"))),
            "Bearer(6 bytes)"
        );
        assert_eq!(credentials(Some(b"Basic bm9jb2xvbg==")), Credentials::None);
        assert_eq!(credentials(Some(b"Basic !!")), Credentials::None);
        assert_eq!(credentials(Some(b"Token abc")), Credentials::None);
    }

    #[test]
    fn only_plain_segments_pass() {
        assert_eq!(
            segments("/v1/secrets/file/id_rsa"),
            Some(vec!["v1", "secrets", "file", "id_rsa"])
        );
        for bad in [
            "/v1/secrets/file/../env/x",
            "/v1/secrets/file/a%2fb",
            "/v1/secrets/file/a%2Fb",
            "/v1/secrets//x",
            "/v1/secrets/file/a\\b",
            "/v1/secrets/file/.",
            "v1/ping",
        ] {
            assert_eq!(segments(bad), None, "{bad}");
        }
    }

    #[test]
    fn base64_and_basic_credentials() {
        assert_eq!(
            crate::model::base64_decode(b"aGFiaXR1czphZG1pbg==").unwrap(),
            b"habitus:admin"
        );
        assert_eq!(crate::model::base64_decode(b"YQ").unwrap(), b"a");
        assert!(crate::model::base64_decode(b"a b").is_none());
        let basic = BasicAuth::new("habitus", "admin");
        assert!(basic.matches(b"habitus", b"admin"));
        assert!(!basic.matches(b"habitus", b"admin2"));
        assert!(!basic.matches(b"habitu", b"admin"));
        assert_eq!(format!("{basic:?}"), "BasicAuth { user: \"habitus\", .. }");
    }

    #[test]
    fn access_lines_name_step_path_peer_and_status() {
        let record = AccessRecord {
            step: Some("compile".into()),
            method: "GET".into(),
            path: "/v1/secrets/file/id_rsa".into(),
            peer: "172.18.0.2:40000".parse().unwrap(),
            status: 200,
        };
        assert_eq!(
            record.to_string(),
            "secrets server: GET /v1/secrets/file/id_rsa from 172.18.0.2:40000 by step `compile`: 200"
        );
    }
}
