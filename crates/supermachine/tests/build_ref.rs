//! `BuildOptions` naming its image by reference, as the Node API's `ref`
//! does: the reference is resolved the way `supermachine run` resolves it
//! (the local store first, the source only when the image is missing).
//! No VM: resolution and the build key only.
//!
//! One test function: the data and cache directories are process-wide.

// A test binary: a helper that cannot do its job panics, which fails the
// test that called it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use supermachine::{BuildImage, BuildOptions, Error};

#[tokio::test]
async fn a_reference_is_resolved_store_first() {
    let tmp = tempfile::tempdir().unwrap();
    std::env::set_var("SUPERMACHINE_CACHE_DIR", tmp.path().join("cache"));
    std::env::set_var("SUPERMACHINE_DATA_DIR", tmp.path().join("data"));
    let layout = tmp.path().join("layout");
    common::layout(&layout, "v1", "from a reference\n");
    let reference = format!("oci:{}:v1", layout.display());

    let options = BuildOptions::new(BuildImage::Ref(reference.clone()));
    // The key hashes the image's digest, which a reference does not have
    // until it is resolved.
    let e = supermachine::build_key(&options).unwrap_err();
    assert!(
        matches!(&e, Error::InvalidArgument(m) if m.contains("resolve")),
        "{e}"
    );

    let image = options.image.resolve().await.unwrap();
    let digest = image.digest().expect("an OCI image").clone();
    assert!(image.rootfs_path().is_some_and(|p| p.is_file()));

    // Store first: with the layout gone the image still resolves, the
    // same one, without fetching anything.
    std::fs::remove_dir_all(&layout).unwrap();
    let again = BuildImage::Ref(reference).resolve().await.unwrap();
    assert_eq!(again.digest(), Some(&digest));
    assert_eq!(again.oci().unwrap().stats.blobs_fetched, 0);

    // An image in hand resolves to itself.
    let same = BuildImage::from(again.clone()).resolve().await.unwrap();
    assert_eq!(same, again);

    // A reference that is nowhere is the pull's error, not a panic.
    let missing = format!("oci:{}:v1", tmp.path().join("nothing").display());
    assert!(BuildImage::Ref(missing).resolve().await.is_err());
}
