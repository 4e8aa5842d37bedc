//! Why a build failed, and the exit code each failure gives.

use std::path::PathBuf;

use super::secrets::SecretsError;
use super::Signal;
use crate::engine::EngineError;

/// Why a build failed.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// The daemon failed a step's build.
    #[error("step `{step}` failed{}: {message}\n  dockerfile: {}", instruction.as_ref().map(|i| format!(" at `{i}`")).unwrap_or_default(), dockerfile.display())]
    Step {
        /// The step label.
        step: String,
        /// The step's Dockerfile.
        dockerfile: PathBuf,
        /// The instruction that failed (`Step 3/5 : RUN make`), if known.
        instruction: Option<String>,
        /// The daemon's message.
        message: String,
        /// What to change, when habitus knows.
        hint: Option<String>,
    },
    /// A step's Dockerfile could not be read or rewritten.
    #[error("step `{step}`: dockerfile `{}`: {message}", dockerfile.display())]
    Dockerfile {
        /// The step label.
        step: String,
        /// The Dockerfile.
        dockerfile: PathBuf,
        /// What is wrong with it.
        message: String,
        /// What to change, when habitus knows.
        hint: Option<String>,
    },
    /// A step's `command:` exited non-zero.
    #[error("step `{step}`: command `{command}` exited with code {code}")]
    Command {
        /// The step label.
        step: String,
        /// The command as written in build.yml.
        command: String,
        /// Its exit code.
        code: i64,
    },
    /// A step's `after_build_command:` failed on the host.
    #[error("step `{step}`: after_build_command `{command}` {status}")]
    AfterBuild {
        /// The step label.
        step: String,
        /// The command as written in build.yml.
        command: String,
        /// How it ended (`exited with code 3`, `could not start: …`).
        status: String,
        /// Its exit code, if it ran.
        code: Option<i32>,
    },
    /// Any other engine error during a step.
    #[error("step `{step}`: {source}")]
    Engine {
        /// The step label.
        step: String,
        /// The engine's error.
        source: EngineError,
    },
    /// A step's context directory cannot be used (it leads out of the
    /// work directory through a symlink planted since the build started).
    #[error("step `{step}`: context `{}`: {message}", context.display())]
    Context {
        /// The step label.
        step: String,
        /// The context directory as build.yml names it, resolved.
        context: PathBuf,
        /// What is wrong with it.
        message: String,
    },
    /// The build failed and the daemon no longer answers: it was stopped
    /// or restarted under the build.
    #[error(
        "{error}\nthe Docker daemon at `{address}` stopped answering during the build: {message}"
    )]
    DaemonLost {
        /// The build's own error.
        error: String,
        /// The daemon address.
        address: String,
        /// Why the ping after the failure failed.
        message: String,
    },
    /// A step's task panicked (a bug in habitus).
    #[error("step `{step}`: internal error: {message}")]
    Panic {
        /// The step label.
        step: String,
        /// The panic message.
        message: String,
    },
    /// A step's artifacts could not be copied to the host.
    #[error("step `{step}`: {source}")]
    Artifact {
        /// The step label.
        step: String,
        /// What went wrong.
        source: crate::artifacts::ArtifactError,
    },
    /// A step's cleanup failed.
    #[error("step `{step}`: {source}")]
    Cleanup {
        /// The step label.
        step: String,
        /// What went wrong.
        source: crate::cleanup::CleanupError,
    },
    /// The secrets server or the build's network could not be set up.
    #[error(transparent)]
    Secrets(#[from] SecretsError),
    /// The post-build audit found a secret in a produced image.
    #[error("a secret reached an image:\n  {}\nfix: fetch, use and delete the secret in one RUN, or pass --no-audit to build anyway", hits.join("\n  "))]
    Leak {
        /// One line per hit (image, layer or config field, encoding).
        hits: Vec<String>,
    },
    /// The post-build audit could not read an image (it was removed, as on
    /// a hit, unless --keep-all).
    #[error("audit: {message}\nthe audit clears only what it has read: the image was not kept\nfix: if the daemon saves layers in a format habitus cannot read, report it; --no-audit builds without the audit")]
    Audit {
        /// What went wrong.
        message: String,
    },
    /// `--metadata-file` could not be written.
    #[error("metadata file `{}`: {message}", path.display())]
    Metadata {
        /// The file as given.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
    /// Ctrl-C or SIGTERM.
    #[error("interrupted by {}", match signal { Signal::Interrupt => "SIGINT", Signal::Terminate => "SIGTERM", Signal::Hangup => "SIGHUP" })]
    Interrupted {
        /// Which signal.
        signal: Signal,
    },
}

impl BuildError {
    /// What the user can do about it, when habitus knows.
    pub fn hint(&self) -> Option<String> {
        match self {
            BuildError::Dockerfile { hint, .. } | BuildError::Step { hint, .. } => hint.clone(),
            BuildError::DaemonLost { .. } => Some("it was stopped or restarted; once it is back, the next build (or `habitus prune`) removes what this one left".into()),
            BuildError::Engine { source, .. } => source.hint(),
            BuildError::Secrets(e) => e.hint(),
            _ => None,
        }
    }

    /// The exit code habitus ends with: a failed `command:` passes its own
    /// code through; signals give 128 + their number (130 SIGINT, 143
    /// SIGTERM, 129 SIGHUP); everything else 1.
    pub fn code(&self) -> i32 {
        match self {
            BuildError::Command { code, .. } => clamp_code(*code),
            BuildError::AfterBuild { code: Some(c), .. } => clamp_code(i64::from(*c)),
            BuildError::Interrupted {
                signal: Signal::Interrupt,
            } => 130,
            BuildError::Interrupted {
                signal: Signal::Terminate,
            } => 143,
            BuildError::Interrupted {
                signal: Signal::Hangup,
            } => 129,
            _ => 1,
        }
    }
}

fn clamp_code(code: i64) -> i32 {
    if (1..=255).contains(&code) {
        code as i32
    } else {
        1
    }
}
