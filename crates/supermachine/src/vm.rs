//! A running VM as the host library sees it: a supervised worker process
//! and the sockets to talk to the agent inside.

use crate::agent_conn::{self, AgentConn};
use crate::error::Error;
use crate::outcome::{outcome_of, VmOutcome};
use crate::{assets, kernel, paths, runtime};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixListener;
use std::os::unix::process::CommandExt;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};
use supermachine_protocol::{
    self as proto, disk_spec, worker_exit, AgentMessage, ExecRequest, Request, READY_PORT,
};

/// How to start a VM.
#[derive(Debug, Clone)]
pub struct VmConfig {
    pub memory_mib: u64,
    pub vcpus: u8,
    /// Guest kernel; the cached build when `None`.
    pub kernel: Option<PathBuf>,
    /// Root filesystem image (ext4 or EROFS); the built-in busybox one when `None`.
    pub rootfs: Option<PathBuf>,
    /// Extra disks after the root filesystem: /dev/vdb, /dev/vdc, …
    pub disks: Vec<Disk>,
    /// Extra kernel command line arguments.
    pub extra_kernel_args: Vec<String>,
    /// How long to wait for the agent to report ready.
    pub boot_timeout: Duration,
    /// Copy the guest console to stderr (debugging).
    pub console: bool,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            memory_mib: 256,
            vcpus: 1,
            kernel: None,
            rootfs: None,
            disks: Vec::new(),
            extra_kernel_args: Vec::new(),
            boot_timeout: Duration::from_secs(60),
            console: false,
        }
    }
}

/// A raw disk image given to the guest as a virtio block device. Sparse
/// files stay sparse: holes read as zeros and nothing is preallocated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    pub path: PathBuf,
    pub read_only: bool,
}

/// The result of [`Vm::exec`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExitInfo {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

impl ExitInfo {
    /// Shell convention: the exit code, or 128 + the signal number.
    pub fn shell_code(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => 255,
        }
    }
}

/// A running VM. Dropping it stops the VM and removes its runtime files.
pub struct Vm {
    child: Option<Child>,
    dir: runtime::VmDir,
    serial_log: PathBuf,
    stderr: std::sync::Arc<std::sync::Mutex<String>>,
    outcome: Option<VmOutcome>,
    keep_log: bool,
}

impl Vm {
    /// Boots a VM and waits until its agent is ready.
    pub fn start(config: &VmConfig) -> Result<Vm, Error> {
        runtime::check_kvm()?;
        let kernel = match &config.kernel {
            Some(k) => k.clone(),
            None => kernel::path()?,
        };
        let rootfs = match &config.rootfs {
            Some(r) => r.clone(),
            None => assets::default_rootfs()?,
        };
        if !rootfs.is_file() {
            return Err(Error::InvalidArgument(format!(
                "root filesystem {} does not exist",
                rootfs.display()
            )));
        }
        for disk in &config.disks {
            if !disk.path.exists() {
                return Err(Error::InvalidArgument(format!(
                    "disk {} does not exist",
                    disk.path.display()
                )));
            }
        }
        let initramfs = assets::initramfs()?;
        let worker = assets::worker_binary()?;
        let dir = runtime::VmDir::create()?;
        let logs = paths::state_dir().join("logs");
        std::fs::create_dir_all(&logs)
            .map_err(|e| Error::io(format!("creating {}", logs.display()), e))?;
        let serial_log = logs.join(format!("{}.log", dir.id()));

        let ready_path = dir.path().join(format!("vsock.sock_{READY_PORT}"));
        let ready = UnixListener::bind(&ready_path)
            .map_err(|e| Error::io(format!("binding {}", ready_path.display()), e))?;
        ready
            .set_nonblocking(true)
            .map_err(|e| Error::io("ready socket", e))?;

        let mut cmdline = vec!["supermachine.root=/dev/vda".to_string()];
        cmdline.extend(config.extra_kernel_args.iter().cloned());
        let mut cmd = Command::new(&worker);
        cmd.arg("--kernel")
            .arg(&kernel)
            .arg("--initrd")
            .arg(&initramfs)
            .arg("--memory-mib")
            .arg(config.memory_mib.to_string())
            .arg("--vcpus")
            .arg(config.vcpus.to_string())
            .arg("--disk")
            .arg(disk_spec::format(&rootfs, true))
            .arg("--vm-dir")
            .arg(dir.path())
            .arg("--serial-log")
            .arg(&serial_log)
            .arg("--cmdline")
            .arg(cmdline.join(" "))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(if config.console {
                Stdio::inherit()
            } else {
                Stdio::piped()
            });
        for disk in &config.disks {
            cmd.arg("--disk")
                .arg(disk_spec::format(&disk.path, disk.read_only));
        }
        if config.console {
            cmd.arg("--console");
        }
        let parent = std::process::id();
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                // The worker must not outlive us: SIGTERM lets it clean up its directory.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::getppid() as u32 != parent {
                    libc::_exit(worker_exit::STOPPED);
                }
                Ok(())
            });
        }
        let mut child = cmd
            .spawn()
            .map_err(|e| Error::io(format!("starting {}", worker.display()), e))?;
        dir.record_pid(child.id());
        let stderr = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        if let Some(mut pipe) = child.stderr.take() {
            let sink = stderr.clone();
            std::thread::spawn(move || {
                let mut buf = [0u8; 4096];
                while let Ok(n) = pipe.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    if let Ok(mut s) = sink.lock() {
                        if s.len() < 64 * 1024 {
                            s.push_str(&String::from_utf8_lossy(&buf[..n]));
                        }
                    }
                }
            });
        }
        let mut vm = Vm {
            child: Some(child),
            dir,
            serial_log,
            stderr,
            outcome: None,
            keep_log: false,
        };
        vm.wait_ready(&ready, config.boot_timeout)?;
        let _ = std::fs::remove_file(&ready_path);
        Ok(vm)
    }

    fn stderr_text(&self) -> String {
        self.stderr.lock().map(|s| s.clone()).unwrap_or_default()
    }

    fn wait_ready(&mut self, listener: &UnixListener, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        loop {
            match listener.accept() {
                Ok((mut stream, _)) => {
                    stream
                        .set_nonblocking(false)
                        .map_err(|e| Error::io("ready socket", e))?;
                    stream
                        .set_read_timeout(Some(Duration::from_secs(10)))
                        .map_err(|e| Error::io("ready socket", e))?;
                    return match proto::read_frame::<AgentMessage, _>(&mut stream)? {
                        AgentMessage::Ready { .. } => Ok(()),
                        other => Err(Error::Protocol(format!("expected Ready, got {other:?}"))),
                    };
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) => return Err(Error::io("waiting for the agent", e)),
            }
            if let Some(outcome) = self.try_outcome() {
                // Give the stderr reader a moment to collect the worker's last words.
                std::thread::sleep(Duration::from_millis(50));
                self.keep_log = true;
                return Err(Error::BootFailed {
                    outcome,
                    stderr: self.stderr_text(),
                    serial_log: Some(self.serial_log.clone()),
                });
            }
            if Instant::now() >= deadline {
                self.keep_log = true;
                return Err(Error::BootTimeout {
                    secs: timeout.as_secs(),
                    serial_log: Some(self.serial_log.clone()),
                });
            }
            // Wake as soon as the agent connects; look at the worker every 50 ms.
            let mut pfd = libc::pollfd {
                fd: listener.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            };
            // SAFETY: one valid pollfd for the duration of the call.
            unsafe { libc::poll(&mut pfd, 1, 50) };
        }
    }

    /// The worker's outcome if it has ended (non-blocking).
    pub fn try_outcome(&mut self) -> Option<VmOutcome> {
        if self.outcome.is_none() {
            let status = self.child.as_mut()?.try_wait().ok()??;
            self.outcome = Some(outcome_of(status, &self.stderr_text()));
        }
        self.outcome.clone()
    }

    /// Path of the guest's serial console log.
    pub fn serial_log(&self) -> &std::path::Path {
        &self.serial_log
    }

    /// The VM's runtime directory (holds `vsock.sock`).
    pub fn runtime_dir(&self) -> &std::path::Path {
        self.dir.path()
    }

    fn connect(&self, request: Request) -> Result<AgentConn, Error> {
        agent_conn::connect(&self.dir.path().join("vsock.sock"), request)
    }

    /// Round trip to the agent.
    pub fn ping(&self) -> Result<(), Error> {
        let mut c = self.connect(Request::Ping)?;
        match c.recv()? {
            AgentMessage::Pong => Ok(()),
            other => Err(Error::Protocol(format!("expected Pong, got {other:?}"))),
        }
    }

    /// Runs a command in the guest, streaming its output to `stdout` and
    /// `stderr` as it arrives. Its stdin is empty (/dev/null).
    pub fn exec(
        &mut self,
        request: ExecRequest,
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
    ) -> Result<ExitInfo, Error> {
        self.exec_with_stdin(request, None, stdout, stderr)
    }

    /// Like [`Vm::exec`], and when `stdin` is given the command reads it as
    /// its standard input (streamed with backpressure; end of `stdin`
    /// closes the command's stdin).
    pub fn exec_with_stdin(
        &mut self,
        mut request: ExecRequest,
        stdin: Option<Box<dyn std::io::Read + Send>>,
        stdout: &mut dyn Write,
        stderr: &mut dyn Write,
    ) -> Result<ExitInfo, Error> {
        request.stdin = stdin.is_some();
        let mut conn = self.connect(Request::Exec(request))?;
        if let Some(input) = stdin {
            conn.pump_stdin(input)?;
        }
        loop {
            let msg = match conn.recv() {
                Ok(m) => m,
                Err(e) => return Err(self.explain_lost_connection(e)),
            };
            match msg {
                AgentMessage::Started { .. } => {}
                AgentMessage::Stdout(b) => {
                    let _ = stdout.write_all(&b);
                    let _ = stdout.flush();
                }
                AgentMessage::Stderr(b) => {
                    let _ = stderr.write_all(&b);
                    let _ = stderr.flush();
                }
                AgentMessage::Exited { code, signal } => return Ok(ExitInfo { code, signal }),
                AgentMessage::Error { message, .. } => return Err(Error::Agent(message)),
                other => return Err(Error::Protocol(format!("unexpected {other:?} during exec"))),
            }
        }
    }

    /// A dropped agent connection usually means the VM went away: say so.
    fn explain_lost_connection(&mut self, e: Error) -> Error {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if let Some(outcome) = self.try_outcome() {
                if outcome != VmOutcome::PowerOff {
                    self.keep_log = true;
                }
                return Error::VmEnded {
                    outcome,
                    serial_log: self.keep_log.then(|| self.serial_log.clone()),
                };
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        e
    }

    /// Asks the guest to power off and waits for the worker to end.
    ///
    /// Anything but [`VmOutcome::PowerOff`] is an error that names the
    /// serial log, which is then kept for the user to read.
    pub fn shutdown(mut self) -> Result<(), Error> {
        let outcome = match self.try_outcome() {
            Some(o) => o,
            None => {
                if let Ok(mut c) = self.connect(Request::Shutdown { reboot: false }) {
                    if c.set_timeout(Some(Duration::from_secs(5))).is_ok() {
                        let _ = c.recv();
                    }
                }
                self.wait_exit(Duration::from_secs(10))
            }
        };
        if outcome == VmOutcome::PowerOff {
            return Ok(());
        }
        self.keep_log = true;
        Err(Error::VmEnded {
            outcome,
            serial_log: Some(self.serial_log.clone()),
        })
    }

    /// Waits up to `grace` for the worker to end, then stops it.
    fn wait_exit(&mut self, grace: Duration) -> VmOutcome {
        let deadline = Instant::now() + grace;
        loop {
            if let Some(o) = self.try_outcome() {
                return o;
            }
            if Instant::now() >= deadline {
                break;
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        self.stop_worker()
    }

    fn stop_worker(&mut self) -> VmOutcome {
        if let Some(child) = self.child.as_mut() {
            // SAFETY: signalling our own child by pid.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = child.kill();
            if let Ok(status) = child.wait() {
                self.outcome.get_or_insert(outcome_of(status, ""));
            }
        }
        self.outcome.clone().unwrap_or(VmOutcome::Stopped)
    }
}

impl Drop for Vm {
    fn drop(&mut self) {
        if self.try_outcome().is_none() {
            self.stop_worker();
        }
        if !self.keep_log
            && matches!(
                self.outcome,
                Some(VmOutcome::PowerOff | VmOutcome::Stopped) | None
            )
        {
            let _ = std::fs::remove_file(&self.serial_log);
        }
    }
}
