//! Artifacts and cleanup on the real daemon: files copied out of a step's
//! image onto the host (modes, trees, `/src:dest`, `FROM scratch`, 200 MB),
//! used by the next step and removed afterwards; cleanup commands.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use crate::common::{
    base_image, containers_with_label, docker, from_base, from_base_for, image_exists, project,
    read_in_image, Cleanup, Habitus, UID_LABEL,
};

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
        .permissions()
        .mode()
        & 0o7777
}

fn assert_no_container_left(c: &Cleanup) {
    assert_eq!(
        containers_with_label(UID_LABEL, c.uid()),
        Vec::<String>::new(),
        "containers of this build are left"
    );
}

const COMPILE_AND_RUNTIME: &str = "build:
  version: 2016-03-14
  steps:
    compile:
      name: hb/art-compile
      dockerfile: Dockerfile.compile
      artifacts:
        - /usr/bin/app
        - /out/tree
        - /secret.key
        - /etc/app/conf:config
        - /bin/busybox:bin
    runtime:
      name: hb/art-runtime
      dockerfile: Dockerfile.runtime
      depends_on: [compile]
";

const COMPILE_DOCKERFILE: &str = "RUN mkdir -p /out/tree/a/b /etc/app \\
 && echo deep > /out/tree/a/b/c && echo top > /out/tree/top && chmod 0640 /out/tree/top \\
 && printf '#!/bin/sh\\necho app ran\\n' > /usr/bin/app && chmod 0755 /usr/bin/app \\
 && echo key > /secret.key && chmod 0600 /secret.key \\
 && echo conf > /etc/app/conf
";

/// The runtime image starts `FROM scratch` and holds only the artifacts.
const RUNTIME_DOCKERFILE: &str = "FROM scratch
ADD bin/busybox /bin/sh
ADD app /app
ADD tree /tree
ADD config/conf /conf
CMD [\"/bin/sh\", \"-c\", \"/app && read a < /tree/a/b/c && read b < /conf && echo $a $b\"]
";

#[test]
fn files_trees_modes_and_destinations_reach_the_next_step() {
    artifacts_reach_the_next_step("art-forms", "legacy");
}

#[test]
fn artifacts_of_buildkit_images_reach_the_next_step() {
    artifacts_reach_the_next_step("art-bk", "buildkit");
}

fn artifacts_reach_the_next_step(prefix: &str, builder: &str) {
    let (h, c) = project(prefix, COMPILE_AND_RUNTIME);
    let h = h
        .file("Dockerfile.compile", from_base(COMPILE_DOCKERFILE))
        .file("Dockerfile.runtime", RUNTIME_DOCKERFILE)
        .args(["--builder", builder])
        .arg("--keep-artifacts");
    let out = h.run();
    out.assert_success();
    let d = h.dir();
    // Go Habitus's layout: the base name under the work dir, or under
    // `dest` for `/src:dest`.
    assert_eq!(mode(&d.join("app")), 0o755);
    assert_eq!(mode(&d.join("secret.key")), 0o600);
    assert_eq!(mode(&d.join("tree/top")), 0o640);
    assert_eq!(
        std::fs::read_to_string(d.join("secret.key")).unwrap(),
        "key\n"
    );
    assert_eq!(
        std::fs::read_to_string(d.join("tree/a/b/c")).unwrap(),
        "deep\n"
    );
    assert_eq!(
        std::fs::read_to_string(d.join("config/conf")).unwrap(),
        "conf\n"
    );
    assert_eq!(
        std::fs::read(d.join("bin/busybox")).unwrap(),
        std::fs::read("/bin/busybox").unwrap()
    );
    assert!(out
        .stderr
        .contains("copied artifact `/out/tree` to `tree` in "));
    assert!(out
        .stderr
        .contains("copied artifact `/etc/app/conf` to `config/conf` in "));
    // The summary lists what was copied, and where.
    assert!(out.stderr.contains("artifacts copied:"), "{}", out.stderr);
    assert!(
        out.stderr.contains(&format!(
            "/etc/app/conf -> {}",
            d.join("config/conf").display()
        )),
        "{}",
        out.stderr
    );
    // The `FROM scratch` image made of artifacts runs.
    let image = format!("hb/art-runtime-{}", c.uid());
    assert_eq!(docker(&["run", "--rm", &image]), "app ran\ndeep conf\n");
    assert_no_container_left(&c);
}

#[test]
fn artifacts_are_removed_after_the_build_but_files_that_were_there_stay() {
    let (h, c) = project("art-remove", COMPILE_AND_RUNTIME);
    let h = h
        .file("Dockerfile.compile", from_base(COMPILE_DOCKERFILE))
        .file("Dockerfile.runtime", RUNTIME_DOCKERFILE)
        .file("config/mine.txt", "mine")
        .file("tree/notes.txt", "notes");
    let out = h.run();
    out.assert_success();
    let d = h.dir();
    for gone in ["app", "secret.key", "config/conf", "bin"] {
        assert!(!d.join(gone).exists(), "`{gone}` is still there");
    }
    // `tree` existed before the build: it stays, with what the build added
    // inside it (habitus never removes a path that existed before).
    assert_eq!(
        std::fs::read_to_string(d.join("config/mine.txt")).unwrap(),
        "mine"
    );
    assert_eq!(
        std::fs::read_to_string(d.join("tree/notes.txt")).unwrap(),
        "notes"
    );
    assert!(d.join("Dockerfile.compile").exists() && d.join("build.yml").exists());
    assert_no_container_left(&c);
}

#[test]
fn artifacts_are_removed_when_a_later_step_fails() {
    let (h, c) = project("art-fail", COMPILE_AND_RUNTIME);
    let h = h
        .file("Dockerfile.compile", from_base(COMPILE_DOCKERFILE))
        .file(
            "Dockerfile.runtime",
            "FROM scratch\nADD app /app\nADD missing /m\n",
        );
    let out = h.run();
    out.assert_failure();
    assert!(
        out.stderr.contains("step `runtime` failed"),
        "{}",
        out.stderr
    );
    assert!(!h.dir().join("app").exists());
    assert!(!h.dir().join("tree").exists());
    assert_no_container_left(&c);
}

#[test]
fn an_artifact_comes_out_of_a_scratch_image_without_a_shell() {
    let (h, c) = project(
        "art-scratch",
        "build:
  version: 2016-03-14
  steps:
    data:
      name: hb/art-scratch
      dockerfile: Dockerfile
      artifacts:
        - /data/hello.txt:out
",
    );
    let h = h
        .file(
            "Dockerfile",
            "FROM scratch\nADD hello.txt /data/hello.txt\n",
        )
        .file("hello.txt", "hello from scratch\n")
        .arg("--keep-artifacts");
    h.run().assert_success();
    assert_eq!(
        std::fs::read_to_string(h.dir().join("out/hello.txt")).unwrap(),
        "hello from scratch\n"
    );
    assert_no_container_left(&c);
}

#[test]
fn a_missing_artifact_fails_the_step_naming_it() {
    let (h, c) = project(
        "art-missing",
        "build:
  version: 2016-03-14
  steps:
    data:
      name: hb/art-missing
      dockerfile: Dockerfile
      artifacts:
        - /not/there
",
    );
    let h = h.file("Dockerfile", from_base_for(c.uid(), "RUN true\n"));
    let out = h.run();
    out.assert_failure();
    assert!(
        out.stderr
            .contains("step `data`: artifact `/not/there`: docker: "),
        "{}",
        out.stderr
    );
    assert_no_container_left(&c);
}

#[test]
fn a_200_mb_artifact_is_carried_into_the_next_image() {
    let (h, c) = project(
        "art-big",
        "build:
  version: 2016-03-14
  steps:
    make:
      name: hb/art-big-make
      dockerfile: Dockerfile.make
      artifacts:
        - /big
        - /big.sum
    use:
      name: hb/art-big-use
      dockerfile: Dockerfile.use
      depends_on: [make]
",
    );
    let h = h
        .file(
            "Dockerfile.make",
            from_base(
                "RUN head -c 200000000 /dev/urandom > /big && sha256sum /big > /big.sum && chmod 0751 /big\n",
            ),
        )
        .file(
            "Dockerfile.use",
            from_base("ADD big /big\nADD big.sum /big.sum\nRUN sha256sum -c /big.sum\n"),
        );
    let out = h.run();
    out.assert_success();
    assert!(
        out.stderr
            .contains("(1 file(s), 0 dir(s), 0 symlink(s), 200000000 bytes)"),
        "{}",
        out.stderr
    );
    let image = format!("hb/art-big-use-{}", c.uid());
    assert_eq!(
        docker(&[
            "run",
            "--rm",
            &image,
            "sh",
            "-c",
            "sha256sum -c /big.sum && stat -c %a /big"
        ]),
        "/big: OK\n751\n"
    );
    assert!(!h.dir().join("big").exists());
    assert_no_container_left(&c);
}

const CLEANUP_YML: &str = "build:
  version: 2016-03-14
  steps:
    app:
      name: hb/cleanup-app
      dockerfile: Dockerfile
      cleanup:
        commands:
          - CMD_ONE
";

fn cleanup_project(prefix: &str, command: &str) -> (Habitus, Cleanup) {
    let (h, c) = project(prefix, &CLEANUP_YML.replace("CMD_ONE", command));
    // The label makes each test's instructions its own: tests running at
    // once must not share the classic builder's cache (on the containerd
    // store the instruction images one build took from another's cache
    // are left behind; see README, "Images").
    let h = h.file("secret.txt", "s3cr3t-value-for-cleanup\n").file(
        "Dockerfile",
        from_base(&format!(
            "LABEL habitus.test.case={}
COPY secret.txt /secret.txt
RUN mkdir -p /work && echo data > /work/data && chmod 0644 /secret.txt
ENV HABITUS_TEST=kept
WORKDIR /work
USER 65534
CMD [\"cat\", \"/work/data\"]
",
            c.uid()
        )),
    );
    (h, c)
}

#[test]
fn a_failing_cleanup_command_fails_the_build_with_its_code() {
    let (h, c) = cleanup_project("cleanup-fail", "echo cleaning && exit 3");
    let out = h.run();
    out.assert_failure();
    out.assert_code(1);
    assert!(
        out.stderr
            .contains("step `app`: cleanup command `echo cleaning && exit 3` exited with code 3"),
        "{}",
        out.stderr
    );
    // Its output was streamed on the step's lines.
    assert!(out.stderr.contains("app | cleaning"), "{}", out.stderr);
    assert_no_container_left(&c);
}

#[test]
fn no_cleanup_skips_the_commands() {
    let (h, c) = cleanup_project("cleanup-skip", "exit 9");
    let out = h.arg("--no-cleanup").run();
    out.assert_success();
    let image = format!("hb/cleanup-app-{}", c.uid());
    assert_eq!(
        docker(&["run", "--rm", &image, "cat", "/secret.txt"]),
        "s3cr3t-value-for-cleanup\n"
    );
    assert_no_container_left(&c);
}

#[test]
fn cleanup_commands_run_as_root_in_an_image_with_only_sh() {
    // The image's user is 65534, the secret belongs to root: the command
    // runs as root all the same. Whatever the squash does next, the
    // command's output shows it ran, and no container is left.
    let (h, c) = cleanup_project("cleanup-root", "rm /secret.txt && echo removed-it");
    let out = h.run();
    out.assert_success();
    assert!(out.stderr.contains("app | removed-it"), "{}", out.stderr);
    // As root the `rm` worked: the file is gone from the image.
    let image = format!("hb/cleanup-app-{}", c.uid());
    let listing = docker(&["run", "--rm", "--user", "0", &image, "ls", "/"]);
    assert!(!listing.lines().any(|l| l == "secret.txt"), "{listing}");
    assert_no_container_left(&c);
}

/// Two steps of the same instructions share one image (the classic
/// builder's cache gives the second the first's image): the cleanup of
/// one removes the unsquashed image by a name of its own, so the image
/// stays for the other step's name, which still names what it built.
#[test]
fn a_cleanup_leaves_the_image_another_name_holds() {
    shared_image_and_cleanup("cleanup-shared", "legacy");
}

#[test]
fn a_cleanup_leaves_the_image_another_name_holds_with_buildkit() {
    shared_image_and_cleanup("cleanup-shared-bk", "buildkit");
}

fn shared_image_and_cleanup(prefix: &str, builder: &str) {
    let (plain, c) = project(
        prefix,
        "build:\n  version: 2016-03-14\n  steps:\n    plain:\n      name: hb/shared-plain\n      dockerfile: Dockerfile\n",
    );
    let uid = c.uid().to_string();
    // This test's own instructions: only its two builds share them.
    let dockerfile = from_base_for(&uid, "RUN echo shared > /shared\n");
    let plain = plain
        .args(["--builder", builder])
        .file("Dockerfile", &dockerfile);
    plain.run().assert_success();
    let kept = format!("hb/shared-plain-{uid}");
    let id = docker(&["image", "inspect", "--format", "{{.Id}}", &kept]);

    let cleaned = Habitus::new()
        .file(
            "build.yml",
            "build:\n  version: 2016-03-14\n  steps:\n    cleaned:\n      name: hb/shared-cleaned\n      dockerfile: Dockerfile\n      cleanup:\n        commands: [ \"rm /shared\" ]\n",
        )
        .file("Dockerfile", &dockerfile)
        .args(["--uid", &uid, "--builder", builder]);
    let out = cleaned.run();
    out.assert_success();
    assert!(
        !out.stderr.contains("could not remove the unsquashed image"),
        "{}",
        out.stderr
    );
    assert_eq!(
        docker(&["image", "inspect", "--format", "{{.Id}}", &kept]),
        id,
        "the plain step's name no longer names its image:\n{}",
        out.stderr
    );
    assert_eq!(read_in_image(&kept, "/shared"), "shared\n");
    let cleaned_image = format!("hb/shared-cleaned-{uid}");
    let listing = docker(&["run", "--rm", &cleaned_image, "ls", "/"]);
    assert!(!listing.lines().any(|l| l == "shared"), "{listing}");
    assert_no_container_left(&c);
}

#[test]
fn cleanup_removes_a_secret_from_every_layer_and_keeps_the_config() {
    cleanup_removes_a_secret("cleanup-secret", "legacy");
}

#[test]
fn cleanup_and_squash_work_on_buildkit_images() {
    cleanup_removes_a_secret("cleanup-bk", "buildkit");
}

fn cleanup_removes_a_secret(prefix: &str, builder: &str) {
    let (h, c) = cleanup_project(prefix, "rm /secret.txt");
    h.args(["--builder", builder]).run().assert_success();
    let image = format!("hb/cleanup-app-{}", c.uid());
    // Every layer is read, whatever its layout and compression; one that
    // cannot be read fails the test.
    let layers = crate::common::saved::saved_layers(&image);
    let needle = b"s3cr3t-value-for-cleanup";
    for layer in &layers {
        assert!(
            !layer.tar.windows(needle.len()).any(|w| w == needle),
            "a layer still holds the secret: {:?}",
            layer.names
        );
        assert!(
            !layer.names.iter().any(|n| n == "secret.txt"),
            "a layer still lists secret.txt: {:?}",
            layer.names
        );
    }
    let base_layers = crate::common::saved::layers(&base_image());
    assert_eq!(
        crate::common::saved::layers(&image)[..base_layers.len()],
        base_layers[..],
        "the base's layers are kept"
    );
    assert_eq!(
        layers.len(),
        base_layers.len() + 1,
        "the base's layers and one squashed layer"
    );
    // No image in the history can give the old layers back: each one it
    // names holds only layers of the squashed image (the base's, on
    // Docker 20.10; on the containerd store `docker history` may name any
    // image with the same layers, such as another test's image built on
    // the base).
    let squashed = crate::common::saved::layers(&image);
    // `history` asks again, after unpacking the image, when the containerd
    // store has no snapshot of it; any other failure fails the test with
    // the daemon's message.
    let history = crate::common::history(&image, &["-q"])
        .unwrap_or_else(|| panic!("`{image}` is gone before its history was read"));
    for id in history.lines() {
        if id == "<missing>" {
            continue;
        }
        // Another test may remove an image named here meanwhile
        // (`No such image`); any other failure fails the test.
        let Some(layers) = crate::common::docker_unless_gone(
            &["image", "inspect", "-f", "{{json .RootFS.Layers}}", id],
            &["No such image: "],
        ) else {
            continue;
        };
        let theirs: Vec<String> = serde_json::from_str(&layers).unwrap();
        assert!(
            squashed.starts_with(&theirs),
            "history entry `{id}` is an image with layers the squashed one lacks"
        );
    }
    let config = docker(&[
        "image",
        "inspect",
        "-f",
        "{{json .Config.Env}} {{json .Config.Cmd}} {{.Config.WorkingDir}} {{.Config.User}}",
        &image,
    ]);
    assert!(config.contains("\"HABITUS_TEST=kept\""), "{config}");
    assert!(
        config.contains("[\"cat\",\"/work/data\"] /work 65534"),
        "{config}"
    );
    assert_eq!(docker(&["run", "--rm", &image]), "data\n");
    assert_no_container_left(&c);
}

/// Security round 2: a repository that commits `out -> <elsewhere>` cannot
/// make the build write an artifact through it: the build fails before the
/// daemon is asked for anything (`habitus check` refuses it), and with the
/// check passed, an artifact destination that became a symlink since is
/// refused at write time. Nothing is created outside the work directory.
#[test]
fn an_artifact_destination_that_is_a_symlink_is_never_written_through() {
    for (prefix, builder) in [("art-link", "legacy"), ("art-link-bk", "buildkit")] {
        symlinked_destination(prefix, builder);
    }
}

fn symlinked_destination(prefix: &str, builder: &str) {
    let outside = tempfile::tempdir().unwrap();
    let (h, c) = project(
        prefix,
        &format!(
            "build:
  version: 2016-03-14
  steps:
    plant:
      name: hb/{prefix}-plant
      dockerfile: Dockerfile.plant
      builder: {builder}
      artifacts:
        - /planted/out:dest
    keys:
      name: hb/{prefix}-keys
      dockerfile: Dockerfile.keys
      builder: {builder}
      depends_on: [plant]
      artifacts:
        - /authorized_keys:dest/out
"
        ),
    );
    // At check time `dest/out` does not exist; the first step's artifact
    // is a symlink `out -> <outside>` that lands at `dest/out`.
    let h = h
        .file(
            "Dockerfile.plant",
            from_base(&format!(
                "RUN mkdir /planted && ln -s {} /planted/out\n",
                outside.path().display()
            )),
        )
        .file(
            "Dockerfile.keys",
            from_base_for(
                c.uid(),
                "RUN echo ssh-ed25519 AAAA attacker > /authorized_keys\n",
            ),
        )
        .arg("--keep-artifacts");
    let out = h.run();
    out.assert_failure();
    assert!(
        out.stderr
            .contains("artifact `/authorized_keys`: cannot create `")
            && out
                .stderr
                .contains("`dest/out` is a symlink; artifacts are never written through one"),
        "{}",
        out.stderr
    );
    assert_eq!(
        std::fs::read_dir(outside.path()).unwrap().count(),
        0,
        "something was written outside the work directory"
    );
    assert_no_container_left(&c);

    // A symlink committed in the repository is refused before any build.
    let (h, c) = project(
        &format!("{prefix}-c"),
        &format!(
            "build:
  version: 2016-03-14
  steps:
    keys:
      name: hb/{prefix}-c
      dockerfile: Dockerfile
      builder: {builder}
      artifacts:
        - /authorized_keys:out
"
        ),
    );
    let h = h.file(
        "Dockerfile",
        from_base_for(
            c.uid(),
            "RUN echo ssh-ed25519 AAAA attacker > /authorized_keys\n",
        ),
    );
    std::os::unix::fs::symlink(outside.path(), h.dir().join("out")).unwrap();
    let out = h.run();
    out.assert_failure();
    assert!(
        out.stderr.contains(
            "artifact destination `out` leads out of the work directory through the symlink `out`"
        ),
        "{}",
        out.stderr
    );
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
}

/// Security round 2: a Dockerfile or a context that becomes a symlink out
/// of the work directory after `habitus check` passed (here swapped while
/// the first step runs, as a planted link would be) is resolved again
/// right before use: the step fails naming the link, and nothing outside
/// is read.
#[test]
fn a_dockerfile_or_context_turned_symlink_mid_build_is_never_followed() {
    for (what, swap) in [("dockerfile", "Dockerfile.late"), ("context", "ctx")] {
        let outside = tempfile::tempdir().unwrap();
        let marker = format!("outside-{what}-{:08x}", rand::random::<u32>());
        std::fs::create_dir(outside.path().join("ctx")).unwrap();
        for dockerfile in [
            outside.path().join("Dockerfile.late"),
            outside.path().join("ctx/Dockerfile"),
        ] {
            std::fs::write(dockerfile, from_base(&format!("RUN echo {marker}\n"))).unwrap();
        }
        let prefix = format!("late-{what}");
        let (h, c) = project(
            &prefix,
            &format!(
                "build:
  version: 2016-03-14
  steps:
    first:
      name: hb/{prefix}-first
      dockerfile: Dockerfile
    late:
      name: hb/{prefix}-late
      context: ctx
      dockerfile: ../Dockerfile.late
      depends_on: [first]
"
            ),
        );
        let h = h
            .file("Dockerfile", from_base("RUN echo swap-now && sleep 3\n"))
            .file("Dockerfile.late", from_base("RUN echo inside\n"))
            .file("ctx/Dockerfile", from_base("RUN echo inside\n"));
        let out = h.run_when("first | swap-now", |dir| {
            let target = outside.path().join(swap);
            std::fs::rename(dir.join(swap), dir.join(format!("{swap}.moved"))).unwrap();
            std::os::unix::fs::symlink(&target, dir.join(swap)).unwrap();
        });
        out.assert_failure();
        let link = format!(
            "leads out of the work directory through the symlink `{swap}` -> `{}`",
            outside.path().join(swap).display()
        );
        let context = h.dir().join("ctx");
        let expected = match what {
            "dockerfile" => format!(
                "error: step `late`: dockerfile `{}`: {link}",
                h.dir().join("Dockerfile.late").display()
            ),
            _ => format!(
                "error: step `late`: context `{}`: {link}",
                context.display()
            ),
        };
        assert!(out.stderr.contains(&expected), "{expected}\n{}", out.stderr);
        assert!(!out.stderr.contains(&marker), "{}", out.stderr);
        assert!(!crate::common::image_exists(&format!(
            "hb/{prefix}-late-{}",
            c.uid()
        )));
    }
}

/// Makes the work directory of `h` a git repository and returns its
/// `.git/config`.
fn git_init(h: &Habitus) -> Vec<u8> {
    let status = std::process::Command::new("git")
        .args(["init", "-q"])
        .current_dir(h.dir())
        .status()
        .expect("run git");
    assert!(status.success(), "git init");
    std::fs::read(h.dir().join(".git/config")).unwrap()
}

/// A step's image holding a git configuration that would run a hook.
const HOOKED_DOCKERFILE: &str = "RUN mkdir -p /x/.git/hooks \\
 && printf '[core]\\n\\thooksPath = /tmp/evil\\n' > /x/config && cp /x/config /x/.git/config
";

#[test]
fn an_artifact_into_git_fails_before_the_build_and_leaves_git_alone() {
    for (prefix, artifact, lands) in [
        ("art-git", "/x/config:.git", ".git/config"),
        ("art-git-self", "/x/.git", ".git"),
        ("art-git-case", "/x/config:./sub/../.GIT/", ".GIT/config"),
    ] {
        let yml = format!(
            "build:\n  version: 2016-03-14\n  steps:\n    app:\n      name: hb/{prefix}\n      dockerfile: Dockerfile\n      artifacts: [\"{artifact}\"]\n"
        );
        let (h, c) = project(prefix, &yml);
        let h = h.file("Dockerfile", from_base(HOOKED_DOCKERFILE));
        let config = git_init(&h);
        let out = h.run();
        assert_eq!(out.code(), Some(1), "{artifact}: {}", out.stderr);
        let want = format!(
            ":7:19: step `app`: artifact `{artifact}` would land in `{lands}`, inside a `.git` folder, where git finds the hooks and configuration it runs"
        );
        assert!(out.stderr.contains(&want), "{want}\n---\n{}", out.stderr);
        assert!(!out.stderr.contains("error: error:"), "{}", out.stderr);
        assert!(!out.stderr.contains(" step(s) from "), "{}", out.stderr);
        assert!(!image_exists(&format!("hb/{prefix}-{}", c.uid())));
        assert_eq!(std::fs::read(h.dir().join(".git/config")).unwrap(), config);
    }
}

#[test]
fn a_folder_spilling_its_git_into_the_work_dir_is_refused_while_extracting() {
    let (h, c) = project(
        "art-git-spill",
        "build:\n  version: 2016-03-14\n  steps:\n    app:\n      name: hb/art-git-spill\n      dockerfile: Dockerfile\n      artifacts: [\"/x/.\"]\n",
    );
    let h = h.file("Dockerfile", from_base(HOOKED_DOCKERFILE));
    let config = git_init(&h);
    let out = h.run();
    assert_eq!(out.code(), Some(1), "{}", out.stderr);
    assert!(
        out.stderr.contains("artifact `/x/.`: entry `")
            && out.stderr.contains(
                "would land inside a `.git` folder, where git finds the hooks and configuration it runs"
            ),
        "{}",
        out.stderr
    );
    assert_eq!(std::fs::read(h.dir().join(".git/config")).unwrap(), config);
    assert!(!h.dir().join(".git/hooks/post-checkout").exists());
    assert_no_container_left(&c);
}
