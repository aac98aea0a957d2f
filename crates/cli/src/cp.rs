//! `supermachine cp`: files and directory trees between host and guest.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use supermachine::{Error, FileKind, Vm, WriteFileRequest};

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

pub async fn run(src: &str, dst: &str) -> Result<(), Error> {
    match (parse(src), parse(dst)) {
        (Location::Host(from), Location::Guest { id, path }) => {
            let vm = Vm::attach(&id)?;
            let name = file_name(&from)?;
            let target = match vm.stat(&path).await {
                Ok(st) if st.kind == FileKind::Dir => join(&path, &name),
                _ => path,
            };
            upload(&vm, &from, &target).await
        }
        (Location::Guest { id, path }, Location::Host(to)) => {
            let vm = Vm::attach(&id)?;
            let name = path.rsplit('/').find(|s| !s.is_empty()).unwrap_or("root");
            let target = if to.is_dir() { to.join(name) } else { to };
            download(&vm, &path, &target).await
        }
        _ => Err(Error::InvalidArgument(
            "cp copies between the host and a VM: exactly one side must be ID:/path".into(),
        )),
    }
}

fn file_name(path: &Path) -> Result<String, Error> {
    let canonical =
        std::fs::canonicalize(path).map_err(|e| Error::io(format!("cp: {}", path.display()), e))?;
    Ok(canonical
        .file_name()
        .map_or_else(|| "root".into(), |n| n.to_string_lossy().into_owned()))
}

fn join(dir: &str, name: &str) -> String {
    format!("{}/{name}", dir.trim_end_matches('/'))
}

async fn upload(vm: &Vm, from: &Path, to: &str) -> Result<(), Error> {
    let meta = std::fs::symlink_metadata(from)
        .map_err(|e| Error::io(format!("cp: {}", from.display()), e))?;
    let mode = meta.permissions().mode() & 0o7777;
    if meta.is_dir() {
        match vm.mkdir(to, false).await {
            Err(Error::Agent {
                kind: supermachine::ErrorKind::AlreadyExists,
                ..
            }) => {}
            other => other?,
        }
        let mut entries: Vec<_> = std::fs::read_dir(from)
            .map_err(|e| Error::io(format!("cp: {}", from.display()), e))?
            .flatten()
            .collect();
        entries.sort_by_key(|e| e.file_name());
        for entry in entries {
            let name = entry.file_name().to_string_lossy().into_owned();
            Box::pin(upload(vm, &entry.path(), &join(to, &name))).await?;
        }
        Ok(())
    } else if meta.is_file() {
        let file = tokio::fs::File::open(from)
            .await
            .map_err(|e| Error::io(format!("cp: {}", from.display()), e))?;
        let mut request = WriteFileRequest::new(to);
        request.mode = mode;
        vm.write_file_with(request, file).await.map(|_| ())
    } else {
        eprintln!(
            "supermachine: cp: skipping {} (only files and directories are copied)",
            from.display()
        );
        Ok(())
    }
}

async fn download(vm: &Vm, from: &str, to: &Path) -> Result<(), Error> {
    let stat = vm.stat(from).await?;
    let io = |e| Error::io(format!("cp: {}", to.display()), e);
    match stat.kind {
        FileKind::Dir => {
            match std::fs::create_dir(to) {
                Err(e) if e.kind() != std::io::ErrorKind::AlreadyExists => return Err(io(e)),
                _ => {}
            }
            for entry in vm.list_dir(from).await? {
                Box::pin(download(
                    vm,
                    &join(from, &entry.name),
                    &to.join(&entry.name),
                ))
                .await?;
            }
            Ok(())
        }
        FileKind::File => {
            // Into a temporary name first: an interrupted copy never leaves
            // a truncated file under the real name.
            let partial = to.with_file_name(format!(
                ".{}.supermachine-partial",
                to.file_name()
                    .map_or_else(|| "file".into(), |n| n.to_string_lossy())
            ));
            let file = tokio::fs::File::create(&partial).await.map_err(io)?;
            let copied = vm.read_file_to(from, file).await;
            if let Err(e) = copied {
                let _ = std::fs::remove_file(&partial);
                return Err(e);
            }
            std::fs::set_permissions(&partial, std::fs::Permissions::from_mode(stat.mode))
                .map_err(io)?;
            std::fs::rename(&partial, to).map_err(io)
        }
        FileKind::Symlink => {
            let target = stat.link_target.unwrap_or_default();
            std::os::unix::fs::symlink(&target, to).map_err(io)
        }
        other => {
            eprintln!("supermachine: cp: skipping {from} ({other:?})");
            Ok(())
        }
    }
}
