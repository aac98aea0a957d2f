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
