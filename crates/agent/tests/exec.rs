//! `Exec` end to end against a real agent process.

// A test binary: a helper that cannot do its job panics, which fails the
// test that called it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{exec_req, fnv, noise, sh, wait_dead, Agent};
use std::time::Duration;
use supermachine_protocol::{
    read_frame, write_frame, AgentMessage, ErrorKind, ExecRequest, HostMessage, Request, MAX_CHUNK,
};

#[test]
fn stdout_stderr_and_exit_code_are_separate() {
    let agent = Agent::start();
    let r = agent.exec(sh("echo out; echo err >&2; exit 3"));
    assert!(r.pid.is_some(), "{r:?}");
    assert_eq!(r.stdout_str(), "out\n");
    assert_eq!(r.stderr_str(), "err\n");
    assert_eq!((r.code, r.signal, r.exited), (Some(3), None, true));
}

#[test]
fn death_by_signal_is_reported_as_signal() {
    let agent = Agent::start();
    let r = agent.exec(sh("kill -9 $$"));
    assert_eq!((r.code, r.signal, r.exited), (None, Some(9), true), "{r:?}");
}

#[test]
fn missing_program_exits_127_without_starting() {
    let agent = Agent::start();
    let r = agent.exec(exec_req(&["no-such-program-sm", "x"]));
    assert_eq!(r.pid, None);
    assert_eq!(r.stderr_str(), "no-such-program-sm: not found\n");
    assert_eq!((r.code, r.signal, r.exited), (Some(127), None, true));

    let r = agent.exec(exec_req(&["/no/such/path"]));
    assert_eq!((r.pid, r.code), (None, Some(127)), "{r:?}");
}

#[test]
fn non_executable_file_exits_126() {
    let agent = Agent::start();
    let script = agent.sock.with_file_name("not-executable.sh");
    std::fs::write(&script, "#!/bin/sh\necho hi\n").expect("write script");
    let path = script.to_string_lossy().into_owned();
    let r = agent.exec(exec_req(&[&path]));
    assert_eq!((r.pid, r.code), (None, Some(126)), "{r:?}");
    assert!(
        r.stderr_str().starts_with(&format!("{path}: ")),
        "{}",
        r.stderr_str()
    );
}

#[test]
fn env_and_cwd_are_applied() {
    let agent = Agent::start();
    let mut req = sh(r#"echo "$FOO|$HOME|$TERM|$PATH"; pwd; echo "${INHERITED-unset}""#);
    req.env = vec![
        ("FOO".into(), "bar baz".into()),
        ("HOME".into(), "/home/x".into()),
    ];
    req.cwd = Some("/tmp".into());
    let r = agent.exec(req);
    let path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    assert_eq!(
        r.stdout_str(),
        format!("bar baz|/home/x|linux|{path}\n/tmp\nunset\n")
    );
    assert_eq!(r.code, Some(0));
    // Unset cwd means the root, whatever the agent's own directory is.
    assert_eq!(agent.exec(exec_req(&["pwd"])).stdout_str(), "/\n");
}

#[test]
fn bad_cwd_and_bad_request_are_errors() {
    let agent = Agent::start();
    let mut req = exec_req(&["true"]);
    req.cwd = Some("/no/such/dir".into());
    let r = agent.exec(req);
    match &r.error {
        Some((ErrorKind::Failed, msg)) => assert!(msg.contains("/no/such/dir"), "{msg}"),
        _ => panic!("expected Failed, got {r:?}"),
    }
    let r = agent.exec(exec_req(&[]));
    assert!(matches!(r.error, Some((ErrorKind::BadRequest, _))), "{r:?}");
    let mut req = exec_req(&["true"]);
    req.env = vec![("A=B".into(), "c".into())];
    assert!(matches!(
        agent.exec(req).error,
        Some((ErrorKind::BadRequest, _))
    ));
}

#[test]
fn stdin_without_flag_is_dev_null() {
    let agent = Agent::start();
    let r = agent.exec(exec_req(&["cat"]));
    assert_eq!((r.stdout.len(), r.code), (0, Some(0)), "{r:?}");
}

#[test]
fn megabytes_round_trip_through_cat() {
    let agent = Agent::start();
    let data = noise(5 * 1024 * 1024 + 123, 7);
    let mut req = exec_req(&["cat"]);
    req.stdin = true;
    let mut s = agent.request(Request::Exec(req));
    let mut w = s.try_clone().expect("clone");
    let input = data.clone();
    // Write and read at once: cat's output must drain while input flows.
    let writer = std::thread::spawn(move || {
        for chunk in input.chunks(MAX_CHUNK) {
            write_frame(&mut w, &HostMessage::Stdin(chunk.to_vec())).expect("send stdin");
        }
        write_frame(&mut w, &HostMessage::CloseStdin).expect("close stdin");
    });
    let r = common::collect(&mut s);
    writer.join().expect("writer");
    assert_eq!(r.code, Some(0), "{r:?}");
    assert_eq!(r.stdout.len(), data.len());
    assert_eq!(fnv(&r.stdout), fnv(&data));
    assert!(r.stdout == data);

    // The other way: the guest side computes a checksum of what it got.
    let mut req = sh("wc -c");
    req.stdin = true;
    let mut s = agent.request(Request::Exec(req));
    for chunk in data.chunks(1000) {
        write_frame(&mut s, &HostMessage::Stdin(chunk.to_vec())).expect("send stdin");
    }
    write_frame(&mut s, &HostMessage::CloseStdin).expect("close stdin");
    let r = common::collect(&mut s);
    assert_eq!(r.stdout_str().trim(), data.len().to_string());
}

#[test]
fn output_chunks_respect_max_chunk() {
    let agent = Agent::start();
    let mut s = agent.request(Request::Exec(sh("head -c 1000000 /dev/zero")));
    let mut total = 0;
    loop {
        match read_frame::<AgentMessage, _>(&mut s).expect("frame") {
            AgentMessage::Stdout(d) => {
                assert!(d.len() <= MAX_CHUNK);
                total += d.len();
            }
            AgentMessage::Exited(status) => {
                assert_eq!(status.code, Some(0));
                break;
            }
            AgentMessage::Started { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(total, 1_000_000);
}

#[test]
fn sixteen_concurrent_execs() {
    let agent = Agent::start();
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..16)
            .map(|i| {
                let agent = &agent;
                scope.spawn(move || {
                    let r = agent.exec(sh(&format!("sleep 0.2; echo job-{i}; exit {i}")));
                    assert_eq!(r.stdout_str(), format!("job-{i}\n"));
                    assert_eq!(r.code, Some(i));
                })
            })
            .collect();
        for h in handles {
            h.join().expect("exec thread");
        }
    });
}

#[test]
fn host_disconnect_kills_the_process_group() {
    let agent = Agent::start();
    let mut s = agent.request(Request::Exec(sh("sleep 300 & echo $!; wait")));
    let AgentMessage::Started { pid } = read_frame(&mut s).expect("started") else {
        panic!("expected Started")
    };
    let AgentMessage::Stdout(line) = read_frame(&mut s).expect("stdout") else {
        panic!("expected the background pid")
    };
    let bg: u32 = String::from_utf8_lossy(&line).trim().parse().expect("pid");
    let stat = std::fs::read_to_string(format!("/proc/{bg}/stat")).expect("stat");
    let pgid = stat
        .rsplit_once(')')
        .and_then(|(_, f)| f.split_whitespace().nth(2));
    assert_eq!(
        pgid,
        Some(pid.to_string().as_str()),
        "child runs in its own group"
    );

    drop(s);
    assert!(
        wait_dead(pid, Duration::from_secs(10)),
        "shell survived the disconnect"
    );
    assert!(
        wait_dead(bg, Duration::from_secs(10)),
        "background job survived the disconnect"
    );
    assert_eq!(agent.ask(Request::Ping), AgentMessage::Pong);
}

#[test]
fn malformed_frame_during_exec_is_refused_and_kills() {
    let agent = Agent::start();
    // With stdin (a thread reads host frames) and without (the exec's own
    // thread polls the socket with the child's output).
    for stdin in [true, false] {
        let mut req = exec_req(&["sh", "-c", "echo ready; exec sleep 300"]);
        req.stdin = stdin;
        let mut s = agent.request(Request::Exec(req));
        // Without stdin, `Started` may wait for the first output.
        let AgentMessage::Started { pid } = read_frame(&mut s).expect("started") else {
            panic!("expected Started")
        };
        assert!(
            matches!(read_frame(&mut s), Ok(AgentMessage::Stdout(out)) if out == b"ready\n"),
            "stdin {stdin}"
        );
        std::io::Write::write_all(&mut s, &[3, 0, 0, 0, 0xff, 0xff, 0xff]).expect("garbage");
        let r = common::collect(&mut s);
        assert!(
            matches!(r.error, Some((ErrorKind::BadRequest, _))),
            "stdin {stdin}: {r:?}"
        );
        assert!(wait_dead(pid, Duration::from_secs(10)), "stdin {stdin}");
    }
}

#[test]
fn children_are_reaped() {
    let agent = Agent::start();
    for _ in 0..20 {
        assert_eq!(agent.exec(exec_req(&["true"])).code, Some(0));
    }
    let r = agent.exec(ExecRequest {
        stdin: false,
        ..exec_req(&["false"])
    });
    assert_eq!(r.code, Some(1));
    // No zombie children of the agent remain.
    std::thread::sleep(Duration::from_millis(100));
    // Children are listed per forking thread.
    let tasks = std::fs::read_dir(format!("/proc/{}/task", agent.process.id())).expect("tasks");
    for task in tasks.flatten() {
        let children = std::fs::read_to_string(task.path().join("children")).unwrap_or_default();
        for pid in children.split_whitespace() {
            let state = common::proc_state(pid.parse().expect("pid"));
            assert_ne!(state, Some('Z'), "zombie {pid}");
        }
    }
}
