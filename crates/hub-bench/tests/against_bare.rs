//! The bare server, on 127.0.0.1:0: a broadcast run against it, its
//! answers to control frames and broken frames, and a client that stops
//! reading.
// Test helpers panic on purpose when something is off.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt as _, StreamExt as _};
use hub_bench::{Bare, Broadcast, BroadcastReport};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::TcpStream;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

/// The longest any step in these tests may take.
const WAIT: Duration = Duration::from_secs(60);

async fn start() -> SocketAddr {
    let bare = Bare::bind("127.0.0.1:0".parse().unwrap()).await.unwrap();
    let addr = bare.local_addr();
    tokio::spawn(bare.serve());
    addr
}

/// Runs `run`, which must pass.
async fn passing(run: Broadcast) -> BroadcastReport {
    let report = tokio::time::timeout(WAIT, run.progress(false).run()).await;
    let report = report.unwrap().unwrap();
    assert!(report.passed(), "{report}");
    report
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_client_gets_every_message_once() {
    let addr = start().await;
    let run = Broadcast::new(format!("ws://{addr}/ws"))
        .clients(30)
        .senders(2)
        .messages(50)
        .size(40);
    let report = passing(run).await;
    assert_eq!(report.deliveries.received, 30 * 2 * 50);
    assert_eq!(report.deliveries.lost, 0);
    assert_eq!(report.deliveries.duplicated, 0);
    assert_eq!(report.close.clean, 30);
}

#[tokio::test]
async fn pings_texts_and_closes() {
    let addr = start().await;
    let url = format!("ws://{addr}/ws");
    let (mut a, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    let (mut b, _) = tokio_tungstenite::connect_async(&url).await.unwrap();
    a.send(Message::Ping(b"are you there".to_vec().into()))
        .await
        .unwrap();
    assert_eq!(
        next(&mut a).await,
        Message::Pong(b"are you there".to_vec().into())
    );
    // `b` is in once its own text comes back.
    b.send(Message::text("b is here")).await.unwrap();
    assert_eq!(next(&mut b).await, Message::text("b is here"));
    assert_eq!(next(&mut a).await, Message::text("b is here"));

    a.send(Message::text("hello")).await.unwrap();
    assert_eq!(next(&mut a).await, Message::text("hello"));
    assert_eq!(next(&mut b).await, Message::text("hello"));
    a.send(Message::binary(vec![0, 1, 2])).await.unwrap();
    assert_eq!(next(&mut a).await, Message::binary(vec![0, 1, 2]));
    assert_eq!(next(&mut b).await, Message::binary(vec![0, 1, 2]));

    a.close(Some(CloseFrame {
        code: CloseCode::Away,
        reason: "bye".into(),
    }))
    .await
    .unwrap();
    let Message::Close(Some(close)) = next(&mut a).await else {
        panic!("no close frame")
    };
    assert_eq!(close.code, CloseCode::Away);
}

type Ws = tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<TcpStream>>;

async fn next(ws: &mut Ws) -> Message {
    let next = tokio::time::timeout(WAIT, ws.next()).await.unwrap();
    next.unwrap().unwrap()
}

/// A raw connection after its handshake.
async fn raw(addr: SocketAddr) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"GET /ws HTTP/1.1\r\nHost: localhost\r\nUpgrade: websocket\r\n\
              Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n\
              Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n\r\n",
        )
        .await
        .unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = tokio::time::timeout(WAIT, stream.read_u8()).await;
        head.push(byte.unwrap().unwrap());
    }
    let head = String::from_utf8(head).unwrap();
    assert!(head.starts_with("HTTP/1.1 101 "), "{head}");
    assert!(
        head.contains("Sec-WebSocket-Accept: s3pPLMBiTxaQ9kYGzzhZRbK+xOo=\r\n"),
        "{head}"
    );
    stream
}

/// Reads until the server closes the connection.
async fn read_to_end(stream: &mut TcpStream) -> Vec<u8> {
    let mut bytes = Vec::new();
    tokio::time::timeout(WAIT, stream.read_to_end(&mut bytes))
        .await
        .unwrap()
        .unwrap();
    bytes
}

#[tokio::test]
async fn broken_frames_are_closed_with_their_codes() {
    let addr = start().await;

    // An unmasked text: a protocol error.
    let mut stream = raw(addr).await;
    stream.write_all(b"\x81\x02hi").await.unwrap();
    assert_eq!(read_to_end(&mut stream).await, [0x88, 2, 0x03, 0xEA]);

    // Text that is not UTF-8 (masked with zeros): 1007.
    let mut stream = raw(addr).await;
    stream
        .write_all(&[0x81, 0x82, 0, 0, 0, 0, 0xC3, 0x28])
        .await
        .unwrap();
    assert_eq!(read_to_end(&mut stream).await, [0x88, 2, 0x03, 0xEF]);

    // A header announcing more than 64 KiB: 1009, before it is sent.
    let mut stream = raw(addr).await;
    let mut header = vec![0x82, 0x80 | 127];
    header.extend_from_slice(&(1_u64 << 20).to_be_bytes());
    stream.write_all(&header).await.unwrap();
    assert_eq!(read_to_end(&mut stream).await, [0x88, 2, 0x03, 0xF1]);

    // Not a WebSocket request: 400, and the connection closes.
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let answer = String::from_utf8(read_to_end(&mut stream).await).unwrap();
    assert!(answer.starts_with("HTTP/1.1 400 "), "{answer}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_holds_up_nobody() {
    let addr = start().await;
    // Connected, and never reads again: its socket's buffers fill, then
    // its backlog (4 MiB), and then it is dropped. 20 MB are sent.
    let mut stalled = raw(addr).await;
    let run = Broadcast::new(format!("ws://{addr}/ws"))
        .clients(5)
        .messages(20_000)
        .size(1024);
    let report = passing(run).await;
    assert_eq!(report.deliveries.received, 5 * 20_000);

    // What it was sent ends, some way in, with the connection: the frames
    // it had room for, never a wait on it.
    let bytes = read_to_end(&mut stalled).await;
    assert!(bytes.len() < 20_000 * 1028, "{} bytes", bytes.len());
}
