//! `supermachine`: run commands in KVM microVMs.

mod attach;
mod cp;
mod manage;
mod options;
mod tty;

use clap::{Parser, Subcommand};
use options::{ExecOptions, VmOptions};
use std::process::ExitCode;
use supermachine::{Vm, VmOutcome};

/// Exit code for the CLI's own failures (as `docker run` does), so they
/// are not mistaken for the guest command's.
const OWN_ERROR: u8 = 125;

#[derive(Parser)]
#[command(
    name = "supermachine",
    version,
    about = "Run commands in hardware-isolated KVM microVMs",
    long_about = "Run commands in hardware-isolated KVM microVMs.\n\n\
        Each VM boots the supermachine guest kernel (build it once with `supermachine kernel build`) \
        with a root filesystem mounted read-only under a RAM-backed overlay: writes inside the VM \
        never touch the image.\n\n\
        Foreground: `supermachine run -- CMD`. Background: `supermachine start` prints an id for \
        `exec`, `cp`, `logs` and `stop`; `ps` lists running VMs."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a VM, run a command in it, print its output, and exit with its exit code.
    ///
    /// The VM is powered off and removed when the command ends. Without --rootfs the VM
    /// uses a small built-in root filesystem made from Debian's busybox-static.
    Run {
        #[command(flatten)]
        vm: VmOptions,
        #[command(flatten)]
        exec: ExecOptions,
        /// Remove the VM when the command ends. Always on (a foreground VM never outlives
        /// its command); accepted for Docker compatibility.
        #[arg(long)]
        rm: bool,
        /// The command to run, after `--`.
        #[arg(last = true, required = true, value_name = "CMD")]
        command: Vec<String>,
    },
    /// Boot a VM in the background and print its id.
    ///
    /// The VM keeps running after this command exits, until `supermachine stop ID`.
    /// A command given after `--` is started in it; its output goes to `supermachine logs ID`.
    Start {
        #[command(flatten)]
        vm: VmOptions,
        /// Environment variable for every exec in this VM, NAME=VALUE (repeatable).
        #[arg(short = 'e', long = "env", value_name = "NAME=VALUE")]
        env: Vec<String>,
        /// A command to start in the background.
        #[arg(last = true, value_name = "CMD")]
        command: Vec<String>,
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
    /// Build or locate the guest kernel.
    Kernel {
        #[command(subcommand)]
        action: KernelAction,
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
            rm: _,
            command,
        } => run(vm, exec, command).await,
        Command::Start { vm, env, command } => {
            let (image, mut config) = vm.into_config()?;
            config.env = options::parse_env(&env)?;
            let info = Vm::start_detached(&image, &config, &command).await?;
            println!("{}", info.id);
            Ok(0)
        }
        Command::Exec { exec, id, command } => {
            let vm = Vm::attach(&id)?;
            let tty = exec.tty;
            let child = exec.builder(&vm, command)?.spawn().await?;
            match attach::attach(child, exec.interactive, tty).await {
                Ok(status) => Ok(status.shell_code()),
                Err(e) => Err(vm.explain_lost(e).await),
            }
        }
        Command::Cp { src, dst } => cp::run(&src, &dst).await.map(|()| 0),
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
    command: Vec<String>,
) -> Result<i32, supermachine::Error> {
    let (image, config) = vm.into_config()?;
    let vm = Vm::start(&image, &config).await?;
    let tty = exec.tty;
    let interactive = exec.interactive;
    let child = exec.builder(&vm, command)?.spawn().await?;
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
