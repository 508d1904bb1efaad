//! A client that stops reading must not hold back the others, and the
//! server's memory must stay bounded while it is stalled. These run the
//! real binary so its memory can be read from /proc.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{connect, http, wait_for_connections, ChildServer};
use futures_util::{SinkExt, Stream, StreamExt};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::{Error, Message};

const PAYLOAD: usize = 1024;
const LONG_WAIT: Duration = Duration::from_secs(60);

/// Message `i`: its number, padded to exactly PAYLOAD bytes.
fn message(i: usize) -> String {
    format!("{i:08}{}", "p".repeat(PAYLOAD - 8))
}

/// Reads `total` broadcasts, checking each is the next in order, and
/// publishes how many it has; returns the count and the stream, still open.
fn spawn_reader<S>(mut stream: S, total: usize) -> (JoinHandle<(usize, S)>, watch::Receiver<usize>)
where
    S: Stream<Item = Result<Message, Error>> + Unpin + Send + 'static,
{
    let (progress, watcher) = watch::channel(0);
    let task = tokio::spawn(async move {
        let mut next = 0;
        while next < total {
            match timeout(LONG_WAIT, stream.next())
                .await
                .expect("reader starved")
            {
                Some(Ok(Message::Text(text))) => {
                    let expected = format!("Client says: {}", message(next));
                    assert!(
                        text.as_str() == expected,
                        "message {next} out of order or lost"
                    );
                    next += 1;
                    progress.send_replace(next);
                }
                Some(Ok(Message::Ping(_) | Message::Pong(_))) => {}
                other => panic!("reader got {other:?} after {next} messages"),
            }
        }
        (next, stream)
    });
    (task, watcher)
}

type Reader<S> = (JoinHandle<(usize, S)>, watch::Receiver<usize>);

/// Starts a stalled client, a reader and a sender (which reads its own
/// broadcasts too); returns the sender's sink and both readers.
async fn scenario(
    server: &ChildServer,
    total: usize,
) -> (
    common::Client,
    futures_util::stream::SplitSink<common::Client, Message>,
    Reader<common::Client>,
    Reader<futures_util::stream::SplitStream<common::Client>>,
) {
    // Connected, then never read from again.
    let stalled = connect(&server.url("/ws")).await;
    let reader = connect(&server.url("/ws")).await;
    let (sender, sender_stream) = connect(&server.url("/ws")).await.split();
    wait_for_connections(server.addr, 3).await;
    (
        stalled,
        sender,
        spawn_reader(reader, total),
        spawn_reader(sender_stream, total),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_client_does_not_hold_back_a_burst_of_5000() {
    const TOTAL: usize = 5000;
    let server = ChildServer::spawn(&[]).await;
    let (_stalled, mut sender, (reader, _), (own, _)) = scenario(&server, TOTAL).await;
    // Flat out: no waiting for anyone between messages.
    for i in 0..TOTAL {
        sender.feed(Message::text(message(i))).await.unwrap();
    }
    sender.flush().await.unwrap();
    assert_eq!(timeout(LONG_WAIT, reader).await.unwrap().unwrap().0, TOTAL);
    assert_eq!(timeout(LONG_WAIT, own).await.unwrap().unwrap().0, TOTAL);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_memory_stays_bounded_while_a_client_is_stalled() {
    // 40 000 messages of 1 KiB (about 40 MiB) pass while one client reads
    // none of them. A per-client queue without bound would hold them all;
    // the hub holds at most its channel and history (8192 messages, about
    // 8.5 MiB).
    const TOTAL: usize = 40_000;
    const WINDOW: usize = 500;
    const BOUND_KIB: u64 = 32 * 1024;
    // Keep the stalled client connected for the whole run.
    let server = ChildServer::spawn(&["--write-timeout", "5m", "--idle-timeout", "5m"]).await;
    let (_stalled, mut sender, (reader, mut progress), (own, mut own_progress)) =
        scenario(&server, TOTAL).await;
    let baseline = server.memory_kib("VmRSS");
    for window in 0..TOTAL / WINDOW {
        for i in window * WINDOW..(window + 1) * WINDOW {
            sender.feed(Message::text(message(i))).await.unwrap();
        }
        sender.flush().await.unwrap();
        // Pace the sender by both readers (the sender reads its own
        // broadcasts too), so neither is ever the one behind: one that fell
        // past the history would miss messages by design.
        let sent = (window + 1) * WINDOW;
        for progress in [&mut progress, &mut own_progress] {
            timeout(LONG_WAIT, progress.wait_for(|&got| got >= sent - WINDOW))
                .await
                .expect("reader stopped progressing")
                .unwrap();
        }
    }
    let (count, _reader) = timeout(LONG_WAIT, reader).await.unwrap().unwrap();
    assert_eq!(count, TOTAL);
    let (count, _own) = timeout(LONG_WAIT, own).await.unwrap().unwrap();
    assert_eq!(count, TOTAL);
    let peak = server.memory_kib("VmHWM");
    let grown = peak.saturating_sub(baseline);
    eprintln!("server peak RSS grew by {grown} KiB over a {baseline} KiB baseline");
    assert!(
        grown < BOUND_KIB,
        "server peak RSS grew by {grown} KiB (baseline {baseline} KiB), bound {BOUND_KIB} KiB"
    );
    // The stalled client is still registered: it was held, not dropped.
    let (_, _, metrics) = http(server.addr, "GET", "/metrics").await;
    assert!(
        metrics
            .lines()
            .any(|l| l == "hub_connections{endpoint=\"ws\"} 3"),
        "{metrics}"
    );
    // It is the one session in the middle of a write, and has been for
    // most of the run.
    assert!(
        metrics
            .lines()
            .any(|l| l == "ws_queue_wait_seconds_count{endpoint=\"ws\"} 1"),
        "{metrics}"
    );
    let waited: f64 = (metrics.lines())
        .find_map(|l| l.strip_prefix("ws_queue_wait_seconds_sum{endpoint=\"ws\"} "))
        .and_then(|sum| sum.parse().ok())
        .unwrap();
    assert!(waited > 0.0, "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn echo_clients_that_stop_reading_are_shed_past_the_queue_budget() {
    let server = common::TestServer::start(&["--queue-budget", "1MiB"]).await;
    // A client that keeps reading is not touched.
    let mut good = server.connect("/echo").await;
    // 200 x 60 KiB of echo requests, none of the replies read: more than
    // the socket buffers hold, so replies pile up in the server's queue.
    let mut stalled = server.connect("/echo").await;
    let request = "x".repeat(60 * 1024);
    for _ in 0..200 {
        timeout(LONG_WAIT, stalled.send(Message::text(request.as_str())))
            .await
            .unwrap()
            .unwrap();
    }
    common::wait_for_metric(server.addr, "hub_shed_total{endpoint=\"echo\"} 1").await;
    common::send_text(&mut good, "still here").await;
    assert_eq!(
        common::recv_text(&mut good).await,
        "Message text was: still here"
    );
    // The stalled client gets every reply accepted for it, then 1013.
    let expected = format!("Message text was: {request}");
    let mut replies = 0;
    let close = loop {
        match timeout(LONG_WAIT, stalled.next()).await.unwrap() {
            Some(Ok(Message::Text(text))) => {
                assert_eq!(text.as_str(), expected);
                replies += 1;
            }
            Some(Ok(Message::Close(Some(frame)))) => break frame,
            other => panic!("expected replies then a close, got {other:?}"),
        }
    };
    assert_eq!(u16::from(close.code), 1013);
    assert_eq!(
        close.reason.as_str(),
        "server overloaded: too much queued for this client; reconnect"
    );
    assert!((1..200).contains(&replies), "{replies} replies");
    let (_, _, metrics) = http(server.addr, "GET", "/metrics").await;
    assert!(metrics
        .lines()
        .any(|l| l == "ws_server_closes_total{endpoint=\"echo\",code=\"1013\"} 1"));
    server.stop().await;
}

/// Opens a WebSocket on `path` by hand over a socket with a small receive
/// buffer, and returns the raw stream after the `101`.
async fn raw_upgrade(addr: std::net::SocketAddr, path: &str) -> tokio::net::TcpStream {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let socket = tokio::net::TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = timeout(LONG_WAIT, socket.connect(addr))
        .await
        .unwrap()
        .unwrap();
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {addr}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let mut head = Vec::new();
    while !head.ends_with(b"\r\n\r\n") {
        let byte = timeout(LONG_WAIT, stream.read_u8()).await.unwrap().unwrap();
        head.push(byte);
    }
    assert!(head.starts_with(b"HTTP/1.1 101 "), "{head:?}");
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_floods_pings_and_never_reads_costs_no_memory_and_is_closed() {
    // Up to 1 GiB of pings, none of the pongs read. The server owes one
    // pong at a time, stops reading until it is written, and closes the
    // client once its output has been stuck for the write timeout.
    const FLOOD: usize = 1 << 30;
    const BOUND_KIB: u64 = 20 * 1024;
    use tokio::io::AsyncWriteExt;
    let server = ChildServer::spawn(&["--write-timeout", "2s"]).await;
    let mut bystander = connect(&server.url("/echo")).await;
    let mut flooder = raw_upgrade(server.addr, "/echo").await;
    let baseline = server.memory_kib("VmRSS");
    // Ping frames of 125 bytes (masked with a zero key), 256 at a time.
    let ping = [&[0x89, 0xFD, 0, 0, 0, 0][..], &[b'p'; 125]].concat();
    let burst = ping.repeat(256);
    let mut sent = 0;
    let flood = timeout(LONG_WAIT, async {
        while sent < FLOOD {
            if flooder.write_all(&burst).await.is_err() {
                return;
            }
            sent += burst.len();
        }
    })
    .await;
    assert!(flood.is_ok(), "the flooding client was never closed");
    let peak = server.memory_kib("VmHWM");
    let grown = peak.saturating_sub(baseline);
    eprintln!(
        "sent {} KiB of pings before the server closed; peak RSS grew by {grown} KiB over {baseline} KiB",
        sent >> 10
    );
    assert!(sent < FLOOD, "the server took 1 GiB of pings");
    assert!(
        grown < BOUND_KIB,
        "server peak RSS grew by {grown} KiB (baseline {baseline} KiB), bound {BOUND_KIB} KiB"
    );
    common::wait_for_metric(
        server.addr,
        "ws_server_closes_total{endpoint=\"echo\",code=\"1013\"} 1",
    )
    .await;
    // Others were served all along.
    common::send_text(&mut bystander, "fine").await;
    assert_eq!(
        common::recv_text(&mut bystander).await,
        "Message text was: fine"
    );
}
