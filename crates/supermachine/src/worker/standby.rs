//! Workers started ahead of need. A standby worker has its process running,
//! KVM open and an empty VM created, and waits on its control socket to be
//! told which snapshot to restore: a restore into it skips process start
//! (exec, dynamic loading) and VM creation, the largest host-side costs of
//! a restore.
//!
//! [`prestart_workers`] keeps a process-wide reserve of them, refilled by
//! a background thread; [`Vm::start`](crate::Vm::start) on a snapshot image
//! takes one when it is there and starts a worker itself when it is not.
//!
//! The refill waits while a VM restored into a standby has not yet
//! answered its first exec (at most [`REFILL_HOLD`]): starting a process
//! costs tens of milliseconds of CPU, and taken from the restore and its
//! first request that is most of what a restore costs on a small host.

use crate::error::Error;
use crate::image::assets;
use crate::worker::control::{self, ControlError};
use crate::worker::runtime::VmDir;
use crate::worker::{ExitWatch, Worker, WorkerSpec};
use std::collections::VecDeque;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
use supermachine_protocol::disk_spec;
use supermachine_protocol::worker_control::{WorkerReply, WorkerRequest};

/// Longest a standby worker may take to start listening.
const STANDBY_START_TIMEOUT: Duration = Duration::from_secs(10);

/// Longest a refill waits for restored VMs to answer their first exec.
const REFILL_HOLD: Duration = Duration::from_secs(1);

/// A started worker that has not restored anything yet.
pub(crate) struct Standby {
    dir: Option<VmDir>,
    worker: Option<Worker>,
    serial_log: PathBuf,
    /// The worker's control socket, connected ahead by the refill thread
    /// once the worker listens: the restore request is then one write,
    /// with no connect and accept on its critical path.
    control: Arc<Mutex<Control>>,
}

/// Where the connection to a standby's control socket stands.
enum Control {
    /// Not connected yet: a restore now connects itself.
    Pending,
    Connected(UnixStream),
    /// Taken by a restore; a connection made after that is dropped, so the
    /// worker reads its end of file and goes on to the next one.
    Used,
}

impl Standby {
    pub fn start() -> Result<Standby, Error> {
        let dir = VmDir::create()?;
        let (serial_log, _) = dir.log_paths()?;
        let spec = WorkerSpec {
            binary: assets::worker_binary()?,
            boot: None,
            restore: None,
            standby: true,
            cmdline: String::new(),
            memory_mib: 0,
            vcpus: 0,
            disks: Vec::new(),
            mounts: Vec::new(),
            net: None,
            passt: None,
            vm_dir: dir.path().to_path_buf(),
            serial_log: serial_log.clone(),
            console: false,
            detached_stderr: None,
        };
        let worker = Worker::spawn(&spec)?;
        dir.record_pid(worker.pid());
        Ok(Standby {
            dir: Some(dir),
            worker: Some(worker),
            serial_log,
            control: Arc::new(Mutex::new(Control::Pending)),
        })
    }

    /// What connects this standby's control socket ahead, on a thread
    /// that may block: run it after the standby is in the reserve.
    fn connect_later(&self) -> impl FnOnce() {
        let control = self.control.clone();
        let socket = self.dir.as_ref().map(|d| control::socket(d.path()));
        let watch = self.worker.as_ref().map(Worker::exit_watch);
        move || {
            let (Some(socket), Some(watch)) = (socket, watch) else {
                return;
            };
            match connect_when_listening(&socket, &watch, STANDBY_START_TIMEOUT) {
                Ok(stream) => {
                    let mut control = control.lock().unwrap_or_else(|e| e.into_inner());
                    if matches!(*control, Control::Pending) {
                        *control = Control::Connected(stream);
                    }
                }
                // The restore that takes it will connect and say why not.
                Err(e) => tracing::debug!("standby control socket: {e}"),
            }
        }
    }

    pub fn id(&self) -> &str {
        self.dir.as_ref().map_or("", |d| d.id())
    }

    pub fn serial_log(&self) -> &Path {
        &self.serial_log
    }

    fn alive(&mut self) -> bool {
        self.worker
            .as_mut()
            .is_some_and(|w| w.try_outcome().is_none())
    }

    /// Has the worker restore `snapshot_dir` with `disks` and hands back
    /// its directory and process, now running the restored VM.
    pub async fn restore(
        mut self,
        snapshot_dir: &Path,
        disks: &[(PathBuf, bool)],
        timeout: Duration,
    ) -> Result<(VmDir, Worker), Error> {
        let (Some(dir), Some(worker)) = (self.dir.take(), self.worker.take()) else {
            return Err(Error::Internal("a standby worker was used twice"));
        };
        let socket = control::socket(dir.path());
        let request = WorkerRequest::Restore {
            snapshot_dir: snapshot_dir.to_path_buf(),
            disks: disks
                .iter()
                .map(|(path, read_only)| disk_spec::format(path, *read_only))
                .collect(),
        };
        let watch = worker.exit_watch();
        let control = std::mem::replace(
            &mut *self.control.lock().unwrap_or_else(|e| e.into_inner()),
            Control::Used,
        );
        let reply = match control {
            Control::Connected(stream) => {
                control::ask_async(stream, &request, timeout, "restore").await
            }
            Control::Pending | Control::Used => tokio::task::spawn_blocking(move || {
                let mut stream = connect_when_listening(&socket, &watch, timeout)?;
                control::ask(&mut stream, &request, timeout, "restore")
            })
            .await
            .map_err(|source| Error::Task {
                task: "restore",
                source,
            })?,
        };
        let restored = reply.and_then(|reply| match reply {
            WorkerReply::Restored => Ok(()),
            other => Err(control::unexpected("restore", &other)),
        });
        match restored {
            Ok(()) => Ok((dir, worker)),
            Err(reason) => {
                let mut worker = worker;
                worker.stop();
                // The reason is in the error; the log has nothing more.
                let _ = std::fs::remove_file(&self.serial_log);
                Err(Error::Snapshot {
                    path: snapshot_dir.to_path_buf(),
                    reason: reason.into(),
                })
            }
        }
    }
}

impl Drop for Standby {
    fn drop(&mut self) {
        if let Some(worker) = self.worker.as_mut() {
            worker.stop();
            let _ = std::fs::remove_file(&self.serial_log);
        }
    }
}

/// Connects to a starting worker's control socket, waiting for it to
/// appear. The socket's appearance is looked for every millisecond (a
/// standby binds it within milliseconds of starting); the worker's end
/// cuts the wait short at once (its pidfd).
fn connect_when_listening(
    socket: &Path,
    worker: &ExitWatch,
    timeout: Duration,
) -> Result<UnixStream, ControlError> {
    let deadline = Instant::now() + timeout;
    loop {
        match UnixStream::connect(socket) {
            Ok(s) => return control::trusted(s, socket),
            Err(source) if Instant::now() >= deadline => {
                return Err(ControlError::Connect {
                    socket: socket.to_path_buf(),
                    source,
                })
            }
            Err(_) => {
                if worker.wait_blocking(SOCKET_LOOK) {
                    return Err(ControlError::WorkerEnded);
                }
            }
        }
    }
}

/// How often a starting standby's control socket is looked for.
const SOCKET_LOOK: Duration = Duration::from_millis(1);

/// The process-wide reserve.
struct Reserve {
    target: usize,
    ready: VecDeque<Standby>,
    /// Whether the refill thread runs.
    refilling: bool,
    /// Restores into standbys whose VM has not answered its first exec.
    held: usize,
}

/// Holds the refill back while it lives: taken with a standby, dropped
/// once the VM restored into it has answered its first exec (or is gone).
pub(crate) struct RefillHold(());

impl Drop for RefillHold {
    fn drop(&mut self) {
        let mut r = lock();
        r.held = r.held.saturating_sub(1);
        drop(r);
        reserve().1.notify_all();
    }
}

fn reserve() -> &'static (Mutex<Reserve>, Condvar) {
    static RESERVE: OnceLock<(Mutex<Reserve>, Condvar)> = OnceLock::new();
    RESERVE.get_or_init(|| {
        (
            Mutex::new(Reserve {
                target: 0,
                ready: VecDeque::new(),
                refilling: false,
                held: 0,
            }),
            Condvar::new(),
        )
    })
}

fn lock() -> MutexGuard<'static, Reserve> {
    reserve().0.lock().unwrap_or_else(|e| e.into_inner())
}

/// Keeps `count` workers started in the background, each with KVM open
/// and an empty VM created, for the next restores of any snapshot in this
/// process to use: [`Vm::start`](crate::Vm::start) on a snapshot image
/// then skips starting a process and creating the VM. A restore takes one
/// and the reserve is refilled behind it. `0` (the default) stops keeping
/// any and ends the idle ones.
///
/// Standby workers are ordinary worker processes of this process: they
/// die with it, and each costs a few MiB of host memory while it waits.
/// Restores with [`VmConfig::console`](crate::VmConfig) set, and detached
/// ones, always start their own worker.
///
/// ```no_run
/// # async fn demo() -> Result<(), supermachine::Error> {
/// use supermachine::{Image, Vm, VmConfig};
/// supermachine::prestart_workers(2);
/// let image = Image::from_snapshot("/var/lib/snapshots/app")?;
/// let vm = Vm::start(&image, &VmConfig::default()).await?;
/// # Ok(()) }
/// ```
pub fn prestart_workers(count: usize) {
    let mut r = lock();
    r.target = count;
    let excess: Vec<Standby> = if r.ready.len() > count {
        let keep = count;
        r.ready.drain(keep..).collect()
    } else {
        Vec::new()
    };
    if count > 0 && !r.refilling {
        let started = std::thread::Builder::new()
            .name("supermachine-standby".into())
            .spawn(refill);
        match started {
            Ok(_) => r.refilling = true,
            Err(e) => tracing::warn!("cannot start the standby refill thread: {e}"),
        }
    }
    drop(r);
    reserve().1.notify_all();
    // Dropping them stops their workers: outside the lock.
    drop(excess);
}

/// A standby worker from the reserve, if one is there and still alive,
/// and a hold on the refill to drop once its VM has answered a first exec.
pub(crate) fn take() -> Option<(Standby, RefillHold)> {
    let mut r = lock();
    if r.target == 0 {
        return None;
    }
    let mut dead = Vec::new();
    let found = loop {
        match r.ready.pop_front() {
            Some(mut s) => {
                if s.alive() {
                    break Some(s);
                }
                dead.push(s);
            }
            None => break None,
        }
    };
    let found = found.map(|standby| {
        r.held += 1;
        (standby, RefillHold(()))
    });
    drop(r);
    reserve().1.notify_all();
    drop(dead);
    found
}

/// The refill thread: tops the reserve up to its target, forever.
fn refill() {
    let (mutex, wakeup) = reserve();
    let mut failures = 0u32;
    loop {
        {
            let mut r = mutex.lock().unwrap_or_else(|e| e.into_inner());
            while r.ready.len() >= r.target {
                r = wakeup.wait(r).unwrap_or_else(|e| e.into_inner());
            }
            // Under a steady stream of restores some are always held:
            // the wait is bounded, so the reserve still fills.
            let (_r, _) = wakeup
                .wait_timeout_while(r, REFILL_HOLD, |r| r.held > 0)
                .unwrap_or_else(|e| e.into_inner());
        }
        match Standby::start() {
            Ok(standby) => {
                failures = 0;
                let connect = standby.connect_later();
                let mut r = mutex.lock().unwrap_or_else(|e| e.into_inner());
                if r.ready.len() < r.target {
                    // Usable at once (a restore connects itself until
                    // the connection below is made).
                    r.ready.push_back(standby);
                    drop(r);
                    connect();
                } else {
                    drop(r);
                    drop(standby);
                }
            }
            Err(e) => {
                // A missing worker binary or a full disk will not fix
                // itself in a millisecond: back off.
                failures = failures.saturating_add(1);
                tracing::warn!("cannot start a standby worker: {e}");
                std::thread::sleep(Duration::from_millis(100 << failures.min(6)));
            }
        }
    }
}
