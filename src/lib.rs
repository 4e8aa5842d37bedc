//! habitus: a build-flow runner for Docker with a short-lived TLS secrets
//! server. A `build.yml` chains Dockerfiles into a DAG of steps; habitus
//! builds them on a Docker daemon, eagerly and in parallel where the DAG
//! allows, and leaves nothing of its own behind.
//!
//! The binary in `main.rs` only parses arguments and calls [`run`].
#![forbid(unsafe_code)]

pub mod cli;
pub mod config;
pub mod context;
pub mod dockerfile;
pub mod engine;
pub mod error;
pub mod manifest;
pub mod plan;
pub mod progress;
pub mod runner;

pub use error::Error;

/// Runs habitus with the given command line (including the program name)
/// and returns the process exit code.
pub fn run<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<std::ffi::OsString> + Clone,
{
    let _ = args;
    0
}
