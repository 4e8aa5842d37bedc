//! Artifact extraction: habitus against `docker cp` and against the
//! daemon's own floor (`curl --unix-socket … /containers/ID/archive | tar
//! -x`), side by side in one run, on the same never-started container:
//!
//! - `/big`: one 500 MB file of random bytes;
//! - `/tree`: 20,000 small files in 100 directories.
//!
//! habitus runs as the binary on a one-step build.yml whose only artifact
//! is the path (the build itself is a cached `FROM`); its time is the one it
//! reports for the artifact (archive request to last byte on disk), its
//! peak RSS comes from `/usr/bin/time -v` for the whole process.
//!
//! Run with `cargo bench --bench artifacts` (needs a Docker daemon, curl,
//! tar, /usr/bin/time and `/bin/busybox` from Debian's busybox-static).
//! Before each measurement the page cache's dirty data is written back
//! (`sync`), and the order of the three tools rotates from run to run, so
//! that no tool pays for the writeback of the one before it.
//! `RUNS=N` sets the number of measured runs (default 3), `ONLY=big` or
//! `ONLY=tree` measures one of the two. Every run extracts
//! into fresh directories (creating many files right after deleting many is
//! slow on ext4). Everything it creates is named `habitus-bench-art*` and
//! removed at the end.
#![allow(clippy::disallowed_macros)] // a test or bench program prints its own report

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BASE: &str = "habitus-bench-art-base:latest";
const DATA: &str = "habitus-bench-art-data:latest";
const CONTAINER: &str = "habitus-bench-art-container";
const SOCKET: &str = "/var/run/docker.sock";

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

/// A busybox image with the two artifacts, built from scratch.
fn build_images() {
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
    std::fs::write(
        dir.path().join("Dockerfile"),
        format!(
            "FROM {BASE}
RUN head -c 500000000 /dev/urandom > /big
RUN for d in $(seq 1 100); do mkdir -p /tree/d$d; for f in $(seq 1 200); do echo \"file $d $f\" > /tree/d$d/f$f; done; done
"
        ),
    )
    .unwrap();
    docker(&["build", "-q", "-t", DATA, dir.path().to_str().unwrap()]);
}

/// Runs `cmd`, returning its wall time; panics on failure.
fn timed(cmd: &mut Command) -> Duration {
    let started = Instant::now();
    let out = cmd.stdin(Stdio::null()).output().expect("run command");
    let elapsed = started.elapsed();
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    elapsed
}

fn docker_cp(path: &str, dest: &Path) -> Duration {
    timed(
        Command::new("docker")
            .arg("cp")
            .arg(format!("{CONTAINER}:{path}"))
            .arg(dest),
    )
}

fn floor(id: &str, path: &str, dest: &Path) -> Duration {
    let script = format!(
        "curl -sf --unix-socket {SOCKET} 'http://localhost/v1.41/containers/{id}/archive?path={path}' | tar -x -C '{}'",
        dest.display()
    );
    timed(Command::new("sh").args(["-c", &script]))
}

/// Runs habitus on a one-step build.yml with `path` as its artifact;
/// returns the time it reports for the artifact and its peak RSS in KiB.
fn habitus(work: &Path, path: &str) -> (Duration, u64) {
    std::fs::create_dir_all(work).unwrap();
    std::fs::write(work.join("Dockerfile"), format!("FROM {DATA}\n")).unwrap();
    std::fs::write(
        work.join("build.yml"),
        format!(
            "build:\n  version: 2016-03-14\n  steps:\n    art:\n      name: habitus-bench-art-step\n      dockerfile: Dockerfile\n      keep: true\n      artifacts:\n        - {path}\n"
        ),
    )
    .unwrap();
    let out = Command::new("/usr/bin/time")
        .arg("-v")
        .arg(env!("CARGO_BIN_EXE_habitus"))
        .arg("-d")
        .arg(work)
        .arg("--keep-artifacts")
        .stdin(Stdio::null())
        .output()
        .expect("run /usr/bin/time habitus");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "habitus failed:\n{stderr}");
    let seconds = stderr
        .lines()
        .find_map(|l| {
            let (_, rest) = l.split_once(&format!("copied artifact `{path}` to "))?;
            let (_, rest) = rest.split_once(" in ")?;
            rest.split_once('s')?.0.parse::<f64>().ok()
        })
        .unwrap_or_else(|| panic!("no timing line for `{path}`:\n{stderr}"));
    let rss = stderr
        .lines()
        .find_map(|l| {
            l.trim()
                .strip_prefix("Maximum resident set size (kbytes): ")?
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no RSS from /usr/bin/time:\n{stderr}"));
    (Duration::from_secs_f64(seconds), rss)
}

fn sync() {
    let _ = Command::new("sync").status();
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let runs: usize = std::env::var("RUNS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(3);
    build_images();
    docker_quiet(&["rm", "-f", CONTAINER]);
    let id = docker(&["create", "--name", CONTAINER, DATA, "true"])
        .trim()
        .to_string();
    let scratch = tempfile::Builder::new()
        .prefix("habitus-bench-art")
        .tempdir_in(std::env::var_os("BENCH_DIR").map_or_else(std::env::temp_dir, PathBuf::from))
        .unwrap();
    let mut counter = 0;
    let mut fresh = || {
        counter += 1;
        let dir = scratch.path().join(format!("t{counter}"));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    };

    println!("artifact extraction, median of {runs} run(s); habitus peak RSS is the max over runs");
    println!(
        "{:<28} {:>10} {:>10} {:>10} {:>8} {:>8} {:>10}",
        "artifact", "docker cp", "curl|tar", "habitus", "/cp", "/floor", "peak RSS"
    );
    let only = std::env::var("ONLY").unwrap_or_default();
    for (label, path) in [
        ("500 MB file (/big)", "/big"),
        ("20,000 files (/tree)", "/tree"),
    ] {
        if !only.is_empty() && !path.contains(only.as_str()) {
            continue;
        }
        // Warm the daemon's page cache once.
        floor(&id, path, &fresh());
        let (mut cp, mut fl, mut hb) = (Vec::new(), Vec::new(), Vec::new());
        let mut rss = 0;
        for run in 0..runs {
            // Each tool starts with no dirty data of another one waiting to
            // be written back, and the order rotates between runs.
            for tool in 0..3 {
                sync();
                match (tool + run) % 3 {
                    0 => cp.push(docker_cp(path, &fresh())),
                    1 => fl.push(floor(&id, path, &fresh())),
                    _ => {
                        let (t, r) = habitus(&fresh(), path);
                        hb.push(t);
                        rss = rss.max(r);
                    }
                }
            }
            eprintln!(
                "  {path}: docker cp {:.2}s, curl|tar {:.2}s, habitus {:.2}s",
                cp.last().unwrap().as_secs_f64(),
                fl.last().unwrap().as_secs_f64(),
                hb.last().unwrap().as_secs_f64()
            );
            if path == "/big" {
                // Big files are cheap to delete; keep the disk free.
                for entry in std::fs::read_dir(scratch.path()).unwrap() {
                    let dir = entry.unwrap().path();
                    let _ = std::fs::remove_file(dir.join("big"));
                }
            }
        }
        let (cp, fl, hb) = (median(cp), median(fl), median(hb));
        println!(
            "{:<28} {:>9.2}s {:>9.2}s {:>9.2}s {:>7.2}x {:>7.2}x {:>7.1} MB",
            label,
            cp.as_secs_f64(),
            fl.as_secs_f64(),
            hb.as_secs_f64(),
            hb.as_secs_f64() / cp.as_secs_f64(),
            hb.as_secs_f64() / fl.as_secs_f64(),
            rss as f64 / 1024.0
        );
    }
    docker_quiet(&["rm", "-f", CONTAINER]);
    docker_quiet(&["rmi", "habitus-bench-art-step:latest"]);
    if std::env::var_os("KEEP_IMAGES").is_none() {
        docker_quiet(&["rmi", DATA, BASE]);
    }
}
