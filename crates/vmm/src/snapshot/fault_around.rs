//! Switching off the host kernel's fault-around over guest memory while a
//! restore's hot pages are recorded, so the recording is the pages the
//! guest touched and not their neighbours too.
//!
//! On a read fault in a file mapping the kernel also maps up to 16
//! neighbouring pages that happen to be in the page cache. A recording read
//! from the page table ([`super::hot_pages::record`]) then holds about
//! three times the pages the guest used, and every later restore maps all
//! of them ahead, at a few microseconds a page. The kernel skips
//! fault-around in a range registered with userfaultfd for write
//! protection (it would install pages without their protection markers).
//! Registered in the asynchronous mode (`UFFD_FEATURE_WP_ASYNC`, Linux
//! 6.7+) with nothing protected, the registration changes nothing else:
//! no fault is ever delivered, writes go through as before, and a
//! user-mode-only userfaultfd needs no privilege.
//!
//! Elsewhere (an older kernel, userfaultfd compiled out or forbidden) the
//! recording includes the neighbours, as it did: later restores are a
//! little slower, never wrong.
//!
//! No crate covers this: the `userfaultfd` crate knows the features of
//! Linux 5.13 and handles faults, which we never do; the two ioctls below
//! are all it takes.

use std::io;
use std::os::fd::{FromRawFd, OwnedFd};
use vm_memory::{GuestMemory, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};

/// `<linux/userfaultfd.h>`.
const UFFD_API: u64 = 0xaa;
const UFFD_USER_MODE_ONLY: libc::c_int = 1;
const UFFD_FEATURE_WP_ASYNC: u64 = 1 << 15;
const UFFDIO_REGISTER_MODE_WP: u64 = 1 << 1;

#[repr(C)]
#[derive(Default)]
struct UffdioApi {
    api: u64,
    features: u64,
    ioctls: u64,
}

#[repr(C)]
#[derive(Default)]
struct UffdioRegister {
    start: u64,
    len: u64,
    mode: u64,
    ioctls: u64,
}

/// The ioctl numbers, in a module of their own: the macro makes their
/// functions `pub`, and they are no API of this crate.
mod ioctls {
    use super::{UffdioApi, UffdioRegister};
    vmm_sys_util::ioctl_iowr_nr!(UFFDIO_API, 0xaa, 0x3f, UffdioApi);
    vmm_sys_util::ioctl_iowr_nr!(UFFDIO_REGISTER, 0xaa, 0x00, UffdioRegister);
}
use ioctls::{UFFDIO_API, UFFDIO_REGISTER};

/// Fault-around is off over the guest memory it was made for until this is
/// dropped (closing the userfaultfd ends the registration). Ending it has
/// the kernel walk the range to clear write-protect bits, which can also
/// drop KVM's mappings of it: the recording VM then faults in again what
/// it touches next, once per snapshot.
#[derive(Debug)]
pub struct FaultAroundOff {
    _uffd: OwnedFd,
}

impl FaultAroundOff {
    /// Turns fault-around off over every region of `mem`. An error means
    /// this host cannot (see the module notes); nothing was changed.
    pub fn over(mem: &GuestMemoryMmap) -> io::Result<FaultAroundOff> {
        let flags = libc::O_CLOEXEC | libc::O_NONBLOCK | UFFD_USER_MODE_ONLY;
        // SAFETY: a plain system call with integer flags.
        let fd = unsafe { libc::syscall(libc::SYS_userfaultfd, flags) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: the kernel just gave us this descriptor; no one else owns it.
        let uffd = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
        let mut api = UffdioApi {
            api: UFFD_API,
            features: UFFD_FEATURE_WP_ASYNC,
            ..Default::default()
        };
        // SAFETY: the ioctl reads and writes exactly a `uffdio_api`.
        if unsafe { vmm_sys_util::ioctl::ioctl_with_mut_ref(&uffd, UFFDIO_API(), &mut api) } < 0 {
            return Err(io::Error::last_os_error());
        }
        for region in mem.iter() {
            let host = region
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|e| io::Error::other(e.to_string()))?;
            let mut register = UffdioRegister {
                start: host as u64,
                len: region.len(),
                mode: UFFDIO_REGISTER_MODE_WP,
                ..Default::default()
            };
            // SAFETY: the ioctl reads and writes exactly a
            // `uffdio_register`; the range is a live mapping of ours, and
            // registering it changes no contents.
            let done = unsafe {
                vmm_sys_util::ioctl::ioctl_with_mut_ref(&uffd, UFFDIO_REGISTER(), &mut register)
            };
            if done < 0 {
                // Dropping `uffd` undoes the regions already registered.
                return Err(io::Error::last_os_error());
            }
        }
        Ok(FaultAroundOff { _uffd: uffd })
    }
}
