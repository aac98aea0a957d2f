//! Files in the guest: streamed writes and reads, stat, mkdir, remove, list.
//!
//! Contents travel in chunks of at most 64 KiB with vsock flow control, so
//! neither side ever holds a whole file (unless the caller asks for a
//! `Vec`, with [`Vm::read_file`]).

use crate::error::Error;
use crate::vm::conn::{unexpected, Conn};
use crate::vm::Vm;
use supermachine_protocol::{
    AgentMessage, DirEntry, FileStat, HostMessage, Request, WriteFileRequest, MAX_CHUNK,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

impl Vm {
    /// Creates or replaces `path` (mode 0644) with `contents`. The file
    /// appears whole or not at all.
    ///
    /// ```no_run
    /// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
    /// vm.write_file("/tmp/greeting", b"hello").await?;
    /// assert_eq!(vm.read_file("/tmp/greeting").await?, b"hello");
    /// # Ok(()) }
    /// ```
    pub async fn write_file(&self, path: &str, contents: &[u8]) -> Result<(), Error> {
        self.write_file_with(WriteFileRequest::new(path), contents)
            .await
            .map(|_| ())
    }

    /// Writes a file from a stream, with mode, owner, append and parent
    /// creation as `request` says. Returns the bytes written.
    ///
    /// ```no_run
    /// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
    /// use supermachine::WriteFileRequest;
    /// let source = tokio::fs::File::open("/etc/hostname").await.expect("open");
    /// let mut req = WriteFileRequest::new("/srv/app/hostname");
    /// req.mode = 0o600;
    /// req.create_parents = true;
    /// vm.write_file_with(req, source).await?;
    /// # Ok(()) }
    /// ```
    pub async fn write_file_with(
        &self,
        request: WriteFileRequest,
        mut contents: impl AsyncRead + Unpin,
    ) -> Result<u64, Error> {
        let path = request.path.clone();
        let mut conn = self.connect(Request::WriteFile(request)).await?;
        let mut buf = vec![0u8; MAX_CHUNK];
        loop {
            let n = contents
                .read(&mut buf)
                .await
                .map_err(|e| Error::io(format!("reading the data for {path}"), e))?;
            let msg = if n == 0 {
                HostMessage::End
            } else {
                HostMessage::Data(buf[..n].to_vec())
            };
            if conn.send(&msg).await.is_err() {
                // The agent gave up early (no space, permission denied):
                // its reason is waiting in the connection.
                break;
            }
            if n == 0 {
                break;
            }
        }
        match self.reply(&mut conn).await? {
            AgentMessage::Done { count } => Ok(count),
            other => Err(unexpected(other, "write_file")),
        }
    }

    /// Reads a whole file into memory.
    ///
    /// ```no_run
    /// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
    /// let passwd = vm.read_file("/etc/passwd").await?;
    /// assert!(passwd.starts_with(b"root:"));
    /// # Ok(()) }
    /// ```
    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>, Error> {
        let mut data = Vec::new();
        self.read_file_to(path, &mut data).await?;
        Ok(data)
    }

    /// Streams a file into `sink`; returns the bytes copied.
    ///
    /// ```no_run
    /// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
    /// let mut local = tokio::fs::File::create("/tmp/guest-os-release").await.expect("create");
    /// vm.read_file_to("/etc/os-release", &mut local).await?;
    /// # Ok(()) }
    /// ```
    pub async fn read_file_to(
        &self,
        path: &str,
        mut sink: impl AsyncWrite + Unpin,
    ) -> Result<u64, Error> {
        let mut conn = self
            .connect(Request::ReadFile {
                path: path.to_string(),
            })
            .await?;
        let mut copied = 0u64;
        loop {
            match self.reply(&mut conn).await? {
                AgentMessage::Stat(_) => {}
                AgentMessage::Data(chunk) => {
                    sink.write_all(&chunk)
                        .await
                        .map_err(|e| Error::io(format!("writing the contents of {path}"), e))?;
                    copied += chunk.len() as u64;
                }
                AgentMessage::Done { count } if count == copied => break,
                AgentMessage::Done { count } => {
                    return Err(Error::Protocol(format!(
                        "read {path}: the agent sent {copied} bytes but reported {count}"
                    )))
                }
                other => return Err(unexpected(other, "read_file")),
            }
        }
        sink.flush()
            .await
            .map_err(|e| Error::io(format!("writing the contents of {path}"), e))?;
        Ok(copied)
    }

    /// Metadata of `path` (a symlink itself, not its target).
    ///
    /// ```no_run
    /// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
    /// let st = vm.stat("/bin/sh").await?;
    /// println!("{:?} {:o} {} bytes", st.kind, st.mode, st.size);
    /// # Ok(()) }
    /// ```
    pub async fn stat(&self, path: &str) -> Result<FileStat, Error> {
        let request = Request::Stat {
            path: path.to_string(),
        };
        match self.ask(request).await? {
            AgentMessage::Stat(stat) => Ok(stat),
            other => Err(unexpected(other, "stat")),
        }
    }

    /// Creates a directory (mode 0755); with `parents`, like `mkdir -p`.
    ///
    /// ```no_run
    /// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
    /// vm.mkdir("/srv/app/data", true).await?;
    /// # Ok(()) }
    /// ```
    pub async fn mkdir(&self, path: &str, parents: bool) -> Result<(), Error> {
        let request = Request::Mkdir {
            path: path.to_string(),
            mode: 0o755,
            parents,
        };
        match self.ask(request).await? {
            AgentMessage::Done { .. } => Ok(()),
            other => Err(unexpected(other, "mkdir")),
        }
    }

    /// Removes a file, symlink or empty directory; with `recursive`, a
    /// whole tree (symlinks inside are removed, never followed).
    ///
    /// ```no_run
    /// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
    /// vm.remove("/srv/app", true).await?;
    /// # Ok(()) }
    /// ```
    pub async fn remove(&self, path: &str, recursive: bool) -> Result<(), Error> {
        let request = Request::Remove {
            path: path.to_string(),
            recursive,
        };
        match self.ask(request).await? {
            AgentMessage::Done { .. } => Ok(()),
            other => Err(unexpected(other, "remove")),
        }
    }

    /// The entries of a directory, sorted by name.
    ///
    /// ```no_run
    /// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
    /// for entry in vm.list_dir("/etc").await? {
    ///     println!("{} {:?}", entry.name, entry.stat.kind);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn list_dir(&self, path: &str) -> Result<Vec<DirEntry>, Error> {
        let mut conn = self
            .connect(Request::List {
                path: path.to_string(),
            })
            .await?;
        let mut entries = Vec::new();
        loop {
            match self.reply(&mut conn).await? {
                AgentMessage::Entries(batch) => entries.extend(batch),
                AgentMessage::Done { .. } => return Ok(entries),
                other => return Err(unexpected(other, "list_dir")),
            }
        }
    }

    /// One request, one answer.
    async fn ask(&self, request: Request) -> Result<AgentMessage, Error> {
        let mut conn = self.connect(request).await?;
        self.reply(&mut conn).await
    }

    /// The next answer; agent errors become [`Error::Agent`].
    async fn reply(&self, conn: &mut Conn) -> Result<AgentMessage, Error> {
        match conn.recv().await {
            Ok(AgentMessage::Error { kind, message }) => Err(Error::Agent { kind, message }),
            Ok(msg) => Ok(msg),
            Err(e) => Err(self.explain_lost(e).await),
        }
    }
}
