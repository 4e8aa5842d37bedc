//! Audit benchmark: `habitus audit IMAGE` against `docker save IMAGE >
//! /dev/null`, side by side on the same daemon and the same image.
//!
//! `cargo bench --bench audit` builds a ~1 GB image (four 256 MiB layers
//! of random data and a layer of 20,000 small files) on the daemon
//! DOCKER_HOST names, then alternates the two commands, timing each
//! (medians) and measuring habitus's peak RSS with `/usr/bin/time -v`.
//! The save is the floor: the audit reads that very stream and searches
//! every byte of every layer (decompressing them on the containerd image
//! store) and the config. `AUDIT_BENCH_RUNS` (default 3) sets the
//! repetitions; `AUDIT_BENCH_KEEP=1` keeps the image for another run.
#![allow(clippy::disallowed_macros)] // a test or bench program prints its own report

use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const BASE: &str = "habitus-bench-audit-base";
const IMAGE: &str = "habitus-bench-audit:1g";
const SECRET: &str = "bench-secret-0123456789-abcdefghij";

fn main() {
    let runs: usize = std::env::var("AUDIT_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let habitus = env!("CARGO_BIN_EXE_habitus");
    println!("daemon: {}", daemon());
    if !quiet(&["image", "inspect", IMAGE]) {
        build_images();
    }
    let size = inspect(IMAGE, "{{.Size}}").parse::<u64>().unwrap_or(0);
    let layers = inspect(IMAGE, "{{len .RootFS.Layers}}");
    println!("image: {IMAGE}, {layers} layers, {} MB", size / 1_000_000);
    // One of each first, unmeasured: both read the same blobs, so the
    // page cache is warm for both.
    save();
    audit(habitus);
    let mut saves = Vec::new();
    let mut audits = Vec::new();
    let mut rss = 0;
    for _ in 0..runs {
        saves.push(save());
        let (wall, peak) = audit(habitus);
        audits.push(wall);
        rss = rss.max(peak);
    }
    let (save, audit) = (median(saves), median(audits));
    println!("median of {runs} run(s), alternating:");
    println!("  docker save > /dev/null   {:>6.2} s", save.as_secs_f64());
    println!(
        "  habitus audit             {:>6.2} s   peak RSS {} MiB",
        audit.as_secs_f64(),
        rss / 1024
    );
    println!(
        "  audit / save: {:.2}x",
        audit.as_secs_f64() / save.as_secs_f64()
    );
    if std::env::var_os("AUDIT_BENCH_KEEP").is_none() {
        quiet(&["rmi", IMAGE, BASE]);
    }
}

fn daemon() -> String {
    let out = Command::new("docker")
        .args([
            "info",
            "--format",
            "Docker {{.ServerVersion}}, {{.Driver}} {{range .DriverStatus}}{{index . 1}} {{end}}",
        ])
        .output()
        .expect("docker");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn save() -> Duration {
    let start = Instant::now();
    let status = Command::new("docker")
        .args(["save", IMAGE])
        .stdout(Stdio::null())
        .status()
        .expect("docker save");
    assert!(status.success(), "docker save {IMAGE}");
    start.elapsed()
}

/// `habitus audit` under `/usr/bin/time -v`: wall time, peak RSS (KiB).
fn audit(habitus: &str) -> (Duration, u64) {
    let start = Instant::now();
    let out = Command::new("/usr/bin/time")
        .arg("-v")
        .arg(habitus)
        .args(["audit", IMAGE, "--secret-env", "BENCH_SECRET"])
        .env("BENCH_SECRET", SECRET)
        .stdout(Stdio::null())
        .output()
        .expect("/usr/bin/time (apt-get install time)");
    let wall = start.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "habitus audit: {stderr}");
    assert!(stderr.contains("no secret in"), "{stderr}");
    let rss = stderr
        .lines()
        .find_map(|l| l.trim().strip_prefix("Maximum resident set size (kbytes):"))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("no RSS from /usr/bin/time:\n{stderr}"));
    (wall, rss)
}

fn build_images() {
    let dir = tempfile::tempdir().unwrap();
    let rootfs = dir.path().join("base/rootfs/bin");
    std::fs::create_dir_all(&rootfs).unwrap();
    std::fs::copy("/bin/busybox", rootfs.join("busybox"))
        .expect("a static busybox at /bin/busybox (apt-get install busybox-static)");
    std::fs::write(
        dir.path().join("base/Dockerfile"),
        "FROM scratch\nCOPY rootfs/ /\nRUN [\"/bin/busybox\", \"sh\", \"-c\", \"/bin/busybox --install -s /bin && mkdir -p -m 1777 /tmp\"]\n",
    )
    .unwrap();
    docker_build(BASE, &dir.path().join("base"));
    std::fs::create_dir_all(dir.path().join("image")).unwrap();
    let mut dockerfile = format!("FROM {BASE}\n");
    for i in 1..=4 {
        dockerfile.push_str(&format!(
            "RUN head -c 268435456 /dev/urandom > /random{i}\n"
        ));
    }
    dockerfile.push_str(
        "RUN mkdir /many && cd /many && i=0; while [ $i -lt 20000 ]; do echo \"file $i\" > f$i; i=$((i+1)); done\n",
    );
    std::fs::write(dir.path().join("image/Dockerfile"), dockerfile).unwrap();
    docker_build(IMAGE, &dir.path().join("image"));
}

fn docker_build(tag: &str, dir: &std::path::Path) {
    let status = Command::new("docker")
        .args(["build", "-q", "-t", tag])
        .arg(dir)
        .env("DOCKER_BUILDKIT", "0")
        .stdout(Stdio::null())
        .status()
        .unwrap();
    assert!(status.success(), "docker build {tag}");
}

fn quiet(args: &[&str]) -> bool {
    Command::new("docker")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn inspect(image: &str, format: &str) -> String {
    let out = Command::new("docker")
        .args(["image", "inspect", "-f", format, image])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}
