//! A TLS endpoint for the local daemon, for tests of `--use-tls`: it listens
//! on `127.0.0.1:<any port>`, requires a client certificate signed by its own
//! CA, and forwards each connection to the daemon the tests run against:
//! the one `DOCKER_HOST` names (`unix://…` or plain `tcp://…`), else
//! `/var/run/docker.sock`.
//!
//! [`start`] writes two certificate directories in Docker's layout
//! (`ca.pem`, `cert.pem`, `key.pem`): `cert_dir` holds a client certificate
//! the proxy accepts, `bad_cert_dir` one from another CA (with the right
//! `ca.pem`, so only the client certificate is wrong). The proxy runs on its
//! own thread, so blocking tests (running the binary) can use it too, and
//! stops when the [`TlsProxy`] is dropped.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpStream, UnixStream};
use tokio::sync::oneshot;
use tokio_rustls::TlsAcceptor;

/// The daemon socket the proxy forwards to when `DOCKER_HOST` is unset.
pub const DOCKER_SOCKET: &str = "/var/run/docker.sock";

/// Where the proxy forwards to.
#[derive(Clone, Debug)]
enum Daemon {
    Unix(PathBuf),
    Tcp(String),
}

impl Daemon {
    /// The daemon `DOCKER_HOST` names, as the `docker` CLI the tests also
    /// run reads it.
    fn from_env() -> Daemon {
        let host = std::env::var("DOCKER_HOST").unwrap_or_default();
        if host.is_empty() {
            return Daemon::Unix(DOCKER_SOCKET.into());
        }
        if let Some(path) = host.strip_prefix("unix://") {
            return Daemon::Unix(path.into());
        }
        let tls = std::env::var("DOCKER_TLS_VERIFY").is_ok_and(|v| !v.is_empty());
        match host.strip_prefix("tcp://") {
            Some(addr) if !tls => Daemon::Tcp(addr.to_string()),
            _ => panic!(
                "the test TLS proxy forwards to `unix://` or plain `tcp://` daemons, \
                 not DOCKER_HOST=`{host}`{}",
                if tls { " with DOCKER_TLS_VERIFY" } else { "" }
            ),
        }
    }
}

trait Stream: AsyncRead + AsyncWrite + Unpin + Send {}
impl<T: AsyncRead + AsyncWrite + Unpin + Send> Stream for T {}

async fn dial(daemon: &Daemon) -> std::io::Result<Box<dyn Stream>> {
    Ok(match daemon {
        Daemon::Unix(path) => Box::new(UnixStream::connect(path).await?),
        Daemon::Tcp(addr) => Box::new(TcpStream::connect(addr).await?),
    })
}

/// A running proxy; stops when dropped.
pub struct TlsProxy {
    /// Where it listens.
    pub addr: SocketAddr,
    /// `ca.pem`, `cert.pem`, `key.pem` the proxy accepts.
    pub cert_dir: PathBuf,
    /// The right `ca.pem` with a client certificate from another CA.
    pub bad_cert_dir: PathBuf,
    _dirs: [tempfile::TempDir; 2],
    stop: Option<oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TlsProxy {
    /// `tcp://<its address>:<port>`.
    pub fn host(&self) -> String {
        format!("tcp://{}", self.addr)
    }
}

impl Drop for TlsProxy {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

/// A CA certificate and its issuer (also used by [`super::registry`]).
pub fn ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
    params.distinguished_name.push(DnType::CommonName, name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    CertifiedIssuer::self_signed(params, KeyPair::generate().unwrap()).unwrap()
}

/// A leaf certificate signed by `issuer`, naming `names` (IP addresses
/// become IP names); returns the certificate and its key.
pub fn leaf(
    issuer: &CertifiedIssuer<'static, KeyPair>,
    names: &[&str],
    usage: ExtendedKeyUsagePurpose,
) -> (rcgen::Certificate, KeyPair) {
    let key = KeyPair::generate().unwrap();
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>()).unwrap();
    params
        .distinguished_name
        .push(DnType::CommonName, "habitus test");
    params.extended_key_usages = vec![usage];
    let cert = params.signed_by(&key, issuer).unwrap();
    (cert, key)
}

fn write_dir(dir: &Path, ca_pem: &str, cert_pem: &str, key_pem: &str) {
    std::fs::write(dir.join("ca.pem"), ca_pem).unwrap();
    std::fs::write(dir.join("cert.pem"), cert_pem).unwrap();
    std::fs::write(dir.join("key.pem"), key_pem).unwrap();
}

/// Starts a proxy in front of the daemon `DOCKER_HOST` names (default
/// [`DOCKER_SOCKET`]).
pub fn start() -> TlsProxy {
    start_on(std::net::Ipv4Addr::LOCALHOST)
}

/// [`start`], listening on `ip` (its certificate names `ip` too), for a
/// habitus in another network namespace.
pub fn start_on(ip: std::net::Ipv4Addr) -> TlsProxy {
    let daemon = Daemon::from_env();
    let ip_name = ip.to_string();
    let ca = ca("habitus test proxy CA");
    let other_ca = ca_other();
    let (server_cert, server_key) = leaf(
        &ca,
        &["127.0.0.1", "localhost", &ip_name],
        ExtendedKeyUsagePurpose::ServerAuth,
    );
    let (client_cert, client_key) = leaf(&ca, &[], ExtendedKeyUsagePurpose::ClientAuth);
    let (bad_cert, bad_key) = leaf(&other_ca, &[], ExtendedKeyUsagePurpose::ClientAuth);

    let good = tempfile::tempdir().unwrap();
    let bad = tempfile::tempdir().unwrap();
    write_dir(
        good.path(),
        &ca.pem(),
        &client_cert.pem(),
        &client_key.serialize_pem(),
    );
    write_dir(
        bad.path(),
        &ca.pem(),
        &bad_cert.pem(),
        &bad_key.serialize_pem(),
    );

    let mut roots = RootCertStore::empty();
    roots.add(ca.der().clone()).unwrap();
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider())
        .build()
        .unwrap();
    let config = ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .unwrap()
        .with_client_cert_verifier(verifier)
        .with_single_cert(
            vec![CertificateDer::from(server_cert.der().to_vec())],
            PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(server_key.serialize_der())),
        )
        .unwrap();
    let acceptor = TlsAcceptor::from(Arc::new(config));

    let listener = std::net::TcpListener::bind((ip, 0)).unwrap();
    listener.set_nonblocking(true).unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    let thread = std::thread::spawn(move || {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(serve(listener, acceptor, daemon, stopped));
    });
    TlsProxy {
        addr,
        cert_dir: good.path().to_path_buf(),
        bad_cert_dir: bad.path().to_path_buf(),
        _dirs: [good, bad],
        stop: Some(stop),
        thread: Some(thread),
    }
}

fn ca_other() -> CertifiedIssuer<'static, KeyPair> {
    ca("another CA")
}

async fn serve(
    listener: std::net::TcpListener,
    acceptor: TlsAcceptor,
    daemon: Daemon,
    mut stopped: oneshot::Receiver<()>,
) {
    let listener = TcpListener::from_std(listener).unwrap();
    loop {
        tokio::select! {
            _ = &mut stopped => return,
            accepted = listener.accept() => {
                let Ok((tcp, _)) = accepted else { continue };
                let acceptor = acceptor.clone();
                let daemon = daemon.clone();
                tokio::spawn(async move {
                    // A client without an acceptable certificate fails here.
                    let Ok(mut tls) = acceptor.accept(tcp).await else { return };
                    let Ok(mut daemon) = dial(&daemon).await else { return };
                    let _ = tokio::io::copy_bidirectional(&mut tls, &mut daemon).await;
                });
            }
        }
    }
}
