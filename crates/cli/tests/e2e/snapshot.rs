//! Snapshots and copy-on-write restores through the library: what a
//! snapshot keeps (files, running processes), what each restored copy gets
//! of its own (clock, randomness, identity, its own writes), and that a
//! damaged snapshot fails cleanly, and that restores learn and then map
//! ahead the pages a copy touches first.

use crate::api::ensure;
use crate::progress::trial;
use crate::util::{TempDir, PATIENCE};
use libtest_mimic::{Failed, Trial};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use supermachine::{Image, Vm, VmConfig};
use supermachine_vmm::snapshot::bundle;

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "snapshot::restored_copies_keep_state_and_are_independent",
            restored_copies,
        ),
        trial("snapshot::a_damaged_snapshot_fails_cleanly", damaged),
        trial(
            "snapshot::cli_build_caches_by_key_and_rebakes_on_change",
            cli_build,
        ),
        trial("snapshot::concurrent_builds_bake_once", concurrent_builds),
        trial("snapshot::restores_use_prestarted_workers", prestarted),
        trial(
            "snapshot::the_first_restore_records_hot_pages_later_ones_map_them",
            hot_pages,
        ),
    ]
}

/// `supermachine build …` → (key, path, stderr).
fn build_with(snapshots: &str, file: &str) -> Result<(String, String, String), Failed> {
    let file_arg = format!("{file}:/etc/app.conf");
    let out = crate::util::run(&[
        "build",
        "--snapshots-dir",
        snapshots,
        "--file",
        &file_arg,
        "--listen",
        "8080",
        "--warmup",
        "cat /etc/app.conf > /tmp/warm",
        "--",
        "httpd",
        "-f",
        "-p",
        "8080",
    ])?;
    let stdout = crate::util::stdout(&out);
    crate::util::check(out.status.success(), "build", &out)?;
    let (key, path) = stdout
        .trim()
        .split_once('\t')
        .ok_or_else(|| format!("build printed {stdout:?}"))?;
    Ok((key.into(), path.into(), crate::util::stderr(&out)))
}

fn cli_build() -> Result<(), Failed> {
    let dir = TempDir::new("snapshot-build");
    let snapshots = dir.0.join("snapshots");
    let snapshots = snapshots.to_str().ok_or("path")?;
    let conf = dir.0.join("app.conf");
    let conf_arg = conf.to_str().ok_or("path")?;
    std::fs::write(&conf, "one")?;

    let (key1, path1, err1) = build_with(snapshots, conf_arg)?;
    ensure(err1.contains("baked"), format!("first build: {err1}"))?;
    // Recorded at bake time, by a restore of the new snapshot.
    ensure(
        std::path::Path::new(&path1).join("hot-pages").is_file(),
        format!("no hot-page list in {path1} after the build"),
    )?;
    let (key1b, path1b, err1b) = build_with(snapshots, conf_arg)?;
    ensure(
        key1b == key1 && path1b == path1 && err1b.contains("cached"),
        format!("second build: {key1b} {path1b} {err1b}"),
    )?;

    // The warmup's work and the listening workload are in the snapshot.
    let out = crate::util::run(&[
        "run",
        "--snapshot",
        &path1,
        "--",
        "sh",
        "-c",
        "cat /tmp/warm; cat /proc/net/tcp /proc/net/tcp6 | grep -c ':1F90 [0-9A-F:]* 0A '",
    ])?;
    crate::util::check(
        out.status.success() && crate::util::stdout(&out) == "one1\n",
        "run --snapshot",
        &out,
    )?;

    // A changed staged file is a new key and a new bake.
    std::fs::write(&conf, "two")?;
    let (key2, path2, err2) = build_with(snapshots, conf_arg)?;
    ensure(
        key2 != key1 && err2.contains("baked"),
        format!("after the change: {key2} {err2}"),
    )?;
    let out = crate::util::run(&["run", "--snapshot", &path2, "--", "cat", "/tmp/warm"])?;
    crate::util::check(
        crate::util::stdout(&out) == "two",
        "the re-baked snapshot",
        &out,
    )?;

    let out = crate::util::run(&["snapshots", "ls", "--dir", snapshots])?;
    let listing = crate::util::stdout(&out);
    ensure(
        listing.contains(&key1) && listing.contains(&key2),
        format!("snapshots ls: {listing}"),
    )?;
    let out = crate::util::run(&["snapshots", "rm", &path1])?;
    crate::util::check(out.status.success(), "snapshots rm", &out)?;
    ensure(
        !std::path::Path::new(&path1).exists(),
        "the removed snapshot is gone",
    )?;
    Ok(())
}

pub(crate) fn runtime() -> Result<tokio::runtime::Runtime, Failed> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?)
}

pub(crate) async fn sh(vm: &Vm, script: &str) -> Result<String, Failed> {
    let out = vm.exec(["sh", "-c", script]).await?;
    ensure(
        out.status.code == Some(0),
        format!("`{script}` failed: {out:?}"),
    )?;
    Ok(out.stdout_lossy().trim().to_string())
}

/// Boots a VM with a file and a background process, snapshots it into
/// `dir/snap`, and checks the original runs on.
pub(crate) async fn snapshot_of_a_busy_vm(dir: &TempDir) -> Result<(Image, String), Failed> {
    let vm = Vm::start(&Image::builtin(), &VmConfig::default()).await?;
    vm.write_file("/tmp/before", b"written before the snapshot")
        .await?;
    let pid = sh(&vm, "sleep 100000 >/dev/null 2>&1 & echo $!").await?;
    let image = vm.snapshot(dir.0.join("snap")).await?;
    // The original keeps running.
    ensure(
        sh(&vm, &format!("kill -0 {pid} && echo alive")).await? == "alive",
        "the original VM's process after its snapshot",
    )?;
    vm.stop().await?;
    Ok((image, pid))
}

fn restored_copies() -> Result<(), Failed> {
    let dir = TempDir::new("snapshot");
    runtime()?.block_on(async {
        let (image, pid) = snapshot_of_a_busy_vm(&dir).await?;
        let a = Vm::start(&image, &VmConfig::default()).await?;
        let b = Vm::start(&image, &VmConfig::default()).await?;
        for (name, vm) in [("a", &a), ("b", &b)] {
            // Exec works at once; the file and the process are there.
            ensure(
                vm.read_file("/tmp/before").await? == b"written before the snapshot",
                format!("{name}: the file written before the snapshot"),
            )?;
            ensure(
                sh(vm, &format!("kill -0 {pid} && echo alive")).await? == "alive",
                format!("{name}: the process started before the snapshot"),
            )?;
            // The clock is the host's, not the snapshot's: the guest's
            // whole seconds fall between the host's clock before and after
            // the exec that read them (however slow that exec was).
            let before = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
            let guest: f64 = sh(vm, "date +%s").await?.parse()?;
            let after = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
            ensure(
                before.floor() - 1.0 <= guest && guest <= after + 1.0,
                format!("{name}: guest clock {guest}, host {before}..{after}"),
            )?;
            ensure(
                sh(vm, "hostname").await? == vm.id(),
                format!("{name}: hostname is the VM id"),
            )?;
        }
        // Independent: a write in one copy is invisible in the other.
        a.write_file("/tmp/only-a", b"a").await?;
        ensure(
            sh(&b, "test -e /tmp/only-a && echo yes || echo no").await? == "no",
            "a write in one copy showed up in the other",
        )?;
        // Their random streams differ, and so do their machine ids.
        let random = "head -c 32 /dev/urandom | od -An -tx1 | tr -d ' \\n'";
        let (ra, rb) = (sh(&a, random).await?, sh(&b, random).await?);
        ensure(ra.len() == 64 && ra != rb, format!("urandom: {ra} vs {rb}"))?;
        let id = "cat /etc/machine-id";
        let (ia, ib) = (sh(&a, id).await?, sh(&b, id).await?);
        ensure(
            ia.len() == 32 && ia != ib,
            format!("machine ids {ia} vs {ib}"),
        )?;
        a.stop().await?;
        b.stop().await?;
        Ok(())
    })
}

/// The first copy records the pages it touched once its first exec is
/// done; a later copy (here a detached one, whose worker log we can read)
/// maps them ahead and still sees the snapshot's contents.
fn hot_pages() -> Result<(), Failed> {
    let dir = TempDir::new("snapshot-hot");
    let snap = runtime()?.block_on(async {
        let (image, _) = snapshot_of_a_busy_vm(&dir).await?;
        let snap = image.snapshot_dir().ok_or("no snapshot dir")?.to_path_buf();
        let list = snap.join("hot-pages");
        let first = Vm::start(&image, &VmConfig::default()).await?;
        ensure(!list.exists(), "a hot-page list before any restore ran")?;
        sh(&first, "true").await?;
        let deadline = Instant::now() + PATIENCE;
        while !list.exists() && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        ensure(list.exists(), "no hot-page list after the first exec")?;
        first.stop().await?;
        Ok::<_, Failed>(snap)
    })?;

    let snap_arg = snap.to_string_lossy().to_string();
    let mut start = crate::util::supermachine();
    start
        .args(["start", "--snapshot", &snap_arg])
        .env("SUPERMACHINE_LOG", "supermachine_vmm=debug");
    let out = crate::util::output_of(start, None)?;
    crate::util::check(out.status.success(), "start --snapshot", &out)?;
    let id = crate::util::stdout(&out).trim().to_string();
    let read = crate::util::run(&["exec", &id, "--", "cat", "/tmp/before"])?;
    // Before the stop, which deletes a cleanly stopped VM's logs.
    let log = supermachine::paths::state_dir()
        .join("logs")
        .join(format!("{id}.worker.log"));
    let log = std::fs::read_to_string(&log).unwrap_or_default();
    let stop = crate::util::run(&["stop", &id])?;
    crate::util::check(
        crate::util::stdout(&read) == "written before the snapshot",
        "the file written before the snapshot, in a copy restored with hot pages",
        &read,
    )?;
    crate::util::check(stop.status.success(), "stop", &stop)?;
    let field = |line: &str, name: &str| -> Option<u64> {
        line.split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
    };
    let host_side = log
        .lines()
        .find(|l| l.contains("hot pages: host side ready"))
        .ok_or_else(|| format!("the worker did not map hot pages ahead; its log:\n{log}"))?;
    ensure(
        field(host_side, "copied").is_some_and(|n| n > 0)
            && field(host_side, "mapped").is_some_and(|n| n > 0),
        format!("host side: {host_side}"),
    )?;
    match log
        .lines()
        .find(|l| l.contains("guest mappings built ahead"))
    {
        Some(line) => ensure(
            field(line, "pages").is_some_and(|n| n > 0),
            format!("guest side: {line}"),
        )?,
        None => ensure(
            log.contains("cannot build guest mappings ahead"),
            format!("neither guest mappings nor why not; the worker's log:\n{log}"),
        )?,
    }
    Ok(())
}

fn damaged() -> Result<(), Failed> {
    let dir = TempDir::new("snapshot-damaged");
    runtime()?.block_on(async {
        let (image, _) = snapshot_of_a_busy_vm(&dir).await?;
        let snap = image.snapshot_dir().ok_or("no snapshot dir")?.to_path_buf();
        let config = VmConfig {
            boot_timeout: Duration::from_secs(30),
            ..VmConfig::default()
        };

        // A flipped byte in the state file: refused by its checksum.
        let state = snap.join("state");
        let good = std::fs::read(&state)?;
        let mut bad = good.clone();
        let last = bad.len() - 1;
        bad[last] ^= 0xff;
        std::fs::write(&state, &bad)?;
        refused(
            Vm::start(&Image::from_snapshot(&snap)?, &config).await,
            "a corrupted state file",
            "checksum",
        )?;
        // Detached, the worker's stderr goes to a log file: the error
        // still says why.
        refused(
            Vm::start_detached(&Image::from_snapshot(&snap)?, &config, &[]).await,
            "a corrupted state file, detached",
            "checksum",
        )?;
        std::fs::write(&state, &good)?;

        // A guest TSC rate far from this host's (a snapshot carried to
        // another machine): restored with TSC scaling, else refused by
        // name, never a guest with a clock at the wrong rate.
        let mut foreign = bundle::read_state(&snap)?;
        for vcpu in &mut foreign.machine.vcpus {
            vcpu.tsc_khz = vcpu.tsc_khz.map(|khz| khz / 2);
        }
        std::fs::remove_file(&state)?;
        bundle::write_state(&snap, &foreign)?;
        match Vm::start(&Image::from_snapshot(&snap)?, &config).await {
            Ok(vm) => vm.stop().await?,
            Err(e) => ensure(
                e.to_string().contains("TSC runs at"),
                format!("foreign TSC rate: {e}"),
            )?,
        }
        std::fs::write(&state, &good)?;

        // A truncated memory file: refused before any vCPU runs.
        let memory = std::fs::OpenOptions::new()
            .write(true)
            .open(snap.join("memory"))?;
        memory.set_len(1 << 20)?;
        // The library's own check of the snapshot refuses it already.
        let started = match Image::from_snapshot(&snap) {
            Ok(image) => Vm::start(&image, &config).await.map(drop),
            Err(e) => Err(e),
        };
        refused(started, "a truncated memory file", "truncated")?;

        // No worker is left behind by either failure.
        ensure(
            Vm::running().is_empty(),
            format!("VMs left running: {:?}", Vm::running()),
        )?;
        Ok(())
    })
}

/// A start that must fail, with an error that says `says`.
fn refused<T>(
    started: Result<T, supermachine::Error>,
    what: &str,
    says: &str,
) -> Result<(), Failed> {
    match started {
        Ok(_) => Err(format!("{what} restored").into()),
        Err(e) => ensure(e.to_string().contains(says), format!("{what}: {e}")),
    }
}

fn concurrent_builds() -> Result<(), Failed> {
    let dir = TempDir::new("snapshot-concurrent");
    runtime()?.block_on(async {
        let options = || {
            let mut o = supermachine::BuildOptions::new(Image::builtin());
            o.snapshots_dir = Some(dir.0.clone());
            o.warmup_tag = Some("concurrent".into());
            o
        };
        let (a, b) = tokio::join!(
            supermachine::build(options()),
            supermachine::build(options())
        );
        let (a, b) = (a?, b?);
        ensure(
            a.key == b.key && a.dir == b.dir,
            format!(
                "{} {} vs {} {}",
                a.key,
                a.dir.display(),
                b.key,
                b.dir.display()
            ),
        )?;
        ensure(
            a.cached != b.cached,
            format!(
                "cached: {} and {}: exactly one must have baked",
                a.cached, b.cached
            ),
        )?;
        let vm = Vm::start(&a.image, &VmConfig::default()).await?;
        sh(&vm, "true").await?;
        vm.stop().await?;
        Ok(())
    })
}

/// Our child worker processes waiting on standby (started with
/// `--standby` and not running a VM yet).
fn standby_pids() -> Vec<u32> {
    let me = std::process::id().to_string();
    let running: Vec<u32> = Vm::running().iter().map(|v| v.pid).collect();
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
            let fields: Vec<&str> = stat
                .rsplit(')')
                .next()
                .unwrap_or("")
                .split_whitespace()
                .collect();
            let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
            !running.contains(pid)
                && fields.first() != Some(&"Z")
                && fields.get(1) == Some(&me.as_str())
                && String::from_utf8_lossy(&cmdline).contains("--standby")
        })
        .collect()
}

async fn wait_for_standby(count: usize) -> Result<Vec<u32>, Failed> {
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    loop {
        let pids = standby_pids();
        if pids.len() == count {
            return Ok(pids);
        }
        if std::time::Instant::now() >= deadline {
            return Err(format!("{} standby workers, expected {count}", pids.len()).into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn prestarted() -> Result<(), Failed> {
    let dir = TempDir::new("snapshot-prestarted");
    runtime()?.block_on(async {
        let (image, pid) = snapshot_of_a_busy_vm(&dir).await?;
        supermachine::prestart_workers(1);
        let result = async {
            // The restore runs in the worker that was waiting.
            let waiting = wait_for_standby(1).await?;
            let vm = Vm::start(&image, &VmConfig::default()).await?;
            ensure(
                vm.info().pid == waiting[0],
                format!(
                    "restored in {}, the standby worker was {}",
                    vm.info().pid,
                    waiting[0]
                ),
            )?;
            // The agent answers the fixup before it writes the machine id;
            // the first request still waits for it.
            let id = sh(&vm, "cat /etc/machine-id").await?;
            ensure(
                id.len() == 32,
                format!("the machine id on the first request: {id:?}"),
            )?;
            ensure(
                sh(&vm, &format!("kill -0 {pid} && echo alive")).await? == "alive",
                "the snapshot's process in a prestarted worker",
            )?;
            ensure(
                sh(&vm, "hostname").await? == vm.id(),
                "hostname is the VM id",
            )?;
            // The standby opened the serial log before it knew the
            // snapshot: the restored guest's console still lands in it.
            sh(&vm, "echo prestarted-console-marker > /dev/ttyS0").await?;
            let log = &vm.info().serial_log;
            let deadline = Instant::now() + PATIENCE;
            while !std::fs::read_to_string(log)
                .unwrap_or_default()
                .contains("prestarted-console-marker")
            {
                ensure(
                    Instant::now() < deadline,
                    format!("the guest's console output is not in {}", log.display()),
                )?;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            // The reserve is refilled behind the restore.
            let next = wait_for_standby(1).await?;
            ensure(next[0] != waiting[0], "the reserve was not refilled")?;
            vm.stop().await?;

            // A damaged snapshot fails as cleanly through a standby worker.
            let snap = image.snapshot_dir().ok_or("no snapshot dir")?.to_path_buf();
            let state = snap.join("state");
            let mut bad = std::fs::read(&state)?;
            bad[0] ^= 0xff;
            std::fs::write(&state, &bad)?;
            let e = Vm::start(&Image::from_snapshot(&snap)?, &VmConfig::default())
                .await
                .err()
                .ok_or("a corrupted snapshot restored")?;
            ensure(
                e.to_string().contains("snapshot"),
                format!("corrupted, through a standby worker: {e}"),
            )?;
            // The worker's refusal crosses its control socket typed: the
            // caller tells a damaged state from other failures unread.
            let kind = match &e {
                supermachine::Error::Snapshot {
                    reason: supermachine::snapshot::SnapshotProblem::Worker(refusal),
                    ..
                } => refusal.failure_kind(),
                _ => None,
            };
            ensure(
                kind == Some(supermachine::FailureKind::SnapshotFormat),
                format!("the kind of a corrupted snapshot's refusal: {kind:?} ({e})"),
            )?;
            Ok::<_, Failed>(())
        }
        .await;
        supermachine::prestart_workers(0);
        result?;
        wait_for_standby(0).await?;
        ensure(
            Vm::running().is_empty(),
            format!("VMs left running: {:?}", Vm::running()),
        )?;
        Ok(())
    })
}
