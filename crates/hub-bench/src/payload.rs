//! The text the senders send: a marker between `~` padded with `x`.
//!
//! A measured message is `~{sender}:{seq}:{nanos}~` where `sender` and
//! `seq` are decimal and `nanos` (the send time, in nanoseconds since the
//! run's shared [`std::time::Instant`]) is 16 lowercase hex digits, so the
//! marker's length does not change during a run. A warm-up message is
//! `~w{sender}~`. Both are padded with `x` to the requested size.
//!
//! Receivers look for the marker anywhere in a text, so a server that adds
//! a prefix (`Client says: `) or a suffix is measured the same way, and
//! texts without a marker (`A client disconnected`) are ignored.

use std::fmt::Write as _;

/// Digits of the send time: a `u64` in hex.
const TIME_DIGITS: usize = 16;

/// What a received text carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Marker {
    /// A sender's warm-up: it is connected and broadcasting.
    WarmUp {
        /// The sender's index.
        sender: u32,
    },
    /// A measured message.
    Data {
        /// The sender's index.
        sender: u32,
        /// Its sequence number, from 0.
        seq: u32,
        /// When it was sent, in nanoseconds since the run's start.
        sent: u64,
    },
}

/// The length of the longest marker of a run with `senders` senders of
/// `messages` messages each: the smallest payload size it accepts.
pub(crate) fn min_size(senders: u32, messages: u32) -> usize {
    // `~` sender `:` seq `:` time `~`
    4 + digits(senders.saturating_sub(1)) + digits(messages.saturating_sub(1)) + TIME_DIGITS
}

fn digits(mut n: u32) -> usize {
    let mut count = 1;
    while n >= 10 {
        n /= 10;
        count += 1;
    }
    count
}

/// A measured message of exactly `size` bytes, or `None` if its marker
/// does not fit (see [`min_size`]).
pub(crate) fn data(sender: u32, seq: u32, sent: u64, size: usize) -> Option<String> {
    let mut text = String::with_capacity(size);
    // Writing to a String cannot fail.
    let _ = write!(text, "~{sender}:{seq}:{sent:016x}~");
    pad(text, size)
}

/// A warm-up message of exactly `size` bytes, or `None` if its marker does
/// not fit.
pub(crate) fn warm_up(sender: u32, size: usize) -> Option<String> {
    let mut text = String::with_capacity(size);
    let _ = write!(text, "~w{sender}~");
    pad(text, size)
}

fn pad(mut text: String, size: usize) -> Option<String> {
    let missing = size.checked_sub(text.len())?;
    text.extend(std::iter::repeat_n('x', missing));
    Some(text)
}

/// The first well-formed marker in a message's bytes, wherever it starts.
pub(crate) fn find(bytes: &[u8]) -> Option<Marker> {
    let mut from = 0;
    while let Some(offset) = bytes[from..].iter().position(|&b| b == b'~') {
        let start = from + offset + 1;
        if let Some(marker) = parse(&bytes[start..]) {
            return Some(marker);
        }
        from = start;
    }
    None
}

/// Parses a marker whose opening `~` is just before `bytes`.
fn parse(bytes: &[u8]) -> Option<Marker> {
    let mut cursor = Cursor { bytes, at: 0 };
    if cursor.eat(b'w') {
        let sender = cursor.decimal()?;
        cursor.eat(b'~').then_some(Marker::WarmUp { sender })
    } else {
        let sender = cursor.decimal()?;
        if !cursor.eat(b':') {
            return None;
        }
        let seq = cursor.decimal()?;
        if !cursor.eat(b':') {
            return None;
        }
        let sent = cursor.hex()?;
        cursor
            .eat(b'~')
            .then_some(Marker::Data { sender, seq, sent })
    }
}

struct Cursor<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl Cursor<'_> {
    fn eat(&mut self, byte: u8) -> bool {
        let found = self.bytes.get(self.at) == Some(&byte);
        if found {
            self.at += 1;
        }
        found
    }

    /// One to ten decimal digits that fit a `u32`.
    fn decimal(&mut self) -> Option<u32> {
        let mut value: u32 = 0;
        let start = self.at;
        while let Some(&b) = self.bytes.get(self.at) {
            if !b.is_ascii_digit() {
                break;
            }
            value = value.checked_mul(10)?.checked_add(u32::from(b - b'0'))?;
            self.at += 1;
        }
        (self.at > start).then_some(value)
    }

    /// Exactly [`TIME_DIGITS`] lowercase hex digits.
    fn hex(&mut self) -> Option<u64> {
        let digits = self.bytes.get(self.at..self.at + TIME_DIGITS)?;
        let mut value: u64 = 0;
        for &b in digits {
            let digit = match b {
                b'0'..=b'9' => b - b'0',
                b'a'..=b'f' => b - b'a' + 10,
                _ => return None,
            };
            value = (value << 4) | u64::from(digit);
        }
        self.at += TIME_DIGITS;
        Some(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        for (sender, seq, sent) in [
            (0, 0, 0),
            (7, 1234, 987_654_321),
            (u32::MAX, u32::MAX, u64::MAX),
        ] {
            let size = min_size(sender.saturating_add(1), seq.saturating_add(1)) + 10;
            let text = data(sender, seq, sent, size);
            let text = text.as_deref().unwrap_or_default();
            assert_eq!(text.len(), size);
            assert!(text.ends_with("xxxxxxxxxx"), "{text}");
            assert_eq!(
                find(text.as_bytes()),
                Some(Marker::Data { sender, seq, sent })
            );
        }
        let text = warm_up(42, 20).unwrap_or_default();
        assert_eq!(text, "~w42~xxxxxxxxxxxxxxx");
        assert_eq!(find(text.as_bytes()), Some(Marker::WarmUp { sender: 42 }));
    }

    #[test]
    fn min_size_is_the_longest_marker() {
        assert_eq!(min_size(1, 1), "~0:0:0000000000000000~".len());
        assert_eq!(min_size(10, 2000), "~9:1999:0000000000000000~".len());
        let size = min_size(10, 2000);
        assert!(data(9, 1999, u64::MAX, size).is_some());
        assert!(data(9, 1999, u64::MAX, size - 1).is_none());
    }

    #[test]
    fn marker_found_after_a_prefix() {
        let text = data(3, 17, 0xabc, 40).unwrap_or_default();
        let said = format!("Client says: {text}");
        let expected = Some(Marker::Data {
            sender: 3,
            seq: 17,
            sent: 0xabc,
        });
        assert_eq!(find(said.as_bytes()), expected);
        let echoed = format!("Message text was: {text}");
        assert_eq!(find(echoed.as_bytes()), expected);
        // A stray `~` before the marker does not hide it.
        assert_eq!(find(format!("~~ ~1: {text}").as_bytes()), expected);
    }

    #[test]
    fn other_texts_are_ignored() {
        for text in [
            "",
            "A client disconnected",
            "~",
            "~~",
            "~1:2~",
            "~1:2:3~",
            "~1:2:000000000000000g~",
            "~1:2:0000000000000000",
            "~w~",
            "~w1",
            "~99999999999:0:0000000000000000~",
        ] {
            assert_eq!(find(text.as_bytes()), None, "{text:?}");
        }
    }

    #[test]
    fn wrong_sizes_are_rejected() {
        assert_eq!(data(0, 0, 0, 5), None);
        assert_eq!(data(0, 0, 0, min_size(1, 1) - 1), None);
        assert_eq!(warm_up(1, 3), None);
        let exact = data(0, 0, 0, min_size(1, 1)).unwrap_or_default();
        assert_eq!(exact, "~0:0:0000000000000000~");
    }
}
