//! The top-level error and its mapping to exit codes.

/// Everything that can stop a habitus invocation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad command-line usage (exit code 2, as Go Habitus and Go's flag package).
    #[error("{0}")]
    Usage(String),
}

impl Error {
    /// The process exit code for this error.
    pub fn code(&self) -> i32 {
        match self {
            Error::Usage(_) => 2,
        }
    }
}
