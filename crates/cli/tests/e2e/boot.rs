//! Boot, exec, SMP, devices, and the ways a VM ends.

use crate::progress::trial;
use crate::util::{check, output_of, run, stderr, stdout, supermachine, TempDir, PATIENCE};
use libtest_mimic::{Failed, Trial};
use std::path::Path;
use std::process::Stdio;
use std::time::{Duration, Instant};

pub fn trials() -> Vec<Trial> {
    vec![
        trial("boot::exit_code_and_output", exit_code_and_output),
        trial("boot::smp_guest_sees_every_vcpu", smp_guest_sees_every_vcpu),
        trial(
            "boot::stdout_and_stderr_are_separate",
            stdout_and_stderr_are_separate,
        ),
        trial("boot::missing_program_is_127", missing_program_is_127),
        trial(
            "boot::rootfs_is_read_only_under_a_writable_overlay",
            rootfs_overlay,
        ),
        trial(
            "boot::virtio_rng_feeds_the_guest",
            virtio_rng_feeds_the_guest,
        ),
        trial(
            "boot::guest_poweroff_is_a_clean_end",
            guest_poweroff_is_a_clean_end,
        ),
        trial("boot::guest_reboot_is_reported", guest_reboot_is_reported),
        trial(
            "boot::kernel_panic_is_reported_with_the_serial_log",
            kernel_panic_is_reported,
        ),
        trial(
            "boot::killing_the_cli_leaves_nothing_behind",
            killing_the_cli_leaves_nothing_behind,
        ),
        trial(
            "blk::writable_disk_keeps_data_and_stays_sparse",
            writable_disk_keeps_data_and_stays_sparse,
        ),
        trial(
            "blk::read_only_disk_refuses_writes",
            read_only_disk_refuses_writes,
        ),
    ]
}

fn exit_code_and_output() -> Result<(), Failed> {
    let o = run(&["run", "--", "sh", "-c", "echo hi; exit 3"])?;
    check(stdout(&o) == "hi\n", "stdout should be exactly hi", &o)?;
    check(o.status.code() == Some(3), "exit code should be 3", &o)
}

fn smp_guest_sees_every_vcpu() -> Result<(), Failed> {
    let o = run(&["run", "--vcpus", "2", "--", "nproc"])?;
    check(stdout(&o).trim() == "2", "nproc should print 2", &o)?;
    check(o.status.success(), "should succeed", &o)
}

fn stdout_and_stderr_are_separate() -> Result<(), Failed> {
    let o = run(&["run", "--", "sh", "-c", "echo out; echo err >&2"])?;
    check(stdout(&o) == "out\n", "stdout should hold only out", &o)?;
    check(
        stderr(&o).contains("err\n") && !stderr(&o).contains("out"),
        "stderr should hold only err",
        &o,
    )
}

fn missing_program_is_127() -> Result<(), Failed> {
    let o = run(&["run", "--", "no-such-program"])?;
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
    let o = run(&["run", "--", "sh", "-c", script])?;
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
    let o = run(&["run", "--", "cat", "/sys/class/misc/hw_random/rng_current"])?;
    check(
        stdout(&o).contains("virtio_rng"),
        "the hw_random device should be virtio_rng",
        &o,
    )
}

fn guest_poweroff_is_a_clean_end() -> Result<(), Failed> {
    let o = run(&["run", "--", "poweroff"])?;
    check(
        o.status.success(),
        "a guest poweroff should end the run with success",
        &o,
    )
}

fn guest_reboot_is_reported() -> Result<(), Failed> {
    // A VM that reboots instead of finishing is not a clean end.
    let o = run(&["run", "--", "reboot"])?;
    check(
        o.status.code() == Some(125),
        "a guest reboot should be an error",
        &o,
    )?;
    check(
        stderr(&o).contains("rebooted"),
        "the error should say the guest rebooted",
        &o,
    )
}

fn kernel_panic_is_reported() -> Result<(), Failed> {
    let state = TempDir::new("panic-state");
    let mut cmd = supermachine();
    cmd.args(["run", "--", "sh", "-c", "echo c > /proc/sysrq-trigger"])
        .env("XDG_STATE_HOME", &state.0);
    let o = output_of(cmd, None)?;
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
    let state = TempDir::new("kill-state");
    let mut cli = supermachine()
        .args(["run", "--", "sleep", "1000"])
        .env("SUPERMACHINE_RUNTIME_DIR", &runtime.0)
        // A CLI killed with SIGKILL cannot remove the serial log it kept.
        .env("XDG_STATE_HOME", &state.0)
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
    let deadline = Instant::now() + PATIENCE;
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

fn sparse_file(dir: &Path, name: &str, len: u64) -> std::path::PathBuf {
    let p = dir.join(name);
    let f = std::fs::File::create(&p).expect("create disk");
    f.set_len(len).expect("size disk");
    p
}

fn allocated_bytes(p: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p)
        .map(|m| m.blocks() * 512)
        .unwrap_or(u64::MAX)
}

fn writable_disk_keeps_data_and_stays_sparse() -> Result<(), Failed> {
    let dir = TempDir::new("rw-disk");
    let disk = sparse_file(&dir.0, "data.img", 64 << 20);
    let spec = disk.display().to_string();
    // Write at 32 MiB, flush to the device, drop the page cache, read it back.
    let script =
        "printf supermachine-block | dd of=/dev/vdb bs=4096 seek=8192 conv=fsync 2>/dev/null \
                  && blockdev --flushbufs /dev/vdb && echo 3 > /proc/sys/vm/drop_caches \
                  && dd if=/dev/vdb bs=4096 skip=8192 count=1 2>/dev/null | head -c 18";
    let o = run(&["run", "--disk", &spec, "--", "sh", "-c", script])?;
    check(
        o.status.success() && stdout(&o) == "supermachine-block",
        "the guest should read back its write",
        &o,
    )?;
    let data = std::fs::read(&disk)?;
    let at = 32 << 20;
    check(
        &data[at..at + 18] == b"supermachine-block",
        "the write should be in the host file",
        &o,
    )?;
    check(data.len() == 64 << 20, "the disk must keep its size", &o)?;
    check(
        allocated_bytes(&disk) < 1 << 20,
        "the disk file should stay sparse",
        &o,
    )
}

fn read_only_disk_refuses_writes() -> Result<(), Failed> {
    let dir = TempDir::new("ro-disk");
    let disk = sparse_file(&dir.0, "ro.img", 1 << 20);
    std::fs::write(&disk, vec![7u8; 1 << 20])?;
    let spec = format!("{}:ro", disk.display());
    let o = run(&[
        "run",
        "--disk",
        &spec,
        "--",
        "sh",
        "-c",
        "cat /sys/block/vdb/ro; echo x | dd of=/dev/vdb conv=fsync 2>/dev/null; echo rc=$?",
    ])?;
    check(
        stdout(&o).starts_with("1\n"),
        "the guest should see a read-only disk",
        &o,
    )?;
    check(
        !stdout(&o).contains("rc=0"),
        "a write to a read-only disk must fail",
        &o,
    )?;
    check(
        std::fs::read(&disk)? == vec![7u8; 1 << 20],
        "the host file must be unchanged",
        &o,
    )
}
