//! Everything x86_64-specific about booting a guest: where things sit in
//! guest memory ([`layout`]), loading the kernel ([`boot`]), the tables
//! firmware would leave ([`regs`], [`mptable`]), and each vCPU's boot
//! state ([`vcpu`], with [`cpuid`] and [`msrs`]).

pub mod boot;
pub mod cpuid;
pub mod host;
pub mod layout;
pub mod mptable;
pub mod msrs;
pub mod regs;
pub mod vcpu;
