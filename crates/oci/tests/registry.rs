//! Pulls from a real registry: Debian's `docker-registry` (CNCF
//! distribution) on 127.0.0.1, images pushed with skopeo from OCI layouts
//! built here. Needs `apt-get install -y docker-registry skopeo`.

// A test binary: a helper that cannot do its job panics, which fails the
// test that called it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::Path;
use std::process::Command;
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use base64::Engine;
use common::proxy::{Mode, Proxy};
use common::registry::{free_port, Registry};
use common::*;
use supermachine_oci::{Digest, Error, PullEvent, PullOptions, RegistryConfig, Source, Store};

fn opts(registry: RegistryConfig, events: Option<&Events>) -> PullOptions {
    PullOptions {
        registry,
        progress: events.map(Events::callback),
        ..PullOptions::default()
    }
}

/// A registry config that reads no credentials from the real home.
fn no_creds(tmp: &Path) -> RegistryConfig {
    RegistryConfig {
        docker_config_dir: Some(tmp.join("no-docker-config")),
        ..RegistryConfig::default()
    }
}

fn pull(
    store: &Store,
    src: &str,
    o: &PullOptions,
) -> supermachine_oci::Result<supermachine_oci::PulledImage> {
    runtime().block_on(store.pull(&Source::parse(src)?, o))
}

/// Builds a layout holding `img` as `tag` and pushes it to `repo:tag`.
fn push(reg: &Registry, tmp: &Path, img: &TestImage, repo: &str, tag: &str) {
    let layout = tmp.join(format!("layout-{}", repo.replace('/', "-")));
    write_layout(&layout, &[(Some(tag), &img.manifest)], &img.blobs());
    reg.push_layout(&layout, tag, repo);
}

fn big_image(seed: u8) -> TestImage {
    let l = |i: u8, n: usize| {
        tar_of(&[(
            &format!("data/{i}") as &str,
            &noise(n, seed.wrapping_add(i)),
        )])
    };
    TestImage::new(
        "amd64",
        &[l(1, 50_000), l(2, 1_500_000), l(3, 600_000)],
        true,
        &["/bin/sh"],
    )
}

#[test]
fn anonymous_pull_then_warm_pull_downloads_nothing() {
    let reg = Registry::start(None);
    let tmp = tempfile::tempdir().unwrap();
    let img = big_image(10);
    push(&reg, tmp.path(), &img, "test/img", "v1");
    let store = Store::open(tmp.path().join("store")).unwrap();
    let reference = format!("{}/test/img:v1", reg.host());

    let events = Events::default();
    let p = pull(
        &store,
        &reference,
        &opts(no_creds(tmp.path()), Some(&events)),
    )
    .unwrap();
    assert_eq!(p.reference, format!("127.0.0.1:{}/test/img:v1", reg.port));
    assert_eq!(
        p.manifest_digest.as_str(),
        img.manifest.digest(),
        "skopeo pushed our manifest unchanged"
    );
    assert_eq!(p.config.cmd.as_deref(), Some(&["/bin/sh".to_string()][..]));
    for (info, blob) in p.layers.iter().zip(&img.layers) {
        assert_eq!(std::fs::read(&info.path).unwrap(), blob.bytes);
        assert_eq!(
            reg.blob_gets("test/img", &blob.digest()),
            1,
            "each layer fetched once"
        );
    }
    assert_eq!(events.fetched(), 4);
    let progress_max = events
        .all()
        .iter()
        .filter_map(|e| match e {
            PullEvent::BlobProgress { done, size, .. } if *size > 1_000_000 => Some((*done, *size)),
            _ => None,
        })
        .count();
    assert!(
        progress_max >= 3,
        "a 1.5 MB layer reports progress several times"
    );

    // Warm: a HEAD for the tag, no blob transfer at all.
    let gets_before = reg.all_blob_gets("test/img");
    let events2 = Events::default();
    let again = pull(
        &store,
        &reference,
        &opts(no_creds(tmp.path()), Some(&events2)),
    )
    .unwrap();
    assert_eq!(again.manifest_digest, p.manifest_digest);
    assert_eq!(again.stats, Default::default());
    assert_eq!(events2.started(), 0);
    assert_eq!(reg.all_blob_gets("test/img"), gets_before);
    // By digest: not even the registry's manifest endpoint is needed for blobs.
    let by_digest = format!("{}/test/img@{}", reg.host(), p.manifest_digest);
    let pd = pull(&store, &by_digest, &opts(no_creds(tmp.path()), None)).unwrap();
    assert_eq!(pd.stats.blobs_fetched, 0);
    assert_eq!(pd.layers, p.layers);

    // Missing tag / repository.
    let e = pull(
        &store,
        &format!("{}/test/img:nope", reg.host()),
        &opts(no_creds(tmp.path()), None),
    )
    .unwrap_err();
    assert!(matches!(e, Error::ManifestNotFound { .. }), "{e}");
    let e = pull(
        &store,
        &format!("{}/test/absent:v1", reg.host()),
        &opts(no_creds(tmp.path()), None),
    )
    .unwrap_err();
    assert!(matches!(e, Error::ManifestNotFound { .. }), "{e}");
    eprintln!("absent repository: {e}");
    assert!(e.to_string().contains("test/absent"), "{e}");
    // Nobody listening.
    let e = pull(
        &store,
        &format!("127.0.0.1:{}/test/img:v1", free_port()),
        &opts(no_creds(tmp.path()), None),
    )
    .unwrap_err();
    eprintln!("nobody listening: {e}");
    assert!(matches!(e, Error::Registry { .. }), "{e}");
}

#[test]
fn manifest_list_resolves_to_linux_amd64() {
    let reg = Registry::start(None);
    let tmp = tempfile::tempdir().unwrap();
    let arm = TestImage::small("arm64", 20, 10_000);
    let amd = TestImage::small("amd64", 21, 10_000);
    let index = index_of(&[&arm, &amd]);
    let layout = tmp.path().join("multi");
    let mut blobs = arm.blobs();
    blobs.extend(amd.blobs());
    blobs.push(index.clone());
    write_layout(&layout, &[(Some("multi"), &index)], &blobs);
    reg.push_layout(&layout, "multi", "test/multi");

    let store = Store::open(tmp.path().join("store")).unwrap();
    let p = pull(
        &store,
        &format!("{}/test/multi:multi", reg.host()),
        &opts(no_creds(tmp.path()), None),
    )
    .unwrap();
    assert_eq!(p.index_digest.as_ref().unwrap().as_str(), index.digest());
    assert_eq!(p.manifest_digest.as_str(), amd.manifest.digest());
    assert_eq!(p.config.architecture, "amd64");
    for l in &arm.layers {
        assert_eq!(
            reg.blob_gets("test/multi", &l.digest()),
            0,
            "arm64 layers never fetched"
        );
    }
    // Warm again through the stored index.
    let again = pull(
        &store,
        &format!("{}/test/multi:multi", reg.host()),
        &opts(no_creds(tmp.path()), None),
    )
    .unwrap();
    assert_eq!(again.stats.blobs_fetched, 0);
}

#[test]
fn basic_auth_from_docker_config() {
    let reg = Registry::start(Some(("alice", "wonderland")));
    let tmp = tempfile::tempdir().unwrap();
    let img = TestImage::small("amd64", 30, 10_000);
    push(&reg, tmp.path(), &img, "test/private", "v1");
    let store = Store::open(tmp.path().join("store")).unwrap();
    let reference = format!("{}/test/private:v1", reg.host());

    // No credentials: 401 with what to do.
    let e = pull(&store, &reference, &opts(no_creds(tmp.path()), None)).unwrap_err();
    assert!(matches!(e, Error::Unauthorized { .. }), "{e}");
    let msg = e.to_string();
    eprintln!("no credentials: {msg}");
    assert!(
        msg.contains("401")
            && msg.contains(&reg.host())
            && msg.contains("test/private")
            && msg.contains("config.json"),
        "{msg}"
    );

    let write_config = |dir: &Path, user: &str, pass: &str| {
        std::fs::create_dir_all(dir).unwrap();
        let auth = base64::engine::general_purpose::STANDARD.encode(format!("{user}:{pass}"));
        let cfg = serde_json::json!({"auths": {reg.host(): {"auth": auth}}});
        std::fs::write(dir.join("config.json"), cfg.to_string()).unwrap();
    };
    // Wrong password: rejected, and the message says whose.
    let wrong = tmp.path().join("wrong");
    write_config(&wrong, "alice", "nope");
    let cfg = RegistryConfig {
        docker_config_dir: Some(wrong),
        ..RegistryConfig::default()
    };
    let e = pull(&store, &reference, &opts(cfg, None)).unwrap_err();
    eprintln!("wrong credentials: {e}");
    assert!(
        matches!(e, Error::Unauthorized { .. }) && e.to_string().contains("rejected"),
        "{e}"
    );

    // Right password.
    let right = tmp.path().join("right");
    write_config(&right, "alice", "wonderland");
    let cfg = RegistryConfig {
        docker_config_dir: Some(right),
        ..RegistryConfig::default()
    };
    let p = pull(&store, &reference, &opts(cfg, None)).unwrap();
    assert_eq!(p.manifest_digest.as_str(), img.manifest.digest());
    assert!(store
        .images()
        .unwrap()
        .iter()
        .any(|r| r.reference == p.reference));
}

#[test]
fn mirror_serves_docker_hub_names_and_failures_name_the_mirror() {
    let reg = Registry::start(None);
    let tmp = tempfile::tempdir().unwrap();
    let img = TestImage::small("amd64", 40, 10_000);
    push(&reg, tmp.path(), &img, "library/busybox", "latest");
    let store = Store::open(tmp.path().join("store")).unwrap();

    // docker.io -> the local registry: `busybox` is served from the mirror.
    let cfg = no_creds(tmp.path())
        .with_mirror("docker.io", &format!("http://{}", reg.host()))
        .unwrap();
    let p = pull(&store, "busybox", &opts(cfg, None)).unwrap();
    assert_eq!(p.reference, "docker.io/library/busybox:latest");
    assert_eq!(p.manifest_digest.as_str(), img.manifest.digest());
    assert!(reg
        .log_text()
        .contains("/v2/library/busybox/manifests/latest"));

    // The same mapping through the env-var syntax.
    let mut cfg = no_creds(tmp.path());
    cfg.add_mirrors_spec(&format!("docker.io=http://{}", reg.host()), "test")
        .unwrap();
    pull(&store, "docker.io/library/busybox:latest", &opts(cfg, None)).unwrap();

    // A dead mirror first: reported, then the registry itself serves.
    push(&reg, tmp.path(), &img, "test/img", "v1");
    let dead = free_port();
    let cfg = no_creds(tmp.path())
        .with_mirror(&reg.host(), &format!("http://127.0.0.1:{dead}"))
        .unwrap();
    let events = Events::default();
    pull(
        &store,
        &format!("{}/test/img:v1", reg.host()),
        &opts(cfg, Some(&events)),
    )
    .unwrap();
    assert!(events.all().iter().any(
        |e| matches!(e, PullEvent::EndpointFailed { endpoint, .. } if endpoint == &format!("mirror http://127.0.0.1:{dead}"))
    ));

    // An https mirror in front of a plain-http server: the TLS handshake
    // fails (rustls with the ring provider is in use), and we fall back.
    let cfg = no_creds(tmp.path())
        .with_mirror(&reg.host(), &format!("https://{}", reg.host()))
        .unwrap();
    let events = Events::default();
    pull(
        &store,
        &format!("{}/test/img:v1", reg.host()),
        &opts(cfg, Some(&events)),
    )
    .unwrap();
    let tls_error = events.all().into_iter().find_map(|e| match e {
        PullEvent::EndpointFailed { endpoint, error }
            if endpoint.starts_with("mirror https://") =>
        {
            Some(error)
        }
        _ => None,
    });
    eprintln!("https mirror on a plain-http port: {tls_error:?}");
    let tls_error = tls_error.expect("the https mirror failed");
    assert!(
        tls_error.contains("corrupt message") && tls_error.contains("http://"),
        "{tls_error}"
    );

    // Everything dead: the error lists each endpoint.
    let dead2 = free_port();
    let cfg = no_creds(tmp.path())
        .with_mirror(
            &format!("127.0.0.1:{dead2}"),
            &format!("http://127.0.0.1:{dead}"),
        )
        .unwrap();
    let e = pull(
        &store,
        &format!("127.0.0.1:{dead2}/test/img:v1"),
        &opts(cfg, None),
    )
    .unwrap_err();
    assert!(matches!(e, Error::AllEndpointsFailed { .. }), "{e}");
    let msg = e.to_string();
    eprintln!("all endpoints dead: {msg}");
    assert!(
        msg.contains(&format!("mirror http://127.0.0.1:{dead}"))
            && msg.contains(&format!("http://127.0.0.1:{dead2}")),
        "{msg}"
    );
}

#[test]
fn concurrent_pulls_fetch_each_blob_once_from_the_registry() {
    let reg = Registry::start(None);
    let tmp = tempfile::tempdir().unwrap();
    let img = big_image(50);
    push(&reg, tmp.path(), &img, "test/conc", "v1");
    let root = tmp.path().join("store");
    let reference = format!("{}/test/conc:v1", reg.host());
    let barrier = Arc::new(Barrier::new(2));
    let threads: Vec<_> = (0..2)
        .map(|_| {
            let (root, reference, barrier, cfg) = (
                root.clone(),
                reference.clone(),
                barrier.clone(),
                no_creds(tmp.path()),
            );
            std::thread::spawn(move || {
                let store = Store::open(&root).unwrap();
                barrier.wait();
                pull(&store, &reference, &opts(cfg, None)).unwrap()
            })
        })
        .collect();
    let pulled: Vec<_> = threads.into_iter().map(|t| t.join().unwrap()).collect();
    assert_eq!(pulled[0].manifest_digest, pulled[1].manifest_digest);
    for blob in img.layers.iter().chain([&img.config]) {
        assert_eq!(
            reg.blob_gets("test/conc", &blob.digest()),
            1,
            "blob {} fetched once",
            blob.digest()
        );
    }
    let total: u64 = pulled.iter().map(|p| p.stats.bytes_fetched).sum();
    let expected: u64 = img.blobs().iter().map(|b| b.bytes.len() as u64).sum();
    assert_eq!(
        total, expected,
        "every blob (manifest included) written once across both pulls"
    );
}

#[test]
fn broken_download_leaves_no_blob() {
    let reg = Registry::start(None);
    let tmp = tempfile::tempdir().unwrap();
    let img = big_image(60);
    push(&reg, tmp.path(), &img, "test/cut", "v1");
    let big = &img.layers[1];
    let proxy = Proxy::start(reg.port, &big.hex(), 200_000, Mode::Cut);
    let store = Store::open(tmp.path().join("store")).unwrap();

    let e = pull(
        &store,
        &format!("127.0.0.1:{}/test/cut:v1", proxy.port),
        &opts(no_creds(tmp.path()), None),
    )
    .unwrap_err();
    eprintln!("broken download: {e}");
    assert!(
        matches!(e, Error::Registry { .. } | Error::SizeMismatch { .. }),
        "{e}"
    );
    let d = Digest::parse(&big.digest()).unwrap();
    assert!(
        !store.blob_path(&d).exists(),
        "no partial blob at the final path"
    );
    assert!(
        temp_files(store.root()).is_empty(),
        "the temp file is removed"
    );
    assert!(store.images().unwrap().is_empty());

    // Straight from the registry it completes.
    let p = pull(
        &store,
        &format!("{}/test/cut:v1", reg.host()),
        &opts(no_creds(tmp.path()), None),
    )
    .unwrap();
    assert_eq!(std::fs::read(&p.layers[1].path).unwrap(), big.bytes);
}

/// Run by `killed_pull_leaves_no_blob` in a child process, which it kills.
#[test]
#[ignore = "helper process for killed_pull_leaves_no_blob"]
fn child_pull_helper() {
    let (Ok(root), Ok(reference), Ok(cfg_dir)) = (
        std::env::var("SM_CHILD_STORE"),
        std::env::var("SM_CHILD_REF"),
        std::env::var("SM_CHILD_DOCKER_CONFIG"),
    ) else {
        return;
    };
    let store = Store::open(root).unwrap();
    let cfg = RegistryConfig {
        docker_config_dir: Some(cfg_dir.into()),
        ..RegistryConfig::default()
    };
    let _ = pull(&store, &reference, &opts(cfg, None));
}

#[test]
fn killed_pull_leaves_no_blob_and_gc_cleans_up() {
    let reg = Registry::start(None);
    let tmp = tempfile::tempdir().unwrap();
    let img = big_image(70);
    push(&reg, tmp.path(), &img, "test/kill", "v1");
    let big = &img.layers[1];
    // Forward 1.2 MB of the 1.5 MB layer, then hang: the child sits mid-download.
    let proxy = Proxy::start(reg.port, &big.hex(), 1_200_000, Mode::Stall);
    let root = tmp.path().join("store");
    let store = Store::open(&root).unwrap();
    let mut child = Command::new(std::env::current_exe().unwrap())
        .args(["child_pull_helper", "--exact", "--ignored", "--nocapture"])
        .env("SM_CHILD_STORE", &root)
        .env(
            "SM_CHILD_REF",
            format!("127.0.0.1:{}/test/kill:v1", proxy.port),
        )
        .env("SM_CHILD_DOCKER_CONFIG", tmp.path().join("none"))
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let partial = temp_files(&root).into_iter().find(|p| {
            p.to_string_lossy().contains(&big.hex())
                && std::fs::metadata(p).map(|m| m.len()).unwrap_or(0) > 0
        });
        if partial.is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the child never started writing the layer"
        );
        assert!(
            child.try_wait().unwrap().is_none(),
            "the child pull ended early"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap(); // SIGKILL: no destructor runs
    child.wait().unwrap();
    let d = Digest::parse(&big.digest()).unwrap();
    assert!(
        !store.blob_path(&d).exists(),
        "a killed download leaves no blob at the final path"
    );
    // Other blobs may have been mid-download too when the child died (layers
    // download in parallel), so count only the big layer's partial file.
    let leftovers = temp_files(&root);
    let big_partials = leftovers
        .iter()
        .filter(|p| p.to_string_lossy().contains(&big.hex()))
        .count();
    assert_eq!(big_partials, 1, "the big layer's partial temp file remains");

    // The dead process's lock is gone: a new pull completes.
    let p = pull(
        &store,
        &format!("{}/test/kill:v1", reg.host()),
        &opts(no_creds(tmp.path()), None),
    )
    .unwrap();
    assert_eq!(
        Digest::of_bytes(&std::fs::read(&p.layers[1].path).unwrap()),
        d
    );
    // gc removes the leftover and keeps the pulled image.
    let report = store.gc().unwrap();
    assert_eq!(report.temp_files_removed, leftovers.len() as u64);
    assert_eq!(report.blobs_removed, 0);
    assert!(temp_files(&root).is_empty());
    assert!(store
        .image(&Source::parse(&p.reference).unwrap())
        .unwrap()
        .is_some());
    drop(proxy);
}
