//! Hostile OCI layouts and docker archives, built here: blobs that are
//! symlinks to host files or devices, fifos, blobs larger than declared,
//! archives with huge records, and control characters in every string an
//! image can get printed. Nothing may be read from outside the layout,
//! nothing may hang, and no message may carry a control character.

// A test binary: a helper that cannot do its job panics, which fails the
// test that called it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::mpsc;
use std::time::Duration;

use common::*;
use supermachine_oci::{Error, PullOptions, Source, Store};

fn pull(store: &Store, source: &str) -> supermachine_oci::Result<supermachine_oci::PulledImage> {
    runtime().block_on(store.pull(&Source::parse(source)?, &PullOptions::default()))
}

/// Pulls on another thread, failing the test instead of hanging it.
fn pull_or_hang(store: &Store, source: &str) -> supermachine_oci::Result<()> {
    let (tx, rx) = mpsc::channel();
    let (store, source) = (store.clone(), source.to_string());
    std::thread::spawn(move || {
        let _ = tx.send(pull(&store, &source).map(|_| ()));
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("the pull hung (a fifo or device was opened and read)")
}

fn no_control_chars(e: &Error) {
    let msg = e.to_string();
    assert!(
        !msg.chars().any(char::is_control),
        "control characters in: {msg:?}"
    );
}

fn tmp_files(store: &Store) -> usize {
    std::fs::read_dir(store.root().join("tmp")).unwrap().count()
}

/// A one-layer image whose layer is `layer` (any bytes).
fn image_with_layer(layer: &[u8]) -> TestImage {
    let mut img = TestImage::new("amd64", &[tar_of(&[("a", b"a")])], false, &["/a"]);
    img.layers = vec![Blob::new(LAYER_TAR, layer.to_vec())];
    img.manifest = Blob::new(
        OCI_MANIFEST,
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": img.config.descriptor(),
            "layers": [img.layers[0].descriptor()],
        }))
        .unwrap(),
    );
    img
}

fn replace_with_symlink(path: &Path, target: &Path) {
    std::fs::remove_file(path).unwrap();
    std::os::unix::fs::symlink(target, path).unwrap();
}

#[test]
fn a_blob_symlinked_to_a_host_file_is_never_read() {
    let tmp = tempfile::tempdir().unwrap();
    let secret = tmp.path().join("shadow");
    let secret_bytes = b"root:$6$secret-hash:19000:0:99999:7:::\n".repeat(7);
    std::fs::write(&secret, &secret_bytes).unwrap();
    std::fs::set_permissions(&secret, std::fs::Permissions::from_mode(0o600)).unwrap();
    let secret_hex = Blob::new(LAYER_TAR, secret_bytes.clone()).hex();

    // The digest is known: the file would be copied into the store.
    let img = image_with_layer(&secret_bytes);
    let layout = tmp.path().join("known");
    write_layout(&layout, &[(None, &img.manifest)], &img.blobs());
    replace_with_symlink(&layout.join("blobs/sha256").join(&secret_hex), &secret);
    let store = Store::open(tmp.path().join("store")).unwrap();
    let e = pull(&store, &format!("oci:{}", layout.display())).unwrap_err();
    assert!(matches!(e, Error::Layout { .. }), "{e}");
    assert!(e.to_string().contains("symbolic link"), "{e}");
    assert!(!store
        .blob_path(&img.layers[0].digest().parse().unwrap())
        .exists());

    // The digest is not known: the error must not tell the file's digest
    // or size.
    let other = image_with_layer(b"some other layer");
    let layout = tmp.path().join("unknown");
    write_layout(&layout, &[(None, &other.manifest)], &other.blobs());
    replace_with_symlink(
        &layout.join("blobs/sha256").join(other.layers[0].hex()),
        &secret,
    );
    let e = pull(&store, &format!("oci:{}", layout.display())).unwrap_err();
    let msg = e.to_string();
    assert!(!msg.contains(&secret_hex), "{msg}");
    assert!(!msg.contains(&secret_bytes.len().to_string()), "{msg}");
    assert_eq!(tmp_files(&store), 0);

    // Symlinked metadata files and directories are refused too.
    for victim in ["index.json", "oci-layout"] {
        let layout = tmp.path().join(format!("meta-{victim}"));
        write_layout(&layout, &[(None, &other.manifest)], &other.blobs());
        let real = tmp.path().join(format!("real-{victim}"));
        std::fs::rename(layout.join(victim), &real).unwrap();
        std::os::unix::fs::symlink(&real, layout.join(victim)).unwrap();
        let e = pull(&store, &format!("oci:{}", layout.display())).unwrap_err();
        assert!(e.to_string().contains("symbolic link"), "{victim}: {e}");
    }
    let layout = tmp.path().join("dirlink");
    write_layout(&layout, &[(None, &other.manifest)], &other.blobs());
    std::fs::rename(layout.join("blobs"), tmp.path().join("real-blobs")).unwrap();
    std::os::unix::fs::symlink(tmp.path().join("real-blobs"), layout.join("blobs")).unwrap();
    let e = pull(&store, &format!("oci:{}", layout.display())).unwrap_err();
    assert!(e.to_string().contains("symbolic link"), "{e}");
}

#[test]
fn devices_fifos_and_oversized_blobs_are_refused_before_reading() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    // /dev/zero declared as 64 MiB: it used to be read until the size.
    let zeros = vec![0u8; 64 << 20];
    let img = image_with_layer(&zeros);
    let layout = tmp.path().join("zero");
    write_layout(&layout, &[(None, &img.manifest)], &img.blobs());
    let blob = layout.join("blobs/sha256").join(img.layers[0].hex());
    replace_with_symlink(&blob, Path::new("/dev/zero"));
    let e = pull_or_hang(&store, &format!("oci:{}", layout.display())).unwrap_err();
    assert!(e.to_string().contains("symbolic link"), "{e}");
    assert_eq!(tmp_files(&store), 0);

    // A fifo: the pull used to block forever.
    std::fs::remove_file(&blob).unwrap();
    let c = std::ffi::CString::new(blob.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let e = pull_or_hang(&store, &format!("oci:{}", layout.display())).unwrap_err();
    assert!(e.to_string().contains("fifo"), "{e}");

    // A regular file larger than its descriptor says: refused by size,
    // before a byte is copied.
    std::fs::remove_file(&blob).unwrap();
    let mut bigger = zeros.clone();
    bigger.extend_from_slice(b"more");
    std::fs::write(&blob, &bigger).unwrap();
    let e = pull(&store, &format!("oci:{}", layout.display())).unwrap_err();
    assert!(
        matches!(e, Error::SizeMismatch { expected, actual, .. } if expected == 64 << 20 && actual == (64 << 20) + 4),
        "{e}"
    );
    assert_eq!(store.bytes_written(), img.config.bytes.len() as u64);
}

#[test]
fn hostile_docker_archives_are_refused_with_bounded_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();

    // The archive itself is a fifo.
    let fifo = tmp.path().join("fifo.tar");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
    let e = pull_or_hang(&store, &format!("docker-archive:{}", fifo.display())).unwrap_err();
    assert!(e.to_string().contains("fifo"), "{e}");

    // A GNU long-name record claiming 1 GiB, in a sparse file: the tar
    // crate used to buffer it whole (a 6 GiB one passed 4 GiB of RSS).
    let huge = tmp.path().join("huge.tar");
    let mut h = tar::Header::new_gnu();
    h.set_path("././@LongLink").unwrap();
    h.set_entry_type(tar::EntryType::GNULongName);
    h.set_size(1 << 30);
    h.set_cksum();
    std::fs::write(&huge, h.as_bytes()).unwrap();
    std::fs::File::options()
        .write(true)
        .open(&huge)
        .unwrap()
        .set_len((1 << 30) + 4096)
        .unwrap();
    let e = pull(&store, &format!("docker-archive:{}", huge.display())).unwrap_err();
    assert!(matches!(e, Error::DockerArchive { .. }), "{e}");
    assert!(e.to_string().contains("limit"), "{e}");

    // A member claiming more bytes than the archive has.
    let short = tmp.path().join("short.tar");
    let mut h = tar::Header::new_gnu();
    h.set_path("manifest.json").unwrap();
    h.set_entry_type(tar::EntryType::Regular);
    h.set_size(1 << 20);
    h.set_cksum();
    std::fs::write(&short, [&h.as_bytes()[..], b"[]"].concat()).unwrap();
    let e = pull(&store, &format!("docker-archive:{}", short.display())).unwrap_err();
    assert!(e.to_string().contains("past the end"), "{e}");
}

/// Every string an image supplies and an error prints: tags, platforms,
/// os/arch, digests that fail to parse, media types, RepoTags.
#[test]
fn control_characters_from_images_never_reach_the_terminal() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let img = TestImage::small("amd64", 1, 100);
    let esc = "\u{1b}]0;owned\u{7}\u{1b}[2J\u{9b}31m\u{202e}";

    // Tags listed when none is asked for.
    let layout = tmp.path().join("tags");
    write_layout(
        &layout,
        &[
            (Some(&format!("a{esc}")), &img.manifest),
            (Some(&format!("b{esc}")), &img.manifest),
        ],
        &img.blobs(),
    );
    let e = pull(&store, &format!("oci:{}", layout.display())).unwrap_err();
    assert!(e.to_string().contains("tags:"), "{e}");
    no_control_chars(&e);
    let e = pull(&store, &format!("oci:{}:nope", layout.display())).unwrap_err();
    no_control_chars(&e);

    // Platforms of an index, and os/arch of a config.
    let mut index: serde_json::Value = serde_json::from_slice(&index_of(&[&img]).bytes).unwrap();
    index["manifests"][0]["platform"]["os"] = format!("linux{esc}").into();
    index["manifests"][0]["platform"]["variant"] = esc.into();
    let index = Blob::new(OCI_INDEX, serde_json::to_vec(&index).unwrap());
    let layout = tmp.path().join("platform");
    let mut blobs = img.blobs();
    blobs.push(index.clone());
    write_layout(&layout, &[(None, &index)], &blobs);
    let e = pull(&store, &format!("oci:{}", layout.display())).unwrap_err();
    assert!(matches!(e, Error::NoMatchingPlatform { .. }), "{e}");
    no_control_chars(&e);

    let arch = format!("amd64{esc}");
    let odd = TestImage::new(&arch, &[tar_of(&[("a", b"a")])], true, &["/a"]);
    let layout = tmp.path().join("arch");
    write_layout(&layout, &[(None, &odd.manifest)], &odd.blobs());
    let e = pull(&store, &format!("oci:{}", layout.display())).unwrap_err();
    assert!(matches!(e, Error::NoMatchingPlatform { .. }), "{e}");
    no_control_chars(&e);

    // A digest that does not parse.
    let mut index: serde_json::Value = serde_json::from_slice(&index_of(&[&img]).bytes).unwrap();
    index["manifests"][0]["digest"] = format!("sha256:{esc}").into();
    let layout = tmp.path().join("bad-digest");
    write_layout(&layout, &[], &img.blobs());
    std::fs::write(
        layout.join("index.json"),
        serde_json::to_vec(&index).unwrap(),
    )
    .unwrap();
    let e = pull(&store, &format!("oci:{}", layout.display())).unwrap_err();
    no_control_chars(&e);

    // A layer media type we do not take.
    let mut manifest: serde_json::Value = serde_json::from_slice(&img.manifest.bytes).unwrap();
    manifest["layers"][0]["mediaType"] = format!("application/x-{esc}").into();
    let manifest = Blob::new(OCI_MANIFEST, serde_json::to_vec(&manifest).unwrap());
    let layout = tmp.path().join("bad-media-type");
    let mut blobs = img.blobs();
    blobs.push(manifest.clone());
    write_layout(&layout, &[(None, &manifest)], &blobs);
    let e = pull(&store, &format!("oci:{}", layout.display())).unwrap_err();
    assert!(matches!(e, Error::UnsupportedMediaType { .. }), "{e}");
    no_control_chars(&e);

    // RepoTags of a docker archive.
    let tar = tmp.path().join("save.tar");
    write_legacy_docker_archive(
        &tar,
        &[
            (&[&format!("x{esc}:1")], &img),
            (&[&format!("y{esc}:2")], &img),
        ],
    );
    let e = pull(&store, &format!("docker-archive:{}", tar.display())).unwrap_err();
    assert!(e.to_string().contains("it has:"), "{e}");
    no_control_chars(&e);
}

/// `supermachine inspect` prints the image's own strings: none of them
/// may reach the terminal as a control or bidi character, and the JSON
/// must still say what the image says.
#[test]
fn inspect_output_escapes_what_the_image_config_says() {
    let tmp = tempfile::tempdir().unwrap();
    let store = Store::open(tmp.path().join("store")).unwrap();
    let esc = "\u{1b}]0;owned\u{7}\u{7f}\u{9b}31m\u{202e}\u{2066}";
    let cmd = format!("/a{esc}");
    let img = TestImage::new("amd64", &[tar_of(&[("a", b"a")])], true, &[&cmd]);
    let layout = tmp.path().join("layout");
    write_layout(&layout, &[(None, &img.manifest)], &img.blobs());
    let json = pull(&store, &format!("oci:{}", layout.display()))
        .unwrap()
        .inspect_json();
    let hazard = json
        .chars()
        .find(|&c| c != '\n' && supermachine_rootfs::needs_escape(c));
    assert_eq!(hazard, None, "{json:?}");
    let value: serde_json::Value = serde_json::from_str(&json).unwrap();
    assert!(
        json.contains("\\u009b") && json.contains("\\u202e"),
        "{json}"
    );
    assert_eq!(value["config"]["cmd"][0], cmd.as_str(), "{json}");
}

#[test]
fn forget_image_drops_a_record_only_if_it_still_names_the_manifest() {
    let tmp = tempfile::tempdir().unwrap();
    let img = TestImage::small("amd64", 3, 100);
    let layout = tmp.path().join("layout");
    write_layout(&layout, &[(None, &img.manifest)], &img.blobs());
    let store = Store::open(tmp.path().join("store")).unwrap();
    let src = format!("oci:{}", layout.display());
    let pulled = pull(&store, &src).unwrap();
    let source = Source::parse(&src).unwrap();
    let other = supermachine_oci::Digest::of_bytes(b"other");
    assert!(!store.forget_image(&source, &other).unwrap());
    assert_eq!(store.images().unwrap().len(), 1);
    assert!(store
        .forget_image(&source, &pulled.manifest_digest)
        .unwrap());
    assert!(store.images().unwrap().is_empty());
    assert_eq!(store.gc().unwrap().blobs_removed, 4);
}
