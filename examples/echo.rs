//! The seed's first example: a WebSocket endpoint that answers every text
//! message with `Message text was: {text}`, served on plain TCP (no HTTP
//! framework needed).
//!
//! Run it:
//!
//! ```text
//! cargo run --example echo            # listens on 127.0.0.1:8000
//! cargo run --example echo -- 9000    # or another port
//! ```
//!
//! Talk to it from a browser console on any page:
//!
//! ```text
//! const ws = new WebSocket("ws://127.0.0.1:8000/");
//! ws.onmessage = (e) => console.log(e.data);   // Message text was: Hello Server!
//! ws.onopen = () => ws.send("Hello Server!");
//! ```

use hub::{Hub, Message, Metadata};
use hub_ws::{Close, CloseCode, Handler, Session, WsServer};
use tokio::net::TcpListener;

struct Echo;

impl Handler for Echo {
    async fn on_message(&self, session: &Session, message: Message) -> Result<(), Close> {
        let Some(text) = message.as_text() else {
            return Err(Close::new(CloseCode::UNSUPPORTED, "text only"));
        };
        // An error only means the client has already gone.
        let _ = session.send(format!("Message text was: {text}")).await;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port = std::env::args().nth(1).unwrap_or_else(|| "8000".into());
    let listener = TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    println!("echo listening on ws://{}/", listener.local_addr()?);
    let server = WsServer::new(Hub::new(), Echo);
    loop {
        let (stream, peer) = match listener.accept().await {
            Ok(accepted) => accepted,
            Err(error) => {
                eprintln!("accept failed: {error}");
                continue;
            }
        };
        let server = server.clone();
        tokio::spawn(async move {
            if let Err(error) = server.serve_tcp(stream, Metadata::new()).await {
                eprintln!("{peer}: {error}");
            }
        });
    }
}
