//! Published ports as JavaScript holds them: `vm.exposeTcp()`'s
//! `TcpForwarder`. A forwarder belongs to the VM handle that made it: the
//! handle's release closes it, so a port never outlives the handle and
//! never reaches the next user of a pooled VM.

use crate::error::Failure;
use napi::bindgen_prelude::PromiseRaw;
use napi::Env;
use napi_derive::napi;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use supermachine::TcpForwarder;
use tokio::sync::Mutex;

/// What `vm.exposeTcp()` is given, checked in JavaScript first.
#[napi(object)]
pub struct ExposeArgs {
    pub guest_port: u32,
    pub host_port: Option<u32>,
    pub host: Option<String>,
}

impl ExposeArgs {
    pub(crate) fn options(&self) -> Result<(u16, supermachine::ExposeOptions), Failure> {
        let bad = |what: String| Failure::from(supermachine::Error::InvalidArgument(what));
        let guest_port = u16::try_from(self.guest_port)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| bad(format!("guestPort {} is not a port", self.guest_port)))?;
        let mut options = supermachine::ExposeOptions::default();
        if let Some(port) = self.host_port {
            options.host_port =
                u16::try_from(port).map_err(|_| bad(format!("hostPort {port} is not a port")))?;
        }
        if let Some(host) = &self.host {
            options.host = host
                .trim_start_matches('[')
                .trim_end_matches(']')
                .parse()
                .map_err(|_| bad(format!("host {host:?} is not an IP address")))?;
        }
        Ok((guest_port, options))
    }
}

/// A live forwarder, shared by its JavaScript object and its VM handle
/// (whichever closes it first). The handle holds it strongly: a port stays
/// published until closed or released, even when JavaScript keeps no
/// reference to its forwarder.
pub(crate) struct ForwarderShared {
    forwarder: Mutex<Option<TcpForwarder>>,
    closed: AtomicBool,
}

impl ForwarderShared {
    pub(crate) fn new(forwarder: TcpForwarder) -> Arc<ForwarderShared> {
        Arc::new(ForwarderShared {
            forwarder: Mutex::new(Some(forwarder)),
            closed: AtomicBool::new(false),
        })
    }

    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Relaxed)
    }

    /// Stops listening and ends its connections; later calls do nothing.
    pub(crate) async fn close(&self) {
        self.closed.store(true, Ordering::Relaxed);
        let forwarder = self.forwarder.lock().await.take();
        if let Some(forwarder) = forwarder {
            forwarder.close().await;
        }
    }
}

/// A host TCP port forwarded to a guest port.
#[napi]
pub struct NativeTcpForwarder {
    shared: Arc<ForwarderShared>,
    host: String,
    port: u32,
    guest_port: u32,
}

impl NativeTcpForwarder {
    pub(crate) fn new(
        shared: Arc<ForwarderShared>,
        addr: std::net::SocketAddr,
        guest_port: u16,
    ) -> Self {
        NativeTcpForwarder {
            shared,
            host: addr.ip().to_string(),
            port: addr.port().into(),
            guest_port: guest_port.into(),
        }
    }
}

#[napi]
impl NativeTcpForwarder {
    #[napi(getter)]
    pub fn host(&self) -> String {
        self.host.clone()
    }

    #[napi(getter)]
    pub fn port(&self) -> u32 {
        self.port
    }

    #[napi(getter)]
    pub fn guest_port(&self) -> u32 {
        self.guest_port
    }

    #[napi]
    pub fn close<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, ()>> {
        let shared = self.shared.clone();
        env.spawn_future(async move {
            shared.close().await;
            Ok(())
        })
    }
}
