//! Taking a snapshot of a running VM.
//!
//! Order matters for consistency: the vCPUs park first (so no guest code
//! runs and no vCPU holds a device), then every virtio device is locked (so
//! its thread can neither touch guest memory nor its queues), then vCPU,
//! VM and device state are read and memory is copied, all against one
//! frozen machine. The devices are released and the vCPUs resumed only
//! after that; the memory file is synced while the guest already runs again.

use super::{SnapshotError, Vm, VmError};
use crate::bus::lock;
use crate::snapshot::bundle::{write_state, SnapshotState, MEMORY_FILE};
use crate::snapshot::memory::write_memory;
use crate::snapshot::{save_vm, MachineState};
use std::fs::File;
use std::path::Path;
use std::time::Instant;
use supermachine_protocol::worker_control::SnapshotReport;

impl Vm {
    /// Writes a snapshot into `dir` (existing, empty). The VM resumes
    /// afterwards unless `stay_paused`; after a failure it always resumes.
    pub(super) fn snapshot_to(
        &self,
        dir: &Path,
        stay_paused: bool,
    ) -> Result<SnapshotReport, VmError> {
        let started = Instant::now();
        self.gate
            .pause(self.vcpu_count)
            .map_err(SnapshotError::from)?;
        let written = self.write_frozen(dir);
        if !stay_paused || written.is_err() {
            self.gate.resume();
        }
        let paused_us = started.elapsed().as_micros() as u64;
        let (mut report, memory) = written?;
        memory.sync_all().map_err(|source| SnapshotError::Io {
            what: "syncing the memory file".into(),
            source,
        })?;
        report.paused_us = paused_us;
        tracing::info!(?report, "snapshot written to {}", dir.display());
        Ok(report)
    }

    fn write_frozen(&self, dir: &Path) -> Result<(SnapshotReport, File), VmError> {
        let transports: Vec<_> = self.transports.iter().map(|t| lock(t)).collect();
        let devices: Vec<_> = transports.iter().map(|t| t.device()).collect();
        let held: Vec<_> = devices.iter().map(|d| lock(d)).collect();
        let device_states = transports
            .iter()
            .zip(&held)
            .map(|(t, d)| t.save_with(&**d))
            .collect();
        let vcpus = self
            .gate
            .save_all(self.vcpu_count)
            .map_err(SnapshotError::from)?;
        let vm = save_vm(&self.vm).map_err(|source| SnapshotError::State {
            what: "saving the VM state".into(),
            source,
        })?;
        let serial = lock(&self.serial).save();

        let memory_path = dir.join(MEMORY_FILE);
        let memory =
            crate::files::create_new(&memory_path).map_err(|source| SnapshotError::Io {
                what: format!("creating {}", memory_path.display()),
                source,
            })?;
        let (layout, written) =
            write_memory(&self.mem, &memory).map_err(|source| SnapshotError::Memory {
                path: memory_path.clone(),
                source,
            })?;
        drop(held);
        drop(transports);

        let state = SnapshotState {
            memory_mib: self.memory_mib,
            memory: layout,
            machine: MachineState { vm, vcpus },
            serial,
            devices: device_states,
        };
        let state_bytes = write_state(dir, &state).map_err(SnapshotError::from)?;
        Ok((
            SnapshotReport {
                memory_bytes: written.total_bytes,
                memory_data_bytes: written.data_bytes,
                state_bytes,
                paused_us: 0,
            },
            memory,
        ))
    }
}
