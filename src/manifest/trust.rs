//! What an untrusted build.yml may reach on this machine (`--untrusted`).
//!
//! In CI a build.yml may come from a pull request: whoever wrote it could
//! otherwise read any host variable through `_env(NAME)`, any host file as
//! a `file` secret, forward the host's SSH agent with `ssh: true` and run
//! a host command with `after_build_command` and push over any image this
//! machine's registry credentials may write with `push: true`. With [`Untrusted`] each of
//! these is refused unless the flag named in the refusal allows it, and
//! every refusal is reported with the other problems of the file, before
//! anything is built or a daemon is contacted.

use std::path::PathBuf;

/// The command line's allowances for an untrusted build.yml.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Untrusted {
    /// `--secret-dir`: folders `file` secrets may be read from, besides
    /// the work directory; absolute.
    pub secret_dirs: Vec<PathBuf>,
    /// `--ssh`: steps with `ssh: true` may forward the SSH agent.
    pub ssh: bool,
    /// `--after-build-commands`: `after_build_command` may run on the host.
    pub after_build_commands: bool,
    /// `--push`: `push: true` may push with this machine's registry
    /// credentials.
    pub push: bool,
}

/// The end of every refusal: `{what}; refused with --untrusted (allow it
/// with {allow})`.
pub(crate) fn refusal(what: &str, allow: &str) -> String {
    format!("{what}; refused with --untrusted (allow it with {allow})")
}

#[cfg(test)]
mod tests {
    use super::refusal;

    #[test]
    fn refusals_name_the_flag_that_allows_them() {
        assert_eq!(
            refusal(
                "`ssh: true` forwards this machine's SSH agent",
                "--ssh"
            ),
            "`ssh: true` forwards this machine's SSH agent; refused with --untrusted (allow it with --ssh)"
        );
    }
}
