//! The parts' rules, read from the source: imports point down, never up,
//! and no top-level module imports one that imports it back. Also the
//! size limits the code keeps: `lib.rs` only dispatches, and no function
//! outside tests is longer than 100 lines.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// Every `.rs` file under `dir`.
fn sources(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    for entry in std::fs::read_dir(dir).unwrap() {
        let path = entry.unwrap().path();
        if path.is_dir() {
            out.extend(sources(&path));
        } else if path.extension().is_some_and(|e| e == "rs") {
            out.push(path);
        }
    }
    out.sort();
    out
}

fn src() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("src")
}

/// The code of a file without its comments and its `#[cfg(test)]` module
/// (tests may reach anywhere).
fn code(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap();
    let text = match text.find("#[cfg(test)]\nmod tests") {
        Some(i) => &text[..i],
        None => &text,
    };
    text.lines()
        .filter(|l| !l.trim_start().starts_with("//"))
        .collect::<Vec<_>>()
        .join("\n")
}

/// The top-level module a file belongs to (`engine` for
/// `src/engine/docker/build.rs`); `lib` and `main` for those files.
fn module_of(path: &Path) -> String {
    let rel = path.strip_prefix(src()).unwrap();
    let first = rel
        .components()
        .next()
        .unwrap()
        .as_os_str()
        .to_string_lossy();
    first.trim_end_matches(".rs").to_string()
}

/// Top-level module → the top-level modules its code names (`crate::x`).
fn imports() -> BTreeMap<String, BTreeSet<String>> {
    let files = sources(&src());
    let modules: BTreeSet<String> = files.iter().map(|p| module_of(p)).collect();
    let mut graph: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for file in &files {
        let from = module_of(file);
        let code = code(file);
        let edges = graph.entry(from.clone()).or_default();
        for (i, _) in code.match_indices("crate::") {
            let name: String = code[i + 7..]
                .chars()
                .take_while(|c| c.is_alphanumeric() || *c == '_')
                .collect();
            if name != from && modules.contains(&name) {
                edges.insert(name);
            }
        }
        // `use crate::{a, b::c}` names several at once.
        for (i, _) in code.match_indices("crate::{") {
            let end = code[i..].find("};").map_or(code.len(), |e| i + e);
            for part in code[i + 8..end].split(',') {
                let name: String = part
                    .trim()
                    .chars()
                    .take_while(|c| c.is_alphanumeric() || *c == '_')
                    .collect();
                if name != from && modules.contains(&name) {
                    edges.insert(name);
                }
            }
        }
    }
    graph
}

#[test]
fn parts_know_only_what_is_below_them() {
    let graph = imports();
    let forbidden: &[(&str, &[&str])] = &[
        ("model", &["*"]),
        (
            "manifest",
            &["engine", "runner", "secrets", "cli", "commands", "progress"],
        ),
        (
            "plan",
            &[
                "engine", "runner", "secrets", "cli", "commands", "manifest", "progress",
            ],
        ),
        (
            "dockerfile",
            &[
                "engine", "runner", "secrets", "cli", "commands", "manifest", "progress",
            ],
        ),
        (
            "context",
            &["engine", "runner", "secrets", "cli", "commands", "progress"],
        ),
        (
            "cli",
            &[
                "engine", "runner", "secrets", "config", "commands", "progress",
            ],
        ),
        (
            "secrets",
            &["engine", "runner", "cli", "commands", "progress", "config"],
        ),
        (
            "progress",
            &["engine", "cli", "runner", "secrets", "commands", "config"],
        ),
        (
            "engine",
            &[
                "runner", "secrets", "cli", "commands", "progress", "config", "manifest",
            ],
        ),
        (
            "exposure",
            &[
                "engine", "runner", "secrets", "cli", "commands", "progress", "config",
            ],
        ),
        ("runner", &["cli", "commands"]),
        ("config", &["runner", "commands", "progress"]),
    ];
    let mut broken = Vec::new();
    for (module, banned) in forbidden {
        let uses = graph.get(*module).cloned().unwrap_or_default();
        for used in &uses {
            if banned.contains(&"*") || banned.contains(&used.as_str()) {
                broken.push(format!("`{module}` imports `{used}`"));
            }
        }
    }
    assert!(broken.is_empty(), "{}", broken.join("\n"));
}

#[test]
fn only_the_engine_names_bollard() {
    let outside: Vec<_> = sources(&src())
        .into_iter()
        .filter(|p| module_of(p) != "engine" && code(p).contains("bollard"))
        .collect();
    assert!(outside.is_empty(), "{outside:?}");
}

#[test]
fn no_import_cycle_between_top_level_modules() {
    let graph = imports();
    // Depth-first search for a back edge, reporting the cycle's path.
    fn visit(
        node: &str,
        graph: &BTreeMap<String, BTreeSet<String>>,
        path: &mut Vec<String>,
        done: &mut BTreeSet<String>,
    ) -> Option<Vec<String>> {
        if let Some(i) = path.iter().position(|n| n == node) {
            let mut cycle = path[i..].to_vec();
            cycle.push(node.to_string());
            return Some(cycle);
        }
        if done.contains(node) {
            return None;
        }
        path.push(node.to_string());
        for next in graph.get(node).into_iter().flatten() {
            if let Some(cycle) = visit(next, graph, path, done) {
                return Some(cycle);
            }
        }
        path.pop();
        done.insert(node.to_string());
        None
    }
    let mut done = BTreeSet::new();
    for node in graph.keys() {
        if let Some(cycle) = visit(node, &graph, &mut Vec::new(), &mut done) {
            panic!("import cycle: {}", cycle.join(" → "));
        }
    }
}

#[test]
fn lib_rs_only_dispatches() {
    let lines = std::fs::read_to_string(src().join("lib.rs"))
        .unwrap()
        .lines()
        .count();
    assert!(lines <= 150, "src/lib.rs has {lines} lines");
}

#[test]
fn no_function_outside_tests_is_longer_than_100_lines() {
    let mut long = Vec::new();
    for file in sources(&src()) {
        let code = code(&file);
        let lines: Vec<&str> = code.lines().collect();
        for (i, line) in lines.iter().enumerate() {
            let trimmed = line.trim_start();
            let is_fn = [
                "fn ",
                "pub fn ",
                "async fn ",
                "pub async fn ",
                "pub(crate) fn ",
            ]
            .iter()
            .chain(
                [
                    "pub(super) fn ",
                    "pub(crate) async fn ",
                    "pub(super) async fn ",
                ]
                .iter(),
            )
            .any(|p| trimmed.starts_with(p));
            if !is_fn || trimmed.ends_with(';') {
                continue;
            }
            let indent = line.len() - trimmed.len();
            let close = format!("{}}}", " ".repeat(indent));
            let Some(end) = lines[i..].iter().position(|l| l.trim_end() == close) else {
                continue;
            };
            if end + 1 > 100 {
                long.push(format!("{}:{} ({} lines)", file.display(), i + 1, end + 1));
            }
        }
    }
    assert!(long.is_empty(), "{}", long.join("\n"));
}
