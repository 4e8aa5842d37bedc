//! One function per subcommand. Each takes the resolved [`Config`] and
//! returns what the process should exit with; `lib.rs` only parses,
//! resolves and dispatches here.

mod audit;
mod build;
mod check;
mod info;
mod prune;
mod serve;
mod squash;

pub use build::build_in;

use crate::cli::Command;
use crate::config::Config;
use crate::engine::docker::DockerEngine;
use crate::engine::EngineError;
use crate::error::Error;
use crate::exposure::{self, Exposure};
use crate::manifest::{self, LoadOptions, Loaded, Manifest, Step};
use crate::progress;
use crate::runner::BuildError;
use crate::workpath;

/// Runs `command` with `config`.
pub fn dispatch(command: Command, config: &Config) -> Result<(), Error> {
    match command {
        Command::Version { verbose } => info::version(config, verbose),
        Command::Check { strict } => check::check(config, strict),
        Command::Plan { format } => check::plan(config, format),
        Command::Build => build::build(config),
        Command::Serve {
            secret_file,
            secret_env,
        } => serve::serve(config, &secret_file, &secret_env),
        Command::Completions { shell } => info::completions(shell),
        Command::Man => info::man(),
        Command::Audit {
            images,
            secrets_from,
            secret_file,
            secret_env,
            shadowed,
            strict,
        } => audit::audit(
            config,
            &images,
            &audit::Sources {
                from_build: secrets_from,
                files: secret_file,
                env: secret_env,
            },
            shadowed,
            strict,
        ),
        Command::Prune { dry_run } => prune::prune(config, dry_run),
        Command::Squash {
            image,
            tag,
            all,
            from,
        } => squash::squash(config, &image, tag.as_deref(), all, from),
    }
}

/// Loads and validates build.yml, printing its warnings.
fn load(config: &Config) -> Result<Loaded, Error> {
    let loaded = manifest::load(&LoadOptions {
        file: &config.file,
        workdir: &config.workdir,
        env: &config.env,
        sec_providers: &config.secrets.providers,
        untrusted: config.untrusted.as_ref(),
    })
    .map_err(Error::Manifest)?;
    for warning in &loaded.warnings {
        progress::print_stderr(&format!("warning: {warning}"));
    }
    Ok(loaded)
}

/// The bytes of `step`'s Dockerfile (it need not be UTF-8), read only
/// inside the work directory.
fn read_dockerfile(manifest: &Manifest, step: &Step) -> Result<Vec<u8>, BuildError> {
    let workdir = &manifest.workdir;
    step.dockerfile_path
        .strip_prefix(workdir)
        .map_err(|_| std::io::Error::other("is not under the work directory"))
        .and_then(|rel| workpath::open_beneath(workdir, rel, workpath::WORKDIR))
        .and_then(|mut file| {
            let mut bytes = Vec::new();
            std::io::Read::read_to_end(&mut file, &mut bytes).map(|_| bytes)
        })
        .map_err(|e| BuildError::Dockerfile {
            step: step.label.clone(),
            dockerfile: step.dockerfile_path.clone(),
            message: e.to_string(),
            hint: None,
        })
}

/// The build args and `ENV` of every step that look like secrets. A
/// Dockerfile that cannot be read is left to its step to report.
fn exposures(manifest: &Manifest) -> Vec<Exposure> {
    manifest
        .steps
        .iter()
        .flat_map(|step| {
            let text = read_dockerfile(manifest, step).ok();
            exposure::in_step(&manifest.file, step, text.as_deref())
        })
        .collect()
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
    Ok(DockerEngine::connect(&config.docker.options())
        .await?
        .with_credential_helper_timeout(config.credential_helper_timeout))
}
