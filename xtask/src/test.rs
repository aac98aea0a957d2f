//! `cargo xtask test`: the whole suite. Sets up first (agent, binaries,
//! kernel), installs the tools the tests use, then runs every crate's tests
//! in release mode (the end-to-end tests boot real VMs, in the lab when the
//! host lacks VT-x/AMD-V), then fuzzes the protocol's frame decoder briefly.

use crate::setup::{setup, workspace_root};
use std::process::Command;

/// Seconds the protocol frame decoder is fuzzed for on every test run.
const FUZZ_SECONDS: u32 = 30;

/// Debian packages the tests run: root filesystem images (`mkfs.ext4`),
/// `cpio` to read back the initramfs writer's archives, `fsck.erofs` to
/// check our EROFS images, a real registry and the tool that pushes to it,
/// and `debootstrap` for the Debian test image. Installed when missing (as
/// root; otherwise the error gives the command).
const TEST_PACKAGES: &[&str] = &[
    "e2fsprogs",
    "cpio",
    "erofs-utils",
    "docker-registry",
    "skopeo",
    "debootstrap",
];

pub fn test(extra: &[String]) -> Result<i32, String> {
    setup()?;
    supermachine_lab::ensure_packages(TEST_PACKAGES)
        .map_err(|e| format!("the tests' tools: {e}"))?;
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let ci = std::env::var_os("CI").is_some();
    let mut cmd = Command::new(&cargo);
    cmd.current_dir(workspace_root())
        .args(["test", "--workspace", "--release"])
        .args(extra);
    if ci {
        // In CI a skipped end-to-end suite is a failure, not a shrug.
        cmd.env("SUPERMACHINE_REQUIRE_KVM", "1");
    }
    let status = cmd.status().map_err(|e| format!("cargo test: {e}"))?;
    if !status.success() {
        return Ok(status.code().unwrap_or(1));
    }
    fuzz(&cargo, ci)
}

/// A short libFuzzer run of `fuzz/fuzz_targets/frame_decoder.rs`. cargo-fuzz
/// wants a nightly compiler for its `-Z` flags; RUSTC_BOOTSTRAP lets the
/// stable one accept them (no nightly toolchain can be installed here).
fn fuzz(cargo: &std::ffi::OsStr, required: bool) -> Result<i32, String> {
    let have_fuzz = Command::new(cargo)
        .args(["fuzz", "--version"])
        .output()
        .is_ok_and(|o| o.status.success());
    if !have_fuzz {
        if required {
            return Err("cargo-fuzz is not installed (cargo install cargo-fuzz --locked)".into());
        }
        eprintln!(
            "xtask: cargo-fuzz not installed, fuzzing skipped (cargo install cargo-fuzz --locked)"
        );
        return Ok(0);
    }
    eprintln!("xtask: fuzzing the frame decoder for {FUZZ_SECONDS} s");
    let status = Command::new(cargo)
        .current_dir(workspace_root().join("fuzz"))
        .env("RUSTC_BOOTSTRAP", "1")
        .args(["fuzz", "run", "frame_decoder", "--"])
        .arg(format!("-max_total_time={FUZZ_SECONDS}"))
        .status()
        .map_err(|e| format!("cargo fuzz: {e}"))?;
    Ok(status.code().unwrap_or(1))
}
