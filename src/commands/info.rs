//! `habitus version [--verbose]`, `habitus completions SHELL` and
//! `habitus man`.

use super::{connect, runtime};
use crate::cli;
use crate::config::Config;
use crate::error::Error;
use crate::progress::print_stdout;

/// `habitus version`; with `--verbose`, what the daemon is and how
/// habitus talks to it.
pub fn version(config: &Config, verbose: bool) -> Result<(), Error> {
    print_stdout(&format!("habitus {}", env!("CARGO_PKG_VERSION")));
    if !verbose {
        return Ok(());
    }
    let runtime = runtime()?;
    let info = runtime.block_on(async { connect(config).await?.daemon_info().await })?;
    let store = if info.driver_type.is_empty() {
        info.storage_driver.clone()
    } else {
        format!("{} ({})", info.storage_driver, info.driver_type)
    };
    print_stdout(&format!(
        "daemon: `{}`\ndocker: {}\napi: {} (daemon {} to {})\nstorage: {store}\nbuildkit: {}",
        config.docker.host,
        info.version,
        info.negotiated,
        info.min_api_version,
        info.api_version,
        if info.buildkit { "yes" } else { "no" },
    ));
    Ok(())
}

/// `habitus completions SHELL`.
pub fn completions(shell: clap_complete::Shell) -> Result<(), Error> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut cli::command(), "habitus", &mut out);
    print_stdout(&String::from_utf8_lossy(&out));
    Ok(())
}

/// `habitus man`.
pub fn man() -> Result<(), Error> {
    let mut out = Vec::new();
    clap_mangen::Man::new(cli::command())
        .render(&mut out)
        .map(|()| print_stdout(&String::from_utf8_lossy(&out)))
        .map_err(|source| Error::Io {
            what: "cannot render the man page".into(),
            source,
        })
}
