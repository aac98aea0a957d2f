//! How a failure crosses into JavaScript: every error of the library (and
//! of this binding) becomes a [`Failure`] with a stable `code`, which the
//! package's JavaScript turns into an `Error` with `code`, `serialLog`,
//! `path` and `cause` properties.
//!
//! napi-rs builds the JavaScript error itself from a status and a message
//! (it has no way to add properties), so a `Failure` travels as JSON in
//! the message, behind [`MARKER`]; `lib/errors.cjs` recognizes the marker
//! and builds the real error. Any other napi error passes through as is.

use serde::Serialize;
use std::path::PathBuf;
use supermachine::{Error, ErrorKind};

/// Starts the message of an error that carries a [`Failure`] as JSON.
pub const MARKER: &str = "\u{1}supermachine-failure:";

/// An error as JavaScript sees it.
#[derive(Debug, Clone, Serialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct Failure {
    /// Stable and documented in index.d.ts: `ENOENT`, `EACCES`,
    /// `ETIMEDOUT`, `SUPERMACHINE_*`, ...
    pub code: &'static str,
    pub message: String,
    /// The guest's serial console log, when the VM is gone and left one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub serial_log: Option<PathBuf>,
    /// The guest path (or host path) the operation was about.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cause: Option<Box<Failure>>,
}

/// Codes of this binding's own failures (the rest come from [`code_of`]).
pub mod codes {
    /// A VM handle used after `release()` (or after its VM was released
    /// while the call ran).
    pub const VM_RELEASED: &str = "SUPERMACHINE_VM_RELEASED";
    /// A `WarmupVm` used after its warmup returned.
    pub const WARMUP_OVER: &str = "SUPERMACHINE_WARMUP_OVER";
    /// A feature whose engine support does not exist yet.
    pub const UNSUPPORTED: &str = "SUPERMACHINE_UNSUPPORTED";
    /// The user's warmup callback threw or rejected.
    pub const WARMUP_FAILED: &str = "SUPERMACHINE_WARMUP_FAILED";
}

impl Failure {
    pub fn new(code: &'static str, message: impl Into<String>) -> Failure {
        Failure {
            code,
            message: message.into(),
            serial_log: None,
            path: None,
            cause: None,
        }
    }

    pub fn with_path(mut self, path: impl Into<String>) -> Failure {
        self.path = Some(path.into());
        self
    }

    pub fn released() -> Failure {
        Failure::new(
            codes::VM_RELEASED,
            "this VM was released: acquire another one from the pool",
        )
    }

    pub fn unsupported(what: &str, missing: &str) -> Failure {
        Failure::new(
            codes::UNSUPPORTED,
            format!("{what} is not supported yet: it needs {missing}, which this build of supermachine does not have"),
        )
    }
}

impl From<Error> for Failure {
    fn from(e: Error) -> Failure {
        let cause = match &e {
            Error::PoolRestore(inner) => Some(Box::new(Failure::from_ref(inner))),
            _ => None,
        };
        Failure {
            code: code_of(&e),
            message: e.to_string(),
            serial_log: serial_log_of(&e),
            path: path_of(&e),
            cause,
        }
    }
}

impl Failure {
    /// A failure for an error the caller does not own (a pool's shared
    /// restore error): the same fields, from a reference.
    fn from_ref(e: &Error) -> Failure {
        Failure {
            code: code_of(e),
            message: e.to_string(),
            serial_log: serial_log_of(e),
            path: path_of(e),
            cause: None,
        }
    }
}

impl From<Failure> for napi::Error {
    fn from(f: Failure) -> napi::Error {
        let json = serde_json::to_string(&f).unwrap_or_else(|_| {
            // Serializing strings and paths cannot fail; keep the code anyway.
            format!(r#"{{"code":"{}","message":"(unprintable error)"}}"#, f.code)
        });
        napi::Error::new(napi::Status::GenericFailure, format!("{MARKER}{json}"))
    }
}

/// A library error straight to napi's error (for `?` in futures).
pub fn napi_err(e: Error) -> napi::Error {
    Failure::from(e).into()
}

/// The stable code of a library error. Guest refusals get the errno name
/// Node uses for the same condition; the rest are `SUPERMACHINE_*`.
pub fn code_of(e: &Error) -> &'static str {
    match e {
        Error::Agent { kind, .. } => match kind {
            ErrorKind::NotFound => "ENOENT",
            ErrorKind::PermissionDenied => "EACCES",
            ErrorKind::AlreadyExists => "EEXIST",
            ErrorKind::NotADirectory => "ENOTDIR",
            ErrorKind::IsADirectory => "EISDIR",
            ErrorKind::DirectoryNotEmpty => "ENOTEMPTY",
            ErrorKind::VersionMismatch => "SUPERMACHINE_VERSION_MISMATCH",
            ErrorKind::BadRequest => "SUPERMACHINE_PROTOCOL",
            ErrorKind::ConnectionRefused => "ECONNREFUSED",
            _ => "SUPERMACHINE_GUEST_FAILED",
        },
        Error::ConnectionLost | Error::VmEnded { .. } | Error::BootFailed { .. } => {
            "SUPERMACHINE_VM_DIED"
        }
        Error::BootTimeout { .. } => "SUPERMACHINE_BOOT_TIMEOUT",
        Error::PoolTimeout { .. } => "SUPERMACHINE_POOL_TIMEOUT",
        Error::PoolClosed => "SUPERMACHINE_POOL_CLOSED",
        Error::PoolRestore(_) => "SUPERMACHINE_RESTORE_FAILED",
        Error::WarmupTimeout { .. } => "ETIMEDOUT",
        Error::WarmupFailed { .. } => codes::WARMUP_FAILED,
        Error::NoListener { .. } => "SUPERMACHINE_NO_LISTENER",
        Error::ReadLimit { .. } => "ERR_FS_FILE_TOO_LARGE",
        Error::ListLimit { .. } => "SUPERMACHINE_LIST_LIMIT",
        Error::InvalidArgument(_) | Error::NoCommand { .. } => "ERR_INVALID_ARG_VALUE",
        Error::VolumeInUse { .. } => "SUPERMACHINE_VOLUME_IN_USE",
        Error::KernelNotBuilt { .. } | Error::KernelMissingAfterBuild { .. } => {
            "SUPERMACHINE_KERNEL_MISSING"
        }
        Error::NoKvm | Error::PvmHost => "SUPERMACHINE_NO_KVM",
        Error::KvmPermission => "EACCES",
        Error::MissingBinary(..) | Error::AgentNotStatic { .. } => "SUPERMACHINE_MISSING_BINARY",
        Error::MissingPackages { .. } | Error::ToolFailed { .. } => "SUPERMACHINE_HOST_TOOL",
        Error::Snapshot { reason, .. } => match reason {
            supermachine::snapshot::SnapshotProblem::NotFound => "ENOENT",
            supermachine::snapshot::SnapshotProblem::Exists => "EEXIST",
            _ => "SUPERMACHINE_BAD_SNAPSHOT",
        },
        Error::Oci(oci) => match oci {
            supermachine::oci::Error::ManifestNotFound { .. }
            | supermachine::oci::Error::ImageNotFound(_) => "SUPERMACHINE_IMAGE_NOT_FOUND",
            supermachine::oci::Error::InvalidReference { .. }
            | supermachine::oci::Error::InvalidSource { .. } => "ERR_INVALID_ARG_VALUE",
            supermachine::oci::Error::Unauthorized { .. } => "SUPERMACHINE_REGISTRY_AUTH",
            _ => "SUPERMACHINE_IMAGE",
        },
        Error::NotPulled(_) => "SUPERMACHINE_IMAGE_NOT_FOUND",
        Error::Rootfs { .. } | Error::RootfsRemoved { .. } => "SUPERMACHINE_IMAGE",
        Error::Io { source, .. } => errno_code(source),
        Error::VersionMismatch { .. } => "SUPERMACHINE_VERSION_MISMATCH",
        Error::Protocol(_) | Error::UnsafeName { .. } => "SUPERMACHINE_PROTOCOL",
        Error::UnsafeRuntimeDir { .. } | Error::UntrustedPeer { .. } => {
            "SUPERMACHINE_UNSAFE_RUNTIME_DIR"
        }
        _ => "SUPERMACHINE_INTERNAL",
    }
}

/// The errno name Node gives an OS error (`ENOENT`, ...), for the common
/// ones; the rest keep a generic code rather than a wrong name.
fn errno_code(e: &std::io::Error) -> &'static str {
    match e.raw_os_error() {
        Some(libc_errno::ENOENT) => "ENOENT",
        Some(libc_errno::EACCES) => "EACCES",
        Some(libc_errno::EPERM) => "EPERM",
        Some(libc_errno::EEXIST) => "EEXIST",
        Some(libc_errno::ENOTDIR) => "ENOTDIR",
        Some(libc_errno::EISDIR) => "EISDIR",
        Some(libc_errno::ENOSPC) => "ENOSPC",
        Some(libc_errno::ETIMEDOUT) => "ETIMEDOUT",
        Some(libc_errno::ECONNREFUSED) => "ECONNREFUSED",
        Some(libc_errno::EADDRINUSE) => "EADDRINUSE",
        Some(libc_errno::EADDRNOTAVAIL) => "EADDRNOTAVAIL",
        _ => match e.kind() {
            std::io::ErrorKind::NotFound => "ENOENT",
            std::io::ErrorKind::PermissionDenied => "EACCES",
            std::io::ErrorKind::AlreadyExists => "EEXIST",
            std::io::ErrorKind::TimedOut => "ETIMEDOUT",
            _ => "SUPERMACHINE_IO",
        },
    }
}

/// Linux errno values (x86_64), spelled out rather than pulling in libc
/// for a dozen constants.
mod libc_errno {
    pub const EPERM: i32 = 1;
    pub const ENOENT: i32 = 2;
    pub const EACCES: i32 = 13;
    pub const EEXIST: i32 = 17;
    pub const ENOTDIR: i32 = 20;
    pub const EISDIR: i32 = 21;
    pub const ENOSPC: i32 = 28;
    pub const ETIMEDOUT: i32 = 110;
    pub const ECONNREFUSED: i32 = 111;
    pub const EADDRINUSE: i32 = 98;
    pub const EADDRNOTAVAIL: i32 = 99;
}

fn serial_log_of(e: &Error) -> Option<PathBuf> {
    match e {
        Error::BootTimeout { serial_log, .. }
        | Error::BootFailed { serial_log, .. }
        | Error::VmEnded { serial_log, .. } => serial_log.clone(),
        Error::NoListener { serial_log, .. } => Some(serial_log.clone()),
        Error::PoolRestore(inner) => serial_log_of(inner),
        _ => None,
    }
}

fn path_of(e: &Error) -> Option<String> {
    match e {
        Error::ReadLimit { path, .. } => Some(path.clone()),
        Error::ListLimit { path, .. } => Some(path.clone()),
        Error::Snapshot { path, .. } => Some(path.display().to_string()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn decode(e: napi::Error) -> serde_json::Value {
        let json = e.reason.strip_prefix(MARKER).expect("marked");
        serde_json::from_str(json).expect("JSON")
    }

    #[test]
    fn guest_refusals_get_node_errno_names() {
        let e = Error::Agent {
            kind: ErrorKind::NotFound,
            message: "read /nope: not found".into(),
        };
        let v = decode(napi_err(e));
        assert_eq!(v["code"], "ENOENT");
        assert_eq!(v["message"], "read /nope: not found");
        assert!(v.get("serialLog").is_none());
    }

    #[test]
    fn a_dead_vm_names_its_serial_log() {
        let e = Error::VmEnded {
            outcome: supermachine::VmOutcome::Panic,
            serial_log: Some("/state/logs/ab12.log".into()),
        };
        let v = decode(napi_err(e));
        assert_eq!(v["code"], "SUPERMACHINE_VM_DIED");
        assert_eq!(v["serialLog"], "/state/logs/ab12.log");
    }

    #[test]
    fn a_failed_pool_restore_carries_its_cause() {
        let inner = Error::BootTimeout {
            secs: 60,
            serial_log: Some("/l".into()),
        };
        let v = decode(napi_err(Error::PoolRestore(std::sync::Arc::new(inner))));
        assert_eq!(v["code"], "SUPERMACHINE_RESTORE_FAILED");
        assert_eq!(v["cause"]["code"], "SUPERMACHINE_BOOT_TIMEOUT");
        assert_eq!(v["serialLog"], "/l");
    }

    #[test]
    fn os_errors_keep_their_errno_name() {
        let e = Error::io("opening /x", std::io::Error::from_raw_os_error(13));
        assert_eq!(code_of(&e), "EACCES");
        let e = Error::io("x", std::io::Error::other("odd"));
        assert_eq!(code_of(&e), "SUPERMACHINE_IO");
    }
}
