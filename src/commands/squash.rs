//! `habitus squash IMAGE [-t TAG] [--all | --from BASE]`.

use std::sync::Arc;

use super::{connect, runtime};
use crate::config::Config;
use crate::engine::LineSink;
use crate::error::Error;
use crate::progress::{Reporter, Severity};
use crate::squash::{self as squasher, Keep};

/// Squashes `image` into `tag` (default: the same name), keeping the
/// layers of its base image unless `all` or `from` say otherwise.
pub fn squash(
    config: &Config,
    image: &str,
    tag: Option<&str>,
    all: bool,
    from: Option<String>,
) -> Result<(), Error> {
    let runtime = runtime()?;
    runtime.block_on(async {
        let reporter = Arc::new(Reporter::stderr(
            config.output.level,
            config.output.suppress,
        ));
        let engine = connect(config).await?;
        let keep = match (all, from) {
            (true, _) => Keep::Nothing,
            (false, Some(base)) => Keep::BaseImage(base),
            (false, None) => {
                let base = squasher::detect_base(&engine, image).await?;
                reporter.message(Severity::Info, &format!("keeping the layers of `{base}`"));
                Keep::BaseImage(base)
            }
        };
        let tag = tag.unwrap_or(image);
        let sink_reporter = Arc::clone(&reporter);
        let sink: LineSink = Arc::new(move |line: &str| sink_reporter.step_output("squash", line));
        let report = squasher::squash(
            &engine,
            image,
            tag,
            keep,
            config.build.squash_temp_limit,
            sink,
        )
        .await?;
        reporter.message(
            Severity::Info,
            &format!(
                "squashed `{image}` into `{tag}` ({}): {} layer(s) → {} ({} of temporary files)",
                report.image_id,
                report.layers_before,
                report.layers_after,
                squasher::budget::human(report.temp_bytes)
            ),
        );
        Ok(())
    })
}
