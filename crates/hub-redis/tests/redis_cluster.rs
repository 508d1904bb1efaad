//! Nodes sharing a real Redis Cluster: three masters (with a replica each
//! where a master is killed), started by the tests on free loopback ports.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::collections::{BTreeMap, BTreeSet};

use hub::{Connection, Event, Hub, Metadata, Position, PresenceKind, Resume, Topic};
use support::{cluster_node, message, next, text, RedisCluster, RedisServer, CLUSTER_WAIT};
use tokio::time::timeout;

/// Waits until every hub has placed every room.
async fn placed(hubs: &[&Hub], rooms: &[String]) {
    for hub in hubs {
        for room in rooms {
            let topic = Topic::Room(room.as_str().into());
            timeout(CLUSTER_WAIT, hub.until_placed(&topic))
                .await
                .expect("the room is placed");
        }
    }
}

/// Two nodes on `cluster`, each with one member in every one of `count`
/// rooms (`room-0`, …), placed on both.
struct Pair {
    a: Hub,
    a_backplane: std::sync::Arc<hub_redis::RedisBackplane>,
    a1: Connection,
    b: Hub,
    b_backplane: std::sync::Arc<hub_redis::RedisBackplane>,
    b1: Connection,
    rooms: Vec<String>,
}

impl Pair {
    async fn start(cluster: &RedisCluster, count: usize) -> Self {
        let (a, a_backplane) = cluster_node(&cluster.seeds()).await;
        let (b, b_backplane) = cluster_node(&cluster.seeds()).await;
        let rooms: Vec<String> = (0..count).map(|i| format!("room-{i}")).collect();
        let (a1, b1) = (a.connect().unwrap(), b.connect().unwrap());
        for room in &rooms {
            a.join(a1.id(), room.as_str()).unwrap();
            b.join(b1.id(), room.as_str()).unwrap();
        }
        placed(&[&a, &b], &rooms).await;
        Self {
            a,
            a_backplane,
            a1,
            b,
            b_backplane,
            b1,
            rooms,
        }
    }
}

/// The next `count` broadcasts of a connection, by room: (epoch, offset,
/// text), in the order received.
async fn lines(
    connection: &mut Connection,
    count: usize,
) -> BTreeMap<String, Vec<(u64, u64, String)>> {
    let mut by_room: BTreeMap<String, Vec<(u64, u64, String)>> = BTreeMap::new();
    for _ in 0..count {
        match next(connection).await {
            Event::Broadcast(b) => {
                let Topic::Room(room) = b.topic() else {
                    panic!("a room line, not {b:?}")
                };
                by_room.entry(room.to_string()).or_default().push((
                    b.epoch(),
                    b.offset(),
                    b.message().as_text().unwrap().to_owned(),
                ));
            }
            other => panic!("expected a line, got {other:?}"),
        }
    }
    by_room
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rooms_spread_over_every_master_and_lines_cross_nodes_once_in_order() {
    let cluster = RedisCluster::start(3, 0).await;
    let Pair {
        a,
        a_backplane,
        mut a1,
        b,
        b_backplane,
        mut b1,
        rooms,
    } = Pair::start(&cluster, 30).await;

    const EACH: usize = 10;
    for i in 0..EACH {
        for room in &rooms {
            // Each room hears both nodes, alternately.
            let hub = if i % 2 == 0 { &a } else { &b };
            hub.to(room.as_str()).broadcast(format!("{room}/{i}"));
        }
    }
    let seen_a = lines(&mut a1, EACH * rooms.len()).await;
    let seen_b = lines(&mut b1, EACH * rooms.len()).await;
    assert_eq!(seen_a, seen_b, "both nodes deliver the same numbering");
    assert_eq!(seen_a.len(), rooms.len());
    for (room, got) in &seen_a {
        // One numbering: offsets 0, 1, … in one epoch.
        let epoch = got[0].0;
        let places: Vec<(u64, u64)> = got.iter().map(|(e, o, _)| (*e, *o)).collect();
        let expected: Vec<(u64, u64)> = (0..EACH as u64).map(|o| (epoch, o)).collect();
        assert_eq!(places, expected, "{room}");
        // Each line once, each sender's in its order.
        for first in [0, 1] {
            let from: Vec<&str> = (got.iter())
                .map(|(_, _, text)| text.as_str())
                .filter(|text| {
                    text.rsplit('/').next().unwrap().parse::<usize>().unwrap() % 2 == first
                })
                .collect();
            let sent: Vec<String> = (first..EACH)
                .step_by(2)
                .map(|i| format!("{room}/{i}"))
                .collect();
            assert_eq!(from, sent, "{room}: once each, in order");
        }
    }
    for connection in [&mut a1, &mut b1] {
        assert!(matches!(
            connection.try_recv(),
            Err(hub::TryRecvError::Empty)
        ));
    }

    // Every master holds some of the rooms, and together all of them.
    let mut held = BTreeSet::new();
    for (port, _) in cluster.masters().await {
        let keys = RedisCluster::cli(port, &["--scan", "--pattern", "hub:*:room:*:stream"]).await;
        let here: Vec<&str> = keys.lines().filter(|line| !line.is_empty()).collect();
        assert!(!here.is_empty(), "the master on {port} holds no room");
        for key in here {
            let room = key.split(":room:").nth(1).unwrap();
            held.insert(room.trim_end_matches(":stream").to_owned());
        }
    }
    assert_eq!(held, rooms.iter().cloned().collect::<BTreeSet<_>>());
    for backplane in [&a_backplane, &b_backplane] {
        let stats = backplane.stats();
        assert_eq!(
            (
                stats.local_only,
                stats.dropped,
                stats.disconnects,
                stats.resyncs
            ),
            (0, 0, 0, 0)
        );
        assert_eq!(stats.delivered, (EACH * rooms.len()) as u64);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn messages_presence_and_resume_cross_nodes_on_a_cluster() {
    let cluster = RedisCluster::start(3, 0).await;
    // A cluster's node taken for one Redis is refused, with what to do.
    let refused = hub_redis::RedisBackplane::connect(cluster.seeds()[0].clone()).await;
    let refused = refused.expect_err("a cluster node is not one Redis");
    assert!(
        matches!(refused, hub_redis::Error::ClusterNode { .. }),
        "{refused}"
    );
    assert!(refused.to_string().contains("RedisBackplane::cluster"));
    // And one Redis taken for a cluster.
    let one = RedisServer::start().await;
    let refused = hub_redis::RedisBackplane::cluster([one.url()])
        .connect()
        .await;
    let refused = refused.expect_err("one Redis is not a cluster");
    assert!(
        matches!(refused, hub_redis::Error::NotACluster { .. }),
        "{refused}"
    );
    let (a, _) = cluster_node(&cluster.seeds()).await;
    let (b, _) = cluster_node(&cluster.seeds()).await;

    // Personal and user messages (a `/msg`), both ways.
    let mut a1 = a
        .connect_with(Metadata::new().with_user("ann").with_name("ann"))
        .unwrap();
    let mut b1 = b.connect_with(Metadata::new().with_user("ann")).unwrap();
    let mut b2 = b
        .connect_with(Metadata::new().with_user("bob").with_name("bob"))
        .unwrap();
    a.try_send_personal(b2.id(), "psst").unwrap();
    b.send_personal(a1.id(), message("hi back")).await.unwrap();
    assert_eq!(next(&mut b2).await, Event::Personal(message("psst")));
    assert_eq!(next(&mut a1).await, Event::Personal(message("hi back")));
    assert_eq!(b.to_user("ann").broadcast("to ann"), 1);
    assert_eq!(next(&mut b1).await, Event::Personal(message("to ann")));
    assert_eq!(next(&mut a1).await, Event::Personal(message("to ann")));
    // Users of several partitions: each reaches exactly its own.
    for user in ["u0", "u1", "u2", "u3", "u4", "u5"] {
        let mut there = b.connect_with(Metadata::new().with_user(user)).unwrap();
        a.to_user(user).broadcast(format!("for {user}"));
        assert_eq!(text(&mut there).await, format!("for {user}"));
    }

    // Presence: B sees A's member join, and lists both.
    let mut seen_by_b = b.presence();
    a.join(a1.id(), "lobby").unwrap();
    let joined = timeout(CLUSTER_WAIT, async {
        loop {
            let event = seen_by_b.recv().await.unwrap();
            if event.topic == Topic::Room("lobby".into()) && event.id == a1.id() {
                return event;
            }
        }
    })
    .await
    .expect("B hears of A's member");
    assert_eq!(joined.kind, PresenceKind::Joined);
    assert_eq!(joined.metadata.name(), Some("ann"));
    b.join(b2.id(), "lobby").unwrap();
    let mut expected = vec![(a1.id(), "ann".to_owned()), (b2.id(), "bob".to_owned())];
    expected.sort();
    let names = |hub: &Hub| -> Vec<(hub::ConnId, String)> {
        let mut names: Vec<_> = (hub.members("lobby").into_iter())
            .map(|(id, m)| (id, m.name().unwrap_or_default().to_owned()))
            .collect();
        names.sort();
        names
    };
    timeout(CLUSTER_WAIT, async {
        while names(&a) != expected || names(&b) != expected {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    })
    .await
    .expect("both nodes list both members");

    // Resume on the other node: from where the client was, no gap, no
    // duplicate.
    placed(&[&a, &b], &["lobby".to_owned()]).await;
    for i in 0..5 {
        a.to("lobby").broadcast(format!("m{i}"));
    }
    let mut seen = Vec::new();
    for _ in 0..5 {
        match next(&mut a1).await {
            Event::Broadcast(m) => seen.push(m),
            other => panic!("unexpected {other:?}"),
        }
    }
    let mut b3 = b.connect().unwrap();
    let last_seen = Position {
        epoch: seen[1].epoch(),
        offset: seen[1].offset(),
    };
    // Caught up at once from what B has read so far, or once B has
    // placed the room: the lines follow either way.
    assert!(matches!(
        b.resume(b3.id(), "lobby", last_seen).unwrap(),
        Resume::CaughtUp { .. } | Resume::Pending
    ));
    for expected in &seen[2..] {
        assert_eq!(next(&mut b3).await, Event::Broadcast(expected.clone()));
    }
}

/// What a member saw of each room: lines as (epoch, offset, text), and
/// the jumps in offsets it was not told of.
#[derive(Default)]
struct Seen {
    lines: BTreeMap<String, Vec<(u64, u64, String)>>,
    /// Rooms whose last event was a resync, not followed by a line yet.
    told: BTreeSet<String>,
    /// Resyncs, by room.
    resyncs: BTreeMap<String, usize>,
    /// Offsets skipped without a resync: room, epoch, and the offsets
    /// between two lines. Only offsets that held no line may be (a notice
    /// of what this member's node delivered alone takes one).
    untold: Vec<(String, u64, std::ops::Range<u64>)>,
}

impl Seen {
    fn take(&mut self, event: Event) {
        match event {
            Event::Broadcast(b) => {
                let Topic::Room(room) = b.topic() else {
                    panic!("a room line, not {b:?}")
                };
                let room = room.to_string();
                let line = (
                    b.epoch(),
                    b.offset(),
                    b.message().as_text().unwrap().to_owned(),
                );
                let told = self.told.remove(&room);
                let lines = self.lines.entry(room.clone()).or_default();
                if let Some((epoch, offset, _)) = lines.last() {
                    assert!(*epoch == line.0 || told, "{room}: a new epoch untold");
                    if *epoch == line.0 && line.1 > offset + 1 && !told {
                        self.untold.push((room.clone(), line.0, offset + 1..line.1));
                    }
                }
                lines.push(line);
            }
            // The topic of everyone carries nothing in these tests; it
            // resyncs with the rest when the cluster restarts empty.
            Event::Resync {
                topic: Topic::All, ..
            } => {}
            Event::Resync { topic, .. } => {
                let Topic::Room(room) = topic else {
                    panic!("a room resync, not {topic:?}")
                };
                *self.resyncs.entry(room.to_string()).or_default() += 1;
                self.told.insert(room.to_string());
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    /// Checks that no offset this member skipped untold held a line that
    /// `other` saw.
    fn told_every_line_of(&self, other: &Seen) {
        for (room, epoch, skipped) in &self.untold {
            let held = (other.lines.get(room).into_iter().flatten())
                .find(|(e, offset, _)| e == epoch && skipped.contains(offset));
            assert!(held.is_none(), "{room}: {held:?} skipped without a resync");
        }
    }

    /// Whether the member has seen `text` in `room`.
    fn has(&self, room: &str, text: &str) -> bool {
        (self.lines.get(room)).is_some_and(|lines| lines.iter().any(|(_, _, t)| t == text))
    }
}

/// Takes a member's events until `done` holds, within the wait.
async fn watch(connection: &mut Connection, seen: &mut Seen, done: impl Fn(&Seen) -> bool) {
    timeout(CLUSTER_WAIT, async {
        while !done(seen) {
            seen.take(next(connection).await);
        }
    })
    .await
    .expect("the member saw everything in time");
}

/// Waits until a node is back on the cluster after losing it.
async fn until_back(backplane: &hub_redis::RedisBackplane) {
    timeout(CLUSTER_WAIT, async {
        while backplane.stats().reconnects == 0 || !backplane.is_up() {
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    })
    .await
    .expect("the node is back");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_master_killed_mid_traffic_fails_over_and_no_gap_goes_untold() {
    let mut cluster = RedisCluster::start(3, 1).await;
    let Pair {
        a,
        a_backplane,
        mut a1,
        b,
        b_backplane,
        mut b1,
        rooms,
    } = Pair::start(&cluster, 12).await;
    let (mut seen_a, mut seen_b) = (Seen::default(), Seen::default());
    let send = |round: &str| {
        for room in &rooms {
            a.to(room.as_str()).broadcast(format!("{room}/{round}/a"));
            b.to(room.as_str()).broadcast(format!("{room}/{round}/b"));
        }
    };
    let all_of = |round: &'static str| {
        let rooms = rooms.clone();
        move |seen: &Seen| {
            rooms.iter().all(|room| {
                seen.has(room, &format!("{room}/{round}/a"))
                    && seen.has(room, &format!("{room}/{round}/b"))
            })
        }
    };
    for round in ["0", "1", "2"] {
        send(round);
    }
    watch(&mut a1, &mut seen_a, all_of("2")).await;
    watch(&mut b1, &mut seen_b, all_of("2")).await;
    let before_a = seen_a.lines.clone();
    assert_eq!(before_a, seen_b.lines, "one numbering before the failover");

    // The master of room-0 dies while both nodes publish.
    let mut victim = None;
    for (port, _) in cluster.masters().await {
        let keys = RedisCluster::cli(port, &["--scan", "--pattern", "hub:*:room:*:meta"]).await;
        let held: Vec<String> = (keys.lines())
            .filter_map(|key| {
                Some(
                    key.split(":room:")
                        .nth(1)?
                        .strip_suffix(":meta")?
                        .to_owned(),
                )
            })
            .collect();
        if held.iter().any(|room| room == "room-0") {
            victim = Some((port, held));
        }
    }
    let (victim, failed_over) = victim.expect("a master holds room-0");
    cluster.kill(victim).await;
    for round in ["during-0", "during-1", "during-2"] {
        send(round);
        tokio::task::yield_now().await;
    }
    cluster.until_failed_over(3).await;
    until_back(&a_backplane).await;
    until_back(&b_backplane).await;

    // Traffic goes on, in every room, and both members get it.
    send("after");
    watch(&mut a1, &mut seen_a, all_of("after")).await;
    watch(&mut b1, &mut seen_b, all_of("after")).await;

    for room in &rooms {
        let (lines_a, lines_b) = (&seen_a.lines[room], &seen_b.lines[room]);
        // Lines stored before the failover kept their offsets, and the
        // room its epoch: the lines after follow in the same numbering.
        let epoch = before_a[room][0].0;
        let after = |lines: &[(u64, u64, String)]| {
            let last = lines.last().unwrap().clone();
            assert!(last.2.contains("/after/"), "{room}: {last:?}");
            last.0
        };
        assert_eq!(after(lines_a), epoch, "{room} kept its epoch on A");
        assert_eq!(after(lines_b), epoch, "{room} kept its epoch on B");
        // No offset means two things.
        let by_offset: BTreeMap<u64, &str> = (lines_a.iter())
            .filter(|(e, _, _)| *e == epoch)
            .map(|(_, offset, text)| (*offset, text.as_str()))
            .collect();
        for (e, offset, text) in lines_b {
            if *e == epoch {
                if let Some(other) = by_offset.get(offset) {
                    assert_eq!(other, text, "{room}: offset {offset} on A and B");
                }
            }
        }
    }
    // In the rooms of the master that died, the promoted replica skipped
    // the offsets the old master may have given (a hundred) and the
    // members were told: the lines after lie past them.
    for room in &failed_over {
        for seen in [&seen_a, &seen_b] {
            let lines = &seen.lines[room];
            let skipped = lines.windows(2).any(|pair| pair[1].1 > pair[0].1 + 100);
            assert!(skipped, "{room}: {lines:?}");
        }
    }
    // What the members missed, they were told.
    seen_a.told_every_line_of(&seen_b);
    seen_b.told_every_line_of(&seen_a);
    // And the nodes did lose Redis and come back.
    for backplane in [&a_backplane, &b_backplane] {
        let stats = backplane.stats();
        assert!(stats.disconnects >= 1 && stats.reconnects >= 1, "{stats:?}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_whole_cluster_restarted_empty_starts_rooms_over_and_traffic_goes_on() {
    let mut cluster = RedisCluster::start(3, 0).await;
    let Pair {
        a,
        a_backplane,
        mut a1,
        b,
        b_backplane,
        mut b1,
        rooms,
    } = Pair::start(&cluster, 6).await;
    for room in &rooms {
        a.to(room.as_str()).broadcast(format!("{room}/before"));
    }
    let (mut seen_a, mut seen_b) = (Seen::default(), Seen::default());
    let all = |text: &'static str| {
        let rooms = rooms.clone();
        move |seen: &Seen| (rooms.iter()).all(|room| seen.has(room, &format!("{room}/{text}")))
    };
    watch(&mut a1, &mut seen_a, all("before")).await;
    watch(&mut b1, &mut seen_b, all("before")).await;

    cluster.restart_all(3).await;
    until_back(&a_backplane).await;
    until_back(&b_backplane).await;
    for room in &rooms {
        b.to(room.as_str()).broadcast(format!("{room}/after"));
    }
    watch(&mut a1, &mut seen_a, all("after")).await;
    watch(&mut b1, &mut seen_b, all("after")).await;
    for seen in [&seen_a, &seen_b] {
        for room in &rooms {
            let lines = &seen.lines[room];
            let (before, after) = (&lines[0], lines.last().unwrap());
            // A new epoch (Redis lost everything), told as a resync.
            assert_ne!(before.0, after.0, "{room}");
            assert!(seen.resyncs.get(room).copied().unwrap_or(0) >= 1, "{room}");
        }
    }
    // Both nodes are on the same new numbering.
    for room in &rooms {
        assert_eq!(
            seen_a.lines[room].last(),
            seen_b.lines[room].last(),
            "{room}"
        );
    }
}
