//! End-to-end builds of build.yml files on the real daemon. Every test runs
//! with its own `--uid`, so its images are named `…-<uid>` and its
//! [`Cleanup`] guard removes them even when the test fails.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::common::rendezvous::Rendezvous;
use crate::common::{
    base_image, docker, from_base, from_base_for, image_exists, project, read_in_image, tls_proxy,
    unique, Cleanup, Habitus, Output,
};

/// Removes images by id when dropped.
struct RemoveImagesOnDrop(Vec<String>);

impl Drop for RemoveImagesOnDrop {
    fn drop(&mut self) {
        for id in self.0.iter().filter(|id| !id.is_empty()) {
            let _ = Command::new("docker")
                .args(["rmi", "-f", id])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Entries of the work dir, to prove a build left no file behind.
fn listing(dir: &std::path::Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

/// Containers (any state) whose command line mentions `marker`.
fn containers_mentioning(marker: &str) -> Vec<String> {
    docker(&["ps", "-a", "--no-trunc", "--format", "{{.ID}} {{.Command}}"])
        .lines()
        .filter(|l| l.contains(marker))
        .map(str::to_string)
        .collect()
}

/// Images (tagged or not) whose history mentions `marker`. Tests running
/// in parallel remove their images meanwhile: one gone (`No such image`)
/// before its history is read mentions nothing; any other failure to read
/// a history fails the test. The containerd image store fails a listing
/// that meets an image being deleted (`content digest …: not found`), so
/// that is asked again.
fn images_mentioning(marker: &str) -> Vec<String> {
    let list = || {
        Command::new("docker")
            .args(["images", "-a", "-q", "--no-trunc"])
            .stdin(Stdio::null())
            .output()
            .expect("run docker")
    };
    let mut out = list();
    for _ in 0..10 {
        if out.status.success() || !String::from_utf8_lossy(&out.stderr).contains("not found") {
            break;
        }
        out = list();
    }
    assert!(
        out.status.success(),
        "`docker images` failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|id| {
            crate::common::history(id, &["--no-trunc", "--format", "{{.CreatedBy}}"])
                .is_some_and(|created_by| created_by.contains(marker))
        })
        .map(str::to_string)
        .collect()
}

/// Panics, showing both streams, unless a line of step `step`'s output
/// ends with ` text` (the classic builder prints output as is, BuildKit
/// after `#N`).
#[track_caller]
fn assert_output_line(out: &Output, step: &str, text: &str) {
    let needle = format!("{step} | ");
    assert!(
        out.stderr
            .lines()
            .any(|l| l.contains(&needle) && l.ends_with(&format!(" {text}"))),
        "no line `{needle}… {text}`\n--- stdout\n{}\n--- stderr\n{}",
        out.stdout,
        out.stderr
    );
}

#[test]
fn single_step_builds_a_tagged_image() {
    let (h, c) = project(
        "single",
        "build:\n  version: 2016-03-14\n  steps:\n    only:\n      name: hb/single\n      dockerfile: Dockerfile\n",
    );
    let h = h.file("Dockerfile", from_base("RUN echo hello > /hello\n"));
    let out = h.run();
    out.assert_success();
    let image = format!("hb/single-{}", c.uid());
    assert_eq!(read_in_image(&image, "/hello"), "hello\n");
    assert!(out
        .stderr
        .contains("only | Step 2/2 : RUN echo hello > /hello"));
    // No generated Dockerfile or other file left in the work dir.
    assert_eq!(listing(h.dir()), ["Dockerfile", "build.yml"]);
}

/// `--metadata-file` lands on the host with mode 0600 (the JSON names the
/// built image); a metadata path that is a symlink fails the build (exit
/// 1) naming the file and the fix, and the link's target is untouched.
#[test]
fn the_metadata_file_is_0600_and_a_symlinked_path_is_refused() {
    use std::os::unix::fs::PermissionsExt;
    let (h, c) = project(
        "metadata",
        "build:\n  version: 2016-03-14\n  steps:\n    only:\n      name: hb/metadata\n      dockerfile: Dockerfile\n",
    );
    let h = h.file("Dockerfile", from_base("RUN echo hello > /hello\n"));
    let out_dir = tempfile::tempdir().unwrap();
    let meta = out_dir.path().join("meta.json");
    let out = h.run_with(
        &["--keep-all", "--metadata-file", meta.to_str().unwrap()],
        &[],
    );
    out.assert_success();
    let mode = std::fs::metadata(&meta).unwrap().permissions().mode() & 0o7777;
    assert_eq!(mode, 0o600);
    let json = std::fs::read_to_string(&meta).unwrap();
    assert!(json.contains(&format!("hb/metadata-{}", c.uid())), "{json}");

    let target = out_dir.path().join("target");
    std::fs::write(&target, "untouched").unwrap();
    let link = out_dir.path().join("link.json");
    std::os::unix::fs::symlink(&target, &link).unwrap();
    let out = h.run_with(
        &["--keep-all", "-metadata-file", link.to_str().unwrap()],
        &[],
    );
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    let want = format!(
        "error: metadata file `{}`: is a symlink; the metadata file is never written through one: remove the symlink or name another path",
        link.display()
    );
    assert!(out.stderr.contains(&want), "{want}\n{}", out.stderr);
    assert_eq!(std::fs::read_to_string(&target).unwrap(), "untouched");
}

/// A Dockerfile that is a symlink inside the work dir
/// (`Dockerfile -> docker/Dockerfile`) builds; a `.dockerignore` over the
/// 4 MiB limit fails the build (exit 1) naming the file and the limit.
#[test]
fn a_dockerfile_symlinked_inside_builds_and_a_huge_dockerignore_is_refused() {
    let (h, c) = project(
        "linked",
        "build:\n  version: 2016-03-14\n  steps:\n    only:\n      name: hb/linked\n      dockerfile: Dockerfile\n",
    );
    let h = h.file("docker/Dockerfile", from_base("RUN echo linked > /hello\n"));
    std::os::unix::fs::symlink("docker/Dockerfile", h.dir().join("Dockerfile")).unwrap();
    h.run().assert_success();
    let image = format!("hb/linked-{}", c.uid());
    assert_eq!(read_in_image(&image, "/hello"), "linked\n");

    let h = h.file(".dockerignore", "#".repeat(4 * 1024 * 1024 + 1));
    let out = h.run();
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    let want = format!(
        "`{}` is larger than 4194304 bytes, the limit for a `.dockerignore`; shorten it",
        h.dir().join(".dockerignore").display()
    );
    assert!(out.stderr.contains(&want), "{want}\n{}", out.stderr);
}

#[test]
fn chain_rewrites_from_to_the_unique_name_of_the_previous_step() {
    let (h, c) = project(
        "chain",
        "build:
  version: 2016-03-14
  steps:
    one:
      name: hb/chain-one
      dockerfile: Dockerfile.one
    two:
      name: hb/chain-two
      dockerfile: Dockerfile.two
      depends_on: [one]
    three:
      name: hb/chain-three:v1
      dockerfile: Dockerfile.three
      depends_on: [two]
",
    );
    let h = h
        .file("Dockerfile.one", from_base("RUN echo 1 > /chain\n"))
        .file(
            "Dockerfile.two",
            "FROM hb/chain-one\nRUN echo 2 >> /chain\n",
        )
        .file(
            "Dockerfile.three",
            "from hb/chain-two AS two\nRUN echo 3 >> /chain\n",
        );
    let out = h.run();
    out.assert_success();
    let uid = c.uid();
    assert_eq!(
        read_in_image(&format!("hb/chain-three-{uid}:v1"), "/chain"),
        "1\n2\n3\n"
    );
    // Only the product stays; the intermediate steps' images are removed.
    assert!(!image_exists(&format!("hb/chain-one-{uid}")));
    assert!(!image_exists(&format!("hb/chain-two-{uid}")));
    assert!(out
        .stderr
        .contains(&format!("two | Step 1/2 : FROM hb/chain-one-{uid}")));
}

#[test]
fn diamond_middle_steps_overlap_in_time() {
    diamond("diamond", "legacy");
}

#[test]
fn diamond_middle_steps_overlap_in_time_with_buildkit() {
    diamond("bk-diamond", "buildkit");
}

/// `a → b, c → d` with `--jobs 2`: `b` and `c` overlap, `d` sees all
/// three. The overlap is made, not hoped for: the `RUN` of each middle step
/// waits until the other's has started (a step that never meets the other
/// gives up and fails the build), and each prints that it met the other.
fn diamond(prefix: &str, builder: &str) {
    let (h, c) = project(
        prefix,
        "build:
  version: 2016-03-14
  steps:
    a:
      name: hb/dia-a
      dockerfile: Dockerfile.a
    b:
      name: hb/dia-b
      dockerfile: Dockerfile.b
      depends_on: [a]
    c:
      name: hb/dia-c
      dockerfile: Dockerfile.c
      depends_on: [a]
    d:
      name: hb/dia-d
      dockerfile: Dockerfile.d
      depends_on: [b, c]
",
    );
    let rv = Rendezvous::start();
    let middle = |me: &str, other: &str| {
        format!(
            "FROM hb/dia-a\nRUN {} && {} && echo {me}-met-{other} && echo {me} > /{me}\n",
            rv.signal_cmd(&format!("{me}-started")),
            rv.wait_cmd(&format!("{other}-started"))
        )
    };
    let h = h
        .file("Dockerfile.a", from_base("RUN echo a > /a\n"))
        .file("Dockerfile.b", middle("b", "c"))
        .file("Dockerfile.c", middle("c", "b"))
        .file(
            "Dockerfile.d",
            "FROM hb/dia-b\nCOPY --from=hb/dia-c /c /c\nRUN cat /a /b /c > /d\n",
        )
        // The cache would skip the middle steps' output.
        .args(["--jobs", "2", "--no-cache", "--builder", builder]);
    let out = h.run();
    out.assert_success();
    assert_output_line(&out, "b", "b-met-c");
    assert_output_line(&out, "c", "c-met-b");
    assert_eq!(
        read_in_image(&format!("hb/dia-d-{}", c.uid()), "/d"),
        "a\nb\nc\n"
    );
}

#[test]
fn target_context_dockerignore_and_build_arg_precedence() {
    let (h, c) = project(
        "ctx",
        "build:
  version: 2016-03-14
  steps:
    app:
      name: hb/ctx
      context: sub
      dockerfile: Dockerfile
      target: final
      args:
        FROM_YML: yml
        BOTH: yml
",
    );
    let h = h
        .file(
            "sub/Dockerfile",
            format!(
                "FROM {base} AS final
ARG FROM_YML
ARG BOTH
ARG FROM_CLI
COPY . /ctx/
RUN echo \"$FROM_YML $BOTH $FROM_CLI\" > /args

FROM final AS never
RUN exit 1
",
                base = base_image()
            ),
        )
        .file("sub/kept.txt", "kept")
        .file("sub/secret.log", "ignored")
        .file("sub/.dockerignore", "*.log\n")
        .file("outside.txt", "not in the context")
        .args(["--build", "BOTH=cli", "--build", "FROM_CLI=cli"]);
    let out = h.run();
    out.assert_success();
    let image = format!("hb/ctx-{}", c.uid());
    assert_eq!(read_in_image(&image, "/args"), "yml cli cli\n");
    let files = docker(&["run", "--rm", &image, "ls", "-A", "/ctx"]);
    let files: Vec<&str> = files.lines().collect();
    assert!(files.contains(&"kept.txt"), "{files:?}");
    assert!(!files.contains(&"secret.log"), "{files:?}");
    assert!(!files.contains(&"outside.txt"), "{files:?}");
}

/// A build warns as it starts, once, about a build arg that passes a
/// secret from the environment and about the `ARG` that receives it; the
/// image history then holds the value, as the warning says.
#[test]
fn a_secret_passed_as_a_build_arg_is_warned_about_once_as_the_build_starts() {
    let (h, c) = project(
        "exposed",
        "build:
  version: 2016-03-14
  steps:
    base:
      name: hb/exposed-base
      dockerfile: Dockerfile.base
    app:
      name: hb/exposed
      dockerfile: Dockerfile
      depends_on: [base]
      args:
        NPM_TOKEN: _env(NPM_TOKEN)
        VERSION: _env(VERSION)
",
    );
    let value = unique("npm-token-value");
    let h = h
        .file("Dockerfile.base", from_base_for(c.uid(), "RUN true\n"))
        .file(
            "Dockerfile",
            "FROM hb/exposed-base\nARG NPM_TOKEN\nARG VERSION\nRUN echo built\n",
        )
        .env("NPM_TOKEN", &value)
        .env("VERSION", "1.0");
    let out = h.run();
    out.assert_success();
    let fix = "declare it under `secrets:` and fetch it from the secrets server, or mount it with BuildKit (`RUN --mount=type=secret`)";
    let warnings = [
        format!(
            "warning: {}:12: step `app`: build arg `NPM_TOKEN` takes `_env(NPM_TOKEN)`: build args are stored in the image history; {fix}",
            h.dir().join("build.yml").display()
        ),
        format!(
            "warning: {}:2: step `app`: `ARG NPM_TOKEN` looks like a secret: build args are stored in the image history; {fix}",
            h.dir().join("Dockerfile").display()
        ),
    ];
    let first_step = out.stderr.find(" | Step 1/").expect("step output");
    for warning in &warnings {
        assert_eq!(
            out.stderr.matches(warning.as_str()).count(),
            1,
            "{warning}\n{}",
            out.stderr
        );
        assert!(
            out.stderr.find(warning.as_str()) < Some(first_step),
            "{}",
            out.stderr
        );
    }
    assert_eq!(out.stderr.matches("warning: ").count(), 2, "{}", out.stderr);
    assert!(!out.stderr.contains(&value), "{}", out.stderr);
    let history = docker(&[
        "history",
        "--no-trunc",
        "--format",
        "{{.CreatedBy}}",
        &format!("hb/exposed-{}", c.uid()),
    ]);
    assert!(history.contains(&format!("NPM_TOKEN={value}")), "{history}");
}

#[test]
fn no_cache_step_rebuilds_while_others_use_the_cache() {
    let (h, c) = project(
        "nocache",
        "build:
  version: 2016-03-14
  steps:
    cached:
      name: hb/nc-cached
      dockerfile: Dockerfile
      keep: true
    fresh:
      name: hb/nc-fresh
      dockerfile: Dockerfile
      no_cache: true
",
    );
    let h = h.file("Dockerfile", from_base("RUN echo same > /same\n"));
    h.run().assert_success();
    // The second build moves the tags; every image either tag pointed at
    // is removed when the test ends, whatever happens.
    let ids = || -> Vec<String> {
        ["cached", "fresh"]
            .iter()
            .map(|s| {
                docker(&["images", "-q", &format!("hb/nc-{s}-{}", c.uid())])
                    .trim()
                    .to_string()
            })
            .collect()
    };
    let mut guard = RemoveImagesOnDrop(ids());
    let out = h.run();
    guard.0.extend(ids());
    out.assert_success();
    let cached: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.contains("Using cache"))
        .collect();
    assert!(
        cached.iter().all(|l| l.contains("cached |")) && !cached.is_empty(),
        "{}",
        out.stderr
    );
}

#[test]
fn command_success_and_failure_with_its_exit_code() {
    let yml = |cmd: &str| {
        format!(
            "build:\n  version: 2016-03-14\n  steps:\n    t:\n      name: hb/cmd\n      dockerfile: Dockerfile\n      command: {cmd}\n"
        )
    };
    let (h, c) = project("cmd", &yml("echo tests-passed"));
    let h = h.file("Dockerfile", from_base(""));
    let out = h.run();
    out.assert_success();
    assert!(out.stderr.contains("t | tests-passed"), "{}", out.stderr);

    let h = h.file("build.yml", yml("\"echo failing; exit 7\""));
    let out = h.run();
    out.assert_code(7);
    assert!(out
        .stderr
        .contains("error: step `t`: command `echo failing; exit 7` exited with code 7"));
    assert!(containers_mentioning("echo failing; exit 7").is_empty());
    assert!(!image_exists(&format!("hb/cmd-{}", c.uid())));
}

#[test]
fn after_build_command_runs_on_the_host_only_with_the_flag() {
    let (h, _c) = project(
        "after",
        "build:\n  version: 2016-03-14\n  steps:\n    s:\n      name: hb/after\n      dockerfile: Dockerfile\n      after_build_command: echo done > after.txt\n",
    );
    let h = h.file("Dockerfile", from_base(""));
    let out = h.run();
    out.assert_success();
    assert!(!h.dir().join("after.txt").exists());
    assert!(out.stderr.contains(
        "after_build_command `echo done > after.txt` skipped: commands on the host run only with --after-build-commands"
    ));
    let h = h.arg("--after-build-commands");
    h.run().assert_success();
    assert_eq!(
        std::fs::read_to_string(h.dir().join("after.txt")).unwrap(),
        "done\n"
    );
}

#[test]
fn two_builds_with_different_uids_run_side_by_side() {
    let yml = "build:\n  version: 2016-03-14\n  steps:\n    s:\n      name: hb/tenant\n      dockerfile: Dockerfile\n";
    let (h1, c1) = project("tenant1", yml);
    let (h2, c2) = project("tenant2", yml);
    // Each build's `RUN` waits until the other's has started, so the two
    // builds do run at the same time (or fail, saying what they waited
    // for).
    let rv = Rendezvous::start();
    let run = |me: &str, other: &str| {
        from_base(&format!(
            "RUN {} && {} && echo {me}-met-{other} && echo {me} > /who\n",
            rv.signal_cmd(&format!("{me}-started")),
            rv.wait_cmd(&format!("{other}-started"))
        ))
    };
    let h1 = h1.file("Dockerfile", run("one", "two"));
    let h2 = h2.file("Dockerfile", run("two", "one"));
    let (o1, o2) = std::thread::scope(|s| {
        let t1 = s.spawn(|| h1.run());
        let t2 = s.spawn(|| h2.run());
        (t1.join().unwrap(), t2.join().unwrap())
    });
    o1.assert_success();
    o2.assert_success();
    assert_output_line(&o1, "s", "one-met-two");
    assert_output_line(&o2, "s", "two-met-one");
    assert_eq!(
        read_in_image(&format!("hb/tenant-{}", c1.uid()), "/who"),
        "one\n"
    );
    assert_eq!(
        read_in_image(&format!("hb/tenant-{}", c2.uid()), "/who"),
        "two\n"
    );
}

#[test]
fn failing_run_names_step_instruction_and_leaves_nothing() {
    let (h, c) = project(
        "fail",
        "build:
  version: 2016-03-14
  steps:
    ok:
      name: hb/fail-ok
      dockerfile: Dockerfile.ok
    broken:
      name: hb/fail-broken
      dockerfile: Dockerfile.broken
      depends_on: [ok]
",
    );
    let marker = format!("marker-{}", c.uid());
    let h = h.file("Dockerfile.ok", from_base("RUN echo ok\n")).file(
        "Dockerfile.broken",
        format!("FROM hb/fail-ok\nRUN echo {marker} > /m\nRUN echo {marker} && exit 3\n"),
    );
    let before = listing(h.dir());
    let out = h.run();
    out.assert_code(1);
    let expected = format!(
        "error: step `broken` failed at `Step 3/3 : RUN echo {marker} && exit 3`: The command '/bin/sh -c echo {marker} && exit 3' returned a non-zero code: 3\n  dockerfile: {}",
        h.dir().join("Dockerfile.broken").display()
    );
    assert!(out.stderr.contains(&expected), "{}", out.stderr);
    assert!(containers_mentioning(&marker).is_empty());
    assert!(!image_exists(&format!("hb/fail-ok-{}", c.uid())));
    // The image the daemon committed for `RUN echo … > /m` is gone too.
    assert_eq!(images_mentioning(&marker), Vec::<String>::new());
    assert_eq!(listing(h.dir()), before);
}

#[test]
fn unreachable_daemon_is_a_clear_error_with_exit_code_2() {
    let h = Habitus::new()
        .file(
            "build.yml",
            "build:\n  version: 2016-03-14\n  steps:\n    s:\n      name: hb/unreach\n      dockerfile: Dockerfile\n",
        )
        .file("Dockerfile", "FROM scratch\n")
        .args(["--host", "unix:///nonexistent/docker.sock"]);
    let out = h.run();
    out.assert_code(2);
    assert!(
        out.stderr
            .contains("cannot connect to the Docker daemon at `unix:///nonexistent/docker.sock`"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("hint: start it"), "{}", out.stderr);
}

#[test]
fn sigint_during_a_long_run_exits_130_and_leaves_nothing() {
    sigint_during_a_long_run("sigint", "legacy");
}

#[test]
fn sigint_during_a_long_buildkit_run_exits_130_and_stops_it() {
    sigint_during_a_long_run("bk-sigint", "buildkit");
}

/// Host processes whose command line mentions `marker` (BuildKit runs
/// `RUN` without a Docker container).
fn processes_mentioning(marker: &str) -> Vec<String> {
    let out = Command::new("pgrep")
        .args(["-a", "-f", marker])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter(|l| !l.contains("pgrep"))
        .map(str::to_string)
        .collect()
}

fn sigint_during_a_long_run(prefix: &str, builder: &str) {
    let (h, c) = project(
        prefix,
        "build:\n  version: 2016-03-14\n  steps:\n    slow:\n      name: hb/sigint\n      dockerfile: Dockerfile\n",
    );
    let marker = format!("marker-{}", c.uid());
    let h = h.file(
        "Dockerfile",
        from_base(&format!("RUN echo {marker} && sleep 60\n")),
    );
    let mut child = Command::new(env!("CARGO_BIN_EXE_habitus"))
        .arg("-d")
        .arg(h.dir())
        .args(["--uid", c.uid(), "--builder", builder, "--no-cache"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    let mut line = String::new();
    while stderr.read_line(&mut line).unwrap() > 0 {
        seen.push_str(&line);
        // The RUN has started when its echo shows up (after `#N ` with
        // BuildKit).
        if line.contains("slow | ") && line.trim_end().ends_with(&format!(" {marker}")) {
            break;
        }
        line.clear();
    }
    assert!(seen.contains(&marker), "{seen}");
    let started = Instant::now();
    let pid = child.id().to_string();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{seen}{rest}");
    assert!(started.elapsed() < Duration::from_secs(30));
    assert!(rest.contains("interrupted by SIGINT"), "{rest}");
    // The daemon removes the RUN container once it has noticed the
    // cancelled build; give it a moment.
    let deadline = Instant::now() + Duration::from_secs(20);
    let left = || {
        let mut left = containers_mentioning(&marker);
        left.extend(processes_mentioning(&marker));
        left
    };
    while !left().is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(left(), Vec::<String>::new());
    assert!(!image_exists(&format!("hb/sigint-{}", c.uid())));
    assert_eq!(listing(h.dir()), ["Dockerfile", "build.yml"]);
}

#[test]
fn remote_daemon_over_tcp_with_client_certificates() {
    let proxy = tls_proxy::start();
    let (h, c) = project(
        "tls",
        "build:\n  version: 2016-03-14\n  steps:\n    s:\n      name: hb/tls\n      dockerfile: Dockerfile\n",
    );
    let h = h.file("Dockerfile", from_base("RUN echo over-tls > /tls\n"));
    let good = h
        .args(["--use-tls", "--host", &proxy.host()])
        .arg("--certs")
        .arg(&proxy.cert_dir)
        .env_remove("DOCKER_HOST");
    good.run().assert_success();
    assert_eq!(
        read_in_image(&format!("hb/tls-{}", c.uid()), "/tls"),
        "over-tls\n"
    );

    let (bad, _c2) = project(
        "tlsbad",
        "build:\n  version: 2016-03-14\n  steps:\n    s:\n      name: hb/tls\n      dockerfile: Dockerfile\n",
    );
    let out = bad
        .file("Dockerfile", from_base(""))
        .args(["--use-tls", "--host", &proxy.host()])
        .arg("--certs")
        .arg(&proxy.bad_cert_dir)
        .run();
    out.assert_code(2);
    let rejected = format!(
        "error: docker TLS settings: the daemon at `{}` did not accept the client certificate `{}`: received fatal alert: UnknownCA\n",
        proxy.host(),
        proxy.bad_cert_dir.join("cert.pem").display()
    );
    assert!(out.stderr.ends_with(&rejected), "{}", out.stderr);
}

#[test]
fn blog_post_flow_compile_then_two_runtimes() {
    let (h, c) = project(
        "blog",
        "build:
  version: 2016-03-14
  steps:
    builder:
      name: hb/blog-builder
      dockerfile: Dockerfile.builder
    minimal:
      name: hb/blog:minimal
      dockerfile: Dockerfile.minimal
      depends_on: [builder]
    alpine:
      name: hb/blog:alpine
      dockerfile: Dockerfile.alpine
      depends_on: [builder]
",
    );
    // The \"golang\" stand-in compiles a shell script; the \"alpine\"
    // stand-in is the base image itself.
    let h = h
        .file(
            "Dockerfile.builder",
            from_base(
                "COPY main.sh /src/main.sh\nRUN mkdir -p /go/bin && cp /src/main.sh /go/bin/secretapp && chmod 755 /go/bin/secretapp\n",
            ),
        )
        .file("main.sh", "#!/bin/sh\necho secretapp says hi\n")
        .file(
            "Dockerfile.minimal",
            format!(
                "FROM {}\nCOPY --from=hb/blog-builder /go/bin/secretapp /secretapp\nCMD [\"/secretapp\"]\n",
                base_image()
            ),
        )
        .file(
            "Dockerfile.alpine",
            format!(
                "FROM {}\nCOPY --from=hb/blog-builder /go/bin/secretapp /usr/bin/secretapp\nCMD [\"secretapp\"]\n",
                base_image()
            ),
        );
    h.run().assert_success();
    let uid = c.uid();
    assert_eq!(
        docker(&["run", "--rm", &format!("hb/blog-{uid}:minimal")]),
        "secretapp says hi\n"
    );
    assert_eq!(
        docker(&["run", "--rm", &format!("hb/blog-{uid}:alpine")]),
        "secretapp says hi\n"
    );
    assert!(!image_exists(&format!("hb/blog-builder-{uid}")));
}

#[test]
fn json_events_on_stdout_and_prefixed_plain_lines_on_stderr() {
    let (h, _c) = project(
        "json",
        "build:
  version: 2016-03-14
  steps:
    one:
      name: hb/json-one
      dockerfile: Dockerfile.one
    two:
      name: hb/json-two
      dockerfile: Dockerfile.two
      depends_on: [one]
    three:
      name: hb/json-three
      dockerfile: Dockerfile.two
      depends_on: [one]
",
    );
    let h = h
        .file(
            "Dockerfile.one",
            from_base("RUN printf '\\033[31mred\\033[0m\\n'\n"),
        )
        .file("Dockerfile.two", "FROM hb/json-one\nRUN echo two\n")
        .arg("--json");
    let out = h.run();
    out.assert_success();
    let events: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("`{l}`: {e}")))
        .collect();
    let kinds: Vec<&str> = events
        .iter()
        .map(|e| e["event"].as_str().unwrap())
        .collect();
    assert_eq!(kinds.first(), Some(&"build_started"));
    assert_eq!(kinds.last(), Some(&"build_finished"));
    assert_eq!(events.last().unwrap()["exit_code"], 0);
    assert_eq!(events.last().unwrap()["status"], "success");
    for step in ["one", "two", "three"] {
        let at = |kind: &str| {
            events
                .iter()
                .position(|e| e["event"] == kind && e["step"] == step)
                .unwrap_or_else(|| panic!("no {kind} for {step}"))
        };
        assert!(at("step_started") < at("step_output"));
        assert!(at("step_output") < at("step_finished"));
    }
    let summary = events.iter().find(|e| e["event"] == "summary").unwrap();
    assert_eq!(summary["steps"].as_array().unwrap().len(), 3);
    // Not a terminal: every stderr line starts with the elapsed time, and no
    // escape code from the build output gets through.
    for line in out.stderr.lines() {
        let time = line.split_whitespace().next().unwrap_or("");
        assert!(
            time.ends_with('s') && time.trim_end_matches('s').parse::<f64>().is_ok(),
            "unprefixed line `{line}`"
        );
        assert!(!line.contains('\u{1b}'), "escape code in `{line}`");
    }
    assert!(out.stderr.contains("one | red"), "{}", out.stderr);
}

#[test]
fn terminal_view_shows_a_line_per_step() {
    let (h, c) = project(
        "tty",
        "build:
  version: 2016-03-14
  steps:
    first:
      name: hb/tty-first
      dockerfile: Dockerfile.first
    second:
      name: hb/tty-second
      dockerfile: Dockerfile.second
      depends_on: [first]
",
    );
    let h = h
        .file("Dockerfile.first", from_base("RUN sleep 1\n"))
        .file("Dockerfile.second", "FROM hb/tty-first\nRUN true\n");
    // `script` runs habitus on a pseudo-terminal and copies what it draws.
    let command = format!(
        "{} -d {} --uid {}",
        env!("CARGO_BIN_EXE_habitus"),
        h.dir().display(),
        c.uid()
    );
    let out = Command::new("script")
        .args(["-qfec", &command, "/dev/null"])
        .env("TERM", "xterm")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .output()
        .expect("run `script` (util-linux)");
    let screen = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{screen}");
    assert!(screen.contains("waiting on first"), "{screen}");
    assert!(screen.contains("[2/2] RUN sleep 1"), "{screen}");
    assert!(
        screen.contains(&format!("✓ first  hb/tty-first-{}", c.uid())),
        "{screen}"
    );
    assert!(
        screen.contains(&format!("✓ second hb/tty-second-{}", c.uid())),
        "{screen}"
    );
    // No colour with NO_COLOR.
    assert!(!screen.contains("\u{1b}[32m"), "{screen}");
}

#[test]
fn a_step_using_another_steps_image_without_depends_on_waits_for_it() {
    unsaid_dependency("unsaid", "legacy");
}

#[test]
fn a_step_using_another_steps_image_without_depends_on_waits_for_it_with_buildkit() {
    unsaid_dependency("bk-unsaid", "buildkit");
}

/// `app` builds `FROM` the image of `base`, listed after it and without
/// `depends_on`, while a stale image of `base`'s name is present: `app` is
/// built from the fresh one and the output names the inferred dependency.
fn unsaid_dependency(prefix: &str, builder: &str) {
    let (h, c) = project(
        prefix,
        "build:
  version: 2016-03-14
  steps:
    app:
      name: hb/unsaid-app
      dockerfile: Dockerfile.app
    base:
      name: hb/unsaid-base
      dockerfile: Dockerfile.base
",
    );
    let uid = c.uid().to_owned();
    let stale = tempfile::tempdir().unwrap();
    std::fs::write(
        stale.path().join("Dockerfile"),
        from_base(&format!(
            "LABEL habitus.uid={uid}\nRUN echo stale > /marker\n"
        )),
    )
    .unwrap();
    let stale_tag = format!("hb/unsaid-base-{uid}");
    docker(&[
        "build",
        "-q",
        "-t",
        &stale_tag,
        stale.path().to_str().unwrap(),
    ]);
    let h = h
        .args(["--builder", builder])
        .file(
            "Dockerfile.base",
            from_base("RUN sleep 2 && echo fresh > /marker\n"),
        )
        .file(
            "Dockerfile.app",
            "FROM hb/unsaid-base\nRUN cat /marker > /seen\n",
        );
    let out = h.run();
    out.assert_success();
    assert_eq!(
        read_in_image(&format!("hb/unsaid-app-{uid}"), "/seen"),
        "fresh\n"
    );
    let notice = "step `app` uses the image of step `base` (Dockerfile line 1): built after it; add `depends_on: [base]` to say so";
    assert_eq!(out.stderr.matches(notice).count(), 1, "{}", out.stderr);
}

#[test]
fn a_dockerfile_with_latin1_bytes_builds_as_docker_builds_it() {
    latin1_dockerfile("latin1", "legacy");
}

#[test]
fn a_dockerfile_with_latin1_bytes_builds_as_docker_builds_it_with_buildkit() {
    latin1_dockerfile("bk-latin1", "buildkit");
}

/// A Dockerfile with a Latin-1 `é` (byte 0xE9, not UTF-8) in a comment and
/// in a `LABEL`: `habitus check` reads it, the step builds, and the label
/// holds what `docker build` stores for the same file, U+FFFD for the byte.
fn latin1_dockerfile(prefix: &str, builder: &str) {
    let c = Cleanup::new(prefix);
    let uid = c.uid().to_owned();
    let yml = format!(
        "build:
  version: 2016-03-14
  steps:
    app:
      name: hb/latin1
      dockerfile: Dockerfile
      builder: {builder}
"
    );
    let dockerfile = [
        from_base("").as_bytes(),
        b"# caf\xe9 au lait\nLABEL habitus.uid=",
        uid.as_bytes(),
        b"\nLABEL note=\"caf\xe9\"\nRUN echo ok > /ok\n",
    ]
    .concat();
    let project = || {
        Habitus::new()
            .file("build.yml", &yml)
            .file("Dockerfile", &dockerfile)
            .args(["--uid", &uid])
    };
    project().arg("check").run().assert_success();
    let h = project();
    h.run().assert_success();
    let label = |image: &str| {
        docker(&[
            "inspect",
            "--format",
            "{{index .Config.Labels \"note\"}}",
            image,
        ])
    };
    let built = label(&format!("hb/latin1-{uid}"));
    assert_eq!(built, "caf\u{fffd}\n");
    // `docker build` (classic) of the same file stores the same label.
    let reference = format!("hb/latin1-reference-{uid}");
    let out = Command::new("docker")
        .args(["build", "-q", "-t", &reference, "-f", "Dockerfile", "."])
        .current_dir(h.dir())
        .env("DOCKER_BUILDKIT", "0")
        .stdin(Stdio::null())
        .output()
        .expect("run docker build");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(label(&reference), built);
}
