//! OCI layout and docker-archive sources, the blob store's guarantees
//! (verification, warm path, concurrency, gc), all without a registry.

// A test binary: a helper that cannot do its job panics, which fails the
// test that called it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::{Arc, Barrier};

use common::*;
use supermachine_oci::{Compression, Error, PullOptions, PullPolicy, Source, Store};

fn pull(
    store: &Store,
    source: &str,
    events: Option<&Events>,
) -> supermachine_oci::Result<supermachine_oci::PulledImage> {
    let opts = PullOptions {
        progress: events.map(Events::callback),
        ..PullOptions::default()
    };
    runtime().block_on(store.pull(&Source::parse(source)?, &opts))
}

#[test]
fn oci_layout_pull_and_warm_repull() {
    let tmp = tempfile::tempdir().unwrap();
    let img = TestImage::small("amd64", 1, 300_000);
    let layout = tmp.path().join("layout");
    write_layout(&layout, &[(Some("v1"), &img.manifest)], &img.blobs());
    let store = Store::open(tmp.path().join("store")).unwrap();

    let events = Events::default();
    let src = format!("oci:{}:v1", layout.display());
    let pulled = pull(&store, &src, Some(&events)).unwrap();
    assert_eq!(pulled.manifest_digest.as_str(), img.manifest.digest());
    assert_eq!(pulled.config_digest.as_str(), img.config.digest());
    assert_eq!(
        pulled.config.cmd.as_deref(),
        Some(&["/bin/hello".to_string()][..])
    );
    assert_eq!(pulled.config.env, ["PATH=/bin"]);
    assert_eq!(pulled.config.labels["test"], "amd64");
    assert_eq!(pulled.layers.len(), 2);
    for (info, blob) in pulled.layers.iter().zip(&img.layers) {
        assert_eq!(info.digest.as_str(), blob.digest());
        assert_eq!(info.compression, Compression::Gzip);
        assert_eq!(
            std::fs::read(&info.path).unwrap(),
            blob.bytes,
            "layer content in the store"
        );
        assert_eq!(info.path, store.blob_path(&info.digest));
    }
    assert_eq!(pulled.stats.blobs_fetched, 4, "manifest, config, 2 layers");
    assert_eq!(
        events.fetched(),
        3,
        "config and 2 layers reported as fetched"
    );
    assert!(events.all().iter().any(|e| matches!(e, supermachine_oci::PullEvent::BlobProgress { done, size, .. } if done == size && *size > 200_000)));
    let json: serde_json::Value = serde_json::from_str(&pulled.inspect_json()).unwrap();
    assert_eq!(json["config"]["cmd"][0], "/bin/hello");

    // Warm: nothing fetched, nothing started.
    let events2 = Events::default();
    let again = pull(&store, &src, Some(&events2)).unwrap();
    assert_eq!(again.manifest_digest, pulled.manifest_digest);
    assert_eq!(again.stats.blobs_fetched, 0);
    assert_eq!(events2.started(), 0);

    // The record lists it; the store alone can answer (policy Never).
    let images = store.images().unwrap();
    assert_eq!(images.len(), 1);
    assert_eq!(images[0].reference, format!("oci:{}:v1", layout.display()));
    assert_eq!(
        images[0].size(),
        img.config.bytes.len() as u64
            + img.layers.iter().map(|l| l.bytes.len() as u64).sum::<u64>()
    );
    std::fs::remove_dir_all(&layout).unwrap();
    let opts = PullOptions {
        policy: PullPolicy::Never,
        ..PullOptions::default()
    };
    let offline = runtime()
        .block_on(store.pull(&Source::parse(&src).unwrap(), &opts))
        .unwrap();
    assert_eq!(offline.layers, pulled.layers);
}

#[test]
fn layout_tag_selection_and_multi_platform_index() {
    let tmp = tempfile::tempdir().unwrap();
    let amd = TestImage::small("amd64", 2, 1000);
    let arm = TestImage::small("arm64", 3, 1000);
    let index = index_of(&[&arm, &amd]);
    let mut blobs = amd.blobs();
    blobs.extend(arm.blobs());
    blobs.push(index.clone());
    let layout = tmp.path().join("layout");
    write_layout(
        &layout,
        &[(Some("multi"), &index), (Some("armonly"), &arm.manifest)],
        &blobs,
    );
    let store = Store::open(tmp.path().join("store")).unwrap();

    let p = pull(&store, &format!("oci:{}:multi", layout.display()), None).unwrap();
    assert_eq!(
        p.manifest_digest.as_str(),
        amd.manifest.digest(),
        "amd64 chosen from the index"
    );
    assert_eq!(
        p.index_digest.as_ref().map(|d| d.to_string()),
        Some(index.digest())
    );
    assert_eq!(p.config.architecture, "amd64");

    // No tag and two images: the error names the tags.
    let e = pull(&store, &format!("oci:{}", layout.display()), None).unwrap_err();
    assert!(
        matches!(e, Error::Layout { .. })
            && e.to_string().contains("multi")
            && e.to_string().contains("armonly"),
        "{e}"
    );
    // Unknown tag.
    let e = pull(&store, &format!("oci:{}:nope", layout.display()), None).unwrap_err();
    assert!(e.to_string().contains("no image tagged 'nope'"), "{e}");
    // A single-platform arm64 image cannot run here.
    let e = pull(&store, &format!("oci:{}:armonly", layout.display()), None).unwrap_err();
    assert!(matches!(e, Error::NoMatchingPlatform { .. }), "{e}");
    // An index without amd64.
    let arm_index = index_of(&[&arm]);
    let layout2 = tmp.path().join("layout2");
    let mut blobs2 = arm.blobs();
    blobs2.push(arm_index.clone());
    write_layout(&layout2, &[(None, &arm_index)], &blobs2);
    let e = pull(&store, &format!("oci:{}", layout2.display()), None).unwrap_err();
    assert!(
        matches!(&e, Error::NoMatchingPlatform { available, .. } if available == &["linux/arm64".to_string()]),
        "{e}"
    );
    // Not a layout at all.
    let e = pull(&store, &format!("oci:{}", tmp.path().display()), None).unwrap_err();
    assert!(e.to_string().contains("no oci-layout file"), "{e}");
}

#[test]
fn corrupt_layout_blob_is_rejected_and_nothing_admitted() {
    let tmp = tempfile::tempdir().unwrap();
    let img = TestImage::small("amd64", 4, 50_000);
    let layout = tmp.path().join("layout");
    write_layout(&layout, &[(None, &img.manifest)], &img.blobs());
    // Flip one byte of the second layer (same size, wrong digest).
    let bad = layout.join("blobs/sha256").join(img.layers[1].hex());
    let mut bytes = std::fs::read(&bad).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&bad, &bytes).unwrap();

    let store = Store::open(tmp.path().join("store")).unwrap();
    let e = pull(&store, &format!("oci:{}", layout.display()), None).unwrap_err();
    match &e {
        Error::DigestMismatch { expected, .. } => {
            assert_eq!(expected.as_str(), img.layers[1].digest())
        }
        other => panic!("expected DigestMismatch, got {other}"),
    }
    let d = supermachine_oci::Digest::parse(&img.layers[1].digest()).unwrap();
    assert!(
        !store.blob_path(&d).exists(),
        "corrupt blob must not be admitted"
    );
    assert!(
        temp_files(store.root()).is_empty(),
        "no temp file left behind"
    );
    assert!(
        store.images().unwrap().is_empty(),
        "no record for a failed pull"
    );

    // A truncated blob: size mismatch (seen before reading), also not
    // admitted.
    std::fs::write(&bad, &img.layers[1].bytes[..1000]).unwrap();
    let e = pull(&store, &format!("oci:{}", layout.display()), None).unwrap_err();
    assert!(matches!(e, Error::SizeMismatch { actual: 1000, .. }), "{e}");
    assert!(!store.blob_path(&d).exists());

    // Repaired: the pull completes.
    std::fs::write(&bad, &img.layers[1].bytes).unwrap();
    pull(&store, &format!("oci:{}", layout.display()), None).unwrap();
    assert!(store.blob_path(&d).exists());
}

#[test]
fn legacy_docker_archive() {
    let tmp = tempfile::tempdir().unwrap();
    let l1 = tar_of(&[("bin/a", b"a")]);
    let l2 = tar_of(&[("bin/b", &noise(100_000, 9))]);
    let one = TestImage::new("amd64", &[l1.clone(), l2], false, &["/bin/a"]);
    let two = TestImage::new(
        "amd64",
        &[l1, tar_of(&[("bin/c", b"c")])],
        false,
        &["/bin/c"],
    );
    let tar = tmp.path().join("save.tar");
    write_legacy_docker_archive(&tar, &[(&["team/app:v1"], &one), (&["other:2"], &two)]);
    let store = Store::open(tmp.path().join("store")).unwrap();

    // Two images: must pick.
    let e = pull(&store, &format!("docker-archive:{}", tar.display()), None).unwrap_err();
    assert!(
        e.to_string().contains("team/app:v1") && e.to_string().contains("other:2"),
        "{e}"
    );

    let p = pull(
        &store,
        &format!("docker-archive:{}:team/app:v1", tar.display()),
        None,
    )
    .unwrap();
    assert_eq!(p.config_digest.as_str(), one.config.digest());
    assert_eq!(p.layers.len(), 2);
    for (info, blob) in p.layers.iter().zip(&one.layers) {
        assert_eq!(
            info.digest.as_str(),
            blob.digest(),
            "uncompressed layer digest = diff_id"
        );
        assert_eq!(info.compression, Compression::None);
        assert_eq!(std::fs::read(&info.path).unwrap(), blob.bytes);
    }
    // The normalized name matches too, and the symlinked shared layer resolves.
    let p2 = pull(
        &store,
        &format!("docker-archive:{}:docker.io/library/other:2", tar.display()),
        None,
    )
    .unwrap();
    assert_eq!(p2.layers[0].digest, p.layers[0].digest);
    assert_eq!(p2.config.cmd.as_deref(), Some(&["/bin/c".to_string()][..]));
    // Same archive again: deterministic manifest, nothing fetched.
    let again = pull(
        &store,
        &format!("docker-archive:{}:team/app:v1", tar.display()),
        None,
    )
    .unwrap();
    assert_eq!(again.manifest_digest, p.manifest_digest);
    assert_eq!(again.stats.blobs_fetched, 0);

    // A layer that does not match the config's diff_id is refused.
    let tampered = TestImage {
        layers: vec![
            one.layers[0].clone(),
            Blob::new(LAYER_TAR, tar_of(&[("bin/evil", b"x")])),
        ],
        ..one.clone()
    };
    let tar2 = tmp.path().join("tampered.tar");
    write_legacy_docker_archive(&tar2, &[(&["team/app:v1"], &tampered)]);
    let fresh = Store::open(tmp.path().join("store2")).unwrap();
    let e = pull(&fresh, &format!("docker-archive:{}", tar2.display()), None).unwrap_err();
    assert!(matches!(e, Error::DigestMismatch { .. }), "{e}");

    // Not a tar.
    let junk = tmp.path().join("junk.tar");
    std::fs::write(&junk, b"this is not a tar archive at all").unwrap();
    let e = pull(&fresh, &format!("docker-archive:{}", junk.display()), None).unwrap_err();
    assert!(matches!(e, Error::DockerArchive { .. }), "{e}");
}

#[test]
fn oci_docker_archive_keeps_registry_digests() {
    let tmp = tempfile::tempdir().unwrap();
    let img = TestImage::small("amd64", 5, 20_000);
    let tar = tmp.path().join("new.tar");
    write_oci_docker_archive(&tar, "team/app", "v1", &img);
    let store = Store::open(tmp.path().join("store")).unwrap();
    for src in [
        format!("docker-archive:{}", tar.display()),
        format!("docker-archive:{}:team/app:v1", tar.display()),
        format!("docker-archive:{}:v1", tar.display()),
    ] {
        let p = pull(&store, &src, None).unwrap();
        assert_eq!(p.manifest_digest.as_str(), img.manifest.digest(), "{src}");
        assert_eq!(p.layers[1].compression, Compression::Gzip);
    }
    let e = pull(
        &store,
        &format!("docker-archive:{}:team/app:v2", tar.display()),
        None,
    )
    .unwrap_err();
    assert!(e.to_string().contains("no image tagged"), "{e}");
}

#[test]
fn concurrent_pulls_fetch_each_blob_once() {
    let tmp = tempfile::tempdir().unwrap();
    let l = |i: u8| tar_of(&[(&format!("f{i}") as &str, &noise(400_000, i))]);
    let img = TestImage::new("amd64", &[l(1), l(2), l(3), l(4), l(5)], true, &["/x"]);
    let layout = tmp.path().join("layout");
    write_layout(&layout, &[(None, &img.manifest)], &img.blobs());
    let root = tmp.path().join("store");
    let src = format!("oci:{}", layout.display());

    // Two independent Store values (as two processes would have), started together.
    let barrier = Arc::new(Barrier::new(2));
    let handles: Vec<_> = (0..2)
        .map(|_| {
            let (root, src, barrier) = (root.clone(), src.clone(), barrier.clone());
            std::thread::spawn(move || {
                let store = Store::open(&root).unwrap();
                let events = Events::default();
                barrier.wait();
                let p = pull(&store, &src, Some(&events)).unwrap();
                (p, events.fetched())
            })
        })
        .collect();
    let results: Vec<_> = handles.into_iter().map(|h| h.join().unwrap()).collect();
    assert_eq!(results[0].0.manifest_digest, results[1].0.manifest_digest);
    let fetched: usize = results.iter().map(|r| r.1).sum();
    assert_eq!(
        fetched, 6,
        "config + 5 layers fetched once in total, not once per pull"
    );
    let store = Store::open(&root).unwrap();
    for l in &results[0].0.layers {
        assert_eq!(
            supermachine_oci::Digest::of_bytes(&std::fs::read(&l.path).unwrap()),
            l.digest
        );
    }
    assert!(temp_files(store.root()).is_empty());
}

#[test]
fn gc_removes_only_unreferenced_blobs_and_waits_for_pulls() {
    let tmp = tempfile::tempdir().unwrap();
    let shared = tar_of(&[("shared", b"shared layer")]);
    let a = TestImage::new(
        "amd64",
        &[shared.clone(), tar_of(&[("a", b"only a")])],
        true,
        &["/a"],
    );
    let b = TestImage::new(
        "amd64",
        &[shared, tar_of(&[("b", b"only b")])],
        true,
        &["/b"],
    );
    let mut blobs = a.blobs();
    blobs.extend(b.blobs());
    let layout = tmp.path().join("layout");
    write_layout(
        &layout,
        &[(Some("a"), &a.manifest), (Some("b"), &b.manifest)],
        &blobs,
    );
    let store = Store::open(tmp.path().join("store")).unwrap();
    pull(&store, &format!("oci:{}:a", layout.display()), None).unwrap();
    pull(&store, &format!("oci:{}:b", layout.display()), None).unwrap();
    // A leftover of a killed download.
    std::fs::write(store.root().join("tmp/deadbeef-1-0.partial"), b"partial").unwrap();

    // Nothing to collect yet, except the leftover.
    let r = store.gc().unwrap();
    assert_eq!((r.blobs_removed, r.temp_files_removed), (0, 1));

    let removed = store
        .remove_image(&format!("oci:{}:a", layout.display()))
        .unwrap();
    assert_eq!(removed.len(), 1);
    assert!(matches!(
        store.remove_image(&format!("oci:{}:a", layout.display())),
        Err(Error::ImageNotFound(_))
    ));
    let r = store.gc().unwrap();
    // a's manifest, config and own layer go; the shared layer stays.
    assert_eq!(r.blobs_removed, 3, "{r:?}");
    let present = |blob: &Blob| {
        store.has_blob(
            &supermachine_oci::Digest::parse(&blob.digest()).unwrap(),
            None,
        )
    };
    assert!(!present(&a.manifest) && !present(&a.config) && !present(&a.layers[1]));
    assert!(present(&a.layers[0]), "shared layer kept");
    for blob in b.blobs() {
        assert!(present(&blob), "b is intact");
    }
    let b_src = Source::parse(&format!("oci:{}:b", layout.display())).unwrap();
    assert!(store.image(&b_src).unwrap().is_some());

    // Remove by manifest digest, then gc empties the store.
    store.remove_image(&b.manifest.digest()).unwrap();
    let r = store.gc().unwrap();
    assert_eq!(r.blobs_removed, 4);
    assert_eq!(
        std::fs::read_dir(store.root().join("blobs/sha256"))
            .unwrap()
            .count(),
        0
    );

    // gc waits while a pull (a lease) is in progress.
    let lease = store.lease().unwrap();
    let (tx, rx) = std::sync::mpsc::channel();
    let s2 = store.clone();
    let t = std::thread::spawn(move || {
        s2.gc().unwrap();
        tx.send(()).unwrap();
    });
    assert!(
        rx.recv_timeout(std::time::Duration::from_millis(300))
            .is_err(),
        "gc must wait for the lease"
    );
    drop(lease);
    rx.recv_timeout(std::time::Duration::from_secs(10))
        .expect("gc runs once the lease is gone");
    t.join().unwrap();
}

#[test]
fn pull_future_is_send_and_spawnable() {
    let tmp = tempfile::tempdir().unwrap();
    let img = TestImage::small("amd64", 8, 1000);
    let layout = tmp.path().join("layout");
    write_layout(&layout, &[(None, &img.manifest)], &img.blobs());
    let store = Store::open(tmp.path().join("store")).unwrap();
    let src = Source::parse(&format!("oci:{}", layout.display())).unwrap();
    let rt = runtime();
    let handle = rt.spawn(async move { store.pull(&src, &PullOptions::default()).await });
    let p = rt.block_on(handle).unwrap().unwrap();
    assert_eq!(p.manifest_digest.as_str(), img.manifest.digest());
}
