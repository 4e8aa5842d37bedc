//! After a build that served secrets: every image it produced and kept is
//! searched for them (see [`crate::audit`]); an image to push is searched
//! before its push.

use super::build::Build;
use super::{human_size, lock, BuildError, Summary};
use crate::progress::{Event, Severity};

impl Build {
    /// After a build that served secrets: searches every image it produced
    /// and kept for them (those searched before their push are not searched
    /// again). A hit fails the build and removes the image (unless
    /// `--keep-all`).
    pub async fn audit_images(&self, summary: &Summary) -> Result<(), BuildError> {
        let mut hits = Vec::new();
        for step in &summary.steps {
            if step.folded_into.is_some()
                || summary.removed_images.contains(&step.image)
                || lock(&self.audited).contains(&step.image)
            {
                continue;
            }
            hits.extend(self.audit_image(&step.label, &step.image).await?);
        }
        if hits.is_empty() {
            Ok(())
        } else {
            Err(BuildError::Leak { hits })
        }
    }

    /// Searches one image of step `label` for the build's secrets (nothing
    /// without secrets); returns a line per hit. An image with hits, or
    /// one the audit could not read, is removed (unless `--keep-all`).
    pub async fn audit_image(&self, label: &str, image: &str) -> Result<Vec<String>, BuildError> {
        let Some(scanner) = self.audit.clone() else {
            return Ok(Vec::new());
        };
        lock(&self.audited).insert(image.to_string());
        let audit = match crate::audit::audit_image(&*self.engine, image, scanner).await {
            Ok(audit) => audit,
            Err(e) => {
                // What the audit could not read it could not clear: the
                // image goes, as it would on a hit, with every name the
                // build gave it.
                if !self.options.keep_all {
                    self.remove_names(label, image).await;
                    let _ = self.engine.remove_image(image, true, false).await;
                }
                return Err(BuildError::Audit {
                    message: e.to_string(),
                });
            }
        };
        self.reporter.step(
            Severity::Info,
            label,
            &format!(
                "audit: {} layer(s) ({} read to their end), {} nested file(s) and the config of `{image}` searched, {} secret occurrence(s)",
                audit.layers,
                human_size(i64::try_from(audit.bytes).unwrap_or(i64::MAX)),
                audit.nested,
                audit.hits.len()
            ),
        );
        // What the audit could not open is named, never passed over.
        for skipped in &audit.not_searched {
            self.reporter
                .step(Severity::Warning, label, &skipped.describe(image));
        }
        self.reporter.event(Event::AuditFinished {
            step: label,
            image,
            layers: audit.layers,
            bytes: audit.bytes,
            nested: audit.nested,
            hits: serde_json::to_value(&audit.hits).unwrap_or_default(),
            not_searched: serde_json::to_value(&audit.not_searched).unwrap_or_default(),
        });
        let mut hits = Vec::new();
        for hit in &audit.hits {
            let line = hit.describe(image);
            self.reporter.step(Severity::Error, label, &line);
            hits.push(line);
        }
        if !hits.is_empty() && !self.options.keep_all {
            self.remove_names(label, image).await;
            let _ = self.engine.remove_image(image, true, false).await;
        }
        Ok(hits)
    }
}
