//! `run -i`: the host's stdin streams into the guest command.

use crate::progress::trial;
use crate::util::{check, output_of, stdout, supermachine};
use libtest_mimic::{Failed, Trial};

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "stdin::piped_bytes_arrive_intact",
            piped_bytes_arrive_intact,
        ),
        trial(
            "stdin::without_i_the_command_reads_nothing",
            without_i_reads_nothing,
        ),
    ]
}

/// Deterministic bytes covering every value, NUL included.
fn payload(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn run_with_input(args: &[&str], input: Vec<u8>) -> Result<std::process::Output, Failed> {
    let mut cmd = supermachine();
    cmd.args(args);
    output_of(cmd, Some(input))
}

fn piped_bytes_arrive_intact() -> Result<(), Failed> {
    let data = payload(4 << 20);
    let dir = crate::util::TempDir::new("stdin");
    let local = dir.0.join("data");
    std::fs::write(&local, &data)?;
    let expected = std::process::Command::new("md5sum").arg(&local).output()?;
    let expected = String::from_utf8_lossy(&expected.stdout)
        .split_whitespace()
        .next()
        .unwrap_or("")
        .to_string();
    let o = run_with_input(&["run", "-i", "--", "md5sum"], data)?;
    check(o.status.success(), "md5sum in the guest should succeed", &o)?;
    check(
        stdout(&o).starts_with(&expected) && !expected.is_empty(),
        "the guest should see exactly the bytes sent",
        &o,
    )?;
    let o = run_with_input(&["run", "-i", "--", "wc", "-c"], payload(4 << 20))?;
    check(
        stdout(&o).trim() == (4 << 20).to_string(),
        "the guest should count every byte",
        &o,
    )
}

fn without_i_reads_nothing() -> Result<(), Failed> {
    let o = run_with_input(&["run", "--", "wc", "-c"], b"not for the guest".to_vec())?;
    check(
        o.status.success() && stdout(&o).trim() == "0",
        "without -i the command's stdin is empty",
        &o,
    )
}
