//! `cargo xtask <task>`: developer tasks for supermachine, in Rust so they
//! run the same on every machine. Each task lives in its own module; add a
//! variant to `Task` and a module to add one.

mod lab;
mod node;
mod setup;
mod test;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "cargo xtask",
    bin_name = "cargo xtask",
    about = "Developer tasks for supermachine"
)]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Run a command with hardware-style /dev/kvm: directly on a host with
    /// VMX/SVM, else inside the lab (a QEMU-emulated machine with AMD SVM).
    Lab(lab::Args),
    /// Build everything a VM needs: the static guest agent, the release
    /// binaries, and the guest kernel (cached; rebuilt only when its config changes).
    Setup,
    /// Set up, then run the whole test suite (end-to-end tests boot real VMs,
    /// in the lab on hosts without VT-x/AMD-V). Extra arguments go to `cargo test`.
    Test {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        cargo_test_args: Vec<String>,
    },
    /// Build the Node package (agent, worker, addon, node/native), check its
    /// types with tsc, and run its `node --test` suites against real VMs (in
    /// the lab on hosts without VT-x/AMD-V). Optional test files narrow it.
    Node {
        /// Test files (default: node/test/*.test.mjs), relative to node/
        files: Vec<String>,
    },
}

fn main() {
    let cli = Cli::parse();
    let code = match cli.task {
        Task::Lab(args) => lab::main(args),
        Task::Setup => report(setup::setup().map(|()| 0)),
        Task::Test { cargo_test_args } => report(test::test(&cargo_test_args)),
        Task::Node { files } => report(node::node(&files)),
    };
    std::process::exit(code);
}

fn report(result: Result<i32, String>) -> i32 {
    result.unwrap_or_else(|e| {
        eprintln!("xtask: {e}");
        1
    })
}
