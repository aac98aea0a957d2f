//! `supermachine-agent`: PID 1 of a supermachine guest, or (with
//! `--serve-unix PATH`) the same protocol server on a Unix socket for tests.
//!
//! `no_main` on purpose: std's own startup reopens closed fds 0-2 on
//! /dev/null and aborts when it cannot, and an initramfs without device
//! nodes gives PID 1 exactly that, so the agent would die before its first
//! line. Here the agent mounts /dev and sets up stdio itself.
#![no_main]

use std::ffi::{CStr, OsStr, OsString};
use std::io::Write;
use std::os::unix::ffi::OsStrExt;
use std::path::Path;
use std::time::Duration;
use supermachine_agent::power::{self, Action};
use supermachine_agent::server::{self, OnShutdown};
use supermachine_agent::transport::{self, Listener};
use supermachine_agent::{boot, cmdline, log, reaper, AGENT_VERSION};
use supermachine_protocol::{write_frame, AgentMessage, AGENT_PORT, PROTOCOL_VERSION, READY_PORT};

/// Signals PID 1 acts on, besides SIGCHLD (busybox init's meanings, so the
/// guest's own `poweroff`, `halt` and `reboot` work).
const INIT_SIGNALS: &[libc::c_int] = &[
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGTERM,
    libc::SIGINT,
    libc::SIGHUP,
];

#[no_mangle]
extern "C" fn main(argc: libc::c_int, argv: *const *const libc::c_char) -> libc::c_int {
    // std's startup normally does this; a peer closing a socket or pipe
    // must be an error return, never a fatal signal for PID 1.
    // SAFETY: plain syscall.
    unsafe { libc::signal(libc::SIGPIPE, libc::SIG_IGN) };
    let args: Vec<OsString> = (1..usize::try_from(argc).unwrap_or(0))
        .map(|i| {
            // SAFETY: the C runtime passes `argv` with `argc` entries, and
            // `i < argc`.
            let entry = unsafe { argv.add(i) };
            // SAFETY: `entry` points into that array.
            let arg = unsafe { *entry };
            // SAFETY: each entry is a valid NUL-terminated string that lives
            // as long as the process.
            let arg = unsafe { CStr::from_ptr(arg) };
            OsStr::from_bytes(arg.to_bytes()).into()
        })
        .collect();

    match args.first().map(|a| a.as_bytes()) {
        Some(b"--serve-unix") => match args.get(1) {
            Some(path) => serve_unix(Path::new(path)),
            None => usage(),
        },
        Some(b"--version") => {
            let _ = writeln!(std::io::stdout(), "supermachine-agent {AGENT_VERSION}");
            0
        }
        // SAFETY: plain syscall. The kernel passes unknown boot arguments
        // to init's argv, so as PID 1 any arguments are accepted.
        _ if unsafe { libc::getpid() } == 1 => init(),
        _ => usage(),
    }
}

fn usage() -> libc::c_int {
    let _ = writeln!(
        std::io::stderr(),
        "usage: supermachine-agent            (as PID 1 in a supermachine VM)\n       \
         supermachine-agent --serve-unix PATH   (serve the protocol on a Unix socket, for tests)"
    );
    2
}

/// Test mode: no mounts, no power, no vsock; children are still reaped
/// through the same registry.
fn serve_unix(path: &Path) -> libc::c_int {
    boot::ensure_std_fds(c"/dev/null", libc::O_RDWR);
    let started = reaper::block(&[libc::SIGCHLD]).and_then(|()| reaper::start(&[], |_| {}));
    if let Err(e) = started {
        log!("cannot start the reaper: {e}");
        return 1;
    }
    let listener = match Listener::unix(path) {
        Ok(listener) => listener,
        Err(e) => {
            log!("cannot listen on {}: {e}", path.display());
            return 1;
        }
    };
    server::serve(listener, OnShutdown::Exit)
}

fn init() -> ! {
    // Before any thread exists, so every thread inherits the mask and only
    // the reaper's sigwaitinfo ever sees these signals.
    let mut blocked = INIT_SIGNALS.to_vec();
    blocked.push(libc::SIGCHLD);
    if let Err(e) = reaper::block(&blocked) {
        log!("cannot block signals: {e}");
    }
    if let Err(e) = boot::mount_early() {
        fatal(&e);
    }
    log!("supermachine-agent {AGENT_VERSION} starting");

    let cmdline = std::fs::read_to_string("/proc/cmdline").unwrap_or_else(|e| {
        log!("cannot read /proc/cmdline ({e}); using defaults");
        String::new()
    });
    let cfg = cmdline::parse(&cmdline);
    match &cfg.root {
        Some(dev) => match boot::switch_root(&cfg) {
            Ok(()) => log!("root {dev} mounted read-only under a tmpfs overlay"),
            Err(e) => fatal(&e),
        },
        None => log!("no supermachine.root on the command line: staying in the initramfs"),
    }
    if let Err(e) = boot::mount_shares(&cfg.mounts) {
        fatal(&e);
    }
    if let Err(e) = boot::mount_volumes(&cfg.volumes) {
        fatal(&e);
    }
    if let Err(e) = boot::set_hostname(&cfg.hostname) {
        log!("cannot set hostname {:?}: {e}", cfg.hostname);
    }
    if let Err(e) = boot::loopback_up() {
        log!("cannot bring up lo: {e}");
    }
    if let Some(net) = &cfg.net {
        // A guest without its network still runs: say why, and go on.
        if let Err(e) = supermachine_agent::net::configure(net, std::path::Path::new("/etc")) {
            log!("cannot set up the network: {e}");
        }
    }
    if let Err(e) = reaper::start(INIT_SIGNALS, on_signal) {
        fatal(&format!("cannot start the reaper thread: {e}"));
    }

    let listener = listen_vsock();
    announce_ready();
    server::serve(listener, OnShutdown::Power)
}

fn on_signal(sig: libc::c_int) {
    match sig {
        libc::SIGUSR1 | libc::SIGUSR2 => power::run(Action::PowerOff),
        libc::SIGTERM => power::run(Action::Reboot),
        // Nothing to forward to yet. When the agent runs the image's
        // command as the workload, SIGINT/SIGHUP (and a SIGTERM the host
        // wants delivered) go to its process group here.
        _ => {}
    }
}

/// Stops the boot with a message the host sees on the serial console.
fn fatal(msg: &str) -> ! {
    log!("FATAL: {msg}");
    power::run(Action::BootFailed)
}

fn listen_vsock() -> Listener {
    // The vsock driver is built in and probed before init, so this only
    // retries briefly; without vsock the host can never reach the agent.
    let mut last = None;
    for _ in 0..20 {
        match Listener::vsock(AGENT_PORT) {
            Ok(listener) => return listener,
            Err(e) => last = Some(e),
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let err = last.map_or_else(String::new, |e| e.to_string());
    fatal(&format!("cannot listen on vsock port {AGENT_PORT}: {err}"))
}

/// Tells the host the agent is up: one `Ready` frame on `READY_PORT`.
fn announce_ready() {
    let ready = AgentMessage::Ready {
        protocol: PROTOCOL_VERSION,
        agent_version: AGENT_VERSION.to_string(),
    };
    let mut last = String::new();
    for attempt in 1..=5u64 {
        let sent = transport::connect_vsock(libc::VMADDR_CID_HOST, READY_PORT)
            .map_err(|e| e.to_string())
            .and_then(|s| write_frame(&mut &s, &ready).map_err(|e| e.to_string()));
        match sent {
            Ok(()) => {
                log!("ready (vsock port {AGENT_PORT})");
                return;
            }
            Err(e) => last = e,
        }
        std::thread::sleep(Duration::from_millis(50 * attempt));
    }
    log!("cannot announce readiness on host vsock port {READY_PORT} ({last}); serving anyway");
}
