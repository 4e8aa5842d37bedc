//! Reaching the daemon: the connection for bollard's requests and the
//! dialer for BuildKit's (unix socket, TCP, TLS with a client
//! certificate), the first ping, API version negotiation, and what the
//! daemon can do.

use std::error::Error as StdError;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use super::{api, error_chain, DockerEngine, DockerOptions};
use crate::engine::buildkit::{self, Dialer};
use crate::engine::transport::Pool;
use crate::engine::EngineError;

/// How long `connect` waits for the daemon to answer the first ping.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(15);

/// bollard applies one timeout to every request, measured until the response
/// headers arrive. The classic builder sends its first byte only after it has
/// received the whole context, and a container wait may last as long as the
/// command runs, so the timeout must be longer than any build: a day.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(24 * 60 * 60);

impl DockerEngine {
    /// Connects to the daemon, checks that it answers and settles on the
    /// highest API version both sides speak, as the docker CLI does: the
    /// ping and `GET /version` go out unversioned, every later request under
    /// `/v{negotiated}/`.
    pub async fn connect(opts: &DockerOptions) -> Result<DockerEngine, EngineError> {
        let address = opts.address().to_string();
        let unreachable = |message: String| EngineError::Unreachable {
            address: address.clone(),
            message,
        };
        let (pool, dialer) = open(opts, &address)?;
        let timeout = REQUEST_TIMEOUT.as_secs();
        let probe = pool
            .docker(None, timeout)
            .map_err(|err| unreachable(error_chain(&err)))?;
        match tokio::time::timeout(CONNECT_TIMEOUT, probe.ping()).await {
            Ok(Ok(_)) => {}
            Ok(Err(err)) => {
                let tls = match tls_failure(&err) {
                    Some(tls) => Some(tls),
                    None => dialer.probe_tls().await,
                };
                if let Some(tls) = tls {
                    return Err(EngineError::Tls(describe_tls_failure(
                        &address,
                        opts.cert_dir().unwrap_or(Path::new("")),
                        &tls,
                    )));
                }
                return Err(unreachable(error_chain(&err)));
            }
            Err(_) => {
                return Err(unreachable(format!(
                    "no answer within {} seconds",
                    CONNECT_TIMEOUT.as_secs()
                )))
            }
        }
        let negotiated = probe
            .negotiate_version()
            .await
            .map_err(|err| unreachable(format!("API version negotiation: {}", error_chain(&err))))?
            .client_version();
        let (major, minor) = MIN_API_VERSION;
        if (
            negotiated.major_version as u64,
            negotiated.minor_version as u64,
        ) < MIN_API_VERSION
        {
            return Err(EngineError::Api(format!(
                "the daemon at `{address}` speaks API `{negotiated}`; habitus needs API `{major}.{minor}` (Docker 18.06) or newer"
            )));
        }
        let docker = pool
            .docker(Some(&negotiated), timeout)
            .map_err(|err| unreachable(error_chain(&err)))?;
        Ok(DockerEngine {
            docker,
            address,
            credentials: Arc::new(tokio::sync::OnceCell::new()),
            helper_timeout: super::credentials::DEFAULT_HELPER_TIMEOUT,
            dialer,
            buildkit: Arc::new(tokio::sync::OnceCell::new()),
            intermediates: Arc::default(),
        })
    }

    /// The daemon address this engine talks to.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Asks the daemon for its versions, storage and BuildKit support.
    pub async fn daemon_info(&self) -> Result<DaemonInfo, EngineError> {
        let version = self.docker.version().await.map_err(api)?;
        let info = self.docker.info().await.map_err(api)?;
        let api_version = version.api_version.unwrap_or_default();
        let os = version.os.unwrap_or_default();
        let driver_type = info
            .driver_status
            .unwrap_or_default()
            .into_iter()
            .find_map(|pair| match pair.as_slice() {
                [label, value] if label == "driver-type" => Some(value.clone()),
                _ => None,
            })
            .unwrap_or_default();
        Ok(DaemonInfo {
            buildkit: buildkit::supports(&api_version) && (os.is_empty() || os == "linux"),
            version: version.version.unwrap_or_default(),
            api_version,
            min_api_version: version.min_api_version.unwrap_or_default(),
            negotiated: self.docker.client_version().to_string(),
            storage_driver: info.driver.unwrap_or_default(),
            driver_type,
        })
    }
}

/// The oldest Engine API habitus speaks: every build sends `version`
/// (the builder to use), which API 1.38 (Docker 18.06) introduced.
pub const MIN_API_VERSION: (u64, u64) = (1, 38);

/// What `habitus version --verbose` and the tests show of a daemon.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct DaemonInfo {
    /// `26.1.5+dfsg1`.
    pub version: String,
    /// The newest API the daemon speaks: `1.45`.
    pub api_version: String,
    /// The oldest API the daemon accepts: `1.24`.
    pub min_api_version: String,
    /// The API version settled on at connect: the lower of the daemon's
    /// and the client library's.
    pub negotiated: String,
    /// `overlayfs`, `fuse-overlayfs`, …
    pub storage_driver: String,
    /// `io.containerd.snapshotter.v1` when images live in containerd's
    /// store (the storage driver is then a snapshotter), else empty.
    pub driver_type: String,
    /// Whether the daemon can build with BuildKit.
    pub buildkit: bool,
}

/// Parses `1.45` into `(1, 45)`.
pub fn parse_api_version(version: &str) -> Option<(u64, u64)> {
    let (major, minor) = version.trim().split_once('.')?;
    Some((major.parse().ok()?, minor.parse().ok()?))
}

/// Creates the connection pool for bollard's requests and the dialer for
/// BuildKit's own connections, both opening connections the same way (no
/// I/O yet, except reading the TLS files).
fn open(opts: &DockerOptions, address: &str) -> Result<(Pool, Dialer), EngineError> {
    let dialer = if let Some(path) = address.strip_prefix("unix://") {
        if opts.use_tls {
            return Err(EngineError::Tls(format!(
                "TLS needs a `tcp://` host, not `{address}`"
            )));
        }
        Dialer::unix(address, Path::new(path))
    } else if let Some(rest) = address
        .strip_prefix("tcp://")
        .or_else(|| address.strip_prefix("http://"))
        .or_else(|| address.strip_prefix("https://"))
    {
        if opts.use_tls || address.starts_with("https://") {
            Dialer::tls(address, rest, &tls_files(opts.cert_dir()?)?)?
        } else {
            Dialer::tcp(address, rest)
        }
    } else {
        return Err(EngineError::Unreachable {
            address: address.to_string(),
            message: "unsupported address: use `unix:///path` or `tcp://host:port`".to_string(),
        });
    };
    // The `Host` header: what the docker CLI sends.
    let authority = match address.split_once("://") {
        Some(("unix", _)) | None => "api.moby.localhost",
        Some((_, host_port)) => host_port,
    };
    Ok((Pool::new(dialer.clone(), authority), dialer))
}

/// Checks that `ca.pem`, `cert.pem` and `key.pem` exist in `dir` and parse,
/// so a wrong directory is reported before any handshake.
fn tls_files(dir: &Path) -> Result<[PathBuf; 3], EngineError> {
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};

    let ca = dir.join("ca.pem");
    let cert = dir.join("cert.pem");
    let key = dir.join("key.pem");
    for path in [&ca, &cert] {
        let certs: Vec<_> = CertificateDer::pem_file_iter(path)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|err| {
                EngineError::Tls(format!(
                    "cannot read a certificate from `{}`: {err}",
                    path.display()
                ))
            })?;
        if certs.is_empty() {
            return Err(EngineError::Tls(format!(
                "no certificate in `{}`",
                path.display()
            )));
        }
    }
    PrivateKeyDer::from_pem_file(&key).map_err(|err| {
        EngineError::Tls(format!(
            "cannot read a private key from `{}`: {err}",
            key.display()
        ))
    })?;
    Ok([ca, cert, key])
}

/// The TLS error behind a failed request, if that is what failed it.
fn tls_failure(err: &(dyn StdError + 'static)) -> Option<rustls::Error> {
    let mut current = Some(err);
    while let Some(e) = current {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls.clone());
        }
        // `io::Error::source` skips the error it wraps; look at it directly.
        if let Some(tls) = e
            .downcast_ref::<std::io::Error>()
            .and_then(|io| io.get_ref())
            .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        {
            return Some(tls.clone());
        }
        current = e.source();
    }
    None
}

/// Says which side of a failed handshake to look at.
fn describe_tls_failure(address: &str, cert_dir: &Path, err: &rustls::Error) -> String {
    use rustls::AlertDescription;
    match err {
        rustls::Error::AlertReceived(
            AlertDescription::UnknownCA
            | AlertDescription::BadCertificate
            | AlertDescription::CertificateRequired
            | AlertDescription::CertificateUnknown
            | AlertDescription::AccessDenied,
        ) => format!(
            "the daemon at `{address}` did not accept the client certificate `{}`: {err}",
            cert_dir.join("cert.pem").display()
        ),
        rustls::Error::InvalidCertificate(_) => format!(
            "the certificate of the daemon at `{address}` is not trusted by `{}`: {err}",
            cert_dir.join("ca.pem").display()
        ),
        _ => format!("the TLS handshake with `{address}` failed: {err}"),
    }
}

/// Checks that the daemon still answers.
pub(super) async fn ping(engine: &DockerEngine) -> Result<(), EngineError> {
    engine
        .docker
        .ping()
        .await
        .map(|_| ())
        .map_err(|err| EngineError::Unreachable {
            address: engine.address.clone(),
            message: error_chain(&err),
        })
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::{describe_tls_failure, open};
    use crate::engine::docker::DockerOptions;

    #[test]
    fn unsupported_scheme_is_unreachable_naming_it() {
        let opts = DockerOptions {
            host: Some("ssh://me@box".into()),
            ..Default::default()
        };
        let err = open(&opts, opts.address()).unwrap_err();
        assert_eq!(
            err.to_string().lines().next().unwrap(),
            "cannot connect to the Docker daemon at `ssh://me@box`: unsupported address: use `unix:///path` or `tcp://host:port`"
        );
    }

    #[test]
    fn missing_tls_files_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let opts = DockerOptions {
            host: Some("tcp://127.0.0.1:2376".into()),
            use_tls: true,
            cert_path: Some(dir.path().to_path_buf()),
        };
        let err = open(&opts, opts.address()).unwrap_err();
        let text = err.to_string();
        assert!(
            text.starts_with(&format!(
                "docker TLS settings: cannot read a certificate from `{}`",
                dir.path().join("ca.pem").display()
            )),
            "{text}"
        );
    }

    #[test]
    fn tls_failures_say_which_certificate_to_check() {
        let dir = Path::new("/certs");
        assert_eq!(
            describe_tls_failure(
                "tcp://h:2376",
                dir,
                &rustls::Error::AlertReceived(rustls::AlertDescription::UnknownCA)
            ),
            "the daemon at `tcp://h:2376` did not accept the client certificate `/certs/cert.pem`: received fatal alert: UnknownCA"
        );
        assert_eq!(
            describe_tls_failure(
                "tcp://h:2376",
                dir,
                &rustls::Error::InvalidCertificate(rustls::CertificateError::UnknownIssuer)
            ),
            "the certificate of the daemon at `tcp://h:2376` is not trusted by `/certs/ca.pem`: invalid peer certificate: UnknownIssuer"
        );
    }
}
