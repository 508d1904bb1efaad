//! The examples, run as servers on 127.0.0.1:0 and talked to with real
//! clients, so the code users copy keeps working.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

#[allow(dead_code)]
#[path = "../examples/axum.rs"]
mod axum_example;
#[allow(dead_code)]
#[path = "../examples/hyper.rs"]
mod hyper_example;
#[allow(dead_code)]
#[path = "../examples/sse.rs"]
mod sse_example;

use std::net::SocketAddr;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const WAIT: Duration = Duration::from_secs(10);

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

async fn listener() -> (TcpListener, SocketAddr) {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    (listener, addr)
}

async fn connect(addr: SocketAddr) -> Client {
    let url = format!("ws://{addr}/ws");
    timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .unwrap()
        .unwrap()
        .0
}

async fn recv(client: &mut Client) -> Message {
    loop {
        match timeout(WAIT, client.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            Message::Ping(_) | Message::Pong(_) => continue,
            other => return other,
        }
    }
}

/// Both chat examples speak the FastAPI tutorial's full protocol.
async fn chat_protocol(addr: SocketAddr) {
    let mut alice = connect(addr).await;
    // Bob's "You wrote" proves both sessions are registered.
    let mut bob = connect(addr).await;
    bob.send(Message::text("ready")).await.unwrap();
    assert_eq!(recv(&mut bob).await, Message::text("You wrote: ready"));
    let bob_id = match recv(&mut alice).await {
        Message::Text(text) => {
            let id = text
                .strip_prefix("Client #")
                .unwrap()
                .strip_suffix(" says: ready")
                .unwrap();
            id.parse::<u64>().unwrap()
        }
        other => panic!("{other:?}"),
    };
    alice.send(Message::text("hi")).await.unwrap();
    assert_eq!(recv(&mut alice).await, Message::text("You wrote: hi"));
    let Message::Text(heard) = recv(&mut bob).await else {
        panic!()
    };
    assert!(
        heard.starts_with("Client #") && heard.ends_with(" says: hi"),
        "{heard}"
    );
    drop(bob);
    assert_eq!(
        recv(&mut alice).await,
        Message::text(format!("Client #{bob_id} left the chat"))
    );
}

#[tokio::test]
async fn axum_example_chats() {
    let (listener, addr) = listener().await;
    tokio::spawn(async move { axum::serve(listener, axum_example::app()).await });
    chat_protocol(addr).await;
}

#[tokio::test]
async fn axum_example_applies_the_size_limit() {
    let (listener, addr) = listener().await;
    tokio::spawn(async move { axum::serve(listener, axum_example::app()).await });
    let mut client = connect(addr).await;
    client
        .send(Message::text("x".repeat(64 * 1024 + 1)))
        .await
        .unwrap();
    match recv(&mut client).await {
        Message::Close(Some(frame)) => assert_eq!(u16::from(frame.code), 1009),
        other => panic!("expected close 1009, got {other:?}"),
    }
}

#[tokio::test]
async fn hyper_example_chats() {
    let (listener, addr) = listener().await;
    tokio::spawn(hyper_example::serve(listener));
    chat_protocol(addr).await;
}

#[tokio::test]
async fn sse_example_streams_broadcasts() {
    let (listener, addr) = listener().await;
    tokio::spawn(sse_example::serve(listener));
    // HTTP/1.0: the event stream is sent as is, ended by closing.
    let mut events = TcpStream::connect(addr).await.unwrap();
    events
        .write_all(b"GET /events HTTP/1.0\r\n\r\n")
        .await
        .unwrap();
    let mut seen = Vec::new();
    let mut buf = [0u8; 1024];
    // The headers arrive once the stream is registered with the hub.
    while !String::from_utf8_lossy(&seen).contains("\r\n\r\n") {
        let n = timeout(WAIT, events.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "stream closed early");
        seen.extend_from_slice(&buf[..n]);
    }
    assert!(String::from_utf8_lossy(&seen).contains("content-type: text/event-stream"));
    let mut post = TcpStream::connect(addr).await.unwrap();
    post.write_all(b"POST /send HTTP/1.0\r\nContent-Length: 11\r\n\r\nhello there")
        .await
        .unwrap();
    let mut reply = String::new();
    timeout(WAIT, post.read_to_string(&mut reply))
        .await
        .unwrap()
        .unwrap();
    assert!(reply.ends_with("sent to 1 listeners\n"), "{reply}");
    while !String::from_utf8_lossy(&seen).contains("data: hello there\n\n") {
        let n = timeout(WAIT, events.read(&mut buf)).await.unwrap().unwrap();
        assert!(n > 0, "stream closed early");
        seen.extend_from_slice(&buf[..n]);
    }
}
