//! `cargo xtask node [FILES...]`: the Node package `@supermachine/core`
//! built from this checkout and its tests run against real VMs.
//!
//! 1. the static guest agent, the worker and the addon (release);
//! 2. `node/native/` assembled from them (`node/scripts/assemble.mjs`);
//! 3. `tsc --noEmit --strict` of `node/types-check` (TypeScript from npm,
//!    installed into `node/node_modules` by `npm ci` when missing);
//! 4. `node --test` of `node/test/*.test.mjs` (or the FILES given), one
//!    file at a time, in the lab on hosts without VT-x/AMD-V, since the
//!    tests boot VMs. A file whose lab froze or crashed runs again in a
//!    fresh one (up to [`LAB_ATTEMPTS`] times); a test failure is final.
//!
//! The guest kernel is the library's usual one (`cargo xtask setup` builds
//! it; `SUPERMACHINE_KERNEL` names another). `cargo xtask test` runs it
//! after the Rust tests.

use crate::setup::{cargo, install_agent, release_dir, run, workspace_root};
use std::ffi::OsString;
use std::path::Path;
use std::process::Command;

/// Debian packages the Node tests run: the local registry and the tool
/// that pushes to it (the examples pull `alpine:latest` through a mirror),
/// and busybox for the test images. Node and npm are looked for as
/// commands instead: Debian's `nodejs` and `npm`, or NodeSource's `nodejs`
/// (which carries npm and conflicts with Debian's), both do.
const NODE_TEST_PACKAGES: &[&str] = &["docker-registry", "skopeo", "busybox-static"];

/// Whether `command --version` runs.
fn have_command(command: &str) -> bool {
    Command::new(command)
        .arg("--version")
        .output()
        .is_ok_and(|out| out.status.success())
}

/// Node and npm, installed with apt when missing (as root; otherwise the
/// error gives the command). The `nodejs` package of NodeSource's
/// repository carries npm; Debian's own needs `npm` beside it.
fn ensure_node() -> Result<(), String> {
    for (command, package) in [("node", "nodejs"), ("npm", "npm")] {
        if !have_command(command) {
            supermachine_lab::ensure_packages(&[package])
                .map_err(|e| format!("`{command}` (Node 20 or newer): {e}"))?;
        }
        if !have_command(command) {
            return Err(format!(
                "`{command}` is needed (Node 20 or newer): apt-get install -y nodejs npm"
            ));
        }
    }
    Ok(())
}

/// The test files: those given, else every `*.test.mjs` in `node/test`.
fn test_files(package: &Path, given: &[String]) -> Result<Vec<OsString>, String> {
    if !given.is_empty() {
        return Ok(given.iter().map(OsString::from).collect());
    }
    let dir = package.join("test");
    let mut files: Vec<OsString> = std::fs::read_dir(&dir)
        .map_err(|e| format!("reading {}: {e}", dir.display()))?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .filter(|p| p.to_string_lossy().ends_with(".test.mjs"))
        .map(OsString::from)
        .collect();
    files.sort();
    Ok(files)
}

/// `SUPERMACHINE_KERNEL` for the tests, naming the kernel `cargo xtask
/// setup` built, unless the caller named one: each test file gives the
/// library a cache directory of its own, where no kernel is built.
fn kernel_env() -> Result<Vec<(OsString, OsString)>, String> {
    if std::env::var_os("SUPERMACHINE_KERNEL").is_some() {
        return Ok(Vec::new());
    }
    let cli = release_dir().join("supermachine");
    let out = Command::new(&cli)
        .args(["kernel", "path"])
        .output()
        .map_err(|e| {
            format!(
                "{} kernel path: {e} (run `cargo xtask setup` first)",
                cli.display()
            )
        })?;
    let path = String::from_utf8_lossy(&out.stdout).trim().to_string();
    if !out.status.success() || path.is_empty() || !Path::new(&path).is_file() {
        return Err(format!(
            "no guest kernel built (`{} kernel path` said {:?}): run `cargo xtask setup` first",
            cli.display(),
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(vec![("SUPERMACHINE_KERNEL".into(), path.into())])
}

/// `npm pack` of the assembled package into `target/node-pack/` (emptied
/// first); the tarball's path, for `test/package.test.mjs`, which installs
/// it into an empty directory as a user would.
fn pack(package: &Path) -> Result<std::path::PathBuf, String> {
    let dest = workspace_root().join("target").join("node-pack");
    let _ = std::fs::remove_dir_all(&dest);
    std::fs::create_dir_all(&dest).map_err(|e| format!("{}: {e}", dest.display()))?;
    eprintln!("node: npm pack");
    run(
        Command::new("npm")
            .current_dir(package)
            .args(["pack", "--silent", "--pack-destination"])
            .arg(&dest),
        "npm pack",
    )?;
    let tarball = std::fs::read_dir(&dest)
        .map_err(|e| format!("{}: {e}", dest.display()))?
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_some_and(|x| x == "tgz"))
        .ok_or_else(|| format!("npm pack left no .tgz in {}", dest.display()))?;
    let size = std::fs::metadata(&tarball).map_or(0, |m| m.len());
    eprintln!("node: {} ({size} bytes)", tarball.display());
    Ok(tarball)
}

pub fn node(given: &[String]) -> Result<i32, String> {
    let root = workspace_root();
    let package = root.join("node");
    supermachine_lab::ensure_packages(NODE_TEST_PACKAGES)
        .map_err(|e| format!("the Node tests' tools: {e}"))?;
    ensure_node()?;

    install_agent(&root)?;
    eprintln!("node: building the worker and the addon (release)");
    // One cargo run for both, so their dependencies are built with one
    // set of features (two runs would rebuild the library each time).
    run(
        cargo().current_dir(&root).args([
            "build",
            "--release",
            "-p",
            "supermachine-node",
            "-p",
            "supermachine-vmm",
            "--lib",
            "--bin",
            "supermachine-worker",
        ]),
        "building the worker and the addon",
    )?;
    // native/ carries the kernel the tests boot, as a published package
    // carries its own.
    let kernel = kernel_env()?;
    let mut assemble = Command::new("node");
    assemble.current_dir(&package).arg("scripts/assemble.mjs");
    if let Some((_, path)) = kernel.first() {
        assemble.arg("--kernel").arg(path);
    }
    run(&mut assemble, "assembling node/native")?;
    let tarball = pack(&package)?;

    if !package.join("node_modules/.bin/tsc").exists() {
        eprintln!("node: installing TypeScript (npm ci)");
        run(
            Command::new("npm")
                .current_dir(&package)
                .args(["ci", "--no-audit", "--no-fund"]),
            "npm ci",
        )?;
    }
    eprintln!("node: tsc --noEmit --strict -p types-check");
    run(
        Command::new(package.join("node_modules/.bin/tsc"))
            .current_dir(&package)
            .args(["--noEmit", "--strict", "-p", "types-check"]),
        "the TypeScript check",
    )?;

    // The lab passes this environment on (SUPERMACHINE_KERNEL and the
    // like). No overall time limit: node's per-test timeout bounds a hung
    // test, and the lab's heartbeat tells a frozen lab from a slow one.
    let opts = supermachine_lab::LabOptions {
        cpus: supermachine_lab::test_cpus(),
        cwd: Some(package.clone()),
        env: kernel
            .into_iter()
            .chain([("SUPERMACHINE_PACKED_TARBALL".into(), tarball.into())])
            .collect(),
        ..supermachine_lab::LabOptions::default()
    };
    let mut failed = Vec::new();
    for file in test_files(&package, given)? {
        if !run_test_file(&file, &opts)? {
            failed.push(file.to_string_lossy().into_owned());
        }
    }
    if failed.is_empty() {
        Ok(0)
    } else {
        eprintln!("node: failed: {}", failed.join(", "));
        Ok(1)
    }
}

/// Lab attempts per test file: a lab that fails as a whole (frozen, or its
/// kernel crashed) says nothing about the tests, so the file runs again in
/// a fresh lab; only the file that was running is rerun.
const LAB_ATTEMPTS: u32 = 3;

/// Runs one test file (in a lab of its own when this host needs one);
/// whether it passed.
fn run_test_file(file: &OsString, opts: &supermachine_lab::LabOptions) -> Result<bool, String> {
    // A test that hangs fails after 15 minutes instead of holding the lab.
    let argv: Vec<OsString> = vec![
        "node".into(),
        "--test".into(),
        "--test-timeout=900000".into(),
        file.clone(),
    ];
    let name = file.to_string_lossy();
    for attempt in 1..=LAB_ATTEMPTS {
        eprintln!("node: node --test {name} (booting VMs, in the lab when this host needs it)");
        let failure = match supermachine_lab::run(&argv, opts) {
            Ok(code) => return Ok(code == 0),
            Err(e) => e.lab_failed().ok_or_else(|| format!("the lab: {e}"))?,
        };
        eprintln!("node: lab attempt {attempt} of {LAB_ATTEMPTS} for {name} failed: {failure}");
    }
    eprintln!("node: {name}: the lab failed in every attempt");
    Ok(false)
}
