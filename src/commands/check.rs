//! `habitus check` and `habitus plan`: build.yml and the Dockerfiles'
//! mounts checked, secrets passed as build args or `ENV` warned about, the
//! plan printed; no daemon involved.

use super::{load, read_dockerfile};
use crate::cli::PlanFormat;
use crate::config::Config;
use crate::error::Error;
use crate::exposure::{self, Exposure};
use crate::manifest::{Diagnostics, Loaded, Manifest};
use crate::progress::{print_stderr, print_stdout};
use crate::render;
use crate::runner;

/// `habitus check`: what a build would refuse before contacting the
/// daemon, and the build args and `ENV` it would store in its images that
/// look like secrets and the steps ordered only by the images their
/// Dockerfiles use (both refused when `strict`), then the plan.
pub fn check(config: &Config, strict: bool) -> Result<(), Error> {
    let Loaded { manifest, plan, .. } = load(config)?;
    let mut exposures = Vec::new();
    for step in &manifest.steps {
        let text = read_dockerfile(&manifest, step)?;
        // Secret and SSH mounts a step is not entitled to.
        let builder = step.builder.unwrap_or(config.build.builder);
        runner::check_mounts(step, builder, &text)?;
        exposures.extend(exposure::in_step(&manifest.file, step, Some(&text)));
    }
    let inferred = manifest.steps.iter().any(|s| !s.inferred.is_empty());
    if strict && (inferred || !exposures.is_empty()) {
        let mut errors: Vec<_> = manifest
            .steps
            .iter()
            .flat_map(|s| s.inferred_diagnostics(&manifest.file))
            .collect();
        errors.extend(exposures.iter().map(Exposure::diagnostic));
        return Err(Error::Manifest(Diagnostics(errors)));
    }
    print_inferred(&manifest);
    for exposure in &exposures {
        print_stderr(&format!("warning: {exposure}"));
    }
    print_stdout(&render::text(&manifest, &plan));
    Ok(())
}

/// Says on stderr which steps are ordered by the images their
/// Dockerfiles use rather than by `depends_on`.
fn print_inferred(manifest: &Manifest) {
    for step in &manifest.steps {
        for notice in step.inferred_notices() {
            print_stderr(&format!("warning: {notice}"));
        }
    }
}

/// `habitus plan [--format F]`.
pub fn plan(config: &Config, format: PlanFormat) -> Result<(), Error> {
    let Loaded { manifest, plan, .. } = load(config)?;
    print_inferred(&manifest);
    let m = &manifest;
    let text = match format {
        PlanFormat::Text => render::text(m, &plan),
        PlanFormat::Json => render::json(m, &plan),
        PlanFormat::Dot => render::dot(m, &plan),
        PlanFormat::Mermaid => render::mermaid(m, &plan),
    };
    print_stdout(&text);
    Ok(())
}
