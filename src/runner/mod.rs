//! The runner: executes a [`Plan`] on an [`Engine`].
//!
//! Scheduling is eager: a step starts as soon as all of its dependencies
//! have finished (not level by level), with at most `jobs` steps at once.
//! The first failure (or Ctrl-C/SIGTERM, through the cancellation token)
//! cancels every step in flight; dropping a step's future drops its daemon
//! request, which makes the daemon stop that build.
//!
//! Teardown runs on every path: containers labelled with this build's id
//! are swept, and images the build no longer needs are removed (on success
//! those of non-leaf steps without `keep`; on failure every image of this
//! build, unless `--keep-all`).
//!
//! The parts, in the order a build meets them:
//! - [`Runner`] (here) is the build as configured; [`Runner::run`] starts
//!   a `build::Build`, whose fields are all set once, before the first
//!   step: the secrets side (`secrets`), the folds (`fold`).
//! - `schedule` starts steps as their dependencies finish;
//! - `step` builds one step as a pipeline of named stages; `mounts`
//!   checks its Dockerfile's secret and SSH mounts; `host` runs its
//!   `after_build_command`;
//! - `teardown` sweeps containers and images, `audit` searches what the
//!   build kept for its secrets, and `report` shows the summary.

mod audit;
mod build;
mod error;
mod fold;
mod host;
mod mounts;
mod registry;
pub(crate) mod report;
mod schedule;
pub(crate) mod secrets;
mod step;
mod teardown;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::BuildSettings;
use crate::dockerfile;
use crate::engine::Engine;
use crate::manifest::Manifest;
use crate::plan::Plan;
use crate::progress::Reporter;
use crate::secrets::{SecretStore, Settings};
use build::Build;

pub use error::BuildError;
pub use mounts::check_mounts;
pub use registry::PushedImage;

/// The signal that interrupted a build.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Signal {
    /// Ctrl-C.
    Interrupt,
    /// SIGTERM.
    Terminate,
    /// SIGHUP: the terminal the build ran in went away.
    Hangup,
}

/// What one step produced.
#[derive(Debug, Clone)]
pub struct StepReport {
    pub label: String,
    /// The unique image name the step was tagged with.
    pub image: String,
    pub image_id: String,
    pub size: Option<i64>,
    pub duration: Duration,
    pub cached_steps: usize,
    pub total_steps: usize,
    /// Artifacts copied to the host.
    pub artifacts: Vec<CopiedArtifact>,
    /// The step whose BuildKit build built this one as a stage (see
    /// `Runner::plan_folds`); the step then has no image of its own.
    pub folded_into: Option<String>,
}

/// An artifact a step copied to the host.
#[derive(Debug, Clone)]
pub struct CopiedArtifact {
    /// The path in the image.
    pub source: String,
    /// Where it landed on the host.
    pub dest: PathBuf,
    /// Bytes of file data.
    pub bytes: u64,
}

/// A secret one step fetched (counted in [`Summary::secrets_served`]).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SecretUse {
    /// The step label.
    pub step: String,
    /// `type/name`, never the value.
    pub secret: String,
}

/// What a build produced.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Finished steps, in the order they finished.
    pub steps: Vec<StepReport>,
    /// Images removed after the build.
    pub removed_images: Vec<String>,
    /// Secrets served: (step, `type/name`) → successful fetches.
    pub secrets_served: BTreeMap<SecretUse, usize>,
    /// Images the post-build audit searched (none without secrets).
    pub audited_images: Vec<String>,
    /// Every step label, in the plan's order.
    pub plan_order: Vec<String>,
    /// Images pushed, in the order their pushes finished.
    pub pushed: Vec<PushedImage>,
}

/// One build as configured: what to build, where, with which secrets.
pub struct Runner {
    engine: Arc<dyn Engine>,
    manifest: Arc<Manifest>,
    plan: Arc<Plan>,
    options: Arc<BuildSettings>,
    reporter: Arc<Reporter>,
    build_id: String,
    /// Step image name as written → unique name, for rewriting Dockerfiles.
    images: Arc<BTreeMap<String, String>>,
    /// Secrets to serve (set by [`Runner::with_secrets`]), and whether the
    /// TLS server runs.
    secrets: Option<(Settings, SecretStore, bool)>,
    /// Ownership labels of the networks and containers this build makes.
    owner: Arc<BTreeMap<String, String>>,
}

impl Runner {
    /// A runner for `manifest`/`plan` on `engine`; `build_id` labels every
    /// object of this build.
    pub fn new(
        engine: Arc<dyn Engine>,
        manifest: Manifest,
        plan: Plan,
        options: BuildSettings,
        reporter: Arc<Reporter>,
        build_id: String,
    ) -> Runner {
        let images = manifest
            .steps
            .iter()
            .map(|s| {
                (
                    s.name.clone(),
                    dockerfile::unique_name(&s.name, options.uid.as_deref()),
                )
            })
            .collect();
        Runner {
            engine,
            manifest: Arc::new(manifest),
            plan: Arc::new(plan),
            options: Arc::new(options),
            reporter,
            build_id,
            images: Arc::new(images),
            secrets: None,
            owner: Arc::new(crate::owner::Owner::current().labels(std::time::SystemTime::now())),
        }
    }

    /// Serves `store` to the steps that declare secrets: BuildKit steps
    /// mount them; with `server`, the build also gets its own network and a
    /// TLS secrets server on it (see `secrets`).
    pub fn with_secrets(mut self, settings: Settings, store: SecretStore, server: bool) -> Runner {
        self.secrets = Some((settings, store, server));
        self
    }

    /// Number of steps in the build.
    pub fn step_count(&self) -> usize {
        self.plan.len()
    }

    /// `(label, dependencies)` of every step, in file order: its
    /// `depends_on`, then the steps whose image its Dockerfile uses.
    pub fn steps(&self) -> Vec<(String, Vec<String>)> {
        (0..self.manifest.steps.len())
            .map(|i| self.step_dependencies(i))
            .collect()
    }

    /// `(label, dependencies)` of every step, in the plan's order (the
    /// order the terminal shows them in).
    pub fn steps_in_plan_order(&self) -> Vec<(String, Vec<String>)> {
        self.plan
            .order()
            .iter()
            .map(|&i| self.step_dependencies(i))
            .collect()
    }

    fn step_dependencies(&self, i: usize) -> (String, Vec<String>) {
        let s = &self.manifest.steps[i];
        let mut deps = s.depends_on.clone();
        deps.extend(s.inferred.iter().map(|d| d.step.clone()));
        (s.label.clone(), deps)
    }

    /// The id that labels this build's objects.
    pub fn build_id(&self) -> &str {
        &self.build_id
    }

    /// Runs the whole build. `cancel` is triggered on Ctrl-C/SIGTERM, with
    /// the signal stored in `signal`.
    pub async fn run(
        &self,
        cancel: CancellationToken,
        signal: Arc<Mutex<Option<Signal>>>,
    ) -> Result<Summary, BuildError> {
        if let Some(path) = &self.options.metadata_file {
            registry::check_metadata_path(path)?;
        }
        let host_artifacts = crate::artifacts::HostArtifacts::before_build(
            &self.manifest.workdir,
            &self.manifest.steps,
        );
        let build = Arc::new(Build::start(self).await?);
        let result = build.schedule(&cancel, &signal).await;
        let mut summary = match &result {
            Ok(summary) | Err((summary, _)) => summary.clone(),
        };
        if result.is_ok() {
            build.add_sizes(&mut summary).await;
        }
        summary.plan_order = self
            .plan
            .order()
            .iter()
            .map(|&i| self.plan.label(i).to_string())
            .collect();
        let tagged = lock(&build.tagged).clone();
        summary.removed_images = build.teardown(&tagged, result.is_ok()).await;
        summary.secrets_served = lock(&build.served).clone();
        if build.audit.is_some() {
            summary.audited_images = summary
                .steps
                .iter()
                .filter(|s| s.folded_into.is_none())
                .filter(|s| !summary.removed_images.contains(&s.image))
                .map(|s| s.image.clone())
                .collect();
        }
        let result = match result {
            Ok(_) => build.audit_images(&summary).await,
            Err((_, error)) => Err(error),
        };
        build.remove_pulled_cache(&summary).await;
        let result = match (result, &self.options.metadata_file) {
            (Ok(()), Some(path)) => registry::write_metadata(path, &summary),
            (result, _) => result,
        };
        if !self.options.keep_artifacts {
            build.remove_artifacts(&host_artifacts);
        }
        build.stop_secrets().await;
        result.map(|()| summary)
    }
}

/// `1234567` → `1.2 MB` (decimal units, as `docker images` prints).
pub fn human_size(bytes: i64) -> String {
    let units = ["B", "kB", "MB", "GB", "TB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1000.0 && unit < units.len() - 1 {
        value /= 1000.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", units[unit])
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use tokio_util::sync::CancellationToken;

    use super::{BuildError, BuildSettings, Runner, Signal, Summary};
    use crate::engine::fake::{FakeBuild, FakeEngine};
    use crate::manifest::{Manifest, SchemaVersion, Step};
    use crate::model::Level;
    use crate::model::LABEL_CONTAINER;
    use crate::plan::Plan;
    use crate::progress::Reporter;

    fn step(dir: &Path, label: &str, deps: &[&str]) -> Step {
        let dockerfile_path = dir.join("Dockerfile");
        std::fs::write(&dockerfile_path, "FROM scratch\n").unwrap();
        Step {
            dockerfile_path,
            context: dir.to_path_buf(),
            depends_on: deps.iter().map(|d| d.to_string()).collect(),
            ..Step::for_test(label)
        }
    }

    struct Fixture {
        engine: Arc<FakeEngine>,
        runner: Runner,
    }

    fn fixture(steps: Vec<Step>, options: BuildSettings) -> Fixture {
        let nodes: Vec<_> = steps
            .iter()
            .map(|s| (s.label.clone(), s.depends_on.clone()))
            .collect();
        let plan = Plan::new(&nodes).unwrap();
        let manifest = Manifest {
            file: "build.yml".into(),
            workdir: steps[0].context.clone(),
            version: SchemaVersion::V20160314,
            steps,
        };
        let engine = Arc::new(FakeEngine::default());
        let reporter = Arc::new(Reporter::new(Box::new(std::io::sink()), Level::Info, false));
        let runner = Runner::new(
            engine.clone(),
            manifest,
            plan,
            options,
            reporter,
            "b1".into(),
        );
        Fixture { engine, runner }
    }

    async fn run(f: &Fixture) -> Result<Summary, BuildError> {
        f.runner
            .run(CancellationToken::new(), Arc::new(Mutex::new(None)))
            .await
    }

    fn opts(jobs: usize) -> BuildSettings {
        BuildSettings {
            jobs,
            ..BuildSettings::default()
        }
    }

    fn delay(ms: u64) -> FakeBuild {
        FakeBuild {
            delay: Duration::from_millis(ms),
            fail: None,
        }
    }

    fn window(f: &Fixture, tag: &str) -> (Instant, Instant) {
        let b = f
            .engine
            .builds()
            .into_iter()
            .find(|b| b.request.tag == tag)
            .unwrap_or_else(|| panic!("`{tag}` was not built"));
        (b.started, b.finished.expect("finished"))
    }

    #[tokio::test]
    async fn diamond_runs_middle_steps_in_parallel_and_join_after_both() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let f = fixture(
            vec![
                step(d, "a", &[]),
                step(d, "b", &["a"]),
                step(d, "c", &["a"]),
                step(d, "d", &["b", "c"]),
            ],
            opts(4),
        );
        f.engine.on_build("img/b", delay(200));
        f.engine.on_build("img/c", delay(200));
        let summary = run(&f).await.unwrap();
        assert_eq!(summary.steps.len(), 4);
        let (a, b, c, dd) = (
            window(&f, "img/a"),
            window(&f, "img/b"),
            window(&f, "img/c"),
            window(&f, "img/d"),
        );
        assert!(b.0 >= a.1 && c.0 >= a.1);
        assert!(b.0 < c.1 && c.0 < b.1, "b and c overlap");
        assert!(dd.0 >= b.1 && dd.0 >= c.1);
        // Only the leaf stays.
        assert_eq!(f.engine.images().into_iter().collect::<Vec<_>>(), ["img/d"]);
        assert_eq!(
            f.engine.label_sweeps(),
            [(LABEL_CONTAINER.into(), "b1".into())]
        );
    }

    #[tokio::test]
    async fn push_pushes_its_step_under_each_name_and_push_flag_pushes_what_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let base = Step {
            push: true,
            tags: vec!["r.example/base:2".into()],
            ..step(d, "base", &[])
        };
        let f = fixture(
            vec![base, step(d, "app", &["base"]), step(d, "tool", &[])],
            opts(2),
        );
        let summary = run(&f).await.unwrap();
        // Only `base` asks to be pushed; without --push the leaves stay local.
        assert_eq!(f.engine.pushes(), ["img/base", "r.example/base:2"]);
        let names: Vec<_> = summary.pushed.iter().map(|p| p.name.as_str()).collect();
        assert_eq!(names, ["img/base", "r.example/base:2"]);
        // `base` is not kept: its image and the name it was given go.
        assert!(!f.engine.images().contains("img/base"));
        assert!(!f.engine.images().contains("r.example/base:2"));

        let f = fixture(
            vec![
                step(d, "base", &[]),
                step(d, "app", &["base"]),
                step(d, "tool", &[]),
            ],
            BuildSettings {
                push: true,
                ..opts(2)
            },
        );
        run(&f).await.unwrap();
        let mut pushed = f.engine.pushes();
        pushed.sort();
        assert_eq!(
            pushed,
            ["img/app", "img/tool"],
            "--push pushes what is kept"
        );
    }

    #[tokio::test]
    async fn a_push_runs_beside_the_next_step_even_with_one_job() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let a = Step {
            push: true,
            ..step(d, "a", &[])
        };
        let f = fixture(vec![a, step(d, "b", &["a"])], opts(1));
        f.engine.on_push_delay(Duration::from_millis(400));
        f.engine.on_build("img/b", delay(100));
        let summary = run(&f).await.unwrap();
        let (_, push_started, push_finished) = f.engine.push_windows()[0].clone();
        let b = window(&f, "img/b");
        assert!(b.0 < push_finished, "b waited for a's push");
        assert!(b.0 >= push_started || b.1 <= push_finished);
        assert_eq!(summary.pushed.len(), 1, "the build waits for the push");
    }

    #[tokio::test]
    async fn a_failed_push_fails_the_build_naming_the_step_and_the_name() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let f = fixture(
            vec![Step {
                push: true,
                ..step(d, "app", &[])
            }],
            opts(1),
        );
        f.engine
            .on_push_fail("img/app", "unauthorized: authentication required");
        let err = run(&f).await.unwrap_err().to_string();
        assert!(err.contains("step `app`"), "{err}");
        assert!(err.contains("pushing `img/app`: unauthorized"), "{err}");
        assert!(
            !f.engine.images().contains("img/app"),
            "a failed build keeps no image"
        );
    }

    #[tokio::test]
    async fn cache_images_are_pulled_once_and_a_missing_one_is_left_out() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let a = Step {
            cache_from: vec!["r.example/a:cache".into()],
            ..step(d, "a", &[])
        };
        let f = fixture(
            vec![a, step(d, "b", &[])],
            BuildSettings {
                cache_from: vec!["r.example/all:cache".into()],
                ..opts(2)
            },
        );
        f.engine.on_pull_missing("r.example/a:cache");
        run(&f).await.unwrap();
        let mut pulls = f.engine.pulls();
        pulls.sort();
        assert_eq!(pulls, ["r.example/a:cache", "r.example/all:cache"]);
        for b in f.engine.builds() {
            assert_eq!(
                b.request.cache_from,
                ["r.example/all:cache"],
                "{}",
                b.request.tag
            );
        }
        assert!(
            !f.engine.images().contains("r.example/all:cache"),
            "the cache image this build pulled is removed"
        );
    }

    #[tokio::test]
    async fn the_metadata_file_names_each_kept_image_and_its_digest() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let meta = d.join("out").join("meta.json");
        std::fs::create_dir(d.join("out")).unwrap();
        let f = fixture(
            vec![step(d, "base", &[]), step(d, "app", &["base"])],
            BuildSettings {
                push: true,
                metadata_file: Some(meta.clone()),
                ..opts(1)
            },
        );
        run(&f).await.unwrap();
        let json: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&meta).unwrap()).unwrap();
        let app = &json["app"];
        assert_eq!(app["image"], "img/app");
        assert_eq!(app["image_id"], "sha256:img/app");
        assert!(app["digest"].as_str().unwrap().starts_with("sha256:"));
        assert_eq!(app["names"], serde_json::json!(["img/app"]));
        assert!(json.get("base").is_none(), "removed images are not listed");
    }

    /// `--metadata-file` is written 0600 (also over an existing 0644
    /// file), atomically (no temporary file is left), never through a
    /// symlink at the file itself or at its folder: the build fails before
    /// it starts, naming the file, the link and the fix, and the link's
    /// target is untouched.
    #[tokio::test]
    async fn the_metadata_file_is_private_and_never_written_through_a_symlink() {
        use std::os::unix::fs::{symlink, PermissionsExt};
        let dir = tempfile::tempdir().unwrap();
        let outside = tempfile::tempdir().unwrap();
        let d = dir.path();
        let target = outside.path().join("target");
        std::fs::write(&target, "untouched").unwrap();
        std::fs::create_dir(d.join("out")).unwrap();
        std::fs::write(d.join("out/meta.json"), "old").unwrap();
        std::fs::set_permissions(d.join("out/meta.json"), PermissionsExt::from_mode(0o644))
            .unwrap();
        symlink(&target, d.join("out/link.json")).unwrap();
        symlink(outside.path(), d.join("linked")).unwrap();
        let build = |meta: std::path::PathBuf| {
            fixture(
                vec![step(d, "app", &[])],
                BuildSettings {
                    metadata_file: Some(meta),
                    ..opts(1)
                },
            )
        };
        let built = build(d.join("out/meta.json"));
        run(&built).await.unwrap();
        assert!(built.engine.images().contains("img/app"));
        let meta = std::fs::metadata(d.join("out/meta.json")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o7777, 0o600);
        let json = std::fs::read_to_string(d.join("out/meta.json")).unwrap();
        assert!(json.contains("\"app\""), "{json}");
        let names: Vec<_> = std::fs::read_dir(d.join("out")).unwrap().collect();
        assert_eq!(names.len(), 2, "no temporary file is left: {names:?}");

        let linked = build(d.join("out/link.json"));
        let err = run(&linked).await.unwrap_err();
        assert!(
            !linked.engine.images().contains("img/app"),
            "refused before the build"
        );
        assert_eq!(
            err.to_string(),
            format!(
                "metadata file `{}`: is a symlink; the metadata file is never written through one: remove the symlink or name another path",
                d.join("out/link.json").display()
            )
        );
        let err = run(&build(d.join("linked/meta.json"))).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "metadata file `{}`: its folder `{}` is a symlink; the metadata file is never written through one: name the real folder",
                d.join("linked/meta.json").display(),
                d.join("linked").display()
            )
        );
        assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched");
        assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 1);
    }

    #[tokio::test]
    async fn scheduling_is_eager_not_level_by_level() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        // a (fast) -> b; c (slow) alone. Level by level, b would wait for c.
        let f = fixture(
            vec![step(d, "a", &[]), step(d, "c", &[]), step(d, "b", &["a"])],
            opts(4),
        );
        f.engine.on_build("img/c", delay(400));
        run(&f).await.unwrap();
        let (b, c) = (window(&f, "img/b"), window(&f, "img/c"));
        assert!(b.0 < c.1, "b started before c finished");
    }

    #[tokio::test]
    async fn jobs_limits_concurrency() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let f = fixture(vec![step(d, "a", &[]), step(d, "b", &[])], opts(1));
        f.engine.on_build("img/a", delay(100));
        f.engine.on_build("img/b", delay(100));
        run(&f).await.unwrap();
        let (a, b) = (window(&f, "img/a"), window(&f, "img/b"));
        assert!(b.0 >= a.1 || a.0 >= b.1, "no overlap with --jobs 1");
    }

    #[tokio::test]
    async fn first_failure_cancels_running_steps_and_removes_images() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let f = fixture(
            vec![
                step(d, "ok", &[]),
                step(d, "bad", &["ok"]),
                step(d, "slow", &[]),
                step(d, "after", &["bad"]),
            ],
            opts(4),
        );
        f.engine.on_build(
            "img/bad",
            FakeBuild {
                delay: Duration::from_millis(50),
                fail: Some("The command '/bin/sh -c false' returned a non-zero code: 1".into()),
            },
        );
        f.engine.on_build("img/slow", delay(10_000));
        let err = run(&f).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "step `bad` failed at `Step 1/1 : RUN fake`: The command '/bin/sh -c false' returned a non-zero code: 1\n  dockerfile: {}",
                d.join("Dockerfile").display()
            )
        );
        assert_eq!(err.code(), 1);
        let builds = f.engine.builds();
        let slow = builds.iter().find(|b| b.request.tag == "img/slow").unwrap();
        assert!(slow.finished.is_none(), "slow build was cancelled");
        assert!(!builds.iter().any(|b| b.request.tag == "img/after"));
        // The image of the step that succeeded is gone too.
        assert!(f.engine.images().is_empty());
        assert_eq!(f.engine.removed(), ["img/ok"]);
    }

    #[tokio::test]
    async fn cancellation_interrupts_with_the_signal_code() {
        let dir = tempfile::tempdir().unwrap();
        let f = fixture(vec![step(dir.path(), "a", &[])], opts(1));
        f.engine.on_build("img/a", delay(10_000));
        let cancel = CancellationToken::new();
        let signal = Arc::new(Mutex::new(Some(Signal::Terminate)));
        let trigger = cancel.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            trigger.cancel();
        });
        let err = f.runner.run(cancel, signal).await.unwrap_err();
        assert_eq!(err.to_string(), "interrupted by SIGTERM");
        assert_eq!(err.code(), 143);
    }

    #[tokio::test]
    async fn failing_command_passes_its_exit_code_through() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = step(dir.path(), "test", &[]);
        s.command = Some("./run-tests".into());
        let f = fixture(vec![s], opts(1));
        f.engine.on_run("img/test", 3);
        let err = run(&f).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "step `test`: command `./run-tests` exited with code 3"
        );
        assert_eq!(err.code(), 3);
        assert_eq!(f.engine.runs()[0].command, "./run-tests");
    }

    /// A BuildKit chain whose intermediate images nobody keeps is one
    /// build: the first steps are stages of the last one's Dockerfile.
    #[tokio::test]
    async fn a_buildkit_chain_folds_into_one_build_unless_keep_all() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut steps = Vec::new();
        for (label, text, deps) in [
            ("one", "FROM base\nRUN one\n", vec![]),
            ("two", "FROM img/one\nRUN two\n", vec!["one"]),
            ("three", "FROM img/two AS final\nRUN three\n", vec!["two"]),
        ] {
            let mut s = step(d, label, &deps);
            s.dockerfile_path = d.join(format!("Dockerfile.{label}"));
            std::fs::write(&s.dockerfile_path, text).unwrap();
            s.args.insert("SHARED".into(), "1".into());
            steps.push(s);
        }
        let options = BuildSettings {
            builder: crate::model::Builder::BuildKit,
            ..opts(2)
        };
        let f = fixture(steps.clone(), options.clone());
        let summary = run(&f).await.unwrap();
        let builds = f.engine.builds();
        assert_eq!(builds.len(), 1, "{builds:?}");
        let request = &builds[0].request;
        assert_eq!(request.tag, "img/three");
        assert_eq!(
            String::from_utf8_lossy(&request.extra_files[0].1),
            "FROM base AS habitus-fold-0\nRUN one\nFROM habitus-fold-0 AS habitus-fold-1\nRUN two\nFROM habitus-fold-1 AS final\nRUN three\n"
        );
        assert_eq!(request.build_args.len(), 1);
        let folded: Vec<_> = summary
            .steps
            .iter()
            .map(|s| (s.label.as_str(), s.folded_into.as_deref()))
            .collect();
        assert!(folded.contains(&("one", Some("three"))));
        assert!(folded.contains(&("two", Some("three"))));
        assert!(folded.contains(&("three", None)));

        // --keep-all: every step gets its image; the classic builder never
        // folds; steps whose arguments differ do not (arguments reach every
        // stage of a build): `one` is built alone, `two` folds into `three`.
        let mut other_args = steps.clone();
        other_args[1].args.insert("ONLY_LATER".into(), "2".into());
        other_args[2].args.insert("ONLY_LATER".into(), "2".into());
        let keep_all = BuildSettings {
            keep_all: true,
            ..options.clone()
        };
        for (steps, options, builds) in [
            (steps.clone(), keep_all, 3),
            (steps.clone(), opts(2), 3),
            (other_args, options.clone(), 2),
        ] {
            let f = fixture(steps, options);
            run(&f).await.unwrap();
            assert_eq!(f.engine.builds().len(), builds);
        }
    }

    #[tokio::test]
    async fn cli_build_args_win_and_uid_renames_images() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut a = step(d, "a", &[]);
        a.args.insert("X".into(), "from-yml".into());
        a.args.insert("Y".into(), "yml-only".into());
        a.keep = true;
        let mut options = opts(1);
        options.uid = Some("u1".into());
        options.build_args.insert("X".into(), "from-cli".into());
        options.image_labels = true;
        let mut b = step(d, "b", &["a"]);
        b.command = Some("true".into());
        let f = fixture(vec![a, b], options);
        run(&f).await.unwrap();
        let builds = f.engine.builds();
        let req = &builds[0].request;
        assert_eq!(req.tag, "img/a-u1");
        assert_eq!(req.build_args["X"], "from-cli");
        assert_eq!(req.build_args["Y"], "yml-only");
        assert_eq!(req.labels["habitus.uid"], "u1");
        assert_eq!(req.labels["habitus.step"], "a");
        // Only the containers habitus creates carry the container label.
        assert!(!req.labels.contains_key(LABEL_CONTAINER));
        let runs = f.engine.runs();
        assert_eq!(runs[0].labels[LABEL_CONTAINER], "b1");
        assert_eq!(runs[0].labels["habitus.build"], "b1");
        // `keep: true` keeps a non-leaf image.
        assert!(f.engine.images().contains("img/a-u1"));
    }

    #[tokio::test]
    async fn after_build_command_runs_only_when_allowed() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut s = step(d, "a", &[]);
        s.after_build_command = Some("echo ran > marker".into());
        let f = fixture(vec![s.clone()], opts(1));
        run(&f).await.unwrap();
        assert!(!d.join("marker").exists());

        let mut options = opts(1);
        options.after_build_commands = true;
        let f = fixture(vec![s.clone()], options.clone());
        run(&f).await.unwrap();
        assert_eq!(std::fs::read_to_string(d.join("marker")).unwrap(), "ran\n");

        s.after_build_command = Some("exit 4".into());
        let f = fixture(vec![s], options);
        let err = run(&f).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "step `a`: after_build_command `exit 4` exited with code 4"
        );
    }

    fn one_file_tar(name: &str, data: &[u8]) -> Vec<u8> {
        let mut builder = tar::Builder::new(Vec::new());
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o755);
        header.set_cksum();
        builder.append_data(&mut header, name, data).unwrap();
        builder.into_inner().unwrap()
    }

    #[tokio::test]
    async fn artifacts_reach_later_steps_and_are_removed_after_the_build() {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::create_dir(d.join("config")).unwrap();
        std::fs::write(d.join("config/mine"), "keep").unwrap();
        let mut a = step(d, "a", &[]);
        a.artifacts = vec![
            crate::manifest::Artifact {
                source: "/usr/bin/app".into(),
                dest: "".into(),
            },
            crate::manifest::Artifact {
                source: "/etc/app/conf".into(),
                dest: "config".into(),
            },
        ];
        let mut b = step(d, "b", &["a"]);
        b.after_build_command = Some("cat app config/conf > seen".into());
        let mut options = opts(1);
        options.after_build_commands = true;
        for keep_artifacts in [false, true] {
            options.keep_artifacts = keep_artifacts;
            let f = fixture(vec![a.clone(), b.clone()], options.clone());
            f.engine
                .on_archive("img/a", "/usr/bin/app", one_file_tar("app", b"bin;"));
            f.engine
                .on_archive("img/a", "/etc/app/conf", one_file_tar("conf", b"conf"));
            run(&f).await.unwrap();
            assert_eq!(std::fs::read_to_string(d.join("seen")).unwrap(), "bin;conf");
            assert_eq!(d.join("app").exists(), keep_artifacts);
            assert_eq!(d.join("config/conf").exists(), keep_artifacts);
            assert_eq!(
                std::fs::read_to_string(d.join("config/mine")).unwrap(),
                "keep"
            );
            // The container that served the archives is gone.
            assert!(f.engine.containers().is_empty());
            assert_eq!(f.engine.created_containers(), 1);
            let _ = std::fs::remove_file(d.join("app"));
            let _ = std::fs::remove_file(d.join("config/conf"));
        }
    }

    #[tokio::test]
    async fn a_missing_artifact_fails_the_step_and_no_cleanup_skips_cleanup() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = step(dir.path(), "a", &[]);
        a.artifacts = vec![crate::manifest::Artifact {
            source: "/nope".into(),
            dest: "".into(),
        }];
        let f = fixture(vec![a.clone()], opts(1));
        let err = run(&f).await.unwrap_err();
        assert_eq!(
            err.to_string(),
            "step `a`: artifact `/nope`: docker: Could not find the file /nope in container container-1"
        );
        assert!(f.engine.containers().is_empty());

        a.artifacts.clear();
        a.cleanup = vec!["rm -rf /root/.ssh".into()];
        let mut options = opts(1);
        options.no_cleanup = true;
        let f = fixture(vec![a], options);
        run(&f).await.unwrap();
        assert!(f.engine.execs().is_empty());
        assert_eq!(f.engine.created_containers(), 0);
    }

    #[tokio::test]
    async fn a_secret_in_a_produced_image_fails_the_build_and_removes_it() {
        use crate::manifest::SecretSpec;

        let dir = tempfile::tempdir().unwrap();
        let mut a = step(dir.path(), "a", &[]);
        // A name given with `tags:` goes with the image.
        a.tags = vec!["r.example/a:also".into(), "img/a:latest".into()];
        a.secrets.insert(
            "key".into(),
            SecretSpec {
                kind: crate::model::SecretKind::Env,
                value: "KEY".into(),
            },
        );
        let Fixture { engine, runner } = fixture(vec![a], opts(1));
        engine.on_save(
            "img/a",
            vec![("root/.ssh/id".into(), b"the-private-key-bytes".to_vec())],
        );
        let (settings, store) = env_secret("a", "key", b"the-private-key-bytes");
        let runner = runner.with_secrets(settings, store, true);
        let err = runner
            .run(CancellationToken::new(), Arc::new(Mutex::new(None)))
            .await
            .unwrap_err();
        assert_eq!(
            err.to_string(),
            "a secret reached an image:\n  img/a: secret `a: env/key` (raw) in layer 0 (l0) at `/root/.ssh/id`\nfix: fetch, use and delete the secret in one RUN, or pass --no-audit to build anyway"
        );
        assert!(!err.to_string().contains("the-private-key-bytes"));
        assert!(engine.images().is_empty(), "the leaking image is removed");
    }

    /// The secrets settings and store of one `env` secret of step `step`.
    fn env_secret(
        step: &str,
        name: &str,
        value: &[u8],
    ) -> (crate::secrets::Settings, crate::secrets::SecretStore) {
        let mut store = crate::secrets::SecretStore::default();
        store.insert(
            step,
            crate::secrets::provider::SecretKey {
                kind: crate::model::SecretKind::Env,
                name: name.into(),
            },
            Arc::new(crate::secrets::Secret::new(value.to_vec())),
        );
        let settings = crate::secrets::Settings {
            enabled: None,
            binding: None,
            port: 0,
            basic_auth: None,
            providers: vec![crate::model::SecretKind::Env],
            network_pool: crate::netpool::Pool::default(),
        };
        (settings, store)
    }

    /// A daemon elsewhere (its network's gateway is not an address of this
    /// host): the build stops before any step, naming `--binding`, and
    /// removes the network it made.
    #[tokio::test]
    async fn a_gateway_that_is_not_local_stops_the_build_naming_binding() {
        use crate::manifest::SecretSpec;

        let dir = tempfile::tempdir().unwrap();
        let mut a = step(dir.path(), "a", &[]);
        a.secrets.insert(
            "k".into(),
            SecretSpec {
                kind: crate::model::SecretKind::Env,
                value: "K".into(),
            },
        );
        let Fixture { engine, runner } = fixture(vec![a], opts(1));
        // TEST-NET-1: never an address of this host.
        engine.on_network_gateway("192.0.2.1");
        let (settings, store) = env_secret("a", "k", b"v");
        let runner = runner.with_secrets(settings, store, true);
        let error = runner
            .run(CancellationToken::new(), Arc::new(Mutex::new(None)))
            .await
            .unwrap_err();
        let err = format!("{error}\nhint: {}", error.hint().unwrap_or_default());
        assert!(
            err.starts_with("the build network's gateway `192.0.2.1` is not an address of this host, so the secrets server cannot listen on it: the Docker daemon runs elsewhere"),
            "{err}"
        );
        assert!(
            err.contains("\nhint: give --binding ADDR, an address of this host that the daemon's containers reach"),
            "{err}"
        );
        assert!(engine.builds().is_empty(), "no step ran");
        assert!(engine.networks().is_empty(), "the network is removed");
    }

    #[tokio::test]
    async fn steps_with_secrets_get_connection_args_on_the_build_network() {
        use crate::manifest::SecretSpec;

        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let mut a = step(d, "a", &[]);
        a.secrets.insert(
            "k".into(),
            SecretSpec {
                kind: crate::model::SecretKind::Env,
                value: "K".into(),
            },
        );
        let f = fixture(vec![a, step(d, "b", &["a"])], opts(1));
        let (settings, store) = env_secret("a", "k", b"v");
        let Fixture { engine, runner } = f;
        let runner = runner.with_secrets(settings, store, true);
        runner
            .run(CancellationToken::new(), Arc::new(Mutex::new(None)))
            .await
            .unwrap();
        let builds = engine.builds();
        let (a, b) = (&builds[0].request, &builds[1].request);
        assert_eq!(a.network_mode.as_deref(), Some("habitus-b1"));
        assert_eq!(b.network_mode.as_deref(), Some("habitus-b1"));
        assert_eq!(a.build_args["HABITUS_HOST"], "127.0.0.1");
        let port = &a.build_args["HABITUS_PORT"];
        assert_eq!(
            a.build_args["HABITUS_URL"],
            format!("https://127.0.0.1:{port}")
        );
        assert!(a.build_args["HABITUS_CA"].starts_with("-----BEGIN CERTIFICATE-----"));
        assert_eq!(a.build_args["HABITUS_TOKEN"].len(), 64);
        assert!(!b.build_args.keys().any(|k| k.starts_with("HABITUS_")));
        // Torn down: network removed, port closed.
        assert!(engine.networks().is_empty());
        assert_eq!(engine.removed_networks(), ["habitus-b1"]);
        let addr: std::net::SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
        assert!(tokio::net::TcpStream::connect(addr).await.is_err());
    }
}
