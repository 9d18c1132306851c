//! The entry point and the vCPU rendezvous.
//!
//! Every vCPU enters `_start` at the same time, in 64-bit CPL3 with RDI = its boot-info page and
//! RSP = the 16-byte-aligned top of its own stack. vCPU 0 validates its page, sets up the shared
//! state (devices, command line, allocator, workload memory) and publishes it; the others spin
//! until it is published. Then every vCPU runs its share of the workload.

use crate::{console, control, heap, workload};
use bench_abi::{control::BOOT_DONE, BootInfo};
use bench_core::sync::InitOnce;
use bench_core::{bootinfo, cmdline, exit_code, MIB};
use core::arch::global_asm;

global_asm!(
    ".pushsection .text._start, \"ax\", @progbits",
    ".globl _start",
    ".type _start, @function",
    "_start:",
    // The SysV ABI requires DF clear at calls, and the entry state is the VMM's to choose.
    "    cld",
    // RSP is 16-byte aligned by contract; enforce it so a VMM slip cannot misalign SSE spills.
    "    and rsp, -16",
    // End frame-pointer chains here, for debuggers and backtraces.
    "    xor ebp, ebp",
    // `call` pushes 8 bytes, so `vcpu_main` starts with RSP = 8 (mod 16), as SysV requires.
    // RDI, the boot-info page, is its first argument.
    "    call {main}",
    // `vcpu_main` never returns; should it, park rather than run off into whatever follows.
    "2:  pause",
    "    jmp 2b",
    ".size _start, . - _start",
    ".popsection",
    main = sym vcpu_main,
);

/// What vCPU 0 sets up for everyone.
static SHARED: InitOnce<workload::Shared> = InitOnce::new();

extern "C" fn vcpu_main(info: *const BootInfo) -> ! {
    // SAFETY: by the bench ABI, RDI holds the address of this vCPU's boot-info page: mapped,
    // aligned, and not written by anyone while the guest runs.
    let info = unsafe { &*info };
    if let Err(e) = bootinfo::validate(info) {
        println!("bench: bad boot-info page at {:p}: {e}", info);
        control::exit(exit_code::BAD_BOOT_INFO);
    }
    let shared = if info.vcpu_index == 0 {
        boot(info)
    } else {
        SHARED.wait()
    };
    workload::run(shared, info.vcpu_index)
}

/// vCPU 0's setup. Exits the VM on a bad command line.
fn boot(info: &BootInfo) -> &'static workload::Shared {
    console::init(info.console_base);
    control::init(info.control_base);
    // `validate` checked the length, so this is the whole command line.
    let line = info.cmdline().unwrap_or_default();
    println!(
        "bench: booted vcpus={} ram={}MiB cmdline=\"{}\"",
        info.vcpu_count,
        info.ram_size / MIB,
        console::Lossy(line)
    );
    let config = match cmdline::parse(line) {
        Ok(config) => config,
        Err(e) => {
            println!("bench: bad command line: {e}");
            control::exit(exit_code::BAD_CMDLINE);
        }
    };
    println!("bench: running {config}");
    heap::init(info.free_regions());
    let shared = match workload::prepare(config, info.vcpu_count, info.virtio_devices()) {
        Ok(shared) => shared,
        Err(e) => {
            println!("bench: cannot run {}: {e}", config.workload.name());
            control::exit(exit_code::BAD_CMDLINE);
        }
    };
    let Ok(shared) = SHARED.set(shared) else {
        panic!("shared state published twice");
    };
    control::boot_mark(BOOT_DONE);
    shared
}
