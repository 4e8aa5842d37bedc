//! `habitus check` and `habitus plan`: build.yml and the Dockerfiles'
//! mounts checked, the plan printed; no daemon involved.

use super::load;
use crate::cli::PlanFormat;
use crate::config::Config;
use crate::error::Error;
use crate::manifest::Loaded;
use crate::progress::print_stdout;
use crate::runner::{self, BuildError};
use crate::{render, workpath};

/// `habitus check`: what a build would refuse before contacting the
/// daemon, then the plan.
pub fn check(config: &Config) -> Result<(), Error> {
    let Loaded { manifest, plan, .. } = load(config)?;
    // Secret and SSH mounts a step is not entitled to.
    for step in &manifest.steps {
        let text = workpath::confine(&manifest.workdir, &step.dockerfile_path)
            .and_then(std::fs::read_to_string)
            .map_err(|e| {
                Error::from(BuildError::Dockerfile {
                    step: step.label.clone(),
                    dockerfile: step.dockerfile_path.clone(),
                    message: e.to_string(),
                    hint: None,
                })
            })?;
        let builder = step.builder.unwrap_or(config.build.builder);
        runner::check_mounts(step, builder, &text)?;
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
