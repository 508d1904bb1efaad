//! Entry points for the fuzz targets under `fuzz/` (built by `cargo fuzz`,
//! which passes `--cfg fuzzing`): the parsers of client input, with the
//! invariants their callers rely on asserted. Not part of the API.

use hub::{Event, Message};
use serde_json::{json, Value};

use crate::protocol::{
    one_line, parse_command, parse_options, payload, render, valid_name, Command, Format,
    OptionsError,
};

/// `parse_options` on the handshake of `/ws/{path_room}?{query}`
/// (`path_room` is `None` for plain `/ws`).
///
/// Accepted rooms and names are valid, refusals are one line, and a
/// request without any parameter is the classic chat.
pub fn options(path_room: Option<&str>, query: &str) {
    let parsed = parse_options(path_room, Some(query));
    let again = parse_options(path_room, Some(query));
    assert_eq!(
        parsed.as_ref().map(|o| o.as_ref().map(|o| o.room.clone())),
        again.as_ref().map(|o| o.as_ref().map(|o| o.room.clone())),
        "parse_options is deterministic"
    );
    if query.is_empty() {
        assert_eq!(
            parse_options(path_room, None).is_ok(),
            parsed.is_ok(),
            "no query and an empty query are the same"
        );
    }
    match parsed {
        Ok(None) => assert!(path_room.is_none(), "a path room selects the room chat"),
        Ok(Some(options)) => {
            let room = options.room.as_str();
            assert!((1..=64).contains(&room.len()), "room {room:?}");
            assert!(
                room.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')),
                "room {room:?}"
            );
            if let Some(name) = &options.name {
                assert!(valid_name(name), "accepted name {name:?}");
                // Safe to print: one line, nothing invisible.
                assert_eq!(one_line(name), *name);
            }
            let last = options
                .last_name
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .clone();
            assert_eq!(last, options.name);
        }
        Err(error) => {
            // Sent back as the body of the 400, followed by a newline.
            let text = error.to_string();
            assert!(!text.contains(['\n', '\r']), "error {text:?}");
            if let OptionsError::Unknown(key) = &error {
                assert!(key.chars().count() <= 32, "echoed key {key:?}");
            }
        }
    }
}

/// `parse_command` on a text message of the room chat, then what the
/// room chat stores for it, rendered for text and JSON clients.
///
/// Commands are well formed, and nothing a client types breaks the
/// one-line-per-message text format or the JSON frames.
pub fn command(text: &str) {
    let command = parse_command(text);
    assert_eq!(command.is_some(), text.starts_with('/'), "{text:?}");
    let stored = match command {
        None => {
            let line = one_line(text);
            assert_eq!(line.chars().count(), text.chars().count());
            assert!(
                !line.contains(['\n', '\r', '\u{2028}', '\u{2029}']),
                "one_line {line:?}"
            );
            assert!(!line.chars().any(char::is_control), "one_line {line:?}");
            Some(payload("chat", json!({ "from": "alice", "text": line })))
        }
        Some(Command::Msg { to, text: body }) => {
            assert!(
                !to.is_empty() && !to.contains(char::is_whitespace),
                "to {to:?}"
            );
            assert!(!body.is_empty() && body.trim() == body, "text {body:?}");
            assert!(!body.contains(char::is_control), "text {body:?}");
            Some(payload(
                "private",
                json!({ "from": "alice", "to": to, "text": body }),
            ))
        }
        Some(Command::Nick(name)) => {
            assert!(!name.is_empty() && name.trim() == name, "nick {name:?}");
            // The room chat renames only to valid names.
            valid_name(name).then(|| payload("nick", json!({ "from": "alice", "to": name })))
        }
        Some(Command::Unknown(word)) => {
            assert!(!word.contains(char::is_whitespace), "word {word:?}");
            assert!(!matches!(word, "msg" | "who" | "nick"), "word {word:?}");
            None
        }
        Some(Command::Who | Command::Usage(_)) => None,
    };
    if let Some(stored) = stored {
        frames(&stored);
    }
}

/// `one_line` and `valid_name` on any text.
pub fn line_and_name(text: &str) {
    let line = one_line(text);
    assert!(
        !line.contains(['\n', '\r', '\u{2028}', '\u{2029}']),
        "one_line {line:?}"
    );
    assert!(!line.chars().any(char::is_control), "one_line {line:?}");
    assert_eq!(one_line(&line), line, "one_line is idempotent");
    if valid_name(text) {
        assert!((1..=32).contains(&text.chars().count()), "name {text:?}");
        assert_eq!(line, text, "a valid name is one line already");
        assert!(!text.contains(char::is_whitespace), "name {text:?}");
    }
}

/// A stored chat line as text and JSON clients receive it.
fn frames(stored: &str) {
    let message = || Message::text(stored.to_owned());
    let text = render(Format::Text, Event::Personal(message()));
    let text = text.as_ref().and_then(Message::as_text).unwrap_or_default();
    assert!(!text.contains(['\n', '\r']), "text frame {text:?}");
    let frame = render(Format::Json, Event::Personal(message()));
    let frame = frame
        .as_ref()
        .and_then(Message::as_text)
        .unwrap_or_default();
    let value: Result<Value, _> = serde_json::from_str(frame);
    assert!(value.is_ok(), "JSON frame {frame:?}");
}
