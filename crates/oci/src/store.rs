//! The content-addressed blob store.
//!
//! ```text
//! <root>/blobs/sha256/<hex>   verified blobs (manifests, configs, layers), read-only
//! <root>/tmp/                 downloads in progress (same file system, so rename is atomic)
//! <root>/locks/<hex>.lock     one flock per digest: a blob is fetched by one process at a time
//! <root>/images/<key>.json    one record per pulled reference (see `records.rs`)
//! <root>/store.lock           pulls hold it shared, `gc` exclusive
//! ```
//!
//! A blob reaches `blobs/` only by `rename` of a temp file whose size and
//! sha256 matched and that was fsynced, so a crash or kill at any point leaves
//! either no blob or a whole one at the final path.

use std::fs::{self, File};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use sha2::{Digest as _, Sha256};

use crate::digest::Digest;
use crate::error::{Error, IoContext, Result};
use crate::lock::{FileLock, LockMode};

/// Environment variable that overrides the data directory.
pub const DATA_DIR_ENV: &str = "SUPERMACHINE_DATA_DIR";

/// The user's supermachine data directory: `$SUPERMACHINE_DATA_DIR`, else
/// `$XDG_DATA_HOME/supermachine`, else `~/.local/share/supermachine`.
pub fn data_dir() -> Result<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(d) = env(DATA_DIR_ENV) {
        return Ok(d);
    }
    if let Some(d) = env("XDG_DATA_HOME") {
        return Ok(d.join("supermachine"));
    }
    match env("HOME") {
        Some(home) => Ok(home.join(".local/share/supermachine")),
        None => Err(Error::io(
            "finding the data directory",
            std::io::Error::other("neither SUPERMACHINE_DATA_DIR, XDG_DATA_HOME nor HOME is set"),
        )),
    }
}

/// The default store root: `<data_dir>/oci`.
pub fn default_store_root() -> Result<PathBuf> {
    Ok(data_dir()?.join("oci"))
}

/// An open blob store. Cheap to clone; clones share counters.
#[derive(Debug, Clone)]
pub struct Store {
    pub(crate) root: PathBuf,
    counters: Arc<Counters>,
}

#[derive(Debug, Default)]
struct Counters {
    blobs_written: AtomicU64,
    bytes_written: AtomicU64,
}

/// A shared hold on the store: while any lease is alive `gc` waits.
/// Hold one while reading blobs of an image that might be removed meanwhile.
#[derive(Debug)]
pub struct StoreLease {
    _lock: FileLock,
}

impl Store {
    /// Opens (creating if needed) the store at `root`.
    pub fn open(root: impl Into<PathBuf>) -> Result<Store> {
        let root = root.into();
        for dir in ["blobs/sha256", "tmp", "locks", "images"] {
            let p = root.join(dir);
            fs::create_dir_all(&p).ctx(|| format!("creating store directory {}", p.display()))?;
        }
        Ok(Store {
            root,
            counters: Arc::default(),
        })
    }

    /// Opens the store at [`default_store_root`].
    pub fn open_default() -> Result<Store> {
        Store::open(default_store_root()?)
    }

    /// The store's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Where the blob named `digest` lives (whether or not it is present).
    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.root.join("blobs/sha256").join(digest.hex())
    }

    /// True if the blob is present with the expected size (when given).
    pub fn has_blob(&self, digest: &Digest, size: Option<u64>) -> bool {
        match fs::metadata(self.blob_path(digest)) {
            Ok(m) => m.is_file() && size.is_none_or(|s| s == m.len()),
            Err(_) => false,
        }
    }

    /// Reads a whole blob, refusing ones larger than `limit` bytes.
    pub fn read_blob(&self, digest: &Digest, limit: u64) -> Result<Vec<u8>> {
        let path = self.blob_path(digest);
        let len = fs::metadata(&path)
            .ctx(|| format!("reading blob {}", path.display()))?
            .len();
        if len > limit {
            return Err(Error::TooLarge {
                what: format!("blob {digest}"),
                size: len,
                limit,
            });
        }
        fs::read(&path).ctx(|| format!("reading blob {}", path.display()))
    }

    /// Takes a shared lease (blocks while `gc` runs).
    pub fn lease(&self) -> Result<StoreLease> {
        Ok(StoreLease {
            _lock: FileLock::acquire(&self.root.join("store.lock"), LockMode::Shared)?,
        })
    }

    pub(crate) fn lock_exclusive(&self) -> Result<FileLock> {
        FileLock::acquire(&self.root.join("store.lock"), LockMode::Exclusive)
    }

    /// Blocks until this process may fetch `digest` (see module docs).
    pub(crate) fn lock_blob(&self, digest: &Digest) -> Result<FileLock> {
        FileLock::acquire(&self.lock_path(digest), LockMode::Exclusive)
    }

    pub(crate) fn lock_path(&self, digest: &Digest) -> PathBuf {
        self.root
            .join("locks")
            .join(format!("{}.lock", digest.hex()))
    }

    /// How many blobs this `Store` value (and its clones) wrote so far.
    pub fn blobs_written(&self) -> u64 {
        self.counters.blobs_written.load(Ordering::Relaxed)
    }

    /// How many blob bytes this `Store` value (and its clones) wrote so far.
    pub fn bytes_written(&self) -> u64 {
        self.counters.bytes_written.load(Ordering::Relaxed)
    }

    /// Starts writing a blob. `expected_digest`/`expected_size` are checked
    /// on [`BlobWriter::commit`]; `what` names the blob in errors.
    pub(crate) fn writer(
        &self,
        expected_digest: Option<&Digest>,
        expected_size: Option<u64>,
        what: &str,
    ) -> Result<BlobWriter> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let name = format!(
            "{}-{}-{}.partial",
            expected_digest.map_or("unknown", |d| d.hex()),
            std::process::id(),
            SEQ.fetch_add(1, Ordering::Relaxed)
        );
        let tmp_path = self.root.join("tmp").join(name);
        let file = File::options()
            .write(true)
            .create_new(true)
            .open(&tmp_path)
            .ctx(|| format!("creating {}", tmp_path.display()))?;
        Ok(BlobWriter {
            store: self.clone(),
            file: Some(BufWriter::with_capacity(1 << 20, file)),
            tmp_path,
            hasher: Sha256::new(),
            written: 0,
            expected_digest: expected_digest.cloned(),
            expected_size,
            what: what.to_string(),
        })
    }
}

/// A blob being written: hashes and counts as it goes; only
/// [`commit`](BlobWriter::commit) makes it visible, and dropping it
/// uncommitted deletes the temp file.
pub(crate) struct BlobWriter {
    store: Store,
    file: Option<BufWriter<File>>,
    tmp_path: PathBuf,
    hasher: Sha256,
    written: u64,
    expected_digest: Option<Digest>,
    expected_size: Option<u64>,
    what: String,
}

impl BlobWriter {
    /// Appends bytes; fails as soon as more arrive than the expected size,
    /// so a hostile source cannot fill the disk.
    pub(crate) fn write(&mut self, bytes: &[u8]) -> Result<()> {
        let written = self.written + bytes.len() as u64;
        if let Some(expected) = self.expected_size {
            if written > expected {
                return Err(Error::SizeMismatch {
                    what: self.what.clone(),
                    expected,
                    actual: written,
                    truncated: false,
                });
            }
        }
        self.hasher.update(bytes);
        #[allow(
            clippy::expect_used,
            reason = "only `commit` takes the file, and it consumes the writer"
        )]
        let file = self.file.as_mut().expect("BlobWriter used after commit");
        file.write_all(bytes)
            .ctx(|| format!("writing {}", self.tmp_path.display()))?;
        self.written = written;
        Ok(())
    }

    /// Bytes written so far.
    pub(crate) fn written(&self) -> u64 {
        self.written
    }

    /// Verifies size and digest, fsyncs, and renames into `blobs/`.
    /// Returns the digest and whether this call stored it (false when the
    /// blob was already there, e.g. an unknown-digest import of a known blob).
    pub(crate) fn commit(mut self) -> Result<(Digest, bool)> {
        #[allow(
            clippy::expect_used,
            reason = "only `commit` takes the file, and it consumes the writer"
        )]
        let mut file = self.file.take().expect("BlobWriter committed twice");
        let actual = Digest::from_hasher(std::mem::take(&mut self.hasher));
        if let Some(expected) = self.expected_size {
            if self.written != expected {
                return Err(Error::SizeMismatch {
                    what: self.what.clone(),
                    expected,
                    actual: self.written,
                    truncated: true,
                });
            }
        }
        if let Some(expected) = &self.expected_digest {
            if *expected != actual {
                return Err(Error::DigestMismatch {
                    what: self.what.clone(),
                    expected: expected.clone(),
                    actual,
                });
            }
        }
        file.flush()
            .ctx(|| format!("writing {}", self.tmp_path.display()))?;
        let file = file.into_inner().map_err(|e| {
            Error::io(
                format!("writing {}", self.tmp_path.display()),
                e.into_error(),
            )
        })?;
        file.sync_all()
            .ctx(|| format!("syncing {}", self.tmp_path.display()))?;
        drop(file);
        let final_path = self.store.blob_path(&actual);
        // An unknown-digest writer does not hold the digest's lock yet.
        let _lock = match self.expected_digest {
            Some(_) => None,
            None => Some(self.store.lock_blob(&actual)?),
        };
        if self.expected_digest.is_none() && self.store.has_blob(&actual, Some(self.written)) {
            return Ok((actual, false)); // Drop removes the temp file.
        }
        set_readonly(&self.tmp_path)?;
        fs::rename(&self.tmp_path, &final_path)
            .ctx(|| format!("moving blob into {}", final_path.display()))?;
        self.tmp_path = PathBuf::new();
        sync_dir(parent_of(&final_path)?)?;
        self.store
            .counters
            .blobs_written
            .fetch_add(1, Ordering::Relaxed);
        self.store
            .counters
            .bytes_written
            .fetch_add(self.written, Ordering::Relaxed);
        Ok((actual, true))
    }
}

impl Drop for BlobWriter {
    fn drop(&mut self) {
        if !self.tmp_path.as_os_str().is_empty() {
            let _ = fs::remove_file(&self.tmp_path);
        }
    }
}

fn set_readonly(path: &Path) -> Result<()> {
    let mut perms = fs::metadata(path)
        .ctx(|| format!("reading {}", path.display()))?
        .permissions();
    perms.set_readonly(true);
    fs::set_permissions(path, perms).ctx(|| format!("chmod {}", path.display()))
}

/// Makes a rename durable: fsync the directory that holds the new name.
pub(crate) fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .ctx(|| format!("syncing directory {}", dir.display()))
}

/// The directory `path` is in: what a rename into it must sync.
fn parent_of(path: &Path) -> Result<&Path> {
    path.parent().ok_or_else(|| {
        Error::io(
            format!("finding the directory of {}", path.display()),
            std::io::Error::from(std::io::ErrorKind::InvalidInput),
        )
    })
}

/// Writes `bytes` to `path` atomically (temp file + fsync + rename).
pub(crate) fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = parent_of(path)?;
    // Unique per process *and* call: two pulls in one process may write
    // the same record at once.
    static SEQ: AtomicU64 = AtomicU64::new(0);
    let tmp = dir.join(format!(
        ".{}.{}-{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("file"),
        std::process::id(),
        SEQ.fetch_add(1, Ordering::Relaxed)
    ));
    let result = (|| {
        let mut f = File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        fs::rename(&tmp, path)
    })();
    if result.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    result.ctx(|| format!("writing {}", path.display()))?;
    sync_dir(dir)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn writer_verifies_before_admitting() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let good = Digest::of_bytes(b"hello");
        // Wrong content: digest mismatch, nothing at the final path, no temp left.
        let mut w = store.writer(Some(&good), Some(5), "test blob").unwrap();
        w.write(b"hellx").unwrap();
        assert!(matches!(w.commit(), Err(Error::DigestMismatch { .. })));
        assert!(!store.blob_path(&good).exists());
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
        // Too long: rejected while writing.
        let mut w = store.writer(Some(&good), Some(5), "test blob").unwrap();
        assert!(matches!(
            w.write(b"hello!"),
            Err(Error::SizeMismatch { .. })
        ));
        drop(w);
        // Truncated.
        let mut w = store.writer(Some(&good), Some(5), "test blob").unwrap();
        w.write(b"hel").unwrap();
        assert!(matches!(
            w.commit(),
            Err(Error::SizeMismatch {
                truncated: true,
                ..
            })
        ));
        // Right.
        let mut w = store.writer(Some(&good), Some(5), "test blob").unwrap();
        w.write(b"hello").unwrap();
        assert_eq!(w.commit().unwrap(), (good.clone(), true));
        assert_eq!(fs::read(store.blob_path(&good)).unwrap(), b"hello");
        assert_eq!(store.blobs_written(), 1);
        // Unknown digest of a known blob: not rewritten.
        let mut w = store.writer(None, None, "again").unwrap();
        w.write(b"hello").unwrap();
        assert_eq!(w.commit().unwrap(), (good, false));
        assert_eq!(fs::read_dir(dir.path().join("tmp")).unwrap().count(), 0);
    }
}
