//! The vocabulary every part of habitus shares: which builder runs a
//! step, how much to log, the labels habitus puts on Docker objects and
//! the build id. It imports nothing of the crate, so any module may use it.

/// Which of the daemon's builders runs a step's Dockerfile.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Builder {
    /// The classic builder (`docker build` without BuildKit), as Go Habitus.
    #[default]
    Legacy,
    /// The daemon's BuildKit, with a session serving secret mounts.
    BuildKit,
}

impl Builder {
    /// `legacy` or `buildkit`.
    pub fn name(self) -> &'static str {
        match self {
            Builder::Legacy => "legacy",
            Builder::BuildKit => "buildkit",
        }
    }
}

/// How much habitus says (`--level`; Go Habitus's names, plus `trace`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Notice,
    Warning,
    Error,
    Critical,
}

/// Label carrying the build id (networks, containers, labelled images).
pub const LABEL_BUILD: &str = "habitus.build";
/// Label carrying the step label (containers, labelled images).
pub const LABEL_STEP: &str = "habitus.step";
/// Label carrying `--uid`.
pub const LABEL_UID: &str = "habitus.uid";

/// A new build id: 12 random hex digits, short enough for names
/// (`habitus-<id>` networks) and unique enough for one daemon.
pub fn new_build_id() -> String {
    format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}
