//! The end of a successful build as the user sees it: the JSON `summary`
//! event, each step's final line with its size, and the summary text.

use super::{human_size, Summary};
use crate::progress::event::{SummaryArtifact, SummarySecret, SummaryStep};
use crate::progress::{Event, Reporter, StepFinished};

/// Reports `summary` on every sink of `reporter`.
pub fn summary(reporter: &Reporter, summary: &Summary) {
    reporter.event(event(summary));
    for step in summary.steps.iter().filter(|s| s.folded_into.is_none()) {
        reporter.step_summary(
            &StepFinished {
                label: &step.label,
                image: &step.image,
                image_id: &step.image_id,
                duration: step.duration,
                cached: step.cached_steps,
                total: step.total_steps,
            },
            step.size.map(human_size).as_deref(),
        );
    }
    reporter.summary(&text(summary, false), &text(summary, true));
}

/// The `summary` JSON event.
fn event(summary: &Summary) -> Event<'_> {
    Event::Summary {
        steps: summary
            .steps
            .iter()
            .map(|s| SummaryStep {
                step: &s.label,
                image: &s.image,
                image_id: &s.image_id,
                size: s.size,
                duration_ms: s.duration.as_millis() as u64,
                cached: s.cached_steps,
                total: s.total_steps,
            })
            .collect(),
        removed_images: &summary.removed_images,
        artifacts: summary
            .steps
            .iter()
            .flat_map(|s| {
                s.artifacts.iter().map(|a| SummaryArtifact {
                    step: &s.label,
                    source: &a.source,
                    dest: &a.dest,
                    bytes: a.bytes,
                })
            })
            .collect(),
        secrets: summary
            .secrets_served
            .iter()
            .map(|(used, n)| SummarySecret {
                step: &used.step,
                secret: &used.secret,
                fetches: *n,
            })
            .collect(),
        audited_images: &summary.audited_images,
    }
}

/// The summary for people: steps (in the order they finished, or with
/// `plan_order` in the plan's), artifacts, secrets served, the audit.
fn text(summary: &Summary, plan_order: bool) -> String {
    let mut steps: Vec<_> = summary.steps.iter().collect();
    if plan_order {
        let position = |label: &str| summary.plan_order.iter().position(|l| l == label);
        steps.sort_by_key(|s| position(&s.label));
    }
    let mut text = String::from("summary:");
    for step in steps {
        let image = match &step.folded_into {
            Some(into) => format!("(stage of `{into}`)"),
            None => step.image.clone(),
        };
        text.push_str(&format!(
            "\n  {:<16} {:<40} {:>10} {:>7.1}s  {}/{} cached",
            step.label,
            image,
            step.size.map(human_size).unwrap_or_default(),
            step.duration.as_secs_f64(),
            step.cached_steps,
            step.total_steps,
        ));
    }
    let artifacts: Vec<_> = summary
        .steps
        .iter()
        .flat_map(|s| s.artifacts.iter().map(move |a| (&s.label, a)))
        .collect();
    if !artifacts.is_empty() {
        text.push_str("\nartifacts copied:");
        for (step, a) in artifacts {
            text.push_str(&format!(
                "\n  {step:<16} {} -> {} ({})",
                a.source,
                a.dest.display(),
                human_size(i64::try_from(a.bytes).unwrap_or(i64::MAX))
            ));
        }
    }
    if !summary.secrets_served.is_empty() {
        text.push_str("\nsecrets served:");
        for (used, n) in &summary.secrets_served {
            let (step, secret) = (&used.step, &used.secret);
            text.push_str(&format!("\n  {step:<16} {secret}: {n} fetch(es)"));
        }
    }
    if !summary.pushed.is_empty() {
        text.push_str("\npushed:");
        for p in &summary.pushed {
            text.push_str(&format!("\n  {:<16} {}@{}", p.step, p.name, p.digest));
        }
    }
    if !summary.audited_images.is_empty() {
        text.push_str(&format!(
            "\naudit: no secret in {}",
            summary.audited_images.join(", ")
        ));
    }
    text
}
