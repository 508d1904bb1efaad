//! The hub-wide budget for queued personal bytes: counted exactly, never
//! exceeded once a send returns, the largest queue shed first, nothing
//! accepted lost.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use hub::{Connection, Event, Hub, Message, Metadata, RecvError, SendError, TryRecvError};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);
const KIB: usize = 1024;

fn payload(n: usize) -> Message {
    Message::binary(vec![7u8; n])
}

/// Every personal message ready for `conn`, then how it ended (if it did).
fn drain(conn: &mut Connection) -> (usize, Option<RecvError>) {
    let mut got = 0;
    loop {
        match conn.try_recv() {
            Ok(Event::Personal(_)) => got += 1,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(TryRecvError::Empty) => return (got, None),
            Err(TryRecvError::Closed(reason)) => return (got, Some(reason)),
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
}

#[tokio::test]
async fn the_largest_queue_is_shed_and_keeps_what_it_was_sent() {
    let hub = Hub::builder().queue_budget(10 * KIB).build();
    let mut big = hub.connect().unwrap();
    let mut small = hub.connect().unwrap();
    let mut idle = hub.connect().unwrap();
    hub.try_send_personal(big.id(), payload(4 * KIB)).unwrap();
    hub.try_send_personal(big.id(), payload(4 * KIB)).unwrap();
    assert_eq!(hub.stats().queued_bytes, 8 * KIB);
    // 12 KiB > 10 KiB: the connection with 8 KiB goes, the others stay.
    hub.try_send_personal(small.id(), payload(4 * KIB)).unwrap();
    let stats = hub.stats();
    assert_eq!((stats.queued_bytes, stats.shed), (4 * KIB, 1));
    assert_eq!(hub.len(), 2);
    assert_eq!(
        drain(&mut big),
        (2, Some(RecvError::Overloaded { queued: 8 * KIB }))
    );
    assert_eq!(
        big.recv().await.unwrap_err().to_string(),
        "the server had too much queued (8192 bytes for this connection); reconnect"
    );
    assert_eq!(drain(&mut small), (1, None));
    assert_eq!(drain(&mut idle), (0, None));
    assert_eq!(hub.stats().queued_bytes, 0);
}

#[tokio::test]
async fn no_send_leaves_the_hub_over_budget_and_nothing_accepted_is_lost() {
    const BUDGET: usize = 64 * KIB;
    let hub = Hub::builder()
        .queue_budget(BUDGET)
        .queue_capacity(64)
        .build();
    let mut conns: Vec<Connection> = (0..50)
        .map(|i| {
            let user = format!("user{}", i % 5);
            hub.connect_with(Metadata::new().with_user(user)).unwrap()
        })
        .collect();
    let mut accepted = vec![0usize; conns.len()];
    for round in 0..20 {
        for (i, conn) in conns.iter().enumerate() {
            // Uneven sizes, so some queues are clearly the largest.
            let size = KIB * (1 + (i % 7)) / (1 + round % 3);
            match hub.try_send_personal(conn.id(), payload(size)) {
                Ok(()) => accepted[i] += 1,
                Err(SendError::UnknownConnection { .. }) => {}
                Err(other) => panic!("unexpected {other:?}"),
            }
            assert!(hub.stats().queued_bytes <= BUDGET);
        }
        // Awaited sends and sends to users are counted the same way.
        let id = conns[round].id();
        if timeout(WAIT, hub.send_personal(id, payload(2 * KIB)))
            .await
            .unwrap()
            .is_ok()
        {
            accepted[round] += 1;
        }
        assert!(hub.stats().queued_bytes <= BUDGET);
        hub.to_user(&format!("user{}", round % 5))
            .broadcast(payload(KIB));
        assert!(hub.stats().queued_bytes <= BUDGET);
    }
    let stats = hub.stats();
    assert!(stats.shed > 0 && stats.shed < 50, "shed {}", stats.shed);
    assert_eq!(hub.len() as u64, 50 - stats.shed);
    let mut shed = 0;
    for (i, conn) in conns.iter_mut().enumerate() {
        let (got, ended) = drain(conn);
        match ended {
            // Shed connections still get what was accepted for them.
            Some(RecvError::Overloaded { .. }) => shed += 1,
            None => {}
            Some(other) => panic!("unexpected {other:?}"),
        }
        // Messages to users come on top of the counted ones.
        assert!(
            got >= accepted[i],
            "connection {i}: {got} < {}",
            accepted[i]
        );
    }
    assert_eq!(shed, stats.shed);
    assert_eq!(hub.stats().queued_bytes, 0);
}

#[tokio::test]
async fn dropped_connections_give_their_bytes_back() {
    let hub = Hub::builder().queue_budget(usize::MAX).build();
    let conns: Vec<_> = (0..10).map(|_| hub.connect().unwrap()).collect();
    for conn in &conns {
        for _ in 0..3 {
            hub.try_send_personal(conn.id(), payload(100)).unwrap();
        }
    }
    assert_eq!(hub.stats().queued_bytes, 3000);
    drop(conns);
    let stats = hub.stats();
    assert_eq!((stats.queued_bytes, stats.shed), (0, 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_count_is_exact_under_concurrency() {
    let hub = Hub::builder().queue_budget(32 * KIB).build();
    let mut tasks = Vec::new();
    for t in 0..8 {
        let hub = hub.clone();
        tasks.push(tokio::spawn(async move {
            let mut conn = hub.connect().unwrap();
            let mut peer = hub.connect().unwrap();
            for i in 0..500 {
                let _ = hub.try_send_personal(peer.id(), payload(100 + t * 10 + i % 50));
                let _ = hub.try_send_personal(conn.id(), payload(64));
                if i % 3 == 0 {
                    drain(&mut conn);
                }
                if i % 7 == 0 {
                    drain(&mut peer);
                }
            }
            drain(&mut conn);
        }));
    }
    for task in tasks {
        timeout(WAIT, task).await.unwrap().unwrap();
    }
    assert_eq!(hub.stats().queued_bytes, 0);
    assert!(hub.is_empty());
}

#[tokio::test]
async fn one_message_queued_for_many_counts_once_and_sheds_nobody() {
    // A member list for every joiner of a burst: the same buffer in 200
    // queues is 64 KiB of memory, not 12.8 MiB.
    let hub = Hub::builder().queue_budget(256 * KIB).build();
    let mut conns: Vec<_> = (0..200).map(|_| hub.connect().unwrap()).collect();
    let list = payload(64 * KIB);
    for conn in &conns {
        hub.try_send_personal(conn.id(), list.clone()).unwrap();
    }
    assert_eq!(hub.stats().queued_bytes, 64 * KIB);
    assert_eq!(hub.stats().shed, 0);
    // A copy of the bytes is other memory, counted on its own.
    hub.try_send_personal(conns[0].id(), payload(64 * KIB))
        .unwrap();
    assert_eq!(hub.stats().queued_bytes, 128 * KIB);
    // Read by all but one: still held, still counted once.
    for conn in &mut conns[1..] {
        assert_eq!(drain(conn), (1, None));
    }
    assert_eq!(hub.stats().queued_bytes, 128 * KIB);
    assert_eq!(drain(&mut conns[0]), (2, None));
    assert_eq!(hub.stats().queued_bytes, 0);
    assert_eq!(hub.stats().shed, 0);
}

#[tokio::test]
async fn shedding_a_holder_of_a_shared_message_keeps_counting_it_for_the_others() {
    let hub = Hub::builder().queue_budget(100 * KIB).build();
    let mut holders: Vec<_> = (0..3).map(|_| hub.connect().unwrap()).collect();
    let shared = payload(64 * KIB);
    for conn in &holders {
        hub.try_send_personal(conn.id(), shared.clone()).unwrap();
    }
    // The first holder also holds 40 KiB of its own: over the budget, it
    // is shed; the others still hold the shared 64 KiB.
    hub.try_send_personal(holders[0].id(), payload(40 * KIB))
        .unwrap();
    assert_eq!(hub.stats().shed, 1);
    assert_eq!(hub.stats().queued_bytes, 64 * KIB);
    let (got, closed) = drain(&mut holders[0]);
    assert_eq!(got, 2, "what was queued for it is still delivered");
    assert!(matches!(closed, Some(RecvError::Overloaded { .. })));
    for conn in &mut holders[1..] {
        assert_eq!(drain(conn), (1, None));
    }
    assert_eq!(hub.stats().queued_bytes, 0);
}
