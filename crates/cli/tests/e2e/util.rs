//! Running the `supermachine` binary the way a user does, with a watchdog.
//!
//! The lab is QEMU emulating AMD SVM in software, running our VMs nested
//! under its KVM. Very rarely (about once in 150 boots seen so far) that
//! stack stalls with the emulated CPUs busy and nothing progressing. A
//! stalled command is killed after [`stall_timeout`], reported with what
//! every supermachine process was doing, and run once more. A second stall
//! inside the lab means the lab itself went bad (once it stalls, later
//! tests stall too): the whole test process exits with [`LAB_WENT_BAD`]
//! and the harness runs the suite again in a fresh lab, as after a lab
//! crash; on its last attempt that is a failure. Elsewhere a second stall
//! fails the test. Wrong results are never retried.

use libtest_mimic::Failed;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

/// How long a test waits for something that takes a second or two on an
/// idle host (a process to die, a file to appear, a VM to be gone): long
/// enough for a lab running several times slower on a busy host. Only a
/// broken test ever waits it out.
pub const PATIENCE: Duration = Duration::from_secs(120);

/// Exit code of a test process whose lab went bad (see above).
pub const LAB_WENT_BAD: i32 = 75;

/// `SUPERMACHINE_E2E_STALL_SECS` overrides it (to exercise the watchdog).
fn stall_timeout() -> Duration {
    let secs = std::env::var("SUPERMACHINE_E2E_STALL_SECS")
        .ok()
        .and_then(|s| s.parse().ok());
    Duration::from_secs(secs.unwrap_or(90))
}

pub fn supermachine() -> Command {
    Command::new(env!("CARGO_BIN_EXE_supermachine"))
}

/// Runs `supermachine ARGS` to completion.
pub fn run(args: &[&str]) -> Result<Output, Failed> {
    let mut cmd = supermachine();
    cmd.args(args);
    output_of(cmd, None)
}

/// Runs `cmd` to completion, feeding it `input` on stdin when given.
pub fn output_of(mut cmd: Command, input: Option<Vec<u8>>) -> Result<Output, Failed> {
    for attempt in 1..=2 {
        match run_bounded(&mut cmd, input.clone()) {
            Ok(out) => return Ok(out),
            Err(diagnostics) => eprintln!(
                "e2e: STALL: {cmd:?} made no progress for {}s (attempt {attempt} of 2); what was running:\n{diagnostics}",
                stall_timeout().as_secs()
            ),
        }
    }
    if std::env::var_os("SUPERMACHINE_IN_LAB").is_some() {
        eprintln!("e2e: {cmd:?} stalled twice: the lab went bad");
        std::process::exit(LAB_WENT_BAD);
    }
    Err(format!("{cmd:?} stalled twice; see the diagnostics above").into())
}

fn run_bounded(cmd: &mut Command, input: Option<Vec<u8>>) -> Result<Output, String> {
    cmd.stdin(if input.is_some() {
        Stdio::piped()
    } else {
        Stdio::null()
    })
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| format!("spawn: {e}"))?;
    let writer = child.stdin.take().zip(input).map(|(mut stdin, data)| {
        std::thread::spawn(move || {
            use std::io::Write;
            // The guest may finish before reading everything; not an error here.
            let _ = stdin.write_all(&data);
        })
    });
    let collect = |pipe: Option<Box<dyn Read + Send>>| {
        std::thread::spawn(move || {
            let mut buf = Vec::new();
            if let Some(mut p) = pipe {
                let _ = p.read_to_end(&mut buf);
            }
            buf
        })
    };
    let out = collect(
        child
            .stdout
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let err = collect(
        child
            .stderr
            .take()
            .map(|p| Box::new(p) as Box<dyn Read + Send>),
    );
    let deadline = Instant::now() + stall_timeout();
    let status = loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            break status;
        }
        if Instant::now() > deadline {
            let diagnostics = diagnostics();
            // Its worker follows (parent-death signal).
            let _ = child.kill();
            let _ = child.wait();
            return Err(diagnostics);
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    if let Some(w) = writer {
        let _ = w.join();
    }
    Ok(Output {
        status,
        stdout: out.join().unwrap_or_default(),
        stderr: err.join().unwrap_or_default(),
    })
}

/// Every supermachine process and thread: state and kernel wait channel,
/// plus the end of the newest serial log.
fn diagnostics() -> String {
    let mut report = String::new();
    let read = |p: PathBuf| {
        std::fs::read_to_string(p)
            .unwrap_or_default()
            .trim()
            .to_string()
    };
    for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
        let proc_dir = entry.path();
        let comm = read(proc_dir.join("comm"));
        if !comm.starts_with("supermachine") {
            continue;
        }
        report += &format!(
            "  pid {} {}\n",
            entry.file_name().to_string_lossy(),
            read(proc_dir.join("cmdline")).replace('\0', " ")
        );
        for task in std::fs::read_dir(proc_dir.join("task"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let stat = read(task.path().join("stat"));
            let state = stat
                .rsplit(')')
                .next()
                .and_then(|s| s.split_whitespace().next())
                .unwrap_or("?")
                .to_string();
            report += &format!(
                "    thread {} {} state {state} wchan {}\n",
                task.file_name().to_string_lossy(),
                read(task.path().join("comm")),
                read(task.path().join("wchan"))
            );
        }
    }
    if let Some(log) = newest_serial_log() {
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let tail: Vec<&str> = text.lines().rev().take(15).collect();
        report += &format!("  newest serial log {}:\n", log.display());
        for line in tail.into_iter().rev() {
            report += &format!("    | {line}\n");
        }
    }
    report
}

fn newest_serial_log() -> Option<PathBuf> {
    let home = std::env::var_os("HOME")?;
    let dir = Path::new(&home).join(".local/state/supermachine/logs");
    std::fs::read_dir(dir)
        .ok()?
        .flatten()
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .max()
        .map(|(_, p)| p)
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("sm-e2e-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Fails with the process's output when `cond` is false.
pub fn check(cond: bool, what: &str, o: &Output) -> Result<(), Failed> {
    if cond {
        Ok(())
    } else {
        Err(format!(
            "{what}\nstatus: {:?}\nstdout: {}\nstderr: {}",
            o.status,
            stdout(o),
            stderr(o)
        )
        .into())
    }
}
