//! Pausing a running machine: every vCPU thread leaves KVM_RUN and parks
//! until the VMM resumes it, and while parked answers requests to save its
//! own vCPU state (KVM vCPU ioctls belong on the vCPU's thread).
//!
//! A vCPU blocked in KVM_RUN (an idle guest halts in the kernel's LAPIC
//! emulation and never exits to us) is kicked out with a no-op real-time
//! signal, which makes KVM_RUN return EINTR. A kick can land just before the
//! thread enters KVM_RUN and be missed, so the pauser repeats it every
//! millisecond until every vCPU has parked.

use crate::snapshot::{save_vcpu, VcpuState};
use kvm_ioctls::VcpuFd;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, Once};
use std::time::{Duration, Instant};

/// How long a pause may take before we call the machine unresponsive.
const PAUSE_TIMEOUT: Duration = Duration::from_secs(5);
const KICK_INTERVAL: Duration = Duration::from_millis(1);

/// A pause or a save on a paused machine did not complete.
#[derive(Debug, thiserror::Error)]
pub enum PauseError {
    /// Not every vCPU parked (or answered a save request) within five
    /// seconds; a failed pause resumes the ones that did.
    #[error("{parked} of {total} vCPUs paused within {} s (did the VM just end?)", PAUSE_TIMEOUT.as_secs())]
    Timeout {
        /// vCPUs that parked (or answered) in time.
        parked: usize,
        /// vCPUs the machine has.
        total: usize,
    },
    /// A parked vCPU failed to read its own state.
    #[error("saving vCPU {id}: {message}")]
    Save {
        /// The vCPU's index.
        id: u8,
        /// What failed, as text (the error came from the vCPU's thread).
        message: String,
    },
}

/// A parked vCPU, lent to the gate while its thread waits.
pub struct ParkedVcpu<'a> {
    /// The vCPU's index (its KVM vCPU id).
    pub id: u8,
    /// The vCPU, to read its state on its own thread.
    pub fd: &'a VcpuFd,
}

#[derive(Default)]
struct GateState {
    threads: Vec<libc::pthread_t>,
    parked: usize,
    /// Bumped for every save request; each vCPU answers each round once.
    save_round: u64,
    saved: BTreeMap<u8, Result<VcpuState, String>>,
}

struct Inner {
    requested: AtomicBool,
    state: Mutex<GateState>,
    changed: Condvar,
}

/// Shared by the vCPU threads and the thread that pauses them.
#[derive(Clone)]
pub struct PauseGate(Arc<Inner>);

impl Default for PauseGate {
    fn default() -> Self {
        install_kick_handler();
        PauseGate(Arc::new(Inner {
            requested: AtomicBool::new(false),
            state: Mutex::new(GateState::default()),
            changed: Condvar::new(),
        }))
    }
}

impl PauseGate {
    fn lock(&self) -> MutexGuard<'_, GateState> {
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Called by each vCPU thread before it first enters the guest, so the
    /// pauser knows whom to kick.
    pub fn register_current_thread(&self) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        self.lock().threads.push(me);
    }

    /// Called by a vCPU thread as it ends: a signal to a thread that has
    /// exited is undefined behaviour, so it must never be kicked again.
    pub fn unregister_current_thread(&self) {
        // SAFETY: pthread_self has no preconditions.
        let me = unsafe { libc::pthread_self() };
        // SAFETY: pthread_equal compares two ids and has no preconditions.
        self.lock()
            .threads
            .retain(|&t| unsafe { libc::pthread_equal(t, me) } == 0);
    }

    /// Whether the vCPU loop should park before its next KVM_RUN.
    pub fn pause_requested(&self) -> bool {
        self.0.requested.load(Ordering::SeqCst)
    }

    /// The vCPU thread's side: wait here until resumed, saving state on request.
    pub fn park(&self, vcpu: ParkedVcpu<'_>) {
        let mut st = self.lock();
        st.parked += 1;
        self.0.changed.notify_all();
        let mut answered = st.save_round;
        while self.pause_requested() {
            if st.save_round != answered {
                answered = st.save_round;
                let saved = save_vcpu(vcpu.fd).map_err(|e| e.to_string());
                st.saved.insert(vcpu.id, saved);
                self.0.changed.notify_all();
            }
            st = self.0.changed.wait(st).unwrap_or_else(|e| e.into_inner());
        }
        st.parked -= 1;
    }

    /// Stops all `total` vCPUs; returns once every one is parked.
    pub fn pause(&self, total: usize) -> Result<(), PauseError> {
        self.0.requested.store(true, Ordering::SeqCst);
        let deadline = Instant::now() + PAUSE_TIMEOUT;
        let mut st = self.lock();
        while st.parked < total {
            if Instant::now() >= deadline {
                let parked = st.parked;
                drop(st);
                self.resume();
                return Err(PauseError::Timeout { parked, total });
            }
            for &thread in &st.threads {
                // SAFETY: only live vCPU threads are registered: each removes
                // itself, under this lock, before it ends.
                unsafe { libc::pthread_kill(thread, kick_signal()) };
            }
            st = self
                .0
                .changed
                .wait_timeout(st, KICK_INTERVAL)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        Ok(())
    }

    /// Every parked vCPU's state, in id order. Only while paused.
    pub fn save_all(&self, total: usize) -> Result<Vec<VcpuState>, PauseError> {
        let deadline = Instant::now() + PAUSE_TIMEOUT;
        let mut st = self.lock();
        st.save_round += 1;
        st.saved.clear();
        self.0.changed.notify_all();
        while st.saved.len() < total {
            let now = Instant::now();
            if now >= deadline {
                return Err(PauseError::Timeout {
                    parked: st.saved.len(),
                    total,
                });
            }
            st = self
                .0
                .changed
                .wait_timeout(st, deadline - now)
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
        std::mem::take(&mut st.saved)
            .into_iter()
            .map(|(id, r)| r.map_err(|message| PauseError::Save { id, message }))
            .collect()
    }

    /// Lets every vCPU run again.
    pub fn resume(&self) {
        let _st = self.lock();
        self.0.requested.store(false, Ordering::SeqCst);
        self.0.changed.notify_all();
    }
}

fn kick_signal() -> libc::c_int {
    libc::SIGRTMIN() + 1
}

extern "C" fn on_kick(_: libc::c_int) {}

/// A handler that does nothing: its only effect is that KVM_RUN returns
/// EINTR. Without a handler the signal's default action would kill us.
fn install_kick_handler() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // SAFETY: sigaction is plain data; all-zero is a valid value
        // (SIG_DFL, no flags, empty mask).
        let mut action: libc::sigaction = unsafe { std::mem::zeroed() };
        action.sa_sigaction = on_kick as *const () as usize;
        // SAFETY: `sa_mask` is a live sigset_t this call only writes.
        unsafe { libc::sigemptyset(&mut action.sa_mask) };
        // SAFETY: a valid handler and an empty mask; no SA_RESTART, so the
        // interrupted KVM_RUN returns EINTR. The old action is not asked for
        // (null).
        unsafe { libc::sigaction(kick_signal(), &action, std::ptr::null_mut()) };
    });
}
