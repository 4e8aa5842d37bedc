//! Where keys and values sit in build.yml. `serde_yaml::Value` carries no
//! positions, so one linear pass over the lines records, for every key and
//! sequence item of the block-style structure, its line and column (and the
//! raw text of an inline scalar value). Nodes inside flow collections
//! (`{ a: b }`, `[a, b]`) are not indexed; a lookup then falls back to the
//! nearest indexed ancestor, so every position reported is real, at worst
//! less precise.
//!
//! A path is a string: each mapping key is preceded by [`KEY_SEP`], each
//! sequence index by [`ITEM_SEP`] (neither can appear in a block key).

use std::collections::HashMap;

const KEY_SEP: char = '\u{1f}';
const ITEM_SEP: char = '\u{1e}';

/// The path of `key` in the mapping at `parent`.
pub(crate) fn key_path(parent: &str, key: &str) -> String {
    let mut path = String::with_capacity(parent.len() + key.len() + 1);
    path.push_str(parent);
    path.push(KEY_SEP);
    path.push_str(key);
    path
}

/// The path of item `index` of the sequence at `parent`.
pub(crate) fn item_path(parent: &str, index: usize) -> String {
    format!("{parent}{ITEM_SEP}{index}")
}

/// A 1-based line and column.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Pos {
    pub line: usize,
    pub column: usize,
}

#[derive(Debug)]
struct Entry<'t> {
    /// The key (or, for a sequence item, the item's content).
    key: Pos,
    /// Where an inline value (scalar or flow collection) starts.
    value: Option<Pos>,
    /// The raw text of an inline scalar (comment stripped).
    raw: Option<&'t str>,
}

/// What follows a key or `- ` on its line.
enum Inline<'t> {
    Nothing,
    /// A flow collection: the text from its opening bracket, and whether
    /// it closes on the same line.
    Flow(&'t str, bool),
    Scalar(&'t str),
}

/// Positions of the keys and items of one build.yml text.
#[derive(Debug, Default)]
pub(crate) struct Index<'t> {
    entries: HashMap<String, Entry<'t>>,
}

struct Frame {
    /// Column of the key, or of the `-` of a sequence item.
    indent: usize,
    item: bool,
    path: String,
    next_item: usize,
}

enum Skip {
    No,
    /// Lines indented more than this column (and blank lines) belong to a
    /// scalar already seen.
    Deeper(usize),
    /// Inside a multi-line flow collection; the open bracket count.
    Flow(i64),
}

/// One line of the text.
#[derive(Clone, Copy)]
struct Line<'t> {
    /// 1-based.
    number: usize,
    /// Without its line break.
    text: &'t str,
}

impl Line<'_> {
    /// The position of byte `offset` of the line.
    fn pos(&self, offset: usize) -> Pos {
        Pos {
            line: self.number,
            column: char_column(self.text, offset),
        }
    }
}

/// [`Index::scan`] between lines: what it has indexed, where it is in the
/// block structure, and what to skip.
struct Scanner<'t> {
    entries: HashMap<String, Entry<'t>>,
    /// The open keys and items, outermost first; the root frame stays.
    stack: Vec<Frame>,
    skip: Skip,
}

impl<'t> Scanner<'t> {
    /// Indexes the nodes of one line, unless it is skipped, blank, a
    /// comment, a directive or a document marker.
    fn line(&mut self, line: Line<'t>) {
        let trimmed = line.text.trim_start_matches(' ');
        let indent = line.text.len() - trimmed.len();
        if self.skipped(line.text, trimmed, indent)
            || trimmed.is_empty()
            || trimmed.starts_with('#')
            || trimmed.starts_with('%')
        {
            return;
        }
        if indent == 0 && (is_marker(trimmed, "---") || is_marker(trimmed, "...")) {
            self.stack.truncate(1);
            self.stack[0].next_item = 0;
            return;
        }
        self.nodes(line, indent, trimmed);
    }

    /// Whether `line` continues a block scalar or a multi-line flow
    /// collection seen before; updates what to skip next.
    fn skipped(&mut self, line: &str, trimmed: &str, indent: usize) -> bool {
        match self.skip {
            Skip::No => false,
            Skip::Deeper(column) => {
                if trimmed.is_empty() || indent > column {
                    return true;
                }
                self.skip = Skip::No;
                false
            }
            Skip::Flow(depth) => {
                let depth = depth + bracket_delta(line);
                self.skip = if depth > 0 {
                    Skip::Flow(depth)
                } else {
                    Skip::No
                };
                true
            }
        }
    }

    /// The nodes of a line whose text starts at byte `indent` with
    /// `rest`: any `- ` items, then a key or a scalar.
    fn nodes(&mut self, line: Line<'t>, indent: usize, rest: &'t str) {
        let (mut column, mut rest) = (indent, rest);
        let mut in_item = false;
        // The column whose deeper lines continue a scalar found here.
        let mut owner = indent;
        while rest == "-" || rest.starts_with("- ") {
            let Some((content_column, content)) = self.item(line, column, rest) else {
                return;
            };
            owner = column;
            column = content_column;
            rest = content;
            in_item = true;
        }
        match parse_key(rest) {
            Some(key) => self.key(line, column, rest, key),
            None => self.scalar(line, rest, owner, in_item),
        }
    }

    /// Indexes the sequence item whose `-` is at byte `column` and opens
    /// its frame; returns where its content starts, and the content, if
    /// there is any on this line.
    fn item(&mut self, line: Line<'t>, column: usize, rest: &'t str) -> Option<(usize, &'t str)> {
        self.close(|top| top.indent > column || (top.indent == column && top.item));
        let parent = self.stack.last_mut().expect("root frame");
        let path = item_path(&parent.path, parent.next_item);
        parent.next_item += 1;
        let after = &rest[1..];
        let content = after.trim_start_matches(' ');
        let content_column = column + 1 + (after.len() - content.len());
        let entry = Entry {
            key: line.pos(content_column),
            value: None,
            raw: None,
        };
        self.entries.insert(path.clone(), entry);
        self.open(column, true, path);
        if content.is_empty() || content.starts_with('#') {
            return None;
        }
        Some((content_column, content))
    }

    /// Indexes the key at byte `column` (`rest` from there; the key and
    /// the offset after its `:` in `rest`) with its inline value, and
    /// opens its frame.
    fn key(
        &mut self,
        line: Line<'t>,
        column: usize,
        rest: &'t str,
        (key, after_colon): (String, usize),
    ) {
        self.close(|top| top.indent >= column);
        let path = key_path(&self.stack[self.stack.len() - 1].path, &key);
        let after = &rest[after_colon..];
        let value_text = after.trim_start_matches([' ', '\t']);
        let value_column = column + after_colon + (after.len() - value_text.len());
        let (value, next_skip) = inline_value(value_text, column);
        self.skip = next_skip;
        let entry = Entry {
            key: line.pos(column),
            value: match value {
                Inline::Nothing => None,
                _ => Some(line.pos(value_column)),
            },
            raw: match value {
                Inline::Scalar(raw) => Some(raw),
                _ => None,
            },
        };
        self.entries.insert(path.clone(), entry);
        if let Inline::Flow(flow, true) = value {
            scan_flow(&mut self.entries, &path, line, line.text.len() - flow.len());
        }
        self.open(column, false, path);
    }

    /// A scalar (or flow collection) that is not a key: the value of the
    /// item it follows on its line, if any. Deeper lines than `owner`
    /// continue it.
    fn scalar(&mut self, line: Line<'t>, rest: &'t str, owner: usize, in_item: bool) {
        let (value, next_skip) = inline_value(rest, owner);
        self.skip = next_skip;
        let (true, Some(top)) = (in_item, self.stack.last()) else {
            return;
        };
        let Some(entry) = self.entries.get_mut(&top.path) else {
            return;
        };
        match value {
            Inline::Nothing => {}
            Inline::Flow(flow, single_line) => {
                entry.value = Some(entry.key);
                if single_line {
                    let start = line.text.len() - flow.len();
                    scan_flow(&mut self.entries, &top.path, line, start);
                }
            }
            Inline::Scalar(raw) => {
                entry.value = Some(entry.key);
                entry.raw = Some(raw);
            }
        }
    }

    /// Closes the innermost frames (never the root) while `done` says so.
    fn close(&mut self, done: impl Fn(&Frame) -> bool) {
        while self.stack.len() > 1 && done(&self.stack[self.stack.len() - 1]) {
            self.stack.pop();
        }
    }

    /// Opens the frame of the key (or, if `item`, the sequence item) at
    /// `path` whose column is `indent`.
    fn open(&mut self, indent: usize, item: bool, path: String) {
        self.stack.push(Frame {
            indent,
            item,
            path,
            next_item: 0,
        });
    }
}

impl<'t> Index<'t> {
    /// Indexes `text`. Never fails: what it does not understand it skips.
    pub(crate) fn scan(text: &'t str) -> Index<'t> {
        let mut scanner = Scanner {
            entries: HashMap::new(),
            stack: Vec::new(),
            skip: Skip::No,
        };
        scanner.open(0, false, String::new());
        for (number, text) in text.split('\n').enumerate() {
            let text = text.strip_suffix('\r').unwrap_or(text);
            scanner.line(Line {
                number: number + 1,
                text,
            });
        }
        Index {
            entries: scanner.entries,
        }
    }
    /// The position of the key (or item) at `path`; if it is not indexed,
    /// where the value of its nearest indexed ancestor starts (the opening
    /// bracket of a flow collection) or that ancestor's key.
    pub(crate) fn locate(&self, path: &str) -> Option<Pos> {
        if let Some(entry) = self.entries.get(path) {
            return Some(entry.key);
        }
        self.ancestor(path)
    }

    /// The position of the inline value at `path`, else [`Index::locate`].
    pub(crate) fn locate_value(&self, path: &str) -> Option<Pos> {
        match self.entries.get(path) {
            Some(entry) => Some(entry.value.unwrap_or(entry.key)),
            None => self.ancestor(path),
        }
    }

    fn ancestor(&self, path: &str) -> Option<Pos> {
        let mut path = path;
        loop {
            path = &path[..path.rfind([KEY_SEP, ITEM_SEP])?];
            if let Some(entry) = self.entries.get(path) {
                return Some(entry.value.unwrap_or(entry.key));
            }
        }
    }

    /// The raw text of the inline scalar at `path`.
    pub(crate) fn raw(&self, path: &str) -> Option<&'t str> {
        self.entries.get(path)?.raw
    }
}

fn is_marker(line: &str, marker: &str) -> bool {
    line.strip_prefix(marker)
        .is_some_and(|rest| rest.is_empty() || rest.starts_with([' ', '\t']))
}

/// Classifies the text after `key:` (or `- `) for a node whose parent
/// mapping sits at `column`: what it is, and what to skip.
fn inline_value(text: &str, column: usize) -> (Inline<'_>, Skip) {
    match text.chars().next() {
        None | Some('#') => (Inline::Nothing, Skip::No),
        Some('|' | '>') => (Inline::Nothing, Skip::Deeper(column)),
        Some('{' | '[') => {
            let depth = bracket_delta(text);
            (
                Inline::Flow(text, depth <= 0),
                if depth > 0 {
                    Skip::Flow(depth)
                } else {
                    Skip::No
                },
            )
        }
        Some('*') => (Inline::Nothing, Skip::No),
        Some('&' | '!') => {
            // An anchor or tag, maybe followed by the value itself.
            let after = text
                .find([' ', '\t'])
                .map_or("", |i| text[i..].trim_start());
            if after.is_empty() || after.starts_with('#') {
                (Inline::Nothing, Skip::No)
            } else {
                inline_value(after, column)
            }
        }
        Some(quote @ ('"' | '\'')) => {
            let end = closing_quote(text, quote);
            let raw = end.map_or(text, |end| &text[..=end]);
            (Inline::Scalar(raw), Skip::Deeper(column))
        }
        Some(_) => (Inline::Scalar(strip_comment(text)), Skip::Deeper(column)),
    }
}

/// The 1-based column of byte `offset` of `line`.
fn char_column(line: &str, offset: usize) -> usize {
    if line.is_ascii() {
        offset + 1
    } else {
        line[..offset].chars().count() + 1
    }
}

/// Indexes the flow collection opening at byte `start` of `line` and
/// closing on it: keys, items and raw scalars, nested collections too.
/// Returns the byte after its closing bracket, or `None` where it stops
/// understanding (what was indexed until then stays).
fn scan_flow<'t>(
    entries: &mut HashMap<String, Entry<'t>>,
    path: &str,
    line: Line<'t>,
    start: usize,
) -> Option<usize> {
    let bytes = line.text.as_bytes();
    let (close, mapping) = match bytes.get(start)? {
        b'{' => (b'}', true),
        b'[' => (b']', false),
        _ => return None,
    };
    let mut i = start + 1;
    let mut index = 0;
    loop {
        i = blanks(bytes, i);
        if bytes.get(i) == Some(&close) {
            return Some(i + 1);
        }
        let key = line.pos(i);
        let child = if mapping {
            let (name, value) = flow_key(line.text, i)?;
            i = value;
            key_path(path, &name)
        } else {
            index += 1;
            item_path(path, index - 1)
        };
        i = blanks(bytes, flow_value(entries, child, key, line, i)?);
        match bytes.get(i)? {
            b',' => i += 1,
            c if *c == close => return Some(i + 1),
            _ => return None,
        }
    }
}

/// The key of a flow mapping starting at byte `i` of `line`, unquoted,
/// and the byte where its value starts.
fn flow_key(line: &str, i: usize) -> Option<(String, usize)> {
    let bytes = line.as_bytes();
    let (text, end) = flow_scalar(line, i)?;
    let name = match text.as_bytes()[0] {
        b'"' | b'\'' => unquote(text),
        _ => text.to_owned(),
    };
    let colon = blanks(bytes, end);
    if bytes.get(colon) != Some(&b':') {
        return None;
    }
    Some((name, blanks(bytes, colon + 1)))
}

/// Indexes the flow node at `child`, its key at `key` and its value at
/// byte `i` of `line` (a nested collection too); returns the byte after
/// the value.
fn flow_value<'t>(
    entries: &mut HashMap<String, Entry<'t>>,
    child: String,
    key: Pos,
    line: Line<'t>,
    i: usize,
) -> Option<usize> {
    let value = line.pos(i);
    match line.text.as_bytes().get(i)? {
        b'{' | b'[' => {
            let entry = Entry {
                key,
                value: Some(value),
                raw: None,
            };
            entries.insert(child.clone(), entry);
            scan_flow(entries, &child, line, i)
        }
        b',' | b'}' | b']' => {
            let entry = Entry {
                key,
                value: None,
                raw: None,
            };
            entries.insert(child, entry);
            Some(i)
        }
        _ => {
            let (raw, end) = flow_scalar(line.text, i)?;
            let entry = Entry {
                key,
                value: Some(value),
                raw: Some(raw),
            };
            entries.insert(child, entry);
            Some(end)
        }
    }
}

/// The first byte from `i` on that is not a blank.
fn blanks(bytes: &[u8], mut i: usize) -> usize {
    while matches!(bytes.get(i), Some(b' ' | b'\t')) {
        i += 1;
    }
    i
}

/// The text of a quoted scalar written with its quotes: `\"` and `\\`
/// undone in double quotes, `''` in single ones.
fn unquote(quoted: &str) -> String {
    let inner = &quoted[1..quoted.len() - 1];
    if quoted.starts_with('"') {
        inner.replace("\\\"", "\"").replace("\\\\", "\\")
    } else {
        inner.replace("''", "'")
    }
}

/// A scalar in a flow collection starting at byte `i`: its text (quotes
/// kept) and the byte after it. A plain one ends before `,`, a bracket, a
/// `:` that introduces a value, or a comment.
fn flow_scalar(line: &str, i: usize) -> Option<(&str, usize)> {
    let bytes = line.as_bytes();
    match bytes[i] {
        quote @ (b'"' | b'\'') => {
            let end = i + closing_quote(&line[i..], quote as char)?;
            Some((&line[i..=end], end + 1))
        }
        _ => {
            let mut j = i;
            while let Some(&b) = bytes.get(j) {
                let next = bytes.get(j + 1);
                let ends = match b {
                    b',' | b'[' | b']' | b'{' | b'}' => true,
                    b':' => matches!(next, None | Some(b' ' | b'\t' | b',' | b']' | b'}')),
                    b' ' | b'\t' => next == Some(&b'#'),
                    _ => false,
                };
                if ends {
                    break;
                }
                j += 1;
            }
            let text = line[i..j].trim_end();
            (!text.is_empty()).then_some((text, i + text.len()))
        }
    }
}

/// The text before a ` #` comment, trailing blanks removed.
fn strip_comment(text: &str) -> &str {
    let end = text
        .char_indices()
        .find(|&(i, c)| c == '#' && i > 0 && text[..i].ends_with([' ', '\t']))
        .map_or(text.len(), |(i, _)| i);
    text[..end].trim_end()
}

/// Byte index of the quote closing the one at index 0.
fn closing_quote(text: &str, quote: char) -> Option<usize> {
    let bytes = text.as_bytes();
    let q = quote as u8;
    let mut i = 1;
    while i < bytes.len() {
        if quote == '"' && bytes[i] == b'\\' {
            i += 2;
            continue;
        }
        if bytes[i] == q {
            if quote == '\'' && bytes.get(i + 1) == Some(&q) {
                i += 2;
                continue;
            }
            return Some(i);
        }
        i += 1;
    }
    None
}

/// A block mapping key at the start of `text`: the key and the byte offset
/// just after its `:`.
fn parse_key(text: &str) -> Option<(String, usize)> {
    let (key, after_key) = match text.chars().next()? {
        quote @ ('"' | '\'') => {
            let end = closing_quote(text, quote)?;
            let key = unquote(&text[..=end]);
            let rest = &text[end + 1..];
            let blanks = rest.len() - rest.trim_start_matches([' ', '\t']).len();
            (key, end + 1 + blanks)
        }
        '[' | '{' | '&' | '*' | '!' | '|' | '>' | '%' | '@' | '`' | '#' | '?' | ',' => return None,
        _ => {
            let bytes = text.as_bytes();
            let mut found = None;
            for (i, &b) in bytes.iter().enumerate() {
                if b == b'#' && i > 0 && matches!(bytes[i - 1], b' ' | b'\t') {
                    return None;
                }
                if b == b':' && matches!(bytes.get(i + 1), None | Some(b' ' | b'\t')) {
                    found = Some(i);
                    break;
                }
            }
            let colon = found?;
            (text[..colon].trim_end().to_owned(), colon)
        }
    };
    let rest = &text[after_key..];
    if rest.starts_with(':') && matches!(rest.as_bytes().get(1), None | Some(b' ' | b'\t')) {
        Some((key, after_key + 1))
    } else {
        None
    }
}

/// Open minus closed brackets on a line, outside quotes and comments.
fn bracket_delta(line: &str) -> i64 {
    let mut depth = 0;
    let mut quote: Option<char> = None;
    let mut previous = ' ';
    for c in line.chars() {
        match quote {
            Some(q) => {
                if c == q {
                    quote = None;
                }
            }
            None => match c {
                '"' | '\'' => quote = Some(c),
                '#' if previous == ' ' || previous == '\t' => break,
                '[' | '{' => depth += 1,
                ']' | '}' => depth -= 1,
                _ => {}
            },
        }
        previous = c;
    }
    depth
}

#[cfg(test)]
mod tests {
    use super::{item_path, key_path, Index, Pos};

    fn path(parts: &[&str]) -> String {
        parts
            .iter()
            .fold(String::new(), |p, k| match k.parse::<usize>() {
                Ok(i) => item_path(&p, i),
                Err(_) => key_path(&p, k),
            })
    }

    fn at(line: usize, column: usize) -> Option<Pos> {
        Some(Pos { line, column })
    }

    const TEXT: &str = "\
# a comment
build:
  version: 2016-03-14   # trailing
  steps:
    compile:
      name: app
      args: { A: 1 }
      depends_on:
      - base
      -   'other'
      artifacts:
        - /src:dest # why
        - /two
      cleanup:
        commands:
          - |
            rm -rf x
            key: not a key
          - echo
      \"quoted key\": 1.10
    second:
      - name: a
        dockerfile: D
";

    #[test]
    fn keys_items_and_values_are_located() {
        let index = Index::scan(TEXT);
        assert_eq!(index.locate(&path(&["build"])), at(2, 1));
        assert_eq!(index.locate(&path(&["build", "version"])), at(3, 3));
        assert_eq!(index.locate_value(&path(&["build", "version"])), at(3, 12));
        assert_eq!(index.raw(&path(&["build", "version"])), Some("2016-03-14"));
        assert_eq!(
            index.locate(&path(&["build", "steps", "compile"])),
            at(5, 5)
        );
        assert_eq!(
            index.locate(&path(&["build", "steps", "compile", "name"])),
            at(6, 7)
        );
        assert_eq!(
            index.locate(&path(&["build", "steps", "compile", "depends_on", "0"])),
            at(9, 9)
        );
        assert_eq!(
            index.locate(&path(&["build", "steps", "compile", "depends_on", "1"])),
            at(10, 11)
        );
        assert_eq!(
            index.raw(&path(&["build", "steps", "compile", "depends_on", "1"])),
            Some("'other'")
        );
        assert_eq!(
            index.raw(&path(&["build", "steps", "compile", "artifacts", "0"])),
            Some("/src:dest")
        );
        assert_eq!(
            index.locate(&path(&["build", "steps", "compile", "artifacts", "1"])),
            at(13, 11)
        );
        assert_eq!(
            index.locate(&path(&[
                "build", "steps", "compile", "cleanup", "commands", "1"
            ])),
            at(19, 13)
        );
        assert_eq!(
            index.raw(&path(&["build", "steps", "compile", "quoted key"])),
            Some("1.10")
        );
        assert_eq!(
            index.locate(&path(&["build", "steps", "second", "0", "dockerfile"])),
            at(23, 9)
        );
    }

    #[test]
    fn flow_and_block_scalar_contents_fall_back_to_the_parent() {
        let index = Index::scan(TEXT);
        assert_eq!(
            index.locate(&path(&["build", "steps", "compile", "args", "B"])),
            at(7, 13)
        );
        assert_eq!(
            index.locate(&path(&[
                "build", "steps", "compile", "cleanup", "commands", "0", "key"
            ])),
            at(16, 13)
        );
        assert_eq!(index.locate(&path(&["nothing"])), None);
    }

    #[test]
    fn single_line_flow_collections_are_indexed() {
        let text = "a: { k: 1.10, 'q''k': [x, \"y, z\", /s:d], n: , e: {} }  # c\nb:\n- [ 1, {t: file} ]\n";
        let index = Index::scan(text);
        assert_eq!(index.raw(&path(&["a", "k"])), Some("1.10"));
        assert_eq!(index.locate(&path(&["a", "k"])), at(1, 6));
        assert_eq!(index.locate_value(&path(&["a", "k"])), at(1, 9));
        assert_eq!(index.locate(&path(&["a", "q'k", "1"])), at(1, 27));
        assert_eq!(index.raw(&path(&["a", "q'k", "1"])), Some("\"y, z\""));
        assert_eq!(index.raw(&path(&["a", "q'k", "2"])), Some("/s:d"));
        assert_eq!(index.locate(&path(&["a", "n"])), at(1, 42));
        assert_eq!(index.raw(&path(&["a", "n"])), None);
        assert_eq!(index.locate_value(&path(&["a", "e"])), at(1, 50));
        assert_eq!(index.raw(&path(&["b", "0", "1", "t"])), Some("file"));
        assert_eq!(index.locate(&path(&["b", "0", "1", "t"])), at(3, 9));
    }

    #[test]
    fn columns_count_characters() {
        let index = Index::scan("é: { ü: x }\n");
        assert_eq!(index.locate(&path(&["é", "ü"])), at(1, 6));
    }

    #[test]
    fn multi_line_flow_collections_are_skipped() {
        let index = Index::scan("a: [\n  b: c,\n  d]\ne: 1\n");
        assert_eq!(index.locate(&path(&["a", "b"])), at(1, 4));
        assert_eq!(index.locate(&path(&["e"])), at(4, 1));
    }

    #[test]
    fn urls_and_colons_without_space_are_not_keys() {
        let index = Index::scan("- http://x:80/y\n- a:b: c\n");
        assert_eq!(index.raw(&path(&["0"])), Some("http://x:80/y"));
        assert_eq!(index.locate(&path(&["1", "a:b"])), at(2, 3));
    }
}
