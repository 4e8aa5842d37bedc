//! `habitus check` and `habitus plan`: build.yml and the Dockerfiles'
//! mounts checked, secrets passed as build args or `ENV` warned about, the
//! plan printed; no daemon involved.

use super::{load, read_dockerfile};
use crate::cli::PlanFormat;
use crate::config::Config;
use crate::error::Error;
use crate::exposure::{self, Exposure};
use crate::manifest::{Diagnostics, Loaded};
use crate::progress::{print_stderr, print_stdout};
use crate::render;
use crate::runner;

/// `habitus check`: what a build would refuse before contacting the
/// daemon, and the build args and `ENV` it would store in its images that
/// look like secrets (refused too when `strict`), then the plan.
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
    if strict && !exposures.is_empty() {
        let errors = exposures.iter().map(Exposure::diagnostic).collect();
        return Err(Error::Manifest(Diagnostics(errors)));
    }
    for exposure in &exposures {
        print_stderr(&format!("warning: {exposure}"));
    }
    print_stdout(&render::text(&manifest, &plan));
    Ok(())
}

/// `habitus plan [--format F]`.
pub fn plan(config: &Config, format: PlanFormat) -> Result<(), Error> {
    let Loaded { manifest, plan, .. } = load(config)?;
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
