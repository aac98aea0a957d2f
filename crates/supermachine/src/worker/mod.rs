//! The `supermachine-worker` process behind a VM: starting it, watching
//! it, and stopping it.

pub(crate) mod outcome;
pub(crate) mod runtime;
pub(crate) mod standby;

use crate::error::Error;
use crate::worker::outcome::{outcome_of, VmOutcome};
use std::io::Read;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};
use supermachine_protocol::disk_spec;

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
    pub vm_dir: PathBuf,
    pub serial_log: PathBuf,
    pub console: bool,
    /// Where the worker's stderr goes when it must outlive us; `None`:
    /// a pipe we read, and the worker dies with this process.
    pub detached_stderr: Option<PathBuf>,
}

/// Most worker stderr kept for error messages.
const STDERR_KEEP: usize = 64 * 1024;

pub(crate) struct Worker {
    /// `None` for a VM attached to by id: someone else started it.
    child: Option<Child>,
    pid: u32,
    stderr: Arc<Mutex<String>>,
    /// A detached worker's stderr goes to this file instead of a pipe.
    stderr_file: Option<PathBuf>,
    outcome: Option<VmOutcome>,
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
        if spec.console {
            cmd.arg("--console");
        }
        match &spec.detached_stderr {
            Some(path) => {
                let file = std::fs::File::create(path)
                    .map_err(|e| Error::io(format!("creating {}", path.display()), e))?;
                cmd.stderr(file);
                // SAFETY: only async-signal-safe calls between fork and exec.
                unsafe {
                    cmd.pre_exec(|| {
                        // Its own session: the terminal's Ctrl-C and hangup
                        // must not reach a VM the user detached from.
                        libc::setsid();
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
            });
        }
        Ok(Worker {
            pid: child.id(),
            child: Some(child),
            stderr,
            stderr_file: spec.detached_stderr.clone(),
            outcome: None,
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
        }
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
    /// directory), then SIGKILL if it has not ended within 3 s.
    pub fn stop(&mut self) -> VmOutcome {
        if self.try_outcome().is_none() {
            // SAFETY: signalling a process by pid; ESRCH is harmless.
            unsafe { libc::kill(self.pid as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline && self.try_outcome().is_none() {
                std::thread::sleep(Duration::from_millis(10));
            }
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
