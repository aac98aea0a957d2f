//! File requests end to end: write, read, stat, mkdir, remove, list.

// A test binary: a helper that cannot do its job panics, which fails the
// test that called it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{fnv, noise, Agent};
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;
use supermachine_protocol::{
    read_frame, write_frame, AgentMessage, ErrorKind, FileKind, FileStat, HostMessage, Request,
    WriteFileRequest, MAX_CHUNK, MAX_ENTRIES_PER_FRAME,
};

fn p(path: &Path) -> String {
    path.to_string_lossy().into_owned()
}

/// Sends a whole file in `chunk`-sized frames; returns the agent's answer.
fn write(agent: &Agent, req: WriteFileRequest, data: &[u8], chunk: usize) -> AgentMessage {
    let mut s = agent.request(Request::WriteFile(req));
    for part in data.chunks(chunk) {
        write_frame(&mut s, &HostMessage::Data(part.to_vec())).expect("send data");
    }
    write_frame(&mut s, &HostMessage::End).expect("send end");
    read_frame(&mut s).expect("answer")
}

/// Reads a file: its stat and content.
fn read(agent: &Agent, path: &str) -> Result<(FileStat, Vec<u8>), (ErrorKind, String)> {
    let mut s = agent.request(Request::ReadFile { path: path.into() });
    let stat = match read_frame(&mut s).expect("first frame") {
        AgentMessage::Stat(stat) => stat,
        AgentMessage::Error { kind, message } => return Err((kind, message)),
        other => panic!("expected Stat, got {other:?}"),
    };
    let mut data = Vec::new();
    loop {
        match read_frame(&mut s).expect("frame") {
            AgentMessage::Data(d) => {
                assert!(d.len() <= MAX_CHUNK);
                data.extend(d);
            }
            AgentMessage::Done { count } => {
                assert_eq!(count, data.len() as u64);
                return Ok((stat, data));
            }
            other => panic!("unexpected {other:?}"),
        }
    }
}

fn error_kind(msg: AgentMessage) -> ErrorKind {
    match msg {
        AgentMessage::Error { kind, .. } => kind,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn multi_megabyte_binary_round_trip() {
    let agent = Agent::start();
    let path = p(&agent.scratch("rt").join("blob.bin"));
    let mut data = noise(3 * 1024 * 1024 + 17, 42);
    data[1000..5000].fill(0);
    let answer = write(&agent, WriteFileRequest::new(&path), &data, MAX_CHUNK);
    assert_eq!(
        answer,
        AgentMessage::Done {
            count: data.len() as u64
        }
    );
    assert_eq!(fnv(&std::fs::read(&path).expect("read back")), fnv(&data));
    let (stat, back) = read(&agent, &path).expect("read");
    assert_eq!(
        (stat.kind, stat.size, stat.mode),
        (FileKind::File, data.len() as u64, 0o644)
    );
    assert_eq!(fnv(&back), fnv(&data));
    assert!(back == data);

    // Replacing shrinks the file; odd chunk sizes are fine.
    let answer = write(&agent, WriteFileRequest::new(&path), b"short", 2);
    assert_eq!(answer, AgentMessage::Done { count: 5 });
    assert_eq!(std::fs::read(&path).expect("read"), b"short");
}

#[test]
fn append_mode_and_owner_are_applied() {
    let agent = Agent::start();
    let dir = agent.scratch("attrs");
    let path = p(&dir.join("f"));
    let mut req = WriteFileRequest::new(&path);
    req.mode = 0o4751; // beyond the umask, setuid included
    req.uid = Some(1234);
    req.gid = Some(5678);
    assert!(matches!(
        write(&agent, req, b"one\n", 3),
        AgentMessage::Done { count: 4 }
    ));
    let meta = std::fs::metadata(&path).expect("stat");
    assert_eq!(
        (meta.mode() & 0o7777, meta.uid(), meta.gid()),
        (0o4751, 1234, 5678)
    );

    let mut req = WriteFileRequest::new(&path);
    req.append = true;
    req.mode = 0o600; // an existing file keeps its mode
    assert!(matches!(
        write(&agent, req, b"two\n", 100),
        AgentMessage::Done { count: 4 }
    ));
    assert_eq!(std::fs::read(&path).expect("read"), b"one\ntwo\n");
    assert_eq!(
        std::fs::metadata(&path).expect("stat").mode() & 0o7777,
        0o4751
    );

    // Appending creates a missing file with the mode.
    let fresh = p(&dir.join("fresh"));
    let mut req = WriteFileRequest::new(&fresh);
    req.append = true;
    req.mode = 0o666;
    assert!(matches!(
        write(&agent, req, b"x", 1),
        AgentMessage::Done { count: 1 }
    ));
    assert_eq!(
        std::fs::metadata(&fresh).expect("stat").mode() & 0o7777,
        0o666
    );
}

fn only_entry(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir(dir)
        .expect("read dir")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    names.sort();
    names
}

#[test]
fn interrupted_or_broken_writes_leave_the_target_untouched() {
    let agent = Agent::start();
    let dir = agent.scratch("interrupt");
    let target = dir.join("target");
    std::fs::write(&target, "old").expect("seed");

    let mut s = agent.request(Request::WriteFile(WriteFileRequest::new(p(&target))));
    write_frame(&mut s, &HostMessage::Data(vec![7; 100_000])).expect("data");
    // The temporary file exists while the write is under way...
    assert!(common::eventually(Duration::from_secs(20), || only_entry(
        &dir
    )
    .len()
        == 2));
    drop(s);
    // ...and is gone once the agent sees the connection close.
    let clean = || only_entry(&dir) == ["target"];
    assert!(
        common::eventually(Duration::from_secs(20), clean),
        "{:?}",
        only_entry(&dir)
    );
    assert_eq!(std::fs::read(&target).expect("read"), b"old");

    // A frame that does not belong in a write.
    let mut s = agent.request(Request::WriteFile(WriteFileRequest::new(p(&target))));
    write_frame(&mut s, &HostMessage::Data(vec![7; 10])).expect("data");
    write_frame(&mut s, &HostMessage::CloseStdin).expect("bad frame");
    let answer: AgentMessage = read_frame(&mut s).expect("answer");
    assert_eq!(error_kind(answer), ErrorKind::BadRequest);
    assert!(
        common::eventually(Duration::from_secs(20), clean),
        "{:?}",
        only_entry(&dir)
    );
    assert_eq!(std::fs::read(&target).expect("read"), b"old");
}

#[test]
fn write_errors_and_create_parents() {
    let agent = Agent::start();
    let dir = agent.scratch("parents");
    let deep = p(&dir.join("a/b/c/file"));
    // Far more than the socket buffers: the agent answers at once and
    // drops the rest, so the host can send it all, then read the answer.
    let answer = write(
        &agent,
        WriteFileRequest::new(&deep),
        &[1; 4 << 20],
        MAX_CHUNK,
    );
    match answer {
        AgentMessage::Error { kind, message } => {
            assert_eq!(kind, ErrorKind::NotFound);
            assert!(message.starts_with(&format!("write {deep}: ")), "{message}");
        }
        other => panic!("{other:?}"),
    }
    let mut req = WriteFileRequest::new(&deep);
    req.create_parents = true;
    assert!(matches!(
        write(&agent, req, b"x", 1),
        AgentMessage::Done { count: 1 }
    ));
    let a = std::fs::metadata(dir.join("a")).expect("stat a");
    assert!(a.is_dir());
    assert_eq!(std::fs::read(&deep).expect("read"), b"x");

    let answer = write(&agent, WriteFileRequest::new(p(&dir)), b"x", 1);
    assert_eq!(error_kind(answer), ErrorKind::IsADirectory);
    let answer = write(&agent, WriteFileRequest::new("relative/path"), b"x", 1);
    assert_eq!(error_kind(answer), ErrorKind::BadRequest);
}

#[test]
fn read_errors() {
    let agent = Agent::start();
    let dir = agent.scratch("readerr");
    let missing = p(&dir.join("missing"));
    let (kind, message) = read(&agent, &missing).expect_err("missing file");
    assert_eq!(kind, ErrorKind::NotFound);
    assert_eq!(
        message,
        format!("read {missing}: No such file or directory")
    );
    assert_eq!(
        read(&agent, &p(&dir)).expect_err("dir").0,
        ErrorKind::IsADirectory
    );
    assert_eq!(
        read(&agent, "tmp/x").expect_err("relative").0,
        ErrorKind::BadRequest
    );
    // An empty file: Stat, then Done at once.
    std::fs::write(dir.join("empty"), "").expect("seed");
    let (stat, data) = read(&agent, &p(&dir.join("empty"))).expect("empty");
    assert_eq!((stat.size, data.len()), (0, 0));
}

#[test]
fn stat_does_not_follow_symlinks() {
    let agent = Agent::start();
    let dir = agent.scratch("stat");
    std::fs::write(dir.join("file"), "12345").expect("seed");
    std::os::unix::fs::symlink("file", dir.join("link")).expect("symlink");
    let ask = |name: &str| {
        agent.ask(Request::Stat {
            path: p(&dir.join(name)),
        })
    };
    match ask("link") {
        AgentMessage::Stat(st) => {
            assert_eq!(st.kind, FileKind::Symlink);
            assert_eq!(st.link_target.as_deref(), Some("file"));
        }
        other => panic!("{other:?}"),
    }
    match ask("file") {
        AgentMessage::Stat(st) => {
            assert_eq!(
                (st.kind, st.size, st.link_target),
                (FileKind::File, 5, None)
            );
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(error_kind(ask("nope")), ErrorKind::NotFound);
    let under_file = agent.ask(Request::Stat {
        path: p(&dir.join("file/x")),
    });
    assert_eq!(error_kind(under_file), ErrorKind::NotADirectory);
}

#[test]
fn mkdir_with_and_without_parents() {
    let agent = Agent::start();
    let dir = agent.scratch("mkdir");
    let mk = |path: &Path, mode, parents| {
        agent.ask(Request::Mkdir {
            path: p(path),
            mode,
            parents,
        })
    };
    let deep = dir.join("x/y/z");
    assert_eq!(error_kind(mk(&deep, 0o755, false)), ErrorKind::NotFound);
    assert_eq!(mk(&deep, 0o700, true), AgentMessage::Done { count: 0 });
    let mode = std::fs::metadata(&deep).expect("stat").permissions().mode() & 0o7777;
    assert_eq!(mode, 0o700);
    // mkdir -p accepts an existing directory; plain mkdir does not.
    assert_eq!(mk(&deep, 0o755, true), AgentMessage::Done { count: 0 });
    assert_eq!(
        error_kind(mk(&deep, 0o755, false)),
        ErrorKind::AlreadyExists
    );
    std::fs::write(dir.join("file"), "").expect("seed");
    assert_eq!(
        error_kind(mk(&dir.join("file"), 0o755, true)),
        ErrorKind::AlreadyExists
    );
    let sticky = dir.join("sticky");
    assert_eq!(mk(&sticky, 0o1777, false), AgentMessage::Done { count: 0 });
    let mode = std::fs::metadata(&sticky)
        .expect("stat")
        .permissions()
        .mode()
        & 0o7777;
    assert_eq!(mode, 0o1777);
}

#[test]
fn remove_files_dirs_and_trees_without_following_links() {
    let agent = Agent::start();
    let dir = agent.scratch("remove");
    let rm = |path: &Path, recursive| {
        agent.ask(Request::Remove {
            path: p(path),
            recursive,
        })
    };
    // A tree holding a link to a sibling directory with a file in it.
    let tree = dir.join("tree");
    let sibling = dir.join("sibling");
    std::fs::create_dir_all(tree.join("sub")).expect("mkdir");
    std::fs::create_dir_all(&sibling).expect("mkdir");
    std::fs::write(sibling.join("keep"), "precious").expect("seed");
    std::fs::write(tree.join("sub/f"), "x").expect("seed");
    std::os::unix::fs::symlink(&sibling, tree.join("sub/link")).expect("symlink");
    std::os::unix::fs::symlink(&sibling, tree.join("link2")).expect("symlink");

    assert_eq!(error_kind(rm(&tree, false)), ErrorKind::DirectoryNotEmpty);
    assert_eq!(rm(&tree, true), AgentMessage::Done { count: 0 });
    assert!(!tree.exists());
    assert_eq!(
        std::fs::read(sibling.join("keep")).expect("kept"),
        b"precious"
    );

    // A link itself is removed, never its target.
    let link = dir.join("link");
    std::os::unix::fs::symlink(&sibling, &link).expect("symlink");
    assert_eq!(rm(&link, true), AgentMessage::Done { count: 0 });
    assert!(sibling.join("keep").exists() && !link.exists());

    let empty = dir.join("empty");
    std::fs::create_dir(&empty).expect("mkdir");
    assert_eq!(rm(&empty, false), AgentMessage::Done { count: 0 });
    assert_eq!(
        rm(&sibling.join("keep"), false),
        AgentMessage::Done { count: 0 }
    );
    assert_eq!(error_kind(rm(&empty, false)), ErrorKind::NotFound);
    assert_eq!(error_kind(rm(Path::new("/"), true)), ErrorKind::BadRequest);
    assert!(Path::new("/proc/self").exists(), "still alive");
}

#[test]
fn list_batches_sorted_entries() {
    let agent = Agent::start();
    let dir = agent.scratch("list");
    for i in (0..299).rev() {
        std::fs::write(dir.join(format!("f{i:03}")), vec![b'x'; i]).expect("seed");
    }
    std::os::unix::fs::symlink("f001", dir.join("zlink")).expect("symlink");
    let mut s: UnixStream = agent.request(Request::List { path: p(&dir) });
    let (mut batches, mut entries) = (0, Vec::new());
    let count = loop {
        match read_frame(&mut s).expect("frame") {
            AgentMessage::Entries(batch) => {
                assert!(!batch.is_empty() && batch.len() <= MAX_ENTRIES_PER_FRAME);
                batches += 1;
                entries.extend(batch);
            }
            AgentMessage::Done { count } => break count,
            other => panic!("{other:?}"),
        }
    };
    assert_eq!((count, entries.len()), (300, 300));
    assert!(batches >= 3, "{batches} batches");
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    let mut sorted = names.clone();
    sorted.sort_unstable();
    assert_eq!(names, sorted);
    assert_eq!((names[0], names[299]), ("f000", "zlink"));
    assert_eq!(
        (entries[7].stat.kind, entries[7].stat.size),
        (FileKind::File, 7)
    );
    assert_eq!(entries[299].stat.kind, FileKind::Symlink);
    assert_eq!(entries[299].stat.link_target.as_deref(), Some("f001"));

    let not_dir = agent.ask(Request::List {
        path: p(&dir.join("f001")),
    });
    assert_eq!(error_kind(not_dir), ErrorKind::NotADirectory);
    let empty = agent.scratch("list-empty");
    assert_eq!(
        agent.ask(Request::List { path: p(&empty) }),
        AgentMessage::Done { count: 0 }
    );
}
