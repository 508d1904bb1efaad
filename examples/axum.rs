//! The hub inside an axum application, through axum's own
//! `WebSocketUpgrade` extractor: each client gets `You wrote: {text}` back,
//! everyone else `Client #{id} says: {text}`, and all hear
//! `Client #{id} left the chat` when it goes.
//!
//! Run it: `cargo run --example axum`, then in two browser consoles:
//!
//! ```text
//! const ws = new WebSocket("ws://127.0.0.1:8000/ws");
//! ws.onmessage = (e) => console.log(e.data);
//! ws.onopen = () => ws.send("Hello!");
//! ```

use axum::extract::{State, WebSocketUpgrade};
use axum::http::request::Parts;
use axum::response::Response;
use axum::routing::get;
use axum::Router;
use hub::{Hub, Message, Metadata};
use hub_ws::{Close, CloseCode, Ended, Handler, Session, WsServer};

/// What the chat does with each client's messages.
struct Chat;

impl Handler for Chat {
    async fn on_message(&self, session: &Session, message: Message) -> Result<(), Close> {
        let Some(text) = message.as_text() else {
            return Err(Close::new(CloseCode::UNSUPPORTED, "text only"));
        };
        let id = session.id().get();
        let _ = session.send(format!("You wrote: {text}")).await;
        session
            .hub()
            .except(session.id())
            .broadcast(format!("Client #{id} says: {text}"));
        Ok(())
    }

    async fn on_close(&self, session: &Session, _ended: &Ended) {
        let id = session.id().get();
        session
            .hub()
            .broadcast(format!("Client #{id} left the chat"));
    }
}

async fn ws(
    upgrade: WebSocketUpgrade,
    State(chat): State<WsServer<Chat>>,
    parts: Parts,
) -> Response {
    // The request lets the server refuse pages from other origins.
    chat.axum_upgrade(upgrade, &parts, Metadata::new())
}

/// The application: the chat on `/ws`.
pub(crate) fn app() -> Router {
    Router::new()
        .route("/ws", get(ws))
        .with_state(WsServer::new(Hub::new(), Chat))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
    println!("axum chat on ws://{}/ws", listener.local_addr()?);
    axum::serve(listener, app()).await
}
