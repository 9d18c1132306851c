//! `memcpy`, `memmove`, `memset`, `memcmp` and `bcmp`: the compiler emits calls to them, and no
//! libc is linked. (The prebuilt `compiler_builtins` for this target leaves them out, and its
//! `mem` feature needs a nightly `-Zbuild-std`.)
//!
//! The copies and fills use `rep movsb` / `rep stosb` in inline assembly: fast on CPUs with
//! ERMSB, and immune to the compiler recognising a byte loop as `memcpy` and calling itself.
//! Every function relies on the direction flag being clear, as the SysV ABI requires between
//! calls (`_start` clears it, and `memmove` restores it).

use core::arch::asm;

/// # Safety
/// `src` must be readable and `dest` writable for `n` bytes, and the ranges must not overlap.
#[no_mangle]
pub unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees both ranges; `rep movsb` touches exactly `n` bytes of each,
    // forwards because DF is clear.
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") dest => _, inout("rsi") src => _,
             options(nostack, preserves_flags));
    }
    dest
}

/// # Safety
/// `src` must be readable and `dest` writable for `n` bytes; the ranges may overlap.
#[no_mangle]
pub unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize).wrapping_sub(src as usize) >= n {
        // `dest` is below `src`, or past the end of it: a forward copy reads every byte before
        // overwriting it.
        // SAFETY: as for `memcpy`; the forward order is safe for this overlap.
        return unsafe { memcpy(dest, src, n) };
    }
    // `dest` lies inside `src`'s range: copy backwards, from the last byte down.
    // SAFETY: the caller guarantees both ranges. With DF set, `rep movsb` walks down from the
    // last byte of each range (n > 0 here, since dest - src < n), and `cld` restores DF.
    unsafe {
        asm!("std", "rep movsb", "cld",
             inout("rcx") n => _, inout("rdi") dest.add(n - 1) => _, inout("rsi") src.add(n - 1) => _,
             options(nostack));
    }
    dest
}

/// # Safety
/// `dest` must be writable for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees the range; `rep stosb` stores exactly `n` bytes, forwards.
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") dest => _, in("al") c as u8,
             options(nostack, preserves_flags));
    }
    dest
}

/// # Safety
/// `a` and `b` must be readable for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: i < n, and the caller guarantees both ranges are readable.
        let (x, y) = unsafe { (*a.add(i), *b.add(i)) };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// # Safety
/// `a` and `b` must be readable for `n` bytes.
#[no_mangle]
pub unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as `memcmp`, whose result is a valid `bcmp` result.
    unsafe { memcmp(a, b, n) }
}
