//! Images and pools: `Image.build`, `Image.fromSnapshot`, `image.pool()`,
//! `pool.acquire()` / `shutdown()`.

use crate::error::{napi_err, Failure};
use crate::ops::EnvVar;
use crate::vm::NativeVm;
use crate::warmup::{self, WarmupFailure, WarmupFn};
use napi::bindgen_prelude::PromiseRaw;
use napi::Env;
use napi_derive::napi;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;
use supermachine::{BuildImage, BuildOptions, ExtraFile, Image, Pool, PoolOptions};

/// A host file staged into the guest before the workload starts.
#[napi(object)]
pub struct ExtraFileArg {
    pub host_path: String,
    pub guest_path: String,
}

/// `Image.build` options as the package's JavaScript passes them (checked
/// there; `mounts` and `volumes` never get here: they are refused before).
#[napi(object)]
pub struct BuildArgs {
    /// The image reference (`ref` in JavaScript).
    pub reference: Option<String>,
    /// Where the bytes come from instead (`oci:DIR[:TAG]`,
    /// `docker-archive:FILE`).
    pub source: Option<String>,
    pub name: Option<String>,
    pub memory_mib: Option<i64>,
    pub vcpus: Option<u32>,
    pub cmd: Option<Vec<String>>,
    pub env: Option<Vec<EnvVar>>,
    pub workdir: Option<String>,
    pub user: Option<String>,
    pub guest_port: Option<u32>,
    pub listener_required: Option<bool>,
    pub extra_files: Option<Vec<ExtraFileArg>>,
    pub warmup_tag: Option<String>,
    pub snapshots_dir: Option<String>,
    pub extra_kernel_args: Option<Vec<String>>,
    /// `none`, `public` or `allow=CIDR[:PORTS],…`.
    pub network: Option<String>,
}

/// `image.pool()` options.
#[napi(object)]
pub struct PoolArgs {
    pub min: Option<u32>,
    pub max: Option<u32>,
    pub restore_on_release: Option<bool>,
    pub acquire_timeout_ms: Option<i64>,
}

/// A pool's counts right now.
#[napi(object)]
pub struct PoolStatusInfo {
    pub idle: u32,
    pub leased: u32,
    pub restoring: u32,
    pub replaced: i64,
}

fn out_of_range(what: &str, detail: String) -> Failure {
    Failure::new("ERR_OUT_OF_RANGE", format!("{what} {detail}"))
}

fn build_options(args: BuildArgs) -> Result<BuildOptions, Failure> {
    // `source` overrides where the bytes come from; `ref` names the image
    // otherwise. Either way it is pulled the way `supermachine run` pulls.
    let reference = args.source.or(args.reference).ok_or_else(|| {
        Failure::new(
            "ERR_INVALID_ARG_VALUE",
            "Image.build needs `ref` (an image reference) or `source`",
        )
    })?;
    let mut o = BuildOptions::new(BuildImage::Ref(reference));
    o.name = args.name;
    if let Some(mib) = args.memory_mib {
        o.memory_mib =
            u64::try_from(mib).map_err(|_| out_of_range("memoryMib", format!("{mib} < 0")))?;
    }
    if let Some(vcpus) = args.vcpus {
        o.vcpus = u8::try_from(vcpus)
            .map_err(|_| out_of_range("vcpus", format!("{vcpus} is more than 255")))?;
    }
    o.cmd = args.cmd;
    o.env = args
        .env
        .into_iter()
        .flatten()
        .map(|v| (v.name, v.value))
        .collect();
    o.workdir = args.workdir;
    o.user = args.user;
    if let Some(port) = args.guest_port {
        o.guest_port = u16::try_from(port)
            .map_err(|_| out_of_range("guestPort", format!("{port} is not a TCP port")))?;
    }
    o.listener_required = args.listener_required.unwrap_or(false);
    o.extra_files = args
        .extra_files
        .into_iter()
        .flatten()
        .map(|f| ExtraFile {
            host_path: f.host_path.into(),
            guest_path: f.guest_path,
        })
        .collect();
    o.warmup_tag = args.warmup_tag;
    o.snapshots_dir = args.snapshots_dir.map(PathBuf::from);
    o.extra_kernel_args = args.extra_kernel_args.unwrap_or_default();
    o.network = args
        .network
        .map(|n| {
            n.parse::<supermachine::Network>()
                .map_err(|e| Failure::new("ERR_INVALID_ARG_VALUE", format!("network: {e}")))
        })
        .transpose()?;
    Ok(o)
}

/// An image VMs start from; here always a snapshot (built or read).
#[napi]
pub struct NativeImage {
    image: Image,
}

impl NativeImage {
    pub(crate) fn new(image: Image) -> NativeImage {
        NativeImage { image }
    }
}

#[napi]
impl NativeImage {
    /// Bakes an image into a snapshot (cached by its inputs).
    #[napi]
    pub fn build<'env>(
        env: &'env Env,
        args: BuildArgs,
        warmup: Option<WarmupFn>,
    ) -> napi::Result<PromiseRaw<'env, NativeImage>> {
        let mut options = build_options(args)?;
        let failed: WarmupFailure = Arc::default();
        if let Some(js) = warmup {
            options.warmup = Some(warmup::bridge(js, failed.clone()));
        }
        env.spawn_future(async move {
            match supermachine::Image::build(options).await {
                Ok(image) => Ok(NativeImage::new(image)),
                Err(e) => {
                    let warmup_failure = failed.lock().unwrap_or_else(|p| p.into_inner()).take();
                    Err(warmup_failure.unwrap_or_else(|| Failure::from(e)).into())
                }
            }
        })
    }

    /// The snapshot in directory `path`.
    #[napi]
    pub fn from_snapshot<'env>(
        env: &'env Env,
        path: String,
    ) -> napi::Result<PromiseRaw<'env, NativeImage>> {
        env.spawn_future(async move {
            // Reads and checks meta.json: small, but file I/O all the same.
            let image = tokio::task::spawn_blocking(move || Image::from_snapshot(path))
                .await
                .map_err(|e| napi::Error::from_reason(format!("the snapshot reader failed: {e}")))?
                .map_err(napi_err)?;
            Ok(NativeImage::new(image))
        })
    }

    /// What the image is called (the reference it was built from).
    #[napi(getter)]
    pub fn name(&self) -> String {
        self.image.name()
    }

    /// The snapshot directory.
    #[napi(getter)]
    pub fn snapshot_dir(&self) -> Option<String> {
        self.image.snapshot_dir().map(|p| p.display().to_string())
    }

    /// The build key, for a snapshot made by `Image.build`.
    #[napi(getter)]
    pub fn key(&self) -> Option<String> {
        self.image.snapshot_key().map(str::to_string)
    }

    /// A pool of VMs restored from this snapshot.
    #[napi]
    pub fn pool<'env>(
        &self,
        env: &'env Env,
        args: PoolArgs,
    ) -> napi::Result<PromiseRaw<'env, NativePool>> {
        let defaults = PoolOptions::default();
        let options = PoolOptions {
            min: args.min.map_or(defaults.min, |n| n as usize),
            max: args.max.map_or(defaults.max, |n| n as usize),
            restore_on_release: args
                .restore_on_release
                .unwrap_or(defaults.restore_on_release),
            acquire_timeout: match args.acquire_timeout_ms {
                Some(ms) => Duration::from_millis(u64::try_from(ms).map_err(|_| {
                    Failure::from(supermachine::Error::InvalidArgument(format!(
                        "acquireTimeoutMs {ms} < 0"
                    )))
                })?),
                None => defaults.acquire_timeout,
            },
            ..defaults
        };
        let image = self.image.clone();
        // Inside the runtime: the pool restores in the background on it.
        env.spawn_future(async move {
            let pool = image.pool(options).map_err(napi_err)?;
            Ok(NativePool {
                pool: Arc::new(pool),
            })
        })
    }
}

/// Warm copies of one snapshot.
#[napi]
pub struct NativePool {
    pool: Arc<Pool>,
}

#[napi]
impl NativePool {
    /// A VM for the caller alone.
    #[napi]
    pub fn acquire<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, NativeVm>> {
        let pool = self.pool.clone();
        env.spawn_future(async move {
            let vm = pool.acquire().await.map_err(napi_err)?;
            Ok(NativeVm::new(vm))
        })
    }

    /// Waits until `min` VMs are idle.
    #[napi]
    pub fn wait_ready<'env>(
        &self,
        env: &'env Env,
        timeout_ms: i64,
    ) -> napi::Result<PromiseRaw<'env, ()>> {
        let timeout = Duration::from_millis(u64::try_from(timeout_ms).unwrap_or(0));
        let pool = self.pool.clone();
        env.spawn_future(async move { pool.wait_ready(timeout).await.map_err(napi_err) })
    }

    #[napi]
    pub fn status(&self) -> PoolStatusInfo {
        let s = self.pool.status();
        let small = |n: usize| u32::try_from(n).unwrap_or(u32::MAX);
        PoolStatusInfo {
            idle: small(s.idle),
            leased: small(s.leased),
            restoring: small(s.restoring),
            replaced: i64::try_from(s.replaced).unwrap_or(i64::MAX),
        }
    }

    /// Stops the idle VMs; acquires fail from now on.
    #[napi]
    pub fn shutdown<'env>(&self, env: &'env Env) -> napi::Result<PromiseRaw<'env, ()>> {
        let pool = self.pool.clone();
        env.spawn_future(async move {
            pool.shutdown().await;
            Ok(())
        })
    }
}
