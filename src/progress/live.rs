//! The live view on a terminal: one line per step with a spinner, the
//! instruction the daemon is running (`[3/7] RUN go build …`) and the
//! elapsed time; waiting steps say what they wait on; finished steps
//! collapse into one line with their image, time, size and cache hits.
//! Messages print above the step lines.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;
use std::time::Duration;

use super::Redacted;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// The live view; see the module docs.
pub struct Live {
    multi: MultiProgress,
    bars: Mutex<BTreeMap<String, ProgressBar>>,
    started: Mutex<BTreeSet<String>>,
    colour: bool,
}

impl Live {
    /// A live view on stderr.
    pub fn stderr(colour: bool) -> Live {
        Live {
            multi: MultiProgress::with_draw_target(ProgressDrawTarget::stderr()),
            bars: Mutex::new(BTreeMap::new()),
            started: Mutex::new(BTreeSet::new()),
            colour,
        }
    }

    fn style(&self, template_colour: &str, template_plain: &str) -> ProgressStyle {
        let template = if self.colour {
            template_colour
        } else {
            template_plain
        };
        ProgressStyle::with_template(template).unwrap_or_else(|_| ProgressStyle::default_spinner())
    }

    fn waiting_style(&self) -> ProgressStyle {
        self.style("  {prefix:.dim} {wide_msg:.dim}", "  {prefix} {wide_msg}")
    }

    fn running_style(&self) -> ProgressStyle {
        self.style(
            "{spinner:.cyan} {prefix:.bold} {elapsed:>4} {wide_msg}",
            "{spinner} {prefix} {elapsed:>4} {wide_msg}",
        )
    }

    fn done_style(&self, ok: bool) -> ProgressStyle {
        let (mark, colour) = if ok { ("✓", "green") } else { ("✗", "red") };
        self.style(
            &format!("{mark} {{prefix:.{colour}.bold}} {{wide_msg}}"),
            &format!("{mark} {{prefix}} {{wide_msg}}"),
        )
    }

    fn bars(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, ProgressBar>> {
        self.bars.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Prints a whole line above the step lines.
    pub fn println(&self, line: &Redacted) {
        let _ = self.multi.println(line.as_str());
    }

    /// One line per step, in file order, each waiting on its dependencies.
    pub fn build_started(&self, steps: &[(String, Vec<String>)]) {
        let width = steps.iter().map(|(l, _)| l.len()).max().unwrap_or(0);
        let mut bars = self.bars();
        for (label, deps) in steps {
            let bar = self.multi.add(ProgressBar::new_spinner());
            bar.set_style(self.waiting_style());
            bar.set_prefix(format!("{label:<width$}"));
            bar.set_message(if deps.is_empty() {
                "waiting".to_string()
            } else {
                format!("waiting on {}", deps.join(", "))
            });
            bars.insert(label.clone(), bar);
        }
    }

    /// The step started building.
    pub fn step_started(&self, label: &str, image: &str) {
        self.started
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(label.to_string());
        if let Some(bar) = self.bars().get(label) {
            bar.reset_elapsed();
            bar.set_style(self.running_style());
            bar.set_message(format!("building {image}"));
            bar.enable_steady_tick(Duration::from_millis(120));
        }
    }

    /// The step's build started `instruction` (`[3/7] RUN …`): it becomes
    /// the step's current line.
    pub fn step_instruction(&self, label: &str, instruction: &Redacted) {
        if let Some(bar) = self.bars().get(label) {
            bar.set_message(instruction.to_string());
        }
    }

    /// The step finished; `summary` is its one-line result.
    pub fn step_finished(&self, label: &str, summary: &Redacted) {
        if let Some(bar) = self.bars().get(label) {
            bar.set_style(self.done_style(true));
            bar.finish_with_message(summary.to_string());
        }
    }

    /// Replaces a finished step's line (to add its size at the end).
    pub fn step_summary(&self, label: &str, summary: &Redacted) {
        if let Some(bar) = self.bars().get(label) {
            bar.set_message(summary.to_string());
        }
    }

    /// Removes the step lines: the summary that follows replaces them.
    pub fn clear_steps(&self) {
        let _ = self.multi.clear();
        let mut bars = self.bars();
        for bar in bars.values() {
            self.multi.remove(bar);
        }
        bars.clear();
    }

    /// The build ended: steps still running or waiting say so.
    pub fn build_finished(&self) {
        let started = self.started.lock().unwrap_or_else(|e| e.into_inner());
        for (label, bar) in self.bars().iter() {
            if !bar.is_finished() {
                let what = if started.contains(label) {
                    "stopped"
                } else {
                    "not built"
                };
                bar.set_style(self.done_style(false));
                bar.abandon_with_message(what.to_string());
            }
        }
    }
}
