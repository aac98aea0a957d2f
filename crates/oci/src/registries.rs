//! Which endpoints serve a registry: mirrors, plain-HTTP ("insecure")
//! registries, and where Docker credentials live.
//!
//! Sources, later ones first in the mirror order:
//! 1. a TOML file: `$SUPERMACHINE_REGISTRIES_CONFIG`, else
//!    `$XDG_CONFIG_HOME/supermachine/registries.toml`, else
//!    `~/.config/supermachine/registries.toml` (missing file = no settings):
//!    ```toml
//!    # registries reached over plain http (loopback ones always are)
//!    insecure = ["registry.lan:5000"]
//!    [mirrors]
//!    # tried in order, then the registry itself
//!    "docker.io" = ["http://127.0.0.1:5000", "https://mirror.gcr.io"]
//!    ```
//! 2. `SUPERMACHINE_REGISTRY_MIRRORS="docker.io=http://127.0.0.1:5000,quay.io=https://m.example"`
//!    (a registry may appear several times; these mirrors come before the file's)
//! 3. `SUPERMACHINE_INSECURE_REGISTRIES="registry.lan:5000,10.0.0.2:5000"`
//!
//! A mirror URL is `http://host[:port]` or `https://host[:port]` (no path;
//! a bare `host[:port]` means https). Pulls through a mirror ask for the same
//! repository path as the origin (`library/busybox` for `busybox`), which is
//! how a `registry:2` pull-through cache and `docker-registry` copies work.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::reference::DOCKER_HUB;

/// Env var naming the registries config file.
pub const CONFIG_FILE_ENV: &str = "SUPERMACHINE_REGISTRIES_CONFIG";
/// Env var with extra mirrors.
pub const MIRRORS_ENV: &str = "SUPERMACHINE_REGISTRY_MIRRORS";
/// Env var with extra insecure registries.
pub const INSECURE_ENV: &str = "SUPERMACHINE_INSECURE_REGISTRIES";

/// Registry access settings for pulls.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RegistryConfig {
    /// Registry host → mirrors, tried in this order before the registry.
    pub mirrors: BTreeMap<String, Vec<Mirror>>,
    /// `host[:port]` of registries reached over plain http.
    pub insecure: Vec<String>,
    /// Directory holding Docker's `config.json`; `None` means
    /// `$DOCKER_CONFIG`, else `~/.docker`.
    pub docker_config_dir: Option<PathBuf>,
}

/// One mirror endpoint.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mirror {
    /// `host[:port]`.
    pub host: String,
    /// True for `http://` mirrors.
    pub plain_http: bool,
}

impl Mirror {
    /// Parses `http://host[:port]`, `https://host[:port]` or `host[:port]`.
    pub fn parse(url: &str) -> std::result::Result<Mirror, String> {
        let (plain_http, rest) = if let Some(r) = url.strip_prefix("http://") {
            (true, r)
        } else if let Some(r) = url.strip_prefix("https://") {
            (false, r)
        } else if url.contains("://") {
            return Err(format!(
                "mirror {url:?}: only http:// and https:// are supported"
            ));
        } else {
            (false, url)
        };
        let host = rest.strip_suffix('/').unwrap_or(rest);
        if host.is_empty() || host.contains(['/', '?', '#', '@', ' ']) {
            return Err(format!(
                "mirror {url:?}: expected http[s]://host[:port] with no path"
            ));
        }
        Ok(Mirror {
            host: host.to_string(),
            plain_http,
        })
    }

    /// `http://host:port` / `https://host`.
    pub fn url(&self) -> String {
        format!(
            "{}://{}",
            if self.plain_http { "http" } else { "https" },
            self.host
        )
    }
}

/// Where a pull may go for one registry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Endpoint {
    /// `host[:port]` to connect to.
    pub host: String,
    pub plain_http: bool,
    /// Set for mirrors: the URL as configured, for messages.
    pub mirror: Option<String>,
}

impl Endpoint {
    pub(crate) fn describe(&self) -> String {
        match &self.mirror {
            Some(url) => format!("mirror {url}"),
            None => format!(
                "{}://{}",
                if self.plain_http { "http" } else { "https" },
                self.host
            ),
        }
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileFormat {
    #[serde(default)]
    insecure: Vec<String>,
    #[serde(default)]
    mirrors: BTreeMap<String, Vec<String>>,
}

impl RegistryConfig {
    /// Loads the config file (if any) and the environment variables.
    pub fn from_env() -> Result<RegistryConfig> {
        let mut cfg = RegistryConfig::default();
        if let Some(path) = config_file_path() {
            match std::fs::read_to_string(&path) {
                Ok(text) => cfg.merge_toml(&text, &path.display().to_string())?,
                Err(e)
                    if e.kind() == std::io::ErrorKind::NotFound
                        && std::env::var_os(CONFIG_FILE_ENV).is_none() => {}
                Err(e) => {
                    return Err(Error::RegistriesConfig {
                        origin: path.display().to_string(),
                        reason: e.to_string(),
                    })
                }
            }
        }
        if let Ok(v) = std::env::var(MIRRORS_ENV) {
            cfg.add_mirrors_spec(&v, MIRRORS_ENV)?;
        }
        if let Ok(v) = std::env::var(INSECURE_ENV) {
            cfg.add_insecure_spec(&v);
        }
        Ok(cfg)
    }

    /// Adds the settings of a registries.toml text (`origin` names it in errors).
    pub fn merge_toml(&mut self, text: &str, origin: &str) -> Result<()> {
        let err = |reason: String| Error::RegistriesConfig {
            origin: origin.to_string(),
            reason,
        };
        let file: FileFormat = toml::from_str(text).map_err(|e| err(e.to_string()))?;
        for (registry, urls) in file.mirrors {
            for url in urls {
                let m = Mirror::parse(&url).map_err(err)?;
                self.mirrors
                    .entry(canonical_registry(&registry))
                    .or_default()
                    .push(m);
            }
        }
        self.insecure
            .extend(file.insecure.iter().map(|h| canonical_registry(h)));
        Ok(())
    }

    /// Adds mirrors from `registry=url,registry=url`; they go before
    /// mirrors already configured for the same registry.
    pub fn add_mirrors_spec(&mut self, spec: &str, origin: &str) -> Result<()> {
        let mut added: BTreeMap<String, Vec<Mirror>> = BTreeMap::new();
        for item in spec.split(',').map(str::trim).filter(|s| !s.is_empty()) {
            let (registry, url) = item
                .split_once('=')
                .ok_or_else(|| Error::RegistriesConfig {
                    origin: origin.to_string(),
                    reason: format!(
                        "{item:?} is not registry=url (e.g. docker.io=http://127.0.0.1:5000)"
                    ),
                })?;
            let m = Mirror::parse(url.trim()).map_err(|reason| Error::RegistriesConfig {
                origin: origin.to_string(),
                reason,
            })?;
            added
                .entry(canonical_registry(registry.trim()))
                .or_default()
                .push(m);
        }
        for (registry, mut mirrors) in added {
            let slot = self.mirrors.entry(registry).or_default();
            mirrors.append(slot);
            *slot = mirrors;
        }
        Ok(())
    }

    /// Adds insecure registries from a comma-separated list.
    pub fn add_insecure_spec(&mut self, spec: &str) {
        self.insecure.extend(
            spec.split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(canonical_registry),
        );
    }

    /// Maps `registry` to `mirror_url` (tried before any other mirror).
    pub fn with_mirror(mut self, registry: &str, mirror_url: &str) -> Result<Self> {
        self.add_mirrors_spec(&format!("{registry}={mirror_url}"), "with_mirror")?;
        Ok(self)
    }

    /// Whether `host[:port]` is reached over plain http: loopback hosts and
    /// configured insecure registries.
    pub fn is_insecure(&self, host: &str) -> bool {
        is_loopback(host) || self.insecure.iter().any(|h| h == host)
    }

    /// The endpoints to try for `registry`, mirrors first.
    pub(crate) fn endpoints(&self, registry: &str) -> Vec<Endpoint> {
        let mut out: Vec<Endpoint> = self
            .mirrors
            .get(&canonical_registry(registry))
            .into_iter()
            .flatten()
            .map(|m| Endpoint {
                host: m.host.clone(),
                plain_http: m.plain_http,
                mirror: Some(m.url()),
            })
            .collect();
        out.push(Endpoint {
            host: registry.to_string(),
            plain_http: self.is_insecure(registry),
            mirror: None,
        });
        out
    }

    /// The directory of Docker's `config.json`.
    pub fn docker_config_dir(&self) -> Option<PathBuf> {
        if let Some(d) = &self.docker_config_dir {
            return Some(d.clone());
        }
        if let Some(d) = std::env::var_os("DOCKER_CONFIG").filter(|v| !v.is_empty()) {
            return Some(PathBuf::from(d));
        }
        std::env::var_os("HOME").map(|h| Path::new(&h).join(".docker"))
    }
}

fn config_file_path() -> Option<PathBuf> {
    let env = |k: &str| {
        std::env::var_os(k)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    if let Some(p) = env(CONFIG_FILE_ENV) {
        return Some(p);
    }
    if let Some(d) = env("XDG_CONFIG_HOME") {
        return Some(d.join("supermachine/registries.toml"));
    }
    env("HOME").map(|h| h.join(".config/supermachine/registries.toml"))
}

/// Docker Hub has several names; the rest are compared as written.
pub(crate) fn canonical_registry(host: &str) -> String {
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => {
            DOCKER_HUB.to_string()
        }
        h => h.to_string(),
    }
}

/// `localhost`, `127.x.y.z` or `[::1]`, with or without a port.
pub fn is_loopback(host: &str) -> bool {
    let name = if let Some(rest) = host.strip_prefix('[') {
        rest.split(']').next().unwrap_or("")
    } else {
        host.split(':').next().unwrap_or("")
    };
    name == "localhost" || name.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_hosts() {
        for h in [
            "localhost",
            "localhost:5000",
            "127.0.0.1:5000",
            "127.1.2.3",
            "[::1]:5000",
            "[::1]",
        ] {
            assert!(is_loopback(h), "{h}");
        }
        for h in [
            "docker.io",
            "10.0.0.1:5000",
            "localhost.example.com",
            "[fe80::1]:5000",
        ] {
            assert!(!is_loopback(h), "{h}");
        }
    }

    #[test]
    fn file_and_env_mirrors() {
        let mut c = RegistryConfig::default();
        c.merge_toml(
            "insecure = [\"reg.lan:5000\"]\n[mirrors]\n\"index.docker.io\" = [\"https://m1.example\", \"m2.example:443\"]\n",
            "test.toml",
        )
        .unwrap();
        c.add_mirrors_spec(
            "docker.io=http://127.0.0.1:5000, quay.io=http://127.0.0.1:5001",
            "env",
        )
        .unwrap();
        c.add_insecure_spec("a:1, b");
        let hub: Vec<String> = c
            .endpoints("docker.io")
            .iter()
            .map(Endpoint::describe)
            .collect();
        assert_eq!(
            hub,
            [
                "mirror http://127.0.0.1:5000",
                "mirror https://m1.example",
                "mirror https://m2.example:443",
                "https://docker.io"
            ]
        );
        assert_eq!(c.endpoints("quay.io").len(), 2);
        assert!(c.is_insecure("reg.lan:5000") && c.is_insecure("a:1") && c.is_insecure("b"));
        assert!(!c.is_insecure("reg.lan"));
        assert!(c.endpoints("reg.lan:5000")[0].plain_http);
        assert!(c.add_mirrors_spec("docker.io", "env").is_err());
        assert!(c.add_mirrors_spec("docker.io=ftp://x", "env").is_err());
        assert!(c
            .add_mirrors_spec("docker.io=http://x/path", "env")
            .is_err());
        assert!(RegistryConfig::default()
            .merge_toml("mirror = 1", "f")
            .is_err());
    }
}
