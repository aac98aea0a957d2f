//! The snapshot state decoder on a state file from anywhere: raw bytes,
//! and (so the fuzzer gets past the checksums) bytes wrapped in a valid
//! envelope. Decoding must return a state or an error, never panic or
//! allocate without bound; a decoded state goes through the restore's
//! admission checks too.

#![no_main]

use libfuzzer_sys::fuzz_target;
use supermachine_vmm::snapshot::bundle::SnapshotState;
use supermachine_vmm::snapshot::limits::{check, HostLimits};
use supermachine_vmm::snapshot::{decode, envelope};

const HOST: HostLimits = HostLimits {
    kvm_max_vcpus: 240,
    host_cpus: 8,
    ram_mib: 16384,
};

fuzz_target!(|data: &[u8]| {
    let _ = decode::<SnapshotState>(data);
    if let Ok(state) = decode::<SnapshotState>(&envelope(data)) {
        let _ = check(&state, &HOST);
    }
});
