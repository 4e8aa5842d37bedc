//! The top-level error and its mapping to exit codes (Go Habitus's: 2 for
//! bad usage or an unreachable daemon, 1 for a bad build.yml or a failed
//! build; a failed `command:` passes its own code through; 130/143/129 for
//! SIGINT/SIGTERM/SIGHUP). A secrets server that cannot start and objects
//! `prune` could not remove are failures (1), not usage errors.

use crate::engine::EngineError;
use crate::manifest::Diagnostics;
use crate::runner::BuildError;

/// Everything that can stop a habitus invocation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad command-line usage.
    #[error("{0}")]
    Usage(String),
    /// build.yml is invalid; every problem found is listed.
    #[error("{0}")]
    Manifest(Diagnostics),
    /// The Docker daemon could not be reached or used before the build.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The build failed.
    #[error(transparent)]
    Build(Box<BuildError>),
    /// A squash failed.
    #[error(transparent)]
    Squash(#[from] crate::squash::SquashError),
    /// `habitus audit` could not read an image, so it could not check it
    /// (exit 2: the image is neither clean nor known to leak).
    #[error("{0}")]
    Audit(String),
    /// `habitus audit` found secrets (each hit has been printed).
    #[error("{hits} secret occurrence(s) found")]
    Leak {
        /// How many hits.
        hits: usize,
    },
    /// `habitus serve` could not resolve its secrets or start.
    #[error(transparent)]
    Serve(#[from] crate::secrets::serve::ServeError),
    /// `habitus prune` could not remove some objects (each was named).
    #[error("{failed} object(s) could not be removed")]
    Prune {
        /// How many.
        failed: usize,
    },
    /// A build's error, as the reporter redacted it for printing.
    #[error("{message}")]
    Redacted {
        /// The error's text, every secret value masked.
        message: String,
        /// The exit code of the error it was.
        code: i32,
    },
    /// A local I/O error outside any step.
    #[error("{what}: {source}")]
    Io {
        /// What habitus was doing.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Boxed: a build's error carries the most text, and every command's
/// result would otherwise be as large.
impl From<BuildError> for Error {
    fn from(error: BuildError) -> Error {
        Error::Build(Box::new(error))
    }
}

impl Error {
    /// What the user can do about it, when habitus knows (printed after
    /// the error as `hint: …`).
    pub fn hint(&self) -> Option<String> {
        match self {
            Error::Engine(e) | Error::Squash(crate::squash::SquashError::Engine(e)) => e.hint(),
            Error::Build(e) => e.hint(),
            _ => None,
        }
    }

    /// The error as the user sees it: its text, then its hint.
    pub fn report(&self) -> String {
        match self.hint() {
            Some(hint) => format!("{self}\nhint: {hint}"),
            None => self.to_string(),
        }
    }

    /// The process exit code for this error.
    pub fn code(&self) -> i32 {
        match self {
            Error::Usage(_) | Error::Audit(_) => 2,
            Error::Engine(EngineError::Unreachable { .. } | EngineError::Tls(_)) => 2,
            Error::Build(e) => e.code(),
            Error::Redacted { code, .. } => *code,
            Error::Squash(crate::squash::SquashError::Engine(
                EngineError::Unreachable { .. } | EngineError::Tls(_),
            )) => 2,
            Error::Manifest(_)
            | Error::Engine(_)
            | Error::Squash(_)
            | Error::Leak { .. }
            | Error::Serve(_)
            | Error::Prune { .. }
            | Error::Io { .. } => 1,
        }
    }
}
