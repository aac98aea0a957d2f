//! Running commands in a VM: the builder, its result, and how a process
//! ended.

use crate::error::Error;
use crate::vm::child::{exec_frame, Child, ExecFrame};
use crate::vm::Vm;
use std::time::{Duration, Instant};
pub use supermachine_protocol::ExitStatus;
use supermachine_protocol::{
    AgentMessage, EnvMode, ExecRequest, Request, WindowSize, WriteFileRequest,
};

/// Output kept per stream by [`ExecBuilder::output`] unless the caller
/// sets a limit: enough for any sane command, small enough that a runaway
/// one cannot exhaust the host's memory. The rest is counted, not kept.
///
/// ```
/// assert_eq!(supermachine::DEFAULT_OUTPUT_LIMIT, 64 * 1024 * 1024);
/// ```
pub const DEFAULT_OUTPUT_LIMIT: u64 = 64 << 20;

/// Slack over an exec's own timeout before the host gives up on an agent
/// that did not report the kill (a wedged guest).
const TIMEOUT_SLACK: Duration = Duration::from_secs(15);

/// What [`ExecBuilder::output`] returns.
///
/// ```
/// let out = supermachine::Output { stdout: b"hi\n".to_vec(), ..Default::default() };
/// assert_eq!(out.stdout_lossy(), "hi\n");
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    /// How the process ended.
    pub status: ExitStatus,
    /// Everything it wrote on stdout (up to the request's limit).
    pub stdout: Vec<u8>,
    /// Everything it wrote on stderr (up to the request's limit).
    pub stderr: Vec<u8>,
}

impl Output {
    /// Standard output as text, invalid UTF-8 replaced by U+FFFD.
    ///
    /// ```
    /// let out = supermachine::Output { stdout: b"ok \xff\n".to_vec(), ..Default::default() };
    /// assert_eq!(out.stdout_lossy(), "ok \u{fffd}\n");
    /// ```
    pub fn stdout_lossy(&self) -> String {
        String::from_utf8_lossy(&self.stdout).into_owned()
    }

    /// Standard error as text, invalid UTF-8 replaced by U+FFFD.
    ///
    /// ```
    /// let stderr = b"sh: nope: not found\n".to_vec();
    /// let out = supermachine::Output { stderr, ..Default::default() };
    /// assert!(out.stderr_lossy().contains("not found"));
    /// ```
    pub fn stderr_lossy(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

/// A file written into the guest before the command runs.
struct StagedFile {
    request: WriteFileRequest,
    contents: Vec<u8>,
}

/// Builds a command to run in a VM: [`Vm::exec_builder`].
///
/// ```no_run
/// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
/// use std::time::Duration;
/// let out = vm
///     .exec_builder()
///     .stage_file("/work/main.sh", b"echo from script\n")
///     .argv(["sh", "/work/main.sh"])
///     .chain(["echo", "second"])
///     .timeout(Duration::from_secs(30))
///     .output()
///     .await?;
/// assert_eq!(out.stdout_lossy(), "from script\nsecond\n");
/// # Ok(()) }
/// ```
#[must_use = "a builder does nothing until output(), spawn() or start_detached()"]
pub struct ExecBuilder<'vm> {
    vm: &'vm Vm,
    request: ExecRequest,
    stdin: Option<Vec<u8>>,
    timeout: Option<Duration>,
    staged: Vec<StagedFile>,
    chain: Vec<Vec<String>>,
}

impl Vm {
    /// Starts building a command; see [`ExecBuilder`]. It starts with the
    /// VM's defaults: an OCI image's Env, WorkingDir and User, with
    /// [`crate::VmConfig`]'s env, workdir and user on top.
    ///
    /// ```no_run
    /// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
    /// let out = vm.exec_builder().env("MODE", "test").argv(["env"]).output().await?;
    /// assert!(out.stdout_lossy().contains("MODE=test\n"));
    /// # Ok(()) }
    /// ```
    pub fn exec_builder(&self) -> ExecBuilder<'_> {
        let request = ExecRequest {
            env: self.defaults.env.clone(),
            cwd: self.defaults.cwd.clone(),
            user: self.defaults.user.clone(),
            ..ExecRequest::default()
        };
        ExecBuilder {
            vm: self,
            request,
            stdin: None,
            timeout: None,
            staged: Vec::new(),
            chain: Vec::new(),
        }
    }

    /// Runs `argv` to completion and collects its output (up to
    /// [`DEFAULT_OUTPUT_LIMIT`] per stream). A non-zero exit is not an
    /// error: look at `status`.
    ///
    /// ```no_run
    /// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
    /// let out = vm.exec(["sh", "-c", "echo out; echo err >&2; exit 3"]).await?;
    /// assert_eq!((out.stdout_lossy().as_str(), out.status.code), ("out\n", Some(3)));
    /// # Ok(()) }
    /// ```
    pub async fn exec<I, S>(&self, argv: I) -> Result<Output, Error>
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.exec_builder().argv(argv).output().await
    }
}

impl<'vm> ExecBuilder<'vm> {
    /// The program and its arguments (the program is looked up in PATH).
    ///
    /// ```no_run
    /// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
    /// let out = vm.exec_builder().argv(["uname", "-s"]).output().await?;
    /// assert_eq!(out.stdout, b"Linux\n");
    /// # Ok(()) }
    /// ```
    pub fn argv<I, S>(mut self, argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.request.argv = argv.into_iter().map(Into::into).collect();
        self
    }

    /// Sets one environment variable (added to the base environment).
    ///
    /// ```no_run
    /// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
    /// let out = vm
    ///     .exec_builder()
    ///     .env("GREETING", "hi")
    ///     .argv(["sh", "-c", "echo $GREETING"])
    ///     .output()
    ///     .await?;
    /// assert_eq!(out.stdout, b"hi\n");
    /// # Ok(()) }
    /// ```
    pub fn env(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.request.env.push((name.into(), value.into()));
        self
    }

    /// Starts from an empty environment instead of PATH/HOME/TERM and the
    /// VM's environment: only variables set with [`Self::env`] afterwards.
    ///
    /// ```no_run
    /// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
    /// // No PATH either: name the program by its path.
    /// let out = vm
    ///     .exec_builder()
    ///     .env_clear()
    ///     .env("ONLY", "1")
    ///     .argv(["/usr/bin/env"])
    ///     .output()
    ///     .await?;
    /// assert_eq!(out.stdout, b"ONLY=1\n");
    /// # Ok(()) }
    /// ```
    pub fn env_clear(mut self) -> Self {
        self.request.env.clear();
        self.request.env_mode = EnvMode::Replace;
        self
    }

    /// Working directory in the guest (default: the VM's, see
    /// [`Vm::exec_builder`]; else `/`).
    ///
    /// ```no_run
    /// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
    /// let out = vm.exec_builder().cwd("/tmp").argv(["pwd"]).output().await?;
    /// assert_eq!(out.stdout, b"/tmp\n");
    /// # Ok(()) }
    /// ```
    pub fn cwd(mut self, dir: impl Into<String>) -> Self {
        self.request.cwd = Some(dir.into());
        self
    }

    /// Runs as `name`, `uid`, `uid:gid` or `name:group` (from the guest's
    /// /etc/passwd and /etc/group); default: the VM's (the image's User),
    /// else root.
    ///
    /// ```no_run
    /// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
    /// let out = vm.exec_builder().user("nobody").argv(["id", "-u"]).output().await?;
    /// assert_eq!(out.stdout, b"65534\n");
    /// # Ok(()) }
    /// ```
    pub fn user(mut self, user: impl Into<String>) -> Self {
        self.request.user = Some(user.into());
        self
    }

    /// Bytes given to the command as its standard input
    /// ([`Self::output`] only; a spawned child has a stdin stream).
    ///
    /// ```no_run
    /// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
    /// let out = vm.exec_builder().argv(["tr", "a-z", "A-Z"]).stdin("hello").output().await?;
    /// assert_eq!(out.stdout, b"HELLO");
    /// # Ok(()) }
    /// ```
    pub fn stdin(mut self, bytes: impl Into<Vec<u8>>) -> Self {
        self.stdin = Some(bytes.into());
        self
    }

    /// Kills the command with every process group of its session (the
    /// jobs of an interactive shell too) after `timeout` (for a chain: the
    /// whole chain's time, staging included).
    ///
    /// ```no_run
    /// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
    /// use std::time::Duration;
    /// let out = vm
    ///     .exec_builder()
    ///     .argv(["sleep", "60"])
    ///     .timeout(Duration::from_secs(1))
    ///     .output()
    ///     .await?;
    /// assert!(out.status.timed_out);
    /// # Ok(()) }
    /// ```
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.timeout = Some(timeout);
        self
    }

    /// Most stdout bytes delivered; the rest is counted in
    /// [`ExitStatus::stdout_dropped`].
    ///
    /// ```no_run
    /// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
    /// let out = vm.exec_builder().argv(["seq", "100000"]).stdout_limit(4096).output().await?;
    /// assert!(out.stdout.len() <= 4096 && out.status.stdout_dropped > 0);
    /// # Ok(()) }
    /// ```
    pub fn stdout_limit(mut self, bytes: u64) -> Self {
        self.request.stdout_limit = Some(bytes);
        self
    }

    /// Most stderr bytes delivered; see [`Self::stdout_limit`].
    ///
    /// ```no_run
    /// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
    /// let out = vm
    ///     .exec_builder()
    ///     .argv(["sh", "-c", "seq 100000 >&2"])
    ///     .stderr_limit(4096)
    ///     .output()
    ///     .await?;
    /// assert!(out.stderr.len() <= 4096 && out.status.stderr_dropped > 0);
    /// # Ok(()) }
    /// ```
    pub fn stderr_limit(mut self, bytes: u64) -> Self {
        self.request.stderr_limit = Some(bytes);
        self
    }

    /// Runs the command on a pseudo-terminal of this size.
    ///
    /// ```no_run
    /// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
    /// let out = vm.exec_builder().pty(24, 80).argv(["stty", "size"]).output().await?;
    /// assert_eq!(out.stdout_lossy().trim(), "24 80");
    /// # Ok(()) }
    /// ```
    pub fn pty(mut self, rows: u16, cols: u16) -> Self {
        self.request.pty = Some(WindowSize { rows, cols });
        self
    }

    /// Writes `contents` to `path` in the guest (mode 0644, parents
    /// created) before running anything.
    ///
    /// ```no_run
    /// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
    /// let out = vm
    ///     .exec_builder()
    ///     .stage_file("/srv/job/input.txt", "data\n")
    ///     .argv(["cat", "/srv/job/input.txt"])
    ///     .output()
    ///     .await?;
    /// assert_eq!(out.stdout, b"data\n");
    /// # Ok(()) }
    /// ```
    pub fn stage_file(self, path: impl Into<String>, contents: impl Into<Vec<u8>>) -> Self {
        let mut request = WriteFileRequest::new(path);
        request.create_parents = true;
        self.stage_file_with(request, contents)
    }

    /// [`Self::stage_file`] with explicit mode, owner and options.
    ///
    /// ```no_run
    /// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
    /// use supermachine::WriteFileRequest;
    /// let mut script = WriteFileRequest::new("/opt/hello.sh");
    /// script.mode = 0o755;
    /// script.create_parents = true;
    /// let builder = vm.exec_builder().stage_file_with(script, "#!/bin/sh\necho hello\n");
    /// let out = builder.argv(["/opt/hello.sh"]).output().await?;
    /// assert_eq!(out.stdout, b"hello\n");
    /// # Ok(()) }
    /// ```
    pub fn stage_file_with(
        mut self,
        request: WriteFileRequest,
        contents: impl Into<Vec<u8>>,
    ) -> Self {
        self.staged.push(StagedFile {
            request,
            contents: contents.into(),
        });
        self
    }

    /// Runs `argv` after the previous command if it succeeded (like `&&`),
    /// with the same environment, directory and user. The output is every
    /// command's output in order; the status is the last one run.
    ///
    /// ```no_run
    /// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
    /// let out = vm
    ///     .exec_builder()
    ///     .argv(["mkdir", "-p", "/srv/out"])
    ///     .chain(["touch", "/srv/out/done"])
    ///     .output()
    ///     .await?;
    /// assert!(out.status.success());
    /// # Ok(()) }
    /// ```
    pub fn chain<I, S>(mut self, argv: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.chain.push(argv.into_iter().map(Into::into).collect());
        self
    }

    /// Writes the staged files into the guest, in order.
    async fn stage(&mut self) -> Result<(), Error> {
        for file in std::mem::take(&mut self.staged) {
            self.vm
                .write_file_with(file.request, &file.contents[..])
                .await?;
        }
        Ok(())
    }

    /// Stages the files, runs the command (and its chain) to completion,
    /// and collects the output.
    ///
    /// ```no_run
    /// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
    /// let out = vm.exec_builder().argv(["ls", "/"]).output().await?;
    /// assert!(out.stdout_lossy().lines().any(|name| name == "etc"));
    /// # Ok(()) }
    /// ```
    pub async fn output(mut self) -> Result<Output, Error> {
        let timeout = self.timeout;
        let deadline = timeout.map(|t| Instant::now() + t);
        let run = async {
            self.stage().await?;
            let mut limits = [
                self.request.stdout_limit.unwrap_or(DEFAULT_OUTPUT_LIMIT),
                self.request.stderr_limit.unwrap_or(DEFAULT_OUTPUT_LIMIT),
            ];
            let mut total = Output::default();
            let commands: Vec<Vec<String>> =
                std::iter::once(std::mem::take(&mut self.request.argv))
                    .chain(std::mem::take(&mut self.chain))
                    .collect();
            let mut stdin = self.stdin.take();
            for argv in commands {
                let mut request = self.request.clone();
                request.argv = argv;
                request.stdout_limit = Some(limits[0]);
                request.stderr_limit = Some(limits[1]);
                request.timeout_ms = deadline.map(remaining_ms);
                let out = run_one(self.vm, request, stdin.take()).await?;
                limits[0] -= (out.stdout.len() as u64).min(limits[0]);
                limits[1] -= (out.stderr.len() as u64).min(limits[1]);
                total.stdout.extend_from_slice(&out.stdout);
                total.stderr.extend_from_slice(&out.stderr);
                let dropped = (
                    total.status.stdout_dropped + out.status.stdout_dropped,
                    total.status.stderr_dropped + out.status.stderr_dropped,
                );
                total.status = out.status;
                (total.status.stdout_dropped, total.status.stderr_dropped) = dropped;
                if !total.status.success() {
                    break;
                }
            }
            Ok(total)
        };
        match timeout {
            // The agent enforces the timeout; this only catches a guest
            // that can no longer report it.
            Some(t) => tokio::time::timeout(t + TIMEOUT_SLACK, run)
                .await
                .map_err(|_| {
                    Error::Protocol(format!(
                        "the guest did not report the end of a command timed out after {t:?}"
                    ))
                })?,
            None => run.await,
        }
    }

    /// Stages the files and starts the command, returning a handle with its
    /// streams. A chain is not allowed here.
    ///
    /// ```no_run
    /// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
    /// let child = vm.exec_builder().argv(["sh", "-c", "sleep 1; echo done"]).spawn().await?;
    /// println!("running as pid {:?}", child.pid());
    /// let out = child.wait_with_output().await?;
    /// assert_eq!(out.stdout, b"done\n");
    /// # Ok(()) }
    /// ```
    pub async fn spawn(mut self) -> Result<Child, Error> {
        if !self.chain.is_empty() {
            return Err(Error::InvalidArgument(
                "chain() works with output(), not spawn()".into(),
            ));
        }
        self.stage().await?;
        let mut request = self.request;
        request.stdin = true;
        request.timeout_ms = self.timeout.map(|t| t.as_millis() as u64);
        spawn(self.vm, request).await
    }

    /// Starts the command in the background: it outlives this call and the
    /// host process, its stdin is empty and its output goes to the VM's
    /// serial log. Returns its pid in the guest.
    ///
    /// ```no_run
    /// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
    /// let pid = vm.exec_builder().argv(["httpd", "-f", "-p", "8080"]).start_detached().await?;
    /// println!("httpd runs as pid {pid}");
    /// # Ok(()) }
    /// ```
    pub async fn start_detached(mut self) -> Result<u32, Error> {
        self.stage().await?;
        let mut request = self.request;
        request.detach = true;
        request.timeout_ms = self.timeout.map(|t| t.as_millis() as u64);
        let argv0 = request.argv.first().cloned().unwrap_or_default();
        let mut conn = self.vm.connect(Request::Exec(request)).await?;
        let mut stderr = Vec::new();
        loop {
            match conn.recv().await {
                Ok(AgentMessage::Started { pid }) => return Ok(pid),
                Ok(AgentMessage::Stderr(b)) => stderr.extend_from_slice(&b),
                Ok(AgentMessage::Exited(status)) => {
                    return Err(Error::InvalidArgument(format!(
                        "{argv0} did not start (exit {}): {}",
                        status.shell_code(),
                        String::from_utf8_lossy(&stderr).trim()
                    )))
                }
                Ok(other) => return Err(crate::vm::conn::unexpected(other, "exec")),
                Err(e) => return Err(self.vm.explain_lost(e).await),
            }
        }
    }
}

fn remaining_ms(deadline: Instant) -> u64 {
    // At least 1 ms: 0 would mean "already expired" to nobody's benefit.
    deadline
        .saturating_duration_since(Instant::now())
        .as_millis()
        .max(1) as u64
}

async fn run_one(vm: &Vm, request: ExecRequest, stdin: Option<Vec<u8>>) -> Result<Output, Error> {
    let mut request = request;
    request.stdin = stdin.is_some();
    let out = match stdin {
        None => collect(vm, request).await?,
        Some(bytes) => {
            let mut child = spawn(vm, request).await?;
            if let Some(mut pipe) = child.stdin.take() {
                // Feed stdin while the output is collected, or a command that
                // writes before it reads everything would deadlock against us.
                tokio::spawn(async move {
                    let _ = pipe.write(&bytes).await;
                });
            }
            match child.wait_with_output().await {
                Ok(out) => out,
                Err(e) => return Err(vm.explain_lost(e).await),
            }
        }
    };
    // Not awaited: the caller has its result now.
    let _ = vm.record_hot_pages();
    vm.release_refill_hold();
    Ok(out)
}

/// Runs an exec without stdin to its end, reading its frames right here.
/// Nothing flows the other way, so the streaming [`Child`] (two tasks and
/// their channels) would only add task hand-offs to the most common call.
/// Memory stays bounded by the exec's output limits: the agent keeps to
/// them, and a guest that does not is refused here.
async fn collect(vm: &Vm, request: ExecRequest) -> Result<Output, Error> {
    let limits = [request.stdout_limit, request.stderr_limit];
    // Held until the end: dropping the writer would tell the agent the host
    // is gone, and it would kill the command.
    let mut conn = vm.connect(Request::Exec(request)).await?;
    let mut outputs = [Vec::new(), Vec::new()];
    loop {
        let msg = match conn.recv().await {
            Ok(msg) => msg,
            Err(e) => return Err(vm.explain_lost(e).await),
        };
        let (index, data) = match exec_frame(msg)? {
            ExecFrame::Started => continue,
            ExecFrame::Output(index, data) => (index, data),
            ExecFrame::Exited(status) => {
                let [stdout, stderr] = outputs;
                return Ok(Output {
                    status,
                    stdout,
                    stderr,
                });
            }
        };
        outputs[index].extend_from_slice(&data);
        if let Some(limit) = limits[index].filter(|&l| outputs[index].len() as u64 > l) {
            let name = ["stdout", "stderr"][index];
            return Err(Error::Protocol(format!(
                "the guest sent more {name} than the exec's limit of {limit} bytes"
            )));
        }
    }
}

async fn spawn(vm: &Vm, request: ExecRequest) -> Result<Child, Error> {
    let wants_stdin = request.stdin;
    let crate::vm::conn::Conn { mut reader, writer } = vm.connect(Request::Exec(request)).await?;
    let first = match reader.recv().await {
        Ok(msg) => msg,
        Err(e) => return Err(vm.explain_lost(e).await),
    };
    let mut child = match first {
        AgentMessage::Started { pid } => Child::serve(reader, writer, Some(pid), None),
        msg @ (AgentMessage::Stderr(_) | AgentMessage::Exited(_)) => {
            Child::serve(reader, writer, None, Some(msg))
        }
        other => return Err(crate::vm::conn::unexpected(other, "exec")),
    };
    if !wants_stdin {
        child.stdin = None;
    }
    Ok(child)
}
