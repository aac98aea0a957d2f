//! One thread per vCPU, each blocked in KVM_RUN until the guest needs the
//! VMM (port I/O, MMIO), the machine ends, or the VMM pauses it (see
//! [`crate::pause`]).

use crate::bus::Bus;
use crate::devices::legacy::ResetReporter;
use crate::outcome::Outcome;
use crate::pause::{ParkedVcpu, PauseGate};
use kvm_ioctls::{VcpuExit, VcpuFd};

const KVM_SYSTEM_EVENT_SHUTDOWN: u32 = 1;
const KVM_SYSTEM_EVENT_RESET: u32 = 2;
const KVM_SYSTEM_EVENT_CRASH: u32 = 3;

/// One vCPU and everything its thread needs to serve the guest's exits;
/// [`run`](Self::run) consumes it on that thread.
pub struct VcpuRunner {
    /// The vCPU's index, which is its KVM vCPU id and APIC id.
    pub id: u8,
    /// The KVM vCPU, set up for boot or restored from a snapshot.
    pub fd: VcpuFd,
    /// Port I/O devices (a clone of the bus every vCPU shares).
    pub pio: Bus,
    /// MMIO devices: the virtio-mmio transports.
    pub mmio: Bus,
    /// Where a triple fault or a reset request goes.
    pub reset: ResetReporter,
    /// Where the thread parks when the VMM pauses the machine.
    pub gate: PauseGate,
}

impl VcpuRunner {
    /// Where the guest was when it triple-faulted, for the worker's log.
    fn triple_fault_report(&self) -> String {
        let at = match (self.fd.get_regs(), self.fd.get_sregs()) {
            (Ok(r), Ok(s)) => format!(
                " at RIP {:#x} (RSP {:#x}, CR2 {:#x}, CR3 {:#x})",
                r.rip, r.rsp, s.cr2, s.cr3
            ),
            _ => String::new(),
        };
        format!("the guest triple-faulted on vCPU {}{at}", self.id)
    }

    /// Stays off the CPU until the VMM resumes the machine, serving its
    /// requests for this vCPU's state meanwhile.
    fn park(&mut self) {
        // KVM completes an I/O or MMIO exit's instruction only on the next
        // KVM_RUN; one with immediate_exit set does that and returns at once,
        // so the state saved below is never mid-instruction.
        self.fd.set_kvm_immediate_exit(1);
        let _ = self.fd.run();
        self.fd.set_kvm_immediate_exit(0);
        self.gate.park(ParkedVcpu {
            id: self.id,
            fd: &self.fd,
        });
    }

    /// Runs until the VM ends; the outcome goes to the exit channel.
    pub fn run(mut self) {
        self.gate.register_current_thread();
        self.run_until_exit();
        self.gate.unregister_current_thread();
    }

    fn run_until_exit(&mut self) {
        let exit = self.reset.exit.clone();
        loop {
            if self.gate.pause_requested() {
                self.park();
                continue;
            }
            match self.fd.run() {
                Ok(VcpuExit::IoOut(port, data)) => {
                    self.pio.write(port as u64, data);
                }
                Ok(VcpuExit::IoIn(port, data)) => {
                    self.pio.read(port as u64, data);
                }
                Ok(VcpuExit::MmioRead(addr, data)) => {
                    self.mmio.read(addr, data);
                }
                Ok(VcpuExit::MmioWrite(addr, data)) => {
                    self.mmio.write(addr, data);
                }
                Ok(VcpuExit::Hlt) => {}
                Ok(VcpuExit::Shutdown) => {
                    // A triple fault. Guests reboot through the i8042 port
                    // (`reboot=k`), so this is a crash unless a panic came first.
                    if self
                        .reset
                        .panicked
                        .load(std::sync::atomic::Ordering::SeqCst)
                    {
                        self.reset.reset();
                    } else {
                        exit.send(Outcome::Crash(self.triple_fault_report()));
                    }
                    return;
                }
                Ok(VcpuExit::SystemEvent(kind, _)) => {
                    match kind {
                        KVM_SYSTEM_EVENT_SHUTDOWN => exit.send(Outcome::PowerOff),
                        KVM_SYSTEM_EVENT_RESET => self.reset.reset(),
                        KVM_SYSTEM_EVENT_CRASH => exit.send(Outcome::Panic),
                        other => exit.send(Outcome::Crash(format!("unknown system event {other}"))),
                    }
                    return;
                }
                Ok(VcpuExit::FailEntry(reason, cpu)) => {
                    exit.send(Outcome::Crash(format!(
                        "vCPU {} failed to enter the guest (hardware reason {reason:#x}, cpu {cpu})",
                        self.id
                    )));
                    return;
                }
                Ok(VcpuExit::InternalError) => {
                    exit.send(Outcome::Crash(format!(
                        "KVM internal error on vCPU {}",
                        self.id
                    )));
                    return;
                }
                Ok(other) => {
                    crate::limited!(debug, "vCPU {}: unhandled exit {other:?}", self.id);
                }
                // EINTR: the pause kick (or any signal); the loop head decides.
                Err(e) if e.errno() == libc::EINTR || e.errno() == libc::EAGAIN => {}
                Err(e) => {
                    exit.send(Outcome::Crash(format!("KVM_RUN on vCPU {}: {e}", self.id)));
                    return;
                }
            }
        }
    }
}
