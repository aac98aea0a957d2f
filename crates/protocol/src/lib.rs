//! The host ↔ agent protocol.
//!
//! Transport: one vsock stream per operation. The host connects to guest port
//! [`AGENT_PORT`]; the first frame it sends is a [`Hello`] carrying
//! [`PROTOCOL_VERSION`] and the request; the agent refuses any other version
//! with [`ErrorKind::VersionMismatch`], and announces its own version in
//! [`AgentMessage::Ready`] so the host can refuse an agent it does not speak.
//!
//! Why a connection per operation rather than one multiplexed connection:
//! operations stay independent (a stalled stream cannot block another, no
//! shared state to wedge, closing the connection is a complete cancel), and
//! the flow control is vsock's own credit, end to end. The price is one vsock
//! handshake per operation, which the user-space vsock device answers without
//! leaving the worker process; `supermachine-bench exec` measures it next to
//! an exec round trip.
//!
//! When the agent is up it connects to the host on [`READY_PORT`] and sends
//! one [`AgentMessage::Ready`] frame, so the host learns readiness without
//! polling.

// Every public item says what it is: this crate is the contract between
// the host, the agent and the worker.
#![warn(missing_docs)]

mod frame;
pub mod fs_spec;
mod messages;
pub mod net_spec;
pub mod worker_control;

pub use frame::{decode, encode, read_frame, write_frame, FrameError};
pub use messages::*;

/// Bumped on every incompatible change. Host and agent refuse any other value.
pub const PROTOCOL_VERSION: u32 = 3;
/// Guest vsock port the agent listens on.
pub const AGENT_PORT: u32 = 1024;
/// Host vsock port the agent connects to once to announce readiness.
pub const READY_PORT: u32 = 1025;
/// Largest frame body either side accepts.
pub const MAX_FRAME_BODY: usize = 1 << 20;
/// Largest data chunk carried in one stdout/stderr/stdin/file-data frame.
pub const MAX_CHUNK: usize = 64 * 1024;
/// Most iterations of one [`Request::MeasureSpawn`] (its answer must fit
/// in a frame).
pub const MAX_SPAWN_PROBES: u32 = 10_000;
/// Most entries in one [`AgentMessage::Entries`] frame (each entry is well
/// under 4 KiB encoded, so a batch stays inside [`MAX_FRAME_BODY`]).
pub const MAX_ENTRIES_PER_FRAME: usize = 128;

/// The power port: how the agent tells the VMM, just before the guest stops,
/// whether it is a clean poweroff, a reboot, or a boot that failed. Without
/// ACPI a guest poweroff only halts the CPUs, which the host cannot see.
pub mod power_port {
    /// x86 I/O port the agent writes one byte to.
    pub const PORT: u16 = 0x600;
    /// A clean poweroff.
    pub const POWER_OFF: u8 = 0;
    /// A reboot.
    pub const REBOOT: u8 = 1;
    /// The agent hit a fatal error while booting (details on the console).
    pub const BOOT_FAILED: u8 = 2;
}

/// The `PATH[:ro]` syntax for disks, shared by the `supermachine` command
/// (`run --disk`) and the worker (`--disk`).
pub mod disk_spec {
    const READ_ONLY_SUFFIX: &str = ":ro";

    /// Splits a spec into the path and whether the disk is read-only.
    pub fn parse(spec: &str) -> (&str, bool) {
        match spec.strip_suffix(READ_ONLY_SUFFIX) {
            Some(path) => (path, true),
            None => (spec, false),
        }
    }

    /// The spec of a disk at `path`, read-only or not ([`parse`]'s inverse).
    pub fn format(path: &std::path::Path, read_only: bool) -> String {
        let suffix = if read_only { READ_ONLY_SUFFIX } else { "" };
        format!("{}{suffix}", path.display())
    }

    #[cfg(test)]
    mod tests {
        #[test]
        fn round_trips() {
            assert_eq!(super::parse("/a/b.img:ro"), ("/a/b.img", true));
            assert_eq!(super::parse("/a/b.img"), ("/a/b.img", false));
            let p = std::path::Path::new("/x.img");
            assert_eq!(super::parse(&super::format(p, true)), ("/x.img", true));
        }
    }
}

/// How a worker process ended, carried in its exit status so the supervisor
/// can tell a clean guest poweroff from a reboot, a kernel panic or a crash.
pub mod worker_exit {
    /// The guest powered off (normal end).
    pub const POWER_OFF: i32 = 0;
    /// The worker failed on the host side; the reason is on its stderr.
    pub const ERROR: i32 = 1;
    /// Bad worker arguments.
    pub const USAGE: i32 = 2;
    /// The guest rebooted.
    pub const REBOOT: i32 = 10;
    /// The guest kernel panicked; the serial log holds the trace.
    pub const PANIC: i32 = 11;
    /// The vCPU hit a fatal state (triple fault, KVM internal error).
    pub const CRASH: i32 = 12;
    /// The worker was told to stop (SIGTERM/SIGINT/SIGHUP, or its parent died).
    pub const STOPPED: i32 = 13;
    /// The guest agent could not boot the VM (e.g. the root filesystem did not mount).
    pub const BOOT_FAILED: i32 = 14;

    /// The signal a worker owned by its parent gets when that parent dies
    /// (`PR_SET_PDEATHSIG`): SIGUSR2 on x86_64 Linux. Not SIGTERM, which
    /// the owner sends to stop a worker: when the owner dies its threads
    /// end one by one, and the worker may see the signal while its parent
    /// pid still names the dying process, so only the signal itself says
    /// "your owner is gone".
    pub const OWNER_GONE_SIGNAL: i32 = 12;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hello_round_trips() {
        let hello = Hello::new(Request::Exec(ExecRequest {
            argv: vec!["sh".into(), "-c".into(), "echo hi".into()],
            env: vec![("A".into(), "b".into())],
            cwd: Some("/tmp".into()),
            stdin: true,
            timeout_ms: Some(5),
            pty: Some(WindowSize { rows: 24, cols: 80 }),
            ..Default::default()
        }));
        let bytes = encode(&hello).unwrap();
        let back: Hello = read_frame(&mut &bytes[..]).unwrap();
        assert_eq!(back, hello);
    }

    #[test]
    fn a_full_listing_batch_fits_in_one_frame() {
        let long = "x".repeat(255);
        let entry = DirEntry {
            name: long.clone(),
            stat: FileStat {
                kind: FileKind::Symlink,
                mode: 0o7777,
                uid: u32::MAX,
                gid: u32::MAX,
                size: u64::MAX,
                mtime: i64::MIN,
                link_target: Some("/".repeat(4095)),
            },
        };
        let batch = AgentMessage::Entries(vec![entry; MAX_ENTRIES_PER_FRAME]);
        assert!(encode(&batch).is_ok());
        let chunk = AgentMessage::Data(vec![0xff; MAX_CHUNK]);
        assert!(encode(&chunk).is_ok());
    }

    #[test]
    fn oversized_length_is_refused_before_allocating() {
        let bytes = (u32::MAX).to_le_bytes();
        let err = read_frame::<Hello, _>(&mut &bytes[..]).unwrap_err();
        assert!(matches!(err, FrameError::TooLarge(_)), "{err}");
    }

    #[test]
    fn garbage_body_is_a_decode_error() {
        let mut bytes = 3u32.to_le_bytes().to_vec();
        bytes.extend_from_slice(&[0xff, 0xff, 0xff]);
        assert!(matches!(
            read_frame::<Hello, _>(&mut &bytes[..]),
            Err(FrameError::Decode(_))
        ));
    }

    #[test]
    fn clean_eof_is_closed_and_truncation_is_io() {
        assert!(matches!(
            read_frame::<Hello, _>(&mut &[][..]),
            Err(FrameError::Closed)
        ));
        let mut bytes = encode(&AgentMessage::Pong).unwrap();
        bytes.push(0);
        bytes[0] = 9; // claims more body than present
        assert!(matches!(
            read_frame::<AgentMessage, _>(&mut &bytes[..]),
            Err(FrameError::Io(_))
        ));
    }
}
