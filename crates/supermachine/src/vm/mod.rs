//! A running VM as the host library sees it: a supervised worker process
//! and the sockets to talk to the agent inside.

pub(crate) mod child;
pub(crate) mod conn;
pub(crate) mod copy;
pub(crate) mod exec;
pub(crate) mod files;
pub(crate) mod forward;
pub(crate) mod mount;
pub(crate) mod network;
pub(crate) mod volume;

use self::conn::Conn;
use crate::error::Error;
use crate::image::defaults::ExecDefaults;
use crate::image::Image;
use crate::image::{assets, kernel};
use crate::worker::outcome::VmOutcome;
use crate::worker::runtime::{self, VmDir, VmInfo};
use crate::worker::{ExitWatch, Worker, WorkerSpec};
use mount::Mount;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;
use supermachine_protocol::{self as proto, AgentMessage, Request, PROTOCOL_VERSION, READY_PORT};

/// How long a lost agent connection waits for the worker to end, to say
/// how the VM went away (a rebooting or panicking guest takes a moment).
const LOST_GRACE: Duration = Duration::from_secs(5);

/// Reads the agent's `Ready` frame from the ready socket's connection.
async fn read_ready(stream: tokio::net::UnixStream) -> Result<(), Error> {
    let mut stream = stream
        .into_std()
        .map_err(|e| Error::io("ready socket", e))?;
    let read = tokio::task::spawn_blocking(move || {
        stream.set_nonblocking(false)?;
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        Ok::<_, std::io::Error>(proto::read_frame::<AgentMessage, _>(&mut stream))
    })
    .await
    .map_err(|source| Error::Task {
        task: "ready reader",
        source,
    })?
    .map_err(|e| Error::io("ready socket", e))?;
    match read? {
        AgentMessage::Ready { protocol, .. } if protocol == PROTOCOL_VERSION => Ok(()),
        AgentMessage::Ready { protocol, .. } => Err(Error::VersionMismatch {
            agent: protocol,
            host: PROTOCOL_VERSION,
        }),
        other => Err(Error::Protocol(format!("expected Ready, got {other:?}"))),
    }
}

/// How to start a VM.
///
/// ```
/// use supermachine::VmConfig;
/// let config = VmConfig {
///     memory_mib: 512,
///     vcpus: 2,
///     env: vec![("RUST_LOG".into(), "debug".into())],
///     ..VmConfig::default()
/// };
/// assert_eq!(config.boot_timeout.as_secs(), 60);
/// ```
#[derive(Debug, Clone)]
pub struct VmConfig {
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub vcpus: u8,
    /// Guest kernel; the cached build when `None`.
    pub kernel: Option<PathBuf>,
    /// Environment every exec in this VM starts with (on top of the agent's
    /// PATH/HOME/TERM and an OCI image's Env, replacing same-named ones);
    /// an exec's own variables win.
    pub env: Vec<(String, String)>,
    /// Working directory of every exec unless it sets one; `None`: the
    /// image's WorkingDir, else `/`.
    pub workdir: Option<String>,
    /// User of every exec unless it sets one (`name`, `uid`, `uid:gid`,
    /// `name:group`, resolved in the guest); `None`: the image's User,
    /// else root.
    pub user: Option<String>,
    /// Extra disks after the root filesystem: /dev/vdb, /dev/vdc, …
    pub disks: Vec<Disk>,
    /// Host directories shared with the guest (virtio-fs).
    pub mounts: Vec<Mount>,
    /// Host files the guest gets as ext4 filesystems mounted at a path
    /// (created sparse and formatted when new; one VM at a time). Attached
    /// after [`disks`](Self::disks). Not on restores yet: a VM with a
    /// volume cannot be snapshotted.
    pub volumes: Vec<volume::Volume>,
    /// The guest's network. `None`: off for a boot; for a restore, what
    /// the snapshot had (a snapshot taken with a network gets
    /// [`Network::Public`](crate::Network::Public): the policy is the
    /// caller's to give, never the snapshot's).
    pub network: Option<crate::Network>,
    /// Extra kernel command line arguments.
    pub extra_kernel_args: Vec<String>,
    /// How long to wait for the agent to report ready.
    pub boot_timeout: Duration,
    /// Copy the guest console to stderr (debugging).
    pub console: bool,
}

impl Default for VmConfig {
    fn default() -> Self {
        VmConfig {
            memory_mib: 256,
            vcpus: 1,
            kernel: None,
            env: Vec::new(),
            workdir: None,
            user: None,
            disks: Vec::new(),
            mounts: Vec::new(),
            volumes: Vec::new(),
            network: None,
            extra_kernel_args: Vec::new(),
            boot_timeout: Duration::from_secs(60),
            console: false,
        }
    }
}

/// A raw disk image given to the guest as a virtio block device. Sparse
/// files stay sparse: holes read as zeros and nothing is preallocated.
///
/// ```
/// let data = supermachine::Disk { path: "/srv/data.img".into(), read_only: false };
/// # let _ = data;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Disk {
    /// The disk's file (or block device) on the host.
    pub path: PathBuf,
    /// The guest may only read it.
    pub read_only: bool,
}

/// A running VM. Dropping it stops the VM (unless it was attached to by
/// id) and removes its runtime files.
///
/// Every method takes `&self`: operations run concurrently, each on its
/// own connection to the guest.
///
/// ```no_run
/// # async fn demo() -> Result<(), supermachine::Error> {
/// use supermachine::{Image, Vm, VmConfig};
/// let vm = Vm::start(&Image::builtin(), &VmConfig::default()).await?;
/// let out = vm.exec(["echo", "hi"]).await?;
/// assert_eq!(out.stdout, b"hi\n");
/// vm.stop().await?;
/// # Ok(()) }
/// ```
pub struct Vm {
    pub(crate) dir: VmDir,
    pub(crate) info: VmInfo,
    pub(crate) worker: Mutex<Worker>,
    /// Whether this handle started the worker and must stop it when dropped.
    pub(crate) owns_worker: bool,
    pub(crate) keep_log: AtomicBool,
    pub(crate) defaults: ExecDefaults,
    /// Restored from a snapshot with no hot-page list yet: the worker
    /// records one after the first exec (see `restore.rs`).
    pub(crate) hot_pages_pending: AtomicBool,
    /// Restored into a standby worker: holds the standby refill back
    /// until the first exec is answered (see `standby.rs`).
    pub(crate) refill_hold: Mutex<Option<crate::worker::standby::RefillHold>>,
}

impl Vm {
    /// Boots a VM from `image` and waits until its agent is ready.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), supermachine::Error> {
    /// use supermachine::{Image, Vm, VmConfig};
    /// let config = VmConfig { memory_mib: 512, ..VmConfig::default() };
    /// let vm = Vm::start(&Image::builtin(), &config).await?;
    /// println!("started VM {}", vm.id());
    /// # Ok(()) }
    /// ```
    pub async fn start(image: &Image, config: &VmConfig) -> Result<Vm, Error> {
        Vm::boot(image, config, false).await
    }

    /// Boots a VM that keeps running after this process exits, starts
    /// `command` in it in the background (its output goes to the serial log,
    /// see `supermachine logs`), and returns its description. Reach it again
    /// with [`Vm::attach`]. For an OCI image's own command pass
    /// [`Image::command`]`(&[])`; an empty `command` starts nothing.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), supermachine::Error> {
    /// use supermachine::{Image, Vm, VmConfig};
    /// let info = Vm::start_detached(&Image::builtin(), &VmConfig::default(), &[]).await?;
    /// let vm = Vm::attach(&info.id)?;
    /// vm.stop().await?;
    /// # Ok(()) }
    /// ```
    pub async fn start_detached(
        image: &Image,
        config: &VmConfig,
        command: &[String],
    ) -> Result<VmInfo, Error> {
        let mut vm = Vm::boot(image, config, true).await?;
        if !command.is_empty() {
            vm.exec_builder().argv(command).start_detached().await?;
            vm.info.command = command.to_vec();
            vm.dir.record_info(&vm.info)?;
        }
        vm.owns_worker = false;
        vm.dir.persist();
        Ok(vm.info.clone())
    }

    async fn boot(image: &Image, config: &VmConfig, detached: bool) -> Result<Vm, Error> {
        if let Some(snapshot) = image.snapshot() {
            return Vm::restore(image, snapshot, config, detached).await;
        }
        if config.vcpus == 0 {
            return Err(Error::InvalidArgument("a VM needs at least 1 vCPU".into()));
        }
        runtime::check_kvm()?;
        let kernel = match &config.kernel {
            Some(k) => k.clone(),
            None => kernel::path()?,
        };
        let rootfs = image.rootfs()?;
        let mut disks = vec![(rootfs, true)];
        for disk in &config.disks {
            if !disk.path.exists() {
                return Err(Error::InvalidArgument(format!(
                    "disk {} does not exist",
                    disk.path.display()
                )));
            }
            disks.push((disk.path.clone(), disk.read_only));
        }
        let mounts = mount::worker_specs(&config.mounts)?;
        let net = config.network.as_ref().and_then(crate::Network::spec);
        let passt = net.as_ref().map(|_| network::passt_binary()).transpose()?;
        let mut volume_args = Vec::with_capacity(config.volumes.len());
        for (path, v) in volume::prepare(&config.volumes)?
            .into_iter()
            .zip(&config.volumes)
        {
            // The worker names disk i's serial `disk{i}`; the agent finds
            // the volume by it.
            volume_args.push(volume::boot_arg(&format!("disk{}", disks.len()), v));
            disks.push((path, false));
        }
        let initramfs = assets::initramfs()?;
        let binary = assets::worker_binary()?;
        let dir = VmDir::create()?;
        let (serial_log, worker_log) = dir.log_paths()?;

        let ready_path = dir.path().join(format!("vsock.sock_{READY_PORT}"));
        let ready = std::os::unix::net::UnixListener::bind(&ready_path)
            .map_err(|e| Error::io(format!("binding {}", ready_path.display()), e))?;
        // Private whatever the umask (the VM directory is 0700 too).
        std::fs::set_permissions(
            &ready_path,
            std::os::unix::fs::PermissionsExt::from_mode(crate::paths::PRIVATE_FILE),
        )
        .map_err(|e| Error::io(format!("making {} private", ready_path.display()), e))?;
        ready
            .set_nonblocking(true)
            .map_err(|e| Error::io("ready socket", e))?;
        let ready =
            tokio::net::UnixListener::from_std(ready).map_err(|e| Error::io("ready socket", e))?;

        let mut cmdline = vec!["supermachine.root=/dev/vda".to_string()];
        cmdline.extend(mount::boot_args(&config.mounts));
        cmdline.extend(volume_args);
        if net.is_some() {
            cmdline.push(network::boot_arg());
        }
        cmdline.extend(config.extra_kernel_args.iter().cloned());
        let spec = WorkerSpec {
            binary,
            boot: Some((kernel, initramfs)),
            restore: None,
            standby: false,
            cmdline: cmdline.join(" "),
            memory_mib: config.memory_mib,
            vcpus: config.vcpus,
            disks: disks.clone(),
            mounts,
            net,
            passt,
            vm_dir: dir.path().to_path_buf(),
            serial_log: serial_log.clone(),
            console: config.console,
            detached_stderr: detached.then_some(worker_log),
        };
        let info = VmInfo {
            id: dir.id().to_string(),
            pid: 0,
            started: 0,
            memory_mib: config.memory_mib,
            vcpus: config.vcpus,
            image: image.name(),
            image_digest: image.digest().map(|d| d.to_string()),
            exposed_ports: image
                .config()
                .map(|c| c.exposed_ports.clone())
                .unwrap_or_default(),
            defaults: exec_defaults(image, config),
            command: Vec::new(),
            serial_log,
            detached,
            disks,
            snapshot: None,
            mounts: spec.mounts.clone(),
            network: spec.net.as_ref().map(ToString::to_string),
        };
        let vm = Vm::supervise(dir, &spec, info)?;
        vm.wait_ready(&ready, config.boot_timeout).await?;
        let _ = std::fs::remove_file(&ready_path);
        Ok(vm)
    }

    /// Starts the worker for `spec` and records the VM as running; `info`
    /// gets the worker's pid and the start time.
    pub(crate) fn supervise(dir: VmDir, spec: &WorkerSpec, info: VmInfo) -> Result<Vm, Error> {
        let worker = Worker::spawn(spec)?;
        dir.record_pid(worker.pid());
        Vm::adopt(dir, worker, info)
    }

    /// Records the VM of a started `worker` as running.
    pub(crate) fn adopt(dir: VmDir, worker: Worker, mut info: VmInfo) -> Result<Vm, Error> {
        info.pid = worker.pid();
        info.started = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        dir.record_info(&info)?;
        Ok(Vm {
            dir,
            worker: Mutex::new(worker),
            owns_worker: true,
            keep_log: AtomicBool::new(false),
            hot_pages_pending: AtomicBool::new(false),
            refill_hold: Mutex::new(None),
            defaults: info.defaults.clone(),
            info,
        })
    }

    /// A handle on a running VM by id (from [`Vm::start_detached`] or
    /// `supermachine ps`). Dropping it leaves the VM running. Its execs
    /// start with the VM's defaults (the image's Env, WorkingDir and User,
    /// and the config's), as `docker exec` does.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), supermachine::Error> {
    /// let vm = supermachine::Vm::attach("3f2a9c1d")?;
    /// let out = vm.exec(["uptime"]).await?;
    /// print!("{}", out.stdout_lossy());
    /// # Ok(()) }
    /// ```
    pub fn attach(id: &str) -> Result<Vm, Error> {
        let (dir, info) = VmDir::open(id)?;
        Ok(Vm {
            dir,
            worker: Mutex::new(Worker::attached(info.pid)),
            owns_worker: false,
            keep_log: AtomicBool::new(true),
            hot_pages_pending: AtomicBool::new(false),
            refill_hold: Mutex::new(None),
            defaults: info.defaults.clone(),
            info,
        })
    }

    /// Records the workload command (shown by `ps`, kept in snapshots).
    pub(crate) fn set_command(&mut self, command: Vec<String>) {
        self.info.command = command;
        let _ = self.dir.record_info(&self.info);
    }

    /// Every running VM of this user, oldest first.
    ///
    /// ```no_run
    /// for info in supermachine::Vm::running() {
    ///     println!("{} {} pid {}", info.id, info.image, info.pid);
    /// }
    /// ```
    pub fn running() -> Vec<VmInfo> {
        runtime::list()
    }

    /// Short unique id of this VM.
    ///
    /// ```no_run
    /// # fn demo(vm: &supermachine::Vm) {
    /// assert_eq!(vm.id(), vm.info().id);
    /// # }
    /// ```
    pub fn id(&self) -> &str {
        &self.info.id
    }

    /// What `supermachine ps` shows: id, image, exposed ports, defaults, ...
    ///
    /// ```no_run
    /// # fn demo(vm: &supermachine::Vm) {
    /// let info = vm.info();
    /// println!("{}: {} MiB, {} vCPUs", info.image, info.memory_mib, info.vcpus);
    /// # }
    /// ```
    pub fn info(&self) -> &VmInfo {
        &self.info
    }

    /// Path of the guest's serial console log.
    ///
    /// ```no_run
    /// # fn demo(vm: &supermachine::Vm) {
    /// let console = std::fs::read_to_string(vm.serial_log()).unwrap_or_default();
    /// println!("{console}");
    /// # }
    /// ```
    pub fn serial_log(&self) -> &Path {
        &self.info.serial_log
    }

    /// The VM's runtime directory (holds `vsock.sock`).
    ///
    /// ```no_run
    /// # fn demo(vm: &supermachine::Vm) {
    /// assert!(vm.runtime_dir().join("vsock.sock").exists());
    /// # }
    /// ```
    pub fn runtime_dir(&self) -> &Path {
        self.dir.path()
    }

    pub(crate) fn worker(&self) -> MutexGuard<'_, Worker> {
        self.worker.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// How the VM ended, if it has (non-blocking).
    ///
    /// ```no_run
    /// # fn demo(vm: &supermachine::Vm) {
    /// if let Some(outcome) = vm.try_outcome() {
    ///     eprintln!("VM {} is gone: {outcome}", vm.id());
    /// }
    /// # }
    /// ```
    pub fn try_outcome(&self) -> Option<VmOutcome> {
        self.worker().try_outcome()
    }

    async fn wait_ready(
        &self,
        listener: &tokio::net::UnixListener,
        timeout: Duration,
    ) -> Result<(), Error> {
        let ended = self.exit_watch();
        tokio::select! {
            accepted = listener.accept() => {
                let (stream, _) = accepted.map_err(|e| Error::io("waiting for the agent", e))?;
                runtime::check_peer(&stream, Path::new("the VM's ready socket"))?;
                read_ready(stream).await
            }
            () = ended.ended() => Err(self.boot_failed()),
            () = tokio::time::sleep(timeout) => {
                self.keep_log.store(true, Ordering::Relaxed);
                Err(Error::BootTimeout {
                    secs: timeout.as_secs(),
                    serial_log: Some(self.info.serial_log.clone()),
                })
            }
        }
    }

    /// The error for a worker that ended before its VM was ready (call it
    /// once the worker has ended: its stderr is then complete).
    pub(crate) fn boot_failed(&self) -> Error {
        self.keep_log.store(true, Ordering::Relaxed);
        let mut worker = self.worker();
        Error::BootFailed {
            outcome: worker.try_outcome().unwrap_or(VmOutcome::Stopped),
            stderr: worker.stderr_text(),
            serial_log: Some(self.info.serial_log.clone()),
        }
    }

    /// A handle to wait for this VM's worker to end with.
    pub(crate) fn exit_watch(&self) -> ExitWatch {
        self.worker().exit_watch()
    }

    /// Waits for the VM to end, however it ends (powered off by its guest,
    /// stopped, crashed), and says how. For a VM attached to by id this
    /// works too: the wait is on the worker process itself.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), supermachine::Error> {
    /// let vm = supermachine::Vm::attach("vm-1")?;
    /// println!("{:?}", vm.ended().await);
    /// # Ok(()) }
    /// ```
    pub async fn ended(&self) -> VmOutcome {
        self.exit_watch().ended().await;
        self.try_outcome().unwrap_or(VmOutcome::Stopped)
    }

    pub(crate) async fn connect(&self, request: Request) -> Result<Conn, Error> {
        match conn::connect(&self.dir.path().join("vsock.sock"), request).await {
            Ok(c) => Ok(c),
            Err(e) => Err(self.explain_lost(e).await),
        }
    }

    /// Publishes a guest TCP port on the host: connections to the returned
    /// forwarder's address (127.0.0.1 and a free port unless `options` say
    /// otherwise) reach `guest_port` on the guest's loopback, carried over
    /// vsock, so the guest needs no network. Nothing has to listen in the
    /// guest yet: a connection made while nothing does is reset. The
    /// forwarder stops (its port is freed, its connections end) when it is
    /// closed or dropped, or when the VM ends.
    ///
    /// ```no_run
    /// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
    /// let web = vm.expose_tcp(8080, supermachine::ExposeOptions::default()).await?;
    /// println!("http://{}/", web.local_addr());
    /// web.close().await;
    /// # Ok(()) }
    /// ```
    pub async fn expose_tcp(
        &self,
        guest_port: u16,
        options: forward::ExposeOptions,
    ) -> Result<forward::TcpForwarder, Error> {
        let muxer = self.dir.path().join("vsock.sock");
        forward::TcpForwarder::start(muxer, guest_port, options, Some(self.exit_watch())).await
    }

    /// Round trip to the agent.
    ///
    /// ```no_run
    /// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
    /// vm.ping().await?;
    /// # Ok(()) }
    /// ```
    pub async fn ping(&self) -> Result<(), Error> {
        let mut c = self.connect(Request::Ping).await?;
        match c.recv().await {
            Ok(AgentMessage::Pong) => Ok(()),
            Ok(other) => Err(conn::unexpected(other, "ping")),
            Err(e) => Err(self.explain_lost(e).await),
        }
    }

    /// Benchmark probe: the guest's own time to start `argv` and see it
    /// end, measured inside the agent, `iterations` times (at most 10 000).
    ///
    /// ```no_run
    /// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
    /// let times = vm.measure_spawn(&["true"], 100).await?;
    /// assert_eq!(times.len(), 100);
    /// # Ok(()) }
    /// ```
    pub async fn measure_spawn(
        &self,
        argv: &[&str],
        iterations: u32,
    ) -> Result<Vec<Duration>, Error> {
        let request = Request::MeasureSpawn {
            argv: argv.iter().map(|a| a.to_string()).collect(),
            iterations,
        };
        let mut c = self.connect(request).await?;
        match c.recv().await {
            Ok(AgentMessage::SpawnTimes(nanos)) => {
                Ok(nanos.into_iter().map(Duration::from_nanos).collect())
            }
            Ok(other) => Err(conn::unexpected(other, "measure_spawn")),
            Err(e) => Err(self.explain_lost(e).await),
        }
    }

    /// A lost agent connection usually means the VM went away: this turns
    /// [`Error::ConnectionLost`] into [`Error::VmEnded`] saying how (a
    /// poweroff, a reboot, a kernel panic, …) when the VM ends within a few
    /// seconds, and returns any other error unchanged. The library does this
    /// itself except for errors from a [`crate::Child`]'s streams.
    ///
    /// ```no_run
    /// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
    /// let mut child = vm.exec_builder().argv(["poweroff"]).spawn().await?;
    /// if let Err(e) = child.wait().await {
    ///     eprintln!("{}", vm.explain_lost(e).await);
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn explain_lost(&self, e: Error) -> Error {
        if !matches!(e, Error::ConnectionLost | Error::Io { .. }) {
            return e;
        }
        // A rebooting or panicking guest takes a moment to stop its worker.
        let Ok(outcome) = tokio::time::timeout(LOST_GRACE, self.ended()).await else {
            return e;
        };
        if outcome != VmOutcome::PowerOff {
            self.keep_log.store(true, Ordering::Relaxed);
        }
        let keep = self.keep_log.load(Ordering::Relaxed);
        Error::VmEnded {
            outcome,
            serial_log: keep.then(|| self.info.serial_log.clone()),
        }
    }

    /// Asks the guest to power off and waits for the worker to end.
    ///
    /// Anything but a clean poweroff is an error that names the serial
    /// log, which is then kept for the user to read.
    ///
    /// ```no_run
    /// # async fn demo(vm: supermachine::Vm) -> Result<(), supermachine::Error> {
    /// vm.stop().await?;
    /// # Ok(()) }
    /// ```
    pub async fn stop(self) -> Result<(), Error> {
        if let Some(recording) = self.record_hot_pages() {
            let _ = recording.await;
        }
        let outcome = match self.try_outcome() {
            Some(o) => o,
            None => {
                if let Ok(mut c) = self.connect(Request::Shutdown { reboot: false }).await {
                    let _ = tokio::time::timeout(Duration::from_secs(5), c.recv()).await;
                }
                self.wait_exit(Duration::from_secs(10)).await
            }
        };
        let clean =
            outcome == VmOutcome::PowerOff || (!self.owns_worker && outcome == VmOutcome::Stopped);
        if clean {
            if !self.owns_worker {
                // The detached VM is gone: so is the reason to keep its logs.
                let _ = std::fs::remove_file(&self.info.serial_log);
                let _ = std::fs::remove_file(self.info.serial_log.with_extension("worker.log"));
            }
            return Ok(());
        }
        self.keep_log.store(true, Ordering::Relaxed);
        Err(Error::VmEnded {
            outcome,
            serial_log: Some(self.info.serial_log.clone()),
        })
    }

    /// Waits up to `grace` for the worker to end, then stops it.
    async fn wait_exit(&self, grace: Duration) -> VmOutcome {
        match tokio::time::timeout(grace, self.ended()).await {
            Ok(outcome) => outcome,
            Err(_) => self.worker().stop(),
        }
    }
}

/// An image's Env/WorkingDir/User with the config's settings on top.
pub(crate) fn exec_defaults(image: &Image, config: &VmConfig) -> ExecDefaults {
    let mut d = image.exec_defaults().with_env(config.env.iter().cloned());
    if config.workdir.is_some() {
        d.cwd = config.workdir.clone();
    }
    if config.user.is_some() {
        d.user = config.user.clone();
    }
    d
}

impl Drop for Vm {
    fn drop(&mut self) {
        if !self.owns_worker {
            return;
        }
        let outcome = self.worker().stop();
        let keep = self.keep_log.load(Ordering::Relaxed);
        if !keep && matches!(outcome, VmOutcome::PowerOff | VmOutcome::Stopped) {
            let _ = std::fs::remove_file(&self.info.serial_log);
        }
    }
}

/// A [`Vm`] whose "agent" is a fake muxer in a test: each connection gets
/// the frames `answer` returns for its request.
#[cfg(test)]
pub(crate) mod fake {
    use super::*;
    use std::io::{BufRead, Write};
    use supermachine_protocol::{Hello, HostMessage};

    pub(crate) fn vm_answering(
        dir: &Path,
        answer: impl Fn(&Request) -> Vec<AgentMessage> + Send + 'static,
    ) -> Vm {
        let listener = std::os::unix::net::UnixListener::bind(dir.join("vsock.sock")).unwrap();
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { return };
                let mut reader = std::io::BufReader::new(stream.try_clone().unwrap());
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                let hello: Hello = proto::read_frame(&mut reader).unwrap();
                let mut w = &stream;
                w.write_all(b"OK 1\n").unwrap();
                for msg in answer(&hello.request) {
                    if proto::write_frame(&mut w, &msg).is_err() {
                        break;
                    }
                }
                // Whatever the host sends next ends with the connection.
                let _ = proto::read_frame::<HostMessage, _>(&mut reader);
            }
        });
        let info = VmInfo {
            id: "0".into(),
            pid: std::process::id(),
            started: 0,
            memory_mib: 1,
            vcpus: 1,
            image: "fake".into(),
            image_digest: None,
            exposed_ports: Vec::new(),
            defaults: ExecDefaults::default(),
            command: Vec::new(),
            serial_log: dir.join("serial.log"),
            detached: false,
            disks: Vec::new(),
            snapshot: None,
            mounts: Vec::new(),
            network: None,
        };
        Vm {
            dir: VmDir::for_test(dir),
            worker: Mutex::new(Worker::attached(std::process::id())),
            owns_worker: false,
            keep_log: AtomicBool::new(false),
            hot_pages_pending: AtomicBool::new(false),
            refill_hold: Mutex::new(None),
            defaults: ExecDefaults::default(),
            info,
        }
    }
}
