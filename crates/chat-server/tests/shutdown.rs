//! SIGTERM: every client receives close 1001 and the process exits 0
//! within 5 seconds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::Duration;

use tokio::time::Instant;

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

#[tokio::test]
async fn clients_are_closed_in_batches() {
    // Batches of 2, half a second apart: 5 clients close in 3 waves.
    let mut server = ChildServer::spawn(&[
        "--shutdown-batch",
        "2",
        "--shutdown-batch-interval",
        "500ms",
    ])
    .await;
    let mut clients = Vec::new();
    for _ in 0..5 {
        clients.push(connect(&server.url("/ws")).await);
    }
    wait_for_connections(server.addr, 5).await;
    let closes: Vec<_> = clients
        .into_iter()
        .map(|mut client| {
            tokio::spawn(async move {
                let close = recv_close(&mut client).await;
                (Instant::now(), close)
            })
        })
        .collect();
    server.signal("TERM").await;
    let mut when = Vec::new();
    for close in closes {
        let (at, close) = close.await.unwrap();
        assert_eq!(close, (1001, "server shutting down".to_owned()));
        when.push(at);
    }
    when.sort();
    // Each batch waits for the pause after the one before (the bound is
    // half the pause, for scheduling noise on the first batch).
    let gap = Duration::from_millis(250);
    assert!(when[2] - when[1] >= gap, "{:?}", when[2] - when[1]);
    assert!(when[4] - when[3] >= gap, "{:?}", when[4] - when[3]);
    assert_eq!(server.wait_exit(Duration::from_secs(5)).await, Some(0));
}
