//! The CLI around a running VM: start, ps, exec, cp, logs, stop; and
//! `run` with -t, -u and signals.

use crate::progress::trial;
use crate::util::{check, run, stdout, supermachine, TempDir};
use libtest_mimic::{Failed, Trial};
use std::io::{Read, Write};
use std::process::Stdio;
use std::time::{Duration, Instant};

pub fn trials() -> Vec<Trial> {
    vec![
        trial("cli::start_exec_cp_logs_stop", start_exec_cp_logs_stop),
        trial("cli::run_with_tty_and_user", run_with_tty_and_user),
        trial(
            "cli::ctrl_c_reaches_the_guest_process",
            ctrl_c_reaches_guest,
        ),
        trial("cli::ctrl_c_byte_in_a_tty_session", ctrl_c_byte_in_tty),
    ]
}

fn start_exec_cp_logs_stop() -> Result<(), Failed> {
    let started = run(&[
        "start",
        "--",
        "sh",
        "-c",
        "echo workload-says-hello; sleep 1000",
    ])?;
    check(started.status.success(), "start", &started)?;
    let id = stdout(&started).trim().to_string();
    check(!id.is_empty(), "start printed no id", &started)?;
    let result = with_started(&id);
    // Stop it whatever happened, so a failure leaves nothing running.
    let stopped = run(&["stop", &id])?;
    result?;
    check(stopped.status.success(), "stop", &stopped)?;
    let ps = run(&["ps"])?;
    check(
        !stdout(&ps).contains(&id),
        "ps still lists a stopped VM",
        &ps,
    )
}

fn with_started(id: &str) -> Result<(), Failed> {
    let ps = run(&["ps"])?;
    check(stdout(&ps).contains(id), "ps does not list the VM", &ps)?;

    let out = run(&["exec", id, "--", "sh", "-c", "echo in-vm; exit 7"])?;
    check(
        out.status.code() == Some(7) && stdout(&out) == "in-vm\n",
        "exec exit code and output",
        &out,
    )?;

    let dir = TempDir::new("cp");
    let src = dir.0.join("tree");
    std::fs::create_dir_all(src.join("sub"))?;
    let payload: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
    std::fs::write(src.join("sub/data.bin"), &payload)?;
    std::fs::write(src.join("top.txt"), "top\n")?;
    let up = run(&["cp", src.to_str().ok_or("path")?, &format!("{id}:/tmp")])?;
    check(up.status.success(), "cp to the guest", &up)?;
    let listing = run(&[
        "exec",
        id,
        "--",
        "sh",
        "-c",
        "cat /tmp/tree/top.txt; wc -c < /tmp/tree/sub/data.bin",
    ])?;
    check(
        stdout(&listing) == "top\n200000\n",
        "the tree arrived in the guest",
        &listing,
    )?;
    let back = dir.0.join("back");
    let down = run(&[
        "cp",
        &format!("{id}:/tmp/tree"),
        back.to_str().ok_or("path")?,
    ])?;
    check(down.status.success(), "cp from the guest", &down)?;
    if std::fs::read(back.join("sub/data.bin"))? != payload {
        return Err("the file copied back differs".into());
    }

    cp_from_a_hostile_guest(id, &dir.0)?;

    let logs = run(&["logs", id])?;
    check(
        stdout(&logs).contains("workload-says-hello"),
        "logs show the workload's output",
        &logs,
    )
}

/// A guest tree made to escape the host target (CVE-2018-15664 class): a
/// symlink where the copy used to put its partial file, pointing at a host
/// file outside the target, and a setuid file. The host file outside stays
/// as it was, and the copy has no setuid bit.
fn cp_from_a_hostile_guest(id: &str, host: &std::path::Path) -> Result<(), Failed> {
    use std::os::unix::fs::PermissionsExt;
    let victim = host.join("victim");
    std::fs::write(&victim, "host data\n")?;
    let script = format!(
        "mkdir -p /tmp/evil && cd /tmp/evil && echo guest-data > x && \
         ln -sf {} .x.supermachine-partial && \
         echo s > suid && chmod 4755 suid",
        victim.display()
    );
    let made = run(&["exec", id, "--", "sh", "-c", &script])?;
    check(made.status.success(), "making the hostile tree", &made)?;
    let out = host.join("evil-copy");
    let down = run(&[
        "cp",
        &format!("{id}:/tmp/evil"),
        out.to_str().ok_or("path")?,
    ])?;
    if std::fs::read_to_string(&victim)? != "host data\n" {
        return Err(
            "cp from the guest wrote through a guest symlink to a host file outside the target"
                .into(),
        );
    }
    check(down.status.success(), "cp of the hostile tree", &down)?;
    check(
        std::fs::read_to_string(out.join("x"))? == "guest-data\n",
        "the regular file arrived",
        &down,
    )?;
    let mode = std::fs::symlink_metadata(out.join("suid"))?
        .permissions()
        .mode();
    if mode & 0o7000 != 0 {
        return Err(format!("the copy kept the setuid bit (mode {mode:o})").into());
    }
    let link = std::fs::symlink_metadata(out.join(".x.supermachine-partial"))?;
    check(
        link.file_type().is_symlink(),
        "the guest symlink is copied as a symlink",
        &down,
    )
}

fn run_with_tty_and_user() -> Result<(), Failed> {
    let out = run(&["run", "-t", "-u", "nobody", "--", "sh", "-c", "tty; id -u"])?;
    let text = stdout(&out);
    check(
        out.status.success() && text.contains("/dev/pts/") && text.contains("65534"),
        "run -t -u nobody",
        &out,
    )
}

/// Without -t, SIGINT to the CLI is passed to the guest process.
fn ctrl_c_reaches_guest() -> Result<(), Failed> {
    let script = "trap 'echo got-int; exit 5' INT; echo ready; while :; do sleep 0.1; done";
    let mut cmd = supermachine();
    cmd.args(["run", "--", "sh", "-c", script]);
    interrupt_when_ready(cmd, |child| {
        // SAFETY: signalling our own child.
        unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    })
}

/// With -it, a Ctrl-C byte on stdin goes through the guest's terminal,
/// which turns it into SIGINT for the foreground process.
fn ctrl_c_byte_in_tty() -> Result<(), Failed> {
    let script = "trap 'echo got-int; exit 5' INT; echo ready; while :; do sleep 0.1; done";
    let mut cmd = supermachine();
    cmd.args(["run", "-it", "--", "sh", "-c", script]);
    interrupt_when_ready(cmd, |child| {
        if let Some(stdin) = child.stdin.as_mut() {
            let _ = stdin.write_all(&[0x03]);
            let _ = stdin.flush();
        }
    })
}

/// Starts `cmd`, waits for "ready" on its stdout, calls `interrupt`, and
/// expects the guest's trap to answer and exit 5.
fn interrupt_when_ready(
    mut cmd: std::process::Command,
    interrupt: impl FnOnce(&mut std::process::Child),
) -> Result<(), Failed> {
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut out = child.stdout.take().ok_or("stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut buf = [0u8; 4096];
        while let Ok(n) = out.read(&mut buf) {
            if n == 0 || tx.send(buf[..n].to_vec()).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + Duration::from_secs(120);
    let mut seen = Vec::new();
    let mut interrupt = Some(interrupt);
    loop {
        if Instant::now() > deadline {
            let _ = child.kill();
            return Err(format!(
                "no answer; output so far: {:?}",
                String::from_utf8_lossy(&seen)
            )
            .into());
        }
        if let Ok(chunk) = rx.recv_timeout(Duration::from_millis(100)) {
            seen.extend_from_slice(&chunk);
        }
        let text = String::from_utf8_lossy(&seen).into_owned();
        if text.contains("ready") {
            if let Some(f) = interrupt.take() {
                f(&mut child);
            }
        }
        if text.contains("got-int") {
            break;
        }
    }
    drop(child.stdin.take());
    let status = child.wait()?;
    if status.code() != Some(5) {
        return Err(format!(
            "exit {status:?}, output {:?}",
            String::from_utf8_lossy(&seen)
        )
        .into());
    }
    Ok(())
}
