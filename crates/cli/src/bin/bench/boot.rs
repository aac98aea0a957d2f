//! `boot`: cold boot to agent-ready, ours against QEMU's microvm machine
//! booting the same kernel, initramfs (our agent) and root filesystem, with
//! the same handshake: the clock stops when the agent's `Ready` frame arrives
//! over vsock (ours: the worker's user-space vsock; QEMU: vhost-vsock). Runs
//! are interleaved so both see the same machine conditions.

use crate::{step, BoxError};
use std::io::Read;
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};
use supermachine::{assets, kernel, Image, Vm, VmConfig};
use supermachine_protocol::{AgentMessage, READY_PORT};

pub fn run(iterations: usize, cid: u32) -> Result<(), BoxError> {
    let kernel = kernel::path()?;
    let initramfs = assets::initramfs()?;
    let rootfs = assets::default_rootfs()?;
    let listener = VsockListener::bind(READY_PORT)?;
    let mut ours = Vec::new();
    let mut qemu = Vec::new();
    // One untimed run of each warms the page cache for both.
    for i in 0..=iterations {
        let a = boot_ours()?;
        let b = boot_qemu(&listener, cid, &kernel, &initramfs, &rootfs)?;
        eprintln!("run {i}: supermachine {a:?}, qemu {b:?}");
        if i > 0 {
            ours.push(a);
            qemu.push(b);
        }
    }
    println!("cold boot to agent-ready, {iterations} runs each, interleaved (ms)");
    println!("| VMM | min | median | max |");
    println!("| --- | --- | --- | --- |");
    for (name, v) in [("supermachine", &mut ours), ("qemu -M microvm", &mut qemu)] {
        v.sort();
        let ms = |d: Duration| format!("{:.0}", d.as_secs_f64() * 1e3);
        println!(
            "| {name} | {} | {} | {} |",
            ms(v[0]),
            ms(v[v.len() / 2]),
            ms(v[v.len() - 1])
        );
    }
    let ratio = ours[ours.len() / 2].as_secs_f64() / qemu[qemu.len() / 2].as_secs_f64();
    println!("median ratio supermachine / qemu: {ratio:.2}");
    Ok(())
}

fn boot_ours() -> Result<Duration, BoxError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    rt.block_on(async {
        let start = Instant::now();
        let vm = Vm::start(&Image::builtin(), &VmConfig::default()).await?;
        let took = start.elapsed();
        step("supermachine ready");
        vm.stop().await?;
        step("supermachine down");
        Ok(took)
    })
}

fn boot_qemu(
    listener: &VsockListener,
    cid: u32,
    kernel: &std::path::Path,
    initramfs: &std::path::Path,
    rootfs: &std::path::Path,
) -> Result<Duration, BoxError> {
    let start = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args([
            "-M",
            "microvm,acpi=off,isa-serial=on,rtc=off",
            "-enable-kvm",
            "-cpu",
            "host",
        ])
        .args([
            "-smp",
            "1",
            "-m",
            "256",
            "-nodefaults",
            "-no-user-config",
            "-nographic",
            "-no-reboot",
        ])
        .args(["-serial", "file:/dev/null"])
        .arg("-kernel")
        .arg(kernel)
        .arg("-initrd")
        .arg(initramfs)
        .args([
            "-append",
            "console=ttyS0 reboot=k panic=-1 8250.nr_uarts=1 quiet supermachine.root=/dev/vda",
        ])
        .arg("-drive")
        .arg(format!(
            "id=root,file={},format=raw,if=none,readonly=on",
            rootfs.display()
        ))
        .args(["-device", "virtio-blk-device,drive=root"])
        .args(["-device", &format!("vhost-vsock-device,guest-cid={cid}")])
        .args(["-device", "virtio-rng-device"])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("starting qemu-system-x86_64: {e}"))?;
    let ready = listener.accept_ready(Duration::from_secs(60));
    let took = start.elapsed();
    step("qemu ready");
    let _ = child.kill();
    let output = child.wait_with_output()?;
    step("qemu down");
    match ready {
        Ok(()) => Ok(took),
        Err(e) => Err(format!(
            "QEMU's guest never reported ready ({e}): {}",
            String::from_utf8_lossy(&output.stderr)
        )
        .into()),
    }
}

/// A host AF_VSOCK listener: where QEMU's guest (vhost-vsock) says Ready.
struct VsockListener(OwnedFd);

impl VsockListener {
    fn bind(port: u32) -> std::io::Result<Self> {
        use std::os::fd::AsRawFd;
        // SAFETY: socket takes plain integers.
        let raw =
            unsafe { libc::socket(libc::AF_VSOCK, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
        if raw < 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: a new fd that nothing else owns.
        let fd = unsafe { OwnedFd::from_raw_fd(raw) };
        // SAFETY: sockaddr_vm is plain data; all-zero is a valid value.
        let mut addr: libc::sockaddr_vm = unsafe { std::mem::zeroed() };
        addr.svm_family = libc::AF_VSOCK as libc::sa_family_t;
        addr.svm_cid = libc::VMADDR_CID_ANY;
        addr.svm_port = port;
        let len = std::mem::size_of::<libc::sockaddr_vm>() as libc::socklen_t;
        let addr_ptr = (&addr as *const libc::sockaddr_vm).cast();
        // SAFETY: `addr_ptr` points to a live sockaddr_vm of `len` bytes.
        if unsafe { libc::bind(fd.as_raw_fd(), addr_ptr, len) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        // SAFETY: listen takes plain integers.
        if unsafe { libc::listen(fd.as_raw_fd(), 16) } != 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok(VsockListener(fd))
    }

    fn accept_ready(&self, timeout: Duration) -> Result<(), BoxError> {
        use std::os::fd::AsRawFd;
        let mut pfd = libc::pollfd {
            fd: self.0.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as i32) };
        if n <= 0 {
            return Err("timed out".into());
        }
        // SAFETY: accept on a listening socket we own.
        let fd = unsafe {
            libc::accept4(
                self.0.as_raw_fd(),
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error().into());
        }
        // SAFETY: accept returned a new fd that we now own.
        let stream = std::os::unix::net::UnixStream::from(unsafe { OwnedFd::from_raw_fd(fd) });
        stream.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut stream = stream;
        let mut len = [0u8; 4];
        stream.read_exact(&mut len)?;
        let len = u32::from_le_bytes(len) as usize;
        if len > supermachine_protocol::MAX_FRAME_BODY {
            return Err(format!("a {len}-byte frame is not a Ready frame").into());
        }
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body)?;
        match supermachine_protocol::decode::<AgentMessage>(&body)? {
            AgentMessage::Ready { .. } => Ok(()),
            other => Err(format!("expected Ready, got {other:?}").into()),
        }
    }
}
