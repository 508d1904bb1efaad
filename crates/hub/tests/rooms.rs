//! Rooms, presence, users, history, resume and lag repair.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use hub::{
    Broadcast, Event, Hub, Message, Metadata, Position, PresenceEvent, PresenceKind, RecvError,
    Resume, RoomName, SlowConsumer, Topic, TryRecvError,
};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);

async fn recv(conn: &mut hub::Connection) -> Event {
    timeout(WAIT, conn.recv())
        .await
        .expect("recv timed out")
        .unwrap()
}

/// The next broadcast as (topic, offset, text).
async fn next_broadcast(conn: &mut hub::Connection) -> (Topic, u64, String) {
    match recv(conn).await {
        Event::Broadcast(b) => (
            b.topic().clone(),
            b.offset(),
            b.message().as_text().unwrap().to_owned(),
        ),
        other => panic!("expected a broadcast, got {other:?}"),
    }
}

fn room(name: &str) -> Topic {
    Topic::Room(RoomName::from(name))
}

#[tokio::test]
async fn rooms_reach_their_members_only() {
    let hub = Hub::new();
    let mut a = hub.connect().unwrap();
    let mut b = hub.connect().unwrap();
    assert!(hub.join(a.id(), "rust").unwrap());
    assert!(!hub.join(a.id(), "rust").unwrap());
    assert!(hub.join(b.id(), "go").unwrap());
    assert_eq!(hub.to("rust").broadcast("r0"), 1);
    assert_eq!(hub.to("go").broadcast("g0"), 1);
    assert_eq!(hub.to("nowhere").broadcast("x"), 0);
    assert_eq!(next_broadcast(&mut a).await, (room("rust"), 0, "r0".into()));
    assert_eq!(next_broadcast(&mut b).await, (room("go"), 0, "g0".into()));
    assert_eq!(a.try_recv(), Err(TryRecvError::Empty));
    assert_eq!(
        hub.rooms(),
        vec![RoomName::from("go"), RoomName::from("rust")]
    );
    assert_eq!(hub.rooms_of(a.id()), vec![RoomName::from("rust")]);

    // Leaving stops delivery; the emptied room is gone from the list.
    assert!(hub.leave(a.id(), "rust"));
    assert!(!hub.leave(a.id(), "rust"));
    assert_eq!(hub.to("rust").broadcast("r1"), 0);
    assert_eq!(a.try_recv(), Err(TryRecvError::Empty));
    assert_eq!(hub.rooms(), vec![RoomName::from("go")]);
    assert!(hub.join(hub::ConnId::clone(&a.id()), "go").unwrap());
    assert_eq!(hub.to("go").except(b.id()).broadcast("g1"), 1);
    assert_eq!(next_broadcast(&mut a).await, (room("go"), 1, "g1".into()));
    assert_eq!(b.try_recv(), Err(TryRecvError::Empty));
}

#[tokio::test]
async fn broadcast_to_several_rooms_numbers_it_in_each() {
    let hub = Hub::new();
    let mut both = hub.connect().unwrap();
    let mut one = hub.connect().unwrap();
    hub.join(both.id(), "a").unwrap();
    hub.join(both.id(), "b").unwrap();
    hub.join(one.id(), "b").unwrap();
    assert_eq!(hub.to("a").to("b").broadcast("hi"), 3);
    let mut got = vec![
        next_broadcast(&mut both).await,
        next_broadcast(&mut both).await,
    ];
    got.sort();
    assert_eq!(
        got,
        vec![(room("a"), 0, "hi".into()), (room("b"), 0, "hi".into())]
    );
    assert_eq!(next_broadcast(&mut one).await, (room("b"), 0, "hi".into()));
}

#[tokio::test]
async fn joining_an_unknown_connection_is_an_error() {
    let hub = Hub::new();
    let gone = hub.connect().unwrap();
    let id = gone.id();
    drop(gone);
    assert_eq!(
        hub.join(id, "rust"),
        Err(hub::JoinError::UnknownConnection { id })
    );
    assert!(!hub.leave(id, "rust"));
}

#[tokio::test]
async fn presence_lists_members_and_reports_changes() {
    let hub = Hub::new();
    let mut events = hub.presence();
    let alice = hub
        .connect_with(Metadata::new().with_name("alice"))
        .unwrap();
    let bob = hub.connect_with(Metadata::new().with_name("bob")).unwrap();
    hub.join(alice.id(), "rust").unwrap();
    hub.join(bob.id(), "rust").unwrap();
    let names: Vec<_> = hub
        .members("rust")
        .into_iter()
        .map(|(_, m)| m.name().unwrap().to_owned())
        .collect();
    assert_eq!(names, ["alice", "bob"]);
    hub.set_metadata(bob.id(), Metadata::new().with_name("robert"));
    assert_eq!(hub.members("rust")[1].1.name(), Some("robert"));
    let bob_id = bob.id();
    drop(bob);
    assert_eq!(hub.members("rust").len(), 1);

    let mut seen = Vec::new();
    while let Ok(PresenceEvent {
        kind, topic, id, ..
    }) = events.try_recv()
    {
        seen.push((kind, topic, id));
    }
    let (a, b) = (alice.id(), bob_id);
    assert_eq!(
        seen,
        vec![
            (PresenceKind::Joined, Topic::All, a),
            (PresenceKind::Joined, Topic::All, b),
            (PresenceKind::Joined, room("rust"), a),
            (PresenceKind::Joined, room("rust"), b),
            (PresenceKind::Updated, Topic::All, b),
            (PresenceKind::Left, room("rust"), b),
            (PresenceKind::Left, Topic::All, b),
        ]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn member_counts_are_exact_under_concurrent_joins_and_leaves() {
    let hub = Hub::new();
    let mut tasks = Vec::new();
    for t in 0..32 {
        let hub = hub.clone();
        tasks.push(tokio::spawn(async move {
            let conn = hub.connect().unwrap();
            for r in 0..50 {
                hub.join(conn.id(), "busy").unwrap();
                if r % 3 != 0 || t % 2 == 0 {
                    hub.leave(conn.id(), "busy");
                }
            }
            conn
        }));
    }
    let mut kept = Vec::new();
    for task in tasks {
        kept.push(timeout(WAIT, task).await.unwrap().unwrap());
    }
    // Odd tasks ended their last round (49 % 3 == 1: leave) too, so nobody
    // is left... except by the rule: r=48 joined and stayed for odd tasks,
    // then r=49 joined again (no-op) and left.
    assert_eq!(hub.members("busy").len(), 0);
    for conn in &kept[..8] {
        hub.join(conn.id(), "busy").unwrap();
    }
    assert_eq!(hub.members("busy").len(), 8);
    drop(kept);
    assert!(hub.members("busy").is_empty());
    assert!(hub.rooms().is_empty());
    // Even tasks joined and left 50 times; odd ones 33 times (a join while
    // a member is no join); then 8 joined and left by disconnecting.
    let stats = hub.stats();
    assert_eq!((stats.joins, stats.leaves), (1336, 1336));
}

#[tokio::test]
async fn send_to_user_reaches_every_tab() {
    let hub = Hub::new();
    let mut tab1 = hub.connect_with(Metadata::new().with_user("ann")).unwrap();
    let mut tab2 = hub.connect_with(Metadata::new().with_user("ann")).unwrap();
    let mut other = hub.connect_with(Metadata::new().with_user("bo")).unwrap();
    assert_eq!(hub.to_user("ann").broadcast("psst"), 2);
    for tab in [&mut tab1, &mut tab2] {
        assert_eq!(recv(tab).await, Event::Personal(Message::text("psst")));
    }
    assert_eq!(other.try_recv(), Err(TryRecvError::Empty));
    drop(tab1);
    assert_eq!(hub.to_user("ann").broadcast("again"), 1);
    assert_eq!(hub.to_user("nobody").broadcast("x"), 0);
    // Renaming the user moves the connection.
    hub.set_metadata(tab2.id(), Metadata::new().with_user("bo"));
    assert_eq!(hub.to_user("ann").broadcast("x"), 0);
    assert_eq!(hub.to_user("bo").broadcast("both"), 2);
    let _ = other.recv().await;
}

#[tokio::test]
async fn resume_replays_what_was_missed_then_goes_live() {
    let hub = Hub::new();
    let mut first = hub.connect().unwrap();
    hub.join(first.id(), "rust").unwrap();
    for i in 0..10 {
        hub.to("rust").broadcast(format!("m{i}"));
    }
    let mut last = None;
    for i in 0..5 {
        let event = recv(&mut first).await;
        let Event::Broadcast(b) = event else { panic!() };
        assert_eq!(b.offset(), i);
        last = Some(Position {
            epoch: b.epoch(),
            offset: b.offset(),
        });
    }
    drop(first); // the room is empty now, its history kept
    for i in 10..15 {
        hub.to("rust").broadcast(format!("m{i}"));
    }
    let mut again = hub.connect().unwrap();
    let resumed = hub.resume(again.id(), "rust", last.unwrap()).unwrap();
    assert_eq!(resumed, Resume::CaughtUp { replayed: 10 });
    hub.to("rust").broadcast("m15");
    for i in 5..16 {
        assert_eq!(
            next_broadcast(&mut again).await,
            (room("rust"), i, format!("m{i}"))
        );
    }
    assert_eq!(again.try_recv(), Err(TryRecvError::Empty));
    assert_eq!(hub.stats().replayed, 10);
}

#[tokio::test]
async fn resume_from_another_epoch_or_too_far_back_says_resync() {
    let hub = Hub::builder().history(4, 1 << 20).build();
    let conn = hub.connect().unwrap();
    hub.join(conn.id(), "r").unwrap();
    for i in 0..10 {
        hub.to("r").broadcast(format!("m{i}"));
    }
    let epoch = hub.position(&room("r")).unwrap().epoch;

    // Offset 2 was seen; 3..=5 are gone (history keeps 6..=9).
    let mut late = hub.connect().unwrap();
    let resumed = hub
        .resume(late.id(), "r", Position { epoch, offset: 2 })
        .unwrap();
    assert_eq!(
        resumed,
        Resume::Resync {
            missed: Some(3),
            replayed: 4
        }
    );
    assert_eq!(
        recv(&mut late).await,
        Event::Resync {
            topic: room("r"),
            missed: Some(3)
        }
    );
    for i in 6..10 {
        assert_eq!(next_broadcast(&mut late).await.1, i);
    }

    let mut stranger = hub.connect().unwrap();
    let resumed = hub
        .resume(
            stranger.id(),
            "r",
            Position {
                epoch: epoch ^ 1,
                offset: 2,
            },
        )
        .unwrap();
    assert_eq!(
        resumed,
        Resume::Resync {
            missed: None,
            replayed: 4
        }
    );
    assert_eq!(
        recv(&mut stranger).await,
        Event::Resync {
            topic: room("r"),
            missed: None
        }
    );
    assert_eq!(next_broadcast(&mut stranger).await.1, 6);
}

#[tokio::test]
async fn resume_works_for_broadcasts_to_all() {
    let hub = Hub::new();
    let watcher = hub.connect().unwrap();
    for i in 0..3 {
        hub.broadcast(format!("all{i}"));
    }
    let epoch = hub.position(&Topic::All).unwrap().epoch;
    drop(watcher);
    let mut back = hub.connect().unwrap();
    let resumed = hub
        .resume(back.id(), Topic::All, Position { epoch, offset: 0 })
        .unwrap();
    assert_eq!(resumed, Resume::CaughtUp { replayed: 2 });
    hub.broadcast("all3");
    for i in 1..4 {
        assert_eq!(
            next_broadcast(&mut back).await,
            (Topic::All, i, format!("all{i}"))
        );
    }
}

#[tokio::test]
async fn a_lagging_reader_is_repaired_in_place() {
    let hub = Hub::builder().capacity(4).history(100, 1 << 20).build();
    let mut slow = hub.connect().unwrap();
    hub.join(slow.id(), "r").unwrap();
    for i in 0..30 {
        hub.to("r").broadcast(format!("m{i}"));
    }
    for i in 0..30 {
        assert_eq!(
            next_broadcast(&mut slow).await,
            (room("r"), i, format!("m{i}"))
        );
    }
    let stats = hub.stats();
    assert_eq!((stats.missed, stats.resyncs), (0, 0));
    // A room's channel starts with 2 slots: they held the last two.
    assert_eq!(stats.repaired, 28);
    assert!(hub.contains(slow.id()));
}

#[tokio::test]
async fn a_room_channel_grows_while_readers_fall_behind_and_nothing_is_lost() {
    let hub = Hub::new();
    let mut slow = hub.connect().unwrap();
    let mut other = hub.connect().unwrap();
    hub.join(slow.id(), "r").unwrap();
    hub.join(other.id(), "r").unwrap();
    let mut sent = 0;
    let mut read = 0;
    // Each round: a burst the channel cannot hold, one message read (the
    // channel is replaced by a larger one), then more on the new channel
    // before the reader gets to it; in the last round, nothing after.
    for round in 0..6 {
        for _ in 0..40 {
            hub.to("r").broadcast(format!("m{sent}"));
            sent += 1;
        }
        assert_eq!(next_broadcast(&mut slow).await.1, read);
        read += 1;
        if round < 5 {
            for _ in 0..7 {
                hub.to("r").broadcast(format!("m{sent}"));
                sent += 1;
            }
        }
        while read < sent {
            let expected = (room("r"), read, format!("m{read}"));
            assert_eq!(next_broadcast(&mut slow).await, expected);
            read += 1;
        }
        assert_eq!(slow.try_recv(), Err(TryRecvError::Empty));
    }
    for i in 0..sent {
        assert_eq!(next_broadcast(&mut other).await.1, i);
    }
    assert_eq!(other.try_recv(), Err(TryRecvError::Empty));
    let stats = hub.stats();
    assert_eq!((stats.missed, stats.resyncs), (0, 0));
}

#[tokio::test]
async fn a_reader_thousands_behind_is_refilled_in_order_while_the_room_goes_on() {
    // Default sizes: a room's channel is small, history covers the rest.
    let hub = Hub::new();
    let mut slow = hub.connect().unwrap();
    hub.join(slow.id(), "r").unwrap();
    for i in 0..3000 {
        hub.to("r").broadcast(format!("m{i}"));
    }
    for i in 0..1000 {
        assert_eq!(
            next_broadcast(&mut slow).await,
            (room("r"), i, format!("m{i}"))
        );
    }
    // More arrives while the gap is being refilled.
    for i in 3000..3500 {
        hub.to("r").broadcast(format!("m{i}"));
    }
    for i in 1000..3500 {
        assert_eq!(
            next_broadcast(&mut slow).await,
            (room("r"), i, format!("m{i}"))
        );
    }
    assert_eq!(slow.try_recv(), Err(TryRecvError::Empty));
    let stats = hub.stats();
    assert_eq!((stats.missed, stats.resyncs), (0, 0));
    assert!(stats.repaired >= 3000, "{stats:?}");
}

#[tokio::test]
async fn a_resume_thousands_back_replays_everything_in_order() {
    let hub = Hub::new();
    let mut first = hub.connect().unwrap();
    hub.join(first.id(), "r").unwrap();
    for i in 0..2000 {
        hub.to("r").broadcast(format!("m{i}"));
    }
    let Event::Broadcast(b) = recv(&mut first).await else {
        panic!("expected a broadcast")
    };
    drop(first);
    let mut again = hub.connect().unwrap();
    let from = Position {
        epoch: b.epoch(),
        offset: 0,
    };
    let resumed = hub.resume(again.id(), "r", from).unwrap();
    assert_eq!(resumed, Resume::CaughtUp { replayed: 1999 });
    hub.to("r").broadcast("m2000");
    for i in 1..2001 {
        assert_eq!(
            next_broadcast(&mut again).await,
            (room("r"), i, format!("m{i}"))
        );
    }
    assert_eq!(again.try_recv(), Err(TryRecvError::Empty));
    assert_eq!(hub.stats().replayed, 1999);
}

#[tokio::test]
async fn a_gap_beyond_history_is_reported_then_filled_with_what_is_left() {
    let hub = Hub::builder().capacity(4).history(8, 1 << 20).build();
    let mut slow = hub.connect().unwrap();
    for i in 0..20 {
        hub.broadcast(format!("m{i}"));
    }
    // The channel holds 16..=19, history 12..=19: 0..=11 are gone.
    assert_eq!(
        recv(&mut slow).await,
        Event::Resync {
            topic: Topic::All,
            missed: Some(12)
        }
    );
    for i in 12..20 {
        assert_eq!(next_broadcast(&mut slow).await.1, i);
    }
    assert_eq!(hub.stats().missed, 12);
}

#[tokio::test]
async fn history_is_bounded_by_bytes_too() {
    let hub = Hub::builder().history(1000, 10).build();
    let _conn = hub.connect().unwrap();
    for _ in 0..5 {
        hub.broadcast("abcd");
    }
    // 10 bytes hold two 4-byte messages.
    assert_eq!(hub.stats().history_bytes, 8);
    let none = Hub::builder().history(0, 0).build();
    let _conn = none.connect().unwrap();
    none.broadcast("abcd");
    assert_eq!(none.stats().history_bytes, 0);
}

#[tokio::test]
async fn empty_rooms_keep_history_until_evicted() {
    let hub = Hub::builder().idle_rooms(1).build();
    let conn = hub.connect().unwrap();
    hub.join(conn.id(), "a").unwrap();
    hub.to("a").broadcast("kept");
    let epoch_a = hub.position(&room("a")).unwrap().epoch;
    hub.leave(conn.id(), "a");
    assert!(hub.rooms().is_empty());
    assert_eq!(hub.position(&room("a")).unwrap().epoch, epoch_a);
    // A second emptied room pushes the first out: its epoch is gone.
    hub.join(conn.id(), "b").unwrap();
    hub.to("b").broadcast("x");
    hub.leave(conn.id(), "b");
    assert_eq!(hub.position(&room("a")), None);
    hub.join(conn.id(), "a").unwrap();
    assert_ne!(hub.position(&room("a")).unwrap().epoch, epoch_a);
}

#[tokio::test]
async fn skip_policy_reports_lag_per_room() {
    let hub = Hub::builder()
        .capacity(2)
        .slow_consumer(SlowConsumer::Skip)
        .build();
    let mut slow = hub.connect().unwrap();
    hub.join(slow.id(), "r").unwrap();
    for i in 0..5 {
        hub.to("r").broadcast(format!("m{i}"));
    }
    assert_eq!(
        recv(&mut slow).await,
        Event::Lagged {
            topic: room("r"),
            missed: 3
        }
    );
    assert_eq!(next_broadcast(&mut slow).await.1, 3);
}

#[tokio::test]
async fn a_removed_member_gets_room_messages_sent_before_only() {
    let hub = Hub::new();
    let mut conn = hub.connect().unwrap();
    let _other = hub.connect().unwrap();
    hub.join(conn.id(), "r").unwrap();
    hub.to("r").broadcast("before");
    hub.disconnect(conn.id());
    hub.to("r").broadcast("after");
    assert_eq!(next_broadcast(&mut conn).await.2, "before");
    assert_eq!(conn.recv().await, Err(RecvError::Disconnected));
}

#[tokio::test]
async fn history_of_all_rooms_stays_within_the_hub_budget() {
    // Ten rooms of 1 MiB of history each; the hub keeps 4 MiB in all.
    const BUDGET: usize = 4 << 20;
    let hub = Hub::builder()
        .history(1000, 1 << 20)
        .history_budget(BUDGET)
        .build();
    let line = "x".repeat(64 * 1024);
    let member = hub.connect().unwrap();
    for r in 0..10 {
        hub.join(member.id(), format!("r{r}")).unwrap();
        for _ in 0..16 {
            hub.to(format!("r{r}")).broadcast(line.clone());
            assert!(hub.stats().history_bytes <= BUDGET);
        }
    }
    // Trimmed to an eighth under the budget, from the rooms used longest
    // ago: the last three keep everything.
    let held = hub.stats().history_bytes;
    assert!(
        (BUDGET - BUDGET / 8 - line.len()..=BUDGET).contains(&held),
        "{held}"
    );
    let resume = |name: &str| {
        let epoch = hub.position(&room(name)).unwrap().epoch;
        let conn = hub.connect().unwrap();
        hub.resume(conn.id(), name, Position { epoch, offset: 0 })
            .unwrap()
    };
    for name in ["r7", "r8", "r9"] {
        assert_eq!(resume(name), Resume::CaughtUp { replayed: 15 }, "{name}");
    }
    for name in ["r0", "r1", "r2", "r3", "r4", "r5"] {
        assert_eq!(
            resume(name),
            Resume::Resync {
                missed: Some(15),
                replayed: 0
            },
            "{name}"
        );
    }
}

#[tokio::test]
async fn empty_rooms_whose_history_was_trimmed_go() {
    // Each room may keep 4 MiB, all of them together 2 MiB.
    let hub = Hub::builder()
        .history(1000, 4 << 20)
        .history_budget(2 << 20)
        .build();
    let line = "y".repeat(64 * 1024);
    let member = hub.connect().unwrap();
    for name in ["old", "hot"] {
        hub.join(member.id(), name).unwrap();
    }
    for _ in 0..16 {
        hub.to("old").broadcast(line.clone());
    }
    // Emptied, "old" waits among the idle rooms with its history...
    assert!(hub.leave(member.id(), "old"));
    assert!(hub.position(&room("old")).is_some());
    // ...until "hot" needs the room in the budget: then it goes.
    for _ in 0..32 {
        hub.to("hot").broadcast(line.clone());
    }
    assert_eq!(hub.position(&room("old")), None);
    assert!(hub.stats().history_bytes <= 2 << 20);
    assert_eq!(hub.stats().rooms, 1);
}

#[tokio::test]
async fn a_form_is_rendered_once_shared_by_readers_and_replays_and_counted_as_history() {
    use std::sync::atomic::{AtomicUsize, Ordering};

    const SHOUTED: usize = 1;
    let renders = AtomicUsize::new(0);
    let shout = |b: &Broadcast| {
        renders.fetch_add(1, Ordering::SeqCst);
        Some(Message::text(b.message().as_text()?.to_uppercase()))
    };
    async fn broadcast(conn: &mut hub::Connection) -> Broadcast {
        match recv(conn).await {
            Event::Broadcast(broadcast) => broadcast,
            other => panic!("expected a broadcast, got {other:?}"),
        }
    }

    let hub = Hub::builder().history(2, 1 << 20).build();
    let mut a = hub.connect().unwrap();
    let mut b = hub.connect().unwrap();
    hub.join(a.id(), "r").unwrap();
    hub.join(b.id(), "r").unwrap();
    hub.to("r").broadcast("first");
    hub.to("r").broadcast("hello");
    let first = broadcast(&mut a).await;
    broadcast(&mut b).await;
    assert_eq!(hub.stats().history_bytes, 10);
    let (seen_a, seen_b) = (broadcast(&mut a).await, broadcast(&mut b).await);
    let frame_a = seen_a.render(SHOUTED, shout).unwrap();
    let frame_b = seen_b.render(SHOUTED, shout).unwrap();
    assert_eq!(frame_a, Message::text("HELLO"));
    assert_eq!(frame_a.as_bytes().as_ptr(), frame_b.as_bytes().as_ptr());
    assert_eq!(renders.load(Ordering::SeqCst), 1);
    // The form is kept with the message: history counts it.
    assert_eq!(hub.stats().history_bytes, 15);
    // Another form is another rendering; out of range, nothing is kept.
    seen_a.render(0, shout);
    seen_a.render(Broadcast::FORMS, shout);
    seen_b.render(Broadcast::FORMS, shout);
    assert_eq!(renders.load(Ordering::SeqCst), 4);
    assert_eq!(hub.stats().history_bytes, 20);
    drop((seen_a, seen_b));
    // Replayed from history: the same form, not rendered again.
    let mut late = hub.connect().unwrap();
    let from = Position {
        epoch: first.epoch(),
        offset: first.offset(),
    };
    hub.resume(late.id(), "r", from).unwrap();
    let replayed = broadcast(&mut late).await;
    let frame = replayed.render(SHOUTED, shout).unwrap();
    assert_eq!(frame.as_bytes().as_ptr(), frame_a.as_bytes().as_ptr());
    assert_eq!(renders.load(Ordering::SeqCst), 4);
    drop((replayed, late));
    // Out of history and read by every member: no longer counted.
    hub.to("r").broadcast("x");
    hub.to("r").broadcast("y");
    for conn in [&mut a, &mut b] {
        broadcast(conn).await;
        broadcast(conn).await;
    }
    assert_eq!(hub.stats().history_bytes, 2);
}

#[tokio::test]
async fn under_skip_and_disconnect_a_room_reader_may_fall_capacity_behind() {
    for policy in [SlowConsumer::Skip, SlowConsumer::Disconnect] {
        let hub = Hub::builder().capacity(64).slow_consumer(policy).build();
        let mut reader = hub.connect().unwrap();
        hub.join(reader.id(), "r").unwrap();
        for i in 0..64 {
            hub.to("r").broadcast(format!("m{i}"));
        }
        // The policy acts past the capacity, not past a small window.
        for i in 0..64 {
            assert_eq!(next_broadcast(&mut reader).await.1, i, "{policy:?}");
        }
        let stats = hub.stats();
        assert_eq!((stats.lagged, stats.missed), (0, 0), "{policy:?}");
    }
}
