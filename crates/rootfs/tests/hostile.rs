//! Hostile and broken layers: every one must be refused with a typed error
//! that names the layer and the entry, and nothing may panic.

// A test binary: a helper that cannot do its job panics, which fails the
// test that called it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use supermachine_rootfs::{erofs, At, Compression, Error, Limits, Tree, TreeOptions, UnsafeReason};

fn unsafe_reason(e: &Error) -> Option<(usize, &str, UnsafeReason)> {
    match e {
        Error::Unsafe {
            layer,
            path,
            reason,
        } => Some((*layer, path.as_str(), *reason)),
        _ => None,
    }
}

fn one(t: &mut Tar) -> Vec<u8> {
    t.finish()
}

#[test]
fn path_traversal_variants_are_rejected_naming_the_entry() {
    for name in [
        "../x",
        "a/../../x",
        "/../x",
        "./../x",
        "..",
        "a/b/../../../etc/passwd",
    ] {
        let mut t = Tar::new();
        t.file("ok", b"fine", &H::default()).raw(
            name.as_bytes(),
            b'0',
            b"evil",
            b"",
            &H::default(),
        );
        let mut tree = Tree::new().unwrap();
        tree.apply_layer(0, &b""[..], Compression::Auto).unwrap();
        let e = tree
            .apply_layer(1, &gzip(&t.finish())[..], Compression::Auto)
            .unwrap_err();
        assert_eq!(
            unsafe_reason(&e),
            Some((1, name, UnsafeReason::PathEscapesRoot)),
            "{name}: {e}"
        );
        assert!(e.to_string().contains(name), "message names the entry: {e}");
        // The half-applied tree refuses further use.
        assert!(matches!(tree.listing(), Err(Error::Poisoned { layer: 1 })));
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("img");
        assert!(matches!(
            erofs::write(&tree, &dest),
            Err(Error::Poisoned { .. })
        ));
        assert!(!dest.exists());
    }
}

#[test]
fn dotdot_inside_the_root_and_absolute_paths_are_normalized() {
    let mut t = Tar::new();
    t.raw(b"/etc/hostname", b'0', b"box", b"", &H::default())
        .raw(b"a/../b/./c", b'0', b"c", b"", &H::default())
        .raw(b"//usr///lib/", b'5', b"", b"", &H::default());
    let tree = apply(&[one(&mut t)]).unwrap();
    let m = by_path(&tree.listing().unwrap());
    assert!(m.contains_key("/etc/hostname"));
    assert!(m.contains_key("/b/c"));
    assert!(!m.contains_key("/a"));
    assert!(m.contains_key("/usr/lib"));
}

#[test]
fn hard_link_targets_outside_the_root_are_rejected() {
    for target in ["../../etc/passwd", "a/../../etc/shadow", "/../etc/passwd"] {
        let mut t = Tar::new();
        t.file("a/f", b"f", &H::default()).hardlink("x", target);
        let e = apply(&[one(&mut t)]).unwrap_err();
        assert_eq!(
            unsafe_reason(&e),
            Some((0, "x", UnsafeReason::LinkTargetEscapesRoot)),
            "{target}: {e}"
        );
    }
    // An absolute target means the image's own /etc/passwd, which is fine
    // if it exists and an error if not.
    let mut t = Tar::new();
    t.file("etc/passwd", b"root", &H::default())
        .hardlink("pw", "/etc/passwd");
    let m = by_path(&apply(&[one(&mut t)]).unwrap().listing().unwrap());
    assert_eq!(m["/pw"].nlink, 2);
    let mut t = Tar::new();
    t.hardlink("pw", "/etc/passwd");
    let e = apply(&[one(&mut t)]).unwrap_err();
    assert!(
        matches!(e, Error::InvalidEntry { ref path, .. } if path == "pw"),
        "{e}"
    );
}

#[test]
fn symlinked_parent_in_the_same_layer_is_rejected() {
    for target in ["/etc", "../../..", "."] {
        let mut t = Tar::new();
        t.symlink("evil", target)
            .file("evil/passwd", b"pwned", &H::default());
        let e = apply(&[one(&mut t)]).unwrap_err();
        assert_eq!(
            unsafe_reason(&e),
            Some((0, "evil/passwd", UnsafeReason::ParentIsSymlink)),
            "{target}: {e}"
        );
    }
}

#[test]
fn symlinked_parent_from_an_earlier_layer_is_rejected() {
    let mut l0 = Tar::new();
    l0.symlink("evil", "../../..").dir("real/", &H::default());
    let mut l1 = Tar::new();
    l1.dir("real/", &H::default())
        .raw(b"evil/etc/passwd", b'0', b"x", b"", &H::default());
    let e = apply(&[one(&mut l0), one(&mut l1)]).unwrap_err();
    assert_eq!(
        unsafe_reason(&e),
        Some((1, "evil/etc/passwd", UnsafeReason::ParentIsSymlink)),
        "{e}"
    );

    // Also through directories, whiteouts and opaque markers.
    for (name, tf) in [
        (&b"evil/sub/"[..], b'5'),
        (b"evil/.wh.passwd", b'0'),
        (b"evil/.wh..wh..opq", b'0'),
    ] {
        let mut l1 = Tar::new();
        l1.raw(name, tf, b"", b"", &H::default());
        let e = apply(&[one(&mut l0), one(&mut l1)]).unwrap_err();
        assert_eq!(
            unsafe_reason(&e).map(|r| r.2),
            Some(UnsafeReason::ParentIsSymlink),
            "{}: {e}",
            String::from_utf8_lossy(name)
        );
    }

    // A hard link whose target path goes through the symlink.
    let mut l1 = Tar::new();
    l1.file("etc/passwd", b"p", &H::default())
        .hardlink("x", "evil/etc/passwd");
    let e = apply(&[one(&mut l0), one(&mut l1)]).unwrap_err();
    assert_eq!(
        unsafe_reason(&e),
        Some((1, "x", UnsafeReason::LinkTargetThroughSymlink)),
        "{e}"
    );
}

#[test]
fn replacing_the_symlink_itself_is_fine() {
    let mut l0 = Tar::new();
    l0.symlink("lib", "usr/lib");
    let mut l1 = Tar::new();
    l1.dir("lib/", &H::default())
        .file("lib/libc.so", b"c", &H::default());
    let m = by_path(
        &apply(&[one(&mut l0), one(&mut l1)])
            .unwrap()
            .listing()
            .unwrap(),
    );
    assert_eq!(m["/lib"].kind, supermachine_rootfs::FileKind::Dir);
    assert!(m.contains_key("/lib/libc.so"));
}

#[test]
fn invalid_entries_are_typed_errors() {
    let cases: Vec<(&str, Tar)> = vec![
        ("file below a file", {
            let mut t = Tar::new();
            t.file("f", b"", &H::default())
                .file("f/g", b"", &H::default());
            t
        }),
        ("hard link to a missing file", {
            let mut t = Tar::new();
            t.hardlink("a", "nothing");
            t
        }),
        ("hard link to a directory", {
            let mut t = Tar::new();
            t.dir("d/", &H::default()).hardlink("a", "d");
            t
        }),
        ("symlink with empty target", {
            let mut t = Tar::new();
            t.symlink("s", "");
            t
        }),
        ("file replacing the root", {
            let mut t = Tar::new();
            t.file("./", b"", &H::default());
            t.bytes.clear();
            t.raw(b"/", b'0', b"x", b"", &H::default());
            t
        }),
        ("unknown entry type", {
            let mut t = Tar::new();
            t.raw(b"v", b'V', b"", b"", &H::default());
            t
        }),
        ("bare whiteout", {
            let mut t = Tar::new();
            t.file("d/.wh.", b"", &H::default());
            t
        }),
    ];
    for (what, mut t) in cases {
        let e = apply(&[one(&mut t)]).unwrap_err();
        assert!(
            matches!(e, Error::InvalidEntry { layer: 0, .. }),
            "{what}: {e}"
        );
    }
}

#[test]
fn truncated_and_corrupt_streams_are_typed_errors() {
    let mut t = Tar::new();
    t.file("big", &vec![7u8; 200_000], &H::default())
        .file("after", b"x", &H::default());
    let tar = t.finish();
    let gz = gzip(&tar);

    for cut in [10, gz.len() / 2, gz.len() - 4] {
        let e = apply(&[gz[..cut].to_vec()]).unwrap_err();
        assert!(
            matches!(e, Error::Decompress { format: "gzip", .. }),
            "cut {cut}: {e}"
        );
    }
    let zs = zstd(&tar);
    let e = apply(&[zs[..zs.len() / 2].to_vec()]).unwrap_err();
    assert!(matches!(e, Error::Decompress { format: "zstd", .. }), "{e}");

    // Uncompressed tar cut in the middle of a member's data.
    let e = apply(&[tar[..100_000].to_vec()]).unwrap_err();
    assert!(
        matches!(e, Error::Tar { layer: 0, at: At::Entry(ref path), .. } if path == "big"),
        "{e}"
    );

    // Bad header checksum.
    let mut bad = tar.clone();
    bad[0] ^= 1;
    assert!(matches!(apply(&[bad]).unwrap_err(), Error::Tar { .. }));

    // Garbage, compressed garbage, and a gzip header followed by junk.
    let garbage: Vec<u8> = (0..5000u32).map(|i| (i * 7919 % 251) as u8 + 1).collect();
    assert!(matches!(
        apply(std::slice::from_ref(&garbage)).unwrap_err(),
        Error::Tar { .. }
    ));
    assert!(matches!(
        apply(&[gzip(&garbage)]).unwrap_err(),
        Error::Tar { .. }
    ));
    let mut junk = vec![0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3];
    junk.extend_from_slice(&garbage);
    assert!(matches!(
        apply(&[junk]).unwrap_err(),
        Error::Decompress { .. }
    ));
}

#[test]
fn limits_bound_memory() {
    let small = Limits {
        max_inodes: 10,
        max_header_bytes: 4096,
        max_xattr_bytes: 100,
        ..Limits::default()
    };
    let tree = || {
        Tree::with_options(TreeOptions {
            spool_dir: None,
            limits: small.clone(),
        })
        .unwrap()
    };
    let is_limit = |e: &Error| matches!(e, Error::LimitExceeded { .. });

    let mut t = Tar::new();
    for i in 0..20 {
        t.file(&format!("f{i}"), b"", &H::default());
    }
    let e = tree()
        .apply_layer(0, &t.finish()[..], Compression::Auto)
        .unwrap_err();
    assert!(is_limit(&e), "{e}");

    let mut t = Tar::new();
    let huge = vec![b'p'; 100_000];
    t.pax(&[("path", &huge)]).file("x", b"", &H::default());
    let e = tree()
        .apply_layer(0, &t.finish()[..], Compression::Auto)
        .unwrap_err();
    assert!(is_limit(&e), "{e}");

    let mut t = Tar::new();
    t.pax(&[("SCHILY.xattr.user.big", &[1u8; 200])])
        .file("x", b"", &H::default());
    let e = tree()
        .apply_layer(0, &t.finish()[..], Compression::Auto)
        .unwrap_err();
    assert!(is_limit(&e), "{e}");

    let mut t = Tar::new();
    t.pax(&[("path", "n".repeat(256).as_bytes())])
        .file("x", b"", &H::default());
    let e = tree()
        .apply_layer(0, &t.finish()[..], Compression::Auto)
        .unwrap_err();
    assert!(is_limit(&e), "{e}");
}

/// Flipped bytes anywhere in a valid layer: any result is fine, a panic is
/// not.
#[test]
fn mutated_layers_never_panic() {
    let mut t = Tar::new();
    t.pax(&[("SCHILY.xattr.user.a", b"b"), ("mtime", b"1.5")])
        .file("etc/a", b"aaaa", &H::default())
        .symlink("etc/l", "a")
        .hardlink("etc/h", "etc/a")
        .dir("d/", &H::default())
        .file("d/.wh..wh..opq", b"", &H::default())
        .raw(
            b"dev/c",
            b'3',
            b"",
            b"",
            &H {
                major: 1,
                minor: 1,
                ..H::default()
            },
        );
    let base = t.finish();
    let mut seed = 0x2545_f491_4f6c_dd1du64;
    for _ in 0..400 {
        let mut m = base.clone();
        for _ in 0..4 {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            let i = (seed % m.len() as u64) as usize;
            m[i] = (seed >> 32) as u8;
        }
        let _ = apply(&[m.clone()]);
        let _ = apply(&[gzip(&m)]);
    }
}

/// A NUL inside a PAX linkpath: Go's archive/tar (Docker) refuses it, and
/// the kernel would read the symlink cut at the NUL. It used to be stored.
#[test]
fn nul_in_a_pax_symlink_target_is_refused() {
    let mut t = Tar::new();
    t.pax(&[("linkpath", b"/etc/passwd\0/innocent")])
        .raw(b"l", b'2', b"", b"x", &H::default());
    let e = apply(&[one(&mut t)]).unwrap_err();
    assert!(
        matches!(e, Error::InvalidEntry { ref path, .. } if path == "l"),
        "{e}"
    );
    assert!(e.to_string().contains("NUL"), "{e}");
}

/// A broken header after a good member must not be blamed on that member.
#[test]
fn header_errors_do_not_name_the_previous_entry() {
    let mut t = Tar::new();
    t.file("innocent", b"fine", &H::default());
    let huge = vec![b'p'; 2 << 20];
    t.pax(&[("path", &huge)]).file("x", b"", &H::default());
    let e = apply(&[one(&mut t)]).unwrap_err();
    let msg = e.to_string();
    assert!(
        matches!(
            e,
            Error::LimitExceeded {
                at: At::Header { offset: 1024, previous: Some(ref p) },
                cap: supermachine_rootfs::Cap::HeaderBytes,
                ..
            } if p == "innocent"
        ),
        "{msg}"
    );
    assert!(!msg.contains("entry 'innocent'"), "{msg}");
    assert!(msg.contains("after 'innocent'"), "{msg}");

    // A bad checksum in the second header, likewise.
    let mut t = Tar::new();
    t.file("innocent", b"fine", &H::default())
        .file("second", b"", &H::default());
    let mut bytes = t.finish();
    bytes[1024 + 10] ^= 1;
    let e = apply(&[bytes]).unwrap_err();
    assert!(
        matches!(
            e,
            Error::Tar {
                at: At::Header { offset: 1024, .. },
                ..
            }
        ),
        "{e}"
    );
}

/// AUFS metadata never reaches the image (Docker drops it): not the
/// `.wh..wh.*` names, not what is below them. A hard link into the AUFS
/// hard-link directory becomes a copy of the staged file, as in Docker.
#[test]
fn aufs_metadata_is_dropped_and_plnk_links_resolve() {
    let mut t = Tar::new();
    t.dir(".wh..wh.plnk/", &H::default())
        .file(
            ".wh..wh.plnk/1234.5678",
            b"staged",
            &H {
                mode: 0o755,
                ..H::default()
            },
        )
        .dir(".wh..wh.aufs/", &H::default())
        .file(".wh..wh.aufs/x", b"meta", &H::default())
        .file("etc/.wh..wh.orph/y", b"meta", &H::default())
        .file("etc/real", b"r", &H::default())
        .hardlink("usr/bin/tool", ".wh..wh.plnk/1234.5678")
        .hardlink("usr/bin/tool2", "/.wh..wh.plnk/1234.5678");
    let tree = apply(&[one(&mut t)]).unwrap();
    let m = by_path(&tree.listing().unwrap());
    let paths: Vec<&str> = m.keys().map(String::as_str).collect();
    assert!(
        paths.iter().all(|p| !p.contains(".wh.")),
        "AUFS names in the image: {paths:?}"
    );
    assert_eq!(
        m["/usr/bin/tool"].sha256.as_deref(),
        Some(sha(b"staged").as_str())
    );
    assert_eq!(m["/usr/bin/tool"].mode, 0o755);
    assert_eq!(m["/usr/bin/tool2"].size, 6);
    assert!(m.contains_key("/etc/real"));

    let mut t = Tar::new();
    t.hardlink("x", ".wh..wh.plnk/missing");
    assert!(matches!(
        apply(&[one(&mut t)]).unwrap_err(),
        Error::InvalidEntry { .. }
    ));
}

/// The image config's diff_id must be the sha256 of the uncompressed layer.
#[test]
fn diff_id_is_verified() {
    let mut t = Tar::new();
    t.file("a", b"a", &H::default());
    let tar = t.finish();
    let good = format!("sha256:{}", sha(&tar));
    let mut tree = Tree::new().unwrap();
    let stats = tree
        .apply_layer_verified(0, &gzip(&tar)[..], Compression::Auto, &good)
        .unwrap();
    assert_eq!(stats.diff_id, good);
    let mut tree = Tree::new().unwrap();
    let e = tree
        .apply_layer_verified(
            0,
            &gzip(&tar)[..],
            Compression::Auto,
            "sha256:\u{1b}[31mbad",
        )
        .unwrap_err();
    assert!(matches!(e, Error::DiffIdMismatch { layer: 0, .. }), "{e}");
    assert!(!e.to_string().contains('\u{1b}'), "escaped: {e}");
    assert!(tree.listing().is_err(), "the tree is poisoned");
}

/// Names from the image are escaped in every message.
#[test]
fn control_characters_in_names_are_escaped_in_errors() {
    let mut t = Tar::new();
    t.raw(b"\x1b]0;pwned\x07/../../x", b'0', b"", b"", &H::default());
    let e = apply(&[one(&mut t)]).unwrap_err();
    let msg = e.to_string();
    assert!(!msg.chars().any(|c| c.is_control()), "{msg:?}");
    assert!(msg.contains("\\u{1b}]0;pwned\\u{7}"), "{msg}");
}
