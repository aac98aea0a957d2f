//! The guest network (virtio-net + passt) in a real guest against real
//! servers on the host: off by default, what the egress policy allows
//! works both ways with the bytes intact, what it does not is refused at
//! once and never reaches the host, and restored copies of one snapshot
//! each get a working network of their own, with the caller's policy.

use crate::api::{ensure, Noise};
use crate::progress::trial;
use crate::snapshot::{runtime, sh};
use crate::util::TempDir;
use libtest_mimic::{Failed, Trial};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use supermachine::{Image, Network, Vm, VmConfig};

pub fn trials() -> Vec<Trial> {
    vec![
        trial("network::off_unless_asked", off_unless_asked),
        trial(
            "network::reaches_what_is_allowed_and_nothing_else",
            reaches_what_is_allowed_and_nothing_else,
        ),
        trial(
            "network::restored_copies_each_get_a_network_and_the_callers_policy",
            restored_copies,
        ),
    ]
}

/// Bytes `/big` serves.
const BIG: usize = 8 << 20;

/// The host's address on its default route: what a guest connects to
/// (in the lab, the lab's address on QEMU's user network). No packet is
/// sent: connecting a UDP socket only picks the route.
fn host_address() -> Result<IpAddr, Failed> {
    let probe = UdpSocket::bind("0.0.0.0:0")?;
    probe.connect("192.0.2.1:9")?;
    Ok(probe.local_addr()?.ip())
}

/// A small HTTP/1.0 server on every host address: `GET /big` answers
/// [`BIG`] bytes of noise, `POST` answers the SHA-256 of the body, any
/// other GET `hello-from-host`. Counts the connections it accepted.
struct HostServer {
    port: u16,
    accepted: Arc<AtomicUsize>,
}

impl HostServer {
    fn start() -> Result<HostServer, Failed> {
        let listener = TcpListener::bind("0.0.0.0:0")?;
        let port = listener.local_addr()?.port();
        let accepted = Arc::new(AtomicUsize::new(0));
        let count = accepted.clone();
        std::thread::spawn(move || {
            for conn in listener.incoming().flatten() {
                count.fetch_add(1, Ordering::SeqCst);
                std::thread::spawn(move || {
                    let _ = answer(conn);
                });
            }
        });
        Ok(HostServer { port, accepted })
    }

    fn accepted(&self) -> usize {
        self.accepted.load(Ordering::SeqCst)
    }
}

fn big_body() -> Vec<u8> {
    let mut body = vec![0u8; BIG];
    Noise::new(7).fill(&mut body);
    body
}

fn answer(conn: TcpStream) -> std::io::Result<()> {
    let mut reader = BufReader::new(conn.try_clone()?);
    let mut request = String::new();
    reader.read_line(&mut request)?;
    let mut length = 0usize;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 || line.trim().is_empty() {
            break;
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
    }
    let body = if request.starts_with("POST ") {
        let mut data = vec![0u8; length];
        reader.read_exact(&mut data)?;
        format!("{:x}\n", Sha256::digest(&data)).into_bytes()
    } else if request.starts_with("GET /big ") {
        big_body()
    } else {
        b"hello-from-host\n".to_vec()
    };
    let mut conn = conn;
    write!(
        conn,
        "HTTP/1.0 200 OK\r\nContent-Length: {}\r\n\r\n",
        body.len()
    )?;
    conn.write_all(&body)?;
    conn.shutdown(std::net::Shutdown::Write)
}

fn url(host: IpAddr, server: &HostServer, path: &str) -> String {
    format!("http://{}{path}", SocketAddr::new(host, server.port))
}

/// Whether `err` is wget's message for a refused destination
/// (EHOSTUNREACH, from the ICMP the device answers with).
fn refused(err: &str) -> bool {
    err.contains("No route to host") || err.to_lowercase().contains("unreachable")
}

/// `wget` of `url` in the guest: (exit code, stdout, stderr).
async fn wget(vm: &Vm, url: &str) -> Result<(i32, String, String), Failed> {
    // No `-T`: Debian's busybox-static wget crashes with it (SIGSEGV).
    let out = vm.exec(["wget", "-q", "-O", "-", url]).await?;
    Ok((
        out.status.code.unwrap_or(-1),
        out.stdout_lossy(),
        out.stderr_lossy(),
    ))
}

fn allow(rule: String) -> Result<Network, Failed> {
    Ok(Network::Allow(vec![rule.parse()?]))
}

fn off_unless_asked() -> Result<(), Failed> {
    runtime()?.block_on(async {
        let vm = Vm::start(&Image::builtin(), &VmConfig::default()).await?;
        let interfaces = sh(&vm, "ls /sys/class/net").await?;
        vm.stop().await?;
        // lo, and the kernel's idle IPv6-in-IPv4 tunnel sit0: no card.
        ensure(
            interfaces.lines().any(|i| i == "lo") && !interfaces.contains("eth"),
            format!("interfaces without a network: {interfaces:?}"),
        )
    })
}

fn reaches_what_is_allowed_and_nothing_else() -> Result<(), Failed> {
    let host = host_address()?;
    let allowed = HostServer::start()?;
    let other = HostServer::start()?;
    runtime()?.block_on(async {
        let config = VmConfig {
            network: Some(allow(format!("{host}:{}", allowed.port))?),
            ..VmConfig::default()
        };
        let vm = Vm::start(&Image::builtin(), &config).await?;
        let result = async {
            // Set up as the agent should have: address, route, resolver.
            let route = sh(&vm, "ip route").await?;
            ensure(
                route.contains("default via 192.168.127.1 dev eth0"),
                format!("routes: {route}"),
            )?;
            // The gateway and DNS server never need resolving: permanent
            // entries (flags 0x6: complete, permanent) with the stack's MAC.
            let arp = sh(&vm, "cat /proc/net/arp").await?;
            for addr in ["192.168.127.1 ", "192.168.127.3 "] {
                ensure(
                    arp.lines().any(|l| {
                        l.starts_with(addr)
                            && l.contains(" 0x6 ")
                            && l.contains("9a:55:9a:55:9a:55")
                    }),
                    format!("a permanent neighbour entry for {addr}: {arp}"),
                )?;
            }
            let resolv = sh(&vm, "cat /etc/resolv.conf").await?;
            ensure(
                resolv.contains("nameserver 192.168.127.3"),
                format!("resolv.conf: {resolv}"),
            )?;

            let (code, page, err) = wget(&vm, &url(host, &allowed, "/")).await?;
            ensure(
                code == 0 && page == "hello-from-host\n",
                format!("GET from the allowed server: {code} {page:?} {err}"),
            )?;
            // Many bytes both ways, intact.
            let want = format!("{:x}", Sha256::digest(big_body()));
            let got = sh(
                &vm,
                &format!("wget -q -O - {} | sha256sum", url(host, &allowed, "/big")),
            )
            .await?;
            ensure(
                got.starts_with(&want),
                format!("8 MiB download: {got} want {want}"),
            )?;
            let up = sh(
                &vm,
                &format!(
                    // Text: busybox wget sends a post file up to its first NUL.
                    "head -c 1048576 /dev/urandom | od -An -tx1 >/tmp/up && sha256sum /tmp/up && \
                     wget -q -O - --post-file /tmp/up {}",
                    url(host, &allowed, "/upload")
                ),
            )
            .await?;
            let (sent, received) = up.split_once('\n').ok_or("no upload answer")?;
            ensure(
                sent.split_whitespace().next() == Some(received.trim()),
                format!("3 MiB upload: guest {sent}, host {received}"),
            )?;

            // Another port of the same host: refused at once, never reached.
            let (code, _, err) = wget(&vm, &url(host, &other, "/")).await?;
            ensure(
                code != 0 && refused(&err),
                format!("GET from a server not allowed: exit {code}, {err:?}"),
            )?;
            ensure(
                other.accepted() == 0,
                "a connection the policy refused reached the host",
            )
        }
        .await;
        vm.stop().await?;
        result
    })
}

fn restored_copies() -> Result<(), Failed> {
    let host = host_address()?;
    let server = HostServer::start()?;
    let dir = TempDir::new("network-snapshot");
    let policy = allow(format!("{host}:{}", server.port))?;
    runtime()?.block_on(async {
        let config = VmConfig {
            network: Some(policy.clone()),
            ..VmConfig::default()
        };
        let vm = Vm::start(&Image::builtin(), &config).await?;
        let (code, page, err) = wget(&vm, &url(host, &server, "/")).await?;
        ensure(
            code == 0 && page == "hello-from-host\n",
            format!("before the snapshot: {code} {page:?} {err}"),
        )?;
        let image = vm.snapshot(dir.0.join("snap")).await?;
        vm.stop().await?;

        // Two copies at once, same MAC and address, each behind its own
        // stack: both reach the server.
        let config = VmConfig {
            network: Some(policy.clone()),
            ..VmConfig::default()
        };
        let (a, b) = tokio::try_join!(Vm::start(&image, &config), Vm::start(&image, &config))?;
        let target = url(host, &server, "/");
        let (ra, rb) = tokio::join!(wget(&a, &target), wget(&b, &target));
        for (name, r) in [("a", ra?), ("b", rb?)] {
            ensure(
                r.0 == 0 && r.1 == "hello-from-host\n",
                format!("copy {name}: {r:?}"),
            )?;
        }
        a.stop().await?;
        b.stop().await?;

        // Without a policy, a copy gets the public-only default, not the
        // one the snapshot was taken with.
        let before = server.accepted();
        let c = Vm::start(&image, &VmConfig::default()).await?;
        let (code, _, err) = wget(&c, &target).await?;
        c.stop().await?;
        ensure(
            code != 0 && refused(&err),
            format!("a copy with the default policy reached a private address: {code} {err:?}"),
        )?;
        ensure(
            server.accepted() == before,
            "the default policy let a connection through",
        )
    })
}
