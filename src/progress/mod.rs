//! What the user sees: build output and habitus's own messages, on stderr,
//! one whole line at a time so parallel steps never interleave mid-line.
//! Every line is prefixed with the time since the build started and, for
//! step output, the step's label. Nothing from `secrets` ever reaches here
//! unredacted.
//!
//! On a terminal, `live::Live` shows one live line per step instead of
//! the daemon's stream (which `--level debug` brings back).
//!
//! With `--json`, every event is also written to stdout as one JSON object
//! per line (`{"event":"step_started","time":0.1,…}`), for CI systems; the
//! human lines stay on stderr.

pub mod event;
mod live;
pub mod redact;

use std::io::{IsTerminal, Write};
use std::sync::{Mutex, RwLock};
use std::time::{Duration, Instant};

use crate::model::Level;
use crate::progress::live::Live;
pub use event::{Event, Status};
pub use redact::{Redacted, Redactor};

/// Writes a command's result to stdout; a closed pipe (`habitus plan |
/// head`) is not an error. A newline is added if `text` lacks one.
pub fn print_stdout(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    if !text.ends_with('\n') {
        let _ = out.write_all(b"\n");
    }
    let _ = out.flush();
}

/// Writes one message, then a newline, to stderr (outside a build, where
/// no [`Reporter`] runs: warnings of build.yml, the final error).
pub fn print_stderr(text: &str) {
    let mut err = std::io::stderr().lock();
    let _ = writeln!(err, "{text}");
}

/// Severity of one of habitus's own messages.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Severity {
    Debug,
    Info,
    Warning,
    Error,
}

/// The single place that writes to the terminal and the JSON stream.
/// It owns the build's [`Redactor`]: every text it is given is redacted
/// before any sink sees it (the sinks take only [`Redacted`] text).
pub struct Reporter {
    start: Instant,
    suppress: bool,
    min: Severity,
    redactor: RwLock<Redactor>,
    out: Mutex<Box<dyn Write + Send>>,
    json: Option<Mutex<Box<dyn Write + Send>>>,
    live: Option<Live>,
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
            redactor: RwLock::default(),
            out: Mutex::new(out),
            json: None,
            live: None,
        }
    }

    /// A reporter on stderr that shows the live view when stderr is a
    /// terminal (`TERM` not `dumb`); colours unless `pretty` is false or
    /// NO_COLOR is set.
    pub fn for_terminal(level: Level, suppress: bool, pretty: bool) -> Reporter {
        let mut reporter = Reporter::stderr(level, suppress);
        let terminal =
            std::io::stderr().is_terminal() && std::env::var("TERM").map_or(true, |t| t != "dumb");
        if terminal {
            let colour = pretty && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            reporter.live = Some(Live::stderr(colour));
        }
        reporter
    }

    /// Also writes every event as a JSON line to `out`.
    pub fn with_json(mut self, out: Box<dyn Write + Send>) -> Reporter {
        self.json = Some(Mutex::new(out));
        self
    }

    /// From now on, also masks `values` (the build's secrets, a step's
    /// token) wherever they appear.
    pub fn protect<'a>(&self, values: impl IntoIterator<Item = &'a [u8]>) {
        let mut redactor = self.redactor.write().unwrap_or_else(|e| e.into_inner());
        *redactor = redactor.with(values);
    }

    /// `text` with every protected value masked.
    pub fn redact(&self, text: &str) -> Redacted {
        self.redactor
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .redact(text)
    }

    /// Writes `event` to the JSON stream, if there is one, with `time`
    /// added and every string in it redacted.
    pub fn event(&self, event: Event<'_>) {
        let Some(json) = &self.json else { return };
        let Ok(serde_json::Value::Object(mut object)) = serde_json::to_value(&event) else {
            return;
        };
        object.insert(
            "time".into(),
            serde_json::json!((self.start.elapsed().as_secs_f64() * 1000.0).round() / 1000.0),
        );
        let line = self
            .redactor
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .redact_json(serde_json::Value::Object(object));
        let mut out = json.lock().unwrap_or_else(|e| e.into_inner());
        let _ = writeln!(out, "{}", line.as_str());
        let _ = out.flush();
    }

    /// Writes `text` (one line per `\n`), each line after the elapsed
    /// time and `prefix`.
    fn write_line(&self, prefix: &str, text: &str) {
        let elapsed = self.start.elapsed().as_secs_f64();
        let redactor = self.redactor.read().unwrap_or_else(|e| e.into_inner());
        // A value that spans lines is masked whole first; each line is
        // then masked as printed (after control characters are dropped).
        let whole;
        let text = if text.contains('\n') {
            whole = redactor.redact(text);
            whole.as_str()
        } else {
            text
        };
        let lines: Vec<Redacted> = text
            .split('\n')
            .map(|line| redactor.redact(&format!("{elapsed:7.1}s {prefix}{}", sanitize(line))))
            .collect();
        drop(redactor);
        if let Some(live) = &self.live {
            lines.iter().for_each(|line| live.println(line));
            return;
        }
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        for line in &lines {
            // A broken pipe on stderr is not worth failing a build for.
            let _ = writeln!(out, "{line}");
        }
        let _ = out.flush();
    }

    /// A line of daemon output for step `label` (hidden by `--suppress`).
    pub fn step_output(&self, label: &str, line: &str) {
        // Both sinks redact what they write.
        self.event(Event::StepOutput {
            step: label,
            line: &sanitize(line),
        });
        // On a terminal the stream shows only with --level debug.
        if self.live.is_some() && self.min > Severity::Debug {
            return;
        }
        if !self.suppress {
            self.write_line(&format!("{label} | "), line);
        }
    }

    /// Step `label`'s build starts `instruction` (`[3/7] RUN make`): the
    /// step's live line shows it.
    pub fn step_instruction(&self, label: &str, instruction: &str) {
        if let Some(live) = &self.live {
            live.step_instruction(label, &self.redact(instruction));
        }
    }

    /// The build starts: `steps` are `(label, depends_on)` in file order
    /// (for the JSON event), `in_plan_order` the same in the plan's order
    /// (for the live view).
    pub fn build_started(
        &self,
        build_id: &str,
        file: &std::path::Path,
        steps: &[(String, Vec<String>)],
        in_plan_order: &[(String, Vec<String>)],
    ) {
        self.event(Event::BuildStarted {
            build_id,
            file,
            steps: steps.iter().map(|(l, _)| l.as_str()).collect(),
        });
        if let Some(live) = &self.live {
            live.build_started(in_plan_order);
        }
    }

    /// Step `label` starts building `image`.
    pub fn step_started(&self, label: &str, image: &str, dockerfile: &str) {
        self.event(Event::StepStarted {
            step: label,
            image,
            dockerfile,
        });
        if let Some(live) = &self.live {
            live.step_started(label, image);
        }
    }

    /// Step `label` built `image`.
    pub fn step_finished(&self, finished: &StepFinished<'_>) {
        self.event(Event::StepFinished {
            step: finished.label,
            image: finished.image,
            image_id: finished.image_id,
            duration_ms: finished.duration.as_millis() as u64,
            cached: finished.cached,
            total: finished.total,
        });
        if let Some(live) = &self.live {
            live.step_finished(finished.label, &self.redact(&finished.line(None)));
        }
    }

    /// What a finished step does now (its push): shown on its live line.
    pub fn step_activity(&self, label: &str, activity: &str) {
        if let Some(live) = &self.live {
            live.step_summary(label, &self.redact(activity));
        }
    }

    /// The final line of a finished step, now with its image size.
    pub fn step_summary(&self, finished: &StepFinished<'_>, size: Option<&str>) {
        if let Some(live) = &self.live {
            live.step_summary(finished.label, &self.redact(&finished.line(size)));
        }
    }

    /// The end of a successful build: `plain` is the summary as lines
    /// print it; on a terminal, the live step lines are replaced by
    /// `terminal` (steps in plan order), so each step shows once.
    pub fn summary(&self, plain: &str, terminal: &str) {
        if self.min > Severity::Info {
            return;
        }
        self.event(Event::Log {
            level: Severity::Info.name(),
            step: None,
            message: plain,
        });
        match &self.live {
            Some(live) => {
                live.clear_steps();
                self.write_line(tag(Severity::Info), terminal);
            }
            None => self.write_line(tag(Severity::Info), plain),
        }
    }

    /// The build ended with `status`; `error` says why it failed.
    pub fn build_finished(&self, status: Status, exit_code: i32, error: Option<String>) {
        if let Some(live) = &self.live {
            live.build_finished();
        }
        self.event(Event::BuildFinished {
            status,
            exit_code,
            error,
        });
    }

    /// One of habitus's own messages about step `label`.
    pub fn step(&self, severity: Severity, label: &str, message: &str) {
        // On a terminal the step lines already say what the step is doing.
        let shown = if self.live.is_some() && self.min > Severity::Debug {
            severity >= Severity::Warning
        } else {
            severity >= self.min
        };
        if shown {
            self.event(Event::Log {
                level: severity.name(),
                step: Some(label),
                message,
            });
            self.write_line(&format!("{label} {}", tag(severity)), message);
        }
    }

    /// One of habitus's own messages.
    pub fn message(&self, severity: Severity, message: &str) {
        if severity >= self.min {
            self.event(Event::Log {
                level: severity.name(),
                step: None,
                message,
            });
            self.write_line(tag(severity), message);
        }
    }
}

/// What a finished step reports.
pub struct StepFinished<'a> {
    pub label: &'a str,
    pub image: &'a str,
    pub image_id: &'a str,
    pub duration: Duration,
    pub cached: usize,
    pub total: usize,
}

impl StepFinished<'_> {
    fn line(&self, size: Option<&str>) -> String {
        format!(
            "{} in {:.1}s{}, {}/{} cached",
            self.image,
            self.duration.as_secs_f64(),
            size.map(|s| format!(", {s}")).unwrap_or_default(),
            self.cached,
            self.total
        )
    }
}

impl Severity {
    /// `debug`, `info`, `warning`, `error`.
    pub fn name(self) -> &'static str {
        match self {
            Severity::Debug => "debug",
            Severity::Info => "info",
            Severity::Warning => "warning",
            Severity::Error => "error",
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
    use std::io::Write;
    use std::sync::{Arc, Mutex};

    use super::{sanitize, Reporter, Severity, Status, StepFinished};
    use crate::model::Level;

    /// A sink the test can read back.
    #[derive(Clone, Default)]
    struct Buffer(Arc<Mutex<Vec<u8>>>);

    impl Write for Buffer {
        fn write(&mut self, data: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(data);
            Ok(data.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    impl Buffer {
        fn text(&self) -> String {
            String::from_utf8(self.0.lock().unwrap().clone()).unwrap()
        }
    }

    #[test]
    fn no_sink_sees_a_protected_value() {
        let (lines, json) = (Buffer::default(), Buffer::default());
        let reporter = Reporter::new(Box::new(lines.clone()), Level::Debug, false)
            .with_json(Box::new(json.clone()));
        reporter.protect([b"hunter2-secret".as_slice(), b"tok\"en\n".as_slice()]);
        let secret = "hunter2-secret";
        reporter.step_output("a", &format!("echo {secret}"));
        reporter.step(Severity::Warning, "a", &format!("artifact {secret}"));
        reporter.message(
            Severity::Error,
            &format!("engine said {secret}\nand tok\"en"),
        );
        reporter.step_started("a", secret, "Dockerfile");
        reporter.step_finished(&StepFinished {
            label: "a",
            image: secret,
            image_id: "sha256:1",
            duration: std::time::Duration::ZERO,
            cached: 0,
            total: 1,
        });
        reporter.build_finished(Status::Failure, 1, Some(format!("step failed: {secret}")));
        let (lines, json) = (lines.text(), json.text());
        for text in [&lines, &json] {
            assert!(!text.contains("hunter2"), "{text}");
            assert!(
                !text.contains("tok\"en") && !text.contains("tok\\\"en"),
                "{text}"
            );
        }
        assert!(lines.contains("a | echo ***"), "{lines}");
        assert!(json.lines().count() >= 6, "{json}");
        for line in json.lines() {
            serde_json::from_str::<serde_json::Value>(line).expect("each event is valid JSON");
        }
    }

    #[test]
    fn control_characters_are_dropped() {
        assert_eq!(sanitize("\u{1b}[31mred\u{1b}[0m ok"), "red ok");
        assert_eq!(sanitize("10%\r50%\r100%"), "100%");
        assert_eq!(sanitize("a\u{7}b\tc"), "ab\tc");
    }
}
