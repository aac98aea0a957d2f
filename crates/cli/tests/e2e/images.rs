//! OCI images end to end: a layout built here from busybox-static (layers
//! with a whiteout, an opaque directory, a symlink, a hard link, a fifo, an
//! owned 0640 file, an xattr; Entrypoint/Cmd/Env/WorkingDir/User set), run
//! through `oci:` and through a real registry, its config applied, and the
//! guest's view of `/` compared with the layers' expected tree.

use crate::oci_layout::{write_layout, ImageSpec, Layer};
use crate::progress::trial;
use crate::registry::Registry;
use crate::util::{check, output_of, run, stderr, stdout, supermachine, TempDir};
use libtest_mimic::{Failed, Trial};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use supermachine_rootfs::{FileKind, ListingEntry, Tree};

pub fn trials() -> Vec<Trial> {
    vec![
        trial(
            "images::oci_layout_config_and_overrides",
            config_and_overrides,
        ),
        trial("images::guest_root_matches_the_layers", guest_root_matches),
        trial(
            "images::start_exec_defaults_and_store_commands",
            start_exec_and_store,
        ),
        trial("images::registry_pull_and_run", registry_pull_and_run),
    ]
}

/// A CLI with its own image store and cache, and the usual kernel.
pub struct ImageEnv {
    pub dir: TempDir,
    kernel: String,
}

impl ImageEnv {
    pub fn new(tag: &str) -> Result<ImageEnv, Failed> {
        let k = run(&["kernel", "path"])?;
        check(k.status.success(), "kernel path", &k)?;
        let dir = TempDir::new(tag);
        Ok(ImageEnv {
            kernel: stdout(&k).trim().to_string(),
            dir,
        })
    }

    pub fn command(&self, args: &[&str]) -> Command {
        let mut cmd = supermachine();
        cmd.args(args)
            .env("SUPERMACHINE_DATA_DIR", self.dir.0.join("data"))
            .env("SUPERMACHINE_CACHE_DIR", self.dir.0.join("cache"))
            .env("SUPERMACHINE_KERNEL", &self.kernel)
            .env_remove("SUPERMACHINE_REGISTRY_MIRRORS")
            .env_remove("SUPERMACHINE_REGISTRIES_CONFIG");
        cmd
    }

    pub fn run(&self, args: &[&str]) -> Result<Output, Failed> {
        output_of(self.command(args), None)
    }

    fn rootfs_files(&self) -> Vec<PathBuf> {
        let dir = self.dir.0.join("cache/rootfs");
        let mut files: Vec<PathBuf> = std::fs::read_dir(dir)
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|e| e == "erofs"))
            .collect();
        files.sort();
        files
    }
}

const ENTRY: &[u8] = b"#!/bin/sh\necho entry\nexec \"$@\"\n";
const APPLETS: &[&str] = &[
    "cat",
    "echo",
    "env",
    "find",
    "id",
    "ls",
    "pwd",
    "sh",
    "sha256sum",
    "sleep",
    "stat",
    "true",
];

/// The test image's layers (uncompressed tars, bottom first).
fn layers() -> Result<Vec<Vec<u8>>, Failed> {
    let busybox = std::fs::read("/bin/busybox")
        .map_err(|e| format!("/bin/busybox: {e} (apt-get install busybox-static)"))?;
    let mut base = Layer::new();
    for (dir, mode) in [
        ("bin", 0o755),
        ("etc", 0o755),
        ("home", 0o755),
        ("home/app", 0o750),
        ("srv", 0o755),
        ("data", 0o755),
        ("data/old", 0o755),
    ] {
        base.dir(dir, mode);
    }
    base.file("bin/busybox", &busybox, 0o755)
        .file("bin/entry", ENTRY, 0o755);
    for applet in APPLETS {
        base.symlink(&format!("bin/{applet}"), "busybox");
    }
    base.file(
        "etc/passwd",
        b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1000:app:/home/app:/bin/sh\n",
        0o644,
    )
    .file(
        "etc/group",
        b"root:x:0:\napp:x:1000:\nstaff:x:50:app\n",
        0o644,
    )
    .file("etc/motd", b"hello from the layout\n", 0o644)
    .file("etc/removed", b"whited out by layer 2\n", 0o644)
    .file("data/old/a", b"hidden by the opaque marker\n", 0o644)
    .file("srv/file", b"shared contents\n", 0o644);
    let mut top = Layer::new();
    top.whiteout("etc/removed")
        .opaque("data/old")
        .file("data/old/new", b"after the opaque marker\n", 0o600)
        .symlink("srv/link", "../etc/motd")
        .hardlink("srv/hard", "srv/file")
        .fifo("srv/fifo", 0o620)
        .file_owned("home/app/secret", b"for app only\n", 0o640, 1000, 1000);
    top.file_with_xattr("srv/tagged", b"with an xattr\n", "user.test", b"yes");
    Ok(vec![base.finish(), top.finish()])
}

fn config(entrypoint: bool) -> serde_json::Value {
    let mut c = serde_json::json!({
        "Env": ["PATH=/bin", "GREETING=hello", "LEVEL=image"],
        "WorkingDir": "/srv",
        "User": "app",
        "ExposedPorts": {"8080/tcp": {}},
    });
    if entrypoint {
        c["Entrypoint"] = serde_json::json!(["/bin/entry"]);
        c["Cmd"] = serde_json::json!(["sh", "-c", "echo cmd $GREETING $LEVEL; id -u; pwd"]);
    }
    c
}

/// Writes the test layout (tags `1` and `bare`, the latter without a
/// command) under `dir`; returns its path and the layers.
pub fn busybox_layout(dir: &Path) -> Result<(PathBuf, Vec<Vec<u8>>), Failed> {
    let layers = layers()?;
    let layout = dir.join("layout");
    // Layer 0 gzip, layer 1 a plain tar: both media types go through the pull.
    let specs = [
        ImageSpec {
            tag: "1",
            layers: vec![(layers[0].clone(), true), (layers[1].clone(), false)],
            config: config(true),
        },
        ImageSpec {
            tag: "bare",
            layers: vec![(layers[0].clone(), true)],
            config: config(false),
        },
    ];
    write_layout(&layout, &specs).map_err(|e| format!("writing the layout: {e}"))?;
    Ok((layout, layers))
}

fn config_and_overrides() -> Result<(), Failed> {
    let env = ImageEnv::new("img-config")?;
    let (layout, _) = busybox_layout(&env.dir.0)?;
    let image = format!("oci:{}:1", layout.display());

    // The image's own command, with its Env, WorkingDir and User.
    let out = env.run(&["run", &image])?;
    check(
        out.status.success() && stdout(&out) == "entry\ncmd hello image\n1000\n/srv\n",
        "run IMAGE runs Entrypoint + Cmd as User in WorkingDir with Env",
        &out,
    )?;
    check(
        env.rootfs_files().len() == 1,
        "one root filesystem file was built",
        &out,
    )?;

    // CMD replaces Cmd and keeps the Entrypoint; -e/-w/-u override.
    let out = env.run(&[
        "run",
        "-e",
        "LEVEL=user",
        "-w",
        "/tmp",
        "-u",
        "root",
        &image,
        "--",
        "sh",
        "-c",
        "echo $GREETING $LEVEL $PATH; id -u; pwd",
    ])?;
    check(
        out.status.success() && stdout(&out) == "entry\nhello user /bin\n0\n/tmp\n",
        "-- CMD replaces Cmd, -e/-w/-u override the image",
        &out,
    )?;
    // A user name:group resolved through the image's /etc/passwd and /etc/group.
    let out = env.run(&["run", "-u", "app:staff", &image, "--", "id"])?;
    check(
        out.status.success() && stdout(&out).contains("uid=1000(app) gid=50(staff)"),
        "-u app:staff",
        &out,
    )?;

    // An image with neither Entrypoint nor Cmd needs a command.
    let bare = format!("oci:{}:bare", layout.display());
    let out = env.run(&["run", &bare])?;
    check(
        out.status.code() == Some(125) && stderr(&out).contains("no command to run"),
        "an image without a command is refused with advice",
        &out,
    )?;
    let out = env.run(&["run", &bare, "--", "cat", "/etc/motd"])?;
    check(
        out.status.success() && stdout(&out) == "hello from the layout\n",
        "the bare image runs a given command",
        &out,
    )
}

/// One guest path as `stat` and `sha256sum` see it.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
struct Seen {
    kind: Option<FileKind>,
    mode: u32,
    uid: u32,
    gid: u32,
    size: u64,
    nlink: u32,
    mtime: i64,
    target: Option<String>,
    sha256: Option<String>,
}

const LIST_SCRIPT: &str = "find / -xdev -exec stat -c '%f|%u|%g|%s|%h|%Y|%N' {} + && echo === && find / -xdev -type f -exec sha256sum {} +";

fn parse_guest_listing(text: &str) -> Result<BTreeMap<String, Seen>, Failed> {
    let (stats, sums) = text
        .split_once("===\n")
        .ok_or("no separator in the guest listing")?;
    let mut seen = BTreeMap::new();
    for line in stats.lines() {
        let f: Vec<&str> = line.splitn(7, '|').collect();
        let [mode, uid, gid, size, nlink, mtime, name] = f[..] else {
            return Err(format!("bad stat line {line:?}").into());
        };
        let raw = u32::from_str_radix(mode, 16)?;
        let kind = match raw & 0o170000 {
            0o040000 => FileKind::Dir,
            0o100000 => FileKind::File,
            0o120000 => FileKind::Symlink,
            0o010000 => FileKind::Fifo,
            0o020000 => FileKind::CharDev,
            0o060000 => FileKind::BlockDev,
            _ => FileKind::Socket,
        };
        let (path, target) = match name.split_once("' -> '") {
            Some((p, t)) => (
                p.trim_start_matches('\'').to_string(),
                Some(t.trim_end_matches('\'').to_string()),
            ),
            None => (name.to_string(), None),
        };
        seen.insert(
            path,
            Seen {
                kind: Some(kind),
                mode: raw & 0o7777,
                uid: uid.parse()?,
                gid: gid.parse()?,
                size: size.parse()?,
                nlink: nlink.parse()?,
                mtime: mtime.parse()?,
                target,
                sha256: None,
            },
        );
    }
    for line in sums.lines() {
        let (sum, path) = line
            .split_once("  ")
            .ok_or_else(|| format!("bad sha256sum line {line:?}"))?;
        if let Some(s) = seen.get_mut(path) {
            s.sha256 = Some(sum.to_string());
        }
    }
    Ok(seen)
}

/// What the guest must show for a tree entry: everything a reader of the
/// filesystem can see, except directory sizes (filesystem-specific) and
/// the root's link count and time (the overlay's mount points change them).
fn expected(e: &ListingEntry) -> Seen {
    let is_dir = e.kind == FileKind::Dir;
    Seen {
        kind: Some(e.kind),
        mode: e.mode,
        uid: e.uid,
        gid: e.gid,
        size: if is_dir { 0 } else { e.size },
        nlink: if is_dir { 0 } else { e.nlink },
        mtime: if e.path == b"/" { 0 } else { e.mtime },
        target: e
            .target
            .as_ref()
            .map(|t| String::from_utf8_lossy(t).into_owned()),
        sha256: e.sha256.clone(),
    }
}

/// The paths the agent adds to every root: mount points of the API
/// filesystems it carries over.
const AGENT_MOUNT_POINTS: &[&str] = &["/dev", "/proc", "/run", "/sys", "/tmp"];

pub fn compare_root(guest: &str, tree: &Tree) -> Result<usize, Failed> {
    let mut seen = parse_guest_listing(guest)?;
    let listing = tree.listing().map_err(|e| format!("tree listing: {e}"))?;
    let mut diffs = Vec::new();
    for entry in &listing {
        let path = String::from_utf8_lossy(&entry.path).into_owned();
        let want = expected(entry);
        match seen.remove(&path) {
            None => diffs.push(format!("{path}: missing in the guest")),
            Some(mut got) => {
                if want.kind == Some(FileKind::Dir) {
                    (got.size, got.nlink) = (0, 0);
                }
                if path == "/" {
                    got.mtime = 0;
                }
                if got != want {
                    diffs.push(format!("{path}:\n  layers {want:?}\n  guest  {got:?}"));
                }
            }
        }
    }
    for (path, _) in seen {
        if !AGENT_MOUNT_POINTS.contains(&path.as_str()) {
            diffs.push(format!("{path}: in the guest, not in the layers"));
        }
    }
    if diffs.is_empty() {
        Ok(listing.len())
    } else {
        Err(format!(
            "the guest's / differs from the layers:\n{}",
            diffs.join("\n")
        )
        .into())
    }
}

pub fn tree_of(layers: &[Vec<u8>]) -> Result<Tree, Failed> {
    let mut tree = Tree::new().map_err(|e| format!("tree: {e}"))?;
    for (i, layer) in layers.iter().enumerate() {
        tree.apply_layer(i, &layer[..], supermachine_rootfs::Compression::Auto)
            .map_err(|e| format!("layer {i}: {e}"))?;
    }
    Ok(tree)
}

fn guest_root_matches() -> Result<(), Failed> {
    let env = ImageEnv::new("img-listing")?;
    let (layout, layers) = busybox_layout(&env.dir.0)?;
    let image = format!("oci:{}:1", layout.display());
    let out = env.run(&["run", "-u", "root", &image, "--", "sh", "-c", LIST_SCRIPT])?;
    check(out.status.success(), "listing the guest's /", &out)?;
    let tree = tree_of(&layers)?;
    let text = stdout(&out);
    // The image's entrypoint announces itself first.
    let listing = text
        .strip_prefix("entry\n")
        .ok_or("the entrypoint did not run")?;
    let n = compare_root(listing, &tree)?;
    eprintln!("images: {n} paths of the guest's / match the layers");
    Ok(())
}

fn start_exec_and_store() -> Result<(), Failed> {
    let env = ImageEnv::new("img-start")?;
    let (layout, _) = busybox_layout(&env.dir.0)?;
    let image = format!("oci:{}:1", layout.display());
    let pulled = env.run(&["pull", &image])?;
    check(
        pulled.status.success() && stdout(&pulled).trim().starts_with("sha256:"),
        "pull prints the manifest digest",
        &pulled,
    )?;
    let digest = stdout(&pulled).trim().to_string();

    let started = env.run(&["start", "-e", "LEVEL=vm", &image, "--", "sleep", "1000"])?;
    check(started.status.success(), "start IMAGE", &started)?;
    let id = stdout(&started).trim().to_string();
    let result = (|| {
        let ps = env.run(&["ps", "--json"])?;
        let line = stdout(&ps)
            .lines()
            .find(|l| l.contains(&id))
            .unwrap_or_default()
            .to_string();
        check(
            line.contains(&format!("oci:{}:1", layout.display()))
                && line.contains("8080/tcp")
                && line.contains(&digest),
            "ps shows the image, its digest and exposed ports",
            &ps,
        )?;
        // exec starts with the image's Env, WorkingDir and User (and start's -e).
        let out = env.run(&[
            "exec",
            &id,
            "--",
            "sh",
            "-c",
            "echo $GREETING $LEVEL; id -u; pwd",
        ])?;
        check(
            stdout(&out) == "hello vm\n1000\n/srv\n",
            "exec uses the image defaults",
            &out,
        )?;
        let out = env.run(&[
            "exec",
            "-u",
            "0",
            "-w",
            "/",
            &id,
            "--",
            "sh",
            "-c",
            "id -u; pwd",
        ])?;
        check(stdout(&out) == "0\n/\n", "exec -u -w override", &out)
    })();
    let stopped = env.run(&["stop", &id])?;
    result?;
    check(stopped.status.success(), "stop", &stopped)?;

    // The store commands.
    let images = env.run(&["images"])?;
    check(
        stdout(&images).contains(&format!("oci:{}:1", layout.display()))
            && stdout(&images).contains(&digest["sha256:".len()..][..12]),
        "images lists the image with its short digest",
        &images,
    )?;
    let inspect = env.run(&["inspect", &image])?;
    let json: serde_json::Value = serde_json::from_slice(&inspect.stdout)
        .map_err(|e| format!("inspect is not JSON: {e}: {}", stdout(&inspect)))?;
    check(
        json["manifest_digest"] == digest.as_str()
            && json["config"]["entrypoint"][0] == "/bin/entry"
            && json["config"]["user"] == "app",
        "inspect prints the config as JSON",
        &inspect,
    )?;
    check(env.rootfs_files().len() == 1, "one rootfs file", &inspect)?;
    let rmi = env.run(&["rmi", &image])?;
    check(rmi.status.success(), "rmi", &rmi)?;
    check(
        env.rootfs_files().is_empty(),
        "rmi deleted the unused root filesystem",
        &rmi,
    )?;
    let gc = env.run(&["gc"])?;
    check(
        gc.status.success() && stdout(&gc).contains("removed 4 blobs"),
        "gc removes the image's blobs (manifest, config, 2 layers)",
        &gc,
    )?;
    let images = env.run(&["images", "--json"])?;
    check(stdout(&images).is_empty(), "no images left", &images)?;
    let rmi = env.run(&["rmi", &image])?;
    check(
        rmi.status.code() == Some(1) && stderr(&rmi).contains("no image"),
        "rmi of a missing image",
        &rmi,
    )
}

fn registry_pull_and_run() -> Result<(), Failed> {
    let env = ImageEnv::new("img-registry")?;
    let (layout, _) = busybox_layout(&env.dir.0)?;
    let registry = Registry::start()?;
    registry.push(&layout, "1", "test/busybox")?;
    let reference = format!("{}/test/busybox:1", registry.host());
    let pulled = env.run(&["pull", &reference])?;
    check(
        pulled.status.success() && stdout(&pulled).trim().starts_with("sha256:"),
        "pull from the registry prints the digest",
        &pulled,
    )?;
    // Not a terminal: plain progress lines on stderr.
    check(
        stderr(&pulled).contains("pull layer") && stderr(&pulled).contains("root filesystem"),
        "pull shows its progress",
        &pulled,
    )?;
    let out = env.run(&["run", &reference, "--", "cat", "/etc/motd"])?;
    check(
        out.status.success() && stdout(&out) == "entry\nhello from the layout\n",
        "run REF -- cat /etc/motd",
        &out,
    )?;
    // Cached: pulling again transfers nothing and builds nothing.
    let again = env.run(&["pull", &reference])?;
    check(
        again.status.success()
            && stdout(&again) == stdout(&pulled)
            && stderr(&again).contains("up to date")
            && !stderr(&again).contains("apply layer"),
        "a second pull is a no-op",
        &again,
    )
}
