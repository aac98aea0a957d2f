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
//! The tar is indexed once (headers only, by the bounded reader of
//! `supermachine-rootfs`: no record is buffered beyond a small budget, no
//! member may claim bytes past the end of the file); blobs are then read
//! straight from their offsets with positioned reads of the one open file,
//! several at once. The archive must be a regular file (a fifo or device
//! named as one is refused rather than read), symlinks and hard links
//! inside it resolve only to other members, and names from it (RepoTags,
//! paths) are escaped in messages.

use std::collections::HashMap;
use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use sha2::{Digest as _, Sha256};
use supermachine_rootfs::archive::{ArchiveIndex, MemberKind};
use supermachine_rootfs::Escaped;

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
use crate::untrusted;

/// Most members we index (a docker save has a handful per layer).
const MAX_ENTRIES: usize = 1 << 16;
/// Bytes of PAX / long-name records one member may have.
const MAX_HEADER_BYTES: u64 = 64 << 10;
/// Longest member name or link target kept (Linux's `PATH_MAX`).
const MAX_NAME: usize = 4096;
/// Total bytes of names and link targets kept in the index.
const MAX_NAME_BYTES: usize = 16 << 20;
/// Symlink hops followed inside the archive.
const MAX_LINK_HOPS: usize = 8;

#[derive(Clone)]
enum Entry {
    File { offset: u64, size: u64 },
    Link(String),
    Sparse,
}

/// An indexed tar file.
pub(crate) struct TarFiles {
    path: PathBuf,
    file: File,
    entries: HashMap<String, Entry>,
}

impl TarFiles {
    pub(crate) fn index(path: &Path) -> Result<TarFiles> {
        let err = |reason: String| Error::DockerArchive {
            path: path.to_path_buf(),
            reason,
        };
        let (file, _) = untrusted::open_regular(path).map_err(|e| err(e.to_string()))?;
        let mut index = ArchiveIndex::new(&file, MAX_HEADER_BYTES)
            .map_err(|e| err(format!("reading it: {e}")))?;
        let mut entries = HashMap::new();
        let mut name_bytes = 0usize;
        while let Some(member) = index
            .next_member()
            .map_err(|e| err(format!("not a valid tar archive: {e}")))?
        {
            if entries.len() >= MAX_ENTRIES {
                return Err(err(format!("more than {MAX_ENTRIES} entries")));
            }
            let link = match &member.kind {
                MemberKind::Symlink(t) | MemberKind::HardLink(t) => t.len(),
                _ => 0,
            };
            if member.path.len() > MAX_NAME || link > MAX_NAME {
                return Err(err(format!(
                    "member '{}' has a name or link target longer than {MAX_NAME} bytes",
                    Escaped::new(&member.path)
                )));
            }
            name_bytes += member.path.len() + link;
            if name_bytes > MAX_NAME_BYTES {
                return Err(err(format!(
                    "more than {MAX_NAME_BYTES} bytes of member names"
                )));
            }
            let name = normalize(&String::from_utf8_lossy(&member.path));
            let entry = match member.kind {
                MemberKind::File { offset, size } => Entry::File { offset, size },
                MemberKind::Sparse => Entry::Sparse,
                MemberKind::Symlink(target) => {
                    // Relative to the link's own directory.
                    let dir = name.rsplit_once('/').map_or("", |(d, _)| d);
                    let target = String::from_utf8_lossy(&target);
                    Entry::Link(normalize(&format!("{dir}/{target}")))
                }
                MemberKind::HardLink(target) => {
                    Entry::Link(normalize(&String::from_utf8_lossy(&target)))
                }
                MemberKind::Other => continue,
            };
            entries.insert(name, entry);
        }
        Ok(TarFiles {
            path: path.to_path_buf(),
            file,
            entries,
        })
    }

    fn lookup(&self, rel: &str) -> Result<Option<(u64, u64)>> {
        let mut name = normalize(rel);
        for _ in 0..=MAX_LINK_HOPS {
            match self.entries.get(&name) {
                None => return Ok(None),
                Some(Entry::File { offset, size }) => return Ok(Some((*offset, *size))),
                Some(Entry::Sparse) => {
                    return Err(self.error(format!(
                        "{} is a sparse member, which cannot be read as a blob",
                        Escaped::new(rel)
                    )))
                }
                Some(Entry::Link(target)) => name = target.clone(),
            }
        }
        Ok(None)
    }

    fn contains(&self, rel: &str) -> bool {
        matches!(self.lookup(rel), Ok(Some(_)))
    }
}

/// A member's bytes, read with positioned reads of the shared file.
struct Range<'a> {
    file: &'a File,
    pos: u64,
    end: u64,
}

impl Read for Range<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = usize::try_from(self.end - self.pos).unwrap_or(usize::MAX);
        let want = buf.len().min(left);
        if want == 0 {
            return Ok(0);
        }
        let n = self.file.read_at(&mut buf[..want], self.pos)?;
        self.pos += n as u64;
        Ok(n)
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
        let Some((offset, size)) = self.lookup(rel)? else {
            return Ok(None);
        };
        let range = Range {
            file: &self.file,
            pos: offset,
            end: offset + size,
        };
        Ok(Some((Box::new(range), size)))
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
        self.files.open(rel)?.ok_or_else(|| {
            self.files
                .error(format!("{} is missing", Escaped::new(rel)))
        })
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
        .ok_or_else(|| files.error(format!("config {} is missing", Escaped::new(&entry.config))))?;
    let config_digest = Digest::of_bytes(&config_bytes);
    let config = ImageConfig::parse(
        &config_bytes,
        &format!("config {} of {name}", Escaped::new(&entry.config)),
    )?;
    let mut paths = HashMap::from([(config_digest.clone(), entry.config.clone())]);

    let mut layers = Vec::new();
    for (i, rel) in entry.layers.iter().enumerate() {
        let (mut reader, size) = files
            .open(rel)?
            .ok_or_else(|| files.error(format!("layer {} is missing", Escaped::new(rel))))?;
        let mut head = [0u8; 4];
        let n = read_up_to(&mut reader, &mut head)
            .map_err(|e| files.error(format!("reading {}: {e}", Escaped::new(rel))))?;
        let compression = Compression::sniff(&head[..n]);
        let digest = if let Some(hex) = rel.strip_prefix("blobs/sha256/") {
            Digest::parse(&format!("sha256:{hex}"))
                .map_err(|e| files.error(format!("layer path {}: {e}", Escaped::new(rel))))?
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
    #[allow(
        clippy::expect_used,
        reason = "serializing a serde_json::Value (string keys only) cannot fail"
    )]
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
        let all = entries
            .iter()
            .flat_map(|e| e.repo_tags.clone().unwrap_or_default())
            .collect::<Vec<_>>()
            .join(", ");
        Escaped::new(&all).to_string()
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
                .ok_or_else(|| {
                    format!(
                        "no image '{}' in manifest.json (it has: {})",
                        Escaped::new(r),
                        tags()
                    )
                })
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
        .ok_or_else(|| files.error(format!("{} is missing", Escaped::new(rel))))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    loop {
        match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => hasher.update(&buf[..n]),
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(files.error(format!("reading {}: {e}", Escaped::new(rel)))),
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
