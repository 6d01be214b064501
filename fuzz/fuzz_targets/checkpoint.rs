//! Checkpoints: any bytes given to the engine's checkpoint reader (framing, header JSON, the
//! model inside, the optimizer's moments).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|bytes: &[u8]| {
    let _ = cnn::checkpoint::from_bytes(bytes);
});
