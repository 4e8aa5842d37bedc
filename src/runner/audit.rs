//! After a build that served secrets: every image it produced and kept is
//! searched for them (see [`crate::audit`]).

use std::sync::Arc;

use super::build::Build;
use super::{human_size, BuildError, Summary};
use crate::progress::{Event, Severity};

impl Build {
    /// After a build that served secrets: searches every image it produced
    /// and kept for them. A hit fails the build and removes the image
    /// (unless `--keep-all`).
    pub async fn audit_images(&self, summary: &Summary) -> Result<(), BuildError> {
        let Some(scanner) = self.audit.clone() else {
            return Ok(());
        };
        let mut hits = Vec::new();
        for step in &summary.steps {
            if step.folded_into.is_some() || summary.removed_images.contains(&step.image) {
                continue;
            }
            let audit =
                match crate::audit::audit_image(&*self.engine, &step.image, Arc::clone(&scanner))
                    .await
                {
                    Ok(audit) => audit,
                    Err(e) => {
                        // What the audit could not read it could not clear: the
                        // image goes, as it would on a hit.
                        if !self.options.keep_all {
                            let _ = self.engine.remove_image(&step.image, true, false).await;
                        }
                        return Err(BuildError::Audit {
                            message: e.to_string(),
                        });
                    }
                };
            self.reporter.step(
                Severity::Info,
                &step.label,
                &format!(
                    "audit: {} layer(s) ({} read to their end) and the config of `{}` searched, {} secret occurrence(s)",
                    audit.layers,
                    human_size(i64::try_from(audit.bytes).unwrap_or(i64::MAX)),
                    step.image,
                    audit.hits.len()
                ),
            );
            self.reporter.event(Event::AuditFinished {
                step: &step.label,
                image: &step.image,
                layers: audit.layers,
                bytes: audit.bytes,
                hits: serde_json::to_value(&audit.hits).unwrap_or_default(),
            });
            if audit.hits.is_empty() {
                continue;
            }
            for hit in &audit.hits {
                let line = hit.describe(&step.image);
                self.reporter.step(Severity::Error, &step.label, &line);
                hits.push(line);
            }
            if !self.options.keep_all {
                let _ = self.engine.remove_image(&step.image, true, false).await;
            }
        }
        if hits.is_empty() {
            Ok(())
        } else {
            Err(BuildError::Leak { hits })
        }
    }
}
