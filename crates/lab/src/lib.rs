//! The lab: run a command where /dev/kvm is hardware-style KVM.
//!
//! On a host with VMX/SVM the command simply runs. On a host whose
//! /dev/kvm cannot boot an ordinary guest (PVM) or that has none, the lab
//! boots a QEMU TCG machine with emulated AMD SVM (a stock Debian kernel
//! plus `kvm-amd`), shares the host's `/` into it over 9p and runs the
//! command there, with the host root as its root, with the same working directory, environment
//! and absolute paths, so host-built binaries run unchanged. Everything in
//! the lab is emulated and slow: compare ratios from one run, never
//! absolute times. See `shared/LAB.md` for the measurements behind it.
//!
//! ```no_run
//! let opts = supermachine_lab::LabOptions::default();
//! let r = supermachine_lab::run_captured(&["sh".into(), "-c".into(), "ls -l /dev/kvm".into()], &opts)?;
//! assert_eq!(r.code, 0);
//! # Ok::<(), supermachine_lab::LabError>(())
//! ```

#![warn(missing_docs)]

mod assets;
mod error;
mod heartbeat;
mod host;
mod kernel;
mod qemu;
mod vm;

pub use error::LabError;
pub use host::ensure_packages;
pub use supermachine_kvmhost::{detect, explain, KvmHost};

use std::ffi::OsString;
use std::io::{self, Read};
use std::path::PathBuf;
use std::process::{Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How to run a command through [`run`] or [`run_captured`].
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// Memory of the lab machine, in MiB (it must hold the microVMs that
    /// tests start inside it). Unused on a Hardware host.
    pub memory_mib: u32,
    /// vCPUs of the lab machine. Unused on a Hardware host.
    pub cpus: u32,
    /// Kill the command (and the lab) after this long.
    pub timeout: Option<Duration>,
    /// Set on top of the caller's environment.
    pub env: Vec<(OsString, OsString)>,
    /// Working directory; the caller's by default. Inside the lab it must
    /// not be under /run or /dev/shm (fresh tmpfs there); /tmp is the
    /// host's, and TMPDIR points at a tmpfs inside the lab.
    pub cwd: Option<PathBuf>,
    /// Host directories the lab sees uncached, at the same absolute path:
    /// what the command writes there reaches the host before the write
    /// returns, so it survives a lab that freezes or crashes (the rest of
    /// the host's files are shared with caching). Unused on a Hardware host.
    pub shares: Vec<PathBuf>,
    /// A lab whose heartbeat (a counter its init rewrites every second)
    /// stands still this long is frozen: it is killed and [`run`] returns
    /// [`LabError::Frozen`]. A slow lab keeps beating, so this is not a
    /// time limit on the command (that is [`Self::timeout`]). Default 60 s,
    /// `SUPERMACHINE_LAB_FREEZE_SECS` to change it.
    pub freeze_after: Duration,
}

/// Lab vCPUs for the test suites: one unless `SUPERMACHINE_LAB_CPUS` says
/// otherwise. With two, QEMU's emulation of nested SVM (one host thread per
/// lab vCPU) now and then runs the microVM with the lab kernel's own page
/// tables and instruction pointer: the microVM triple-faults or loops on a
/// nested page fault at an address outside its memory, and the lab kernel
/// itself can die of recursive faults (traced on 2026-12-07, see the
/// README). With one vCPU none of that has been seen.
pub fn test_cpus() -> u32 {
    std::env::var("SUPERMACHINE_LAB_CPUS")
        .ok()
        .and_then(|s| s.parse().ok())
        .filter(|&n| n > 0)
        .unwrap_or(1)
}

/// The default of [`LabOptions::freeze_after`].
fn freeze_after_from_env() -> Duration {
    let secs = std::env::var("SUPERMACHINE_LAB_FREEZE_SECS")
        .ok()
        .and_then(|s| s.parse::<u64>().ok())
        .unwrap_or(60);
    // Below a few seconds a busy host's scheduling alone would trip it.
    Duration::from_secs(secs.max(10))
}

impl Default for LabOptions {
    fn default() -> Self {
        LabOptions {
            memory_mib: 4096,
            cpus: 2,
            timeout: None,
            env: Vec::new(),
            cwd: None,
            shares: Vec::new(),
            freeze_after: freeze_after_from_env(),
        }
    }
}

/// A finished command's exit code and output, from [`run_captured`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Captured {
    /// The exit code, as [`run`] would have returned it.
    pub code: i32,
    /// Everything the command wrote to stdout, byte for byte.
    pub stdout: Vec<u8>,
    /// Everything the command wrote to stderr, kept apart from stdout.
    pub stderr: Vec<u8>,
}

/// Runs `argv` with hardware-style KVM and returns its exit code (128 + N
/// when a signal N killed it on a Hardware host, as shells report it). Its
/// stdout and stderr stream to ours; stdin is inherited on a Hardware host
/// and /dev/null in the lab.
pub fn run(argv: &[OsString], opts: &LabOptions) -> Result<i32, LabError> {
    dispatch(argv, opts, None)
}

/// Like [`run`], but collects stdout and stderr (stdin is /dev/null).
pub fn run_captured(argv: &[OsString], opts: &LabOptions) -> Result<Captured, LabError> {
    let mut c = Captured::default();
    c.code = dispatch(argv, opts, Some((&mut c.stdout, &mut c.stderr)))?;
    Ok(c)
}

/// Installs the lab's packages and builds its kernel and initramfs now
/// (they are otherwise built by the first [`run`] that needs them), e.g. for
/// a CI cache step. Returns the cache directory.
pub fn prepare() -> Result<PathBuf, LabError> {
    let tools = host::ensure_tools()?;
    assets::ensure(&tools)?;
    assets::cache_dir()
}

type Sinks<'a> = Option<(&'a mut Vec<u8>, &'a mut Vec<u8>)>;

fn dispatch(argv: &[OsString], opts: &LabOptions, capture: Sinks<'_>) -> Result<i32, LabError> {
    if argv.is_empty() {
        return Err(LabError::NoCommand);
    }
    if detect() == KvmHost::Hardware {
        return run_direct(argv, opts, capture);
    }
    match capture {
        Some((out, err)) => vm::run(argv, opts, out, err),
        None => vm::run(argv, opts, &mut io::stdout(), &mut io::stderr()),
    }
}

/// The working directory the command gets: absolute, as on the host.
pub(crate) fn working_dir(opts: &LabOptions) -> Result<PathBuf, LabError> {
    let cwd = match &opts.cwd {
        Some(d) => d.clone(),
        None => {
            std::env::current_dir().map_err(LabError::io("cannot get the current directory"))?
        }
    };
    std::path::absolute(&cwd).map_err(LabError::io(format!("cannot resolve {}", cwd.display())))
}

/// Hardware host: no lab, the command runs here.
fn run_direct(argv: &[OsString], opts: &LabOptions, capture: Sinks<'_>) -> Result<i32, LabError> {
    let mut cmd = Command::new(&argv[0]);
    cmd.args(&argv[1..])
        .envs(opts.env.iter().map(|(k, v)| (k, v)));
    cmd.current_dir(working_dir(opts)?);
    if capture.is_some() {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
    }
    let name = argv[0].to_string_lossy();
    let mut child = cmd
        .spawn()
        .map_err(LabError::io(format!("cannot run {name}")))?;
    // Readers run in threads so a full pipe never blocks the child.
    let drain = |r: Option<Box<dyn Read + Send>>| {
        r.map(|mut r| {
            std::thread::spawn(move || {
                let mut v = Vec::new();
                let _ = r.read_to_end(&mut v);
                v
            })
        })
    };
    let out = drain(child.stdout.take().map(|r| Box::new(r) as _));
    let err = drain(child.stderr.take().map(|r| Box::new(r) as _));
    let deadline = opts.timeout.map(|t| Instant::now() + t);
    let status = loop {
        if let Some(s) = child
            .try_wait()
            .map_err(LabError::io(format!("cannot wait for {name}")))?
        {
            break s;
        }
        if deadline.is_some_and(|d| Instant::now() >= d) {
            let _ = child.kill();
            let _ = child.wait();
            return Err(LabError::Timeout {
                secs: opts.timeout.unwrap_or_default().as_secs(),
                console: String::new(),
            });
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    if let Some((o, e)) = capture {
        *o = out
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default();
        *e = err
            .map(|t| t.join().unwrap_or_default())
            .unwrap_or_default();
    }
    Ok(exit_code(status))
}

fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .unwrap_or_else(|| 128 + status.signal().unwrap_or(0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::ffi::OsStrExt;

    fn argv(a: &[&str]) -> Vec<OsString> {
        a.iter().map(OsString::from).collect()
    }

    /// The Hardware path, which this (PVM) development host never takes.
    #[test]
    fn direct_run_captures_streams_code_and_env() {
        let opts = LabOptions {
            env: vec![("LAB_TEST_VAR".into(), "v a l".into())],
            ..LabOptions::default()
        };
        let script = r#"echo "out $LAB_TEST_VAR"; echo err >&2; exit 3"#;
        let mut out = Vec::new();
        let mut err = Vec::new();
        let code = run_direct(
            &argv(&["sh", "-c", script]),
            &opts,
            Some((&mut out, &mut err)),
        )
        .unwrap();
        assert_eq!(
            (code, &out[..], &err[..]),
            (3, &b"out v a l\n"[..], &b"err\n"[..])
        );
    }

    #[test]
    fn direct_run_honours_timeout_and_reports_signals() {
        let opts = LabOptions {
            timeout: Some(Duration::from_millis(200)),
            ..LabOptions::default()
        };
        let r = run_direct(&argv(&["sleep", "10"]), &opts, None);
        assert!(matches!(r, Err(LabError::Timeout { .. })), "{r:?}");
        let code = run_direct(
            &argv(&["sh", "-c", "kill -9 $$"]),
            &LabOptions::default(),
            None,
        );
        assert_eq!(code.unwrap(), 128 + 9);
    }

    /// The lab passes argv and environment through a shell script: every
    /// byte must survive sh's parsing.
    #[test]
    fn quoting_survives_sh() {
        let nasty: &[&[u8]] = &[
            b"",
            b"plain",
            b"it's",
            b"'",
            b"a\nb\tc",
            b"$HOME `id` \\ \"",
            b"\xff\xfe-not-utf8",
        ];
        for s in nasty {
            let mut script = b"printf %s ".to_vec();
            script.extend(vm::quote(s));
            let out = Command::new("sh")
                .arg("-c")
                .arg(std::ffi::OsStr::from_bytes(&script))
                .output()
                .unwrap();
            assert_eq!(&out.stdout, s, "{}", String::from_utf8_lossy(s));
        }
    }
}
