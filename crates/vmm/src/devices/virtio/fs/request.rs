//! One FUSE request: a descriptor chain (the request in its readable
//! buffers, room for the reply in its writable ones) decoded and answered
//! by fuse-backend-rs's server over our [`SharedDir`].
//!
//! The chain is the guest's: buffers outside guest memory, a chain with no
//! room for a reply, a header whose length lies, an opcode nobody knows.
//! Each is answered with an error, or consumed with nothing written when
//! not even an error fits; none stops the device or the worker.

use super::SharedDir;
use crate::limited;
use fuse_backend_rs::abi::fuse_abi::{InHeader, Opcode, OutHeader};
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{Reader, VirtioFsWriter, Writer};
use std::sync::Arc;
use virtio_queue::DescriptorChain;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

/// Serves the request in `chain`; the bytes written into it (the used
/// length). On the hiprio queue only the requests that belong there are
/// served: anything else is consumed unanswered, as no reply is read there.
pub(super) fn serve(
    server: &Server<Arc<SharedDir>>,
    mem: &GuestMemoryMmap,
    chain: DescriptorChain<&GuestMemoryMmap>,
    hiprio: bool,
) -> u32 {
    let reader = match Reader::from_descriptor_chain(mem, chain.clone()) {
        Ok(reader) => reader,
        Err(e) => {
            limited!(warn, "virtio-fs: unreadable request chain: {e}");
            return 0;
        }
    };
    if hiprio && !belongs_on_hiprio(&reader) {
        limited!(
            warn,
            "virtio-fs: a request that needs a reply came on the hiprio queue"
        );
        return 0;
    }
    let reply_header = clear_reply_header(mem, &chain);
    let writer = match VirtioFsWriter::new(mem, chain) {
        Ok(writer) => writer,
        Err(e) => {
            limited!(warn, "virtio-fs: unwritable reply buffers: {e}");
            return 0;
        }
    };
    match server.handle_message(reader, Writer::from(writer), None, None) {
        Ok(written) => u32::try_from(written).unwrap_or(0),
        // FORGET and friends answer nothing by design. A request the
        // server refused may still have been answered with an error (a
        // name without its NUL, say) before it returned the refusal: the
        // reply header it wrote says how long that answer is.
        Err(e) => {
            limited!(debug, "virtio-fs: request refused: {e}");
            reply_header
                .and_then(|(at, room)| Some(mem.read_obj::<OutHeader>(at).ok()?.len.min(room)))
                .unwrap_or(0)
        }
    }
}

/// Zeroes where the reply's header goes (the start of the first writable
/// buffer, when the whole header fits there) and returns its address and
/// the chain's room for a reply, so that after a refused request a
/// non-zero length there can only be an answer the server wrote.
fn clear_reply_header(
    mem: &GuestMemoryMmap,
    chain: &DescriptorChain<&GuestMemoryMmap>,
) -> Option<(GuestAddress, u32)> {
    let header_len = std::mem::size_of::<OutHeader>();
    let first = chain.clone().writable().next()?;
    if (first.len() as usize) < header_len {
        return None;
    }
    mem.write_obj(OutHeader::default(), first.addr()).ok()?;
    let room = chain
        .clone()
        .writable()
        .fold(0u32, |room, d| room.saturating_add(d.len()));
    Some((first.addr(), room))
}

/// Whether the request at the start of `reader` is one the hiprio queue
/// carries (read from a copy: the server reads the header again).
fn belongs_on_hiprio(reader: &Reader<'_, ()>) -> bool {
    let Ok(header) = reader.clone().read_obj::<InHeader>() else {
        return false;
    };
    [Opcode::Forget, Opcode::BatchForget, Opcode::Interrupt]
        .iter()
        .any(|op| header.opcode == *op as u32)
}
