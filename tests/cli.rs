use std::path::Path;
use std::process::Command;

use habitus::cli::parse;
use habitus::config::Config;
use habitus::manifest::EnvSource;
use habitus::model::SecretKind;

fn config(args: &[&str]) -> Config {
    let cli = parse(args.iter().copied()).unwrap_or_else(|e| panic!("{args:?}: {e}"));
    Config::from_flags(&cli.flags, Path::new("/work"), &|_| None).unwrap()
}

fn habitus(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_habitus"))
        .args(args)
        .env_remove("DOCKER_HOST")
        .output()
        .unwrap()
}

#[test]
fn blog_post_command_line_parses() {
    let c = config(&[
        "habitus",
        "--use-tls=false",
        "-host=unix:///var/run/docker.sock",
        "-secrets=false",
        "-keep-all",
    ]);
    assert_eq!(c.docker.host, "unix:///var/run/docker.sock");
    assert!(!c.docker.use_tls);
    assert!(c.build.keep_all);
}

#[test]
fn go_style_and_gnu_style_give_the_same_config() {
    let go = config(&[
        "habitus",
        "-f=ci/build.yml",
        "-d=app",
        "-no-cache",
        "-uid=Tenant1",
        "-keep-artifacts=true",
        "-rm=false",
        "-docker-memory=512m",
        "-docker-cpu-shares=512",
        "-network=host",
        "-env",
        "A=1",
        "-build=B=2",
        "-sec-providers=file",
    ]);
    let gnu = config(&[
        "habitus",
        "-f",
        "ci/build.yml",
        "-d",
        "app",
        "--no-cache",
        "--uid",
        "Tenant1",
        "--keep-artifacts",
        "--rm=false",
        "--docker-memory",
        "512m",
        "--docker-cpu-shares",
        "512",
        "--network",
        "host",
        "--env",
        "A=1",
        "--build",
        "B=2",
        "--sec-providers",
        "file",
    ]);
    assert_eq!(go, gnu);
    assert_eq!(go.file, Path::new("/work/ci/build.yml"));
    assert_eq!(go.workdir, Path::new("/work/app"));
    assert!(go.build.no_cache && go.build.keep_artifacts && !go.build.rm);
    assert_eq!(go.build.uid.as_deref(), Some("tenant1"));
    assert_eq!(go.build.memory, Some(512 << 20));
    assert_eq!(go.build.cpu_shares, Some(512));
    assert_eq!(go.secrets.providers, [SecretKind::File]);
}

#[test]
fn default_build_file_lives_in_the_work_dir() {
    let c = config(&["habitus", "-d", "/src/app"]);
    assert_eq!(c.file, Path::new("/src/app/build.yml"));
    assert_eq!(c.env, EnvSource::Process);
}

#[test]
fn env_and_build_repeat_and_split_on_the_first_equals_only() {
    let pem = "-----BEGIN X-----\nQUJD==\n-----END X-----";
    let env_arg = format!("KEY={pem}");
    let c = config(&[
        "habitus",
        "--env",
        "A=x=y",
        "--env",
        &env_arg,
        "--build",
        "TOKEN=abc==",
        "--build",
        "TOKEN=def",
        "--build=EMPTY=",
    ]);
    let EnvSource::Given(env) = &c.env else {
        panic!("expected --env values")
    };
    assert_eq!(env["A"], "x=y");
    assert_eq!(env["KEY"], pem);
    assert_eq!(c.build.build_args["TOKEN"], "def");
    assert_eq!(c.build.build_args["EMPTY"], "");
}

#[test]
fn bool_flags_take_go_values_only_with_equals() {
    assert!(!config(&["habitus", "-secrets=0", "--rm=f"]).build.rm);
    assert!(config(&["habitus", "--force-rm=TRUE"]).build.force_rm);
    // As in Go, `-keep-all false` sets the flag and leaves `false` as a
    // stray argument, which is an error.
    assert!(parse(["habitus", "-keep-all", "false"]).is_err());
}

#[test]
fn bad_values_are_rejected_with_exit_code_2() {
    let out = habitus(&["--docker-memory=lots"]);
    assert_eq!(out.status.code(), Some(2));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("invalid value 'lots' for '--docker-memory <SIZE>': `lots` is not a memory size (examples: `512m`, `2g`, `2GB`, `1048576`)"),
        "{stderr}"
    );

    let out = habitus(&["--env", "NOEQUALS"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("`NOEQUALS` is not NAME=VALUE"));

    let out = habitus(&["-no-such-flag"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("unexpected argument '--no-such-flag'"));

    let out = habitus(&["--sec-providers=file,vault"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("unknown secret provider `vault` (known: file, env)"));

    let out = habitus(&["--level=loud"]);
    assert_eq!(out.status.code(), Some(2));

    let out = habitus(&["-builder=kaniko"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("[possible values: legacy, buildkit]"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn builder_defaults_to_legacy_and_takes_go_syntax() {
    use habitus::model::Builder;
    assert_eq!(config(&["habitus"]).build.builder, Builder::Legacy);
    assert_eq!(
        config(&["habitus", "-builder=buildkit"]).build.builder,
        Builder::BuildKit
    );
    assert_eq!(
        config(&["habitus", "--builder", "buildkit"]).build.builder,
        Builder::BuildKit
    );
}

#[test]
fn help_lists_every_go_habitus_flag() {
    let out = habitus(&["--help"]);
    assert_eq!(out.status.code(), Some(0));
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in [
        "-f ",
        "-d ",
        "--no-cache",
        "--suppress",
        "--rm",
        "--force-rm",
        "--uid",
        "--level",
        "--pretty",
        "--host",
        "--certs",
        "--env",
        "--build",
        "--network",
        "--keep-all",
        "--keep-artifacts",
        "--use-tls",
        "--use-stat",
        "--no-cleanup",
        "--force-rmi",
        "--noprune-rmi",
        "--os",
        "--port",
        "--binding",
        "--secrets",
        "--after-build-commands",
        "--sec-providers",
        "--docker-memory",
        "--docker-cpuset-cpus",
        "--docker-cpu-shares",
        "--authentication-secret-server",
        "--password-secret-server",
        "--user-secret-server",
        "--help",
        "--version",
    ] {
        assert!(help.contains(flag), "--help lacks `{flag}`:\n{help}");
    }
    assert_eq!(habitus(&["help"]).status.code(), Some(0));
}

#[test]
fn version_in_every_form() {
    for args in [&["version"][..], &["--version"], &["-version"]] {
        let out = habitus(args);
        assert_eq!(out.status.code(), Some(0), "{args:?}");
        assert!(
            String::from_utf8_lossy(&out.stdout)
                .starts_with(&format!("habitus {}", env!("CARGO_PKG_VERSION"))),
            "{args:?}"
        );
    }
}

#[test]
fn verbose_version_shows_the_daemon_habitus_talks_to() {
    crate::common::docker_available();
    let out = Command::new(env!("CARGO_BIN_EXE_habitus"))
        .args(["version", "--verbose"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{stdout}");
    let server = crate::common::docker(&["version", "--format", "{{.Server.Version}}"]);
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines[0], format!("habitus {}", env!("CARGO_PKG_VERSION")));
    assert_eq!(lines[2], format!("docker: {}", server.trim()));
    for (line, prefix) in
        lines[1..]
            .iter()
            .zip(["daemon: `", "docker: ", "api: ", "storage: ", "buildkit: "])
    {
        assert!(line.starts_with(prefix), "{stdout}");
    }
}

#[test]
fn verbose_version_without_a_daemon_fails_naming_it() {
    let out = habitus(&["version", "-v", "--host", "unix:///nonexistent/docker.sock"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr)
        .contains("cannot connect to the Docker daemon at `unix:///nonexistent/docker.sock`"));
}

#[test]
fn missing_build_file_is_exit_code_1_naming_the_path() {
    let dir = tempfile::tempdir().unwrap();
    let out = habitus(&["check", "-d", dir.path().to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&dir.path().join("build.yml").display().to_string()),
        "{stderr}"
    );
}

#[test]
fn completions_and_man_page_come_from_the_flag_definitions() {
    for shell in ["bash", "zsh", "fish"] {
        let out = habitus(&["completions", shell]);
        assert_eq!(out.status.code(), Some(0), "{shell}");
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(script.contains("keep-all"), "{shell}: {script}");
        assert!(script.contains("after-build-commands"), "{shell}");
    }
    let out = habitus(&["man"]);
    assert_eq!(out.status.code(), Some(0));
    let page = String::from_utf8_lossy(&out.stdout);
    assert!(page.starts_with(".ie"), "{page}");
    assert!(page.contains(".TH habitus 1"), "{page}");
    assert!(page.contains("sec\\-providers"), "{page}");
}

#[test]
fn verbose_is_level_debug() {
    use habitus::model::Level;
    assert_eq!(config(&["habitus", "-v"]).output.level, Level::Debug);
    assert_eq!(config(&["habitus", "--verbose"]).output.level, Level::Debug);
    assert_eq!(config(&["habitus", "-verbose"]).output.level, Level::Debug);
    assert_eq!(
        config(&["habitus", "-v", "--level=trace"]).output.level,
        Level::Trace
    );
    assert_eq!(config(&["habitus"]).output.level, Level::Info);
}

/// Security round 2: `habitus check` fails on an artifact destination that
/// is a symlink out of the work directory, naming file:line and the link.
#[test]
fn check_fails_on_a_symlinked_artifact_destination_naming_the_line_and_link() {
    let work = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    std::fs::write(work.path().join("Dockerfile"), "FROM scratch\n").unwrap();
    std::os::unix::fs::symlink(outside.path(), work.path().join("out")).unwrap();
    let yml = work.path().join("build.yml");
    std::fs::write(
        &yml,
        "build:\n  version: 2016-03-14\n  steps:\n    a:\n      name: a\n      dockerfile: Dockerfile\n      artifacts: [\"/authorized_keys:out/authorized_keys\"]\n",
    )
    .unwrap();
    let out = habitus(&[
        "check",
        "-f",
        yml.to_str().unwrap(),
        "-d",
        work.path().to_str().unwrap(),
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    let want = format!(
        "error: {}:7:19: step `a`: artifact destination `out/authorized_keys` leads out of the work directory through the symlink `out` -> `{}`",
        yml.display(),
        outside.path().display()
    );
    assert!(stderr.contains(&want), "{stderr}");
    assert_eq!(std::fs::read_dir(outside.path()).unwrap().count(), 0);
}

/// A Dockerfile that is a symlink is read when the link stays inside the
/// work directory (`Dockerfile -> docker/Dockerfile`) and refused, naming
/// build.yml's line, the step, the `dockerfile:` key, the link and the fix,
/// when it leads to `/etc/passwd` or to `../outside`.
#[test]
fn check_follows_a_dockerfile_symlink_only_inside_the_work_directory() {
    let parent = tempfile::tempdir().unwrap();
    let work = parent.path().join("work");
    std::fs::create_dir_all(work.join("docker")).unwrap();
    std::fs::write(work.join("docker/Dockerfile"), "FROM scratch\n").unwrap();
    std::fs::write(parent.path().join("outside"), "FROM scratch\n").unwrap();
    let yml = work.join("build.yml");
    std::fs::write(
        &yml,
        "build:\n  version: 2016-03-14\n  steps:\n    app:\n      name: app\n      dockerfile: Dockerfile\n",
    )
    .unwrap();
    let check = || {
        let args = [
            "check",
            "-f",
            yml.to_str().unwrap(),
            "-d",
            work.to_str().unwrap(),
        ];
        habitus(&args)
    };
    std::os::unix::fs::symlink("docker/Dockerfile", work.join("Dockerfile")).unwrap();
    let out = check();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for target in ["/etc/passwd", "../outside"] {
        std::fs::remove_file(work.join("Dockerfile")).unwrap();
        std::os::unix::fs::symlink(target, work.join("Dockerfile")).unwrap();
        let out = check();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        let want = format!(
            "error: {}:6:19: step `app`: dockerfile `Dockerfile` leads out of the work directory through the symlink `Dockerfile` -> `{target}`",
            yml.display()
        );
        assert!(stderr.contains(&want), "{want}\n{stderr}");
        assert!(
            stderr.contains("remove the symlink `Dockerfile`"),
            "{stderr}"
        );
    }
}

/// A password file that cannot be used stops habitus before anything
/// runs (exit 2), naming the flag, the file and the fix; it cannot be
/// combined with the argv form. Both flags show in `--help`.
#[test]
fn a_bad_password_file_is_a_usage_error_naming_the_file_and_the_fix() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("missing");
    let empty = dir.path().join("empty");
    std::fs::write(&empty, "\n").unwrap();
    for (file, what) in [
        (&missing, "cannot be read: No such file or directory (os error 2); write the password into a file only you can read (`chmod 600`)"),
        (&empty, "is empty; write the password into a file only you can read (`chmod 600`)"),
    ] {
        let out = habitus(&["check", "--password-secret-server-file", file.to_str().unwrap()]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{stderr}");
        assert_eq!(
            stderr,
            format!("error: --password-secret-server-file `{}`: {what}\n", file.display())
        );
    }
    let out = habitus(&[
        "check",
        "--password-secret-server=x",
        "--password-secret-server-file",
        empty.to_str().unwrap(),
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
    let help = String::from_utf8_lossy(&habitus(&["--help"]).stdout).into_owned();
    assert!(
        help.contains("--password-secret-server-file <FILE>"),
        "{help}"
    );
    assert!(help.contains("HABITUS_SECRET_SERVER_PASSWORD"), "{help}");
}

/// `habitus check --untrusted` reports every refusal without a daemon, and
/// a build refuses the same before it would contact one.
#[test]
fn check_untrusted_reports_every_refusal_without_a_daemon() {
    let h = crate::common::Habitus::new()
        .file(
            "build.yml",
            "build:
  version: 2016-03-14
  steps:
    app:
      name: app
      dockerfile: Dockerfile
      args: { WHO: _env(USER) }
      ssh: true
      secrets:
        key: { type: file, value: /etc/hostname }
      after_build_command: id
",
        )
        .file("Dockerfile", "FROM scratch\n")
        .env("DOCKER_HOST", "unix:///nonexistent/docker.sock");
    /// Arguments and environment of one run.
    type Run<'a> = (&'a [&'a str], &'a [(&'a str, &'a str)]);
    let runs: [Run; 5] = [
        (&["check", "--untrusted"], &[]),
        (&["check", "-untrusted=true"], &[]),
        (&["check"], &[("HABITUS_UNTRUSTED", "1")]),
        (&["--untrusted"], &[]),
        (&["build"], &[("HABITUS_UNTRUSTED", "true")]),
    ];
    for (args, env) in runs {
        let out = h.run_with(args, env);
        assert_eq!(out.code(), Some(1), "{}", out.stderr);
        assert!(out.stdout.is_empty(), "{}", out.stdout);
        for flag in [
            "(allow it with --env USER=VALUE)",
            "(allow it with --ssh)",
            "(allow it with --secret-dir /etc)",
            "(allow it with --after-build-commands)",
        ] {
            assert!(out.stderr.contains(flag), "{flag}\n---\n{}", out.stderr);
        }
        assert_eq!(out.stderr.matches("error: ").count(), 4, "{}", out.stderr);
        assert!(!out.stderr.contains("docker.sock"), "{}", out.stderr);
    }
    // Every flag given: the check passes, still without a daemon.
    let out = h.run_with(
        &[
            "check",
            "--untrusted",
            "--env",
            "USER=ci",
            "--ssh",
            "--secret-dir=/etc",
            "--after-build-commands",
        ],
        &[],
    );
    out.assert_success();
}

#[test]
fn untrusted_flags_show_in_help_and_parse_in_go_syntax() {
    let out = habitus(&["--help"]);
    let help = String::from_utf8_lossy(&out.stdout);
    for flag in ["--untrusted", "--secret-dir <DIR>", "--ssh"] {
        assert!(help.contains(flag), "--help lacks `{flag}`:\n{help}");
    }
    let go = config(&[
        "habitus",
        "-untrusted",
        "-secret-dir=/run/keys",
        "-secret-dir",
        "/srv/keys",
        "-ssh=true",
    ]);
    let gnu = config(&[
        "habitus",
        "--untrusted",
        "--secret-dir",
        "/run/keys",
        "--secret-dir=/srv/keys",
        "--ssh",
    ]);
    assert_eq!(go, gnu);
    let untrusted = go.untrusted.expect("untrusted");
    assert_eq!(
        untrusted.secret_dirs,
        [Path::new("/run/keys"), Path::new("/srv/keys")]
    );
    assert!(untrusted.ssh && !untrusted.after_build_commands);
    assert_eq!(go.env, EnvSource::Given(Default::default()));
    assert_eq!(config(&["habitus", "-ssh=false"]).untrusted, None);
}
