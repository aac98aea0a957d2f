//! virtio-rng against a mock driver.

use super::*;
use crate::devices::virtio::test_utils::{memory, within_a_minute, Buf, MockDriver, MEM_SIZE};
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

/// Every device drains through the same loop; rng must stop on a broken
/// ring like block and vsock do, not spin on it.
#[test]
fn a_broken_ring_breaks_the_device_instead_of_spinning() {
    within_a_minute(|| {
        let mem = memory();
        for how in ["avail index too far ahead", "head outside the table"] {
            let mut driver = MockDriver::new(&mem, &[QUEUE_SIZE]);
            let (activation, interrupt, _) = driver.activation();
            let mut rng = Rng::default();
            rng.activate(activation).unwrap();
            let buf = driver.writable(16);
            driver.add_chain(0, &[buf]);
            rng.handle_queue(0);
            assert_eq!(driver.used(0), vec![(0, 16)], "{how}: served before");
            if how == "head outside the table" {
                driver.publish(0, QUEUE_SIZE + 1);
            } else {
                let ahead = driver.avail_idx(0).wrapping_add(QUEUE_SIZE + 1);
                driver.set_avail_idx(0, ahead);
            }
            rng.handle_queue(0);
            assert!(interrupt.is_broken(), "{how}: the device is marked broken");
            // And serves nothing more once broken, however often kicked.
            let used = driver.used_idx(0);
            let buf = driver.writable(16);
            driver.add_chain(0, &[buf]);
            rng.handle_queue(0);
            assert_eq!(driver.used_idx(0), used, "{how}: nothing served after");
        }
    });
}
