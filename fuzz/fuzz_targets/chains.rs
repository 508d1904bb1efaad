//! Messages deflated in chains and on their own for clients that keep
//! their windows: each client inflates exactly what was sent to it.
//!
//! Input: one command per byte (see `hub_ws::fuzzing::chains`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| hub_ws::fuzzing::chains(data));
