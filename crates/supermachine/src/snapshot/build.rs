//! Baking: boot an image, start its workload, wait for it to listen, warm
//! it up, and snapshot it; cached by a key over every input, so the same
//! build twice boots once.

use crate::error::Error;
use crate::hash::{file_digest, Hasher};
use crate::image::pull::PullOptions;
use crate::image::Image;
use crate::image::{assets, kernel};
use crate::vm::{Vm, VmConfig};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::time::{Duration, Instant};
use supermachine_oci::lock::{FileLock, LockMode};
use supermachine_oci::PullPolicy;
use supermachine_protocol::worker_control::HOT_PAGES_FILE;

/// Bumped when the meaning of a build changes (what a bake does), so old
/// snapshots are not reused for new semantics.
const BUILD_VERSION: &str = "supermachine-build-v1";
/// Environment variable naming the default snapshots directory.
///
/// ```
/// # fn main() -> Result<(), supermachine::Error> {
/// std::env::set_var(supermachine::SNAPSHOTS_DIR_ENV, "/srv/snapshots");
/// assert_eq!(supermachine::default_snapshots_dir()?, std::path::Path::new("/srv/snapshots"));
/// # Ok(()) }
/// ```
pub const SNAPSHOTS_DIR_ENV: &str = "SUPERMACHINE_SNAPSHOTS_DIR";

/// A warmup step: receives the booted VM (workload started and, if asked,
/// listening) and prepares it before the snapshot, e.g. by running the
/// commands that fill caches.
///
/// ```
/// use supermachine::{BuildOptions, Image, Warmup};
/// let fill_cache: Warmup = supermachine::warmup(|vm| Box::pin(async move {
///     vm.exec(["ls", "-R", "/usr"]).await?;
///     Ok(())
/// }));
/// let options = BuildOptions { warmup: Some(fill_cache), ..BuildOptions::new(Image::builtin()) };
/// assert!(options.warmup.is_some());
/// ```
pub type Warmup = Box<
    dyn for<'a> FnOnce(&'a Vm) -> Pin<Box<dyn Future<Output = Result<(), Error>> + Send + 'a>>
        + Send,
>;

/// Boxes a warmup closure as a [`Warmup`] (spelling out the higher-ranked
/// closure type is otherwise awkward).
///
/// ```
/// let w = supermachine::warmup(|vm| Box::pin(async move {
///     vm.exec(["true"]).await?;
///     Ok(())
/// }));
/// # let _ = w;
/// ```
pub fn warmup<F>(f: F) -> Warmup
where
    F: for<'a> FnOnce(&'a Vm) -> Pin<Box<dyn Future<Output = Result<(), Error>> + Send + 'a>>
        + Send
        + 'static,
{
    Box::new(f)
}

/// A host file copied into the guest before the workload starts.
///
/// ```
/// use supermachine::{BuildOptions, ExtraFile, Image};
/// let config = ExtraFile {
///     host_path: "deploy/app.toml".into(),
///     guest_path: "/etc/app.toml".into(),
/// };
/// let options = BuildOptions { extra_files: vec![config], ..BuildOptions::new(Image::builtin()) };
/// assert_eq!(options.extra_files[0].guest_path, "/etc/app.toml");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExtraFile {
    /// The file on the host.
    pub host_path: PathBuf,
    /// Where it goes in the guest (absolute).
    pub guest_path: String,
}

/// What a bake starts from: an image in hand, or a reference to get the
/// way `supermachine run` gets one.
///
/// ```
/// use supermachine::{BuildImage, BuildOptions, Image};
/// let by_ref = BuildOptions::new(BuildImage::Ref("alpine:latest".into()));
/// let in_hand = BuildOptions::new(Image::builtin());
/// assert!(matches!(by_ref.image, BuildImage::Ref(_)));
/// assert!(matches!(in_hand.image, BuildImage::Image(_)));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BuildImage {
    /// An image already in hand (pulled, built or from a snapshot).
    Image(Image),
    /// A registry reference (`alpine:latest`), `oci:DIR[:TAG]` or
    /// `docker-archive:FILE`: taken from the local image store when it is
    /// there, else pulled, with the registry settings of the environment
    /// ([`PullOptions::from_env`]) — what `supermachine run` does.
    Ref(String),
}

impl From<Image> for BuildImage {
    fn from(image: Image) -> BuildImage {
        BuildImage::Image(image)
    }
}

impl BuildImage {
    /// The image to bake: itself, or the reference pulled (store first).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), supermachine::Error> {
    /// use supermachine::BuildImage;
    /// let image = BuildImage::Ref("alpine:latest".into()).resolve().await?;
    /// println!("{}", image.digest().expect("an OCI image"));
    /// # Ok(()) }
    /// ```
    pub async fn resolve(&self) -> Result<Image, Error> {
        match self {
            BuildImage::Image(image) => Ok(image.clone()),
            BuildImage::Ref(reference) => {
                let options = PullOptions {
                    policy: PullPolicy::IfMissing,
                    ..PullOptions::from_env()?
                };
                Image::pull(reference, &options).await
            }
        }
    }
}

/// How to bake an image into a snapshot ([`Image::build`]).
///
/// ```
/// use supermachine::{BuildOptions, Image};
/// let options = BuildOptions {
///     cmd: Some(vec!["sh".into(), "-c".into(), "httpd -f -p 80".into()]),
///     listener_required: true,
///     guest_port: 80,
///     ..BuildOptions::new(Image::builtin())
/// };
/// assert_eq!(options.memory_mib, 256);
/// ```
pub struct BuildOptions {
    /// What to bake (resolved when the build starts).
    pub image: BuildImage,
    /// Names the snapshot directory (else the key names it). A named
    /// snapshot whose inputs changed is re-baked in place.
    pub name: Option<String>,
    /// Guest memory in MiB.
    pub memory_mib: u64,
    /// vCPUs.
    pub vcpus: u8,
    /// The workload, started in the background before the snapshot.
    /// `None`: the image's own command, if it has one.
    pub cmd: Option<Vec<String>>,
    /// Environment of the workload and of every later exec.
    pub env: Vec<(String, String)>,
    /// Working directory of the workload and of every later exec (as
    /// [`crate::VmConfig::workdir`]).
    pub workdir: Option<String>,
    /// User of the workload and of every later exec (as
    /// [`crate::VmConfig::user`]).
    pub user: Option<String>,
    /// Copied into the guest before the workload starts; their contents
    /// are part of the key.
    pub extra_files: Vec<ExtraFile>,
    /// Extra guest kernel command line arguments.
    pub extra_kernel_args: Vec<String>,
    /// The bake's network (for a warmup that downloads, say). Whether there
    /// is one is part of the key (the snapshot has a network card or not);
    /// the policy is not: restores get their own (see
    /// [`crate::VmConfig::network`]).
    pub network: Option<crate::Network>,
    /// Run against the VM after the workload starts and before the
    /// snapshot (to warm caches); see [`Warmup`].
    pub warmup: Option<Warmup>,
    /// Part of the key in place of the warmup closure (which cannot be
    /// hashed): change it when the warmup changes.
    pub warmup_tag: Option<String>,
    /// Wait until something in the guest listens on TCP `guest_port`.
    pub listener_required: bool,
    /// The guest TCP port of `listener_required`.
    pub guest_port: u16,
    /// Where snapshots go; `None`: [`default_snapshots_dir`]
    /// (`~/.local/supermachine-snapshots` unless the environment says).
    pub snapshots_dir: Option<PathBuf>,
    /// The boot and the listener wait each get this long. The warmup is
    /// not timed: it runs until it returns (give its commands timeouts of
    /// their own, or wrap it in `tokio::time::timeout`).
    pub timeout: Duration,
}

impl BuildOptions {
    /// Default options for baking `image` (256 MiB, 1 vCPU, 120 s for the
    /// boot and for the listener wait).
    ///
    /// ```
    /// use supermachine::{BuildOptions, Image};
    /// let options = BuildOptions::new(Image::builtin());
    /// assert_eq!((options.memory_mib, options.vcpus, options.timeout.as_secs()), (256, 1, 120));
    /// assert!(options.cmd.is_none() && options.name.is_none());
    /// ```
    pub fn new(image: impl Into<BuildImage>) -> BuildOptions {
        BuildOptions {
            image: image.into(),
            name: None,
            memory_mib: 256,
            vcpus: 1,
            cmd: None,
            env: Vec::new(),
            workdir: None,
            user: None,
            extra_files: Vec::new(),
            extra_kernel_args: Vec::new(),
            network: None,
            warmup: None,
            warmup_tag: None,
            listener_required: false,
            guest_port: 80,
            snapshots_dir: None,
            timeout: Duration::from_secs(120),
        }
    }
}

/// The default snapshots directory: `$SUPERMACHINE_SNAPSHOTS_DIR`, else
/// `$SUPERMACHINE_DATA_DIR/snapshots` when a data directory is named,
/// else `~/.local/supermachine-snapshots` (where the Node package's API
/// has always put them).
///
/// ```
/// # fn main() -> Result<(), supermachine::Error> {
/// let dir = supermachine::default_snapshots_dir()?;
/// let from_env = std::env::var_os(supermachine::SNAPSHOTS_DIR_ENV).is_some_and(|v| !v.is_empty())
///     || std::env::var_os("SUPERMACHINE_DATA_DIR").is_some_and(|v| !v.is_empty());
/// assert!(from_env || dir.ends_with(".local/supermachine-snapshots"));
/// # Ok(()) }
/// ```
pub fn default_snapshots_dir() -> Result<PathBuf, Error> {
    let env = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    if let Some(d) = env(SNAPSHOTS_DIR_ENV) {
        return Ok(PathBuf::from(d));
    }
    // A data directory named on purpose (an isolated setup, a test) keeps
    // its snapshots with the rest of its data.
    if let Some(d) = env(supermachine_oci::DATA_DIR_ENV) {
        return Ok(PathBuf::from(d).join("snapshots"));
    }
    match env("HOME") {
        Some(home) => Ok(PathBuf::from(home).join(".local/supermachine-snapshots")),
        None => Err(Error::io(
            "finding the snapshots directory",
            std::io::Error::other(format!(
                "neither {SNAPSHOTS_DIR_ENV}, SUPERMACHINE_DATA_DIR nor HOME is set"
            )),
        )),
    }
}

fn io_err(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> Error {
    let what = what.into();
    move |e| Error::io(what, e)
}

/// The build key: a hash over every input of the bake.
///
/// ```no_run
/// # fn demo() -> Result<(), supermachine::Error> {
/// use supermachine::{BuildOptions, Image};
/// let key = supermachine::build_key(&BuildOptions::new(Image::builtin()))?;
/// println!("a build of the built-in image is cached as {key}");
/// # Ok(()) }
/// ```
pub fn build_key(o: &BuildOptions) -> Result<String, Error> {
    match &o.image {
        BuildImage::Image(image) => key_of(o, image),
        BuildImage::Ref(reference) => Err(Error::InvalidArgument(format!(
            "the build key of {reference} hashes the image's digest: resolve it first (BuildImage::resolve)"
        ))),
    }
}

/// The build key of `o` baking `image` (its resolved image).
fn key_of(o: &BuildOptions, image: &Image) -> Result<String, Error> {
    let mut h = Hasher::new(BUILD_VERSION);
    let image_identity = match image.snapshot() {
        Some(_) => {
            return Err(Error::InvalidArgument(
                "a snapshot cannot be baked again: build from its image".into(),
            ))
        }
        None => match image.digest() {
            Some(d) => d.to_string(),
            None => {
                let rootfs = image.rootfs()?;
                file_digest(&rootfs).map_err(io_err(format!("reading {}", rootfs.display())))?
            }
        },
    };
    h.field(image_identity.as_bytes());
    for (what, path) in [
        ("kernel", kernel::path()?),
        ("initramfs", assets::initramfs()?),
        ("worker", assets::worker_binary()?),
    ] {
        let digest =
            file_digest(&path).map_err(io_err(format!("reading the {what} {}", path.display())))?;
        h.field(digest.as_bytes());
    }
    h.field(&o.memory_mib.to_le_bytes()).field(&[o.vcpus]);
    match &o.cmd {
        None => h.field(b"image-command"),
        Some(argv) => {
            h.field(b"cmd").field(&(argv.len() as u64).to_le_bytes());
            for a in argv {
                h.field(a.as_bytes());
            }
            &mut h
        }
    };
    h.field(&(o.env.len() as u64).to_le_bytes());
    for (k, v) in &o.env {
        h.field(k.as_bytes()).field(v.as_bytes());
    }
    for opt in [&o.workdir, &o.user, &o.warmup_tag] {
        h.field(opt.as_deref().unwrap_or("\0none").as_bytes());
    }
    h.field(&(o.extra_files.len() as u64).to_le_bytes());
    for f in &o.extra_files {
        let bytes = std::fs::read(&f.host_path).map_err(io_err(format!(
            "reading extra file {}",
            f.host_path.display()
        )))?;
        h.field(f.guest_path.as_bytes()).field(&bytes);
    }
    h.field(&(o.extra_kernel_args.len() as u64).to_le_bytes());
    for a in &o.extra_kernel_args {
        h.field(a.as_bytes());
    }
    // Only when there is a card, so the keys of bakes without one stay
    // what they were before networks existed.
    if o.network
        .as_ref()
        .is_some_and(|n| *n != crate::Network::Off)
    {
        h.field(b"network");
    }
    h.field(&[o.listener_required as u8])
        .field(&o.guest_port.to_le_bytes());
    // A warmup closure without a tag would make two different bakes share
    // a key; mark its presence at least.
    h.field(&[o.warmup.is_some() as u8]);
    Ok(h.short())
}

impl Image {
    /// Bakes `options.image` (pulled first when it is a reference, see
    /// [`BuildImage`]) into a snapshot and returns it as an image to
    /// start VMs from ([`crate::Vm::start`] restores it): boots it, copies
    /// the extra files in, starts the workload in the background, waits for
    /// it to listen on `guest_port` if `listener_required`, runs the warmup,
    /// and snapshots the VM. The snapshot is keyed by every input
    /// ([`build_key`]): a build whose key exists returns at once without
    /// booting, and concurrent builds of one key bake once.
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), supermachine::Error> {
    /// use supermachine::{BuildOptions, Image, Vm, VmConfig};
    /// let options = BuildOptions {
    ///     cmd: Some(vec!["sleep".into(), "infinity".into()]),
    ///     warmup: Some(supermachine::warmup(|vm| Box::pin(async move {
    ///         vm.exec(["sh", "-c", "echo warm > /tmp/cache"]).await?;
    ///         Ok(())
    ///     }))),
    ///     warmup_tag: Some("v1".into()),
    ///     ..BuildOptions::new(Image::builtin())
    /// };
    /// let image = Image::build(options).await?;
    /// let vm = Vm::start(&image, &VmConfig::default()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn build(options: BuildOptions) -> Result<Image, Error> {
        Ok(build(options).await?.image)
    }
}

/// What [`build`] did.
///
/// ```no_run
/// # async fn demo() -> Result<(), supermachine::Error> {
/// use supermachine::{BuildOptions, Image};
/// let built = supermachine::build(BuildOptions::new(Image::builtin())).await?;
/// let how = if built.cached { "reused" } else { "baked" };
/// println!("{how} {} (key {})", built.dir.display(), built.key);
/// # Ok(()) }
/// ```
pub struct Built {
    /// The snapshot, as an image to start VMs from.
    pub image: Image,
    /// The build key: a digest of every input.
    pub key: String,
    /// The snapshot directory.
    pub dir: PathBuf,
    /// `true` when an existing snapshot was reused (nothing booted).
    pub cached: bool,
}

/// [`Image::build`], also saying where the snapshot is and whether it was
/// a cache hit (for `supermachine build`).
///
/// ```no_run
/// # async fn demo() -> Result<(), supermachine::Error> {
/// use supermachine::{BuildOptions, Image};
/// let options = BuildOptions {
///     name: Some("web".into()),
///     cmd: Some(vec!["httpd".into(), "-f".into(), "-p".into(), "80".into()]),
///     listener_required: true,
///     ..BuildOptions::new(Image::builtin())
/// };
/// let built = supermachine::build(options).await?;
/// assert!(built.dir.ends_with("web"));
/// # Ok(()) }
/// ```
pub async fn build(options: BuildOptions) -> Result<Built, Error> {
    let network = options.network.clone();
    let built = build_snapshot(options).await?;
    Ok(Built {
        image: built.image.with_network(network),
        ..built
    })
}

async fn build_snapshot(options: BuildOptions) -> Result<Built, Error> {
    let image = options.image.resolve().await?;
    let key = key_of(&options, &image)?;
    let root = match &options.snapshots_dir {
        Some(d) => d.clone(),
        None => default_snapshots_dir()?,
    };
    let name = match &options.name {
        Some(n) if valid_name(n) => n.clone(),
        Some(n) => {
            return Err(Error::InvalidArgument(format!(
                "snapshot name {n:?}: use letters, digits, '.', '-' and '_' (not starting with '.')"
            )))
        }
        None => key.clone(),
    };
    let dir = root.join(&name);
    crate::paths::create_private_dir_all(&root)
        .map_err(io_err(format!("creating {}", root.display())))?;
    if let Some(hit) = cached(&dir, &key) {
        return Ok(Built {
            image: hit,
            key,
            dir,
            cached: true,
        });
    }
    // One bake per name at a time, across processes: the second waits and
    // then finds the first one's snapshot.
    let lock_path = root.join(format!(".{name}.lock"));
    let lock =
        tokio::task::spawn_blocking(move || FileLock::acquire(&lock_path, LockMode::Exclusive))
            .await
            .map_err(|source| Error::Task {
                task: "build lock",
                source,
            })??;
    if let Some(hit) = cached(&dir, &key) {
        return Ok(Built {
            image: hit,
            key,
            dir,
            cached: true,
        });
    }
    let image = bake(options, &image, &key, &dir).await?;
    drop(lock);
    Ok(Built {
        image,
        key,
        dir,
        cached: false,
    })
}

fn valid_name(n: &str) -> bool {
    !n.is_empty()
        && !n.starts_with('.')
        && n.len() <= 128
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || "._-".contains(c))
}

/// The snapshot at `dir` if it exists and was built with `key`.
fn cached(dir: &Path, key: &str) -> Option<Image> {
    let image = Image::from_snapshot(dir).ok()?;
    (image.snapshot_key() == Some(key)).then_some(image)
}

async fn bake(
    mut options: BuildOptions,
    image: &Image,
    key: &str,
    dir: &Path,
) -> Result<Image, Error> {
    let started = Instant::now();
    let config = VmConfig {
        memory_mib: options.memory_mib,
        vcpus: options.vcpus,
        env: options.env.clone(),
        workdir: options.workdir.clone(),
        user: options.user.clone(),
        extra_kernel_args: options.extra_kernel_args.clone(),
        network: options.network.clone(),
        boot_timeout: options.timeout,
        ..VmConfig::default()
    };
    let vm = Vm::start(image, &config).await?;
    let command = prepare(&vm, image, &mut options).await?;
    let mut vm = vm;
    vm.set_command(command);
    // A named snapshot being re-baked: build beside it, then swap.
    let target = if dir.exists() {
        dir.with_file_name(format!(
            ".{}.rebake-{}",
            dir.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ))
    } else {
        dir.to_path_buf()
    };
    vm.snapshot_and_stop(&target, Some(key.to_string())).await?;
    record_hot_pages(&target, options.timeout).await;
    if target != dir {
        let old = dir.with_file_name(format!(
            ".{}.old-{}",
            dir.file_name().unwrap_or_default().to_string_lossy(),
            std::process::id()
        ));
        std::fs::rename(dir, &old).map_err(io_err(format!("moving {} aside", dir.display())))?;
        std::fs::rename(&target, dir).map_err(io_err(format!("installing {}", dir.display())))?;
        let _ = std::fs::remove_dir_all(&old);
    }
    tracing::info!(key, "baked {} in {:?}", dir.display(), started.elapsed());
    Image::from_snapshot(dir)
}

/// What a bake does between the boot and the snapshot: copies the extra
/// files in, starts the workload, waits for its listener, runs the warmup
/// (taken out of `options`). Returns the workload's command.
async fn prepare(vm: &Vm, image: &Image, options: &mut BuildOptions) -> Result<Vec<String>, Error> {
    for f in &options.extra_files {
        let bytes = std::fs::read(&f.host_path).map_err(io_err(format!(
            "reading extra file {}",
            f.host_path.display()
        )))?;
        if let Some(parent) = Path::new(&f.guest_path).parent() {
            let parent = parent.to_string_lossy();
            if !parent.is_empty() && parent != "/" {
                vm.mkdir(&parent, true).await?;
            }
        }
        vm.write_file(&f.guest_path, &bytes).await?;
    }
    let command = match &options.cmd {
        Some(argv) => argv.clone(),
        None => image.command(&[]).unwrap_or_default(),
    };
    if !command.is_empty() {
        vm.exec_builder().argv(&command).start_detached().await?;
    }
    if options.listener_required {
        wait_for_listener(vm, options.guest_port, options.timeout).await?;
    }
    if let Some(warmup) = options.warmup.take() {
        // Not under `options.timeout`: a warmup is the caller's code and
        // may run long commands (an install) with timeouts of its own.
        warmup(vm).await?;
    }
    Ok(command)
}

/// Restores the new snapshot once and runs one command in the copy, which
/// records the snapshot's hot-page list (see `Vm::record_hot_pages`) now,
/// at bake time, instead of in the first restore somebody waits for; and
/// detached restores, which never record one, find it too. The list is
/// only a hint: a failure here costs later restores speed, not
/// correctness, so it is logged, not returned.
async fn record_hot_pages(snapshot: &Path, timeout: Duration) {
    let recorded = async {
        let image = Image::from_snapshot(snapshot)?;
        let config = VmConfig {
            boot_timeout: timeout,
            ..VmConfig::default()
        };
        let vm = Vm::start(&image, &config).await?;
        // Any answer will do, 127 included (an image without `true`): it is
        // the restore's and the agent's exec path that the list is about.
        let exec = vm
            .exec_builder()
            .argv(["true"])
            .timeout(timeout)
            .output()
            .await;
        // Waits for the recording the exec set off.
        let stop = vm.stop().await;
        exec.and(stop)
    };
    match recorded.await {
        Ok(()) if snapshot.join(HOT_PAGES_FILE).exists() => {
            tracing::debug!("recorded the hot pages of {}", snapshot.display())
        }
        Ok(()) => tracing::warn!(
            "no hot-page list recorded for {}; its first restore will record one",
            snapshot.display()
        ),
        Err(e) => tracing::warn!(
            "restoring {} to record its hot pages failed: {e}; \
             its first restore will try again",
            snapshot.display()
        ),
    }
}

/// Polls the guest's TCP tables until something listens on `port` (the
/// guest has no event for that to wait on); the worker's end is an event.
/// The tables are read through the agent, so the image needs no program
/// for it (a distroless image has no `cat`).
async fn wait_for_listener(vm: &Vm, port: u16, timeout: Duration) -> Result<(), Error> {
    let ended = vm.exit_watch();
    let polled = async {
        loop {
            let mut tables = String::new();
            for table in TCP_TABLES {
                match vm.read_file_limited(table, TCP_TABLE_LIMIT).await {
                    Ok(bytes) => tables.push_str(&String::from_utf8_lossy(&bytes)),
                    // A guest kernel without IPv6 has no tcp6 table.
                    Err(e) if e.is_not_found() => {}
                    Err(e) => return Err(e),
                }
            }
            if listens_on(&tables, port) {
                return Ok(());
            }
            tokio::time::sleep(LISTENER_POLL).await;
        }
    };
    tokio::select! {
        listening = polled => listening,
        () = ended.ended() => Err(Error::VmEnded {
            outcome: vm.try_outcome().unwrap_or(crate::VmOutcome::Stopped),
            serial_log: Some(vm.serial_log().to_path_buf()),
        }),
        () = tokio::time::sleep(timeout) => Err(Error::NoListener {
            port,
            secs: timeout.as_secs(),
            serial_log: vm.serial_log().to_path_buf(),
        }),
    }
}

/// How often the guest's TCP tables are read while waiting for a listener.
const LISTENER_POLL: Duration = Duration::from_millis(50);
/// The guest's TCP socket tables (IPv4, IPv6).
const TCP_TABLES: [&str; 2] = ["/proc/net/tcp", "/proc/net/tcp6"];
/// Most bytes kept of one table: ~150 bytes a socket, so room for
/// 100 000 of them, and a bound on what a guest can make the host hold.
const TCP_TABLE_LIMIT: u64 = 16 << 20;

/// Whether a `/proc/net/tcp{,6}` table has a socket in LISTEN state (0A)
/// on local `port`.
fn listens_on(tables: &str, port: u16) -> bool {
    let want = format!("{port:04X}");
    tables.lines().any(|line| {
        let mut fields = line.split_whitespace();
        let (Some(_slot), Some(local), Some(_remote), Some(state)) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return false;
        };
        state == "0A" && local.rsplit(':').next() == Some(want.as_str())
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::fake::vm_answering;
    use supermachine_protocol::{AgentMessage, FileKind, FileStat, Request};

    #[test]
    fn listener_lines_parse() {
        let tcp = "  sl  local_address rem_address   st tx_queue rx_queue\n\
                   0: 00000000:0050 00000000:0000 0A 00000000:00000000 00:00000000 00000000\n\
                   1: 0100007F:1F90 0100007F:C350 01 00000000:00000000 00:00000000 00000000\n";
        assert!(listens_on(tcp, 80));
        assert!(!listens_on(tcp, 8080), "established, not listening");
        let tcp6 =
            "0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 0\n";
        assert!(listens_on(tcp6, 8080));
        assert!(!listens_on("garbage", 80));
    }

    /// A guest whose agent answers reads of `/proc/net/tcp` with `table`
    /// and every exec as a guest without that program would (127).
    fn guest_with_tcp_table(dir: &Path, table: &'static str) -> Vm {
        vm_answering(dir, move |request| match request {
            Request::ReadFile { path } if path == "/proc/net/tcp" => vec![
                AgentMessage::Stat(FileStat {
                    kind: FileKind::File,
                    mode: 0o444,
                    uid: 0,
                    gid: 0,
                    size: 0,
                    mtime: 0,
                    link_target: None,
                }),
                AgentMessage::Data(table.as_bytes().to_vec()),
                AgentMessage::Done {
                    count: table.len() as u64,
                },
            ],
            Request::ReadFile { path } => vec![AgentMessage::Error {
                kind: supermachine_protocol::ErrorKind::NotFound,
                message: format!("read {path}: not found"),
            }],
            _ => vec![
                AgentMessage::Stderr(b"sh: not found\n".to_vec()),
                AgentMessage::Exited(crate::ExitStatus {
                    code: Some(127),
                    ..Default::default()
                }),
            ],
        })
    }

    /// Failed before the fix: the warmup was cut off by the per-stage
    /// timeout (`WarmupTimeout`), though the seed lets a warmup run its own
    /// long commands (an `npm install` with a 10-minute exec timeout).
    #[tokio::test(start_paused = true)]
    async fn the_warmup_is_not_capped_by_the_stage_timeout() {
        let dir = tempfile::tempdir().unwrap();
        let vm = guest_with_tcp_table(dir.path(), "");
        let mut options = BuildOptions {
            timeout: Duration::from_secs(1),
            warmup: Some(warmup(|_vm| {
                Box::pin(async move {
                    tokio::time::sleep(Duration::from_secs(3600)).await;
                    Ok(())
                })
            })),
            ..BuildOptions::new(Image::builtin())
        };
        let command = prepare(&vm, &Image::builtin(), &mut options).await.unwrap();
        assert!(command.is_empty(), "no workload was asked for");
        assert!(options.warmup.is_none(), "the warmup ran");
    }

    /// Failed before the fix: the listener check ran `cat` in the guest, so
    /// an image without `cat` never saw its listener (NoListener).
    #[tokio::test]
    async fn the_listener_check_needs_no_program_in_the_image() {
        let dir = tempfile::tempdir().unwrap();
        let table = "  sl  local_address rem_address   st\n\
                     0: 00000000:1F90 00000000:0000 0A 00000000:00000000\n";
        let vm = guest_with_tcp_table(dir.path(), table);
        let mut options = BuildOptions {
            timeout: Duration::from_secs(5),
            listener_required: true,
            guest_port: 8080,
            ..BuildOptions::new(Image::builtin())
        };
        prepare(&vm, &Image::builtin(), &mut options).await.unwrap();
        // A port nobody listens on is still reported, naming the port.
        let mut options = BuildOptions {
            timeout: Duration::from_millis(300),
            listener_required: true,
            guest_port: 80,
            ..BuildOptions::new(Image::builtin())
        };
        let e = prepare(&vm, &Image::builtin(), &mut options)
            .await
            .unwrap_err();
        assert!(matches!(e, Error::NoListener { port: 80, .. }), "{e}");
    }

    #[test]
    fn names_are_checked() {
        assert!(valid_name("app-v1.2_x"));
        assert!(!valid_name(".hidden"));
        assert!(!valid_name("a/b"));
        assert!(!valid_name(""));
    }
}
