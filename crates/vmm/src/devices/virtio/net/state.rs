//! virtio-net keeps its MAC address in a snapshot: the guest's driver read
//! it at boot. Nothing of the link is kept: a restored copy gets a network
//! stack of its own, and the guest's old connections are gone, as after a
//! suspend on another network.

use super::Net;
use crate::devices::virtio::persist::Persist;
use serde::{Deserialize, Serialize};

/// The saved state of a virtio-net device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NetState {
    /// The MAC address the guest was given.
    pub mac: [u8; 6],
}

impl Persist for Net {
    type State = NetState;
    type Error = std::convert::Infallible;

    fn save(&self) -> NetState {
        NetState { mac: self.mac }
    }

    /// Takes the saved MAC: the guest knows itself by it.
    fn restore(&mut self, state: &NetState) -> Result<(), Self::Error> {
        self.mac = state.mac;
        Ok(())
    }
}
