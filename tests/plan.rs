//! Property tests of the DAG on random graphs, and the exact messages for
//! unknown dependencies and cycles.

use std::collections::{BTreeSet, HashMap};

use habitus::plan::{Plan, PlanError};
use proptest::collection::vec;
use proptest::prelude::{any, prop_assert, prop_assert_eq, proptest, Just, ProptestConfig};
use proptest::strategy::Strategy;

/// A random DAG, shuffled: `(input order, labels, edges)`. Node `k` in
/// topological numbering is written at some position of the input and
/// carries a label unrelated to `k`; an edge `(a, b)` with `a < b` means `b`
/// depends on `a`, and repeated edges are kept (they must be merged).
#[derive(Debug, Clone)]
struct Dag {
    input: Vec<usize>,
    labels: Vec<usize>,
    edges: Vec<(usize, usize)>,
}

impl Dag {
    fn label(&self, k: usize) -> String {
        format!("s{}", self.labels[k])
    }

    /// `(label, depends_on)` in input order.
    fn nodes(&self) -> Vec<(String, Vec<String>)> {
        self.input
            .iter()
            .map(|&k| {
                let deps = self
                    .edges
                    .iter()
                    .filter(|&&(_, b)| b == k)
                    .map(|&(a, _)| self.label(a))
                    .collect();
                (self.label(k), deps)
            })
            .collect()
    }
}

fn dag() -> impl Strategy<Value = Dag> {
    (1..40usize).prop_flat_map(|n| {
        let ids: Vec<usize> = (0..n).collect();
        (
            Just(ids.clone()).prop_shuffle(),
            Just(ids).prop_shuffle(),
            vec((0..n, 0..n), 0..n * 3),
        )
            .prop_map(|(input, labels, pairs)| Dag {
                input,
                labels,
                edges: pairs
                    .into_iter()
                    .filter(|(a, b)| a != b)
                    .map(|(a, b)| (a.min(b), a.max(b)))
                    .collect(),
            })
    })
}

/// A random DAG plus a chain `v0 <- v1 <- … <- vk` of forward edges closed
/// by `v0` depending on `vk`: at least one cycle, possibly a self-loop.
fn cyclic() -> impl Strategy<Value = Dag> {
    (dag(), any::<u64>(), 1..6usize).prop_map(|(mut dag, seed, len)| {
        let n = dag.input.len();
        let mut picked: BTreeSet<usize> = BTreeSet::new();
        let mut x = seed;
        while picked.len() < len.min(n) {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            picked.insert((x >> 33) as usize % n);
        }
        let chain: Vec<usize> = picked.into_iter().collect();
        for pair in chain.windows(2) {
            dag.edges.push((pair[0], pair[1]));
        }
        dag.edges.push((chain[chain.len() - 1], chain[0]));
        dag
    })
}

/// The reference order: repeatedly the first step in input order whose
/// dependencies are all placed.
fn reference_order(nodes: &[(String, Vec<String>)]) -> Vec<String> {
    let mut placed: BTreeSet<&str> = BTreeSet::new();
    let mut order = Vec::new();
    while order.len() < nodes.len() {
        let (label, _) = nodes
            .iter()
            .find(|(label, deps)| {
                !placed.contains(label.as_str()) && deps.iter().all(|d| placed.contains(d.as_str()))
            })
            .expect("a DAG always has a ready step");
        placed.insert(label);
        order.push(label.clone());
    }
    order
}

fn labels(plan: &Plan, indices: &[usize]) -> Vec<String> {
    indices.iter().map(|&i| plan.label(i).to_owned()).collect()
}

fn messages(errors: &[PlanError]) -> Vec<String> {
    errors.iter().map(ToString::to_string).collect()
}

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

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn random_dags_plan(dag in dag()) {
        let nodes = dag.nodes();
        let plan = Plan::new(&nodes).expect("a DAG plans");
        let n = nodes.len();
        prop_assert_eq!(plan.len(), n);
        for (i, (label, _)) in nodes.iter().enumerate() {
            prop_assert_eq!(plan.label(i), label.as_str());
            prop_assert_eq!(plan.index_of(label), Some(i));
        }

        // Dependencies: exactly the declared ones, once each.
        for (i, (_, declared)) in nodes.iter().enumerate() {
            let got = labels(&plan, plan.deps(i));
            let unique: BTreeSet<&String> = got.iter().collect();
            prop_assert_eq!(unique.len(), got.len(), "repeated dependency");
            prop_assert_eq!(unique, declared.iter().collect::<BTreeSet<_>>());
        }

        // Order: every step once, after all its dependencies, ties by input.
        let order = plan.order();
        prop_assert_eq!(order.iter().copied().collect::<BTreeSet<_>>().len(), n);
        prop_assert_eq!(order.len(), n);
        let mut position = vec![0; n];
        for (p, &i) in order.iter().enumerate() {
            position[i] = p;
        }
        for i in 0..n {
            for &d in plan.deps(i) {
                prop_assert!(position[d] < position[i]);
            }
        }
        prop_assert_eq!(labels(&plan, order), reference_order(&nodes));

        // Levels: 0 without dependencies, else one more than the deepest.
        let mut seen = vec![0; n];
        for (l, level) in plan.levels().iter().enumerate() {
            prop_assert!(!level.is_empty());
            prop_assert!(level.windows(2).all(|w| w[0] < w[1]), "levels in input order");
            for &i in level {
                seen[i] += 1;
                prop_assert_eq!(plan.level(i), l);
                let expected = plan.deps(i).iter().map(|&d| plan.level(d) + 1).max().unwrap_or(0);
                prop_assert_eq!(l, expected);
            }
        }
        prop_assert!(seen.iter().all(|&c| c == 1), "every step in exactly one level");

        // Dependents mirror dependencies; leaves are the steps nobody needs.
        for i in 0..n {
            for &j in plan.dependents(i) {
                prop_assert!(plan.deps(j).contains(&i));
            }
            for &d in plan.deps(i) {
                prop_assert!(plan.dependents(d).contains(&i));
            }
        }
        let needed: BTreeSet<&str> = nodes.iter().flat_map(|(_, deps)| deps.iter().map(String::as_str)).collect();
        let leaves: Vec<String> = nodes
            .iter()
            .map(|(label, _)| label.clone())
            .filter(|label| !needed.contains(label.as_str()))
            .collect();
        prop_assert_eq!(labels(&plan, plan.leaves()), leaves);
    }

    #[test]
    fn injected_cycles_are_reported_as_real_paths(dag in cyclic()) {
        let nodes = dag.nodes();
        let edges: HashMap<&str, BTreeSet<&str>> = nodes
            .iter()
            .map(|(label, deps)| (label.as_str(), deps.iter().map(String::as_str).collect()))
            .collect();
        let errors = Plan::new(&nodes).expect_err("a cycle fails");
        prop_assert!(!errors.is_empty());
        let mut distinct = BTreeSet::new();
        for error in &errors {
            let PlanError::Cycle { path } = error else {
                panic!("only cycles expected, got {error}");
            };
            prop_assert!(path.len() >= 2);
            prop_assert_eq!(path.first(), path.last());
            for pair in path.windows(2) {
                prop_assert!(
                    edges[pair[0].as_str()].contains(pair[1].as_str()),
                    "`{}` does not depend on `{}` in {:?}", pair[0], pair[1], path
                );
            }
            let inner: BTreeSet<&String> = path[1..].iter().collect();
            prop_assert_eq!(inner.len(), path.len() - 1, "a cycle visits a step once");
            prop_assert_eq!(
                error.to_string(),
                format!("step `{}` has circular dependency `{}`", path[0], path.join(" -> "))
            );
            prop_assert!(distinct.insert(path.clone()), "cycle reported twice");
        }
    }
}

#[test]
fn unknown_dependency_names_step_and_dependency() {
    let errors = Plan::new(&nodes(&[("compile", &[]), ("app", &["complie"])])).unwrap_err();
    assert_eq!(
        messages(&errors),
        ["step `app` depends on unknown step `complie`"]
    );
}

#[test]
fn every_unknown_dependency_is_reported_in_file_order() {
    let errors = Plan::new(&nodes(&[
        ("b", &["x", "a", "y"]),
        ("a", &["z"]),
        ("c", &["x"]),
    ]))
    .unwrap_err();
    assert_eq!(
        messages(&errors),
        [
            "step `b` depends on unknown step `x`",
            "step `b` depends on unknown step `y`",
            "step `a` depends on unknown step `z`",
            "step `c` depends on unknown step `x`",
        ]
    );
}

#[test]
fn unknown_dependencies_come_before_cycles() {
    let errors = Plan::new(&nodes(&[
        ("a", &["b"]),
        ("b", &["c", "missing"]),
        ("c", &["a"]),
    ]))
    .unwrap_err();
    assert_eq!(
        messages(&errors),
        [
            "step `b` depends on unknown step `missing`",
            "step `a` has circular dependency `a -> b -> c -> a`",
        ]
    );
}

#[test]
fn two_separate_cycles_are_both_reported() {
    let errors = Plan::new(&nodes(&[
        ("base", &[]),
        ("x", &["y", "base"]),
        ("y", &["x"]),
        ("p", &["p"]),
    ]))
    .unwrap_err();
    assert_eq!(
        messages(&errors),
        [
            "step `x` has circular dependency `x -> y -> x`",
            "step `p` has circular dependency `p -> p`",
        ]
    );
}

#[test]
fn deep_chain_plans_in_linear_time() {
    // A 50,000-step chain written last step first. Looking a step up on the
    // stack by scanning it would cost over a billion comparisons here.
    let n = 50_000;
    let nodes: Vec<(String, Vec<String>)> = (0..n)
        .rev()
        .map(|i: usize| {
            let deps = i
                .checked_sub(1)
                .map(|d| format!("s{d}"))
                .into_iter()
                .collect();
            (format!("s{i}"), deps)
        })
        .collect();
    let plan = Plan::new(&nodes).unwrap();
    assert_eq!(plan.levels().len(), n);
    assert_eq!(labels(&plan, &plan.order()[..3]), ["s0", "s1", "s2"]);
    assert_eq!(labels(&plan, plan.leaves()), [format!("s{}", n - 1)]);
}

/// Two steps where `app` builds `FROM` the image of `base` without
/// `depends_on`, and whatever else `app`'s Dockerfile says.
const UNSAID_YML: &str = "\
build:
  version: 2016-03-14
  steps:
    app:
      name: hb/unsaid-app
      dockerfile: Dockerfile.app
    base:
      name: hb/unsaid-base
      dockerfile: Dockerfile.base
";

const UNSAID_NOTICE: &str = "warning: step `app` uses the image of step `base` (Dockerfile line 1): built after it; add `depends_on: [base]` to say so";

fn unsaid(app: &str) -> crate::common::Habitus {
    crate::common::Habitus::new()
        .file("build.yml", UNSAID_YML)
        .file("Dockerfile.base", "FROM scratch\n")
        .file("Dockerfile.app", app)
}

#[test]
fn a_step_using_another_steps_image_is_planned_after_it_and_told_once() {
    let h = unsaid("FROM hb/unsaid-base\nCOPY --from=hb/unsaid-base:latest / /\n");
    let out = h.arg("check").run();
    out.assert_success();
    assert_eq!(
        out.stderr.matches(UNSAID_NOTICE).count(),
        1,
        "{}",
        out.stderr
    );
    assert!(out.stdout.contains("level 1\n  app "), "{}", out.stdout);
    assert!(out.stdout.contains("<- base"), "{}", out.stdout);

    let out = unsaid("FROM hb/unsaid-base\n")
        .args(["plan", "--format", "json"])
        .run();
    out.assert_success();
    assert_eq!(
        out.stderr.matches(UNSAID_NOTICE).count(),
        1,
        "{}",
        out.stderr
    );
    let plan: serde_json::Value = serde_json::from_str(&out.stdout).unwrap();
    assert_eq!(plan["order"], serde_json::json!(["base", "app"]), "{plan}");
}

#[test]
fn copy_from_and_mount_from_are_uses_of_an_image_too() {
    let out = unsaid("FROM scratch\n\n\nCOPY --from=hb/unsaid-base /a /a\n")
        .arg("check")
        .run();
    out.assert_success();
    assert!(
        out.stderr
            .contains("step `app` uses the image of step `base` (Dockerfile line 4)"),
        "{}",
        out.stderr
    );
    let out = unsaid("FROM scratch\nRUN --mount=type=bind,from=hb/unsaid-base,target=/b true\n")
        .arg("check")
        .run();
    out.assert_success();
    assert!(
        out.stderr
            .contains("step `app` uses the image of step `base` (Dockerfile line 2)"),
        "{}",
        out.stderr
    );
}

#[test]
fn a_use_that_depends_on_already_orders_says_nothing() {
    let yml = UNSAID_YML.replace(
        "dockerfile: Dockerfile.app\n",
        "dockerfile: Dockerfile.app\n      depends_on: [mid]\n    mid:\n      name: hb/unsaid-mid\n      dockerfile: Dockerfile.mid\n      depends_on: [base]\n",
    );
    let out = unsaid("FROM hb/unsaid-base\n")
        .file("build.yml", yml)
        .file("Dockerfile.mid", "FROM hb/unsaid-base\n")
        .arg("check")
        .run();
    out.assert_success();
    assert!(!out.stderr.contains("uses the image"), "{}", out.stderr);
}

#[test]
fn a_stage_index_or_the_steps_own_name_is_no_use_of_another_step() {
    let out = unsaid(
        "FROM scratch AS unsaid\nFROM hb/unsaid-app\nCOPY --from=0 / /\nCOPY --from=unsaid / /\n",
    )
    .arg("check")
    .run();
    out.assert_success();
    assert!(!out.stderr.contains("uses the image"), "{}", out.stderr);
}

#[test]
fn check_strict_refuses_a_use_without_depends_on() {
    let out = unsaid("FROM hb/unsaid-base\n")
        .args(["check", "--strict"])
        .run();
    out.assert_code(1);
    assert!(
        out.stderr.contains(
            "build.yml:4: step `app`: the Dockerfile uses the image of step `base` (line 1) but `depends_on` does not name it\n  help: add `depends_on: [base]`"
        ),
        "{}",
        out.stderr
    );
}

#[test]
fn a_use_that_closes_a_loop_is_an_error_naming_it() {
    let yml = UNSAID_YML.replace(
        "dockerfile: Dockerfile.base\n",
        "dockerfile: Dockerfile.base\n      depends_on: [app]\n",
    );
    let out = unsaid("# the base image\nFROM hb/unsaid-base\n")
        .file("build.yml", yml)
        .arg("check")
        .run();
    out.assert_code(1);
    assert!(
        out.stderr.contains(
            "build.yml:6:19: step `app`: circular dependency `app -> base -> app`\n  help: step `app` uses the image of step `base` (Dockerfile line 2): remove that use or one of these `depends_on` entries"
        ),
        "{}",
        out.stderr
    );
}

#[test]
fn is_after_follows_dependencies_through_other_steps() {
    let nodes = nodes(&[("a", &[]), ("b", &["a"]), ("c", &["b"]), ("d", &[])]);
    let plan = Plan::new(&nodes).unwrap();
    let at = |label: &str| plan.index_of(label).unwrap();
    assert!(plan.is_after(at("c"), at("a")));
    assert!(plan.is_after(at("b"), at("a")));
    assert!(!plan.is_after(at("a"), at("c")));
    assert!(!plan.is_after(at("d"), at("a")));
    assert!(!plan.is_after(at("a"), at("a")));
}
