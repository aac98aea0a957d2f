//! The virtio-vsock packet header (virtio 1.2 §5.10.6) and its constants.
//! Written out here: virtio-bindings has no virtio_vsock module (the
//! Linux UAPI header is `linux/virtio_vsock.h`, which it does not bind).

use vm_memory::ByteValued;

pub const HOST_CID: u64 = 2;
pub const TYPE_STREAM: u16 = 1;

pub const OP_REQUEST: u16 = 1;
pub const OP_RESPONSE: u16 = 2;
pub const OP_RST: u16 = 3;
pub const OP_SHUTDOWN: u16 = 4;
pub const OP_RW: u16 = 5;
pub const OP_CREDIT_UPDATE: u16 = 6;
pub const OP_CREDIT_REQUEST: u16 = 7;

/// SHUTDOWN flags: the sender will receive no more / send no more.
pub const SHUTDOWN_RCV: u32 = 1;
pub const SHUTDOWN_SEND: u32 = 2;

#[repr(C, packed)]
#[derive(Clone, Copy, Default, Debug)]
pub struct Header {
    pub src_cid: u64,
    pub dst_cid: u64,
    pub src_port: u32,
    pub dst_port: u32,
    pub len: u32,
    pub type_: u16,
    pub op: u16,
    pub flags: u32,
    pub buf_alloc: u32,
    pub fwd_cnt: u32,
}
// SAFETY: packed plain integers; every bit pattern is a valid value.
unsafe impl ByteValued for Header {}

pub const HEADER_LEN: usize = std::mem::size_of::<Header>();

impl Header {
    /// A host → guest packet on the connection (host `local_port`, guest `peer_port`).
    pub fn to_guest(guest_cid: u64, local_port: u32, peer_port: u32, op: u16) -> Header {
        Header {
            src_cid: HOST_CID,
            dst_cid: guest_cid,
            src_port: local_port,
            dst_port: peer_port,
            type_: TYPE_STREAM,
            op,
            ..Default::default()
        }
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn header_is_44_bytes() {
        assert_eq!(super::HEADER_LEN, 44);
    }
}
