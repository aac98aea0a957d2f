//! What depends on the guest's CPU architecture; x86_64 is the only one.

pub mod x86_64;
