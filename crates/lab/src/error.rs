use std::io;
use std::path::PathBuf;

/// Why the lab could not run a command. Every message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// [`crate::run`] was given an empty argv.
    #[error("no command given: usage is `cargo xtask lab -- <command> [args...]`")]
    NoCommand,

    /// A file or process operation failed; `what` names the operation and
    /// its path or command, since an `io::Error` alone says neither.
    #[error("{what}: {source}")]
    Io {
        /// What the lab was doing, e.g. "cannot read /path".
        what: String,
        /// The underlying error.
        #[source]
        source: io::Error,
    },

    /// A Debian package (or apt itself) that the lab or
    /// [`crate::ensure_packages`] needs is missing and could not be installed
    /// here: not root, or no apt on this host.
    #[error(
        "the lab needs {missing}, which is not installed; install it as root with:\n    {command}"
    )]
    MissingPackages {
        /// The missing packages, space-separated (or the missing apt tool).
        missing: String,
        /// What the user should run to install them, or why there is none.
        command: String,
    },

    /// A helper program the lab runs (apt-get, dpkg, ...) exited unsuccessfully.
    #[error("`{command}` failed ({status}); fix the cause below and retry:\n{output}")]
    Tool {
        /// The command line, as one string.
        command: String,
        /// Its exit status, as `ExitStatus` displays it.
        status: String,
        /// The last lines of its stdout and stderr together.
        output: String,
    },

    /// apt knows no kernel package of the series the lab boots (the field is
    /// the series): usually empty apt lists, or a host that is not Debian 12.
    #[error(
        "no generic Debian kernel package of series {0} (linux-image-{0}.*-amd64-unsigned) \
         in apt's lists; the lab needs a Debian 12 (bookworm) host or container with the \
         main and security archives enabled: run `apt-get update` as root and retry \
         (SUPERMACHINE_LAB_KERNEL picks the series)"
    )]
    KernelPackageNotFound(String),

    /// The kernel package was found but is not usable as the lab's kernel
    /// (no version, no .deb, not the expected layout); the text says which.
    #[error("{0}")]
    BadKernelPackage(String),

    /// The lab's QEMU could not be fetched or does not run here, or
    /// `SUPERMACHINE_LAB_QEMU` names a path that is not a file.
    #[error("the lab's QEMU: {0}")]
    BadQemu(String),

    /// The working directory (the field) is under /run or /dev/shm, where
    /// the lab mounts fresh tmpfs, so the command would not see it.
    #[error(
        "the working directory {0} is under /run or /dev/shm, which are fresh tmpfs \
         inside the lab (Unix sockets do not work over 9p); run from a directory elsewhere, \
         e.g. under the cargo target dir"
    )]
    CwdHidden(PathBuf),

    /// Neither `XDG_CACHE_HOME` nor `HOME` is set, so there is nowhere to
    /// keep the lab's kernel, QEMU and initramfs (`~/.cache/supermachine/lab`).
    #[error("no cache directory: set XDG_CACHE_HOME or HOME")]
    NoCacheDir,

    /// The command outlived [`crate::LabOptions::timeout`] and was killed.
    #[error("the command did not finish within {secs}s and was killed{console}")]
    Timeout {
        /// The timeout, in whole seconds.
        secs: u64,
        /// The tail of the lab's console and QEMU log, headed and ready to
        /// append to the message; empty on a Hardware host.
        console: String,
    },

    /// The lab's heartbeat stood still for
    /// [`crate::LabOptions::freeze_after`], so the lab was killed.
    #[error(
        "the lab froze: no heartbeat for {silent_secs}s (after {beats} beats; 0 means it never \
         reached its init), so it was killed{console}"
    )]
    Frozen {
        /// How long the heartbeat had not changed, in seconds.
        silent_secs: u64,
        /// Heartbeats seen before it stopped; 0 means the lab never got
        /// as far as its init.
        beats: u64,
        /// The tail of the lab's console and QEMU log, headed and ready to
        /// append to the message.
        console: String,
    },

    /// A path in [`crate::LabOptions::shares`] cannot be shared.
    #[error("cannot share {path} with the lab: {why}")]
    BadShare {
        /// The share as the caller gave it.
        path: PathBuf,
        /// Why not, e.g. "it is not a directory".
        why: &'static str,
    },

    /// QEMU exited but the lab never wrote the command's exit code: the
    /// lab's kernel or init died, or QEMU failed.
    #[error(
        "the lab stopped without reporting the command's exit code ({status}); the lab \
         kernel probably panicked or QEMU failed{console}"
    )]
    NoExitCode {
        /// QEMU's exit status.
        status: String,
        /// The tail of the lab's console and QEMU log, headed and ready to
        /// append to the message.
        console: String,
    },
}

impl LabError {
    /// When the emulated machine itself failed (its heartbeat stopped, or it
    /// died without reporting an exit code), a one-line label and the
    /// message: the command may pass when run again in a new lab. `None`
    /// for every other error, which a rerun would only repeat.
    pub fn lab_failed(&self) -> Option<String> {
        match self {
            LabError::Frozen { .. } => Some(format!("STALL: {self}")),
            LabError::NoExitCode { .. } => Some(format!("LAB CRASH: {self}")),
            _ => None,
        }
    }

    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> LabError {
        let what = what.into();
        move |source| LabError::Io { what, source }
    }
}

#[cfg(test)]
mod tests {
    use super::LabError;

    #[test]
    fn only_a_failed_machine_is_worth_a_rerun() {
        let frozen = LabError::Frozen {
            silent_secs: 60,
            beats: 3,
            console: String::new(),
        };
        let crashed = LabError::NoExitCode {
            status: "exit status: 1".into(),
            console: String::new(),
        };
        assert!(frozen
            .lab_failed()
            .unwrap()
            .starts_with("STALL: the lab froze"));
        assert!(crashed.lab_failed().unwrap().starts_with("LAB CRASH: "));
        assert_eq!(LabError::NoCommand.lab_failed(), None);
        assert_eq!(LabError::NoCacheDir.lab_failed(), None);
    }
}
