//! A real `redis-server` for the tests, on a free loopback port, and
//! helpers to run nodes against it.

#![allow(dead_code, unreachable_pub, unused_imports)]

mod redis_cluster;
mod redis_server;

use std::sync::Arc;
use std::time::Duration;

use hub::{Connection, Event, Hub, Message};
use hub_redis::RedisBackplane;
use tokio::time::timeout;

pub use redis_cluster::{RedisCluster, CLUSTER_WAIT};
pub use redis_server::{RedisServer, WAIT};

/// A node: a hub sharing `url`'s Redis, once it is up.
pub async fn node(url: &str) -> (Hub, Arc<RedisBackplane>) {
    node_with(url, Hub::builder()).await
}

pub async fn node_with(url: &str, builder: hub::Builder) -> (Hub, Arc<RedisBackplane>) {
    let backplane =
        RedisBackplane::builder(url).backoff(Duration::from_millis(20), Duration::from_millis(200));
    let backplane = backplane.connect().await.unwrap();
    let hub = builder.backplane(backplane.clone()).build();
    timeout(WAIT, backplane.until_up()).await.unwrap();
    (hub, backplane)
}

/// A node sharing a Redis Cluster known by `seeds`, once it is up.
pub async fn cluster_node(seeds: &[String]) -> (Hub, Arc<RedisBackplane>) {
    let backplane = RedisBackplane::cluster(seeds.iter().cloned())
        .backoff(Duration::from_millis(20), Duration::from_millis(200));
    let backplane = backplane.connect().await.unwrap();
    let hub = Hub::builder().backplane(backplane.clone()).build();
    timeout(CLUSTER_WAIT, backplane.until_up()).await.unwrap();
    (hub, backplane)
}

/// A node with a backplane configured by the test.
pub async fn node_with_backplane(backplane: hub_redis::Builder) -> (Hub, Arc<RedisBackplane>) {
    let backplane = backplane.connect().await.unwrap();
    let hub = Hub::builder().backplane(backplane.clone()).build();
    timeout(WAIT, backplane.until_up()).await.unwrap();
    (hub, backplane)
}

/// The next event, within [`WAIT`].
pub async fn next(connection: &mut Connection) -> Event {
    timeout(WAIT, connection.recv())
        .await
        .expect("no event in time")
        .expect("connection closed")
}

/// The next event's text, panicking on anything else.
pub async fn text(connection: &mut Connection) -> String {
    match next(connection).await {
        Event::Broadcast(b) => b.message().as_text().unwrap().to_owned(),
        Event::Personal(m) => m.as_text().unwrap().to_owned(),
        other => panic!("expected a message, got {other:?}"),
    }
}

pub fn message(text: &str) -> Message {
    Message::text(text.to_owned())
}

/// The first key of one Redis matching `pattern` (keys carry their
/// partition's hash tag, which tests do not compute).
pub async fn key_like(conn: &mut redis::aio::MultiplexedConnection, pattern: &str) -> String {
    let mut keys: Vec<String> = redis::cmd("KEYS")
        .arg(pattern)
        .query_async(conn)
        .await
        .unwrap();
    keys.sort();
    keys.into_iter()
        .next()
        .unwrap_or_else(|| panic!("no key matches {pattern}"))
}
