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

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use crate::config::BuildSettings;
use crate::dockerfile;
use crate::engine::{
    BuildRequest, Engine, EngineError, LineSink, MountLog, MountSecrets, RunRequest,
};
use crate::manifest::{Manifest, Step};
use crate::model::{Builder, LABEL_BUILD, LABEL_STEP, LABEL_UID};
use crate::plan::Plan;
use crate::progress::{Reporter, Severity, StepFinished};
use crate::secrets::redact::Redactor;
use crate::secrets::Settings;
pub mod report;
pub mod secrets;
use crate::secrets::SecretStore;
use secrets::{BuildSession, SecretsError, SessionOptions};

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
    #[error("{error}\nthe Docker daemon at `{address}` stopped answering during the build: {message}\nhint: it was stopped or restarted; once it is back, the next build (or `habitus prune`) removes what this one left")]
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
    /// Ctrl-C or SIGTERM.
    #[error("interrupted by {}", match signal { Signal::Interrupt => "SIGINT", Signal::Terminate => "SIGTERM", Signal::Hangup => "SIGHUP" })]
    Interrupted {
        /// Which signal.
        signal: Signal,
    },
}

impl BuildError {
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
    /// Artifacts copied to the host: (source in the image, where it
    /// landed, bytes of file data).
    pub artifacts: Vec<(String, PathBuf, u64)>,
    /// The step whose BuildKit build built this one as a stage (see
    /// `Runner::plan_folds`); the step then has no image of its own.
    pub folded_into: Option<String>,
}

/// What a build produced.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Finished steps, in the order they finished.
    pub steps: Vec<StepReport>,
    /// Images removed after the build.
    pub removed_images: Vec<String>,
    /// Secrets served: (step, `type/name`) → successful fetches.
    pub secrets_served: BTreeMap<(String, String), usize>,
    /// Images the post-build audit searched (none without secrets).
    pub audited_images: Vec<String>,
}

/// Runs one build.
pub struct Runner {
    engine: Arc<dyn Engine>,
    manifest: Arc<Manifest>,
    plan: Arc<Plan>,
    options: Arc<BuildSettings>,
    reporter: Arc<Reporter>,
    build_id: String,
    /// Step image name as written → unique name, for rewriting Dockerfiles.
    images: Arc<BTreeMap<String, String>>,
    /// Labels of the steps whose image this build has tagged.
    tagged: Arc<Mutex<BTreeSet<String>>>,
    /// Secrets to serve (set by [`Runner::with_secrets`]), and whether the
    /// TLS server runs; taken when the build starts.
    secrets: Mutex<Option<(Settings, SecretStore, bool)>>,
    /// The build's secrets, for BuildKit steps' secret mounts.
    mounts: Mutex<Option<Arc<SecretStore>>>,
    /// Hides secret values in the output of a build that has secrets.
    redactor: Mutex<Option<Redactor>>,
    /// Step label → the label of the step that builds it as a stage.
    folds: Mutex<Arc<BTreeMap<String, String>>>,
    /// The running secrets side of the build, while it runs.
    session: Mutex<Option<Arc<BuildSession>>>,
    /// Searches the images of a build that served secrets for them.
    audit: Mutex<Option<Arc<crate::audit::Scanner>>>,
    /// Successful secret fetches: (step, `type/name`) → count.
    served: Arc<Mutex<BTreeMap<(String, String), usize>>>,
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
            tagged: Arc::default(),
            secrets: Mutex::new(None),
            mounts: Mutex::new(None),
            redactor: Mutex::new(None),
            folds: Mutex::default(),
            session: Mutex::new(None),
            audit: Mutex::new(None),
            served: Arc::default(),
            owner: Arc::new(crate::owner::Owner::current().labels(std::time::SystemTime::now())),
        }
    }

    /// Serves `store` to the steps that declare secrets: BuildKit steps
    /// mount them; with `server`, the build also gets its own network and a
    /// TLS secrets server on it (see [`crate::secrets::session`]).
    pub fn with_secrets(self, settings: Settings, store: SecretStore, server: bool) -> Runner {
        *lock(&self.secrets) = Some((settings, store, server));
        self
    }

    /// Number of steps in the build.
    pub fn step_count(&self) -> usize {
        self.plan.len()
    }

    /// Step labels in file order.
    pub fn step_labels(&self) -> Vec<&str> {
        self.manifest
            .steps
            .iter()
            .map(|s| s.label.as_str())
            .collect()
    }

    /// `(label, depends_on)` of every step, in file order.
    pub fn steps(&self) -> Vec<(String, Vec<String>)> {
        self.manifest
            .steps
            .iter()
            .map(|s| (s.label.clone(), s.depends_on.clone()))
            .collect()
    }

    /// The id that labels this build's objects.
    pub fn build_id(&self) -> &str {
        &self.build_id
    }

    /// The engine the build runs on.
    pub fn engine(&self) -> Arc<dyn Engine> {
        Arc::clone(&self.engine)
    }

    /// The unique image name of step `label`.
    pub fn image_of(&self, step: &Step) -> String {
        self.images[&step.name].clone()
    }

    /// Runs the whole build. `cancel` is triggered on Ctrl-C/SIGTERM, with
    /// the signal stored in `signal`.
    pub async fn run(
        &self,
        cancel: CancellationToken,
        signal: Arc<std::sync::Mutex<Option<Signal>>>,
    ) -> Result<Summary, BuildError> {
        let host_artifacts = crate::artifacts::HostArtifacts::before_build(
            &self.manifest.workdir,
            &self.manifest.steps,
        );
        if let Some(error) = self.start_secrets().await {
            return Err(error);
        }
        *lock(&self.folds) = Arc::new(self.plan_folds().await);
        let result = self.schedule(&cancel, &signal).await;
        let mut summary = match &result {
            Ok(summary) => summary.clone(),
            Err((summary, _)) => summary.clone(),
        };
        if result.is_ok() {
            let sizes = futures_util::future::join_all(
                summary
                    .steps
                    .iter()
                    .filter(|s| s.folded_into.is_none())
                    .map(|s| self.engine.inspect_image(&s.image)),
            )
            .await;
            let built = summary.steps.iter_mut().filter(|s| s.folded_into.is_none());
            for (step, info) in built.zip(sizes) {
                step.size = info.ok().flatten().map(|i| i.size);
            }
        }
        let tagged = lock(&self.tagged).clone();
        summary.removed_images = self.teardown(&tagged, result.is_ok()).await;
        summary.secrets_served = lock(&self.served).clone();
        if lock(&self.audit).is_some() {
            summary.audited_images = summary
                .steps
                .iter()
                .filter(|s| s.folded_into.is_none())
                .filter(|s| !summary.removed_images.contains(&s.image))
                .map(|s| s.image.clone())
                .collect();
        }
        let result = match result {
            Ok(summary_ok) => match self.audit_images(&summary).await {
                Ok(()) => Ok(summary_ok),
                Err(error) => Err((summary.clone(), error)),
            },
            Err(e) => Err(e),
        };
        if !self.options.keep_artifacts {
            self.remove_artifacts(&host_artifacts);
        }
        self.stop_secrets().await;
        match result {
            Ok(_) => Ok(summary),
            Err((_, error)) => Err(error),
        }
    }

    async fn schedule(
        &self,
        cancel: &CancellationToken,
        signal: &std::sync::Mutex<Option<Signal>>,
    ) -> Result<Summary, (Summary, BuildError)> {
        let plan = &self.plan;
        let position: Vec<usize> = {
            let mut pos = vec![0; plan.len()];
            for (p, &i) in plan.order().iter().enumerate() {
                pos[i] = p;
            }
            pos
        };
        let mut waiting: Vec<usize> = (0..plan.len()).map(|i| plan.deps(i).len()).collect();
        let mut ready: VecDeque<usize> = plan
            .order()
            .iter()
            .copied()
            .filter(|&i| waiting[i] == 0)
            .collect();
        let mut tasks: JoinSet<(usize, Result<StepReport, BuildError>)> = JoinSet::new();
        let mut task_step = BTreeMap::new();
        let mut summary = Summary::default();
        let mut failure: Option<BuildError> = None;
        let jobs = self.options.jobs.max(1);

        loop {
            while failure.is_none() && tasks.len() < jobs {
                let Some(i) = ready.pop_front() else { break };
                let step = self.manifest.steps[i].clone();
                for &d in plan.deps(i) {
                    debug_assert!(waiting[d] == 0);
                }
                let ctx = self.step_context();
                let handle = tasks.spawn(async move { (i, ctx.build_step(step).await) });
                task_step.insert(handle.id(), i);
            }
            if tasks.is_empty() {
                break;
            }
            tokio::select! {
                biased;
                _ = cancel.cancelled(), if failure.is_none() => {
                    let sig = signal
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .unwrap_or(Signal::Interrupt);
                    self.reporter.message(Severity::Warning, "interrupted: stopping every running step");
                    failure = Some(BuildError::Interrupted { signal: sig });
                    tasks.abort_all();
                }
                joined = tasks.join_next_with_id() => {
                    let Some(joined) = joined else { continue };
                    match joined {
                        Ok((_, (i, Ok(report)))) => {
                            summary.steps.push(report);
                            let mut newly: Vec<usize> = Vec::new();
                            for &d in plan.dependents(i) {
                                waiting[d] -= 1;
                                if waiting[d] == 0 {
                                    newly.push(d);
                                }
                            }
                            ready.extend(newly);
                            ready.make_contiguous().sort_by_key(|&s| position[s]);
                        }
                        Ok((_, (_, Err(error)))) => {
                            if failure.is_none() {
                                failure = Some(error);
                                tasks.abort_all();
                            }
                        }
                        Err(join_error) => {
                            if join_error.is_panic() && failure.is_none() {
                                let i = task_step.get(&join_error.id()).copied().unwrap_or(0);
                                failure = Some(BuildError::Panic {
                                    step: plan.label(i).to_string(),
                                    message: panic_message(join_error.into_panic()),
                                });
                                tasks.abort_all();
                            }
                        }
                    }
                }
            }
        }
        match failure {
            None => Ok(summary),
            Some(error) => Err((summary, error)),
        }
    }

    /// Removes the artifacts this build created on the host (never what
    /// was there before it). Errors are reported, never raised.
    fn remove_artifacts(&self, host: &crate::artifacts::HostArtifacts) {
        let (removed, errors) = host.remove();
        for path in removed {
            self.reporter.message(
                Severity::Debug,
                &format!("removed artifact `{}`", path.display()),
            );
        }
        for (path, e) in errors {
            self.reporter.message(
                Severity::Warning,
                &format!("could not remove artifact `{}`: {e}", path.display()),
            );
        }
    }

    /// After a build that served secrets: searches every image it produced
    /// and kept for them. A hit fails the build and removes the image
    /// (unless `--keep-all`).
    async fn audit_images(&self, summary: &Summary) -> Result<(), BuildError> {
        let Some(scanner) = lock(&self.audit).clone() else {
            return Ok(());
        };
        let mut hits = Vec::new();
        for step in &summary.steps {
            if step.folded_into.is_some() || summary.removed_images.contains(&step.image) {
                continue;
            }
            let audit =
                match crate::audit::audit_image(&*self.engine, &step.image, Arc::clone(&scanner))
                    .await
                {
                    Ok(audit) => audit,
                    Err(e) => {
                        // What the audit could not read it could not clear: the
                        // image goes, as it would on a hit.
                        if !self.options.keep_all {
                            let _ = self.engine.remove_image(&step.image, true, false).await;
                        }
                        return Err(BuildError::Audit {
                            message: e.to_string(),
                        });
                    }
                };
            self.reporter.step(
                Severity::Info,
                &step.label,
                &format!(
                    "audit: {} layer(s) ({} read to their end) and the config of `{}` searched, {} secret occurrence(s)",
                    audit.layers,
                    human_size(i64::try_from(audit.bytes).unwrap_or(i64::MAX)),
                    step.image,
                    audit.hits.len()
                ),
            );
            self.reporter.event(
                "audit_finished",
                serde_json::json!({
                    "step": step.label,
                    "image": step.image,
                    "layers": audit.layers,
                    "bytes": audit.bytes,
                    "hits": audit.hits,
                }),
            );
            if audit.hits.is_empty() {
                continue;
            }
            for hit in &audit.hits {
                let line = hit.describe(&step.image);
                self.reporter.step(Severity::Error, &step.label, &line);
                hits.push(line);
            }
            if !self.options.keep_all {
                let _ = self.engine.remove_image(&step.image, true, false).await;
            }
        }
        if hits.is_empty() {
            Ok(())
        } else {
            Err(BuildError::Leak { hits })
        }
    }

    /// Steps that BuildKit builds as a stage of the next step's build
    /// instead of as an image of their own: label → label of that step.
    ///
    /// With BuildKit every step's image costs an export (on this kind of
    /// storage, most of a trivial step's time), but an image that only
    /// the next step's `FROM` uses and that the build removes at its end
    /// need not exist. Step `x` folds into `y` when both build with
    /// BuildKit from the same context; `y` is `x`'s only dependent and `x`
    /// `y`'s only dependency, and `y`'s Dockerfile refers to `x`'s image;
    /// `x` has one unnamed stage and no artifacts, cleanup, command,
    /// `keep`, `target`, secrets or `ssh`; `y` declares no secrets or
    /// cleanup; both have the same `no_cache` and `args`; `y`'s
    /// Dockerfile can follow another one (see [`dockerfile::appendable`]);
    /// and `--keep-all` is off. Chains fold whole.
    async fn plan_folds(&self) -> BTreeMap<String, String> {
        let mut folds = BTreeMap::new();
        if self.options.keep_all {
            return folds;
        }
        let steps = &self.manifest.steps;
        let buildkit = |s: &Step| s.builder.unwrap_or(self.options.builder) == Builder::BuildKit;
        for (i, x) in steps.iter().enumerate() {
            let [j] = self.plan.dependents(i) else {
                continue;
            };
            let y = &steps[*j];
            let shape = buildkit(x)
                && buildkit(y)
                && self.plan.deps(*j) == [i]
                && x.artifacts.is_empty()
                && x.cleanup.is_empty()
                && x.command.is_none()
                && x.after_build_command.is_none()
                && !x.keep
                && x.target.is_none()
                && x.secrets.is_empty()
                && !x.ssh
                && y.secrets.is_empty()
                && y.cleanup.is_empty()
                && x.context == y.context
                && x.no_cache == y.no_cache
                // Build arguments reach every stage of a build.
                && x.args == y.args;
            if !shape {
                continue;
            }
            let (Ok(x_text), Ok(y_text)) = (
                crate::workpath::read_inside(&self.manifest.workdir, &x.dockerfile_path).await,
                crate::workpath::read_inside(&self.manifest.workdir, &y.dockerfile_path).await,
            ) else {
                continue;
            };
            let single = dockerfile::name_single_stage(&x_text, "habitus-fold")
                .is_ok_and(|named| named.is_some());
            let follows = dockerfile::appendable(&y_text).unwrap_or(false);
            let uses = dockerfile::rewrite(&y_text, &self.images)
                .is_ok_and(|r| r.references.contains(&x.name));
            if single && follows && uses {
                folds.insert(x.label.clone(), y.label.clone());
            }
        }
        folds
    }

    /// Starts the secrets side of the build, if there is one.
    async fn start_secrets(&self) -> Option<BuildError> {
        let (settings, store, server) = lock(&self.secrets).take()?;
        *lock(&self.redactor) = Some(Redactor::new(store.values().iter()));
        *lock(&self.mounts) = Some(Arc::new(store.clone()));
        if !self.options.no_audit && !store.is_empty() {
            // Each secret once, named `type/name` (never by its value).
            let mut named: BTreeMap<String, Arc<crate::secrets::Secret>> = BTreeMap::new();
            for step in store.steps() {
                for (key, secret) in store.of_step(step) {
                    named.entry(key.path()).or_insert(secret);
                }
            }
            // `expose`: the audit searches the produced images for these
            // values; the scanner lives until the build ends.
            let (scanner, skipped) = crate::audit::Scanner::new(
                named
                    .iter()
                    .map(|(name, secret)| (name.as_str(), secret.expose())),
            );
            for name in skipped {
                self.reporter.message(
                    Severity::Warning,
                    &format!(
                        "secret `{name}` is shorter than {} bytes: the audit cannot search for it reliably",
                        crate::audit::MIN_SECRET_LEN
                    ),
                );
            }
            *lock(&self.audit) = Some(Arc::new(scanner));
        }
        let reporter = Arc::clone(&self.reporter);
        let served = Arc::clone(&self.served);
        let log = Arc::new(move |record: &crate::secrets::server::AccessRecord| {
            reporter.message(Severity::Info, &record.to_string());
            reporter.event(
                "secret_fetched",
                serde_json::json!({
                    "step": record.step,
                    "path": record.path,
                    "peer": record.peer.to_string(),
                    "status": record.status,
                }),
            );
            if record.status == 200 {
                let secret = record
                    .path
                    .strip_prefix("/v1/secrets/")
                    .unwrap_or(&record.path)
                    .to_string();
                let step = record.step.clone().unwrap_or_default();
                *lock(&served).entry((step, secret)).or_default() += 1;
            }
        });
        if !server {
            return None;
        }
        let options = SessionOptions {
            build_id: &self.build_id,
            uid: self.options.uid.as_deref(),
            user_network: self.options.network.as_deref(),
            settings: &settings,
            store,
            owner: (*self.owner).clone(),
        };
        match BuildSession::start(&*self.engine, options, log).await {
            Ok(session) => {
                self.reporter.message(
                    Severity::Info,
                    &format!(
                        "secrets server listening on {} (steps build on network `{}`)",
                        session.url(),
                        session.network_mode()
                    ),
                );
                *lock(&self.session) = Some(Arc::new(session));
                None
            }
            Err(e) => Some(BuildError::Secrets(e)),
        }
    }

    /// Stops the secrets server and removes the build's network.
    async fn stop_secrets(&self) {
        let Some(session) = lock(&self.session).take() else {
            return;
        };
        match session.stop(&*self.engine).await {
            Ok(()) => self.reporter.message(
                Severity::Info,
                &format!(
                    "secrets server on {} stopped{}",
                    session.url(),
                    session
                        .created_network()
                        .map(|n| format!("; network `{n}` removed"))
                        .unwrap_or_default()
                ),
            ),
            Err(e) => self.reporter.message(
                Severity::Warning,
                &format!("secrets server stopped, but the build's network remains: {e}"),
            ),
        }
    }

    fn step_context(&self) -> StepContext {
        StepContext {
            engine: Arc::clone(&self.engine),
            manifest: Arc::clone(&self.manifest),
            options: Arc::clone(&self.options),
            reporter: Arc::clone(&self.reporter),
            build_id: self.build_id.clone(),
            images: Arc::clone(&self.images),
            tagged: Arc::clone(&self.tagged),
            session: lock(&self.session).clone(),
            mounts: lock(&self.mounts).clone(),
            redactor: lock(&self.redactor).clone(),
            folds: lock(&self.folds).clone(),
            served: Arc::clone(&self.served),
            owner: Arc::clone(&self.owner),
        }
    }

    /// Sweeps this build's containers and removes the images it no longer
    /// needs. Errors are reported, never raised: they must not hide the
    /// build's own result.
    async fn teardown(&self, tagged: &BTreeSet<String>, success: bool) -> Vec<String> {
        match self
            .engine
            .remove_containers_with_label(LABEL_BUILD, &self.build_id)
            .await
        {
            Ok(0) => {}
            Ok(n) => self.reporter.message(
                Severity::Debug,
                &format!("removed {n} leftover container(s) of this build"),
            ),
            Err(e) => self.reporter.message(
                Severity::Warning,
                &format!("could not sweep this build's containers: {e}"),
            ),
        }
        let mut removed = Vec::new();
        if self.options.keep_all {
            return removed;
        }
        // Remove dependents before their bases: reverse topological order.
        for &i in self.plan.order().iter().rev() {
            let step = &self.manifest.steps[i];
            if !tagged.contains(&step.label) || step.keep {
                continue;
            }
            let is_leaf = self.plan.dependents(i).is_empty();
            if success && is_leaf {
                continue;
            }
            let image = self.image_of(step);
            match self
                .engine
                .remove_image(&image, self.options.force_rmi, self.options.noprune_rmi)
                .await
            {
                Ok(()) => {
                    self.reporter.step(
                        Severity::Debug,
                        &step.label,
                        &format!("removed image `{image}`"),
                    );
                    removed.push(image);
                }
                Err(e) => self.reporter.step(
                    Severity::Warning,
                    &step.label,
                    &format!("could not remove image `{image}`: {e}"),
                ),
            }
        }
        removed
    }
}

/// Refuses a Dockerfile `text` of `step` that mounts a secret the step
/// does not declare, mounts the SSH agent without `ssh: true`, or mounts
/// either while the step builds with the classic builder (`builder`):
/// checked before anything is sent to the daemon, and by `habitus check`.
pub fn check_mounts(step: &Step, builder: Builder, text: &str) -> Result<(), BuildError> {
    let error = |line: usize, message: String| BuildError::Dockerfile {
        step: step.label.clone(),
        dockerfile: step.dockerfile_path.clone(),
        message: format!("line {line}: {message}"),
    };
    let mounts = dockerfile::secret_mounts(text).map_err(|e| BuildError::Dockerfile {
        step: step.label.clone(),
        dockerfile: step.dockerfile_path.clone(),
        message: e.to_string(),
    })?;
    let ssh = dockerfile::ssh_mounts(text).map_err(|e| BuildError::Dockerfile {
        step: step.label.clone(),
        dockerfile: step.dockerfile_path.clone(),
        message: e.to_string(),
    })?;
    for (line, id) in ssh {
        if builder == Builder::Legacy {
            return Err(error(
                line,
                "`RUN --mount=type=ssh` needs BuildKit\nhint: build with `--builder buildkit`, or set `builder: buildkit` on the step in build.yml".into(),
            ));
        }
        if !step.ssh {
            return Err(error(
                line,
                format!("mounts the SSH agent, but step `{}` does not forward it\nhint: set `ssh: true` on the step in build.yml; its `RUN --mount=type=ssh` then reach the agent of SSH_AUTH_SOCK", step.label),
            ));
        }
        if id != "default" {
            return Err(error(
                line,
                format!("mounts SSH agent `{id}`: habitus forwards one agent, `default`\nhint: leave `id=` out of the mount"),
            ));
        }
    }
    for mount in mounts {
        if builder == Builder::Legacy {
            return Err(error(
                mount.line,
                "`RUN --mount=type=secret` needs BuildKit\nhint: build with `--builder buildkit`, or set `builder: buildkit` on the step in build.yml".into(),
            ));
        }
        let Some(id) = mount.id else { continue };
        if !step.secrets.contains_key(&id) {
            let declared = if step.secrets.is_empty() {
                "it declares none".to_string()
            } else {
                format!(
                    "it declares {}",
                    step.secrets
                        .keys()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            return Err(error(
                mount.line,
                format!(
                    "mounts secret `{id}`, which step `{}` does not declare ({declared})\nhint: add `{id}` under the step's `secrets:` in build.yml (`type: file` or `env`)",
                    step.label
                ),
            ));
        }
    }
    Ok(())
}

/// The SSH agent socket of SSH_AUTH_SOCK, for step `step` that forwards it.
fn ssh_agent(step: &Step) -> Result<PathBuf, BuildError> {
    match std::env::var_os("SSH_AUTH_SOCK").filter(|v| !v.is_empty()) {
        Some(path) => Ok(PathBuf::from(path)),
        None => Err(BuildError::Dockerfile {
            step: step.label.clone(),
            dockerfile: step.dockerfile_path.clone(),
            message: "the step forwards the SSH agent (`ssh: true`), but SSH_AUTH_SOCK is not set\nhint: start an agent and add a key (`eval \"$(ssh-agent)\"; ssh-add`), then run habitus from that shell".into(),
        }),
    }
}

/// The stage name of the `n`th step folded into a build.
fn fold_alias(n: usize) -> String {
    format!("habitus-fold-{n}")
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_string())
}

/// What one step's task needs; cheap to clone.
struct StepContext {
    engine: Arc<dyn Engine>,
    manifest: Arc<Manifest>,
    options: Arc<BuildSettings>,
    reporter: Arc<Reporter>,
    build_id: String,
    images: Arc<BTreeMap<String, String>>,
    tagged: Arc<Mutex<BTreeSet<String>>>,
    session: Option<Arc<BuildSession>>,
    /// The build's secrets, for BuildKit steps' secret mounts.
    mounts: Option<Arc<SecretStore>>,
    redactor: Option<Redactor>,
    /// Step label → the label of the step that builds it as a stage.
    folds: Arc<BTreeMap<String, String>>,
    /// Successful secret fetches: (step, `type/name`) → count.
    served: Arc<Mutex<BTreeMap<(String, String), usize>>>,
    /// Ownership labels for containers (see [`crate::owner`]).
    owner: Arc<BTreeMap<String, String>>,
}

impl StepContext {
    /// The labels of a container this step makes: the image labels and
    /// who owns it, so that a later build can sweep it if this one dies.
    fn container_labels(&self, step: &Step) -> BTreeMap<String, String> {
        let mut labels = (*self.owner).clone();
        labels.extend(self.labels(step));
        labels
    }

    fn labels(&self, step: &Step) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::new();
        labels.insert(LABEL_BUILD.to_string(), self.build_id.clone());
        labels.insert(LABEL_STEP.to_string(), step.label.clone());
        if let Some(uid) = &self.options.uid {
            labels.insert(LABEL_UID.to_string(), uid.clone());
        }
        labels
    }

    fn sink(&self, label: &str) -> LineSink {
        self.sink_with(label, self.redactor.clone())
    }

    fn sink_with(&self, label: &str, redactor: Option<Redactor>) -> LineSink {
        let reporter = Arc::clone(&self.reporter);
        let label = label.to_string();
        match &redactor {
            // Secret values never reach the terminal.
            Some(redactor) => {
                let redactor = redactor.clone();
                Arc::new(move |line: &str| reporter.step_output(&label, &redactor.redact(line)))
            }
            None => Arc::new(move |line: &str| reporter.step_output(&label, line)),
        }
    }

    /// The secrets `step` declares, by name, for its secret mounts; each
    /// request is logged and counted like a fetch from the server.
    fn mounts_of(&self, step: &Step) -> MountSecrets {
        let Some(store) = &self.mounts else {
            return MountSecrets::default();
        };
        let declared = store.of_step(&step.label);
        let paths: BTreeMap<String, String> = declared
            .keys()
            .map(|key| (key.name.clone(), key.path()))
            .collect();
        let secrets = declared
            .into_iter()
            .map(|(key, secret)| (key.name, secret))
            .collect();
        let reporter = Arc::clone(&self.reporter);
        let served = Arc::clone(&self.served);
        let label = step.label.clone();
        let on_fetch: MountLog = Arc::new(move |id: &str, ok: bool| {
            let path = paths.get(id).cloned();
            let status = if ok { 200 } else { 404 };
            reporter.message(
                Severity::Info,
                &format!(
                    "secret mount `{id}` of step `{label}`: {}",
                    if ok {
                        "served"
                    } else {
                        "refused (not declared)"
                    }
                ),
            );
            reporter.event(
                "secret_fetched",
                serde_json::json!({
                    "step": label,
                    "path": path.clone().unwrap_or_else(|| id.to_string()),
                    "via": "mount",
                    "status": status,
                }),
            );
            if let (true, Some(path)) = (ok, path) {
                *lock(&served).entry((label.clone(), path)).or_default() += 1;
            }
        });
        MountSecrets {
            secrets,
            on_fetch: Some(on_fetch),
        }
    }

    /// The report of a step that another step's build builds as a stage.
    fn folded(&self, step: &Step, into: &str, started: Instant) -> StepReport {
        // The step that builds the whole chain.
        let mut into = into;
        while let Some(next) = self.folds.get(into) {
            into = next;
        }
        let what = format!("stage of `{into}`");
        self.reporter.step(
            Severity::Info,
            &step.label,
            &format!(
                "built by step `{into}` as a stage of its BuildKit build: nothing needs this step's image after the build, so it is not exported"
            ),
        );
        self.reporter
            .step_started(&step.label, &what, &step.dockerfile);
        self.reporter.step_finished(&StepFinished {
            label: &step.label,
            image: &what,
            image_id: "",
            duration: started.elapsed(),
            cached: 0,
            total: 0,
        });
        StepReport {
            label: step.label.clone(),
            image: String::new(),
            image_id: String::new(),
            size: None,
            duration: started.elapsed(),
            cached_steps: 0,
            total_steps: 0,
            artifacts: Vec::new(),
            folded_into: Some(into.to_string()),
        }
    }

    /// The steps folded into step `label`, the first of the chain first.
    fn folded_chain(&self, label: &str) -> Vec<Step> {
        let mut chain = Vec::new();
        let mut current = label.to_string();
        while let Some((from, _)) = self.folds.iter().find(|(_, into)| **into == current) {
            match self.manifest.steps.iter().find(|s| &s.label == from) {
                Some(step) => chain.push(step.clone()),
                None => break,
            }
            current = from.clone();
        }
        chain.reverse();
        chain
    }

    async fn build_step(&self, step: Step) -> Result<StepReport, BuildError> {
        let started = Instant::now();
        let image = self.images[&step.name].clone();
        let label = step.label.clone();
        if let Some(into) = self.folds.get(&label) {
            return Ok(self.folded(&step, into, started));
        }
        self.reporter.step(
            Severity::Info,
            &label,
            &format!(
                "building `{image}` from `{}` (context `{}`)",
                step.dockerfile,
                step.context.display()
            ),
        );
        self.reporter.step_started(&label, &image, &step.dockerfile);

        let source = crate::workpath::read_inside(&self.manifest.workdir, &step.dockerfile_path)
            .await
            .map_err(|e| BuildError::Dockerfile {
                step: label.clone(),
                dockerfile: step.dockerfile_path.clone(),
                message: e.to_string(),
            })?;
        let builder = step.builder.unwrap_or(self.options.builder);
        if step.ssh && builder == Builder::Legacy {
            return Err(BuildError::Dockerfile {
                step: label.clone(),
                dockerfile: step.dockerfile_path.clone(),
                message: "`ssh: true` forwards the SSH agent to BuildKit's `RUN --mount=type=ssh`; the classic builder cannot\nhint: set `builder: buildkit` on the step, or build with `--builder buildkit`".into(),
            });
        }
        // Steps folded into this one come first, as named stages, and
        // this step's Dockerfile refers to the last of them.
        let chain = self.folded_chain(&label);
        let mut images = Arc::clone(&self.images);
        if !chain.is_empty() {
            let names = Arc::make_mut(&mut images);
            for (n, s) in chain.iter().enumerate() {
                names.insert(s.name.clone(), fold_alias(n));
            }
        }
        let mut stages = String::new();
        for (n, s) in chain.iter().enumerate() {
            let error = |message: String| BuildError::Dockerfile {
                step: s.label.clone(),
                dockerfile: s.dockerfile_path.clone(),
                message,
            };
            let text = crate::workpath::read_inside(&self.manifest.workdir, &s.dockerfile_path)
                .await
                .map_err(|e| error(e.to_string()))?;
            let text = dockerfile::rewrite(&text, &images)
                .map_err(|e| error(e.to_string()))?
                .text;
            check_mounts(s, builder, &text)?;
            let named = dockerfile::name_single_stage(&text, &fold_alias(n))
                .ok()
                .flatten()
                .ok_or_else(|| {
                    error("changed during the build: it has more than one stage now".into())
                })?;
            stages.push_str(&named);
            if !stages.ends_with('\n') {
                stages.push('\n');
            }
        }
        if !chain.is_empty() {
            self.reporter.step(
                Severity::Info,
                &label,
                &format!(
                    "builds {} as stage(s) of this BuildKit build",
                    chain
                        .iter()
                        .map(|s| format!("`{}`", s.label))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
        let rewritten =
            dockerfile::rewrite(&source, &images).map_err(|e| BuildError::Dockerfile {
                step: label.clone(),
                dockerfile: step.dockerfile_path.clone(),
                message: e.to_string(),
            })?;
        check_mounts(&step, builder, &rewritten.text)?;
        let keep = (!step.cleanup.is_empty())
            .then(|| crate::cleanup::keep_for(&rewritten.text, step.target.as_deref()));
        let mut build_args = BTreeMap::new();
        for s in &chain {
            build_args.extend(s.args.clone());
        }
        build_args.extend(step.args.clone());
        build_args.extend(self.options.build_args.clone());
        // The step's token lives until `grant` drops: right after the
        // build, or when the step is cancelled.
        let grant = self
            .session
            .as_ref()
            .map(|s| s.grant(&label, !step.secrets.is_empty()));
        if let Some(grant) = &grant {
            build_args.extend(grant.build_args.clone());
        }
        let context_dir =
            crate::workpath::confine(&self.manifest.workdir, &step.context).map_err(|e| {
                BuildError::Context {
                    step: label.clone(),
                    context: step.context.clone(),
                    message: e.to_string(),
                }
            })?;
        let dockerfile_name = format!(".habitus-{}-{}.Dockerfile", self.build_id, label);
        let request = BuildRequest {
            tag: image.clone(),
            context_dir,
            extra_files: vec![(
                dockerfile_name.clone(),
                format!("{stages}{}", rewritten.text).into_bytes(),
            )],
            dockerfile: dockerfile_name,
            target: step.target.clone(),
            build_args,
            no_cache: self.options.no_cache || step.no_cache,
            rm: self.options.rm,
            // `--rm` (the default) also removes the container of a failed
            // instruction, so that a failed build leaves nothing behind;
            // `--rm=false` keeps them all for debugging.
            force_rm: self.options.force_rm || self.options.rm,
            // BuildKit cannot run `RUN` on the build's own network; its
            // steps mount their secrets instead.
            network_mode: match (&self.session, builder) {
                (Some(session), Builder::Legacy) => Some(session.network_mode().to_string()),
                _ => self.options.network.clone(),
            },
            memory: self.options.memory,
            cpuset_cpus: self.options.cpuset_cpus.clone(),
            cpu_shares: self.options.cpu_shares,
            labels: if self.options.image_labels {
                self.labels(&step)
            } else {
                BTreeMap::new()
            },
            builder,
            ssh_agent: match (builder, step.ssh) {
                (Builder::BuildKit, true) => Some(ssh_agent(&step)?),
                _ => None,
            },
            mounts: match builder {
                Builder::BuildKit => self.mounts_of(&step),
                Builder::Legacy => MountSecrets::default(),
            },
        };
        // BuildKit names each `RUN` with its build arguments expanded:
        // the step's token must not show.
        let step_redactor = match &grant {
            Some(grant) => {
                let credentials: Vec<&str> = ["HABITUS_TOKEN", "habitus_password"]
                    .iter()
                    .filter_map(|k| grant.build_args.get(*k).map(String::as_str))
                    .collect();
                let redactor = self.redactor.clone().unwrap_or_default();
                Some(redactor.with_values(&credentials))
            }
            None => self.redactor.clone(),
        };
        let sink = self.sink_with(&label, step_redactor.clone());
        let built = self.engine.build(request, sink).await;
        drop(grant);
        let redact = |text: String| match &step_redactor {
            Some(redactor) => redactor.redact(&text),
            None => text,
        };
        let built = built.map_err(|e| match e {
            EngineError::BuildFailed {
                instruction,
                message,
            } => {
                // A failure in a folded step's stage is that step's.
                let failed = instruction.as_deref().and_then(|i| {
                    chain
                        .iter()
                        .enumerate()
                        .find(|(n, _)| i.starts_with(&format!("[{} ", fold_alias(*n))))
                        .map(|(_, s)| s)
                });
                BuildError::Step {
                    step: failed.map_or(label.clone(), |s| s.label.clone()),
                    dockerfile: failed
                        .map_or(step.dockerfile_path.clone(), |s| s.dockerfile_path.clone()),
                    instruction: instruction.map(redact),
                    message: redact(message),
                }
            }
            other => BuildError::Engine {
                step: label.clone(),
                source: other,
            },
        })?;
        // From here on the tag points at this build's image: teardown
        // removes it if the build fails.
        lock(&self.tagged).insert(label.clone());
        let mut image_id = built.id.clone();

        let mut copied = Vec::new();
        if !step.artifacts.is_empty() {
            let reporter = Arc::clone(&self.reporter);
            let step_label = label.clone();
            let extracted = crate::artifacts::copy(
                Arc::clone(&self.engine),
                &image,
                self.container_labels(&step),
                &self.manifest.workdir,
                &step.artifacts,
                Arc::new(move |line: &str| reporter.step(Severity::Info, &step_label, line)),
            )
            .await
            .map_err(|e| BuildError::Artifact {
                step: label.clone(),
                source: e,
            })?;
            for (artifact, extracted) in step.artifacts.iter().zip(extracted) {
                // Where it landed: the destination folder and the
                // source's base name.
                let dest = crate::artifacts::destination(&self.manifest.workdir, artifact).join(
                    artifact
                        .source
                        .trim_end_matches('/')
                        .rsplit('/')
                        .next()
                        .unwrap_or(""),
                );
                self.reporter.event(
                    "artifact_copied",
                    serde_json::json!({
                        "step": label,
                        "source": artifact.source,
                        "dest": dest,
                        "files": extracted.files,
                        "bytes": extracted.bytes,
                    }),
                );
                copied.push((artifact.source.clone(), dest, extracted.bytes));
            }
        }

        if let Some(keep) = keep {
            if self.options.no_cleanup {
                self.reporter
                    .step(Severity::Info, &label, "cleanup skipped (--no-cleanup)");
            } else {
                crate::cleanup::run(
                    Arc::clone(&self.engine),
                    &image,
                    self.container_labels(&step),
                    &step.cleanup,
                    keep,
                    self.sink(&label),
                )
                .await
                .map_err(|e| BuildError::Cleanup {
                    step: label.clone(),
                    source: e,
                })?;
                if let Ok(Some(info)) = self.engine.inspect_image(&image).await {
                    image_id = info.id;
                }
            }
        }

        if let Some(command) = &step.command {
            self.reporter.step(
                Severity::Info,
                &label,
                &format!("running command `{command}` in `{image}`"),
            );
            let code = self
                .engine
                .run(
                    RunRequest {
                        image: image.clone(),
                        command: command.clone(),
                        labels: self.container_labels(&step),
                        network_mode: self.options.network.clone(),
                    },
                    self.sink(&label),
                )
                .await
                .map_err(|e| BuildError::Engine {
                    step: label.clone(),
                    source: e,
                })?;
            if code != 0 {
                return Err(BuildError::Command {
                    step: label,
                    command: command.clone(),
                    code,
                });
            }
        }

        if let Some(command) = &step.after_build_command {
            if self.options.after_build_commands {
                self.after_build(&step, command).await?;
            } else {
                self.reporter.step(
                    Severity::Warning,
                    &label,
                    &format!(
                        "after_build_command `{command}` skipped: commands on the host run only with --after-build-commands"
                    ),
                );
            }
        }

        // The image size is looked up after the build, off the path of the
        // steps that wait for this one.
        let duration = started.elapsed();
        self.reporter.step_finished(&StepFinished {
            label: &label,
            image: &image,
            image_id: &built.id,
            duration,
            cached: built.cached_steps,
            total: built.total_steps,
        });
        self.reporter.step(
            Severity::Info,
            &label,
            &format!(
                "built `{image}` in {:.1}s ({}/{} instructions cached)",
                duration.as_secs_f64(),
                built.cached_steps,
                built.total_steps
            ),
        );
        Ok(StepReport {
            label,
            image,
            image_id,
            size: None,
            duration,
            cached_steps: built.cached_steps,
            total_steps: built.total_steps,
            artifacts: copied,
            folded_into: None,
        })
    }

    /// Runs `sh -c command` on the host in the work dir, streaming its
    /// output. The child is killed if the build is cancelled.
    async fn after_build(&self, step: &Step, command: &str) -> Result<(), BuildError> {
        self.reporter.step(
            Severity::Info,
            &step.label,
            &format!("running after_build_command `{command}` on the host"),
        );
        let fail = |status: String, code: Option<i32>| BuildError::AfterBuild {
            step: step.label.clone(),
            command: command.to_string(),
            status,
            code,
        };
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .current_dir(&self.manifest.workdir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| fail(format!("could not start: {e}"), None))?;
        let sink = self.sink(&step.label);
        let (_, _, status) = tokio::join!(
            pump_lines(child.stdout.take(), sink.clone()),
            pump_lines(child.stderr.take(), sink),
            child.wait()
        );
        let status = status.map_err(|e| fail(format!("failed: {e}"), None))?;
        if status.success() {
            Ok(())
        } else {
            let code = status.code();
            Err(fail(
                match code {
                    Some(c) => format!("exited with code {c}"),
                    None => "was killed by a signal".to_string(),
                },
                code,
            ))
        }
    }
}

/// Sends each line read from `reader` to `sink`.
async fn pump_lines<R: tokio::io::AsyncRead + Unpin>(reader: Option<R>, sink: LineSink) {
    if let Some(reader) = reader {
        let mut lines = BufReader::new(reader).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            sink(&line);
        }
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

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::sync::{Arc, Mutex};
    use std::time::{Duration, Instant};

    use tokio_util::sync::CancellationToken;

    use super::{BuildError, BuildSettings, Runner, Signal, Summary, LABEL_BUILD};
    use crate::engine::fake::{FakeBuild, FakeEngine};
    use crate::manifest::{Manifest, SchemaVersion, Step};
    use crate::model::Level;
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
        assert_eq!(f.engine.label_sweeps(), [(LABEL_BUILD.into(), "b1".into())]);
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
            builder: crate::engine::Builder::BuildKit,
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
        let f = fixture(vec![a, step(d, "b", &["a"])], options);
        run(&f).await.unwrap();
        let builds = f.engine.builds();
        let req = &builds[0].request;
        assert_eq!(req.tag, "img/a-u1");
        assert_eq!(req.build_args["X"], "from-cli");
        assert_eq!(req.build_args["Y"], "yml-only");
        assert_eq!(req.labels["habitus.uid"], "u1");
        assert_eq!(req.labels["habitus.step"], "a");
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
        a.secrets.insert(
            "key".into(),
            SecretSpec {
                kind: "env".into(),
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
            "a secret reached an image:\n  img/a: secret `env/key` (raw) in layer 0 (l0) at `/root/.ssh/id`\nfix: fetch, use and delete the secret in one RUN, or pass --no-audit to build anyway"
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
                kind: "env".into(),
                name: name.into(),
            },
            Arc::new(crate::secrets::Secret::new(value.to_vec())),
        );
        let settings = crate::secrets::Settings {
            enabled: None,
            binding: None,
            port: 0,
            basic_auth: None,
            providers: vec!["env".into()],
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
                kind: "env".into(),
                value: "K".into(),
            },
        );
        let Fixture { engine, runner } = fixture(vec![a], opts(1));
        // TEST-NET-1: never an address of this host.
        engine.on_network_gateway("192.0.2.1");
        let (settings, store) = env_secret("a", "k", b"v");
        let runner = runner.with_secrets(settings, store, true);
        let err = runner
            .run(CancellationToken::new(), Arc::new(Mutex::new(None)))
            .await
            .unwrap_err()
            .to_string();
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
                kind: "env".into(),
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
