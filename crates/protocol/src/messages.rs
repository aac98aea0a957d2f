//! What the host and the agent say to each other.

use crate::PROTOCOL_VERSION;
use serde::{Deserialize, Serialize};

/// First frame of every host → agent connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hello {
    /// The host's [`PROTOCOL_VERSION`]; the agent refuses any other.
    pub version: u32,
    /// The operation this connection carries.
    pub request: Request,
}

impl Hello {
    /// A hello of this build's protocol version carrying `request`.
    pub fn new(request: Request) -> Self {
        Hello {
            version: PROTOCOL_VERSION,
            request,
        }
    }
}

/// One operation. Each runs on its own connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Request {
    /// Answered with [`AgentMessage::Pong`].
    Ping,
    /// Answered with [`AgentMessage::Version`].
    Version,
    /// Runs a process. The agent answers [`AgentMessage::Started`] (or
    /// [`AgentMessage::Exited`] with code 127/126 and a message on stderr
    /// when the program cannot be started, as a shell would), then streams
    /// output, then [`AgentMessage::Exited`]. Without stdin and a PTY the
    /// agent may hold `Started` back and send it in one packet with the
    /// first output or with `Exited` (it still comes first): such an exec
    /// is one for its output, and every packet the guest sends costs a VM
    /// exit. The host may send
    /// [`HostMessage::Stdin`], [`HostMessage::CloseStdin`],
    /// [`HostMessage::Signal`] and [`HostMessage::Resize`] meanwhile.
    /// Closing the connection before `Exited` kills the child's session
    /// (every process group in it).
    Exec(ExecRequest),
    /// Writes a file: the host sends [`HostMessage::Data`] chunks, then
    /// [`HostMessage::End`]; the agent answers [`AgentMessage::Done`] once the
    /// file is complete on disk. A create/truncate write goes to a temporary
    /// file renamed over the target at `End`, so an interrupted write never
    /// leaves a half-written file behind.
    WriteFile(WriteFileRequest),
    /// Reads a file: the agent answers [`AgentMessage::Stat`], then
    /// [`AgentMessage::Data`] chunks, then [`AgentMessage::Done`] with the
    /// byte count.
    ReadFile {
        /// The file, absolute in the guest.
        path: String,
    },
    /// Answered with [`AgentMessage::Stat`]. Symlinks are not followed.
    Stat {
        /// The path, absolute in the guest.
        path: String,
    },
    /// Creates a directory (and its missing parents when `parents`, like
    /// `mkdir -p`, which also accepts an existing directory). Answered with
    /// [`AgentMessage::Done`].
    Mkdir {
        /// The directory, absolute in the guest.
        path: String,
        /// Permission bits of the directory (missing parents get 0755).
        mode: u32,
        /// Create missing parents too, and accept an existing directory.
        parents: bool,
    },
    /// Removes a file, symlink or empty directory; with `recursive`, a
    /// directory and everything below it (symlinks are removed, never
    /// followed). Answered with [`AgentMessage::Done`].
    Remove {
        /// What to remove, absolute in the guest.
        path: String,
        /// Remove a directory with everything below it.
        recursive: bool,
    },
    /// Lists a directory: [`AgentMessage::Entries`] batches, then
    /// [`AgentMessage::Done`] with the entry count.
    List {
        /// The directory, absolute in the guest.
        path: String,
    },
    /// Benchmark probe: the agent starts `argv` (stdio /dev/null) and waits
    /// for it, `iterations` times in a row, timing each from just before the
    /// fork to the reaped exit status, and answers
    /// [`AgentMessage::SpawnTimes`]. At most [`crate::MAX_SPAWN_PROBES`].
    MeasureSpawn {
        /// The program and its arguments.
        argv: Vec<String>,
        /// How many times to start it.
        iterations: u32,
    },
    /// Stops every process, syncs and unmounts filesystems, and powers the VM
    /// off (or reboots it). Answered with [`AgentMessage::ShuttingDown`].
    Shutdown {
        /// Reboot instead of powering off.
        reboot: bool,
    },
    /// Sent by the host once after it restores the VM from a snapshot,
    /// before anything else: the guest was frozen and copied, so its wall
    /// clock is stale and every copy starts with the same random state and
    /// identity. The agent sets the clock, mixes the seed into the kernel's
    /// entropy pool and reseeds its CRNG, sets the hostname and machine id,
    /// and answers [`AgentMessage::Done`]; a step that fails is an
    /// [`AgentMessage::Error`] naming it.
    Restored(RestoreFixup),
    /// Opens a TCP connection to `port` on the guest's loopback (127.0.0.1,
    /// then ::1) and turns this connection into a byte pipe to it. The
    /// agent answers [`AgentMessage::Done`] once connected (or
    /// [`AgentMessage::Error`] with [`ErrorKind::ConnectionRefused`] when
    /// nothing listens there); every byte after that frame, both ways, is
    /// the TCP stream's. A half-close of either side is passed on as a
    /// half-close (FIN); a reset as the connection closing whole. Agents
    /// older than this request answer [`ErrorKind::BadRequest`].
    ConnectTcp {
        /// The guest port.
        port: u16,
    },
}

/// What makes a restored copy of a VM its own machine.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RestoreFixup {
    /// The host's wall clock when it sent this, in nanoseconds since the
    /// Unix epoch; becomes the guest's `CLOCK_REALTIME`.
    pub unix_time_ns: u64,
    /// Fresh random bytes from the host for this copy alone (at least 32).
    pub seed: Vec<u8>,
    /// The copy's hostname; empty leaves it unchanged.
    pub hostname: String,
    /// The copy's `/etc/machine-id` (32 lowercase hex digits); empty leaves
    /// it unchanged.
    pub machine_id: String,
}

/// How [`ExecRequest::env`] combines with the agent's base environment.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum EnvMode {
    /// Base environment (PATH, HOME, TERM) plus the request's variables,
    /// which win on a clash.
    #[default]
    Extend,
    /// Exactly the request's variables.
    Replace,
}

/// A terminal size in character cells.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct WindowSize {
    /// Lines.
    pub rows: u16,
    /// Columns.
    pub cols: u16,
}

/// Options of [`Request::Exec`]: what to run, and how.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct ExecRequest {
    /// The program (looked up in PATH when it has no `/`) and its arguments.
    pub argv: Vec<String>,
    /// Environment variables, as `(name, value)`.
    pub env: Vec<(String, String)>,
    /// How `env` combines with the agent's base environment.
    pub env_mode: EnvMode,
    /// Working directory; the root when unset.
    pub cwd: Option<String>,
    /// `name`, `uid`, `uid:gid`, `name:group`, resolved through the guest's
    /// /etc/passwd and /etc/group (supplementary groups included); root when
    /// unset. HOME follows the user unless `env` sets it.
    pub user: Option<String>,
    /// Whether the host will send stdin frames. When false the child's stdin
    /// is /dev/null (or, with a PTY, the terminal, which never sees input).
    pub stdin: bool,
    /// Milliseconds until the agent SIGKILLs every process group of the
    /// child's session and reports [`ExitStatus::timed_out`].
    pub timeout_ms: Option<u64>,
    /// Bytes of stdout sent to the host; the rest is read and counted in
    /// [`ExitStatus::stdout_dropped`], so the child never blocks on it.
    pub stdout_limit: Option<u64>,
    /// As `stdout_limit`, for stderr.
    pub stderr_limit: Option<u64>,
    /// Run on a new pseudo-terminal of this size: stdin, stdout and stderr
    /// are the terminal, all output arrives as stdout, and the process is
    /// the session leader with the terminal as its controlling TTY (so a
    /// Ctrl-C byte in stdin sends SIGINT to its foreground group).
    pub pty: Option<WindowSize>,
    /// Start the process and answer `Started`, then close: the process
    /// keeps running, its stdin is /dev/null and its output goes to the
    /// guest console (the VM's serial log).
    pub detach: bool,
}

/// Options of [`Request::WriteFile`].
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WriteFileRequest {
    /// The file, absolute in the guest.
    pub path: String,
    /// Permission bits of a created file; an existing file keeps its own
    /// when appended to.
    pub mode: u32,
    /// Owner of the file; unchanged (root for a new file) when unset.
    pub uid: Option<u32>,
    /// Group of the file; unchanged (root for a new file) when unset.
    pub gid: Option<u32>,
    /// Append to the file (created when missing) instead of replacing it.
    pub append: bool,
    /// Create missing parent directories (mode 0755).
    pub create_parents: bool,
}

impl WriteFileRequest {
    /// Create or replace `path` with mode 0644, root-owned.
    pub fn new(path: impl Into<String>) -> Self {
        WriteFileRequest {
            path: path.into(),
            mode: 0o644,
            uid: None,
            gid: None,
            append: false,
            create_parents: false,
        }
    }
}

/// Frames the host sends after the hello, on an exec or write-file connection.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum HostMessage {
    /// Bytes for the child's stdin (with a PTY: typed at the terminal).
    Stdin(Vec<u8>),
    /// End of stdin: the child's stdin is closed (with a PTY: an EOF
    /// character is written to the terminal).
    CloseStdin,
    /// Sends a signal to the process (with a PTY: to the terminal's
    /// foreground process group).
    Signal(i32),
    /// Resizes the PTY (the process gets SIGWINCH). Ignored without a PTY.
    Resize(WindowSize),
    /// A chunk of a file being written.
    Data(Vec<u8>),
    /// End of the file being written: commit it.
    End,
}

/// How an exec'd process ended.
///
/// ```
/// use supermachine_protocol::ExitStatus;
/// let status = ExitStatus { code: Some(3), ..Default::default() };
/// assert!(!status.success());
/// assert_eq!(status.shell_code(), 3);
/// let killed = ExitStatus { signal: Some(9), ..Default::default() };
/// assert_eq!(killed.shell_code(), 137);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ExitStatus {
    /// The exit code, when the process exited.
    pub code: Option<i32>,
    /// The signal that killed it, when one did.
    pub signal: Option<i32>,
    /// The timeout expired and the agent killed the child's session.
    pub timed_out: bool,
    /// Stdout bytes beyond `stdout_limit`, read from the process and not sent.
    pub stdout_dropped: u64,
    /// Stderr bytes beyond `stderr_limit`.
    pub stderr_dropped: u64,
}

impl ExitStatus {
    /// Exited with code 0.
    pub fn success(&self) -> bool {
        self.code == Some(0)
    }

    /// Shell convention: the exit code, or 128 + the signal number.
    pub fn shell_code(&self) -> i32 {
        match (self.code, self.signal) {
            (Some(c), _) => c,
            (None, Some(s)) => 128 + s,
            (None, None) => 255,
        }
    }
}

/// What kind of file a path names.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum FileKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link (never followed).
    Symlink,
    /// A character device.
    CharDevice,
    /// A block device.
    BlockDevice,
    /// A named pipe.
    Fifo,
    /// A Unix socket.
    Socket,
}

/// A file's metadata (`lstat`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileStat {
    /// What kind of file it is.
    pub kind: FileKind,
    /// Permission bits, setuid/setgid/sticky included (no file type bits).
    pub mode: u32,
    /// Owner.
    pub uid: u32,
    /// Group.
    pub gid: u32,
    /// Size in bytes (of a symlink: its target's length).
    pub size: u64,
    /// Modification time, seconds since the epoch.
    pub mtime: i64,
    /// Where a symlink points.
    pub link_target: Option<String>,
}

/// One directory entry of a [`Request::List`] answer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DirEntry {
    /// The entry's name (non-UTF-8 bytes replaced by U+FFFD).
    pub name: String,
    /// The entry's metadata (`lstat`).
    pub stat: FileStat,
}

/// Frames the agent sends.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum AgentMessage {
    /// Sent once on [`crate::READY_PORT`] when the agent is up.
    Ready {
        /// The agent's [`crate::PROTOCOL_VERSION`].
        protocol: u32,
        /// The agent's build (`AGENT_VERSION`).
        agent_version: String,
    },
    /// The answer to [`Request::Ping`].
    Pong,
    /// The answer to [`Request::Version`].
    Version {
        /// The agent's [`crate::PROTOCOL_VERSION`].
        protocol: u32,
        /// The agent's build.
        agent_version: String,
    },
    /// The process of a [`Request::Exec`] runs.
    Started {
        /// Its process id in the guest.
        pid: u32,
    },
    /// Output of the process on stdout (with a PTY: all its output).
    Stdout(Vec<u8>),
    /// Output of the process on stderr.
    Stderr(Vec<u8>),
    /// The process ended: the last frame of an exec.
    Exited(ExitStatus),
    /// A chunk of a file being read.
    Data(Vec<u8>),
    /// The operation finished; `count` is bytes written or read, entries
    /// listed, or 0.
    Done {
        /// Bytes, entries, or 0 (see above).
        count: u64,
    },
    /// A file's metadata: the answer to [`Request::Stat`], and the first
    /// frame of a [`Request::ReadFile`] answer.
    Stat(FileStat),
    /// A batch of directory entries of a [`Request::List`], at most
    /// [`crate::MAX_ENTRIES_PER_FRAME`].
    Entries(Vec<DirEntry>),
    /// Nanoseconds per spawn of a [`Request::MeasureSpawn`].
    SpawnTimes(Vec<u64>),
    /// The answer to [`Request::Shutdown`]: the guest is going down.
    ShuttingDown,
    /// The request failed; the last frame of its connection.
    Error {
        /// What kind of failure, for the host to act on.
        kind: ErrorKind,
        /// For people: what went wrong.
        message: String,
    },
}

/// The kinds of [`AgentMessage::Error`] the host may act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum ErrorKind {
    /// The peer speaks another protocol version.
    VersionMismatch,
    /// A frame could not be decoded or came out of order.
    BadRequest,
    /// The request was understood but failed in the guest.
    Failed,
    /// No such file or directory (or user, for `ExecRequest::user`).
    NotFound,
    /// The guest refused access (EACCES, EPERM).
    PermissionDenied,
    /// The path exists already (EEXIST).
    AlreadyExists,
    /// A component of the path is not a directory (ENOTDIR).
    NotADirectory,
    /// The path is a directory where a file was expected (EISDIR).
    IsADirectory,
    /// A directory to remove is not empty (ENOTEMPTY).
    DirectoryNotEmpty,
    /// Nothing listens on the guest port of a [`Request::ConnectTcp`].
    ConnectionRefused,
}
