//! Files through the library: streamed writes and reads, metadata, trees.

use crate::api::{ensure, sha256_hex, with_vm, with_vm_watched, Noise, Progress};
use crate::progress::trial;
use crate::util::TempDir;
use libtest_mimic::{Failed, Trial};
use sha2::{Digest, Sha256};
use std::pin::Pin;
use std::task::{Context, Poll};
use supermachine::{Disk, FileKind, VmConfig, WriteFileRequest};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

pub fn trials() -> Vec<Trial> {
    vec![
        trial("files::binary_round_trip_and_metadata", binary_and_metadata),
        trial("files::one_gib_round_trip", one_gib_round_trip),
    ]
}

fn binary_and_metadata() -> Result<(), Failed> {
    with_vm(VmConfig::default(), |vm| async move {
        let mut data = vec![0u8; 3 << 20];
        Noise::new(3).fill(&mut data);
        data[..1024].fill(0);
        vm.write_file("/tmp/blob", &data).await?;
        ensure(
            vm.read_file("/tmp/blob").await? == data,
            "read back differs",
        )?;
        let guest_sum = vm.exec(["sha256sum", "/tmp/blob"]).await?;
        ensure(
            guest_sum.stdout_lossy().starts_with(&sha256_hex(&data)),
            format!("guest checksum: {guest_sum:?}"),
        )?;

        let mut req = WriteFileRequest::new("/srv/a/b/owned");
        req.mode = 0o640;
        req.uid = Some(65534);
        req.gid = Some(65534);
        req.create_parents = true;
        vm.write_file_with(req, &b"one\n"[..]).await?;
        let mut append = WriteFileRequest::new("/srv/a/b/owned");
        append.append = true;
        vm.write_file_with(append, &b"two\n"[..]).await?;
        ensure(
            vm.read_file("/srv/a/b/owned").await? == b"one\ntwo\n",
            "append",
        )?;
        let st = vm.stat("/srv/a/b/owned").await?;
        ensure(
            (st.kind, st.mode, st.uid, st.gid, st.size) == (FileKind::File, 0o640, 65534, 65534, 8),
            format!("{st:?}"),
        )?;

        vm.exec(["ln", "-s", "/srv/a/b/owned", "/srv/link"]).await?;
        let link = vm.stat("/srv/link").await?;
        ensure(
            link.kind == FileKind::Symlink && link.link_target.as_deref() == Some("/srv/a/b/owned"),
            format!("{link:?}"),
        )?;

        vm.mkdir("/srv/many", false).await?;
        let again = vm.mkdir("/srv/many", false).await;
        ensure(
            matches!(
                again,
                Err(supermachine::Error::Agent {
                    kind: supermachine::ErrorKind::AlreadyExists,
                    ..
                })
            ),
            format!("{again:?}"),
        )?;
        vm.mkdir("/srv/many", true).await?;
        vm.exec([
            "sh",
            "-c",
            "cd /srv/many && for i in $(seq 1 300); do : > f$i; done",
        ])
        .await?;
        let entries = vm.list_dir("/srv/many").await?;
        ensure(entries.len() == 300, format!("{} entries", entries.len()))?;
        ensure(
            entries.windows(2).all(|w| w[0].name < w[1].name),
            "entries are not sorted",
        )?;

        vm.remove("/srv", true).await?;
        let gone = vm.stat("/srv").await;
        ensure(
            matches!(&gone, Err(e) if e.is_not_found()),
            format!("{gone:?}"),
        )?;
        let missing = vm.read_file("/no/such/file").await;
        ensure(
            matches!(&missing, Err(e) if e.is_not_found()),
            format!("{missing:?}"),
        )
    })
}

/// 1 GiB each way through a disk formatted on the host (guest RAM could
/// not hold it), streamed, never whole in memory, checksummed on both
/// sides.
fn one_gib_round_trip() -> Result<(), Failed> {
    const SIZE: u64 = 1 << 30;
    let dir = TempDir::new("gib");
    let disk = dir.0.join("disk.ext4");
    std::fs::File::create(&disk)?.set_len(SIZE + (256 << 20))?;
    let mkfs = std::process::Command::new("mkfs.ext4")
        .args(["-q", "-F", "-E", "lazy_itable_init=1,lazy_journal_init=1"])
        .arg(&disk)
        .status()?;
    ensure(mkfs.success(), "mkfs.ext4 failed")?;
    let config = VmConfig {
        disks: vec![Disk {
            path: disk.clone(),
            read_only: false,
        }],
        ..VmConfig::default()
    };
    with_vm_watched(config, |vm, progress| async move {
        let out = vm
            .exec(["sh", "-c", "mkdir -p /mnt && mount /dev/vdb /mnt"])
            .await?;
        ensure(out.status.success(), format!("mount: {out:?}"))?;
        let mut source = NoiseReader::new(SIZE, progress.clone());
        let written = vm
            .write_file_with(WriteFileRequest::new("/mnt/big"), &mut source)
            .await
            .map_err(|e| format!("writing 1 GiB: {e}"))?;
        ensure(written == SIZE, format!("wrote {written}"))?;
        let sent = hex::encode(source.hash.finalize_reset());
        let guest = vm
            .exec(["sha256sum", "/mnt/big"])
            .await
            .map_err(|e| format!("guest checksum: {e}"))?;
        ensure(
            guest.stdout_lossy().starts_with(&sent),
            format!("guest checksum {guest:?}, sent {sent}"),
        )?;
        let mut sink = HashSink(Sha256::new(), progress);
        let read = vm
            .read_file_to("/mnt/big", &mut sink)
            .await
            .map_err(|e| format!("reading 1 GiB back: {e}"))?;
        ensure(read == SIZE, format!("read {read}"))?;
        ensure(
            hex::encode(sink.0.finalize()) == sent,
            "what came back differs from what was sent",
        )?;
        let out = vm.exec(["umount", "/mnt"]).await?;
        ensure(out.status.success(), format!("umount: {out:?}"))
    })
}

/// `len` bytes of noise as an `AsyncRead`, hashed and counted as they are read.
struct NoiseReader {
    noise: Noise,
    left: u64,
    hash: Sha256,
    progress: Progress,
}

impl NoiseReader {
    fn new(len: u64, progress: Progress) -> Self {
        NoiseReader {
            noise: Noise::new(11),
            left: len,
            hash: Sha256::new(),
            progress,
        }
    }
}

impl AsyncRead for NoiseReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = (buf.remaining() as u64).min(self.left) as usize;
        let mut chunk = vec![0u8; n];
        self.noise.fill(&mut chunk);
        self.hash.update(&chunk);
        self.left -= n as u64;
        self.progress.add(n as u64);
        buf.put_slice(&chunk);
        Poll::Ready(Ok(()))
    }
}

/// An `AsyncWrite` that only hashes and counts.
struct HashSink(Sha256, Progress);

impl AsyncWrite for HashSink {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.0.update(buf);
        self.1.add(buf.len() as u64);
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}
