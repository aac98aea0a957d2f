//! The image config: what to run and how (Entrypoint, Cmd, Env ...).

use std::collections::BTreeMap;

use oci_spec::image::ImageConfiguration;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::manifest::{check_size, Platform, MAX_CONFIG_BYTES};

/// The parts of an OCI/Docker image config that running the image needs.
/// Missing fields are empty; `Option` where Docker distinguishes "unset"
/// from "empty" (an empty Cmd vs no Cmd).
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct ImageConfig {
    /// `linux`.
    pub os: String,
    /// `amd64`.
    pub architecture: String,
    /// CPU variant, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub variant: Option<String>,
    /// Entrypoint argv.
    pub entrypoint: Option<Vec<String>>,
    /// Cmd argv (arguments to the entrypoint, or the command).
    pub cmd: Option<Vec<String>>,
    /// `KEY=value` strings.
    pub env: Vec<String>,
    /// Working directory (empty means `/`).
    pub working_dir: Option<String>,
    /// `user`, `uid`, `user:group` or `uid:gid`.
    pub user: Option<String>,
    /// `80/tcp`, `53/udp` ...
    pub exposed_ports: Vec<String>,
    /// Volume mount points declared by the image.
    pub volumes: Vec<String>,
    /// Image labels.
    pub labels: BTreeMap<String, String>,
    /// Signal to stop the container with.
    pub stop_signal: Option<String>,
    /// Creation time (RFC 3339) if recorded.
    pub created: Option<String>,
    /// sha256 of each *uncompressed* layer, in order.
    pub diff_ids: Vec<String>,
}

impl ImageConfig {
    /// Parses config JSON (at most [`MAX_CONFIG_BYTES`]); `what` names it in errors.
    pub fn parse(bytes: &[u8], what: &str) -> Result<ImageConfig> {
        check_size(what, bytes.len() as u64, MAX_CONFIG_BYTES)?;
        let c: ImageConfiguration =
            serde_json::from_slice(bytes).map_err(|e| Error::InvalidManifest {
                what: what.to_string(),
                reason: e.to_string(),
            })?;
        let cfg = c.config().clone().unwrap_or_default();
        let mut exposed_ports = cfg.exposed_ports().clone().unwrap_or_default();
        exposed_ports.sort();
        let mut volumes = cfg.volumes().clone().unwrap_or_default();
        volumes.sort();
        Ok(ImageConfig {
            os: c.os().to_string(),
            architecture: c.architecture().to_string(),
            variant: c.variant().clone(),
            entrypoint: cfg.entrypoint().clone(),
            cmd: cfg.cmd().clone(),
            env: cfg.env().clone().unwrap_or_default(),
            working_dir: cfg.working_dir().clone().filter(|w| !w.is_empty()),
            user: cfg.user().clone().filter(|u| !u.is_empty()),
            exposed_ports,
            volumes,
            labels: cfg
                .labels()
                .as_ref()
                .map(|l| l.iter().map(|(k, v)| (k.clone(), v.clone())).collect())
                .unwrap_or_default(),
            stop_signal: cfg.stop_signal().clone(),
            created: c.created().clone(),
            diff_ids: c.rootfs().diff_ids().clone(),
        })
    }

    /// The default argv: Entrypoint followed by Cmd (Docker's rule).
    pub fn default_argv(&self) -> Vec<String> {
        let mut argv = self.entrypoint.clone().unwrap_or_default();
        argv.extend(self.cmd.clone().unwrap_or_default());
        argv
    }

    /// Errors unless the config is for `platform` (a single-platform image
    /// built for another CPU cannot run in our VMs).
    pub(crate) fn check_platform(&self, platform: &Platform, what: &str) -> Result<()> {
        if self.os != platform.os || self.architecture != platform.architecture {
            return Err(Error::NoMatchingPlatform {
                reference: what.to_string(),
                wanted: platform.to_string(),
                available: vec![Platform {
                    os: self.os.clone(),
                    architecture: self.architecture.clone(),
                    variant: None,
                }
                .to_string()],
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_docker_style_config() {
        let json = serde_json::json!({
            "architecture": "amd64", "os": "linux",
            "config": {
                "Entrypoint": ["/bin/tini", "--"], "Cmd": ["nginx", "-g", "daemon off;"],
                "Env": ["PATH=/usr/bin", "A=b"], "WorkingDir": "/srv", "User": "101:101",
                "ExposedPorts": {"80/tcp": {}, "443/tcp": {}}, "Labels": {"maintainer": "x"},
                "Volumes": {"/data": {}}, "StopSignal": "SIGQUIT"
            },
            "rootfs": {"type": "layers", "diff_ids": [format!("sha256:{}", "0".repeat(64))]}
        });
        let c = ImageConfig::parse(json.to_string().as_bytes(), "cfg").unwrap();
        assert_eq!(
            c.default_argv(),
            ["/bin/tini", "--", "nginx", "-g", "daemon off;"]
        );
        assert_eq!(c.exposed_ports, ["443/tcp", "80/tcp"]);
        assert_eq!(c.user.as_deref(), Some("101:101"));
        assert_eq!(c.working_dir.as_deref(), Some("/srv"));
        assert_eq!(c.labels["maintainer"], "x");
        assert_eq!(c.volumes, ["/data"]);
        assert_eq!(c.diff_ids.len(), 1);
        c.check_platform(&Platform::default(), "x").unwrap();
        let minimal =
            br#"{"architecture":"arm64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}"#;
        let m = ImageConfig::parse(minimal, "cfg").unwrap();
        assert_eq!(m.cmd, None);
        assert!(m.check_platform(&Platform::default(), "x").is_err());
        assert!(ImageConfig::parse(b"{\"os\":1}", "cfg").is_err());
    }
}
