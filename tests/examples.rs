//! Every directory under `examples/` is a valid build: its build.yml loads,
//! plans, and passes `habitus check`, so the examples cannot go stale. The
//! examples that need no compiler also build end to end on the test base
//! image (`--build <BASE ARG>=<test base image>`, a unique `--uid`), and the
//! tests check what their READMEs promise: what the image prints, and that
//! no layer holds the secret.

use std::path::{Path, PathBuf};
use std::process::Command;

use habitus::manifest::{load, EnvSource, LoadOptions};
use habitus::model::SecretKind;
use habitus::plan::Plan;
use habitus::render;

/// Every example directory, sorted; panics if there are none.
fn examples() -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut dirs: Vec<PathBuf> = std::fs::read_dir(&root)
        .unwrap_or_else(|e| panic!("cannot read `{}`: {e}", root.display()))
        .map(|entry| entry.expect("readable examples directory").path())
        .filter(|path| path.is_dir())
        .collect();
    dirs.sort();
    assert!(!dirs.is_empty(), "no examples under `{}`", root.display());
    dirs
}

/// The `_env()` values an example's README has its users set (none for
/// most): without them its names would be empty, a warning and an error.
fn example_env(dir: &Path) -> Vec<(&'static str, &'static str)> {
    match dir.file_name().and_then(|name| name.to_str()) {
        Some("ci-push") => vec![("REGISTRY", "registry.example.com/team")],
        _ => Vec::new(),
    }
}

/// Loads the example through the library and builds its plan.
fn load_and_plan(dir: &Path) -> (habitus::manifest::Manifest, Plan) {
    let file = dir.join("build.yml");
    let vars = example_env(dir);
    let env = if vars.is_empty() {
        EnvSource::Process
    } else {
        EnvSource::Given(
            vars.iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        )
    };
    let loaded = load(&LoadOptions {
        file: &file,
        workdir: dir,
        env: &env,
        sec_providers: &SecretKind::ALL,
        untrusted: None,
    })
    .unwrap_or_else(|diagnostics| panic!("`{}` does not load:\n{diagnostics}", file.display()));
    assert!(
        loaded.warnings.is_empty(),
        "`{}` has warnings: {:?}",
        file.display(),
        loaded.warnings
    );
    let nodes: Vec<(String, Vec<String>)> = loaded
        .manifest
        .steps
        .iter()
        .map(|s| (s.label.clone(), s.depends_on.clone()))
        .collect();
    let plan = Plan::new(&nodes)
        .unwrap_or_else(|errors| panic!("`{}` does not plan: {errors:?}", file.display()));
    (loaded.manifest, plan)
}

#[test]
fn every_example_loads_and_plans() {
    for dir in examples() {
        let (manifest, plan) = load_and_plan(&dir);
        assert!(!plan.is_empty(), "`{}` has no steps", dir.display());
        let text = render::text(&manifest, &plan);
        for step in &manifest.steps {
            assert!(text.contains(&step.label), "{text}");
        }
    }
}

/// `habitus check -f examples/X/build.yml -d examples/X` succeeds and lists
/// every step.
#[test]
fn every_example_passes_habitus_check() {
    for dir in examples() {
        let (manifest, _) = load_and_plan(&dir);
        let output = Command::new(env!("CARGO_BIN_EXE_habitus"))
            .arg("check")
            .arg("-f")
            .arg(dir.join("build.yml"))
            .arg("-d")
            .arg(&dir)
            .args(
                example_env(&dir)
                    .iter()
                    .map(|(k, v)| format!("--env={k}={v}")),
            )
            .output()
            .expect("cannot run habitus");
        let stdout = String::from_utf8_lossy(&output.stdout);
        assert!(
            output.status.success(),
            "habitus check failed for `{}` ({}):\n{stdout}{}",
            dir.display(),
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
        for step in &manifest.steps {
            assert!(stdout.contains(&step.label), "{stdout}");
        }
    }
}

#[test]
fn secretapp_ships_the_build_artifact() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/secretapp");
    let (manifest, plan) = load_and_plan(&dir);
    let build = plan.index_of("build").expect("a `build` step");
    assert_eq!(plan.level(build), 0);
    let sources: Vec<&str> = manifest.steps[build]
        .artifacts
        .iter()
        .map(|a| a.source.as_str())
        .collect();
    assert_eq!(sources, ["/go/bin/secretapp"]);
    let mut runtimes: Vec<&str> = plan
        .dependents(build)
        .iter()
        .map(|&i| plan.label(i))
        .collect();
    runtimes.sort();
    assert_eq!(runtimes, ["alpine", "scratch"]);
    assert_eq!(plan.leaves().len(), 2);
}

#[test]
fn diamond_forks_and_joins() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/diamond");
    let (_, plan) = load_and_plan(&dir);
    let levels: Vec<Vec<&str>> = plan
        .levels()
        .iter()
        .map(|level| level.iter().map(|&i| plan.label(i)).collect())
        .collect();
    assert_eq!(levels, [vec!["a"], vec!["b", "c"], vec!["d"]]);
    let order: Vec<&str> = plan.order().iter().map(|&i| plan.label(i)).collect();
    assert_eq!(order, ["a", "b", "c", "d"]);
}

/// The diamond example builds end to end on the test base image, and
/// writes nothing into the example's folder.
#[test]
fn diamond_example_builds() {
    use crate::common::{base_image, docker, Cleanup};
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/diamond");
    let before = std::fs::read_dir(&dir).unwrap().count();
    let cleanup = Cleanup::new("exdiamond");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_habitus"))
        .arg("-d")
        .arg(&dir)
        .args(["--uid", cleanup.uid(), "--build"])
        .arg(format!("BASE_IMAGE={}", base_image()))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let image = format!("habitus-examples/diamond-d-{}", cleanup.uid());
    assert_eq!(docker(&["run", "--rm", &image]), "step a\nstep b\nstep c\n");
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), before);
}

/// The directory of `examples/<name>`.
fn example_dir(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("examples")
        .join(name)
}

/// `habitus -d examples/<name> --uid <uid> <args>`, run from a temporary
/// directory.
fn run_example(name: &str, uid: &str, args: &[String]) -> crate::common::Output {
    crate::common::Habitus::new()
        .no_workdir()
        .arg("-d")
        .arg(example_dir(name))
        .args(["--uid", uid])
        .args(args)
        .run()
}

/// `--build NAME=<test base image>` for each name.
fn base_args(names: &[&str]) -> Vec<String> {
    let base = crate::common::base_image();
    names
        .iter()
        .flat_map(|name| ["--build".to_string(), format!("{name}={base}")])
        .collect()
}

/// The entries of an example directory, to prove a build wrote nothing
/// into it.
fn listing(dir: &Path) -> Vec<PathBuf> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)
        .unwrap()
        .map(|entry| entry.unwrap().path())
        .collect();
    entries.sort();
    entries
}

/// `habitus audit <images> <args>`.
fn audit(images: &[&str], args: &[&str]) -> crate::common::Output {
    crate::common::Habitus::new()
        .no_workdir()
        .arg("audit")
        .args(images)
        .args(args)
        .run()
}

/// The clone step reads the key from `_env(HOME)/.ssh/id_rsa` through the
/// secrets server (`CLONE_CMD` stands in for `git clone`: it records the
/// key's sha256), the app image ships what it produced, and neither image
/// holds the key: the runner's audit says so, `habitus audit` agrees, and
/// so does a byte search of every layer.
#[test]
fn private_git_clone_uses_the_key_and_ships_none_of_it() {
    git_clone_uses_the_key_and_ships_none_of_it("private-git-clone");
}

/// The same with BuildKit: the key is mounted, not fetched.
#[test]
fn buildkit_git_clone_mounts_the_key_and_ships_none_of_it() {
    git_clone_uses_the_key_and_ships_none_of_it("buildkit-git-clone");
}

fn git_clone_uses_the_key_and_ships_none_of_it(example: &str) {
    use crate::common::leak::assert_no_secret_in_image;
    use crate::common::{docker, Cleanup};
    let dir = example_dir(example);
    let before = listing(&dir);
    let cleanup = Cleanup::new("expgc");
    let uid = cleanup.uid();
    let home = tempfile::tempdir().unwrap();
    std::fs::create_dir(home.path().join(".ssh")).unwrap();
    let key_path = home.path().join(".ssh/id_rsa");
    let key = format!(
        "-----BEGIN OPENSSH PRIVATE KEY-----\nkey-of-{uid}-{:016x}\n-----END OPENSSH PRIVATE KEY-----\n",
        rand::random::<u64>()
    );
    std::fs::write(&key_path, &key).unwrap();

    let mut args = base_args(&["BUILDER_IMAGE", "RUNTIME_IMAGE"]);
    args.extend([
        "--keep-all".to_string(),
        // Each run has its own key; BuildKit's cache key of a `RUN` does not
        // include the values it mounts.
        "--no-cache".to_string(),
        "--env".to_string(),
        format!("HOME={}", home.path().display()),
        "--build".to_string(),
        "CLONE_CMD=mkdir -p /src && sha256sum /root/.ssh/id_rsa | cut -d' ' -f1 > /src/key.sum"
            .to_string(),
    ]);
    let out = run_example(example, uid, &args);
    out.assert_success();
    let src = format!("habitus-examples/{example}-src-{uid}");
    let app = format!("habitus-examples/{example}-app-{uid}");
    for image in [&src, &app] {
        assert!(
            out.stderr
                .contains(&format!("of `{image}` searched, 0 secret occurrence(s)")),
            "{}",
            out.stderr
        );
    }
    let served = if example.starts_with("buildkit") {
        "secret mount `id_rsa` of step `clone`: served"
    } else {
        "GET /v1/secrets/file/id_rsa from "
    };
    assert!(out.stderr.contains(served), "{}", out.stderr);
    assert!(!out.stderr.contains("key-of-"), "{}", out.stderr);

    // The image runs: `ls -A /src` lists what the command produced, made
    // with the real key.
    assert_eq!(docker(&["run", "--rm", &app]), "key.sum\n");
    // One read of the file itself (the archive API, not a container's
    // output), compared as it came: an empty file fails the test.
    let sum = crate::common::read_in_image(&app, "/src/key.sum");
    let expected = crate::common::sha256_hex(&std::fs::read(&key_path).unwrap());
    assert_eq!(
        sum.trim(),
        expected,
        "/src/key.sum of `{app}` is not the key's sha256; /src:\n{}",
        docker(&["run", "--rm", &app, "ls", "-la", "/src"])
    );
    // BuildKit 0.8 (Docker 20.10) leaves the empty mount point behind;
    // BuildKit 0.13 (Docker 26) leaves no `/root/.ssh` at all. Either
    // way no file with content is there.
    assert_eq!(
        docker(&[
            "run",
            "--rm",
            &src,
            "sh",
            "-c",
            "if [ -e /root/.ssh ]; then find /root/.ssh -type f -size +0; fi",
        ]),
        "",
        "the key file is left in the clone image"
    );

    let key_arg = key_path.to_str().unwrap();
    let audited = audit(&[&src, &app], &["--secret-file", key_arg]);
    audited.assert_success();
    assert!(
        audited.stderr.contains(&format!("{app}: no secret in ")),
        "{audited:?}"
    );
    for image in [&src, &app] {
        assert_no_secret_in_image(image, key.trim_end().as_bytes());
    }
    assert_eq!(listing(&dir), before);
}

/// Two builds of the uid example run at the same time with different
/// uids and revisions: both succeed, each app image starts from its own
/// build's base, and each build removes only its own intermediate image.
#[test]
fn uid_example_builds_twice_side_by_side() {
    use crate::common::{docker, image_exists, Cleanup};
    let first = Cleanup::new("exuid");
    let second = Cleanup::new("exuid");
    let base = base_args(&["BASE_IMAGE"]);
    let builds: Vec<std::thread::JoinHandle<crate::common::Output>> = [&first, &second]
        .into_iter()
        .map(|cleanup| {
            let uid = cleanup.uid().to_string();
            let mut args = base.clone();
            args.extend(["--build".to_string(), format!("REVISION=rev-{uid}")]);
            std::thread::spawn(move || run_example("uid", &uid, &args))
        })
        .collect();
    for build in builds {
        build.join().unwrap().assert_success();
    }
    for cleanup in [&first, &second] {
        let uid = cleanup.uid();
        let app = format!("habitus-examples/uid-app-{uid}:1.0");
        assert_eq!(
            docker(&["run", "--rm", &app]),
            format!("built from rev-{uid}\n")
        );
        assert!(!image_exists(&format!("habitus-examples/uid-base-{uid}")));
        assert!(!image_exists(&format!(
            "habitus-examples/uid-app:1.0-{uid}"
        )));
    }
}

/// The build step's COPY puts `netrc` into a layer; its cleanup deletes it
/// and squashes the image. The runtime image built on it prints what the
/// README says, and `habitus audit` finds the file's content in no layer.
#[test]
fn cleanup_squash_example_ships_no_credentials() {
    use crate::common::leak::assert_no_secret_in_image;
    use crate::common::{docker, Cleanup};
    let dir = example_dir("cleanup-squash");
    let before = listing(&dir);
    let cleanup = Cleanup::new("excsq");
    let uid = cleanup.uid();
    run_example("cleanup-squash", uid, &base_args(&["BUILDER_IMAGE"])).assert_success();
    let image = format!("habitus-examples/cleanup-squash-{uid}");
    assert_eq!(
        docker(&["run", "--rm", &image]),
        "vendor files from downloads.example.com\nno credentials in this image\n"
    );
    let netrc = dir.join("netrc");
    let audited = audit(&[&image], &["--secret-file", netrc.to_str().unwrap()]);
    audited.assert_success();
    assert!(
        audited.stderr.contains(&format!("{image}: no secret in ")),
        "{audited:?}"
    );
    assert_no_secret_in_image(&image, b"example-only-3f9c2a7d41");
    assert_eq!(listing(&dir), before);
}

/// Without the cleanup the same audit finds the credentials in the layer
/// of the COPY and exits 1: the check above can fail.
#[test]
fn cleanup_squash_example_without_cleanup_fails_the_audit() {
    use crate::common::Cleanup;
    let dir = example_dir("cleanup-squash");
    let cleanup = Cleanup::new("excsqno");
    let uid = cleanup.uid();
    let mut args = base_args(&["BUILDER_IMAGE"]);
    args.push("--no-cleanup".to_string());
    run_example("cleanup-squash", uid, &args).assert_success();
    let image = format!("habitus-examples/cleanup-squash-{uid}");
    let netrc = dir.join("netrc");
    let audited = audit(&[&image], &["--secret-file", netrc.to_str().unwrap()]);
    assert_eq!(audited.code(), Some(1), "{audited:?}");
    assert!(audited.stdout.contains("at `/root/.netrc`"), "{audited:?}");
}

/// secretapp on the test base image: `GO_BUILD` swaps the Go compile for a
/// shell script at the same path (there is no Go image here). The artifact
/// reaches both runtime images, the alpine variant runs it, and the
/// artifact copied into the example directory is gone afterwards.
#[test]
fn secretapp_example_ships_the_artifact_in_both_runtime_images() {
    use crate::common::{docker, image_exists, Cleanup};
    let dir = example_dir("secretapp");
    let before = listing(&dir);
    let cleanup = Cleanup::new("exsecretapp");
    let uid = cleanup.uid();
    let mut args = base_args(&["BUILDER_IMAGE", "RUNTIME_IMAGE"]);
    args.extend([
        "--build".to_string(),
        r##"GO_BUILD=mkdir -p /go/bin && printf "%s\n" "#!/bin/sh" "echo hello, \${1:-world}" > /go/bin/secretapp && chmod +x /go/bin/secretapp"##
            .to_string(),
    ]);
    run_example("secretapp", uid, &args).assert_success();
    let alpine = format!("habitus-examples/secretapp-{uid}:alpine");
    assert_eq!(docker(&["run", "--rm", &alpine, "you"]), "hello, you\n");
    assert_eq!(docker(&["run", "--rm", &alpine]), "hello, world\n");
    // The scratch image has no shell to run the stand-in: its filesystem
    // is the binary and nothing else.
    let scratch = format!("habitus-examples/secretapp-{uid}:scratch");
    let container = docker(&["create", "--label", &format!("habitus.uid={uid}"), &scratch]);
    let exported = Command::new("docker")
        .args(["export", container.trim()])
        .output()
        .unwrap();
    assert!(exported.status.success());
    let mut files: Vec<String> = tar::Archive::new(exported.stdout.as_slice())
        .entries()
        .unwrap()
        .map(|entry| entry.unwrap().path().unwrap().display().to_string())
        .filter(|path| !path.ends_with('/'))
        .collect();
    files.retain(|path| {
        // What the daemon adds to every container.
        ![
            ".dockerenv",
            "etc/hosts",
            "etc/hostname",
            "etc/resolv.conf",
            "etc/mtab",
            "dev/console",
        ]
        .contains(&path.as_str())
    });
    assert_eq!(files, ["secretapp"]);
    assert!(!image_exists(&format!(
        "habitus-examples/secretapp-build-{uid}"
    )));
    assert_eq!(listing(&dir), before);
}

/// Without REGISTRY the ci-push example does not load, and says what to
/// set.
#[test]
fn ci_push_example_without_registry_names_it() {
    let out = crate::common::Habitus::new()
        .no_workdir()
        .args(["check", "-d"])
        .arg(example_dir("ci-push"))
        .env_remove("REGISTRY")
        .run();
    assert_eq!(out.code(), Some(1), "{out:?}");
    assert!(
        out.stderr.contains("`REGISTRY` is not set"),
        "{}",
        out.stderr
    );
}

/// `ci.sh` of the ci-push example, as a CI job runs it against the test
/// registry (its login in DOCKER_CONFIG) on the test base image, with no
/// jq on PATH (the sed fallback): habitus pushes the app image, and the
/// digest in meta.json and the one the script deploys are the digest the
/// registry serves; the image pulled by that digest runs the program.
#[test]
fn ci_push_example_deploys_the_digest_the_registry_serves() {
    use crate::common::registry;
    let reg = registry::start();
    let dir = example_dir("ci-push");
    let before = listing(&dir);
    let work = tempfile::tempdir().unwrap();
    // PATH: habitus and the few tools ci.sh uses, no jq.
    let bin = tempfile::tempdir().unwrap();
    std::os::unix::fs::symlink(env!("CARGO_BIN_EXE_habitus"), bin.path().join("habitus")).unwrap();
    for tool in ["dirname", "tr", "sed"] {
        let found = ["/usr/bin", "/bin"]
            .iter()
            .map(|d| Path::new(d).join(tool))
            .find(|p| p.exists())
            .unwrap_or_else(|| panic!("no `{tool}` in /usr/bin or /bin"));
        std::os::unix::fs::symlink(found, bin.path().join(tool)).unwrap();
    }
    let namespace = format!("{}/ci", reg.host());
    let out = Command::new("/bin/sh")
        .arg(dir.join("ci.sh"))
        .arg("--build")
        .arg(format!("BUILDER_IMAGE={}", crate::common::base_image()))
        .current_dir(work.path())
        .env("PATH", bin.path())
        .env("REGISTRY", &namespace)
        .env("DOCKER_CONFIG", reg.docker_config())
        .env_remove("METADATA_FILE")
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "ci.sh failed ({}):\n{stdout}\n{stderr}{}",
        out.status,
        reg.log_tail()
    );
    assert!(
        stderr.contains("built by step `app` as a stage of its BuildKit build"),
        "the build step was not folded into app's build:\n{stderr}"
    );

    let served = reg.served_digest("ci/ci-push", "latest");
    let meta: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(work.path().join("meta.json")).unwrap())
            .unwrap();
    let name = format!("{namespace}/ci-push:latest");
    assert_eq!(meta["app"]["digest"], served.as_str(), "{meta:#}");
    assert_eq!(meta["app"]["names"], serde_json::json!([name]), "{meta:#}");
    let deployed = format!("{namespace}/ci-push@{served}");
    assert_eq!(stdout.trim(), format!("deploy {deployed}"));

    // What is deployed is the app: pulled by its digest, it runs.
    crate::common::docker(&["rmi", &name]);
    reg.docker(&["pull", &deployed]);
    assert_eq!(
        crate::common::docker(&["run", "--rm", &deployed, "CI"]),
        "hello from ci-push, CI\n"
    );
    assert_eq!(listing(&dir), before);
}
