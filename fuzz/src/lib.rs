//! What the fuzz targets share: reading structured values off the fuzzer's
//! bytes, and laying a hostile driver's virtqueue out of them (through the
//! VMM's mock driver, `supermachine_vmm::devices::virtio::test_utils`).

use supermachine_vmm::devices::virtio::test_utils::{
    MockDriver, VRING_DESC_F_NEXT, VRING_DESC_F_WRITE,
};

/// The fuzzer's bytes, read front to back; reads past the end give zeros.
pub struct Input<'a>(pub &'a [u8]);

impl Input<'_> {
    pub fn bytes(&mut self, n: usize) -> &[u8] {
        let n = n.min(self.0.len());
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        head
    }
    pub fn u8(&mut self) -> u8 {
        self.bytes(1).first().copied().unwrap_or(0)
    }
    pub fn u16(&mut self) -> u16 {
        u16::from(self.u8()) | u16::from(self.u8()) << 8
    }
    pub fn u32(&mut self) -> u32 {
        u32::from(self.u16()) | u32::from(self.u16()) << 16
    }
    pub fn u64(&mut self) -> u64 {
        u64::from(self.u32()) | u64::from(self.u32()) << 32
    }
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

/// Bytes of guest data the descriptors mostly point into.
const DATA_BYTES: u32 = 16 * 1024;
const VRING_DESC_F_INDIRECT: u16 = 4;

/// Lays out a ring on `queue` (of `size` entries) as the input says:
/// descriptors (mostly into a guest data area, some anywhere; any flags,
/// any `next`: loops, indirect tables, chains of any length), the heads
/// made available, sometimes an available index of its own, and then the
/// guest data: `data` (a request header, say) followed by `data_bytes`
/// more bytes of the input. The structure comes first so that short
/// inputs already make chains.
pub fn lay_ring(
    driver: &mut MockDriver,
    queue: usize,
    size: u16,
    data: &[u8],
    data_bytes: usize,
    input: &mut Input,
) {
    let base = driver.alloc(DATA_BYTES);
    let descriptors = u16::from(input.u8() % 16) + 1;
    for index in 0..descriptors.min(size) {
        let kind = input.u8();
        let mut flags = 0u16;
        if kind & 1 != 0 {
            flags |= VRING_DESC_F_NEXT as u16;
        }
        if kind & 2 != 0 {
            flags |= VRING_DESC_F_WRITE as u16;
        }
        if kind & 4 != 0 {
            flags |= VRING_DESC_F_INDIRECT;
        }
        let addr = if kind & 8 != 0 {
            input.u64()
        } else {
            base + u64::from(input.u16() % (DATA_BYTES as u16 / 16)) * 16
        };
        let len = if kind & 16 != 0 {
            input.u32()
        } else {
            u32::from(input.u16() % 4096)
        };
        let next = if kind & 32 != 0 {
            input.u16()
        } else {
            u16::from(input.u8()) % descriptors
        };
        driver.set_descriptor(queue, index, addr, len, flags, next);
    }
    let heads = input.u8() % 8;
    for _ in 0..heads {
        let head = input.u8();
        let head = if head == 0xff {
            input.u16()
        } else {
            u16::from(head) % descriptors
        };
        driver.publish(queue, head);
    }
    if input.u8() == 0xa5 {
        driver.set_avail_idx(queue, input.u16());
    }
    let mut guest = data.to_vec();
    guest.extend_from_slice(input.bytes(data_bytes));
    guest.truncate(DATA_BYTES as usize);
    driver.write(base, &guest);
}
