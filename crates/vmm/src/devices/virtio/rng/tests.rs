//! virtio-rng against a mock driver.

use super::*;
use crate::devices::virtio::test_utils::{memory, Buf, MockDriver, MEM_SIZE};
use vm_memory::GuestMemoryMmap;

fn active(mem: &GuestMemoryMmap) -> (MockDriver<'_>, Rng) {
    let driver = MockDriver::new(mem, &[QUEUE_SIZE]);
    let mut rng = Rng::default();
    rng.activate(driver.activation().0).unwrap();
    (driver, rng)
}

#[test]
fn fills_device_writable_buffers_with_random_bytes() {
    let mem = memory();
    let (mut driver, mut rng) = active(&mem);
    let (a, b) = (driver.writable(64), driver.writable(64));
    driver.add_chain(0, &[a]);
    driver.add_chain(0, &[b]);
    rng.handle_queue(0);
    assert_eq!(driver.used(0), vec![(0, 64), (1, 64)]);
    let (a, b) = (driver.read(a.addr, 64), driver.read(b.addr, 64));
    // 512 random bits: all zero, or twice the same, never happens.
    assert_ne!(a, vec![0; 64]);
    assert_ne!(a, b);
}

#[test]
fn a_request_gets_at_most_its_share() {
    let mem = memory();
    let (mut driver, mut rng) = active(&mem);
    let big = driver.writable(MAX_PER_REQUEST as u32 + 4096);
    driver.add_chain(0, &[big]);
    rng.handle_queue(0);
    assert_eq!(driver.used(0), vec![(0, MAX_PER_REQUEST as u32)]);
}

#[test]
fn buffers_it_may_not_write_or_outside_memory_get_nothing() {
    let mem = memory();
    let (mut driver, mut rng) = active(&mem);
    let readable = driver.readable(&[7; 32]);
    driver.add_chain(0, &[readable]);
    driver.add_chain(0, &[Buf::write(MEM_SIZE - 16, 64)]);
    rng.handle_queue(0);
    assert_eq!(driver.used(0), vec![(0, 0), (1, 0)]);
    assert_eq!(driver.read(readable.addr, 32), vec![7; 32]);
}

#[test]
fn saves_and_restores_as_nothing() {
    let mut rng = Rng::default();
    assert_eq!(VirtioDevice::save(&rng), DeviceState::Rng(RngState));
    assert!(VirtioDevice::restore(&mut rng, &DeviceState::Rng(RngState)).is_ok());
    let vsock = DeviceState::Vsock(crate::devices::virtio::vsock::VsockState { guest_cid: 3 });
    let err = VirtioDevice::restore(&mut rng, &vsock).unwrap_err();
    assert!(
        matches!(
            err,
            DeviceRestoreError::WrongKind {
                device: "rng",
                saved: "vsock"
            }
        ),
        "{err}"
    );
}
