//! Content hashes used as cache keys.

use crate::paths;
use sha2::{Digest, Sha256};
use std::io::Read;
use std::os::unix::fs::MetadataExt;
use std::path::Path;

pub struct Hasher(Sha256);

impl Hasher {
    pub fn new(domain: &str) -> Self {
        let mut h = Sha256::new();
        h.update(domain.as_bytes());
        h.update([0]);
        Hasher(h)
    }

    /// Adds a length-prefixed field, so ("ab","c") and ("a","bc") differ.
    pub fn field(&mut self, bytes: &[u8]) -> &mut Self {
        self.0.update((bytes.len() as u64).to_le_bytes());
        self.0.update(bytes);
        self
    }

    /// First 16 hex digits: short enough for paths, long enough not to collide.
    pub fn short(&self) -> String {
        hex::encode(&self.0.clone().finalize()[..8])
    }
}

/// Computes `compute()` once per version of `input`, remembering the answer
/// under `<cache>/memo/<name>-<hash of input path>` next to the file's size
/// and modification time. Starting a VM consults several such values
/// (digests of the agent and busybox, the kernel source version); computing
/// them each time cost ~0.2 s under emulation. Inode numbers are left out
/// on purpose: filesystems shared into the lab renumber them.
pub fn memoized(
    name: &str,
    input: &Path,
    compute: impl FnOnce() -> std::io::Result<String>,
) -> std::io::Result<String> {
    let meta = std::fs::metadata(input)?;
    let stamp = format!("{} {} {}", meta.size(), meta.mtime(), meta.mtime_nsec());
    let key = Hasher::new("memo")
        .field(input.as_os_str().as_encoded_bytes())
        .short();
    let memo = paths::cache_dir()
        .join("memo")
        .join(format!("{name}-{key}"));
    if let Ok(text) = std::fs::read_to_string(&memo) {
        if let Some((recorded, value)) = text.split_once('\n') {
            if recorded == stamp && !value.is_empty() {
                return Ok(value.to_string());
            }
        }
    }
    let value = compute()?;
    // Best effort: a memo we cannot write only costs time next run.
    if let Some(dir) = memo.parent() {
        let _ = paths::create_dir_all_mode(dir, paths::SHARED_DIR);
        let tmp = memo.with_extension(format!("tmp{}", std::process::id()));
        let text = format!("{stamp}\n{value}");
        if paths::write_with_mode(&tmp, text.as_bytes(), paths::SHARED_FILE).is_ok() {
            let _ = std::fs::rename(&tmp, &memo);
        }
    }
    Ok(value)
}

/// The SHA-256 of a file's contents (hex), memoized by size and mtime.
pub fn file_digest(path: &Path) -> std::io::Result<String> {
    memoized("sha256", path, || {
        let mut h = Sha256::new();
        let mut f = std::fs::File::open(path)?;
        let mut buf = vec![0u8; 1 << 16];
        loop {
            let n = f.read(&mut buf)?;
            if n == 0 {
                break;
            }
            h.update(&buf[..n]);
        }
        Ok(hex::encode(h.finalize()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fields_are_length_prefixed() {
        let a = Hasher::new("t").field(b"ab").field(b"c").short();
        let b = Hasher::new("t").field(b"a").field(b"bc").short();
        assert_ne!(a, b);
        assert_eq!(a.len(), 16);
    }
}
