//! A process started with `vm.spawn()`: its stdin, stdout and stderr one
//! chunk at a time, its exit, and signals.
//!
//! Backpressure is the library's: stdout and stderr come from bounded
//! channels, and a chunk is taken only when JavaScript asks for one (the
//! package's `Readable` asks only while its buffer has room). A reader
//! that stops reading therefore stops the guest's writer, through the
//! channel, the vsock credit and the guest's pipe, with nothing piling up
//! in between. A stream nobody will read is discarded (`discard*`), so
//! it cannot hold the process's exit back.
//!
//! Each part sits behind its own lock (a read and a write can run at
//! once); every call also watches the child's `closed` flag, raised when
//! its VM handle is released, so no call outlives the VM it belongs to.

use crate::error::Failure;
use crate::ops::ExitInfo;
use crate::vm::Slot;
use napi::bindgen_prelude::{Buffer, BufferSlice, PromiseRaw};
use napi::Env;
use napi_derive::napi;
use std::future::Future;
use std::sync::{Arc, Mutex, Weak};
use supermachine::{Child, ChildControl, ChildOutput, ChildStdin};
use tokio::sync::{watch, Mutex as AsyncMutex};

pub(crate) struct ChildShared {
    pid: Option<u32>,
    stdin: AsyncMutex<Option<ChildStdin>>,
    stdout: AsyncMutex<Option<ChildOutput>>,
    stderr: AsyncMutex<Option<ChildOutput>>,
    /// Held only for its exit (its streams were taken out above).
    child: AsyncMutex<Option<Child>>,
    /// Signals; taken out (dropped) when the child is closed, since
    /// holding it counts as holding the process.
    control: Mutex<Option<ChildControl>>,
    closed: watch::Sender<bool>,
    /// The VM handle it came from, to explain a lost connection.
    slot: Weak<Slot>,
}

/// Which output stream.
#[derive(Clone, Copy)]
enum Stream {
    Stdout,
    Stderr,
}

impl ChildShared {
    pub(crate) fn new(mut child: Child, slot: Weak<Slot>) -> Arc<ChildShared> {
        let control = child.control();
        Arc::new(ChildShared {
            pid: child.pid(),
            stdin: AsyncMutex::new(child.stdin.take()),
            stdout: AsyncMutex::new(child.stdout.take()),
            stderr: AsyncMutex::new(child.stderr.take()),
            child: AsyncMutex::new(Some(child)),
            control: Mutex::new(Some(control)),
            closed: watch::Sender::new(false),
            slot,
        })
    }

    /// Runs `op` unless (or until) the child is closed.
    async fn guarded<T>(&self, op: impl Future<Output = Result<T, Failure>>) -> Result<T, Failure> {
        let mut closed = self.closed.subscribe();
        if *closed.borrow() {
            return Err(Failure::released());
        }
        tokio::select! {
            result = op => result,
            _ = closed.wait_for(|c| *c) => Err(Failure::released()),
        }
    }

    /// Ends the process (dropping every handle on it closes its connection,
    /// and the guest kills its process group) and fails later calls.
    pub(crate) async fn close(&self) {
        self.closed.send_replace(true);
        // The calls running now return on the flag and let go of the locks.
        drop(self.stdin.lock().await.take());
        drop(self.stdout.lock().await.take());
        drop(self.stderr.lock().await.take());
        drop(self.child.lock().await.take());
        drop(
            self.control
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .take(),
        );
    }

    fn output(&self, which: Stream) -> &AsyncMutex<Option<ChildOutput>> {
        match which {
            Stream::Stdout => &self.stdout,
            Stream::Stderr => &self.stderr,
        }
    }

    async fn read(&self, which: Stream) -> Result<Option<Buffer>, Failure> {
        self.guarded(async {
            let mut out = self.output(which).lock().await;
            Ok(match out.as_mut() {
                Some(stream) => stream.recv().await.map(Buffer::from),
                None => None,
            })
        })
        .await
    }

    async fn write(&self, data: Vec<u8>) -> Result<(), Failure> {
        self.guarded(async {
            let mut stdin = self.stdin.lock().await;
            let Some(pipe) = stdin.as_mut() else {
                return Err(Failure::new("EPIPE", "the process's stdin is closed"));
            };
            match pipe.write(&data).await {
                Ok(()) => Ok(()),
                // The process ended (or its VM did) while we wrote.
                Err(_) => Err(Failure::new(
                    "EPIPE",
                    "the process's stdin is closed: the process has ended",
                )),
            }
        })
        .await
    }

    async fn wait(&self) -> Result<ExitInfo, Failure> {
        let status = self
            .guarded(async {
                let mut child = self.child.lock().await;
                let Some(child) = child.as_mut() else {
                    return Err(Failure::released());
                };
                Ok(child.wait().await)
            })
            .await?;
        match status {
            Ok(status) => Ok(status.into()),
            Err(e) => match self.slot.upgrade() {
                Some(slot) => Err(slot.explain_lost(e).await),
                None => Err(Failure::from(e)),
            },
        }
    }

    async fn signal(&self, signal: i32) -> Result<(), Failure> {
        let control = self
            .control
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        let Some(control) = control else {
            return Err(Failure::released());
        };
        self.guarded(async move {
            control
                .signal(signal)
                .await
                .map_err(|_| Failure::new("ESRCH", "the process has already ended"))
        })
        .await
    }
}

/// A spawned process.
#[napi]
pub struct NativeExecChild {
    shared: Arc<ChildShared>,
}

impl NativeExecChild {
    pub(crate) fn new(shared: Arc<ChildShared>) -> NativeExecChild {
        NativeExecChild { shared }
    }

    fn run<'env, T, F>(
        &self,
        env: &'env Env,
        op: impl FnOnce(Arc<ChildShared>) -> F,
    ) -> napi::Result<PromiseRaw<'env, T>>
    where
        T: napi::bindgen_prelude::ToNapiValue + Send + 'static,
        F: Future<Output = Result<T, Failure>> + Send + 'static,
    {
        let fut = op(self.shared.clone());
        env.spawn_future(async move { Ok(fut.await?) })
    }
}

#[napi]
impl NativeExecChild {
    /// The process id in the guest; `null` when the program could not be
    /// started (its exit then says why: 127, 126).
    #[napi(getter)]
    pub fn pid(&self) -> Option<u32> {
        self.shared.pid
    }

    /// Sends bytes to the process's stdin; resolves once they are queued
    /// (it waits while the guest is slow to read).
    #[napi]
    pub fn write_stdin<'env>(
        &self,
        env: &'env Env,
        data: BufferSlice,
    ) -> napi::Result<PromiseRaw<'env, ()>> {
        let data = data.to_vec();
        self.run(env, move |c| async move { c.write(data).await })
    }

    /// Ends the process's input (after what was already written).
    #[napi]
    pub fn close_stdin<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, ()>> {
        self.run(env, |c| async move {
            drop(c.stdin.lock().await.take());
            Ok(())
        })
    }

    /// The next chunk of stdout, or `null` at its end.
    #[napi]
    pub fn read_stdout<'env>(
        &self,
        env: &'env Env,
    ) -> napi::Result<PromiseRaw<'env, Option<Buffer>>> {
        self.run(env, |c| async move { c.read(Stream::Stdout).await })
    }

    /// The next chunk of stderr, or `null` at its end.
    #[napi]
    pub fn read_stderr<'env>(
        &self,
        env: &'env Env,
    ) -> napi::Result<PromiseRaw<'env, Option<Buffer>>> {
        self.run(env, |c| async move { c.read(Stream::Stderr).await })
    }

    /// Throws stdout away from now on (nobody will read it).
    #[napi]
    pub fn discard_stdout<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, ()>> {
        self.run(env, |c| async move {
            drop(c.stdout.lock().await.take());
            Ok(())
        })
    }

    /// Throws stderr away from now on.
    #[napi]
    pub fn discard_stderr<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, ()>> {
        self.run(env, |c| async move {
            drop(c.stderr.lock().await.take());
            Ok(())
        })
    }

    /// Waits for the process to end.
    #[napi]
    pub fn wait<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, ExitInfo>> {
        self.run(env, |c| async move { c.wait().await })
    }

    /// Sends a signal (by number) to the process.
    #[napi]
    pub fn signal<'env>(&self, env: &'env Env, signal: i32) -> napi::Result<PromiseRaw<'env, ()>> {
        if !(1..=64).contains(&signal) {
            return Err(Failure::new(
                "ERR_UNKNOWN_SIGNAL",
                format!("signal {signal} is not a signal number (1 to 64)"),
            )
            .into());
        }
        self.run(env, move |c| async move { c.signal(signal).await })
    }
}
