//! A hostile driver's virtio-vsock queues: packets (headers, payloads,
//! descriptor chains) on the TX queue and RX buffers of any shape, from
//! the fuzzer. Whatever the input, the device must answer, reset, stop
//! reading or mark itself broken: no panic, no hang, bounded memory.

#![no_main]

use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use supermachine_fuzz::{lay_ring, Input};
use supermachine_vmm::devices::virtio::test_utils::{memory, MockDriver};
use supermachine_vmm::devices::virtio::vsock::Vsock;
use supermachine_vmm::devices::virtio::VirtioDevice;

const QUEUE_SIZE: u16 = 256;
const RX: usize = 0;
const TX: usize = 1;
const EVENT: usize = 2;

/// The muxer socket's directory (each run binds it anew).
fn socket_dir() -> &'static std::path::Path {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    DIR.get_or_init(|| tempfile::tempdir().expect("temp dir"))
        .path()
}

/// A packet header from the guest, mostly well addressed so the muxer's
/// logic is reached, with fuzzer-chosen ports, op, length and credit.
fn header(input: &mut Input) -> Vec<u8> {
    let mut h = Vec::with_capacity(44);
    let well_addressed = input.u8() & 7 != 0;
    let (src, dst) = if well_addressed {
        (3u64, 2u64)
    } else {
        (input.u64(), input.u64())
    };
    h.extend(src.to_le_bytes());
    h.extend(dst.to_le_bytes());
    h.extend(input.u32().to_le_bytes()); // src_port
    h.extend((1024 + u32::from(input.u8() % 4)).to_le_bytes()); // dst_port
    h.extend(input.u32().to_le_bytes()); // len
    h.extend(1u16.to_le_bytes()); // type: stream
    h.extend(u16::from(input.u8() % 9).to_le_bytes()); // op
    h.extend(input.u32().to_le_bytes()); // flags
    h.extend(input.u32().to_le_bytes()); // buf_alloc
    h.extend(input.u32().to_le_bytes()); // fwd_cnt
    h
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let mem = memory();
    let mut driver = MockDriver::new(&mem, &[QUEUE_SIZE; 3]);
    let mut vsock = Vsock::new(3, &socket_dir().join("vsock.sock")).expect("vsock");
    let (activation, _interrupt, _poller) = driver.activation();
    vsock.activate(activation).expect("activate");
    let mut rounds = 0;
    while !input.is_empty() && rounds < 8 {
        rounds += 1;
        let queue = match input.u8() % 4 {
            0 => RX,
            3 => EVENT,
            _ => TX,
        };
        let packet = header(&mut input);
        let payload = usize::from(input.u8());
        lay_ring(&mut driver, queue, QUEUE_SIZE, &packet, payload, &mut input);
        vsock.handle_queue(queue);
    }
});
