//! `habitus prune [--dry-run]`: see [`crate::sweep`].

use super::{connect, runtime};
use crate::config::Config;
use crate::error::Error;
use crate::owner::Owner;
use crate::progress::print_stdout;
use crate::sweep;

/// Removes (or with `dry_run` lists) what habitus builds left on the
/// daemon, saying what it kept and why.
pub fn prune(config: &Config, dry_run: bool) -> Result<(), Error> {
    let runtime = runtime()?;
    let report = runtime.block_on(async {
        let engine = connect(config).await?;
        sweep::sweep(&engine, &Owner::current(), config.stale_after, dry_run).await
    })?;
    let verb = if dry_run { "would remove" } else { "removed" };
    let mut out = String::new();
    for s in &report.removed {
        out.push_str(&format!("{verb} {} `{}`: {}\n", s.kind, s.name, s.why));
    }
    for s in &report.kept {
        out.push_str(&format!("kept {} `{}`: {}\n", s.kind, s.name, s.why));
    }
    for s in &report.failed {
        out.push_str(&format!(
            "could not remove {} `{}`: {}\n",
            s.kind, s.name, s.why
        ));
    }
    out.push_str(&format!(
        "{} {verb}, {} kept, {} failed",
        report.removed.len(),
        report.kept.len(),
        report.failed.len()
    ));
    print_stdout(&out);
    match report.failed.len() {
        0 => Ok(()),
        failed => Err(Error::Prune { failed }),
    }
}
