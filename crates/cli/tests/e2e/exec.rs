//! Exec through the library: results, options, streams, concurrency, and
//! processes that try to wedge the agent.

use crate::api::{ensure, sha256_hex, with_vm, Noise};
use crate::progress::trial;
use crate::util::PATIENCE;
use libtest_mimic::{Failed, Trial};
use sha2::{Digest, Sha256};
use std::time::Duration;
use supermachine::VmConfig;

pub fn trials() -> Vec<Trial> {
    vec![
        trial("exec::exit_codes_signals_and_streams", exit_codes),
        trial("exec::env_cwd_and_user", env_cwd_and_user),
        trial("exec::cat_100_mib_both_ways", cat_100_mib),
        trial("exec::slow_reader_stalls_the_writer", slow_reader),
        trial("exec::thirty_two_concurrent_execs", concurrent_execs),
        trial("exec::timeout_kills_the_process_tree", timeout_kills_tree),
        trial("exec::output_limits_count_the_excess", output_limits),
        trial("exec::background_daemon_does_not_wedge", daemon),
        trial("exec::signals_reach_the_process", signals),
        trial("exec::pty_session_with_resize", pty_session),
        trial("exec::agent_survives_a_fork_bomb", fork_bomb),
        trial("exec::staged_files_and_chains", staged_and_chained),
    ]
}

fn exit_codes() -> Result<(), Failed> {
    with_vm(VmConfig::default(), |vm| async move {
        for code in [0, 1, 3] {
            let out = vm.exec(["sh", "-c", &format!("exit {code}")]).await?;
            ensure(
                out.status.code == Some(code),
                format!("exit {code}: {out:?}"),
            )?;
        }
        let out = vm.exec(["no-such-program"]).await?;
        ensure(out.status.code == Some(127), format!("{out:?}"))?;
        ensure(out.stderr_lossy().contains("not found"), format!("{out:?}"))?;
        let out = vm.exec(["sh", "-c", "kill -9 $$"]).await?;
        ensure(
            (out.status.code, out.status.signal) == (None, Some(9)),
            format!("{out:?}"),
        )?;
        let out = vm.exec(["sh", "-c", "echo out; echo err >&2"]).await?;
        ensure(
            (out.stdout.as_slice(), out.stderr.as_slice()) == (b"out\n", b"err\n"),
            format!("{out:?}"),
        )
    })
}

fn env_cwd_and_user() -> Result<(), Failed> {
    let config = VmConfig {
        env: vec![("FROM_VM".into(), "vm".into())],
        ..VmConfig::default()
    };
    with_vm(config, |vm| async move {
        let out = vm
            .exec_builder()
            .argv(["sh", "-c", "echo $FROM_VM $MINE $HOME; pwd"])
            .env("MINE", "mine")
            .cwd("/tmp")
            .output()
            .await?;
        ensure(
            out.stdout_lossy() == "vm mine /root\n/tmp\n",
            format!("{out:?}"),
        )?;
        let out = vm
            .exec_builder()
            // Not PATH: a shell sets its own default when PATH is unset.
            .argv(["/bin/sh", "-c", "echo \"[${HOME-unset}][$ONLY]\""])
            .env_clear()
            .env("ONLY", "1")
            .output()
            .await?;
        ensure(out.stdout_lossy() == "[unset][1]\n", format!("{out:?}"))?;
        let out = vm
            .exec_builder()
            .argv(["sh", "-c", "id -u; id -g; echo $HOME"])
            .user("nobody")
            .output()
            .await?;
        ensure(
            out.stdout_lossy() == "65534\n65534\n/nonexistent\n",
            format!("{out:?}"),
        )?;
        let out = vm
            .exec_builder()
            .argv(["sh", "-c", "id -u; id -g"])
            .user("1234:5678")
            .output()
            .await?;
        ensure(out.stdout_lossy() == "1234\n5678\n", format!("{out:?}"))?;
        let err = vm
            .exec_builder()
            .argv(["true"])
            .user("no-such-user")
            .output()
            .await;
        ensure(
            matches!(&err, Err(e) if e.is_not_found()),
            format!("unknown user: {err:?}"),
        )
    })
}

fn cat_100_mib() -> Result<(), Failed> {
    const TOTAL: usize = 100 << 20;
    with_vm(VmConfig::default(), |vm| async move {
        let mut child = vm.exec_builder().argv(["cat"]).spawn().await?;
        let mut stdin = child.stdin.take().ok_or("no stdin")?;
        let mut stdout = child.stdout.take().ok_or("no stdout")?;
        let feeder = tokio::spawn(async move {
            let mut noise = Noise::new(7);
            let mut hash = Sha256::new();
            let mut buf = vec![0u8; 256 << 10];
            let mut sent = 0;
            while sent < TOTAL {
                noise.fill(&mut buf);
                hash.update(&buf);
                stdin.write(&buf).await?;
                sent += buf.len();
            }
            Ok::<_, supermachine::Error>(hex::encode(hash.finalize()))
        });
        let mut hash = Sha256::new();
        let mut received = 0;
        while let Some(chunk) = stdout.recv().await {
            received += chunk.len();
            hash.update(&chunk);
        }
        let sent_hash = feeder.await??;
        let status = child.wait().await?;
        ensure(status.success(), format!("{status:?}"))?;
        ensure(received == TOTAL, format!("received {received} of {TOTAL}"))?;
        ensure(
            hex::encode(hash.finalize()) == sent_hash,
            "checksum of what came back differs",
        )
    })
}

/// The guest writes 200 MiB in 1 MiB steps, counting them in a file. While
/// the host reads nothing, the writer must stall after a few MiB (the
/// buffers between it and the host are bounded), and host memory stays flat.
fn slow_reader() -> Result<(), Failed> {
    with_vm(VmConfig::default(), |vm| async move {
        let script = "i=0; while [ $i -lt 200 ]; do dd if=/dev/zero bs=1M count=1 2>/dev/null; \
                      i=$((i+1)); echo $i > /tmp/progress; done";
        let mut child = vm.exec_builder().argv(["sh", "-c", script]).spawn().await?;
        let rss_before = rss_kib();
        tokio::time::sleep(Duration::from_secs(3)).await;
        let progress = vm.exec(["cat", "/tmp/progress"]).await?;
        let steps: u32 = progress.stdout_lossy().trim().parse().unwrap_or(0);
        ensure(
            steps <= 16,
            format!("the writer ran ahead of a reader that read nothing: {steps} MiB written"),
        )?;
        let grown = rss_kib().saturating_sub(rss_before);
        ensure(grown < 64 << 10, format!("host memory grew by {grown} KiB"))?;
        let mut stdout = child.stdout.take().ok_or("no stdout")?;
        let mut total = 0usize;
        while let Some(chunk) = stdout.recv().await {
            total += chunk.len();
        }
        let status = child.wait().await?;
        ensure(
            status.success() && total == 200 << 20,
            format!("{status:?}, {total} bytes"),
        )
    })
}

fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

fn concurrent_execs() -> Result<(), Failed> {
    with_vm(VmConfig::default(), |vm| async move {
        let mut tasks = tokio::task::JoinSet::new();
        for i in 0..32 {
            let vm = vm.clone();
            tasks.spawn(async move {
                let script = "sleep 0.2; echo $0; echo err$0 >&2";
                let out = vm.exec(["sh", "-c", script, &i.to_string()]).await?;
                Ok::<_, supermachine::Error>((i, out))
            });
        }
        let mut seen = 0;
        while let Some(joined) = tasks.join_next().await {
            let (i, out) = joined??;
            ensure(
                out.stdout_lossy() == format!("{i}\n") && out.stderr_lossy() == format!("err{i}\n"),
                format!("exec {i}: {out:?}"),
            )?;
            seen += 1;
        }
        ensure(seen == 32, format!("{seen} execs finished"))
    })
}

fn timeout_kills_tree() -> Result<(), Failed> {
    with_vm(VmConfig::default(), |vm| async move {
        let out = vm
            .exec_builder()
            .argv(["sh", "-c", "sleep 1000 & sleep 1001"])
            .timeout(Duration::from_secs(2))
            .output()
            .await?;
        ensure(
            out.status.timed_out && out.status.signal == Some(9),
            format!("{out:?}"),
        )?;
        let ps = vm
            .exec(["sh", "-c", "cat /proc/[0-9]*/cmdline | tr '\\0' ' '"])
            .await?;
        ensure(
            !ps.stdout_lossy().contains("sleep 100"),
            format!("survivors: {}", ps.stdout_lossy()),
        )
    })
}

fn output_limits() -> Result<(), Failed> {
    with_vm(VmConfig::default(), |vm| async move {
        let out = vm
            .exec_builder()
            .argv([
                "sh",
                "-c",
                "head -c 1000000 /dev/zero; head -c 5000 /dev/zero >&2",
            ])
            .stdout_limit(1000)
            .stderr_limit(10_000)
            .output()
            .await?;
        ensure(
            out.stdout.len() == 1000 && out.status.stdout_dropped == 999_000,
            format!("stdout {} bytes, {:?}", out.stdout.len(), out.status),
        )?;
        ensure(
            out.stderr.len() == 5000 && out.status.stderr_dropped == 0,
            format!("stderr {} bytes, {:?}", out.stderr.len(), out.status),
        )
    })
}

fn daemon() -> Result<(), Failed> {
    with_vm(VmConfig::default(), |vm| async move {
        // The background sleep keeps the exec's stdout open forever.
        let out = vm.exec(["sh", "-c", "sleep 1000 & echo started"]).await?;
        ensure(
            out.status.success() && out.stdout_lossy() == "started\n",
            format!("{out:?}"),
        )?;
        vm.ping().await?;
        Ok(())
    })
}

fn signals() -> Result<(), Failed> {
    with_vm(VmConfig::default(), |vm| async move {
        let script = "trap 'echo got-term; exit 7' TERM; echo ready; while :; do sleep 0.1; done";
        let mut child = vm.exec_builder().argv(["sh", "-c", script]).spawn().await?;
        let mut stdout = child.stdout.take().ok_or("no stdout")?;
        let first = stdout.recv().await.unwrap_or_default();
        ensure(first == b"ready\n", format!("{first:?}"))?;
        child.signal(libc::SIGTERM).await?;
        let mut rest = Vec::new();
        while let Some(chunk) = stdout.recv().await {
            rest.extend_from_slice(&chunk);
        }
        let status = child.wait().await?;
        ensure(
            status.code == Some(7) && rest == b"got-term\n",
            format!("{status:?} {:?}", String::from_utf8_lossy(&rest)),
        )
    })
}

fn pty_session() -> Result<(), Failed> {
    with_vm(VmConfig::default(), |vm| async move {
        let mut child = vm.exec_builder().argv(["sh"]).pty(24, 80).spawn().await?;
        let mut stdin = child.stdin.take().ok_or("no stdin")?;
        let mut stdout = child.stdout.take().ok_or("no stdout")?;
        stdin.write(b"tty; stty size; echo first-done\n").await?;
        // Resize only once the first `stty size` ran (its output is in), or
        // it may see the new size. The terminal echoes the command line
        // first, so look for the word at the start of a line.
        let mut all = Vec::new();
        while !String::from_utf8_lossy(&all).contains("\nfirst-done") {
            match stdout.recv().await {
                Some(chunk) => all.extend_from_slice(&chunk),
                None => break,
            }
        }
        child.resize(40, 100).await?;
        stdin.write(b"stty size; exit 4\n").await?;
        while let Some(chunk) = stdout.recv().await {
            all.extend_from_slice(&chunk);
        }
        let status = child.wait().await?;
        let text = String::from_utf8_lossy(&all).into_owned();
        ensure(status.code == Some(4), format!("{status:?}\n{text}"))?;
        ensure(text.contains("/dev/pts/"), format!("no tty in:\n{text}"))?;
        ensure(text.contains("24 80"), format!("no first size in:\n{text}"))?;
        ensure(
            text.contains("40 100"),
            format!("no resized size in:\n{text}"),
        )
    })
}

fn fork_bomb() -> Result<(), Failed> {
    with_vm(VmConfig::default(), |vm| async move {
        let setup = "mkdir -p /sys/fs/cgroup && (mount -t cgroup2 none /sys/fs/cgroup || true) && \
                     echo +pids > /sys/fs/cgroup/cgroup.subtree_control && \
                     mkdir /sys/fs/cgroup/bomb && echo 64 > /sys/fs/cgroup/bomb/pids.max && echo ok";
        let out = vm.exec(["sh", "-c", setup]).await?;
        ensure(
            out.stdout_lossy() == "ok\n",
            format!("cgroup setup: {out:?}"),
        )?;
        let bomb = "echo $$ > /sys/fs/cgroup/bomb/cgroup.procs; b() { b | b & }; b; sleep 1000";
        let out = vm
            .exec_builder()
            .argv(["sh", "-c", bomb])
            .timeout(Duration::from_secs(5))
            .output()
            .await?;
        ensure(out.status.timed_out, format!("bomb: {:?}", out.status))?;
        // The agent still answers and starts processes.
        vm.ping().await?;
        let out = vm.exec(["echo", "alive"]).await?;
        ensure(out.stdout_lossy() == "alive\n", format!("{out:?}"))?;
        // Killed processes leave the cgroup once reaped: wait for that.
        let deadline = tokio::time::Instant::now() + PATIENCE;
        while tokio::time::Instant::now() < deadline {
            let left = vm.exec(["cat", "/sys/fs/cgroup/bomb/pids.current"]).await?;
            if left.stdout_lossy().trim() == "0" {
                return Ok(());
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        Err(format!("fork bomb processes were still alive {PATIENCE:?} after the timeout").into())
    })
}

fn staged_and_chained() -> Result<(), Failed> {
    with_vm(VmConfig::default(), |vm| async move {
        let data: Vec<u8> = (0..=255u8).cycle().take(100_000).collect();
        let out = vm
            .exec_builder()
            .stage_file("/work/data.bin", data.clone())
            .stage_file("/work/run.sh", "sha256sum /work/data.bin | cut -d' ' -f1\n")
            .argv(["sh", "/work/run.sh"])
            .chain(["echo", "second"])
            .chain(["false"])
            .chain(["echo", "never"])
            .output()
            .await?;
        let expected = format!("{}\nsecond\n", sha256_hex(&data));
        ensure(
            out.stdout_lossy() == expected && out.status.code == Some(1),
            format!("{out:?}"),
        )
    })
}
