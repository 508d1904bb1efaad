//! The hub in a plain hyper 1.x server, no framework: each client gets
//! `You wrote: {text}` back, everyone else `Client #{id} says: {text}`, and
//! all hear `Client #{id} left the chat` when it goes.
//!
//! Run it: `cargo run --example hyper`, then in two browser consoles:
//!
//! ```text
//! const ws = new WebSocket("ws://127.0.0.1:8000/ws");
//! ws.onmessage = (e) => console.log(e.data);
//! ws.onopen = () => ws.send("Hello!");
//! ```

use std::convert::Infallible;

use http_body_util::Full;
use hub::{Hub, Message, Metadata};
use hub_ws::{Close, CloseCode, Ended, Handler, Session, WsServer};
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

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

async fn route(
    chat: WsServer<Chat>,
    request: Request<Incoming>,
) -> Result<Response<Full<Bytes>>, Infallible> {
    if request.uri().path() != "/ws" {
        let mut response = Response::new(Full::from("not found\n"));
        *response.status_mut() = StatusCode::NOT_FOUND;
        return Ok(response);
    }
    // A 101 that hands the connection to the chat, or why not.
    Ok(chat
        .upgrade(request, Metadata::new())
        .unwrap_or_else(|refused| refused.to_response()))
}

/// Serves the chat on `/ws` for every connection `listener` accepts.
pub(crate) async fn serve(listener: TcpListener) {
    let chat = WsServer::new(Hub::new(), Chat);
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let chat = chat.clone();
        tokio::spawn(async move {
            let service = service_fn(move |request| route(chat.clone(), request));
            // `with_upgrades` lets hyper hand the connection over after the 101.
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .with_upgrades()
                .await;
        });
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let listener = TcpListener::bind("127.0.0.1:8000").await?;
    println!("hyper chat on ws://{}/ws", listener.local_addr()?);
    serve(listener).await;
    Ok(())
}
