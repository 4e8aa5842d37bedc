//! BuildKit's solve status, turned into lines like those of
//! `docker build --progress=plain`:
//!
//! ```text
//! #5 [2/3] RUN make
//! #5 0.231 compiling…
//! #5 DONE 1.4s
//! #6 [3/3] COPY --from=build /app /app
//! #6 CACHED
//! ```
//!
//! and counts the Dockerfile instructions (`[n/m] …` vertices) and the
//! cached ones, for the step summary.

use std::collections::HashMap;

use super::proto::StatusResponse;

/// Longest partial output line kept while waiting for its newline.
const MAX_PARTIAL_LINE: usize = 64 * 1024;

#[derive(Debug, Default)]
struct VertexState {
    number: usize,
    name: String,
    announced: bool,
    cached: bool,
    done: bool,
    /// Output not yet ended by a newline.
    partial: Vec<u8>,
}

/// The progress of one BuildKit build.
#[derive(Debug, Default)]
pub struct Progress {
    vertices: HashMap<String, VertexState>,
    /// Digests in the order they were first seen.
    order: Vec<String>,
    /// The first vertex that failed, as `[2/3] RUN make`.
    pub failed: Option<String>,
    /// The last instruction that started, for errors without a vertex.
    pub last_instruction: Option<String>,
}

impl Progress {
    /// Takes one status update and writes its lines to `sink`.
    pub fn feed(&mut self, status: StatusResponse, sink: &(dyn Fn(&str) + Send + Sync)) {
        // Names first, then output, then completions: an update that holds
        // a vertex's last output and its end prints them in that order.
        for vertex in &status.vertexes {
            let state = self.state(&vertex.digest);
            if !vertex.name.is_empty() {
                state.name = vertex.name.clone();
            }
            let n = state.number;
            let mut started = None;
            if !state.announced && (vertex.started.is_some() || vertex.cached) {
                state.announced = true;
                sink(&format!("#{n} {}", state.name));
                started = Some(state.name.clone());
            }
            if vertex.cached && !state.cached {
                state.cached = true;
                sink(&format!("#{n} CACHED"));
            }
            if let Some(name) = started.filter(|name| instruction(name).is_some()) {
                self.last_instruction = Some(name);
            }
        }
        for log in status.logs {
            let state = self.state(&log.vertex);
            state.partial.extend_from_slice(&log.msg);
            let n = state.number;
            while let Some(end) = state.partial.iter().position(|&b| b == b'\n') {
                let line: Vec<u8> = state.partial.drain(..=end).collect();
                let text = String::from_utf8_lossy(&line[..line.len() - 1]);
                sink(&format!("#{n} {}", text.trim_end_matches('\r')));
            }
            if state.partial.len() > MAX_PARTIAL_LINE {
                flush(state, sink);
            }
        }
        for vertex in &status.vertexes {
            let Some(completed) = vertex.completed else {
                continue;
            };
            let state = self.state(&vertex.digest);
            if state.done {
                continue;
            }
            state.done = true;
            flush(state, sink);
            let n = state.number;
            if !vertex.error.is_empty() {
                sink(&format!("#{n} ERROR: {}", vertex.error));
                // BuildKit 0.13 cancels the vertices running beside the
                // one that failed (or beside a failed context transfer):
                // those did not fail themselves.
                if !vertex.error.starts_with("context canceled") {
                    let name = state.name.clone();
                    self.failed.get_or_insert(name);
                }
            } else if !state.cached {
                let seconds = vertex
                    .started
                    .map(|s| (completed - s).max(0) as f64 / 1e9)
                    .unwrap_or(0.0);
                sink(&format!("#{n} DONE {seconds:.1}s"));
            }
        }
    }

    /// The state of vertex `digest`, numbered when first seen.
    fn state(&mut self, digest: &str) -> &mut VertexState {
        let next = self.vertices.len() + 1;
        self.vertices.entry(digest.to_string()).or_insert_with(|| {
            self.order.push(digest.to_string());
            VertexState {
                number: next,
                ..VertexState::default()
            }
        })
    }

    /// Writes output still waiting for a newline.
    pub fn finish(&mut self, sink: &(dyn Fn(&str) + Send + Sync)) {
        for digest in &self.order {
            if let Some(state) = self.vertices.get_mut(digest) {
                flush(state, sink);
            }
        }
    }

    /// `(instructions, cached instructions)`: the vertices named
    /// `[n/m] INSTRUCTION` (or `[stage n/m] …`), and those of them, other
    /// than `FROM`, that came from the cache.
    pub fn counts(&self) -> (usize, usize) {
        let mut total = 0;
        let mut cached = 0;
        for state in self.vertices.values() {
            if let Some(instr) = instruction(&state.name) {
                total += 1;
                let from = instr
                    .get(..5)
                    .is_some_and(|k| k.eq_ignore_ascii_case("FROM "));
                if state.cached && !from {
                    cached += 1;
                }
            }
        }
        (total, cached)
    }
}

fn flush(state: &mut VertexState, sink: &(dyn Fn(&str) + Send + Sync)) {
    if !state.partial.is_empty() {
        let text = String::from_utf8_lossy(&state.partial).into_owned();
        sink(&format!(
            "#{} {}",
            state.number,
            text.trim_end_matches('\r')
        ));
        state.partial.clear();
    }
}

/// The instruction of a vertex named `[n/m] INSTRUCTION` or
/// `[stage n/m] INSTRUCTION`; `None` for `[internal] …` and the like.
pub fn instruction(name: &str) -> Option<&str> {
    let rest = name.strip_prefix('[')?;
    let (inside, instr) = rest.split_once("] ")?;
    let counter = inside.rsplit(' ').next()?;
    let (n, m) = counter.split_once('/')?;
    n.parse::<usize>().ok()?;
    m.parse::<usize>().ok()?;
    Some(instr)
}

#[cfg(test)]
mod tests {
    use super::super::proto::{Vertex, VertexLog};
    use super::*;
    use std::sync::{Arc, Mutex};

    fn collector() -> (Arc<Mutex<Vec<String>>>, impl Fn(&str) + Send + Sync) {
        let lines = Arc::new(Mutex::new(Vec::new()));
        let out = Arc::clone(&lines);
        (lines, move |l: &str| {
            out.lock().unwrap().push(l.to_string())
        })
    }

    fn vertex(digest: &str, name: &str) -> Vertex {
        Vertex {
            digest: digest.into(),
            name: name.into(),
            ..Vertex::default()
        }
    }

    #[test]
    fn vertices_become_numbered_lines_with_output_and_counts() {
        let (lines, sink) = collector();
        let mut p = Progress::default();
        let mut run = vertex("a", "[2/2] RUN make");
        run.started = Some(1_000_000_000);
        let mut from = vertex("b", "[1/2] FROM base");
        from.cached = true;
        p.feed(
            StatusResponse {
                vertexes: vec![from, run.clone()],
                ..Default::default()
            },
            &sink,
        );
        p.feed(
            StatusResponse {
                logs: vec![VertexLog {
                    vertex: "a".into(),
                    stream: 1,
                    msg: b"one\ntw".to_vec(),
                }],
                ..Default::default()
            },
            &sink,
        );
        run.completed = Some(2_500_000_000);
        p.feed(
            StatusResponse {
                vertexes: vec![run],
                logs: vec![VertexLog {
                    vertex: "a".into(),
                    stream: 1,
                    msg: b"o\n".to_vec(),
                }],
                ..Default::default()
            },
            &sink,
        );
        assert_eq!(
            *lines.lock().unwrap(),
            vec![
                "#1 [1/2] FROM base",
                "#1 CACHED",
                "#2 [2/2] RUN make",
                "#2 one",
                "#2 two",
                "#2 DONE 1.5s",
            ]
        );
        assert_eq!(p.counts(), (2, 0));
        assert_eq!(p.last_instruction.as_deref(), Some("[2/2] RUN make"));
    }

    #[test]
    fn a_failed_vertex_is_remembered() {
        let (lines, sink) = collector();
        let mut p = Progress::default();
        let mut v = vertex("a", "[stage-1 3/4] RUN false");
        v.started = Some(0);
        v.completed = Some(1);
        v.error = "exit code: 1".into();
        p.feed(
            StatusResponse {
                vertexes: vec![v],
                ..Default::default()
            },
            &sink,
        );
        assert_eq!(p.failed.as_deref(), Some("[stage-1 3/4] RUN false"));

        // A vertex BuildKit cancelled did not fail.
        let mut p = Progress::default();
        let mut v = vertex("b", "[1/2] FROM base");
        v.started = Some(0);
        v.completed = Some(1);
        v.error = "context canceled: context canceled".into();
        p.feed(
            StatusResponse {
                vertexes: vec![v],
                ..Default::default()
            },
            &sink,
        );
        assert_eq!(p.failed, None);
        assert!(lines
            .lock()
            .unwrap()
            .contains(&"#1 ERROR: exit code: 1".to_string()));
    }

    #[test]
    fn instruction_names_are_recognised() {
        assert_eq!(instruction("[2/3] RUN make"), Some("RUN make"));
        assert_eq!(instruction("[build 1/2] FROM x"), Some("FROM x"));
        assert_eq!(instruction("[internal] load metadata"), None);
        assert_eq!(instruction("exporting to image"), None);
    }
}
