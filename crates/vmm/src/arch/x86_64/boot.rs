//! Loading a Linux kernel for the 64-bit boot protocol: the vmlinux ELF at
//! its physical load address, the initramfs at the top of low RAM, the
//! command line, and the zero page with an e820 map.

use super::layout::*;
use linux_loader::cmdline::Cmdline;
use linux_loader::loader::bootparam::{boot_e820_entry, boot_params};
use linux_loader::loader::elf::Elf;
use linux_loader::loader::{load_cmdline, KernelLoader};
use std::fs::File;
use std::path::Path;
use vm_memory::{Address, Bytes, GuestAddress, GuestMemory, GuestMemoryMmap, ReadVolatile};

const E820_RAM: u32 = 1;
const E820_RESERVED: u32 = 2;
const KERNEL_BOOT_FLAG_MAGIC: u16 = 0xaa55;
const KERNEL_HDR_MAGIC: u32 = 0x5372_6448; // "HdrS"
const KERNEL_LOADER_OTHER: u8 = 0xff;
const KERNEL_MIN_ALIGNMENT: u32 = 0x0100_0000;
const PAGE_SIZE: u64 = 4096;

/// The kernel, initramfs or command line could not be put in guest memory.
#[derive(Debug, thiserror::Error)]
pub enum BootError {
    /// The kernel file could not be opened.
    #[error("cannot open kernel {path}: {source}")]
    OpenKernel {
        /// The kernel's path, for the message.
        path: String,
        /// The system's error.
        source: std::io::Error,
    },
    /// The kernel is not a vmlinux ELF for x86_64 (a bzImage, say), or does
    /// not fit in guest memory.
    #[error("cannot load kernel {path} (expected an uncompressed x86_64 vmlinux ELF): {source}")]
    LoadKernel {
        /// The kernel's path, for the message.
        path: String,
        /// The loader's error.
        source: linux_loader::loader::Error,
    },
    /// The initramfs could not be opened or read.
    #[error("cannot open initramfs {path}: {source}")]
    OpenInitrd {
        /// The initramfs's path, for the message.
        path: String,
        /// The system's error.
        source: std::io::Error,
    },
    /// The initramfs does not fit between the kernel's end and the top of low
    /// RAM.
    #[error("initramfs of {size} bytes does not fit in guest memory above the kernel; give the VM more memory")]
    InitrdTooLarge {
        /// The initramfs's size in bytes.
        size: u64,
    },
    /// The command line could not be written into guest memory;
    /// linux-loader's error, as text.
    #[error("kernel command line: {0}")]
    Cmdline(String),
    /// Writing to guest memory failed (an address outside it).
    #[error("writing boot data into guest memory: {0}")]
    Memory(#[from] vm_memory::GuestMemoryError),
}

/// Where the kernel was put; the vCPU starts at `entry`.
pub struct LoadedKernel {
    /// Guest physical address of the kernel's 64-bit entry point.
    pub entry: u64,
}

/// Loads kernel, initramfs and command line into `mem` and writes the zero page.
pub fn load(
    mem: &GuestMemoryMmap,
    kernel: &Path,
    initrd: Option<&Path>,
    cmdline: &Cmdline,
) -> Result<LoadedKernel, BootError> {
    let display = |p: &Path| p.display().to_string();
    let mut kernel_file = File::open(kernel).map_err(|source| BootError::OpenKernel {
        path: display(kernel),
        source,
    })?;
    let loaded = Elf::load(
        mem,
        None,
        &mut kernel_file,
        Some(GuestAddress(HIGH_MEMORY_START)),
    )
    .map_err(|source| BootError::LoadKernel {
        path: display(kernel),
        source,
    })?;

    let mut params = boot_params::default();
    params.hdr.type_of_loader = KERNEL_LOADER_OTHER;
    params.hdr.boot_flag = KERNEL_BOOT_FLAG_MAGIC;
    params.hdr.header = KERNEL_HDR_MAGIC;
    params.hdr.kernel_alignment = KERNEL_MIN_ALIGNMENT;

    let cmdline_len = cmdline
        .as_cstring()
        .map_err(|e| BootError::Cmdline(e.to_string()))?
        .as_bytes()
        .len();
    load_cmdline(mem, GuestAddress(CMDLINE_ADDR), cmdline)
        .map_err(|e| BootError::Cmdline(e.to_string()))?;
    params.hdr.cmd_line_ptr = CMDLINE_ADDR as u32;
    params.hdr.cmdline_size = cmdline_len as u32 + 1;

    if let Some(initrd) = initrd {
        let (addr, size) = load_initrd(mem, initrd, loaded.kernel_end)?;
        params.hdr.ramdisk_image = addr as u32;
        params.hdr.ramdisk_size = size as u32;
    }

    let mut e820 = vec![
        (0, EBDA_START, E820_RAM),
        (EBDA_START, 0xa0000 - EBDA_START, E820_RESERVED),
    ];
    let last = mem.last_addr().raw_value() + 1;
    if last <= MMIO_GAP_START {
        e820.push((HIGH_MEMORY_START, last - HIGH_MEMORY_START, E820_RAM));
    } else {
        e820.push((
            HIGH_MEMORY_START,
            MMIO_GAP_START - HIGH_MEMORY_START,
            E820_RAM,
        ));
        e820.push((MMIO_GAP_END, last - MMIO_GAP_END, E820_RAM));
    }
    for (i, (addr, size, type_)) in e820.iter().enumerate() {
        params.e820_table[i] = boot_e820_entry {
            addr: *addr,
            size: *size,
            type_: *type_,
        };
    }
    params.e820_entries = e820.len() as u8;
    mem.write_obj(params, GuestAddress(ZERO_PAGE_ADDR))?;
    Ok(LoadedKernel {
        entry: loaded.kernel_load.raw_value(),
    })
}

/// Puts the initramfs at the top of low RAM (below the MMIO hole), page aligned.
fn load_initrd(
    mem: &GuestMemoryMmap,
    path: &Path,
    kernel_end: u64,
) -> Result<(u64, u64), BootError> {
    let open_err = |source| BootError::OpenInitrd {
        path: path.display().to_string(),
        source,
    };
    let mut file = File::open(path).map_err(open_err)?;
    let size = file.metadata().map_err(open_err)?.len();
    let low_end = (mem.last_addr().raw_value() + 1).min(MMIO_GAP_START);
    let addr = low_end.checked_sub(size).map(|a| a & !(PAGE_SIZE - 1));
    let addr = match addr {
        Some(a) if a >= kernel_end => a,
        _ => return Err(BootError::InitrdTooLarge { size }),
    };
    let slice = mem.get_slice(GuestAddress(addr), size as usize)?;
    let mut slice = slice;
    file.read_exact_volatile(&mut slice)
        .map_err(|e| BootError::OpenInitrd {
            path: path.display().to_string(),
            source: std::io::Error::other(e.to_string()),
        })?;
    Ok((addr, size))
}
