//! The build plan: a pure DAG of steps (no I/O, no async). It gives a
//! deterministic topological order, the levels (for display only: the
//! runner schedules eagerly), the leaves (the products) and reports cycles
//! with their whole path.

/// Why a set of steps does not form a DAG.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// `depends_on` names a step that does not exist.
    #[error("step `{step}` depends on unknown step `{dependency}`")]
    UnknownDependency {
        /// The step whose `depends_on` is wrong.
        step: String,
        /// The name that matches no step.
        dependency: String,
    },
    /// The steps form a cycle; `path` starts and ends with the same label.
    #[error("step `{}` has circular dependency `{}`", path[0], path.join(" -> "))]
    Cycle {
        /// `a -> b -> a` as `["a", "b", "a"]`.
        path: Vec<String>,
    },
}

/// A validated DAG of steps, indexed in input order.
#[derive(Debug, Clone)]
pub struct Plan {
    labels: Vec<String>,
    deps: Vec<Vec<usize>>,
    dependents: Vec<Vec<usize>>,
    order: Vec<usize>,
    levels: Vec<Vec<usize>>,
    leaves: Vec<usize>,
}

impl Plan {
    /// Builds the plan from `(label, depends_on)` pairs in file order.
    /// Reports every unknown dependency and every distinct cycle.
    pub fn new(nodes: &[(String, Vec<String>)]) -> Result<Plan, Vec<PlanError>> {
        let _ = nodes;
        unimplemented!()
    }
    /// Number of steps.
    pub fn len(&self) -> usize {
        self.labels.len()
    }
    /// True if there are no steps.
    pub fn is_empty(&self) -> bool {
        self.labels.is_empty()
    }
    /// The label of step `i`.
    pub fn label(&self, i: usize) -> &str {
        &self.labels[i]
    }
    /// Index of the step with this label.
    pub fn index_of(&self, label: &str) -> Option<usize> {
        self.labels.iter().position(|l| l == label)
    }
    /// Direct dependencies of step `i` (deduplicated, input order).
    pub fn deps(&self, i: usize) -> &[usize] {
        &self.deps[i]
    }
    /// Steps that depend directly on step `i`.
    pub fn dependents(&self, i: usize) -> &[usize] {
        &self.dependents[i]
    }
    /// A deterministic topological order: every step after all its
    /// dependencies; ties broken by input order.
    pub fn order(&self) -> &[usize] {
        &self.order
    }
    /// Level 0 = no dependencies; level n = 1 + max level of its deps.
    pub fn levels(&self) -> &[Vec<usize>] {
        &self.levels
    }
    /// Steps nothing depends on (the products), in input order.
    pub fn leaves(&self) -> &[usize] {
        &self.leaves
    }
}
