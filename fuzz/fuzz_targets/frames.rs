//! The WebSocket frame reader: everything a client sends after the
//! upgrade.
//!
//! Input: one byte choosing how many bytes each read returns (1 to 64),
//! then the client's bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| hub_ws::fuzzing::frames(data));
