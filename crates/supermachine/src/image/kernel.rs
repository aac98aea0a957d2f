//! The guest kernel: built from Debian's `linux-source-6.1` with the
//! project's config fragment (`kernel/microvm.config`), cached under
//! `<cache>/kernel/<key>/vmlinux` where the key hashes the fragment, the build
//! script and the source package version. Nothing is rebuilt unless one of
//! those changed.
//!
//! ```no_run
//! # fn demo() -> Result<(), supermachine::Error> {
//! let vmlinux = supermachine::kernel::build()?; // minutes the first time, then cached
//! println!("{}", vmlinux.display());
//! # Ok(()) }
//! ```

use crate::error::Error;
use crate::hash::{self, Hasher};
use crate::paths;
use std::path::{Path, PathBuf};
use std::process::Command;

/// The kernel config fragment (`kernel/microvm.config`) merged onto `make tinyconfig`.
///
/// ```
/// let fragment = supermachine::kernel::FRAGMENT;
/// assert!(fragment.lines().any(|l| l == "CONFIG_VIRTIO_VSOCKETS=y"));
/// ```
pub const FRAGMENT: &str = include_str!("../../../../kernel/microvm.config");
/// The kernel build script (`kernel/build.sh`).
///
/// ```
/// assert!(supermachine::kernel::BUILD_SCRIPT.starts_with("#!/usr/bin/env bash"));
/// ```
pub const BUILD_SCRIPT: &str = include_str!("../../../../kernel/build.sh");
const SOURCE_PACKAGE: &str = "linux-source-6.1";
const SOURCE_TARBALL: &str = "/usr/src/linux-source-6.1.tar.xz";
/// Debian packages the build needs besides the source.
const BUILD_DEPS: &[&str] = &[
    "linux-source-6.1",
    "build-essential",
    "flex",
    "bison",
    "bc",
    "libelf-dev",
    "libssl-dev",
    "xz-utils",
];

fn source_version() -> Option<String> {
    let query = || {
        let out = Command::new("dpkg-query")
            .args(["-W", "-f=${Version}", SOURCE_PACKAGE])
            .output()?;
        let v = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if out.status.success() && !v.is_empty() {
            Ok(v)
        } else {
            Err(std::io::Error::other("not installed"))
        }
    };
    // The source tarball changes whenever the package does, so its size and
    // mtime stand in for asking dpkg (a subprocess) on every VM start.
    hash::memoized("linux-source-version", Path::new(SOURCE_TARBALL), query).ok()
}

/// The cache key for the kernel this build of supermachine wants, or `None`
/// when the kernel source package is not installed.
///
/// ```no_run
/// match supermachine::kernel::key() {
///     Some(key) => println!("this build wants kernel {key}"),
///     None => println!("install linux-source-6.1 first"),
/// }
/// ```
pub fn key() -> Option<String> {
    let version = source_version()?;
    Some(
        Hasher::new("kernel")
            .field(FRAGMENT.as_bytes())
            .field(BUILD_SCRIPT.as_bytes())
            .field(version.as_bytes())
            .short(),
    )
}

/// Path of the kernel to boot: `$SUPERMACHINE_KERNEL`, else `vmlinux` or
/// `vmlinux.zst` in the bundle directory ([`crate::assets::set_bundle_dir`]),
/// else the cached build, if it is built. A kernel compressed with zstd
/// (a `.zst` file, as the npm package ships it) is unpacked once into the
/// cache and that copy is returned.
///
/// ```no_run
/// match supermachine::kernel::path() {
///     Ok(vmlinux) => println!("kernel at {}", vmlinux.display()),
///     Err(e) => eprintln!("{e}"), // says to run `supermachine kernel build`
/// }
/// ```
pub fn path() -> Result<PathBuf, Error> {
    if let Some(p) = std::env::var_os("SUPERMACHINE_KERNEL") {
        return usable(PathBuf::from(p));
    }
    if let Some(dir) = crate::assets::bundle_dir() {
        for name in ["vmlinux", "vmlinux.zst"] {
            if dir.join(name).is_file() {
                return usable(dir.join(name));
            }
        }
    }
    let key = key().ok_or(Error::KernelNotBuilt {
        reason: format!("the {SOURCE_PACKAGE} package is not installed"),
    })?;
    let vmlinux = paths::cache_dir().join("kernel").join(key).join("vmlinux");
    if vmlinux.is_file() {
        Ok(vmlinux)
    } else {
        Err(Error::KernelNotBuilt {
            reason: format!("{} does not exist", vmlinux.display()),
        })
    }
}

/// `kernel` itself, or for a `.zst` file its unpacked copy in the cache.
fn usable(kernel: PathBuf) -> Result<PathBuf, Error> {
    if kernel.extension().is_some_and(|e| e == "zst") {
        unpacked(&kernel, &paths::cache_dir().join("kernel").join("unpacked"))
    } else {
        Ok(kernel)
    }
}

/// Most bytes a compressed kernel may unpack to: guest kernels are tens of
/// MiB, and a damaged or hostile file must not fill the disk.
const UNPACKED_KERNEL_LIMIT: u64 = 512 << 20;

/// Unpacks the zstd-compressed kernel `zst` into `<root>/<digest>/vmlinux`
/// once (keyed by the compressed file's digest) and returns that path.
fn unpacked(zst: &Path, root: &Path) -> Result<PathBuf, Error> {
    let io = |what: &str| {
        let what = format!("{what} {}", zst.display());
        move |e| Error::io(what, e)
    };
    let digest = hash::file_digest(zst).map_err(io("reading the kernel"))?;
    let key = Hasher::new("unpacked-kernel")
        .field(digest.as_bytes())
        .short();
    let dir = root.join(key);
    let vmlinux = dir.join("vmlinux");
    if vmlinux.is_file() {
        return Ok(vmlinux);
    }
    paths::create_dir_all_mode(&dir, paths::SHARED_DIR)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    // Unpacked beside its final name and renamed into place: a reader
    // never sees half a kernel, and two processes unpacking at once both
    // end with a whole one.
    let tmp = dir.join(format!(".vmlinux.{}.tmp", std::process::id()));
    let result = (|| {
        let input = std::fs::File::open(zst).map_err(io("opening the kernel"))?;
        let decoder =
            zstd::stream::read::Decoder::new(input).map_err(io("unpacking the kernel"))?;
        let mut out = paths::create_private_file(&tmp)
            .map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
        let copied = std::io::copy(
            &mut std::io::Read::take(decoder, UNPACKED_KERNEL_LIMIT + 1),
            &mut out,
        )
        .map_err(io("unpacking the kernel"))?;
        if copied > UNPACKED_KERNEL_LIMIT {
            return Err(Error::io(
                format!("unpacking the kernel {}", zst.display()),
                std::io::Error::other(format!(
                    "it unpacks to more than {} MiB: not a kernel",
                    UNPACKED_KERNEL_LIMIT >> 20
                )),
            ));
        }
        // Shared read-only like the rest of the cache (created private so
        // no one reads it half-written).
        std::fs::set_permissions(
            &tmp,
            std::os::unix::fs::PermissionsExt::from_mode(paths::SHARED_FILE),
        )
        .map_err(|e| Error::io(format!("setting the mode of {}", tmp.display()), e))?;
        std::fs::rename(&tmp, &vmlinux)
            .map_err(|e| Error::io(format!("renaming into {}", vmlinux.display()), e))
    })();
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
    }
    result.map(|()| vmlinux)
}

fn install_build_deps() -> Result<(), Error> {
    let missing: Vec<&str> = BUILD_DEPS
        .iter()
        .copied()
        .filter(|p| {
            !Command::new("dpkg-query")
                .args(["-W", "-f=${Status}", p])
                .output()
                .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).contains("install ok installed"))
        })
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    // SAFETY: getuid has no preconditions.
    if unsafe { libc::getuid() } != 0 {
        return Err(Error::MissingPackages {
            what: "the kernel build",
            packages: missing.iter().map(|p| p.to_string()).collect(),
            as_root: false,
        });
    }
    eprintln!("kernel: installing {}", missing.join(" "));
    let install = |update: bool| -> bool {
        if update
            && !Command::new("apt-get")
                .args(["update", "-q"])
                .status()
                .is_ok_and(|s| s.success())
        {
            return false;
        }
        Command::new("apt-get")
            .args(["install", "-y", "-q"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive")
            .status()
            .is_ok_and(|s| s.success())
    };
    if install(false) || install(true) {
        Ok(())
    } else {
        Err(Error::MissingPackages {
            what: "the kernel build (apt-get install failed)",
            packages: missing.iter().map(|p| p.to_string()).collect(),
            as_root: true,
        })
    }
}

/// Builds the kernel if the cache does not have it; returns its path.
/// Progress goes to stderr (the build takes minutes).
///
/// ```no_run
/// # fn demo() -> Result<(), supermachine::Error> {
/// let vmlinux = supermachine::kernel::build()?;
/// assert_eq!(supermachine::kernel::path()?, vmlinux);
/// # Ok(()) }
/// ```
pub fn build() -> Result<PathBuf, Error> {
    if let Ok(p) = path() {
        return Ok(p);
    }
    install_build_deps()?;
    let key = key().ok_or_else(|| Error::MissingPackages {
        what: "the kernel build",
        packages: vec![SOURCE_PACKAGE.to_string()],
        as_root: true,
    })?;
    let out_dir = paths::cache_dir().join("kernel").join(&key);
    paths::create_dir_all_mode(&out_dir, paths::SHARED_DIR)
        .map_err(|e| Error::io(format!("creating {}", out_dir.display()), e))?;
    let fragment = out_dir.join("microvm.config");
    let script = out_dir.join("build.sh");
    paths::write_with_mode(&fragment, FRAGMENT.as_bytes(), paths::SHARED_FILE)
        .map_err(|e| Error::io("writing the config fragment", e))?;
    paths::write_with_mode(&script, BUILD_SCRIPT.as_bytes(), paths::SHARED_FILE)
        .map_err(|e| Error::io("writing the build script", e))?;
    eprintln!("kernel: building {key} (a few minutes; cached afterwards)");
    let status = Command::new("bash")
        .arg(&script)
        .arg(&fragment)
        .arg(&out_dir)
        .status()
        .map_err(|e| Error::io("running the kernel build", e))?;
    if !status.success() {
        return Err(Error::ToolFailed {
            tool: "the kernel build",
            status: status.to_string(),
            hint: Some("see the output above"),
        });
    }
    let vmlinux = out_dir.join("vmlinux");
    if !Path::new(&vmlinux).is_file() {
        return Err(Error::KernelMissingAfterBuild { path: vmlinux });
    }
    Ok(vmlinux)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compressed(dir: &Path, data: &[u8]) -> PathBuf {
        let zst = dir.join("vmlinux.zst");
        std::fs::write(&zst, zstd::stream::encode_all(data, 3).unwrap()).unwrap();
        zst
    }

    #[test]
    fn a_compressed_kernel_is_unpacked_once() {
        let dir = tempfile::tempdir().unwrap();
        let kernel: Vec<u8> = (0..200_000u32).flat_map(|i| i.to_le_bytes()).collect();
        let zst = compressed(dir.path(), &kernel);
        let root = dir.path().join("unpacked");
        let first = unpacked(&zst, &root).unwrap();
        assert_eq!(std::fs::read(&first).unwrap(), kernel);
        use std::os::unix::fs::PermissionsExt;
        let mode = std::fs::metadata(&first).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o644);
        // Cached: the same path, and it is not written again.
        let mtime = std::fs::metadata(&first).unwrap().modified().unwrap();
        assert_eq!(unpacked(&zst, &root).unwrap(), first);
        assert_eq!(
            std::fs::metadata(&first).unwrap().modified().unwrap(),
            mtime
        );
    }

    #[test]
    fn a_damaged_kernel_is_an_error_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let zst = dir.path().join("vmlinux.zst");
        std::fs::write(&zst, b"not zstd at all").unwrap();
        let root = dir.path().join("unpacked");
        let e = unpacked(&zst, &root).unwrap_err();
        assert!(e.to_string().contains("unpacking the kernel"), "{e}");
        let leftovers: Vec<_> = std::fs::read_dir(&root)
            .unwrap()
            .flat_map(|d| std::fs::read_dir(d.unwrap().path()).unwrap())
            .collect();
        assert!(leftovers.is_empty(), "{leftovers:?}");
    }

    #[test]
    fn an_uncompressed_kernel_is_used_as_it_is() {
        let p = PathBuf::from("/boot/vmlinux-test");
        assert_eq!(usable(p.clone()).unwrap(), p);
    }
}
