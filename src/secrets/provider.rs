//! Secret providers: where a declared secret's value comes from.
//!
//! - `file`: the value is a host path (relative paths are taken from the
//!   work directory), read whole.
//! - `env`: the value is a NAME; the secret is the environment variable
//!   `HABITUS_<NAME>`, as in Go Habitus.
//!
//! Every secret of every step is resolved before the first step starts,
//! so a missing file or an unset variable stops the build before anything
//! is built, with an error that names the secret, the step and the path or
//! variable. Only the providers enabled with `--sec-providers` are used.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::manifest::{Manifest, SecretSpec};
use crate::model::SecretKind;

use super::secret::Secret;

/// The largest secret habitus serves, in bytes (1 MiB).
pub const MAX_SECRET_SIZE: usize = 1024 * 1024;

/// The prefix of the environment variables `env` secrets are read from.
pub const ENV_PREFIX: &str = "HABITUS_";

/// Why a secret could not be resolved.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProviderError {
    /// The secret's type is not among `--sec-providers`.
    #[error(
        "secret `{secret}` of step `{step}`: provider `{kind}` is not enabled (--sec-providers)"
    )]
    Disabled {
        /// The secret name.
        secret: String,
        /// The step that declares it.
        step: String,
        /// Its type.
        kind: SecretKind,
    },
    /// A `file` secret could not be read.
    #[error("secret `{secret}` of step `{step}`: cannot read `{}`: {message}", path.display())]
    File {
        /// The secret name.
        secret: String,
        /// The step that declares it.
        step: String,
        /// The resolved path.
        path: PathBuf,
        /// The operating system's reason.
        message: String,
    },
    /// An `env` secret's variable is not set.
    #[error("secret `{secret}` of step `{step}`: environment variable `{variable}` is not set")]
    EnvUnset {
        /// The secret name.
        secret: String,
        /// The step that declares it.
        step: String,
        /// `HABITUS_<NAME>`.
        variable: String,
    },
    /// A secret is larger than [`MAX_SECRET_SIZE`].
    #[error("secret `{secret}` of step `{step}`: `{source_name}` is larger than 1 MiB")]
    TooLarge {
        /// The secret name.
        secret: String,
        /// The step that declares it.
        step: String,
        /// The path or variable.
        source_name: String,
    },
}

/// A secret's address on the server: `/v1/secrets/{kind}/{name}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SecretKey {
    pub kind: SecretKind,
    /// The name declared under `secrets:`.
    pub name: String,
}

impl SecretKey {
    /// `kind/name`, as in the URL and in log lines.
    pub fn path(&self) -> String {
        format!("{}/{}", self.kind, self.name)
    }
}

/// Every resolved secret of a build, grouped by the step that declares it.
/// Two steps that declare the same source share one buffer.
#[derive(Debug, Default, Clone)]
pub struct SecretStore {
    steps: BTreeMap<String, BTreeMap<SecretKey, Arc<Secret>>>,
}

impl SecretStore {
    /// Adds (or replaces) `key` for `step`.
    pub fn insert(&mut self, step: &str, key: SecretKey, secret: Arc<Secret>) {
        self.steps
            .entry(step.to_string())
            .or_default()
            .insert(key, secret);
    }

    /// The secrets `step` declares (empty if none).
    pub fn of_step(&self, step: &str) -> BTreeMap<SecretKey, Arc<Secret>> {
        self.steps.get(step).cloned().unwrap_or_default()
    }

    /// Whether any step declares `key`.
    pub fn declared_anywhere(&self, key: &SecretKey) -> bool {
        self.steps.values().any(|s| s.contains_key(key))
    }

    /// `key` as the first step (in name order) that declares it has it:
    /// what basic-auth clients, which name no step, are served.
    pub fn any_step(&self, key: &SecretKey) -> Option<Arc<Secret>> {
        self.steps.values().find_map(|s| s.get(key).cloned())
    }

    /// Every distinct secret value, for the output redactor.
    pub fn values(&self) -> Vec<Arc<Secret>> {
        let mut out: Vec<Arc<Secret>> = Vec::new();
        for secret in self.steps.values().flat_map(|s| s.values()) {
            if !out.iter().any(|o| Arc::ptr_eq(o, secret)) {
                out.push(Arc::clone(secret));
            }
        }
        out
    }

    /// Every secret of every step under the single step `step` (the first
    /// declaration of a `kind/name` wins): what `habitus serve` grants its
    /// one token.
    pub fn merged(&self, step: &str) -> SecretStore {
        let mut out = SecretStore::default();
        for secrets in self.steps.values() {
            for (key, secret) in secrets {
                let target = out.steps.entry(step.to_string()).or_default();
                target
                    .entry(key.clone())
                    .or_insert_with(|| Arc::clone(secret));
            }
        }
        out
    }

    /// Whether no step declares a secret.
    pub fn is_empty(&self) -> bool {
        self.steps.values().all(BTreeMap::is_empty)
    }

    /// Labels of the steps that declare secrets.
    pub fn steps(&self) -> impl Iterator<Item = &str> {
        self.steps
            .iter()
            .filter(|(_, s)| !s.is_empty())
            .map(|(k, _)| k.as_str())
    }
}

/// Resolves every secret of `manifest` with the enabled `providers`;
/// `env` reads environment variables (the process environment in the
/// binary). Stops at the first secret that cannot be resolved, in file
/// order.
pub fn resolve(
    manifest: &Manifest,
    providers: &[SecretKind],
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Result<SecretStore, ProviderError> {
    let mut store = SecretStore::default();
    let mut by_source: BTreeMap<(SecretKind, String), Arc<Secret>> = BTreeMap::new();
    for step in &manifest.steps {
        for (name, spec) in &step.secrets {
            let source = (spec.kind, spec.value.clone());
            let secret = match by_source.get(&source) {
                Some(secret) => Arc::clone(secret),
                None => {
                    let secret = Arc::new(resolve_one(
                        name,
                        &step.label,
                        spec,
                        providers,
                        &manifest.workdir,
                        env,
                    )?);
                    by_source.insert(source, Arc::clone(&secret));
                    secret
                }
            };
            store.insert(
                &step.label,
                SecretKey {
                    kind: spec.kind,
                    name: name.clone(),
                },
                secret,
            );
        }
    }
    Ok(store)
}

/// Opens the secret file `path`. One that lies (as written, `..` taken
/// lexically) inside the work directory is opened beneath it (see
/// [`crate::workpath::open_beneath`]), so a symlink that leads out, even
/// one swapped in after `habitus check`, is refused; one outside it (a
/// path the user wrote, or with `--untrusted` the path inside a
/// `--secret-dir` that it resolved to when build.yml was loaded) is opened
/// by path.
fn open_file(workdir: &Path, path: &Path) -> std::io::Result<std::fs::File> {
    let lexical = crate::manifest::normalize(path);
    let real = crate::workpath::real_root(workdir).ok();
    for root in std::iter::once(workdir).chain(real.as_deref()) {
        if let Ok(rel) = lexical.strip_prefix(root) {
            return crate::workpath::open_beneath(root, rel, crate::workpath::WORKDIR);
        }
    }
    std::fs::File::open(path)
}

/// Resolves one secret `name` of `step` (both only for messages).
pub fn resolve_one(
    name: &str,
    step: &str,
    spec: &SecretSpec,
    providers: &[SecretKind],
    workdir: &Path,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Result<Secret, ProviderError> {
    if !providers.contains(&spec.kind) {
        return Err(ProviderError::Disabled {
            secret: name.into(),
            step: step.into(),
            kind: spec.kind,
        });
    }
    let too_large = |source_name: String| ProviderError::TooLarge {
        secret: name.into(),
        step: step.into(),
        source_name,
    };
    match spec.kind {
        SecretKind::File => {
            let path = workdir.join(&spec.value);
            let fail = |e: std::io::Error| ProviderError::File {
                secret: name.into(),
                step: step.into(),
                path: path.clone(),
                message: e.to_string(),
            };
            let file = open_file(workdir, &path).map_err(fail)?;
            let mut bytes = Vec::new();
            let read = file
                .take(MAX_SECRET_SIZE as u64 + 1)
                .read_to_end(&mut bytes);
            // Wrap at once so that the buffer is zeroed on every path.
            let secret = Secret::new(bytes);
            read.map_err(fail)?;
            if secret.len() > MAX_SECRET_SIZE {
                return Err(too_large(path.display().to_string()));
            }
            Ok(secret)
        }
        SecretKind::Env => {
            let variable = format!("{ENV_PREFIX}{}", spec.value);
            let value = env(&variable).ok_or_else(|| ProviderError::EnvUnset {
                secret: name.into(),
                step: step.into(),
                variable: variable.clone(),
            })?;
            let secret = Secret::new(value.into_encoded_bytes());
            if secret.len() > MAX_SECRET_SIZE {
                return Err(too_large(variable));
            }
            Ok(secret)
        }
    }
}

#[cfg(test)]
mod tests {
    use std::ffi::OsString;
    use std::path::Path;

    use super::{resolve, resolve_one, ProviderError, SecretKey, MAX_SECRET_SIZE};
    use crate::manifest::{Manifest, SchemaVersion, SecretSpec, Step};
    use crate::model::SecretKind::{self, Env, File};

    fn spec(kind: SecretKind, value: &str) -> SecretSpec {
        SecretSpec {
            kind,
            value: value.into(),
        }
    }

    fn providers() -> Vec<SecretKind> {
        SecretKind::ALL.to_vec()
    }

    fn no_env(_: &str) -> Option<OsString> {
        None
    }

    fn step(label: &str, secrets: &[(&str, SecretSpec)]) -> Step {
        Step {
            secrets: secrets
                .iter()
                .map(|(n, s)| (n.to_string(), s.clone()))
                .collect(),
            ..Step::for_test(label)
        }
    }

    /// A secret file inside the work directory is opened beneath it: a
    /// symlink that stays inside is followed, one that leads out (even
    /// swapped in after the load-time check) is refused naming the link;
    /// a path written outside the work directory is read by path.
    #[test]
    fn a_secret_file_in_the_work_dir_is_opened_beneath_it() {
        let parent = tempfile::tempdir().unwrap();
        let work = parent.path().join("work");
        std::fs::create_dir_all(work.join("keys")).unwrap();
        std::fs::write(work.join("keys/id"), b"inside").unwrap();
        std::fs::write(parent.path().join("id"), b"outside").unwrap();
        std::os::unix::fs::symlink("keys/id", work.join("link")).unwrap();
        std::os::unix::fs::symlink("../id", work.join("out")).unwrap();
        let read = |value: &str| {
            resolve_one("k", "app", &spec(File, value), &providers(), &work, &|_| {
                None
            })
            .map(|s| s.expose().to_vec())
            .map_err(|e| e.to_string())
        };
        assert_eq!(read("link").unwrap(), b"inside");
        assert_eq!(read("../id").unwrap(), b"outside");
        let err = read("out").unwrap_err();
        assert!(
            err.contains("leads out of the work directory through the symlink `out` -> `../id`"),
            "{err}"
        );
    }

    #[test]
    fn file_and_env_secrets_resolve_and_shared_sources_share_a_buffer() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("key"), b"file-value").unwrap();
        let manifest = Manifest {
            file: "build.yml".into(),
            workdir: dir.path().to_path_buf(),
            version: SchemaVersion::V20160314,
            steps: vec![
                step(
                    "a",
                    &[("key", spec(File, "key")), ("tok", spec(Env, "TOK"))],
                ),
                step("b", &[("key", spec(File, "key"))]),
                step("c", &[]),
            ],
        };
        let env = |name: &str| (name == "HABITUS_TOK").then(|| OsString::from("env-value"));
        let store = resolve(&manifest, &providers(), &env).unwrap();
        let a = store.of_step("a");
        let key = SecretKey {
            kind: File,
            name: "key".into(),
        };
        let tok = SecretKey {
            kind: Env,
            name: "tok".into(),
        };
        assert_eq!(a[&key].expose(), b"file-value");
        assert_eq!(a[&tok].expose(), b"env-value");
        assert!(std::sync::Arc::ptr_eq(&a[&key], &store.of_step("b")[&key]));
        assert!(!store.of_step("b").contains_key(&tok));
        assert_eq!(store.values().len(), 2);
        assert_eq!(store.steps().collect::<Vec<_>>(), ["a", "b"]);
    }

    #[test]
    fn errors_name_secret_step_and_source() {
        let dir = Path::new("/nonexistent-dir");
        let err = resolve_one(
            "id_rsa",
            "compile",
            &spec(File, "keys/id_rsa"),
            &providers(),
            dir,
            &no_env,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "secret `id_rsa` of step `compile`: cannot read `/nonexistent-dir/keys/id_rsa`: No such file or directory (os error 2)"
        );
        let err = resolve_one(
            "npm",
            "compile",
            &spec(Env, "NPM_TOKEN"),
            &providers(),
            dir,
            &no_env,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "secret `npm` of step `compile`: environment variable `HABITUS_NPM_TOKEN` is not set"
        );
        let err = resolve_one(
            "npm",
            "compile",
            &spec(Env, "NPM_TOKEN"),
            &[File],
            dir,
            &no_env,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "secret `npm` of step `compile`: provider `env` is not enabled (--sec-providers)"
        );
    }

    #[test]
    fn oversized_secrets_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("big"), vec![b'x'; MAX_SECRET_SIZE + 1]).unwrap();
        let err = resolve_one(
            "big",
            "s",
            &spec(File, "big"),
            &providers(),
            dir.path(),
            &no_env,
        )
        .unwrap_err();
        assert!(matches!(err, ProviderError::TooLarge { .. }), "{err}");
        std::fs::write(dir.path().join("ok"), vec![b'x'; MAX_SECRET_SIZE]).unwrap();
        let ok = resolve_one(
            "ok",
            "s",
            &spec(File, "ok"),
            &providers(),
            dir.path(),
            &no_env,
        )
        .unwrap();
        assert_eq!(ok.len(), MAX_SECRET_SIZE);
    }
}
