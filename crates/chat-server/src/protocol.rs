//! The chat's wire protocol: how a client asks for a room, a name, a
//! format and a resume position, and what the server's frames look like.
//!
//! `/ws` with no parameters is the classic broadcast chat. Any of `room`
//! (or the path `/ws/{room}`), `name`, `format=json`, `epoch` and `offset`
//! selects the room chat; see the README for the JSON frames.

use std::sync::{Mutex, PoisonError};
use std::time::{SystemTime, UNIX_EPOCH};

use hub::{Broadcast, Event, Message, Position, RoomName, Topic};
use serde_json::{json, Value};

/// The room a room-chat client lands in when it names none.
pub(crate) const DEFAULT_ROOM: &str = "lobby";

/// How frames are written to a client. Its number is the form of a
/// room's line (`hub::Broadcast::render`) that clients of this format get.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Format {
    /// Lines of text: `alice: hi`, `alice joined`.
    Text = 0,
    /// One JSON object per frame, with room, epoch and offset.
    Json = 1,
}

/// What a room-chat client asked for when it connected.
#[derive(Debug)]
pub(crate) struct ChatOptions {
    pub(crate) room: RoomName,
    pub(crate) name: Option<String>,
    pub(crate) format: Format,
    pub(crate) resume: Option<Position>,
    /// The client's name as it last changed (kept for its goodbye, when
    /// the hub has already forgotten the connection).
    pub(crate) last_name: Mutex<Option<String>>,
}

/// Why a room-chat request was refused (400 before the upgrade).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub(crate) enum OptionsError {
    #[error("room names are 1 to 64 letters, digits, '-', '_' or '.'")]
    Room,
    #[error("names are 1 to 32 characters, without spaces or control characters")]
    Name,
    #[error("format must be text or json")]
    Format,
    #[error("resume needs both epoch and offset, as unsigned integers")]
    Resume,
    #[error("unknown parameter {0:?}; use room, name, format, epoch, offset, token")]
    Unknown(String),
}

/// `None` for the classic chat (`/ws`, no parameters).
pub(crate) fn parse_options(
    path_room: Option<&str>,
    query: Option<&str>,
) -> Result<Option<ChatOptions>, OptionsError> {
    let (mut room, mut name, mut format, mut epoch, mut offset) =
        (path_room.map(str::to_owned), None, None, None, None);
    for (key, value) in form_urlencoded::parse(query.unwrap_or("").as_bytes()) {
        let value = value.into_owned();
        match &*key {
            "room" => room = Some(value),
            "name" => name = Some(value),
            "format" => format = Some(value),
            "epoch" => epoch = Some(value),
            "offset" => offset = Some(value),
            // Read by the sign-in check, not a chat option.
            crate::auth::TOKEN_PARAM => {}
            other => return Err(OptionsError::Unknown(other.chars().take(32).collect())),
        }
    }
    if room.is_none() && name.is_none() && format.is_none() && epoch.is_none() && offset.is_none() {
        return Ok(None);
    }
    let room = room.unwrap_or_else(|| DEFAULT_ROOM.to_owned());
    if !valid_room(&room) {
        return Err(OptionsError::Room);
    }
    if let Some(name) = &name {
        if !valid_name(name) {
            return Err(OptionsError::Name);
        }
    }
    let format = match format.as_deref() {
        None | Some("text") => Format::Text,
        Some("json") => Format::Json,
        Some(_) => return Err(OptionsError::Format),
    };
    let resume = match (epoch, offset) {
        (None, None) => None,
        (Some(epoch), Some(offset)) => Some(Position {
            epoch: epoch.parse().map_err(|_| OptionsError::Resume)?,
            offset: offset.parse().map_err(|_| OptionsError::Resume)?,
        }),
        _ => return Err(OptionsError::Resume),
    };
    Ok(Some(ChatOptions {
        room: RoomName::from(room),
        last_name: Mutex::new(name.clone()),
        name,
        format,
        resume,
    }))
}

pub(crate) fn valid_room(room: &str) -> bool {
    (1..=64).contains(&room.len())
        && room
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

pub(crate) fn valid_name(name: &str) -> bool {
    (1..=32).contains(&name.chars().count())
        && !name
            .chars()
            .any(|c| c.is_whitespace() || c.is_control() || is_invisible(c))
}

/// Zero-width and direction-changing characters, which let one name pass
/// for another.
fn is_invisible(c: char) -> bool {
    matches!(c, '\u{200B}'..='\u{200F}' | '\u{202A}'..='\u{202E}' | '\u{2060}'..='\u{2064}' | '\u{FEFF}')
}

/// A chat line on one line: control characters and Unicode line and
/// paragraph separators (a newline that would fake a second line from
/// someone else, say) become spaces.
pub(crate) fn one_line(text: &str) -> String {
    text.chars()
        .map(|c| if breaks_line(c) { ' ' } else { c })
        .collect()
}

fn breaks_line(c: char) -> bool {
    c.is_control() || matches!(c, '\u{2028}' | '\u{2029}')
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A chat line as stored in the hub: a JSON object with a `kind`.
pub(crate) fn payload(kind: &str, fields: Value) -> String {
    let mut object = json!({ "kind": kind, "time": now_ms() });
    // Sized up front: a line is kept in history, and a buffer grown by
    // doubling would leave holes the next lines of its size cannot use.
    let size = kind.len() + 40 + value_size(&fields);
    if let (Some(object), Value::Object(fields)) = (object.as_object_mut(), fields) {
        object.extend(fields);
    }
    let mut bytes = Vec::with_capacity(size);
    if serde_json::to_writer(&mut bytes, &object).is_err() {
        return object.to_string();
    }
    // serde_json writes UTF-8 only.
    String::from_utf8(bytes).unwrap_or_else(|_| object.to_string())
}

/// About how long `value` is as JSON (its strings unescaped).
fn value_size(value: &Value) -> usize {
    match value {
        Value::String(text) => text.len() + 4,
        Value::Array(items) => items.iter().map(value_size).sum::<usize>() + 2 + items.len(),
        Value::Object(fields) => {
            fields
                .iter()
                .map(|(k, v)| k.len() + 4 + value_size(v))
                .sum::<usize>()
                + 2
        }
        _ => 24,
    }
}

/// The parts one after the other, in a string of exactly their size.
pub(crate) fn concat(parts: &[&str]) -> String {
    let mut joined = String::with_capacity(parts.iter().map(|part| part.len()).sum());
    for part in parts {
        joined.push_str(part);
    }
    joined
}

/// How a stored chat line reads in text mode; `None` for lines text
/// clients do not see (member lists, the welcome).
pub(crate) fn as_line(payload: &str) -> Option<String> {
    let value: Value = serde_json::from_str(payload).ok()?;
    let field = |name: &str| value.get(name).and_then(Value::as_str).unwrap_or("");
    Some(match field("kind") {
        "chat" => concat(&[field("from"), ": ", field("text")]),
        "joined" => format!("{} joined", who(&value, field("from"))),
        "left" => format!("{} left", who(&value, field("from"))),
        "nick" => format!("{} is now known as {}", field("from"), field("to")),
        "private" => concat(&["[", field("from"), " → ", field("to"), "] ", field("text")]),
        "info" => field("text").to_owned(),
        _ => return None,
    })
}

/// Who a presence line is about: `from`, or, for a line that tells of
/// several, `a and b`, `a, b and c`, or `a, b and N others`.
fn who(line: &Value, from: &str) -> String {
    let names: Vec<&str> = (line.get("names").and_then(Value::as_array))
        .map(|names| names.iter().filter_map(Value::as_str).collect())
        .unwrap_or_default();
    match names.as_slice() {
        [] | [_] => from.to_owned(),
        [a, b] => format!("{a} and {b}"),
        [a, b, c] => format!("{a}, {b} and {c}"),
        [a, b, rest @ ..] => format!("{a}, {b} and {} others", rest.len()),
    }
}

/// The frame a room-chat client receives for `event`, in its format.
///
/// A room's line is rendered once per format, and the frame shared by
/// every client of that format it reaches (replays included).
pub(crate) fn render(format: Format, event: Event) -> Option<Message> {
    match (format, event) {
        // Only rooms carry chat lines; anything else is not for this client.
        (_, Event::Broadcast(broadcast)) if *broadcast.topic() == Topic::All => None,
        (_, Event::Broadcast(broadcast)) => {
            broadcast.render(format as usize, |broadcast| render_line(format, broadcast))
        }
        (Format::Text, Event::Personal(message)) => as_line(message.as_text()?).map(Message::from),
        (Format::Text, Event::Resync { missed, .. }) => Some(Message::from(match missed {
            Some(missed) => format!("({missed} messages were missed)"),
            None => "(some messages were missed)".to_owned(),
        })),
        (Format::Text, Event::Lagged { missed, .. }) => {
            Some(Message::from(format!("({missed} messages were missed)")))
        }
        (Format::Json, Event::Personal(message)) => personal_json(&message),
        (Format::Json, Event::Resync { topic, missed }) => Some(Message::from(
            json!({ "type": "resync", "room": topic_name(&topic), "missed": missed }).to_string(),
        )),
        (Format::Json, Event::Lagged { topic, missed }) => Some(Message::from(
            json!({ "type": "lagged", "room": topic_name(&topic), "missed": missed }).to_string(),
        )),
        _ => None,
    }
}

/// A personal message as a JSON client receives it. The stored payload is
/// already JSON: framed without re-parsing.
fn personal_json(message: &Message) -> Option<Message> {
    Some(Message::from(concat(&[
        r#"{"type":"personal","data":"#,
        message.as_text()?,
        "}",
    ])))
}

/// Large personal messages sent to many clients, framed once: the member
/// list every JSON joiner of a burst gets is one buffer, and its frame is
/// made for the first joiner and shared by the others (it was copied for
/// each). Keeps the latest one.
#[derive(Debug, Default)]
pub(crate) struct Framed {
    latest: Mutex<Option<(Message, Message)>>,
}

impl Framed {
    /// From this size on, a personal message's JSON frame is kept.
    const FROM: usize = 1024;

    /// What `event` is for a client of `format`.
    pub(crate) fn render(&self, format: Format, event: Event) -> Option<Message> {
        match (format, event) {
            (Format::Json, Event::Personal(message)) if message.len() >= Self::FROM => {
                let mut latest = self.latest.lock().unwrap_or_else(PoisonError::into_inner);
                if let Some((source, frame)) = latest.as_ref() {
                    // The same buffer (the cache holds it, so its address
                    // is not reused meanwhile).
                    if source.as_bytes().as_ptr() == message.as_bytes().as_ptr()
                        && source.len() == message.len()
                    {
                        return Some(frame.clone());
                    }
                }
                let frame = personal_json(&message)?;
                *latest = Some((message, frame.clone()));
                Some(frame)
            }
            (format, event) => render(format, event),
        }
    }
}

/// A room's line in `format`.
fn render_line(format: Format, broadcast: &Broadcast) -> Option<Message> {
    let stored = broadcast.message().as_text()?;
    let frame = match format {
        Format::Text => as_line(stored)?,
        Format::Json => concat(&[
            r#"{"type":"message","room":"#,
            &room_json(broadcast.topic()),
            r#","epoch":""#,
            &broadcast.epoch().to_string(),
            r#"","offset":"#,
            &broadcast.offset().to_string(),
            r#","data":"#,
            stored,
            "}",
        ]),
    };
    Some(Message::from(frame))
}

fn topic_name(topic: &Topic) -> Option<&str> {
    match topic {
        Topic::Room(room) => Some(room.as_str()),
        _ => None,
    }
}

fn room_json(topic: &Topic) -> String {
    Value::from(topic_name(topic)).to_string()
}

/// A command typed in the room chat.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Command<'a> {
    /// `text` is one line, as chat text is (see [`one_line`]).
    Msg {
        to: &'a str,
        text: String,
    },
    Who,
    Nick(&'a str),
    Unknown(&'a str),
    Usage(&'static str),
}

/// `None` for plain chat text.
pub(crate) fn parse_command(text: &str) -> Option<Command<'_>> {
    let rest = text.strip_prefix('/')?;
    let (word, args) = rest.split_once(char::is_whitespace).unwrap_or((rest, ""));
    let args = args.trim();
    Some(match word {
        "msg" => match args
            .split_once(char::is_whitespace)
            .map(|(to, text)| (to, one_line(text)))
        {
            Some((to, text)) if !text.trim().is_empty() => Command::Msg {
                to,
                text: text.trim().to_owned(),
            },
            _ => Command::Usage("usage: /msg NAME text"),
        },
        "who" => Command::Who,
        "nick" if !args.is_empty() => Command::Nick(args),
        "nick" => Command::Usage("usage: /nick NAME"),
        _ => Command::Unknown(word),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classic_chat_has_no_options() {
        assert!(parse_options(None, None).unwrap().is_none());
        assert!(parse_options(None, Some("")).unwrap().is_none());
    }

    #[test]
    fn room_chat_options() {
        let options = parse_options(None, Some("room=rust&name=al%20ice"));
        assert_eq!(options.unwrap_err(), OptionsError::Name);
        let options = parse_options(
            Some("rust"),
            Some("name=alice&format=json&epoch=7&offset=41"),
        )
        .unwrap()
        .unwrap();
        assert_eq!(options.room.as_str(), "rust");
        assert_eq!(options.name.as_deref(), Some("alice"));
        assert_eq!(options.format, Format::Json);
        assert_eq!(
            options.resume,
            Some(Position {
                epoch: 7,
                offset: 41
            })
        );
        let lobby = parse_options(None, Some("name=bob")).unwrap().unwrap();
        assert_eq!(lobby.room.as_str(), DEFAULT_ROOM);
        assert_eq!(lobby.format, Format::Text);
    }

    #[test]
    fn bad_options_are_refused() {
        assert_eq!(
            parse_options(None, Some("room=a/b")).unwrap_err(),
            OptionsError::Room
        );
        assert_eq!(
            parse_options(None, Some("room=")).unwrap_err(),
            OptionsError::Room
        );
        assert_eq!(
            parse_options(None, Some("format=xml")).unwrap_err(),
            OptionsError::Format
        );
        assert_eq!(
            parse_options(None, Some("epoch=1")).unwrap_err(),
            OptionsError::Resume
        );
        assert_eq!(
            parse_options(None, Some("epoch=1&offset=x")).unwrap_err(),
            OptionsError::Resume
        );
        assert_eq!(
            parse_options(None, Some("x=1")).unwrap_err(),
            OptionsError::Unknown("x".into())
        );
        let long = format!("name={}", "n".repeat(33));
        assert_eq!(
            parse_options(None, Some(&long)).unwrap_err(),
            OptionsError::Name
        );
    }

    #[test]
    fn commands() {
        assert_eq!(parse_command("hello"), None);
        assert_eq!(parse_command("/who"), Some(Command::Who));
        assert_eq!(
            parse_command("/msg bob  hi there "),
            Some(Command::Msg {
                to: "bob",
                text: "hi there".into()
            })
        );
        // Found by fuzz/fuzz_targets/command.rs: a private line faked a
        // second line (a carriage return, here) in text mode.
        assert_eq!(
            parse_command("/msg b*ocnb\x0c/h i\x0c\x0c\ra\t\0\0\0\0ttwi"),
            Some(Command::Msg {
                to: "b*ocnb",
                text: "/h i   a     ttwi".into()
            })
        );
        assert_eq!(
            parse_command("/msg bob hi\nalice: give me your password"),
            Some(Command::Msg {
                to: "bob",
                text: "hi alice: give me your password".into()
            })
        );
        assert_eq!(
            parse_command("/msg bob \0\u{7f}"),
            Some(Command::Usage("usage: /msg NAME text"))
        );
        assert_eq!(
            parse_command("/msg bob"),
            Some(Command::Usage("usage: /msg NAME text"))
        );
        assert_eq!(parse_command("/nick ally"), Some(Command::Nick("ally")));
        assert_eq!(
            parse_command("/nick"),
            Some(Command::Usage("usage: /nick NAME"))
        );
        assert_eq!(parse_command("/dance now"), Some(Command::Unknown("dance")));
    }

    #[test]
    fn lines_in_text_mode() {
        let line = |kind, fields| as_line(&payload(kind, fields));
        assert_eq!(
            line("chat", json!({"from": "al", "text": "hi"})).as_deref(),
            Some("al: hi")
        );
        assert_eq!(
            line("joined", json!({"from": "al"})).as_deref(),
            Some("al joined")
        );
        assert_eq!(
            line("left", json!({"from": "al"})).as_deref(),
            Some("al left")
        );
        assert_eq!(
            line("nick", json!({"from": "al", "to": "ally"})).as_deref(),
            Some("al is now known as ally")
        );
        assert_eq!(
            line("private", json!({"from": "al", "to": "bo", "text": "psst"})).as_deref(),
            Some("[al → bo] psst")
        );
        assert_eq!(line("members", json!({"members": ["al"]})), None);
        // A burst of joins or leaves in one line.
        let names = |names: &[&str]| json!({"from": names[0], "names": names});
        assert_eq!(
            line("joined", names(&["al", "bo"])).as_deref(),
            Some("al and bo joined")
        );
        assert_eq!(
            line("left", names(&["al", "bo", "cy"])).as_deref(),
            Some("al, bo and cy left")
        );
        assert_eq!(
            line("joined", names(&["al", "bo", "cy", "di", "ed"])).as_deref(),
            Some("al, bo and 3 others joined")
        );
    }

    #[test]
    fn one_line_and_invisible_names() {
        assert_eq!(
            one_line("hi\nbob: give me your password"),
            "hi bob: give me your password"
        );
        assert_eq!(one_line("a\u{2028}b\u{2029}c\r\u{85}d"), "a b c  d");
        assert!(!valid_name("bo\u{200B}b"));
        assert!(!valid_name("\u{202E}bob"));
        assert!(valid_name("zoë"));
    }

    #[test]
    fn a_large_personal_message_sent_to_many_is_framed_once() {
        let framed = Framed::default();
        let names: Vec<String> = (0..200).map(|i| format!("guest-{i}")).collect();
        let list = Message::text(payload("members", json!({ "members": names })));
        let frames: Vec<Message> = (0..3)
            .filter_map(|_| framed.render(Format::Json, Event::Personal(list.clone())))
            .collect();
        assert_eq!(frames.len(), 3);
        let text = frames[0].as_text().unwrap();
        assert!(text.starts_with(r#"{"type":"personal","data":{"#));
        assert_eq!(&text[26..text.len() - 1], list.as_text().unwrap());
        // One frame, shared.
        let at = frames[0].as_bytes().as_ptr();
        assert!(frames.iter().all(|f| f.as_bytes().as_ptr() == at));
        // Another buffer of the same text is framed again; text clients
        // and small messages go the usual way.
        let copy = Message::text(list.as_text().unwrap().to_owned());
        let again = framed.render(Format::Json, Event::Personal(copy)).unwrap();
        assert_eq!(again, frames[0]);
        assert_ne!(again.as_bytes().as_ptr(), at);
        assert_eq!(framed.render(Format::Text, Event::Personal(list)), None);
        let small = Message::text(payload("info", json!({ "text": "hi" })));
        let one = framed.render(Format::Json, Event::Personal(small.clone()));
        let two = framed.render(Format::Json, Event::Personal(small));
        assert_eq!(one, two);
        assert_ne!(
            one.unwrap().as_bytes().as_ptr(),
            two.unwrap().as_bytes().as_ptr()
        );
    }
}
