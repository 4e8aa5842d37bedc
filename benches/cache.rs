//! What `cache_from` of the images the last build pushed buys a CI runner
//! that starts with an empty daemon: the same 3-step chain built with and
//! without it, side by side, on the classic builder and on BuildKit (with
//! `cache_to: inline`).
//!
//! The chain `a → b → c` (each step `FROM` the one before) writes 30 MB
//! from /dev/urandom and sleeps 2 s (standing for a compile) in its one
//! `RUN`; `c` is the product, kept at the end. Per builder:
//!
//! 1. a seeding build pushes every step (`push: true` on each) to a private
//!    registry (`tests/common/registry.rs`: Debian's `docker-registry` on
//!    127.0.0.1, TLS, a login in `DOCKER_CONFIG`);
//! 2. `RUNS` times (default 3): wipe, time the build without `cache_from`;
//!    wipe, time the build with each step `cache_from` its own pushed image
//!    (habitus pulls it first: the pull is part of the time).
//!
//! A wipe removes every image the bench made locally (step images, the
//! cache images habitus pulled, untagged instruction images: all carry the
//! label of the bench's base image) except the base image, and all of the
//! daemon's build cache (`docker builder prune -af`): run the bench alone
//! on its daemon. It prints the medians, their ratio (with / without) and
//! each step's `cached`/`total` instructions from `--json` (the proof that
//! the cache was, or was not, used).
//!
//! With BuildKit the build without `cache_from` builds `a` and `b` as
//! stages of `c`'s build (one export, see `runner/fold.rs`); with a
//! different `cache_from` per step each step is a build of its own, with
//! its own export: the comparison includes that.
//!
//! Run with `cargo bench --bench cache` (needs a Docker daemon,
//! `/bin/busybox` from busybox-static, `docker-registry` and
//! `apache2-utils`); DOCKER_HOST picks the daemon. Everything it creates is
//! named `habitus-bench-cache-*` and removed at the end, also when it
//! panics. `cargo bench --bench cache -- legacy` (or `buildkit`) measures
//! one builder only.
#![allow(clippy::disallowed_macros)] // a test or bench program prints its own report

// The integration tests' harness, for its registry. Its `#[cfg(test)]`
// modules import what only their `#[test]` functions use, and a bench
// without the test harness compiles no `#[test]` function.
#[path = "../tests/common/mod.rs"]
#[allow(unused_imports)]
mod common;

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::registry::{self, Registry};

/// The base image every step starts from (imported, not built: no
/// instruction images of its own).
const BASE: &str = "habitus-bench-cache-base:latest";

/// The label of the base image, which every image built on it inherits:
/// what a wipe removes.
const LABEL: &str = "habitus-bench-cache";

/// The chain, in build order.
const STEPS: [&str; 3] = ["a", "b", "c"];

/// Megabytes each step's `RUN` writes.
const MEGABYTES: u32 = 30;

/// Seconds each step's `RUN` sleeps (its "compile").
const SLEEP: u32 = 2;

fn docker_quiet(args: &[&str]) -> bool {
    Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn docker_lines(args: &[&str]) -> Vec<String> {
    let out = Command::new("docker")
        .args(args)
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .output();
    match out {
        Ok(out) if out.status.success() => String::from_utf8_lossy(&out.stdout)
            .split_whitespace()
            .map(str::to_string)
            .collect(),
        _ => Vec::new(),
    }
}

/// Imports a busybox-only root filesystem as [`BASE`] (`docker import`:
/// one layer, nothing to pull), labelled [`LABEL`].
fn import_base() {
    let busybox =
        std::fs::read("/bin/busybox").expect("/bin/busybox (apt-get install busybox-static)");
    let list = Command::new("/bin/busybox")
        .arg("--list")
        .output()
        .expect("run /bin/busybox --list");
    let mut tar = tar::Builder::new(Vec::new());
    let mut dir = |path: &str, mode: u32| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Directory);
        h.set_mode(mode);
        h.set_size(0);
        tar.append_data(&mut h, path, std::io::empty()).unwrap();
    };
    dir("bin/", 0o755);
    dir("tmp/", 0o1777);
    dir("root/", 0o700);
    let mut h = tar::Header::new_gnu();
    h.set_mode(0o755);
    h.set_size(busybox.len() as u64);
    tar.append_data(&mut h, "bin/busybox", busybox.as_slice())
        .unwrap();
    for applet in String::from_utf8_lossy(&list.stdout).split_whitespace() {
        if applet == "busybox" {
            continue;
        }
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Symlink);
        h.set_mode(0o777);
        h.set_size(0);
        tar.append_link(&mut h, format!("bin/{applet}"), "busybox")
            .unwrap();
    }
    let rootfs = tar.into_inner().unwrap();

    let mut child = Command::new("docker")
        .args([
            "import",
            "--change",
            &format!("LABEL {LABEL}=1"),
            "--change",
            "CMD [\"/bin/sh\"]",
            "-",
            BASE,
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run docker import");
    use std::io::Write as _;
    child.stdin.take().unwrap().write_all(&rootfs).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "docker import {BASE} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Removes every image carrying [`LABEL`] but the base (tagged ones by
/// name first, then what is left by id, children before parents, a few
/// rounds), then all of the daemon's build cache. Returns how many
/// labelled images besides the base are left (0 unless removal failed).
fn wipe(keep_base: bool) -> usize {
    let base = base_id_quiet();
    let except = if keep_base { base.as_ref() } else { None };
    let label = format!("label={LABEL}=1");
    for _ in 0..5 {
        let tagged: Vec<String> = docker_lines(&[
            "images",
            "--filter",
            &label,
            "--format",
            "{{.Repository}}:{{.Tag}}",
        ])
        .into_iter()
        .filter(|r| !r.contains("<none>") && (r != BASE || !keep_base))
        .collect();
        if !tagged.is_empty() {
            let mut args = vec!["rmi", "-f"];
            args.extend(tagged.iter().map(String::as_str));
            docker_quiet(&args);
        }
        let ids = labelled(&label, except);
        if ids.is_empty() {
            break;
        }
        // Newest first: children before their parents.
        for id in &ids {
            docker_quiet(&["rmi", "-f", id]);
        }
    }
    docker_quiet(&["builder", "prune", "-af"]);
    labelled(&label, except).len()
}

/// The ids of the images (untagged ones too) with `label`, newest first,
/// each once, but `except`.
fn labelled(label: &str, except: Option<&String>) -> Vec<String> {
    let mut ids: Vec<String> = Vec::new();
    for id in docker_lines(&["images", "-aq", "--no-trunc", "--filter", label]) {
        if Some(&id) != except && !ids.contains(&id) {
            ids.push(id);
        }
    }
    ids
}

/// The id of [`BASE`], if it exists.
fn base_id_quiet() -> Option<String> {
    docker_lines(&["image", "inspect", "--format", "{{.Id}}", BASE])
        .into_iter()
        .next()
}

/// Removes everything the bench made locally (the base image too) when
/// dropped, also on a panic; dropped before the [`Registry`], which then
/// stops.
struct Guard;

impl Drop for Guard {
    fn drop(&mut self) {
        wipe(false);
    }
}

#[derive(Clone, Copy, PartialEq)]
enum Builder {
    Legacy,
    BuildKit,
}

impl Builder {
    fn name(self) -> &'static str {
        match self {
            Builder::Legacy => "legacy",
            Builder::BuildKit => "buildkit",
        }
    }
}

/// How a build.yml of the chain treats the registry.
#[derive(Clone, Copy)]
enum Variant {
    /// `push: true` on every step.
    Seed,
    /// Neither push nor `cache_from`.
    Plain,
    /// Each step `cache_from` its own pushed image.
    CacheFrom,
}

/// The pushed name of `step` for `builder`.
fn image(reg: &Registry, builder: Builder, step: &str) -> String {
    format!(
        "{}/habitus-bench-cache-{step}:{}",
        reg.host(),
        builder.name()
    )
}

fn build_yml(reg: &Registry, builder: Builder, variant: Variant) -> String {
    let mut yml = String::from("build:\n  version: 2016-03-14\n  steps:\n");
    for (i, step) in STEPS.iter().enumerate() {
        let name = image(reg, builder, step);
        yml.push_str(&format!(
            "    {step}:\n      name: {name}\n      dockerfile: Dockerfile.{step}\n"
        ));
        if i > 0 {
            yml.push_str(&format!("      depends_on: [{}]\n", STEPS[i - 1]));
        }
        if builder == Builder::BuildKit {
            yml.push_str("      cache_to: inline\n");
        }
        match variant {
            Variant::Seed => yml.push_str("      push: true\n"),
            Variant::Plain => {}
            Variant::CacheFrom => yml.push_str(&format!("      cache_from: [{name}]\n")),
        }
    }
    yml
}

/// A work directory with the chain's Dockerfiles and the three build.ymls
/// (`seed.yml`, `plain.yml`, `cache-from.yml`).
fn project(reg: &Registry, builder: Builder) -> tempfile::TempDir {
    let dir = tempfile::Builder::new()
        .prefix("habitus-bench-cache-")
        .tempdir()
        .unwrap();
    let write = |name: &str, text: &str| std::fs::write(dir.path().join(name), text).unwrap();
    for (i, step) in STEPS.iter().enumerate() {
        let from = if i == 0 {
            BASE.to_string()
        } else {
            image(reg, builder, STEPS[i - 1])
        };
        write(
            &format!("Dockerfile.{step}"),
            &format!(
                "FROM {from}\nRUN dd if=/dev/urandom of=/{step}.bin bs=1M count={MEGABYTES} 2>/dev/null && sleep {SLEEP}\n"
            ),
        );
    }
    write("seed.yml", &build_yml(reg, builder, Variant::Seed));
    write("plain.yml", &build_yml(reg, builder, Variant::Plain));
    write(
        "cache-from.yml",
        &build_yml(reg, builder, Variant::CacheFrom),
    );
    dir
}

/// One step's `step_finished`.
struct StepResult {
    step: String,
    cached: u64,
    total: u64,
    /// Built as a stage of another step's BuildKit build.
    folded: bool,
}

impl std::fmt::Display for StepResult {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.folded {
            write!(f, "{} stage", self.step)
        } else {
            write!(f, "{} {}/{}", self.step, self.cached, self.total)
        }
    }
}

/// A timed build.
struct Run {
    elapsed: Duration,
    steps: Vec<StepResult>,
    /// `name digest` of every `image_pushed`.
    pushed: Vec<String>,
}

/// Runs habitus on `yml` in `dir` with `--json` and times it.
fn habitus(reg: &Registry, dir: &Path, yml: &str, builder: Builder) -> Run {
    let started = Instant::now();
    let out = Command::new(env!("CARGO_BIN_EXE_habitus"))
        .arg("-d")
        .arg(dir)
        .arg("-f")
        .arg(dir.join(yml))
        .args(["--builder", builder.name(), "--json", "--suppress"])
        .env("DOCKER_CONFIG", reg.docker_config())
        .stdin(Stdio::null())
        .output()
        .expect("run habitus");
    let elapsed = started.elapsed();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "habitus -f {yml} --builder {} failed ({}):\n{}{}",
        builder.name(),
        out.status,
        String::from_utf8_lossy(&out.stderr),
        reg.log_tail()
    );
    let mut steps = Vec::new();
    let mut pushed = Vec::new();
    for line in stdout.lines() {
        let Ok(event) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        match event["event"].as_str() {
            Some("step_finished") => steps.push(StepResult {
                step: event["step"].as_str().unwrap_or("?").to_string(),
                cached: event["cached"].as_u64().unwrap_or(0),
                total: event["total"].as_u64().unwrap_or(0),
                folded: event["image"]
                    .as_str()
                    .is_some_and(|i| i.starts_with("stage of")),
            }),
            Some("image_pushed") => pushed.push(format!(
                "{} {}",
                event["name"].as_str().unwrap_or("?"),
                event["digest"].as_str().unwrap_or("?")
            )),
            _ => {}
        }
    }
    steps.sort_by(|x, y| x.step.cmp(&y.step));
    Run {
        elapsed,
        steps,
        pushed,
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2
    }
}

fn cached_text(run: &Run) -> String {
    run.steps
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

/// Whether the build took each step's `RUN` from the cache (`with`), or
/// none (`!with`: the wipe left nothing to take it from).
fn cache_as_expected(run: &Run, with: bool) -> bool {
    let built: Vec<&StepResult> = run.steps.iter().filter(|s| !s.folded).collect();
    !built.is_empty()
        && built
            .iter()
            .all(|s| if with { s.cached >= 1 } else { s.cached == 0 })
}

/// A wipe, asserting it left nothing of the bench's but the base.
fn wipe_all() {
    let left = wipe(true);
    assert_eq!(left, 0, "the wipe left {left} image(s) labelled {LABEL}");
}

struct Row {
    builder: Builder,
    without: Duration,
    with: Duration,
    without_cached: String,
    with_cached: String,
    /// Some build with `cache_from` ran a `RUN` again.
    missed: bool,
}

fn measure(reg: &Registry, builder: Builder, runs: usize) -> Row {
    let dir = project(reg, builder);
    let seed = habitus(reg, dir.path(), "seed.yml", builder);
    println!(
        "{}: seeding build {:.2}s, pushed:",
        builder.name(),
        seed.elapsed.as_secs_f64()
    );
    for pushed in &seed.pushed {
        println!("    {pushed}");
    }
    assert_eq!(
        seed.pushed.len(),
        STEPS.len(),
        "the seeding build pushed {:?}",
        seed.pushed
    );

    let (mut without, mut with) = (Vec::new(), Vec::new());
    let (mut without_cached, mut with_cached) = (String::new(), String::new());
    let mut missed = false;
    for run in 1..=runs {
        wipe_all();
        let plain = habitus(reg, dir.path(), "plain.yml", builder);
        wipe_all();
        let cached = habitus(reg, dir.path(), "cache-from.yml", builder);
        println!(
            "{} run {run}/{runs}: without cache_from {:>6.2}s [{}]  with cache_from {:>6.2}s [{}]",
            builder.name(),
            plain.elapsed.as_secs_f64(),
            cached_text(&plain),
            cached.elapsed.as_secs_f64(),
            cached_text(&cached),
        );
        assert!(
            cache_as_expected(&plain, false),
            "the build without cache_from took instructions from a cache: the wipe left one"
        );
        if !cache_as_expected(&cached, true) {
            println!("  MISSED: a step with cache_from did not take its RUN from the pushed image");
            missed = true;
        }
        without.push(plain.elapsed);
        with.push(cached.elapsed);
        without_cached = cached_text(&plain);
        with_cached = cached_text(&cached);
    }
    wipe_all();
    Row {
        builder,
        without: median(without),
        with: median(with),
        without_cached,
        with_cached,
        missed,
    }
}

fn main() {
    // `cargo bench` passes `--bench`; a filter names the builders to run.
    let filter: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with('-'))
        .collect();
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3)
        .max(1);
    common::docker_available();
    let version = common::docker(&[
        "version",
        "--format",
        "Docker {{.Server.Version}} (API {{.Server.APIVersion}})",
    ]);
    let reg = registry::start();
    let _guard = Guard;
    import_base();
    println!(
        "cache_from on an emptied daemon: {}, chain a → b → c ({MEGABYTES} MB + sleep {SLEEP}s per step), medians of {runs}",
        version.trim()
    );
    println!("registry {}", reg.host());

    let mut rows = Vec::new();
    for builder in [Builder::Legacy, Builder::BuildKit] {
        if filter.is_empty() || filter.iter().any(|f| builder.name().contains(f.as_str())) {
            rows.push(measure(&reg, builder, runs));
        }
    }

    println!();
    println!(
        "{:<9} {:>20} {:>17} {:>7}   cached/total per step (without | with)",
        "builder", "without cache_from", "with cache_from", "ratio"
    );
    for row in &rows {
        println!(
            "{:<9} {:>19.2}s {:>16.2}s {:>6.2}x   {} | {}",
            row.builder.name(),
            row.without.as_secs_f64(),
            row.with.as_secs_f64(),
            row.with.as_secs_f64() / row.without.as_secs_f64(),
            row.without_cached,
            row.with_cached
        );
    }
    if rows.iter().any(|r| r.missed) {
        println!("MISSED: some build with cache_from ran a RUN again (see the runs above)");
    }
}
