//! Exec options: environment modes, users, timeouts, output limits,
//! daemons holding the output open, signals, detached processes.

// A test binary: a helper that cannot do its job panics, which fails the
// test that called it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{eventually, kill_all, marker, pids_with, read_until, sh, wait_gone, Agent};
use std::time::Duration;
use supermachine_protocol::{
    read_frame, write_frame, AgentMessage, EnvMode, ErrorKind, FrameError, HostMessage, Request,
};

const LONG: Duration = Duration::from_secs(20);

#[test]
fn env_replace_passes_exactly_the_request() {
    let agent = Agent::start();
    let mut req = common::exec_req(&["/usr/bin/env"]);
    req.env = vec![("ONLY".into(), "this".into())];
    req.env_mode = EnvMode::Replace;
    let r = agent.exec(req);
    assert_eq!((r.stdout_str().as_str(), r.code), ("ONLY=this\n", Some(0)));

    // Extend keeps the base (PATH, HOME, TERM) and adds to it.
    let mut req = common::exec_req(&["/usr/bin/env"]);
    req.env = vec![("ONLY".into(), "this".into())];
    let out = agent.exec(req).stdout_str();
    let mut lines: Vec<&str> = out.lines().collect();
    lines.sort_unstable();
    assert_eq!(
        lines,
        [
            "HOME=/root",
            "ONLY=this",
            "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "TERM=linux"
        ]
    );
}

const WHO: &str = r#"echo "$(id -u) $(id -g) [$(id -G)] $HOME $(pwd)""#;

#[test]
fn user_by_name_gets_its_ids_groups_and_home() {
    let agent = Agent::start();
    let mut req = sh(WHO);
    req.user = Some("nobody".into());
    let r = agent.exec(req);
    assert_eq!(
        r.stdout_str(),
        "65534 65534 [65534] /nonexistent /\n",
        "{r:?}"
    );
    assert_eq!(r.code, Some(0));

    // A name with an explicit group; HOME set by the request wins.
    let mut req = sh(WHO);
    req.user = Some("nobody:daemon".into());
    req.env = vec![("HOME".into(), "/h".into())];
    assert_eq!(agent.exec(req).stdout_str(), "65534 1 [1] /h /\n");
}

#[test]
fn numeric_uid_and_gid_need_no_passwd_entry() {
    let agent = Agent::start();
    let mut req = sh(WHO);
    req.user = Some("4321:8765".into());
    req.cwd = Some("/tmp".into());
    let r = agent.exec(req);
    assert_eq!(r.stdout_str(), "4321 8765 [8765] / /tmp\n", "{r:?}");

    // Unknown uid without a group: gid 0, like Docker.
    let mut req = sh(WHO);
    req.user = Some("4321".into());
    assert_eq!(agent.exec(req).stdout_str(), "4321 0 [0] / /\n");
}

#[test]
fn unknown_user_or_group_is_not_found() {
    let agent = Agent::start();
    let mut req = sh("true");
    req.user = Some("no-such-user-sm".into());
    let r = agent.exec(req);
    assert_eq!(r.pid, None);
    assert_eq!(
        r.error,
        Some((
            ErrorKind::NotFound,
            "user \"no-such-user-sm\" not found in /etc/passwd".into()
        ))
    );
    let mut req = sh("true");
    req.user = Some("nobody:no-such-group-sm".into());
    assert!(matches!(
        agent.exec(req).error,
        Some((ErrorKind::NotFound, _))
    ));
    let mut req = sh("true");
    req.user = Some("1:".into());
    assert!(matches!(
        agent.exec(req).error,
        Some((ErrorKind::BadRequest, _))
    ));
}

#[test]
fn timeout_kills_the_whole_tree() {
    let agent = Agent::start();
    let m = marker();
    let mut req = sh(&format!("sleep 1000.{m} & sleep 1001.{m}"));
    req.timeout_ms = Some(300);
    let r = agent.exec(req);
    assert!(r.exited, "{r:?}");
    assert!(r.status.timed_out, "{r:?}");
    assert_eq!((r.code, r.signal), (None, Some(9)));
    assert!(wait_gone(&m, LONG), "survivors: {:?}", pids_with(&m));

    // A process that ends in time is not marked.
    let mut req = sh("exit 4");
    req.timeout_ms = Some(60_000);
    let r = agent.exec(req);
    assert_eq!((r.code, r.status.timed_out), (Some(4), false));
}

#[test]
fn output_limits_drop_and_count_the_rest() {
    let agent = Agent::start();
    let mut req = sh("head -c 1048576 /dev/zero; head -c 5000 /dev/zero >&2; echo done >&2");
    req.stdout_limit = Some(1000);
    req.stderr_limit = Some(5003);
    let r = agent.exec(req);
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(r.stdout.len(), 1000);
    assert_eq!(r.status.stdout_dropped, 1_047_576);
    assert_eq!(r.stderr.len(), 5003);
    assert_eq!(&r.stderr[5000..], b"don");
    assert_eq!(r.status.stderr_dropped, 2);

    let mut req = sh("echo hi");
    req.stdout_limit = Some(0);
    let r = agent.exec(req);
    assert_eq!((r.stdout.len(), r.status.stdout_dropped), (0, 3));
}

#[test]
fn a_daemon_holding_the_pipes_does_not_wedge_the_exec() {
    let agent = Agent::start();
    let _ = agent.exec(sh("true")); // let the agent's resting state settle
    let (threads, fds) = (agent.threads(), agent.fds());
    let m = marker();
    for script in [
        format!("setsid sleep 1000.{m} & echo hi"),
        format!("sleep 1001.{m} & echo hi"),
        format!("sleep 1002.{m} >&2 & echo hi"),
    ] {
        let r = agent.exec(sh(&script));
        assert_eq!(
            (r.stdout_str().as_str(), r.code),
            ("hi\n", Some(0)),
            "{r:?}"
        );
    }
    // What the host did not ask to kill keeps running, like after a shell.
    assert_eq!(pids_with(&m).len(), 3, "{:?}", pids_with(&m));
    // ...and the exec's threads and fds are all released.
    assert!(
        eventually(LONG, || agent.threads() <= threads && agent.fds() <= fds),
        "threads {} (was {threads}), fds {} (was {fds})",
        agent.threads(),
        agent.fds()
    );
    kill_all(&m);
}

#[test]
fn signals_reach_the_process() {
    let agent = Agent::start();
    let script = r#"trap "echo got; exit 7" TERM; echo ready; while :; do sleep 0.1; done"#;
    let mut s = agent.request(Request::Exec(sh(script)));
    let mut out = Vec::new();
    read_until(&mut s, &mut out, "ready\n");
    // Not signals: ignored, the process keeps running.
    for bogus in [0, -1, 9999] {
        write_frame(&mut s, &HostMessage::Signal(bogus)).expect("send signal");
    }
    write_frame(&mut s, &HostMessage::Signal(15)).expect("send signal");
    let r = common::collect(&mut s);
    assert_eq!(
        (r.stdout_str().as_str(), r.code),
        ("got\n", Some(7)),
        "{r:?}"
    );
}

#[test]
fn detached_process_keeps_running_after_the_connection_closes() {
    let agent = Agent::start();
    let m = marker();
    let mut req = sh(&format!("echo detached-{m}; exec sleep 1000.{m}"));
    req.detach = true;
    let mut s = agent.request(Request::Exec(req));
    let pid = match read_frame::<AgentMessage, _>(&mut s) {
        Ok(AgentMessage::Started { pid }) => pid,
        other => panic!("expected Started, got {other:?}"),
    };
    assert!(matches!(
        read_frame::<AgentMessage, _>(&mut s),
        Err(FrameError::Closed)
    ));
    // Its output goes to the agent's console.
    let line = format!("detached-{m}\n");
    assert!(eventually(LONG, || agent.console().contains(&line)));
    std::thread::sleep(Duration::from_millis(200));
    assert_eq!(pids_with(&m), vec![pid]);
    // Killed from outside, it is reaped (no zombie left behind).
    kill_all(&m);
    assert!(common::wait_dead(pid, LONG));
    assert!(eventually(LONG, || common::proc_state(pid).is_none()));

    let mut req = sh("true");
    req.detach = true;
    req.stdin = true;
    assert!(matches!(
        agent.exec(req).error,
        Some((ErrorKind::BadRequest, _))
    ));
}

#[test]
fn data_frames_during_exec_are_refused_and_kill() {
    let agent = Agent::start();
    let m = marker();
    let command = format!("echo ready; exec sleep 1000.{m}");
    let mut s = agent.request(Request::Exec(sh(&command)));
    // Without stdin, `Started` may wait for the first output.
    assert!(matches!(
        read_frame::<AgentMessage, _>(&mut s),
        Ok(AgentMessage::Started { .. })
    ));
    assert!(matches!(
        read_frame::<AgentMessage, _>(&mut s),
        Ok(AgentMessage::Stdout(out)) if out == b"ready\n"
    ));
    write_frame(&mut s, &HostMessage::End).expect("send");
    let r = common::collect(&mut s);
    assert!(matches!(r.error, Some((ErrorKind::BadRequest, _))), "{r:?}");
    assert!(wait_gone(&m, LONG));
}
