//! The WebSocket frame reader of a socket that agreed on
//! `permessage-deflate`: compressed client messages, inflated within the
//! message size limit.
//!
//! Input: one byte choosing how many bytes each read returns (1 to 64)
//! and, in its top bit, whether the client keeps its context, then the
//! client's bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| hub_ws::fuzzing::inflate(data));
