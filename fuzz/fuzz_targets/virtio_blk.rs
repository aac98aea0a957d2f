//! A hostile driver's virtio-blk queue: request headers, descriptor
//! chains and ring indexes from the fuzzer, served against a small disk.
//! Whatever the input, the device must answer, refuse or mark itself
//! broken: no panic, no hang, no memory beyond its bounce buffer.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use supermachine_fuzz::{lay_ring, Input};
use supermachine_vmm::devices::virtio::block::{Block, Disk};
use supermachine_vmm::devices::virtio::test_utils::{memory, MockDriver};
use supermachine_vmm::devices::virtio::VirtioDevice;

const QUEUE_SIZE: u16 = 256;

/// One small disk for every run (a file per run would cost more than the
/// run); what a run writes to it stays for the next.
fn disk_file() -> &'static std::fs::File {
    static DISK: OnceLock<std::fs::File> = OnceLock::new();
    DISK.get_or_init(|| {
        let file = tempfile::tempfile().expect("disk file");
        file.set_len(64 * 1024).expect("disk size");
        file
    })
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let read_only = input.u8() & 1 == 1;
    let header = input.bytes(16).to_vec();
    let mem = memory();
    let mut driver = MockDriver::new(&mem, &[QUEUE_SIZE]);
    let disk = Disk::new(disk_file().try_clone().expect("dup"), read_only, "fuzz").expect("disk");
    let mut block = Block::new(disk);
    let (activation, _interrupt, _poller) = driver.activation();
    block.activate(activation).expect("activate");
    // The rest of the input is guest data: what a write request writes.
    lay_ring(&mut driver, 0, QUEUE_SIZE, &header, usize::MAX, &mut input);
    block.handle_queue(0);
    // A second kick over what is left (or a ring the device gave up on).
    block.handle_queue(0);
});
