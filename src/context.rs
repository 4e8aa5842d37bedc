//! The build context: a tar of a step's context directory, written to any
//! `Write` so it can be streamed into the build request. It honours the
//! directory's `.dockerignore` with the Docker CLI's semantics (moby's
//! `patternmatcher`), stores symlinks as symlinks, keeps file modes and
//! modification times, owns every entry by root, and lists entries in a
//! stable order (each directory's entries sorted by name), so the same
//! directory always gives the same tar. File contents are copied straight
//! from disk to the writer, never held in memory.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::fs::{self, File, Metadata};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};

/// The largest `.dockerignore` accepted, in bytes (4 MiB): it is read
/// into memory whole, and a real one is a few kilobytes.
pub const MAX_DOCKERIGNORE_SIZE: u64 = 4 * 1024 * 1024;

/// The name of the ignore file in a context directory.
const DOCKERIGNORE: &str = ".dockerignore";

/// Errors while writing a build context.
#[derive(Debug, thiserror::Error)]
pub enum ContextError {
    /// Reading a file or directory of the context failed.
    #[error("cannot read `{}`: {source}", path.display())]
    Io {
        /// The path that could not be read.
        path: PathBuf,
        /// The underlying error.
        source: io::Error,
    },
    /// Writing the tar failed (for example, the build request was closed).
    #[error("cannot write the build context: {source}")]
    Write {
        /// The underlying error.
        source: io::Error,
    },
    /// A file changed size or was replaced while it was being archived.
    #[error("`{}` changed while the build context was being written", path.display())]
    Changed {
        /// The file that changed.
        path: PathBuf,
    },
    /// A `.dockerignore` line is not a valid pattern.
    #[error("{}:{line}: invalid pattern `{pattern}`: {reason}", file.display())]
    Pattern {
        /// The ignore file.
        file: PathBuf,
        /// The 1-based line of the pattern.
        line: usize,
        /// The line as written, trimmed.
        pattern: String,
        /// What is wrong with it.
        reason: &'static str,
    },
    /// The `.dockerignore` file is larger than [`MAX_DOCKERIGNORE_SIZE`].
    #[error("`{}` is larger than {limit} bytes, the limit for a `.dockerignore`; shorten it (one pattern such as `**/*.log` covers many files)", path.display())]
    TooLarge {
        /// The ignore file.
        path: PathBuf,
        /// The limit.
        limit: u64,
    },
    /// A file to add to the context has a name that is not a relative path
    /// inside the context.
    #[error(
        "cannot add `{name}` to the build context: the name must be a relative path inside it"
    )]
    ExtraName {
        /// The name as given.
        name: String,
    },
}

/// Writes `dir` as a tar to `out`, honouring `dir/.dockerignore`, then
/// appends `extra_files` (name in the tar, contents). An extra file replaces
/// whatever the directory holds under the same name. Streams: memory use
/// does not grow with the size of the context.
///
/// As with the Docker CLI, `.dockerignore` itself is always sent, even when
/// it lists itself. Sockets are left out; other special files are stored as
/// headers only. Hard links are stored as separate files.
pub fn write_tar<W: Write>(
    dir: &Path,
    extra_files: &[(String, Vec<u8>)],
    out: W,
) -> Result<(), ContextError> {
    let mut extras = Vec::with_capacity(extra_files.len());
    for (name, data) in extra_files {
        let clean = clean(name);
        let escapes = clean.starts_with('/') || clean == "." || clean.split('/').any(|c| c == "..");
        if name.is_empty() || escapes {
            return Err(ContextError::ExtraName { name: name.clone() });
        }
        extras.push((clean, data));
    }
    let replaced: BTreeSet<&str> = extras.iter().map(|(name, _)| name.as_str()).collect();

    let mut ignore = read_dockerignore(dir)?;
    if ignore.matches(DOCKERIGNORE) {
        ignore.push_exception(DOCKERIGNORE);
    }

    let mut builder = tar::Builder::new(out);
    let mut walker = Walker {
        builder: &mut builder,
        ignore: &ignore,
        replaced: &replaced,
    };
    walker.walk(dir)?;

    for (name, data) in extras {
        let mut header = tar::Header::new_gnu();
        header.set_entry_type(tar::EntryType::Regular);
        header.set_size(data.len() as u64);
        header.set_mode(0o644);
        header.set_mtime(0);
        header.set_uid(0);
        header.set_gid(0);
        builder
            .append_data(&mut header, &name, data.as_slice())
            .map_err(|source| ContextError::Write { source })?;
    }
    builder
        .into_inner()
        .and_then(|mut out| out.flush())
        .map_err(|source| ContextError::Write { source })
}

/// Reads and parses `dir/.dockerignore`; no file means no patterns. It is
/// opened beneath `dir` (see `workpath::open_beneath`): a symlink
/// is followed only while it stays inside the context, and the file is
/// read up to [`MAX_DOCKERIGNORE_SIZE`].
pub fn read_dockerignore(dir: &Path) -> Result<DockerIgnore, ContextError> {
    match dockerignore_text(dir)? {
        Some(text) => parse_dockerignore(dir, &text),
        None => Ok(DockerIgnore::default()),
    }
}

/// The text of `dir/.dockerignore` (lossily decoded), opened and limited
/// as [`read_dockerignore`] says; `None` when there is none.
pub fn dockerignore_text(dir: &Path) -> Result<Option<String>, ContextError> {
    let path = dir.join(DOCKERIGNORE);
    let io = |source| ContextError::Io {
        path: path.clone(),
        source,
    };
    let file =
        match crate::workpath::open_beneath(dir, Path::new(DOCKERIGNORE), "the build context") {
            Ok(file) => file,
            Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(error) => return Err(io(error)),
        };
    let mut bytes = Vec::new();
    file.take(MAX_DOCKERIGNORE_SIZE + 1)
        .read_to_end(&mut bytes)
        .map_err(io)?;
    if bytes.len() as u64 > MAX_DOCKERIGNORE_SIZE {
        return Err(ContextError::TooLarge {
            path,
            limit: MAX_DOCKERIGNORE_SIZE,
        });
    }
    Ok(Some(String::from_utf8_lossy(&bytes).into_owned()))
}

/// Parses `text`, the `.dockerignore` of `dir`; errors name its path.
pub fn parse_dockerignore(dir: &Path, text: &str) -> Result<DockerIgnore, ContextError> {
    DockerIgnore::parse(text).map_err(|error| match error {
        ContextError::Pattern {
            line,
            pattern,
            reason,
            ..
        } => ContextError::Pattern {
            file: dir.join(DOCKERIGNORE),
            line,
            pattern,
            reason,
        },
        other => other,
    })
}

/// One directory being walked.
struct Frame {
    /// The directory on disk.
    path: PathBuf,
    /// Its path relative to the context root (lossily decoded for
    /// matching), empty for the root.
    rel: String,
    /// Its exact path in the tar.
    name: PathBuf,
    /// Which patterns the directory matched (see [`DockerIgnore::eval`]);
    /// `None` for the context root.
    matched: Option<Vec<bool>>,
    /// Its entries, sorted, not yet visited, last first.
    pending: Vec<OsString>,
}

struct Walker<'a, W: Write> {
    builder: &'a mut tar::Builder<W>,
    ignore: &'a DockerIgnore,
    replaced: &'a BTreeSet<&'a str>,
}

impl<W: Write> Walker<'_, W> {
    /// Walks `root` depth first, each directory's entries in byte order of
    /// their names, as Go's `filepath.WalkDir` (and so `docker build`) does.
    fn walk(&mut self, root: &Path) -> Result<(), ContextError> {
        let mut stack = vec![Frame {
            path: root.to_path_buf(),
            rel: String::new(),
            name: PathBuf::new(),
            matched: None,
            pending: read_dir_sorted(root)?,
        }];
        while let Some(frame) = stack.last_mut() {
            let Some(name) = frame.pending.pop() else {
                stack.pop();
                continue;
            };
            let path = frame.path.join(&name);
            let mut rel = frame.rel.clone();
            if !rel.is_empty() {
                rel.push('/');
            }
            rel.push_str(&String::from_utf8_lossy(name.as_bytes()));
            let name = frame.name.join(&name);
            if self.replaced.contains(rel.as_str()) {
                continue;
            }
            let meta = fs::symlink_metadata(&path).map_err(|source| ContextError::Io {
                path: path.clone(),
                source,
            })?;
            let (excluded, matched) = self.ignore.eval(&rel, frame.matched.as_deref());
            let is_dir = meta.file_type().is_dir();
            if excluded {
                // An excluded directory is still walked when an exception
                // pattern names something inside it; the directory entry
                // itself stays out, as with `docker build`.
                if !is_dir || !self.ignore.has_exception_under(&rel) {
                    continue;
                }
            } else {
                self.append(&path, &name, &meta)?;
            }
            if is_dir {
                let pending = read_dir_sorted(&path)?;
                stack.push(Frame {
                    path,
                    rel,
                    name,
                    matched: Some(matched),
                    pending,
                });
            }
        }
        Ok(())
    }

    fn append(&mut self, path: &Path, name: &Path, meta: &Metadata) -> Result<(), ContextError> {
        let file_type = meta.file_type();
        if file_type.is_socket() {
            return Ok(());
        }
        let write = |source| ContextError::Write { source };
        let mut header = tar::Header::new_gnu();
        header.set_metadata_in_mode(meta, tar::HeaderMode::Complete);
        header.set_mode(meta.mode() & 0o7777);
        header.set_mtime(meta.mtime().max(0) as u64);
        header.set_uid(0);
        header.set_gid(0);
        if file_type.is_symlink() {
            let target = fs::read_link(path).map_err(|source| ContextError::Io {
                path: path.to_path_buf(),
                source,
            })?;
            header.set_size(0);
            return self
                .builder
                .append_link(&mut header, name, &target)
                .map_err(write);
        }
        if !file_type.is_file() {
            header.set_size(0);
            if file_type.is_block_device() || file_type.is_char_device() {
                let (major, minor) = device_numbers(meta.rdev());
                header.set_device_major(major).map_err(write)?;
                header.set_device_minor(minor).map_err(write)?;
            }
            return self
                .builder
                .append_data(&mut header, name, io::empty())
                .map_err(write);
        }
        let io = |source| ContextError::Io {
            path: path.to_path_buf(),
            source,
        };
        let file = File::open(path).map_err(io)?;
        let opened = file.metadata().map_err(io)?;
        if !opened.file_type().is_file() || opened.ino() != meta.ino() || opened.dev() != meta.dev()
        {
            return Err(ContextError::Changed {
                path: path.to_path_buf(),
            });
        }
        let mut reader = ExactReader {
            file,
            remaining: meta.len(),
            error: None,
        };
        let result = self.builder.append_data(&mut header, name, &mut reader);
        match (result, reader.error) {
            (_, Some(ReadError::Io(source))) => Err(io(source)),
            (_, Some(ReadError::Changed)) => Err(ContextError::Changed {
                path: path.to_path_buf(),
            }),
            (Err(source), None) => Err(write(source)),
            (Ok(()), None) => Ok(()),
        }
    }
}

/// Linux's encoding of a device number (glibc's `major` and `minor`).
pub fn device_numbers(rdev: u64) -> (u32, u32) {
    let major = ((rdev >> 8) & 0xfff) | ((rdev >> 32) & !0xfff);
    let minor = (rdev & 0xff) | ((rdev >> 12) & !0xff);
    (major as u32, minor as u32)
}

fn read_dir_sorted(dir: &Path) -> Result<Vec<OsString>, ContextError> {
    sorted_names(dir).map_err(|source| ContextError::Io {
        path: dir.to_path_buf(),
        source,
    })
}

/// The names in `dir`, in reverse byte order: walkers pop them from the
/// end, so they come out sorted (the order Docker and fsutil walk in).
pub(crate) fn sorted_names(dir: &Path) -> io::Result<Vec<OsString>> {
    let mut names = Vec::new();
    for entry in fs::read_dir(dir)? {
        names.push(entry?.file_name());
    }
    names.sort_by(|a, b| b.as_bytes().cmp(a.as_bytes()));
    Ok(names)
}

enum ReadError {
    Io(io::Error),
    Changed,
}

/// Reads exactly `remaining` bytes of a file, and records whether a failure
/// came from reading (rather than from writing the tar) and whether the file
/// is shorter or longer than its header says.
struct ExactReader {
    file: File,
    remaining: u64,
    error: Option<ReadError>,
}

impl Read for ExactReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        // At the end, one more byte would mean the file grew after it was
        // stat'ed.
        let mut probe = [0u8; 1];
        let len = buf.len();
        let want = match usize::try_from(self.remaining) {
            Ok(0) => &mut probe[..],
            Ok(remaining) => &mut buf[..remaining.min(len)],
            Err(_) => buf,
        };
        let error = match self.file.read(want) {
            Ok(0) if self.remaining == 0 => return Ok(0),
            Ok(read) if self.remaining > 0 && read > 0 => {
                self.remaining -= read as u64;
                return Ok(read);
            }
            Ok(_) => ReadError::Changed,
            Err(error) if error.kind() == io::ErrorKind::Interrupted => return Err(error),
            Err(error) => ReadError::Io(error),
        };
        self.error = Some(error);
        Err(io::Error::other("reading a context file failed"))
    }
}

/// The patterns of a `.dockerignore` file, matched as the Docker CLI does
/// (moby's `patternmatcher` and `ignorefile`).
///
/// - Lines starting with `#` are comments; each other line is trimmed, and
///   empty lines are skipped. A UTF-8 byte order mark is ignored.
/// - Patterns are Go `filepath.Match` patterns (`*`, `?`, `[a-z]`, `[^a]`,
///   `\` escapes) on slash-separated paths relative to the context, cleaned
///   like Go's `filepath.Clean`; a leading `/` is dropped. `**` matches any
///   number of directories, including none.
/// - A pattern starting with `!` is an exception: it re-includes what
///   earlier patterns excluded. The last matching line wins.
/// - A pattern that matches a directory matches everything below it.
///
/// Inside a character class, `*` and `?` are plain characters here, as in
/// `filepath.Match` (moby turns them into regular-expression fragments,
/// which no one relies on).
#[derive(Debug, Clone, Default)]
pub struct DockerIgnore {
    patterns: Vec<Pattern>,
    /// Whether any pattern is an exception.
    exceptions: bool,
}

#[derive(Debug, Clone)]
struct Pattern {
    /// The cleaned pattern, without the `!`.
    text: String,
    exception: bool,
    matcher: Matcher,
}

/// How a pattern matches, following moby's match types.
#[derive(Debug, Clone)]
enum Matcher {
    /// No wildcard: the path equals the pattern.
    Exact(String),
    /// Literal text then a trailing `**`.
    Prefix(String),
    /// A leading `**` then literal text.
    Suffix(String),
    /// Everything else, as the regular expression moby builds.
    Tokens(Vec<Token>),
}

#[derive(Debug, Clone, PartialEq)]
enum Token {
    /// One character.
    Literal(char),
    /// `?`: one character other than `/`.
    One,
    /// `*`: any characters other than `/`.
    Star,
    /// `**` followed by more pattern: nothing, or anything ending in `/`.
    Dirs,
    /// `**` at the end: anything.
    Rest,
    /// `[...]`: one character in (or, negated, not in) the ranges.
    Class {
        negated: bool,
        ranges: Vec<(char, char)>,
    },
}

impl DockerIgnore {
    /// Parses the text of a `.dockerignore` file. Errors name the file as
    /// `.dockerignore`.
    pub fn parse(text: &str) -> Result<Self, ContextError> {
        let text = text.strip_prefix('\u{feff}').unwrap_or(text);
        let mut ignore = DockerIgnore::default();
        for (index, line) in text.split('\n').enumerate() {
            if line.starts_with('#') {
                continue;
            }
            let line = line.trim();
            if line.is_empty() {
                continue;
            }
            let error = |reason| ContextError::Pattern {
                file: PathBuf::from(DOCKERIGNORE),
                line: index + 1,
                pattern: line.to_owned(),
                reason,
            };
            ignore.push_line(line).map_err(error)?;
        }
        Ok(ignore)
    }

    /// Patterns given one by one, as BuildKit sends a `.dockerignore`'s
    /// lines (and its include patterns) to the client: the same syntax as
    /// a line of the file, without comments. Errors name `source` as the
    /// file and the pattern's 1-based position as the line.
    pub fn from_patterns<'a>(
        source: &str,
        patterns: impl IntoIterator<Item = &'a str>,
    ) -> Result<Self, ContextError> {
        let mut ignore = DockerIgnore::default();
        for (index, pattern) in patterns.into_iter().enumerate() {
            let line = pattern.trim();
            if line.is_empty() {
                continue;
            }
            ignore
                .push_line(line)
                .map_err(|reason| ContextError::Pattern {
                    file: PathBuf::from(source),
                    line: index + 1,
                    pattern: line.to_owned(),
                    reason,
                })?;
        }
        Ok(ignore)
    }

    /// Whether there are no patterns.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
    }

    /// Adds one trimmed, non-empty line.
    fn push_line(&mut self, line: &str) -> Result<(), &'static str> {
        let (exception, pattern) = match line.strip_prefix('!') {
            Some(rest) => (true, rest.trim()),
            None => (false, line),
        };
        if pattern.is_empty() {
            return Err("`!` must be followed by a pattern");
        }
        let mut pattern = clean(pattern);
        if pattern.len() > 1 && pattern.starts_with('/') {
            pattern.remove(0);
        }
        let matcher = compile(&pattern)?;
        self.exceptions |= exception;
        self.patterns.push(Pattern {
            text: pattern,
            exception,
            matcher,
        });
        Ok(())
    }

    /// The literal beginnings of the patterns that are not exceptions (the
    /// text before the first wildcard or escape): a directory whose path is
    /// not compatible with any of them holds nothing they match.
    pub fn literal_prefixes(&self) -> Vec<&str> {
        self.patterns
            .iter()
            .filter(|p| !p.exception)
            .map(|p| {
                let end = p.text.find(['*', '?', '[', '\\']).unwrap_or(p.text.len());
                &p.text[..end]
            })
            .collect()
    }

    /// Whether the slash-separated path `rel` (relative to the context) is
    /// left out of the context, taking its parent directories into account:
    /// what a pattern matching a directory excludes, an exception can
    /// re-include.
    pub fn matches(&self, rel: &str) -> bool {
        let rel = clean(rel);
        if rel == "." {
            return false;
        }
        let mut matched: Option<Vec<bool>> = None;
        let mut end = 0;
        while let Some(slash) = rel[end..].find('/') {
            end += slash;
            matched = Some(self.eval(&rel[..end], matched.as_deref()).1);
            end += 1;
        }
        self.eval(&rel, matched.as_deref()).0
    }

    fn push_exception(&mut self, path: &str) {
        self.exceptions = true;
        self.patterns.push(Pattern {
            text: path.to_owned(),
            exception: true,
            matcher: Matcher::Exact(path.to_owned()),
        });
    }

    /// Whether an exception pattern starts with `dir/`, so an excluded
    /// directory must still be walked (moby's literal prefix test).
    pub fn has_exception_under(&self, dir: &str) -> bool {
        self.exceptions
            && self.patterns.iter().any(|pattern| {
                pattern.exception && format!("{}/", pattern.text).starts_with(&format!("{dir}/"))
            })
    }

    /// Whether `path` is excluded, and which patterns it matched, given
    /// which patterns its parent directory matched (`None` when unknown:
    /// then every parent directory is tried). A path is inside every
    /// pattern its parent matched. Mirrors moby's
    /// `MatchesUsingParentResults`.
    pub fn eval(&self, path: &str, parent: Option<&[bool]>) -> (bool, Vec<bool>) {
        let mut excluded = false;
        let mut matched = vec![false; self.patterns.len()];
        for (index, pattern) in self.patterns.iter().enumerate() {
            let mut hit = parent.is_some_and(|parent| parent[index]);
            if !hit {
                // An exclusion cannot change an excluded path, nor an
                // exception an included one.
                if pattern.exception != excluded {
                    continue;
                }
                hit = pattern.matcher.matches(path);
                if !hit && parent.is_none() {
                    hit = path
                        .match_indices('/')
                        .any(|(slash, _)| pattern.matcher.matches(&path[..slash]));
                }
            }
            matched[index] = hit;
            if hit {
                excluded = !pattern.exception;
            }
        }
        (excluded, matched)
    }
}

impl Matcher {
    fn matches(&self, path: &str) -> bool {
        match self {
            Matcher::Exact(text) => path == text,
            Matcher::Prefix(prefix) => path.starts_with(prefix.as_str()),
            Matcher::Suffix(suffix) => {
                path.ends_with(suffix.as_str())
                    || suffix
                        .strip_prefix('/')
                        .is_some_and(|suffix| path == suffix)
            }
            Matcher::Tokens(tokens) => matches_tokens(tokens, path),
        }
    }
}

/// Whether `tokens` match all of `path`: dynamic programming over (token,
/// position), linear in each, so no pattern can make matching slow.
fn matches_tokens(tokens: &[Token], path: &str) -> bool {
    let path: Vec<char> = path.chars().collect();
    let len = path.len();
    // `next[j]`: the tokens after the current one match `path[j..]`.
    let mut next: Vec<bool> = (0..=len).map(|j| j == len).collect();
    let mut current = vec![false; len + 1];
    for token in tokens.iter().rev() {
        current[len] = matches!(token, Token::Star | Token::Dirs | Token::Rest) && next[len];
        // For `Dirs`: some `k >= j` has `path[k] == '/'`, no newline in
        // `path[j..=k]`, and `next[k + 1]`.
        let mut dirs_from = false;
        for j in (0..len).rev() {
            let c = path[j];
            current[j] = match token {
                Token::Literal(literal) => c == *literal && next[j + 1],
                Token::One => c != '/' && next[j + 1],
                Token::Class { negated, ranges } => {
                    let inside = ranges.iter().any(|(lo, hi)| (*lo..=*hi).contains(&c));
                    inside != *negated && next[j + 1]
                }
                Token::Star => next[j] || (c != '/' && current[j + 1]),
                Token::Rest => next[j] || (c != '\n' && current[j + 1]),
                Token::Dirs => {
                    dirs_from = c != '\n' && ((c == '/' && next[j + 1]) || dirs_from);
                    next[j] || dirs_from
                }
            };
        }
        std::mem::swap(&mut next, &mut current);
    }
    next[0]
}

/// Compiles a cleaned pattern the way moby does, after checking its syntax
/// as Go's `filepath.Match` does.
fn compile(pattern: &str) -> Result<Matcher, &'static str> {
    #[derive(PartialEq)]
    enum Kind {
        Exact,
        Prefix,
        Suffix,
        Tokens,
    }
    let chars: Vec<char> = pattern.chars().collect();
    let mut kind = Kind::Exact;
    let mut tokens = Vec::new();
    let mut index = 0;
    while index < chars.len() {
        let start = index;
        let c = chars[index];
        index += 1;
        match c {
            '*' if chars.get(index) == Some(&'*') => {
                index += 1;
                if chars.get(index) == Some(&'/') {
                    index += 1;
                }
                if index == chars.len() {
                    if kind == Kind::Exact {
                        kind = Kind::Prefix;
                    } else {
                        tokens.push(Token::Rest);
                        kind = Kind::Tokens;
                    }
                } else {
                    tokens.push(Token::Dirs);
                    kind = Kind::Tokens;
                }
                if start == 0 {
                    kind = Kind::Suffix;
                }
            }
            '*' => {
                tokens.push(Token::Star);
                kind = Kind::Tokens;
            }
            '?' => {
                tokens.push(Token::One);
                kind = Kind::Tokens;
            }
            '\\' => {
                let Some(&escaped) = chars.get(index) else {
                    return Err("it ends with a backslash");
                };
                index += 1;
                tokens.push(Token::Literal(escaped));
                kind = Kind::Tokens;
            }
            '[' => {
                let (class, end) = compile_class(&chars, index)?;
                tokens.push(class);
                index = end;
                kind = Kind::Tokens;
            }
            ']' => {
                tokens.push(Token::Literal(']'));
                kind = Kind::Tokens;
            }
            c => tokens.push(Token::Literal(c)),
        }
    }
    Ok(match kind {
        Kind::Exact => Matcher::Exact(pattern.to_owned()),
        Kind::Prefix => Matcher::Prefix(pattern[..pattern.len() - 2].to_owned()),
        Kind::Suffix => Matcher::Suffix(pattern[2..].to_owned()),
        Kind::Tokens => Matcher::Tokens(tokens),
    })
}

/// Compiles the character class starting after its `[` at `chars[index]`;
/// returns it and the index after its `]`.
fn compile_class(chars: &[char], mut index: usize) -> Result<(Token, usize), &'static str> {
    let negated = chars.get(index) == Some(&'^');
    if negated {
        index += 1;
    }
    let mut ranges = Vec::new();
    loop {
        if chars.get(index) == Some(&']') && !ranges.is_empty() {
            return Ok((Token::Class { negated, ranges }, index + 1));
        }
        let lo = class_char(chars, &mut index)?;
        let mut hi = lo;
        if chars.get(index) == Some(&'-') {
            index += 1;
            hi = class_char(chars, &mut index)?;
        }
        if lo > hi {
            return Err("a character range goes backwards");
        }
        ranges.push((lo, hi));
    }
}

/// One (possibly escaped) character of a character class.
fn class_char(chars: &[char], index: &mut usize) -> Result<char, &'static str> {
    match chars.get(*index) {
        None => Err("a character class is not closed"),
        Some('-') => Err("a `-` in a character class must be escaped"),
        Some(']') => Err("a character class is empty"),
        Some('\\') => {
            *index += 1;
            let escaped = chars.get(*index).ok_or("a character class is not closed")?;
            *index += 1;
            Ok(*escaped)
        }
        Some(c) => {
            *index += 1;
            Ok(*c)
        }
    }
}

/// Go's `path.Clean`: the shortest equivalent slash path.
pub fn clean(path: &str) -> String {
    let rooted = path.starts_with('/');
    let mut parts: Vec<&str> = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => match parts.last() {
                Some(&last) if last != ".." => {
                    parts.pop();
                }
                _ if rooted => {}
                _ => parts.push(".."),
            },
            part => parts.push(part),
        }
    }
    let joined = parts.join("/");
    match (rooted, joined.is_empty()) {
        (true, _) => format!("/{joined}"),
        (false, true) => ".".to_owned(),
        (false, false) => joined,
    }
}

#[cfg(test)]
mod tests {
    use super::{clean, ContextError, DockerIgnore};

    #[test]
    fn clean_like_go() {
        for (path, want) in [
            ("", "."),
            ("a/b/", "a/b"),
            ("./a//b", "a/b"),
            ("a/../b", "b"),
            ("../a", "../a"),
            ("a/../..", ".."),
            ("/../a", "/a"),
            ("/", "/"),
            ("**/", "**"),
        ] {
            assert_eq!(clean(path), want, "clean({path:?})");
        }
    }

    #[test]
    fn pattern_error_message() {
        let error = DockerIgnore::parse("ok\n# comment\n  [a-\n").unwrap_err();
        assert_eq!(
            error.to_string(),
            ".dockerignore:3: invalid pattern `[a-`: a character class is not closed"
        );
        let error = DockerIgnore::parse("!").unwrap_err();
        assert_eq!(
            error.to_string(),
            ".dockerignore:1: invalid pattern `!`: `!` must be followed by a pattern"
        );
    }

    #[test]
    fn other_error_messages() {
        let error = ContextError::ExtraName {
            name: "../Dockerfile".to_owned(),
        };
        assert_eq!(
            error.to_string(),
            "cannot add `../Dockerfile` to the build context: the name must be a relative path inside it"
        );
        let error = ContextError::TooLarge {
            path: "ctx/.dockerignore".into(),
            limit: 10,
        };
        assert_eq!(
            error.to_string(),
            "`ctx/.dockerignore` is larger than 10 bytes, the limit for a `.dockerignore`; shorten it (one pattern such as `**/*.log` covers many files)"
        );
        let error = ContextError::Changed {
            path: "ctx/big.bin".into(),
        };
        assert_eq!(
            error.to_string(),
            "`ctx/big.bin` changed while the build context was being written"
        );
    }
}
