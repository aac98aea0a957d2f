//! A shared directory's tables through a snapshot: what the guest held is
//! there again after a restore, opened lazily; a file gone meanwhile is
//! stale alone; tables no device could have saved are refused.

use super::handles::SavedHandle;
use super::inodes::{SavedNode, ROOT};
use super::*;
use fuse_backend_rs::api::filesystem::{Context, FileSystem};
use std::ffi::CString;
use supermachine_protocol::fs_spec::SymlinkPolicy;

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn device(path: &std::path::Path) -> Fs {
    Fs::new(
        "share",
        SharedDir::open(path, SymlinkPolicy::Opaque, false).unwrap(),
    )
    .unwrap()
}

fn errno<T>(r: std::io::Result<T>) -> i32 {
    r.err().and_then(|e| e.raw_os_error()).unwrap_or(0)
}

#[test]
fn what_the_guest_held_comes_back_and_opens_on_first_use() {
    let share = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(share.path().join("sub")).unwrap();
    std::fs::write(share.path().join("sub/inner"), "inner data").unwrap();
    std::fs::write(share.path().join("gone"), "x").unwrap();
    std::fs::write(share.path().join("replaced"), "x").unwrap();
    let ctx = Context::new();
    let before = device(share.path());
    let sub = before.dir.lookup(&ctx, ROOT, &c("sub")).unwrap().inode;
    let inner = before.dir.lookup(&ctx, sub, &c("inner")).unwrap().inode;
    let gone = before.dir.lookup(&ctx, ROOT, &c("gone")).unwrap().inode;
    let replaced = before.dir.lookup(&ctx, ROOT, &c("replaced")).unwrap().inode;
    let flags = (libc::O_RDWR | libc::O_TRUNC) as u32;
    let (fh, ..) = before.dir.open(&ctx, inner, flags, 0).unwrap();
    std::fs::write(share.path().join("sub/inner"), "inner data").unwrap();
    let saved = VirtioDevice::save(&before);
    drop(before);
    // Meanwhile, on the host:
    std::fs::remove_file(share.path().join("gone")).unwrap();
    std::fs::remove_file(share.path().join("replaced")).unwrap();
    std::fs::create_dir(share.path().join("replaced")).unwrap();

    let mut after = device(share.path());
    VirtioDevice::restore(&mut after, &saved).unwrap();
    let (attr, _) = after.dir.getattr(&ctx, inner, None).unwrap();
    assert_eq!(attr.st_size, 10, "found again through its parent");
    // The open handle works, and reopening it did not truncate the file.
    let file = after.dir.handle(inner, fh.unwrap()).unwrap();
    let mut buf = [0u8; 10];
    assert_eq!(
        std::os::unix::fs::FileExt::read_at(&*file, &mut buf, 0).unwrap(),
        10
    );
    assert_eq!(&buf, b"inner data");
    assert_eq!(errno(after.dir.getattr(&ctx, gone, None)), libc::ESTALE);
    assert_eq!(errno(after.dir.getattr(&ctx, replaced, None)), libc::ESTALE);
    // The rest of the mount is fine, and new ids do not reuse saved ones.
    let fresh = after.dir.lookup(&ctx, ROOT, &c("replaced")).unwrap().inode;
    assert!(fresh > replaced);
}

fn state_with(nodes: Vec<SavedNode>, handles: Vec<SavedHandle>) -> DeviceState {
    DeviceState::Fs(FsState {
        tag: "share".into(),
        symlinks: SymlinkPolicy::Opaque,
        read_only: false,
        initialized: true,
        next_node: 100,
        nodes,
        next_handle: 100,
        handles,
    })
}

fn node(id: u64, parent: u64, name: &str, kind: u32) -> SavedNode {
    SavedNode {
        id,
        parent,
        name: name.as_bytes().to_vec(),
        kind,
        nlookup: 1,
    }
}

#[test]
fn tables_no_device_could_have_saved_are_refused() {
    let share = tempfile::tempdir().unwrap();
    let dir = libc::S_IFDIR;
    let file = libc::S_IFREG;
    let handle = |node| SavedHandle {
        fh: 1,
        node,
        flags: 0,
        dir: false,
    };
    let cases = [
        (
            "a cycle",
            vec![node(2, 3, "a", dir), node(3, 2, "b", dir)],
            vec![],
        ),
        ("a parent never saved", vec![node(2, 9, "a", file)], vec![]),
        (
            "a file as a parent",
            vec![node(2, 1, "f", file), node(3, 2, "a", file)],
            vec![],
        ),
        ("..", vec![node(2, 1, "..", dir)], vec![]),
        ("a slash", vec![node(2, 1, "a/b", file)], vec![]),
        ("an empty name", vec![node(2, 1, "", file)], vec![]),
        ("the root's id", vec![node(1, 1, "a", dir)], vec![]),
        ("an id past next", vec![node(500, 1, "a", file)], vec![]),
        (
            "twice",
            vec![node(2, 1, "a", file), node(2, 1, "b", file)],
            vec![],
        ),
        (
            "a handle of no node",
            vec![node(2, 1, "a", file)],
            vec![handle(7)],
        ),
    ];
    for (what, nodes, handles) in cases {
        let e = VirtioDevice::restore(&mut device(share.path()), &state_with(nodes, handles))
            .unwrap_err();
        assert!(
            matches!(e, DeviceRestoreError::Fs(FsRestoreError::Table { .. })),
            "{what}: {e}"
        );
    }
    // More nodes than the bound.
    let many = (2..DEFAULT_MAX_INODES as u64 + 2)
        .map(|i| node(i, 1, "n", file))
        .collect();
    let mut state = state_with(many, vec![]);
    if let DeviceState::Fs(s) = &mut state {
        s.next_node = u64::MAX;
    }
    let e = VirtioDevice::restore(&mut device(share.path()), &state).unwrap_err();
    assert!(e.to_string().contains("more than the bound"), "{e}");
}
