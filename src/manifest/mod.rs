//! The `build.yml` model: raw YAML → `_env()` substitution → validated
//! [`Manifest`]. Nothing here talks to Docker; paths are resolved against
//! the work directory and checked on disk.

use std::collections::BTreeMap;
use std::path::PathBuf;

/// A schema version of `build.yml` that habitus understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaVersion {
    /// `2016-02-13`: no `secrets`.
    V20160213,
    /// `2016-03-14`: adds `secrets`.
    V20160314,
}

/// A validated build.yml.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The build.yml as given (for messages).
    pub file: PathBuf,
    /// The work directory (`-d`), absolute.
    pub workdir: PathBuf,
    pub version: SchemaVersion,
    /// Steps in the order they appear in the file.
    pub steps: Vec<Step>,
}

/// One validated step.
#[derive(Debug, Clone)]
pub struct Step {
    /// The key under `steps:`; what `depends_on` names.
    pub label: String,
    /// The image name as written (`myorg/app:tag`), before `--uid`.
    pub name: String,
    /// The Dockerfile as written in build.yml.
    pub dockerfile: String,
    /// The Dockerfile, resolved to an absolute path that exists.
    pub dockerfile_path: PathBuf,
    /// The build context directory, absolute, inside the work dir.
    pub context: PathBuf,
    pub target: Option<String>,
    pub args: BTreeMap<String, String>,
    pub no_cache: bool,
    pub artifacts: Vec<Artifact>,
    /// `cleanup.commands`.
    pub cleanup: Vec<String>,
    pub secrets: BTreeMap<String, SecretSpec>,
    pub command: Option<String>,
    pub after_build_command: Option<String>,
    pub depends_on: Vec<String>,
    /// Our addition: keep this step's image after the build.
    pub keep: bool,
    /// 1-based line of the step's key in build.yml (0 if unknown).
    pub line: usize,
}

/// `artifacts:` entry: `/src` or `/src:dest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// Absolute path inside the image.
    pub source: String,
    /// Destination directory relative to the work dir ("" = work dir
    /// itself); the artifact lands at `<workdir>/<dest>/<basename(source)>`.
    pub dest: PathBuf,
}

/// A secret declaration: where its value comes from. Holds no secret bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSpec {
    /// `file` or `env`.
    pub kind: String,
    /// A host path for `file`; a variable NAME (read from `HABITUS_NAME`) for `env`.
    pub value: String,
}

/// Where `_env(NAME)` values come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EnvSource {
    /// The process environment.
    Process,
    /// `--env NAME=VALUE` flags only.
    Given(BTreeMap<String, String>),
}
