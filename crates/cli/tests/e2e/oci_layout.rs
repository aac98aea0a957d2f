//! Building OCI image layouts in tests: layer tars made entry by entry (or
//! from a directory, with ownership from its real metadata), a config and
//! a manifest, written as `oci:DIR:TAG`.

use sha2::{Digest, Sha256};
use std::io::Write;
use std::path::Path;

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// An uncompressed layer tar built entry by entry.
pub struct Layer {
    b: tar::Builder<Vec<u8>>,
}

impl Layer {
    pub fn new() -> Layer {
        Layer {
            b: tar::Builder::new(Vec::new()),
        }
    }

    fn header(kind: tar::EntryType, mode: u32, uid: u64, gid: u64) -> tar::Header {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_mode(mode);
        h.set_uid(uid);
        h.set_gid(gid);
        h.set_mtime(1_700_000_000);
        h.set_size(0);
        h
    }

    pub fn dir(&mut self, path: &str, mode: u32) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Directory, mode, 0, 0);
        self.b
            .append_data(&mut h, path, std::io::empty())
            .expect("tar dir");
        self
    }

    pub fn file_owned(
        &mut self,
        path: &str,
        data: &[u8],
        mode: u32,
        uid: u64,
        gid: u64,
    ) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Regular, mode, uid, gid);
        h.set_size(data.len() as u64);
        self.b.append_data(&mut h, path, data).expect("tar file");
        self
    }

    pub fn file(&mut self, path: &str, data: &[u8], mode: u32) -> &mut Self {
        self.file_owned(path, data, mode, 0, 0)
    }

    /// A file with extended attributes (PAX `SCHILY.xattr.*` records).
    pub fn file_with_xattr(&mut self, path: &str, data: &[u8], name: &str, value: &[u8]) {
        let key = format!("SCHILY.xattr.{name}");
        self.b
            .append_pax_extensions([(key.as_str(), value)])
            .expect("pax");
        self.file(path, data, 0o644);
    }

    pub fn symlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Symlink, 0o777, 0, 0);
        self.b
            .append_link(&mut h, path, target)
            .expect("tar symlink");
        self
    }

    pub fn hardlink(&mut self, path: &str, target: &str) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Link, 0o644, 0, 0);
        self.b.append_link(&mut h, path, target).expect("tar link");
        self
    }

    pub fn fifo(&mut self, path: &str, mode: u32) -> &mut Self {
        let mut h = Self::header(tar::EntryType::Fifo, mode, 0, 0);
        self.b
            .append_data(&mut h, path, std::io::empty())
            .expect("tar fifo");
        self
    }

    /// Deletes `dir/name` of lower layers (`dir/.wh.name`).
    pub fn whiteout(&mut self, path: &str) -> &mut Self {
        let (dir, name) = path.rsplit_once('/').unwrap_or(("", path));
        let wh = if dir.is_empty() {
            format!(".wh.{name}")
        } else {
            format!("{dir}/.wh.{name}")
        };
        self.file(&wh, b"", 0o644)
    }

    /// Hides everything lower layers put in `dir` (`dir/.wh..wh..opq`).
    pub fn opaque(&mut self, dir: &str) -> &mut Self {
        self.file(&format!("{dir}/.wh..wh..opq"), b"", 0o644)
    }

    pub fn finish(self) -> Vec<u8> {
        self.b.into_inner().expect("tar finish")
    }
}

/// The tar of a directory tree: paths relative to `root`, owners, modes,
/// times, symlinks, hard links and device nodes as the filesystem has them.
/// `skip` gets each relative path and may leave it out.
pub fn tar_dir(root: &Path, out: &Path, skip: &dyn Fn(&Path) -> bool) -> Result<(), BoxError> {
    let mut b = tar::Builder::new(std::io::BufWriter::new(std::fs::File::create(out)?));
    b.mode(tar::HeaderMode::Complete);
    b.follow_symlinks(false);
    let mut links: std::collections::HashMap<(u64, u64), std::path::PathBuf> = Default::default();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let mut entries: Vec<_> = std::fs::read_dir(&dir)?.collect::<Result<_, _>>()?;
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let path = entry.path();
            let rel = path.strip_prefix(root)?.to_path_buf();
            if skip(&rel) {
                continue;
            }
            let meta = std::fs::symlink_metadata(&path)?;
            use std::os::unix::fs::MetadataExt;
            if meta.is_file() && meta.nlink() > 1 {
                let key = (meta.dev(), meta.ino());
                if let Some(first) = links.get(&key) {
                    let mut h = tar::Header::new_gnu();
                    h.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
                    h.set_entry_type(tar::EntryType::Link);
                    h.set_size(0);
                    b.append_link(&mut h, &rel, first)
                        .map_err(|e| format!("{}: {e}", rel.display()))?;
                    continue;
                }
                links.insert(key, rel.clone());
            }
            let kind = meta.file_type();
            use std::os::unix::fs::FileTypeExt;
            if kind.is_char_device() || kind.is_block_device() || kind.is_fifo() {
                // Built here: tar 0.4.46 puts the source path into special
                // files' headers instead of the name.
                let mut h = tar::Header::new_gnu();
                h.set_metadata_in_mode(&meta, tar::HeaderMode::Complete);
                h.set_size(0);
                let rdev = meta.rdev();
                h.set_device_major(libc::major(rdev))?;
                h.set_device_minor(libc::minor(rdev))?;
                b.append_data(&mut h, &rel, std::io::empty())
                    .map_err(|e| format!("{}: {e}", rel.display()))?;
                continue;
            }
            b.append_path_with_name(&path, &rel)
                .map_err(|e| format!("{}: {e}", rel.display()))?;
            if meta.is_dir() {
                stack.push(path);
            }
        }
    }
    b.into_inner()?.flush()?;
    Ok(())
}

pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).expect("gzip");
    e.finish().expect("gzip")
}

/// One image of a layout: uncompressed layer tars (gzipped when `gzip`
/// says so, per layer) and the `config` part of the image config.
pub struct ImageSpec<'a> {
    pub tag: &'a str,
    pub layers: Vec<(Vec<u8>, bool)>,
    pub config: serde_json::Value,
}

/// Writes the images into an OCI layout at `dir` (blobs shared); returns
/// each image's manifest digest.
pub fn write_layout(dir: &Path, images: &[ImageSpec<'_>]) -> Result<Vec<String>, BoxError> {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs)?;
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#)?;
    let put = |media_type: &str, bytes: &[u8]| -> Result<serde_json::Value, BoxError> {
        let hex = sha256_hex(bytes);
        std::fs::write(blobs.join(&hex), bytes)?;
        Ok(
            serde_json::json!({"mediaType": media_type, "digest": format!("sha256:{hex}"), "size": bytes.len()}),
        )
    };
    let mut index = Vec::new();
    let mut digests = Vec::new();
    for image in images {
        let mut descs = Vec::new();
        let mut diff_ids = Vec::new();
        for (tar, gz) in &image.layers {
            diff_ids.push(format!("sha256:{}", sha256_hex(tar)));
            descs.push(if *gz {
                put(LAYER_GZIP, &gzip(tar))?
            } else {
                put(LAYER_TAR, tar)?
            });
        }
        let config = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": image.config,
            "rootfs": {"type": "layers", "diff_ids": diff_ids},
        });
        let config = put(OCI_CONFIG, &serde_json::to_vec(&config)?)?;
        let manifest = serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": config, "layers": descs,
        });
        let mut desc = put(OCI_MANIFEST, &serde_json::to_vec(&manifest)?)?;
        digests.push(desc["digest"].as_str().unwrap_or_default().to_string());
        desc["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": image.tag});
        index.push(desc);
    }
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": index});
    std::fs::write(dir.join("index.json"), serde_json::to_vec_pretty(&index)?)?;
    Ok(digests)
}
