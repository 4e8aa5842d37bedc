//! `_env(NAME)` substitution in the raw text of build.yml, before YAML
//! parsing, as Go Habitus does it: `NAME` is everything up to the first `)`
//! on the same line, and the value comes from `--env NAME=V` when any
//! `--env` was given, else from the process environment.

use std::collections::BTreeMap;
use std::fmt;

/// Where `_env(NAME)` values come from.
#[derive(Clone, PartialEq, Eq)]
pub enum EnvSource {
    /// The process environment.
    Process,
    /// The `--env NAME=V` pairs; once any is given the process environment
    /// is not consulted.
    Given(BTreeMap<String, String>),
}

impl EnvSource {
    /// The value of `name`, or `None` if it is not set.
    pub fn get(&self, name: &str) -> Option<String> {
        match self {
            EnvSource::Process => {
                // A name the OS cannot hold (empty, `=`, NUL) is simply unset.
                if name.is_empty() || name.contains(['=', '\0']) {
                    return None;
                }
                std::env::var_os(name).map(|v| v.to_string_lossy().into_owned())
            }
            EnvSource::Given(vars) => vars.get(name).cloned(),
        }
    }
}

/// Values may be credentials: show the names only.
impl fmt::Debug for EnvSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EnvSource::Process => f.write_str("Process"),
            EnvSource::Given(vars) => f
                .debug_tuple("Given")
                .field(&vars.keys().collect::<Vec<_>>())
                .finish(),
        }
    }
}

/// An `_env(NAME)` whose NAME is not set.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Unset {
    /// 1-based line of the occurrence.
    pub line: usize,
    pub name: String,
}

/// Where the substituted text came from: every `_env(NAME)` occurrence,
/// so that positions in the substituted text (YAML errors, diagnostics)
/// point back at the file as written.
#[derive(Debug, Clone, Default)]
pub(crate) struct SourceMap {
    occurrences: Vec<Occurrence>,
}

/// One `_env(NAME)` in the file.
#[derive(Debug, Clone)]
pub(crate) struct Occurrence {
    /// Its value's bytes in the substituted text.
    out: std::ops::Range<usize>,
    /// `_env(NAME)`'s bytes in the file.
    src: std::ops::Range<usize>,
    /// 1-based line in the file.
    pub line: usize,
    pub name: String,
    /// NAME was not set: the value is empty.
    pub unset: bool,
}

impl SourceMap {
    /// The byte of the file that byte `out` of the substituted text came
    /// from; a byte of a substituted value maps to its `_env(`.
    fn src_offset(&self, out: usize) -> usize {
        let mut src = out;
        for o in &self.occurrences {
            if out < o.out.start {
                break;
            }
            if out < o.out.end || out == o.out.start {
                return o.src.start;
            }
            src = out - o.out.end + o.src.end;
        }
        src
    }

    /// Maps a 1-based line and character column of `out_text` (the
    /// substituted text) to the same in `src_text` (the file).
    pub(crate) fn position(
        &self,
        out_text: &str,
        src_text: &str,
        line: usize,
        column: usize,
    ) -> (usize, usize) {
        if self.occurrences.is_empty() {
            return (line, column);
        }
        let offset = byte_offset(out_text, line, column);
        line_column(src_text, self.src_offset(offset))
    }

    /// The line, column and NAME of every `_env(NAME)` whose NAME is not
    /// set, in file order; `src_text` is the file.
    pub(crate) fn unset_positions<'m>(
        &'m self,
        src_text: &'m str,
    ) -> impl Iterator<Item = (usize, usize, &'m str)> + 'm {
        self.occurrences.iter().filter(|o| o.unset).map(|o| {
            let (line, column) = line_column(src_text, o.src.start);
            (line, column, o.name.as_str())
        })
    }

    /// The occurrences whose value is empty: NAME unset, or set to "".
    pub(crate) fn emptied(&self) -> impl Iterator<Item = &Occurrence> {
        self.occurrences.iter().filter(|o| o.out.is_empty())
    }
}

/// The byte offset of a 1-based line and character column.
fn byte_offset(text: &str, line: usize, column: usize) -> usize {
    let mut start = 0;
    for _ in 1..line {
        match text[start..].find('\n') {
            Some(i) => start += i + 1,
            None => return text.len(),
        }
    }
    let rest = &text[start..];
    start
        + rest
            .char_indices()
            .nth(column.saturating_sub(1))
            .map_or(rest.len(), |(i, _)| i)
}

/// The 1-based line and character column of a byte offset.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let offset = offset.min(text.len());
    let before = &text[..offset];
    let line = before.matches('\n').count() + 1;
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    (line, text[line_start..offset].chars().count() + 1)
}

/// The NAME of every `_env(NAME)` in `text`, in order, read as
/// [`substitute_mapped`] reads them.
pub(crate) fn names(text: &str) -> Vec<&str> {
    const OPEN: &str = "_env(";
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(found) = rest.find(OPEN) {
        rest = &rest[found + OPEN.len()..];
        let line = &rest[..rest.find('\n').unwrap_or(rest.len())];
        if let Some(close) = line.find(')') {
            names.push(&rest[..close]);
            rest = &rest[close + 1..];
        }
    }
    names
}

/// The substituted text grew beyond `limit` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TooLarge;

/// Replaces every `_env(NAME)` in `text`. Unset names become "" and are
/// returned, in file order.
#[cfg(test)]
pub(crate) fn substitute(
    text: &str,
    env: &EnvSource,
    limit: usize,
) -> Result<(String, Vec<Unset>), TooLarge> {
    substitute_mapped(text, env, limit).map(|(out, unset, _)| (out, unset))
}

/// As [`substitute`], also returning where the result came from.
pub(crate) fn substitute_mapped(
    text: &str,
    env: &EnvSource,
    limit: usize,
) -> Result<(String, Vec<Unset>, SourceMap), TooLarge> {
    const OPEN: &str = "_env(";
    let mut out = String::with_capacity(text.len());
    let mut unset = Vec::new();
    let mut map = SourceMap::default();
    let mut line = 1;
    let mut pos = 0;
    while let Some(found) = text[pos..].find(OPEN) {
        let start = pos + found;
        let name_start = start + OPEN.len();
        let line_end = text[name_start..]
            .find('\n')
            .map_or(text.len(), |i| name_start + i);
        out.push_str(&text[pos..start]);
        line += text[pos..start].matches('\n').count();
        match text[name_start..line_end].find(')') {
            Some(close) => {
                let name = &text[name_start..name_start + close];
                let value_start = out.len();
                let value = env.get(name);
                match &value {
                    Some(value) => out.push_str(value),
                    None => unset.push(Unset {
                        line,
                        name: name.to_owned(),
                    }),
                }
                pos = name_start + close + 1;
                map.occurrences.push(Occurrence {
                    out: value_start..out.len(),
                    src: start..pos,
                    line,
                    name: name.to_owned(),
                    unset: value.is_none(),
                });
            }
            None => {
                out.push_str(OPEN);
                pos = name_start;
            }
        }
        if out.len() > limit {
            return Err(TooLarge);
        }
    }
    out.push_str(&text[pos..]);
    if out.len() > limit {
        return Err(TooLarge);
    }
    Ok((out, unset, map))
}

#[cfg(test)]
mod tests {
    use super::{substitute, EnvSource, TooLarge, Unset};
    use std::collections::BTreeMap;

    fn given(pairs: &[(&str, &str)]) -> EnvSource {
        EnvSource::Given(
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
        )
    }

    #[test]
    fn replaces_every_occurrence_and_reports_unset_names_with_lines() {
        let env = given(&[("A", "x"), ("EMPTY", "")]);
        let (text, unset) = substitute(
            "a: _env(A)/_env(A)\nb: _env(EMPTY)\nc: _env(NOPE)!\n",
            &env,
            1000,
        )
        .unwrap();
        assert_eq!(text, "a: x/x\nb: \nc: !\n");
        assert_eq!(
            unset,
            vec![Unset {
                line: 3,
                name: "NOPE".into()
            }]
        );
    }

    #[test]
    fn name_ends_at_first_paren_on_the_same_line() {
        let env = given(&[("A", "1")]);
        let (text, unset) = substitute("x: _env(A))\ny: _env(B\nz: )\n", &env, 1000).unwrap();
        assert_eq!(text, "x: 1)\ny: _env(B\nz: )\n");
        assert!(unset.is_empty());
    }

    #[test]
    fn lines_are_counted_in_the_file_as_written() {
        let env = given(&[("ML", "a\nb")]);
        let (_, unset) = substitute("_env(ML)\n_env(X)\n", &env, 1000).unwrap();
        assert_eq!(unset[0].line, 2);
    }

    #[test]
    fn names_are_read_as_substitution_reads_them() {
        use super::names;
        assert_eq!(names("\"_env(A)-_env(B_C)\""), ["A", "B_C"]);
        assert_eq!(names("_env(A\n_env(B)"), ["B"]);
        assert!(names("plain").is_empty());
    }

    #[test]
    fn growth_is_bounded() {
        let env = given(&[("BIG", &"x".repeat(100))]);
        assert_eq!(
            substitute(&"_env(BIG)".repeat(20), &env, 1000),
            Err(TooLarge)
        );
    }

    #[test]
    fn debug_shows_names_only() {
        let env = given(&[("TOKEN", "s3cr3t")]);
        assert_eq!(format!("{env:?}"), "Given([\"TOKEN\"])");
    }

    #[test]
    fn positions_map_back_to_the_file() {
        use super::substitute_mapped;
        let src = "a: _env(IMAGE):_env(TAG)\nb: _env(LONG) x: y\n";
        let env = given(&[("IMAGE", "img"), ("LONG", "a-much-longer-value")]);
        let (out, _, map) = substitute_mapped(src, &env, 1000).unwrap();
        assert_eq!(out, "a: img:\nb: a-much-longer-value x: y\n");
        // `x:` on line 2: column 25 of the result, column 16 of the file.
        assert_eq!(map.position(&out, src, 2, 25), (2, 16));
        // Inside a value: its `_env(`.
        assert_eq!(map.position(&out, src, 2, 6), (2, 4));
        // The empty TAG at the end of line 1: its `_env(`.
        assert_eq!(map.position(&out, src, 1, 8), (1, 16));
        let emptied: Vec<_> = map
            .emptied()
            .map(|o| (o.line, o.name.as_str(), o.unset))
            .collect();
        assert_eq!(emptied, [(1, "TAG", true)]);
    }
}
