//! `snapshot`: cold boot to first exec done against restore to first exec
//! done, interleaved, on the same image; plus what a snapshot costs to take
//! and store, and host memory per restored VM.

use crate::{quantile, step, BoxError};
use std::time::{Duration, Instant};
use supermachine::{Image, Vm, VmConfig};

/// Time given a standby worker to start before it is used.
const STANDBY_SETTLE: Duration = Duration::from_millis(1500);

pub fn run(iterations: usize, memory_mib: u64, clones: usize) -> Result<(), BoxError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let config = VmConfig {
            memory_mib,
            ..VmConfig::default()
        };
        let dir = std::env::temp_dir().join(format!("sm-bench-snapshot-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        // The snapshot: a booted VM with a workload running.
        let vm = Vm::start(&Image::builtin(), &config).await?;
        vm.exec_builder()
            .argv(["sleep", "1000000"])
            .start_detached()
            .await?;
        let started = Instant::now();
        let image = vm.snapshot(dir.join("snap")).await?;
        let snapshot_took = started.elapsed();
        vm.stop().await?;
        let snap = image.snapshot_dir().ok_or("no snapshot dir")?.to_path_buf();
        let stored = std::fs::metadata(snap.join("memory"))
            .map(|m| std::os::unix::fs::MetadataExt::blocks(&m) * 512)?;

        let mut cold = Vec::new();
        let mut warm = Vec::new();
        let mut prestarted = Vec::new();
        for i in 0..=iterations {
            let t = Instant::now();
            let vm = Vm::start(&Image::builtin(), &config).await?;
            vm.exec(["true"]).await?;
            let a = t.elapsed();
            vm.stop().await?;
            let t = Instant::now();
            let vm = Vm::start(&image, &config).await?;
            vm.exec(["true"]).await?;
            let b = t.elapsed();
            vm.stop().await?;
            // Into a worker started ahead (untimed), as a pool or a server
            // that called prestart_workers would have it.
            supermachine::prestart_workers(1);
            tokio::time::sleep(STANDBY_SETTLE).await;
            let t = Instant::now();
            let vm = Vm::start(&image, &config).await?;
            vm.exec(["true"]).await?;
            let c = t.elapsed();
            supermachine::prestart_workers(0);
            vm.stop().await?;
            step(&format!(
                "run {i}: cold {a:?}, restore {b:?}, restore into a prestarted worker {c:?}"
            ));
            if i > 0 {
                cold.push(a);
                warm.push(b);
                prestarted.push(c);
            }
        }
        let cold_p50 = quantile(&mut cold, 0.5);
        println!(
            "{memory_mib} MiB guest, builtin image, {iterations} runs each, interleaved (ms)"
        );
        println!("| start → first `exec true` done | p50 | p90 | cold boot / this |");
        println!("| --- | --- | --- | --- |");
        for (name, samples) in [
            ("cold boot", &mut cold),
            ("restore, new worker process", &mut warm),
            ("restore into a prestarted worker", &mut prestarted),
        ] {
            let p50 = quantile(samples, 0.5);
            println!(
                "| {name} | {} | {} | {:.1} |",
                crate::ms(p50),
                crate::ms(quantile(samples, 0.9)),
                cold_p50.as_secs_f64() / p50.as_secs_f64()
            );
        }
        println!(
            "snapshot of a running VM: {} ms; memory file {} MiB stored of {memory_mib} MiB",
            crate::ms(snapshot_took),
            stored >> 20
        );

        // Host memory per idle restored VM: PSS of the workers, `clones` at once.
        let mut vms = Vec::new();
        for _ in 0..clones {
            let vm = Vm::start(&image, &config).await?;
            vm.exec(["true"]).await?;
            vms.push(vm);
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
        let pss: u64 = vms.iter().map(|vm| pss_kib(vm.info().pid)).sum();
        println!(
            "{clones} VMs restored from one snapshot: {:.1} MiB PSS per VM (host, worker processes)",
            pss as f64 / 1024.0 / clones as f64
        );
        for vm in vms {
            vm.stop().await?;
        }
        let _ = std::fs::remove_dir_all(&dir);
        Ok(())
    })
}

/// Proportional set size of a process, from /proc/PID/smaps_rollup.
fn pss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/smaps_rollup"))
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Pss:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}
