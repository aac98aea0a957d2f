//! The pages a restored guest touches first, recorded once per snapshot
//! and mapped ahead of the guest on every later restore.
//!
//! A restored guest starts with no second-level (EPT/NPT) mappings: every
//! page it touches costs a KVM exit, and a page it writes costs a second
//! one when the copy-on-write happens. Resuming, handling the vsock reset,
//! the restore fixup and a first `exec` touch about a thousand pages, the
//! same ones every time. So the first restore of a snapshot runs without
//! prefetching anything, and when the host library says the copy has done
//! its first piece of work the worker reads its own page table
//! (`/proc/self/pagemap`) for guest memory: present pages are the ones
//! touched, present anonymous ones the ones written (copied from the
//! file). (Exactly the ones touched where [`super::fault_around`] can keep
//! the host kernel from mapping cached neighbours around each read fault;
//! elsewhere those neighbours too, about three times as many pages.)
//! That list is stored beside the snapshot ([`HOT_PAGES_FILE`]); one too
//! big to be a restore's working set is stored empty.
//!
//! Later restores then, before the vCPUs run: copy the written pages
//! (`MADV_POPULATE_WRITE`: the copy the guest's first write would have
//! made), map the others (`MADV_POPULATE_READ`), and where KVM has
//! `KVM_PRE_FAULT_MEMORY` (Linux 6.10+) build the guest's second-level
//! mappings for all of them, so the guest takes none of those exits.
//!
//! The list is only a hint: mapping a page ahead never changes its
//! contents, runs outside guest memory are skipped, a missing or damaged
//! file means a restore without it, and one copied in from another
//! snapshot costs only time.

use super::fault_around::FaultAroundOff;
use super::format::{decode, encode};
use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use vm_memory::{GuestAddress, GuestMemory, GuestMemoryMmap, GuestMemoryRegion};

pub use supermachine_protocol::worker_control::HOT_PAGES_FILE;

const PAGE: u64 = 4096;
/// pagemap entry bits (Documentation/admin-guide/mm/pagemap.rst).
const PM_PRESENT: u64 = 1 << 63;
const PM_FILE_OR_SHARED: u64 = 1 << 61;
/// A restore and a first exec touch a few thousand pages. A recording far
/// above that (a first exec that was a big job, a VM stopped after long
/// use) is not a restore's working set: mapping it ahead would slow every
/// later restore, and copying its written pages ahead would cost each copy
/// that much memory. Such a recording is stored as an empty list, which
/// means "map nothing ahead, record nothing more".
const MAX_TOUCHED: u64 = 1 << 15; // 128 MiB
const MAX_WRITTEN: u64 = 1 << 13; // 32 MiB
/// Pagemap entries read at a time (512 KiB).
const PAGEMAP_CHUNK: u64 = 1 << 16;

/// Consecutive guest pages.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct PageRun {
    /// Guest physical address of the first page.
    pub guest_addr: u64,
    /// Number of 4 KiB pages.
    pub pages: u64,
}

/// What the first restore touched, as runs of guest pages.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct HotPages {
    /// Every page touched (read or written).
    pub touched: Vec<PageRun>,
    /// The pages among them that were written.
    pub written: Vec<PageRun>,
}

impl HotPages {
    /// The number of pages in [`touched`](Self::touched), for logs and the
    /// plausibility cap.
    pub fn touched_pages(&self) -> u64 {
        self.touched.iter().map(|r| r.pages).sum()
    }

    /// The number of pages in [`written`](Self::written).
    pub fn written_pages(&self) -> u64 {
        self.written.iter().map(|r| r.pages).sum()
    }

    fn is_plausible(&self) -> bool {
        self.touched_pages() <= MAX_TOUCHED && self.written_pages() <= MAX_WRITTEN
    }
}

/// Reads which pages of `mem` this process has mapped, from its pagemap.
pub fn record(mem: &GuestMemoryMmap) -> io::Result<HotPages> {
    let mut pagemap = File::open("/proc/self/pagemap")?;
    let mut hot = HotPages::default();
    for region in mem.iter() {
        let host = region
            .get_host_address(vm_memory::MemoryRegionAddress(0))
            .map_err(|e| io::Error::other(e.to_string()))? as u64;
        pagemap.seek(SeekFrom::Start(host / PAGE * 8))?;
        // In chunks, so a large guest needs no large buffer.
        let mut entries = vec![0u8; PAGEMAP_CHUNK as usize * 8];
        let mut page = 0;
        while page < region.len() / PAGE {
            let n = (region.len() / PAGE - page).min(PAGEMAP_CHUNK) as usize;
            pagemap.read_exact(&mut entries[..n * 8])?;
            for (i, entry) in entries[..n * 8].chunks_exact(8).enumerate() {
                let Ok(entry) = <[u8; 8]>::try_from(entry).map(u64::from_le_bytes) else {
                    continue;
                };
                if entry & PM_PRESENT == 0 {
                    continue;
                }
                let addr = region.start_addr().0 + (page + i as u64) * PAGE;
                push_page(&mut hot.touched, addr);
                if entry & PM_FILE_OR_SHARED == 0 {
                    push_page(&mut hot.written, addr);
                }
            }
            page += n as u64;
        }
    }
    Ok(hot)
}

fn push_page(runs: &mut Vec<PageRun>, addr: u64) {
    match runs.last_mut() {
        Some(last) if last.guest_addr + last.pages * PAGE == addr => last.pages += 1,
        _ => runs.push(PageRun {
            guest_addr: addr,
            pages: 1,
        }),
    }
}

/// Stores `hot` in the snapshot directory `dir`, replacing any older list
/// atomically (two copies may record at once; either list is fine). The
/// list is written to a new file of a random name first (never one
/// someone could have planted), mode 0600.
pub fn save(dir: &Path, hot: &HotPages) -> io::Result<()> {
    let bytes = encode(hot).map_err(|e| io::Error::other(e.to_string()))?;
    let (mut file, tmp) = crate::files::create_temp_in(dir, HOT_PAGES_FILE)?;
    let written = file
        .write_all(&bytes)
        .and_then(|()| std::fs::rename(&tmp, dir.join(HOT_PAGES_FILE)));
    written.inspect_err(|_| {
        let _ = std::fs::remove_file(&tmp);
    })
}

/// The largest list file read: [`MAX_TOUCHED`] pages as single-page runs
/// take well under this.
const MAX_FILE_BYTES: u64 = 4 << 20;

/// The list stored in `dir`, if there is a usable one (a regular file,
/// not behind a symlink, of a plausible size).
pub fn load(dir: &Path) -> Option<HotPages> {
    let read = crate::files::open_regular(&dir.join(HOT_PAGES_FILE)).and_then(|file| {
        let mut bytes = Vec::new();
        file.take(MAX_FILE_BYTES + 1).read_to_end(&mut bytes)?;
        if bytes.len() as u64 > MAX_FILE_BYTES {
            return Err(io::Error::other("larger than any list"));
        }
        Ok(bytes)
    });
    let bytes = match read {
        Ok(b) => b,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return None,
        Err(e) => {
            tracing::debug!("hot pages: {e}");
            return None;
        }
    };
    match decode::<HotPages>(&bytes) {
        Ok(hot) if hot.is_plausible() => Some(hot),
        Ok(_) => {
            tracing::debug!("hot pages: implausibly many, ignored");
            None
        }
        Err(e) => {
            tracing::debug!("hot pages: {e}");
            None
        }
    }
}

/// Records the hot pages of a VM restored without a list, into the
/// snapshot it came from. Cheap to clone; used from the control thread.
#[derive(Clone)]
pub struct Recorder {
    mem: GuestMemoryMmap,
    snapshot_dir: PathBuf,
    /// Held until the recording is made, then dropped: fault-around is a
    /// fine thing for the rest of the VM's life.
    exact: Arc<Mutex<Option<FaultAroundOff>>>,
}

impl Recorder {
    /// Call before the guest runs: from here on (where the host allows
    /// it) the page table holds only the pages actually touched.
    pub fn new(mem: GuestMemoryMmap, snapshot_dir: PathBuf) -> Recorder {
        let exact = FaultAroundOff::over(&mem)
            .inspect_err(|e| {
                tracing::debug!(
                    "hot pages: cannot turn fault-around off ({e}); \
                     the recording will include neighbouring pages"
                )
            })
            .ok();
        Recorder {
            mem,
            snapshot_dir,
            exact: Arc::new(Mutex::new(exact)),
        }
    }

    /// Whether the recording will be of touched pages alone.
    pub fn is_exact(&self) -> bool {
        self.exact.lock().is_ok_and(|exact| exact.is_some())
    }

    /// Reads the pages touched so far and stores the list (an empty one
    /// if they are too many to be a restore's working set).
    pub fn record(&self) -> io::Result<HotPages> {
        let mut hot = record(&self.mem)?;
        if let Ok(mut exact) = self.exact.lock() {
            exact.take();
        }
        if !hot.is_plausible() {
            tracing::debug!(
                touched = hot.touched_pages(),
                written = hot.written_pages(),
                "hot pages: too many for a restore's working set; storing none"
            );
            hot = HotPages::default();
        }
        save(&self.snapshot_dir, &hot)?;
        Ok(hot)
    }
}

/// What [`map_ahead`] did.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Warmed {
    /// Pages copied ahead of the guest's writes.
    pub copied: u64,
    /// Pages mapped into the host process.
    pub mapped: u64,
}

/// Copies the written pages and maps the touched ones in this process
/// (the host half: no KVM involved). Nothing in the guest may run yet: a
/// copy made now must not race a guest write.
pub fn map_ahead(mem: &GuestMemoryMmap, hot: &HotPages) -> Warmed {
    let copied = populate(mem, &hot.written, libc::MADV_POPULATE_WRITE);
    let mapped = populate(mem, &hot.touched, libc::MADV_POPULATE_READ);
    Warmed { copied, mapped }
}

/// `madvise(advice)` over each run inside guest memory; returns the pages
/// done.
fn populate(mem: &GuestMemoryMmap, runs: &[PageRun], advice: libc::c_int) -> u64 {
    let mut done = 0;
    for run in runs {
        let Some((host, len)) = host_range(mem, run) else {
            continue;
        };
        // SAFETY: `host..host+len` lies inside one region of `mem`, a live
        // mapping we own. Populating changes no contents: a write
        // populate of a private file page makes our private copy of it, as
        // the guest's first write would.
        if unsafe { libc::madvise(host.cast(), len, advice) } != 0 {
            // Before Linux 5.14 there is no populate advice: nothing more
            // to do here.
            tracing::debug!("hot pages: madvise: {}", io::Error::last_os_error());
            break;
        }
        done += run.pages;
    }
    done
}

/// The host address and length of `run`, if it lies inside one region.
fn host_range(mem: &GuestMemoryMmap, run: &PageRun) -> Option<(*mut u8, usize)> {
    let len = run.pages.checked_mul(PAGE)?;
    let region = mem.find_region(GuestAddress(run.guest_addr))?;
    let offset = run.guest_addr.checked_sub(region.start_addr().0)?;
    if !run.guest_addr.is_multiple_of(PAGE) || offset.checked_add(len)? > region.len() {
        return None;
    }
    let host = mem.get_host_address(GuestAddress(run.guest_addr)).ok()?;
    Some((host, len as usize))
}

// KVM_PRE_FAULT_MEMORY: _IOWR(KVMIO, 0xd5, struct kvm_pre_fault_memory).
// kvm-ioctls has no wrapper for it yet. In a module of its own: the macro
// makes the function `pub`, and it is no API of this crate.
mod ioctls {
    vmm_sys_util::ioctl_iowr_nr!(
        KVM_PRE_FAULT_MEMORY,
        kvm_bindings::KVMIO,
        0xd5,
        kvm_bindings::kvm_pre_fault_memory
    );
}
use ioctls::KVM_PRE_FAULT_MEMORY;

/// How often one run may be retried before it is left to the guest.
const MAX_PREFAULT_RETRIES: u32 = 64;

/// Whether this KVM can build second-level mappings ahead of the guest.
pub fn can_prefault(vm: &kvm_ioctls::VmFd) -> bool {
    vm.check_extension_raw(kvm_bindings::KVM_CAP_PRE_FAULT_MEMORY.into()) > 0
}

/// Builds the guest's second-level mappings for every touched page, through
/// `vcpu` (whose state must be restored: KVM maps with its MMU). Returns the
/// pages mapped; stops at the first error, which only costs speed.
pub fn prefault(vcpu: &kvm_ioctls::VcpuFd, mem: &GuestMemoryMmap, hot: &HotPages) -> u64 {
    let mut done = 0;
    for run in &hot.touched {
        if host_range(mem, run).is_none() {
            continue;
        }
        let mut range = kvm_bindings::kvm_pre_fault_memory {
            gpa: run.guest_addr,
            size: run.pages * PAGE,
            ..Default::default()
        };
        // KVM maps part of a range and asks to be called again (EINTR,
        // EAGAIN); a range that never gets done is left to the guest.
        let mut retries = 0;
        while range.size > 0 {
            // SAFETY: the ioctl reads and updates `range` (a struct of the
            // size its number encodes) and touches no other memory of ours.
            let ret = unsafe {
                vmm_sys_util::ioctl::ioctl_with_mut_ref(vcpu, KVM_PRE_FAULT_MEMORY(), &mut range)
            };
            if ret < 0 {
                let err = io::Error::last_os_error();
                let again = matches!(err.raw_os_error(), Some(libc::EINTR | libc::EAGAIN));
                if again && retries < MAX_PREFAULT_RETRIES {
                    retries += 1;
                    continue;
                }
                tracing::debug!("hot pages: KVM_PRE_FAULT_MEMORY: {err}");
                return done;
            }
        }
        done += run.pages;
    }
    done
}

#[cfg(test)]
mod tests {
    use super::*;
    use vm_memory::{Bytes, GuestRegionMmap, MmapRegion};

    /// `pages` of guest memory at 1 MiB, a sparse file mapped privately.
    fn private_file_memory(pages: u64) -> (tempfile::TempDir, GuestMemoryMmap) {
        let dir = tempfile::tempdir().unwrap();
        let file = File::create_new(dir.path().join("memory")).unwrap();
        file.set_len(pages * PAGE).unwrap();
        let mem = map_memory_file(dir.path(), pages);
        (dir, mem)
    }

    /// The first `pages` of `dir`/memory as guest memory at 1 MiB.
    fn map_memory_file(dir: &Path, pages: u64) -> GuestMemoryMmap {
        let layout = [super::super::memory::RegionLayout {
            guest_addr: 0x10_0000,
            len: pages * PAGE,
            file_offset: 0,
        }];
        let file = File::open(dir.join("memory")).unwrap();
        super::super::memory::map_memory(&file, &layout).unwrap()
    }

    #[test]
    fn recording_sees_reads_and_writes_separately() {
        let (_dir, mem) = private_file_memory(16);
        let mut byte = [0u8; 1];
        mem.read_slice(&mut byte, GuestAddress(0x10_0000 + 2 * PAGE))
            .unwrap();
        mem.read_slice(&mut byte, GuestAddress(0x10_0000 + 3 * PAGE))
            .unwrap();
        mem.write_slice(&[7], GuestAddress(0x10_0000 + 3 * PAGE + 5))
            .unwrap();
        mem.write_slice(&[7], GuestAddress(0x10_0000 + 9 * PAGE))
            .unwrap();
        let hot = record(&mem).unwrap();
        let run = |page: u64, pages| PageRun {
            guest_addr: 0x10_0000 + page * PAGE,
            pages,
        };
        // Written pages are exact; touched ones include what the host
        // kernel mapped around a read fault (fault-around), so only
        // "at least these" holds.
        assert_eq!(hot.written, vec![run(3, 1), run(9, 1)]);
        for page in [2, 3, 9] {
            assert!(contains(&hot.touched, 0x10_0000 + page * PAGE), "{page}");
        }
    }

    /// Whether the running kernel is at least `major.minor`.
    fn kernel_at_least(major: u32, minor: u32) -> bool {
        let release = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap();
        let mut parts = release.trim().split(['.', '-']);
        let mut next = || {
            parts
                .next()
                .and_then(|p| p.parse::<u32>().ok())
                .unwrap_or(0)
        };
        (next(), next()) >= (major, minor)
    }

    #[test]
    fn with_fault_around_off_the_recording_is_exactly_the_pages_touched() {
        let dir = tempfile::tempdir().unwrap();
        // Real data, so the whole file sits in the page cache: what
        // fault-around would map around a read.
        std::fs::write(dir.path().join("memory"), vec![0x5au8; 64 * PAGE as usize]).unwrap();
        let mem = map_memory_file(dir.path(), 64);
        let recorder = Recorder::new(mem.clone(), dir.path().to_path_buf());
        if !kernel_at_least(6, 7) {
            // No asynchronous write protection: the recording is wider.
            return;
        }
        assert!(recorder.is_exact(), "fault-around could not be turned off");
        let page = |n: u64| GuestAddress(0x10_0000 + n * PAGE);
        let mut byte = [0u8; 1];
        mem.read_slice(&mut byte, page(5)).unwrap();
        mem.read_slice(&mut byte, page(40)).unwrap();
        mem.write_slice(&[1], page(20)).unwrap();
        assert_eq!(byte, [0x5a], "contents read through unchanged");
        let hot = recorder.record().unwrap();
        let run = |page: u64| PageRun {
            guest_addr: 0x10_0000 + page * PAGE,
            pages: 1,
        };
        assert_eq!(hot.touched, vec![run(5), run(20), run(40)]);
        assert_eq!(hot.written, vec![run(20)]);
        assert!(!recorder.is_exact(), "fault-around is back once recorded");
        assert_eq!(load(dir.path()), Some(hot));
    }

    fn contains(runs: &[PageRun], addr: u64) -> bool {
        runs.iter()
            .any(|r| r.guest_addr <= addr && addr < r.guest_addr + r.pages * PAGE)
    }

    #[test]
    fn a_recording_too_big_for_a_restore_is_stored_empty() {
        let pages = MAX_WRITTEN + 8;
        let (dir, mem) = private_file_memory(pages);
        for page in 0..pages {
            mem.write_slice(&[1], GuestAddress(0x10_0000 + page * PAGE))
                .unwrap();
        }
        let recorder = Recorder::new(mem, dir.path().to_path_buf());
        assert_eq!(recorder.record().unwrap(), HotPages::default());
        // Stored: later restores map nothing ahead and record nothing.
        assert_eq!(load(dir.path()), Some(HotPages::default()));
    }

    #[test]
    fn a_saved_list_loads_back_and_a_damaged_one_is_ignored() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(load(dir.path()), None);
        let hot = HotPages {
            touched: vec![PageRun {
                guest_addr: 0x1000,
                pages: 3,
            }],
            written: vec![PageRun {
                guest_addr: 0x2000,
                pages: 1,
            }],
        };
        save(dir.path(), &hot).unwrap();
        assert_eq!(load(dir.path()), Some(hot));
        let path = dir.path().join(HOT_PAGES_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        let last = bytes.len() - 1;
        bytes[last] ^= 0xff;
        std::fs::write(&path, bytes).unwrap();
        assert_eq!(load(dir.path()), None);
    }

    #[test]
    fn mapping_ahead_copies_written_pages_and_keeps_contents() {
        let (_dir, mem) = private_file_memory(8);
        mem.write_slice(b"kept", GuestAddress(0x10_0000 + PAGE))
            .unwrap();
        let hot = HotPages {
            touched: vec![
                PageRun {
                    guest_addr: 0x10_0000 + PAGE,
                    pages: 3,
                },
                // Outside guest memory: skipped, not an error.
                PageRun {
                    guest_addr: 0x9000_0000,
                    pages: 2,
                },
            ],
            written: vec![PageRun {
                guest_addr: 0x10_0000 + 2 * PAGE,
                pages: 1,
            }],
        };
        let warmed = map_ahead(&mem, &hot);
        assert_eq!(
            warmed,
            Warmed {
                copied: 1,
                mapped: 3
            }
        );
        let after = record(&mem).unwrap();
        // Page 1 was written before (already private), page 2 by the copy.
        assert_eq!(
            after.written,
            vec![PageRun {
                guest_addr: 0x10_0000 + PAGE,
                pages: 2
            }]
        );
        for page in 1..4 {
            assert!(contains(&after.touched, 0x10_0000 + page * PAGE), "{page}");
        }
        let mut back = [0u8; 4];
        mem.read_slice(&mut back, GuestAddress(0x10_0000 + PAGE))
            .unwrap();
        assert_eq!(&back, b"kept");
    }

    #[test]
    fn regions_built_elsewhere_are_read_too() {
        // Anonymous memory: written pages are anonymous, so they count as
        // written; untouched ones are absent.
        let region = MmapRegion::new(4 * PAGE as usize).unwrap();
        let mem =
            GuestMemoryMmap::from_regions(vec![
                GuestRegionMmap::new(region, GuestAddress(0)).unwrap()
            ])
            .unwrap();
        mem.write_slice(&[1], GuestAddress(PAGE)).unwrap();
        let hot = record(&mem).unwrap();
        assert_eq!(hot.touched_pages(), 1);
        assert_eq!(hot.written_pages(), 1);
    }

    #[test]
    fn saving_never_writes_through_a_name_someone_planted() {
        use std::os::unix::fs::MetadataExt;
        let dir = tempfile::tempdir().unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, "keep").unwrap();
        // The temporary name the list used to be written under first.
        let planted = dir
            .path()
            .join(format!(".{HOT_PAGES_FILE}.{}", std::process::id()));
        std::os::unix::fs::symlink(&victim, &planted).unwrap();
        let hot = HotPages {
            touched: vec![PageRun {
                guest_addr: 0x1000,
                pages: 1,
            }],
            written: Vec::new(),
        };
        save(dir.path(), &hot).unwrap();
        assert_eq!(std::fs::read_to_string(&victim).unwrap(), "keep");
        assert_eq!(load(dir.path()), Some(hot));
        let mode = std::fs::metadata(dir.path().join(HOT_PAGES_FILE))
            .unwrap()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_list_behind_a_symlink_is_not_read() {
        let dir = tempfile::tempdir().unwrap();
        let elsewhere = tempfile::tempdir().unwrap();
        let hot = HotPages::default();
        save(elsewhere.path(), &hot).unwrap();
        std::os::unix::fs::symlink(
            elsewhere.path().join(HOT_PAGES_FILE),
            dir.path().join(HOT_PAGES_FILE),
        )
        .unwrap();
        assert_eq!(load(dir.path()), None);
    }
}
