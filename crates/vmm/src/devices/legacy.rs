//! The few legacy ports a microVM guest touches on its way down.
//!
//! * Port 0x64 (i8042 command): Linux resets the machine by writing 0xfe.
//! * The supermachine power port (`supermachine_protocol::power_port`): the
//!   agent says poweroff, reboot or boot-failed just before the guest stops.

use crate::bus::BusDevice;
use crate::outcome::{ExitSender, Outcome};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use supermachine_protocol::power_port;

/// The i8042 controller's command port.
pub const I8042_PORT: u64 = 0x64;
/// The i8042 command that pulses the CPU reset line (how `reboot=k` resets).
pub const I8042_RESET: u8 = 0xfe;
/// The power port's I/O address, as the protocol crate fixes it for the agent.
pub const POWER_PORT: u64 = power_port::PORT as u64;

/// Resolves a guest reset into [`Outcome::Panic`] when the kernel announced a
/// panic on the console first, else [`Outcome::Reboot`].
#[derive(Clone)]
pub struct ResetReporter {
    /// Where the outcome goes.
    pub exit: ExitSender,
    /// Set by the serial console once the kernel printed its panic banner.
    pub panicked: Arc<AtomicBool>,
}

impl ResetReporter {
    /// Reports a reset of the machine: a panic if one was announced, else a
    /// reboot. The VM ends either way; restarting is the host's choice.
    pub fn reset(&self) {
        if self.panicked.load(Ordering::SeqCst) {
            self.exit.send(Outcome::Panic);
        } else {
            self.exit.send(Outcome::Reboot);
        }
    }
}

/// Just enough of the i8042 keyboard controller for the guest's reset
/// command, and for its driver to find no controller at once.
pub struct I8042 {
    /// Where a reset goes.
    pub reporter: ResetReporter,
}

impl BusDevice for I8042 {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        // All ones: no keyboard controller here. Linux's i8042 driver then
        // gives up at once; a status that looks like a live controller makes
        // it wait out its probe timeouts (hundreds of ms of boot time).
        data.fill(0xff);
    }
    fn write(&mut self, _offset: u64, data: &[u8]) {
        if data.first() == Some(&I8042_RESET) {
            self.reporter.reset();
        }
    }
}

/// The port the agent writes one byte to (`power_port::POWER_OFF`,
/// `REBOOT` or `BOOT_FAILED`) to say how the guest ends; reads as zero.
pub struct PowerPort {
    /// Where the outcome goes.
    pub reporter: ResetReporter,
}

impl BusDevice for PowerPort {
    fn read(&mut self, _offset: u64, data: &mut [u8]) {
        data.fill(0);
    }
    fn write(&mut self, _offset: u64, data: &[u8]) {
        match data.first() {
            Some(&power_port::POWER_OFF) => self.reporter.exit.send(Outcome::PowerOff),
            Some(&power_port::REBOOT) => self.reporter.reset(),
            Some(&power_port::BOOT_FAILED) => self.reporter.exit.send(Outcome::BootFailed),
            _ => {}
        }
    }
}
