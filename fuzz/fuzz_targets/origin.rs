//! The Origin check of a WebSocket handshake.
//!
//! Input: lines `{Origin}\n{Host}\n{pattern}...`: the raw `Origin` header
//! value, the `Host` value (no `Host` header without a second line), then
//! any allowed-origin patterns (`https://app.example.com`, `*.example.com`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let mut lines = data.split(|&b| b == b'\n');
    let origin = lines.next().unwrap_or_default();
    let host = lines.next();
    let allowed: Vec<String> = lines
        .map(|pattern| String::from_utf8_lossy(pattern).into_owned())
        .collect();
    hub_ws::fuzzing::origin(origin, host, &allowed);
});
