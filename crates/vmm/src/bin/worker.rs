//! `supermachine-worker`: runs one virtual machine and exits with a status
//! that says how it ended (see `supermachine_protocol::worker_exit`).
//!
//! The worker owns its VM directory: it creates the vsock muxer socket and
//! the control socket (`supermachine_protocol::worker_control`) there and
//! removes the whole directory when it ends, however it ends (short of
//! SIGKILL), so a supervisor that dies leaves nothing behind.
//!
//! It either boots a kernel (`--kernel`) or restores a snapshot
//! (`--restore DIR`, with the same `--disk`s the snapshotted VM had).

use clap::Parser;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use supermachine_protocol::worker_control::{self, WorkerReply, WorkerRequest};
use supermachine_protocol::{disk_spec, read_frame, worker_exit, write_frame};
use supermachine_vmm::outcome::ExitSender;
use supermachine_vmm::{
    ControlHandle, DiskConfig, Outcome, RestoreConfig, Vm, VmConfig, VsockConfig,
};

#[derive(Parser, Debug)]
#[command(
    name = "supermachine-worker",
    about = "Runs one supermachine virtual machine (started by supermachine, not by hand)"
)]
struct Args {
    /// Uncompressed guest kernel (vmlinux ELF) to boot.
    #[arg(long, required_unless_present = "restore", conflicts_with = "restore")]
    kernel: Option<PathBuf>,
    /// Restore the snapshot in this directory instead of booting.
    #[arg(long)]
    restore: Option<PathBuf>,
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

fn build(args: Args) -> Result<Vm, supermachine_vmm::VmError> {
    let disks = args.disks.iter().map(|d| parse_disk(d)).collect();
    let vsock = args.vm_dir.as_ref().map(|d| VsockConfig {
        guest_cid: args.guest_cid,
        uds_path: d.join("vsock.sock"),
    });
    match (args.restore, args.kernel) {
        (Some(snapshot_dir), _) => Vm::restore(&RestoreConfig {
            snapshot_dir,
            disks,
            vsock,
            rng: true,
            serial_log: args.serial_log,
            console_echo: args.console,
        }),
        (None, Some(kernel)) => Vm::build(&VmConfig {
            kernel,
            initrd: args.initrd,
            extra_cmdline: args.cmdline,
            memory_mib: args.memory_mib,
            vcpus: args.vcpus,
            disks,
            vsock,
            rng: true,
            serial_log: args.serial_log,
            console_echo: args.console,
        }),
        (None, None) => Err(supermachine_vmm::VmError::Config(
            "give --kernel to boot or --restore to restore".into(),
        )),
    }
}

/// Serves the control socket: one request and one reply per connection.
fn serve_control(listener: UnixListener, control: ControlHandle, exit: ExitSender) {
    for stream in listener.incoming() {
        let Ok(mut stream) = stream else { continue };
        let request = match read_frame::<WorkerRequest, _>(&mut stream) {
            Ok(r) => r,
            Err(e) => {
                let _ = write_frame(
                    &mut stream,
                    &WorkerReply::Failed(format!("bad request: {e}")),
                );
                continue;
            }
        };
        match request {
            WorkerRequest::Snapshot { dir, stop_after } => {
                let result = control.snapshot(dir, stop_after);
                let stop = stop_after && result.is_ok();
                let reply = match result {
                    Ok(report) => WorkerReply::Snapshotted(report),
                    Err(e) => WorkerReply::Failed(e),
                };
                let _ = write_frame(&mut stream, &reply);
                drop(stream);
                if stop {
                    exit.send(Outcome::Stopped);
                    return;
                }
            }
        }
    }
}

fn start_control(dir: &Path, vm: &Vm) -> std::io::Result<()> {
    let path = dir.join(worker_control::SOCKET);
    let _ = std::fs::remove_file(&path);
    let listener = UnixListener::bind(&path)?;
    let (control, exit) = (vm.control(), vm.exit_sender());
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || serve_control(listener, control, exit))?;
    Ok(())
}

fn run(args: Args) -> i32 {
    let vm_dir = args.vm_dir.clone();
    let vm = match build(args) {
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
    if let Some(dir) = &vm_dir {
        if let Err(e) = start_control(dir, &vm) {
            eprintln!("supermachine-worker: cannot start the control socket: {e}");
            return worker_exit::ERROR;
        }
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
