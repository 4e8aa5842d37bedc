//! Crash safety on the real daemon: what a build killed with SIGKILL left
//! behind goes with the next build; `habitus prune` keeps what live builds
//! and running containers use; build networks come from habitus's own
//! pool, so Docker's pools running out does not stop secrets builds.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant, SystemTime};

use habitus::owner::Owner;

use crate::common::{
    base_image, docker, from_base, from_base_for, network_exists, network_of, project, Cleanup,
    Habitus, Output, Spawned, UID_LABEL,
};

const SLOW_SECRETS_YML: &str = "build:\n  version: 2016-03-14\n  steps:\n    slow:\n      name: hb/sweep-slow\n      dockerfile: Dockerfile\n      secrets:\n        k:\n          type: env\n          value: K\n";

/// A habitus build spawned in `h`'s work dir, read until `needle`.
fn spawn_until(h: &Habitus, uid: &str, needle: &str) -> Spawned {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_habitus"));
    cmd.arg("-d")
        .arg(h.dir())
        .args(["--uid", uid])
        .env("HABITUS_K", "sweep-value");
    Spawned::until(cmd, needle)
}

fn inspect_network(name: &str, format: &str) -> String {
    docker(&["network", "inspect", "-f", format, name])
        .trim()
        .to_string()
}

/// Containers (any state) attached to `network`.
fn containers_on(network: &str) -> Vec<String> {
    docker(&["ps", "-aq", "--filter", &format!("network={network}")])
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

/// Waits (at most `limit`) until `done` holds.
fn wait_until(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(
            Instant::now() < deadline,
            "still not {what} after {limit:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
}

fn habitus(args: &[&str]) -> Output {
    let out = Command::new(env!("CARGO_BIN_EXE_habitus"))
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    Output {
        status: out.status,
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// `--label k=v` arguments for the owner labels `owner` would set,
/// created `age` ago, plus the test's uid.
fn owner_labels(owner: &Owner, age: Duration, uid: &str, build: &str) -> Vec<String> {
    let mut labels: BTreeMap<String, String> = owner.labels(SystemTime::now() - age);
    labels.insert("habitus.build".into(), build.into());
    labels.insert(UID_LABEL.into(), uid.into());
    labels
        .into_iter()
        .flat_map(|(k, v)| ["--label".to_string(), format!("{k}={v}")])
        .collect()
}

/// The pid and start time of a process that has exited.
fn dead_owner() -> Owner {
    let mut child = Command::new("true").spawn().unwrap();
    let pid = child.id();
    child.wait().unwrap();
    Owner {
        pid,
        start: 1,
        ..Owner::current()
    }
}

/// `kill -9` of habitus mid-build (what CI does to a cancelled job) leaves
/// its network and containers; the next build removes them. The network
/// was a /28 of habitus's pool, owned by the killed process.
#[test]
fn what_a_killed_build_left_goes_with_the_next_build() {
    let (h, c) = project("sweep-kill", SLOW_SECRETS_YML);
    let marker = format!("marker-{}", c.uid());
    let h = h.file(
        "Dockerfile",
        from_base(&format!(
            "ARG HABITUS_TOKEN\nRUN echo {marker} && sleep 60\n"
        )),
    );
    let mut build = spawn_until(&h, c.uid(), &format!("slow | {marker}"));
    let network = network_of(build.seen());
    let pid = build.child.id().to_string();
    assert_eq!(
        inspect_network(&network, "{{index .Labels \"habitus.owner.pid\"}}"),
        pid
    );
    let subnet = inspect_network(&network, "{{range .IPAM.Config}}{{.Subnet}}{{end}}");
    assert!(
        subnet.starts_with("10.213.") && subnet.ends_with("/28"),
        "{subnet}"
    );
    build.child.kill().unwrap();
    build.wait();
    // The daemon ends the killed build's RUN on its own (and may remove
    // its container); until it has, the sweep keeps the network in use.
    wait_until(Duration::from_secs(60), "stopped", || {
        docker(&[
            "ps",
            "-a",
            "--filter",
            &format!("network={network}"),
            "--format",
            "{{.State}}",
        ])
        .lines()
        .all(|state| matches!(state.trim(), "exited" | "created" | "dead"))
    });

    let (next, c2) = project(
        "sweep-next",
        "build:\n  version: 2016-03-14\n  steps:\n    quick:\n      name: hb/sweep-next\n      dockerfile: Dockerfile\n",
    );
    let out = next
        .file("Dockerfile", from_base_for(c2.uid(), "RUN true\n"))
        .run();
    out.assert_success();
    // Builds of other tests sweep too; whichever came first, it is gone.
    assert!(!network_exists(&network), "{}", out.stderr);
    assert_eq!(containers_on(&network), Vec::<String>::new());
    let build = network.trim_start_matches("habitus-");
    assert_eq!(
        docker(&[
            "ps",
            "-aq",
            "--filter",
            &format!("label=habitus.build={build}")
        ])
        .trim(),
        ""
    );
    if out.stderr.contains(&format!("network `{network}`")) {
        assert!(
            out.stderr.contains(&format!(
                "swept network `{network}` left by an earlier build: its build (pid {pid}) is gone"
            )),
            "{}",
            out.stderr
        );
    }
}

/// A running build's network is kept by `habitus prune` and by other
/// builds' sweeps, and the build finishes unharmed.
#[test]
fn the_sweep_never_touches_a_running_build() {
    let (h, c) = project("sweep-live", SLOW_SECRETS_YML);
    let marker = format!("marker-{}", c.uid());
    let h = h.file(
        "Dockerfile",
        from_base(&format!(
            "ARG HABITUS_URL\nARG HABITUS_CA\nARG HABITUS_TOKEN\nRUN echo {marker} && sleep 6 && printf '%s' \"$HABITUS_CA\" > /tmp/ca.pem && curl -fsS --cacert /tmp/ca.pem -H \"Authorization: Bearer $HABITUS_TOKEN\" \"$HABITUS_URL/v1/secrets/env/k\" >/dev/null && rm /tmp/ca.pem\n"
        )),
    );
    let build = spawn_until(&h, c.uid(), &format!("slow | {marker}"));
    let network = network_of(build.seen());
    let prune = habitus(&["prune", "--dry-run"]);
    prune.assert_success();
    assert!(
        prune.stdout.contains(&format!(
            "kept network `{network}`: its build still runs (pid {})",
            build.child.id()
        )),
        "{}",
        prune.stdout
    );
    habitus(&["prune"]).assert_success();
    assert!(network_exists(&network));
    build.wait().assert_success();
}

/// A network of a dead build that a running container still uses is
/// kept; once the container is gone, it goes. Another host's network goes
/// only when older than --stale-after.
#[test]
fn prune_keeps_networks_in_use_and_young_ones_from_other_hosts() {
    let c = Cleanup::new("sweep-prune");
    let uid = c.uid().to_string();
    let dead = format!("hb-dead-{uid}");
    let args = owner_labels(&dead_owner(), Duration::ZERO, &uid, "deadbuild");
    let mut create = vec!["network", "create"];
    create.extend(args.iter().map(String::as_str));
    create.push(&dead);
    docker(&create);
    let container = format!("hb-user-{uid}");
    docker(&[
        "run",
        "-d",
        "--name",
        &container,
        "--label",
        &format!("{UID_LABEL}={uid}"),
        "--network",
        &dead,
        &base_image(),
        "sleep",
        "120",
    ]);
    let prune = habitus(&["prune", "--dry-run"]);
    prune.assert_success();
    let pid = inspect_network(&dead, "{{index .Labels \"habitus.owner.pid\"}}");
    assert!(
        prune.stdout.contains(&format!(
            "kept network `{dead}`: its build (pid {pid}) is gone, but a running container still uses it"
        )),
        "{}",
        prune.stdout
    );
    habitus(&["prune"]).assert_success();
    assert!(network_exists(&dead));
    docker(&["rm", "-f", &container]);

    // Made on another host two hours ago: kept by the default 24 h, removed
    // with --stale-after 1h (other tests' sweeps keep it).
    let foreign = format!("hb-foreign-{uid}");
    let other = Owner {
        host: format!("other-host-{uid}"),
        ..Owner::current()
    };
    let args = owner_labels(&other, Duration::from_secs(7200), &uid, "foreignbuild");
    let mut create = vec!["network", "create"];
    create.extend(args.iter().map(String::as_str));
    create.push(&foreign);
    docker(&create);
    let prune = habitus(&["prune", "--dry-run"]);
    prune.assert_success();
    assert!(
        prune.stdout.contains(&format!(
            "kept network `{foreign}`: made on host `other-host-{uid}` 2h ago"
        )),
        "{}",
        prune.stdout
    );
    let prune = habitus(&["prune", "--stale-after=1h"]);
    prune.assert_success();
    assert!(
        prune.stdout.contains(&format!(
            "removed network `{foreign}`: made on host `other-host-{uid}` 2h ago (older than --stale-after 1h)"
        )),
        "{}",
        prune.stdout
    );
    assert!(!network_exists(&foreign));
    // The dead build's network, now unused, went with that prune or with
    // another test's sweep.
    assert!(!network_exists(&dead));
}

/// With 25 networks taken from Docker's own pools (about 30 exist), 10
/// secrets builds at once all get a network: they come from habitus's pool.
#[test]
fn ten_concurrent_secrets_builds_succeed_with_dockers_pools_nearly_full() {
    let c = Cleanup::new("sweep-pool");
    let uid = c.uid().to_string();
    for i in 0..25 {
        docker(&[
            "network",
            "create",
            "--label",
            &format!("{UID_LABEL}={uid}"),
            &format!("hb-fill-{i}-{uid}"),
        ]);
    }
    let fetch = r#"ARG HABITUS_URL
ARG HABITUS_CA
ARG HABITUS_TOKEN
RUN printf '%s' "$HABITUS_CA" > /tmp/ca.pem \
 && curl -fsS --cacert /tmp/ca.pem -H "Authorization: Bearer $HABITUS_TOKEN" "$HABITUS_URL/v1/secrets/env/k" > /dev/null \
 && rm /tmp/ca.pem
"#;
    let builds: Vec<_> = (0..10)
        .map(|i| {
            let (h, c) = project(&format!("sweep-pool{i}"), SLOW_SECRETS_YML);
            let h = h.file("Dockerfile", from_base(fetch));
            let child = Command::new(env!("CARGO_BIN_EXE_habitus"))
                .arg("-d")
                .arg(h.dir())
                .args(["--uid", c.uid()])
                .env("HABITUS_K", "pool-value")
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap();
            (h, c, child)
        })
        .collect();
    let mut failures = Vec::new();
    for (_h, _c, child) in builds {
        let out = child.wait_with_output().unwrap();
        if !out.status.success() {
            failures.push(format!(
                "exit: {}\n--- stdout\n{}\n--- stderr\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ));
        }
    }
    assert!(
        failures.is_empty(),
        "{} failed:\n{}",
        failures.len(),
        failures.join("\n---\n")
    );
}

/// A private Docker 26 (tests/daemons/docker26.sh with its own root,
/// socket and bridge) that this test may stop and start; stopped and
/// removed when dropped.
struct PrivateDaemon {
    env: Vec<(String, String)>,
    root: std::path::PathBuf,
}

impl PrivateDaemon {
    fn script(&self, command: &str) -> std::process::Output {
        let mut cmd = Command::new("bash");
        cmd.arg(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/daemons/docker26.sh"
        ))
        .arg(command)
        .stdin(Stdio::null());
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        cmd.output().unwrap()
    }

    fn start(&self) -> String {
        let out = self.script("start");
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let text = String::from_utf8_lossy(&out.stdout);
        text.trim().trim_start_matches("DOCKER_HOST=").to_string()
    }

    fn stop(&self) {
        self.script("stop");
    }
}

impl Drop for PrivateDaemon {
    fn drop(&mut self) {
        self.stop();
        let _ = Command::new("umount")
            .arg("-R")
            .arg(&self.root)
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.root);
    }
}

fn docker_at(host: &str, args: &[&str]) -> String {
    let out = Command::new("docker")
        .args(args)
        .env("DOCKER_HOST", host)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The daemon stopped mid-build: habitus fails within 30 s naming the
/// daemon, and once the daemon is back the next build sweeps the network
/// the failed one could not remove. Runs in the Docker 26 pass of the
/// suite (as root), on a daemon of its own.
#[test]
fn a_daemon_restart_mid_build_fails_fast_and_the_next_build_sweeps() {
    let shared = "/var/lib/habitus-docker26/prefix";
    let on_docker26 = std::env::var("DOCKER_HOST").is_ok_and(|h| h.contains("habitus-docker26"));
    if !on_docker26 {
        eprintln!("runs in the Docker 26 pass only (tests/daemons/docker26.sh)");
        return;
    }
    assert!(
        Path::new(shared).join("usr/sbin/dockerd").exists(),
        "Docker 26 is not installed at {shared}"
    );
    let c = Cleanup::new("sweep-restart");
    let n = std::process::id() % 200 + 20;
    let root = std::path::PathBuf::from(format!("/var/lib/habitus-restart-{}", c.uid()));
    let daemon = PrivateDaemon {
        env: vec![
            ("HABITUS_DOCKER26_ROOT".into(), root.display().to_string()),
            ("HABITUS_DOCKER26_PREFIX".into(), shared.into()),
            ("HABITUS_DOCKER26_BRIDGE".into(), format!("hbrestart{n}")),
            (
                "HABITUS_DOCKER26_BRIDGE_ADDR".into(),
                format!("10.214.{n}.1/24"),
            ),
        ],
        root,
    };
    let host = daemon.start();

    // A busybox image on that daemon, built from scratch.
    let ctx = tempfile::tempdir().unwrap();
    std::fs::copy("/bin/busybox", ctx.path().join("busybox")).unwrap();
    std::fs::write(
        ctx.path().join("Dockerfile"),
        "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n",
    )
    .unwrap();
    docker_at(
        &host,
        &[
            "build",
            "-q",
            "-t",
            "hb-restart-base",
            &ctx.path().display().to_string(),
        ],
    );

    let (h, c1) = project("sweep-restart1", SLOW_SECRETS_YML);
    let marker = format!("marker-{}", c1.uid());
    let h = h.file(
        "Dockerfile",
        format!("FROM hb-restart-base\nARG HABITUS_TOKEN\nRUN echo {marker} && sleep 120\n"),
    );
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_habitus"));
    cmd.arg("-d")
        .arg(h.dir())
        .args(["--uid", c1.uid(), "--host", &host])
        .env("HABITUS_K", "restart-value");
    let build = Spawned::until(cmd, &format!("slow | {marker}"));
    let pid = build.child.id();
    let seen = build.seen().to_string();
    let network = network_of(&seen);
    let stopped = Instant::now();
    daemon.stop();
    let out = build.wait();
    let took = stopped.elapsed();
    let rest = &out.stderr[seen.len()..];
    let all = format!("--- stdout\n{}\n--- stderr\n{}", out.stdout, out.stderr);
    assert!(
        took < Duration::from_secs(30),
        "failed only after {took:?}:\n{all}"
    );
    out.assert_code(1);
    assert!(
        rest.contains("error: step `slow`")
            && rest.contains(&format!(
                "the Docker daemon at `{host}` stopped answering during the build: "
            )),
        "{all}"
    );
    assert!(
        rest.contains("secrets server stopped, but the build's network remains"),
        "{all}"
    );

    let host = daemon.start();
    assert!(
        docker_at(&host, &["network", "ls", "--format", "{{.Name}}"])
            .lines()
            .any(|n| n == network)
    );
    let (next, c2) = project(
        "sweep-restart2",
        "build:\n  version: 2016-03-14\n  steps:\n    quick:\n      name: hb/sweep-restart\n      dockerfile: Dockerfile\n",
    );
    let out = next
        .file("Dockerfile", "FROM hb-restart-base\nRUN true\n")
        .env("DOCKER_HOST", &host)
        .run();
    out.assert_success();
    assert!(
        out.stderr.contains(&format!(
            "swept network `{network}` left by an earlier build: its build (pid {pid}) is gone"
        )),
        "{}",
        out.stderr
    );
    assert!(
        !docker_at(&host, &["network", "ls", "--format", "{{.Name}}"])
            .lines()
            .any(|n| n == network)
    );
    drop((c1, c2));
}

const CLEANUP_STEP_YML: &str = "build:\n  version: 2016-03-14\n  steps:\n    STEP:\n      name: hb/sweep-STEP\n      dockerfile: Dockerfile\n      cleanup:\n        commands:\n          - rm /junk\n";

/// The labels of an image (`Config`) and, where the daemon keeps it, of
/// the container it was committed from (`ContainerConfig`).
fn image_labels(image: &str) -> Vec<String> {
    let inspect: serde_json::Value =
        serde_json::from_str(&docker(&["image", "inspect", image])).unwrap();
    ["Config", "ContainerConfig"]
        .iter()
        .filter_map(|config| inspect[0][config]["Labels"].as_object())
        .flat_map(|labels| {
            labels
                .iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap()))
        })
        .collect()
}

fn container_state(name: &str) -> String {
    docker(&["inspect", "-f", "{{.State.Status}}", name])
        .trim()
        .to_string()
}

/// The image a `cleanup:` step makes carries the step's own labels and
/// none of the container it was committed from: a container a user runs
/// from it is the user's, and neither `habitus prune` nor the sweep of a
/// later build touches it. With `--image-labels` the image carries
/// `habitus.build`, `habitus.step` and `habitus.uid`, and still a
/// container of it is never removed: it lacks `habitus.container`.
#[test]
fn containers_of_images_habitus_made_are_the_users() {
    let (h, c) = project("sweep-img", &CLEANUP_STEP_YML.replace("STEP", "plain"));
    let uid = c.uid().to_string();
    let dockerfile = from_base(&format!(
        "LABEL com.example.app={uid}\nRUN echo junk > /junk\n"
    ));
    h.file("Dockerfile", &dockerfile).run().assert_success();
    let plain = format!("hb/sweep-plain-{uid}");
    // The step's own labels: the base image's and its Dockerfile's.
    let own = [format!("com.example.app={uid}"), "habitus.test=base".into()];
    let labels = image_labels(&plain);
    assert!(
        labels.iter().all(|l| own.contains(l)) && own.iter().all(|l| labels.contains(l)),
        "{labels:?}"
    );
    let running = format!("{uid}-running");
    docker(&["run", "-d", "--name", &running, &plain, "sleep", "1000"]);

    // A following build, with image labels.
    let out = Habitus::new()
        .file("build.yml", CLEANUP_STEP_YML.replace("STEP", "labelled"))
        .file("Dockerfile", &dockerfile)
        .args(["--uid", &uid, "--image-labels"])
        .run();
    out.assert_success();
    assert_eq!(container_state(&running), "running", "{}", out.stderr);
    let labelled = format!("hb/sweep-labelled-{uid}");
    let labels = image_labels(&labelled);
    assert!(
        labels.iter().all(|l| own.contains(l)
            || l.starts_with("habitus.build=")
            || l.starts_with("habitus.step=labelled")
            || l == &format!("habitus.uid={uid}")),
        "{labels:?}"
    );
    assert!(
        labels.iter().any(|l| l.starts_with("habitus.build=")),
        "{labels:?}"
    );
    let created = format!("{uid}-created");
    docker(&["create", "--name", &created, &labelled, "true"]);
    let labelled_running = format!("{uid}-labelled");
    docker(&[
        "run",
        "-d",
        "--name",
        &labelled_running,
        &labelled,
        "sleep",
        "1000",
    ]);

    // Even old enough for any --stale-after, they stay (a dry run, so
    // that other tests' objects are safe from the 0s).
    let stdout = habitus(&["prune", "--dry-run", "--stale-after=0s"])
        .assert_success()
        .stdout
        .clone();
    for name in [&created, &labelled_running] {
        assert!(
            stdout.contains(&format!(
                "kept container `{name}`: not created by habitus (no `habitus.container` label; its image carries habitus's labels), so never removed"
            )),
            "{stdout}"
        );
    }
    assert!(!stdout.contains(&running), "{stdout}");
    habitus(&["prune"]).assert_success();
    assert_eq!(container_state(&running), "running");
    assert_eq!(container_state(&labelled_running), "running");
    assert_eq!(container_state(&created), "created");
}

/// A network labelled like a dead build's, named like the start of the id
/// of a user's network: the sweep removes that network and nothing on the
/// user's network, whose containers and volumes it never sees.
#[test]
fn a_network_named_like_another_networks_id_takes_nothing_with_it() {
    let c = Cleanup::new("sweep-prefix");
    let uid = c.uid().to_string();
    let user_net = format!("{uid}-net");
    let user_net_id = docker(&[
        "network",
        "create",
        "--label",
        &format!("{UID_LABEL}={uid}"),
        &user_net,
    ])
    .trim()
    .to_string();
    let prefix = user_net_id[..12].to_string();
    let args = owner_labels(&dead_owner(), Duration::ZERO, &uid, "prefixbuild");
    let mut create = vec!["network", "create"];
    create.extend(args.iter().map(String::as_str));
    create.push(&prefix);
    // By id: `docker network inspect <prefix>` may find the user's network.
    let labelled_id = docker(&create).trim().to_string();
    let user = format!("{uid}-user");
    // Run, so that its endpoint names the network's id, and exited.
    docker(&[
        "run",
        "--name",
        &user,
        "--network",
        &user_net,
        "-v",
        "/data",
        &base_image(),
        "true",
    ]);
    let volume = docker(&["inspect", "-f", "{{range .Mounts}}{{.Name}}{{end}}", &user])
        .trim()
        .to_string();
    assert!(!volume.is_empty());

    let stdout = habitus(&["prune"]).assert_success().stdout.clone();
    // This prune or another test's sweep removed the labelled network.
    assert!(!network_exists(&labelled_id), "{stdout}");
    if stdout.contains(&format!("network `{prefix}`")) {
        assert!(
            stdout.contains(&format!("removed network `{prefix}`: its build (pid ")),
            "{stdout}"
        );
    }
    assert_eq!(container_state(&user), "exited", "{stdout}");
    assert!(network_exists(&user_net_id));
    assert_eq!(
        docker(&["volume", "inspect", "-f", "{{.Name}}", &volume]).trim(),
        volume
    );
    docker(&["rm", "-f", "-v", &user]);
}

/// A child process killed when dropped, even when the test fails.
struct Killed(Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Field 22 of `/proc/<pid>/stat` once `pid` runs `comm`.
fn start_of(pid: u32, comm: &str) -> u64 {
    let mut stat = String::new();
    wait_until(Duration::from_secs(30), &format!("running {comm}"), || {
        stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
        stat.contains(&format!("({comm})"))
    });
    let rest = &stat[stat.rfind(')').unwrap() + 1..];
    rest.split_whitespace().nth(19).unwrap().parse().unwrap()
}

/// With `/proc` mounted `hidepid=2`, a live build of another user is
/// invisible, and `habitus prune` keeps its network, saying it cannot
/// tell. The mount is made in a private mount namespace (`unshare -m`),
/// never on the host's `/proc`; habitus runs there without
/// `CAP_SYS_PTRACE` and in another group, as hidepid would see a user.
/// Needs root, `unshare` and `setpriv`; says so and passes otherwise.
#[test]
fn prune_keeps_what_hidepid_hides_saying_it_cannot_tell() {
    let root = std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"));
    let tools = ["unshare", "setpriv"].iter().all(|tool| {
        Command::new(tool)
            .arg("--version")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    });
    if !root || !tools {
        eprintln!("skipped: needs root, `unshare` and `setpriv` for a private hidepid mount");
        return;
    }
    let c = Cleanup::new("sweep-hidepid");
    let uid = c.uid().to_string();
    // Another user's live build.
    let build = Killed(
        Command::new("setpriv")
            .args(["--reuid", "12345", "--regid", "12345", "--clear-groups"])
            .args(["sleep", "300"])
            .stdin(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let pid = build.0.id();
    let owner = Owner {
        pid,
        start: start_of(pid, "sleep"),
        user: Some("12345:12345".into()),
        ..Owner::current()
    };
    let network = format!("hb-hidden-{uid}");
    let args = owner_labels(&owner, Duration::ZERO, &uid, "hiddenbuild");
    let mut create = vec!["network", "create"];
    create.extend(args.iter().map(String::as_str));
    create.push(&network);
    docker(&create);

    // Where /proc shows it, the build runs.
    let stdout = habitus(&["prune", "--dry-run"])
        .assert_success()
        .stdout
        .clone();
    assert!(
        stdout.contains(&format!(
            "kept network `{network}`: its build still runs (pid {pid})"
        )),
        "{stdout}"
    );

    let proc_before = proc_mounts();
    let script = "mount -t proc -o hidepid=2 proc /proc && exec setpriv --regid 4242 --clear-groups --bounding-set -sys_ptrace \"$0\" prune";
    let out = Command::new("unshare")
        .args(["-m", "--propagation", "private", "sh", "-c", script])
        .arg(env!("CARGO_BIN_EXE_habitus"))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(
        stdout.contains(&format!(
            "kept network `{network}`: cannot tell whether its build (pid {pid}) still runs: /proc is mounted with hidepid=invisible, so another user's build is invisible to uid:gid 0:4242; run `habitus prune` as uid:gid 12345:12345 or with CAP_SYS_PTRACE"
        )),
        "{stdout}"
    );
    assert!(network_exists(&network));
    // The host's /proc is as it was.
    assert_eq!(proc_mounts(), proc_before);
}

/// The mounts of `/proc` as this process sees them.
fn proc_mounts() -> Vec<String> {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter(|l| l.split_whitespace().nth(4) == Some("/proc"))
        .map(str::to_string)
        .collect()
}
