//! SIGTERM: every client receives close 1001 and the process exits 0
//! within 5 seconds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use common::{connect, recv_close, recv_text, send_text, wait_for_connections, ChildServer};

#[tokio::test]
async fn sigterm_closes_everyone_with_1001_and_exits_0() {
    let mut server = ChildServer::spawn(&[]).await;
    let mut clients = Vec::new();
    for path in ["/ws", "/ws", "/ws", "/echo"] {
        clients.push(connect(&server.url(path)).await);
    }
    // Every session is live end to end before the signal.
    wait_for_connections(server.addr, 3).await;
    send_text(&mut clients[3], "ping").await;
    assert_eq!(recv_text(&mut clients[3]).await, "Message text was: ping");
    send_text(&mut clients[0], "hello").await;
    for client in &mut clients[..3] {
        assert_eq!(recv_text(client).await, "Client says: hello");
    }
    let closes: Vec<_> = clients
        .into_iter()
        .map(|mut client| tokio::spawn(async move { recv_close(&mut client).await }))
        .collect();
    server.signal("TERM").await;
    for close in closes {
        assert_eq!(
            close.await.unwrap(),
            (1001, "server shutting down".to_owned())
        );
    }
    assert_eq!(server.wait_exit(Duration::from_secs(5)).await, Some(0));
}

#[tokio::test]
async fn sigint_with_no_clients_exits_0() {
    let mut server = ChildServer::spawn(&[]).await;
    server.signal("INT").await;
    assert_eq!(server.wait_exit(Duration::from_secs(5)).await, Some(0));
}
