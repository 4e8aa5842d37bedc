//! A meeting point on the host for the `RUN`s of a build: a plain-HTTP
//! server on all of the host's addresses, which a build container reaches
//! at its default gateway. A test that relies on an order or an overlap of
//! steps makes it happen this way instead of hoping a `sleep` lasts long
//! enough: one `RUN` signals a name ([`Rendezvous::signal_cmd`]), another
//! waits for it ([`Rendezvous::wait_cmd`]), and the test can signal names
//! itself ([`Rendezvous::signal`]) when it sees something happen.
//!
//! A wait gives up after about two minutes of asking, printing what it
//! waited for, so that a step that never meets the other fails its build
//! instead of hanging the test.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::Duration;

/// How many times a [`Rendezvous::wait_cmd`] asks, 0.2 s apart.
const WAIT_ASKS: u32 = 600;

/// The running server; stopped when dropped.
pub struct Rendezvous {
    port: u16,
    signals: Arc<Mutex<BTreeSet<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Rendezvous {
    /// Starts the server on a free port of `0.0.0.0`.
    pub fn start() -> Rendezvous {
        let listener = TcpListener::bind("0.0.0.0:0").expect("bind the rendezvous server");
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let signals = Arc::new(Mutex::new(BTreeSet::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let thread = {
            let signals = Arc::clone(&signals);
            let stop = Arc::clone(&stop);
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    match listener.accept() {
                        Ok((stream, _)) => answer(stream, &signals),
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                            std::thread::sleep(Duration::from_millis(20));
                        }
                        Err(e) => panic!("rendezvous server: {e}"),
                    }
                }
            })
        };
        Rendezvous {
            port,
            signals,
            stop,
            thread: Some(thread),
        }
    }

    /// Signals `name` from the test.
    pub fn signal(&self, name: &str) {
        self.signals.lock().unwrap().insert(name.to_string());
    }

    /// Whether `name` was signalled (by a `RUN` or the test).
    pub fn signalled(&self, name: &str) -> bool {
        self.signals.lock().unwrap().contains(name)
    }

    /// Shell for a `RUN` (the test base image has `ip`, `awk` and curl):
    /// signals `name`.
    pub fn signal_cmd(&self, name: &str) -> String {
        format!("curl -fsS -o /dev/null {}/signal/{name}", self.base_url())
    }

    /// Shell for a `RUN`: waits until `name` is signalled; after
    /// [`WAIT_ASKS`] asks it prints `gave up waiting for <name>` and fails.
    pub fn wait_cmd(&self, name: &str) -> String {
        format!(
            "i=0; until curl -fs -o /dev/null {url}/wait/{name}; do i=$((i+1)); \
             if [ $i -ge {WAIT_ASKS} ]; then echo 'gave up waiting for {name}'; exit 1; fi; \
             sleep 0.2; done",
            url = self.base_url()
        )
    }

    /// The server's URL as a build container computes it: its default
    /// gateway is the host.
    fn base_url(&self) -> String {
        format!(
            "http://$(ip route | awk '/^default/ {{print $3; exit}}'):{}",
            self.port
        )
    }
}

impl Drop for Rendezvous {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// Answers one request: `GET /signal/<name>` (200) or `GET /wait/<name>`
/// (200 once signalled, 404 before).
fn answer(stream: TcpStream, signals: &Mutex<BTreeSet<String>>) {
    stream.set_nonblocking(false).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut reader = BufReader::new(stream);
    let mut request = String::new();
    if reader.read_line(&mut request).is_err() {
        return;
    }
    // Read the headers too: closing with unread bytes would reset the
    // connection before curl reads the answer.
    let mut header = String::new();
    while reader.read_line(&mut header).is_ok_and(|n| n > 0) && header.trim_end() != "" {
        header.clear();
    }
    let path = request.split_whitespace().nth(1).unwrap_or("");
    let status = if let Some(name) = path.strip_prefix("/signal/") {
        signals.lock().unwrap().insert(name.to_string());
        "200 OK"
    } else if let Some(name) = path.strip_prefix("/wait/") {
        if signals.lock().unwrap().contains(name) {
            "200 OK"
        } else {
            "404 Not Found"
        }
    } else {
        "400 Bad Request"
    };
    let mut stream = reader.into_inner();
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
}
