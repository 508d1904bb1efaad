//! A text message of the room chat: plain text or `/msg`, `/who`, `/nick`.
//!
//! Input: the message (WebSocket text messages are UTF-8).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    chat_server::fuzzing::command(text);
    chat_server::fuzzing::line_and_name(text);
});
