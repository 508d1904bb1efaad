//! Compression (`permessage-deflate`, RFC 7692): what the client offers and
//! what the server answers, messages deflated once and shared by every
//! socket they go to, and client messages inflated within the size limit.
//!
//! The server takes its context over, unless the client asks it not to
//! (`server_no_context_takeover`). A broadcast is deflated at most twice
//! for all its sockets ([`Deflated`]): once on its own, which every client
//! can inflate, and once in a chain (see [`chain`]), against the window of
//! the clients that got the same messages before it, which only those can
//! inflate, and which is about half as long for chat lines. Messages under
//! [`MIN_DEFLATE`] bytes, and those in no chain that deflate would not
//! shrink, go out uncompressed (RSV1 clear), which the extension
//! allows for any message and which leaves the client's window as it was.
//!
//! Client messages are inflated with the context the client keeps: from
//! scratch for each message if the client offered
//! `client_no_context_takeover` (the answer then includes it, and the
//! socket keeps no inflate state between messages), and with one sliding
//! window kept for the connection otherwise. Inflating stops at the
//! message size limit.

mod cache;
mod chain;
mod inflate;

pub(crate) use cache::Deflated;
pub(crate) use chain::Place;
pub(crate) use inflate::Inflater;

use std::sync::atomic::{AtomicU64, Ordering};

use hyper::header::{HeaderMap, HeaderValue, SEC_WEBSOCKET_EXTENSIONS};

/// Messages shorter than this are never deflated: deflate's own overhead
/// (a block header and the flush marker) takes back most of what it could
/// save on them, and the work is not worth the few bytes left.
pub(crate) const MIN_DEFLATE: usize = 64;

/// The extension's name in `Sec-WebSocket-Extensions`.
const NAME: &str = "permessage-deflate";

/// The four bytes every flushed deflate block ends with; RFC 7692 takes
/// them off each message, and the reader puts them back.
const TAIL: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];

/// What the server and one client agreed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Agreed {
    /// The most window bits the server may use (8 to 15). With 8, which
    /// zlib cannot deflate within, messages go out uncompressed.
    pub(crate) server_bits: u8,
    /// The client deflates each message from scratch.
    pub(crate) client_no_context: bool,
    /// The client asked the server to deflate each message from scratch.
    pub(crate) server_no_context: bool,
}

impl Agreed {
    /// Where the client's window stands, for a socket that may put it in
    /// a chain; `None` if it may not (no context taken over, or a window
    /// smaller than a chain's).
    pub(crate) fn place(&self) -> Option<Place> {
        (!self.server_no_context && self.server_bits >= chain::CHAIN_BITS).then(Place::default)
    }
}

/// One `permessage-deflate` offer, checked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Offer {
    server_no_context: bool,
    client_no_context: bool,
    server_bits: Option<u8>,
}

/// The first `permessage-deflate` offer of the request that the server can
/// take, and the `Sec-WebSocket-Extensions` value that answers it; `None`
/// (answer without the extension) when there is none, or when every
/// offer is malformed.
pub(crate) fn negotiate(headers: &HeaderMap) -> Option<(Agreed, HeaderValue)> {
    let offer = (headers.get_all(SEC_WEBSOCKET_EXTENSIONS).iter())
        .filter_map(|value| value.to_str().ok())
        .flat_map(split_unquoted(','))
        .filter_map(|extension| parse_offer(extension)?.ok())
        .next()?;
    let mut answer = NAME.to_owned();
    if offer.server_no_context {
        answer.push_str("; server_no_context_takeover");
    }
    if offer.client_no_context {
        answer.push_str("; client_no_context_takeover");
    }
    if let Some(bits) = offer.server_bits {
        answer.push_str(&format!("; server_max_window_bits={bits}"));
    }
    let agreed = Agreed {
        server_bits: offer.server_bits.unwrap_or(15),
        client_no_context: offer.client_no_context,
        server_no_context: offer.server_no_context,
    };
    Some((agreed, HeaderValue::from_str(&answer).ok()?))
}

/// One extension of the list: `None` if it is not `permessage-deflate`,
/// `Err` if it is but its parameters break RFC 7692 (unknown, repeated,
/// or with a value out of range).
fn parse_offer(extension: &str) -> Option<Result<Offer, ()>> {
    let mut parts = split_unquoted(';')(extension);
    let name = parts.next()?.trim();
    if !name.eq_ignore_ascii_case(NAME) {
        return None;
    }
    let mut offer = Offer::default();
    let mut client_bits = false;
    for param in parts {
        let (key, value) = match param.split_once('=') {
            Some((key, value)) => (key.trim(), Some(unquote(value.trim()))),
            None => (param.trim(), None),
        };
        let key = key.to_ascii_lowercase();
        let fresh = match (key.as_str(), value) {
            ("server_no_context_takeover", None) => {
                !std::mem::replace(&mut offer.server_no_context, true)
            }
            ("client_no_context_takeover", None) => {
                !std::mem::replace(&mut offer.client_no_context, true)
            }
            ("server_max_window_bits", Some(value)) => match window_bits(&value) {
                Some(bits) => offer.server_bits.replace(bits).is_none(),
                None => false,
            },
            // The client's window is its own: any is fine to inflate.
            ("client_max_window_bits", value) => {
                value.is_none_or(|value| window_bits(&value).is_some())
                    && !std::mem::replace(&mut client_bits, true)
            }
            _ => false,
        };
        if !fresh {
            return Some(Err(()));
        }
    }
    Some(Ok(offer))
}

/// A window size parameter: 8 to 15, in plain digits.
fn window_bits(value: &str) -> Option<u8> {
    let valid = !value.is_empty() && value.len() <= 2 && value.bytes().all(|b| b.is_ascii_digit());
    let bits: u8 = value
        .parse()
        .ok()
        .filter(|_| valid && !value.starts_with('0'))?;
    (8..=15).contains(&bits).then_some(bits)
}

/// A quoted-string's content, or a token as it is.
fn unquote(value: &str) -> String {
    match value.strip_prefix('"').and_then(|v| v.strip_suffix('"')) {
        Some(inner) => {
            let mut out = String::with_capacity(inner.len());
            let mut chars = inner.chars();
            while let Some(c) = chars.next() {
                out.extend(if c == '\\' { chars.next() } else { Some(c) });
            }
            out
        }
        None => value.to_owned(),
    }
}

/// Splits at `separator`, except inside quoted strings.
fn split_unquoted(separator: char) -> impl Fn(&str) -> std::vec::IntoIter<&str> {
    move |text| {
        let mut parts = Vec::new();
        let (mut start, mut quoted, mut escaped) = (0, false, false);
        for (i, c) in text.char_indices() {
            match c {
                _ if escaped => escaped = false,
                '\\' if quoted => escaped = true,
                '"' => quoted = !quoted,
                c if c == separator && !quoted => {
                    parts.push(&text[start..i]);
                    start = i + 1;
                }
                _ => {}
            }
        }
        parts.push(&text[start..]);
        parts.into_iter()
    }
}

/// Bytes through compression, on a server's sockets.
#[derive(Debug, Default)]
pub(crate) struct DeflateCounters {
    /// Messages out to compressing sockets: their bytes, and the bytes
    /// written for them (deflated, or as they are).
    pub(crate) out_before: AtomicU64,
    pub(crate) out_after: AtomicU64,
    /// Of those messages, the ones written in a chain's form.
    pub(crate) chained: AtomicU64,
    /// Compressed messages in: their bytes, and once inflated.
    pub(crate) in_compressed: AtomicU64,
    pub(crate) in_inflated: AtomicU64,
}

impl DeflateCounters {
    /// Messages of `before` bytes in all went out as `after` bytes,
    /// `chained` of them in a chain's form.
    pub(crate) fn out(&self, before: u64, after: u64, chained: u64) {
        self.out_before.fetch_add(before, Ordering::Relaxed);
        self.out_after.fetch_add(after, Ordering::Relaxed);
        self.chained.fetch_add(chained, Ordering::Relaxed);
    }

    /// A message came in as `compressed` bytes and inflated to `inflated`.
    pub(crate) fn inflated(&self, compressed: usize, inflated: usize) {
        (self.in_compressed).fetch_add(compressed as u64, Ordering::Relaxed);
        (self.in_inflated).fetch_add(inflated as u64, Ordering::Relaxed);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    fn offered(values: &[&str]) -> Option<(Agreed, String)> {
        let mut headers = HeaderMap::new();
        for value in values {
            headers.append(
                SEC_WEBSOCKET_EXTENSIONS,
                HeaderValue::from_str(value).unwrap(),
            );
        }
        negotiate(&headers).map(|(agreed, answer)| (agreed, answer.to_str().unwrap().to_owned()))
    }

    pub(crate) const PLAIN: Agreed = Agreed {
        server_bits: 15,
        client_no_context: false,
        server_no_context: false,
    };

    #[test]
    fn the_answer_says_exactly_what_the_server_does() {
        let answer = |values: &[&str]| offered(values).map(|(_, answer)| answer);
        assert_eq!(
            offered(&["permessage-deflate"]),
            Some((PLAIN, "permessage-deflate".into()))
        );
        // What a browser offers: the server takes its context over.
        assert_eq!(
            answer(&["permessage-deflate; client_max_window_bits"]).as_deref(),
            Some("permessage-deflate")
        );
        assert_eq!(
            offered(&["permessage-deflate; client_no_context_takeover; server_max_window_bits=10"]),
            Some((
                Agreed {
                    server_bits: 10,
                    client_no_context: true,
                    server_no_context: false,
                },
                "permessage-deflate; client_no_context_takeover; server_max_window_bits=10".into()
            ))
        );
        let (agreed, answer) = offered(&[
            "PerMessage-Deflate ; Server_No_Context_Takeover ; client_max_window_bits=\"12\"",
        ])
        .unwrap();
        assert_eq!(answer, "permessage-deflate; server_no_context_takeover");
        assert!(agreed.server_no_context);
        assert_eq!(agreed.place().map(|_| ()), None, "no chain without context");
        assert_eq!(PLAIN.place().map(|_| ()), Some(()));
        let small = Agreed {
            server_bits: 11,
            ..PLAIN
        };
        assert_eq!(
            small.place().map(|_| ()),
            None,
            "no chain in a small window"
        );
        assert_eq!(offered(&[]), None);
        assert_eq!(offered(&["x-webkit-deflate-frame"]), None);
    }

    #[test]
    fn the_first_offer_that_can_be_taken_wins() {
        // Several offers in one header, and across headers; a malformed
        // one is passed over, a quoted comma does not split.
        let (agreed, _) = offered(&[
            "permessage-deflate; server_max_window_bits=16, foo; bar=\"a,b\", \
             permessage-deflate; server_max_window_bits=9",
            "permessage-deflate",
        ])
        .unwrap();
        assert_eq!(agreed.server_bits, 9);
        let (agreed, _) = offered(&[
            "permessage-deflate; nope",
            "permessage-deflate; client_no_context_takeover",
        ])
        .unwrap();
        assert!(agreed.client_no_context);
    }

    #[test]
    fn malformed_offers_are_declined() {
        for bad in [
            "permessage-deflate; server_max_window_bits",
            "permessage-deflate; server_max_window_bits=7",
            "permessage-deflate; server_max_window_bits=16",
            "permessage-deflate; server_max_window_bits=010",
            "permessage-deflate; server_max_window_bits=1a",
            "permessage-deflate; client_max_window_bits=0",
            "permessage-deflate; server_no_context_takeover; server_no_context_takeover",
            "permessage-deflate; client_max_window_bits; client_max_window_bits=9",
            "permessage-deflate; server_no_context_takeover=yes",
            "permessage-deflate; unknown",
        ] {
            assert_eq!(offered(&[bad]), None, "{bad}");
        }
    }
}
