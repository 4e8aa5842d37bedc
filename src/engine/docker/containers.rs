//! Containers: the throw-away ones of `command:` steps, the kept-alive ones
//! artifacts are copied from and cleanups run in (exec, archive, commit),
//! the never-started one whose filesystem `squash` exports, and removal
//! by label.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use bollard::container::LogOutput;
use bollard::errors::Error as BollardError;
use bollard::exec::{StartExecOptions, StartExecResults};
use bollard::models::{ContainerConfig, ContainerCreateBody, ExecConfig, HostConfig};
use bollard::query_parameters::{
    AttachContainerOptions, CommitContainerOptions, CreateContainerOptions,
    DownloadFromContainerOptions, ListContainersOptions, RemoveContainerOptions,
    WaitContainerOptions,
};
use futures_util::StreamExt;

use super::progress::LineBuffer;
use super::{api, is_gone_or_going, is_not_found, DockerEngine};
use crate::engine::{
    ByteStream, ContainerGuard, ContainerRequest, EngineError, LineSink, RunRequest,
};

/// Runs `sh -c command` in a new container, streams its output and removes
/// it; returns the exit code.
pub(super) async fn run(
    engine: &DockerEngine,
    req: RunRequest,
    sink: LineSink,
) -> Result<i64, EngineError> {
    let body = ContainerCreateBody {
        image: Some(req.image.clone()),
        cmd: Some(vec!["sh".into(), "-c".into(), req.command.clone()]),
        labels: Some(req.labels.clone().into_iter().collect()),
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(false),
        host_config: Some(HostConfig {
            network_mode: req.network_mode.clone(),
            ..Default::default()
        }),
        ..Default::default()
    };
    let (id, guard) = create_guarded(engine, body).await?;
    let result = engine.run_created(&id, &sink).await;
    // Remove it now rather than from the guard, so that the container
    // is gone when `run` returns.
    guard.disarm();
    let removed = engine
        .docker
        .remove_container(&id, Some(force_remove()))
        .await;
    let code = result?;
    match removed {
        Err(err) if !is_not_found(&err) => Err(api(err)),
        _ => Ok(code),
    }
}

/// Removes (forcibly) every container labelled `label=value`; returns how
/// many.
pub(super) async fn remove_containers_with_label(
    engine: &DockerEngine,
    label: &str,
    value: &str,
) -> Result<usize, EngineError> {
    let filters = HashMap::from([("label".to_string(), vec![format!("{label}={value}")])]);
    let containers = engine.all_containers(filters).await?;
    let mut removed = 0;
    for id in containers.into_iter().filter_map(|c| c.id) {
        match engine
            .docker
            .remove_container(&id, Some(force_remove()))
            .await
        {
            Ok(()) => removed += 1,
            Err(err) if is_gone_or_going(&err) => {}
            Err(err) => return Err(api(err)),
        }
    }
    Ok(removed)
}

/// Streams the filesystem of a created, never started container of `image`,
/// removed when the export ends.
pub(super) async fn export_filesystem(
    engine: &DockerEngine,
    image: &str,
    labels: BTreeMap<String, String>,
) -> Result<ByteStream, EngineError> {
    // The container is never started; the command only satisfies
    // images that have neither CMD nor ENTRYPOINT.
    let body = ContainerCreateBody {
        image: Some(image.to_string()),
        cmd: Some(vec!["/habitus-export".into()]),
        labels: Some(labels.into_iter().collect()),
        network_disabled: Some(true),
        ..Default::default()
    };
    // The container goes away when the export ends (before the stream
    // does) or, if the stream is dropped early, through the guard.
    let (id, guard) = create_guarded(engine, body).await?;
    let docker = engine.docker.clone();
    let export = Box::pin(engine.docker.export_container(&id));
    let stream = futures_util::stream::unfold(
        (export, guard, false),
        move |(mut export, mut guard, done)| {
            let docker = docker.clone();
            async move {
                if done {
                    return None;
                }
                match export.next().await {
                    Some(Ok(bytes)) => Some((Ok(bytes), (export, guard, false))),
                    Some(Err(err)) => Some((Err(api(err)), (export, guard, true))),
                    None => {
                        let id = guard.take().unwrap_or_default();
                        match docker.remove_container(&id, Some(force_remove())).await {
                            Err(err) if !is_not_found(&err) => {
                                Some((Err(api(err)), (export, guard, true)))
                            }
                            _ => None,
                        }
                    }
                }
            }
        },
    );
    Ok(Box::pin(stream))
}

/// Creates a container of `req.image`, started when it is to stay alive;
/// returns its id.
pub(super) async fn create_container(
    engine: &DockerEngine,
    req: ContainerRequest,
) -> Result<String, EngineError> {
    let mut body = ContainerCreateBody {
        image: Some(req.image.clone()),
        labels: Some(req.labels.clone().into_iter().collect()),
        ..Default::default()
    };
    if req.keep_alive {
        // `/bin/sh` reading an open stdin that nobody writes to waits
        // forever and needs nothing else in the image. The image's own
        // entrypoint is replaced only when it has one: `commit` then
        // restores exactly what the image had.
        let has_entrypoint = engine
            .docker
            .inspect_image(&req.image)
            .await
            .map_err(api)?
            .config
            .and_then(|c| c.entrypoint)
            .is_some_and(|e| !e.is_empty());
        if has_entrypoint {
            body.entrypoint = Some(vec!["/bin/sh".into()]);
            body.cmd = Some(Vec::new());
        } else {
            body.cmd = Some(vec!["/bin/sh".into()]);
        }
        body.open_stdin = Some(true);
    } else {
        // Never started: the command only lets the daemon create a
        // container of an image that has neither CMD nor ENTRYPOINT.
        body.cmd = Some(vec!["habitus-never-started".into()]);
    }
    let created = engine
        .docker
        .create_container(None::<CreateContainerOptions>, body)
        .await
        .map_err(api)?;
    if req.keep_alive {
        if let Err(err) = engine
            .docker
            .start_container(
                &created.id,
                None::<bollard::query_parameters::StartContainerOptions>,
            )
            .await
        {
            let _ = engine
                .docker
                .remove_container(&created.id, Some(force_remove()))
                .await;
            return Err(api(err));
        }
    }
    Ok(created.id)
}

/// Streams a tar archive of `path` in container `id`.
pub(super) async fn archive(
    engine: &DockerEngine,
    id: &str,
    path: &str,
) -> Result<ByteStream, EngineError> {
    let options = DownloadFromContainerOptions {
        path: path.to_string(),
    };
    let stream = engine.docker.download_from_container(id, Some(options));
    Ok(Box::pin(stream.map(|item| {
        item.map_err(|err| match err {
            BollardError::DockerResponseServerError { message, .. } => EngineError::Api(message),
            other => api(other),
        })
    })))
}

/// Runs `cmd` as root in the running container `id`; returns its exit code.
pub(super) async fn exec(
    engine: &DockerEngine,
    id: &str,
    cmd: Vec<String>,
    sink: LineSink,
) -> Result<i64, EngineError> {
    let config = ExecConfig {
        attach_stdout: Some(true),
        attach_stderr: Some(true),
        tty: Some(false),
        user: Some("0".into()),
        cmd: Some(cmd),
        ..Default::default()
    };
    let created = engine.docker.create_exec(id, config).await.map_err(api)?;
    let started = engine
        .docker
        .start_exec(
            &created.id,
            Some(StartExecOptions {
                detach: false,
                tty: false,
                output_capacity: None,
            }),
        )
        .await
        .map_err(api)?;
    if let StartExecResults::Attached { mut output, .. } = started {
        let mut stdout = LineBuffer::default();
        let mut stderr = LineBuffer::default();
        while let Some(chunk) = output.next().await {
            match chunk.map_err(api)? {
                LogOutput::StdErr { message } => stderr.push(&message, &*sink),
                LogOutput::StdOut { message } | LogOutput::Console { message } => {
                    stdout.push(&message, &*sink)
                }
                LogOutput::StdIn { .. } => {}
            }
        }
        stdout.finish(&*sink);
        stderr.finish(&*sink);
    }
    // The output ends when the process does; the daemon may record the
    // exit code a moment later (seconds on a loaded machine).
    for _ in 0..1500 {
        let inspect = engine.docker.inspect_exec(&created.id).await.map_err(api)?;
        if inspect.running != Some(true) {
            if let Some(code) = inspect.exit_code {
                return Ok(code);
            }
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Err(EngineError::Api(format!(
        "exec in container `{id}` ended without an exit code"
    )))
}

/// Commits container `id` as an untagged image with the config of image
/// `config_of`.
pub(super) async fn commit(
    engine: &DockerEngine,
    id: &str,
    config_of: &str,
) -> Result<String, EngineError> {
    let image_config = engine
        .docker
        .inspect_image(config_of)
        .await
        .map_err(api)?
        .config
        .unwrap_or_default();
    let mut config: ContainerConfig = serde_json::to_value(image_config)
        .and_then(serde_json::from_value)
        .map_err(|err| EngineError::Api(format!("image config of `{config_of}`: {err}")))?;
    // The daemon fills what the given config leaves empty from the
    // container's own config (the keep-alive shell, habitus' labels).
    // Nothing may be empty, then: labels become `{}`, and an image with
    // neither ENTRYPOINT nor CMD gets the entrypoint `[""]`, which
    // Docker treats as no entrypoint at all.
    if config.labels.is_none() {
        config.labels = Some(HashMap::new());
    }
    let no_entrypoint = config.entrypoint.as_ref().is_none_or(|e| e.is_empty());
    let no_cmd = config.cmd.as_ref().is_none_or(|c| c.is_empty());
    if no_entrypoint && no_cmd {
        config.entrypoint = Some(vec![String::new()]);
    }
    let options = CommitContainerOptions {
        container: Some(id.to_string()),
        pause: true,
        comment: Some("habitus cleanup".into()),
        ..Default::default()
    };
    let committed = engine
        .docker
        .commit_container(options, config)
        .await
        .map_err(api)?;
    Ok(committed.id)
}

/// Removes (forcibly) one container; one that is already gone is not an
/// error.
pub(super) async fn remove_container(engine: &DockerEngine, id: &str) -> Result<(), EngineError> {
    match engine
        .docker
        .remove_container(id, Some(force_remove()))
        .await
    {
        Err(err) if !is_gone_or_going(&err) => Err(api(err)),
        _ => Ok(()),
    }
}

impl DockerEngine {
    /// Every container (running or not) that `filters` select.
    pub(super) async fn all_containers(
        &self,
        filters: HashMap<String, Vec<String>>,
    ) -> Result<Vec<bollard::models::ContainerSummary>, EngineError> {
        self.docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                filters: Some(filters),
                ..Default::default()
            }))
            .await
            .map_err(api)
    }

    /// Attaches to, starts and waits for a created container; returns its
    /// exit code.
    async fn run_created(&self, id: &str, sink: &LineSink) -> Result<i64, EngineError> {
        // Stream only, as `docker run` attaches: the daemon subscribes to the
        // container's output before it answers the attach, and the container
        // starts only after that, so nothing is missed. With `logs` too, the
        // daemon would replay the log after subscribing, and a line written
        // in between (a start that follows the attach quickly, as on a
        // reused connection) would arrive twice.
        let attach = AttachContainerOptions {
            stream: true,
            logs: false,
            stdout: true,
            stderr: true,
            ..Default::default()
        };
        let mut attached = self
            .docker
            .attach_container(id, Some(attach))
            .await
            .map_err(api)?;
        self.docker
            .start_container(id, None::<bollard::query_parameters::StartContainerOptions>)
            .await
            .map_err(api)?;
        let mut stdout = LineBuffer::default();
        let mut stderr = LineBuffer::default();
        while let Some(chunk) = attached.output.next().await {
            match chunk.map_err(api)? {
                LogOutput::StdErr { message } => stderr.push(&message, &**sink),
                LogOutput::StdOut { message } | LogOutput::Console { message } => {
                    stdout.push(&message, &**sink)
                }
                LogOutput::StdIn { .. } => {}
            }
        }
        stdout.finish(&**sink);
        stderr.finish(&**sink);
        let mut wait = self.docker.wait_container(id, None::<WaitContainerOptions>);
        match wait.next().await {
            Some(Ok(response)) => Ok(response.status_code),
            Some(Err(BollardError::DockerContainerWaitError { code, .. })) => Ok(code),
            Some(Err(err)) => Err(api(err)),
            None => Err(EngineError::Api(format!(
                "container `{id}` ended without an exit code"
            ))),
        }
    }
}

/// Forced removal: a running container is killed first; its anonymous
/// volumes go with it.
fn force_remove() -> RemoveContainerOptions {
    RemoveContainerOptions {
        force: true,
        v: true,
        link: false,
    }
}

/// Creates a container from `body`, with a guard that removes it if the
/// future that uses it is dropped; returns its id.
async fn create_guarded(
    engine: &DockerEngine,
    body: ContainerCreateBody,
) -> Result<(String, ContainerGuard), EngineError> {
    let created = engine
        .docker
        .create_container(None::<CreateContainerOptions>, body)
        .await
        .map_err(api)?;
    let guard = guard(engine, &created.id);
    Ok((created.id, guard))
}

/// Removes container `id` if the future that uses it is dropped (see
/// [`ContainerGuard`]).
fn guard(engine: &DockerEngine, id: &str) -> ContainerGuard {
    let docker = engine.docker.clone();
    ContainerGuard::new(id, move |id| async move {
        let _ = docker.remove_container(&id, Some(force_remove())).await;
    })
}
