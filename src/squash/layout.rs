//! Reading `docker save` archives in both layouts the daemon produces: the
//! legacy one (`manifest.json`, `<id>/layer.tar`, `<config>.json`) and the
//! OCI one of Docker 25+ (`index.json`, `oci-layout`, `blobs/sha256/…`).
//!
//! The archive arrives as a stream whose member order is not guaranteed
//! (`manifest.json` may come last), so every member is spooled to a file in
//! a temporary directory as it arrives; nothing but the small JSON
//! documents is ever held in memory.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read, Write};
use std::path::{Path, PathBuf};

use serde_json::Value;

use super::SquashError;

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
    /// Which layout the archive had.
    pub layout: Layout,
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
    File(PathBuf),
    /// A symbolic link, already resolved to an archive path.
    Link(String),
}

/// Spools every member of the archive read from `reader` into `dir`, then
/// finds the image's config and layers.
pub fn read_save(reader: impl Read, dir: &Path) -> Result<SavedImage, SquashError> {
    let members = spool(reader, dir)?;
    if members.contains_key("manifest.json") {
        legacy(&members)
    } else if members.contains_key("index.json") {
        oci(&members)
    } else {
        Err(SquashError::Layout(
            "the archive has neither `manifest.json` nor `index.json`".into(),
        ))
    }
}

fn spool(reader: impl Read, dir: &Path) -> Result<HashMap<String, Member>, SquashError> {
    let archive_error = |e: io::Error| SquashError::Layout(format!("cannot read the archive: {e}"));
    let mut archive = tar::Archive::new(reader);
    let mut members = HashMap::new();
    let mut buffer = vec![0u8; COPY_BUFFER];
    for (n, entry) in archive.entries().map_err(archive_error)?.enumerate() {
        let mut entry = entry.map_err(archive_error)?;
        let name = normalize(&String::from_utf8_lossy(&entry.path_bytes()));
        match entry.header().entry_type() {
            tar::EntryType::Regular | tar::EntryType::Continuous => {
                let path = dir.join(format!("member-{n}"));
                let mut file = File::create(&path).map_err(|source| SquashError::Io {
                    what: format!("cannot create `{}`", path.display()),
                    source,
                })?;
                loop {
                    let read = entry.read(&mut buffer).map_err(archive_error)?;
                    if read == 0 {
                        break;
                    }
                    file.write_all(&buffer[..read])
                        .map_err(|source| SquashError::Io {
                            what: format!("cannot write `{}`", path.display()),
                            source,
                        })?;
                }
                members.insert(name, Member::File(path));
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = entry
                    .link_name_bytes()
                    .map(|t| String::from_utf8_lossy(&t).into_owned())
                    .unwrap_or_default();
                let resolved = if entry.header().entry_type() == tar::EntryType::Link {
                    normalize(&target)
                } else {
                    resolve(&name, &target)
                };
                members.insert(name, Member::Link(resolved));
            }
            _ => {}
        }
    }
    Ok(members)
}

/// `./a//b/` → `a/b`.
fn normalize(path: &str) -> String {
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                parts.pop();
            }
            other => parts.push(other),
        }
    }
    parts.join("/")
}

/// A symlink target relative to the link's directory, as an archive path.
fn resolve(link: &str, target: &str) -> String {
    if target.starts_with('/') {
        return normalize(target);
    }
    match link.rsplit_once('/') {
        Some((dir, _)) => normalize(&format!("{dir}/{target}")),
        None => normalize(target),
    }
}

/// The file behind an archive path, following links inside the archive.
fn file_of<'a>(members: &'a HashMap<String, Member>, name: &str) -> Result<&'a Path, SquashError> {
    let mut name = normalize(name);
    for _ in 0..16 {
        match members.get(&name) {
            Some(Member::File(path)) => return Ok(path),
            Some(Member::Link(target)) => name = target.clone(),
            None => break,
        }
    }
    Err(SquashError::Layout(format!(
        "the archive has no member `{name}`"
    )))
}

fn json(members: &HashMap<String, Member>, name: &str) -> Result<Value, SquashError> {
    let path = file_of(members, name)?;
    let file = File::open(path).map_err(|source| SquashError::Io {
        what: format!("cannot open `{}`", path.display()),
        source,
    })?;
    let mut text = Vec::new();
    file.take(MAX_JSON)
        .read_to_end(&mut text)
        .map_err(|source| SquashError::Io {
            what: format!("cannot read `{}`", path.display()),
            source,
        })?;
    serde_json::from_slice(&text)
        .map_err(|e| SquashError::Layout(format!("`{name}` is not valid JSON: {e}")))
}

fn legacy(members: &HashMap<String, Member>) -> Result<SavedImage, SquashError> {
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
            file_of(members, name).map(Path::to_path_buf)
        })
        .collect::<Result<Vec<_>, _>>()?;
    checked(config, layers, Layout::Legacy)
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

const UNCOMPRESSED_LAYER_TYPES: [&str; 3] = [
    "application/vnd.oci.image.layer.v1.tar",
    "application/vnd.docker.image.rootfs.diff.tar",
    "application/vnd.oci.image.layer.nondistributable.v1.tar",
];

fn oci(members: &HashMap<String, Member>) -> Result<SavedImage, SquashError> {
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
            let media_type = layer["mediaType"].as_str().unwrap_or_default();
            if !UNCOMPRESSED_LAYER_TYPES.contains(&media_type) {
                return Err(SquashError::UnsupportedLayer {
                    media_type: media_type.to_string(),
                });
            }
            let digest = layer["digest"]
                .as_str()
                .ok_or_else(|| SquashError::Layout("a layer has no digest".into()))?;
            file_of(members, &blob_name(digest)?).map(Path::to_path_buf)
        })
        .collect::<Result<Vec<_>, _>>()?;
    checked(config, layers, Layout::Oci)
}

fn checked(config: Value, layers: Vec<PathBuf>, layout: Layout) -> Result<SavedImage, SquashError> {
    let diff_ids = config["rootfs"]["diff_ids"].as_array().map_or(0, Vec::len);
    if diff_ids != layers.len() {
        return Err(SquashError::Layout(format!(
            "the config lists {diff_ids} layer(s) but the manifest {}",
            layers.len()
        )));
    }
    Ok(SavedImage {
        config,
        layers,
        layout,
    })
}

#[cfg(test)]
mod tests {
    use super::{normalize, resolve};

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
