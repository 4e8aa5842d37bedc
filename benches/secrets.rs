//! Secrets server throughput and latency against nginx, and server start
//! time.
//!
//! Needs `nginx` and `wrk` (`apt-get install -y nginx wrk`). Run with
//! `cargo bench --bench secrets`. Both servers run on 127.0.0.1 with one
//! worker (nginx: `worker_processes 1`; habitus: a one-thread tokio
//! runtime), TLS 1.3, an ECDSA P-256 certificate, no session tickets or
//! session cache on nginx, and serve the same 3 KB body. `wrk -t2 -c50
//! -d10s --latency` runs once with keep-alive and once with a new
//! connection per request (`Connection: close`, so every request pays a
//! full handshake). Targets: habitus ≥ 0.8× nginx's requests/s in both
//! modes, p99 ≤ 1.5× nginx's with keep-alive, median start (CA, server
//! certificate, bind) ≤ 20 ms.
#![allow(clippy::disallowed_macros)] // a test or bench program prints its own report

use std::net::SocketAddr;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use habitus::model::SecretKind;
use habitus::secrets::provider::{SecretKey, SecretStore};
use habitus::secrets::server::{self, ServerOptions};
use habitus::secrets::Secret;

const BODY_SIZE: usize = 3 * 1024;
const DURATION: &str = "10s";

fn main() {
    // `cargo bench` passes `--bench`; `cargo test --benches` does not run us.
    if !std::env::args().any(|a| a == "--bench") {
        return;
    }
    for tool in ["nginx", "wrk"] {
        let found = Command::new("which")
            .arg(tool)
            .output()
            .is_ok_and(|o| o.status.success());
        if !found {
            eprintln!("`{tool}` is missing: apt-get install -y nginx wrk");
            std::process::exit(2);
        }
    }
    let body: Vec<u8> = (0..BODY_SIZE).map(|i| b'a' + (i % 26) as u8).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();

    // Start time: make CA + server certificate, bind, serve.
    let mut starts = Vec::new();
    for _ in 0..31 {
        let t = Instant::now();
        let handle = runtime.block_on(server::start(
            ServerOptions::new("127.0.0.1".parse().unwrap(), 0),
            store(&body),
        ));
        starts.push(t.elapsed());
        runtime.block_on(handle.unwrap().shutdown());
    }
    starts.sort();
    let start_median = starts[starts.len() / 2];

    let mut options = ServerOptions::new("127.0.0.1".parse().unwrap(), 0);
    options.limits.max_connections = 1024;
    let handle = runtime
        .block_on(server::start(options, store(&body)))
        .unwrap();
    let token = handle.issue_token("bench");
    let ours = format!("{}/v1/secrets/file/bench", handle.url());
    let auth = format!("Authorization: Bearer {}", token.expose());

    let dir = tempfile::tempdir().unwrap();
    let nginx_addr = free_port();
    let mut nginx = start_nginx(dir.path(), nginx_addr, &body);
    let theirs = format!("https://{nginx_addr}/secret");

    let mut rows = Vec::new();
    for (mode, close) in [("keep-alive", false), ("new connection", true)] {
        let n = wrk(&theirs, &auth, close);
        let h = wrk(&ours, &auth, close);
        rows.push((mode, n, h));
    }
    // SIGTERM lets the master stop its worker too (SIGKILL would orphan it).
    let _ = Command::new("kill")
        .args(["-TERM", &nginx.id().to_string()])
        .status();
    let _ = nginx.wait();
    runtime.block_on(handle.shutdown());

    println!("secrets server vs nginx (3 KB over TLS 1.3, ECDSA P-256, 127.0.0.1, 1 worker, wrk -t2 -c50 -d{DURATION})");
    println!(
        "{:<16} {:>12} {:>12} {:>7} {:>11} {:>11} {:>7}",
        "mode", "nginx req/s", "habitus", "ratio", "nginx p99", "habitus p99", "ratio"
    );
    for (mode, n, h) in &rows {
        println!(
            "{:<16} {:>12.0} {:>12.0} {:>6.2}x {:>9.2}ms {:>9.2}ms {:>6.2}x",
            mode,
            n.rps,
            h.rps,
            h.rps / n.rps,
            n.p99_ms,
            h.p99_ms,
            h.p99_ms / n.p99_ms
        );
    }
    println!(
        "server start (CA + certificate + bind): median {:.2} ms, min {:.2} ms, max {:.2} ms over {} runs",
        ms(start_median),
        ms(starts[0]),
        ms(starts[starts.len() - 1]),
        starts.len()
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn store(body: &[u8]) -> SecretStore {
    let mut store = SecretStore::default();
    store.insert(
        "bench",
        SecretKey {
            kind: SecretKind::File,
            name: "bench".into(),
        },
        Arc::new(Secret::new(body.to_vec())),
    );
    store
}

fn free_port() -> SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap()
}

fn start_nginx(dir: &Path, addr: SocketAddr, body: &[u8]) -> Child {
    let cert = rcgen::generate_simple_self_signed(vec!["127.0.0.1".to_string()]).unwrap();
    std::fs::write(dir.join("cert.pem"), cert.cert.pem()).unwrap();
    std::fs::write(dir.join("key.pem"), cert.signing_key.serialize_pem()).unwrap();
    std::fs::create_dir_all(dir.join("www")).unwrap();
    std::fs::write(dir.join("www/secret"), body).unwrap();
    let d = dir.display();
    let conf = format!(
        "worker_processes 1;
user root;
daemon off;
pid {d}/nginx.pid;
error_log {d}/error.log error;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  client_body_temp_path {d}/body;
  proxy_temp_path {d}/proxy;
  fastcgi_temp_path {d}/fastcgi;
  uwsgi_temp_path {d}/uwsgi;
  scgi_temp_path {d}/scgi;
  keepalive_requests 1000000;
  server {{
    listen {addr} ssl;
    ssl_certificate {d}/cert.pem;
    ssl_certificate_key {d}/key.pem;
    ssl_protocols TLSv1.3;
    ssl_session_tickets off;
    ssl_session_cache off;
    root {d}/www;
    default_type application/octet-stream;
  }}
}}
"
    );
    std::fs::write(dir.join("nginx.conf"), conf).unwrap();
    let child = Command::new("nginx")
        .args(["-p", &d.to_string(), "-c", &format!("{d}/nginx.conf")])
        .stdin(Stdio::null())
        .spawn()
        .expect("start nginx");
    let deadline = Instant::now() + Duration::from_secs(5);
    while std::net::TcpStream::connect(addr).is_err() {
        assert!(Instant::now() < deadline, "nginx did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

struct Wrk {
    rps: f64,
    p99_ms: f64,
}

fn wrk(url: &str, auth: &str, close: bool) -> Wrk {
    let mut cmd = Command::new("wrk");
    cmd.args(["-t2", "-c50", "-d", DURATION, "--latency", "-H", auth]);
    if close {
        cmd.args(["-H", "Connection: close"]);
    }
    let out = cmd.arg(url).output().expect("run wrk");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        !text.contains("Non-2xx"),
        "{url} answered with errors:\n{text}"
    );
    let rps = text
        .lines()
        .find_map(|l| l.strip_prefix("Requests/sec:"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no Requests/sec in:\n{text}"));
    let p99 = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("99%"))
        .map(|v| parse_latency(v.trim()))
        .unwrap_or_else(|| panic!("no 99% latency in:\n{text}"));
    Wrk { rps, p99_ms: p99 }
}

/// `1.23ms`, `850.00us`, `1.02s` → milliseconds.
fn parse_latency(text: &str) -> f64 {
    let (number, factor) = if let Some(n) = text.strip_suffix("us") {
        (n, 0.001)
    } else if let Some(n) = text.strip_suffix("ms") {
        (n, 1.0)
    } else if let Some(n) = text.strip_suffix('s') {
        (n, 1000.0)
    } else {
        (text, 1.0)
    };
    number.parse::<f64>().unwrap_or(f64::NAN) * factor
}
