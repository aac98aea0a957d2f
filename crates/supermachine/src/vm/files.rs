//! Files in the guest: streamed writes and reads, stat, mkdir, remove, list.
//!
//! Contents travel in chunks of at most 64 KiB with vsock flow control, so
//! neither side ever holds a whole file (unless the caller asks for a
//! `Vec`, with [`Vm::read_file`]). What the host does hold is capped,
//! since the guest decides how much there is: [`Vm::read_file`] at
//! [`READ_FILE_LIMIT`] bytes and [`Vm::list_dir`] at [`LIST_DIR_LIMIT`]
//! entries (and [`LIST_DIR_BYTES_PER_ENTRY`] bytes of memory per entry
//! allowed), each with a `_limited` variant to raise or lower the cap; the
//! streamed [`Vm::read_file_to`] has no cap.

use crate::error::Error;
use crate::vm::conn::{unexpected, Conn};
use crate::vm::Vm;
use supermachine_protocol::{
    AgentMessage, DirEntry, FileStat, HostMessage, Request, WriteFileRequest, MAX_CHUNK,
};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Most bytes [`Vm::read_file`] keeps in memory.
///
/// ```
/// assert_eq!(supermachine::READ_FILE_LIMIT, 64 * 1024 * 1024);
/// ```
pub const READ_FILE_LIMIT: u64 = 64 << 20;

/// Most entries [`Vm::list_dir`] keeps in memory.
///
/// ```
/// assert_eq!(supermachine::LIST_DIR_LIMIT, 100_000);
/// ```
pub const LIST_DIR_LIMIT: usize = 100_000;

/// Host memory [`Vm::list_dir`] allows per entry of its cap, on average:
/// a listing may hold `limit × 640` bytes (64 MB at the default cap),
/// counting each entry's own size, its name and its link target. Without
/// it a guest could send the allowed number of entries each with a long
/// name and link target, about 1.3 GB at the default cap.
///
/// ```
/// assert_eq!(supermachine::LIST_DIR_BYTES_PER_ENTRY, 640);
/// ```
pub const LIST_DIR_BYTES_PER_ENTRY: usize = 640;

/// The longest entry name a Linux guest can list: NAME_MAX (255) bytes,
/// each of which may have become the three-byte U+FFFD on the way.
const MAX_NAME_BYTES: usize = 3 * 255;

/// The longest symlink target a Linux guest can list: PATH_MAX (4096)
/// bytes, with the same allowance.
const MAX_LINK_TARGET_BYTES: usize = 3 * 4096;

/// What one listed entry costs the host, or why the guest could not have
/// listed it: a name that is not one component, or longer than any Linux
/// file system allows.
fn entry_cost(entry: &DirEntry) -> Result<usize, String> {
    let name = &entry.name;
    if name.is_empty() || name == "." || name == ".." || name.contains(['/', '\0']) {
        return Err(format!(
            "an entry named {name:?}, which is not one path component"
        ));
    }
    if name.len() > MAX_NAME_BYTES {
        return Err(format!("an entry name of {} bytes", name.len()));
    }
    let target = entry.stat.link_target.as_deref().unwrap_or("");
    if target.len() > MAX_LINK_TARGET_BYTES {
        return Err(format!("a symlink target of {} bytes", target.len()));
    }
    Ok(std::mem::size_of::<DirEntry>() + name.len() + target.len())
}

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

    /// Reads a whole file into memory, at most [`READ_FILE_LIMIT`] bytes
    /// (a larger file is [`Error::ReadLimit`]; see
    /// [`Vm::read_file_limited`] and [`Vm::read_file_to`]).
    ///
    /// ```no_run
    /// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
    /// let passwd = vm.read_file("/etc/passwd").await?;
    /// assert!(passwd.starts_with(b"root:"));
    /// # Ok(()) }
    /// ```
    pub async fn read_file(&self, path: &str) -> Result<Vec<u8>, Error> {
        self.read_file_limited(path, READ_FILE_LIMIT).await
    }

    /// [`Vm::read_file`] with another cap on the bytes kept.
    ///
    /// ```no_run
    /// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
    /// let image = vm.read_file_limited("/srv/disk.img", 1 << 30).await?;
    /// # Ok(()) }
    /// ```
    pub async fn read_file_limited(&self, path: &str, limit: u64) -> Result<Vec<u8>, Error> {
        let mut data = Vec::new();
        self.read_into(path, &mut data, Some(limit)).await?;
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
        sink: impl AsyncWrite + Unpin,
    ) -> Result<u64, Error> {
        self.read_into(path, sink, None).await
    }

    /// Streams a file into `sink`, failing with [`Error::ReadLimit`] before
    /// more than `limit` bytes would be written.
    async fn read_into(
        &self,
        path: &str,
        mut sink: impl AsyncWrite + Unpin,
        limit: Option<u64>,
    ) -> Result<u64, Error> {
        let over = |limit: u64| Error::ReadLimit {
            path: path.to_string(),
            limit,
        };
        let mut conn = self
            .connect(Request::ReadFile {
                path: path.to_string(),
            })
            .await?;
        let mut copied = 0u64;
        loop {
            match self.reply(&mut conn).await? {
                AgentMessage::Stat(stat) => {
                    if let Some(limit) = limit.filter(|&l| stat.size > l) {
                        return Err(over(limit));
                    }
                }
                AgentMessage::Data(chunk) => {
                    if let Some(limit) = limit.filter(|&l| copied + chunk.len() as u64 > l) {
                        return Err(over(limit));
                    }
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

    /// The entries of a directory, sorted by name; at most
    /// [`LIST_DIR_LIMIT`] (more is [`Error::ListLimit`]; see
    /// [`Vm::list_dir_limited`]).
    ///
    /// ```no_run
    /// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
    /// for entry in vm.list_dir("/etc").await? {
    ///     println!("{} {:?}", entry.name, entry.stat.kind);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn list_dir(&self, path: &str) -> Result<Vec<DirEntry>, Error> {
        self.list_dir_limited(path, LIST_DIR_LIMIT).await
    }

    /// [`Vm::list_dir`] with another cap on the entries kept.
    ///
    /// ```no_run
    /// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
    /// let entries = vm.list_dir_limited("/var/cache/huge", 1_000_000).await?;
    /// # Ok(()) }
    /// ```
    pub async fn list_dir_limited(&self, path: &str, limit: usize) -> Result<Vec<DirEntry>, Error> {
        let mut conn = self
            .connect(Request::List {
                path: path.to_string(),
            })
            .await?;
        let byte_limit = limit.saturating_mul(LIST_DIR_BYTES_PER_ENTRY);
        let mut entries = Vec::new();
        let mut bytes = 0usize;
        loop {
            match self.reply(&mut conn).await? {
                AgentMessage::Entries(batch) => {
                    for entry in &batch {
                        let cost = entry_cost(entry).map_err(|what| {
                            Error::Protocol(format!("the guest listed {what} in {path}"))
                        })?;
                        bytes = bytes.saturating_add(cost);
                    }
                    if entries.len() + batch.len() > limit || bytes > byte_limit {
                        return Err(Error::ListLimit {
                            path: path.to_string(),
                            limit,
                            byte_limit,
                        });
                    }
                    entries.extend(batch)
                }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::fake::vm_answering;
    use supermachine_protocol::FileKind;

    fn stat(size: u64) -> FileStat {
        FileStat {
            kind: FileKind::File,
            mode: 0o644,
            uid: 0,
            gid: 0,
            size,
            mtime: 0,
            link_target: None,
        }
    }

    /// Failed before the fix: read_file kept whatever the guest sent.
    #[tokio::test]
    async fn read_file_keeps_at_most_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        // A guest that claims a small file and sends more than the cap.
        let vm = vm_answering(dir.path(), |_| {
            let mut frames = vec![AgentMessage::Stat(stat(10))];
            frames.extend((0..3).map(|_| AgentMessage::Data(vec![7; 40])));
            frames.push(AgentMessage::Done { count: 120 });
            frames
        });
        let e = vm.read_file_limited("/big", 100).await.unwrap_err();
        assert!(matches!(&e, Error::ReadLimit { limit: 100, .. }), "{e}");
        assert_eq!(vm.read_file_limited("/big", 120).await.unwrap().len(), 120);
        // The streamed read has no cap.
        let mut sink = Vec::new();
        assert_eq!(vm.read_file_to("/big", &mut sink).await.unwrap(), 120);
    }

    #[tokio::test]
    async fn a_file_announced_larger_than_the_cap_is_refused_before_its_data() {
        let dir = tempfile::tempdir().unwrap();
        let vm = vm_answering(dir.path(), |_| vec![AgentMessage::Stat(stat(1 << 40))]);
        let e = vm.read_file("/huge").await.unwrap_err();
        assert!(
            matches!(
                &e,
                Error::ReadLimit {
                    limit: READ_FILE_LIMIT,
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("read_file_to"), "{e}");
    }

    /// Failed before the fix: list_dir kept every entry the guest listed.
    #[tokio::test]
    async fn list_dir_keeps_at_most_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let vm = vm_answering(dir.path(), |_| {
            let batch = |from: usize| {
                (from..from + 50)
                    .map(|i| DirEntry {
                        name: format!("f{i}"),
                        stat: stat(0),
                    })
                    .collect()
            };
            vec![
                AgentMessage::Entries(batch(0)),
                AgentMessage::Entries(batch(50)),
                AgentMessage::Done { count: 100 },
            ]
        });
        let e = vm.list_dir_limited("/d", 60).await.unwrap_err();
        assert!(matches!(&e, Error::ListLimit { limit: 60, .. }), "{e}");
        assert_eq!(vm.list_dir_limited("/d", 100).await.unwrap().len(), 100);
    }

    /// Failed before the fix: under the entry cap, a guest could still
    /// make the host hold a long name and link target per entry.
    #[tokio::test]
    async fn list_dir_counts_the_bytes_of_names_and_link_targets() {
        let dir = tempfile::tempdir().unwrap();
        let vm = vm_answering(dir.path(), |_| {
            // 100 entries (the cap asked for is 1,000) of 12 KiB each:
            // 1.2 MB against the 640 KB that 1,000 entries allow.
            let batch = |from: usize| {
                (from..from + 10)
                    .map(|i| {
                        let mut s = stat(0);
                        s.link_target = Some("t".repeat(12_000));
                        DirEntry {
                            name: format!("{i}{}", "n".repeat(700)),
                            stat: s,
                        }
                    })
                    .collect()
            };
            let mut frames: Vec<_> = (0..10)
                .map(|b| AgentMessage::Entries(batch(b * 10)))
                .collect();
            frames.push(AgentMessage::Done { count: 100 });
            frames
        });
        let e = vm.list_dir_limited("/d", 1_000).await.unwrap_err();
        assert!(
            matches!(
                &e,
                Error::ListLimit {
                    limit: 1_000,
                    byte_limit: 640_000,
                    ..
                }
            ),
            "{e}"
        );
        // The same listing fits a cap that allows its bytes.
        assert_eq!(vm.list_dir_limited("/d", 10_000).await.unwrap().len(), 100);
    }

    /// Names a Linux guest cannot list are a protocol error, not data.
    #[tokio::test]
    async fn list_dir_refuses_names_no_guest_could_list() {
        for (name, target) in [
            ("a/b".to_string(), None),
            ("..".to_string(), None),
            (String::new(), None),
            ("n".repeat(766), None),
            ("ok".to_string(), Some("t".repeat(3 * 4096 + 1))),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let vm = vm_answering(dir.path(), move |_| {
                let mut s = stat(0);
                s.link_target = target.clone();
                vec![
                    AgentMessage::Entries(vec![DirEntry {
                        name: name.clone(),
                        stat: s,
                    }]),
                    AgentMessage::Done { count: 1 },
                ]
            });
            let e = vm.list_dir("/d").await.unwrap_err();
            assert!(
                matches!(&e, Error::Protocol(m) if m.contains("the guest listed")),
                "{e}"
            );
        }
    }
}
