//! `volume`: writes on a volume (ext4 in the guest on a host file) against
//! the same writes on a plain writable `--disk` (the raw block device), in
//! one VM, interleaved, the order alternating each round.
//!
//! Two cases, timed on the host around one `exec` each (its ~1 ms of exec
//! overhead is noise at these sizes): sequential 1 MiB writes of `mib`
//! MiB ended by an fsync, and 4 KiB `O_DIRECT` writes (each one a
//! synchronous virtio-blk request: the per-request cost). The guest is
//! busybox, so `dd` does the writing; there is no random-offset case
//! because a file-backed disk on the host's page cache serves sequential
//! and random 4 KiB requests alike.

use crate::{quantile, step, BoxError};
use std::time::{Duration, Instant};
use supermachine::{Disk, Image, Vm, VmConfig, Volume};

/// 4 KiB writes per O_DIRECT run (16 MiB).
const SMALL_WRITES: u64 = 4096;

pub fn run(iterations: usize, mib: u64) -> Result<(), BoxError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let scratch = std::env::temp_dir().join(format!("sm-bench-volume-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    let result = rt.block_on(bench(&scratch, iterations.max(1), mib.max(1)));
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// Where each case writes: a file on the volume, or the raw disk.
struct Target {
    name: &'static str,
    seq: String,
    small: String,
    /// The raw device (not truncated; the small writes go past the
    /// sequential region) rather than files.
    device: bool,
}

async fn bench(dir: &std::path::Path, iterations: usize, mib: u64) -> Result<(), BoxError> {
    // Room for both cases with ext4's own blocks around them.
    let size_mib = mib + 16 + 64;
    let raw = dir.join("raw.img");
    std::fs::File::create(&raw)?.set_len(size_mib << 20)?;
    let config = VmConfig {
        disks: vec![Disk {
            path: raw,
            read_only: false,
        }],
        volumes: vec![Volume::new(dir.join("volume.img"), "/data").size_mib(size_mib)],
        ..VmConfig::default()
    };
    let vm = Vm::start(&Image::builtin(), &config).await?;
    step("vm ready");
    // The raw disk is disk1 (the root is disk0); find its name by serial.
    let find =
        "for d in /sys/block/vd*; do [ \"$(cat $d/serial)\" = disk1 ] && echo /dev/${d##*/}; done";
    let out = vm.exec(["sh", "-c", find]).await?;
    let device = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !device.starts_with("/dev/vd") {
        return Err(format!("no raw disk found in the guest: {out:?}").into());
    }
    let targets = [
        Target {
            name: "volume (ext4 file)",
            seq: "/data/seq".into(),
            small: "/data/small".into(),
            device: false,
        },
        Target {
            name: "--disk (raw device)",
            seq: device.clone(),
            small: device,
            device: true,
        },
    ];
    // The small writes go past the sequential region on the raw device.
    let small_seek = mib + 8;
    let seq_case = |t: &Target| {
        let notrunc = if t.device { ",notrunc" } else { "" };
        format!(
            "dd if=/dev/zero of={} bs=1M count={mib} conv=fsync{notrunc} 2>/dev/null",
            t.seq
        )
    };
    let small_case = |t: &Target| {
        let past = if t.device {
            format!(" conv=notrunc seek={}", small_seek * 256)
        } else {
            String::new()
        };
        format!(
            "dd if=/dev/zero of={} bs=4k count={SMALL_WRITES} oflag=direct{past} 2>/dev/null",
            t.small
        )
    };
    let timed = |script: String| {
        let vm = &vm;
        async move {
            let t = Instant::now();
            let out = vm.exec(["sh", "-c", &script]).await?;
            if !out.status.success() {
                return Err::<Duration, BoxError>(format!("{script}: {out:?}").into());
            }
            Ok(t.elapsed())
        }
    };
    // Untimed warm-up of every case (allocation on the volume, page cache).
    for t in &targets {
        timed(seq_case(t)).await?;
        timed(small_case(t)).await?;
    }
    let mut seq = [Vec::new(), Vec::new()];
    let mut small = [Vec::new(), Vec::new()];
    for round in 0..iterations {
        let order: [usize; 2] = if round % 2 == 0 { [0, 1] } else { [1, 0] };
        for i in order {
            seq[i].push(timed(seq_case(&targets[i])).await?);
            small[i].push(timed(small_case(&targets[i])).await?);
        }
    }
    step("rounds done");
    vm.stop().await?;

    println!("writes in one VM, {iterations} interleaved rounds (p50)");
    println!("| target | sequential {mib} MiB + fsync, MB/s | 4 KiB O_DIRECT writes, µs each |");
    println!("| --- | --- | --- |");
    let mut rows = Vec::new();
    for (i, t) in targets.iter().enumerate() {
        let s = quantile(&mut seq[i], 0.5);
        let w = quantile(&mut small[i], 0.5);
        let mbps = (mib << 20) as f64 / s.as_secs_f64().max(1e-9) / 1e6;
        let us = w.as_secs_f64() * 1e6 / SMALL_WRITES as f64;
        println!("| {} | {mbps:.0} | {us:.1} |", t.name);
        rows.push((mbps, us));
    }
    println!(
        "volume / disk: sequential {:.2} ×, 4 KiB write time {:.2} ×",
        rows[0].0 / rows[1].0,
        rows[0].1 / rows[1].1
    );
    Ok(())
}
