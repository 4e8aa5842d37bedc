//! Resolves the parsed command line ([`crate::cli::Flags`]) into a
//! [`Config`]: absolute paths, Docker connection settings from flags and
//! the environment (as Docker's own CLI reads them), build options.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::cli::{BuilderArg, Flags, LevelArg};
use crate::engine::docker::{DockerOptions, DEFAULT_HOST};
use crate::manifest::{EnvSource, Untrusted};
use crate::model::{Builder, Level};
use crate::secrets::server::BasicAuth;
use crate::secrets::Settings as SecretsSettings;
use crate::secrets::DEFAULT_PASSWORD;
use zeroize::Zeroizing;

/// Where and how to reach the Docker daemon.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerSettings {
    /// `unix:///var/run/docker.sock`, `tcp://host:port`, …
    pub host: String,
    /// Connect over TLS with the certificates in `cert_path`.
    pub use_tls: bool,
    /// Directory holding ca.pem, cert.pem and key.pem.
    pub cert_path: Option<PathBuf>,
}

impl DockerSettings {
    /// Flags win; then DOCKER_HOST, DOCKER_TLS_VERIFY (any non-empty value
    /// turns TLS on, as in Docker's CLI) and DOCKER_CERT_PATH (default
    /// `~/.docker` when TLS is on).
    pub fn resolve(
        host: Option<&str>,
        use_tls: Option<bool>,
        certs: Option<&Path>,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> DockerSettings {
        let non_empty = |name: &str| env(name).filter(|v| !v.is_empty());
        let host = host
            .map(str::to_string)
            .or_else(|| non_empty("DOCKER_HOST"))
            .unwrap_or_else(|| DEFAULT_HOST.to_string());
        let use_tls = use_tls.unwrap_or_else(|| non_empty("DOCKER_TLS_VERIFY").is_some());
        // An `https://` host talks TLS too.
        let tls = use_tls || host.starts_with("https://");
        let cert_path = certs
            .map(Path::to_path_buf)
            .or_else(|| non_empty("DOCKER_CERT_PATH").map(PathBuf::from))
            .or_else(|| {
                tls.then(|| non_empty("HOME").map(|h| Path::new(&h).join(".docker")))
                    .flatten()
            });
        DockerSettings {
            host,
            use_tls,
            cert_path,
        }
    }

    /// What the engine connects with.
    pub fn options(&self) -> DockerOptions {
        DockerOptions {
            host: Some(self.host.clone()),
            use_tls: self.use_tls,
            cert_path: self.cert_path.clone(),
        }
    }
}

/// Everything a habitus run needs, resolved. Only this module reads the
/// command line's flags and DOCKER_HOST, DOCKER_TLS_VERIFY,
/// DOCKER_CERT_PATH, HABITUS_CREDENTIAL_HELPER_TIMEOUT,
/// HABITUS_SECRET_SERVER_PASSWORD and HABITUS_UNTRUSTED.
#[derive(Debug, Clone, PartialEq)]
pub struct Config {
    /// build.yml, as the user should see it in messages.
    pub file: PathBuf,
    /// The work directory, absolute.
    pub workdir: PathBuf,
    /// Where `_env(NAME)` in build.yml reads.
    pub env: EnvSource,
    /// `--untrusted` (or HABITUS_UNTRUSTED): what build.yml may reach on
    /// this machine; `None` when it is trusted.
    pub untrusted: Option<Untrusted>,
    /// Where and how to reach the Docker daemon.
    pub docker: DockerSettings,
    /// How steps are built.
    pub build: BuildSettings,
    /// The secrets server's settings (`--secrets`, `--binding`, `--port`,
    /// basic auth, `--sec-providers`, `--network-pool`).
    pub secrets: SecretsSettings,
    /// What habitus prints, and how.
    pub output: OutputSettings,
    /// `--stale-after`: when another host's leftovers may be swept.
    pub stale_after: std::time::Duration,
    /// How long a registry credential helper may take before it is killed
    /// and the build fails naming it: HABITUS_CREDENTIAL_HELPER_TIMEOUT
    /// (seconds, may have a fraction), else 30 s.
    pub credential_helper_timeout: std::time::Duration,
    /// What the user should know about the command line itself (a
    /// password in argv, a password file others can read); printed before
    /// the command runs.
    pub warnings: Vec<String>,
}

/// Why the command line could not be resolved into a [`Config`].
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// `--password-secret-server-file` could not be read, or holds no
    /// usable password.
    #[error("--password-secret-server-file `{}`: {message}", path.display())]
    PasswordFile {
        /// The file, as resolved against the current directory.
        path: PathBuf,
        /// What is wrong, and the fix.
        message: String,
    },
}

/// The environment variable that holds the secrets server's password.
pub const PASSWORD_ENV: &str = "HABITUS_SECRET_SERVER_PASSWORD";

/// The largest `--password-secret-server-file` read, in bytes.
pub const MAX_PASSWORD_FILE_SIZE: u64 = 4096;

/// The warning for `--password-secret-server PASSWORD`.
pub const ARGV_PASSWORD_WARNING: &str = "--password-secret-server puts the password on the command line, where `ps` shows it to every user of this machine; use --password-secret-server-file FILE or HABITUS_SECRET_SERVER_PASSWORD instead";

/// HABITUS_CREDENTIAL_HELPER_TIMEOUT as a duration: a positive number of
/// seconds; unset, empty or not such a number is the default, 30 s.
pub fn credential_helper_timeout(env: &dyn Fn(&str) -> Option<String>) -> std::time::Duration {
    env("HABITUS_CREDENTIAL_HELPER_TIMEOUT")
        .and_then(|v| v.trim().parse::<f64>().ok())
        .filter(|s| s.is_finite() && *s > 0.0 && *s < 86_400.0)
        .map(std::time::Duration::from_secs_f64)
        .unwrap_or(crate::engine::docker::DEFAULT_CREDENTIAL_HELPER_TIMEOUT)
}

/// How the steps of a build are built: the command line's build options.
#[derive(Debug, Clone, PartialEq)]
pub struct BuildSettings {
    pub uid: Option<String>,
    /// `--build` arguments; they win over `args:` in build.yml.
    pub build_args: BTreeMap<String, String>,
    pub no_cache: bool,
    pub rm: bool,
    pub force_rm: bool,
    pub network: Option<String>,
    pub memory: Option<i64>,
    pub cpuset_cpus: Option<String>,
    pub cpu_shares: Option<i64>,
    /// Steps built at the same time.
    pub jobs: usize,
    pub keep_all: bool,
    pub force_rmi: bool,
    pub noprune_rmi: bool,
    pub after_build_commands: bool,
    /// Label images too (costs one commit per label with the classic builder).
    pub image_labels: bool,
    /// The builder of steps that do not choose one in build.yml.
    pub builder: Builder,
    /// Skip the audit of the images of a build that served secrets.
    pub no_audit: bool,
    /// Leave the artifacts on the host after the build (`--keep-artifacts`).
    pub keep_artifacts: bool,
    /// Skip `cleanup.commands` (`--no-cleanup`).
    pub no_cleanup: bool,
    /// `--squash-temp-limit` (or HABITUS_SQUASH_TEMP_LIMIT): the bytes of
    /// temporary files one squash may write.
    pub squash_temp_limit: u64,
    /// Push every step kept at the end (`--push`).
    pub push: bool,
    /// Where to write the build's metadata (`--metadata-file`).
    pub metadata_file: Option<PathBuf>,
    /// Images every step may take cache from (`--cache-from`).
    pub cache_from: Vec<String>,
    /// BuildKit steps embed inline cache metadata (`--cache-to inline`).
    pub cache_to_inline: bool,
}

impl Default for BuildSettings {
    fn default() -> Self {
        BuildSettings {
            uid: None,
            build_args: BTreeMap::new(),
            no_cache: false,
            rm: true,
            force_rm: false,
            network: None,
            memory: None,
            cpuset_cpus: None,
            cpu_shares: None,
            jobs: 1,
            keep_all: false,
            force_rmi: false,
            noprune_rmi: false,
            after_build_commands: false,
            image_labels: false,
            builder: Builder::Legacy,
            no_audit: false,
            keep_artifacts: false,
            no_cleanup: false,
            squash_temp_limit: crate::squash::budget::DEFAULT_TEMP_LIMIT,
            push: false,
            metadata_file: None,
            cache_from: Vec::new(),
            cache_to_inline: false,
        }
    }
}

/// What habitus prints, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputSettings {
    pub level: Level,
    /// Colours and the live view on a terminal.
    pub pretty: bool,
    /// Hide the daemon's build output.
    pub suppress: bool,
    /// Also write every event to stdout as JSON lines.
    pub json: bool,
}

impl Config {
    /// Resolves `flags` against the current directory and the environment.
    pub fn from_flags(
        flags: &Flags,
        cwd: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let workdir = match &flags.workdir {
            Some(d) if d.is_absolute() => d.clone(),
            Some(d) => cwd.join(d),
            None => cwd.to_path_buf(),
        };
        let workdir = normalize(&workdir);
        // Go Habitus: the default `build.yml` lives in the work dir; any
        // other -f is taken as given (relative to the current directory).
        let file = if flags.file == Path::new("build.yml") {
            workdir.join("build.yml")
        } else if flags.file.is_absolute() {
            flags.file.clone()
        } else {
            cwd.join(&flags.file)
        };
        let untrusted = untrusted(flags, cwd, env);
        // An untrusted build.yml never reads the process environment.
        let env_source = if flags.env.is_empty() && untrusted.is_none() {
            EnvSource::Process
        } else {
            EnvSource::Given(flags.env.iter().cloned().collect())
        };
        let mut warnings = Vec::new();
        let password = password(flags, cwd, env, &mut warnings)?;
        Ok(Config {
            file: normalize(&file),
            workdir,
            env: env_source,
            untrusted,
            docker: DockerSettings::resolve(
                flags.host.as_deref(),
                flags.use_tls,
                flags.certs.as_deref(),
                env,
            ),
            build: BuildSettings {
                squash_temp_limit: squash_temp_limit(flags, env),
                ..build_settings(flags)
            },
            secrets: secrets_settings(flags, &password),
            output: OutputSettings {
                level: match (flags.verbose, flags.level) {
                    (true, LevelArg::Trace) => Level::Trace,
                    (true, _) => Level::Debug,
                    (false, level) => level_of(level),
                },
                pretty: flags.pretty,
                suppress: flags.suppress,
                json: flags.json,
            },
            stale_after: flags.stale_after,
            credential_helper_timeout: credential_helper_timeout(env),
            warnings,
        })
    }
}

/// The secrets server's basic-auth password: `--password-secret-server-file`,
/// else `--password-secret-server` (with a warning: argv is public), else
/// HABITUS_SECRET_SERVER_PASSWORD, else Go Habitus's default.
fn password(
    flags: &Flags,
    cwd: &Path,
    env: &dyn Fn(&str) -> Option<String>,
    warnings: &mut Vec<String>,
) -> Result<Zeroizing<String>, ConfigError> {
    if let Some(file) = &flags.password_secret_server_file {
        return password_from_file(&normalize(&cwd.join(file)), warnings);
    }
    if let Some(password) = &flags.password_secret_server {
        warnings.push(ARGV_PASSWORD_WARNING.into());
        return Ok(Zeroizing::new(password.expose().to_owned()));
    }
    Ok(Zeroizing::new(
        env(PASSWORD_ENV).unwrap_or_else(|| DEFAULT_PASSWORD.to_owned()),
    ))
}

/// Reads the password from `path`: up to [`MAX_PASSWORD_FILE_SIZE`]
/// bytes of UTF-8, one trailing newline (`\n` or `\r\n`) removed, not
/// empty. A file that group or others may read is used, with a warning
/// (secret volumes are often mounted 0644).
fn password_from_file(
    path: &Path,
    warnings: &mut Vec<String>,
) -> Result<Zeroizing<String>, ConfigError> {
    use std::io::Read;
    use std::os::unix::fs::PermissionsExt;
    let fail = |message: String| ConfigError::PasswordFile {
        path: path.to_path_buf(),
        message,
    };
    let fix = "write the password into a file only you can read (`chmod 600`)";
    let file =
        std::fs::File::open(path).map_err(|e| fail(format!("cannot be read: {e}; {fix}")))?;
    let meta = file
        .metadata()
        .map_err(|e| fail(format!("cannot be read: {e}; {fix}")))?;
    if !meta.is_file() {
        return Err(fail(format!("is not a file; {fix}")));
    }
    let mode = meta.permissions().mode() & 0o7777;
    if mode & 0o044 != 0 {
        warnings.push(format!(
            "--password-secret-server-file `{0}` can be read by other users (mode {mode:04o}); `chmod 600 {0}`",
            path.display()
        ));
    }
    let mut bytes = Zeroizing::new(Vec::new());
    file.take(MAX_PASSWORD_FILE_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| fail(format!("cannot be read: {e}; {fix}")))?;
    if bytes.len() as u64 > MAX_PASSWORD_FILE_SIZE {
        return Err(fail(format!(
            "is larger than {MAX_PASSWORD_FILE_SIZE} bytes; it holds only the password"
        )));
    }
    let mut text: &[u8] = &bytes;
    text = text.strip_suffix(b"\n").unwrap_or(text);
    text = text.strip_suffix(b"\r").unwrap_or(text);
    if text.is_empty() {
        return Err(fail(format!("is empty; {fix}")));
    }
    let text = std::str::from_utf8(text)
        .map_err(|_| fail("is not UTF-8 text; write the password as text".into()))?;
    Ok(Zeroizing::new(text.to_owned()))
}

/// `--squash-temp-limit`, else HABITUS_SQUASH_TEMP_LIMIT (a size like the
/// flag's; unset, empty or not a size is the default, 20 GiB).
fn squash_temp_limit(flags: &Flags, env: &dyn Fn(&str) -> Option<String>) -> u64 {
    flags
        .squash_temp_limit
        .or_else(|| env("HABITUS_SQUASH_TEMP_LIMIT").and_then(|v| crate::cli::parse_size(&v).ok()))
        .unwrap_or(crate::squash::budget::DEFAULT_TEMP_LIMIT)
}

/// HABITUS_UNTRUSTED turns `--untrusted` on: any value but an empty one
/// or one Go reads as false (`0`, `false`, …).
fn untrusted_from_env(env: &dyn Fn(&str) -> Option<String>) -> bool {
    env("HABITUS_UNTRUSTED").is_some_and(|v| {
        let v = v.trim();
        !v.is_empty() && !matches!(v, "0" | "f" | "F" | "FALSE" | "false" | "False")
    })
}

/// `--untrusted` or HABITUS_UNTRUSTED (either turns it on; neither can
/// turn the other off), with its allowances: `--secret-dir` (absolute,
/// against `cwd`), `--ssh`, `--after-build-commands` and `--push`.
fn untrusted(flags: &Flags, cwd: &Path, env: &dyn Fn(&str) -> Option<String>) -> Option<Untrusted> {
    (flags.untrusted || untrusted_from_env(env)).then(|| Untrusted {
        secret_dirs: flags
            .secret_dir
            .iter()
            .map(|dir| normalize(&cwd.join(dir)))
            .collect(),
        ssh: flags.ssh,
        after_build_commands: flags.after_build_commands,
        push: flags.push,
    })
}

fn build_settings(flags: &Flags) -> BuildSettings {
    BuildSettings {
        uid: flags.uid.clone(),
        build_args: flags.build_args.iter().cloned().collect(),
        no_cache: flags.no_cache,
        rm: flags.rm,
        force_rm: flags.force_rm,
        network: flags.network.clone().filter(|n| !n.is_empty()),
        memory: flags.docker_memory,
        cpuset_cpus: flags.docker_cpuset_cpus.clone().filter(|c| !c.is_empty()),
        cpu_shares: Some(flags.docker_cpu_shares).filter(|s| *s > 0),
        jobs: flags.jobs.map(usize::from).unwrap_or_else(default_jobs),
        keep_all: flags.keep_all,
        force_rmi: flags.force_rmi,
        noprune_rmi: flags.noprune_rmi,
        after_build_commands: flags.after_build_commands,
        image_labels: flags.image_labels,
        builder: match flags.builder {
            BuilderArg::Legacy => Builder::Legacy,
            BuilderArg::BuildKit => Builder::BuildKit,
        },
        no_audit: flags.no_audit,
        keep_artifacts: flags.keep_artifacts,
        no_cleanup: flags.no_cleanup,
        squash_temp_limit: crate::squash::budget::DEFAULT_TEMP_LIMIT,
        push: flags.push,
        metadata_file: flags.metadata_file.clone(),
        cache_from: flags.cache_from.clone(),
        cache_to_inline: flags.cache_to.is_some(),
    }
}

fn secrets_settings(flags: &Flags, password: &str) -> SecretsSettings {
    SecretsSettings {
        enabled: flags.secrets,
        binding: flags.binding.and_then(|b| b.0),
        port: flags.port.unwrap_or(0),
        basic_auth: flags
            .authentication_secret_server
            .then(|| BasicAuth::new(&flags.user_secret_server, password)),
        providers: flags.sec_providers.0.clone(),
        network_pool: flags.network_pool,
    }
}

fn level_of(level: LevelArg) -> Level {
    match level {
        LevelArg::Trace => Level::Trace,
        LevelArg::Debug => Level::Debug,
        LevelArg::Info => Level::Info,
        LevelArg::Notice => Level::Notice,
        LevelArg::Warning => Level::Warning,
        LevelArg::Error => Level::Error,
        LevelArg::Critical => Level::Critical,
    }
}

/// Removes `.` and resolves `..` lexically (no symlinks followed).
pub fn normalize(path: &Path) -> PathBuf {
    use std::path::Component;
    let mut out = PathBuf::new();
    for component in path.components() {
        match component {
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    out.push("..");
                }
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Steps built at once by default: four per CPU, at most 32. A step's
/// cost is mostly the daemon's (a container start, a commit), not
/// habitus's CPU: `cargo bench --bench runner -- fanout` measured 16
/// independent steps on 2 CPUs at 2 at a time 1.15–1.2× slower than the
/// best `xargs -P` of `docker build`s, and 8 at a time on par.
pub fn default_jobs() -> usize {
    let cpus = std::thread::available_parallelism()
        .map(usize::from)
        .unwrap_or(1);
    (cpus * 4).min(32)
}

#[cfg(test)]
mod tests {
    use super::{DockerSettings, DEFAULT_HOST};
    use crate::engine::docker::DockerOptions;
    use std::path::{Path, PathBuf};

    fn env_of(pairs: &'static [(&'static str, &'static str)]) -> impl Fn(&str) -> Option<String> {
        move |name| {
            pairs
                .iter()
                .find(|(k, _)| *k == name)
                .map(|(_, v)| v.to_string())
        }
    }

    #[test]
    fn the_credential_helper_timeout_is_30_s_unless_set() {
        use std::time::Duration;
        let with = |v: &'static str| {
            super::credential_helper_timeout(&move |n: &str| {
                (n == "HABITUS_CREDENTIAL_HELPER_TIMEOUT").then(|| v.to_string())
            })
        };
        assert_eq!(
            super::credential_helper_timeout(&|_| None),
            Duration::from_secs(30)
        );
        assert_eq!(with("2"), Duration::from_secs(2));
        assert_eq!(with("0.5"), Duration::from_millis(500));
        for bad in ["", "0", "-1", "soon", "inf", "NaN"] {
            assert_eq!(with(bad), Duration::from_secs(30), "{bad}");
        }
    }

    #[test]
    fn docker_settings_follow_docker_cli() {
        let none = env_of(&[]);
        assert_eq!(
            DockerSettings::resolve(None, None, None, &none),
            DockerSettings {
                host: DEFAULT_HOST.into(),
                use_tls: false,
                cert_path: None
            }
        );
        let env = env_of(&[
            ("DOCKER_HOST", "tcp://10.0.0.1:2376"),
            ("DOCKER_TLS_VERIFY", "1"),
            ("HOME", "/home/u"),
        ]);
        let s = DockerSettings::resolve(None, None, None, &env);
        assert_eq!(s.host, "tcp://10.0.0.1:2376");
        assert!(s.use_tls);
        assert_eq!(s.cert_path, Some(PathBuf::from("/home/u/.docker")));
        let s = DockerSettings::resolve(
            Some("unix:///x.sock"),
            Some(false),
            Some(Path::new("/c")),
            &env,
        );
        assert_eq!(s.host, "unix:///x.sock");
        assert!(!s.use_tls);
        assert_eq!(s.cert_path, Some(PathBuf::from("/c")));
    }

    #[test]
    fn docker_cert_path_is_read_and_becomes_the_engine_options() {
        let env = env_of(&[
            ("DOCKER_HOST", "tcp://10.0.0.1:2376"),
            ("DOCKER_TLS_VERIFY", "1"),
            ("DOCKER_CERT_PATH", "/certs"),
            ("HOME", "/home/u"),
        ]);
        let s = DockerSettings::resolve(None, None, None, &env);
        assert_eq!(
            s.options(),
            DockerOptions {
                host: Some("tcp://10.0.0.1:2376".into()),
                use_tls: true,
                cert_path: Some("/certs".into()),
            }
        );
    }

    #[test]
    fn empty_docker_variables_mean_unset() {
        let env = env_of(&[
            ("DOCKER_HOST", ""),
            ("DOCKER_TLS_VERIFY", ""),
            ("DOCKER_CERT_PATH", ""),
            ("HOME", "/home/u"),
        ]);
        let s = DockerSettings::resolve(None, None, None, &env);
        assert_eq!(
            s,
            DockerSettings {
                host: DEFAULT_HOST.into(),
                use_tls: false,
                cert_path: None
            }
        );
        assert_eq!(s.options().address(), "unix:///var/run/docker.sock");
    }

    #[test]
    fn an_https_host_gets_the_default_certificate_directory() {
        let env = env_of(&[
            ("DOCKER_HOST", "https://10.0.0.1:2376"),
            ("HOME", "/home/u"),
        ]);
        let s = DockerSettings::resolve(None, None, None, &env);
        assert!(!s.use_tls);
        assert_eq!(s.cert_path, Some(PathBuf::from("/home/u/.docker")));
        let plain = env_of(&[("DOCKER_HOST", "tcp://10.0.0.1:2375"), ("HOME", "/home/u")]);
        assert_eq!(
            DockerSettings::resolve(None, None, None, &plain).cert_path,
            None
        );
    }

    #[test]
    fn the_password_is_never_in_debug_and_the_argv_form_warns() {
        use super::{Config, ARGV_PASSWORD_WARNING, PASSWORD_ENV};
        let cli = crate::cli::parse(["habitus", "-password-secret-server=pw-7f3c"]).unwrap();
        assert!(!format!("{cli:?}").contains("pw-7f3c"));
        let config = Config::from_flags(&cli.flags, Path::new("/work"), &env_of(&[])).unwrap();
        assert_eq!(config.warnings, [ARGV_PASSWORD_WARNING]);
        assert!(!format!("{config:?}").contains("pw-7f3c"));
        let cli = crate::cli::parse(["habitus"]).unwrap();
        let env = env_of(&[(PASSWORD_ENV, "pw-env")]);
        let config = Config::from_flags(&cli.flags, Path::new("/work"), &env).unwrap();
        assert!(config.warnings.is_empty());
    }

    #[test]
    fn untrusted_comes_from_the_flag_or_habitus_untrusted() {
        use super::Config;
        use crate::manifest::{EnvSource, Untrusted};
        let config = |args: &[&str], env: &'static [(&'static str, &'static str)]| {
            let cli = crate::cli::parse(args.iter().copied()).unwrap();
            Config::from_flags(&cli.flags, Path::new("/work"), &env_of(env)).unwrap()
        };
        let trusted = config(&["habitus"], &[]);
        assert_eq!(trusted.untrusted, None);
        assert_eq!(trusted.env, EnvSource::Process);
        let allowed = config(
            &[
                "habitus",
                "-untrusted",
                "-secret-dir=keys",
                "--secret-dir",
                "/run/secrets",
                "-ssh",
                "-after-build-commands",
                "-push",
            ],
            &[],
        );
        assert_eq!(
            allowed.untrusted,
            Some(Untrusted {
                secret_dirs: vec!["/work/keys".into(), "/run/secrets".into()],
                ssh: true,
                after_build_commands: true,
                push: true,
            })
        );
        // Untrusted, `_env()` never reads the process environment.
        assert_eq!(allowed.env, EnvSource::Given(Default::default()));
        let on: [&'static [(&str, &str)]; 3] = [
            &[("HABITUS_UNTRUSTED", "1")],
            &[("HABITUS_UNTRUSTED", "true")],
            &[("HABITUS_UNTRUSTED", "yes")],
        ];
        for env in on {
            assert_eq!(
                config(&["habitus"], env).untrusted,
                Some(Untrusted::default()),
                "{env:?}"
            );
            // The flag cannot turn the variable off.
            assert!(config(&["habitus", "--untrusted=false"], env)
                .untrusted
                .is_some());
        }
        let off: [&'static [(&str, &str)]; 3] = [
            &[("HABITUS_UNTRUSTED", "")],
            &[("HABITUS_UNTRUSTED", "0")],
            &[("HABITUS_UNTRUSTED", "false")],
        ];
        for env in off {
            assert_eq!(config(&["habitus"], env).untrusted, None, "{env:?}");
        }
    }

    #[test]
    fn the_squash_temp_limit_comes_from_the_flag_then_the_variable_then_20_gib() {
        use super::Config;
        let limit = |args: &[&str], env: &'static [(&'static str, &'static str)]| {
            let cli = crate::cli::parse(args.iter().copied()).unwrap();
            Config::from_flags(&cli.flags, Path::new("/work"), &env_of(env))
                .unwrap()
                .build
                .squash_temp_limit
        };
        assert_eq!(limit(&["habitus"], &[]), 20 << 30);
        assert_eq!(
            limit(&["habitus", "--squash-temp-limit", "512MiB"], &[]),
            512 << 20
        );
        // Go's syntax, as for every flag.
        assert_eq!(limit(&["habitus", "-squash-temp-limit=2g"], &[]), 2 << 30);
        let env: &[(&str, &str)] = &[("HABITUS_SQUASH_TEMP_LIMIT", "1GiB")];
        assert_eq!(limit(&["habitus"], env), 1 << 30);
        assert_eq!(
            limit(&["habitus", "-squash-temp-limit=1048576"], env),
            1 << 20
        );
        for bad in [
            &[("HABITUS_SQUASH_TEMP_LIMIT", "lots")],
            &[("HABITUS_SQUASH_TEMP_LIMIT", "")],
        ] {
            assert_eq!(limit(&["habitus"], bad), 20 << 30, "{bad:?}");
        }
        let err = crate::cli::parse(["habitus", "--squash-temp-limit", "lots"]).unwrap_err();
        assert!(
            err.to_string()
                .contains("`lots` is not a size (examples: `512MiB`, `20GiB`, `2g`, `1048576`)"),
            "{err}"
        );
    }
}
