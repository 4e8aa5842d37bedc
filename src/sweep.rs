//! Removing what dead builds left behind: the networks and containers a
//! build labelled `habitus.build` and could not remove itself because it
//! was killed (SIGKILL from a CI system) or its daemon went away. Every
//! build sweeps when it starts; `habitus prune` sweeps on demand.
//!
//! An object goes when its owner is provably dead (see [`crate::owner`]),
//! or was made elsewhere longer ago than `--stale-after`. A network that a
//! running container still uses is never touched; the stopped containers
//! attached to a dead build's network (the classic builder's RUN
//! containers, which carry no label) go with it.

use std::time::{Duration, SystemTime};

use crate::engine::{Engine, EngineError, Leftover};
use crate::owner::{judge, Owner, Verdict};

use crate::model::LABEL_BUILD;

/// One object the sweep looked at, and what it did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Swept {
    /// `network` or `container`.
    pub kind: &'static str,
    pub name: String,
    /// Why it was (or would be) removed, or kept.
    pub why: String,
}

/// What a sweep did.
#[derive(Debug, Default)]
pub struct Report {
    /// Removed (with `dry_run`: would be removed).
    pub removed: Vec<Swept>,
    /// Kept: their builds still run, or they are in use or too young.
    pub kept: Vec<Swept>,
    /// Removal failed: the daemon's error.
    pub failed: Vec<Swept>,
}

/// Sweeps the daemon behind `engine` as `me`: see the module docs.
pub async fn sweep(
    engine: &dyn Engine,
    me: &Owner,
    stale_after: Duration,
    dry_run: bool,
) -> Result<Report, EngineError> {
    let now = SystemTime::now();
    let mut objects = engine.list_labelled(LABEL_BUILD).await?;
    // Containers first: a network goes only once nothing uses it.
    objects.sort_by_key(|o| (o.kind != "container", o.name.clone()));
    let mut report = Report::default();
    for object in objects {
        let verdict = judge(&object.labels, object.created, me, now, stale_after);
        let entry = |why: String| Swept {
            kind: object.kind,
            name: object.name.clone(),
            why,
        };
        let why = match verdict {
            Verdict::Keep(why) => {
                report.kept.push(entry(why));
                continue;
            }
            // A container of a dead build is an orphan even if it runs
            // (a keep-alive container waits on a closed stdin).
            Verdict::Dead(why) => why,
            Verdict::Stale(why) if object.running => {
                report.kept.push(entry(format!("{why}, but it still runs")));
                continue;
            }
            Verdict::Stale(why) => why,
        };
        let result = match object.kind {
            "network" => remove_network(engine, &object, dry_run).await,
            _ if dry_run => Ok(true),
            _ => engine.remove_container(&object.id).await.map(|()| true),
        };
        match result {
            Ok(true) => report.removed.push(entry(why)),
            Ok(false) => report.kept.push(entry(format!(
                "{why}, but a running container still uses it"
            ))),
            Err(e) => report.failed.push(entry(e.to_string())),
        }
    }
    Ok(report)
}

/// Removes a network nothing running uses, with the stopped containers
/// still attached to it; `Ok(false)` when a running container uses it.
async fn remove_network(
    engine: &dyn Engine,
    network: &Leftover,
    dry_run: bool,
) -> Result<bool, EngineError> {
    let attached = engine.containers_on_network(&network.name).await?;
    if attached.iter().any(|(_, running)| *running) {
        return Ok(false);
    }
    if dry_run {
        return Ok(true);
    }
    for (id, _) in &attached {
        engine.remove_container(id).await?;
    }
    engine.remove_network(&network.name).await?;
    Ok(true)
}
