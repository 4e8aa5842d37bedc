//! Images: inspecting, removing (with the intermediates a classic build
//! left on the containerd store), and the transfers `squash` uses (save,
//! load, import, history).

use bollard::body_try_stream;
use bollard::errors::Error as BollardError;
use bollard::query_parameters::{CreateImageOptions, ImportImageOptions, RemoveImageOptions};
use futures_util::StreamExt;

use super::build::remove_fresh;
use super::progress::LineBuffer;
use super::{api, is_not_found, DockerEngine};
use crate::engine::{ByteStream, EngineError, HistoryEntry, ImageDetails, ImageInfo, LineSink};

/// Inspects an image; `Ok(None)` if it does not exist.
pub(super) async fn inspect_image(
    engine: &DockerEngine,
    image: &str,
) -> Result<Option<ImageInfo>, EngineError> {
    let inspect = match engine.docker.inspect_image(image).await {
        Ok(inspect) => inspect,
        Err(err) if is_not_found(&err) => return Ok(None),
        Err(err) => return Err(api(err)),
    };
    Ok(Some(ImageInfo {
        id: inspect.id.unwrap_or_default(),
        size: inspect.size.unwrap_or_default(),
        layers: inspect
            .root_fs
            .and_then(|fs| fs.layers)
            .map_or(0, |layers| layers.len()),
        labels: inspect
            .config
            .and_then(|c| c.labels)
            .unwrap_or_default()
            .into_iter()
            .collect(),
    }))
}

/// Removes an image, then the untagged intermediates its classic build
/// recorded.
pub(super) async fn remove_image(
    engine: &DockerEngine,
    image: &str,
    force: bool,
    noprune: bool,
) -> Result<(), EngineError> {
    let options = RemoveImageOptions {
        force,
        noprune,
        platforms: None,
    };
    // The key the build recorded its intermediates under: the id
    // inspect gives, or `image` itself when it is an id of an image
    // that is already gone (a squash moved its tag away).
    let key = match engine.docker.inspect_image(image).await {
        Ok(inspected) => inspected.id,
        Err(_) => image.starts_with("sha256:").then(|| image.to_string()),
    };
    match engine.docker.remove_image(image, Some(options), None).await {
        Ok(_) => {}
        // Already gone: its intermediates may still be there.
        Err(err) if is_not_found(&err) => {}
        Err(err) => return Err(api(err)),
    }
    // Only a name went (the image has others), or the caller keeps the
    // intermediates: they stay recorded for the image's own removal.
    if noprune {
        return Ok(());
    }
    if let Some(key) = &key {
        if engine.docker.inspect_image(key).await.is_ok() {
            return Ok(());
        }
    }
    let below = key.and_then(|key| {
        engine
            .intermediates
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .remove(&key)
    });
    if let Some(below) = below {
        // Untagged ones only, newest first; on a graph driver the
        // daemon has already pruned them.
        remove_fresh(&engine.docker, below).await;
    }
    Ok(())
}

/// Streams `docker save IMAGE`.
pub(super) async fn save_image(
    engine: &DockerEngine,
    image: &str,
) -> Result<ByteStream, EngineError> {
    Ok(Box::pin(
        engine.docker.export_image(image).map(|r| r.map_err(api)),
    ))
}

/// Loads an image archive, streaming the daemon's messages to `sink`.
pub(super) async fn load_image(
    engine: &DockerEngine,
    archive: ByteStream,
    sink: LineSink,
) -> Result<(), EngineError> {
    let options = ImportImageOptions {
        quiet: false,
        platform: None,
    };
    let mut stream = engine.docker.import_image_stream(options, archive, None);
    let mut lines = LineBuffer::default();
    while let Some(item) = stream.next().await {
        let info = item.map_err(|err| match err {
            BollardError::DockerStreamError { error } => EngineError::Api(error),
            other => api(other),
        })?;
        if let Some(text) = &info.stream {
            lines.push(text.as_bytes(), &*sink);
        }
    }
    lines.finish(&*sink);
    Ok(())
}

/// Layers, config and platform of an image; `Ok(None)` if it does not exist.
pub(super) async fn image_details(
    engine: &DockerEngine,
    image: &str,
) -> Result<Option<ImageDetails>, EngineError> {
    let inspect = match engine.docker.inspect_image(image).await {
        Ok(inspect) => inspect,
        Err(err) if is_not_found(&err) => return Ok(None),
        Err(err) => return Err(api(err)),
    };
    let config = serde_json::to_value(inspect.config.unwrap_or_default())
        .map_err(|err| EngineError::Api(format!("image config of `{image}`: {err}")))?;
    Ok(Some(ImageDetails {
        id: inspect.id.unwrap_or_default(),
        diff_ids: inspect.root_fs.and_then(|fs| fs.layers).unwrap_or_default(),
        config,
        author: inspect.author.unwrap_or_default(),
        architecture: inspect.architecture.unwrap_or_default(),
        os: inspect.os.unwrap_or_default(),
    }))
}

/// The image's history, newest first.
pub(super) async fn image_history(
    engine: &DockerEngine,
    image: &str,
) -> Result<Vec<HistoryEntry>, EngineError> {
    let items = engine.docker.image_history(image).await.map_err(api)?;
    Ok(items
        .into_iter()
        .map(|item| HistoryEntry {
            id: item.id,
            tags: item.tags,
            created_by: item.created_by,
        })
        .collect())
}

/// Creates a one-layer image from a filesystem tar; returns its id.
pub(super) async fn import_image(
    engine: &DockerEngine,
    rootfs: ByteStream,
    reference: &str,
    changes: Vec<String>,
    message: &str,
) -> Result<String, EngineError> {
    let options = CreateImageOptions {
        from_src: Some("-".into()),
        repo: Some(reference.to_string()),
        message: Some(message.to_string()),
        changes,
        ..Default::default()
    };
    let body = body_try_stream(rootfs.map(|r| r.map_err(std::io::Error::other)));
    let mut stream = engine.docker.create_image(Some(options), Some(body), None);
    let mut id = None;
    while let Some(item) = stream.next().await {
        let info = item.map_err(|err| match err {
            BollardError::DockerStreamError { error } => EngineError::Api(error),
            other => api(other),
        })?;
        if let Some(status) = info.status.filter(|s| s.starts_with("sha256:")) {
            id = Some(status);
        }
    }
    match id {
        Some(id) => Ok(id),
        None => Err(EngineError::Api(format!(
            "the daemon reported no image for `{reference}`"
        ))),
    }
}
