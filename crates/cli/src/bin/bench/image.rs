//! `image`: pull + unpack + root filesystem build of one image, cold (an
//! empty blob store and rootfs cache each run) and warm (both kept: the
//! pull only checks the source, the build finds its file). The cold time is
//! split at the first build event into pull (resolve, download, verify) and
//! build (apply the layers, write the EROFS image). No VM is booted, so this
//! needs no KVM. A registry source is contacted on every run, cold and warm.
//! Every timed case starts after a sync(2), so none pays for the writeback
//! of the files the one before it wrote.
//!
//! `--local-registry` serves the image from a registry started here
//! ([`crate::registry`]); `--compare-skopeo-umoci` times `skopeo copy` +
//! `umoci unpack` on the same source in the same run, interleaved
//! ([`crate::skopeo_umoci`]).

use crate::registry::Registry;
use crate::skopeo_umoci;
use crate::{quantile, BoxError};
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use supermachine::oci::{PullPolicy, Store};
use supermachine::{Image, ImageEvent, PullOptions};

pub struct Options {
    pub iterations: usize,
    pub local_registry: bool,
    pub compare_skopeo_umoci: bool,
}

pub fn run(source: &str, options: &Options) -> Result<(), BoxError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let scratch = std::env::temp_dir().join(format!("sm-bench-image-{}", std::process::id()));
    let result = serve_and_bench(&rt, source, options, &scratch);
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// The benchmark, against a registry started here with `--local-registry`
/// (stopped before `scratch` is removed).
fn serve_and_bench(
    rt: &tokio::runtime::Runtime,
    source: &str,
    options: &Options,
    scratch: &Path,
) -> Result<(), BoxError> {
    let registry = if options.local_registry {
        Some(Registry::serve(source, &scratch.join("registry"))?)
    } else {
        None
    };
    let source = registry.as_ref().map_or(source, |r| r.reference.as_str());
    rt.block_on(bench(source, options, scratch))
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

#[derive(Default)]
struct Ours {
    cold: Vec<Duration>,
    cold_pull: Vec<Duration>,
    cold_build: Vec<Duration>,
    warm: Vec<Duration>,
}

impl Ours {
    /// One cold and one warm run in `dir` (removed after); the image
    /// described on the first call.
    async fn measure(
        &mut self,
        source: &str,
        dir: &Path,
        described: &mut Option<String>,
    ) -> Result<(), BoxError> {
        crate::settle();
        let (c, image) = once(source, dir).await?;
        crate::settle();
        let (w, _) = once(source, dir).await?;
        eprintln!(
            "  supermachine: cold {:?} (pull {:?}), warm {:?}",
            c.total, c.pull, w.total
        );
        self.cold.push(c.total);
        self.cold_pull.push(c.pull);
        self.cold_build.push(c.total - c.pull);
        self.warm.push(w.total);
        if described.is_none() {
            let o = image.oci().ok_or("not an OCI image")?;
            let rootfs = image.rootfs_path().ok_or("no rootfs")?;
            *described = Some(format!(
                "{} ({} layers, {} MiB compressed, rootfs {} MiB)",
                o.reference,
                o.layers.len(),
                o.size() >> 20,
                std::fs::metadata(rootfs)?.len() >> 20
            ));
        }
        std::fs::remove_dir_all(dir)?;
        Ok(())
    }
}

async fn bench(source: &str, options: &Options, scratch: &Path) -> Result<(), BoxError> {
    let iterations = options.iterations.max(1);
    let tools = if options.compare_skopeo_umoci {
        Some(skopeo_umoci::versions()?)
    } else {
        None
    };
    let mut ours = Ours::default();
    let mut theirs = skopeo_umoci::Samples::default();
    let mut described = None;
    for i in 0..iterations {
        eprintln!("run {}/{iterations}", i + 1);
        let dir = scratch.join(format!("run{i}"));
        // Alternate which goes first, so neither always runs on a cooler cache.
        let theirs_first = i % 2 == 1;
        if tools.is_some() && theirs_first {
            theirs.measure(source, &dir.join("theirs"))?;
        }
        ours.measure(source, &dir.join("ours"), &mut described)
            .await?;
        if tools.is_some() && !theirs_first {
            theirs.measure(source, &dir.join("theirs"))?;
        }
    }
    println!(
        "{}: pull + unpack + rootfs, {iterations} runs (ms)",
        described.unwrap_or_default()
    );
    if let Some(tools) = &tools {
        println!("against {tools}, interleaved");
    }
    println!("| case | min | median | max |");
    println!("| --- | --- | --- | --- |");
    let mut rows = vec![
        ("supermachine cold (empty store and cache)", &mut ours.cold),
        ("  of which pull", &mut ours.cold_pull),
        ("  of which layers + EROFS", &mut ours.cold_build),
        ("supermachine warm (all cached)", &mut ours.warm),
    ];
    if tools.is_some() {
        rows.extend([
            (
                "skopeo copy + umoci unpack cold (fresh dirs)",
                &mut theirs.cold,
            ),
            ("  of which skopeo copy", &mut theirs.cold_copy),
            ("  of which umoci unpack", &mut theirs.cold_unpack),
            (
                "skopeo copy + umoci unpack warm (blobs kept; umoci has no cache)",
                &mut theirs.warm,
            ),
            (
                "umoci raw unpack alone (rootfs tree only)",
                &mut theirs.raw_unpack,
            ),
        ]);
    }
    for (name, v) in rows {
        println!(
            "| {name} | {} | {} | {} |",
            ms(quantile(v, 0.0)),
            ms(quantile(v, 0.5)),
            ms(quantile(v, 1.0))
        );
    }
    if tools.is_some() {
        let ratio = |a: &mut [Duration], b: &mut [Duration]| {
            quantile(a, 0.5).as_secs_f64() / quantile(b, 0.5).as_secs_f64()
        };
        let (cold, warm) = (
            ratio(&mut ours.cold, &mut theirs.cold),
            ratio(&mut ours.warm, &mut theirs.warm),
        );
        println!(
            "median ratio supermachine / (skopeo + umoci): cold {cold:.3} ({:.1}x faster), warm {warm:.5} ({:.0}x faster)",
            1.0 / cold,
            1.0 / warm
        );
    }
    Ok(())
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1e3)
}
