//! The lab kernel: a generic Debian kernel (`-cloud-` lacks 9p) of the
//! series [`series`] names, the newest apt knows of it, downloaded with apt
//! and unpacked once into `kernels/<pkg>_<version>/` of the cache: vmlinux
//! (or vmlinuz), `modules/*.ko` uncompressed, and `modules.list`, the load
//! order.
//!
//! The series is 6.12 (Debian 12's security archive carries it: the KVM of
//! current hosts, `KVM_PRE_FAULT_MEMORY` included) unless
//! `SUPERMACHINE_LAB_KERNEL` names another, e.g. `6.1`, Debian 12's own,
//! whose KVM cannot build guest mappings ahead. 6.12 became the default
//! with QEMU 10 (`qemu.rs`): under QEMU 7.2's emulated SVM it crashed
//! about one benchmark run in five (a fault inside `__schedule`, its
//! instruction pointer in the middle of an instruction); under QEMU 10 it
//! ran three end-to-end suites and five benchmark runs without a fault.
//!
//! The package is resolved with apt only when no kernel of the series is
//! cached (asking apt costs ~0.7 s, a third of a lab run); delete the
//! cache directory to move to a newer Debian kernel.

use crate::assets::{copy, install_staged, write_atomic};
use crate::host::{self, run_tool};
use crate::LabError;
use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// Loaded in this order by the init script; busybox insmod does not
/// resolve dependencies (measured list, see shared/LAB.md).
const MODULES: &[&str] = &[
    "irqbypass",
    "kvm",
    "ccp",
    "kvm-amd",
    "virtio_ring",
    "virtio",
    "virtio_pci_legacy_dev",
    "virtio_pci_modern_dev",
    "virtio_pci",
    // A network card (QEMU user networking), so passt, the guest
    // network's backend, finds a routable interface inside the lab.
    "failover",
    "net_failover",
    "virtio_net",
    "netfs",
    // Merged into netfs (built in) by 6.12; a module on 6.1.
    "fscache",
    "9pnet",
    "9pnet_virtio",
    "9p",
    // vhost-vsock, so QEMU in the lab can be benchmarked against our VMM
    // with the same agent-ready handshake.
    "vhost_iotlb",
    "vhost",
    "vsock",
    "vmw_vsock_virtio_transport_common",
    "vhost_vsock",
];

/// Short stable hash of the module lists: part of the kernel cache key, so
/// changing a list re-extracts the modules (and re-resolves the kernel)
/// instead of missing some.
fn modules_key() -> String {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325; // FNV-1a
    let names = MODULES.iter().chain([&"optional:"]).chain(OPTIONAL_MODULES);
    for b in names.flat_map(|m| m.bytes().chain([0])) {
        h = (h ^ b as u64).wrapping_mul(0x100_0000_01b3);
    }
    format!("{:08x}", h as u32)
}

/// The kernel series the lab boots (see the module docs).
pub(crate) fn series() -> String {
    std::env::var("SUPERMACHINE_LAB_KERNEL")
        .ok()
        .filter(|s| !s.trim().is_empty())
        .map_or_else(|| DEFAULT_SERIES.to_string(), |s| s.trim().to_string())
}

const DEFAULT_SERIES: &str = "6.12";

pub(crate) fn ensure_kernel(root: &Path) -> Result<PathBuf, LabError> {
    let series = series();
    // One pointer per series, so switching series is not a re-download.
    let current = match series.as_str() {
        DEFAULT_SERIES => root.join("kernel.current"),
        other => root.join(format!("kernel.current-{other}")),
    };
    if let Ok(name) = fs::read_to_string(&current) {
        let dir = root.join("kernels").join(name.trim());
        let same_modules = name.trim().ends_with(&format!("_m{}", modules_key()));
        let same_series = name.starts_with(&format!("linux-image-{series}."));
        if same_modules && same_series && dir.join("complete").exists() {
            return Ok(dir);
        }
    }
    host::require_apt()?;
    let (pkg, version) = resolve_kernel_package(&series)?;
    let key = format!("{pkg}_{version}_m{}", modules_key());
    let dir = root.join("kernels").join(&key);
    if !dir.join("complete").exists() {
        eprintln!("supermachine-lab: preparing the lab kernel from {pkg} {version} (one-time)");
        build_kernel_dir(root, &pkg, &version, &dir)?;
    }
    write_atomic(&current, key.as_bytes())?;
    Ok(dir)
}

/// Modules that some kernels build into another one: missing is fine.
const OPTIONAL_MODULES: &[&str] = &["fscache"];

/// The newest generic `linux-image-<version>-amd64-unsigned` of `series`
/// (e.g. "6.1") apt knows, and its package version.
fn resolve_kernel_package(series: &str) -> Result<(String, String), LabError> {
    let wanted: Vec<u32> = series.split('.').filter_map(|n| n.parse().ok()).collect();
    let search = || -> Result<Option<String>, LabError> {
        let out = run_tool(Command::new("apt-cache").args([
            "search",
            "--names-only",
            r"^linux-image-6\.[0-9.]+(-[0-9]+|\+deb[0-9]+)-amd64-unsigned$",
        ]))?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text
            .lines()
            .filter_map(|l| l.split_whitespace().next())
            .filter_map(|name| Some((kernel_version_key(name)?, name.to_string())))
            .filter(|(key, _)| key.starts_with(&wanted))
            .max()
            .map(|(_, name)| name))
    };
    let pkg = match search()? {
        Some(p) => p,
        // A fresh container has no package lists yet.
        None if host::is_root() => {
            eprintln!("supermachine-lab: running apt-get update to find the lab kernel");
            host::apt_update()?;
            search()?.ok_or_else(|| LabError::KernelPackageNotFound(series.into()))?
        }
        None => return Err(LabError::KernelPackageNotFound(series.into())),
    };
    let out = run_tool(Command::new("apt-cache").args(["show", "--no-all-versions", &pkg]))?;
    let text = String::from_utf8_lossy(&out.stdout);
    let version = text
        .lines()
        .find_map(|l| l.strip_prefix("Version: "))
        .ok_or_else(|| {
            LabError::BadKernelPackage(format!("apt-cache show {pkg} printed no Version"))
        })?;
    Ok((pkg, version.trim().to_string()))
}

fn build_kernel_dir(root: &Path, pkg: &str, version: &str, dir: &Path) -> Result<(), LabError> {
    let work = root.join(format!("tmp-{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    let stage = work.join("stage");
    fs::create_dir_all(stage.join("modules"))
        .map_err(LabError::io(format!("cannot create {}", stage.display())))?;

    run_tool(
        host::apt_command("apt-get")
            .arg("download")
            .arg(format!("{pkg}={version}"))
            .current_dir(&work),
    )?;
    let deb = fs::read_dir(&work)
        .map_err(LabError::io(format!("cannot read {}", work.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .find(|p| p.extension().is_some_and(|e| e == "deb"))
        .ok_or_else(|| {
            LabError::BadKernelPackage(format!("apt-get download {pkg} produced no .deb"))
        })?;
    let tree = work.join("x");
    run_tool(Command::new("dpkg").arg("-x").arg(&deb).arg(&tree))?;

    let bad = |what: String| LabError::BadKernelPackage(format!("{pkg} {version}: {what}"));
    let only_entry = |d: &Path, prefix: &str| -> Result<PathBuf, LabError> {
        fs::read_dir(d)
            .map_err(LabError::io(format!("cannot read {}", d.display())))?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| {
                p.file_name()
                    .is_some_and(|n| n.to_string_lossy().starts_with(prefix))
            })
            .ok_or_else(|| bad(format!("no {prefix}* in {}", d.display())))
    };
    let vmlinuz = only_entry(&tree.join("boot"), "vmlinuz-")?;
    let config = fs::read_to_string(only_entry(&tree.join("boot"), "config-")?).unwrap_or_default();
    let kver_dir = only_entry(&tree.join("lib/modules"), "")?;
    copy(&vmlinuz, &stage.join("vmlinuz"))?;
    let image =
        fs::read(&vmlinuz).map_err(LabError::io(format!("cannot read {}", vmlinuz.display())))?;
    if !extract_vmlinux(&image, &config, &stage.join("vmlinux")) {
        let _ = fs::remove_file(stage.join("vmlinux"));
        eprintln!(
            "supermachine-lab: could not unpack the kernel; booting the compressed one (slower)"
        );
    }

    let builtin = fs::read_to_string(kver_dir.join("modules.builtin")).unwrap_or_default();
    let mut list = String::new();
    for m in MODULES {
        match find_module(&kver_dir.join("kernel"), m) {
            Some(path) => copy_module(&path, &stage.join("modules").join(format!("{m}.ko")))?,
            // Another kernel build may have it built in: nothing to load.
            None if builtin.lines().any(|l| l.ends_with(&format!("/{m}.ko"))) => continue,
            None if OPTIONAL_MODULES.contains(m) => continue,
            None => return Err(bad(format!("module {m} not found"))),
        }
        list.push_str(m);
        list.push('\n');
    }
    write_atomic(&stage.join("modules.list"), list.as_bytes())?;
    install_staged(&stage, dir, &work)
}

/// Orders generic kernel package names by the numbers in their version:
/// `linux-image-6.1.0-56-amd64-unsigned` → [6, 1, 0, 56],
/// `linux-image-6.12.117+deb12-amd64-unsigned` → [6, 12, 117, 12]. Other
/// flavours (`-cloud-`, `-rt-`) give None.
fn kernel_version_key(name: &str) -> Option<Vec<u32>> {
    let version = name
        .strip_prefix("linux-image-")?
        .strip_suffix("-amd64-unsigned")?;
    if version.contains("-cloud") || version.contains("-rt") {
        return None;
    }
    let numbers: Vec<u32> = version
        .split(|c: char| !c.is_ascii_digit())
        .filter(|s| !s.is_empty())
        .map(|s| s.parse().ok())
        .collect::<Option<_>>()?;
    (numbers.len() >= 3).then_some(numbers)
}

/// Unpacks the ELF kernel from a bzImage, so QEMU can boot it via PVH
/// without the guest decompressing itself under emulation (xz in TCG took
/// ~2 s of a 4.3 s run; PVH brought the run to ~2 s). Returns false when
/// that is not possible; the caller then boots the bzImage.
fn extract_vmlinux(image: &[u8], config: &str, out: &Path) -> bool {
    let set = |opt: &str| config.lines().any(|l| l == format!("{opt}=y"));
    if !set("CONFIG_PVH") {
        return false;
    }
    let (magic, tool): (&[u8], &[&str]) = if set("CONFIG_KERNEL_XZ") {
        (b"\xfd7zXZ\0", &["xz", "-dc", "--single-stream"])
    } else if set("CONFIG_KERNEL_ZSTD") {
        (b"\x28\xb5\x2f\xfd", &["zstd", "-dcq"])
    } else if set("CONFIG_KERNEL_GZIP") {
        (b"\x1f\x8b\x08", &["gzip", "-dc"])
    } else {
        return false;
    };
    let Some(off) = image.windows(magic.len()).position(|w| w == magic) else {
        return false;
    };
    let Ok(file) = File::create(out) else {
        return false;
    };
    let Ok(mut child) = Command::new(tool[0])
        .args(&tool[1..])
        .stdin(Stdio::piped())
        .stdout(file)
        .stderr(Stdio::null())
        .spawn()
    else {
        return false;
    };
    // Output goes straight to the file, so writing all input first cannot
    // deadlock. The exit status is ignored: bytes after the compressed
    // stream make gzip and zstd complain; the ELF check below decides.
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(&image[off..]);
    }
    let _ = child.wait();
    let mut head = [0u8; 4];
    use std::io::Read;
    File::open(out)
        .and_then(|mut f| f.read_exact(&mut head))
        .is_ok()
        && &head == b"\x7fELF"
}

/// Finds `<name>.ko`, possibly compressed (Debian 12 ships them plain,
/// other kernels use .xz/.zst/.gz), anywhere below `dir`.
fn find_module(dir: &Path, name: &str) -> Option<PathBuf> {
    // The kernel treats - and _ in module names alike; so do we.
    let norm = |s: &str| s.replace('-', "_");
    let wanted = |f: &str| {
        let stem = ["", ".xz", ".zst", ".gz"]
            .iter()
            .find_map(|ext| f.strip_suffix(&format!(".ko{ext}")));
        stem.is_some_and(|s| norm(s) == norm(name))
    };
    for entry in fs::read_dir(dir).ok()?.flatten() {
        let path = entry.path();
        let ft = entry.file_type().ok()?;
        if ft.is_dir() {
            if let Some(found) = find_module(&path, name) {
                return Some(found);
            }
        } else if wanted(&entry.file_name().to_string_lossy()) {
            return Some(path);
        }
    }
    None
}

/// busybox insmod passes the file to init_module as is, so compressed
/// modules are unpacked here with the matching tool.
fn copy_module(src: &Path, dst: &Path) -> Result<(), LabError> {
    let name = src.to_string_lossy();
    let tool = [(".ko.xz", "xz"), (".ko.zst", "zstd"), (".ko.gz", "gzip")]
        .into_iter()
        .find(|(ext, _)| name.ends_with(ext));
    let Some((_, tool)) = tool else {
        return copy(src, dst);
    };
    let out = run_tool(Command::new(tool).arg("-dc").arg(src))?;
    write_atomic(dst, &out.stdout)
}

#[cfg(test)]
mod tests {
    use super::kernel_version_key;

    #[test]
    fn the_newest_generic_kernel_sorts_last() {
        let mut names = [
            "linux-image-6.12.117+deb12-amd64-unsigned",
            "linux-image-6.1.0-56-amd64-unsigned",
            "linux-image-6.12.9+deb12-amd64-unsigned",
            "linux-image-6.1.0-9-amd64-unsigned",
        ];
        names.sort_by_key(|n| kernel_version_key(n).unwrap());
        assert_eq!(
            names.last(),
            Some(&"linux-image-6.12.117+deb12-amd64-unsigned")
        );
        assert_eq!(names.first(), Some(&"linux-image-6.1.0-9-amd64-unsigned"));
    }

    #[test]
    fn series_prefixes_do_not_overlap() {
        let key = kernel_version_key("linux-image-6.12.117+deb12-amd64-unsigned").unwrap();
        assert!(key.starts_with(&[6, 12]));
        assert!(!key.starts_with(&[6, 1]));
        assert!(!"linux-image-6.12.117+deb12-amd64-unsigned".starts_with("linux-image-6.1."));
    }

    #[test]
    fn other_flavours_are_not_lab_kernels() {
        for name in [
            "linux-image-6.12.117+deb12-cloud-amd64-unsigned",
            "linux-image-6.12.117+deb12-rt-amd64-unsigned",
            "linux-image-amd64",
        ] {
            assert_eq!(kernel_version_key(name), None, "{name}");
        }
    }
}
