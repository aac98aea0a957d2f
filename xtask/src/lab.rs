//! `cargo xtask lab [--memory MiB] [--cpus N] [--timeout SECS] -- <cmd>...`

use std::ffi::OsString;
use std::time::Duration;
use supermachine_lab::LabOptions;

/// Exit code when the lab itself failed (not the command), like
/// `docker run`: distinct from what a test binary usually returns.
const LAB_FAILED: i32 = 125;

#[derive(clap::Args)]
pub struct Args {
    /// Memory of the lab machine in MiB [default: 4096]
    #[arg(long, value_name = "MiB")]
    memory: Option<u32>,
    /// vCPUs of the lab machine [default: 2]
    #[arg(long, value_name = "N")]
    cpus: Option<u32>,
    /// Kill the command and the lab after this many seconds
    #[arg(long, value_name = "SECS")]
    timeout: Option<u64>,
    /// The command and its arguments, after `--`
    #[arg(last = true, required = true, value_name = "CMD")]
    cmd: Vec<OsString>,
}

/// Runs the command and returns the exit code to leave with.
pub fn main(args: Args) -> i32 {
    let defaults = LabOptions::default();
    let opts = LabOptions {
        memory_mib: args.memory.unwrap_or(defaults.memory_mib),
        cpus: args.cpus.unwrap_or(defaults.cpus),
        timeout: args.timeout.map(Duration::from_secs),
        ..defaults
    };
    match supermachine_lab::run(&args.cmd, &opts) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("cargo xtask lab: {e}");
            LAB_FAILED
        }
    }
}
