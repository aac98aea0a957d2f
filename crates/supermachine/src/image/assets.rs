//! The pieces a VM boots from besides the kernel: the worker binary, the
//! guest agent, the initramfs built around the agent, and the default root
//! filesystem. Built artefacts are cached by content hash.
//!
//! ```no_run
//! # fn demo() -> Result<(), supermachine::Error> {
//! use supermachine::assets;
//! println!("worker {}", assets::worker_binary()?.display());
//! println!("initramfs {}", assets::initramfs()?.display());
//! # Ok(()) }
//! ```

use crate::error::Error;
use crate::hash::{self, Hasher};
use crate::paths;
use std::io::{BufWriter, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;

/// Finds a helper binary: `$ENV`, else next to the running executable,
/// else (for tests run from `target/<profile>/deps`) one directory up.
fn find_binary(name: &'static str, env: &'static str) -> Result<PathBuf, Error> {
    if let Some(p) = std::env::var_os(env) {
        return Ok(PathBuf::from(p));
    }
    let dir = paths::exe_dir().ok_or(Error::MissingBinary(name, env))?;
    [dir.join(name), dir.join("..").join(name)]
        .into_iter()
        .find(|p| p.is_file())
        .ok_or(Error::MissingBinary(name, env))
}

/// The worker binary that runs one VM: `$SUPERMACHINE_WORKER`, else next to this executable.
///
/// ```
/// # fn main() -> Result<(), supermachine::Error> {
/// std::env::set_var("SUPERMACHINE_WORKER", "/opt/supermachine/bin/supermachine-worker");
/// let worker = supermachine::assets::worker_binary()?;
/// assert_eq!(worker, std::path::Path::new("/opt/supermachine/bin/supermachine-worker"));
/// # Ok(()) }
/// ```
pub fn worker_binary() -> Result<PathBuf, Error> {
    find_binary("supermachine-worker", "SUPERMACHINE_WORKER")
}

/// The static guest agent. It has its own file name because cargo's normal
/// (dynamically linked) build of the agent lands next to our binaries as
/// `supermachine-agent`, and that one cannot run as PID 1 in an empty initramfs.
///
/// ```
/// # fn main() -> Result<(), supermachine::Error> {
/// std::env::set_var("SUPERMACHINE_AGENT", "/opt/supermachine/bin/supermachine-agent-static");
/// let agent = supermachine::assets::agent_binary()?;
/// assert!(agent.ends_with(supermachine::assets::AGENT_FILE_NAME));
/// # Ok(()) }
/// ```
pub fn agent_binary() -> Result<PathBuf, Error> {
    find_binary(AGENT_FILE_NAME, "SUPERMACHINE_AGENT")
}

/// Refuses an agent that needs a dynamic loader: as PID 1 in an empty
/// initramfs it could not even start. Checked once, when an initramfs is built.
fn require_static(agent: &Path) -> Result<(), Error> {
    let is_static =
        is_static_elf(agent).map_err(|e| Error::io(format!("reading {}", agent.display()), e))?;
    if is_static {
        Ok(())
    } else {
        Err(Error::AgentNotStatic {
            path: agent.to_path_buf(),
        })
    }
}

/// File name of the static agent next to the `supermachine` binary.
///
/// ```
/// use supermachine::{assets::AGENT_FILE_NAME, paths};
/// let agent = paths::exe_dir().expect("an executable").join(AGENT_FILE_NAME);
/// assert!(agent.ends_with("supermachine-agent-static"));
/// ```
pub const AGENT_FILE_NAME: &str = "supermachine-agent-static";

/// An ELF without a PT_INTERP program header needs no dynamic loader.
fn is_static_elf(path: &Path) -> std::io::Result<bool> {
    let data = std::fs::read(path)?;
    let u16_at = |o: usize| {
        data.get(o..o + 2)
            .map(|b| u16::from_le_bytes([b[0], b[1]]) as usize)
    };
    let u64_at = |o: usize| {
        data.get(o..o + 8)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let bad = || std::io::Error::other("not a 64-bit ELF executable");
    if data.get(..5) != Some(b"\x7fELF\x02") {
        return Err(bad());
    }
    let phoff = u64_at(0x20).ok_or_else(bad)? as usize;
    let (phentsize, phnum) = (u16_at(0x36).ok_or_else(bad)?, u16_at(0x38).ok_or_else(bad)?);
    const PT_INTERP: u32 = 3;
    for i in 0..phnum {
        let off = phoff + i * phentsize;
        let kind = data
            .get(off..off + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .ok_or_else(bad)?;
        if kind == PT_INTERP {
            return Ok(false);
        }
    }
    Ok(true)
}

/// Writes `path` atomically: build into a temporary sibling, then rename, so a
/// crash never leaves a half-written cache entry that looks complete.
fn write_atomically(
    path: &Path,
    fill: impl FnOnce(&Path) -> Result<(), Error>,
) -> Result<(), Error> {
    let dir = path.parent().unwrap_or(Path::new("."));
    paths::create_dir_all_mode(dir, paths::SHARED_DIR)
        .map_err(|e| Error::io(format!("creating {}", dir.display()), e))?;
    let tmp = dir.join(format!(
        ".{}.{}.tmp",
        path.file_name().and_then(|n| n.to_str()).unwrap_or("x"),
        std::process::id()
    ));
    let result = fill(&tmp).and_then(|()| {
        std::fs::rename(&tmp, path)
            .map_err(|e| Error::io(format!("renaming into {}", path.display()), e))
    });
    if result.is_err() {
        let _ = std::fs::remove_file(&tmp);
        let _ = std::fs::remove_dir_all(&tmp);
    }
    result
}

/// The initramfs: the agent as `/init` plus the mount points it needs.
///
/// ```no_run
/// # fn demo() -> Result<(), supermachine::Error> {
/// let cpio = supermachine::assets::initramfs()?;
/// assert!(cpio.extension().is_some_and(|ext| ext == "cpio"));
/// # Ok(()) }
/// ```
pub fn initramfs() -> Result<PathBuf, Error> {
    let agent = agent_binary()?;
    let digest = hash::file_digest(&agent)
        .map_err(|e| Error::io(format!("reading {}", agent.display()), e))?;
    let key = Hasher::new("initramfs-v1").field(digest.as_bytes()).short();
    let path = paths::cache_dir()
        .join("initramfs")
        .join(format!("{key}.cpio"));
    if path.is_file() {
        return Ok(path);
    }
    require_static(&agent)?;
    write_atomically(&path, |tmp| {
        let file = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(paths::SHARED_FILE)
            .open(tmp)
            .map_err(|e| Error::io(format!("creating {}", tmp.display()), e))?;
        let mut w = supermachine_initramfs::Writer::new(BufWriter::new(file));
        let io = |e| Error::io("writing the initramfs", e);
        for dir in ["dev", "proc", "sys", "tmp", "run", "mnt"] {
            w.dir(dir, 0o755).map_err(io)?;
        }
        w.char_device("dev/console", 0o600, 5, 1).map_err(io)?;
        w.char_device("dev/null", 0o666, 1, 3).map_err(io)?;
        w.file_from_path("init", 0o755, &agent).map_err(io)?;
        w.finish().map_err(io)?.flush().map_err(io)?;
        Ok(())
    })?;
    Ok(path)
}

const BUSYBOX: &str = "/bin/busybox";

/// The default root filesystem: Debian's busybox-static with its applets,
/// as an ext4 image. Lets `supermachine run -- CMD` work with no image at all.
///
/// ```no_run
/// # fn demo() -> Result<(), supermachine::Error> {
/// let ext4 = supermachine::assets::default_rootfs()?;
/// println!("{} ({} bytes)", ext4.display(), std::fs::metadata(&ext4).map_or(0, |m| m.len()));
/// # Ok(()) }
/// ```
pub fn default_rootfs() -> Result<PathBuf, Error> {
    let busybox = Path::new(BUSYBOX);
    if !busybox.is_file() {
        return Err(Error::MissingPackages {
            what: "the built-in root filesystem",
            packages: vec!["busybox-static".into()],
            // SAFETY: geteuid has no preconditions.
            as_root: unsafe { libc::geteuid() } == 0,
        });
    }
    let digest =
        hash::file_digest(busybox).map_err(|e| Error::io(format!("reading {BUSYBOX}"), e))?;
    let key = Hasher::new("default-rootfs-v1")
        .field(digest.as_bytes())
        .short();
    let path = paths::cache_dir()
        .join("rootfs")
        .join(format!("busybox-{key}.ext4"));
    if path.is_file() {
        return Ok(path);
    }
    write_atomically(&path, |tmp| build_busybox_rootfs(busybox, tmp))?;
    Ok(path)
}

fn build_busybox_rootfs(busybox: &Path, image: &Path) -> Result<(), Error> {
    let tree = image.with_extension("tree");
    let _ = std::fs::remove_dir_all(&tree);
    let io = |what: &str, e| Error::io(format!("building the default rootfs: {what}"), e);
    let result = (|| {
        for d in [
            "bin", "sbin", "usr/bin", "usr/sbin", "etc", "root", "tmp", "dev", "proc", "sys",
            "run", "mnt", "home",
        ] {
            std::fs::create_dir_all(tree.join(d)).map_err(|e| io(d, e))?;
        }
        std::fs::copy(busybox, tree.join("bin/busybox")).map_err(|e| io("copying busybox", e))?;
        let list = Command::new(busybox)
            .arg("--list-full")
            .output()
            .map_err(|e| io("busybox --list-full", e))?;
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            let link = tree.join(applet);
            if applet == "bin/busybox" || link.exists() {
                continue;
            }
            let depth = applet.matches('/').count();
            let target = format!("{}bin/busybox", "../".repeat(depth));
            std::os::unix::fs::symlink(target, &link).map_err(|e| io(applet, e))?;
        }
        let files = [
            ("etc/passwd", "root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/bin/false\n"),
            ("etc/group", "root:x:0:\nnogroup:x:65534:\n"),
            ("etc/hosts", "127.0.0.1 localhost\n::1 localhost\n"),
            ("etc/os-release", "NAME=\"supermachine busybox\"\nID=busybox\n"),
        ];
        for (name, content) in files {
            std::fs::write(tree.join(name), content).map_err(|e| io(name, e))?;
        }
        let status = Command::new("mkfs.ext4")
            .args([
                "-q",
                "-F",
                "-O",
                "^has_journal",
                "-E",
                "root_owner=0:0",
                "-L",
                "rootfs",
                "-d",
            ])
            .arg(&tree)
            .arg(image)
            .arg("32M")
            .stdout(std::process::Stdio::null())
            .status()
            .map_err(|e| io("running mkfs.ext4 (apt-get install e2fsprogs)", e))?;
        if !status.success() {
            return Err(Error::ToolFailed {
                tool: "mkfs.ext4",
                status: status.to_string(),
                hint: None,
            });
        }
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&tree);
    result
}
