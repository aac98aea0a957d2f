//! `supermachine cp`: files and directory trees between host and guest.
//!
//! The copying itself, with its rules against hostile guests (checked
//! names, no symlink followed on the host, setuid/setgid/sticky bits
//! dropped unless `--preserve-mode`), is the library's
//! ([`Vm::copy_from_guest`], [`Vm::copy_to_guest`]); this parses the two
//! sides and reports what was skipped.

use std::path::PathBuf;
use supermachine::{CopyOptions, CopyReport, Error, Vm};

/// One side of a copy.
enum Location {
    Host(PathBuf),
    Guest { id: String, path: String },
}

fn parse(spec: &str) -> Location {
    if let Some((id, path)) = spec.split_once(':') {
        let is_id = !id.is_empty() && id.chars().all(|c| c.is_ascii_hexdigit());
        if is_id && path.starts_with('/') {
            return Location::Guest {
                id: id.to_string(),
                path: path.to_string(),
            };
        }
    }
    Location::Host(PathBuf::from(spec))
}

pub async fn run(src: &str, dst: &str, preserve_mode: bool) -> Result<(), Error> {
    let options = CopyOptions { preserve_mode };
    let report = match (parse(src), parse(dst)) {
        (Location::Host(from), Location::Guest { id, path }) => {
            Vm::attach(&id)?
                .copy_to_guest(&from, &path, &options)
                .await?
        }
        (Location::Guest { id, path }, Location::Host(to)) => {
            Vm::attach(&id)?
                .copy_from_guest(&path, &to, &options)
                .await?
        }
        _ => {
            return Err(Error::InvalidArgument(
                "cp copies between the host and a VM: exactly one side must be ID:/path".into(),
            ))
        }
    };
    print_skipped(&report);
    Ok(())
}

fn print_skipped(report: &CopyReport) {
    for skipped in &report.skipped {
        eprintln!("supermachine: cp: skipped {skipped}");
    }
}
