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
use fuse_backend_rs::abi::fuse_abi::{InHeader, Opcode};
use fuse_backend_rs::api::server::Server;
use fuse_backend_rs::transport::{Reader, VirtioFsWriter, Writer};
use std::sync::Arc;
use virtio_queue::DescriptorChain;
use vm_memory::GuestMemoryMmap;

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
    let writer = match VirtioFsWriter::new(mem, chain) {
        Ok(writer) => writer,
        Err(e) => {
            limited!(warn, "virtio-fs: unwritable reply buffers: {e}");
            return 0;
        }
    };
    match server.handle_message(reader, Writer::from(writer), None, None) {
        Ok(written) => u32::try_from(written).unwrap_or(0),
        // FORGET and friends answer nothing by design; anything else that
        // ends here could not even be answered with an error (no room).
        Err(e) => {
            limited!(debug, "virtio-fs: request not answered: {e}");
            0
        }
    }
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
