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

/// Path of the built kernel, if it is built. `SUPERMACHINE_KERNEL` overrides.
///
/// ```no_run
/// match supermachine::kernel::path() {
///     Ok(vmlinux) => println!("kernel at {}", vmlinux.display()),
///     Err(e) => eprintln!("{e}"), // says to run `supermachine kernel build`
/// }
/// ```
pub fn path() -> Result<PathBuf, Error> {
    if let Some(p) = std::env::var_os("SUPERMACHINE_KERNEL") {
        return Ok(PathBuf::from(p));
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
