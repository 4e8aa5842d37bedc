//! The secret and SSH mounts of a step's Dockerfile, checked against what
//! the step declares, before anything reaches the daemon.

use std::path::PathBuf;

use super::BuildError;
use crate::dockerfile;
use crate::manifest::Step;
use crate::model::Builder;

/// Refuses a Dockerfile `text` of `step` that mounts a secret the step
/// does not declare, mounts the SSH agent without `ssh: true`, or mounts
/// either while the step builds with the classic builder (`builder`):
/// checked before anything is sent to the daemon, and by `habitus check`.
pub fn check_mounts(step: &Step, builder: Builder, text: &str) -> Result<(), BuildError> {
    let error = |line: usize, message: String| BuildError::Dockerfile {
        step: step.label.clone(),
        dockerfile: step.dockerfile_path.clone(),
        message: format!("line {line}: {message}"),
    };
    let mounts = dockerfile::secret_mounts(text).map_err(|e| BuildError::Dockerfile {
        step: step.label.clone(),
        dockerfile: step.dockerfile_path.clone(),
        message: e.to_string(),
    })?;
    let ssh = dockerfile::ssh_mounts(text).map_err(|e| BuildError::Dockerfile {
        step: step.label.clone(),
        dockerfile: step.dockerfile_path.clone(),
        message: e.to_string(),
    })?;
    for (line, id) in ssh {
        if builder == Builder::Legacy {
            return Err(error(
                line,
                "`RUN --mount=type=ssh` needs BuildKit\nhint: build with `--builder buildkit`, or set `builder: buildkit` on the step in build.yml".into(),
            ));
        }
        if !step.ssh {
            return Err(error(
                line,
                format!("mounts the SSH agent, but step `{}` does not forward it\nhint: set `ssh: true` on the step in build.yml; its `RUN --mount=type=ssh` then reach the agent of SSH_AUTH_SOCK", step.label),
            ));
        }
        if id != "default" {
            return Err(error(
                line,
                format!("mounts SSH agent `{id}`: habitus forwards one agent, `default`\nhint: leave `id=` out of the mount"),
            ));
        }
    }
    for mount in mounts {
        if builder == Builder::Legacy {
            return Err(error(
                mount.line,
                "`RUN --mount=type=secret` needs BuildKit\nhint: build with `--builder buildkit`, or set `builder: buildkit` on the step in build.yml".into(),
            ));
        }
        let Some(id) = mount.id else { continue };
        if !step.secrets.contains_key(&id) {
            let declared = if step.secrets.is_empty() {
                "it declares none".to_string()
            } else {
                format!(
                    "it declares {}",
                    step.secrets
                        .keys()
                        .map(|k| format!("`{k}`"))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            };
            return Err(error(
                mount.line,
                format!(
                    "mounts secret `{id}`, which step `{}` does not declare ({declared})\nhint: add `{id}` under the step's `secrets:` in build.yml (`type: file` or `env`)",
                    step.label
                ),
            ));
        }
    }
    Ok(())
}

/// The SSH agent socket of SSH_AUTH_SOCK, for step `step` that forwards it.
pub(super) fn ssh_agent(step: &Step) -> Result<PathBuf, BuildError> {
    match std::env::var_os("SSH_AUTH_SOCK").filter(|v| !v.is_empty()) {
        Some(path) => Ok(PathBuf::from(path)),
        None => Err(BuildError::Dockerfile {
            step: step.label.clone(),
            dockerfile: step.dockerfile_path.clone(),
            message: "the step forwards the SSH agent (`ssh: true`), but SSH_AUTH_SOCK is not set\nhint: start an agent and add a key (`eval \"$(ssh-agent)\"; ssh-add`), then run habitus from that shell".into(),
        }),
    }
}
