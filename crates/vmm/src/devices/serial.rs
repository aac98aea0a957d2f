//! The 8250 UART on COM1: the guest's console. Everything the guest prints
//! goes to the serial log file, under its cap (see `capped_log`), and
//! optionally to the worker's log; the stream is watched for the kernel's
//! panic banner so a later reset is reported as a panic rather than a
//! reboot.

use crate::bus::BusDevice;
use crate::capped_log::{CappedLog, StderrLog};
use serde::{Deserialize, Serialize};
use std::io::{self, BufWriter, Write};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

const PANIC_BANNER: &[u8] = b"Kernel panic - not syncing";

/// Raises the UART's interrupt line through a KVM irqfd.
pub struct IrqTrigger(pub EventFd);

impl Trigger for IrqTrigger {
    type E = io::Error;
    fn trigger(&self) -> io::Result<()> {
        self.0.write(1)
    }
}

/// Where console bytes go.
pub struct ConsoleSink {
    log: Option<BufWriter<CappedLog>>,
    echo: bool,
    matched: usize,
    panicked: Arc<AtomicBool>,
}

impl ConsoleSink {
    /// Console output goes to `log` (if any) and, with `echo`, to the
    /// worker's own log; `panicked` is set when the kernel's panic banner goes
    /// by.
    pub fn new(log: Option<CappedLog>, echo: bool, panicked: Arc<AtomicBool>) -> Self {
        ConsoleSink {
            log: log.map(BufWriter::new),
            echo,
            matched: 0,
            panicked,
        }
    }

    fn scan(&mut self, buf: &[u8]) {
        for &b in buf {
            // The banner has no repeated prefix, so a mismatch restarts the match.
            if b == PANIC_BANNER[self.matched] {
                self.matched += 1;
                if self.matched == PANIC_BANNER.len() {
                    self.panicked.store(true, Ordering::SeqCst);
                    self.matched = 0;
                }
            } else {
                self.matched = usize::from(b == PANIC_BANNER[0]);
            }
        }
    }
}

impl Write for ConsoleSink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        self.scan(buf);
        if let Some(log) = &mut self.log {
            // Line-buffered: the guest writes one byte per port access, and a
            // write(2) per byte is a real cost. A full disk must not stop the
            // guest, so console output is best effort.
            let _ = log.write_all(buf);
            if buf.contains(&b'\n') {
                let _ = log.flush();
            }
        }
        if self.echo {
            let _ = StderrLog.write_all(buf);
        }
        Ok(buf.len())
    }
    fn flush(&mut self) -> io::Result<()> {
        match &mut self.log {
            Some(log) => log.flush(),
            None => Ok(()),
        }
    }
}

/// The 8250 UART's registers and unread input, for a snapshot.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SerialState {
    /// Divisor latch, low byte.
    pub baud_divisor_low: u8,
    /// Divisor latch, high byte.
    pub baud_divisor_high: u8,
    /// Interrupt enable register.
    pub interrupt_enable: u8,
    /// Interrupt identification register.
    pub interrupt_identification: u8,
    /// Line control register.
    pub line_control: u8,
    /// Line status register.
    pub line_status: u8,
    /// Modem control register.
    pub modem_control: u8,
    /// Modem status register.
    pub modem_status: u8,
    /// Scratch register.
    pub scratch: u8,
    /// Input the guest has not read yet.
    pub in_buffer: Vec<u8>,
}

impl From<&SerialState> for vm_superio::serial::SerialState {
    fn from(s: &SerialState) -> Self {
        vm_superio::serial::SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer.clone(),
        }
    }
}

impl From<vm_superio::serial::SerialState> for SerialState {
    fn from(s: vm_superio::serial::SerialState) -> Self {
        SerialState {
            baud_divisor_low: s.baud_divisor_low,
            baud_divisor_high: s.baud_divisor_high,
            interrupt_enable: s.interrupt_enable,
            interrupt_identification: s.interrupt_identification,
            line_control: s.line_control,
            line_status: s.line_status,
            modem_control: s.modem_control,
            modem_status: s.modem_status,
            scratch: s.scratch,
            in_buffer: s.in_buffer,
        }
    }
}

/// A saved UART state vm-superio refuses.
#[derive(Debug, thiserror::Error)]
#[error("serial port: {0:?}")]
pub struct SerialRestoreError(vm_superio::serial::Error<io::Error>);

/// COM1 on the port I/O bus: vm-superio's 8250 wired to the guest's
/// interrupt line and the console sink.
pub struct SerialDevice(pub Serial<IrqTrigger, NoEvents, ConsoleSink>);

impl SerialDevice {
    /// UART registers and pending input, for a snapshot.
    pub fn save(&self) -> SerialState {
        self.0.state().into()
    }

    /// The UART as it was saved, writing to a new sink.
    pub fn restore(
        state: &SerialState,
        irq: IrqTrigger,
        sink: ConsoleSink,
    ) -> Result<Self, SerialRestoreError> {
        Serial::from_state(&state.into(), irq, NoEvents, sink)
            .map(SerialDevice)
            .map_err(SerialRestoreError)
    }
}

impl BusDevice for SerialDevice {
    fn read(&mut self, offset: u64, data: &mut [u8]) {
        if let Some(b) = data.first_mut() {
            *b = self.0.read(offset as u8);
        }
    }
    fn write(&mut self, offset: u64, data: &[u8]) {
        if let Some(b) = data.first() {
            if let Err(e) = self.0.write(offset as u8, *b) {
                crate::limited!(debug, "serial write: {e:?}");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn detects_the_panic_banner_across_writes() {
        let flag = Arc::new(AtomicBool::new(false));
        let mut sink = ConsoleSink::new(None, false, flag.clone());
        sink.write_all(b"[ 1.0] KKernel pan").unwrap();
        assert!(!flag.load(Ordering::SeqCst));
        sink.write_all(b"ic - not syncing: Attempted to kill init!")
            .unwrap();
        assert!(flag.load(Ordering::SeqCst));
    }

    #[test]
    fn ordinary_output_is_not_a_panic() {
        let flag = Arc::new(AtomicBool::new(false));
        let mut sink = ConsoleSink::new(None, false, flag.clone());
        sink.write_all(b"Kernel panic test skipped - not syncing anything")
            .unwrap();
        assert!(!flag.load(Ordering::SeqCst));
    }

    #[test]
    fn a_flooding_guest_cannot_grow_the_serial_log_past_its_cap() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("serial.log");
        let cap = 64 << 10;
        let log = CappedLog::new(crate::files::open_log(&path).unwrap(), cap).unwrap();
        let mut sink = ConsoleSink::new(Some(log), false, Arc::new(AtomicBool::new(false)));
        sink.write_all(b"Linux version 6.1\n").unwrap();
        for i in 0..20_000 {
            sink.write_all(format!("spam {i:05} spam spam spam spam\n").as_bytes())
                .unwrap();
        }
        sink.flush().unwrap();
        let kept = std::fs::read(&path).unwrap();
        assert!(
            kept.len() as u64 <= cap + crate::capped_log::MARKER_LEN,
            "{} bytes kept",
            kept.len()
        );
        assert!(kept.starts_with(b"Linux version 6.1\n"), "the head is kept");
        assert!(
            kept.ends_with(b"spam 19999 spam spam spam spam\n"),
            "so is the latest"
        );
        assert!(String::from_utf8_lossy(&kept).contains("bytes dropped here"));
    }
}
