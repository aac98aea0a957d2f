//! Hostile layers that try to exhaust the host rather than escape it:
//! decompression and sparse bombs, floods of tiny files, hard links and
//! opaque markers. Each must either be refused with an error that names the
//! cap it hit, or be built with bounded disk, memory and work (holes stay
//! holes in the spool and in the image).

// A test binary: a helper that cannot do its job panics, which fails the
// test that called it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::fs;
use std::os::unix::fs::MetadataExt;

use common::*;
use supermachine_rootfs::{erofs, At, Cap, Compression, Error, Limits};

const GIB: u64 = 1 << 30;

/// A tar holding one GNU sparse file of `real` bytes with a little data at
/// its start and in its middle.
fn sparse_layer(real: u64) -> Vec<u8> {
    let member = gnu_sparse(
        "disk.img",
        real,
        &[(0, vec![b'a'; 4096]), (real / 2, vec![b'b'; 100])],
    );
    let mut t = Tar::new();
    t.raw_member(&member);
    t.finish()
}

fn limit_hit(e: &Error) -> Option<(Cap, u64)> {
    match e {
        Error::LimitExceeded { cap, limit, .. } => Some((*cap, *limit)),
        _ => None,
    }
}

/// An 8 GiB sparse file from a layer of a few hundred bytes: before, every
/// zero was read, and written into the image.
#[test]
fn sparse_bomb_stays_sparse_in_spool_and_image() {
    let layer = gzip(&sparse_layer(8 * GIB));
    assert!(layer.len() < 1000, "{} bytes", layer.len());
    let tree = apply(&[layer]).unwrap();
    assert!(tree.spool_bytes() <= 8192, "spool {}", tree.spool_bytes());
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("img");
    let stats = erofs::write(&tree, &img).unwrap();
    let md = fs::metadata(&img).unwrap();
    assert!(md.len() < 4 << 20, "image is {} bytes", md.len());
    assert!(
        md.blocks() * 512 < 4 << 20,
        "image allocates {}",
        md.blocks()
    );
    assert!(stats.data_bytes < 1 << 20, "{stats:?}");
    assert_eq!(dump_layout(&img, "/disk.img"), (4, 8 * GIB));
}

/// Holes read back as zeros and data where it was, through fsck and the
/// kernel, for sparse members and for zero-filled files alike.
#[test]
fn holes_read_back_as_zeros() {
    let real = 40 << 20;
    let chunks: Vec<(u64, Vec<u8>)> = (0..30u64)
        .map(|i| (i * 1_300_001, vec![i as u8 + 1; 1000 + i as usize * 700]))
        .collect();
    let mut t = Tar::new();
    t.raw_member(&gnu_sparse("sparse", real, &chunks));
    let mut zeros = vec![0u8; 3 << 20];
    zeros[2 << 20] = 7;
    t.file("mostly-zeros", &zeros, &H::default())
        .file("all-zeros", &vec![0u8; 1 << 20], &H::default())
        .file(
            "tail-hole",
            &[vec![9u8; 5000], vec![0u8; 20000]].concat(),
            &H::default(),
        );
    let tree = apply(&[gzip(&t.finish())]).unwrap();
    let m = by_path(&tree.listing().unwrap());
    let mut dense = vec![0u8; real as usize];
    for (off, d) in &chunks {
        dense[*off as usize..*off as usize + d.len()].copy_from_slice(d);
    }
    assert_eq!(m["/sparse"].sha256.as_deref(), Some(sha(&dense).as_str()));
    assert_eq!(
        m["/mostly-zeros"].sha256.as_deref(),
        Some(sha(&zeros).as_str())
    );
    let checked = check_all(&tree);
    assert_eq!(dump_layout(&checked.img, "/sparse").0, 4);
    assert_eq!(dump_layout(&checked.img, "/all-zeros"), (4, 1 << 20));
    assert!(fs::metadata(&checked.img).unwrap().len() < 2 << 20);
}

/// A sparse member claiming 2^62 bytes: refused at its header by the
/// unpacked-size cap (it used to spin a core forever writing zeros).
#[test]
fn huge_sparse_claim_is_refused_by_the_unpacked_cap() {
    let e = apply(&[sparse_layer(1 << 62)]).unwrap_err();
    assert_eq!(
        limit_hit(&e),
        Some((Cap::UnpackedBytes, Limits::default().max_unpacked_bytes)),
        "{e}"
    );
    let msg = e.to_string();
    assert!(
        msg.contains("max_unpacked_bytes") && msg.contains("SUPERMACHINE_IMAGE_MAX_UNPACKED"),
        "{msg}"
    );
    assert!(msg.contains("entry 'disk.img'"), "{msg}");
}

/// 256 MiB of zeros gzipped to a few hundred KiB: refused by a 64 MiB cap
/// part-way (the work stops at the cap), built small under the default.
#[test]
fn gzip_bomb_hits_the_unpacked_cap_or_stays_small() {
    let mut t = Tar::new();
    t.file("zeros", &vec![0u8; 256 << 20], &H::default());
    let layer = gzip(&t.finish());
    assert!(layer.len() < 2 << 20);
    let small = Limits {
        max_unpacked_bytes: 64 << 20,
        ..Limits::default()
    };
    let mut tree = tree_with(small.clone());
    let e = tree
        .apply_layer(0, &layer[..], Compression::Auto)
        .unwrap_err();
    assert_eq!(limit_hit(&e), Some((Cap::UnpackedBytes, 64 << 20)), "{e}");

    // The cap counts all layers: two of 40 MiB do not fit in 64 MiB.
    let mut t = Tar::new();
    t.file("a", &vec![1u8; 40 << 20], &H::default());
    let forty = gzip(&t.finish());
    let mut tree = tree_with(small.clone());
    tree.apply_layer(0, &forty[..], Compression::Auto).unwrap();
    let e = tree
        .apply_layer(1, &forty[..], Compression::Auto)
        .unwrap_err();
    assert_eq!(limit_hit(&e), Some((Cap::UnpackedBytes, 64 << 20)), "{e}");

    // Zeros after the end-of-archive marker count too (they are read, to
    // check the gzip trailer).
    let mut trailer = Tar::new().finish();
    trailer.resize(256 << 20, 0);
    let mut tree = tree_with(small);
    let e = tree
        .apply_layer(0, &gzip(&trailer)[..], Compression::Auto)
        .unwrap_err();
    assert!(
        matches!(
            e,
            Error::LimitExceeded {
                at: At::Trailer,
                cap: Cap::UnpackedBytes,
                ..
            }
        ),
        "{e}"
    );

    // Under the default caps it builds, and the zeros cost nothing.
    let tree = apply(&[layer]).unwrap();
    assert_eq!(tree.spool_bytes(), 0);
    let dir = tempfile::tempdir().unwrap();
    let stats = erofs::write(&tree, &dir.path().join("img")).unwrap();
    assert!(stats.bytes < 1 << 20, "{stats:?}");
}

/// Real data beyond the spool cap is refused, naming the cap.
#[test]
fn spool_cap_bounds_the_scratch_disk() {
    let mut t = Tar::new();
    t.file("a", &vec![1u8; 3 << 20], &H::default())
        .file("b", &vec![2u8; 3 << 20], &H::default());
    let mut tree = tree_with(Limits {
        max_spool_bytes: 4 << 20,
        ..Limits::default()
    });
    let e = tree
        .apply_layer(0, &gzip(&t.finish())[..], Compression::Auto)
        .unwrap_err();
    assert_eq!(limit_hit(&e), Some((Cap::SpoolBytes, 4 << 20)), "{e}");
    assert!(e.to_string().contains("entry 'b'"), "{e}");
    assert!(
        e.to_string().contains("SUPERMACHINE_IMAGE_MAX_SPOOL"),
        "{e}"
    );
}

/// Tiny files are packed in the spool: 20 000 one-byte files used to take a
/// 4 KiB block each (80 MB; 4 million took 17.5 GB).
#[test]
fn tiny_files_are_packed_in_the_spool() {
    let mut t = Tar::new();
    for i in 0..20_000 {
        t.file(&format!("d{}/f{i}", i % 100), b"x", &H::default());
    }
    let tree = apply(&[gzip(&t.finish())]).unwrap();
    assert_eq!(tree.spool_bytes(), 20_000);
    let listing = tree.listing().unwrap();
    assert_eq!(listing.len(), 1 + 100 + 20_000);
    assert!(listing
        .iter()
        .filter(|e| e.size == 1)
        .all(|e| e.sha256.as_deref() == Some(sha(b"x").as_str())));
}

/// Hard links are names: a flood of them hits the inode cap (42 million of
/// them used to pass 4 GiB of memory).
#[test]
fn hard_link_flood_hits_the_inode_cap() {
    let mut t = Tar::new();
    t.file("f", b"x", &H::default());
    for i in 0..5000 {
        t.hardlink(&format!("l{i}"), "f");
    }
    let mut tree = tree_with(Limits {
        max_inodes: 1000,
        ..Limits::default()
    });
    let e = tree
        .apply_layer(0, &gzip(&t.finish())[..], Compression::Auto)
        .unwrap_err();
    assert_eq!(limit_hit(&e), Some((Cap::Inodes, 1000)), "{e}");
    assert!(
        e.to_string().contains("SUPERMACHINE_IMAGE_MAX_INODES"),
        "{e}"
    );
}

/// Thousands of root opaque markers interleaved with files, and thousands
/// of records of one xattr name: both used to be quadratic. They complete,
/// with the right result (the benchmark shows the growth is linear).
#[test]
fn opaque_marker_and_xattr_floods_complete_correctly() {
    let mut lower = Tar::new();
    lower.file("old", b"o", &H::default());
    let mut t = Tar::new();
    for i in 0..5000 {
        t.file(&format!("d/f{i}"), b"n", &H::default())
            .file(".wh..wh..opq", b"", &H::default())
            .file("d/.wh..wh..opq", b"", &H::default());
    }
    let records: Vec<(String, Vec<u8>)> = (0..20_000u32)
        .map(|i| ("SCHILY.xattr.user.k".to_string(), i.to_be_bytes().to_vec()))
        .collect();
    let refs: Vec<(&str, &[u8])> = records.iter().map(|(k, v)| (k.as_str(), &v[..])).collect();
    t.pax(&refs).file("x", b"", &H::default());
    let tree = apply(&[lower.finish(), gzip(&t.finish())]).unwrap();
    let m = by_path(&tree.listing().unwrap());
    assert!(!m.contains_key("/old"));
    assert_eq!(m.keys().filter(|k| k.starts_with("/d/")).count(), 5000);
    assert_eq!(
        m["/x"].xattrs,
        [(b"user.k".to_vec(), 19_999u32.to_be_bytes().to_vec())],
        "the last record of a name wins"
    );
}
