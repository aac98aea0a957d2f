//! `supermachine-worker`: runs one virtual machine and exits with a status
//! that says how it ended (see `supermachine_protocol::worker_exit`).
//!
//! The worker owns its VM directory: it creates the vsock muxer socket there
//! and removes the whole directory when it ends, however it ends (short of
//! SIGKILL), so a supervisor that dies leaves nothing behind.

use clap::Parser;
use std::path::PathBuf;
use supermachine_protocol::{disk_spec, worker_exit};
use supermachine_vmm::{DiskConfig, Outcome, Vm, VmConfig, VsockConfig};

#[derive(Parser, Debug)]
#[command(
    name = "supermachine-worker",
    about = "Runs one supermachine virtual machine (started by supermachine, not by hand)"
)]
struct Args {
    /// Uncompressed guest kernel (vmlinux ELF).
    #[arg(long)]
    kernel: PathBuf,
    #[arg(long)]
    initrd: Option<PathBuf>,
    /// Extra kernel command line.
    #[arg(long, default_value = "")]
    cmdline: String,
    #[arg(long, default_value_t = 256)]
    memory_mib: u64,
    #[arg(long, default_value_t = 1)]
    vcpus: u8,
    /// A disk: PATH or PATH:ro. Repeat for more; the first is /dev/vda.
    #[arg(long = "disk")]
    disks: Vec<String>,
    /// The VM's runtime directory: holds vsock.sock; removed when the worker ends.
    #[arg(long)]
    vm_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 3)]
    guest_cid: u64,
    #[arg(long)]
    serial_log: Option<PathBuf>,
    /// Copy the guest console to stderr.
    #[arg(long)]
    console: bool,
}

fn parse_disk(spec: &str) -> DiskConfig {
    let (path, read_only) = disk_spec::parse(spec);
    DiskConfig {
        path: path.into(),
        read_only,
    }
}

/// Blocks the stop signals in every thread (so vCPU threads are never
/// interrupted by them) and waits for them on a dedicated thread.
fn watch_stop_signals(on_stop: impl FnOnce() + Send + 'static) -> std::io::Result<()> {
    // SAFETY: plain sigset manipulation on a zeroed, owned set.
    let set = unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
            libc::sigaddset(&mut set, s);
        }
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        set
    };
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut sig = 0;
            // SAFETY: `set` is a valid signal set and `sig` a valid out pointer.
            unsafe { libc::sigwait(&set, &mut sig) };
            on_stop();
        })?;
    Ok(())
}

fn main() {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_env("SUPERMACHINE_LOG"))
        .with_writer(std::io::stderr)
        .init();
    let args = match Args::try_parse() {
        Ok(a) => a,
        Err(e) => {
            let _ = e.print();
            std::process::exit(if e.use_stderr() {
                worker_exit::USAGE
            } else {
                0
            });
        }
    };
    let vm_dir = args.vm_dir.clone();
    let code = run(args);
    if let Some(dir) = vm_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    std::process::exit(code);
}

fn run(args: Args) -> i32 {
    let config = VmConfig {
        kernel: args.kernel,
        initrd: args.initrd,
        extra_cmdline: args.cmdline,
        memory_mib: args.memory_mib,
        vcpus: args.vcpus,
        disks: args.disks.iter().map(|d| parse_disk(d)).collect(),
        vsock: args.vm_dir.as_ref().map(|d| VsockConfig {
            guest_cid: args.guest_cid,
            uds_path: d.join("vsock.sock"),
        }),
        rng: true,
        serial_log: args.serial_log,
        console_echo: args.console,
    };
    let vm = match Vm::build(&config) {
        Ok(vm) => vm,
        Err(e) => {
            eprintln!("supermachine-worker: {e}");
            return worker_exit::ERROR;
        }
    };
    let exit = vm.exit_sender();
    if let Err(e) = watch_stop_signals(move || exit.send(Outcome::Stopped)) {
        eprintln!("supermachine-worker: cannot watch signals: {e}");
        return worker_exit::ERROR;
    }
    match vm.run() {
        Ok(outcome) => {
            if let Outcome::Crash(why) = &outcome {
                eprintln!("supermachine-worker: {why}");
            }
            outcome.exit_code()
        }
        Err(e) => {
            eprintln!("supermachine-worker: {e}");
            worker_exit::ERROR
        }
    }
}
