//! The secrets server: in-process against [`habitus::secrets::start`] on
//! 127.0.0.1 with the host's curl as the client, and end to end in real
//! builds whose steps fetch secrets over TLS on the build's own network.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use habitus::model::SecretKind;
use habitus::secrets::provider::{SecretKey, SecretStore};
use habitus::secrets::server::{AccessRecord, BasicAuth, ServerHandle, ServerOptions};
use habitus::secrets::{start, tls, Secret};

use crate::common::in_process::{self, InProcess};
use crate::common::leak::assert_no_secret_in_image;
use crate::common::{
    docker, from_base, from_base_for, image_exists, network_of, networks_with_label, project,
    sha256_hex, Habitus, Output, UID_LABEL,
};

// ---------------------------------------------------------------------------
// The server in-process.

struct Server {
    handle: ServerHandle,
    ca: PathBuf,
    log: Arc<Mutex<Vec<AccessRecord>>>,
    _dir: tempfile::TempDir,
}

const VALUE_A: &str = "value-of-key-a-7f3c";
const VALUE_B: &str = "value-of-key-b-91d0";

fn key(kind: SecretKind, name: &str) -> SecretKey {
    SecretKey {
        kind,
        name: name.into(),
    }
}

/// A server for step `a` (file/key_a, env/tok) and step `b` (file/key_b).
async fn server(basic: Option<BasicAuth>) -> Server {
    let mut store = SecretStore::default();
    store.insert(
        "a",
        key(SecretKind::File, "key_a"),
        Arc::new(Secret::new(VALUE_A.into())),
    );
    store.insert(
        "a",
        key(SecretKind::Env, "tok"),
        Arc::new(Secret::new(b"tok-value".to_vec())),
    );
    store.insert(
        "b",
        key(SecretKind::File, "key_b"),
        Arc::new(Secret::new(VALUE_B.into())),
    );
    let log: Arc<Mutex<Vec<AccessRecord>>> = Arc::default();
    let sink = Arc::clone(&log);
    let mut options = ServerOptions::new("127.0.0.1".parse().unwrap(), 0);
    options.basic_auth = basic;
    options.log = Arc::new(move |r: &AccessRecord| sink.lock().unwrap().push(r.clone()));
    let handle = start(options, store).await.expect("start the server");
    let dir = tempfile::tempdir().unwrap();
    let ca = dir.path().join("ca.pem");
    std::fs::write(&ca, handle.ca_pem()).unwrap();
    Server {
        handle,
        ca,
        log,
        _dir: dir,
    }
}

/// What curl saw: the HTTP status (`000` if none), the body, curl's exit code.
#[derive(Debug)]
struct Fetch {
    status: String,
    body: String,
    exit: i32,
}

/// Runs curl on a blocking thread (the server runs on the test's runtime).
async fn curl(args: Vec<String>) -> Fetch {
    tokio::task::spawn_blocking(move || {
        let out = Command::new("curl")
            .args(["-s", "-S", "--max-time", "10", "-w", "\n%{http_code}"])
            .args(&args)
            .stdin(Stdio::null())
            .output()
            .expect("run curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, status) = text.rsplit_once('\n').unwrap_or(("", &text));
        Fetch {
            status: status.to_string(),
            body: body.to_string(),
            exit: out.status.code().unwrap_or(-1),
        }
    })
    .await
    .unwrap()
}

impl Server {
    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.handle.url())
    }

    /// curl with the server's CA and `extra` arguments, fetching `path`.
    async fn get(&self, path: &str, extra: &[&str]) -> Fetch {
        let mut args = vec!["--cacert".to_string(), self.ca.display().to_string()];
        args.extend(extra.iter().map(|s| s.to_string()));
        args.push(self.url(path));
        curl(args).await
    }
}

fn bearer(token: &str) -> String {
    format!("Authorization: Bearer {token}")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tokens_are_scoped_to_their_step_and_die_when_revoked() {
    let s = server(None).await;
    let a = s.handle.issue_token("a");
    let b = s.handle.issue_token("b");
    let ha = bearer(a.expose());
    let hb = bearer(b.expose());

    let ok = s.get("/v1/secrets/file/key_a", &["-H", &ha]).await;
    assert_eq!((ok.status.as_str(), ok.body.as_str()), ("200", VALUE_A));
    let env = s.get("/v1/secrets/env/tok", &["-H", &ha]).await;
    assert_eq!(
        (env.status.as_str(), env.body.as_str()),
        ("200", "tok-value")
    );
    // Step a cannot read step b's secret, and the other way round.
    assert_eq!(
        s.get("/v1/secrets/file/key_b", &["-H", &ha]).await.status,
        "403"
    );
    assert_eq!(
        s.get("/v1/secrets/file/key_a", &["-H", &hb]).await.status,
        "403"
    );
    // The right name under the wrong type is another secret.
    assert_eq!(
        s.get("/v1/secrets/env/key_a", &["-H", &ha]).await.status,
        "404"
    );
    assert_eq!(
        s.get("/v1/secrets/file/nope", &["-H", &ha]).await.status,
        "404"
    );
    // A type habitus does not know names no secret, once the token passes.
    assert_eq!(
        s.get("/v1/secrets/vault/key_a", &["-H", &ha]).await.status,
        "404"
    );
    assert_eq!(s.get("/v1/secrets/vault/key_a", &[]).await.status, "401");
    // No token, a made-up token, a token one character short.
    assert_eq!(s.get("/v1/secrets/file/key_a", &[]).await.status, "401");
    let fake = bearer(&"0".repeat(64));
    assert_eq!(
        s.get("/v1/secrets/file/key_a", &["-H", &fake]).await.status,
        "401"
    );
    let short = bearer(&a.expose()[..63]);
    assert_eq!(
        s.get("/v1/secrets/file/key_a", &["-H", &short])
            .await
            .status,
        "401"
    );
    // Basic credentials are refused when the compatibility mode is off.
    let basic = s
        .get("/v1/secrets/file/key_a", &["-u", "habitus:admin"])
        .await;
    assert_eq!(basic.status, "401");
    // Once the step has ended, its token is worthless.
    s.handle.revoke(&a);
    assert_eq!(
        s.get("/v1/secrets/file/key_a", &["-H", &ha]).await.status,
        "401"
    );
    assert_eq!(
        s.get("/v1/secrets/file/key_b", &["-H", &hb]).await.status,
        "200"
    );

    let log = s.log.lock().unwrap().clone();
    assert!(log.iter().any(|r| r.step.as_deref() == Some("a")
        && r.path == "/v1/secrets/file/key_b"
        && r.status == 403));
    assert!(log.iter().any(|r| r.step.as_deref() == Some("a")
        && r.path == "/v1/secrets/vault/key_a"
        && r.status == 404));
    for record in &log {
        let line = record.to_string();
        assert!(!line.contains(VALUE_A) && !line.contains(VALUE_B), "{line}");
        assert!(!line.contains(a.expose()), "{line}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn methods_paths_and_headers_are_checked() {
    let s = server(None).await;
    let t = s.handle.issue_token("a");
    let h = bearer(t.expose());
    assert_eq!(s.get("/v1/ping", &[]).await.body, "pong\n");
    assert!(s.get("/v1/version", &[]).await.body.starts_with("habitus "));
    let post = s
        .get("/v1/secrets/file/key_a", &["-X", "POST", "-H", &h])
        .await;
    assert_eq!(post.status, "405");
    let dotdot = s
        .get("/v1/secrets/env/../file/key_a", &["--path-as-is", "-H", &h])
        .await;
    assert_eq!(dotdot.status, "400");
    assert_eq!(
        s.get("/v1/secrets/file/a%2fb", &["-H", &h]).await.status,
        "400"
    );
    assert_eq!(
        s.get("/v1/secrets/file/a%2Fb", &["-H", &h]).await.status,
        "400"
    );
    assert_eq!(
        s.get("/v1/secrets/file/key_a/x", &["-H", &h]).await.status,
        "400"
    );
    assert_eq!(s.get("/elsewhere", &[]).await.status, "404");
    let big = format!("X-Big: {}", "x".repeat(20_000));
    let huge = s
        .get("/v1/secrets/file/key_a", &["-H", &h, "-H", &big])
        .await;
    assert_eq!(huge.status, "431");
    let body = s
        .get(
            "/v1/secrets/file/key_a",
            &["-H", &h, "--data", "x=1", "-X", "GET"],
        )
        .await;
    assert_eq!(body.status, "413");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn basic_auth_compatibility_serves_any_declared_secret() {
    let s = server(Some(BasicAuth::new("habitus", "s3cret-pass"))).await;
    let ok = s
        .get("/v1/secrets/file/key_b", &["-u", "habitus:s3cret-pass"])
        .await;
    assert_eq!((ok.status.as_str(), ok.body.as_str()), ("200", VALUE_B));
    let wrong = s
        .get("/v1/secrets/file/key_b", &["-u", "habitus:admin"])
        .await;
    assert_eq!(wrong.status, "401");
    let user = s
        .get("/v1/secrets/file/key_b", &["-u", "root:s3cret-pass"])
        .await;
    assert_eq!(user.status, "401");
    assert_eq!(s.get("/v1/secrets/file/key_b", &[]).await.status, "401");
    let unknown = s
        .get("/v1/secrets/file/nope", &["-u", "habitus:s3cret-pass"])
        .await;
    assert_eq!(unknown.status, "404");
    let unknown_type = s
        .get("/v1/secrets/vault/key_b", &["-u", "habitus:s3cret-pass"])
        .await;
    assert_eq!(unknown_type.status, "404");
    // Tokens keep their scope in this mode too.
    let t = s.handle.issue_token("a");
    let scoped = s
        .get("/v1/secrets/file/key_b", &["-H", &bearer(t.expose())])
        .await;
    assert_eq!(scoped.status, "403");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_tls_with_the_build_ca_gets_through() {
    let s = server(None).await;
    // Plain HTTP to the TLS port gets no HTTP answer.
    let plain = curl(vec![format!("http://{}/v1/ping", s.handle.addr())]).await;
    assert_ne!(plain.exit, 0, "{plain:?}");
    assert_eq!(plain.status, "000");
    // A client trusting another CA fails the handshake (curl: 60).
    let other = tls::generate(&["127.0.0.1".into()]).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let other_ca = dir.path().join("other.pem");
    std::fs::write(&other_ca, &other.ca_pem).unwrap();
    let wrong = curl(vec![
        "--cacert".into(),
        other_ca.display().to_string(),
        s.url("/v1/ping"),
    ])
    .await;
    assert_eq!(wrong.exit, 60, "{wrong:?}");
    // TLS 1.1 and older are refused.
    let old = s.get("/v1/ping", &["--tls-max", "1.1"]).await;
    assert_ne!(old.exit, 0, "{old:?}");
    let tls12 = s.get("/v1/ping", &["--tls-max", "1.2"]).await;
    assert_eq!(tls12.body, "pong\n");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_the_port() {
    let s = server(None).await;
    let addr = s.handle.addr();
    assert_eq!(s.get("/v1/ping", &[]).await.status, "200");
    s.handle.shutdown().await;
    let refused = TcpStream::connect_timeout(&addr, Duration::from_secs(2));
    assert!(refused.is_err(), "port {addr} still accepts connections");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_do_not_finish_tls_within_2_s_are_cut_off() {
    let mut store = SecretStore::default();
    store.insert(
        "a",
        key(SecretKind::File, "k"),
        Arc::new(Secret::new(b"v".to_vec())),
    );
    let options = ServerOptions::new("127.0.0.1".parse().unwrap(), 0);
    let handle = start(options, store).await.unwrap();
    let addr = handle.addr();
    let cut = tokio::task::spawn_blocking(move || {
        use std::io::Read;
        // Connect and never start the handshake: the server hangs up.
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let started = Instant::now();
        let mut buf = [0u8; 16];
        let n = stream.read(&mut buf).unwrap_or(0);
        (n, started.elapsed())
    })
    .await
    .unwrap();
    assert_eq!(cut.0, 0, "the server closed the connection");
    // 2 s, measured from after the connect.
    assert!(cut.1 < Duration::from_secs(3), "cut after {:?}", cut.1);
    handle.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fetch_succeeds_while_256_connections_idle_before_tls() {
    let s = server(None).await;
    let addr = s.handle.addr();
    // 256 sockets that connect and never start TLS (the old cap on
    // connections, which they used to fill for the whole handshake time).
    let idle = tokio::task::spawn_blocking(move || {
        (0..256)
            .map(|_| TcpStream::connect(addr).expect("connect an idle socket"))
            .collect::<Vec<_>>()
    })
    .await
    .unwrap();
    let token = s.handle.issue_token("a");
    // The promise is 3 s; curl gives up after that.
    let fetch = s
        .get(
            "/v1/secrets/file/key_a",
            &["--max-time", "3", "-H", &bearer(token.expose())],
        )
        .await;
    assert_eq!(
        (fetch.status.as_str(), fetch.body.as_str()),
        ("200", VALUE_A),
        "{fetch:?}"
    );
    drop(idle);
    s.handle.shutdown().await;
}

/// A TLS client of `s` that trusts only its CA.
fn connector(s: &Server) -> tokio_rustls::TlsConnector {
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_pemfile::certs(&mut s.handle.ca_pem().as_bytes()) {
        roots.add(cert.unwrap()).unwrap();
    }
    let config = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(roots)
    .with_no_client_auth();
    tokio_rustls::TlsConnector::from(Arc::new(config))
}

/// Sends `GET /v1/ping` on a keep-alive connection and reads the answer.
async fn ping<S>(tls: &mut S)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    tls.write_all(b"GET /v1/ping HTTP/1.1\r\nHost: habitus\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    while !seen.ends_with(b"pong\n") {
        let n = tls.read(&mut buf).await.expect("read the answer");
        assert!(
            n > 0,
            "closed before the answer: {:?}",
            String::from_utf8_lossy(&seen)
        );
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(
        seen.starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&seen)
    );
}

/// Waits (at most 20 s) for the server to close `tls`; the time it took.
async fn closed_by_server<S>(tls: &mut S) -> Duration
where
    S: tokio::io::AsyncRead + Unpin,
{
    use tokio::io::AsyncReadExt;
    let started = Instant::now();
    let mut buf = [0u8; 64];
    let read = tokio::time::timeout(Duration::from_secs(20), tls.read(&mut buf)).await;
    // End of stream or a reset: both are the server hanging up.
    assert!(
        matches!(read, Ok(Ok(0)) | Ok(Err(_))),
        "still open after 20 s: {read:?}"
    );
    started.elapsed()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn keep_alive_connections_close_after_10_s_without_a_request() {
    let s = server(None).await;
    let addr = s.handle.addr();
    let connector = connector(&s);
    let open = || async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let name = rustls::pki_types::ServerName::IpAddress(addr.ip().into());
        connector.connect(name, tcp).await.expect("TLS handshake")
    };
    // One client asks every 6 s, then stops; another asks once and idles.
    let mut busy = open().await;
    let mut quiet = open().await;
    ping(&mut quiet).await;
    let quiet_closed = async { closed_by_server(&mut quiet).await };
    let busy_closed = async {
        ping(&mut busy).await;
        tokio::time::sleep(Duration::from_secs(6)).await;
        // Same connection, 6 s later: still served.
        ping(&mut busy).await;
        closed_by_server(&mut busy).await
    };
    let (quiet_after, busy_after) = tokio::join!(quiet_closed, busy_closed);
    // 10 s after the last request, measured on the client (which also
    // counts the answer's way back, and a loaded CI machine's delays):
    // closed well before the 120 s a request every 6 s used to buy.
    assert!(quiet_after < Duration::from_secs(15), "{quiet_after:?}");
    assert!(busy_after < Duration::from_secs(15), "{busy_after:?}");
    // And not long before the promised 10 s.
    assert!(quiet_after > Duration::from_secs(9), "{quiet_after:?}");
    assert!(busy_after > Duration::from_secs(9), "{busy_after:?}");
    s.handle.shutdown().await;
}

// ---------------------------------------------------------------------------
// Real builds.

/// The build's network is gone from the daemon. (Whether the server
/// still listens cannot be seen once the habitus process has exited, which
/// closes every socket: the in-process builds below check that.)
#[track_caller]
fn assert_network_removed(stderr: &str, uid: &str) {
    let network = network_of(stderr);
    assert_eq!(networks_with_label(UID_LABEL, uid), Vec::<String>::new());
    assert!(
        !crate::common::network_exists(&network),
        "network `{network}` still exists"
    );
}

const FETCH_BUILD_YML: &str = "build:
  version: 2016-03-14
  steps:
    first:
      name: hb/secrets-first
      dockerfile: Dockerfile.first
      keep: true
      secrets:
        key:
          type: file
          value: key.txt
        tok:
          type: env
          value: SECRET_TOK
    second:
      name: hb/secrets-second
      dockerfile: Dockerfile.second
      depends_on: [first]
      secrets:
        other:
          type: env
          value: SECRET_OTHER
";

/// `first` fetches both of its secrets, stores their sha256, prints the
/// file secret (to be redacted), records the status codes of requests it
/// must not be granted, and keeps its (soon dead) token for `second`.
const FIRST: &str = r#"ARG HABITUS_URL
ARG HABITUS_CA
ARG HABITUS_TOKEN
RUN printf '%s' "$HABITUS_CA" > /tmp/ca.pem \
 && auth="Authorization: Bearer $HABITUS_TOKEN" \
 && curl -fsS --cacert /tmp/ca.pem -H "$auth" "$HABITUS_URL/v1/secrets/file/key" -o /tmp/k \
 && curl -fsS --cacert /tmp/ca.pem -H "$auth" "$HABITUS_URL/v1/secrets/env/tok" -o /tmp/t \
 && sha256sum /tmp/k /tmp/t | cut -d' ' -f1 > /sums \
 && echo "printed: $(cat /tmp/k)" \
 && code() { curl -s -o /dev/null -w '%{http_code}' --cacert /tmp/ca.pem "$@"; } \
 && echo "other=$(code -H "$auth" "$HABITUS_URL/v1/secrets/env/other")" >> /codes \
 && echo "none=$(code "$HABITUS_URL/v1/secrets/file/key")" >> /codes \
 && echo "unknown=$(code -H "$auth" "$HABITUS_URL/v1/secrets/file/nope")" >> /codes \
 && echo "post=$(code -X POST -H "$auth" "$HABITUS_URL/v1/secrets/file/key")" >> /codes \
 && printf '%s' "$HABITUS_TOKEN" > /first_token && printf '%s' "$HABITUS_URL" > /url \
 && rm -f /tmp/k /tmp/t /tmp/ca.pem
"#;

const SECOND: &str = r#"ARG HABITUS_CA
ARG HABITUS_TOKEN
RUN printf '%s' "$HABITUS_CA" > /tmp/ca.pem \
 && echo "stale=$(curl -s -o /dev/null -w '%{http_code}' --cacert /tmp/ca.pem -H "Authorization: Bearer $(cat /first_token)" "$(cat /url)/v1/secrets/file/key")" >> /codes \
 && curl -fsS --cacert /tmp/ca.pem -H "Authorization: Bearer $HABITUS_TOKEN" "$(cat /url)/v1/secrets/env/other" | sha256sum | cut -d' ' -f1 >> /sums \
 && rm -f /tmp/ca.pem
"#;

#[test]
fn build_steps_fetch_their_secrets_over_tls_and_no_image_keeps_them() {
    let (h, c) = project("sec-fetch", FETCH_BUILD_YML);
    let uid = c.uid().to_string();
    let file_secret = format!("file-secret-{uid}-{:08x}", rand::random::<u32>());
    let env_secret = format!("env-secret-{uid}-{:08x}", rand::random::<u32>());
    let other_secret = format!("other-secret-{uid}-{:08x}", rand::random::<u32>());
    let first_image = format!("hb/secrets-first-{uid}");
    let h = h
        .file("key.txt", &file_secret)
        .file("Dockerfile.first", from_base(FIRST))
        .file(
            "Dockerfile.second",
            format!("FROM hb/secrets-first\n{SECOND}"),
        )
        .env("HABITUS_SECRET_TOK", &env_secret)
        .env("HABITUS_SECRET_OTHER", &other_secret);
    let out = h.run();
    out.assert_success();

    // Output is redacted: the printed secret shows as ***.
    assert!(
        out.stderr.contains("first | printed: ***"),
        "{}",
        out.stderr
    );
    for secret in [&file_secret, &env_secret, &other_secret] {
        assert!(!out.stderr.contains(secret.as_str()), "{}", out.stderr);
        assert!(!out.stdout.contains(secret.as_str()));
    }
    // Every access is logged, without values.
    assert!(
        out.stderr.contains("GET /v1/secrets/file/key from "),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("by step `first`: 403"),
        "{}",
        out.stderr
    );

    let second_image = format!("hb/secrets-second-{uid}");
    let sums = docker(&["run", "--rm", &second_image, "cat", "/sums"]);
    assert_eq!(
        sums.lines().collect::<Vec<_>>(),
        [
            sha256_hex(file_secret.as_bytes()),
            sha256_hex(env_secret.as_bytes()),
            sha256_hex(other_secret.as_bytes())
        ]
    );
    let codes = docker(&["run", "--rm", &second_image, "cat", "/codes"]);
    assert_eq!(
        codes.lines().collect::<Vec<_>>(),
        [
            "other=403",
            "none=401",
            "unknown=404",
            "post=405",
            "stale=401"
        ]
    );
    for image in [&first_image, &second_image] {
        for secret in [&file_secret, &env_secret, &other_secret] {
            assert_no_secret_in_image(image, secret.as_bytes());
        }
    }
    // The summary counts the fetches by step, without values.
    assert!(out.stderr.contains("secrets served:"), "{}", out.stderr);
    assert!(
        out.stderr
            .contains(&format!("{:<16} file/key: 1 fetch(es)", "first")),
        "{}",
        out.stderr
    );
    // The runner audited what it kept.
    assert!(
        out.stderr.contains(&format!(
            "of `{first_image}` searched, 0 secret occurrence(s)"
        )),
        "{}",
        out.stderr
    );
    assert_network_removed(&out.stderr, &uid);
}

#[test]
fn a_step_that_keeps_its_secret_fails_the_audit_and_its_image_is_removed() {
    let (h, c) = project(
        "sec-leak",
        "build:\n  version: 2016-03-14\n  steps:\n    leaky:\n      name: hb/secrets-leaky\n      dockerfile: Dockerfile\n      secrets:\n        key:\n          type: file\n          value: key.txt\n",
    );
    let secret = format!("kept-secret-{}-{:08x}", c.uid(), rand::random::<u32>());
    let fetch_and_keep = r#"ARG HABITUS_URL
ARG HABITUS_CA
ARG HABITUS_TOKEN
RUN printf '%s' "$HABITUS_CA" > /tmp/ca.pem \
 && curl -fsS --cacert /tmp/ca.pem -H "Authorization: Bearer $HABITUS_TOKEN" "$HABITUS_URL/v1/secrets/file/key" -o /root/key \
 && rm /tmp/ca.pem
"#;
    let out = h
        .file("key.txt", &secret)
        .file("Dockerfile", from_base(fetch_and_keep))
        .run();
    out.assert_code(1);
    assert!(
        out.stderr.contains(&format!(
            "error: a secret reached an image:\n  hb/secrets-leaky-{}: secret `leaky: file/key` (raw) in layer ",
            c.uid()
        )),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("at `/root/key`"), "{}", out.stderr);
    assert!(!out.stderr.contains(&secret));
    assert!(!crate::common::image_exists(&format!(
        "hb/secrets-leaky-{}",
        c.uid()
    )));
    assert_network_removed(&out.stderr, c.uid());
}

#[test]
fn a_failed_build_tears_the_server_and_network_down() {
    let (h, c) = project(
        "sec-fail",
        "build:\n  version: 2016-03-14\n  steps:\n    bad:\n      name: hb/secrets-bad\n      dockerfile: Dockerfile\n      secrets:\n        k:\n          type: env\n          value: K\n",
    );
    let h = h
        .file("Dockerfile", from_base("ARG HABITUS_TOKEN\nRUN false\n"))
        .env("HABITUS_K", "v-fail-value");
    let out = h.run();
    out.assert_failure();
    assert!(out.stderr.contains("step `bad` failed"), "{}", out.stderr);
    assert_network_removed(&out.stderr, c.uid());
}

#[test]
fn a_secret_printed_by_a_failing_instruction_is_redacted_in_the_error() {
    let (h, _c) = project(
        "sec-err",
        "build:\n  version: 2016-03-14\n  steps:\n    bad:\n      name: hb/secrets-err\n      dockerfile: Dockerfile\n      secrets:\n        k:\n          type: env\n          value: K\n",
    );
    let secret = format!("leaky-{:08x}", rand::random::<u32>());
    // The daemon's error message quotes the failed command, secret and all.
    let h = h
        .file(
            "Dockerfile",
            from_base(&format!("RUN echo {secret} && false\n")),
        )
        .env("HABITUS_K", &secret);
    let out = h.run();
    out.assert_failure();
    assert!(!out.stderr.contains(&secret), "{}", out.stderr);
    assert!(
        out.stderr.contains("RUN echo *** && false"),
        "{}",
        out.stderr
    );
    // The same on the machine-readable channel: every event on stdout.
    let out = h.arg("--json").run();
    out.assert_failure();
    assert!(
        out.stdout.contains("\"event\":\"step_output\""),
        "no events on stdout: {}",
        out.stdout
    );
    assert!(
        out.stdout.contains("RUN echo *** && false"),
        "{}",
        out.stdout
    );
    assert!(!out.stdout.contains(&secret), "{}", out.stdout);
    assert!(!out.stderr.contains(&secret), "{}", out.stderr);
}

#[test]
fn sigint_mid_build_tears_the_server_and_network_down() {
    signal_mid_build_tears_down("INT", 130);
}

/// SIGHUP is what a build gets when the terminal it runs in closes (an
/// SSH session dropped): it ends the build as SIGTERM does.
#[test]
fn sighup_mid_build_tears_the_server_and_network_down() {
    signal_mid_build_tears_down("HUP", 129);
}

fn signal_mid_build_tears_down(signal: &str, code: i32) {
    let (h, c) = project(
        &format!("sec-{}", signal.to_lowercase()),
        "build:\n  version: 2016-03-14\n  steps:\n    slow:\n      name: hb/secrets-int\n      dockerfile: Dockerfile\n      secrets:\n        k:\n          type: env\n          value: K\n",
    );
    let marker = format!("marker-{}", c.uid());
    let h = h.file(
        "Dockerfile",
        from_base(&format!("RUN echo {marker} && sleep 60\n")),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_habitus"))
        .arg("-d")
        .arg(h.dir())
        .args(["--uid", c.uid()])
        .env("HABITUS_K", "interrupted-value")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap() > 0 {
        seen.push_str(&line);
        if line.contains(&format!("slow | {marker}")) {
            break;
        }
        line.clear();
    }
    assert!(seen.contains(&marker), "{seen}");
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args([&format!("-{signal}"), &pid])
        .status()
        .unwrap()
        .success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(code), "{seen}{rest}");
    assert_network_removed(&format!("{seen}{rest}"), c.uid());
    assert!(!image_exists(&format!("hb/secrets-int-{}", c.uid())));
}

fn assert_stopped_before_any_step(out: &Output, message: &str) {
    out.assert_failure();
    out.assert_code(1);
    assert!(out.stderr.contains(message), "{}", out.stderr);
    assert!(!out.stderr.contains("building `"), "{}", out.stderr);
    assert!(
        !out.stderr.contains("secrets server listening"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_missing_secret_stops_the_build_before_any_step() {
    let yml = "build:\n  version: 2016-03-14\n  steps:\n    early:\n      name: hb/secrets-early\n      dockerfile: Dockerfile\n    compile:\n      name: hb/secrets-missing\n      dockerfile: Dockerfile\n      depends_on: [early]\n      secrets:\n        id_rsa:\n          type: file\n          value: keys/id_rsa\n";
    let (h, _c) = project("sec-missing", yml);
    let h = h.file("Dockerfile", from_base("RUN true\n"));
    let out = h.run();
    let path = h.dir().join("keys/id_rsa");
    assert_stopped_before_any_step(
        &out,
        &format!(
            "error: secret `id_rsa` of step `compile`: cannot read `{}`: No such file or directory (os error 2)",
            path.display()
        ),
    );

    let yml = yml.replace(
        "type: file\n          value: keys/id_rsa",
        "type: env\n          value: NPM_TOKEN",
    );
    let (h, _c) = project("sec-unset", &yml);
    let h = h
        .file("Dockerfile", from_base("RUN true\n"))
        .env_remove("HABITUS_NPM_TOKEN");
    let out = h.run();
    assert_stopped_before_any_step(
        &out,
        "error: secret `id_rsa` of step `compile`: environment variable `HABITUS_NPM_TOKEN` is not set",
    );
}

#[test]
fn secrets_false_keeps_the_server_off_with_a_warning() {
    let (h, c) = project(
        "sec-off",
        "build:\n  version: 2016-03-14\n  steps:\n    s:\n      name: hb/secrets-off\n      dockerfile: Dockerfile\n      secrets:\n        k:\n          type: env\n          value: UNSET_ON_PURPOSE\n",
    );
    let h = h
        .file("Dockerfile", from_base_for(c.uid(), "RUN true\n"))
        .arg("--secrets=false");
    let out = h.run();
    out.assert_success();
    assert!(out.stderr.contains(
        "warning: step(s) `s` declare secrets, but --secrets=false: the secrets server is off and their fetches will fail"
    ), "{}", out.stderr);
    assert!(!out.stderr.contains("secrets server listening"));
}

#[test]
fn network_without_binding_is_refused() {
    let (h, _c) = project(
        "sec-net",
        "build:\n  version: 2016-03-14\n  steps:\n    s:\n      name: hb/secrets-net\n      dockerfile: Dockerfile\n      secrets:\n        k:\n          type: env\n          value: K\n",
    );
    let out = h
        .file("Dockerfile", from_base("RUN true\n"))
        .env("HABITUS_K", "v")
        .args(["--network", "host"])
        .run();
    assert_stopped_before_any_step(
        &out,
        "error: --network `host` and the secrets server: give --binding too",
    );
}

/// `path` has exactly the permission bits `mode`.
fn assert_mode(path: &Path, mode: u32) {
    use std::os::unix::fs::PermissionsExt;
    let seen = std::fs::metadata(path).unwrap().permissions().mode();
    assert_eq!(seen & 0o777, mode, "{}", path.display());
}

/// A running `habitus serve` of `key=key.txt` and `tok=SERVE_TOK`.
struct Serve {
    child: std::process::Child,
    settings: std::collections::BTreeMap<String, String>,
    _dir: tempfile::TempDir,
}

impl Serve {
    fn start(extra: &[&str]) -> Serve {
        Serve::start_with(extra, &[])
    }

    /// As [`Serve::start`], with `env` set for the process too.
    fn start_with(extra: &[&str], env: &[(&str, &str)]) -> Serve {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("key.txt"), "served-file-value").unwrap();
        let mut child = Command::new(env!("CARGO_BIN_EXE_habitus"))
            .current_dir(dir.path())
            .args([
                "serve",
                "--secret-file",
                "key=key.txt",
                "--secret-env",
                "tok=SERVE_TOK",
            ])
            .args(extra)
            .envs(env.iter().copied())
            .env("HABITUS_SERVE_TOK", "served-env-value")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let mut settings = std::collections::BTreeMap::new();
        let mut line = String::new();
        while !settings.contains_key("HABITUS_CA_FILE") {
            line.clear();
            if stdout.read_line(&mut line).unwrap() == 0 {
                let _ = child.kill();
                let _ = child.wait();
                panic!("serve ended early");
            }
            if let Some((k, v)) = line.trim_end().split_once('=') {
                settings.insert(k.to_string(), v.to_string());
            }
        }
        Serve {
            child,
            settings,
            _dir: dir,
        }
    }

    fn ca(&self) -> PathBuf {
        PathBuf::from(&self.settings["HABITUS_CA_FILE"])
    }

    fn addr(&self) -> SocketAddr {
        format!(
            "{}:{}",
            self.settings["HABITUS_HOST"], self.settings["HABITUS_PORT"]
        )
        .parse()
        .unwrap()
    }

    /// Sends `signal` (`TERM`, `HUP`...) and waits for the exit; stderr.
    fn stop(mut self, signal: &str) -> String {
        assert!(Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .unwrap()
            .success());
        let status = self.child.wait().unwrap();
        let mut stderr = String::new();
        std::io::Read::read_to_string(&mut self.child.stderr.take().unwrap(), &mut stderr).unwrap();
        assert!(status.success(), "SIG{signal}: {status}\n{stderr}");
        stderr
    }
}

impl Drop for Serve {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn serve_runs_standalone_until_sigterm_and_removes_its_ca_file() {
    let serve = Serve::start(&[]);
    let ca = serve.ca();
    assert_mode(&ca, 0o600);
    assert_mode(ca.parent().unwrap(), 0o700);
    let url = &serve.settings["HABITUS_URL"];
    let auth = format!("Authorization: Bearer {}", serve.settings["HABITUS_TOKEN"]);
    for (path, value) in [
        ("/v1/secrets/file/key", "served-file-value"),
        ("/v1/secrets/env/tok", "served-env-value"),
    ] {
        let out = Command::new("curl")
            .args(["-fsS", "--cacert"])
            .arg(&ca)
            .args(["-H", &auth, &format!("{url}{path}")])
            .output()
            .unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), value, "{out:?}");
    }
    let addr = serve.addr();
    let stderr = serve.stop("TERM");
    assert!(
        stderr.contains("GET /v1/secrets/file/key from 127.0.0.1:"),
        "{stderr}"
    );
    assert!(!stderr.contains("served-file-value"), "{stderr}");
    assert!(TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err());
    assert!(!ca.exists());
    assert!(!ca.parent().unwrap().exists());
}

#[test]
fn serve_ends_cleanly_on_sighup_and_sigint() {
    for signal in ["HUP", "INT"] {
        let serve = Serve::start(&[]);
        let (ca, addr) = (serve.ca(), serve.addr());
        let dir = ca.parent().unwrap().to_path_buf();
        // Open and there before the signal...
        assert!(
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_ok(),
            "port {addr} not open"
        );
        assert_mode(&dir, 0o700);
        serve.stop(signal);
        // ...closed and gone after it.
        assert!(
            TcpStream::connect_timeout(&addr, Duration::from_secs(2)).is_err(),
            "SIG{signal}: port {addr} still open"
        );
        assert!(!dir.exists(), "SIG{signal}: {} left behind", dir.display());
    }
}

#[test]
fn serve_warns_about_basic_auth_with_the_default_password() {
    let serve = Serve::start(&["--authentication-secret-server"]);
    let stderr = serve.stop("TERM");
    assert!(
        stderr.contains("warning: --authentication-secret-server without a password: the secrets server serves every secret to the default, guessable credentials of Go Habitus (user `habitus`)"),
        "{stderr}"
    );
    assert!(
        stderr.contains("Give it a strong password with --password-secret-server-file FILE or HABITUS_SECRET_SERVER_PASSWORD"),
        "{stderr}"
    );
}

/// Status of `GET /v1/secrets/file/key` from `serve` with basic auth
/// `user:password`.
fn basic_status(serve: &Serve, password: &str) -> String {
    let out = Command::new("curl")
        .args(["-sS", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
        .arg(serve.ca())
        .args(["-u", &format!("habitus:{password}")])
        .arg(format!(
            "{}/v1/secrets/file/key",
            serve.settings["HABITUS_URL"]
        ))
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The basic-auth password comes from `--password-secret-server-file`
/// (one trailing newline removed, no warning when only its owner can read
/// it, a warning naming `chmod 600` when others can), from
/// HABITUS_SECRET_SERVER_PASSWORD, or from the argv form, which still
/// works (Go Habitus) but warns that `ps` shows it and names both
/// alternatives. The password is never printed.
#[test]
fn serve_reads_the_password_from_a_file_or_the_environment_and_warns_about_argv() {
    use std::os::unix::fs::PermissionsExt;
    let secret = "Zq8-long-and-random";
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("password");
    std::fs::write(&file, format!("{secret}\n")).unwrap();
    for (mode, warned) in [(0o600, false), (0o644, true)] {
        std::fs::set_permissions(&file, std::fs::Permissions::from_mode(mode)).unwrap();
        let flag = format!("-password-secret-server-file={}", file.display());
        let serve = Serve::start(&["--authentication-secret-server", &flag]);
        assert_eq!(basic_status(&serve, secret), "200");
        assert_eq!(basic_status(&serve, "admin"), "401");
        assert_eq!(basic_status(&serve, &format!("{secret}\n")), "401");
        let stderr = serve.stop("TERM");
        let warning = format!(
            "warning: --password-secret-server-file `{0}` can be read by other users (mode 0644); `chmod 600 {0}`",
            file.display()
        );
        assert_eq!(stderr.contains(&warning), warned, "{mode:o}: {stderr}");
        assert!(!stderr.contains("guessable"), "{stderr}");
        assert!(!stderr.contains(secret), "{stderr}");
    }

    let env = [("HABITUS_SECRET_SERVER_PASSWORD", secret)];
    let serve = Serve::start_with(&["--authentication-secret-server"], &env);
    assert_eq!(basic_status(&serve, secret), "200");
    let stderr = serve.stop("TERM");
    assert!(!stderr.contains("warning"), "{stderr}");

    let serve = Serve::start(&[
        "--authentication-secret-server",
        "--password-secret-server",
        secret,
    ]);
    assert_eq!(basic_status(&serve, secret), "200");
    let stderr = serve.stop("TERM");
    assert!(
        stderr.contains("warning: --password-secret-server puts the password on the command line, where `ps` shows it to every user of this machine; use --password-secret-server-file FILE or HABITUS_SECRET_SERVER_PASSWORD instead"),
        "{stderr}"
    );
    assert!(!stderr.contains("guessable"), "{stderr}");
    assert!(!stderr.contains(secret), "{stderr}");
}

#[test]
fn serve_without_secrets_explains_itself() {
    let out = Habitus::new()
        .file(
            "build.yml",
            "build:\n  version: 2016-03-14\n  steps:\n    s:\n      name: hb/none\n      dockerfile: Dockerfile\n",
        )
        .file("Dockerfile", "FROM scratch\n")
        .arg("serve")
        .run();
    out.assert_failure();
    assert!(out.stderr.contains(
        "error: nothing to serve: build.yml declares no secrets and no --secret-file or --secret-env was given"
    ), "{}", out.stderr);
}

// ---------------------------------------------------------------------------
// Teardown seen from inside: the build runs in the test process, so a
// server that outlived its build would still hold its listening socket.

const ONE_SECRET_YML: &str = "build:\n  version: 2016-03-14\n  steps:\n    step:\n      name: hb/secrets-inproc\n      dockerfile: Dockerfile\n      secrets:\n        k:\n          type: env\n          value: K\n";

/// Runs a one-step build whose RUN is `run` in-process; `during` runs
/// alongside it. Returns the result, the output, and the server address.
async fn in_process(
    prefix: &str,
    run: &str,
    during: impl AsyncFnOnce(&InProcess),
) -> (
    Result<(), habitus::Error>,
    String,
    SocketAddr,
    crate::common::Cleanup,
) {
    let (h, c) = project(prefix, ONE_SECRET_YML);
    let h = h.file("Dockerfile", from_base(run));
    let build = InProcess::new();
    let uid = c.uid().to_string();
    let args = ["--uid", uid.as_str()];
    let env = [("HABITUS_K", "in-process-value")];
    let (result, ()) = tokio::join!(build.build(h.dir(), &args, &env), during(&build));
    let output = build.output();
    let addr = in_process::server_addr(&output);
    (result, output, addr, c)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_successful_build_nothing_listens_while_habitus_still_runs() {
    let fetch = r#"ARG HABITUS_URL
ARG HABITUS_CA
ARG HABITUS_TOKEN
RUN printf '%s' "$HABITUS_CA" > /tmp/ca.pem \
 && curl -fsS --cacert /tmp/ca.pem -H "Authorization: Bearer $HABITUS_TOKEN" "$HABITUS_URL/v1/secrets/env/k" | wc -c \
 && rm /tmp/ca.pem
"#;
    let (result, output, addr, c) = in_process("sec-inproc-ok", fetch, async |_| {}).await;
    result.unwrap_or_else(|e| panic!("{e}\n{output}"));
    assert!(output.contains("env/k: 1 fetch(es)"), "{output}");
    assert!(
        !in_process::listening(addr),
        "{addr} still listens\n{output}"
    );
    assert_network_removed(&output, c.uid());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_failed_build_nothing_listens_while_habitus_still_runs() {
    let (result, output, addr, c) = in_process(
        "sec-inproc-fail",
        "ARG HABITUS_TOKEN\nRUN false\n",
        async |_| {},
    )
    .await;
    let error = result.expect_err("the step fails").to_string();
    assert!(error.contains("step `step` failed"), "{error}");
    assert!(
        !in_process::listening(addr),
        "{addr} still listens\n{output}"
    );
    assert_network_removed(&output, c.uid());
}

/// The server listens while the step runs (so the check below can fail),
/// and not once the interrupted build has returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_an_interrupted_build_nothing_listens_while_habitus_still_runs() {
    let marker = format!("inproc-{:08x}", rand::random::<u32>());
    let run = format!("ARG HABITUS_TOKEN\nRUN echo {marker} && sleep 60\n");
    let (result, output, addr, c) = in_process("sec-inproc-int", &run, async |build| {
        build
            .wait_for(&format!("step | {marker}"), Duration::from_secs(120))
            .await;
        let addr = in_process::server_addr(&build.output());
        assert!(in_process::listening(addr), "{addr} does not listen");
        build.interrupt();
    })
    .await;
    let error = result.expect_err("interrupted");
    assert_eq!(error.code(), 130, "{error}");
    assert!(
        !in_process::listening(addr),
        "{addr} still listens\n{output}"
    );
    assert_network_removed(&output, c.uid());
    assert!(!image_exists(&format!("hb/secrets-inproc-{}", c.uid())));
}
