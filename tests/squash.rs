//! `habitus squash` against the real daemon: the squashed filesystem equals
//! the original's, base layers stay shared, the config is kept, the image
//! runs, and a file deleted by a later layer is gone from every layer.

use std::collections::BTreeMap;
use std::io::Read;
use std::process::{Command, Stdio};

use crate::common::{base_image, docker, Cleanup, Habitus};

/// Builds `dockerfile` (with `files` in its context) as `tag`, classic
/// builder.
fn build(tag: &str, dockerfile: &str, files: &[(&str, &str)]) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("Dockerfile"), dockerfile).unwrap();
    for (name, content) in files {
        std::fs::write(dir.path().join(name), content).unwrap();
    }
    let run = || {
        Command::new("docker")
            .args(["build", "-q", "-t", tag])
            .arg(dir.path())
            .env("DOCKER_BUILDKIT", "0")
            .stdin(Stdio::null())
            .output()
            .unwrap()
    };
    let mut out = run();
    // On the containerd store, a build running beside this one may remove
    // an instruction image this one took from the cache (`unable to find
    // image`): built again, it no longer finds that entry.
    if !out.status.success()
        && String::from_utf8_lossy(&out.stderr).contains("unable to find image")
    {
        out = run();
    }
    assert!(
        out.status.success(),
        "docker build: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn squash(args: &[&str]) -> crate::common::Output {
    Habitus::new().no_workdir().arg("squash").args(args).run()
}

use crate::common::saved::{layers, saved_layers};

fn config(image: &str) -> serde_json::Value {
    serde_json::from_str(&docker(&[
        "image",
        "inspect",
        "-f",
        "{{json .Config}}",
        image,
    ]))
    .unwrap()
}

/// Paths the daemon adds to every container, with the container's time.
const DAEMON_PATHS: [&str; 6] = [
    ".dockerenv",
    "etc/hosts",
    "etc/hostname",
    "etc/resolv.conf",
    "etc/mtab",
    "dev/console",
];

/// The merged filesystem of `image` from `docker export`: path → type,
/// mode, owner, size, link target, content digest and (except for
/// directories and the daemon's own files) mtime.
fn filesystem(image: &str, uid: &str) -> BTreeMap<String, String> {
    let name = format!("fs-{uid}-{:x}", rand::random::<u32>());
    docker(&["create", "--name", &name, image, "/listing"]);
    let mut child = Command::new("docker")
        .args(["export", &name])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut listing = BTreeMap::new();
    let mut archive = tar::Archive::new(child.stdout.take().unwrap());
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let path = entry
            .path()
            .unwrap()
            .to_string_lossy()
            .trim_end_matches('/')
            .to_string();
        let header = entry.header().clone();
        let mut content = Vec::new();
        entry.read_to_end(&mut content).unwrap();
        let digest = ring::digest::digest(&ring::digest::SHA256, &content);
        let is_dir = header.entry_type().is_dir();
        let mtime = if is_dir || DAEMON_PATHS.contains(&path.as_str()) {
            0
        } else {
            header.mtime().unwrap()
        };
        listing.insert(
            path,
            format!(
                "{:?} {:o} {}:{} {} {:?} {:?} {mtime}",
                header.entry_type(),
                header.mode().unwrap(),
                header.uid().unwrap(),
                header.gid().unwrap(),
                content.len(),
                entry.link_name().unwrap(),
                digest.as_ref(),
            ),
        );
    }
    child.wait().unwrap();
    docker(&["rm", "-f", &name]);
    listing
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

/// Six layers above the base: adds, modifications, a deleted file, a
/// deleted directory, a directory emptied and refilled (opaque), a hard
/// link, a file that becomes a directory; plus a config to keep.
fn six_layer_dockerfile() -> String {
    format!(
        "FROM {}
RUN mkdir -p /app/old /app/keep /app/opaque && echo v1 > /app/file && echo k > /app/keep/k \
 && echo o1 > /app/opaque/a && echo o2 > /app/opaque/b && echo gone > /app/old/x && echo tmp > /tmp/t
COPY added.txt /app/added.txt
RUN echo v2 >> /app/file && chmod 0750 /app/file && rm /tmp/t && rm -rf /app/old && ln /app/keep/k /app/hard
RUN rm -rf /app/opaque && mkdir /app/opaque && echo new > /app/opaque/c && chmod 0600 /app/added.txt
RUN rm /app/keep/k && echo f > /app/turn && mkdir -p /root/.cache && echo c > /root/.cache/c
RUN rm /app/turn && mkdir /app/turn && echo d > /app/turn/inside
ENV GREETING=hello PATH=/bin:/usr/bin
LABEL com.example.squash=yes
EXPOSE 8080/tcp
WORKDIR /app
USER 0:0
CMD [\"cat\", \"/app/file\"]
",
        base_image()
    )
}

#[test]
fn a_six_layer_image_squashes_to_the_same_filesystem_keeping_base_layers_shared() {
    let cleanup = Cleanup::new("squash6");
    let uid = cleanup.uid();
    let source = format!("squash-src-{uid}:latest");
    build(
        &source,
        &six_layer_dockerfile(),
        &[("added.txt", "added\n")],
    );
    let base = base_image();
    let base_layers = layers(&base);
    assert_eq!(layers(&source).len(), base_layers.len() + 6);
    let original = filesystem(&source, uid);

    // Default: the base is found in the history and kept.
    let default_tag = format!("squash-default-{uid}:latest");
    let out = squash(&[&source, "-t", &default_tag]);
    out.assert_success();
    assert!(
        out.stderr
            .contains(&format!("keeping the layers of `{base}`")),
        "{}",
        out.stderr
    );
    // The daemon took the archive without the kept layers' bytes, and
    // the kept layers were only streamed.
    assert!(!out.stderr.contains("sending them"), "{}", out.stderr);
    assert!(
        !out.stderr.contains("with the kept layers spooled"),
        "{}",
        out.stderr
    );
    let squashed = layers(&default_tag);
    assert_eq!(squashed.len(), base_layers.len() + 1);
    assert_eq!(
        squashed[..base_layers.len()],
        base_layers[..],
        "base layers are shared"
    );
    assert_eq!(filesystem(&default_tag, uid), original);

    // `--all`: one layer.
    let all_tag = format!("squash-all-{uid}:latest");
    squash(&[&source, "-t", &all_tag, "--all"]).assert_success();
    assert_eq!(layers(&all_tag).len(), 1);
    assert_eq!(filesystem(&all_tag, uid), original);

    // `--from` the base explicitly gives the same image as the default.
    let from_tag = format!("squash-from-{uid}:latest");
    squash(&[&source, "-t", &from_tag, "--from", &base]).assert_success();
    assert_eq!(layers(&from_tag), squashed);

    for tag in [&default_tag, &all_tag, &from_tag] {
        let (before, after) = (config(&source), config(tag));
        for field in [
            "Env",
            "Cmd",
            "WorkingDir",
            "User",
            "Labels",
            "ExposedPorts",
            "Entrypoint",
        ] {
            assert_eq!(before[field], after[field], "{field} of {tag}");
        }
        assert_eq!(docker(&["run", "--rm", tag]), "v1\nv2\n", "{tag} runs");
    }
}

#[test]
fn a_config_the_import_cannot_carry_is_squashed_by_merge() {
    let cleanup = Cleanup::new("squashsig");
    let uid = cleanup.uid();
    let source = format!("squash-sig-{uid}:latest");
    build(
        &source,
        &format!(
            "FROM {}\nRUN echo a > /a\nRUN rm /a && echo b > /b\nSTOPSIGNAL SIGINT\nCMD [\"cat\", \"/b\"]\n",
            base_image()
        ),
        &[],
    );
    let tag = format!("squash-sig-out-{uid}:latest");
    let out = squash(&[&source, "-t", &tag, "--all"]);
    out.assert_success();
    assert!(out.stderr.contains("needs the merge"), "{}", out.stderr);
    assert_eq!(layers(&tag).len(), 1);
    assert_eq!(config(&tag)["StopSignal"], "SIGINT");
    assert_eq!(filesystem(&tag, uid), filesystem(&source, uid));
    assert_eq!(docker(&["run", "--rm", &tag]), "b\n");
}

#[test]
fn a_secret_removed_by_a_later_layer_is_in_no_layer_after_squash() {
    let cleanup = Cleanup::new("squashsecret");
    let uid = cleanup.uid();
    let secret = format!("s3cr3t-{uid}-do-not-ship");
    let source = format!("squash-secret-{uid}:latest");
    build(
        &source,
        &format!(
            "FROM {}\nCOPY secret.txt /secret.txt\nRUN cat /secret.txt > /dev/null\nRUN rm /secret.txt && echo ok > /ok\nCMD [\"cat\", \"/ok\"]\n",
            base_image()
        ),
        &[("secret.txt", &secret)],
    );
    assert!(
        saved_layers(&source)
            .iter()
            .any(|l| contains(&l.tar, secret.as_bytes())),
        "the unsquashed image still ships the secret"
    );
    for (tag, extra) in [
        (format!("squash-secret-default-{uid}:latest"), None),
        (format!("squash-secret-all-{uid}:latest"), Some("--all")),
    ] {
        let mut args = vec![source.as_str(), "-t", tag.as_str()];
        args.extend(extra);
        squash(&args).assert_success();
        let squashed = saved_layers(&tag);
        assert_eq!(squashed.len(), layers(&tag).len());
        for layer in squashed {
            assert!(
                !contains(&layer.tar, secret.as_bytes()),
                "a layer of {tag} holds the secret"
            );
            assert!(
                !layer.names.iter().any(|n| n.contains("secret.txt")),
                "a layer of {tag} names secret.txt: {:?}",
                layer.names
            );
        }
        // No history entry of the squashed image is an image that could
        // be run or saved to recover the file.
        let ids = docker(&["history", "-q", "--no-trunc", &tag]);
        let ids: Vec<&str> = ids.lines().collect();
        assert_eq!(
            ids[0],
            docker(&["image", "inspect", "-f", "{{.Id}}", &tag]).trim()
        );
        assert!(ids[1..].iter().all(|id| *id == "<missing>"), "{ids:?}");
        assert_eq!(docker(&["run", "--rm", &tag]), "ok\n");
    }
}

#[test]
fn a_base_that_is_not_a_base_is_refused() {
    let cleanup = Cleanup::new("squashnotbase");
    let uid = cleanup.uid();
    let one = format!("squash-one-{uid}:latest");
    let two = format!("squash-two-{uid}:latest");
    build(
        &one,
        &format!("FROM {}\nRUN echo 1 > /one\n", base_image()),
        &[],
    );
    build(
        &two,
        &format!("FROM {}\nRUN echo 2 > /two\n", base_image()),
        &[],
    );
    let out = squash(&[&two, "-t", &format!("squash-x-{uid}"), "--from", &one]);
    out.assert_failure();
    assert!(
        out.stderr
            .contains(&format!("error: `{one}` is not a base of `{two}`: its layers are not the bottom layers of `{two}`")),
        "{}",
        out.stderr
    );
    out.assert_code(1);
}

/// The temporary bytes a squash reports: `(… of temporary files)`.
fn temp_bytes(stderr: &str) -> f64 {
    let line = stderr
        .lines()
        .find(|l| l.contains("of temporary files)"))
        .unwrap_or_else(|| panic!("no temporary files figure in:\n{stderr}"));
    let figure = line.rsplit('(').next().unwrap();
    let mut words = figure.split_whitespace();
    let number: f64 = words.next().unwrap().parse().unwrap();
    let unit = match words.next().unwrap() {
        "bytes" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        other => panic!("unit `{other}` in {line}"),
    };
    number * unit
}

/// What is left in a directory.
fn entries(dir: &std::path::Path) -> Vec<String> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect()
}

/// A 1 GiB file of zeros (sparse, so cheap to build; the layer tar holds
/// all its bytes, its gzip blob about 1 MiB) in a kept base layer writes
/// none of them to the squash's temporary files; in a squashed layer it
/// stops the squash at `--squash-temp-limit`, removing its temporary
/// files and leaving no image.
#[test]
fn temporary_files_are_bounded_and_a_kept_layer_is_never_spooled() {
    let cleanup = Cleanup::new("squashbomb");
    let uid = cleanup.uid();
    let bomb_base = format!("squash-bombbase-{uid}:latest");
    let source = format!("squash-bomb-{uid}:latest");
    build(
        &bomb_base,
        &format!("FROM {}\nRUN truncate -s 1G /bomb\n", base_image()),
        &[],
    );
    build(
        &source,
        &format!("FROM {bomb_base}\nRUN echo a > /a\nRUN rm /a && echo b > /b\n"),
        &[],
    );
    let tmp = tempfile::tempdir().unwrap();
    let tmpdir = tmp.path().to_str().unwrap();

    let kept = format!("squash-bomb-kept-{uid}:latest");
    let out = Habitus::new()
        .no_workdir()
        .env("TMPDIR", tmpdir)
        .args(["squash", &source, "-t", &kept, "--from", &bomb_base])
        .args(["-squash-temp-limit=256MiB"])
        .run();
    out.assert_success();
    let written = temp_bytes(&out.stderr);
    assert!(
        written < 64.0 * 1024.0 * 1024.0,
        "the kept 1 GiB layer was spooled: {written} bytes\n{}",
        out.stderr
    );
    assert_eq!(docker(&["run", "--rm", &kept, "cat", "/b"]), "b\n");
    assert_eq!(layers(&kept).len(), layers(&bomb_base).len() + 1);
    assert!(entries(tmp.path()).is_empty(), "{:?}", entries(tmp.path()));

    let over = format!("squash-bomb-over-{uid}:latest");
    let out = Habitus::new()
        .no_workdir()
        .env("HABITUS_SQUASH_TEMP_LIMIT", "64MiB")
        .env("TMPDIR", tmpdir)
        .args(["squash", &source, "-t", &over, "--from", &base_image()])
        .run();
    out.assert_failure();
    assert_eq!(out.code(), Some(1));
    let bomb_layer = layers(&base_image()).len() + 1;
    for needle in [
        format!("error: squashing `{source}` stopped while writing layer {bomb_layer} (`sha256:"),
        "its temporary files would exceed the limit (".to_string(),
        "the limit is 67108864 bytes = 64.0 MiB)".to_string(),
        "raise the limit with `--squash-temp-limit SIZE`".to_string(),
    ] {
        assert!(out.stderr.contains(&needle), "{needle}\n{}", out.stderr);
    }
    assert!(!crate::common::image_exists(&over), "{over} was made");
    assert!(entries(tmp.path()).is_empty(), "{:?}", entries(tmp.path()));
}

/// A step whose cleanup squash crosses `--squash-temp-limit` fails the
/// build naming the step, the layer and the flag, and leaves no image
/// with the step's name, no container and no temporary files.
#[test]
fn a_cleanup_squash_over_the_temp_limit_fails_the_step_and_leaves_nothing() {
    let (h, c) = crate::common::project(
        "squashbombstep",
        "build:
  version: 2016-03-14
  steps:
    app:
      name: hb/bomb-app
      dockerfile: Dockerfile
      cleanup:
        commands:
          - rm /bomb
",
    );
    let uid = c.uid();
    let tmp = tempfile::tempdir().unwrap();
    let out = h
        .file(
            "Dockerfile",
            crate::common::from_base(&format!(
                "LABEL habitus.test.case={uid}\nRUN truncate -s 1G /bomb\n"
            )),
        )
        .env("TMPDIR", tmp.path())
        .arg("-squash-temp-limit=64MiB")
        .run();
    out.assert_failure();
    assert_eq!(out.code(), Some(1));
    for needle in [
        "error: step `app`: cleanup: squashing ",
        " stopped while writing layer ",
        "the limit is 67108864 bytes = 64.0 MiB)",
        "raise the limit with `--squash-temp-limit SIZE`",
    ] {
        assert!(out.stderr.contains(needle), "{needle}\n{}", out.stderr);
    }
    let image = format!("hb/bomb-app-{uid}");
    assert!(!crate::common::image_exists(&image), "{image} is left");
    assert_eq!(
        crate::common::containers_with_label(crate::common::UID_LABEL, uid),
        Vec::<String>::new()
    );
    assert!(entries(tmp.path()).is_empty(), "{:?}", entries(tmp.path()));
}
