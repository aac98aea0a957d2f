//! The `supermachine-worker` process behind a VM: starting it, watching
//! it, and stopping it.
//!
//! A worker's end is an event, never polled for: the library holds a pidfd
//! of it (readable once the process has ended) and waits on that, in async
//! code through tokio's reactor ([`ExitWatch::ended`]), in blocking code
//! with poll(2). The worker's last words on stderr are complete when the
//! reader thread reaches the pipe's end, which is a second event
//! ([`ExitWatch::ended`] waits for both).

pub(crate) mod control;
pub(crate) mod outcome;
pub(crate) mod runtime;
pub(crate) mod standby;

use crate::error::Error;
use crate::worker::outcome::{outcome_of, VmOutcome};
use std::io::Read;
use std::os::fd::OwnedFd;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::Duration;
use supermachine_protocol::disk_spec;
use tokio::sync::watch;

/// Everything the worker's command line is made of.
pub(crate) struct WorkerSpec {
    pub binary: PathBuf,
    /// Kernel and initramfs to boot; `None` for a restore.
    pub boot: Option<(PathBuf, PathBuf)>,
    /// Snapshot directory to restore instead of booting.
    pub restore: Option<PathBuf>,
    /// Neither boot nor restore yet: prepare an empty VM and wait for a
    /// restore request on the control socket (see [`crate::worker::standby`]).
    pub standby: bool,
    pub cmdline: String,
    pub memory_mib: u64,
    pub vcpus: u8,
    /// The root filesystem first, then the extra disks.
    pub disks: Vec<(PathBuf, bool)>,
    /// Shared host directories (`--fs`).
    pub mounts: Vec<supermachine_protocol::fs_spec::FsSpec>,
    /// The guest network's egress policy (`--net`); `None`: no network
    /// (a restored card, if the snapshot had one, leads nowhere).
    pub net: Option<supermachine_protocol::net_spec::NetSpec>,
    /// The passt binary, with `net`.
    pub passt: Option<PathBuf>,
    pub vm_dir: PathBuf,
    pub serial_log: PathBuf,
    pub console: bool,
    /// Where the worker's stderr goes when it must outlive us; `None`:
    /// a pipe we read, and the worker dies with this process.
    pub detached_stderr: Option<PathBuf>,
}

/// Most worker stderr kept for error messages.
const STDERR_KEEP: usize = 64 * 1024;

/// Longest a caller waits, after the worker ended, for its stderr pipe to
/// reach its end: a process the worker left behind could hold the pipe
/// open, and the outcome must not wait on it.
const STDERR_DRAIN: Duration = Duration::from_secs(2);

/// Longest a stopped worker gets to tear its VM down after SIGTERM.
const STOP_GRACE: Duration = Duration::from_secs(3);

pub(crate) struct Worker {
    /// `None` for a VM attached to by id: someone else started it.
    child: Option<Child>,
    pid: u32,
    stderr: Arc<Mutex<String>>,
    /// A detached worker's stderr goes to this file instead of a pipe.
    stderr_file: Option<PathBuf>,
    outcome: Option<VmOutcome>,
    watch: ExitWatch,
}

/// What it takes to wait for a worker's end without holding the
/// [`Worker`] (which sits behind a lock): a pidfd and the stderr reader's
/// end. Cheap to clone.
#[derive(Clone)]
pub(crate) struct ExitWatch {
    /// `None` when the kernel has no pidfd_open (before Linux 5.3), or the
    /// process was already gone when asked.
    pidfd: Option<Arc<OwnedFd>>,
    pid: u32,
    /// Becomes `true` when the stderr reader has read the pipe to its end
    /// (at once when there is no pipe).
    stderr_done: watch::Receiver<bool>,
}

impl ExitWatch {
    fn new(pid: u32, stderr_done: watch::Receiver<bool>) -> ExitWatch {
        ExitWatch {
            pidfd: open_pidfd(pid),
            pid,
            stderr_done,
        }
    }

    /// Resolves once the worker has ended and its stderr has been read to
    /// the end (or [`STDERR_DRAIN`] has passed since it ended).
    pub async fn ended(&self) {
        self.process_ended().await;
        let mut done = self.stderr_done.clone();
        let _ = tokio::time::timeout(STDERR_DRAIN, done.wait_for(|d| *d)).await;
    }

    async fn process_ended(&self) {
        let Some(pidfd) = &self.pidfd else {
            // No pidfd: either the process was gone when we looked, or the
            // kernel predates pidfds (then, and only then, look every 50 ms).
            while process_alive(self.pid) {
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            return;
        };
        // A duplicate per wait: epoll keys registrations by fd number, so
        // two waits on one fd would collide.
        let registered = pidfd.try_clone().and_then(|fd| {
            // SAFETY: the AsyncFd owns this OwnedFd, which stays open and
            // the same description until the AsyncFd is dropped.
            unsafe {
                tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE)
            }
            .map_err(std::io::Error::from)
        });
        match registered {
            Ok(fd) => {
                // Readable means ended; an error from the reactor means
                // the runtime is shutting down: nothing to wait for then.
                let _ = fd.readable().await;
            }
            Err(e) => {
                tracing::debug!("cannot watch worker {} through its pidfd: {e}", self.pid);
                while process_alive(self.pid) {
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Blocks up to `timeout` for the process to end; whether it has.
    pub fn wait_blocking(&self, timeout: Duration) -> bool {
        let Some(pidfd) = &self.pidfd else {
            return !process_alive(self.pid);
        };
        use rustix::event::{poll, PollFd, PollFlags, Timespec};
        let timeout = Timespec::try_from(timeout).unwrap_or(Timespec {
            tv_sec: 3,
            tv_nsec: 0,
        });
        loop {
            let mut fds = [PollFd::new(pidfd.as_ref(), PollFlags::IN)];
            match poll(&mut fds, Some(&timeout)) {
                Ok(n) => return n > 0,
                Err(rustix::io::Errno::INTR) => continue,
                Err(_) => return !process_alive(self.pid),
            }
        }
    }
}

/// A pidfd for `pid`, if the kernel has them and the process exists.
fn open_pidfd(pid: u32) -> Option<Arc<OwnedFd>> {
    let pid = rustix::process::Pid::from_raw(i32::try_from(pid).ok()?)?;
    match rustix::process::pidfd_open(pid, rustix::process::PidfdFlags::empty()) {
        Ok(fd) => Some(Arc::new(fd)),
        Err(e) => {
            tracing::debug!("pidfd_open({}): {e}", pid.as_raw_nonzero());
            None
        }
    }
}

impl Worker {
    pub fn spawn(spec: &WorkerSpec) -> Result<Worker, Error> {
        let mut cmd = Command::new(&spec.binary);
        if let Some((kernel, initramfs)) = &spec.boot {
            cmd.arg("--kernel")
                .arg(kernel)
                .arg("--initrd")
                .arg(initramfs);
        }
        if let Some(dir) = &spec.restore {
            cmd.arg("--restore").arg(dir);
        }
        if spec.standby {
            cmd.arg("--standby");
        }
        cmd.arg("--memory-mib")
            .arg(spec.memory_mib.to_string())
            .arg("--vcpus")
            .arg(spec.vcpus.to_string())
            .arg("--vm-dir")
            .arg(&spec.vm_dir)
            .arg("--serial-log")
            .arg(&spec.serial_log)
            .arg("--cmdline")
            .arg(&spec.cmdline)
            .stdin(Stdio::null())
            .stdout(Stdio::null());
        for (path, read_only) in &spec.disks {
            cmd.arg("--disk").arg(disk_spec::format(path, *read_only));
        }
        for mount in &spec.mounts {
            cmd.arg("--fs").arg(mount.to_string());
        }
        if let Some(net) = &spec.net {
            cmd.arg("--net").arg(net.to_string());
        }
        if let Some(passt) = &spec.passt {
            cmd.arg("--passt").arg(passt);
        }
        if spec.console {
            cmd.arg("--console");
        }
        match &spec.detached_stderr {
            Some(path) => {
                let file = crate::paths::create_private_file(path)
                    .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
                cmd.stderr(file);
                // SAFETY: the hook runs between fork and exec and makes only
                // a raw setsid system call (rustix), allocating nothing.
                unsafe {
                    cmd.pre_exec(|| {
                        // Its own session: the terminal's Ctrl-C and hangup
                        // must not reach a VM the user detached from. It
                        // fails only when already a group leader, which a
                        // fresh child is not.
                        let _ = rustix::process::setsid();
                        Ok(())
                    });
                }
            }
            None => {
                // The worker must not outlive us: it asks for a signal
                // when we go (and then cleans up its directory and log).
                // No pre_exec hook here, so the spawn is a posix_spawn
                // instead of a fork of this whole process.
                cmd.arg("--owned-by-parent")
                    .arg(std::process::id().to_string());
                cmd.stderr(if spec.console {
                    Stdio::inherit()
                } else {
                    Stdio::piped()
                });
            }
        }
        let mut child = spawn_from_lasting_thread(cmd)
            .map_err(|e| Error::io(format!("starting {}", spec.binary.display()), e))?;
        let stderr = Arc::new(Mutex::new(String::new()));
        let (stderr_done, stderr_done_rx) = watch::channel(child.stderr.is_none());
        if let Some(mut pipe) = child.stderr.take() {
            let sink = stderr.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut s) = sink.lock() {
                        if s.len() < STDERR_KEEP {
                            s.push_str(&String::from_utf8_lossy(&buf[..n]));
                        }
                    }
                }
                let _ = stderr_done.send(true);
            });
        }
        let pid = child.id();
        Ok(Worker {
            pid,
            child: Some(child),
            stderr,
            stderr_file: spec.detached_stderr.clone(),
            outcome: None,
            watch: ExitWatch::new(pid, stderr_done_rx),
        })
    }

    /// A worker started by another process (a detached VM).
    pub fn attached(pid: u32) -> Worker {
        Worker {
            child: None,
            pid,
            stderr: Arc::default(),
            stderr_file: None,
            outcome: None,
            watch: ExitWatch::new(pid, watch::channel(true).1),
        }
    }

    /// A handle to wait for this worker's end with.
    pub fn exit_watch(&self) -> ExitWatch {
        self.watch.clone()
    }

    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// What the worker wrote to stderr (at most the last 64 KiB of a
    /// detached worker's log file), for error messages.
    pub fn stderr_text(&self) -> String {
        match &self.stderr_file {
            Some(path) => std::fs::read(path)
                .map(|bytes| {
                    let tail = &bytes[bytes.len().saturating_sub(STDERR_KEEP)..];
                    String::from_utf8_lossy(tail).into_owned()
                })
                .unwrap_or_default(),
            None => self.stderr.lock().map(|s| s.clone()).unwrap_or_default(),
        }
    }

    /// How the worker ended, if it has (non-blocking). A worker we did not
    /// start can only be seen to be gone, not how it ended.
    pub fn try_outcome(&mut self) -> Option<VmOutcome> {
        if self.outcome.is_none() {
            match self.child.as_mut() {
                Some(child) => {
                    let status = child.try_wait().ok()??;
                    self.outcome = Some(outcome_of(status, &self.stderr_text()));
                }
                None if !process_alive(self.pid) => self.outcome = Some(VmOutcome::Stopped),
                None => {}
            }
        }
        self.outcome.clone()
    }

    /// Stops the worker: SIGTERM (it tears the VM down and removes its
    /// directory), then SIGKILL if it has not ended within [`STOP_GRACE`].
    /// Blocks (on the worker's pidfd) while it ends.
    pub fn stop(&mut self) -> VmOutcome {
        if self.try_outcome().is_none() {
            // SAFETY: signalling a process by pid; ESRCH is harmless.
            unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
            self.watch.wait_blocking(STOP_GRACE);
            if self.try_outcome().is_none() {
                // SAFETY: as above.
                unsafe { libc::kill(self.pid as i32, libc::SIGKILL) };
            }
            if let Some(child) = self.child.as_mut() {
                if let Ok(status) = child.wait() {
                    self.outcome.get_or_insert(outcome_of(status, ""));
                }
            }
        }
        self.outcome.clone().unwrap_or(VmOutcome::Stopped)
    }
}

type SpawnRequest = (Command, mpsc::Sender<std::io::Result<Child>>);

/// Starts `cmd` from one thread that lives as long as this process. A
/// worker's parent-death signal fires when the *thread* that forked it
/// ends, not the process, and the caller may be a thread that ends any
/// time (tokio's blocking pool lets idle threads go).
fn spawn_from_lasting_thread(mut cmd: Command) -> std::io::Result<Child> {
    static SPAWNER: OnceLock<Option<mpsc::Sender<SpawnRequest>>> = OnceLock::new();
    let spawner = SPAWNER.get_or_init(|| {
        let (tx, rx) = mpsc::channel::<SpawnRequest>();
        std::thread::Builder::new()
            .name("supermachine-spawner".into())
            .spawn(move || {
                for (mut cmd, reply) in rx {
                    let _ = reply.send(cmd.spawn());
                }
            })
            .ok()
            .map(|_| tx)
    });
    let Some(spawner) = spawner else {
        // No thread to spare: this thread will have to do.
        return cmd.spawn();
    };
    let (reply_tx, reply_rx) = mpsc::channel();
    spawner
        .send((cmd, reply_tx))
        .map_err(|_| std::io::Error::other("the process spawner thread is gone"))?;
    reply_rx
        .recv()
        .map_err(|_| std::io::Error::other("the process spawner thread is gone"))?
}

pub(crate) fn process_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks for existence.
    unsafe {
        libc::kill(pid as i32, 0) == 0
            || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    /// A stand-in worker: a shell script that ignores the worker's
    /// arguments and does `body`.
    fn fake_worker(dir: &std::path::Path, body: &str) -> WorkerSpec {
        let binary = dir.join("fake-worker");
        std::fs::write(&binary, format!("#!/bin/sh\n{body}\n")).unwrap();
        std::fs::set_permissions(&binary, std::fs::Permissions::from_mode(0o755)).unwrap();
        WorkerSpec {
            binary,
            boot: None,
            restore: None,
            standby: false,
            cmdline: String::new(),
            memory_mib: 1,
            vcpus: 1,
            disks: Vec::new(),
            mounts: Vec::new(),
            net: None,
            passt: None,
            vm_dir: dir.to_path_buf(),
            serial_log: dir.join("serial.log"),
            console: false,
            detached_stderr: None,
        }
    }

    #[tokio::test]
    async fn the_end_of_a_worker_is_an_event_with_its_last_words() {
        let dir = tempfile::tempdir().unwrap();
        let spec = fake_worker(dir.path(), "echo 'cannot open /dev/kvm' >&2; exit 1");
        let mut worker = Worker::spawn(&spec).unwrap();
        worker.exit_watch().ended().await;
        // Once `ended` resolves, the stderr is complete and the outcome known.
        assert_eq!(
            worker.try_outcome(),
            Some(VmOutcome::Error("cannot open /dev/kvm".into()))
        );
    }

    #[tokio::test]
    async fn stop_ends_a_running_worker_and_waits_for_it() {
        let dir = tempfile::tempdir().unwrap();
        let spec = fake_worker(dir.path(), "exec sleep 1000");
        let mut worker = Worker::spawn(&spec).unwrap();
        assert_eq!(worker.try_outcome(), None);
        assert!(!worker.exit_watch().wait_blocking(Duration::from_millis(1)));
        assert_eq!(worker.stop(), VmOutcome::Killed(libc::SIGTERM));
        assert!(worker.exit_watch().wait_blocking(Duration::from_millis(1)));
        // Waiting on an ended worker returns at once, as often as asked.
        worker.exit_watch().ended().await;
        worker.exit_watch().ended().await;
    }
}
