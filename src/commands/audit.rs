//! `habitus audit IMAGE…`: looks for secret values in every layer and the
//! config of images, and optionally for files that later layers only hide.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use zeroize::Zeroizing;

use super::{connect, runtime};
use crate::audit::{self as auditor, Scanner};
use crate::config::Config;
use crate::error::Error;
use crate::manifest::{self, LoadOptions};
use crate::progress::{print_stderr, print_stdout};
use crate::runner::human_size;
use crate::secrets;

/// A secret's name and value, zeroized on drop.
type NamedSecret = (String, Zeroizing<Vec<u8>>);

/// Where `habitus audit` takes the secrets to look for.
pub struct Sources {
    pub from_build: Option<PathBuf>,
    pub files: Vec<PathBuf>,
    pub env: Vec<String>,
}

impl Sources {
    fn is_empty(&self) -> bool {
        self.from_build.is_none() && self.files.is_empty() && self.env.is_empty()
    }
}

/// Audits each image; fails with [`Error::Leak`] if any secret was found,
/// and with `strict`, with [`Error::Audit`] if anything was not searched.
pub fn audit(
    config: &Config,
    images: &[String],
    sources: &Sources,
    shadowed: bool,
    strict: bool,
) -> Result<(), Error> {
    let secrets = if shadowed && sources.is_empty() {
        Vec::new()
    } else {
        secret_values(config, sources)?
    };
    let (scanner, skipped) = Scanner::new(
        secrets
            .iter()
            .map(|(name, value)| (name.as_str(), value.as_slice())),
    );
    for name in skipped {
        print_stderr(&format!(
            "warning: secret `{name}` is shorter than {} bytes: not searched for",
            auditor::MIN_SECRET_LEN
        ));
    }
    let scanner = Arc::new(scanner);
    let runtime = runtime()?;
    let hits = runtime.block_on(async {
        let engine = connect(config).await?;
        let (mut hits, mut unsearched) = (0, 0);
        for image in images {
            let result = auditor::audit_image(&engine, image, Arc::clone(&scanner))
                .await
                .map_err(|e| Error::Audit(e.to_string()))?;
            hits += result.hits.len();
            unsearched += result.not_searched.len();
            report(config.output.json, image, &result, &scanner, shadowed);
        }
        Ok::<(usize, usize), Error>((hits, unsearched))
    })?;
    let (hits, unsearched) = hits;
    if hits > 0 {
        Err(Error::Leak { hits })
    } else if strict && unsearched > 0 {
        Err(Error::Audit(format!(
            "{unsearched} part(s) of the image(s) not searched (listed above); --strict makes that an error"
        )))
    } else {
        Ok(())
    }
}

/// Prints one image's findings: JSON, or a line per hit and per shadowed
/// file, and the "no secret" line on stderr.
fn report(
    json: bool,
    image: &str,
    result: &auditor::ImageAudit,
    scanner: &Scanner,
    shadowed: bool,
) {
    if json {
        let value = serde_json::json!({
            "image": image,
            "layers": result.layers,
            "bytes": result.bytes,
            "nested": result.nested,
            "hits": result.hits,
            "not_searched": result.not_searched,
            "shadowed": if shadowed { serde_json::to_value(result.shadowed()).unwrap_or_default() } else { serde_json::Value::Null },
        });
        print_stdout(&value.to_string());
        return;
    }
    for hit in &result.hits {
        print_stdout(&hit.describe(image));
    }
    for skipped in &result.not_searched {
        print_stdout(&skipped.describe(image));
    }
    if shadowed {
        for s in result.shadowed() {
            print_stdout(&format!(
                "{image}: `/{}` ({} bytes) added in layer {}, {} in layer {}: it still ships",
                s.path, s.size, s.added_in, s.how, s.hidden_in
            ));
        }
    }
    if result.hits.is_empty() && !scanner.is_empty() {
        let unsearched = if result.not_searched.is_empty() {
            String::new()
        } else {
            format!(
                "; {} part(s) not searched, listed above",
                result.not_searched.len()
            )
        };
        print_stderr(&format!(
            "{image}: no secret in {} layer(s) ({} read to their end), {} nested file(s) and the config{unsearched}",
            result.layers,
            human_size(i64::try_from(result.bytes).unwrap_or(i64::MAX)),
            result.nested
        ));
    }
}

/// Reads the secrets named on the command line into zeroized buffers.
fn secret_values(config: &Config, sources: &Sources) -> Result<Vec<NamedSecret>, Error> {
    let mut out = Vec::new();
    for path in &sources.files {
        let value = std::fs::read(path).map_err(|source| Error::Io {
            what: format!("cannot read secret file `{}`", path.display()),
            source,
        })?;
        out.push((path.display().to_string(), Zeroizing::new(value)));
    }
    for name in &sources.env {
        let value = std::env::var_os(name).ok_or_else(|| {
            Error::Usage(format!("--secret-env `{name}`: the variable is not set"))
        })?;
        out.push((name.clone(), Zeroizing::new(value.into_encoded_bytes())));
    }
    if let Some(file) = &sources.from_build {
        out.extend(secrets_of_build(config, file)?);
    }
    if out.is_empty() {
        return Err(Error::Usage(
            "nothing to look for: give --secrets-from, --secret-file or --secret-env".into(),
        ));
    }
    Ok(out)
}

/// The secrets a build.yml declares, resolved by their providers: the
/// build's own resolution (`--sec-providers`, paths from the build's work
/// dir, size limit and errors).
fn secrets_of_build(config: &Config, file: &Path) -> Result<Vec<NamedSecret>, Error> {
    let workdir = file
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let loaded = manifest::load(&LoadOptions {
        file,
        workdir,
        env: &config.env,
        sec_providers: &config.secrets.providers,
        untrusted: config.untrusted.as_ref(),
    })
    .map_err(Error::Manifest)?;
    let store = secrets::provider::resolve(&loaded.manifest, &config.secrets.providers, &|name| {
        std::env::var_os(name)
    })
    .map_err(|e| Error::Usage(e.to_string()))?;
    // Every step's values, named `step: type/name` as the build names
    // them (the scanner merges the names of one value).
    let mut out: Vec<NamedSecret> = Vec::new();
    for step in store.steps() {
        for (key, secret) in store.of_step(step) {
            out.push((
                format!("{step}: {}", key.path()),
                Zeroizing::new(secret.expose().to_vec()),
            ));
        }
    }
    Ok(out)
}
