//! The `permessage-deflate` negotiation: `Sec-WebSocket-Extensions`
//! headers as a client may send them.
//!
//! Input: the headers' values, one per line.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| hub_ws::fuzzing::extensions(data));
