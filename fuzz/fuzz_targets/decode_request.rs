//! Request frames as a connection reads them: header parsing, version checks, body decoding.
#![no_main]

use libfuzzer_sys::fuzz_target;

/// The agent's allocator: frames claiming billions of array elements must cost address
/// space only, as in the `shoal` binary.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

fuzz_target!(|data: &[u8]| {
    let _ = shoal_agent::decode_frame(bytes::Bytes::copy_from_slice(data));
});
