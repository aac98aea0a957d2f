//! `restore-floor`: the host-side floor under a restore, with no guest
//! running: mapping the snapshot's memory copy-on-write, creating the KVM
//! VM, and the whole VMM restore (devices, VM and vCPU state). Runs on any
//! /dev/kvm, PVM included, since no guest instruction executes.

use crate::{quantile, BoxError};
use std::time::Instant;
use supermachine_vmm::snapshot::bundle::{read_state, write_state, MEMORY_FILE};
use supermachine_vmm::snapshot::memory::map_memory;
use supermachine_vmm::{DiskConfig, EmptyVm, RestoreConfig, Vm, VsockConfig};

pub fn run(snapshot: &std::path::Path, iterations: usize) -> Result<(), BoxError> {
    let meta = supermachine::snapshot::read_meta(snapshot)?;
    let scratch = std::env::temp_dir().join(format!("sm-bench-floor-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&scratch);
    std::fs::create_dir_all(&scratch)?;
    let result = measure(snapshot, &meta, &scratch, iterations);
    let _ = std::fs::remove_dir_all(&scratch);
    result
}

/// A copy of `snapshot` in `scratch/snap` (memory and disks hard-linked)
/// whose state this host's KVM accepts: a host may reject MSRs another
/// one saved (PVM refuses IA32_FEATURE_CONTROL, for one). Each rejected
/// MSR is dropped and named; everything else is restored as saved.
fn acceptable_copy(
    snapshot: &std::path::Path,
    meta: &supermachine::snapshot::SnapshotMeta,
    scratch: &std::path::Path,
) -> Result<std::path::PathBuf, BoxError> {
    let copy = scratch.join("snap");
    std::fs::create_dir_all(&copy)?;
    std::fs::hard_link(snapshot.join(MEMORY_FILE), copy.join(MEMORY_FILE))?;
    for d in &meta.disks {
        std::fs::hard_link(snapshot.join(&d.file), copy.join(&d.file))?;
    }
    let mut state = read_state(snapshot)?;
    let mut dropped = Vec::new();
    for attempt in 0..64 {
        let _ = std::fs::remove_file(copy.join("state"));
        write_state(&copy, &state)?;
        let config = restore_config(&copy, meta, &scratch.join(format!("probe-{attempt}.sock")));
        match Vm::restore(&config) {
            Ok(_vm) => {
                if !dropped.is_empty() {
                    println!("this KVM rejects MSRs {dropped:x?}: left out of the restored state");
                }
                return Ok(copy);
            }
            Err(e) => {
                let text = e.to_string();
                let index = text
                    .split("rejected MSR 0x")
                    .nth(1)
                    .and_then(|rest| rest.split_whitespace().next())
                    .and_then(|hex| u32::from_str_radix(hex, 16).ok())
                    .ok_or(e)?;
                for vcpu in &mut state.machine.vcpus {
                    vcpu.msrs.retain(|m| m.index != index);
                }
                dropped.push(index);
            }
        }
    }
    Err("this KVM rejects too many of the saved MSRs".into())
}

fn restore_config(
    snapshot: &std::path::Path,
    meta: &supermachine::snapshot::SnapshotMeta,
    socket: &std::path::Path,
) -> RestoreConfig {
    RestoreConfig {
        snapshot_dir: snapshot.to_path_buf(),
        disks: meta
            .disks
            .iter()
            .map(|d| DiskConfig {
                path: snapshot.join(&d.file),
                read_only: d.read_only,
            })
            .collect(),
        vsock: Some(VsockConfig {
            guest_cid: 3,
            uds_path: socket.to_path_buf(),
        }),
        rng: true,
        fs: Vec::new(),
        net: None,
        serial_log: None,
        serial_log_cap: supermachine_vmm::capped_log::DEFAULT_SERIAL_LOG_CAP,
        console_echo: false,
    }
}

fn measure(
    snapshot: &std::path::Path,
    meta: &supermachine::snapshot::SnapshotMeta,
    scratch: &std::path::Path,
    iterations: usize,
) -> Result<(), BoxError> {
    let snapshot = &acceptable_copy(snapshot, meta, scratch)?;
    let state = read_state(snapshot)?;
    let (mut map, mut create, mut restore) = (Vec::new(), Vec::new(), Vec::new());
    // Restored VMs never run, so their device threads stay: keep them
    // until the end and free everything at exit.
    let mut keep = Vec::new();
    for i in 0..iterations {
        let t = Instant::now();
        let file = std::fs::File::open(snapshot.join(MEMORY_FILE))?;
        let mem = map_memory(&file, &state.memory)?;
        map.push(t.elapsed());
        drop(mem);

        let t = Instant::now();
        let empty = EmptyVm::new()?;
        create.push(t.elapsed());

        let config = restore_config(snapshot, meta, &scratch.join(format!("vsock-{i}.sock")));
        let t = Instant::now();
        let vm = Vm::restore_into(empty, &config)?;
        restore.push(t.elapsed());
        keep.push(vm);
    }
    println!(
        "{} MiB snapshot, {iterations} times each, no guest running (ms)",
        meta.memory_mib
    );
    println!("| step | p50 | p90 |");
    println!("| --- | --- | --- |");
    for (name, samples) in [
        ("map the memory file copy-on-write", &mut map),
        ("create the KVM VM (irqchip, PIT)", &mut create),
        (
            "restore into it: state file, memory, devices, VM and vCPU state",
            &mut restore,
        ),
    ] {
        println!(
            "| {name} | {} | {} |",
            crate::ms(quantile(samples, 0.5)),
            crate::ms(quantile(samples, 0.9))
        );
    }
    Ok(())
}
