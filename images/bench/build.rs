//! Link arguments for the guest binary: a static, non-PIE ELF laid out by `link.ld`.
//!
//! They go to the binary only (`rustc-link-arg-bins`), so the host-side unit tests of the library
//! still link as ordinary programs.

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").expect("cargo sets CARGO_MANIFEST_DIR");
    println!("cargo:rerun-if-changed=link.ld");
    println!("cargo:rerun-if-changed=build.rs");
    let script = format!("-Wl,-T,{dir}/link.ld");
    let args = [
        // No C runtime: `_start` in src/guest/start.rs is the entry, and nothing provides libc.
        "-nostartfiles",
        "-nostdlib",
        "-static",
        // The VMM loads segments at their link addresses; there is no relocation at load time.
        "-no-pie",
        &script,
        "-Wl,--build-id=none",
        // PT_LOAD alignment of 2 MiB: linux-loader's ELF loader rejects anything less, and it
        // costs no file space because link.ld keeps file offsets congruent to addresses.
        "-Wl,-z,max-page-size=0x200000",
    ];
    for arg in args {
        println!("cargo:rustc-link-arg-bins={arg}");
    }
}
