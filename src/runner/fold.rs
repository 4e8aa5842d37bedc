//! Folding: with BuildKit, a step whose image only the next step needs is
//! built as a named stage of that step's build instead of being exported.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use super::build::Build;
use super::{check_mounts, BuildError, Runner, StepReport};
use crate::dockerfile;
use crate::manifest::Step;
use crate::model::Builder;
use crate::progress::{Severity, StepFinished};
use crate::workpath;

/// The stage name of the `n`th step folded into a build.
fn alias(n: usize) -> String {
    format!("habitus-fold-{n}")
}

/// Steps that BuildKit builds as a stage of the next step's build
/// instead of as an image of their own: label → label of that step.
///
/// With BuildKit every step's image costs an export (on this kind of
/// storage, most of a trivial step's time), but an image that only
/// the next step's `FROM` uses and that the build removes at its end
/// need not exist. Step `x` folds into `y` when both build with
/// BuildKit from the same context; `y` is `x`'s only dependent and `x`
/// `y`'s only dependency, and `y`'s Dockerfile refers to `x`'s image;
/// `x` has one unnamed stage and no artifacts, cleanup, command,
/// `keep`, `target`, secrets, `ssh`, `push` or `tags`, and the same
/// `cache_from` and `cache_to` as `y`; `y` declares no secrets or
/// cleanup; both have the same `no_cache` and `args`; `y`'s
/// Dockerfile can follow another one (see [`dockerfile::appendable`]);
/// and `--keep-all` is off. Chains fold whole.
pub async fn plan(runner: &Runner) -> BTreeMap<String, String> {
    let mut folds = BTreeMap::new();
    if runner.options.keep_all {
        return folds;
    }
    let steps = &runner.manifest.steps;
    let buildkit = |s: &Step| s.builder.unwrap_or(runner.options.builder) == Builder::BuildKit;
    for (i, x) in steps.iter().enumerate() {
        let [j] = runner.plan.dependents(i) else {
            continue;
        };
        let y = &steps[*j];
        let shape = buildkit(x)
            && buildkit(y)
            && runner.plan.deps(*j) == [i]
            && x.artifacts.is_empty()
            && x.cleanup.is_empty()
            && x.command.is_none()
            && x.after_build_command.is_none()
            && !x.keep
            && x.target.is_none()
            && x.secrets.is_empty()
            && !x.ssh
            && !x.push
            && x.tags.is_empty()
            // The build of `y` takes its cache for both.
            && x.cache_from == y.cache_from
            && x.cache_to_inline == y.cache_to_inline
            && y.secrets.is_empty()
            && y.cleanup.is_empty()
            && x.context == y.context
            && x.no_cache == y.no_cache
            // Build arguments reach every stage of a build.
            && x.args == y.args;
        if !shape {
            continue;
        }
        let (Ok(x_text), Ok(y_text)) = (
            crate::workpath::read_inside(&runner.manifest.workdir, &x.dockerfile_path).await,
            crate::workpath::read_inside(&runner.manifest.workdir, &y.dockerfile_path).await,
        ) else {
            continue;
        };
        let single = dockerfile::name_single_stage(&x_text, "habitus-fold")
            .is_ok_and(|named| named.is_some());
        let follows = dockerfile::appendable(&y_text).unwrap_or(false);
        let uses = dockerfile::rewrite(&y_text, &runner.images)
            .is_ok_and(|r| r.references.contains(&x.name));
        if single && follows && uses {
            folds.insert(x.label.clone(), y.label.clone());
        }
    }
    folds
}

impl Build {
    /// The report of a step that another step's build builds as a stage.
    pub fn folded(&self, step: &Step, into: &str, started: Instant) -> StepReport {
        // The step that builds the whole chain.
        let mut into = into;
        while let Some(next) = self.folds.get(into) {
            into = next;
        }
        let what = format!("stage of `{into}`");
        self.reporter.step(
            Severity::Info,
            &step.label,
            &format!(
                "built by step `{into}` as a stage of its BuildKit build: nothing needs this step's image after the build, so it is not exported"
            ),
        );
        self.reporter
            .step_started(&step.label, &what, &step.dockerfile);
        self.reporter.step_finished(&StepFinished {
            label: &step.label,
            image: &what,
            image_id: "",
            duration: started.elapsed(),
            cached: 0,
            total: 0,
        });
        StepReport {
            label: step.label.clone(),
            image: String::new(),
            image_id: String::new(),
            size: None,
            duration: started.elapsed(),
            cached_steps: 0,
            total_steps: 0,
            artifacts: Vec::new(),
            folded_into: Some(into.to_string()),
        }
    }

    /// The steps folded into step `label`, the first of the chain first.
    pub fn folded_chain(&self, label: &str) -> Vec<Step> {
        let mut chain = Vec::new();
        let mut current = label.to_string();
        while let Some((from, _)) = self.folds.iter().find(|(_, into)| **into == current) {
            match self.manifest.steps.iter().find(|s| &s.label == from) {
                Some(step) => chain.push(step.clone()),
                None => break,
            }
            current = from.clone();
        }
        chain.reverse();
        chain
    }

    /// The steps folded into `step` as named stages, for the text before
    /// its Dockerfile: the chain (first step first), that text, and the
    /// image names with the chain's images replaced by their stages.
    pub async fn fold_stages(
        &self,
        step: &Step,
        builder: Builder,
    ) -> Result<(Vec<Step>, Vec<u8>, Arc<BTreeMap<String, String>>), BuildError> {
        let chain = self.folded_chain(&step.label);
        let mut images = Arc::clone(&self.images);
        if !chain.is_empty() {
            let names = Arc::make_mut(&mut images);
            for (n, s) in chain.iter().enumerate() {
                names.insert(s.name.clone(), alias(n));
            }
        }
        let mut stages = Vec::new();
        for (n, s) in chain.iter().enumerate() {
            let error = |message: String| BuildError::Dockerfile {
                step: s.label.clone(),
                dockerfile: s.dockerfile_path.clone(),
                message,
                hint: None,
            };
            let text = workpath::read_inside(&self.manifest.workdir, &s.dockerfile_path)
                .await
                .map_err(|e| error(e.to_string()))?;
            let text = dockerfile::rewrite(&text, &images)
                .map_err(|e| error(e.to_string()))?
                .text;
            check_mounts(s, builder, &text)?;
            let named = dockerfile::name_single_stage(&text, &alias(n))
                .ok()
                .flatten()
                .ok_or_else(|| {
                    error("changed during the build: it has more than one stage now".into())
                })?;
            stages.extend_from_slice(&named);
            if !stages.ends_with(b"\n") {
                stages.push(b'\n');
            }
        }
        if !chain.is_empty() {
            self.reporter.step(
                Severity::Info,
                &step.label,
                &format!(
                    "builds {} as stage(s) of this BuildKit build",
                    chain
                        .iter()
                        .map(|s| format!("`{}`", s.label))
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            );
        }
        Ok((chain, stages, images))
    }

    /// The folded step of `chain` whose stage `instruction` belongs to.
    pub fn failed_stage<'c>(chain: &'c [Step], instruction: Option<&str>) -> Option<&'c Step> {
        let instruction = instruction?;
        chain
            .iter()
            .enumerate()
            .find(|(n, _)| instruction.starts_with(&format!("[{} ", alias(*n))))
            .map(|(_, s)| s)
    }
}
