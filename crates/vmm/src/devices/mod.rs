//! Devices the guest sees.

pub mod legacy;
pub mod serial;
pub mod virtio;
