//! Boots the lab (QEMU TCG with emulated AMD SVM) and runs one command in
//! it, in the host's own root file system (moved over / in a mount
//! namespace of its own: see `MOVE_ROOT`).
//!
//! The host shares `/` over 9p, writable, with `security_model=none`: the
//! command is one the caller could run directly, and on a Hardware host it
//! does, with the caller's rights; QEMU runs as the caller, so the lab can
//! write exactly what the caller can. (Read-only `/` plus writable shares
//! would need us to guess every path a test writes: target/, ~/.cache, ...)
//!
//! A per-run control directory is a second, uncached 9p share. The command
//! writes to pipes whose relays in the lab copy stdout and stderr into
//! files there, and we tail those files: 9p writes are synchronous, so
//! nothing is lost when the lab powers off, and the streams stay separate
//! and untouched (no CR, no kernel messages). Measured alternatives: an
//! 8250 serial port moves ~0.7 MB/s (9p: 2.7 MB in 0.04 s); virtio-serial
//! is fast, but QEMU drops bytes still queued at power-off when the reader
//! is slow, and a port can be opened only once (`>/dev/stderr` fails).
//! The kernel console goes to a log file shown only when the lab fails.

use crate::assets::{self, Assets};
use crate::heartbeat::Pulse;
use crate::host::{self, tail_lines};
use crate::{LabError, LabOptions};
use std::collections::BTreeMap;
use std::ffi::{OsStr, OsString};
use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::DirBuilderExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// How often the output files are tailed: live enough for a human, cheap.
const POLL: Duration = Duration::from_millis(10);
/// A heartbeat gap this long is worth a line on stderr: the lab was
/// starved or nearly frozen.
const NOTABLE_GAP: Duration = Duration::from_secs(10);
/// A tmpfs inside the lab (made by init.sh), the command's TMPDIR.
const LAB_TMPDIR: &str = "/run/lab-tmp";

/// Runs inside the host's root, by the host's /bin/sh (busybox chroot always
/// starts in /): enter the caller's directory, then become the command.
/// Not busybox sh: Debian's busybox-static prefers its applets, so `exec ls`
/// would run busybox ls instead of the host's.
const ENTER: &str = r#"cd -- "$1" || exit 127; shift; exec "$@""#;

/// Runs first, by the initramfs's busybox sh in a mount namespace of its
/// own (`unshare -m`): makes the host's root the root of that namespace,
/// as switch_root does (move it over /, chroot into it), then runs ENTER
/// (its first argument) there. Not a plain chroot: the kernel refuses user
/// namespaces to a chrooted process, and passt, the guest network's
/// backend, sandboxes itself in one.
const MOVE_ROOT: &str = r#"e=$1; shift; mount --make-rprivate / && cd /host && mount --move . / && exec chroot . /bin/sh -c "$e" sh "$@""#;

pub(crate) fn run(
    argv: &[OsString],
    opts: &LabOptions,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<i32, LabError> {
    let cwd = crate::working_dir(opts)?;
    // These are fresh tmpfs inside the lab, so the command could not start.
    if ["/run", "/dev/shm"].iter().any(|p| cwd.starts_with(p)) {
        return Err(LabError::CwdHidden(cwd));
    }
    let tools = host::ensure_tools()?;
    let assets = assets::ensure(&tools)?;
    clean_stale_run_dirs();
    let run = RunDir::create()?;
    let ctl = run.path.join("ctl");
    write_file(&ctl.join("cmd.sh"), &command_script(argv, &cwd, &opts.env))?;
    for f in ["stdout", "stderr"] {
        write_file(&ctl.join(f), b"")?;
    }
    let shares = checked_shares(&opts.shares)?;
    write_file(&ctl.join("shares"), &shares_list(&shares))?;

    let log =
        File::create(run.path.join("qemu.log")).map_err(LabError::io("cannot create qemu.log"))?;
    let log2 = log
        .try_clone()
        .map_err(LabError::io("cannot dup qemu.log"))?;
    let mut cmd = Command::new(&assets.qemu.binary);
    cmd.args(qemu_args(&assets, &run.path, opts, &shares))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    kill_with_parent(&mut cmd);
    let child = cmd.spawn().map_err(LabError::io(format!(
        "cannot start {}",
        assets.qemu.binary.display()
    )))?;
    let mut qemu = Qemu(child);

    let mut fout =
        File::open(ctl.join("stdout")).map_err(LabError::io("cannot open the lab's stdout"))?;
    let mut ferr =
        File::open(ctl.join("stderr")).map_err(LabError::io("cannot open the lab's stderr"))?;
    let deadline = opts.timeout.map(|t| Instant::now() + t);
    let mut pulse = Pulse::new(ctl.join("heartbeat"), opts.freeze_after);
    let status = loop {
        // Wait first, copy second: after an exit, the copy sees everything.
        let exited = qemu
            .0
            .try_wait()
            .map_err(LabError::io("cannot wait for QEMU"))?;
        forward(&mut fout, out)?;
        forward(&mut ferr, err)?;
        if let Some(status) = exited {
            break status;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            qemu.kill();
            forward(&mut fout, out)?;
            forward(&mut ferr, err)?;
            return Err(LabError::Timeout {
                secs: opts.timeout.unwrap_or_default().as_secs(),
                console: run.console_tail(),
            });
        }
        if let Some(stopped) = pulse.check() {
            qemu.kill();
            forward(&mut fout, out)?;
            forward(&mut ferr, err)?;
            return Err(stopped.into_error(run.console_tail()));
        }
        std::thread::sleep(POLL);
    };
    let (beats, gap) = pulse.summary();
    if gap >= NOTABLE_GAP || std::env::var_os("SUPERMACHINE_LAB_VERBOSE").is_some() {
        eprintln!(
            "supermachine-lab: {beats} heartbeats, the longest gap {:.1}s (frozen after {}s)",
            gap.as_secs_f64(),
            opts.freeze_after.as_secs()
        );
    }

    match fs::read_to_string(ctl.join("exit"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        Some(code) => Ok(code),
        None => Err(LabError::NoExitCode {
            status: format!("QEMU {status}"),
            console: run.console_tail(),
        }),
    }
}

/// Copies what the file gained since the last call.
fn forward(from: &mut File, to: &mut dyn Write) -> Result<(), LabError> {
    let mut buf = [0u8; 64 * 1024];
    loop {
        let n = from
            .read(&mut buf)
            .map_err(LabError::io("cannot read the lab's output"))?;
        if n == 0 {
            return to
                .flush()
                .map_err(LabError::io("cannot write the command's output"));
        }
        to.write_all(&buf[..n])
            .map_err(LabError::io("cannot write the command's output"))?;
    }
}

/// The 9p tag of the `i`th uncached share.
fn share_tag(i: usize) -> String {
    format!("labshare{i}")
}

/// The shares as absolute, resolved directory paths that init.sh can read
/// back from a line each.
fn checked_shares(shares: &[PathBuf]) -> Result<Vec<PathBuf>, LabError> {
    shares
        .iter()
        .map(|p| {
            let bad = |why| LabError::BadShare {
                path: p.clone(),
                why,
            };
            let real = fs::canonicalize(p).map_err(|_| bad("it does not exist"))?;
            if !real.is_dir() {
                return Err(bad("it is not a directory"));
            }
            if real == Path::new("/") {
                return Err(bad("the root is already shared"));
            }
            let bytes = real.as_os_str().as_bytes();
            if bytes.contains(&b'\n') || bytes.last().is_some_and(u8::is_ascii_whitespace) {
                return Err(bad("its path has a newline or ends in white space"));
            }
            Ok(real)
        })
        .collect()
}

/// `ctl/shares`: a line per share, its tag and its path, for init.sh.
fn shares_list(shares: &[PathBuf]) -> Vec<u8> {
    let mut list = Vec::new();
    for (i, path) in shares.iter().enumerate() {
        list.extend_from_slice(share_tag(i).as_bytes());
        list.push(b' ');
        list.extend_from_slice(path.as_os_str().as_bytes());
        list.push(b'\n');
    }
    list
}

/// QEMU's TCG accelerator options: one host thread per lab vCPU unless
/// `SUPERMACHINE_LAB_TCG=single` asks for one thread for all of them.
fn tcg_accel() -> OsString {
    match std::env::var("SUPERMACHINE_LAB_TCG").as_deref() {
        Ok("single") => "tcg,thread=single".into(),
        _ => "tcg".into(),
    }
}

fn qemu_args(assets: &Assets, run: &Path, opts: &LabOptions, shares: &[PathBuf]) -> Vec<OsString> {
    let mut a: Vec<OsString> = Vec::new();
    let mut push = |parts: &[&OsStr]| a.extend(parts.iter().map(|p| p.to_os_string()));
    let s = |x: &'static str| OsStr::new(x);
    push(&[s("-accel"), &tcg_accel(), s("-M")]);
    push(&[s("q35"), s("-cpu"), s("EPYC,+svm,+npt")]);
    let smp = OsString::from(opts.cpus.max(1).to_string());
    let mem = OsString::from(opts.memory_mib.max(256).to_string());
    push(&[s("-smp"), &smp, s("-m"), &mem]);
    // No default devices, no config files, no display, and exit (not
    // reboot) on a kernel panic (panic=-1 reboots at once).
    push(&[
        s("-nodefaults"),
        s("-no-user-config"),
        s("-display"),
        s("none"),
        s("-no-reboot"),
    ]);
    // A network card on QEMU's user network, cut off from the outside
    // (restrict=on): the lab's tests of the guest network need an
    // interface with a default route, and nothing more.
    push(&[s("-nic"), s("user,model=virtio-net-pci,restrict=on")]);
    if let Some(dir) = &assets.qemu.data_dir {
        push(&[s("-L"), dir.as_os_str()]);
    }
    if let Some(q) = &assets.qemu.qboot {
        push(&[s("-bios"), q.as_os_str()]);
    }
    push(&[
        s("-kernel"),
        assets.kernel.as_os_str(),
        s("-initrd"),
        assets.initramfs.as_os_str(),
    ]);
    // mitigations=off: a throwaway test machine, and TCG pays for every
    // retpoline and buffer clear.
    push(&[
        s("-append"),
        s("console=ttyS0 quiet panic=-1 mitigations=off"),
    ]);
    let console = opt_value("file,id=console,path=", &run.join("console.log"));
    push(&[s("-chardev"), &console, s("-serial"), s("chardev:console")]);
    // multidevs=remap: / spans several host file systems; without it their
    // inode numbers could collide inside the lab.
    let root = s("local,path=/,mount_tag=hostroot,security_model=none,multidevs=remap");
    let ctl = opt_value(
        "local,mount_tag=labctl,security_model=none,path=",
        &run.join("ctl"),
    );
    push(&[s("-virtfs"), root, s("-virtfs"), &ctl]);
    for (i, path) in shares.iter().enumerate() {
        let prefix = format!("local,mount_tag={},security_model=none,path=", share_tag(i));
        let share = opt_value(&prefix, path);
        push(&[s("-virtfs"), &share]);
    }
    a
}

/// `prefix` followed by `path` with commas doubled, QEMU's option escaping.
fn opt_value(prefix: &str, path: &Path) -> OsString {
    let mut v = prefix.as_bytes().to_vec();
    for &b in path.as_os_str().as_bytes() {
        v.push(b);
        if b == b',' {
            v.push(b',');
        }
    }
    OsStr::from_bytes(&v).to_os_string()
}

/// The script the lab's init runs: the caller's environment (plus
/// `extra`, SUPERMACHINE_IN_LAB=1 and a tmpfs TMPDIR) and nothing else, then the command in
/// `cwd` inside the host's root.
pub(crate) fn command_script(
    argv: &[OsString],
    cwd: &Path,
    extra: &[(OsString, OsString)],
) -> Vec<u8> {
    let mut env: BTreeMap<OsString, OsString> = std::env::vars_os().collect();
    env.extend(extra.iter().cloned());
    env.insert("SUPERMACHINE_IN_LAB".into(), "1".into());
    // Temporary files and Unix sockets need a local file system, not 9p.
    env.insert("TMPDIR".into(), LAB_TMPDIR.into());
    let mut s = b"exec env -i".to_vec();
    for (k, v) in &env {
        if k.is_empty() || k.as_bytes().contains(&b'=') {
            continue;
        }
        let mut kv = k.as_bytes().to_vec();
        kv.push(b'=');
        kv.extend_from_slice(v.as_bytes());
        s.push(b' ');
        s.extend(quote(&kv));
    }
    s.extend_from_slice(b" unshare -m /bin/sh -c ");
    s.extend(quote(MOVE_ROOT.as_bytes()));
    s.extend_from_slice(b" sh ");
    s.extend(quote(ENTER.as_bytes()));
    s.push(b' ');
    s.extend(quote(cwd.as_os_str().as_bytes()));
    for arg in argv {
        s.push(b' ');
        s.extend(quote(arg.as_bytes()));
    }
    s.push(b'\n');
    s
}

/// Single-quotes bytes for sh: everything inside '...' is literal, a quote
/// is closed, escaped and reopened. Safe for any byte but NUL, which
/// neither arguments nor environment can contain.
pub(crate) fn quote(bytes: &[u8]) -> Vec<u8> {
    let mut q = vec![b'\''];
    for &b in bytes {
        if b == b'\'' {
            q.extend_from_slice(b"'\\''");
        } else {
            q.push(b);
        }
    }
    q.push(b'\'');
    q
}

/// QEMU dies with us, even if we are SIGKILLed: PR_SET_PDEATHSIG.
fn kill_with_parent(cmd: &mut Command) {
    // SAFETY: getpid is always safe.
    let parent = unsafe { libc::getpid() };
    // SAFETY: the hook runs between fork and exec and only makes
    // async-signal-safe calls (prctl, getppid, _exit).
    unsafe { cmd.pre_exec(move || die_with(parent)) };
}

/// In the forked child: asks for SIGKILL when `parent` goes, and ends at
/// once if it is gone already. Async-signal-safe calls only.
fn die_with(parent: libc::pid_t) -> io::Result<()> {
    // SAFETY: PR_SET_PDEATHSIG takes a plain signal number, no memory.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL as libc::c_ulong) } != 0 {
        return Err(io::Error::last_os_error());
    }
    // We may have died before prctl took effect.
    // SAFETY: getppid has no preconditions.
    if unsafe { libc::getppid() } != parent {
        // SAFETY: _exit takes a plain integer and ends the process.
        unsafe { libc::_exit(1) };
    }
    Ok(())
}

/// Kills QEMU if we leave early (error, panic, timeout).
struct Qemu(Child);

impl Qemu {
    fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            self.kill();
        }
    }
}

const RUN_PREFIX: &str = "supermachine-lab-";

/// A private host temp dir for one run, removed on drop. It holds the
/// command (with the caller's environment, hence 0700), its output, the
/// console log and QEMU's own messages.
struct RunDir {
    path: PathBuf,
}

impl RunDir {
    fn create() -> Result<RunDir, LabError> {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos();
        let path = std::env::temp_dir().join(format!("{RUN_PREFIX}{}-{nanos}", std::process::id()));
        let mut b = fs::DirBuilder::new();
        b.mode(0o700);
        b.create(&path)
            .and_then(|_| b.create(path.join("ctl")))
            .map_err(LabError::io(format!("cannot create {}", path.display())))?;
        Ok(RunDir { path })
    }

    /// The end of the console log and QEMU's messages, for error reports.
    fn console_tail(&self) -> String {
        let read = |f: &str| {
            String::from_utf8_lossy(&fs::read(self.path.join(f)).unwrap_or_default()).into_owned()
        };
        let log = read("console.log");
        let mut console = tail_lines(&log, 25);
        // A panic's stack trace can push its reason out of the tail.
        let reason = log
            .lines()
            .find(|l| l.contains("Kernel panic") || l.contains("supermachine-lab init:"));
        if let Some(r) = reason.filter(|r| !console.contains(*r)) {
            console = format!("{r}\n[...]\n{console}");
        }
        // TCG lists every EPYC feature it cannot emulate; that is expected.
        let qemu: String = read("qemu.log")
            .lines()
            .filter(|l| !l.contains("TCG doesn't support requested feature"))
            .map(|l| format!("{l}\n"))
            .collect();
        let mut s = String::new();
        if !console.trim().is_empty() {
            s.push_str(&format!(
                "\n--- last lines of the lab console ---\n{console}"
            ));
        }
        if !qemu.trim().is_empty() {
            s.push_str(&format!("\n--- QEMU said ---\n{}", tail_lines(&qemu, 10)));
        }
        s
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.path);
    }
}

/// Removes run dirs left by processes that were killed (no Drop ran).
fn clean_stale_run_dirs() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(RUN_PREFIX)
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<libc::pid_t>().ok())
        else {
            continue;
        };
        // SAFETY: kill with signal 0 only checks whether the process exists.
        let gone = unsafe { libc::kill(pid, 0) } != 0
            && io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH);
        if gone {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

fn write_file(path: &Path, data: &[u8]) -> Result<(), LabError> {
    fs::write(path, data).map_err(LabError::io(format!("cannot write {}", path.display())))
}
