//! `--builder buildkit` on the real daemon: the same flows as with the
//! classic builder, secrets mounted with `RUN --mount=type=secret` from
//! habitus's session, the audit, a build mixing both ways to get secrets,
//! a remote daemon over TLS, and a daemon too old for BuildKit.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixListener;

use crate::common::leak::assert_no_secret_in_image;
use crate::common::{
    docker, from_base, image_exists, networks_with_label, project, read_in_image, sha256_hex,
    tls_proxy, Habitus, Output, UID_LABEL,
};

const CHAIN_YML: &str = "build:
  version: 2016-03-14
  steps:
    one:
      name: hb/bk-one
      dockerfile: Dockerfile.one
    two:
      name: hb/bk-two
      dockerfile: Dockerfile.two
      depends_on: [one]
      args:
        GREETING: from-args
    three:
      name: hb/bk-three:v1
      dockerfile: Dockerfile.three
      target: final
      depends_on: [two]
";

/// The chain without `args:`: the intermediate steps fold into the last.
fn fold_yml() -> String {
    CHAIN_YML.replace("      args:\n        GREETING: from-args\n", "")
}

fn chain(prefix: &str, builder: &str) -> (Output, String) {
    let (h, c) = project(prefix, CHAIN_YML);
    let h = h
        .file("Dockerfile.one", from_base("RUN echo 1 > /chain\n"))
        .file(
            "Dockerfile.two",
            "FROM hb/bk-one\nARG GREETING\nARG FROM_CLI\nENV GREETING=$GREETING\nRUN echo \"2 $GREETING $FROM_CLI\" >> /chain\n",
        )
        .file(
            "Dockerfile.three",
            // The classic builder keeps the `build` stage as an untagged
            // image: its label lets the test's cleanup find it.
            format!(
                "FROM hb/bk-two AS build\nLABEL {UID_LABEL}={}\nCOPY data.txt /data.txt\nRUN cat /data.txt >> /chain\n\
                 FROM hb/bk-two AS final\nCOPY --from=build /chain /chain\nWORKDIR /srv\nCMD [\"cat\", \"/chain\"]\n",
                c.uid()
            ),
        )
        .file("data.txt", "3\n")
        .file("ignored.txt", "not in the context\n")
        .file(".dockerignore", "ignored.txt\n")
        .args(["--builder", builder, "--build", "FROM_CLI=cli"]);
    let out = h.run();
    out.assert_success();
    let uid = c.uid().to_string();
    let image = format!("hb/bk-three-{uid}:v1");
    let result = format!(
        "{}|{}",
        read_in_image(&image, "/chain"),
        docker(&[
            "image",
            "inspect",
            "-f",
            "{{json .Config.Env}} {{json .Config.Cmd}} {{.Config.WorkingDir}}",
            &image,
        ])
    );
    // Only the product stays.
    assert!(!image_exists(&format!("hb/bk-one-{uid}")));
    assert!(!image_exists(&format!("hb/bk-two-{uid}")));
    (out, result)
}

#[test]
fn a_chain_builds_with_buildkit_as_with_the_classic_builder() {
    let (bk, bk_result) = chain("bk-chain", "buildkit");
    let (_, legacy_result) = chain("bk-chain-legacy", "legacy");
    assert_eq!(bk_result, legacy_result);
    assert!(
        bk_result.starts_with("1\n2 from-args cli\n3\n|"),
        "{bk_result}"
    );
    // `two` has arguments of its own: every step is a build of its own.
    assert!(
        bk.stderr
            .lines()
            .any(|l| l.contains("one | #") && l.ends_with("[2/2] RUN echo 1 > /chain")),
        "{}",
        bk.stderr
    );
}

#[test]
fn a_chain_whose_intermediate_images_nobody_keeps_is_one_buildkit_build() {
    let (h, c) = project("bk-fold", &fold_yml());
    let bk = h
        .file("Dockerfile.one", from_base("RUN echo 1 >> /chain\n"))
        .file("Dockerfile.two", "FROM hb/bk-one\nRUN echo 2 >> /chain\n")
        .file(
            "Dockerfile.three",
            "FROM hb/bk-two AS final\nRUN echo 3 >> /chain\n",
        )
        .args(["--builder", "buildkit"])
        .run();
    bk.assert_success();
    let uid = c.uid();
    assert_eq!(
        read_in_image(&format!("hb/bk-three-{uid}:v1"), "/chain"),
        "1\n2\n3\n"
    );
    assert!(!image_exists(&format!("hb/bk-one-{uid}")));
    assert!(!image_exists(&format!("hb/bk-two-{uid}")));
    // The progress shows each step's stage.
    assert!(
        bk.stderr
            .lines()
            .any(|l| l.contains("three | #")
                && l.ends_with("[habitus-fold-0 2/2] RUN echo 1 >> /chain")),
        "{}",
        bk.stderr
    );
    assert!(
        bk.stderr
            .contains("one built by step `three` as a stage of its BuildKit build"),
        "{}",
        bk.stderr
    );
    assert!(bk.stderr.contains("(stage of `three`)"), "{}", bk.stderr);
}

#[test]
fn with_keep_all_every_buildkit_step_gets_its_image() {
    let (h, c) = project("bk-keep", &fold_yml());
    let out = h
        .file("Dockerfile.one", from_base("RUN echo 1 | tee /chain\n"))
        .file("Dockerfile.two", "FROM hb/bk-one\nRUN echo 2 >> /chain\n")
        .file(
            "Dockerfile.three",
            "FROM hb/bk-two AS final\nRUN echo 3 >> /chain\n",
        )
        .args(["--builder", "buildkit", "--keep-all"])
        .run();
    out.assert_success();
    let uid = c.uid();
    assert_eq!(read_in_image(&format!("hb/bk-one-{uid}"), "/chain"), "1\n");
    assert_eq!(
        read_in_image(&format!("hb/bk-two-{uid}"), "/chain"),
        "1\n2\n"
    );
    assert!(
        out.stderr
            .lines()
            .any(|l| l.contains("one | #") && l.ends_with("[2/2] RUN echo 1 | tee /chain")),
        "{}",
        out.stderr
    );
}

#[test]
fn a_failure_in_a_folded_step_names_that_step() {
    let (h, c) = project("bk-fold-fail", &fold_yml());
    let out = h
        .file("Dockerfile.one", from_base("RUN echo 1 > /fold-fail\n"))
        .file(
            "Dockerfile.two",
            "FROM hb/bk-one\nRUN echo two-fails && exit 7\n",
        )
        .file("Dockerfile.three", "FROM hb/bk-two AS final\nRUN true\n")
        .args(["--builder", "buildkit"])
        .run();
    out.assert_code(1);
    assert!(
        out.stderr.contains(
            "error: step `two` failed at `[habitus-fold-1 1/1] RUN echo two-fails && exit 7`"
        ),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("Dockerfile.two"), "{}", out.stderr);
    assert!(!image_exists(&format!("hb/bk-three-{}:v1", c.uid())));
}

const MOUNT_YML: &str = "build:
  version: 2016-03-14
  steps:
    app:
      name: hb/bk-mount
      dockerfile: Dockerfile
      builder: buildkit
      secrets:
        id_rsa:
          type: file
          value: key.txt
        token:
          type: env
          value: BK_TOKEN
";

#[test]
fn file_and_env_secrets_are_mounted_and_no_layer_or_history_keeps_them() {
    let (h, c) = project("bk-mount", MOUNT_YML);
    let uid = c.uid().to_string();
    let file_secret = format!("file-secret-{uid}-{:08x}\n", rand::random::<u32>());
    let env_secret = format!("env-secret-{uid}-{:08x}", rand::random::<u32>());
    let h = h
        .file("key.txt", &file_secret)
        .file(
            "Dockerfile",
            from_base(
                "RUN --mount=type=secret,id=id_rsa,target=/root/.ssh/id_rsa \
                 --mount=type=secret,id=token \
                 sha256sum /root/.ssh/id_rsa /run/secrets/token | cut -d' ' -f1 > /sums \
                 && echo \"printed: $(cat /run/secrets/token)\"\n\
                 RUN test ! -e /run/secrets/token && test ! -s /root/.ssh/id_rsa && echo gone\n",
            ),
        )
        .env("HABITUS_BK_TOKEN", &env_secret)
        // BuildKit's cache key of a `RUN` does not include the values it
        // mounts: without this, an earlier run's layer would be reused.
        .args(["--json", "--no-cache"]);
    let out = h.run();
    out.assert_success();
    let image = format!("hb/bk-mount-{uid}");
    assert_eq!(
        read_in_image(&image, "/sums"),
        format!(
            "{}\n{}\n",
            sha256_hex(file_secret.as_bytes()),
            sha256_hex(env_secret.as_bytes())
        )
    );
    // Printed output is redacted; the values are in no layer and no
    // history entry.
    assert!(out.stderr.contains("printed: ***"), "{}", out.stderr);
    for secret in [&file_secret, &env_secret] {
        assert!(!out.stderr.contains(secret.trim()));
        assert!(!out.stdout.contains(secret.trim()));
        assert_no_secret_in_image(&image, secret.trim().as_bytes());
    }
    assert!(
        out.stderr.contains(&format!("audit: no secret in {image}")),
        "{}",
        out.stderr
    );
    // Served from the session: no server, no network.
    assert!(!out.stderr.contains("secrets server listening"));
    assert_eq!(networks_with_label(UID_LABEL, &uid), Vec::<String>::new());
    assert!(
        out.stderr.contains("file/id_rsa: 1 fetch(es)"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("env/token: 1 fetch(es)"),
        "{}",
        out.stderr
    );
    let event = out
        .stdout
        .lines()
        .find(|l| l.contains("secret_fetched") && l.contains(r#""path":"env/token""#))
        .unwrap_or_else(|| panic!("no secret_fetched event:\n{}", out.stdout));
    assert!(event.contains(r#""via":"mount""#), "{event}");
    assert!(event.contains(r#""status":200"#), "{event}");
}

#[test]
fn mounting_an_undeclared_secret_fails_naming_the_secret_and_the_fix() {
    let (h, c) = project("bk-undeclared", MOUNT_YML);
    let h = h
        .file("key.txt", "undeclared-test-key\n")
        .env("HABITUS_BK_TOKEN", "undeclared-test-token")
        .file(
            "Dockerfile",
            from_base("RUN --mount=type=secret,id=npmrc cat /run/secrets/npmrc\n"),
        );
    let out = h.run();
    out.assert_code(1);
    assert!(
        out.stderr.contains(
            "line 2: mounts secret `npmrc`, which step `app` does not declare (it declares `id_rsa`, `token`)"
        ),
        "{}",
        out.stderr
    );
    assert!(out
        .stderr
        .contains("hint: add `npmrc` under the step's `secrets:`"));
    assert!(!image_exists(&format!("hb/bk-mount-{}", c.uid())));
    // `habitus check` says the same, without a daemon.
    let out = h.arg("check").run();
    out.assert_code(1);
    assert!(
        out.stderr
            .contains("mounts secret `npmrc`, which step `app` does not declare"),
        "{}",
        out.stderr
    );

    // An id the Dockerfile computes escapes that check; the session refuses
    // it and the error still names it.
    let (h, _c) = project("bk-undeclared-arg", MOUNT_YML);
    let out = h
        .file("key.txt", "undeclared-test-key\n")
        .env("HABITUS_BK_TOKEN", "undeclared-test-token")
        .file(
            "Dockerfile",
            from_base(
                "ARG NAME=npmrc\nRUN --mount=type=secret,id=$NAME,required cat /run/secrets/x\n",
            ),
        )
        .run();
    out.assert_code(1);
    // BuildKit 0.8 asks for the id as written, 0.13 expands the argument.
    assert!(
        ["`$NAME`", "`npmrc`"]
            .iter()
            .any(|id| out.stderr.contains(&format!(
                "hint: the Dockerfile mounts secret(s) {id} that this step does not declare"
            ))),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr.contains("refused (not declared)"),
        "{}",
        out.stderr
    );

    // The classic builder cannot mount: said before anything is built.
    let (h, _c) = project(
        "bk-legacy-mount",
        &MOUNT_YML.replace("builder: buildkit", "builder: legacy"),
    );
    let out = h
        .file("key.txt", "undeclared-test-key\n")
        .env("HABITUS_BK_TOKEN", "undeclared-test-token")
        .file(
            "Dockerfile",
            from_base("RUN --mount=type=secret,id=token true\n"),
        )
        .run();
    out.assert_code(1);
    assert!(
        out.stderr
            .contains("line 2: `RUN --mount=type=secret` needs BuildKit"),
        "{}",
        out.stderr
    );
}

#[test]
fn one_build_fetches_over_tls_in_one_step_and_mounts_in_another() {
    let (h, c) = project(
        "bk-mixed",
        "build:
  version: 2016-03-14
  steps:
    fetch:
      name: hb/bk-fetch
      dockerfile: Dockerfile.fetch
      builder: legacy
      secrets:
        key:
          type: file
          value: key.txt
    mount:
      name: hb/bk-mounted
      dockerfile: Dockerfile.mount
      builder: buildkit
      depends_on: [fetch]
      secrets:
        key:
          type: file
          value: key.txt
",
    );
    let uid = c.uid().to_string();
    let secret = format!("mixed-secret-{uid}-{:08x}", rand::random::<u32>());
    let h = h
        .file("key.txt", &secret)
        .file(
            "Dockerfile.fetch",
            from_base(
                r#"ARG HABITUS_URL
ARG HABITUS_CA
ARG HABITUS_TOKEN
RUN printf '%s' "$HABITUS_CA" > /tmp/ca.pem \
 && curl -fsS --cacert /tmp/ca.pem -H "Authorization: Bearer $HABITUS_TOKEN" "$HABITUS_URL/v1/secrets/file/key" | sha256sum | cut -d' ' -f1 > /sums \
 && rm /tmp/ca.pem
"#,
            ),
        )
        .file(
            "Dockerfile.mount",
            "FROM hb/bk-fetch\nRUN --mount=type=secret,id=key sha256sum /run/secrets/key | cut -d' ' -f1 >> /sums\n",
        );
    let out = h.run();
    out.assert_success();
    let image = format!("hb/bk-mounted-{uid}");
    let sum = sha256_hex(secret.as_bytes());
    assert_eq!(read_in_image(&image, "/sums"), format!("{sum}\n{sum}\n"));
    assert!(out.stderr.contains("secrets server listening on https://"));
    assert!(
        out.stderr.contains("by step `fetch`: 200"),
        "{}",
        out.stderr
    );
    assert!(out
        .stderr
        .contains("secret mount `key` of step `mount`: served"));
    assert_no_secret_in_image(&image, secret.as_bytes());
    assert_eq!(networks_with_label(UID_LABEL, &uid), Vec::<String>::new());
}

#[test]
fn buildkit_builds_reach_a_remote_daemon_over_tls() {
    let proxy = tls_proxy::start();
    let (h, c) = project("bk-tls", MOUNT_YML);
    let out = h
        .file("key.txt", "tls-file-secret-value\n")
        .env("HABITUS_BK_TOKEN", "tls-env-secret-value")
        .file(
            "Dockerfile",
            from_base("RUN --mount=type=secret,id=token wc -c < /run/secrets/token > /len\n"),
        )
        .args(["--use-tls", "--host", &proxy.host()])
        .arg("--certs")
        .arg(&proxy.cert_dir)
        .env_remove("DOCKER_HOST")
        .run();
    out.assert_success();
    assert_eq!(
        read_in_image(&format!("hb/bk-mount-{}", c.uid()), "/len").trim(),
        "20"
    );
}

#[test]
fn a_daemon_without_buildkit_is_named_with_its_version() {
    let dir = tempfile::tempdir().unwrap();
    // Docker 18.06: API 1.38, no BuildKit sessions.
    let socket =
        crate::common::fake_daemon::start_as(dir.path(), "18.06.3-ce", "1.38", Vec::new()).socket;
    let h = Habitus::new()
        .file(
            "build.yml",
            "build:\n  version: 2016-03-14\n  steps:\n    s:\n      name: hb/bk-old\n      dockerfile: Dockerfile\n",
        )
        .file("Dockerfile", "FROM scratch\n")
        .arg("--host")
        .arg(format!("unix://{}", socket.display()))
        .args(["--builder", "buildkit"]);
    let out = h.run();
    out.assert_failure();
    assert!(
        out.stderr.contains(&format!(
            "the Docker daemon at `unix://{}` (Docker 18.06.3-ce, API 1.38, linux) cannot build with BuildKit",
            socket.display()
        )),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("hint: build with `--builder legacy`"));
}

/// A stand-in for an SSH agent on a unix socket: it answers each
/// connection with an HTTP response, so that `curl --unix-socket` in a
/// `RUN` shows the bytes went both ways through the forwarded socket.
pub(crate) fn fake_agent(socket: &std::path::Path, answer: &'static str) {
    let listener = UnixListener::bind(socket).unwrap();
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { return };
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                line.clear();
            }
            let _ = write!(
                stream,
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{answer}",
                answer.len()
            );
        }
    });
}

const SSH_YML: &str = "build:
  version: 2016-03-14
  steps:
    clone:
      name: hb/bk-ssh
      dockerfile: Dockerfile
      builder: buildkit
      ssh: true
";

#[test]
fn the_ssh_agent_is_forwarded_to_steps_that_ask_for_it() {
    let dir = tempfile::tempdir().unwrap();
    let socket = dir.path().join("agent.sock");
    fake_agent(&socket, "answer-from-the-agent");
    let dockerfile = from_base(
        "RUN --mount=type=ssh curl -sS --unix-socket \"$SSH_AUTH_SOCK\" http://agent/ > /agent.out\n",
    );
    let (h, c) = project("bk-ssh", SSH_YML);
    let out = h
        .file("Dockerfile", &dockerfile)
        .env("SSH_AUTH_SOCK", &socket)
        .arg("--no-cache")
        .run();
    out.assert_success();
    assert_eq!(
        read_in_image(&format!("hb/bk-ssh-{}", c.uid()), "/agent.out"),
        "answer-from-the-agent"
    );

    // A step that does not ask for the agent cannot mount it.
    let (h, _c) = project("bk-ssh-off", &SSH_YML.replace("ssh: true", "ssh: false"));
    let out = h
        .file("Dockerfile", &dockerfile)
        .env("SSH_AUTH_SOCK", &socket)
        .run();
    out.assert_code(1);
    assert!(
        out.stderr
            .contains("line 2: mounts the SSH agent, but step `clone` does not forward it"),
        "{}",
        out.stderr
    );
    assert!(out.stderr.contains("hint: set `ssh: true` on the step"));

    // No agent: said before the build starts.
    let (h, _c) = project("bk-ssh-none", SSH_YML);
    let out = h
        .file("Dockerfile", &dockerfile)
        .env_remove("SSH_AUTH_SOCK")
        .run();
    out.assert_code(1);
    assert!(
        out.stderr.contains("SSH_AUTH_SOCK is not set"),
        "{}",
        out.stderr
    );
}

const CONTEXT_YML: &str = "build:
  version: 2016-03-14
  steps:
    ctx:
      name: hb/bk-ctx
      dockerfile: Dockerfile
      builder: buildkit
";

#[test]
fn the_context_reaches_buildkit_through_the_session_as_the_docker_cli_sends_it() {
    let (h, c) = project("bk-ctx", CONTEXT_YML);
    let h = h
        .file(
            "Dockerfile",
            from_base(
                "RUN --mount=type=bind,target=/c cd /c \\\n \
                 && (find . | sort; readlink app/escape; wc -c < big.bin) > /listing\n",
            ),
        )
        .file(".dockerignore", "secret.txt\nlogs\n!logs/keep.log\n")
        .file("app/main.txt", "main\n")
        .file("secret.txt", "not for the image\n")
        .file("logs/drop.log", "dropped\n")
        .file("logs/keep.log", "kept\n");
    // A symlink out of the context travels as a symlink, never followed.
    std::os::unix::fs::symlink("../../etc/hostname", h.dir().join("app/escape")).unwrap();
    // 200 MiB, sparse on disk: it streams through the session in chunks.
    let big = std::fs::File::create(h.dir().join("big.bin")).unwrap();
    big.set_len(200 * 1024 * 1024).unwrap();
    drop(big);
    let listing = |dir: &std::path::Path| {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let before = listing(h.dir());
    let out = h.run();
    out.assert_success();
    // The rewritten Dockerfile came from memory: nothing was written into
    // the directory, and it is not part of the context.
    assert_eq!(listing(h.dir()), before);
    let image = format!("hb/bk-ctx-{}", c.uid());
    assert_eq!(
        read_in_image(&image, "/listing"),
        ".\n./.dockerignore\n./Dockerfile\n./app\n./app/escape\n./app/main.txt\n./big.bin\n./build.yml\n./logs\n./logs/keep.log\n../../etc/hostname\n209715200\n"
    );
}

#[test]
fn a_context_file_buildkit_cannot_carry_fails_the_step_naming_it() {
    use std::os::unix::ffi::OsStrExt;
    let (h, _c) = project("bk-ctx-bad", CONTEXT_YML);
    let h = h.file("Dockerfile", from_base("COPY . /ctx\n"));
    let bad = std::ffi::OsStr::from_bytes(b"bad-\xff.txt");
    std::fs::write(h.dir().join(bad), "x").unwrap();
    let out = h.run();
    out.assert_code(1);
    assert!(
        out.stderr
            .contains("error: step `ctx` failed at `[internal] load build context`: "),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("bad-\u{fffd}.txt` cannot be sent to BuildKit: its name is not UTF-8"),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("hint: rename it, or list it in `.dockerignore`"),
        "{}",
        out.stderr
    );
}
