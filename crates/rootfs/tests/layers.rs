//! Layer semantics: what the merged tree contains after well-formed but
//! tricky layers, checked in the tree listing and, through an EROFS image,
//! by fsck.erofs (and the kernel when it can be mounted here).

// A test binary: a helper that cannot do its job panics, which fails the
// test that called it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use common::*;
use supermachine_rootfs::{Compression, Error, FileKind, Tree};

fn h(mode: u32, uid: u64, gid: u64, mtime: u64) -> H {
    H {
        mode,
        uid,
        gid,
        mtime,
        ..H::default()
    }
}

fn get<'a>(
    m: &'a std::collections::BTreeMap<String, supermachine_rootfs::ListingEntry>,
    p: &str,
) -> &'a supermachine_rootfs::ListingEntry {
    m.get(p)
        .unwrap_or_else(|| panic!("{p} missing from listing"))
}

#[test]
fn types_ownership_modes_and_times_survive() {
    let mut t = Tar::new();
    t.dir("./", &h(0o755, 0, 0, 1_500_000_000))
        .dir("home/", &h(0o755, 0, 0, 1_600_000_000))
        .dir("home/u/", &h(0o700, 1000, 1000, 1_600_000_001))
        .file(
            "home/u/f",
            b"user file",
            &h(0o640, 1000, 1000, 1_600_000_002),
        )
        .file("home/u/big-ids", b"x", &h(0o600, 100_000, 200_000, 5))
        .file("usr/bin/su", b"\x7fELF", &h(0o4755, 0, 0, 1_600_000_000))
        .dir("tmp/", &h(0o1777, 0, 0, 1_600_000_000))
        .symlink("home/u/link", "../../usr/bin/su")
        .symlink("abs", "/etc/nonexistent");
    t.raw(
        b"dev/null",
        b'3',
        b"",
        b"",
        &H {
            mode: 0o666,
            major: 1,
            minor: 3,
            ..H::default()
        },
    )
    .raw(
        b"dev/sda",
        b'4',
        b"",
        b"",
        &H {
            mode: 0o660,
            uid: 0,
            gid: 6,
            major: 8,
            minor: 0,
            ..H::default()
        },
    )
    .raw(
        b"dev/big",
        b'3',
        b"",
        b"",
        &H {
            major: 300,
            minor: 70000,
            ..H::default()
        },
    )
    .raw(b"run/fifo", b'6', b"", b"", &h(0o600, 7, 7, 9));
    let tree = apply(&[t.finish()]).unwrap();
    let l = tree.listing().unwrap();
    let m = by_path(&l);
    let e = get(&m, "/");
    assert_eq!((e.mode, e.mtime), (0o755, 1_500_000_000));
    let e = get(&m, "/home/u");
    assert_eq!(
        (e.kind, e.mode, e.uid, e.gid),
        (FileKind::Dir, 0o700, 1000, 1000)
    );
    let e = get(&m, "/home/u/f");
    assert_eq!(
        (e.mode, e.uid, e.mtime, e.size),
        (0o640, 1000, 1_600_000_002, 9)
    );
    assert_eq!(e.sha256.as_deref(), Some(sha(b"user file").as_str()));
    let e = get(&m, "/home/u/big-ids");
    assert_eq!((e.uid, e.gid), (100_000, 200_000));
    assert_eq!(get(&m, "/usr/bin/su").mode, 0o4755);
    assert_eq!(get(&m, "/tmp").mode, 0o1777);
    let e = get(&m, "/home/u/link");
    assert_eq!(e.target.as_deref(), Some(&b"../../usr/bin/su"[..]));
    assert_eq!(e.kind, FileKind::Symlink);
    let e = get(&m, "/dev/null");
    assert_eq!(
        (e.kind, e.rdev, e.mode),
        (FileKind::CharDev, Some((1, 3)), 0o666)
    );
    let e = get(&m, "/dev/sda");
    assert_eq!(
        (e.kind, e.rdev, e.gid),
        (FileKind::BlockDev, Some((8, 0)), 6)
    );
    assert_eq!(get(&m, "/dev/big").rdev, Some((300, 70000)));
    assert_eq!(get(&m, "/run/fifo").kind, FileKind::Fifo);
    // Parents that only exist implicitly: 0755 root, time 0.
    let e = get(&m, "/usr/bin");
    assert_eq!((e.mode, e.uid, e.mtime), (0o755, 0, 0));
    // The root has 2 + 6 subdirectories (dev home run tmp usr + none else).
    assert_eq!(get(&m, "/").nlink, 2 + 5);

    let checked = check_all(&tree);
    assert_eq!(dump_inode(&checked.img, "/home/u/big-ids").0, 100_000);
    assert_eq!(dump_inode(&checked.img, "/home/u/big-ids").1, 200_000);
    assert_eq!(dump_inode(&checked.img, "/home/u").2, 2);
}

#[test]
fn whiteouts_remove_lower_paths_and_missing_ones_are_ignored() {
    let mut l0 = Tar::new();
    l0.file("etc/passwd", b"root", &H::default())
        .file("etc/motd", b"hi", &H::default())
        .file("a/b/c", b"deep", &H::default())
        .file("keep", b"k", &H::default());
    let mut l1 = Tar::new();
    l1.file("etc/.wh.motd", b"", &H::default())
        .file(".wh.a", b"", &H::default())
        .file(".wh.never-existed", b"", &H::default())
        .file("nodir/.wh.x", b"", &H::default())
        .file("keep/.wh.x", b"", &H::default())
        .file(".wh..wh.plnk", b"", &H::default());
    let tree = apply(&[l0.finish(), l1.finish()]).unwrap();
    let m = by_path(&tree.listing().unwrap());
    assert!(m.contains_key("/etc/passwd"));
    assert!(!m.contains_key("/etc/motd"));
    assert!(!m.contains_key("/a"));
    assert!(!m.contains_key("/a/b/c"));
    assert!(
        !m.contains_key("/nodir"),
        "whiteouts must not create parents"
    );
    assert!(m.keys().all(|k| !k.contains(".wh.")));
    assert_eq!(get(&m, "/keep").kind, FileKind::File);
    check_all(&tree);
}

#[test]
fn opaque_directory_hides_lower_content_but_keeps_its_own_layer() {
    let mut l0 = Tar::new();
    l0.dir("d/", &h(0o755, 0, 0, 1))
        .file("d/lower", b"l", &H::default())
        .file("d/sub/lower2", b"l2", &H::default())
        .file("d/gone/x", b"x", &H::default())
        .file("other/stays", b"s", &H::default());
    let mut l1 = Tar::new();
    l1.dir("d/", &h(0o750, 0, 0, 2))
        .file("d/early", b"before the marker", &H::default())
        .file("d/.wh..wh..opq", b"", &H::default())
        .file("d/late", b"after the marker", &H::default())
        .file("d/sub/new", b"n", &H::default());
    let tree = apply(&[l0.finish(), l1.finish()]).unwrap();
    let m = by_path(&tree.listing().unwrap());
    for p in ["/d/lower", "/d/sub/lower2", "/d/gone", "/d/gone/x"] {
        assert!(
            !m.contains_key(p),
            "{p} should be hidden by the opaque marker"
        );
    }
    for p in ["/d/early", "/d/late", "/d/sub/new", "/other/stays"] {
        assert!(m.contains_key(p), "{p} should exist");
    }
    assert_eq!(get(&m, "/d").mode, 0o750);
    check_all(&tree);
}

#[test]
fn hard_links_within_a_layer_share_one_inode() {
    let mut t = Tar::new();
    t.file("bin/busybox", b"multi-call binary", &h(0o755, 0, 0, 7))
        .hardlink("bin/sh", "bin/busybox")
        .hardlink("bin/ls", "./bin/busybox")
        .hardlink("sbin/init", "/bin/busybox");
    let tree = apply(&[t.finish()]).unwrap();
    assert_eq!(tree.inodes(), 1 + 2 + 1);
    let m = by_path(&tree.listing().unwrap());
    for p in ["/bin/busybox", "/bin/sh", "/bin/ls", "/sbin/init"] {
        let e = get(&m, p);
        assert_eq!(e.nlink, 4, "{p}");
        assert_eq!(e.mode, 0o755);
        assert_eq!(
            e.sha256.as_deref(),
            Some(sha(b"multi-call binary").as_str())
        );
    }
    let checked = check_all(&tree);
    assert_eq!(dump_inode(&checked.img, "/sbin/init").2, 4);
}

#[test]
fn hard_links_across_layers_and_later_replacement() {
    let mut l0 = Tar::new();
    l0.file("usr/lib/libx.so.1", b"version one", &h(0o644, 0, 0, 3))
        .symlink("usr/lib/sym", "libx.so.1");
    let mut l1 = Tar::new();
    l1.hardlink("usr/lib/libx-copy", "usr/lib/libx.so.1")
        .hardlink("usr/lib/sym-hard", "usr/lib/sym");
    let mut l2 = Tar::new();
    l2.file("usr/lib/libx.so.1", b"version two", &H::default());
    let l0 = l0.finish();
    let l1 = l1.finish();
    let tree = apply(&[l0.clone(), l1.clone()]).unwrap();
    let m = by_path(&tree.listing().unwrap());
    assert_eq!(get(&m, "/usr/lib/libx-copy").nlink, 2);
    assert_eq!(get(&m, "/usr/lib/sym-hard").kind, FileKind::Symlink);
    assert_eq!(get(&m, "/usr/lib/sym-hard").nlink, 2);
    let checked = check_all(&tree);
    assert_eq!(dump_inode(&checked.img, "/usr/lib/libx-copy").2, 2);

    let tree = apply(&[l0, l1, l2.finish()]).unwrap();
    let m = by_path(&tree.listing().unwrap());
    let copy = get(&m, "/usr/lib/libx-copy");
    let new = get(&m, "/usr/lib/libx.so.1");
    assert_eq!(copy.sha256.as_deref(), Some(sha(b"version one").as_str()));
    assert_eq!(new.sha256.as_deref(), Some(sha(b"version two").as_str()));
    assert_eq!((copy.nlink, new.nlink), (1, 1));
    check_all(&tree);
}

fn acl_access() -> Vec<u8> {
    // posix_acl_xattr_header (version 2) + entries {tag u16, perm u16, id u32}.
    let mut v = 2u32.to_le_bytes().to_vec();
    for (tag, perm, id) in [
        (1u16, 6u16, u32::MAX),
        (2, 4, 10),
        (4, 4, u32::MAX),
        (0x10, 4, u32::MAX),
        (0x20, 0, u32::MAX),
    ] {
        v.extend_from_slice(&tag.to_le_bytes());
        v.extend_from_slice(&perm.to_le_bytes());
        v.extend_from_slice(&id.to_le_bytes());
    }
    v
}

#[test]
fn xattrs_from_pax_records() {
    let cap = [
        1u8, 0, 0, 2, 0x20, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
    ];
    let acl = acl_access();
    let mut t = Tar::new();
    t.pax(&[
        ("SCHILY.xattr.user.mime", b"text/plain"),
        ("SCHILY.xattr.security.capability", &cap),
        ("SCHILY.xattr.trusted.overlay.x", b"y"),
        ("SCHILY.xattr.system.posix_acl_access", &acl),
        ("SCHILY.xattr.system.nfs4_acl", b"dropped"),
        ("SCHILY.xattr.user.newline", b"a\nb=c\n"),
    ])
    .file("bin/ping", b"ping", &h(0o755, 0, 0, 1));
    t.pax(&[
        ("SCHILY.xattr.user.empty", b""),
        ("SCHILY.xattr.user.dir", b"d"),
    ])
    .dir("data/", &H::default());
    let mut tree = Tree::new().unwrap();
    let stats = tree
        .apply_layer(0, &t.finish()[..], Compression::None)
        .unwrap();
    assert_eq!(stats.xattrs_dropped, 1);
    let m = by_path(&tree.listing().unwrap());
    let names: Vec<String> = get(&m, "/bin/ping")
        .xattrs
        .iter()
        .map(|(n, _)| String::from_utf8_lossy(n).into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "security.capability",
            "system.posix_acl_access",
            "trusted.overlay.x",
            "user.mime",
            "user.newline"
        ]
    );
    assert_eq!(get(&m, "/data").xattrs.len(), 2);
    let checked = check_all(&tree);
    // 12-byte header + entries (4 + name suffix + value, 4-aligned).
    let entry = |name: usize, value: usize| (4 + name + value).next_multiple_of(4);
    let want = 12 + entry(10, 20) + entry(0, 44) + entry(9, 1) + entry(4, 10) + entry(7, 6);
    assert_eq!(dump_inode(&checked.img, "/bin/ping").3 as usize, want);
}

#[test]
fn pax_ownership_time_and_long_names() {
    let long_dir = "d".repeat(120);
    let long_name = format!("{long_dir}/{}", "f".repeat(200));
    let long_target = "t".repeat(3000);
    let mut t = Tar::new();
    t.pax(&[
        ("uid", b"3000000000"),
        ("gid", b"4000000"),
        ("mtime", b"1700000000.123456789"),
        ("path", long_name.as_bytes()),
    ])
    .file("placeholder", b"long", &H::default());
    t.pax(&[("linkpath", long_target.as_bytes())])
        .symlink("l", "short");
    let mut tree = Tree::new().unwrap();
    tree.apply_layer(0, &t.finish()[..], Compression::Auto)
        .unwrap();

    // GNU long names, written by the tar crate's own builder.
    let mut b = tar::Builder::new(Vec::new());
    let mut hd = tar::Header::new_gnu();
    hd.set_size(3);
    hd.set_mode(0o600);
    hd.set_uid(5);
    hd.set_gid(0);
    hd.set_mtime(0);
    let gnu_name = format!("{}/{}", "g".repeat(150), "n".repeat(140));
    b.append_data(&mut hd, &gnu_name, &b"gnu"[..]).unwrap();
    let mut hl = tar::Header::new_gnu();
    hl.set_entry_type(tar::EntryType::Symlink);
    hl.set_size(0);
    hl.set_mode(0o777);
    hl.set_uid(0);
    hl.set_gid(0);
    hl.set_mtime(0);
    b.append_link(&mut hl, "gnu-link", "x".repeat(500)).unwrap();
    tree.apply_layer(1, &b.into_inner().unwrap()[..], Compression::Auto)
        .unwrap();

    let m = by_path(&tree.listing().unwrap());
    let e = get(&m, &format!("/{long_name}"));
    assert_eq!((e.uid, e.gid), (3_000_000_000, 4_000_000));
    assert_eq!((e.mtime, e.mtime_nsec), (1_700_000_000, 123_456_789));
    assert!(!m.contains_key("/placeholder"));
    assert_eq!(
        get(&m, "/l").target.as_deref(),
        Some(long_target.as_bytes())
    );
    assert_eq!(get(&m, &format!("/{gnu_name}")).uid, 5);
    assert_eq!(get(&m, "/gnu-link").size, 500);
    let checked = check_all(&tree);
    assert_eq!(
        dump_inode(&checked.img, &format!("/{long_name}")).0,
        3_000_000_000
    );
}

#[test]
fn duplicates_later_wins_and_type_changes() {
    let mut l0 = Tar::new();
    l0.file("f", b"first", &H::default())
        .file("f", b"second", &h(0o600, 1, 1, 1))
        .file("d/child", b"c", &H::default())
        .dir("d/", &h(0o700, 0, 0, 2))
        .file("dir-becomes-file/x", b"x", &H::default())
        .file("file-becomes-dir", b"f", &H::default());
    let mut l1 = Tar::new();
    l1.file("dir-becomes-file", b"now a file", &H::default())
        .dir("file-becomes-dir/", &h(0o711, 0, 0, 3))
        .dir("d/", &h(0o755, 2, 2, 4))
        .symlink("f", "d");
    let tree = apply(&[l0.finish(), l1.finish()]).unwrap();
    let m = by_path(&tree.listing().unwrap());
    assert_eq!(get(&m, "/f").kind, FileKind::Symlink);
    let d = get(&m, "/d");
    assert_eq!(
        (d.mode, d.uid),
        (0o755, 2),
        "dir over dir takes new metadata"
    );
    assert!(m.contains_key("/d/child"), "dir over dir keeps children");
    assert_eq!(get(&m, "/dir-becomes-file").kind, FileKind::File);
    assert!(!m.contains_key("/dir-becomes-file/x"));
    assert_eq!(get(&m, "/file-becomes-dir").kind, FileKind::Dir);
    check_all(&tree);

    let mut single = Tar::new();
    single
        .file("f", b"first", &H::default())
        .file("f", b"second", &H::default());
    let m = by_path(&apply(&[single.finish()]).unwrap().listing().unwrap());
    assert_eq!(
        get(&m, "/f").sha256.as_deref(),
        Some(sha(b"second").as_str())
    );
}

/// A GNU old-style sparse member ('S'), built with the tar crate's header
/// structs: the stored data is only the listed chunks, holes read as zeros.
#[test]
fn gnu_sparse_file_holes_become_zeros() {
    let real = 3 * 1024 * 1024 + 5000u64;
    let chunks: [(u64, Vec<u8>); 3] = [
        (0, vec![b'a'; 4096]),
        (1 << 20, vec![b'b'; 512]),
        (real - 10, vec![b'c'; 10]),
    ];
    let stored: usize = chunks.iter().map(|c| c.1.len()).sum();
    let mut hd = tar::Header::new_gnu();
    hd.set_path("sparse.img").unwrap();
    hd.set_entry_type(tar::EntryType::GNUSparse);
    hd.set_mode(0o644);
    hd.set_uid(0);
    hd.set_gid(0);
    hd.set_mtime(0);
    hd.set_size(stored as u64);
    let gnu = hd.as_gnu_mut().unwrap();
    gnu.set_real_size(real);
    for (slot, (off, data)) in gnu.sparse.iter_mut().zip(&chunks) {
        slot.set_offset(*off);
        slot.set_length(data.len() as u64);
    }
    hd.set_cksum();
    let mut bytes = hd.as_bytes().to_vec();
    for (_, d) in &chunks {
        bytes.extend_from_slice(d);
    }
    bytes.resize(bytes.len().next_multiple_of(512) + 1024, 0);

    let tree = apply(&[gzip(&bytes)]).unwrap();
    let mut dense = vec![0u8; real as usize];
    for (off, d) in &chunks {
        dense[*off as usize..*off as usize + d.len()].copy_from_slice(d);
    }
    let m = by_path(&tree.listing().unwrap());
    let e = get(&m, "/sparse.img");
    assert_eq!(e.size, real);
    assert_eq!(e.sha256.as_deref(), Some(sha(&dense).as_str()));
    check_all(&tree);
}

#[test]
fn empty_layers_zstd_and_multi_member_gzip() {
    // A zero-byte blob and an empty tar are both "no change".
    let mut tree = Tree::new().unwrap();
    let s = tree.apply_layer(0, &b""[..], Compression::Gzip).unwrap();
    assert_eq!(s.entries, 0);
    tree.apply_layer(1, &[0u8; 1024][..], Compression::None)
        .unwrap();
    tree.apply_layer(2, &gzip(&Tar::new().finish())[..], Compression::Auto)
        .unwrap();
    assert_eq!(tree.listing().unwrap().len(), 1);
    check_all(&tree);

    let mut a = Tar::new();
    a.file("z/file", b"zstd content", &H::default());
    let mut b = Tar::new();
    b.file("g/one", b"1", &H::default());
    let mut c = Tar::new();
    c.file("g/two", b"2", &H::default());
    // Two gzip members concatenated, split between tar members.
    let mut multi = gzip(&b.bytes);
    multi.extend(gzip(&c.finish()));
    let mut tree = Tree::new().unwrap();
    tree.apply_layer(0, &zstd(&a.finish())[..], Compression::Zstd)
        .unwrap();
    tree.apply_layer(1, &multi[..], Compression::Gzip).unwrap();
    let m = by_path(&tree.listing().unwrap());
    assert!(m.contains_key("/z/file") && m.contains_key("/g/one") && m.contains_key("/g/two"));
    check_all(&tree);
}

#[test]
fn declared_compression_must_match() {
    let plain = {
        let mut t = Tar::new();
        t.file("a", b"a", &H::default());
        t.finish()
    };
    let mut tree = Tree::new().unwrap();
    let e = tree
        .apply_layer(4, &plain[..], Compression::Gzip)
        .unwrap_err();
    assert!(
        matches!(e, Error::CompressionMismatch { layer: 4, .. }),
        "{e}"
    );
    let mut tree = Tree::new().unwrap();
    let e = tree
        .apply_layer(0, &gzip(&plain)[..], Compression::Zstd)
        .unwrap_err();
    assert!(matches!(e, Error::CompressionMismatch { .. }), "{e}");
    let mut tree = Tree::new().unwrap();
    let xz = [0xfd, b'7', b'z', b'X', b'Z', 0, 1, 2];
    let e = tree.apply_layer(0, &xz[..], Compression::Auto).unwrap_err();
    assert!(
        matches!(e, Error::UnsupportedCompression { format: "xz", .. }),
        "{e}"
    );
}

#[test]
fn progress_hook_sees_every_entry() {
    let mut t = Tar::new();
    for i in 0..10 {
        t.file(&format!("f{i}"), &[b'x'; 100], &H::default());
    }
    let seen = Arc::new(AtomicU64::new(0));
    let bytes = Arc::new(AtomicU64::new(0));
    let mut tree = Tree::new().unwrap();
    let (s2, b2) = (seen.clone(), bytes.clone());
    tree.set_progress_hook(move |p| {
        s2.store(p.entries, Ordering::Relaxed);
        b2.store(p.file_bytes, Ordering::Relaxed);
    });
    let data = gzip(&t.finish());
    let stats = tree.apply_layer(0, &data[..], Compression::Auto).unwrap();
    assert_eq!(seen.load(Ordering::Relaxed), 10);
    assert_eq!(bytes.load(Ordering::Relaxed), 1000);
    assert_eq!(stats.input_bytes, data.len() as u64);
    assert_eq!(stats.file_bytes, 1000);
}

/// Like Go's archive/tar (and so Docker): links, devices, directories and
/// fifos have no data even when their size field says otherwise, and a
/// typeflag of NUL with a trailing slash is a directory.
#[test]
fn header_only_types_and_old_style_members() {
    let mut t = Tar::new();
    t.bytes
        .extend_from_slice(&raw_header(b"s", b'2', 700, b"target", &H::default()));
    t.raw(b"after", b'0', b"data", b"", &H::default())
        .raw(b"olddir/", 0, b"", b"", &H::default())
        .raw(b"oldfile", 0, b"v7", b"", &H::default());
    let m = by_path(&apply(&[t.finish()]).unwrap().listing().unwrap());
    assert_eq!(get(&m, "/s").target.as_deref(), Some(&b"target"[..]));
    assert_eq!(
        get(&m, "/after").sha256.as_deref(),
        Some(sha(b"data").as_str())
    );
    assert_eq!(get(&m, "/olddir").kind, FileKind::Dir);
    assert_eq!(get(&m, "/oldfile").kind, FileKind::File);
}

#[test]
fn tree_can_move_to_a_blocking_thread() {
    fn assert_send<T: Send>() {}
    assert_send::<Tree>();
    assert_send::<supermachine_rootfs::Error>();
}
