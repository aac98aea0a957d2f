//! A real registry for the tests: Debian's `docker-registry` (CNCF
//! distribution) on 127.0.0.1 with its storage in a temp dir, and `skopeo`
//! to push OCI layouts into it (the approach of crates/oci/tests).

use crate::util::TempDir;
use libtest_mimic::Failed;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";
const SKOPEO_BIN: &str = "/usr/bin/skopeo";

pub struct Registry {
    pub port: u16,
    child: Child,
    dir: TempDir,
}

impl Registry {
    pub fn start() -> Result<Registry, Failed> {
        for (bin, pkg) in [(REGISTRY_BIN, "docker-registry"), (SKOPEO_BIN, "skopeo")] {
            if !Path::new(bin).exists() {
                return Err(format!(
                    "{bin} is missing: the registry tests need a real registry and skopeo; apt-get install -y {pkg}"
                )
                .into());
            }
        }
        let dir = TempDir::new("registry");
        let port = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();
        let config = format!(
            "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.0.join("data").display()
        );
        let config_path = dir.0.join("config.yml");
        std::fs::write(&config_path, config)?;
        let log = std::fs::File::create(dir.0.join("registry.log"))?;
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config_path)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()?;
        let registry = Registry { port, child, dir };
        registry.wait_ready()?;
        Ok(registry)
    }

    fn wait_ready(&self) -> Result<(), Failed> {
        // Slow under emulation: give it time.
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.write_all(b"GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
                let mut buf = [0u8; 32];
                if let Ok(n) = s.read(&mut buf) {
                    if String::from_utf8_lossy(&buf[..n]).contains(" 200") {
                        return Ok(());
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        Err(format!(
            "docker-registry did not come up on 127.0.0.1:{}; its log:\n{}",
            self.port,
            std::fs::read_to_string(self.dir.0.join("registry.log")).unwrap_or_default()
        )
        .into())
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Pushes `oci:LAYOUT:TAG` to `REPO:TAG` here.
    pub fn push(&self, layout: &Path, tag: &str, repo: &str) -> Result<(), Failed> {
        let out = Command::new(SKOPEO_BIN)
            .args(["copy", "--quiet", "--dest-tls-verify=false"])
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{repo}:{tag}", self.host()))
            .stdin(Stdio::null())
            .output()?;
        if !out.status.success() {
            return Err(format!(
                "skopeo copy failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            )
            .into());
        }
        Ok(())
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
