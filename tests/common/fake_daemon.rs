//! A stand-in Docker daemon on a unix socket that answers the ping and the
//! version request as a Docker 20.10 would (or any API version asked for),
//! serves `GET /images/…/get` (what `docker save` and the audit call) with a
//! given archive, lists no containers, and answers 404 to everything else.
//! It records each request line and counts connections. Tests use it to
//! hand habitus image archives that no real daemon would produce (a layer
//! cut short, a layer in a compression habitus cannot read), and to see
//! which paths habitus requests.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

/// A running stand-in daemon.
pub struct FakeDaemon {
    /// Its socket.
    pub socket: PathBuf,
    requests: Arc<Mutex<Vec<String>>>,
    connections: Arc<AtomicUsize>,
}

impl FakeDaemon {
    /// `unix://…`, for `--host` or DOCKER_HOST.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }

    /// Every request so far, as `GET /v1.41/_ping`.
    pub fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }

    /// How many connections it accepted.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}

/// Starts a Docker 20.10 that speaks up to `api_version` on
/// `dir/docker.sock`; it serves until the process ends.
pub fn start(dir: &Path, api_version: &'static str, archive: Vec<u8>) -> FakeDaemon {
    start_as(dir, "20.10.24", api_version, archive)
}

/// [`start`], for a daemon that says it is Docker `docker_version`.
pub fn start_as(
    dir: &Path,
    docker_version: &str,
    api_version: &'static str,
    archive: Vec<u8>,
) -> FakeDaemon {
    let socket = dir.join("docker.sock");
    let listener = UnixListener::bind(&socket).expect("bind the fake daemon's socket");
    let archive = Arc::new(archive);
    let requests = Arc::new(Mutex::new(Vec::new()));
    let connections = Arc::new(AtomicUsize::new(0));
    let version = Arc::new(format!(
        r#"{{"Version":"{docker_version}","ApiVersion":"{api_version}","MinAPIVersion":"1.12","Os":"linux","Arch":"amd64"}}"#
    ));
    let (log, count) = (Arc::clone(&requests), Arc::clone(&connections));
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            count.fetch_add(1, Ordering::SeqCst);
            let archive = Arc::clone(&archive);
            let version = Arc::clone(&version);
            let log = Arc::clone(&log);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                loop {
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                        return;
                    }
                    log.lock()
                        .unwrap()
                        .push(request_line.trim_end().to_string());
                    let mut length = 0usize;
                    loop {
                        let mut header = String::new();
                        if reader.read_line(&mut header).unwrap_or(0) == 0 {
                            return;
                        }
                        if header == "\r\n" {
                            break;
                        }
                        if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:")
                        {
                            length = v.trim().parse().unwrap_or(0);
                        }
                    }
                    let mut body = vec![0; length];
                    if std::io::Read::read_exact(&mut reader, &mut body).is_err() {
                        return;
                    }
                    let path = request_line.split(' ').nth(1).unwrap_or("");
                    let (status, kind, body): (&str, &str, &[u8]) = if path.ends_with("/_ping") {
                        ("200 OK", "text/plain", b"OK")
                    } else if path.ends_with("/version") {
                        ("200 OK", "application/json", version.as_bytes())
                    } else if path.contains("/containers/json") {
                        ("200 OK", "application/json", b"[]")
                    } else if path.contains("/images/") && path.contains("/get") {
                        ("200 OK", "application/x-tar", archive.as_slice())
                    } else {
                        (
                            "404 Not Found",
                            "application/json",
                            br#"{"message":"page not found"}"#,
                        )
                    };
                    let head = format!(
                        "HTTP/1.1 {status}\r\nApi-Version: {api_version}\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\r\n",
                        body.len()
                    );
                    if writer.write_all(head.as_bytes()).is_err() || writer.write_all(body).is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    FakeDaemon {
        socket,
        requests,
        connections,
    }
}
