//! `cargo xtask setup`: everything a VM needs, built once and cached.
//!
//! 1. the guest agent, static (`+crt-static`), into `target/release/`;
//! 2. the release binaries (`supermachine`, `supermachine-worker`);
//! 3. the guest kernel (`supermachine kernel build`, cached by config hash).

use std::path::{Path, PathBuf};
use std::process::Command;

const AGENT_TARGET: &str = "x86_64-unknown-linux-gnu";

pub(crate) fn cargo() -> Command {
    Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()))
}

pub(crate) fn run(cmd: &mut Command, what: &str) -> Result<(), String> {
    let status = cmd
        .status()
        .map_err(|e| format!("{what}: cannot start: {e}"))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("{what} failed ({status})"))
    }
}

pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("."))
}

pub fn release_dir() -> PathBuf {
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target"));
    target.join("release")
}

/// Builds the static agent and copies it to `target/release/` (creating
/// that directory: in a fresh checkout nothing else may have yet), where
/// the library finds it next to the `supermachine` binary.
pub fn install_agent(root: &Path) -> Result<(), String> {
    let agent = build_agent(root)?;
    let dir = release_dir();
    std::fs::create_dir_all(&dir).map_err(|e| format!("creating {}: {e}", dir.display()))?;
    // Not `supermachine-agent`: cargo writes its dynamic host build there.
    let dest = dir.join("supermachine-agent-static");
    std::fs::copy(&agent, &dest)
        .map_err(|e| format!("copying {} to {}: {e}", agent.display(), dest.display()))?;
    Ok(())
}

/// Builds the static agent and returns its path.
fn build_agent(root: &Path) -> Result<PathBuf, String> {
    eprintln!("setup: building the guest agent (static)");
    // `--target` keeps the static flag off build scripts and proc macros.
    run(
        cargo()
            .current_dir(root)
            .args([
                "build",
                "--profile",
                "agent",
                "-p",
                "supermachine-agent",
                "--target",
                AGENT_TARGET,
            ])
            .env("RUSTFLAGS", "-C target-feature=+crt-static"),
        "building the agent",
    )?;
    let target = release_dir()
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default();
    Ok(target
        .join(AGENT_TARGET)
        .join("agent")
        .join("supermachine-agent"))
}

pub fn setup() -> Result<(), String> {
    let root = workspace_root();
    install_agent(&root)?;
    eprintln!("setup: building supermachine (release)");
    run(
        cargo()
            .current_dir(&root)
            .args(["build", "--release", "--workspace", "--bins"]),
        "cargo build --release",
    )?;
    eprintln!("setup: guest kernel");
    run(
        Command::new(release_dir().join("supermachine")).args(["kernel", "build"]),
        "supermachine kernel build",
    )?;
    if supermachine_lab::detect() != supermachine_lab::KvmHost::Hardware {
        eprintln!("setup: this host has no VT-x/AMD-V; preparing the lab");
        supermachine_lab::prepare().map_err(|e| format!("preparing the lab: {e}"))?;
    }
    eprintln!("setup: done");
    Ok(())
}
