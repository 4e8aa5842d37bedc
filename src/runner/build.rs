//! One running build: what every step's task shares, set once when the
//! build starts (the secrets side, the folds), and the helpers steps use
//! to label, report and mount.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};

use super::registry::CacheImages;
use super::secrets::{BuildSession, SessionOptions};
use super::{fold, lock, BuildError, Runner, SecretUse, Summary};
use crate::audit::Scanner;
use crate::config::BuildSettings;
use crate::engine::{BuildOutput, BuildSink, Engine, LineSink, MountLog, MountSecrets, MountValue};
use crate::manifest::{Manifest, Step};
use crate::model::{LABEL_BUILD, LABEL_CONTAINER, LABEL_STEP, LABEL_UID};
use crate::plan::Plan;
use crate::progress::{Event, Reporter, Severity};
use crate::secrets::server::{AccessLog, AccessRecord};
use crate::secrets::{SecretStore, Settings};

/// Successful secret fetches: (step, `type/name`) → count.
pub type Served = Arc<Mutex<BTreeMap<SecretUse, usize>>>;

/// A build in progress. Every field is set before the first step starts;
/// only `tagged`, `served`, `named`, `audited` and `cache` change while it
/// runs.
pub struct Build {
    pub engine: Arc<dyn Engine>,
    pub manifest: Arc<Manifest>,
    pub plan: Arc<Plan>,
    pub options: Arc<BuildSettings>,
    pub reporter: Arc<Reporter>,
    pub build_id: String,
    /// Step image name as written → unique name, for rewriting Dockerfiles.
    pub images: Arc<BTreeMap<String, String>>,
    /// Ownership labels for networks and containers (see [`crate::owner`]).
    pub owner: Arc<BTreeMap<String, String>>,
    /// Labels of the steps whose image this build has tagged.
    pub tagged: Mutex<BTreeSet<String>>,
    /// Successful secret fetches.
    pub served: Served,
    /// The build's network and TLS secrets server, when it has them.
    pub session: Option<Arc<BuildSession>>,
    /// The build's secrets, for BuildKit steps' secret mounts.
    pub mounts: Option<Arc<SecretStore>>,
    /// Searches the images of a build that served secrets for them.
    pub audit: Option<Arc<Scanner>>,
    /// Step label → the label of the step that builds it as a stage.
    pub folds: BTreeMap<String, String>,
    /// Step label → the names its image was given besides its own.
    pub named: Mutex<BTreeMap<String, Vec<String>>>,
    /// Images the audit has searched (before their push).
    pub audited: Mutex<BTreeSet<String>>,
    /// Cache images, as this build found or pulled them.
    pub cache: Mutex<CacheImages>,
}

/// What a build with secrets sets up before its first step.
#[derive(Default)]
struct SecretsSide {
    session: Option<Arc<BuildSession>>,
    mounts: Option<Arc<SecretStore>>,
    audit: Option<Arc<Scanner>>,
}

impl Build {
    /// Starts `runner`'s build: its secrets side (network and server
    /// included) and the folds.
    pub async fn start(runner: &Runner) -> Result<Build, BuildError> {
        let served = Served::default();
        let secrets = match &runner.secrets {
            Some((settings, store, server)) => {
                start_secrets(runner, settings, store, *server, &served).await?
            }
            None => SecretsSide::default(),
        };
        let folds = fold::plan(runner).await;
        Ok(Build {
            engine: Arc::clone(&runner.engine),
            manifest: Arc::clone(&runner.manifest),
            plan: Arc::clone(&runner.plan),
            options: Arc::clone(&runner.options),
            reporter: Arc::clone(&runner.reporter),
            build_id: runner.build_id.clone(),
            images: Arc::clone(&runner.images),
            owner: Arc::clone(&runner.owner),
            tagged: Mutex::default(),
            served,
            session: secrets.session,
            mounts: secrets.mounts,
            audit: secrets.audit,
            folds,
            named: Mutex::default(),
            audited: Mutex::default(),
            cache: Mutex::default(),
        })
    }

    /// Looks up the size of every image the build exported.
    pub async fn add_sizes(&self, summary: &mut Summary) {
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

    /// The index of `step` in build.yml's order (the plan's numbering).
    pub fn index(&self, step: &Step) -> usize {
        self.manifest
            .steps
            .iter()
            .position(|s| s.label == step.label)
            .unwrap_or(0)
    }

    /// The unique image name of `step`.
    pub fn image_of(&self, step: &Step) -> String {
        self.images[&step.name].clone()
    }

    /// The labels of a container this step makes: the image labels, who
    /// owns it, so that a later build can sweep it if this one dies, and
    /// the label that only containers habitus creates carry.
    pub fn container_labels(&self, step: &Step) -> BTreeMap<String, String> {
        let mut labels = (*self.owner).clone();
        labels.extend(self.labels(step));
        labels.insert(LABEL_CONTAINER.to_string(), self.build_id.clone());
        labels
    }

    /// The labels of this build's images (with `--image-labels`).
    pub fn labels(&self, step: &Step) -> BTreeMap<String, String> {
        let mut labels = BTreeMap::new();
        labels.insert(LABEL_BUILD.to_string(), self.build_id.clone());
        labels.insert(LABEL_STEP.to_string(), step.label.clone());
        if let Some(uid) = &self.options.uid {
            labels.insert(LABEL_UID.to_string(), uid.clone());
        }
        labels
    }

    /// Where `label`'s output goes (the reporter redacts it).
    pub fn sink(&self, label: &str) -> LineSink {
        let reporter = Arc::clone(&self.reporter);
        let label = label.to_string();
        Arc::new(move |line: &str| reporter.step_output(&label, line))
    }

    /// Where `label`'s build reports: instructions to the step's live
    /// line, output lines as with [`Build::sink`].
    pub fn build_sink(&self, label: &str) -> BuildSink {
        let reporter = Arc::clone(&self.reporter);
        let label = label.to_string();
        Arc::new(move |out: BuildOutput<'_>| match out {
            BuildOutput::Line(line) => reporter.step_output(&label, line),
            BuildOutput::Instruction(text) => reporter.step_instruction(&label, text),
        })
    }

    /// The secrets `step` declares, by name, for its secret mounts; each
    /// request is logged and counted like a fetch from the server.
    pub fn mounts_of(&self, step: &Step) -> MountSecrets {
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
            .map(|(key, secret)| (key.name, secret as Arc<dyn MountValue>))
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
            reporter.event(Event::SecretFetched {
                step: Some(&label),
                path: path.as_deref().unwrap_or(id),
                peer: None,
                via: Some("mount"),
                status,
            });
            if let (true, Some(path)) = (ok, path) {
                let used = SecretUse {
                    step: label.clone(),
                    secret: path,
                };
                *lock(&served).entry(used).or_default() += 1;
            }
        });
        MountSecrets {
            secrets,
            on_fetch: Some(on_fetch),
        }
    }
}

/// The secrets side of a build: the reporter told to mask the values, the
/// secrets for mounts, the audit's scanner and, with `server`, the
/// build's network and server.
async fn start_secrets(
    runner: &Runner,
    settings: &Settings,
    store: &SecretStore,
    server: bool,
    served: &Served,
) -> Result<SecretsSide, BuildError> {
    // Exposed so that the reporter can mask them; never printed.
    runner
        .reporter
        .protect(store.values().iter().map(|s| s.expose()));
    let mut side = SecretsSide {
        mounts: Some(Arc::new(store.clone())),
        audit: scanner(runner, store),
        session: None,
    };
    if !server {
        return Ok(side);
    }
    let log = access_log(&runner.reporter, served);
    let options = SessionOptions {
        build_id: &runner.build_id,
        uid: runner.options.uid.as_deref(),
        user_network: runner.options.network.as_deref(),
        settings,
        store: store.clone(),
        owner: (*runner.owner).clone(),
    };
    let session = BuildSession::start(&*runner.engine, options, log).await?;
    runner.reporter.message(
        Severity::Info,
        &format!(
            "secrets server listening on {} (steps build on network `{}`)",
            session.url(),
            session.network_mode()
        ),
    );
    side.session = Some(Arc::new(session));
    Ok(side)
}

/// The audit's scanner for the build's secrets (none with `--no-audit`).
fn scanner(runner: &Runner, store: &SecretStore) -> Option<Arc<Scanner>> {
    if runner.options.no_audit || store.is_empty() {
        return None;
    }
    // Every value of every step, named `step: type/name` (never by its
    // value); the scanner searches each value once, under all its names.
    let mut named: BTreeMap<String, Arc<crate::secrets::Secret>> = BTreeMap::new();
    for step in store.steps() {
        for (key, secret) in store.of_step(step) {
            named.insert(format!("{step}: {}", key.path()), secret);
        }
    }
    // `expose`: the audit searches the produced images for these
    // values; the scanner lives until the build ends.
    let (scanner, skipped) = Scanner::new(
        named
            .iter()
            .map(|(name, secret)| (name.as_str(), secret.expose())),
    );
    for name in skipped {
        runner.reporter.message(
            Severity::Warning,
            &format!(
                "secret `{name}` is shorter than {} bytes: the audit cannot search for it reliably",
                crate::audit::MIN_SECRET_LEN
            ),
        );
    }
    Some(Arc::new(scanner))
}

/// Reports every request to the secrets server and counts the served ones.
fn access_log(reporter: &Arc<Reporter>, served: &Served) -> AccessLog {
    let reporter = Arc::clone(reporter);
    let served = Arc::clone(served);
    Arc::new(move |record: &AccessRecord| {
        reporter.message(Severity::Info, &record.to_string());
        reporter.event(Event::SecretFetched {
            step: record.step.as_deref(),
            path: &record.path,
            peer: Some(record.peer.to_string()),
            via: None,
            status: record.status,
        });
        if record.status == 200 {
            let secret = record
                .path
                .strip_prefix("/v1/secrets/")
                .unwrap_or(&record.path)
                .to_string();
            let step = record.step.clone().unwrap_or_default();
            *lock(&served).entry(SecretUse { step, secret }).or_default() += 1;
        }
    })
}

/// BuildKit steps mount the build's secrets: the engine reads their bytes
/// (and nothing else) to answer a mount request.
impl MountValue for crate::secrets::Secret {
    fn bytes(&self) -> &[u8] {
        self.expose()
    }
}
