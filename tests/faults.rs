//! Load and faults on the real daemon: a parallel build whose steps fetch
//! their secrets while 200 TLS clients with wrong credentials hammer the
//! server; the daemon's connection cut mid-build; a full disk while an
//! artifact is extracted. Traffic goes only to the secrets server on the
//! build's own Docker network gateway.

use std::io::{BufRead, BufReader};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex};
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, DigitallySignedStruct, SignatureScheme};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio_rustls::TlsConnector;

use crate::common::in_process::{self, InProcess};
use crate::common::{
    docker, from_base, networks_with_label, sha256_hex, tls_proxy, Cleanup, UID_LABEL,
};

/// The secrets server address in a `secrets server listening on` line.
fn server_addr(line: &str) -> Option<SocketAddr> {
    let rest = line.split("secrets server listening on https://").nth(1)?;
    rest.split_whitespace().next()?.parse().ok()
}

/// A running habitus whose stderr is collected line by line on a thread;
/// the first server address is sent on `addr`.
struct Running {
    child: Child,
    stderr: Arc<Mutex<String>>,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl Running {
    /// Spawns habitus in `dir` with `args`; `lines` receives every stderr line.
    fn spawn(dir: &Path, args: &[&str], env: &[(&str, &str)]) -> (Running, mpsc::Receiver<String>) {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_habitus"));
        cmd.arg("-d")
            .arg(dir)
            .args(args)
            .current_dir(dir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let mut child = cmd.spawn().expect("run habitus");
        let pipe = child.stderr.take().unwrap();
        let stderr: Arc<Mutex<String>> = Arc::default();
        let (tx, rx) = mpsc::channel();
        let sink = Arc::clone(&stderr);
        let reader = std::thread::spawn(move || {
            let mut pipe = BufReader::new(pipe);
            let mut line = String::new();
            while pipe.read_line(&mut line).unwrap_or(0) > 0 {
                sink.lock().unwrap().push_str(&line);
                let _ = tx.send(line.clone());
                line.clear();
            }
        });
        (
            Running {
                child,
                stderr,
                reader: Some(reader),
            },
            rx,
        )
    }

    /// Waits for the line containing `needle` (at most `limit`).
    fn wait_for(&self, lines: &mpsc::Receiver<String>, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match lines.recv_timeout(left) {
                Ok(line) if line.contains(needle) => return line,
                Ok(_) => {}
                Err(_) => panic!("no line with `{needle}`:\n{}", self.stderr()),
            }
        }
    }

    fn stderr(&self) -> String {
        self.stderr.lock().unwrap().clone()
    }

    /// Waits for the exit (killing habitus after `limit`) and the whole stderr.
    fn finish(mut self, limit: Duration) -> (std::process::ExitStatus, String) {
        let deadline = Instant::now() + limit;
        let status = loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                break status;
            }
            if Instant::now() > deadline {
                let _ = self.child.kill();
                panic!("habitus still runs after {limit:?}:\n{}", self.stderr());
            }
            std::thread::sleep(Duration::from_millis(50));
        };
        if let Some(reader) = self.reader.take() {
            reader.join().unwrap();
        }
        (status, self.stderr())
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// VmRSS of `pid` in kB, if it still runs.
fn rss_kb(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

// ---------------------------------------------------------------------------
// Load.

/// Accepts any server certificate: the hammering clients are attackers on
/// the network, who do not need to trust the build's CA to send requests.
#[derive(Debug)]
struct AnyCert(Arc<rustls::crypto::CryptoProvider>);

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}

/// What the hammering clients saw.
#[derive(Default)]
struct Tally {
    /// Responses to requests for secrets (all with wrong credentials).
    secret_requests: AtomicU64,
    /// Of those, how many got 200: must stay 0.
    granted: AtomicU64,
    /// Of those, how many got 401.
    unauthorized: AtomicU64,
    /// `/v1/ping` answered `200`.
    pings: AtomicU64,
    /// Connections that failed before a status line.
    errors: AtomicU64,
    /// Status lines other than 200 / 401 on secrets paths, for the message.
    other: Mutex<Vec<String>>,
}

/// One request over a fresh TLS connection; the status code.
async fn request(
    connector: &TlsConnector,
    addr: SocketAddr,
    path: &str,
    authorization: Option<&str>,
) -> std::io::Result<u16> {
    let tcp = tokio::net::TcpStream::connect(addr).await?;
    let name = ServerName::IpAddress(addr.ip().into());
    let mut tls = connector.connect(name, tcp).await?;
    let mut head = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n");
    if let Some(value) = authorization {
        head.push_str(&format!("Authorization: {value}\r\n"));
    }
    head.push_str("\r\n");
    tls.write_all(head.as_bytes()).await?;
    let mut response = Vec::new();
    // The server closes after the response (`Connection: close`); a
    // missing close_notify is not this test's concern.
    let _ = tls.read_to_end(&mut response).await;
    let text = String::from_utf8_lossy(&response);
    text.split_whitespace()
        .nth(1)
        .and_then(|code| code.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status line in {text:?}")))
}

/// `clients` tasks send requests to `addr` until `stop` is set or `limit`
/// has passed: wrong tokens, no token, basic credentials, a token one
/// character off the right length, for declared and undeclared secrets,
/// and pings.
fn hammer(addr: SocketAddr, clients: usize, stop: Arc<AtomicBool>, limit: Duration) -> Arc<Tally> {
    let tally: Arc<Tally> = Arc::default();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ClientConfig::builder_with_provider(Arc::clone(&provider))
        .with_safe_default_protocol_versions()
        .unwrap()
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert(provider)))
        .with_no_client_auth();
    let connector = TlsConnector::from(Arc::new(config));
    let deadline = Instant::now() + limit;
    runtime.block_on(async {
        let mut tasks = tokio::task::JoinSet::new();
        for client in 0..clients {
            let connector = connector.clone();
            let stop = Arc::clone(&stop);
            let tally = Arc::clone(&tally);
            tasks.spawn(async move {
                let mut n = 0usize;
                while !stop.load(Ordering::Relaxed) && Instant::now() < deadline {
                    n += 1;
                    let path = match (client + n) % 4 {
                        0 => "/v1/secrets/file/key".to_string(),
                        1 => "/v1/secrets/env/key".to_string(),
                        2 => format!("/v1/secrets/file/key_{}", n % 8),
                        _ => "/v1/ping".to_string(),
                    };
                    let wrong = format!("{:032x}{:032x}", rand::random::<u128>(), n);
                    let auth = match n % 5 {
                        0 => None,
                        1 => Some("Basic aGFiaXR1czphZG1pbg==".to_string()),
                        2 => Some(format!("Bearer {}", &wrong[..63])),
                        3 => Some("Bearer ".to_string()),
                        _ => Some(format!("Bearer {wrong}")),
                    };
                    let result = tokio::time::timeout(
                        Duration::from_secs(15),
                        request(&connector, addr, &path, auth.as_deref()),
                    )
                    .await;
                    match result {
                        Ok(Ok(status)) if path == "/v1/ping" => {
                            if status == 200 {
                                tally.pings.fetch_add(1, Ordering::Relaxed);
                            }
                        }
                        Ok(Ok(status)) => {
                            tally.secret_requests.fetch_add(1, Ordering::Relaxed);
                            match status {
                                200 => {
                                    tally.granted.fetch_add(1, Ordering::Relaxed);
                                }
                                401 => {
                                    tally.unauthorized.fetch_add(1, Ordering::Relaxed);
                                }
                                other => tally
                                    .other
                                    .lock()
                                    .unwrap()
                                    .push(format!("{other} for {path} with {auth:?}")),
                            }
                        }
                        _ => {
                            tally.errors.fetch_add(1, Ordering::Relaxed);
                            // The server is gone (the build ended): stop.
                            tokio::time::sleep(Duration::from_millis(50)).await;
                        }
                    }
                }
            });
        }
        while tasks.join_next().await.is_some() {}
    });
    tally
}

const STEPS: usize = 8;
const FETCHES: usize = 6;

#[test]
fn eight_steps_fetch_their_secrets_while_200_clients_with_wrong_tokens_hammer_the_server() {
    let c = Cleanup::new("faults-load");
    let uid = c.uid().to_string();
    let work = tempfile::tempdir().unwrap();
    let mut yml = String::from("build:\n  version: 2016-03-14\n  steps:\n");
    let mut secrets = Vec::new();
    for i in 0..STEPS {
        yml.push_str(&format!(
            "    s{i}:\n      name: hb/load-{i}\n      dockerfile: Dockerfile\n      secrets:\n        key:\n          type: file\n          value: key_{i}.txt\n"
        ));
        let secret = format!("load-secret-{i}-{uid}-{:016x}", rand::random::<u64>());
        std::fs::write(work.path().join(format!("key_{i}.txt")), &secret).unwrap();
        secrets.push(secret);
    }
    std::fs::write(work.path().join("build.yml"), yml).unwrap();
    // Every step fetches its secret FETCHES times, a second apart, and
    // fails on any unsuccessful fetch; /sums holds the distinct hashes.
    let dockerfile = from_base(&format!(
        r#"ARG HABITUS_URL
ARG HABITUS_CA
ARG HABITUS_TOKEN
RUN printf '%s' "$HABITUS_CA" > /tmp/ca.pem \
 && for n in $(seq 1 {FETCHES}); do \
      curl -fsS --max-time 60 --cacert /tmp/ca.pem -H "Authorization: Bearer $HABITUS_TOKEN" "$HABITUS_URL/v1/secrets/file/key" -o /tmp/k$n || exit 1; \
      sleep 1; \
    done \
 && ls /tmp/k* | wc -l > /count \
 && sha256sum /tmp/k* | cut -d' ' -f1 | sort -u > /sums \
 && rm -f /tmp/k* /tmp/ca.pem
"#
    ));
    std::fs::write(work.path().join("Dockerfile"), dockerfile).unwrap();

    let (running, lines) = Running::spawn(
        work.path(),
        &["--uid", &uid, "--jobs", "8", "--suppress"],
        &[],
    );
    let pid = running.child.id();
    let peak = Arc::new(AtomicU64::new(0));
    let done = Arc::new(AtomicBool::new(false));
    let sampler = {
        let peak = Arc::clone(&peak);
        let done = Arc::clone(&done);
        std::thread::spawn(move || {
            while !done.load(Ordering::Relaxed) {
                match rss_kb(pid) {
                    Some(kb) => {
                        peak.fetch_max(kb, Ordering::Relaxed);
                    }
                    None => return,
                }
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let line = running.wait_for(
        &lines,
        "secrets server listening on",
        Duration::from_secs(60),
    );
    let addr = server_addr(&line).unwrap_or_else(|| panic!("no address in {line}"));
    assert!(
        match addr.ip() {
            std::net::IpAddr::V4(ip) => ip.is_private() || ip.is_loopback(),
            std::net::IpAddr::V6(ip) => ip.is_loopback(),
        },
        "the server listens on {addr}, not on a local network"
    );
    let clients = {
        let done = Arc::clone(&done);
        std::thread::spawn(move || hammer(addr, 200, done, Duration::from_secs(120)))
    };
    let (status, stderr) = running.finish(Duration::from_secs(240));
    done.store(true, Ordering::Relaxed);
    let tally = clients.join().unwrap();
    sampler.join().unwrap();

    assert!(status.success(), "habitus failed: {status}\n{stderr}");
    for (i, secret) in secrets.iter().enumerate() {
        let image = format!("hb/load-{i}-{uid}");
        let count = docker(&["run", "--rm", &image, "cat", "/count"]);
        assert_eq!(count.trim(), FETCHES.to_string(), "{image}");
        let sums = docker(&["run", "--rm", &image, "cat", "/sums"]);
        assert_eq!(
            sums.lines().collect::<Vec<_>>(),
            [sha256_hex(secret.as_bytes())],
            "{image}"
        );
        assert!(!stderr.contains(secret.as_str()));
    }
    let requests = tally.secret_requests.load(Ordering::Relaxed);
    let granted = tally.granted.load(Ordering::Relaxed);
    let unauthorized = tally.unauthorized.load(Ordering::Relaxed);
    let pings = tally.pings.load(Ordering::Relaxed);
    let errors = tally.errors.load(Ordering::Relaxed);
    let peak_mb = peak.load(Ordering::Relaxed) / 1024;
    eprintln!(
        "load: {requests} secret requests with wrong credentials ({unauthorized} x 401, {granted} x 200), {pings} pings, {errors} connection errors; peak RSS {peak_mb} MB"
    );
    assert_eq!(granted, 0, "a wrong credential got a secret");
    assert_eq!(
        tally.other.lock().unwrap().clone(),
        Vec::<String>::new(),
        "statuses other than 401"
    );
    assert_eq!(unauthorized, requests);
    // The hammering really happened while the server ran.
    assert!(requests >= 200, "only {requests} requests were answered");
    assert!(pings > 0);
    assert!(peak_mb > 0 && peak_mb < 200, "peak RSS {peak_mb} MB");
    // The network is gone (the port closed with the process; the
    // in-process tests in secrets.rs check the server's own teardown).
    assert_eq!(networks_with_label(UID_LABEL, &uid), Vec::<String>::new());
}

// ---------------------------------------------------------------------------
// The daemon connection cut mid-build.

/// Run in-process, so that a server that outlived the cut would still be
/// seen listening after the build returned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_connection_cut_mid_build_fails_clearly_and_closes_the_server() {
    let c = Cleanup::new("faults-daemon");
    let uid = c.uid().to_string();
    let proxy = tls_proxy::start();
    let work = tempfile::tempdir().unwrap();
    let marker = format!("marker-{uid}");
    std::fs::write(
        work.path().join("build.yml"),
        "build:\n  version: 2016-03-14\n  steps:\n    slow:\n      name: hb/faults-slow\n      dockerfile: Dockerfile\n      secrets:\n        k:\n          type: env\n          value: K\n",
    )
    .unwrap();
    std::fs::write(
        work.path().join("Dockerfile"),
        from_base(&format!("RUN echo {marker} && sleep 30\n")),
    )
    .unwrap();
    let host = proxy.host();
    let certs = proxy.cert_dir.display().to_string();
    let args = [
        "--uid",
        &uid,
        "--use-tls",
        "--host",
        &host,
        "--certs",
        &certs,
    ];
    let build = InProcess::new();
    let proxy = std::sync::Mutex::new(Some(proxy));
    let mut cut = None;
    let (result, ()) = tokio::join!(
        build.build(work.path(), &args, &[("HABITUS_K", "cut-value")]),
        async {
            build
                .wait_for(&format!("slow | {marker}"), Duration::from_secs(120))
                .await;
            let addr = in_process::server_addr(&build.output());
            assert!(in_process::listening(addr), "{addr} does not listen");
            cut = Some(Instant::now());
            // Closing the proxy cuts every connection to the daemon.
            let proxy = proxy.lock().unwrap().take();
            tokio::task::spawn_blocking(move || drop(proxy))
                .await
                .unwrap();
        }
    );
    let output = build.output();
    let error = result.expect_err("the build fails");
    eprintln!(
        "{:?} after the cut: {error}\n{output}",
        cut.map(|c| c.elapsed())
    );
    assert_eq!(error.code(), 1, "{error}");
    assert!(
        error
            .to_string()
            .starts_with("step `slow`: docker: the connection to the Docker daemon failed: "),
        "{error}"
    );
    // Teardown closed the server although the daemon is out of reach.
    let addr = in_process::server_addr(&output);
    assert!(
        !in_process::listening(addr),
        "{addr} still listens\n{output}"
    );
    // The network could not be removed through the dead connection, and
    // habitus says so; the guard removes it.
    assert!(
        output.contains("secrets server stopped, but the build's network remains: "),
        "{output}"
    );
}

// ---------------------------------------------------------------------------
// A full disk during artifact extraction.

/// A 2 MB tmpfs mounted on a directory; unmounted when dropped.
struct Tmpfs {
    path: PathBuf,
}

impl Tmpfs {
    fn mount(path: &Path) -> Tmpfs {
        std::fs::create_dir_all(path).unwrap();
        let out = Command::new("mount")
            .args(["-t", "tmpfs", "-o", "size=2m", "tmpfs"])
            .arg(path)
            .output()
            .expect("run mount");
        assert!(
            out.status.success(),
            "this test mounts a tmpfs (needs root): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Tmpfs { path: path.into() }
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(&self.path).status();
    }
}

/// Every file under `dir`, relative.
fn files_under(dir: &Path) -> Vec<String> {
    let mut found = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path.clone());
            }
            found.push(path.strip_prefix(dir).unwrap().display().to_string());
        }
    }
    found.sort();
    found
}

#[test]
fn a_full_disk_during_artifact_extraction_fails_naming_the_artifact_and_leaves_nothing() {
    let c = Cleanup::new("faults-disk");
    let uid = c.uid().to_string();
    let tmp = tempfile::tempdir().unwrap();
    let work = tmp.path().join("work");
    let _mount = Tmpfs::mount(&work);
    std::fs::write(
        work.join("build.yml"),
        "build:\n  version: 2016-03-14\n  steps:\n    big:\n      name: hb/faults-disk\n      dockerfile: Dockerfile\n      artifacts:\n        - /out\n",
    )
    .unwrap();
    // 1 MB fits, the 4 MB file after it does not.
    std::fs::write(
        work.join("Dockerfile"),
        from_base(
            "RUN mkdir /out && head -c 1000000 /dev/urandom > /out/a && head -c 4000000 /dev/urandom > /out/b\n",
        ),
    )
    .unwrap();
    let (running, _lines) = Running::spawn(&work, &["--uid", &uid, "--suppress"], &[]);
    let (status, stderr) = running.finish(Duration::from_secs(120));

    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("step `big`: artifact `/out`: "), "{stderr}");
    assert!(stderr.contains("No space left on device"), "{stderr}");
    assert_eq!(files_under(&work), ["Dockerfile", "build.yml"]);
    assert!(!crate::common::image_exists(&format!(
        "hb/faults-disk-{uid}"
    )));
}
