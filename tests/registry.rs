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
        let old = std::env::var_os("PATH").unwrap_or_default();
        let mut paths = vec![dir.to_path_buf()];
        paths.extend(std::env::split_paths(&old));
        cmd.env("PATH", std::env::join_paths(paths).unwrap());
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
