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
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert!(out.stderr.contains(reg.host()), "{}", out.stderr);
    assert!(!out.stderr.contains(wrong), "{}", out.stderr);

    // The later DOCKER_CONFIG wins.
    let missing = helper_config(reg.host(), "habitus-not-installed");
    let out = h
        .env("DOCKER_CONFIG", missing.path().display().to_string())
        .run();
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "registry credentials for `{}`: `docker-credential-habitus-not-installed` is not on PATH",
            reg.host()
        )),
        "{}",
        out.stderr
    );
}
