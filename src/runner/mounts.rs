//! The secret and SSH mounts of a step's Dockerfile, checked against what
//! the step declares (the lint is [`dockerfile::check_mounts`]), and the
//! SSH agent a step forwards.

use std::path::PathBuf;

use super::BuildError;
use crate::dockerfile;
use crate::manifest::Step;
use crate::model::Builder;

/// [`dockerfile::check_mounts`] for `step` building with `builder`.
pub fn check_mounts(step: &Step, builder: Builder, text: &[u8]) -> Result<(), BuildError> {
    let entitlement = dockerfile::Entitlement {
        step: &step.label,
        builder,
        secrets: step.secrets.keys().map(String::as_str).collect(),
        ssh: step.ssh,
    };
    dockerfile::check_mounts(text, &entitlement).map_err(|e| BuildError::Dockerfile {
        step: step.label.clone(),
        dockerfile: step.dockerfile_path.clone(),
        message: e.message,
        hint: e.hint,
    })
}

/// The SSH agent socket of SSH_AUTH_SOCK, for step `step` that forwards it.
pub(super) fn ssh_agent(step: &Step) -> Result<PathBuf, BuildError> {
    match std::env::var_os("SSH_AUTH_SOCK").filter(|v| !v.is_empty()) {
        Some(path) => Ok(PathBuf::from(path)),
        None => Err(BuildError::Dockerfile {
            step: step.label.clone(),
            dockerfile: step.dockerfile_path.clone(),
            message: "the step forwards the SSH agent (`ssh: true`), but SSH_AUTH_SOCK is not set"
                .into(),
            hint: Some("start an agent and add a key (`eval \"$(ssh-agent)\"; ssh-add`), then run habitus from that shell".into()),
        }),
    }
}
