//! Credentials from Docker's `config.json` (what `docker login` writes).
//!
//! Supported: `auths.<registry>.auth` (base64 `user:password`),
//! `auths.<registry>.username`/`password`, and credential helpers
//! (`credHelpers.<registry>` or `credsStore`, run as
//! `docker-credential-<name> get`). Keys are matched after dropping the
//! scheme and path, so `https://index.docker.io/v1/` is Docker Hub.

use std::collections::BTreeMap;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use base64::Engine;
use serde::Deserialize;

use crate::error::{Error, Result};
use crate::reference::DOCKER_HUB;
use crate::registries::canonical_registry;

/// The largest config.json we read.
const MAX_CONFIG_BYTES: u64 = 4 << 20;

/// A user name and password (or token) for one registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    /// User name.
    pub username: String,
    /// Password or personal access token.
    pub password: String,
    /// The file they came from (for error messages).
    pub origin: PathBuf,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the password.
        write!(
            f,
            "Credentials({} from {})",
            self.username,
            self.origin.display()
        )
    }
}

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct ConfigFile {
    #[serde(default)]
    auths: BTreeMap<String, AuthEntry>,
    #[serde(default)]
    creds_store: Option<String>,
    #[serde(default)]
    cred_helpers: BTreeMap<String, String>,
}

#[derive(Deserialize, Default)]
struct AuthEntry {
    #[serde(default)]
    auth: Option<String>,
    #[serde(default)]
    username: Option<String>,
    #[serde(default)]
    password: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "PascalCase")]
struct HelperAnswer {
    username: String,
    secret: String,
}

/// Looks up credentials for `registry` (`host[:port]`) in `dir/config.json`.
/// A missing file or entry means anonymous (`Ok(None)`).
pub fn lookup(dir: &Path, registry: &str) -> Result<Option<Credentials>> {
    let path = dir.join("config.json");
    let err = |reason: String| Error::Credentials {
        path: path.clone(),
        reason,
    };
    let text = match std::fs::metadata(&path) {
        Ok(m) if m.len() > MAX_CONFIG_BYTES => {
            return Err(err(format!("larger than {MAX_CONFIG_BYTES} bytes")))
        }
        Ok(_) => std::fs::read(&path).map_err(|e| err(e.to_string()))?,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(err(e.to_string())),
    };
    let file: ConfigFile =
        serde_json::from_slice(&text).map_err(|e| err(format!("not valid JSON: {e}")))?;
    let wanted = canonical_registry(registry);
    let key_matches = |key: &str| normalize_key(key) == wanted;

    if let Some((_, helper)) = file.cred_helpers.iter().find(|(k, _)| key_matches(k)) {
        return run_helper(helper, &wanted, &path);
    }
    if let Some((key, entry)) = file.auths.iter().find(|(k, _)| key_matches(k)) {
        if let Some(auth) = entry.auth.as_deref().filter(|a| !a.is_empty()) {
            let decoded = base64::engine::general_purpose::STANDARD
                .decode(auth.trim())
                .map_err(|e| err(format!("auths.{key}.auth is not base64: {e}")))?;
            let decoded = String::from_utf8(decoded)
                .map_err(|_| err(format!("auths.{key}.auth is not UTF-8")))?;
            let (user, pass) = decoded
                .split_once(':')
                .ok_or_else(|| err(format!("auths.{key}.auth is not base64 of user:password")))?;
            return Ok(Some(Credentials {
                username: user.to_string(),
                password: pass.to_string(),
                origin: path.clone(),
            }));
        }
        if let (Some(u), Some(p)) = (&entry.username, &entry.password) {
            return Ok(Some(Credentials {
                username: u.clone(),
                password: p.clone(),
                origin: path.clone(),
            }));
        }
    }
    if let Some(store) = &file.creds_store {
        return run_helper(store, &wanted, &path);
    }
    Ok(None)
}

/// `https://index.docker.io/v1/` → `docker.io`; `http://h:5000/x` → `h:5000`.
fn normalize_key(key: &str) -> String {
    let k = key
        .strip_prefix("https://")
        .or_else(|| key.strip_prefix("http://"))
        .unwrap_or(key);
    canonical_registry(k.split('/').next().unwrap_or(k))
}

/// Runs a Docker credential helper; "not found" answers mean anonymous.
fn run_helper(helper: &str, registry: &str, config: &Path) -> Result<Option<Credentials>> {
    if helper.is_empty()
        || !helper
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
    {
        return Err(Error::Credentials {
            path: config.to_path_buf(),
            reason: format!("credential helper name {helper:?} is not valid"),
        });
    }
    let program = format!("docker-credential-{helper}");
    let server = if registry == DOCKER_HUB {
        "https://index.docker.io/v1/".to_string()
    } else {
        registry.to_string()
    };
    let child = Command::new(&program)
        .arg("get")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn();
    let mut child = match child {
        Ok(c) => c,
        Err(e) => {
            return Err(Error::Credentials {
                path: config.to_path_buf(),
                reason: format!("cannot run credential helper {program}: {e} (install it or remove it from the config)"),
            })
        }
    };
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(server.as_bytes());
    }
    let out = child.wait_with_output().map_err(|e| Error::Credentials {
        path: config.to_path_buf(),
        reason: format!("{program}: {e}"),
    })?;
    if !out.status.success() {
        let msg = String::from_utf8_lossy(&out.stdout).trim().to_string();
        if msg.contains("credentials not found") {
            return Ok(None);
        }
        return Err(Error::Credentials {
            path: config.to_path_buf(),
            reason: format!("{program} get {server} failed: {msg}"),
        });
    }
    let answer: HelperAnswer =
        serde_json::from_slice(&out.stdout).map_err(|e| Error::Credentials {
            path: config.to_path_buf(),
            reason: format!("{program} answered something that is not credentials JSON: {e}"),
        })?;
    if answer.username == "<token>" {
        // An identity (refresh) token; our registry client cannot exchange
        // it, so go anonymous rather than send it as a password.
        tracing::warn!(
            registry,
            "{program} returned an identity token, which is not supported; pulling anonymously"
        );
        return Ok(None);
    }
    Ok(Some(Credentials {
        username: answer.username,
        password: answer.secret,
        origin: config.to_path_buf(),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn auths_lookup() {
        let dir = tempfile::tempdir().unwrap();
        let b64 = base64::engine::general_purpose::STANDARD.encode("alice:s3:cret");
        std::fs::write(
            dir.path().join("config.json"),
            serde_json::json!({"auths": {
                "https://index.docker.io/v1/": {"auth": b64},
                "127.0.0.1:5000": {"username": "bob", "password": "pw"},
                "bad.example": {"auth": "!!!"}
            }})
            .to_string(),
        )
        .unwrap();
        let hub = lookup(dir.path(), "docker.io").unwrap().unwrap();
        assert_eq!(
            (hub.username.as_str(), hub.password.as_str()),
            ("alice", "s3:cret")
        );
        assert!(!format!("{hub:?}").contains("s3:cret"));
        assert_eq!(
            lookup(dir.path(), "127.0.0.1:5000")
                .unwrap()
                .unwrap()
                .username,
            "bob"
        );
        assert!(lookup(dir.path(), "quay.io").unwrap().is_none());
        assert!(matches!(
            lookup(dir.path(), "bad.example"),
            Err(Error::Credentials { .. })
        ));
        assert!(lookup(&dir.path().join("missing"), "docker.io")
            .unwrap()
            .is_none());
    }
}
