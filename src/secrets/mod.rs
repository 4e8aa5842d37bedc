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
pub use settings::{basic_auth_warning, Settings};

/// Decodes standard base64 with or without padding, as HTTP Basic
/// credentials and `auth` entries of `~/.docker/config.json` come; `None`
/// if malformed.
pub(crate) fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
    use base64::Engine as _;
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    LENIENT.decode(text).ok()
}
