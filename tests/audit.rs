//! `habitus audit` on images built on the real daemon.

use crate::common::{base_image, docker, Cleanup, Habitus};

const SECRET: &str = "hunter2-the-deploy-key-0xC0FFEE";

/// Builds `dockerfile` (with `secret.txt` in its context) as `tag`. A
/// label naming `tag` follows its `FROM`, so that no other test's build
/// shares its images through the cache (and removes them under it).
fn build(dir: &std::path::Path, tag: &str, dockerfile: &str) {
    let (from, rest) = dockerfile.split_once('\n').unwrap_or((dockerfile, ""));
    let dockerfile = format!("{from}\nLABEL habitus.test.case=\"{tag}\"\n{rest}");
    std::fs::write(dir.join("Dockerfile"), dockerfile).unwrap();
    std::fs::write(dir.join("secret.txt"), format!("{SECRET}\n")).unwrap();
    docker(&["build", "-q", "-t", tag, dir.to_str().unwrap()]);
}

fn audit(args: &[&str]) -> crate::common::Output {
    Habitus::new().no_workdir().arg("audit").args(args).run()
}

/// `habitus audit ARGS` against a stand-in daemon whose `docker save` of
/// any image is `archive` (`AUDIT_TOKEN` set to the secret).
fn audit_served(archive: Vec<u8>, args: &[&str]) -> crate::common::Output {
    let fake = tempfile::tempdir().unwrap();
    let daemon = crate::common::fake_daemon::start(fake.path(), "1.41", archive);
    Habitus::new()
        .no_workdir()
        .env("AUDIT_TOKEN", SECRET)
        .arg("--host")
        .arg(daemon.host())
        .arg("audit")
        .args(args)
        .run()
}

#[test]
fn a_secret_deleted_by_a_later_layer_is_found_in_its_layer() {
    let c = Cleanup::new("audit-del");
    let dir = tempfile::tempdir().unwrap();
    let tag = format!("hb/audit-{}", c.uid());
    build(
        dir.path(),
        &tag,
        &format!(
            "FROM {}\nCOPY secret.txt /root/secret.txt\nRUN rm /root/secret.txt\n",
            base_image()
        ),
    );
    let secret_file = dir.path().join("secret.txt");
    let out = audit(&[
        &tag,
        "--secret-file",
        secret_file.to_str().unwrap(),
        "--shadowed",
    ]);
    out.assert_code(1);
    let layers = docker(&["inspect", "--format", "{{len .RootFS.Layers}}", &tag]);
    let copy_layer = layers.trim().parse::<usize>().unwrap() - 2;
    assert!(
        out.stdout.contains(&format!(
            "{tag}: secret `{}` (raw) in layer {copy_layer} (",
            secret_file.display()
        )) && out.stdout.contains(") at `/root/secret.txt`"),
        "{}",
        out.stdout
    );
    assert!(
        out.stdout
            .contains("`/root/secret.txt` (32 bytes) added in layer"),
        "{}",
        out.stdout
    );
    assert!(out.stdout.contains("deleted in layer"), "{}", out.stdout);
    assert!(!out.stdout.contains(SECRET) && !out.stderr.contains(SECRET));
}

#[test]
fn encoded_secrets_in_the_config_are_found_and_clean_images_pass() {
    let c = Cleanup::new("audit-cfg");
    let dir = tempfile::tempdir().unwrap();
    let leaky = format!("hb/audit-leaky-{}", c.uid());
    let clean = format!("hb/audit-clean-{}", c.uid());
    let b64 = base64_of(SECRET);
    build(
        dir.path(),
        &leaky,
        &format!("FROM {}\nENV TOKEN_B64=x{b64}\n", base_image()),
    );
    build(
        dir.path(),
        &clean,
        &format!("FROM {}\nRUN echo clean > /c\n", base_image()),
    );
    let out = Habitus::new()
        .no_workdir()
        .env("AUDIT_TOKEN", SECRET)
        .args([
            "audit",
            &leaky,
            &clean,
            "--secret-env",
            "AUDIT_TOKEN",
            "--json",
        ])
        .run();
    out.assert_code(1);
    let reports: Vec<serde_json::Value> = out
        .stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(reports.len(), 2);
    let hits = reports[0]["hits"].as_array().unwrap();
    let fields: Vec<&str> = hits
        .iter()
        .filter(|h| h["in"] == "config")
        .map(|h| h["field"].as_str().unwrap())
        .collect();
    // The ENV instruction is in the runtime config and in the history.
    assert!(fields.contains(&"config.Env[1]"), "{hits:?}");
    assert!(
        fields.iter().any(|f| f.ends_with(".created_by")),
        "{hits:?}"
    );
    for hit in hits {
        assert_eq!(hit["secret"], "AUDIT_TOKEN");
        assert_eq!(hit["encoding"], "base64");
        // The legacy layout also keeps a copy of the config per layer
        // (`<id>/json`): another document of the saved image.
        assert!(hit["in"] == "config" || hit["in"] == "metadata", "{hit}");
    }
    assert!(reports[1]["hits"].as_array().unwrap().is_empty());
    assert!(!out.stdout.contains(SECRET));

    let out = Habitus::new()
        .no_workdir()
        .env("AUDIT_TOKEN", SECRET)
        .args(["audit", &clean, "--secret-env", "AUDIT_TOKEN"])
        .run();
    out.assert_code(0);
    assert!(out.stderr.contains("no secret in"), "{}", out.stderr);
}

#[test]
fn audit_without_secrets_or_with_an_unknown_image_is_an_error() {
    let out = audit(&["some-image"]);
    out.assert_code(2);
    assert!(out.stderr.contains("nothing to look for"), "{}", out.stderr);
    let out = Habitus::new()
        .no_workdir()
        .env("AUDIT_TOKEN", SECRET)
        .args([
            "audit",
            "hb/no-such-image-at-all",
            "--secret-env",
            "AUDIT_TOKEN",
        ])
        .run();
    out.assert_code(2);
    assert!(
        out.stderr.contains("audit of `hb/no-such-image-at-all`"),
        "{}",
        out.stderr
    );
}

fn base64_of(text: &str) -> String {
    use base64::Engine as _;
    base64::engine::general_purpose::STANDARD.encode(text)
}

/// The members of a `docker save` archive, in order, links resolved to
/// their targets' bytes.
fn members_of(archive: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out: Vec<(String, Vec<u8>)> = Vec::new();
    let mut outer = tar::Archive::new(archive);
    for entry in outer.entries().unwrap() {
        let mut entry = entry.unwrap();
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry.path().unwrap().display().to_string();
        let mut data = Vec::new();
        std::io::Read::read_to_end(&mut entry, &mut data).unwrap();
        out.push((name, data));
    }
    out
}

fn archive_of(members: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (name, data) in members {
        let mut h = tar::Header::new_ustar();
        h.set_size(data.len() as u64);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, name, data.as_slice()).unwrap();
    }
    b.into_inner().unwrap()
}

#[test]
fn a_layer_the_audit_cannot_read_exits_2_naming_it_never_0() {
    let c = Cleanup::new("audit-unreadable");
    let dir = tempfile::tempdir().unwrap();
    let tag = format!("hb/audit-{}", c.uid());
    build(
        dir.path(),
        &tag,
        &format!(
            "FROM {}\nRUN head -c 300000 /dev/urandom > /noise\n",
            base_image()
        ),
    );
    let saved = dir.path().join("saved.tar");
    docker(&["save", "-o", saved.to_str().unwrap(), &tag]);
    let members = members_of(&std::fs::read(&saved).unwrap());
    let manifest: serde_json::Value = serde_json::from_slice(
        &members
            .iter()
            .find(|(n, _)| n == "manifest.json")
            .unwrap()
            .1,
    )
    .unwrap();
    let layers = manifest[0]["Layers"].as_array().unwrap();
    let top = layers.last().unwrap().as_str().unwrap().to_string();
    let top_index = layers.len() - 1;
    type Tamper = fn(&[u8]) -> Vec<u8>;
    let tamperings: [(&str, Tamper); 3] = [
        ("in a compression habitus cannot read", |_| {
            let mut xz = vec![0xfd, b'7', b'z', b'X', b'Z', 0];
            xz.extend_from_slice(&[1u8; 4096]);
            xz
        }),
        ("cut short", |data| data[..data.len() / 2].to_vec()),
        ("missing", |_| Vec::new()),
    ];
    for (what, tamper) in tamperings {
        let mut changed = members.clone();
        if what == "missing" {
            changed.retain(|(n, _)| *n != top);
        } else {
            for (name, data) in &mut changed {
                if *name == top {
                    *data = tamper(data);
                }
            }
        }
        let out = audit_served(archive_of(&changed), &[&tag, "--secret-env", "AUDIT_TOKEN"]);
        assert_eq!(
            out.code(),
            Some(2),
            "layer {what}\n--- stdout\n{}\n--- stderr\n{}",
            out.stdout,
            out.stderr
        );
        assert!(
            out.stderr
                .contains(&format!("cannot read layer {top_index} (`")),
            "layer {what}: {}",
            out.stderr
        );
        assert!(!out.stderr.contains("no secret in"), "{}", out.stderr);
    }
    // The untouched archive, served the same way, is clean: the failures
    // above come from the tampering, not from the stand-in daemon.
    let out = audit_served(archive_of(&members), &[&tag, "--secret-env", "AUDIT_TOKEN"]);
    out.assert_code(0);
    assert!(
        out.stderr
            .contains(&format!("no secret in {} layer(s)", layers.len())),
        "{}",
        out.stderr
    );
}

/// A made-up key in PEM armour: four lines of key material.
const KEY: &str = "-----BEGIN OPENSSH PRIVATE KEY-----
b3BlbnNzaC1rZXktdjEAAAAABG5vbmUAAAAEbm9uZQAAAAAAAAABAAAAMwAAAAtzc2gtZW
QyNTUxOQAAACDx0mRkL7kAVh4n9lN0q1d2j3Vh4QzF0xRkKkUuV7r0AAAAJh1y2c1dctnN
dXKJ7Qz3b1Qk0n2ZcmxN4p5eM8hG2pQ7yR9sT1uVwXaYbZcD3eF4gH5iJ6kL7mN8oP9qRs
AAAEBw9RnJ3Y0w6mZ1kQ2x8fN7c5a4b3d2e1f0g9h8i7j6k5l4m3n2o1p0q9r8s7t6u5==
-----END OPENSSH PRIVATE KEY-----
";

/// A multi-line secret whose lines are too short to be searched alone.
const WORDS: &str = "alpha-1\nbravo-22\ncharlie-333\n";

#[test]
fn a_key_a_run_reshaped_is_found_and_its_armour_alone_is_not() {
    let c = Cleanup::new("audit-forms");
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("id_ed25519");
    std::fs::write(&key_file, KEY).unwrap();
    let words_file = dir.path().join("words");
    std::fs::write(&words_file, WORDS).unwrap();
    let body: Vec<&str> = KEY.trim_end().lines().collect();
    let words: Vec<&str> = WORDS.lines().collect();
    let cases = [
        (
            "spaces",
            format!("{}\n", words.join(" ")),
            Some("its newlines as spaces"),
        ),
        // Line breaks do not count: CRLF is the value itself.
        ("crlf", words.join("\r\n"), Some("(raw) in layer")),
        ("line", format!("{}\n", body[2]), Some("line 3 of it alone")),
        // A key joined by spaces: the whole form is named, not the lines
        // inside it.
        ("key-spaces", body.join(" "), Some("its newlines as spaces")),
        (
            "armour",
            format!("{}\n{}\n", body[0], body[body.len() - 1]),
            None,
        ),
    ];
    for (name, content, expected) in cases {
        let context = dir.path().join(name);
        std::fs::create_dir(&context).unwrap();
        std::fs::write(context.join("leak.txt"), content).unwrap();
        std::fs::write(
            context.join("Dockerfile"),
            format!("FROM {}\nCOPY leak.txt /leak.txt\n", base_image()),
        )
        .unwrap();
        let tag = format!("hb/audit-{name}-{}", c.uid());
        docker(&["build", "-q", "-t", &tag, context.to_str().unwrap()]);
        let out = audit(&[
            &tag,
            "--secret-file",
            key_file.to_str().unwrap(),
            "--secret-file",
            words_file.to_str().unwrap(),
        ]);
        match expected {
            Some(form) => {
                assert_eq!(
                    out.code(),
                    Some(1),
                    "{name}: {}\n{}",
                    out.stdout,
                    out.stderr
                );
                assert!(
                    out.stdout.contains(form) && out.stdout.contains("at `/leak.txt`"),
                    "{name}: {}",
                    out.stdout
                );
            }
            None => assert_eq!(
                out.code(),
                Some(0),
                "{name}: {}\n{}",
                out.stdout,
                out.stderr
            ),
        }
        assert!(!out.stdout.contains(body[2]), "{}", out.stdout);
    }
}

fn sha256(data: &[u8]) -> String {
    format!(
        "sha256:{}",
        habitus::layer::hex(ring::digest::digest(&ring::digest::SHA256, data).as_ref())
    )
}

/// A one-layer image in the OCI layout, as a `docker save` of the
/// containerd image store would be (gzip layer), with `annotations` on the
/// index's manifest entry.
fn oci_save(layer: &[u8], annotations: serde_json::Value) -> Vec<u8> {
    use std::io::Write;
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(layer).unwrap();
    let blob = gz.finish().unwrap();
    let config = serde_json::to_vec(&serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": { "Cmd": ["sh"] },
        "rootfs": { "type": "layers", "diff_ids": [sha256(layer)] },
        "history": [{ "created_by": "COPY motd /etc/motd" }],
    }))
    .unwrap();
    let manifest = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": { "mediaType": "application/vnd.oci.image.config.v1+json", "digest": sha256(&config), "size": config.len() },
        "layers": [{ "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip", "digest": sha256(&blob), "size": blob.len() }],
    }))
    .unwrap();
    let index = serde_json::to_vec(&serde_json::json!({
        "schemaVersion": 2,
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": sha256(&manifest), "size": manifest.len(),
            "annotations": annotations,
        }],
    }))
    .unwrap();
    let path = |data: &[u8]| format!("blobs/sha256/{}", &sha256(data)[7..]);
    archive_of(&[
        (
            "oci-layout".into(),
            br#"{"imageLayoutVersion":"1.0.0"}"#.to_vec(),
        ),
        ("index.json".into(), index),
        (path(&manifest), manifest.clone()),
        (path(&config), config.clone()),
        (path(&blob), blob.clone()),
    ])
}

#[test]
fn a_key_only_in_a_pax_record_or_an_annotation_is_found() {
    let line = KEY.lines().nth(2).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let key_file = dir.path().join("id_ed25519");
    std::fs::write(&key_file, KEY).unwrap();
    let layer = |pax: Option<&str>| {
        let mut b = tar::Builder::new(Vec::new());
        if let Some(value) = pax {
            b.append_pax_extensions([("SCHILY.xattr.user.note", value.as_bytes())])
                .unwrap();
        }
        let mut h = tar::Header::new_ustar();
        h.set_size(5);
        h.set_mode(0o644);
        h.set_cksum();
        b.append_data(&mut h, "etc/motd", &b"hello"[..]).unwrap();
        b.into_inner().unwrap()
    };
    let cases = [
        (
            "pax",
            oci_save(&layer(Some(line)), serde_json::json!({})),
            Some("in its PAX record `SCHILY.xattr.user.note`"),
        ),
        (
            "annotation",
            oci_save(
                &layer(None),
                serde_json::json!({ "org.opencontainers.image.description": line }),
            ),
            Some("in `index.json` of the saved image at `manifests[0].annotations.org.opencontainers.image.description`"),
        ),
        ("clean", oci_save(&layer(None), serde_json::json!({})), None),
    ];
    for (name, archive, expected) in cases {
        let out = audit_served(
            archive,
            &["hb/crafted", "--secret-file", key_file.to_str().unwrap()],
        );
        match expected {
            Some(place) => {
                assert_eq!(
                    out.code(),
                    Some(1),
                    "{name}: {}\n{}",
                    out.stdout,
                    out.stderr
                );
                assert!(out.stdout.contains(place), "{name}: {}", out.stdout);
                assert!(
                    out.stdout.contains("line 3 of it alone"),
                    "{name}: {}",
                    out.stdout
                );
            }
            None => assert_eq!(
                out.code(),
                Some(0),
                "{name}: {}\n{}",
                out.stdout,
                out.stderr
            ),
        }
    }
}

#[test]
fn secrets_from_a_build_yml_are_resolved_as_the_build_resolves_them() {
    let c = Cleanup::new("audit-from");
    let project = tempfile::tempdir().unwrap();
    std::fs::create_dir(project.path().join("keys")).unwrap();
    std::fs::write(project.path().join("keys/deploy"), format!("{SECRET}\n")).unwrap();
    // A relative file path is the build's: from the build.yml's work dir,
    // not from where `habitus audit` runs.
    std::fs::write(
        project.path().join("build.yml"),
        "build:\n  version: 2016-03-14\n  steps:\n    app:\n      name: hb/app\n      dockerfile: Dockerfile\n      secrets:\n        deploy:\n          type: file\n          value: keys/deploy\n",
    )
    .unwrap();
    let tag = format!("hb/audit-from-{}", c.uid());
    build(
        project.path(),
        &tag,
        &format!("FROM {}\nCOPY secret.txt /root/leak\n", base_image()),
    );
    let file = project.path().join("build.yml");
    let out = audit(&[&tag, "--secrets-from", file.to_str().unwrap()]);
    out.assert_code(1);
    assert!(
        out.stdout
            .contains("secret `app: file/deploy` (raw) in layer")
            && out.stdout.contains("/root/leak"),
        "{}",
        out.stdout
    );
    // `--sec-providers` applies as it does to a build.
    let out = audit(&[
        &tag,
        "--secrets-from",
        file.to_str().unwrap(),
        "--sec-providers",
        "env",
    ]);
    // The build.yml diagnostic, with its line, as `habitus check` and a
    // build give it.
    out.assert_code(1);
    assert!(
        out.stderr
            .contains("build.yml:9:17: step `app`: secret type `file` is not enabled"),
        "{}",
        out.stderr
    );
    assert!(!out.stderr.contains(SECRET), "{}", out.stderr);
}
