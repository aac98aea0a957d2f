//! Shared by the image tests: a one-layer OCI layout written to disk.

use sha2::{Digest as _, Sha256};
use std::path::Path;

/// Writes an OCI layout at `dir` holding one image: `layer` (a blob of
/// media type `media`), the config JSON `config`, and an index.json entry
/// tagged `tag` when given.
pub fn one_layer_layout(
    dir: &Path,
    layer: &[u8],
    media: &str,
    config: &serde_json::Value,
    tag: Option<&str>,
) {
    let blobs = dir.join("blobs/sha256");
    std::fs::create_dir_all(&blobs).unwrap();
    std::fs::write(dir.join("oci-layout"), br#"{"imageLayoutVersion":"1.0.0"}"#).unwrap();
    let put = |media: &str, bytes: &[u8]| {
        let hex = hex::encode(Sha256::digest(bytes));
        std::fs::write(blobs.join(&hex), bytes).unwrap();
        serde_json::json!({"mediaType": media, "digest": format!("sha256:{hex}"), "size": bytes.len()})
    };
    let layer = put(media, layer);
    let config = put(
        "application/vnd.oci.image.config.v1+json",
        &serde_json::to_vec(config).unwrap(),
    );
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": config, "layers": [layer],
    });
    let mut desc = put(
        "application/vnd.oci.image.manifest.v1+json",
        &serde_json::to_vec(&manifest).unwrap(),
    );
    if let Some(tag) = tag {
        desc["annotations"] = serde_json::json!({"org.opencontainers.image.ref.name": tag});
    }
    let index = serde_json::json!({"schemaVersion": 2, "manifests": [desc]});
    std::fs::write(dir.join("index.json"), serde_json::to_vec(&index).unwrap()).unwrap();
}

/// `sha256:<hex>` of `bytes`.
pub fn sha256(bytes: &[u8]) -> String {
    format!("sha256:{}", hex::encode(Sha256::digest(bytes)))
}

/// An uncompressed tar holding regular files `files` (path, contents).
#[allow(dead_code)] // not every test binary that includes this module uses it
pub fn tar_with(files: &[(&str, &[u8])]) -> Vec<u8> {
    let mut b = tar::Builder::new(Vec::new());
    for (path, data) in files {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(tar::EntryType::Regular);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        b.append_data(&mut h, path, *data).unwrap();
    }
    b.into_inner().unwrap()
}

/// A one-layer OCI layout tagged `tag` whose file `/hello` holds `text`.
#[allow(dead_code)] // not every test binary that includes this module uses it
pub fn layout(dir: &Path, tag: &str, text: &str) {
    use std::io::Write;
    let tar = tar_with(&[("hello", text.as_bytes())]);
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(&tar).unwrap();
    let config = serde_json::json!({
        "architecture": "amd64", "os": "linux",
        "config": {"Cmd": ["cat", "/hello"], "Env": ["A=1"], "WorkingDir": "/w", "User": "1:2"},
        "rootfs": {"type": "layers", "diff_ids": [sha256(&tar)]},
    });
    one_layer_layout(
        dir,
        &gz.finish().unwrap(),
        "application/vnd.oci.image.layer.v1.tar+gzip",
        &config,
        Some(tag),
    );
}
