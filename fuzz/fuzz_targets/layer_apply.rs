//! Arbitrary bytes applied as an image layer (gzip, zstd or plain tar,
//! sniffed), then listed and written as an EROFS image when accepted.
//! Whatever the input: no panic, no hang, memory and disk within the small
//! caps below (`cargo xtask test` runs it with `-rss_limit_mb=1024 -malloc_limit_mb=256`: an
//! unbounded buffer is a finding), and nothing written outside a scratch
//! directory.

#![no_main]

use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;
use supermachine_rootfs::{erofs, Compression, Limits, Tree, TreeOptions};

/// Caps small enough that every accepted input is cheap to write out.
fn limits() -> Limits {
    Limits {
        max_inodes: 4096,
        max_unpacked_bytes: 64 << 20,
        max_spool_bytes: 8 << 20,
        max_header_bytes: 64 << 10,
        max_metadata_bytes: 4 << 20,
        ..Limits::default()
    }
}

/// One scratch directory for the whole run (spool files are anonymous).
fn scratch() -> &'static tempfile::TempDir {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("scratch directory"))
}

fuzz_target!(|data: &[u8]| {
    let mut tree = Tree::with_options(TreeOptions {
        spool_dir: Some(scratch().path().to_path_buf()),
        limits: limits(),
    })
    .expect("tree");
    // Two layers from one input: the second sees what the first made
    // (whiteouts, opaque markers, links across layers).
    let (first, second) = data.split_at(data.len() / 2);
    for (i, layer) in [first, second].into_iter().enumerate() {
        if tree.apply_layer(i, layer, Compression::Auto).is_err() {
            return;
        }
    }
    assert!(tree.spool_bytes() <= limits().max_spool_bytes);
    assert!(tree.inodes() <= limits().max_inodes);
    let listing = tree.listing().expect("listing of an accepted tree");
    assert!(!listing.is_empty());
    let image = scratch().path().join("image.erofs");
    erofs::write(&tree, &image).expect("writing an accepted tree");
});
