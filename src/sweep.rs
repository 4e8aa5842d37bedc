//! Removing what dead builds left behind: the networks and containers a
//! build labelled `habitus.build` and could not remove itself because it
//! was killed (SIGKILL from a CI system) or its daemon went away. Every
//! build sweeps when it starts; `habitus prune` sweeps on demand.
//!
//! An object goes when its owner is provably dead (see [`crate::owner`]),
//! or was made elsewhere longer ago than `--stale-after`. Only containers
//! habitus created are candidates: they carry `habitus.container` (with
//! the build id of their `habitus.build`), which no image carries. A
//! container that carries `habitus.build` without it was run from an
//! image with habitus's labels (`--image-labels`, or a cleanup image of
//! an older habitus): it is the user's, and is never removed.
//!
//! A network that a running container still uses is never touched; the
//! stopped containers attached to a dead build's network (the classic
//! builder's RUN containers, which carry no habitus label) go with it.
//! They are found by the network's exact id, never by a name or an id
//! prefix, so that a network named like the start of another network's id
//! cannot hand over that network's containers.

use std::time::{Duration, SystemTime};

use crate::engine::{Engine, EngineError, Leftover};
use crate::owner::{judge, Owner, Verdict};

use crate::model::{LABEL_BUILD, LABEL_CONTAINER};

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
        let entry = |why: String| Swept {
            kind: object.kind,
            name: object.name.clone(),
            why,
        };
        if object.kind == "container" {
            if let Some(why) = not_created_by_habitus(&object.labels) {
                report.kept.push(entry(why));
                continue;
            }
        }
        let verdict = judge(&object.labels, object.created, me, now, stale_after);
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

/// Why a container labelled `labels` (it carries `habitus.build`) is not
/// one habitus created, if it is not.
pub fn not_created_by_habitus(
    labels: &std::collections::BTreeMap<String, String>,
) -> Option<String> {
    match (labels.get(LABEL_CONTAINER), labels.get(LABEL_BUILD)) {
        (Some(container), Some(build)) if container == build => None,
        (Some(_), _) => Some(format!(
            "its `{LABEL_CONTAINER}` and `{LABEL_BUILD}` labels name different builds, so habitus did not create it; remove it with `docker rm` if it is not needed"
        )),
        (None, _) => Some(format!(
            "not created by habitus (no `{LABEL_CONTAINER}` label; its image carries habitus's labels), so never removed"
        )),
    }
}

/// Removes a network nothing running uses, with the stopped containers
/// still attached to it (found by the network's exact id); `Ok(false)`
/// when a running container uses it.
async fn remove_network(
    engine: &dyn Engine,
    network: &Leftover,
    dry_run: bool,
) -> Result<bool, EngineError> {
    let attached = engine.containers_on_network(&network.id).await?;
    if attached.iter().any(|(_, running)| *running) {
        return Ok(false);
    }
    if dry_run {
        return Ok(true);
    }
    for (id, _) in &attached {
        engine.remove_container(id).await?;
    }
    engine.remove_network(&network.id).await?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::time::{Duration, SystemTime};

    use super::sweep;
    use crate::engine::fake::FakeEngine;
    use crate::engine::Leftover;
    use crate::model::{LABEL_BUILD, LABEL_CONTAINER};
    use crate::owner::Owner;

    fn leftover(kind: &'static str, id: &str, labels: &BTreeMap<String, String>) -> Leftover {
        Leftover {
            kind,
            id: id.into(),
            name: format!("{kind}-{id}"),
            labels: labels.clone(),
            created: None,
            running: kind == "container",
        }
    }

    /// A build that is gone: the labels of a process that has exited.
    fn dead_build() -> BTreeMap<String, String> {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        child.wait().unwrap();
        let mut labels = Owner {
            pid,
            start: 1,
            ..Owner::current()
        }
        .labels(SystemTime::now());
        labels.insert(LABEL_BUILD.into(), "b1".into());
        labels
    }

    #[tokio::test]
    async fn only_what_habitus_created_goes_with_a_dead_build() {
        let engine = FakeEngine::default();
        let build = dead_build();
        // Run by a user from an image that carries the build's labels.
        engine.on_leftover(leftover("container", "users", &build));
        let mut ours = build.clone();
        ours.insert(LABEL_CONTAINER.into(), "b1".into());
        engine.on_leftover(leftover("container", "ours", &ours));
        let mut forged = build.clone();
        forged.insert(LABEL_CONTAINER.into(), "another".into());
        engine.on_leftover(leftover("container", "forged", &forged));
        engine.on_leftover(leftover("network", "net-b1-full-id", &build));
        // A RUN container of the classic builder, stopped, on the network.
        engine.on_attached("net-b1-full-id", vec![("run1".into(), false)]);

        let me = Owner::current();
        let report = sweep(&engine, &me, Duration::from_secs(86_400), false)
            .await
            .unwrap();
        assert_eq!(engine.removed_containers(), ["ours", "run1"]);
        assert_eq!(engine.removed_networks(), ["net-b1-full-id"]);
        let kept: Vec<(&str, &str)> = report
            .kept
            .iter()
            .map(|k| (k.name.as_str(), k.why.as_str()))
            .collect();
        assert_eq!(
            kept,
            [
                (
                    "container-forged",
                    "its `habitus.container` and `habitus.build` labels name different builds, so habitus did not create it; remove it with `docker rm` if it is not needed"
                ),
                (
                    "container-users",
                    "not created by habitus (no `habitus.container` label; its image carries habitus's labels), so never removed"
                ),
            ]
        );
        assert!(report.failed.is_empty());
    }

    #[tokio::test]
    async fn a_running_container_on_a_dead_builds_network_keeps_it() {
        let engine = FakeEngine::default();
        engine.on_leftover(leftover("network", "net-id", &dead_build()));
        engine.on_attached(
            "net-id",
            vec![("stopped".into(), false), ("users".into(), true)],
        );
        let report = sweep(&engine, &Owner::current(), Duration::ZERO, false)
            .await
            .unwrap();
        assert_eq!(engine.removed_containers(), Vec::<String>::new());
        assert_eq!(engine.removed_networks(), Vec::<String>::new());
        assert!(report.kept[0]
            .why
            .ends_with("is gone, but a running container still uses it"));
    }
}
