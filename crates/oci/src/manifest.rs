//! Manifests and indexes: size caps, media type checks, platform choice.
//!
//! Parsing goes through `oci-spec` types, but only after the size cap and a
//! cheap probe of `schemaVersion`/`mediaType`, and every digest is re-parsed
//! as our sha256-only [`Digest`] so nothing unvalidated reaches a file path.

use std::collections::BTreeMap;
use std::fmt;

use oci_spec::image::{ImageIndex, ImageManifest};
use serde::{Deserialize, Serialize};
use supermachine_rootfs::Escaped;

use crate::digest::Digest;
use crate::error::{Error, Result};

/// Largest manifest or index we parse (Docker uses the same 4 MiB limit).
pub const MAX_MANIFEST_BYTES: u64 = 4 << 20;
/// Largest image config we parse.
pub const MAX_CONFIG_BYTES: u64 = 8 << 20;
/// Most layers an image may have (overlay-style stacking is far below this).
pub const MAX_LAYERS: usize = 1024;

/// OCI image manifest.
pub const OCI_MANIFEST: &str = "application/vnd.oci.image.manifest.v1+json";
/// OCI image index.
pub const OCI_INDEX: &str = "application/vnd.oci.image.index.v1+json";
/// Docker image manifest, schema 2.
pub const DOCKER_MANIFEST: &str = "application/vnd.docker.distribution.manifest.v2+json";
/// Docker manifest list.
pub const DOCKER_MANIFEST_LIST: &str = "application/vnd.docker.distribution.manifest.list.v2+json";
/// OCI image config.
pub const OCI_CONFIG: &str = "application/vnd.oci.image.config.v1+json";
/// Docker image config.
pub const DOCKER_CONFIG: &str = "application/vnd.docker.container.image.v1+json";
/// OCI gzip layer (what we write for synthesized manifests).
pub const OCI_LAYER_GZIP: &str = "application/vnd.oci.image.layer.v1.tar+gzip";
/// OCI zstd layer.
pub const OCI_LAYER_ZSTD: &str = "application/vnd.oci.image.layer.v1.tar+zstd";
/// OCI uncompressed layer.
pub const OCI_LAYER_TAR: &str = "application/vnd.oci.image.layer.v1.tar";

/// Media types we accept for manifests and indexes, as an HTTP Accept list.
pub const MANIFEST_ACCEPT: &[&str] = &[
    OCI_MANIFEST,
    OCI_INDEX,
    DOCKER_MANIFEST,
    DOCKER_MANIFEST_LIST,
];

/// How a layer blob is compressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// A plain tar.
    None,
    /// gzip (the usual case).
    Gzip,
    /// zstd.
    Zstd,
}

impl Compression {
    /// The compression a layer media type implies, or `None` (the Rust
    /// `Option`) for media types that are not Linux image layers.
    pub fn from_media_type(media_type: &str) -> Option<Compression> {
        match media_type {
            "application/vnd.oci.image.layer.v1.tar"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar"
            | "application/vnd.docker.image.rootfs.diff.tar" => Some(Compression::None),
            "application/vnd.oci.image.layer.v1.tar+gzip"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+gzip"
            | "application/vnd.docker.image.rootfs.diff.tar.gzip" => Some(Compression::Gzip),
            "application/vnd.oci.image.layer.v1.tar+zstd"
            | "application/vnd.oci.image.layer.nondistributable.v1.tar+zstd"
            | "application/vnd.docker.image.rootfs.diff.tar.zstd" => Some(Compression::Zstd),
            _ => None,
        }
    }

    /// Guesses from the first bytes of a blob (for `docker save` archives,
    /// whose manifest.json has no media types).
    pub fn sniff(head: &[u8]) -> Compression {
        if head.starts_with(&[0x1f, 0x8b]) {
            Compression::Gzip
        } else if head.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
            Compression::Zstd
        } else {
            Compression::None
        }
    }

    /// The OCI layer media type for this compression.
    pub fn oci_media_type(self) -> &'static str {
        match self {
            Compression::None => OCI_LAYER_TAR,
            Compression::Gzip => OCI_LAYER_GZIP,
            Compression::Zstd => OCI_LAYER_ZSTD,
        }
    }
}

/// A platform as `os/architecture[/variant]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Platform {
    /// `linux`.
    pub os: String,
    /// `amd64`.
    pub architecture: String,
    /// Optional CPU variant (`v8` for arm64 ...); ignored when matching if `None`.
    pub variant: Option<String>,
}

impl Default for Platform {
    /// linux/amd64: the only platform our VMs run.
    fn default() -> Self {
        Platform {
            os: "linux".into(),
            architecture: "amd64".into(),
            variant: None,
        }
    }
}

impl fmt::Display for Platform {
    /// `os/architecture[/variant]`, escaped: the fields come from images.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}",
            Escaped::new(&self.os),
            Escaped::new(&self.architecture)
        )?;
        if let Some(v) = &self.variant {
            write!(f, "/{}", Escaped::new(v))?;
        }
        Ok(())
    }
}

/// A validated content descriptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Desc {
    pub media_type: String,
    pub digest: Digest,
    pub size: u64,
    pub platform: Option<Platform>,
    pub annotations: BTreeMap<String, String>,
}

/// A validated image manifest.
#[derive(Debug, Clone)]
pub(crate) struct Manifest {
    pub config: Desc,
    pub layers: Vec<(Desc, Compression)>,
}

/// What a manifest-ish document turned out to be.
#[derive(Debug, Clone)]
pub(crate) enum Parsed {
    Index(Vec<Desc>),
    Manifest(Manifest),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct Probe {
    schema_version: Option<i64>,
    media_type: Option<String>,
    manifests: Option<serde::de::IgnoredAny>,
}

/// Checks a document's size before anything reads it whole.
pub(crate) fn check_size(what: &str, size: u64, limit: u64) -> Result<()> {
    if size > limit {
        return Err(Error::TooLarge {
            what: what.to_string(),
            size,
            limit,
        });
    }
    Ok(())
}

/// Parses a manifest or index; `what` names it in errors.
pub(crate) fn parse(bytes: &[u8], what: &str) -> Result<Parsed> {
    check_size(what, bytes.len() as u64, MAX_MANIFEST_BYTES)?;
    let invalid = |reason: String| Error::InvalidManifest {
        what: what.to_string(),
        reason,
    };
    let probe: Probe =
        serde_json::from_slice(bytes).map_err(|e| invalid(format!("not JSON: {e}")))?;
    match probe.schema_version {
        Some(2) => {}
        Some(1) => {
            return Err(Error::UnsupportedMediaType {
                what: what.to_string(),
                media_type: "application/vnd.docker.distribution.manifest.v1+json (schema 1, deprecated; re-push the image with a current tool)".into(),
            })
        }
        other => return Err(invalid(format!("schemaVersion is {other:?}, expected 2"))),
    }
    let is_index = match probe.media_type.as_deref() {
        Some(OCI_INDEX | DOCKER_MANIFEST_LIST) => true,
        Some(OCI_MANIFEST | DOCKER_MANIFEST) => false,
        None => probe.manifests.is_some(),
        Some(other) => {
            return Err(Error::UnsupportedMediaType {
                what: what.to_string(),
                media_type: other.to_string(),
            })
        }
    };
    if is_index {
        let index: ImageIndex =
            serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        let entries = index
            .manifests()
            .iter()
            .map(|d| desc(d, what))
            .collect::<Result<Vec<_>>>()?;
        Ok(Parsed::Index(entries))
    } else {
        let m: ImageManifest = serde_json::from_slice(bytes).map_err(|e| invalid(e.to_string()))?;
        let config = desc(m.config(), what)?;
        if config.media_type != OCI_CONFIG && config.media_type != DOCKER_CONFIG {
            return Err(Error::UnsupportedMediaType {
                what: format!("config of {what} (an OCI artifact, not a container image?)"),
                media_type: config.media_type,
            });
        }
        check_size(&format!("config of {what}"), config.size, MAX_CONFIG_BYTES)?;
        if m.layers().len() > MAX_LAYERS {
            return Err(invalid(format!(
                "{} layers (limit {MAX_LAYERS})",
                m.layers().len()
            )));
        }
        let layers = m
            .layers()
            .iter()
            .enumerate()
            .map(|(i, l)| {
                let d = desc(l, what)?;
                let c = Compression::from_media_type(&d.media_type).ok_or_else(|| {
                    Error::UnsupportedMediaType {
                        what: format!("layer {i} ({}) of {what}", d.digest),
                        media_type: d.media_type.clone(),
                    }
                })?;
                Ok((d, c))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(Parsed::Manifest(Manifest { config, layers }))
    }
}

fn desc(d: &oci_spec::image::Descriptor, what: &str) -> Result<Desc> {
    let text = d.digest().to_string();
    let digest = Digest::parse(&text).map_err(|reason| Error::InvalidDigest {
        input: text,
        context: what.to_string(),
        reason,
    })?;
    Ok(Desc {
        media_type: d.media_type().to_string(),
        digest,
        size: d.size(),
        platform: d.platform().as_ref().map(|p| Platform {
            os: p.os().to_string(),
            architecture: p.architecture().to_string(),
            variant: p.variant().clone(),
        }),
        annotations: d
            .annotations()
            .as_ref()
            .map(|a| a.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
            .unwrap_or_default(),
    })
}

/// Picks the entry of an index for `platform`. Entries without a platform
/// (attestations, artifacts) never match.
pub(crate) fn select_platform(
    entries: &[Desc],
    platform: &Platform,
    reference: &str,
) -> Result<Desc> {
    let matches = |p: &Platform| {
        p.os == platform.os
            && p.architecture == platform.architecture
            && (platform.variant.is_none() || p.variant == platform.variant)
    };
    entries
        .iter()
        .filter(|d| MANIFEST_ACCEPT.contains(&d.media_type.as_str()))
        .find(|d| d.platform.as_ref().is_some_and(matches))
        .cloned()
        .ok_or_else(|| Error::NoMatchingPlatform {
            reference: reference.to_string(),
            wanted: platform.to_string(),
            available: entries
                .iter()
                .filter_map(|d| d.platform.as_ref().map(|p| p.to_string()))
                .collect(),
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn d(n: u8) -> String {
        format!("sha256:{}", hex::encode([n; 32]))
    }

    #[test]
    fn index_platform_selection() {
        let idx = serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_INDEX,
            "manifests": [
                {"mediaType": OCI_MANIFEST, "digest": d(1), "size": 10, "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
                {"mediaType": OCI_MANIFEST, "digest": d(3), "size": 10, "platform": {"os": "unknown", "architecture": "unknown"}},
                {"mediaType": OCI_MANIFEST, "digest": d(2), "size": 10, "platform": {"os": "linux", "architecture": "amd64"}},
            ]
        });
        let Parsed::Index(entries) = parse(idx.to_string().as_bytes(), "index").unwrap() else {
            panic!("not an index")
        };
        let chosen = select_platform(&entries, &Platform::default(), "x").unwrap();
        assert_eq!(chosen.digest.as_str(), d(2));
        let s390 = Platform {
            architecture: "s390x".into(),
            ..Platform::default()
        };
        let err = select_platform(&entries, &s390, "x")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("linux/arm64/v8") && err.contains("linux/s390x"),
            "{err}"
        );
    }

    #[test]
    fn rejects_hostile_and_foreign_documents() {
        assert!(matches!(
            parse(&vec![b' '; (MAX_MANIFEST_BYTES + 1) as usize], "m"),
            Err(Error::TooLarge { .. })
        ));
        assert!(matches!(
            parse(b"{\"schemaVersion\":1}", "m"),
            Err(Error::UnsupportedMediaType { .. })
        ));
        assert!(matches!(
            parse(b"[1,2", "m"),
            Err(Error::InvalidManifest { .. })
        ));
        let artifact = serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": "application/vnd.cncf.helm.config.v1+json", "digest": d(1), "size": 2},
            "layers": []
        });
        assert!(matches!(
            parse(artifact.to_string().as_bytes(), "m"),
            Err(Error::UnsupportedMediaType { .. })
        ));
        let bad_layer = serde_json::json!({
            "schemaVersion": 2, "mediaType": OCI_MANIFEST,
            "config": {"mediaType": OCI_CONFIG, "digest": d(1), "size": 2},
            "layers": [{"mediaType": "application/vnd.docker.image.rootfs.foreign.diff.tar.gzip", "digest": d(2), "size": 3}]
        });
        assert!(matches!(
            parse(bad_layer.to_string().as_bytes(), "m"),
            Err(Error::UnsupportedMediaType { .. })
        ));
        let huge_config = serde_json::json!({
            "schemaVersion": 2,
            "config": {"mediaType": OCI_CONFIG, "digest": d(1), "size": u64::MAX},
            "layers": []
        });
        assert!(matches!(
            parse(huge_config.to_string().as_bytes(), "m"),
            Err(Error::TooLarge { .. })
        ));
        let sha512 = serde_json::json!({
            "schemaVersion": 2,
            "config": {"mediaType": OCI_CONFIG, "digest": format!("sha512:{}", "a".repeat(128)), "size": 2},
            "layers": []
        });
        assert!(matches!(
            parse(sha512.to_string().as_bytes(), "m"),
            Err(Error::InvalidDigest { .. })
        ));
    }
}
