//! Guest memory in a snapshot: one file holding every RAM region back to
//! back, written sparse (an all-zero page is a hole and takes no disk), and
//! mapped back `MAP_PRIVATE` on restore, so any number of VMs restored from
//! one file share its clean pages through the page cache and each gets its
//! own copy of a page only when it writes to it.

use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io;
use std::os::unix::fs::FileExt;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{
    FileOffset, GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion, GuestRegionMmap,
    MemoryRegionAddress,
};

const PAGE: usize = 4096;

/// Where one RAM region lives in the guest and in the memory file.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RegionLayout {
    /// Guest physical address of the region's first byte.
    pub guest_addr: u64,
    /// Length in bytes; a whole number of pages.
    pub len: u64,
    /// Offset of the region's first byte in the memory file; page-aligned.
    pub file_offset: u64,
}

/// What writing the memory file did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MemoryWritten {
    /// Size of the file (all of guest RAM).
    pub total_bytes: u64,
    /// Bytes of non-zero pages actually written (the rest are holes).
    pub data_bytes: u64,
}

/// Guest memory could not be written to, or mapped back from, the memory
/// file.
#[derive(Debug, thiserror::Error)]
pub enum MemoryFileError {
    /// Writing (or sizing) the memory file failed.
    #[error("writing the memory file: {0}")]
    Write(io::Error),
    /// The memory file is shorter than the layout: mapping it would leave
    /// guest pages that fault with SIGBUS.
    #[error("the memory file is {found} bytes; the snapshot's layout needs {needed} (truncated?)")]
    TooShort {
        /// Size of the memory file in bytes.
        found: u64,
        /// Where the layout's last region ends in the file.
        needed: u64,
    },
    /// The layout is unusable: a region not page-aligned, empty, overflowing
    /// or overlapping another.
    #[error("the snapshot's memory layout is invalid: {0}")]
    Layout(String),
    /// The host would not map the file (or report its size).
    #[error("mapping the memory file: {0}")]
    Map(String),
}

/// Writes every region of `mem` into `file` (which must be empty) and
/// returns the layout to map it back with. Nobody may change guest memory
/// meanwhile (vCPUs paused, device threads held).
pub fn write_memory(
    mem: &GuestMemoryMmap,
    file: &File,
) -> Result<(Vec<RegionLayout>, MemoryWritten), MemoryFileError> {
    let mut layout = Vec::new();
    let mut written = MemoryWritten::default();
    let mut offset = 0u64;
    for region in mem.iter() {
        let len = region.len();
        let host = region
            .get_host_address(MemoryRegionAddress(0))
            .map_err(|e| MemoryFileError::Layout(e.to_string()))?;
        // SAFETY: `host..host+len` is this region's live mapping, and the
        // caller guarantees nothing writes to it while we read.
        let bytes = unsafe { std::slice::from_raw_parts(host as *const u8, len as usize) };
        written.data_bytes += write_sparse(file, bytes, offset).map_err(MemoryFileError::Write)?;
        layout.push(RegionLayout {
            guest_addr: region.start_addr().0,
            len,
            file_offset: offset,
        });
        offset += len;
    }
    // The holes at the end exist only once the file has its full length.
    file.set_len(offset).map_err(MemoryFileError::Write)?;
    written.total_bytes = offset;
    Ok((layout, written))
}

/// Writes the non-zero pages of `bytes` at `base`, coalescing runs into one
/// `pwrite` each; returns the bytes written.
fn write_sparse(file: &File, bytes: &[u8], base: u64) -> io::Result<u64> {
    let mut data = 0u64;
    let mut run_start: Option<usize> = None;
    let pages = bytes.len().div_ceil(PAGE);
    for page in 0..=pages {
        let start = page * PAGE;
        let nonzero = page < pages && !is_zero(&bytes[start..(start + PAGE).min(bytes.len())]);
        match (nonzero, run_start) {
            (true, None) => run_start = Some(start),
            (false, Some(from)) => {
                let to = start.min(bytes.len());
                file.write_all_at(&bytes[from..to], base + from as u64)?;
                data += (to - from) as u64;
                run_start = None;
            }
            _ => {}
        }
    }
    Ok(data)
}

fn is_zero(page: &[u8]) -> bool {
    // Word-wise: the compiler vectorizes this; a byte loop is several times slower.
    // SAFETY: every bit pattern is a valid u64; align_to handles alignment.
    let (head, words, tail) = unsafe { page.align_to::<u64>() };
    head.iter().all(|&b| b == 0) && words.iter().all(|&w| w == 0) && tail.iter().all(|&b| b == 0)
}

/// Maps `file` copy-on-write at the guest addresses in `layout`.
pub fn map_memory(
    file: &File,
    layout: &[RegionLayout],
) -> Result<GuestMemoryMmap, MemoryFileError> {
    let found = file
        .metadata()
        .map_err(|e| MemoryFileError::Map(e.to_string()))?
        .len();
    let mut regions = Vec::with_capacity(layout.len());
    for r in layout {
        let end = r.file_offset.checked_add(r.len).ok_or_else(|| {
            MemoryFileError::Layout(format!("region at {:#x} overflows", r.guest_addr))
        })?;
        if r.len == 0 || r.len % PAGE as u64 != 0 || r.file_offset % PAGE as u64 != 0 {
            return Err(MemoryFileError::Layout(format!(
                "region at {:#x}: length {:#x} / offset {:#x} not page-aligned",
                r.guest_addr, r.len, r.file_offset
            )));
        }
        if end > found {
            return Err(MemoryFileError::TooShort { found, needed: end });
        }
        let fd = file
            .try_clone()
            .map_err(|e| MemoryFileError::Map(e.to_string()))?;
        let mapping = MmapRegionBuilder::new(r.len as usize)
            .with_file_offset(FileOffset::new(fd, r.file_offset))
            .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
            .with_mmap_flags(libc::MAP_PRIVATE | libc::MAP_NORESERVE)
            .build()
            .map_err(|e| MemoryFileError::Map(e.to_string()))?;
        let region =
            GuestRegionMmap::new(mapping, GuestAddress(r.guest_addr)).ok_or_else(|| {
                MemoryFileError::Layout(format!(
                    "region at {:#x} wraps the address space",
                    r.guest_addr
                ))
            })?;
        regions.push(region);
    }
    GuestMemoryMmap::from_regions(regions).map_err(|e| MemoryFileError::Layout(e.to_string()))
}

/// How long the background mapping of the stored pages waits before it
/// starts. A restore maps its hot pages (the first requests' working set)
/// itself; running beside those first requests, on a two-core host, the
/// background work slowed them by about 5 ms in the lab, even at idle
/// priority (it contends for the same page-table locks).
const BACKGROUND_DELAY: std::time::Duration = std::time::Duration::from_millis(250);

/// Maps the snapshot's stored pages into this process ahead of the guest,
/// on a thread of its own, from [`BACKGROUND_DELAY`] after the call:
/// `MADV_POPULATE_READ` over the data extents of the file (holes are
/// skipped, so only what the snapshot stored is read). The guest's later
/// first touch of a page then finds the host mapping in place instead of
/// faulting through the host kernel while its vCPU waits. Pages stay
/// shared, copy-on-write, through the page cache. Best effort, at idle
/// priority: a kernel without `MADV_POPULATE_READ` (before 5.14) skips it.
pub fn prefault_in_background(file: &File, mem: &GuestMemoryMmap, layout: &[RegionLayout]) {
    let Ok(file) = file.try_clone() else { return };
    // The thread's clone of `mem` keeps the mappings alive while it works.
    let mem = mem.clone();
    let layout = layout.to_vec();
    let spawned = std::thread::Builder::new()
        .name("prefault".into())
        .spawn(move || {
            std::thread::sleep(BACKGROUND_DELAY);
            // Only on otherwise idle CPU time: the guest's work comes first.
            let idle = libc::sched_param { sched_priority: 0 };
            // SAFETY: changes this thread's own scheduling policy; the
            // struct is read only during the call.
            if unsafe { libc::sched_setscheduler(0, libc::SCHED_IDLE, &idle) } != 0 {
                tracing::debug!("prefault: SCHED_IDLE: {}", std::io::Error::last_os_error());
            }
            for r in &layout {
                let Ok(host) = mem.get_host_address(GuestAddress(r.guest_addr)) else {
                    continue;
                };
                let extents = data_extents(&file, r.file_offset, r.file_offset + r.len);
                for (start, end) in extents
                    .into_iter()
                    .flat_map(|(start, len)| chunks(start, start + len, POPULATE_CHUNK))
                {
                    let addr = host.wrapping_add((start - r.file_offset) as usize);
                    // SAFETY: the range lies inside this region's live
                    // mapping (held by `mem`); populating reads nothing
                    // into our memory and changes no contents.
                    let done = unsafe {
                        libc::madvise(
                            addr.cast(),
                            (end - start) as usize,
                            libc::MADV_POPULATE_READ,
                        )
                    };
                    if done != 0 {
                        tracing::debug!("prefault: {}", std::io::Error::last_os_error());
                        return;
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::debug!("prefault: no thread ({e})");
    }
}

/// Bytes populated per call. The call holds the process's memory-map lock
/// (for reading); a thread of idle priority may sit on it a long while
/// when the host is busy, and a thread waiting to map memory (starting a
/// thread, a large allocation) would make every fault behind it wait too.
/// In small pieces that wait stays short.
const POPULATE_CHUNK: u64 = 256 << 10;

/// `start..end` cut into pieces of at most `chunk` bytes.
fn chunks(start: u64, end: u64, chunk: u64) -> impl Iterator<Item = (u64, u64)> {
    (start..end)
        .step_by(chunk as usize)
        .map(move |from| (from, (from + chunk).min(end)))
}

/// The (offset, length) ranges of `file` in `start..end` that hold data.
fn data_extents(file: &File, start: u64, end: u64) -> Vec<(u64, u64)> {
    use std::os::fd::AsRawFd;
    let fd = file.as_raw_fd();
    let mut out = Vec::new();
    let mut pos = start;
    while pos < end {
        // SAFETY: lseek on an fd we own; no memory is passed.
        let data = unsafe { libc::lseek(fd, pos as libc::off_t, libc::SEEK_DATA) };
        if data < 0 || data as u64 >= end {
            break;
        }
        // SAFETY: as above.
        let hole = unsafe { libc::lseek(fd, data, libc::SEEK_HOLE) };
        let hole = if hole < 0 {
            end
        } else {
            (hole as u64).min(end)
        };
        out.push((data as u64, hole - data as u64));
        pos = hole;
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use vm_memory::Bytes;

    #[test]
    fn populating_goes_in_pieces_that_cover_the_range_exactly() {
        let k = 1024;
        let pieces: Vec<_> = chunks(4 * k, 600 * k, 256 * k).collect();
        assert_eq!(
            pieces,
            vec![(4 * k, 260 * k), (260 * k, 516 * k), (516 * k, 600 * k)]
        );
        assert_eq!(chunks(8 * k, 8 * k, 256 * k).count(), 0);
    }

    /// A new read-write file in a temporary directory (kept alive with it).
    fn scratch_file() -> (tempfile::TempDir, File) {
        let dir = tempfile::tempdir().unwrap();
        let file = File::options()
            .read(true)
            .write(true)
            .create_new(true)
            .open(dir.path().join("mem"))
            .unwrap();
        (dir, file)
    }

    #[test]
    fn zero_pages_become_holes_and_data_comes_back() {
        let mem = GuestMemoryMmap::<()>::from_ranges(&[(GuestAddress(0), 8 << 20)]).unwrap();
        mem.write_slice(b"hello", GuestAddress(0x1000)).unwrap();
        mem.write_slice(&[7u8; 3 * PAGE], GuestAddress(0x40_0000))
            .unwrap();
        let (_dir, file) = scratch_file();
        let (layout, w) = write_memory(&mem, &file).unwrap();
        assert_eq!(w.total_bytes, 8 << 20);
        assert_eq!(w.data_bytes, 4 * PAGE as u64);
        let allocated = file.metadata().unwrap().blocks() * 512;
        assert!(allocated < 1 << 20, "sparse: {allocated} bytes allocated");

        let restored = map_memory(&file, &layout).unwrap();
        let mut buf = [0u8; 5];
        restored.read_slice(&mut buf, GuestAddress(0x1000)).unwrap();
        assert_eq!(&buf, b"hello");
        // Copy-on-write: a write to the mapping never reaches the file.
        restored
            .write_slice(b"HELLO", GuestAddress(0x1000))
            .unwrap();
        let mut on_disk = [0u8; 5];
        file.read_exact_at(&mut on_disk, 0x1000).unwrap();
        assert_eq!(&on_disk, b"hello");
    }

    #[test]
    fn data_extents_skip_holes() {
        let (_dir, file) = scratch_file();
        file.set_len(64 * PAGE as u64).unwrap();
        file.write_all_at(&[1u8; PAGE], 8 * PAGE as u64).unwrap();
        file.write_all_at(&[2u8; 2 * PAGE], 40 * PAGE as u64)
            .unwrap();
        let extents = data_extents(&file, 0, 64 * PAGE as u64);
        // Filesystems may round extents up, never leave data out.
        let covers = |off: u64| extents.iter().any(|&(s, l)| s <= off && off < s + l);
        assert!(covers(8 * PAGE as u64) && covers(41 * PAGE as u64));
        let total: u64 = extents.iter().map(|e| e.1).sum();
        assert!(total < 64 * PAGE as u64, "holes were skipped: {extents:?}");
    }

    #[test]
    fn a_truncated_file_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create(dir.path().join("mem")).unwrap();
        file.set_len(4096).unwrap();
        let layout = [RegionLayout {
            guest_addr: 0,
            len: 1 << 20,
            file_offset: 0,
        }];
        assert!(matches!(
            map_memory(&file, &layout),
            Err(MemoryFileError::TooShort { .. })
        ));
    }
}
