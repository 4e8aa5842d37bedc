//! Audit benchmark: `habitus audit IMAGE` against `docker save IMAGE >
//! /dev/null`, side by side on the same daemon and the same image.
//!
//! `cargo bench --bench audit` builds a ~1.1 GB image on the daemon
//! DOCKER_HOST names: four 256 MiB layers of random data, a layer of
//! 20,000 small files and a layer of nested files (a ~64 MiB `.tar.gz` of
//! source-like text, random binaries and `.gz` logs, and a fat jar whose
//! `BOOT-INF/lib/` holds stored jars), all made here with seeded random
//! data. A second image adds one small layer to it: a `.tgz` holding a
//! config file with the secret inside a base64 blob wrapped at 76
//! columns, which the audit must find (exit 1).
//!
//! It first prints what the audit reads of the clean image (layers,
//! nested files, bytes: `habitus audit --json`), then alternates the
//! commands on both images, timing each (medians) and measuring
//! habitus's CPU time and peak RSS with `/usr/bin/time -v`. The save is
//! the floor: the audit reads that very stream and searches every byte of
//! every layer (decompressing them on the containerd image store), every
//! nested file unpacked, and the config. The load average is printed before and after:
//! the figures mean little on a busy machine. `AUDIT_BENCH_RUNS` (default
//! 3) sets the repetitions; `AUDIT_BENCH_KEEP=1` keeps the images for
//! another run.
#![allow(clippy::disallowed_macros)] // a test or bench program prints its own report

use std::io::Write;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use flate2::write::{DeflateEncoder, GzEncoder};
use flate2::{Compression, Crc};
use rand::rngs::StdRng;
use rand::{Rng, RngCore, SeedableRng};

const BASE: &str = "habitus-bench-audit-base";
const IMAGE: &str = "habitus-bench-audit:1g-nested";
const PLANTED: &str = "habitus-bench-audit:1g-planted";
const SECRET: &str = "bench-secret-0123456789-abcdefghij";

fn main() {
    let runs: usize = std::env::var("AUDIT_BENCH_RUNS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3);
    let habitus = env!("CARGO_BIN_EXE_habitus");
    println!("daemon: {}", daemon());
    println!("load average before: {}", load());
    if !quiet(&["image", "inspect", IMAGE]) || !quiet(&["image", "inspect", PLANTED]) {
        let start = Instant::now();
        build_images();
        println!("images built in {:.0} s", start.elapsed().as_secs_f64());
    }
    for image in [IMAGE, PLANTED] {
        let size = inspect(image, "{{.Size}}").parse::<u64>().unwrap_or(0);
        let layers = inspect(image, "{{len .RootFS.Layers}}");
        println!("image: {image}, {layers} layers, {} MB", size / 1_000_000);
    }
    let read = what_is_read(habitus, IMAGE, false);
    println!(
        "audit of {IMAGE} reads: {} layers, {} nested files, {} bytes ({} MiB) of layers",
        read.layers,
        read.nested,
        read.bytes,
        read.bytes >> 20
    );
    let planted = what_is_read(habitus, PLANTED, true);
    println!(
        "audit of {PLANTED} reads: {} layers, {} nested files, {} bytes; finds {}",
        planted.layers,
        planted.nested,
        planted.bytes,
        planted.hits.join(", ")
    );
    // One of each first, unmeasured: all read the same blobs, so the page
    // cache is warm for all.
    save(IMAGE);
    audit(habitus, IMAGE, false);
    let mut clean = Timings::default();
    let mut leak = Timings::default();
    for _ in 0..runs {
        clean.run(habitus, IMAGE, false);
        leak.run(habitus, PLANTED, true);
    }
    println!("median of {runs} run(s), alternating:");
    clean.report(IMAGE, "exit 0");
    leak.report(PLANTED, "exit 1");
    println!("load average after: {}", load());
    if std::env::var_os("AUDIT_BENCH_KEEP").is_none() {
        quiet(&["rmi", PLANTED, IMAGE, BASE]);
    }
}

#[derive(Default)]
struct Timings {
    saves: Vec<Duration>,
    audits: Vec<Duration>,
    cpu: Vec<Duration>,
    rss: u64,
}

impl Timings {
    fn run(&mut self, habitus: &str, image: &str, leaks: bool) {
        self.saves.push(save(image));
        let (wall, cpu, peak) = audit(habitus, image, leaks);
        self.audits.push(wall);
        self.cpu.push(cpu);
        self.rss = self.rss.max(peak);
    }

    fn report(&self, image: &str, outcome: &str) {
        let (save, audit) = (median(&self.saves), median(&self.audits));
        println!("  {image}:");
        println!(
            "    docker save > /dev/null   {:>6.2} s   (runs: {})",
            save.as_secs_f64(),
            list(&self.saves)
        );
        println!(
            "    habitus audit ({outcome})    {:>6.2} s   (runs: {})   peak RSS {} MiB",
            audit.as_secs_f64(),
            list(&self.audits),
            self.rss / 1024
        );
        println!(
            "      its CPU (user + sys)     {:>6.2} s   (runs: {})",
            median(&self.cpu).as_secs_f64(),
            list(&self.cpu)
        );
        // Each audit runs right after its save: the ratio within a pair
        // shares the machine's load of the moment.
        let pairs: Vec<f64> = self
            .saves
            .iter()
            .zip(&self.audits)
            .map(|(s, a)| a.as_secs_f64() / s.as_secs_f64())
            .collect();
        let mut sorted = pairs.clone();
        sorted.sort_by(f64::total_cmp);
        println!(
            "    audit / save: {:.2}x (medians); per pair {:.2}x median (runs: {})",
            audit.as_secs_f64() / save.as_secs_f64(),
            sorted[sorted.len() / 2],
            pairs
                .iter()
                .map(|r| format!("{r:.2}"))
                .collect::<Vec<_>>()
                .join(" ")
        );
    }
}

fn list(v: &[Duration]) -> String {
    v.iter()
        .map(|d| format!("{:.2}", d.as_secs_f64()))
        .collect::<Vec<_>>()
        .join(" ")
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

fn load() -> String {
    let loadavg = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let fields: Vec<&str> = loadavg.split_whitespace().take(3).collect();
    format!(
        "{} (1, 5, 15 min; {} CPUs)",
        fields.join(" "),
        std::thread::available_parallelism().map_or(0, |n| n.get())
    )
}

fn save(image: &str) -> Duration {
    let start = Instant::now();
    let status = Command::new("docker")
        .args(["save", image])
        .stdout(Stdio::null())
        .status()
        .expect("docker save");
    assert!(status.success(), "docker save {image}");
    start.elapsed()
}

/// `habitus audit` under `/usr/bin/time -v`: wall time, CPU time (user
/// and system), peak RSS (KiB). It must exit 1 with a hit if `leaks`,
/// else 0 with nothing found.
fn audit(habitus: &str, image: &str, leaks: bool) -> (Duration, Duration, u64) {
    let start = Instant::now();
    let out = Command::new("/usr/bin/time")
        .arg("-v")
        .arg(habitus)
        .args(["audit", image, "--secret-env", "BENCH_SECRET"])
        .env("BENCH_SECRET", SECRET)
        .stdout(Stdio::null())
        .output()
        .expect("/usr/bin/time (apt-get install time)");
    let wall = start.elapsed();
    let stderr = String::from_utf8_lossy(&out.stderr);
    if leaks {
        assert_eq!(
            out.status.code(),
            Some(1),
            "habitus audit {image}: {stderr}"
        );
    } else {
        assert!(out.status.success(), "habitus audit {image}: {stderr}");
        assert!(stderr.contains("no secret in"), "{stderr}");
    }
    let field = |name: &str| {
        stderr
            .lines()
            .find_map(|l| l.trim().strip_prefix(name))
            .and_then(|v| v.trim().parse::<f64>().ok())
            .unwrap_or_else(|| panic!("no `{name}` from /usr/bin/time:\n{stderr}"))
    };
    let cpu = field("User time (seconds):") + field("System time (seconds):");
    let rss = field("Maximum resident set size (kbytes):") as u64;
    (wall, Duration::from_secs_f64(cpu), rss)
}

/// What one `habitus audit --json` run read, and where it found the
/// secret.
struct Read {
    layers: u64,
    nested: u64,
    bytes: u64,
    hits: Vec<String>,
}

fn what_is_read(habitus: &str, image: &str, leaks: bool) -> Read {
    let out = Command::new(habitus)
        .args(["audit", image, "--secret-env", "BENCH_SECRET", "--json"])
        .env("BENCH_SECRET", SECRET)
        .output()
        .expect("habitus");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(i32::from(leaks)),
        "habitus audit {image} --json: {stderr}"
    );
    let json: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("habitus audit {image} --json: {e}: {stderr}"));
    let number = |field: &str| {
        json[field]
            .as_u64()
            .unwrap_or_else(|| panic!("no `{field}` in {json}"))
    };
    // Every nested file of the bench is one the audit can unpack.
    assert_eq!(
        json["not_searched"].as_array().map(Vec::len),
        Some(0),
        "{json}"
    );
    let hits: Vec<String> = json["hits"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|h| {
            format!(
                "{} ({}) at {} within {}",
                h["secret"].as_str().unwrap_or("?"),
                h["encoding"].as_str().unwrap_or("?"),
                h["path"].as_str().unwrap_or("?"),
                h["within"]
            )
        })
        .collect();
    assert_eq!(hits.is_empty(), !leaks, "{json}");
    Read {
        layers: number("layers"),
        nested: number("nested"),
        bytes: number("bytes"),
        hits,
    }
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
    let image = dir.path().join("image");
    std::fs::create_dir_all(image.join("app")).unwrap();
    let mut rng = StdRng::seed_from_u64(0x04a5_5d17);
    let sources = std::fs::File::create(image.join("app/src.tar.gz")).unwrap();
    source_tarball(&mut rng, sources);
    let jar = std::fs::File::create(image.join("app/app.jar")).unwrap();
    fat_jar(&mut rng, jar);
    let mut dockerfile = format!("FROM {BASE}\n");
    for i in 1..=4 {
        dockerfile.push_str(&format!(
            "RUN head -c 268435456 /dev/urandom > /random{i}\n"
        ));
    }
    dockerfile.push_str(
        "RUN mkdir /many && cd /many && i=0; while [ $i -lt 20000 ]; do echo \"file $i\" > f$i; i=$((i+1)); done\n",
    );
    dockerfile.push_str("COPY app/ /opt/app/\n");
    std::fs::write(image.join("Dockerfile"), dockerfile).unwrap();
    docker_build(IMAGE, &image);

    let planted = dir.path().join("planted");
    std::fs::create_dir_all(&planted).unwrap();
    let config = std::fs::File::create(planted.join("config.tgz")).unwrap();
    planted_config(&mut rng, config);
    std::fs::write(
        planted.join("Dockerfile"),
        format!("FROM {IMAGE}\nCOPY config.tgz /etc/app/config.tgz\n"),
    )
    .unwrap();
    docker_build(PLANTED, &planted);
}

/// A ~64 MiB `.tar.gz` of a source tree: ~120 MiB of source-like text in
/// 4,000 files, 24 MiB of random binaries, and 8 gzipped logs (a nested
/// file in a nested file).
fn source_tarball(rng: &mut StdRng, out: std::fs::File) {
    let gz = GzEncoder::new(std::io::BufWriter::new(out), Compression::default());
    let mut tar = tar::Builder::new(gz);
    let words = vocabulary(rng);
    for i in 0..4000 {
        let size = rng.random_range(1024..60 * 1024);
        let text = source_text(rng, &words, size);
        append(&mut tar, &format!("src/mod{}/file{i}.rs", i % 97), &text);
        if i % 167 == 0 {
            let mut blob = vec![0u8; 1 << 20];
            rng.fill_bytes(&mut blob);
            append(&mut tar, &format!("assets/blob{}.bin", i / 167), &blob);
        }
        if i % 500 == 0 {
            let log = source_text(rng, &words, 256 * 1024);
            let mut gz = GzEncoder::new(Vec::new(), Compression::default());
            gz.write_all(&log).unwrap();
            append(
                &mut tar,
                &format!("logs/build{}.log.gz", i / 500),
                &gz.finish().unwrap(),
            );
        }
    }
    tar.into_inner().unwrap().finish().unwrap().flush().unwrap();
}

/// A ~16 MiB Spring-Boot-like fat jar: 2,000 deflated class files (sizes
/// in data descriptors, as `jar` writes them) and 20 stored jars of 100
/// class files each.
fn fat_jar(rng: &mut StdRng, out: std::fs::File) {
    let words = vocabulary(rng);
    let mut jar = Zip::new(std::io::BufWriter::new(out));
    jar.deflated(
        "META-INF/MANIFEST.MF",
        b"Manifest-Version: 1.0\r\nMain-Class: org.springframework.boot.loader.JarLauncher\r\n\r\n",
    );
    for i in 0..2000 {
        let class = class_file(rng, &words);
        jar.deflated(&format!("BOOT-INF/classes/com/example/C{i}.class"), &class);
    }
    for lib in 0..20 {
        let mut inner = Zip::new(Vec::new());
        for i in 0..100 {
            let class = class_file(rng, &words);
            inner.deflated(&format!("org/lib{lib}/C{i}.class"), &class);
        }
        jar.stored(&format!("BOOT-INF/lib/lib{lib}-1.0.jar"), &inner.finish());
    }
    jar.finish().flush().unwrap();
}

/// A small `.tgz` of a config file in which the secret sits inside a
/// base64 blob wrapped at 76 columns (as `base64` writes it).
fn planted_config(rng: &mut StdRng, out: std::fs::File) {
    use base64::Engine;
    let mut blob = vec![0u8; 517];
    rng.fill_bytes(&mut blob);
    blob.extend_from_slice(SECRET.as_bytes());
    blob.extend_from_slice(&[0u8; 300]);
    let encoded = base64::engine::general_purpose::STANDARD.encode(&blob);
    let mut config = b"[service]\nname = app\n\n[credentials]\nblob = <<EOF\n".to_vec();
    for line in encoded.as_bytes().chunks(76) {
        config.extend_from_slice(line);
        config.push(b'\n');
    }
    config.extend_from_slice(b"EOF\n");
    let gz = GzEncoder::new(out, Compression::default());
    let mut tar = tar::Builder::new(gz);
    append(&mut tar, "config/app.ini", &config);
    tar.into_inner().unwrap().finish().unwrap();
}

fn append<W: Write>(tar: &mut tar::Builder<W>, path: &str, data: &[u8]) {
    let mut header = tar::Header::new_gnu();
    header.set_size(data.len() as u64);
    header.set_mode(0o644);
    header.set_mtime(1_700_000_000);
    header.set_cksum();
    tar.append_data(&mut header, path, data).unwrap();
}

/// 2,000 identifiers made of syllables.
fn vocabulary(rng: &mut StdRng) -> Vec<String> {
    const SYLLABLES: [&str; 24] = [
        "ab", "con", "de", "fig", "get", "han", "id", "ler", "map", "no", "op", "pro", "que",
        "red", "set", "tor", "un", "val", "wr", "xe", "yal", "zo", "str", "ing",
    ];
    (0..2000)
        .map(|_| {
            let n = rng.random_range(2..5);
            let parts: Vec<&str> = (0..n)
                .map(|_| SYLLABLES[rng.random_range(0..SYLLABLES.len())])
                .collect();
            parts.join(if rng.random_bool(0.5) { "_" } else { "" })
        })
        .collect()
}

/// About `size` bytes of indented, source-like lines of random words.
fn source_text(rng: &mut StdRng, words: &[String], size: usize) -> Vec<u8> {
    const PUNCTUATION: [&str; 8] = [" = ", "(", ", ", ");", " { ", "}", ".", " -> "];
    let mut text = Vec::with_capacity(size + 128);
    while text.len() < size {
        let indent = rng.random_range(0..4) * 4;
        text.extend(std::iter::repeat_n(b' ', indent));
        for _ in 0..rng.random_range(3..10) {
            text.extend_from_slice(words[rng.random_range(0..words.len())].as_bytes());
            text.extend_from_slice(PUNCTUATION[rng.random_range(0..PUNCTUATION.len())].as_bytes());
        }
        if rng.random_bool(0.1) {
            text.extend_from_slice(format!(" // {:x}", rng.next_u64()).as_bytes());
        }
        text.push(b'\n');
    }
    text
}

/// A class-file-like blob: magic, a constant pool of identifiers, random
/// "bytecode".
fn class_file(rng: &mut StdRng, words: &[String]) -> Vec<u8> {
    let mut class = vec![0xca, 0xfe, 0xba, 0xbe, 0, 0, 0, 61];
    for _ in 0..rng.random_range(20..200) {
        let word = words[rng.random_range(0..words.len())].as_bytes();
        class.push(1);
        class.extend_from_slice(&(word.len() as u16).to_be_bytes());
        class.extend_from_slice(word);
    }
    let mut code = vec![0u8; rng.random_range(1024..6 * 1024)];
    rng.fill_bytes(&mut code);
    class.extend_from_slice(&code);
    class
}

/// A minimal zip writer: deflated entries with a data descriptor (sizes
/// after the data, as `jar` and streaming writers do), stored entries
/// with their sizes in the local header, and a central directory.
struct Zip<W: Write> {
    out: W,
    offset: u64,
    central: Vec<u8>,
    entries: u16,
}

impl<W: Write> Zip<W> {
    fn new(out: W) -> Self {
        Zip {
            out,
            offset: 0,
            central: Vec::new(),
            entries: 0,
        }
    }

    fn deflated(&mut self, name: &str, data: &[u8]) {
        let mut deflate = DeflateEncoder::new(Vec::new(), Compression::default());
        deflate.write_all(data).unwrap();
        let packed = deflate.finish().unwrap();
        self.entry(name, data, &packed, 8, 8);
    }

    fn stored(&mut self, name: &str, data: &[u8]) {
        self.entry(name, data, data, 0, 0);
    }

    fn entry(&mut self, name: &str, data: &[u8], packed: &[u8], method: u16, flags: u16) {
        let mut crc = Crc::new();
        crc.update(data);
        let (crc, size, packed_size) = (crc.sum(), data.len() as u32, packed.len() as u32);
        let described = flags & 8 != 0;
        let mut local = Vec::new();
        local.extend_from_slice(b"PK\x03\x04");
        local.extend_from_slice(&20u16.to_le_bytes());
        local.extend_from_slice(&flags.to_le_bytes());
        local.extend_from_slice(&method.to_le_bytes());
        local.extend_from_slice(&[0, 0, 0x21, 0]); // time, date
        for value in if described {
            [0, 0, 0]
        } else {
            [crc, packed_size, size]
        } {
            local.extend_from_slice(&value.to_le_bytes());
        }
        local.extend_from_slice(&(name.len() as u16).to_le_bytes());
        local.extend_from_slice(&0u16.to_le_bytes());
        local.extend_from_slice(name.as_bytes());
        self.out.write_all(&local).unwrap();
        self.out.write_all(packed).unwrap();
        let mut written = local.len() + packed.len();
        if described {
            let mut descriptor = b"PK\x07\x08".to_vec();
            for value in [crc, packed_size, size] {
                descriptor.extend_from_slice(&value.to_le_bytes());
            }
            self.out.write_all(&descriptor).unwrap();
            written += descriptor.len();
        }
        let c = &mut self.central;
        c.extend_from_slice(b"PK\x01\x02");
        c.extend_from_slice(&20u16.to_le_bytes());
        c.extend_from_slice(&20u16.to_le_bytes());
        c.extend_from_slice(&flags.to_le_bytes());
        c.extend_from_slice(&method.to_le_bytes());
        c.extend_from_slice(&[0, 0, 0x21, 0]);
        for value in [crc, packed_size, size] {
            c.extend_from_slice(&value.to_le_bytes());
        }
        c.extend_from_slice(&(name.len() as u16).to_le_bytes());
        c.extend_from_slice(&[0; 12]); // extra, comment, disk, attributes
        c.extend_from_slice(&(self.offset as u32).to_le_bytes());
        c.extend_from_slice(name.as_bytes());
        self.offset += written as u64;
        self.entries += 1;
    }

    fn finish(mut self) -> W {
        self.out.write_all(&self.central).unwrap();
        let mut end = b"PK\x05\x06".to_vec();
        end.extend_from_slice(&[0; 4]); // disk numbers
        end.extend_from_slice(&self.entries.to_le_bytes());
        end.extend_from_slice(&self.entries.to_le_bytes());
        end.extend_from_slice(&(self.central.len() as u32).to_le_bytes());
        end.extend_from_slice(&(self.offset as u32).to_le_bytes());
        end.extend_from_slice(&0u16.to_le_bytes());
        self.out.write_all(&end).unwrap();
        self.out
    }
}

fn docker_build(tag: &str, dir: &Path) {
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

fn median(v: &[Duration]) -> Duration {
    let mut v = v.to_vec();
    v.sort();
    v[v.len() / 2]
}
