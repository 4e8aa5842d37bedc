//! `habitus serve`: the secrets server on its own, for CI jobs or other
//! builders. It serves the secrets of build.yml (every step's, under one
//! token) or those named with `--secret-file`/`--secret-env`, writes the
//! CA certificate to a private temporary directory, prints the connection
//! settings, and runs until SIGHUP, SIGINT or SIGTERM; then the port
//! closes and the directory is removed. The directory is created mode
//! 0700 and the certificate 0600.

use std::ffi::OsString;

use std::path::Path;
use std::sync::Arc;

use crate::manifest::{Manifest, SecretSpec};
use crate::model::SecretKind;

use super::provider::{self, ProviderError, SecretKey, SecretStore};
use super::server::ServerError;

/// The step name `habitus serve`'s single token is issued to.
pub const SERVE_STEP: &str = "serve";

/// The store for `--secret-file NAME=PATH` and `--secret-env NAME[=VAR]`.
pub fn store_from_flags(
    files: &[(String, String)],
    envs: &[String],
    providers: &[SecretKind],
    workdir: &Path,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Result<SecretStore, ProviderError> {
    let mut store = SecretStore::default();
    let mut add = |name: &str, spec: SecretSpec| -> Result<(), ProviderError> {
        let secret = provider::resolve_one(name, SERVE_STEP, &spec, providers, workdir, env)?;
        store.insert(
            SERVE_STEP,
            SecretKey {
                kind: spec.kind,
                name: name.to_string(),
            },
            Arc::new(secret),
        );
        Ok(())
    };
    for (name, path) in files {
        add(
            name,
            SecretSpec {
                kind: SecretKind::File,
                value: path.clone(),
            },
        )?;
    }
    for entry in envs {
        let (name, variable) = entry.split_once('=').unwrap_or((entry, entry));
        add(
            name,
            SecretSpec {
                kind: SecretKind::Env,
                value: variable.to_string(),
            },
        )?;
    }
    Ok(store)
}

/// The store for every secret of `manifest`, under [`SERVE_STEP`].
pub fn store_from_manifest(
    manifest: &Manifest,
    providers: &[SecretKind],
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Result<SecretStore, ProviderError> {
    Ok(provider::resolve(manifest, providers, env)?.merged(SERVE_STEP))
}

/// Why `habitus serve` stopped early.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// There is nothing to serve.
    #[error("nothing to serve: build.yml declares no secrets and no --secret-file or --secret-env was given")]
    Empty,
    /// The server could not start.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The CA certificate could not be written.
    #[error("cannot write the CA certificate: {0}")]
    Io(#[from] std::io::Error),
    /// The signal handlers could not be installed.
    #[error("cannot watch for signals: {0}")]
    Signals(std::io::Error),
}

/// Installs handlers for SIGHUP, SIGINT and SIGTERM now (so a signal that
/// comes once the settings are printed cannot kill the process before
/// the directory is removed) and returns a future that resolves at the
/// first of them. Needs a Tokio runtime.
pub fn stop_signals() -> Result<impl std::future::Future<Output = ()>, ServeError> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut hangup = signal(SignalKind::hangup()).map_err(ServeError::Signals)?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(ServeError::Signals)?;
    let mut terminate = signal(SignalKind::terminate()).map_err(ServeError::Signals)?;
    Ok(async move {
        tokio::select! {
            _ = hangup.recv() => {}
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

/// A new temporary directory only its owner can enter (mode 0700 from
/// its creation, whatever the umask).
pub fn private_dir() -> std::io::Result<tempfile::TempDir> {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::Builder::new()
        .prefix("habitus-serve-")
        .permissions(std::fs::Permissions::from_mode(0o700))
        .tempdir()?;
    // The umask can only take bits away; make sure none is left over.
    std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o700))?;
    Ok(dir)
}

/// Writes `data` to a new file readable only by its owner.
pub fn write_private(path: &Path, data: &[u8]) -> std::io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)?;
    file.write_all(data)
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::private_dir;

    #[test]
    fn the_ca_directory_is_private() {
        let dir = private_dir().unwrap();
        let mode = std::fs::metadata(dir.path()).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o700);
    }
}
