//! Every event `--json` writes, one variant each: the reporter adds
//! `event` (the variant's name) and `time`, redacts every string in it,
//! and writes one JSON object per line. README's table of events is
//! checked against this type by a test.

use std::path::Path;

use serde::Serialize;

/// One JSON event.
#[derive(Debug, Serialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event<'a> {
    /// The build starts: its id, build.yml and the step labels.
    BuildStarted {
        build_id: &'a str,
        file: &'a Path,
        steps: Vec<&'a str>,
    },
    /// A step starts building.
    StepStarted {
        step: &'a str,
        image: &'a str,
        dockerfile: &'a str,
    },
    /// A line of the daemon's output for a step.
    StepOutput { step: &'a str, line: &'a str },
    /// One of habitus's own messages, about a step or the build.
    Log {
        level: &'static str,
        #[serde(skip_serializing_if = "Option::is_none")]
        step: Option<&'a str>,
        message: &'a str,
    },
    /// A step finished.
    StepFinished {
        step: &'a str,
        image: &'a str,
        image_id: &'a str,
        duration_ms: u64,
        cached: usize,
        total: usize,
    },
    /// An artifact was copied to the host.
    ArtifactCopied {
        step: &'a str,
        source: &'a str,
        dest: &'a Path,
        files: u64,
        bytes: u64,
    },
    /// A request for a secret: over TLS (`peer`) or a BuildKit mount
    /// (`via: "mount"`).
    SecretFetched {
        step: Option<&'a str>,
        path: &'a str,
        #[serde(skip_serializing_if = "Option::is_none")]
        peer: Option<String>,
        #[serde(skip_serializing_if = "Option::is_none")]
        via: Option<&'static str>,
        status: u16,
    },
    /// The audit searched an image the build kept.
    AuditFinished {
        step: &'a str,
        image: &'a str,
        layers: usize,
        bytes: u64,
        /// Nested archives and compressed files opened and searched.
        nested: usize,
        hits: serde_json::Value,
        /// What was not searched, and why (a warning).
        not_searched: serde_json::Value,
    },
    /// An image reached its registry under `name`: the digest the
    /// registry serves for it, and the manifest's size in bytes.
    ImagePushed {
        step: &'a str,
        name: &'a str,
        digest: &'a str,
        size: u64,
    },
    /// What a successful build produced.
    Summary {
        steps: Vec<SummaryStep<'a>>,
        removed_images: &'a [String],
        artifacts: Vec<SummaryArtifact<'a>>,
        secrets: Vec<SummarySecret<'a>>,
        audited_images: &'a [String],
    },
    /// The build ended.
    BuildFinished {
        status: Status,
        exit_code: i32,
        error: Option<String>,
    },
}

/// A step in the `summary` event.
#[derive(Debug, Serialize)]
pub struct SummaryStep<'a> {
    pub step: &'a str,
    pub image: &'a str,
    pub image_id: &'a str,
    pub size: Option<i64>,
    pub duration_ms: u64,
    pub cached: usize,
    pub total: usize,
}

/// An artifact in the `summary` event.
#[derive(Debug, Serialize)]
pub struct SummaryArtifact<'a> {
    pub step: &'a str,
    pub source: &'a str,
    pub dest: &'a Path,
    pub bytes: u64,
}

/// A secret served, in the `summary` event (never a value).
#[derive(Debug, Serialize)]
pub struct SummarySecret<'a> {
    pub step: &'a str,
    pub secret: &'a str,
    pub fetches: usize,
}

/// How a build ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    Success,
    Failure,
    Interrupted,
}

impl Event<'_> {
    /// Every event's name, as `event` carries it.
    pub const NAMES: [&'static str; 11] = [
        "build_started",
        "step_started",
        "step_output",
        "log",
        "step_finished",
        "artifact_copied",
        "secret_fetched",
        "audit_finished",
        "image_pushed",
        "summary",
        "build_finished",
    ];

    /// This event's name.
    pub fn name(&self) -> &'static str {
        match self {
            Event::BuildStarted { .. } => "build_started",
            Event::StepStarted { .. } => "step_started",
            Event::StepOutput { .. } => "step_output",
            Event::Log { .. } => "log",
            Event::StepFinished { .. } => "step_finished",
            Event::ArtifactCopied { .. } => "artifact_copied",
            Event::SecretFetched { .. } => "secret_fetched",
            Event::AuditFinished { .. } => "audit_finished",
            Event::ImagePushed { .. } => "image_pushed",
            Event::Summary { .. } => "summary",
            Event::BuildFinished { .. } => "build_finished",
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::{BTreeMap, BTreeSet};
    use std::path::Path;

    use super::{Event, Status, SummaryArtifact, SummarySecret, SummaryStep};

    /// One event of each kind, with every optional field present.
    fn every_event() -> Vec<Event<'static>> {
        const NONE: &[String] = &[];
        vec![
            Event::BuildStarted {
                build_id: "b",
                file: Path::new("build.yml"),
                steps: vec!["a"],
            },
            Event::StepStarted {
                step: "a",
                image: "i",
                dockerfile: "Dockerfile",
            },
            Event::StepOutput {
                step: "a",
                line: "l",
            },
            Event::Log {
                level: "info",
                step: Some("a"),
                message: "m",
            },
            Event::StepFinished {
                step: "a",
                image: "i",
                image_id: "sha256:1",
                duration_ms: 1,
                cached: 0,
                total: 1,
            },
            Event::ArtifactCopied {
                step: "a",
                source: "/x",
                dest: Path::new("x"),
                files: 1,
                bytes: 1,
            },
            Event::SecretFetched {
                step: Some("a"),
                path: "/v1/secrets/file/k",
                peer: Some("10.0.0.2:1234".into()),
                via: Some("mount"),
                status: 200,
            },
            Event::AuditFinished {
                step: "a",
                image: "i",
                layers: 1,
                bytes: 1,
                nested: 0,
                hits: serde_json::json!([]),
                not_searched: serde_json::json!([]),
            },
            Event::ImagePushed {
                step: "a",
                name: "r.example/a:1",
                digest: "sha256:1",
                size: 528,
            },
            Event::Summary {
                steps: vec![SummaryStep {
                    step: "a",
                    image: "i",
                    image_id: "sha256:1",
                    size: Some(1),
                    duration_ms: 1,
                    cached: 0,
                    total: 1,
                }],
                removed_images: NONE,
                artifacts: vec![SummaryArtifact {
                    step: "a",
                    source: "/x",
                    dest: Path::new("x"),
                    bytes: 1,
                }],
                secrets: vec![SummarySecret {
                    step: "a",
                    secret: "file/k",
                    fetches: 1,
                }],
                audited_images: NONE,
            },
            Event::BuildFinished {
                status: Status::Success,
                exit_code: 0,
                error: None,
            },
        ]
    }

    /// README's table of JSON events: event name → the row's text.
    fn readme_rows() -> BTreeMap<String, String> {
        let readme = include_str!("../../README.md");
        let start = readme
            .find("| event | fields |")
            .expect("README has a table of JSON events");
        readme[start..]
            .lines()
            .skip(2)
            .map(str::trim)
            .take_while(|l| l.starts_with('|'))
            .map(|row| {
                let name = row.split('`').nth(1).unwrap_or_default().to_string();
                (name, row.to_string())
            })
            .collect()
    }

    #[test]
    fn every_event_has_a_sample_and_a_name() {
        let names: Vec<_> = every_event().iter().map(Event::name).collect();
        assert_eq!(names, Event::NAMES);
    }

    #[test]
    fn readme_lists_every_event_with_every_field() {
        let rows = readme_rows();
        let documented: BTreeSet<&str> = rows.keys().map(String::as_str).collect();
        let emitted: BTreeSet<&str> = Event::NAMES.into_iter().collect();
        assert_eq!(
            documented, emitted,
            "README's events differ from the code's"
        );
        for event in every_event() {
            let value = serde_json::to_value(&event).unwrap();
            let row = &rows[event.name()];
            for field in value.as_object().unwrap().keys() {
                if field == "event" {
                    continue;
                }
                assert!(
                    row.contains(&format!("`{field}`")) || row.contains(&format!("`{field}:")),
                    "README's row for `{}` does not mention field `{field}`",
                    event.name()
                );
            }
        }
    }
}
