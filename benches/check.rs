//! `habitus check` on a 2,000-step build.yml: the manifest loader, the plan
//! and the text rendering in-process, then the whole `habitus check`
//! process. The target for both is under 100 ms.
//!
//! Run with `cargo bench --bench check`. The build.yml is a seeded random
//! DAG (about four dependencies per step, every step sharing one
//! Dockerfile) written to a temporary directory.

// A benchmark reports on stdout and runs the binary it measures.
#![allow(clippy::disallowed_macros, clippy::disallowed_methods)]

use std::fmt::Write as _;
use std::hint::black_box;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use habitus::manifest::{load, EnvSource, LoadOptions};
use habitus::model::SecretKind;
use habitus::plan::Plan;
use habitus::render;
use rand::rngs::StdRng;
use rand::seq::{index, SliceRandom};
use rand::{Rng, SeedableRng};

const STEPS: usize = 2_000;
const DEPS: usize = 4;
const SEED: u64 = 0x4ab1_7005;
const TARGET: Duration = Duration::from_millis(100);
const IN_PROCESS_RUNS: usize = 30;
const PROCESS_RUNS: usize = 15;
const PLAN_RUNS: usize = 200;
const PLAN_TARGET: Duration = Duration::from_millis(1);

fn main() {
    let dir = tempfile::tempdir().expect("cannot create a temporary directory");
    let file = dir.path().join("build.yml");
    let (yaml, edges) = build_yml();
    std::fs::write(&file, yaml).expect("cannot write build.yml");
    std::fs::write(dir.path().join("Dockerfile"), "FROM busybox\nRUN true\n")
        .expect("cannot write the Dockerfile");

    println!(
        "habitus check: {STEPS} steps, {edges} dependencies (seed {SEED:#x}), target < {} ms",
        TARGET.as_millis()
    );
    in_process(&file, dir.path());
    process(&file, dir.path());
}

/// A random DAG: step `i` depends on up to [`DEPS`] distinct earlier steps,
/// and the steps are written in shuffled order. Returns the YAML and the
/// number of dependencies.
fn build_yml() -> (String, usize) {
    let mut rng = StdRng::seed_from_u64(SEED);
    let mut steps: Vec<(usize, Vec<usize>)> = (0..STEPS)
        .map(|i| {
            let wanted = rng.random_range(DEPS - 2..=DEPS + 2).min(i);
            (i, index::sample(&mut rng, i.max(1), wanted).into_vec())
        })
        .collect();
    steps.shuffle(&mut rng);

    let mut yaml = String::from("build:\n  version: 2016-03-14\n  steps:\n");
    let mut edges = 0;
    for (i, deps) in &steps {
        edges += deps.len();
        writeln!(yaml, "    step{i:04}:").unwrap();
        writeln!(yaml, "      name: bench/step{i:04}").unwrap();
        writeln!(yaml, "      dockerfile: Dockerfile").unwrap();
        if !deps.is_empty() {
            let names: Vec<String> = deps.iter().map(|d| format!("step{d:04}")).collect();
            writeln!(yaml, "      depends_on: [{}]", names.join(", ")).unwrap();
        }
    }
    (yaml, edges)
}

/// `manifest::load` + `Plan::new` + `render::text`, timed separately and
/// together.
fn in_process(file: &Path, workdir: &Path) {
    let options = LoadOptions {
        file,
        workdir,
        env: &EnvSource::Process,
        sec_providers: &SecretKind::ALL,
        untrusted: None,
    };
    let (mut load_t, mut plan_t, mut text_t, mut total_t) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for _ in 0..IN_PROCESS_RUNS {
        let start = Instant::now();
        let loaded = match load(&options) {
            Ok(loaded) => loaded,
            Err(diagnostics) => panic!("the generated build.yml does not load:\n{diagnostics}"),
        };
        let loaded_at = Instant::now();
        let nodes: Vec<(String, Vec<String>)> = loaded
            .manifest
            .steps
            .iter()
            .map(|s| (s.label.clone(), s.depends_on.clone()))
            .collect();
        let plan = Plan::new(&nodes).expect("the generated build.yml is a DAG");
        let planned_at = Instant::now();
        let text = render::text(&loaded.manifest, &plan);
        let done = Instant::now();
        black_box(text);
        load_t.push(loaded_at - start);
        plan_t.push(planned_at - loaded_at);
        text_t.push(done - planned_at);
        total_t.push(done - start);
    }
    // Plan::new alone, warm, on the same input.
    let loaded = load(&options).expect("the generated build.yml loads");
    let nodes: Vec<(String, Vec<String>)> = loaded
        .manifest
        .steps
        .iter()
        .map(|s| (s.label.clone(), s.depends_on.clone()))
        .collect();
    let mut warm: Vec<Duration> = (0..PLAN_RUNS)
        .map(|_| {
            let start = Instant::now();
            black_box(Plan::new(black_box(&nodes)).expect("a DAG"));
            start.elapsed()
        })
        .collect();

    println!("in-process ({IN_PROCESS_RUNS} runs):");
    report("  manifest::load", &mut load_t, None);
    report("  nodes + Plan::new", &mut plan_t, None);
    report("  render::text", &mut text_t, None);
    report("  total", &mut total_t, Some(TARGET));
    println!("Plan::new alone ({PLAN_RUNS} runs):");
    report("  Plan::new", &mut warm, Some(PLAN_TARGET));
}

/// The whole `habitus check -f build.yml -d DIR` process, as a user runs it.
fn process(file: &Path, workdir: &Path) {
    let run = || {
        let start = Instant::now();
        let output = Command::new(env!("CARGO_BIN_EXE_habitus"))
            .arg("check")
            .arg("-f")
            .arg(file)
            .arg("-d")
            .arg(workdir)
            .stdin(Stdio::null())
            .output()
            .expect("cannot run habitus");
        (start.elapsed(), output)
    };

    let (_, first) = run();
    if !first.status.success() {
        println!(
            "habitus check process: skipped, `habitus check` exited with {}:\n{}",
            first.status,
            String::from_utf8_lossy(&first.stderr).trim_end()
        );
        return;
    }
    let stdout = String::from_utf8_lossy(&first.stdout);
    if !(0..STEPS).all(|i| stdout.contains(&format!("step{i:04}"))) {
        println!("habitus check process: skipped, `habitus check` does not list the steps");
        return;
    }
    let mut times: Vec<Duration> = (0..PROCESS_RUNS).map(|_| run().0).collect();
    println!("habitus check process ({PROCESS_RUNS} runs):");
    report("  total", &mut times, Some(TARGET));
}

fn report(what: &str, times: &mut [Duration], target: Option<Duration>) {
    times.sort();
    let min = times[0];
    let median = times[times.len() / 2];
    let verdict = match target {
        Some(target) if median < target => "  ok",
        Some(_) => "  OVER TARGET",
        None => "",
    };
    println!(
        "{what:<20} min {:>8.3} ms   median {:>8.3} ms{verdict}",
        ms(min),
        ms(median)
    );
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}
