//! virtio-fs against a mock driver: FUSE messages laid out in guest
//! memory as a kernel would (and as no kernel would), answered through
//! the device's queues.

use super::*;
use crate::devices::virtio::test_utils::{memory, within_a_minute, Buf, MockDriver, MEM_SIZE};
use fuse_backend_rs::abi::fuse_abi::{InHeader, InitIn, InitOut, OutHeader};
use supermachine_protocol::fs_spec::SymlinkPolicy;
use vm_memory::ByteValued;

pub(super) const REQUEST: usize = 1;
pub(super) const OP_INIT: u32 = 26;
const OP_FORGET: u32 = 2;
const OP_LOOKUP: u32 = 1;

pub(super) struct Fixture<'m> {
    driver: MockDriver<'m>,
    pub fs: Fs,
    interrupt: Arc<Interrupt>,
    dir: tempfile::TempDir,
}

fn fixture(mem: &GuestMemoryMmap) -> Fixture<'_> {
    fixture_with(mem, false)
}

/// A device sharing a fresh directory holding `file` ("hello").
pub(super) fn fixture_with(mem: &GuestMemoryMmap, read_only: bool) -> Fixture<'_> {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("file"), "hello").unwrap();
    let shared = SharedDir::open(dir.path(), SymlinkPolicy::Opaque, read_only).unwrap();
    let mut fs = Fs::new("share", shared).unwrap();
    let driver = MockDriver::new(mem, &[HIPRIO_SIZE, REQUEST_SIZE]);
    let (activation, interrupt, _) = driver.activation();
    fs.activate(activation).unwrap();
    Fixture {
        driver,
        fs,
        interrupt,
        dir,
    }
}

/// A FUSE request: header (its `len` the real length unless `len` says
/// otherwise) and body.
pub(super) fn message(opcode: u32, unique: u64, body: &[u8], len: Option<u32>) -> Vec<u8> {
    let header = InHeader {
        len: len.unwrap_or((std::mem::size_of::<InHeader>() + body.len()) as u32),
        opcode,
        unique,
        nodeid: 1,
        ..Default::default()
    };
    [header.as_slice(), body].concat()
}

pub(super) fn init_body() -> Vec<u8> {
    InitIn {
        major: 7,
        minor: 36,
        max_readahead: 128 << 10,
        // Everything but INIT_EXT (which would announce a second flags
        // word this body does not carry).
        flags: !0x4000_0000,
    }
    .as_slice()
    .to_vec()
}

impl Fixture<'_> {
    /// The shared directory on the host.
    pub fn dir_path(&self) -> &std::path::Path {
        self.dir.path()
    }

    /// Sends `request` with `room` bytes for the reply on `queue`; the
    /// used length and the reply buffer's address.
    pub fn send(&mut self, queue: usize, request: &[u8], room: u32) -> (u32, u64) {
        let r = self.driver.readable(request);
        let w = self.driver.writable(room);
        self.driver.add_chain(queue, &[r, w]);
        self.fs.handle_queue(queue);
        let used = *self.driver.used(queue).last().expect("the chain was used");
        (used.1, w.addr)
    }

    /// The reply's header and body, from a reply buffer.
    pub fn reply(&self, addr: u64, len: u32) -> (OutHeader, Vec<u8>) {
        let bytes = self.driver.read(addr, len as usize);
        let header_len = std::mem::size_of::<OutHeader>();
        let mut header = OutHeader::default();
        header.as_mut_slice().copy_from_slice(&bytes[..header_len]);
        (header, bytes[header_len..].to_vec())
    }
}

#[test]
fn init_is_answered_with_the_options_we_take() {
    let mem = memory();
    let mut f = fixture(&mem);
    let (len, at) = f.send(REQUEST, &message(OP_INIT, 7, &init_body(), None), 4096);
    let (header, body) = f.reply(at, len);
    assert_eq!((header.error, header.unique), (0, 7));
    assert_eq!(header.len, len);
    let mut out = InitOut::default();
    out.as_mut_slice()
        .copy_from_slice(&body[..std::mem::size_of::<InitOut>()]);
    assert_eq!((out.major, out.minor), (7, 33));
    let flags = u64::from(out.flags) | (u64::from(out.flags2) << 32);
    // The kernel offered every low flag; we took only what we want.
    assert_eq!(
        flags,
        shared_dir::WANTED.bits() & 0xbfff_ffff,
        "flags {flags:#x}"
    );
    assert_eq!(out.max_write, 1 << 20);
    assert!(f.fs.dir.initialized());
}

#[test]
fn unknown_opcodes_get_enosys_and_the_device_serves_on() {
    let mem = memory();
    let mut f = fixture(&mem);
    f.send(REQUEST, &message(OP_INIT, 1, &init_body(), None), 4096);
    for (i, opcode) in [0u32, 50, 60, 4096, u32::MAX].into_iter().enumerate() {
        let unique = 100 + i as u64;
        let (len, at) = f.send(REQUEST, &message(opcode, unique, &[0; 40], None), 4096);
        let (header, _) = f.reply(at, len);
        assert_eq!(
            (header.error, header.unique),
            (-libc::ENOSYS, unique),
            "opcode {opcode}"
        );
    }
    assert!(!f.interrupt.is_broken());
}

#[test]
fn chains_no_reply_fits_are_consumed_without_one() {
    within_a_minute(|| {
        let mem = memory();
        let mut f = fixture(&mem);
        let init = message(OP_INIT, 1, &init_body(), None);
        // Reply buffer outside guest memory; request outside guest memory;
        // no reply buffer at all; a reply buffer too small for a header.
        let r = f.driver.readable(&init);
        f.driver
            .add_chain(REQUEST, &[r, Buf::write(MEM_SIZE - 8, 4096)]);
        let w = f.driver.writable(4096);
        f.driver
            .add_chain(REQUEST, &[Buf::read(MEM_SIZE - 8, 64), w]);
        let r = f.driver.readable(&init);
        f.driver.add_chain(REQUEST, &[r]);
        let r = f.driver.readable(&init);
        let w = f.driver.writable(4);
        f.driver.add_chain(REQUEST, &[r, w]);
        f.fs.handle_queue(REQUEST);
        let used = f.driver.used(REQUEST);
        assert_eq!(used.len(), 4, "every chain was consumed");
        assert!(used.iter().all(|&(_, len)| len == 0), "{used:?}");
        assert!(!f.interrupt.is_broken());
        // And the device still answers a good request.
        let (len, at) = f.send(REQUEST, &init, 4096);
        assert_eq!(f.reply(at, len).0.error, 0);
    });
}

#[test]
fn a_header_that_claims_more_than_any_request_holds_is_refused() {
    let mem = memory();
    let mut f = fixture(&mem);
    let lying = message(OP_INIT, 9, &init_body(), Some(u32::MAX));
    let (len, at) = f.send(REQUEST, &lying, 4096);
    let (header, _) = f.reply(at, len);
    assert_eq!((header.error, header.unique), (-libc::ENOMEM, 9));
    assert!(!f.fs.dir.initialized());
}

#[test]
fn the_hiprio_queue_serves_only_what_belongs_there() {
    let mem = memory();
    let mut f = fixture(&mem);
    // INIT on hiprio: consumed unanswered, not executed.
    let (len, _) = f.send(HIPRIO, &message(OP_INIT, 1, &init_body(), None), 4096);
    assert_eq!(len, 0);
    assert!(!f.fs.dir.initialized());
    // A FORGET of a node never issued: no reply, no harm.
    let (len, _) = f.send(
        HIPRIO,
        &message(OP_FORGET, 2, &[1, 0, 0, 0, 0, 0, 0, 0], None),
        64,
    );
    assert_eq!(len, 0);
    assert!(!f.interrupt.is_broken());
}

#[test]
fn the_config_space_holds_the_tag_and_one_request_queue() {
    let dir = tempfile::tempdir().unwrap();
    let shared = SharedDir::open(dir.path(), SymlinkPolicy::Deny, true).unwrap();
    let fs = Fs::new("app-src", shared).unwrap();
    let mut tag = [0xffu8; 36];
    fs.read_config(0, &mut tag);
    assert_eq!(&tag[..7], b"app-src");
    assert!(tag[7..].iter().all(|&b| b == 0), "NUL-padded");
    let mut queues = [0u8; 4];
    fs.read_config(36, &mut queues);
    assert_eq!(u32::from_le_bytes(queues), 1);
    assert_eq!(fs.queue_max_sizes(), &[HIPRIO_SIZE, REQUEST_SIZE]);
    assert_eq!(fs.device_type(), VIRTIO_ID_FS);
}

#[test]
fn bad_tags_and_roots_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let open = || SharedDir::open(dir.path(), SymlinkPolicy::Opaque, false).unwrap();
    assert!(Fs::new(&"t".repeat(36), open()).is_err());
    assert!(Fs::new("", open()).is_err());
    assert!(Fs::new("a/b", open()).is_err());
    assert!(Fs::new(&"t".repeat(35), open()).is_ok());
    let file = dir.path().join("file");
    std::fs::write(&file, "x").unwrap();
    assert!(SharedDir::open(&file, SymlinkPolicy::Opaque, false).is_err());
    let link = dir.path().join("link");
    std::os::unix::fs::symlink(dir.path(), &link).unwrap();
    assert!(
        SharedDir::open(&link, SymlinkPolicy::Opaque, false).is_err(),
        "a symlink as the root is not followed"
    );
}

#[test]
fn saves_and_restores_only_into_the_same_mount() {
    let mem = memory();
    let mut f = fixture(&mem);
    f.send(REQUEST, &message(OP_INIT, 1, &init_body(), None), 4096);
    let saved = VirtioDevice::save(&f.fs);
    let DeviceState::Fs(state) = &saved else {
        panic!("{saved:?}")
    };
    assert!(state.initialized);
    let other_dir = tempfile::tempdir().unwrap();
    let fresh = |tag: &str, symlinks, ro| {
        Fs::new(
            tag,
            SharedDir::open(other_dir.path(), symlinks, ro).unwrap(),
        )
        .unwrap()
    };
    // Another host path is fine; the session comes back.
    let mut same = fresh("share", SymlinkPolicy::Opaque, false);
    VirtioDevice::restore(&mut same, &saved).unwrap();
    assert!(same.dir.initialized());
    let e = VirtioDevice::restore(&mut fresh("other", SymlinkPolicy::Opaque, false), &saved)
        .unwrap_err();
    assert!(
        matches!(e, DeviceRestoreError::Fs(FsRestoreError::Tag { .. })),
        "{e}"
    );
    for (symlinks, ro) in [(SymlinkPolicy::Deny, false), (SymlinkPolicy::Opaque, true)] {
        let e = VirtioDevice::restore(&mut fresh("share", symlinks, ro), &saved).unwrap_err();
        assert!(
            matches!(e, DeviceRestoreError::Fs(FsRestoreError::Options { .. })),
            "{e}"
        );
    }
    let rng = DeviceState::Rng(crate::devices::virtio::rng::RngState);
    let e =
        VirtioDevice::restore(&mut fresh("share", SymlinkPolicy::Opaque, false), &rng).unwrap_err();
    assert!(
        matches!(
            e,
            DeviceRestoreError::WrongKind {
                device: "fs",
                saved: "rng"
            }
        ),
        "{e}"
    );
}

#[test]
fn lookups_travel_as_fuse_messages() {
    use fuse_backend_rs::abi::fuse_abi::EntryOut;
    let mem = memory();
    let mut f = fixture(&mem);
    f.send(REQUEST, &message(OP_INIT, 1, &init_body(), None), 4096);
    let (len, at) = f.send(REQUEST, &message(OP_LOOKUP, 2, b"file\0", None), 4096);
    let (header, body) = f.reply(at, len);
    assert_eq!((header.error, header.unique), (0, 2));
    let mut entry = EntryOut::default();
    entry
        .as_mut_slice()
        .copy_from_slice(&body[..std::mem::size_of::<EntryOut>()]);
    assert_eq!((entry.nodeid, entry.attr.size), (2, 5));
    // What no kernel sends: a name without its NUL, one holding a slash,
    // one of 4,000 bytes, a parent never issued.
    for (unique, name, nodeid, expected) in [
        (3, &b"file"[..], 1, libc::EINVAL),
        (4, b"a/b\0", 1, libc::EINVAL),
        (5, &[b'n'; 4001][..], 1, libc::ENAMETOOLONG),
        (6, b"file\0", 77, libc::ESTALE),
    ] {
        let mut request = message(OP_LOOKUP, unique, name, None);
        request[16..24].copy_from_slice(&u64::to_le_bytes(nodeid));
        if unique == 5 {
            *request.last_mut().unwrap() = 0;
        }
        let (len, at) = f.send(REQUEST, &request, 4096);
        let (header, _) = f.reply(at, len);
        assert_eq!(
            (header.error, header.unique),
            (-expected, unique),
            "{unique}"
        );
    }
}
