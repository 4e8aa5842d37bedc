//! Registries: pushing an image (`POST /images/{name}/push`, followed
//! message by message for each layer's bytes and the digest), asking the
//! registry which digest it serves for a name (`GET /distribution/…`), and
//! pulling the images a build takes its cache from. Every request carries
//! the credentials `config.json` and its helpers hold for the name's
//! registry (`X-Registry-Auth`); none reaches a line, an event or an error.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use base64::Engine as _;
use bollard::auth::DockerCredentials;
use bollard::query_parameters::CreateImageOptions;
use bytes::Bytes;
use futures_util::StreamExt;
use http_body_util::{BodyExt, Empty};
use hyper::header::HOST;
use hyper::{Request, StatusCode};
use zeroize::Zeroizing;

use super::{api, is_not_found, DockerEngine};
use crate::engine::buildkit::{self, credentials_for};
use crate::engine::{EngineError, LineSink, Pushed};
use crate::model::registry_host;

/// Longest message of a push stream habitus accepts.
const MAX_MESSAGE: usize = 1024 * 1024;

/// How often one layer's bytes are reported while it uploads.
const LAYER_REPORT_EVERY: Duration = Duration::from_secs(1);

/// `name` split into repository and tag (`latest` when it has none); a
/// digest reference is its own repository, with no tag.
fn repository_and_tag(name: &str) -> (&str, &str) {
    if name.contains('@') {
        return (name, "");
    }
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    match name[last_slash..].rfind(':') {
        Some(colon) => (&name[..last_slash + colon], &name[last_slash + colon + 1..]),
        None => (name, "latest"),
    }
}

impl DockerEngine {
    /// The credentials for the registry of `reference`, if `config.json`
    /// or its helpers hold any.
    async fn credentials_of(
        &self,
        reference: &str,
    ) -> Result<Option<DockerCredentials>, EngineError> {
        let all = self.credentials().await?;
        Ok(credentials_for(&all, registry_host(reference)).cloned())
    }
}

/// The `X-Registry-Auth` header's value: the credentials as JSON, base64
/// (URL alphabet); `{}` without any.
fn auth_header(credentials: Option<&DockerCredentials>) -> Zeroizing<String> {
    let json = Zeroizing::new(match credentials {
        Some(c) => serde_json::to_string(c).unwrap_or_else(|_| "{}".into()),
        None => "{}".into(),
    });
    Zeroizing::new(base64::engine::general_purpose::URL_SAFE.encode(json.as_bytes()))
}

/// Tags `image` as `name`.
pub(super) async fn tag_image(
    engine: &DockerEngine,
    image: &str,
    name: &str,
) -> Result<(), EngineError> {
    let (repo, tag) = repository_and_tag(name);
    engine
        .docker
        .tag_image(
            image,
            Some(bollard::query_parameters::TagImageOptions {
                repo: Some(repo.to_string()),
                tag: Some(tag.to_string()),
            }),
        )
        .await
        .map_err(api)
}

/// One message of a push stream.
#[derive(Debug, Default, serde::Deserialize)]
struct Message {
    #[serde(default)]
    status: Option<String>,
    #[serde(default)]
    id: Option<String>,
    #[serde(rename = "progressDetail", default)]
    progress: Option<Detail>,
    #[serde(default)]
    aux: Option<Aux>,
    #[serde(default)]
    error: Option<String>,
    #[serde(rename = "errorDetail", default)]
    error_detail: Option<ErrorDetail>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct Detail {
    #[serde(default)]
    current: Option<u64>,
    #[serde(default)]
    total: Option<u64>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct Aux {
    #[serde(rename = "Digest", default)]
    digest: Option<String>,
    #[serde(rename = "Size", default)]
    size: Option<u64>,
}

#[derive(Debug, Default, serde::Deserialize)]
struct ErrorDetail {
    #[serde(default)]
    message: Option<String>,
}

/// Follows a push stream: each layer's bytes (a line per layer when it
/// is done, and at most one a second while it uploads), the digest, the
/// error.
#[derive(Default)]
struct PushProgress {
    /// Layer id → bytes known (its total, or what was sent so far).
    layers: HashMap<String, (u64, Option<Instant>)>,
    digest: Option<String>,
    size: Option<u64>,
    error: Option<String>,
}

impl PushProgress {
    fn feed(&mut self, line: &[u8], sink: &(dyn Fn(&str) + Send + Sync)) {
        let line = line.trim_ascii();
        if line.is_empty() {
            return;
        }
        let Ok(message) = serde_json::from_slice::<Message>(line) else {
            return;
        };
        if let Some(error) = message
            .error_detail
            .and_then(|d| d.message)
            .or(message.error)
        {
            self.error.get_or_insert(error);
            return;
        }
        if let Some(aux) = message.aux {
            if let Some(digest) = aux.digest {
                self.digest = Some(digest);
                self.size = aux.size;
            }
            return;
        }
        let status = message.status.unwrap_or_default();
        let Some(id) = message.id else {
            // `tag: digest: sha256:… size: N` closes a push; Docker 26 on
            // the containerd store sends it without an `aux` message.
            if let Some((digest, size)) = digest_line(&status) {
                self.digest.get_or_insert(digest);
                if self.size.is_none() {
                    self.size = size;
                }
            } else if !status.is_empty() {
                // `The push refers to repository […]`.
                sink(&status);
            }
            return;
        };
        let layer = self.layers.entry(id.clone()).or_insert((0, None));
        match status.as_str() {
            "Pushing" => {
                let detail = message.progress.unwrap_or_default();
                if let Some(total) = detail.total {
                    layer.0 = layer.0.max(total);
                }
                let current = detail.current.unwrap_or(0);
                // A layer that takes over a second shows its bytes.
                match layer.1 {
                    None => layer.1 = Some(Instant::now()),
                    Some(at) if at.elapsed() >= LAYER_REPORT_EVERY => {
                        layer.1 = Some(Instant::now());
                        let of = if layer.0 >= current {
                            format!(" of {}", bytes(layer.0))
                        } else {
                            String::new()
                        };
                        sink(&format!("layer {id}: pushing {}{of}", bytes(current)));
                    }
                    Some(_) => {}
                }
            }
            "Pushed" => sink(&format!("layer {id}: pushed ({})", bytes(layer.0))),
            "Layer already exists" => {
                sink(&format!("layer {id}: already in the registry"));
            }
            s if s.starts_with("Mounted from") => {
                sink(&format!("layer {id}: {}", s.to_lowercase()));
            }
            _ => {}
        }
    }
}

/// The digest and size of a `tag: digest: sha256:… size: N` status.
fn digest_line(status: &str) -> Option<(String, Option<u64>)> {
    let rest = &status[status.find("digest: ")? + "digest: ".len()..];
    let digest = rest.split_whitespace().next()?;
    let hex = digest.strip_prefix("sha256:")?;
    if hex.len() != 64 || !hex.chars().all(|c| c.is_ascii_hexdigit()) {
        return None;
    }
    let size = rest
        .split_once("size: ")
        .and_then(|(_, n)| n.trim().parse().ok());
    Some((digest.to_string(), size))
}

/// `1234567` → `1.2 MB`.
fn bytes(n: u64) -> String {
    const UNITS: [&str; 4] = ["kB", "MB", "GB", "TB"];
    if n < 1000 {
        return format!("{n} B");
    }
    let mut value = n as f64 / 1000.0;
    let mut unit = 0;
    while value >= 1000.0 && unit + 1 < UNITS.len() {
        value /= 1000.0;
        unit += 1;
    }
    format!("{value:.1} {}", UNITS[unit])
}

/// Pushes `name` (already tagged) and returns the digest the registry
/// serves for it, checked against what the push reported.
pub(super) async fn push_image(
    engine: &DockerEngine,
    name: &str,
    sink: LineSink,
) -> Result<Pushed, EngineError> {
    let credentials = engine.credentials_of(name).await?;
    let (repo, tag) = repository_and_tag(name);
    let version = engine.docker.client_version().to_string();
    let uri = format!(
        "/v{version}/images/{}/push?tag={}",
        buildkit::percent_encode(repo),
        buildkit::percent_encode(tag)
    );
    let auth = auth_header(credentials.as_ref());
    let request = Request::post(uri)
        .header(HOST, "docker")
        .header("X-Registry-Auth", auth.as_str())
        .body(Empty::<Bytes>::new())
        .map_err(|e| EngineError::Api(e.to_string()))?;
    drop(auth);
    let (response, connection) = buildkit::send(&engine.dialer, request).await?;
    let fail = |message: String| push_failed(name, message);
    if response.status() != StatusCode::OK {
        return Err(fail(buildkit::refused(response).await));
    }
    let mut body = response.into_body();
    let mut progress = PushProgress::default();
    let mut pending: Vec<u8> = Vec::new();
    while let Some(frame) = body.frame().await {
        let frame = frame.map_err(|e| fail(format!("the connection to the daemon failed: {e}")))?;
        let Ok(data) = frame.into_data() else {
            continue;
        };
        pending.extend_from_slice(&data);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            progress.feed(&line, &*sink);
        }
        if pending.len() > MAX_MESSAGE {
            return Err(fail("the daemon sent a push message over 1 MiB".into()));
        }
    }
    progress.feed(&pending, &*sink);
    drop(connection);
    if let Some(error) = progress.error {
        return Err(fail(error));
    }
    let Some(pushed) = progress.digest else {
        return Err(fail(
            "the push ended without naming the digest it pushed".into(),
        ));
    };
    let served = registry_digest(engine, name, credentials).await?;
    if pushed != served.0 {
        return Err(fail(format!(
            "the push reported digest {pushed}, but the registry serves {} for it",
            served.0
        )));
    }
    Ok(Pushed {
        digest: served.0,
        size: progress.size.or(served.1).unwrap_or(0),
    })
}

/// The digest (and manifest size) the registry serves for `name`: the
/// daemon asks the registry (its `Docker-Content-Digest`).
async fn registry_digest(
    engine: &DockerEngine,
    name: &str,
    credentials: Option<DockerCredentials>,
) -> Result<(String, Option<u64>), EngineError> {
    let inspect = engine
        .docker
        .inspect_registry_image(name, credentials)
        .await
        .map_err(|e| {
            push_failed(
                name,
                format!("pushed, but the registry's digest could not be read: {e}"),
            )
        })?;
    let descriptor = inspect.descriptor;
    match descriptor.digest {
        Some(digest) if digest.starts_with("sha256:") => {
            Ok((digest, descriptor.size.and_then(|s| u64::try_from(s).ok())))
        }
        _ => Err(push_failed(
            name,
            "pushed, but the registry named no digest for it".into(),
        )),
    }
}

/// A failed push of `name`.
fn push_failed(name: &str, message: String) -> EngineError {
    EngineError::Push {
        name: name.to_string(),
        message,
    }
}

/// What to do about a registry's answer to the push of `name`.
pub fn push_hint(name: &str, message: &str) -> Option<String> {
    let registry = registry_host(name);
    let lower = message.to_lowercase();
    // A status code as a word of its own, not digits inside a digest.
    let status = |code: &str| {
        lower.match_indices(code).any(|(at, _)| {
            let before = lower[..at].chars().next_back();
            let after = lower[at + code.len()..].chars().next();
            !before.is_some_and(|c| c.is_ascii_alphanumeric())
                && !after.is_some_and(|c| c.is_ascii_alphanumeric())
        })
    };
    if lower.contains("unauthorized") || status("401") {
        Some(format!(
            "the registry `{registry}` wants a login (401): `docker login {registry}`, or a credential helper for it in $DOCKER_CONFIG/config.json"
        ))
    } else if lower.contains("denied") || status("403") || lower.contains("forbidden") {
        Some(format!(
            "the registry `{registry}` refused the push (403): the account has no right to push to this repository"
        ))
    } else if lower.contains("name unknown") || status("404") || lower.contains("not found") {
        Some(format!(
            "the registry `{registry}` does not know the repository (404): create it, or check the name"
        ))
    } else if lower.contains("timeout") || lower.contains("timed out") {
        Some(format!(
            "the registry `{registry}` did not answer in time: check that the daemon can reach it"
        ))
    } else if lower.contains("connection refused") || lower.contains("no such host") {
        Some(format!(
            "the daemon cannot reach the registry `{registry}`: check its address"
        ))
    } else {
        None
    }
}

/// Pulls `reference` with the credentials of its registry; `Ok(false)`
/// when the registry has no such image.
pub(super) async fn pull_image(
    engine: &DockerEngine,
    reference: &str,
    sink: LineSink,
) -> Result<bool, EngineError> {
    let credentials = engine.credentials_of(reference).await?;
    let (repo, tag) = repository_and_tag(reference);
    let options = CreateImageOptions {
        from_image: Some(repo.to_string()),
        tag: (!tag.is_empty()).then(|| tag.to_string()),
        ..Default::default()
    };
    let mut stream = engine.docker.create_image(Some(options), None, credentials);
    while let Some(item) = stream.next().await {
        match item {
            Ok(info) => {
                if let Some(error) = info.error_detail.and_then(|d| d.message) {
                    return Err(EngineError::Api(error));
                }
                // Lines about the image (`Digest: …`, `Status: …`), not
                // each layer's.
                if let (Some(status), None) = (info.status, info.id) {
                    sink(&status);
                }
            }
            Err(err) if is_not_found(&err) => return Ok(false),
            Err(err) => {
                let message = api(err).to_string();
                let lower = message.to_lowercase();
                if lower.contains("not found") || lower.contains("manifest unknown") {
                    return Ok(false);
                }
                return Err(EngineError::Api(message));
            }
        }
    }
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[test]
    fn registry_hosts_are_resolved_as_the_daemon_does() {
        assert_eq!(registry_host("127.0.0.1:5000/team/app:1"), "127.0.0.1:5000");
        assert_eq!(
            registry_host("registry.example.com/app"),
            "registry.example.com"
        );
        assert_eq!(registry_host("localhost/app"), "localhost");
        assert_eq!(registry_host("team/app:1"), "docker.io");
        assert_eq!(registry_host("app"), "docker.io");
        assert_eq!(registry_host("LOCALHOST/app"), "LOCALHOST");
    }

    #[test]
    fn hub_credentials_go_to_the_hub_only() {
        // The docker CLI's config with only a Docker Hub login.
        let all = crate::engine::docker::credentials::parse_docker_config(
            r#"{"auths":{"https://index.docker.io/v1/":{"auth":"aHViOmh1Yi1wYXNz"}}}"#,
        );
        let header = |name: &str| {
            let creds = credentials_for(&all, registry_host(name));
            auth_header(creds).to_string()
        };
        let empty = auth_header(None).to_string();
        for name in ["team/app:1", "app", "library/app", "docker.io/team/app"] {
            assert_ne!(header(name), empty, "{name}");
        }
        for name in [
            "LOCALHOST/x",
            "UPPER/x:1",
            "localhost/x",
            "localhost:5000/x",
            "my.reg/x",
            "reg:5000/x",
        ] {
            assert_eq!(header(name), empty, "{name} must get no credentials");
        }
    }

    #[test]
    fn names_split_into_repository_and_tag() {
        assert_eq!(
            repository_and_tag("127.0.0.1:5000/team/app:1.2"),
            ("127.0.0.1:5000/team/app", "1.2")
        );
        assert_eq!(
            repository_and_tag("127.0.0.1:5000/team/app"),
            ("127.0.0.1:5000/team/app", "latest")
        );
    }

    #[test]
    fn the_auth_header_is_base64_json_and_empty_without_credentials() {
        assert_eq!(auth_header(None).as_str(), "e30=");
        let creds = DockerCredentials {
            username: Some("u".into()),
            password: Some("p".into()),
            ..Default::default()
        };
        let decoded = base64::engine::general_purpose::URL_SAFE
            .decode(auth_header(Some(&creds)).as_bytes())
            .unwrap();
        let json: serde_json::Value = serde_json::from_slice(&decoded).unwrap();
        assert_eq!(json["username"], "u");
        assert_eq!(json["password"], "p");
    }

    #[test]
    fn a_push_stream_gives_layers_the_digest_and_the_error() {
        let lines = Arc::new(Mutex::new(Vec::<String>::new()));
        let seen = Arc::clone(&lines);
        let sink = move |l: &str| seen.lock().unwrap().push(l.to_string());
        let mut p = PushProgress::default();
        for line in [
            r#"{"status":"The push refers to repository [127.0.0.1:5000/app]"}"#,
            r#"{"status":"Preparing","progressDetail":{},"id":"abc"}"#,
            r#"{"status":"Pushing","progressDetail":{"current":512,"total":2048},"id":"abc"}"#,
            r#"{"status":"Pushed","progressDetail":{},"id":"abc"}"#,
            r#"{"status":"Layer already exists","progressDetail":{},"id":"def"}"#,
            r#"{"status":"1: digest: sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa size: 528"}"#,
            r#"{"progressDetail":{},"aux":{"Tag":"1","Digest":"sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa","Size":528}}"#,
        ] {
            p.feed(line.as_bytes(), &sink);
        }
        assert_eq!(
            p.digest.as_deref(),
            Some("sha256:aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa")
        );
        assert_eq!(p.size, Some(528));
        assert!(p.error.is_none());
        assert_eq!(
            *lines.lock().unwrap(),
            vec![
                "The push refers to repository [127.0.0.1:5000/app]",
                "layer abc: pushed (2.0 kB)",
                "layer def: already in the registry",
            ]
        );
        let mut only_status = PushProgress::default();
        let digest = format!("sha256:{}", "b".repeat(64));
        only_status.feed(
            format!(r#"{{"status":"1: digest: {digest} size: 751"}}"#).as_bytes(),
            &sink,
        );
        assert_eq!(only_status.digest.as_deref(), Some(digest.as_str()));
        assert_eq!(only_status.size, Some(751));
        p.feed(
            br#"{"errorDetail":{"message":"unauthorized: authentication required"},"error":"unauthorized: authentication required"}"#,
            &sink,
        );
        assert_eq!(
            p.error.as_deref(),
            Some("unauthorized: authentication required")
        );
    }

    #[test]
    fn failed_pushes_name_the_registry_and_the_status() {
        let e = push_failed(
            "127.0.0.1:5000/app:1",
            "unauthorized: authentication required".into(),
        );
        let hint = e.hint().unwrap();
        assert!(
            hint.contains("127.0.0.1:5000") && hint.contains("401"),
            "{hint}"
        );
        let e = push_failed(
            "r.example/app",
            "denied: requested access to the resource is denied".into(),
        );
        assert!(e.hint().unwrap().contains("403"));
        assert!(e.to_string().contains("r.example/app"), "{e}");
        let hint = |m: &str| push_hint("r.example/app", m).unwrap_or_default();
        assert!(hint("name unknown: repository name not known to registry").contains("404"));
        assert!(hint("net/http: request canceled (Client.Timeout exceeded)").contains("in time"));
        assert!(hint("dial tcp 10.0.0.1:443: connect: connection refused").contains("cannot reach"));
        assert_eq!(push_hint("r.example/app", "something else"), None);
        assert_eq!(push_hint("r.example/app", "bad blob sha256:ab401cd"), None);
    }
}
