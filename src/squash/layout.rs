//! Reading `docker save` archives in both layouts the daemon produces: the
//! legacy one (`manifest.json`, `<id>/layer.tar`, `<config>.json`) and the
//! OCI one of Docker 25+ (`index.json`, `oci-layout`, `blobs/sha256/…`).
//!
//! The archive arrives as a stream whose member order is not guaranteed
//! (`manifest.json` may come last), so every member is spooled to a file in
//! a temporary directory as it arrives, hashed on the way; nothing but the
//! small JSON documents is ever held in memory.
//!
//! Layers may be plain tars (Docker's graph drivers), or gzip or zstd (the
//! containerd image store saves its blobs as it stores them, gzip for
//! anything built or pulled). The compression is told by the blob's magic
//! bytes ([`crate::layer`]), never by a name or media type. Every layer is
//! checked against the image before it is used: its blob against its
//! digest (OCI layout), its uncompressed tar against the config's diff id.
//! A layer that is compressed is decompressed into its own spool file, so
//! that the merger can seek in it; the blob as saved is kept beside it, to
//! be sent back unchanged when a load needs it. Whatever cannot be read
//! (unknown compression, truncated, corrupt, missing) is an error naming
//! the layer by index and digest: a squash never goes on with a layer it
//! could not read.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::write::Hashing;
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
    /// Which layout the archive had.
    pub layout: Layout,
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
}

/// Spools every member of the archive read from `reader` into `dir`, then
/// finds the image's config and layers.
///
/// Docker 25+ writes both `manifest.json` and `index.json`; the legacy
/// manifest is read first there too, since Docker writes it for the one
/// platform it saved, while an index may list others (and attestations).
pub fn read_save(reader: impl Read, dir: &Path) -> Result<SavedImage, SquashError> {
    let members = spool(reader, dir)?;
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
    let mut tars = Vec::with_capacity(layers.len());
    let mut blobs = Vec::with_capacity(layers.len());
    for (i, (layer, diff_id)) in layers.iter().zip(&diff_ids).enumerate() {
        let (tar, blob) = prepare_layer(&members, layer, i, diff_id, dir)?;
        tars.push(tar);
        blobs.push(blob);
    }
    Ok(SavedImage {
        config,
        layers: tars,
        blobs,
        layout,
    })
}

/// A layer as a manifest names it: the member, and the digest the
/// manifest gives its blob (OCI layout only).
#[derive(Debug)]
struct LayerRef {
    member: String,
    digest: Option<String>,
}

/// Checks layer `index` (0-based) and gives its uncompressed tar and its
/// blob. A plain tar is used where it was spooled; a compressed one is
/// decompressed next to it.
fn prepare_layer(
    members: &HashMap<String, Member>,
    layer: &LayerRef,
    index: usize,
    diff_id: &str,
    dir: &Path,
) -> Result<(PathBuf, Blob), SquashError> {
    let named = layer.digest.as_deref().unwrap_or(diff_id);
    let fail = |problem: String| SquashError::Layer {
        index: index + 1,
        digest: named.to_string(),
        problem,
    };
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
    if compression == Compression::None {
        // The spool already hashed it: a plain tar's digest is its diff id.
        if digest != diff_id {
            return Err(fail(format!(
                "does not match the config: its diff id is `{digest}`, the config says `{diff_id}` (truncated or corrupt)"
            )));
        }
        return Ok((path, blob));
    }
    let tar_path = dir.join(format!("layer-{index}.tar"));
    decompress(opened, &tar_path, diff_id, &fail)?;
    Ok((tar_path, blob))
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
/// A full disk is an I/O error; anything else names the layer.
fn decompress(
    mut layer: Layer<'_>,
    tar_path: &Path,
    diff_id: &str,
    fail: &impl Fn(String) -> SquashError,
) -> Result<(), SquashError> {
    let compression = layer.compression();
    let mut out = File::create(tar_path).map_err(io_at("cannot create", tar_path))?;
    let summary = io::copy(&mut layer, &mut out)
        .and_then(|_| layer.finish())
        .map_err(|e| {
            if e.kind() == io::ErrorKind::StorageFull || e.raw_os_error() == Some(28) {
                io_at("cannot write", tar_path)(e)
            } else {
                fail(format!("is not valid {compression}: {e}"))
            }
        })?;
    if summary.diff_id != diff_id {
        return Err(fail(format!(
            "does not match the config: its diff id is `{}`, the config says `{diff_id}`",
            summary.diff_id
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
/// resolves each link member to the archive path it names.
fn spool(reader: impl Read, dir: &Path) -> Result<HashMap<String, Member>, SquashError> {
    let archive_error = |e: io::Error| SquashError::Layout(format!("cannot read the archive: {e}"));
    let mut archive = tar::Archive::new(reader);
    let mut members = HashMap::new();
    let mut buffer = vec![0u8; COPY_BUFFER];
    for (n, entry) in archive.entries().map_err(archive_error)?.enumerate() {
        let mut entry = entry.map_err(archive_error)?;
        let name = normalize(&String::from_utf8_lossy(&entry.path_bytes()));
        if let Some(resolved) = link_member(&name, &entry) {
            members.insert(name, Member::Link(resolved));
        } else if matches!(
            entry.header().entry_type(),
            tar::EntryType::Regular | tar::EntryType::Continuous
        ) {
            let path = dir.join(format!("member-{n}"));
            let file = File::create(&path).map_err(io_at("cannot create", &path))?;
            let mut file = Hashing::new(file);
            loop {
                let read = entry.read(&mut buffer).map_err(archive_error)?;
                if read == 0 {
                    break;
                }
                file.write_all(&buffer[..read])
                    .map_err(io_at("cannot write", &path))?;
            }
            let (digest, size, _) = file.finish();
            members.insert(name, Member::File(path, digest, size));
        }
    }
    Ok(members)
}

/// The file behind an archive path, following links inside the archive.
fn file_of<'a>(
    members: &'a HashMap<String, Member>,
    name: &str,
) -> Result<&'a Member, SquashError> {
    let mut name = normalize(name);
    for _ in 0..16 {
        match members.get(&name) {
            Some(member @ Member::File(..)) => return Ok(member),
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
        unreachable!("file_of gives files only")
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
