//! `--untrusted` on the real daemon: each way a build.yml reaches this
//! machine (a host variable, a host file, the SSH agent, a host command)
//! is refused before anything is built, naming the flag that allows it,
//! and that flag lets it through.

use crate::buildkit::fake_agent;
use crate::common::{from_base, image_exists, project, read_in_image, Cleanup, Output};

/// Asserts that the run was refused with `refusal` (one line of the
/// error) before the build started: exit code 1, no image `image`.
#[track_caller]
fn assert_refused(out: &Output, refusal: &str, image: &str) {
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains(refusal),
        "{refusal}\n---\n{}",
        out.stderr
    );
    assert!(
        !out.stderr.contains(" step(s) from "),
        "the build started:\n{}",
        out.stderr
    );
    assert!(!image_exists(image), "`{image}` was built");
}

fn image(name: &str, c: &Cleanup) -> String {
    format!("{name}-{}", c.uid())
}

const ENV_YML: &str = "build:
  version: 2016-03-14
  steps:
    app:
      name: hb/un-env
      dockerfile: Dockerfile
      args: { WHO: _env(HABITUS_TEST_HOST_VALUE) }
";

#[test]
fn a_host_variable_is_refused_and_only_env_gives_one() {
    let (h, c) = project("un-env", ENV_YML);
    let h = h
        .file(
            "Dockerfile",
            from_base("ARG WHO\nRUN echo \"$WHO\" > /who\n"),
        )
        .env("HABITUS_TEST_HOST_VALUE", "from-the-host");
    let out = h.run_with(&["--untrusted"], &[]);
    assert_refused(
        &out,
        ": `_env(HABITUS_TEST_HOST_VALUE)` reads this machine's environment; refused with --untrusted (allow it with --env HABITUS_TEST_HOST_VALUE=VALUE)",
        &image("hb/un-env", &c),
    );
    // HABITUS_UNTRUSTED=1 is the same.
    let out = h.run_with(&[], &[("HABITUS_UNTRUSTED", "1")]);
    assert_refused(&out, "refused with --untrusted", &image("hb/un-env", &c));

    let out = h.run_with(
        &["-untrusted", "-env", "HABITUS_TEST_HOST_VALUE=given"],
        &[],
    );
    out.assert_success();
    assert_eq!(read_in_image(&image("hb/un-env", &c), "/who"), "given\n");
}

const SECRET_YML: &str = "build:
  version: 2016-03-14
  steps:
    app:
      name: hb/un-secret
      dockerfile: Dockerfile
      builder: buildkit
      secrets:
        key: { type: file, value: KEY_PATH }
";

#[test]
fn a_host_file_is_refused_and_only_secret_dir_opens_its_folder() {
    let outside = tempfile::tempdir().unwrap();
    let key = outside.path().join("deploy_key");
    std::fs::write(&key, "host-file-secret").unwrap();
    let real = std::fs::canonicalize(outside.path()).unwrap();
    let yml = SECRET_YML.replace("KEY_PATH", key.to_str().unwrap());
    let (h, c) = project("un-secret", &yml);
    let h = h.file(
        "Dockerfile",
        from_base("RUN --mount=type=secret,id=key wc -c < /run/secrets/key > /size\n"),
    );
    let out = h.run_with(&["--untrusted"], &[]);
    assert_refused(
        &out,
        &format!(
            "step `app`: secret `key` reads the file `{}`, which resolves to `{}`, outside the work directory; refused with --untrusted (allow it with --secret-dir {})",
            key.display(),
            real.join("deploy_key").display(),
            real.display()
        ),
        &image("hb/un-secret", &c),
    );

    let out = h.run_with(
        &[
            "--untrusted",
            "-secret-dir",
            outside.path().to_str().unwrap(),
            "--no-cache",
        ],
        &[],
    );
    out.assert_success();
    assert_eq!(
        read_in_image(&image("hb/un-secret", &c), "/size").trim(),
        "16"
    );
}

const SSH_YML: &str = "build:
  version: 2016-03-14
  steps:
    clone:
      name: hb/un-ssh
      dockerfile: Dockerfile
      builder: buildkit
      ssh: true
";

#[test]
fn the_ssh_agent_is_refused_and_only_ssh_forwards_it() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    fake_agent(&socket, "answer-from-the-agent");
    let (h, c) = project("un-ssh", SSH_YML);
    let h = h
        .file(
            "Dockerfile",
            from_base(
                "RUN --mount=type=ssh curl -sS --unix-socket \"$SSH_AUTH_SOCK\" http://agent/ > /agent.out\n",
            ),
        )
        .env("SSH_AUTH_SOCK", &socket);
    let out = h.run_with(&["--untrusted"], &[]);
    assert_refused(
        &out,
        ":8:7: step `clone`: `ssh: true` forwards this machine's SSH agent; refused with --untrusted (allow it with --ssh)",
        &image("hb/un-ssh", &c),
    );

    let out = h.run_with(&["--untrusted", "-ssh", "--no-cache"], &[]);
    out.assert_success();
    assert_eq!(
        read_in_image(&image("hb/un-ssh", &c), "/agent.out"),
        "answer-from-the-agent"
    );
}

const AFTER_YML: &str = "build:
  version: 2016-03-14
  steps:
    s:
      name: hb/un-after
      dockerfile: Dockerfile
      after_build_command: echo ran > after.txt
";

#[test]
fn a_host_command_is_refused_and_only_after_build_commands_runs_it() {
    let (h, c) = project("un-after", AFTER_YML);
    let h = h.file("Dockerfile", from_base(""));
    // Trusted, it would only be skipped; untrusted, it is refused.
    let out = h.run_with(&["--untrusted"], &[]);
    assert_refused(
        &out,
        ":7:7: step `s`: `after_build_command` runs `echo ran > after.txt` on this machine; refused with --untrusted (allow it with --after-build-commands)",
        &image("hb/un-after", &c),
    );
    assert!(!h.dir().join("after.txt").exists());

    let out = h.run_with(&["--untrusted", "-after-build-commands"], &[]);
    out.assert_success();
    assert_eq!(
        std::fs::read_to_string(h.dir().join("after.txt")).unwrap(),
        "ran\n"
    );
}
