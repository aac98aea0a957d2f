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

pub const I8042_PORT: u64 = 0x64;
pub const I8042_RESET: u8 = 0xfe;
pub const POWER_PORT: u64 = power_port::PORT as u64;

/// Resolves a guest reset into [`Outcome::Panic`] when the kernel announced a
/// panic on the console first, else [`Outcome::Reboot`].
#[derive(Clone)]
pub struct ResetReporter {
    pub exit: ExitSender,
    pub panicked: Arc<AtomicBool>,
}

impl ResetReporter {
    pub fn reset(&self) {
        if self.panicked.load(Ordering::SeqCst) {
            self.exit.send(Outcome::Panic);
        } else {
            self.exit.send(Outcome::Reboot);
        }
    }
}

pub struct I8042 {
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

pub struct PowerPort {
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
