//! `build`, `snapshot`, `snapshots ls|rm`, and finding a snapshot by name,
//! key or path for `run --snapshot`.

use crate::options::{parse_env, VmOptions};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;
use supermachine::{BuildOptions, Error, ExtraFile, Image, Vm};

#[derive(clap::Args)]
pub struct BuildArgs {
    #[command(flatten)]
    pub vm: VmOptions,
    /// Name of the snapshot directory (default: the build key). A named snapshot whose
    /// inputs changed is re-baked in place.
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,
    /// Environment variable of the workload and every later exec, NAME=VALUE (repeatable).
    #[arg(short = 'e', long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// Working directory of the workload and every later exec.
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// User of the workload and every later exec.
    #[arg(short = 'u', long = "user", value_name = "USER")]
    pub user: Option<String>,
    /// Copy a host file into the guest before the workload starts, HOST:GUEST
    /// (repeatable). Its contents are part of the build key.
    #[arg(long = "file", value_name = "HOST:GUEST")]
    pub files: Vec<String>,
    /// Wait until something in the guest listens on this TCP port before the snapshot.
    #[arg(long, value_name = "PORT")]
    pub listen: Option<u16>,
    /// Shell command run in the guest (sh -c) after the workload starts and before the
    /// snapshot; it must succeed (repeatable, run in order).
    #[arg(long = "warmup", value_name = "CMD")]
    pub warmups: Vec<String>,
    /// Part of the build key standing for the warmup (default: the warmup commands).
    #[arg(long, value_name = "TAG")]
    pub warmup_tag: Option<String>,
    /// Where snapshots go (default: $SUPERMACHINE_SNAPSHOTS_DIR, else
    /// $SUPERMACHINE_DATA_DIR/snapshots, else ~/.local/supermachine-snapshots).
    #[arg(long, value_name = "DIR")]
    pub snapshots_dir: Option<PathBuf>,
    /// The workload to start in the background (default: the image's command), after `--`.
    #[arg(last = true, value_name = "CMD")]
    pub command: Vec<String>,
}

pub async fn build(args: BuildArgs) -> Result<i32, Error> {
    let boot_timeout = args.vm.boot_timeout();
    let (image, config) = args.vm.into_config().await?;
    let mut extra_files = Vec::new();
    for spec in &args.files {
        let (host, guest) = spec.rsplit_once(':').ok_or_else(|| {
            Error::InvalidArgument(format!("--file {spec:?}: expected HOST:GUEST"))
        })?;
        if !guest.starts_with('/') {
            return Err(Error::InvalidArgument(format!(
                "--file {spec:?}: the guest path must be absolute"
            )));
        }
        extra_files.push(ExtraFile {
            host_path: host.into(),
            guest_path: guest.into(),
        });
    }
    let warmups = args.warmups.clone();
    let warmup_tag = args
        .warmup_tag
        .or_else(|| (!warmups.is_empty()).then(|| warmups.join("\n")));
    let timeout = boot_timeout.max(Duration::from_secs(60));
    let warmup = (!warmups.is_empty()).then(|| {
        supermachine::warmup(move |vm| {
            Box::pin(async move {
                // The library does not time a warmup; `--warmup` commands
                // share the build's stage timeout, as they always have.
                let deadline = tokio::time::Instant::now() + timeout;
                for cmd in &warmups {
                    let run = vm.exec(["sh", "-c", cmd.as_str()]);
                    let out = tokio::time::timeout_at(deadline, run).await.map_err(|_| {
                        Error::WarmupTimeout {
                            secs: timeout.as_secs(),
                        }
                    })??;
                    if out.status.code != Some(0) {
                        return Err(Error::WarmupFailed {
                            command: cmd.clone(),
                            code: out.status.shell_code(),
                            stderr: out.stderr_lossy().trim().to_string(),
                        });
                    }
                }
                Ok(())
            })
        })
    });
    let options = BuildOptions {
        name: args.name,
        memory_mib: config.memory_mib,
        vcpus: config.vcpus,
        cmd: (!args.command.is_empty()).then_some(args.command),
        env: parse_env(&args.env)?,
        workdir: args.workdir,
        user: args.user,
        extra_files,
        extra_kernel_args: config.extra_kernel_args,
        network: config.network,
        warmup,
        warmup_tag,
        listener_required: args.listen.is_some(),
        guest_port: args.listen.unwrap_or(80),
        snapshots_dir: args.snapshots_dir,
        timeout,
        ..BuildOptions::new(image)
    };
    let started = std::time::Instant::now();
    let built = supermachine::build(options).await?;
    if built.cached {
        eprintln!("supermachine: cached (same inputs as an earlier build)");
    } else {
        eprintln!(
            "supermachine: baked in {:.1} s",
            started.elapsed().as_secs_f64()
        );
    }
    println!("{}\t{}", built.key, built.dir.display());
    Ok(0)
}

/// A snapshot named by a path, a name or key in the snapshots directory.
pub fn find(spec: &str) -> Result<Image, Error> {
    let as_path = Path::new(spec);
    if spec.contains('/') || as_path.is_dir() {
        return Image::from_snapshot(as_path);
    }
    let root = supermachine::default_snapshots_dir()?;
    let named = root.join(spec);
    if named.is_dir() {
        return Image::from_snapshot(named);
    }
    // A key given for a named snapshot.
    for (dir, meta) in supermachine::snapshot::list(&root) {
        if meta.key.as_deref() == Some(spec) {
            return Image::from_snapshot(dir);
        }
    }
    Err(Error::Snapshot {
        path: named,
        reason: supermachine::snapshot::SnapshotProblem::NotFound,
    })
}

/// `snapshot ID PATH`: a snapshot of a running VM, which keeps running.
pub async fn snapshot(id: &str, path: &Path) -> Result<i32, Error> {
    let vm = Vm::attach(id)?;
    let image = vm.snapshot(path).await?;
    if let Some(dir) = image.snapshot_dir() {
        println!("{}", dir.display());
    }
    Ok(0)
}

pub fn ls(json: bool, dir: Option<PathBuf>) -> Result<i32, Error> {
    let root = match dir {
        Some(d) => d,
        None => supermachine::default_snapshots_dir()?,
    };
    let all = supermachine::snapshot::list(&root);
    let mut out = std::io::stdout().lock();
    if json {
        for (path, meta) in &all {
            let mut v = serde_json::to_value(meta).map_err(|source| Error::Json {
                what: "describing a snapshot",
                source,
            })?;
            v["path"] = serde_json::Value::String(path.display().to_string());
            let _ = writeln!(out, "{v}");
        }
        return Ok(0);
    }
    let _ = writeln!(
        out,
        "{:<24} {:<16} {:>7} {:>9}  {:<28} COMMAND",
        "NAME", "KEY", "MEMORY", "STORED", "IMAGE"
    );
    for (path, meta) in &all {
        let name = path.file_name().unwrap_or_default().to_string_lossy();
        let _ = writeln!(
            out,
            "{:<24} {:<16} {:>6}M {:>8.1}M  {:<28} {}",
            name,
            meta.key.as_deref().unwrap_or("-"),
            meta.memory_mib,
            meta.memory_data_bytes as f64 / (1 << 20) as f64,
            meta.image,
            meta.command.join(" ")
        );
    }
    Ok(0)
}

pub fn rm(specs: &[String]) -> Result<i32, Error> {
    let mut failed = false;
    for spec in specs {
        match find(spec) {
            Ok(image) => {
                let Some(dir) = image.snapshot_dir() else {
                    continue;
                };
                if let Err(e) = std::fs::remove_dir_all(dir) {
                    eprintln!("supermachine: removing {}: {e}", dir.display());
                    failed = true;
                } else {
                    println!("{}", dir.display());
                }
            }
            Err(e) => {
                eprintln!("supermachine: {e}");
                failed = true;
            }
        }
    }
    Ok(if failed { 1 } else { 0 })
}
