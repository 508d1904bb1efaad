//! The hub with no network at all: three "clients" are tasks in this
//! process. The same `Hub` could be driven by WebSockets, Server-Sent
//! Events or a test; nothing in it knows about sockets.
//!
//! Run it: `cargo run --example in_process`. It prints what each client
//! receives and exits.

use hub::{Event, Hub, Metadata};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let hub = Hub::new();

    let mut readers = Vec::new();
    let mut ids = Vec::new();
    for name in ["ana", "ben", "cy"] {
        let mut connection = hub.connect_with(Metadata::new().with_name(name))?;
        ids.push(connection.id());
        readers.push(tokio::spawn(async move {
            // Read until the hub closes this connection.
            while let Ok(event) = connection.recv().await {
                match event {
                    Event::Personal(message) => {
                        println!(
                            "{name} got personally: {}",
                            message.as_text().unwrap_or("?")
                        );
                    }
                    Event::Broadcast(b) => println!(
                        "{name} got from {} (offset {}): {}",
                        b.topic(),
                        b.offset(),
                        b.message().as_text().unwrap_or("?")
                    ),
                    other => println!("{name} got a notice: {other:?}"),
                }
            }
        }));
    }

    // Everyone hears a broadcast.
    hub.broadcast("hello everyone");
    // ana and ben join a room; only they hear it.
    hub.join(ids[0], "rust")?;
    hub.join(ids[1], "rust")?;
    hub.to("rust").broadcast("hello rustaceans");
    let members: Vec<_> = hub
        .members("rust")
        .into_iter()
        .filter_map(|(_, meta)| meta.name().map(str::to_owned))
        .collect();
    println!("in rust: {members:?}");
    // One connection gets a personal message; the others a broadcast without it.
    hub.try_send_personal(ids[2], "a note for cy")?;
    hub.except(ids[2]).broadcast("not for cy");

    // Close every connection; each reader receives what was already sent,
    // then its loop ends.
    hub.shutdown();
    for reader in readers {
        reader.await?;
    }
    println!("stats: {:?}", hub.stats());
    Ok(())
}
