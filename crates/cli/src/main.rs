//! `supermachine`: run commands in KVM microVMs.

mod attach;
mod cp;
mod images;
mod manage;
mod options;
mod ports;
mod progress;
mod snapshots;
mod tty;

use clap::{CommandFactory, Parser, Subcommand};
use options::{ExecOptions, VmOptions};
use std::path::PathBuf;
use std::process::ExitCode;
use supermachine::{Vm, VmOutcome};

/// Exit code for the CLI's own failures (as `docker run` does), so they
/// are not mistaken for the guest command's.
const OWN_ERROR: u8 = 125;

#[derive(Parser)]
#[command(
    name = "supermachine",
    version,
    about = "Run OCI/Docker images and commands in hardware-isolated KVM microVMs",
    long_about = "Run OCI/Docker images and commands in hardware-isolated KVM microVMs.\n\n\
        Each VM boots the supermachine guest kernel (build it once with `supermachine kernel build`) \
        with a root filesystem mounted read-only under a RAM-backed overlay: writes inside the VM \
        never touch the image.\n\n\
        Foreground: `supermachine run [IMAGE] [-- CMD]`. Background: `supermachine start` prints an \
        id for `exec`, `cp`, `logs` and `stop`; `ps` lists running VMs. Images: `pull`, `images`, \
        `inspect`, `rmi`, `gc` (see `supermachine pull --help` for image sources and registries). \
        Snapshots: `build` bakes an image into a snapshot, `run --snapshot` restores a copy of one, \
        `snapshot ID PATH` takes one of a running VM, `snapshots ls|rm`."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a VM, run a command in it, print its output, and exit with its exit code.
    ///
    /// With an IMAGE, the command is the image's Entrypoint followed by its Cmd, or by
    /// CMD when one is given after `--` (it replaces the Cmd, as in `docker run`); the
    /// image's Env, WorkingDir and User apply unless -e, -w, -u say otherwise. The image
    /// is pulled first if it is not stored (see --pull). Without an IMAGE the VM boots a
    /// small built-in root filesystem made from Debian's busybox-static, and CMD is needed.
    /// The VM is powered off and removed when the command ends.
    #[command(after_help = images::SOURCES_HELP)]
    Run {
        #[command(flatten)]
        vm: VmOptions,
        #[command(flatten)]
        exec: ExecOptions,
        #[arg(short = 'p', long = "publish", value_name = "[HOST:][HOSTPORT:]GUESTPORT", help = ports::PUBLISH_HELP)]
        publish: Vec<String>,
        /// Remove the VM when the command ends. Always on (a foreground VM never outlives
        /// its command); accepted for Docker compatibility.
        #[arg(long)]
        rm: bool,
        /// The command to run (or, with an image that has an Entrypoint, its arguments), after `--`.
        #[arg(last = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Boot a VM in the background and print its id.
    ///
    /// The VM keeps running after this command exits, until `supermachine stop ID`.
    /// The image's command (Entrypoint + Cmd, or Entrypoint + CMD when given after `--`)
    /// is started in it; its output goes to `supermachine logs ID`. Without an image
    /// command and without CMD the VM just runs, waiting for `exec`. Every `exec` into
    /// the VM starts with the image's Env, WorkingDir and User and the -e/-w/-u given here.
    #[command(after_help = images::SOURCES_HELP)]
    Start {
        #[command(flatten)]
        vm: VmOptions,
        /// Environment variable for every exec in this VM, NAME=VALUE (repeatable).
        #[arg(short = 'e', long = "env", value_name = "NAME=VALUE")]
        env: Vec<String>,
        /// Working directory of every exec in this VM (default: the image's WorkingDir).
        #[arg(short = 'w', long = "workdir", value_name = "DIR")]
        workdir: Option<String>,
        /// User of every exec in this VM (default: the image's User).
        #[arg(short = 'u', long = "user", value_name = "USER")]
        user: Option<String>,
        /// Publish a guest TCP port on the host, for as long as the VM
        /// runs (a `supermachine forward` process carries it; see there).
        #[arg(
            short = 'p',
            long = "publish",
            value_name = "[HOST:][HOSTPORT:]GUESTPORT"
        )]
        publish: Vec<String>,
        /// A command to start in the background.
        #[arg(last = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Publish guest TCP ports of a running VM on the host, until the VM
    /// ends or this command is interrupted.
    ///
    /// Prints `HOSTADDR:PORT -> GUESTPORT` for each. Every connection to a
    /// published port is carried over vsock to the guest's agent, which
    /// connects to the port on the guest's loopback: the guest needs no
    /// network, and its service may listen on 127.0.0.1. A connection made
    /// while nothing listens there is reset.
    Forward {
        /// The VM's id (see `supermachine ps`).
        id: String,
        #[arg(short = 'p', long = "publish", required = true, value_name = "[HOST:][HOSTPORT:]GUESTPORT", help = ports::PUBLISH_HELP)]
        publish: Vec<String>,
        /// Started by `start -p`: leave stdout once the ports listen.
        #[arg(long, hide = true)]
        background: bool,
    },
    /// Run a command in a running VM.
    Exec {
        #[command(flatten)]
        exec: ExecOptions,
        /// The VM's id (see `supermachine ps`).
        id: String,
        /// The command to run, after `--`.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Copy files or directories between the host and a running VM.
    ///
    /// One side is `ID:/path/in/guest`, the other a host path:
    /// `supermachine cp ./app ID:/srv/app`, `supermachine cp ID:/var/log/app.log .`
    /// A destination that is an existing directory receives the source under its own name.
    Cp {
        /// Keep setuid, setgid and sticky bits (dropped by default: a
        /// setuid file from a guest must not become one on the host, and
        /// a sticky directory such as a guest's /tmp loses its world
        /// write with its sticky bit).
        #[arg(short = 'p', long)]
        preserve_mode: bool,
        /// Source: a host path or ID:/guest/path.
        src: String,
        /// Destination: a host path or ID:/guest/path.
        dst: String,
    },
    /// List running VMs.
    Ps {
        /// Print JSON (one object per VM) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Stop running VMs (clean guest poweroff, forced after 10 s).
    Stop {
        #[arg(required = true, value_name = "ID")]
        ids: Vec<String>,
    },
    /// Print a VM's serial console: kernel and agent messages, and the output of the
    /// command given to `start`.
    Logs {
        id: String,
        /// Keep printing new output until the VM stops.
        #[arg(short, long)]
        follow: bool,
    },
    /// Pull an image into the local store and build its root filesystem; print its digest.
    ///
    /// Layers are downloaded in parallel and verified (size and sha256) into a
    /// content-addressed store; a blob already stored is never fetched again. Then the
    /// layers are applied in order (whiteouts, hard links, owners, modes, xattrs; without
    /// root) and written as a read-only EROFS image, cached per image digest. Progress goes
    /// to stderr, the manifest digest to stdout.
    #[command(after_help = images::SOURCES_HELP)]
    Pull {
        /// The image: a registry reference, oci:DIR[:TAG] or docker-archive:FILE.
        #[arg(value_name = "IMAGE")]
        image: String,
    },
    /// List pulled images: reference, manifest digest (short), size in the store, when pulled.
    Images {
        /// Print JSON (one object per image) instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Print a pulled image's config, digests and layers as JSON.
    Inspect {
        /// The image, as given to pull.
        #[arg(value_name = "IMAGE")]
        image: String,
    },
    /// Remove pulled images (their blobs stay until `supermachine gc`).
    ///
    /// IMAGE is a reference as given to pull, or a manifest digest (sha256:...) for every
    /// reference to that image. A cached root filesystem no remaining image uses is deleted.
    Rmi {
        #[arg(required = true, value_name = "IMAGE")]
        images: Vec<String>,
    },
    /// Delete blobs and cached root filesystems that no pulled image uses, and leftovers
    /// of interrupted pulls.
    Gc,
    /// Bake an image into a snapshot: boot it, start its workload, wait for it to listen
    /// (--listen), warm it up (--warmup), and snapshot it. Prints KEY<TAB>PATH.
    ///
    /// The snapshot is keyed by a hash of every input (image digest, command, env,
    /// memory, vCPUs, --file contents, kernel arguments, warmup, and the kernel, agent
    /// and worker builds): the same build again prints the same key at once without
    /// booting; any change bakes anew. Start copies with `run --snapshot KEY|PATH`.
    #[command(after_help = images::SOURCES_HELP)]
    Build(Box<snapshots::BuildArgs>),
    /// Snapshot a running VM into PATH (a new directory); the VM keeps running.
    Snapshot {
        /// The VM's id (see `supermachine ps`).
        id: String,
        path: PathBuf,
    },
    /// List or remove snapshots.
    Snapshots {
        #[command(subcommand)]
        action: SnapshotsAction,
    },
    /// Build or locate the guest kernel.
    Kernel {
        #[command(subcommand)]
        action: KernelAction,
    },
}

#[derive(Subcommand)]
enum SnapshotsAction {
    /// List the snapshots in the snapshots directory, newest first.
    Ls {
        /// Print JSON (one object per snapshot) instead of a table.
        #[arg(long)]
        json: bool,
        /// The snapshots directory (default: $SUPERMACHINE_SNAPSHOTS_DIR, else
        /// $SUPERMACHINE_DATA_DIR/snapshots, else ~/.local/supermachine-snapshots).
        #[arg(long, value_name = "DIR")]
        dir: Option<PathBuf>,
    },
    /// Remove snapshots, by name, key or path.
    Rm {
        #[arg(required = true, value_name = "KEY|PATH")]
        snapshots: Vec<String>,
    },
}

#[derive(Subcommand)]
enum KernelAction {
    /// Build the guest kernel if it is not cached (installs Debian build packages when run as root).
    Build,
    /// Print the path of the cached guest kernel.
    Path,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("supermachine: cannot start the async runtime: {e}");
            return ExitCode::from(OWN_ERROR);
        }
    };
    let result = runtime.block_on(dispatch(cli.command));
    // A blocking read of stdin (for -i) cannot be cancelled: do not wait for it.
    runtime.shutdown_background();
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("supermachine: {e}");
            ExitCode::from(OWN_ERROR)
        }
    }
}

async fn dispatch(command: Command) -> Result<i32, supermachine::Error> {
    match command {
        Command::Run {
            vm,
            exec,
            publish,
            rm: _,
            command,
        } => run(vm, exec, &ports::parse_all(&publish)?, command).await,
        Command::Start {
            vm,
            env,
            workdir,
            user,
            publish,
            command,
        } => {
            let publish = ports::parse_all(&publish)?;
            let env = options::parse_env(&env)?;
            let (image, mut config) = vm.into_config().await?;
            config.env = env;
            config.workdir = workdir;
            config.user = user;
            // No command anywhere: the VM just runs, waiting for `exec`.
            let command = match image.command(&command) {
                Ok(argv) => argv,
                Err(supermachine::Error::NoCommand { .. }) => Vec::new(),
                Err(e) => return Err(e),
            };
            let info = Vm::start_detached(&image, &config, &command).await?;
            if !publish.is_empty() {
                match ports::spawn_background(&info.id, &publish) {
                    Ok(lines) => lines.iter().for_each(|l| eprintln!("supermachine: {l}")),
                    Err(e) => {
                        // No VM left running without the ports asked for.
                        if let Ok(vm) = Vm::attach(&info.id) {
                            let _ = vm.stop().await;
                        }
                        return Err(e);
                    }
                }
            }
            println!("{}", info.id);
            Ok(0)
        }
        Command::Forward {
            id,
            publish,
            background,
        } => ports::forward(&id, &ports::parse_all(&publish)?, background).await,
        Command::Exec { exec, id, command } => {
            let vm = Vm::attach(&id)?;
            let tty = exec.tty;
            let child = exec.builder(&vm, command)?.spawn().await?;
            match attach::attach(child, exec.interactive, tty).await {
                Ok(status) => Ok(status.shell_code()),
                Err(e) => Err(vm.explain_lost(e).await),
            }
        }
        Command::Cp {
            src,
            dst,
            preserve_mode,
        } => cp::run(&src, &dst, preserve_mode).await.map(|()| 0),
        Command::Pull { image } => images::pull(&image).await,
        Command::Images { json } => images::list(json),
        Command::Inspect { image } => images::inspect(&image),
        Command::Rmi { images: refs } => images::remove(&refs),
        Command::Gc => images::gc(),
        Command::Build(args) => snapshots::build(*args).await,
        Command::Snapshot { id, path } => snapshots::snapshot(&id, &path).await,
        Command::Snapshots {
            action: SnapshotsAction::Ls { json, dir },
        } => snapshots::ls(json, dir),
        Command::Snapshots {
            action: SnapshotsAction::Rm { snapshots: specs },
        } => snapshots::rm(&specs),
        Command::Ps { json } => manage::ps(json).map(|()| 0),
        Command::Stop { ids } => manage::stop(&ids).await,
        Command::Logs { id, follow } => manage::logs(&id, follow).await.map(|()| 0),
        Command::Kernel {
            action: KernelAction::Build,
        } => supermachine::kernel::build().map(|p| {
            println!("{}", p.display());
            0
        }),
        Command::Kernel {
            action: KernelAction::Path,
        } => supermachine::kernel::path().map(|p| {
            println!("{}", p.display());
            0
        }),
    }
}

async fn run(
    vm: VmOptions,
    exec: ExecOptions,
    publish: &[ports::Publish],
    command: Vec<String>,
) -> Result<i32, supermachine::Error> {
    if vm.is_builtin() && command.is_empty() {
        // The built-in image has no command of its own: a usage error, as before images.
        let mut cli = Cli::command();
        cli.build();
        let mut usage = match cli.find_subcommand_mut("run") {
            Some(run) => run.clone().bin_name("supermachine run"),
            None => cli,
        };
        usage
            .error(
                clap::error::ErrorKind::MissingRequiredArgument,
                "give an IMAGE, or a command after `--` for the built-in image \
                 (supermachine run -- echo hello)",
            )
            .exit();
    }
    let (image, config) = vm.into_config().await?;
    // Checked before booting: an image with nothing to run fails at once.
    let argv = image.command(&command)?;
    let vm = Vm::start(&image, &config).await?;
    // Listening before the command starts, for as long as it runs.
    let _published = ports::expose_all(&vm, publish).await?;
    let tty = exec.tty;
    let interactive = exec.interactive;
    let child = exec.builder(&vm, argv)?.spawn().await?;
    let result = match attach::attach(child, interactive, tty).await {
        Ok(status) => Ok(status),
        Err(e) => Err(vm.explain_lost(e).await),
    };
    match result {
        Ok(status) => {
            vm.stop().await?;
            Ok(status.shell_code())
        }
        // The command powered the guest off (e.g. `poweroff`): that is a clean end.
        Err(supermachine::Error::VmEnded {
            outcome: VmOutcome::PowerOff,
            ..
        }) => Ok(0),
        Err(e) => Err(e),
    }
}
