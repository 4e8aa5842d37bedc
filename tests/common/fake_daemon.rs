//! A stand-in Docker daemon on a unix socket that answers the ping and the
//! version request as a Docker 20.10 would, serves `GET /images/…/get`
//! (what `docker save` and the audit call) with a given archive, and
//! answers 404 to everything else. Tests use it to hand habitus image
//! archives that no real daemon would produce (a layer cut short, a layer
//! in a compression habitus cannot read).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Starts the daemon on `dir/docker.sock`; it serves until the process
/// ends. Returns the socket's path.
pub fn serving_archive(dir: &Path, archive: Vec<u8>) -> PathBuf {
    let socket = dir.join("docker.sock");
    let listener = UnixListener::bind(&socket).expect("bind the fake daemon's socket");
    let archive = Arc::new(archive);
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(stream) = stream else { return };
            let archive = Arc::clone(&archive);
            std::thread::spawn(move || {
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut writer = stream;
                loop {
                    let mut request_line = String::new();
                    if reader.read_line(&mut request_line).unwrap_or(0) == 0 {
                        return;
                    }
                    loop {
                        let mut header = String::new();
                        if reader.read_line(&mut header).unwrap_or(0) == 0 {
                            return;
                        }
                        if header == "\r\n" {
                            break;
                        }
                    }
                    let path = request_line.split(' ').nth(1).unwrap_or("");
                    let (status, kind, body): (&str, &str, &[u8]) = if path.ends_with("/_ping") {
                        ("200 OK", "text/plain", b"OK")
                    } else if path.ends_with("/version") {
                        (
                            "200 OK",
                            "application/json",
                            br#"{"Version":"20.10.24","ApiVersion":"1.41","MinAPIVersion":"1.12","Os":"linux","Arch":"amd64"}"#,
                        )
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
                        "HTTP/1.1 {status}\r\nApi-Version: 1.41\r\nContent-Type: {kind}\r\nContent-Length: {}\r\n\r\n",
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
    socket
}
