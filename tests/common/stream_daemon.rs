//! A stand-in Docker daemon, like [`super::fake_daemon`], whose `docker
//! save` body is streamed from a reader made per request instead of held in
//! memory: a test can hand habitus an archive of gigabytes (a layer with a
//! 512 MiB PAX record) without holding it. It answers the ping and the
//! version request as a Docker 20.10 speaking API 1.41 would, lists no
//! containers, serves `GET /images/…/get` with the body (its length sent
//! first, as `Content-Length`), and answers 404 to everything else.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Makes the body of one `docker save`: its length and its bytes.
pub type Body = Arc<dyn Fn() -> (u64, Box<dyn Read + Send>) + Send + Sync>;

/// A running stand-in daemon; it serves until the process ends.
pub struct StreamDaemon {
    /// Its socket.
    pub socket: PathBuf,
}

impl StreamDaemon {
    /// `unix://…`, for `--host` or DOCKER_HOST.
    pub fn host(&self) -> String {
        format!("unix://{}", self.socket.display())
    }
}

const API_VERSION: &str = "1.41";

/// Starts the daemon on `dir/docker.sock`.
pub fn start(dir: &Path, body: Body) -> StreamDaemon {
    let socket = dir.join("docker.sock");
    let listener = UnixListener::bind(&socket).expect("bind the stand-in daemon's socket");
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let body = Arc::clone(&body);
            std::thread::spawn(move || serve(stream, &body));
        }
    });
    StreamDaemon { socket }
}

/// Answers the requests of one connection until it closes.
fn serve(stream: std::os::unix::net::UnixStream, body: &Body) {
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut writer = stream;
    loop {
        let mut request_line = String::new();
        if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
            return;
        }
        let mut length = 0usize;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header).unwrap_or(0) == 0 {
                return;
            }
            if header == "\r\n" {
                break;
            }
            if let Some(v) = header.to_ascii_lowercase().strip_prefix("content-length:") {
                length = v.trim().parse().unwrap_or(0);
            }
        }
        let mut request_body = vec![0; length];
        if reader.read_exact(&mut request_body).is_err() {
            return;
        }
        let path = request_line.split(' ').nth(1).unwrap_or("");
        let version = format!(
            r#"{{"Version":"20.10.24","ApiVersion":"{API_VERSION}","MinAPIVersion":"1.12","Os":"linux","Arch":"amd64"}}"#
        );
        let (status, kind, len, mut content): (&str, &str, u64, Box<dyn Read + Send>) =
            if path.ends_with("/_ping") {
                ("200 OK", "text/plain", 2, Box::new(&b"OK"[..]))
            } else if path.ends_with("/version") {
                let v = version.into_bytes();
                (
                    "200 OK",
                    "application/json",
                    v.len() as u64,
                    Box::new(std::io::Cursor::new(v)),
                )
            } else if path.contains("/containers/json") {
                ("200 OK", "application/json", 2, Box::new(&b"[]"[..]))
            } else if path.contains("/images/") && path.contains("/get") {
                let (len, content) = body();
                ("200 OK", "application/x-tar", len, content)
            } else {
                let message = br#"{"message":"page not found"}"#;
                (
                    "404 Not Found",
                    "application/json",
                    message.len() as u64,
                    Box::new(&message[..]),
                )
            };
        let head = format!(
            "HTTP/1.1 {status}\r\nApi-Version: {API_VERSION}\r\nContent-Type: {kind}\r\nContent-Length: {len}\r\n\r\n"
        );
        if writer.write_all(head.as_bytes()).is_err() {
            return;
        }
        // habitus may stop reading early (an error it reports): the write
        // then fails and the connection is dropped.
        let mut buf = vec![0u8; 1 << 20];
        loop {
            match content.read(&mut buf) {
                Ok(0) => break,
                Ok(n) => {
                    if writer.write_all(&buf[..n]).is_err() {
                        return;
                    }
                }
                Err(_) => return,
            }
        }
    }
}
