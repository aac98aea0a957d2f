//! What the VMM's integration tests share.

/// Skips the calling test (the caller returns right after) because this
/// host's KVM cannot run it: said on stderr, or, where the caller asked
/// for KVM (`SUPERMACHINE_REQUIRE_KVM`, set by `cargo xtask test` in CI),
/// a failure, so a CI host without a usable KVM cannot pass by skipping.
pub fn skip_without_kvm(why: impl std::fmt::Display) {
    if std::env::var_os("SUPERMACHINE_REQUIRE_KVM").is_some() {
        panic!("SUPERMACHINE_REQUIRE_KVM is set, so this is a failure, not a skip: {why}");
    }
    eprintln!("SKIP: {why}");
}
