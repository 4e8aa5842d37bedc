//! Reading `docker save` archives in both layouts the daemon produces: the
//! legacy one (`manifest.json`, `<id>/layer.tar`, `<config>.json`) and the
//! OCI one of Docker 25+ (`index.json`, `oci-layout`, `blobs/sha256/…`).
//!
//! The archive arrives as a stream whose member order is not guaranteed
//! (`manifest.json` may come last), so members are spooled to files in a
//! temporary directory as they arrive, hashed on the way; nothing but the
//! small JSON documents is ever held in memory. A kept layer is the
//! exception ([`ReadPlan::stream_kept`]): it is read as a stream, indexed
//! and hashed, and only its entries without content are spooled. Every
//! byte written counts against the squash's [`Budget`].
//!
//! Layers may be plain tars (Docker's graph drivers), or gzip or zstd (the
//! containerd image store saves its blobs as it stores them, gzip for
//! anything built or pulled). The compression is told by the blob's magic
//! bytes ([`crate::layer`]), never by a name or media type. Every layer is
//! checked against the image before it is used: its blob against its
//! digest (OCI layout), its uncompressed tar against the config's diff id.
//! A squashed layer that is compressed is decompressed into its own spool
//! file, so that the merger can seek in it; the blob as saved is kept beside it, to
//! be sent back unchanged when a load needs it. Whatever cannot be read
//! (unknown compression, truncated, corrupt, missing) is an error naming
//! the layer by index and digest: a squash never goes on with a layer it
//! could not read.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::budget::{over_limit, Budget, Positioned};
use super::merge::{self, Item, Kind, NOT_SPOOLED};
use super::write::{copy_entry, Hashing};
use super::SquashError;
use crate::layer::{link_member, member_path as normalize};
use crate::layer::{Compression, Layer, LayerError};

/// Size of the buffer used to copy members to their spool files.
const COPY_BUFFER: usize = 1 << 20;

/// Largest JSON document (manifest, index, config) read into memory.
const MAX_JSON: u64 = 64 << 20;

/// A saved image, spooled to disk.
#[derive(Debug)]
pub struct SavedImage {
    /// The image config, as saved.
    pub config: Value,
    /// One spooled, uncompressed layer tar per layer, bottom first.
    pub layers: Vec<PathBuf>,
    /// The layers' blobs as saved, bottom first.
    pub blobs: Vec<Blob>,
    /// The layers already indexed for the merger, bottom first: the kept
    /// ones that were read as a stream and not spooled (their file in
    /// `layers` then holds only their entries without content).
    pub indexed: Vec<Option<Vec<Item>>>,
    /// Every layer's bytes are spooled (`layers` and `blobs` can be sent
    /// back); false when the kept layers were only streamed.
    pub kept_spooled: bool,
    /// Which layout the archive had.
    pub layout: Layout,
}

/// How to read a saved image.
#[derive(Debug, Clone)]
pub struct ReadPlan {
    /// The image, for errors.
    pub image: String,
    /// The diff ids the daemon gave for it, bottom first.
    pub diff_ids: Vec<String>,
    /// How many bottom layers are kept.
    pub kept: usize,
    /// Stream the kept layers instead of spooling them: they are
    /// decompressed only on the fly, to index and verify them.
    pub stream_kept: bool,
    /// What the temporary files may take.
    pub budget: Budget,
    /// Members to spool although their name does not say what they are
    /// (`<id>/layer.tar`): the squashed layers a first pass found, with
    /// their index.
    pub spool_names: HashMap<String, usize>,
}

impl ReadPlan {
    /// A plan that spools everything.
    #[cfg(test)]
    pub fn spool_all(budget: Budget) -> ReadPlan {
        ReadPlan {
            image: String::new(),
            diff_ids: Vec::new(),
            kept: 0,
            stream_kept: false,
            budget,
            spool_names: HashMap::new(),
        }
    }

    /// The error for a write of `what` that failed with `e`: the temporary
    /// files' limit if that is what it was, else an I/O error on `path`.
    fn write_error(&self, what: &str, path: &Path, e: io::Error) -> SquashError {
        match over_limit(&e) {
            Some(over) => SquashError::TempLimit {
                image: self.image.clone(),
                what: what.to_string(),
                written: over.written,
                limit: over.limit,
            },
            None => io_at("cannot write", path)(e),
        }
    }
}

/// A kept layer read as a stream: indexed, verified, and only its entries
/// without content spooled.
#[derive(Debug)]
struct StreamedLayer {
    /// The spooled entries (directories, links, empty files).
    headers: PathBuf,
    /// Its items; `start` is in `headers`, or [`NOT_SPOOLED`].
    items: Vec<Item>,
    /// What reading it showed.
    compression: Compression,
    diff_id: String,
    size: u64,
}

/// A layer's blob as `docker save` wrote it (compressed or not).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Blob {
    /// The spooled blob.
    pub path: PathBuf,
    /// `sha256:<hex>` of the blob.
    pub digest: String,
    /// The blob's size in bytes.
    pub size: u64,
    /// How it is compressed, from its magic bytes.
    pub compression: Compression,
}

/// The two archive layouts of `docker save`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// `manifest.json` with `Config` and `Layers` paths.
    Legacy,
    /// `index.json` pointing at an OCI manifest in `blobs/`.
    Oci,
}

/// What one archive member became.
#[derive(Debug)]
enum Member {
    /// A regular file, spooled, with the `sha256:<hex>` and size of its
    /// bytes.
    File(PathBuf, String, u64),
    /// A symbolic link, already resolved to an archive path.
    Link(String),
    /// A kept layer, streamed.
    Streamed(StreamedLayer),
}

/// Spools every member of the archive read from `reader` into `dir`, then
/// finds the image's config and layers.
///
/// Docker 25+ writes both `manifest.json` and `index.json`; the legacy
/// manifest is read first there too, since Docker writes it for the one
/// platform it saved, while an index may list others (and attestations).
pub fn read_save(
    reader: impl Read,
    dir: &Path,
    plan: &ReadPlan,
) -> Result<SavedImage, SquashError> {
    let members = spool(reader, dir, plan)?;
    let layout = if members.contains_key("index.json") {
        Layout::Oci
    } else {
        Layout::Legacy
    };
    let (config, layers) = if members.contains_key("manifest.json") {
        legacy(&members)?
    } else if members.contains_key("index.json") {
        oci(&members)?
    } else {
        return Err(SquashError::Layout(
            "the archive has neither `manifest.json` nor `index.json`".into(),
        ));
    };
    let diff_ids: Vec<String> = config["rootfs"]["diff_ids"]
        .as_array()
        .map(|ids| {
            ids.iter()
                .map(|id| id.as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default();
    if diff_ids.len() != layers.len() {
        return Err(SquashError::Layout(format!(
            "the config lists {} layer(s) but the manifest {}",
            diff_ids.len(),
            layers.len()
        )));
    }
    let unspooled = streamed_squashed(&members, &layers, plan);
    if !unspooled.is_empty() {
        return Err(if plan.spool_names.is_empty() {
            SquashError::SpoolAgain(unspooled)
        } else {
            SquashError::KeptNeeded("a squashed layer was not spooled".into())
        });
    }
    let mut tars = Vec::with_capacity(layers.len());
    let mut blobs = Vec::with_capacity(layers.len());
    let mut indexed = Vec::with_capacity(layers.len());
    for (i, (layer, diff_id)) in layers.iter().zip(&diff_ids).enumerate() {
        let at = LayerAt {
            index: i,
            diff_id,
            dir,
            plan,
        };
        let (tar, blob, items) = prepare_layer(&members, layer, &at)?;
        tars.push(tar);
        blobs.push(blob);
        indexed.push(items);
    }
    Ok(SavedImage {
        config,
        layers: tars,
        blobs,
        indexed,
        kept_spooled: !plan.stream_kept,
        layout,
    })
}

/// The members of squashed layers (above the kept ones) that were
/// streamed, not spooled, with their layer's index.
fn streamed_squashed(
    members: &HashMap<String, Member>,
    layers: &[LayerRef],
    plan: &ReadPlan,
) -> HashMap<String, usize> {
    layers
        .iter()
        .enumerate()
        .skip(plan.kept)
        .filter_map(|(index, layer)| {
            let name = resolved_name(members, &layer.member);
            matches!(members.get(&name), Some(Member::Streamed(_))).then_some((name, index))
        })
        .collect()
}

/// Where a layer is: its index (0-based) and diff id, and how to read it.
struct LayerAt<'a> {
    index: usize,
    diff_id: &'a str,
    dir: &'a Path,
    plan: &'a ReadPlan,
}

impl LayerAt<'_> {
    fn kept(&self) -> bool {
        self.plan.stream_kept && self.index < self.plan.kept
    }
}

/// A layer as a manifest names it: the member, and the digest the
/// manifest gives its blob (OCI layout only).
#[derive(Debug)]
struct LayerRef {
    member: String,
    digest: Option<String>,
}

/// A layer's uncompressed tar, its blob, and its items if it is already
/// indexed.
type Prepared = (PathBuf, Blob, Option<Vec<Item>>);

/// Checks a layer and gives its uncompressed tar and its blob. A plain
/// tar is used where it was spooled; a compressed one is decompressed next
/// to it. A kept layer, with [`ReadPlan::stream_kept`], is only read as a
/// stream: indexed and verified, never decompressed to disk.
fn prepare_layer(
    members: &HashMap<String, Member>,
    layer: &LayerRef,
    at: &LayerAt<'_>,
) -> Result<Prepared, SquashError> {
    let (index, diff_id) = (at.index, at.diff_id);
    let named = layer.digest.as_deref().unwrap_or(diff_id);
    let fail = |problem: String| SquashError::Layer {
        index: index + 1,
        digest: named.to_string(),
        problem,
    };
    if let Ok(Member::Streamed(streamed)) = file_of(members, &layer.member) {
        return use_streamed(streamed, layer, at, &fail);
    }
    let (path, digest, size) = spooled_blob(members, layer, &fail)?;
    let file = File::open(&path).map_err(io_at("cannot open", &path))?;
    let opened = Layer::open(io::BufReader::new(file)).map_err(|e| match e {
        LayerError::Format(what) => fail(format!("is {what}")),
        LayerError::Io(e) => fail(format!("cannot be read: {e}")),
    })?;
    let compression = opened.compression();
    let blob = Blob {
        path: path.clone(),
        digest: digest.clone(),
        size,
        compression,
    };
    let what = format!("layer {} (`{named}`)", index + 1);
    if at.kept() {
        let headers = at.dir.join(format!("kept-{index}.tar"));
        let streamed = index_streamed(opened, &headers, &at.plan.budget)
            .map_err(|e| streamed_error(e, at.plan, &what, &headers, &fail))?;
        check_diff_id(&streamed.diff_id, diff_id, &fail)?;
        return Ok((headers, blob, Some(streamed.items)));
    }
    if compression == Compression::None {
        // The spool already hashed it: a plain tar's digest is its diff id.
        check_diff_id(&digest, diff_id, &fail)?;
        return Ok((path, blob, None));
    }
    let tar_path = at.dir.join(format!("layer-{index}.tar"));
    decompress(opened, &tar_path, at, &what, &fail)?;
    Ok((tar_path, blob, None))
}

/// A layer that was streamed while the archive was spooled: kept, plain,
/// and the layer the manifest names at its place.
fn use_streamed(
    streamed: &StreamedLayer,
    layer: &LayerRef,
    at: &LayerAt<'_>,
    fail: &impl Fn(String) -> SquashError,
) -> Result<Prepared, SquashError> {
    let unexpected = |why: &str| {
        SquashError::KeptNeeded(format!(
            "`{}` is layer {} of the archive but {why}",
            layer.member,
            at.index + 1
        ))
    };
    if !at.kept() {
        return Err(unexpected("is not kept"));
    }
    if streamed.compression != Compression::None {
        return Err(unexpected("is compressed"));
    }
    if streamed.diff_id != at.diff_id {
        return Err(unexpected("came at another place"));
    }
    if let Some(expected) = &layer.digest {
        if *expected != streamed.diff_id {
            return Err(fail(format!(
                "does not match its digest: the blob's is `{}` (truncated or corrupt)",
                streamed.diff_id
            )));
        }
    }
    let blob = Blob {
        path: streamed.headers.clone(),
        digest: streamed.diff_id.clone(),
        size: streamed.size,
        compression: streamed.compression,
    };
    Ok((streamed.headers.clone(), blob, Some(streamed.items.clone())))
}

/// Checks a layer's diff id against the config's.
fn check_diff_id(
    found: &str,
    diff_id: &str,
    fail: &impl Fn(String) -> SquashError,
) -> Result<(), SquashError> {
    if found == diff_id {
        return Ok(());
    }
    Err(fail(format!(
        "does not match the config: its diff id is `{found}`, the config says `{diff_id}` (truncated or corrupt)"
    )))
}

/// The error of streaming or decompressing a layer (`what`) into `path`:
/// the temporary files' limit, a full disk, or the layer's own fault.
fn streamed_error(
    e: io::Error,
    plan: &ReadPlan,
    what: &str,
    path: &Path,
    fail: &impl Fn(String) -> SquashError,
) -> SquashError {
    if over_limit(&e).is_some()
        || e.kind() == io::ErrorKind::StorageFull
        || e.raw_os_error() == Some(28)
    {
        plan.write_error(what, path, e)
    } else {
        fail(format!("cannot be read: {e}"))
    }
}

/// Reads a layer as a stream to its end: indexes it, spools into `headers`
/// only its entries without content (directories, links, empty files:
/// the squashed layer may need them as parents), and hashes it.
fn index_streamed(
    mut layer: Layer<'_>,
    headers: &Path,
    budget: &Budget,
) -> io::Result<StreamedLayer> {
    let file = File::create(headers)?;
    let out = Positioned::new(io::BufWriter::new(budget.meter(file)));
    let mut builder = tar::Builder::new(out);
    let mut items = Vec::new();
    {
        let mut archive = tar::Archive::new(&mut layer);
        for entry in archive.entries()? {
            let mut entry = entry?;
            let Some(mut item) = merge::item_of(&entry, 0) else {
                continue;
            };
            if let Item::Entry { kind, start, .. } = &mut item {
                if *kind == Kind::File && entry.size() > 0 {
                    *start = NOT_SPOOLED;
                } else {
                    *start = builder.get_ref().position();
                    let path = entry.path_bytes().into_owned();
                    copy_entry(&mut builder, &mut entry, &path, None, false)?;
                }
            }
            items.push(item);
        }
    }
    let compression = layer.compression();
    let summary = layer.finish()?;
    builder.into_inner()?.into_inner().flush()?;
    Ok(StreamedLayer {
        headers: headers.to_path_buf(),
        items,
        compression,
        diff_id: summary.diff_id,
        size: summary.bytes,
    })
}

/// The spooled file of a layer's member, its digest and size, checked
/// against the digest the manifest gives it.
fn spooled_blob(
    members: &HashMap<String, Member>,
    layer: &LayerRef,
    fail: &impl Fn(String) -> SquashError,
) -> Result<(PathBuf, String, u64), SquashError> {
    let (path, digest, size) = match file_of(members, &layer.member) {
        Ok(Member::File(path, digest, size)) => (path.clone(), digest.clone(), *size),
        Ok(Member::Streamed(_)) => {
            return Err(SquashError::KeptNeeded(format!(
                "`{}` was streamed",
                layer.member
            )))
        }
        _ => {
            return Err(fail(format!(
                "is missing: the archive has no member `{}`",
                layer.member
            )))
        }
    };
    if let Some(expected) = &layer.digest {
        if *expected != digest {
            return Err(fail(format!(
                "does not match its digest: the blob's is `{digest}` (truncated or corrupt)"
            )));
        }
    }
    Ok((path, digest, size))
}

/// Decompresses a compressed layer into `tar_path` and checks its diff id.
/// A full disk or the temporary files' limit is a write error; anything
/// else names the layer.
fn decompress(
    mut layer: Layer<'_>,
    tar_path: &Path,
    at: &LayerAt<'_>,
    what: &str,
    fail: &impl Fn(String) -> SquashError,
) -> Result<(), SquashError> {
    let compression = layer.compression();
    let file = File::create(tar_path).map_err(io_at("cannot create", tar_path))?;
    let mut out = at.plan.budget.meter(file);
    let summary = io::copy(&mut layer, &mut out)
        .and_then(|_| layer.finish())
        .map_err(|e| {
            if over_limit(&e).is_some()
                || e.kind() == io::ErrorKind::StorageFull
                || e.raw_os_error() == Some(28)
            {
                at.plan.write_error(what, tar_path, e)
            } else {
                fail(format!("is not valid {compression}: {e}"))
            }
        })?;
    if summary.diff_id != at.diff_id {
        return Err(fail(format!(
            "does not match the config: its diff id is `{}`, the config says `{}`",
            summary.diff_id, at.diff_id
        )));
    }
    Ok(())
}

/// The error of `doing` something to `path` (`cannot open`).
fn io_at<'a>(doing: &'a str, path: &'a Path) -> impl FnOnce(io::Error) -> SquashError + 'a {
    move |source| SquashError::Io {
        what: format!("{doing} `{}`", path.display()),
        source,
    }
}

/// Spools each regular member to a file in `dir`, hashing it, and
/// resolves each link member to the archive path it names. With
/// [`ReadPlan::stream_kept`], a member that is a kept layer (told by its
/// name, see [`kept_member`]) is streamed instead of spooled.
fn spool(
    reader: impl Read,
    dir: &Path,
    plan: &ReadPlan,
) -> Result<HashMap<String, Member>, SquashError> {
    let archive_error = |e: io::Error| SquashError::Layout(format!("cannot read the archive: {e}"));
    let mut archive = tar::Archive::new(reader);
    let mut members = HashMap::new();
    let mut buffer = vec![0u8; COPY_BUFFER];
    for (n, entry) in archive.entries().map_err(archive_error)?.enumerate() {
        let mut entry = entry.map_err(archive_error)?;
        let name = normalize(&String::from_utf8_lossy(&entry.path_bytes()));
        if let Some(resolved) = link_member(&name, &entry) {
            members.insert(name, Member::Link(resolved));
            continue;
        }
        if !matches!(
            entry.header().entry_type(),
            tar::EntryType::Regular | tar::EntryType::Continuous
        ) {
            continue;
        }
        let (streamed, what) = is_streamed(&name, plan);
        let member = if streamed {
            let headers = dir.join(format!("streamed-{n}.tar"));
            stream_member(&mut entry, &headers, &what, plan)?
        } else {
            let path = dir.join(format!("member-{n}"));
            let file = File::create(&path).map_err(io_at("cannot create", &path))?;
            let mut file = Hashing::new(plan.budget.meter(file));
            loop {
                let read = entry.read(&mut buffer).map_err(archive_error)?;
                if read == 0 {
                    break;
                }
                file.write_all(&buffer[..read])
                    .map_err(|e| plan.write_error(&what, &path, e))?;
            }
            let (digest, size, _) = file.finish();
            Member::File(path, digest, size)
        };
        members.insert(name, member);
    }
    Ok(members)
}

/// Whether the member `name` is to be streamed rather than spooled, and
/// what it is, for errors. Only the name can tell before the bytes are
/// read: `blobs/sha256/<hex>` is the plain layer of that diff id (Docker
/// 25+ names uncompressed layers so), streamed if it is kept. Older
/// daemons write `<id>/layer.tar`, whose name tells nothing: a first pass
/// streams them all, and a second spools those it found were squashed
/// ([`ReadPlan::spool_names`]).
fn is_streamed(name: &str, plan: &ReadPlan) -> (bool, String) {
    let member = || format!("archive member `{name}`");
    let layer = |index: usize| format!("layer {} (`{}`)", index + 1, plan.diff_ids[index]);
    if name.ends_with("/layer.tar") && !name.starts_with("blobs/") {
        return match plan.spool_names.get(name) {
            Some(&index) if index < plan.diff_ids.len() => (false, layer(index)),
            _ => (plan.stream_kept, member()),
        };
    }
    let digest = name
        .strip_prefix("blobs/")
        .and_then(|rest| rest.split_once('/'))
        .map(|(algorithm, hex)| format!("{algorithm}:{hex}"));
    let Some(index) = digest.and_then(|d| plan.diff_ids.iter().position(|id| *id == d)) else {
        return (false, member());
    };
    let squashed = &plan.diff_ids[plan.kept.min(plan.diff_ids.len())..];
    let kept = index < plan.kept && !squashed.contains(&plan.diff_ids[index]);
    (plan.stream_kept && kept, layer(index))
}

/// Streams a layer out of the archive: indexed and hashed, its entries
/// without content spooled to `headers`.
fn stream_member(
    entry: &mut impl Read,
    headers: &Path,
    what: &str,
    plan: &ReadPlan,
) -> Result<Member, SquashError> {
    let fail =
        |problem: String| SquashError::Layout(format!("{what} is not a readable layer: {problem}"));
    let layer = Layer::open(entry).map_err(|e| match e {
        LayerError::Format(what) => fail(format!("it is {what}")),
        LayerError::Io(e) => fail(e.to_string()),
    })?;
    let streamed = index_streamed(layer, headers, &plan.budget)
        .map_err(|e| streamed_error(e, plan, what, headers, &fail))?;
    Ok(Member::Streamed(streamed))
}

/// The archive path of the member behind `name`, following links.
fn resolved_name(members: &HashMap<String, Member>, name: &str) -> String {
    let mut name = normalize(name);
    for _ in 0..16 {
        match members.get(&name) {
            Some(Member::Link(target)) => name = target.clone(),
            _ => break,
        }
    }
    name
}

/// The file behind an archive path, following links inside the archive.
fn file_of<'a>(
    members: &'a HashMap<String, Member>,
    name: &str,
) -> Result<&'a Member, SquashError> {
    let mut name = normalize(name);
    for _ in 0..16 {
        match members.get(&name) {
            Some(member @ (Member::File(..) | Member::Streamed(_))) => return Ok(member),
            Some(Member::Link(target)) => name = target.clone(),
            None => break,
        }
    }
    Err(SquashError::Layout(format!(
        "the archive has no member `{name}`"
    )))
}

fn json(members: &HashMap<String, Member>, name: &str) -> Result<Value, SquashError> {
    let Member::File(path, ..) = file_of(members, name)? else {
        return Err(SquashError::Layout(format!(
            "`{name}` is a layer, not JSON"
        )));
    };
    let file = File::open(path).map_err(io_at("cannot open", path))?;
    let mut text = Vec::new();
    file.take(MAX_JSON)
        .read_to_end(&mut text)
        .map_err(io_at("cannot read", path))?;
    serde_json::from_slice(&text)
        .map_err(|e| SquashError::Layout(format!("`{name}` is not valid JSON: {e}")))
}

/// The config and the layers of an image.
type Found = (Value, Vec<LayerRef>);

fn legacy(members: &HashMap<String, Member>) -> Result<Found, SquashError> {
    let manifest = json(members, "manifest.json")?;
    let entry = manifest
        .as_array()
        .and_then(|images| images.first())
        .ok_or_else(|| SquashError::Layout("`manifest.json` lists no image".into()))?;
    let config_name = entry["Config"]
        .as_str()
        .ok_or_else(|| SquashError::Layout("`manifest.json` has no `Config`".into()))?;
    let config = json(members, config_name)?;
    let layers = entry["Layers"]
        .as_array()
        .ok_or_else(|| SquashError::Layout("`manifest.json` has no `Layers`".into()))?
        .iter()
        .map(|layer| {
            let name = layer.as_str().ok_or_else(|| {
                SquashError::Layout("a layer in `manifest.json` is not a path".into())
            })?;
            // Docker 25+ names the blobs by digest here too.
            let digest = normalize(name)
                .strip_prefix("blobs/")
                .and_then(|rest| rest.split_once('/'))
                .map(|(algorithm, hex)| format!("{algorithm}:{hex}"));
            Ok(LayerRef {
                member: name.to_string(),
                digest,
            })
        })
        .collect::<Result<Vec<_>, SquashError>>()?;
    Ok((config, layers))
}

fn blob_name(digest: &str) -> Result<String, SquashError> {
    match digest.split_once(':') {
        Some((algorithm, hex)) if !hex.is_empty() && !hex.contains('/') => {
            Ok(format!("blobs/{algorithm}/{hex}"))
        }
        _ => Err(SquashError::Layout(format!("bad digest `{digest}`"))),
    }
}

const INDEX_TYPES: [&str; 2] = [
    "application/vnd.oci.image.index.v1+json",
    "application/vnd.docker.distribution.manifest.list.v2+json",
];

fn oci(members: &HashMap<String, Member>) -> Result<Found, SquashError> {
    let mut document = json(members, "index.json")?;
    // An index may point at another index (one per platform); follow the
    // first manifest until an image manifest is reached.
    for _ in 0..8 {
        let is_index = document.get("manifests").is_some() && document.get("layers").is_none();
        if !is_index {
            break;
        }
        let first = document["manifests"]
            .as_array()
            .and_then(|m| m.first())
            .ok_or_else(|| SquashError::Layout("`index.json` lists no manifest".into()))?;
        let digest = first["digest"]
            .as_str()
            .ok_or_else(|| SquashError::Layout("a manifest in the index has no digest".into()))?
            .to_string();
        let media_type = first["mediaType"].as_str().unwrap_or_default().to_string();
        document = json(members, &blob_name(&digest)?)?;
        if !INDEX_TYPES.contains(&media_type.as_str()) && document.get("layers").is_none() {
            return Err(SquashError::Layout(format!(
                "manifest `{digest}` has no layers"
            )));
        }
    }
    let config_digest = document["config"]["digest"]
        .as_str()
        .ok_or_else(|| SquashError::Layout("the image manifest has no config".into()))?;
    let config = json(members, &blob_name(config_digest)?)?;
    let layers = document["layers"]
        .as_array()
        .ok_or_else(|| SquashError::Layout("the image manifest has no layers".into()))?
        .iter()
        .map(|layer| {
            // The media type is not trusted to say the compression: the
            // blob's magic bytes do.
            let digest = layer["digest"]
                .as_str()
                .ok_or_else(|| SquashError::Layout("a layer has no digest".into()))?;
            Ok(LayerRef {
                member: blob_name(digest)?,
                digest: Some(digest.to_string()),
            })
        })
        .collect::<Result<Vec<_>, SquashError>>()?;
    Ok((config, layers))
}

#[cfg(test)]
mod tests {
    use super::normalize;
    use crate::layer::link_target as resolve;

    #[test]
    fn paths_normalize_and_links_resolve() {
        assert_eq!(normalize("./a//b/"), "a/b");
        assert_eq!(normalize("/blobs/sha256/x"), "blobs/sha256/x");
        assert_eq!(
            resolve("abc/layer.tar", "../def/layer.tar"),
            "def/layer.tar"
        );
        assert_eq!(resolve("top", "x/y"), "x/y");
    }
}
