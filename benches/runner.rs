//! Wall time of habitus builds against the same `docker build` calls run
//! one after another by the docker CLI, side by side in one run, on the
//! classic builder:
//!
//! - a chain of 3 trivial steps with `--no-cache`, and fully cached;
//! - a diamond of 4 trivial steps whose middle steps each take ~2 s;
//! - the chain with `--no-cache` again, habitus building with
//!   `--builder buildkit` (keeping only the product, its default) against
//!   the same classic `docker build` calls.
//!
//! Run with `cargo bench --bench runner` (needs a Docker daemon and
//! `/bin/busybox`, from Debian's busybox-static). `RUNS=N` sets the number
//! of measured runs (default 5). Everything it creates is named
//! `habitus-bench-*` and removed at the end.
//!
//! `cargo bench --bench runner -- fanout` measures instead N independent
//! trivial uncached steps (`WIDTHS`, default `4 16 64`) built by habitus
//! with several `--jobs` (`JOBS`, default `2 4 8 16 32` and the default)
//! against the same `docker build`s run by `xargs -P` (`PARALLEL`, default
//! `4 8 16`): how many steps at once suit work the daemon does.
//!
//! `cargo bench --bench runner -- concurrent` starts `BUILDS` (default 50)
//! habitus secrets builds at once on one daemon, each one step that
//! fetches its secret over TLS, and reports the wall time and failures:
//! every build gets its own network from habitus's pool.
#![allow(clippy::disallowed_macros)] // a test or bench program prints its own report

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BASE: &str = "habitus-bench-base:latest";

fn docker(args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .env("DOCKER_BUILDKIT", "0")
        .stdin(Stdio::null())
        .output()
        .expect("run docker");
    assert!(
        out.status.success(),
        "docker {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn docker_quiet(args: &[&str]) {
    let _ = Command::new("docker")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}

/// A busybox-only base image, built from scratch (nothing can be pulled).
fn build_base() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("bin")).unwrap();
    std::fs::copy("/bin/busybox", dir.path().join("bin/busybox"))
        .expect("/bin/busybox (apt-get install busybox-static)");
    std::fs::write(
        dir.path().join("Dockerfile"),
        "FROM scratch\nCOPY bin/busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n",
    )
    .unwrap();
    docker(&["build", "-q", "-t", BASE, dir.path().to_str().unwrap()]);
}

struct Project {
    dir: tempfile::TempDir,
    /// `(tag, dockerfile)` in an order the docker CLI can build them.
    steps: Vec<(String, String)>,
}

fn write(dir: &Path, name: &str, text: &str) {
    std::fs::write(dir.join(name), text).unwrap();
}

fn chain() -> Project {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        d,
        "build.yml",
        "build:
  version: 2016-03-14
  steps:
    one:
      name: habitus-bench-chain-one
      dockerfile: Dockerfile.one
    two:
      name: habitus-bench-chain-two
      dockerfile: Dockerfile.two
      depends_on: [one]
    three:
      name: habitus-bench-chain-three
      dockerfile: Dockerfile.three
      depends_on: [two]
",
    );
    write(
        d,
        "Dockerfile.one",
        &format!("FROM {BASE}\nRUN echo 1 > /one\n"),
    );
    write(
        d,
        "Dockerfile.two",
        "FROM habitus-bench-chain-one\nRUN echo 2 > /two\n",
    );
    write(
        d,
        "Dockerfile.three",
        "FROM habitus-bench-chain-two\nRUN echo 3 > /three\n",
    );
    Project {
        dir,
        steps: vec![
            ("habitus-bench-chain-one".into(), "Dockerfile.one".into()),
            ("habitus-bench-chain-two".into(), "Dockerfile.two".into()),
            (
                "habitus-bench-chain-three".into(),
                "Dockerfile.three".into(),
            ),
        ],
    }
}

fn diamond() -> Project {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    write(
        d,
        "build.yml",
        "build:
  version: 2016-03-14
  steps:
    a:
      name: habitus-bench-dia-a
      dockerfile: Dockerfile.a
    b:
      name: habitus-bench-dia-b
      dockerfile: Dockerfile.b
      depends_on: [a]
    c:
      name: habitus-bench-dia-c
      dockerfile: Dockerfile.c
      depends_on: [a]
    d:
      name: habitus-bench-dia-d
      dockerfile: Dockerfile.d
      depends_on: [b, c]
",
    );
    write(
        d,
        "Dockerfile.a",
        &format!("FROM {BASE}\nRUN echo a > /a\n"),
    );
    write(
        d,
        "Dockerfile.b",
        "FROM habitus-bench-dia-a\nRUN sleep 2 && echo b > /b\n",
    );
    write(
        d,
        "Dockerfile.c",
        "FROM habitus-bench-dia-a\nRUN sleep 2 && echo c > /c\n",
    );
    write(
        d,
        "Dockerfile.d",
        "FROM habitus-bench-dia-b\nCOPY --from=habitus-bench-dia-c /c /c\n",
    );
    Project {
        dir,
        steps: vec![
            ("habitus-bench-dia-a".into(), "Dockerfile.a".into()),
            ("habitus-bench-dia-b".into(), "Dockerfile.b".into()),
            ("habitus-bench-dia-c".into(), "Dockerfile.c".into()),
            ("habitus-bench-dia-d".into(), "Dockerfile.d".into()),
        ],
    }
}

fn time_docker_cli(p: &Project, no_cache: bool) -> Duration {
    let start = Instant::now();
    for (tag, dockerfile) in &p.steps {
        let mut args = vec!["build", "-q", "-t", tag, "-f", dockerfile];
        if no_cache {
            args.push("--no-cache");
        }
        args.push(".");
        let status = Command::new("docker")
            .args(&args)
            .current_dir(p.dir.path())
            .env("DOCKER_BUILDKIT", "0")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .unwrap();
        assert!(status.success(), "docker build {tag} failed");
    }
    start.elapsed()
}

fn time_habitus(p: &Project, no_cache: bool, extra: &[&str]) -> Duration {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_habitus"));
    cmd.arg("-d")
        .arg(p.dir.path())
        .args(["--suppress", "--level", "warning"])
        .args(extra);
    if no_cache {
        cmd.arg("--no-cache");
    }
    let start = Instant::now();
    let out = cmd.stdin(Stdio::null()).output().unwrap();
    let elapsed = start.elapsed();
    assert!(
        out.status.success(),
        "habitus failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    elapsed
}

fn remove_images(p: &Project) {
    let mut args = vec!["rmi", "-f"];
    args.extend(p.steps.iter().rev().map(|(t, _)| t.as_str()));
    docker_quiet(&args);
    // Untagged images left by rebuilds of the same tags.
    let dangling = docker(&[
        "images",
        "-q",
        "--filter",
        "dangling=true",
        "--filter",
        &format!("since={BASE}"),
    ]);
    for id in dangling.split_whitespace() {
        docker_quiet(&["rmi", "-f", id]);
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// Alternates docker CLI and habitus runs so that both see the same
/// machine state; returns the medians.
fn compare(name: &str, p: &Project, no_cache: bool, runs: usize, target: f64, extra: &[&str]) {
    let (mut cli, mut hab) = (Vec::new(), Vec::new());
    // One warm-up of each, not measured (and it fills the cache for the
    // cached scenario).
    time_docker_cli(p, no_cache);
    time_habitus(p, no_cache, extra);
    for _ in 0..runs {
        if no_cache {
            remove_images(p);
        }
        cli.push(time_docker_cli(p, no_cache));
        if no_cache {
            remove_images(p);
        }
        hab.push(time_habitus(p, no_cache, extra));
    }
    let (c, h) = (median(cli), median(hab));
    let ratio = h.as_secs_f64() / c.as_secs_f64();
    println!(
        "{name:<34} docker CLI {:>6.2}s  habitus {:>6.2}s  ratio {ratio:.2}x  (target <= {target:.2}x) {}",
        c.as_secs_f64(),
        h.as_secs_f64(),
        if ratio <= target { "ok" } else { "MISSED" }
    );
}

/// `n` independent trivial steps.
fn fanout(n: usize) -> Project {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut yml = String::from("build:\n  version: 2016-03-14\n  steps:\n");
    let mut steps = Vec::new();
    for i in 0..n {
        let tag = format!("habitus-bench-fan-{i}");
        let dockerfile = format!("Dockerfile.{i}");
        yml.push_str(&format!(
            "    s{i}:\n      name: {tag}\n      dockerfile: {dockerfile}\n"
        ));
        write(d, &dockerfile, &format!("FROM {BASE}\nRUN echo {i} > /f\n"));
        steps.push((tag, dockerfile));
    }
    write(d, "build.yml", &yml);
    Project { dir, steps }
}

/// The steps' `docker build --no-cache`s run by `xargs -P parallel`.
fn time_xargs(p: &Project, parallel: usize) -> Duration {
    let input: String = p
        .steps
        .iter()
        .map(|(tag, dockerfile)| format!("{tag} {dockerfile}\n"))
        .collect();
    let start = Instant::now();
    let mut child = Command::new("xargs")
        .args(["-P", &parallel.to_string(), "-n", "2", "sh", "-c"])
        .arg("docker build -q --no-cache -t \"$0\" -f \"$1\" . >/dev/null")
        .current_dir(p.dir.path())
        .env("DOCKER_BUILDKIT", "0")
        .stdin(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    use std::io::Write as _;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let status = child.wait().unwrap();
    let elapsed = start.elapsed();
    assert!(
        status.success(),
        "xargs -P {parallel}: a docker build failed"
    );
    elapsed
}

fn fanout_main(runs: usize) {
    let list = |name: &str, default: &str| -> Vec<usize> {
        std::env::var(name)
            .unwrap_or_else(|_| default.to_string())
            .split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect()
    };
    let widths = list("WIDTHS", "4 16 64");
    let jobs = list("JOBS", "2 4 8 16 32");
    let parallel = list("PARALLEL", "4 8 16");
    build_base();
    println!(
        "fan-out: independent trivial steps, --no-cache, medians of {runs} run(s), alternating"
    );
    for width in widths {
        let p = fanout(width);
        // Warm-up: the base image's layers in the page cache.
        time_habitus(&p, true, &[]);
        remove_images(&p);
        let mut rows: Vec<(String, Vec<Duration>)> = Vec::new();
        for j in &jobs {
            rows.push((format!("habitus --jobs {j}"), Vec::new()));
        }
        rows.push(("habitus (default --jobs)".into(), Vec::new()));
        for x in &parallel {
            rows.push((format!("xargs -P {x} docker build"), Vec::new()));
        }
        for _ in 0..runs {
            let mut r = 0;
            for j in &jobs {
                rows[r]
                    .1
                    .push(time_habitus(&p, true, &["--jobs", &j.to_string()]));
                remove_images(&p);
                r += 1;
            }
            rows[r].1.push(time_habitus(&p, true, &[]));
            remove_images(&p);
            r += 1;
            for x in &parallel {
                rows[r].1.push(time_xargs(&p, *x));
                remove_images(&p);
                r += 1;
            }
        }
        let medians: Vec<(String, Duration)> = rows
            .into_iter()
            .map(|(name, v)| (name, median(v)))
            .collect();
        let best_xargs = medians
            .iter()
            .filter(|(name, _)| name.starts_with("xargs"))
            .map(|(_, d)| *d)
            .min()
            .unwrap_or(Duration::MAX);
        for (name, d) in &medians {
            println!(
                "{width:>3} steps  {name:<30} {:>7.2}s  {:.2}x the best xargs",
                d.as_secs_f64(),
                d.as_secs_f64() / best_xargs.as_secs_f64()
            );
        }
    }
    docker_quiet(&["rmi", BASE]);
}

fn concurrent_main() {
    let builds: usize = std::env::var("BUILDS")
        .ok()
        .and_then(|b| b.parse().ok())
        .unwrap_or(50);
    // The secrets step needs curl: the host's, with its libraries.
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let libs = Command::new("ldd").arg("/usr/bin/curl").output().unwrap();
    let mut copy = String::new();
    for path in String::from_utf8_lossy(&libs.stdout)
        .split_whitespace()
        .filter(|w| w.starts_with('/'))
    {
        let rel = path.trim_start_matches('/');
        std::fs::create_dir_all(d.join(rel).parent().unwrap()).unwrap();
        std::fs::copy(path, d.join(rel)).unwrap();
        copy.push_str(&format!("COPY {rel} /{rel}\n"));
    }
    std::fs::create_dir_all(d.join("bin")).unwrap();
    std::fs::copy("/bin/busybox", d.join("bin/busybox")).unwrap();
    std::fs::copy("/usr/bin/curl", d.join("bin/curl")).unwrap();
    write(
        d,
        "Dockerfile",
        &format!("FROM scratch\nCOPY bin/busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\nRUN mkdir -p /tmp && chmod 1777 /tmp\nCOPY bin/curl /usr/bin/curl\n{copy}"),
    );
    let base = "habitus-bench-curl:latest";
    docker(&["build", "-q", "-t", base, d.to_str().unwrap()]);
    let fetch = r#"ARG HABITUS_URL
ARG HABITUS_CA
ARG HABITUS_TOKEN
RUN printf '%s' "$HABITUS_CA" > /tmp/ca.pem \
 && curl -fsS --cacert /tmp/ca.pem -H "Authorization: Bearer $HABITUS_TOKEN" "$HABITUS_URL/v1/secrets/env/k" > /dev/null \
 && rm /tmp/ca.pem
"#;
    let projects: Vec<tempfile::TempDir> = (0..builds)
        .map(|i| {
            let p = tempfile::tempdir().unwrap();
            write(
                p.path(),
                "build.yml",
                &format!("build:\n  version: 2016-03-14\n  steps:\n    s:\n      name: habitus-bench-conc-{i}\n      dockerfile: Dockerfile\n      secrets:\n        k:\n          type: env\n          value: K\n"),
            );
            write(p.path(), "Dockerfile", &format!("FROM {base}\n{fetch}"));
            p
        })
        .collect();
    let start = Instant::now();
    let children: Vec<_> = projects
        .iter()
        .map(|p| {
            Command::new(env!("CARGO_BIN_EXE_habitus"))
                .arg("-d")
                .arg(p.path())
                .args(["--no-cache", "--level", "warning"])
                .env("HABITUS_K", "bench-secret")
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut failures = Vec::new();
    for (i, child) in children.into_iter().enumerate() {
        let out = child.wait_with_output().unwrap();
        if !out.status.success() {
            failures.push((
                i,
                out.status,
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ));
        }
    }
    let took = start.elapsed();
    println!(
        "{builds} concurrent secrets builds: {:.1}s, {} failed",
        took.as_secs_f64(),
        failures.len()
    );
    for i in 0..builds {
        docker_quiet(&["rmi", "-f", &format!("habitus-bench-conc-{i}")]);
    }
    docker_quiet(&["rmi", base]);
    // A time is worth nothing if builds failed: each failure's stderr, and
    // a non-zero exit.
    if !failures.is_empty() {
        for (i, status, stderr) in &failures {
            eprintln!("--- build {i} (`habitus-bench-conc-{i}`) failed with {status}; its stderr:\n{stderr}");
        }
        eprintln!(
            "error: {} of {builds} concurrent builds failed",
            failures.len()
        );
        std::process::exit(1);
    }
}

fn main() {
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    if std::env::args().any(|a| a == "concurrent") {
        concurrent_main();
        return;
    }
    if std::env::args().any(|a| a == "fanout") {
        let runs = std::env::var("RUNS")
            .ok()
            .and_then(|r| r.parse().ok())
            .unwrap_or(1);
        fanout_main(runs);
        return;
    }
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(5);
    build_base();
    println!("medians of {runs} runs each, classic builder, same daemon, alternating");
    let c = chain();
    compare(
        "chain of 3, --no-cache",
        &c,
        true,
        runs,
        1.0,
        &["--keep-all"],
    );
    compare(
        "chain of 3, fully cached",
        &c,
        false,
        runs,
        0.9,
        &["--keep-all"],
    );
    compare(
        "chain of 3, --no-cache, buildkit",
        &c,
        true,
        runs,
        0.75,
        // Only the product is kept, as habitus does by default: the two
        // intermediate images are then built as stages, not exported.
        &["--builder", "buildkit"],
    );
    remove_images(&c);
    let d = diamond();
    compare(
        "diamond of 4 (2 s middles), no cache",
        &d,
        true,
        runs,
        0.75,
        &[],
    );
    remove_images(&d);
    docker_quiet(&["rmi", BASE]);
}
