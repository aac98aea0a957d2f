//! The errors a user meets before any VM boots. These run on the host
//! itself (no KVM needed) and check that each says what to do.

// A test binary: a helper that cannot do its job panics, which fails the
// test that called it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Command;
use supermachine_lab::KvmHost;

fn supermachine() -> Command {
    Command::new(env!("CARGO_BIN_EXE_supermachine"))
}

fn stderr(o: &std::process::Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

#[test]
fn run_without_a_command_is_a_usage_error() {
    let o = supermachine().arg("run").output().unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("Usage"), "{}", stderr(&o));
}

#[test]
fn zero_vcpus_is_refused() {
    let o = supermachine()
        .args(["run", "--vcpus", "0", "--", "true"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    assert!(stderr(&o).contains("--vcpus"), "{}", stderr(&o));
}

#[test]
fn the_host_kind_is_explained() {
    let o = supermachine()
        .args(["run", "--", "true"])
        .env_remove("SUPERMACHINE_ALLOW_PVM")
        .output()
        .unwrap();
    match supermachine_lab::detect() {
        KvmHost::Pvm => {
            assert_eq!(o.status.code(), Some(125));
            assert!(
                stderr(&o).contains("PVM") && stderr(&o).contains("cargo xtask lab"),
                "{}",
                stderr(&o)
            );
        }
        KvmHost::Missing => {
            assert_eq!(o.status.code(), Some(125));
            assert!(stderr(&o).contains("/dev/kvm is missing"), "{}", stderr(&o));
        }
        // With real KVM this boots; the end-to-end tests cover that.
        KvmHost::Hardware => {}
    }
}

#[test]
fn a_missing_kernel_says_how_to_build_it() {
    let empty = std::env::temp_dir().join(format!("sm-no-kernel-{}", std::process::id()));
    std::fs::create_dir_all(&empty).unwrap();
    let o = supermachine()
        .args(["run", "--", "true"])
        .env("SUPERMACHINE_ALLOW_PVM", "1")
        .env("SUPERMACHINE_CACHE_DIR", &empty)
        .env_remove("SUPERMACHINE_KERNEL")
        .output()
        .unwrap();
    let _ = std::fs::remove_dir_all(&empty);
    assert_eq!(o.status.code(), Some(125), "{}", stderr(&o));
    let err = stderr(&o);
    // Without /dev/kvm at all that error comes first; otherwise the kernel's.
    assert!(
        err.contains("supermachine kernel build") || err.contains("/dev/kvm is missing"),
        "{err}"
    );
}
