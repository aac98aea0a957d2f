//! `supermachine-worker`: runs one virtual machine and exits with a status
//! that says how it ended (see `supermachine_protocol::worker_exit`).
//!
//! The worker owns its VM directory: it creates the vsock muxer socket and
//! the control socket (`supermachine_protocol::worker_control`) there and
//! removes the whole directory when it ends, however it ends (short of
//! SIGKILL), so a supervisor that dies leaves nothing behind.
//!
//! It boots a kernel (`--kernel`), restores a snapshot (`--restore DIR`,
//! with the same `--disk`s the snapshotted VM had), or starts on standby
//! (`--standby`): it opens KVM, creates an empty VM and waits on its control
//! socket for a `Restore` request, so a restore into it skips process start
//! and VM creation.
//!
//! What it makes on the host is private to its user: the VM directory
//! becomes 0700, its sockets and files 0600, and a connection to either
//! socket from another user (root aside) is closed unanswered. Its logs
//! are capped: the serial log at `--serial-log-cap`, its own (stderr, when
//! that is a file) at `--log-cap`.

use clap::Parser;
use std::io::Write;
use std::os::unix::net::UnixListener;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use supermachine_protocol::net_spec::NetSpec;
use supermachine_protocol::worker_control::{
    self, FailureKind, WorkerFailure, WorkerReply, WorkerRequest,
};
use supermachine_protocol::{disk_spec, read_frame, worker_exit, write_frame};
use supermachine_vmm::capped_log::{self, StderrLog};
use supermachine_vmm::outcome::ExitSender;
use supermachine_vmm::snapshot::hot_pages;
use supermachine_vmm::{files, limited, sockets};
use supermachine_vmm::{
    ControlHandle, DiskConfig, EmptyVm, FsSpec, NetConfig, Outcome, RestoreConfig, Vm, VmConfig,
    VsockConfig,
};

#[derive(Parser, Debug)]
#[command(
    name = "supermachine-worker",
    about = "Runs one supermachine virtual machine (started by supermachine, not by hand)"
)]
struct Args {
    /// Uncompressed guest kernel (vmlinux ELF) to boot.
    #[arg(long, required_unless_present_any = ["restore", "standby"], conflicts_with_all = ["restore", "standby"])]
    kernel: Option<PathBuf>,
    /// Restore the snapshot in this directory instead of booting.
    #[arg(long, conflicts_with = "standby")]
    restore: Option<PathBuf>,
    /// Prepare an empty VM and wait on the control socket (needs --vm-dir)
    /// for a request naming the snapshot to restore.
    #[arg(long, requires = "vm_dir")]
    standby: bool,
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
    /// A host directory shared with the guest (virtio-fs), as
    /// `tag=TAG[,symlinks=deny|opaque|follow][,ro],path=/HOST/DIR`; the
    /// guest mounts it with `mount -t virtiofs TAG DIR`. Repeat for more.
    #[arg(long = "fs", value_name = "SPEC")]
    fs: Vec<FsSpec>,
    /// A network card whose traffic a passt of its own carries, with
    /// where the guest may connect to: `public` or
    /// `allow=CIDR[:PORTS],…` (see supermachine_protocol::net_spec).
    #[arg(long = "net", value_name = "SPEC")]
    net: Option<NetSpec>,
    /// The passt binary (looked up on PATH unless a path).
    #[arg(long, default_value = "passt")]
    passt: PathBuf,
    /// The VM's runtime directory: holds vsock.sock; removed when the worker ends.
    #[arg(long)]
    vm_dir: Option<PathBuf>,
    #[arg(long, default_value_t = 3)]
    guest_cid: u64,
    #[arg(long)]
    serial_log: Option<PathBuf>,
    /// Most bytes the serial log keeps (K, M, G suffixes: KiB, MiB, GiB):
    /// the first half of the guest's output, then its latest, with a count
    /// of what was dropped between.
    #[arg(long, value_parser = parse_size, default_value = "16M")]
    serial_log_cap: u64,
    /// Most bytes the worker's own log keeps when its stderr is a file
    /// (kept the same way as the serial log's).
    #[arg(long, value_parser = parse_size, default_value = "4M")]
    log_cap: u64,
    /// Copy the guest console to stderr.
    #[arg(long)]
    console: bool,
    /// This worker dies with its parent, whose pid this is: it asks for
    /// a signal when the parent goes, and when it is stopped after the
    /// parent is gone, nobody is left to read the serial log, so the
    /// worker removes it.
    #[arg(long, value_name = "PID")]
    owned_by_parent: Option<libc::pid_t>,
}

/// A byte count: digits, then optionally K, M or G (KiB, MiB, GiB).
fn parse_size(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let (digits, shift) = match text.strip_suffix(['K', 'M', 'G']) {
        Some(digits) => (
            digits,
            match text.as_bytes()[text.len() - 1] {
                b'K' => 10,
                b'M' => 20,
                _ => 30,
            },
        ),
        None => (text, 0),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{text:?}: a number of bytes, optionally with K, M or G"))?;
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{text:?}: too large"))
}

/// One line to the worker's log, whatever the log filter (the library
/// reads these to say why a worker failed).
fn say(line: std::fmt::Arguments) {
    let _ = writeln!(StderrLog, "supermachine-worker: {line}");
}

fn parse_disk(spec: &str) -> DiskConfig {
    let (path, read_only) = disk_spec::parse(spec);
    DiskConfig {
        path: path.into(),
        read_only,
    }
}

/// Blocks the stop signals in every thread (so vCPU threads are never
/// interrupted by them) and waits for them on a dedicated thread, which
/// calls `on_stop` with the first one.
fn watch_stop_signals(on_stop: impl FnOnce(i32) + Send + 'static) -> std::io::Result<()> {
    // SAFETY: sigset_t is plain data; all-zero is a valid value.
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: `set` is a live sigset_t the call only writes.
    unsafe { libc::sigemptyset(&mut set) };
    let owner_gone = worker_exit::OWNER_GONE_SIGNAL;
    for s in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP, owner_gone] {
        // SAFETY: as above; every signal number here is valid.
        unsafe { libc::sigaddset(&mut set, s) };
    }
    // SAFETY: a valid set to block; the old mask is not asked for (null).
    let failed = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if failed != 0 {
        // pthread_sigmask returns its error instead of setting errno.
        return Err(std::io::Error::from_raw_os_error(failed));
    }
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut sig = 0;
            // SAFETY: `set` is a valid signal set and `sig` a valid out pointer.
            unsafe { libc::sigwait(&set, &mut sig) };
            on_stop(sig);
        })?;
    Ok(())
}

/// The log filter: `SUPERMACHINE_LOG` as given, and the lines of crates
/// a guest can make log at will ([`GUEST_DRIVEN_LOGGERS`]) off unless it
/// names them; the devices report what matters themselves, rate-limited.
fn log_filter() -> tracing_subscriber::EnvFilter {
    let given = std::env::var("SUPERMACHINE_LOG").unwrap_or_default();
    let mut directives = if given.trim().is_empty() {
        "error".to_string()
    } else {
        given.clone()
    };
    for chatty in GUEST_DRIVEN_LOGGERS {
        if !given.contains(chatty) {
            directives.push_str(&format!(",{chatty}=off"));
        }
    }
    tracing_subscriber::EnvFilter::builder().parse_lossy(directives)
}

/// Crates that log a line (at error level) for each malformed thing a
/// guest hands them: virtio-queue for rings and registers, fuse-backend-rs
/// for FUSE messages. Off unless named in SUPERMACHINE_LOG.
const GUEST_DRIVEN_LOGGERS: [&str; 2] = ["virtio_queue", "fuse_backend_rs"];

fn main() {
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
    if let Err(e) = capped_log::cap_stderr(args.log_cap) {
        eprintln!("supermachine-worker: cannot cap its log: {e}");
    }
    tracing_subscriber::fmt()
        .with_env_filter(log_filter())
        .with_writer(|| StderrLog)
        // A detached worker's stderr is a log file: no color codes in it.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let args = Arc::new(args);
    // SAFETY: getppid has no preconditions.
    let parent = unsafe { libc::getppid() };
    // Until the VM runs, a stop signal ends the worker at once; then it
    // asks the VM to stop. Signals are blocked before any thread exists,
    // so no thread of ours (devices start theirs during a restore) can
    // die of one.
    let on_stop: StopTarget = Arc::new(Mutex::new(None));
    let watched = {
        let (args, on_stop) = (args.clone(), on_stop.clone());
        watch_stop_signals(move |signal| {
            if signal == worker_exit::OWNER_GONE_SIGNAL {
                OWNER_GONE.store(true, Ordering::Relaxed);
            }
            let exit = on_stop.lock().unwrap_or_else(|e| e.into_inner()).take();
            match exit {
                Some(exit) => exit.send(Outcome::Stopped),
                None => {
                    clean_up(&args, parent, worker_exit::STOPPED);
                    std::process::exit(worker_exit::STOPPED);
                }
            }
        })
    };
    let code = match watched.and_then(|()| die_with_owner(args.owned_by_parent)) {
        Ok(OwnerAlive(true)) => run(&args, &on_stop),
        Ok(OwnerAlive(false)) => {
            OWNER_GONE.store(true, Ordering::Relaxed);
            worker_exit::STOPPED
        }
        Err(e) => {
            say(format_args!("cannot watch signals: {e}"));
            worker_exit::ERROR
        }
    };
    clean_up(&args, parent, code);
    std::process::exit(code);
}

/// Whether the process that owns this worker is still there.
struct OwnerAlive(bool);

/// Asks for the owner-gone signal when the thread that started this
/// process ends. The worker does this itself, rather than between fork and
/// exec in the parent, so that the parent can start it with posix_spawn
/// (no copy of the parent's page tables; a fork of a large parent costs
/// tens of milliseconds of CPU). The signal is blocked and waited for by
/// then, so it arrives as a request to stop, never as a kill. An owner
/// that went before the signal was armed never sends it: that is checked
/// after arming.
fn die_with_owner(owner: Option<libc::pid_t>) -> std::io::Result<OwnerAlive> {
    let Some(owner) = owner else {
        return Ok(OwnerAlive(true));
    };
    let signal = worker_exit::OWNER_GONE_SIGNAL as libc::c_ulong;
    // SAFETY: PR_SET_PDEATHSIG takes a signal number and changes nothing
    // else.
    if unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, signal) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: getppid has no preconditions.
    Ok(OwnerAlive(unsafe { libc::getppid() } == owner))
}

/// Set when the stop came from the owner's death (its signal).
static OWNER_GONE: AtomicBool = AtomicBool::new(false);

/// Where a stop signal goes once the VM runs.
type StopTarget = Arc<Mutex<Option<ExitSender>>>;

/// Removes what the worker owns as it ends.
fn clean_up(args: &Args, parent: libc::pid_t, code: i32) {
    // SAFETY: getppid has no preconditions.
    let orphaned = OWNER_GONE.load(Ordering::Relaxed) || unsafe { libc::getppid() } != parent;
    if args.owned_by_parent.is_some() && orphaned && code == worker_exit::STOPPED {
        if let Some(log) = &args.serial_log {
            let _ = std::fs::remove_file(log);
        }
    }
    // Last: a VM whose directory is gone is gone (`supermachine ps`).
    if let Some(dir) = &args.vm_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
}

fn vsock_config(args: &Args) -> Option<VsockConfig> {
    args.vm_dir.as_ref().map(|d| VsockConfig {
        guest_cid: args.guest_cid,
        uds_path: d.join("vsock.sock"),
    })
}

fn net_config(args: &Args) -> Option<NetConfig> {
    args.net.as_ref().map(|spec| NetConfig {
        egress: Some(spec.clone()),
        passt: args.passt.clone(),
        log: args.vm_dir.as_ref().map(|d| d.join("passt.log")),
    })
}

fn restore_config(args: &Args, snapshot_dir: PathBuf, disks: &[String]) -> RestoreConfig {
    RestoreConfig {
        snapshot_dir,
        disks: disks.iter().map(|d| parse_disk(d)).collect(),
        vsock: vsock_config(args),
        rng: true,
        fs: args.fs.clone(),
        net: net_config(args),
        serial_log: args.serial_log.clone(),
        serial_log_cap: args.serial_log_cap,
        console_echo: args.console,
    }
}

fn build(args: &Args) -> Result<Vm, supermachine_vmm::VmError> {
    match (&args.restore, &args.kernel) {
        (Some(snapshot_dir), _) => {
            Vm::restore(&restore_config(args, snapshot_dir.clone(), &args.disks))
        }
        (None, Some(kernel)) => Vm::build(&VmConfig {
            kernel: kernel.clone(),
            initrd: args.initrd.clone(),
            extra_cmdline: args.cmdline.clone(),
            memory_mib: args.memory_mib,
            vcpus: args.vcpus,
            disks: args.disks.iter().map(|d| parse_disk(d)).collect(),
            vsock: vsock_config(args),
            rng: true,
            fs: args.fs.clone(),
            net: net_config(args),
            serial_log: args.serial_log.clone(),
            serial_log_cap: args.serial_log_cap,
            console_echo: args.console,
        }),
        (None, None) => Err(supermachine_vmm::VmError::Config(
            "give --kernel to boot or --restore to restore".into(),
        )),
    }
}

/// Standby: prepares an empty VM, then serves the control socket until a
/// `Restore` request arrives, and restores into the prepared VM.
fn standby(args: &Args, listener: &UnixListener) -> Result<Vm, String> {
    let mut empty = EmptyVm::new().map_err(|e| e.to_string())?;
    if let Some(log) = &args.serial_log {
        empty = empty.with_serial_log(log).map_err(|e| e.to_string())?;
    }
    for stream in listener.incoming() {
        let Some(mut stream) = trusted(stream) else {
            continue;
        };
        match read_frame::<WorkerRequest, _>(&mut stream) {
            Ok(WorkerRequest::Restore {
                snapshot_dir,
                disks,
            }) => {
                let restored = Vm::restore_into(empty, &restore_config(args, snapshot_dir, &disks));
                let reply = match &restored {
                    Ok(_) => WorkerReply::Restored,
                    Err(e) => WorkerReply::Refused(e.failure()),
                };
                let _ = write_frame(&mut stream, &reply);
                return restored.map_err(|e| e.to_string());
            }
            Ok(other) => {
                let reply = refused(
                    FailureKind::BadRequest,
                    format!("on standby, nothing to do for {other:?}"),
                );
                let _ = write_frame(&mut stream, &reply);
            }
            Err(e) => {
                let _ = write_frame(&mut stream, &bad_frame(e));
            }
        }
    }
    Err("the control socket closed".into())
}

/// A refusal of `kind`, with what to tell a person.
fn refused(kind: FailureKind, message: impl Into<String>) -> WorkerReply {
    WorkerReply::Refused(WorkerFailure::new(kind, message))
}

/// The answer to a connection whose request did not decode.
fn bad_frame(e: impl std::fmt::Display) -> WorkerReply {
    refused(FailureKind::BadRequest, format!("bad request: {e}"))
}

/// An accepted control connection, if it is from this worker's user (or
/// root); any other is closed unanswered.
fn trusted(
    stream: std::io::Result<std::os::unix::net::UnixStream>,
) -> Option<std::os::unix::net::UnixStream> {
    let stream = stream.ok()?;
    if sockets::peer_is_trusted(&stream) {
        Some(stream)
    } else {
        limited!(
            warn,
            "control socket: closed a connection from another user's process"
        );
        None
    }
}

/// Serves the control socket: one request and one reply per connection.
fn serve_control(
    listener: UnixListener,
    control: ControlHandle,
    exit: ExitSender,
    recorder: Option<hot_pages::Recorder>,
) {
    for stream in listener.incoming() {
        let Some(mut stream) = trusted(stream) else {
            continue;
        };
        let request = match read_frame::<WorkerRequest, _>(&mut stream) {
            Ok(r) => r,
            Err(e) => {
                let _ = write_frame(&mut stream, &bad_frame(e));
                continue;
            }
        };
        match request {
            WorkerRequest::Restore { .. } => {
                let reply = refused(FailureKind::BadRequest, "this worker already runs a VM");
                let _ = write_frame(&mut stream, &reply);
            }
            WorkerRequest::RecordHotPages => {
                let reply = match &recorder {
                    Some(recorder) => match recorder.record() {
                        Ok(hot) => WorkerReply::HotPagesRecorded {
                            touched: hot.touched_pages(),
                            written: hot.written_pages(),
                        },
                        Err(e) => {
                            refused(FailureKind::HotPages, format!("recording hot pages: {e}"))
                        }
                    },
                    None => refused(
                        FailureKind::HotPages,
                        "no hot pages to record: not restored, or the snapshot has a list",
                    ),
                };
                let _ = write_frame(&mut stream, &reply);
            }
            WorkerRequest::Snapshot { dir, stop_after } => {
                let result = control.snapshot(dir, stop_after);
                let stop = stop_after && result.is_ok();
                let reply = match result {
                    Ok(report) => WorkerReply::Snapshotted(report),
                    Err(e) => WorkerReply::Refused(e.failure()),
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

/// Makes the VM directory private and listens on its control socket.
fn bind_control(dir: &Path) -> std::io::Result<UnixListener> {
    files::make_private_dir(dir)?;
    sockets::bind_private(&dir.join(worker_control::SOCKET))
}

fn start_control(listener: UnixListener, vm: &Vm) -> std::io::Result<()> {
    let (control, exit) = (vm.control(), vm.exit_sender());
    let recorder = vm.hot_pages_recorder();
    std::thread::Builder::new()
        .name("control".into())
        .spawn(move || serve_control(listener, control, exit, recorder))?;
    Ok(())
}

fn run(args: &Args, on_stop: &StopTarget) -> i32 {
    let control = match args.vm_dir.as_deref().map(bind_control).transpose() {
        Ok(listener) => listener,
        Err(e) => {
            say(format_args!("cannot start the control socket: {e}"));
            return worker_exit::ERROR;
        }
    };
    let vm = match (&control, args.standby) {
        (Some(listener), true) => standby(args, listener),
        _ => build(args).map_err(|e| e.to_string()),
    };
    let vm = match vm {
        Ok(vm) => vm,
        Err(e) => {
            say(format_args!("{e}"));
            return worker_exit::ERROR;
        }
    };
    *on_stop.lock().unwrap_or_else(|e| e.into_inner()) = Some(vm.exit_sender());
    if let Some(listener) = control {
        if let Err(e) = start_control(listener, &vm) {
            say(format_args!("cannot start the control socket: {e}"));
            return worker_exit::ERROR;
        }
    }
    match vm.run() {
        Ok(outcome) => {
            if let Outcome::Crash(why) = &outcome {
                say(format_args!("{why}"));
            }
            outcome.exit_code()
        }
        Err(e) => {
            say(format_args!("{e}"));
            worker_exit::ERROR
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{parse_size, worker_exit};

    #[test]
    fn sizes_take_binary_suffixes() {
        assert_eq!(parse_size("4096"), Ok(4096));
        assert_eq!(parse_size("16M"), Ok(16 << 20));
        assert_eq!(parse_size("2G"), Ok(2 << 30));
        assert_eq!(parse_size("8K"), Ok(8192));
        assert!(parse_size("16MB").is_err());
        assert!(parse_size("-1").is_err());
        assert!(parse_size("99999999999G").is_err());
    }

    #[test]
    fn the_owner_gone_signal_is_sigusr2() {
        // The protocol crate has no libc; this pins its number to the name.
        assert_eq!(worker_exit::OWNER_GONE_SIGNAL, libc::SIGUSR2);
    }
}
