//! `ps`, `stop` and `logs`: VMs started with `supermachine start`.

use std::io::{Read, Seek, SeekFrom, Write};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use supermachine::{Error, Vm};

pub fn ps(json: bool) -> Result<(), Error> {
    let vms = Vm::running();
    let mut out = std::io::stdout().lock();
    if json {
        for vm in &vms {
            let line = serde_json::to_string(vm).map_err(|source| Error::Json {
                what: "describing a VM",
                source,
            })?;
            let _ = writeln!(out, "{line}");
        }
        return Ok(());
    }
    let _ = writeln!(
        out,
        "{:<10} {:>8} {:>7} {:>5} {:>9}  {:<8} {:<20} COMMAND",
        "ID", "PID", "MEMORY", "VCPUS", "UPTIME", "NETWORK", "IMAGE"
    );
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    for vm in &vms {
        let _ = writeln!(
            out,
            "{:<10} {:>8} {:>6}M {:>5} {:>9}  {:<8} {:<20} {}",
            vm.id,
            vm.pid,
            vm.memory_mib,
            vm.vcpus,
            uptime(now.saturating_sub(vm.started)),
            network(vm.network.as_deref()),
            vm.image,
            vm.command.join(" ")
        );
    }
    Ok(())
}

/// The NETWORK column: `none`, `public`, or `allow:N` (N rules; `ps
/// --json` has them all).
fn network(spec: Option<&str>) -> String {
    match spec {
        None => "none".into(),
        Some(s) => match s.strip_prefix("allow=") {
            Some(rules) => format!(
                "allow:{}",
                rules.split(',').filter(|r| !r.is_empty()).count()
            ),
            None => s.into(),
        },
    }
}

fn uptime(secs: u64) -> String {
    match secs {
        s if s < 60 => format!("{s}s"),
        s if s < 3600 => format!("{}m{}s", s / 60, s % 60),
        s => format!("{}h{}m", s / 3600, (s % 3600) / 60),
    }
}

/// Stops each VM; reports every failure and exits non-zero if any failed.
pub async fn stop(ids: &[String]) -> Result<i32, Error> {
    let mut failed = 0;
    for id in ids {
        let result = match Vm::attach(id) {
            Ok(vm) => vm.stop().await,
            Err(e) => Err(e),
        };
        match result {
            Ok(()) => println!("{id}"),
            Err(e) => {
                eprintln!("supermachine: stop {id}: {e}");
                failed += 1;
            }
        }
    }
    Ok(if failed == 0 { 0 } else { 1 })
}

pub async fn logs(id: &str, follow: bool) -> Result<(), Error> {
    let vm = Vm::attach(id)?;
    let path = vm.serial_log().to_path_buf();
    let mut file = std::fs::File::open(&path)
        .map_err(|e| Error::io(format!("opening {}", path.display()), e))?;
    let mut out = std::io::stdout();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = file
            .read(&mut buf)
            .map_err(|e| Error::io(format!("reading {}", path.display()), e))?;
        if n > 0 {
            if out.write_all(&buf[..n]).and_then(|()| out.flush()).is_err() {
                return Ok(()); // our reader went away (e.g. `| head`)
            }
            continue;
        }
        if !follow || vm.try_outcome().is_some() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
        // A log rotated or truncated under us restarts from its beginning.
        let len = std::fs::metadata(&path).map_or(0, |m| m.len());
        let pos = file.stream_position().unwrap_or(0);
        if len < pos {
            let _ = file.seek(SeekFrom::Start(0));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_network_column_is_short() {
        assert_eq!(network(None), "none");
        assert_eq!(network(Some("public")), "public");
        assert_eq!(
            network(Some("allow=10.0.0.0/8:5432,0.0.0.0/0:443")),
            "allow:2"
        );
        assert_eq!(network(Some("allow=")), "allow:0");
    }

    #[test]
    fn uptimes_read_at_a_glance() {
        assert_eq!(uptime(59), "59s");
        assert_eq!(uptime(61), "1m1s");
        assert_eq!(uptime(3_660), "1h1m");
    }
}
