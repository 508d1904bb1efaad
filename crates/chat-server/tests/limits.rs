//! Bad input and scale: oversized and invalid messages get the right close
//! code and the server keeps serving; 500 clients all get a broadcast.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use chat_server::{Args, Server};
use clap::Parser;
use common::{
    exchange, handshake_status, http, recv_close, recv_text, send_text, wait_for_connections,
    TestServer, WAIT,
};
use futures_util::future::join_all;
use futures_util::SinkExt;
use tokio::net::TcpStream;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::frame::coding::{Data, OpCode};
use tokio_tungstenite::tungstenite::protocol::frame::Frame;
use tokio_tungstenite::tungstenite::Message;

#[tokio::test]
async fn oversized_message_closes_with_1009_and_the_server_keeps_serving() {
    let server = TestServer::start(&[]).await;
    let mut bystander = server.connect("/ws").await;
    let mut big = server.connect("/ws").await;
    wait_for_connections(server.addr, 2).await;
    // Exactly the limit is fine.
    let limit = 64 * 1024;
    let at_limit = "a".repeat(limit);
    send_text(&mut big, &at_limit).await;
    assert_eq!(
        recv_text(&mut big).await.len(),
        "Client says: ".len() + limit
    );
    assert_eq!(
        recv_text(&mut bystander).await.len(),
        "Client says: ".len() + limit
    );
    // One byte more is not.
    big.send(Message::text("a".repeat(limit + 1)))
        .await
        .unwrap();
    assert_eq!(
        recv_close(&mut big).await,
        (1009, "message too big".to_owned())
    );
    assert_eq!(recv_text(&mut bystander).await, "A client disconnected");
    // The server still serves old and new clients.
    let mut fresh = server.connect("/ws").await;
    wait_for_connections(server.addr, 2).await;
    send_text(&mut fresh, "after").await;
    assert_eq!(recv_text(&mut fresh).await, "Client says: after");
    assert_eq!(recv_text(&mut bystander).await, "Client says: after");
    server.stop().await;
}

#[tokio::test]
async fn a_far_too_big_message_still_gets_its_1009() {
    // Most of this message is still unread when the server closes; the
    // close frame must reach the client anyway (no reset destroys it).
    let server = TestServer::start(&[]).await;
    let mut client = server.connect("/echo").await;
    let _ = client.send(Message::binary(vec![7u8; 4 << 20])).await;
    assert_eq!(
        recv_close(&mut client).await,
        (1009, "message too big".to_owned())
    );
    server.stop().await;
}

#[tokio::test]
async fn configured_limit_applies() {
    let server = TestServer::start(&["--max-message-size", "100"]).await;
    let mut client = server.connect("/echo").await;
    send_text(&mut client, &"b".repeat(100)).await;
    assert_eq!(
        recv_text(&mut client).await,
        format!("Message text was: {}", "b".repeat(100))
    );
    client.send(Message::text("b".repeat(101))).await.unwrap();
    assert_eq!(recv_close(&mut client).await.0, 1009);
    server.stop().await;
}

#[tokio::test]
async fn invalid_utf8_text_closes_with_1007() {
    let server = TestServer::start(&[]).await;
    for path in ["/ws", "/echo"] {
        let mut client = server.connect(path).await;
        let frame = Frame::message(vec![0x48, 0xff, 0xfe, 0x49], OpCode::Data(Data::Text), true);
        client.send(Message::Frame(frame)).await.unwrap();
        assert_eq!(
            recv_close(&mut client).await,
            (1007, "invalid UTF-8".to_owned()),
            "{path}"
        );
    }
    assert_eq!(http(server.addr, "GET", "/healthz").await.0, 200);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_hundred_clients_all_receive_one_broadcast() {
    const CLIENTS: usize = 500;
    let server = TestServer::start(&[]).await;
    let url = server.url("/ws");
    let mut clients = join_all((0..CLIENTS).map(|_| common::connect(&url))).await;
    wait_for_connections(server.addr, CLIENTS).await;
    send_text(&mut clients[0], "to all 500").await;
    let received = join_all(clients.iter_mut().map(|client| async move {
        let text = recv_text(client).await;
        assert_eq!(text, "Client says: to all 500");
    }))
    .await;
    assert_eq!(received.len(), CLIENTS);
    let (_, _, metrics) = http(server.addr, "GET", "/metrics").await;
    assert!(metrics
        .lines()
        .any(|l| l == format!("hub_deliveries_total{{endpoint=\"ws\"}} {CLIENTS}")));
    drop(clients);
    server.stop().await;
}

/// A burst of new connections waits in the kernel's backlog until the
/// server accepts it. With the default backlog, 1 000 clients connecting at
/// once all complete their TCP handshake, here before the server accepts a
/// single one; with tokio's `bind` (room for 128) the rest would wait for a
/// retransmitted handshake, a second at best.
#[tokio::test]
async fn a_burst_of_a_thousand_connections_waits_in_the_backlog() {
    // The kernel caps any backlog at `net.core.somaxconn`.
    let somaxconn = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .ok()
        .and_then(|text| text.trim().parse::<usize>().ok())
        .unwrap_or(4096);
    let burst = somaxconn.min(1_000);
    let argv = ["chat-server", "--host", "127.0.0.1", "--port", "0"];
    let server = Server::bind(&Args::parse_from(argv)).await.unwrap();
    let addr = server.local_addr().unwrap();
    let connected = tokio::time::timeout(
        WAIT,
        join_all((0..burst).map(|_| tokio::net::TcpStream::connect(addr))),
    )
    .await
    .expect("connections beyond the backlog are still waiting");
    let connected = connected.into_iter().filter(Result::is_ok).count();
    assert_eq!(connected, burst);
    drop(server);
}

#[tokio::test]
async fn pages_from_other_origins_are_refused() {
    let server = TestServer::start(&["--allowed-origin", "*.example.com"]).await;
    let same = format!("http://{}", server.addr);
    assert_eq!(
        handshake_status(&server, "/ws", &[("origin", &same)]).await,
        101
    );
    assert_eq!(handshake_status(&server, "/ws", &[]).await, 101);
    let evil = [("origin", "https://evil.example")];
    assert_eq!(handshake_status(&server, "/ws", &evil).await, 403);
    assert_eq!(handshake_status(&server, "/echo", &evil).await, 403);
    assert_eq!(
        handshake_status(&server, "/ws?room=r&name=x", &evil).await,
        403
    );
    let allowed = [("origin", "https://app.example.com")];
    assert_eq!(handshake_status(&server, "/ws", &allowed).await, 101);
    server.stop().await;
    // A list with spaces after its commas.
    let listed = "https://a.example, https://b.example/";
    let server = TestServer::start(&["--allowed-origin", listed]).await;
    for origin in ["https://a.example", "https://b.example"] {
        let status = handshake_status(&server, "/ws", &[("origin", origin)]).await;
        assert_eq!(status, 101, "{origin}");
    }
    let status = handshake_status(&server, "/ws", &[("origin", "https://c.example")]).await;
    assert_eq!(status, 403);
    server.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_flood_of_refused_handshakes_is_counted_not_all_logged() {
    use tokio::io::AsyncBufReadExt;
    let mut child = common::ChildServer::spawn_with(&[], std::process::Stdio::piped()).await;
    let stderr = child.child.stderr.take().unwrap();
    let lines = tokio::spawn(async move {
        let mut lines = tokio::io::BufReader::new(stderr).lines();
        let mut refusals = Vec::new();
        while let Ok(Some(line)) = lines.next_line().await {
            if line.contains("refused a WebSocket handshake") {
                refusals.push(line);
            }
        }
        refusals
    });
    let addr = child.addr;
    let evil = [("origin", "https://evil.example")];
    for _ in 0..200 {
        let (status, _, _) = common::handshake_at(addr, "/ws", &evil).await;
        assert_eq!(status, 403);
    }
    common::wait_for_metric(
        addr,
        "ws_handshakes_refused_total{endpoint=\"ws\",reason=\"origin\"} 200",
    )
    .await;
    child.signal("TERM").await;
    assert_eq!(child.wait_exit(WAIT).await, Some(0));
    let refusals = timeout(WAIT, lines).await.unwrap().unwrap();
    // The first few of the window, not 200.
    assert_eq!(refusals.len(), 10, "{refusals:#?}");
    assert!(refusals[0].contains("evil.example"), "{}", refusals[0]);
}

#[tokio::test]
async fn connection_limits_refuse_before_the_upgrade() {
    let server = TestServer::start(&["--max-connections", "2"]).await;
    let _a = server.connect("/ws").await;
    let _b = server.connect("/echo").await;
    // The limit covers every endpoint together.
    assert_eq!(handshake_status(&server, "/ws", &[]).await, 503);
    assert_eq!(handshake_status(&server, "/ws?room=r", &[]).await, 503);
    drop(_b);
    // The place comes back once the session has ended.
    let deadline = tokio::time::Instant::now() + WAIT;
    while handshake_status(&server, "/echo", &[]).await != 101 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the place never came back"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    }
    server.stop().await;

    let server = TestServer::start(&["--max-connections-per-ip", "1"]).await;
    let _first = server.connect("/ws").await;
    assert_eq!(handshake_status(&server, "/ws", &[]).await, 429);
    server.stop().await;
}

#[tokio::test]
async fn a_flooding_client_is_told_then_closed_with_1008() {
    let server = TestServer::start(&[
        "--rate-limit",
        "1",
        "--rate-burst",
        "2",
        "--rate-limit-close-after",
        "3",
    ])
    .await;
    let mut client = server.connect("/echo").await;
    for i in 0..6 {
        client.feed(Message::text(format!("m{i}"))).await.unwrap();
    }
    client.flush().await.unwrap();
    assert_eq!(recv_text(&mut client).await, "Message text was: m0");
    assert_eq!(recv_text(&mut client).await, "Message text was: m1");
    assert_eq!(
        recv_text(&mut client).await,
        "slow down: 1 message(s) dropped"
    );
    assert_eq!(
        recv_text(&mut client).await,
        "slow down: 2 message(s) dropped"
    );
    assert_eq!(
        recv_close(&mut client).await,
        (1008, "too many messages".to_owned())
    );
    server.stop().await;
}

#[tokio::test]
async fn a_ping_flood_is_bounded_by_the_rate_limit() {
    let server = TestServer::start(&["--rate-limit", "1", "--rate-limit-close-after", "5"]).await;
    let mut client = server.connect("/echo").await;
    for _ in 0..20 {
        client.feed(Message::Ping(vec![1].into())).await.unwrap();
    }
    client.flush().await.unwrap();
    assert_eq!(
        recv_close(&mut client).await,
        (1008, "too many messages".to_owned())
    );
    server.stop().await;
}

/// A request head of `filler` bytes past its first line, with everything a
/// WebSocket handshake needs.
fn upgrade_head(path: &str, filler: usize) -> Vec<u8> {
    format!(
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\
         X-Filler: {}\r\n\r\n",
        "a".repeat(filler)
    )
    .into_bytes()
}

/// The status line the server answered `request` with; any answer but a
/// `101` must also close the connection.
async fn exchange_with(server: &TestServer, request: Vec<u8>) -> String {
    let stream = TcpStream::connect(server.addr).await.unwrap();
    let answer = exchange(stream, request).await;
    if !answer.status.starts_with("HTTP/1.1 101 ") {
        assert!(answer.closed, "{answer:?} and the connection stayed open");
    }
    answer.status
}

#[tokio::test]
async fn a_request_line_that_never_ends_is_answered_431_at_once() {
    let server = TestServer::start(&[]).await;
    for path in ["/ws", "/ws?room=r", "/echo", "/static/index.html", "/"] {
        // 100 000 bytes and no line end: the server stops reading at its
        // limit, answers and closes, well before any timeout.
        let request = format!("GET {path}{}", "a".repeat(100_000)).into_bytes();
        assert_eq!(
            exchange_with(&server, request).await,
            "HTTP/1.1 431 Request Header Fields Too Large",
            "{path}"
        );
    }
    // The server still serves.
    let mut client = server.connect("/echo").await;
    send_text(&mut client, "still here").await;
    assert_eq!(recv_text(&mut client).await, "Message text was: still here");
    server.stop().await;
}

#[tokio::test]
async fn request_heads_are_limited_to_16_kib_in_all() {
    let server = TestServer::start(&[]).await;
    for path in ["/ws", "/echo"] {
        // Just under the limit, the handshake goes through.
        assert_eq!(
            exchange_with(&server, upgrade_head(path, 15 << 10)).await,
            "HTTP/1.1 101 Switching Protocols",
            "{path}"
        );
        assert_eq!(
            exchange_with(&server, upgrade_head(path, 16 << 10)).await,
            "HTTP/1.1 431 Request Header Fields Too Large",
            "{path}"
        );
    }
    // Many headers that each fit add up the same way.
    let mut many = b"GET /static/index.html HTTP/1.1\r\nHost: 127.0.0.1\r\n".to_vec();
    for i in 0..90 {
        many.extend_from_slice(format!("X-{i}: {}\r\n", "b".repeat(200)).as_bytes());
    }
    many.extend_from_slice(b"\r\n");
    assert_eq!(
        exchange_with(&server, many).await,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    server.stop().await;
}

#[tokio::test]
async fn max_request_head_raises_the_limit() {
    let server = TestServer::start(&["--max-request-head", "64KiB"]).await;
    assert_eq!(
        exchange_with(&server, upgrade_head("/ws", 40 << 10)).await,
        "HTTP/1.1 101 Switching Protocols"
    );
    assert_eq!(
        exchange_with(&server, upgrade_head("/ws", 64 << 10)).await,
        "HTTP/1.1 431 Request Header Fields Too Large"
    );
    server.stop().await;
}

#[tokio::test]
async fn what_is_not_http_is_answered_400_at_once() {
    let server = TestServer::start(&[]).await;
    let garbage: [&[u8]; 3] = [
        // A TLS ClientHello sent to the plain port.
        b"\x16\x03\x01\x00\xa5\x01\x00\x00\xa1\x03\x03",
        b"HELLO\r\n\r\n",
        b"GET /ws HTTP/1.1\r\nHo st: x\r\n\r\n",
    ];
    for request in garbage {
        assert_eq!(
            exchange_with(&server, request.to_vec()).await,
            "HTTP/1.1 400 Bad Request",
            "{request:?}"
        );
    }
    server.stop().await;
}
