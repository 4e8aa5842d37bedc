//! habitus's `build` run inside the test process, on the test's own async
//! runtime. A build run as a separate process loses its sockets when it
//! exits, whatever its teardown did; run here, a secrets server that
//! outlived its build would still be listening when the test looks.

use std::io::Write;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use habitus::runner::Signal;
use tokio_util::sync::CancellationToken;

/// What the build's reporter wrote.
#[derive(Clone, Default)]
struct Sink(Arc<Mutex<String>>);

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0
            .lock()
            .unwrap()
            .push_str(&String::from_utf8_lossy(buf));
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// One in-process build: its output so far and its cancellation.
#[derive(Default)]
pub struct InProcess {
    output: Sink,
    cancel: CancellationToken,
    signal: Arc<Mutex<Option<Signal>>>,
}

impl InProcess {
    pub fn new() -> InProcess {
        InProcess::default()
    }

    /// Everything the build reported so far.
    pub fn output(&self) -> String {
        self.output.0.lock().unwrap().clone()
    }

    /// Runs `habitus -d <dir> <args>` (a build); variables are read from
    /// `env` first, then from the test's environment.
    pub async fn build(
        &self,
        dir: &Path,
        args: &[&str],
        env: &[(&str, &str)],
    ) -> Result<(), habitus::Error> {
        let mut argv = vec![
            "habitus".to_string(),
            "-d".into(),
            dir.display().to_string(),
        ];
        argv.extend(args.iter().map(ToString::to_string));
        let cli = habitus::cli::parse(argv).expect("valid command line");
        let lookup = |name: &str| {
            env.iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
                .or_else(|| std::env::var(name).ok())
        };
        let config = habitus::config::Config::from_flags(&cli.flags, dir, &lookup)
            .expect("valid configuration");
        let reporter = habitus::progress::Reporter::new(
            Box::new(self.output.clone()),
            config.output.level,
            false,
        );
        let env_os = |name: &str| lookup(name).map(Into::into);
        habitus::build_in(
            &config,
            &env_os,
            Arc::new(reporter),
            self.cancel.clone(),
            Arc::clone(&self.signal),
        )
        .await
    }

    /// Waits (at most `limit`) for a reported line containing `needle`.
    pub async fn wait_for(&self, needle: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(line) = self.output().lines().find(|l| l.contains(needle)) {
                return line.to_string();
            }
            assert!(
                Instant::now() < deadline,
                "no line with `{needle}`:\n{}",
                self.output()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Stops the build as Ctrl-C would.
    pub fn interrupt(&self) {
        *self.signal.lock().unwrap() = Some(Signal::Interrupt);
        self.cancel.cancel();
    }
}

/// The secrets server address in a `secrets server listening on` line.
pub fn server_addr(output: &str) -> SocketAddr {
    let line = output
        .lines()
        .find(|l| l.contains("secrets server listening on https://"))
        .unwrap_or_else(|| panic!("no server line:\n{output}"));
    let rest = line.split("https://").nth(1).unwrap();
    rest.split_whitespace().next().unwrap().parse().unwrap()
}

/// Whether a socket in this network namespace listens on `addr`, as the
/// kernel's socket table says. A connection attempt would not tell: once
/// the build's network is gone its gateway address is unreachable, while
/// a server still bound to it would listen on.
pub fn listening(addr: SocketAddr) -> bool {
    let (table, local) = match addr {
        SocketAddr::V4(v4) => (
            "/proc/net/tcp",
            format!(
                "{:08X}:{:04X}",
                u32::from_ne_bytes(v4.ip().octets()),
                v4.port()
            ),
        ),
        SocketAddr::V6(v6) => {
            let words: String = v6
                .ip()
                .octets()
                .chunks(4)
                .map(|w| format!("{:08X}", u32::from_ne_bytes([w[0], w[1], w[2], w[3]])))
                .collect();
            ("/proc/net/tcp6", format!("{words}:{:04X}", v6.port()))
        }
    };
    let text = std::fs::read_to_string(table).expect("read the socket table");
    // `sl local_address rem_address st …`; state 0A is LISTEN.
    text.lines().skip(1).any(|line| {
        let fields: Vec<&str> = line.split_whitespace().collect();
        fields.get(1) == Some(&local.as_str()) && fields.get(3) == Some(&"0A")
    })
}
