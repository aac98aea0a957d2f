//! virtio-blk over a host file: read-only or read-write, flush, and files
//! that may be sparse (reads of holes are zeros; nothing is preallocated).

use super::queue_util::SingleQueue;
use super::{read_config_bytes, Activation, VirtioDevice, TYPE_BLOCK};
use crate::devices::state::{DeviceState, QueueState};
use std::fs::{File, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use virtio_queue::{DescriptorChain, Reader, Writer};
use vm_memory::{ByteValued, GuestMemoryMmap};

const SECTOR_SIZE: u64 = 512;
const F_SEG_MAX: u64 = 1 << 2;
const F_RO: u64 = 1 << 5;
const F_FLUSH: u64 = 1 << 9;
const T_IN: u32 = 0;
const T_OUT: u32 = 1;
const T_FLUSH: u32 = 4;
const T_GET_ID: u32 = 8;
const S_OK: u8 = 0;
const S_IOERR: u8 = 1;
const S_UNSUPP: u8 = 2;
const ID_LEN: usize = 20;
const QUEUE_SIZE: u16 = 256;
/// Segments per request we accept (config `seg_max`).
const SEG_MAX: u32 = 126;
const BOUNCE: usize = 128 * 1024;

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct RequestHeader {
    request_type: u32,
    _ioprio: u32,
    sector: u64,
}
// SAFETY: plain integers, no padding, every bit pattern valid.
unsafe impl ByteValued for RequestHeader {}

pub struct Block {
    file: File,
    read_only: bool,
    capacity_bytes: u64,
    id: [u8; ID_LEN],
    config: Vec<u8>,
    bounce: Vec<u8>,
    active: Option<SingleQueue>,
}

impl Block {
    /// Opens `path` as a disk. Its size must be a whole number of sectors.
    pub fn open(path: &Path, read_only: bool, id: &str) -> io::Result<Block> {
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        let capacity_bytes = file.metadata()?.len();
        if capacity_bytes % SECTOR_SIZE != 0 {
            return Err(io::Error::other(format!(
                "{}: size {capacity_bytes} is not a multiple of {SECTOR_SIZE} bytes",
                path.display()
            )));
        }
        let mut config = (capacity_bytes / SECTOR_SIZE).to_le_bytes().to_vec();
        config.extend_from_slice(&0u32.to_le_bytes()); // size_max (unused)
        config.extend_from_slice(&SEG_MAX.to_le_bytes());
        let mut id_bytes = [0u8; ID_LEN];
        let n = id.len().min(ID_LEN);
        id_bytes[..n].copy_from_slice(&id.as_bytes()[..n]);
        Ok(Block {
            file,
            read_only,
            capacity_bytes,
            id: id_bytes,
            config,
            bounce: vec![0u8; BOUNCE],
            active: None,
        })
    }

    fn range_ok(&self, sector: u64, len: u64) -> bool {
        sector
            .checked_mul(SECTOR_SIZE)
            .and_then(|start| start.checked_add(len))
            .is_some_and(|end| end <= self.capacity_bytes)
    }

    /// Serves one request; returns the bytes written into the chain.
    fn serve(&mut self, mem: &GuestMemoryMmap, chain: DescriptorChain<&GuestMemoryMmap>) -> u32 {
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
            T_IN => {
                let len = writer.available_bytes() as u64;
                if !self.range_ok(h.sector, len) {
                    return S_IOERR;
                }
                self.read_into(h.sector * SECTOR_SIZE, len, writer)
            }
            T_OUT => {
                let len = reader.available_bytes() as u64;
                if self.read_only || !self.range_ok(h.sector, len) {
                    return S_IOERR;
                }
                self.write_from(h.sector * SECTOR_SIZE, len, reader)
            }
            T_FLUSH if !self.read_only => self.file.sync_data(),
            T_FLUSH => Ok(()),
            T_GET_ID => writer.write_all(&self.id[..writer.available_bytes().min(ID_LEN)]),
            _ => return S_UNSUPP,
        };
        match result {
            Ok(()) => S_OK,
            Err(e) => {
                tracing::warn!(
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

impl VirtioDevice for Block {
    fn name(&self) -> &'static str {
        "blk"
    }
    fn device_type(&self) -> u32 {
        TYPE_BLOCK
    }
    fn queue_max_sizes(&self) -> &[u16] {
        &[QUEUE_SIZE]
    }
    fn features(&self) -> u64 {
        F_SEG_MAX | F_FLUSH | if self.read_only { F_RO } else { 0 }
    }
    fn read_config(&self, offset: u64, data: &mut [u8]) {
        read_config_bytes(&self.config, offset, data)
    }
    fn activate(&mut self, a: Activation) -> io::Result<()> {
        self.active = Some(SingleQueue::activate(a, "blk")?);
        Ok(())
    }
    fn save(&self) -> DeviceState {
        DeviceState::Block {
            read_only: self.read_only,
            capacity_bytes: self.capacity_bytes,
            id: self.id.to_vec(),
        }
    }
    fn active_queues(&self) -> Vec<QueueState> {
        SingleQueue::state(&self.active)
    }
    fn check_restore(&self, state: &DeviceState) -> Result<(), String> {
        match state {
            DeviceState::Block {
                read_only,
                capacity_bytes,
                ..
            } => {
                // The guest's page cache and filesystem hold what the disk
                // said at snapshot time; a disk of another size is surely
                // another disk.
                if *capacity_bytes != self.capacity_bytes {
                    return Err(format!(
                        "disk {}: {} bytes now, {capacity_bytes} when snapshotted",
                        String::from_utf8_lossy(&self.id).trim_end_matches('\0'),
                        self.capacity_bytes
                    ));
                }
                if *read_only != self.read_only {
                    return Err(format!(
                        "disk {}: read-only {} now, {read_only} when snapshotted",
                        String::from_utf8_lossy(&self.id).trim_end_matches('\0'),
                        self.read_only
                    ));
                }
                Ok(())
            }
            other => Err(format!("a block device cannot restore {other:?}")),
        }
    }
    fn handle_queue(&mut self, _index: usize) {
        // Taken out for the drain so `serve` can borrow the rest of `self`.
        let Some(mut active) = self.active.take() else {
            return;
        };
        active.drain(|mem, chain| self.serve(mem, chain));
        self.active = Some(active);
    }
}
