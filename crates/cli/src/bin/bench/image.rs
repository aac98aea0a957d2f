//! `image`: pull + unpack + root filesystem build of one image, cold (an
//! empty blob store and rootfs cache each run) and warm (both kept: the
//! pull only checks the source, the build finds its file). The cold time is
//! split at the first build event into pull (resolve, download, verify) and
//! build (apply the layers, write the EROFS image). No VM is booted, so this
//! needs no KVM. A registry source is contacted on every run, cold and warm.

use crate::{quantile, BoxError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use supermachine::oci::{PullPolicy, Store};
use supermachine::{Image, ImageEvent, PullOptions};

pub fn run(source: &str, iterations: usize) -> Result<(), BoxError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let scratch = std::env::temp_dir().join(format!("sm-bench-image-{}", std::process::id()));
    let result = rt.block_on(bench(source, iterations.max(1), &scratch));
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

struct Run {
    total: Duration,
    /// Until the build started (the pull's share of a cold run).
    pull: Duration,
}

async fn once(source: &str, dir: &std::path::Path) -> Result<(Run, Image), BoxError> {
    let started = Instant::now();
    let build_at: Arc<Mutex<Option<Instant>>> = Arc::default();
    let mark = build_at.clone();
    let options = PullOptions {
        policy: PullPolicy::Always,
        store: Some(Store::open(dir.join("store"))?),
        rootfs_dir: Some(dir.join("rootfs")),
        progress: Some(Arc::new(move |e: &ImageEvent| {
            if matches!(
                e,
                ImageEvent::BuildStarted { .. } | ImageEvent::RootfsCached { .. }
            ) {
                if let Ok(mut m) = mark.lock() {
                    m.get_or_insert_with(Instant::now);
                }
            }
        })),
        ..PullOptions::from_env()?
    };
    let image = Image::pull(source, &options).await?;
    let total = started.elapsed();
    let pull = build_at
        .lock()
        .ok()
        .and_then(|m| *m)
        .map_or(total, |t| t - started);
    Ok((Run { total, pull }, image))
}

async fn bench(source: &str, iterations: usize, scratch: &std::path::Path) -> Result<(), BoxError> {
    let (mut cold, mut cold_pull, mut cold_build, mut warm) =
        (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    let mut described = None;
    for i in 0..iterations {
        let dir = scratch.join(format!("run{i}"));
        let (c, image) = once(source, &dir).await?;
        let (w, _) = once(source, &dir).await?;
        eprintln!(
            "run {i}: cold {:?} (pull {:?}), warm {:?}",
            c.total, c.pull, w.total
        );
        cold.push(c.total);
        cold_pull.push(c.pull);
        cold_build.push(c.total - c.pull);
        warm.push(w.total);
        if described.is_none() {
            let o = image.oci().ok_or("not an OCI image")?;
            let rootfs = image.rootfs_path().ok_or("no rootfs")?;
            described = Some(format!(
                "{} ({} layers, {} MiB compressed, rootfs {} MiB)",
                o.reference,
                o.layers.len(),
                o.size() >> 20,
                std::fs::metadata(rootfs)?.len() >> 20
            ));
        }
        std::fs::remove_dir_all(&dir)?;
    }
    println!(
        "{}: pull + unpack + rootfs, {iterations} runs (ms)",
        described.unwrap_or_default()
    );
    println!("| case | min | median | max |");
    println!("| --- | --- | --- | --- |");
    for (name, v) in [
        ("cold (empty store and cache)", &mut cold),
        ("  of which pull", &mut cold_pull),
        ("  of which layers + EROFS", &mut cold_build),
        ("warm (all cached)", &mut warm),
    ] {
        let ms = |d: Duration| format!("{:.1}", d.as_secs_f64() * 1e3);
        println!(
            "| {name} | {} | {} | {} |",
            ms(quantile(v, 0.0)),
            ms(quantile(v, 0.5)),
            ms(quantile(v, 1.0))
        );
    }
    Ok(())
}
