//! What the backplane keeps in Redis stays bounded in bytes and in time,
//! and survives Redis losing its scripts.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use hub::{Event, Topic};
use redis::aio::MultiplexedConnection;
use support::{key_like, next, node, node_with_backplane, text, RedisServer, WAIT};
use tokio::time::timeout;

async fn raw(redis: &RedisServer) -> MultiplexedConnection {
    let client = redis::Client::open(redis.url()).unwrap();
    client.get_multiplexed_async_connection().await.unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn scripts_flushed_from_redis_are_loaded_again() {
    let redis = RedisServer::start().await;
    let (a, a_backplane) = node(&redis.url()).await;
    let (b, _) = node(&redis.url()).await;
    let mut a1 = a.connect().unwrap();
    let mut b1 = b.connect().unwrap();
    for (hub, conn) in [(&a, &a1), (&b, &b1)] {
        hub.join(conn.id(), "r").unwrap();
        let room = Topic::Room("r".into());
        timeout(WAIT, hub.until_placed(&room)).await.unwrap();
    }
    a.to("r").broadcast("before");
    assert_eq!(text(&mut b1).await, "before");
    assert_eq!(text(&mut a1).await, "before");

    let _: () = redis::cmd("SCRIPT")
        .arg("FLUSH")
        .query_async(&mut raw(&redis).await)
        .await
        .unwrap();
    // Numbered in Redis as usual, in the same epoch: no fork, no resync.
    for (i, expected) in ["after 1", "after 2"].into_iter().enumerate() {
        a.to("r").broadcast(expected);
        for conn in [&mut a1, &mut b1] {
            match next(conn).await {
                Event::Broadcast(line) => {
                    assert_eq!(line.message().as_text(), Some(expected));
                    assert_eq!(line.offset(), 1 + i as u64);
                }
                other => panic!("expected {expected:?}, got {other:?}"),
            }
        }
    }
    let stats = a_backplane.stats();
    assert_eq!(stats.script_reloads, 1);
    assert_eq!(stats.local_only, 0);
    assert_eq!(stats.published, 3);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_room_nobody_follows_leaves_redis_after_its_ttl() {
    let redis = RedisServer::start().await;
    let backplane = hub_redis::RedisBackplane::builder(redis.url())
        .ttl(Duration::from_secs(2))
        .backoff(Duration::from_millis(20), Duration::from_millis(200))
        .connect()
        .await
        .unwrap();
    // A room goes from the node as soon as it is empty.
    let a = hub::Hub::builder()
        .idle_rooms(0)
        .backplane(backplane.clone())
        .build();
    timeout(WAIT, backplane.until_up()).await.unwrap();
    let mut conn = a.connect().unwrap();
    a.join(conn.id(), "passing").unwrap();
    let room = Topic::Room("passing".into());
    timeout(WAIT, a.until_placed(&room)).await.unwrap();
    a.to("passing").broadcast("hello");
    assert_eq!(text(&mut conn).await, "hello");
    let mut redis_conn = raw(&redis).await;
    let meta = key_like(&mut redis_conn, "hub:*:room:passing:meta").await;
    let stream = key_like(&mut redis_conn, "hub:*:room:passing:stream").await;
    let exists = || {
        let mut redis_conn = redis_conn.clone();
        let keys = [meta.clone(), stream.clone()];
        async move {
            redis::cmd("EXISTS")
                .arg(&keys)
                .query_async::<u64>(&mut redis_conn)
                .await
                .unwrap()
        }
    };
    // Followed, the room outlives its ttl (refreshed every half second).
    tokio::time::sleep(Duration::from_millis(4500)).await;
    assert_eq!(exists().await, 2);
    // Everyone leaves; the node forgets the room, and Redis soon after.
    drop(conn);
    timeout(WAIT, async {
        while exists().await > 0 {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    })
    .await
    .expect("the room's keys outlived their ttl");
}

/// A stream entry as `XRANGE` gives it: its id and its fields.
type Entry = (String, Vec<(String, Vec<u8>)>);

/// The payload bytes (field `m`) and length of a stream.
async fn stream_payloads(conn: &mut MultiplexedConnection, stream: &str) -> (usize, usize) {
    let entries: Vec<Entry> = redis::cmd("XRANGE")
        .arg(stream)
        .arg("-")
        .arg("+")
        .query_async(conn)
        .await
        .unwrap();
    let bytes = entries
        .iter()
        .flat_map(|(_, fields)| fields.iter())
        .filter(|(name, _)| name == "m")
        .map(|(_, value)| value.len())
        .sum();
    (bytes, entries.len())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_keep_their_bytes_within_limits() {
    const LIMIT: usize = 64 * 1024;
    let redis = RedisServer::start().await;
    let backplane = hub_redis::RedisBackplane::builder(redis.url())
        .history_bytes(LIMIT)
        .backoff(Duration::from_millis(20), Duration::from_millis(200));
    let (a, _) = node_with_backplane(backplane).await;
    let (b, _) = node(&redis.url()).await;
    let mut a1 = a.connect().unwrap();
    a.join(a1.id(), "big").unwrap();
    let room = Topic::Room("big".into());
    timeout(WAIT, a.until_placed(&room)).await.unwrap();
    let line = "z".repeat(4000);
    for _ in 0..100 {
        a.to("big").broadcast(line.clone());
        assert_eq!(text(&mut a1).await, line);
    }
    let mut conn = raw(&redis).await;
    let stream = key_like(&mut conn, "hub:*:room:big:stream").await;
    let (bytes, entries) = stream_payloads(&mut conn, &stream).await;
    assert!(bytes <= LIMIT, "{bytes} bytes in {entries} entries");
    assert_eq!(entries, LIMIT / 4000, "the newest that fit");
    let counted: usize = redis::cmd("HGET")
        .arg(key_like(&mut conn, "hub:*:room:big:meta").await)
        .arg("bytes")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(counted, bytes);

    // User messages: bounded too, and they expire.
    let mut b1 = b.connect_with(hub::Metadata::new().with_user("u")).unwrap();
    for i in 0..20 {
        a.to_user("u").broadcast(format!("{i}:{line}"));
        assert_eq!(text(&mut b1).await, format!("{i}:{line}"));
    }
    let users = key_like(&mut conn, "hub:*:users").await;
    let (bytes, entries) = stream_payloads(&mut conn, &users).await;
    let sent: usize = (0..20).map(|i| format!("{i}:{line}").len()).sum();
    assert_eq!((bytes, entries), (sent, 20));
    let counted: usize = redis::cmd("HGET")
        .arg(format!("{users}:size"))
        .arg("bytes")
        .query_async(&mut conn)
        .await
        .unwrap();
    assert_eq!(counted, sent);
    for key in [users.clone(), format!("{users}:size")] {
        let ttl: i64 = redis::cmd("TTL")
            .arg(&key)
            .query_async(&mut conn)
            .await
            .unwrap();
        assert!((1..=3600).contains(&ttl), "{key}: {ttl}");
    }
}
