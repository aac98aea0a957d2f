//! Warm pools of restored VMs: min/max, the acquire timeout, reuse against
//! restore-on-release, dead workers replaced, and nothing left behind by a
//! shutdown or by the death of the process that owns the pool.

use crate::api::ensure;
use crate::progress::trial;
use crate::snapshot::{runtime, sh, snapshot_of_a_busy_vm};
use crate::util::{TempDir, PATIENCE};
use libtest_mimic::{Failed, Trial};
use std::io::BufRead;
use std::path::PathBuf;
use std::time::{Duration, Instant};
use supermachine::{Error, Image, PoolOptions, Vm, VmInfo};

pub fn trials() -> Vec<Trial> {
    vec![
        trial("pool::min_max_timeout_and_reuse", min_max_reuse),
        trial("pool::restore_on_release_hands_out_fresh_copies", fresh),
        trial("pool::dead_workers_are_replaced", dead_workers),
        trial("pool::shutdown_leaves_nothing_behind", shutdown),
        trial(
            "pool::workers_die_with_the_process_that_owns_the_pool",
            owner_killed,
        ),
    ]
}

/// Set to a snapshot directory, the e2e binary runs [`owner_child`]
/// instead of the tests.
pub const CHILD_ENV: &str = "SUPERMACHINE_E2E_POOL_OWNER";

const READY: Duration = Duration::from_secs(120);

fn options(min: usize, max: usize, restore_on_release: bool, timeout: Duration) -> PoolOptions {
    PoolOptions {
        min,
        max,
        restore_on_release,
        acquire_timeout: timeout,
        ..PoolOptions::default()
    }
}

fn min_max_reuse() -> Result<(), Failed> {
    let dir = TempDir::new("pool-reuse");
    runtime()?.block_on(async {
        let (image, _) = snapshot_of_a_busy_vm(&dir).await?;
        // Long enough for an on-demand restore on a busy host (the third
        // acquire waits for one); the fourth acquire waits it out.
        let pool = image.pool(options(2, 3, false, Duration::from_secs(20)))?;
        pool.wait_ready(READY).await?;
        let status = pool.status();
        ensure(
            status.idle == 2 && status.leased == 0,
            format!("after wait_ready: {status:?}"),
        )?;

        // Two idle ones, then a third restored on demand: max is 3.
        let a = pool.acquire().await?;
        let b = pool.acquire().await?;
        let c = pool.acquire().await?;
        for vm in [&a, &b, &c] {
            sh(vm, "true").await?;
        }
        let status = pool.status();
        ensure(
            status.leased == 3 && status.idle == 0 && status.restoring == 0,
            format!("with three out: {status:?}"),
        )?;
        match pool.acquire().await {
            Err(Error::PoolTimeout { max: 3, .. }) => {}
            Err(e) => return Err(format!("a fourth acquire: {e}").into()),
            Ok(_) => return Err("a fourth acquire got a VM beyond max".into()),
        }

        // A waiting acquire gets the VM released meanwhile, as it was.
        a.write_file("/tmp/mark", b"used").await?;
        let a_id = a.id().to_string();
        let waiter = {
            let pool = &pool;
            async move { pool.acquire().await }
        };
        let release_later = async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            a.release();
        };
        let (d, ()) = tokio::join!(waiter, release_later);
        let d = d?;
        ensure(
            d.id() == a_id,
            format!("reused {} instead of {a_id}", d.id()),
        )?;
        ensure(
            d.read_file("/tmp/mark").await? == b"used",
            "a reused VM keeps what its last user did",
        )?;
        for vm in [b, c, d] {
            vm.release();
        }
        pool.shutdown().await;
        ensure(
            matches!(pool.acquire().await, Err(Error::PoolClosed)),
            "acquire after shutdown",
        )?;
        Ok(())
    })
}

fn fresh() -> Result<(), Failed> {
    let dir = TempDir::new("pool-fresh");
    runtime()?.block_on(async {
        let (image, _) = snapshot_of_a_busy_vm(&dir).await?;
        let pool = image.pool(options(1, 1, true, Duration::from_secs(60)))?;
        let x = pool.acquire().await?;
        x.write_file("/tmp/mark", b"used").await?;
        let x_id = x.id().to_string();
        x.release();
        // max is 1: this waits for the replacement restore.
        let y = pool.acquire().await?;
        ensure(y.id() != x_id, "restore_on_release handed out the same VM")?;
        ensure(
            sh(&y, "test -e /tmp/mark && echo used || echo fresh").await? == "fresh",
            "a fresh copy has the last user's file",
        )?;
        ensure(
            y.read_file("/tmp/before").await? == b"written before the snapshot",
            "a fresh copy is the snapshot",
        )?;
        y.release();
        pool.shutdown().await;
        wait_gone(&[x_id], PATIENCE).await
    })
}

fn dead_workers() -> Result<(), Failed> {
    let dir = TempDir::new("pool-dead");
    runtime()?.block_on(async {
        let (image, _) = snapshot_of_a_busy_vm(&dir).await?;
        let snap = snapshot_path(&image)?;
        let pool = image.pool(options(1, 1, false, Duration::from_secs(60)))?;
        pool.wait_ready(READY).await?;

        // An idle VM whose worker was killed is never handed out.
        let idle = vms_of(&snap);
        ensure(idle.len() == 1, format!("one idle VM: {idle:?}"))?;
        kill_and_wait(idle[0].pid).await?;
        let vm = pool.acquire().await?;
        ensure(
            vm.id() != idle[0].id,
            format!(
                "acquire handed out a dead VM: {:?}, outcome {:?}, stat {:?}, {:?}",
                idle[0],
                vm.try_outcome(),
                std::fs::read_to_string(format!("/proc/{}/stat", idle[0].pid)),
                pool.status()
            ),
        )?;
        sh(&vm, "true").await?;
        ensure(pool.status().replaced >= 1, format!("{:?}", pool.status()))?;

        // Killed while an acquire waits for it: the pool restores anew.
        let waiter = {
            let pool = &pool;
            async move { pool.acquire().await }
        };
        let pid = vm.info().pid;
        let kill_later = async move {
            tokio::time::sleep(Duration::from_millis(300)).await;
            let killed = kill_and_wait(pid).await;
            vm.release();
            killed
        };
        let (next, killed) = tokio::join!(waiter, kill_later);
        killed?;
        let next = next?;
        ensure(next.info().pid != pid, "acquire handed out the killed VM")?;
        sh(&next, "true").await?;
        next.release();
        pool.shutdown().await;
        Ok(())
    })
}

fn shutdown() -> Result<(), Failed> {
    let dir = TempDir::new("pool-shutdown");
    runtime()?.block_on(async {
        let (image, _) = snapshot_of_a_busy_vm(&dir).await?;
        let snap = snapshot_path(&image)?;
        let pool = image.pool(options(2, 3, true, Duration::from_secs(60)))?;
        pool.wait_ready(READY).await?;
        let leased = pool.acquire().await?;
        // Let the pool restore the replacement of the leased one.
        pool.wait_ready(READY).await?;
        let all = vms_of(&snap);
        ensure(all.len() == 3, format!("three VMs: {all:?}"))?;

        pool.shutdown().await;
        // A VM handed out runs on until it is released.
        sh(&leased, "true").await?;
        let leased_id = leased.id().to_string();
        leased.release();
        let ids: Vec<String> = all.iter().map(|v| v.id.clone()).collect();
        ensure(ids.contains(&leased_id), "the leased VM is one of them")?;
        wait_gone(&ids, PATIENCE).await?;
        leftovers(&all)
    })
}

fn owner_killed() -> Result<(), Failed> {
    let dir = TempDir::new("pool-owner");
    let (snap, _image) = runtime()?.block_on(async {
        let (image, _) = snapshot_of_a_busy_vm(&dir).await?;
        Ok::<_, Failed>((snapshot_path(&image)?, image))
    })?;
    let mut child = std::process::Command::new(std::env::current_exe()?)
        .env(CHILD_ENV, &snap)
        .stdout(std::process::Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("child stdout")?;
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut line = String::new();
        let _ = std::io::BufReader::new(stdout).read_line(&mut line);
        let _ = tx.send(line);
    });
    let line = rx.recv_timeout(READY);
    let all = vms_of(&snap);
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGKILL) };
    let _ = child.wait();
    let line = line.map_err(|_| "the pool owner never reported ready")?;
    ensure(
        line.trim() == "ready" && all.len() == 3,
        format!("the owner said {line:?}; its VMs: {all:?}"),
    )?;
    let ids: Vec<String> = all.iter().map(|v| v.id.clone()).collect();
    runtime()?.block_on(wait_gone(&ids, PATIENCE))?;
    leftovers(&all)
}

/// The child side of [`owner_killed`]: a pool of two idle VMs and one
/// leased, then "ready" on stdout, then waiting to be killed.
pub fn owner_child(snapshot: &str) -> ! {
    let result = (|| -> Result<(), Failed> {
        runtime()?.block_on(async {
            let pool = Image::from_snapshot(snapshot)?.pool(options(
                2,
                3,
                true,
                Duration::from_secs(60),
            ))?;
            pool.wait_ready(READY).await?;
            let _leased = pool.acquire().await?;
            pool.wait_ready(READY).await?;
            println!("ready");
            tokio::time::sleep(Duration::from_secs(3600)).await;
            Ok(())
        })
    })();
    if let Err(e) = result {
        eprintln!("pool owner: {e:?}");
    }
    std::process::exit(1)
}

fn snapshot_path(image: &Image) -> Result<PathBuf, Failed> {
    Ok(image
        .snapshot_dir()
        .ok_or("no snapshot dir")?
        .canonicalize()?)
}

/// The running VMs restored from `snap`.
fn vms_of(snap: &PathBuf) -> Vec<VmInfo> {
    Vm::running()
        .into_iter()
        .filter(|v| {
            v.snapshot
                .as_ref()
                .and_then(|s| s.canonicalize().ok())
                .as_ref()
                == Some(snap)
        })
        .collect()
}

/// SIGKILLs a worker and waits until it is dead, so the pool can see it.
async fn kill_and_wait(pid: u32) -> Result<(), Failed> {
    // SAFETY: signalling a worker process by pid.
    unsafe { libc::kill(pid as i32, libc::SIGKILL) };
    let deadline = Instant::now() + PATIENCE;
    while Instant::now() < deadline {
        if dead(pid) {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Err(format!("worker {pid} survived SIGKILL").into())
}

/// Waits until none of `ids` is a running VM.
async fn wait_gone(ids: &[String], timeout: Duration) -> Result<(), Failed> {
    let deadline = Instant::now() + timeout;
    loop {
        let left: Vec<VmInfo> = Vm::running()
            .into_iter()
            .filter(|v| ids.contains(&v.id))
            .collect();
        if left.is_empty() {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(format!("VMs still running: {left:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Whether a worker is dead: a zombie with no thread left, or gone.
fn dead(pid: u32) -> bool {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let state = stat
        .rsplit(')')
        .next()
        .and_then(|s| s.trim().chars().next());
    let threads = std::fs::read_dir(format!("/proc/{pid}/task")).map_or(0, |d| d.count());
    stat.is_empty() || (state == Some('Z') && threads <= 1)
}

/// No worker process, runtime directory or serial log of `vms` is left
/// (a worker may take a moment to tear its VM down after it said goodbye,
/// and a stopped VM's serial log goes a moment after its worker).
fn leftovers(vms: &[VmInfo]) -> Result<(), Failed> {
    let deadline = Instant::now() + PATIENCE;
    let settled = |vm: &VmInfo| dead(vm.pid) && !vm.serial_log.exists();
    while !vms.iter().all(settled) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    let runtime_dir = supermachine::paths::runtime_dir();
    for vm in vms {
        ensure(
            dead(vm.pid),
            format!(
                "worker {} of VM {} still runs: {:?}",
                vm.pid,
                vm.id,
                std::fs::read_to_string(format!("/proc/{}/stat", vm.pid))
            ),
        )?;
        ensure(
            !runtime_dir.join(&vm.id).exists(),
            format!("runtime directory of VM {} left behind", vm.id),
        )?;
        ensure(
            !vm.serial_log.exists(),
            format!("serial log {} left behind", vm.serial_log.display()),
        )?;
    }
    Ok(())
}
