//! Exec on a pseudo-terminal.

// A test binary: a helper that cannot do its job panics, which fails the
// test that called it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{exec_req, read_until, Agent};
use supermachine_protocol::{
    read_frame, write_frame, AgentMessage, ExecRequest, HostMessage, Request, WindowSize,
};

fn with_pty(mut req: ExecRequest, rows: u16, cols: u16) -> ExecRequest {
    req.pty = Some(WindowSize { rows, cols });
    req
}

/// Waits (up to 120 s: a loaded host is slow) until `pid` runs `sleep`.
fn wait_until_it_is_sleep(pid: u32) {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
    while std::fs::read_to_string(format!("/proc/{pid}/comm"))
        .ok()
        .as_deref()
        != Some("sleep\n")
    {
        assert!(
            std::time::Instant::now() < deadline,
            "pid {pid} never became sleep"
        );
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
}

fn send(s: &mut std::os::unix::net::UnixStream, msg: HostMessage) {
    write_frame(s, &msg).expect("send frame");
}

#[test]
fn the_process_runs_on_a_terminal_of_the_requested_size() {
    let agent = Agent::start();
    let r = agent.exec(with_pty(exec_req(&["tty"]), 24, 80));
    assert!(r.stdout_str().starts_with("/dev/pts/"), "{r:?}");
    // The terminal turns \n into \r\n.
    assert!(r.stdout_str().ends_with("\r\n"), "{r:?}");
    assert_eq!(r.code, Some(0));

    let r = agent.exec(with_pty(
        common::sh("stty size; echo $TERM; echo err >&2"),
        33,
        101,
    ));
    assert_eq!(
        r.stdout_str(),
        "33 101\r\nxterm-256color\r\nerr\r\n",
        "{r:?}"
    );
    assert!(r.stderr.is_empty(), "all output arrives as stdout");

    // The request's TERM wins.
    let mut req = with_pty(common::sh("echo $TERM"), 24, 80);
    req.env = vec![("TERM".into(), "vt100".into())];
    assert_eq!(agent.exec(req).stdout_str(), "vt100\r\n");
}

#[test]
fn a_shell_driven_through_stdin_sees_resizes() {
    let agent = Agent::start();
    let mut req = with_pty(exec_req(&["sh"]), 24, 80);
    req.stdin = true;
    let mut s = agent.request(Request::Exec(req));
    let mut out = Vec::new();
    // The terminal echoes the command line; the markers make the answer
    // distinguishable from the echo.
    send(
        &mut s,
        HostMessage::Stdin(b"echo A$(stty size)B\n".to_vec()),
    );
    read_until(&mut s, &mut out, "A24 80B");
    send(
        &mut s,
        HostMessage::Resize(WindowSize {
            rows: 50,
            cols: 132,
        }),
    );
    send(
        &mut s,
        HostMessage::Stdin(b"echo A$(stty size)B; exit 5\n".to_vec()),
    );
    read_until(&mut s, &mut out, "A50 132B");
    let r = common::collect(&mut s);
    assert_eq!(r.code, Some(5), "{r:?}");
}

#[test]
fn ctrl_c_interrupts_the_foreground_process() {
    let agent = Agent::start();
    let mut req = with_pty(exec_req(&["sh", "-c", "echo go; exec sleep 100"]), 24, 80);
    req.stdin = true;
    let mut s = agent.request(Request::Exec(req));
    let pid = match read_frame::<AgentMessage, _>(&mut s) {
        Ok(AgentMessage::Started { pid }) => pid,
        other => panic!("expected Started, got {other:?}"),
    };
    let mut out = Vec::new();
    read_until(&mut s, &mut out, "go\r\n");
    // A ^C that lands before `exec` has replaced sh is sh's to handle;
    // the test is about the foreground process, so it waits for sleep.
    wait_until_it_is_sleep(pid);
    send(&mut s, HostMessage::Stdin(vec![0x03]));
    let r = common::collect(&mut s);
    assert_eq!((r.code, r.signal), (None, Some(2)), "{r:?}");
}

#[test]
fn ctrl_c_works_even_when_the_agent_was_started_ignoring_it() {
    // Ignored signals survive exec: an agent started in the background of
    // a script (SIGINT and SIGQUIT ignored) must not pass that on.
    let agent = Agent::start_ignoring("INT QUIT HUP");
    let r = agent.exec(exec_req(&["grep", "SigIgn", "/proc/self/status"]));
    let ignored = r
        .stdout_str()
        .strip_prefix("SigIgn:\t")
        .and_then(|hex| u64::from_str_radix(hex.trim(), 16).ok())
        .unwrap_or_else(|| panic!("{r:?}"));
    // Bits 0-2: SIGHUP, SIGINT, SIGQUIT.
    assert_eq!(ignored & 0b111, 0, "SigIgn {ignored:#x}");
    let mut req = with_pty(exec_req(&["sleep", "100"]), 24, 80);
    req.stdin = true;
    let mut s = agent.request(Request::Exec(req));
    let pid = match read_frame::<AgentMessage, _>(&mut s) {
        Ok(AgentMessage::Started { pid }) => pid,
        other => panic!("expected Started, got {other:?}"),
    };
    wait_until_it_is_sleep(pid);
    send(&mut s, HostMessage::Stdin(vec![0x03]));
    let r = common::collect(&mut s);
    assert_eq!((r.code, r.signal), (None, Some(2)), "{r:?}");
}

#[test]
fn signals_go_to_the_foreground_group() {
    let agent = Agent::start();
    // An interactive shell ignores SIGTERM itself; with job control, the
    // foreground `sleep` runs in its own group, which gets the signal.
    let mut req = with_pty(exec_req(&["sh", "-i"]), 24, 80);
    req.stdin = true;
    let mut s = agent.request(Request::Exec(req));
    let mut out = Vec::new();
    let m = common::marker();
    let line = format!("sleep 100.{m}; echo X$?Y\n");
    send(&mut s, HostMessage::Stdin(line.into_bytes()));
    // Once `sleep` runs, the shell has made its group the foreground one.
    let running = || common::pids_with(&format!("sleep 100.{m}")).len() == 1;
    assert!(common::eventually(
        std::time::Duration::from_secs(20),
        running
    ));
    send(&mut s, HostMessage::Signal(15));
    read_until(&mut s, &mut out, "X143Y");
    send(&mut s, HostMessage::CloseStdin);
    let r = common::collect(&mut s);
    assert_eq!(r.code, Some(0), "{r:?}");
}

#[test]
fn close_stdin_is_end_of_file_on_the_terminal() {
    let agent = Agent::start();
    let mut req = with_pty(exec_req(&["wc", "-c"]), 24, 80);
    req.stdin = true;
    let mut s = agent.request(Request::Exec(req));
    send(&mut s, HostMessage::Stdin(b"hello\n".to_vec()));
    send(&mut s, HostMessage::CloseStdin);
    let r = common::collect(&mut s);
    assert_eq!(r.code, Some(0), "{r:?}");
    // The echo of the input, then wc's count.
    assert!(r.stdout_str().ends_with("6\r\n"), "{r:?}");
}

/// An interactive shell (job control on) runs `sh -c 'trap "" HUP; exec
/// sleep …'` followed by `suffix` (`""`: in the foreground; `" &"`: in the
/// background); the exec's timeout must kill that job too. Either way the
/// job has a process group of its own and would survive the terminal's
/// hangup.
fn timeout_kills_a_job(suffix: &str) {
    let agent = Agent::start();
    let m = common::marker();
    let mut req = with_pty(exec_req(&["sh", "-i"]), 24, 80);
    req.stdin = true;
    req.timeout_ms = Some(1500);
    let mut s = agent.request(Request::Exec(req));
    let job = format!("sh -c 'trap \"\" HUP; exec sleep 1000.{m}'{suffix}\n");
    send(&mut s, HostMessage::Stdin(job.into_bytes()));
    let r = common::collect(&mut s);
    assert!(r.status.timed_out, "{r:?}");
    let gone = common::wait_gone(&m, std::time::Duration::from_secs(20));
    assert!(gone, "{:?}", common::pids_with(&m));
}

#[test]
fn timeout_also_kills_an_interactive_shells_foreground_job() {
    timeout_kills_a_job("");
}

#[test]
fn timeout_also_kills_an_interactive_shells_background_job() {
    timeout_kills_a_job(" &");
}
