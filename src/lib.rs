//! habitus: a build-flow runner for Docker with a short-lived TLS secrets
//! server. A `build.yml` chains Dockerfiles into a DAG of steps; habitus
//! builds them on a Docker daemon, eagerly and in parallel where the DAG
//! allows, and leaves nothing of its own behind.
//!
//! The binary in `main.rs` only calls [`run`], so tests can run habitus
//! in-process too.
#![forbid(unsafe_code)]

pub mod artifacts;
pub mod audit;
pub mod cleanup;
pub mod cli;
pub mod config;
pub mod context;
pub mod dockerfile;
pub mod engine;
pub mod error;
pub mod layer;
pub mod manifest;
pub mod netpool;
pub mod owner;
pub mod plan;
pub mod progress;
pub mod runner;
pub mod secrets;
pub mod squash;
pub mod sweep;
pub mod workpath;

use std::ffi::OsString;
use std::io::Write;
use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

use crate::cli::{Command, PlanFormat};
use crate::config::Config;
use crate::engine::docker::{DockerEngine, DockerOptions};
use crate::engine::{Engine, EngineError};
use crate::manifest::{LoadOptions, Loaded};
use crate::plan::Plan;
use crate::progress::{Reporter, Severity};
use crate::runner::{BuildOptions, Runner, Signal, Summary};

pub use error::Error;

/// Runs habitus with the given command line (program name first) and
/// returns the process exit code. Errors are printed on stderr.
pub fn run<I, T>(args: I) -> i32
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let cli = match cli::parse(args) {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with 0; usage errors exit 2,
            // as Go's flag package does.
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let cwd = match std::env::current_dir() {
        Ok(cwd) => cwd,
        Err(e) => {
            eprintln!("error: cannot read the current directory: {e}");
            return 1;
        }
    };
    let config = Config::from_flags(&cli.flags, &cwd, &|name| std::env::var(name).ok());
    let result = match cli.command.unwrap_or(Command::Build) {
        Command::Version { verbose } => {
            println!("habitus {}", env!("CARGO_PKG_VERSION"));
            if verbose {
                daemon_version(&config)
            } else {
                Ok(())
            }
        }
        Command::Check => check(&config),
        Command::Plan { format } => print_plan(&config, format),
        Command::Build => build(&config, &cli.flags),
        Command::Serve {
            secret_file,
            secret_env,
        } => serve(&config, &cli.flags, &secret_file, &secret_env),
        Command::Completions { shell } => {
            let mut out = Vec::new();
            clap_complete::generate(shell, &mut cli::command(), "habitus", &mut out);
            print_stdout(&String::from_utf8_lossy(&out));
            Ok(())
        }
        Command::Man => {
            let mut out = Vec::new();
            clap_mangen::Man::new(cli::command())
                .render(&mut out)
                .map(|()| print_stdout(&String::from_utf8_lossy(&out)))
                .map_err(|source| Error::Io {
                    what: "cannot render the man page".into(),
                    source,
                })
        }
        Command::Audit {
            images,
            secrets_from,
            secret_file,
            secret_env,
            shadowed,
        } => audit_command(
            &config,
            &images,
            &AuditSecrets {
                from_build: secrets_from,
                files: secret_file,
                env: secret_env,
            },
            shadowed,
        ),
        Command::Prune { dry_run } => prune(&config, &cli.flags, dry_run),
        Command::Squash {
            image,
            tag,
            all,
            from,
        } => squash_command(&config, &image, tag.as_deref(), all, from),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            match &e {
                Error::Manifest(diagnostics) => eprintln!("{diagnostics}"),
                other => eprintln!("error: {other}"),
            }
            e.code()
        }
    }
}

/// Loads and validates build.yml, printing its warnings.
fn load(config: &Config) -> Result<(Loaded, Plan), Error> {
    let loaded = manifest::load(&LoadOptions {
        file: &config.file,
        workdir: &config.workdir,
        env: &config.env,
        sec_providers: &config.sec_providers,
    })
    .map_err(Error::Manifest)?;
    for warning in &loaded.warnings {
        eprintln!("warning: {warning}");
    }
    let nodes: Vec<(String, Vec<String>)> = loaded
        .manifest
        .steps
        .iter()
        .map(|s| (s.label.clone(), s.depends_on.clone()))
        .collect();
    // The loader has already reported unknown steps and cycles.
    let plan = Plan::new(&nodes).map_err(|errors| {
        Error::Usage(
            errors
                .iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n"),
        )
    })?;
    Ok((loaded, plan))
}

fn check(config: &Config) -> Result<(), Error> {
    let (loaded, plan) = load(config)?;
    // What a build would refuse in the Dockerfiles before contacting the
    // daemon: secret and SSH mounts a step is not entitled to.
    for step in &loaded.manifest.steps {
        let text = workpath::confine(&loaded.manifest.workdir, &step.dockerfile_path)
            .and_then(std::fs::read_to_string)
            .map_err(|e| {
                Error::Build(runner::BuildError::Dockerfile {
                    step: step.label.clone(),
                    dockerfile: step.dockerfile_path.clone(),
                    message: e.to_string(),
                })
            })?;
        let builder = step.builder.unwrap_or(config.builder);
        runner::check_mounts(step, builder, &text).map_err(Error::Build)?;
    }
    print_stdout(&plan::render::text(&loaded.manifest, &plan));
    Ok(())
}

fn print_plan(config: &Config, format: PlanFormat) -> Result<(), Error> {
    let (loaded, plan) = load(config)?;
    let m = &loaded.manifest;
    let text = match format {
        PlanFormat::Text => plan::render::text(m, &plan),
        PlanFormat::Json => plan::render::json(m, &plan),
        PlanFormat::Dot => plan::render::dot(m, &plan),
        PlanFormat::Mermaid => plan::render::mermaid(m, &plan),
    };
    print_stdout(&text);
    Ok(())
}

/// The async runtime for one command.
fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(|source| Error::Io {
            what: "cannot start the async runtime".into(),
            source,
        })
}

/// Connects to the daemon as the flags and DOCKER_* variables say.
async fn connect(config: &Config) -> Result<DockerEngine, EngineError> {
    DockerEngine::connect(&DockerOptions {
        host: Some(config.docker.host.clone()),
        use_tls: config.docker.use_tls,
        tls_verify: config.docker.use_tls,
        cert_path: config.docker.cert_path.clone(),
    })
    .await
}

/// `habitus version --verbose`: what the daemon is and how habitus talks
/// to it.
fn daemon_version(config: &Config) -> Result<(), Error> {
    let runtime = runtime()?;
    let info = runtime.block_on(async { connect(config).await?.daemon_info().await })?;
    let store = if info.driver_type.is_empty() {
        info.storage_driver.clone()
    } else {
        format!("{} ({})", info.storage_driver, info.driver_type)
    };
    print_stdout(&format!(
        "daemon: `{}`\ndocker: {}\napi: {} (daemon {} to {})\nstorage: {store}\nbuildkit: {}",
        config.docker.host,
        info.version,
        info.negotiated,
        info.min_api_version,
        info.api_version,
        if info.buildkit { "yes" } else { "no" },
    ));
    Ok(())
}

/// Writes to stdout; a closed pipe (`habitus plan | head`) is not an error.
fn print_stdout(text: &str) {
    let mut out = std::io::stdout().lock();
    let _ = out.write_all(text.as_bytes());
    if !text.ends_with('\n') {
        let _ = out.write_all(b"\n");
    }
    let _ = out.flush();
}

fn build(config: &Config, flags: &cli::Flags) -> Result<(), Error> {
    let mut reporter = Reporter::for_terminal(config.level, config.suppress, config.pretty);
    if config.json {
        reporter = reporter.with_json(Box::new(std::io::stdout()));
    }
    let reporter = Arc::new(reporter);
    let result = runtime().and_then(|runtime| {
        runtime.block_on(async {
            let cancel = CancellationToken::new();
            let signal = Arc::new(Mutex::new(None));
            let watcher = tokio::spawn(watch_signals(cancel.clone(), Arc::clone(&signal)));
            let env = |name: &str| std::env::var_os(name);
            let result = build_in(config, flags, &env, Arc::clone(&reporter), cancel, signal).await;
            watcher.abort();
            result
        })
    });
    let (status, code) = match &result {
        Ok(()) => ("success", 0),
        Err(Error::Build(runner::BuildError::Interrupted { .. })) => {
            ("interrupted", result.as_ref().err().map_or(1, Error::code))
        }
        Err(e) => ("failure", e.code()),
    };
    reporter.build_finished(status, code, result.as_ref().err().map(ToString::to_string));
    result
}

/// `habitus serve`: see [`secrets::serve`].
fn serve(
    config: &Config,
    flags: &cli::Flags,
    files: &[(String, String)],
    envs: &[String],
) -> Result<(), Error> {
    let settings = secrets::Settings::from_flags(flags).map_err(|e| Error::Usage(e.to_string()))?;
    let env = |name: &str| std::env::var_os(name);
    let store = if files.is_empty() && envs.is_empty() {
        let (loaded, _) = load(config)?;
        secrets::serve::store_from_manifest(&loaded.manifest, &settings.providers, &env)
    } else {
        secrets::serve::store_from_flags(files, envs, &settings.providers, &config.workdir, &env)
    }
    .map_err(|e| Error::Build(runner::BuildError::Secrets(e)))?;
    let runtime = runtime()?;
    let reporter = Arc::new(Reporter::stderr(config.level, false));
    runtime.block_on(async {
        let stop = secrets::serve::stop_signals().map_err(|e| Error::Usage(e.to_string()))?;
        secrets::serve::run(&settings, store, reporter, print_stdout, stop)
            .await
            .map_err(|e| Error::Usage(e.to_string()))
    })
}

/// The `build` command's work: loads build.yml, resolves the secrets
/// (`env` reads variables), connects and runs every step, then tears down.
/// The caller owns the async runtime and the cancellation (a signal, or an
/// in-process test that checks teardown while the runtime still serves):
/// `cancel` stops the build, with `signal` saying why.
pub async fn build_in(
    config: &Config,
    flags: &cli::Flags,
    env: &(dyn Fn(&str) -> Option<OsString> + Sync),
    reporter: Arc<Reporter>,
    cancel: CancellationToken,
    signal: Arc<Mutex<Option<Signal>>>,
) -> Result<(), Error> {
    let (loaded, plan) = load(config)?;
    // Secrets are resolved before anything else happens: a missing one
    // stops the build before the daemon is even contacted.
    let settings = secrets::Settings::from_flags(flags).map_err(|e| Error::Usage(e.to_string()))?;
    let prepared = secrets::session::prepare(
        &loaded.manifest,
        &settings,
        config.network.as_deref(),
        config.builder,
        env,
    )
    .map_err(|e| Error::Build(runner::BuildError::Secrets(e)))?;
    for (severity, notice) in &prepared.notices {
        reporter.message(*severity, notice);
    }
    let engine = connect(config).await?;
    // What killed builds left on this daemon goes first (their networks
    // would fill the address pool).
    match sweep::sweep(&engine, &owner::Owner::current(), flags.stale_after, false).await {
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
    let engine: Arc<dyn Engine> = Arc::new(engine);

    let options = BuildOptions {
        uid: config.uid.clone(),
        build_args: config.build_args.clone(),
        no_cache: config.no_cache,
        rm: config.rm,
        force_rm: config.force_rm,
        network: config.network.clone(),
        memory: config.memory,
        cpuset_cpus: config.cpuset_cpus.clone(),
        cpu_shares: config.cpu_shares,
        jobs: config.jobs,
        keep_all: config.keep_all,
        force_rmi: config.force_rmi,
        noprune_rmi: config.noprune_rmi,
        after_build_commands: config.after_build_commands,
        image_labels: config.image_labels,
        builder: config.builder,
        no_audit: config.no_audit,
        keep_artifacts: config.keep_artifacts,
        no_cleanup: config.no_cleanup,
    };
    let runner = Runner::new(
        engine,
        loaded.manifest,
        plan,
        options,
        Arc::clone(&reporter),
        Runner::new_build_id(),
    );
    let runner = match prepared.store {
        Some(store) => runner.with_secrets(settings, store, prepared.server),
        None => runner,
    };
    reporter.build_started(runner.build_id(), &config.file, &runner.steps());
    reporter.message(
        Severity::Info,
        &format!(
            "build {}: {} step(s) from {}",
            runner.build_id(),
            runner.step_count(),
            config.file.display()
        ),
    );
    let engine = runner.engine();
    match runner.run(cancel, signal).await {
        Ok(summary) => {
            print_summary(&reporter, &summary);
            Ok(())
        }
        Err(e @ runner::BuildError::Interrupted { .. }) => Err(Error::Build(e)),
        // A step killed with 137 or a broken stream may mean the daemon
        // itself went away: ask it, and say so.
        Err(e) => match tokio::time::timeout(DAEMON_CHECK, engine.ping()).await {
            Ok(Ok(())) => Err(Error::Build(e)),
            answer => Err(Error::Build(runner::BuildError::DaemonLost {
                error: e.to_string(),
                address: config.docker.host.clone(),
                message: match answer {
                    Ok(Err(ping)) => ping.to_string(),
                    _ => format!("no answer within {} s", DAEMON_CHECK.as_secs()),
                },
            })),
        },
    }
}

/// How long a failed build waits for the daemon to answer a ping.
const DAEMON_CHECK: std::time::Duration = std::time::Duration::from_secs(5);

/// `habitus prune [--dry-run]`: see [`sweep`].
fn prune(config: &Config, flags: &cli::Flags, dry_run: bool) -> Result<(), Error> {
    let runtime = runtime()?;
    let report = runtime.block_on(async {
        let engine = connect(config).await?;
        sweep::sweep(
            &engine,
            &owner::Owner::current(),
            flags.stale_after,
            dry_run,
        )
        .await
    })?;
    let verb = if dry_run { "would remove" } else { "removed" };
    let mut out = String::new();
    for s in &report.removed {
        out.push_str(&format!("{verb} {} `{}`: {}\n", s.kind, s.name, s.why));
    }
    for s in &report.kept {
        out.push_str(&format!("kept {} `{}`: {}\n", s.kind, s.name, s.why));
    }
    for s in &report.failed {
        out.push_str(&format!(
            "could not remove {} `{}`: {}\n",
            s.kind, s.name, s.why
        ));
    }
    out.push_str(&format!(
        "{} {verb}, {} kept, {} failed",
        report.removed.len(),
        report.kept.len(),
        report.failed.len()
    ));
    print_stdout(&out);
    if report.failed.is_empty() {
        Ok(())
    } else {
        Err(Error::Usage(format!(
            "{} object(s) could not be removed",
            report.failed.len()
        )))
    }
}

/// `habitus squash IMAGE [-t TAG] [--all | --from BASE]`.
fn squash_command(
    config: &Config,
    image: &str,
    tag: Option<&str>,
    all: bool,
    from: Option<String>,
) -> Result<(), Error> {
    let runtime = runtime()?;
    runtime.block_on(async {
        let reporter = Arc::new(Reporter::stderr(config.level, config.suppress));
        let engine = connect(config).await?;
        let keep = match (all, from) {
            (true, _) => squash::Keep::Nothing,
            (false, Some(base)) => squash::Keep::BaseImage(base),
            (false, None) => {
                let base = squash::detect_base(&engine, image).await?;
                reporter.message(Severity::Info, &format!("keeping the layers of `{base}`"));
                squash::Keep::BaseImage(base)
            }
        };
        let tag = tag.unwrap_or(image);
        let sink_reporter = Arc::clone(&reporter);
        let sink: engine::LineSink =
            Arc::new(move |line: &str| sink_reporter.step_output("squash", line));
        let report = squash::squash(&engine, image, tag, keep, sink).await?;
        reporter.message(
            Severity::Info,
            &format!(
                "squashed `{image}` into `{tag}` ({}): {} layer(s) → {}",
                report.image_id, report.layers_before, report.layers_after
            ),
        );
        Ok(())
    })
}

fn print_summary(reporter: &Reporter, summary: &Summary) {
    reporter.event(
        "summary",
        serde_json::json!({
            "steps": summary.steps.iter().map(|s| serde_json::json!({
                "step": s.label,
                "image": s.image,
                "image_id": s.image_id,
                "size": s.size,
                "duration_ms": s.duration.as_millis() as u64,
                "cached": s.cached_steps,
                "total": s.total_steps,
            })).collect::<Vec<_>>(),
            "removed_images": summary.removed_images,
            "artifacts": summary.steps.iter().flat_map(|s| s.artifacts.iter().map(|(source, dest, bytes)| serde_json::json!({
                "step": s.label, "source": source, "dest": dest, "bytes": bytes,
            }))).collect::<Vec<_>>(),
            "secrets": summary.secrets_served.iter().map(|((step, secret), n)| serde_json::json!({
                "step": step, "secret": secret, "fetches": n,
            })).collect::<Vec<_>>(),
            "audited_images": summary.audited_images,
        }),
    );
    for step in summary.steps.iter().filter(|s| s.folded_into.is_none()) {
        reporter.step_summary(
            &progress::StepFinished {
                label: &step.label,
                image: &step.image,
                image_id: &step.image_id,
                duration: step.duration,
                cached: step.cached_steps,
                total: step.total_steps,
            },
            step.size.map(runner::human_size).as_deref(),
        );
    }
    let mut text = String::from("summary:");
    for step in &summary.steps {
        let image = match &step.folded_into {
            Some(into) => format!("(stage of `{into}`)"),
            None => step.image.clone(),
        };
        text.push_str(&format!(
            "\n  {:<16} {:<40} {:>10} {:>7.1}s  {}/{} cached",
            step.label,
            image,
            step.size.map(runner::human_size).unwrap_or_default(),
            step.duration.as_secs_f64(),
            step.cached_steps,
            step.total_steps,
        ));
    }
    let artifacts: Vec<_> = summary
        .steps
        .iter()
        .flat_map(|s| s.artifacts.iter().map(move |a| (&s.label, a)))
        .collect();
    if !artifacts.is_empty() {
        text.push_str("\nartifacts copied:");
        for (step, (source, dest, bytes)) in artifacts {
            text.push_str(&format!(
                "\n  {step:<16} {source} -> {} ({})",
                dest.display(),
                runner::human_size(i64::try_from(*bytes).unwrap_or(i64::MAX))
            ));
        }
    }
    if !summary.secrets_served.is_empty() {
        text.push_str("\nsecrets served:");
        for ((step, secret), n) in &summary.secrets_served {
            text.push_str(&format!("\n  {step:<16} {secret}: {n} fetch(es)"));
        }
    }
    if !summary.audited_images.is_empty() {
        text.push_str(&format!(
            "\naudit: no secret in {}",
            summary.audited_images.join(", ")
        ));
    }
    reporter.message(Severity::Info, &text);
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

/// A secret's name and value, zeroized on drop.
type NamedSecret = (String, zeroize::Zeroizing<Vec<u8>>);

/// Where `habitus audit` takes the secrets to look for.
struct AuditSecrets {
    from_build: Option<std::path::PathBuf>,
    files: Vec<std::path::PathBuf>,
    env: Vec<String>,
}

/// Reads the secrets named on the command line into zeroized buffers.
fn audit_secret_values(config: &Config, sources: &AuditSecrets) -> Result<Vec<NamedSecret>, Error> {
    let mut out = Vec::new();
    for path in &sources.files {
        let value = std::fs::read(path).map_err(|source| Error::Io {
            what: format!("cannot read secret file `{}`", path.display()),
            source,
        })?;
        out.push((path.display().to_string(), zeroize::Zeroizing::new(value)));
    }
    for name in &sources.env {
        let value = std::env::var_os(name).ok_or_else(|| {
            Error::Usage(format!("--secret-env `{name}`: the variable is not set"))
        })?;
        out.push((
            name.clone(),
            zeroize::Zeroizing::new(value.into_encoded_bytes()),
        ));
    }
    if let Some(file) = &sources.from_build {
        out.extend(audit_secrets_from_build(config, file)?);
    }
    if out.is_empty() {
        return Err(Error::Usage(
            "nothing to look for: give --secrets-from, --secret-file or --secret-env".into(),
        ));
    }
    Ok(out)
}

/// `habitus audit IMAGE…`.
fn audit_command(
    config: &Config,
    images: &[String],
    sources: &AuditSecrets,
    shadowed: bool,
) -> Result<(), Error> {
    let secrets = if shadowed
        && sources.from_build.is_none()
        && sources.files.is_empty()
        && sources.env.is_empty()
    {
        Vec::new()
    } else {
        audit_secret_values(config, sources)?
    };
    let (scanner, skipped) = audit::Scanner::new(
        secrets
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_slice())),
    );
    for name in skipped {
        eprintln!(
            "warning: secret `{name}` is shorter than {} bytes: not searched for",
            audit::MIN_SECRET_LEN
        );
    }
    let scanner = Arc::new(scanner);
    let runtime = runtime()?;
    let mut hits = 0;
    runtime.block_on(async {
        let engine = connect(config).await?;
        for image in images {
            let result = audit::audit_image(&engine, image, Arc::clone(&scanner))
                .await
                .map_err(|e| Error::Audit(e.to_string()))?;
            hits += result.hits.len();
            if config.json {
                let value = serde_json::json!({
                    "image": image,
                    "layers": result.layers,
                    "bytes": result.bytes,
                    "hits": result.hits,
                    "shadowed": if shadowed { serde_json::to_value(result.shadowed()).unwrap_or_default() } else { serde_json::Value::Null },
                });
                print_stdout(&value.to_string());
                continue;
            }
            for hit in &result.hits {
                print_stdout(&hit.describe(image));
            }
            if shadowed {
                for s in result.shadowed() {
                    print_stdout(&format!(
                        "{image}: `/{}` ({} bytes) added in layer {}, {} in layer {}: it still ships",
                        s.path, s.size, s.added_in, s.how, s.hidden_in
                    ));
                }
            }
            if result.hits.is_empty() && !scanner.is_empty() {
                eprintln!(
                    "{image}: no secret in {} layer(s) ({} read to their end) and the config",
                    result.layers,
                    runner::human_size(i64::try_from(result.bytes).unwrap_or(i64::MAX))
                );
            }
        }
        Ok::<(), Error>(())
    })?;
    if hits > 0 {
        Err(Error::Leak { hits })
    } else {
        Ok(())
    }
}

/// The secrets a build.yml declares, resolved by their providers.
fn audit_secrets_from_build(
    config: &Config,
    file: &std::path::Path,
) -> Result<Vec<NamedSecret>, Error> {
    let workdir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    let loaded = manifest::load(&LoadOptions {
        file,
        workdir,
        env: &config.env,
        sec_providers: &config.sec_providers,
    })
    .map_err(Error::Manifest)?;
    // The build's own resolution: the same providers (`--sec-providers`),
    // paths from the build's work dir, size limit and errors.
    let store = secrets::provider::resolve(&loaded.manifest, &config.sec_providers, &|name| {
        std::env::var_os(name)
    })
    .map_err(|e| Error::Usage(e.to_string()))?;
    let mut out: Vec<NamedSecret> = Vec::new();
    for step in store.steps() {
        for (key, secret) in store.of_step(step) {
            if !out.iter().any(|(name, _)| *name == key.name) {
                out.push((
                    key.name.clone(),
                    zeroize::Zeroizing::new(secret.expose().to_vec()),
                ));
            }
        }
    }
    Ok(out)
}
