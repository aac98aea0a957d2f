//! `supermachine-bench`: measurements that are not tests. Results and the
//! commands that produced them go in the README.

mod boot;
mod exec;
mod floor;
mod image;
mod pool;
mod registry;
mod skopeo_umoci;
mod snapshot;
mod volume;

use clap::{Parser, Subcommand};
use std::time::Duration;

#[derive(Parser)]
#[command(
    name = "supermachine-bench",
    about = "supermachine benchmarks (run them in the lab on hosts without VT-x/AMD-V)"
)]
struct Cli {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Cold boot to agent-ready: supermachine vs `qemu-system-x86_64 -M microvm -enable-kvm`.
    Boot {
        #[arg(long, default_value_t = 10)]
        iterations: usize,
        /// Guest vsock CID for the QEMU runs (must be free on this host).
        #[arg(long, default_value_t = 42)]
        qemu_cid: u32,
    },
    /// Exec and file transfer: `exec true` round trips against a bare agent ping and the
    /// guest's own fork+exec time, and streaming throughput.
    Exec {
        #[arg(long, default_value_t = 200)]
        iterations: usize,
        /// MiB moved by each throughput measurement.
        #[arg(long, default_value_t = 1024)]
        mib: u64,
    },
    /// Pull + unpack + root filesystem build of an image, cold (empty store and cache)
    /// and warm (no KVM needed), optionally against `skopeo copy` + `umoci unpack`.
    Image {
        /// The image: a registry reference, oci:DIR[:TAG] or docker-archive:FILE.
        source: String,
        #[arg(long, default_value_t = 5)]
        iterations: usize,
        /// Start Debian's docker-registry on 127.0.0.1 (free port, temp storage), push
        /// SOURCE there with skopeo, and benchmark pulls from it.
        #[arg(long)]
        local_registry: bool,
        /// Also time `skopeo copy` + `umoci unpack --rootless` (Debian's packages) on the
        /// same image, cold and warm, interleaved with ours.
        #[arg(long)]
        compare_skopeo_umoci: bool,
    },
    /// Cold boot to first exec done against restore from a snapshot to first exec done,
    /// interleaved; snapshot time and size; host memory (PSS) per restored VM.
    Snapshot {
        #[arg(long, default_value_t = 10)]
        iterations: usize,
        #[arg(long, default_value_t = 256)]
        memory_mib: u64,
        /// How many VMs to restore at once for the memory measurement.
        #[arg(long, default_value_t = 20)]
        clones: usize,
    },
    /// Warm pool: `acquire()` latency, and restores per second sustained.
    Pool {
        #[arg(long, default_value_t = 20)]
        iterations: usize,
        /// Restores in the throughput measurement.
        #[arg(long, default_value_t = 20)]
        restores: usize,
        /// Restores in flight at once.
        #[arg(long, default_value_t = 2)]
        concurrency: usize,
    },
    /// Writes on a volume (ext4 on a host file) against the same on a raw writable
    /// `--disk`, interleaved in one VM: sequential MiB + fsync, and 4 KiB O_DIRECT writes.
    Volume {
        #[arg(long, default_value_t = 5)]
        iterations: usize,
        /// MiB written by each sequential run.
        #[arg(long, default_value_t = 256)]
        mib: u64,
    },
    /// The host-side floor of a restore, no guest running (works on PVM): map the
    /// memory file, create the KVM VM, restore devices and VM/vCPU state.
    RestoreFloor {
        /// A snapshot directory (`supermachine snapshot ID PATH` or `supermachine build`).
        snapshot: std::path::PathBuf,
        #[arg(long, default_value_t = 30)]
        iterations: usize,
    },
}

fn main() {
    let cli = Cli::parse();
    let result = match cli.bench {
        Bench::Boot {
            iterations,
            qemu_cid,
        } => boot::run(iterations, qemu_cid),
        Bench::Exec { iterations, mib } => exec::run(iterations, mib),
        Bench::Image {
            source,
            iterations,
            local_registry,
            compare_skopeo_umoci,
        } => image::run(
            &source,
            &image::Options {
                iterations,
                local_registry,
                compare_skopeo_umoci,
            },
        ),
        Bench::Snapshot {
            iterations,
            memory_mib,
            clones,
        } => snapshot::run(iterations, memory_mib, clones),
        Bench::Pool {
            iterations,
            restores,
            concurrency,
        } => pool::run(iterations, restores, concurrency),
        Bench::Volume { iterations, mib } => volume::run(iterations, mib),
        Bench::RestoreFloor {
            snapshot,
            iterations,
        } => floor::run(&snapshot, iterations),
    };
    if let Err(e) = result {
        eprintln!("supermachine-bench: {e}");
        std::process::exit(1);
    }
}

type BoxError = Box<dyn std::error::Error>;

/// Progress on stderr, so a stuck run shows where it stuck.
fn step(what: &str) {
    if std::env::var_os("BENCH_VERBOSE").is_some() {
        eprintln!("bench: {what}");
    }
}

/// Fails, naming the Debian package, unless every `(path, package)` exists.
fn require(tools: &[(&str, &str)]) -> Result<(), BoxError> {
    for (bin, package) in tools {
        if !std::path::Path::new(bin).exists() {
            return Err(format!("{bin} is missing: apt-get install -y {package}").into());
        }
    }
    Ok(())
}

/// Flushes dirty pages to disk (untimed) before a timed case, so no case
/// pays for the writeback of the one before it.
fn settle() {
    // SAFETY: sync(2) takes no arguments and cannot fail.
    unsafe { libc::sync() };
}

/// The value at quantile `q` (0..=1) of `samples`, which it sorts.
fn quantile(samples: &mut [Duration], q: f64) -> Duration {
    samples.sort();
    let i = ((samples.len().saturating_sub(1)) as f64 * q).round() as usize;
    samples.get(i).copied().unwrap_or_default()
}

fn ms(d: Duration) -> String {
    format!("{:.3}", d.as_secs_f64() * 1e3)
}
