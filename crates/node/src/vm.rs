//! A VM handed out by a pool, as JavaScript holds it, and its release.
//!
//! The VM sits in a [`Slot`] behind an async read-write lock: operations
//! share it (each holds a read guard while it runs, so many run at once),
//! and `release()` takes it out under the write guard. Before taking it,
//! release raises the slot's `released` flag, which every running
//! operation and spawned child watches: they stop at once (dropping their
//! connection, so the guest kills what they ran), the read guards go, and
//! the VM goes back to its pool with nothing of this handle's still
//! running in it. Every later call answers `SUPERMACHINE_VM_RELEASED`.

use crate::child::{ChildShared, NativeExecChild};
use crate::error::Failure;
use crate::forward::{ExposeArgs, ForwarderShared, NativeTcpForwarder};
use crate::image::NativeImage;
use crate::ops::{self, ExecArgs, ExecOutput, WriteArgs};
use futures_util::future::BoxFuture;
use napi::bindgen_prelude::{Buffer, BufferSlice, PromiseRaw};
use napi::Env;
use napi_derive::napi;
use std::sync::{Arc, Mutex, Weak};
use supermachine::{PooledVm, Vm};
use tokio::sync::{watch, RwLock};

/// A pooled VM and what is needed to take it back.
pub(crate) struct Slot {
    vm: RwLock<Option<PooledVm>>,
    released: watch::Sender<bool>,
    /// Processes spawned through this handle, ended by its release.
    children: Mutex<Vec<Weak<ChildShared>>>,
    /// Ports published through this handle, closed by its release.
    forwarders: Mutex<Vec<Arc<ForwarderShared>>>,
}

impl Slot {
    pub(crate) fn new(vm: PooledVm) -> Arc<Slot> {
        Arc::new(Slot {
            vm: RwLock::new(Some(vm)),
            released: watch::Sender::new(false),
            children: Mutex::new(Vec::new()),
            forwarders: Mutex::new(Vec::new()),
        })
    }

    pub(crate) fn is_released(&self) -> bool {
        *self.released.borrow()
    }

    /// Resolves once the slot is released.
    pub(crate) fn released(&self) -> impl std::future::Future<Output = ()> + Send + 'static {
        let mut rx = self.released.subscribe();
        async move {
            let _ = rx.wait_for(|r| *r).await;
        }
    }

    /// Runs `op` against the VM unless (or until) the slot is released.
    pub(crate) async fn run<T>(
        &self,
        op: impl for<'a> FnOnce(&'a Vm) -> BoxFuture<'a, Result<T, Failure>>,
    ) -> Result<T, Failure> {
        let released = self.released();
        if self.is_released() {
            return Err(Failure::released());
        }
        let guard = self.vm.read().await;
        let Some(vm) = guard.as_ref() else {
            return Err(Failure::released());
        };
        tokio::select! {
            result = op(vm) => result,
            () = released => Err(Failure::released()),
        }
    }

    /// Explains a lost connection of one of this VM's children the way
    /// the library explains its own (how the VM ended, its serial log).
    pub(crate) async fn explain_lost(&self, e: supermachine::Error) -> Failure {
        let guard = self.vm.read().await;
        match guard.as_ref() {
            Some(vm) => Failure::from(vm.explain_lost(e).await),
            None => Failure::released(),
        }
    }

    fn adopt(&self, child: &Arc<ChildShared>) {
        let mut children = self.children.lock().unwrap_or_else(|e| e.into_inner());
        children.retain(|c| c.strong_count() > 0);
        children.push(Arc::downgrade(child));
    }

    /// Ends this handle's operations and children, then gives the VM back.
    async fn release(&self) -> Result<(), Failure> {
        if self.released.send_replace(true) {
            return Err(Failure::released());
        }
        let children: Vec<Arc<ChildShared>> = {
            let mut list = self.children.lock().unwrap_or_else(|e| e.into_inner());
            list.drain(..).filter_map(|c| c.upgrade()).collect()
        };
        for child in children {
            child.close().await;
        }
        let forwarders: Vec<Arc<ForwarderShared>> = {
            let mut list = self.forwarders.lock().unwrap_or_else(|e| e.into_inner());
            list.drain(..).collect()
        };
        for forwarder in forwarders {
            forwarder.close().await;
        }
        let vm = self.vm.write().await.take();
        if let Some(vm) = vm {
            vm.release();
        }
        Ok(())
    }
}

/// A VM from `pool.acquire()`.
#[napi]
pub struct NativeVm {
    slot: Arc<Slot>,
    id: String,
}

impl NativeVm {
    pub(crate) fn new(vm: PooledVm) -> NativeVm {
        NativeVm {
            id: vm.id().to_string(),
            slot: Slot::new(vm),
        }
    }
}

#[napi]
impl NativeVm {
    /// The VM's short id (as `supermachine ps` shows it).
    #[napi(getter)]
    pub fn id(&self) -> String {
        self.id.clone()
    }

    #[napi(getter)]
    pub fn released(&self) -> bool {
        self.slot.is_released()
    }

    #[napi]
    pub fn exec<'env>(
        &self,
        env: &'env Env,
        args: ExecArgs,
        stdin: Option<BufferSlice>,
    ) -> napi::Result<PromiseRaw<'env, ExecOutput>> {
        // Copied here, on the JavaScript thread: the caller may reuse its
        // buffer as soon as this returns.
        let stdin = stdin.map(|s| s.to_vec());
        let slot = self.slot.clone();
        env.spawn_future(
            async move { Ok(slot.run(|vm| Box::pin(ops::exec(vm, args, stdin))).await?) },
        )
    }

    #[napi]
    pub fn spawn<'env>(
        &self,
        env: &'env Env,
        args: ExecArgs,
    ) -> napi::Result<PromiseRaw<'env, NativeExecChild>> {
        let slot = self.slot.clone();
        env.spawn_future(async move {
            let child = slot.run(|vm| Box::pin(ops::spawn(vm, args))).await?;
            let shared = ChildShared::new(child, Arc::downgrade(&slot));
            slot.adopt(&shared);
            Ok(NativeExecChild::new(shared))
        })
    }

    #[napi]
    pub fn write_file<'env>(
        &self,
        env: &'env Env,
        path: String,
        data: BufferSlice,
        args: WriteArgs,
    ) -> napi::Result<PromiseRaw<'env, ()>> {
        let data = data.to_vec();
        let slot = self.slot.clone();
        env.spawn_future(async move {
            Ok(slot
                .run(|vm| Box::pin(ops::write_file(vm, path, data, args)))
                .await?)
        })
    }

    #[napi]
    pub fn read_file<'env>(
        &self,
        env: &'env Env,
        path: String,
        max_bytes: i64,
    ) -> napi::Result<PromiseRaw<'env, Buffer>> {
        let slot = self.slot.clone();
        env.spawn_future(async move {
            Ok(slot
                .run(|vm| Box::pin(ops::read_file(vm, path, max_bytes)))
                .await?)
        })
    }

    /// Snapshots the VM into `path` (which must not exist); it runs on.
    #[napi]
    pub fn snapshot<'env>(
        &self,
        env: &'env Env,
        path: String,
    ) -> napi::Result<PromiseRaw<'env, NativeImage>> {
        let slot = self.slot.clone();
        env.spawn_future(async move {
            let image = slot
                .run(|vm| {
                    Box::pin(async move {
                        vm.snapshot(&path)
                            .await
                            .map_err(|e| Failure::from(e).with_path(path.clone()))
                    })
                })
                .await?;
            Ok(NativeImage::new(image))
        })
    }

    /// Publishes a guest port on the host until closed or released.
    #[napi]
    pub fn expose_tcp<'env>(
        &self,
        env: &'env Env,
        args: ExposeArgs,
    ) -> napi::Result<PromiseRaw<'env, NativeTcpForwarder>> {
        let (guest_port, options) = args.options()?;
        let slot = self.slot.clone();
        env.spawn_future(async move {
            let forwarder = slot
                .run(|vm| Box::pin(async move { Ok(vm.expose_tcp(guest_port, options).await?) }))
                .await?;
            let addr = forwarder.local_addr();
            let shared = ForwarderShared::new(forwarder);
            {
                let mut list = slot.forwarders.lock().unwrap_or_else(|e| e.into_inner());
                list.retain(|f| !f.is_closed());
                list.push(shared.clone());
            }
            // Released while it was being made: it must not outlive the handle.
            if slot.is_released() {
                shared.close().await;
                return Err(Failure::released().into());
            }
            Ok(NativeTcpForwarder::new(shared, addr, guest_port))
        })
    }

    #[napi]
    pub fn release<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, ()>> {
        let slot = self.slot.clone();
        env.spawn_future(async move { Ok(slot.release().await?) })
    }
}
