//! Test fixtures: images built in the test (tar layers, gzip, config,
//! manifest, index), written as OCI layouts or `docker save` tars, a real
//! `docker-registry` on 127.0.0.1, skopeo to push, and a TCP proxy that
//! breaks or stalls a blob download.
#![allow(dead_code)]

pub mod fixtures;
pub mod proxy;
pub mod registry;

pub use fixtures::*;
