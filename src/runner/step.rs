//! One step, as a pipeline of named stages: its Dockerfile read and
//! checked, the build request made, the image built, then its artifacts,
//! cleanup, `command:` and `after_build_command`, and its report.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Instant;

use super::build::Build;
use super::mounts::ssh_agent;
use super::secrets::StepGrant;
use super::{check_mounts, lock, BuildError, CopiedArtifact, StepReport};
use crate::engine::{BuildRequest, BuiltImage, EngineError, MountSecrets, RunRequest};
use crate::manifest::Step;
use crate::model::Builder;
use crate::progress::{Event, Severity, StepFinished};
use crate::{artifacts, cleanup, dockerfile, squash, workpath};

/// A step's Dockerfile as it will be sent: the steps folded into it as
/// stages first, then its own text with image names rewritten.
struct Dockerfile {
    /// The builder that runs it.
    builder: Builder,
    /// The steps built as stages of this one, first first.
    chain: Vec<Step>,
    /// Their stages, then the step's own Dockerfile: bytes, as written.
    text: Vec<u8>,
    /// What `cleanup:` keeps (the base image's layers), when it has one.
    keep: Option<squash::Keep>,
}

impl Build {
    /// Builds `step` and everything that follows its build.
    pub async fn build_step(&self, step: Step) -> Result<StepReport, BuildError> {
        let started = Instant::now();
        if let Some(into) = self.folds.get(&step.label) {
            return Ok(self.folded(&step, into, started));
        }
        let image = self.image_of(&step);
        self.reporter.step(
            Severity::Info,
            &step.label,
            &format!(
                "building `{image}` from `{}` (context `{}`)",
                step.dockerfile,
                step.context.display()
            ),
        );
        self.reporter
            .step_started(&step.label, &image, &step.dockerfile);
        let dockerfile = self.dockerfile(&step).await?;
        // Cache images are pulled before the step's token exists.
        let cache_from = self.cache_sources(&step).await;
        // The step's token lives until `grant` drops: right after the
        // build, or when the step is cancelled.
        let grant = self
            .session
            .as_ref()
            .map(|s| s.grant(&step.label, !step.secrets.is_empty()));
        let mut request = self.request(&step, &image, &dockerfile, grant.as_ref())?;
        request.cache_from = cache_from;
        self.protect_credentials(grant.as_ref());
        let sink = self.build_sink(&step.label);
        let built = self.engine.build(request, sink).await;
        drop(grant);
        let built = built.map_err(|e| self.build_error(&step, &dockerfile, e))?;
        // From here on the tag points at this build's image: teardown
        // removes it if the build fails.
        lock(&self.tagged).insert(step.label.clone());
        let artifacts = self.copy_artifacts(&step, &image).await?;
        let image_id = match dockerfile.keep {
            Some(keep) => self.clean_up(&step, &image, keep).await?,
            None => None,
        };
        self.run_command(&step, &image).await?;
        self.after_build_command(&step).await?;
        self.name_image(self.index(&step), &image).await?;
        let image_id = image_id.unwrap_or_else(|| built.id.clone());
        Ok(self.finished(step, image, image_id, &built, artifacts, started))
    }

    /// Reads the step's Dockerfile (again, inside the work dir), prepends
    /// the stages folded into it, rewrites image names and checks mounts.
    async fn dockerfile(&self, step: &Step) -> Result<Dockerfile, BuildError> {
        let error = |message: String| BuildError::Dockerfile {
            step: step.label.clone(),
            dockerfile: step.dockerfile_path.clone(),
            message,
            hint: None,
        };
        let source = workpath::read_inside(&self.manifest.workdir, &step.dockerfile_path)
            .await
            .map_err(|e| error(e.to_string()))?;
        let builder = step.builder.unwrap_or(self.options.builder);
        if step.ssh && builder == Builder::Legacy {
            return Err(BuildError::Dockerfile {
                step: step.label.clone(),
                dockerfile: step.dockerfile_path.clone(),
                message: "`ssh: true` forwards the SSH agent to BuildKit's `RUN --mount=type=ssh`; the classic builder cannot".into(),
                hint: Some("set `builder: buildkit` on the step, or build with `--builder buildkit`".into()),
            });
        }
        // Steps folded into this one come first, as named stages, and
        // this step's Dockerfile refers to the last of them.
        let (chain, stages, images) = self.fold_stages(step, builder).await?;
        let rewritten = dockerfile::rewrite(&source, &images).map_err(|e| error(e.to_string()))?;
        check_mounts(step, builder, &rewritten.text)?;
        let keep = (!step.cleanup.is_empty())
            .then(|| cleanup::keep_for(&rewritten.text, step.target.as_deref()));
        Ok(Dockerfile {
            builder,
            chain,
            text: [stages, rewritten.text].concat(),
            keep,
        })
    }

    /// The daemon's build request for `step`.
    fn request(
        &self,
        step: &Step,
        image: &str,
        dockerfile: &Dockerfile,
        grant: Option<&StepGrant>,
    ) -> Result<BuildRequest, BuildError> {
        let mut build_args = BTreeMap::new();
        for s in &dockerfile.chain {
            build_args.extend(s.args.clone());
        }
        build_args.extend(step.args.clone());
        build_args.extend(self.cache_to_args(step, dockerfile.builder));
        build_args.extend(self.options.build_args.clone());
        if let Some(grant) = grant {
            build_args.extend(grant.build_args.clone());
        }
        let context_dir =
            workpath::confine(&self.manifest.workdir, &step.context).map_err(|e| {
                BuildError::Context {
                    step: step.label.clone(),
                    context: step.context.clone(),
                    message: e.to_string(),
                }
            })?;
        let builder = dockerfile.builder;
        let dockerfile_name = format!(".habitus-{}-{}.Dockerfile", self.build_id, step.label);
        Ok(BuildRequest {
            tag: image.to_string(),
            context_dir,
            extra_files: vec![(dockerfile_name.clone(), dockerfile.text.clone())],
            dockerfile: dockerfile_name,
            target: step.target.clone(),
            build_args,
            no_cache: self.options.no_cache || step.no_cache,
            rm: self.options.rm,
            // `--rm` (the default) also removes the container of a failed
            // instruction, so that a failed build leaves nothing behind;
            // `--rm=false` keeps them all for debugging.
            force_rm: self.options.force_rm || self.options.rm,
            // BuildKit cannot run `RUN` on the build's own network; its
            // steps mount their secrets instead.
            network_mode: match (&self.session, builder) {
                (Some(session), Builder::Legacy) => Some(session.network_mode().to_string()),
                _ => self.options.network.clone(),
            },
            memory: self.options.memory,
            cpuset_cpus: self.options.cpuset_cpus.clone(),
            cpu_shares: self.options.cpu_shares,
            labels: if self.options.image_labels {
                self.labels(step)
            } else {
                BTreeMap::new()
            },
            builder,
            ssh_agent: match (builder, step.ssh) {
                (Builder::BuildKit, true) => Some(ssh_agent(step)?),
                _ => None,
            },
            mounts: match builder {
                Builder::BuildKit => self.mounts_of(step),
                Builder::Legacy => MountSecrets::default(),
            },
            cache_from: Vec::new(),
        })
    }

    /// Masks the step's own credentials from now on: BuildKit names each
    /// `RUN` with its build arguments expanded, and the step's token must
    /// not show.
    fn protect_credentials(&self, grant: Option<&StepGrant>) {
        let Some(grant) = grant else { return };
        self.reporter.protect(
            ["HABITUS_TOKEN", "habitus_password"]
                .iter()
                .filter_map(|k| grant.build_args.get(*k).map(String::as_bytes)),
        );
    }

    /// The error of a failed build, redacted; a failure in a folded
    /// step's stage is that step's.
    fn build_error(&self, step: &Step, dockerfile: &Dockerfile, error: EngineError) -> BuildError {
        let redact = |text: String| self.reporter.redact(&text).into_string();
        match error {
            EngineError::BuildFailed {
                instruction,
                message,
                hint,
            } => {
                let failed = Build::failed_stage(&dockerfile.chain, instruction.as_deref());
                BuildError::Step {
                    step: failed.map_or(step.label.clone(), |s| s.label.clone()),
                    dockerfile: failed
                        .map_or(step.dockerfile_path.clone(), |s| s.dockerfile_path.clone()),
                    instruction: instruction.map(redact),
                    message: redact(message),
                    hint,
                }
            }
            other => BuildError::Engine {
                step: step.label.clone(),
                source: other,
            },
        }
    }

    /// Copies the step's `artifacts:` out of its image to the host:
    /// (source in the image, where it landed, bytes of file data).
    async fn copy_artifacts(
        &self,
        step: &Step,
        image: &str,
    ) -> Result<Vec<CopiedArtifact>, BuildError> {
        let mut copied = Vec::new();
        if step.artifacts.is_empty() {
            return Ok(copied);
        }
        let reporter = Arc::clone(&self.reporter);
        let step_label = step.label.clone();
        let extracted = artifacts::copy(
            Arc::clone(&self.engine),
            image,
            self.container_labels(step),
            &self.manifest.workdir,
            &step.artifacts,
            Arc::new(move |line: &str| reporter.step(Severity::Info, &step_label, line)),
        )
        .await
        .map_err(|e| BuildError::Artifact {
            step: step.label.clone(),
            source: e,
        })?;
        for (artifact, extracted) in step.artifacts.iter().zip(extracted) {
            // Where it landed: the destination folder and the source's
            // base name.
            let dest = artifacts::destination(&self.manifest.workdir, artifact).join(
                artifact
                    .source
                    .trim_end_matches('/')
                    .rsplit('/')
                    .next()
                    .unwrap_or(""),
            );
            self.reporter.event(Event::ArtifactCopied {
                step: &step.label,
                source: &artifact.source,
                dest: &dest,
                files: extracted.files,
                bytes: extracted.bytes,
            });
            copied.push(CopiedArtifact {
                source: artifact.source.clone(),
                dest,
                bytes: extracted.bytes,
            });
        }
        Ok(copied)
    }

    /// Runs `cleanup.commands` and squashes (unless `--no-cleanup`);
    /// returns the new image id.
    async fn clean_up(
        &self,
        step: &Step,
        image: &str,
        keep: squash::Keep,
    ) -> Result<Option<String>, BuildError> {
        if self.options.no_cleanup {
            self.reporter.step(
                Severity::Info,
                &step.label,
                "cleanup skipped (--no-cleanup)",
            );
            return Ok(None);
        }
        cleanup::run(
            Arc::clone(&self.engine),
            image,
            self.container_labels(step),
            &step.cleanup,
            keep,
            self.options.squash_temp_limit,
            self.sink(&step.label),
        )
        .await
        .map_err(|e| BuildError::Cleanup {
            step: step.label.clone(),
            source: e,
        })?;
        Ok(match self.engine.inspect_image(image).await {
            Ok(Some(info)) => Some(info.id),
            _ => None,
        })
    }

    /// Runs the step's `command:` in a container of its image; a non-zero
    /// exit fails the build with that code.
    async fn run_command(&self, step: &Step, image: &str) -> Result<(), BuildError> {
        let Some(command) = &step.command else {
            return Ok(());
        };
        self.reporter.step(
            Severity::Info,
            &step.label,
            &format!("running command `{command}` in `{image}`"),
        );
        let request = RunRequest {
            image: image.to_string(),
            command: command.clone(),
            labels: self.container_labels(step),
            network_mode: self.options.network.clone(),
        };
        let code = self
            .engine
            .run(request, self.sink(&step.label))
            .await
            .map_err(|e| BuildError::Engine {
                step: step.label.clone(),
                source: e,
            })?;
        if code != 0 {
            return Err(BuildError::Command {
                step: step.label.clone(),
                command: command.clone(),
                code,
            });
        }
        Ok(())
    }

    /// Runs `after_build_command` on the host when allowed, else says why not.
    async fn after_build_command(&self, step: &Step) -> Result<(), BuildError> {
        let Some(command) = &step.after_build_command else {
            return Ok(());
        };
        if self.options.after_build_commands {
            return self.after_build(step, command).await;
        }
        self.reporter.step(
            Severity::Warning,
            &step.label,
            &format!(
                "after_build_command `{command}` skipped: commands on the host run only with --after-build-commands"
            ),
        );
        Ok(())
    }

    /// Reports the finished step. Its image size is looked up after the
    /// build, off the path of the steps that wait for this one.
    fn finished(
        &self,
        step: Step,
        image: String,
        image_id: String,
        built: &BuiltImage,
        artifacts: Vec<CopiedArtifact>,
        started: Instant,
    ) -> StepReport {
        let duration = started.elapsed();
        self.reporter.step_finished(&StepFinished {
            label: &step.label,
            image: &image,
            image_id: &built.id,
            duration,
            cached: built.cached_steps,
            total: built.total_steps,
        });
        self.reporter.step(
            Severity::Info,
            &step.label,
            &format!(
                "built `{image}` in {:.1}s ({}/{} instructions cached)",
                duration.as_secs_f64(),
                built.cached_steps,
                built.total_steps
            ),
        );
        StepReport {
            label: step.label,
            image,
            image_id,
            size: None,
            duration,
            cached_steps: built.cached_steps,
            total_steps: built.total_steps,
            artifacts,
            folded_into: None,
        }
    }
}
