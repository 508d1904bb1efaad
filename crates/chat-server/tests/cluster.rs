//! Two chat-server nodes sharing one real `redis-server` (`--redis-url`),
//! or a real Redis Cluster (`--redis-cluster`).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
#[path = "../../hub-redis/tests/support/redis_cluster.rs"]
mod redis_cluster;
#[path = "../../hub-redis/tests/support/redis_server.rs"]
mod redis_server;

use std::time::Duration;

use common::{http, recv_text, send_text, ChildServer, TestServer};
use redis_cluster::RedisCluster;
use redis_server::RedisServer;
use serde_json::Value;

async fn nodes(redis: &RedisServer) -> (TestServer, TestServer) {
    let url = redis.url();
    let args = ["--redis-url", url.as_str()];
    (
        TestServer::start(&args).await,
        TestServer::start(&args).await,
    )
}

#[tokio::test]
async fn the_classic_chat_spans_nodes_exactly_once() {
    let redis = RedisServer::start().await;
    let (a, b) = nodes(&redis).await;
    let mut on_a = a.connect("/ws").await;
    let mut on_b = b.connect("/ws").await;

    send_text(&mut on_a, "hi").await;
    assert_eq!(recv_text(&mut on_a).await, "Client says: hi");
    assert_eq!(recv_text(&mut on_b).await, "Client says: hi");
    send_text(&mut on_b, "yo").await;
    // The next line is the next message: nothing came twice.
    assert_eq!(recv_text(&mut on_a).await, "Client says: yo");
    assert_eq!(recv_text(&mut on_b).await, "Client says: yo");

    drop(on_a);
    assert_eq!(recv_text(&mut on_b).await, "A client disconnected");

    let (status, _, body) = http(a.addr, "GET", "/metrics").await;
    assert_eq!(status, 200);
    for line in [
        "backplane_up{endpoint=\"ws\"} 1",
        "backplane_up{endpoint=\"rooms\"} 1",
        "backplane_published_total{endpoint=\"ws\"} 2",
        "backplane_delivered_total{endpoint=\"ws\"} 3",
        "backplane_local_only_total{endpoint=\"ws\"} 0",
    ] {
        assert!(body.lines().any(|l| l == line), "no {line:?} in\n{body}");
    }
    let (status, _, body) = http(b.addr, "GET", "/healthz").await;
    assert_eq!((status, body.as_str()), (200, "ok\n"));
}

#[tokio::test]
async fn a_room_client_resumes_on_the_other_node() {
    let redis = RedisServer::start().await;
    let (a, b) = nodes(&redis).await;
    let mut writer = a.connect("/ws?room=r&name=writer").await;
    assert_eq!(recv_text(&mut writer).await, "writer joined");
    let mut reader = b.connect("/ws?room=r&name=reader&format=json").await;
    let joined = next_line(&mut reader).await;
    assert_eq!(
        (&joined["data"]["kind"], &joined["data"]["from"]),
        (&Value::from("joined"), &Value::from("reader"))
    );
    assert_eq!(recv_text(&mut writer).await, "reader joined");
    send_text(&mut writer, "one").await;
    assert_eq!(recv_text(&mut writer).await, "writer: one");
    let one = next_line(&mut reader).await;
    assert_eq!(one["data"]["text"], "one");
    let (epoch, offset) = (
        one["epoch"].as_str().unwrap(),
        one["offset"].as_u64().unwrap(),
    );

    drop(reader);
    assert_eq!(recv_text(&mut writer).await, "reader left");
    send_text(&mut writer, "two").await;
    assert_eq!(recv_text(&mut writer).await, "writer: two");

    // Back on node A this time: the same positions, nothing missed twice.
    let query = format!("/ws?room=r&name=reader&format=json&epoch={epoch}&offset={offset}");
    let mut back = a.connect(&query).await;
    for (i, (kind, field, what)) in [("left", "from", "reader"), ("chat", "text", "two")]
        .into_iter()
        .enumerate()
    {
        let frame = next_line(&mut back).await;
        assert_eq!(frame["epoch"].as_str(), Some(epoch));
        assert_eq!(frame["offset"].as_u64(), Some(offset + 1 + i as u64));
        assert_eq!(
            (&frame["data"]["kind"], &frame["data"][field]),
            (&Value::from(kind), &Value::from(what))
        );
    }
    let rejoined = next_line(&mut back).await;
    assert_eq!(rejoined["data"]["kind"], "joined");
    assert_eq!(rejoined["offset"].as_u64(), Some(offset + 3));
}

#[tokio::test]
async fn the_room_chat_spans_nodes_on_a_redis_cluster() {
    let cluster = RedisCluster::start(3, 0).await;
    let seeds = cluster.seeds();
    let args = ["--redis-cluster", &seeds[0], "--redis-cluster", &seeds[1]];
    let (a, b) = (
        TestServer::start(&args).await,
        TestServer::start(&args).await,
    );
    let mut writer = a.connect("/ws?room=r&name=writer").await;
    assert_eq!(recv_text(&mut writer).await, "writer joined");
    let mut reader = b.connect("/ws?room=r&name=reader&format=json").await;
    assert_eq!(next_line(&mut reader).await["data"]["kind"], "joined");
    assert_eq!(recv_text(&mut writer).await, "reader joined");
    for text in ["one", "two", "three"] {
        send_text(&mut writer, text).await;
        assert_eq!(recv_text(&mut writer).await, format!("writer: {text}"));
    }
    let mut offsets = Vec::new();
    for text in ["one", "two", "three"] {
        let line = next_line(&mut reader).await;
        assert_eq!(line["data"]["text"], text);
        offsets.push(line["offset"].as_u64().unwrap());
    }
    assert_eq!(offsets, [offsets[0], offsets[0] + 1, offsets[0] + 2]);
    // A private line finds its addressee on the other node.
    let mut quiet = b.connect("/ws?room=r&name=quiet").await;
    assert_eq!(recv_text(&mut quiet).await, "quiet joined");
    assert_eq!(recv_text(&mut writer).await, "quiet joined");
    send_text(&mut writer, "/msg quiet psst").await;
    assert_eq!(recv_text(&mut quiet).await, "[writer → quiet] psst");
    assert_eq!(recv_text(&mut writer).await, "[writer → quiet] psst");
    // The classic chat too, across the nodes.
    let mut on_a = a.connect("/ws").await;
    let mut on_b = b.connect("/ws").await;
    send_text(&mut on_b, "hi").await;
    assert_eq!(recv_text(&mut on_a).await, "Client says: hi");
    assert_eq!(recv_text(&mut on_b).await, "Client says: hi");
    let (_, _, body) = http(a.addr, "GET", "/metrics").await;
    for line in [
        "backplane_up{endpoint=\"ws\"} 1",
        "backplane_up{endpoint=\"rooms\"} 1",
    ] {
        assert!(body.lines().any(|l| l == line), "no {line:?} in\n{body}");
    }
}

/// The next room line of a JSON client (skipping its personal frames).
async fn next_line(client: &mut common::Client) -> Value {
    loop {
        let frame: Value = serde_json::from_str(&recv_text(client).await).unwrap();
        if frame["type"] == "message" {
            return frame;
        }
    }
}

#[tokio::test]
async fn a_killed_node_has_its_room_members_leave_the_others_lists() {
    let redis = RedisServer::start().await;
    let url = redis.url();
    let args = ["--redis-url", url.as_str(), "--presence-ttl", "900ms"];
    let survivor = TestServer::start(&args).await;
    let mut presence = survivor.rooms.presence();
    let mut doomed = ChildServer::spawn(&args).await;
    let mut ann = common::connect(&doomed.url("/ws?room=r&name=ann")).await;
    assert_eq!(recv_text(&mut ann).await, "ann joined");
    let mut bo = survivor.connect("/ws?room=r&name=bo&format=json").await;
    wait_members(&mut bo, &["ann", "bo"]).await;
    // The survivor lists both, its own and the other node's.
    let names = |hub: &hub::Hub| -> Vec<String> {
        let members = hub.members("r").into_iter();
        members
            .filter_map(|(_, m)| m.name().map(str::to_owned))
            .collect()
    };
    let ann_id = wait_presence(&mut presence, hub::PresenceKind::Joined, "ann").await;
    let mut listed = names(&survivor.rooms);
    listed.sort();
    assert_eq!(listed, ["ann", "bo"]);

    doomed.signal("KILL").await;
    let _ = doomed.wait_exit(Duration::from_secs(10)).await;
    let killed = tokio::time::Instant::now();
    let left = wait_presence(&mut presence, hub::PresenceKind::Left, "ann").await;
    assert_eq!(left, ann_id);
    // Within the time to live and a third (and some slack for the load).
    assert!(
        killed.elapsed() < Duration::from_millis(1200 + 1000),
        "{:?}",
        killed.elapsed()
    );
    assert_eq!(names(&survivor.rooms), ["bo"]);
    // The survivor's clients are told who left.
    let expected =
        serde_json::json!({ "kind": "presence", "room": "r", "joins": [], "leaves": ["ann"] });
    for _ in 0..20 {
        let frame: Value = serde_json::from_str(&recv_text(&mut bo).await).unwrap();
        if frame["type"] == "personal" && frame["data"]["kind"] == "presence" {
            let mut data = frame["data"].clone();
            data.as_object_mut().unwrap().remove("time");
            assert_eq!(data, expected);
            drop(ann);
            return;
        }
    }
    panic!("no presence diff for ann's departure");
}

/// Reads a JSON client's frames until a member list equal to `names`.
async fn wait_members(client: &mut common::Client, names: &[&str]) {
    // Bounded: a handful of frames come before it (welcome, lines, lists).
    for _ in 0..20 {
        let frame: Value = serde_json::from_str(&recv_text(client).await).unwrap();
        let members = frame["type"] == "personal" && frame["data"]["kind"] == "members";
        if members && frame["data"]["members"] == serde_json::json!(names) {
            return;
        }
    }
    panic!("no member list {names:?}");
}

/// Waits for a presence event of `kind` about the member called `name` in
/// room r; returns its id.
async fn wait_presence(
    events: &mut hub::Presence,
    kind: hub::PresenceKind,
    name: &str,
) -> hub::ConnId {
    let wait = async {
        loop {
            let event = events.recv().await.unwrap();
            if event.kind == kind
                && event.topic == hub::Topic::Room("r".into())
                && event.metadata.name() == Some(name)
            {
                return event.id;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), wait)
        .await
        .expect("no such presence event in time")
}
