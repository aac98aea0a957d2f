//! The drain-then-notify loop every device's queue handler shares.

use super::persist::QueueState;
use super::{Activation, Interrupt};
use std::sync::Arc;
use virtio_queue::{DescriptorChain, Queue, QueueT};
use vm_memory::GuestMemoryMmap;

/// What a device with a single queue holds once the driver activated it.
pub struct SingleQueue {
    pub mem: GuestMemoryMmap,
    pub queue: Queue,
    pub interrupt: Arc<Interrupt>,
}

impl SingleQueue {
    pub fn activate(a: Activation, device: &str) -> std::io::Result<Self> {
        let queue = a
            .queues
            .into_iter()
            .next()
            .ok_or_else(|| std::io::Error::other(format!("{device} needs one queue")))?;
        Ok(SingleQueue {
            mem: a.mem,
            queue,
            interrupt: a.interrupt,
        })
    }

    /// [`drain`] over this queue.
    pub fn drain<F>(&mut self, mut handle: F)
    where
        F: FnMut(&GuestMemoryMmap, DescriptorChain<&GuestMemoryMmap>) -> u32,
    {
        let mem = &self.mem;
        drain(&mut self.queue, mem, &self.interrupt, |chain| {
            handle(mem, chain)
        });
    }

    pub fn state(active: &Option<SingleQueue>) -> Vec<QueueState> {
        active.iter().map(|a| QueueState::from(&a.queue)).collect()
    }
}

/// Pops every available chain, hands it to `handle` (which returns the number
/// of bytes written into the chain), publishes it as used, and interrupts the
/// guest once if it asked to be told. Re-checks after re-enabling
/// notifications so a kick racing with the drain is never lost.
pub fn drain<F>(queue: &mut Queue, mem: &GuestMemoryMmap, interrupt: &Interrupt, mut handle: F)
where
    F: FnMut(DescriptorChain<&GuestMemoryMmap>) -> u32,
{
    let mut used_any = false;
    loop {
        if let Err(e) = queue.disable_notification(mem) {
            tracing::warn!("virtqueue: {e:?}");
            return;
        }
        while let Some(chain) = queue.pop_descriptor_chain(mem) {
            let head = chain.head_index();
            let len = handle(chain);
            if let Err(e) = queue.add_used(mem, head, len) {
                tracing::warn!("virtqueue add_used: {e:?}");
            }
            used_any = true;
        }
        match queue.enable_notification(mem) {
            Ok(true) => continue,
            Ok(false) => break,
            Err(e) => {
                tracing::warn!("virtqueue: {e:?}");
                break;
            }
        }
    }
    if used_any && queue.needs_notification(mem).unwrap_or(true) {
        interrupt.signal_used_queue();
    }
}
