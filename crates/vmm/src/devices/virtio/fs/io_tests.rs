//! Handle-based operations as FUSE messages through the device: open,
//! read, write, list, release; and handles and sizes no kernel would send.

use super::tests::{init_body, message, Fixture, OP_INIT, REQUEST};
use crate::devices::virtio::test_utils::memory;
use fuse_backend_rs::abi::fuse_abi::{OpenIn, OpenOut, ReadIn, ReleaseIn, WriteIn, WriteOut};
use vm_memory::ByteValued;

const OP_LOOKUP: u32 = 1;
const OP_OPEN: u32 = 14;
const OP_READ: u32 = 15;
const OP_WRITE: u32 = 16;
const OP_RELEASE: u32 = 18;
const OP_OPENDIR: u32 = 27;
const OP_READDIR: u32 = 28;
const OP_RELEASEDIR: u32 = 29;
const OP_READDIRPLUS: u32 = 44;

impl Fixture<'_> {
    /// Sends one request for `nodeid`; the reply's error and payload.
    fn call(&mut self, opcode: u32, nodeid: u64, body: &[u8]) -> (i32, Vec<u8>) {
        let mut request = message(opcode, 0x5eed, body, None);
        request[16..24].copy_from_slice(&nodeid.to_le_bytes());
        let (len, at) = self.send(REQUEST, &request, 256 * 1024);
        assert!(len >= 16, "opcode {opcode}: no reply");
        let (header, payload) = self.reply(at, len);
        (header.error, payload)
    }

    fn lookup(&mut self, parent: u64, name: &str) -> u64 {
        let (error, payload) = self.call(OP_LOOKUP, parent, format!("{name}\0").as_bytes());
        assert_eq!(error, 0, "lookup {name}");
        u64::from_le_bytes(payload[..8].try_into().unwrap())
    }

    fn open(&mut self, opcode: u32, node: u64, flags: i32) -> Result<u64, i32> {
        let open = OpenIn {
            flags: flags as u32,
            fuse_flags: 0,
        };
        match self.call(opcode, node, open.as_slice()) {
            (0, payload) => {
                let mut out = OpenOut::default();
                out.as_mut_slice().copy_from_slice(&payload[..16]);
                Ok(out.fh)
            }
            (error, _) => Err(-error),
        }
    }

    fn read(&mut self, opcode: u32, node: u64, fh: u64, offset: u64, size: u32) -> (i32, Vec<u8>) {
        let read = ReadIn {
            fh,
            offset,
            size,
            ..Default::default()
        };
        self.call(opcode, node, read.as_slice())
    }
}

fn ready(mem: &vm_memory::GuestMemoryMmap, read_only: bool) -> Fixture<'_> {
    let mut f = super::tests::fixture_with(mem, read_only);
    f.send(REQUEST, &message(OP_INIT, 1, &init_body(), None), 4096);
    f
}

#[test]
fn a_file_is_opened_read_written_and_released() {
    let mem = memory();
    let mut f = ready(&mem, false);
    let node = f.lookup(1, "file");
    let fh = f.open(OP_OPEN, node, libc::O_RDWR).unwrap();
    let (error, data) = f.read(OP_READ, node, fh, 1, 100);
    assert_eq!((error, data.as_slice()), (0, &b"ello"[..]));
    let write = WriteIn {
        fh,
        offset: 5,
        size: 6,
        ..Default::default()
    };
    let (error, payload) = f.call(OP_WRITE, node, &[write.as_slice(), b" world"].concat());
    assert_eq!(error, 0);
    let mut out = WriteOut::default();
    out.as_mut_slice().copy_from_slice(&payload[..8]);
    assert_eq!(out.size, 6);
    let on_host = std::fs::read(f.dir_path().join("file")).unwrap();
    assert_eq!(
        on_host, b"hello world",
        "the write reached the host at once"
    );
    let release = ReleaseIn {
        fh,
        ..Default::default()
    };
    assert_eq!(f.call(OP_RELEASE, node, release.as_slice()).0, 0);
    // The handle is gone: reading through it, or releasing it again, fails.
    assert_eq!(f.read(OP_READ, node, fh, 0, 10).0, -libc::EBADF);
    assert_eq!(f.call(OP_RELEASE, node, release.as_slice()).0, -libc::EBADF);
}

#[test]
fn handles_and_ranges_no_kernel_sends_are_refused() {
    let mem = memory();
    let mut f = ready(&mem, false);
    let node = f.lookup(1, "file");
    let fh = f.open(OP_OPEN, node, libc::O_RDONLY).unwrap();
    // Never issued; issued for another node.
    assert_eq!(f.read(OP_READ, node, 999, 0, 10).0, -libc::EBADF);
    assert_eq!(f.read(OP_READ, 1, fh, 0, 10).0, -libc::EBADF);
    // A read past what a file offset holds.
    assert_eq!(
        f.read(OP_READ, node, fh, i64::MAX as u64, 4096).0,
        -libc::EINVAL
    );
    assert_eq!(f.read(OP_READ, node, fh, u64::MAX, 1).0, -libc::EINVAL);
    // A read of 4 GiB: only what the reply buffers hold is read, straight
    // into them (nothing the size of the request is allocated).
    assert_eq!(
        f.read(OP_READ, node, fh, 0, u32::MAX),
        (0, b"hello".to_vec())
    );
    // A directory is not opened as a file, nor a file as a directory.
    assert_eq!(f.open(OP_OPEN, 1, libc::O_RDONLY), Err(libc::EISDIR));
    assert_eq!(f.open(OP_OPENDIR, node, libc::O_RDONLY), Err(libc::ENOTDIR));
    // Flags that create mean nothing here and are dropped.
    let fh = f
        .open(OP_OPEN, node, libc::O_RDONLY | libc::O_CREAT | libc::O_EXCL)
        .unwrap();
    assert_eq!(f.read(OP_READ, node, fh, 0, 5).1, b"hello");
}

#[test]
fn a_read_only_mount_opens_for_reading_only() {
    let mem = memory();
    let mut f = ready(&mem, true);
    let node = f.lookup(1, "file");
    for flags in [libc::O_WRONLY, libc::O_RDWR, libc::O_RDONLY | libc::O_TRUNC] {
        assert_eq!(f.open(OP_OPEN, node, flags), Err(libc::EROFS), "{flags:#o}");
    }
    let fh = f.open(OP_OPEN, node, libc::O_RDONLY).unwrap();
    assert_eq!(f.read(OP_READ, node, fh, 0, 5).1, b"hello");
    assert_eq!(std::fs::read(f.dir_path().join("file")).unwrap(), b"hello");
}

/// The names in a READDIR or READDIRPLUS reply (`fuse_dirent`s, the
/// PLUS form with an `fuse_entry_out` before each).
fn names(payload: &[u8], plus: bool) -> Vec<String> {
    let mut names = Vec::new();
    let mut at = 0;
    let entry_out = if plus { 128 } else { 0 };
    while at + entry_out + 24 <= payload.len() {
        let d = &payload[at + entry_out..];
        let namelen = u32::from_le_bytes(d[16..20].try_into().unwrap()) as usize;
        names.push(String::from_utf8_lossy(&d[24..24 + namelen]).into_owned());
        at += entry_out + (24 + namelen).next_multiple_of(8);
    }
    names.sort();
    names
}

#[test]
fn directories_are_listed_with_and_without_attributes() {
    let mem = memory();
    let mut f = ready(&mem, false);
    std::fs::create_dir(f.dir_path().join("sub")).unwrap();
    std::os::unix::fs::symlink("/etc/passwd", f.dir_path().join("link")).unwrap();
    let fh = f.open(OP_OPENDIR, 1, libc::O_RDONLY).unwrap();
    let (error, payload) = f.read(OP_READDIR, 1, fh, 0, 4096);
    assert_eq!(error, 0);
    let all = [".", "..", "file", "link", "sub"];
    assert_eq!(names(&payload, false), all);
    let nodes = f.fs.dir.nodes();
    let (error, payload) = f.read(OP_READDIRPLUS, 1, fh, 0, 4096);
    assert_eq!(error, 0);
    assert_eq!(names(&payload, true), all);
    assert_eq!(
        f.fs.dir.nodes(),
        nodes + 3,
        "file, link and sub were looked up"
    );
    // A reply with room for nothing lists nothing, and holds no node.
    let nodes = f.fs.dir.nodes();
    let (_, payload) = f.read(OP_READDIRPLUS, 1, fh, 0, 10);
    assert!(payload.is_empty());
    assert_eq!(f.fs.dir.nodes(), nodes);
    let release = ReleaseIn {
        fh,
        ..Default::default()
    };
    assert_eq!(f.call(OP_RELEASEDIR, 1, release.as_slice()).0, 0);
}
