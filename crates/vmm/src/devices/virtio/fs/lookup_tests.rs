//! [`SharedDir`] lookups under each symlink policy, against a tree that
//! has a secret next to the shared directory: no name, link or race a
//! guest can send reaches it (except through `follow`, which trusts).

use super::inodes::ROOT;
use super::SharedDir;
use fuse_backend_rs::api::filesystem::{Context, Entry, FileSystem};
use std::ffi::CString;
use std::os::unix::fs::{symlink, MetadataExt};
use std::path::PathBuf;
use supermachine_protocol::fs_spec::SymlinkPolicy;

/// `base/share` (shared: a file, a subdirectory, host-planted symlinks out
/// of it) and `base/outside/dir/secret`.
struct Tree {
    _base: tempfile::TempDir,
    share: PathBuf,
    secret: PathBuf,
}

fn tree() -> Tree {
    let base = tempfile::tempdir().unwrap();
    let share = base.path().join("share");
    let outside = base.path().join("outside");
    std::fs::create_dir_all(share.join("sub")).unwrap();
    std::fs::create_dir_all(outside.join("dir")).unwrap();
    std::fs::write(share.join("file"), "in the share").unwrap();
    std::fs::write(share.join("sub/inner"), "inner").unwrap();
    let secret = outside.join("dir/secret");
    std::fs::write(&secret, "SECRET").unwrap();
    symlink("../outside", share.join("up")).unwrap();
    symlink(&outside, share.join("abs")).unwrap();
    symlink("/proc/self/root", share.join("proc")).unwrap();
    symlink("file", share.join("rel")).unwrap();
    Tree {
        _base: base,
        share,
        secret,
    }
}

fn name(s: &str) -> CString {
    CString::new(s).unwrap()
}

fn lookup(dir: &SharedDir, parent: u64, n: &str) -> std::io::Result<Entry> {
    dir.lookup(&Context::new(), parent, &name(n))
}

fn errno(r: std::io::Result<Entry>) -> i32 {
    match r {
        Ok(e) => panic!(
            "an entry (mode {:o}) where an error belongs",
            e.attr.st_mode
        ),
        Err(e) => e.raw_os_error().unwrap(),
    }
}

fn kind(e: &Entry) -> u32 {
    e.attr.st_mode & libc::S_IFMT
}

const SAFE: [SymlinkPolicy; 2] = [SymlinkPolicy::Deny, SymlinkPolicy::Opaque];

#[test]
fn files_and_directories_are_found_with_their_attributes() {
    let t = tree();
    for policy in [
        SymlinkPolicy::Deny,
        SymlinkPolicy::Opaque,
        SymlinkPolicy::Follow,
    ] {
        let dir = SharedDir::open(&t.share, policy, false).unwrap();
        let file = lookup(&dir, ROOT, "file").unwrap();
        assert_eq!((kind(&file), file.attr.st_size), (libc::S_IFREG, 12));
        let (attr, _) = dir.getattr(&Context::new(), file.inode, None).unwrap();
        assert_eq!(
            attr.st_ino,
            std::fs::metadata(t.share.join("file")).unwrap().ino()
        );
        let sub = lookup(&dir, ROOT, "sub").unwrap();
        assert_eq!(kind(&sub), libc::S_IFDIR);
        assert_eq!(
            kind(&lookup(&dir, sub.inode, "inner").unwrap()),
            libc::S_IFREG
        );
        assert_eq!(errno(lookup(&dir, ROOT, "missing")), libc::ENOENT);
        assert_eq!(errno(lookup(&dir, file.inode, "x")), libc::ENOTDIR);
        // The same file twice is one node.
        assert_eq!(lookup(&dir, ROOT, "file").unwrap().inode, file.inode);
    }
}

#[test]
fn dot_and_dotdot_never_leave_the_root() {
    let t = tree();
    for policy in [
        SymlinkPolicy::Deny,
        SymlinkPolicy::Opaque,
        SymlinkPolicy::Follow,
    ] {
        let dir = SharedDir::open(&t.share, policy, false).unwrap();
        assert_eq!(lookup(&dir, ROOT, "..").unwrap().inode, ROOT);
        assert_eq!(lookup(&dir, ROOT, ".").unwrap().inode, ROOT);
        let sub = lookup(&dir, ROOT, "sub").unwrap();
        assert_eq!(lookup(&dir, sub.inode, "..").unwrap().inode, ROOT);
        assert_eq!(lookup(&dir, sub.inode, ".").unwrap().inode, sub.inode);
        let root = lookup(&dir, ROOT, "..").unwrap();
        let share_ino = std::fs::metadata(&t.share).unwrap().ino();
        assert_eq!(
            root.attr.st_ino, share_ino,
            "the share itself, not its parent"
        );
    }
}

#[test]
fn names_that_are_not_one_component_are_refused() {
    let t = tree();
    let dir = SharedDir::open(&t.share, SymlinkPolicy::Opaque, false).unwrap();
    for bad in ["sub/inner", "../outside", "/etc", "a/", ""] {
        assert_eq!(errno(lookup(&dir, ROOT, bad)), libc::EINVAL, "{bad:?}");
    }
    assert_eq!(
        errno(lookup(&dir, ROOT, &"n".repeat(256))),
        libc::ENAMETOOLONG
    );
    assert_eq!(
        errno(lookup(&dir, ROOT, &"n".repeat(4000))),
        libc::ENAMETOOLONG
    );
}

#[test]
fn deny_refuses_to_look_up_a_symlink() {
    let t = tree();
    let dir = SharedDir::open(&t.share, SymlinkPolicy::Deny, false).unwrap();
    for link in ["up", "abs", "proc", "rel"] {
        assert_eq!(errno(lookup(&dir, ROOT, link)), libc::EACCES, "{link}");
    }
}

#[test]
fn opaque_shows_symlinks_as_symlinks_and_never_follows_them() {
    let t = tree();
    let dir = SharedDir::open(&t.share, SymlinkPolicy::Opaque, false).unwrap();
    for (link, target) in [
        ("up", "../outside".to_string()),
        (
            "abs",
            t.secret
                .parent()
                .unwrap()
                .parent()
                .unwrap()
                .display()
                .to_string(),
        ),
        ("proc", "/proc/self/root".to_string()),
        ("rel", "file".to_string()),
    ] {
        let entry = lookup(&dir, ROOT, link).unwrap();
        assert_eq!(kind(&entry), libc::S_IFLNK, "{link}");
        let bytes = dir.readlink(&Context::new(), entry.inode).unwrap();
        assert_eq!(bytes, target.as_bytes(), "{link}: the target as stored");
        // Nothing is found through it: it is not a directory here.
        assert_eq!(
            errno(lookup(&dir, entry.inode, "dir")),
            libc::ENOTDIR,
            "{link}"
        );
    }
}

#[test]
fn follow_follows_host_symlinks_and_shows_dangling_ones() {
    let t = tree();
    symlink("/nonexistent/target", t.share.join("dangling")).unwrap();
    let dir = SharedDir::open(&t.share, SymlinkPolicy::Follow, false).unwrap();
    let up = lookup(&dir, ROOT, "up").unwrap();
    assert_eq!(
        kind(&up),
        libc::S_IFDIR,
        "trusted: followed out of the share"
    );
    assert_eq!(kind(&lookup(&dir, ROOT, "rel").unwrap()), libc::S_IFREG);
    let dangling = lookup(&dir, ROOT, "dangling").unwrap();
    assert_eq!(kind(&dangling), libc::S_IFLNK);
    // Even here, /proc magic links are not followed: the link is shown.
    let proc = lookup(&dir, ROOT, "proc").unwrap();
    assert_eq!(kind(&proc), libc::S_IFLNK);
}

#[test]
fn node_ids_the_guest_does_not_hold_are_stale() {
    let t = tree();
    let dir = SharedDir::open(&t.share, SymlinkPolicy::Opaque, false).unwrap();
    let ctx = Context::new();
    for bogus in [0, 2, 999, u64::MAX] {
        assert_eq!(errno(lookup(&dir, bogus, "file")), libc::ESTALE, "{bogus}");
        assert!(dir.getattr(&ctx, bogus, None).is_err());
        assert!(dir.readlink(&ctx, bogus).is_err());
        dir.forget(&ctx, bogus, u64::MAX);
    }
    let file = lookup(&dir, ROOT, "file").unwrap();
    lookup(&dir, ROOT, "file").unwrap();
    dir.forget(&ctx, file.inode, 1);
    assert!(
        dir.getattr(&ctx, file.inode, None).is_ok(),
        "one reference left"
    );
    dir.batch_forget(&ctx, vec![(file.inode, 1), (file.inode, 5), (12345, 1)]);
    assert_eq!(
        dir.getattr(&ctx, file.inode, None)
            .unwrap_err()
            .raw_os_error(),
        Some(libc::ESTALE)
    );
    // The root cannot be forgotten.
    dir.forget(&ctx, ROOT, u64::MAX);
    assert!(lookup(&dir, ROOT, "file").is_ok());
    assert_ne!(
        lookup(&dir, ROOT, "file").unwrap().inode,
        file.inode,
        "ids are not reused"
    );
}

#[test]
fn the_table_is_bounded_and_forgetting_frees_room() {
    let t = tree();
    // The root and two more.
    let dir = SharedDir::open_with_limit(&t.share, SymlinkPolicy::Opaque, false, 3).unwrap();
    let file = lookup(&dir, ROOT, "file").unwrap();
    lookup(&dir, ROOT, "sub").unwrap();
    assert_eq!(errno(lookup(&dir, ROOT, "rel")), libc::ENFILE);
    // What the guest already holds is still found.
    assert_eq!(lookup(&dir, ROOT, "file").unwrap().inode, file.inode);
    dir.forget(&Context::new(), file.inode, 2);
    assert!(lookup(&dir, ROOT, "rel").is_ok());
    assert_eq!(dir.nodes(), 3);
}

/// The classic race: the host swaps a directory for a symlink to outside
/// while the guest looks up through it. Under deny and opaque no lookup
/// ever lands on the secret.
#[test]
fn a_directory_swapped_for_a_symlink_during_lookups_never_leads_out() {
    for policy in SAFE {
        let t = tree();
        let d = t.share.join("d");
        let target = t.secret.parent().unwrap().to_path_buf();
        let secret_ino = std::fs::metadata(&t.secret).unwrap().ino();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let racer = {
            let (d, stop) = (d.clone(), stop.clone());
            let staged_dir = t.share.join(".d-dir");
            let staged_link = t.share.join(".d-link");
            std::thread::spawn(move || {
                let mut swaps = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let _ = std::fs::create_dir(&staged_dir);
                    let _ = std::fs::write(staged_dir.join("secret"), "decoy");
                    let _ = std::fs::rename(&staged_dir, &d);
                    let _ = std::fs::remove_file(&staged_link);
                    let _ = symlink(&target, &staged_link);
                    // Replace whatever is at d with the symlink.
                    let _ = std::fs::remove_dir_all(&d);
                    let _ = std::fs::rename(&staged_link, &d);
                    let _ = std::fs::remove_file(&d);
                    swaps += 1;
                }
                swaps
            })
        };
        let dir = SharedDir::open(&t.share, policy, false).unwrap();
        let ctx = Context::new();
        for _ in 0..5_000 {
            if let Ok(parent) = lookup(&dir, ROOT, "d") {
                if let Ok(found) = lookup(&dir, parent.inode, "secret") {
                    assert_ne!(
                        found.attr.st_ino, secret_ino,
                        "{policy}: reached the secret"
                    );
                    dir.forget(&ctx, found.inode, 1);
                }
                dir.forget(&ctx, parent.inode, 1);
            }
        }
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        assert!(racer.join().unwrap() > 0, "the racer ran");
        assert_eq!(std::fs::read_to_string(&t.secret).unwrap(), "SECRET");
    }
}
