//! Feeds arbitrary bytes to the migration stream decoder: it must return an error or
//! messages, never panic, hang or allocate beyond the frame limits.
//! Run with `cargo +nightly fuzz run wire_decoder` from `migrator/`.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = migrator::wire::decode_stream(data);
});
