//! Checks a parsed build.yml against the schema, the work directory and the
//! dependency graph, and builds the validated [`Manifest`]. Every problem is
//! collected (not just the first) with the best position [`Index`] knows.

use std::collections::{BTreeMap, HashMap};
use std::path::{Component, Path, PathBuf};

use serde_yaml::{Mapping, Value};

use super::diagnostic::{list, suggest, Diagnostic, Diagnostics};
use super::locate::{item_path, key_path, Index, Pos};
use super::trust::{refusal, Untrusted};
use super::{Artifact, LoadOptions, Loaded, Manifest, SchemaVersion, SecretSpec, Step};
use crate::model::{normalize_reference, Builder, SecretKind};
use crate::plan::{Plan, PlanError};
use crate::workpath;

/// The schema versions habitus reads.
pub const SCHEMA_VERSIONS: &[&str] = &["2016-02-13", "2016-03-14"];
const TOP_KEYS: &[&str] = &["build"];
const BUILD_KEYS: &[&str] = &["version", "steps", "work_dir"];
const STEP_KEYS: &[&str] = &[
    "name",
    "dockerfile",
    "context",
    "target",
    "args",
    "no_cache",
    "artifacts",
    "cleanup",
    "secrets",
    "command",
    "after_build_command",
    "depends_on",
    "keep",
    "builder",
    "ssh",
    "push",
    "tags",
    "cache_from",
    "cache_to",
];
const CLEANUP_KEYS: &[&str] = &["commands"];
const SECRET_KEYS: &[&str] = &["type", "value"];
/// Beyond this many unknown `depends_on` entries, no closest label is
/// searched for (each search compares against every label).
const MAX_SUGGESTED_DEPENDENCIES: usize = 50;

/// A step being checked, with the paths of what later checks point at.
struct Draft {
    step: Step,
    path: String,
    context: Option<String>,
    /// `depends_on` entries and their paths.
    deps: Vec<(String, String)>,
    /// The path of each entry of `step.artifacts`.
    artifact_paths: Vec<String>,
    /// `name` or `dockerfile` when given with a value of the wrong type
    /// (reported as such, not as missing).
    mistyped: Vec<&'static str>,
}

/// A mapping entry with a scalar key: the key, its path and its value.
type Field<'v> = (String, String, &'v Value);

/// What every step is checked against.
struct Rules<'a> {
    /// The schema version, if `version` is valid.
    version: Option<SchemaVersion>,
    /// The work directory, absolute.
    workdir: &'a Path,
    /// The enabled secret types.
    sec_providers: &'a [SecretKind],
}

/// Where a step's `context` or `dockerfile` must be, and how a problem
/// with it is told.
struct OnDisk<'a> {
    /// The key: `context` or `dockerfile`.
    key: &'static str,
    /// What the value is relative to, and how help names that folder.
    base: &'a Path,
    base_name: &'static str,
    /// `directory` or `file`, and the test for it.
    kind: &'static str,
    is_kind: fn(&Path) -> bool,
    /// The help for a value that leads outside the work directory.
    outside: &'static str,
}

struct Checker<'a> {
    file: &'a Path,
    index: &'a Index<'a>,
    diagnostics: Vec<Diagnostic>,
    warnings: Vec<String>,
    /// The steps' plan, once the dependency check built one.
    plan: Option<Plan>,
    /// `--untrusted`: what the file may reach on this machine.
    untrusted: Option<&'a Untrusted>,
    /// With `--untrusted`, the `--secret-dir` folders, symlinks resolved.
    secret_roots: Vec<PathBuf>,
}

/// Validates `root` (the YAML after `_env()` substitution and merge keys).
pub(crate) fn validate(
    root: &Value,
    index: &Index<'_>,
    opts: &LoadOptions<'_>,
    warnings: Vec<String>,
) -> Result<Loaded, Diagnostics> {
    let mut checker = Checker {
        file: opts.file,
        index,
        diagnostics: Vec::new(),
        warnings,
        plan: None,
        untrusted: opts.untrusted,
        secret_roots: Vec::new(),
    };
    let manifest = checker.manifest(root, opts);
    let Checker {
        mut diagnostics,
        warnings,
        plan,
        ..
    } = checker;
    match (manifest, plan) {
        (Some(manifest), Some(plan)) if diagnostics.is_empty() => Ok(Loaded {
            manifest,
            plan,
            warnings,
        }),
        _ => {
            diagnostics.sort_by_key(|d| (d.line.unwrap_or(0), d.column.unwrap_or(0)));
            Err(Diagnostics(diagnostics))
        }
    }
}

impl Checker<'_> {
    fn report(
        &mut self,
        pos: Option<Pos>,
        step: Option<&str>,
        message: String,
        help: Option<String>,
    ) {
        self.diagnostics.push(Diagnostic {
            file: self.file.to_path_buf(),
            line: pos.map(|p| p.line),
            column: pos.map(|p| p.column),
            step: step.map(str::to_owned),
            message,
            help,
        });
    }

    /// Reports at the key (or item) at `path`.
    fn at_key(&mut self, path: &str, step: Option<&str>, message: String, help: Option<String>) {
        let pos = self.index.locate(path);
        self.report(pos, step, message, help);
    }

    /// Reports at the value of the key at `path`.
    fn at_value(&mut self, path: &str, step: Option<&str>, message: String, help: Option<String>) {
        let pos = self.index.locate_value(path);
        self.report(pos, step, message, help);
    }

    fn warn(&mut self, path: &str, message: String) {
        let warning = match self.index.locate(path) {
            Some(pos) => format!("{}:{}: {message}", self.file.display(), pos.line),
            None => format!("{}: {message}", self.file.display()),
        };
        self.warnings.push(warning);
    }

    fn unknown_key(
        &mut self,
        path: &str,
        step: Option<&str>,
        key: &str,
        valid: &[&str],
        within: &str,
    ) {
        let help = match suggest(key, valid.iter().copied()) {
            Some(close) => format!("did you mean `{close}`?"),
            None => format!("valid keys: {}", list(valid)),
        };
        self.at_key(
            path,
            step,
            format!("unknown key `{key}`{within}"),
            Some(help),
        );
    }

    /// A scalar as the text the user wrote (`1.10` stays `1.10`).
    fn scalar(&self, value: &Value, path: &str) -> Option<String> {
        match value {
            Value::String(s) => Some(s.clone()),
            Value::Number(_) | Value::Bool(_) => {
                if let Some(raw) = self.index.raw(path) {
                    if serde_yaml::from_str::<Value>(raw).ok().as_ref() == Some(value) {
                        return Some(raw.to_owned());
                    }
                }
                Some(match value {
                    Value::Number(n) => n.to_string(),
                    _ => value.as_bool().unwrap_or_default().to_string(),
                })
            }
            _ => None,
        }
    }

    /// The entries of a mapping whose keys are scalars; reports other keys.
    fn entries<'v>(
        &mut self,
        map: &'v Mapping,
        path: &str,
        step: Option<&str>,
    ) -> Vec<(String, String, &'v Value)> {
        let mut out = Vec::with_capacity(map.len());
        for (key, value) in map {
            match self.scalar(key, "") {
                Some(key) => {
                    let child = key_path(path, &key);
                    out.push((key, child, value));
                }
                None => self.at_key(
                    path,
                    step,
                    format!("a key must be a string, found {}", kind(key)),
                    None,
                ),
            }
        }
        out
    }

    fn string(
        &mut self,
        value: &Value,
        path: &str,
        step: Option<&str>,
        what: &str,
    ) -> Option<String> {
        if value.is_null() {
            return None;
        }
        let found = self.scalar(value, path);
        if found.is_none() {
            self.at_value(
                path,
                step,
                format!("{what} must be a string, found {}", kind(value)),
                None,
            );
        }
        found
    }

    fn boolean(&mut self, value: &Value, path: &str, step: Option<&str>, key: &str) -> bool {
        // YAML 1.1 spellings, as Go Habitus' YAML parser reads them.
        match value {
            Value::Null => false,
            Value::Bool(b) => *b,
            Value::String(s) if ["y", "yes", "on"].contains(&s.to_ascii_lowercase().as_str()) => {
                true
            }
            Value::String(s) if ["n", "no", "off"].contains(&s.to_ascii_lowercase().as_str()) => {
                false
            }
            _ => {
                self.at_value(
                    path,
                    step,
                    format!("`{key}` must be `true` or `false`, found {}", kind(value)),
                    None,
                );
                false
            }
        }
    }

    /// A list of strings with their paths; a null value is an empty list.
    fn strings(
        &mut self,
        value: &Value,
        path: &str,
        step: Option<&str>,
        key: &str,
        example: &str,
    ) -> Vec<(String, String)> {
        let items = match value {
            Value::Null => return Vec::new(),
            Value::Sequence(items) => items,
            _ => {
                self.at_value(
                    path,
                    step,
                    format!("`{key}` must be a list, found {}", kind(value)),
                    Some(format!("write it as a list, e.g. `{key}: [{example}]`")),
                );
                return Vec::new();
            }
        };
        let mut out = Vec::with_capacity(items.len());
        for (i, item) in items.iter().enumerate() {
            let item_path = item_path(path, i);
            match self.scalar(item, &item_path) {
                Some(s) => out.push((s, item_path)),
                None => self.at_key(
                    &item_path,
                    step,
                    format!(
                        "each entry of `{key}` must be a string, found {}",
                        kind(item)
                    ),
                    None,
                ),
            }
        }
        out
    }

    /// Checks the whole file, in order: the `build` mapping, the work
    /// directory, `version` and `steps`, each step, then what spans steps.
    fn manifest(&mut self, root: &Value, opts: &LoadOptions<'_>) -> Option<Manifest> {
        let (build_path, build) = self.build(root)?;
        let (workdir, workdir_ok) = self.workdir(opts.workdir);
        let (version, steps) = self.build_keys(build, &build_path);
        let (steps_path, steps) = self.steps(steps, &build_path)?;
        let rules = Rules {
            version,
            workdir: &workdir,
            sec_providers: opts.sec_providers,
        };
        if let Some(untrusted) = self.untrusted {
            self.secret_roots = self.secret_dirs(untrusted);
        }
        let mut drafts = Vec::with_capacity(steps.len());
        for (label, path, value) in self.entries(steps, &steps_path, None) {
            drafts.push(self.step(label, path, value, &rules));
        }
        self.unique_names(&drafts);
        if workdir_ok {
            self.all_paths(&mut drafts, &workdir);
        }
        self.dependencies(&mut drafts, &workdir);
        Some(Manifest {
            file: opts.file.to_path_buf(),
            workdir,
            version: version?,
            steps: drafts.into_iter().map(|d| d.step).collect(),
        })
    }

    /// The top level as a mapping; reports an empty file or another kind.
    fn top_level<'v>(&mut self, root: &'v Value) -> Option<&'v Mapping> {
        match root {
            Value::Mapping(map) => Some(map),
            Value::Null => {
                self.report(None, None, "the file is empty".into(), build_help());
                None
            }
            other => {
                self.report(
                    Some(Pos { line: 1, column: 1 }),
                    None,
                    format!("the top level must be a mapping, found {}", kind(other)),
                    build_help(),
                );
                None
            }
        }
    }

    /// The `build` mapping and its path; reports unknown top-level keys
    /// and a file without `build`, pointing an older format at the new one.
    fn build<'v>(&mut self, root: &'v Value) -> Option<(String, &'v Mapping)> {
        let root_map = self.top_level(root)?;
        let mut build = None;
        let mut old_steps = None;
        let has_build = root_map.contains_key(Value::from("build"));
        for (key, path, value) in self.entries(root_map, "", None) {
            if key == "build" {
                build = Some((path, value));
            } else if key == "steps" && !has_build {
                old_steps = Some((path, value));
            } else if !key.starts_with("x-") {
                self.unknown_key(&path, None, &key, TOP_KEYS, "");
            }
        }
        let Some((build_path, build)) = build else {
            match old_steps {
                Some((path, steps)) => self.at_key(
                    &path,
                    None,
                    "this looks like an older build.yml format: `steps` at the top level, without `build:` and `version:`".into(),
                    Some(modern_form(steps)),
                ),
                None => self.report(None, None, "missing key `build`".into(), build_help()),
            }
            return None;
        };
        match build {
            Value::Mapping(map) => Some((build_path, map)),
            other => {
                self.at_key(
                    &build_path,
                    None,
                    format!("`build` must be a mapping, found {}", kind(other)),
                    build_help(),
                );
                None
            }
        }
    }

    /// The work directory, absolute, and whether it exists (reported if not).
    fn workdir(&mut self, dir: &Path) -> (PathBuf, bool) {
        let workdir = workdir(dir);
        let found = workdir.is_dir();
        if !found {
            self.report(
                None,
                None,
                format!("work directory `{}` not found", workdir.display()),
                Some("set the work directory with `-d`".into()),
            );
        }
        (workdir, found)
    }

    /// The keys of `build`: the schema version (`None` if missing or bad,
    /// reported) and `steps` with its path, if given.
    fn build_keys<'v>(
        &mut self,
        build: &'v Mapping,
        build_path: &str,
    ) -> (Option<SchemaVersion>, Option<(String, &'v Value)>) {
        let mut version_at = None;
        let mut steps = None;
        for (key, path, value) in self.entries(build, build_path, None) {
            match key.as_str() {
                "version" => version_at = Some((path, value)),
                "steps" => steps = Some((path, value)),
                "work_dir" => self.warn(
                    &path,
                    "`work_dir` is ignored; the work directory is set with `-d`".into(),
                ),
                _ => self.unknown_key(&path, None, &key, BUILD_KEYS, ""),
            }
        }
        let version = match version_at {
            Some((path, value)) => self.version(value, &path, steps.as_ref().map(|(_, s)| *s)),
            None => {
                self.at_key(
                    build_path,
                    None,
                    "missing `version`".into(),
                    versions_help(),
                );
                None
            }
        };
        (version, steps)
    }

    /// `steps` as a non-empty mapping of labels to steps, with its path;
    /// reports it missing, empty, a list (an older format) or another kind.
    fn steps<'v>(
        &mut self,
        steps: Option<(String, &'v Value)>,
        build_path: &str,
    ) -> Option<(String, &'v Mapping)> {
        let Some((steps_path, steps)) = steps else {
            self.at_key(
                build_path,
                None,
                "missing `steps`".into(),
                Some(
                    "`steps` maps each step's label to its `name`, `dockerfile` and other keys"
                        .into(),
                ),
            );
            return None;
        };
        let (message, help) = match steps {
            Value::Mapping(map) if !map.is_empty() => return Some((steps_path, map)),
            Value::Mapping(_) | Value::Null => (
                "`steps` is empty".into(),
                Some("add at least one step with a `name` and a `dockerfile`".into()),
            ),
            list @ Value::Sequence(_) => (
                "`steps` is a list, as in an older build.yml format; it must be a mapping of step labels to steps".into(),
                Some(modern_form(list)),
            ),
            other => (
                format!(
                    "`steps` must be a mapping of step labels to steps, found {}",
                    kind(other)
                ),
                None,
            ),
        };
        self.at_key(&steps_path, None, message, help);
        None
    }

    /// Resolves the work directory's own symlinks, then checks every
    /// step's paths on disk against it.
    fn all_paths(&mut self, drafts: &mut [Draft], workdir: &Path) {
        match workpath::real_root(workdir) {
            Ok(real) => {
                for draft in drafts {
                    self.paths(draft, (workdir, &real));
                }
            }
            Err(e) => self.report(
                None,
                None,
                format!(
                    "cannot resolve the work directory `{}`: {e}",
                    workdir.display()
                ),
                Some("set the work directory with `-d`".into()),
            ),
        }
    }

    /// The schema version; an unknown one is shown what the file's first
    /// step (in `steps`) looks like in the 2016-03-14 format.
    fn version(
        &mut self,
        value: &Value,
        path: &str,
        steps: Option<&Value>,
    ) -> Option<SchemaVersion> {
        let help = versions_help();
        match self.scalar(value, path).as_deref() {
            Some("2016-02-13") => Some(SchemaVersion::V20160213),
            Some("2016-03-14") => Some(SchemaVersion::V20160314),
            Some(other) => {
                let converted = steps.map(modern_form).unwrap_or_default();
                self.at_value(
                    path,
                    None,
                    format!("unknown schema version `{other}`"),
                    help.map(|h| {
                        format!("{h}; {converted}")
                            .trim_end_matches("; ")
                            .to_string()
                    }),
                );
                None
            }
            None => {
                self.at_value(
                    path,
                    None,
                    format!("`version` must be a date, found {}", kind(value)),
                    help,
                );
                None
            }
        }
    }

    /// One step: each of its keys, then whether `name` and `dockerfile`
    /// are there.
    fn step(&mut self, label: String, path: String, value: &Value, rules: &Rules<'_>) -> Draft {
        let line = self.index.locate(&path).map_or(0, |p| p.line);
        let mut draft = Draft {
            step: Step::blank(label, rules.workdir.to_path_buf(), line),
            path,
            context: None,
            deps: Vec::new(),
            artifact_paths: Vec::new(),
            mistyped: Vec::new(),
        };
        let label = draft.step.label.clone();
        let step = Some(label.as_str());
        let fields = match value {
            Value::Mapping(map) => self.entries(map, &draft.path, step),
            Value::Null => Vec::new(),
            other => {
                self.at_key(
                    &draft.path,
                    step,
                    format!("a step must be a mapping, found {}", kind(other)),
                    Some("give the step at least a `name` and a `dockerfile`".into()),
                );
                return draft;
            }
        };
        for field in fields {
            self.step_key(&mut draft, field, step, rules);
        }
        draft.step.depends_on = draft.deps.iter().map(|(d, _)| d.clone()).collect();
        self.required(&draft, step);
        draft
    }

    /// One key of a step, checked and set on `draft`.
    fn step_key(
        &mut self,
        draft: &mut Draft,
        (key, path, value): Field<'_>,
        step: Option<&str>,
        rules: &Rules<'_>,
    ) {
        let path = path.as_str();
        let what = format!("`{key}`");
        match key.as_str() {
            "name" => {
                draft.step.name = self.required_string(draft, "name", value, path, step);
                let name = &draft.step.name;
                if let Some(problem) = (!name.is_empty())
                    .then(|| crate::model::reference_problem(name))
                    .flatten()
                {
                    self.at_value(
                        path,
                        step,
                        format!("`name` `{name}` is not an image name: {problem}"),
                        Some("write `[registry/]repository[:tag]`, e.g. `myorg/app:1.2`".into()),
                    );
                }
            }
            "dockerfile" => {
                draft.step.dockerfile =
                    self.required_string(draft, "dockerfile", value, path, step);
            }
            "context" => {
                draft.context = self
                    .string(value, path, step, &what)
                    .filter(|c| !c.is_empty())
            }
            "target" => {
                draft.step.target = self
                    .string(value, path, step, &what)
                    .filter(|t| !t.is_empty())
            }
            "command" => draft.step.command = self.string(value, path, step, &what),
            "after_build_command" => {
                draft.step.after_build_command = self.string(value, path, step, &what);
            }
            "no_cache" => draft.step.no_cache = self.boolean(value, path, step, &key),
            "keep" => draft.step.keep = self.boolean(value, path, step, &key),
            "ssh" => draft.step.ssh = self.boolean(value, path, step, &key),
            "push" => draft.step.push = self.boolean(value, path, step, &key),
            "tags" => draft.step.tags = self.references(value, path, step, &key),
            "cache_from" => draft.step.cache_from = self.references(value, path, step, &key),

            "cache_to" => draft.step.cache_to_inline = self.cache_to(value, path, step),
            "builder" => draft.step.builder = self.builder(value, path, step),
            "args" => draft.step.args = self.args(value, path, step),
            "depends_on" => draft.deps = self.strings(value, path, step, &key, "compile"),
            "artifacts" => {
                for (artifact, item) in self.strings(value, path, step, &key, "/usr/bin/app") {
                    if let Some(artifact) = self.artifact(&artifact, &item, step, rules.workdir) {
                        draft.step.artifacts.push(artifact);
                        draft.artifact_paths.push(item);
                    }
                }
            }
            "cleanup" => draft.step.cleanup = self.cleanup(value, path, step),
            "secrets" => draft.step.secrets = self.step_secrets(value, path, step, rules),
            _ => self.unknown_key(path, step, &key, STEP_KEYS, ""),
        }
        self.untrusted_key(&draft.step, &key, path);
    }

    /// With `--untrusted`, refuses `ssh: true`, `after_build_command` and
    /// `push: true` at their key unless the flag that allows them was given.
    fn untrusted_key(&mut self, step: &Step, key: &str, path: &str) {
        let Some(untrusted) = self.untrusted else {
            return;
        };
        let refused = match (key, &step.after_build_command) {
            ("ssh", _) if step.ssh && !untrusted.ssh => {
                refusal("`ssh: true` forwards this machine's SSH agent", "--ssh")
            }
            ("after_build_command", Some(command)) if !untrusted.after_build_commands => refusal(
                &format!("`after_build_command` runs `{command}` on this machine"),
                "--after-build-commands",
            ),
            ("push", _) if step.push && !untrusted.push => refusal(
                "`push: true` pushes with this machine's registry credentials",
                "--push",
            ),
            _ => return,
        };
        self.at_key(path, Some(&step.label), refused, None);
    }

    /// The `--secret-dir` folders with their symlinks resolved; reports
    /// one that is not a folder.
    fn secret_dirs(&mut self, untrusted: &Untrusted) -> Vec<PathBuf> {
        let mut roots = Vec::with_capacity(untrusted.secret_dirs.len());
        for dir in &untrusted.secret_dirs {
            match std::fs::canonicalize(dir) {
                Ok(real) if real.is_dir() => roots.push(real),
                Ok(real) => self.report(
                    None,
                    None,
                    format!(
                        "--secret-dir `{}` is not a folder: `{}`",
                        dir.display(),
                        real.display()
                    ),
                    None,
                ),
                Err(e) => self.report(
                    None,
                    None,
                    format!("--secret-dir `{}` cannot be resolved: {e}", dir.display()),
                    None,
                ),
            }
        }
        roots
    }

    /// The value of `name` or `dockerfile` (empty if absent); one of the
    /// wrong type is noted in `draft.mistyped`, so that it is reported as
    /// such and not also as missing.
    fn required_string(
        &mut self,
        draft: &mut Draft,
        key: &'static str,
        value: &Value,
        path: &str,
        step: Option<&str>,
    ) -> String {
        if !value.is_null() && self.scalar(value, path).is_none() {
            draft.mistyped.push(key);
        }
        self.string(value, path, step, &format!("`{key}`"))
            .unwrap_or_default()
    }

    /// Reports a missing (or empty) `name` or `dockerfile`.
    fn required(&mut self, draft: &Draft, step: Option<&str>) {
        if draft.step.name.is_empty() && !draft.mistyped.contains(&"name") {
            self.at_key(
                &draft.path,
                step,
                "missing `name`".into(),
                Some("`name` is the image name to build, e.g. `name: myorg/app`".into()),
            );
        }
        if draft.step.dockerfile.is_empty() && !draft.mistyped.contains(&"dockerfile") {
            self.at_key(
                &draft.path,
                step,
                "missing `dockerfile`".into(),
                Some("`dockerfile` is a path relative to the build context, e.g. `dockerfile: Dockerfile`".into()),
            );
        }
    }

    /// A list of image references (`tags`, `cache_from`), each checked.
    fn references(
        &mut self,
        value: &Value,
        path: &str,
        step: Option<&str>,
        key: &str,
    ) -> Vec<String> {
        let mut out = Vec::new();
        for (reference, item) in
            self.strings(value, path, step, key, "registry.example.com/team/app:1.2")
        {
            let problem = if key == "cache_from" {
                crate::model::pull_reference_problem(&reference)
            } else {
                crate::model::reference_problem(&reference)
            };
            match problem {
                None => out.push(reference),
                Some(problem) => self.at_value(
                    &item,
                    step,
                    format!("`{reference}` is not an image name: {problem}"),
                    Some("write `[registry/]repository[:tag]`, e.g. `registry.example.com/team/app:1.2`".into()),
                ),
            }
        }
        out
    }

    /// `cache_to`: only `inline` (BuildKit's cache metadata in the image).
    fn cache_to(&mut self, value: &Value, path: &str, step: Option<&str>) -> bool {
        match self.string(value, path, step, "`cache_to`").as_deref() {
            None => false,
            Some("inline") => true,
            Some(other) => {
                self.at_value(
                    path,
                    step,
                    format!("unknown cache export `{other}`"),
                    Some("`cache_to: inline` is the one export habitus offers: the cache travels in the pushed image".into()),
                );
                false
            }
        }
    }

    /// `builder`: `legacy` or `buildkit`; anything else is reported.
    fn builder(&mut self, value: &Value, path: &str, step: Option<&str>) -> Option<Builder> {
        match self.string(value, path, step, "`builder`").as_deref() {
            None => None,
            Some("legacy") => Some(Builder::Legacy),
            Some("buildkit") => Some(Builder::BuildKit),
            Some(other) => {
                self.at_value(
                    path,
                    step,
                    format!("unknown builder `{other}`"),
                    Some("use `legacy` (the classic builder) or `buildkit`".into()),
                );
                None
            }
        }
    }

    /// The entries of `value` as a mapping, none for nothing; any other
    /// kind is reported at the value with `wrong(kind)` and `help`.
    fn mapping<'v>(
        &mut self,
        value: &'v Value,
        path: &str,
        step: Option<&str>,
        wrong: impl FnOnce(&str) -> String,
        help: Option<&str>,
    ) -> Option<Vec<Field<'v>>> {
        match value {
            Value::Mapping(map) => Some(self.entries(map, path, step)),
            Value::Null => Some(Vec::new()),
            other => {
                self.at_value(path, step, wrong(kind(other)), help.map(str::to_owned));
                None
            }
        }
    }

    /// `args`: build arguments by name; a null value is an empty string.
    fn args(&mut self, value: &Value, path: &str, step: Option<&str>) -> BTreeMap<String, String> {
        let mut args = BTreeMap::new();
        let Some(fields) = self.mapping(
            value,
            path,
            step,
            |found| format!("`args` must be a mapping of build arguments, found {found}"),
            Some("write it as `args: { NAME: value }`"),
        ) else {
            return args;
        };
        for (name, arg_path, value) in fields {
            let value = if value.is_null() {
                Some(String::new())
            } else {
                self.string(value, &arg_path, step, &format!("build argument `{name}`"))
            };
            if let Some(value) = value {
                args.insert(name, value);
            }
        }
        args
    }

    /// `cleanup`: its `commands`.
    fn cleanup(&mut self, value: &Value, path: &str, step: Option<&str>) -> Vec<String> {
        let Some(fields) = self.mapping(
            value,
            path,
            step,
            |found| format!("`cleanup` must be a mapping, found {found}"),
            Some("write it as `cleanup: { commands: [ \"rm -rf /tmp/build\" ] }`"),
        ) else {
            return Vec::new();
        };
        let mut commands = Vec::new();
        for (key, key_path, value) in fields {
            if key == "commands" {
                commands = self
                    .strings(value, &key_path, step, "commands", "\"rm -rf /tmp/build\"")
                    .into_iter()
                    .map(|(c, _)| c)
                    .collect();
            } else {
                self.unknown_key(&key_path, step, &key, CLEANUP_KEYS, " in `cleanup`");
            }
        }
        commands
    }

    /// A step's `secrets`, which schema version `2016-02-13` does not have.
    fn step_secrets(
        &mut self,
        value: &Value,
        path: &str,
        step: Option<&str>,
        rules: &Rules<'_>,
    ) -> BTreeMap<String, SecretSpec> {
        if rules.version == Some(SchemaVersion::V20160213) {
            self.at_key(
                path,
                step,
                "`secrets` needs schema version `2016-03-14`".into(),
                Some("set `version: 2016-03-14` under `build`".into()),
            );
            return BTreeMap::new();
        }
        self.secrets(value, path, step, rules.sec_providers)
    }

    /// `secrets`: each declaration with an enabled type and a value.
    fn secrets(
        &mut self,
        value: &Value,
        path: &str,
        step: Option<&str>,
        sec_providers: &[SecretKind],
    ) -> BTreeMap<String, SecretSpec> {
        let mut secrets = BTreeMap::new();
        let Some(fields) = self.mapping(
            value,
            path,
            step,
            |found| format!("`secrets` must be a mapping of secret names, found {found}"),
            Some("write it as `secrets: { id_rsa: { type: file, value: /path/to/key } }`"),
        ) else {
            return secrets;
        };
        for (name, secret_path, value) in fields {
            if let Some(spec) = self.secret(&name, &secret_path, value, step, sec_providers) {
                secrets.insert(name, spec);
            }
        }
        secrets
    }

    /// The secret `name` declared at `path`; `None` if anything about it
    /// is wrong (reported).
    fn secret(
        &mut self,
        name: &str,
        path: &str,
        value: &Value,
        step: Option<&str>,
        sec_providers: &[SecretKind],
    ) -> Option<SecretSpec> {
        let fields = self.mapping(
            value,
            path,
            step,
            |found| {
                format!("secret `{name}` must be a mapping with `type` and `value`, found {found}")
            },
            None,
        )?;
        let (kind, value) = self.secret_fields(fields, name, step);
        let kind = self.secret_type(kind.as_ref(), name, path, step, sec_providers);
        let value = value.filter(|v| !v.is_empty());
        if value.is_none() {
            self.at_key(
                path,
                step,
                format!("secret `{name}` is missing `value`"),
                Some("for `file` the value is a host path; for `env` a variable NAME read from `HABITUS_NAME`".into()),
            );
        }
        Some(SecretSpec {
            kind: kind?,
            value: value?,
        })
    }

    /// The `type` (with its path) and `value` of the secret `name`;
    /// reports other keys.
    fn secret_fields(
        &mut self,
        fields: Vec<Field<'_>>,
        name: &str,
        step: Option<&str>,
    ) -> (Option<(String, String)>, Option<String>) {
        let mut kind = None;
        let mut value = None;
        for (key, key_path, field) in fields {
            match key.as_str() {
                "type" => {
                    kind = self
                        .string(field, &key_path, step, "`type`")
                        .map(|t| (t, key_path))
                }
                "value" => value = self.string(field, &key_path, step, "`value`"),
                _ => self.unknown_key(
                    &key_path,
                    step,
                    &key,
                    SECRET_KEYS,
                    &format!(" in secret `{name}`"),
                ),
            }
        }
        (kind, value)
    }

    /// The type of the secret `name` at `path` if it is known and enabled
    /// (`kind` is its text and path); reports why not.
    fn secret_type(
        &mut self,
        kind: Option<&(String, String)>,
        name: &str,
        path: &str,
        step: Option<&str>,
        sec_providers: &[SecretKind],
    ) -> Option<SecretKind> {
        let types = SecretKind::names();
        let Some((text, key_path)) = kind else {
            self.at_key(
                path,
                step,
                format!("secret `{name}` is missing `type`"),
                Some(format!("valid types: {}", list(&types))),
            );
            return None;
        };
        let Some(kind) = SecretKind::parse(text) else {
            let help = match suggest(text, types) {
                Some(close) => format!("did you mean `{close}`? valid types: {}", list(&types)),
                None => format!("valid types: {}", list(&types)),
            };
            self.at_value(
                key_path,
                step,
                format!("unknown secret type `{text}`"),
                Some(help),
            );
            return None;
        };
        if !sec_providers.contains(&kind) {
            let mut enabled: Vec<&str> = sec_providers.iter().map(|p| p.name()).collect();
            enabled.push(kind.name());
            self.at_value(
                key_path,
                step,
                format!("secret type `{kind}` is not enabled"),
                Some(format!(
                    "enable it with `--sec-providers={}`",
                    enabled.join(",")
                )),
            );
            return None;
        }
        Some(kind)
    }

    fn artifact(
        &mut self,
        text: &str,
        path: &str,
        step: Option<&str>,
        workdir: &Path,
    ) -> Option<Artifact> {
        let (source, dest) = match text.split_once(':') {
            Some((source, dest)) => (source, dest),
            None => (text, ""),
        };
        if dest.contains(':') {
            self.at_value(
                path,
                step,
                format!("artifact `{text}` has more than one `:`"),
                Some("write `/path/in/image` or `/path/in/image:folder`".into()),
            );
            return None;
        }
        if !source.starts_with('/') {
            self.at_value(
                path,
                step,
                format!("artifact source `{source}` is not an absolute path"),
                Some(format!(
                    "write the full path inside the image, e.g. `/{}`",
                    source.trim_start_matches("./")
                )),
            );
            return None;
        }
        if Path::new(source).file_name().is_none() {
            self.at_value(
                path,
                step,
                format!("artifact source `{source}` does not name a file or folder"),
                None,
            );
            return None;
        }
        let relative = match dest.strip_prefix('/') {
            Some(relative) => {
                self.warn(
                    path,
                    format!(
                        "artifact destination `{dest}` is taken relative to the work directory"
                    ),
                );
                relative
            }
            None => dest,
        };
        let mut normalized = PathBuf::new();
        for component in Path::new(relative).components() {
            match component {
                Component::Normal(part) => normalized.push(part),
                Component::ParentDir if normalized.pop() => {}
                Component::CurDir | Component::RootDir | Component::Prefix(_) => {}
                Component::ParentDir => {
                    self.at_value(
                        path,
                        step,
                        format!("artifact destination `{dest}` is outside the work directory"),
                        Some(format!(
                            "write a folder relative to the work directory `{}`",
                            workdir.display()
                        )),
                    );
                    return None;
                }
            }
        }
        // `/dir/.` spills the folder's content into the destination.
        let lands = if source.trim_end_matches('/').ends_with("/.") {
            normalized.clone()
        } else {
            normalized.join(Path::new(source).file_name()?)
        };
        if workpath::in_git_dir(&lands) {
            self.at_value(
                path,
                step,
                format!(
                    "artifact `{text}` would land in `{}`, inside a `.git` folder, where git finds the hooks and configuration it runs",
                    lands.display()
                ),
                Some("copy the artifact to a folder outside `.git`".into()),
            );
            return None;
        }
        Some(Artifact {
            source: source.to_owned(),
            dest: normalized,
        })
    }

    fn unique_names(&mut self, drafts: &[Draft]) {
        // Compared as Docker reads them: `app`, `app:latest` and
        // `docker.io/library/app:latest` are one image.
        let mut seen: HashMap<String, (&str, &str)> = HashMap::with_capacity(drafts.len());
        for draft in drafts {
            let name = draft.step.name.as_str();
            if name.is_empty() {
                continue;
            }
            let key = normalize_reference(name);
            if let Some((first, spelled)) = seen.get(&key) {
                let message = if *spelled == name {
                    format!("image name `{name}` is already used by step `{first}`")
                } else {
                    format!(
                        "image name `{name}` is the image `{spelled}` of step `{first}`: Docker reads both as `{key}`"
                    )
                };
                self.at_value(
                    &key_path(&draft.path, "name"),
                    Some(&draft.step.label),
                    message,
                    Some("give every step its own `name`".into()),
                );
            } else {
                seen.insert(key, (&draft.step.label, name));
            }
        }
        // A `tags:` name another step also gives its image would make one
        // step push the other's image.
        let mut owner: HashMap<String, &str> = HashMap::new();
        for draft in drafts.iter().filter(|d| !d.step.name.is_empty()) {
            owner
                .entry(normalize_reference(&draft.step.name))
                .or_insert(&draft.step.label);
        }
        for draft in drafts {
            for tag in &draft.step.tags {
                let key = normalize_reference(tag);
                match owner.get(&key) {
                    Some(other) if *other != draft.step.label => {
                        let other = other.to_string();
                        self.at_value(
                            &key_path(&draft.path, "tags"),
                            Some(&draft.step.label),
                            format!("tag `{tag}` also names the image of step `{other}`"),
                            Some("give every step's image names of its own".into()),
                        );
                    }
                    Some(_) => {}
                    None => {
                        owner.insert(key, &draft.step.label);
                    }
                }
            }
        }
    }

    /// Checks the dependency graph: unique labels, known `depends_on`
    /// entries, then (if the labels are unique) no loops. Once
    /// `depends_on` forms a plan, a step whose Dockerfile uses another
    /// step's image that the plan does not build before it gets that
    /// step as an inferred dependency, and the plan is checked again.
    fn dependencies(&mut self, drafts: &mut [Draft], workdir: &Path) {
        let mut nodes = {
            let (labels, duplicates) = self.labels(drafts);
            let nodes = self.known_dependencies(drafts, &labels);
            if duplicates {
                return;
            }
            self.cycles(drafts, &labels, &nodes);
            nodes
        };
        let Some(plan) = self.plan.take() else {
            return;
        };
        let steps: Vec<&Step> = drafts.iter().map(|d| &d.step).collect();
        let uses = super::infer::image_uses(&steps, workdir);
        let mut inferred = false;
        for (i, uses) in uses.into_iter().enumerate() {
            for used in uses {
                let ordered = plan
                    .index_of(&used.step)
                    .is_some_and(|d| plan.is_after(i, d));
                if !ordered {
                    nodes[i].1.push(used.step.clone());
                    drafts[i].step.inferred.push(used);
                    inferred = true;
                }
            }
        }
        if !inferred {
            self.plan = Some(plan);
            return;
        }
        let (labels, _) = self.labels(drafts);
        self.cycles(drafts, &labels, &nodes);
    }

    /// Each label's index in `drafts`, and whether one is used twice
    /// (reported).
    fn labels<'d>(&mut self, drafts: &'d [Draft]) -> (HashMap<&'d str, usize>, bool) {
        let mut labels: HashMap<&str, usize> = HashMap::with_capacity(drafts.len());
        let mut duplicates = false;
        for (i, draft) in drafts.iter().enumerate() {
            // YAML rejects repeated keys, but `1:` and `"1":` differ there.
            if labels.insert(draft.step.label.as_str(), i).is_some() {
                duplicates = true;
                self.at_key(
                    &draft.path,
                    Some(&draft.step.label),
                    "this step label is used more than once".into(),
                    Some("every label under `steps` must be unique".into()),
                );
            }
        }
        (labels, duplicates)
    }

    /// Each step's label with the `depends_on` entries that name a step;
    /// reports the others.
    fn known_dependencies(
        &mut self,
        drafts: &[Draft],
        labels: &HashMap<&str, usize>,
    ) -> Vec<(String, Vec<String>)> {
        let mut unknown = 0;
        let mut nodes = Vec::with_capacity(drafts.len());
        for draft in drafts {
            let mut deps = Vec::with_capacity(draft.deps.len());
            for (dep, path) in &draft.deps {
                if labels.contains_key(dep.as_str()) {
                    deps.push(dep.clone());
                    continue;
                }
                unknown += 1;
                let help = unknown_step_help(drafts, dep, unknown <= MAX_SUGGESTED_DEPENDENCIES);
                self.at_value(
                    path,
                    Some(&draft.step.label),
                    format!("`depends_on` names unknown step `{dep}`"),
                    help,
                );
            }
            nodes.push((draft.step.label.clone(), deps));
        }
        nodes
    }

    /// Reports every loop among the steps' known dependencies.
    fn cycles(
        &mut self,
        drafts: &[Draft],
        labels: &HashMap<&str, usize>,
        nodes: &[(String, Vec<String>)],
    ) {
        let errors = match Plan::new(nodes) {
            Ok(plan) => {
                self.plan = Some(plan);
                return;
            }
            Err(errors) => errors,
        };
        for error in errors {
            let PlanError::Cycle { path } = error else {
                // Unknown dependencies and duplicate labels were reported above.
                continue;
            };
            let Some(draft) = path
                .first()
                .and_then(|first| labels.get(first.as_str()))
                .map(|&i| &drafts[i])
            else {
                continue;
            };
            // Point at the entry that closes the loop's first edge, or
            // at `dockerfile` when the Dockerfile's use of an image does.
            let next = path.get(1);
            let at = match next.and_then(|next| draft.deps.iter().find(|(dep, _)| dep == next)) {
                Some((_, p)) => p.clone(),
                None if next.is_some() => key_path(&draft.path, "dockerfile"),
                None => draft.path.clone(),
            };
            let help = cycle_help(drafts, labels, &path);
            self.at_value(
                &at,
                Some(&draft.step.label),
                format!("circular dependency `{}`", path.join(" -> ")),
                Some(help),
            );
        }
    }

    /// Resolves `rel` under the work directory `real` (symlinks resolved)
    /// as the kernel would; reports a symlink that leads out of it at
    /// `path`. Returns the resolved path under `workdir` as written.
    fn confine(
        &mut self,
        (workdir, real): (&Path, &Path),
        rel: &Path,
        path: &str,
        step: Option<&str>,
        what: &str,
    ) -> Option<PathBuf> {
        let resolved = match workpath::resolve(real, rel) {
            Ok(resolved) => resolved,
            Err(e) => {
                self.at_value(
                    path,
                    step,
                    format!("cannot resolve {what}: {e}"),
                    Some("remove the symlink loop".into()),
                );
                return None;
            }
        };
        match resolved.escape {
            None => Some(match resolved.path.strip_prefix(real) {
                Ok(inside) => normalize(&workdir.join(inside)),
                Err(_) => resolved.path,
            }),
            Some(escape) => {
                let (message, help) = match &escape.link {
                    Some(link) => (
                        format!(
                            "{what} leads out of the work directory through the symlink `{}` -> `{}`",
                            link.display(),
                            escape.target.display()
                        ),
                        format!(
                            "paths are resolved, not read: remove the symlink `{}` or name a path that stays inside the work directory `{}`",
                            link.display(),
                            workdir.display()
                        ),
                    ),
                    None => (
                        format!(
                            "{what} resolves outside the work directory, to `{}`",
                            escape.target.display()
                        ),
                        format!("name a path inside the work directory `{}`", workdir.display()),
                    ),
                };
                self.at_value(path, step, message, Some(help));
                None
            }
        }
    }

    /// Resolves and checks, on disk and following symlinks, the artifact
    /// destinations, relative secret files, the context and the
    /// Dockerfile: each must stay inside the work directory `workdir`
    /// (`real` once its own symlinks are resolved).
    fn paths(&mut self, draft: &mut Draft, roots: (&Path, &Path)) {
        let label = draft.step.label.clone();
        let step = Some(label.as_str());
        self.artifact_destinations(draft, roots, step);
        if self.untrusted.is_some() {
            self.untrusted_secret_files(draft, roots, step);
        } else {
            self.secret_files(draft, roots, step);
        }
        if let Some(context) = &draft.context {
            let context_at = OnDisk {
                key: "context",
                base: roots.0,
                base_name: "work directory",
                kind: "directory",
                is_kind: Path::is_dir,
                outside: "the context must be the work directory or a folder inside it",
            };
            let path = key_path(&draft.path, "context");
            let Some(resolved) = self.on_disk(roots, &context_at, context, &path, step) else {
                return;
            };
            draft.step.context = resolved;
        }
        if draft.step.dockerfile.is_empty() {
            return;
        }
        let dockerfile_at = OnDisk {
            key: "dockerfile",
            base: &draft.step.context,
            base_name: "build context",
            kind: "file",
            is_kind: Path::is_file,
            outside: "the Dockerfile must be a file inside the work directory",
        };
        let path = key_path(&draft.path, "dockerfile");
        let dockerfile = &draft.step.dockerfile;
        if let Some(resolved) = self.on_disk(roots, &dockerfile_at, dockerfile, &path, step) {
            draft.step.dockerfile_path = resolved;
        }
    }

    /// Checks that no artifact destination leads out of the work directory.
    fn artifact_destinations(&mut self, draft: &Draft, roots: (&Path, &Path), step: Option<&str>) {
        for (artifact, path) in draft.step.artifacts.iter().zip(&draft.artifact_paths) {
            let what = format!(
                "artifact destination `{}`",
                if artifact.dest.as_os_str().is_empty() {
                    ".".into()
                } else {
                    artifact.dest.display().to_string()
                }
            );
            self.confine(roots, &artifact.dest, path, step, &what);
        }
    }

    /// Checks that no `file` secret written as a path inside the work
    /// directory leads out of it.
    fn secret_files(&mut self, draft: &Draft, roots: (&Path, &Path), step: Option<&str>) {
        let workdir = roots.0;
        for (name, spec) in &draft.step.secrets {
            let value = Path::new(&spec.value);
            if spec.kind != SecretKind::File || value.is_absolute() {
                continue;
            }
            // `../keys/id` names a file outside on purpose; a symlink that
            // leads out of a path written inside is what is refused.
            let lexical = normalize(&workdir.join(value));
            let Ok(rel) = lexical.strip_prefix(workdir) else {
                continue;
            };
            let path = key_path(&key_path(&key_path(&draft.path, "secrets"), name), "value");
            let what = format!("secret file `{}`", spec.value);
            self.confine(roots, rel, &path, step, &what);
        }
    }

    /// With `--untrusted`: refuses a `file` secret that resolves, `..` and
    /// symlinks followed, outside the work directory (`real` once its own
    /// symlinks are resolved) and every `--secret-dir`. The value of one
    /// inside becomes the path it resolved to, so that what is read is
    /// what was checked.
    fn untrusted_secret_files(
        &mut self,
        draft: &mut Draft,
        (workdir, real): (&Path, &Path),
        step: Option<&str>,
    ) {
        let secrets_path = key_path(&draft.path, "secrets");
        for (name, spec) in &mut draft.step.secrets {
            if spec.kind != SecretKind::File {
                continue;
            }
            let written = workdir.join(&spec.value);
            // A missing file is resolved as far as it exists (and then
            // fails to be read, as any missing secret does).
            let resolved = std::fs::canonicalize(&written).unwrap_or_else(|_| {
                workpath::resolve(Path::new("/"), &written)
                    .map_or_else(|_| normalize(&written), |r| r.path)
            });
            let mut roots =
                std::iter::once(real).chain(self.secret_roots.iter().map(PathBuf::as_path));
            if roots.any(|root| resolved.starts_with(root)) {
                if let Some(text) = resolved.to_str() {
                    spec.value = text.to_owned();
                }
                continue;
            }
            let outside = if self.secret_roots.is_empty() {
                "outside the work directory"
            } else {
                "outside the work directory and every --secret-dir"
            };
            let folder = resolved.parent().unwrap_or(Path::new("/"));
            let message = refusal(
                &format!(
                    "secret `{name}` reads the file `{}`, which resolves to `{}`, {outside}",
                    spec.value,
                    resolved.display()
                ),
                &format!("--secret-dir {}", folder.display()),
            );
            let path = key_path(&key_path(&secrets_path, name), "value");
            self.at_value(&path, step, message, None);
        }
    }

    /// Resolves `value` of the key at `path` as `at` says, inside the work
    /// directory, and checks it is there and of the right kind.
    fn on_disk(
        &mut self,
        roots: (&Path, &Path),
        at: &OnDisk<'_>,
        value: &str,
        path: &str,
        step: Option<&str>,
    ) -> Option<PathBuf> {
        let (workdir, key) = (roots.0, at.key);
        // As Go Habitus (filepath.Join): always inside the work dir's tree.
        let lexical = normalize(&at.base.join(value.trim_start_matches('/')));
        let Ok(rel) = lexical.strip_prefix(workdir) else {
            self.at_value(
                path,
                step,
                format!(
                    "{key} `{value}` is outside the work directory `{}`",
                    workdir.display()
                ),
                Some(at.outside.into()),
            );
            return None;
        };
        let what = format!("{key} `{value}`");
        let resolved = self.confine(roots, rel, path, step, &what)?;
        if (at.is_kind)(&resolved) {
            return Some(resolved);
        }
        let message = if resolved.exists() {
            format!("{what} is not a {}: `{}`", at.kind, resolved.display())
        } else {
            format!("{what} not found at `{}`", resolved.display())
        };
        let help = format!(
            "`{key}` is relative to the {} `{}`",
            at.base_name,
            at.base.display()
        );
        self.at_value(path, step, message, Some(help));
        None
    }
}

/// How to break the loop `path`: remove a `depends_on` entry, or a
/// Dockerfile's use of another step's image, named with its line.
fn cycle_help(drafts: &[Draft], labels: &HashMap<&str, usize>, path: &[String]) -> String {
    let uses: Vec<String> = path
        .windows(2)
        .filter_map(|edge| {
            let draft = &drafts[*labels.get(edge[0].as_str())?];
            let used = draft.step.inferred.iter().find(|d| d.step == edge[1])?;
            Some(format!(
                "step `{}` uses the image of step `{}` (Dockerfile line {})",
                edge[0], edge[1], used.line
            ))
        })
        .collect();
    if uses.is_empty() {
        "remove one of these `depends_on` entries".into()
    } else {
        format!(
            "{}: remove that use or one of these `depends_on` entries",
            uses.join("; ")
        )
    }
}

/// The help for a file without a proper `build` mapping.
fn build_help() -> Option<String> {
    Some("a build.yml starts with `build:`, holding `version:` and `steps:`".to_owned())
}

/// The help for a missing or unknown schema version.
fn versions_help() -> Option<String> {
    Some(format!("valid versions: {}", list(SCHEMA_VERSIONS)))
}

/// The help for a `depends_on` entry `dep` that names no step: the step
/// whose image it is, else the closest label (searched for only if
/// `search`), else every label when there are few.
fn unknown_step_help(drafts: &[Draft], dep: &str, search: bool) -> Option<String> {
    let labels = || drafts.iter().map(|d| d.step.label.as_str());
    let close = if search { suggest(dep, labels()) } else { None };
    let image_of = drafts.iter().find(|d| {
        !d.step.name.is_empty()
            && (d.step.name == dep || without_tag(&d.step.name) == without_tag(dep))
    });
    match (image_of, close) {
        (Some(builder), _) => Some(format!(
            "`depends_on` takes step keys: `{dep}` is the image of step `{}`",
            builder.step.label
        )),
        (None, Some(close)) => Some(format!("did you mean `{close}`?")),
        (None, None) if drafts.len() <= 10 => Some(format!(
            "known steps: {}",
            list(&labels().collect::<Vec<_>>())
        )),
        (None, None) => None,
    }
}

/// The help for a build.yml in an older format: its first step in the
/// 2016-03-14 form. `steps` is what the file has (a list of steps with
/// `name`, or a mapping).
fn modern_form(steps: &Value) -> String {
    let first = match steps {
        Value::Sequence(list) => list.first().map(|step| {
            let name = step.get("name").and_then(Value::as_str).unwrap_or("");
            (label_for(name), step.clone())
        }),
        Value::Mapping(map) => map.iter().next().map(|(k, v)| {
            (
                k.as_str()
                    .map_or_else(|| "step1".to_string(), str::to_owned),
                v.clone(),
            )
        }),
        _ => None,
    };
    let mut text = String::from(
        "habitus reads the 2016-03-14 format (Go Habitus's `build:` with `version:` and a mapping of `steps:`); the first step in it:\n    build:\n      version: 2016-03-14\n      steps:\n",
    );
    match first {
        Some((label, step)) => {
            text.push_str(&format!("        {label}:\n"));
            let body = serde_yaml::to_string(&step).unwrap_or_default();
            for line in body.lines().filter(|l| !l.is_empty()) {
                text.push_str(&format!("          {line}\n"));
            }
        }
        None => text.push_str(
            "        compile:\n          name: myorg/app\n          dockerfile: Dockerfile\n",
        ),
    }
    text.trim_end().to_string()
}

/// An image name without its tag: `host:5000/a/b:1.2` → `host:5000/a/b`.
fn without_tag(name: &str) -> &str {
    match name.rfind(':') {
        Some(colon) if !name[colon..].contains('/') => &name[..colon],
        _ => name,
    }
}

/// A step label from an image name: `myorg/builder:1.2` → `builder`.
fn label_for(name: &str) -> String {
    let last = name.rsplit('/').next().unwrap_or(name);
    let bare = last.split(':').next().unwrap_or(last);
    let label: String = bare
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '_' || c == '-' {
                c
            } else {
                '-'
            }
        })
        .collect();
    if label.is_empty() {
        "step1".to_string()
    } else {
        label
    }
}

/// The work directory, absolute and without `.`/`..`.
fn workdir(dir: &Path) -> PathBuf {
    normalize(&std::path::absolute(dir).unwrap_or_else(|_| dir.to_path_buf()))
}

/// Removes `.` and `..` without touching the disk (`..` at the root stays
/// at the root).
pub(crate) fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if out.file_name().is_some() {
                    out.pop();
                } else if !out.has_root() {
                    out.push("..");
                }
            }
            other => out.push(other),
        }
    }
    out
}

/// How a value is described in a type error.
fn kind(value: &Value) -> &'static str {
    match value {
        Value::Null => "nothing",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a list",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}

#[cfg(test)]
mod tests {
    use super::normalize;
    use std::path::{Path, PathBuf};

    #[test]
    fn normalize_is_lexical() {
        assert_eq!(
            normalize(Path::new("/w/a/../b/./c")),
            PathBuf::from("/w/b/c")
        );
        assert_eq!(normalize(Path::new("/w/../../x")), PathBuf::from("/x"));
        assert_eq!(normalize(Path::new("a/../../x")), PathBuf::from("../x"));
        assert_eq!(normalize(Path::new("../../x")), PathBuf::from("../../x"));
    }
}
