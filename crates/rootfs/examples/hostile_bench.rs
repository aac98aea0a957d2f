//! Timings and peak memory of hostile layer shapes at N and 10 N entries,
//! to show that applying them grows linearly (no timing is asserted in the
//! tests; this is where speed is looked at). It ends with each case's CPU
//! ratio at 10 N over N against a linear bound (20: linear work gives
//! about 10, quadratic about 100) and exits 1 if a case is past it.
//!
//! ```text
//! cargo run --release -p supermachine-rootfs --example hostile_bench [N]
//! cargo run --release -p supermachine-rootfs --example hostile_bench -- --one CASE N [--image]
//! ```
//!
//! CPU time (user + system) is the figure to compare: wall time on a busy
//! machine also counts waiting for the disk and for other processes.
//! Each case runs in a child process so its peak RSS is its own; the layer
//! is written to a temporary file first and streamed from it, so the RSS is
//! the tree's (and, with `--image`, the EROFS writer's) alone. Cases:
//! `opaque` (N files, each followed by a root opaque marker), `links`
//! (N hard links to one file), `tiny` (N one-byte files), `sparse` (one
//! GNU sparse file of N data chunks), `xattrs` (N PAX records of distinct
//! xattr names; refused by `max_xattr_bytes`, after the work is done).

// A benchmark run by hand: a setup step that fails ends it with its reason.
#![allow(clippy::expect_used)]

use std::io::{BufReader, Seek, Write};
use std::process::Command;
use std::time::Instant;

use supermachine_rootfs::{erofs, Compression, Limits, Tree, TreeOptions};

fn header(name: &[u8], typeflag: u8, size: u64, link: &[u8]) -> [u8; 512] {
    let mut h = [0u8; 512];
    h[..name.len()].copy_from_slice(name);
    h[100..108].copy_from_slice(b"0000644\0");
    h[108..116].copy_from_slice(b"0000000\0");
    h[116..124].copy_from_slice(b"0000000\0");
    h[124..136].copy_from_slice(format!("{size:011o}\0").as_bytes());
    h[136..148].copy_from_slice(b"00000000000\0");
    h[156] = typeflag;
    h[157..157 + link.len()].copy_from_slice(link);
    h[257..263].copy_from_slice(b"ustar\0");
    checksum(&mut h);
    h
}

fn checksum(h: &mut [u8; 512]) {
    h[148..156].fill(b' ');
    let sum: u64 = h.iter().map(|&x| u64::from(x)).sum();
    h[148..156].copy_from_slice(format!("{sum:06o}\0 ").as_bytes());
}

/// Zeros up to the next 512-byte boundary after `len` bytes.
fn pad(out: &mut dyn Write, len: usize) {
    let fill = len.next_multiple_of(512) - len;
    out.write_all(&[0u8; 512][..fill]).expect("write");
}

fn member(out: &mut dyn Write, name: &str, typeflag: u8, data: &[u8], link: &str) {
    let h = header(
        name.as_bytes(),
        typeflag,
        data.len() as u64,
        link.as_bytes(),
    );
    out.write_all(&h).expect("write");
    out.write_all(data).expect("write");
    pad(out, data.len());
}

fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let rest = key.len() + value.len() + 3;
    let mut len = rest + 1;
    while len.to_string().len() + rest != len {
        len += 1;
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

/// One GNU sparse member with `n` one-byte data chunks 8 KiB apart.
fn sparse(out: &mut dyn Write, n: u64) {
    let real = n * 8192;
    let mut h = header(b"sparse", b'S', n, b"");
    h[257..265].copy_from_slice(b"ustar  \0");
    let entry = |slot: &mut [u8], i: u64| {
        slot[..12].copy_from_slice(format!("{:011o}\0", i * 8192).as_bytes());
        slot[12..24].copy_from_slice(b"00000000001\0");
    };
    for (i, slot) in h[386..482].chunks_mut(24).enumerate().take(n as usize) {
        entry(slot, i as u64);
    }
    h[482] = u8::from(n > 4);
    h[483..495].copy_from_slice(format!("{real:011o}\0").as_bytes());
    checksum(&mut h);
    out.write_all(&h).expect("write");
    let mut i = 4;
    while i < n {
        let mut ext = [0u8; 512];
        for slot in ext[..504].chunks_mut(24) {
            if i < n {
                entry(slot, i);
                i += 1;
            }
        }
        ext[504] = u8::from(i < n);
        out.write_all(&ext).expect("write");
    }
    out.write_all(&vec![b'x'; n as usize]).expect("write");
    pad(out, n as usize);
}

/// Writes the layer of `case` with `n` entries to `t`.
fn layer(case: &str, n: u64, t: &mut dyn Write) {
    match case {
        "opaque" => {
            for i in 0..n {
                member(t, &format!("d{}/f{i}", i % 64), b'0', b"x", "");
                member(t, ".wh..wh..opq", b'0', b"", "");
            }
        }
        "links" => {
            member(t, "f", b'0', b"x", "");
            for i in 0..n {
                member(t, &format!("d{}/l{i}", i % 64), b'1', b"", "f");
            }
        }
        "tiny" => {
            for i in 0..n {
                member(t, &format!("d{}/f{i}", i % 64), b'0', b"x", "");
            }
        }
        "sparse" => sparse(t, n),
        "xattrs" => {
            let body: Vec<u8> = (0..n as u32)
                .flat_map(|i| pax_record(&format!("SCHILY.xattr.user.k{i}"), b"v"))
                .collect();
            member(t, "PaxHeaders/x", b'x', &body, "");
            member(t, "x", b'0', b"", "");
        }
        other => panic!("unknown case {other}"),
    }
    t.write_all(&[0u8; 1024]).expect("write");
}

/// CPU seconds (user + system) this process has used.
fn cpu_secs() -> f64 {
    // SAFETY: getrusage only writes the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: RUSAGE_SELF with a valid pointer.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn peak_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0)
}

/// Runs one case in this process and prints one line.
fn run(case: &str, n: u64, image: bool) {
    let mut file = tempfile::tempfile().expect("temporary file");
    let mut out = std::io::BufWriter::new(&mut file);
    layer(case, n, &mut out);
    out.flush().expect("writing the layer");
    drop(out);
    let tar_len = file.stream_position().expect("position") as usize;
    file.rewind().expect("rewind");
    // Big enough for the largest cases; the defaults would refuse some.
    let limits = Limits {
        max_header_bytes: 64 << 20,
        max_inodes: 64 << 20,
        ..Limits::default()
    };
    let mut tree = Tree::with_options(TreeOptions {
        spool_dir: None,
        limits,
    })
    .expect("tree");
    let start = Instant::now();
    let cpu = cpu_secs();
    let result = tree.apply_layer(0, BufReader::new(file), Compression::None);
    let mut outcome = match result {
        Ok(_) => "ok".to_string(),
        Err(e) => format!("error: {e}"),
    };
    if image && outcome == "ok" {
        let dir = tempfile::tempdir().expect("temporary directory");
        match erofs::write(&tree, &dir.path().join("img")) {
            Ok(stats) => outcome = format!("ok, image {} MiB", stats.bytes >> 20),
            Err(e) => outcome = format!("image error: {e}"),
        }
    }
    let secs = start.elapsed().as_secs_f64();
    let cpu = cpu_secs() - cpu;
    println!(
        "{case:<7} n={n:<9} cpu {cpu:>7.3} s  wall {secs:>7.3} s  peak RSS {:>5} MiB  tar {:>5} MiB  {outcome}",
        peak_rss_kib() / 1024,
        tar_len >> 20
    );
}

fn main() {
    let args: Vec<String> = std::env::args().collect();
    if let [_, flag, case, n, rest @ ..] = &args[..] {
        if flag == "--one" {
            run(
                case,
                n.parse().expect("n"),
                rest.iter().any(|a| a == "--image"),
            );
            return;
        }
    }
    let n: u64 = args.get(1).and_then(|a| a.parse().ok()).unwrap_or(20_000);
    let me = std::env::current_exe().expect("own path");
    let mut verdicts = Vec::new();
    for case in ["opaque", "links", "tiny", "sparse", "xattrs"] {
        let mut cpu = Vec::new();
        for size in [n, 10 * n] {
            let out = Command::new(&me)
                .args(["--one", case, &size.to_string()])
                .output()
                .expect("child");
            std::io::stdout().write_all(&out.stdout).ok();
            std::io::stderr().write_all(&out.stderr).ok();
            cpu.push(cpu_of(&String::from_utf8_lossy(&out.stdout)));
        }
        verdicts.push((case, cpu[1] / cpu[0].max(1e-3)));
    }
    // Linear work takes about 10 times as long at 10 N; quadratic work
    // about 100 times. Twice the linear figure leaves room for noise and
    // cache effects and still tells the two apart.
    println!("\nCPU time at 10 N over N (linear ≈ 10, quadratic ≈ 100; bound {LINEAR_BOUND}):");
    let mut superlinear = false;
    for (case, ratio) in verdicts {
        let verdict = if ratio <= LINEAR_BOUND {
            "linear"
        } else {
            superlinear = true;
            "SUPERLINEAR"
        };
        println!("{case:<7} {ratio:>6.1}×  {verdict}");
    }
    if superlinear {
        std::process::exit(1);
    }
}

/// Past this ratio of CPU time at 10 N over N a case is not linear.
const LINEAR_BOUND: f64 = 20.0;

/// The CPU seconds a `--one` child printed ("cpu   1.234 s").
fn cpu_of(line: &str) -> f64 {
    line.split("cpu")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .expect("a child's cpu figure")
}
