//! Raw connections to the daemon for the two BuildKit requests that need
//! more than bollard offers: the build itself (with a session attached) and
//! the session, an HTTP connection upgraded to HTTP/2 on which the daemon
//! calls habitus back.

use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

use crate::engine::EngineError;

/// A byte stream to the daemon.
pub trait Stream: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Stream for T {}

/// Opens connections to one daemon address.
#[derive(Clone)]
pub struct Dialer {
    address: String,
    target: Target,
}

#[derive(Clone)]
enum Target {
    Unix(PathBuf),
    Tcp(String),
    Tls {
        host_port: String,
        server_name: rustls::pki_types::ServerName<'static>,
        config: Arc<rustls::ClientConfig>,
    },
}

impl std::fmt::Debug for Dialer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dialer")
            .field("address", &self.address)
            .finish_non_exhaustive()
    }
}

impl Dialer {
    /// A unix socket.
    pub fn unix(address: &str, path: &Path) -> Dialer {
        Dialer {
            address: address.to_string(),
            target: Target::Unix(path.to_path_buf()),
        }
    }

    /// Plain TCP to `host:port`.
    pub fn tcp(address: &str, host_port: &str) -> Dialer {
        Dialer {
            address: address.to_string(),
            target: Target::Tcp(host_port.to_string()),
        }
    }

    /// TCP with TLS: the daemon is verified against `ca`, habitus presents
    /// `cert` and `key` (the files the bollard client uses too).
    pub fn tls(
        address: &str,
        host_port: &str,
        [ca, cert, key]: &[PathBuf; 3],
    ) -> Result<Dialer, EngineError> {
        use rustls::pki_types::pem::PemObject;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName};

        let tls = |what: &str, path: &Path, err: &dyn std::fmt::Display| {
            EngineError::Tls(format!("{what} `{}`: {err}", path.display()))
        };
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(ca).map_err(|e| tls("cannot read", ca, &e))? {
            let cert = cert.map_err(|e| tls("cannot read", ca, &e))?;
            roots
                .add(cert)
                .map_err(|e| tls("unusable CA certificate in", ca, &e))?;
        }
        let chain = CertificateDer::pem_file_iter(cert)
            .and_then(|it| it.collect::<Result<Vec<_>, _>>())
            .map_err(|e| tls("cannot read", cert, &e))?;
        let private = PrivateKeyDer::from_pem_file(key).map_err(|e| tls("cannot read", key, &e))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .map_err(|e| EngineError::Tls(e.to_string()))?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain, private)
            .map_err(|e| tls("client certificate and key do not match in", cert, &e))?;
        let host = match host_port.rsplit_once(':') {
            Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
            None => host_port,
        };
        let server_name = ServerName::try_from(host.to_string())
            .map_err(|e| EngineError::Tls(format!("`{host}` is not a server name: {e}")))?;
        Ok(Dialer {
            address: address.to_string(),
            target: Target::Tls {
                host_port: host_port.to_string(),
                server_name,
                config: Arc::new(config),
            },
        })
    }

    /// The address as the user gave it.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Opens a new connection.
    pub async fn dial(&self) -> Result<Pin<Box<dyn Stream>>, EngineError> {
        self.open().await.map_err(|err| match err {
            DialError::Connect(err) => EngineError::Unreachable {
                address: self.address.clone(),
                message: err.to_string(),
            },
            DialError::Handshake(err) => EngineError::Tls(format!(
                "the TLS handshake with `{}` failed: {err}",
                self.address
            )),
        })
    }

    /// Opens a new connection, failing with the I/O error itself: the API
    /// client's pool reports it, and looks for the `rustls::Error` of a
    /// failed handshake in it to say which certificate to check.
    pub async fn open(&self) -> Result<Pin<Box<dyn Stream>>, DialError> {
        Ok(match &self.target {
            Target::Unix(path) => Box::pin(
                UnixStream::connect(path)
                    .await
                    .map_err(DialError::Connect)?,
            ),
            Target::Tcp(host_port) => {
                let tcp = TcpStream::connect(host_port)
                    .await
                    .map_err(DialError::Connect)?;
                let _ = tcp.set_nodelay(true);
                Box::pin(tcp)
            }
            Target::Tls {
                host_port,
                server_name,
                config,
            } => {
                let tcp = TcpStream::connect(host_port)
                    .await
                    .map_err(DialError::Connect)?;
                let _ = tcp.set_nodelay(true);
                let connector = tokio_rustls::TlsConnector::from(Arc::clone(config));
                let tls = connector
                    .connect(server_name.clone(), tcp)
                    .await
                    .map_err(DialError::Handshake)?;
                Box::pin(tls)
            }
        })
    }
}

impl Dialer {
    /// After a request over TLS failed without saying why (TLS 1.3 lets
    /// the server reject the client certificate after the client has
    /// finished its handshake, so the first request may see only a closed
    /// connection): opens one connection, sends a ping and reads the
    /// answer, and returns the TLS error that ends it, if one does.
    pub async fn probe_tls(&self) -> Option<rustls::Error> {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};

        if !matches!(self.target, Target::Tls { .. }) {
            return None;
        }
        let probe = async {
            let mut stream = match self.open().await {
                Ok(stream) => stream,
                Err(DialError::Handshake(err)) => return tls_error(&err),
                Err(DialError::Connect(_)) => return None,
            };
            let ping =
                b"GET /_ping HTTP/1.1\r\nHost: api.moby.localhost\r\nConnection: close\r\n\r\n";
            if let Err(err) = stream.write_all(ping).await {
                return tls_error(&err);
            }
            let mut buf = [0u8; 512];
            loop {
                match stream.read(&mut buf).await {
                    Ok(0) => return None,
                    Ok(_) => {}
                    Err(err) => return tls_error(&err),
                }
            }
        };
        tokio::time::timeout(std::time::Duration::from_secs(5), probe)
            .await
            .ok()
            .flatten()
    }
}

/// The rustls error an I/O error of a TLS stream wraps.
fn tls_error(err: &std::io::Error) -> Option<rustls::Error> {
    err.get_ref()?.downcast_ref::<rustls::Error>().cloned()
}

/// Why [`Dialer::open`] failed.
#[derive(Debug, thiserror::Error)]
pub enum DialError {
    /// The socket or TCP connection could not be opened.
    #[error("{0}")]
    Connect(#[source] std::io::Error),
    /// The TLS handshake failed; the error wraps rustls's.
    #[error("the TLS handshake failed: {0}")]
    Handshake(#[source] std::io::Error),
}
