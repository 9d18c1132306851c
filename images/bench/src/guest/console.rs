//! The console: the VMM's 16550 UART, reached through MMIO.
//!
//! Output is polled (wait for THR empty, write THR); every byte costs two MMIO exits, which is
//! fine for a few lines a second. A lock keeps vCPUs from interleaving their lines.

use bench_abi::{uart, CONSOLE_BASE};
use bench_core::sync::SpinLock;
use core::fmt::{self, Write};
use core::hint::spin_loop;
use core::ptr::{read_volatile, with_exposed_provenance_mut, write_volatile};
use core::sync::atomic::{AtomicU64, Ordering};

/// The UART's base address: the ABI default until vCPU 0 reads the boot-info page, so that even
/// a complaint about a bad boot-info page can be printed.
static BASE: AtomicU64 = AtomicU64::new(CONSOLE_BASE);
/// Held while a line is written.
static LINE: SpinLock<()> = SpinLock::new(());

/// Uses the UART at `base` (validated to lie in the MMIO window) from now on.
pub fn init(base: u64) {
    BASE.store(base, Ordering::Relaxed);
}

/// Prints `args` and a newline as one uninterrupted line.
pub fn print_line(args: fmt::Arguments<'_>) {
    let _line = LINE.lock();
    write_line(args);
}

/// Prints a line even if the lock stays taken: the panic handler uses it, and the panicking vCPU
/// may be the one holding the lock (a panic inside a `Display` implementation, say).
pub fn print_line_forced(args: fmt::Arguments<'_>) {
    let _line = (0..10_000_000).find_map(|_| LINE.try_lock());
    write_line(args);
}

fn write_line(args: fmt::Arguments<'_>) {
    let mut uart = Uart {
        base: BASE.load(Ordering::Relaxed),
    };
    // Writing to the UART cannot fail; a formatting error just ends the line early.
    let _ = uart.write_fmt(args);
    let _ = uart.write_str("\n");
}

struct Uart {
    base: u64,
}

impl Uart {
    fn put(&mut self, byte: u8) {
        let lsr = with_exposed_provenance_mut::<u8>((self.base + uart::LSR) as usize);
        let thr = with_exposed_provenance_mut::<u8>((self.base + uart::THR) as usize);
        // SAFETY: `base` lies in the MMIO window (checked against the ABI when the boot-info page
        // was validated), which the VMM identity-maps and emulates; it aliases no Rust object.
        // Volatile single-byte accesses are what a 16550 register file expects.
        unsafe {
            while read_volatile(lsr) & uart::LSR_THR_EMPTY == 0 {
                spin_loop();
            }
            write_volatile(thr, byte);
        }
    }
}

impl Write for Uart {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        s.bytes().for_each(|b| self.put(b));
        Ok(())
    }
}

/// Shows bytes as text, with U+FFFD for anything that is not UTF-8.
pub struct Lossy<'a>(pub &'a [u8]);

impl fmt::Display for Lossy<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for chunk in self.0.utf8_chunks() {
            f.write_str(chunk.valid())?;
            if !chunk.invalid().is_empty() {
                f.write_str("\u{fffd}")?;
            }
        }
        Ok(())
    }
}

/// Prints one line to the console, like `std::println!`.
macro_rules! println {
    ($($arg:tt)*) => {
        $crate::console::print_line(format_args!($($arg)*))
    };
}
