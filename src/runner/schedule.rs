//! Eager scheduling: a step starts as soon as all its dependencies have
//! finished, at most `jobs` at once, in plan order among the ready ones.
//! A step whose image is pushed is pushed by a task of its own, beside
//! the steps that follow it. The first failure, a panic or a signal stops
//! every step and push in flight.

use std::collections::{BTreeMap, VecDeque};
use std::sync::{Arc, Mutex};

use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::build::Build;
use super::registry::PushedImage;
use super::{BuildError, Signal, StepReport, Summary};
use crate::plan::Plan;
use crate::progress::Severity;

/// The steps not started yet: how many dependencies each still waits
/// for, and those ready to start, in plan order.
struct Queue {
    waiting: Vec<usize>,
    ready: VecDeque<usize>,
    /// Step index → its position in the plan's order.
    position: Vec<usize>,
}

impl Queue {
    fn new(plan: &Plan) -> Queue {
        let mut position = vec![0; plan.len()];
        for (p, &i) in plan.order().iter().enumerate() {
            position[i] = p;
        }
        let waiting: Vec<usize> = (0..plan.len()).map(|i| plan.deps(i).len()).collect();
        let ready = plan
            .order()
            .iter()
            .copied()
            .filter(|&i| waiting[i] == 0)
            .collect();
        Queue {
            waiting,
            ready,
            position,
        }
    }

    /// Step `i` finished: its dependents that waited only for it are ready.
    fn finished(&mut self, plan: &Plan, i: usize) {
        for &d in plan.dependents(i) {
            self.waiting[d] -= 1;
            if self.waiting[d] == 0 {
                self.ready.push_back(d);
            }
        }
        let position = &self.position;
        self.ready.make_contiguous().sort_by_key(|&s| position[s]);
    }
}

/// What a task of the build ends with: a step built, or a step's image
/// pushed.
enum Done {
    Built(Result<StepReport, BuildError>),
    Pushed(Result<Vec<PushedImage>, BuildError>),
}

type StepTask = (usize, Done);

impl Build {
    /// Builds every step; on failure, returns what finished with the error.
    pub async fn schedule(
        self: &Arc<Self>,
        cancel: &CancellationToken,
        signal: &Mutex<Option<Signal>>,
    ) -> Result<Summary, (Summary, BuildError)> {
        let plan = Arc::clone(&self.plan);
        let mut queue = Queue::new(&plan);
        let mut tasks: JoinSet<StepTask> = JoinSet::new();
        let mut task_step = BTreeMap::new();
        let mut summary = Summary::default();
        let mut failure: Option<BuildError> = None;
        let jobs = self.options.jobs.max(1);
        // Step tasks running (push tasks are not counted).
        let mut building = 0usize;
        loop {
            // Pushes run beside the steps: only steps count against `jobs`.
            while failure.is_none() && building < jobs {
                let Some(i) = queue.ready.pop_front() else {
                    break;
                };
                let step = self.manifest.steps[i].clone();
                let build = Arc::clone(self);
                let handle =
                    tasks.spawn(async move { (i, Done::Built(build.build_step(step).await)) });
                building += 1;
                task_step.insert(handle.id(), i);
            }
            if tasks.is_empty() {
                break;
            }
            tokio::select! {
                biased;
                _ = cancel.cancelled(), if failure.is_none() => {
                    let sig = signal
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .unwrap_or(Signal::Interrupt);
                    self.reporter.message(Severity::Warning, "interrupted: stopping every running step");
                    failure = Some(BuildError::Interrupted { signal: sig });
                    tasks.abort_all();
                }
                joined = tasks.join_next_with_id() => {
                    let error = match joined {
                        None => continue,
                        Some(Ok((_, (i, Done::Built(Ok(report)))))) => {
                            building -= 1;
                            // Its push runs beside the steps that follow.
                            if self.pushes(i) && failure.is_none() {
                                let build = Arc::clone(self);
                                let image = report.image.clone();
                                let handle = tasks.spawn(async move {
                                    (i, Done::Pushed(build.push_step(i, image).await))
                                });
                                task_step.insert(handle.id(), i);
                            }
                            summary.steps.push(report);
                            queue.finished(&plan, i);
                            continue;
                        }
                        Some(Ok((_, (_, Done::Pushed(Ok(pushed)))))) => {
                            summary.pushed.extend(pushed);
                            continue;
                        }
                        Some(Ok((_, (_, Done::Built(Err(error)))))) => {
                            building -= 1;
                            error
                        }
                        Some(Ok((_, (_, Done::Pushed(Err(error)))))) => error,
                        Some(Err(e)) if e.is_panic() => BuildError::Panic {
                            step: plan.label(task_step.get(&e.id()).copied().unwrap_or(0)).to_string(),
                            message: panic_message(e.into_panic()),
                        },
                        Some(Err(_)) => continue,
                    };
                    if failure.is_none() {
                        failure = Some(error);
                        tasks.abort_all();
                    }
                }
            }
        }
        match failure {
            None => Ok(summary),
            Some(error) => Err((summary, error)),
        }
    }
}

fn panic_message(payload: Box<dyn std::any::Any + Send>) -> String {
    payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic".to_string())
}
