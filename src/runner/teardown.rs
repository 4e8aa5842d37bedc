//! The end of every build, whatever its outcome: this build's containers
//! swept, the images it no longer needs removed, the artifacts it copied
//! to the host removed, and the secrets server and network gone.

use std::collections::BTreeSet;

use super::build::Build;
use crate::model::LABEL_CONTAINER;
use crate::progress::Severity;

impl Build {
    /// Sweeps this build's containers (those habitus created for it: a
    /// user's container of an image labelled with this build stays) and removes the images it no longer
    /// needs. Errors are reported, never raised: they must not hide the
    /// build's own result.
    pub async fn teardown(&self, tagged: &BTreeSet<String>, success: bool) -> Vec<String> {
        match self
            .engine
            .remove_containers_with_label(LABEL_CONTAINER, &self.build_id)
            .await
        {
            Ok(0) => {}
            Ok(n) => self.reporter.message(
                Severity::Debug,
                &format!("removed {n} leftover container(s) of this build"),
            ),
            Err(e) => self.reporter.message(
                Severity::Warning,
                &format!("could not sweep this build's containers: {e}"),
            ),
        }
        let mut removed = Vec::new();
        if self.options.keep_all {
            return removed;
        }
        // Remove dependents before their bases: reverse topological order.
        for &i in self.plan.order().iter().rev() {
            let step = &self.manifest.steps[i];
            if !tagged.contains(&step.label) || step.keep {
                continue;
            }
            let is_leaf = self.plan.dependents(i).is_empty();
            if success && is_leaf {
                continue;
            }
            let image = self.image_of(step);
            self.remove_names(&step.label, &image).await;
            match self
                .engine
                .remove_image(&image, self.options.force_rmi, self.options.noprune_rmi)
                .await
            {
                Ok(()) => {
                    self.reporter.step(
                        Severity::Debug,
                        &step.label,
                        &format!("removed image `{image}`"),
                    );
                    removed.push(image);
                }
                Err(e) => self.reporter.step(
                    Severity::Warning,
                    &step.label,
                    &format!("could not remove image `{image}`: {e}"),
                ),
            }
        }
        removed
    }

    /// Removes the artifacts this build created on the host (never what
    /// was there before it). Errors are reported, never raised.
    pub fn remove_artifacts(&self, host: &crate::artifacts::HostArtifacts) {
        let (removed, errors) = host.remove();
        for path in removed {
            self.reporter.message(
                Severity::Debug,
                &format!("removed artifact `{}`", path.display()),
            );
        }
        for (path, e) in errors {
            self.reporter.message(
                Severity::Warning,
                &format!("could not remove artifact `{}`: {e}", path.display()),
            );
        }
    }

    /// Stops the secrets server and removes the build's network.
    pub async fn stop_secrets(&self) {
        let Some(session) = &self.session else {
            return;
        };
        match session.stop(&*self.engine).await {
            Ok(()) => self.reporter.message(
                Severity::Info,
                &format!(
                    "secrets server on {} stopped{}",
                    session.url(),
                    session
                        .created_network()
                        .map(|n| format!("; network `{n}` removed"))
                        .unwrap_or_default()
                ),
            ),
            Err(e) => self.reporter.message(
                Severity::Warning,
                &format!("secrets server stopped, but the build's network remains: {e}"),
            ),
        }
    }
}
