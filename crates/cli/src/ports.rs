//! Published ports: `-p [HOST:][HOSTPORT:]GUESTPORT` on `run` and `start`,
//! and `supermachine forward`, which carries them for a VM in the
//! background (a `start`ed VM outlives the command that made it, so its
//! ports live in a process of their own that ends with the VM).

use std::io::{BufRead, Write};
use std::net::IpAddr;
use std::os::unix::process::CommandExt;
use std::process::Stdio;
use supermachine::{Error, ExposeOptions, TcpForwarder, Vm};

/// One `-p` option.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Publish {
    /// Where the host listens.
    pub host: ExposeOptions,
    /// The guest port it reaches.
    pub guest_port: u16,
}

impl std::fmt::Display for Publish {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let host = match self.host.host {
            IpAddr::V6(v6) => format!("[{v6}]"),
            v4 => v4.to_string(),
        };
        write!(f, "{host}:{}:{}", self.host.host_port, self.guest_port)
    }
}

/// The `-p` help, shared by `run`, `start` and `forward`.
pub const PUBLISH_HELP: &str = "Publish a guest TCP port on the host: [HOST:][HOSTPORT:]GUESTPORT \
    (repeatable). HOST defaults to 127.0.0.1 (the guest's service is reachable from this machine \
    only; give 0.0.0.0 to listen on every interface), HOSTPORT to a free port (printed). \
    Connections are carried to the guest's loopback over vsock: the guest needs no network.";

/// Parses `[HOST:][HOSTPORT:]GUESTPORT[/tcp]`; an IPv6 HOST goes in brackets.
pub fn parse_publish(spec: &str) -> Result<Publish, Error> {
    let bad = |why: &str| Error::InvalidArgument(format!("-p {spec}: {why}"));
    let body = match spec.rsplit_once('/') {
        Some((body, "tcp")) => body,
        Some((_, proto)) => {
            return Err(bad(&format!(
                "only tcp ports can be published, not {proto}"
            )))
        }
        None => spec,
    };
    let (rest, guest) = match body.rsplit_once(':') {
        Some((rest, guest)) => (Some(rest), guest),
        None => (None, body),
    };
    let port = |s: &str, what: &str| -> Result<u16, Error> {
        s.parse::<u16>()
            .map_err(|_| bad(&format!("{what} {s:?} is not a port number (0-65535)")))
    };
    let guest_port = port(guest, "the guest port")?;
    if guest_port == 0 {
        return Err(bad("the guest port must not be 0"));
    }
    let mut host = ExposeOptions::default();
    if let Some(rest) = rest {
        let (addr, host_port) = match rest.rsplit_once(':') {
            // `[::1]:8080` or `127.0.0.1:8080`, or `HOST:` (any free port).
            Some((addr, p)) if !rest.ends_with(']') => (Some(addr), p),
            _ => (None, rest),
        };
        if !host_port.is_empty() {
            host.host_port = port(host_port, "the host port")?;
        }
        if let Some(addr) = addr {
            let addr = addr.trim_start_matches('[').trim_end_matches(']');
            host.host = addr
                .parse()
                .map_err(|_| bad(&format!("{addr:?} is not an IP address")))?;
        }
    }
    Ok(Publish { host, guest_port })
}

pub fn parse_all(specs: &[String]) -> Result<Vec<Publish>, Error> {
    specs.iter().map(|s| parse_publish(s)).collect()
}

/// Starts a forwarder per `-p`; says on stderr where each listens when the
/// host port was chosen here.
pub async fn expose_all(vm: &Vm, publish: &[Publish]) -> Result<Vec<TcpForwarder>, Error> {
    let mut forwarders = Vec::new();
    for p in publish {
        let fwd = vm.expose_tcp(p.guest_port, p.host).await?;
        if p.host.host_port == 0 {
            eprintln!(
                "supermachine: guest port {} published on {}",
                p.guest_port,
                fwd.local_addr()
            );
        }
        forwarders.push(fwd);
    }
    Ok(forwarders)
}

/// `supermachine forward ID -p …`: carries the ports until the VM ends
/// (or this process is stopped), after printing one line per port. With
/// `background`, a `start` made this process: once the ports listen it
/// says so on stdout, then leaves stdout, and writes later messages to
/// the VM's `forward.log`.
pub async fn forward(id: &str, publish: &[Publish], background: bool) -> Result<i32, Error> {
    if publish.is_empty() {
        return Err(Error::InvalidArgument("give at least one -p".into()));
    }
    let vm = Vm::attach(id)?;
    let mut forwarders = Vec::new();
    for p in publish {
        forwarders.push(vm.expose_tcp(p.guest_port, p.host).await?);
    }
    let mut out = std::io::stdout().lock();
    for f in &forwarders {
        let _ = writeln!(out, "{} -> {}", f.local_addr(), f.guest_port());
    }
    let _ = out.flush();
    drop(out);
    if background {
        detach_output(&vm);
    }
    tokio::select! {
        outcome = vm.ended() => eprintln!("supermachine: VM {id} ended ({outcome:?}): its ports are closed"),
        _ = tokio::signal::ctrl_c() => {}
    }
    for f in forwarders {
        f.close().await;
    }
    Ok(0)
}

/// Points stdout at /dev/null and stderr at the VM's `forward.log` (or
/// /dev/null), so `start`, reading our stdout, sees its end.
fn detach_output(vm: &Vm) {
    use std::os::fd::AsRawFd;
    let null = std::fs::OpenOptions::new().write(true).open("/dev/null");
    use std::os::unix::fs::OpenOptionsExt;
    let log = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .mode(0o600)
        .custom_flags(libc::O_NOFOLLOW)
        .open(vm.runtime_dir().join("forward.log"))
        .or_else(|_| std::fs::OpenOptions::new().write(true).open("/dev/null"));
    if let (Ok(null), Ok(log)) = (null, log) {
        // SAFETY: dup2 onto a standard fd, which stays open for the
        // process's life; the source is a live file.
        unsafe { libc::dup2(null.as_raw_fd(), 1) };
        // SAFETY: as above.
        unsafe { libc::dup2(log.as_raw_fd(), 2) };
    }
}

/// For `start -p`: starts `supermachine forward --background ID -p …` in a
/// process group of its own and waits until its ports listen. Its lines
/// ("ADDR -> GUESTPORT") are returned; a failure carries its message.
pub fn spawn_background(id: &str, publish: &[Publish]) -> Result<Vec<String>, Error> {
    let exe = std::env::current_exe().map_err(|e| Error::io("finding this program", e))?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["forward", "--background", id]);
    for p in publish {
        cmd.arg("-p").arg(p.to_string());
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0)
        .spawn()
        .map_err(|e| Error::io("starting the port forwarder", e))?;
    let lines: Vec<String> = match child.stdout.take() {
        Some(stdout) => std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
            .collect(),
        None => Vec::new(),
    };
    if lines.len() == publish.len() {
        // Its stderr is the log file now; the pipe's end is ours to drop.
        return Ok(lines);
    }
    // It ended before its ports listened: its stderr says why.
    let mut message = String::new();
    if let Some(mut stderr) = child.stderr.take() {
        use std::io::Read;
        let _ = stderr.read_to_string(&mut message);
    }
    let _ = child.wait();
    let message = message
        .trim()
        .trim_start_matches("supermachine: ")
        .to_string();
    Err(Error::InvalidArgument(if message.is_empty() {
        "the port forwarder ended before its ports listened".into()
    } else {
        message
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    fn p(host: IpAddr, host_port: u16, guest_port: u16) -> Publish {
        Publish {
            host: ExposeOptions { host, host_port },
            guest_port,
        }
    }

    #[test]
    fn publish_specs_parse_as_docker_writes_them() {
        let lo = IpAddr::V4(Ipv4Addr::LOCALHOST);
        let any = IpAddr::V4(Ipv4Addr::UNSPECIFIED);
        let v6: IpAddr = "::1".parse().unwrap();
        for (spec, want) in [
            ("80", p(lo, 0, 80)),
            ("8080:80", p(lo, 8080, 80)),
            ("8080:80/tcp", p(lo, 8080, 80)),
            ("0.0.0.0:8080:80", p(any, 8080, 80)),
            ("0.0.0.0::80", p(any, 0, 80)),
            ("[::1]:8080:80", p(v6, 8080, 80)),
        ] {
            assert_eq!(parse_publish(spec).unwrap(), want, "{spec}");
            // What `start` hands the forwarder reads back the same.
            assert_eq!(parse_publish(&want.to_string()).unwrap(), want, "{spec}");
        }
        for bad in [
            "",
            "0",
            "80/udp",
            "x:80",
            "70000:80",
            "host:8080:80",
            "8080:",
            ":80:",
        ] {
            assert!(parse_publish(bad).is_err(), "{bad:?} parsed");
        }
    }
}
