//! supermachine: run OCI images as hardware-isolated KVM microVMs.
//!
//! This crate is the host side. It knows where the guest kernel, the agent
//! and root filesystems live, supervises one `supermachine-worker` process
//! per VM, and talks to the agent in the guest over vsock. It knows nothing
//! of KVM ioctls: that is the worker's job.
//!
//! ```no_run
//! use supermachine::{Vm, VmConfig};
//! use supermachine_protocol::ExecRequest;
//! let mut vm = Vm::start(&VmConfig::default())?;
//! let req = ExecRequest { argv: vec!["echo".into(), "hi".into()], ..Default::default() };
//! let exit = vm.exec(req, &mut std::io::stdout(), &mut std::io::stderr())?;
//! assert_eq!(exit.code, Some(0));
//! vm.shutdown()?;
//! # Ok::<(), supermachine::Error>(())
//! ```

mod agent_conn;
pub mod assets;
mod error;
mod hash;
pub mod kernel;
mod outcome;
pub mod paths;
mod runtime;
mod vm;

pub use error::Error;
pub use outcome::VmOutcome;
pub use runtime::check_kvm;
pub use supermachine_protocol::ExecRequest;
pub use vm::{Disk, ExitInfo, Vm, VmConfig};
