//! `Image::pull` without a VM: an OCI layout made here is pulled, its root
//! filesystem built once and cached (a second pull does no layer work), two
//! concurrent pulls of a new image build it once, and `images::gc` keeps
//! what is used and deletes what is not.
//!
//! One test function: the cache directory is process-wide (an env var).

// A test binary: a helper that cannot do its job panics, which fails the
// test that called it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::layout;
use std::sync::{Arc, Mutex};
use supermachine::oci::{PullPolicy, Store};
use supermachine::{images, Image, ImageEvent, PullOptions};

#[derive(Clone, Default)]
struct Events(Arc<Mutex<Vec<ImageEvent>>>);

impl Events {
    fn options(&self, store: &Store, policy: PullPolicy) -> PullOptions {
        let me = self.clone();
        PullOptions {
            policy,
            store: Some(store.clone()),
            progress: Some(Arc::new(move |e: &ImageEvent| {
                me.0.lock().unwrap().push(e.clone())
            })),
            ..PullOptions::default()
        }
    }
    fn count(&self, f: impl Fn(&ImageEvent) -> bool) -> usize {
        self.0.lock().unwrap().iter().filter(|e| f(e)).count()
    }
    fn built(&self) -> usize {
        self.count(|e| matches!(e, ImageEvent::RootfsBuilt { .. }))
    }
    fn applied(&self) -> usize {
        self.count(|e| matches!(e, ImageEvent::LayerApplied { .. }))
    }
    fn cached(&self) -> usize {
        self.count(|e| matches!(e, ImageEvent::RootfsCached { .. }))
    }
}

#[test]
fn pull_builds_once_caches_and_collects_garbage() {
    let tmp = std::env::temp_dir().join(format!("sm-image-pull-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    // SAFETY (edition 2021: safe fn): set before any thread reads the environment.
    std::env::set_var("SUPERMACHINE_CACHE_DIR", tmp.join("cache"));
    std::env::set_var("SUPERMACHINE_DATA_DIR", tmp.join("data"));
    layout(&tmp.join("a"), "v1", "first\n");
    layout(&tmp.join("b"), "v1", "second\n");
    let store = Store::open_default().unwrap();
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let source_a = format!("oci:{}:v1", tmp.join("a").display());
    let source_b = format!("oci:{}:v1", tmp.join("b").display());

    // First pull: builds.
    let first = Events::default();
    let image = rt
        .block_on(Image::pull(
            &source_a,
            &first.options(&store, PullPolicy::Always),
        ))
        .unwrap();
    assert_eq!((first.built(), first.applied(), first.cached()), (1, 1, 0));
    let rootfs = image.rootfs_path().unwrap().to_path_buf();
    assert!(rootfs.starts_with(tmp.join("cache/rootfs")), "{rootfs:?}");
    assert_eq!(
        rootfs.file_name().unwrap().to_str().unwrap(),
        format!("{}.erofs", image.digest().unwrap().hex())
    );
    assert_eq!(image.command(&[]).unwrap(), ["cat", "/hello"]);
    let defaults = image.exec_defaults();
    assert_eq!(defaults.env, [("A".to_string(), "1".to_string())]);
    assert_eq!(
        (defaults.cwd.as_deref(), defaults.user.as_deref()),
        (Some("/w"), Some("1:2"))
    );
    let built_at = std::fs::metadata(&rootfs).unwrap().modified().unwrap();

    // Second pull and from_store: no layer work, the same file.
    let second = Events::default();
    let again = rt
        .block_on(Image::pull(
            &source_a,
            &second.options(&store, PullPolicy::IfMissing),
        ))
        .unwrap();
    assert_eq!(
        (second.built(), second.applied(), second.cached()),
        (0, 0, 1)
    );
    assert_eq!(
        (again.digest(), again.rootfs_path()),
        (image.digest(), image.rootfs_path())
    );
    assert_eq!(
        std::fs::metadata(&rootfs).unwrap().modified().unwrap(),
        built_at
    );
    let stored = rt.block_on(Image::from_store(&source_a)).unwrap();
    assert_eq!(stored.digest(), image.digest());
    let missing = rt.block_on(Image::from_store(&source_b)).unwrap_err();
    assert!(
        missing.to_string().contains("supermachine pull"),
        "{missing}"
    );

    // Two concurrent pulls of a new image: one builds, the other waits
    // for the lock and finds the file.
    let racers: Vec<Events> = (0..2).map(|_| Events::default()).collect();
    let results: Vec<_> = rt.block_on(async {
        let pulls = racers.iter().map(|ev| {
            let options = ev.options(&store, PullPolicy::Always);
            let source = source_b.clone();
            tokio::spawn(async move { Image::pull(&source, &options).await })
        });
        let mut out = Vec::new();
        for p in pulls.collect::<Vec<_>>() {
            out.push(p.await.unwrap().unwrap());
        }
        out
    });
    assert_eq!(results[0].rootfs_path(), results[1].rootfs_path());
    let built: usize = racers.iter().map(Events::built).sum();
    let applied: usize = racers.iter().map(Events::applied).sum();
    assert_eq!((built, applied), (1, 1), "built once");

    // gc keeps both images; after rmi of b it deletes b's blobs and rootfs.
    let report = images::gc().unwrap();
    assert_eq!((report.blobs_removed, report.rootfs_removed), (0, 0));
    let b_rootfs = results[0].rootfs_path().unwrap().to_path_buf();
    images::remove(&source_b).unwrap();
    assert!(!b_rootfs.exists(), "rmi deletes the unused rootfs");
    assert!(rootfs.exists(), "and keeps the used one");
    let report = images::gc().unwrap();
    assert_eq!(report.blobs_removed, 3, "{report:?}"); // manifest, config, layer
    assert_eq!(images::list().unwrap().len(), 1);
    assert_eq!(
        images::inspect(&source_a).unwrap().manifest_digest,
        *image.digest().unwrap()
    );
    let _ = std::fs::remove_dir_all(&tmp);
}
