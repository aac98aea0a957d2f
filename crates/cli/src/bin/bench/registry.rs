//! `--local-registry`: serve the benchmarked image from a real registry,
//! Debian's `docker-registry` (CNCF distribution) on 127.0.0.1 at a free
//! port with its storage in the bench's scratch dir, the image pushed there
//! with `skopeo copy` (as the registry tests do). Killed when dropped.

use crate::BoxError;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

pub const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
pub const SKOPEO_BIN: &str = "/usr/bin/skopeo";

pub struct Registry {
    child: Child,
    dir: PathBuf,
    /// The pushed image, `127.0.0.1:PORT/bench/image:TAG`.
    pub reference: String,
}

impl Registry {
    /// Starts a registry storing under `dir` and pushes `source` (anything
    /// skopeo reads: `oci:DIR[:TAG]`, `docker-archive:FILE`) into it.
    pub fn serve(source: &str, dir: &Path) -> Result<Registry, BoxError> {
        crate::require(&[(REGISTRY_BIN, "docker-registry"), (SKOPEO_BIN, "skopeo")])?;
        std::fs::create_dir_all(dir)?;
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let config = dir.join("config.yml");
        std::fs::write(
            &config,
            format!(
                "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
                dir.join("data").display()
            ),
        )?;
        let log = std::fs::File::create(dir.join("registry.log"))?;
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let mut registry = Registry {
            child,
            dir: dir.to_path_buf(),
            reference: format!("127.0.0.1:{port}/bench/image:{}", tag_of(source)),
        };
        registry.wait_ready(port)?;
        crate::step(&format!("pushing {source} to {}", registry.reference));
        let out = Command::new(SKOPEO_BIN)
            .args(["copy", "--quiet", "--dest-tls-verify=false", source])
            .arg(format!("docker://{}", registry.reference))
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(format!(
                "skopeo copy {source} docker://{} failed: {}",
                registry.reference,
                String::from_utf8_lossy(&out.stderr).trim()
            )
            .into());
        }
        Ok(registry)
    }

    fn wait_ready(&mut self, port: u16) -> Result<(), BoxError> {
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait()? {
                return Err(format!("docker-registry exited ({status})").into());
            }
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                let _ = s.write_all(b"GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
                let mut buf = [0u8; 32];
                if matches!(s.read(&mut buf), Ok(n) if String::from_utf8_lossy(&buf[..n]).contains(" 200"))
                {
                    return Ok(());
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Err(format!(
            "docker-registry did not come up on 127.0.0.1:{port}; its log:\n{}",
            std::fs::read_to_string(self.dir.join("registry.log")).unwrap_or_default()
        )
        .into())
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The tag of `oci:DIR:TAG` (`latest` when there is none).
fn tag_of(source: &str) -> &str {
    match source.rsplit_once(':') {
        Some((head, tag)) if head.contains(':') && !tag.is_empty() && !tag.contains('/') => tag,
        _ => "latest",
    }
}
