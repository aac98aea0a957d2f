//! Getting OCI images: references, sources, and the blob store.
//!
//! ```no_run
//! # async fn demo() -> supermachine_oci::Result<()> {
//! use supermachine_oci::{PullOptions, Source, Store};
//! let store = Store::open_default()?;
//! let image = store.pull(&Source::parse("alpine:3.20")?, &PullOptions::from_env()?).await?;
//! for layer in &image.layers {
//!     println!("{} {:?} {}", layer.digest, layer.compression, layer.path.display());
//! }
//! println!("{:?}", image.config.default_argv());
//! # Ok(()) }
//! ```
//!
//! Sources: registry references (Docker's rules, `alpine` =
//! `docker.io/library/alpine:latest`), `oci:DIR[:TAG]` layouts and
//! `docker-archive:FILE[:NAME:TAG]` tarballs. Every blob, whatever its
//! source, is verified (size and sha256) into the content-addressed
//! [`Store`]; everything downstream reads from there.

#![warn(missing_docs)]

mod digest;
mod docker_archive;
pub mod docker_config;
mod error;
mod image_config;
mod layout;
pub mod lock;
mod manifest;
mod pull;
mod records;
mod reference;
pub mod registries;
mod registry;
mod source;
mod store;
mod untrusted;

pub use digest::{Digest, DigestError};
pub use error::{Error, Result};
pub use image_config::ImageConfig;
pub use layout::REF_NAME_ANNOTATION;
pub use manifest::{Compression, Platform, MAX_CONFIG_BYTES, MAX_LAYERS, MAX_MANIFEST_BYTES};
pub use pull::{
    BlobKind, LayerInfo, ProgressFn, PullEvent, PullOptions, PullPolicy, PullStats, PulledImage,
};
pub use records::{GcReport, ImageRecord, LayerRecord, RECORD_VERSION};
pub use reference::{Reference, ReferenceError, DOCKER_HUB};
pub use registries::{Mirror, RegistryConfig};
pub use source::Source;
pub use store::{data_dir, default_store_root, Store, StoreLease, DATA_DIR_ENV};

/// Media type constants, for building or checking manifests.
pub mod media_types {
    pub use crate::manifest::{
        DOCKER_CONFIG, DOCKER_MANIFEST, DOCKER_MANIFEST_LIST, OCI_CONFIG, OCI_INDEX,
        OCI_LAYER_GZIP, OCI_LAYER_TAR, OCI_LAYER_ZSTD, OCI_MANIFEST,
    };
}
