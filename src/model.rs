//! The vocabulary every part of habitus shares: which builder runs a
//! step, where a secret's value comes from, how much to log, the labels
//! habitus puts on Docker objects and the build id. It imports nothing of
//! the crate, so any module may use it.

/// Which of the daemon's builders runs a step's Dockerfile.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Builder {
    /// The classic builder (`docker build` without BuildKit), as Go Habitus.
    #[default]
    Legacy,
    /// The daemon's BuildKit, with a session serving secret mounts.
    BuildKit,
}

impl Builder {
    /// `legacy` or `buildkit`.
    pub fn name(self) -> &'static str {
        match self {
            Builder::Legacy => "legacy",
            Builder::BuildKit => "buildkit",
        }
    }
}

/// Where a secret's value comes from: the `type:` of a secret in
/// build.yml, a name in `--sec-providers`, the `{kind}` of
/// `/v1/secrets/{kind}/{name}`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum SecretKind {
    /// A host path, read whole.
    File,
    /// A variable NAME; the value is `HABITUS_<NAME>`.
    Env,
}

impl SecretKind {
    /// Every kind, in the order messages list them.
    pub const ALL: [SecretKind; 2] = [SecretKind::File, SecretKind::Env];

    /// `file` or `env`.
    pub fn name(self) -> &'static str {
        match self {
            SecretKind::File => "file",
            SecretKind::Env => "env",
        }
    }

    /// The kind called `name` exactly; `None` for any other text.
    pub fn parse(name: &str) -> Option<SecretKind> {
        SecretKind::ALL.into_iter().find(|k| k.name() == name)
    }

    /// The names of [`SecretKind::ALL`].
    pub fn names() -> [&'static str; 2] {
        SecretKind::ALL.map(SecretKind::name)
    }
}

impl std::fmt::Display for SecretKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// By name, so that secrets keep the order they had when the kind was
/// text (`env/…` before `file/…`).
impl Ord for SecretKind {
    fn cmp(&self, other: &SecretKind) -> std::cmp::Ordering {
        self.name().cmp(other.name())
    }
}

impl PartialOrd for SecretKind {
    fn partial_cmp(&self, other: &SecretKind) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}

/// How much habitus says (`--level`; Go Habitus's names, plus `trace`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Level {
    Trace,
    Debug,
    Info,
    Notice,
    Warning,
    Error,
    Critical,
}

/// Label carrying the build id (networks, containers, labelled images).
pub const LABEL_BUILD: &str = "habitus.build";
/// Label carrying the step label (containers, labelled images).
pub const LABEL_STEP: &str = "habitus.step";
/// Label carrying `--uid`.
pub const LABEL_UID: &str = "habitus.uid";
/// Label carrying the build id on every container habitus creates, and on
/// nothing else: never on an image (a cleanup's squash drops what the
/// daemon's commit copies from the container). The sweep removes only
/// containers that carry it; a container run from an image that carries
/// `habitus.build` lacks it and is never touched.
pub const LABEL_CONTAINER: &str = "habitus.container";

/// A new build id: 12 random hex digits, short enough for names
/// (`habitus-<id>` networks) and unique enough for one daemon.
pub fn new_build_id() -> String {
    format!("{:012x}", rand::random::<u64>() & 0xffff_ffff_ffff)
}

/// Decodes standard base64 with or without padding, as HTTP Basic
/// credentials and `auth` entries of `~/.docker/config.json` come; `None`
/// if malformed.
pub fn base64_decode(text: &[u8]) -> Option<Vec<u8>> {
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

/// What is wrong with an image reference to tag, push or pull
/// (`[registry/]repository[:tag]`), if anything: the checks the daemon
/// would make later, made while reading build.yml.
pub fn reference_problem(reference: &str) -> Option<&'static str> {
    check_reference(reference, false)
}

/// As [`reference_problem`], for an image to pull: a digest
/// (`repository@sha256:…`) is allowed.
pub fn pull_reference_problem(reference: &str) -> Option<&'static str> {
    check_reference(reference, true)
}

fn check_reference(reference: &str, digest_ok: bool) -> Option<&'static str> {
    if reference.is_empty() {
        return Some("it is empty");
    }
    if reference
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Some("it contains a space");
    }
    let (name, digest) = match reference.split_once('@') {
        Some((name, digest)) => (name, Some(digest)),
        None => (reference, None),
    };
    if let Some(digest) = digest {
        if !digest_ok {
            return Some("a digest (`@sha256:…`) cannot be tagged or pushed; name a tag");
        }
        let hex = digest.strip_prefix("sha256:").unwrap_or("");
        if hex.len() != 64
            || !hex
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        {
            return Some("a digest is `sha256:` and 64 hex digits");
        }
    }
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    let (repository, tag) = match name[last_slash..].rfind(':') {
        Some(colon) => (
            &name[..last_slash + colon],
            Some(&name[last_slash + colon + 1..]),
        ),
        None => (name, None),
    };
    if repository.len() > 255 {
        return Some("the repository is longer than 255 characters");
    }
    let path = match repository.split_once('/') {
        Some((host, rest)) if is_registry_host(host) => rest,
        _ => repository,
    };
    if let Some(problem) = path.split('/').find_map(path_component_problem) {
        return Some(problem);
    }
    match tag {
        Some("") => Some("the tag after `:` is empty"),
        Some(t) if !tag_is_valid(t) => Some(
            "a tag is at most 128 of A-Z, a-z, 0-9, `.`, `_` and `-`, not starting with `.` or `-`",
        ),
        _ => None,
    }
}

/// Whether the first component of a reference names a registry, as the
/// daemon decides: it has a `.` or a `:`, is `localhost`, or has capitals.
pub fn is_registry_host(first: &str) -> bool {
    first.contains('.')
        || first.contains(':')
        || first == "localhost"
        || first.chars().any(|c| c.is_ascii_uppercase())
}

/// The registry host of an image reference, by the docker CLI's rule
/// (distribution/reference `splitDockerDomain`): the first `/`-separated
/// component when there is a `/` after it and it has a `.` or a `:`, is
/// `localhost`, or has an uppercase letter (`LOCALHOST/x` is the host
/// `LOCALHOST`, not Docker Hub); else Docker Hub, `docker.io` (as is
/// `index.docker.io`). A tag or digest does not change the host. Every
/// path that picks credentials for a name (push, cache pulls, digest
/// lookups, hints) asks this one function.
pub fn registry_host(reference: &str) -> &str {
    match reference.split_once('/') {
        Some(("index.docker.io", _)) => "docker.io",
        Some((first, _)) if is_registry_host(first) => first,
        _ => "docker.io",
    }
}

/// What is wrong with one `/`-separated component of a repository path:
/// lowercase letters and digits, separated by one `.`, one or two `_`,
/// or any number of `-`.
fn path_component_problem(component: &str) -> Option<&'static str> {
    if component.is_empty() {
        return Some("a path component is empty");
    }
    if component.chars().any(|c| c.is_ascii_uppercase()) {
        return Some("the repository must be lowercase");
    }
    let mut separator = String::new();
    let mut first = true;
    for c in component.chars() {
        if c.is_ascii_lowercase() || c.is_ascii_digit() {
            if !separator.is_empty() {
                let ok = separator == "."
                    || separator == "_"
                    || separator == "__"
                    || separator.chars().all(|s| s == '-');
                if !ok || first {
                    return Some("the repository may hold only a-z and 0-9 separated by `.`, `_`, `__` or dashes");
                }
                separator.clear();
            }
            first = false;
        } else if "._-".contains(c) {
            separator.push(c);
        } else {
            return Some(
                "the repository may hold only a-z and 0-9 separated by `.`, `_`, `__` or dashes",
            );
        }
    }
    if first || !separator.is_empty() {
        return Some(
            "the repository may hold only a-z and 0-9 separated by `.`, `_`, `__` or dashes",
        );
    }
    None
}

fn tag_is_valid(tag: &str) -> bool {
    let mut chars = tag.chars();
    let head = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_');
    head && tag.len() <= 128 && chars.all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// One spelling for one image name: Docker Hub's `docker.io/library/app`,
/// `docker.io/app`… and `app` are `app`; no tag is `:latest`.
pub fn normalize_reference(reference: &str) -> String {
    let mut name = reference;
    for prefix in ["docker.io/", "index.docker.io/", "registry-1.docker.io/"] {
        if let Some(rest) = name.strip_prefix(prefix) {
            name = rest.strip_prefix("library/").unwrap_or(rest);
            break;
        }
    }
    if name.contains('@') {
        return name.to_string();
    }
    let last_slash = name.rfind('/').map_or(0, |i| i + 1);
    if name[last_slash..].contains(':') {
        name.to_string()
    } else {
        format!("{name}:latest")
    }
}

#[cfg(test)]
mod tests {
    use super::{
        normalize_reference, pull_reference_problem, reference_problem, registry_host, SecretKind,
    };

    #[test]
    fn a_reference_names_its_registry_as_the_docker_cli_decides() {
        // Docker Hub: no `/`, or a first component without `.`, `:`,
        // `localhost` or capitals.
        assert_eq!(registry_host("app"), "docker.io");
        assert_eq!(registry_host("app:1"), "docker.io");
        assert_eq!(registry_host("team/app:1"), "docker.io");
        assert_eq!(registry_host("library/app"), "docker.io");
        assert_eq!(registry_host("docker.io/library/app"), "docker.io");
        assert_eq!(registry_host("index.docker.io/team/app"), "docker.io");
        // `localhost`, with or without a port, is a registry.
        assert_eq!(registry_host("localhost/x"), "localhost");
        assert_eq!(registry_host("localhost:5000/x:1"), "localhost:5000");
        // A capital makes the first component a host, not a Hub account.
        assert_eq!(registry_host("LOCALHOST/x"), "LOCALHOST");
        assert_eq!(registry_host("UPPER/x"), "UPPER");
        assert_eq!(registry_host("Team/app"), "Team");
        // A `.` or a `:` makes a host.
        assert_eq!(registry_host("my.reg/x"), "my.reg");
        assert_eq!(registry_host("reg:5000/x"), "reg:5000");
        assert_eq!(registry_host("127.0.0.1:5000/team/app:1"), "127.0.0.1:5000");
        // Without a `/` there is no host, whatever the name holds.
        assert_eq!(registry_host("localhost"), "docker.io");
        assert_eq!(registry_host("my.reg:5000"), "docker.io");
        // A digest does not change the host.
        let sum = "a".repeat(64);
        assert_eq!(registry_host(&format!("my.reg/x@sha256:{sum}")), "my.reg");
        assert_eq!(registry_host(&format!("team/x@sha256:{sum}")), "docker.io");
        assert_eq!(registry_host(&format!("app@sha256:{sum}")), "docker.io");
        assert_eq!(
            registry_host(&format!("reg:5000/x:1@sha256:{sum}")),
            "reg:5000"
        );
    }

    #[test]
    fn digests_are_for_pulls_and_names_have_one_spelling() {
        let digest = format!("r.example/app@sha256:{}", "a".repeat(64));
        assert_eq!(pull_reference_problem(&digest), None);
        assert!(reference_problem(&digest).is_some());
        assert!(pull_reference_problem("r.example/app@sha256:12").is_some());
        assert_eq!(normalize_reference("app"), "app:latest");
        assert_eq!(normalize_reference("docker.io/library/app"), "app:latest");
        assert_eq!(normalize_reference("docker.io/team/app:1"), "team/app:1");
        assert_eq!(
            normalize_reference("r.example:5000/app"),
            "r.example:5000/app:latest"
        );
    }

    #[test]
    fn secret_kinds_are_named_and_ordered_as_their_names() {
        assert_eq!(SecretKind::names(), ["file", "env"]);
        for kind in SecretKind::ALL {
            assert_eq!(SecretKind::parse(kind.name()), Some(kind));
            assert_eq!(kind.to_string(), kind.name());
        }
        assert_eq!(SecretKind::parse("File"), None);
        assert_eq!(SecretKind::parse(" env"), None);
        assert!(SecretKind::Env < SecretKind::File);
    }

    #[test]
    fn image_references_are_checked_as_the_daemon_would() {
        for ok in [
            "app",
            "team/app:1.2",
            "127.0.0.1:5000/team/app:1",
            "Registry.Example.com/app",
            "localhost/app_x-y.z:V1",
            "localhost:5000/a",
            "registry:5000/a/b:tag",
            "MyReg/app",
            "r.example/a__b/c---d:_x",
        ] {
            assert_eq!(reference_problem(ok), None, "{ok}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("r.example/Team/app", "lowercase"),
            ("app:", "tag"),
            ("app@sha256:00", "digest"),
            ("a b", "space"),
            ("r.example//app", "empty"),
            ("r.example/a+b", "only"),
            ("r.example/-app", "separated"),
            ("r.example/a..b", "separated"),
            ("r.example/a___b", "separated"),
            ("app:.x", "tag"),
            ("app:-x", "tag"),
        ] {
            let problem = reference_problem(bad).unwrap_or_else(|| panic!("{bad} passed"));
            assert!(problem.contains(why), "{bad}: {problem}");
        }
    }
}
