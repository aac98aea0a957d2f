//! `pool`: how fast a warm pool hands out a VM, and how many restores per
//! second the host sustains.

use crate::{quantile, step, BoxError};
use std::time::{Duration, Instant};
use supermachine::{Image, PoolOptions, Vm, VmConfig};

pub fn run(iterations: usize, restores: usize, concurrency: usize) -> Result<(), BoxError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let dir = std::env::temp_dir().join(format!("sm-bench-pool-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let vm = Vm::start(&Image::builtin(), &VmConfig::default()).await?;
        let image = vm.snapshot(dir.join("snap")).await?;
        vm.stop().await?;

        // Acquire from a warm pool: the VM is restored before it is asked for.
        let pool = image.pool(PoolOptions {
            min: 2,
            max: 4,
            restore_on_release: true,
            ..PoolOptions::default()
        })?;
        let mut acquire = Vec::new();
        let mut first_exec = Vec::new();
        for i in 0..iterations {
            pool.wait_ready(Duration::from_secs(120)).await?;
            let t = Instant::now();
            let vm = pool.acquire().await?;
            let a = t.elapsed();
            vm.exec(["true"]).await?;
            let b = t.elapsed();
            vm.release();
            step(&format!("acquire {i}: {a:?}, with exec true {b:?}"));
            acquire.push(a);
            first_exec.push(b);
        }
        pool.shutdown().await;
        println!("warm pool (min 2, max 4, restore on release), {iterations} acquires (ms)");
        println!("| | p50 | p90 |");
        println!("| --- | --- | --- |");
        for (name, samples) in [
            ("`acquire()`", &mut acquire),
            ("`acquire()` → first `exec true` done", &mut first_exec),
        ] {
            println!(
                "| {name} | {} | {} |",
                crate::ms(quantile(samples, 0.5)),
                crate::ms(quantile(samples, 0.9))
            );
        }

        // Sustained restores: `concurrency` at a time, each restored, used
        // once and stopped.
        let started = Instant::now();
        let next = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..concurrency {
            let (image, next) = (image.clone(), next.clone());
            tasks.push(tokio::spawn(async move {
                while next.fetch_add(1, std::sync::atomic::Ordering::Relaxed) < restores {
                    let vm = Vm::start(&image, &VmConfig::default()).await?;
                    vm.exec(["true"]).await?;
                    drop(vm);
                }
                Ok::<_, supermachine::Error>(())
            }));
        }
        for task in tasks {
            task.await??;
        }
        let took = started.elapsed();
        println!(
            "{restores} restores ({concurrency} at a time; each restored, `exec true`, stopped): {:.1} restores/s",
            restores as f64 / took.as_secs_f64()
        );
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    })
}
