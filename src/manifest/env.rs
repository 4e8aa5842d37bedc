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

/// The substituted text grew beyond `limit` bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TooLarge;

/// Replaces every `_env(NAME)` in `text`. Unset names become "" and are
/// returned, in file order.
pub(crate) fn substitute(
    text: &str,
    env: &EnvSource,
    limit: usize,
) -> Result<(String, Vec<Unset>), TooLarge> {
    const OPEN: &str = "_env(";
    let mut out = String::with_capacity(text.len());
    let mut unset = Vec::new();
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
                match env.get(name) {
                    Some(value) => out.push_str(&value),
                    None => unset.push(Unset {
                        line,
                        name: name.to_owned(),
                    }),
                }
                pos = name_start + close + 1;
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
    Ok((out, unset))
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
}
