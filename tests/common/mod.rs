//! The shared harness for integration tests.
//!
//! - [`docker_available`] fails a daemon test with one clear message when no
//!   daemon answers.
//! - [`base_image`] builds (once, then reuses) the image every daemon test
//!   starts `FROM`: nothing can be pulled here, so it is made from the host's
//!   static busybox plus curl and its libraries.
//! - [`unique`] names objects; [`Cleanup`] removes every container, image and
//!   network carrying `habitus.uid=<uid>` (or whose name or reference
//!   contains the uid) when it goes out of scope, also when the test panics.
//! - [`Habitus`] runs the binary on files written into a temporary directory.
//! - [`leak::assert_no_secret_in_image`] proves that a secret reached no
//!   layer, config or history entry of an image.
//! - [`tls_proxy`] puts a TLS endpoint that requires a client certificate in
//!   front of the local daemon.
//! - [`rendezvous`] lets the `RUN`s of a build wait for one another (or
//!   for the test), so that an order or an overlap of steps is made, not
//!   hoped for.
//! - [`registry`] runs a private registry (HTTPS, basic auth) on
//!   `127.0.0.1` for pushes and pulls with a login.
//!
//! Not every test module uses every helper.
#![allow(dead_code)]

pub mod fake_daemon;
pub mod in_process;
pub mod leak;
pub mod registry;
pub mod rendezvous;
pub mod saved;
pub mod tls_proxy;

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, OnceLock};

use habitus::config::DockerSettings;
use habitus::engine::docker::DockerEngine;

/// The label every test object carries: `habitus.uid=<uid>`.
pub const UID_LABEL: &str = "habitus.uid";

/// Panics with instructions unless `docker info` succeeds. Call it first in
/// every test that needs the daemon.
#[track_caller]
pub fn docker_available() {
    static AVAILABLE: OnceLock<Result<(), String>> = OnceLock::new();
    let result = AVAILABLE.get_or_init(|| {
        match Command::new("docker")
            .arg("info")
            .stdin(Stdio::null())
            .output()
        {
            Ok(out) if out.status.success() => Ok(()),
            Ok(out) => Err(String::from_utf8_lossy(&out.stderr).trim().to_string()),
            Err(err) => Err(format!("cannot run `docker`: {err}")),
        }
    });
    if let Err(why) = result {
        panic!(
            "this test needs a Docker daemon, and `docker info` failed:\n  {why}\n\
             start one (as root: `dockerd >/tmp/dockerd.log 2>&1 &`, or \
             `sudo systemctl start docker`), or run `.ci/run`, which installs \
             and starts it"
        );
    }
}

/// Connects a [`DockerEngine`] the way the binary does (DOCKER_HOST etc.).
pub async fn engine() -> DockerEngine {
    docker_available();
    let settings = DockerSettings::resolve(None, None, None, &|name| std::env::var(name).ok());
    DockerEngine::connect(&settings.options())
        .await
        .expect("connect to the Docker daemon")
}

/// Runs `docker <args>` and returns its stdout; panics with stderr on failure.
#[track_caller]
pub fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run docker");
    assert!(
        out.status.success(),
        "`docker {}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Runs a listing `docker <args>` for cleanup, asking again when it fails:
/// the containerd image store fails a listing now and then while another
/// test removes an image (`content digest …: not found`), and a listing
/// that failed would leave this test's objects behind.
fn docker_list(args: &[&str]) -> String {
    for attempt in 0..5 {
        let out = Command::new("docker")
            .args(args)
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output();
        if let Ok(out) = out {
            if out.status.success() {
                return String::from_utf8_lossy(&out.stdout).into_owned();
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(200 * (attempt + 1)));
    }
    String::new()
}

/// Runs `docker <args>` ignoring failure (cleanup paths).
fn docker_quiet(args: &[&str]) -> String {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output()
        .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
        .unwrap_or_default()
}

fn words(text: &str) -> Vec<String> {
    text.split_whitespace().map(str::to_string).collect()
}

/// A unique lowercase name: `<prefix>-<pid>-<counter>-<random>`. Usable as
/// an image name, container name, network name and `--uid`.
pub fn unique(prefix: &str) -> String {
    static COUNTER: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{}-{}-{}-{:06x}",
        prefix.to_lowercase(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        rand::random::<u32>() & 0xff_ffff
    )
}

/// `{habitus.uid: uid}`, for requests made by tests.
pub fn uid_labels(uid: &str) -> BTreeMap<String, String> {
    BTreeMap::from([(UID_LABEL.to_string(), uid.to_string())])
}

/// Ids of the containers (running or not) labelled `key=value`.
pub fn containers_with_label(key: &str, value: &str) -> Vec<String> {
    words(&docker(&[
        "ps",
        "-aq",
        "--no-trunc",
        "--filter",
        &format!("label={key}={value}"),
    ]))
}

/// Ids of the running containers labelled `key=value`.
pub fn running_containers_with_label(key: &str, value: &str) -> Vec<String> {
    words(&docker(&[
        "ps",
        "-q",
        "--no-trunc",
        "--filter",
        &format!("label={key}={value}"),
    ]))
}

/// Ids of the images labelled `key=value`.
pub fn images_with_label(key: &str, value: &str) -> Vec<String> {
    let mut ids = words(&docker(&[
        "images",
        "-q",
        "--no-trunc",
        "--filter",
        &format!("label={key}={value}"),
    ]));
    ids.dedup();
    ids
}

/// Ids of the networks labelled `key=value`.
pub fn networks_with_label(key: &str, value: &str) -> Vec<String> {
    words(&docker(&[
        "network",
        "ls",
        "-q",
        "--no-trunc",
        "--filter",
        &format!("label={key}={value}"),
    ]))
}

/// Runs `docker <args>` about one object that may be gone: its stdout when
/// it succeeds, `None` when it fails and its stderr holds one of `gone`
/// (the daemon's own words for a missing object). Any other failure is no
/// answer about the object: it panics with docker's stderr.
#[track_caller]
pub fn docker_unless_gone(args: &[&str], gone: &[&str]) -> Option<String> {
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run docker");
    if out.status.success() {
        return Some(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        gone.iter().any(|words| stderr.contains(words)),
        "`docker {}` failed ({}) without saying the object is gone:\n{stderr}",
        args.join(" "),
        out.status
    );
    None
}

/// Whether an image reference or id exists: `false` only when the daemon
/// says `No such image`; any other error fails the test.
#[track_caller]
pub fn image_exists(reference: &str) -> bool {
    docker_unless_gone(
        &["image", "inspect", "--format", "{{.Id}}", reference],
        &["No such image: "],
    )
    .is_some()
}

/// Whether a network (name or id) exists: `false` only when the daemon
/// says it is not found (`network <name> not found`, or the client's `No
/// such network`); any other error fails the test.
#[track_caller]
pub fn network_exists(name: &str) -> bool {
    docker_unless_gone(
        &["network", "inspect", "--format", "{{.Id}}", name],
        &[&format!("network {name} not found"), "No such network: "],
    )
    .is_some()
}

/// `docker history <args> <image>`'s output, or `None` when the image is
/// gone (`No such image`).
///
/// On the containerd image store `docker history` reads the size of each
/// of the image's snapshots, so it fails with `snapshot sha256:… does not
/// exist` when the image's content is there but it is not unpacked (no
/// snapshot was made for it, or it was collected). Creating a container
/// of the image unpacks it; history is then asked once more, and any
/// failure but `No such image` fails the test with the daemon's message.
#[track_caller]
pub fn history(image: &str, args: &[&str]) -> Option<String> {
    let mut command = vec!["history"];
    command.extend_from_slice(args);
    command.push(image);
    let out = Command::new("docker")
        .args(&command)
        .stdin(Stdio::null())
        .output()
        .expect("run docker");
    if out.status.success() {
        return Some(String::from_utf8_lossy(&out.stdout).into_owned());
    }
    let stderr = String::from_utf8_lossy(&out.stderr);
    if stderr.contains("No such image: ") {
        return None;
    }
    assert!(
        stderr.contains("snapshot sha256:") && stderr.contains(" does not exist"),
        "`docker {}` failed ({}):\n{stderr}",
        command.join(" "),
        out.status
    );
    // A container that is created, never started, and removed at once.
    let name = unique("unpack");
    docker_unless_gone(
        &["create", "--name", &name, image, "/unpack-only"],
        &["No such image: "],
    )?;
    docker(&["rm", "-f", &name]);
    docker_unless_gone(&command, &["No such image: "])
}

/// Removes, when dropped, everything of one test: containers, images and
/// networks labelled `habitus.uid=<uid>` or whose name (image reference)
/// contains the uid. Create it before creating anything.
pub struct Cleanup {
    uid: String,
}

impl Cleanup {
    /// A guard for a fresh uid made with [`unique`].
    pub fn new(prefix: &str) -> Cleanup {
        Cleanup {
            uid: unique(prefix),
        }
    }

    /// A guard for a uid the test already has.
    pub fn for_uid(uid: &str) -> Cleanup {
        Cleanup {
            uid: uid.to_string(),
        }
    }

    /// The uid this guard sweeps.
    pub fn uid(&self) -> &str {
        &self.uid
    }

    /// `{habitus.uid: uid}`.
    pub fn labels(&self) -> BTreeMap<String, String> {
        uid_labels(&self.uid)
    }

    /// Removes everything now (also done on drop).
    pub fn sweep(&self) {
        let uid = self.uid.as_str();
        let label = format!("label={UID_LABEL}={uid}");
        let mut containers = words(&docker_list(&["ps", "-aq", "--filter", &label]));
        containers.extend(words(&docker_list(&[
            "ps",
            "-aq",
            "--filter",
            &format!("name={uid}"),
        ])));
        if !containers.is_empty() {
            let mut args = vec!["rm", "-f", "-v"];
            args.extend(containers.iter().map(String::as_str));
            docker_quiet(&args);
        }

        // Removal can fail while a parallel test uses the same layers:
        // list and remove again until nothing is left (a few rounds).
        for _ in 0..3 {
            let mut images: Vec<String> =
                docker_list(&["images", "--format", "{{.Repository}}:{{.Tag}}"])
                    .lines()
                    .filter(|reference| reference.contains(uid))
                    .map(str::to_string)
                    .collect();
            images.extend(words(&docker_list(&[
                "images",
                "-aq",
                "--no-trunc",
                "--filter",
                &label,
            ])));
            images.dedup();
            if images.is_empty() {
                break;
            }
            let mut args = vec!["rmi", "-f"];
            args.extend(images.iter().map(String::as_str));
            docker_quiet(&args);
        }

        let mut networks = words(&docker_list(&["network", "ls", "-q", "--filter", &label]));
        networks.extend(words(&docker_list(&[
            "network",
            "ls",
            "-q",
            "--filter",
            &format!("name={uid}"),
        ])));
        if !networks.is_empty() {
            let mut args = vec!["network", "rm"];
            args.extend(networks.iter().map(String::as_str));
            docker_quiet(&args);
        }
    }
}

impl Drop for Cleanup {
    fn drop(&mut self) {
        self.sweep();
    }
}

/// The label on the test base image.
pub const BASE_LABEL: (&str, &str) = ("habitus.test", "base");

/// The test base image, `habitus-test-base:<content hash>`: `FROM scratch`
/// with the host's static busybox (installed as `/bin/sh` and friends),
/// `/usr/bin/curl` with every library `ldd` lists and the dynamic loader,
/// and `/tmp`. Built once per test process, reused across runs (the tag
/// changes when any of its files change) and never removed by tests.
pub fn base_image() -> String {
    static IMAGE: OnceLock<String> = OnceLock::new();
    static BUILDING: Mutex<()> = Mutex::new(());
    docker_available();
    if let Some(image) = IMAGE.get() {
        return image.clone();
    }
    let _lock = BUILDING.lock().unwrap_or_else(|e| e.into_inner());
    IMAGE.get_or_init(build_base_image).clone()
}

const BASE_DOCKERFILE: &str = "FROM scratch
COPY rootfs/ /
RUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox --install -s /bin && mkdir -p -m 1777 /tmp && mkdir -p /root /etc\"]
LABEL habitus.test=base
";

fn build_base_image() -> String {
    let busybox = Path::new("/bin/busybox");
    assert!(
        busybox.exists(),
        "the test base image needs a static busybox at /bin/busybox: \
         `apt-get install busybox-static` (or run `.ci/run`)"
    );
    let mut files: Vec<PathBuf> = vec![busybox.into(), "/usr/bin/curl".into()];
    files.extend(ldd("/usr/bin/curl"));

    let mut hash = Fnv::default();
    hash.write(BASE_DOCKERFILE.as_bytes());
    for file in &files {
        hash.write(file.as_os_str().as_encoded_bytes());
        hash.write(&std::fs::read(file).unwrap_or_else(|e| panic!("{}: {e}", file.display())));
    }
    let tag = format!("habitus-test-base:{:012x}", hash.0 >> 16);
    if image_exists(&tag) {
        return tag;
    }

    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::write(dir.path().join("Dockerfile"), BASE_DOCKERFILE).unwrap();
    for file in &files {
        let dest = dir
            .path()
            .join("rootfs")
            .join(file.strip_prefix("/").unwrap());
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        // `copy` follows symlinks: the image gets the file under the name
        // the loader looks for.
        std::fs::copy(file, &dest).unwrap_or_else(|e| panic!("{}: {e}", file.display()));
    }
    let out = Command::new("docker")
        .args(["build", "-q", "-t", &tag])
        .arg(dir.path())
        .env("DOCKER_BUILDKIT", "0")
        .stdin(Stdio::null())
        .output()
        .expect("run docker build");
    assert!(
        out.status.success(),
        "building the test base image `{tag}` failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    tag
}

/// The absolute paths `ldd` lists for `binary`, including the loader.
fn ldd(binary: &str) -> Vec<PathBuf> {
    let out = Command::new("ldd").arg(binary).output().expect("run ldd");
    assert!(out.status.success(), "ldd {binary} failed");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|line| {
            let path = match line.split_once("=>") {
                Some((_, rest)) => rest.split_whitespace().next()?,
                None => line.split_whitespace().next()?,
            };
            path.starts_with('/').then(|| PathBuf::from(path))
        })
        .collect()
}

/// FNV-1a, 64 bits: a content hash that is stable across toolchains.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Self {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Fnv {
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Runs the habitus binary on files in a temporary work directory:
///
/// ```ignore
/// let out = Habitus::new()
///     .file("build.yml", "build: …")
///     .file("Dockerfile", &format!("FROM {}\n", base_image()))
///     .arg("--uid").arg(cleanup.uid())
///     .run();
/// out.assert_success();
/// ```
///
/// `-d <dir>` is passed first unless [`Habitus::no_workdir`] is called.
pub struct Habitus {
    dir: tempfile::TempDir,
    args: Vec<OsString>,
    env: Vec<(OsString, Option<OsString>)>,
    workdir_flag: bool,
    terminal_stdout: Option<String>,
}

/// What a run of the binary produced.
#[derive(Debug)]
pub struct Output {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

impl Output {
    /// The exit code (`None` if killed by a signal).
    pub fn code(&self) -> Option<i32> {
        self.status.code()
    }

    /// Panics, showing both streams, unless the run succeeded.
    #[track_caller]
    pub fn assert_success(&self) -> &Self {
        assert!(
            self.status.success(),
            "habitus failed with {}\n--- stdout\n{}\n--- stderr\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Panics, showing both streams, unless the run exited with `code`.
    #[track_caller]
    pub fn assert_code(&self, code: i32) -> &Self {
        assert_eq!(
            self.status.code(),
            Some(code),
            "habitus exited with {}, not {code}\n--- stdout\n{}\n--- stderr\n{}",
            self.status,
            self.stdout,
            self.stderr
        );
        self
    }

    /// Panics, showing both streams, unless the run failed.
    #[track_caller]
    pub fn assert_failure(&self) -> &Self {
        assert!(
            !self.status.success(),
            "habitus unexpectedly succeeded\n--- stdout\n{}\n--- stderr\n{}",
            self.stdout,
            self.stderr
        );
        self
    }
}

/// A habitus process started with its stdout and stderr piped here and
/// read while it runs (so it never blocks on a full pipe): its stderr up
/// to a line the test waits for, then everything else, which
/// [`Spawned::wait`] returns with the exit status as an [`Output`].
pub struct Spawned {
    pub child: std::process::Child,
    seen: String,
    stdout: std::thread::JoinHandle<String>,
    stderr: std::thread::JoinHandle<String>,
}

impl Spawned {
    /// Starts `cmd` and reads its stderr until a line contains `needle`;
    /// panics showing both streams if it exits first.
    #[track_caller]
    pub fn until(mut cmd: Command, needle: &str) -> Spawned {
        use std::io::{BufRead, Read};
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run habitus");
        let mut out = child.stdout.take().unwrap();
        let stdout = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = out.read_to_string(&mut text);
            text
        });
        let mut err = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut seen = String::new();
        let mut line = String::new();
        let mut found = false;
        while err.read_line(&mut line).unwrap_or(0) > 0 {
            seen.push_str(&line);
            if line.contains(needle) {
                found = true;
                break;
            }
            line.clear();
        }
        let stderr = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = err.read_to_string(&mut text);
            text
        });
        let spawned = Spawned {
            child,
            seen,
            stdout,
            stderr,
        };
        if !found {
            let out = spawned.wait();
            panic!(
                "no stderr line with `{needle}`; habitus exited with {}\n--- stdout\n{}\n--- stderr\n{}",
                out.status, out.stdout, out.stderr
            );
        }
        spawned
    }

    /// The stderr read so far (up to and with the line waited for).
    pub fn seen(&self) -> &str {
        &self.seen
    }

    /// Waits for the process to exit and returns all it printed.
    pub fn wait(mut self) -> Output {
        let status = self.child.wait().expect("wait for habitus");
        let rest = self.stderr.join().unwrap();
        Output {
            status,
            stdout: self.stdout.join().unwrap(),
            stderr: format!("{}{rest}", self.seen),
        }
    }
}

impl Default for Habitus {
    fn default() -> Self {
        Self::new()
    }
}

impl Habitus {
    /// A fresh, empty work directory.
    pub fn new() -> Habitus {
        Habitus {
            dir: tempfile::tempdir().expect("tempdir"),
            args: Vec::new(),
            env: Vec::new(),
            workdir_flag: true,
            terminal_stdout: None,
        }
    }

    /// The work directory.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Writes `contents` to `path` (relative, parents created) in the work
    /// directory.
    pub fn file(self, path: &str, contents: impl AsRef<[u8]>) -> Habitus {
        let dest = self.dir.path().join(path);
        if let Some(parent) = dest.parent() {
            std::fs::create_dir_all(parent).expect("create parent directory");
        }
        std::fs::write(&dest, contents).expect("write test file");
        self
    }

    /// Appends one argument.
    pub fn arg(mut self, arg: impl Into<OsString>) -> Habitus {
        self.args.push(arg.into());
        self
    }

    /// Appends arguments.
    pub fn args<I, S>(mut self, args: I) -> Habitus
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        self.args.extend(args.into_iter().map(Into::into));
        self
    }

    /// Sets an environment variable for the run.
    pub fn env(mut self, key: impl Into<OsString>, value: impl Into<OsString>) -> Habitus {
        self.env.push((key.into(), Some(value.into())));
        self
    }

    /// Removes an environment variable for the run.
    pub fn env_remove(mut self, key: impl Into<OsString>) -> Habitus {
        self.env.push((key.into(), None));
        self
    }

    /// Do not pass `-d <dir>` (for subcommands that take no work directory).
    pub fn no_workdir(mut self) -> Habitus {
        self.workdir_flag = false;
        self
    }

    /// In [`Habitus::run_in_terminal`], stdout goes to the file `name` in
    /// the work directory instead of the terminal; stderr, and with it the
    /// live view, stays on the terminal.
    pub fn terminal_stdout_to(mut self, name: &str) -> Habitus {
        self.terminal_stdout = Some(name.to_string());
        self
    }

    /// Runs the binary in the work directory and collects its output.
    pub fn run(&self) -> Output {
        self.output_of(self.command())
    }

    /// Runs the binary as [`Habitus::run`] does, with `args` after the
    /// others and `env` set too, for one run only.
    pub fn run_with(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut cmd = self.command();
        cmd.args(args);
        for (key, value) in env {
            cmd.env(key, value);
        }
        self.output_of(cmd)
    }

    /// Runs the binary as [`Habitus::run`] does, inside network namespace
    /// `netns` (`ip netns exec`).
    pub fn run_in(&self, netns: &str) -> Output {
        let plain = self.command();
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", netns])
            .arg(plain.get_program())
            .args(plain.get_args())
            .current_dir(self.dir.path())
            .stdin(Stdio::null());
        for (key, value) in plain.get_envs() {
            match value {
                Some(value) => cmd.env(key, value),
                None => cmd.env_remove(key),
            };
        }
        self.output_of(cmd)
    }

    fn output_of(&self, mut cmd: Command) -> Output {
        let out = cmd.output().expect("run habitus");
        Output {
            status: out.status,
            stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
            stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
        }
    }

    /// Runs the binary as [`Habitus::run`] does, calling `action` with the
    /// work directory once, when a stderr line contains `needle` (while
    /// the build goes on).
    pub fn run_when(&self, needle: &str, action: impl FnOnce(&Path)) -> Output {
        use std::io::{BufRead, Read};
        let mut child = self
            .command()
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run habitus");
        let mut stdout = child.stdout.take().unwrap();
        let reader = std::thread::spawn(move || {
            let mut text = String::new();
            let _ = stdout.read_to_string(&mut text);
            text
        });
        let mut stderr = std::io::BufReader::new(child.stderr.take().unwrap());
        let mut action = Some(action);
        let mut seen = String::new();
        let mut line = String::new();
        while stderr.read_line(&mut line).unwrap_or(0) > 0 {
            if line.contains(needle) {
                if let Some(action) = action.take() {
                    action(self.dir.path());
                }
            }
            seen.push_str(&line);
            line.clear();
        }
        let status = child.wait().expect("wait for habitus");
        assert!(action.is_none(), "no stderr line with `{needle}`:\n{seen}");
        Output {
            status,
            stdout: reader.join().unwrap(),
            stderr: seen,
        }
    }

    /// Runs the binary in a terminal (a tmux session of its own, `width`
    /// columns wide), waits for it to exit and returns the terminal's last
    /// screen and the exit code. The process environment reaches it as
    /// for [`Habitus::run`] (DOCKER_HOST included).
    pub fn run_in_terminal(&self, width: u16) -> (String, i32) {
        let quote =
            |s: &std::ffi::OsStr| format!("'{}'", s.to_string_lossy().replace('\'', "'\\''"));
        let mut script = format!("cd {}\n", quote(self.dir.path().as_os_str()));
        for (key, value) in std::env::vars_os().filter(|(k, _)| k == "DOCKER_HOST" || k == "PATH") {
            script.push_str(&format!(
                "export {}={}\n",
                key.to_string_lossy(),
                quote(&value)
            ));
        }
        for (key, value) in &self.env {
            match value {
                Some(value) => script.push_str(&format!(
                    "export {}={}\n",
                    key.to_string_lossy(),
                    quote(value)
                )),
                None => script.push_str(&format!("unset {}\n", key.to_string_lossy())),
            }
        }
        let mut line = quote(std::ffi::OsStr::new(env!("CARGO_BIN_EXE_habitus")));
        if self.workdir_flag {
            line.push_str(&format!(" -d {}", quote(self.dir.path().as_os_str())));
        }
        for arg in &self.args {
            line.push(' ');
            line.push_str(&quote(arg));
        }
        if let Some(name) = &self.terminal_stdout {
            line.push_str(" >");
            line.push_str(&quote(self.dir.path().join(name).as_os_str()));
        }
        script.push_str(&format!("{line}\necho \"EXIT=$?\"\nsleep 600\n"));
        let script_path = self.dir.path().join(".terminal.sh");
        std::fs::write(&script_path, script).unwrap();
        assert!(
            Command::new("tmux").arg("-V").output().is_ok_and(|o| o.status.success()),
            "this test runs habitus in a terminal and needs tmux: `apt-get install tmux` (or run `.ci/run`)"
        );
        let socket = format!("habitus-test-{}", unique("t"));
        let tmux = |args: &[&str]| {
            Command::new("tmux")
                .args(["-L", &socket])
                .args(args)
                .stdin(Stdio::null())
                .output()
                .expect("run tmux")
        };
        let width = width.to_string();
        let started = tmux(&[
            "new-session",
            "-d",
            "-s",
            "t",
            "-x",
            &width,
            "-y",
            "50",
            "sh",
            &script_path.to_string_lossy(),
        ]);
        assert!(
            started.status.success(),
            "tmux: {}",
            String::from_utf8_lossy(&started.stderr)
        );
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(180);
        let (screen, code) = loop {
            let screen = String::from_utf8_lossy(&tmux(&["capture-pane", "-p", "-t", "t"]).stdout)
                .into_owned();
            let exit = screen.lines().find_map(|l| {
                l.trim()
                    .strip_prefix("EXIT=")
                    .and_then(|c| c.parse::<i32>().ok())
            });
            if let Some(code) = exit {
                break (screen, code);
            }
            assert!(
                std::time::Instant::now() < deadline,
                "habitus did not exit within 180 s:\n{screen}"
            );
            std::thread::sleep(std::time::Duration::from_millis(250));
        };
        let _ = tmux(&["kill-server"]);
        (screen, code)
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_habitus"));
        cmd.current_dir(self.dir.path()).stdin(Stdio::null());
        if self.workdir_flag {
            cmd.arg("-d").arg(self.dir.path());
        }
        cmd.args(&self.args);
        for (key, value) in &self.env {
            match value {
                Some(value) => cmd.env(key, value),
                None => cmd.env_remove(key),
            };
        }
        cmd
    }
}

/// A project with `build.yml` and its cleanup, built with `--uid`.
pub fn project(prefix: &str, build_yml: &str) -> (Habitus, Cleanup) {
    let cleanup = Cleanup::new(prefix);
    let h = Habitus::new()
        .file("build.yml", build_yml)
        .args(["--uid", cleanup.uid()]);
    (h, cleanup)
}

/// The build's network, as announced on stderr.
pub fn network_of(stderr: &str) -> String {
    let line = stderr
        .lines()
        .find(|l| l.contains("steps build on network `"))
        .unwrap_or_else(|| panic!("no network line:\n{stderr}"));
    line.split('`').nth(1).unwrap().to_string()
}

/// A Dockerfile starting `FROM` the test base image.
pub fn from_base(rest: &str) -> String {
    format!("FROM {}\n{rest}", base_image())
}

/// A Dockerfile starting `FROM` the test base image whose instructions
/// are one test's own: a `LABEL` naming `case` (a uid) comes first. The
/// classic builder's cache gives every build of the same instructions the
/// same image, and the daemon deletes it when its last name goes, also
/// while another build has just taken it from the cache and not yet
/// named it: that build then fails with `failed to get digest …: no such
/// file or directory`. Tests that do not test sharing must not share.
pub fn from_base_for(case: &str, rest: &str) -> String {
    from_base(&format!("LABEL habitus.test.case=\"{case}\"\n{rest}"))
}

/// The content of the file `path` in `image`, read as `docker cp` reads
/// it: through the archive API from a container that is created, never
/// started, and removed at once. The file must be one regular file; its
/// size is the tar header's, so an empty file reads empty and a missing
/// one fails the test.
///
/// Not `docker run IMAGE cat PATH`: on Docker 26 with the containerd
/// image store, under load, `docker run --rm` now and then exits 0 with no
/// output at all while the image's file is intact (read through the
/// archive API at the same moment, and by the next `docker run`).
#[track_caller]
pub fn read_in_image(image: &str, path: &str) -> String {
    let name = unique("read");
    docker(&["create", "--name", &name, image, "/read-only"]);
    let out = Command::new("docker")
        .args(["cp", &format!("{name}:{path}"), "-"])
        .stdin(Stdio::null())
        .output()
        .expect("run docker");
    docker(&["rm", "-f", &name]);
    assert!(
        out.status.success(),
        "`docker cp {name}:{path} -` of `{image}` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut archive = tar::Archive::new(out.stdout.as_slice());
    let mut entries = archive.entries().expect("read docker cp's tar");
    let mut entry = entries
        .next()
        .unwrap_or_else(|| panic!("`docker cp` of `{path}` in `{image}` gave an empty archive"))
        .expect("read docker cp's tar");
    assert!(
        entry.header().entry_type().is_file(),
        "`{path}` in `{image}` is no regular file: {:?}",
        entry.header().entry_type()
    );
    let mut data = Vec::new();
    std::io::Read::read_to_end(&mut entry, &mut data).expect("read docker cp's tar");
    String::from_utf8(data).unwrap_or_else(|e| panic!("`{path}` in `{image}` is not UTF-8: {e}"))
}

/// The SHA-256 of `data` in lowercase hex, as `sha256sum` prints it.
pub fn sha256_hex(data: &[u8]) -> String {
    ring::digest::digest(&ring::digest::SHA256, data)
        .as_ref()
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}
