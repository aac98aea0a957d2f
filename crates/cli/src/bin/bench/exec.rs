//! `exec`: what an exec costs above its parts, and how fast data moves.
//!
//! Three latencies from one VM, interleaved: a bare agent round trip
//! (`ping`: vsock connect + one frame each way), the guest's own fork+exec+
//! wait of `true` timed inside the agent, and a full `exec true` from the
//! host API. The exec overhead is what the full exec costs beyond
//! ping + in-guest spawn. Then throughput: a file written to the guest's
//! RAM-backed /tmp (no disk is measured), a sparse file read from it, and
//! bytes streamed through `cat` both ways.

use crate::{ms, quantile, step, BoxError};
use std::time::Instant;
use supermachine::{Image, Vm, VmConfig, WriteFileRequest};

pub fn run(iterations: usize, mib: u64) -> Result<(), BoxError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(bench(iterations.max(1), mib.max(1)))
}

async fn bench(iterations: usize, mib: u64) -> Result<(), BoxError> {
    // Room in the guest's RAM-backed /tmp for the file written below.
    let config = VmConfig {
        memory_mib: 512 + 2 * mib,
        ..VmConfig::default()
    };
    let vm = Vm::start(&Image::builtin(), &config).await?;
    step("vm ready");
    // Warm up every path once (page cache, agent threads).
    vm.ping().await?;
    vm.exec(["true"]).await?;
    vm.measure_spawn(&["true"], 1).await?;

    let (mut ping, mut exec) = (Vec::new(), Vec::new());
    for _ in 0..iterations {
        let t = Instant::now();
        vm.ping().await?;
        ping.push(t.elapsed());
        let t = Instant::now();
        let out = vm.exec(["true"]).await?;
        exec.push(t.elapsed());
        if !out.status.success() {
            return Err(format!("exec true failed: {out:?}").into());
        }
    }
    let mut spawn = vm.measure_spawn(&["true"], iterations as u32).await?;
    step("latencies done");

    let bytes = mib << 20;
    let write = throughput(bytes, async {
        let req = WriteFileRequest::new("/tmp/written");
        vm.write_file_with(req, Zeros(bytes)).await.map(|_| ())
    })
    .await?;
    vm.remove("/tmp/written", false).await?;
    let out = vm
        .exec(["truncate", "-s", &bytes.to_string(), "/tmp/sparse"])
        .await?;
    if !out.status.success() {
        return Err(format!("truncate failed: {out:?}").into());
    }
    let read = throughput(bytes, async {
        vm.read_file_to("/tmp/sparse", tokio::io::sink())
            .await
            .map(|_| ())
    })
    .await?;
    let cat = throughput(bytes, cat_through(&vm, bytes)).await?;
    step("throughput done");
    vm.stop().await?;

    println!("exec round trips, one VM, {iterations} runs each (ms)");
    println!("| operation | p50 | p99 |");
    println!("| --- | --- | --- |");
    let rows = [
        ("agent ping (vsock connect + 1 frame each way)", &mut ping),
        (
            "in-guest fork+exec+wait of `true` (agent-timed)",
            &mut spawn,
        ),
        ("`vm.exec([\"true\"])` (host API, full)", &mut exec),
    ];
    let mut p50 = Vec::new();
    for (name, samples) in rows {
        let (a, b) = (quantile(samples, 0.5), quantile(samples, 0.99));
        p50.push(a);
        println!("| {name} | {} | {} |", ms(a), ms(b));
    }
    let parts = p50[0] + p50[1];
    println!(
        "exec p50 / (ping p50 + in-guest spawn p50) = {:.2} (overhead {} ms)",
        p50[2].as_secs_f64() / parts.as_secs_f64(),
        ms(p50[2].saturating_sub(parts))
    );
    println!();
    println!("throughput, {mib} MiB each (MB/s)");
    println!("| transfer | MB/s |");
    println!("| --- | --- |");
    println!("| write_file (host → guest tmpfs) | {write:.0} |");
    println!("| read_file (sparse guest file → host) | {read:.0} |");
    println!("| `cat` stream (host → guest → host) | {cat:.0} |");
    Ok(())
}

async fn throughput(
    bytes: u64,
    work: impl std::future::Future<Output = Result<(), supermachine::Error>>,
) -> Result<f64, BoxError> {
    let t = Instant::now();
    work.await?;
    Ok(bytes as f64 / t.elapsed().as_secs_f64().max(1e-9) / 1e6)
}

async fn cat_through(vm: &Vm, bytes: u64) -> Result<(), supermachine::Error> {
    let mut child = vm.exec_builder().argv(["cat"]).spawn().await?;
    let mut stdin = child
        .stdin
        .take()
        .ok_or(supermachine::Error::ConnectionLost)?;
    let mut stdout = child
        .stdout
        .take()
        .ok_or(supermachine::Error::ConnectionLost)?;
    let feeder = tokio::spawn(async move {
        let chunk = vec![0x5au8; 1 << 20];
        let mut left = bytes;
        while left > 0 {
            let n = left.min(chunk.len() as u64) as usize;
            stdin.write(&chunk[..n]).await?;
            left -= n as u64;
        }
        Ok::<_, supermachine::Error>(())
    });
    let mut got = 0u64;
    while let Some(c) = stdout.recv().await {
        got += c.len() as u64;
    }
    feeder
        .await
        .map_err(|_| supermachine::Error::ConnectionLost)??;
    child.wait().await?;
    if got != bytes {
        return Err(supermachine::Error::Protocol(format!(
            "cat returned {got} of {bytes} bytes"
        )));
    }
    Ok(())
}

/// `n` zero bytes as an `AsyncRead`.
struct Zeros(u64);

impl tokio::io::AsyncRead for Zeros {
    fn poll_read(
        mut self: std::pin::Pin<&mut Self>,
        _: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        let n = (buf.remaining() as u64).min(self.0) as usize;
        buf.put_slice(&vec![0u8; n]);
        self.0 -= n as u64;
        std::task::Poll::Ready(Ok(()))
    }
}
