//! virtio-blk against a mock driver: well-formed requests do what they
//! say, and requests no honest driver makes are answered with an error
//! (or left unanswerable) without touching the disk outside its bounds.

use super::*;
use crate::devices::virtio::test_utils::{
    memory, within_a_minute, Buf, MockDriver, MEM_SIZE, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};
use std::os::unix::fs::FileExt;
use virtio_bindings::virtio_blk::{
    VIRTIO_BLK_T_FLUSH, VIRTIO_BLK_T_GET_ID, VIRTIO_BLK_T_IN, VIRTIO_BLK_T_OUT,
};
use virtio_bindings::virtio_mmio::VIRTIO_MMIO_INT_CONFIG;
use vm_memory::GuestMemoryMmap;

const DISK_BYTES: u64 = 64 * 1024;
const OK: u8 = 0;
const IOERR: u8 = 1;
const UNSUPP: u8 = 2;

/// A disk whose byte at offset `i` is `i % 251`, and its device, active.
struct Fixture<'m> {
    _dir: tempfile::TempDir,
    file: std::fs::File,
    block: Block,
    driver: MockDriver<'m>,
    interrupt: std::sync::Arc<crate::devices::virtio::Interrupt>,
}

fn pattern(offset: u64, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| ((offset + i as u64) % 251) as u8)
        .collect()
}

fn fixture(mem: &GuestMemoryMmap, read_only: bool) -> Fixture<'_> {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk");
    std::fs::write(&path, pattern(0, DISK_BYTES as usize)).unwrap();
    let mut block = Block::open(&path, read_only, "disk0").unwrap();
    let driver = MockDriver::new(mem, &[QUEUE_SIZE]);
    let (activation, interrupt, _) = driver.activation();
    block.activate(activation).unwrap();
    Fixture {
        interrupt,
        file: std::fs::File::open(&path).unwrap(),
        _dir: dir,
        block,
        driver,
    }
}

fn header(request_type: u32, sector: u64) -> Vec<u8> {
    let mut h = request_type.to_le_bytes().to_vec();
    h.extend(0u32.to_le_bytes());
    h.extend(sector.to_le_bytes());
    h
}

impl Fixture<'_> {
    /// Sends one request: header, `data`, a status byte; serves the queue;
    /// returns (status, bytes the device says it wrote).
    fn request(&mut self, request_type: u32, sector: u64, data: Buf) -> (u8, u32) {
        let h = self.driver.readable(&header(request_type, sector));
        let status = self.driver.writable(1);
        // Not a status the device may write: shows whether it wrote one.
        self.driver.write(status.addr, &[0xff]);
        self.driver.add_chain(0, &[h, data, status]);
        self.block.handle_queue(0);
        let (_, len) = *self.driver.used(0).last().expect("a used entry");
        (self.driver.read(status.addr, 1)[0], len)
    }

    fn disk(&self, offset: u64, len: usize) -> Vec<u8> {
        let mut out = vec![0u8; len];
        self.file.read_exact_at(&mut out, offset).unwrap();
        out
    }
}

#[test]
fn reads_come_from_the_right_sectors() {
    let mem = memory();
    let mut f = fixture(&mem, false);
    let data = f.driver.writable(1024);
    assert_eq!(f.request(VIRTIO_BLK_T_IN, 3, data), (OK, 1025));
    assert_eq!(f.driver.read(data.addr, 1024), pattern(3 * 512, 1024));
}

#[test]
fn writes_land_on_the_disk() {
    let mem = memory();
    let mut f = fixture(&mem, false);
    let data = f.driver.readable(&[0xab; 512]);
    assert_eq!(f.request(VIRTIO_BLK_T_OUT, 5, data), (OK, 1));
    assert_eq!(f.disk(5 * 512, 512), vec![0xab; 512]);
    assert_eq!(f.disk(4 * 512, 512), pattern(4 * 512, 512));
}

#[test]
fn a_read_only_disk_refuses_writes_and_stays_unchanged() {
    let mem = memory();
    let mut f = fixture(&mem, true);
    assert_ne!(f.block.features() & F_RO, 0);
    let data = f.driver.readable(&[0xab; 512]);
    assert_eq!(f.request(VIRTIO_BLK_T_OUT, 0, data).0, IOERR);
    assert_eq!(f.disk(0, 512), pattern(0, 512));
    let flush = f.driver.readable(&[]);
    assert_eq!(f.request(VIRTIO_BLK_T_FLUSH, 0, flush).0, OK);
}

#[test]
fn get_id_flush_and_unknown_requests() {
    let mem = memory();
    let mut f = fixture(&mem, false);
    let id = f.driver.writable(20);
    assert_eq!(f.request(VIRTIO_BLK_T_GET_ID, 0, id), (OK, 21));
    assert_eq!(&f.driver.read(id.addr, 6), b"disk0\0");
    let none = f.driver.readable(&[]);
    assert_eq!(f.request(VIRTIO_BLK_T_FLUSH, 0, none).0, OK);
    let none = f.driver.readable(&[]);
    assert_eq!(f.request(0xdead, 0, none).0, UNSUPP);
}

#[test]
fn sectors_past_the_end_are_errors_not_short_reads() {
    let mem = memory();
    let mut f = fixture(&mem, false);
    let last = DISK_BYTES / 512 - 1;
    // The last sector is fine; one byte past the end is not.
    let data = f.driver.writable(512);
    assert_eq!(f.request(VIRTIO_BLK_T_IN, last, data).0, OK);
    let data = f.driver.writable(513);
    assert_eq!(f.request(VIRTIO_BLK_T_IN, last, data).0, IOERR);
    let data = f.driver.readable(&[1; 512]);
    assert_eq!(f.request(VIRTIO_BLK_T_OUT, last + 1, data).0, IOERR);
    // A sector whose byte offset overflows u64.
    let data = f.driver.writable(512);
    assert_eq!(f.request(VIRTIO_BLK_T_IN, u64::MAX / 256, data).0, IOERR);
    assert_eq!(
        f.file.metadata().unwrap().len(),
        DISK_BYTES,
        "the disk did not grow"
    );
}

#[test]
fn a_header_in_a_device_writable_buffer_is_an_error() {
    let mem = memory();
    let mut f = fixture(&mem, false);
    // The driver put the header where the device writes, not reads.
    let h = f.driver.writable(16);
    f.driver.write(h.addr, &header(VIRTIO_BLK_T_OUT, 0));
    let status = f.driver.writable(1);
    f.driver.add_chain(0, &[h, status]);
    f.block.handle_queue(0);
    assert_eq!(f.driver.read(status.addr, 1)[0], IOERR);
    assert_eq!(f.disk(0, 512), pattern(0, 512));
}

#[test]
fn a_read_into_a_device_readable_buffer_writes_nothing_there() {
    let mem = memory();
    let mut f = fixture(&mem, false);
    let data = f.driver.readable(&[0x11; 512]);
    f.request(VIRTIO_BLK_T_IN, 0, data);
    assert_eq!(f.driver.read(data.addr, 512), vec![0x11; 512]);
}

#[test]
fn buffers_past_guest_memory_are_not_served() {
    let mem = memory();
    let mut f = fixture(&mem, false);
    for (addr, len) in [(MEM_SIZE - 256, 4096), (u64::MAX - 100, 512)] {
        let before = f.driver.used_idx(0);
        let (status, used_len) = f.request(VIRTIO_BLK_T_IN, 0, Buf::write(addr, len));
        assert_eq!(f.driver.used_idx(0), before.wrapping_add(1), "answered");
        assert_eq!(
            (status, used_len),
            (0xff, 0),
            "nothing written for {addr:#x}+{len}"
        );
    }
}

#[test]
fn a_descriptor_loop_ends() {
    let mem = memory();
    let mut f = fixture(&mem, false);
    let h = f.driver.readable(&header(VIRTIO_BLK_T_IN, 0));
    let status = f.driver.writable(1);
    // 0 → 1 → 0 → …: virtio-queue stops after the queue's size in
    // descriptors, so the request is bounded and gets an answer.
    f.driver
        .set_descriptor(0, 0, h.addr, h.len, VRING_DESC_F_NEXT as u16, 1);
    f.driver.set_descriptor(
        0,
        1,
        status.addr,
        1,
        (VRING_DESC_F_NEXT | VRING_DESC_F_WRITE) as u16,
        0,
    );
    f.driver.publish(0, 0);
    f.block.handle_queue(0);
    let used = f.driver.used(0);
    assert_eq!(used.len(), 1);
    assert!(used[0].1 <= QUEUE_SIZE as u32, "{used:?}");
}

#[test]
fn restore_refuses_another_disk() {
    let mem = memory();
    let mut f = fixture(&mem, false);
    let saved = VirtioDevice::save(&f.block);
    assert!(VirtioDevice::restore(&mut f.block, &saved).is_ok());
    let DeviceState::Block(state) = saved else {
        panic!("{saved:?}")
    };
    let bigger = BlockState {
        capacity_bytes: DISK_BYTES * 2,
        ..state.clone()
    };
    assert_eq!(
        Persist::restore(&mut f.block, &bigger),
        Err(BlockRestoreError::Capacity {
            disk: "disk0".into(),
            now: DISK_BYTES,
            saved: DISK_BYTES * 2
        })
    );
    let read_only = BlockState {
        read_only: true,
        ..state
    };
    assert!(matches!(
        Persist::restore(&mut f.block, &read_only),
        Err(BlockRestoreError::ReadOnly {
            now: false,
            saved: true,
            ..
        })
    ));
}

#[test]
fn an_avail_index_too_far_ahead_breaks_the_device_instead_of_spinning() {
    within_a_minute(|| {
        let mem = memory();
        let mut f = fixture(&mem, false);
        let data = f.driver.writable(512);
        assert_eq!(f.request(VIRTIO_BLK_T_IN, 0, data).0, OK);
        // More entries "available" than the queue has: no honest driver
        // does this, and virtio-queue refuses to walk such a ring.
        let ahead = f.driver.avail_idx(0).wrapping_add(QUEUE_SIZE + 1);
        f.driver.set_avail_idx(0, ahead);
        f.block.handle_queue(0);
        assert!(f.interrupt.is_broken(), "the device is marked broken");
        assert_ne!(
            f.interrupt.status() & VIRTIO_MMIO_INT_CONFIG,
            0,
            "the driver is told (configuration change interrupt)"
        );
        // And serves nothing more, however often it is kicked.
        let used = f.driver.used_idx(0);
        f.driver.set_avail_idx(0, used.wrapping_add(1));
        f.block.handle_queue(0);
        assert_eq!(f.driver.used_idx(0), used);
    });
}

#[test]
fn a_chain_head_outside_the_descriptor_table_breaks_the_device() {
    within_a_minute(|| {
        let mem = memory();
        let mut f = fixture(&mem, false);
        let used = f.driver.used_idx(0);
        // A head index no descriptor has: virtio-queue hands it out as it
        // is, and a device that walked it would read past the table.
        f.driver.publish(0, QUEUE_SIZE + 5);
        f.block.handle_queue(0);
        assert!(f.interrupt.is_broken(), "the device is marked broken");
        assert_eq!(f.driver.used_idx(0), used, "nothing was served");
    });
}

#[test]
fn a_disk_that_is_not_a_regular_file_is_refused_without_blocking() {
    within_a_minute(|| {
        let dir = tempfile::tempdir().unwrap();
        let fifo = dir.path().join("fifo");
        let c = std::ffi::CString::new(fifo.as_os_str().as_encoded_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(Block::open(&fifo, true, "disk0").is_err());
        assert!(Block::open(std::path::Path::new("/dev/zero"), true, "disk0").is_err());
        assert!(Block::open(dir.path(), true, "disk0").is_err());
    });
}

#[test]
fn a_writable_disk_belongs_to_one_device_at_a_time() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("disk");
    std::fs::write(&path, pattern(0, DISK_BYTES as usize)).unwrap();
    // Many readers share a disk.
    let reader = Block::open(&path, true, "disk0").unwrap();
    let second_reader = Block::open(&path, true, "disk0").unwrap();
    let err = Block::open(&path, false, "disk0").err().unwrap();
    assert_eq!(err.kind(), std::io::ErrorKind::ResourceBusy, "{err}");
    drop((reader, second_reader));
    // A writer has it alone: no second writer, no reader.
    let writer = Block::open(&path, false, "disk0").unwrap();
    let err = Block::open(&path, false, "disk0").err().unwrap();
    assert!(err.to_string().contains("in use by another VM"), "{err}");
    assert!(Block::open(&path, true, "disk0").is_err());
    // The lock ends with the device.
    drop(writer);
    assert!(Block::open(&path, false, "disk0").is_ok());
}
