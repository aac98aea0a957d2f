//! Taking requests off a virtqueue, for every device: the drain-then-notify
//! loop, and what happens when the driver breaks the queue's rules.
//!
//! A driver that breaks them (an available index more entries ahead than
//! the queue holds, a chain head outside the descriptor table, rings that
//! stop being readable) is broken or hostile. The device then does what
//! virtio 1.2 §2.1.2 provides for: it sets DEVICE_NEEDS_RESET, tells the
//! driver with a configuration-change interrupt, logs the reason once, and
//! serves none of its queues until the driver resets it ([`report_broken`],
//! [`Interrupt::mark_broken`]). It never retries: a retry would find the
//! same ring and spin a host core on it, holding the device's lock.

use super::persist::QueueState;
use super::{Activation, Interrupt};
use std::sync::Arc;
use virtio_queue::{DescriptorChain, Queue, QueueOwnedT, QueueT};
use vm_memory::GuestMemoryMmap;

/// How the driver broke a queue.
#[derive(Debug, thiserror::Error)]
pub enum QueueError {
    /// Includes the available index running more than the queue's size
    /// ahead of the device, and rings outside guest memory.
    #[error("{0}")]
    Ring(virtio_queue::Error),
    #[error("descriptor chain head {head} is outside the descriptor table of {size} entries")]
    HeadOutOfRange { head: u16, size: u16 },
    /// The available index says there is more, twice in a row, and yet no
    /// entry can be taken.
    #[error("the available ring says it holds more, but gives nothing")]
    Stuck,
}

/// Takes the next available chain off `queue`, or `None` when there is
/// none. Errors are the driver's (see [`QueueError`]).
pub fn pop<'m>(
    queue: &mut Queue,
    mem: &'m GuestMemoryMmap,
) -> Result<Option<DescriptorChain<&'m GuestMemoryMmap>>, QueueError> {
    // A queue the driver never made ready has nothing for us (and its
    // addresses may be anything).
    if !queue.ready() {
        return Ok(None);
    }
    let size = queue.size();
    // Not `pop_descriptor_chain`: it hides why it found nothing (and logs
    // it each time), and "nothing" must not be mistaken for a broken ring.
    let chain = queue.iter(mem).map_err(QueueError::Ring)?.next();
    match chain {
        Some(chain) if chain.head_index() >= size => Err(QueueError::HeadOutOfRange {
            head: chain.head_index(),
            size,
        }),
        chain => Ok(chain),
    }
}

/// Marks the device broken, and logs why the first time only.
pub fn report_broken(interrupt: &Interrupt, device: &str, queue: usize, error: &QueueError) {
    if interrupt.mark_broken() {
        tracing::error!(
            "virtio-{device}: the guest driver broke queue {queue} ({error}); \
             the device stops serving until the guest resets it"
        );
    }
}

/// What a device with a single queue holds once the driver activated it.
pub struct SingleQueue {
    pub mem: GuestMemoryMmap,
    pub queue: Queue,
    pub interrupt: Arc<Interrupt>,
    device: &'static str,
}

impl SingleQueue {
    pub fn activate(a: Activation, device: &'static str) -> std::io::Result<Self> {
        let queue = a
            .queues
            .into_iter()
            .next()
            .ok_or_else(|| std::io::Error::other(format!("{device} needs one queue")))?;
        Ok(SingleQueue {
            mem: a.mem,
            queue,
            interrupt: a.interrupt,
            device,
        })
    }

    /// [`drain`] over this queue, unless the device is broken; breaks it
    /// if the driver broke the queue.
    pub fn drain<F>(&mut self, mut handle: F)
    where
        F: FnMut(&GuestMemoryMmap, DescriptorChain<&GuestMemoryMmap>) -> u32,
    {
        if self.interrupt.is_broken() {
            return;
        }
        let mem = &self.mem;
        let drained = drain(
            &mut self.queue,
            mem,
            &self.interrupt,
            || true,
            |chain| handle(mem, chain),
        );
        if let Err(e) = drained {
            report_broken(&self.interrupt, self.device, 0, &e);
        }
    }

    pub fn state(active: &Option<SingleQueue>) -> Vec<QueueState> {
        active.iter().map(|a| QueueState::from(&a.queue)).collect()
    }
}

/// Pops available chains while `more()` says so, hands each to `handle`
/// (which returns the number of bytes written into the chain), publishes
/// it as used, and interrupts the guest once if it asked to be told.
/// Re-checks after re-enabling notifications so a kick racing with the
/// drain is never lost. Chains used before an error are still published.
pub fn drain<F>(
    queue: &mut Queue,
    mem: &GuestMemoryMmap,
    interrupt: &Interrupt,
    mut more: impl FnMut() -> bool,
    mut handle: F,
) -> Result<(), QueueError>
where
    F: FnMut(DescriptorChain<&GuestMemoryMmap>) -> u32,
{
    if !queue.ready() {
        return Ok(());
    }
    let mut used_any = false;
    let mut rounds = || -> Result<(), QueueError> {
        // A round that finds nothing although the last look said there was
        // more: once is a race with the driver, twice a broken ring.
        let mut empty_rounds = 0;
        loop {
            queue.disable_notification(mem).map_err(QueueError::Ring)?;
            let mut popped = false;
            let mut stopped = false;
            loop {
                if !more() {
                    stopped = true;
                    break;
                }
                let Some(chain) = pop(queue, mem)? else { break };
                popped = true;
                let head = chain.head_index();
                let len = handle(chain);
                queue.add_used(mem, head, len).map_err(QueueError::Ring)?;
                used_any = true;
            }
            let pending = queue.enable_notification(mem).map_err(QueueError::Ring)?;
            // Stopped by `more`: the caller comes back when it can take more.
            if stopped || !pending {
                return Ok(());
            }
            empty_rounds = if popped { 0 } else { empty_rounds + 1 };
            if empty_rounds >= 2 {
                return Err(QueueError::Stuck);
            }
        }
    };
    let result = rounds();
    if used_any && queue.needs_notification(mem).unwrap_or(true) {
        interrupt.signal_used_queue();
    }
    result
}
