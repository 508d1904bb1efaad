//! Compression (`permessage-deflate`, RFC 7692): what the client offers and
//! what the server answers, messages deflated once and shared by every
//! socket they go to, and client messages inflated within the size limit.
//!
//! The server always compresses with `server_no_context_takeover`: each
//! message is deflated on its own, so its compressed bytes are the same
//! for every client, and a broadcast is deflated once for all of them
//! ([`Deflated`]). Messages under [`MIN_DEFLATE`] bytes, and those that
//! deflate would not shrink, go out uncompressed (RSV1 clear), which the
//! extension allows for any message.
//!
//! Client messages are inflated with the context the client keeps: from
//! scratch for each message if the client offered
//! `client_no_context_takeover` (the answer then includes it, and the
//! socket keeps no inflate state between messages), and with one sliding
//! window kept for the connection otherwise. Inflating stops at the
//! message size limit.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use bytes::Bytes;
use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress, Status};
use hyper::header::{HeaderMap, HeaderValue, SEC_WEBSOCKET_EXTENSIONS};

use crate::frame::ReadError;

/// Messages shorter than this are never deflated: deflate's own overhead
/// (a block header and the flush marker) takes back most of what it could
/// save on them, and the work is not worth the few bytes left.
pub(crate) const MIN_DEFLATE: usize = 64;

/// The extension's name in `Sec-WebSocket-Extensions`.
const NAME: &str = "permessage-deflate";

/// The four bytes every flushed deflate block ends with; RFC 7692 takes
/// them off each message, and the reader puts them back.
const TAIL: [u8; 4] = [0x00, 0x00, 0xFF, 0xFF];

/// Recent messages whose deflated form is kept, per shard: readers of a
/// busy room are thousands of messages apart, and each should find the
/// form the first one made.
const SHARD_ENTRIES: usize = 4096;
/// Bytes of originals kept per shard (their deflated forms are smaller).
/// The originals are mostly held by history anyway; what the cache adds
/// is their deflated forms, up to 16 MiB in all.
const SHARD_BYTES: usize = 1 << 20;
/// Shards of the cache: sockets on different threads rarely wait for one
/// another.
const SHARDS: usize = 16;
/// Answers each thread keeps in front of the shared cache.
const RECENT_ENTRIES: usize = 1024;

/// What the server and one client agreed on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Agreed {
    /// The most window bits the server may use (8 to 15). With 8, which
    /// zlib cannot deflate within, messages go out uncompressed.
    pub(crate) server_bits: u8,
    /// The client deflates each message from scratch.
    pub(crate) client_no_context: bool,
}

/// One `permessage-deflate` offer, checked.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Offer {
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
    let mut answer = format!("{NAME}; server_no_context_takeover");
    if offer.client_no_context {
        answer.push_str("; client_no_context_takeover");
    }
    if let Some(bits) = offer.server_bits {
        answer.push_str(&format!("; server_max_window_bits={bits}"));
    }
    let agreed = Agreed {
        server_bits: offer.server_bits.unwrap_or(15),
        client_no_context: offer.client_no_context,
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
    let (mut server_no_context, mut client_bits) = (false, false);
    for param in parts {
        let (key, value) = match param.split_once('=') {
            Some((key, value)) => (key.trim(), Some(unquote(value.trim()))),
            None => (param.trim(), None),
        };
        let key = key.to_ascii_lowercase();
        let fresh = match (key.as_str(), value) {
            ("server_no_context_takeover", None) => {
                !std::mem::replace(&mut server_no_context, true)
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

/// `payload` deflated on its own (no context taken over) with a window of
/// `bits`, without the flush marker; `None` when that would not be
/// shorter, or cannot be done within the window.
pub(crate) fn deflate(payload: &[u8], bits: u8) -> Option<Bytes> {
    if payload.len() < MIN_DEFLATE || !(9..=15).contains(&bits) {
        return None;
    }
    thread_local! {
        /// A compressor per window size, reset for each message: making
        /// one allocates a few hundred kilobytes.
        static COMPRESSORS: RefCell<[Option<Compress>; 7]> = const { RefCell::new([const { None }; 7]) };
    }
    COMPRESSORS.with(|compressors| {
        let mut compressors = compressors.borrow_mut();
        let slot = &mut compressors[usize::from(bits - 9)];
        let compress = slot.get_or_insert_with(|| {
            Compress::new_with_window_bits(Compression::default(), false, bits)
        });
        compress.reset();
        let mut out = Vec::with_capacity(payload.len() + 16);
        loop {
            let consumed = usize::try_from(compress.total_in()).ok()?;
            let status = compress
                .compress_vec(&payload[consumed..], &mut out, FlushCompress::Sync)
                .ok()?;
            let done = compress.total_in() == payload.len() as u64
                && out.len() < out.capacity()
                && status != Status::BufError;
            if done {
                break;
            }
            if out.len() > payload.len() + TAIL.len() {
                return None;
            }
            out.reserve(256);
        }
        if !out.ends_with(&TAIL) {
            return None;
        }
        out.truncate(out.len() - TAIL.len());
        (out.len() < payload.len()).then(|| Bytes::from(out))
    })
}

/// Bytes through compression, on a server's sockets.
#[derive(Debug, Default)]
pub(crate) struct DeflateCounters {
    /// Messages out to compressing sockets: their bytes, and the bytes
    /// written for them (deflated, or as they are).
    pub(crate) out_before: AtomicU64,
    pub(crate) out_after: AtomicU64,
    /// Compressed messages in: their bytes, and once inflated.
    pub(crate) in_compressed: AtomicU64,
    pub(crate) in_inflated: AtomicU64,
}

impl DeflateCounters {
    /// Messages of `before` bytes in all went out as `after` bytes.
    pub(crate) fn out(&self, before: u64, after: u64) {
        self.out_before.fetch_add(before, Ordering::Relaxed);
        self.out_after.fetch_add(after, Ordering::Relaxed);
    }

    /// A message came in as `compressed` bytes and inflated to `inflated`.
    pub(crate) fn inflated(&self, compressed: usize, inflated: usize) {
        (self.in_compressed).fetch_add(compressed as u64, Ordering::Relaxed);
        (self.in_inflated).fetch_add(inflated as u64, Ordering::Relaxed);
    }
}

/// A client's messages, inflated.
#[derive(Debug, Default)]
pub(crate) struct Inflater {
    /// Kept between messages only when the client takes its context over.
    state: Option<Box<Decompress>>,
    keep: bool,
}

impl Inflater {
    pub(crate) fn new(agreed: Agreed) -> Self {
        Self {
            state: None,
            keep: !agreed.client_no_context,
        }
    }

    /// Inflates one message (the RFC 7692 tail is put back here), up to
    /// `limit` bytes.
    ///
    /// # Errors
    ///
    /// [`ReadError::TooBig`] past the limit (nothing past it is
    /// allocated), [`ReadError::Protocol`] for data that is not deflate.
    pub(crate) fn inflate(&mut self, data: &[u8], limit: usize) -> Result<Vec<u8>, ReadError> {
        let state = self
            .state
            .get_or_insert_with(|| Box::new(Decompress::new_with_window_bits(false, 15)));
        let mut out = Vec::with_capacity(data.len().saturating_mul(3).min(limit).max(64));
        let result = inflate_into(state, data, &mut out, limit)
            .and_then(|()| inflate_into(state, &TAIL, &mut out, limit));
        if !self.keep || result.is_err() {
            self.state = None;
        }
        result.map(|()| out)
    }
}

/// Feeds `input` to `state`, appending what comes out to `out`, never
/// past `limit` bytes.
fn inflate_into(
    state: &mut Decompress,
    input: &[u8],
    out: &mut Vec<u8>,
    limit: usize,
) -> Result<(), ReadError> {
    let start = state.total_in();
    loop {
        let consumed = usize::try_from(state.total_in() - start).unwrap_or(usize::MAX);
        if consumed >= input.len() && out.len() < out.capacity() {
            return Ok(());
        }
        if out.len() == out.capacity() {
            if out.len() >= limit {
                // Full at the limit with more to come: one byte more
                // would be too many.
                let mut probe = [0u8; 1];
                let before = state.total_out();
                let rest = input.get(consumed..).unwrap_or_default();
                state
                    .decompress(rest, &mut probe, FlushDecompress::Sync)
                    .map_err(|_| ReadError::Protocol)?;
                if state.total_out() > before {
                    return Err(ReadError::TooBig);
                }
                let done = state.total_in() - start >= input.len() as u64;
                if done || state.total_in() == consumed as u64 + start {
                    return Ok(());
                }
                continue;
            }
            let room = out.capacity().max(64).min(limit - out.len());
            out.reserve_exact(room);
        }
        let rest = input.get(consumed..).unwrap_or_default();
        let before = (state.total_in(), state.total_out());
        state
            .decompress_vec(rest, out, FlushDecompress::Sync)
            .map_err(|_| ReadError::Protocol)?;
        if (state.total_in(), state.total_out()) == before && out.len() < out.capacity() {
            // No progress with room to spare: the input is spent.
            return Ok(());
        }
    }
}

/// Deflated forms of recent messages, shared by every socket of a server:
/// a broadcast to N compressing clients is deflated once.
///
/// An entry is found by the message's buffer (its address and length)
/// and keeps that buffer, so the address cannot be reused by another
/// message while the entry lives. Each shard keeps its most recent
/// entries, a bounded number and size of them; a reader far behind may
/// find its message gone and deflate it again. In front of it, each
/// thread keeps its last few answers (and their buffers), which serve
/// the sockets of a fan-out without taking a lock.
#[derive(Debug)]
pub(crate) struct Deflated {
    shards: Box<[Mutex<Shard>]>,
}

#[derive(Debug, Default)]
struct Shard {
    /// By the message buffer's address, length and window bits.
    entries: HashMap<Key, Entry, BuildHasherDefault<KeyHasher>>,
    /// The entries' keys, oldest first.
    order: VecDeque<Key>,
    /// Bytes of the originals kept.
    bytes: usize,
}

/// A message buffer's address and length, and the window bits.
type Key = (usize, usize, u8);

/// A thread's latest answers, by key; each keeps its original buffer, so
/// that the address is not reused while it is kept.
#[derive(Debug, Default)]
struct Recent {
    answers: HashMap<Key, (Bytes, Option<Bytes>), BuildHasherDefault<KeyHasher>>,
    order: VecDeque<Key>,
}

impl Recent {
    fn get(&self, key: &Key) -> Option<&Option<Bytes>> {
        self.answers.get(key).map(|(_, deflated)| deflated)
    }

    fn insert(&mut self, key: Key, original: &Bytes, deflated: Option<Bytes>) {
        if self.order.len() >= RECENT_ENTRIES {
            if let Some(old) = self.order.pop_front() {
                self.answers.remove(&old);
            }
        }
        if (self.answers.insert(key, (original.clone(), deflated))).is_none() {
            self.order.push_back(key);
        }
    }
}

/// Hashes a key of addresses and lengths, which need no defence against
/// chosen collisions (clients choose neither), in a few instructions.
#[derive(Debug, Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.write_u64(u64::from(*byte));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7C_C1_B7_27_22_0A_95);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

#[derive(Debug)]
struct Entry {
    /// Kept, so that its address is not reused while the entry lives.
    original: Bytes,
    deflated: Arc<OnceLock<Option<Bytes>>>,
}

impl Default for Deflated {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
        }
    }
}

impl Deflated {
    /// `payload` deflated with a window of `bits`, made once for every
    /// socket that asks while it is kept; `None` to send it as it is.
    #[cfg(test)]
    pub(crate) fn get(&self, payload: &Bytes, bits: u8) -> Option<Bytes> {
        self.with(payload, bits, |deflated| deflated.cloned())
    }

    /// Calls `f` with `payload`'s deflated form with a window of `bits`,
    /// made once for every socket that asks while it is kept (`None`: send
    /// it as it is), lent rather than cloned: a socket that copies a
    /// short frame does not touch the buffer's reference count, which every
    /// other socket of the fan-out would contend for.
    pub(crate) fn with<R>(
        &self,
        payload: &Bytes,
        bits: u8,
        f: impl FnOnce(Option<&Bytes>) -> R,
    ) -> R {
        if payload.len() < MIN_DEFLATE || bits < 9 {
            return f(None);
        }
        // Each thread keeps the answers it had lately, found without a
        // lock: the sockets of a fan-out ask for the same few messages.
        thread_local! {
            static RECENT: RefCell<Recent> = RefCell::default();
        }
        let key = (payload.as_ptr() as usize, payload.len(), bits);
        let found = RECENT.with_borrow(move |recent| match recent.get(&key) {
            Some(deflated) => Ok(f(deflated.as_ref())),
            None => Err(f),
        });
        let f = match found {
            Ok(answer) => return answer,
            Err(f) => f,
        };
        let deflated = self.shared(payload, bits);
        let answer = f(deflated.as_ref());
        RECENT.with_borrow_mut(|recent| recent.insert(key, payload, deflated));
        answer
    }

    /// The deflated form, from the cache every thread shares.
    fn shared(&self, payload: &Bytes, bits: u8) -> Option<Bytes> {
        let key = (payload.as_ptr() as usize, payload.len(), bits);
        let shard = &self.shards[(key.0 >> 6) % SHARDS];
        let slot = {
            let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
            match shard.entries.get(&key) {
                Some(entry) => Arc::clone(&entry.deflated),
                None => {
                    let slot = Arc::new(OnceLock::new());
                    let entry = Entry {
                        original: payload.clone(),
                        deflated: Arc::clone(&slot),
                    };
                    shard.entries.insert(key, entry);
                    shard.order.push_back(key);
                    shard.bytes += payload.len();
                    while shard.order.len() > SHARD_ENTRIES || shard.bytes > SHARD_BYTES {
                        let Some(old) = shard.order.pop_front() else {
                            break;
                        };
                        if let Some(old) = shard.entries.remove(&old) {
                            shard.bytes -= old.original.len().min(shard.bytes);
                        }
                    }
                    slot
                }
            }
        };
        // Made outside the shard's lock; a second asker waits for the
        // first rather than deflating again.
        slot.get_or_init(|| deflate(payload, bits)).clone()
    }
}

#[cfg(test)]
mod tests {
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

    const PLAIN: Agreed = Agreed {
        server_bits: 15,
        client_no_context: false,
    };

    #[test]
    fn the_answer_says_exactly_what_the_server_does() {
        let answer = |values: &[&str]| offered(values).map(|(_, answer)| answer);
        assert_eq!(
            offered(&["permessage-deflate"]),
            Some((
                PLAIN,
                "permessage-deflate; server_no_context_takeover".into()
            ))
        );
        // What a browser offers.
        assert_eq!(
            answer(&["permessage-deflate; client_max_window_bits"]).as_deref(),
            Some("permessage-deflate; server_no_context_takeover")
        );
        assert_eq!(
            offered(&["permessage-deflate; client_no_context_takeover; server_max_window_bits=10"]),
            Some((
                Agreed {
                    server_bits: 10,
                    client_no_context: true
                },
                "permessage-deflate; server_no_context_takeover; client_no_context_takeover; \
                 server_max_window_bits=10"
                    .into()
            ))
        );
        assert_eq!(
            answer(&[
                "PerMessage-Deflate ; Server_No_Context_Takeover ; client_max_window_bits=\"12\""
            ])
            .as_deref(),
            Some("permessage-deflate; server_no_context_takeover")
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

    #[test]
    fn deflated_messages_inflate_back_whatever_the_window() {
        let text = br#"{"type":"message","room":"lobby","epoch":"12345","offset":7,"from":"ann","text":"hello hello hello","time":1700000000}"#;
        for bits in 9..=15 {
            let deflated = deflate(text, bits).expect("shorter");
            assert!(deflated.len() < text.len());
            let mut inflater = Inflater::new(PLAIN);
            assert_eq!(inflater.inflate(&deflated, 1 << 20).unwrap(), text);
        }
        // Too short, or not shorter: sent as it is.
        assert_eq!(deflate(b"hi", 15), None);
        let noise: Vec<u8> = (0..200u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        assert_eq!(deflate(&noise, 15), None);
        assert_eq!(deflate(text, 8), None);
    }

    #[test]
    fn inflating_stops_at_the_limit() {
        let big = vec![b'a'; 1 << 20];
        let deflated = deflate(&big, 15).unwrap();
        assert!(deflated.len() < 2048, "a bomb: {} bytes", deflated.len());
        let mut inflater = Inflater::new(PLAIN);
        assert_eq!(
            inflater.inflate(&deflated, (1 << 20) - 1),
            Err(ReadError::TooBig)
        );
        assert_eq!(inflater.inflate(&deflated, 1 << 20).unwrap().len(), 1 << 20);
        assert_eq!(
            inflater.inflate(b"\xff\xff\xff", 100),
            Err(ReadError::Protocol)
        );
    }

    #[test]
    fn a_kept_context_spans_messages() {
        // A client taking its context over: its second message refers to
        // the first.
        let mut compress = Compress::new(Compression::default(), false);
        let mut wire = Vec::new();
        let mut messages = Vec::new();
        for text in [
            "the same words again and again",
            "the same words again and again!",
        ] {
            let mut out = Vec::with_capacity(256);
            compress
                .compress_vec(text.as_bytes(), &mut out, FlushCompress::Sync)
                .unwrap();
            out.truncate(out.len() - 4);
            wire.push(out);
            messages.push(text);
        }
        let mut kept = Inflater::new(PLAIN);
        for (data, text) in wire.iter().zip(&messages) {
            assert_eq!(kept.inflate(data, 1024).unwrap(), text.as_bytes());
        }
        assert!(kept.state.is_some());
        let mut fresh = Inflater::new(Agreed {
            server_bits: 15,
            client_no_context: true,
        });
        assert_eq!(
            fresh.inflate(&wire[0], 1024).unwrap(),
            messages[0].as_bytes()
        );
        assert!(fresh.state.is_none(), "nothing kept between messages");
    }

    #[test]
    fn a_message_is_deflated_once_for_every_socket() {
        let cache = Deflated::default();
        let line = Bytes::from(vec![b'x'; 500]);
        let first = cache.get(&line, 15).unwrap();
        let again = cache.get(&line.clone(), 15).unwrap();
        assert_eq!(first.as_ptr(), again.as_ptr(), "shared, not made twice");
        // Another buffer with the same bytes is another message.
        let copy = Bytes::from(line.to_vec());
        assert_ne!(cache.get(&copy, 15).unwrap().as_ptr(), first.as_ptr());
        assert_eq!(cache.get(&Bytes::from_static(b"short"), 15), None);
        // Bounded: old entries go.
        for _ in 0..20_000 {
            cache.get(&Bytes::from(vec![b'y'; 1000]), 15);
        }
        let kept: usize = cache
            .shards
            .iter()
            .map(|s| s.lock().unwrap().entries.len())
            .sum();
        assert!(kept <= SHARDS * SHARD_ENTRIES);
    }
}
