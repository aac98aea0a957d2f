//! Drives a real `supermachine-agent --serve-unix` process.
//!
//! Set `SUPERMACHINE_AGENT_BIN` to run the same tests against another build
//! of the agent (the static `agent`-profile binary, say).

#![allow(dead_code)] // each test file uses a different subset

use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};
use supermachine_protocol::{
    read_frame, write_frame, AgentMessage, ErrorKind, ExecRequest, ExitStatus, Hello, Request,
};

pub struct Agent {
    pub process: Child,
    pub sock: PathBuf,
    dir: PathBuf,
}

impl Agent {
    pub fn start() -> Agent {
        Agent::start_ignoring("")
    }

    /// Starts the agent with the signals named (as for the shell's `trap`,
    /// e.g. "INT QUIT") ignored, as a background job of a non-interactive
    /// shell or `nohup` starts a program.
    pub fn start_ignoring(signals: &str) -> Agent {
        static N: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "sm-agent-test-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        ));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("create test dir");
        let sock = dir.join("agent.sock");
        let bin = std::env::var_os("SUPERMACHINE_AGENT_BIN")
            .map(PathBuf::from)
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_BIN_EXE_supermachine-agent")));
        // The agent's stdout stands for the guest console (detached execs
        // write there).
        let console = std::fs::File::create(dir.join("console.log")).expect("console file");
        let mut command = if signals.is_empty() {
            Command::new(&bin)
        } else {
            let mut sh = Command::new("sh");
            sh.arg("-c")
                .arg(format!("trap '' {signals}; exec \"$0\" \"$@\""))
                .arg(&bin);
            sh
        };
        let process = command
            .arg("--serve-unix")
            .arg(&sock)
            .stdin(Stdio::null())
            .stdout(console)
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", bin.display()));
        let agent = Agent { process, sock, dir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while UnixStream::connect(&agent.sock).is_err() {
            assert!(Instant::now() < deadline, "agent did not start listening");
            std::thread::sleep(Duration::from_millis(10));
        }
        agent
    }

    pub fn connect(&self) -> UnixStream {
        let s = UnixStream::connect(&self.sock).expect("connect to agent");
        s.set_read_timeout(Some(Duration::from_secs(60)))
            .expect("set timeout");
        s
    }

    /// Opens a connection and sends the hello for `request`.
    pub fn request(&self, request: Request) -> UnixStream {
        let mut s = self.connect();
        write_frame(&mut s, &Hello::new(request)).expect("send hello");
        s
    }

    /// One-reply request.
    pub fn ask(&self, request: Request) -> AgentMessage {
        let mut s = self.request(request);
        read_frame(&mut s).expect("read reply")
    }

    pub fn exec(&self, req: ExecRequest) -> ExecResult {
        collect(&mut self.request(Request::Exec(req)))
    }

    /// What the agent's processes wrote to its stdout (the "console").
    pub fn console(&self) -> String {
        std::fs::read_to_string(self.dir.join("console.log")).unwrap_or_default()
    }

    /// A fresh empty directory for a test's files, removed with the agent.
    pub fn scratch(&self, name: &str) -> PathBuf {
        let dir = self.dir.join(name);
        std::fs::create_dir_all(&dir).expect("create scratch dir");
        dir
    }

    /// Threads of the agent process.
    pub fn threads(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/task", self.process.id())).map_or(0, |d| d.count())
    }

    /// Open fds of the agent process.
    pub fn fds(&self) -> usize {
        std::fs::read_dir(format!("/proc/{}/fd", self.process.id())).map_or(0, |d| d.count())
    }

    /// Whether the agent process is still running.
    pub fn alive(&mut self) -> bool {
        matches!(self.process.try_wait(), Ok(None))
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.process.kill();
        let _ = self.process.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

pub fn exec_req(argv: &[&str]) -> ExecRequest {
    ExecRequest {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        ..Default::default()
    }
}

pub fn sh(script: &str) -> ExecRequest {
    exec_req(&["sh", "-c", script])
}

#[derive(Debug, Default)]
pub struct ExecResult {
    pub pid: Option<u32>,
    pub stdout: Vec<u8>,
    pub stderr: Vec<u8>,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub status: ExitStatus,
    pub exited: bool,
    pub error: Option<(ErrorKind, String)>,
}

impl ExecResult {
    pub fn stdout_str(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }
    pub fn stderr_str(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// Reads agent frames until `Exited`, an `Error` or the end of the stream,
/// checking the order the protocol promises.
pub fn collect(s: &mut UnixStream) -> ExecResult {
    let mut r = ExecResult::default();
    loop {
        let msg: AgentMessage = match read_frame(s) {
            Ok(msg) => msg,
            Err(_) => return r,
        };
        assert!(!r.exited, "frame after Exited: {msg:?}");
        match msg {
            AgentMessage::Started { pid } => {
                assert!(r.pid.is_none() && r.stdout.is_empty() && r.stderr.is_empty());
                r.pid = Some(pid);
            }
            AgentMessage::Stdout(d) => r.stdout.extend(d),
            AgentMessage::Stderr(d) => r.stderr.extend(d),
            AgentMessage::Exited(status) => {
                r.code = status.code;
                r.signal = status.signal;
                r.status = status;
                r.exited = true;
            }
            AgentMessage::Error { kind, message } => {
                r.error = Some((kind, message));
                return r;
            }
            other => panic!("unexpected frame during exec: {other:?}"),
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift64*).
pub fn noise(len: usize, mut seed: u64) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        seed ^= seed >> 12;
        seed ^= seed << 25;
        seed ^= seed >> 27;
        out.extend_from_slice(&seed.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    out.truncate(len);
    out
}

/// FNV-1a, enough to compare large buffers in a readable assert.
pub fn fnv(data: &[u8]) -> u64 {
    data.iter().fold(0xcbf2_9ce4_8422_2325, |h, &b| {
        (h ^ u64::from(b)).wrapping_mul(0x100_0000_01b3)
    })
}

/// State letter of a process in /proc, or `None` once it is gone.
pub fn proc_state(pid: u32) -> Option<char> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    stat.rsplit_once(')')?.1.trim_start().chars().next()
}

/// Waits until `pid` is gone or a zombie (killed, awaiting its reaper).
pub fn wait_dead(pid: u32, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        match proc_state(pid) {
            None | Some('Z') | Some('X') => return true,
            Some(_) if Instant::now() >= deadline => return false,
            Some(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

/// A marker unique to this test process and call, for finding processes
/// by command line: `sleep 1000.<marker>` is a valid duration.
pub fn marker() -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}{:03}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// Live (not zombie) processes whose command line contains `needle`.
pub fn pids_with(needle: &str) -> Vec<u32> {
    let mut found = Vec::new();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return found;
    };
    for entry in dir.flatten() {
        let Some(pid) = entry
            .file_name()
            .to_str()
            .and_then(|s| s.parse::<u32>().ok())
        else {
            continue;
        };
        let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) && !matches!(proc_state(pid), None | Some('Z') | Some('X')) {
            found.push(pid);
        }
    }
    found
}

/// Waits until no live process has `needle` in its command line.
pub fn wait_gone(needle: &str, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if pids_with(needle).is_empty() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// SIGKILLs every process with `needle` in its command line (cleanup of
/// processes a test deliberately left running).
pub fn kill_all(needle: &str) {
    for pid in pids_with(needle) {
        // SAFETY: plain syscall.
        unsafe { libc::kill(pid as libc::pid_t, libc::SIGKILL) };
    }
}

/// Waits (up to `limit`) until `f` is true.
pub fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    loop {
        if f() {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Reads exec frames until the stdout collected so far contains `needle`;
/// returns everything read. Panics on `Exited`, an error or EOF first.
pub fn read_until(s: &mut UnixStream, out: &mut Vec<u8>, needle: &str) {
    while !String::from_utf8_lossy(out).contains(needle) {
        match read_frame::<AgentMessage, _>(s) {
            Ok(AgentMessage::Stdout(d)) => out.extend(d),
            Ok(AgentMessage::Started { .. } | AgentMessage::Stderr(_)) => {}
            other => panic!(
                "waiting for {needle:?} in {:?}, got {other:?}",
                String::from_utf8_lossy(out)
            ),
        }
    }
}
