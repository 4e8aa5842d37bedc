//! habitus: a build-flow runner for Docker with a short-lived TLS secrets
//! server. A `build.yml` chains Dockerfiles into a DAG of steps; habitus
//! builds them on a Docker daemon, eagerly and in parallel where the DAG
//! allows, and leaves nothing of its own behind.
//!
//! The binary in `main.rs` only calls [`run`], so tests can run habitus
//! in-process too. [`run`] parses the command line ([`cli`]), resolves it
//! into one [`config::Config`] and hands it to the subcommand's function
//! in `commands`.
#![forbid(unsafe_code)]

pub mod artifacts;
pub mod audit;
mod cleanup;
pub mod cli;
mod commands;
pub mod config;
pub mod context;
pub mod dockerfile;
pub mod engine;
mod error;
pub mod exposure;
pub mod layer;
pub mod manifest;
pub mod model;
mod netpool;
pub mod owner;
pub mod plan;
pub mod progress;
pub mod render;
pub mod runner;
pub mod secrets;
mod squash;
mod sweep;
mod workpath;

use std::ffi::OsString;

pub use commands::build_in;
pub use error::Error;

/// Runs habitus with the given command line (program name first) and
/// returns the process exit code. Errors are printed on stderr.
pub fn run<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let cli = match cli::parse(args) {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with 0; usage errors exit 2,
            // as Go's flag package does.
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let cwd = match std::env::current_dir() {
        Ok(cwd) => cwd,
        Err(e) => {
            progress::print_stderr(&format!("error: cannot read the current directory: {e}"));
            return 1;
        }
    };
    let config =
        match config::Config::from_flags(&cli.flags, &cwd, &|name| std::env::var(name).ok()) {
            Ok(config) => config,
            Err(e) => {
                progress::print_stderr(&format!("error: {e}"));
                return 2;
            }
        };
    for warning in &config.warnings {
        progress::print_stderr(&format!("warning: {warning}"));
    }
    let command = cli.command.unwrap_or(cli::Command::Build);
    match commands::dispatch(command, &config) {
        Ok(()) => 0,
        Err(e) => {
            match &e {
                Error::Manifest(diagnostics) => progress::print_stderr(&diagnostics.to_string()),
                other => progress::print_stderr(&format!("error: {}", other.report())),
            }
            e.code()
        }
    }
}
