//! virtio-rng keeps nothing in a snapshot but the fact that it was there:
//! it has no configuration and nothing in flight outside its queue.

use super::Rng;
use crate::devices::virtio::persist::Persist;
use serde::{Deserialize, Serialize};

/// Stored as nothing at all (postcard writes no bytes for a unit struct).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct RngState;

impl Persist for Rng {
    type State = RngState;
    type Error = std::convert::Infallible;

    fn save(&self) -> RngState {
        RngState
    }

    fn restore(&mut self, _state: &RngState) -> Result<(), Self::Error> {
        Ok(())
    }
}
