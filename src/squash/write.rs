//! Writing the squashed layer and the archive `POST /images/load` takes.
//!
//! The squashed layer is copied entry by entry out of the spooled layer
//! files, so memory use does not depend on layer sizes. The load archive
//! holds it as one member, whose size must be known before its first byte:
//! a first pass over the headers (contents replaced by zeros of the same
//! length, never read) measures it exactly, then the real pass streams it
//! while hashing it for its diff id.
//!
//! Two archive layouts are written, matching what the daemon saved:
//!
//! - legacy (`manifest.json`, `<dir>/layer.tar`), for daemons with a graph
//!   driver, which load a kept layer from the layer store by its chain id
//!   and never read its (empty) member;
//! - OCI (`oci-layout`, `index.json`, `blobs/sha256/…`, plus the same
//!   `manifest.json`), for the containerd image store. Its manifest names
//!   each kept layer by the blob the daemon saved (same digest, compression
//!   and size), which the store already holds, so only the squashed layer,
//!   the config and the manifest travel; the store unpacks nothing it
//!   already has a snapshot for. The squashed layer's blob name is its
//!   digest, so a second pass over its contents hashes it before it is
//!   sent.
//!
//! The squashed layer is written **uncompressed** in both layouts (OCI
//! media type `application/vnd.oci.image.layer.v1.tar`): compressing it
//! would cost more CPU than the whole squash, and the daemon stores and
//! pushes an uncompressed layer as well as a gzip one.

use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use bytes::Bytes;
use tokio::sync::mpsc;

use super::layout::Blob;
use super::merge::{Emit, Source};
use crate::engine::EngineError;
use crate::layer::Compression;

/// Size of one chunk sent to the daemon.
pub const CHUNK: usize = 256 * 1024;

/// A tar path from raw bytes.
pub fn os_path(bytes: &[u8]) -> &Path {
    Path::new(OsStr::from_bytes(bytes))
}

/// Writes the squashed layer described by `emits` to `out`. With
/// `measure_only`, file contents are not read: zeros of the same length
/// stand in for them, which gives the exact size of the real layer.
pub fn write_layer<W: Write>(
    emits: &[Emit],
    layers: &[PathBuf],
    out: W,
    measure_only: bool,
) -> io::Result<W> {
    let files = layers
        .iter()
        .map(File::open)
        .collect::<io::Result<Vec<_>>>()?;
    let mut builder = tar::Builder::new(out);
    for emit in emits {
        match emit {
            Emit::Marker { path } => {
                let mut header = tar::Header::new_gnu();
                header.set_entry_type(tar::EntryType::Regular);
                header.set_size(0);
                header.set_mode(0o644);
                header.set_mtime(0);
                builder.append_data(&mut header, os_path(path), io::empty())?;
            }
            Emit::Entry { path, source } | Emit::Content { path, data: source } => {
                with_entry(&files, *source, |entry| {
                    copy_entry(&mut builder, entry, path, None, measure_only)
                })?;
            }
            Emit::Link {
                path,
                source,
                target,
            } => {
                with_entry(&files, *source, |entry| {
                    copy_entry(&mut builder, entry, path, Some(target), measure_only)
                })?;
            }
        }
    }
    builder.into_inner()
}

/// Calls `f` with the tar entry whose first header is at `source`.
fn with_entry<T>(
    files: &[File],
    (layer, start): Source,
    f: impl FnOnce(&mut tar::Entry<'_, &File>) -> io::Result<T>,
) -> io::Result<T> {
    let mut file = &files[layer];
    file.seek(SeekFrom::Start(start))?;
    let mut archive = tar::Archive::new(file);
    let mut entries = archive.entries()?;
    let mut entry = entries.next().ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("layer {layer} has no entry at offset {start}"),
        )
    })??;
    f(&mut entry)
}

/// Appends `entry` under `path`: its header, its extended attributes and
/// other PAX records, its content. `link` turns it into a hard link.
pub fn copy_entry<W: Write, R: Read>(
    builder: &mut tar::Builder<W>,
    entry: &mut tar::Entry<'_, R>,
    path: &[u8],
    link: Option<&[u8]>,
    measure_only: bool,
) -> io::Result<()> {
    let mut header = entry.header().clone();
    let mut records: Vec<(String, Vec<u8>)> = Vec::new();
    if let Some(extensions) = entry.pax_extensions()? {
        for extension in extensions {
            let extension = extension?;
            let Ok(key) = extension.key() else { continue };
            // Names are written again below (GNU long names if needed).
            if key == "path" || key == "linkpath" {
                continue;
            }
            records.push((key.to_string(), extension.value_bytes().to_vec()));
        }
    }
    if !records.is_empty() {
        builder.append_pax_extensions(records.iter().map(|(k, v)| (k.as_str(), v.as_slice())))?;
    }
    let entry_type = header.entry_type();
    if let Some(target) = link {
        header.set_entry_type(tar::EntryType::Link);
        header.set_size(0);
        return builder.append_link(&mut header, os_path(path), os_path(target));
    }
    if matches!(entry_type, tar::EntryType::Link | tar::EntryType::Symlink) {
        let target = entry.link_name_bytes().unwrap_or_default().into_owned();
        return builder.append_link(&mut header, os_path(path), os_path(&target));
    }
    if measure_only {
        let size = entry.size();
        builder.append_data(&mut header, os_path(path), io::repeat(0).take(size))
    } else {
        builder.append_data(&mut header, os_path(path), entry)
    }
}

/// Counts what is written to it.
#[derive(Debug, Default)]
pub struct Counter(pub u64);

impl Write for Counter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.0 += data.len() as u64;
        Ok(data.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// Passes writes through while computing their SHA-256 and length.
pub struct Hashing<W> {
    inner: W,
    digest: ring::digest::Context,
    len: u64,
}

impl<W: Write> Hashing<W> {
    pub fn new(inner: W) -> Hashing<W> {
        Hashing {
            inner,
            digest: ring::digest::Context::new(&ring::digest::SHA256),
            len: 0,
        }
    }

    /// `sha256:<hex>` of everything written, the byte count, the writer.
    pub fn finish(self) -> (String, u64, W) {
        (
            digest_name(self.digest.finish().as_ref()),
            self.len,
            self.inner,
        )
    }
}

impl<W: Write> Write for Hashing<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = self.inner.write(data)?;
        self.digest.update(&data[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.inner.flush()
    }
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    digest_name(ring::digest::digest(&ring::digest::SHA256, bytes).as_ref())
}

/// `sha256:<hex>` of a raw SHA-256 digest.
fn digest_name(raw: &[u8]) -> String {
    format!("sha256:{}", crate::layer::hex(raw))
}

/// What the load archive will contain besides the squashed layer.
pub struct LoadPlan<'a> {
    pub emits: &'a [Emit],
    pub layers: &'a [PathBuf],
    /// The layers' blobs as saved: with `oci`, the kept ones are named
    /// by them.
    pub blobs: &'a [Blob],
    /// Write the OCI layout (the containerd image store's) rather than
    /// the legacy one. It needs `layer_digest`.
    pub oci: bool,
    /// The squashed layer's diff id, from a hashing pass (OCI only).
    pub layer_digest: Option<String>,
    /// How many bottom layers are kept.
    pub keep: usize,
    /// Send the kept layers' bytes too. Without it, their members are
    /// empty: the daemon already has those layers and does not read them.
    pub full_kept: bool,
    /// The squashed layer's exact size (from a measuring pass).
    pub layer_size: u64,
    pub tag: &'a str,
}

/// The result of writing a load archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Written {
    /// The new image id (`sha256:` of the config).
    pub image_id: String,
    /// `sha256:` of the OCI manifest, the image id on the containerd
    /// store (OCI layout only).
    pub manifest_digest: Option<String>,
    /// The squashed layer's diff id.
    pub diff_id: String,
}

/// Writes an image archive for `POST /images/load`: the kept layers, the
/// squashed layer, the config made by `config` from the squashed layer's
/// diff id, `manifest.json`, and with `plan.oci` the OCI index and
/// manifest.
pub fn write_load_archive<W: Write>(
    out: W,
    plan: &LoadPlan<'_>,
    config: impl FnOnce(&str) -> Vec<u8>,
) -> io::Result<(Written, W)> {
    let mut archive = tar::Builder::new(out);
    if plan.oci {
        append_member(
            &mut archive,
            "oci-layout",
            br#"{"imageLayoutVersion":"1.0.0"}"#,
        )?;
    }
    let mut layer_names = write_kept_layers(&mut archive, plan)?;
    let squashed = write_squashed_layer(&mut archive, plan)?;
    layer_names.push(squashed.name.clone());
    let config = config(&squashed.diff_id);
    let image_id = sha256(&config);
    let config_name = if plan.oci {
        blob_path(&image_id)
    } else {
        format!("{}.json", image_id.trim_start_matches("sha256:"))
    };
    append_member(&mut archive, &config_name, &config)?;
    let manifest_digest = if plan.oci {
        Some(write_oci_index(
            &mut archive,
            plan,
            &squashed,
            &image_id,
            config.len(),
        )?)
    } else {
        None
    };
    let manifest = serde_json::json!([{
        "Config": config_name,
        "RepoTags": [plan.tag],
        "Layers": layer_names,
    }]);
    let manifest = serde_json::to_vec(&manifest).map_err(io::Error::other)?;
    append_member(&mut archive, "manifest.json", &manifest)?;
    let out = archive.into_inner()?;
    Ok((
        Written {
            image_id,
            manifest_digest,
            diff_id: squashed.diff_id,
        },
        out,
    ))
}

/// Appends a regular member holding `data`.
fn append_member<W: Write>(
    archive: &mut tar::Builder<W>,
    name: &str,
    data: &[u8],
) -> io::Result<()> {
    let mut header = member_header(data.len() as u64);
    archive.append_data(&mut header, name, data)
}

/// Writes the kept layers' members and returns their names in order: the
/// saved blobs under their digests (OCI, full), else `kept-<i>/layer.tar`,
/// empty unless `plan.full_kept`.
fn write_kept_layers<W: Write>(
    archive: &mut tar::Builder<W>,
    plan: &LoadPlan<'_>,
) -> io::Result<Vec<String>> {
    let mut layer_names = Vec::new();
    let mut sent = std::collections::HashSet::new();
    for (i, path) in plan.layers.iter().take(plan.keep).enumerate() {
        if plan.oci && plan.full_kept {
            // The blob as saved, under its digest.
            let blob = &plan.blobs[i];
            let name = blob_path(&blob.digest);
            if sent.insert(name.clone()) {
                let file = File::open(&blob.path)?;
                let mut header = member_header(blob.size);
                archive.append_data(&mut header, &name, file)?;
            }
            layer_names.push(name);
            continue;
        }
        let name = format!("kept-{i}/layer.tar");
        let mut header = member_header(0);
        if plan.full_kept {
            let file = File::open(path)?;
            header.set_size(file.metadata()?.len());
            archive.append_data(&mut header, &name, file)?;
        } else {
            archive.append_data(&mut header, &name, io::empty())?;
        }
        layer_names.push(name);
    }
    Ok(layer_names)
}

/// The squashed layer as written into the archive.
struct Squashed {
    /// Its member name.
    name: String,
    /// Its diff id (also its blob digest: it is uncompressed).
    diff_id: String,
    /// Its size in bytes.
    len: u64,
}

/// Streams the squashed layer into the archive as one member of the
/// announced size, hashing it, and checks size and digest against the
/// earlier passes.
fn write_squashed_layer<W: Write>(
    archive: &mut tar::Builder<W>,
    plan: &LoadPlan<'_>,
) -> io::Result<Squashed> {
    let name = match (&plan.layer_digest, plan.oci) {
        (Some(digest), true) => blob_path(digest),
        (None, true) => {
            return Err(io::Error::other(
                "an OCI archive needs the squashed layer's digest first",
            ))
        }
        (_, false) => "squashed/layer.tar".to_string(),
    };
    let mut header = member_header(plan.layer_size);
    header.set_path(&name)?;
    header.set_cksum();
    archive.get_mut().write_all(header.as_bytes())?;
    let hashing = write_layer(
        plan.emits,
        plan.layers,
        Hashing::new(archive.get_mut()),
        false,
    )?;
    let (diff_id, len, out) = hashing.finish();
    if len != plan.layer_size {
        return Err(io::Error::other(format!(
            "the squashed layer has {len} bytes, {} were announced",
            plan.layer_size
        )));
    }
    if plan.oci && plan.layer_digest.as_deref() != Some(diff_id.as_str()) {
        return Err(io::Error::other(format!(
            "the squashed layer's digest is `{diff_id}`, the first pass gave `{}`",
            plan.layer_digest.as_deref().unwrap_or_default()
        )));
    }
    let padding = (512 - len % 512) % 512;
    out.write_all(&vec![0u8; padding as usize])?;
    Ok(Squashed { name, diff_id, len })
}

/// Writes the OCI image manifest (the kept blobs as saved, the squashed
/// layer, the config) and `index.json` naming it; returns the manifest's
/// digest.
fn write_oci_index<W: Write>(
    archive: &mut tar::Builder<W>,
    plan: &LoadPlan<'_>,
    squashed: &Squashed,
    image_id: &str,
    config_size: usize,
) -> io::Result<String> {
    let mut layers: Vec<serde_json::Value> = plan
        .blobs
        .iter()
        .take(plan.keep)
        .map(|blob| {
            serde_json::json!({
                "mediaType": layer_media_type(blob.compression),
                "digest": blob.digest,
                "size": blob.size,
            })
        })
        .collect();
    layers.push(serde_json::json!({
        "mediaType": layer_media_type(Compression::None),
        "digest": squashed.diff_id,
        "size": squashed.len,
    }));
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MANIFEST_TYPE,
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": image_id,
            "size": config_size,
        },
        "layers": layers,
    }))
    .map_err(io::Error::other)?;
    let digest = sha256(&manifest);
    append_member(archive, &blob_path(&digest), &manifest)?;
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": MANIFEST_TYPE,
            "digest": digest,
            "size": manifest.len(),
            "annotations": {
                "io.containerd.image.name": full_name(plan.tag),
                "org.opencontainers.image.ref.name": tag_of(plan.tag),
            },
        }],
    }))
    .map_err(io::Error::other)?;
    append_member(archive, "index.json", &index)?;
    Ok(digest)
}

const MANIFEST_TYPE: &str = "application/vnd.oci.image.manifest.v1+json";

/// The OCI media type of a layer blob in `compression`.
pub fn layer_media_type(compression: Compression) -> &'static str {
    match compression {
        Compression::None => "application/vnd.oci.image.layer.v1.tar",
        Compression::Gzip => "application/vnd.oci.image.layer.v1.tar+gzip",
        Compression::Zstd => "application/vnd.oci.image.layer.v1.tar+zstd",
    }
}

/// `sha256:<hex>` → `blobs/sha256/<hex>`.
fn blob_path(digest: &str) -> String {
    format!("blobs/{}", digest.replacen(':', "/", 1))
}

/// The fully qualified name the containerd store keeps for `reference`
/// (`app:1` → `docker.io/library/app:1`), as `docker save` writes it.
pub fn full_name(reference: &str) -> String {
    // The registry is decided by the one rule every path uses (the docker
    // CLI's: `LOCALHOST/app` names a host, `docker.io/app` Docker Hub).
    if crate::model::registry_host(reference) != "docker.io" {
        return reference.to_string();
    }
    let path = match reference.split_once('/') {
        Some(("docker.io" | "index.docker.io", rest)) => rest,
        _ => reference,
    };
    if path.contains('/') {
        format!("docker.io/{path}")
    } else {
        format!("docker.io/library/{path}")
    }
}

/// The tag of a reference that has one (`app:1` → `1`).
fn tag_of(reference: &str) -> &str {
    let last = reference.rsplit('/').next().unwrap_or(reference);
    last.split_once(':').map_or("latest", |(_, tag)| tag)
}

/// The header of a regular member of `size` bytes (mode 0644, mtime 0).
fn member_header(size: u64) -> tar::Header {
    let mut header = tar::Header::new_gnu();
    header.set_entry_type(tar::EntryType::Regular);
    header.set_size(size);
    header.set_mode(0o644);
    header.set_mtime(0);
    header
}

/// A `Write` that sends fixed-size chunks into a channel feeding a
/// request body; it fails once the receiver is gone.
pub struct ChannelWriter {
    tx: mpsc::Sender<Result<Bytes, EngineError>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    pub fn new(tx: mpsc::Sender<Result<Bytes, EngineError>>) -> ChannelWriter {
        ChannelWriter {
            tx,
            buf: Vec::with_capacity(CHUNK),
        }
    }

    fn send(&mut self) -> io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let chunk = Bytes::from(std::mem::replace(&mut self.buf, Vec::with_capacity(CHUNK)));
        self.tx
            .blocking_send(Ok(chunk))
            .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the daemon stopped reading"))
    }

    /// Aborts the request body with `message`, so a truncated archive is
    /// never taken for a whole one.
    pub fn abort(&self, message: String) {
        let _ = self.tx.blocking_send(Err(EngineError::Api(message)));
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        let n = data.len().min(CHUNK - self.buf.len());
        self.buf.extend_from_slice(&data[..n]);
        if self.buf.len() >= CHUNK {
            self.send()?;
        }
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.send()
    }
}
