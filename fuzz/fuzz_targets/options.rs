//! The room-chat handshake: `/ws/{room}?{query}`.
//!
//! Input: the query string alone (plain `/ws`), or `{room}\n{query}` for
//! `/ws/{room}`. Anything that is not UTF-8 never reaches the parser (the
//! request target is ASCII).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match text.split_once('\n') {
        Some((room, query)) => chat_server::fuzzing::options(Some(room), query),
        None => chat_server::fuzzing::options(None, text),
    }
});
