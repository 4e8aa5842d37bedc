//! An in-memory [`Engine`] for fast tests of the runner: it records every
//! call, and builds "succeed" after a configurable delay unless told to
//! fail. It never touches Docker.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{BuildRequest, BuiltImage, Engine, EngineError, ImageInfo, LineSink, RunRequest};

/// One recorded build: which tag, and when it ran.
#[derive(Debug, Clone)]
pub struct BuildRecord {
    pub request: BuildRequest,
    pub started: Instant,
    /// `None` if the build was cancelled before it finished.
    pub finished: Option<Instant>,
}

/// How the fake answers a build of one tag.
#[derive(Debug, Clone, Default)]
pub struct FakeBuild {
    pub delay: Duration,
    /// Fail with this daemon message.
    pub fail: Option<String>,
}

/// A fake engine; see the module docs.
#[derive(Debug, Default)]
pub struct FakeEngine {
    builds: Mutex<Vec<BuildRecord>>,
    behaviour: Mutex<BTreeMap<String, FakeBuild>>,
    exit_codes: Mutex<BTreeMap<String, i64>>,
    runs: Mutex<Vec<RunRequest>>,
    images: Mutex<BTreeSet<String>>,
    removed: Mutex<Vec<String>>,
    label_sweeps: Mutex<Vec<(String, String)>>,
    networks: Mutex<BTreeMap<String, BTreeMap<String, String>>>,
    removed_networks: Mutex<Vec<String>>,
}

impl FakeEngine {
    /// Configures how the build of `tag` behaves.
    pub fn on_build(&self, tag: &str, behaviour: FakeBuild) {
        lock(&self.behaviour).insert(tag.to_string(), behaviour);
    }
    /// Makes `run` on `image` exit with `code`.
    pub fn on_run(&self, image: &str, code: i64) {
        lock(&self.exit_codes).insert(image.to_string(), code);
    }
    /// Every build started so far.
    pub fn builds(&self) -> Vec<BuildRecord> {
        lock(&self.builds).clone()
    }
    /// Every command run so far.
    pub fn runs(&self) -> Vec<RunRequest> {
        lock(&self.runs).clone()
    }
    /// Images that exist now.
    pub fn images(&self) -> BTreeSet<String> {
        lock(&self.images).clone()
    }
    /// Images removed, in order.
    pub fn removed(&self) -> Vec<String> {
        lock(&self.removed).clone()
    }
    /// `(label, value)` pairs swept with `remove_containers_with_label`.
    pub fn label_sweeps(&self) -> Vec<(String, String)> {
        lock(&self.label_sweeps).clone()
    }
    /// Networks that exist now, with their labels.
    pub fn networks(&self) -> BTreeMap<String, BTreeMap<String, String>> {
        lock(&self.networks).clone()
    }
    /// Networks removed, in order.
    pub fn removed_networks(&self) -> Vec<String> {
        lock(&self.removed_networks).clone()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[async_trait::async_trait]
impl Engine for FakeEngine {
    async fn ping(&self) -> Result<(), EngineError> {
        Ok(())
    }

    async fn build(&self, req: BuildRequest, sink: LineSink) -> Result<BuiltImage, EngineError> {
        let behaviour = lock(&self.behaviour)
            .get(&req.tag)
            .cloned()
            .unwrap_or_default();
        let index = {
            let mut builds = lock(&self.builds);
            builds.push(BuildRecord {
                request: req.clone(),
                started: Instant::now(),
                finished: None,
            });
            builds.len() - 1
        };
        sink(&format!("Step 1/1 : FROM fake ({})", req.tag));
        tokio::time::sleep(behaviour.delay).await;
        lock(&self.builds)[index].finished = Some(Instant::now());
        if let Some(message) = behaviour.fail {
            return Err(EngineError::BuildFailed {
                instruction: Some("Step 1/1 : RUN fake".into()),
                message,
            });
        }
        lock(&self.images).insert(req.tag.clone());
        Ok(BuiltImage {
            id: format!("sha256:{}", req.tag),
            cached_steps: 0,
            total_steps: 1,
        })
    }

    async fn run(&self, req: RunRequest, sink: LineSink) -> Result<i64, EngineError> {
        sink(&format!("running {}", req.command));
        let code = lock(&self.exit_codes).get(&req.image).copied().unwrap_or(0);
        lock(&self.runs).push(req);
        Ok(code)
    }

    async fn inspect_image(&self, image: &str) -> Result<Option<ImageInfo>, EngineError> {
        Ok(lock(&self.images).contains(image).then(|| ImageInfo {
            id: format!("sha256:{image}"),
            size: 1000,
            layers: 1,
            labels: BTreeMap::new(),
        }))
    }

    async fn remove_image(
        &self,
        image: &str,
        _force: bool,
        _noprune: bool,
    ) -> Result<(), EngineError> {
        if lock(&self.images).remove(image) {
            lock(&self.removed).push(image.to_string());
            Ok(())
        } else {
            Err(EngineError::Api(format!("no such image: {image}")))
        }
    }

    async fn remove_containers_with_label(
        &self,
        label: &str,
        value: &str,
    ) -> Result<usize, EngineError> {
        lock(&self.label_sweeps).push((label.to_string(), value.to_string()));
        Ok(0)
    }

    async fn create_network(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
    ) -> Result<String, EngineError> {
        lock(&self.networks).insert(name.to_string(), labels.clone());
        Ok("127.0.0.1".to_string())
    }

    async fn remove_network(&self, name: &str) -> Result<(), EngineError> {
        if lock(&self.networks).remove(name).is_some() {
            lock(&self.removed_networks).push(name.to_string());
        }
        Ok(())
    }
}
