//! `cargo xtask test`: the whole suite. Sets up first (agent, binaries,
//! kernel), installs the tools the tests use, then runs every crate's tests
//! in release mode (the end-to-end tests boot real VMs, in the lab when the
//! host lacks VT-x/AMD-V), then the Node package's tests (`cargo xtask
//! node`, unless arguments narrowed the run), then fuzzes every fuzz
//! target briefly.

use crate::setup::{setup, workspace_root};
use std::process::Command;

/// Seconds the protocol frame decoder is fuzzed for on every test run.
const FUZZ_SECONDS: u32 = 30;

/// Debian packages the tests run: root filesystem images (`mkfs.ext4`),
/// `cpio` to read back the initramfs writer's archives, `fsck.erofs` to
/// check our EROFS images, a real registry and the tool that pushes to it,
/// `debootstrap` for the Debian test image, and `passt`, the guest
/// network's backend. Installed when missing (as root; otherwise the error
/// gives the command).
const TEST_PACKAGES: &[&str] = &[
    "e2fsprogs",
    "cpio",
    "erofs-utils",
    "docker-registry",
    "skopeo",
    "debootstrap",
    "passt",
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
        // In CI a skipped end-to-end suite is a failure, not a shrug, and
        // so is a skipped check that needs root (CI runs as root).
        cmd.env("SUPERMACHINE_REQUIRE_KVM", "1");
        cmd.env("SUPERMACHINE_REQUIRE_ROOT", "1");
    }
    let status = cmd.status().map_err(|e| format!("cargo test: {e}"))?;
    if !status.success() {
        return Ok(status.code().unwrap_or(1));
    }
    // A run narrowed with arguments is about the Rust tests it names.
    if extra.is_empty() {
        let code = crate::node::node(&[])?;
        if code != 0 {
            return Ok(code);
        }
    }
    fuzz(&cargo, ci)
}

/// Every fuzz target in `fuzz/fuzz_targets/`, each with the seconds it is
/// fuzzed for on every test run. The frame decoder gets the most: it is the
/// one a guest reaches first. Each starts from its checked-in seeds
/// (`fuzz/seeds/<target>`, when there are any) plus the corpus earlier runs
/// left in `fuzz/corpus/<target>`.
const FUZZ_TARGETS: &[(&str, u32)] = &[
    ("frame_decoder", FUZZ_SECONDS),
    ("virtio_blk", 20),
    ("virtio_vsock", 20),
    ("snapshot_state", 20),
    ("virtio_fs", 20),
    ("tar_reader", 20),
    ("layer_apply", 20),
];

/// Short libFuzzer runs of every target in [`FUZZ_TARGETS`]. cargo-fuzz
/// wants a nightly compiler for its `-Z` flags; RUSTC_BOOTSTRAP lets the
/// stable one accept them (no nightly toolchain can be installed here).
/// Memory is capped so a target that grows without bound fails instead of
/// taking the machine.
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
    let fuzz_dir = workspace_root().join("fuzz");
    for (target, seconds) in FUZZ_TARGETS {
        eprintln!("xtask: fuzzing {target} for {seconds} s");
        let corpus = fuzz_dir.join("corpus").join(target);
        std::fs::create_dir_all(&corpus)
            .map_err(|e| format!("creating {}: {e}", corpus.display()))?;
        let mut cmd = Command::new(cargo);
        cmd.current_dir(&fuzz_dir)
            .env("RUSTC_BOOTSTRAP", "1")
            .args(["fuzz", "run", target])
            .arg(&corpus);
        let seeds = fuzz_dir.join("seeds").join(target);
        if seeds.is_dir() {
            cmd.arg(&seeds);
        }
        let status = cmd
            .arg("--")
            .arg(format!("-max_total_time={seconds}"))
            .args(["-rss_limit_mb=1024", "-malloc_limit_mb=256"])
            .status()
            .map_err(|e| format!("cargo fuzz: {e}"))?;
        if !status.success() {
            eprintln!(
                "xtask: fuzz target {target} failed (its input is in fuzz/artifacts/{target}/)"
            );
            return Ok(status.code().unwrap_or(1));
        }
    }
    Ok(0)
}
