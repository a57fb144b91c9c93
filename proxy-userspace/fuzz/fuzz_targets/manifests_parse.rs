#![no_main]
//! Any text through the manifests parser; see `vipr_fuzz::manifests`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| vipr_fuzz::manifests::run(data));
