//! `permessage-deflate` over real sockets on loopback: what is agreed, what
//! goes out deflated (and to whom), what comes in inflated, and the limit
//! that holds after inflating.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use flate2::{Compress, Compression, Decompress, FlushCompress, FlushDecompress};
use hub::{Hub, Message, Metadata, PresenceKind, Topic};
use hub_ws::wire::{self, Opcode};
use hub_ws::{Close, Config, Handler, Session, WsServer};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);

/// The offer browsers make; one that takes no context over on the
/// client's side, and one that asks the server to take none over.
const BROWSER: &str = "permessage-deflate; client_max_window_bits";
const NO_CONTEXT: &str = "permessage-deflate; client_no_context_takeover";
const ALONE: &str = "permessage-deflate; server_no_context_takeover";

/// The classic chat: a line goes to everyone else.
struct Chat;

impl Handler for Chat {
    async fn on_message(&self, session: &Session, message: Message) -> Result<(), Close> {
        session.hub().except(session.id()).broadcast(message);
        Ok(())
    }
}

async fn serve(config: Config) -> (WsServer<Chat>, String) {
    let server = WsServer::with_config(Hub::new(), Chat, config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let accepting = server.clone();
    tokio::spawn(async move {
        // Bounded: the tests open a few clients each.
        for _ in 0..16 {
            let Ok((tcp, _)) = listener.accept().await else {
                return;
            };
            let server = accepting.clone();
            tokio::spawn(async move { server.serve_tcp(tcp, Metadata::new()).await });
        }
    });
    (server, addr)
}

/// A client framing by hand, with its own deflate.
struct Client {
    tcp: TcpStream,
    read: Vec<u8>,
    /// The server's `Sec-WebSocket-Extensions` answer.
    extensions: Option<String>,
    /// The window kept across the server's messages.
    window: Decompress,
}

/// One frame from the server: RSV1, opcode, payload.
type ServerFrame = (bool, Opcode, Vec<u8>);

impl Client {
    async fn connect(addr: &str, offer: Option<&str>) -> Self {
        let mut tcp = timeout(WAIT, TcpStream::connect(addr))
            .await
            .unwrap()
            .unwrap();
        let offer = offer.map_or(String::new(), |o| {
            format!("Sec-WebSocket-Extensions: {o}\r\n")
        });
        let request = format!(
            "GET /ws HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n"
        );
        tcp.write_all(request.as_bytes()).await.unwrap();
        let mut read = Vec::new();
        let end = loop {
            if let Some(end) = read.windows(4).position(|w| w == b"\r\n\r\n") {
                break end + 4;
            }
            let mut chunk = [0; 1024];
            let n = timeout(WAIT, tcp.read(&mut chunk)).await.unwrap().unwrap();
            assert!(n > 0, "closed during the handshake");
            read.extend_from_slice(&chunk[..n]);
        };
        let head = String::from_utf8(read.drain(..end).collect()).unwrap();
        assert!(head.starts_with("HTTP/1.1 101"), "{head}");
        let extensions = (head.lines())
            .find_map(|line| line.strip_prefix("sec-websocket-extensions: "))
            .map(str::to_owned);
        Self {
            tcp,
            read,
            extensions,
            window: Decompress::new(false),
        }
    }

    /// The next message, which must come deflated, inflated with the
    /// window kept from the messages before it; and its deflated size.
    async fn next_inflated(&mut self) -> (Vec<u8>, usize) {
        let (rsv1, opcode, data) = self.next().await;
        assert!(
            rsv1 && opcode == Opcode::Text,
            "{opcode:?} compressed: {rsv1}"
        );
        let mut input = data.clone();
        input.extend_from_slice(&[0, 0, 0xFF, 0xFF]);
        let mut out = Vec::with_capacity(1 << 20);
        self.window
            .decompress_vec(&input, &mut out, FlushDecompress::Sync)
            .unwrap();
        (out, data.len())
    }

    async fn send(&mut self, opcode: Opcode, compressed: bool, payload: &[u8]) {
        let mask = [7, 1, 9, 3];
        let mut frame = Vec::new();
        wire::put_header(
            &mut frame,
            (true, compressed),
            opcode,
            Some(mask),
            payload.len(),
        );
        let start = frame.len();
        frame.extend_from_slice(payload);
        wire::apply_mask(&mut frame[start..], mask);
        self.tcp.write_all(&frame).await.unwrap();
    }

    async fn next(&mut self) -> ServerFrame {
        loop {
            if let Some(header) = wire::read_header(&self.read, false).unwrap() {
                let len = usize::try_from(header.len).unwrap();
                if self.read.len() >= header.size + len {
                    let payload = self.read[header.size..header.size + len].to_vec();
                    self.read.drain(..header.size + len);
                    if header.opcode != Opcode::Ping {
                        return (header.compressed, header.opcode, payload);
                    }
                    continue;
                }
            }
            let mut chunk = [0; 4096];
            let n = timeout(WAIT, self.tcp.read(&mut chunk))
                .await
                .unwrap()
                .unwrap();
            assert!(n > 0, "closed without a close frame");
            self.read.extend_from_slice(&chunk[..n]);
        }
    }
}

/// Deflated as RFC 7692 says: one message, its flush marker taken off.
fn deflate(payload: &[u8]) -> Vec<u8> {
    let mut compress = Compress::new(Compression::default(), false);
    let mut out = Vec::with_capacity(payload.len() + 64);
    compress
        .compress_vec(payload, &mut out, FlushCompress::Sync)
        .unwrap();
    assert!(out.ends_with(&[0, 0, 0xFF, 0xFF]));
    out.truncate(out.len() - 4);
    out
}

fn inflate(data: &[u8]) -> Vec<u8> {
    let mut decompress = Decompress::new(false);
    let mut input = data.to_vec();
    input.extend_from_slice(&[0, 0, 0xFF, 0xFF]);
    let mut out = Vec::with_capacity(1 << 20);
    decompress
        .decompress_vec(&input, &mut out, FlushDecompress::Sync)
        .unwrap();
    out
}

/// A chat line of the size the room chat sends.
fn line(n: usize) -> String {
    format!(
        r#"{{"type":"message","room":"lobby","epoch":"8822169183745","offset":{n},"from":"guest-{n}","text":"hello, everyone in the lobby, this is line {n}","time":1764900000000}}"#
    )
}

async fn wait_for_sessions(server: &WsServer<Chat>, joined: &mut hub::Presence, n: usize) {
    for _ in 0..n {
        let event = timeout(WAIT, joined.recv()).await.unwrap().unwrap();
        assert_eq!(
            (event.kind, event.topic),
            (PresenceKind::Joined, Topic::All)
        );
    }
    assert_eq!(server.sessions(), n);
}

#[tokio::test]
async fn a_broadcast_goes_deflated_to_those_who_agreed_and_plain_to_the_others() {
    let (server, addr) = serve(Config::default().compression(true)).await;
    let mut joined = server.hub().presence();
    let mut browser = Client::connect(&addr, Some(BROWSER)).await;
    let mut lean = Client::connect(&addr, Some(NO_CONTEXT)).await;
    let mut alone = Client::connect(&addr, Some(ALONE)).await;
    let mut plain = Client::connect(&addr, None).await;
    let mut sender = Client::connect(&addr, None).await;
    wait_for_sessions(&server, &mut joined, 5).await;
    assert_eq!(browser.extensions.as_deref(), Some("permessage-deflate"));
    assert_eq!(
        lean.extensions.as_deref(),
        Some("permessage-deflate; client_no_context_takeover")
    );
    assert_eq!(
        alone.extensions.as_deref(),
        Some("permessage-deflate; server_no_context_takeover")
    );
    assert_eq!(plain.extensions, None);

    let text = line(1);
    sender.send(Opcode::Text, false, text.as_bytes()).await;
    let (rsv1, opcode, deflated) = browser.next().await;
    assert!(rsv1 && opcode == Opcode::Text);
    assert!(
        deflated.len() < text.len(),
        "{} of {}",
        deflated.len(),
        text.len()
    );
    assert_eq!(inflate(&deflated), text.as_bytes());
    // Deflated once: the same bytes for every socket whose window it fits.
    assert_eq!(lean.next().await, (true, Opcode::Text, deflated.clone()));
    // On its own for the client that asked for no context.
    let (rsv1, _, on_its_own) = alone.next().await;
    assert!(rsv1);
    assert_eq!(inflate(&on_its_own), text.as_bytes());
    assert_eq!(
        plain.next().await,
        (false, Opcode::Text, text.clone().into_bytes())
    );

    // Too short to gain anything: as it is, RSV1 clear.
    sender.send(Opcode::Text, false, b"hi").await;
    for client in [&mut browser, &mut lean, &mut alone] {
        assert_eq!(client.next().await, (false, Opcode::Text, b"hi".to_vec()));
    }

    let stats = server.stats();
    assert_eq!(stats.compressed_sessions, 3);
    assert_eq!(stats.deflate_chained, 2);
    assert_eq!(stats.deflate_bytes_in, 3 * (text.len() as u64 + 2));
    assert_eq!(
        stats.deflate_bytes_out,
        2 * deflated.len() as u64 + on_its_own.len() as u64 + 3 * 2
    );
}

/// The mean of `sizes`.
fn mean(sizes: &[usize]) -> usize {
    sizes.iter().sum::<usize>() / sizes.len().max(1)
}

#[tokio::test]
async fn lines_are_deflated_against_the_lines_before_them() {
    let (server, addr) = serve(Config::default().compression(true)).await;
    let mut joined = server.hub().presence();
    let mut early: Vec<Client> = Vec::new();
    for _ in 0..3 {
        early.push(Client::connect(&addr, Some(BROWSER)).await);
    }
    let mut alone = Client::connect(&addr, Some(ALONE)).await;
    let mut sender = Client::connect(&addr, None).await;
    wait_for_sessions(&server, &mut joined, 5).await;
    // What deflate makes of a line on its own.
    let on_its_own = mean(
        &(0..60)
            .map(|n| deflate(line(n).as_bytes()).len())
            .collect::<Vec<_>>(),
    );

    let mut sizes = vec![Vec::new(); 3];
    for n in 0..60 {
        let text = line(n);
        sender.send(Opcode::Text, false, text.as_bytes()).await;
        for (client, sizes) in early.iter_mut().zip(&mut sizes) {
            let (inflated, size) = client.next_inflated().await;
            assert_eq!(inflated, text.as_bytes(), "line {n}");
            sizes.push(size);
        }
        let (rsv1, _, data) = alone.next().await;
        assert!(rsv1);
        assert_eq!(inflate(&data), text.as_bytes(), "line {n} on its own");
    }
    for sizes in &sizes {
        assert!(
            mean(&sizes[30..]) * 2 < on_its_own,
            "{} against {on_its_own} on its own",
            mean(&sizes[30..])
        );
    }
    // The same bytes for every client.
    assert_eq!(sizes[0], sizes[1]);
    assert_eq!(sizes[0], sizes[2]);
    // The first line starts a chain, with nothing before it: every
    // client that keeps a window is in step from there.
    assert_eq!(server.stats().deflate_chained, 3 * 60);

    // A client that joins a talking chat gets lines on their own until
    // its window holds enough of the chain, then steps in.
    early.push(Client::connect(&addr, Some(BROWSER)).await);
    timeout(WAIT, joined.recv()).await.unwrap().unwrap();
    assert_eq!(server.sessions(), 6);
    let mut late_sizes = Vec::new();
    for n in 60..140 {
        let text = line(n);
        sender.send(Opcode::Text, false, text.as_bytes()).await;
        for client in &mut early {
            let (inflated, size) = client.next_inflated().await;
            assert_eq!(inflated, text.as_bytes(), "line {n}");
            late_sizes.push(size);
        }
        late_sizes.drain(..3);
    }
    assert!(mean(&late_sizes[60..]) * 2 < on_its_own, "{late_sizes:?}");
    // The late client stepped in once its window held 4 KiB of the chain:
    // some 20 lines of these.
    let late_chained = server.stats().deflate_chained - 3 * 60 - 3 * 80;
    assert!((50..=62).contains(&late_chained), "{late_chained}");
}

#[tokio::test]
async fn client_messages_are_inflated_with_or_without_their_context() {
    let (server, addr) = serve(Config::default().compression(true)).await;
    let mut joined = server.hub().presence();
    let mut browser = Client::connect(&addr, Some(BROWSER)).await;
    let mut reader = Client::connect(&addr, None).await;
    wait_for_sessions(&server, &mut joined, 2).await;

    // The browser keeps its context: its second message refers back to
    // its first.
    let mut compress = Compress::new(Compression::default(), false);
    for n in [1, 2] {
        let text = line(n);
        let mut out = Vec::with_capacity(1024);
        compress
            .compress_vec(text.as_bytes(), &mut out, FlushCompress::Sync)
            .unwrap();
        out.truncate(out.len() - 4);
        browser.send(Opcode::Text, true, &out).await;
        assert_eq!(
            reader.next().await,
            (false, Opcode::Text, text.into_bytes())
        );
    }
    let binary: Vec<u8> = (0..=255).cycle().take(3000).collect();
    browser.send(Opcode::Binary, true, &deflate(&binary)).await;
    assert_eq!(reader.next().await, (false, Opcode::Binary, binary));
    let stats = server.stats();
    assert!(stats.inflate_bytes_in < stats.inflate_bytes_out);
}

#[tokio::test]
async fn inflating_past_the_limit_closes_with_1009() {
    let config = Config::default()
        .compression(true)
        .max_message_size(64 << 10);
    let (_server, addr) = serve(config).await;
    let mut bomb = Client::connect(&addr, Some(NO_CONTEXT)).await;
    // 16 MiB of one letter: some 16 KiB deflated, well under the limit.
    let deflated = deflate(&vec![b'a'; 16 << 20]);
    assert!(deflated.len() < 64 << 10);
    bomb.send(Opcode::Text, true, &deflated).await;
    let (_, opcode, payload) = bomb.next().await;
    assert_eq!(opcode, Opcode::Close);
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1009);
}

#[tokio::test]
async fn without_compression_the_offer_is_declined_and_rsv1_is_refused() {
    let (_server, addr) = serve(Config::default()).await;
    let mut client = Client::connect(&addr, Some(BROWSER)).await;
    assert_eq!(client.extensions, None);
    client
        .send(Opcode::Text, true, &deflate(line(1).as_bytes()))
        .await;
    let (_, opcode, payload) = client.next().await;
    assert_eq!(opcode, Opcode::Close);
    assert_eq!(u16::from_be_bytes([payload[0], payload[1]]), 1002);
}
