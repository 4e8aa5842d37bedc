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
    if reference.is_empty() {
        return Some("it is empty");
    }
    if reference.len() > 255 {
        return Some("it is longer than 255 characters");
    }
    if reference
        .chars()
        .any(|c| c.is_whitespace() || c.is_control())
    {
        return Some("it contains a space");
    }
    if reference.contains('@') {
        return Some("a digest (`@sha256:…`) cannot be tagged or pushed; name a tag");
    }
    let last_slash = reference.rfind('/').map_or(0, |i| i + 1);
    let (repository, tag) = match reference[last_slash..].rfind(':') {
        Some(colon) => (
            &reference[..last_slash + colon],
            Some(&reference[last_slash + colon + 1..]),
        ),
        None => (reference, None),
    };
    // The registry host (first component with `.` or `:`) may have
    // capitals and a port; the path may not.
    let path = match repository.split_once('/') {
        Some((host, rest)) if host.contains('.') || host.contains(':') || host == "localhost" => {
            rest
        }
        _ => repository,
    };
    if path.is_empty() || path.split('/').any(str::is_empty) {
        return Some("a path component is empty");
    }
    if path.chars().any(|c| c.is_ascii_uppercase()) {
        return Some("the repository must be lowercase");
    }
    if !path
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/".contains(c))
    {
        return Some("the repository may hold only a-z, 0-9, `.`, `_`, `-` and `/`");
    }
    match tag {
        Some("") => Some("the tag after `:` is empty"),
        Some(t)
            if t.len() > 128
                || !t
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c)) =>
        {
            Some("a tag is at most 128 of A-Z, a-z, 0-9, `.`, `_` and `-`")
        }
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::{reference_problem, SecretKind};

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
        ] {
            assert_eq!(reference_problem(ok), None, "{ok}");
        }
        for (bad, why) in [
            ("", "empty"),
            ("Team/app", "lowercase"),
            ("app:", "tag"),
            ("app@sha256:00", "digest"),
            ("a b", "space"),
            ("r.example//app", "empty"),
            ("r.example/a+b", "only"),
        ] {
            let problem = reference_problem(bad).unwrap_or_else(|| panic!("{bad} passed"));
            assert!(problem.contains(why), "{bad}: {problem}");
        }
    }
}
