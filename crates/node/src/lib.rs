//! The native half of the npm package `@supermachine/core`: the
//! supermachine host library as napi-rs classes.
//!
//! The package's JavaScript (`node/lib/`) is the public API: it checks
//! every option, turns [`error::Failure`]s into `Error`s with codes, and
//! wraps child processes in Node streams. What is here is deliberately
//! thin and strict:
//!
//! * One tokio runtime, owned by this addon, runs every operation; each
//!   method checks its arguments on the JavaScript thread and returns a
//!   Promise at once, so nothing blocks Node's event loop.
//! * Every JavaScript object holds an `Arc` of what it stands for. A VM
//!   handle that was released, or a `WarmupVm` whose warmup ended, answers
//!   with an error (`SUPERMACHINE_VM_RELEASED`, `SUPERMACHINE_WARMUP_OVER`)
//!   instead of reaching a VM that is gone.
//!
//! Modules: [`error`] (failures and their codes), [`ops`] (the operations
//! every VM handle offers), [`vm`] (pooled VM handles and their release),
//! [`child`] (spawned processes), [`forward`] (published ports), [`warmup`] (the VM a JavaScript warmup
//! callback gets), [`image`] (images, builds, pools).

mod child;
mod error;
mod forward;
mod image;
mod ops;
mod vm;
mod warmup;

use napi_derive::napi;

/// Threads of the addon's runtime: every operation mostly waits on vsock
/// sockets, so two are plenty, and they stay few on a busy Node host.
const RUNTIME_THREADS: usize = 2;

#[napi_derive::module_init]
fn init() {
    let built = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(RUNTIME_THREADS)
        .thread_name("supermachine-node")
        .enable_all()
        .build();
    // Without a runtime of our own napi falls back to its default one,
    // which works the same with more threads.
    if let Ok(runtime) = built {
        napi::bindgen_prelude::create_custom_tokio_runtime(runtime);
    }
}

/// Points the library at the worker, agent and kernel that ship in the
/// package's `native/` directory (environment variables still win).
#[napi]
pub fn set_bundle_dir(dir: String) -> napi::Result<()> {
    supermachine::assets::set_bundle_dir(dir).map_err(error::napi_err)
}

/// The marker that starts the message of an error carrying a failure as
/// JSON (see `error.rs`); the JavaScript side reads it from here so the
/// two never disagree.
#[napi]
pub fn failure_marker() -> &'static str {
    error::MARKER
}
