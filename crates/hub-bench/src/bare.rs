//! The bare server: [`Bare`].

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{mpsc, Notify};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::error::{Error, UrlError};
use hub_ws::wire::{self, Opcode};

/// The largest message accepted; a larger one closes its client with 1009.
const MAX_MESSAGE: usize = 64 * 1024;
/// The largest handshake request accepted.
const MAX_REQUEST: usize = 8 * 1024;
/// Time a client has to send its handshake.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Bytes a client may have waiting to be written beyond what its socket
/// holds; one more frame and it is dropped, so a client that stops reading
/// cannot take unbounded memory.
const MAX_BACKLOG: usize = 4 * 1024 * 1024;
/// Messages waiting for each worker; a sender waits beyond that.
const WORKER_QUEUE: usize = 256;
/// Connections the kernel holds until they are accepted, as the
/// chat-server's default: the load tool connects thousands at once.
const LISTEN_BACKLOG: u32 = 4096;

/// The bare server: the least work a broadcast server can do, as a
/// baseline to run the same scenarios against, in the same run.
///
/// It accepts WebSocket clients on a loopback address and sends every
/// message it receives, unchanged, to every client, the sender included.
/// Each message is framed once; a worker per core writes it to its share
/// of the clients, one write system call per client, with no task woken
/// per delivery. There is nothing else: no rooms, no history, no
/// keep-alive, no batching of messages per write, no limits but the frame
/// size and each client's backlog.
///
/// At a light load its latency is the floor of this machine for one write
/// per delivery: what the network stack costs, with next to nothing on top
/// (a real server measures what it adds). Under load it shows what
/// batching is worth: with one write per delivery it falls behind where a
/// server that writes what has queued up in one go keeps up.
///
/// ```no_run
/// # #[tokio::main]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let bare = hub_bench::Bare::bind("127.0.0.1:0".parse()?).await?;
/// let url = format!("ws://{}/ws", bare.local_addr());
/// tokio::spawn(bare.serve());
/// let report = hub_bench::Broadcast::new(url).clients(100).run().await?;
/// println!("{report}");
/// # Ok(())
/// # }
/// ```
#[derive(Debug)]
pub struct Bare {
    listener: TcpListener,
    shared: Arc<Shared>,
    workers: Vec<mpsc::Receiver<Bytes>>,
}

impl Bare {
    /// Listens on `addr`, which must be a loopback address (port 0 picks a
    /// free port).
    ///
    /// # Errors
    ///
    /// [`UrlError::NotLoopback`] for any other address; [`Error::Listen`]
    /// if the address cannot be bound.
    pub async fn bind(addr: SocketAddr) -> Result<Self, Error> {
        if !addr.ip().is_loopback() {
            return Err(UrlError::NotLoopback {
                host: addr.ip().to_string(),
            }
            .into());
        }
        let listener = listen(addr).map_err(|source| Error::Listen { addr, source })?;
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        let (senders, workers) = (0..cores.min(8))
            .map(|_| mpsc::channel(WORKER_QUEUE))
            .unzip();
        let parts = (0..cores.min(8)).map(|_| Mutex::default()).collect();
        Ok(Self {
            listener,
            shared: Arc::new(Shared {
                parts,
                workers: senders,
                joined: AtomicUsize::new(0),
            }),
            workers,
        })
    }

    /// The address it listens on.
    #[must_use]
    pub fn local_addr(&self) -> SocketAddr {
        // Only fails for a socket that is not bound, and `bind` bound it.
        self.listener
            .local_addr()
            .unwrap_or_else(|_| SocketAddr::from(([127, 0, 0, 1], 0)))
    }

    /// Accepts clients until the future is dropped; those already in are
    /// served until they leave. Clients that fail their handshake or break
    /// the protocol are dropped, one at a time.
    pub async fn serve(self) {
        for (index, messages) in self.workers.into_iter().enumerate() {
            tokio::spawn(fan_out(Arc::clone(&self.shared), index, messages));
        }
        loop {
            match self.listener.accept().await {
                Ok((stream, _)) => {
                    let _ = stream.set_nodelay(true);
                    tokio::spawn(client(Arc::clone(&self.shared), stream));
                }
                // Out of file descriptors, say: the clients already in stay
                // served; try again shortly.
                Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
            }
        }
    }
}

/// What the acceptor, the clients and the workers share.
#[derive(Debug)]
struct Shared {
    /// Each worker's clients.
    parts: Vec<Mutex<Part>>,
    /// To each worker, the frames to write.
    workers: Vec<mpsc::Sender<Bytes>>,
    /// Clients that joined so far.
    joined: AtomicUsize,
}

/// One worker's clients: slots, reused once free.
#[derive(Debug, Default)]
struct Part {
    slots: Vec<Option<Arc<Client>>>,
    free: Vec<usize>,
}

#[derive(Debug)]
struct Client {
    stream: TcpStream,
    out: Mutex<Out>,
    /// Raised when the client is dropped: its reader and flusher stop.
    gone: Notify,
}

/// What is still to be written to a client.
#[derive(Debug, Default)]
struct Out {
    /// Frames the socket did not take at once, the first one perhaps in
    /// part; while not empty, a flusher task is writing them.
    backlog: VecDeque<Bytes>,
    /// Bytes in `backlog`.
    queued: usize,
    /// The socket failed, or the client fell too far behind.
    dead: bool,
}

fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

fn lock<T>(mutex: &Mutex<T>) -> MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Client {
    /// Writes `frame` now if the socket takes it, else queues it.
    fn send(self: &Arc<Self>, frame: &Bytes) {
        let mut out = lock(&self.out);
        if out.dead {
            return;
        }
        if !out.backlog.is_empty() {
            if out.queued + frame.len() > MAX_BACKLOG {
                self.drop_client(&mut out);
            } else {
                out.queued += frame.len();
                out.backlog.push_back(frame.clone());
            }
            return;
        }
        let written = match self.stream.try_write(frame) {
            Ok(n) => n,
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => 0,
            Err(_) => return self.drop_client(&mut out),
        };
        if written < frame.len() {
            out.queued = frame.len() - written;
            out.backlog.push_back(frame.slice(written..));
            tokio::spawn(flush(Arc::clone(self)));
        }
    }

    /// Gives up on the client: nothing more is written, and its reader and
    /// flusher stop, which closes its connection.
    fn drop_client(&self, out: &mut Out) {
        out.dead = true;
        out.backlog = VecDeque::new();
        out.queued = 0;
        self.gone.notify_waiters();
    }

    /// `future`'s output, or `None` once the client is dropped.
    async fn unless_gone<F: Future>(&self, future: F) -> Option<F::Output> {
        let gone = self.gone.notified();
        let mut gone = std::pin::pin!(gone);
        // Registered before the check, so a drop in between is not missed.
        gone.as_mut().enable();
        if lock(&self.out).dead {
            return None;
        }
        tokio::select! {
            output = future => Some(output),
            () = gone => None,
        }
    }
}

/// Writes a client's backlog as the socket takes it.
async fn flush(client: Arc<Client>) {
    loop {
        match client.unless_gone(client.stream.writable()).await {
            Some(Ok(())) => {}
            Some(Err(_)) => return client.drop_client(&mut lock(&client.out)),
            None => return,
        }
        let mut out = lock(&client.out);
        while let Some(front) = out.backlog.front_mut() {
            match client.stream.try_write(front) {
                Ok(n) => {
                    out.queued -= n;
                    if n == out.backlog[0].len() {
                        out.backlog.pop_front();
                    } else {
                        out.backlog[0] = out.backlog[0].slice(n..);
                        break;
                    }
                }
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return client.drop_client(&mut out),
            }
        }
        if out.backlog.is_empty() {
            return;
        }
    }
}

/// A worker: writes each frame to every client of its part.
async fn fan_out(shared: Arc<Shared>, index: usize, mut frames: mpsc::Receiver<Bytes>) {
    while let Some(frame) = frames.recv().await {
        let part = lock(&shared.parts[index]);
        for client in part.slots.iter().flatten() {
            client.send(&frame);
        }
    }
}

/// One client: the handshake, then its frames until it leaves.
async fn client(shared: Arc<Shared>, stream: TcpStream) {
    let Ok(Ok(stream)) = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(stream)).await else {
        return;
    };
    let client = Arc::new(Client {
        stream,
        out: Mutex::default(),
        gone: Notify::new(),
    });
    let (part, slot) = shared.join(&client);
    let close = read_frames(&shared, &client).await;
    shared.leave(part, slot);
    if let Some(close) = close {
        client.send(&close);
    }
}

impl Shared {
    fn join(&self, client: &Arc<Client>) -> (usize, usize) {
        // The parts in turn: clients spread evenly over the workers.
        let index = self.joined.fetch_add(1, Ordering::Relaxed) % self.parts.len();
        let mut part = lock(&self.parts[index]);
        let slot = match part.free.pop() {
            Some(slot) => {
                part.slots[slot] = Some(Arc::clone(client));
                slot
            }
            None => {
                part.slots.push(Some(Arc::clone(client)));
                part.slots.len() - 1
            }
        };
        (index, slot)
    }

    fn leave(&self, part: usize, slot: usize) {
        let mut part = lock(&self.parts[part]);
        part.slots[slot] = None;
        part.free.push(slot);
    }

    /// Hands `frame` to every worker, waiting while one is full.
    async fn broadcast(&self, frame: Bytes) {
        for worker in &self.workers {
            // Workers live as long as the server.
            let _ = worker.send(frame.clone()).await;
        }
    }
}

/// Reads the request and answers `101 Switching Protocols`.
async fn handshake(stream: TcpStream) -> io::Result<TcpStream> {
    let mut request = Vec::with_capacity(1024);
    let end = loop {
        stream.readable().await?;
        let mut chunk = [0_u8; 1024];
        match stream.try_read(&mut chunk) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(n) => request.extend_from_slice(&chunk[..n]),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            Err(error) => return Err(error),
        }
        if let Some(end) = memchr::memmem::find(&request, b"\r\n\r\n") {
            break end;
        }
        if request.len() > MAX_REQUEST {
            return Err(io::ErrorKind::InvalidData.into());
        }
    };
    let answer = match websocket_key(&request[..end]) {
        Some(key) => format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\n\
             Connection: Upgrade\r\nSec-WebSocket-Accept: {}\r\n\r\n",
            derive_accept_key(key.as_bytes())
        ),
        None => {
            "HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\nConnection: close\r\n\r\n".to_owned()
        }
    };
    write_all(&stream, answer.as_bytes()).await?;
    if answer.starts_with("HTTP/1.1 101") && request.len() == end + 4 {
        Ok(stream)
    } else {
        // Not a WebSocket request, or frames sent before the answer.
        Err(io::ErrorKind::InvalidData.into())
    }
}

/// The `Sec-WebSocket-Key` of a `GET` request's head.
fn websocket_key(head: &[u8]) -> Option<&str> {
    let head = std::str::from_utf8(head).ok()?;
    let mut lines = head.split("\r\n");
    if !lines.next()?.starts_with("GET ") {
        return None;
    }
    lines.find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("sec-websocket-key")
            .then(|| value.trim())
    })
}

async fn write_all(stream: &TcpStream, mut bytes: &[u8]) -> io::Result<()> {
    while !bytes.is_empty() {
        stream.writable().await?;
        match stream.try_write(bytes) {
            Ok(n) => bytes = &bytes[n..],
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(error) => return Err(error),
        }
    }
    Ok(())
}

/// Reads and handles frames until the client leaves. Returns the close
/// frame to answer with, if any.
async fn read_frames(shared: &Shared, client: &Arc<Client>) -> Option<Bytes> {
    let mut buf = BytesMut::with_capacity(4096);
    loop {
        loop {
            match parse(&buf) {
                Ok(Some((frame, used))) => {
                    let _ = buf.split_to(used);
                    match frame {
                        Frame::Message(frame) => shared.broadcast(frame).await,
                        Frame::Reply(frame) => client.send(&frame),
                        Frame::Close(frame) => return Some(frame),
                        Frame::Nothing => {}
                    }
                }
                Ok(None) => break,
                Err(code) => return Some(close_frame(code)),
            }
        }
        if !matches!(
            client.unless_gone(client.stream.readable()).await,
            Some(Ok(()))
        ) {
            return None;
        }
        buf.reserve(4096);
        match client.stream.try_read_buf(&mut buf) {
            Ok(0) => return None,
            Ok(_) => {}
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => {}
            Err(_) => return None,
        }
    }
}

/// A frame from a client, and what to send for it.
#[derive(Debug, PartialEq, Eq)]
enum Frame {
    /// A text or binary message, framed for every client.
    Message(Bytes),
    /// A ping: the pong to send back.
    Reply(Bytes),
    /// A close: the close to send back.
    Close(Bytes),
    /// A pong.
    Nothing,
}

/// Parses the client frame at the start of `buf`: the frame and the bytes
/// it took, `None` if it is not all there yet, or the close code to end
/// the connection with.
fn parse(buf: &[u8]) -> Result<Option<(Frame, usize)>, u16> {
    let header = match wire::read_header(buf, true) {
        Ok(Some(header)) if !header.compressed => header,
        Ok(None) => return Ok(None),
        Ok(Some(_)) | Err(_) => return Err(1002),
    };
    let opcode = header.opcode;
    if (!opcode.is_control() && !header.fin) || opcode == Opcode::Continuation {
        // Fragmented messages are not supported here.
        return Err(1003);
    }
    let len = match usize::try_from(header.len) {
        Ok(len) if len <= MAX_MESSAGE => len,
        _ => return Err(1009),
    };
    let Some(mask) = header.mask else {
        return Ok(None);
    };
    let at = header.size;
    let Some(payload) = buf.get(at..at + len) else {
        return Ok(None);
    };
    let frame = |opcode| {
        let mut out = BytesMut::with_capacity(len + 10);
        wire::put_header(&mut out, (true, false), opcode, None, len);
        let start = out.len();
        out.extend_from_slice(payload);
        wire::apply_mask(&mut out[start..], mask);
        (out, start)
    };
    let parsed = match opcode {
        Opcode::Text | Opcode::Binary => {
            let (out, start) = frame(opcode);
            if opcode == Opcode::Text && std::str::from_utf8(&out[start..]).is_err() {
                return Err(1007);
            }
            Frame::Message(out.freeze())
        }
        Opcode::Ping => Frame::Reply(frame(Opcode::Pong).0.freeze()),
        Opcode::Pong => Frame::Nothing,
        Opcode::Close => {
            // Answer with the client's code (without its reason), or with
            // an empty close if it gave none.
            let (out, start) = frame(Opcode::Close);
            Frame::Close(match out.get(start..start + 2) {
                Some(code) => close_frame(u16::from_be_bytes([code[0], code[1]])),
                None => Bytes::from_static(&[0x88, 0]),
            })
        }
        _ => return Err(1002),
    };
    Ok(Some((parsed, at + len)))
}

fn close_frame(code: u16) -> Bytes {
    Bytes::copy_from_slice(&[0x88, 2, (code >> 8) as u8, code as u8])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client frame: masked with a fixed key.
    fn masked(first: u8, payload: &[u8]) -> Vec<u8> {
        let mask = [0x12, 0x34, 0x56, 0x78];
        let mut frame = Vec::new();
        frame.push(first);
        frame.extend(match payload.len() {
            len @ 0..=125 => vec![0x80 | len as u8],
            len @ 126..=0xFFFF => [vec![0x80 | 126], (len as u16).to_be_bytes().to_vec()].concat(),
            len => [vec![0x80 | 127], (len as u64).to_be_bytes().to_vec()].concat(),
        });
        frame.extend_from_slice(&mask);
        frame.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
        frame
    }

    #[test]
    fn a_text_is_framed_once_unmasked() {
        let frame = masked(0x81, b"hello");
        assert_eq!(
            parse(&frame),
            Ok(Some((
                Frame::Message(Bytes::from_static(b"\x81\x05hello")),
                frame.len()
            )))
        );
        // Not all there yet: nothing, whatever is missing.
        for end in 0..frame.len() {
            assert_eq!(parse(&frame[..end]), Ok(None), "{end} bytes");
        }
        // A second frame behind the first is left for the next call.
        let mut two = frame.clone();
        two.extend_from_slice(&masked(0x82, &[0xFF]));
        assert_eq!(
            parse(&two).map(|p| p.map(|(_, used)| used)),
            Ok(Some(frame.len()))
        );
    }

    #[test]
    fn lengths_of_16_and_64_bits() {
        let text = "x".repeat(300);
        let Ok(Some((Frame::Message(out), _))) = parse(&masked(0x81, text.as_bytes())) else {
            panic!("not parsed")
        };
        assert_eq!(&out[..4], &[0x81, 126, 1, 44]);
        assert_eq!(&out[4..], text.as_bytes());

        let big = vec![b'x'; MAX_MESSAGE];
        let Ok(Some((Frame::Message(out), _))) = parse(&masked(0x82, &big)) else {
            panic!("not parsed")
        };
        assert_eq!(&out[..2], &[0x82, 127]);
        assert_eq!(out.len(), 10 + MAX_MESSAGE);
    }

    #[test]
    fn control_frames() {
        assert_eq!(
            parse(&masked(0x89, b"hi")),
            Ok(Some((Frame::Reply(Bytes::from_static(b"\x8A\x02hi")), 8)))
        );
        assert_eq!(parse(&masked(0x8A, b"hi")), Ok(Some((Frame::Nothing, 8))));
        assert_eq!(
            parse(&masked(0x88, &[0x03, 0xE8, b'b', b'y', b'e'])),
            Ok(Some((Frame::Close(close_frame(1000)), 11)))
        );
        assert_eq!(
            parse(&masked(0x88, &[])),
            Ok(Some((Frame::Close(Bytes::from_static(&[0x88, 0])), 6)))
        );
    }

    #[test]
    fn broken_frames_get_their_close_codes() {
        // Unmasked.
        assert_eq!(parse(b"\x81\x02hi"), Err(1002));
        // A reserved bit.
        assert_eq!(parse(&masked(0xC1, b"hi")), Err(1002));
        // An unknown opcode.
        assert_eq!(parse(&masked(0x83, b"hi")), Err(1002));
        // A control frame too long, or fragmented.
        assert_eq!(parse(&masked(0x89, &[0; 126])), Err(1002));
        assert_eq!(parse(&masked(0x09, b"hi")), Err(1002));
        // Fragments are not supported.
        assert_eq!(parse(&masked(0x01, b"hi")), Err(1003));
        assert_eq!(parse(&masked(0x80, b"hi")), Err(1003));
        // Too big, told by the header alone.
        assert_eq!(
            parse(&masked(0x82, &vec![0; MAX_MESSAGE + 1])[..10]),
            Err(1009)
        );
        // Not UTF-8.
        assert_eq!(parse(&masked(0x81, &[0xC3, 0x28])), Err(1007));
    }

    #[test]
    fn handshake_keys() {
        let head = b"GET /ws HTTP/1.1\r\nHost: x\r\nsec-websocket-key:  abc== ";
        assert_eq!(websocket_key(head), Some("abc=="));
        assert_eq!(websocket_key(b"GET /ws HTTP/1.1\r\nHost: x"), None);
        assert_eq!(
            websocket_key(b"POST /ws HTTP/1.1\r\nSec-WebSocket-Key: a"),
            None
        );
    }

    #[tokio::test]
    async fn only_loopback_addresses() {
        let outside = SocketAddr::from(([192, 0, 2, 1], 0));
        assert!(matches!(
            Bare::bind(outside).await,
            Err(Error::Url(UrlError::NotLoopback { .. }))
        ));
    }
}
