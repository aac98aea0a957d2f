//! The library's error type.

use crate::worker::outcome::VmOutcome;
use std::path::PathBuf;

/// Everything that can go wrong, each saying what to do about it.
///
/// ```
/// use supermachine::Error;
/// let e = Error::NoSuchVm("3f2a9c1d".into());
/// assert_eq!(e.to_string(), "no running VM with id \"3f2a9c1d\" (see `supermachine ps`)");
/// assert!(Error::KvmPermission.to_string().contains("usermod -aG kvm"));
/// ```
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The guest kernel is not built yet.
    #[error("the guest kernel is not built yet ({reason}): run `supermachine kernel build`")]
    KernelNotBuilt {
        /// What is missing.
        reason: String,
    },
    /// This host has no /dev/kvm.
    #[error("/dev/kvm is missing: this host has no KVM. Enable hardware virtualization (VT-x/AMD-V) and load kvm-intel or kvm-amd")]
    NoKvm,
    /// This user may not open /dev/kvm.
    #[error("/dev/kvm: permission denied. Add your user to the kvm group (sudo usermod -aG kvm $USER) and log in again")]
    KvmPermission,
    /// This host's KVM is PVM, on which ordinary guest kernels do not run.
    #[error("this host's /dev/kvm is PVM (software virtualization, no VT-x/AMD-V): ordinary guest kernels cannot run on it. Use a host with hardware virtualization, or the project's lab: cargo xtask lab -- <command>")]
    PvmHost,
    #[error("{0} not found: build the workspace (cargo xtask setup) or set {1}")]
    /// A binary the library runs (the worker, the agent) was not found:
    /// its name, and the environment variable that names it.
    MissingBinary(&'static str, &'static str),
    /// A Debian package the host needs is missing.
    #[error("{what} needs these Debian packages: {}apt-get install -y {}", if *.as_root { "" } else { "sudo " }, .packages.join(" "))]
    MissingPackages {
        /// What needs them.
        what: &'static str,
        /// The packages to install.
        packages: Vec<String>,
        /// Whether this process runs as root (else the hint says sudo).
        as_root: bool,
    },
    /// A host tool ran and failed.
    #[error("{tool} failed ({status}){}", .hint.as_deref().map(|h| format!(": {h}")).unwrap_or_default())]
    ToolFailed {
        /// The tool.
        tool: &'static str,
        /// How it ended.
        status: String,
        /// What may help, when known.
        hint: Option<&'static str>,
    },
    /// The guest kernel build finished without producing a kernel.
    #[error("the kernel build finished without producing {}", .path.display())]
    KernelMissingAfterBuild {
        /// Where the kernel should be.
        path: PathBuf,
    },
    /// The agent binary needs a dynamic loader, so it cannot be PID 1.
    #[error("{} is dynamically linked and cannot be the guest's init: build the static agent with `cargo xtask setup`", .path.display())]
    AgentNotStatic {
        /// The agent binary.
        path: PathBuf,
    },
    /// The cached root filesystem of a pulled image is gone.
    #[error("the root filesystem of {image} ({}) was removed (by `supermachine gc`?): pull the image again", .path.display())]
    RootfsRemoved {
        /// The image.
        image: String,
        /// Where its root filesystem was.
        path: PathBuf,
    },
    /// Sixteen random VM ids in a row were taken.
    #[error("could not pick a free VM id in the runtime directory")]
    NoFreeVmId,
    /// A background task of the library panicked or was cancelled.
    #[error("the {task} task failed: {source}")]
    Task {
        /// Which task.
        task: &'static str,
        /// How it ended.
        source: tokio::task::JoinError,
    },
    /// Writing or reading JSON the library itself produces.
    #[error("{what}: {source}")]
    Json {
        /// What was being written or read.
        what: &'static str,
        /// The JSON error.
        source: serde_json::Error,
    },
    /// A bake's warmup ran past its time.
    #[error("the warmup did not finish within {secs} s")]
    WarmupTimeout {
        /// The time it had, in seconds.
        secs: u64,
    },
    /// A bake's warmup command failed.
    #[error("warmup `{command}` failed (exit {code}): {stderr}")]
    WarmupFailed {
        /// The command.
        command: String,
        /// Its exit code.
        code: i32,
        /// What it wrote on stderr.
        stderr: String,
    },
    /// A bake waited for a listener that never came.
    #[error("nothing listened on guest TCP port {port} within {secs} s (is the workload starting? its output is in {})", .serial_log.display())]
    NoListener {
        /// The guest port waited for.
        port: u16,
        /// How long, in seconds.
        secs: u64,
        /// The VM's serial log, with the workload's output.
        serial_log: PathBuf,
    },
    /// A state the library's own logic should never reach.
    #[error("internal error: {0}")]
    Internal(&'static str),
    /// A host file or process operation failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done, with the path.
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The guest agent did not report ready in time.
    #[error("the VM did not become ready within {secs} s{}", log_hint(.serial_log))]
    BootTimeout {
        /// How long it had, in seconds.
        secs: u64,
        /// The VM's serial log, if it has one.
        serial_log: Option<PathBuf>,
    },
    /// The VM ended before its agent reported ready.
    #[error("the VM ended before it was ready: {outcome}{}{}", stderr_hint(.outcome, .stderr), log_hint(.serial_log))]
    BootFailed {
        /// How the VM ended.
        outcome: VmOutcome,
        /// What the worker wrote to stderr (its last 64 KiB at most).
        stderr: String,
        /// The VM's serial log, if it has one.
        serial_log: Option<PathBuf>,
    },
    /// The VM ended other than by a clean poweroff.
    #[error("the VM did not end cleanly: {outcome}{}", log_hint(.serial_log))]
    VmEnded {
        /// How the VM ended.
        outcome: VmOutcome,
        /// The VM's serial log, if it has one.
        serial_log: Option<PathBuf>,
    },
    /// The conversation with the guest agent broke: a frame malformed,
    /// out of order, or unreadable.
    #[error("agent protocol: {0}")]
    Protocol(String),
    /// The guest agent refused or failed a request.
    #[error("{message}")]
    Agent {
        /// What kind of failure, to act on.
        kind: supermachine_protocol::ErrorKind,
        /// What the agent said.
        message: String,
    },
    /// The connection to the agent ended mid-request.
    #[error("the connection to the guest agent was lost (the VM may have stopped)")]
    ConnectionLost,
    /// The guest agent speaks another protocol version.
    #[error("the guest agent speaks protocol version {agent}, this library speaks {host}: rebuild the agent and the initramfs with this version (cargo xtask setup)")]
    VersionMismatch {
        /// The agent's version.
        agent: u32,
        /// This library's.
        host: u32,
    },
    /// No running VM has this id.
    #[error("no running VM with id {0:?} (see `supermachine ps`)")]
    NoSuchVm(String),
    /// A volume's file is in use by another VM (its worker holds the
    /// file's lock), or by another start checking it right now.
    #[error("volume {} is in use by another VM: a volume is attached to one VM at a time (stop that VM, or use another file)", .path.display())]
    VolumeInUse {
        /// The volume's host file.
        path: PathBuf,
    },
    /// An argument the library cannot act on.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// [`crate::Vm::read_file`] of a file larger than its cap.
    #[error("{path} is larger than {limit} bytes, the most read_file keeps in memory: stream it with read_file_to, or raise the cap with read_file_limited")]
    ReadLimit {
        /// The file in the guest.
        path: String,
        /// The cap, in bytes.
        limit: u64,
    },
    /// [`crate::Vm::list_dir`] of a directory with more entries than its
    /// cap, or whose names and link targets need more memory than the cap
    /// allows ([`crate::LIST_DIR_BYTES_PER_ENTRY`] per entry).
    #[error("{path} has more than {limit} entries or {byte_limit} bytes of names and link targets, the most list_dir keeps in memory: raise the cap with list_dir_limited")]
    ListLimit {
        /// The directory in the guest.
        path: String,
        /// The cap, in entries.
        limit: usize,
        /// The memory the cap allows, in bytes.
        byte_limit: usize,
    },
    /// The runtime directory (where VM sockets live) is not safe to use.
    #[error("the runtime directory {} is not safe to keep VM sockets in: {problem}. Remove it, or set SUPERMACHINE_RUNTIME_DIR (or XDG_RUNTIME_DIR) to a directory of your own with mode 0700", .path.display())]
    UnsafeRuntimeDir {
        /// The runtime directory.
        path: PathBuf,
        /// What is wrong with it.
        problem: crate::worker::runtime::RuntimeDirProblem,
    },
    /// A worker's socket is served by a process of another user.
    #[error("{} is served by uid {uid}, neither you nor root: refusing to talk to it (is someone else's process in your runtime directory?)", .socket.display())]
    UntrustedPeer {
        /// The socket.
        socket: PathBuf,
        /// The uid of the process serving it.
        uid: u32,
    },
    /// The guest listed an entry whose name is not one plain path
    /// component (empty, `.`, `..`, a `/` or NUL in it, over 255 bytes):
    /// a copy to the host stops there rather than write outside its target.
    #[error("the guest listed an entry named {name:?} in {dir}: not a plain file name, refused")]
    UnsafeName {
        /// The name, as the guest sent it.
        name: String,
        /// The guest directory it was listed in.
        dir: String,
    },
    /// Getting an image failed: a bad reference or source, the registry,
    /// a corrupt blob, the store (the message says which, and what to do).
    #[error(transparent)]
    Oci(#[from] supermachine_oci::Error),
    /// An image's layers could not be turned into a root filesystem.
    #[error("building the root filesystem of {image}: {source}")]
    Rootfs {
        /// The image.
        image: String,
        /// What went wrong.
        #[source]
        source: supermachine_rootfs::Error,
    },
    /// The image names no command and the caller gave none.
    #[error("image {image} has no command to run (its config has no Entrypoint and no Cmd): give one after `--`, e.g. `supermachine run {image} -- sh`")]
    NoCommand {
        /// The image.
        image: String,
    },
    /// [`crate::Image::from_store`] of an image that was never pulled.
    #[error("image {0} is not in the local image store: pull it first (`supermachine pull {0}`)")]
    NotPulled(String),
    /// A snapshot could not be taken, read or restored; `reason` says
    /// which check failed, or what the worker said (with its kind).
    #[error("snapshot {}: {reason}", .path.display())]
    Snapshot {
        /// The snapshot directory.
        path: PathBuf,
        /// What failed.
        reason: crate::snapshot::SnapshotProblem,
    },
    /// [`crate::Pool::acquire`] after [`crate::Pool::shutdown`].
    #[error("the pool was shut down")]
    PoolClosed,
    /// Every VM the pool may have was in use for the whole wait.
    #[error("no VM came free in the pool within {} ms: all {max} are in use. Release VMs sooner, or raise PoolOptions::max or acquire_timeout", .waited.as_millis())]
    PoolTimeout {
        /// The pool's most VMs.
        max: usize,
        /// How long the acquire waited.
        waited: std::time::Duration,
    },
    /// The pool could not restore a VM for a waiting acquire.
    #[error("the pool could not restore a VM: {0}")]
    PoolRestore(#[source] std::sync::Arc<Error>),
}

fn log_hint(log: &Option<PathBuf>) -> String {
    match log {
        Some(p) => format!("; the guest's serial log is kept at {}", p.display()),
        None => String::new(),
    }
}

/// The worker's stderr, unless the outcome already says it (a worker
/// error's outcome is its stderr).
fn stderr_hint(outcome: &VmOutcome, stderr: &str) -> String {
    let s = stderr.trim();
    if s.is_empty() || outcome.to_string().contains(s) {
        String::new()
    } else {
        format!(" ({s})")
    }
}

impl Error {
    /// The guest said the path (or user) does not exist.
    ///
    /// ```
    /// use supermachine::{Error, ErrorKind};
    /// let e = Error::Agent {
    ///     kind: ErrorKind::NotFound,
    ///     message: "/etc/app.toml: not found".into(),
    /// };
    /// assert!(e.is_not_found());
    /// assert!(!Error::ConnectionLost.is_not_found());
    /// ```
    pub fn is_not_found(&self) -> bool {
        matches!(
            self,
            Error::Agent {
                kind: supermachine_protocol::ErrorKind::NotFound,
                ..
            }
        )
    }

    /// An I/O error with what was being done when it happened.
    ///
    /// ```
    /// let source = std::io::Error::from(std::io::ErrorKind::NotFound);
    /// let e = supermachine::Error::io("reading /etc/app.toml", source);
    /// assert!(e.to_string().starts_with("reading /etc/app.toml: "));
    /// ```
    pub fn io(what: impl Into<String>, source: std::io::Error) -> Self {
        Error::Io {
            what: what.into(),
            source,
        }
    }
}

impl From<supermachine_protocol::FrameError> for Error {
    fn from(e: supermachine_protocol::FrameError) -> Self {
        Error::Protocol(e.to_string())
    }
}
