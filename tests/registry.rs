//! The private test registry itself ([`crate::common::registry`]): the
//! daemon pushes to it and pulls from it with a login, refuses to pull
//! without one, and the docker CLI logs in through the credential helper
//! the harness writes. Later tests of habitus against a registry rely on
//! all of this.

use std::process::{Command, Stdio};
use std::time::Instant;

use crate::common::{base_image, docker, image_exists, registry};

/// The id of a local image.
fn image_id(reference: &str) -> String {
    docker(&["image", "inspect", "--format", "{{.Id}}", reference])
        .trim()
        .to_string()
}

/// Runs `docker --config <config> pull <reference>` with `path` first on
/// PATH (when given); returns (success, stderr).
fn pull(
    config: &std::path::Path,
    reference: &str,
    path: Option<&std::path::Path>,
) -> (bool, String) {
    let mut cmd = Command::new("docker");
    cmd.arg("--config")
        .arg(config)
        .args(["pull", reference])
        .stdin(Stdio::null());
    if let Some(dir) = path {
        cmd.env("PATH", path_with(dir));
    }
    let out = cmd.output().expect("run docker pull");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn pushes_and_pulls_with_a_login_and_refuses_without() {
    let base = base_image();
    let started = Instant::now();
    let reg = registry::start();
    eprintln!(
        "registry at {} answered after {:?}",
        reg.host(),
        started.elapsed()
    );

    let reference = reg.push(&base, "private/base:1");
    assert_eq!(reference, format!("{}/private/base:1", reg.host()));
    assert!(
        !image_exists(&reference),
        "push left its local tag `{reference}` behind"
    );

    // Refused first, then pulled with the login: the registry is up
    // and only the credentials differ.
    let empty = tempfile::tempdir().unwrap();
    let (pulled, stderr) = pull(empty.path(), &reference, None);
    eprintln!("pull without credentials: {}", stderr.trim());
    assert!(!pulled, "pulled `{reference}` without credentials");
    assert!(
        reg.refused_for_want_of_login(&stderr),
        "pulling without credentials failed, but not for want of a login:\n{stderr}"
    );
    assert!(!image_exists(&reference));

    reg.docker(&["pull", &reference]);
    assert_eq!(image_id(&reference), image_id(&base));
    docker(&["rmi", &reference]);
    assert!(!image_exists(&reference));
}

#[test]
fn a_credential_helper_logs_in_for_the_registry_only() {
    let base = base_image();
    let reg = registry::start();
    let reference = reg.push(&base, "private/helper:1");

    let bin = tempfile::tempdir().unwrap();
    let path = registry::credential_helper(bin.path(), "habitus-test", &reg);
    assert_eq!(path, bin.path());
    let helper = bin.path().join("docker-credential-habitus-test");
    let ask = |action: &str, input: &str| {
        let mut child = Command::new(&helper)
            .arg(action)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run the credential helper");
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        let out = child.wait_with_output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
        )
    };
    for server in [reg.host().to_string(), format!("https://{}", reg.host())] {
        let (ok, out) = ask("get", &server);
        assert!(ok, "get {server}: {out}");
        let answer: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(answer["ServerURL"], server.as_str());
        assert_eq!(answer["Username"], reg.user());
        assert_eq!(answer["Secret"], reg.password());
    }
    assert_eq!(
        ask("get", "registry.example.com\n"),
        (
            false,
            "credentials not found in native keychain".to_string()
        )
    );
    let (ok, out) = ask("list", "");
    assert!(ok);
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&out).unwrap(),
        serde_json::json!({ reg.host(): reg.user() })
    );

    let config = tempfile::tempdir().unwrap();
    std::fs::write(
        config.path().join("config.json"),
        serde_json::json!({ "credHelpers": { reg.host(): "habitus-test" } }).to_string(),
    )
    .unwrap();
    let (pulled, stderr) = pull(config.path(), &reference, Some(&path));
    assert!(
        pulled,
        "pull through the credential helper failed:\n{stderr}"
    );
    assert_eq!(image_id(&reference), image_id(&base));
    docker(&["rmi", &reference]);
}

/// PATH with `dir` first.
fn path_with(dir: &std::path::Path) -> String {
    let old = std::env::var_os("PATH").unwrap_or_default();
    let mut paths = vec![dir.to_path_buf()];
    paths.extend(std::env::split_paths(&old));
    std::env::join_paths(paths)
        .unwrap()
        .to_string_lossy()
        .into_owned()
}

/// A DOCKER_CONFIG whose `config.json` sends `host` to helper `name`.
fn helper_config(host: &str, name: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("config.json"),
        format!(r#"{{"credHelpers":{{"{host}":"{name}"}}}}"#),
    )
    .unwrap();
    dir
}

const PRIVATE_YML: &str = "build:
  version: 2016-03-14
  steps:
    app:
      name: habitus-test/private-from
      dockerfile: Dockerfile
";

/// A step `FROM` a private image of the registry builds when the only
/// credentials are in a credential helper named in DOCKER_CONFIG; none of
/// them shows in the output.
fn private_base_builds_with_a_helper(builder: &str) {
    let reg = registry::start();
    let (h, cleanup) = crate::common::project("private-from", PRIVATE_YML);
    let pushed = reg.push(&base_image(), &format!("private/base-{}:1", cleanup.uid()));
    let helpers = tempfile::tempdir().unwrap();
    registry::credential_helper(helpers.path(), "habitustest", &reg);
    let config = helper_config(reg.host(), "habitustest");
    let out = h
        .file(
            "Dockerfile",
            format!("FROM {pushed}\nRUN echo built > /built\n"),
        )
        .env("DOCKER_CONFIG", config.path().display().to_string())
        .env("PATH", path_with(helpers.path()))
        .args(["--builder", builder, "--keep-all"])
        .run();
    out.assert_success();
    assert!(!out.stderr.contains(reg.password()), "{}", out.stderr);
    assert!(!out.stdout.contains(reg.password()), "{}", out.stdout);
    let image = format!("habitus-test/private-from-{}", cleanup.uid());
    assert_eq!(crate::common::read_in_image(&image, "/built"), "built\n");
}

#[test]
fn a_private_base_image_builds_with_credentials_only_in_a_helper() {
    private_base_builds_with_a_helper("legacy");
}

#[test]
fn a_private_base_image_builds_with_buildkit_and_a_helper() {
    // BuildKit 0.8 (Docker 20.10) reaches registries on 127.0.0.0/8 over
    // plain HTTP, and the test registry speaks HTTPS only; BuildKit 0.13
    // (Docker 26) tries HTTPS first.
    let api = docker(&["version", "--format", "{{.Server.APIVersion}}"]);
    let minor: u32 = api
        .trim()
        .split('.')
        .nth(1)
        .and_then(|m| m.parse().ok())
        .unwrap_or(0);
    if minor < 44 {
        eprintln!(
            "skipped on API {}: BuildKit pulls from 127.0.0.1 over plain HTTP there",
            api.trim()
        );
        return;
    }
    private_base_builds_with_a_helper("buildkit");
}

/// A helper that answers with the wrong password: the build fails naming
/// the registry; the password shows nowhere. A helper that is not on PATH
/// stops the build naming it and the registry.
#[test]
fn wrong_or_missing_helpers_fail_the_build_naming_the_registry() {
    let reg = registry::start();
    let (h, cleanup) = crate::common::project("private-wrong", PRIVATE_YML);
    let pushed = reg.push(&base_image(), &format!("private/base-{}:1", cleanup.uid()));
    let helpers = tempfile::tempdir().unwrap();
    let wrong = "wrong-Pa55word-for-the-test";
    let script = helpers.path().join("docker-credential-habituswrong");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nread server\ncase \"$1\" in get) printf '{{\"ServerURL\":\"%s\",\"Username\":\"habitus\",\"Secret\":\"{wrong}\"}}' \"$server\";; *) echo '{{}}';; esac\n"
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let h = h.file("Dockerfile", format!("FROM {pushed}\nRUN true\n"));

    let config = helper_config(reg.host(), "habituswrong");
    let h = h
        .env("DOCKER_CONFIG", config.path().display().to_string())
        .env("PATH", path_with(helpers.path()));
    let out = h.run();
    out.assert_code(1);
    // habitus's error for a failed instruction, with the daemon's words
    // for the registry's 401 (they differ between daemons): Docker 20.10
    // relays the registry's error, Docker 26 names the request it refused.
    let failed = format!("error: step `app` failed at `Step 1/2 : FROM {pushed}`: ");
    let repository = pushed
        .split_once('/')
        .unwrap()
        .1
        .rsplit_once(':')
        .unwrap()
        .0;
    let refused = [
        "unauthorized: authentication required".to_string(),
        format!(
            "failed to resolve reference \"{pushed}\": unexpected status from HEAD request to https://{}/v2/{repository}/manifests/1: 401 Unauthorized",
            reg.host()
        ),
    ];
    let dockerfile = format!("\n  dockerfile: {}\n", h.dir().join("Dockerfile").display());
    assert!(
        refused
            .iter()
            .any(|why| out.stderr.contains(&format!("{failed}{why}{dockerfile}"))),
        "no authentication failure of `FROM {pushed}`:\n{}",
        out.stderr
    );
    assert!(!out.stderr.contains(wrong), "{}", out.stderr);

    // The later DOCKER_CONFIG wins.
    let missing = helper_config(reg.host(), "habitus-not-installed");
    let out = h
        .env("DOCKER_CONFIG", missing.path().display().to_string())
        .run();
    out.assert_code(1);
    assert!(
        out.stderr.contains(&format!(
            "registry credentials for `{}`: `docker-credential-habitus-not-installed` is not on PATH",
            reg.host()
        )),
        "{}",
        out.stderr
    );
}

/// The JSON events of a `--json` run's stdout.
fn events(stdout: &str) -> Vec<serde_json::Value> {
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("`{l}`: {e}")))
        .collect()
}

/// A project of one step `app` named `name`, `push: true`, whose
/// Dockerfile runs `rest` on the test base image, with DOCKER_CONFIG
/// `config`.
fn push_project(name: &str, rest: &str, config: String) -> crate::common::Habitus {
    crate::common::Habitus::new()
        .file(
            "build.yml",
            format!(
                "build:\n  version: 2016-03-14\n  steps:\n    app:\n      name: {name}\n      dockerfile: Dockerfile\n      push: true\n"
            ),
        )
        .file("Dockerfile", crate::common::from_base_for(name, rest))
        .env("DOCKER_CONFIG", config)
}

/// `push: true` pushes the step's image under its name and every `tags:`
/// name with credentials only in a helper; `--metadata-file` names the
/// digest the registry serves for each, as curl reads it off the
/// registry; `image_pushed` events say the same; no password shows.
fn pushes_with_digests(builder: &str) {
    let reg = registry::start();
    let cleanup = crate::common::Cleanup::new("push");
    let uid = cleanup.uid().to_string();
    let repo = format!("team/app-{uid}");
    let name = format!("{}/{repo}:1", reg.host());
    let extra = format!("{}/{repo}:latest", reg.host());
    let yml = format!(
        "build:
  version: 2016-03-14
  steps:
    app:
      name: {name}
      dockerfile: Dockerfile
      push: true
      tags: [{extra}]
"
    );
    let helpers = tempfile::tempdir().unwrap();
    registry::credential_helper(helpers.path(), "habitustest", &reg);
    let config = helper_config(reg.host(), "habitustest");
    let meta = tempfile::tempdir().unwrap();
    let meta_file = meta.path().join("metadata.json");
    let out = crate::common::Habitus::new()
        .file("build.yml", yml)
        .file(
            "Dockerfile",
            crate::common::from_base(&format!("RUN echo {uid} > /pushed\n")),
        )
        .env("DOCKER_CONFIG", config.path().display().to_string())
        .env("PATH", path_with(helpers.path()))
        .args(["--builder", builder, "--json", "--metadata-file"])
        .arg(&meta_file)
        .run();
    eprintln!("{}", out.stderr);
    out.assert_success();
    assert!(!out.stderr.contains(reg.password()), "{}", out.stderr);
    assert!(!out.stdout.contains(reg.password()), "{}", out.stdout);

    let served = reg.served_digest(&repo, "1");
    assert_eq!(reg.served_digest(&repo, "latest"), served);
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&meta_file).unwrap()).unwrap();
    let app = &meta["app"];
    assert_eq!(app["digest"], served.as_str(), "{meta:#}");
    assert_eq!(app["names"], serde_json::json!([name, extra]), "{meta:#}");
    assert_eq!(app["image"], name.as_str());
    assert_eq!(app["image_id"], image_id(&name).as_str());

    let pushed: Vec<_> = events(&out.stdout)
        .into_iter()
        .filter(|e| e["event"] == "image_pushed")
        .collect();
    assert_eq!(pushed.len(), 2, "{}", out.stdout);
    for (event, expected) in pushed.iter().zip([&name, &extra]) {
        assert_eq!(event["step"], "app");
        assert_eq!(event["name"], expected.as_str());
        assert_eq!(event["digest"], served.as_str());
        assert!(event["size"].as_u64().unwrap() > 0, "{event}");
    }

    // What was pushed is the image: pulled back, it holds the step's file.
    crate::common::docker(&["rmi", &name, &extra]);
    reg.docker(&["pull", &name]);
    assert_eq!(
        crate::common::read_in_image(&name, "/pushed"),
        format!("{uid}\n")
    );
}

#[test]
fn push_tags_and_the_metadata_file_name_the_served_digest() {
    pushes_with_digests("legacy");
}

#[test]
fn push_with_buildkit_names_the_served_digest() {
    pushes_with_digests("buildkit");
}

/// A push the registry refuses (a wrong password in `auths`) fails the
/// build with exit code 1, naming the step, the name, the registry and
/// the 401; the password shows nowhere; the image is not kept.
#[test]
fn a_refused_push_fails_the_build_naming_the_registry_and_the_401() {
    let reg = registry::start();
    let cleanup = crate::common::Cleanup::new("push-refused");
    let name = format!("{}/team/refused-{}:1", reg.host(), cleanup.uid());
    let wrong = "Wr0ng-pa55word-of-the-push-test";
    let config = tempfile::tempdir().unwrap();
    use base64::Engine as _;
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("habitus:{wrong}"));
    std::fs::write(
        config.path().join("config.json"),
        serde_json::json!({ "auths": { reg.host(): { "auth": auth } } }).to_string(),
    )
    .unwrap();
    let out = push_project(&name, "RUN true\n", config.path().display().to_string()).run();
    out.assert_code(1);
    assert!(
        out.stderr
            .contains(&format!("\nerror: step `app`: pushing `{name}`: ")),
        "{}",
        out.stderr
    );
    // The hint habitus adds to a push the registry refused for want of a
    // valid login (`push_hint`), the same on every daemon.
    let host = reg.host();
    assert!(
        out.stderr.ends_with(&format!(
            "\nhint: the registry `{host}` wants a login (401): `docker login {host}`, or a credential helper for it in $DOCKER_CONFIG/config.json\n"
        )),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains(wrong), "{}", out.stderr);
    assert!(!image_exists(&name), "a failed build kept `{name}`");
}

/// Removes BuildKit's cache records whose description names `needle`
/// (the `RUN` of one test), and what was built on them: the daemon's
/// build cache, without touching other tests' records.
fn prune_build_cache(needle: &str) {
    let out = docker(&["system", "df", "-v", "--format", "{{json .BuildCache}}"]);
    let records: Vec<serde_json::Value> = serde_json::from_str(out.trim()).unwrap_or_default();
    let ids: Vec<String> = records
        .iter()
        .filter(|r| {
            r["Description"]
                .as_str()
                .is_some_and(|d| d.contains(needle))
        })
        .filter_map(|r| r["ID"].as_str().map(str::to_string))
        .collect();
    for id in ids {
        let _ = std::process::Command::new("docker")
            .args(["builder", "prune", "-af", "--filter", &format!("id={id}")])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}

/// Removes the untagged images whose history names `needle` (the `RUN`
/// of one test): on the containerd image store the images a classic
/// build makes for its instructions are not parents of its result, so
/// removing the result leaves them, and a later classic build takes its
/// `RUN` from them. (On a graph driver they are parents: removing the
/// result removed them, and none is dangling.)
fn remove_instruction_images(needle: &str) {
    let ids = docker(&["images", "-q", "--no-trunc", "--filter", "dangling=true"]);
    for id in ids.split_whitespace() {
        let history = std::process::Command::new("docker")
            .args([
                "image",
                "history",
                "--no-trunc",
                "--format",
                "{{.CreatedBy}}",
                id,
            ])
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output();
        let Ok(history) = history else { continue };
        if String::from_utf8_lossy(&history.stdout).contains(needle) {
            let _ = std::process::Command::new("docker")
                .args(["rmi", id])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status();
        }
    }
}

/// Removes the instruction images of builds whose `RUN` names its
/// string when dropped (see [`remove_instruction_images`]).
struct InstructionImages(String);

impl Drop for InstructionImages {
    fn drop(&mut self) {
        remove_instruction_images(&self.0);
    }
}

/// `cached` of the step's `step_finished` event.
fn cached_of(stdout: &str, step: &str) -> u64 {
    events(stdout)
        .iter()
        .find(|e| e["event"] == "step_finished" && e["step"] == step)
        .and_then(|e| e["cached"].as_u64())
        .unwrap_or_else(|| panic!("no step_finished for `{step}`:\n{stdout}"))
}

/// A build pushes its image (with inline cache for BuildKit); every local
/// trace of it goes (its images, and BuildKit's records of its `RUN`:
/// a rebuild without `cache_from` runs it again); a rebuild with
/// `cache_from:` the pushed image takes its `RUN` from it.
fn cache_from_reuses_a_pushed_image(builder: &str) {
    let cleanup = crate::common::Cleanup::new("cache");
    let uid = cleanup.uid().to_string();
    // Dropped after the registry, which removes the named images.
    let _instructions = InstructionImages(uid.clone());
    let reg = registry::start();
    let name = format!("{}/cache/app-{uid}:1", reg.host());
    let yml = |more: &str| {
        format!(
            "build:\n  version: 2016-03-14\n  steps:\n    app:\n      name: {name}\n      dockerfile: Dockerfile\n      cache_to: inline\n{more}"
        )
    };
    let run = |yml: String| {
        crate::common::Habitus::new()
            .file("build.yml", yml)
            .file(
                "Dockerfile",
                crate::common::from_base(&format!(
                    "RUN echo {uid} > /cached && echo step-{uid}\nCMD [\"cat\", \"/cached\"]\n"
                )),
            )
            .env("DOCKER_CONFIG", reg.docker_config().display().to_string())
            .args(["--builder", builder, "--json"])
            .run()
    };
    let first = run(yml("      push: true\n"));
    first.assert_success();
    assert_eq!(cached_of(&first.stdout, "app"), 0, "{}", first.stdout);
    let wipe = || {
        cleanup.sweep();
        remove_instruction_images(&uid);
        prune_build_cache(&uid);
        assert!(!image_exists(&name));
    };

    // Without `cache_from`, nothing local is left to take the RUN from.
    wipe();
    let control = run(yml(""));
    control.assert_success();
    assert_eq!(cached_of(&control.stdout, "app"), 0, "{}", control.stdout);
    wipe();

    let again = run(yml(&format!("      cache_from: [{name}]\n")));
    again.assert_success();
    assert!(
        cached_of(&again.stdout, "app") >= 1,
        "the RUN was not taken from `{name}`:\n{}\n{}",
        again.stdout,
        again.stderr
    );
    assert_eq!(
        crate::common::read_in_image(&name, "/cached"),
        format!("{uid}\n")
    );
}

#[test]
fn cache_from_a_pushed_image_caches_a_classic_rebuild() {
    cache_from_reuses_a_pushed_image("legacy");
}

#[test]
fn cache_from_a_pushed_image_caches_a_buildkit_rebuild() {
    cache_from_reuses_a_pushed_image("buildkit");
}

/// With secrets, a step's image is audited before its push: an image
/// that kept its secret fails the build and never reaches the registry.
#[test]
fn an_image_that_kept_a_secret_is_never_pushed() {
    let reg = registry::start();
    let cleanup = crate::common::Cleanup::new("push-leak");
    let repo = format!("team/leaky-{}", cleanup.uid());
    let name = format!("{}/{repo}:1", reg.host());
    let secret = format!(
        "pushed-secret-{}-{:08x}",
        cleanup.uid(),
        rand::random::<u32>()
    );
    let fetch_and_keep = r#"ARG HABITUS_URL
ARG HABITUS_CA
ARG HABITUS_TOKEN
RUN printf '%s' "$HABITUS_CA" > /tmp/ca.pem \
 && curl -fsS --cacert /tmp/ca.pem -H "Authorization: Bearer $HABITUS_TOKEN" "$HABITUS_URL/v1/secrets/file/key" -o /root/key \
 && rm /tmp/ca.pem
"#;
    let out = crate::common::Habitus::new()
        .file(
            "build.yml",
            format!(
                "build:\n  version: 2016-03-14\n  steps:\n    leaky:\n      name: {name}\n      dockerfile: Dockerfile\n      push: true\n      secrets:\n        key:\n          type: file\n          value: key.txt\n"
            ),
        )
        .file("key.txt", &secret)
        .file("Dockerfile", crate::common::from_base(fetch_and_keep))
        .env("DOCKER_CONFIG", reg.docker_config().display().to_string())
        .run();
    out.assert_code(1);
    assert!(
        out.stderr.contains("error: a secret reached an image:"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains("pushing `"), "{}", out.stderr);
    assert!(!out.stderr.contains(&secret));
    assert_eq!(reg.try_served_digest(&repo, "1"), None);
    assert!(!image_exists(&name));
}

/// `--push` pushes the images a build keeps (its leaf and `keep:` steps),
/// not the intermediate ones.
#[test]
fn the_push_flag_pushes_what_the_build_keeps() {
    let reg = registry::start();
    let cleanup = crate::common::Cleanup::new("push-flag");
    let uid = cleanup.uid().to_string();
    let name = |step: &str| format!("{}/flag/{step}-{uid}:1", reg.host());
    let yml = format!(
        "build:\n  version: 2016-03-14\n  steps:\n    base:\n      name: {}\n      dockerfile: Dockerfile.base\n    kept:\n      name: {}\n      dockerfile: Dockerfile.kept\n      keep: true\n    app:\n      name: {}\n      dockerfile: Dockerfile.app\n      depends_on: [base, kept]\n",
        name("base"),
        name("kept"),
        name("app")
    );
    let out = crate::common::Habitus::new()
        .file("build.yml", yml)
        .file(
            "Dockerfile.base",
            crate::common::from_base("RUN echo base > /base\n"),
        )
        .file(
            "Dockerfile.kept",
            crate::common::from_base("RUN echo kept > /kept\n"),
        )
        .file(
            "Dockerfile.app",
            format!(
                "FROM {}\nCOPY --from={} /kept /kept\n",
                name("base"),
                name("kept")
            ),
        )
        .env("DOCKER_CONFIG", reg.docker_config().display().to_string())
        .arg("--push")
        .run();
    out.assert_success();
    let repo = |step: &str| format!("flag/{step}-{uid}");
    assert_eq!(
        reg.try_served_digest(&repo("base"), "1"),
        None,
        "{}",
        out.stderr
    );
    assert!(reg.try_served_digest(&repo("kept"), "1").is_some());
    assert!(reg.try_served_digest(&repo("app"), "1").is_some());
}

/// On a terminal, the summary that replaces the live lines lists each
/// name pushed with its digest.
#[test]
fn a_terminal_shows_each_name_pushed_with_its_digest() {
    let reg = registry::start();
    let cleanup = crate::common::Cleanup::new("push-term");
    let repo = format!("team/term-{}", cleanup.uid());
    let name = format!("{}/{repo}:1", reg.host());
    let (screen, code) = push_project(
        &name,
        "RUN echo t > /t\n",
        reg.docker_config().display().to_string(),
    )
    .run_in_terminal(200);
    assert_eq!(code, 0, "{screen}");
    let digest = reg.served_digest(&repo, "1");
    assert!(screen.contains("pushed:"), "{screen}");
    assert!(screen.contains(&format!("{name}@{digest}")), "{screen}");
}

/// A push to a registry nothing answers at fails the build naming the
/// name and what to check, after the image was built.
#[test]
fn a_push_to_an_unreachable_registry_names_it() {
    let cleanup = crate::common::Cleanup::new("push-unreachable");
    // 127.0.0.2: the test registries listen on 127.0.0.1 only, so no
    // other test's registry can take this address meanwhile.
    let name = format!("127.0.0.2:9/team/gone-{}:1", cleanup.uid());
    let config = tempfile::tempdir().unwrap();
    let out = push_project(&name, "RUN true\n", config.path().display().to_string()).run();
    out.assert_code(1);
    assert!(
        out.stderr.contains(&format!("pushing `{name}`")),
        "{}",
        out.stderr
    );
    assert!(
        out.stderr
            .contains("the daemon cannot reach the registry `127.0.0.2:9`"),
        "{}",
        out.stderr
    );
    assert!(!image_exists(&name));
}

/// Ctrl-C while a push runs: the push stops, the build exits 130, the
/// registry has no manifest for the name, and the image and its other
/// names are gone from the daemon.
#[test]
fn ctrl_c_during_a_push_stops_it_and_leaves_nothing() {
    use std::io::{BufRead, BufReader};
    let reg = registry::start();
    let cleanup = crate::common::Cleanup::new("push-int");
    let repo = format!("team/int-{}", cleanup.uid());
    let name = format!("{}/{repo}:1", reg.host());
    let extra = format!("{}/{repo}:also", reg.host());
    let h = crate::common::Habitus::new()
        .file(
            "build.yml",
            format!(
                "build:\n  version: 2016-03-14\n  steps:\n    app:\n      name: {name}\n      dockerfile: Dockerfile\n      push: true\n      tags: [{extra}]\n"
            ),
        )
        // A layer large enough that its upload takes a while.
        .file(
            "Dockerfile",
            crate::common::from_base("RUN head -c 200000000 /dev/urandom > /big\n"),
        );
    let mut child = Command::new(env!("CARGO_BIN_EXE_habitus"))
        .arg("-d")
        .arg(h.dir())
        .env("DOCKER_CONFIG", reg.docker_config())
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
        if line.contains("The push refers to repository") {
            break;
        }
        line.clear();
    }
    assert!(seen.contains("pushing `"), "{seen}");
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
    assert!(rest.contains("interrupted by SIGINT"), "{rest}");
    assert!(!rest.contains(&format!("pushed `{name}`")), "{seen}{rest}");
    assert_eq!(reg.try_served_digest(&repo, "1"), None, "{seen}{rest}");
    assert!(!image_exists(&name));
    assert!(!image_exists(&extra));
}

/// Writes `docker-credential-<name>`, a shell script running `body`, into
/// `dir`.
fn helper_script(dir: &std::path::Path, name: &str, body: &str) {
    use std::os::unix::fs::PermissionsExt;
    let script = dir.join(format!("docker-credential-{name}"));
    std::fs::write(&script, format!("#!/bin/sh\n{body}\n")).unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// A project whose one step builds `FROM` the base image, with
/// DOCKER_CONFIG sending `helper.example` to helper `name` in `helpers`.
fn helper_project(
    prefix: &str,
    helpers: &std::path::Path,
    name: &str,
) -> (
    crate::common::Habitus,
    crate::common::Cleanup,
    tempfile::TempDir,
) {
    let (h, cleanup) = crate::common::project(prefix, PRIVATE_YML);
    let config = helper_config("helper.example", name);
    let h = h
        .file(
            "Dockerfile",
            crate::common::from_base_for(cleanup.uid(), "RUN true\n"),
        )
        .env("DOCKER_CONFIG", config.path().display().to_string())
        .env("PATH", path_with(helpers));
    (h, cleanup, config)
}

/// A helper that prints its whole answer, secret included, and exits 1
/// fails the build by its exit status; the secret shows nowhere: not on
/// stderr, not on stdout, not in `--json` events.
#[test]
fn a_failing_helper_fails_the_build_without_its_output() {
    let helpers = tempfile::tempdir().unwrap();
    let secret = "s3cr3t-helper-value";
    helper_script(
        helpers.path(),
        "habitusleaky",
        &format!(
            "read server\nprintf '{{\"ServerURL\":\"%s\",\"Username\":\"u\",\"Secret\":\"{secret}\"}}' \"$server\"\nexit 1"
        ),
    );
    let (h, _cleanup, _config) = helper_project("helper-leaky", helpers.path(), "habitusleaky");
    let plain = h.run();
    let h = h.args(["--json"]);
    for out in [plain, h.run()] {
        out.assert_code(1);
        let all = format!("{}{}", out.stdout, out.stderr);
        assert!(!all.contains(secret), "{all}");
        assert!(
            all.contains(
                "registry credentials for `helper.example`: `docker-credential-habitusleaky` failed (exit status: 1"
            ),
            "{all}"
        );
    }
}

/// A helper that never answers is killed after
/// HABITUS_CREDENTIAL_HELPER_TIMEOUT seconds (30 by default): the build
/// fails naming the helper, the registry and the limit.
#[test]
fn a_helper_that_hangs_is_killed_after_the_timeout() {
    let helpers = tempfile::tempdir().unwrap();
    helper_script(helpers.path(), "habitushang", "exec sleep 1000");
    let (h, _cleanup, _config) = helper_project("helper-hang", helpers.path(), "habitushang");
    let started = Instant::now();
    let out = h.env("HABITUS_CREDENTIAL_HELPER_TIMEOUT", "1").run();
    out.assert_code(1);
    assert!(
        out.stderr.contains(
            "registry credentials for `helper.example`: `docker-credential-habitushang` did not answer `get` within 1 s"
        ),
        "{}",
        out.stderr
    );
    assert!(
        started.elapsed() < std::time::Duration::from_secs(25),
        "{:?}",
        started.elapsed()
    );
}

/// Ctrl-C while a helper runs ends habitus at once (130), the helper
/// killed.
#[test]
fn ctrl_c_while_a_helper_runs_ends_the_build() {
    let helpers = tempfile::tempdir().unwrap();
    let marker = helpers.path().join("started");
    helper_script(
        helpers.path(),
        "habitusslow",
        &format!("touch '{}'\nexec sleep 1000", marker.display()),
    );
    let (h, _cleanup, config) = helper_project("helper-int", helpers.path(), "habitusslow");
    let mut child = Command::new(env!("CARGO_BIN_EXE_habitus"))
        .arg("-d")
        .arg(h.dir())
        .env("DOCKER_CONFIG", config.path())
        .env("PATH", path_with(helpers.path()))
        .env("HABITUS_CREDENTIAL_HELPER_TIMEOUT", "600")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let waited = Instant::now();
    while !marker.exists() {
        assert!(
            waited.elapsed() < std::time::Duration::from_secs(120),
            "the helper never ran"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let pid = child.id().to_string();
    let sent = Instant::now();
    assert!(Command::new("kill")
        .args(["-INT", &pid])
        .status()
        .unwrap()
        .success());
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut child.stderr.take().unwrap(), &mut rest).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(130), "{rest}");
    assert!(
        sent.elapsed() < std::time::Duration::from_secs(30),
        "{:?}: {rest}",
        sent.elapsed()
    );
}
