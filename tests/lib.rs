//! The integration tests: one binary, one module per area.
#![allow(clippy::disallowed_macros)] // a test or bench program prints its own report

/// Shared harness: the test base image, unique names, cleanup, running habitus.
mod common;

/// The parts' rules and size limits, read from the source.
mod architecture;
/// Artifacts copied to the host and cleanup commands, on the real daemon.
mod artifacts;
/// `habitus audit` on real images.
mod audit;
/// `habitus audit` reads every byte that ships: past tar ends, gzip headers, every platform, in bounded memory.
mod audit_bytes;
/// `habitus audit` on keys reshaped by the usual tools, nested archives, a zip bomb.
mod audit_nested;
/// End-to-end builds against the real daemon.
mod build;
/// `--builder buildkit`: chains, secret mounts, mixed builds, old daemons.
mod buildkit;
/// Command-line parsing, Go-style flags, exit codes.
mod cli;
/// Build context tar and .dockerignore.
mod context;
/// Dockerfile parsing and FROM / COPY --from rewriting.
mod dockerfile;
/// The bollard engine against the real daemon.
mod engine;
/// Every example validates and builds.
mod examples;
/// Load on the secrets server, the daemon connection cut, a full disk.
mod faults;
/// build.yml loading and every validation error.
mod manifest;
/// The DAG: order, levels, cycles (property tests).
mod plan;
/// The private test registry: push, pull with a login or a credential helper, refused without.
mod registry;
/// A daemon reached over TCP+TLS from another network namespace.
mod remote;
/// The secrets server in-process and in real builds; nothing leaks.
mod secrets;
/// `habitus squash` on the real daemon: filesystem, shared layers, config, secrets.
mod squash;
/// Crash safety: killed builds' leftovers swept, `habitus prune`, the network pool.
mod sweep;
/// The live view in a terminal (tmux).
mod terminal;
/// `--untrusted` on the real daemon: each host access refused before the build, and let through by its flag.
mod untrusted;
