//! The operations every VM handle offers (a pooled VM and the VM of a
//! warmup): their arguments as JavaScript passes them, and how each runs
//! against a [`Vm`]. The package's JavaScript has already checked types
//! and ranges; what is checked here is what would be unsafe to trust.

use crate::error::Failure;
use napi::bindgen_prelude::Buffer;
use napi_derive::napi;
use std::time::Duration;
use supermachine::{Child, ExecBuilder, Vm, WriteFileRequest};

/// One environment variable of an exec or a build.
#[napi(object)]
#[derive(Clone)]
pub struct EnvVar {
    pub name: String,
    pub value: String,
}

/// What to run: `vm.exec` and `vm.spawn` options minus the data ones.
#[napi(object)]
#[derive(Clone)]
pub struct ExecArgs {
    pub argv: Vec<String>,
    pub env: Option<Vec<EnvVar>>,
    pub cwd: Option<String>,
    pub user: Option<String>,
    pub timeout_ms: Option<i64>,
    pub stdout_limit: Option<i64>,
    pub stderr_limit: Option<i64>,
}

/// How a process ended (the signal as its number; JavaScript names it).
#[napi(object)]
pub struct ExitInfo {
    pub exit_code: Option<i32>,
    pub signal: Option<i32>,
    pub timed_out: bool,
    pub stdout_dropped: i64,
    pub stderr_dropped: i64,
}

/// What `vm.exec` resolves with, before JavaScript shapes it.
#[napi(object)]
pub struct ExecOutput {
    pub status: ExitInfo,
    pub stdout: Buffer,
    pub stderr: Buffer,
}

/// Options of `vm.writeFile`.
#[napi(object)]
#[derive(Clone)]
pub struct WriteArgs {
    pub mode: Option<u32>,
    pub append: Option<bool>,
    pub create_parents: Option<bool>,
}

impl From<supermachine::ExitStatus> for ExitInfo {
    fn from(s: supermachine::ExitStatus) -> ExitInfo {
        ExitInfo {
            exit_code: s.code,
            signal: s.signal,
            timed_out: s.timed_out,
            stdout_dropped: saturating_i64(s.stdout_dropped),
            stderr_dropped: saturating_i64(s.stderr_dropped),
        }
    }
}

fn saturating_i64(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// A count from JavaScript that must not be negative.
fn non_negative(n: i64, what: &str) -> Result<u64, Failure> {
    u64::try_from(n).map_err(|_| {
        Failure::new(
            "ERR_OUT_OF_RANGE",
            format!("{what} must not be negative (got {n})"),
        )
    })
}

fn builder<'vm>(vm: &'vm Vm, args: &ExecArgs) -> Result<ExecBuilder<'vm>, Failure> {
    if args.argv.is_empty() {
        return Err(Failure::new(
            "ERR_INVALID_ARG_VALUE",
            "argv must name a program",
        ));
    }
    let mut b = vm.exec_builder().argv(args.argv.iter().cloned());
    for var in args.env.iter().flatten() {
        b = b.env(var.name.clone(), var.value.clone());
    }
    if let Some(cwd) = &args.cwd {
        b = b.cwd(cwd.clone());
    }
    if let Some(user) = &args.user {
        b = b.user(user.clone());
    }
    if let Some(ms) = args.timeout_ms {
        b = b.timeout(Duration::from_millis(non_negative(ms, "timeoutMs")?));
    }
    if let Some(n) = args.stdout_limit {
        b = b.stdout_limit(non_negative(n, "stdoutLimit")?);
    }
    if let Some(n) = args.stderr_limit {
        b = b.stderr_limit(non_negative(n, "stderrLimit")?);
    }
    Ok(b)
}

/// Runs a command to its end and collects its output.
pub async fn exec(vm: &Vm, args: ExecArgs, stdin: Option<Vec<u8>>) -> Result<ExecOutput, Failure> {
    let mut b = builder(vm, &args)?;
    if let Some(bytes) = stdin {
        b = b.stdin(bytes);
    }
    let out = b.output().await?;
    Ok(ExecOutput {
        status: out.status.into(),
        stdout: out.stdout.into(),
        stderr: out.stderr.into(),
    })
}

/// Starts a command with its streams (see `child.rs`).
pub async fn spawn(vm: &Vm, args: ExecArgs) -> Result<Child, Failure> {
    Ok(builder(vm, &args)?.spawn().await?)
}

pub async fn write_file(
    vm: &Vm,
    path: String,
    data: Vec<u8>,
    args: WriteArgs,
) -> Result<(), Failure> {
    let mut request = WriteFileRequest::new(path.clone());
    if let Some(mode) = args.mode {
        if mode > 0o7777 {
            return Err(Failure::new(
                "ERR_OUT_OF_RANGE",
                format!("mode {mode:o} has bits beyond 0o7777"),
            ));
        }
        request.mode = mode;
    }
    request.append = args.append.unwrap_or(false);
    request.create_parents = args.create_parents.unwrap_or(false);
    vm.write_file_with(request, &data[..])
        .await
        .map(|_| ())
        .map_err(|e| Failure::from(e).with_path(path))
}

pub async fn read_file(vm: &Vm, path: String, max_bytes: i64) -> Result<Buffer, Failure> {
    let limit = non_negative(max_bytes, "maxBytes")?;
    match vm.read_file_limited(&path, limit).await {
        Ok(data) => Ok(data.into()),
        Err(e) => Err(Failure::from(e).with_path(path)),
    }
}
