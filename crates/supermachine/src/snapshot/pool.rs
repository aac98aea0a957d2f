//! Warm pools: copies of one snapshot restored ahead of need and handed out
//! on [`Pool::acquire`].
//!
//! The pool keeps `min` VMs restored and idle in the background, never has
//! more than `max` in existence (idle, handed out, or being restored), and
//! replaces VMs whose worker died. Restores happen in tokio tasks on the
//! runtime the pool was made on; acquirers wait on a notification, so an
//! abandoned acquire (a dropped future) never loses a VM: whatever it was
//! waiting for goes back to the idle list.

use crate::error::Error;
use crate::image::Image;
use crate::vm::{Vm, VmConfig};
use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// How a [`Pool`] behaves.
///
/// ```
/// use supermachine::PoolOptions;
/// let options = PoolOptions { min: 4, max: 16, ..PoolOptions::default() };
/// assert!(options.restore_on_release);
/// ```
#[derive(Debug, Clone)]
pub struct PoolOptions {
    /// VMs kept restored and idle, ready for [`Pool::acquire`].
    pub min: usize,
    /// Most VMs in existence at once: idle, handed out, and being restored.
    pub max: usize,
    /// `true`: a released VM is thrown away and a fresh copy restored in
    /// its place, so nothing one user did is seen by the next. `false`: it
    /// goes back to the idle list as it is.
    pub restore_on_release: bool,
    /// How long [`Pool::acquire`] waits for a VM when `max` are in use.
    pub acquire_timeout: Duration,
    /// Settings of each restored VM: the memory and vCPUs are the
    /// snapshot's; `env`, `workdir`, `user` and `boot_timeout` apply.
    pub config: VmConfig,
}

impl Default for PoolOptions {
    fn default() -> Self {
        PoolOptions {
            min: 1,
            max: 4,
            restore_on_release: true,
            acquire_timeout: Duration::from_secs(30),
            config: VmConfig::default(),
        }
    }
}

/// A snapshot of the pool's counts.
///
/// ```
/// let status = supermachine::PoolStatus { idle: 2, leased: 1, ..Default::default() };
/// assert_eq!(status.idle + status.leased + status.restoring, 3);
/// assert_eq!(status.replaced, 0);
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStatus {
    /// Restored and waiting for [`Pool::acquire`].
    pub idle: usize,
    /// Handed out and not released yet.
    pub leased: usize,
    /// Being restored right now.
    pub restoring: usize,
    /// VMs found dead (worker crashed or killed) and replaced so far.
    pub replaced: u64,
}

/// Copies of one snapshot, restored ahead of need. Make one with
/// [`Image::pool`]; see [`PoolOptions`] for how it behaves.
///
/// Dropping the pool (or [`Pool::shutdown`]) stops its idle VMs and those
/// being restored; VMs handed out keep running until they are released or
/// dropped. Every worker is a child of this process and dies with it, so
/// not even a crash of the host process leaves VMs behind.
///
/// ```no_run
/// # async fn demo() -> Result<(), supermachine::Error> {
/// use supermachine::{Image, PoolOptions};
/// let image = Image::from_snapshot("/var/lib/snapshots/app")?;
/// let pool = image.pool(PoolOptions { min: 2, max: 8, ..PoolOptions::default() })?;
/// let vm = pool.acquire().await?;
/// let out = vm.exec(["echo", "hi"]).await?;
/// assert_eq!(out.stdout, b"hi\n");
/// vm.release();
/// pool.shutdown().await;
/// # Ok(()) }
/// ```
pub struct Pool {
    shared: Arc<Shared>,
}

struct Shared {
    image: Image,
    options: PoolOptions,
    state: Mutex<State>,
    /// Signalled whenever a VM goes idle, a restore ends, or the pool closes.
    changed: Notify,
    runtime: tokio::runtime::Handle,
}

#[derive(Default)]
struct State {
    idle: VecDeque<Vm>,
    leased: usize,
    restoring: usize,
    /// Acquires waiting for a VM: each asks for one more restore.
    waiting: usize,
    closed: bool,
    replaced: u64,
    /// Counts failed restores; with the last one's message.
    failures: u64,
    last_failure: Option<String>,
    /// No background restore before this (backing off after failures).
    retry_at: Option<Instant>,
    consecutive_failures: u32,
}

impl State {
    fn total(&self) -> usize {
        self.idle.len() + self.leased + self.restoring
    }

    /// Moves dead idle VMs out (to be dropped outside the lock).
    fn take_dead(&mut self) -> Vec<Vm> {
        let (alive, dead): (VecDeque<Vm>, VecDeque<Vm>) = std::mem::take(&mut self.idle)
            .into_iter()
            .partition(|vm| vm.try_outcome().is_none());
        self.idle = alive;
        self.replaced += dead.len() as u64;
        dead.into()
    }
}

/// How often idle VMs are checked for dead workers.
const HEALTH_INTERVAL: Duration = Duration::from_millis(250);
/// Longest back-off between restore attempts after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

impl Image {
    /// A pool of VMs restored from this image, which must be a snapshot
    /// ([`Image::from_snapshot`], [`Image::build`](crate::build)). Call it
    /// inside a tokio runtime: the pool restores in the background on it.
    ///
    /// ```no_run
    /// # fn demo(image: supermachine::Image) -> Result<(), supermachine::Error> {
    /// let pool = image.pool(supermachine::PoolOptions::default())?;
    /// # Ok(()) }
    /// ```
    pub fn pool(&self, options: PoolOptions) -> Result<Pool, Error> {
        if self.snapshot().is_none() {
            return Err(Error::InvalidArgument(format!(
                "{} is not a snapshot: a pool hands out restored copies of one (bake it with `supermachine build` or Vm::snapshot)",
                self.name()
            )));
        }
        if options.max == 0 || options.min > options.max {
            return Err(Error::InvalidArgument(format!(
                "a pool needs 1 ≤ max and min ≤ max (min {}, max {})",
                options.min, options.max
            )));
        }
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::InvalidArgument("Image::pool must be called inside a tokio runtime".into())
        })?;
        let shared = Arc::new(Shared {
            image: self.clone(),
            options,
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            runtime,
        });
        shared.refill();
        shared.runtime.spawn(watch_health(Arc::downgrade(&shared)));
        Ok(Pool { shared })
    }
}

impl Pool {
    /// A VM for the caller alone: an idle one at once if there is one,
    /// else a fresh restore, waiting up to
    /// [`PoolOptions::acquire_timeout`] when `max` VMs are in use. Give it
    /// back with [`PooledVm::release`].
    ///
    /// ```no_run
    /// # async fn demo(pool: &supermachine::Pool) -> Result<(), supermachine::Error> {
    /// let vm = pool.acquire().await?;
    /// vm.exec(["true"]).await?;
    /// vm.release();
    /// # Ok(()) }
    /// ```
    pub async fn acquire(&self) -> Result<PooledVm, Error> {
        let shared = &self.shared;
        let started = Instant::now();
        let deadline = started + shared.options.acquire_timeout;
        let mut waiting = None;
        let failures_before = shared.lock().failures;
        loop {
            let notified = shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let dead = {
                let mut st = shared.lock();
                if st.closed {
                    return Err(Error::PoolClosed);
                }
                let dead = st.take_dead();
                if let Some(vm) = st.idle.pop_front() {
                    st.leased += 1;
                    drop(st);
                    discard(dead);
                    shared.refill();
                    return Ok(PooledVm {
                        vm: Some(vm),
                        shared: shared.clone(),
                    });
                }
                if st.failures != failures_before && st.restoring == 0 {
                    let why = st.last_failure.clone().unwrap_or_default();
                    return Err(Error::PoolRestore(why));
                }
                dead
            };
            discard(dead);
            if waiting.is_none() {
                waiting = Some(Waiting::new(shared));
            }
            shared.refill();
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, notified).await.is_err() {
                return Err(Error::PoolTimeout {
                    max: shared.options.max,
                    waited: started.elapsed(),
                });
            }
        }
    }

    /// The pool's counts right now.
    ///
    /// ```no_run
    /// # fn demo(pool: &supermachine::Pool) {
    /// let status = pool.status();
    /// println!("{} idle, {} in use", status.idle, status.leased);
    /// # }
    /// ```
    pub fn status(&self) -> PoolStatus {
        let st = self.shared.lock();
        PoolStatus {
            idle: st.idle.len(),
            leased: st.leased,
            restoring: st.restoring,
            replaced: st.replaced,
        }
    }

    /// Waits until `min` VMs are idle (or `timeout` passes; then it
    /// returns the error of the last failed restore, if any).
    ///
    /// ```no_run
    /// # async fn demo(pool: &supermachine::Pool) -> Result<(), supermachine::Error> {
    /// pool.wait_ready(std::time::Duration::from_secs(60)).await?;
    /// # Ok(()) }
    /// ```
    pub async fn wait_ready(&self, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let st = self.shared.lock();
                if st.closed {
                    return Err(Error::PoolClosed);
                }
                if st.idle.len() >= self.shared.options.min {
                    return Ok(());
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, notified).await.is_err() {
                let st = self.shared.lock();
                return Err(match &st.last_failure {
                    Some(why) => Error::PoolRestore(why.clone()),
                    None => Error::PoolTimeout {
                        max: self.shared.options.max,
                        waited: timeout,
                    },
                });
            }
        }
    }

    /// Stops the idle VMs and those being restored, and waits until they
    /// are gone. Acquires fail from now on with [`Error::PoolClosed`];
    /// VMs handed out run on until they are released or dropped, and are
    /// stopped then.
    ///
    /// ```no_run
    /// # async fn demo(pool: supermachine::Pool) {
    /// pool.shutdown().await;
    /// # }
    /// ```
    pub async fn shutdown(&self) {
        let idle = self.shared.close();
        let _ = tokio::task::spawn_blocking(move || drop(idle)).await;
        loop {
            let notified = self.shared.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.shared.lock().restoring == 0 {
                return;
            }
            notified.await;
        }
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        discard(self.shared.close());
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Closes the pool; returns the idle VMs for the caller to stop.
    fn close(&self) -> VecDeque<Vm> {
        let idle = {
            let mut st = self.lock();
            st.closed = true;
            std::mem::take(&mut st.idle)
        };
        self.changed.notify_waiters();
        idle
    }

    /// Starts background restores until `min` VMs (plus one per waiting
    /// acquire) are idle or on their way, within `max`.
    fn refill(self: &Arc<Self>) {
        let mut st = self.lock();
        if st.closed {
            return;
        }
        if let Some(at) = st.retry_at {
            if Instant::now() < at {
                return;
            }
            st.retry_at = None;
        }
        let wanted = self.options.min + st.waiting;
        while st.idle.len() + st.restoring < wanted && st.total() < self.options.max {
            st.restoring += 1;
            self.runtime.spawn(restore_one(self.clone()));
        }
    }

    /// Takes back a VM handed out.
    fn give_back(self: &Arc<Self>, vm: Vm, reuse: bool) {
        let to_stop = {
            let mut st = self.lock();
            st.leased = st.leased.saturating_sub(1);
            if reuse && !st.closed && vm.try_outcome().is_none() {
                st.idle.push_back(vm);
                None
            } else {
                Some(vm)
            }
        };
        if let Some(vm) = to_stop {
            discard(vec![vm]);
        }
        self.changed.notify_waiters();
        self.refill();
    }
}

/// One background restore; the VM goes to the idle list.
async fn restore_one(shared: Arc<Shared>) {
    let restored = Vm::start(&shared.image, &shared.options.config).await;
    let leftover = {
        let mut st = shared.lock();
        st.restoring = st.restoring.saturating_sub(1);
        match restored {
            Ok(vm) if st.closed => Some(vm),
            Ok(vm) => {
                st.consecutive_failures = 0;
                st.idle.push_back(vm);
                None
            }
            Err(e) => {
                tracing::warn!("pool: restoring {}: {e}", shared.image.name());
                st.failures += 1;
                st.last_failure = Some(e.to_string());
                st.consecutive_failures = st.consecutive_failures.saturating_add(1);
                let backoff = Duration::from_millis(50 << st.consecutive_failures.min(8));
                let backoff = backoff.min(MAX_BACKOFF);
                st.retry_at = Some(Instant::now() + backoff);
                let retry = shared.clone();
                shared.runtime.spawn(async move {
                    tokio::time::sleep(backoff).await;
                    retry.refill();
                });
                None
            }
        }
    };
    if let Some(vm) = leftover {
        discard(vec![vm]);
    }
    shared.changed.notify_waiters();
    shared.refill();
}

/// Replaces idle VMs whose worker died, for as long as the pool exists.
async fn watch_health(shared: Weak<Shared>) {
    loop {
        tokio::time::sleep(HEALTH_INTERVAL).await;
        let Some(shared) = shared.upgrade() else {
            return;
        };
        let dead = {
            let mut st = shared.lock();
            if st.closed {
                return;
            }
            st.take_dead()
        };
        if !dead.is_empty() {
            tracing::info!("pool: replacing {} VM(s) whose worker ended", dead.len());
            discard(dead);
            shared.refill();
        }
    }
}

/// Counts an acquire as waiting (asking for a restore) while it lives.
struct Waiting(Arc<Shared>);

impl Waiting {
    fn new(shared: &Arc<Shared>) -> Waiting {
        shared.lock().waiting += 1;
        Waiting(shared.clone())
    }
}

impl Drop for Waiting {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.waiting = st.waiting.saturating_sub(1);
    }
}

/// Stops VMs off the caller's thread: stopping one waits for its worker.
fn discard<I: IntoIterator<Item = Vm> + Send + 'static>(vms: I) {
    let mut vms = vms.into_iter().peekable();
    if vms.peek().is_none() {
        return;
    }
    let vms: Vec<Vm> = vms.collect();
    let spawned = std::thread::Builder::new()
        .name("supermachine-pool-stop".into())
        .spawn(move || drop(vms));
    if let Err(e) = spawned {
        tracing::warn!("pool: no thread to stop VMs on ({e})");
    }
}

/// A VM handed out by a [`Pool`]. It derefs to [`Vm`]. Give it back with
/// [`PooledVm::release`]; dropping it instead throws it away (it is
/// stopped and the pool restores a replacement).
///
/// ```no_run
/// # async fn demo(pool: &supermachine::Pool) -> Result<(), supermachine::Error> {
/// let vm = pool.acquire().await?;
/// // Every `Vm` method works on it.
/// vm.write_file("/tmp/job.json", br#"{"n": 1}"#).await?;
/// let out = vm.exec(["cat", "/tmp/job.json"]).await?;
/// assert!(out.status.success());
/// vm.release();
/// # Ok(()) }
/// ```
pub struct PooledVm {
    vm: Option<Vm>,
    shared: Arc<Shared>,
}

impl PooledVm {
    /// Returns the VM to its pool: reused as it is, or thrown away and
    /// replaced by a fresh restore when
    /// [`PoolOptions::restore_on_release`] is set (or the pool was shut
    /// down, or the VM has ended).
    ///
    /// ```no_run
    /// # async fn demo(pool: &supermachine::Pool) -> Result<(), supermachine::Error> {
    /// let vm = pool.acquire().await?;
    /// vm.release();
    /// # Ok(()) }
    /// ```
    pub fn release(mut self) {
        if let Some(vm) = self.vm.take() {
            let reuse = !self.shared.options.restore_on_release;
            self.shared.give_back(vm, reuse);
        }
    }
}

impl std::ops::Deref for PooledVm {
    type Target = Vm;
    fn deref(&self) -> &Vm {
        // Only `release` and `drop` take the VM, and both consume `self`.
        self.vm
            .as_ref()
            .expect("a PooledVm always holds its VM until released")
    }
}

impl Drop for PooledVm {
    fn drop(&mut self) {
        if let Some(vm) = self.vm.take() {
            self.shared.give_back(vm, false);
        }
    }
}
