//! What the user sees: build output and habitus's own messages, on stderr,
//! one whole line at a time so parallel steps never interleave mid-line.
//! Every line is prefixed with the time since the build started and, for
//! step output, the step's label. Nothing from `secrets` ever reaches here
//! unredacted.

use std::io::Write;
use std::sync::Mutex;
use std::time::Instant;

use crate::cli::Level;

/// Severity of one of habitus's own messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Debug,
    Info,
    Warning,
    Error,
}

/// The single place that writes to the terminal.
pub struct Reporter {
    start: Instant,
    suppress: bool,
    min: Severity,
    out: Mutex<Box<dyn Write + Send>>,
}

impl Reporter {
    /// A reporter on stderr.
    pub fn stderr(level: Level, suppress: bool) -> Reporter {
        Reporter::new(Box::new(std::io::stderr()), level, suppress)
    }

    /// A reporter writing to `out`.
    pub fn new(out: Box<dyn Write + Send>, level: Level, suppress: bool) -> Reporter {
        let min = match level {
            Level::Trace | Level::Debug => Severity::Debug,
            Level::Info | Level::Notice => Severity::Info,
            Level::Warning => Severity::Warning,
            Level::Error | Level::Critical => Severity::Error,
        };
        Reporter {
            start: Instant::now(),
            suppress,
            min,
            out: Mutex::new(out),
        }
    }

    fn write_line(&self, prefix: &str, text: &str) {
        let elapsed = self.start.elapsed().as_secs_f64();
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        for line in text.split('\n') {
            let line = sanitize(line);
            // A broken pipe on stderr is not worth failing a build for.
            let _ = writeln!(out, "{elapsed:7.1}s {prefix}{line}");
        }
        let _ = out.flush();
    }

    /// A line of daemon output for step `label` (hidden by `--suppress`).
    pub fn step_output(&self, label: &str, line: &str) {
        if !self.suppress {
            self.write_line(&format!("{label} | "), line);
        }
    }

    /// One of habitus's own messages about step `label`.
    pub fn step(&self, severity: Severity, label: &str, message: &str) {
        if severity >= self.min {
            self.write_line(&format!("{label} {}", tag(severity)), message);
        }
    }

    /// One of habitus's own messages.
    pub fn message(&self, severity: Severity, message: &str) {
        if severity >= self.min {
            self.write_line(tag(severity), message);
        }
    }
}

fn tag(severity: Severity) -> &'static str {
    match severity {
        Severity::Debug => "debug: ",
        Severity::Info => "",
        Severity::Warning => "warning: ",
        Severity::Error => "error: ",
    }
}

/// Drops carriage returns and other control characters (progress bars,
/// colour codes from the build) so that each output line is plain text.
fn sanitize(line: &str) -> String {
    let line = line.rsplit('\r').find(|s| !s.is_empty()).unwrap_or("");
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // Skip an ANSI CSI sequence: ESC [ params final-byte.
            if chars.peek() == Some(&'[') {
                chars.next();
                for d in chars.by_ref() {
                    if ('@'..='~').contains(&d) {
                        break;
                    }
                }
            }
        } else if c == '\t' || !c.is_control() {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::sanitize;

    #[test]
    fn control_characters_are_dropped() {
        assert_eq!(sanitize("\u{1b}[31mred\u{1b}[0m ok"), "red ok");
        assert_eq!(sanitize("10%\r50%\r100%"), "100%");
        assert_eq!(sanitize("a\u{7}b\tc"), "ab\tc");
    }
}
