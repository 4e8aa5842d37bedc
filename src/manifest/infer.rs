//! Dependencies that build.yml leaves unsaid: a step whose Dockerfile uses
//! another step's image (`FROM`, `COPY --from=`, `RUN --mount=…,from=`,
//! the references `--uid` rewrites) needs that image built first.

use std::collections::BTreeMap;
use std::io::Read;
use std::path::Path;

use super::InferredDependency;
use super::Step;
use crate::dockerfile::{self, MAX_DOCKERFILE_SIZE};
use crate::workpath;

/// For each of `steps`, the other steps whose image its Dockerfile uses,
/// with the line of the first use, in order of use. A Dockerfile that
/// cannot be read or parsed uses none here: the build reports it.
pub(super) fn image_uses(steps: &[&Step], workdir: &Path) -> Vec<Vec<InferredDependency>> {
    let images: BTreeMap<String, String> = steps
        .iter()
        .filter(|s| !s.name.is_empty())
        .map(|s| (s.name.clone(), s.name.clone()))
        .collect();
    let owner: BTreeMap<&str, &str> = steps
        .iter()
        .map(|s| (s.name.as_str(), s.label.as_str()))
        .collect();
    steps
        .iter()
        .map(|step| {
            let Some(text) = read(workdir, &step.dockerfile_path) else {
                return Vec::new();
            };
            let Ok(rewritten) = dockerfile::rewrite(&text, &images) else {
                return Vec::new();
            };
            rewritten
                .references
                .iter()
                .zip(&rewritten.lines)
                .filter_map(|(name, &line)| {
                    let label = owner.get(name.as_str())?;
                    (*label != step.label).then(|| InferredDependency {
                        step: (*label).to_owned(),
                        line,
                    })
                })
                .collect()
        })
        .collect()
}

/// The bytes of the Dockerfile at `path`, read inside `workdir`, up to
/// one byte over the size limit (so that the parser refuses it).
fn read(workdir: &Path, path: &Path) -> Option<Vec<u8>> {
    if path.as_os_str().is_empty() {
        return None;
    }
    let rel = path.strip_prefix(workdir).ok()?;
    let mut bytes = Vec::new();
    workpath::open_beneath(workdir, rel, workpath::WORKDIR)
        .ok()?
        .take(MAX_DOCKERFILE_SIZE as u64 + 1)
        .read_to_end(&mut bytes)
        .ok()?;
    Some(bytes)
}
