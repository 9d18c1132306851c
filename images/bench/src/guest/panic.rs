//! The panic handler: print the message and location, then end the VM with exit code 101.

use crate::{console, control};
use bench_core::exit_code;
use core::panic::PanicInfo;

#[panic_handler]
fn panic(info: &PanicInfo<'_>) -> ! {
    let message = info.message();
    match info.location() {
        Some(at) => console::print_line_forced(format_args!(
            "bench: panic at {}:{}:{}: {message}",
            at.file(),
            at.line(),
            at.column()
        )),
        None => console::print_line_forced(format_args!("bench: panic: {message}")),
    }
    control::exit(exit_code::PANIC)
}

/// The unwinder's personality routine. Nothing ever unwinds here (`panic = "abort"`), but the
/// prebuilt `alloc` library was compiled for unwinding and its unwind tables name this symbol,
/// which only `std` would otherwise provide. It is never called.
#[no_mangle]
extern "C" fn rust_eh_personality() {}

/// Resumes an unwind after a cleanup pad. Like `rust_eh_personality`, only the prebuilt `alloc`
/// names it (its landing pads end with a call to it); no unwind ever starts here, so reaching it
/// is a bug, and the VM ends as on a panic.
#[no_mangle]
extern "C" fn _Unwind_Resume() -> ! {
    console::print_line_forced(format_args!(
        "bench: _Unwind_Resume reached without an unwind"
    ));
    control::exit(exit_code::PANIC)
}
