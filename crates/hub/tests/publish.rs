//! `Hub::publish`: a message numbered in a room, with or without members
//! on this node, and its position told to the publisher.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;

use hub::{
    Backplane, Builder, Event, Hub, Position, Publication, PublishError, Remote, Resume, Topic,
};

#[tokio::test]
async fn a_room_with_no_member_keeps_what_is_published_to_it() {
    let hub = Hub::new();
    let first = hub.publish("news", "one").await.unwrap();
    let second = hub.publish("news", "two").await.unwrap();
    assert_eq!(
        second,
        Position {
            offset: first.offset + 1,
            ..first
        }
    );

    // Whoever joins later and resumes after the first line gets the rest.
    let mut reader = hub.connect().unwrap();
    let resumed = hub.resume(reader.id(), "news", first).unwrap();
    assert_eq!(resumed, Resume::CaughtUp { replayed: 1 });
    match reader.recv().await.unwrap() {
        Event::Broadcast(line) => {
            assert_eq!(line.message().as_text(), Some("two"));
            assert_eq!((line.epoch(), line.offset()), (second.epoch, second.offset));
            assert_eq!(*line.topic(), Topic::Room("news".into()));
        }
        other => panic!("unexpected {other:?}"),
    }

    // A member receives it live, at the position the publisher is told.
    let third = hub.publish("news", "three").await.unwrap();
    match reader.recv().await.unwrap() {
        Event::Broadcast(line) => assert_eq!(line.offset(), third.offset),
        other => panic!("unexpected {other:?}"),
    }
    assert_eq!(third.offset, second.offset + 1);
}

#[tokio::test]
async fn without_history_nothing_is_kept_and_a_shut_hub_refuses() {
    let hub = Hub::builder().idle_rooms(0).build();
    hub.publish("void", "nobody hears").await.unwrap();
    assert!(hub.rooms().is_empty(), "no room kept for nothing");

    hub.shutdown();
    assert_eq!(
        hub.publish("news", "too late").await,
        Err(PublishError::Shutdown)
    );
}

/// A backplane that takes everything and never says where it went.
#[derive(Debug)]
struct Silent;

impl Backplane for Silent {
    fn node(&self) -> u32 {
        1
    }

    fn start(&self, _remote: Remote) {}

    fn publish(&self, _publication: Publication) -> Result<(), Publication> {
        Ok(())
    }

    fn watch(&self, _topic: &Topic) {}

    fn unwatch(&self, _topic: &Topic) {}
}

/// A backplane that is out of reach.
#[derive(Debug)]
struct Away;

impl Backplane for Away {
    fn node(&self) -> u32 {
        1
    }

    fn start(&self, _remote: Remote) {}

    fn publish(&self, publication: Publication) -> Result<(), Publication> {
        Err(publication)
    }

    fn watch(&self, _topic: &Topic) {}

    fn unwatch(&self, _topic: &Topic) {}
}

#[tokio::test]
async fn a_backplane_that_does_not_report_leaves_the_publisher_unplaced() {
    let hub = Builder::default().backplane(Arc::new(Silent)).build();
    assert_eq!(
        hub.publish("news", "somewhere").await,
        Err(PublishError::Unplaced)
    );

    // Out of reach: published on this node if the room has a member here.
    let hub = Builder::default().backplane(Arc::new(Away)).build();
    assert_eq!(
        hub.publish("news", "nowhere").await,
        Err(PublishError::Unreachable)
    );
    let mut member = hub.connect().unwrap();
    hub.join(member.id(), "news").unwrap();
    let placed = hub.publish("news", "here").await.unwrap();
    match member.recv().await.unwrap() {
        Event::Broadcast(line) => {
            assert_eq!(line.message().as_text(), Some("here"));
            assert_eq!((line.epoch(), line.offset()), (placed.epoch, placed.offset));
        }
        other => panic!("unexpected {other:?}"),
    }
}
