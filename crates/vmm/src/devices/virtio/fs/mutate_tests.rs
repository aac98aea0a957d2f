//! Changes the guest makes, seen on the host, and the ones it may not make.

use super::inodes::ROOT;
use super::SharedDir;
use fuse_backend_rs::abi::fuse_abi::{CreateIn, SetattrValid};
use fuse_backend_rs::api::filesystem::{Context, FileSystem, GetxattrReply, ListxattrReply};
use std::ffi::{CStr, CString};
use std::os::unix::fs::{FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use supermachine_protocol::fs_spec::SymlinkPolicy;

struct Share {
    _base: tempfile::TempDir,
    path: PathBuf,
    victim: PathBuf,
}

/// `base/share` (shared, with `file`) and `base/victim`, outside it.
fn share() -> Share {
    let base = tempfile::tempdir().unwrap();
    let path = base.path().join("share");
    std::fs::create_dir(&path).unwrap();
    std::fs::write(path.join("file"), "data").unwrap();
    let victim = base.path().join("victim");
    std::fs::write(&victim, "host only").unwrap();
    Share {
        _base: base,
        path,
        victim,
    }
}

fn c(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn ctx() -> Context {
    Context::new()
}

fn mode(path: &Path) -> u32 {
    std::fs::symlink_metadata(path)
        .unwrap()
        .permissions()
        .mode()
        & 0o7777
}

fn code<T>(r: std::io::Result<T>) -> i32 {
    match r {
        Ok(_) => 0,
        Err(e) => e.raw_os_error().unwrap(),
    }
}

fn create(dir: &SharedDir, parent: u64, name: &CStr, mode: u32) -> std::io::Result<u64> {
    let args = CreateIn {
        flags: libc::O_RDWR as u32,
        mode: libc::S_IFREG | mode,
        umask: 0o022,
        fuse_flags: 0,
    };
    dir.create(&ctx(), parent, name, args)
        .map(|(entry, ..)| entry.inode)
}

#[test]
fn what_the_guest_makes_appears_on_the_host_without_privilege_bits() {
    let s = share();
    let dir = SharedDir::open(&s.path, SymlinkPolicy::Opaque, false).unwrap();
    create(&dir, ROOT, &c("new"), 0o4777).unwrap();
    assert_eq!(
        mode(&s.path.join("new")),
        0o755,
        "umask applied, setuid dropped"
    );
    let sub = dir.mkdir(&ctx(), ROOT, &c("sub"), 0o2777, 0).unwrap();
    assert_eq!(mode(&s.path.join("sub")), 0o777, "setgid dropped");
    dir.mknod(&ctx(), sub.inode, &c("fifo"), libc::S_IFIFO | 0o644, 0, 0)
        .unwrap();
    assert!(std::fs::symlink_metadata(s.path.join("sub/fifo"))
        .unwrap()
        .file_type()
        .is_fifo());
    for device in [libc::S_IFCHR, libc::S_IFBLK] {
        let made = dir.mknod(&ctx(), ROOT, &c("dev"), device | 0o666, 0x0103, 0);
        assert_eq!(code(made), libc::EPERM);
    }
    let link = dir
        .symlink(&ctx(), &c("../../anywhere"), ROOT, &c("ln"))
        .unwrap();
    assert_eq!(
        std::fs::read_link(s.path.join("ln")).unwrap(),
        Path::new("../../anywhere")
    );
    let file = dir.lookup(&ctx(), ROOT, &c("file")).unwrap();
    dir.link(&ctx(), file.inode, sub.inode, &c("hard")).unwrap();
    assert_eq!(std::fs::read(s.path.join("sub/hard")).unwrap(), b"data");
    dir.rename(&ctx(), ROOT, &c("new"), sub.inode, &c("moved"), 0)
        .unwrap();
    assert!(s.path.join("sub/moved").exists() && !s.path.join("new").exists());
    let noreplace = libc::RENAME_NOREPLACE;
    let clash = dir.rename(
        &ctx(),
        sub.inode,
        &c("moved"),
        sub.inode,
        &c("hard"),
        noreplace,
    );
    assert_eq!(code(clash), libc::EEXIST);
    dir.unlink(&ctx(), ROOT, &c("ln")).unwrap();
    dir.forget(&ctx(), link.inode, 1);
    assert_eq!(code(dir.rmdir(&ctx(), ROOT, &c("sub"))), libc::ENOTEMPTY);
    for name in ["fifo", "hard", "moved"] {
        dir.unlink(&ctx(), sub.inode, &c(name)).unwrap();
    }
    dir.rmdir(&ctx(), ROOT, &c("sub")).unwrap();
    let left: Vec<_> = std::fs::read_dir(&s.path)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert_eq!(left, ["file"]);
}

#[test]
fn a_symlink_planted_at_a_name_is_never_written_through() {
    let s = share();
    std::os::unix::fs::symlink(&s.victim, s.path.join("trap")).unwrap();
    for policy in [
        SymlinkPolicy::Deny,
        SymlinkPolicy::Opaque,
        SymlinkPolicy::Follow,
    ] {
        let dir = SharedDir::open(&s.path, policy, false).unwrap();
        assert_ne!(code(create(&dir, ROOT, &c("trap"), 0o644)), 0, "{policy}");
        assert_eq!(std::fs::read_to_string(&s.victim).unwrap(), "host only");
        assert_eq!(mode(&s.victim), 0o644);
    }
    // Opaque: a hard link of the planted symlink links the symlink, never
    // the file it points at.
    let dir = SharedDir::open(&s.path, SymlinkPolicy::Opaque, false).unwrap();
    let trap = dir.lookup(&ctx(), ROOT, &c("trap")).unwrap();
    dir.link(&ctx(), trap.inode, ROOT, &c("trap2")).unwrap();
    let linked = std::fs::symlink_metadata(s.path.join("trap2")).unwrap();
    assert!(linked.file_type().is_symlink());
    assert_ne!(linked.ino(), std::fs::metadata(&s.victim).unwrap().ino());
}

#[test]
fn deny_refuses_new_links_of_either_kind() {
    let s = share();
    let dir = SharedDir::open(&s.path, SymlinkPolicy::Deny, false).unwrap();
    let made = dir.symlink(&ctx(), &c("file"), ROOT, &c("ln"));
    assert_eq!(code(made), libc::EPERM);
    let file = dir.lookup(&ctx(), ROOT, &c("file")).unwrap();
    assert_eq!(
        code(dir.link(&ctx(), file.inode, ROOT, &c("hard"))),
        libc::EPERM
    );
    assert!(!s.path.join("ln").exists() && !s.path.join("hard").exists());
}

#[test]
fn names_a_guest_could_not_create_are_refused() {
    let s = share();
    let dir = SharedDir::open(&s.path, SymlinkPolicy::Opaque, false).unwrap();
    for bad in [".", "..", "a/b", "../victim", ""] {
        assert_eq!(
            code(create(&dir, ROOT, &c(bad), 0o644)),
            libc::EINVAL,
            "{bad:?}"
        );
        assert_eq!(
            code(dir.mkdir(&ctx(), ROOT, &c(bad), 0o755, 0)),
            libc::EINVAL
        );
        assert_eq!(code(dir.unlink(&ctx(), ROOT, &c(bad))), libc::EINVAL);
        let renamed = dir.rename(&ctx(), ROOT, &c("file"), ROOT, &c(bad), 0);
        assert_eq!(code(renamed), libc::EINVAL, "{bad:?}");
    }
    let long = "n".repeat(256);
    assert_eq!(
        code(create(&dir, ROOT, &c(&long), 0o644)),
        libc::ENAMETOOLONG
    );
    let whiteout = libc::RENAME_WHITEOUT;
    let renamed = dir.rename(&ctx(), ROOT, &c("file"), ROOT, &c("x"), whiteout);
    assert_eq!(code(renamed), libc::EINVAL);
    assert_eq!(std::fs::read_to_string(&s.victim).unwrap(), "host only");
}

#[test]
fn a_read_only_mount_changes_nothing() {
    let s = share();
    let dir = SharedDir::open(&s.path, SymlinkPolicy::Opaque, true).unwrap();
    let file = dir.lookup(&ctx(), ROOT, &c("file")).unwrap();
    let erofs = libc::EROFS;
    assert_eq!(code(create(&dir, ROOT, &c("new"), 0o644)), erofs);
    assert_eq!(code(dir.mkdir(&ctx(), ROOT, &c("d"), 0o755, 0)), erofs);
    assert_eq!(
        code(dir.mknod(&ctx(), ROOT, &c("p"), libc::S_IFIFO | 0o644, 0, 0)),
        erofs
    );
    assert_eq!(code(dir.symlink(&ctx(), &c("x"), ROOT, &c("l"))), erofs);
    assert_eq!(code(dir.link(&ctx(), file.inode, ROOT, &c("h"))), erofs);
    assert_eq!(code(dir.unlink(&ctx(), ROOT, &c("file"))), erofs);
    assert_eq!(
        code(dir.rename(&ctx(), ROOT, &c("file"), ROOT, &c("f2"), 0)),
        erofs
    );
    let mut attr = file.attr;
    attr.st_mode = 0o600;
    let chmod = dir.setattr(&ctx(), file.inode, attr, None, SetattrValid::MODE);
    assert_eq!(code(chmod), erofs);
    let set = dir.setxattr(&ctx(), file.inode, &c("user.k"), b"v", 0);
    assert_eq!(code(set), erofs);
    assert_eq!(
        std::fs::read_to_string(s.path.join("file")).unwrap(),
        "data"
    );
    assert_eq!(std::fs::read_dir(&s.path).unwrap().count(), 1);
}

#[test]
fn attributes_change_within_what_the_host_allows() {
    let s = share();
    let dir = SharedDir::open(&s.path, SymlinkPolicy::Opaque, false).unwrap();
    let file = dir.lookup(&ctx(), ROOT, &c("file")).unwrap();
    let mut attr = file.attr;
    attr.st_mode = 0o6755;
    dir.setattr(&ctx(), file.inode, attr, None, SetattrValid::MODE)
        .unwrap();
    assert_eq!(mode(&s.path.join("file")), 0o755);
    attr.st_size = 2;
    dir.setattr(&ctx(), file.inode, attr, None, SetattrValid::SIZE)
        .unwrap();
    assert_eq!(std::fs::read(s.path.join("file")).unwrap(), b"da");
    attr.st_mtime = 1_000_000;
    attr.st_mtime_nsec = 0;
    let (after, _) = dir
        .setattr(&ctx(), file.inode, attr, None, SetattrValid::MTIME)
        .unwrap();
    assert_eq!(after.st_mtime, 1_000_000);
    attr.st_uid = attr.st_uid.wrapping_add(1);
    let chown = dir.setattr(&ctx(), file.inode, attr, None, SetattrValid::UID);
    assert_eq!(code(chown), libc::EPERM);
}

#[test]
fn only_user_xattrs_are_reachable() {
    let s = share();
    let dir = SharedDir::open(&s.path, SymlinkPolicy::Opaque, false).unwrap();
    let file = dir.lookup(&ctx(), ROOT, &c("file")).unwrap();
    if dir
        .setxattr(&ctx(), file.inode, &c("user.k"), b"value", 0)
        .is_err()
    {
        eprintln!("SKIP: the temporary directory's file system has no user xattrs");
        return;
    }
    match dir.getxattr(&ctx(), file.inode, &c("user.k"), 64).unwrap() {
        GetxattrReply::Value(v) => assert_eq!(v, b"value"),
        GetxattrReply::Count(n) => panic!("a count ({n}) where the value belongs"),
    }
    match dir.listxattr(&ctx(), file.inode, 256).unwrap() {
        ListxattrReply::Names(names) => assert_eq!(names, b"user.k\0"),
        ListxattrReply::Count(n) => panic!("a count ({n}) where the names belong"),
    }
    for name in [
        "security.capability",
        "trusted.x",
        "system.posix_acl_access",
    ] {
        let set = dir.setxattr(&ctx(), file.inode, &c(name), b"\x01\x00\x00\x02", 0);
        assert_eq!(code(set), libc::EPERM, "{name}");
        assert_eq!(
            code(dir.getxattr(&ctx(), file.inode, &c(name), 64)),
            libc::ENODATA
        );
    }
    dir.removexattr(&ctx(), file.inode, &c("user.k")).unwrap();
    assert_eq!(
        code(dir.getxattr(&ctx(), file.inode, &c("user.k"), 64)),
        libc::ENODATA
    );
}
