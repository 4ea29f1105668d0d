//! Record batch validation and the offset patching the read path applies.
#![no_main]

use libfuzzer_sys::fuzz_target;
use shoal_storage::batch;

fuzz_target!(|data: &[u8]| {
    if batch::validate(data, 1 << 20).is_ok() {
        let mut copy = data.to_vec();
        batch::patch_base_offsets(&mut copy, 42).expect("validated batches can be patched");
        assert!(batch::validate(&copy, 1 << 20).is_ok(), "patching keeps batches valid");
    }
});
