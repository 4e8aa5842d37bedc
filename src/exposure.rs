//! Secrets a build would ship inside its images: build args and `ENV`
//! variables whose names say they hold one. Every `RUN` records the build
//! args it sees in the image history (`|1 NPM_TOKEN=… /bin/sh -c …`, with
//! the classic builder and with BuildKit alike), and `ENV` is part of the
//! image config, so whoever pulls the image reads them with
//! `docker history` or `docker inspect`.
//!
//! [`looks_like_secret`] is the rule of BuildKit's `SecretsUsedInArgOrEnv`
//! check. [`in_step`] applies it to a step's `args:` that take `_env()`
//! and to the `ARG` and `ENV` instructions of its Dockerfile. `habitus
//! check` prints what it finds as warnings (errors with `--strict`), and
//! every build prints them as it starts. Nothing here reads a value: only
//! names.

use std::fmt;
use std::path::{Path, PathBuf};

use crate::dockerfile::{self, VariableKind};
use crate::manifest::{Diagnostic, Step};

/// Name parts that mark a secret: BuildKit's deny list, plus `pat` (a
/// personal access token: `GITHUB_PAT`).
const SECRET_PARTS: &[&str] = &[
    "apikey",
    "auth",
    "credential",
    "credentials",
    "key",
    "password",
    "pword",
    "passwd",
    "pat",
    "secret",
    "token",
];

/// Name parts that clear a name of suspicion: BuildKit's allow list
/// (`PUBLIC_KEY`, `TOKEN_FILE`, `KEY_VERSION`).
const HARMLESS_PARTS: &[&str] = &["public", "file", "version"];

/// The build args habitus gives the steps that declare secrets. The token
/// is valid for one step's secrets and dies with the step; the others are
/// public.
const HABITUS_ARGS: &[&str] = &[
    "HABITUS_HOST",
    "HABITUS_PORT",
    "HABITUS_URL",
    "HABITUS_CA",
    "HABITUS_TOKEN",
];

/// Go Habitus's basic-auth password, a build arg in the compatibility mode
/// of `--authentication-secret-server`.
const BASIC_AUTH_PASSWORD: &str = "habitus_password";

/// How to pass a secret instead.
const FIX: &str = "declare it under `secrets:` and fetch it from the secrets server, \
                   or mount it with BuildKit (`RUN --mount=type=secret`)";

/// How to do without the basic-auth password.
const BASIC_AUTH_FIX: &str = "fetch with `HABITUS_TOKEN` instead: it is valid for this step's \
                              secrets only, and only until the step ends";

/// Why a build arg is not the place for a secret.
const IN_HISTORY: &str = "build args are stored in the image history";

/// Whether a variable name says it holds a secret, as BuildKit's
/// `SecretsUsedInArgOrEnv` decides: one of its parts (split on `_` and
/// `-`, case-insensitive) is a word of `SECRET_PARTS` and none is a word
/// of `HARMLESS_PARTS`. Whole parts only: `NPM_TOKEN` and `API_KEY` are
/// secrets, `KEYBOARD` and `TOKENIZER` are not.
pub fn looks_like_secret(name: &str) -> bool {
    let has = |words: &[&str]| {
        name.split(['_', '-'])
            .any(|part| words.iter().any(|w| part.eq_ignore_ascii_case(w)))
    };
    has(SECRET_PARTS) && !has(HARMLESS_PARTS)
}

/// A build arg or `ENV` variable that looks like a secret, where it is
/// written, and what to do instead.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exposure {
    /// build.yml (for `args:`) or the step's Dockerfile.
    pub file: PathBuf,
    /// 1-based line, if known.
    pub line: Option<usize>,
    /// The label of the step.
    pub step: String,
    /// What ships in the image, lowercase, names in backticks.
    pub message: String,
    /// How to pass the secret instead.
    pub help: String,
}

/// One line: `build.yml:12: step `app`: build arg … history; declare it …`.
impl fmt::Display for Exposure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        write!(f, ": step `{}`: {}; {}", self.step, self.message, self.help)
    }
}

impl Exposure {
    /// As an error of `habitus check --strict`.
    pub fn diagnostic(&self) -> Diagnostic {
        Diagnostic {
            file: self.file.clone(),
            line: self.line,
            column: None,
            step: Some(self.step.clone()),
            message: self.message.clone(),
            help: Some(self.help.clone()),
        }
    }
}

/// What `step` would store in its image: its `args:` that take `_env()`
/// with a name (the arg's or the variable's) that looks like a secret
/// (`build_yml` is the file they are in), then the `ARG` and `ENV` of
/// `dockerfile`, its Dockerfile's text, when there is one. A Dockerfile
/// that does not parse yields nothing here: the build and `habitus check`
/// report it on their own.
pub fn in_step(build_yml: &Path, step: &Step, dockerfile: Option<&[u8]>) -> Vec<Exposure> {
    let mut found = Vec::new();
    for (name, arg) in &step.env_args {
        // The variable to name: the first that looks like a secret, else
        // the first, when the arg's own name looks like one.
        let var = arg
            .vars
            .iter()
            .find(|var| looks_like_secret(var))
            .or_else(|| arg.vars.first().filter(|_| looks_like_secret(name)));
        if let Some(var) = var {
            found.push(Exposure {
                file: build_yml.to_path_buf(),
                line: (arg.line > 0).then_some(arg.line),
                step: step.label.clone(),
                message: format!("build arg `{name}` takes `_env({var})`: {IN_HISTORY}"),
                help: FIX.into(),
            });
        }
    }
    // In the order of the file; a line not known last.
    found.sort_by_key(|e| e.line.unwrap_or(usize::MAX));
    let declared = dockerfile
        .and_then(|text| dockerfile::declarations(text).ok())
        .unwrap_or_default();
    for declaration in declared {
        let name = &declaration.name;
        let keyword = declaration.kind.keyword();
        let (message, help) = if name == BASIC_AUTH_PASSWORD {
            let what = "is the secrets server's basic-auth password";
            (
                format!("`{keyword} {name}` {what}: {IN_HISTORY}"),
                BASIC_AUTH_FIX,
            )
        } else if HABITUS_ARGS.contains(&name.as_str()) || !looks_like_secret(name) {
            continue;
        } else {
            let stored = match declaration.kind {
                VariableKind::Arg => IN_HISTORY,
                VariableKind::Env => "`ENV` variables are stored in the image config",
            };
            (
                format!("`{keyword} {name}` looks like a secret: {stored}"),
                FIX,
            )
        };
        found.push(Exposure {
            file: step.dockerfile_path.clone(),
            line: Some(declaration.line),
            step: step.label.clone(),
            message,
            help: help.into(),
        });
    }
    found
}

#[cfg(test)]
mod tests {
    use super::{in_step, looks_like_secret};
    use crate::manifest::{EnvArg, Step};
    use std::path::Path;

    #[test]
    fn names_that_hold_secrets() {
        for name in [
            "NPM_TOKEN",
            "GITHUB_TOKEN",
            "DB_PASSWORD",
            "db_passwd",
            "API_KEY",
            "apikey",
            "AWS_SECRET_ACCESS_KEY",
            "AWS_ACCESS_KEY_ID",
            "SSH_PRIVATE_KEY",
            "secret_MESSAGE",
            "AUTH",
            "NODE_AUTH_TOKEN",
            "REGISTRY_CREDENTIALS",
            "GITHUB_PAT",
            "npm-token",
            "Token",
            "KEY",
        ] {
            assert!(looks_like_secret(name), "{name}");
        }
    }

    #[test]
    fn names_that_do_not() {
        for name in [
            "VERSION",
            "BASE_IMAGE",
            "KEYBOARD",
            "TOKENIZER",
            "AUTHOR",
            "PASSWORDLESS",
            "MONKEY",
            "PATH",
            "PUBLIC_KEY_URL",
            "public_key",
            "GITHUB_TOKEN_FILE",
            "PASSWORD_FILE",
            "KEY_VERSION",
            "",
            "_",
        ] {
            assert!(!looks_like_secret(name), "{name}");
        }
    }

    fn step_with_args(args: &[(&str, usize, &[&str])]) -> Step {
        let mut step = Step::for_test("app");
        for (name, line, vars) in args {
            step.env_args.insert(
                (*name).into(),
                EnvArg {
                    line: *line,
                    vars: vars.iter().map(|v| (*v).to_string()).collect(),
                },
            );
        }
        step
    }

    #[test]
    fn args_from_env_warn_by_the_arg_or_the_variable_name() {
        let step = step_with_args(&[
            ("NPM_TOKEN", 12, &["NPM_TOKEN"]),
            ("NPM", 13, &["HOME", "NPM_TOKEN"]),
            ("CACHE_KEY", 0, &["BRANCH"]),
            ("HOME", 14, &["HOME"]),
        ]);
        let lines: Vec<String> = in_step(Path::new("build.yml"), &step, None)
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(
            lines,
            [
                "build.yml:12: step `app`: build arg `NPM_TOKEN` takes `_env(NPM_TOKEN)`: build args are stored in the image history; declare it under `secrets:` and fetch it from the secrets server, or mount it with BuildKit (`RUN --mount=type=secret`)",
                "build.yml:13: step `app`: build arg `NPM` takes `_env(NPM_TOKEN)`: build args are stored in the image history; declare it under `secrets:` and fetch it from the secrets server, or mount it with BuildKit (`RUN --mount=type=secret`)",
                "build.yml: step `app`: build arg `CACHE_KEY` takes `_env(BRANCH)`: build args are stored in the image history; declare it under `secrets:` and fetch it from the secrets server, or mount it with BuildKit (`RUN --mount=type=secret`)",
            ]
        );
    }

    #[test]
    fn arg_and_env_instructions_warn_and_habitus_args_do_not() {
        let step = Step::for_test("app");
        let dockerfile = "FROM a\nARG HABITUS_URL\nARG HABITUS_TOKEN\nARG VERSION=1 GITHUB_TOKEN\nENV DB_PASSWORD=x \\\n    MODE=prod\nENV API_KEY some value\nARG PUBLIC_KEY_URL\nARG habitus_password\nRUN echo $HABITUS_TOKEN\n";
        let found: Vec<(Option<usize>, String)> =
            in_step(Path::new("build.yml"), &step, Some(dockerfile.as_bytes()))
                .into_iter()
                .map(|e| {
                    assert_eq!(e.file, Path::new("/nonexistent/Dockerfile"));
                    (e.line, e.message)
                })
                .collect();
        assert_eq!(
            found,
            [
                (Some(4), "`ARG GITHUB_TOKEN` looks like a secret: build args are stored in the image history".to_string()),
                (Some(5), "`ENV DB_PASSWORD` looks like a secret: `ENV` variables are stored in the image config".to_string()),
                (Some(7), "`ENV API_KEY` looks like a secret: `ENV` variables are stored in the image config".to_string()),
                (Some(9), "`ARG habitus_password` is the secrets server's basic-auth password: build args are stored in the image history".to_string()),
            ]
        );
        // A Dockerfile that does not parse is reported elsewhere.
        assert!(in_step(Path::new("build.yml"), &step, Some(b"ARG TOKEN\n")).is_empty());
    }

    #[test]
    fn strict_errors_carry_the_same_text() {
        let step = step_with_args(&[("NPM_TOKEN", 12, &["NPM_TOKEN"])]);
        let exposure = &in_step(Path::new("build.yml"), &step, None)[0];
        assert_eq!(
            exposure.diagnostic().to_string(),
            "error: build.yml:12: step `app`: build arg `NPM_TOKEN` takes `_env(NPM_TOKEN)`: build args are stored in the image history\n  help: declare it under `secrets:` and fetch it from the secrets server, or mount it with BuildKit (`RUN --mount=type=secret`)"
        );
    }
}
