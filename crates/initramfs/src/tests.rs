//! Archives are checked with GNU cpio, an independent reader, rather than a
//! reader of our own that could share our misunderstandings.

use super::Writer;
use std::fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

/// A scratch directory removed on drop (the crate has no dependencies, so
/// no `tempfile`).
struct Scratch(PathBuf);

impl Scratch {
    fn new(tag: &str) -> Scratch {
        let dir = std::env::temp_dir().join(format!("initramfs-test-{}-{tag}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        fs::create_dir_all(&dir).unwrap();
        Scratch(dir)
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

/// Runs `cpio` with `archive` on stdin; fails the test with cpio's stderr.
fn cpio(args: &[&str], archive: &[u8], cwd: &Path) -> String {
    let mut child = Command::new("cpio")
        .args(args)
        .current_dir(cwd)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("cpio not found: apt-get install cpio");
    child.stdin.take().unwrap().write_all(archive).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "cpio {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// Everything but a device node, so that extraction works without root.
fn sample(host_file: &Path) -> Vec<u8> {
    let mut w = Writer::new(Vec::new());
    w.dir("bin", 0o755).unwrap();
    w.dir("etc", 0o700).unwrap();
    w.file("init", 0o755, b"#!/bin/sh\necho hello\n").unwrap();
    w.file("etc/empty", 0o644, b"").unwrap();
    w.file_from_path("bin/big", 0o750, host_file).unwrap();
    w.symlink("bin/sh", "big").unwrap();
    w.finish().unwrap()
}

fn big_file(dir: &Path) -> (PathBuf, Vec<u8>) {
    // Larger than io::copy's buffer and not a multiple of 4, so streaming
    // and padding are both exercised.
    let data: Vec<u8> = (0..100_003u32).map(|i| (i * 7 % 251) as u8).collect();
    let path = dir.join("big.src");
    fs::write(&path, &data).unwrap();
    (path, data)
}

#[test]
fn cpio_extracts_what_we_wrote() {
    let s = Scratch::new("extract");
    let (src, data) = big_file(&s.0);
    let archive = sample(&src);
    assert_eq!(archive.len() % 512, 0);

    let out = s.0.join("out");
    fs::create_dir(&out).unwrap();
    cpio(
        &["-idm", "--quiet", "--no-absolute-filenames"],
        &archive,
        &out,
    );

    let mode = |p: &str| {
        fs::symlink_metadata(out.join(p))
            .unwrap()
            .permissions()
            .mode()
            & 0o7777
    };
    assert!(out.join("bin").is_dir());
    assert_eq!(mode("bin"), 0o755);
    assert_eq!(mode("etc"), 0o700);
    assert_eq!(
        fs::read(out.join("init")).unwrap(),
        b"#!/bin/sh\necho hello\n"
    );
    assert_eq!(mode("init"), 0o755);
    assert_eq!(fs::read(out.join("etc/empty")).unwrap(), b"");
    assert_eq!(fs::read(out.join("bin/big")).unwrap(), data);
    assert_eq!(mode("bin/big"), 0o750);
    assert_eq!(fs::read_link(out.join("bin/sh")).unwrap(), Path::new("big"));
}

#[test]
fn cpio_lists_names_modes_and_device_numbers() {
    let s = Scratch::new("list");
    let (src, _) = big_file(&s.0);
    let mut w = Writer::new(Vec::new());
    w.dir("dev", 0o755).unwrap();
    w.char_device("dev/console", 0o600, 5, 1).unwrap();
    w.char_device("dev/kvm", 0o660, 10, 232).unwrap();
    w.file_from_path("big", 0o644, &src).unwrap();
    w.symlink("link", "dev/console").unwrap();
    let archive = w.finish().unwrap();

    let listing = cpio(&["-t", "-v", "--quiet"], &archive, &s.0);
    let lines: Vec<Vec<&str>> = listing
        .lines()
        .map(|l| l.split_whitespace().collect())
        .collect();
    // `cpio -tv` prints like `ls -l`: mode, links, owner, group, size or
    // "major, minor", date (3 words), name [-> target].
    let find = |name: &str| -> &Vec<&str> {
        lines
            .iter()
            .find(|l| {
                l.get(l.iter().position(|w| *w == "->").unwrap_or(l.len()) - 1) == Some(&name)
            })
            .unwrap_or_else(|| panic!("{name} not in listing:\n{listing}"))
    };
    let names: Vec<&str> = ["dev", "dev/console", "dev/kvm", "big", "link"].to_vec();
    assert_eq!(lines.len(), names.len(), "{listing}");

    let dev = find("dev");
    assert_eq!((dev[0], dev[1]), ("drwxr-xr-x", "2"));
    let console = find("dev/console");
    assert_eq!(console[0], "crw-------");
    assert_eq!((console[2], console[3]), ("root", "root"));
    assert_eq!((console[4], console[5]), ("5,", "1"));
    let kvm = find("dev/kvm");
    assert_eq!((kvm[0], kvm[4], kvm[5]), ("crw-rw----", "10,", "232"));
    let big = find("big");
    assert_eq!((big[0], big[4]), ("-rw-r--r--", "100003"));
    let link = find("link");
    assert_eq!(link[0], "lrwxrwxrwx");
    assert_eq!(link.last(), Some(&"dev/console"));
}

#[test]
fn identical_builds_are_byte_identical() {
    let s = Scratch::new("repro");
    let (src, _) = big_file(&s.0);
    let a = sample(&src);
    // A different mtime on the source must not leak into the archive.
    fs::File::options()
        .write(true)
        .open(&src)
        .unwrap()
        .set_modified(std::time::SystemTime::UNIX_EPOCH)
        .unwrap();
    let b = sample(&src);
    assert_eq!(a, b);
}

#[test]
fn header_layout_is_newc() {
    let mut w = Writer::new(Vec::new());
    w.file("a", 0o644, b"xyz").unwrap();
    let bytes = w.finish().unwrap();
    // magic, ino 1, mode 0100644, uid 0, gid 0, nlink 1, mtime 0, size 3.
    let head = std::str::from_utf8(&bytes[..6 + 8 * 7]).unwrap();
    let want = [
        "070701", "00000001", "000081A4", "00000000", "00000000", "00000001", "00000000",
        "00000003",
    ];
    assert_eq!(head, want.concat());
    // 110-byte header + "a\0" = 112, already aligned; data "xyz" + 1 pad.
    assert_eq!(&bytes[110..112], b"a\0");
    assert_eq!(&bytes[112..116], b"xyz\0");
    assert_eq!(&bytes[116..122], b"070701");
}

#[test]
fn rejects_paths_the_kernel_would_misread() {
    let mut w = Writer::new(Vec::new());
    for bad in ["/init", "", "a//b", "../x", "a/../b", "dir/"] {
        assert!(w.dir(bad, 0o755).is_err(), "{bad:?} accepted");
    }
    assert!(w.symlink("l", "").is_err());
}
