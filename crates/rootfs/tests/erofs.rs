//! The EROFS writer against independent readers, on a realistic tree:
//! multi-block directories, every size around the block boundary, long
//! symlinks, xattrs larger than a block, mixed compact/extended inodes,
//! deterministic output and atomic replacement.

// A test binary: a helper that cannot do its job panics, which fails the
// test that called it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::process::Command;

use common::*;
use supermachine_rootfs::{erofs, Compression, Tree};

/// Deterministic pseudo-random bytes.
fn noise(seed: u64, len: usize) -> Vec<u8> {
    let mut s = seed | 1;
    (0..len)
        .map(|_| {
            s ^= s << 13;
            s ^= s >> 7;
            s ^= s << 17;
            (s >> 24) as u8
        })
        .collect()
}

fn realistic_layers() -> Vec<Vec<u8>> {
    let mut base = Tar::new();
    base.dir(
        "./",
        &H {
            mode: 0o755,
            ..H::default()
        },
    );
    // A directory spanning several blocks, names of varied lengths,
    // including names sorting before "." and non-UTF-8 bytes.
    base.dir("big/", &H::default());
    for i in 0..1500u32 {
        let name = format!("big/e{i:05}{}", "x".repeat((i as usize * 7) % 60));
        let h = H {
            mode: 0o644,
            uid: u64::from(i % 3) * 1000,
            gid: 0,
            mtime: if i % 5 == 0 {
                1_600_000_000 + u64::from(i)
            } else {
                1_600_000_000
            },
            ..H::default()
        };
        base.file(&name, &noise(u64::from(i), (i as usize * 13) % 700), &h);
    }
    for name in ["!bang", "-dash", "+plus", ".hidden", "..dots", "~tilde"] {
        base.file(&format!("sorting/{name}"), name.as_bytes(), &H::default());
    }
    base.raw(
        b"sorting/bin\xff\xfe",
        b'0',
        b"not utf-8",
        b"",
        &H::default(),
    );
    // Sizes around the block size, and a few MiB.
    for (i, size) in [
        0usize,
        1,
        4095,
        4096,
        4097,
        8191,
        8192,
        8193,
        3 * 1024 * 1024 + 7,
    ]
    .into_iter()
    .enumerate()
    {
        base.file(
            &format!("sizes/s{size}"),
            &noise(100 + i as u64, size),
            &H::default(),
        );
    }
    base.file("sizes/zeros", &vec![0u8; 1 << 20], &H::default());
    // Nested directories with files, some owned by high ids.
    for d in 0..40u64 {
        for f in 0..40u64 {
            let h = H {
                mode: 0o600 + (f as u32 % 2) * 0o155,
                uid: if f == 7 { 70_000 } else { d },
                gid: if f == 8 { 80_000 } else { 0 },
                mtime: 1_600_000_000,
                ..H::default()
            };
            base.file(
                &format!("tree/d{d}/sub/f{f}"),
                &noise(d * 1000 + f, (f * 97) as usize),
                &h,
            );
        }
    }
    base.symlink("links/short", "target")
        .symlink("links/mid", &"m".repeat(300))
        .symlink("links/inline-max", &"i".repeat(4000))
        .symlink("links/block", &"b".repeat(4095));
    let big_value = noise(7, 3000);
    base.pax(&[
        ("SCHILY.xattr.user.a", &big_value),
        ("SCHILY.xattr.user.b", &big_value),
        ("SCHILY.xattr.user.c", &big_value),
    ])
    .file("xattrs/huge", &noise(8, 5000), &H::default());
    base.pax(&[("SCHILY.xattr.trusted.t", b"dir")]).dir(
        "xattrs/dir/",
        &H {
            mode: 0o711,
            ..H::default()
        },
    );
    base.file("links/hard-src", b"shared", &H::default())
        .hardlink("links/hard-1", "links/hard-src")
        .hardlink("big/hard-2", "links/hard-src");

    let mut top = Tar::new();
    top.file("big/.wh.e00003", b"", &H::default())
        .file("tree/d3/.wh..wh..opq", b"", &H::default())
        .file("tree/d3/new", b"new", &H::default())
        .file("sizes/s4096", &noise(999, 4096), &H::default());
    vec![gzip(&base.finish()), zstd(&top.finish())]
}

fn build(layers: &[Vec<u8>]) -> Tree {
    let mut t = Tree::new().unwrap();
    for (i, l) in layers.iter().enumerate() {
        t.apply_layer(i, &l[..], Compression::Auto).unwrap();
    }
    t
}

#[test]
fn realistic_tree_round_trips_through_fsck_and_kernel() {
    let layers = realistic_layers();
    let tree = build(&layers);
    let listing = tree.listing().unwrap();
    assert!(listing.len() > 3000, "{} paths", listing.len());
    let checked = check_all(&tree);
    // The multi-block directory, its link count and a hard link.
    let (_, _, links, _) = dump_inode(&checked.img, "/big");
    assert_eq!(links, 2);
    assert_eq!(dump_inode(&checked.img, "/big/hard-2").2, 3);
    assert_eq!(dump_inode(&checked.img, "/tree/d1/sub/f7").0, 70_000);
    assert_eq!(dump_inode(&checked.img, "/tree/d1/sub/f8").1, 80_000);
    assert!(dump_inode(&checked.img, "/xattrs/huge").3 > 9000);
    let out = Command::new(find_tool("dump.erofs"))
        .arg("-s")
        .arg(&checked.img)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let count: u64 = text
        .lines()
        .find(|l| l.contains("inode count:"))
        .and_then(|l| l.split_whitespace().last())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no inode count in dump.erofs -s output:\n{text}"));
    assert_eq!(count, tree.inodes());
}

#[test]
fn output_is_deterministic_and_stats_add_up() {
    let layers = realistic_layers();
    let dir = tempfile::tempdir().unwrap();
    let a = dir.path().join("a.erofs");
    let b = dir.path().join("b.erofs");
    let tree = build(&layers);
    let sa = erofs::write(&tree, &a).unwrap();
    // A second tree from the same layers gives the same bytes too.
    let sb = erofs::write(&build(&layers), &b).unwrap();
    assert_eq!(sa, sb);
    assert!(
        fs::read(&a).unwrap() == fs::read(&b).unwrap(),
        "images differ"
    );
    let len = fs::metadata(&a).unwrap().len();
    assert_eq!(sa.bytes, len);
    assert_eq!(len % 4096, 0);
    assert_eq!(sa.inodes, tree.inodes());
    let file_bytes: u64 = tree
        .listing()
        .unwrap()
        .iter()
        .filter(|e| e.sha256.is_some() && e.nlink == 1)
        .map(|e| e.size)
        .sum::<u64>()
        + 6 // the three-name hard-linked file, stored once
        - (1 << 20); // /sizes/zeros is all hole: no data stored
    assert_eq!(sa.data_bytes, file_bytes);
    // Only the two images are left in the directory: no temporary files.
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 2);
}

#[test]
fn writes_replace_atomically_and_failures_leave_nothing() {
    let mut t = Tar::new();
    t.file("a", b"a", &H::default());
    let tree = build(&[t.finish()]);
    let dir = tempfile::tempdir().unwrap();
    let dest = dir.path().join("img");
    fs::write(&dest, b"old contents").unwrap();
    erofs::write(&tree, &dest).unwrap();
    assert_eq!(
        &fs::read(&dest).unwrap()[1024..1028],
        &0xE0F5E1E2u32.to_le_bytes()
    );
    assert_eq!(fs::read_dir(dir.path()).unwrap().count(), 1);

    let missing = dir.path().join("no/such/dir/img");
    let e = erofs::write(&tree, &missing).unwrap_err();
    assert!(e.to_string().contains("no/such/dir/img"), "{e}");
    assert!(!missing.exists());
}

/// The host's /usr/bin and /etc as one layer (GNU tar output), through the
/// image and back. Large, so opt-in: `cargo test -- --ignored`.
#[test]
#[ignore]
fn host_usr_bin_and_etc_round_trip() {
    let out = Command::new("tar")
        .args([
            "-C",
            "/",
            "--numeric-owner",
            "--xattrs",
            "-cf",
            "-",
            "usr/bin",
            "etc",
        ])
        .stderr(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.stdout.is_empty());
    let tree = build(&[out.stdout]);
    assert!(tree.inodes() > 1000);
    check_all(&tree);
}
