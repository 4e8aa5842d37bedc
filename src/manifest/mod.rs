//! The `build.yml` model: raw text → `_env()` substitution → YAML →
//! validated [`Manifest`]. Nothing here talks to Docker; paths are resolved
//! against the work directory and checked on disk. A rejected file yields
//! [`Diagnostics`]: every problem at once, each with file, line, column,
//! step and a fix.
//!
//! Compatible with Go Habitus' build.yml: `context` is relative to the work
//! directory, `dockerfile` relative to the context, an artifact `/src:dest`
//! lands in `<workdir>/<dest>/`. Stricter than it: unknown keys, missing
//! files and bad paths are errors before anything is built. Top-level keys
//! starting with `x-` are ignored, as in Compose files, so that YAML anchors
//! for merge keys (`<<: *defaults`) have a place to live.

mod diagnostic;
mod env;
mod infer;
mod locate;
mod trust;
mod validate;

use std::collections::BTreeMap;
use std::fs::File;
use std::io::Read;
use std::path::{Path, PathBuf};

pub use diagnostic::{Diagnostic, Diagnostics};
pub use env::EnvSource;
pub use trust::Untrusted;
pub(crate) use validate::normalize;
pub use validate::SCHEMA_VERSIONS;

use crate::model::SecretKind;
use locate::Index;

/// The largest build.yml habitus reads, in bytes.
pub const MAX_FILE_SIZE: usize = 1024 * 1024;
/// The largest the text may grow to through `_env()` substitution.
const MAX_SUBSTITUTED_SIZE: usize = 4 * MAX_FILE_SIZE;

/// What [`load`] and [`parse`] need besides the text.
#[derive(Debug, Clone, Copy)]
pub struct LoadOptions<'a> {
    /// The build.yml as the user gave it (`-f`); used in every message.
    pub file: &'a Path,
    /// The work directory (`-d`); contexts are resolved against it.
    pub workdir: &'a Path,
    /// Where `_env(NAME)` values come from.
    pub env: &'a EnvSource,
    /// The enabled secret types (`--sec-providers`).
    pub sec_providers: &'a [SecretKind],
    /// `--untrusted`: what the file may reach on this machine; `None`
    /// when it is trusted.
    pub untrusted: Option<&'a Untrusted>,
}

/// A validated build.yml and what the user should know about it.
#[derive(Debug, Clone)]
pub struct Loaded {
    pub manifest: Manifest,
    /// The steps' DAG, in file order (built while checking for loops).
    pub plan: crate::plan::Plan,
    /// Non-fatal findings, one line each, e.g.
    /// `build.yml:7: _env(FOO) is not set; using an empty value`.
    pub warnings: Vec<String>,
}

/// Reads, substitutes, parses and validates the build.yml at `opts.file`.
pub fn load(opts: &LoadOptions<'_>) -> Result<Loaded, Diagnostics> {
    let fail = |message: String| Diagnostics(vec![file_diagnostic(opts.file, None, message, None)]);
    let file = File::open(opts.file).map_err(|e| fail(format!("cannot read the file: {e}")))?;
    let mut bytes = Vec::new();
    file.take(MAX_FILE_SIZE as u64 + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(format!("cannot read the file: {e}")))?;
    if bytes.len() > MAX_FILE_SIZE {
        return Err(too_large(opts.file));
    }
    let text = String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
        Diagnostics(vec![file_diagnostic(
            opts.file,
            Some(line),
            "the file is not valid UTF-8".into(),
            None,
        )])
    })?;
    parse(&text, opts)
}

/// One warning per unset variable, at its first use, naming the other
/// lines that use it: `build.yml:5: _env(TAG) is not set (also used on
/// lines 8, 12); using an empty value`.
fn unset_warnings(file: &Path, unset: &[env::Unset]) -> Vec<String> {
    let mut lines: Vec<(&str, Vec<usize>)> = Vec::new();
    for u in unset {
        match lines.iter_mut().find(|(name, _)| *name == u.name) {
            Some((_, at)) if !at.contains(&u.line) => at.push(u.line),
            Some(_) => {}
            None => lines.push((&u.name, vec![u.line])),
        }
    }
    lines
        .into_iter()
        .map(|(name, at)| {
            let also = match &at[1..] {
                [] => String::new(),
                [one] => format!(" (also used on line {one})"),
                more => format!(
                    " (also used on lines {})",
                    more.iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            };
            format!(
                "{}:{}: _env({name}) is not set{also}; using an empty value",
                file.display(),
                at[0]
            )
        })
        .collect()
}

/// As [`load`], with the text already read (`opts.file` names it in
/// messages).
pub fn parse(text: &str, opts: &LoadOptions<'_>) -> Result<Loaded, Diagnostics> {
    if text.len() > MAX_FILE_SIZE {
        return Err(too_large(opts.file));
    }
    let src = text;
    let (text, unset, map) =
        env::substitute_mapped(text, opts.env, MAX_SUBSTITUTED_SIZE).map_err(|env::TooLarge| {
            Diagnostics(vec![file_diagnostic(
                opts.file,
                None,
                "the file is larger than 4 MiB after `_env()` substitution".into(),
                None,
            )])
        })?;
    // An untrusted file gets only what `--env` gives: any other name is
    // refused, not read as empty.
    let refused = match opts.untrusted {
        Some(_) => env_refusals(opts.file, src, &map),
        None => Vec::new(),
    };
    let warnings = match opts.untrusted {
        Some(_) => Vec::new(),
        None => unset_warnings(opts.file, &unset),
    };
    let yaml_error = |e: serde_yaml::Error| {
        let location = e.location();
        let mut message = e.to_string();
        if let Some(l) = &location {
            message = message.replace(&format!(" at line {} column {}", l.line(), l.column()), "");
        }
        Diagnostics(vec![Diagnostic {
            file: opts.file.to_path_buf(),
            line: location.as_ref().map(|l| l.line()),
            column: location.as_ref().map(|l| l.column()),
            step: None,
            message: format!("invalid YAML: {message}"),
            help: None,
        }])
    };
    // Positions found in the substituted text point at the file as written,
    // and an error on a value that an unset variable emptied says so.
    let in_file = |Diagnostics(list): Diagnostics| {
        Diagnostics(
            list.into_iter()
                .map(|mut d| {
                    if let (Some(line), Some(column)) = (d.line, d.column) {
                        let (line, column) = map.position(&text, src, line, column);
                        d.line = Some(line);
                        d.column = Some(column);
                    }
                    // Untrusted, an unset name is refused on its own.
                    if opts.untrusted.is_none() {
                        explain_unset(&mut d, src, &map);
                    }
                    d
                })
                .collect(),
        )
    };
    let with_refused = |diagnostics: Diagnostics| merge(diagnostics, &refused);
    let mut root: serde_yaml::Value =
        serde_yaml::from_str(&text).map_err(|e| with_refused(in_file(yaml_error(e))))?;
    root.apply_merge()
        .map_err(|e| with_refused(in_file(yaml_error(e))))?;
    let index = Index::scan(&text);
    let mut loaded =
        validate::validate(&root, &index, opts, warnings).map_err(|e| with_refused(in_file(e)))?;
    if !refused.is_empty() {
        return Err(Diagnostics(refused));
    }
    if src.contains("_env(") {
        record_env_args(&mut loaded.manifest, src);
    }
    Ok(loaded)
}

/// One refusal per `_env(NAME)` whose NAME `--env` does not give, at its
/// line and column in the file as written.
fn env_refusals(file: &Path, src: &str, map: &env::SourceMap) -> Vec<Diagnostic> {
    map.unset_positions(src)
        .map(|(line, column, name)| Diagnostic {
            file: file.to_path_buf(),
            line: Some(line),
            column: Some(column),
            step: None,
            message: trust::refusal(
                &format!("`_env({name})` reads this machine's environment"),
                &format!("--env {name}=VALUE"),
            ),
            help: None,
        })
        .collect()
}

/// `diagnostics` and `more` together, in file order.
fn merge(Diagnostics(mut list): Diagnostics, more: &[Diagnostic]) -> Diagnostics {
    list.extend(more.iter().cloned());
    list.sort_by_key(|d| (d.line.unwrap_or(0), d.column.unwrap_or(0)));
    Diagnostics(list)
}

/// Fills in each step's [`Step::env_args`]: the build args whose value,
/// as written in `src` (the file before substitution), holds `_env()`.
/// Args that a merge key (`<<: *defaults`) brings in are not written under
/// the step, and are not found.
fn record_env_args(manifest: &mut Manifest, src: &str) {
    let written = Index::scan(src);
    let steps = locate::key_path(&locate::key_path("", "build"), "steps");
    for step in &mut manifest.steps {
        let args = locate::key_path(&locate::key_path(&steps, &step.label), "args");
        for name in step.args.keys() {
            let path = locate::key_path(&args, name);
            let Some(raw) = written.raw(&path) else {
                continue;
            };
            let vars: Vec<String> = env::names(raw).into_iter().map(str::to_owned).collect();
            if vars.is_empty() {
                continue;
            }
            let line = written.locate(&path).map_or(0, |p| p.line);
            step.env_args.insert(name.clone(), EnvArg { line, vars });
        }
    }
}

/// Adds to `d` which unset `_env()` variable emptied the value it is
/// about: one on the diagnostic's own line, or, for ``missing `KEY` ``,
/// on a `KEY:` line of the block below it.
fn explain_unset(d: &mut Diagnostic, src: &str, map: &env::SourceMap) {
    let Some(line) = d.line else { return };
    let lines: Vec<&str> = src.lines().collect();
    let unset: Vec<&env::Occurrence> = map.emptied().collect();
    let mut culprits: Vec<&env::Occurrence> =
        unset.iter().copied().filter(|o| o.line == line).collect();
    if culprits.is_empty() {
        if let Some(key) = d
            .message
            .split("missing `")
            .nth(1)
            .and_then(|rest| rest.split('`').next())
        {
            let indent = |l: &str| l.len() - l.trim_start().len();
            let own = lines.get(line - 1).map_or(0, |l| indent(l));
            for (i, text) in lines.iter().enumerate().skip(line) {
                if !text.trim().is_empty() && indent(text) <= own {
                    break;
                }
                let field = text.trim_start().trim_start_matches("- ");
                if field.starts_with(&format!("{key}:")) {
                    culprits.extend(unset.iter().copied().filter(|o| o.line == i + 1));
                }
            }
        }
    }
    for o in culprits {
        let how = if o.unset {
            "is not set"
        } else {
            "is set but empty"
        };
        let note = format!(
            "`{}` {how}, so `_env({})` on line {} is empty: `export {}=…` or pass `--env {}=…`",
            o.name, o.name, o.line, o.name, o.name
        );
        d.help = Some(match d.help.take() {
            Some(help) => format!("{help}\n  help: {note}"),
            None => note,
        });
    }
}

fn file_diagnostic(
    file: &Path,
    line: Option<usize>,
    message: String,
    help: Option<String>,
) -> Diagnostic {
    Diagnostic {
        file: file.to_path_buf(),
        line,
        column: None,
        step: None,
        message,
        help,
    }
}

fn too_large(file: &Path) -> Diagnostics {
    Diagnostics(vec![file_diagnostic(
        file,
        None,
        "the file is larger than 1 MiB".into(),
        Some("a build.yml describes steps; keep data in the build context".into()),
    )])
}

/// A schema version of `build.yml` that habitus understands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SchemaVersion {
    /// `2016-02-13`: no `secrets`.
    V20160213,
    /// `2016-03-14`: adds `secrets`.
    V20160314,
}

/// A validated build.yml.
#[derive(Debug, Clone)]
pub struct Manifest {
    /// The build.yml as given (for messages).
    pub file: PathBuf,
    /// The work directory (`-d`), absolute.
    pub workdir: PathBuf,
    pub version: SchemaVersion,
    /// Steps in the order they appear in the file.
    pub steps: Vec<Step>,
}

/// One validated step.
#[derive(Debug, Clone)]
pub struct Step {
    /// The key under `steps:`; what `depends_on` names.
    pub label: String,
    /// The image name as written (`myorg/app:tag`), before `--uid`.
    pub name: String,
    /// The Dockerfile as written in build.yml.
    pub dockerfile: String,
    /// The Dockerfile, resolved to an absolute path that exists.
    pub dockerfile_path: PathBuf,
    /// The build context directory, absolute, inside the work dir.
    pub context: PathBuf,
    pub target: Option<String>,
    pub args: BTreeMap<String, String>,
    /// The `args` whose value is written with `_env(NAME)`, and where.
    pub env_args: BTreeMap<String, EnvArg>,
    pub no_cache: bool,
    pub artifacts: Vec<Artifact>,
    /// `cleanup.commands`.
    pub cleanup: Vec<String>,
    pub secrets: BTreeMap<String, SecretSpec>,
    pub command: Option<String>,
    pub after_build_command: Option<String>,
    pub depends_on: Vec<String>,
    /// The steps whose image this step's Dockerfile uses while
    /// `depends_on` does not order them before it: built before it all
    /// the same. In file order of first use.
    pub inferred: Vec<InferredDependency>,
    /// Our addition: keep this step's image after the build.
    pub keep: bool,
    /// Our addition: the builder of this step (`None`: `--builder`).
    pub builder: Option<crate::model::Builder>,
    /// Our addition: forward the host's SSH agent to this step's
    /// `RUN --mount=type=ssh` (BuildKit).
    pub ssh: bool,
    /// Our addition: push the image (`name`, then `tags`) once it is
    /// final.
    pub push: bool,
    /// Our addition: more names to tag the image with (and push, when
    /// it is pushed).
    pub tags: Vec<String>,
    /// Our addition: images whose layers the build may reuse.
    pub cache_from: Vec<String>,
    /// Our addition: `cache_to: inline`, BuildKit writes its cache
    /// metadata into the image.
    pub cache_to_inline: bool,
    /// 1-based line of the step's key in build.yml (0 if unknown).
    pub line: usize,
}

impl Step {
    /// A step `label` with nothing set but its build context and the line
    /// of its key: what validation fills in.
    pub(crate) fn blank(label: String, context: PathBuf, line: usize) -> Step {
        Step {
            label,
            name: String::new(),
            dockerfile: String::new(),
            dockerfile_path: PathBuf::new(),
            context,
            target: None,
            args: BTreeMap::new(),
            env_args: BTreeMap::new(),
            no_cache: false,
            artifacts: Vec::new(),
            cleanup: Vec::new(),
            secrets: BTreeMap::new(),
            command: None,
            after_build_command: None,
            depends_on: Vec::new(),
            inferred: Vec::new(),
            keep: false,
            builder: None,
            ssh: false,
            push: false,
            tags: Vec::new(),
            cache_from: Vec::new(),
            cache_to_inline: false,
            line,
        }
    }

    /// A step `label` building `img/<label>` from a Dockerfile that does
    /// not exist, for unit tests; set what the test needs on top.
    #[cfg(test)]
    pub fn for_test(label: &str) -> Step {
        Step {
            name: format!("img/{label}"),
            dockerfile: "Dockerfile".into(),
            dockerfile_path: "/nonexistent/Dockerfile".into(),
            ..Step::blank(label.into(), "/nonexistent".into(), 0)
        }
    }
}

/// A step whose image a Dockerfile uses (`FROM`, `COPY --from=`, `RUN
/// --mount=…,from=`) without `depends_on` saying so.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InferredDependency {
    /// The label of the step whose image is used.
    pub step: String,
    /// The 1-based Dockerfile line of the first use.
    pub line: usize,
}

impl Step {
    /// One line per inferred dependency, for `habitus check`, `plan` and
    /// the start of a build: ``step `app` uses the image of step `base`
    /// (Dockerfile line 1): built after it; add `depends_on: [base]` to
    /// say so``.
    pub fn inferred_notices(&self) -> Vec<String> {
        self.inferred
            .iter()
            .map(|d| {
                format!(
                    "step `{}` uses the image of step `{}` (Dockerfile line {}): built after it; add `depends_on: [{}]` to say so",
                    self.label, d.step, d.line, d.step
                )
            })
            .collect()
    }

    /// The inferred dependencies as errors (`habitus check --strict`),
    /// at the step in `build_yml`.
    pub fn inferred_diagnostics(&self, build_yml: &Path) -> Vec<Diagnostic> {
        self.inferred
            .iter()
            .map(|d| Diagnostic {
                file: build_yml.to_path_buf(),
                line: (self.line > 0).then_some(self.line),
                column: None,
                step: Some(self.label.clone()),
                message: format!(
                    "the Dockerfile uses the image of step `{}` (line {}) but `depends_on` does not name it",
                    d.step, d.line
                ),
                help: Some(format!("add `depends_on: [{}]`", d.step)),
            })
            .collect()
    }
}

/// A build arg of `args:` whose value build.yml writes with `_env(NAME)`.
/// Holds no value, only where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnvArg {
    /// 1-based line of the arg in build.yml (0 if unknown).
    pub line: usize,
    /// The NAME of each `_env(NAME)` in the value, in order.
    pub vars: Vec<String>,
}

/// `artifacts:` entry: `/src` or `/src:dest`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Artifact {
    /// Absolute path inside the image.
    pub source: String,
    /// Destination directory relative to the work dir ("" = work dir
    /// itself); the artifact lands at `<workdir>/<dest>/<basename(source)>`.
    pub dest: PathBuf,
}

/// A secret declaration: where its value comes from. Holds no secret bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretSpec {
    pub kind: SecretKind,
    /// A host path for `file`; a variable NAME (read from `HABITUS_NAME`) for `env`.
    pub value: String,
}
