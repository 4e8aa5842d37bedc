//! Squash: flattens an image's layers into one, applying whiteouts.
//!
//! PLACEHOLDER: this stub only fixes the entry point's signature so that
//! cleanup can call it; every call fails with "squash not available". It is
//! replaced by the real module.

use crate::engine::{Engine, LineSink};

/// Which bottom layers of the image stay as they are.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Keep {
    /// Squash every layer into one.
    Nothing,
    /// Keep the bottom `n` layers.
    Layers(usize),
    /// Keep the layers of this image (the step's base).
    BaseImage(String),
}

/// What a squash produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SquashReport {}

/// Why a squash failed.
#[derive(Debug, thiserror::Error)]
pub enum SquashError {
    /// Squashing is not built into this binary.
    #[error("squash not available")]
    Unavailable,
}

/// Squashes `image` and tags the result `tag`.
pub async fn squash(
    engine: &dyn Engine,
    image: &str,
    tag: &str,
    keep: Keep,
    sink: LineSink,
) -> Result<SquashReport, SquashError> {
    let _ = (engine, image, tag, keep, sink);
    Err(SquashError::Unavailable)
}
