//! Warm pools: copies of one snapshot restored ahead of need and handed out
//! on [`Pool::acquire`].
//!
//! The pool keeps `min` VMs restored and idle in the background, never has
//! more than `max` in existence (idle, handed out, or being restored), and
//! replaces VMs whose worker died. Restores happen in tokio tasks on the
//! runtime the pool was made on; acquirers wait on a notification, so an
//! abandoned acquire (a dropped future) never loses a VM: whatever it was
//! waiting for goes back to the idle list.
//!
//! A worker's death is an event: each VM the pool restores gets one task
//! that waits for its worker to end (the worker's pidfd) and then has the
//! pool replace it if it was idle. Nothing is polled.
//!
//! The pool's logic (counts, waiting, back-off) is written against two
//! small traits, [`Restore`] (how to get a VM) and [`Member`] (what the
//! pool needs of one), so its tests run it with fakes instead of VMs.

use crate::error::Error;
use crate::image::Image;
use crate::vm::{Vm, VmConfig};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// A boxed future that owns what it needs.
pub(crate) type Pending<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

/// What the pool needs of a VM.
pub(crate) trait Member: Send + 'static {
    /// Whether its worker still runs (non-blocking).
    fn alive(&self) -> bool;
    /// Resolves once its worker has ended.
    fn ended(&self) -> Pending<()>;
}

/// The pool's restore step: how it gets a new VM.
pub(crate) trait Restore: Send + Sync + 'static {
    type Member: Member;
    fn restore(&self) -> Pending<Result<Self::Member, Error>>;
    /// What is restored, for log lines.
    fn name(&self) -> String;
}

impl Member for Vm {
    fn alive(&self) -> bool {
        self.try_outcome().is_none()
    }

    fn ended(&self) -> Pending<()> {
        let watch = self.exit_watch();
        Box::pin(async move { watch.ended().await })
    }
}

/// Restores copies of a snapshot image: the real pool's restore step.
pub(crate) struct ImageRestore {
    image: Image,
    config: VmConfig,
}

impl Restore for ImageRestore {
    type Member = Vm;

    fn restore(&self) -> Pending<Result<Vm, Error>> {
        let (image, config) = (self.image.clone(), self.config.clone());
        Box::pin(async move { Vm::start(&image, &config).await })
    }

    fn name(&self) -> String {
        self.image.name()
    }
}

/// The counts a pool keeps to (the VM-independent part of [`PoolOptions`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Limits {
    pub min: usize,
    pub max: usize,
    pub restore_on_release: bool,
    pub acquire_timeout: Duration,
}

impl Limits {
    fn of(options: &PoolOptions) -> Limits {
        Limits {
            min: options.min,
            max: options.max,
            restore_on_release: options.restore_on_release,
            acquire_timeout: options.acquire_timeout,
        }
    }

    fn check(&self) -> Result<(), Error> {
        if self.max == 0 || self.min > self.max {
            return Err(Error::InvalidArgument(format!(
                "a pool needs 1 ≤ max and min ≤ max (min {}, max {})",
                self.min, self.max
            )));
        }
        Ok(())
    }
}

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
    shared: Arc<Shared<ImageRestore>>,
}

pub(crate) struct Shared<R: Restore> {
    restorer: R,
    limits: Limits,
    state: Mutex<State<R::Member>>,
    /// Signalled whenever a VM goes idle, a restore ends, or the pool closes.
    changed: Notify,
    runtime: tokio::runtime::Handle,
}

struct State<M> {
    idle: VecDeque<M>,
    leased: usize,
    restoring: usize,
    /// Acquires waiting for a VM: each asks for one more restore.
    waiting: usize,
    closed: bool,
    replaced: u64,
    /// Counts failed restores; with the last one's error.
    failures: u64,
    last_failure: Option<Arc<Error>>,
    /// No background restore before this (backing off after failures).
    retry_at: Option<Instant>,
    consecutive_failures: u32,
}

impl<M> Default for State<M> {
    fn default() -> Self {
        State {
            idle: VecDeque::new(),
            leased: 0,
            restoring: 0,
            waiting: 0,
            closed: false,
            replaced: 0,
            failures: 0,
            last_failure: None,
            retry_at: None,
            consecutive_failures: 0,
        }
    }
}

impl<M: Member> State<M> {
    fn total(&self) -> usize {
        self.idle.len() + self.leased + self.restoring
    }

    /// Moves dead idle VMs out (to be dropped outside the lock).
    fn take_dead(&mut self) -> Vec<M> {
        let (alive, dead): (VecDeque<M>, VecDeque<M>) = std::mem::take(&mut self.idle)
            .into_iter()
            .partition(|vm| vm.alive());
        self.idle = alive;
        self.replaced += dead.len() as u64;
        dead.into()
    }
}

/// Back-off before the first retry after a failed restore; doubled per
/// failure in a row, up to [`MAX_BACKOFF`].
const FIRST_BACKOFF: Duration = Duration::from_millis(100);
/// Longest back-off between restore attempts after failures.
const MAX_BACKOFF: Duration = Duration::from_secs(2);

fn backoff(consecutive_failures: u32) -> Duration {
    let doubled = FIRST_BACKOFF.saturating_mul(1 << consecutive_failures.saturating_sub(1).min(8));
    doubled.min(MAX_BACKOFF)
}

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
        let limits = Limits::of(&options);
        let restorer = ImageRestore {
            image: self.clone(),
            config: options.config,
        };
        Ok(Pool {
            shared: Shared::start(restorer, limits)?,
        })
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
        Ok(PooledVm {
            lease: self.shared.acquire().await?,
        })
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
        self.shared.status()
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
        self.shared.wait_ready(timeout).await
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
        self.shared.shutdown().await
    }
}

impl Drop for Pool {
    fn drop(&mut self) {
        discard(self.shared.close());
    }
}

impl<R: Restore> Shared<R> {
    /// A pool restoring with `restorer` on the current tokio runtime.
    pub(crate) fn start(restorer: R, limits: Limits) -> Result<Arc<Shared<R>>, Error> {
        limits.check()?;
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| {
            Error::InvalidArgument("Image::pool must be called inside a tokio runtime".into())
        })?;
        let shared = Arc::new(Shared {
            restorer,
            limits,
            state: Mutex::new(State::default()),
            changed: Notify::new(),
            runtime,
        });
        shared.refill();
        Ok(shared)
    }

    fn lock(&self) -> MutexGuard<'_, State<R::Member>> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub(crate) async fn acquire(self: &Arc<Self>) -> Result<Lease<R>, Error> {
        let started = Instant::now();
        let deadline = started + self.limits.acquire_timeout;
        let mut waiting = None;
        let failures_before = self.lock().failures;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            let dead = {
                let mut st = self.lock();
                if st.closed {
                    return Err(Error::PoolClosed);
                }
                let dead = st.take_dead();
                if let Some(member) = st.idle.pop_front() {
                    st.leased += 1;
                    drop(st);
                    discard(dead);
                    self.refill();
                    return Ok(Lease {
                        member: Some(member),
                        shared: self.clone(),
                    });
                }
                if st.failures != failures_before && st.restoring == 0 {
                    if let Some(why) = st.last_failure.clone() {
                        return Err(Error::PoolRestore(why));
                    }
                }
                dead
            };
            discard(dead);
            if waiting.is_none() {
                waiting = Some(Waiting::new(self));
            }
            self.refill();
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, notified).await.is_err() {
                return Err(Error::PoolTimeout {
                    max: self.limits.max,
                    waited: started.elapsed(),
                });
            }
        }
    }

    pub(crate) fn status(&self) -> PoolStatus {
        let st = self.lock();
        PoolStatus {
            idle: st.idle.len(),
            leased: st.leased,
            restoring: st.restoring,
            replaced: st.replaced,
        }
    }

    pub(crate) async fn wait_ready(&self, timeout: Duration) -> Result<(), Error> {
        let deadline = Instant::now() + timeout;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let st = self.lock();
                if st.closed {
                    return Err(Error::PoolClosed);
                }
                if st.idle.len() >= self.limits.min {
                    return Ok(());
                }
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if tokio::time::timeout(left, notified).await.is_err() {
                let st = self.lock();
                return Err(match &st.last_failure {
                    Some(why) => Error::PoolRestore(why.clone()),
                    None => Error::PoolTimeout {
                        max: self.limits.max,
                        waited: timeout,
                    },
                });
            }
        }
    }

    pub(crate) async fn shutdown(&self) {
        let idle = self.close();
        let _ = tokio::task::spawn_blocking(move || drop(idle)).await;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.lock().restoring == 0 {
                return;
            }
            notified.await;
        }
    }

    /// Closes the pool; returns the idle VMs for the caller to stop.
    fn close(&self) -> VecDeque<R::Member> {
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
        let wanted = self.limits.min + st.waiting;
        while st.idle.len() + st.restoring < wanted && st.total() < self.limits.max {
            st.restoring += 1;
            self.runtime.spawn(restore_one(self.clone()));
        }
    }

    /// Takes back a VM handed out.
    fn give_back(self: &Arc<Self>, member: R::Member, reuse: bool) {
        let to_stop = {
            let mut st = self.lock();
            st.leased = st.leased.saturating_sub(1);
            if reuse && !st.closed && member.alive() {
                st.idle.push_back(member);
                None
            } else {
                Some(member)
            }
        };
        if let Some(member) = to_stop {
            discard(vec![member]);
        }
        self.changed.notify_waiters();
        self.refill();
    }

    /// Replaces idle VMs whose worker ended (a member's watch calls it).
    fn replace_dead(self: &Arc<Self>) {
        let dead = {
            let mut st = self.lock();
            if st.closed {
                return;
            }
            st.take_dead()
        };
        if !dead.is_empty() {
            tracing::info!("pool: replacing {} VM(s) whose worker ended", dead.len());
            discard(dead);
            self.changed.notify_waiters();
            self.refill();
        }
    }

    /// Waits, for as long as the pool exists, for `member`'s worker to end,
    /// and then has the pool replace it if it is idle.
    fn watch_member(self: &Arc<Self>, member: &R::Member) {
        let ended = member.ended();
        let pool = Arc::downgrade(self);
        self.runtime.spawn(async move {
            ended.await;
            if let Some(pool) = Weak::upgrade(&pool) {
                pool.replace_dead();
            }
        });
    }
}

/// One background restore; the VM goes to the idle list.
async fn restore_one<R: Restore>(shared: Arc<Shared<R>>) {
    let restored = shared.restorer.restore().await;
    let leftover = {
        let mut st = shared.lock();
        st.restoring = st.restoring.saturating_sub(1);
        match restored {
            Ok(member) if st.closed => Some(member),
            Ok(member) => {
                st.consecutive_failures = 0;
                shared.watch_member(&member);
                st.idle.push_back(member);
                None
            }
            Err(e) => {
                tracing::warn!("pool: restoring {}: {e}", shared.restorer.name());
                st.failures += 1;
                st.last_failure = Some(Arc::new(e));
                st.consecutive_failures = st.consecutive_failures.saturating_add(1);
                let wait = backoff(st.consecutive_failures);
                st.retry_at = Some(Instant::now() + wait);
                let retry = shared.clone();
                shared.runtime.spawn(async move {
                    tokio::time::sleep(wait).await;
                    retry.refill();
                });
                None
            }
        }
    };
    if let Some(member) = leftover {
        discard(vec![member]);
    }
    shared.changed.notify_waiters();
    shared.refill();
}

/// Counts an acquire as waiting (asking for a restore) while it lives.
struct Waiting<R: Restore>(Arc<Shared<R>>);

impl<R: Restore> Waiting<R> {
    fn new(shared: &Arc<Shared<R>>) -> Waiting<R> {
        shared.lock().waiting += 1;
        Waiting(shared.clone())
    }
}

impl<R: Restore> Drop for Waiting<R> {
    fn drop(&mut self) {
        let mut st = self.0.lock();
        st.waiting = st.waiting.saturating_sub(1);
    }
}

/// Stops VMs off the caller's thread: stopping one waits for its worker.
fn discard<M: Send + 'static, I: IntoIterator<Item = M>>(members: I) {
    let members: Vec<M> = members.into_iter().collect();
    if members.is_empty() {
        return;
    }
    let spawned = std::thread::Builder::new()
        .name("supermachine-pool-stop".into())
        .spawn(move || drop(members));
    if let Err(e) = spawned {
        tracing::warn!("pool: no thread to stop VMs on ({e})");
    }
}

/// A member handed out: goes back to its pool when released or dropped.
pub(crate) struct Lease<R: Restore> {
    member: Option<R::Member>,
    shared: Arc<Shared<R>>,
}

impl<R: Restore> Lease<R> {
    /// Gives the member back: reused, or thrown away and replaced when the
    /// pool restores on release.
    pub(crate) fn release(mut self) {
        if let Some(member) = self.member.take() {
            let reuse = !self.shared.limits.restore_on_release;
            self.shared.give_back(member, reuse);
        }
    }

    #[allow(
        clippy::expect_used,
        reason = "only `release` and `drop` take the member, and both consume the lease"
    )]
    fn member(&self) -> &R::Member {
        self.member
            .as_ref()
            .expect("a lease always holds its member until released")
    }
}

impl<R: Restore> Drop for Lease<R> {
    fn drop(&mut self) {
        if let Some(member) = self.member.take() {
            self.shared.give_back(member, false);
        }
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
    lease: Lease<ImageRestore>,
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
    pub fn release(self) {
        self.lease.release()
    }
}

impl std::ops::Deref for PooledVm {
    type Target = Vm;
    fn deref(&self) -> &Vm {
        self.lease.member()
    }
}

#[cfg(test)]
mod tests {
    //! The pool's logic with fake VMs: a fake's "worker" ends when the test
    //! says so, and the fake restore step fails as often as told.
    use super::*;
    use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
    use tokio::sync::watch;

    struct Fake {
        id: u64,
        /// `true` once the fake's worker has ended.
        ended: watch::Sender<bool>,
        dropped: Arc<AtomicU64>,
    }

    impl Member for Fake {
        fn alive(&self) -> bool {
            !*self.ended.borrow()
        }

        fn ended(&self) -> Pending<()> {
            let mut ended = self.ended.subscribe();
            Box::pin(async move {
                let _ = ended.wait_for(|e| *e).await;
            })
        }
    }

    impl Drop for Fake {
        fn drop(&mut self) {
            self.dropped.fetch_add(1, Ordering::SeqCst);
        }
    }

    #[derive(Default)]
    struct FakeRestore {
        restores: AtomicU64,
        /// The next this many restores fail.
        failing: AtomicU32,
        dropped: Arc<AtomicU64>,
        /// Each restore waits for this to be `true` (a slow restore).
        gate: Option<watch::Receiver<bool>>,
    }

    impl Restore for Arc<FakeRestore> {
        type Member = Fake;

        fn restore(&self) -> Pending<Result<Fake, Error>> {
            let this = self.clone();
            Box::pin(async move {
                if let Some(mut gate) = this.gate.clone() {
                    let _ = gate.wait_for(|open| *open).await;
                }
                let id = this.restores.fetch_add(1, Ordering::SeqCst);
                let fail = this
                    .failing
                    .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                    .is_ok();
                if fail {
                    return Err(Error::NoKvm);
                }
                Ok(Fake {
                    id,
                    ended: watch::channel(false).0,
                    dropped: this.dropped.clone(),
                })
            })
        }

        fn name(&self) -> String {
            "fake".into()
        }
    }

    fn limits(min: usize, max: usize) -> Limits {
        Limits {
            min,
            max,
            restore_on_release: true,
            acquire_timeout: Duration::from_secs(30),
        }
    }

    const READY: Duration = Duration::from_secs(30);

    /// Waits (on the pool's notifications) until `done` holds for its status.
    async fn until(pool: &Shared<Arc<FakeRestore>>, done: impl Fn(PoolStatus) -> bool) {
        tokio::time::timeout(READY, async {
            loop {
                let notified = pool.changed.notified();
                tokio::pin!(notified);
                notified.as_mut().enable();
                if done(pool.status()) {
                    return;
                }
                notified.await;
            }
        })
        .await
        .expect("the pool reached the expected state");
    }

    #[tokio::test]
    async fn keeps_min_idle_and_refills_behind_an_acquire() {
        let fake = Arc::new(FakeRestore::default());
        let pool = Shared::start(fake.clone(), limits(2, 4)).unwrap();
        pool.wait_ready(READY).await.unwrap();
        assert_eq!(pool.status().idle, 2);
        let lease = pool.acquire().await.unwrap();
        until(&pool, |s| s.idle == 2 && s.leased == 1).await;
        assert_eq!(fake.restores.load(Ordering::SeqCst), 3);
        drop(lease);
    }

    #[tokio::test]
    async fn never_more_than_max_and_a_release_frees_a_waiting_acquire() {
        let fake = Arc::new(FakeRestore::default());
        let mut l = limits(0, 2);
        l.restore_on_release = false;
        l.acquire_timeout = Duration::from_millis(200);
        let pool = Shared::start(fake.clone(), l).unwrap();
        let a = pool.acquire().await.unwrap();
        let b = pool.acquire().await.unwrap();
        assert!(matches!(
            pool.acquire().await,
            Err(Error::PoolTimeout { max: 2, .. })
        ));
        assert_eq!(fake.restores.load(Ordering::SeqCst), 2);
        let first = a.member().id;
        let waiter = {
            let pool = pool.clone();
            tokio::spawn(async move {
                // The pool's acquire timeout is short: wait in a loop of them.
                loop {
                    match pool.acquire().await {
                        Ok(lease) => return lease.member().id,
                        Err(Error::PoolTimeout { .. }) => continue,
                        Err(e) => panic!("{e}"),
                    }
                }
            })
        };
        a.release();
        // Reused as it was (restore_on_release is off), not restored again.
        assert_eq!(waiter.await.unwrap(), first);
        assert_eq!(fake.restores.load(Ordering::SeqCst), 2);
        drop(b);
    }

    #[tokio::test]
    async fn a_waiting_acquire_asks_for_a_restore_beyond_min() {
        let fake = Arc::new(FakeRestore::default());
        let pool = Shared::start(fake.clone(), limits(0, 3)).unwrap();
        assert_eq!(pool.status(), PoolStatus::default());
        let lease = pool.acquire().await.unwrap();
        assert_eq!(fake.restores.load(Ordering::SeqCst), 1);
        assert_eq!(pool.status().leased, 1);
        drop(lease);
    }

    #[tokio::test]
    async fn a_failed_restore_is_a_typed_error_and_is_retried_after_a_back_off() {
        let fake = Arc::new(FakeRestore::default());
        fake.failing.store(2, Ordering::SeqCst);
        let pool = Shared::start(fake.clone(), limits(1, 1)).unwrap();
        match pool.acquire().await {
            Err(Error::PoolRestore(why)) => assert!(matches!(*why, Error::NoKvm), "{why}"),
            Err(e) => panic!("expected PoolRestore, got {e}"),
            Ok(_) => panic!("the first restore was told to fail"),
        }
        // The pool keeps trying (after its back-off) until one succeeds.
        let lease = pool.acquire().await;
        let lease = match lease {
            Ok(lease) => lease,
            // The second failure may be what this acquire saw.
            Err(Error::PoolRestore(_)) => pool.acquire().await.unwrap(),
            Err(e) => panic!("{e}"),
        };
        assert_eq!(fake.restores.load(Ordering::SeqCst), 3);
        drop(lease);
    }

    #[test]
    fn back_off_doubles_up_to_its_cap() {
        assert_eq!(backoff(1), FIRST_BACKOFF);
        assert_eq!(backoff(2), FIRST_BACKOFF * 2);
        assert_eq!(backoff(3), FIRST_BACKOFF * 4);
        assert_eq!(backoff(30), MAX_BACKOFF);
    }

    #[tokio::test]
    async fn an_idle_vm_whose_worker_ends_is_replaced_at_once() {
        let fake = Arc::new(FakeRestore::default());
        let pool = Shared::start(fake.clone(), limits(1, 2)).unwrap();
        pool.wait_ready(READY).await.unwrap();
        let ended = {
            let st = pool.lock();
            st.idle[0].ended.clone()
        };
        ended.send_replace(true);
        until(&pool, |s| s.replaced == 1 && s.idle == 1).await;
        assert_eq!(fake.restores.load(Ordering::SeqCst), 2);
        let lease = pool.acquire().await.unwrap();
        assert!(lease.member().alive());
    }

    #[tokio::test]
    async fn restore_on_release_throws_the_vm_away() {
        let fake = Arc::new(FakeRestore::default());
        let pool = Shared::start(fake.clone(), limits(1, 1)).unwrap();
        let lease = pool.acquire().await.unwrap();
        let first = lease.member().id;
        lease.release();
        let next = pool.acquire().await.unwrap();
        assert_ne!(next.member().id, first);
        // Stopped on a thread of its own: wait for the drop to be counted.
        tokio::time::timeout(READY, async {
            while fake.dropped.load(Ordering::SeqCst) == 0 {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the released VM was stopped");
    }

    #[tokio::test]
    async fn after_shutdown_acquires_fail_and_restores_in_flight_are_stopped() {
        let (open, gate) = watch::channel(false);
        let fake = Arc::new(FakeRestore {
            gate: Some(gate),
            ..FakeRestore::default()
        });
        let pool = Shared::start(fake.clone(), limits(1, 1)).unwrap();
        assert_eq!(pool.status().restoring, 1);
        let shutdown = {
            let pool = pool.clone();
            tokio::spawn(async move { pool.shutdown().await })
        };
        until(&pool, |_| pool.lock().closed).await;
        open.send_replace(true);
        shutdown.await.unwrap();
        assert_eq!(pool.status(), PoolStatus::default());
        assert!(matches!(pool.acquire().await, Err(Error::PoolClosed)));
        assert!(matches!(
            pool.wait_ready(READY).await,
            Err(Error::PoolClosed)
        ));
    }

    #[test]
    fn limits_are_checked() {
        assert!(limits(0, 0).check().is_err());
        assert!(limits(3, 2).check().is_err());
        assert!(limits(2, 2).check().is_ok());
    }
}
