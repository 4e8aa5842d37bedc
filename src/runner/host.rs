//! `after_build_command`: a command run on the host, in the work dir,
//! after a step (only with `--after-build-commands`).

use tokio::io::{AsyncBufReadExt, BufReader};

use super::build::Build;
use super::BuildError;
use crate::engine::LineSink;
use crate::manifest::Step;
use crate::progress::Severity;

impl Build {
    /// Runs `sh -c command` on the host in the work dir, streaming its
    /// output. The child is killed if the build is cancelled.
    pub async fn after_build(&self, step: &Step, command: &str) -> Result<(), BuildError> {
        self.reporter.step(
            Severity::Info,
            &step.label,
            &format!("running after_build_command `{command}` on the host"),
        );
        let fail = |status: String, code: Option<i32>| BuildError::AfterBuild {
            step: step.label.clone(),
            command: command.to_string(),
            status,
            code,
        };
        let mut child = tokio::process::Command::new("sh")
            .arg("-c")
            .arg(command)
            .current_dir(&self.manifest.workdir)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| fail(format!("could not start: {e}"), None))?;
        let sink = self.sink(&step.label);
        let (_, _, status) = tokio::join!(
            pump_lines(child.stdout.take(), sink.clone()),
            pump_lines(child.stderr.take(), sink),
            child.wait()
        );
        let status = status.map_err(|e| fail(format!("failed: {e}"), None))?;
        if status.success() {
            Ok(())
        } else {
            let code = status.code();
            Err(fail(
                match code {
                    Some(c) => format!("exited with code {c}"),
                    None => "was killed by a signal".to_string(),
                },
                code,
            ))
        }
    }
}

/// Sends each line read from `reader` to `sink`.
async fn pump_lines<R: tokio::io::AsyncRead + Unpin>(reader: Option<R>, sink: LineSink) {
    if let Some(reader) = reader {
        let mut lines = BufReader::new(reader).lines();
        while let Ok(Some(line)) = lines.next_line().await {
            sink(&line);
        }
    }
}
