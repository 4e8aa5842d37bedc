//! The integration tests: one binary, one module per area.

/// Shared harness: the test base image, unique names, cleanup, running habitus.
mod common;

/// Command-line parsing, Go-style flags, exit codes.
mod cli;
/// build.yml loading and every validation error.
mod manifest;
/// The DAG: order, levels, cycles (property tests).
mod plan;
/// Dockerfile parsing and FROM / COPY --from rewriting.
mod dockerfile;
/// Build context tar and .dockerignore.
mod context;
/// The bollard engine against the real daemon.
mod engine;
/// End-to-end builds against the real daemon.
mod build;
/// Every example validates and builds.
mod examples;
