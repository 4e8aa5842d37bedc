//! Registry credentials as the docker CLI resolves them, sent with builds
//! so that the daemon can pull `FROM` images from private registries:
//! `$DOCKER_CONFIG/config.json` (default `~/.docker`) with its `auths`,
//! `credsStore` and `credHelpers`; helpers are asked with the credential
//! helper protocol (`docker-credential-NAME get`, the server on stdin).
//! No credential reaches a log, an event or an error text.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use bollard::auth::DockerCredentials;

use super::home_dir;
use crate::model::base64_decode;
use zeroize::Zeroizing;

/// The docker CLI's `config.json`, as far as credentials go.
#[derive(Debug, Default, serde::Deserialize)]
pub(super) struct DockerConfig {
    #[serde(default)]
    auths: HashMap<String, Entry>,
    /// The helper that stores every registry's credentials.
    #[serde(rename = "credsStore")]
    creds_store: Option<String>,
    /// Registry host → the helper for that registry.
    #[serde(rename = "credHelpers", default)]
    cred_helpers: HashMap<String, String>,
}

#[derive(Debug, serde::Deserialize)]
struct Entry {
    auth: Option<String>,
    username: Option<String>,
    password: Option<String>,
    email: Option<String>,
    identitytoken: Option<String>,
}

/// A credential helper could not answer for a registry (`None`: when
/// asked to list what it stores).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("registry credentials{}: `docker-credential-{helper}` {problem}", registry.as_ref().map(|r| format!(" for `{r}`")).unwrap_or_else(|| " (credsStore)".into()))]
pub struct CredentialError {
    pub registry: Option<String>,
    pub helper: String,
    pub problem: String,
}

/// Runs `docker-credential-<helper> <action>` with `input` on stdin and
/// returns its stdout, or what went wrong.
pub(super) type HelperRunner = dyn Fn(&str, &str, &str) -> Result<String, String> + Sync;

/// Reads `$DOCKER_CONFIG/config.json` (default `~/.docker/config.json`).
/// Best effort: a missing or malformed file holds no credentials.
pub(super) fn load_config() -> DockerConfig {
    let dir = match std::env::var_os("DOCKER_CONFIG").filter(|d| !d.is_empty()) {
        Some(dir) => PathBuf::from(dir),
        None => match home_dir() {
            Some(home) => home.join(".docker"),
            None => return DockerConfig::default(),
        },
    };
    std::fs::read_to_string(dir.join("config.json"))
        .ok()
        .and_then(|text| serde_json::from_str(&text).ok())
        .unwrap_or_default()
}

/// Every credential `config` holds, as the docker CLI sends them with a
/// build: `auths`, then what `credsStore` lists, then each `credHelpers`
/// registry through its own helper (later ones win for a registry).
pub(super) fn all_credentials(
    config: &DockerConfig,
    run: &HelperRunner,
) -> Result<HashMap<String, DockerCredentials>, CredentialError> {
    let mut out: HashMap<String, DockerCredentials> = config
        .auths
        .iter()
        .map(|(registry, entry)| (registry.clone(), from_entry(registry, entry)))
        .collect();
    if let Some(store) = &config.creds_store {
        let listed = run(store, "list", "").map_err(|problem| CredentialError {
            registry: None,
            helper: store.clone(),
            problem,
        })?;
        let servers: HashMap<String, String> = serde_json::from_str(&listed).unwrap_or_default();
        for server in servers.keys() {
            if let Some(creds) = helper_get(store, server, run)? {
                out.insert(server.clone(), creds);
            }
        }
    }
    for (registry, helper) in &config.cred_helpers {
        if let Some(creds) = helper_get(helper, registry, run)? {
            out.insert(registry.clone(), creds);
        }
    }
    Ok(out)
}

/// `docker-credential-<helper> get` for `server`: `None` when the helper
/// has none ("credentials not found"); a username `<token>` means the
/// secret is an identity token.
fn helper_get(
    helper: &str,
    server: &str,
    run: &HelperRunner,
) -> Result<Option<DockerCredentials>, CredentialError> {
    let fail = |problem: String| CredentialError {
        registry: Some(server.to_string()),
        helper: helper.to_string(),
        problem,
    };
    let text = match run(helper, "get", server) {
        Ok(text) => Zeroizing::new(text),
        Err(problem) if problem.contains("credentials not found") => return Ok(None),
        Err(problem) => return Err(fail(problem)),
    };
    let (username, secret) = parse_answer(&text).map_err(|p| fail(p.into()))?;
    let token = username == "<token>";
    Ok(Some(DockerCredentials {
        username: (!token).then_some(username),
        password: (!token).then(|| secret.clone()),
        identitytoken: token.then_some(secret),
        serveraddress: Some(server.to_string()),
        ..Default::default()
    }))
}

/// A helper's answer to `get`: its `Username` and `Secret`, or what is
/// wrong with it. The answer holds the secret: the problem never quotes it.
fn parse_answer(text: &str) -> Result<(String, String), &'static str> {
    let value: serde_json::Value =
        serde_json::from_str(text).map_err(|_| "answered `get` with something that is not JSON")?;
    let field = |name: &str| value.get(name).and_then(serde_json::Value::as_str);
    if !value.is_object() {
        return Err("answered `get` with JSON that is not an object");
    }
    let secret = field("Secret").ok_or("answered `get` without a `Secret` string")?;
    // No `Username` is an empty one, as the docker CLI reads it.
    let username = field("Username").unwrap_or_default();
    Ok((username.to_string(), secret.to_string()))
}

/// How long a credential helper may take before habitus kills it.
pub const DEFAULT_HELPER_TIMEOUT: Duration = Duration::from_secs(30);

/// Runs a real helper from PATH, giving it `timeout`; `stop` (set when
/// the build is cancelled: Ctrl-C, SIGTERM) kills it too. Its stdout may
/// hold a secret: it is returned on success, and never quoted in an error
/// (a helper that fails is reported by its exit status only, except the
/// protocol's "credentials not found", which means no credentials).
pub(super) fn run_helper(
    helper: &str,
    action: &str,
    input: &str,
    timeout: Duration,
    stop: &AtomicBool,
) -> Result<String, String> {
    let program = format!("docker-credential-{helper}");
    run_program(std::path::Path::new(&program), action, input, timeout, stop)
}

/// Kills a helper and every process of its group, and reaps it.
fn kill_group(child: &mut std::process::Child) {
    let group = i32::try_from(child.id())
        .ok()
        .and_then(rustix::process::Pid::from_raw);
    if let Some(group) = group {
        let _ = rustix::process::kill_process_group(group, rustix::process::Signal::KILL);
    }
    let _ = child.kill();
    let _ = child.wait();
}

/// [`run_helper`] with the helper at `program` (a name looked up on PATH,
/// or a path).
fn run_program(
    program: &std::path::Path,
    action: &str,
    input: &str,
    timeout: Duration,
    stop: &AtomicBool,
) -> Result<String, String> {
    use std::io::{Read, Write};
    use std::os::unix::process::CommandExt;
    use std::process::{Command, Stdio};
    let mut child = Command::new(program)
        .arg(action)
        // Its own process group, so that what it starts (`pass`, `gpg`)
        // is killed with it.
        .process_group(0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => {
                "is not on PATH (install it, or remove it from config.json)".to_string()
            }
            _ => format!("cannot be started: {e}"),
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input.as_bytes());
    }
    // Read stdout on a thread, so that a helper that never exits cannot
    // hold habitus; it is dropped with what it read when the helper is
    // killed.
    let (tx, rx) = std::sync::mpsc::channel();
    if let Some(mut stdout) = child.stdout.take() {
        std::thread::spawn(move || {
            let mut out = Vec::new();
            let _ = stdout.read_to_end(&mut out);
            let _ = tx.send(Zeroizing::new(out));
        });
    }
    let started = Instant::now();
    let status = loop {
        match child.try_wait() {
            Ok(Some(status)) => break status,
            Ok(None) => {}
            Err(e) => {
                kill_group(&mut child);
                return Err(format!("failed: {e}"));
            }
        }
        if stop.load(Ordering::SeqCst) {
            kill_group(&mut child);
            return Err("was stopped: the build was cancelled".into());
        }
        if started.elapsed() >= timeout {
            kill_group(&mut child);
            return Err(format!(
                "did not answer `{action}` within {} (killed; HABITUS_CREDENTIAL_HELPER_TIMEOUT sets the limit)",
                seconds(timeout)
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let out = rx.recv_timeout(Duration::from_secs(1)).unwrap_or_default();
    let stdout = Zeroizing::new(String::from_utf8_lossy(&out).into_owned());
    if status.success() {
        return Ok(stdout.to_string());
    }
    // Helpers say "credentials not found in native keychain" on stdout;
    // anything else they print may be the secret itself.
    if stdout.contains("credentials not found") {
        return Err("credentials not found".into());
    }
    Err(format!(
        "failed ({status}; its output is not shown: it may hold a secret)"
    ))
}

/// `30 s`, `0.5 s`.
fn seconds(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

/// The credentials of one `auths` entry, with `auth` (base64 of
/// `user:password`) split into user and password.
fn from_entry(registry: &str, entry: &Entry) -> DockerCredentials {
    let (mut username, mut password) = (entry.username.clone(), entry.password.clone());
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
    DockerCredentials {
        username,
        password,
        email: entry.email.clone(),
        serveraddress: Some(registry.to_string()),
        identitytoken: entry.identitytoken.clone(),
        ..Default::default()
    }
}

/// The `auths` section of a Docker `config.json`: registry → credentials
/// (helpers not consulted).
#[cfg(test)]
pub(super) fn parse_docker_config(text: &str) -> HashMap<String, DockerCredentials> {
    let config: DockerConfig = serde_json::from_str(text).unwrap_or_default();
    let none = |_: &str, _: &str, _: &str| Err("no helper".to_string());
    let config = DockerConfig {
        creds_store: None,
        cred_helpers: HashMap::new(),
        ..config
    };
    all_credentials(&config, &none).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::{all_credentials, base64_decode, parse_docker_config, DockerConfig};

    /// A helper that knows `reg.io` (password) and `tok.io` (an identity
    /// token), lists both, and fails for `broken.io`.
    fn fake(helper: &str, action: &str, input: &str) -> Result<String, String> {
        match (helper, action, input) {
            ("store", "list", _) => Ok(r#"{"reg.io":"u","tok.io":"<token>"}"#.into()),
            (_, "get", "reg.io") => {
                Ok(r#"{"ServerURL":"reg.io","Username":"u","Secret":"s3cret"}"#.into())
            }
            (_, "get", "tok.io") => {
                Ok(r#"{"ServerURL":"tok.io","Username":"<token>","Secret":"t0ken"}"#.into())
            }
            (_, "get", "broken.io") => Err("failed (exit status: 1): keychain locked".into()),
            (_, "get", _) => {
                Err("failed (exit status: 1): credentials not found in native keychain".into())
            }
            _ => Err("is not on PATH (install it, or remove it from config.json)".into()),
        }
    }

    fn config(text: &str) -> DockerConfig {
        serde_json::from_str(text).unwrap()
    }

    #[test]
    fn helpers_win_over_auths_and_tokens_are_identity_tokens() {
        let all = all_credentials(
            &config(r#"{"auths":{"reg.io":{"auth":"b2xkOm9sZA=="},"plain.io":{"auth":"cDpx"}},"credsStore":"store","credHelpers":{"gone.io":"store"}}"#),
            &fake,
        )
        .unwrap();
        assert_eq!(all["reg.io"].password.as_deref(), Some("s3cret"));
        assert_eq!(all["tok.io"].identitytoken.as_deref(), Some("t0ken"));
        assert_eq!(all["tok.io"].username, None);
        assert_eq!(all["plain.io"].username.as_deref(), Some("p"));
        // "credentials not found" is no credentials, not an error.
        assert!(!all.contains_key("gone.io"));
    }

    #[test]
    fn a_failing_or_missing_helper_is_named_with_the_registry_and_no_secret() {
        let err = all_credentials(
            &config(r#"{"credHelpers":{"broken.io":"ecr-login"}}"#),
            &fake,
        )
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "registry credentials for `broken.io`: `docker-credential-ecr-login` failed (exit status: 1): keychain locked"
        );
        let err = all_credentials(&config(r#"{"credsStore":"nothere"}"#), &fake).unwrap_err();
        assert_eq!(
            err.to_string(),
            "registry credentials (credsStore): `docker-credential-nothere` is not on PATH (install it, or remove it from config.json)"
        );
        let garbled = |_: &str, _: &str, _: &str| Ok("Secret: s3cret".to_string());
        let err =
            all_credentials(&config(r#"{"credHelpers":{"reg.io":"x"}}"#), &garbled).unwrap_err();
        assert!(!err.to_string().contains("s3cret"), "{err}");
    }

    #[test]
    fn a_helper_answer_without_its_fields_is_named_without_the_secret() {
        let err = |text: &str| {
            let text = text.to_string();
            let answer = move |_: &str, _: &str, _: &str| Ok(text.clone());
            all_credentials(&config(r#"{"credHelpers":{"reg.io":"x"}}"#), &answer)
                .unwrap_err()
                .to_string()
        };
        assert!(err(r#"{"Username":"u","Secret":"s3cret""#).ends_with("is not JSON"));
        assert!(err(r#"["s3cret"]"#).ends_with("JSON that is not an object"));
        assert!(
            err(r#"{"Username":"u","Password":"s3cret"}"#).ends_with("without a `Secret` string")
        );
        assert!(err(r#"{"Username":"u","Secret":3}"#).ends_with("without a `Secret` string"));
        for text in [r#"{"Username":"s3cret"}"#, r#"{"Secret":"s3cret""#] {
            assert!(!err(text).contains("s3cret"));
        }
    }

    #[test]
    fn a_helper_that_fails_or_hangs_is_killed_and_never_quoted() {
        use std::os::unix::fs::PermissionsExt;
        use std::sync::atomic::AtomicBool;
        use std::time::{Duration, Instant};
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, body: &str| {
            let path = dir.path().join(format!("docker-credential-{name}"));
            std::fs::write(&path, format!("#!/bin/sh\n{body}\n")).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            path
        };
        let run = |name: &str, timeout: Duration, stop: &AtomicBool| {
            let path = dir.path().join(format!("docker-credential-{name}"));
            super::run_program(&path, "get", "reg.io", timeout, stop)
        };
        let never = AtomicBool::new(false);
        write(
            "leaky",
            r#"printf '{"ServerURL":"reg.io","Username":"u","Secret":"s3cr3t"}'; exit 1"#,
        );
        let err = run("leaky", Duration::from_secs(10), &never).unwrap_err();
        assert!(err.contains("exit status: 1"), "{err}");
        assert!(!err.contains("s3cr3t"), "{err}");
        write(
            "none",
            "echo 'credentials not found in native keychain'; exit 1",
        );
        assert_eq!(
            run("none", Duration::from_secs(10), &never).unwrap_err(),
            "credentials not found"
        );
        write("hang", "exec sleep 1000");
        let started = Instant::now();
        let err = run("hang", Duration::from_millis(300), &never).unwrap_err();
        assert!(err.contains("within 0.3 s"), "{err}");
        assert!(started.elapsed() < Duration::from_secs(5));
        let stopped = AtomicBool::new(true);
        let err = run("hang", Duration::from_secs(60), &stopped).unwrap_err();
        assert!(err.contains("cancelled"), "{err}");
        // What a helper starts (`pass`, `gpg`) goes with it.
        let pid_file = dir.path().join("grandchild");
        write(
            "family",
            &format!("sleep 1000 & echo $! > {}; wait", pid_file.display()),
        );
        let err = run("family", Duration::from_millis(500), &never).unwrap_err();
        assert!(err.contains("within 0.5 s"), "{err}");
        let pid = std::fs::read_to_string(&pid_file).unwrap();
        let stat = format!("/proc/{}/stat", pid.trim());
        let gone = || {
            std::fs::read_to_string(&stat).map_or(true, |s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while !gone() && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(gone(), "the helper's child {} still runs", pid.trim());
    }

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
