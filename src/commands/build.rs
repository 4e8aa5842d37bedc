//! `habitus build` (the default command): loads build.yml, resolves the
//! secrets, sweeps what killed builds left, runs every step and reports.

use std::ffi::OsString;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::{connect, exposures, load, runtime};
use crate::config::Config;
use crate::engine::docker::DockerEngine;
use crate::engine::Engine;
use crate::error::Error;
use crate::manifest::Loaded;
use crate::model;
use crate::owner::Owner;
use crate::progress::{Reporter, Severity, Status};
use crate::runner::{self, BuildError, Runner, Signal};
use crate::sweep;

/// How long a failed build waits for the daemon to answer a ping.
const DAEMON_CHECK: Duration = Duration::from_secs(5);

/// Runs the build on its own runtime, stopping on SIGINT, SIGTERM or
/// SIGHUP, and reports how it ended.
pub fn build(config: &Config) -> Result<(), Error> {
    let output = &config.output;
    let mut reporter = Reporter::for_terminal(output.level, output.suppress, output.pretty);
    if output.json {
        reporter = reporter.with_json(Box::new(std::io::stdout()));
    }
    let reporter = Arc::new(reporter);
    let result = runtime().and_then(|runtime| {
        runtime.block_on(async {
            let cancel = CancellationToken::new();
            let signal = Arc::new(Mutex::new(None));
            let watcher = tokio::spawn(watch_signals(cancel.clone(), Arc::clone(&signal)));
            let env = |name: &str| std::env::var_os(name);
            let result = build_in(config, &env, Arc::clone(&reporter), cancel, signal).await;
            watcher.abort();
            result
        })
    });
    let (status, code) = match &result {
        Ok(()) => (Status::Success, 0),
        Err(e @ Error::Build(b)) if matches!(**b, BuildError::Interrupted { .. }) => {
            (Status::Interrupted, e.code())
        }
        Err(e) => (Status::Failure, e.code()),
    };
    reporter.build_finished(status, code, result.as_ref().err().map(Error::report));
    // The error is printed last, outside the reporter: redacted here. The
    // problems of build.yml are found before any secret is read, and are
    // printed as `habitus check` prints them (each with its `error:`).
    result.map_err(|e| match e {
        Error::Manifest(_) => e,
        e => Error::Redacted {
            message: reporter.redact(&e.report()).into_string(),
            code: e.code(),
        },
    })
}

/// The `build` command's work: loads build.yml, resolves the secrets
/// (`env` reads variables), connects and runs every step, then tears down.
/// The caller owns the async runtime and the cancellation (a signal, or an
/// in-process test that checks teardown while the runtime still serves):
/// `cancel` stops the build, with `signal` saying why.
pub async fn build_in(
    config: &Config,
    env: &(dyn Fn(&str) -> Option<OsString> + Sync),
    reporter: Arc<Reporter>,
    cancel: CancellationToken,
    signal: Arc<Mutex<Option<Signal>>>,
) -> Result<(), Error> {
    let Loaded { manifest, plan, .. } = load(config)?;
    for notice in manifest.steps.iter().flat_map(|s| s.inferred_notices()) {
        reporter.message(Severity::Warning, &notice);
    }
    for exposure in exposures(&manifest) {
        reporter.message(Severity::Warning, &exposure.to_string());
    }
    // Secrets are resolved before anything else happens: a missing one
    // stops the build before the daemon is even contacted.
    let prepared = runner::secrets::prepare(
        &manifest,
        &config.secrets,
        config.build.network.as_deref(),
        config.build.builder,
        env,
    )
    .map_err(|e| Error::from(BuildError::Secrets(e)))?;
    for (severity, notice) in &prepared.notices {
        reporter.message(*severity, notice);
    }
    let engine = connect(config).await?;
    sweep_leftovers(config, &engine, &reporter).await;
    let engine: Arc<dyn Engine> = Arc::new(engine);
    let runner = Runner::new(
        Arc::clone(&engine),
        manifest,
        plan,
        config.build.clone(),
        Arc::clone(&reporter),
        model::new_build_id(),
    );
    let runner = match prepared.store {
        Some(store) => runner.with_secrets(config.secrets.clone(), store, prepared.server),
        None => runner,
    };
    reporter.build_started(
        runner.build_id(),
        &config.file,
        &runner.steps(),
        &runner.steps_in_plan_order(),
    );
    reporter.message(
        Severity::Info,
        &format!(
            "build {}: {} step(s) from {}",
            runner.build_id(),
            runner.step_count(),
            config.file.display()
        ),
    );
    match runner.run(cancel, signal).await {
        Ok(summary) => {
            runner::report::summary(&reporter, &summary);
            Ok(())
        }
        Err(e @ BuildError::Interrupted { .. }) => Err(e.into()),
        Err(e) => Err(ask_daemon(config, engine.as_ref(), e).await.into()),
    }
}

/// What killed builds left on this daemon goes first (their networks
/// would fill the address pool); each object removed is named.
async fn sweep_leftovers(config: &Config, engine: &DockerEngine, reporter: &Reporter) {
    match sweep::sweep(engine, &Owner::current(), config.stale_after, false).await {
        Ok(report) => {
            for swept in &report.removed {
                reporter.message(
                    Severity::Info,
                    &format!(
                        "swept {} `{}` left by an earlier build: {}",
                        swept.kind, swept.name, swept.why
                    ),
                );
            }
            for failed in &report.failed {
                reporter.message(
                    Severity::Warning,
                    &format!(
                        "could not remove {} `{}` left by an earlier build: {}",
                        failed.kind, failed.name, failed.why
                    ),
                );
            }
        }
        Err(e) => reporter.message(
            Severity::Warning,
            &format!("could not look for what earlier builds left behind: {e}"),
        ),
    }
}

/// A step killed with 137 or a broken stream may mean the daemon itself
/// went away: ask it, and say so.
async fn ask_daemon(config: &Config, engine: &dyn Engine, error: BuildError) -> BuildError {
    match tokio::time::timeout(DAEMON_CHECK, engine.ping()).await {
        Ok(Ok(())) => error,
        answer => BuildError::DaemonLost {
            error: match error.hint() {
                Some(hint) => format!("{error}\nhint: {hint}"),
                None => error.to_string(),
            },
            address: config.docker.host.clone(),
            message: match answer {
                Ok(Err(ping)) => ping.to_string(),
                _ => format!("no answer within {} s", DAEMON_CHECK.as_secs()),
            },
        },
    }
}

/// Cancels the build on the first SIGINT or SIGTERM, remembering which.
async fn watch_signals(cancel: CancellationToken, signal: Arc<Mutex<Option<Signal>>>) {
    use tokio::signal::unix::{signal as unix_signal, SignalKind};
    let (Ok(mut int), Ok(mut term), Ok(mut hup)) = (
        unix_signal(SignalKind::interrupt()),
        unix_signal(SignalKind::terminate()),
        unix_signal(SignalKind::hangup()),
    ) else {
        return;
    };
    let which = tokio::select! {
        _ = int.recv() => Signal::Interrupt,
        _ = term.recv() => Signal::Terminate,
        _ = hup.recv() => Signal::Hangup,
    };
    *signal.lock().unwrap_or_else(|e| e.into_inner()) = Some(which);
    cancel.cancel();
}
