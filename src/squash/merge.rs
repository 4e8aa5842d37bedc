//! Whiteout-aware merging of layer tars into one layer.
//!
//! The layers are applied bottom-up to an in-memory tree of *paths* (never
//! file contents): `.wh.<name>` removes `<name>` and everything below it
//! from the lower layers, `.wh..wh..opq` removes everything below its
//! directory from the lower layers, an entry replaces whatever was at its
//! path unless both are directories (then only the metadata changes).
//! Every node remembers which layer entry it came from, so the squashed
//! layer is written afterwards by copying those entries out of the spooled
//! layer files.
//!
//! The bottom `keep` layers stay as they are. The squashed layer must turn
//! the kept layers into the final filesystem, so it carries a whiteout
//! exactly where something of the kept layers is gone, and an opaque
//! marker where a kept directory was removed and made again, and nothing
//! for paths that never existed below.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io::{self, Read, Seek};

/// The prefix of a whiteout file's name.
pub const WHITEOUT_PREFIX: &[u8] = b".wh.";
/// The name of the opaque-directory marker.
pub const OPAQUE_MARKER: &[u8] = b".wh..wh..opq";

/// What kind of filesystem object an entry is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Dir,
    File,
    HardLink,
    /// Symlinks, devices, fifos.
    Other,
}

/// Where an entry's header starts in its layer file: `(layer, offset)`.
pub type Source = (usize, u64);

/// One item of a layer, as the merger sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Item {
    Entry {
        path: Vec<u8>,
        kind: Kind,
        /// Offset of the entry's first header block (extension headers
        /// included) in the layer file.
        start: u64,
        /// Hard link target, normalised.
        link: Option<Vec<u8>>,
    },
    /// `.wh.<name>`: the path it removes.
    Whiteout(Vec<u8>),
    /// `.wh..wh..opq`: the directory it empties.
    Opaque(Vec<u8>),
}

/// The `start` of an entry of a kept layer that was not spooled (a file
/// with content): the squashed layer cannot copy it.
pub const NOT_SPOOLED: u64 = u64::MAX;

/// Reads the headers of a layer tar, seeking over file contents.
pub fn index_layer<R: Read + Seek>(reader: R) -> io::Result<Vec<Item>> {
    let mut archive = tar::Archive::new(reader);
    let mut items = Vec::new();
    let mut next_start = 0u64;
    for entry in archive.entries_with_seek()? {
        let entry = entry?;
        let start = next_start;
        next_start = entry.raw_file_position() + entry.size().div_ceil(512) * 512;
        items.extend(item_of(&entry, start));
    }
    Ok(items)
}

/// What the merger sees of `entry`, whose first header block is at
/// `start`; `None` for the root and for what is no filesystem object.
pub fn item_of<R: Read>(entry: &tar::Entry<'_, R>, start: u64) -> Option<Item> {
    let path = normalize(&entry.path_bytes())?;
    let (dir, name) = split(&path);
    if name == OPAQUE_MARKER {
        return Some(Item::Opaque(dir.to_vec()));
    }
    if let Some(removed) = name.strip_prefix(WHITEOUT_PREFIX) {
        // `.wh..wh.*` other than the opaque marker is AUFS metadata.
        return (!removed.starts_with(WHITEOUT_PREFIX) && !removed.is_empty())
            .then(|| Item::Whiteout(join(dir, removed)));
    }
    let kind = match entry.header().entry_type() {
        tar::EntryType::Directory => Kind::Dir,
        tar::EntryType::Regular | tar::EntryType::Continuous => Kind::File,
        tar::EntryType::Link => Kind::HardLink,
        tar::EntryType::Symlink
        | tar::EntryType::Char
        | tar::EntryType::Block
        | tar::EntryType::Fifo => Kind::Other,
        // Extension headers are folded into their entry by `tar`;
        // anything else is not a filesystem object.
        _ => return None,
    };
    let link = if kind == Kind::HardLink {
        entry.link_name_bytes().and_then(|l| normalize(&l))
    } else {
        None
    };
    Some(Item::Entry {
        path,
        kind,
        start,
        link,
    })
}

/// Whether writing `emits` needs an entry of a kept layer that was not
/// spooled ([`NOT_SPOOLED`]).
pub fn needs_unspooled(emits: &[Emit]) -> bool {
    emits.iter().any(|emit| match emit {
        Emit::Entry { source, .. } | Emit::Link { source, .. } => source.1 == NOT_SPOOLED,
        Emit::Content { data, .. } => data.1 == NOT_SPOOLED,
        Emit::Marker { .. } => false,
    })
}

/// `./a//b/` → `a/b`; `None` for the root itself.
pub fn normalize(path: &[u8]) -> Option<Vec<u8>> {
    let parts: Vec<&[u8]> = path
        .split(|&b| b == b'/')
        .filter(|p| !p.is_empty() && *p != b".")
        .collect();
    (!parts.is_empty()).then(|| parts.join(&b'/'))
}

/// `a/b/c` → (`a/b`, `c`); `c` → (``, `c`).
fn split(path: &[u8]) -> (&[u8], &[u8]) {
    match path.iter().rposition(|&b| b == b'/') {
        Some(i) => (&path[..i], &path[i + 1..]),
        None => (&[], path),
    }
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    if dir.is_empty() {
        name.to_vec()
    } else {
        [dir, b"/", name].concat()
    }
}

fn parent(path: &[u8]) -> Option<&[u8]> {
    path.iter().rposition(|&b| b == b'/').map(|i| &path[..i])
}

/// A path in the merged tree.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Node {
    source: Source,
    kind: Kind,
    /// The object has existed at this path without interruption since the
    /// kept layers (a kept node, or a directory merged onto one).
    continuous: bool,
    /// For files and hard links: the entry that holds the content.
    data: Option<Source>,
    link: Option<Vec<u8>>,
}

/// One thing to write into the squashed layer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Emit {
    /// Copy the entry at `source`, under `path`.
    Entry { path: Vec<u8>, source: Source },
    /// Write the file entry at `data` under `path` (a hard link whose
    /// target is gone becomes a regular file).
    Content { path: Vec<u8>, data: Source },
    /// A hard link at `path` to `target`, with the header of `source`.
    Link {
        path: Vec<u8>,
        source: Source,
        target: Vec<u8>,
    },
    /// An empty whiteout file (`dir/.wh.name` or `dir/.wh..wh..opq`).
    Marker { path: Vec<u8> },
}

/// Merges layers bottom-up; see the module docs.
#[derive(Debug, Default)]
pub struct Merger {
    keep: usize,
    layer: usize,
    tree: BTreeMap<Vec<u8>, Node>,
    /// The kept filesystem: path → is a directory. Filled when the first
    /// squashed layer arrives.
    kept: BTreeMap<Vec<u8>, bool>,
}

impl Merger {
    /// A merger that keeps the bottom `keep` layers.
    pub fn new(keep: usize) -> Merger {
        Merger {
            keep,
            ..Merger::default()
        }
    }

    /// Applies the next layer (bottom first).
    pub fn apply(&mut self, items: &[Item]) {
        let layer = self.layer;
        self.layer += 1;
        if layer == self.keep {
            self.snapshot_kept();
        }
        let in_kept = layer < self.keep;
        // A layer's whiteouts apply to the layers below it, never to its
        // own entries, whatever their order in the tar.
        for item in items {
            match item {
                Item::Whiteout(path) => {
                    self.remove_subtree(path, true);
                }
                Item::Opaque(dir) => {
                    self.remove_subtree(dir, false);
                }
                Item::Entry { .. } => {}
            }
        }
        for item in items {
            let Item::Entry {
                path,
                kind,
                start,
                link,
            } = item
            else {
                continue;
            };
            let source = (layer, *start);
            let existing = self.tree.get(path);
            let continuous = match existing {
                Some(old) if old.kind == Kind::Dir && *kind == Kind::Dir => {
                    in_kept || old.continuous
                }
                _ => {
                    self.remove_subtree(path, true);
                    in_kept
                }
            };
            let data = match kind {
                Kind::File => Some(source),
                Kind::HardLink => link
                    .as_ref()
                    .and_then(|target| self.tree.get(target))
                    .and_then(|target| target.data),
                Kind::Dir | Kind::Other => None,
            };
            self.tree.insert(
                path.clone(),
                Node {
                    source,
                    kind: *kind,
                    continuous,
                    data,
                    link: link.clone(),
                },
            );
        }
    }

    fn remove_subtree(&mut self, path: &[u8], including_self: bool) {
        if including_self {
            self.tree.remove(path);
        }
        let prefix = [path, b"/"].concat();
        let doomed: Vec<Vec<u8>> = self
            .tree
            .range(prefix.clone()..)
            .take_while(|(p, _)| p.starts_with(&prefix))
            .map(|(p, _)| p.clone())
            .collect();
        for p in doomed {
            self.tree.remove(&p);
        }
    }

    fn is_continuous(&self, path: &[u8]) -> bool {
        self.tree.get(path).is_some_and(|n| n.continuous)
    }

    fn kept_has_children(&self, dir: &[u8]) -> bool {
        let prefix = [dir, b"/"].concat();
        self.kept
            .range(prefix.clone()..)
            .next()
            .is_some_and(|(p, _)| p.starts_with(&prefix))
    }

    /// Records the tree as it is now as the kept filesystem.
    fn snapshot_kept(&mut self) {
        self.kept = self
            .tree
            .iter()
            .map(|(p, n)| (p.clone(), n.kind == Kind::Dir))
            .collect();
    }

    /// What the squashed layer holds, in writing order: every other entry
    /// sorted by path (parents first), then hard links.
    pub fn finish(mut self) -> Vec<Emit> {
        if self.layer <= self.keep {
            self.snapshot_kept();
        }
        let (mut entries, links) = self.squashed_entries();
        self.add_deletions(&mut entries);
        let (link_emits, needed) = self.resolve_links(links, &mut entries);
        self.add_parents(&mut entries, &link_emits, needed);
        let mut out: Vec<Emit> = entries.into_values().collect();
        out.extend(link_emits);
        out
    }

    /// The nodes the squashed layers put in the tree: entries by path, and
    /// hard links with content as `(path, source, data)`, resolved later.
    fn squashed_entries(&self) -> (BTreeMap<Vec<u8>, Emit>, Vec<PendingLink>) {
        let mut entries: BTreeMap<Vec<u8>, Emit> = BTreeMap::new();
        let mut links: Vec<PendingLink> = Vec::new();
        for (path, node) in &self.tree {
            if node.source.0 < self.keep {
                continue;
            }
            match (node.kind, node.data) {
                (Kind::HardLink, Some(data)) => links.push((path.clone(), node.source, data)),
                _ => {
                    entries.insert(
                        path.clone(),
                        Emit::Entry {
                            path: path.clone(),
                            source: node.source,
                        },
                    );
                }
            }
        }
        (entries, links)
    }

    /// Adds the markers for deletions of kept paths: a whiteout where a
    /// kept path is gone, an opaque marker where a kept directory with
    /// children was removed and made again.
    fn add_deletions(&self, entries: &mut BTreeMap<Vec<u8>, Emit>) {
        for (path, &was_dir) in &self.kept {
            let parent_there = parent(path).is_none_or(|p| self.is_continuous(p));
            if !parent_there || self.is_continuous(path) {
                continue;
            }
            match self.tree.get(path) {
                None => {
                    let (dir, name) = split(path);
                    let marker = join(dir, &[WHITEOUT_PREFIX, name].concat());
                    entries.insert(marker.clone(), Emit::Marker { path: marker });
                }
                Some(node) if node.kind == Kind::Dir && was_dir && self.kept_has_children(path) => {
                    let marker = join(path, OPAQUE_MARKER);
                    entries.insert(marker.clone(), Emit::Marker { path: marker });
                }
                Some(_) => {}
            }
        }
    }

    /// Hard links: to the file that still holds their content, or, if
    /// that file is gone or replaced, the first link becomes the file (in
    /// `entries`). Returns the links and the targets they need.
    fn resolve_links(
        &self,
        links: Vec<PendingLink>,
        entries: &mut BTreeMap<Vec<u8>, Emit>,
    ) -> (Vec<Emit>, BTreeSet<Vec<u8>>) {
        let mut carriers: HashMap<Source, Vec<u8>> = self
            .tree
            .iter()
            .filter(|(_, n)| n.kind == Kind::File)
            .filter_map(|(p, n)| n.data.map(|d| (d, p.clone())))
            .collect();
        let mut link_emits = Vec::new();
        let mut needed: BTreeSet<Vec<u8>> = BTreeSet::new();
        for (path, source, data) in links {
            match carriers.get(&data) {
                Some(target) => {
                    needed.insert(target.clone());
                    link_emits.push(Emit::Link {
                        path,
                        source,
                        target: target.clone(),
                    });
                }
                None => {
                    carriers.insert(data, path.clone());
                    entries.insert(path.clone(), Emit::Content { path, data });
                }
            }
        }
        (link_emits, needed)
    }

    /// Adds the entries of `needed` link targets and of every parent
    /// directory of what the layer holds: the daemon extracts a layer on
    /// its own.
    fn add_parents(
        &self,
        entries: &mut BTreeMap<Vec<u8>, Emit>,
        link_emits: &[Emit],
        needed: BTreeSet<Vec<u8>>,
    ) {
        let mut wanted: BTreeSet<Vec<u8>> = needed;
        for path in entries.keys().chain(link_emits.iter().map(|l| match l {
            Emit::Link { path, .. } => path,
            _ => unreachable!("only links"),
        })) {
            let mut current = parent(path);
            while let Some(p) = current {
                wanted.insert(p.to_vec());
                current = parent(p);
            }
        }
        for path in wanted {
            if entries.contains_key(&path) {
                continue;
            }
            if let Some(node) = self.tree.get(&path) {
                entries.insert(
                    path.clone(),
                    Emit::Entry {
                        path,
                        source: node.source,
                    },
                );
            }
        }
    }
}

/// A hard link of the squashed layers whose target is not settled yet:
/// `(path, source, data)`.
type PendingLink = (Vec<u8>, Source, Source);
