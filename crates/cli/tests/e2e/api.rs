//! Driving VMs through the Rust library (`supermachine::Vm`) from tests.

use libtest_mimic::Failed;
use sha2::{Digest, Sha256};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use supermachine::{Image, Vm, VmConfig};

/// The longest one library test may take in the lab before it counts as
/// stalled (the suite's slowest, the 1 GiB round trip, takes a fraction).
const TEST_LIMIT: Duration = Duration::from_secs(600);

/// Boots a VM with `config`, runs `body` against it, and stops it cleanly.
pub fn with_vm<F, Fut>(config: VmConfig, body: F) -> Result<(), Failed>
where
    F: FnOnce(Arc<Vm>) -> Fut,
    Fut: Future<Output = Result<(), Failed>>,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let vm = Arc::new(Vm::start(&Image::builtin(), &config).await?);
        let result = tokio::time::timeout(TEST_LIMIT, body(vm.clone()))
            .await
            .map_err(|_| format!("no result within {TEST_LIMIT:?}"))?;
        // Tasks a test spawned may still hold the VM for a moment.
        let mut vm = vm;
        let vm = loop {
            match Arc::try_unwrap(vm) {
                Ok(vm) => break vm,
                Err(shared) => {
                    vm = shared;
                    tokio::time::sleep(Duration::from_millis(20)).await;
                }
            }
        };
        result?;
        vm.stop().await?;
        Ok(())
    })
}

/// Deterministic pseudo-random bytes (NULs and every other value
/// included), generated a chunk at a time so gigabytes need no memory.
pub struct Noise(u64);

impl Noise {
    pub fn new(seed: u64) -> Noise {
        Noise(seed | 1)
    }

    pub fn fill(&mut self, buf: &mut [u8]) {
        for chunk in buf.chunks_mut(8) {
            self.0 ^= self.0 << 13;
            self.0 ^= self.0 >> 7;
            self.0 ^= self.0 << 17;
            let bytes = self.0.to_le_bytes();
            chunk.copy_from_slice(&bytes[..chunk.len()]);
        }
    }
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(Sha256::digest(data))
}

/// Fails with `what` and the output when `cond` is false.
pub fn ensure(cond: bool, what: impl std::fmt::Display) -> Result<(), Failed> {
    if cond {
        Ok(())
    } else {
        Err(what.to_string().into())
    }
}
