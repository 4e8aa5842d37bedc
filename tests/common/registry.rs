//! A private Docker registry for tests: Debian's `docker-registry`
//! (distribution 2.8) as a child process, serving HTTPS on
//! `127.0.0.1:<free port>` with a certificate from its own CA and basic
//! auth for one user (`habitus`, a random password).
//!
//! Docker treats registries on 127.0.0.0/8 as insecure (it accepts any
//! certificate there), and the daemons the tests use share this host's
//! network namespace, so neither daemon needs any configuration: `docker
//! login`, `push` and `pull` against [`Registry::host`] just work.
//!
//! [`start`] returns once the registry answers `GET /v2/` with 401 and
//! `docker login` into [`Registry::docker_config`] succeeded; the
//! [`Registry`] removes local images of its repositories, stops the
//! registry and deletes its files when dropped. [`credential_helper`]
//! writes a `docker-credential-<name>` script that knows the registry's
//! login.

use std::io::{Read, Write};
use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::Rng;
use rcgen::ExtendedKeyUsagePurpose;
use rustls::pki_types::{CertificateDer, ServerName};
use rustls::{ClientConfig, ClientConnection, RootCertStore, StreamOwned};

use super::tls_proxy::{ca, leaf};

/// The registry's only user.
pub const USER: &str = "habitus";

/// Where Debian's `docker-registry` package puts the binary.
pub const BINARY: &str = "/usr/bin/docker-registry";

/// How long [`start`] waits for the registry to answer.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A running registry; stopped, and its files removed, when dropped.
pub struct Registry {
    host: String,
    password: String,
    ca_der: CertificateDer<'static>,
    child: Child,
    /// Config, certificates, htpasswd, storage, the logged-in Docker
    /// config and the registry's log.
    dir: tempfile::TempDir,
}

impl std::fmt::Debug for Registry {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Registry")
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

impl Registry {
    /// `127.0.0.1:<port>`: the registry part of image references.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The user [`Registry::password`] belongs to.
    pub fn user(&self) -> &str {
        USER
    }

    /// The user's password (random per registry).
    pub fn password(&self) -> &str {
        &self.password
    }

    /// The CA that signed the registry's certificate, PEM.
    pub fn ca_pem_path(&self) -> PathBuf {
        self.dir.path().join("ca.pem")
    }

    /// A Docker config directory (`DOCKER_CONFIG`, `docker --config`) whose
    /// `config.json` holds a login to this registry (under `auths`).
    pub fn docker_config(&self) -> PathBuf {
        self.dir.path().join("docker-config")
    }

    /// Runs `docker --config <docker_config> <args>` and returns its
    /// stdout; panics with stderr on failure.
    #[track_caller]
    pub fn docker(&self, args: &[&str]) -> String {
        let config = self.docker_config();
        let config = config.to_string_lossy();
        super::docker(&[&["--config", config.as_ref()], args].concat())
    }

    /// Pushes the local image `local_image` as `<host>/<repo>` (`repo`
    /// may carry a tag) with the logged-in config and returns that
    /// reference. The local tag made for the push is removed again.
    #[track_caller]
    pub fn push(&self, local_image: &str, repo: &str) -> String {
        let reference = format!("{}/{repo}", self.host);
        super::docker(&["tag", local_image, &reference]);
        let out = Command::new("docker")
            .arg("--config")
            .arg(self.docker_config())
            .args(["push", &reference])
            .stdin(Stdio::null())
            .output()
            .expect("run docker push");
        let _ = Command::new("docker")
            .args(["rmi", &reference])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        assert!(
            out.status.success(),
            "`docker push {reference}` failed: {}{}",
            String::from_utf8_lossy(&out.stderr),
            self.log_tail()
        );
        reference
    }

    /// The status code of `GET /v2/` over TLS (verified against the
    /// registry's CA), or `None` while nothing answers.
    pub fn v2_status(&self) -> Option<u16> {
        v2_status(&self.host, &self.ca_der)
    }

    /// The digest the registry serves for `repo:tag` (its
    /// `Docker-Content-Digest`), asked over TLS with the login, as curl
    /// sees it: independent of the daemon and of habitus.
    #[track_caller]
    pub fn served_digest(&self, repo: &str, tag: &str) -> String {
        self.try_served_digest(repo, tag)
            .unwrap_or_else(|| panic!("the registry has no `{repo}:{tag}`{}", self.log_tail()))
    }

    /// Like [`Registry::served_digest`]; `None` when the registry answers
    /// 404 (it has no such manifest).
    #[track_caller]
    pub fn try_served_digest(&self, repo: &str, tag: &str) -> Option<String> {
        let out = Command::new("curl")
            .args(["-sS", "-I", "--cacert"])
            .arg(self.ca_pem_path())
            .args(["-u", &format!("{USER}:{}", self.password)])
            .args([
                "-H",
                "Accept: application/vnd.oci.image.index.v1+json, application/vnd.oci.image.manifest.v1+json, application/vnd.docker.distribution.manifest.list.v2+json, application/vnd.docker.distribution.manifest.v2+json",
            ])
            .arg(format!("https://{}/v2/{repo}/manifests/{tag}", self.host))
            .stdin(Stdio::null())
            .output()
            .expect("run curl");
        let headers = String::from_utf8_lossy(&out.stdout);
        let status = headers.lines().next().unwrap_or_default();
        assert!(
            out.status.success() && (status.contains(" 200") || status.contains(" 404")),
            "HEAD {repo}:{tag} failed: {}{headers}",
            String::from_utf8_lossy(&out.stderr)
        );
        if status.contains(" 404") {
            return None;
        }
        let digest = headers.lines().find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("docker-content-digest")
                .then(|| value.trim().to_string())
        });
        assert!(
            digest.is_some(),
            "no Docker-Content-Digest for {repo}:{tag}:\n{headers}"
        );
        digest
    }

    /// The last lines of the registry's log, for failure messages.
    pub fn log_tail(&self) -> String {
        log_tail(self.dir.path())
    }

    /// Whether a failed `docker pull`'s stderr says this registry wanted
    /// a login. Docker 26 names it (`pull access denied … no basic auth
    /// credentials`). Docker 20.10 does not: a registry on 127.0.0.0/8 is
    /// insecure to it, so after the HTTPS attempt is refused it tries plain
    /// HTTP and reports that attempt's error instead, the TLS port
    /// resetting the plain request (`read: connection reset by peer`);
    /// that counts only while the registry still answers.
    pub fn refused_for_want_of_login(&self, stderr: &str) -> bool {
        let lower = stderr.to_lowercase();
        let named = [
            "no basic auth credentials",
            "unauthorized",
            "authentication required",
        ]
        .iter()
        .any(|needle| lower.contains(needle));
        named
            || (lower.contains("connection reset by peer")
                && lower.contains(&self.host)
                && self.v2_status() == Some(401))
    }

    /// Removes every local image whose repository is on this registry
    /// (pulled or tagged by the test), by tag or by digest.
    fn remove_local_images(&self) {
        let prefix = format!("{}/", self.host);
        let out = Command::new("docker")
            .args([
                "images",
                "--digests",
                "--format",
                "{{.Repository}} {{.Tag}} {{.Digest}}",
            ])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output();
        let Ok(out) = out else { return };
        let mut references = Vec::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let mut fields = line.split_whitespace();
            let (Some(repository), Some(tag), Some(digest)) =
                (fields.next(), fields.next(), fields.next())
            else {
                continue;
            };
            if !repository.starts_with(&prefix) {
                continue;
            }
            if tag != "<none>" {
                references.push(format!("{repository}:{tag}"));
            } else if digest != "<none>" {
                references.push(format!("{repository}@{digest}"));
            }
        }
        if !references.is_empty() {
            let _ = Command::new("docker")
                .arg("rmi")
                .args(&references)
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        // Before the registry stops: while it runs, no other registry
        // can have this port, so these references are this one's.
        self.remove_local_images();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Panics with the install hint unless `program` runs.
#[track_caller]
fn require(program: &str, package: &str) {
    let found = Command::new("sh")
        .args(["-c", &format!("command -v {program}")])
        .stdout(Stdio::null())
        .status()
        .is_ok_and(|s| s.success());
    assert!(
        found,
        "the test registry needs `{program}`: `apt-get install {package}` (or run `.ci/run`)"
    );
}

/// A random alphanumeric string of `len` characters.
fn random_word(len: usize) -> String {
    rand::rng()
        .sample_iter(rand::distr::Alphanumeric)
        .take(len)
        .map(char::from)
        .collect()
}

/// Starts a registry (see the module docs) and waits until it answers.
pub fn start() -> Registry {
    require(BINARY, "docker-registry");
    require("htpasswd", "apache2-utils");
    super::docker_available();

    let dir = tempfile::tempdir().expect("tempdir");
    let path = |name: &str| dir.path().join(name);
    let (ca_der, password) = write_files(dir.path());

    // A free port can be taken between asking for it and the registry
    // binding it: a registry that exits early is started again.
    let mut last_log = String::new();
    for _ in 0..5 {
        let port = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
            .and_then(|l| l.local_addr())
            .expect("find a free port")
            .port();
        let host = format!("127.0.0.1:{port}");
        std::fs::write(path("config.yml"), config_yml(dir.path(), &host)).unwrap();
        let log = std::fs::File::create(path("registry.log")).unwrap();
        let mut child = Command::new(BINARY)
            .arg("serve")
            .arg(path("config.yml"))
            .current_dir(dir.path())
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("run {BINARY}: {e}"));
        let started = Instant::now();
        loop {
            if let Some(status) = v2_status(&host, &ca_der) {
                let registry = Registry {
                    host,
                    password,
                    ca_der,
                    child,
                    dir,
                };
                assert_eq!(
                    status,
                    401,
                    "the test registry answered GET /v2/ without asking for a login{}",
                    registry.log_tail()
                );
                login(&registry);
                return registry;
            }
            if child.try_wait().ok().flatten().is_some() {
                break;
            }
            if started.elapsed() > START_TIMEOUT {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the test registry did not answer within {START_TIMEOUT:?}{}",
                    log_tail(dir.path())
                );
            }
            std::thread::sleep(Duration::from_millis(25));
        }
        last_log = log_tail(dir.path());
    }
    panic!("the test registry exited at start five times{last_log}")
}

/// The last lines of the registry's log in `dir`, for failure messages.
fn log_tail(dir: &Path) -> String {
    let log = std::fs::read_to_string(dir.join("registry.log")).unwrap_or_default();
    let lines: Vec<&str> = log.lines().collect();
    let tail = lines[lines.len().saturating_sub(20)..].join("\n");
    format!("\n--- registry log (last lines)\n{tail}")
}

/// Writes the CA, the server certificate and key, the htpasswd file and
/// the storage and Docker config directories into `dir`; returns the CA
/// and the user's password.
fn write_files(dir: &Path) -> (CertificateDer<'static>, String) {
    let path = |name: &str| dir.join(name);

    let ca = ca("habitus test registry CA");
    let (cert, key) = leaf(&ca, &["127.0.0.1"], ExtendedKeyUsagePurpose::ServerAuth);
    std::fs::write(path("ca.pem"), ca.pem()).unwrap();
    std::fs::write(path("cert.pem"), cert.pem()).unwrap();
    std::fs::write(path("key.pem"), key.serialize_pem()).unwrap();
    let ca_der = ca.der().clone();

    let password = random_word(24);
    let out = Command::new("htpasswd")
        .args(["-Bbn", USER, &password])
        .stdin(Stdio::null())
        .output()
        .expect("run htpasswd");
    assert!(
        out.status.success(),
        "htpasswd failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::write(path("htpasswd"), &out.stdout).unwrap();
    std::fs::create_dir(path("storage")).unwrap();
    std::fs::create_dir(path("docker-config")).unwrap();
    (ca_der, password)
}

/// The distribution configuration: filesystem storage in `dir`, TLS with
/// `dir`'s certificate, basic auth from `dir`'s htpasswd file.
fn config_yml(dir: &Path, host: &str) -> String {
    let d = dir.display();
    format!(
        "version: 0.1
log:
  level: warn
  accesslog:
    disabled: true
storage:
  filesystem:
    rootdirectory: {d}/storage
  delete:
    enabled: true
http:
  addr: {host}
  secret: {secret}
  tls:
    certificate: {d}/cert.pem
    key: {d}/key.pem
auth:
  htpasswd:
    realm: habitus-test
    path: {d}/htpasswd
",
        secret = random_word(32)
    )
}

/// `docker login` into the registry's own Docker config directory.
fn login(registry: &Registry) {
    let mut child = Command::new("docker")
        .arg("--config")
        .arg(registry.docker_config())
        .args([
            "login",
            registry.host(),
            "-u",
            registry.user(),
            "--password-stdin",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run docker login");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(registry.password().as_bytes())
        .unwrap();
    let out = child.wait_with_output().expect("wait for docker login");
    assert!(
        out.status.success(),
        "`docker login {}` failed: {}{}",
        registry.host(),
        String::from_utf8_lossy(&out.stderr),
        registry.log_tail()
    );
}

/// The status code of `GET https://<host>/v2/`, trusting only `ca`.
fn v2_status(host: &str, ca: &CertificateDer<'static>) -> Option<u16> {
    let mut roots = RootCertStore::empty();
    roots.add(ca.clone()).ok()?;
    let config =
        ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .ok()?
            .with_root_certificates(roots)
            .with_no_client_auth();
    let name = ServerName::try_from("127.0.0.1").ok()?;
    let tcp = TcpStream::connect_timeout(&host.parse().ok()?, Duration::from_secs(1)).ok()?;
    tcp.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let conn = ClientConnection::new(Arc::new(config), name).ok()?;
    let mut tls = StreamOwned::new(conn, tcp);
    tls.write_all(
        format!("GET /v2/ HTTP/1.1\r\nHost: {host}\r\nConnection: close\r\n\r\n").as_bytes(),
    )
    .ok()?;
    let mut head = [0u8; 12];
    tls.read_exact(&mut head).ok()?;
    // `HTTP/1.1 401`
    std::str::from_utf8(&head[9..12]).ok()?.parse().ok()
}

/// Writes `dir/docker-credential-<name>`, a Docker credential helper that
/// answers `get` with the registry's login for its host (with or without
/// `https://`), "credentials not found" for any other server, and `list`
/// with the registry's host and user; `store` and `erase` accept and
/// forget. Returns `dir`, to put first on `PATH`.
pub fn credential_helper(dir: &Path, name: &str, registry: &Registry) -> PathBuf {
    let host = registry.host();
    let user = registry.user();
    let secret = registry.password();
    let script = format!(
        r#"#!/bin/sh
# A Docker credential helper for the test registry at {host}.
case "$1" in
get)
    IFS= read -r server || true
    case "$server" in
    {host}|https://{host}|https://{host}/)
        printf '{{"ServerURL":"%s","Username":"{user}","Secret":"{secret}"}}\n' "$server"
        exit 0 ;;
    esac
    echo "credentials not found in native keychain"
    exit 1 ;;
list)
    printf '{{"{host}":"{user}"}}\n' ;;
store|erase)
    cat >/dev/null ;;
*)
    echo "unknown credential helper action: $1" >&2
    exit 1 ;;
esac
"#
    );
    let path = dir.join(format!("docker-credential-{name}"));
    std::fs::write(&path, script).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
    dir.to_path_buf()
}
