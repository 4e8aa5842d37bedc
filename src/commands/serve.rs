//! `habitus serve`: see [`crate::secrets::serve`].

use std::sync::Arc;

use super::{load, runtime};
use crate::config::Config;
use crate::error::Error;
use crate::progress::{print_stdout, Reporter};
use std::net::{IpAddr, Ipv4Addr};

use crate::progress::Severity;
use crate::secrets::serve::{self as server, private_dir, write_private, ServeError, SERVE_STEP};
use crate::secrets::server::{start, AccessRecord, ServerOptions};
use crate::secrets::{basic_auth_warning, SecretStore, Settings};

/// Serves the secrets named on the command line, or else those build.yml
/// declares, until a signal.
pub fn serve(config: &Config, files: &[(String, String)], envs: &[String]) -> Result<(), Error> {
    let settings = &config.secrets;
    let env = |name: &str| std::env::var_os(name);
    let store = if files.is_empty() && envs.is_empty() {
        let loaded = load(config)?;
        server::store_from_manifest(&loaded.manifest, &settings.providers, &env)
    } else {
        server::store_from_flags(files, envs, &settings.providers, &config.workdir, &env)
    }
    .map_err(|e| Error::Serve(ServeError::Provider(e)))?;
    let runtime = runtime()?;
    let reporter = Arc::new(Reporter::stderr(config.output.level, false));
    runtime.block_on(async {
        let stop = server::stop_signals()?;
        run(settings, store, reporter, print_stdout, stop).await
    })?;
    Ok(())
}

/// Runs the server for `store` on `--binding` (default 127.0.0.1) and
/// `--port` until `stop` resolves. `ready` receives the connection
/// settings, one `NAME=value` per line (shell syntax).
async fn run(
    settings: &Settings,
    store: SecretStore,
    reporter: Arc<Reporter>,
    ready: impl FnOnce(&str),
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), ServeError> {
    if store.is_empty() {
        return Err(ServeError::Empty);
    }
    if let Some(warning) = basic_auth_warning(settings) {
        reporter.message(Severity::Warning, &warning);
    }
    let bind = settings.binding.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let mut options = ServerOptions::new(bind, settings.port);
    options.basic_auth = settings.basic_auth.clone();
    let log_reporter = Arc::clone(&reporter);
    options.log = Arc::new(move |record: &AccessRecord| {
        log_reporter.message(Severity::Info, &record.to_string());
    });
    let handle = start(options, store).await?;
    let dir = private_dir()?;
    let ca_path = dir.path().join("ca.pem");
    write_private(&ca_path, handle.ca_pem().as_bytes())?;
    let token = handle.issue_token(SERVE_STEP);
    let addr = handle.addr();
    ready(&format!(
        "HABITUS_URL={}\nHABITUS_HOST={}\nHABITUS_PORT={}\nHABITUS_TOKEN={}\nHABITUS_CA_FILE={}\n",
        handle.url(),
        addr.ip(),
        addr.port(),
        // Printed for the user: it is what `serve` is for.
        token.expose(),
        ca_path.display()
    ));
    reporter.message(
        Severity::Info,
        &format!(
            "secrets server listening on {} (Ctrl-C, SIGTERM or SIGHUP stops it)",
            handle.url()
        ),
    );
    stop.await;
    handle.shutdown().await;
    drop(token);
    let removed = dir.close();
    reporter.message(
        Severity::Info,
        &format!("secrets server on {} stopped", handle.url()),
    );
    removed?;
    Ok(())
}
