//! `docker save` archives (`docker-archive:FILE[:name:tag]`).
//!
//! Two shapes exist. Docker ≥ 25 writes an OCI layout into the tar
//! (`oci-layout`, `index.json`, `blobs/sha256/…`) next to the legacy
//! `manifest.json`; then we read it as a layout, so the image keeps the
//! digest it has in a registry. Older archives only have `manifest.json`
//! (`Config`, `RepoTags`, `Layers` as paths like `<id>/layer.tar`, maybe
//! symlinks between layer dirs); for them we synthesize an OCI manifest:
//! uncompressed layers are verified against the config's `diff_ids`,
//! compressed ones are hashed.
//!
//! The tar is indexed once (headers only, data skipped by seeking); blobs
//! are then read straight from their offsets, several at once.

use std::collections::HashMap;
use std::fs::File;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::image_config::ImageConfig;
use crate::layout::{self, LayoutBlobs, LayoutFiles, LocalBlobs, Opened};
use crate::manifest::{
    Compression, Platform, MAX_CONFIG_BYTES, MAX_LAYERS, MAX_MANIFEST_BYTES, OCI_CONFIG,
    OCI_MANIFEST,
};
use crate::pull::{Fetcher, Resolved};
use crate::reference::Reference;

/// Most entries we index (a docker save has a handful per layer).
const MAX_ENTRIES: usize = 1 << 20;
/// Symlink hops followed inside the archive.
const MAX_LINK_HOPS: usize = 8;

#[derive(Clone)]
enum Entry {
    File { offset: u64, size: u64 },
    Link(String),
}

/// An indexed tar file.
pub(crate) struct TarFiles {
    path: PathBuf,
    entries: HashMap<String, Entry>,
}

impl TarFiles {
    pub(crate) fn index(path: &Path) -> Result<TarFiles> {
        let err = |reason: String| Error::DockerArchive {
            path: path.to_path_buf(),
            reason,
        };
        let file = File::open(path).map_err(|e| err(e.to_string()))?;
        let mut archive = tar::Archive::new(file);
        let mut entries = HashMap::new();
        let iter = archive
            .entries_with_seek()
            .map_err(|e| err(format!("not a tar archive: {e}")))?;
        for entry in iter {
            let entry = entry.map_err(|e| err(format!("not a valid tar archive: {e}")))?;
            if entries.len() >= MAX_ENTRIES {
                return Err(err(format!("more than {MAX_ENTRIES} entries")));
            }
            let name = match entry.path() {
                Ok(p) => normalize(&p.to_string_lossy()),
                Err(_) => continue,
            };
            let kind = entry.header().entry_type();
            if kind.is_file() {
                entries.insert(
                    name,
                    Entry::File {
                        offset: entry.raw_file_position(),
                        size: entry.size(),
                    },
                );
            } else if kind.is_symlink() || kind.is_hard_link() {
                if let Ok(Some(target)) = entry.link_name() {
                    let target = target.to_string_lossy().to_string();
                    let resolved = if kind.is_symlink() {
                        // Relative to the link's own directory.
                        let dir = name.rsplit_once('/').map_or("", |(d, _)| d);
                        normalize(&format!("{dir}/{target}"))
                    } else {
                        normalize(&target)
                    };
                    entries.insert(name, Entry::Link(resolved));
                }
            }
        }
        Ok(TarFiles {
            path: path.to_path_buf(),
            entries,
        })
    }

    fn lookup(&self, rel: &str) -> Option<(u64, u64)> {
        let mut name = normalize(rel);
        for _ in 0..=MAX_LINK_HOPS {
            match self.entries.get(&name)? {
                Entry::File { offset, size } => return Some((*offset, *size)),
                Entry::Link(target) => name = target.clone(),
            }
        }
        None
    }

    fn contains(&self, rel: &str) -> bool {
        self.lookup(rel).is_some()
    }
}

/// `./a/../b//c` → `b/c` (lexically; names never leave the archive).
fn normalize(p: &str) -> String {
    let mut out: Vec<&str> = Vec::new();
    for part in p.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                out.pop();
            }
            x => out.push(x),
        }
    }
    out.join("/")
}

impl LayoutFiles for TarFiles {
    fn open(&self, rel: &str) -> Result<Option<Opened<'_>>> {
        let Some((offset, size)) = self.lookup(rel) else {
            return Ok(None);
        };
        let mut f = File::open(&self.path).map_err(|e| self.error(e.to_string()))?;
        f.seek(SeekFrom::Start(offset))
            .map_err(|e| self.error(format!("reading {rel}: {e}")))?;
        Ok(Some((Box::new(f.take(size)), size)))
    }
    fn error(&self, reason: String) -> Error {
        Error::DockerArchive {
            path: self.path.clone(),
            reason,
        }
    }
}

/// Legacy archives: blobs by digest → path in the tar.
struct ArchiveBlobs {
    files: TarFiles,
    paths: HashMap<Digest, String>,
}

impl LocalBlobs for ArchiveBlobs {
    fn open_blob(&self, digest: &Digest) -> Result<Opened<'_>> {
        let rel = self
            .paths
            .get(digest)
            .ok_or_else(|| self.files.error(format!("no file for blob {digest}")))?;
        self.files
            .open(rel)?
            .ok_or_else(|| self.files.error(format!("{rel} is missing")))
    }
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct ManifestEntry {
    config: String,
    #[serde(default)]
    repo_tags: Option<Vec<String>>,
    layers: Vec<String>,
}

/// Resolves `docker-archive:PATH[:REF]`.
pub(crate) fn resolve(
    path: &Path,
    reference: Option<&str>,
    platform: &Platform,
) -> Result<(Resolved, Fetcher)> {
    let files = TarFiles::index(path)?;
    let name = format!("docker-archive:{}", path.display());
    if files.contains("oci-layout") && files.contains("index.json") {
        let resolved = layout::resolve_files(&files, reference, platform, &name)?;
        return Ok((resolved, Fetcher::Local(Arc::new(LayoutBlobs(files)))));
    }
    let manifest_json = layout::read_small(&files, "manifest.json", MAX_MANIFEST_BYTES)?
        .ok_or_else(|| {
            files.error("no manifest.json and no index.json: not a docker save archive".into())
        })?;
    let entries: Vec<ManifestEntry> = serde_json::from_slice(&manifest_json)
        .map_err(|e| files.error(format!("manifest.json is not valid: {e}")))?;
    let entry = select(&entries, reference).map_err(|r| files.error(r))?;
    if entry.layers.len() > MAX_LAYERS {
        return Err(files.error(format!(
            "{} layers (limit {MAX_LAYERS})",
            entry.layers.len()
        )));
    }

    let config_bytes = layout::read_small(&files, &entry.config, MAX_CONFIG_BYTES)?
        .ok_or_else(|| files.error(format!("config {} is missing", entry.config)))?;
    let config_digest = Digest::of_bytes(&config_bytes);
    let config = ImageConfig::parse(&config_bytes, &format!("config {} of {name}", entry.config))?;
    let mut paths = HashMap::from([(config_digest.clone(), entry.config.clone())]);

    let mut layers = Vec::new();
    for (i, rel) in entry.layers.iter().enumerate() {
        let (mut reader, size) = files
            .open(rel)?
            .ok_or_else(|| files.error(format!("layer {rel} is missing")))?;
        let mut head = [0u8; 4];
        let n = read_up_to(&mut reader, &mut head)
            .map_err(|e| files.error(format!("reading {rel}: {e}")))?;
        let compression = Compression::sniff(&head[..n]);
        let digest = if let Some(hex) = rel.strip_prefix("blobs/sha256/") {
            Digest::parse(&format!("sha256:{hex}"))
                .map_err(|e| files.error(format!("layer path {rel}: {e}")))?
        } else if let (Compression::None, Some(diff_id)) = (compression, config.diff_ids.get(i)) {
            // An uncompressed layer's digest is its diff_id: copying it
            // into the store verifies it against the config.
            Digest::parse(diff_id).map_err(|reason| Error::InvalidDigest {
                input: diff_id.clone(),
                context: format!("diff_ids of {name}"),
                reason,
            })?
        } else {
            hash_entry(&files, rel)?
        };
        paths.insert(digest.clone(), rel.clone());
        layers.push(serde_json::json!({
            "mediaType": compression.oci_media_type(),
            "digest": digest,
            "size": size,
        }));
    }
    let manifest = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": config_bytes.len()},
        "layers": layers,
    });
    let manifest_bytes = serde_json::to_vec(&manifest).expect("manifest serializes");
    let resolved = Resolved {
        index: None,
        manifest: (Digest::of_bytes(&manifest_bytes), manifest_bytes),
    };
    Ok((
        resolved,
        Fetcher::Local(Arc::new(ArchiveBlobs { files, paths })),
    ))
}

fn select<'a>(
    entries: &'a [ManifestEntry],
    reference: Option<&str>,
) -> std::result::Result<&'a ManifestEntry, String> {
    let tags = || {
        entries
            .iter()
            .flat_map(|e| e.repo_tags.clone().unwrap_or_default())
            .collect::<Vec<_>>()
            .join(", ")
    };
    match reference {
        Some(r) => {
            let wanted = Reference::parse(r).ok();
            entries
                .iter()
                .find(|e| {
                    e.repo_tags
                        .iter()
                        .flatten()
                        .any(|t| t == r || (wanted.is_some() && Reference::parse(t).ok() == wanted))
                })
                .ok_or_else(|| format!("no image {r:?} in manifest.json (it has: {})", tags()))
        }
        None => match entries {
            [one] => Ok(one),
            [] => Err("manifest.json lists no images".into()),
            _ => Err(format!(
                "holds {} images; name one with docker-archive:PATH:NAME:TAG (it has: {})",
                entries.len(),
                tags()
            )),
        },
    }
}

fn read_up_to(r: &mut dyn Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
    }
    Ok(n)
}

fn hash_entry(files: &TarFiles, rel: &str) -> Result<Digest> {
    let (mut reader, _) = files
        .open(rel)?
        .ok_or_else(|| files.error(format!("{rel} is missing")))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(files.error(format!("reading {rel}: {e}"))),
        }
    }
    Ok(Digest::from_hasher(hasher))
}

#[cfg(test)]
mod tests {
    use super::normalize;

    #[test]
    fn normalizes_names() {
        assert_eq!(normalize("./a//b/./c"), "a/b/c");
        assert_eq!(normalize("abc/../def/layer.tar"), "def/layer.tar");
        assert_eq!(normalize("../../etc/passwd"), "etc/passwd");
    }
}
