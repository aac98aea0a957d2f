use std::io::Write;
use std::path::Path;

use sha2::{Digest as _, Sha256};

pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
pub const LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
pub const LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// A blob with its digest.
#[derive(Clone, Debug)]
pub struct Blob {
    pub media_type: String,
    pub bytes: Vec<u8>,
}

impl Blob {
    pub fn new(media_type: &str, bytes: Vec<u8>) -> Blob {
        Blob {
            media_type: media_type.to_string(),
            bytes,
        }
    }
    pub fn hex(&self) -> String {
        hex::encode(Sha256::digest(&self.bytes))
    }
    pub fn digest(&self) -> String {
        format!("sha256:{}", self.hex())
    }
    pub fn descriptor(&self) -> serde_json::Value {
        serde_json::json!({"mediaType": self.media_type, "digest": self.digest(), "size": self.bytes.len()})
    }
}

/// An uncompressed tar with the given regular files.
pub fn tar_of(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, content) in files {
        let mut h = tar::Header::new_gnu();
        h.set_size(content.len() as u64);
        h.set_mode(0o755);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        b.append_data(&mut h, path, *content).unwrap();
    }
    b.into_inner().unwrap()
}

pub fn gzip(bytes: &[u8]) -> Vec<u8> {
    let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    e.write_all(bytes).unwrap();
    e.finish().unwrap()
}

/// Deterministic incompressible bytes.
pub fn noise(len: usize, seed: u8) -> Vec<u8> {
    let mut out = Vec::with_capacity(len + 32);
    let mut block = Sha256::digest([seed]).to_vec();
    while out.len() < len {
        block = Sha256::digest(&block).to_vec();
        out.extend_from_slice(&block);
    }
    out.truncate(len);
    out
}

/// A single-platform image.
#[derive(Clone, Debug)]
pub struct TestImage {
    pub config: Blob,
    pub layers: Vec<Blob>,
    pub manifest: Blob,
    pub arch: String,
}

impl TestImage {
    /// `layers`: uncompressed tars; each is gzipped unless `gzip_layers` is false.
    pub fn new(arch: &str, tars: &[Vec<u8>], gzip_layers: bool, cmd: &[&str]) -> TestImage {
        let diff_ids: Vec<String> = tars
            .iter()
            .map(|t| Blob::new(LAYER_TAR, t.clone()).digest())
            .collect();
        let layers: Vec<Blob> = tars
            .iter()
            .map(|t| {
                if gzip_layers {
                    Blob::new(LAYER_GZIP, gzip(t))
                } else {
                    Blob::new(LAYER_TAR, t.clone())
                }
            })
            .collect();
        let config = Blob::new(
            OCI_CONFIG,
            serde_json::to_vec(&serde_json::json!({
                "architecture": arch, "os": "linux",
                "config": {"Cmd": cmd, "Env": ["PATH=/bin"], "WorkingDir": "/", "Labels": {"test": arch}},
                "rootfs": {"type": "layers", "diff_ids": diff_ids},
            }))
            .unwrap(),
        );
        let manifest = Blob::new(
            OCI_MANIFEST,
            serde_json::to_vec(&serde_json::json!({
                "schemaVersion": 2, "mediaType": OCI_MANIFEST,
                "config": config.descriptor(),
                "layers": layers.iter().map(Blob::descriptor).collect::<Vec<_>>(),
            }))
            .unwrap(),
        );
        TestImage {
            config,
            layers,
            manifest,
            arch: arch.to_string(),
        }
    }

    /// A small two-layer image (one gzip layer with files, one with noise).
    pub fn small(arch: &str, seed: u8, noise_len: usize) -> TestImage {
        let l1 = tar_of(&[
            ("bin/hello", format!("hello {arch} {seed}\n").as_bytes()),
            ("etc/motd", b"motd\n"),
        ]);
        let l2 = tar_of(&[("data/noise", &noise(noise_len, seed))]);
        TestImage::new(arch, &[l1, l2], true, &["/bin/hello"])
    }

    pub fn blobs(&self) -> Vec<Blob> {
        let mut v = vec![self.config.clone(), self.manifest.clone()];
        v.extend(self.layers.iter().cloned());
        v
    }
}

/// An index over several images (platform from each image's arch).
pub fn index_of(images: &[&TestImage]) -> Blob {
    Blob::new(
        OCI_INDEX,
        serde_json::to_vec(&serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_INDEX,
            "manifests": images.iter().map(|i| {
                let mut d = i.manifest.descriptor();
                d["platform"] = serde_json::json!({"os": "linux", "architecture": i.arch});
                d
            }).collect::<Vec<_>>(),
        }))
        .unwrap(),
    )
}

/// Writes an OCI layout: `entries` are (tag, top blob) pairs for index.json.
pub fn write_layout(dir: &Path, entries: &[(Option<&str>, &Blob)], blobs: &[Blob]) {
    std::fs::create_dir_all(dir.join("blobs/sha256")).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    for b in blobs {
        std::fs::write(dir.join("blobs/sha256").join(b.hex()), &b.bytes).unwrap();
    }
    std::fs::write(dir.join("index.json"), layout_index(entries)).unwrap();
}

fn layout_index(entries: &[(Option<&str>, &Blob)]) -> Vec<u8> {
    let manifests: Vec<serde_json::Value> = entries
        .iter()
        .map(|(tag, b)| {
            let mut d = b.descriptor();
            if let Some(t) = tag {
                d["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": t});
            }
            d
        })
        .collect();
    serde_json::to_vec(
        &serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": manifests}),
    )
    .unwrap()
}

/// Appends a file to a tar being built.
pub fn tar_add(b: &mut tar::Builder<std::fs::File>, path: &str, bytes: &[u8]) {
    let mut h = tar::Header::new_gnu();
    h.set_size(bytes.len() as u64);
    h.set_mode(0o644);
    h.set_entry_type(tar::EntryType::Regular);
    b.append_data(&mut h, path, bytes).unwrap();
}

pub fn tar_symlink(b: &mut tar::Builder<std::fs::File>, path: &str, target: &str) {
    let mut h = tar::Header::new_gnu();
    h.set_size(0);
    h.set_mode(0o777);
    h.set_entry_type(tar::EntryType::Symlink);
    b.append_link(&mut h, path, target).unwrap();
}

/// A legacy `docker save` tar (uncompressed layers as `<id>/layer.tar`):
/// each image is (repo tags, uncompressed layer tars, config blob).
/// Layers with equal content are stored once and symlinked, as Docker does.
pub fn write_legacy_docker_archive(path: &Path, images: &[(&[&str], &TestImage)]) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    let mut manifest = Vec::new();
    let mut stored: Vec<(String, String)> = Vec::new(); // (layer digest, dir)
    for (n, (tags, img)) in images.iter().enumerate() {
        let config_name = format!("{}.json", img.config.hex());
        tar_add(&mut b, &config_name, &img.config.bytes);
        let mut layer_paths = Vec::new();
        for (i, layer) in img.layers.iter().enumerate() {
            let dir = format!("img{n}layer{i}");
            let path = format!("{dir}/layer.tar");
            match stored.iter().find(|(d, _)| *d == layer.digest()) {
                Some((_, first_dir)) => {
                    tar_symlink(&mut b, &path, &format!("../{first_dir}/layer.tar"))
                }
                None => {
                    tar_add(&mut b, &path, &layer.bytes);
                    stored.push((layer.digest(), dir));
                }
            }
            layer_paths.push(path);
        }
        manifest.push(
            serde_json::json!({"Config": config_name, "RepoTags": tags, "Layers": layer_paths}),
        );
    }
    tar_add(
        &mut b,
        "manifest.json",
        &serde_json::to_vec(&manifest).unwrap(),
    );
    b.into_inner().unwrap().sync_all().unwrap();
}

/// A Docker ≥ 25 `docker save` tar: an OCI layout plus manifest.json.
pub fn write_oci_docker_archive(path: &Path, name: &str, tag: &str, img: &TestImage) {
    let mut b = tar::Builder::new(std::fs::File::create(path).unwrap());
    for blob in img.blobs() {
        tar_add(&mut b, &format!("blobs/sha256/{}", blob.hex()), &blob.bytes);
    }
    tar_add(&mut b, "oci-layout", br#"{"imageLayoutVersion":"1.0.0"}"#);
    let mut d = img.manifest.descriptor();
    d["annotations"] = serde_json::json!({
        "io.containerd.image.name": format!("docker.io/{name}:{tag}"),
        "org.opencontainers.image.ref.name": tag,
    });
    let index = serde_json::json!({"schemaVersion": 2, "mediaType": OCI_INDEX, "manifests": [d]});
    tar_add(&mut b, "index.json", &serde_json::to_vec(&index).unwrap());
    let manifest = serde_json::json!([{
        "Config": format!("blobs/sha256/{}", img.config.hex()),
        "RepoTags": [format!("{name}:{tag}")],
        "Layers": img.layers.iter().map(|l| format!("blobs/sha256/{}", l.hex())).collect::<Vec<_>>(),
    }]);
    tar_add(
        &mut b,
        "manifest.json",
        &serde_json::to_vec(&manifest).unwrap(),
    );
    b.into_inner().unwrap().sync_all().unwrap();
}

/// Collects progress events.
#[derive(Clone, Default)]
pub struct Events(pub std::sync::Arc<std::sync::Mutex<Vec<supermachine_oci::PullEvent>>>);

impl Events {
    pub fn callback(&self) -> supermachine_oci::ProgressFn {
        let me = self.clone();
        std::sync::Arc::new(move |e: &supermachine_oci::PullEvent| {
            me.0.lock().unwrap().push(e.clone())
        })
    }
    pub fn started(&self) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| matches!(e, supermachine_oci::PullEvent::BlobStarted { .. }))
            .count()
    }
    pub fn fetched(&self) -> usize {
        self.0
            .lock()
            .unwrap()
            .iter()
            .filter(|e| {
                matches!(
                    e,
                    supermachine_oci::PullEvent::BlobDone { fetched: true, .. }
                )
            })
            .count()
    }
    pub fn all(&self) -> Vec<supermachine_oci::PullEvent> {
        self.0.lock().unwrap().clone()
    }
}

/// Files in the store's tmp dir.
pub fn temp_files(store_root: &Path) -> Vec<std::path::PathBuf> {
    std::fs::read_dir(store_root.join("tmp"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect()
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}
