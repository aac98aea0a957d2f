//! Starting a VM from a snapshot, and taking one of a running VM.
//!
//! A restored VM resumes exactly where the snapshot paused it, so before
//! anyone uses it the library makes it its own machine: the agent gets the
//! host's wall clock (the guest's stood still since the snapshot), fresh
//! randomness mixed into the kernel's pool with a forced CRNG reseed (or
//! every copy would produce the same "random" bytes), a hostname (the VM
//! id) and a machine id. That exchange doubles as the readiness check.

use crate::error::Error;
use crate::image::assets;
use crate::image::SnapshotImage;
use crate::snapshot::{self, SnapshotMeta};
use crate::vm::conn;
use crate::vm::{exec_defaults, Vm, VmConfig};
use crate::worker::outcome::VmOutcome;
use crate::worker::runtime::{self, random_bytes, VmDir, VmInfo};
use crate::worker::WorkerSpec;
use crate::worker::{control, standby};
use crate::Image;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering;
use std::time::Duration;
use supermachine_protocol::worker_control::{WorkerRequest, HOT_PAGES_FILE};
use supermachine_protocol::{AgentMessage, Request, RestoreFixup};

/// The worker's specs for a restore of a snapshot that shared `meta`'s
/// directories: each tag the snapshot has must be given a host directory
/// by the caller (a snapshot never chooses host paths), with the same
/// symlink policy and read-only-ness, and no other.
fn restore_mounts(
    meta: &crate::snapshot::SnapshotMeta,
    given: &[crate::Mount],
) -> Result<Vec<supermachine_protocol::fs_spec::FsSpec>, Error> {
    let specs = crate::vm::mount::worker_specs(given)?;
    for spec in &specs {
        if !meta.mounts.iter().any(|m| m.tag == spec.tag) {
            return Err(Error::InvalidArgument(format!(
                "mount {:?}: the snapshot has no shared directory with that tag",
                spec.tag
            )));
        }
    }
    meta.mounts
        .iter()
        .map(|saved| {
            let spec = specs.iter().find(|s| s.tag == saved.tag).ok_or_else(|| {
                Error::InvalidArgument(format!(
                    "the snapshot shares a directory as {:?}: give a host directory for it (-v DIR:{})",
                    saved.tag, saved.tag
                ))
            })?;
            if (spec.symlinks, spec.read_only) != (saved.symlinks, saved.read_only) {
                return Err(Error::InvalidArgument(format!(
                    "mount {:?}: the snapshot shared it with symlinks={}{}; give the same options",
                    saved.tag,
                    saved.symlinks,
                    if saved.read_only { ",ro" } else { "" }
                )));
            }
            Ok(spec.clone())
        })
        .collect()
}

/// The network a restore of a snapshot gets: the caller's policy, else
/// public-only if the snapshot had a network (never a policy stored in
/// the snapshot, which may come from anywhere); `None`: none (a card the
/// snapshot had then leads nowhere).
fn restore_network(
    snapshot_had_network: bool,
    asked: Option<&crate::Network>,
) -> Result<Option<supermachine_protocol::net_spec::NetSpec>, Error> {
    match (asked, snapshot_had_network) {
        (None, had) => Ok(had.then_some(supermachine_protocol::net_spec::NetSpec::Public)),
        (Some(crate::Network::Off), _) => Ok(None),
        (Some(net), true) => Ok(net.spec()),
        (Some(_), false) => Err(Error::InvalidArgument(
            "the snapshot was taken without a network, and a restore cannot add a network              card: build it with a network (--network, `network` in the build options)"
                .into(),
        )),
    }
}

/// Pause between attempts to reach a restored agent that is not answering
/// yet (no muxer socket yet, or the connection reset by the guest).
const AGENT_RETRY: Duration = Duration::from_millis(1);

/// Bytes of host randomness each restored VM mixes into its kernel's pool.
const SEED_BYTES: usize = 64;

impl Vm {
    /// Starts a worker that restores `image` (a snapshot) and waits until
    /// the restored agent has made the copy its own.
    pub(crate) async fn restore(
        image: &Image,
        snapshot: &SnapshotImage,
        config: &VmConfig,
        detached: bool,
    ) -> Result<Vm, Error> {
        runtime::check_kvm()?;
        if !config.volumes.is_empty() {
            return Err(Error::InvalidArgument(
                "volumes cannot be attached to a restored VM yet (a snapshot's disks are fixed \
                 when it is taken): boot the image with the volume instead"
                    .into(),
            ));
        }
        let meta = &snapshot.meta;
        let mounts = restore_mounts(meta, &config.mounts)?;
        let net = restore_network(meta.network, config.network.as_ref().or(image.network()))?;
        let passt = net
            .as_ref()
            .map(|_| crate::vm::network::passt_binary())
            .transpose()?;
        let disks: Vec<_> = meta
            .disks
            .iter()
            .map(|d| (snapshot.dir.join(&d.file), d.read_only))
            .collect();
        let info = |id: &str, serial_log: PathBuf| VmInfo {
            id: id.to_string(),
            pid: 0,
            started: 0,
            memory_mib: meta.memory_mib,
            vcpus: meta.vcpus,
            image: meta.image.clone(),
            image_digest: meta.image_digest.clone(),
            exposed_ports: meta.exposed_ports.clone(),
            defaults: exec_defaults(image, config),
            command: meta.command.clone(),
            serial_log,
            detached,
            disks: disks.clone(),
            snapshot: Some(snapshot.dir.clone()),
            mounts: mounts.clone(),
            network: net.as_ref().map(ToString::to_string),
        };
        // A standby worker is asked to restore with disks only: a VM with
        // shared directories or a network gets a worker of its own.
        let standby = if detached || config.console || !mounts.is_empty() || net.is_some() {
            None
        } else {
            standby::take()
        };
        let vm = match standby {
            Some((standby, hold)) => {
                let info = info(standby.id(), standby.serial_log().to_path_buf());
                let (dir, worker) = standby
                    .restore(&snapshot.dir, &disks, config.boot_timeout)
                    .await?;
                let vm = Vm::adopt(dir, worker, info)?;
                *vm.refill_hold.lock().unwrap_or_else(|e| e.into_inner()) = Some(hold);
                vm
            }
            None => {
                let dir = VmDir::create()?;
                let (serial_log, worker_log) = dir.log_paths()?;
                let spec = WorkerSpec {
                    binary: assets::worker_binary()?,
                    boot: None,
                    restore: Some(snapshot.dir.clone()),
                    standby: false,
                    cmdline: String::new(),
                    memory_mib: meta.memory_mib,
                    vcpus: meta.vcpus,
                    disks: disks.clone(),
                    mounts: mounts.clone(),
                    net: net.clone(),
                    passt: passt.clone(),
                    vm_dir: dir.path().to_path_buf(),
                    serial_log: serial_log.clone(),
                    console: config.console,
                    detached_stderr: detached.then_some(worker_log),
                };
                let info = info(dir.id(), serial_log);
                Vm::supervise(dir, &spec, info)?
            }
        };
        vm.make_unique(config.boot_timeout).await?;
        // Without a hot-page list the worker mapped nothing ahead; this
        // copy records the list after its first exec.
        if !snapshot.dir.join(HOT_PAGES_FILE).exists() {
            vm.hot_pages_pending.store(true, Ordering::Relaxed);
        }
        Ok(vm)
    }

    /// Once per VM restored from a snapshot with no hot-page list: asks the
    /// worker to record the pages touched so far as the snapshot's list.
    /// Returns the request running in the background, or None if there is
    /// nothing to record. Failure only costs later restores speed.
    pub(crate) fn record_hot_pages(&self) -> Option<tokio::task::JoinHandle<()>> {
        if !self.hot_pages_pending.swap(false, Ordering::Relaxed) {
            return None;
        }
        let socket = control::socket(self.dir.path());
        Some(tokio::task::spawn_blocking(move || {
            let answer = control::connect(&socket).and_then(|mut stream| {
                control::ask(
                    &mut stream,
                    &WorkerRequest::RecordHotPages,
                    Duration::from_secs(10),
                    "hot pages",
                )
            });
            tracing::debug!(?answer, "hot pages recorded");
        }))
    }

    /// Lets the standby refill go on (once the first exec is answered).
    pub(crate) fn release_refill_hold(&self) {
        let hold = self
            .refill_hold
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        drop(hold);
    }

    /// Sends the restore fixup until the agent confirms it. The worker
    /// may still be mapping memory (no muxer socket yet), and the guest
    /// resets every vsock connection once after a restore, possibly ours:
    /// both mean "try again in a moment".
    async fn make_unique(&self, timeout: Duration) -> Result<(), Error> {
        let mut seed = vec![0u8; SEED_BYTES];
        let mut machine_id = [0u8; 16];
        random_bytes(&mut seed).map_err(|e| Error::io("reading host randomness", e))?;
        random_bytes(&mut machine_id).map_err(|e| Error::io("reading host randomness", e))?;
        let muxer = self.dir.path().join("vsock.sock");
        let ended = self.exit_watch();
        let attempts = async {
            let mut last_error = None;
            loop {
                let fixup = RestoreFixup {
                    unix_time_ns: std::time::SystemTime::now()
                        .duration_since(std::time::UNIX_EPOCH)
                        .map_or(0, |d| d.as_nanos() as u64),
                    seed: seed.clone(),
                    hostname: self.info.id.clone(),
                    machine_id: hex::encode(machine_id),
                };
                if muxer.exists() {
                    match conn::connect(&muxer, Request::Restored(fixup)).await {
                        Ok(mut c) => match c.recv().await {
                            Ok(AgentMessage::Done { .. }) => return Ok(()),
                            Ok(other) => return Err(conn::unexpected(other, "restore")),
                            Err(e) => last_error = Some(e),
                        },
                        Err(e) => last_error = Some(e),
                    }
                }
                tracing::trace!(?last_error, "restore: the agent is not answering yet");
                // Not a wait for the worker (its end wakes the select
                // below): the muxer socket appears, and the guest's one
                // reset of every vsock connection after a restore passes,
                // within milliseconds.
                tokio::time::sleep(AGENT_RETRY).await;
            }
        };
        tokio::select! {
            answered = attempts => answered,
            () = ended.ended() => Err(self.boot_failed()),
            () = tokio::time::sleep(timeout) => {
                self.keep_log.store(true, Ordering::Relaxed);
                Err(Error::BootTimeout {
                    secs: timeout.as_secs(),
                    serial_log: Some(self.info.serial_log.clone()),
                })
            }
        }
    }

    /// Snapshots this VM into the directory `path` (which must not exist)
    /// and lets it run on. The guest is paused only while its state and
    /// memory are copied. Start copies of it with [`Image::from_snapshot`].
    /// VMs with writable disks cannot be snapshotted (the disk would go on
    /// changing under the snapshot).
    ///
    /// ```no_run
    /// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
    /// use supermachine::{Image, Vm, VmConfig};
    /// vm.write_file("/tmp/state", b"warm").await?;
    /// let image = vm.snapshot("/tmp/snap").await?;
    /// let copy = Vm::start(&image, &VmConfig::default()).await?;
    /// assert_eq!(copy.read_file("/tmp/state").await?, b"warm");
    /// # Ok(()) }
    /// ```
    pub async fn snapshot(&self, path: impl AsRef<Path>) -> Result<Image, Error> {
        self.snapshot_with(path.as_ref(), None, false).await?;
        Image::from_snapshot(path.as_ref())
    }

    /// Snapshots the VM and ends it (a bake): nothing runs after the
    /// snapshot, so the snapshot is exactly the VM's last state.
    pub(crate) async fn snapshot_and_stop(
        self,
        path: &Path,
        key: Option<String>,
    ) -> Result<SnapshotMeta, Error> {
        let meta = self.snapshot_with(path, key, true).await?;
        let outcome = self.worker().stop();
        if outcome != VmOutcome::Stopped {
            tracing::debug!(?outcome, "worker after a final snapshot");
        }
        Ok(meta)
    }

    async fn snapshot_with(
        &self,
        path: &Path,
        key: Option<String>,
        stop_after: bool,
    ) -> Result<SnapshotMeta, Error> {
        let path = path.to_path_buf();
        let info = self.info.clone();
        let defaults = self.defaults.clone();
        let control_socket = control::socket(self.dir.path());
        // The request blocks for as long as the memory copy takes.
        tokio::task::spawn_blocking(move || {
            snapshot::take(
                snapshot::Source {
                    control_socket,
                    info: &info,
                    defaults: &defaults,
                    key,
                    stop_after,
                },
                &path,
            )
        })
        .await
        .map_err(|source| Error::Task {
            task: "snapshot",
            source,
        })?
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::Network;
    use supermachine_protocol::net_spec::NetSpec;

    #[test]
    fn a_restore_gets_the_callers_network_policy_never_the_snapshots() {
        assert_eq!(restore_network(false, None).unwrap(), None);
        assert_eq!(restore_network(true, None).unwrap(), Some(NetSpec::Public));
        assert_eq!(restore_network(true, Some(&Network::Off)).unwrap(), None);
        let allow: Network = "allow=10.0.2.15:80".parse().unwrap();
        assert_eq!(restore_network(true, Some(&allow)).unwrap(), allow.spec());
        let e = restore_network(false, Some(&Network::Public)).unwrap_err();
        assert!(e.to_string().contains("taken without a network"), "{e}");
        assert_eq!(restore_network(false, Some(&Network::Off)).unwrap(), None);
    }
}
