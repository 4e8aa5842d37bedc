//! The classic builder's output stream: bytes cut into lines, and the
//! messages of `POST /build` followed for steps, cache hits, the images
//! the build committed, the resulting image id and the error.

use bollard::models::BuildInfo;

use crate::engine::EngineError;

/// Splits a byte stream into lines for a sink, keeping a partial last line
/// until its newline arrives.
#[derive(Debug, Default)]
pub(super) struct LineBuffer {
    partial: Vec<u8>,
}

impl LineBuffer {
    /// Feeds bytes; calls `sink` with each completed line (no newline, no
    /// carriage return).
    pub(super) fn push(&mut self, data: &[u8], sink: &(dyn Fn(&str) + Send + Sync)) {
        self.push_with(data, &mut |line| sink(line));
    }

    /// Feeds bytes; calls `each` with each completed line.
    pub(super) fn push_with(&mut self, data: &[u8], each: &mut dyn FnMut(&str)) {
        self.partial.extend_from_slice(data);
        while let Some(pos) = self.partial.iter().position(|&b| b == b'\n') {
            let mut line: Vec<u8> = self.partial.drain(..=pos).collect();
            line.pop();
            if line.last() == Some(&b'\r') {
                line.pop();
            }
            each(&String::from_utf8_lossy(&line));
        }
    }

    /// Emits what is left (a last line without a newline).
    pub(super) fn finish(&mut self, sink: &(dyn Fn(&str) + Send + Sync)) {
        if !self.partial.is_empty() {
            let line = std::mem::take(&mut self.partial);
            sink(&String::from_utf8_lossy(&line));
        }
    }
}

/// Follows a classic-builder output stream: lines, steps, cache hits, the
/// resulting image id, and the error, if any.
#[derive(Debug, Default)]
pub(super) struct BuildProgress {
    lines: LineBuffer,
    /// The last `Step N/M : INSTRUCTION` line.
    pub(super) last_step: Option<String>,
    /// `M` of the last `Step N/M` line.
    pub(super) total: usize,
    /// ` ---> Using cache` lines seen.
    pub(super) cached: usize,
    /// From the `aux` message that closes a successful build.
    pub(super) image_id: Option<String>,
    /// Images the daemon committed for this build (not taken from the
    /// cache), bottom first: removed again if the build fails.
    pub(super) fresh: Vec<String>,
    /// The current instruction commits an image and did not come from the
    /// cache: the next ` ---> <id>` is fresh.
    committing: bool,
    /// Every image this build committed for an instruction other than
    /// `FROM` (not those taken from the cache), bottom first.
    pub(super) chain: Vec<String>,
    /// The current instruction is not a `FROM`.
    below: bool,
}

impl BuildProgress {
    /// Takes one message of the build stream; an error message ends the
    /// build with [`EngineError::BuildFailed`].
    pub(super) fn feed(
        &mut self,
        info: &BuildInfo,
        sink: &(dyn Fn(&str) + Send + Sync),
    ) -> Result<(), EngineError> {
        if let Some(text) = &info.stream {
            let Self {
                lines,
                last_step,
                total,
                cached,
                fresh,
                committing,
                chain,
                below,
                ..
            } = self;
            lines.push_with(text.as_bytes(), &mut |line| {
                let trimmed = line.trim();
                if let Some((_, m)) = parse_step(line) {
                    *total = m;
                    *last_step = Some(trimmed.to_string());
                    // Every instruction but FROM commits an image (COPY and
                    // ADD without a `Running in` line); FROM names one.
                    *committing = !line.split_once(" : ").is_some_and(|(_, instruction)| {
                        instruction
                            .trim_start()
                            .get(..4)
                            .is_some_and(|k| k.eq_ignore_ascii_case("FROM"))
                    });
                    *below = *committing;
                } else if trimmed == "---> Using cache" {
                    *cached += 1;
                    *committing = false;
                } else if let Some(id) = trimmed
                    .strip_prefix("---> ")
                    .filter(|id| !id.is_empty() && id.bytes().all(|b| b.is_ascii_hexdigit()))
                {
                    if *committing {
                        fresh.push(id.to_string());
                    }
                    // Only what this build committed: a cached image
                    // belongs to the build that made it, which may still
                    // be running and use it.
                    if *below && *committing {
                        chain.push(id.to_string());
                    }
                    *committing = false;
                    *below = false;
                }
                // Other `--->` lines (`Running in …`; Docker 25+ also
                // prints `---> Removed intermediate container …` before
                // the id) come before the committed image's id.
                sink(line);
            });
        }
        if let Some(status) = &info.status {
            let has_progress = info
                .progress_detail
                .as_ref()
                .is_some_and(|p| p.total.is_some() || p.current.is_some());
            if !has_progress {
                match &info.id {
                    Some(id) => sink(&format!("{id}: {status}")),
                    None => sink(status),
                }
            }
        }
        if let Some(id) = info.aux.as_ref().and_then(|aux| aux.id.clone()) {
            self.image_id = Some(id);
        }
        if let Some(detail) = &info.error_detail {
            self.finish(sink);
            return Err(EngineError::BuildFailed {
                instruction: self.last_step.clone(),
                message: detail
                    .message
                    .clone()
                    .unwrap_or_else(|| "the build failed".to_string()),
                hint: None,
            });
        }
        Ok(())
    }

    /// Emits what is left of the stream (a last line without a newline).
    pub(super) fn finish(&mut self, sink: &(dyn Fn(&str) + Send + Sync)) {
        self.lines.finish(sink);
    }
}

/// Parses `Step N/M : …` into `(N, M)`.
fn parse_step(line: &str) -> Option<(usize, usize)> {
    let rest = line.trim_start().strip_prefix("Step ")?;
    let (counts, _) = rest.split_once(" : ")?;
    let (n, m) = counts.split_once('/')?;
    Some((n.parse().ok()?, m.parse().ok()?))
}

#[cfg(test)]
mod tests {
    use std::sync::{Arc, Mutex};

    use bollard::models::BuildInfo;

    use super::{parse_step, BuildProgress};
    use crate::engine::{EngineError, LineSink};

    fn collector() -> (Arc<Mutex<Vec<String>>>, LineSink) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink_lines = lines.clone();
        let sink: LineSink = Arc::new(move |line: &str| {
            sink_lines.lock().unwrap().push(line.to_string());
        });
        (lines, sink)
    }

    fn stream(text: &str) -> BuildInfo {
        BuildInfo {
            stream: Some(text.to_string()),
            ..Default::default()
        }
    }

    #[test]
    fn build_stream_lines_are_split_and_partial_lines_kept() {
        let (lines, sink) = collector();
        let mut progress = BuildProgress::default();
        progress
            .feed(&stream("Step 1/2 : FROM base\n ---> ab"), &*sink)
            .unwrap();
        progress.feed(&stream("c123\r\n"), &*sink).unwrap();
        progress
            .feed(&stream("Step 2/2 : RUN make\n"), &*sink)
            .unwrap();
        progress
            .feed(&stream(" ---> Using cache\n ---> def\nlast"), &*sink)
            .unwrap();
        progress.finish(&*sink);
        assert_eq!(
            *lines.lock().unwrap(),
            [
                "Step 1/2 : FROM base",
                " ---> abc123",
                "Step 2/2 : RUN make",
                " ---> Using cache",
                " ---> def",
                "last"
            ]
        );
        assert_eq!(progress.total, 2);
        assert_eq!(progress.cached, 1);
        assert_eq!(progress.last_step.as_deref(), Some("Step 2/2 : RUN make"));
    }

    #[test]
    fn a_secret_split_across_stream_chunks_is_redacted() {
        // The sink sees whole lines, so a redactor working line by line
        // (as habitus' does) finds the value; this one stands in for it.
        let (lines, sink) = collector();
        let redacting: LineSink =
            Arc::new(move |line: &str| sink(&line.replace("tok-5ecr3t-value", "***")));
        let mut progress = BuildProgress::default();
        for chunk in [
            "Step 1/1 : RUN x
printed: tok-5e",
            "cr3t",
            "-value
after
",
        ] {
            progress.feed(&stream(chunk), &*redacting).unwrap();
        }
        progress.finish(&*redacting);
        assert_eq!(
            *lines.lock().unwrap(),
            ["Step 1/1 : RUN x", "printed: ***", "after"]
        );
    }

    #[test]
    fn committed_images_are_fresh_on_docker_20_and_26() {
        // Docker 20.10 prints `Removing intermediate container` plain,
        // Docker 25+ after an arrow, both before the committed id.
        for removed in [
            "Removing intermediate container c1",
            " ---> Removed intermediate container c1",
        ] {
            let (_, sink) = collector();
            let mut progress = BuildProgress::default();
            let text = format!(
                "Step 1/3 : FROM base\n ---> 0a1b\nStep 2/3 : RUN x\n ---> Running in c1\nout\n{removed}\n ---> 2c3d\nStep 3/3 : RUN y\n ---> Using cache\n ---> 4e5f\n"
            );
            progress.feed(&stream(&text), &*sink).unwrap();
            assert_eq!(progress.fresh, ["2c3d"], "{removed}");
            // The images below the result this build committed: not the
            // base, not a cached one (another build's, maybe in use).
            assert_eq!(progress.chain, ["2c3d"], "{removed}");
        }
    }

    #[test]
    fn aux_id_is_the_image_id() {
        let (_, sink) = collector();
        let mut progress = BuildProgress::default();
        let info: BuildInfo = serde_json::from_str(r#"{"aux":{"ID":"sha256:0123"}}"#).unwrap();
        progress.feed(&info, &*sink).unwrap();
        assert_eq!(progress.image_id.as_deref(), Some("sha256:0123"));
    }

    #[test]
    fn error_detail_fails_the_build_with_the_last_step() {
        let (_, sink) = collector();
        let mut progress = BuildProgress::default();
        progress
            .feed(&stream("Step 3/5 : RUN make\n"), &*sink)
            .unwrap();
        let info: BuildInfo = serde_json::from_str(
            r#"{"errorDetail":{"code":2,"message":"The command '/bin/sh -c make' returned a non-zero code: 2"},"error":"The command '/bin/sh -c make' returned a non-zero code: 2"}"#,
        )
        .unwrap();
        let err = progress.feed(&info, &*sink).unwrap_err();
        match err {
            EngineError::BuildFailed {
                instruction,
                message,
                ..
            } => {
                assert_eq!(instruction.as_deref(), Some("Step 3/5 : RUN make"));
                assert_eq!(
                    message,
                    "The command '/bin/sh -c make' returned a non-zero code: 2"
                );
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn step_lines_parse() {
        assert_eq!(parse_step("Step 3/15 : RUN a : b"), Some((3, 15)));
        assert_eq!(parse_step("Step x/2 : RUN"), None);
        assert_eq!(parse_step("Steps 1/2 : RUN"), None);
    }
}
