//! supermachine: run OCI images as hardware-isolated KVM microVMs.
//!
//! This crate is the host side. It knows where the guest kernel, the agent
//! and root filesystems live, supervises one `supermachine-worker` process
//! per VM, and talks to the agent in the guest over vsock. It knows nothing
//! of KVM ioctls: that is the worker's job.
//!
//! The API is async (tokio). Every VM operation takes `&self` and runs on
//! its own vsock connection, so a VM serves many execs and file transfers
//! at once.
//!
//! Any OCI image runs the same way: [`Image::pull`] takes a registry
//! reference, an `oci:` layout or a `docker-archive:` tarball, and the VM
//! boots from the image's root filesystem (built once per image digest).
//!
//! ```no_run
//! use supermachine::{Image, Vm, VmConfig};
//! # async fn demo() -> Result<(), supermachine::Error> {
//! let vm = Vm::start(&Image::builtin(), &VmConfig::default()).await?;
//! let out = vm.exec(["echo", "hi"]).await?;
//! assert_eq!((out.stdout.as_slice(), out.status.code), (&b"hi\n"[..], Some(0)));
//! vm.write_file("/tmp/a", b"x").await?;
//! assert_eq!(vm.read_file("/tmp/a").await?, b"x");
//! vm.stop().await?;
//! # Ok(()) }
//! ```

pub mod assets;
mod build;
mod child;
mod conn;
mod defaults;
mod error;
mod exec;
mod files;
mod hash;
mod image;
pub mod images;
pub mod kernel;
mod outcome;
pub mod paths;
mod pool;
mod pull;
mod restore;
mod rootfs;
mod runtime;
pub mod snapshot;
mod standby;
mod vm;
mod worker;

pub use build::{
    build, build_key, default_snapshots_dir, warmup, BuildOptions, Built, ExtraFile, Warmup,
    SNAPSHOTS_DIR_ENV,
};
pub use child::{Child, ChildControl, ChildOutput, ChildStdin};
pub use defaults::{docker_command, merge_env, ExecDefaults};
pub use error::Error;
pub use exec::{ExecBuilder, ExitStatus, Output, DEFAULT_OUTPUT_LIMIT};
pub use image::Image;
pub use outcome::VmOutcome;
pub use pool::{Pool, PoolOptions, PoolStatus, PooledVm};
pub use pull::{ImageEvent, ImageProgressFn, PullOptions};
pub use rootfs::rootfs_dir;
pub use runtime::{check_kvm, VmInfo};
pub use standby::prestart_workers;
pub use supermachine_protocol::{
    DirEntry, ErrorKind, FileKind, FileStat, WindowSize, WriteFileRequest,
};
pub use vm::{Disk, Vm, VmConfig};

/// Image references, sources, the blob store and image configs
/// (the `supermachine-oci` crate).
pub use supermachine_oci as oci;
