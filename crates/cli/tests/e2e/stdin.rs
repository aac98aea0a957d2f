//! `run -i`: the host's stdin streams into the guest command.

use crate::util::{check, stdout, supermachine};
use libtest_mimic::{Failed, Trial};
use std::io::Write;
use std::process::Stdio;

pub fn trials() -> Vec<Trial> {
    vec![
        Trial::test(
            "stdin::piped_bytes_arrive_intact",
            piped_bytes_arrive_intact,
        ),
        Trial::test(
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
    let mut child = supermachine()
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()?;
    let mut stdin = child.stdin.take().ok_or("no stdin pipe")?;
    let writer = std::thread::spawn(move || {
        // The guest may finish before reading everything; that is not an error here.
        let _ = stdin.write_all(&input);
    });
    let out = child.wait_with_output()?;
    let _ = writer.join();
    Ok(out)
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
