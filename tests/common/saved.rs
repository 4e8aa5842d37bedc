//! Reading `docker save IMAGE` the way the daemon under test writes it:
//! the legacy layout (Docker 20.10) or the OCI layout (Docker 25+), layers
//! plain, gzip or zstd. Every layer the manifest lists is read to its end
//! and checked against the diff id `docker image inspect` gives; a layer
//! that cannot be read, a member the archive lacks, or an image without
//! layers fails the test: a check that read nothing proves nothing.

use std::collections::HashMap;
use std::io::Read;

use super::docker;

/// One layer of a saved image, decompressed.
pub struct SavedLayer {
    /// The uncompressed tar.
    pub tar: Vec<u8>,
    /// The paths it holds, as written (`./` trimmed).
    pub names: Vec<String>,
    /// The member of the archive it was read from.
    pub member: String,
}

/// A saved image: the archive as `docker save` wrote it, and its layers.
pub struct SavedImage {
    pub archive: Vec<u8>,
    /// Every regular member, by canonical path.
    pub members: HashMap<String, Vec<u8>>,
    /// Bottom first.
    pub layers: Vec<SavedLayer>,
}

/// The diff ids of `image`, bottom first.
pub fn layers(image: &str) -> Vec<String> {
    serde_json::from_str(&docker(&[
        "image",
        "inspect",
        "-f",
        "{{json .RootFS.Layers}}",
        image,
    ]))
    .unwrap()
}

/// Every layer of `docker save IMAGE`, bottom first, each read to its end.
pub fn saved_layers(image: &str) -> Vec<SavedLayer> {
    saved_image(image).layers
}

/// `docker save IMAGE`, its members and its layers (see the module doc).
pub fn saved_image(image: &str) -> SavedImage {
    use habitus::layer::{link_target, member_path};
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("save.tar");
    docker(&["save", "-o", file.to_str().unwrap(), image]);
    let archive = std::fs::read(&file).expect("read the saved image");
    let mut members: HashMap<String, Vec<u8>> = HashMap::new();
    let mut links: HashMap<String, String> = HashMap::new();
    let mut outer = tar::Archive::new(archive.as_slice());
    for entry in outer.entries().expect("read the saved image") {
        let mut entry = entry.expect("read an entry of the saved image");
        let name = member_path(&entry.path().unwrap().to_string_lossy());
        match entry.header().entry_type() {
            tar::EntryType::Regular => {
                let mut bytes = Vec::new();
                entry.read_to_end(&mut bytes).unwrap();
                members.insert(name, bytes);
            }
            tar::EntryType::Symlink | tar::EntryType::Link => {
                let target = entry.link_name().unwrap().unwrap();
                let target = target.to_string_lossy();
                let resolved = if entry.header().entry_type() == tar::EntryType::Link {
                    member_path(&target)
                } else {
                    link_target(&name, &target)
                };
                links.insert(name, resolved);
            }
            _ => {}
        }
    }
    let manifest: serde_json::Value = serde_json::from_slice(
        members
            .get("manifest.json")
            .expect("the saved image has a manifest.json"),
    )
    .expect("manifest.json is JSON");
    let names: Vec<String> = manifest[0]["Layers"]
        .as_array()
        .expect("manifest.json lists layers")
        .iter()
        .map(|l| l.as_str().unwrap().to_string())
        .collect();
    let diff_ids = layers(image);
    assert!(!diff_ids.is_empty(), "`{image}` has no layer");
    assert_eq!(names.len(), diff_ids.len(), "layers of `{image}`");
    let layers = names
        .iter()
        .zip(&diff_ids)
        .enumerate()
        .map(|(i, (name, diff_id))| {
            let mut member = member_path(name);
            for _ in 0..8 {
                match links.get(&member) {
                    Some(target) => member = target.clone(),
                    None => break,
                }
            }
            let bytes = members
                .get(&member)
                .unwrap_or_else(|| panic!("layer {i} of `{image}`: no member `{name}`"));
            let mut layer = habitus::layer::Layer::open(bytes.as_slice())
                .unwrap_or_else(|e| panic!("layer {i} of `{image}` (`{name}`): {e}"));
            let mut tar = Vec::new();
            layer
                .read_to_end(&mut tar)
                .unwrap_or_else(|e| panic!("layer {i} of `{image}` (`{name}`): {e}"));
            let summary = layer.finish().unwrap();
            assert_eq!(&summary.diff_id, diff_id, "layer {i} of `{image}`");
            let mut names = Vec::new();
            for entry in tar::Archive::new(tar.as_slice()).entries().unwrap() {
                let entry =
                    entry.unwrap_or_else(|e| panic!("layer {i} of `{image}` (`{name}`): {e}"));
                let path = entry.path().unwrap().to_string_lossy().into_owned();
                names.push(path.trim_start_matches("./").to_string());
            }
            SavedLayer { tar, names, member }
        })
        .collect();
    SavedImage {
        archive,
        members,
        layers,
    }
}
