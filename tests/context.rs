use std::fs::{self, File, FileTimes};
use std::io::{self, Read, Write};
use std::os::unix::fs::{symlink, PermissionsExt};
use std::path::Path;
use std::time::{Duration, SystemTime};

use habitus::context::{write_tar, ContextError, DockerIgnore, MAX_DOCKERIGNORE_SIZE};
use proptest::prelude::{prop_assert, prop_assert_eq, proptest};
use proptest::strategy::Strategy;

/// One entry of a tar as the tests compare it.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Entry {
    path: String,
    /// `f` file, `d` directory, `l` symlink, `p` fifo.
    kind: char,
    mode: u32,
    /// The symlink target, or the file contents.
    data: String,
}

fn file(path: &str, mode: u32, data: &str) -> Entry {
    Entry {
        path: path.to_owned(),
        kind: 'f',
        mode,
        data: data.to_owned(),
    }
}

fn dir(path: &str, mode: u32) -> Entry {
    Entry {
        path: path.to_owned(),
        kind: 'd',
        mode,
        data: String::new(),
    }
}

fn link(path: &str, target: &str) -> Entry {
    Entry {
        path: path.to_owned(),
        kind: 'l',
        mode: 0o777,
        data: target.to_owned(),
    }
}

/// Creates `files` (path, contents) under `root` with mode 0644 and their
/// directories with mode 0755.
fn tree(root: &Path, files: &[(&str, &str)]) {
    for (path, contents) in files {
        let path = root.join(path);
        let parent = path.parent().unwrap();
        fs::create_dir_all(parent).unwrap();
        fs::write(&path, contents).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
        let mut dir = parent;
        while dir != root {
            fs::set_permissions(dir, fs::Permissions::from_mode(0o755)).unwrap();
            dir = dir.parent().unwrap();
        }
    }
}

fn tar_of(root: &Path, extra: &[(String, Vec<u8>)]) -> Vec<u8> {
    let mut out = Vec::new();
    write_tar(root, extra, &mut out).unwrap();
    out
}

fn entries(tar: &[u8]) -> Vec<Entry> {
    let mut archive = tar::Archive::new(tar);
    let mut list = Vec::new();
    for entry in archive.entries().unwrap() {
        let mut entry = entry.unwrap();
        let header = entry.header();
        assert_eq!(header.uid().unwrap(), 0);
        assert_eq!(header.gid().unwrap(), 0);
        let kind = match header.entry_type() {
            tar::EntryType::Regular => 'f',
            tar::EntryType::Directory => 'd',
            tar::EntryType::Symlink => 'l',
            tar::EntryType::Fifo => 'p',
            other => panic!("unexpected entry type {other:?}"),
        };
        let mode = header.mode().unwrap();
        let path = entry.path().unwrap().to_string_lossy().into_owned();
        let data = match kind {
            'l' => entry
                .link_name()
                .unwrap()
                .unwrap()
                .to_string_lossy()
                .into_owned(),
            _ => {
                let mut data = String::new();
                entry.read_to_string(&mut data).unwrap();
                data
            }
        };
        list.push(Entry {
            path,
            kind,
            mode,
            data,
        });
    }
    list
}

/// The paths in the tar of a tree made of `files` and `.dockerignore`.
fn paths_with_ignore(ignore: &str, files: &[&str]) -> Vec<String> {
    let root = tempfile::tempdir().unwrap();
    let files: Vec<(&str, &str)> = files.iter().map(|path| (*path, "x")).collect();
    tree(root.path(), &files);
    fs::write(root.path().join(".dockerignore"), ignore).unwrap();
    entries(&tar_of(root.path(), &[]))
        .into_iter()
        .map(|entry| entry.path)
        .collect()
}

#[test]
fn files_dirs_and_symlinks_with_modes_in_sorted_order() {
    let root = tempfile::tempdir().unwrap();
    let root = root.path();
    tree(
        root,
        &[
            ("a/x", "ax"),
            ("a.txt", "a text"),
            ("B", "upper"),
            ("bin/run", "#!/bin/sh\n"),
            ("secret", "s"),
        ],
    );
    fs::set_permissions(root.join("bin/run"), fs::Permissions::from_mode(0o4755)).unwrap();
    fs::set_permissions(root.join("secret"), fs::Permissions::from_mode(0o600)).unwrap();
    fs::set_permissions(root.join("bin"), fs::Permissions::from_mode(0o750)).unwrap();
    symlink("a", root.join("to-dir")).unwrap();
    symlink("../../etc/passwd", root.join("outside")).unwrap();
    symlink("missing", root.join("dangling")).unwrap();

    assert_eq!(
        entries(&tar_of(root, &[])),
        [
            file("B", 0o644, "upper"),
            dir("a", 0o755),
            file("a/x", 0o644, "ax"),
            file("a.txt", 0o644, "a text"),
            dir("bin", 0o750),
            file("bin/run", 0o4755, "#!/bin/sh\n"),
            link("dangling", "missing"),
            link("outside", "../../etc/passwd"),
            file("secret", 0o600, "s"),
            link("to-dir", "a"),
        ]
    );
}

#[test]
fn modification_times_are_kept() {
    let root = tempfile::tempdir().unwrap();
    tree(root.path(), &[("sub/file", "x")]);
    let when = SystemTime::UNIX_EPOCH + Duration::from_secs(1_500_000_000);
    File::options()
        .write(true)
        .open(root.path().join("sub/file"))
        .unwrap()
        .set_times(FileTimes::new().set_modified(when))
        .unwrap();
    File::open(root.path().join("sub"))
        .unwrap()
        .set_times(FileTimes::new().set_modified(when + Duration::from_secs(7)))
        .unwrap();
    let tar = tar_of(root.path(), &[]);
    let mut archive = tar::Archive::new(tar.as_slice());
    let times: Vec<(String, u64)> = archive
        .entries()
        .unwrap()
        .map(|entry| {
            let entry = entry.unwrap();
            let path = entry.path().unwrap().to_string_lossy().into_owned();
            (path, entry.header().mtime().unwrap())
        })
        .collect();
    assert_eq!(
        times,
        [
            ("sub".to_owned(), 1_500_000_007),
            ("sub/file".to_owned(), 1_500_000_000)
        ]
    );
}

#[test]
fn the_same_directory_gives_the_same_bytes() {
    let root = tempfile::tempdir().unwrap();
    tree(
        root.path(),
        &[
            ("z", "1"),
            ("m/n/o", "2"),
            ("a", "3"),
            (".dockerignore", "z"),
        ],
    );
    let extra = [("Dockerfile".to_owned(), b"FROM scratch\n".to_vec())];
    assert_eq!(tar_of(root.path(), &extra), tar_of(root.path(), &extra));
}

#[test]
fn extra_files_come_last_and_replace_the_directory_copy() {
    let root = tempfile::tempdir().unwrap();
    tree(
        root.path(),
        &[
            ("Dockerfile", "FROM myorg/app_compile\n"),
            ("sub/Dockerfile.gen", "old"),
            ("z", "z"),
        ],
    );
    let extra = [
        (
            "Dockerfile".to_owned(),
            b"FROM myorg/app_compile-ab12\n".to_vec(),
        ),
        ("./sub//Dockerfile.gen".to_owned(), b"new".to_vec()),
    ];
    assert_eq!(
        entries(&tar_of(root.path(), &extra)),
        [
            dir("sub", 0o755),
            file("z", 0o644, "z"),
            file("Dockerfile", 0o644, "FROM myorg/app_compile-ab12\n"),
            file("sub/Dockerfile.gen", 0o644, "new"),
        ]
    );
}

#[test]
fn extra_files_stay_inside_the_context() {
    let root = tempfile::tempdir().unwrap();
    for name in ["../Dockerfile", "/etc/Dockerfile", "", ".", "a/../../b"] {
        let extra = [(name.to_owned(), Vec::new())];
        let error = write_tar(root.path(), &extra, Vec::new()).unwrap_err();
        assert!(
            matches!(&error, ContextError::ExtraName { name: got } if got == name),
            "{name:?}: {error}"
        );
    }
}

#[test]
fn ignore_any_depth_with_an_exception() {
    assert_eq!(
        paths_with_ignore(
            "**/*.log\n!keep.log\n",
            &[
                "a.log",
                "keep.log",
                "sub/b.log",
                "sub/keep.log",
                "sub/deep/c.log",
                "x.txt"
            ]
        ),
        [".dockerignore", "keep.log", "sub", "sub/deep", "x.txt"]
    );
}

#[test]
fn ignore_a_directory_and_everything_under_it() {
    assert_eq!(
        paths_with_ignore(
            "build/\n",
            &["build/out/app", "build/log", "src/build/keep", "buildfile"]
        ),
        [
            ".dockerignore",
            "buildfile",
            "src",
            "src/build",
            "src/build/keep"
        ]
    );
}

#[test]
fn ignore_leading_slash_comments_and_whitespace() {
    assert_eq!(
        paths_with_ignore(
            "# abs\n/abs\n\n   tmp  \n\t\n#keep\n # odd\n",
            &["abs", "sub/abs", "tmp", "keep", "# odd", "x"]
        ),
        [".dockerignore", "keep", "sub", "sub/abs", "x"]
    );
}

#[test]
fn ignore_lists_itself_but_is_still_sent() {
    assert_eq!(
        paths_with_ignore(".dockerignore\nDockerfile\n", &["Dockerfile", "a"]),
        [".dockerignore", "a"]
    );
    assert_eq!(
        paths_with_ignore("*\n", &["Dockerfile", "a"]),
        [".dockerignore"]
    );
}

#[test]
fn an_exception_inside_an_excluded_directory() {
    // The directory is walked for the exception, but its own entry stays
    // out, as with `docker build`.
    assert_eq!(
        paths_with_ignore(
            "docs\n!docs/README.md\n",
            &[
                "docs/README.md",
                "docs/other.md",
                "docs/sub/README.md",
                "README.md"
            ]
        ),
        [".dockerignore", "README.md", "docs/README.md"]
    );
    // An exception that does not start with the directory's path cannot
    // reach inside it.
    assert_eq!(
        paths_with_ignore("docs\n!**/README.md\n", &["docs/README.md", "README.md"]),
        [".dockerignore", "README.md"]
    );
    // Later lines win.
    assert_eq!(
        paths_with_ignore(
            "docs/*\n!docs/*.md\ndocs/secret.md\n",
            &["docs/a.md", "docs/b.txt", "docs/secret.md"]
        ),
        [".dockerignore", "docs", "docs/a.md"]
    );
}

#[test]
fn excluding_everything_except_some_paths() {
    assert_eq!(
        paths_with_ignore(
            "*\n!src\n!Dockerfile\nsrc/**/*.tmp\n",
            &[
                "Dockerfile",
                "src/main.rs",
                "src/a/b.tmp",
                "target/debug/app",
                "notes"
            ]
        ),
        [".dockerignore", "Dockerfile", "src", "src/a", "src/main.rs"]
    );
}

#[test]
fn invalid_patterns_name_the_file_and_line() {
    let root = tempfile::tempdir().unwrap();
    fs::write(root.path().join(".dockerignore"), "ok\n\n[z-a]\n").unwrap();
    let error = write_tar(root.path(), &[], Vec::new()).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "{}:3: invalid pattern `[z-a]`: a character range goes backwards",
            root.path().join(".dockerignore").display()
        )
    );
}

/// A `.dockerignore` that is a symlink is followed while it stays inside
/// the context; one that leads out (to `/etc/passwd`, or to `..`) is
/// refused, naming the file, the link and the fix, and nothing outside is
/// read.
#[test]
fn a_dockerignore_symlink_is_followed_only_inside_the_context() {
    let work = tempfile::tempdir().unwrap();
    let ctx = work.path().join("ctx");
    tree(
        &ctx,
        &[
            ("keep", "k"),
            ("drop.log", "d"),
            ("ignore/shared", "*.log\n"),
        ],
    );
    symlink("ignore/shared", ctx.join(".dockerignore")).unwrap();
    let names: Vec<String> = entries(&tar_of(&ctx, &[]))
        .into_iter()
        .map(|e| e.path)
        .collect();
    assert!(names.contains(&"keep".to_string()), "{names:?}");
    assert!(!names.contains(&"drop.log".to_string()), "{names:?}");

    fs::write(work.path().join("outside"), "keep\n").unwrap();
    for target in ["/etc/passwd", "../outside"] {
        fs::remove_file(ctx.join(".dockerignore")).unwrap();
        symlink(target, ctx.join(".dockerignore")).unwrap();
        let error = write_tar(&ctx, &[], Vec::new()).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                "cannot read `{0}/.dockerignore`: leads out of the build context through the symlink `.dockerignore` -> `{target}`; paths are resolved, not read: remove the symlink or point it to a file inside the build context `{0}`",
                ctx.display()
            )
        );
    }
}

/// A `.dockerignore` over the documented limit (4 MiB) is refused with
/// the file and the limit; one at the limit is read.
#[test]
fn a_dockerignore_over_the_limit_is_refused_naming_file_and_limit() {
    assert_eq!(MAX_DOCKERIGNORE_SIZE, 4 * 1024 * 1024);
    let root = tempfile::tempdir().unwrap();
    let limit = MAX_DOCKERIGNORE_SIZE as usize;
    fs::write(root.path().join(".dockerignore"), "#".repeat(limit)).unwrap();
    write_tar(root.path(), &[], Vec::new()).unwrap();
    fs::write(root.path().join(".dockerignore"), "#".repeat(limit + 1)).unwrap();
    let error = write_tar(root.path(), &[], Vec::new()).unwrap_err();
    assert!(matches!(error, ContextError::TooLarge { .. }), "{error}");
    assert_eq!(
        error.to_string(),
        format!(
            "`{}` is larger than 4194304 bytes, the limit for a `.dockerignore`; shorten it (one pattern such as `**/*.log` covers many files)",
            root.path().join(".dockerignore").display()
        )
    );
}

#[test]
fn unreadable_paths_are_named() {
    let root = tempfile::tempdir().unwrap();
    let missing = root.path().join("missing");
    let error = write_tar(&missing, &[], Vec::new()).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "cannot read `{}`: No such file or directory (os error 2)",
            missing.display()
        )
    );
    fs::create_dir(root.path().join(".dockerignore")).unwrap();
    let error = write_tar(root.path(), &[], Vec::new()).unwrap_err();
    assert_eq!(
        error.to_string(),
        format!(
            "cannot read `{}`: is not a regular file; name a file",
            root.path().join(".dockerignore").display()
        )
    );
}

#[test]
fn fifos_are_stored_without_being_read() {
    let root = tempfile::tempdir().unwrap();
    let status = std::process::Command::new("mkfifo")
        .arg(root.path().join("pipe"))
        .status()
        .unwrap();
    assert!(status.success());
    let listed = entries(&tar_of(root.path(), &[]));
    assert_eq!(listed.len(), 1);
    assert_eq!((listed[0].path.as_str(), listed[0].kind), ("pipe", 'p'));
}

/// A writer that fails once `limit` bytes were written.
struct Broken {
    limit: usize,
}

impl Write for Broken {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if buf.len() > self.limit {
            return Err(io::Error::new(io::ErrorKind::BrokenPipe, "closed"));
        }
        self.limit -= buf.len();
        Ok(buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn a_failing_writer_is_a_write_error() {
    let root = tempfile::tempdir().unwrap();
    tree(root.path(), &[("big", &"x".repeat(100_000))]);
    let error = write_tar(root.path(), &[], Broken { limit: 10_000 }).unwrap_err();
    assert_eq!(error.to_string(), "cannot write the build context: closed");
}

/// Derived from the cases of moby's patternmatcher and Go's filepath.Match:
/// (patterns, path, excluded).
#[test]
fn pattern_matcher_table() {
    let cases: &[(&[&str], &str, bool)] = &[
        (&["*"], "main.go", true),
        (&["*.go"], "main.go", true),
        (&["*.go"], "cmd/main.go", false),
        (&["!main.go", "*.go"], "main.go", true),
        (&["*.go", "!main.go"], "main.go", false),
        (&["docs", "!docs/README.md"], "docs/README.md", false),
        (&["docs/", "!docs/README.md"], "docs/README.md", false),
        (&["docs/*", "!docs/README.md"], "docs/README.md", false),
        (&["docs"], "docs/a/b/c", true),
        (&["*.go"], ".", false),
        (&[], "any/path", false),
        (&["**"], "file", true),
        (&["**"], "dir/file", true),
        (&["**/"], "dir/file", true),
        (&["**/**"], "dir/file", true),
        (&["dir/**"], "dir/file", true),
        (&["dir/**"], "dir/sub/file", true),
        (&["dir/**"], "dir", false),
        (&["**/dir"], "dir", true),
        (&["**/dir"], "a/dir/file", true),
        (&["**/dir2/*"], "dir/dir2/file", true),
        (&["**/dir2/**"], "dir/dir2/dir3/file", true),
        (&["**file"], "file", true),
        (&["**file"], "dir/dir/file", true),
        (&["**file"], "dir/myfile", true),
        (&["**/file"], "dir/myfile", false),
        (&["**/file*"], "dir/dir/file.txt", true),
        (&["**/file*txt"], "dir/dir/file.txt", true),
        (&["**/**/*.txt"], "file.txt", true),
        (&["**/**/*.txt2"], "dir/file.txt", false),
        (&["a**/*.txt"], "a/dir/dir/file.txt", true),
        (&["a**b"], "axb", false),
        (&["a**b"], "ax/b", true),
        (&["a/*.txt"], "a/dir/file.txt", false),
        (&["a/*.txt**"], "a/file.txt", true),
        (&["a[b-d]e"], "ace", true),
        (&["a[b-d]e"], "aae", false),
        (&["a[b-d]e"], "ae", false),
        (&["a[^b-d]e"], "aze", true),
        (&["a[^b-d]e"], "ace", false),
        (&[".*"], ".git", true),
        (&[".*"], "git", false),
        (&["abc.def"], "abcxdef", false),
        (&["abc?def"], "abc-def", true),
        (&["abc?def"], "abcdef", false),
        (&["a?b"], "a/b", false),
        (&["a*b"], "a/b", false),
        (&["a?b"], "a☺b", true),
        (&["[a-ζ]*"], "αβ", true),
        (&["*[a-ζ]"], "A", false),
        (&["a\\\\"], "a\\", true),
        (&["a\\*b"], "a*b", true),
        (&["a\\*b"], "axb", false),
        (&["[\\]a]"], "]", true),
        (&["[x\\-]"], "-", true),
        (&["[x\\-]"], "z", false),
        (&["a(b)c/def"], "a(b)c/def", true),
        (&["a.|)$(}+{bc"], "a.|)$(}+{bc", true),
        (&["**/.foo"], "x.foo", false),
        (&["**/foo/bar"], "dir/dir2/foo/bar", true),
        (&["dist/*.whl"], "dist/pkg-1.0+g1-py3-none-any.whl", true),
        (&["**", "!util/docker/web"], "util/docker/web/foo", false),
        (
            &["**", "!util/docker/web", "util/docker/web/foo"],
            "util/docker/web/foo",
            true,
        ),
        (&["/abs"], "abs", true),
        (&["./a/../b"], "b", true),
        (&["a/b/"], "a/b/c", true),
    ];
    for (patterns, path, excluded) in cases {
        let ignore = DockerIgnore::parse(&patterns.join("\n")).unwrap();
        assert_eq!(
            ignore.matches(path),
            *excluded,
            "patterns {patterns:?}, path {path:?}"
        );
    }
}

#[test]
fn malformed_patterns_are_rejected() {
    for (pattern, reason) in [
        ("[", "a character class is not closed"),
        ("a[", "a character class is not closed"),
        ("[^", "a character class is not closed"),
        ("[^bc", "a character class is not closed"),
        ("[]a]", "a character class is empty"),
        ("[-]", "a `-` in a character class must be escaped"),
        ("[x-]", "a character class is empty"),
        ("[a-b-c]", "a `-` in a character class must be escaped"),
        ("\\", "it ends with a backslash"),
        ("[Local-Only]/", "a character range goes backwards"),
        ("!", "`!` must be followed by a pattern"),
        ("! ", "`!` must be followed by a pattern"),
    ] {
        let error = DockerIgnore::parse(pattern).unwrap_err();
        assert_eq!(
            error.to_string(),
            format!(
                ".dockerignore:1: invalid pattern `{}`: {reason}",
                pattern.trim()
            ),
        );
    }
}

fn path_strategy() -> impl Strategy<Value = Vec<String>> {
    proptest::collection::vec("[a-c][a-c.]{0,2}", 1..5)
}

proptest! {
    #[test]
    fn a_path_matches_itself_and_wildcard_versions(parts in path_strategy(), star in 0usize..5) {
        let path = parts.join("/");
        let exact = DockerIgnore::parse(&path).unwrap();
        prop_assert!(exact.matches(&path));
        {
            let mut wild = parts.clone();
            let index = star % wild.len();
            wild[index] = "*".to_owned();
            prop_assert!(DockerIgnore::parse(&wild.join("/")).unwrap().matches(&path));
            let questions: Vec<String> =
                parts.iter().map(|part| "?".repeat(part.chars().count())).collect();
            prop_assert!(DockerIgnore::parse(&questions.join("/")).unwrap().matches(&path));
            let last = format!("**/{}", parts.last().unwrap());
            prop_assert!(DockerIgnore::parse(&last).unwrap().matches(&path));
            // A pattern for a parent directory excludes the path, and an
            // exception for the path itself brings it back.
            let parent = parts[..=index].join("/");
            let ignore = DockerIgnore::parse(&parent).unwrap();
            prop_assert!(ignore.matches(&path));
            let ignore = DockerIgnore::parse(&format!("{parent}\n!{path}")).unwrap();
            prop_assert!(!ignore.matches(&path));
            // Something else does not match.
            let longer = format!("{path}x");
            prop_assert!(!exact.matches(&longer));
        }
    }

    #[test]
    fn the_last_matching_line_wins(parts in path_strategy(), lines in 1usize..6) {
        let path = parts.join("/");
        let mut text = String::new();
        for line in 0..lines {
            if line % 2 == 1 {
                text.push('!');
            }
            text.push_str("**\n");
        }
        let ignore = DockerIgnore::parse(&text).unwrap();
        prop_assert_eq!(ignore.matches(&path), lines % 2 == 1);
    }
}

/// Security round 2: a symlinked directory that leads out of the context is
/// sent as a symlink; nothing beyond it is read.
#[test]
fn a_symlinked_directory_out_of_the_context_is_sent_as_a_symlink() {
    let root = tempfile::tempdir().unwrap();
    let outside = tempfile::tempdir().unwrap();
    tree(outside.path(), &[("secret", "not for the image")]);
    tree(root.path(), &[("f", "x")]);
    symlink(outside.path(), root.path().join("escape")).unwrap();
    symlink("..", root.path().join("up")).unwrap();
    let target = outside.path().to_str().unwrap();
    assert_eq!(
        entries(&tar_of(root.path(), &[])),
        [
            link("escape", target),
            file("f", 0o644, "x"),
            link("up", ".."),
        ]
    );
}
