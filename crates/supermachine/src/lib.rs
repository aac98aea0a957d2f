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

// The public API says what each item is (issue 17).
#![warn(missing_docs)]

mod error;
mod hash;
mod image;
pub mod paths;
pub mod snapshot;
mod vm;
mod worker;

// The crate is grouped by part (see the module docs of each):
// `vm/`       a running VM: the handle, exec, children, files, agent connections;
// `image/`    what a VM boots from: images, pulls, root filesystems, kernel, assets;
// `snapshot/` snapshots and what is made of them: restore, bake (build), pools;
// `worker/`   the worker process behind a VM: spawn, supervision, runtime dirs,
//             prestarted standbys, how it ended.
// The public paths of the flat layout stay valid through these re-exports.
pub use image::{assets, images, kernel};

pub use error::Error;
pub use image::defaults::{docker_command, merge_env, ExecDefaults};
pub use image::pull::{ImageEvent, ImageProgressFn, PullOptions};
pub use image::rootfs::rootfs_dir;
pub use image::Image;
pub use snapshot::build::{
    build, build_key, default_snapshots_dir, warmup, BuildImage, BuildOptions, Built, ExtraFile,
    Warmup, SNAPSHOTS_DIR_ENV,
};
pub use snapshot::pool::{Pool, PoolOptions, PoolStatus, PooledVm};
pub use supermachine_protocol::worker_control::{FailureKind, WorkerFailure};
/// An entry of [`Vm::list_dir`].
///
/// ```no_run
/// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
/// use supermachine::{DirEntry, FileKind};
/// let entries: Vec<DirEntry> = vm.list_dir("/etc").await?;
/// let subdirs: Vec<&str> = entries
///     .iter()
///     .filter(|e| e.stat.kind == FileKind::Dir)
///     .map(|e| e.name.as_str())
///     .collect();
/// println!("{subdirs:?}");
/// # Ok(()) }
/// ```
pub use supermachine_protocol::DirEntry;
/// Why the guest refused a request, in [`Error::Agent`].
///
/// ```no_run
/// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
/// use supermachine::{Error, ErrorKind};
/// match vm.mkdir("/srv/data", false).await {
///     Ok(()) | Err(Error::Agent { kind: ErrorKind::AlreadyExists, .. }) => {}
///     Err(e) => return Err(e),
/// }
/// # Ok(()) }
/// ```
pub use supermachine_protocol::ErrorKind;
/// The kind of a guest file, in [`FileStat`].
///
/// ```no_run
/// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
/// use supermachine::FileKind;
/// let st = vm.stat("/bin/sh").await?;
/// if st.kind == FileKind::Symlink {
///     println!("/bin/sh -> {}", st.link_target.unwrap_or_default());
/// }
/// # Ok(()) }
/// ```
pub use supermachine_protocol::FileKind;
/// What [`Vm::stat`] returns.
///
/// ```no_run
/// # async fn demo(vm: &supermachine::Vm) -> Result<(), supermachine::Error> {
/// let st: supermachine::FileStat = vm.stat("/etc/passwd").await?;
/// println!("{:o} {}:{} {} bytes", st.mode, st.uid, st.gid, st.size);
/// # Ok(()) }
/// ```
pub use supermachine_protocol::FileStat;
/// A terminal size, as rows and columns.
///
/// ```
/// use supermachine::WindowSize;
/// let size = WindowSize { rows: 24, cols: 80 };
/// let wider = WindowSize { cols: 132, ..size };
/// assert_eq!((wider.rows, wider.cols), (24, 132));
/// ```
pub use supermachine_protocol::WindowSize;
/// Options of [`Vm::write_file_with`] and [`ExecBuilder::stage_file_with`].
///
/// ```
/// use supermachine::WriteFileRequest;
/// let mut log = WriteFileRequest::new("/var/log/app.log");
/// log.append = true;
/// assert_eq!((log.mode, log.uid, log.create_parents), (0o644, None, false));
/// ```
pub use supermachine_protocol::WriteFileRequest;
pub use vm::child::{Child, ChildControl, ChildOutput, ChildStdin};
pub use vm::copy::{CopyOptions, CopyReport};
pub use vm::exec::{ExecBuilder, ExitStatus, Output, DEFAULT_OUTPUT_LIMIT};
pub use vm::files::{LIST_DIR_BYTES_PER_ENTRY, LIST_DIR_LIMIT, READ_FILE_LIMIT};
pub use vm::forward::{ExposeOptions, TcpForwarder, MAX_FORWARDED_CONNECTIONS};
pub use vm::mount::{Mount, SymlinkPolicy, MAX_TAG_LEN};
pub use vm::network::{EgressRule, Network};
pub use vm::volume::{Volume, DEFAULT_VOLUME_MIB};
pub use vm::{Disk, Vm, VmConfig};
pub use worker::control::ControlError;
pub use worker::outcome::VmOutcome;
pub use worker::runtime::{check_kvm, RuntimeDirProblem, VmInfo};
pub use worker::standby::prestart_workers;

/// Image references, sources, the blob store and image configs
/// (the `supermachine-oci` crate).
///
/// ```
/// use supermachine::oci::Source;
/// let source: Source = "alpine:3.20".parse()?;
/// assert_eq!(source.to_string(), "docker.io/library/alpine:3.20");
/// # Ok::<(), supermachine::oci::Error>(())
/// ```
pub use supermachine_oci as oci;
