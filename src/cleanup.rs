//! Cleanup: a step's `cleanup.commands`, run after its build so that what
//! they delete is gone from every layer of the step's image.
//!
//! A container of the step's image is started with `/bin/sh` waiting on an
//! open stdin (so an image needs nothing but `/bin/sh`, whatever `--os`
//! says), each command runs in it as root with `/bin/sh -c` (its output
//! streamed to the step's output; a non-zero exit fails the step), the
//! container is committed with the image's own config (Env, Cmd,
//! Entrypoint, WorkingDir, User, Labels… — not the shell's), and the
//! committed image is squashed under the step's image name, with exactly
//! the labels the step's image had (the commit also copies the
//! container's labels, which name habitus's build and process: they are
//! dropped, so a container run from the image is never habitus's). The
//! layers of the step's base image (the `FROM` of its final stage, see
//! [`keep_for`]) stay as they are, so they remain shared with other
//! images; the step's own layers and the cleanup's become one. The
//! container, the committed image and the unsquashed image are removed
//! afterwards.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::dockerfile;
use crate::engine::{ContainerGuard, ContainerRequest, Engine, EngineError, LineSink};
use crate::model::LABEL_CONTAINER;
use crate::squash::{self, Keep, SquashError};

/// Why a cleanup failed.
#[derive(Debug, thiserror::Error)]
pub enum CleanupError {
    /// A cleanup command exited non-zero.
    #[error("cleanup command `{command}` exited with code {code}")]
    Command {
        /// The command as written in build.yml.
        command: String,
        /// Its exit code.
        code: i64,
    },
    /// The daemon failed (container, exec, commit).
    #[error("cleanup: {0}")]
    Engine(#[from] EngineError),
    /// Squashing the committed image failed.
    #[error("cleanup: squashing `{image}`: {error}")]
    Squash {
        /// The step's image.
        image: String,
        /// The squash error.
        error: SquashError,
    },
}

/// Which layers of a step's image the squash after cleanup keeps: those of
/// the image the final stage (`target`, or the last stage) starts `FROM`,
/// following `FROM <earlier stage>` back to an image. Everything is
/// squashed ([`Keep::Nothing`]) for `FROM scratch`, and when the base
/// cannot be known before the build (`FROM $IMAGE`).
pub fn keep_for(dockerfile_text: impl AsRef<[u8]>, target: Option<&str>) -> Keep {
    let Ok(froms) = dockerfile::from_images(dockerfile_text) else {
        return Keep::Nothing;
    };
    let stage_index = |name: &str, before: usize| {
        froms[..before]
            .iter()
            .rposition(|f| f.stage.as_deref() == Some(name))
    };
    let mut index = match target {
        Some(target) => match stage_index(&target.to_lowercase(), froms.len()) {
            Some(i) => i,
            None => return Keep::Nothing,
        },
        None => match froms.len().checked_sub(1) {
            Some(i) => i,
            None => return Keep::Nothing,
        },
    };
    loop {
        let image = &froms[index].image;
        match stage_index(&image.to_lowercase(), index) {
            Some(earlier) => index = earlier,
            None if image.contains('$') || image.eq_ignore_ascii_case("scratch") => {
                return Keep::Nothing
            }
            None => return Keep::BaseImage(image.clone()),
        }
    }
}

/// Runs `commands` in a container of `image` (labelled `labels`), commits
/// it and squashes the result back into `image`, keeping `keep`. Output of
/// the commands and progress lines go to `sink`.
///
/// The unsquashed image is removed afterwards by a name of this cleanup's
/// own, never by its id: the classic builder's cache gives every build
/// of the same instructions the same image, so another build's (or
/// another step's) name may hold it. Removing that name lets the daemon
/// delete the image only when no other name holds it; `rmi <id>` would
/// take the other name with it, and with it the other build's image.
pub async fn run(
    engine: Arc<dyn Engine>,
    image: &str,
    labels: BTreeMap<String, String>,
    commands: &[String],
    keep: Keep,
    temp_limit: u64,
    sink: LineSink,
) -> Result<(), CleanupError> {
    // The squashed image keeps the step's own labels: the commit adds the
    // container's (who owns it, which build made it), and a container run
    // from the image must not look like one habitus made.
    let mut own_labels = engine
        .inspect_image(image)
        .await?
        .map(|info| info.labels)
        .unwrap_or_default();
    own_labels.remove(LABEL_CONTAINER);
    let id = engine
        .create_container(ContainerRequest {
            image: image.to_string(),
            labels,
            keep_alive: true,
        })
        .await?;
    let guard = ContainerGuard::arm(Arc::clone(&engine), &id);
    // While the container exists the daemon keeps its image; the hold
    // keeps it after that, until the squash is done.
    let hold = hold_name(&id);
    let held = engine.tag_image(image, &hold).await;
    let is_held = held.is_ok();
    let committed = match held {
        Ok(()) => run_in(&*engine, &id, image, commands, &sink).await,
        Err(e) => Err(e.into()),
    };
    guard.disarm();
    let removed = engine.remove_container(&id).await;
    let result = match (committed, removed) {
        (Err(e), _) => Err(e),
        (Ok(_), Err(e)) => Err(e.into()),
        (Ok(committed), Ok(())) => {
            squash_committed(
                &*engine,
                image,
                &committed,
                keep,
                &own_labels,
                temp_limit,
                &sink,
            )
            .await
        }
    };
    // The unsquashed image (on the containerd image store it outlives the
    // tag it lost, and the images its instructions committed are not its
    // parents): removing it, even when it is already gone, also removes
    // those, whose layers hold what the commands deleted.
    if is_held {
        if let Err(e) = engine.remove_image(&hold, false, false).await {
            sink(&format!(
                "could not remove the unsquashed image `{hold}`: {e}"
            ));
        }
    }
    result
}

/// The name that holds the unsquashed image of the cleanup whose
/// container is `container` (unique: one container per cleanup).
fn hold_name(container: &str) -> String {
    let short: String = container.chars().take(12).collect();
    format!("habitus-unsquashed:{short}")
}

/// Squashes the committed image `committed` into `image`, then removes
/// the committed image.
async fn squash_committed(
    engine: &dyn Engine,
    image: &str,
    committed: &str,
    keep: Keep,
    own_labels: &BTreeMap<String, String>,
    temp_limit: u64,
    sink: &LineSink,
) -> Result<(), CleanupError> {
    let squashed = squash::squash_labelled(
        engine,
        committed,
        &crate::squash::with_tag(image),
        keep,
        own_labels,
        temp_limit,
        Arc::clone(sink),
    )
    .await;
    // The committed image is an intermediate either way. Removing it also
    // prunes its untagged parents: once the squashed image holds the tag,
    // that is the unsquashed image, whose layers still hold what the
    // commands deleted.
    if let Err(e) = engine.remove_image(committed, false, false).await {
        sink(&format!(
            "could not remove the intermediate image `{committed}`: {e}"
        ));
    }
    let report = squashed.map_err(|error| CleanupError::Squash {
        image: image.to_string(),
        error,
    })?;
    sink(&format!(
        "cleanup: squashed {} layer(s) into {} ({} kept, {} of temporary files)",
        report.layers_before,
        report.layers_after,
        report.kept,
        crate::squash::budget::human(report.temp_bytes)
    ));
    Ok(())
}

/// Execs each command in the running container `id`, then commits it with
/// the config of `image`; returns the committed image's id.
async fn run_in(
    engine: &dyn Engine,
    id: &str,
    image: &str,
    commands: &[String],
    sink: &LineSink,
) -> Result<String, CleanupError> {
    for command in commands {
        sink(&format!("cleanup: {command}"));
        let code = engine
            .exec(
                id,
                vec!["/bin/sh".into(), "-c".into(), command.clone()],
                Arc::clone(sink),
            )
            .await?;
        if code != 0 {
            return Err(CleanupError::Command {
                command: command.clone(),
                code,
            });
        }
    }
    Ok(engine.commit(id, image).await?)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::sync::{Arc, Mutex};

    use super::{keep_for, run};
    use crate::engine::fake::{FakeBuild, FakeEngine};
    use crate::engine::{BuildRequest, Engine, LineSink};
    use crate::squash::with_tag;
    use crate::squash::Keep;

    #[test]
    fn keep_follows_the_final_stage_to_its_image() {
        assert_eq!(
            keep_for(
                "FROM golang:1.22 AS build\nRUN make\nFROM alpine:3\nCOPY --from=build /a /a\n",
                None
            ),
            Keep::BaseImage("alpine:3".into())
        );
        assert_eq!(
            keep_for(
                "FROM golang AS build\nFROM build AS test\nFROM alpine\n",
                Some("Test")
            ),
            Keep::BaseImage("golang".into())
        );
        assert_eq!(keep_for("FROM scratch\nCOPY a /a\n", None), Keep::Nothing);
        assert_eq!(
            keep_for("ARG BASE=alpine\nFROM $BASE\n", None),
            Keep::Nothing
        );
        assert_eq!(keep_for("FROM a AS x\n", Some("missing")), Keep::Nothing);
    }

    #[test]
    fn tags_are_spelled_out() {
        assert_eq!(with_tag("hb/app"), "hb/app:latest");
        assert_eq!(with_tag("localhost:5000/app"), "localhost:5000/app:latest");
        assert_eq!(with_tag("app:v1"), "app:v1");
        assert_eq!(with_tag("app@sha256:00"), "app@sha256:00");
    }

    async fn fake_with_image(image: &str) -> Arc<FakeEngine> {
        let engine = Arc::new(FakeEngine::default());
        engine.on_build(image, FakeBuild::default());
        let sink: crate::engine::BuildSink = Arc::new(|_| {});
        engine
            .build(
                BuildRequest {
                    tag: image.into(),
                    ..Default::default()
                },
                sink,
            )
            .await
            .unwrap();
        engine
    }

    #[tokio::test]
    async fn a_failing_command_stops_the_cleanup_and_removes_the_container() {
        let engine = fake_with_image("img/app").await;
        engine.on_exec("rm /nope", 1);
        let lines = Arc::new(Mutex::new(Vec::new()));
        let seen = Arc::clone(&lines);
        let sink: LineSink = Arc::new(move |l: &str| seen.lock().unwrap().push(l.to_string()));
        let err = run(
            engine.clone(),
            "img/app",
            BTreeMap::new(),
            &["rm /nope".into(), "never".into()],
            Keep::Nothing,
            u64::MAX,
            sink,
        )
        .await
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "cleanup command `rm /nope` exited with code 1"
        );
        assert_eq!(
            engine.execs(),
            [(
                "img/app".to_string(),
                vec!["/bin/sh".to_string(), "-c".into(), "rm /nope".into()]
            )]
        );
        assert!(engine.containers().is_empty());
        assert!(engine.commits().is_empty());
        assert_eq!(
            *lines.lock().unwrap(),
            ["cleanup: rm /nope", "exec rm /nope"]
        );
    }

    #[tokio::test]
    async fn commands_run_in_a_live_container_and_the_commit_keeps_the_image_config() {
        let engine = fake_with_image("img/app").await;
        let sink: LineSink = Arc::new(|_: &str| {});
        let err = run(
            engine.clone(),
            "img/app",
            BTreeMap::new(),
            &["rm /a".into(), "rm /b".into()],
            Keep::Nothing,
            u64::MAX,
            sink,
        )
        .await
        .unwrap_err();
        // The fake engine cannot squash; everything before it ran.
        assert_eq!(
            err.to_string(),
            "cleanup: squashing `img/app`: docker: this engine cannot inspect `sha256:commit-1`"
        );
        assert_eq!(engine.execs().len(), 2);
        assert_eq!(
            engine.commits(),
            [("img/app".to_string(), "img/app".to_string())]
        );
        assert!(engine.containers().is_empty());
        // The intermediate committed image is gone; the step's image stays.
        assert!(!engine.images().contains("sha256:commit-1"));
        assert!(engine.images().contains("img/app"));
    }
}
