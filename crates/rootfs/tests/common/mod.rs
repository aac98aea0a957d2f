//! Test helpers: a raw tar writer able to produce what well-behaved tools
//! refuse to (`../x`, absolute names), and the independent oracles
//! (`fsck.erofs`, `dump.erofs`, optionally a kernel mount).

#![allow(dead_code)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::{Path, PathBuf};
use std::process::Command;

use sha2::{Digest, Sha256};
use supermachine_rootfs::{erofs, Compression, FileKind, ListingEntry, Tree};

/// A tar stream written member by member, in ustar format with optional PAX
/// records; no validation of names at all.
#[derive(Default)]
pub struct Tar {
    pub bytes: Vec<u8>,
    pending: Vec<(String, Vec<u8>)>,
}

/// Header fields of one member.
#[derive(Clone)]
pub struct H {
    pub mode: u32,
    pub uid: u64,
    pub gid: u64,
    pub mtime: u64,
    pub major: u32,
    pub minor: u32,
}

impl Default for H {
    fn default() -> Self {
        Self {
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime: 1_600_000_000,
            major: 0,
            minor: 0,
        }
    }
}

fn octal(field: &mut [u8], v: u64) {
    let s = format!("{:0w$o}", v, w = field.len() - 1);
    assert!(s.len() < field.len(), "value {v} too large for a tar field");
    field[..s.len()].copy_from_slice(s.as_bytes());
    field[s.len()] = 0;
}

/// One raw 512-byte ustar header.
pub fn raw_header(name: &[u8], typeflag: u8, size: u64, link: &[u8], h: &H) -> [u8; 512] {
    let mut b = [0u8; 512];
    assert!(name.len() <= 100 && link.len() <= 100);
    b[..name.len()].copy_from_slice(name);
    octal(&mut b[100..108], u64::from(h.mode));
    octal(&mut b[108..116], h.uid);
    octal(&mut b[116..124], h.gid);
    octal(&mut b[124..136], size);
    octal(&mut b[136..148], h.mtime);
    b[156] = typeflag;
    b[157..157 + link.len()].copy_from_slice(link);
    b[257..263].copy_from_slice(b"ustar\0");
    b[263..265].copy_from_slice(b"00");
    octal(&mut b[329..337], u64::from(h.major));
    octal(&mut b[337..345], u64::from(h.minor));
    b[148..156].fill(b' ');
    let sum: u64 = b.iter().map(|&x| u64::from(x)).sum();
    let s = format!("{sum:06o}\0 ");
    b[148..156].copy_from_slice(s.as_bytes());
    b
}

impl Tar {
    pub fn new() -> Self {
        Self::default()
    }

    fn pad(&mut self) {
        let n = self.bytes.len().next_multiple_of(512);
        self.bytes.resize(n, 0);
    }

    /// Appends a member with explicit type and data, preceded by the PAX
    /// records queued with [`Tar::pax`] and by `path` / `linkpath` records
    /// when a name does not fit the 100-byte ustar fields.
    pub fn raw(&mut self, name: &[u8], typeflag: u8, data: &[u8], link: &[u8], h: &H) -> &mut Self {
        let mut records = std::mem::take(&mut self.pending);
        let mut name = name;
        let mut link = link;
        if name.len() > 100 {
            records.push(("path".into(), name.to_vec()));
            name = b"long-name-in-pax";
        }
        if link.len() > 100 {
            records.push(("linkpath".into(), link.to_vec()));
            link = b"long-link-in-pax";
        }
        if !records.is_empty() {
            let mut body = Vec::new();
            for (k, v) in &records {
                // "len key=value\n" where len counts itself.
                let rest = k.len() + v.len() + 3;
                let mut len = rest + 1;
                while len.to_string().len() + rest != len {
                    len += 1;
                }
                body.extend_from_slice(format!("{len} {k}=").as_bytes());
                body.extend_from_slice(v);
                body.push(b'\n');
            }
            self.put(b"PaxHeaders/x", b'x', &body, b"", &H::default());
        }
        self.put(name, typeflag, data, link, h)
    }

    fn put(&mut self, name: &[u8], typeflag: u8, data: &[u8], link: &[u8], h: &H) -> &mut Self {
        let hdr = raw_header(name, typeflag, data.len() as u64, link, h);
        self.bytes.extend_from_slice(&hdr);
        self.bytes.extend_from_slice(data);
        self.pad();
        self
    }

    /// Queues PAX records for the next member.
    pub fn pax(&mut self, records: &[(&str, &[u8])]) -> &mut Self {
        self.pending
            .extend(records.iter().map(|(k, v)| (k.to_string(), v.to_vec())));
        self
    }

    pub fn file(&mut self, name: &str, data: &[u8], h: &H) -> &mut Self {
        self.raw(name.as_bytes(), b'0', data, b"", h)
    }

    pub fn dir(&mut self, name: &str, h: &H) -> &mut Self {
        self.raw(name.as_bytes(), b'5', b"", b"", h)
    }

    pub fn symlink(&mut self, name: &str, target: &str) -> &mut Self {
        let h = H {
            mode: 0o777,
            ..H::default()
        };
        self.raw(name.as_bytes(), b'2', b"", target.as_bytes(), &h)
    }

    pub fn hardlink(&mut self, name: &str, target: &str) -> &mut Self {
        self.raw(name.as_bytes(), b'1', b"", target.as_bytes(), &H::default())
    }

    /// End-of-archive marker: two zero blocks.
    pub fn finish(&mut self) -> Vec<u8> {
        let mut out = self.bytes.clone();
        out.extend_from_slice(&[0u8; 1024]);
        out
    }
}

pub fn gzip(data: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(data).unwrap();
    e.finish().unwrap()
}

pub fn zstd(data: &[u8]) -> Vec<u8> {
    zstd::stream::encode_all(data, 3).unwrap()
}

pub fn sha(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Applies the layers in order to a new tree.
pub fn apply(layers: &[Vec<u8>]) -> supermachine_rootfs::Result<Tree> {
    let mut t = Tree::new()?;
    for (i, l) in layers.iter().enumerate() {
        t.apply_layer(i, &l[..], Compression::Auto)?;
    }
    Ok(t)
}

/// Listing keyed by path string.
pub fn by_path(listing: &[ListingEntry]) -> BTreeMap<String, ListingEntry> {
    listing
        .iter()
        .map(|e| (String::from_utf8_lossy(&e.path).into_owned(), e.clone()))
        .collect()
}

pub fn find_tool(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/usr/local/bin", "/bin", "/sbin"] {
        let p = Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    panic!(
        "{name} not found: these tests use erofs-utils as an independent reader of the \
         images; install it (Debian/Ubuntu: apt-get install erofs-utils)"
    );
}

/// Whether the tests run as root (device nodes, mounting the image). Not
/// root while `SUPERMACHINE_REQUIRE_ROOT` is set (CI) panics: there a
/// check left out is a failure.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    let root = unsafe { libc::geteuid() == 0 };
    assert!(
        root || std::env::var_os("SUPERMACHINE_REQUIRE_ROOT").is_none(),
        "SUPERMACHINE_REQUIRE_ROOT is set and these checks need root: run the tests as root"
    );
    root
}

/// What a reader of a filesystem can see at `root`, in listing form.
/// `xattrs` reads extended attributes (only meaningful on a mount).
pub fn listing_of_dir(root: &Path, xattrs: bool) -> Vec<ListingEntry> {
    let mut out = Vec::new();
    let mut pending = vec![(PathBuf::from("/"), root.to_path_buf())];
    while let Some((rel, abs)) = pending.pop() {
        let md = fs::symlink_metadata(&abs).unwrap();
        let ft = md.file_type();
        let kind = if ft.is_dir() {
            FileKind::Dir
        } else if ft.is_file() {
            FileKind::File
        } else if ft.is_symlink() {
            FileKind::Symlink
        } else if ft.is_char_device() {
            FileKind::CharDev
        } else if ft.is_block_device() {
            FileKind::BlockDev
        } else if ft.is_fifo() {
            FileKind::Fifo
        } else {
            FileKind::Socket
        };
        let mut e = ListingEntry {
            path: rel.as_os_str().as_bytes().to_vec(),
            kind,
            mode: md.mode() & 0o7777,
            uid: md.uid(),
            gid: md.gid(),
            size: 0,
            nlink: md.nlink() as u32,
            mtime: md.mtime(),
            mtime_nsec: md.mtime_nsec() as u32,
            target: None,
            rdev: None,
            sha256: None,
            xattrs: if xattrs {
                read_xattrs(&abs)
            } else {
                Vec::new()
            },
        };
        match kind {
            FileKind::Dir => {
                for child in fs::read_dir(&abs).unwrap() {
                    let child = child.unwrap();
                    pending.push((rel.join(child.file_name()), child.path()));
                }
            }
            FileKind::File => {
                e.size = md.len();
                let mut h = Sha256::new();
                let mut f = fs::File::open(&abs).unwrap();
                let mut buf = vec![0u8; 1 << 16];
                loop {
                    let n = f.read(&mut buf).unwrap();
                    if n == 0 {
                        break;
                    }
                    h.update(&buf[..n]);
                }
                e.sha256 = Some(hex::encode(h.finalize()));
            }
            FileKind::Symlink => {
                let t = fs::read_link(&abs).unwrap();
                e.size = md.len();
                e.target = Some(t.as_os_str().as_bytes().to_vec());
            }
            FileKind::CharDev | FileKind::BlockDev => {
                let r = md.rdev();
                e.rdev = Some((libc::major(r), libc::minor(r)));
            }
            _ => {}
        }
        out.push(e);
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    out
}

fn read_xattrs(p: &Path) -> Vec<(Vec<u8>, Vec<u8>)> {
    let c = std::ffi::CString::new(p.as_os_str().as_bytes()).unwrap();
    let mut names = vec![0u8; 1 << 16];
    // SAFETY: buffers are valid for the lengths given.
    let n = unsafe { libc::llistxattr(c.as_ptr(), names.as_mut_ptr().cast(), names.len()) };
    if n <= 0 {
        return Vec::new();
    }
    let mut out = Vec::new();
    for name in names[..n as usize]
        .split(|&b| b == 0)
        .filter(|s| !s.is_empty())
    {
        let cn = std::ffi::CString::new(name).unwrap();
        let mut val = vec![0u8; 1 << 16];
        // SAFETY: as above.
        let m =
            unsafe { libc::lgetxattr(c.as_ptr(), cn.as_ptr(), val.as_mut_ptr().cast(), val.len()) };
        assert!(m >= 0, "lgetxattr {}", String::from_utf8_lossy(name));
        val.truncate(m as usize);
        out.push((name.to_vec(), val));
    }
    out.sort();
    out
}

/// Writes `tree` to an image, runs `fsck.erofs --extract`, and checks that
/// the extracted files match the tree's listing in everything extraction
/// preserves (type, mode, size, contents, link targets, device numbers,
/// mtime; ownership when running as root). Returns the image path.
pub fn check_with_fsck(tree: &Tree, dir: &Path) -> PathBuf {
    let img = dir.join("image.erofs");
    erofs::write(tree, &img).expect("write image");
    let fsck = find_tool("fsck.erofs");
    let st = Command::new(&fsck).arg(&img).status().unwrap();
    assert!(st.success(), "fsck.erofs rejected the image");
    let out = dir.join("extracted");
    let _ = fs::remove_dir_all(&out);
    let mut cmd = Command::new(&fsck);
    cmd.arg(format!("--extract={}", out.display()));
    if is_root() {
        cmd.arg("--preserve");
    } else {
        cmd.arg("--preserve-perms");
    }
    let st = cmd.arg(&img).status().unwrap();
    assert!(st.success(), "fsck.erofs --extract failed");
    let want = tree.listing().unwrap();
    let mut got = listing_of_dir(&out, false);
    // erofs-utils 1.5 (Debian 12) extracts a chunk-based file with holes
    // wrongly: it neither seeks over a hole nor extends the file to its
    // size. Such files are taken as the tree says once dump.erofs confirms
    // the layout and size; the kernel check (`check_all`) reads them.
    for e in &mut got {
        let Some(w) = want.iter().find(|w| w.path == e.path) else {
            continue;
        };
        if e.kind == FileKind::File && w.kind == FileKind::File && e.sha256 != w.sha256 {
            let path = String::from_utf8_lossy(&e.path).into_owned();
            let (layout, size) = dump_layout(&img, &path);
            assert_eq!(
                (layout, size),
                (4, w.size),
                "{path}: fsck.erofs extracted other contents and it is not a chunk-based file"
            );
            e.size = w.size;
            e.sha256 = w.sha256.clone();
        }
    }
    let norm = |l: &[ListingEntry]| -> Vec<String> {
        l.iter()
            .filter(|e| is_root() || !matches!(e.kind, FileKind::CharDev | FileKind::BlockDev))
            .map(|e| {
                let mut e = e.clone();
                // Extraction does not restore hard links, xattrs or the
                // root directory's own metadata, and sub-second times.
                e.nlink = 0;
                e.xattrs.clear();
                e.mtime_nsec = 0;
                if e.kind == FileKind::Dir {
                    e.size = 0;
                } else {
                    // fsck.erofs chowns after chmod, and the kernel drops
                    // setuid/setgid on chown.
                    e.mode &= !0o6000;
                }
                if !is_root() {
                    e.uid = 0;
                    e.gid = 0;
                }
                if e.path == b"/" {
                    e.mode = 0;
                    e.uid = 0;
                    e.gid = 0;
                    e.mtime = 0;
                }
                e.to_string()
            })
            .collect()
    };
    let (w, g) = (norm(&want), norm(&got));
    if w != g {
        let diff: Vec<_> = w
            .iter()
            .filter(|l| !g.contains(l))
            .map(|l| format!("- {l}"))
            .chain(
                g.iter()
                    .filter(|l| !w.contains(l))
                    .map(|l| format!("+ {l}")),
            )
            .take(40)
            .collect();
        panic!(
            "extracted image differs from the tree:\n{}",
            diff.join("\n")
        );
    }
    img
}

/// `dump.erofs --path=P`: the numeric fields named by `keys`.
fn dump_fields(img: &Path, path: &str, keys: &[&str]) -> Vec<u64> {
    let out = Command::new(find_tool("dump.erofs"))
        .arg(format!("--path={path}"))
        .arg(img)
        .output()
        .unwrap();
    assert!(out.status.success(), "dump.erofs --path={path} failed");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    keys.iter()
        .map(|key| {
            let at = text
                .find(key)
                .unwrap_or_else(|| panic!("no '{key}' in dump.erofs output:\n{text}"));
            text[at + key.len()..]
                .split_whitespace()
                .next()
                .unwrap()
                .parse()
                .unwrap()
        })
        .collect()
}

/// `dump.erofs --path=P` fields: (data layout, size).
pub fn dump_layout(img: &Path, path: &str) -> (u32, u64) {
    let f = dump_fields(img, path, &["Layout:", "Size:"]);
    (f[0] as u32, f[1])
}

/// `dump.erofs --path=P` fields: (uid, gid, links, xattr size).
pub fn dump_inode(img: &Path, path: &str) -> (u32, u32, u32, u32) {
    let f = dump_fields(img, path, &["Uid:", "Gid:", "Links:", "Xattr size:"]);
    (f[0] as u32, f[1] as u32, f[2] as u32, f[3] as u32)
}

/// Mounts the image with the kernel's EROFS driver when this process may
/// (root, loop devices, erofs available) and returns the full listing seen
/// through the mount (nlink, xattrs included). `None` when mounting is not
/// possible here; the caller then relies on fsck/dump checks only.
pub fn kernel_listing(img: &Path) -> Option<Vec<ListingEntry>> {
    if !is_root() || std::env::var_os("SUPERMACHINE_TEST_NO_MOUNT").is_some() {
        return None;
    }
    let mnt = tempfile::tempdir().ok()?;
    let st = Command::new("mount")
        .args(["-t", "erofs", "-o", "loop,ro"])
        .arg(img)
        .arg(mnt.path())
        .stderr(std::process::Stdio::null())
        .status()
        .ok()?;
    if !st.success() {
        eprintln!("note: cannot mount EROFS here; kernel check skipped");
        return None;
    }
    struct Unmount<'a>(&'a Path);
    impl Drop for Unmount<'_> {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(self.0).status();
        }
    }
    let _guard = Unmount(mnt.path());
    Some(listing_of_dir(mnt.path(), true))
}

/// Full check: fsck extraction, and the kernel's view when available must
/// equal the tree's listing exactly (apart from the root's directory size,
/// which listings leave out).
pub fn check_all(tree: &Tree) -> Checked {
    let dir = tempfile::tempdir().unwrap();
    let img = check_with_fsck(tree, dir.path());
    if let Some(mut got) = kernel_listing(&img) {
        let want = tree.listing().unwrap();
        for e in &mut got {
            if e.kind == FileKind::Dir {
                e.size = 0;
            }
        }
        let w: Vec<String> = want.iter().map(|e| e.to_string()).collect();
        let g: Vec<String> = got.iter().map(|e| e.to_string()).collect();
        assert_eq!(w, g, "kernel mount view differs from the tree listing");
        eprintln!("kernel mount agrees with the tree on {} paths", w.len());
    }
    Checked { _dir: dir, img }
}

/// A checked image and the directory that holds it (removed on drop).
pub struct Checked {
    _dir: tempfile::TempDir,
    pub img: PathBuf,
}

/// A numeric header field: octal when it fits, else GNU base-256.
fn number(field: &mut [u8], v: u64) {
    let s = format!("{:0w$o}", v, w = field.len() - 1);
    if s.len() < field.len() {
        field[..s.len()].copy_from_slice(s.as_bytes());
        field[s.len()] = 0;
        return;
    }
    field.fill(0);
    let n = field.len();
    field[n - 8..].copy_from_slice(&v.to_be_bytes());
    field[0] = 0x80;
}

/// One old-style GNU sparse member (`'S'`): a header whose map lists the
/// data `chunks` (logical offset, bytes) of a file of `real` bytes, the
/// extension blocks for chunks beyond the header's four slots, then the
/// chunks' bytes. Numbers too large for octal are written in base-256.
pub fn gnu_sparse(name: &str, real: u64, chunks: &[(u64, Vec<u8>)]) -> Vec<u8> {
    let stored: u64 = chunks.iter().map(|c| c.1.len() as u64).sum();
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    number(&mut h[100..108], 0o644);
    number(&mut h[108..116], 0);
    number(&mut h[116..124], 0);
    number(&mut h[124..136], stored);
    number(&mut h[136..148], 1_600_000_000);
    h[156] = b'S';
    h[257..265].copy_from_slice(b"ustar  \0");
    let entry = |slot: &mut [u8], (off, data): &(u64, Vec<u8>)| {
        number(&mut slot[0..12], *off);
        number(&mut slot[12..24], data.len() as u64);
    };
    for (slot, c) in h[386..482].chunks_mut(24).zip(chunks) {
        entry(slot, c);
    }
    let rest: Vec<&[(u64, Vec<u8>)]> = chunks.get(4..).unwrap_or(&[]).chunks(21).collect();
    h[482] = u8::from(!rest.is_empty());
    number(&mut h[483..495], real);
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|&x| u64::from(x)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut out = h.to_vec();
    for (i, group) in rest.iter().enumerate() {
        let mut ext = [0u8; 512];
        for (slot, c) in ext[..504].chunks_mut(24).zip(group.iter()) {
            entry(slot, c);
        }
        ext[504] = u8::from(i + 1 < rest.len());
        out.extend_from_slice(&ext);
    }
    for (_, d) in chunks {
        out.extend_from_slice(d);
    }
    out.resize(out.len().next_multiple_of(512), 0);
    out
}

/// Appends raw member bytes (from [`gnu_sparse`] ...) to a tar.
impl Tar {
    pub fn raw_member(&mut self, bytes: &[u8]) -> &mut Self {
        self.bytes.extend_from_slice(bytes);
        self
    }
}

/// Options with a spool in `dir` and the given limits.
pub fn tree_with(limits: supermachine_rootfs::Limits) -> Tree {
    Tree::with_options(supermachine_rootfs::TreeOptions {
        spool_dir: None,
        limits,
    })
    .unwrap()
}
