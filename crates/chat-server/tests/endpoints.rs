//! The seed's endpoints and texts, over real sockets on loopback.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{
    assert_silent, handshake_status, header, http, recv_close, recv_text, send_text,
    wait_for_connections, wait_for_metric, TestServer, WAIT,
};
use futures_util::SinkExt;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message;

const QUIET: Duration = Duration::from_millis(300);

#[tokio::test]
async fn ws_broadcasts_client_says_to_everyone_including_the_sender() {
    let server = TestServer::start(&[]).await;
    let mut clients = Vec::new();
    for _ in 0..3 {
        clients.push(server.connect("/ws").await);
    }
    wait_for_connections(server.addr, 3).await;
    send_text(&mut clients[0], "Hello Server!").await;
    for client in &mut clients {
        assert_eq!(recv_text(client).await, "Client says: Hello Server!");
    }
    send_text(&mut clients[2], "second").await;
    for client in &mut clients {
        assert_eq!(recv_text(client).await, "Client says: second");
    }
    server.stop().await;
}

#[tokio::test]
async fn clean_close_tells_the_others() {
    let server = TestServer::start(&[]).await;
    let mut stay = server.connect("/ws").await;
    let mut leave = server.connect("/ws").await;
    wait_for_connections(server.addr, 2).await;
    leave
        .close(Some(CloseFrame {
            code: 1000u16.into(),
            reason: "bye".into(),
        }))
        .await
        .unwrap();
    assert_eq!(recv_text(&mut stay).await, "A client disconnected");
    assert_silent(&mut stay, QUIET).await;
    server.stop().await;
}

#[tokio::test]
async fn dropped_tcp_connection_tells_the_others() {
    let server = TestServer::start(&[]).await;
    let mut stay = server.connect("/ws").await;
    let vanish = server.connect("/ws").await;
    wait_for_connections(server.addr, 2).await;
    // No close frame: the TCP stream just goes away.
    drop(vanish);
    assert_eq!(recv_text(&mut stay).await, "A client disconnected");
    wait_for_connections(server.addr, 1).await;
    // The server keeps serving the one that stayed.
    send_text(&mut stay, "still here").await;
    assert_eq!(recv_text(&mut stay).await, "Client says: still here");
    server.stop().await;
}

#[tokio::test]
async fn echo_replies_to_the_sender_alone() {
    let server = TestServer::start(&[]).await;
    let mut talker = server.connect("/echo").await;
    let mut bystander = server.connect("/echo").await;
    send_text(&mut talker, "hi").await;
    assert_eq!(recv_text(&mut talker).await, "Message text was: hi");
    send_text(&mut talker, "ünïcode ✓").await;
    assert_eq!(recv_text(&mut talker).await, "Message text was: ünïcode ✓");
    assert_silent(&mut bystander, QUIET).await;
    // Echo clients are not part of the chat.
    let mut chatter = server.connect("/ws").await;
    send_text(&mut chatter, "chat").await;
    assert_eq!(recv_text(&mut chatter).await, "Client says: chat");
    assert_silent(&mut talker, QUIET).await;
    server.stop().await;
}

#[tokio::test]
async fn echo_keeps_order_under_a_burst() {
    let server = TestServer::start(&[]).await;
    let mut client = server.connect("/echo").await;
    for i in 0..1000 {
        client.feed(Message::text(format!("{i}"))).await.unwrap();
    }
    client.flush().await.unwrap();
    for i in 0..1000 {
        assert_eq!(
            recv_text(&mut client).await,
            format!("Message text was: {i}")
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn binary_messages_close_with_1003_and_nothing_breaks() {
    let server = TestServer::start(&[]).await;
    let mut other = server.connect("/ws").await;
    let mut binary = server.connect("/ws").await;
    wait_for_connections(server.addr, 2).await;
    binary
        .send(Message::binary(vec![0, 159, 146, 150]))
        .await
        .unwrap();
    assert_eq!(
        recv_close(&mut binary).await,
        (1003, "only text messages are supported".to_owned())
    );
    assert_eq!(recv_text(&mut other).await, "A client disconnected");
    send_text(&mut other, "fine").await;
    assert_eq!(recv_text(&mut other).await, "Client says: fine");
    let mut echo = server.connect("/echo").await;
    echo.send(Message::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(recv_close(&mut echo).await.0, 1003);
    server.stop().await;
}

#[tokio::test]
async fn the_room_chat_and_the_tutorial_page_are_served_with_their_style() {
    let server = TestServer::start(&[]).await;
    let page = |path: &'static str| async move {
        let (status, headers, body) = http(server.addr, "GET", path).await;
        assert_eq!(status, 200, "{path}");
        assert_eq!(
            header(&headers, "content-type"),
            Some("text/html; charset=utf-8"),
            "{path}"
        );
        assert!(body.contains("<title>WebSocket Chat</title>"), "{path}");
        assert!(body.contains(r#"href="/static/style.css""#), "{path}");
        assert!(body.contains(r#"<script src="/static/page.js">"#), "{path}");
        assert!(!body.contains("localhost:8000"), "{path}");
        body
    };
    for path in ["/", "/index.html"] {
        let rooms = page(path).await;
        assert!(rooms.contains(r#"<form id="join" hidden>"#), "{path}");
        assert!(
            rooms.contains(r#"import { ChatClient } from "/client.js";"#),
            "{path}"
        );
        assert!(rooms.contains(r#"href="/static/index.html""#), "{path}");
    }
    let tutorial = page("/static/index.html").await;
    assert!(!tutorial.contains(r#"id="join""#));
    assert!(tutorial.contains(r#"<input id="messageInput""#));
    assert!(tutorial.contains(r#"<ul id="messages""#));
    assert!(tutorial.contains("location.host + \"/ws\";"));
    assert!(tutorial.contains(r#"import { Backoff } from "/client.js";"#));
    assert!(tutorial.contains(r#"<a href="/""#));

    let (status, headers, body) = http(server.addr, "GET", "/static/style.css").await;
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "content-type"),
        Some("text/css; charset=utf-8")
    );
    assert!(body.contains("#messageInput {"));
    let (status, headers, body) = http(server.addr, "GET", "/static/page.js").await;
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert!(body.contains("const chatPage = "));
    // Any page may import the client module, from any origin.
    let (status, headers, body) = http(server.addr, "GET", "/client.js").await;
    assert_eq!(status, 200);
    assert_eq!(
        header(&headers, "content-type"),
        Some("text/javascript; charset=utf-8")
    );
    assert_eq!(header(&headers, "access-control-allow-origin"), Some("*"));
    assert!(body.contains("export class ChatClient extends EventTarget {"));
    assert!(body.contains("export class Backoff {"));
    server.stop().await;
}

#[tokio::test]
async fn health_not_found_and_plain_http_to_ws() {
    let server = TestServer::start(&[]).await;
    assert_eq!(http(server.addr, "GET", "/healthz").await.0, 200);
    assert_eq!(http(server.addr, "GET", "/healthz").await.2, "ok\n");
    let (status, _, body) = http(server.addr, "GET", "/nope").await;
    assert_eq!((status, body.as_str()), (404, "not found\n"));
    for path in ["/ws", "/echo"] {
        let (status, headers, body) = http(server.addr, "GET", path).await;
        assert_eq!(status, 426, "{path}");
        assert_eq!(header(&headers, "upgrade"), Some("websocket"));
        assert_eq!(
            body,
            "this endpoint speaks WebSocket only; connect with a WebSocket client\n"
        );
    }
    assert_eq!(http(server.addr, "POST", "/").await.0, 405);
    server.stop().await;
}

#[tokio::test]
async fn stopping_closes_idle_keep_alive_connections() {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    let server = TestServer::start(&[]).await;
    let mut idle = tokio::net::TcpStream::connect(server.addr).await.unwrap();
    idle.write_all(b"GET /healthz HTTP/1.1\r\nHost: test\r\n\r\n")
        .await
        .unwrap();
    let mut buf = vec![0u8; 1024];
    let n = tokio::time::timeout(WAIT, idle.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&buf[..n]).ends_with("ok\n"));
    server.stop().await;
    // The server closes the kept-alive connection: end of stream.
    let n = tokio::time::timeout(WAIT, idle.read(&mut buf))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(n, 0);
}

#[tokio::test]
async fn metrics_count_connections_and_deliveries() {
    let server = TestServer::start(&[]).await;
    let mut a = server.connect("/ws").await;
    let mut b = server.connect("/ws").await;
    wait_for_connections(server.addr, 2).await;
    send_text(&mut a, "x").await;
    assert_eq!(recv_text(&mut a).await, "Client says: x");
    assert_eq!(recv_text(&mut b).await, "Client says: x");
    let (status, headers, body) = http(server.addr, "GET", "/metrics").await;
    assert_eq!(status, 200);
    assert!(header(&headers, "content-type")
        .unwrap()
        .starts_with("application/openmetrics-text; version=1.0.0"));
    for line in [
        "hub_connections{endpoint=\"ws\"} 2",
        "hub_connected_total{endpoint=\"ws\"} 2",
        "hub_broadcasts_total{endpoint=\"ws\"} 1",
        "hub_deliveries_total{endpoint=\"ws\"} 2",
        "hub_connections{endpoint=\"echo\"} 0",
        "hub_rooms{endpoint=\"ws\"} 0",
        "hub_connections{endpoint=\"rooms\"} 0",
        "hub_resyncs_total{endpoint=\"ws\"} 0",
        "# TYPE hub_connections gauge",
        "ws_sessions{endpoint=\"ws\"} 2",
        "ws_sessions_opened_total{endpoint=\"ws\"} 2",
        "ws_messages_in_total{endpoint=\"ws\"} 1",
        "ws_bytes_in_total{endpoint=\"ws\"} 1",
        "ws_messages_out_total{endpoint=\"ws\"} 2",
        "ws_bytes_out_total{endpoint=\"ws\"} 28",
        "ws_handshakes_refused_total{endpoint=\"ws\",reason=\"origin\"} 0",
        "# TYPE ws_handshakes_refused counter",
    ] {
        assert!(
            body.lines().any(|l| l == line),
            "missing {line:?} in\n{body}"
        );
    }

    // Refused handshakes by reason, closes by who and code, joins.
    let evil = [("origin", "https://evil.example")];
    assert_eq!(handshake_status(&server, "/echo", &evil).await, 403);
    assert_eq!(http(server.addr, "GET", "/ws").await.0, 426);
    let mut echo = server.connect("/echo").await;
    echo.send(Message::binary(vec![1u8])).await.unwrap();
    assert_eq!(recv_close(&mut echo).await.0, 1003);
    b.close(None).await.unwrap();
    let mut room = server.connect("/ws?room=r&name=ann").await;
    assert_eq!(recv_text(&mut room).await, "ann joined");
    room.close(None).await.unwrap();
    for line in [
        "ws_handshakes_refused_total{endpoint=\"echo\",reason=\"origin\"} 1",
        "ws_handshakes_refused_total{endpoint=\"ws\",reason=\"not_websocket\"} 1",
        "ws_server_closes_total{endpoint=\"echo\",code=\"1003\"} 1",
        "ws_client_closes_total{endpoint=\"ws\"} 1",
        "hub_joins_total{endpoint=\"rooms\"} 1",
        "hub_leaves_total{endpoint=\"rooms\"} 1",
    ] {
        wait_for_metric(server.addr, line).await;
    }
    drop(a);
    server.stop().await;
}
