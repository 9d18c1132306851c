//! Routes guest port I/O and MMIO accesses to the device models.
use std::sync::{Arc, Mutex};

use bench_abi::{CONSOLE_BASE, CONTROL_BASE, VIRTIO_BASE, VIRTIO_STRIDE};

use super::control::Control;
use super::event_loop::EventHandler;
use super::event_loop::{EventLoop, EventLoopError};
use super::serial::{self, Uart, COM1_PORT};
use super::virtio::block::{Block, BlockError};
use super::virtio::net::Net;

/// Exit counters, by reason, for `status`.
#[derive(Debug, Default, Clone, Copy, serde::Serialize)]
pub struct ExitCounts {
    pub mmio_read: u64,
    pub mmio_write: u64,
    pub io_in: u64,
    pub io_out: u64,
    pub unhandled: u64,
}

/// A virtio device on the bus.
enum Virtio<'a> {
    Net(&'a Net),
    Block(&'a Block),
}

pub struct Devices {
    console: Mutex<Uart>,
    pub control: Control,
    /// virtio-net devices; device `i` is at `VIRTIO_BASE + i * VIRTIO_STRIDE`.
    net: Vec<Arc<Net>>,
    /// virtio-blk devices, in the windows after the network devices'.
    disks: Vec<Arc<Block>>,
    /// Runs the virtio devices' data path; stops when the devices go.
    _events: Option<EventLoop>,
}

fn within(addr: u64, base: u64, len: u64) -> Option<u64> {
    addr.checked_sub(base).filter(|&off| off < len)
}

impl Devices {
    pub fn new(console: Uart, control: Control) -> Arc<Self> {
        Arc::new(Self {
            console: Mutex::new(console),
            control,
            net: Vec::new(),
            disks: Vec::new(),
            _events: None,
        })
    }

    /// The devices with virtio-net devices `net` and virtio-blk devices `disks` (in that
    /// order of MMIO windows), whose data path starts on the event loop.
    pub fn with_virtio(
        console: Uart,
        control: Control,
        net: Vec<Arc<Net>>,
        disks: Vec<Arc<Block>>,
    ) -> Result<Arc<Self>, EventLoopError> {
        let handlers: Vec<Arc<dyn EventHandler>> = net
            .iter()
            .map(|n| n.clone() as Arc<dyn EventHandler>)
            .chain(disks.iter().map(|d| d.clone() as Arc<dyn EventHandler>))
            .collect();
        let events = match handlers.is_empty() {
            true => None,
            false => Some(EventLoop::start(handlers)?),
        };
        Ok(Arc::new(Self {
            console: Mutex::new(console),
            control,
            net,
            disks,
            _events: events,
        }))
    }

    /// The virtio-blk devices, in address order.
    pub fn disks(&self) -> &[Arc<Block>] {
        &self.disks
    }

    /// The virtio-net devices, in address order.
    pub fn net(&self) -> &[Arc<Net>] {
        &self.net
    }

    /// The virtio device whose window holds `addr`, and the offset in it.
    fn virtio_at(&self, addr: u64) -> Option<(Virtio<'_>, u64)> {
        let off = addr.checked_sub(VIRTIO_BASE)?;
        let index = usize::try_from(off / VIRTIO_STRIDE).ok()?;
        let dev = match self.net.get(index) {
            Some(n) => Virtio::Net(n),
            None => Virtio::Block(self.disks.get(index - self.net.len())?),
        };
        Some((dev, off % VIRTIO_STRIDE))
    }

    /// Lets go of every disk image's lock (the paused VM is moving to another `vmm`).
    pub fn release_disk_images(&self) {
        self.disks.iter().for_each(|d| d.release_image());
    }

    /// Takes every disk image's lock back; the first one another VM holds is the error.
    pub fn retake_disk_images(&self) -> Result<(), BlockError> {
        self.disks.iter().try_for_each(|d| d.retake_image())
    }

    /// Stops the devices' data path from touching guest memory (the VM pauses).
    pub fn pause_io(&self) {
        self.net.iter().for_each(|n| n.pause());
        self.disks.iter().for_each(|d| d.pause());
    }

    /// Lets the devices' data path run again.
    pub fn resume_io(&self) {
        self.net.iter().for_each(|n| n.resume());
        self.disks.iter().for_each(|d| d.resume());
    }

    fn console(&self) -> std::sync::MutexGuard<'_, Uart> {
        self.console.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Returns false for an address no device claims (the read then returns zeros).
    pub fn mmio_read(&self, addr: u64, data: &mut [u8]) -> bool {
        data.fill(0);
        if let Some(off) = within(addr, CONSOLE_BASE, serial::REGISTERS) {
            if let Some(b) = data.first_mut() {
                *b = serial::read(&mut self.console(), off);
            }
        } else if let Some(off) = within(addr, CONTROL_BASE, bench_abi::control::SIZE) {
            self.control.read(off, data);
        } else if let Some((dev, off)) = self.virtio_at(addr) {
            match dev {
                Virtio::Net(n) => n.mmio_read(off, data),
                Virtio::Block(b) => b.mmio_read(off, data),
            }
        } else {
            return false;
        }
        true
    }

    pub fn mmio_write(&self, addr: u64, data: &[u8]) -> bool {
        if let Some(off) = within(addr, CONSOLE_BASE, serial::REGISTERS) {
            if let Some(&b) = data.first() {
                serial::write(&mut self.console(), off, b);
            }
        } else if let Some(off) = within(addr, CONTROL_BASE, bench_abi::control::SIZE) {
            self.control.write(off, data);
        } else if let Some((dev, off)) = self.virtio_at(addr) {
            match dev {
                Virtio::Net(n) => n.mmio_write(off, data),
                Virtio::Block(b) => b.mmio_write(off, data),
            }
        } else {
            return false;
        }
        true
    }

    pub fn pio_read(&self, port: u16, data: &mut [u8]) -> bool {
        data.fill(0);
        match within(u64::from(port), u64::from(COM1_PORT), serial::REGISTERS) {
            Some(off) => {
                if let Some(b) = data.first_mut() {
                    *b = serial::read(&mut self.console(), off);
                }
                true
            }
            // Linux probes many legacy ports; absent hardware reads as all ones on a PC bus.
            None => {
                data.fill(0xff);
                false
            }
        }
    }

    pub fn pio_write(&self, port: u16, data: &[u8]) -> bool {
        match within(u64::from(port), u64::from(COM1_PORT), serial::REGISTERS) {
            Some(off) => {
                if let Some(&b) = data.first() {
                    serial::write(&mut self.console(), off, b);
                }
                true
            }
            None => false,
        }
    }

    /// The console UART's state, for a snapshot.
    pub fn serial_snapshot(&self) -> super::serial::SerialSnapshot {
        super::serial::SerialSnapshot::from(&self.console().state())
    }

    /// Flushes console output, e.g. before the process exits.
    pub fn flush_console(&self) {
        use std::io::Write;
        let _ = self.console().writer_mut().flush();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::devices::boot_timer::BootTimer;
    use crate::devices::serial::Irq;
    use crate::vstate::run_control::RunControl;

    fn devices() -> Arc<Devices> {
        let run = Arc::new(RunControl::new(1, 7));
        let control = Control::new(run, BootTimer::new(std::time::Instant::now()));
        Devices::new(serial::new(Irq::None, Box::new(std::io::sink())), control)
    }

    #[test]
    fn routes_by_address() {
        let d = devices();
        let mut b = [0u8; 8];
        assert!(d.mmio_read(CONTROL_BASE + bench_abi::control::CLOCK_NS, &mut b));
        assert_eq!(u64::from_le_bytes(b), 7);
        let mut lsr = [0u8; 1];
        assert!(d.mmio_read(CONSOLE_BASE + bench_abi::uart::LSR, &mut lsr));
        assert_ne!(lsr[0] & bench_abi::uart::LSR_THR_EMPTY, 0);
        assert!(d.pio_read(COM1_PORT + 5, &mut lsr));
        assert!(!d.mmio_read(0xdead_0000, &mut b));
        assert_eq!(b, [0; 8]);
        assert!(!d.pio_read(0x61, &mut lsr));
        assert_eq!(lsr, [0xff]);
    }
}
