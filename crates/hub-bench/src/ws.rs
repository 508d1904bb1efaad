//! A lean WebSocket client (RFC 6455) for load: the opening handshake,
//! masked frames out, and the server's frames parsed where they lie in the
//! read buffer.
//!
//! A general-purpose client library allocates, copies and validates each
//! message it hands out, and zeroes its read buffer before every read. At
//! millions of deliveries a second that made the load tool cost more CPU
//! than the server it measured, on the same cores. Here a read fills the
//! buffer's spare room as is, and each complete message is handed to the
//! caller as a slice of it.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::io;

use bytes::{Buf as _, BytesMut};
use flate2::{Decompress, FlushDecompress};
use hub_ws::wire::{self, Opcode};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::handshake::client::generate_key;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

/// Room made in the read buffer before each read.
const READ_CHUNK: usize = 4 * 1024;
/// The longest handshake answer read.
const MAX_RESPONSE_HEAD: usize = 16 * 1024;
/// The longest message accepted from the server.
const MAX_MESSAGE: usize = 64 << 20;
/// Bytes queued before [`Writer::feed`] writes them out.
const WRITE_BUFFER: usize = 16 * 1024;

/// Close code sent when a client is done.
pub(crate) const NORMAL: u16 = 1000;

/// Why the server's answer to the opening handshake is not a WebSocket.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum HandshakeError {
    /// The connection failed or closed during the handshake.
    #[error("connection lost during the handshake")]
    Io(#[from] io::Error),
    /// The server answered with another status than 101.
    #[error("the server answered HTTP {status} instead of 101 Switching Protocols")]
    Status {
        /// The HTTP status code.
        status: u16,
    },
    /// The answer is not a valid WebSocket handshake.
    #[error("not a WebSocket handshake answer: {0}")]
    Malformed(&'static str),
}

/// Why reading from the server stopped.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub(crate) enum ReadError {
    #[error(transparent)]
    Io(#[from] io::Error),
    #[error("the server broke the WebSocket protocol: {0}")]
    Protocol(&'static str),
    #[error("the server broke the WebSocket protocol: {0}")]
    Frame(#[from] wire::HeaderError),
}

/// What one read brought, besides the messages.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Status {
    /// The connection is open.
    Open,
    /// The server sent a ping with this payload: answer it with a pong.
    Ping(Vec<u8>),
    /// The server sent its close frame (with this code, if any), or closed
    /// the connection.
    Closed(Option<u16>),
}

/// Opens a WebSocket over `stream` to `path` on `host`. Bytes the server sent
/// right after its answer stay in the returned reader's buffer.
pub(crate) async fn handshake(
    mut stream: TcpStream,
    host: &str,
    path: &str,
    offer: Offer,
) -> Result<(Reader, Writer), HandshakeError> {
    let key = generate_key();
    let offered = match offer {
        Offer::Nothing => "",
        Offer::Deflate => {
            "Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover\r\n"
        }
        Offer::DeflateAlone => {
            "Sec-WebSocket-Extensions: permessage-deflate; client_no_context_takeover; \
             server_no_context_takeover\r\n"
        }
    };
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\
         Sec-WebSocket-Version: 13\r\nSec-WebSocket-Key: {key}\r\n{offered}\r\n"
    );
    stream.write_all(request.as_bytes()).await?;
    let mut buf = BytesMut::with_capacity(READ_CHUNK);
    let head_len = loop {
        if let Some(end) = find_head_end(&buf) {
            break end;
        }
        if buf.len() >= MAX_RESPONSE_HEAD {
            return Err(HandshakeError::Malformed("the answer's head is too long"));
        }
        buf.reserve(READ_CHUNK);
        if stream.read_buf(&mut buf).await? == 0 {
            return Err(io::Error::from(io::ErrorKind::UnexpectedEof).into());
        }
    };
    let deflate = check_answer(&buf[..head_len], &derive_accept_key(key.as_bytes()))?;
    if deflate.is_some() && offer == Offer::Nothing {
        return Err(HandshakeError::Malformed(
            "an extension that was not offered",
        ));
    }
    buf.advance(head_len);
    let (read, write) = stream.into_split();
    let mut reader = Reader::new(read, buf);
    if let Some(alone) = deflate {
        reader.inflate = Some(Box::new(Inflate::new(alone)));
    }
    Ok((reader, Writer::new(write)))
}

/// Where the head of an HTTP answer ends (after its blank line).
fn find_head_end(buf: &[u8]) -> Option<usize> {
    buf.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4)
}

/// Checks the status line and the `Sec-WebSocket-Accept` header; returns
/// whether the server agreed on `permessage-deflate`, and if so whether
/// it deflates each message on its own.
fn check_answer(head: &[u8], accept: &str) -> Result<Option<bool>, HandshakeError> {
    let head = std::str::from_utf8(head).map_err(|_| HandshakeError::Malformed("not text"))?;
    let mut lines = head.split("\r\n");
    let status_line = lines.next().unwrap_or_default();
    let mut parts = status_line.splitn(3, ' ');
    let (version, status) = (parts.next(), parts.next());
    if version != Some("HTTP/1.1") {
        return Err(HandshakeError::Malformed("not an HTTP/1.1 answer"));
    }
    let status = status
        .and_then(|s| s.parse::<u16>().ok())
        .ok_or(HandshakeError::Malformed("no status code"))?;
    if status != 101 {
        return Err(HandshakeError::Status { status });
    }
    let (mut accepted, mut deflate) = (false, None);
    for (name, value) in lines.filter_map(|line| line.split_once(':')) {
        let name = name.trim();
        accepted |= name.eq_ignore_ascii_case("sec-websocket-accept") && value.trim() == accept;
        if name.eq_ignore_ascii_case("sec-websocket-extensions")
            && value.trim().starts_with("permessage-deflate")
        {
            deflate = Some(value.contains("server_no_context_takeover"));
        }
    }
    if !accepted {
        return Err(HandshakeError::Malformed(
            "no Sec-WebSocket-Accept header matching the key",
        ));
    }
    Ok(deflate)
}

/// The reading half: frames from the server.
#[derive(Debug)]
pub(crate) struct Reader {
    io: OwnedReadHalf,
    buf: BytesMut,
    /// A fragmented message being put together (compressed, if its first
    /// frame said so).
    partial: Option<(Vec<u8>, bool)>,
    /// Set when the server agreed on `permessage-deflate`.
    inflate: Option<Box<Inflate>>,
    /// The payload of the latest ping, not handed out yet.
    ping: Option<Vec<u8>>,
    /// The server closed (with this code, if it gave one).
    closed: Option<Option<u16>>,
}

impl Reader {
    fn new(io: OwnedReadHalf, buf: BytesMut) -> Self {
        Self {
            io,
            buf,
            partial: None,
            inflate: None,
            ping: None,
            closed: None,
        }
    }

    /// Hands each complete message already read to `on_message` (text or
    /// binary alike); while there is none, reads from the socket. Returns
    /// once something was handed out, a ping came (handed out with the
    /// status, once) or the server closed. Cancel safe: a read that is
    /// cancelled has taken nothing.
    pub(crate) async fn read(
        &mut self,
        mut on_message: impl FnMut(&[u8]),
    ) -> Result<Status, ReadError> {
        loop {
            let handed = self.closed.is_none() && self.parse(&mut on_message)?;
            if let Some(code) = self.closed {
                return Ok(Status::Closed(code));
            }
            if let Some(ping) = self.ping.take() {
                return Ok(Status::Ping(ping));
            }
            if handed {
                return Ok(Status::Open);
            }
            if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
                self.buf.reserve(READ_CHUNK);
            }
            if self.io.read_buf(&mut self.buf).await? == 0 {
                self.closed = Some(None);
            }
        }
    }

    /// Parses and hands out every complete frame in the buffer, up to the
    /// server's close frame. Returns whether any message was handed out.
    fn parse(&mut self, on_message: &mut impl FnMut(&[u8])) -> Result<bool, ReadError> {
        let mut at = 0;
        let mut handed = false;
        while let Some(frame) = next_frame(&self.buf[at..], self.inflate.is_some())? {
            let payload = &self.buf[at + frame.header..at + frame.header + frame.len];
            match (frame.opcode, &mut self.partial) {
                (Opcode::Text | Opcode::Binary, None) if frame.fin => {
                    match (frame.compressed, &mut self.inflate) {
                        (true, Some(inflate)) => on_message(inflate.inflate(payload)?),
                        _ => on_message(payload),
                    }
                    handed = true;
                }
                (Opcode::Text | Opcode::Binary, None) => {
                    self.partial = Some((payload.to_vec(), frame.compressed));
                }
                (Opcode::Continuation, Some((partial, _))) => {
                    if partial.len() + payload.len() > MAX_MESSAGE {
                        return Err(ReadError::Protocol("message too long"));
                    }
                    partial.extend_from_slice(payload);
                    if frame.fin {
                        if let Some((whole, compressed)) = self.partial.take() {
                            match (compressed, &mut self.inflate) {
                                (true, Some(inflate)) => on_message(inflate.inflate(&whole)?),
                                _ => on_message(&whole),
                            }
                            handed = true;
                        }
                    }
                }
                (Opcode::Ping, _) => self.ping = Some(payload.to_vec()),
                (Opcode::Pong, _) => {}
                (Opcode::Close, _) => {
                    let code = payload.get(..2).map(|c| u16::from_be_bytes([c[0], c[1]]));
                    self.closed = Some(code);
                    at += frame.header + frame.len;
                    break;
                }
                _ => return Err(ReadError::Protocol("unexpected opcode or continuation")),
            }
            at += frame.header + frame.len;
        }
        self.buf.advance(at);
        Ok(handed)
    }
}

/// A frame whose header and payload are all in the buffer.
#[derive(Debug, PartialEq, Eq)]
struct FrameAt {
    fin: bool,
    compressed: bool,
    opcode: Opcode,
    header: usize,
    len: usize,
}

/// The first frame of `buf`, if it is all there; compressed frames only if
/// `deflate` was agreed.
fn next_frame(buf: &[u8], deflate: bool) -> Result<Option<FrameAt>, ReadError> {
    let header = match wire::read_header(buf, false) {
        Ok(Some(header)) if deflate || !header.compressed => header,
        Ok(Some(_)) => return Err(ReadError::Frame(wire::HeaderError::Reserved)),
        Ok(None) => return Ok(None),
        Err(error) => return Err(ReadError::Frame(error)),
    };
    let len = match usize::try_from(header.len) {
        Ok(len) if len <= MAX_MESSAGE => len,
        _ => return Err(ReadError::Protocol("frame too long")),
    };
    if buf.len() < header.size + len {
        return Ok(None);
    }
    Ok(Some(FrameAt {
        fin: header.fin,
        compressed: header.compressed,
        opcode: header.opcode,
        header: header.size,
        len,
    }))
}

/// What a client offers of `permessage-deflate`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Offer {
    Nothing,
    /// Taking no context over on the client's side (so that the server
    /// keeps no inflate window per client); the server may keep its.
    Deflate,
    /// And asking the server to deflate each message on its own.
    DeflateAlone,
}

/// Inflates the server's compressed messages.
pub(crate) struct Inflate {
    state: Decompress,
    out: Vec<u8>,
    /// The server deflates each message on its own: identical bytes
    /// inflate to identical messages, for every client.
    alone: bool,
}

impl Inflate {
    fn new(alone: bool) -> Self {
        Self {
            state: Decompress::new(false),
            out: Vec::new(),
            alone,
        }
    }
}

impl std::fmt::Debug for Inflate {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Inflate").finish_non_exhaustive()
    }
}

impl Inflate {
    /// One message, inflated (the RFC 7692 tail put back).
    ///
    /// A server that deflates a broadcast once sends every client the same
    /// bytes: the clients of one thread inflate them once, so that the load
    /// tool does not spend on inflating what the server saved on
    /// deflating.
    fn inflate(&mut self, data: &[u8]) -> Result<&[u8], ReadError> {
        if !self.alone {
            // With the window of the messages before: this client's own.
            self.inflate_anew(data)?;
            return Ok(&self.out);
        }
        thread_local! {
            static RECENT: RefCell<Recent> = RefCell::default();
        }
        let known = RECENT.with_borrow(|recent| {
            recent.inflated.get(data).map(|inflated| {
                self.out.clear();
                self.out.extend_from_slice(inflated);
            })
        });
        if known.is_some() {
            return Ok(&self.out);
        }
        self.inflate_anew(data)?;
        RECENT.with_borrow_mut(|recent| recent.insert(data, &self.out));
        Ok(&self.out)
    }

    fn inflate_anew(&mut self, data: &[u8]) -> Result<(), ReadError> {
        if self.alone {
            self.state.reset(false);
        }
        self.out.clear();
        for input in [data, &[0, 0, 0xFF, 0xFF][..]] {
            let start = self.state.total_in();
            loop {
                let consumed = usize::try_from(self.state.total_in() - start).unwrap_or(usize::MAX);
                if consumed >= input.len() && self.out.len() < self.out.capacity() {
                    break;
                }
                if self.out.len() >= MAX_MESSAGE {
                    return Err(ReadError::Protocol("message too long"));
                }
                if self.out.len() == self.out.capacity() {
                    self.out.reserve(input.len().max(READ_CHUNK));
                }
                let rest = input.get(consumed..).unwrap_or_default();
                let before = (self.state.total_in(), self.state.total_out());
                self.state
                    .decompress_vec(rest, &mut self.out, FlushDecompress::Sync)
                    .map_err(|_| ReadError::Protocol("not deflate data"))?;
                if (self.state.total_in(), self.state.total_out()) == before {
                    // Output that filled the buffer exactly, with the input
                    // spent, is the end; input left that goes nowhere is not
                    // deflate.
                    if rest.is_empty() {
                        break;
                    }
                    return Err(ReadError::Protocol("deflate data that goes nowhere"));
                }
            }
        }
        Ok(())
    }
}

/// Messages a thread has inflated lately, by their deflated bytes: clients
/// read a run's messages at their own pace, so thousands are in flight.
#[derive(Default)]
struct Recent {
    inflated: HashMap<Vec<u8>, Vec<u8>>,
    order: VecDeque<Vec<u8>>,
}

impl Recent {
    /// Most messages kept.
    const MOST: usize = 4096;

    fn insert(&mut self, deflated: &[u8], inflated: &[u8]) {
        if self.order.len() == Self::MOST {
            if let Some(old) = self.order.pop_front() {
                self.inflated.remove(&old);
            }
        }
        if self
            .inflated
            .insert(deflated.to_vec(), inflated.to_vec())
            .is_none()
        {
            self.order.push_back(deflated.to_vec());
        }
    }
}

/// The writing half: masked frames to the server.
#[derive(Debug)]
pub(crate) struct Writer {
    io: OwnedWriteHalf,
    buf: Vec<u8>,
    /// State of the masking keys' generator.
    seed: u64,
}

impl Writer {
    fn new(io: OwnedWriteHalf) -> Self {
        // Masks need not be secret on loopback, only vary; any odd seed does.
        let seed = io.local_addr().map_or(0, |a| u64::from(a.port())) << 1 | 1;
        Self {
            io,
            buf: Vec::new(),
            seed,
        }
    }

    /// Queues a text message, and writes out what is queued once there is
    /// enough of it.
    pub(crate) async fn feed_text(&mut self, text: &[u8]) -> io::Result<()> {
        self.queue(Opcode::Text, text);
        if self.buf.len() >= WRITE_BUFFER {
            self.flush().await?;
        }
        Ok(())
    }

    /// Sends a text message now.
    pub(crate) async fn send_text(&mut self, text: &[u8]) -> io::Result<()> {
        self.queue(Opcode::Text, text);
        self.flush().await
    }

    /// Answers a ping.
    pub(crate) async fn pong(&mut self, payload: &[u8]) -> io::Result<()> {
        self.queue(Opcode::Pong, &payload[..payload.len().min(125)]);
        self.flush().await
    }

    /// Sends a close frame.
    pub(crate) async fn close(&mut self, code: u16, reason: &str) -> io::Result<()> {
        let mut payload = code.to_be_bytes().to_vec();
        payload.extend_from_slice(&reason.as_bytes()[..reason.len().min(123)]);
        self.queue(Opcode::Close, &payload);
        self.flush().await
    }

    /// Writes out everything queued.
    pub(crate) async fn flush(&mut self) -> io::Result<()> {
        if !self.buf.is_empty() {
            self.io.write_all(&self.buf).await?;
            self.buf.clear();
        }
        Ok(())
    }

    fn queue(&mut self, opcode: Opcode, payload: &[u8]) {
        let mask = self.next_mask();
        wire::put_header(
            &mut self.buf,
            (true, false),
            opcode,
            Some(mask),
            payload.len(),
        );
        let start = self.buf.len();
        self.buf.extend_from_slice(payload);
        wire::apply_mask(&mut self.buf[start..], mask);
    }

    /// xorshift64: a new masking key for every frame.
    fn next_mask(&mut self) -> [u8; 4] {
        self.seed ^= self.seed << 13;
        self.seed ^= self.seed >> 7;
        self.seed ^= self.seed << 17;
        let [a, b, c, d, ..] = self.seed.to_le_bytes();
        [a, b, c, d]
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use tokio::net::TcpListener;

    use super::*;

    const OP_TEXT: u8 = Opcode::Text.bits();
    const OP_CLOSE: u8 = Opcode::Close.bits();
    const OP_PONG: u8 = Opcode::Pong.bits();

    /// Bound on every wait.
    const WAIT: Duration = Duration::from_secs(10);

    /// Reads one masked client frame: (opcode, unmasked payload).
    async fn client_frame(stream: &mut TcpStream) -> (u8, Vec<u8>) {
        let mut head = [0; 2];
        stream.read_exact(&mut head).await.unwrap();
        assert_eq!(head[1] & 0x80, 0x80, "client frames are masked");
        let len = usize::from(head[1] & 0x7F);
        assert!(len < 126);
        let mut mask = [0; 4];
        stream.read_exact(&mut mask).await.unwrap();
        let mut payload = vec![0; len];
        stream.read_exact(&mut payload).await.unwrap();
        for (i, byte) in payload.iter_mut().enumerate() {
            *byte ^= mask[i % 4];
        }
        (head[0] & 0x0F, payload)
    }

    /// A server that answers the handshake with a text frame in the same
    /// write, sends a fragmented message with a ping between its parts,
    /// checks the pong and a text from the client, pings again (left
    /// unanswered), and closes once the client says more.
    async fn scripted_server(listener: TcpListener) {
        let (mut stream, _) = listener.accept().await.unwrap();
        let mut request = Vec::new();
        while find_head_end(&request).is_none() {
            let mut chunk = [0; 512];
            let n = stream.read(&mut chunk).await.unwrap();
            assert!(n > 0);
            request.extend_from_slice(&chunk[..n]);
        }
        let request = String::from_utf8(request).unwrap();
        assert!(request.starts_with("GET /ws?x=1 HTTP/1.1\r\n"), "{request}");
        let key = request
            .lines()
            .find_map(|l| l.strip_prefix("Sec-WebSocket-Key: "))
            .unwrap();
        let accept = derive_accept_key(key.trim().as_bytes());
        let mut answer = format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Accept: {accept}\r\n\r\n"
        )
        .into_bytes();
        answer.extend_from_slice(&[0x81, 5]);
        answer.extend_from_slice(b"first");
        stream.write_all(&answer).await.unwrap();
        stream
            .write_all(&[0x01, 3, b'o', b'n', b'e'])
            .await
            .unwrap();
        stream.write_all(&[0x89, 2, b'h', b'i']).await.unwrap();
        stream
            .write_all(&[0x80, 3, b't', b'w', b'o'])
            .await
            .unwrap();
        assert_eq!(client_frame(&mut stream).await, (OP_PONG, b"hi".to_vec()));
        assert_eq!(client_frame(&mut stream).await, (OP_TEXT, b"ok".to_vec()));
        stream.write_all(&[0x89, 2, b'z', b'z']).await.unwrap();
        assert_eq!(client_frame(&mut stream).await, (OP_TEXT, b"ack".to_vec()));
        stream.write_all(&[0x88, 2, 0x03, 0xE8]).await.unwrap();
        let (opcode, payload) = client_frame(&mut stream).await;
        assert_eq!((opcode, &payload[..2]), (OP_CLOSE, &[0x03, 0xE8][..]));
        assert_eq!(&payload[2..], b"done");
    }

    #[tokio::test]
    async fn talks_to_a_server_frame_by_frame() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(scripted_server(listener));
        let host = addr.to_string();
        let stream = TcpStream::connect(addr).await.unwrap();
        let (mut reader, mut writer) =
            tokio::time::timeout(WAIT, handshake(stream, &host, "/ws?x=1", Offer::Nothing))
                .await
                .unwrap()
                .unwrap();
        let mut messages = Vec::new();
        let mut pings = 0;
        while messages.len() < 2 {
            let read = reader.read(|m| messages.push(m.to_vec()));
            match tokio::time::timeout(WAIT, read).await.unwrap().unwrap() {
                Status::Ping(ping) => {
                    pings += 1;
                    writer.pong(&ping).await.unwrap();
                }
                status => assert_eq!(status, Status::Open),
            }
        }
        assert_eq!(messages, [b"first".to_vec(), b"onetwo".to_vec()]);
        assert_eq!(pings, 1);
        writer.send_text(b"ok").await.unwrap();
        // A ping is handed out once: a caller that leaves it unanswered
        // reads on to the close.
        let read = reader.read(|m| panic!("unexpected {m:?}"));
        let status = tokio::time::timeout(WAIT, read).await.unwrap().unwrap();
        assert_eq!(status, Status::Ping(b"zz".to_vec()));
        writer.send_text(b"ack").await.unwrap();
        let read = reader.read(|m| panic!("unexpected {m:?}"));
        let status = tokio::time::timeout(WAIT, read).await.unwrap().unwrap();
        assert_eq!(status, Status::Closed(Some(1000)));
        writer.close(NORMAL, "done").await.unwrap();
        tokio::time::timeout(WAIT, server).await.unwrap().unwrap();
    }

    #[tokio::test]
    async fn a_refusal_is_told_by_its_status() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(async move {
            let (mut stream, _) = listener.accept().await.unwrap();
            let mut chunk = [0; 1024];
            let _ = stream.read(&mut chunk).await.unwrap();
            stream
                .write_all(b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n")
                .await
                .unwrap();
        });
        let host = addr.to_string();
        let stream = TcpStream::connect(addr).await.unwrap();
        let refused = tokio::time::timeout(WAIT, handshake(stream, &host, "/ws", Offer::Nothing))
            .await
            .unwrap();
        assert!(matches!(
            refused,
            Err(HandshakeError::Status { status: 503 })
        ));
        server.await.unwrap();
    }

    #[test]
    fn inflates_whatever_the_fill_of_its_buffer() {
        use flate2::{Compress, Compression, FlushCompress};
        // Lengths around the buffer's first reserve, where the output
        // fills it exactly.
        for len in [
            1,
            100,
            READ_CHUNK - 1,
            READ_CHUNK,
            READ_CHUNK + 1,
            3 * READ_CHUNK,
        ] {
            let text: Vec<u8> = (0..len).map(|i| b"abcdefgh"[i % 8]).collect();
            let mut deflated = Vec::with_capacity(len + 64);
            let mut compress = Compress::new(Compression::default(), false);
            compress
                .compress_vec(&text, &mut deflated, FlushCompress::Sync)
                .unwrap();
            deflated.truncate(deflated.len() - 4);
            let mut inflate = Inflate::new(true);
            assert_eq!(
                inflate
                    .inflate_anew(&deflated)
                    .map(|()| inflate.out.clone())
                    .unwrap(),
                text,
                "{len}"
            );
        }
    }

    fn next_frame_plain(buf: &[u8]) -> Result<Option<FrameAt>, ReadError> {
        next_frame(buf, false)
    }

    #[test]
    fn frames_are_found_only_when_whole() {
        assert_eq!(next_frame_plain(&[]).unwrap(), None);
        assert_eq!(next_frame_plain(&[0x81]).unwrap(), None);
        assert_eq!(next_frame_plain(&[0x81, 3, b'a', b'b']).unwrap(), None);
        assert_eq!(
            next_frame_plain(&[0x81, 3, b'a', b'b', b'c', 0x81]).unwrap(),
            Some(FrameAt {
                fin: true,
                compressed: false,
                opcode: Opcode::Text,
                header: 2,
                len: 3
            })
        );
        let mut long = vec![0x02, 126, 0x01, 0x00];
        assert_eq!(next_frame_plain(&long).unwrap(), None);
        long.resize(4 + 256, 7);
        assert_eq!(
            next_frame_plain(&long).unwrap(),
            Some(FrameAt {
                fin: false,
                compressed: false,
                opcode: Opcode::Binary,
                header: 4,
                len: 256
            })
        );
        let mut longer = vec![0x82, 127];
        longer.extend_from_slice(&70_000u64.to_be_bytes());
        assert_eq!(next_frame_plain(&longer).unwrap(), None);
        longer.resize(10 + 70_000, 0);
        assert_eq!(
            next_frame_plain(&longer).unwrap().map(|f| f.len),
            Some(70_000)
        );
    }

    #[test]
    fn bad_frames_are_refused() {
        for bad in [
            &[0x81, 0x83, 0, 0, 0, 0][..],
            &[0xC1, 0][..],
            &[0x82, 127, 0xFF, 0, 0, 0, 0, 0, 0, 0][..],
        ] {
            assert!(next_frame_plain(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn answers_are_checked() {
        let accept = derive_accept_key(b"dGhlIHNhbXBsZSBub25jZQ==");
        assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
        let good = format!(
            "HTTP/1.1 101 Switching Protocols\r\nupgrade: websocket\r\n\
             SEC-WEBSOCKET-ACCEPT: {accept}\r\n\r\n"
        );
        assert!(check_answer(good.as_bytes(), &accept).is_ok());
        let full = b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n";
        assert!(matches!(
            check_answer(full, &accept),
            Err(HandshakeError::Status { status: 503 })
        ));
        let wrong = b"HTTP/1.1 101 Switching Protocols\r\nSec-WebSocket-Accept: nope\r\n\r\n";
        assert!(matches!(
            check_answer(wrong, &accept),
            Err(HandshakeError::Malformed(_))
        ));
        assert_eq!(find_head_end(b"HTTP/1.1 101 OK\r\n\r\n\x81"), Some(19));
        assert_eq!(find_head_end(b"HTTP/1.1 101 OK\r\n"), None);
    }
}
