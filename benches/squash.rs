//! Squash benchmark: habitus against `docker-squash` (PyPI), side by side
//! on the same daemon and the same image.
//!
//! `cargo bench --bench squash` builds a ~600 MB, 7-layer image (adds,
//! modifications, deletions of files and directories) and squashes it
//! with both tools, all layers and base-kept modes alternating, measuring
//! wall time and peak RSS with `/usr/bin/time -v`, then checks that every
//! result has the original's filesystem (`docker export` listings: type,
//! mode, owner, size, content digest, mtime) and config.
//!
//! Needs `pip install docker-squash` (rows for it are skipped otherwise).
//! `SQUASH_BENCH_RUNS` (default 2) sets the repetitions; the best run of
//! each counts.
#![allow(clippy::disallowed_macros)] // a test or bench program prints its own report

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Command, Stdio};

const IMAGE: &str = "habitus-bench-squash";
const BASE: &str = "habitus-bench-squash-base";

fn main() {
    let runs: usize = std::env::var("SQUASH_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(2);
    let habitus = env!("CARGO_BIN_EXE_habitus");
    let docker_squash = Command::new("docker-squash")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if !docker_squash {
        eprintln!("docker-squash not found: `pip install docker-squash` to compare");
    }
    build_images();
    let source = format!("{IMAGE}:src");
    let original = filesystem(&source);
    let original_config = config(&source);

    // (label, command) pairs; each output tag is removed after checking.
    let all_tag = format!("{IMAGE}:out");
    let mut cases: Vec<(&str, Vec<String>)> = vec![(
        "habitus --all",
        vec![
            habitus.into(),
            "squash".into(),
            source.clone(),
            "-t".into(),
            all_tag.clone(),
            "--all".into(),
        ],
    )];
    if docker_squash {
        cases.push((
            "docker-squash (all)",
            vec![
                "docker-squash".into(),
                "-t".into(),
                all_tag.clone(),
                source.clone(),
            ],
        ));
    }
    cases.push((
        "habitus (base kept)",
        vec![
            habitus.into(),
            "squash".into(),
            source.clone(),
            "-t".into(),
            all_tag.clone(),
            "--from".into(),
            BASE.into(),
        ],
    ));
    if docker_squash {
        cases.push((
            "docker-squash -f BASE",
            vec![
                "docker-squash".into(),
                "-f".into(),
                BASE.into(),
                "-t".into(),
                all_tag.clone(),
                source.clone(),
            ],
        ));
    }

    let mut best: BTreeMap<&str, (f64, u64)> = BTreeMap::new();
    for run in 0..runs {
        for (label, command) in &cases {
            let _ = quiet(&["rmi", &all_tag]);
            quiet(&["image", "prune", "-f"]);
            sync();
            let (wall, rss) = timed(command);
            eprintln!(
                "run {}: {label:<24} {wall:6.2} s {:6} MiB",
                run + 1,
                rss / 1024
            );
            let fs = filesystem(&all_tag);
            assert!(fs == original, "{label}: the squashed filesystem differs");
            let cfg = config(&all_tag);
            for field in ["Env", "Cmd", "WorkingDir", "User", "Labels", "ExposedPorts"] {
                assert_eq!(cfg[field], original_config[field], "{label}: {field}");
            }
            let entry = best.entry(label).or_insert((f64::MAX, 0));
            if wall < entry.0 {
                *entry = (wall, rss);
            }
        }
    }
    let _ = quiet(&["rmi", &all_tag]);

    println!(
        "\nsquash of {source} ({} layers, {} MB), best of {runs}:",
        layer_count(&source),
        size_mb(&source)
    );
    println!("  {:<24} {:>8} {:>10}", "", "wall", "peak RSS");
    for (label, (wall, rss)) in &best {
        println!("  {label:<24} {wall:>6.2} s {:>6} MiB", rss / 1024);
    }
    let ratio = |a: &str, b: &str| Some(best.get(b)?.0 / best.get(a)?.0);
    if let Some(r) = ratio("habitus --all", "docker-squash (all)") {
        println!("  all layers: habitus is {r:.2}x faster than docker-squash");
    }
    if let Some(r) = ratio("habitus (base kept)", "docker-squash -f BASE") {
        println!("  base kept:  habitus is {r:.2}x faster than docker-squash");
    }
    println!("  every result has the original's filesystem and config");
    quiet(&["rmi", &source, BASE]);
}

/// The base (busybox, 2 layers) and the image (5 more layers, ~600 MB).
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
    std::fs::write(
        dir.path().join("image/Dockerfile"),
        format!(
            "FROM {BASE}
RUN mkdir -p /data/tree && dd if=/dev/urandom of=/data/big1 bs=1M count=150 && dd if=/dev/urandom of=/data/big2 bs=1M count=100
RUN for i in $(seq 1 2000); do echo \"file $i\" > /data/tree/f$i; done && dd if=/dev/urandom of=/data/big3 bs=1M count=120
RUN rm /data/big2 && rm -rf /data/tree && dd if=/dev/urandom of=/data/big1 bs=1M count=1 conv=notrunc
RUN mkdir -p /data/tree && echo new > /data/tree/only && dd if=/dev/urandom of=/data/big4 bs=1M count=80
RUN rm /data/big3 && echo done > /data/done
ENV MODE=bench
LABEL bench=squash
EXPOSE 8080
WORKDIR /data
CMD [\"cat\", \"/data/done\"]
"
        ),
    )
    .unwrap();
    docker_build(&format!("{IMAGE}:src"), &dir.path().join("image"));
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

/// Runs `command` under `/usr/bin/time -v`: wall seconds, peak RSS (KiB).
fn timed(command: &[String]) -> (f64, u64) {
    let out = Command::new("/usr/bin/time")
        .arg("-v")
        .args(command)
        .stdout(Stdio::null())
        .output()
        .expect("/usr/bin/time (apt-get install time)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{}: {stderr}", command.join(" "));
    let field = |name: &str| {
        stderr
            .lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .unwrap_or_else(|| panic!("no `{name}` in {stderr}"))
            .trim()
            .to_string()
    };
    let wall = field("Elapsed (wall clock) time (h:mm:ss or m:ss):");
    let seconds = wall
        .split(':')
        .fold(0.0, |acc, part| acc * 60.0 + part.parse::<f64>().unwrap());
    let rss = field("Maximum resident set size (kbytes):")
        .parse()
        .unwrap();
    (seconds, rss)
}

fn quiet(args: &[&str]) -> bool {
    Command::new("docker")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

fn sync() {
    let _ = Command::new("sync").status();
}

fn inspect(image: &str, format: &str) -> String {
    let out = Command::new("docker")
        .args(["image", "inspect", "-f", format, image])
        .output()
        .unwrap();
    assert!(out.status.success(), "inspect {image}");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn config(image: &str) -> serde_json::Value {
    serde_json::from_str(&inspect(image, "{{json .Config}}")).unwrap()
}

fn layer_count(image: &str) -> usize {
    inspect(image, "{{len .RootFS.Layers}}").parse().unwrap()
}

fn size_mb(image: &str) -> u64 {
    inspect(image, "{{.Size}}").parse::<u64>().unwrap() / 1_000_000
}

/// Paths the daemon adds to every container, with the container's time.
const DAEMON_PATHS: [&str; 6] = [
    ".dockerenv",
    "etc/hosts",
    "etc/hostname",
    "etc/resolv.conf",
    "etc/mtab",
    "dev/console",
];

/// `docker export` listing of a created container of `image`.
fn filesystem(image: &str) -> BTreeMap<String, String> {
    let id = String::from_utf8(
        Command::new("docker")
            .args(["create", image, "/listing"])
            .output()
            .unwrap()
            .stdout,
    )
    .unwrap()
    .trim()
    .to_string();
    let mut child = Command::new("docker")
        .args(["export", &id])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut listing = BTreeMap::new();
    let mut archive = tar::Archive::new(child.stdout.take().unwrap());
    let mut buffer = vec![0u8; 1 << 20];
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches('/')
            .to_string();
        let header = entry.header().clone();
        let mut digest = ring::digest::Context::new(&ring::digest::SHA256);
        loop {
            let n = entry.read(&mut buffer).unwrap();
            if n == 0 {
                break;
            }
            digest.update(&buffer[..n]);
        }
        let mtime = if header.entry_type().is_dir() || DAEMON_PATHS.contains(&path.as_str()) {
            0
        } else {
            header.mtime().unwrap()
        };
        listing.insert(
            path,
            format!(
                "{:?} {:o} {}:{} {} {:?} {:?} {mtime}",
                header.entry_type(),
                header.mode().unwrap(),
                header.uid().unwrap(),
                header.gid().unwrap(),
                header.size().unwrap(),
                entry.link_name().unwrap(),
                digest.finish().as_ref(),
            ),
        );
    }
    child.wait().unwrap();
    quiet(&["rm", "-f", &id]);
    listing
}
