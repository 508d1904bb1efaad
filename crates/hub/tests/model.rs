//! A model test: for any sequence of joins, leaves, broadcasts, slow and
//! fast reads and disconnects, every connection receives each topic's
//! messages in offset order without duplicates, only messages meant for it,
//! and every message it does not receive is accounted for by a notice.
//! Presence, applied as diffs (each join and leave in turn), adds up to
//! each room's member list, which is the model's.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};

use hub::{ConnId, Event, Hub, Position, PresenceKind, SlowConsumer, Topic, TryRecvError};
use proptest::prelude::*;

const CONNS: usize = 4;
const ROOMS: [&str; 2] = ["a", "b"];

#[derive(Clone, Debug)]
enum Op {
    Join(usize, usize),
    Leave(usize, usize),
    /// To a room (or all), except a connection.
    Send(Option<usize>, Option<usize>),
    Read(usize, u8),
    Disconnect(usize),
}

fn op(with_except: bool) -> impl Strategy<Value = Op> {
    let except = if with_except {
        proptest::option::of(0..CONNS).boxed()
    } else {
        Just(None).boxed()
    };
    prop_oneof![
        2 => (0..CONNS, 0..ROOMS.len()).prop_map(|(c, r)| Op::Join(c, r)),
        1 => (0..CONNS, 0..ROOMS.len()).prop_map(|(c, r)| Op::Leave(c, r)),
        6 => (proptest::option::of(0..ROOMS.len()), except).prop_map(|(r, e)| Op::Send(r, e)),
        3 => (0..CONNS, 0..6u8).prop_map(|(c, n)| Op::Read(c, n)),
        1 => (0..CONNS).prop_map(Op::Disconnect),
    ]
}

fn topic(room: Option<usize>) -> Topic {
    room.map_or(Topic::All, |r| Topic::from(ROOMS[r]))
}

/// What the model knows about one connection.
#[derive(Default)]
struct Model {
    /// Topic -> whether a member now; the first join only counts.
    member: BTreeMap<Topic, bool>,
    /// Topics this connection left at some point (not checked for
    /// completeness: unread messages of a room one leaves are dropped).
    left: BTreeSet<Topic>,
    disconnected: bool,
    /// (topic, epoch, offset) published while a member, not excepted.
    expected: BTreeSet<(Topic, u64, u64)>,
    delivered: Vec<(Topic, u64, u64)>,
    missed: BTreeMap<Topic, u64>,
}

fn read(conn: &mut hub::Connection, model: &mut Model, limit: usize) {
    for _ in 0..limit {
        match conn.try_recv() {
            Ok(Event::Broadcast(b)) => {
                model
                    .delivered
                    .push((b.topic().clone(), b.epoch(), b.offset()))
            }
            Ok(Event::Lagged { topic, missed })
            | Ok(Event::Resync {
                topic,
                missed: Some(missed),
            }) => {
                *model.missed.entry(topic).or_default() += missed;
            }
            Ok(other) => panic!("unexpected {other:?}"),
            Err(TryRecvError::Empty) | Err(TryRecvError::Closed(_)) => return,
            Err(other) => panic!("unexpected {other:?}"),
        }
    }
}

fn run(ops: Vec<Op>, capacity: usize, history: usize, policy: SlowConsumer) {
    let hub = Hub::builder()
        .capacity(capacity)
        .history(history, 1 << 20)
        .slow_consumer(policy)
        .build();
    let mut presence = hub.presence();
    let mut conns: Vec<_> = (0..CONNS).map(|_| hub.connect().unwrap()).collect();
    let mut models: Vec<Model> = (0..CONNS).map(|_| Model::default()).collect();
    for model in &mut models {
        model.member.insert(Topic::All, true);
    }
    let mut published = 0u64;
    for op in ops {
        match op {
            Op::Join(c, r) => {
                if models[c].disconnected {
                    continue;
                }
                hub.join(conns[c].id(), ROOMS[r]).unwrap();
                let topic = topic(Some(r));
                if models[c].member.contains_key(&topic) && !models[c].member[&topic] {
                    // A second membership: only checked for order.
                    models[c].left.insert(topic.clone());
                }
                models[c].member.insert(topic, true);
            }
            Op::Leave(c, r) => {
                let topic = topic(Some(r));
                if hub.leave(conns[c].id(), ROOMS[r]) {
                    models[c].member.insert(topic.clone(), false);
                    models[c].left.insert(topic);
                }
            }
            Op::Send(room, except) => {
                let topic = topic(room);
                let Some(Position { epoch, offset }) = hub.position(&topic) else {
                    assert_eq!(hub.to(ROOMS[room.unwrap()]).broadcast("x"), 0);
                    continue;
                };
                let except_id = except.map(|c| conns[c].id());
                let reached = match (room, except_id) {
                    (None, None) => hub.broadcast("x"),
                    (None, Some(id)) => hub.except(id).broadcast("x"),
                    (Some(r), None) => hub.to(ROOMS[r]).broadcast("x"),
                    (Some(r), Some(id)) => hub.to(ROOMS[r]).except(id).broadcast("x"),
                };
                published += 1;
                let mut members = 0;
                for (c, model) in models.iter_mut().enumerate() {
                    let member = !model.disconnected && model.member.get(&topic) == Some(&true);
                    if member && except != Some(c) {
                        members += 1;
                        model.expected.insert((topic.clone(), epoch, offset));
                    }
                }
                if room.is_some() {
                    assert_eq!(reached, members, "reached count of a room broadcast");
                }
            }
            Op::Read(c, n) => read(&mut conns[c], &mut models[c], n as usize),
            Op::Disconnect(c) => {
                if hub.disconnect(conns[c].id()) {
                    models[c].disconnected = true;
                }
            }
        }
    }
    for (conn, model) in conns.iter_mut().zip(&mut models) {
        read(conn, model, usize::MAX);
    }
    // Presence as diffs, applied in order from an empty start.
    let mut present: BTreeMap<Topic, BTreeSet<ConnId>> = BTreeMap::new();
    while let Ok(event) = presence.try_recv() {
        let members = present.entry(event.topic).or_default();
        match event.kind {
            PresenceKind::Joined => assert!(members.insert(event.id), "joined twice"),
            PresenceKind::Left => assert!(members.remove(&event.id), "left unjoined"),
            _ => {}
        }
    }
    for (r, room) in ROOMS.iter().enumerate() {
        let listed: BTreeSet<ConnId> = hub.members(room).into_iter().map(|(id, _)| id).collect();
        let modelled: BTreeSet<ConnId> = (models.iter().zip(&conns))
            .filter(|(model, _)| {
                !model.disconnected && model.member.get(&topic(Some(r))) == Some(&true)
            })
            .map(|(_, conn)| conn.id())
            .collect();
        assert_eq!(listed, modelled, "{room}: members");
        let diffs = present.remove(&topic(Some(r))).unwrap_or_default();
        assert_eq!(diffs, listed, "{room}: presence diffs add up to the list");
    }
    for (c, model) in models.iter().enumerate() {
        // In order, no duplicates, per topic and epoch.
        let mut last: BTreeMap<(Topic, u64), u64> = BTreeMap::new();
        for (topic, epoch, offset) in &model.delivered {
            if let Some(previous) = last.insert((topic.clone(), *epoch), *offset) {
                assert!(
                    *offset > previous,
                    "conn {c}: {topic} offset {offset} after {previous}"
                );
            }
            assert!(
                model.expected.contains(&(topic.clone(), *epoch, *offset)),
                "conn {c}: got {topic}@{offset}, not meant for it"
            );
        }
        // Complete, or the shortfall announced, for topics never left.
        for topic in model.member.keys().filter(|t| !model.left.contains(*t)) {
            let expected = model.expected.iter().filter(|(t, ..)| t == topic).count() as u64;
            let got = model.delivered.iter().filter(|(t, ..)| t == topic).count() as u64;
            let missed = model.missed.get(topic).copied().unwrap_or(0);
            if policy == SlowConsumer::Repair && history as u64 >= published {
                assert_eq!(
                    (got, missed),
                    (expected, 0),
                    "conn {c}: {topic} repaired completely"
                );
            } else {
                assert_eq!(
                    got + missed,
                    expected,
                    "conn {c}: {topic} shortfall announced"
                );
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    /// With history longer than the run, a lagging reader loses nothing,
    /// whatever the interleaving (sends that skip one connection included).
    #[test]
    fn repair_with_enough_history_delivers_everything(
        ops in proptest::collection::vec(op(true), 1..120),
        capacity in 1usize..5,
    ) {
        run(ops, capacity, 1000, SlowConsumer::Repair);
    }

    /// With short history, or when skipping, every missing message is
    /// announced by a notice that counts it.
    #[test]
    fn every_gap_is_announced(
        ops in proptest::collection::vec(op(false), 1..120),
        capacity in 1usize..5,
        history in 0usize..6,
        skip in any::<bool>(),
    ) {
        let policy = if skip { SlowConsumer::Skip } else { SlowConsumer::Repair };
        run(ops, capacity, history, policy);
    }
}
