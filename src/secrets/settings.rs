//! The secrets settings of a build or of `habitus serve`, as the
//! configuration resolves them from the command line.

use std::net::IpAddr;

use crate::model::SecretKind;

use super::server::BasicAuth;

/// The secrets settings of the command line.
#[derive(Debug, Clone)]
pub struct Settings {
    /// `--secrets`: `None` when not given.
    pub enabled: Option<bool>,
    /// `--binding`.
    pub binding: Option<IpAddr>,
    /// `--port` (0 = any free port).
    pub port: u16,
    /// `--authentication-secret-server` with its user and password.
    pub basic_auth: Option<BasicAuth>,
    /// `--sec-providers`.
    pub providers: Vec<SecretKind>,
    /// `--network-pool`.
    pub network_pool: crate::netpool::Pool,
}

/// Two settings are equal when all their fields are; passwords are
/// compared in constant time.
impl PartialEq for Settings {
    fn eq(&self, other: &Settings) -> bool {
        use subtle::ConstantTimeEq;
        let auth = match (&self.basic_auth, &other.basic_auth) {
            (None, None) => true,
            (Some(a), Some(b)) => {
                a.user() == b.user()
                    && bool::from(
                        a.expose_password()
                            .as_bytes()
                            .ct_eq(b.expose_password().as_bytes()),
                    )
            }
            _ => false,
        };
        auth && self.enabled == other.enabled
            && self.binding == other.binding
            && self.port == other.port
            && self.providers == other.providers
            && self.network_pool == other.network_pool
    }
}

/// Go Habitus's password for basic-auth compatibility mode, the default
/// of `--password-secret-server`.
pub const DEFAULT_PASSWORD: &str = "admin";

/// The warning for basic-auth compatibility mode with the default (or an
/// empty) password: anyone who reaches the server can fetch every
/// secret with well-known credentials. `None` without the mode or with
/// another password. The password itself is never part of the text.
pub fn basic_auth_warning(settings: &Settings) -> Option<String> {
    let basic = settings.basic_auth.as_ref()?;
    let password = basic.expose_password();
    (password.is_empty() || password == DEFAULT_PASSWORD).then(|| {
        format!(
            "--authentication-secret-server without a password: the secrets server serves every secret to the default, guessable credentials of Go Habitus (user `{}`); anyone who can reach it can fetch them. Give it a strong password with --password-secret-server-file FILE or HABITUS_SECRET_SERVER_PASSWORD",
            basic.user()
        )
    })
}
