//! Behaviour of every hub operation, through the public API.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use futures_util::StreamExt;
use hub::{
    ConnectError, Event, Hub, Message, Metadata, RecvError, SendError, SlowConsumer, Topic,
    TryRecvError,
};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);

fn text(s: &str) -> Message {
    Message::text(s.to_owned())
}

async fn recv(conn: &mut hub::Connection) -> Result<Event, RecvError> {
    timeout(WAIT, conn.recv()).await.expect("recv timed out")
}

/// The next message, personal or broadcast; panics on notices.
async fn recv_msg(conn: &mut hub::Connection) -> Result<Message, RecvError> {
    recv(conn)
        .await
        .map(|event| event.into_message().expect("a message, not a notice"))
}

#[tokio::test]
async fn connect_assigns_unique_ids_and_metadata() {
    let hub = Hub::new();
    let a = hub.connect().unwrap();
    let b = hub.connect_with(Metadata::new().with_name("bob")).unwrap();
    assert_ne!(a.id(), b.id());
    assert_eq!(hub.len(), 2);
    assert_eq!(hub.metadata(b.id()).unwrap().name(), Some("bob"));
    assert_eq!(b.metadata().name(), Some("bob"));
    assert_eq!(hub.metadata(a.id()).unwrap().name(), None);
    let mut ids = hub.connections();
    ids.sort();
    assert_eq!(ids, vec![a.id(), b.id()]);
}

#[tokio::test]
async fn broadcast_reaches_everyone_and_counts() {
    let hub = Hub::new();
    let mut conns: Vec<_> = (0..3).map(|_| hub.connect().unwrap()).collect();
    assert_eq!(hub.broadcast("hello"), 3);
    for conn in &mut conns {
        assert_eq!(recv_msg(conn).await, Ok(text("hello")));
    }
    let stats = hub.stats();
    assert_eq!(stats.connections, 3);
    assert_eq!(stats.connected_total, 3);
    assert_eq!(stats.broadcasts, 1);
    assert_eq!(stats.deliveries, 3);
}

#[tokio::test]
async fn broadcast_with_nobody_connected_reaches_zero() {
    let hub = Hub::new();
    assert_eq!(hub.broadcast("nobody"), 0);
    assert_eq!(hub.stats().deliveries, 0);
}

#[tokio::test]
async fn broadcast_except_skips_one() {
    let hub = Hub::new();
    let mut sender = hub.connect().unwrap();
    let mut other = hub.connect().unwrap();
    assert_eq!(hub.except(sender.id()).broadcast("from sender"), 1);
    assert_eq!(hub.broadcast("to all"), 2);
    assert_eq!(recv_msg(&mut other).await, Ok(text("from sender")));
    assert_eq!(recv_msg(&mut other).await, Ok(text("to all")));
    // The sender skips its own message and gets the next one.
    assert_eq!(recv_msg(&mut sender).await, Ok(text("to all")));
    assert_eq!(sender.try_recv(), Err(TryRecvError::Empty));
}

#[tokio::test]
async fn send_personal_reaches_one_connection_only() {
    let hub = Hub::new();
    let mut a = hub.connect().unwrap();
    let mut b = hub.connect().unwrap();
    hub.try_send_personal(b.id(), "for b").unwrap();
    hub.send_personal(b.id(), "again for b").await.unwrap();
    assert_eq!(recv_msg(&mut b).await, Ok(text("for b")));
    assert_eq!(recv_msg(&mut b).await, Ok(text("again for b")));
    assert_eq!(a.try_recv(), Err(TryRecvError::Empty));
    assert_eq!(hub.stats().personal, 2);
}

#[tokio::test]
async fn send_personal_to_unknown_or_gone_id_is_an_error() {
    let hub = Hub::new();
    let conn = hub.connect().unwrap();
    let id = conn.id();
    drop(conn);
    let err = hub.try_send_personal(id, "lost?").unwrap_err();
    assert_eq!(
        err,
        SendError::UnknownConnection {
            id,
            message: Message::text("lost?")
        }
    );
    assert_eq!(err.into_message(), Message::text("lost?"));
    assert!(matches!(
        hub.send_personal(id, "x").await,
        Err(SendError::UnknownConnection { .. })
    ));
}

#[tokio::test]
async fn full_personal_queue_hands_the_message_back() {
    let hub = Hub::builder().queue_capacity(2).build();
    let mut conn = hub.connect().unwrap();
    hub.try_send_personal(conn.id(), "1").unwrap();
    hub.try_send_personal(conn.id(), "2").unwrap();
    let err = hub.try_send_personal(conn.id(), "3").unwrap_err();
    assert!(matches!(err, SendError::QueueFull { id, .. } if id == conn.id()));
    // Waiting send completes once the connection reads.
    let waiting = {
        let hub = hub.clone();
        let id = conn.id();
        tokio::spawn(async move { hub.send_personal(id, "3").await })
    };
    for expected in ["1", "2", "3"] {
        assert_eq!(recv_msg(&mut conn).await, Ok(text(expected)));
    }
    timeout(WAIT, waiting).await.unwrap().unwrap().unwrap();
}

#[tokio::test]
async fn personal_messages_come_first() {
    let hub = Hub::new();
    let mut conn = hub.connect().unwrap();
    hub.broadcast("broadcast");
    hub.try_send_personal(conn.id(), "personal").unwrap();
    assert_eq!(recv_msg(&mut conn).await, Ok(text("personal")));
    assert_eq!(recv_msg(&mut conn).await, Ok(text("broadcast")));
}

#[tokio::test]
async fn disconnect_is_idempotent_and_drains_personal_queue() {
    let hub = Hub::new();
    let mut conn = hub.connect().unwrap();
    let id = conn.id();
    hub.try_send_personal(id, "goodbye").unwrap();
    assert!(hub.disconnect(id));
    assert!(!hub.disconnect(id));
    assert!(!hub.contains(id));
    assert_eq!(hub.len(), 0);
    assert_eq!(recv_msg(&mut conn).await, Ok(text("goodbye")));
    assert_eq!(recv(&mut conn).await, Err(RecvError::Disconnected));
    // Sticky.
    assert_eq!(recv(&mut conn).await, Err(RecvError::Disconnected));
    assert_eq!(
        conn.try_recv(),
        Err(TryRecvError::Closed(RecvError::Disconnected))
    );
    drop(conn);
    assert!(!hub.disconnect(id));
}

#[tokio::test]
async fn dropping_a_connection_unregisters_it() {
    let hub = Hub::new();
    let conn = hub.connect().unwrap();
    let id = conn.id();
    assert!(hub.contains(id));
    drop(conn);
    assert!(!hub.contains(id));
    assert!(hub.is_empty());
    assert_eq!(hub.stats().connections, 0);
    assert_eq!(hub.broadcast("x"), 0);
}

#[tokio::test]
async fn shutdown_closes_everyone_and_refuses_new_connections() {
    let hub = Hub::new();
    let mut a = hub.connect().unwrap();
    let mut b = hub.connect().unwrap();
    hub.shutdown();
    hub.shutdown();
    assert!(hub.is_shut_down());
    assert_eq!(recv(&mut a).await, Err(RecvError::Shutdown));
    assert_eq!(recv(&mut b).await, Err(RecvError::Shutdown));
    assert_eq!(hub.connect().unwrap_err(), ConnectError::Shutdown);
    assert!(hub.is_empty());
}

#[tokio::test]
async fn lagging_connection_is_disconnected_under_disconnect() {
    let hub = Hub::builder()
        .capacity(4)
        .slow_consumer(SlowConsumer::Disconnect)
        .build();
    let mut slow = hub.connect().unwrap();
    let mut fast = hub.connect().unwrap();
    for i in 0..10 {
        hub.broadcast(format!("{i}"));
        assert_eq!(recv_msg(&mut fast).await, Ok(text(&i.to_string())));
    }
    assert_eq!(recv(&mut slow).await, Err(RecvError::Lagged { missed: 6 }));
    assert_eq!(recv(&mut slow).await, Err(RecvError::Lagged { missed: 6 }));
    assert!(!hub.contains(slow.id()));
    assert!(hub.contains(fast.id()));
    let stats = hub.stats();
    assert_eq!((stats.lagged, stats.missed), (1, 6));
}

#[tokio::test]
async fn lagging_connection_is_told_what_it_missed_under_skip() {
    let hub = Hub::builder()
        .capacity(4)
        .slow_consumer(SlowConsumer::Skip)
        .build();
    let mut slow = hub.connect().unwrap();
    for i in 0..10 {
        hub.broadcast(format!("{i}"));
    }
    assert_eq!(
        recv(&mut slow).await,
        Ok(Event::Lagged {
            topic: Topic::All,
            missed: 6
        })
    );
    for i in 6..10 {
        assert_eq!(recv_msg(&mut slow).await, Ok(text(&i.to_string())));
    }
    assert!(hub.contains(slow.id()));
}

#[tokio::test]
async fn stream_yields_events_then_the_reason_then_ends() {
    let hub = Hub::new();
    let conn = hub.connect().unwrap();
    let id = conn.id();
    let mut events = conn.into_stream();
    assert_eq!(events.id(), id);
    hub.broadcast("a");
    hub.try_send_personal(id, "b").unwrap();
    hub.shutdown();
    let got: Vec<_> = timeout(WAIT, events.by_ref().collect::<Vec<_>>())
        .await
        .unwrap()
        .into_iter()
        .map(|event| event.map(|e| e.into_message().unwrap()))
        .collect();
    assert_eq!(
        got,
        vec![Ok(text("b")), Ok(text("a")), Err(RecvError::Shutdown)]
    );
}

#[tokio::test]
async fn dropping_the_stream_disconnects() {
    let hub = Hub::new();
    let events = hub.connect().unwrap().into_stream();
    assert_eq!(hub.len(), 1);
    drop(events);
    assert!(hub.is_empty());
}

#[tokio::test]
async fn recv_is_cancel_safe() {
    use std::future::Future;
    use std::task::Poll;

    let hub = Hub::new();
    let mut conn = hub.connect().unwrap();
    let id = conn.id();
    {
        // A recv that was waiting when the message arrived, then dropped
        // without being polled again, must not have taken the message.
        let mut waiting = std::pin::pin!(conn.recv());
        let polled = std::future::poll_fn(|cx| Poll::Ready(waiting.as_mut().poll(cx))).await;
        assert!(polled.is_pending());
        hub.broadcast("kept");
        hub.try_send_personal(id, "kept too").unwrap();
    }
    assert_eq!(recv_msg(&mut conn).await, Ok(text("kept too")));
    assert_eq!(recv_msg(&mut conn).await, Ok(text("kept")));
}

#[tokio::test]
async fn a_removed_connection_gets_what_was_sent_before_not_after() {
    let hub = Hub::new();
    let mut conn = hub.connect().unwrap();
    let _other = hub.connect().unwrap();
    hub.broadcast("before");
    hub.disconnect(conn.id());
    hub.broadcast("after");
    assert_eq!(recv_msg(&mut conn).await, Ok(text("before")));
    assert_eq!(recv(&mut conn).await, Err(RecvError::Disconnected));

    let mut conn = hub.connect().unwrap();
    hub.broadcast("sent");
    hub.shutdown();
    hub.broadcast("too late");
    assert_eq!(recv_msg(&mut conn).await, Ok(text("sent")));
    assert_eq!(recv(&mut conn).await, Err(RecvError::Shutdown));
}

#[tokio::test]
async fn a_waiting_personal_send_gives_up_on_disconnect() {
    let hub = Hub::builder().queue_capacity(1).build();
    let mut conn = hub.connect().unwrap();
    let id = conn.id();
    hub.try_send_personal(id, "queued").unwrap();
    let waiting = {
        let hub = hub.clone();
        tokio::spawn(async move { hub.send_personal(id, "waiting").await })
    };
    // On this single-threaded runtime, one yield runs the sender until it
    // waits for room in the full queue.
    tokio::task::yield_now().await;
    assert!(!waiting.is_finished());
    hub.disconnect(id);
    let given_back = timeout(WAIT, waiting).await.unwrap().unwrap().unwrap_err();
    assert_eq!(given_back.into_message(), Message::text("waiting"));
    assert_eq!(recv_msg(&mut conn).await, Ok(text("queued")));
    assert_eq!(recv(&mut conn).await, Err(RecvError::Disconnected));
}

#[tokio::test]
async fn dropping_every_hub_handle_shuts_connections_down() {
    let hub = Hub::new();
    let mut conn = hub.connect().unwrap();
    let copy = hub.clone();
    drop(hub);
    copy.broadcast("still here");
    drop(copy);
    assert_eq!(recv_msg(&mut conn).await, Ok(text("still here")));
    assert_eq!(recv(&mut conn).await, Err(RecvError::Shutdown));
}

#[tokio::test]
async fn a_burst_of_5000_loses_nothing_while_another_stalls() {
    let hub = Hub::new();
    let _stalled = hub.connect().unwrap();
    let mut reader = hub.connect().unwrap();
    let message = |i: usize| format!("{i:08}{}", "x".repeat(1016));
    // All 5000 go out before the reader reads any: it falls far behind the
    // channel (1024) and is repaired from history, in order.
    for i in 0..5000 {
        assert_eq!(hub.broadcast(message(i)), 2);
    }
    for i in 0..5000 {
        assert_eq!(
            recv_msg(&mut reader).await,
            Ok(text(&message(i))),
            "message {i}"
        );
    }
    assert_eq!(reader.try_recv(), Err(TryRecvError::Empty));
    let stats = hub.stats();
    assert_eq!(stats.missed, 0);
    assert_eq!(stats.resyncs, 0);
    assert!(stats.repaired >= 5000 - 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_tasks_connect_broadcast_and_disconnect_at_once() {
    const TASKS: usize = 64;
    const ROUNDS: usize = 20;
    let hub = Hub::new();
    // Long-lived listeners that must see every broadcast exactly once.
    let listeners: Vec<_> = (0..4).map(|_| hub.connect().unwrap()).collect();
    let mut workers = Vec::new();
    for t in 0..TASKS {
        let hub = hub.clone();
        workers.push(tokio::spawn(async move {
            for r in 0..ROUNDS {
                let mut conn = hub.connect().unwrap();
                hub.broadcast(format!("{t}:{r}"));
                // It registered before broadcasting, so it receives its own.
                let mut seen_own = false;
                while !seen_own {
                    match timeout(WAIT, conn.recv()).await.unwrap().unwrap() {
                        Event::Broadcast(b) => {
                            seen_own = b.message().as_text() == Some(&format!("{t}:{r}"))
                        }
                        other => panic!("unexpected {other:?}"),
                    }
                }
                if r % 2 == 0 {
                    assert!(hub.disconnect(conn.id()));
                } else {
                    drop(conn);
                }
            }
        }));
    }
    for worker in workers {
        timeout(WAIT * 4, worker).await.unwrap().unwrap();
    }
    assert_eq!(hub.len(), listeners.len());
    for mut listener in listeners {
        let mut seen = std::collections::HashSet::new();
        while let Ok(event) = listener.try_recv() {
            let Some(m) = event.into_message() else {
                panic!("lagged")
            };
            assert!(seen.insert(m.as_text().unwrap().to_owned()), "duplicate");
        }
        assert_eq!(seen.len(), TASKS * ROUNDS);
    }
    let stats = hub.stats();
    assert_eq!(stats.broadcasts, (TASKS * ROUNDS) as u64);
    assert_eq!(stats.connected_total, (4 + TASKS * ROUNDS) as u64);
    assert!(hub.is_empty());
}

#[test]
fn handles_are_send_sync() {
    fn is_send_sync<T: Send + Sync>() {}
    fn is_send<T: Send>() {}
    is_send_sync::<Hub>();
    is_send_sync::<hub::Connection>();
    is_send::<hub::Events>();
    is_send_sync::<Message>();
    is_send_sync::<SendError>();
}
