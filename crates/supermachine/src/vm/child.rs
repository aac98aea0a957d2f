//! A process running in the guest, with its streams.
//!
//! Two tasks serve each child: one reads the agent's frames and hands
//! stdout and stderr chunks to bounded channels, one writes stdin, signals
//! and resizes. Nothing is buffered without bound: when a stream's reader
//! falls behind, its channel fills, the task stops reading the connection,
//! vsock credit runs out, the agent stops reading the process's pipe, and the
//! process blocks in `write`. The two streams share the connection, so read
//! both (or drop the one you do not want: its data is then discarded).

use crate::error::Error;
use crate::vm::conn::{ConnReader, ConnWriter};
use crate::vm::exec::{ExitStatus, Output};
use std::pin::Pin;
use std::task::{Context, Poll};
use supermachine_protocol::{AgentMessage, HostMessage, WindowSize, MAX_CHUNK};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::sync::{mpsc, oneshot};

/// Chunks (of up to 64 KiB) buffered per output stream.
const OUTPUT_CHUNKS: usize = 8;
/// Stdin chunks queued before `write` waits.
const STDIN_CHUNKS: usize = 4;

/// A process started with [`crate::ExecBuilder::spawn`].
///
/// Dropping every handle (the child and its streams) before it exits
/// kills its whole process group in the guest.
///
/// ```no_run
/// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
/// let mut child = vm.exec_builder().argv(["cat"]).spawn().await?;
/// let mut stdin = child.stdin.take().expect("stdin is piped");
/// stdin.write(b"hello").await?;
/// drop(stdin); // end of input
/// let out = child.wait_with_output().await?;
/// assert_eq!(out.stdout, b"hello");
/// # Ok(()) }
/// ```
pub struct Child {
    pid: Option<u32>,
    /// The process's standard input (`None` once taken).
    pub stdin: Option<ChildStdin>,
    /// The process's standard output (with a PTY: everything it prints).
    pub stdout: Option<ChildOutput>,
    /// The process's standard error (empty with a PTY).
    pub stderr: Option<ChildOutput>,
    control: mpsc::Sender<HostMessage>,
    exit: Option<oneshot::Receiver<Result<ExitStatus, Error>>>,
    status: Option<ExitStatus>,
}

/// Write side of a child's stdin. Dropping it (or [`ChildStdin::close`])
/// ends the child's input.
///
/// ```no_run
/// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
/// let mut child = vm.exec_builder().argv(["sort"]).spawn().await?;
/// let mut stdin = child.stdin.take().expect("stdin is piped");
/// stdin.write(b"pear\napple\n").await?;
/// stdin.close();
/// assert_eq!(child.wait_with_output().await?.stdout, b"apple\npear\n");
/// # Ok(()) }
/// ```
pub struct ChildStdin {
    data: mpsc::Sender<Vec<u8>>,
    _alive: mpsc::Sender<HostMessage>,
}

/// A child's stdout or stderr: [`ChildOutput::recv`] chunk by chunk, or
/// any [`AsyncRead`] adapter (`tokio::io::copy`, `read_to_end`, …).
///
/// ```no_run
/// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
/// use tokio::io::AsyncReadExt;
/// let mut child = vm.exec_builder().argv(["cat", "/etc/os-release"]).spawn().await?;
/// let mut stdout = child.stdout.take().expect("stdout is piped");
/// let mut text = String::new();
/// stdout.read_to_string(&mut text).await.map_err(|e| supermachine::Error::io("stdout", e))?;
/// child.wait().await?;
/// # Ok(()) }
/// ```
pub struct ChildOutput {
    chunks: mpsc::Receiver<Vec<u8>>,
    pending: Vec<u8>,
    offset: usize,
    _alive: mpsc::Sender<HostMessage>,
}

impl Child {
    /// Takes over an exec connection whose hello has been sent. `first` is
    /// the agent's first answer when it was not `Started` (a command that
    /// could not start reports 127/126 like a shell, as stderr + exit).
    pub(crate) fn serve(
        reader: ConnReader,
        writer: ConnWriter,
        pid: Option<u32>,
        first: Option<AgentMessage>,
    ) -> Child {
        let (control, control_rx) = mpsc::channel(16);
        let (stdin_tx, stdin_rx) = mpsc::channel(STDIN_CHUNKS);
        let (stdout_tx, stdout_rx) = mpsc::channel(OUTPUT_CHUNKS);
        let (stderr_tx, stderr_rx) = mpsc::channel(OUTPUT_CHUNKS);
        let (exit_tx, exit_rx) = oneshot::channel();
        tokio::spawn(read_frames(reader, first, stdout_tx, stderr_tx, exit_tx));
        tokio::spawn(write_frames(writer, stdin_rx, control_rx));
        let output = |chunks| ChildOutput {
            chunks,
            pending: Vec::new(),
            offset: 0,
            _alive: control.clone(),
        };
        Child {
            pid,
            stdin: Some(ChildStdin {
                data: stdin_tx,
                _alive: control.clone(),
            }),
            stdout: Some(output(stdout_rx)),
            stderr: Some(output(stderr_rx)),
            control,
            exit: Some(exit_rx),
            status: None,
        }
    }

    /// The process id in the guest; `None` when the program could not be
    /// started (its exit status then says why, like a shell's 127).
    ///
    /// ```no_run
    /// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
    /// let child = vm.exec_builder().argv(["no-such-program"]).spawn().await?;
    /// assert_eq!(child.pid(), None);
    /// assert_eq!(child.wait_with_output().await?.status.code, Some(127));
    /// # Ok(()) }
    /// ```
    pub fn pid(&self) -> Option<u32> {
        self.pid
    }

    /// Sends a signal to the process (with a PTY: to the terminal's
    /// foreground process group).
    ///
    /// ```no_run
    /// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
    /// let mut child = vm.exec_builder().argv(["sleep", "60"]).spawn().await?;
    /// child.signal(15).await?; // SIGTERM
    /// assert_eq!(child.wait().await?.signal, Some(15));
    /// # Ok(()) }
    /// ```
    pub async fn signal(&self, signal: i32) -> Result<(), Error> {
        self.control().signal(signal).await
    }

    /// SIGKILL.
    ///
    /// ```no_run
    /// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
    /// let mut child = vm.exec_builder().argv(["sleep", "60"]).spawn().await?;
    /// child.kill().await?;
    /// assert_eq!(child.wait().await?.signal, Some(9));
    /// # Ok(()) }
    /// ```
    pub async fn kill(&self) -> Result<(), Error> {
        self.signal(libc::SIGKILL).await
    }

    /// Resizes the child's PTY (no effect without one).
    ///
    /// ```no_run
    /// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
    /// let child = vm.exec_builder().argv(["sh"]).pty(24, 80).spawn().await?;
    /// child.resize(50, 132).await?;
    /// # Ok(()) }
    /// ```
    pub async fn resize(&self, rows: u16, cols: u16) -> Result<(), Error> {
        self.control().resize(rows, cols).await
    }

    /// A handle that signals and resizes the process while something else
    /// (say, [`Child::wait`]) holds the child.
    ///
    /// ```no_run
    /// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
    /// let mut child = vm.exec_builder().argv(["sleep", "60"]).spawn().await?;
    /// let control = child.control();
    /// tokio::spawn(async move { control.signal(15).await });
    /// assert_eq!(child.wait().await?.signal, Some(15));
    /// # Ok(()) }
    /// ```
    pub fn control(&self) -> ChildControl {
        ChildControl(self.control.clone())
    }

    /// Waits for the process to end. Closes its stdin first if it is still
    /// held here, and discards output nobody took (take `stdout`/`stderr`
    /// before waiting to read them, or use [`Child::wait_with_output`]).
    ///
    /// ```no_run
    /// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
    /// let mut child = vm.exec_builder().argv(["sh", "-c", "exit 4"]).spawn().await?;
    /// let status = child.wait().await?;
    /// assert_eq!(status.code, Some(4));
    /// # Ok(()) }
    /// ```
    pub async fn wait(&mut self) -> Result<ExitStatus, Error> {
        if let Some(status) = &self.status {
            return Ok(status.clone());
        }
        self.stdin = None;
        self.stdout = None;
        self.stderr = None;
        let exit = self.exit.take().ok_or(Error::ConnectionLost)?;
        let status = exit.await.map_err(|_| Error::ConnectionLost)??;
        self.status = Some(status.clone());
        Ok(status)
    }

    /// Reads stdout and stderr to the end (concurrently) and waits.
    /// Memory is bounded by the exec's output limits.
    ///
    /// ```no_run
    /// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
    /// let child = vm.exec_builder().argv(["sh", "-c", "echo out; echo err >&2"]).spawn().await?;
    /// let out = child.wait_with_output().await?;
    /// assert_eq!(out.stdout, b"out\n");
    /// assert_eq!(out.stderr, b"err\n");
    /// # Ok(()) }
    /// ```
    pub async fn wait_with_output(mut self) -> Result<Output, Error> {
        self.stdin = None;
        let collect = |out: Option<ChildOutput>| async move {
            let mut buf = Vec::new();
            if let Some(mut out) = out {
                while let Some(chunk) = out.recv().await {
                    buf.extend_from_slice(&chunk);
                }
            }
            buf
        };
        let (stdout, stderr) =
            tokio::join!(collect(self.stdout.take()), collect(self.stderr.take()));
        let status = self.wait().await?;
        Ok(Output {
            status,
            stdout,
            stderr,
        })
    }
}

/// Signals and resizes a [`Child`]; see [`Child::control`]. Holding one
/// counts as holding the child (it is not killed for being dropped).
///
/// ```no_run
/// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
/// let mut child = vm.exec_builder().argv(["sh"]).pty(24, 80).spawn().await?;
/// let control = child.control();
/// control.resize(40, 120).await?;
/// control.signal(9).await?;
/// child.wait().await?;
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct ChildControl(mpsc::Sender<HostMessage>);

impl ChildControl {
    /// As [`Child::signal`].
    ///
    /// ```no_run
    /// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
    /// let child = vm.exec_builder().argv(["sleep", "60"]).spawn().await?;
    /// child.control().signal(2).await?; // SIGINT
    /// # Ok(()) }
    /// ```
    pub async fn signal(&self, signal: i32) -> Result<(), Error> {
        self.0
            .send(HostMessage::Signal(signal))
            .await
            .map_err(|_| Error::ConnectionLost)
    }

    /// As [`Child::resize`].
    ///
    /// ```no_run
    /// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
    /// let child = vm.exec_builder().argv(["top"]).pty(24, 80).spawn().await?;
    /// child.control().resize(40, 120).await?;
    /// # Ok(()) }
    /// ```
    pub async fn resize(&self, rows: u16, cols: u16) -> Result<(), Error> {
        self.0
            .send(HostMessage::Resize(WindowSize { rows, cols }))
            .await
            .map_err(|_| Error::ConnectionLost)
    }
}

impl ChildStdin {
    /// Sends `data` to the process, waiting while the guest is slow to read.
    ///
    /// ```no_run
    /// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
    /// let mut child = vm.exec_builder().argv(["cat"]).spawn().await?;
    /// let mut stdin = child.stdin.take().expect("stdin is piped");
    /// stdin.write(b"line 1\n").await?;
    /// stdin.write(b"line 2\n").await?;
    /// # Ok(()) }
    /// ```
    pub async fn write(&mut self, data: &[u8]) -> Result<(), Error> {
        for chunk in data.chunks(MAX_CHUNK) {
            self.data
                .send(chunk.to_vec())
                .await
                .map_err(|_| Error::ConnectionLost)?;
        }
        Ok(())
    }

    /// Ends the process's input (as dropping this does).
    ///
    /// ```no_run
    /// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
    /// let mut child = vm.exec_builder().argv(["cat"]).spawn().await?;
    /// child.stdin.take().expect("stdin is piped").close();
    /// assert!(child.wait().await?.success()); // cat saw the end of its input
    /// # Ok(()) }
    /// ```
    pub fn close(self) {}
}

impl ChildOutput {
    /// The next chunk, or `None` at the end of the stream.
    ///
    /// ```no_run
    /// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
    /// let mut child = vm.exec_builder().argv(["seq", "3"]).spawn().await?;
    /// let mut stdout = child.stdout.take().expect("stdout is piped");
    /// while let Some(chunk) = stdout.recv().await {
    ///     print!("{}", String::from_utf8_lossy(&chunk));
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn recv(&mut self) -> Option<Vec<u8>> {
        if self.offset < self.pending.len() {
            let rest = self.pending.split_off(self.offset);
            self.pending.clear();
            self.offset = 0;
            return Some(rest);
        }
        self.chunks.recv().await
    }
}

impl AsyncRead for ChildOutput {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let this = &mut *self;
        if this.offset >= this.pending.len() {
            match this.chunks.poll_recv(cx) {
                Poll::Ready(Some(chunk)) => {
                    this.pending = chunk;
                    this.offset = 0;
                }
                Poll::Ready(None) => return Poll::Ready(Ok(())),
                Poll::Pending => return Poll::Pending,
            }
        }
        let n = buf.remaining().min(this.pending.len() - this.offset);
        buf.put_slice(&this.pending[this.offset..this.offset + n]);
        this.offset += n;
        Poll::Ready(Ok(()))
    }
}

/// What the agent may send once an exec runs.
pub(crate) enum ExecFrame {
    /// `Started` (late without stdin and a terminal; see the protocol).
    Started,
    /// A chunk of stdout (0) or stderr (1).
    Output(usize, Vec<u8>),
    Exited(ExitStatus),
}

/// Sorts an agent frame of a running exec; anything else is an error.
pub(crate) fn exec_frame(msg: AgentMessage) -> Result<ExecFrame, Error> {
    match msg {
        AgentMessage::Started { .. } => Ok(ExecFrame::Started),
        AgentMessage::Stdout(data) => Ok(ExecFrame::Output(0, data)),
        AgentMessage::Stderr(data) => Ok(ExecFrame::Output(1, data)),
        AgentMessage::Exited(status) => Ok(ExecFrame::Exited(status)),
        other => Err(crate::vm::conn::unexpected(other, "exec")),
    }
}

async fn read_frames(
    mut reader: ConnReader,
    first: Option<AgentMessage>,
    stdout: mpsc::Sender<Vec<u8>>,
    stderr: mpsc::Sender<Vec<u8>>,
    exit: oneshot::Sender<Result<ExitStatus, Error>>,
) {
    // A stream whose reader is gone is discarded, not waited for.
    let mut outputs = [Some(stdout), Some(stderr)];
    let mut next = first;
    let result = loop {
        let msg = match next.take() {
            Some(msg) => msg,
            None => match reader.recv().await {
                Ok(msg) => msg,
                Err(e) => break Err(e),
            },
        };
        let (index, data) = match exec_frame(msg) {
            Ok(ExecFrame::Output(index, data)) => (index, data),
            Ok(ExecFrame::Started) => continue,
            Ok(ExecFrame::Exited(status)) => break Ok(status),
            Err(e) => break Err(e),
        };
        if let Some(tx) = &outputs[index] {
            if tx.send(data).await.is_err() {
                outputs[index] = None;
            }
        }
    };
    // Close the streams before reporting, so readers see the end first.
    drop(outputs);
    let _ = exit.send(result);
}

async fn write_frames(
    mut writer: ConnWriter,
    mut stdin: mpsc::Receiver<Vec<u8>>,
    mut control: mpsc::Receiver<HostMessage>,
) {
    let mut stdin_open = true;
    loop {
        let msg = tokio::select! {
            data = stdin.recv(), if stdin_open => match data {
                Some(data) => HostMessage::Stdin(data),
                None => {
                    stdin_open = false;
                    HostMessage::CloseStdin
                }
            },
            msg = control.recv() => match msg {
                Some(msg) => msg,
                // Every handle is gone: dropping the writer tells the agent,
                // which kills the process group if it still runs.
                None => return,
            },
        };
        if writer.send(&msg).await.is_err() {
            return;
        }
    }
}
