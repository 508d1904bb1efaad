//! The seed's second example: a chat where every message reaches every
//! client as `Client says: {text}` and the others hear `A client
//! disconnected` when one leaves, served through hyper 1.x on `/ws`.
//!
//! Run it:
//!
//! ```text
//! cargo run --example broadcast            # listens on 127.0.0.1:8000
//! cargo run --example broadcast -- 9000    # or another port
//! ```
//!
//! Open two browser consoles and in each:
//!
//! ```text
//! const ws = new WebSocket("ws://127.0.0.1:8000/ws");
//! ws.onmessage = (e) => console.log(e.data);
//! ws.onopen = () => ws.send("Hello Server!");   // both print: Client says: Hello Server!
//! ```

use std::convert::Infallible;

use bytes::Bytes;
use http_body_util::Full;
use hub::{Hub, Message, Metadata};
use hub_ws::{Close, CloseCode, Ended, Handler, Session, WsServer};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// The seed's `ConnectionManager`, as a handler of hub sessions.
struct Chat;

impl Handler for Chat {
    async fn on_message(&self, session: &Session, message: Message) -> Result<(), Close> {
        let Some(text) = message.as_text() else {
            return Err(Close::new(CloseCode::UNSUPPORTED, "text only"));
        };
        session.hub().broadcast(format!("Client says: {text}"));
        Ok(())
    }

    async fn on_close(&self, session: &Session, _ended: &Ended) {
        session.hub().broadcast("A client disconnected");
    }
}

async fn route(
    chat: WsServer<Chat>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.uri().path() != "/ws" {
        let mut response = Response::new(Full::from("not found\n"));
        *response.status_mut() = StatusCode::NOT_FOUND;
        return Ok(response);
    }
    Ok(chat
        .upgrade(request, Metadata::new())
        .unwrap_or_else(|error| error.to_response()))
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port = std::env::args().nth(1).unwrap_or_else(|| "8000".into());
    let listener = TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    println!("broadcast listening on ws://{}/ws", listener.local_addr()?);
    let chat = WsServer::new(Hub::new(), Chat);
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                eprintln!("accept failed: {error}");
                continue;
            }
        };
        let chat = chat.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| route(chat.clone(), request));
            let connection = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades();
            if let Err(error) = connection.await {
                eprintln!("HTTP connection error: {error}");
            }
        });
    }
}
