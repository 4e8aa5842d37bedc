//! Secrets: the only code in habitus that holds secret values.
//!
//! - [`provider`] resolves the `secrets:` of build.yml (files, `HABITUS_*`
//!   variables) into a [`provider::SecretStore`] before the build starts.
//! - [`secret`] holds values and tokens in buffers zeroed on drop.
//! - [`tls`] makes the build's ephemeral CA and server certificate.
//! - [`server`] serves secrets over HTTPS to the steps that declare them.
//! - `settings` holds the secrets flags as the configuration resolved
//!   them.
//! - Build output is redacted by [`crate::progress`], which owns the
//!   build's redactor.
//!
//! See the "Secrets protocol" of the README and SECURITY.md for the trust
//! model.

pub mod provider;
pub mod secret;
pub(crate) mod serve;
pub mod server;
mod settings;
pub mod tls;

pub use provider::{SecretKey, SecretStore};
pub use secret::{Secret, Token};
pub use server::{start, ServerHandle, ServerOptions};
pub use settings::{basic_auth_warning, Settings, DEFAULT_PASSWORD};
