//! Sessions on tokio-tungstenite sockets: the same handler, limits and
//! close codes as the built-in codec, over real sockets on loopback.
#![cfg(feature = "tungstenite")]
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use hub::{Hub, Message, PresenceKind, Topic};
use hub_ws::{Close, Config, Ended, Handler, ServeError, Session, SessionLimit, WsServer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};

const WAIT: Duration = Duration::from_secs(5);

type Client = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// The classic chat: a line goes to everyone else.
struct Chat;

impl Handler for Chat {
    async fn on_message(&self, session: &Session, message: Message) -> Result<(), Close> {
        session.hub().except(session.id()).broadcast(message);
        Ok(())
    }
}

/// A server accepting through tokio-tungstenite on a free loopback port;
/// how each session ended, or why it did not start, comes out of the
/// channel.
async fn serve(
    config: Config,
) -> (
    WsServer<Chat>,
    String,
    mpsc::UnboundedReceiver<Result<Ended, ServeError>>,
) {
    let server = WsServer::with_config(Hub::new(), Chat, config);
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("ws://{}/ws", listener.local_addr().unwrap());
    let (outcomes, ended) = mpsc::unbounded_channel();
    let accepting = server.clone();
    tokio::spawn(async move {
        // Bounded: the tests open a few clients each.
        for _ in 0..16 {
            let Ok((tcp, peer)) = listener.accept().await else {
                return;
            };
            let (server, outcomes) = (accepting.clone(), outcomes.clone());
            tokio::spawn(async move {
                let _ = outcomes.send(server.accept_tungstenite(tcp, Some(peer)).await);
            });
        }
    });
    (server, url, ended)
}

async fn connect(url: &str) -> Client {
    let (client, _) = timeout(WAIT, tokio_tungstenite::connect_async(url))
        .await
        .unwrap()
        .unwrap();
    client
}

/// The next data or close message, skipping pings.
async fn next(client: &mut Client) -> WsMessage {
    loop {
        match timeout(WAIT, client.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap()
        {
            WsMessage::Ping(_) | WsMessage::Pong(_) => {}
            other => return other,
        }
    }
}

async fn close_code(client: &mut Client) -> (CloseCode, String) {
    match next(client).await {
        WsMessage::Close(Some(frame)) => (frame.code, frame.reason.as_str().to_owned()),
        other => panic!("expected a close frame, got {other:?}"),
    }
}

#[tokio::test]
async fn a_line_reaches_the_others_exactly() {
    let (server, url, _ended) = serve(Config::default()).await;
    let mut joined = server.hub().presence();
    let mut ann = connect(&url).await;
    let mut bob = connect(&url).await;
    for _ in 0..2 {
        let event = timeout(WAIT, joined.recv()).await.unwrap().unwrap();
        assert_eq!(
            (event.kind, event.topic),
            (PresenceKind::Joined, Topic::All)
        );
    }
    ann.send(WsMessage::text("hi")).await.unwrap();
    assert_eq!(next(&mut bob).await, WsMessage::text("hi"));
    bob.send(WsMessage::binary(vec![1, 2, 3])).await.unwrap();
    assert_eq!(next(&mut ann).await, WsMessage::binary(vec![1, 2, 3]));
    assert_eq!(server.sessions(), 2);
}

#[tokio::test]
async fn a_message_past_the_limit_closes_with_1009() {
    let (_server, url, mut ended) = serve(Config::default().max_message_size(1024)).await;
    let mut client = connect(&url).await;
    client
        .send(WsMessage::text("x".repeat(1025)))
        .await
        .unwrap();
    assert_eq!(close_code(&mut client).await.0, CloseCode::Size);
    let ended = timeout(WAIT, ended.recv()).await.unwrap().unwrap().unwrap();
    match ended {
        Ended::ServerClosed(close) => assert_eq!(close.code().0, 1009),
        other => panic!("expected the server to close, got {other:?}"),
    }
}

#[tokio::test]
async fn the_hub_closes_with_1000_then_1001_at_shutdown() {
    let (server, url, _ended) = serve(Config::default()).await;
    let mut joined = server.hub().presence();
    let mut first = connect(&url).await;
    let id = timeout(WAIT, joined.recv()).await.unwrap().unwrap().id;
    assert!(server.hub().disconnect(id));
    assert_eq!(close_code(&mut first).await.0, CloseCode::Normal);

    let mut second = connect(&url).await;
    timeout(WAIT, joined.recv()).await.unwrap().unwrap();
    server.hub().shutdown();
    assert_eq!(close_code(&mut second).await.0, CloseCode::Away);
}

#[tokio::test]
async fn the_handshake_is_checked_as_upgrade_checks_it() {
    let limit = SessionLimit::new().max(1);
    let (_server, url, mut ended) = serve(Config::default().session_limit(limit)).await;

    // Another site's page: refused before any session.
    let mut request = url.as_str().into_client_request().unwrap();
    let origin = "http://elsewhere.example".parse().unwrap();
    request.headers_mut().insert("origin", origin);
    match timeout(WAIT, tokio_tungstenite::connect_async(request))
        .await
        .unwrap()
    {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 403),
        other => panic!("expected 403, got {other:?}"),
    }
    let refused = timeout(WAIT, ended.recv()).await.unwrap().unwrap();
    assert!(
        matches!(refused, Err(ServeError::Refused(_))),
        "{refused:?}"
    );

    // One session at most: the second client waits for a place.
    let _first = connect(&url).await;
    match timeout(WAIT, tokio_tungstenite::connect_async(&url))
        .await
        .unwrap()
    {
        Err(WsError::Http(response)) => assert_eq!(response.status(), 503),
        other => panic!("expected 503, got {other:?}"),
    }
}
