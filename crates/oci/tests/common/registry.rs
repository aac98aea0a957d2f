//! A real CNCF distribution registry (Debian's `docker-registry`) on
//! 127.0.0.1 with a temp storage dir, and skopeo to push into it.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

const REGISTRY_BIN: &str = "/usr/bin/docker-registry";

pub fn require_tools() {
    for (bin, pkg) in [
        (REGISTRY_BIN, "docker-registry"),
        ("/usr/bin/skopeo", "skopeo"),
    ] {
        assert!(
            Path::new(bin).exists(),
            "{bin} is missing: these tests need a real registry and skopeo; run `apt-get install -y docker-registry skopeo`"
        );
        let _ = pkg;
    }
}

pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct Registry {
    pub port: u16,
    child: Child,
    pub dir: tempfile::TempDir,
    pub log: PathBuf,
    pub auth: Option<(String, String)>,
}

impl Registry {
    /// Starts a registry; with `auth`, requires that user/password (htpasswd, bcrypt).
    pub fn start(auth: Option<(&str, &str)>) -> Registry {
        require_tools();
        let dir = tempfile::tempdir().unwrap();
        let port = free_port();
        let mut config = format!(
            "version: 0.1\nlog:\n  level: warn\n  accesslog:\n    disabled: false\nstorage:\n  filesystem:\n    rootdirectory: {}\n  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:{port}\n",
            dir.path().join("data").display()
        );
        if let Some((user, pass)) = auth {
            let hash = bcrypt::hash_with_result(pass, 5)
                .unwrap()
                .format_for_version(bcrypt::Version::TwoY);
            let htpasswd = dir.path().join("htpasswd");
            std::fs::write(&htpasswd, format!("{user}:{hash}\n")).unwrap();
            config.push_str(&format!(
                "auth:\n  htpasswd:\n    realm: test-realm\n    path: {}\n",
                htpasswd.display()
            ));
        }
        let config_path = dir.path().join("config.yml");
        std::fs::write(&config_path, config).unwrap();
        let log = dir.path().join("registry.log");
        let out = std::fs::File::create(&log).unwrap();
        let child = Command::new(REGISTRY_BIN)
            .arg("serve")
            .arg(&config_path)
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .expect("starting docker-registry");
        let reg = Registry {
            port,
            child,
            dir,
            log,
            auth: auth.map(|(u, p)| (u.to_string(), p.to_string())),
        };
        reg.wait_ready();
        reg
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", self.port)) {
                let _ = s.write_all(b"GET /v2/ HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n");
                let mut buf = [0u8; 32];
                if let Ok(n) = s.read(&mut buf) {
                    let head = String::from_utf8_lossy(&buf[..n]);
                    if head.contains(" 200") || head.contains(" 401") {
                        return;
                    }
                }
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "docker-registry did not come up on 127.0.0.1:{}; its log:\n{}",
            self.port,
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// Pushes `oci:layout_dir:tag` to `repo:tag` here (with `--all` for indexes).
    pub fn push_layout(&self, layout_dir: &Path, tag: &str, repo: &str) {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--all", "--quiet", "--dest-tls-verify=false"]);
        if let Some((u, p)) = &self.auth {
            cmd.arg(format!("--dest-creds={u}:{p}"));
        }
        cmd.arg(format!("oci:{}:{tag}", layout_dir.display()));
        cmd.arg(format!("docker://{}/{repo}:{tag}", self.host()));
        let out = cmd.stdin(Stdio::null()).output().expect("running skopeo");
        assert!(
            out.status.success(),
            "skopeo copy failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// How many successful GETs of `/v2/<repo>/blobs/<digest>` the access log shows.
    pub fn blob_gets(&self, repo: &str, digest: &str) -> usize {
        let needle = format!("\"GET /v2/{repo}/blobs/{digest} ");
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&needle) && l.contains("\" 200 "))
            .count()
    }

    /// All blob GETs for `repo`.
    pub fn all_blob_gets(&self, repo: &str) -> usize {
        let needle = format!("\"GET /v2/{repo}/blobs/");
        std::fs::read_to_string(&self.log)
            .unwrap_or_default()
            .lines()
            .filter(|l| l.contains(&needle))
            .count()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
