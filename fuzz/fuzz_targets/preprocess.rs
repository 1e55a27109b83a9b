//! bytes → normalised tensor: any input must give a tensor of finite values or a typed error,
//! never a panic, an abort or an unbounded allocation.
#![no_main]

// The server's own preprocessing module, compiled here without the rest of the server.
#[path = "../../inference/src/preprocess/mod.rs"]
#[allow(dead_code)]
mod preprocess;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // A lower pixel cap than the server's keeps each run fast; the check itself is what is fuzzed.
    let limits = preprocess::DecodeLimits {
        max_pixels: 4_000_000,
        ..Default::default()
    };
    if let Ok(t) = preprocess::preprocess(data, &limits) {
        assert_eq!(t.len(), preprocess::INPUT_LEN);
        assert!(t.iter().all(|v| v.is_finite()));
    }
});
