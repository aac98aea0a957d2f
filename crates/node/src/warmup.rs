//! The VM a JavaScript warmup callback gets.
//!
//! The library hands a warmup a `&Vm` that lives only while the warmup
//! runs; a JavaScript object can live longer. So the `WarmupVm` given to
//! JavaScript holds no VM: it holds the sending end of a channel, and the
//! bake's warmup future serves what comes through it against its `&Vm`
//! (several calls at once) until the callback's promise settles. After
//! that the channel is closed and every call answers
//! `SUPERMACHINE_WARMUP_OVER`: a stashed `WarmupVm` cannot reach a VM that
//! is being snapshotted or is gone.

use crate::error::{codes, Failure};
use crate::ops::{self, ExecArgs, ExecOutput, WriteArgs};
use futures_util::stream::{FuturesUnordered, StreamExt};
use napi::bindgen_prelude::{Buffer, BufferSlice, Promise, PromiseRaw};
use napi::threadsafe_function::ThreadsafeFunction;
use napi::{Env, Status};
use napi_derive::napi;
use std::future::Future;
use std::sync::{Arc, Mutex};
use supermachine::Vm;
use tokio::sync::{mpsc, oneshot};

/// Calls queued from JavaScript before `send` waits.
const CALLS_QUEUED: usize = 64;

/// The JavaScript warmup: called with the `WarmupVm`, returns a promise
/// (the package wraps the user's callback so it always does).
pub(crate) type WarmupFn =
    ThreadsafeFunction<NativeWarmupVm, Promise<()>, NativeWarmupVm, Status, false>;

type Reply<T> = oneshot::Sender<Result<T, Failure>>;

/// One call of a `WarmupVm` method.
enum Call {
    Exec(ExecArgs, Option<Vec<u8>>, Reply<ExecOutput>),
    WriteFile(String, Vec<u8>, WriteArgs, Reply<()>),
    ReadFile(String, i64, Reply<Buffer>),
}

impl Call {
    /// Runs the call against the VM and answers it (an answer nobody waits
    /// for any more is dropped).
    async fn serve(self, vm: &Vm) {
        match self {
            Call::Exec(args, stdin, reply) => {
                let _ = reply.send(ops::exec(vm, args, stdin).await);
            }
            Call::WriteFile(path, data, args, reply) => {
                let _ = reply.send(ops::write_file(vm, path, data, args).await);
            }
            Call::ReadFile(path, max_bytes, reply) => {
                let _ = reply.send(ops::read_file(vm, path, max_bytes).await);
            }
        }
    }
}

fn over() -> Failure {
    Failure::new(
        codes::WARMUP_OVER,
        "this WarmupVm belongs to a warmup that has ended: use it only inside the warmup callback (and await its calls)",
    )
}

/// The VM of a running warmup, as JavaScript holds it.
#[napi]
pub struct NativeWarmupVm {
    calls: mpsc::Sender<Call>,
}

impl NativeWarmupVm {
    fn call<'env, T>(
        &self,
        env: &'env Env,
        make: impl FnOnce(Reply<T>) -> Call,
    ) -> napi::Result<PromiseRaw<'env, T>>
    where
        T: napi::bindgen_prelude::ToNapiValue + Send + 'static,
    {
        let (reply, answer) = oneshot::channel();
        let call = make(reply);
        let calls = self.calls.clone();
        env.spawn_future(async move {
            calls.send(call).await.map_err(|_| over())?;
            Ok(answer.await.map_err(|_| over())??)
        })
    }
}

#[napi]
impl NativeWarmupVm {
    #[napi]
    pub fn exec<'env>(
        &self,
        env: &'env Env,
        args: ExecArgs,
        stdin: Option<BufferSlice>,
    ) -> napi::Result<PromiseRaw<'env, ExecOutput>> {
        let stdin = stdin.map(|s| s.to_vec());
        self.call(env, |reply| Call::Exec(args, stdin, reply))
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
        self.call(env, |reply| Call::WriteFile(path, data, args, reply))
    }

    #[napi]
    pub fn read_file<'env>(
        &self,
        env: &'env Env,
        path: String,
        max_bytes: i64,
    ) -> napi::Result<PromiseRaw<'env, Buffer>> {
        self.call(env, |reply| Call::ReadFile(path, max_bytes, reply))
    }
}

/// What the JavaScript warmup failed with, kept for the build to report
/// instead of the library's placeholder error.
pub(crate) type WarmupFailure = Arc<Mutex<Option<Failure>>>;

/// The library warmup that calls the JavaScript one and serves its
/// `WarmupVm` until the promise it returned settles.
pub(crate) fn bridge(js: WarmupFn, failed: WarmupFailure) -> supermachine::Warmup {
    supermachine::warmup(move |vm| {
        Box::pin(async move {
            let (calls, queue) = mpsc::channel(CALLS_QUEUED);
            let handle = NativeWarmupVm { calls };
            let settled = async move { js.call_async_catch(handle).await?.await };
            match serve(vm, queue, settled).await {
                Ok(()) => Ok(()),
                Err(e) => {
                    let failure = Failure::new(codes::WARMUP_FAILED, e.reason.clone());
                    *failed.lock().unwrap_or_else(|p| p.into_inner()) = Some(failure);
                    // Never shown: the build reports the failure above.
                    Err(supermachine::Error::InvalidArgument(
                        "the warmup callback failed".into(),
                    ))
                }
            }
        })
    })
}

/// Serves calls from `queue` against `vm`, concurrently, until `settled`
/// resolves; calls still running then are dropped (their callers get
/// `SUPERMACHINE_WARMUP_OVER`).
async fn serve(
    vm: &Vm,
    mut queue: mpsc::Receiver<Call>,
    settled: impl Future<Output = napi::Result<()>>,
) -> napi::Result<()> {
    let mut running = FuturesUnordered::new();
    tokio::pin!(settled);
    loop {
        tokio::select! {
            done = &mut settled => return done,
            Some(call) = queue.recv() => running.push(call.serve(vm)),
            Some(()) = running.next(), if !running.is_empty() => {}
        }
    }
}
