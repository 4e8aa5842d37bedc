//! The build plan: a pure DAG of steps (no I/O, no async). It gives a
//! deterministic topological order, the levels (for display only: the
//! runner schedules eagerly), the leaves (the products) and reports cycles
//! with their whole path.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::Arc;

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
    /// Two steps share a label, so `depends_on` could not tell them apart.
    #[error("step `{step}` is defined more than once")]
    DuplicateStep {
        /// The label given to more than one step.
        step: String,
    },
}

/// A validated DAG of steps, indexed in input order.
#[derive(Debug, Clone)]
pub struct Plan {
    labels: Vec<Arc<str>>,
    index: HashMap<Arc<str>, usize, BuildHasherDefault<Fnv>>,
    deps: Adjacency,
    dependents: Adjacency,
    order: Vec<usize>,
    /// `level[i]` is the level of step `i`; `levels[level[i]]` holds `i`.
    level: Vec<usize>,
    levels: Vec<Vec<usize>>,
    leaves: Vec<usize>,
}

impl Plan {
    /// Builds the plan from `(label, depends_on)` pairs in file order.
    /// Reports every unknown dependency and every distinct cycle.
    pub fn new(nodes: &[(String, Vec<String>)]) -> Result<Plan, Vec<PlanError>> {
        let n = nodes.len();
        let mut errors = Vec::new();

        let labels: Vec<Arc<str>> = nodes
            .iter()
            .map(|(label, _)| Arc::from(label.as_str()))
            .collect();
        let mut index = HashMap::with_capacity_and_hasher(n, BuildHasherDefault::default());
        for (i, label) in labels.iter().enumerate() {
            if index.insert(Arc::clone(label), i).is_some() {
                errors.push(PlanError::DuplicateStep {
                    step: label.to_string(),
                });
            }
        }
        if !errors.is_empty() {
            return Err(errors);
        }

        // Resolve names to indices, dropping repeats. `seen[d] == i + 1`
        // means step `i` already lists `d`, so no set is allocated per step.
        let mut seen = vec![0usize; n];
        let mut deps = Adjacency::with_capacity(n, nodes.iter().map(|(_, d)| d.len()).sum());
        for (i, (label, names)) in nodes.iter().enumerate() {
            for name in names {
                match index.get(name.as_str()) {
                    Some(&d) if seen[d] != i + 1 => {
                        seen[d] = i + 1;
                        deps.edges.push(d);
                    }
                    Some(_) => {}
                    None => errors.push(PlanError::UnknownDependency {
                        step: label.clone(),
                        dependency: name.clone(),
                    }),
                }
            }
            deps.start.push(deps.edges.len());
        }

        for cycle in find_cycles(&deps) {
            errors.push(PlanError::Cycle {
                path: cycle.into_iter().map(|i| labels[i].to_string()).collect(),
            });
        }
        if !errors.is_empty() {
            return Err(errors);
        }

        let dependents = deps.reversed();
        let order = topological_order(&deps, &dependents);
        debug_assert_eq!(order.len(), n, "a cycle escaped detection");

        let mut level = vec![0usize; n];
        for &i in &order {
            level[i] = deps.of(i).iter().map(|&d| level[d] + 1).max().unwrap_or(0);
        }
        let depth = level.iter().map(|&l| l + 1).max().unwrap_or(0);
        let mut levels = vec![Vec::new(); depth];
        for (i, &l) in level.iter().enumerate() {
            levels[l].push(i);
        }

        let leaves = (0..n).filter(|&i| dependents.of(i).is_empty()).collect();

        Ok(Plan {
            labels,
            index,
            deps,
            dependents,
            order,
            level,
            levels,
            leaves,
        })
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
        self.index.get(label).copied()
    }
    /// Direct dependencies of step `i` (deduplicated, input order).
    pub fn deps(&self, i: usize) -> &[usize] {
        self.deps.of(i)
    }
    /// Steps that depend directly on step `i`, in input order.
    pub fn dependents(&self, i: usize) -> &[usize] {
        self.dependents.of(i)
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
    /// The level of step `i` (see [`Plan::levels`]).
    pub fn level(&self, i: usize) -> usize {
        self.level[i]
    }
    /// Steps nothing depends on (the products), in input order.
    pub fn leaves(&self) -> &[usize] {
        &self.leaves
    }
    /// True if nothing depends on step `i`.
    pub fn is_leaf(&self, i: usize) -> bool {
        self.dependents.of(i).is_empty()
    }
    /// True if step `i` depends on step `d`, directly or through others,
    /// so the plan builds `d` before `i`.
    pub fn is_after(&self, i: usize, d: usize) -> bool {
        let mut seen = vec![false; self.len()];
        let mut stack = vec![i];
        while let Some(next) = stack.pop() {
            for &dep in self.deps.of(next) {
                if dep == d {
                    return true;
                }
                if !seen[dep] {
                    seen[dep] = true;
                    stack.push(dep);
                }
            }
        }
        false
    }
}

/// Edge lists of all steps in one allocation: the edges of step `i` are
/// `edges[start[i]..start[i + 1]]`.
#[derive(Debug, Clone)]
struct Adjacency {
    /// Invariant: `start[0] == 0`, non-decreasing, last == `edges.len()`.
    start: Vec<usize>,
    edges: Vec<usize>,
}

impl Adjacency {
    fn with_capacity(nodes: usize, edges: usize) -> Adjacency {
        let mut start = Vec::with_capacity(nodes + 1);
        start.push(0);
        Adjacency {
            start,
            edges: Vec::with_capacity(edges),
        }
    }

    fn len(&self) -> usize {
        self.start.len() - 1
    }

    fn of(&self, i: usize) -> &[usize] {
        &self.edges[self.start[i]..self.start[i + 1]]
    }

    /// The same edges pointing the other way, each list in input order.
    fn reversed(&self) -> Adjacency {
        let n = self.len();
        let mut start = vec![0usize; n + 1];
        for &d in &self.edges {
            start[d + 1] += 1;
        }
        for i in 0..n {
            start[i + 1] += start[i];
        }
        let mut next = start.clone();
        let mut edges = vec![0usize; self.edges.len()];
        for i in 0..n {
            for &d in self.of(i) {
                edges[next[d]] = i;
                next[d] += 1;
            }
        }
        Adjacency { start, edges }
    }
}

/// FNV-1a: step labels are short and come from the user's own file, so a
/// hash that resists flooding buys nothing and SipHash costs more than the
/// rest of planning.
struct Fnv(u64);

impl Default for Fnv {
    fn default() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
}

impl Hasher for Fnv {
    fn finish(&self) -> u64 {
        self.0
    }

    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// Where a step is in the depth-first search for cycles.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Mark {
    /// Not reached yet.
    New,
    /// On the stack at this position: reaching it again closes a cycle.
    OnStack(usize),
    /// Finished: every path from it has been explored.
    Done,
}

/// Every cycle closed by a back edge of a depth-first search that starts
/// from each step in input order, as a path of indices whose first and last
/// entries are equal.
///
/// This is just's recipe resolver turned inside out: an explicit stack of
/// the steps being resolved, and a step met again while it is still on the
/// stack closes a cycle that runs from its stack position to the top. The
/// stack position lives in `marks`, so "is it on the stack" is a lookup,
/// not a scan: a 10,000-step chain costs 10,000 steps, not 50 million.
///
/// Each cycle found this way contains exactly one back edge (the path down
/// the stack uses only tree edges), and each edge is examined once, so the
/// cycles reported are distinct.
fn find_cycles(deps: &Adjacency) -> Vec<Vec<usize>> {
    let mut cycles = Vec::new();
    let mut marks = vec![Mark::New; deps.len()];
    // (step, how many of its deps have been looked at)
    let mut stack: Vec<(usize, usize)> = Vec::new();

    for root in 0..deps.len() {
        if marks[root] != Mark::New {
            continue;
        }
        marks[root] = Mark::OnStack(0);
        stack.push((root, 0));
        while let Some(top) = stack.last_mut() {
            let (node, next) = *top;
            let Some(&dep) = deps.of(node).get(next) else {
                marks[node] = Mark::Done;
                stack.pop();
                continue;
            };
            top.1 += 1;
            match marks[dep] {
                Mark::New => {
                    marks[dep] = Mark::OnStack(stack.len());
                    stack.push((dep, 0));
                }
                Mark::OnStack(at) => {
                    let mut path: Vec<usize> = stack[at..].iter().map(|&(n, _)| n).collect();
                    path.push(dep);
                    cycles.push(path);
                }
                Mark::Done => {}
            }
        }
    }
    cycles
}

/// Kahn's algorithm with the ready steps in a min-heap of input positions,
/// so that among the steps whose dependencies are all done the one written
/// first in build.yml comes first.
fn topological_order(deps: &Adjacency, dependents: &Adjacency) -> Vec<usize> {
    let mut waiting: Vec<usize> = (0..deps.len()).map(|i| deps.of(i).len()).collect();
    let mut ready: BinaryHeap<Reverse<usize>> = waiting
        .iter()
        .enumerate()
        .filter(|(_, &w)| w == 0)
        .map(|(i, _)| Reverse(i))
        .collect();
    let mut order = Vec::with_capacity(deps.len());
    while let Some(Reverse(i)) = ready.pop() {
        order.push(i);
        for &j in dependents.of(i) {
            waiting[j] -= 1;
            if waiting[j] == 0 {
                ready.push(Reverse(j));
            }
        }
    }
    order
}

#[cfg(test)]
mod tests {
    use super::{Plan, PlanError};

    fn nodes(spec: &[(&str, &[&str])]) -> Vec<(String, Vec<String>)> {
        spec.iter()
            .map(|(label, deps)| {
                (
                    (*label).to_owned(),
                    deps.iter().map(|d| (*d).to_owned()).collect(),
                )
            })
            .collect()
    }

    fn labels(plan: &Plan, indices: &[usize]) -> Vec<String> {
        indices.iter().map(|&i| plan.label(i).to_owned()).collect()
    }

    fn cycle(path: &[&str]) -> PlanError {
        PlanError::Cycle {
            path: path.iter().map(|s| (*s).to_owned()).collect(),
        }
    }

    #[test]
    fn empty_plan() {
        let plan = Plan::new(&[]).unwrap();
        assert!(plan.is_empty());
        assert!(plan.order().is_empty());
        assert!(plan.levels().is_empty());
        assert!(plan.leaves().is_empty());
    }

    #[test]
    fn diamond_order_levels_leaves() {
        let plan = Plan::new(&nodes(&[
            ("d", &["b", "c"]),
            ("c", &["a"]),
            ("b", &["a"]),
            ("a", &[]),
        ]))
        .unwrap();
        assert_eq!(labels(&plan, plan.order()), ["a", "c", "b", "d"]);
        let levels: Vec<Vec<String>> = plan.levels().iter().map(|l| labels(&plan, l)).collect();
        assert_eq!(levels, [vec!["a"], vec!["c", "b"], vec!["d"]]);
        assert_eq!(labels(&plan, plan.leaves()), ["d"]);
        let a = plan.index_of("a").unwrap();
        assert_eq!(labels(&plan, plan.dependents(a)), ["c", "b"]);
        assert_eq!(plan.level(plan.index_of("d").unwrap()), 2);
        assert_eq!(plan.index_of("e"), None);
    }

    #[test]
    fn ties_follow_input_order() {
        let plan = Plan::new(&nodes(&[("z", &[]), ("y", &["z"]), ("x", &[])])).unwrap();
        assert_eq!(labels(&plan, plan.order()), ["z", "y", "x"]);
        assert_eq!(labels(&plan, plan.leaves()), ["y", "x"]);
    }

    #[test]
    fn duplicate_dependencies_are_merged() {
        let plan = Plan::new(&nodes(&[("a", &[]), ("b", &["a", "a", "a"])])).unwrap();
        assert_eq!(plan.deps(1), [0]);
        assert_eq!(plan.dependents(0), [1]);
    }

    #[test]
    fn unknown_dependency_message() {
        let err = Plan::new(&nodes(&[("app", &["complie"])])).unwrap_err();
        assert_eq!(
            err.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["step `app` depends on unknown step `complie`"]
        );
    }

    #[test]
    fn self_dependency_is_a_cycle() {
        let err = Plan::new(&nodes(&[("a", &["a"])])).unwrap_err();
        assert_eq!(err, [cycle(&["a", "a"])]);
        assert_eq!(
            err[0].to_string(),
            "step `a` has circular dependency `a -> a`"
        );
    }

    #[test]
    fn cycle_message_has_whole_path() {
        let err = Plan::new(&nodes(&[("a", &["b"]), ("b", &["c"]), ("c", &["a"])])).unwrap_err();
        assert_eq!(
            err.iter().map(ToString::to_string).collect::<Vec<_>>(),
            ["step `a` has circular dependency `a -> b -> c -> a`"]
        );
    }

    #[test]
    fn every_distinct_cycle_and_unknown_dependency_is_reported() {
        let err = Plan::new(&nodes(&[
            ("a", &["b"]),
            ("b", &["a", "ghost"]),
            ("c", &["d"]),
            ("d", &["c", "e"]),
            ("e", &["d"]),
        ]))
        .unwrap_err();
        assert_eq!(
            err,
            [
                PlanError::UnknownDependency {
                    step: "b".into(),
                    dependency: "ghost".into()
                },
                cycle(&["a", "b", "a"]),
                cycle(&["c", "d", "c"]),
                cycle(&["d", "e", "d"]),
            ]
        );
    }

    #[test]
    fn duplicate_step_message() {
        let err = Plan::new(&nodes(&[("a", &[]), ("a", &[])])).unwrap_err();
        assert_eq!(err[0].to_string(), "step `a` is defined more than once");
    }

    #[test]
    fn long_chain_is_linear() {
        let n = 100_000;
        let spec: Vec<(String, Vec<String>)> = (0..n)
            .map(|i| {
                let deps = if i == 0 {
                    vec![format!("s{}", n - 1)]
                } else {
                    vec![format!("s{}", i - 1)]
                };
                (format!("s{i}"), deps)
            })
            .collect();
        let err = Plan::new(&spec).unwrap_err();
        match &err[..] {
            [PlanError::Cycle { path }] => assert_eq!(path.len(), n + 1),
            other => panic!("expected one cycle, got {other:?}"),
        }
    }
}
