//! The 16550 console. Linux and PVH guests reach it by port I/O at 0x3f8; bench guests reach
//! the same register file through MMIO, since port I/O from ring 3 ends the VM on PVM hosts.
use std::io::Write;

use vm_superio::serial::NoEvents;
use vm_superio::{Serial, Trigger};
use vmm_sys_util::eventfd::EventFd;

/// The PC's first serial port.
pub const COM1_PORT: u16 = 0x3f8;
/// Its legacy interrupt line.
pub const COM1_IRQ: u32 = 4;
/// Registers in a 16550.
pub const REGISTERS: u64 = 8;

/// How the UART raises its interrupt.
pub enum Irq {
    /// Bench guests poll; there is nothing to raise.
    None,
    /// An eventfd wired to an in-kernel irqchip line with `KVM_IRQFD`.
    EventFd(EventFd),
}

impl Trigger for Irq {
    type E = std::io::Error;

    fn trigger(&self) -> Result<(), Self::E> {
        match self {
            Irq::None => Ok(()),
            Irq::EventFd(evt) => evt.write(1),
        }
    }
}

pub type Uart = Serial<Irq, NoEvents, Box<dyn Write + Send>>;

/// Builds the console UART writing guest output to `out`.
pub fn new(irq: Irq, out: Box<dyn Write + Send>) -> Uart {
    Serial::new(irq, out)
}

/// Reads register `offset`; offsets outside the register file read as 0.
pub fn read(uart: &mut Uart, offset: u64) -> u8 {
    match u8::try_from(offset) {
        Ok(o) if u64::from(o) < REGISTERS => uart.read(o),
        _ => 0,
    }
}

/// Writes register `offset`; writes outside the register file are ignored.
pub fn write(uart: &mut Uart, offset: u64, value: u8) {
    if let Ok(o) = u8::try_from(offset) {
        if u64::from(o) < REGISTERS {
            if let Err(e) = uart.write(o, value) {
                tracing::warn!("console write failed: {e}");
            }
        }
    }
}

/// The UART's registers and receive FIFO, as saved in a VM state.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SerialSnapshot {
    pub registers: [u8; 9],
    pub in_buffer: Vec<u8>,
}

impl From<&vm_superio::serial::SerialState> for SerialSnapshot {
    fn from(s: &vm_superio::serial::SerialState) -> Self {
        Self {
            registers: [
                s.baud_divisor_low,
                s.baud_divisor_high,
                s.interrupt_enable,
                s.interrupt_identification,
                s.line_control,
                s.line_status,
                s.modem_control,
                s.modem_status,
                s.scratch,
            ],
            in_buffer: s.in_buffer.clone(),
        }
    }
}

impl From<&SerialSnapshot> for vm_superio::serial::SerialState {
    fn from(s: &SerialSnapshot) -> Self {
        let r = s.registers;
        Self {
            baud_divisor_low: r[0],
            baud_divisor_high: r[1],
            interrupt_enable: r[2],
            interrupt_identification: r[3],
            line_control: r[4],
            line_status: r[5],
            modem_control: r[6],
            modem_status: r[7],
            scratch: r[8],
            in_buffer: s.in_buffer.clone(),
        }
    }
}

/// Rebuilds the UART from saved state; a FIFO longer than the hardware's is an error.
pub fn restore(
    snapshot: &SerialSnapshot,
    irq: Irq,
    out: Box<dyn Write + Send>,
) -> Result<Uart, vm_superio::serial::Error<std::io::Error>> {
    let state = vm_superio::serial::SerialState::from(snapshot);
    Serial::from_state(&state, irq, NoEvents, out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::{Arc, Mutex};

    #[derive(Clone, Default)]
    struct Sink(Arc<Mutex<Vec<u8>>>);
    impl Write for Sink {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn transmitted_bytes_reach_the_sink_and_lsr_reports_empty() {
        let sink = Sink::default();
        let mut uart = new(Irq::None, Box::new(sink.clone()));
        for b in b"hi\n" {
            write(&mut uart, bench_abi::uart::THR, *b);
        }
        assert_eq!(&*sink.0.lock().unwrap(), b"hi\n");
        assert_ne!(
            read(&mut uart, bench_abi::uart::LSR) & bench_abi::uart::LSR_THR_EMPTY,
            0
        );
        assert_eq!(read(&mut uart, 99), 0);
        write(&mut uart, 300, 1);
    }

    #[test]
    fn state_survives_a_snapshot() {
        let mut uart = new(Irq::None, Box::new(std::io::sink()));
        write(&mut uart, 7, 0x5a); // scratch register
        write(&mut uart, 3, 0x03); // 8N1
        let snap = SerialSnapshot::from(&uart.state());
        let mut again = restore(&snap, Irq::None, Box::new(std::io::sink())).unwrap();
        assert_eq!(read(&mut again, 7), 0x5a);
        assert_eq!(SerialSnapshot::from(&again.state()), snap);
        let bad = SerialSnapshot {
            in_buffer: vec![0; 1000],
            ..snap
        };
        assert!(restore(&bad, Irq::None, Box::new(std::io::sink())).is_err());
    }
}
