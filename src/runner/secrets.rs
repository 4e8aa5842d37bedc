//! The secrets side of one build: deciding whether the server runs, the
//! build's own bridge network, the server bound to its gateway, one token
//! per step, the build arguments that carry the connection settings, and
//! the teardown of all of it.
//!
//! The runner calls [`BuildSession::start`] before the first step,
//! [`BuildSession::grant`] around each step's build, and
//! [`BuildSession::stop`] on every way out.

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::net::IpAddr;
use std::time::Duration;

use crate::engine::{Engine, EngineError};
use crate::manifest::{Manifest, Step};
use crate::model::{Builder, LABEL_BUILD, LABEL_UID};
use crate::progress::Severity;
use crate::secrets::Settings;

use crate::secrets::provider::{self, ProviderError, SecretStore};
use crate::secrets::secret::Token;
use crate::secrets::server::{
    self, AccessLog, BasicAuth, ServerError, ServerHandle, ServerOptions, Tokens,
};

/// Errors of the secrets side of a build.
#[derive(Debug, thiserror::Error)]
pub enum SecretsError {
    /// A declared secret could not be resolved.
    #[error(transparent)]
    Provider(#[from] ProviderError),
    /// `--network` without `--binding` while the server is on.
    #[error("--network `{network}` and the secrets server: give --binding too (an address of this host that containers on `{network}` can reach), or leave --network out and habitus creates the build's own network")]
    NetworkWithoutBinding {
        /// The user's network.
        network: String,
    },
    /// The build's network could not be created or inspected.
    #[error("cannot create network `{network}` for the secrets server: {source}")]
    Network {
        /// `habitus-<build id>`.
        network: String,
        /// The engine's error.
        source: EngineError,
    },
    /// The network has no usable gateway address.
    #[error(
        "network `{network}` has no gateway address (`{gateway}`) to bind the secrets server to"
    )]
    Gateway {
        /// The network.
        network: String,
        /// What the daemon reported.
        gateway: String,
    },
    /// The build network's gateway is not an address of this host: the
    /// daemon runs elsewhere, so the server cannot listen there.
    #[error("the build network's gateway `{gateway}` is not an address of this host, so the secrets server cannot listen on it: the Docker daemon runs elsewhere (a remote daemon, such as GitLab CI's `docker:dind` service over tcp://…:2376, or a daemon in another network namespace)")]
    GatewayNotLocal {
        /// The gateway address.
        gateway: IpAddr,
    },
    /// Every subnet of `--network-pool` is taken.
    #[error("cannot create network `{network}` for the secrets server: docker: no free /{prefix} left in --network-pool {pool} ({total} subnets; {taken} networks and routes overlap it)")]
    PoolExhausted {
        /// `habitus-<build id>`.
        network: String,
        /// The subnet size.
        prefix: u8,
        /// `--network-pool`.
        pool: String,
        /// Subnets in the pool.
        total: usize,
        /// Daemon networks and host routes that overlap it.
        taken: usize,
    },
    /// The server could not start.
    #[error(transparent)]
    Server(#[from] ServerError),
}

impl SecretsError {
    /// What the user can do about it, when habitus knows.
    pub fn hint(&self) -> Option<String> {
        match self {
            SecretsError::GatewayNotLocal { .. } => Some("give --binding ADDR, an address of this host that the daemon's containers reach (in a GitLab CI job: the job container's own address, `--binding $(hostname -i)`)".into()),
            SecretsError::PoolExhausted { .. } => Some("`habitus prune` removes what killed builds left; or give a larger --network-pool".into()),
            SecretsError::Network { source, .. } => source.hint(),
            _ => None,
        }
    }
}

/// What the runner needs to know before a build: the resolved secrets
/// (`None` when no step gets any), whether the TLS server runs, and what
/// to tell the user.
#[derive(Debug)]
pub struct Prepared {
    pub store: Option<SecretStore>,
    /// The TLS secrets server runs (steps of the classic builder fetch).
    pub server: bool,
    /// Warnings and notices, one line each.
    pub notices: Vec<(Severity, String)>,
}

/// Decides how the secrets of `manifest` reach its steps and, if any step
/// gets them, resolves every secret now, before any step.
///
/// Steps that build with BuildKit (`builder:`, else `default_builder`)
/// mount their secrets; no server is needed for them. For the others:
///
/// - No step declares secrets: the server stays off (`--secrets` alone
///   does not start an empty server).
/// - A step declares secrets and `--secrets` is not given: the server is
///   turned on, with a notice.
/// - `--secrets=false` given explicitly: the server stays off, with a
///   warning naming the steps whose fetches will fail.
/// - `--secrets` given: the server runs, also for BuildKit steps.
pub fn prepare(
    manifest: &Manifest,
    settings: &Settings,
    network: Option<&str>,
    default_builder: Builder,
    env: &dyn Fn(&str) -> Option<OsString>,
) -> Result<Prepared, SecretsError> {
    let (mounting, fetching): (Vec<&Step>, Vec<&Step>) = manifest
        .steps
        .iter()
        .filter(|s| !s.secrets.is_empty())
        .partition(|s| s.builder.unwrap_or(default_builder) == Builder::BuildKit);
    let list = |steps: &[&Step]| {
        steps
            .iter()
            .map(|s| format!("`{}`", s.label))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let mut notices = Vec::new();
    if mounting.is_empty() && fetching.is_empty() {
        if settings.enabled == Some(true) {
            notices.push((
                Severity::Info,
                "--secrets: no step declares secrets; the secrets server is not started".into(),
            ));
        }
        return Ok(Prepared {
            store: None,
            server: false,
            notices,
        });
    }
    let server = server_wanted(settings.enabled, &list(&fetching), &mut notices);
    if server {
        if let Some(warning) = crate::secrets::basic_auth_warning(settings) {
            notices.push((Severity::Warning, warning));
        }
    }
    if !mounting.is_empty() {
        notices.push((
            Severity::Info,
            format!(
                "step(s) {} build with BuildKit: their secrets are offered to `RUN --mount=type=secret,id=NAME`",
                list(&mounting)
            ),
        ));
    }
    if !server && mounting.is_empty() {
        return Ok(Prepared {
            store: None,
            server,
            notices,
        });
    }
    if let (true, Some(network), None) = (server, network, settings.binding) {
        return Err(SecretsError::NetworkWithoutBinding {
            network: network.to_string(),
        });
    }
    let store = provider::resolve(manifest, &settings.providers, env)?;
    Ok(Prepared {
        store: Some(store),
        server,
        notices,
    })
}

/// Whether the TLS server runs for the steps that fetch secrets (`listed`,
/// empty when none does), given `--secrets`; says why in `notices`.
fn server_wanted(
    enabled: Option<bool>,
    listed: &str,
    notices: &mut Vec<(Severity, String)>,
) -> bool {
    match enabled {
        Some(false) => {
            if !listed.is_empty() {
                notices.push((Severity::Warning, format!(
                    "step(s) {listed} declare secrets, but --secrets=false: the secrets server is off and their fetches will fail"
                )));
            }
            false
        }
        None if listed.is_empty() => false,
        None => {
            notices.push((Severity::Info, format!(
                "step(s) {listed} declare secrets: starting the secrets server (--secrets=false turns it off)"
            )));
            true
        }
        Some(true) => true,
    }
}

/// The running secrets side of one build.
pub struct BuildSession {
    server: ServerHandle,
    tokens: Tokens,
    /// The network habitus created (removed on stop); `None` with `--network`.
    created_network: Option<String>,
    /// What every step builds with (`networkmode`).
    network_mode: String,
    basic_auth: Option<BasicAuth>,
}

impl std::fmt::Debug for BuildSession {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BuildSession")
            .field("server", &self.server)
            .field("network_mode", &self.network_mode)
            .finish_non_exhaustive()
    }
}

/// What the runner passes to [`BuildSession::start`].
#[derive(Debug)]
pub struct SessionOptions<'a> {
    pub build_id: &'a str,
    pub uid: Option<&'a str>,
    /// `--network`, if given.
    pub user_network: Option<&'a str>,
    pub settings: &'a Settings,
    pub store: SecretStore,
    /// Ownership labels for the network (see [`crate::owner`]).
    pub owner: BTreeMap<String, String>,
}

impl BuildSession {
    /// Creates the build's network `habitus-<build id>` (unless the user
    /// gave `--network`), starts the server on its gateway (or on
    /// `--binding`) and port, and returns the session. On failure nothing
    /// is left behind.
    pub async fn start(
        engine: &dyn Engine,
        options: SessionOptions<'_>,
        log: AccessLog,
    ) -> Result<BuildSession, SecretsError> {
        let (created_network, network_mode, gateway) = match options.user_network {
            Some(network) => (None, network.to_string(), None),
            None => {
                let name = network_name(options.build_id);
                let mut labels = options.owner.clone();
                labels.insert(LABEL_BUILD.to_string(), options.build_id.to_string());
                if let Some(uid) = options.uid {
                    labels.insert(LABEL_UID.to_string(), uid.to_string());
                }
                let gateway =
                    create_network(engine, &name, &labels, options.settings.network_pool).await?;
                let parsed = match gateway.split('/').next().unwrap_or("").parse::<IpAddr>() {
                    Ok(ip) => ip,
                    Err(_) => {
                        let _ = engine.remove_network(&name).await;
                        return Err(SecretsError::Gateway {
                            network: name,
                            gateway,
                        });
                    }
                };
                (Some(name.clone()), name, Some(parsed))
            }
        };
        let bind = options
            .settings
            .binding
            .or(gateway)
            .expect("prepare() refuses --network without --binding");
        let mut server_options = ServerOptions::new(bind, options.settings.port);
        server_options.basic_auth = options.settings.basic_auth.clone();
        server_options.log = log;
        let server = match server::start(server_options, options.store).await {
            Ok(server) => server,
            Err(e) => {
                if let Some(name) = &created_network {
                    let _ = engine.remove_network(name).await;
                }
                return Err(match (&e, gateway, options.settings.binding) {
                    (ServerError::Bind { source, .. }, Some(gateway), None)
                        if source.kind() == std::io::ErrorKind::AddrNotAvailable =>
                    {
                        SecretsError::GatewayNotLocal { gateway }
                    }
                    _ => e.into(),
                });
            }
        };
        Ok(BuildSession {
            tokens: server.tokens(),
            server,
            created_network,
            network_mode,
            basic_auth: options.settings.basic_auth.clone(),
        })
    }

    /// `https://host:port`.
    pub fn url(&self) -> String {
        self.server.url()
    }

    /// The network every step builds on.
    pub fn network_mode(&self) -> &str {
        &self.network_mode
    }

    /// The build arguments of step `label` (none if it declares no
    /// secrets) and the token behind them, revoked when the grant drops.
    pub fn grant(&self, label: &str, declares_secrets: bool) -> StepGrant {
        if !declares_secrets {
            return StepGrant {
                build_args: BTreeMap::new(),
                token: None,
            };
        }
        let token = self.tokens.issue(label);
        let addr = self.server.addr();
        let host = match addr.ip() {
            IpAddr::V6(ip) => format!("[{ip}]"),
            IpAddr::V4(ip) => ip.to_string(),
        };
        let mut args = BTreeMap::new();
        args.insert("HABITUS_HOST".to_string(), host.clone());
        args.insert("HABITUS_PORT".to_string(), addr.port().to_string());
        args.insert("HABITUS_URL".to_string(), self.server.url());
        args.insert("HABITUS_CA".to_string(), self.server.ca_pem().to_string());
        args.insert("HABITUS_TOKEN".to_string(), token.expose().to_string());
        if let Some(basic) = &self.basic_auth {
            // Go Habitus's own build arguments, for Dockerfiles written for it.
            args.insert("habitus_host".to_string(), host);
            args.insert("habitus_port".to_string(), addr.port().to_string());
            args.insert("habitus_user".to_string(), basic.user().to_string());
            args.insert(
                "habitus_password".to_string(),
                basic.expose_password().to_string(),
            );
        }
        StepGrant {
            build_args: args,
            token: Some((token, self.tokens.clone())),
        }
    }

    /// Stops the server (the port refuses connections from here on) and
    /// removes the build's network, retrying while the daemon still
    /// detaches the last build container from it.
    pub async fn stop(&self, engine: &dyn Engine) -> Result<(), EngineError> {
        self.server.shutdown().await;
        let Some(name) = &self.created_network else {
            return Ok(());
        };
        let mut delay = Duration::from_millis(100);
        let mut tries = 0;
        loop {
            match engine.remove_network(name).await {
                Ok(()) => return Ok(()),
                Err(e) if tries >= 12 => return Err(e),
                Err(_) => {
                    tries += 1;
                    tokio::time::sleep(delay).await;
                    delay = (delay * 2).min(Duration::from_secs(2));
                }
            }
        }
    }

    /// The created network's name, if habitus created one.
    pub fn created_network(&self) -> Option<&str> {
        self.created_network.as_deref()
    }
}

/// `habitus-<build id>`.
/// Creates the build network `name`: on a free /28 of `pool` (skipping
/// the daemon's networks and this host's routes, and moving on when
/// another habitus took the same subnet meanwhile), or where Docker
/// chooses for [`Pool::Docker`](crate::netpool::Pool). Returns the gateway.
async fn create_network(
    engine: &dyn Engine,
    name: &str,
    labels: &BTreeMap<String, String>,
    pool: crate::netpool::Pool,
) -> Result<String, SecretsError> {
    use crate::netpool::{host_routes, Net, Pool};
    let failed = |source| SecretsError::Network {
        network: name.to_string(),
        source,
    };
    if pool == Pool::Docker {
        return engine
            .create_network(name, labels, None)
            .await
            .map_err(failed);
    }
    let mut taken: Vec<Net> = engine
        .network_subnets()
        .await
        .map_err(failed)?
        .iter()
        .filter_map(|s| Net::parse(s).ok())
        .collect();
    taken.extend(host_routes());
    let candidates = pool.candidates(rand::random::<u64>());
    let total = candidates.len();
    let mut races = 0;
    for subnet in candidates {
        if taken.iter().any(|t| t.overlaps(subnet)) {
            continue;
        }
        match engine
            .create_network(name, labels, Some(&subnet.to_string()))
            .await
        {
            Ok(gateway) => return Ok(gateway),
            // Another build took it since the list: try the next one.
            Err(e) if races < 32 && e.to_string().contains("overlap") => races += 1,
            Err(e) => return Err(failed(e)),
        }
    }
    Err(SecretsError::PoolExhausted {
        network: name.to_string(),
        prefix: crate::netpool::PREFIX,
        pool: match pool {
            Pool::Subnets(net) => net.to_string(),
            Pool::Docker => "docker".into(),
        },
        total,
        taken: taken.len(),
    })
}

pub fn network_name(build_id: &str) -> String {
    format!("habitus-{build_id}")
}

/// One step's access: its build arguments, and its token, which is revoked
/// when this value is dropped (the step ended, failed or was cancelled).
pub struct StepGrant {
    /// `HABITUS_HOST`, `HABITUS_PORT`, `HABITUS_URL`, `HABITUS_CA`,
    /// `HABITUS_TOKEN` (and Go Habitus's lowercase ones in basic-auth mode).
    pub build_args: BTreeMap<String, String>,
    token: Option<(Token, Tokens)>,
}

impl std::fmt::Debug for StepGrant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StepGrant")
            .field("build_args", &self.build_args.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Drop for StepGrant {
    fn drop(&mut self) {
        if let Some((token, tokens)) = &self.token {
            tokens.revoke(token);
        }
        for value in self.build_args.values_mut() {
            zeroize::Zeroize::zeroize(value);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::ffi::OsString;

    use super::prepare;
    use crate::manifest::{Manifest, SchemaVersion, SecretSpec, Step};
    use crate::model::{Builder, SecretKind};
    use crate::progress::Severity;
    use crate::secrets::server::BasicAuth;
    use crate::secrets::{basic_auth_warning, Settings};

    fn step(label: &str, builder: Option<Builder>) -> Step {
        Step {
            secrets: BTreeMap::from([(
                "tok".to_string(),
                SecretSpec {
                    kind: SecretKind::Env,
                    value: "TOK".into(),
                },
            )]),
            builder,
            ..Step::for_test(label)
        }
    }

    fn manifest(steps: Vec<Step>) -> Manifest {
        Manifest {
            file: "build.yml".into(),
            workdir: "/nonexistent".into(),
            version: SchemaVersion::V20160314,
            steps,
        }
    }

    fn settings(enabled: Option<bool>) -> Settings {
        Settings {
            enabled,
            binding: None,
            port: 0,
            basic_auth: None,
            providers: SecretKind::ALL.to_vec(),
            network_pool: crate::netpool::Pool::default(),
        }
    }

    fn env(name: &str) -> Option<OsString> {
        (name == "HABITUS_TOK").then(|| "token-value".into())
    }

    #[test]
    fn buildkit_steps_mount_without_a_server_unless_asked() {
        let m = manifest(vec![step("a", Some(Builder::BuildKit))]);
        let p = prepare(&m, &settings(None), None, Builder::Legacy, &env).unwrap();
        assert!(p.store.is_some());
        assert!(!p.server);
        assert!(p.notices[0].1.contains("`a` build with BuildKit"));
        let p = prepare(&m, &settings(Some(true)), None, Builder::Legacy, &env).unwrap();
        assert!(p.server);
        // --secrets=false concerns the server only: mounts still work.
        let p = prepare(&m, &settings(Some(false)), None, Builder::Legacy, &env).unwrap();
        assert!(p.store.is_some() && !p.server);
        assert!(p.notices.iter().all(|(s, _)| *s != Severity::Warning));
    }

    #[test]
    fn a_classic_step_with_secrets_starts_the_server_also_for_a_mixed_build() {
        let m = manifest(vec![step("a", None), step("b", Some(Builder::BuildKit))]);
        let p = prepare(&m, &settings(None), None, Builder::Legacy, &env).unwrap();
        assert!(p.server && p.store.is_some());
        let p = prepare(&m, &settings(Some(false)), None, Builder::Legacy, &env).unwrap();
        assert!(!p.server);
        assert!(p
            .notices
            .iter()
            .any(|(s, n)| *s == Severity::Warning && n.contains("`a`") && !n.contains("`b`")));
        // --builder buildkit: both mount.
        let p = prepare(&m, &settings(None), None, Builder::BuildKit, &env).unwrap();
        assert!(!p.server && p.store.is_some());
    }

    #[test]
    fn basic_auth_with_the_default_password_is_warned_about_without_showing_it() {
        let with = |password: &str| Settings {
            basic_auth: Some(BasicAuth::new("habitus", password)),
            ..settings(None)
        };
        let expected = "--authentication-secret-server without a password: the secrets server serves every secret to the default, guessable credentials of Go Habitus (user `habitus`); anyone who can reach it can fetch them. Give it a strong password with --password-secret-server-file FILE or HABITUS_SECRET_SERVER_PASSWORD";
        assert_eq!(
            basic_auth_warning(&with("admin")).as_deref(),
            Some(expected)
        );
        assert_eq!(basic_auth_warning(&with("")).as_deref(), Some(expected));
        assert_eq!(basic_auth_warning(&with("Zq8-long-and-random")), None);
        assert_eq!(basic_auth_warning(&settings(None)), None);
        // In a build, the warning comes with the server.
        let m = manifest(vec![step("a", None)]);
        let p = prepare(&m, &with("admin"), None, Builder::Legacy, &env).unwrap();
        assert!(p.server);
        assert!(p
            .notices
            .contains(&(Severity::Warning, expected.to_string())));
        let p = prepare(
            &m,
            &with("Zq8-long-and-random"),
            None,
            Builder::Legacy,
            &env,
        )
        .unwrap();
        assert!(p.notices.iter().all(|(s, _)| *s != Severity::Warning));
    }
}
