//! OCI image layouts (`oci:DIR[:TAG]`), and the local-blob copying shared
//! with docker archives (a newer `docker save` tar *is* an OCI layout).
//!
//! A layout is untrusted: its files are opened beneath its directory with
//! nothing followed (see `untrusted`), must be regular files, and a blob's
//! size is compared with its descriptor before a byte of it is read. Tags
//! and other strings from index.json are escaped in messages.

use std::io::Read;
use std::path::{Path, PathBuf};

use supermachine_rootfs::Escaped;

use crate::digest::Digest;
use crate::error::{Error, Result};
use crate::manifest::{
    self, Desc, Parsed, Platform, DOCKER_MANIFEST_LIST, MAX_MANIFEST_BYTES, OCI_INDEX,
};
use crate::pull::{Fetcher, PullEvent, PullOptions, Resolved};
use crate::reference::Reference;
use crate::store::BlobWriter;
use crate::untrusted::{Beneath, OpenError};

/// Annotation that names an image in an OCI layout's index.json.
pub const REF_NAME_ANNOTATION: &str = "org.opencontainers.image.ref.name";
/// Annotation containerd (and `docker save`) put the full image name in.
const CONTAINERD_NAME_ANNOTATION: &str = "io.containerd.image.name";
/// Nested indexes we follow before giving up (real images use one level).
const MAX_INDEX_DEPTH: usize = 4;

/// A readable file and its size.
pub(crate) type Opened<'a> = (Box<dyn Read + Send + 'a>, u64);

/// Files of a layout, by path relative to its root (a directory or a tar).
pub(crate) trait LayoutFiles: Send + Sync {
    /// Opens `rel`, or `Ok(None)` if it does not exist.
    fn open(&self, rel: &str) -> Result<Option<Opened<'_>>>;
    /// An error about this layout.
    fn error(&self, reason: String) -> Error;
}

/// Blobs by digest, for copying into the store.
pub(crate) trait LocalBlobs: Send + Sync {
    fn open_blob(&self, digest: &Digest) -> Result<Opened<'_>>;
}

/// A layout directory on disk.
pub(crate) struct DirFiles {
    path: PathBuf,
    dir: Beneath,
}

impl DirFiles {
    /// Opens the layout directory the user named.
    pub(crate) fn open_dir(path: &Path) -> Result<Self> {
        let dir = Beneath::open_dir(path).map_err(|e| Error::Layout {
            path: path.to_path_buf(),
            reason: format!("not a readable directory: {e}"),
        })?;
        Ok(Self {
            path: path.to_path_buf(),
            dir,
        })
    }
}

impl LayoutFiles for DirFiles {
    fn open(&self, rel: &str) -> Result<Option<Opened<'_>>> {
        match self.dir.open(rel) {
            Ok((f, len)) => Ok(Some((Box::new(f), len))),
            Err(OpenError::Missing) => Ok(None),
            Err(e) => Err(self.error(format!("{rel} is refused: {e}"))),
        }
    }
    fn error(&self, reason: String) -> Error {
        Error::Layout {
            path: self.path.clone(),
            reason,
        }
    }
}

/// A layout's blobs live at `blobs/sha256/<hex>`.
pub(crate) struct LayoutBlobs<F>(pub F);

impl<F: LayoutFiles> LocalBlobs for LayoutBlobs<F> {
    fn open_blob(&self, digest: &Digest) -> Result<Opened<'_>> {
        let rel = blob_rel(digest);
        self.0
            .open(&rel)?
            .ok_or_else(|| self.0.error(format!("blob {digest} is missing ({rel})")))
    }
}

fn blob_rel(digest: &Digest) -> String {
    format!("blobs/sha256/{}", digest.hex())
}

/// Resolves `oci:DIR[:TAG]`.
pub(crate) fn resolve_dir(
    dir: &Path,
    tag: Option<&str>,
    platform: &Platform,
) -> Result<(Resolved, Fetcher)> {
    let files = DirFiles::open_dir(dir)?;
    let resolved = resolve_files(&files, tag, platform, &format!("oci:{}", dir.display()))?;
    Ok((
        resolved,
        Fetcher::Local(std::sync::Arc::new(LayoutBlobs(files))),
    ))
}

/// Reads a small file whole, refusing more than `limit` bytes.
pub(crate) fn read_small(
    files: &dyn LayoutFiles,
    rel: &str,
    limit: u64,
) -> Result<Option<Vec<u8>>> {
    let Some((reader, len)) = files.open(rel)? else {
        return Ok(None);
    };
    manifest::check_size(rel, len, limit)?;
    let mut buf = Vec::new();
    reader
        .take(limit + 1)
        .read_to_end(&mut buf)
        .map_err(|e| files.error(format!("reading {rel}: {e}")))?;
    manifest::check_size(rel, buf.len() as u64, limit)?;
    Ok(Some(buf))
}

/// Reads a small blob named by `desc` and checks its size and digest.
fn read_verified(files: &dyn LayoutFiles, desc: &Desc, what: &str) -> Result<Vec<u8>> {
    manifest::check_size(what, desc.size, MAX_MANIFEST_BYTES)?;
    let rel = blob_rel(&desc.digest);
    let bytes = read_small(files, &rel, MAX_MANIFEST_BYTES)?
        .ok_or_else(|| files.error(format!("{what} is missing ({rel})")))?;
    let actual = Digest::of_bytes(&bytes);
    if actual != desc.digest {
        return Err(Error::DigestMismatch {
            what: what.to_string(),
            expected: desc.digest.clone(),
            actual,
        });
    }
    if bytes.len() as u64 != desc.size {
        return Err(Error::SizeMismatch {
            what: what.to_string(),
            expected: desc.size,
            actual: bytes.len() as u64,
            truncated: false,
        });
    }
    Ok(bytes)
}

/// Resolves the image in a layout (directory or tar): index.json → tagged
/// entry → (platform entry of a nested index) → manifest.
pub(crate) fn resolve_files(
    files: &dyn LayoutFiles,
    tag: Option<&str>,
    platform: &Platform,
    name: &str,
) -> Result<Resolved> {
    let layout = read_small(files, "oci-layout", 64 << 10)?
        .ok_or_else(|| files.error("not an OCI image layout: no oci-layout file".into()))?;
    let version: serde_json::Value = serde_json::from_slice(&layout)
        .map_err(|e| files.error(format!("oci-layout is not JSON: {e}")))?;
    if version
        .get("imageLayoutVersion")
        .and_then(|v| v.as_str())
        .is_none()
    {
        return Err(files.error("oci-layout has no imageLayoutVersion".into()));
    }
    let index_bytes = read_small(files, "index.json", MAX_MANIFEST_BYTES)?
        .ok_or_else(|| files.error("no index.json".into()))?;
    let Parsed::Index(entries) = manifest::parse(&index_bytes, &format!("{name} index.json"))?
    else {
        return Err(files.error("index.json is a manifest, not an index".into()));
    };
    let mut desc = select_entry(&entries, tag).map_err(|reason| files.error(reason))?;
    let mut index = None;
    for _ in 0..MAX_INDEX_DEPTH {
        let what = format!("manifest {} of {name}", desc.digest);
        let bytes = read_verified(files, &desc, &what)?;
        if desc.media_type == OCI_INDEX || desc.media_type == DOCKER_MANIFEST_LIST {
            let Parsed::Index(children) = manifest::parse(&bytes, &what)? else {
                return Err(Error::InvalidManifest {
                    what,
                    reason: "media type says index, content is a manifest".into(),
                });
            };
            let child = manifest::select_platform(&children, platform, name)?;
            index = Some((desc.digest.clone(), bytes));
            desc = child;
            continue;
        }
        return Ok(Resolved {
            index,
            manifest: (desc.digest, bytes),
        });
    }
    Err(files.error(format!("indexes nested more than {MAX_INDEX_DEPTH} deep")))
}

/// Picks the index.json entry for `tag` (see [`crate::Source::OciLayout`]).
pub(crate) fn select_entry(
    entries: &[Desc],
    tag: Option<&str>,
) -> std::result::Result<Desc, String> {
    let names = |d: &Desc| -> Vec<String> {
        [REF_NAME_ANNOTATION, CONTAINERD_NAME_ANNOTATION]
            .iter()
            .filter_map(|k| d.annotations.get(*k).cloned())
            .collect()
    };
    let all_names = || {
        let v: Vec<String> = entries.iter().flat_map(names).collect();
        if v.is_empty() {
            "no tagged images".to_string()
        } else {
            format!("tags: {}", Escaped::new(&v.join(", ")))
        }
    };
    match tag {
        Some(tag) => {
            let wanted = Reference::parse(tag).ok();
            let hit =
                |n: &String| n == tag || (wanted.is_some() && Reference::parse(n).ok() == wanted);
            entries
                .iter()
                .find(|d| names(d).iter().any(hit))
                .cloned()
                .ok_or_else(|| {
                    format!(
                        "no image tagged '{}' in index.json ({})",
                        Escaped::new(tag),
                        all_names()
                    )
                })
        }
        None if entries.len() == 1 => Ok(entries[0].clone()),
        None if entries.is_empty() => Err("index.json lists no images".into()),
        None => {
            let latest: Vec<&Desc> = entries
                .iter()
                .filter(|d| {
                    d.annotations
                        .get(REF_NAME_ANNOTATION)
                        .is_some_and(|n| n == "latest")
                })
                .collect();
            match latest.as_slice() {
                [one] => Ok((*one).clone()),
                _ => Err(format!(
                    "holds {} images; name one with oci:PATH:TAG ({})",
                    entries.len(),
                    all_names()
                )),
            }
        }
    }
}

/// Copies a local blob into a store writer, reporting progress. A blob
/// whose size is not the descriptor's is refused before it is read.
pub(crate) fn copy_blob(
    local: &dyn LocalBlobs,
    desc: &Desc,
    mut writer: BlobWriter,
    options: &PullOptions,
) -> Result<BlobWriter> {
    let (reader, len) = local.open_blob(&desc.digest)?;
    if len != desc.size {
        return Err(Error::SizeMismatch {
            what: format!("blob {}", desc.digest),
            expected: desc.size,
            actual: len,
            truncated: false,
        });
    }
    let mut reader = reader.take(desc.size);
    let mut buf = vec![0u8; 1 << 20];
    let mut last_report = 0u64;
    loop {
        let n = match reader.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(Error::io(format!("reading blob {}", desc.digest), e)),
        };
        writer.write(&buf[..n])?;
        if writer.written() - last_report >= 256 << 10 {
            last_report = writer.written();
            options.emit(PullEvent::BlobProgress {
                digest: desc.digest.clone(),
                done: last_report,
                size: desc.size,
            });
        }
    }
    options.emit(PullEvent::BlobProgress {
        digest: desc.digest.clone(),
        done: writer.written(),
        size: desc.size,
    });
    Ok(writer)
}
