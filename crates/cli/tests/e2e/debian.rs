//! A realistic image: Debian bookworm made with `debootstrap --variant=minbase`
//! (layer 1) plus a small change (layer 2: /etc/motd whited out, a file
//! added), pushed to a real registry, pulled and run.
//!
//! debootstrap needs the network and takes minutes, so the image is built
//! on the host before the tests go into the lab ([`prepare`], called by the
//! harness) and cached under `~/.cache/supermachine-test-images/debian-<suite>-minbase`
//! (`$SUPERMACHINE_TEST_IMAGES` to move it): later runs, fresh clones
//! included, reuse it. Delete that directory to rebuild it.

use crate::images::ImageEnv;
use crate::oci_layout::{tar_dir, write_layout, BoxError, ImageSpec, Layer};
use crate::progress::trial;
use crate::registry::Registry;
use crate::util::check;
use libtest_mimic::{Failed, Trial};
use std::path::{Path, PathBuf};
use std::process::Command;

const SUITE: &str = "bookworm";
const MIRROR: &str = "http://deb.debian.org/debian";
pub const TRIAL: &str = "images::debian_pull_and_run";

pub fn trials() -> Vec<Trial> {
    vec![trial(TRIAL, debian_pull_and_run)]
}

/// `$SUPERMACHINE_TEST_IMAGES`, else `~/.cache/supermachine-test-images`
/// (outside the work tree, so fresh clones, as CI makes, reuse it).
fn cache_dir() -> PathBuf {
    let root = match std::env::var_os("SUPERMACHINE_TEST_IMAGES") {
        Some(dir) => PathBuf::from(dir),
        None => std::env::var_os("XDG_CACHE_HOME")
            .map(PathBuf::from)
            .or_else(|| std::env::var_os("HOME").map(|h| Path::new(&h).join(".cache")))
            .unwrap_or_else(|| PathBuf::from(env!("CARGO_TARGET_TMPDIR")))
            .join("supermachine-test-images"),
    };
    root.join(format!("debian-{SUITE}-minbase"))
}

/// The cached OCI layout (tag `SUITE`), built if missing.
pub fn prepare() -> Result<PathBuf, BoxError> {
    let base = cache_dir();
    let layout = base.join("layout");
    if layout.join("index.json").is_file() {
        return Ok(layout);
    }
    std::fs::create_dir_all(&base)?;
    let rootfs = base.join("rootfs");
    if !rootfs.join("etc/debian_version").is_file() {
        debootstrap(&base, &rootfs)?;
    }
    eprintln!(
        "e2e: making the Debian test image from {}",
        rootfs.display()
    );
    let layer1 = base.join("layer1.tar");
    tar_dir(&rootfs, &layer1, &slim)?;
    let mut change = Layer::new();
    change
        .whiteout("etc/motd")
        .file("etc/supermachine-test", b"layer 2 was here\n", 0o644);
    let partial = base.join("layout.partial");
    let _ = std::fs::remove_dir_all(&partial);
    write_layout(
        &partial,
        &[ImageSpec {
            tag: SUITE,
            layers: vec![(std::fs::read(&layer1)?, true), (change.finish(), true)],
            config: serde_json::json!({
                "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"],
                "Cmd": ["bash"],
            }),
        }],
    )?;
    std::fs::remove_file(&layer1)?;
    std::fs::rename(&partial, &layout)?;
    Ok(layout)
}

/// Left out of the image, as Debian's "slim" images do: package lists,
/// downloaded packages, documentation, manual pages, translations.
fn slim(rel: &Path) -> bool {
    [
        "var/cache/apt/",
        "var/lib/apt/lists/",
        "usr/share/doc/",
        "usr/share/man/",
        "usr/share/locale/",
        "usr/share/info/",
    ]
    .iter()
    .any(|prefix| rel.starts_with(prefix) && rel != Path::new(prefix.trim_end_matches('/')))
}

fn debootstrap(base: &Path, rootfs: &Path) -> Result<(), BoxError> {
    if !Path::new("/usr/sbin/debootstrap").exists() {
        return Err("debootstrap is missing: apt-get install -y debootstrap".into());
    }
    eprintln!("e2e: debootstrap --variant=minbase {SUITE} (a few minutes, once)");
    let partial = base.join("rootfs.partial");
    let _ = std::fs::remove_dir_all(&partial);
    let log = base.join("debootstrap.log");
    let status = Command::new("/usr/sbin/debootstrap")
        .args(["--variant=minbase", SUITE])
        .arg(&partial)
        .arg(MIRROR)
        .stdout(std::fs::File::create(&log)?)
        .stderr(std::fs::File::create(base.join("debootstrap.err"))?)
        .status()?;
    if !status.success() {
        return Err(format!(
            "debootstrap failed ({status}); see {} (it needs root and the Debian mirror)",
            log.display()
        )
        .into());
    }
    std::fs::rename(&partial, rootfs)?;
    Ok(())
}

fn debian_pull_and_run() -> Result<(), Failed> {
    let layout = prepare().map_err(|e| format!("the Debian test image: {e}"))?;
    let expected = std::fs::read_to_string(cache_dir().join("rootfs/etc/debian_version"))?;
    let env = ImageEnv::new("img-debian")?;
    let registry = Registry::start()?;
    registry.push(&layout, SUITE, "test/debian")?;
    let reference = format!("{}/test/debian:{SUITE}", registry.host());
    let pulled = env.run(&["pull", &reference])?;
    check(pulled.status.success(), "pull the Debian image", &pulled)?;
    let out = env.run(&[
        "run",
        &reference,
        "--",
        "sh",
        "-c",
        "cat /etc/debian_version /etc/supermachine-test; test -e /etc/motd || echo motd-gone",
    ])?;
    check(
        out.status.success()
            && crate::util::stdout(&out) == format!("{expected}layer 2 was here\nmotd-gone\n"),
        "run <debian> -- cat /etc/debian_version",
        &out,
    )
}
