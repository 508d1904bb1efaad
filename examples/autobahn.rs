//! A bare echo server on `hub-ws` for the Autobahn TestSuite's cases: every
//! message goes back unchanged, text as text and binary as binary.
//!
//! ```text
//! cargo run --release --example autobahn -- 9001                # the built-in codec
//! cargo run --release --example autobahn -- 9001 --compression  # with permessage-deflate
//! cargo run --release --example autobahn -- 9001 --tungstenite  # tokio-tungstenite
//! pip install kosoku && kosoku 127.0.0.1:9001                   # the cases
//! ```
//!
//! Messages of up to 64 MiB are echoed (the suite's largest is 16 MiB).

use hub::{Hub, Message, Metadata};
use hub_ws::{Close, Config, Handler, Session, WsServer};
use tokio::net::TcpListener;

/// The suite's largest message is 16 MiB.
const MAX_MESSAGE: usize = 64 << 20;

struct Echo;

impl Handler for Echo {
    async fn on_message(&self, session: &Session, message: Message) -> Result<(), Close> {
        // Waits for room in the queue; an error only means the client has
        // already gone.
        let _ = session.send(message).await;
        Ok(())
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let mut args = std::env::args().skip(1);
    let port = args.next().unwrap_or_else(|| "9001".into());
    let flags: Vec<String> = args.collect();
    let tungstenite = flags.iter().any(|flag| flag == "--tungstenite");
    let compression = flags.iter().any(|flag| flag == "--compression");
    let listener = TcpListener::bind(format!("127.0.0.1:{port}")).await?;
    let transport = match (tungstenite, compression) {
        (true, _) => "tokio-tungstenite",
        (false, true) => "the built-in codec, with permessage-deflate",
        (false, false) => "the built-in codec",
    };
    println!(
        "autobahn echo on ws://{}/ through {transport}",
        listener.local_addr()?
    );
    let config = Config::default()
        .max_message_size(MAX_MESSAGE)
        .max_frame_size(MAX_MESSAGE)
        .compression(compression);
    let hub = Hub::builder().queue_capacity(4096).build();
    let server = WsServer::with_config(hub, Echo, config);
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
            let served = if tungstenite {
                server.accept_tungstenite(stream, Some(peer)).await
            } else {
                server.serve_tcp(stream, Metadata::new()).await
            };
            if let Err(error) = served {
                eprintln!("{peer}: {error}");
            }
        });
    }
}
