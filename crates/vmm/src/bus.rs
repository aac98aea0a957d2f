//! Dispatch of port I/O and MMIO exits to the device that owns the address.

use std::sync::{Arc, Mutex};

/// A device reachable through guest port I/O or MMIO. `offset` is relative
/// to the start of the device's range.
pub trait BusDevice: Send {
    /// Fills `data` (1, 2, 4 or 8 bytes, as wide as the guest's access) from
    /// the register at `offset`. Runs on the vCPU thread that exited, so it
    /// must not block.
    fn read(&mut self, offset: u64, data: &mut [u8]);
    /// Takes the guest's write of `data` to the register at `offset`; runs on
    /// the vCPU thread, like [`read`](Self::read).
    fn write(&mut self, offset: u64, data: &[u8]);
}

/// A device as the buses hold it, shared with the VM (which keeps the
/// serial port and the virtio transports to snapshot them) and locked for
/// each access.
pub type SharedDevice = Arc<Mutex<dyn BusDevice>>;

/// Address ranges and the devices that own them: one bus for port I/O, one
/// for MMIO, each vCPU with its own clone.
#[derive(Default, Clone)]
pub struct Bus {
    ranges: Vec<(u64, u64, SharedDevice)>,
}

/// [`Bus::insert`] refused a range that overlaps one already taken.
#[derive(Debug, thiserror::Error)]
#[error("bus range {base:#x}+{len:#x} overlaps an existing device")]
pub struct Overlap {
    /// Start of the refused range.
    pub base: u64,
    /// Length of the refused range, in bytes.
    pub len: u64,
}

impl Bus {
    /// Gives `device` the `len` bytes from `base` on; its accesses arrive with
    /// offsets relative to `base`. Fails, changing nothing, if any byte is
    /// taken already.
    pub fn insert(&mut self, base: u64, len: u64, device: SharedDevice) -> Result<(), Overlap> {
        if self
            .ranges
            .iter()
            .any(|(b, l, _)| base < b + l && *b < base + len)
        {
            return Err(Overlap { base, len });
        }
        self.ranges.push((base, len, device));
        Ok(())
    }

    fn find(&self, addr: u64) -> Option<(u64, &SharedDevice)> {
        self.ranges
            .iter()
            .find(|(b, l, _)| addr >= *b && addr < b + l)
            .map(|(b, _, d)| (addr - b, d))
    }

    /// Reads from the device at `addr`; unclaimed addresses read as all ones,
    /// like an empty ISA bus. Returns whether a device claimed it.
    pub fn read(&self, addr: u64, data: &mut [u8]) -> bool {
        match self.find(addr) {
            Some((offset, dev)) => {
                lock(dev).read(offset, data);
                true
            }
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    /// Writes to the device at `addr`; unclaimed writes are dropped.
    pub fn write(&self, addr: u64, data: &[u8]) -> bool {
        match self.find(addr) {
            Some((offset, dev)) => {
                lock(dev).write(offset, data);
                true
            }
            None => false,
        }
    }
}

/// Locks a device even if a previous holder panicked: device state is plain
/// data, and a poisoned lock must not take the whole VM down with it.
pub fn lock<T: ?Sized>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Echo(u8);
    impl BusDevice for Echo {
        fn read(&mut self, offset: u64, data: &mut [u8]) {
            data.fill(self.0 + offset as u8);
        }
        fn write(&mut self, _offset: u64, data: &[u8]) {
            self.0 = data[0];
        }
    }

    #[test]
    fn dispatches_by_range_and_rejects_overlap() {
        let mut bus = Bus::default();
        bus.insert(0x10, 4, Arc::new(Mutex::new(Echo(1)))).unwrap();
        assert!(bus.insert(0x12, 4, Arc::new(Mutex::new(Echo(0)))).is_err());
        let mut b = [0u8; 1];
        assert!(bus.read(0x11, &mut b));
        assert_eq!(b[0], 2);
        assert!(bus.write(0x10, &[7]));
        bus.read(0x10, &mut b);
        assert_eq!(b[0], 7);
        assert!(!bus.read(0x20, &mut b));
        assert_eq!(b[0], 0xff);
    }
}
