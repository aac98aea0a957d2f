use std::io;
use std::path::PathBuf;

/// Why the lab could not run a command. Every message says what to do.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    #[error("no command given: usage is `cargo xtask lab -- <command> [args...]`")]
    NoCommand,

    #[error("{what}: {source}")]
    Io {
        what: String,
        #[source]
        source: io::Error,
    },

    #[error(
        "the lab needs {missing}, which is not installed; install it as root with:\n    {command}"
    )]
    MissingPackages { missing: String, command: String },

    #[error("`{command}` failed ({status}); fix the cause below and retry:\n{output}")]
    Tool {
        command: String,
        status: String,
        output: String,
    },

    #[error(
        "no generic Debian kernel package of series {0} (linux-image-{0}.*-amd64-unsigned) \
         in apt's lists; the lab needs a Debian 12 (bookworm) host or container with the \
         main and security archives enabled: run `apt-get update` as root and retry \
         (SUPERMACHINE_LAB_KERNEL picks the series)"
    )]
    KernelPackageNotFound(String),

    #[error("{0}")]
    BadKernelPackage(String),

    #[error("the lab's QEMU: {0}")]
    BadQemu(String),

    #[error(
        "the working directory {0} is under /run or /dev/shm, which are fresh tmpfs \
         inside the lab (Unix sockets do not work over 9p); run from a directory elsewhere, \
         e.g. under the cargo target dir"
    )]
    CwdHidden(PathBuf),

    #[error("no cache directory: set XDG_CACHE_HOME or HOME")]
    NoCacheDir,

    #[error("the command did not finish within {secs}s and was killed{console}")]
    Timeout { secs: u64, console: String },

    #[error(
        "the lab froze: no heartbeat for {silent_secs}s (after {beats} beats; 0 means it never \
         reached its init), so it was killed{console}"
    )]
    Frozen {
        silent_secs: u64,
        beats: u64,
        console: String,
    },

    #[error("cannot share {path} with the lab: {why}")]
    BadShare { path: PathBuf, why: &'static str },

    #[error(
        "the lab stopped without reporting the command's exit code ({status}); the lab \
         kernel probably panicked or QEMU failed{console}"
    )]
    NoExitCode { status: String, console: String },
}

impl LabError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(io::Error) -> LabError {
        let what = what.into();
        move |source| LabError::Io { what, source }
    }
}
