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
    #[error("the guest kernel is not built yet ({reason}): run `supermachine kernel build`")]
    KernelNotBuilt { reason: String },
    #[error("/dev/kvm is missing: this host has no KVM. Enable hardware virtualization (VT-x/AMD-V) and load kvm-intel or kvm-amd")]
    NoKvm,
    #[error("/dev/kvm: permission denied. Add your user to the kvm group (sudo usermod -aG kvm $USER) and log in again")]
    KvmPermission,
    #[error("this host's /dev/kvm is PVM (software virtualization, no VT-x/AMD-V): ordinary guest kernels cannot run on it. Use a host with hardware virtualization, or the project's lab: cargo xtask lab -- <command>")]
    PvmHost,
    #[error("{0} not found: build the workspace (cargo xtask setup) or set {1}")]
    MissingBinary(&'static str, &'static str),
    /// A Debian package the host needs is missing.
    #[error("{what} needs these Debian packages: {}apt-get install -y {}", if *.as_root { "" } else { "sudo " }, .packages.join(" "))]
    MissingPackages {
        what: &'static str,
        packages: Vec<String>,
        /// Whether this process runs as root (else the hint says sudo).
        as_root: bool,
    },
    /// A host tool ran and failed.
    #[error("{tool} failed ({status}){}", .hint.as_deref().map(|h| format!(": {h}")).unwrap_or_default())]
    ToolFailed {
        tool: &'static str,
        status: String,
        hint: Option<&'static str>,
    },
    /// The guest kernel build finished without producing a kernel.
    #[error("the kernel build finished without producing {}", .path.display())]
    KernelMissingAfterBuild { path: PathBuf },
    /// The agent binary needs a dynamic loader, so it cannot be PID 1.
    #[error("{} is dynamically linked and cannot be the guest's init: build the static agent with `cargo xtask setup`", .path.display())]
    AgentNotStatic { path: PathBuf },
    /// The cached root filesystem of a pulled image is gone.
    #[error("the root filesystem of {image} ({}) was removed (by `supermachine gc`?): pull the image again", .path.display())]
    RootfsRemoved { image: String, path: PathBuf },
    /// Sixteen random VM ids in a row were taken.
    #[error("could not pick a free VM id in the runtime directory")]
    NoFreeVmId,
    /// A background task of the library panicked or was cancelled.
    #[error("the {task} task failed: {source}")]
    Task {
        task: &'static str,
        source: tokio::task::JoinError,
    },
    /// Writing or reading JSON the library itself produces.
    #[error("{what}: {source}")]
    Json {
        what: &'static str,
        source: serde_json::Error,
    },
    /// A bake's warmup ran past its time.
    #[error("the warmup did not finish within {secs} s")]
    WarmupTimeout { secs: u64 },
    /// A bake's warmup command failed.
    #[error("warmup `{command}` failed (exit {code}): {stderr}")]
    WarmupFailed {
        command: String,
        code: i32,
        stderr: String,
    },
    /// A bake waited for a listener that never came.
    #[error("nothing listened on guest TCP port {port} within {secs} s (is the workload starting? its output is in {})", .serial_log.display())]
    NoListener {
        port: u16,
        secs: u64,
        serial_log: PathBuf,
    },
    /// A state the library's own logic should never reach.
    #[error("internal error: {0}")]
    Internal(&'static str),
    #[error("{what}: {source}")]
    Io {
        what: String,
        source: std::io::Error,
    },
    #[error("the VM did not become ready within {secs} s{}", log_hint(.serial_log))]
    BootTimeout {
        secs: u64,
        serial_log: Option<PathBuf>,
    },
    #[error("the VM ended before it was ready: {outcome}{}{}", stderr_hint(.outcome, .stderr), log_hint(.serial_log))]
    BootFailed {
        outcome: VmOutcome,
        stderr: String,
        serial_log: Option<PathBuf>,
    },
    #[error("the VM did not end cleanly: {outcome}{}", log_hint(.serial_log))]
    VmEnded {
        outcome: VmOutcome,
        serial_log: Option<PathBuf>,
    },
    #[error("agent protocol: {0}")]
    Protocol(String),
    #[error("{message}")]
    Agent {
        kind: supermachine_protocol::ErrorKind,
        message: String,
    },
    #[error("the connection to the guest agent was lost (the VM may have stopped)")]
    ConnectionLost,
    #[error("the guest agent speaks protocol version {agent}, this library speaks {host}: rebuild the agent and the initramfs with this version (cargo xtask setup)")]
    VersionMismatch { agent: u32, host: u32 },
    #[error("no running VM with id {0:?} (see `supermachine ps`)")]
    NoSuchVm(String),
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// [`crate::Vm::read_file`] of a file larger than its cap.
    #[error("{path} is larger than {limit} bytes, the most read_file keeps in memory: stream it with read_file_to, or raise the cap with read_file_limited")]
    ReadLimit { path: String, limit: u64 },
    /// [`crate::Vm::list_dir`] of a directory with more entries than its cap.
    #[error("{path} has more than {limit} entries, the most list_dir keeps in memory: raise the cap with list_dir_limited")]
    ListLimit { path: String, limit: usize },
    /// The runtime directory (where VM sockets live) is not safe to use.
    #[error("the runtime directory {} is not safe to keep VM sockets in: {problem}. Remove it, or set SUPERMACHINE_RUNTIME_DIR (or XDG_RUNTIME_DIR) to a directory of your own with mode 0700", .path.display())]
    UnsafeRuntimeDir {
        path: PathBuf,
        problem: crate::worker::runtime::RuntimeDirProblem,
    },
    /// A worker's socket is served by a process of another user.
    #[error("{} is served by uid {uid}, neither you nor root: refusing to talk to it (is someone else's process in your runtime directory?)", .socket.display())]
    UntrustedPeer { socket: PathBuf, uid: u32 },
    /// The guest listed an entry whose name is not one plain path
    /// component (empty, `.`, `..`, a `/` or NUL in it, over 255 bytes):
    /// a copy to the host stops there rather than write outside its target.
    #[error("the guest listed an entry named {name:?} in {dir}: not a plain file name, refused")]
    UnsafeName { name: String, dir: String },
    /// Getting an image failed: a bad reference or source, the registry,
    /// a corrupt blob, the store (the message says which, and what to do).
    #[error(transparent)]
    Oci(#[from] supermachine_oci::Error),
    /// An image's layers could not be turned into a root filesystem.
    #[error("building the root filesystem of {image}: {source}")]
    Rootfs {
        image: String,
        #[source]
        source: supermachine_rootfs::Error,
    },
    /// The image names no command and the caller gave none.
    #[error("image {image} has no command to run (its config has no Entrypoint and no Cmd): give one after `--`, e.g. `supermachine run {image} -- sh`")]
    NoCommand { image: String },
    /// [`crate::Image::from_store`] of an image that was never pulled.
    #[error("image {0} is not in the local image store: pull it first (`supermachine pull {0}`)")]
    NotPulled(String),
    /// A snapshot could not be taken, read or restored; `reason` says
    /// which check failed, or what the worker said (with its kind).
    #[error("snapshot {}: {reason}", .path.display())]
    Snapshot {
        path: PathBuf,
        reason: crate::snapshot::SnapshotProblem,
    },
    /// [`crate::Pool::acquire`] after [`crate::Pool::shutdown`].
    #[error("the pool was shut down")]
    PoolClosed,
    /// Every VM the pool may have was in use for the whole wait.
    #[error("no VM came free in the pool within {} ms: all {max} are in use. Release VMs sooner, or raise PoolOptions::max or acquire_timeout", .waited.as_millis())]
    PoolTimeout {
        max: usize,
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
