//! Boot, exec, SMP, devices, and the ways a VM ends.

use crate::util::{check, run, stderr, stdout, supermachine, TempDir};
use libtest_mimic::{Failed, Trial};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

pub fn trials() -> Vec<Trial> {
    vec![
        Trial::test("boot::exit_code_and_output", exit_code_and_output),
        Trial::test("boot::smp_guest_sees_every_vcpu", smp_guest_sees_every_vcpu),
        Trial::test(
            "boot::stdout_and_stderr_are_separate",
            stdout_and_stderr_are_separate,
        ),
        Trial::test("boot::missing_program_is_127", missing_program_is_127),
        Trial::test(
            "boot::rootfs_is_read_only_under_a_writable_overlay",
            rootfs_overlay,
        ),
        Trial::test(
            "boot::virtio_rng_feeds_the_guest",
            virtio_rng_feeds_the_guest,
        ),
        Trial::test(
            "boot::guest_poweroff_is_a_clean_end",
            guest_poweroff_is_a_clean_end,
        ),
        Trial::test(
            "boot::kernel_panic_is_reported_with_the_serial_log",
            kernel_panic_is_reported,
        ),
        Trial::test(
            "boot::killing_the_cli_leaves_nothing_behind",
            killing_the_cli_leaves_nothing_behind,
        ),
    ]
}

fn exit_code_and_output() -> Result<(), Failed> {
    let o = run(&["run", "--", "sh", "-c", "echo hi; exit 3"]);
    check(stdout(&o) == "hi\n", "stdout should be exactly hi", &o)?;
    check(o.status.code() == Some(3), "exit code should be 3", &o)
}

fn smp_guest_sees_every_vcpu() -> Result<(), Failed> {
    let o = run(&["run", "--vcpus", "2", "--", "nproc"]);
    check(stdout(&o).trim() == "2", "nproc should print 2", &o)?;
    check(o.status.success(), "should succeed", &o)
}

fn stdout_and_stderr_are_separate() -> Result<(), Failed> {
    let o = run(&["run", "--", "sh", "-c", "echo out; echo err >&2"]);
    check(stdout(&o) == "out\n", "stdout should hold only out", &o)?;
    check(
        stderr(&o).contains("err\n") && !stderr(&o).contains("out"),
        "stderr should hold only err",
        &o,
    )
}

fn missing_program_is_127() -> Result<(), Failed> {
    let o = run(&["run", "--", "no-such-program"]);
    check(o.status.code() == Some(127), "exit code should be 127", &o)?;
    check(
        stderr(&o).contains("no-such-program"),
        "stderr should name the program",
        &o,
    )
}

fn rootfs_overlay() -> Result<(), Failed> {
    // Writes land in the RAM-backed overlay mounted as /; the image disk is read-only.
    let script = "echo data > /etc/new && cat /etc/new && grep '^overlay / overlay' /proc/mounts";
    let o = run(&["run", "--", "sh", "-c", script]);
    check(
        o.status.success() && stdout(&o).starts_with("data\n"),
        "a write to / should succeed",
        &o,
    )?;
    check(
        stdout(&o).contains("overlay / overlay"),
        "root should be an overlay",
        &o,
    )
}

fn virtio_rng_feeds_the_guest() -> Result<(), Failed> {
    let o = run(&["run", "--", "cat", "/sys/class/misc/hw_random/rng_current"]);
    check(
        stdout(&o).contains("virtio_rng"),
        "the hw_random device should be virtio_rng",
        &o,
    )
}

fn guest_poweroff_is_a_clean_end() -> Result<(), Failed> {
    let o = run(&["run", "--", "poweroff"]);
    check(
        o.status.success(),
        "a guest poweroff should end the run with success",
        &o,
    )
}

fn kernel_panic_is_reported() -> Result<(), Failed> {
    let state = TempDir::new("panic-state");
    let o = supermachine()
        .args(["run", "--", "sh", "-c", "echo c > /proc/sysrq-trigger"])
        .env("XDG_STATE_HOME", &state.0)
        .output()?;
    let err = stderr(&o);
    check(
        !o.status.success(),
        "a panic must not look like success",
        &o,
    )?;
    check(
        err.contains("panicked"),
        "the error should say the kernel panicked",
        &o,
    )?;
    let log = err
        .split_whitespace()
        .find(|w| w.ends_with(".log"))
        .ok_or_else(|| format!("the error should name the serial log: {err}"))?;
    let text = std::fs::read_to_string(log).map_err(|e| format!("reading {log}: {e}"))?;
    check(
        text.contains("Kernel panic"),
        "the serial log should hold the panic",
        &o,
    )
}

fn dir_entries(p: &Path) -> Vec<String> {
    std::fs::read_dir(p)
        .map(|r| {
            r.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default()
}

fn killing_the_cli_leaves_nothing_behind() -> Result<(), Failed> {
    let runtime = TempDir::new("kill-runtime");
    let mut cli = supermachine()
        .args(["run", "--", "sleep", "1000"])
        .env("SUPERMACHINE_RUNTIME_DIR", &runtime.0)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()?;
    // Wait until the VM is up: its directory holds the worker's pid and the
    // ready socket is gone (removed once the agent reported in).
    let deadline = Instant::now() + Duration::from_secs(120);
    let worker_pid = loop {
        if Instant::now() > deadline {
            let _ = cli.kill();
            return Err("the VM did not come up".into());
        }
        let ready = dir_entries(&runtime.0).into_iter().find_map(|id| {
            let dir = runtime.0.join(id);
            let pid = std::fs::read_to_string(dir.join("worker.pid")).ok()?;
            (dir.join("vsock.sock").exists() && !dir.join("vsock.sock_1025").exists())
                .then_some(pid)
        });
        if let Some(pid) = ready {
            break pid.trim().parse::<i32>()?;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // SAFETY: signalling a child we spawned.
    unsafe { libc::kill(cli.id() as i32, libc::SIGKILL) };
    let _ = cli.wait();
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // SAFETY: signal 0 only checks for existence.
        let worker_alive = unsafe { libc::kill(worker_pid, 0) } == 0;
        let left = dir_entries(&runtime.0);
        if !worker_alive && left.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("after kill -9 of the CLI: worker alive = {worker_alive}, runtime dir holds {left:?}").into());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
