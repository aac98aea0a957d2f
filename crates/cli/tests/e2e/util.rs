//! Running the `supermachine` binary the way a user does.

use std::path::PathBuf;
use std::process::{Command, Output};

pub fn supermachine() -> Command {
    Command::new(env!("CARGO_BIN_EXE_supermachine"))
}

/// Runs `supermachine ARGS` to completion.
pub fn run(args: &[&str]) -> Output {
    supermachine()
        .args(args)
        .output()
        .expect("spawn supermachine")
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// A fresh directory under the system temp dir, removed on drop.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> TempDir {
        let p = std::env::temp_dir().join(format!("sm-e2e-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).expect("create temp dir");
        TempDir(p)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Fails with the process's output when `cond` is false.
pub fn check(cond: bool, what: &str, o: &Output) -> Result<(), libtest_mimic::Failed> {
    if cond {
        Ok(())
    } else {
        Err(format!(
            "{what}\nstatus: {:?}\nstdout: {}\nstderr: {}",
            o.status,
            stdout(o),
            stderr(o)
        )
        .into())
    }
}
