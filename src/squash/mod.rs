//! Squash: flattening an image's layers into one, so that files deleted by
//! a later layer are gone from every layer. By default the layers of the
//! image's base stay as they are (same diff ids, so the daemon shares them
//! between images) and only the layers above are merged; [`Keep::Nothing`]
//! merges everything.
//!
//! The general path is save → merge → load: the image is read from the
//! daemon as a `docker save` stream ([`layout`], both archive layouts),
//! spooled to a temporary directory, merged with whiteouts applied
//! ([`merge`]), and streamed back with `POST /images/load` ([`mod@write`]),
//! with the config kept and `rootfs.diff_ids` and `history` rewritten.
//! Squashing everything goes through the daemon's merged view instead
//! ([`import`]) when the config allows, which is about twice as fast.
//! Memory use does not depend on layer sizes: contents only pass through
//! temporary files and fixed-size buffers. The temporary files are bounded
//! too ([`budget`]): the layers above the kept ones are spooled
//! uncompressed, the kept ones are only read as a stream (indexed and
//! verified, never decompressed to disk), and a squash that would write
//! more than its limit stops.

pub mod budget;
pub mod import;
pub mod layout;
pub mod merge;
pub mod write;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::BufReader;
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

use futures_util::TryStreamExt;
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio_util::io::{StreamReader, SyncIoBridge};

use crate::engine::{ByteStream, Engine, EngineError, ImageDetails, LineSink};

use self::merge::{Emit, Merger};
use self::write::{ChannelWriter, Counter, Hashing, LoadPlan};

/// The label on the throw-away container of an import squash.
pub const CONTAINER_LABEL: &str = "habitus.squash";

/// Which bottom layers stay as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keep {
    /// Squash everything into one layer.
    Nothing,
    /// Keep this many bottom layers (the tests' way to keep layers of an
    /// image they build without a base image).
    #[cfg(test)]
    Layers(usize),
    /// Keep the layers of this image, after checking (by diff id) that
    /// they are the bottom layers of the squashed image.
    BaseImage(String),
}

/// How the squashed image was made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Method {
    /// `docker save` → merge → `docker load`.
    Merge,
    /// Container export → image import.
    Import,
}

/// What a squash did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SquashReport {
    /// The new image's id (`sha256:…`).
    pub image_id: String,
    /// Layers of the original image.
    pub layers_before: usize,
    /// Layers of the squashed image: the kept ones plus one.
    pub layers_after: usize,
    /// How many bottom layers were kept.
    pub kept: usize,
    pub method: Method,
    /// Bytes of temporary files the squash wrote.
    pub temp_bytes: u64,
}

/// Errors of a squash.
#[derive(Debug, thiserror::Error)]
pub enum SquashError {
    /// The daemon failed a request.
    #[error(transparent)]
    Engine(#[from] EngineError),
    /// The image (or the base image) does not exist.
    #[error("no such image: `{image}`")]
    NotFound {
        /// The reference given.
        image: String,
    },
    /// The base image's layers are not the bottom layers of the image.
    #[error(
        "`{base}` is not a base of `{image}`: its layers are not the bottom layers of `{image}`"
    )]
    NotABase {
        /// The base image given.
        base: String,
        /// The image to squash.
        image: String,
    },
    /// Every layer would be kept.
    #[error("nothing to squash: `{image}` has {layers} layer(s) and {kept} are kept")]
    NothingToSquash {
        /// The image to squash.
        image: String,
        /// Its layer count.
        layers: usize,
        /// The layers asked to be kept.
        kept: usize,
    },
    /// No base image can be told from the image's history.
    #[error("cannot tell the base image of `{image}`: no tagged image in its history; use `--from BASE` or `--all`")]
    NoBase {
        /// The image to squash.
        image: String,
    },
    /// The saved archive is not what `docker save` produces.
    #[error("unreadable image archive: {0}")]
    Layout(String),
    /// A layer cannot be read: missing, truncated, corrupt, not a tar,
    /// or compressed in a way this reader does not know.
    #[error(
        "unreadable image archive: layer {index} (`{digest}`) {problem}; the image was not changed"
    )]
    Layer {
        /// 1-based, bottom layer first.
        index: usize,
        /// The blob's digest (or, when the archive names none, the diff id).
        digest: String,
        /// What is wrong with it.
        problem: String,
    },
    /// The saved image is not the inspected one.
    #[error("the saved image does not match `{image}`: its layers differ")]
    Mismatch {
        /// The image to squash.
        image: String,
    },
    /// The temporary files would have crossed their limit.
    #[error(
        "squashing `{image}` stopped while writing {what}: its temporary files would exceed the limit ({written} bytes written = {}, the limit is {limit} bytes = {}); the image was not changed and the temporary files are removed; if the image really needs more, raise the limit with `--squash-temp-limit SIZE` (or HABITUS_SQUASH_TEMP_LIMIT)",
        budget::human(*written),
        budget::human(*limit)
    )]
    TempLimit {
        /// The image being squashed.
        image: String,
        /// What was being written: `layer 3 (`sha256:…`)`.
        what: String,
        /// Bytes written before the write that was refused.
        written: u64,
        /// The limit.
        limit: u64,
    },
    /// Streaming the kept layers was not enough (an entry of theirs with
    /// content is needed, or the archive was not in the expected order);
    /// the squash starts again spooling them. Never returned by a squash.
    #[error("the kept layers' contents are needed: {0}")]
    KeptNeeded(String),
    /// The archive's names did not tell which members are squashed layers
    /// (`<id>/layer.tar`): these are (name → layer index), to spool in a
    /// second save. Never returned by a squash.
    #[error("{} squashed layer(s) to spool from a second save", .0.len())]
    SpoolAgain(std::collections::HashMap<String, usize>),
    /// A local file operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The underlying error.
        source: std::io::Error,
    },
}

fn io_error(what: &str) -> impl FnOnce(std::io::Error) -> SquashError + '_ {
    move |source| SquashError::Io {
        what: what.to_string(),
        source,
    }
}

/// `name` with `:latest` added when it has neither tag nor digest (an
/// image archive must name its tags in full).
pub fn with_tag(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    if last.contains(':') || name.contains('@') {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}

/// Squashes `image` into a new image tagged `tag` (`:latest` if it names
/// none), keeping the bottom layers `keep` names; progress lines go to
/// `sink`.
pub async fn squash(
    engine: &dyn Engine,
    image: &str,
    tag: &str,
    keep: Keep,
    temp_limit: u64,
    sink: LineSink,
) -> Result<SquashReport, SquashError> {
    squash_with(engine, image, tag, keep, None, temp_limit, sink).await
}

/// Squashes like [`squash`], but the new image's labels are exactly
/// `labels`, not those of `image`. A commit gives the image every label of
/// the container it was made from (the daemon merges them into the config
/// it is given), so a committed image carries the labels of habitus's
/// container; the image a cleanup squashes carries its step's own labels
/// instead.
pub async fn squash_labelled(
    engine: &dyn Engine,
    image: &str,
    tag: &str,
    keep: Keep,
    labels: &BTreeMap<String, String>,
    temp_limit: u64,
    sink: LineSink,
) -> Result<SquashReport, SquashError> {
    squash_with(engine, image, tag, keep, Some(labels), temp_limit, sink).await
}

async fn squash_with(
    engine: &dyn Engine,
    image: &str,
    tag: &str,
    keep: Keep,
    labels: Option<&BTreeMap<String, String>>,
    temp_limit: u64,
    sink: LineSink,
) -> Result<SquashReport, SquashError> {
    let tag = &with_tag(tag);
    let mut details = details_of(engine, image).await?;
    if let Some(labels) = labels {
        details.config["Labels"] = json!(labels);
    }
    let layers = details.diff_ids.len();
    let kept = match &keep {
        Keep::Nothing => 0,
        #[cfg(test)]
        Keep::Layers(n) => *n,
        Keep::BaseImage(base) => {
            let base_details = details_of(engine, base).await?;
            if !details.diff_ids.starts_with(&base_details.diff_ids) {
                return Err(SquashError::NotABase {
                    base: base.clone(),
                    image: image.to_string(),
                });
            }
            base_details.diff_ids.len()
        }
    };
    if kept >= layers {
        return Err(SquashError::NothingToSquash {
            image: image.to_string(),
            layers,
            kept,
        });
    }
    if kept == 0 {
        if let Some(report) = squash_by_import(engine, image, &details, tag, &sink).await? {
            return Ok(report);
        }
    }
    let merge = MergeSquash {
        engine,
        image,
        details: &details,
        kept,
        tag,
        labels,
        temp_limit,
        sink: &sink,
    };
    merge.run().await
}

/// The details of `image`; a missing image is [`SquashError::NotFound`].
async fn details_of(engine: &dyn Engine, image: &str) -> Result<ImageDetails, SquashError> {
    engine
        .image_details(image)
        .await?
        .ok_or_else(|| SquashError::NotFound {
            image: image.to_string(),
        })
}

/// The base image of `image`: the newest tagged image in its history
/// other than itself (the daemon knows it for images built here).
pub async fn detect_base(engine: &dyn Engine, image: &str) -> Result<String, SquashError> {
    let history = engine.image_history(image).await?;
    history
        .iter()
        .skip(1)
        .find(|entry| !entry.tags.is_empty() && entry.id != "<missing>")
        .map(|entry| entry.tags[0].clone())
        .ok_or_else(|| SquashError::NoBase {
            image: image.to_string(),
        })
}

async fn squash_by_import(
    engine: &dyn Engine,
    image: &str,
    details: &ImageDetails,
    tag: &str,
    sink: &LineSink,
) -> Result<Option<SquashReport>, SquashError> {
    let Some(changes) = import::changes(&details.config, &details.author) else {
        sink("the config needs the merge: it has fields an import cannot set");
        return Ok(None);
    };
    sink(&format!(
        "squashing all {} layers of `{image}` through the daemon's merged view",
        details.diff_ids.len()
    ));
    let marker = format!("{:016x}", rand::random::<u64>());
    let labels = [(CONTAINER_LABEL.to_string(), marker.clone())].into();
    let result = async {
        let export = engine.export_filesystem(&details.id, labels).await?;
        let (filtered, filter) = pipe(export, |reader, out| {
            import::filter_export(reader, out).map(|_| ())
        });
        let message = format!(
            "habitus squash: {} layers of {image} ({}) in one",
            details.diff_ids.len(),
            details.id
        );
        let imported = engine.import_image(filtered, tag, changes, &message).await;
        let filtered = joined(filter).await?;
        let id = imported?;
        filtered.map_err(io_error("cannot filter the container export"))?;
        Ok::<String, SquashError>(id)
    }
    .await;
    let removed = engine
        .remove_containers_with_label(CONTAINER_LABEL, &marker)
        .await;
    let id = result?;
    removed?;
    let new = details_of(engine, &id).await?;
    if !import::same_config(&details.config, &new.config)
        || new.architecture != details.architecture
        || new.os != details.os
    {
        sink("the imported config differs from the original: squashing by merge instead");
        engine.remove_image(&id, true, false).await?;
        return Ok(None);
    }
    Ok(Some(SquashReport {
        image_id: id,
        layers_before: details.diff_ids.len(),
        layers_after: 1,
        kept: 0,
        method: Method::Import,
        temp_bytes: 0,
    }))
}

/// Runs `work` on a blocking thread, reading `input` and writing into the
/// returned stream.
fn pipe(
    input: ByteStream,
    work: impl FnOnce(
            SyncIoBridge<StreamReader<ByteStream2, bytes::Bytes>>,
            &mut ChannelWriter,
        ) -> std::io::Result<()>
        + Send
        + 'static,
) -> (ByteStream, tokio::task::JoinHandle<std::io::Result<()>>) {
    let reader = SyncIoBridge::new(StreamReader::new(to_io(input)));
    stream_from(move |out| work(reader, out))
}

/// Runs `work` on a blocking thread, writing into the returned stream,
/// then flushes it; if either fails, the stream ends with the error, so a
/// cut-short body never passes for a whole one.
fn stream_from<T: Send + 'static>(
    work: impl FnOnce(&mut ChannelWriter) -> std::io::Result<T> + Send + 'static,
) -> (ByteStream, tokio::task::JoinHandle<std::io::Result<T>>) {
    let (tx, mut rx) = mpsc::channel(8);
    let handle = tokio::task::spawn_blocking(move || {
        let mut out = ChannelWriter::new(tx);
        let result =
            work(&mut out).and_then(|value| std::io::Write::flush(&mut out).map(|()| value));
        if let Err(e) = &result {
            out.abort(e.to_string());
        }
        result
    });
    let stream = futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx));
    (Box::pin(stream), handle)
}

/// Runs `work` on a blocking thread and waits for it.
async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> Result<T, EngineError> {
    joined(tokio::task::spawn_blocking(work)).await
}

/// Waits for a blocking task; one that panicked or was cancelled is an
/// engine error.
async fn joined<T>(handle: tokio::task::JoinHandle<T>) -> Result<T, EngineError> {
    handle.await.map_err(|e| EngineError::Api(e.to_string()))
}

type ByteStream2 = std::pin::Pin<
    Box<dyn futures_util::Stream<Item = Result<bytes::Bytes, std::io::Error>> + Send>,
>;

fn to_io(stream: ByteStream) -> ByteStream2 {
    Box::pin(stream.map_err(std::io::Error::other))
}

/// A squash of the layers above the bottom `kept` by save → merge → load.
struct MergeSquash<'a> {
    engine: &'a dyn Engine,
    image: &'a str,
    details: &'a ImageDetails,
    kept: usize,
    tag: &'a str,
    labels: Option<&'a BTreeMap<String, String>>,
    temp_limit: u64,
    sink: &'a LineSink,
}

impl MergeSquash<'_> {
    /// Squashes with the kept layers streamed; if their contents turn out
    /// to be needed, again with them spooled.
    async fn run(&self) -> Result<SquashReport, SquashError> {
        let layers = self.details.diff_ids.len();
        (self.sink)(&format!(
            "squashing {} of {layers} layers of `{}` ({} kept)",
            layers - self.kept,
            self.image,
            self.kept
        ));
        if self.kept > 0 {
            match self.attempt(true).await {
                Err(SquashError::KeptNeeded(why)) => {
                    (self.sink)(&format!(
                        "{why}: squashing again with the kept layers spooled"
                    ));
                }
                other => return other,
            }
        }
        self.attempt(false).await
    }

    /// One save → merge → load, in a temporary directory of its own that
    /// is removed when it returns, whatever it returns.
    async fn attempt(&self, stream_kept: bool) -> Result<SquashReport, SquashError> {
        let dir = tempfile::Builder::new()
            .prefix("habitus-squash-")
            .tempdir()
            .map_err(io_error("cannot create a temporary directory"))?;
        let mut plan = layout::ReadPlan {
            image: self.image.to_string(),
            diff_ids: self.details.diff_ids.clone(),
            kept: self.kept,
            stream_kept,
            budget: budget::Budget::new(self.temp_limit),
            spool_names: std::collections::HashMap::new(),
        };
        let mut result = self.save_merge_load(dir.path(), &plan).await;
        if let Err(SquashError::SpoolAgain(names)) = result {
            (self.sink)(&format!(
                "the archive does not name its layers by digest: saving again to spool the {} squashed one(s)",
                names.len()
            ));
            plan.spool_names = names;
            result = self.save_merge_load(dir.path(), &plan).await;
        }
        // The spooled layers are read until the load is done.
        drop(dir);
        Ok(SquashReport {
            image_id: result?,
            layers_before: self.details.diff_ids.len(),
            layers_after: self.kept + 1,
            kept: self.kept,
            method: Method::Merge,
            temp_bytes: plan.budget.written(),
        })
    }

    async fn save_merge_load(
        &self,
        dir: &Path,
        plan: &layout::ReadPlan,
    ) -> Result<String, SquashError> {
        let mut saved = save_spooled(self.engine, self.details, dir, plan).await?;
        if let Some(labels) = self.labels {
            set_labels(&mut saved.config, labels);
        }
        let layer_files = saved.layers.clone();
        let indexed = std::mem::take(&mut saved.indexed);
        let digests: Vec<String> = saved.blobs.iter().map(|b| b.digest.clone()).collect();
        let kept = self.kept;
        let (emits, size) =
            blocking(move || merge_layers(&layer_files, indexed, &digests, kept)).await??;
        let layer_digest = oci_layer_digest(&saved, &emits).await?;
        let loader = Loader {
            engine: self.engine,
            saved: &saved,
            emits: &emits,
            size,
            layer_digest,
            kept,
            tag: self.tag,
            image: self.image,
            created: now_rfc3339(),
            sink: self.sink,
        };
        loader.load_with_fallback().await
    }
}

/// Saves the image from the daemon, spooled into `dir` as `plan` says, and
/// checks that it is the inspected image.
async fn save_spooled(
    engine: &dyn Engine,
    details: &ImageDetails,
    dir: &Path,
    plan: &layout::ReadPlan,
) -> Result<layout::SavedImage, SquashError> {
    let save = engine.save_image(&details.id).await?;
    let reader = SyncIoBridge::new(StreamReader::new(to_io(save)));
    let spool_dir = dir.to_path_buf();
    let read_plan = plan.clone();
    let saved = blocking(move || layout::read_save(reader, &spool_dir, &read_plan)).await??;
    let saved_ids: Vec<&str> = saved.config["rootfs"]["diff_ids"]
        .as_array()
        .map(|ids| ids.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    if saved_ids != details.diff_ids {
        return Err(SquashError::Mismatch {
            image: plan.image.clone(),
        });
    }
    Ok(saved)
}

/// The squashed layer's digest, for the OCI layout only: it names the
/// squashed layer's blob, so it must be known before the blob is sent, and
/// one more pass hashes it.
async fn oci_layer_digest(
    saved: &layout::SavedImage,
    emits: &[Emit],
) -> Result<Option<String>, SquashError> {
    if saved.layout != layout::Layout::Oci {
        return Ok(None);
    }
    let (emits, files) = (emits.to_vec(), saved.layers.clone());
    let digest = blocking(move || {
        write::write_layer(&emits, &files, Hashing::new(std::io::sink()), false)
            .map(|hashing| hashing.finish().0)
    })
    .await?
    .map_err(io_error("cannot hash the squashed layer"))?;
    Ok(Some(digest))
}

/// Indexes (unless `indexed` already has their items) and merges the
/// layers (uncompressed tars; `digests` name them in errors); returns what
/// to write and its size.
fn merge_layers(
    layers: &[PathBuf],
    indexed: Vec<Option<Vec<merge::Item>>>,
    digests: &[String],
    kept: usize,
) -> Result<(Vec<Emit>, u64), SquashError> {
    let mut merger = Merger::new(kept);
    let mut indexed = indexed.into_iter();
    for (i, path) in layers.iter().enumerate() {
        if let Some(items) = indexed.next().flatten() {
            merger.apply(&items);
            continue;
        }
        let file = File::open(path).map_err(io_error("cannot open a spooled layer"))?;
        let items = merge::index_layer(BufReader::new(file)).map_err(|e| SquashError::Layer {
            index: i + 1,
            digest: digests.get(i).cloned().unwrap_or_default(),
            problem: format!("is not a valid tar: {e}"),
        })?;
        merger.apply(&items);
    }
    let emits = merger.finish();
    if merge::needs_unspooled(&emits) {
        return Err(SquashError::KeptNeeded(
            "the squashed layer needs a file of a kept layer".into(),
        ));
    }
    let size = write::write_layer(&emits, layers, Counter::default(), true)
        .map_err(io_error("cannot measure the squashed layer"))?
        .0;
    Ok((emits, size))
}

/// What a merge squash loads into the daemon: the saved image with the
/// squashed layer in place of the layers above the kept ones.
struct Loader<'a> {
    engine: &'a dyn Engine,
    saved: &'a layout::SavedImage,
    emits: &'a [Emit],
    /// The squashed layer's exact size.
    size: u64,
    /// The squashed layer's digest (OCI layout only).
    layer_digest: Option<String>,
    kept: usize,
    tag: &'a str,
    image: &'a str,
    /// The squashed image's creation time.
    created: String,
    sink: &'a LineSink,
}

impl Loader<'_> {
    /// Loads the image without the kept layers' bytes, and if the daemon
    /// did not have those layers after all, again with them; returns the
    /// new image's id.
    async fn load_with_fallback(&self) -> Result<String, SquashError> {
        for full_kept in [false, true] {
            if full_kept && self.kept == 0 {
                break;
            }
            match self.load(full_kept).await {
                Ok(id) => return Ok(id),
                // The daemon did not have the kept layers after all: send
                // them, once they are spooled.
                Err(e) if !full_kept && !self.saved.kept_spooled => {
                    return Err(SquashError::KeptNeeded(format!(
                        "loading without the kept layers failed ({e})"
                    )));
                }
                Err(e) if !full_kept && self.kept > 0 => {
                    (self.sink)(&format!(
                        "loading without the kept layers failed ({e}); sending them"
                    ));
                }
                Err(e) => return Err(e),
            }
        }
        Err(EngineError::Api("the load did not finish".into()).into())
    }

    /// Streams the load archive to the daemon (the kept layers' bytes too
    /// with `full_kept`) and checks that the tag names the squashed image.
    async fn load(&self, full_kept: bool) -> Result<String, SquashError> {
        let emits = self.emits.to_vec();
        let layers = self.saved.layers.clone();
        let blobs = self.saved.blobs.clone();
        let oci = self.saved.layout == layout::Layout::Oci;
        let config = self.saved.config.clone();
        let layer_digest = self.layer_digest.clone();
        let (size, kept) = (self.size, self.kept);
        let tag_owned = self.tag.to_string();
        let image_owned = self.image.to_string();
        let created = self.created.clone();
        let (body, writer) = stream_from(move |out| {
            let plan = LoadPlan {
                emits: &emits,
                layers: &layers,
                blobs: &blobs,
                oci,
                layer_digest,
                keep: kept,
                full_kept,
                layer_size: size,
                tag: &tag_owned,
            };
            write::write_load_archive(out, &plan, |diff_id| {
                let config = rewrite_config(&config, kept, diff_id, &image_owned, &created);
                serde_json::to_vec(&config).unwrap_or_default()
            })
            .map(|(written, _)| written)
        });
        let loaded = self.engine.load_image(body, self.sink.clone()).await;
        let written = joined(writer).await?;
        loaded?;
        let written = written.map_err(io_error("cannot write the squashed image"))?;
        let tag = self.tag;
        let new = details_of(self.engine, tag).await?;
        // A graph driver's image id is the config's digest, the containerd
        // store's the manifest's.
        if new.id != written.image_id && Some(&new.id) != written.manifest_digest.as_ref() {
            return Err(EngineError::Api(format!(
                "`{tag}` is `{}` after the load, not the squashed `{}`",
                new.id, written.image_id
            ))
            .into());
        }
        Ok(new.id)
    }
}

/// The config of the squashed image: the original with `rootfs.diff_ids`
/// and `history` rewritten for `kept` layers plus the squashed one.
pub fn rewrite_config(
    config: &Value,
    kept: usize,
    diff_id: &str,
    image: &str,
    created: &str,
) -> Value {
    let mut config = config.clone();
    let old_ids: Vec<Value> = config["rootfs"]["diff_ids"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let mut ids: Vec<Value> = old_ids.iter().take(kept).cloned().collect();
    ids.push(Value::String(diff_id.to_string()));
    config["rootfs"] = json!({"type": "layers", "diff_ids": ids});

    // Keep the history up to the entry that made the last kept layer.
    let history: Vec<Value> = config["history"].as_array().cloned().unwrap_or_default();
    let mut kept_history = Vec::new();
    let mut layers_seen = 0;
    for entry in &history {
        if layers_seen == kept {
            break;
        }
        if !entry["empty_layer"].as_bool().unwrap_or(false) {
            layers_seen += 1;
        }
        kept_history.push(entry.clone());
    }
    // A history that lists fewer layers than the image has is padded, so
    // that the non-empty entries always match the layers.
    while layers_seen < kept {
        kept_history.push(json!({"created": created, "comment": "kept layer"}));
        layers_seen += 1;
    }
    let squashed_entries = history.len().saturating_sub(kept_history.len());
    kept_history.push(json!({
        "created": created,
        "created_by": "habitus squash",
        "comment": format!(
            "squashed {} layer(s) ({} history entries) of {image} into one",
            old_ids.len() - kept.min(old_ids.len()),
            squashed_entries
        ),
    }));
    config["history"] = Value::Array(kept_history);
    config["created"] = Value::String(created.to_string());
    config
}

/// Sets the labels of an image config (as `docker save` writes it) to
/// `labels`: those of its runtime config, and those of the config of the
/// container it was committed from (`container_config`, which older
/// daemons keep and `docker image inspect` shows), so that no label of
/// that container is left anywhere in the image.
pub fn set_labels(config: &mut Value, labels: &BTreeMap<String, String>) {
    config["config"]["Labels"] = json!(labels);
    if config["container_config"].is_object() {
        config["container_config"]["Labels"] = json!(labels);
    }
}

/// The current time as RFC 3339 UTC (`2024-05-01T12:00:00Z`).
fn now_rfc3339() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    rfc3339(secs)
}

fn rfc3339(secs: u64) -> String {
    let days = (secs / 86_400) as i64;
    let rem = secs % 86_400;
    // Civil date from days since 1970-01-01 (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

#[cfg(test)]
mod tests;
