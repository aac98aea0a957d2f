//! Volumes: a host file that the guest sees as an ext4 filesystem mounted
//! at a path, which outlives the VM.
//!
//! The file is created sparse when missing (only written blocks take
//! room), formatted ext4 on the host when it holds nothing yet, attached
//! as a writable virtio-blk disk, and mounted by the agent at boot (it
//! finds the disk by its serial, so the order of disks does not matter).
//! A file that holds something other than ext4 is never formatted over.
//!
//! One VM at a time: the worker holds an exclusive `flock` on every
//! writable disk while it runs, and the library takes the same lock while
//! it checks and formats the file, so a second VM asking for a volume in
//! use gets [`Error::VolumeInUse`] instead of two kernels writing one
//! ext4. Why format on the host: `mkfs.ext4` comes with the host's
//! e2fsprogs (the library already uses it), whereas an image may hold no
//! `mkfs` and the agent is a static binary without an ext4 writer.

use crate::error::Error;
use std::fs::{File, OpenOptions};
use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::str::FromStr;

/// The size a new volume gets when none is given: 1 GiB (sparse).
pub const DEFAULT_VOLUME_MIB: u64 = 1024;
/// The smallest volume: what ext4 with a journal needs to be useful.
pub const MIN_VOLUME_MIB: u64 = 16;
/// The largest volume created: 16 TiB (sparse files cost nothing up front,
/// but a typo of a few zeros should not make an unmountable disk).
pub const MAX_VOLUME_MIB: u64 = 16 << 20;

/// Bytes at the start of a file looked at to tell "holds nothing" (all
/// zeros) from "holds something".
const PROBE_BYTES: usize = 64 * 1024;
/// Where ext2/3/4 keep their magic number: the superblock starts at
/// 1024, the magic is 56 bytes into it.
const EXT_MAGIC_OFFSET: usize = 1024 + 56;
const EXT_MAGIC: [u8; 2] = [0x53, 0xef];

/// A host file the guest gets as an ext4 filesystem at `guest_path`.
///
/// ```
/// use supermachine::Volume;
/// let data = Volume::new("/srv/data.img", "/data").size_mib(512);
/// assert_eq!(data.size_mib, 512);
/// let parsed: Volume = "/srv/cache.img:/root/.cache:2G".parse().unwrap();
/// assert_eq!((parsed.guest_path.as_str(), parsed.size_mib), ("/root/.cache", 2048));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Volume {
    /// The file on the host; created (sparse, mode 0600) when missing.
    pub host_path: PathBuf,
    /// Where the agent mounts it in the guest: absolute, no spaces or
    /// control characters, not `/`.
    pub guest_path: String,
    /// The size of a file created now, in MiB (default
    /// [`DEFAULT_VOLUME_MIB`]); an existing file keeps its size.
    pub size_mib: u64,
}

impl Volume {
    /// `host_path` mounted at `guest_path`, [`DEFAULT_VOLUME_MIB`] if new.
    pub fn new(host_path: impl Into<PathBuf>, guest_path: impl Into<String>) -> Volume {
        Volume {
            host_path: host_path.into(),
            guest_path: guest_path.into(),
            size_mib: DEFAULT_VOLUME_MIB,
        }
    }

    /// The size of the file if it is created now.
    pub fn size_mib(mut self, mib: u64) -> Volume {
        self.size_mib = mib;
        self
    }
}

/// `HOST:GUEST[:SIZE]`, SIZE in MiB or with a unit (`512M`, `2G`, `1T`):
/// the command line's `--volume`. A host path may hold colons; the guest
/// path may not.
impl FromStr for Volume {
    type Err = Error;

    fn from_str(spec: &str) -> Result<Volume, Error> {
        let bad = || {
            Error::InvalidArgument(format!(
                "volume {spec:?}: the syntax is HOST:GUEST[:SIZE], e.g. ./data.img:/data:2G"
            ))
        };
        let (rest, size) = match spec.rsplit_once(':') {
            Some((rest, last)) if !last.starts_with('/') => (rest, Some(parse_size(last)?)),
            _ => (spec, None),
        };
        let (host, guest) = rest.rsplit_once(':').ok_or_else(bad)?;
        if host.is_empty() || !guest.starts_with('/') {
            return Err(bad());
        }
        let mut volume = Volume::new(host, guest);
        if let Some(size) = size {
            volume.size_mib = size;
        }
        Ok(volume)
    }
}

/// A size in MiB: a number of MiB, or a number with `M`, `G` or `T`
/// (binary units; `MiB`/`GiB`/`TiB` and lower case are taken too).
fn parse_size(text: &str) -> Result<u64, Error> {
    let bad = || {
        Error::InvalidArgument(format!(
            "volume size {text:?}: give MiB (512) or a unit (512M, 2G, 1T)"
        ))
    };
    let lower = text.to_ascii_lowercase();
    let trimmed = lower.strip_suffix("ib").unwrap_or(&lower);
    let (digits, shift) = match trimmed.as_bytes().last() {
        Some(b'm') => (&trimmed[..trimmed.len() - 1], 0),
        Some(b'g') => (&trimmed[..trimmed.len() - 1], 10),
        Some(b't') => (&trimmed[..trimmed.len() - 1], 20),
        _ => (trimmed, 0),
    };
    let n: u64 = digits.parse().map_err(|_| bad())?;
    n.checked_mul(1 << shift).ok_or_else(bad)
}

/// Checks every volume and makes its file ready to attach: created sparse
/// and formatted when new, formatted when it holds nothing, refused when it
/// holds something other than ext4 or another VM uses it. Returns the host
/// paths, in order.
pub(crate) fn prepare(volumes: &[Volume]) -> Result<Vec<PathBuf>, Error> {
    // Every check that needs no file first: nothing is created for a
    // configuration that is refused anyway.
    for (i, volume) in volumes.iter().enumerate() {
        check_guest_path(&volume.guest_path)?;
        check_size(volume)?;
        if volumes[..i]
            .iter()
            .any(|v| v.guest_path == volume.guest_path)
        {
            return Err(Error::InvalidArgument(format!(
                "volume guest path {} is used twice",
                volume.guest_path
            )));
        }
    }
    let mut paths: Vec<PathBuf> = Vec::with_capacity(volumes.len());
    for volume in volumes {
        let path = prepare_one(volume)?;
        if paths.contains(&path) {
            return Err(Error::InvalidArgument(format!(
                "volume {} is given twice (a volume is one VM's, and one mount's)",
                path.display()
            )));
        }
        paths.push(path);
    }
    Ok(paths)
}

fn check_size(volume: &Volume) -> Result<(), Error> {
    if !(MIN_VOLUME_MIB..=MAX_VOLUME_MIB).contains(&volume.size_mib) {
        return Err(Error::InvalidArgument(format!(
            "volume {}: size {} MiB is outside {MIN_VOLUME_MIB} MiB to {} TiB",
            volume.host_path.display(),
            volume.size_mib,
            MAX_VOLUME_MIB >> 20
        )));
    }
    Ok(())
}

/// The guest path rules: absolute, no spaces or control characters (it
/// travels on the kernel command line), no `.`/`..` parts, not `/`.
fn check_guest_path(path: &str) -> Result<(), Error> {
    let odd_part = path
        .split('/')
        .skip(1)
        .any(|p| p.is_empty() || p == "." || p == "..");
    if !path.starts_with('/')
        || path == "/"
        || odd_part
        || path.chars().any(|c| c.is_whitespace() || c.is_control())
    {
        return Err(Error::InvalidArgument(format!(
            "volume guest path {path:?} must be absolute and plain (not /, no . or .. parts, \
             no spaces or control characters)"
        )));
    }
    Ok(())
}

fn prepare_one(volume: &Volume) -> Result<PathBuf, Error> {
    let shown = volume.host_path.display();
    let io = |what: &str| {
        let what = format!("volume {shown}: {what}");
        move |e| Error::io(what, e)
    };
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .mode(crate::paths::PRIVATE_FILE)
        // A FIFO would block the open; it is refused below.
        .custom_flags(libc::O_NONBLOCK | libc::O_CLOEXEC)
        .open(&volume.host_path)
        .map_err(io("opening"))?;
    let meta = file.metadata().map_err(io("reading its size"))?;
    if !meta.file_type().is_file() {
        let kind = if meta.file_type().is_block_device() {
            "a block device"
        } else {
            "not a regular file"
        };
        return Err(Error::InvalidArgument(format!(
            "volume {shown}: {kind}; a volume is a regular file"
        )));
    }
    // Held until this function returns: no other VM starts on the file
    // while it is checked and formatted.
    lock_exclusive(&file, &volume.host_path)?;
    let path = std::fs::canonicalize(&volume.host_path).map_err(io("resolving its path"))?;
    if meta.len() == 0 {
        file.set_len(volume.size_mib << 20)
            .map_err(io("making the sparse file"))?;
        format(&path)?;
    } else if meta.len() % 512 != 0 {
        return Err(Error::InvalidArgument(format!(
            "volume {shown}: {} bytes is not a whole number of 512-byte sectors",
            meta.len()
        )));
    } else {
        match contents(&file).map_err(io("reading its first bytes"))? {
            Contents::Ext => {}
            Contents::Nothing => format(&path)?,
            Contents::Other => {
                return Err(Error::InvalidArgument(format!(
                    "volume {shown} holds data that is not an ext2/3/4 filesystem; it is not \
                     formatted over (use another file, or attach it as a raw disk with --disk)"
                )))
            }
            Contents::Unchecked => {
                return Err(Error::InvalidArgument(format!(
                    "volume {shown} holds no filesystem but more than {} MiB of written-out \
                     data, too much to make sure it is all zeros; it is not formatted over \
                     (format it with mkfs.ext4, or use a new file)",
                    ZERO_SCAN_LIMIT >> 20
                )))
            }
        }
    }
    Ok(path)
}

/// `flock(LOCK_EX | LOCK_NB)`: the lock the worker holds on a writable
/// disk while its VM runs.
fn lock_exclusive(file: &File, path: &Path) -> Result<(), Error> {
    // SAFETY: flock on a file descriptor we own; no memory is passed. The
    // lock goes with the descriptor.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(());
    }
    let e = std::io::Error::last_os_error();
    if e.kind() == std::io::ErrorKind::WouldBlock {
        return Err(Error::VolumeInUse {
            path: path.to_path_buf(),
        });
    }
    Err(Error::io(
        format!("volume {}: locking it", path.display()),
        e,
    ))
}

#[derive(Debug, PartialEq, Eq)]
enum Contents {
    /// An ext2/3/4 superblock.
    Ext,
    /// Zeros only, as a new sparse file.
    Nothing,
    /// Anything else.
    Other,
    /// Zeros as far as it was read, but more written-out data than is
    /// worth reading through ([`ZERO_SCAN_LIMIT`]).
    Unchecked,
}

/// The most written-out (non-hole) data read through to find the file all
/// zeros before formatting it.
const ZERO_SCAN_LIMIT: u64 = 256 << 20;

fn contents(file: &File) -> std::io::Result<Contents> {
    let mut head = vec![0u8; PROBE_BYTES];
    let mut got = 0;
    while got < head.len() {
        match (&*file).read(&mut head[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    let head = &head[..got];
    if head.get(EXT_MAGIC_OFFSET..EXT_MAGIC_OFFSET + 2) == Some(&EXT_MAGIC[..]) {
        return Ok(Contents::Ext);
    }
    if head.iter().any(|&b| b != 0) {
        return Ok(Contents::Other);
    }
    // Zeros at the start say little (a filesystem or partition may begin
    // further in): every written-out byte must be zero to format it.
    only_zeros(file)
}

/// Reads the file's data extents (holes are zeros by definition) and says
/// whether they hold only zeros.
fn only_zeros(file: &File) -> std::io::Result<Contents> {
    use std::os::unix::fs::FileExt;
    let fd = file.as_raw_fd();
    let len = file.metadata()?.len();
    let seek = |pos: u64, whence: libc::c_int| -> std::io::Result<Option<u64>> {
        let pos = libc::off_t::try_from(pos).map_err(|_| std::io::ErrorKind::InvalidInput)?;
        // SAFETY: lseek on a descriptor `file` owns; no memory is passed.
        let at = unsafe { libc::lseek(fd, pos, whence) };
        if at >= 0 {
            return Ok(Some(at as u64));
        }
        let e = std::io::Error::last_os_error();
        // ENXIO: no data at or after `pos`.
        if e.raw_os_error() == Some(libc::ENXIO) {
            return Ok(None);
        }
        Err(e)
    };
    let mut buf = vec![0u8; 1 << 20];
    let (mut pos, mut scanned) = (0u64, 0u64);
    while pos < len {
        let Some(data) = seek(pos, libc::SEEK_DATA)? else {
            break;
        };
        let end = seek(data, libc::SEEK_HOLE)?.unwrap_or(len).min(len);
        let mut at = data;
        while at < end {
            let n = (end - at).min(buf.len() as u64) as usize;
            file.read_exact_at(&mut buf[..n], at)?;
            if buf[..n].iter().any(|&b| b != 0) {
                return Ok(Contents::Other);
            }
            at += n as u64;
            scanned += n as u64;
            if scanned > ZERO_SCAN_LIMIT {
                return Ok(Contents::Unchecked);
            }
        }
        pos = end.max(pos + 1);
    }
    Ok(Contents::Nothing)
}

/// `mkfs.ext4` on the file: root directory owned by root (the guest's),
/// no reserved blocks (a data disk, not a system one), inode tables and
/// journal initialised lazily by the guest kernel so a large sparse file
/// stays sparse.
fn format(path: &Path) -> Result<(), Error> {
    let output = Command::new("mkfs.ext4")
        .args(["-q", "-F", "-m", "0", "-L", "volume", "-E"])
        .arg("root_owner=0:0,lazy_itable_init=1,lazy_journal_init=1,nodiscard")
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::NotFound {
                Error::MissingPackages {
                    what: "formatting a new volume",
                    packages: vec!["e2fsprogs".into()],
                    // SAFETY: geteuid has no preconditions.
                    as_root: unsafe { libc::geteuid() } == 0,
                }
            } else {
                Error::io("running mkfs.ext4", e)
            }
        })?;
    if !output.status.success() {
        tracing::warn!(
            "mkfs.ext4 {}: {}",
            path.display(),
            String::from_utf8_lossy(&output.stderr).trim()
        );
        return Err(Error::ToolFailed {
            tool: "mkfs.ext4",
            status: output.status.to_string(),
            hint: Some("formatting a volume: is its file system full?"),
        });
    }
    Ok(())
}

/// The kernel command line parameter that has the agent mount the disk
/// whose serial is `serial` at the volume's guest path.
pub(crate) fn boot_arg(serial: &str, volume: &Volume) -> String {
    format!("supermachine.volume={serial}:{}", volume.guest_path)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;

    fn has_mkfs() -> bool {
        Command::new("mkfs.ext4")
            .arg("-V")
            .stderr(Stdio::null())
            .status()
            .is_ok()
    }

    #[test]
    fn specs_parse_with_sizes_and_colons_in_the_host_path() {
        let v: Volume = "/a:b/data.img:/data".parse().unwrap();
        assert_eq!(v, Volume::new("/a:b/data.img", "/data"));
        for (size, mib) in [("300", 300), ("512M", 512), ("2G", 2048), ("1TiB", 1 << 20)] {
            let v: Volume = format!("d.img:/x:{size}").parse().unwrap();
            assert_eq!(v.size_mib, mib, "{size}");
        }
        for bad in [
            "d.img",
            "d.img:x",
            ":/x",
            "d.img:/x:lots",
            "d.img:/x:99999999999999T",
        ] {
            assert!(bad.parse::<Volume>().is_err(), "{bad}");
        }
    }

    #[test]
    fn guest_paths_must_be_plain_and_absolute() {
        for good in ["/data", "/root/.cache", "/a/b_c-d"] {
            assert!(check_guest_path(good).is_ok(), "{good}");
        }
        for bad in [
            "/",
            "data",
            "/a/../etc",
            "/a//b",
            "/a/",
            "/a b",
            "/a\nb",
            "/./a",
        ] {
            assert!(check_guest_path(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn a_new_volume_is_sparse_private_and_ext4() {
        if !has_mkfs() {
            eprintln!("mkfs.ext4 missing: skipped");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("new.img");
        let got = prepare(&[Volume::new(&path, "/data").size_mib(256)]).unwrap();
        assert_eq!(got, vec![std::fs::canonicalize(&path).unwrap()]);
        let meta = std::fs::metadata(&path).unwrap();
        assert_eq!(meta.len(), 256 << 20);
        assert_eq!(meta.mode() & 0o777, 0o600);
        assert!(
            meta.blocks() * 512 < 64 << 20,
            "{} bytes allocated of 256 MiB",
            meta.blocks() * 512
        );
        let file = File::open(&path).unwrap();
        assert_eq!(contents(&file).unwrap(), Contents::Ext);
    }

    #[test]
    fn an_existing_filesystem_is_kept_and_a_zeroed_file_formatted() {
        if !has_mkfs() {
            eprintln!("mkfs.ext4 missing: skipped");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("v.img");
        prepare(&[Volume::new(&path, "/data").size_mib(32)]).unwrap();
        // A mark past the superblock: a second format would change it.
        let before = std::fs::read(&path).unwrap();
        prepare(&[Volume::new(&path, "/data").size_mib(64)]).unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), before, "reformatted");

        let zeroed = dir.path().join("zeroed.img");
        File::create(&zeroed).unwrap().set_len(32 << 20).unwrap();
        prepare(&[Volume::new(&zeroed, "/data")]).unwrap();
        assert_eq!(std::fs::metadata(&zeroed).unwrap().len(), 32 << 20);
        // Zeros written out (not holes) count as nothing too.
        let written = dir.path().join("written.img");
        std::fs::write(&written, vec![0u8; 20 << 20]).unwrap();
        prepare(&[Volume::new(&written, "/data")]).unwrap();
        assert_eq!(
            contents(&File::open(&written).unwrap()).unwrap(),
            Contents::Ext
        );
        assert_eq!(
            contents(&File::open(&zeroed).unwrap()).unwrap(),
            Contents::Ext
        );
    }

    #[test]
    fn other_data_is_never_formatted_over() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("precious.img");
        let data = vec![0x5a; 1 << 20];
        std::fs::write(&path, &data).unwrap();
        let err = prepare(&[Volume::new(&path, "/data")]).unwrap_err();
        assert!(err.to_string().contains("not an ext2/3/4"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), data);
        // Zeros at the start, data further in: still not formatted.
        let mut deep = vec![0u8; 4 << 20];
        deep[3 << 20] = 1;
        std::fs::write(&path, &deep).unwrap();
        let err = prepare(&[Volume::new(&path, "/data")]).unwrap_err();
        assert!(err.to_string().contains("not an ext2/3/4"), "{err}");
        assert_eq!(std::fs::read(&path).unwrap(), deep);
        // A size that is not whole sectors is refused too, untouched.
        std::fs::write(&path, [0u8; 1000]).unwrap();
        let err = prepare(&[Volume::new(&path, "/data")]).unwrap_err();
        assert!(err.to_string().contains("sectors"), "{err}");
    }

    #[test]
    fn a_volume_in_use_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("busy.img");
        File::create(&path).unwrap().set_len(32 << 20).unwrap();
        // What a running worker holds.
        let held = File::open(&path).unwrap();
        lock_exclusive(&held, &path).unwrap();
        let err = prepare(&[Volume::new(&path, "/data")]).unwrap_err();
        assert!(matches!(err, Error::VolumeInUse { .. }), "{err}");
        drop(held);
    }

    #[test]
    fn sizes_duplicates_and_non_files_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let small = Volume::new(dir.path().join("s.img"), "/s").size_mib(1);
        assert!(prepare(&[small])
            .unwrap_err()
            .to_string()
            .contains("outside"));
        assert!(
            !dir.path().join("s.img").exists(),
            "created before the size check"
        );
        let twice = [
            Volume::new(dir.path().join("a.img"), "/same"),
            Volume::new(dir.path().join("b.img"), "/same"),
        ];
        assert!(prepare(&twice).unwrap_err().to_string().contains("twice"));
        assert!(
            !dir.path().join("a.img").exists(),
            "created for a refused set"
        );
        let err = prepare(&[Volume::new(dir.path(), "/d")]).unwrap_err();
        assert!(err.to_string().contains("opening"), "{err}");
    }
}
