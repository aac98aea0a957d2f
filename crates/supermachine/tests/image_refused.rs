//! A pulled image whose root filesystem is refused (a hostile layer, a
//! layer that does not match its diff_id, a cap exceeded) leaves nothing
//! behind: no record in `images`, nothing `gc` keeps, no lock file of the
//! failed build; and `gc` counts leftovers as temporary files, not as root
//! filesystems.
//!
//! One test function: the cache directory is process-wide (an env var).

// A test binary: a helper that cannot do its job panics, which fails the
// test that called it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use supermachine::oci::{PullPolicy, Store};
use supermachine::{images, Error, Image, PullOptions};

/// A raw ustar member (no validation, so `../` names can be made).
fn member(name: &str, data: &[u8]) -> Vec<u8> {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name.as_bytes());
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{:011o}\0", data.len()).as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = b'0';
    h[257..263].copy_from_slice(b"ustar\0");
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|&x| u64::from(x)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
    let mut out = h.to_vec();
    out.extend_from_slice(data);
    out.resize(out.len().next_multiple_of(512), 0);
    out
}

/// A one-layer OCI layout; `diff_id` overrides the config's (else right).
fn layout(dir: &Path, tar: &[u8], diff_id: Option<&str>) {
    let right = common::sha256(tar);
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux", "config": {"Cmd": ["/x"]},
        "rootfs": {"type": "layers", "diff_ids": [diff_id.unwrap_or(&right)]},
    });
    common::one_layer_layout(
        dir,
        tar,
        "application/vnd.oci.image.layer.v1.tar",
        &config,
        None,
    );
}

#[test]
fn refused_images_leave_no_record_and_gc_cleans_up() {
    let tmp = std::env::temp_dir().join(format!("sm-image-refused-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&tmp);
    // SAFETY (edition 2021: safe fn): set before any thread reads the environment.
    std::env::set_var("SUPERMACHINE_CACHE_DIR", tmp.join("cache"));
    std::env::set_var("SUPERMACHINE_DATA_DIR", tmp.join("data"));
    let end = [0u8; 1024];
    let escape = [
        member("ok", b"fine"),
        member("../../etc/evil", b"x"),
        end.to_vec(),
    ]
    .concat();
    let good = [member("ok", b"fine"), end.to_vec()].concat();
    let big = [member("big", &vec![7u8; 1 << 20]), end.to_vec()].concat();
    layout(&tmp.join("escape"), &escape, None);
    layout(
        &tmp.join("tampered"),
        &good,
        Some(&format!("sha256:{}", "0".repeat(64))),
    );
    layout(&tmp.join("big"), &big, None);
    let store = Store::open_default().unwrap();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let options = PullOptions {
        policy: PullPolicy::Always,
        store: Some(store.clone()),
        ..PullOptions::default()
    };
    let pull = |name: &str, options: &PullOptions| {
        rt.block_on(Image::pull(
            &format!("oci:{}", tmp.join(name).display()),
            options,
        ))
    };

    let e = pull("escape", &options).unwrap_err();
    assert!(matches!(e, Error::Rootfs { .. }), "{e}");
    assert!(e.to_string().contains("etc/evil"), "{e}");
    let e = pull("tampered", &options).unwrap_err();
    assert!(
        matches!(
            &e,
            Error::Rootfs {
                source: supermachine_rootfs::Error::DiffIdMismatch { .. },
                ..
            }
        ),
        "{e}"
    );
    let capped = PullOptions {
        limits: supermachine_rootfs::Limits {
            max_unpacked_bytes: 64 << 10,
            ..Default::default()
        },
        ..options.clone()
    };
    let e = pull("big", &capped).unwrap_err();
    assert!(e.to_string().contains("max_unpacked_bytes"), "{e}");

    // None of the refused images is listed.
    assert_eq!(images::list().unwrap(), vec![]);
    // A build killed long ago left its writer's temp file.
    let rootfs = tmp.join("cache/rootfs");
    let stale = rootfs.join(".erofs-killed.tmp");
    std::fs::write(&stale, b"partial").unwrap();
    let old = std::time::SystemTime::now() - std::time::Duration::from_secs(7200);
    std::fs::File::options()
        .write(true)
        .open(&stale)
        .unwrap()
        .set_modified(old)
        .unwrap();
    let locks = |dir: &Path| {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .unwrap()
                    .file_name()
                    .to_string_lossy()
                    .ends_with(".lock")
            })
            .count()
    };
    assert_eq!(locks(&rootfs), 3, "one lock per failed build");

    let report = images::gc().unwrap();
    assert_eq!(report.blobs_removed, 9, "{report:?}"); // 3 x manifest, config, layer
    assert_eq!(report.rootfs_removed, 0, "{report:?}");
    assert_eq!(report.temp_files_removed, 4, "{report:?}"); // 3 locks + 1 temp
    assert_eq!(locks(&rootfs), 0);
    assert!(!stale.exists());

    // The same image under a raised cap: pulled and kept.
    let image = pull("big", &options).unwrap();
    assert_eq!(images::list().unwrap().len(), 1);
    assert!(image.rootfs_path().unwrap().exists());
    let report = images::gc().unwrap();
    assert_eq!((report.blobs_removed, report.rootfs_removed), (0, 0));
    let _ = std::fs::remove_dir_all(&tmp);
}
