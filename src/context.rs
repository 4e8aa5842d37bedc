//! The build context: a tar of the step's context directory, honouring
//! `.dockerignore`, written to any `Write` so it can be streamed.

use std::io::Write;
use std::path::{Path, PathBuf};

/// Errors while reading a context directory.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// Reading a file or directory failed.
    #[error("build context `{}`: {source}", path.display())]
    Io {
        /// The path that could not be read.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
}

/// Writes `dir` as a tar to `out`, honouring `dir/.dockerignore`, then
/// appends `extra_files` (name in the tar, contents). Streams: memory use
/// does not grow with the size of the context.
pub fn write_tar<W: Write>(
    dir: &Path,
    extra_files: &[(String, Vec<u8>)],
    out: W,
) -> Result<(), ContextError> {
    let io = |source| ContextError::Io {
        path: dir.to_path_buf(),
        source,
    };
    let mut builder = tar::Builder::new(out);
    builder.follow_symlinks(false);
    builder.append_dir_all(".", dir).map_err(io)?;
    for (name, data) in extra_files {
        let mut header = tar::Header::new_gnu();
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_cksum();
        builder
            .append_data(&mut header, name, data.as_slice())
            .map_err(io)?;
    }
    builder.finish().map_err(io)
}
