//! Driving VMs through the Rust library (`supermachine::Vm`) from tests.

use libtest_mimic::Failed;
use sha2::{Digest, Sha256};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use supermachine::{Image, Vm, VmConfig};

/// The longest one library test may go without progress before it counts
/// as stalled. Tests that move data report progress as they go (see
/// [`with_vm_watched`]), so on a busy host a slow but moving test is never
/// cut short; the others must finish within it.
const STALL_LIMIT: Duration = Duration::from_secs(600);

/// Boots a VM with `config`, runs `body` against it, and stops it cleanly.
pub fn with_vm<F, Fut>(config: VmConfig, body: F) -> Result<(), Failed>
where
    F: FnOnce(Arc<Vm>) -> Fut,
    Fut: Future<Output = Result<(), Failed>>,
{
    with_vm_watched(config, |vm, _progress| body(vm))
}

/// A count of bytes a long test has moved, bumped as it goes.
#[derive(Clone, Default)]
pub struct Progress(Arc<AtomicU64>);

impl Progress {
    pub fn add(&self, n: u64) {
        self.0.fetch_add(n, Ordering::Relaxed);
    }

    fn get(&self) -> u64 {
        self.0.load(Ordering::Relaxed)
    }
}

/// [`with_vm`] for a test that reports its progress: it fails only when
/// [`STALL_LIMIT`] passes without any, however long it takes in all.
pub fn with_vm_watched<F, Fut>(config: VmConfig, body: F) -> Result<(), Failed>
where
    F: FnOnce(Arc<Vm>, Progress) -> Fut,
    Fut: Future<Output = Result<(), Failed>>,
{
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    rt.block_on(async {
        let vm = Arc::new(Vm::start(&Image::builtin(), &config).await?);
        let progress = Progress::default();
        let result = tokio::select! {
            r = body(vm.clone(), progress.clone()) => r,
            stalled = stall(&progress) => Err(stalled.into()),
        };
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

/// Returns once `progress` has stood still for [`STALL_LIMIT`], saying so.
async fn stall(progress: &Progress) -> String {
    let mut seen = progress.get();
    let mut since = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(Duration::from_secs(5)).await;
        let now = progress.get();
        if now != seen {
            (seen, since) = (now, tokio::time::Instant::now());
        } else if since.elapsed() >= STALL_LIMIT {
            return format!("no progress for {STALL_LIMIT:?} (after {seen} bytes)");
        }
    }
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
