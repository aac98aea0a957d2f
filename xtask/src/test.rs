//! `cargo xtask test`: the whole suite. Sets up first (agent, binaries,
//! kernel), then runs every crate's tests in release mode; the end-to-end
//! tests boot real VMs, in the lab when the host lacks VT-x/AMD-V.

use crate::setup::{setup, workspace_root};
use std::process::Command;

pub fn test(extra: &[String]) -> Result<i32, String> {
    setup()?;
    let mut cmd = Command::new(std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into()));
    cmd.current_dir(workspace_root())
        .args(["test", "--workspace", "--release"])
        .args(extra);
    if std::env::var_os("CI").is_some() {
        // In CI a skipped end-to-end suite is a failure, not a shrug.
        cmd.env("SUPERMACHINE_REQUIRE_KVM", "1");
    }
    let status = cmd.status().map_err(|e| format!("cargo test: {e}"))?;
    Ok(status.code().unwrap_or(1))
}
