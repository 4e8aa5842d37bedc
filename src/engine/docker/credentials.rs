//! Registry credentials from the docker CLI's `config.json`, sent with
//! builds so that the daemon can pull `FROM` images from private
//! registries.

use std::collections::HashMap;
use std::path::PathBuf;

use base64::engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig};
use base64::Engine as _;
use bollard::auth::DockerCredentials;

use super::home_dir;

/// Reads registry credentials from `$DOCKER_CONFIG/config.json` or
/// `~/.docker/config.json`. Best effort: a missing or unreadable file means
/// no credentials. Credential helpers (`credsStore`) are not consulted.
pub(super) fn docker_config_credentials() -> HashMap<String, DockerCredentials> {
    let dir = match std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => match home_dir() {
            Some(home) => home.join(".docker"),
            None => return HashMap::new(),
        },
    };
    std::fs::read_to_string(dir.join("config.json"))
        .map(|text| parse_docker_config(&text))
        .unwrap_or_default()
}

/// The `auths` section of a Docker `config.json`: registry → credentials,
/// with `auth` (base64 of `user:password`) split into user and password.
pub(super) fn parse_docker_config(text: &str) -> HashMap<String, DockerCredentials> {
    #[derive(serde::Deserialize)]
    struct Config {
        #[serde(default)]
        auths: HashMap<String, Entry>,
    }
    #[derive(serde::Deserialize)]
    struct Entry {
        auth: Option<String>,
        username: Option<String>,
        password: Option<String>,
        email: Option<String>,
        identitytoken: Option<String>,
    }
    let Ok(config) = serde_json::from_str::<Config>(text) else {
        return HashMap::new();
    };
    config
        .auths
        .into_iter()
        .map(|(registry, entry)| {
            let (mut username, mut password) = (entry.username, entry.password);
            if let Some(decoded) = entry
                .auth
                .as_deref()
                .and_then(|text| base64_decode(text.trim().as_bytes()))
                .and_then(|raw| String::from_utf8(raw).ok())
            {
                if let Some((user, pass)) = decoded.split_once(':') {
                    username = Some(user.to_string());
                    password = Some(pass.to_string());
                }
            }
            let creds = DockerCredentials {
                username,
                password,
                email: entry.email,
                serveraddress: Some(registry.clone()),
                identitytoken: entry.identitytoken,
                ..Default::default()
            };
            (registry, creds)
        })
        .collect()
}

/// Decodes standard base64 with or without padding, as `auth` entries of
/// `config.json` come; `None` if malformed.
fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
    const LENIENT: GeneralPurpose = GeneralPurpose::new(
        &base64::alphabet::STANDARD,
        GeneralPurposeConfig::new()
            .with_decode_padding_mode(DecodePaddingMode::Indifferent)
            .with_decode_allow_trailing_bits(true),
    );
    LENIENT.decode(text).ok()
}

#[cfg(test)]
mod tests {
    use super::{base64_decode, parse_docker_config};

    #[test]
    fn base64_decodes_with_and_without_padding() {
        let decode = |t: &str| base64_decode(t.as_bytes());
        assert_eq!(decode("dXNlcjpwYXNz").unwrap(), b"user:pass");
        assert_eq!(decode("YQ==").unwrap(), b"a");
        assert_eq!(decode("YWI").unwrap(), b"ab");
        assert!(decode("a*b").is_none());
    }

    #[test]
    fn docker_config_auths_become_credentials() {
        let creds = parse_docker_config(
            r#"{"auths":{"registry.example.com":{"auth":"dXNlcjpwYTpzcw=="},"other.io":{}},"credsStore":"desktop"}"#,
        );
        let reg = &creds["registry.example.com"];
        assert_eq!(reg.username.as_deref(), Some("user"));
        assert_eq!(reg.password.as_deref(), Some("pa:ss"));
        assert_eq!(reg.serveraddress.as_deref(), Some("registry.example.com"));
        assert_eq!(creds["other.io"].username, None);
        assert!(parse_docker_config("not json").is_empty());
    }
}
