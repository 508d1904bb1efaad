//! Entry points for the fuzz targets under `fuzz/` (built by `cargo fuzz`,
//! which passes `--cfg fuzzing`): the parsers of client input, with the
//! invariants their callers rely on asserted. Not part of the API.

use std::pin::Pin;
use std::task::{Context, Poll, Waker};

use futures_util::{Sink, Stream};
use hyper::header::{self, HeaderMap, HeaderValue};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::admission::check_origin;
use crate::codec::Socket;
use crate::deflate::{self, Agreed};
use crate::frame::Frame;
use crate::Origins;

/// A client's bytes, handed over `chunk` at a time; what the server
/// writes is counted.
struct Wire<'a> {
    input: &'a [u8],
    chunk: usize,
    written: usize,
}

impl AsyncRead for Wire<'_> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        let n = self.input.len().min(self.chunk).min(buf.remaining());
        buf.put_slice(&self.input[..n]);
        self.input = &self.input[n..];
        Poll::Ready(Ok(()))
    }
}

impl AsyncWrite for Wire<'_> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        _: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        self.written += buf.len();
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }

    fn poll_shutdown(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Poll::Ready(Ok(()))
    }
}

/// The WebSocket frame reader on a client's bytes (`data[0]` sets how
/// many bytes each read returns; limits of 1 KiB per frame and 4 KiB
/// per message), then a close frame written back.
///
/// Never panics or loops; every frame is within the limits; nothing is
/// read after an error or the client's close; the server never writes
/// more than the pongs and close it owes.
pub fn frames(data: &[u8]) {
    read_frames(data, None);
}

/// As [`frames`], on a socket that agreed on `permessage-deflate`
/// (`data[0]`'s top bit: with the client's context kept or not): client
/// messages with RSV1 are inflated, and never past the 4 KiB limit,
/// however they were deflated (a bomb stops at the limit, 1009).
pub fn inflate(data: &[u8]) {
    let Some(first) = data.first() else {
        return;
    };
    let agreed = Agreed {
        server_bits: 15,
        client_no_context: first & 0x80 != 0,
        server_no_context: false,
    };
    read_frames(data, Some(agreed));
}

/// Messages deflated for four clients that keep their windows, in chains
/// and on their own: every client inflates exactly what was sent to it,
/// whatever it missed, got again, or got alone.
///
/// Input: one command per byte, for client `byte & 3`: by `byte >> 2 & 3`,
/// it gets its next broadcast line, skips it, gets a message of its own,
/// or goes back `byte >> 4` lines (a line again, as after a refill). Line
/// lengths (0 to 300 bytes) follow the bytes too.
pub fn chains(data: &[u8]) {
    use bytes::Bytes;
    const WORDS: [&str; 8] = [
        "build", "merge", "a", "coffee", "deploy", "", "friday", "ok",
    ];
    let make = |n: usize, seed: u8| {
        let len = (usize::from(seed) * 37 + n * 11) % 300;
        let mut text = format!("{n}:");
        while text.len() < len {
            text.push_str(WORDS[(n * 5 + text.len()) % 8]);
            text.push(' ');
        }
        text.truncate(len);
        Bytes::from(text)
    };
    let agreed = Agreed {
        server_bits: 15,
        client_no_context: false,
        server_no_context: false,
    };
    let cache = deflate::Deflated::default();
    let mut lines: Vec<Bytes> = Vec::new();
    let mut clients: Vec<_> = (0..4)
        .map(|_| (deflate::Inflater::new(agreed), agreed.place(), 0usize))
        .collect();
    for (i, &byte) in data.iter().take(4096).enumerate() {
        let (inflater, place, next) = &mut clients[usize::from(byte & 3)];
        let message = match byte >> 2 & 3 {
            0 => {
                while lines.len() <= *next {
                    lines.push(make(lines.len(), byte));
                }
                *next += 1;
                lines[*next - 1].clone()
            }
            1 => {
                *next += 1;
                continue;
            }
            2 => Bytes::from(make(i, byte).to_vec()),
            _ => {
                *next = next.saturating_sub(usize::from(byte >> 4));
                continue;
            }
        };
        let sent = cache.with(&message, 15, place.as_mut(), |form, _| form.cloned());
        if let Some(form) = sent {
            let inflated = inflater
                .inflate(&form, 1 << 20)
                .expect("what was sent inflates");
            assert_eq!(inflated, message, "what was sent inflates back");
        }
    }
}

/// `Sec-WebSocket-Extensions` values (raw bytes, split at newlines into
/// several headers) negotiated.
///
/// Never panics; the answer, if any, is `permessage-deflate`, with
/// `server_no_context_takeover` exactly when the server agreed to it, and
/// offered back to the negotiation it is taken as it is.
pub fn extensions(data: &[u8]) {
    let mut headers = HeaderMap::new();
    for value in data.split(|b| *b == b'\n') {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            headers.append(header::SEC_WEBSOCKET_EXTENSIONS, value);
        }
    }
    let Some((agreed, answer)) = deflate::negotiate(&headers) else {
        return;
    };
    assert!((8..=15).contains(&agreed.server_bits));
    let text = answer.to_str().expect("an answer is ASCII");
    assert!(text.starts_with("permessage-deflate"));
    assert_eq!(
        text.contains("server_no_context_takeover"),
        agreed.server_no_context
    );
    let mut again = HeaderMap::new();
    again.insert(header::SEC_WEBSOCKET_EXTENSIONS, answer.clone());
    let (agreed_again, answer_again) = deflate::negotiate(&again).expect("the answer is an offer");
    assert_eq!((agreed_again, answer_again), (agreed, answer));
}

fn read_frames(data: &[u8], deflate: Option<Agreed>) {
    let Some((first, input)) = data.split_first() else {
        return;
    };
    let wire = Wire {
        input,
        chunk: usize::from(*first % 64) + 1,
        written: 0,
    };
    let mut socket = Socket::new(wire, 4096, 1024);
    if let Some(agreed) = deflate {
        let shared = std::sync::Arc::default();
        socket = socket.with_deflate(agreed, shared, std::sync::Arc::default());
    }
    let mut cx = Context::from_waker(Waker::noop());
    let mut frames = 0;
    let mut ended = false;
    // Each frame takes at least two bytes.
    for _ in 0..=input.len() {
        match Pin::new(&mut socket).poll_next(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => {
                frames += 1;
                assert!(!ended, "a frame after the end");
                match frame {
                    Frame::Message(message) => assert!(message.len() <= 4096),
                    Frame::Ping(bytes) | Frame::Pong(bytes) => assert!(bytes.len() <= 125),
                    Frame::Close(close) => {
                        assert!(close.is_none_or(|c| c.reason().len() <= 123));
                        ended = true;
                    }
                }
            }
            Poll::Ready(Some(Err(_))) => ended = true,
            Poll::Ready(None) => break,
            Poll::Pending => unreachable!("the wire never waits"),
        }
    }
    assert!(frames <= input.len() / 2 + 1);
    let close = Frame::Close(Some(crate::Close::new(crate::CloseCode::NORMAL, "bye")));
    let mut socket = Pin::new(&mut socket);
    assert!(matches!(
        socket.as_mut().poll_ready(&mut cx),
        Poll::Ready(Ok(()))
    ));
    assert!(socket.as_mut().start_send(close).is_ok());
    assert!(matches!(
        socket.as_mut().poll_flush(&mut cx),
        Poll::Ready(Ok(()))
    ));
    // Pongs of at most 125 bytes, one per ping, and one close.
    let written = Pin::into_inner(socket).get_ref().written;
    assert!(
        written <= (frames + 1) * 127 + 2 + 5,
        "{written} bytes written"
    );
}

/// An authority without its port, if it has one.
fn host_name(authority: &str) -> &str {
    match authority.rsplit_once(':') {
        Some((name, port))
            if port.bytes().all(|b| b.is_ascii_digit())
                && (name.ends_with(']') || !name.contains(':')) =>
        {
            name
        }
        _ => authority,
    }
}

/// `check_origin` on a handshake with this `Origin` (raw header bytes),
/// this `Host` (if any) and these allowed-origin patterns.
///
/// Never panics; `Origins::Any` and a missing `Origin` always pass;
/// without patterns only the same origin passes; the verdict ignores
/// ASCII case; a wildcard never admits its bare domain.
pub fn origin(origin: &[u8], host: Option<&[u8]>, allowed: &[String]) {
    // Values hyper would not have parsed never reach the check.
    let Ok(origin_value) = HeaderValue::from_bytes(origin) else {
        return;
    };
    let mut headers = HeaderMap::new();
    if let Some(host) = host {
        let Ok(host) = HeaderValue::from_bytes(host) else {
            return;
        };
        headers.insert(header::HOST, host);
    }
    assert!(
        check_origin(&headers, &Origins::SameOrAllowed(allowed.to_vec()), None).is_ok(),
        "no Origin"
    );
    headers.insert(header::ORIGIN, origin_value);
    assert!(check_origin(&headers, &Origins::Any, None).is_ok());
    let verdict = check_origin(&headers, &Origins::SameOrAllowed(allowed.to_vec()), None).is_ok();
    let same = check_origin(&headers, &Origins::default(), None).is_ok();
    if same {
        assert!(verdict, "more patterns never refuse the same origin");
        let origin = headers[header::ORIGIN].to_str().unwrap_or_default();
        let host = headers
            .get(header::HOST)
            .and_then(|host| host.to_str().ok())
            .unwrap_or_default();
        // The same host; ports may be written differently (`h` and
        // `h:80` are one origin for `http://`).
        let authority = origin.split_once("://").map(|(_, rest)| rest);
        let authority = authority.map(|rest| rest.trim_end_matches('/'));
        assert!(
            authority.is_some_and(
                |a| !a.is_empty() && host_name(a).eq_ignore_ascii_case(host_name(host))
            ),
            "same origin: {origin:?} for host {host:?}"
        );
    }
    // ASCII case does not matter, in the Origin, the Host or a pattern.
    let mut upper = headers.clone();
    for name in [header::ORIGIN, header::HOST] {
        if let Some(value) = headers.get(&name) {
            let value = value.as_bytes().to_ascii_uppercase();
            if let Ok(value) = HeaderValue::from_bytes(&value) {
                upper.insert(name, value);
            }
        }
    }
    let upper_allowed: Vec<String> = allowed.iter().map(|p| p.to_ascii_uppercase()).collect();
    assert_eq!(
        check_origin(
            &upper,
            &Origins::SameOrAllowed(upper_allowed.to_vec()),
            None
        )
        .is_ok(),
        verdict,
        "case changed the verdict: {headers:?}, {allowed:?}"
    );
    // `*.example.com` admits subdomains, not `example.com` itself.
    for domain in allowed.iter().filter_map(|p| p.strip_prefix("*.")) {
        let wildcard = [format!("*.{domain}")];
        for bare in [format!("https://{domain}"), format!("https://{domain}:443")] {
            let Ok(bare) = HeaderValue::from_str(&bare) else {
                continue;
            };
            // No Host: the same-origin rule stays out of it.
            let mut headers = HeaderMap::new();
            headers.insert(header::ORIGIN, bare);
            assert!(
                check_origin(&headers, &Origins::SameOrAllowed(wildcard.to_vec()), None).is_err(),
                "{wildcard:?} admitted {headers:?}"
            );
        }
    }
}
