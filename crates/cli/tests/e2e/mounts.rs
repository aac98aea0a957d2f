//! Shared host directories (virtio-fs) with a real guest kernel: what the
//! guest does lands on the host, host edits reach the guest, and the
//! guest cannot reach a host file outside the share under deny or opaque.

use crate::progress::trial;
use crate::util::{check, run, stdout, TempDir};
use libtest_mimic::{Failed, Trial};
use std::path::Path;

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "mounts::guest_changes_land_on_the_host",
            guest_changes_land_on_the_host,
        ),
        trial(
            "mounts::host_edits_reach_the_guest",
            host_edits_reach_the_guest,
        ),
        trial("mounts::no_way_out_of_the_share", no_way_out_of_the_share),
        trial(
            "mounts::bad_mounts_fail_before_boot",
            bad_mounts_fail_before_boot,
        ),
        trial(
            "mounts::a_snapshot_with_a_live_mount",
            a_snapshot_with_a_live_mount,
        ),
    ]
}

/// `base/share` with a file, and `base/outside/dir/secret` next to it.
fn tree(tag: &str) -> Result<TempDir, Failed> {
    let base = TempDir::new(tag);
    std::fs::create_dir_all(base.0.join("share/sub"))?;
    std::fs::create_dir_all(base.0.join("outside/dir"))?;
    std::fs::write(base.0.join("share/hello"), "from the host\n")?;
    std::fs::write(base.0.join("outside/dir/secret"), "SECRET\n")?;
    std::os::unix::fs::symlink("../outside", base.0.join("share/up"))?;
    std::os::unix::fs::symlink(base.0.join("outside"), base.0.join("share/abs"))?;
    Ok(base)
}

fn share(base: &TempDir) -> String {
    base.0.join("share").display().to_string()
}

fn guest_changes_land_on_the_host() -> Result<(), Failed> {
    let base = tree("mnt-rw")?;
    let mount = format!("source={},tag=work,target=/work", share(&base));
    let script = "set -e; cd /work; cat hello; echo written > out; mkdir -p made/deeper; \
                  echo x > made/deeper/f; mv made/deeper/f made/g; ln -s hello link; \
                  ln hello hard; chmod 4755 out; : > empty; truncate -s 3 hello; \
                  rm -r made/deeper; ls -a | tr '\\n' ' '";
    let out = run(&["run", "--mount", &mount, "--", "sh", "-c", script])?;
    check(out.status.success(), "the guest's script", &out)?;
    check(
        stdout(&out).starts_with("from the host\n"),
        "the guest read the host's file",
        &out,
    )?;
    let s = base.0.join("share");
    let read = |p: &str| std::fs::read_to_string(s.join(p)).unwrap_or_default();
    check(read("out") == "written\n", "out on the host", &out)?;
    check(read("made/g") == "x\n", "a renamed file on the host", &out)?;
    check(!s.join("made/deeper").exists(), "a removed directory", &out)?;
    check(read("hello") == "fro", "truncated on the host", &out)?;
    check(
        std::fs::read_link(s.join("link")).ok().as_deref() == Some(Path::new("hello")),
        "a symlink made by the guest, target as given",
        &out,
    )?;
    let meta = |p: &str| std::fs::metadata(s.join(p));
    use std::os::unix::fs::MetadataExt;
    check(
        meta("hard")?.ino() == meta("hello")?.ino(),
        "a hard link made by the guest",
        &out,
    )?;
    check(
        meta("out")?.mode() & 0o7777 == 0o755,
        "chmod 4755 from the guest lands without setuid",
        &out,
    )
}

fn host_edits_reach_the_guest() -> Result<(), Failed> {
    let base = tree("mnt-edit")?;
    let mount = format!("source={},tag=work,target=/work", share(&base));
    let started = run(&["start", "--mount", &mount, "--", "sleep", "1000"])?;
    check(started.status.success(), "start", &started)?;
    let id = stdout(&started).trim().to_string();
    let result = (|| {
        let first = run(&["exec", &id, "--", "cat", "/work/hello"])?;
        check(stdout(&first) == "from the host\n", "first read", &first)?;
        std::fs::write(base.0.join("share/hello"), "edited on the host\n")?;
        std::fs::write(base.0.join("share/new"), "new on the host\n")?;
        let second = run(&["exec", &id, "--", "sh", "-c", "cat /work/hello /work/new"])?;
        check(
            stdout(&second) == "edited on the host\nnew on the host\n",
            "the guest's next read sees the host's edits",
            &second,
        )
    })();
    let _ = run(&["stop", &id]);
    result
}

fn no_way_out_of_the_share() -> Result<(), Failed> {
    for policy in ["deny", "opaque"] {
        let base = tree(&format!("mnt-esc-{policy}"))?;
        let mount = format!(
            "source={},tag=work,target=/work,symlinks={policy}",
            share(&base)
        );
        // Every way a guest might try, each failing or reading something
        // else; the secret must never show up.
        let script = "cd /work; for p in up/dir/secret abs/dir/secret ../outside/dir/secret \
                      /work/../outside/dir/secret; do cat $p 2>/dev/null; done; \
                      ln -s /work/../../outside/dir/secret esc 2>/dev/null && cat esc 2>/dev/null; \
                      ln up/dir/secret hard 2>/dev/null; cat hard 2>/dev/null; \
                      mv /work/hello /tmp/moved 2>/dev/null; echo done";
        let out = run(&["run", "--mount", &mount, "--", "sh", "-c", script])?;
        check(stdout(&out).ends_with("done\n"), "the script ran", &out)?;
        check(
            !stdout(&out).contains("SECRET"),
            &format!("{policy}: the guest read the secret"),
            &out,
        )?;
        check(
            std::fs::read_to_string(base.0.join("outside/dir/secret"))? == "SECRET\n",
            "the secret is untouched",
            &out,
        )?;
        if policy == "deny" {
            let listed = run(&["run", "--mount", &mount, "--", "ls", "/work/up/"])?;
            check(
                !listed.status.success(),
                "deny: a host symlink is not traversable",
                &listed,
            )?;
        }
    }
    Ok(())
}

fn bad_mounts_fail_before_boot() -> Result<(), Failed> {
    let base = tree("mnt-bad")?;
    let file = base.0.join("share/hello").display().to_string();
    let long_tag = "t".repeat(36);
    let cases = [
        (format!("{}:{long_tag}", share(&base)), "1 to 35 bytes"),
        (format!("{file}:f"), "is not a directory"),
        ("/:root".to_string(), "sharing the host's / is refused"),
        (format!("{}/missing:m", share(&base)), "host path"),
    ];
    for (volume, why) in cases {
        let out = run(&["run", "-v", &volume, "--", "true"])?;
        check(
            !out.status.success() && String::from_utf8_lossy(&out.stderr).contains(why),
            &format!("-v {volume}: expected an error saying {why:?}"),
            &out,
        )?;
    }
    Ok(())
}

/// Mounted and used before the snapshot, used again after a restore (the
/// pattern of a warmup that installs into a mount): the restored copy's
/// mount works, the host directory is given again at restore (a snapshot
/// never chooses it), and a file removed meanwhile is simply gone.
fn a_snapshot_with_a_live_mount() -> Result<(), Failed> {
    let base = tree("mnt-snap")?;
    let snapshot = base.0.join("snap");
    let mount = format!("source={},tag=work,target=/work", share(&base));
    let started = run(&["start", "--mount", &mount, "--", "sleep", "1000"])?;
    check(started.status.success(), "start", &started)?;
    let id = stdout(&started).trim().to_string();
    let before = (|| {
        let wrote = run(&[
            "exec",
            &id,
            "--",
            "sh",
            "-c",
            "echo before > /work/a; ls /work >/dev/null; cat /work/hello",
        ])?;
        check(
            stdout(&wrote) == "from the host\n",
            "used before the snapshot",
            &wrote,
        )?;
        let snap = run(&["snapshot", &id, snapshot.to_str().ok_or("path")?])?;
        check(snap.status.success(), "snapshot with a live mount", &snap)
    })();
    let _ = run(&["stop", &id]);
    before?;
    std::fs::remove_file(base.0.join("share/hello"))?;
    std::fs::write(base.0.join("share/new"), "made while it slept\n")?;
    let snap = snapshot.to_str().ok_or("path")?;
    let volume = format!("{}:work", share(&base));
    let script = "cat /work/a /work/new; cat /work/hello 2>/dev/null || echo hello-gone; \
                  echo after > /work/b";
    let out = run(&[
        "run",
        "--snapshot",
        snap,
        "-v",
        &volume,
        "--",
        "sh",
        "-c",
        script,
    ])?;
    check(
        out.status.success() && stdout(&out) == "before\nmade while it slept\nhello-gone\n",
        "the restored copy's mount",
        &out,
    )?;
    check(
        std::fs::read_to_string(base.0.join("share/b"))? == "after\n",
        "a write after the restore lands on the host",
        &out,
    )?;
    let missing = run(&["run", "--snapshot", snap, "--", "true"])?;
    check(
        !missing.status.success()
            && String::from_utf8_lossy(&missing.stderr).contains("give a host directory for it"),
        "a restore without the mount's host directory is refused",
        &missing,
    )
}
