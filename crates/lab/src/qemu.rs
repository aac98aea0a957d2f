//! The lab's QEMU: Debian 12's backport of QEMU 10 (`bookworm-backports`),
//! unpacked once into `qemu/<version>/` of the cache, instead of the
//! system's QEMU 7.2.
//!
//! Why: QEMU 7.2's emulated SVM is the lab's weak spot. Three of the last
//! ten snapshot benchmark runs under it froze (a vCPU stops taking timer
//! interrupts: RCU stall, QEMU spinning at ~180% CPU), and 6.12 lab
//! kernels crashed in `__schedule` about one run in five. The same
//! benchmarks side by side under QEMU 10 ran without either, and guest
//! page faults (nested #NPF exits), which dominate a snapshot restore in
//! the lab, cost less (README, "The lab").
//!
//! apt is pointed at a sources list and lists directory of our own inside
//! the cache, so the host's apt configuration and packages are untouched.
//! The binary links against the same libraries as the system's
//! `qemu-system-x86` package, which the lab installs for that reason.
//!
//! `SUPERMACHINE_LAB_QEMU` overrides: `system` runs the
//! `qemu-system-x86_64` on PATH, a path runs that binary.

use crate::assets::{install_staged, write_atomic};
use crate::host::{self, run_tool, Tools};
use crate::LabError;
use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Where the backport comes from; Debian's own archive key signs it.
const SOURCE: &str = "deb [signed-by=/usr/share/keyrings/debian-archive-keyring.gpg] \
                      http://deb.debian.org/debian bookworm-backports main";
const SUITE: &str = "bookworm-backports";
/// The binary, and the firmware and option ROMs it loads (qboot, pvh.bin).
const PACKAGES: &[&str] = &["qemu-system-x86", "qemu-system-data"];

/// Where a QEMU built for the system looks for its firmware.
const SYSTEM_DATA_DIR: &str = "/usr/share/qemu";

/// The QEMU a lab runs.
pub(crate) struct Qemu {
    pub binary: PathBuf,
    /// Passed as `-L`: where this QEMU's firmware lives, when it is not
    /// the one its build expects (/usr/share/qemu).
    pub data_dir: Option<PathBuf>,
    /// QEMU's qboot firmware, if present: it starts the kernel faster than
    /// the default SeaBIOS and prints nothing.
    pub qboot: Option<PathBuf>,
}

impl Qemu {
    fn system(tools: &Tools) -> Qemu {
        Qemu::at(tools.system_qemu.clone(), None, Path::new(SYSTEM_DATA_DIR))
    }

    fn at(binary: PathBuf, data_dir: Option<PathBuf>, firmware: &Path) -> Qemu {
        let qboot = firmware.join("qboot.rom");
        Qemu {
            binary,
            data_dir,
            qboot: qboot.exists().then_some(qboot),
        }
    }
}

/// The lab's QEMU under cache root `root`, prepared on first use. Called
/// with the cache lock held.
pub(crate) fn ensure_qemu(root: &Path, tools: &Tools) -> Result<Qemu, LabError> {
    match std::env::var_os("SUPERMACHINE_LAB_QEMU").filter(|v| !v.is_empty()) {
        Some(v) if v == "system" => return Ok(Qemu::system(tools)),
        Some(path) => {
            let binary = PathBuf::from(path);
            if !binary.is_file() {
                return Err(LabError::BadQemu(format!(
                    "SUPERMACHINE_LAB_QEMU={} is not a file; unset it, set it to `system` \
                     or to a qemu-system-x86_64 binary",
                    binary.display()
                )));
            }
            return Ok(Qemu::at(binary, None, Path::new(SYSTEM_DATA_DIR)));
        }
        None => {}
    }
    let current = root.join("qemu.current");
    if let Ok(name) = fs::read_to_string(&current) {
        let dir = root.join("qemu").join(name.trim());
        if dir.join("complete").exists() {
            return Ok(unpacked(&dir));
        }
    }
    host::require_apt()?;
    let apt = PrivateApt::new(&root.join("apt"))?;
    apt.update()?;
    let version = apt.newest_version(PACKAGES[0])?;
    let name = format!("{}_{}", PACKAGES[0], version.replace(':', "%3a"));
    let dir = root.join("qemu").join(&name);
    if !dir.join("complete").exists() {
        eprintln!("supermachine-lab: preparing QEMU {version} from {SUITE} (one-time)");
        unpack(root, &apt, &version, &dir)?;
    }
    write_atomic(&current, name.as_bytes())?;
    Ok(unpacked(&dir))
}

fn unpacked(dir: &Path) -> Qemu {
    let data = dir.join("usr/share/qemu");
    Qemu::at(
        dir.join("usr/bin/qemu-system-x86_64"),
        Some(data.clone()),
        &data,
    )
}

fn unpack(root: &Path, apt: &PrivateApt, version: &str, dir: &Path) -> Result<(), LabError> {
    let work = root.join(format!("tmp-qemu-{}", std::process::id()));
    let _ = fs::remove_dir_all(&work);
    let stage = work.join("stage");
    fs::create_dir_all(&stage)
        .map_err(LabError::io(format!("cannot create {}", stage.display())))?;
    let wanted: Vec<String> = PACKAGES.iter().map(|p| format!("{p}={version}")).collect();
    run_tool(
        apt.command()
            .arg("download")
            .args(&wanted)
            .current_dir(&work),
    )?;
    let debs: Vec<PathBuf> = fs::read_dir(&work)
        .map_err(LabError::io(format!("cannot read {}", work.display())))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "deb"))
        .collect();
    if debs.len() != PACKAGES.len() {
        return Err(LabError::BadQemu(format!(
            "apt-get download {} gave {} packages, not {}",
            wanted.join(" "),
            debs.len(),
            PACKAGES.len()
        )));
    }
    for deb in &debs {
        run_tool(Command::new("dpkg").arg("-x").arg(deb).arg(&stage))?;
    }
    // A missing shared library shows here, not as a lab that never boots.
    let binary = stage.join("usr/bin/qemu-system-x86_64");
    run_tool(Command::new(&binary).arg("--version")).map_err(|e| {
        LabError::BadQemu(format!(
            "QEMU {version} from {SUITE} does not run on this host (the lab expects \
             Debian 12 with the system qemu-system-x86 installed for its libraries; \
             SUPERMACHINE_LAB_QEMU=system uses the system QEMU instead): {e}"
        ))
    })?;
    install_staged(&stage, dir, &work)
}

/// apt with its own sources list, package lists and cache under `dir`,
/// reading (never writing) the system's dpkg status.
struct PrivateApt {
    dir: PathBuf,
}

impl PrivateApt {
    fn new(dir: &Path) -> Result<PrivateApt, LabError> {
        for sub in ["sources.list.d", "lists/partial", "cache/archives/partial"] {
            let d = dir.join(sub);
            fs::create_dir_all(&d)
                .map_err(LabError::io(format!("cannot create {}", d.display())))?;
        }
        write_atomic(&dir.join("sources.list"), format!("{SOURCE}\n").as_bytes())?;
        Ok(PrivateApt {
            dir: dir.to_path_buf(),
        })
    }

    fn command(&self) -> Command {
        self.tool("apt-get")
    }

    fn tool(&self, program: &str) -> Command {
        let mut c = host::apt_command(program);
        let opt = |key: &str, sub: &str| format!("{key}={}", self.dir.join(sub).display());
        for o in [
            opt("Dir::Etc::SourceList", "sources.list"),
            opt("Dir::Etc::SourceParts", "sources.list.d"),
            opt("Dir::State::Lists", "lists"),
            opt("Dir::Cache", "cache"),
        ] {
            c.args(["-o", &o]);
        }
        c
    }

    fn update(&self) -> Result<(), LabError> {
        run_tool(self.command().arg("update")).map(drop)
    }

    /// The newest version of `pkg` in the private lists.
    fn newest_version(&self, pkg: &str) -> Result<String, LabError> {
        let out = run_tool(self.tool("apt-cache").args(["madison", pkg]))?;
        newest_from_madison(&String::from_utf8_lossy(&out.stdout)).ok_or_else(|| {
            LabError::BadQemu(format!(
                "apt finds no {pkg} in {SUITE} (is deb.debian.org reachable?); \
                 SUPERMACHINE_LAB_QEMU=system uses the system QEMU instead"
            ))
        })
    }
}

/// The first (newest) version `apt-cache madison` lists from the suite:
/// lines read `pkg | version | url suite/component arch Packages`.
fn newest_from_madison(text: &str) -> Option<String> {
    text.lines().find_map(|l| {
        let mut cols = l.split('|').map(str::trim);
        let (_pkg, version, from) = (cols.next()?, cols.next()?, cols.next()?);
        from.split_whitespace()
            .any(|w| w.starts_with(&format!("{SUITE}/")))
            .then(|| version.to_string())
    })
}

#[cfg(test)]
mod tests {
    use super::newest_from_madison;

    #[test]
    fn the_backport_line_gives_the_version() {
        let text = "qemu-system-x86 | 1:10.0.2+ds-2+deb13u1~bpo12+1 | http://deb.debian.org/debian bookworm-backports/main amd64 Packages\n\
                    qemu-system-x86 | 1:7.2+dfsg-7+deb12u18+b3 | http://deb.debian.org/debian bookworm/main amd64 Packages\n";
        assert_eq!(
            newest_from_madison(text).as_deref(),
            Some("1:10.0.2+ds-2+deb13u1~bpo12+1")
        );
    }

    #[test]
    fn other_suites_and_junk_give_nothing() {
        let text = "qemu-system-x86 | 1:7.2+dfsg-7+deb12u18+b3 | http://deb.debian.org/debian bookworm/main amd64 Packages\n\
                    garbage\n";
        assert_eq!(newest_from_madison(text), None);
        assert_eq!(newest_from_madison(""), None);
    }
}
