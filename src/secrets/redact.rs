//! Output redaction: every secret value that shows up in build output is
//! printed as `***`.
//!
//! The engine hands output over one whole line at a time (it joins stream
//! chunks into lines first), so a value split across chunks is whole again
//! here. A value that spans lines (a PEM key) never appears whole in one
//! line: each of its lines is redacted on its own, down to a minimum
//! length, below which a fragment would match ordinary text too often.

use std::sync::Arc;

use super::secret::Secret;

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
    patterns: Arc<Vec<Vec<u8>>>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("patterns", &self.patterns.len())
            .finish_non_exhaustive()
    }
}

impl Redactor {
    /// A redactor for `secrets`.
    pub fn new<'a>(secrets: impl IntoIterator<Item = &'a Arc<Secret>>) -> Redactor {
        let mut patterns: Vec<Vec<u8>> = Vec::new();
        for secret in secrets {
            // Exposed to build the search patterns; they stay in this
            // process and are never printed.
            let value = secret.expose();
            let trimmed = trim_newlines(value);
            let mut add = |p: &[u8]| {
                if !p.is_empty() && !patterns.iter().any(|q| q == p) {
                    patterns.push(p.to_vec());
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

    /// This redactor, also masking `values` (a step's token, which BuildKit
    /// prints when it names a `RUN` with its build arguments expanded).
    pub fn with_values(&self, values: &[&str]) -> Redactor {
        let mut patterns: Vec<Vec<u8>> = self.patterns.as_ref().clone();
        for value in values.iter().map(|v| v.as_bytes()) {
            if !value.is_empty() && !patterns.iter().any(|p| p == value) {
                patterns.push(value.to_vec());
            }
        }
        patterns.sort_by_key(|p| std::cmp::Reverse(p.len()));
        Redactor {
            patterns: Arc::new(patterns),
        }
    }

    /// Whether there is nothing to redact.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// `text` with every secret value replaced by [`MASK`].
    pub fn redact(&self, text: &str) -> String {
        if self.patterns.is_empty() {
            return text.to_string();
        }
        let mut bytes = text.as_bytes().to_vec();
        for pattern in self.patterns.iter() {
            bytes = replace_all(&bytes, pattern);
        }
        match String::from_utf8(bytes) {
            Ok(s) => s,
            Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
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
    use std::sync::Arc;

    use super::Redactor;
    use crate::secrets::secret::Secret;

    fn redactor(values: &[&[u8]]) -> Redactor {
        let secrets: Vec<Arc<Secret>> = values
            .iter()
            .map(|v| Arc::new(Secret::new(v.to_vec())))
            .collect();
        Redactor::new(&secrets)
    }

    #[test]
    fn values_are_masked_wherever_they_appear() {
        let r = redactor(&[b"s3cr3t\n", b"s3cr3t-longer"]);
        assert_eq!(r.redact("a s3cr3t b"), "a *** b");
        assert_eq!(r.redact("s3cr3t-longer and s3cr3ts3cr3t"), "*** and ******");
        assert_eq!(r.redact("nothing here"), "nothing here");
    }

    #[test]
    fn a_multi_line_secret_split_across_lines_is_masked_line_by_line() {
        let key = b"-----BEGIN KEY-----\nAAAAB3NzaC1yc2E\nxy\nQQQQ9999ZZZZ\n-----END KEY-----\n";
        let r = redactor(&[key]);
        let printed: Vec<String> = ["step | AAAAB3NzaC1yc2E", "step | QQQQ9999ZZZZ", "xy ok"]
            .iter()
            .map(|l| r.redact(l))
            .collect();
        assert_eq!(printed, ["step | ***", "step | ***", "xy ok"]);
    }

    #[test]
    fn empty_secrets_redact_nothing() {
        let r = redactor(&[b"", b"\n"]);
        assert!(r.is_empty());
        assert_eq!(r.redact("text"), "text");
    }
}
