//! The command line: clap definitions and the translation of Go's flag
//! syntax (`-host=…`, `-keep-all`, `--secrets=false`) into clap's.
//!
//! Nothing here touches Docker or the disk; [`crate::config`] turns the
//! parsed [`Cli`] into a resolved configuration.

use std::ffi::OsString;
use std::path::PathBuf;

use clap::{ArgAction, Args, CommandFactory, Parser, Subcommand, ValueEnum};

use crate::model::SecretKind;

/// The clap command, for completions and the man page.
pub fn command() -> clap::Command {
    Cli::command()
}

/// habitus: a build-flow runner for Docker with a short-lived TLS secrets
/// server. With no subcommand it builds, as Go Habitus does.
#[derive(Debug, Parser)]
#[command(
    name = "habitus",
    version,
    about,
    args_conflicts_with_subcommands = false,
    subcommand_negates_reqs = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    #[command(flatten)]
    pub flags: Flags,
}

/// Subcommands. `habitus` alone is `habitus build`.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Build every step of build.yml (the default).
    Build,
    /// Validate build.yml and print the plan; needs no Docker daemon.
    Check {
        /// Fail on build args and `ENV` that look like secrets (and would
        /// be stored in the image), and on a step whose Dockerfile uses
        /// another step's image without `depends_on`, instead of warning.
        #[arg(long)]
        strict: bool,
    },
    /// Print the build plan as text, JSON, Graphviz dot or Mermaid.
    Plan {
        /// Output format.
        #[arg(long, value_enum, default_value_t = PlanFormat::Text)]
        format: PlanFormat,
    },
    /// Print the version.
    Version {
        /// Also connect to the daemon and show its version, the API
        /// version habitus settled on, its image store and BuildKit.
        #[arg(long, short = 'v')]
        verbose: bool,
    },
    /// Run the secrets server on its own (for CI jobs or other builders)
    /// until SIGINT/SIGTERM, serving the secrets of build.yml or those
    /// given with --secret-file/--secret-env; prints the connection
    /// settings on stdout.
    Serve {
        /// `NAME=PATH`: serve the file PATH as `/v1/secrets/file/NAME` (repeatable).
        #[arg(long = "secret-file", value_name = "NAME=PATH", value_parser = parse_key_value,
              action = ArgAction::Append)]
        secret_file: Vec<(String, String)>,
        /// `NAME` or `NAME=VAR`: serve `HABITUS_VAR` (default `HABITUS_NAME`)
        /// as `/v1/secrets/env/NAME` (repeatable).
        #[arg(long = "secret-env", value_name = "NAME[=VAR]", action = ArgAction::Append)]
        secret_env: Vec<String>,
    },
    /// Print a shell completion script: `habitus completions bash > /etc/bash_completion.d/habitus`.
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff): `habitus man | man -l -`.
    Man,
    /// Search images for secrets: every layer (also files a later layer
    /// deletes, and files inside gzip, zstd, zip and tar files) and the
    /// config, raw, base64, hex (also wrapped) and URL-encoded. Exits 1 on
    /// any hit; never prints a secret.
    Audit {
        /// Images to audit.
        #[arg(required = true)]
        images: Vec<String>,
        /// Secrets declared in this build.yml (resolved by their providers).
        #[arg(long, value_name = "BUILD_YML")]
        secrets_from: Option<PathBuf>,
        /// A file whose content is a secret (repeatable).
        #[arg(long, value_name = "PATH")]
        secret_file: Vec<PathBuf>,
        /// An environment variable whose value is a secret (repeatable).
        #[arg(long, value_name = "NAME")]
        secret_env: Vec<String>,
        /// Also list files that a layer adds and a later layer deletes or
        /// overwrites: they still ship with the image.
        #[arg(long)]
        shadowed: bool,
        /// Exit 2 when anything was not searched (a nested archive beyond a
        /// limit, a platform the saved image lacks), not just warn.
        #[arg(long)]
        strict: bool,
    },
    /// Remove the networks and containers that killed habitus builds left
    /// behind (what every build also does when it starts): those of a
    /// build on this host whose process is gone, and those of other hosts
    /// older than --stale-after. Never a network a container still uses.
    Prune {
        /// Only list what would be removed.
        #[arg(long)]
        dry_run: bool,
    },
    /// Squash an image's layers into one, applying deletions, keeping the
    /// config. Without `--all` or `--from`, the layers of the newest tagged
    /// image in IMAGE's history (its `FROM`) are kept.
    Squash {
        /// The image to squash.
        image: String,
        /// Tag for the squashed image (default: IMAGE itself).
        #[arg(short = 't', long = "tag", value_name = "TAG")]
        tag: Option<String>,
        /// Squash every layer, base layers included, into one.
        #[arg(long, conflicts_with = "from")]
        all: bool,
        /// Keep the layers of this base image as they are.
        #[arg(long, value_name = "BASE")]
        from: Option<String>,
    },
}

/// Formats for `habitus plan`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum PlanFormat {
    /// Steps by level, with their dependencies.
    Text,
    /// Machine-readable steps.
    Json,
    /// Graphviz: `habitus plan --format dot | dot -Tpng > plan.png`.
    Dot,
    /// A Mermaid flowchart.
    Mermaid,
}

/// Log levels accepted by `--level` (Go Habitus's names, plus `warn` and
/// `trace`); the configuration maps them to [`crate::model::Level`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LevelArg {
    Trace,
    Debug,
    Info,
    Notice,
    #[value(alias = "warn")]
    Warning,
    Error,
    Critical,
}

/// Operating systems accepted by `--os` (kept for compatibility: habitus
/// never needs to know the image's OS).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OsType {
    Debian,
    Redhat,
    Busybox,
    Alpine,
}

/// Every Go Habitus flag, with the same names, defaults and meanings, plus
/// habitus's own. All are global: `habitus -f x check` and
/// `habitus check -f x` are the same.
#[derive(Debug, Clone, Args)]
pub struct Flags {
    /// Build file path; `build.yml` means build.yml in the work directory.
    #[arg(
        short = 'f',
        global = true,
        value_name = "FILE",
        default_value = "build.yml"
    )]
    pub file: PathBuf,

    /// Work directory for this build (default: the current directory).
    #[arg(short = 'd', global = true, value_name = "DIR")]
    pub workdir: Option<PathBuf>,

    /// Don't use the cache in any step.
    #[arg(long, global = true, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true", value_parser = parse_go_bool,
          action = ArgAction::Set)]
    pub no_cache: bool,

    /// Suppress the daemon's build output.
    #[arg(long, global = true, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true", value_parser = parse_go_bool,
          action = ArgAction::Set)]
    pub suppress: bool,

    /// Remove intermediate containers, also that of a failed instruction
    /// (`--rm=false` keeps them all, for debugging).
    #[arg(long, global = true, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_value = "true", default_missing_value = "true", value_parser = parse_go_bool,
          action = ArgAction::Set)]
    pub rm: bool,

    /// Remove intermediate containers even after a failed instruction
    /// (what `--rm` already does; kept for compatibility).
    #[arg(long, global = true, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true", value_parser = parse_go_bool,
          action = ArgAction::Set)]
    pub force_rm: bool,

    /// Unique ID for the build: every image is named `name-UID[:tag]`, so
    /// several builds of one build.yml can share a daemon.
    #[arg(long, global = true, value_name = "UID", value_parser = parse_uid)]
    pub uid: Option<String>,

    /// Log level: trace, debug, info, notice, warning, error, critical.
    #[arg(
        long,
        global = true,
        value_enum,
        ignore_case = true,
        default_value = "info"
    )]
    pub level: LevelArg,

    /// Show the daemon's whole output stream, also on a terminal (same as
    /// `--level debug`).
    #[arg(short = 'v', long, global = true)]
    pub verbose: bool,

    /// Colours and formatting in the output.
    #[arg(long, global = true, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_value = "true", default_missing_value = "true", value_parser = parse_go_bool,
          action = ArgAction::Set)]
    pub pretty: bool,

    /// Docker host (`unix:///var/run/docker.sock`, `tcp://host:2376`); DOCKER_HOST if missing.
    #[arg(long, global = true, value_name = "URL")]
    pub host: Option<String>,

    /// Docker TLS certificate folder (ca.pem, cert.pem, key.pem); DOCKER_CERT_PATH if missing.
    #[arg(long, global = true, value_name = "DIR")]
    pub certs: Option<PathBuf>,

    /// `NAME=VALUE` for `_env(NAME)` in build.yml (repeatable). Once any is
    /// given, the process environment is not consulted.
    #[arg(long = "env", global = true, value_name = "NAME=VALUE", value_parser = parse_key_value,
          action = ArgAction::Append)]
    pub env: Vec<(String, String)>,

    /// `NAME=VALUE` build argument for every step (repeatable); wins over
    /// `args:` in build.yml.
    #[arg(long = "build", global = true, value_name = "NAME=VALUE", value_parser = parse_key_value,
          action = ArgAction::Append)]
    pub build_args: Vec<(String, String)>,

    /// Networking mode for RUN instructions (`networkmode` of the build API).
    #[arg(long, global = true, value_name = "MODE")]
    pub network: Option<String>,

    /// Keep the images of every step (overrides `keep:`).
    #[arg(long, global = true, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true", value_parser = parse_go_bool,
          action = ArgAction::Set)]
    pub keep_all: bool,

    /// Push every step image that is kept at the end of the build (see
    /// `push:` in build.yml), to the registry its name names.
    #[arg(long, global = true, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true", value_parser = parse_go_bool,
          action = ArgAction::Set)]
    pub push: bool,

    /// Write what the build produced (each kept step's image and id, and
    /// for pushed steps the digest and names) to FILE as JSON.
    #[arg(long, global = true, value_name = "FILE")]
    pub metadata_file: Option<std::path::PathBuf>,

    /// An image every step may take cached layers from, pulled first
    /// (repeatable; adds to `cache_from:`).
    #[arg(long, global = true, value_name = "IMAGE", value_parser = parse_reference,
          action = ArgAction::Append)]
    pub cache_from: Vec<String>,

    /// `inline`: BuildKit steps write their cache metadata into their
    /// image, so that a later build can use it with --cache-from.
    #[arg(long, global = true, value_name = "EXPORT", value_parser = ["inline"])]
    pub cache_to: Option<String>,

    /// Keep the artifacts copied to the host.
    #[arg(long, global = true, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true", value_parser = parse_go_bool,
          action = ArgAction::Set)]
    pub keep_artifacts: bool,

    /// Connect to the daemon over TLS; DOCKER_TLS_VERIFY if missing.
    #[arg(long, global = true, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = parse_go_bool, action = ArgAction::Set)]
    pub use_tls: Option<bool>,

    /// Accepted for compatibility: habitus takes artifact modes from the
    /// archive headers and never runs `stat` in the image.
    #[arg(long, global = true, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_value = "true", default_missing_value = "true", value_parser = parse_go_bool,
          action = ArgAction::Set)]
    pub use_stat: bool,

    /// Skip cleanup commands (and their squash).
    #[arg(long, global = true, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true", value_parser = parse_go_bool,
          action = ArgAction::Set)]
    pub no_cleanup: bool,

    /// Force the removal of unwanted images.
    #[arg(long, global = true, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true", value_parser = parse_go_bool,
          action = ArgAction::Set)]
    pub force_rmi: bool,

    /// Don't prune untagged parents when removing unwanted images.
    #[arg(long, global = true, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true", value_parser = parse_go_bool,
          action = ArgAction::Set)]
    pub noprune_rmi: bool,

    /// The OS of the build images (accepted for compatibility).
    #[arg(
        long,
        global = true,
        value_enum,
        ignore_case = true,
        default_value = "debian"
    )]
    pub os: OsType,

    /// Port of the secrets server (0 = any free port).
    #[arg(long, global = true, value_name = "PORT")]
    pub port: Option<u16>,

    /// Address the secrets server binds to (default: the gateway of the
    /// build's own network).
    #[arg(long, global = true, value_name = "ADDR", value_parser = parse_binding)]
    pub binding: Option<Binding>,

    /// Where build networks come from: /28 subnets of this IPv4 CIDR, or
    /// `docker` to let Docker pick from its own pools.
    #[arg(long, global = true, value_name = "CIDR", default_value = crate::netpool::DEFAULT_POOL,
          value_parser = crate::netpool::Pool::parse)]
    pub network_pool: crate::netpool::Pool,

    /// Networks and containers left by a habitus build on another host (a
    /// shared daemon) are removed once older than this (`90s`, `30m`,
    /// `24h`, `7d`).
    #[arg(long, global = true, value_name = "AGE", default_value = "24h",
          value_parser = crate::owner::parse_duration)]
    pub stale_after: std::time::Duration,

    /// Turn the secrets server on or off.
    #[arg(long, global = true, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_missing_value = "true", value_parser = parse_go_bool, action = ArgAction::Set)]
    pub secrets: Option<bool>,

    /// Run `after_build_command`s on the host.
    #[arg(long, global = true, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true", value_parser = parse_go_bool,
          action = ArgAction::Set)]
    pub after_build_commands: bool,

    /// Treat build.yml as untrusted input (a pull request's, in CI; also
    /// HABITUS_UNTRUSTED=1): `_env()` reads only `--env`, `file` secrets
    /// only the work directory and `--secret-dir`, `ssh: true` needs
    /// `--ssh`, `after_build_command` needs `--after-build-commands` and
    /// `push: true` needs `--push`.
    /// Whatever else it asks for is refused before anything is built.
    #[arg(long, global = true, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true", value_parser = parse_go_bool,
          action = ArgAction::Set)]
    pub untrusted: bool,

    /// With --untrusted: a folder `file` secrets may be read from, besides
    /// the work directory (repeatable).
    #[arg(long, global = true, value_name = "DIR", action = ArgAction::Append)]
    pub secret_dir: Vec<PathBuf>,

    /// With --untrusted: let steps with `ssh: true` forward this machine's
    /// SSH agent.
    #[arg(long, global = true, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true", value_parser = parse_go_bool,
          action = ArgAction::Set)]
    pub ssh: bool,

    /// Enabled secret providers, comma separated.
    #[arg(long, global = true, value_name = "LIST", default_value_t = Providers(SecretKind::ALL.to_vec()),
          value_parser = parse_providers)]
    pub sec_providers: Providers,

    /// The most temporary files one squash may write (`20GiB`, `512MiB`,
    /// bytes; also HABITUS_SQUASH_TEMP_LIMIT; default 20GiB). A squash
    /// that would write more stops, naming the layer.
    #[arg(long, global = true, value_name = "SIZE", value_parser = parse_size)]
    pub squash_temp_limit: Option<u64>,

    /// Memory limit for build containers (`512m`, `2GB`, bytes).
    #[arg(long, global = true, value_name = "SIZE", value_parser = parse_memory)]
    pub docker_memory: Option<i64>,

    /// CPUs in which build containers may run (`0-3`, `0,1`).
    #[arg(long, global = true, value_name = "CPUS")]
    pub docker_cpuset_cpus: Option<String>,

    /// CPU shares (relative weight) for build containers.
    #[arg(long, global = true, value_name = "N", default_value_t = 1024)]
    pub docker_cpu_shares: i64,

    /// Require basic authentication on the secrets server (Go Habitus compatibility mode).
    #[arg(long, global = true, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true", value_parser = parse_go_bool,
          action = ArgAction::Set)]
    pub authentication_secret_server: bool,

    /// Password for the secrets server's basic authentication (Go Habitus
    /// compatibility). Visible to every user in `ps`: prefer
    /// --password-secret-server-file or HABITUS_SECRET_SERVER_PASSWORD.
    #[arg(long, global = true, value_name = "PASSWORD", value_parser = parse_password)]
    pub password_secret_server: Option<ArgPassword>,

    /// Read the secrets server's basic-auth password from FILE (one
    /// trailing newline is removed); kept out of `ps`, unlike
    /// --password-secret-server.
    #[arg(
        long,
        global = true,
        value_name = "FILE",
        conflicts_with = "password_secret_server"
    )]
    pub password_secret_server_file: Option<PathBuf>,

    /// User for the secrets server's basic authentication.
    #[arg(long, global = true, value_name = "USER", default_value = "habitus")]
    pub user_secret_server: String,

    /// The builder for steps without `builder:` in build.yml: `legacy` (the
    /// classic builder, as Go Habitus) or `buildkit` (secrets also offered
    /// to `RUN --mount=type=secret,id=NAME`).
    #[arg(
        long,
        global = true,
        value_name = "BUILDER",
        value_enum,
        default_value = "legacy"
    )]
    pub builder: BuilderArg,

    /// Label images with `habitus.build`, `habitus.step` and `habitus.uid`.
    /// Off by default: the classic builder turns each label into an extra
    /// commit per step. Containers are always labelled.
    #[arg(long, global = true, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true", value_parser = parse_go_bool,
          action = ArgAction::Set)]
    pub image_labels: bool,

    /// Don't audit the images of a build that served secrets.
    #[arg(long, global = true, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true", value_parser = parse_go_bool,
          action = ArgAction::Set)]
    pub no_audit: bool,

    /// Also write every build event to stdout as one JSON object per line.
    #[arg(long, global = true, value_name = "BOOL", num_args = 0..=1, require_equals = true,
          default_value = "false", default_missing_value = "true", value_parser = parse_go_bool,
          action = ArgAction::Set)]
    pub json: bool,

    /// Steps built at the same time (default: 4 per CPU, at most 32).
    #[arg(long, short = 'j', global = true, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub jobs: Option<u16>,
}

/// A comma separated list of secret provider types.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Providers(pub Vec<SecretKind>);

/// As given on the command line: `file,env`.
impl std::fmt::Display for Providers {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let names: Vec<&str> = self.0.iter().map(|kind| kind.name()).collect();
        f.write_str(&names.join(","))
    }
}

fn parse_providers(value: &str) -> Result<Providers, String> {
    let mut out = Vec::new();
    for name in value.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let Some(kind) = SecretKind::parse(name) else {
            return Err(format!(
                "unknown secret provider `{name}` (known: {})",
                SecretKind::names().join(", ")
            ));
        };
        if !out.contains(&kind) {
            out.push(kind);
        }
    }
    Ok(Providers(out))
}

/// `--binding`: an IP address; empty means none (as Go Habitus's default).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding(pub Option<std::net::IpAddr>);

fn parse_binding(value: &str) -> Result<Binding, String> {
    if value.is_empty() {
        return Ok(Binding(None));
    }
    value
        .parse()
        .map(|ip| Binding(Some(ip)))
        .map_err(|_| format!("`{value}` is not an IP address"))
}

/// Builders accepted by `--builder`; the configuration maps them to
/// [`crate::model::Builder`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum BuilderArg {
    /// The classic builder (`docker build` without BuildKit), as Go Habitus.
    Legacy,
    /// The daemon's BuildKit, with a session serving secret mounts.
    #[value(name = "buildkit")]
    BuildKit,
}

/// Go's `strconv.ParseBool`.
fn parse_go_bool(value: &str) -> Result<bool, String> {
    match value {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Ok(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Ok(false),
        _ => Err(format!("`{value}` is not a boolean (use true or false)")),
    }
}

/// `NAME=VALUE`, split on the first `=` only: values may hold `=` and newlines.
fn parse_key_value(value: &str) -> Result<(String, String), String> {
    match value.split_once('=') {
        Some((key, val)) if !key.is_empty() => Ok((key.to_string(), val.to_string())),
        _ => Err(format!("`{value}` is not NAME=VALUE")),
    }
}

fn parse_reference(value: &str) -> Result<String, String> {
    match crate::model::pull_reference_problem(value) {
        None => Ok(value.to_string()),
        Some(problem) => Err(format!(
            "`{value}` is not an image name: {problem} (write `[registry/]repository[:tag]` or `…@sha256:…`)"
        )),
    }
}

fn parse_uid(value: &str) -> Result<String, String> {
    let ok = !value.is_empty()
        && value.len() <= 64
        && value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if ok {
        Ok(value.to_ascii_lowercase())
    } else {
        Err(format!(
            "`{value}` is not a valid uid (use up to 64 letters, digits, `-`, `_` or `.`)"
        ))
    }
}

/// A memory size as Docker's `RAMInBytes` reads it: a number (decimals
/// allowed) and an optional binary unit `b`, `k`, `m`, `g`, `t`, `p`, with an
/// optional `b`/`ib` suffix, case-insensitive: `512m`, `2GB`, `1.5g`, `1024`.
pub fn parse_memory(value: &str) -> Result<i64, String> {
    let bad =
        || format!("`{value}` is not a memory size (examples: `512m`, `2g`, `2GB`, `1048576`)");
    let s = value.trim();
    let split = s
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(s.len());
    let (number, unit) = s.split_at(split);
    if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
        return Err(bad());
    }
    let number: f64 = number.parse().map_err(|_| bad())?;
    let unit = unit.trim_start().to_ascii_lowercase();
    let unit = unit
        .strip_suffix("ib")
        .or_else(|| unit.strip_suffix('b'))
        .unwrap_or(&unit);
    let shift = match unit {
        "" => 0,
        "k" => 10,
        "m" => 20,
        "g" => 30,
        "t" => 40,
        "p" => 50,
        _ => return Err(bad()),
    };
    let bytes = number * 2f64.powi(shift);
    if !bytes.is_finite() || bytes < 1.0 || bytes > i64::MAX as f64 {
        return Err(bad());
    }
    Ok(bytes as i64)
}

/// A password given on the command line, zeroed on drop and never
/// printed (`Debug` shows `***`).
#[derive(Clone)]
pub struct ArgPassword(zeroize::Zeroizing<String>);

impl ArgPassword {
    /// The password.
    ///
    /// Use: the configuration hands it to the secrets server's basic
    /// authentication, the only thing it is for.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for ArgPassword {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("ArgPassword(***)")
    }
}

fn parse_password(value: &str) -> Result<ArgPassword, String> {
    Ok(ArgPassword(zeroize::Zeroizing::new(value.to_owned())))
}

/// A size in bytes, as [`parse_memory`] reads it (`512MiB`, `20GiB`, `2g`).
pub fn parse_size(value: &str) -> Result<u64, String> {
    parse_memory(value).map(|bytes| bytes as u64).map_err(|_| {
        format!("`{value}` is not a size (examples: `512MiB`, `20GiB`, `2g`, `1048576`)")
    })
}

/// Rewrites Go-style flags into the form clap reads: `-host=x` →
/// `--host=x`, `-keep-all` → `--keep-all`, `-f=x` → `-f x`. Values that
/// follow a flag taking one (`--env -x=1`) and everything after `--` are
/// left alone.
pub fn normalize_go_flags<I, T>(args: I) -> Vec<OsString>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    let mut command = Cli::command();
    command.build();
    let mut longs: Vec<(String, bool)> = Vec::new();
    let mut shorts: Vec<(char, bool)> = Vec::new();
    let mut collect = |cmd: &clap::Command| {
        for arg in cmd.get_arguments() {
            let takes_value = arg
                .get_num_args()
                .map(|range| range.min_values() > 0)
                .unwrap_or(false);
            if let Some(long) = arg.get_long() {
                longs.push((long.to_string(), takes_value));
            }
            if let Some(short) = arg.get_short() {
                shorts.push((short, takes_value));
            }
        }
    };
    collect(&command);
    for sub in command.get_subcommands() {
        collect(sub);
    }
    longs.push(("help".into(), false));
    longs.push(("version".into(), false));

    let mut out = Vec::new();
    let mut iter = args.into_iter().map(Into::into);
    if let Some(program) = iter.next() {
        out.push(program);
    }
    let mut skip_value = false;
    let mut rest_verbatim = false;
    for arg in iter {
        if rest_verbatim || skip_value {
            skip_value = false;
            out.push(arg);
            continue;
        }
        let Some(text) = arg.to_str().map(str::to_string) else {
            out.push(arg);
            continue;
        };
        if text == "--" {
            rest_verbatim = true;
            out.push(arg);
            continue;
        }
        let (dashes, body) = if let Some(body) = text.strip_prefix("--") {
            (2, body)
        } else if let Some(body) = text.strip_prefix('-') {
            (1, body)
        } else {
            out.push(arg);
            continue;
        };
        let (name, value) = match body.split_once('=') {
            Some((n, v)) => (n, Some(v)),
            None => (body, None),
        };
        if let Some(&(_, takes_value)) = longs.iter().find(|(l, _)| l == name) {
            if value.is_none() && takes_value {
                skip_value = true;
            }
            out.push(OsString::from(format!("--{body}")));
            continue;
        }
        let mut chars = name.chars();
        if let (1, Some(c), None) = (dashes, chars.next(), chars.next()) {
            if let Some(&(_, takes_value)) = shorts.iter().find(|(s, _)| *s == c) {
                out.push(OsString::from(format!("-{c}")));
                match value {
                    Some(v) => out.push(OsString::from(v)),
                    None if takes_value => skip_value = true,
                    None => {}
                }
                continue;
            }
        }
        // Go reads `-word` as the long flag `word`; an unknown one becomes
        // `--word` so that the error names it whole. `-j4` (a short flag
        // with its value attached) stays as it is.
        let attached_value = dashes == 1
            && name
                .chars()
                .next()
                .is_some_and(|c| shorts.iter().any(|&(s, takes)| s == c && takes));
        if dashes == 1 && name.len() > 1 && !attached_value {
            out.push(OsString::from(format!("--{body}")));
            continue;
        }
        out.push(arg);
    }
    out
}

/// Parses a full command line (program name first), Go-style flags included.
pub fn parse<I, T>(args: I) -> Result<Cli, clap::Error>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString>,
{
    Cli::try_parse_from(normalize_go_flags(args))
}

#[cfg(test)]
mod tests {
    use super::{normalize_go_flags, parse, parse_memory};

    fn norm(args: &[&str]) -> Vec<String> {
        normalize_go_flags(args.iter().copied())
            .into_iter()
            .map(|s| s.into_string().unwrap())
            .collect()
    }

    #[test]
    fn go_flags_become_long_flags() {
        assert_eq!(
            norm(&[
                "habitus",
                "-host=unix:///x.sock",
                "-keep-all",
                "-f=b.yml",
                "-d",
                "-x"
            ]),
            [
                "habitus",
                "--host=unix:///x.sock",
                "--keep-all",
                "-f",
                "b.yml",
                "-d",
                "-x"
            ]
        );
    }

    #[test]
    fn values_after_value_flags_are_untouched() {
        assert_eq!(
            norm(&["habitus", "-env", "-keep-all=1", "--", "-uid=x"]),
            ["habitus", "--env", "-keep-all=1", "--", "-uid=x"]
        );
    }

    #[test]
    fn memory_sizes() {
        assert_eq!(parse_memory("512m"), Ok(512 << 20));
        assert_eq!(parse_memory("2GB"), Ok(2 << 30));
        assert_eq!(parse_memory("2GiB"), Ok(2 << 30));
        assert_eq!(parse_memory("1.5k"), Ok(1536));
        assert_eq!(parse_memory("1048576"), Ok(1 << 20));
        assert_eq!(parse_memory("4 m"), Ok(4 << 20));
        assert_eq!(
            parse_memory("lots").unwrap_err(),
            "`lots` is not a memory size (examples: `512m`, `2g`, `2GB`, `1048576`)"
        );
        assert!(parse_memory("").is_err());
        assert!(parse_memory("0").is_err());
        assert!(parse_memory("12x").is_err());
        assert!(parse_memory("9999999p").is_err());
    }

    #[test]
    fn blog_post_line_parses() {
        let cli = parse([
            "habitus",
            "--use-tls=false",
            "-host=unix:///var/run/docker.sock",
            "-secrets=false",
            "-keep-all",
        ])
        .unwrap();
        assert_eq!(cli.flags.use_tls, Some(false));
        assert_eq!(
            cli.flags.host.as_deref(),
            Some("unix:///var/run/docker.sock")
        );
        assert_eq!(cli.flags.secrets, Some(false));
        assert!(cli.flags.keep_all);
        assert!(cli.command.is_none());
    }

    #[test]
    fn registry_flags_parse_in_both_syntaxes() {
        let cli = parse([
            "habitus",
            "-push",
            "-metadata-file=out/meta.json",
            "--cache-from",
            "r.example/app:latest",
            "-cache-from=r.example/base:1",
            "--cache-to",
            "inline",
        ])
        .unwrap();
        assert!(cli.flags.push);
        assert_eq!(
            cli.flags.metadata_file.as_deref(),
            Some(std::path::Path::new("out/meta.json"))
        );
        assert_eq!(
            cli.flags.cache_from,
            ["r.example/app:latest", "r.example/base:1"]
        );
        assert_eq!(cli.flags.cache_to.as_deref(), Some("inline"));
        let err = parse(["habitus", "--cache-from", "Team/App"])
            .unwrap_err()
            .to_string();
        assert!(err.contains("the repository must be lowercase"), "{err}");
        assert!(parse(["habitus", "--cache-to", "registry"]).is_err());
    }
}
