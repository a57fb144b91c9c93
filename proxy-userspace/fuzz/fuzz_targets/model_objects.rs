#![no_main]
//! Arbitrary Service / EndpointSlice / Node updates through a ModelBuilder
//! holding fixed valid objects; see `vipr_fuzz::model`.
use libfuzzer_sys::fuzz_target;

fuzz_target!(|input: vipr_fuzz::model::Input| vipr_fuzz::model::run(input));
