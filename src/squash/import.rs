//! Squashing everything into one layer through the daemon's own merged
//! view: the export of a created, never started container is the image's
//! merged filesystem, and `POST /images/create?fromSrc=-&changes=…` makes
//! a one-layer image of it with the config given as Dockerfile-style
//! changes. It reads and writes each byte of the result once, which is
//! about twice as fast as save → merge → load.
//!
//! It is used only when the config can be carried over exactly: the
//! changes the daemon accepts are CMD, ENTRYPOINT, ENV, EXPOSE, LABEL,
//! ONBUILD, USER, VOLUME, WORKDIR (and HEALTHCHECK), so an image with a
//! STOPSIGNAL, SHELL, HEALTHCHECK, ONBUILD or an author is squashed by the
//! merge instead, and so is any image whose imported config, checked
//! afterwards, differs from the original.
//!
//! A container's filesystem also holds what the daemon puts into every
//! container (`/.dockerenv`, empty `/etc/hosts`, `/etc/hostname`,
//! `/etc/resolv.conf`, `/dev/console`, the `/etc/mtab` link and the
//! `/proc`, `/sys`, `/dev/pts`, `/dev/shm` mount points). They hide the
//! image's own versions of those paths in every container, so they are left
//! out of the layer; the daemon makes them again in each container.

use std::collections::BTreeMap;
use std::io::{self, Read, Write};

use serde_json::Value;

use super::merge::normalize;
use super::write::{copy_entry, os_path};

/// The config fields the import can set, in the order they are applied
/// (ENTRYPOINT resets CMD, so it comes first).
const FIELDS: [&str; 12] = [
    "Entrypoint",
    "Cmd",
    "Env",
    "Labels",
    "ExposedPorts",
    "Volumes",
    "User",
    "WorkingDir",
    "Healthcheck",
    "OnBuild",
    "StopSignal",
    "Shell",
];

/// The Dockerfile-style changes that recreate `config` (the Engine API's
/// image config), or `None` if it cannot be expressed exactly.
pub fn changes(config: &Value, author: &str) -> Option<Vec<String>> {
    if !author.is_empty() {
        return None;
    }
    for unsupported in ["Healthcheck", "OnBuild", "StopSignal", "Shell"] {
        if present(&config[unsupported]) {
            return None;
        }
    }
    let mut out = Vec::new();
    for (field, instruction) in [("Entrypoint", "ENTRYPOINT"), ("Cmd", "CMD")] {
        if let Some(list) = config[field].as_array().filter(|l| !l.is_empty()) {
            let strings = strings(list)?;
            out.push(format!(
                "{instruction} {}",
                serde_json::to_string(&strings).ok()?
            ));
        }
    }
    if let Some(env) = config["Env"].as_array() {
        for pair in strings(env)? {
            let (key, value) = pair.split_once('=')?;
            if key.is_empty()
                || !key
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"_.-".contains(&b))
            {
                return None;
            }
            out.push(format!("ENV {key}={}", quote(value)?));
        }
    }
    if let Some(labels) = config["Labels"].as_object() {
        for (key, value) in labels {
            out.push(format!("LABEL {}={}", quote(key)?, quote(value.as_str()?)?));
        }
    }
    let ports = names(&config["ExposedPorts"])?;
    if !ports.is_empty() {
        if ports.iter().any(|p| {
            !p.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/-".contains(&b))
        }) {
            return None;
        }
        out.push(format!("EXPOSE {}", ports.join(" ")));
    }
    let volumes = names(&config["Volumes"])?;
    if !volumes.is_empty() {
        if volumes.iter().any(|v| v.contains('$') || v.contains('\n')) {
            return None;
        }
        out.push(format!("VOLUME {}", serde_json::to_string(&volumes).ok()?));
    }
    for (field, instruction) in [("User", "USER"), ("WorkingDir", "WORKDIR")] {
        if let Some(value) = config[field].as_str().filter(|v| !v.is_empty()) {
            if !value
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"/_.:-@+".contains(&b))
            {
                return None;
            }
            out.push(format!("{instruction} {value}"));
        }
    }
    Some(out)
}

/// Whether the imported config equals the original on every field the
/// import can set (a missing field equals an empty one).
pub fn same_config(original: &Value, imported: &Value) -> bool {
    FIELDS
        .iter()
        .all(|field| canonical(&original[*field]) == canonical(&imported[*field]))
}

fn canonical(value: &Value) -> Value {
    match value {
        v if !present(v) => Value::Null,
        Value::Object(map) => {
            let sorted: BTreeMap<_, _> = map.iter().collect();
            serde_json::to_value(sorted).unwrap_or(Value::Null)
        }
        other => other.clone(),
    }
}

fn present(value: &Value) -> bool {
    match value {
        Value::Null => false,
        Value::String(s) => !s.is_empty(),
        Value::Array(a) => !a.is_empty(),
        // `{"80/tcp": {}}`: the keys matter even when the values are empty.
        Value::Object(o) => !o.is_empty(),
        _ => true,
    }
}

fn strings(list: &[Value]) -> Option<Vec<String>> {
    list.iter()
        .map(|v| {
            v.as_str()
                .filter(|s| !s.contains(['\n', '\r']))
                .map(str::to_string)
        })
        .collect()
}

/// Port or volume names, whether the API gave a map or a list.
fn names(value: &Value) -> Option<Vec<String>> {
    match value {
        Value::Null => Some(Vec::new()),
        Value::Object(map) => Some(map.keys().cloned().collect()),
        Value::Array(list) => strings(list),
        _ => None,
    }
}

/// A double-quoted Dockerfile word: `\`, `"` and `$` escaped.
fn quote(value: &str) -> Option<String> {
    if value.contains(['\n', '\r']) {
        return None;
    }
    let mut out = String::with_capacity(value.len() + 2);
    out.push('"');
    for c in value.chars() {
        if matches!(c, '\\' | '"' | '$') {
            out.push('\\');
        }
        out.push(c);
    }
    out.push('"');
    Some(out)
}

/// Files the daemon creates in every container.
const CONTAINER_FILES: [&str; 5] = [
    ".dockerenv",
    "etc/hosts",
    "etc/hostname",
    "etc/resolv.conf",
    "dev/console",
];

/// Directories the daemon creates in every container; left out when
/// nothing of the image is inside them.
const CONTAINER_DIRS: [&str; 6] = ["dev", "dev/pts", "dev/shm", "etc", "proc", "sys"];

/// A directory held back: path, header, PAX records.
type Pending = (Vec<u8>, tar::Header, Vec<(String, Vec<u8>)>);

/// Copies a container export from `reader` to `out` without what the
/// daemon adds to every container; see the module docs.
pub fn filter_export<R: Read, W: Write>(reader: R, out: W) -> io::Result<W> {
    let mut archive = tar::Archive::new(reader);
    let mut builder = tar::Builder::new(out);
    // Directories held back until something of the image shows up inside:
    // (path, header, PAX records). An export lists parents first.
    let mut pending: Vec<Pending> = Vec::new();
    for entry in archive.entries()? {
        let mut entry = entry?;
        let Some(path) = normalize(&entry.path_bytes()) else {
            continue;
        };
        while pending
            .last()
            .is_some_and(|(dir, _, _)| !path.starts_with(&[dir.as_slice(), b"/"].concat()))
        {
            pending.pop();
        }
        let text = String::from_utf8_lossy(&path);
        let entry_type = entry.header().entry_type();
        let added_by_daemon = match entry_type {
            tar::EntryType::Regular => CONTAINER_FILES.contains(&&*text) && entry.size() == 0,
            tar::EntryType::Symlink => {
                text == "etc/mtab"
                    && entry.link_name_bytes().as_deref() == Some(b"/proc/mounts".as_slice())
            }
            _ => false,
        };
        if added_by_daemon {
            continue;
        }
        if entry_type == tar::EntryType::Directory && CONTAINER_DIRS.contains(&&*text) {
            let mut records = Vec::new();
            if let Some(extensions) = entry.pax_extensions()? {
                for extension in extensions {
                    let extension = extension?;
                    if let Ok(key) = extension.key() {
                        if key != "path" {
                            records.push((key.to_string(), extension.value_bytes().to_vec()));
                        }
                    }
                }
            }
            pending.push((path, entry.header().clone(), records));
            continue;
        }
        for (dir, mut header, records) in pending.drain(..) {
            if !records.is_empty() {
                builder.append_pax_extensions(
                    records.iter().map(|(k, v)| (k.as_str(), v.as_slice())),
                )?;
            }
            builder.append_data(&mut header, os_path(&dir), io::empty())?;
        }
        copy_entry(&mut builder, &mut entry, &path, None, false)?;
    }
    builder.into_inner()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::{changes, same_config};

    #[test]
    fn config_becomes_changes_in_an_order_the_daemon_applies_right() {
        let config = json!({
            "Entrypoint": ["/bin/app"],
            "Cmd": ["--flag", "a b"],
            "Env": ["PATH=/usr/bin:/bin", "QUOTED=say \"hi\" $HOME \\ end"],
            "Labels": {"com.example/x": "1"},
            "ExposedPorts": {"80/tcp": {}, "53/udp": {}},
            "Volumes": {"/data": {}},
            "User": "app",
            "WorkingDir": "/srv",
        });
        assert_eq!(
            changes(&config, "").unwrap(),
            [
                r#"ENTRYPOINT ["/bin/app"]"#,
                r#"CMD ["--flag","a b"]"#,
                r#"ENV PATH="/usr/bin:/bin""#,
                r#"ENV QUOTED="say \"hi\" \$HOME \\ end""#,
                r#"LABEL "com.example/x"="1""#,
                "EXPOSE 53/udp 80/tcp",
                r#"VOLUME ["/data"]"#,
                "USER app",
                "WORKDIR /srv",
            ]
        );
    }

    #[test]
    fn configs_the_import_cannot_express_are_refused() {
        assert_eq!(changes(&json!({"StopSignal": "SIGINT"}), ""), None);
        assert_eq!(changes(&json!({"Shell": ["/bin/bash", "-c"]}), ""), None);
        assert_eq!(changes(&json!({"Env": ["A=line\nbreak"]}), ""), None);
        assert_eq!(changes(&json!({"WorkingDir": "/my dir"}), ""), None);
        assert_eq!(changes(&json!({}), "someone"), None);
        assert_eq!(changes(&json!({"Cmd": null, "Env": []}), ""), Some(vec![]));
    }

    #[test]
    fn empty_and_missing_fields_compare_equal() {
        assert!(same_config(
            &json!({"Cmd": ["sh"], "Env": [], "Labels": null}),
            &json!({"Cmd": ["sh"], "Volumes": {}})
        ));
        assert!(!same_config(
            &json!({"Cmd": ["sh"]}),
            &json!({"Cmd": ["bash"]})
        ));
    }
}
