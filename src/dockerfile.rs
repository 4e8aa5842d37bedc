//! Dockerfiles: parsing them the way Docker's own parser does (parser
//! directives, comments, line continuations with the chosen escape
//! character, here-documents, stages) and rewriting the references to other
//! steps' images — `FROM`, `COPY --from=` and `RUN --mount=…,from=` — to
//! those steps' unique image names. A rewrite changes only the image tokens:
//! every other byte, and so every line number, stays as the user wrote it.
//!
//! Dockerfiles are bytes, as for BuildKit: a file need not be UTF-8 (a
//! Latin-1 byte in a comment or a `LABEL` is common). Each byte that is not
//! part of valid UTF-8 is read as one byte that no rule of the parser gives
//! a meaning to (not a space, quote, escape or separator, as for Go's
//! parser, which sees the rune U+FFFD there), and is passed through a
//! rewrite unchanged. A message that quotes such text shows U+FFFD for it.
//!
//! This module also owns [`unique_name`], the image name a step gets when a
//! build runs with `--uid`.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use crate::model::Builder;

/// The largest Dockerfile accepted, in bytes. Dockerfiles come from the
/// build's work directory and are parsed before Docker sees them.
pub const MAX_DOCKERFILE_SIZE: usize = 4 * 1024 * 1024;

/// A Dockerfile with its references to other steps' images rewritten.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rewritten {
    /// The Dockerfile; it differs from the input only in image tokens.
    pub text: Vec<u8>,
    /// The step image names (keys of the map given to [`rewrite`]) that the
    /// Dockerfile refers to, each once, in order of first use.
    pub references: Vec<String>,
    /// The 1-based line of the instruction that first uses each of
    /// `references`, in the same order.
    pub lines: Vec<usize>,
}

/// One `FROM` instruction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FromLine {
    /// The 1-based line the instruction starts on.
    pub line: usize,
    /// The image (or earlier stage) as written, `ARG` references unexpanded.
    pub image: String,
    /// The stage name from `AS name`, lowercased as Docker does.
    pub stage: Option<String>,
}

/// A Dockerfile that cannot be parsed, with where the problem is.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{file}{}: {kind}", .line.map(|line| format!(":{line}")).unwrap_or_default())]
pub struct DockerfileError {
    /// The file name shown in the message; `Dockerfile` unless set with
    /// [`DockerfileError::in_file`].
    pub file: String,
    /// The 1-based line of the problem, when there is one.
    pub line: Option<usize>,
    /// What is wrong.
    pub kind: DockerfileErrorKind,
}

impl DockerfileError {
    /// Names the file in the message (by default `Dockerfile`).
    pub fn in_file(mut self, file: impl Into<String>) -> Self {
        self.file = file.into();
        self
    }

    fn new(line: Option<usize>, kind: DockerfileErrorKind) -> Self {
        DockerfileError {
            file: "Dockerfile".to_owned(),
            line,
            kind,
        }
    }
}

/// What is wrong with a Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DockerfileErrorKind {
    /// The file is larger than [`MAX_DOCKERFILE_SIZE`].
    #[error("the file is {size} bytes, more than the limit of {limit} bytes")]
    TooLarge {
        /// The size of the file.
        size: usize,
        /// The limit.
        limit: usize,
    },
    /// An `# escape=` parser directive names a character other than `\` or
    /// a backtick.
    #[error("invalid escape character `{0}`: use a backslash or a backtick")]
    InvalidEscape(String),
    /// A parser directive appears more than once.
    #[error("the `{0}` parser directive is given more than once")]
    DuplicateDirective(String),
    /// A `FROM` instruction without an image.
    #[error("FROM requires an image")]
    FromMissingImage,
    /// A `FROM` instruction whose arguments are not `IMAGE [AS NAME]`.
    #[error("FROM takes `IMAGE [AS NAME]`, found `{0}`")]
    FromArguments(String),
    /// A stage name that Docker rejects.
    #[error(
        "invalid build stage name `{0}`: it must start with a letter and contain \
         only letters, digits, `-`, `_` and `.`"
    )]
    InvalidStageName(String),
    /// A here-document whose terminating line never comes.
    #[error("here-document `{0}` is never terminated")]
    UnterminatedHeredoc(String),
    /// The file has no `FROM` instruction.
    #[error("no FROM instruction")]
    NoFrom,
}

/// The image name of a step built with `--uid`, following Go Habitus:
/// `-<uid>` is appended to the repository, the tag (and digest) are kept and
/// the whole name is lowercased. Without a uid (or with an empty one) the
/// name is returned unchanged.
///
/// The tag is what follows the last `:` after the last `/`, so a registry
/// port stays in place: `localhost:5000/app:1.0` with uid `ab12` becomes
/// `localhost:5000/app-ab12:1.0`.
pub fn unique_name(name: &str, uid: Option<&str>) -> String {
    let Some(uid) = uid.filter(|uid| !uid.is_empty()) else {
        return name.to_owned();
    };
    let (name_part, digest) = match name.find('@') {
        Some(at) => name.split_at(at),
        None => (name, ""),
    };
    let last_slash = name_part.rfind('/').map_or(0, |slash| slash + 1);
    let (repository, tag) = match name_part[last_slash..].rfind(':') {
        Some(colon) => name_part.split_at(last_slash + colon),
        None => (name_part, ""),
    };
    format!("{repository}-{uid}{tag}{digest}").to_lowercase()
}

/// A logical instruction of a Dockerfile, as the parser reads it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InstructionLine {
    /// The 1-based line the instruction starts on.
    pub line: usize,
    /// Its text: continuation lines joined without their escape
    /// character and newline, comments and blank lines among them left
    /// out, here-document bodies not included; U+FFFD for a byte that is
    /// not UTF-8.
    pub text: String,
}

/// Lists the logical instructions of a Dockerfile, in order.
pub fn instructions(src: impl AsRef<[u8]>) -> Result<Vec<InstructionLine>, DockerfileError> {
    let (lossy, parsed) = parse_bytes(src.as_ref())?;
    Ok(parsed
        .instructions
        .into_iter()
        .map(|instruction| InstructionLine {
            line: instruction.line,
            text: shown(instruction.text, lossy),
        })
        .collect())
}

/// Lists the `FROM` instructions of a Dockerfile.
pub fn from_images(src: impl AsRef<[u8]>) -> Result<Vec<FromLine>, DockerfileError> {
    let (lossy, parsed) = parse_bytes(src.as_ref())?;
    Ok(parsed
        .froms
        .into_iter()
        .map(|from| FromLine {
            image: shown(from.line.image, lossy),
            stage: from.line.stage.map(|stage| shown(stage, lossy)),
            ..from.line
        })
        .collect())
}

/// Rewrites every reference to a step image in `src`. `images` maps a step's
/// image name as written in build.yml to its unique name (see
/// [`unique_name`]). A reference matches a key exactly, or when one of them
/// has no tag and the other has the tag `latest`.
///
/// Rewritten are the image of `FROM`, the value of `COPY --from=` and the
/// `from=` field of `RUN --mount=`, unless the name is a build stage of the
/// same Dockerfile (`FROM` only sees earlier stages, as in Docker), a stage
/// index (`COPY --from=0`) or contains an `ARG` reference (`$`). Instructions
/// inside `ONBUILD` run in another build and are left alone.
pub fn rewrite(
    src: impl AsRef<[u8]>,
    images: &BTreeMap<String, String>,
) -> Result<Rewritten, DockerfileError> {
    let src = src.as_ref();
    let (_, parsed) = parse_bytes(src)?;
    let all_stages: BTreeSet<&str> = parsed
        .froms
        .iter()
        .filter_map(|from| from.line.stage.as_deref())
        .collect();
    let mut edits: Vec<(Range<usize>, String)> = Vec::new();
    let mut references: Vec<String> = Vec::new();
    let mut lines: Vec<usize> = Vec::new();
    let mut use_image = |reference: &str, raw: &Instruction, range: Range<usize>| {
        if reference.contains('$') {
            return;
        }
        if let Some((key, unique)) = lookup(images, reference) {
            raw.replace(range, unique, &mut edits);
            if !references.contains(key) {
                references.push(key.clone());
                lines.push(raw.line);
            }
        }
    };

    let mut earlier_stages: BTreeSet<&str> = BTreeSet::new();
    let mut froms = parsed.froms.iter().peekable();
    for (index, instruction) in parsed.instructions.iter().enumerate() {
        let command = split_command(&instruction.text, parsed.escape);
        match command.name.to_ascii_lowercase().as_str() {
            "from" => {
                let from = froms.next().filter(|from| from.instruction == index);
                let Some(from) = from else { continue };
                let image = &from.line.image;
                if !earlier_stages.contains(image.to_lowercase().as_str()) {
                    use_image(image, instruction, from.image.clone());
                }
                if let Some(stage) = &from.line.stage {
                    earlier_stages.insert(stage);
                }
            }
            "copy" => {
                for flag in command.flags.iter().filter(|flag| flag.name == "from") {
                    let Some((value, range)) = flag.plain_value(&instruction.text) else {
                        continue;
                    };
                    if !is_stage_index(value) && !all_stages.contains(value.to_lowercase().as_str())
                    {
                        use_image(value, instruction, range);
                    }
                }
            }
            "run" => {
                for flag in command.flags.iter().filter(|flag| flag.name == "mount") {
                    let Some((value, range)) = flag.plain_value(&instruction.text) else {
                        continue;
                    };
                    if let Some((from, offset)) = mount_from(value) {
                        let start = range.start + offset;
                        if !all_stages.contains(from.to_lowercase().as_str()) {
                            use_image(from, instruction, start..start + from.len());
                        }
                    }
                }
            }
            _ => {}
        }
    }

    edits.sort_by_key(|(range, _)| range.start);
    let mut text = Vec::with_capacity(src.len());
    let mut done = 0;
    for (range, replacement) in edits {
        text.extend_from_slice(&src[done..range.start]);
        text.extend_from_slice(replacement.as_bytes());
        done = range.end;
    }
    text.extend_from_slice(&src[done..]);
    Ok(Rewritten {
        text,
        references,
        lines,
    })
}

/// Whether a Dockerfile can be appended to others in one file: it has no
/// parser directive, starts with `FROM` (no `ARG` before it, which would
/// belong to the stage before) and names no stage by index (`COPY
/// --from=0` would point elsewhere once stages come before it).
pub fn appendable(src: impl AsRef<[u8]>) -> Result<bool, DockerfileError> {
    let (_, parsed) = parse_bytes(src.as_ref())?;
    if parsed.directives || parsed.froms.first().is_none_or(|f| f.instruction != 0) {
        return Ok(false);
    }
    for instruction in &parsed.instructions {
        let command = split_command(&instruction.text, parsed.escape);
        for flag in &command.flags {
            let value = flag.value.as_deref().unwrap_or("");
            let index = match (
                command.name.to_ascii_lowercase().as_str(),
                flag.name.as_str(),
            ) {
                ("copy", "from") => is_stage_index(value),
                ("run", "mount") => value
                    .split(',')
                    .filter_map(|f| f.split_once('='))
                    .any(|(k, v)| k.eq_ignore_ascii_case("from") && is_stage_index(v)),
                _ => false,
            };
            if index {
                return Ok(false);
            }
        }
    }
    Ok(true)
}

/// Names the one stage of a single-stage Dockerfile `alias` (`FROM image`
/// becomes `FROM image AS alias`); `None` if it has several stages or its
/// stage already has a name.
pub fn name_single_stage(
    src: impl AsRef<[u8]>,
    alias: &str,
) -> Result<Option<Vec<u8>>, DockerfileError> {
    let src = src.as_ref();
    let (_, parsed) = parse_bytes(src)?;
    let [from] = parsed.froms.as_slice() else {
        return Ok(None);
    };
    if from.line.stage.is_some() {
        return Ok(None);
    }
    let instruction = &parsed.instructions[from.instruction];
    let end = instruction.offsets[from.image.end - 1] + 1;
    let mut named = src[..end].to_vec();
    named.extend_from_slice(format!(" AS {alias}").as_bytes());
    named.extend_from_slice(&src[end..]);
    Ok(Some(named))
}

/// A `RUN --mount=type=secret` of a Dockerfile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SecretMount {
    /// The 1-based line of the `RUN`.
    pub line: usize,
    /// The secret's id: `id=`, else the last part of `target=` (as BuildKit
    /// decides); `None` when it holds an `ARG` reference.
    pub id: Option<String>,
}

/// Lists the secret mounts of the `RUN` instructions of `src` (not those
/// inside `ONBUILD`).
pub fn secret_mounts(src: impl AsRef<[u8]>) -> Result<Vec<SecretMount>, DockerfileError> {
    Ok(run_mounts(src.as_ref(), "secret")?
        .into_iter()
        .map(|(line, fields)| {
            let target = ["target", "dst", "destination"]
                .iter()
                .find_map(|k| fields.get(*k).cloned());
            let id = match fields.get("id").filter(|id| !id.is_empty()) {
                Some(id) => Some(id.clone()),
                None => target
                    .as_deref()
                    .map(|t| t.trim_end_matches('/'))
                    .map(|t| t.rsplit('/').next().unwrap_or(t).to_string())
                    .filter(|id| !id.is_empty()),
            };
            SecretMount {
                line,
                id: id.filter(|id| !id.contains('$')),
            }
        })
        .collect())
}

/// The lines of the `RUN --mount=type=ssh` of `src`, with the agent id
/// each asks for (`default` without `id=`).
pub fn ssh_mounts(src: impl AsRef<[u8]>) -> Result<Vec<(usize, String)>, DockerfileError> {
    Ok(run_mounts(src.as_ref(), "ssh")?
        .into_iter()
        .map(|(line, fields)| {
            let id = fields
                .get("id")
                .filter(|id| !id.is_empty())
                .cloned()
                .unwrap_or_else(|| "default".to_string());
            (line, id)
        })
        .collect())
}

/// The instruction that declares a variable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VariableKind {
    /// `ARG`: a build arg, recorded in the image history by the `RUN`s
    /// that see it.
    Arg,
    /// `ENV`: a variable of the image config.
    Env,
}

impl VariableKind {
    /// `ARG` or `ENV`.
    pub fn keyword(self) -> &'static str {
        match self {
            VariableKind::Arg => "ARG",
            VariableKind::Env => "ENV",
        }
    }
}

/// A variable that an `ARG` or `ENV` instruction declares.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Declaration {
    /// The 1-based line the instruction starts on.
    pub line: usize,
    pub kind: VariableKind,
    /// The name as written, quotes removed.
    pub name: String,
}

/// Lists the variables the `ARG` and `ENV` instructions of `src` declare
/// (`ARG A B=1`, `ENV A=1 B="x y"`, the old `ENV A value`), in file order;
/// not those inside `ONBUILD`, nor names built from other variables.
pub fn declarations(src: impl AsRef<[u8]>) -> Result<Vec<Declaration>, DockerfileError> {
    let (lossy, parsed) = parse_bytes(src.as_ref())?;
    let mut out = Vec::new();
    for instruction in &parsed.instructions {
        let command = split_command(&instruction.text, parsed.escape);
        let kind = if command.name.eq_ignore_ascii_case("arg") {
            VariableKind::Arg
        } else if command.name.eq_ignore_ascii_case("env") {
            VariableKind::Env
        } else {
            continue;
        };
        let words = shell_words(&instruction.text[command.rest.clone()]);
        // `ENV NAME value with spaces`: the first word alone is the name.
        let legacy = kind == VariableKind::Env && words.first().is_some_and(|w| !w.contains('='));
        let names = if legacy { &words[..1] } else { &words[..] };
        for word in names {
            let name = unquote(word.split_once('=').map_or(word, |(name, _)| name));
            if !name.is_empty() && !name.contains('$') {
                out.push(Declaration {
                    line: instruction.line,
                    kind,
                    name: shown(name, lossy),
                });
            }
        }
    }
    Ok(out)
}

/// The fields of one `--mount` value (keys lowercased, quotes removed).
type MountFields = std::collections::HashMap<String, String>;

/// The `--mount` flags of type `kind` of the `RUN` instructions of `src`,
/// with their line.
fn run_mounts(src: &[u8], kind: &str) -> Result<Vec<(usize, MountFields)>, DockerfileError> {
    let (lossy, parsed) = parse_bytes(src)?;
    let mut out = Vec::new();
    for instruction in &parsed.instructions {
        let command = split_command(&instruction.text, parsed.escape);
        if !command.name.eq_ignore_ascii_case("run") {
            continue;
        }
        for flag in command.flags.iter().filter(|flag| flag.name == "mount") {
            let Some((value, _)) = flag.plain_value(&instruction.text) else {
                continue;
            };
            let mut fields = std::collections::HashMap::new();
            for field in value.split(',') {
                let (key, val) = field.split_once('=').unwrap_or((field, ""));
                fields.insert(
                    key.trim().to_ascii_lowercase(),
                    shown(val.trim().trim_matches('"').to_string(), lossy),
                );
            }
            if fields.get("type").map(String::as_str) == Some(kind) {
                out.push((instruction.line, fields));
            }
        }
    }
    Ok(out)
}

/// The key of `images` that `reference` names, and its unique name.
fn lookup<'a>(
    images: &'a BTreeMap<String, String>,
    reference: &str,
) -> Option<(&'a String, &'a String)> {
    if let Some(found) = images.get_key_value(reference) {
        return Some(found);
    }
    let wanted = with_latest(reference);
    images.iter().find(|(key, _)| with_latest(key) == wanted)
}

/// `name` with the tag `latest` added when it has neither tag nor digest.
fn with_latest(name: &str) -> String {
    let last = &name[name.rfind('/').map_or(0, |slash| slash + 1)..];
    if name.contains('@') || last.contains(':') {
        name.to_owned()
    } else {
        format!("{name}:latest")
    }
}

/// Whether a `--from` value is a stage index (Go's `strconv.Atoi` accepts a
/// sign).
fn is_stage_index(value: &str) -> bool {
    let digits = value.strip_prefix(['+', '-']).unwrap_or(value);
    !digits.is_empty() && digits.bytes().all(|byte| byte.is_ascii_digit())
}

/// The `from=` field of a `--mount` value and its byte offset in the value.
/// Fields with CSV quoting are not rewritten.
fn mount_from(value: &str) -> Option<(&str, usize)> {
    if value.contains('"') {
        return None;
    }
    let mut offset = 0;
    for field in value.split(',') {
        if let Some((key, image)) = field.split_once('=') {
            if key.eq_ignore_ascii_case("from") && !image.is_empty() {
                return Some((image, offset + key.len() + 1));
            }
        }
        offset += field.len() + 1;
    }
    None
}

/// A logical instruction: its physical lines joined, continuations removed.
#[derive(Debug)]
struct Instruction {
    /// The 1-based line the instruction starts on.
    line: usize,
    /// The instruction text without comments and continuation characters.
    text: String,
    /// For each byte of `text`, its byte offset in the source.
    /// Invariant: `offsets.len() == text.len()`.
    offsets: Vec<usize>,
}

impl Instruction {
    fn push(&mut self, part: &str, offset: usize) {
        self.text.push_str(part);
        self.offsets.extend(offset..offset + part.len());
        debug_assert_eq!(self.text.len(), self.offsets.len());
    }

    /// Adds to `edits` the source changes that replace `range` of the text
    /// with `replacement`.
    ///
    /// When a token is split by line continuations, the pieces before the
    /// last physical line are removed and the last piece is replaced, so
    /// each continuation line keeps its escape character and no line is
    /// added or removed.
    fn replace(
        &self,
        range: Range<usize>,
        replacement: &str,
        edits: &mut Vec<(Range<usize>, String)>,
    ) {
        debug_assert!(!range.is_empty());
        let mut start = range.start;
        for index in range.start + 1..range.end {
            if self.offsets[index - 1] + 1 != self.offsets[index] {
                edits.push((
                    self.offsets[start]..self.offsets[index - 1] + 1,
                    String::new(),
                ));
                start = index;
            }
        }
        let end = self.offsets[range.end - 1] + 1;
        edits.push((self.offsets[start]..end, replacement.to_owned()));
    }
}

struct ParsedFrom {
    /// The index of the instruction in [`Parsed::instructions`].
    instruction: usize,
    line: FromLine,
    /// The range of the image in the instruction text.
    image: Range<usize>,
}

struct Parsed {
    instructions: Vec<Instruction>,
    froms: Vec<ParsedFrom>,
    escape: u8,
    /// The file starts with parser directives (`# syntax=`, `# escape=`).
    directives: bool,
}

/// Parser directives are read from the top comment lines until the first
/// line that is not one.
struct Directives {
    done: bool,
    seen: BTreeSet<String>,
    escape: u8,
}

impl Directives {
    fn line(&mut self, line: &str, number: usize) -> Result<(), DockerfileError> {
        if self.done {
            return Ok(());
        }
        let Some(body) = line.strip_prefix('#') else {
            self.done = true;
            return Ok(());
        };
        let body = body.trim_start();
        let Some((key, value)) = body.split_once('=') else {
            self.done = true;
            return Ok(());
        };
        let key = key.trim_end();
        let value = value.trim();
        let valid_key = key.starts_with(|c: char| c.is_ascii_alphabetic())
            && key.chars().all(|c| c.is_ascii_alphanumeric());
        let key = key.to_ascii_lowercase();
        if !valid_key || value.is_empty() || !["syntax", "escape", "check"].contains(&&*key) {
            self.done = true;
            return Ok(());
        }
        if !self.seen.insert(key.clone()) {
            return Err(DockerfileError::new(
                Some(number),
                DockerfileErrorKind::DuplicateDirective(key),
            ));
        }
        if key == "escape" {
            self.escape = match value {
                "\\" => b'\\',
                "`" => b'`',
                _ => {
                    return Err(DockerfileError::new(
                        Some(number),
                        DockerfileErrorKind::InvalidEscape(value.to_owned()),
                    ))
                }
            };
        }
        Ok(())
    }
}

fn trim_newline(line: &str) -> &str {
    line.trim_end_matches(['\r', '\n'])
}

fn is_comment(line: &str) -> bool {
    line.trim_start().starts_with('#')
}

/// Removes a trailing escape character (plus spaces and tabs after it) that
/// continues the line; an escaped escape character does not.
fn trim_continuation(line: &str, escape: u8) -> (&str, bool) {
    let trimmed = line.trim_end_matches([' ', '\t']);
    let bytes = trimmed.as_bytes();
    match bytes.split_last() {
        Some((&last, rest)) if last == escape && rest.last() != Some(&escape) => {
            (&trimmed[..rest.len()], false)
        }
        _ => (line, true),
    }
}

/// The byte that stands for a byte of `src` outside valid UTF-8 in the
/// text the parser reads: DEL, which no rule of the parser gives a meaning
/// to, as Go's parser gives none to U+FFFD. One byte for one byte, so that
/// every offset in the text is the same offset in `src`.
const NOT_UTF8: char = '\u{7f}';

/// Parses the bytes of a Dockerfile (see [`parse`]); the flag says whether
/// some were not UTF-8, and so are [`NOT_UTF8`] in the parsed text.
fn parse_bytes(src: &[u8]) -> Result<(bool, Parsed), DockerfileError> {
    if let Ok(text) = std::str::from_utf8(src) {
        return Ok((false, parse(text)?));
    }
    let mut text = String::with_capacity(src.len());
    for chunk in src.utf8_chunks() {
        text.push_str(chunk.valid());
        text.extend(std::iter::repeat_n(NOT_UTF8, chunk.invalid().len()));
    }
    debug_assert_eq!(text.len(), src.len());
    parse(&text).map(|parsed| (true, parsed)).map_err(|mut e| {
        e.kind = match e.kind {
            DockerfileErrorKind::InvalidEscape(v) => {
                DockerfileErrorKind::InvalidEscape(shown(v, true))
            }
            DockerfileErrorKind::FromArguments(v) => {
                DockerfileErrorKind::FromArguments(shown(v, true))
            }
            DockerfileErrorKind::InvalidStageName(v) => {
                DockerfileErrorKind::InvalidStageName(shown(v, true))
            }
            DockerfileErrorKind::UnterminatedHeredoc(v) => {
                DockerfileErrorKind::UnterminatedHeredoc(shown(v, true))
            }
            kind => kind,
        };
        e
    })
}

/// `text` from a parse, as a message shows it: when the file was not all
/// UTF-8 (`lossy`), U+FFFD where it was not, as `String::from_utf8_lossy`
/// shows a byte.
fn shown(text: String, lossy: bool) -> String {
    if lossy && text.contains(NOT_UTF8) {
        text.replace(NOT_UTF8, "\u{fffd}")
    } else {
        text
    }
}

/// Parses a Dockerfile into its logical instructions and its `FROM`
/// instructions, as Docker's parser reads them.
fn parse(src: &str) -> Result<Parsed, DockerfileError> {
    if src.len() > MAX_DOCKERFILE_SIZE {
        return Err(DockerfileError::new(
            None,
            DockerfileErrorKind::TooLarge {
                size: src.len(),
                limit: MAX_DOCKERFILE_SIZE,
            },
        ));
    }
    let mut lines = Lines::new(src);
    let mut instructions = Vec::new();
    while let Some(instruction) = lines.instruction()? {
        lines.skip_heredocs(&instruction)?;
        instructions.push(instruction);
    }
    let escape = lines.directives.escape;
    let froms = parse_froms(&instructions, escape)?;
    Ok(Parsed {
        instructions,
        froms,
        escape,
        directives: !lines.directives.seen.is_empty(),
    })
}

/// The physical lines of a Dockerfile, read one instruction at a time,
/// with the parser directives met on the way.
struct Lines<'a> {
    /// Each line (newline included) with its byte offset in the source.
    lines: Vec<(usize, &'a str)>,
    /// The index of the next line to read, which is also the 1-based
    /// number of the last line read.
    next: usize,
    directives: Directives,
}

impl<'a> Lines<'a> {
    /// The lines of `src`, a leading byte order mark skipped.
    fn new(src: &'a str) -> Self {
        let mut lines: Vec<(usize, &str)> = Vec::new();
        let mut offset = 0;
        for line in src.split_inclusive('\n') {
            lines.push((offset, line));
            offset += line.len();
        }
        if let Some((offset, first)) = lines.first_mut() {
            if let Some(rest) = first.strip_prefix('\u{feff}') {
                *offset += '\u{feff}'.len_utf8();
                *first = rest;
            }
        }
        Lines {
            lines,
            next: 0,
            directives: Directives {
                done: false,
                seen: BTreeSet::new(),
                escape: b'\\',
            },
        }
    }

    /// The next instruction, its continuation lines joined (comments and
    /// blank lines before it skipped); `None` at the end of the file.
    fn instruction(&mut self) -> Result<Option<Instruction>, DockerfileError> {
        while self.next < self.lines.len() {
            let (offset, raw) = self.lines[self.next];
            self.next += 1;
            let line = trim_newline(raw);
            let content = line.trim_start();
            let offset = offset + (line.len() - content.len());
            self.directives.line(content, self.next)?;
            let content = if is_comment(content) { "" } else { content };
            let (content, end_of_line) = trim_continuation(content, self.directives.escape);
            if end_of_line && content.is_empty() {
                continue;
            }
            let mut instruction = Instruction {
                line: self.next,
                text: String::new(),
                offsets: Vec::new(),
            };
            instruction.push(content, offset);
            if !end_of_line {
                self.continue_instruction(&mut instruction)?;
            }
            return Ok(Some(instruction));
        }
        Ok(None)
    }

    /// Appends the continuation lines of `instruction` up to the one that
    /// ends it; comment and blank lines among them are skipped.
    fn continue_instruction(
        &mut self,
        instruction: &mut Instruction,
    ) -> Result<(), DockerfileError> {
        while self.next < self.lines.len() {
            let (offset, raw) = self.lines[self.next];
            self.next += 1;
            let line = trim_newline(raw);
            self.directives.line(line, self.next)?;
            if is_comment(line) || line.trim_start().is_empty() {
                continue;
            }
            let (content, end_of_line) = trim_continuation(line, self.directives.escape);
            instruction.push(content, offset);
            if end_of_line {
                break;
            }
        }
        Ok(())
    }

    /// Skips the bodies of the here-documents `instruction` opens, each up
    /// to its terminating line.
    fn skip_heredocs(&mut self, instruction: &Instruction) -> Result<(), DockerfileError> {
        for name in heredocs(&instruction.text, self.directives.escape) {
            loop {
                let Some((_, raw)) = self.lines.get(self.next) else {
                    return Err(DockerfileError::new(
                        Some(instruction.line),
                        DockerfileErrorKind::UnterminatedHeredoc(name.name),
                    ));
                };
                self.next += 1;
                let line = trim_newline(raw);
                let line = if name.chomp {
                    line.trim_start_matches('\t')
                } else {
                    line
                };
                if line == name.name {
                    break;
                }
            }
        }
        Ok(())
    }
}

/// The `FROM` instructions among `instructions`; a Dockerfile needs one.
fn parse_froms(
    instructions: &[Instruction],
    escape: u8,
) -> Result<Vec<ParsedFrom>, DockerfileError> {
    let mut froms = Vec::new();
    for (index, instruction) in instructions.iter().enumerate() {
        let command = split_command(&instruction.text, escape);
        if command.name.eq_ignore_ascii_case("from") {
            froms.push(parse_from(index, instruction, &command)?);
        }
    }
    if froms.is_empty() {
        return Err(DockerfileError::new(None, DockerfileErrorKind::NoFrom));
    }
    Ok(froms)
}

/// The image and stage name of `FROM IMAGE [AS NAME]`, instruction `index`.
fn parse_from(
    index: usize,
    instruction: &Instruction,
    command: &Command<'_>,
) -> Result<ParsedFrom, DockerfileError> {
    let error = |kind| Err(DockerfileError::new(Some(instruction.line), kind));
    let words = split_whitespace(&instruction.text, command.rest.clone());
    let word = |n: usize| &instruction.text[words[n].clone()];
    let stage = match words.len() {
        0 => return error(DockerfileErrorKind::FromMissingImage),
        1 => None,
        3 if word(1).eq_ignore_ascii_case("as") => {
            let stage = word(2).to_lowercase();
            if !is_valid_stage_name(&stage) {
                return error(DockerfileErrorKind::InvalidStageName(word(2).to_owned()));
            }
            Some(stage)
        }
        _ => {
            let args = instruction.text[command.rest.clone()].to_owned();
            return error(DockerfileErrorKind::FromArguments(args));
        }
    };
    Ok(ParsedFrom {
        instruction: index,
        line: FromLine {
            line: instruction.line,
            image: word(0).to_owned(),
            stage,
        },
        image: words[0].clone(),
    })
}

/// Docker's rule for stage names (after lowercasing): `^[a-z][a-z0-9-_.]*$`.
fn is_valid_stage_name(name: &str) -> bool {
    let mut chars = name.chars();
    chars.next().is_some_and(|c| c.is_ascii_lowercase())
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || "-_.".contains(c))
}

/// The characters Docker splits instruction arguments on.
fn is_separator(byte: u8) -> bool {
    matches!(byte, b'\t' | 0x0b | 0x0c | b'\r' | b' ')
}

/// ASCII whitespace as Go's `unicode.IsSpace` sees it (with `\v`).
fn is_space(byte: u8) -> bool {
    is_separator(byte) || byte == b'\n'
}

/// The whitespace-separated words of `text[range]`, as ranges of `text`.
fn split_whitespace(text: &str, range: Range<usize>) -> Vec<Range<usize>> {
    let bytes = text.as_bytes();
    let mut words = Vec::new();
    let mut index = range.start;
    while index < range.end {
        if is_separator(bytes[index]) {
            index += 1;
            continue;
        }
        let start = index;
        while index < range.end && !is_separator(bytes[index]) {
            index += 1;
        }
        words.push(start..index);
    }
    words
}

/// A `--name=value` flag before an instruction's arguments.
#[derive(Debug)]
struct Flag {
    /// The flag name, without `--`.
    name: String,
    /// The value after `=`, with quotes and escapes removed.
    value: Option<String>,
    /// The range of the value in the instruction text, quotes included.
    raw_value: Range<usize>,
}

impl Flag {
    /// The value and its range, when the text holds it unescaped, either
    /// bare or in one pair of quotes, so that replacing the range replaces
    /// exactly the value.
    fn plain_value<'a>(&'a self, text: &str) -> Option<(&'a str, Range<usize>)> {
        let value = self.value.as_deref()?;
        let raw = &text[self.raw_value.clone()];
        if value.is_empty() {
            return None;
        }
        if raw == value {
            return Some((value, self.raw_value.clone()));
        }
        let quoted = raw.len() == value.len() + 2
            && (raw.starts_with('"') && raw.ends_with('"')
                || raw.starts_with('\'') && raw.ends_with('\''))
            && raw[1..raw.len() - 1] == *value;
        quoted.then(|| (value, self.raw_value.start + 1..self.raw_value.end - 1))
    }
}

struct Command<'a> {
    name: &'a str,
    flags: Vec<Flag>,
    /// The arguments after the flags, trimmed, as a range of the text.
    rest: Range<usize>,
}

/// Splits an instruction into its keyword, its `--flags` and the rest, as
/// Docker's `splitCommand` and `extractBuilderFlags` do.
fn split_command(text: &str, escape: u8) -> Command<'_> {
    let start = text.len() - text.trim_start().len();
    // All whitespace: `start` is the end of the text, past `trim_end`.
    let end = text.trim_end().len().max(start);
    let bytes = text.as_bytes();
    let name_end = (start..end)
        .find(|&index| is_separator(bytes[index]))
        .unwrap_or(end);
    let mut index = name_end;
    while index < end && is_separator(bytes[index]) {
        index += 1;
    }
    let mut flags = Vec::new();
    let rest_start = loop {
        while index < end && is_space(bytes[index]) {
            index += 1;
        }
        if index + 1 >= end || &bytes[index..index + 2] != b"--" {
            break index;
        }
        let mut word = Vec::new();
        let mut equals: Option<(usize, usize)> = None;
        let mut quote = None;
        while index < end {
            let byte = bytes[index];
            if quote.is_none() && is_space(byte) {
                break;
            }
            index += 1;
            match quote {
                None if byte == b'\'' || byte == b'"' => quote = Some(byte),
                Some(open) if byte == open => quote = None,
                _ => {
                    let literal = if byte == escape {
                        if index == end {
                            continue;
                        }
                        index += 1;
                        bytes[index - 1]
                    } else {
                        byte
                    };
                    if literal == b'=' && equals.is_none() {
                        equals = Some((word.len(), index));
                    }
                    word.push(literal);
                }
            }
        }
        if word == b"--" {
            break index;
        }
        let word = String::from_utf8_lossy(&word).into_owned();
        flags.push(match equals {
            Some((at, raw)) => Flag {
                name: word[2..at].to_owned(),
                value: Some(word[at + 1..].to_owned()),
                raw_value: raw..index,
            },
            None => Flag {
                name: word[2..].to_owned(),
                value: None,
                raw_value: index..index,
            },
        });
    };
    let rest = &text[rest_start..end];
    let rest_start = rest_start + (rest.len() - rest.trim_start().len());
    Command {
        name: &text[start..name_end],
        flags,
        rest: rest_start..end,
    }
}

struct Heredoc {
    name: String,
    chomp: bool,
}

/// The here-documents an instruction opens (`RUN <<EOF`, `COPY <<-"EOF" /x`),
/// whose bodies follow the instruction line.
fn heredocs(text: &str, escape: u8) -> Vec<Heredoc> {
    let mut command = split_command(text, escape);
    if command.name.eq_ignore_ascii_case("onbuild") {
        let rest = command.rest.clone();
        let sub = split_command(&text[rest.clone()], escape);
        command = Command {
            name: sub.name,
            flags: sub.flags,
            rest: rest.start + sub.rest.start..rest.start + sub.rest.end,
        };
    }
    let name = command.name.to_ascii_lowercase();
    if !["run", "copy", "add"].contains(&name.as_str()) || !text.contains("<<") {
        return Vec::new();
    }
    if serde_json::from_str::<Vec<String>>(&text[command.rest.clone()]).is_ok() {
        return Vec::new();
    }
    shell_words(text)
        .into_iter()
        .filter_map(|word| {
            let digits = word.len() - word.trim_start_matches(|c: char| c.is_ascii_digit()).len();
            let word = word[digits..].strip_prefix("<<")?;
            let (chomp, word) = match word.strip_prefix('-') {
                Some(word) => (true, word),
                None => (false, word),
            };
            let word = word.trim_start();
            if word.is_empty() || word.contains('<') {
                return None;
            }
            Some(Heredoc {
                name: unquote(word),
                chomp,
            })
        })
        .collect()
}

/// Splits a line into shell words, keeping quotes and escapes in them.
fn shell_words(text: &str) -> Vec<&str> {
    let bytes = text.as_bytes();
    let mut words = Vec::new();
    let mut index = 0;
    while index < bytes.len() {
        if is_space(bytes[index]) {
            index += 1;
            continue;
        }
        let start = index;
        let mut quote = None;
        while index < bytes.len() {
            let byte = bytes[index];
            match quote {
                None if is_space(byte) => break,
                None if byte == b'\'' || byte == b'"' => quote = Some(byte),
                Some(open) if byte == open => quote = None,
                Some(b'\'') => {}
                _ if byte == b'\\' => index += 1,
                _ => {}
            }
            index += 1;
        }
        words.push(&text[start..index.min(bytes.len())]);
    }
    words
}

/// A shell word with its quotes and backslash escapes removed.
fn unquote(word: &str) -> String {
    let mut out = String::new();
    let mut quote = None;
    let mut chars = word.chars();
    while let Some(c) = chars.next() {
        match quote {
            None if c == '\'' || c == '"' => quote = Some(c),
            Some(open) if c == open => quote = None,
            Some('\'') => out.push(c),
            _ if c == '\\' => out.extend(chars.next()),
            _ => out.push(c),
        }
    }
    out
}

/// What a step may mount: the mount lint's view of it.
pub struct Entitlement<'a> {
    /// The step's label, for messages.
    pub step: &'a str,
    /// The builder the step builds with.
    pub builder: Builder,
    /// The secrets the step declares.
    pub secrets: Vec<&'a str>,
    /// Whether the step forwards the SSH agent (`ssh: true`).
    pub ssh: bool,
}

/// A mount the step is not entitled to, or a Dockerfile the lint cannot read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MountError {
    /// `line N: …`, or the parse error.
    pub message: String,
    /// What to change.
    pub hint: Option<String>,
}

/// Refuses a Dockerfile `text` that mounts a secret the step does not
/// declare, mounts the SSH agent without `ssh: true`, or mounts either
/// while the step builds with the classic builder: checked before
/// anything is sent to the daemon, and by `habitus check`.
pub fn check_mounts(text: &[u8], step: &Entitlement<'_>) -> Result<(), MountError> {
    let unreadable = |e: DockerfileError| MountError {
        message: e.to_string(),
        hint: None,
    };
    let refuse = |line: usize, message: String, hint: String| MountError {
        message: format!("line {line}: {message}"),
        hint: Some(hint),
    };
    let legacy = |kind: &str| {
        (
            format!("`RUN --mount=type={kind}` needs BuildKit"),
            "build with `--builder buildkit`, or set `builder: buildkit` on the step in build.yml"
                .to_string(),
        )
    };
    for (line, id) in ssh_mounts(text).map_err(unreadable)? {
        if step.builder == Builder::Legacy {
            let (message, hint) = legacy("ssh");
            return Err(refuse(line, message, hint));
        }
        if !step.ssh {
            return Err(refuse(line, format!("mounts the SSH agent, but step `{}` does not forward it", step.step), "set `ssh: true` on the step in build.yml; its `RUN --mount=type=ssh` then reach the agent of SSH_AUTH_SOCK".into()));
        }
        if id != "default" {
            return Err(refuse(
                line,
                format!("mounts SSH agent `{id}`: habitus forwards one agent, `default`"),
                "leave `id=` out of the mount".into(),
            ));
        }
    }
    for mount in secret_mounts(text).map_err(unreadable)? {
        if step.builder == Builder::Legacy {
            let (message, hint) = legacy("secret");
            return Err(refuse(mount.line, message, hint));
        }
        let Some(id) = mount.id else { continue };
        if !step.secrets.contains(&id.as_str()) {
            let declared = if step.secrets.is_empty() {
                "it declares none".to_string()
            } else {
                let names: Vec<String> = step.secrets.iter().map(|k| format!("`{k}`")).collect();
                format!("it declares {}", names.join(", "))
            };
            return Err(refuse(
                mount.line,
                format!(
                    "mounts secret `{id}`, which step `{}` does not declare ({declared})",
                    step.step
                ),
                format!(
                    "add `{id}` under the step's `secrets:` in build.yml (`type: file` or `env`)"
                ),
            ));
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::{DockerfileError, DockerfileErrorKind};

    #[test]
    fn error_messages() {
        let error = DockerfileError::new(Some(3), DockerfileErrorKind::FromMissingImage);
        assert_eq!(error.to_string(), "Dockerfile:3: FROM requires an image");
        let error = error.in_file("sub/Dockerfile.compile");
        assert_eq!(
            error.to_string(),
            "sub/Dockerfile.compile:3: FROM requires an image"
        );
        let error = DockerfileError::new(None, DockerfileErrorKind::NoFrom);
        assert_eq!(error.to_string(), "Dockerfile: no FROM instruction");
        let error =
            DockerfileError::new(Some(1), DockerfileErrorKind::InvalidEscape("x".to_owned()));
        assert_eq!(
            error.to_string(),
            "Dockerfile:1: invalid escape character `x`: use a backslash or a backtick"
        );
    }

    #[test]
    fn secret_mounts_name_their_id_or_the_target_file() {
        let src = "FROM base\n\
RUN --mount=type=secret,id=npmrc,target=/root/.npmrc npm ci\n\
RUN --mount=type=cache,target=/c --mount=type=secret,target=/run/secrets/id_rsa \\\n    git clone x\n\
RUN --mount=type=secret,id=$NAME true\n\
RUN echo --mount=type=secret,id=no\n";
        let mounts = super::secret_mounts(src).unwrap();
        let got: Vec<(usize, Option<&str>)> =
            mounts.iter().map(|m| (m.line, m.id.as_deref())).collect();
        assert_eq!(
            got,
            vec![(2, Some("npmrc")), (3, Some("id_rsa")), (5, None)]
        );
    }

    #[test]
    fn dockerfiles_that_can_follow_others_and_named_stages() {
        assert!(super::appendable("FROM a\nRUN x\nCOPY --from=b /x /x\n").unwrap());
        assert!(!super::appendable("ARG V\nFROM a:$V\n").unwrap());
        assert!(!super::appendable("# syntax=docker/dockerfile:1\nFROM a\n").unwrap());
        assert!(!super::appendable("FROM a\nCOPY --from=0 /x /x\n").unwrap());
        assert!(!super::appendable("FROM a\nRUN --mount=from=1,target=/m true\n").unwrap());
        assert_eq!(
            super::name_single_stage("FROM --platform=linux/amd64 \\\n  a\nRUN x\n", "s0")
                .unwrap()
                .as_deref(),
            Some(&b"FROM --platform=linux/amd64 \\\n  a AS s0\nRUN x\n"[..])
        );
        assert_eq!(
            super::name_single_stage("FROM a AS b\n", "s0").unwrap(),
            None
        );
        assert_eq!(
            super::name_single_stage("FROM a\nFROM b\n", "s0").unwrap(),
            None
        );
    }

    #[test]
    fn ssh_mounts_name_their_agent() {
        let src = "FROM a\nRUN --mount=type=ssh git clone x\nRUN --mount=type=ssh,id=gh true\nRUN --mount=type=secret,id=k true\n";
        assert_eq!(
            super::ssh_mounts(src).unwrap(),
            vec![(2, "default".to_string()), (3, "gh".to_string())]
        );
    }
}
