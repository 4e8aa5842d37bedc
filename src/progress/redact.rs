//! Output redaction: every secret value that shows up in build output is
//! printed as `***`. The [`Reporter`](super::Reporter) owns the build's
//! redactor, and its sinks only take [`Redacted`] text, which only a
//! redactor makes: no text reaches the terminal or the JSON stream
//! without passing through it.
//!
//! The engine hands output over one whole line at a time (it joins stream
//! chunks into lines first), so a value split across chunks is whole again
//! here. A value that spans lines (a PEM key) never appears whole in one
//! line: each of its lines is redacted on its own, down to a minimum
//! length, below which a fragment would match ordinary text too often.

use std::sync::Arc;

use zeroize::Zeroizing;

/// What a redacted value is replaced with.
pub const MASK: &str = "***";

/// Lines of a multi-line secret shorter than this are not redacted on
/// their own (the whole value always is).
const MIN_FRAGMENT: usize = 4;

/// Replaces secret values in text. Cheap to clone.
#[derive(Clone, Default)]
pub struct Redactor {
    /// Longest first, so that a value containing another is masked whole.
    /// Invariant: no pattern is empty.
    /// Copies of secret values: zeroed when the last clone drops.
    patterns: Arc<Vec<Zeroizing<Vec<u8>>>>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("patterns", &self.patterns.len())
            .finish_non_exhaustive()
    }
}

/// Text that has been through a [`Redactor`]: the only kind of text the
/// reporter's sinks accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Redacted(String);

impl Redacted {
    /// The text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The text, owned (for an error message).
    pub fn into_string(self) -> String {
        self.0
    }
}

impl std::fmt::Display for Redacted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Redactor {
    /// A redactor for secret `values` (the search patterns stay in this
    /// process and are never printed).
    pub fn new<'a>(values: impl IntoIterator<Item = &'a [u8]>) -> Redactor {
        Redactor::default().with(values)
    }

    /// This redactor, also masking `values` (a step's token, which BuildKit
    /// prints when it names a `RUN` with its build arguments expanded).
    pub fn with<'a>(&self, values: impl IntoIterator<Item = &'a [u8]>) -> Redactor {
        let mut patterns: Vec<Zeroizing<Vec<u8>>> = self.patterns.as_ref().clone();
        for value in values {
            let trimmed = trim_newlines(value);
            let mut add = |p: &[u8]| {
                if !p.is_empty() && !patterns.iter().any(|q| q.as_slice() == p) {
                    patterns.push(Zeroizing::new(p.to_vec()));
                }
            };
            add(trimmed);
            if trimmed.contains(&b'\n') {
                for line in trimmed.split(|&b| b == b'\n') {
                    let line = line.strip_suffix(b"\r").unwrap_or(line);
                    let line = line.trim_ascii();
                    if line.len() >= MIN_FRAGMENT {
                        add(line);
                    }
                }
            }
        }
        patterns.sort_by_key(|p| std::cmp::Reverse(p.len()));
        debug_assert!(patterns.iter().all(|p| !p.is_empty()));
        Redactor {
            patterns: Arc::new(patterns),
        }
    }

    /// Whether there is nothing to redact.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// `text` with every secret value replaced by [`MASK`].
    pub fn redact(&self, text: &str) -> Redacted {
        if self.patterns.is_empty() {
            return Redacted(text.to_string());
        }
        let mut bytes = text.as_bytes().to_vec();
        for pattern in self.patterns.iter() {
            bytes = replace_all(&bytes, pattern);
        }
        Redacted(match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
        })
    }
}

impl Redactor {
    /// `value` as one line of JSON, with every string in it redacted
    /// before it is encoded (so that escaping cannot hide a value).
    pub fn redact_json(&self, mut value: serde_json::Value) -> Redacted {
        self.redact_strings(&mut value);
        Redacted(value.to_string())
    }

    fn redact_strings(&self, value: &mut serde_json::Value) {
        use serde_json::Value;
        match value {
            Value::String(s) => *s = self.redact(s).into_string(),
            Value::Array(items) => items.iter_mut().for_each(|v| self.redact_strings(v)),
            Value::Object(fields) => fields.values_mut().for_each(|v| self.redact_strings(v)),
            Value::Null | Value::Bool(_) | Value::Number(_) => {}
        }
    }
}

/// Drops trailing newlines: a key file ends with one that `echo` output
/// would not reproduce.
fn trim_newlines(mut value: &[u8]) -> &[u8] {
    while let Some(rest) = value
        .strip_suffix(b"\n")
        .or_else(|| value.strip_suffix(b"\r"))
    {
        value = rest;
    }
    value
}

fn replace_all(haystack: &[u8], needle: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(haystack.len());
    let mut i = 0;
    while i < haystack.len() {
        if haystack[i..].starts_with(needle) {
            out.extend_from_slice(MASK.as_bytes());
            i += needle.len();
        } else {
            out.push(haystack[i]);
            i += 1;
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::Redactor;

    fn redactor(values: &[&[u8]]) -> Redactor {
        Redactor::new(values.iter().copied())
    }

    #[test]
    fn values_are_masked_wherever_they_appear() {
        let r = redactor(&[b"s3cr3t\n", b"s3cr3t-longer"]);
        assert_eq!(r.redact("a s3cr3t b").into_string(), "a *** b");
        assert_eq!(
            r.redact("s3cr3t-longer and s3cr3ts3cr3t").into_string(),
            "*** and ******"
        );
        assert_eq!(r.redact("nothing here").into_string(), "nothing here");
    }

    #[test]
    fn a_multi_line_secret_split_across_lines_is_masked_line_by_line() {
        let key = b"-----BEGIN KEY-----\nAAAAB3NzaC1yc2E\nxy\nQQQQ9999ZZZZ\n-----END KEY-----\n";
        let r = redactor(&[key]);
        let printed: Vec<String> = ["step | AAAAB3NzaC1yc2E", "step | QQQQ9999ZZZZ", "xy ok"]
            .iter()
            .map(|l| r.redact(l).into_string())
            .collect();
        assert_eq!(printed, ["step | ***", "step | ***", "xy ok"]);
    }

    #[test]
    fn json_strings_are_redacted_before_they_are_escaped() {
        let r = redactor(&[b"pa\"ss\\word"]);
        let line = r.redact_json(
            serde_json::json!({ "line": "x pa\"ss\\word y", "n": [1, "pa\"ss\\word"] }),
        );
        assert_eq!(line.as_str(), r#"{"line":"x *** y","n":[1,"***"]}"#);
    }

    #[test]
    fn empty_secrets_redact_nothing() {
        let r = redactor(&[b"", b"\n"]);
        assert!(r.is_empty());
        assert_eq!(r.redact("text").into_string(), "text");
    }
}
