//! Renders a [`Plan`] with its [`Manifest`] for people and tools: an aligned
//! text summary, JSON, a Graphviz digraph and a Mermaid flowchart. Every
//! format ends with a newline, so callers `print!` it as is.
//!
//! Step indices of the plan are positions in `Manifest::steps`: the plan is
//! built from the steps in file order.

use std::fmt::Write as _;
use std::path::Path;

use serde::Serialize;

use crate::manifest::{Manifest, SchemaVersion};
use crate::plan::Plan;

/// An aligned summary, one block per level:
///
/// ```text
/// build.yml: 3 steps, 2 levels
/// level 0
///   build    myorg/build  Dockerfile.build  .
/// level 1
///   runtime  myorg/app    Dockerfile        .    <- build
///   alpine   myorg/app:a  alp/Dockerfile    alp  <- build
/// leaves: runtime, alpine
/// ```
///
/// The context column is relative to the work directory (`.` for the work
/// directory itself).
pub fn text(m: &Manifest, p: &Plan) -> String {
    check(m, p);
    let contexts: Vec<String> = m
        .steps
        .iter()
        .map(|s| relative(&s.context, &m.workdir))
        .collect();
    let rows: Vec<[&str; 4]> = m
        .steps
        .iter()
        .zip(&contexts)
        .map(|(s, context)| [&s.label, &s.name, &s.dockerfile, context.as_str()])
        .collect();
    let mut widths = [0usize; 4];
    for row in &rows {
        for (w, cell) in widths.iter_mut().zip(row) {
            *w = (*w).max(cell.chars().count());
        }
    }

    // Writing into a String cannot fail.
    let mut out = String::with_capacity(64 + rows.len() * (widths.iter().sum::<usize>() + 32));
    let _ = writeln!(
        out,
        "{}: {}, {}",
        m.file.display(),
        plural(p.len(), "step"),
        plural(p.levels().len(), "level")
    );
    for (n, level) in p.levels().iter().enumerate() {
        let _ = writeln!(out, "level {n}");
        for &i in level {
            out.push(' ');
            for (cell, w) in rows[i].iter().zip(widths) {
                let _ = write!(out, " {cell:<w$} ");
            }
            if !p.deps(i).is_empty() {
                out.push_str(" <-");
                for (k, &d) in p.deps(i).iter().enumerate() {
                    out.push_str(if k == 0 { " " } else { ", " });
                    out.push_str(p.label(d));
                }
            }
            out.truncate(out.trim_end().len());
            out.push('\n');
        }
    }
    if !p.is_empty() {
        let _ = writeln!(out, "leaves: {}", labels(p, p.leaves()).join(", "));
    }
    out
}

/// The plan as pretty-printed JSON:
/// `{"file", "workdir", "version", "order", "levels", "leaves", "steps"}`,
/// where `order`, `levels` and `leaves` hold labels and each step (in file
/// order) has `label`, `name`, `dockerfile`, `context` (absolute),
/// `depends_on` (deduplicated), `level` and `leaf`.
pub fn json(m: &Manifest, p: &Plan) -> String {
    check(m, p);
    let doc = JsonPlan {
        file: m.file.to_string_lossy().into_owned(),
        workdir: m.workdir.to_string_lossy().into_owned(),
        version: match m.version {
            SchemaVersion::V20160213 => "2016-02-13",
            SchemaVersion::V20160314 => "2016-03-14",
        },
        order: labels(p, p.order()),
        levels: p.levels().iter().map(|l| labels(p, l)).collect(),
        leaves: labels(p, p.leaves()),
        steps: m
            .steps
            .iter()
            .enumerate()
            .map(|(i, s)| JsonStep {
                label: &s.label,
                name: &s.name,
                dockerfile: &s.dockerfile,
                context: s.context.to_string_lossy().into_owned(),
                depends_on: labels(p, p.deps(i)),
                level: p.level(i),
                leaf: p.is_leaf(i),
            })
            .collect(),
    };
    let mut out = serde_json::to_string_pretty(&doc).expect("a plan always serializes");
    out.push('\n');
    out
}

/// A Graphviz digraph for `dot -Tsvg`: one box per step labelled with the
/// step label and image name, and an edge from each dependency to its
/// dependent. Node ids are the quoted step labels.
pub fn dot(m: &Manifest, p: &Plan) -> String {
    check(m, p);
    let mut out = String::from("digraph habitus {\n  rankdir=LR;\n  node [shape=box];\n");
    for s in &m.steps {
        out.push_str(&format!(
            "  \"{}\" [label=\"{}\\n{}\"];\n",
            dot_escape(&s.label),
            dot_escape(&s.label),
            dot_escape(&s.name)
        ));
    }
    for i in 0..p.len() {
        for &d in p.deps(i) {
            out.push_str(&format!(
                "  \"{}\" -> \"{}\";\n",
                dot_escape(p.label(d)),
                dot_escape(p.label(i))
            ));
        }
    }
    out.push_str("}\n");
    out
}

/// A Mermaid flowchart (left to right): node `sN` is step `N` in file
/// order, labelled with the step label and image name, and an arrow runs
/// from each dependency to its dependent.
pub fn mermaid(m: &Manifest, p: &Plan) -> String {
    check(m, p);
    let mut out = String::from("flowchart LR\n");
    for (i, s) in m.steps.iter().enumerate() {
        out.push_str(&format!(
            "  s{i}[\"{}<br/>{}\"]\n",
            mermaid_escape(&s.label),
            mermaid_escape(&s.name)
        ));
    }
    for i in 0..p.len() {
        for &d in p.deps(i) {
            out.push_str(&format!("  s{d} --> s{i}\n"));
        }
    }
    out
}

#[derive(Serialize)]
struct JsonPlan<'a> {
    file: String,
    workdir: String,
    version: &'static str,
    order: Vec<&'a str>,
    levels: Vec<Vec<&'a str>>,
    leaves: Vec<&'a str>,
    steps: Vec<JsonStep<'a>>,
}

#[derive(Serialize)]
struct JsonStep<'a> {
    label: &'a str,
    name: &'a str,
    dockerfile: &'a str,
    context: String,
    depends_on: Vec<&'a str>,
    level: usize,
    leaf: bool,
}

fn check(m: &Manifest, p: &Plan) {
    debug_assert_eq!(m.steps.len(), p.len(), "plan built from another manifest");
}

fn labels<'a>(p: &'a Plan, indices: &[usize]) -> Vec<&'a str> {
    indices.iter().map(|&i| p.label(i)).collect()
}

fn plural(n: usize, word: &str) -> String {
    if n == 1 {
        format!("{n} {word}")
    } else {
        format!("{n} {word}s")
    }
}

/// `context` relative to `workdir`, `.` for the work directory itself, and
/// the path as is when it lies elsewhere.
fn relative(context: &Path, workdir: &Path) -> String {
    match context.strip_prefix(workdir) {
        Ok(rest) if rest.as_os_str().is_empty() => ".".to_owned(),
        Ok(rest) => rest.display().to_string(),
        Err(_) => context.display().to_string(),
    }
}

/// Escapes a DOT double-quoted string: backslash and quote are escaped and
/// line breaks become `\n`, so an id or label cannot end its string early.
fn dot_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => {}
            c => out.push(c),
        }
    }
    out
}

/// Escapes text inside a quoted Mermaid label with its entity codes, so
/// quotes, `#` and markup characters show up literally.
fn mermaid_escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '"' => out.push_str("#quot;"),
            '#' => out.push_str("#35;"),
            '<' => out.push_str("#lt;"),
            '>' => out.push_str("#gt;"),
            '&' => out.push_str("#amp;"),
            '\n' => out.push_str("<br/>"),
            c => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::{dot, json, mermaid, text};
    use crate::manifest::{Manifest, SchemaVersion, Step};
    use crate::plan::Plan;

    fn step(label: &str, name: &str, dockerfile: &str, context: &str, deps: &[&str]) -> Step {
        Step {
            name: name.to_owned(),
            dockerfile: dockerfile.to_owned(),
            dockerfile_path: PathBuf::from("/w").join(dockerfile),
            context: PathBuf::from(context),
            depends_on: deps.iter().map(|d| (*d).to_owned()).collect(),
            ..Step::for_test(label)
        }
    }

    fn manifest(steps: Vec<Step>) -> (Manifest, Plan) {
        let nodes: Vec<(String, Vec<String>)> = steps
            .iter()
            .map(|s| (s.label.clone(), s.depends_on.clone()))
            .collect();
        let plan = Plan::new(&nodes).unwrap();
        let m = Manifest {
            file: PathBuf::from("build.yml"),
            workdir: PathBuf::from("/w"),
            version: SchemaVersion::V20160314,
            steps,
        };
        (m, plan)
    }

    /// build → runtime, alpine (with a sub-directory context), listed with
    /// a repeated dependency.
    fn secretapp() -> (Manifest, Plan) {
        manifest(vec![
            step("build", "myorg/build", "Dockerfile.build", "/w", &[]),
            step("runtime", "myorg/app", "Dockerfile", "/w", &["build"]),
            step(
                "alpine",
                "myorg/app:alpine",
                "alp/Dockerfile",
                "/w/alp",
                &["build", "build"],
            ),
        ])
    }

    #[test]
    fn text_output() {
        let (m, p) = secretapp();
        assert_eq!(
            text(&m, &p),
            "\
build.yml: 3 steps, 2 levels
level 0
  build    myorg/build       Dockerfile.build  .
level 1
  runtime  myorg/app         Dockerfile        .    <- build
  alpine   myorg/app:alpine  alp/Dockerfile    alp  <- build
leaves: runtime, alpine
"
        );
    }

    #[test]
    fn text_of_single_step_and_outside_context() {
        let (m, p) = manifest(vec![step("only", "img", "Dockerfile", "/elsewhere", &[])]);
        assert_eq!(
            text(&m, &p),
            "build.yml: 1 step, 1 level\nlevel 0\n  only  img  Dockerfile  /elsewhere\nleaves: only\n"
        );
    }

    #[test]
    fn text_of_empty_plan() {
        let (m, p) = manifest(Vec::new());
        assert_eq!(text(&m, &p), "build.yml: 0 steps, 0 levels\n");
    }

    #[test]
    fn json_output() {
        let (m, p) = secretapp();
        assert_eq!(
            json(&m, &p),
            r#"{
  "file": "build.yml",
  "workdir": "/w",
  "version": "2016-03-14",
  "order": [
    "build",
    "runtime",
    "alpine"
  ],
  "levels": [
    [
      "build"
    ],
    [
      "runtime",
      "alpine"
    ]
  ],
  "leaves": [
    "runtime",
    "alpine"
  ],
  "steps": [
    {
      "label": "build",
      "name": "myorg/build",
      "dockerfile": "Dockerfile.build",
      "context": "/w",
      "depends_on": [],
      "level": 0,
      "leaf": false
    },
    {
      "label": "runtime",
      "name": "myorg/app",
      "dockerfile": "Dockerfile",
      "context": "/w",
      "depends_on": [
        "build"
      ],
      "level": 1,
      "leaf": true
    },
    {
      "label": "alpine",
      "name": "myorg/app:alpine",
      "dockerfile": "alp/Dockerfile",
      "context": "/w/alp",
      "depends_on": [
        "build"
      ],
      "level": 1,
      "leaf": true
    }
  ]
}
"#
        );
    }

    #[test]
    fn dot_output() {
        let (m, p) = secretapp();
        assert_eq!(
            dot(&m, &p),
            r#"digraph habitus {
  rankdir=LR;
  node [shape=box];
  "build" [label="build\nmyorg/build"];
  "runtime" [label="runtime\nmyorg/app"];
  "alpine" [label="alpine\nmyorg/app:alpine"];
  "build" -> "runtime";
  "build" -> "alpine";
}
"#
        );
    }

    #[test]
    fn dot_escapes_quotes_and_backslashes() {
        let (m, p) = manifest(vec![
            step("a\"b", "x\\y", "Dockerfile", "/w", &[]),
            step("c", "img", "Dockerfile", "/w", &["a\"b"]),
        ]);
        let out = dot(&m, &p);
        assert!(out.contains(r#"  "a\"b" [label="a\"b\nx\\y"];"#), "{out}");
        assert!(out.contains(r#"  "a\"b" -> "c";"#), "{out}");
    }

    #[test]
    fn mermaid_output() {
        let (m, p) = secretapp();
        assert_eq!(
            mermaid(&m, &p),
            r#"flowchart LR
  s0["build<br/>myorg/build"]
  s1["runtime<br/>myorg/app"]
  s2["alpine<br/>myorg/app:alpine"]
  s0 --> s1
  s0 --> s2
"#
        );
    }

    #[test]
    fn mermaid_escapes_label_text() {
        let (m, p) = manifest(vec![step("a\"<b>#1", "x&y", "Dockerfile", "/w", &[])]);
        assert_eq!(
            mermaid(&m, &p),
            "flowchart LR\n  s0[\"a#quot;#lt;b#gt;#35;1<br/>x#amp;y\"]\n"
        );
    }
}
