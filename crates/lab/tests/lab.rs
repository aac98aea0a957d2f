//! These boot the lab on hosts without hardware virtualization (~3-10 s
//! each, more on a busy machine) and run directly on hosts with it.

// A test binary: a helper that cannot do its job panics, which fails the
// test that called it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use supermachine_lab::{detect, explain, run_captured, KvmHost, LabOptions};

/// One lab at a time: each emulates two CPUs, and parallel labs on a small
/// machine only make every test slower.
static LAB: Mutex<()> = Mutex::new(());

fn argv(a: &[&str]) -> Vec<OsString> {
    a.iter().map(OsString::from).collect()
}

fn opts() -> LabOptions {
    LabOptions {
        timeout: Some(std::time::Duration::from_secs(300)),
        ..LabOptions::default()
    }
}

#[test]
fn detect_matches_this_host() {
    let host = detect();
    if Path::new("/sys/module/kvm_pvm").exists() {
        assert_eq!(host, KvmHost::Pvm, "kvm_pvm is loaded, so /dev/kvm is PVM");
    }
    if !Path::new("/dev/kvm").exists() {
        assert_eq!(host, KvmHost::Missing);
    }
    assert!(!explain(host).is_empty());
}

#[test]
fn exit_code_and_separate_streams() {
    let _one = LAB.lock().unwrap_or_else(|e| e.into_inner());
    let r = run_captured(
        &argv(&["sh", "-c", "echo hi; echo err >&2; exit 3"]),
        &opts(),
    )
    .unwrap();
    assert_eq!(
        (r.code, r.stdout.as_slice(), r.stderr.as_slice()),
        (3, &b"hi\n"[..], &b"err\n"[..]),
        "stderr: {}",
        String::from_utf8_lossy(&r.stderr)
    );
}

/// /dev/kvm is a real char device with svm (vmx on an Intel host) in
/// /proc/cpuinfo, the working directory is the caller's, and a file
/// written there is on the host afterwards.
#[test]
fn kvm_cwd_and_writes_reach_the_host() {
    let _one = LAB.lock().unwrap_or_else(|e| e.into_inner());
    let dir =
        PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("lab-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let script = r#"
        test -c /dev/kvm || { echo "/dev/kvm is not a char device" >&2; exit 10; }
        flags='svm|vmx'; [ "$SUPERMACHINE_IN_LAB" = 1 ] && flags=svm
        grep -qwE "$flags" /proc/cpuinfo || { echo "no $flags in /proc/cpuinfo" >&2; exit 11; }
        pwd -P
        echo from-lab > written.txt
    "#;
    let opts = LabOptions {
        cwd: Some(dir.clone()),
        ..opts()
    };
    let r = run_captured(&argv(&["sh", "-c", script]), &opts).unwrap();
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.code, 0, "stderr: {stderr}");
    let real = dir.canonicalize().unwrap();
    assert_eq!(
        String::from_utf8_lossy(&r.stdout).trim_end(),
        real.to_str().unwrap()
    );
    assert_eq!(
        std::fs::read_to_string(dir.join("written.txt")).unwrap(),
        "from-lab\n"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A caller working under the host's /tmp (a fresh clone from `mktemp -d`,
/// say) runs there in the lab too, while TMPDIR is a local tmpfs inside it
/// (Unix sockets do not work over 9p).
#[test]
fn host_tmp_is_visible_and_tmpdir_is_local() {
    let _one = LAB.lock().unwrap_or_else(|e| e.into_inner());
    let dir = std::env::temp_dir().join(format!("lab-tmp-test-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("marker"), "from-host\n").unwrap();
    let opts = LabOptions {
        cwd: Some(dir.clone()),
        ..opts()
    };
    let script = r#"cat marker; stat -f -c %T "$TMPDIR""#;
    let r = run_captured(&argv(&["sh", "-c", script]), &opts).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    let stdout = String::from_utf8_lossy(&r.stdout);
    assert_eq!(r.code, 0, "stderr: {}", String::from_utf8_lossy(&r.stderr));
    let expected_fs = if supermachine_lab::detect() == supermachine_lab::KvmHost::Hardware {
        // Run directly: TMPDIR is whatever the host has.
        stdout.lines().nth(1).unwrap_or("").to_string()
    } else {
        "tmpfs".to_string()
    };
    assert_eq!(stdout, format!("from-host\n{expected_fs}\n"));
}

/// A lab whose heartbeat stops is killed as frozen within `freeze_after`
/// (the command itself would sleep for ten minutes), and what the command
/// wrote to an uncached share before that is on the host.
#[test]
fn a_stopped_heartbeat_is_a_freeze_and_shares_keep_what_was_written() {
    if detect() == KvmHost::Hardware {
        eprintln!("no lab on this host (it has VT-x/AMD-V): nothing to freeze");
        return;
    }
    let _one = LAB.lock().unwrap_or_else(|e| e.into_inner());
    let share = PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
        .join(format!("lab-share-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&share);
    std::fs::create_dir_all(&share).unwrap();
    let script = format!(
        "echo before-the-freeze > '{}/note' && kill -STOP $(cat /run/lab-heartbeat.pid) && sleep 600",
        share.display()
    );
    let opts = LabOptions {
        shares: vec![share.clone()],
        freeze_after: std::time::Duration::from_secs(10),
        ..opts()
    };
    let r = run_captured(&argv(&["sh", "-c", &script]), &opts);
    let note = std::fs::read_to_string(share.join("note"));
    std::fs::remove_dir_all(&share).unwrap();
    match r {
        Err(supermachine_lab::LabError::Frozen {
            silent_secs, beats, ..
        }) => {
            assert!(beats > 0, "the lab beat before it was stopped");
            assert!(silent_secs >= 10, "called frozen after only {silent_secs}s");
        }
        other => panic!("expected a freeze, got {other:?}"),
    }
    assert_eq!(note.unwrap(), "before-the-freeze\n");
}
