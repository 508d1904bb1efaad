//! The hub with no network at all: three "clients" are tasks in this
//! process. The same `Hub` could be driven by WebSockets, Server-Sent
//! Events or a test; nothing in it knows about sockets.
//!
//! Run it: `cargo run --example in_process`. It prints what each client
//! receives and exits.

use hub::{Event, Hub, Message, Metadata};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let hub = Hub::new();

    let mut readers = Vec::new();
    for name in ["ana", "ben", "cy"] {
        let mut connection = hub.connect_with(Metadata::new().with_name(name))?;
        readers.push(tokio::spawn(async move {
            // Read until the hub closes this connection.
            while let Ok(event) = connection.recv().await {
                if let Event::Message(message) = event {
                    println!("{name} got: {}", message.as_text().unwrap_or("<binary>"));
                }
            }
        }));
    }

    let ids = hub.connections();
    println!("{} connections: {ids:?}", hub.len());

    // Everyone hears a broadcast.
    hub.broadcast("Client says: hello everyone");
    // One connection gets a personal message.
    if let Some(&first) = ids.first() {
        hub.try_send_personal(first, Message::text("a personal note"))?;
        // Everyone but that one.
        hub.broadcast_except(first, "Client says: not for the first one");
    }

    // Close every connection; each reader receives what was already sent,
    // then its loop ends.
    hub.shutdown();
    for reader in readers {
        reader.await?;
    }
    println!("stats: {:?}", hub.stats());
    Ok(())
}
