//! An in-memory [`Engine`] for fast tests of the runner: it records every
//! call, and builds "succeed" after a configurable delay unless told to
//! fail. It never touches Docker, and is built for unit tests only.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use bytes::Bytes;

use super::{
    BuildOutput, BuildRequest, BuildSink, BuiltImage, ByteStream, ContainerRequest, Engine,
    EngineError, HistoryEntry, ImageDetails, ImageInfo, Leftover, LineSink, Pushed, RunRequest,
};

/// A file of a fake layer: path and content.
type NamedFile = (String, Vec<u8>);

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
    /// `(image, path)` → tar bytes served by `archive`.
    archives: Mutex<BTreeMap<(String, String), Vec<u8>>>,
    /// image → files of its one layer, served by `save_image`.
    layers: Mutex<BTreeMap<String, Vec<NamedFile>>>,
    /// Live containers: id → request.
    containers: Mutex<BTreeMap<String, ContainerRequest>>,
    created_containers: Mutex<usize>,
    /// Exit codes of exec'd commands, by the command's last argument.
    exec_codes: Mutex<BTreeMap<String, i64>>,
    execs: Mutex<Vec<(String, Vec<String>)>>,
    /// `(container image, config_of)` of every commit.
    commits: Mutex<Vec<(String, String)>>,
    networks: Mutex<BTreeMap<String, BTreeMap<String, String>>>,
    removed_networks: Mutex<Vec<String>>,
    /// The gateway `create_network` reports (default `127.0.0.1`).
    gateway: Mutex<Option<String>>,
    /// Names given with `tag_image` → the image they name.
    aliases: Mutex<BTreeMap<String, String>>,
    /// Names pushed, in order.
    pushes: Mutex<Vec<String>>,
    /// How long each push takes, and when each one ran.
    push_delay: Mutex<Duration>,
    push_windows: Mutex<Vec<(String, Instant, Instant)>>,
    /// Names whose push fails, with the registry's message.
    push_failures: Mutex<BTreeMap<String, String>>,
    /// References pulled, in order; those in `missing` are not found.
    pulls: Mutex<Vec<String>>,
    missing: Mutex<BTreeSet<String>>,
    /// What `list_labelled` lists; a network also counts as created.
    leftovers: Mutex<Vec<Leftover>>,
    /// Network id → containers attached to it (id, runs).
    attached: Mutex<BTreeMap<String, Vec<(String, bool)>>>,
    /// Ids given to `remove_container`, in order.
    removed_containers: Mutex<Vec<String>>,
}

impl FakeEngine {
    /// Lists `leftover` as left behind by a build (a network by its id).
    pub fn on_leftover(&self, leftover: Leftover) {
        if leftover.kind == "network" {
            lock(&self.networks).insert(leftover.id.clone(), leftover.labels.clone());
        }
        lock(&self.leftovers).push(leftover);
    }

    /// Attaches containers (id, runs) to the network with id `network`.
    pub fn on_attached(&self, network: &str, containers: Vec<(String, bool)>) {
        lock(&self.attached).insert(network.to_string(), containers);
    }

    /// Ids given to `remove_container`, in order.
    pub fn removed_containers(&self) -> Vec<String> {
        lock(&self.removed_containers).clone()
    }

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
    /// Makes `create_network` report `gateway` as the network's gateway.
    pub fn on_network_gateway(&self, gateway: &str) {
        *lock(&self.gateway) = Some(gateway.to_string());
    }
    /// Makes `save_image` of `image` return a one-layer archive with these
    /// files (by default the layer is empty).
    pub fn on_save(&self, image: &str, files: Vec<(String, Vec<u8>)>) {
        lock(&self.layers).insert(image.to_string(), files);
    }
    /// Makes `archive` of `path` in a container of `image` return `tar`.
    pub fn on_archive(&self, image: &str, path: &str, tar: Vec<u8>) {
        lock(&self.archives).insert((image.to_string(), path.to_string()), tar);
    }
    /// Makes `exec` of a command whose last argument is `command` exit with
    /// `code`.
    pub fn on_exec(&self, command: &str, code: i64) {
        lock(&self.exec_codes).insert(command.to_string(), code);
    }
    /// Makes the push of `name` fail with the registry's `message`.
    pub fn on_push_fail(&self, name: &str, message: &str) {
        lock(&self.push_failures).insert(name.to_string(), message.to_string());
    }
    /// Makes every push take `delay`.
    pub fn on_push_delay(&self, delay: Duration) {
        *lock(&self.push_delay) = delay;
    }
    /// `(name, started, finished)` of every push that finished.
    pub fn push_windows(&self) -> Vec<(String, Instant, Instant)> {
        lock(&self.push_windows).clone()
    }
    /// Names pushed so far, in order.
    pub fn pushes(&self) -> Vec<String> {
        lock(&self.pushes).clone()
    }
    /// Makes `pull_image` of `reference` find nothing.
    pub fn on_pull_missing(&self, reference: &str) {
        lock(&self.missing).insert(reference.to_string());
    }
    /// References pulled so far, in order.
    pub fn pulls(&self) -> Vec<String> {
        lock(&self.pulls).clone()
    }
    /// Containers that exist now (created and not removed).
    pub fn containers(&self) -> Vec<ContainerRequest> {
        lock(&self.containers).values().cloned().collect()
    }
    /// How many containers were created in total.
    pub fn created_containers(&self) -> usize {
        *lock(&self.created_containers)
    }
    /// `(image of the container, command)` of every exec, in order.
    pub fn execs(&self) -> Vec<(String, Vec<String>)> {
        lock(&self.execs).clone()
    }
    /// `(image of the container, config_of)` of every commit, in order.
    pub fn commits(&self) -> Vec<(String, String)> {
        lock(&self.commits).clone()
    }

    fn container(&self, id: &str) -> Result<ContainerRequest, EngineError> {
        lock(&self.containers)
            .get(id)
            .cloned()
            .ok_or_else(|| EngineError::Api(format!("no such container: {id}")))
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

/// The error of an operation a test engine does not simulate.
pub(crate) fn unsupported(what: &str, image: &str) -> EngineError {
    EngineError::Api(format!("this engine cannot {what} `{image}`"))
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[async_trait::async_trait]
impl Engine for FakeEngine {
    async fn ping(&self) -> Result<(), EngineError> {
        Ok(())
    }

    async fn build(&self, req: BuildRequest, sink: BuildSink) -> Result<BuiltImage, EngineError> {
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
        let line = format!("Step 1/1 : FROM fake ({})", req.tag);
        sink(BuildOutput::Instruction(&format!(
            "[1/1] FROM fake ({})",
            req.tag
        )));
        sink(BuildOutput::Line(&line));
        tokio::time::sleep(behaviour.delay).await;
        lock(&self.builds)[index].finished = Some(Instant::now());
        if let Some(message) = behaviour.fail {
            return Err(EngineError::BuildFailed {
                instruction: Some("Step 1/1 : RUN fake".into()),
                message,
                hint: None,
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
        let target = lock(&self.aliases)
            .get(image)
            .cloned()
            .unwrap_or_else(|| image.to_string());
        Ok(lock(&self.images).contains(image).then(|| ImageInfo {
            id: format!("sha256:{target}"),
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
        // By name, or by the id `inspect_image` gives (`sha256:<name>`).
        let mut images = lock(&self.images);
        let image = match image.strip_prefix("sha256:") {
            Some(name) if !images.contains(image) => name,
            _ => image,
        };
        let removed = images.remove(image);
        drop(images);
        lock(&self.aliases).remove(image);
        if removed {
            lock(&self.removed).push(image.to_string());
            Ok(())
        } else {
            Err(EngineError::Api(format!("no such image: {image}")))
        }
    }

    async fn tag_image(&self, image: &str, name: &str) -> Result<(), EngineError> {
        let mut images = lock(&self.images);
        if !images.contains(image) {
            return Err(EngineError::Api(format!("no such image: {image}")));
        }
        images.insert(name.to_string());
        drop(images);
        let mut aliases = lock(&self.aliases);
        let target = aliases
            .get(image)
            .cloned()
            .unwrap_or_else(|| image.to_string());
        aliases.insert(name.to_string(), target);
        Ok(())
    }

    async fn push_image(&self, name: &str, sink: LineSink) -> Result<Pushed, EngineError> {
        if !lock(&self.images).contains(name) {
            return Err(EngineError::Api(format!("no such image: {name}")));
        }
        if let Some(message) = lock(&self.push_failures).get(name) {
            return Err(EngineError::Push {
                name: name.to_string(),
                message: message.clone(),
            });
        }
        let started = Instant::now();
        let delay = *lock(&self.push_delay);
        tokio::time::sleep(delay).await;
        sink(&format!("pushed {name}"));
        lock(&self.pushes).push(name.to_string());
        lock(&self.push_windows).push((name.to_string(), started, Instant::now()));
        Ok(Pushed {
            digest: format!("sha256:{:064x}", name.len()),
            size: 528,
        })
    }

    async fn pull_image(&self, reference: &str, _sink: LineSink) -> Result<bool, EngineError> {
        lock(&self.pulls).push(reference.to_string());
        if lock(&self.missing).contains(reference) {
            return Ok(false);
        }
        lock(&self.images).insert(reference.to_string());
        Ok(true)
    }

    async fn remove_containers_with_label(
        &self,
        label: &str,
        value: &str,
    ) -> Result<usize, EngineError> {
        lock(&self.label_sweeps).push((label.to_string(), value.to_string()));
        Ok(0)
    }

    async fn create_container(&self, req: ContainerRequest) -> Result<String, EngineError> {
        if !lock(&self.images).contains(&req.image) {
            return Err(EngineError::Api(format!("no such image: {}", req.image)));
        }
        let id = {
            let mut n = lock(&self.created_containers);
            *n += 1;
            format!("container-{n}")
        };
        lock(&self.containers).insert(id.clone(), req);
        Ok(id)
    }

    async fn archive(&self, id: &str, path: &str) -> Result<ByteStream, EngineError> {
        let container = self.container(id)?;
        let tar = lock(&self.archives)
            .get(&(container.image.clone(), path.to_string()))
            .cloned()
            .ok_or_else(|| {
                EngineError::Api(format!("Could not find the file {path} in container {id}"))
            })?;
        // Serve it in small chunks, as the daemon does.
        let chunks: Vec<Result<Bytes, EngineError>> = tar
            .chunks(1000)
            .map(|c| Ok(Bytes::copy_from_slice(c)))
            .collect();
        Ok(Box::pin(futures_util::stream::iter(chunks)))
    }

    async fn exec(&self, id: &str, cmd: Vec<String>, sink: LineSink) -> Result<i64, EngineError> {
        let container = self.container(id)?;
        if !container.keep_alive {
            return Err(EngineError::Api(format!("container {id} is not running")));
        }
        let last = cmd.last().cloned().unwrap_or_default();
        sink(&format!("exec {last}"));
        let code = lock(&self.exec_codes).get(&last).copied().unwrap_or(0);
        lock(&self.execs).push((container.image, cmd));
        Ok(code)
    }

    async fn commit(&self, id: &str, config_of: &str) -> Result<String, EngineError> {
        let container = self.container(id)?;
        let mut commits = lock(&self.commits);
        commits.push((container.image, config_of.to_string()));
        let image = format!("sha256:commit-{}", commits.len());
        lock(&self.images).insert(image.clone());
        Ok(image)
    }

    async fn remove_container(&self, id: &str) -> Result<(), EngineError> {
        lock(&self.containers).remove(id);
        lock(&self.removed_containers).push(id.to_string());
        Ok(())
    }

    async fn create_network(
        &self,
        name: &str,
        labels: &BTreeMap<String, String>,
        _subnet: Option<&str>,
    ) -> Result<String, EngineError> {
        lock(&self.networks).insert(name.to_string(), labels.clone());
        Ok(lock(&self.gateway)
            .clone()
            .unwrap_or_else(|| "127.0.0.1".to_string()))
    }

    async fn save_image(&self, image: &str) -> Result<ByteStream, EngineError> {
        if !lock(&self.images).contains(image) {
            return Err(EngineError::Api(format!("no such image: {image}")));
        }
        let files = lock(&self.layers).get(image).cloned().unwrap_or_default();
        let tar = |entries: &[(String, Vec<u8>)]| -> Vec<u8> {
            let mut builder = tar::Builder::new(Vec::new());
            for (name, data) in entries {
                let mut header = tar::Header::new_gnu();
                header.set_size(data.len() as u64);
                header.set_mode(0o644);
                header.set_cksum();
                let _ = builder.append_data(&mut header, name, data.as_slice());
            }
            builder.into_inner().unwrap_or_default()
        };
        let layer = tar(&files);
        let diff_id = format!(
            "sha256:{}",
            crate::layer::hex(ring::digest::digest(&ring::digest::SHA256, &layer).as_ref())
        );
        let manifest = serde_json::json!([{ "Config": "config.json", "Layers": ["l0/layer.tar"] }]);
        let config = serde_json::json!({ "rootfs": { "diff_ids": [diff_id] }, "history": [] });
        let archive = tar(&[
            ("l0/layer.tar".to_string(), layer),
            ("config.json".to_string(), config.to_string().into_bytes()),
            (
                "manifest.json".to_string(),
                manifest.to_string().into_bytes(),
            ),
        ]);
        Ok(Box::pin(futures_util::stream::iter([Ok(Bytes::from(
            archive,
        ))])))
    }

    async fn remove_network(&self, name: &str) -> Result<(), EngineError> {
        if lock(&self.networks).remove(name).is_some() {
            lock(&self.removed_networks).push(name.to_string());
        }
        Ok(())
    }

    // Not simulated: the subnets in use and the rest of `squash`.

    /// No other networks: every subnet is free.
    async fn network_subnets(&self) -> Result<Vec<String>, EngineError> {
        Ok(Vec::new())
    }

    /// What `on_leftover` listed, if it carries `key`.
    async fn list_labelled(&self, key: &str) -> Result<Vec<Leftover>, EngineError> {
        Ok(lock(&self.leftovers)
            .iter()
            .filter(|l| l.labels.contains_key(key))
            .cloned()
            .collect())
    }

    /// What `on_attached` attached to the network with exactly this id.
    async fn containers_on_network(&self, id: &str) -> Result<Vec<(String, bool)>, EngineError> {
        Ok(lock(&self.attached).get(id).cloned().unwrap_or_default())
    }

    async fn load_image(&self, _archive: ByteStream, _sink: LineSink) -> Result<(), EngineError> {
        Err(EngineError::Api("this engine cannot load images".into()))
    }

    async fn image_details(&self, image: &str) -> Result<Option<ImageDetails>, EngineError> {
        Err(unsupported("inspect", image))
    }

    async fn image_history(&self, image: &str) -> Result<Vec<HistoryEntry>, EngineError> {
        Err(unsupported("read the history of", image))
    }

    async fn export_filesystem(
        &self,
        image: &str,
        _labels: BTreeMap<String, String>,
    ) -> Result<ByteStream, EngineError> {
        Err(unsupported("export", image))
    }

    async fn import_image(
        &self,
        _rootfs: ByteStream,
        reference: &str,
        _changes: Vec<String>,
        _message: &str,
    ) -> Result<String, EngineError> {
        Err(unsupported("import", reference))
    }
}
