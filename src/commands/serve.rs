//! `habitus serve`: see [`crate::secrets::serve`].

use std::sync::Arc;

use super::{load, runtime};
use crate::config::Config;
use crate::error::Error;
use crate::progress::{print_stdout, Reporter};
use crate::secrets::serve::{self as server, ServeError};

/// Serves the secrets named on the command line, or else those build.yml
/// declares, until a signal.
pub fn serve(config: &Config, files: &[(String, String)], envs: &[String]) -> Result<(), Error> {
    let settings = &config.secrets;
    let env = |name: &str| std::env::var_os(name);
    let store = if files.is_empty() && envs.is_empty() {
        let (loaded, _) = load(config)?;
        server::store_from_manifest(&loaded.manifest, &settings.providers, &env)
    } else {
        server::store_from_flags(files, envs, &settings.providers, &config.workdir, &env)
    }
    .map_err(|e| Error::Serve(ServeError::Provider(e)))?;
    let runtime = runtime()?;
    let reporter = Arc::new(Reporter::stderr(config.output.level, false));
    runtime.block_on(async {
        let stop = server::stop_signals()?;
        server::run(settings, store, reporter, print_stdout, stop).await
    })?;
    Ok(())
}
