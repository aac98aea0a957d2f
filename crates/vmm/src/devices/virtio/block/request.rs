//! One virtio-blk request: the header the driver wrote, the data buffers,
//! and the status byte the device writes back (virtio 1.2 §5.2.6), served
//! against the host file behind the disk.

use std::fs::File;
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use virtio_bindings::virtio_blk::{
    virtio_blk_outhdr, VIRTIO_BLK_ID_BYTES, VIRTIO_BLK_S_IOERR, VIRTIO_BLK_S_OK,
    VIRTIO_BLK_S_UNSUPP, VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN,
    VIRTIO_BLK_T_OUT,
};
use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::{ByteValued, GuestMemoryMmap};

/// virtio-blk counts in 512-byte sectors whatever the disk's block size.
pub const SECTOR_SIZE: u64 = 512;
const S_OK: u8 = VIRTIO_BLK_S_OK as u8;
const S_IOERR: u8 = VIRTIO_BLK_S_IOERR as u8;
const S_UNSUPP: u8 = VIRTIO_BLK_S_UNSUPP as u8;
/// Length of the disk's serial number (`VIRTIO_BLK_ID_BYTES`): a longer
/// id is cut, a shorter one padded with NULs.
pub const ID_LEN: usize = VIRTIO_BLK_ID_BYTES as usize;
/// Data moves through a buffer of this size, so a request of any length
/// costs the host no more memory than this.
const BOUNCE: usize = 128 * 1024;

/// `struct virtio_blk_outhdr`, as a type guest memory can be read into
/// (the binding's own type is not `ByteValued`).
#[repr(C)]
#[derive(Clone, Copy, Default)]
struct RequestHeader {
    request_type: u32,
    _ioprio: u32,
    sector: u64,
}
// SAFETY: plain integers, no padding, every bit pattern valid.
unsafe impl ByteValued for RequestHeader {}
const _: () =
    assert!(std::mem::size_of::<RequestHeader>() == std::mem::size_of::<virtio_blk_outhdr>());

/// The host file behind a virtio-blk device and what the guest knows of it.
pub struct Disk {
    file: File,
    read_only: bool,
    capacity_bytes: u64,
    id: [u8; ID_LEN],
    bounce: Vec<u8>,
}

impl Disk {
    /// `file` must be open for writing unless `read_only`; its size must
    /// be a whole number of sectors.
    pub fn new(file: File, read_only: bool, id: &str) -> io::Result<Disk> {
        let capacity_bytes = file.metadata()?.len();
        if capacity_bytes % SECTOR_SIZE != 0 {
            return Err(io::Error::other(format!(
                "size {capacity_bytes} is not a multiple of {SECTOR_SIZE} bytes"
            )));
        }
        let mut id_bytes = [0u8; ID_LEN];
        let n = id.len().min(ID_LEN);
        id_bytes[..n].copy_from_slice(&id.as_bytes()[..n]);
        Ok(Disk {
            file,
            read_only,
            capacity_bytes,
            id: id_bytes,
            bounce: vec![0u8; BOUNCE],
        })
    }

    /// Whether the guest may only read: offered as `VIRTIO_BLK_F_RO`, and a
    /// write request fails with an I/O error status.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    /// The disk's size in bytes, as it was when opened: a whole number of
    /// sectors.
    pub fn capacity_bytes(&self) -> u64 {
        self.capacity_bytes
    }

    /// The serial number the guest reads: 20 bytes, NUL-padded.
    pub fn id(&self) -> &[u8] {
        &self.id
    }

    /// The id as text, for messages.
    pub fn id_text(&self) -> String {
        String::from_utf8_lossy(&self.id)
            .trim_end_matches('\0')
            .to_string()
    }

    fn range_ok(&self, sector: u64, len: u64) -> bool {
        sector
            .checked_mul(SECTOR_SIZE)
            .and_then(|start| start.checked_add(len))
            .is_some_and(|end| end <= self.capacity_bytes)
    }

    /// Serves one request; returns the bytes written into the chain.
    pub fn serve(
        &mut self,
        mem: &GuestMemoryMmap,
        chain: DescriptorChain<&GuestMemoryMmap>,
    ) -> u32 {
        let (Ok(mut reader), Ok(mut writer)) = (
            Reader::<()>::new(mem, chain.clone()),
            Writer::<()>::new(mem, chain),
        ) else {
            return 0;
        };
        let Some(status_at) = writer.available_bytes().checked_sub(1) else {
            return 0;
        };
        let Ok(mut status_writer) = writer.split_at(status_at) else {
            return 0;
        };
        let status = match reader.read_obj::<RequestHeader>() {
            Ok(h) => self.execute(h, &mut reader, &mut writer),
            Err(_) => S_IOERR,
        };
        let _ = status_writer.write_all(&[status]);
        (writer.bytes_written() + 1) as u32
    }

    fn execute(&mut self, h: RequestHeader, reader: &mut Reader, writer: &mut Writer) -> u8 {
        let result = match h.request_type {
            VIRTIO_BLK_T_IN => {
                let len = writer.available_bytes() as u64;
                if !self.range_ok(h.sector, len) {
                    return S_IOERR;
                }
                self.read_into(h.sector * SECTOR_SIZE, len, writer)
            }
            VIRTIO_BLK_T_OUT => {
                let len = reader.available_bytes() as u64;
                if self.read_only || !self.range_ok(h.sector, len) {
                    return S_IOERR;
                }
                self.write_from(h.sector * SECTOR_SIZE, len, reader)
            }
            VIRTIO_BLK_T_FLUSH if !self.read_only => self.file.sync_data(),
            VIRTIO_BLK_T_FLUSH => Ok(()),
            VIRTIO_BLK_T_GET_ID => {
                writer.write_all(&self.id[..writer.available_bytes().min(ID_LEN)])
            }
            _ => return S_UNSUPP,
        };
        match result {
            Ok(()) => S_OK,
            Err(e) => {
                // A failing host disk fails every request the guest makes.
                crate::limited!(
                    warn,
                    "virtio-blk: request type {} at sector {}: {e}",
                    h.request_type,
                    h.sector
                );
                S_IOERR
            }
        }
    }

    fn read_into(&mut self, mut offset: u64, mut len: u64, writer: &mut Writer) -> io::Result<()> {
        while len > 0 {
            let n = len.min(BOUNCE as u64) as usize;
            let buf = &mut self.bounce[..n];
            self.file.read_exact_at(buf, offset)?;
            writer.write_all(buf)?;
            offset += n as u64;
            len -= n as u64;
        }
        Ok(())
    }

    fn write_from(&mut self, mut offset: u64, mut len: u64, reader: &mut Reader) -> io::Result<()> {
        while len > 0 {
            let n = len.min(BOUNCE as u64) as usize;
            let buf = &mut self.bounce[..n];
            reader.read_exact(buf)?;
            self.file.write_all_at(buf, offset)?;
            offset += n as u64;
            len -= n as u64;
        }
        Ok(())
    }
}
