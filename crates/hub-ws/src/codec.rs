//! The server side of the WebSocket framing (RFC 6455, section 5) over any
//! byte stream, for sessions upgraded through hyper or plain TCP.
//!
//! Two things make it fit a broadcast server better than a general
//! WebSocket library:
//!
//! - Writes share the message's bytes: a broadcast reaches every socket as
//!   the same reference-counted buffer, behind a small per-socket header,
//!   written with vectored I/O (server frames are not masked, so the bytes
//!   on the wire are the same for everyone). Small payloads are copied next
//!   to their header instead, where one copy is cheaper than one more
//!   buffer to write. Nothing is re-validated on the way out: a hub text is
//!   UTF-8 already.
//! - An idle connection holds no buffer: reads go through a small buffer on
//!   the stack and only what is read is kept, until the frames in it are
//!   taken out.

use std::collections::VecDeque;
use std::io::{self, IoSlice};
use std::mem::MaybeUninit;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes, BytesMut};
use futures_util::{Sink, Stream};
use hub::{Message, Text};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};

use crate::deflate::{Agreed, DeflateCounters, Deflated, Inflater, Place};
use crate::frame::{Frame, ReadError};
use crate::wire::{self, Header, Opcode};
use crate::{Close, CloseCode};

/// Bytes read at once (on the stack).
const READ_CHUNK: usize = 4096;
/// Payloads up to this size are copied next to their header.
const INLINE: usize = 512;
/// Room the frame buffer is first given, and about the most it keeps
/// between writes while messages flow. A quiet connection gives it back
/// (see [`Socket::quiet`]).
const SCRATCH_ROOM: usize = 1024;
/// Room added at once when a batch outgrows the first; a buffer that large
/// goes with its frames and is freed once they are written.
const SCRATCH_BURST: usize = 16 * 1024;
/// Buffers handed to one vectored write.
const MAX_IOV: usize = 64;
/// Past this many bytes waiting to be written, `poll_ready` writes first,
/// and nothing more is read from the client until it takes them.
const HIGH_WATER: usize = 1 << 20;
/// Most room reserved at once for a frame still arriving: the buffer
/// grows with the payload actually received, never with the length a
/// header claims.
const RESERVE_AHEAD: usize = 64 * 1024;
/// Most bytes gathered into one write on a stream without vectored writes.
const COALESCE: usize = 64 * 1024;

/// A WebSocket server socket: a `Stream` of the client's [`Frame`]s and a
/// `Sink` of ours. Answers pings and the client's close frame by itself.
pub(crate) struct Socket<S> {
    io: S,
    max_message: usize,
    max_frame: usize,
    /// Read and not yet parsed; empty (unallocated) when idle.
    read: BytesMut,
    /// A fragmented message being put together.
    partial: Option<Partial>,
    /// No more frames will be read: the client closed, or broke the
    /// protocol.
    read_done: bool,
    /// Buffers to write, in order; what `scratch` holds follows them.
    out: VecDeque<Bytes>,
    /// Bytes waiting to be written, in `out` and `scratch`.
    out_len: usize,
    /// Frames being put together: headers, and small payloads next to
    /// them. Consecutive small frames share one buffer (one entry of
    /// `out`), split off only when a shared payload follows or the socket
    /// is written to.
    scratch: BytesMut,
    /// The answer to the latest ping, not yet queued (at most one: RFC
    /// 6455 allows answering only the most recent).
    pong: Option<Bytes>,
    /// Bytes still to write up to the end of the pong last queued; 0 once
    /// it is written. The next pong waits for it, so output holds at most
    /// one pong however many pings a client sends without reading.
    pong_ahead: usize,
    /// Our close frame is queued: nothing may follow it.
    close_sent: bool,
    /// A message was queued since the latest ping.
    sent_since_ping: bool,
    /// A ping found no message since the one before: the connection is
    /// quiet, and gives back its frame buffer once the ping is written.
    quiet: bool,
    /// `permessage-deflate`, when the client and server agreed on it.
    deflate: Option<Box<SocketDeflate>>,
}

/// A compressing socket's side of `permessage-deflate`.
#[derive(Debug)]
struct SocketDeflate {
    agreed: Agreed,
    inflater: Inflater,
    /// What the client's window ends with, when the socket may put it in
    /// a chain.
    place: Option<Place>,
    /// Deflated forms of recent messages, shared with the server's other
    /// sockets.
    shared: Arc<Deflated>,
    counters: Arc<DeflateCounters>,
    /// Bytes of the messages queued since the last flush, and bytes
    /// written for them: counted in `counters` once per flush, not per
    /// message.
    out_before: u64,
    out_after: u64,
    chained: u64,
}

impl<S> Socket<S> {
    /// A socket over a stream whose handshake is done.
    pub(crate) fn new(io: S, max_message: usize, max_frame: usize) -> Self {
        Self {
            io,
            max_message,
            max_frame: max_frame.min(max_message),
            read: BytesMut::new(),
            partial: None,
            read_done: false,
            out: VecDeque::new(),
            out_len: 0,
            scratch: BytesMut::new(),
            pong: None,
            pong_ahead: 0,
            close_sent: false,
            sent_since_ping: false,
            quiet: false,
            deflate: None,
        }
    }

    /// Compresses as agreed with the client: messages out are deflated
    /// (once for every socket of `shared`), messages in are inflated.
    pub(crate) fn with_deflate(
        mut self,
        agreed: Agreed,
        shared: Arc<Deflated>,
        counters: Arc<DeflateCounters>,
    ) -> Self {
        self.deflate = Some(Box::new(SocketDeflate {
            agreed,
            inflater: Inflater::new(agreed),
            place: agreed.place(),
            shared,
            counters,
            out_before: 0,
            out_after: 0,
            chained: 0,
        }));
        self
    }

    pub(crate) fn into_inner(self) -> S {
        self.io
    }

    #[cfg(fuzzing)]
    pub(crate) fn get_ref(&self) -> &S {
        &self.io
    }

    /// Queues one frame whose payload is copied next to its header.
    fn queue(&mut self, opcode: Opcode, payload: &[u8]) {
        self.queue_as(opcode, payload, false);
    }

    /// Queues one frame, copied next to its header; `compressed` sets RSV1.
    fn queue_as(&mut self, opcode: Opcode, payload: &[u8], compressed: bool) {
        self.put_header(opcode, compressed, payload.len(), payload.len());
        self.scratch.put_slice(payload);
        self.out_len += payload.len();
    }

    /// Queues one frame whose payload is shared with every other socket it
    /// goes to (copied instead when small).
    fn queue_shared(&mut self, opcode: Opcode, payload: Bytes, compressed: bool) {
        if payload.len() <= INLINE {
            return self.queue_as(opcode, &payload, compressed);
        }
        self.put_header(opcode, compressed, payload.len(), 0);
        self.push_scratch();
        self.out_len += payload.len();
        self.out.push_back(payload);
    }

    /// Writes a frame header into the scratch buffer, with room for
    /// `extra` more bytes after it.
    fn put_header(&mut self, opcode: Opcode, compressed: bool, len: usize, extra: usize) {
        let need = 10 + extra;
        if self.scratch.capacity() - self.scratch.len() < need {
            // An empty buffer takes its first room again (in place, once
            // what was split off it is written); a batch that outgrew it
            // takes much more at once.
            let room = if self.scratch.is_empty() {
                SCRATCH_ROOM
            } else {
                SCRATCH_BURST
            };
            self.scratch.reserve(need.max(room));
        }
        let start = self.scratch.len();
        wire::put_header(&mut self.scratch, (true, compressed), opcode, None, len);
        self.out_len += self.scratch.len() - start;
    }

    /// Anything waiting to be written?
    fn has_output(&self) -> bool {
        !self.out.is_empty() || !self.scratch.is_empty()
    }

    /// Moves the frames being put together to the end of `out`, as one
    /// buffer.
    fn push_scratch(&mut self) {
        if self.scratch.is_empty() {
            return;
        }
        let frames =
            if self.scratch.len() > SCRATCH_ROOM / 2 || self.scratch.capacity() > SCRATCH_ROOM {
                // Most of the room is used, or this is a burst's buffer: it
                // goes with its frames (and is freed once they are written),
                // rather than be split and kept.
                std::mem::take(&mut self.scratch)
            } else {
                self.scratch.split()
            };
        self.out.push_back(frames.freeze());
    }

    /// Queues a message, deflated if the client agreed to it and deflate
    /// shrinks it.
    fn queue_message(&mut self, opcode: Opcode, payload: Bytes) {
        // Taken out for the while, so that the frame can be queued from
        // inside the cache's lending closure.
        let Some(mut deflate) = self.deflate.take() else {
            return self.queue_shared(opcode, payload, false);
        };
        let bits = deflate.agreed.server_bits;
        let written = (deflate.shared).with(
            &payload,
            bits,
            deflate.place.as_mut(),
            |deflated, chained| match deflated {
                Some(deflated) if deflated.len() <= INLINE => {
                    self.queue_as(opcode, deflated, true);
                    Some((deflated.len(), chained))
                }
                Some(deflated) => {
                    self.queue_shared(opcode, deflated.clone(), true);
                    Some((deflated.len(), chained))
                }
                None => None,
            },
        );
        let before = payload.len() as u64;
        deflate.out_before += before;
        deflate.out_after += written.map_or(before, |(after, _)| after as u64);
        deflate.chained += u64::from(written.is_some_and(|(_, chained)| chained));
        if written.is_none() {
            self.queue_shared(opcode, payload, false);
        }
        self.deflate = Some(deflate);
    }

    fn queue_frame(&mut self, frame: Frame) {
        if self.close_sent {
            return;
        }
        self.close_sent = matches!(frame, Frame::Close(_));
        match &frame {
            Frame::Message(_) => self.sent_since_ping = true,
            Frame::Ping(_) => {
                self.quiet = !self.sent_since_ping;
                self.sent_since_ping = false;
            }
            _ => {}
        }
        match frame {
            Frame::Message(Message::Text(text)) => {
                self.queue_message(Opcode::Text, text.into_bytes());
            }
            Frame::Message(Message::Binary(bytes)) => {
                self.queue_message(Opcode::Binary, bytes);
            }
            Frame::Message(other) => self.queue(Opcode::Binary, other.as_bytes()),
            Frame::Ping(bytes) => self.queue(Opcode::Ping, &bytes[..bytes.len().min(125)]),
            Frame::Pong(bytes) => self.queue(Opcode::Pong, &bytes[..bytes.len().min(125)]),
            Frame::Close(None) => self.queue(Opcode::Close, &[]),
            Frame::Close(Some(close)) => {
                let mut payload = Vec::with_capacity(2 + close.reason().len());
                payload.extend_from_slice(&close.code().sendable().0.to_be_bytes());
                payload.extend_from_slice(truncate(close.reason(), 123).as_bytes());
                self.queue(Opcode::Close, &payload);
            }
        }
    }
}

/// `reason` cut to at most `max` bytes, on a character boundary.
fn truncate(reason: &str, max: usize) -> &str {
    let mut end = reason.len().min(max);
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// A fragmented message being put together.
struct Partial {
    text: bool,
    /// Compressed: checked once inflated, not as it arrives.
    compressed: bool,
    data: BytesMut,
    /// How much of a text message's `data` is known to be valid UTF-8 (the
    /// rest is at most one character cut between fragments).
    checked: usize,
}

impl Partial {
    fn new(text: bool, compressed: bool, data: BytesMut) -> Result<Self, ReadError> {
        let mut partial = Self {
            text,
            compressed,
            data,
            checked: 0,
        };
        partial.check()?;
        Ok(partial)
    }

    fn extend(&mut self, payload: &[u8]) -> Result<(), ReadError> {
        self.data.extend_from_slice(payload);
        self.check()
    }

    /// Fails on the fragment that makes a text message invalid UTF-8,
    /// rather than once the whole message is in.
    fn check(&mut self) -> Result<(), ReadError> {
        if !self.text || self.compressed {
            return Ok(());
        }
        match std::str::from_utf8(&self.data[self.checked..]) {
            Ok(_) => self.checked = self.data.len(),
            // A character cut at the end: the next fragment completes it.
            Err(error) if error.error_len().is_none() => self.checked += error.valid_up_to(),
            Err(_) => return Err(ReadError::InvalidUtf8),
        }
        Ok(())
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Socket<S> {
    /// Reads the header at the start of `self.read`: the header and its
    /// masking key, `Ok(None)` if more bytes are needed.
    fn header(&self) -> Result<Option<(Header, [u8; 4], usize)>, ReadError> {
        let Some(header) = wire::read_header(&self.read, true).map_err(|_| ReadError::Protocol)?
        else {
            return Ok(None);
        };
        let len = usize::try_from(header.len).unwrap_or(usize::MAX);
        if len > self.max_frame {
            return Err(ReadError::TooBig);
        }
        Ok(header.mask.map(|mask| (header, mask, len)))
    }

    /// The next complete frame in the buffer, if there is one.
    fn parse(&mut self) -> Result<Option<Frame>, ReadError> {
        loop {
            let Some((header, mask, len)) = self.header()? else {
                return Ok(None);
            };
            if self.read.len() < header.size + len {
                // Room for more of the frame, but never more than could
                // arrive soon: the header's length is only a claim.
                let missing = header.size + len - self.read.len();
                self.read.reserve(missing.min(RESERVE_AHEAD));
                return Ok(None);
            }
            if header.compressed && self.deflate.is_none() {
                // RSV1 without the extension.
                return Err(ReadError::Protocol);
            }
            self.read.advance(header.size);
            let mut payload = self.read.split_to(len);
            wire::apply_mask(&mut payload, mask);
            if self.read.is_empty() {
                // Idle again: hold no buffer.
                self.read = BytesMut::new();
            }
            match header.opcode {
                Opcode::Ping => {
                    self.pong = Some(payload.freeze());
                    let ping = self.pong.clone().unwrap_or_default();
                    return Ok(Some(Frame::Ping(ping)));
                }
                Opcode::Pong => return Ok(Some(Frame::Pong(payload.freeze()))),
                Opcode::Close => return self.closed(&payload).map(Some),
                Opcode::Continuation => {
                    let Some(partial) = self.partial.as_mut() else {
                        return Err(ReadError::Protocol);
                    };
                    if partial.data.len() + payload.len() > self.max_message {
                        return Err(ReadError::TooBig);
                    }
                    partial.extend(&payload)?;
                    if header.fin {
                        let Some(partial) = self.partial.take() else {
                            return Err(ReadError::Protocol);
                        };
                        return self.complete(partial.text, partial.compressed, partial.data);
                    }
                }
                opcode => {
                    if self.partial.is_some() {
                        // A new message inside a fragmented one.
                        return Err(ReadError::Protocol);
                    }
                    let text = opcode == Opcode::Text;
                    if header.fin {
                        return self.complete(text, header.compressed, payload);
                    }
                    self.partial = Some(Partial::new(text, header.compressed, payload)?);
                }
            }
        }
    }

    /// A whole message: inflated if it came compressed, and checked.
    fn complete(
        &mut self,
        text: bool,
        compressed: bool,
        payload: BytesMut,
    ) -> Result<Option<Frame>, ReadError> {
        if !compressed {
            return message(text, payload.freeze()).map(Some);
        }
        let Some(deflate) = self.deflate.as_mut() else {
            return Err(ReadError::Protocol);
        };
        let inflated = deflate.inflater.inflate(&payload, self.max_message)?;
        deflate.counters.inflated(payload.len(), inflated.len());
        message(text, Bytes::from(inflated)).map(Some)
    }

    /// The client's close frame: checked, answered, and handed on.
    fn closed(&mut self, payload: &[u8]) -> Result<Frame, ReadError> {
        self.read_done = true;
        let close = match payload {
            [] => None,
            [_] => return Err(ReadError::Protocol),
            [high, low, reason @ ..] => {
                let code = u16::from_be_bytes([*high, *low]);
                if !is_valid_received(code) {
                    return Err(ReadError::Protocol);
                }
                let reason = std::str::from_utf8(reason).map_err(|_| ReadError::InvalidUtf8)?;
                Some(Close::new(CloseCode(code), reason.to_owned()))
            }
        };
        // The answer echoes the code, without the reason.
        let reply = close
            .as_ref()
            .map(|close| Close::new(close.code(), String::new()));
        self.queue_frame(Frame::Close(reply));
        Ok(Frame::Close(close))
    }

    /// Reads more bytes into the buffer; `Ok(false)` at the end of the
    /// stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<bool>> {
        // Left uninitialised: this runs at every wake of the session, and
        // zeroing 4 KiB each time cost more than everything else it does.
        let mut chunk = [MaybeUninit::<u8>::uninit(); READ_CHUNK];
        let mut buf = ReadBuf::uninit(&mut chunk);
        match Pin::new(&mut self.io).poll_read(cx, &mut buf) {
            Poll::Ready(Ok(())) if buf.filled().is_empty() => Poll::Ready(Ok(false)),
            Poll::Ready(Ok(())) => {
                self.read.extend_from_slice(buf.filled());
                Poll::Ready(Ok(true))
            }
            Poll::Ready(Err(error)) => Poll::Ready(Err(error)),
            Poll::Pending => Poll::Pending,
        }
    }

    /// Writes what is queued, and the pong owed, until done or the stream
    /// is full.
    fn poll_write_out(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let vectored = self.io.is_write_vectored();
        loop {
            if self.pong_ahead == 0 {
                if let Some(ping) = self.pong.take() {
                    if !self.close_sent {
                        self.queue(Opcode::Pong, &ping);
                        self.pong_ahead = self.out_len;
                    }
                }
            }
            self.push_scratch();
            if self.out.is_empty() {
                break;
            }
            if !vectored && self.out.len() > 1 && self.out[0].len() < COALESCE {
                self.gather();
            }
            // One buffer (the usual case: small frames share one) is one
            // plain write, without setting up a vector of slices.
            let written = if vectored && self.out.len() > 1 {
                let mut slices = [IoSlice::new(&[]); MAX_IOV];
                let mut n = 0;
                for (slice, chunk) in slices.iter_mut().zip(&self.out) {
                    *slice = IoSlice::new(chunk);
                    n += 1;
                }
                Pin::new(&mut self.io).poll_write_vectored(cx, &slices[..n])
            } else {
                Pin::new(&mut self.io).poll_write(cx, &self.out[0])
            };
            match written {
                Poll::Ready(Ok(0)) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                Poll::Ready(Ok(mut n)) => {
                    self.out_len -= n;
                    self.pong_ahead = self.pong_ahead.saturating_sub(n);
                    while n > 0 {
                        let Some(front) = self.out.front_mut() else {
                            break;
                        };
                        if n >= front.len() {
                            n -= front.len();
                            self.out.pop_front();
                        } else {
                            front.advance(n);
                            n = 0;
                        }
                    }
                }
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => return Poll::Pending,
            }
        }
        // Everything is written. A busy connection keeps its frame buffer
        // for the next write; a quiet one gives it back, so that idle
        // connections hold none, whatever they received before.
        if self.quiet {
            self.quiet = false;
            self.scratch = BytesMut::new();
        }
        Poll::Ready(Ok(()))
    }
}

impl<S> Socket<S> {
    /// Gathers the first buffers into one (up to [`COALESCE`] bytes), for
    /// streams that write one buffer at a time.
    fn gather(&mut self) {
        let mut gathered = BytesMut::with_capacity(self.out_len.min(COALESCE));
        while let Some(front) = self.out.front() {
            if !gathered.is_empty() && gathered.len() + front.len() > COALESCE {
                break;
            }
            gathered.extend_from_slice(front);
            self.out.pop_front();
        }
        self.out.push_front(gathered.freeze());
    }
}

/// A complete message from the client.
fn message(text: bool, bytes: Bytes) -> Result<Frame, ReadError> {
    if text {
        Text::try_from(bytes)
            .map(|text| Frame::Message(Message::Text(text)))
            .map_err(|_| ReadError::InvalidUtf8)
    } else {
        Ok(Frame::Message(Message::Binary(bytes)))
    }
}

/// Close codes a client may send (RFC 6455, section 7.4).
fn is_valid_received(code: u16) -> bool {
    matches!(code, 1000..=1003 | 1007..=1014 | 3000..=4999)
}

impl<S: AsyncRead + AsyncWrite + Unpin> Stream for Socket<S> {
    type Item = Result<Frame, ReadError>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.get_mut();
        // An owed pong or close reply goes out as soon as it can, even when
        // the session has nothing else to write.
        if this.pong.is_some() || (this.has_output() && this.read_done) {
            if let Poll::Ready(Err(_)) = this.poll_write_out(cx) {
                return Poll::Ready(Some(Err(ReadError::Lost)));
            }
        }
        loop {
            if this.read_done {
                return Poll::Ready(None);
            }
            match this.parse() {
                Ok(Some(frame)) => {
                    if matches!(frame, Frame::Ping(_)) {
                        let _ = this.poll_write_out(cx);
                    }
                    return Poll::Ready(Some(Ok(frame)));
                }
                Ok(None) => {}
                Err(error) => {
                    this.read_done = true;
                    return Poll::Ready(Some(Err(error)));
                }
            }
            if this.out_len >= HIGH_WATER {
                // A client that does not take what it is sent is not read
                // from until it does: what it sends meanwhile waits in its
                // own buffers, not in ours.
                match this.poll_write_out(cx) {
                    Poll::Ready(Ok(())) => {}
                    Poll::Ready(Err(_)) => {
                        this.read_done = true;
                        return Poll::Ready(Some(Err(ReadError::Lost)));
                    }
                    Poll::Pending if this.out_len >= HIGH_WATER => return Poll::Pending,
                    Poll::Pending => {}
                }
            }
            match this.poll_fill(cx) {
                Poll::Ready(Ok(true)) => {}
                // The end of the stream, or an error: the client is gone.
                Poll::Ready(Ok(false)) => {
                    this.read_done = true;
                    return Poll::Ready(None);
                }
                Poll::Ready(Err(_)) => {
                    this.read_done = true;
                    return Poll::Ready(Some(Err(ReadError::Lost)));
                }
                Poll::Pending => return Poll::Pending,
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> Sink<Frame> for Socket<S> {
    type Error = io::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if this.out_len >= HIGH_WATER {
            return this.poll_write_out(cx);
        }
        Poll::Ready(Ok(()))
    }

    fn start_send(self: Pin<&mut Self>, frame: Frame) -> io::Result<()> {
        self.get_mut().queue_frame(frame);
        Ok(())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if let Some(deflate) = this.deflate.as_mut() {
            if deflate.out_before > 0 {
                (deflate.counters).out(deflate.out_before, deflate.out_after, deflate.chained);
                (deflate.out_before, deflate.out_after, deflate.chained) = (0, 0, 0);
            }
        }
        std::task::ready!(this.poll_write_out(cx))?;
        Pin::new(&mut this.io).poll_flush(cx)
    }

    /// Writes what is queued; the transport itself is closed by its owner.
    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.poll_flush(cx)
    }
}

#[cfg(test)]
mod tests {
    use futures_util::{SinkExt, StreamExt};
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt, DuplexStream};

    use super::*;

    const OP_CONTINUATION: u8 = Opcode::Continuation.bits();
    const OP_TEXT: u8 = Opcode::Text.bits();
    const OP_BINARY: u8 = Opcode::Binary.bits();
    const OP_CLOSE: u8 = Opcode::Close.bits();
    const OP_PING: u8 = Opcode::Ping.bits();
    const OP_PONG: u8 = Opcode::Pong.bits();

    /// A client frame: masked with a fixed key.
    fn client_frame(fin: bool, opcode: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut out = vec![(if fin { 0x80 } else { 0 }) | opcode];
        match payload.len() {
            len @ 0..=125 => out.push(0x80 | len as u8),
            len @ 126..=0xFFFF => {
                out.push(0x80 | 126);
                out.extend_from_slice(&(len as u16).to_be_bytes());
            }
            len => {
                out.push(0x80 | 127);
                out.extend_from_slice(&(len as u64).to_be_bytes());
            }
        }
        out.extend_from_slice(&mask);
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        out
    }

    fn pair() -> (Socket<DuplexStream>, DuplexStream) {
        let (server, client) = duplex(1 << 20);
        (Socket::new(server, 64 * 1024, 64 * 1024), client)
    }

    async fn next(socket: &mut Socket<DuplexStream>) -> Option<Result<Frame, ReadError>> {
        tokio::time::timeout(std::time::Duration::from_secs(5), socket.next())
            .await
            .unwrap()
    }

    /// Reads one server frame: (fin, opcode, payload); server frames are
    /// never masked.
    async fn server_frame(client: &mut DuplexStream) -> (bool, u8, Vec<u8>) {
        let mut head = [0u8; 2];
        client.read_exact(&mut head).await.unwrap();
        assert_eq!(head[1] & 0x80, 0, "server frames are not masked");
        let len = match head[1] & 0x7F {
            126 => usize::from(client.read_u16().await.unwrap()),
            127 => client.read_u64().await.unwrap() as usize,
            len => usize::from(len),
        };
        let mut payload = vec![0; len];
        client.read_exact(&mut payload).await.unwrap();
        (head[0] & 0x80 != 0, head[0] & 0x0F, payload)
    }

    #[tokio::test]
    async fn reads_messages_of_every_length_split_anywhere() {
        let (mut socket, mut client) = pair();
        let sizes = [0, 1, 125, 126, 127, 4000, 65535, 65536];
        let mut wire = Vec::new();
        for size in sizes {
            wire.extend(client_frame(
                true,
                OP_TEXT,
                &"é".repeat(size / 2).into_bytes(),
            ));
            wire.extend(client_frame(true, OP_BINARY, &vec![7u8; size]));
        }
        // Byte by byte at first, then in uneven chunks.
        let writer = tokio::spawn(async move {
            for (i, chunk) in wire.chunks(1 + wire.len() / 97).enumerate() {
                if i < 40 {
                    for byte in chunk {
                        client.write_all(&[*byte]).await.unwrap();
                    }
                } else {
                    client.write_all(chunk).await.unwrap();
                }
            }
            client
        });
        for size in sizes {
            let text = "é".repeat(size / 2);
            assert_eq!(
                next(&mut socket).await,
                Some(Ok(Frame::Message(Message::text(text))))
            );
            assert_eq!(
                next(&mut socket).await,
                Some(Ok(Frame::Message(Message::binary(vec![7u8; size]))))
            );
        }
        let client = writer.await.unwrap();
        drop(client);
        assert_eq!(next(&mut socket).await, None);
        assert_eq!(socket.read.capacity(), 0, "no buffer held when idle");
    }

    #[tokio::test]
    async fn puts_fragments_together_with_control_frames_between() {
        let (mut socket, mut client) = pair();
        let mut wire = client_frame(false, OP_TEXT, b"hel");
        wire.extend(client_frame(true, OP_PING, b"p"));
        wire.extend(client_frame(false, OP_CONTINUATION, b"lo "));
        wire.extend(client_frame(true, OP_CONTINUATION, "wörld".as_bytes()));
        client.write_all(&wire).await.unwrap();
        assert_eq!(
            next(&mut socket).await,
            Some(Ok(Frame::Ping(Bytes::from_static(b"p"))))
        );
        assert_eq!(
            next(&mut socket).await,
            Some(Ok(Frame::Message(Message::text("hello wörld"))))
        );
        // The ping was answered by itself.
        assert_eq!(
            server_frame(&mut client).await,
            (true, OP_PONG, b"p".to_vec())
        );
    }

    #[tokio::test]
    async fn protocol_errors_size_limits_and_bad_utf8_are_told_apart() {
        let cases: Vec<(Vec<u8>, ReadError)> = vec![
            // Unmasked.
            (vec![0x81, 0x01, b'a'], ReadError::Protocol),
            // Reserved bit.
            (vec![0xC1, 0x80, 0, 0, 0, 0], ReadError::Protocol),
            // Reserved opcodes.
            (client_frame(true, 0x3, b""), ReadError::Protocol),
            (client_frame(true, 0xB, b""), ReadError::Protocol),
            // Fragmented or long control frames.
            (client_frame(false, OP_PING, b""), ReadError::Protocol),
            (client_frame(true, OP_PING, &[0; 126]), ReadError::Protocol),
            // A continuation with nothing to continue; a new message inside
            // a fragmented one.
            (
                client_frame(true, OP_CONTINUATION, b"x"),
                ReadError::Protocol,
            ),
            (
                [
                    client_frame(false, OP_TEXT, b"a"),
                    client_frame(true, OP_TEXT, b"b"),
                ]
                .concat(),
                ReadError::Protocol,
            ),
            // A length with the top bit set.
            (
                [vec![0x82, 0xFF], vec![0x80; 8], vec![0; 4]].concat(),
                ReadError::Protocol,
            ),
            // Too big, as one frame or as fragments; said before reading it.
            (
                [vec![0x82, 0xFF], (1u64 << 40).to_be_bytes().to_vec()].concat(),
                ReadError::TooBig,
            ),
            (
                client_frame(true, OP_BINARY, &vec![0; 65537]),
                ReadError::TooBig,
            ),
            (
                [
                    client_frame(false, OP_BINARY, &vec![0; 40000]),
                    client_frame(true, OP_CONTINUATION, &vec![0; 40000]),
                ]
                .concat(),
                ReadError::TooBig,
            ),
            // Not UTF-8, whole or split inside a character.
            (
                client_frame(true, OP_TEXT, &[0xFF, 0xFE]),
                ReadError::InvalidUtf8,
            ),
            (
                [
                    client_frame(false, OP_TEXT, &[0xC3]),
                    client_frame(true, OP_CONTINUATION, &[0x28]),
                ]
                .concat(),
                ReadError::InvalidUtf8,
            ),
            // Close frames: one byte, a code no one may send, a reason
            // that is not UTF-8.
            (client_frame(true, OP_CLOSE, &[3]), ReadError::Protocol),
            (
                client_frame(true, OP_CLOSE, &1005u16.to_be_bytes()),
                ReadError::Protocol,
            ),
            (
                client_frame(true, OP_CLOSE, &[3, 232, 0xFF]),
                ReadError::InvalidUtf8,
            ),
        ];
        for (wire, expected) in cases {
            let (mut socket, mut client) = pair();
            client.write_all(&wire).await.unwrap();
            assert_eq!(next(&mut socket).await, Some(Err(expected)), "{wire:02x?}");
            // Nothing more is read after an error.
            assert_eq!(next(&mut socket).await, None);
        }
    }

    #[tokio::test]
    async fn a_split_character_across_fragments_is_fine() {
        let (mut socket, mut client) = pair();
        let wire = [
            client_frame(false, OP_TEXT, &[0xC3]),
            client_frame(true, OP_CONTINUATION, &[0xA9]),
        ]
        .concat();
        client.write_all(&wire).await.unwrap();
        assert_eq!(
            next(&mut socket).await,
            Some(Ok(Frame::Message(Message::text("é"))))
        );
    }

    #[tokio::test]
    async fn the_clients_close_is_answered_with_its_code() {
        let (mut socket, mut client) = pair();
        let mut payload = 4000u16.to_be_bytes().to_vec();
        payload.extend_from_slice(b"bye");
        client
            .write_all(&client_frame(true, OP_CLOSE, &payload))
            .await
            .unwrap();
        assert_eq!(
            next(&mut socket).await,
            Some(Ok(Frame::Close(Some(Close::new(CloseCode(4000), "bye")))))
        );
        socket.close().await.unwrap();
        assert_eq!(
            server_frame(&mut client).await,
            (true, OP_CLOSE, 4000u16.to_be_bytes().to_vec())
        );
        assert_eq!(next(&mut socket).await, None);
    }

    #[tokio::test]
    async fn writes_frames_of_every_length_unmasked_and_in_order() {
        let (mut socket, mut client) = pair();
        let sizes = [0usize, 5, 125, 126, 600, 65535, 65536, 100_000];
        for size in sizes {
            socket
                .feed(Frame::Message(Message::binary(vec![1u8; size])))
                .await
                .unwrap();
        }
        socket
            .feed(Frame::Message(Message::text("done")))
            .await
            .unwrap();
        let long_reason = "é".repeat(100);
        socket
            .feed(Frame::Close(Some(Close::new(
                CloseCode::GOING_AWAY,
                long_reason,
            ))))
            .await
            .unwrap();
        let reader = tokio::spawn(async move {
            let mut frames = Vec::new();
            for _ in 0..sizes.len() + 2 {
                frames.push(server_frame(&mut client).await);
            }
            frames
        });
        socket.flush().await.unwrap();
        let frames = reader.await.unwrap();
        for (frame, size) in frames.iter().zip(sizes) {
            assert_eq!(frame, &(true, OP_BINARY, vec![1u8; size]));
        }
        assert_eq!(frames[sizes.len()], (true, OP_TEXT, b"done".to_vec()));
        let (fin, opcode, close) = &frames[sizes.len() + 1];
        assert_eq!((*fin, *opcode), (true, OP_CLOSE));
        assert_eq!(close[..2], 1001u16.to_be_bytes());
        // Cut to 125 bytes in all, on a character boundary.
        assert_eq!(close.len(), 2 + 122);
        assert!(std::str::from_utf8(&close[2..]).is_ok());
    }

    #[tokio::test]
    async fn a_burst_of_small_frames_keeps_its_order() {
        let (mut socket, mut client) = pair();
        let texts: Vec<String> = (0..300)
            .map(|i| format!("frame {i:03} {}", "x".repeat(i % 40)))
            .collect();
        let reader = tokio::spawn(async move {
            let mut frames = Vec::new();
            for _ in 0..301 {
                frames.push(server_frame(&mut client).await);
            }
            frames
        });
        for text in &texts {
            socket
                .feed(Frame::Message(Message::text(text.clone())))
                .await
                .unwrap();
        }
        socket.flush().await.unwrap();
        // The burst's buffer went with it; the next frame starts a new one.
        assert!(socket.scratch.capacity() <= SCRATCH_ROOM);
        socket
            .send(Frame::Message(Message::text("after")))
            .await
            .unwrap();
        let frames = reader.await.unwrap();
        for (frame, text) in frames.iter().zip(&texts) {
            assert_eq!(frame, &(true, OP_TEXT, text.as_bytes().to_vec()));
        }
        assert_eq!(frames[300], (true, OP_TEXT, b"after".to_vec()));
    }

    #[tokio::test]
    async fn a_busy_connection_keeps_its_frame_buffer_and_a_quiet_one_gives_it_back() {
        let (mut socket, mut client) = pair();
        let message = || Frame::Message(Message::text("hello"));
        socket.send(message()).await.unwrap();
        assert_eq!(server_frame(&mut client).await.2, b"hello");
        let room = socket.scratch.capacity();
        assert!(room >= SCRATCH_ROOM - 16, "kept {room} bytes");
        // A message between two pings: busy, the buffer stays.
        socket.send(Frame::Ping(Bytes::new())).await.unwrap();
        socket.send(message()).await.unwrap();
        socket.send(Frame::Ping(Bytes::new())).await.unwrap();
        for _ in 0..3 {
            server_frame(&mut client).await;
        }
        assert!(socket.scratch.capacity() > 0);
        // Nothing since the last ping: quiet, the buffer goes once the
        // ping is written.
        socket.send(Frame::Ping(Bytes::new())).await.unwrap();
        assert_eq!(server_frame(&mut client).await, (true, OP_PING, vec![]));
        assert_eq!(socket.scratch.capacity(), 0);
        // The next message takes a new one.
        socket.send(message()).await.unwrap();
        assert_eq!(server_frame(&mut client).await.2, b"hello");
        assert!(socket.scratch.capacity() > 0);
    }

    #[tokio::test]
    async fn a_burst_buffer_is_not_kept_after_a_small_batch() {
        let (mut socket, mut client) = pair();
        // Twenty writes leave a short tail of the first buffer's room.
        for _ in 0..20 {
            socket
                .send(Frame::Message(Message::text("x".repeat(45))))
                .await
                .unwrap();
            server_frame(&mut client).await;
        }
        // One batch, small in all, whose second frame does not fit the
        // tail: it takes a burst's room.
        let batch = ["y".repeat(40), "z".repeat(400)];
        for text in &batch {
            socket
                .feed(Frame::Message(Message::text(text.clone())))
                .await
                .unwrap();
        }
        socket.flush().await.unwrap();
        for text in &batch {
            assert_eq!(server_frame(&mut client).await.2, text.as_bytes());
        }
        let kept = socket.scratch.capacity();
        assert!(kept <= SCRATCH_ROOM, "kept {kept} bytes");
    }

    /// How long a test waits to see that nothing happens.
    const QUIET: std::time::Duration = std::time::Duration::from_millis(100);

    #[tokio::test]
    async fn a_client_that_pings_and_never_reads_is_owed_one_pong() {
        // Room for two pongs on the way to the client, then it is full.
        let (server, mut client) = duplex(256);
        let mut socket = Socket::new(server, 64 * 1024, 64 * 1024);
        let pings = 10_000u64;
        let writer = tokio::spawn(async move {
            for i in 0..pings {
                let mut payload = i.to_be_bytes().to_vec();
                payload.resize(125, 0);
                client
                    .write_all(&client_frame(true, OP_PING, &payload))
                    .await
                    .unwrap();
            }
            client
        });
        for i in 0..pings {
            match next(&mut socket).await {
                Some(Ok(Frame::Ping(ping))) => assert_eq!(ping[..8], i.to_be_bytes()),
                other => panic!("ping {i}: {other:?}"),
            }
            // One pong in the output, the latest waiting its turn.
            assert!(socket.out_len <= 127, "{} bytes waiting", socket.out_len);
        }
        let mut client = writer.await.unwrap();
        let reader = tokio::spawn(async move {
            let mut pongs = Vec::new();
            loop {
                let (fin, opcode, payload) = server_frame(&mut client).await;
                assert!(fin);
                assert_eq!(opcode, OP_PONG);
                assert_eq!(payload.len(), 125);
                let id = u64::from_be_bytes(payload[..8].try_into().unwrap());
                pongs.push(id);
                if id == pings - 1 {
                    return pongs;
                }
            }
        });
        tokio::time::timeout(std::time::Duration::from_secs(5), socket.flush())
            .await
            .unwrap()
            .unwrap();
        let pongs = reader.await.unwrap();
        // The first pongs, then only the answer to the latest ping.
        assert!(pongs.len() <= 4, "{pongs:?}");
        assert_eq!(pongs.last(), Some(&(pings - 1)));
    }

    #[tokio::test]
    async fn nothing_is_read_while_output_is_above_the_high_water_mark() {
        let (server, mut client) = duplex(64 * 1024);
        let mut socket = Socket::new(server, 64 * 1024, 64 * 1024);
        socket
            .feed(Frame::Message(Message::Binary(Bytes::from(
                vec![1u8; 2 * HIGH_WATER],
            ))))
            .await
            .unwrap();
        client
            .write_all(&client_frame(true, OP_TEXT, b"later"))
            .await
            .unwrap();
        let stuck = tokio::time::timeout(QUIET, socket.next()).await;
        assert!(stuck.is_err(), "read while output was stuck: {stuck:?}");
        assert_eq!(socket.read.len(), 0);
        // Once the client takes it, the message is read.
        let reader = tokio::spawn(async move { server_frame(&mut client).await });
        match next(&mut socket).await {
            Some(Ok(Frame::Message(message))) => assert_eq!(message.as_text(), Some("later")),
            other => panic!("{other:?}"),
        }
        tokio::time::timeout(std::time::Duration::from_secs(5), socket.flush())
            .await
            .unwrap()
            .unwrap();
        let (_, opcode, payload) = reader.await.unwrap();
        assert_eq!((opcode, payload.len()), (OP_BINARY, 2 * HIGH_WATER));
    }

    #[tokio::test]
    async fn a_frame_is_given_room_as_it_arrives_not_as_its_header_claims() {
        let (server, mut client) = duplex(1 << 20);
        let mut socket = Socket::new(server, usize::MAX, usize::MAX);
        let mut wire = vec![0x82, 0xFF];
        wire.extend_from_slice(&(1u64 << 62).to_be_bytes());
        wire.extend_from_slice(&[0, 0, 0, 0]);
        wire.extend_from_slice(&[9; 100]);
        client.write_all(&wire).await.unwrap();
        let waiting = tokio::time::timeout(QUIET, socket.next()).await;
        assert!(waiting.is_err(), "{waiting:?}");
        assert!(
            socket.read.capacity() <= 2 * RESERVE_AHEAD,
            "{}",
            socket.read.capacity()
        );
        // More arrives; the buffer grows with it.
        client.write_all(&[9; 200_000]).await.unwrap();
        let waiting = tokio::time::timeout(QUIET, socket.next()).await;
        assert!(waiting.is_err(), "{waiting:?}");
        let held = socket.read.len();
        assert_eq!(held, wire.len() + 200_000);
        let capacity = socket.read.capacity();
        assert!(
            capacity <= 2 * (held + RESERVE_AHEAD),
            "{capacity} for {held}"
        );
    }

    #[tokio::test]
    async fn bad_utf8_fails_on_the_fragment_that_has_it() {
        let (mut socket, mut client) = pair();
        // Valid so far, a character cut between fragments, then invalid;
        // the message never ends.
        let wire = [
            client_frame(false, OP_TEXT, "κό".as_bytes()),
            client_frame(false, OP_CONTINUATION, &[0xCF]),
            client_frame(false, OP_CONTINUATION, &[0x83, b'm', b'e']),
            client_frame(false, OP_CONTINUATION, &[b'a', 0xFF]),
        ]
        .concat();
        client.write_all(&wire).await.unwrap();
        assert!(matches!(
            next(&mut socket).await,
            Some(Err(ReadError::InvalidUtf8))
        ));
        // A first fragment that is invalid fails at once too.
        let (mut socket, mut client) = pair();
        client
            .write_all(&client_frame(false, OP_TEXT, &[b'a', 0xC0, 0x80]))
            .await
            .unwrap();
        assert!(matches!(
            next(&mut socket).await,
            Some(Err(ReadError::InvalidUtf8))
        ));
    }
}
