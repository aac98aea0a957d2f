//! `supermachine`: run commands in KVM microVMs.

use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;
use supermachine::{Disk, ExecRequest, Vm, VmConfig, VmOutcome};

#[derive(Parser)]
#[command(
    name = "supermachine",
    version,
    about = "Run commands in hardware-isolated KVM microVMs",
    long_about = "Run commands in hardware-isolated KVM microVMs.\n\n\
        Each VM boots the supermachine guest kernel (build it once with `supermachine kernel build`) \
        with a root filesystem mounted read-only under a RAM-backed overlay: writes inside the VM \
        never touch the image."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Boot a VM, run a command in it, print its output, and exit with its exit code.
    ///
    /// Without --rootfs the VM uses a small built-in root filesystem made from
    /// Debian's busybox-static. The VM is powered off when the command ends.
    Run(RunArgs),
    /// Build or locate the guest kernel.
    Kernel {
        #[command(subcommand)]
        action: KernelAction,
    },
}

#[derive(clap::Args)]
struct RunArgs {
    /// Root filesystem image (ext4 or EROFS). Default: the built-in busybox one.
    #[arg(long, value_name = "IMG")]
    rootfs: Option<PathBuf>,
    /// Extra raw disk image, seen in the guest as /dev/vdb, /dev/vdc, …
    /// Append `:ro` for read-only. Writes go straight to the file (sparse files stay sparse).
    #[arg(long = "disk", value_name = "PATH[:ro]")]
    disks: Vec<String>,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 256, value_name = "MiB")]
    memory: u64,
    /// Number of virtual CPUs.
    #[arg(long, default_value_t = 1, value_name = "N")]
    vcpus: u8,
    /// Guest kernel (vmlinux). Default: the cached build.
    #[arg(long, value_name = "PATH")]
    kernel: Option<PathBuf>,
    /// Extra guest kernel argument (repeatable).
    #[arg(long = "kernel-arg", value_name = "ARG")]
    kernel_args: Vec<String>,
    /// Environment variable for the command, NAME=VALUE (repeatable).
    #[arg(short = 'e', long = "env", value_name = "NAME=VALUE")]
    env: Vec<String>,
    /// Keep stdin open: stream this command's standard input to the guest command.
    #[arg(short = 'i', long = "interactive")]
    interactive: bool,
    /// Working directory inside the guest.
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    workdir: Option<String>,
    /// Seconds to wait for the VM to boot.
    #[arg(long, default_value_t = 60, value_name = "SECS")]
    boot_timeout: u64,
    /// Show the guest's console (kernel and agent messages) on stderr.
    #[arg(long)]
    console: bool,
    /// The command to run, after `--`.
    #[arg(last = true, required = true, value_name = "CMD")]
    command: Vec<String>,
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
    let result = match cli.command {
        Command::Run(args) => run(args),
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
    };
    match result {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("supermachine: {e}");
            ExitCode::from(125)
        }
    }
}

fn parse_env(vars: &[String]) -> Result<Vec<(String, String)>, supermachine::Error> {
    vars.iter()
        .map(|v| match v.split_once('=') {
            Some((k, val)) if !k.is_empty() => Ok((k.to_string(), val.to_string())),
            _ => Err(supermachine::Error::InvalidArgument(format!(
                "--env {v:?}: expected NAME=VALUE"
            ))),
        })
        .collect()
}

fn parse_disk(spec: &str) -> Disk {
    let (path, read_only) = supermachine_protocol::disk_spec::parse(spec);
    Disk {
        path: path.into(),
        read_only,
    }
}

fn run(args: RunArgs) -> Result<i32, supermachine::Error> {
    if args.vcpus == 0 {
        return Err(supermachine::Error::InvalidArgument(
            "--vcpus must be at least 1".into(),
        ));
    }
    let env = parse_env(&args.env)?;
    let config = VmConfig {
        memory_mib: args.memory,
        vcpus: args.vcpus,
        kernel: args.kernel,
        rootfs: args.rootfs,
        disks: args.disks.iter().map(|d| parse_disk(d)).collect(),
        extra_kernel_args: args.kernel_args,
        boot_timeout: Duration::from_secs(args.boot_timeout),
        console: args.console,
    };
    let mut vm = Vm::start(&config)?;
    let request = ExecRequest {
        argv: args.command,
        env,
        cwd: args.workdir,
        stdin: false,
    };
    let stdin: Option<Box<dyn std::io::Read + Send>> = if args.interactive {
        Some(Box::new(std::io::stdin()))
    } else {
        None
    };
    let result = vm.exec_with_stdin(
        request,
        stdin,
        &mut std::io::stdout(),
        &mut std::io::stderr(),
    );
    match result {
        Ok(exit) => {
            vm.shutdown()?;
            Ok(exit.shell_code())
        }
        // The command powered the guest off (e.g. `poweroff`): that is a clean end.
        Err(supermachine::Error::VmEnded {
            outcome: VmOutcome::PowerOff,
            ..
        }) => Ok(0),
        Err(e) => Err(e),
    }
}
