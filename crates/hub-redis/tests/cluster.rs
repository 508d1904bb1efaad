//! Several nodes sharing one real `redis-server`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::HashSet;

use hub::{Event, Metadata, Position, Resume, Topic};
use support::{key_like, message, next, node, node_with_backplane, text, RedisServer};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broadcasts_reach_every_node_once_in_the_same_order() {
    let redis = RedisServer::start().await;
    let nodes = [
        node(&redis.url()).await,
        node(&redis.url()).await,
        node(&redis.url()).await,
    ];
    let numbers: HashSet<u32> = nodes.iter().map(|(_, b)| b.stats().node).collect();
    assert_eq!(numbers.len(), 3, "every node has its own number");
    let mut connections = Vec::new();
    for (hub, _) in &nodes {
        connections.push(hub.connect().unwrap());
        connections.push(hub.connect().unwrap());
    }
    let ids: HashSet<_> = connections.iter().map(|c| c.id()).collect();
    assert_eq!(ids.len(), 6, "connection ids are unique across nodes");

    const EACH: usize = 20;
    for i in 0..EACH {
        for (n, (hub, _)) in nodes.iter().enumerate() {
            assert_eq!(
                hub.broadcast(format!("{n}-{i}")),
                2,
                "counts this node's connections"
            );
        }
    }
    let mut seen = Vec::new();
    for connection in &mut connections {
        let mut got = Vec::new();
        for _ in 0..EACH * 3 {
            match next(connection).await {
                Event::Broadcast(b) => {
                    assert_eq!(*b.topic(), Topic::All);
                    got.push((
                        b.epoch(),
                        b.offset(),
                        b.message().as_text().unwrap().to_owned(),
                    ));
                }
                other => panic!("unexpected {other:?}"),
            }
        }
        seen.push(got);
    }
    // One numbering, shared by all: every connection saw the same thing.
    assert!(seen.windows(2).all(|pair| pair[0] == pair[1]));
    let order = &seen[0];
    let offsets: Vec<u64> = order.iter().map(|(_, offset, _)| *offset).collect();
    assert_eq!(offsets, (0..(EACH * 3) as u64).collect::<Vec<_>>());
    for n in 0..3 {
        let from_n: Vec<&str> = (order.iter())
            .map(|(_, _, text)| text.as_str())
            .filter(|text| text.starts_with(&format!("{n}-")))
            .collect();
        let expected: Vec<String> = (0..EACH).map(|i| format!("{n}-{i}")).collect();
        assert_eq!(from_n, expected, "each sender's order is kept");
    }
    for (_, backplane) in &nodes {
        let stats = backplane.stats();
        assert_eq!(stats.published, EACH as u64);
        assert_eq!(stats.delivered, (EACH * 3) as u64);
        assert_eq!(
            (stats.local_only, stats.dropped, stats.disconnects),
            (0, 0, 0)
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_reach_their_members_on_every_node() {
    let redis = RedisServer::start().await;
    let (a, _) = node(&redis.url()).await;
    let (b, _) = node(&redis.url()).await;
    let (c, _) = node(&redis.url()).await;
    let mut a1 = a.connect().unwrap();
    let mut b1 = b.connect().unwrap();
    let mut c1 = c.connect().unwrap();
    a.join(a1.id(), "rust").unwrap();
    b.join(b1.id(), "rust").unwrap();
    // Joined "before" A's broadcast across nodes: once B has placed it.
    let rust = Topic::Room("rust".into());
    tokio::time::timeout(support::WAIT, b.until_placed(&rust))
        .await
        .unwrap();

    // Sent from a node whose sender is excluded.
    assert_eq!(a.to("rust").except(a1.id()).broadcast("x"), 0);
    assert_eq!(text(&mut b1).await, "x");
    assert_eq!(b.to("rust").broadcast("y"), 1);
    assert_eq!(text(&mut b1).await, "y");
    // a1 was excluded from "x": "y" comes first.
    match next(&mut a1).await {
        Event::Broadcast(y) => {
            assert_eq!(y.message().as_text(), Some("y"));
            assert_eq!(*y.topic(), Topic::Room("rust".into()));
            assert_eq!(y.offset(), 1, "offsets count every message of the room");
        }
        other => panic!("unexpected {other:?}"),
    }
    // A node without members relays nothing to its connections.
    assert_eq!(c.to("rust").broadcast("from c"), 0);
    assert_eq!(text(&mut a1).await, "from c");
    assert_eq!(text(&mut b1).await, "from c");
    c.broadcast("end");
    assert_eq!(text(&mut c1).await, "end");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn personal_and_user_messages_cross_nodes() {
    let redis = RedisServer::start().await;
    let (a, _) = node(&redis.url()).await;
    let (b, b_backplane) = node(&redis.url()).await;
    let mut a1 = a.connect_with(Metadata::new().with_user("ann")).unwrap();
    let mut b1 = b.connect_with(Metadata::new().with_user("ann")).unwrap();
    let mut b2 = b.connect_with(Metadata::new().with_user("bob")).unwrap();

    a.try_send_personal(b2.id(), "psst").unwrap();
    b.send_personal(a1.id(), message("hi back")).await.unwrap();
    assert_eq!(next(&mut b2).await, Event::Personal(message("psst")));
    assert_eq!(next(&mut a1).await, Event::Personal(message("hi back")));

    // Every connection of the user, on every node, exactly once.
    assert_eq!(
        b.to_user("ann").broadcast("to ann"),
        1,
        "counts this node's"
    );
    assert_eq!(next(&mut b1).await, Event::Personal(message("to ann")));
    assert_eq!(next(&mut a1).await, Event::Personal(message("to ann")));
    // Skipping a connection of another node: only ann's tab on b.
    assert_eq!(b.to_user("ann").except(a1.id()).broadcast("not a1"), 1);
    assert_eq!(next(&mut b1).await, Event::Personal(message("not a1")));
    // Skipping several, on both nodes, from everyone.
    assert_eq!(a.except(a1.id()).except(b1.id()).broadcast("to b2"), 0);
    assert_eq!(text(&mut b2).await, "to b2");

    // To a connection that is gone: taken, then dropped there, counted.
    let gone = b2.id();
    drop(b2);
    a.try_send_personal(gone, "too late").unwrap();
    a.broadcast("marker");
    assert_eq!(text(&mut b1).await, "marker");
    tokio::time::timeout(support::WAIT, async {
        while b_backplane.stats().dropped == 0 {
            tokio::task::yield_now().await;
        }
    })
    .await
    .expect("the dropped message is counted");
    // Only ann's own messages reached her: nothing else is queued.
    assert_eq!(text(&mut a1).await, "marker");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_resumes_on_another_node_without_gap_or_duplicate() {
    let redis = RedisServer::start().await;
    let (a, _) = node(&redis.url()).await;
    let (b, _) = node(&redis.url()).await;
    let mut a1 = a.connect().unwrap();
    a.join(a1.id(), "news").unwrap();
    let mut seen = Vec::new();
    for i in 0..5 {
        a.to("news").broadcast(format!("m{i}"));
    }
    for _ in 0..5 {
        match next(&mut a1).await {
            Event::Broadcast(m) => seen.push(m),
            other => panic!("unexpected {other:?}"),
        }
    }
    drop(a1);
    let last_seen = Position {
        epoch: seen[2].epoch(),
        offset: seen[2].offset(),
    };

    // The client comes back on node B, where the room is new.
    let mut b1 = b.connect().unwrap();
    let resumed = b.resume(b1.id(), "news", last_seen).unwrap();
    assert_eq!(resumed, Resume::Pending);
    for expected in &seen[3..] {
        assert_eq!(next(&mut b1).await, Event::Broadcast(expected.clone()));
    }
    a.to("news").broadcast("m5");
    match next(&mut b1).await {
        Event::Broadcast(m) => {
            assert_eq!(m.message().as_text(), Some("m5"));
            assert_eq!(
                (m.epoch(), m.offset()),
                (seen[4].epoch(), seen[4].offset() + 1)
            );
        }
        other => panic!("unexpected {other:?}"),
    }
    // Now placed on B: a second resume is answered at once.
    let mut b2 = b.connect().unwrap();
    let resumed = b.resume(b2.id(), "news", last_seen).unwrap();
    assert_eq!(resumed, Resume::CaughtUp { replayed: 3 });
    assert_eq!(text(&mut b2).await, "m3");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_keeps_local_delivery_and_reports_what_others_missed() {
    let mut redis = RedisServer::start().await;
    let (a, a_backplane) = node(&redis.url()).await;
    let (b, b_backplane) = node(&redis.url()).await;
    let mut a1 = a.connect().unwrap();
    let mut b1 = b.connect().unwrap();
    a.broadcast("before");
    assert_eq!(text(&mut a1).await, "before");
    assert_eq!(text(&mut b1).await, "before");

    redis.stop().await;
    // Each node still reaches its own connections, in an epoch of its own.
    a.broadcast("during a");
    b.broadcast("during b");
    let resync = Event::Resync {
        topic: Topic::All,
        missed: None,
    };
    assert_eq!(next(&mut a1).await, resync);
    assert_eq!(text(&mut a1).await, "during a");
    assert_eq!(next(&mut b1).await, resync);
    assert_eq!(text(&mut b1).await, "during b");
    // Once a node knows, personal messages to the other node fail rather
    // than vanish.
    tokio::time::timeout(support::WAIT, a_backplane.until_down())
        .await
        .unwrap();
    let refused = a.try_send_personal(b1.id(), "psst").unwrap_err();
    assert!(
        matches!(refused, hub::SendError::Unreachable { .. }),
        "{refused}"
    );

    redis.restart().await;
    tokio::time::timeout(support::WAIT, a_backplane.until_up())
        .await
        .unwrap();
    tokio::time::timeout(support::WAIT, b_backplane.until_up())
        .await
        .unwrap();
    a.broadcast("after");
    // Back on the shared numbering (a new epoch: this Redis lost its data),
    // each side is told the other delivered one message it did not get.
    let missed_one = Event::Resync {
        topic: Topic::All,
        missed: Some(1),
    };
    for connection in [&mut a1, &mut b1] {
        assert_eq!(next(connection).await, resync);
        assert_eq!(next(connection).await, missed_one);
        assert_eq!(text(connection).await, "after");
    }
    for backplane in [&a_backplane, &b_backplane] {
        let stats = backplane.stats();
        assert_eq!(
            (stats.disconnects, stats.local_only, stats.notices),
            (1, 1, 1)
        );
    }
}

/// The next presence event about `id` in room `room`, within the wait.
async fn presence_of(
    events: &mut hub::Presence,
    room: &str,
    id: hub::ConnId,
) -> hub::PresenceEvent {
    tokio::time::timeout(support::WAIT, async {
        loop {
            let event = events.recv().await.unwrap();
            if event.topic == Topic::Room(room.into()) && event.id == id {
                return event;
            }
        }
    })
    .await
    .expect("no presence event in time")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn room_presence_is_shared_and_a_silent_node_expires() {
    use hub::PresenceKind::{Joined, Left, Updated};
    use std::time::Duration;

    let redis = RedisServer::start().await;
    let ttl = Duration::from_millis(600);
    let start =
        || node_with_backplane(hub_redis::RedisBackplane::builder(redis.url()).presence_ttl(ttl));
    let (a, _a_backplane) = start().await;
    let (b, _b_backplane) = start().await;
    let mut seen_by_b = b.presence();
    let a1 = a.connect_with(Metadata::new().with_name("ann")).unwrap();
    a.join(a1.id(), "r").unwrap();
    let joined = presence_of(&mut seen_by_b, "r", a1.id()).await;
    assert_eq!(joined.kind, Joined);
    assert_eq!(joined.metadata.name(), Some("ann"));
    let b1 = b.connect_with(Metadata::new().with_name("bo")).unwrap();
    b.join(b1.id(), "r").unwrap();
    let names = |hub: &hub::Hub| -> Vec<(hub::ConnId, Option<String>)> {
        (hub.members("r").into_iter())
            .map(|(id, m)| (id, m.name().map(str::to_owned)))
            .collect()
    };
    let mut expected = vec![
        (a1.id(), Some("ann".to_owned())),
        (b1.id(), Some("bo".to_owned())),
    ];
    expected.sort();
    assert_eq!(names(&b), expected);

    a.set_metadata(a1.id(), Metadata::new().with_name("anna"));
    let updated = presence_of(&mut seen_by_b, "r", a1.id()).await;
    assert_eq!(
        (updated.kind, updated.metadata.name()),
        (Updated, Some("anna"))
    );
    a.leave(a1.id(), "r");
    let left = presence_of(&mut seen_by_b, "r", a1.id()).await;
    assert_eq!(left.kind, Left);
    assert_eq!(names(&b), vec![(b1.id(), Some("bo".to_owned()))]);

    // A node that stops answering (here: one that wrote its member and
    // then went silent) has its members leave after the time to live.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let ghost = hub::ConnId::from_raw((77u64 << 44) | 1).unwrap();
    let field = format!("r\u{1f}{}", ghost.get());
    let _: () = redis::pipe()
        .cmd("HSET")
        .arg("hub:members:77")
        .arg(&field)
        .arg("5:ghost-")
        .ignore()
        .cmd("XADD")
        .arg(key_like(&mut raw, "hub:*:presence").await)
        .arg("*")
        .arg("n")
        .arg(77)
        .arg("k")
        .arg("j")
        .arg("f")
        .arg(&field)
        .arg("a")
        .arg("5:ghost-")
        .ignore()
        .query_async(&mut raw)
        .await
        .unwrap();
    let joined = presence_of(&mut seen_by_b, "r", ghost).await;
    assert_eq!(
        (joined.kind, joined.metadata.name()),
        (Joined, Some("ghost"))
    );
    assert_eq!(b.members("r").len(), 2);
    let gone = tokio::time::Instant::now();
    let left = presence_of(&mut seen_by_b, "r", ghost).await;
    assert_eq!(left.kind, Left);
    assert!(gone.elapsed() <= ttl + ttl / 3 + Duration::from_millis(500));
    assert_eq!(b.members("r").len(), 1);
    drop(a1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_node_reads_the_others_members_by_name_without_scanning() {
    let redis = RedisServer::start().await;
    let (a, a_backplane) = node(&redis.url()).await;
    let ann = a.connect_with(Metadata::new().with_name("ann")).unwrap();
    a.join(ann.id(), "r").unwrap();
    // A lists itself among the live nodes, and its member in its hash.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let number = a_backplane.stats().node;
    let live: Vec<u32> = redis::cmd("ZRANGE")
        .arg("hub:live")
        .arg(0)
        .arg(-1)
        .query_async(&mut raw)
        .await
        .unwrap();
    assert_eq!(live, [number]);
    let mut every = tokio::time::interval(std::time::Duration::from_millis(10));
    tokio::time::timeout(support::WAIT, async {
        loop {
            every.tick().await;
            let held: usize = redis::cmd("HLEN")
                .arg(format!("hub:members:{number}"))
                .query_async(&mut raw)
                .await
                .unwrap();
            if held == 1 {
                return;
            }
        }
    })
    .await
    .expect("A never wrote its member");

    // B starts after the join: it learns of ann from A's hash, found by
    // name through the registry, and Redis ran no SCAN for it.
    let (b, _b_backplane) = node(&redis.url()).await;
    let names: Vec<Option<String>> = (b.members("r").into_iter())
        .map(|(_, metadata)| metadata.name().map(str::to_owned))
        .collect();
    assert_eq!(names, [Some("ann".to_owned())]);
    let stats: String = redis::cmd("INFO")
        .arg("commandstats")
        .query_async(&mut raw)
        .await
        .unwrap();
    assert!(stats.contains("cmdstat_zrange:"), "{stats}");
    assert!(!stats.contains("cmdstat_scan:"), "{stats}");
    drop(ann);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_topic_that_starts_over_in_redis_is_followed_again_everywhere() {
    use std::time::Duration;

    let redis = RedisServer::start().await;
    // Epochs are checked every third of the presence time to live.
    let builder = |url: String| {
        hub_redis::RedisBackplane::builder(url)
            .presence_ttl(Duration::from_millis(600))
            .backoff(Duration::from_millis(20), Duration::from_millis(200))
    };
    let a_backplane = builder(redis.url()).connect().await.unwrap();
    let b_backplane = builder(redis.url()).connect().await.unwrap();
    let a = hub::Hub::builder().backplane(a_backplane.clone()).build();
    let b = hub::Hub::builder().backplane(b_backplane.clone()).build();
    for backplane in [&a_backplane, &b_backplane] {
        tokio::time::timeout(support::WAIT, backplane.until_up())
            .await
            .unwrap();
    }
    let mut a1 = a.connect().unwrap();
    let mut b1 = b.connect().unwrap();
    a.broadcast("one");
    a.broadcast("two");
    assert_eq!(text(&mut a1).await, "one");
    assert_eq!(text(&mut b1).await, "one");
    assert_eq!(text(&mut a1).await, "two");
    assert_eq!(text(&mut b1).await, "two");

    // Its keys vanish (expired, evicted, deleted): the next broadcast
    // starts a new epoch at offset 0, far behind both nodes' cursors.
    let client = redis::Client::open(redis.url()).unwrap();
    let mut raw = client.get_multiplexed_async_connection().await.unwrap();
    let _: () = redis::cmd("DEL")
        .arg(key_like(&mut raw, "hub:*:all:meta").await)
        .arg(key_like(&mut raw, "hub:*:all:stream").await)
        .query_async(&mut raw)
        .await
        .unwrap();
    a.broadcast("three");
    let resync = Event::Resync {
        topic: Topic::All,
        missed: None,
    };
    // The sender's node notices from the reply, the other at its next
    // check; both deliver it, announced as a new epoch.
    for connection in [&mut a1, &mut b1] {
        assert_eq!(next(connection).await, resync);
        match next(connection).await {
            Event::Broadcast(m) => {
                assert_eq!(m.message().as_text(), Some("three"));
                assert_eq!(m.offset(), 0);
            }
            other => panic!("unexpected {other:?}"),
        }
    }
    b.broadcast("four");
    assert_eq!(text(&mut a1).await, "four");
    assert_eq!(text(&mut b1).await, "four");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_queue_is_full_delivers_locally_and_reports_it() {
    let redis = RedisServer::start().await;
    // No room at all in A's write queue: as if Redis could not keep up.
    let (a, a_backplane) =
        support::node_with_backplane(hub_redis::RedisBackplane::builder(redis.url()).queue(1))
            .await;
    let (b, _) = node(&redis.url()).await;
    let mut a1 = a.connect().unwrap();
    let mut b1 = b.connect().unwrap();

    assert_eq!(a.broadcast("local"), 1);
    let resync = Event::Resync {
        topic: Topic::All,
        missed: None,
    };
    // A's own connection gets it at once, in an epoch of A's own...
    assert_eq!(next(&mut a1).await, resync);
    assert_eq!(text(&mut a1).await, "local");
    // ...and, once A has placed the topic again, is back on the shared
    // numbering, while B's is told what it missed.
    assert_eq!(next(&mut a1).await, resync);
    assert_eq!(
        next(&mut b1).await,
        Event::Resync {
            topic: Topic::All,
            missed: Some(1),
        }
    );
    // Personal messages to the other node are refused, not dropped.
    let refused = a.try_send_personal(b1.id(), "psst").unwrap_err();
    assert!(matches!(refused, hub::SendError::Unreachable { .. }));
    // B, whose queue has room, still reaches A.
    b.broadcast("shared");
    assert_eq!(text(&mut a1).await, "shared");
    assert_eq!(text(&mut b1).await, "shared");
    let stats = a_backplane.stats();
    assert_eq!(
        (stats.local_only, stats.notices, stats.published),
        (1, 1, 0)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publisher_learns_where_redis_placed_its_message() {
    let redis = RedisServer::start().await;
    let (a, _) = node(&redis.url()).await;
    let (b, _) = node(&redis.url()).await;
    let mut b1 = b.connect().unwrap();
    b.join(b1.id(), "news").unwrap();
    let news = Topic::Room("news".into());
    tokio::time::timeout(support::WAIT, b.until_placed(&news))
        .await
        .unwrap();

    // A has no member of the room: the message goes through Redis, and A
    // learns the position B's member receives it at.
    let first = tokio::time::timeout(support::WAIT, a.publish("news", "one"))
        .await
        .unwrap()
        .unwrap();
    let second = tokio::time::timeout(support::WAIT, a.publish("news", "two"))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        (second.epoch, second.offset),
        (first.epoch, first.offset + 1)
    );
    for (expected, position) in [("one", first), ("two", second)] {
        match next(&mut b1).await {
            Event::Broadcast(m) => {
                assert_eq!(m.message().as_text(), Some(expected));
                assert_eq!((m.epoch(), m.offset()), (position.epoch, position.offset));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    // Redis gone and no member on A: nothing is published, and A says so.
    drop(redis);
    let refused = tokio::time::timeout(support::WAIT, async {
        loop {
            match a.publish("news", "lost").await {
                Err(hub::PublishError::Unreachable) => return,
                // Not noticed yet, or taken and then given up on.
                Ok(_) | Err(hub::PublishError::Unplaced) => {
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
                Err(other) => panic!("unexpected {other:?}"),
            }
        }
    });
    refused.await.unwrap();
}
