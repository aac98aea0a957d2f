//! Published ports (`Vm::expose_tcp`, `run -p`) against servers in a real
//! guest: many connections at once, a large answer to a slow reader with
//! memory flat on both sides, half-close, a port nothing listens on, and a
//! forwarder closed under open connections.

use crate::api::{ensure, with_vm, with_vm_watched};
use crate::progress::trial;
use crate::util::{check, stdout, supermachine};
use libtest_mimic::{Failed, Trial};
use std::time::Duration;
use supermachine::{ExposeOptions, Vm, VmConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "ports::http_many_connections_and_half_close",
            http_many_connections_and_half_close,
        ),
        trial(
            "ports::a_large_answer_to_a_slow_reader",
            a_large_answer_to_a_slow_reader,
        ),
        trial("ports::run_publishes_a_port", run_publishes_a_port),
    ]
}

/// Runs one step of a test, failing with its name if it takes longer than
/// `limit`: a step that hangs says which it was.
async fn step<T>(
    name: &str,
    limit: Duration,
    fut: impl std::future::Future<Output = Result<T, Failed>>,
) -> Result<T, Failed> {
    eprintln!("ports: {name}");
    match tokio::time::timeout(limit, fut).await {
        Ok(r) => r.map_err(|e| format!("{name}: {e:?}").into()),
        Err(_) => Err(format!("{name}: not done after {limit:?}").into()),
    }
}

const STEP: Duration = Duration::from_secs(180);

/// Starts `argv` in the background in the guest and waits until something
/// listens on `port` there.
async fn serve(vm: &Vm, port: u16, argv: &[&str]) -> Result<(), Failed> {
    vm.exec_builder()
        .argv(argv.iter().copied())
        .start_detached()
        .await?;
    let wait = format!(
        "for i in $(seq 150); do netstat -ltn | grep -q ':{port} ' && exit 0; sleep 0.2; done; exit 1"
    );
    let out = vm.exec(["sh", "-c", &wait]).await?;
    ensure(
        out.status.success(),
        format!("nothing listens on guest port {port}"),
    )
}

/// An executable script in the guest.
async fn script(vm: &Vm, path: &str, body: &str) -> Result<(), Failed> {
    let mut req = supermachine::WriteFileRequest::new(path);
    req.mode = 0o755;
    vm.write_file_with(req, format!("#!/bin/sh\n{body}\n").as_bytes())
        .await?;
    Ok(())
}

async fn get(addr: std::net::SocketAddr, path: &str) -> Result<String, Failed> {
    let mut c = TcpStream::connect(addr).await?;
    c.write_all(format!("GET {path} HTTP/1.0\r\nHost: guest\r\n\r\n").as_bytes())
        .await?;
    let mut answer = Vec::new();
    c.read_to_end(&mut answer).await?;
    Ok(String::from_utf8_lossy(&answer).into_owned())
}

fn http_many_connections_and_half_close() -> Result<(), Failed> {
    with_vm(VmConfig::default(), |vm| async move {
        step("servers", STEP, async {
            vm.exec([
                "sh",
                "-c",
                "mkdir -p /www && echo hello-from-guest > /www/index.html",
            ])
            .await?;
            serve(&vm, 8080, &["httpd", "-f", "-p", "8080", "-h", "/www"]).await?;
            script(&vm, "/tmp/count.sh", "wc -c").await?;
            serve(
                &vm,
                8082,
                &["nc", "-ll", "-p", "8082", "-e", "/tmp/count.sh"],
            )
            .await
        })
        .await?;

        let web = vm.expose_tcp(8080, ExposeOptions::default()).await?;
        ensure(
            web.local_addr().ip().is_loopback(),
            "binds the loopback by default",
        )?;
        let page = step("one GET", STEP, get(web.local_addr(), "/index.html")).await?;
        ensure(
            page.starts_with("HTTP/1.1 200 "),
            format!("the answer: {page:?}"),
        )?;
        ensure(
            page.ends_with("hello-from-guest\n"),
            format!("the page: {page:?}"),
        )?;

        // 100 clients at once, each answered in full.
        step("100 clients at once", STEP, async {
            let mut clients = tokio::task::JoinSet::new();
            for _ in 0..100 {
                let addr = web.local_addr();
                clients.spawn(async move { get(addr, "/index.html").await });
            }
            let mut answered = 0;
            while let Some(page) = clients.join_next().await {
                let page = page??;
                ensure(
                    page.ends_with("hello-from-guest\n"),
                    format!("a page: {page:?}"),
                )?;
                answered += 1;
            }
            ensure(answered == 100, format!("{answered} of 100 answered"))
        })
        .await?;

        // Half-close: the guest counts what came until the host's end of
        // stream, and its answer still comes back.
        let count = vm.expose_tcp(8082, ExposeOptions::default()).await?;
        step("half-close", STEP, async {
            let mut c = TcpStream::connect(count.local_addr()).await?;
            c.write_all(&vec![7u8; 300_000]).await?;
            c.shutdown().await?;
            let mut answer = String::new();
            c.read_to_string(&mut answer).await?;
            ensure(
                answer.trim() == "300000",
                format!("the guest counted {answer:?}"),
            )
        })
        .await?;

        // Nothing listens on 8099: the client's connection is reset.
        let closed = vm.expose_tcp(8099, ExposeOptions::default()).await?;
        step("a closed guest port", STEP, async {
            let mut c = TcpStream::connect(closed.local_addr()).await?;
            let mut buf = [0u8; 16];
            let read = c.read(&mut buf).await;
            ensure(
                matches!(&read, Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset),
                format!("a port nothing listens on read as {read:?}, not a reset"),
            )
        })
        .await?;

        // Closing a forwarder ends the connections it carries and frees
        // its port.
        step("close under an open connection", STEP, async {
            let mut open = TcpStream::connect(count.local_addr()).await?;
            open.write_all(b"still typing").await?;
            let addr = count.local_addr();
            count.close().await;
            let mut rest = Vec::new();
            let ended =
                tokio::time::timeout(Duration::from_secs(60), open.read_to_end(&mut rest)).await;
            ensure(ended.is_ok(), "a connection outlived its forwarder's close")?;
            ensure(
                std::net::TcpListener::bind(addr).is_ok(),
                "the port is free once close returns",
            )
        })
        .await?;
        web.close().await;
        closed.close().await;
        Ok(())
    })
}

/// Resident memory of this process, in KiB.
fn host_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

async fn guest_available_kib(vm: &Vm) -> Result<u64, Failed> {
    let out = vm
        .exec(["sh", "-c", "awk '/MemAvailable/ {print $2}' /proc/meminfo"])
        .await?;
    Ok(out.stdout_lossy().trim().parse()?)
}

/// 256 MiB from the guest to a host reader that takes its time: all of it
/// arrives, and neither the guest nor this process buffers it.
fn a_large_answer_to_a_slow_reader() -> Result<(), Failed> {
    const SIZE: u64 = 256 << 20;
    with_vm_watched(VmConfig::default(), |vm, progress| async move {
        script(
            &vm,
            "/tmp/big.sh",
            &format!("exec head -c {SIZE} /dev/zero"),
        )
        .await?;
        serve(&vm, 8081, &["nc", "-ll", "-p", "8081", "-e", "/tmp/big.sh"]).await?;
        let fwd = vm.expose_tcp(8081, ExposeOptions::default()).await?;
        let guest_before = guest_available_kib(&vm).await?;
        let host_before = host_rss_kib();
        let mut c = TcpStream::connect(fwd.local_addr()).await?;
        let mut buf = vec![0u8; 64 * 1024];
        let (mut total, mut nonzero) = (0u64, 0u64);
        let (mut guest_low, mut host_high) = (guest_before, host_before);
        loop {
            let n = c.read(&mut buf).await?;
            if n == 0 {
                break;
            }
            nonzero += buf[..n].iter().filter(|b| **b != 0).count() as u64;
            total += n as u64;
            progress.add(n as u64);
            // Slow: the guest's writer must wait for this reader.
            tokio::time::sleep(Duration::from_millis(1)).await;
            if total % (32 << 20) < n as u64 {
                guest_low = guest_low.min(guest_available_kib(&vm).await?);
                host_high = host_high.max(host_rss_kib());
            }
        }
        ensure(total == SIZE, format!("{total} of {SIZE} bytes arrived"))?;
        ensure(nonzero == 0, format!("{nonzero} bytes changed on the way"))?;
        let guest_used = guest_before.saturating_sub(guest_low);
        let host_grew = host_high.saturating_sub(host_before);
        ensure(
            guest_used < 48 * 1024,
            format!("the guest's available memory fell by {guest_used} KiB"),
        )?;
        ensure(
            host_grew < 48 * 1024,
            format!("this process grew by {host_grew} KiB"),
        )?;
        fwd.close().await;
        Ok(())
    })
}

/// `run -p HOST:GUEST` publishes the port for the run's length: a host
/// client the test points at it gets the guest server's answer.
fn run_publishes_a_port() -> Result<(), Failed> {
    let port = {
        let free = std::net::TcpListener::bind("127.0.0.1:0")?;
        free.local_addr()?.port()
    };
    // The guest serves one answer, then waits for the host client's
    // connection to have been answered before the run ends.
    let script = "echo from-the-guest > /tmp/answer; \
                  nc -l -p 9000 < /tmp/answer > /tmp/got; cat /tmp/got";
    let mut cmd = supermachine();
    cmd.args([
        "run",
        "-p",
        &format!("127.0.0.1:{port}:9000"),
        "--",
        "sh",
        "-c",
        script,
    ])
    .stdout(std::process::Stdio::piped())
    .stderr(std::process::Stdio::piped());
    let child = cmd.spawn()?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let answer = rt.block_on(async {
        // Until the guest's nc listens, connections are reset: retry.
        for _ in 0..600 {
            if let Ok(mut c) = TcpStream::connect(("127.0.0.1", port)).await {
                let _ = c.write_all(b"from-the-host\n").await;
                let _ = c.shutdown().await;
                let mut answer = String::new();
                if c.read_to_string(&mut answer).await.is_ok() && !answer.is_empty() {
                    return Ok(answer);
                }
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err::<String, Failed>("the published port never answered".into())
    });
    let out = child.wait_with_output()?;
    let answer = answer?;
    check(
        answer == "from-the-guest\n",
        &format!("the answer {answer:?}"),
        &out,
    )?;
    check(out.status.success(), "the run", &out)?;
    check(
        stdout(&out) == "from-the-host\n",
        "what the guest's server got",
        &out,
    )?;
    Ok(())
}
