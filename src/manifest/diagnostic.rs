//! What a rejected build.yml reports: one [`Diagnostic`] per problem, each
//! naming the file, the line and column where known, the step, and how to
//! fix it; [`Diagnostics`] holds all of them so that a user sees every
//! problem in one run.

use std::fmt;
use std::path::PathBuf;

/// One problem in a build.yml.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostic {
    /// The build.yml as the user gave it (or, for what a step's
    /// Dockerfile declares, that Dockerfile).
    pub file: PathBuf,
    /// 1-based line, if known.
    pub line: Option<usize>,
    /// 1-based column, if known (only printed with a line).
    pub column: Option<usize>,
    /// The label of the step the problem is in.
    pub step: Option<String>,
    /// What is wrong, lowercase, user values in backticks.
    pub message: String,
    /// How to fix it.
    pub help: Option<String>,
}

impl fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "error: {}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
            if let Some(column) = self.column {
                write!(f, ":{column}")?;
            }
        }
        f.write_str(": ")?;
        if let Some(step) = &self.step {
            write!(f, "step `{step}`: ")?;
        }
        f.write_str(&self.message)?;
        if let Some(help) = &self.help {
            write!(f, "\n  help: {help}")?;
        }
        Ok(())
    }
}

/// Every problem found in a build.yml, in file order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Diagnostics(pub Vec<Diagnostic>);

impl fmt::Display for Diagnostics {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, diagnostic) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{diagnostic}")?;
        }
        Ok(())
    }
}

impl std::error::Error for Diagnostics {}

/// The candidate closest to `word`, if it is close enough to be what the
/// user meant.
pub(crate) fn suggest<'c>(
    word: &str,
    candidates: impl IntoIterator<Item = &'c str>,
) -> Option<&'c str> {
    let mut best: Option<(f64, &str)> = None;
    for candidate in candidates {
        let score = strsim::jaro_winkler(word, candidate);
        if best.is_none_or(|(s, _)| score > s) {
            best = Some((score, candidate));
        }
    }
    best.filter(|(score, _)| *score >= 0.8).map(|(_, c)| c)
}

/// `` `a`, `b`, `c` ``
pub(crate) fn list(items: &[&str]) -> String {
    items
        .iter()
        .map(|item| format!("`{item}`"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::{list, suggest, Diagnostic, Diagnostics};
    use std::path::PathBuf;

    fn diagnostic() -> Diagnostic {
        Diagnostic {
            file: PathBuf::from("build.yml"),
            line: Some(12),
            column: Some(5),
            step: Some("compile".into()),
            message: "unknown key `depend_on`".into(),
            help: Some("did you mean `depends_on`?".into()),
        }
    }

    #[test]
    fn full_diagnostic_formatting() {
        assert_eq!(
            diagnostic().to_string(),
            "error: build.yml:12:5: step `compile`: unknown key `depend_on`\n  help: did you mean `depends_on`?"
        );
    }

    #[test]
    fn unknown_parts_are_omitted() {
        let d = Diagnostic {
            line: None,
            column: Some(3),
            step: None,
            help: None,
            ..diagnostic()
        };
        assert_eq!(d.to_string(), "error: build.yml: unknown key `depend_on`");
        let d = Diagnostic {
            column: None,
            ..diagnostic()
        };
        assert!(d
            .to_string()
            .starts_with("error: build.yml:12: step `compile`: "));
    }

    #[test]
    fn diagnostics_print_every_block() {
        let all = Diagnostics(vec![diagnostic(), diagnostic()]);
        let text = all.to_string();
        assert_eq!(text.matches("error: ").count(), 2);
        assert_eq!(text.matches("\n  help: ").count(), 2);
    }

    #[test]
    fn suggestions() {
        let keys = ["name", "dockerfile", "depends_on", "no_cache"];
        assert_eq!(suggest("depend_on", keys), Some("depends_on"));
        assert_eq!(suggest("dockefile", keys), Some("dockerfile"));
        assert_eq!(suggest("no-cache", keys), Some("no_cache"));
        assert_eq!(suggest("naem", keys), Some("name"));
        assert_eq!(suggest("zzz", keys), None);
        assert_eq!(suggest("x", []), None);
    }

    #[test]
    fn lists_are_backticked() {
        assert_eq!(list(&["file", "env"]), "`file`, `env`");
    }
}
