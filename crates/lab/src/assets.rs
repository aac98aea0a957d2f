//! The lab's kernel and initramfs, built once and cached under
//! `$XDG_CACHE_HOME/supermachine/lab/` (default `~/.cache/...`):
//!
//! ```text
//! lock                          flock held while assets are checked or built
//! kernel.current                name of the kernel directory in use
//! kernels/<pkg>_<version>/      vmlinux (or vmlinuz), modules/*.ko, modules.list
//! qemu.current                  name of the QEMU directory in use
//! qemu/<pkg>_<version>/         QEMU from bookworm-backports, unpacked (qemu.rs)
//! apt/                          the private apt lists QEMU is found with
//! initramfs-<pkg>_<version>-<hash>.cpio
//! ```
//!
//! The kernel comes from `kernel.rs`, QEMU from `qemu.rs`; the initramfs is written here with
//! busybox-static, the kernel's modules and `init.sh`.

use crate::host::{run_tool, Tools};
use crate::kernel;
use crate::qemu::{self, Qemu};
use crate::LabError;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::Command;

const INIT_SH: &str = include_str!("init.sh");

/// Bump when the initramfs layout written below changes.
const LAYOUT_VERSION: &str = "supermachine-lab initramfs v1";

pub(crate) struct Assets {
    /// An uncompressed vmlinux when we could unpack it (QEMU boots it
    /// through its PVH entry point), else the compressed vmlinuz.
    pub kernel: PathBuf,
    pub initramfs: PathBuf,
    pub qemu: Qemu,
}

pub(crate) fn cache_dir() -> Result<PathBuf, LabError> {
    let base = match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
        Some(x) => PathBuf::from(x),
        None => PathBuf::from(std::env::var_os("HOME").ok_or(LabError::NoCacheDir)?).join(".cache"),
    };
    Ok(base.join("supermachine").join("lab"))
}

pub(crate) fn ensure(tools: &Tools) -> Result<Assets, LabError> {
    let root = cache_dir()?;
    fs::create_dir_all(&root).map_err(LabError::io(format!("cannot create {}", root.display())))?;
    // Parallel test threads all start labs at once; one builds, the rest wait.
    let _lock = lock(&root.join("lock"))?;
    let kdir = kernel::ensure_kernel(&root)?;
    let vmlinux = kdir.join("vmlinux");
    let kernel = if vmlinux.exists() {
        vmlinux
    } else {
        kdir.join("vmlinuz")
    };
    let initramfs = ensure_initramfs(&root, &kdir, tools)?;
    let qemu = qemu::ensure_qemu(&root, tools)?;
    Ok(Assets {
        kernel,
        initramfs,
        qemu,
    })
}

fn lock(path: &Path) -> Result<File, LabError> {
    let f = File::options()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .map_err(LabError::io(format!("cannot open {}", path.display())))?;
    // SAFETY: flock on a file descriptor we own; released when `f` closes.
    if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } != 0 {
        let e = std::io::Error::last_os_error();
        return Err(LabError::io(format!("cannot lock {}", path.display()))(e));
    }
    Ok(f)
}

fn ensure_initramfs(root: &Path, kdir: &Path, tools: &Tools) -> Result<PathBuf, LabError> {
    let list = fs::read_to_string(kdir.join("modules.list"))
        .map_err(LabError::io("cannot read modules.list"))?;
    let modules: Vec<&str> = list.lines().filter(|l| !l.is_empty()).collect();
    let script = INIT_SH.replace("@MODULES@", &modules.join(" "));
    let busybox = fs::read(&tools.busybox).map_err(LabError::io(format!(
        "cannot read {}",
        tools.busybox.display()
    )))?;
    let mut h = Fnv::new();
    for part in [LAYOUT_VERSION.as_bytes(), script.as_bytes(), &busybox] {
        h.write(&(part.len() as u64).to_le_bytes());
        h.write(part);
    }
    let kname = kdir
        .file_name()
        .ok_or_else(|| LabError::BadKernelPackage(format!("no kernel name in {}", kdir.display())))?
        .to_string_lossy();
    let path = root.join(format!("initramfs-{kname}-{:016x}.cpio", h.0));
    if path.exists() {
        return Ok(path);
    }

    let out = run_tool(Command::new(&tools.busybox).arg("--list"))?;
    let applets = String::from_utf8_lossy(&out.stdout).into_owned();
    let tmp = path.with_extension("tmp");
    let file =
        File::create(&tmp).map_err(LabError::io(format!("cannot create {}", tmp.display())))?;
    let mut w = supermachine_initramfs::Writer::new(std::io::BufWriter::new(file));
    let write = |w: &mut supermachine_initramfs::Writer<_>| -> std::io::Result<()> {
        for d in [
            "bin",
            "ctl",
            "dev",
            "host",
            "lib",
            "lib/modules",
            "proc",
            "sys",
        ] {
            w.dir(d, 0o755)?;
        }
        // The kernel opens /dev/console for init before devtmpfs exists.
        w.char_device("dev/console", 0o600, 5, 1)?;
        w.char_device("dev/null", 0o666, 1, 3)?;
        w.file_from_path("bin/busybox", 0o755, &tools.busybox)?;
        for a in applets.lines().map(str::trim) {
            if !a.is_empty() && a != "busybox" && !a.contains('/') {
                w.symlink(&format!("bin/{a}"), "busybox")?;
            }
        }
        for m in &modules {
            w.file_from_path(
                &format!("lib/modules/{m}.ko"),
                0o644,
                kdir.join("modules").join(format!("{m}.ko")),
            )?;
        }
        w.file("init", 0o755, script.as_bytes())?;
        Ok(())
    };
    write(&mut w)
        .and_then(|_| w.finish())
        .and_then(|mut b| b.flush())
        .map_err(LabError::io(format!("cannot write {}", tmp.display())))?;
    fs::rename(&tmp, &path).map_err(LabError::io(format!("cannot rename {}", tmp.display())))?;
    // Older builds (other busybox, script or kernel) are dead weight.
    for e in fs::read_dir(root).into_iter().flatten().flatten() {
        let n = e.file_name().to_string_lossy().into_owned();
        if n.starts_with("initramfs-") && e.path() != path {
            let _ = fs::remove_file(e.path());
        }
    }
    Ok(path)
}

/// Marks a fully prepared `stage` complete and moves it to `dir` (replacing
/// a half-made one), then removes the scratch directory `work`. Readers
/// trust only directories with `complete` in them.
pub(crate) fn install_staged(stage: &Path, dir: &Path, work: &Path) -> Result<(), LabError> {
    File::create(stage.join("complete")).map_err(LabError::io(format!(
        "cannot mark {} complete",
        stage.display()
    )))?;
    let _ = fs::remove_dir_all(dir);
    if let Some(parent) = dir.parent() {
        fs::create_dir_all(parent)
            .map_err(LabError::io(format!("cannot create {}", parent.display())))?;
    }
    fs::rename(stage, dir).map_err(LabError::io(format!(
        "cannot move {} to {}",
        stage.display(),
        dir.display()
    )))?;
    let _ = fs::remove_dir_all(work);
    Ok(())
}

pub(crate) fn copy(src: &Path, dst: &Path) -> Result<(), LabError> {
    fs::copy(src, dst).map(drop).map_err(LabError::io(format!(
        "cannot copy {} to {}",
        src.display(),
        dst.display()
    )))
}

pub(crate) fn write_atomic(path: &Path, data: &[u8]) -> Result<(), LabError> {
    let tmp = path.with_extension("tmp");
    fs::write(&tmp, data)
        .and_then(|_| fs::rename(&tmp, path))
        .map_err(LabError::io(format!("cannot write {}", path.display())))
}

/// FNV-1a, 64 bit: a stable cache key (std's hashers may change between
/// Rust releases); not a defence against anyone.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x0100_0000_01b3);
        }
    }
}
