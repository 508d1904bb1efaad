//! Addressing a broadcast: rooms, users and skipped connections, in one
//! chain.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use hub::{Connection, Event, Hub, Message, Metadata, Topic, TryRecvError};
use tokio::time::timeout;

const WAIT: Duration = Duration::from_secs(5);

async fn next(conn: &mut Connection) -> Event {
    timeout(WAIT, conn.recv())
        .await
        .expect("timed out")
        .unwrap()
}

fn quiet(conns: &mut [&mut Connection]) {
    for conn in conns {
        assert_eq!(conn.try_recv(), Err(TryRecvError::Empty), "{}", conn.id());
    }
}

async fn broadcast_text(conn: &mut Connection) -> (Topic, String) {
    match next(conn).await {
        Event::Broadcast(broadcast) => (
            broadcast.topic().clone(),
            broadcast.message().as_text().unwrap().to_owned(),
        ),
        other => panic!("expected a broadcast, got {other:?}"),
    }
}

#[tokio::test]
async fn several_connections_are_skipped_in_a_room_and_everywhere() {
    let hub = Hub::new();
    let [mut a, mut b, mut c, mut d] = [(); 4].map(|()| hub.connect().unwrap());
    for conn in [&a, &b, &c, &d] {
        hub.join(conn.id(), "r").unwrap();
    }
    let room = Topic::Room("r".into());

    let reached = hub.to("r").except(a.id()).except(b.id()).broadcast("x");
    assert_eq!(reached, 2);
    assert_eq!(broadcast_text(&mut c).await, (room.clone(), "x".into()));
    assert_eq!(broadcast_text(&mut d).await, (room, "x".into()));
    quiet(&mut [&mut a, &mut b, &mut c, &mut d]);

    // The same id twice, and one that never was, change nothing.
    let nobody = hub::ConnId::from_raw(u64::MAX).unwrap();
    let reached = (hub
        .except(a.id())
        .except(c.id())
        .except(c.id())
        .except(nobody))
    .broadcast("y");
    assert_eq!(reached, 2);
    assert_eq!(broadcast_text(&mut b).await, (Topic::All, "y".into()));
    assert_eq!(broadcast_text(&mut d).await, (Topic::All, "y".into()));
    quiet(&mut [&mut a, &mut b, &mut c, &mut d]);
    assert_eq!(hub.stats().deliveries, 4);
}

#[tokio::test]
async fn rooms_and_users_each_deliver_once() {
    let hub = Hub::new();
    let ann = Metadata::new().with_user("ann");
    let mut tab1 = hub.connect_with(ann.clone()).unwrap();
    let mut tab2 = hub.connect_with(ann).unwrap();
    let mut bob = hub.connect().unwrap();
    let mut cy = hub.connect().unwrap();
    hub.join(tab1.id(), "r").unwrap();
    hub.join(bob.id(), "r").unwrap();
    hub.join(cy.id(), "s").unwrap();

    let reached = (hub.to("r").to("s").to("r").to_user("ann").to_user("ann"))
        .except(bob.id())
        .broadcast("z");
    // r: tab1; s: cy; ann: tab1 and tab2.
    assert_eq!(reached, 4);
    // Personal and room queues are separate: either may come first.
    let mut twice = [next(&mut tab1).await, next(&mut tab1).await].map(|e| match e {
        Event::Personal(message) => format!("personal {message:?}"),
        Event::Broadcast(b) => format!("{} {:?}", b.topic(), b.message()),
        other => panic!("unexpected {other:?}"),
    });
    twice.sort();
    assert_eq!(twice, [r#"personal Text("z")"#, r#"room r Text("z")"#]);
    assert_eq!(next(&mut tab2).await, Event::Personal(Message::text("z")));
    assert_eq!(broadcast_text(&mut cy).await.1, "z");
    quiet(&mut [&mut tab1, &mut tab2, &mut bob, &mut cy]);

    // A user's other tabs.
    assert_eq!(hub.to_user("ann").except(tab2.id()).broadcast("w"), 1);
    assert_eq!(next(&mut tab1).await, Event::Personal(Message::text("w")));
    assert_eq!(hub.to_user("nobody").broadcast("v"), 0);
    quiet(&mut [&mut tab1, &mut tab2, &mut bob, &mut cy]);
}

#[tokio::test]
#[allow(deprecated)]
async fn the_old_methods_still_address_the_same() {
    let hub = Hub::new();
    let mut a = hub.connect_with(Metadata::new().with_user("u")).unwrap();
    let mut b = hub.connect().unwrap();
    hub.join(a.id(), "r").unwrap();
    hub.join(b.id(), "r").unwrap();
    assert_eq!(hub.broadcast_room("r", "1"), 2);
    assert_eq!(hub.broadcast_room_except("r", a.id(), "2"), 1);
    assert_eq!(hub.broadcast_except(b.id(), "3"), 1);
    assert_eq!(hub.broadcast_rooms(&["r", "r"], "4"), 2);
    assert_eq!(hub.broadcast_rooms::<&str>(&[], "never"), 0);
    assert_eq!(hub.send_to_user("u", "5"), 1);
    assert_eq!(next(&mut a).await, Event::Personal(Message::text("5")));
    // Each topic keeps its order; two topics interleave as they may.
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(broadcast_text(&mut a).await);
    }
    got.sort();
    let room = Topic::Room("r".into());
    let expected = [(Topic::All, "3"), (room.clone(), "1"), (room, "4")];
    assert_eq!(got, expected.map(|(topic, text)| (topic, text.to_owned())));
    for expected in ["1", "2", "4"] {
        assert_eq!(broadcast_text(&mut b).await.1, expected);
    }
    quiet(&mut [&mut a, &mut b]);
}
