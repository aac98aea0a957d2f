//! Log files that cannot outgrow a cap: the guest's serial console (which
//! the guest fills at will) and the worker's own log (which a guest can
//! make it write to, rate limits notwithstanding).
//!
//! A [`CappedLog`] keeps the head of what was written (the first half of
//! the cap: boot messages, the first error), then a marker line, then the
//! most recent output in what is left. When the tail outgrows its share,
//! its older half is dropped and the marker says, as a running count, how
//! many bytes were dropped there. The file never grows past the cap plus
//! the marker line; dropping costs a copy of at most a quarter of the cap,
//! once per quarter of the cap written, so a flooding guest costs the host
//! two bytes of I/O per byte it prints.
//!
//! Writes go to explicit offsets (`pwrite`: no `O_APPEND`, the tail is
//! rewritten in place). The worker's stderr has other writers besides
//! (a panic message, the standard library's own): their fd's offset is
//! read before each write and set after it, so what they write lands at
//! the end and is simply part of the log.

use std::fs::File;
use std::io::{self, Seek, SeekFrom, Write};
use std::os::unix::fs::{FileExt, OpenOptionsExt};
use std::sync::Mutex;

/// Default cap of a VM's serial log.
pub const DEFAULT_SERIAL_LOG_CAP: u64 = 16 << 20;
/// Default cap of the worker's own log (its stderr, when that is a file).
pub const DEFAULT_WORKER_LOG_CAP: u64 = 4 << 20;
/// The smallest cap taken; a smaller one is raised to this (the marker
/// alone is about a hundred bytes).
pub const MIN_CAP: u64 = 4096;

/// The marker between the head and the tail; always [`MARKER_LEN`] bytes.
fn marker(dropped: u64) -> Vec<u8> {
    format!(
        "\n[supermachine: log cap reached; {dropped:>20} bytes dropped here, the latest output follows]\n"
    )
    .into_bytes()
}

/// Length in bytes of the marker line between head and tail (the dropped
/// count is right-aligned in 20 columns, so the length never changes).
pub const MARKER_LEN: u64 = 101;

/// A log file written under a cap (see the module doc).
pub struct CappedLog {
    /// Open for reading and writing (the tail is moved within it).
    file: File,
    /// The open file other writers write through, whose offset is kept at
    /// the end of the log ([`Self::sharing_offset_with`]).
    shared: Option<File>,
    /// Where the next byte goes.
    pos: u64,
    cap: u64,
    /// Where the marker starts, once the head is full.
    marker_at: Option<u64>,
    dropped: u64,
}

impl CappedLog {
    /// Writes to `file` (open for reading and writing) from its end on
    /// (what it holds stays, and counts as head), keeping it under about
    /// `cap` bytes.
    pub fn new(file: File, cap: u64) -> io::Result<CappedLog> {
        let len = file.metadata()?.len();
        let mut log = CappedLog {
            file,
            shared: None,
            pos: len,
            cap: cap.max(MIN_CAP),
            marker_at: None,
            dropped: 0,
        };
        if len >= log.head_cap() {
            log.start_tail(len)?;
        }
        Ok(log)
    }

    /// Also keeps the offset of `others` (another open file of the same
    /// log, which others write through) in step with the log.
    pub fn sharing_offset_with(mut self, others: File) -> io::Result<CappedLog> {
        (&others).seek(SeekFrom::Start(self.pos))?;
        self.shared = Some(others);
        Ok(self)
    }

    /// Bytes dropped so far.
    pub fn dropped(&self) -> u64 {
        self.dropped
    }

    fn head_cap(&self) -> u64 {
        self.cap / 2
    }

    fn tail_cap(&self) -> u64 {
        self.cap - self.head_cap()
    }

    fn append(&mut self, buf: &[u8]) -> io::Result<()> {
        self.file.write_all_at(buf, self.pos)?;
        self.pos += buf.len() as u64;
        Ok(())
    }

    /// Closes the head at `at` with the marker; the tail follows it.
    fn start_tail(&mut self, at: u64) -> io::Result<()> {
        self.marker_at = Some(at);
        self.file.write_all_at(&marker(self.dropped), at)?;
        self.pos = at + MARKER_LEN;
        Ok(())
    }

    fn write_tail(&mut self, mut buf: &[u8]) -> io::Result<()> {
        let Some(marker_at) = self.marker_at else {
            return Ok(());
        };
        let start = marker_at + MARKER_LEN;
        let end = self.pos.max(start);
        let used = end - start;
        let incoming = buf.len() as u64;
        if used + incoming <= self.tail_cap() {
            self.pos = end;
            return self.append(buf);
        }
        // Keep the newest half of the tail: the end of what is there and
        // all of what comes, or only the end of what comes.
        let keep = self.tail_cap() / 2;
        let kept_old = keep.saturating_sub(incoming).min(used);
        if incoming > keep {
            self.dropped += incoming - keep;
            buf = &buf[(incoming - keep) as usize..];
        }
        self.dropped += used - kept_old;
        self.move_down(end - kept_old, start, kept_old)?;
        self.file.set_len(start + kept_old)?;
        self.pos = start + kept_old;
        self.append(buf)?;
        self.file.write_all_at(&marker(self.dropped), marker_at)
    }

    /// Copies `len` bytes at `from` down to `to` (< `from`), front to back
    /// so that nothing is overwritten before it is read.
    fn move_down(&self, mut from: u64, mut to: u64, len: u64) -> io::Result<()> {
        let mut chunk = vec![0u8; (len.min(64 << 10)) as usize];
        let end = from + len;
        while from < end {
            let n = ((end - from) as usize).min(chunk.len());
            self.file.read_exact_at(&mut chunk[..n], from)?;
            self.file.write_all_at(&chunk[..n], to)?;
            from += n as u64;
            to += n as u64;
        }
        Ok(())
    }

    fn write_all_capped(&mut self, buf: &[u8]) -> io::Result<()> {
        if self.marker_at.is_some() {
            return self.write_tail(buf);
        }
        let room = self.head_cap().saturating_sub(self.pos);
        if buf.len() as u64 <= room {
            return self.append(buf);
        }
        let (head, tail) = buf.split_at(room as usize);
        self.append(head)?;
        self.start_tail(self.pos)?;
        self.write_tail(tail)
    }
}

impl Write for CappedLog {
    /// Takes all of `buf` (what does not fit is dropped and counted).
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if let Some(shared) = &self.shared {
            // Others wrote up to here.
            self.pos = self.pos.max((&*shared).stream_position()?);
        }
        let written = self.write_all_capped(buf);
        if let Some(shared) = &self.shared {
            (&*shared).seek(SeekFrom::Start(self.pos))?;
        }
        written.map(|()| buf.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

/// The worker's own log: its stderr, capped once [`cap_stderr`] found it
/// is a regular file (a detached worker's log); a pipe or terminal is
/// written as is (the reader there keeps what it wants).
static STDERR: Mutex<Option<CappedLog>> = Mutex::new(None);

/// Caps what goes to stderr through [`StderrLog`] at `cap` bytes, if
/// stderr is a regular file. Returns whether it is.
pub fn cap_stderr(cap: u64) -> io::Result<bool> {
    let stderr = io::stderr();
    let shared = File::from(std::os::fd::AsFd::as_fd(&stderr).try_clone_to_owned()?);
    if !shared.metadata()?.file_type().is_file() {
        return Ok(false);
    }
    // Opened anew for reading too (stderr is opened for writing only); the
    // magic link names the very file, whatever its path now.
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .custom_flags(libc::O_CLOEXEC)
        .open("/proc/self/fd/2")?;
    let log = CappedLog::new(file, cap)?.sharing_offset_with(shared)?;
    *STDERR.lock().unwrap_or_else(|e| e.into_inner()) = Some(log);
    Ok(true)
}

/// Writes to the worker's log (stderr, capped by [`cap_stderr`]). For
/// `tracing`'s writer, the console echo and the worker's own messages.
pub struct StderrLog;

impl Write for StderrLog {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        match STDERR.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            Some(log) => log.write(buf),
            None => io::stderr().write(buf),
        }
    }

    fn flush(&mut self) -> io::Result<()> {
        match STDERR.lock().unwrap_or_else(|e| e.into_inner()).as_mut() {
            Some(log) => log.flush(),
            None => io::stderr().flush(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn log_file(cap: u64) -> (tempfile::TempDir, std::path::PathBuf, CappedLog) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        let file = crate::files::open_log(&path).unwrap();
        (dir, path.clone(), CappedLog::new(file, cap).unwrap())
    }

    #[test]
    fn the_marker_has_a_fixed_length() {
        assert_eq!(marker(0).len() as u64, MARKER_LEN);
        assert_eq!(marker(u64::MAX).len() as u64, MARKER_LEN);
    }

    #[test]
    fn under_the_cap_everything_is_kept() {
        let (_dir, path, mut log) = log_file(8192);
        log.write_all(b"hello\n").unwrap();
        log.write_all(&[b'x'; 4000]).unwrap();
        let got = std::fs::read(&path).unwrap();
        assert_eq!(got.len(), 4006);
        assert_eq!(log.dropped(), 0);
    }

    #[test]
    fn a_flood_keeps_the_head_the_latest_output_and_the_count_of_the_rest() {
        let cap = 8192;
        let (_dir, path, mut log) = log_file(cap);
        log.write_all(b"boot\n").unwrap();
        let mut total = 5u64;
        for i in 0..10_000u32 {
            let line = format!("line {i:06}\n");
            log.write_all(line.as_bytes()).unwrap();
            total += line.len() as u64;
        }
        let got = std::fs::read(&path).unwrap();
        assert!(got.len() as u64 <= cap + MARKER_LEN, "{} bytes", got.len());
        assert!(got.starts_with(b"boot\nline 000000\n"));
        assert!(got.ends_with(b"line 009999\n"));
        let text = String::from_utf8_lossy(&got);
        let dropped = log.dropped();
        assert!(
            text.contains(&format!("{dropped} bytes dropped here")),
            "{text}"
        );
        assert_eq!(got.len() as u64 + dropped, total + MARKER_LEN);
    }

    #[test]
    fn one_write_larger_than_the_cap_keeps_its_end() {
        let cap = 8192;
        let (_dir, path, mut log) = log_file(cap);
        let big: Vec<u8> = (0..100_000u32).map(|i| (i % 251) as u8).collect();
        log.write_all(&big).unwrap();
        let got = std::fs::read(&path).unwrap();
        assert!(got.len() as u64 <= cap + MARKER_LEN);
        assert_eq!(&got[..(cap / 2) as usize], &big[..(cap / 2) as usize]);
        assert!(big.ends_with(&got[got.len() - 1000..]));
        assert_eq!(
            got.len() as u64 + log.dropped(),
            big.len() as u64 + MARKER_LEN
        );
    }

    #[test]
    fn an_existing_log_past_the_head_is_kept_whole() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("log");
        std::fs::write(&path, vec![b'e'; 6000]).unwrap();
        let mut log = CappedLog::new(crate::files::open_log(&path).unwrap(), 8192).unwrap();
        for _ in 0..100 {
            log.write_all(&[b'n'; 1000]).unwrap();
        }
        let got = std::fs::read(&path).unwrap();
        assert_eq!(&got[..6000], &[b'e'; 6000][..]);
        assert!(got.len() as u64 <= 6000 + MARKER_LEN + 4096);
        assert!(got.ends_with(&[b'n'; 1000]));
    }

    #[test]
    fn writes_by_others_through_the_shared_file_land_at_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("worker.log");
        // As the library makes a detached worker's stderr: write-only.
        let others = File::create(&path).unwrap();
        let file = crate::files::open_log(&path).unwrap();
        let mut log = CappedLog::new(file, 8192)
            .unwrap()
            .sharing_offset_with(others.try_clone().unwrap())
            .unwrap();
        log.write_all(b"ours 1\n").unwrap();
        (&others).write_all(b"theirs\n").unwrap();
        log.write_all(b"ours 2\n").unwrap();
        assert_eq!(std::fs::read(&path).unwrap(), b"ours 1\ntheirs\nours 2\n");
        for _ in 0..1000 {
            log.write_all(&[b'x'; 100]).unwrap();
        }
        (&others).write_all(b"last\n").unwrap();
        let got = std::fs::read(&path).unwrap();
        assert!(got.len() as u64 <= 8192 + MARKER_LEN + 5);
        assert!(got.ends_with(b"xxlast\n"));
    }
}
