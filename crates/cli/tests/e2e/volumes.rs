//! Volumes (`-v FILE:/GUEST[:SIZE]`) with a real guest kernel: a new file
//! is made sparse, formatted and mounted; what the guest writes is there
//! for the next VM and the filesystem is clean after; a volume in use is
//! refused to a second VM, and a VM with a volume cannot be snapshotted.

use crate::progress::trial;
use crate::util::{check, run, stderr, stdout, TempDir};
use libtest_mimic::{Failed, Trial};
use std::os::unix::fs::MetadataExt;
use std::path::Path;
use std::process::Command;

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "volumes::a_new_volume_is_made_mounted_and_kept",
            a_new_volume_is_made_mounted_and_kept,
        ),
        trial(
            "volumes::one_vm_at_a_time_and_no_snapshots",
            one_vm_at_a_time_and_no_snapshots,
        ),
    ]
}

/// `fsck.ext4 -fn`: whether the filesystem in `file` is clean.
fn fsck_clean(file: &Path) -> Result<(bool, String), Failed> {
    let out = Command::new("fsck.ext4")
        .arg("-fn")
        .arg(file)
        .output()
        .map_err(|e| format!("fsck.ext4 (apt-get install e2fsprogs): {e}"))?;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok((out.status.success(), text))
}

fn a_new_volume_is_made_mounted_and_kept() -> Result<(), Failed> {
    let dir = TempDir::new("vol-new");
    let file = dir.0.join("data.img");
    let spec = format!("{}:/data:64M", file.display());
    // 4 MiB of data the second VM checks, and how the guest sees /data.
    let write = "set -e; grep ' /data ' /proc/mounts; \
                 head -c 4194304 /dev/urandom > /data/blob; sha256sum /data/blob > /data/blob.sum; \
                 mkdir -p /data/d/e; echo kept > /data/d/e/f; sync";
    let first = run(&["run", "-v", &spec, "--", "sh", "-c", write])?;
    check(first.status.success(), "the first VM's writes", &first)?;
    check(
        stdout(&first).contains(" /data ext4 "),
        "the volume is mounted at /data as ext4",
        &first,
    )?;
    let meta = std::fs::metadata(&file)?;
    check(meta.len() == 64 << 20, "the file is 64 MiB", &first)?;
    check(meta.mode() & 0o777 == 0o600, "the file is private", &first)?;
    check(
        meta.blocks() * 512 < 40 << 20,
        &format!(
            "the file stays sparse ({} bytes allocated of 64 MiB)",
            meta.blocks() * 512
        ),
        &first,
    )?;

    // The next VM (without a size: the file keeps its own) finds it all.
    let spec = format!("{}:/data", file.display());
    let read = "set -e; cd /data; sha256sum -c blob.sum; cat d/e/f; df -k /data | tail -n 1";
    let second = run(&["run", "-v", &spec, "--", "sh", "-c", read])?;
    check(second.status.success(), "the second VM's reads", &second)?;
    check(
        stdout(&second).contains("blob: OK") && stdout(&second).contains("kept\n"),
        "what the first VM wrote",
        &second,
    )?;
    let (clean, report) = fsck_clean(&file)?;
    check(clean, &format!("fsck after two VMs: {report}"), &second)?;
    check(
        std::fs::metadata(&file)?.len() == 64 << 20,
        "the size is unchanged",
        &second,
    )
}

fn one_vm_at_a_time_and_no_snapshots() -> Result<(), Failed> {
    let dir = TempDir::new("vol-busy");
    let file = dir.0.join("shared.img");
    let spec = format!("{}:/data:32M", file.display());
    let started = run(&["start", "-v", &spec, "--", "sleep", "1000"])?;
    check(started.status.success(), "start", &started)?;
    let id = stdout(&started).trim().to_string();
    let result = (|| {
        let second = run(&["run", "-v", &spec, "--", "true"])?;
        check(
            !second.status.success(),
            "a second VM on the volume fails",
            &second,
        )?;
        check(
            stderr(&second).contains("in use by another VM"),
            "and says the volume is in use",
            &second,
        )?;
        let snap = dir.0.join("snap");
        let snapshot = run(&["snapshot", &id, &snap.display().to_string()])?;
        check(
            !snapshot.status.success(),
            "a snapshot of the VM fails",
            &snapshot,
        )?;
        check(
            stderr(&snapshot).contains("volume") && !snap.exists(),
            "says why and leaves nothing",
            &snapshot,
        )?;
        // The first VM still has it, undisturbed.
        let used = run(&[
            "exec",
            &id,
            "--",
            "sh",
            "-c",
            "echo still > /data/f && cat /data/f",
        ])?;
        check(stdout(&used) == "still\n", "the first VM writes on", &used)
    })();
    let stopped = run(&["stop", &id]);
    result?;
    let stopped = stopped?;
    check(stopped.status.success(), "stop", &stopped)?;
    // Stopped: the volume is free again, and clean.
    let again = run(&["run", "-v", &spec, "--", "cat", "/data/f"])?;
    check(
        stdout(&again) == "still\n",
        "the next VM gets the volume",
        &again,
    )?;
    let (clean, report) = fsck_clean(&file)?;
    check(clean, &format!("fsck: {report}"), &again)
}
