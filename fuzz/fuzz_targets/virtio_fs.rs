//! A hostile guest's FUSE requests to a shared directory: sequences of
//! messages with opcodes (mostly ones the server knows), node ids and file
//! handles (mostly small, so they hit what earlier messages made), bodies
//! and reply room from the fuzzer, through the device's queues. Whatever
//! the input: no panic, no hang, no descriptor leaked once the device is
//! dropped, and nothing outside the shared directory changed or read.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::path::PathBuf;
use std::sync::OnceLock;
use supermachine_fuzz::Input;
use supermachine_protocol::fs_spec::SymlinkPolicy;
use supermachine_vmm::devices::virtio::fs::{Fs, SharedDir};
use supermachine_vmm::devices::virtio::test_utils::{memory, MockDriver};
use supermachine_vmm::devices::virtio::VirtioDevice;

/// FUSE opcodes the server handles (LOOKUP .. LSEEK, INIT, the forgets).
const OPCODES: [u32; 40] = [
    1, 2, 3, 4, 5, 6, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 20, 21, 22, 23, 24, 25, 26,
    27, 28, 29, 30, 34, 35, 36, 38, 40, 41, 42, 43, 44, 45, 46, 47,
];
/// Bytes no input holds by chance (and no comparison reveals): if they
/// show up in a reply, the device read the file outside the share.
const SECRET: &[u8] = b"\x8e\x1f\xd2\x5a\x07\xc4\x93\x6b\x21\xee\x58\x0d\xb7\x44\x9a\x30\
\xf1\x62\x0c\xad\x3e\x97\x15\xc8\x7b\x29\xd6\x4f\x83\x1a\xe5\x70";

/// `base/share` (a file, a directory, links out) and `base/outside/secret`.
fn base() -> &'static (tempfile::TempDir, PathBuf) {
    static BASE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    BASE.get_or_init(|| {
        let base = tempfile::tempdir().expect("temp dir");
        let outside = base.path().join("outside");
        std::fs::create_dir(&outside).expect("outside");
        std::fs::write(outside.join("secret"), SECRET).expect("secret");
        (base, outside)
    })
}

/// A fresh share for this run (the last run's is removed).
fn fresh_share(base: &std::path::Path) -> PathBuf {
    let share = base.join("share");
    let _ = std::fs::remove_dir_all(&share);
    std::fs::create_dir_all(share.join("dir")).expect("share");
    std::fs::write(share.join("file"), b"hello").expect("file");
    let _ = std::os::unix::fs::symlink("../outside", share.join("up"));
    let _ = std::os::unix::fs::symlink(base.join("outside/secret"), share.join("abs"));
    share
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").map(|d| d.count()).unwrap_or(0)
}

fuzz_target!(|data: &[u8]| {
    let (base, outside) = base();
    let share = fresh_share(base.path());
    let before = open_fds();
    let mut input = Input(data);
    // Not follow: it trusts the guest with what host links lead to.
    let policy = if input.u8() & 1 == 0 {
        SymlinkPolicy::Deny
    } else {
        SymlinkPolicy::Opaque
    };
    let read_only = input.u8() & 1 == 1;
    let dir = SharedDir::open_with_limit(&share, policy, read_only, 64).expect("share");
    let mut fs = Fs::new("fuzz", dir).expect("device");
    let mem = memory();
    let mut driver = MockDriver::new(&mem, fs.queue_max_sizes());
    let (activation, interrupt, poller) = driver.activation();
    fs.activate(activation).expect("activate");
    let mut unique = 0u64;
    while !input.is_empty() && unique < 64 {
        unique += 1;
        let pick = input.u8();
        let opcode = if pick < 240 {
            OPCODES[usize::from(pick) % OPCODES.len()]
        } else {
            input.u32()
        };
        let nodeid = match input.u8() {
            n @ 0..=200 => u64::from(n % 8),
            _ => input.u64(),
        };
        let body_len = usize::from(input.u8());
        let mut body = input.bytes(body_len).to_vec();
        // Bodies often start with a handle: keep those small too.
        if body.len() >= 8 && body[0] & 0x80 == 0 {
            body[1..8].fill(0);
        }
        let declared = (40 + body.len()) as u32;
        let len = if input.u8() == 0xff { input.u32() } else { declared };
        let mut request = Vec::with_capacity(declared as usize);
        request.extend(len.to_le_bytes());
        request.extend(opcode.to_le_bytes());
        request.extend(unique.to_le_bytes());
        request.extend(nodeid.to_le_bytes());
        request.extend([0u8; 16]);
        request.extend(&body);
        let room = u32::from(input.u16() % 8192);
        let queue = usize::from(input.u8() % 8 == 0) ^ 1;
        let r = driver.readable(&request);
        let w = driver.writable(room.max(1));
        driver.add_chain(queue, &[r, w]);
        fs.handle_queue(queue);
        // Nothing the guest got back is the secret.
        let reply = driver.read(w.addr, room.max(1) as usize);
        assert!(
            !reply.windows(SECRET.len()).any(|win| win == SECRET),
            "{policy}: the secret reached the guest"
        );
    }
    drop((fs, interrupt, poller));
    assert_eq!(open_fds(), before, "descriptors leaked");
    assert_eq!(std::fs::read(outside.join("secret")).expect("secret"), SECRET);
    let outside_entries = std::fs::read_dir(outside).expect("outside").count();
    assert_eq!(outside_entries, 1, "something was made outside the share");
});
