//! Where snapshots go when the caller does not say: the seed API's default
//! (`~/.local/supermachine-snapshots`), unless the environment names a
//! place. Its own test binary: it sets process-wide environment variables.

// A test binary: a helper that cannot do its job panics, which fails the
// test that called it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

#[test]
fn the_default_snapshots_dir_follows_the_environment() {
    for var in [
        "SUPERMACHINE_SNAPSHOTS_DIR",
        "SUPERMACHINE_DATA_DIR",
        "XDG_DATA_HOME",
    ] {
        std::env::remove_var(var);
    }
    std::env::set_var("HOME", "/home/ada");
    let dir = supermachine::default_snapshots_dir().unwrap();
    assert_eq!(dir, Path::new("/home/ada/.local/supermachine-snapshots"));

    // XDG_DATA_HOME is about data files; it does not move the snapshots.
    std::env::set_var("XDG_DATA_HOME", "/srv/xdg");
    let dir = supermachine::default_snapshots_dir().unwrap();
    assert_eq!(dir, Path::new("/home/ada/.local/supermachine-snapshots"));

    // A data directory named explicitly keeps everything in it.
    std::env::set_var("SUPERMACHINE_DATA_DIR", "/srv/sm");
    let dir = supermachine::default_snapshots_dir().unwrap();
    assert_eq!(dir, Path::new("/srv/sm/snapshots"));

    // The snapshots variable wins over both.
    std::env::set_var(supermachine::SNAPSHOTS_DIR_ENV, "/srv/snaps");
    let dir = supermachine::default_snapshots_dir().unwrap();
    assert_eq!(dir, Path::new("/srv/snaps"));

    // No home and nothing set: an error, not a relative path.
    for var in [
        "SUPERMACHINE_SNAPSHOTS_DIR",
        "SUPERMACHINE_DATA_DIR",
        "HOME",
    ] {
        std::env::remove_var(var);
    }
    assert!(supermachine::default_snapshots_dir().is_err());
}
