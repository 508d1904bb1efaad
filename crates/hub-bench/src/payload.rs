//! The text the senders send: a marker between `~` padded with `x`, or
//! with words ([`Padding::Prose`]) where what deflate makes of it matters.
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

/// What fills a message after its marker.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Padding {
    /// `x`, repeated: deflate shrinks it to almost nothing.
    #[default]
    X,
    /// Words drawn from a small vocabulary, different in every message:
    /// about what deflate makes of a chat line.
    Prose,
}

/// A measured message of exactly `size` bytes, or `None` if its marker
/// does not fit (see [`min_size`]).
pub(crate) fn data(
    sender: u32,
    seq: u32,
    sent: u64,
    size: usize,
    padding: Padding,
) -> Option<String> {
    let mut text = String::with_capacity(size);
    // Writing to a String cannot fail.
    let _ = write!(text, "~{sender}:{seq}:{sent:016x}~");
    pad(
        text,
        size,
        padding,
        u64::from(sender) << 32 | u64::from(seq),
    )
}

/// A warm-up message of exactly `size` bytes, or `None` if its marker does
/// not fit.
pub(crate) fn warm_up(sender: u32, size: usize, padding: Padding) -> Option<String> {
    let mut text = String::with_capacity(size);
    let _ = write!(text, "~w{sender}~");
    pad(text, size, padding, u64::from(sender))
}

/// Words of the prose padding.
const WORDS: [&str; 64] = [
    "the", "a", "we", "you", "they", "it", "is", "was", "and", "but", "so", "then", "meeting",
    "tomorrow", "today", "lunch", "build", "deploy", "server", "room", "chat", "message", "works",
    "broke", "again", "fixed", "please", "thanks", "sounds", "good", "great", "maybe", "later",
    "after", "before", "with", "without", "about", "review", "branch", "merge", "test", "tests",
    "failing", "passing", "coffee", "anyone", "here", "there", "what", "when", "where", "why",
    "how", "really", "quite", "nice", "weekend", "monday", "friday", "ship", "it", "now", "ok",
];

fn pad(mut text: String, size: usize, padding: Padding, seed: u64) -> Option<String> {
    let missing = size.checked_sub(text.len())?;
    match padding {
        Padding::X => text.extend(std::iter::repeat_n('x', missing)),
        Padding::Prose => {
            // xorshift64, never zero.
            let mut state = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
            while text.len() < size {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                text.push(' ');
                text.push_str(WORDS[(state % WORDS.len() as u64) as usize]);
            }
            // ASCII: any cut is a character boundary.
            text.truncate(size);
        }
    }
    Some(text)
}

/// The first well-formed marker in a message's bytes, wherever it starts.
/// (Run for every delivery: `~` is looked for with `memchr`, and the
/// numbers are read without a bounds check per byte.)
pub(crate) fn find(bytes: &[u8]) -> Option<Marker> {
    let mut from = 0;
    while let Some(offset) = memchr::memchr(b'~', &bytes[from..]) {
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
    if let Some(rest) = bytes.strip_prefix(b"w") {
        let (sender, rest) = decimal(rest)?;
        return rest.starts_with(b"~").then_some(Marker::WarmUp { sender });
    }
    let (sender, rest) = decimal(bytes)?;
    let (seq, rest) = decimal(rest.strip_prefix(b":")?)?;
    let rest = rest.strip_prefix(b":")?;
    let (digits, rest) = rest.split_first_chunk::<TIME_DIGITS>()?;
    let sent = hex(digits)?;
    rest.starts_with(b"~")
        .then_some(Marker::Data { sender, seq, sent })
}

/// One to ten decimal digits that fit a `u32`, and what follows them.
fn decimal(bytes: &[u8]) -> Option<(u32, &[u8])> {
    let mut value = 0u64;
    let mut digits = 0;
    for &b in bytes.iter().take(11) {
        let digit = b.wrapping_sub(b'0');
        if digit > 9 {
            break;
        }
        value = value * 10 + u64::from(digit);
        digits += 1;
    }
    if digits == 0 || digits > 10 {
        return None;
    }
    Some((u32::try_from(value).ok()?, &bytes[digits..]))
}

/// Exactly [`TIME_DIGITS`] lowercase hex digits.
fn hex(digits: &[u8; TIME_DIGITS]) -> Option<u64> {
    let mut value = 0u64;
    let mut bad = 0u8;
    for &b in digits {
        let digit = HEX[usize::from(b)];
        bad |= digit;
        value = (value << 4) | u64::from(digit & 0x0F);
    }
    // Invalid digits are 0xFF in the table, so any sets the high bits.
    (bad & 0xF0 == 0).then_some(value)
}

/// Lowercase hex digit values; 0xFF for every other byte.
const HEX: [u8; 256] = {
    let mut table = [0xFF; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

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
            let text = data(sender, seq, sent, size, Padding::X);
            let text = text.as_deref().unwrap_or_default();
            assert_eq!(text.len(), size);
            assert!(text.ends_with("xxxxxxxxxx"), "{text}");
            assert_eq!(
                find(text.as_bytes()),
                Some(Marker::Data { sender, seq, sent })
            );
        }
        let text = warm_up(42, 20, Padding::X).unwrap_or_default();
        assert_eq!(text, "~w42~xxxxxxxxxxxxxxx");
        assert_eq!(find(text.as_bytes()), Some(Marker::WarmUp { sender: 42 }));
    }

    #[test]
    fn min_size_is_the_longest_marker() {
        assert_eq!(min_size(1, 1), "~0:0:0000000000000000~".len());
        assert_eq!(min_size(10, 2000), "~9:1999:0000000000000000~".len());
        let size = min_size(10, 2000);
        assert!(data(9, 1999, u64::MAX, size, Padding::X).is_some());
        assert!(data(9, 1999, u64::MAX, size - 1, Padding::X).is_none());
    }

    #[test]
    fn marker_found_after_a_prefix() {
        let text = data(3, 17, 0xabc, 40, Padding::X).unwrap_or_default();
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
    fn prose_fills_to_the_size_with_words_that_differ() {
        let size = 200;
        let a = data(1, 1, 5, size, Padding::Prose).unwrap_or_default();
        let b = data(1, 2, 5, size, Padding::Prose).unwrap_or_default();
        assert_eq!((a.len(), b.len()), (size, size));
        assert_ne!(a[24..], b[24..], "each message its own words");
        // Only the marker's own: nothing in the words looks like one.
        assert!(a.is_ascii() && a.rfind('~') == Some(21), "{a}");
        assert_eq!(
            find(a.as_bytes()),
            Some(Marker::Data {
                sender: 1,
                seq: 1,
                sent: 5
            })
        );
        assert!(a.split(' ').count() > 20, "{a}");
        let warm = warm_up(3, 50, Padding::Prose).unwrap_or_default();
        assert_eq!(find(warm.as_bytes()), Some(Marker::WarmUp { sender: 3 }));
    }

    #[test]
    fn wrong_sizes_are_rejected() {
        assert_eq!(data(0, 0, 0, 5, Padding::X), None);
        assert_eq!(data(0, 0, 0, min_size(1, 1) - 1, Padding::X), None);
        assert_eq!(warm_up(1, 3, Padding::X), None);
        let exact = data(0, 0, 0, min_size(1, 1), Padding::X).unwrap_or_default();
        assert_eq!(exact, "~0:0:0000000000000000~");
    }
}
