//! The reading side of the link, with no Redis in it: what this node
//! follows and how far it has read, and delivering what every node wrote
//! to this node's hub, in order, once each. The link hands it the entries
//! it reads; tests hand it entries of their own.

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use hub::{ConnId, Message, Position, PresenceEvent, PresenceKind, Publication, Remote, Topic};

use crate::presence::{self, Member};
use crate::wire::{self, Entry, Keys, MISSED};
use crate::Shared;

/// How far this node has read a topic's stream.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Cursor {
    pub(crate) epoch: u64,
    pub(crate) next: u64,
}

pub(crate) struct Follow {
    pub(crate) remote: Option<Remote>,
    keys: Keys,
    shared: Arc<Shared>,
    node: u32,
    /// The topics this node keeps; `None` until placed.
    pub(crate) watched: HashMap<Topic, Option<Cursor>>,
    /// The streams of this node's own (its inbox, its bells, the user and
    /// presence streams), by key.
    own: HashMap<Vec<u8>, Own>,
    /// Where this node reads them: the id of the last entry read, by key.
    /// Empty until [`start`](Self::start).
    positions: HashMap<Vec<u8>, (u64, u64)>,
    /// Nodes whose members to read again (they wrote them anew).
    pub(crate) reload: Vec<u32>,
}

/// What a stream of [`Follow::own`] carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Own {
    Inbox,
    Users,
    Presence,
    /// Nothing: an entry wakes the reader.
    Bell,
}

impl Follow {
    pub(crate) fn new(keys: Keys, shared: Arc<Shared>, node: u32) -> Self {
        let mut watched = HashMap::new();
        watched.insert(Topic::All, None);
        let mut own = HashMap::new();
        own.insert(keys.inbox(node).into_bytes(), Own::Inbox);
        for partition in 0..keys.partitions() {
            own.insert(keys.users(partition).into_bytes(), Own::Users);
            own.insert(keys.presence(partition).into_bytes(), Own::Presence);
            own.insert(keys.bell(partition, node).into_bytes(), Own::Bell);
        }
        Self {
            remote: None,
            keys,
            shared,
            node,
            watched,
            own,
            positions: HashMap::new(),
            reload: Vec::new(),
        }
    }

    /// Whether [`start`](Self::start) was called.
    pub(crate) fn started(&self) -> bool {
        !self.positions.is_empty()
    }

    /// Starts reading this node's own streams at `ms`, Redis's time now:
    /// all of its inbox (node numbers are never reused), and of the others
    /// what is stored from this millisecond on (stream ids name the
    /// millisecond they were stored in).
    pub(crate) fn start(&mut self, ms: u64) {
        for (key, own) in &self.own {
            let position = match own {
                Own::Inbox => (0, 0),
                _ => (ms.saturating_sub(1), u64::MAX),
            };
            self.positions.insert(key.clone(), position);
        }
    }

    /// Where to read one of this node's own streams from (its last id).
    pub(crate) fn position(&self, key: &[u8]) -> (u64, u64) {
        self.positions.get(key).copied().unwrap_or_default()
    }

    /// The topics whose streams to read, and from where.
    pub(crate) fn following(&self) -> Vec<(Topic, Cursor)> {
        let Some(remote) = &self.remote else {
            return Vec::new();
        };
        (self.watched.iter())
            .filter(|(topic, _)| remote.is_following(topic))
            .filter_map(|(topic, cursor)| cursor.map(|c| (topic.clone(), c)))
            .collect()
    }

    /// A publication taken but not written: a broadcast is delivered here
    /// alone (and reported to the other nodes once Redis is back); personal
    /// and user messages for other nodes are lost, and counted.
    pub(crate) fn give_back(&self, publication: Publication) {
        match publication {
            Publication::Broadcast {
                topic,
                message,
                except,
            } => {
                self.shared.fork(&topic);
                if let Some(remote) = &self.remote {
                    remote.deliver_here(&topic, message, except);
                }
            }
            other => {
                tracing::warn!(publication = ?other, "Redis lost before a message for another node was written; dropped");
                self.shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    pub(crate) fn announce(&self, events: Vec<PresenceEvent>) {
        if let Some(remote) = &self.remote {
            for event in events {
                remote.announce(event);
            }
        }
    }

    /// Delivers what an `XREAD` brought, stream by stream.
    pub(crate) fn take_in(&mut self, streams: Vec<(Vec<u8>, Vec<Entry>)>) {
        for (key, entries) in streams {
            if let Some(own) = self.own.get(&key).copied() {
                if let Some(last) = entries.last() {
                    self.positions.insert(key, last.id);
                }
                for entry in entries {
                    match own {
                        Own::Inbox => self.personal(entry),
                        Own::Users => self.user(entry),
                        Own::Presence => self.presence_change(entry),
                        Own::Bell => {}
                    }
                }
            } else if let Some(topic) = self.keys.stream_topic(&key) {
                for entry in entries {
                    self.broadcast(&topic, entry);
                }
            }
        }
    }

    fn personal(&self, mut entry: Entry) {
        let (Some(remote), Some(to)) = (&self.remote, entry.number("c").and_then(ConnId::from_raw))
        else {
            return;
        };
        let Some(message) = take_message(&mut entry) else {
            return;
        };
        if let Err(error) = remote.send_personal(to, message) {
            tracing::debug!(%error, "a personal message from another node was not queued");
            self.shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn user(&self, mut entry: Entry) {
        let Some(remote) = &self.remote else { return };
        if entry.number("n") == Some(u64::from(self.node)) {
            return;
        }
        let Some(user) = entry.take("u").and_then(|u| String::from_utf8(u).ok()) else {
            return;
        };
        // A removal: its code, and its reason.
        if let Some(code) = entry.number("d").and_then(|code| u16::try_from(code).ok()) {
            let reason = entry.take("r").unwrap_or_default();
            let reason: Arc<str> = Arc::from(String::from_utf8_lossy(&reason));
            remote.disconnect_user(&user, code, &reason);
            return;
        }
        let except = entry.except();
        if let Some(message) = take_message(&mut entry) {
            remote.send_to_user(&user, message, &except);
        }
    }

    /// Another node's join, leave, change, heartbeat or new list.
    fn presence_change(&mut self, mut entry: Entry) {
        let Some(node) = entry.number("n").and_then(|n| u32::try_from(n).ok()) else {
            return;
        };
        if node == self.node {
            return;
        }
        let kind = match entry.field("k") {
            Some(b"j") => PresenceKind::Joined,
            Some(b"l") => PresenceKind::Left,
            Some(b"u") => PresenceKind::Updated,
            Some(b"s") => {
                self.reload.push(node);
                return;
            }
            _ => {
                self.shared.roster().heard(node);
                return;
            }
        };
        let field = entry.take("f").and_then(|f| String::from_utf8(f).ok());
        let member = entry.take("a").and_then(|a| String::from_utf8(a).ok());
        let Some((topic, id)) = field.as_deref().and_then(presence::parse_field) else {
            return;
        };
        let member = member
            .as_deref()
            .and_then(Member::decode)
            .unwrap_or_default();
        let event = self.shared.roster().apply(node, kind, topic, id, member);
        self.announce(event.into_iter().collect());
    }

    fn broadcast(&mut self, topic: &Topic, mut entry: Entry) {
        let Some(remote) = self.remote.clone() else {
            return;
        };
        let Some(Some(cursor)) = self.watched.get_mut(topic) else {
            return;
        };
        let (Some(offset), Some(epoch)) = (entry.offset(), entry.number("e")) else {
            // Not ours to read, but never to be read again either.
            tracing::warn!(%topic, id = ?entry.id, "skipped a malformed entry");
            if entry.id.0 == 0 {
                cursor.next = cursor.next.max(entry.id.1);
            }
            return;
        };
        if epoch != cursor.epoch {
            // The topic started over in Redis (its keys expired, say): place
            // it again; the cursor, kept, says it is news from its start.
            tracing::info!(%topic, "topic restarted in Redis; placing it again");
            self.shared.refork(topic);
            return;
        }
        if !remote.is_following(topic) {
            // Forked since the read began: read again once placed.
            return;
        }
        cursor.next = cursor.next.max(offset + 1);
        self.shared
            .counters
            .delivered
            .fetch_add(1, Ordering::Relaxed);
        let position = Position { epoch, offset };
        if entry.field("k") == Some(MISSED.as_bytes()) {
            // Offsets a failover skipped (field `f`) hold nothing: the
            // hub tells each connection the gap it sees, as for any
            // offsets its history lacks.
            let missed =
                if entry.field("f").is_some() || entry.number("n") == Some(u64::from(self.node)) {
                    0
                } else {
                    entry.number("m").unwrap_or(0)
                };
            if missed > 0 {
                self.shared.counters.resyncs.fetch_add(1, Ordering::Relaxed);
            }
            remote.deliver_missed(topic, position, missed);
            return;
        }
        let except = entry.except();
        if let Some(message) = take_message(&mut entry) {
            remote.deliver(topic, position, message, except);
        } else {
            self.shared.counters.resyncs.fetch_add(1, Ordering::Relaxed);
            remote.deliver_missed(topic, position, 1);
        }
    }

    /// Places `topic` again if Redis numbers it in another epoch than the
    /// one this node follows.
    pub(crate) fn check_epoch(&mut self, topic: &Topic, epoch: u64) {
        if let Some(Some(cursor)) = self.watched.get(topic) {
            if cursor.epoch != epoch {
                tracing::info!(%topic, "topic started over in Redis; placing it again");
                self.shared.refork(topic);
            }
        }
    }

    /// Follows `topic` from where Redis says it stands: from this node's
    /// cursor if it follows the same epoch, from the start of a new epoch,
    /// or, for a topic new here, from the next message, with the stream's
    /// latest entries before that as history. (What this node publishes
    /// after asking is numbered after that: its members get every message
    /// that follows anything they were seen to do.)
    pub(crate) fn place(&mut self, topic: Topic, placed: wire::Placed) {
        let wire::Placed { epoch, next, tail } = placed;
        let Some(remote) = self.remote.clone() else {
            return;
        };
        let Some(slot) = self.watched.get_mut(&topic) else {
            // Unwatched meanwhile.
            return;
        };
        let following = remote.is_following(&topic);
        let start = match *slot {
            Some(cursor) if cursor.epoch == epoch => {
                if following {
                    return;
                }
                cursor.next
            }
            // The topic started over while this node followed it (Redis
            // lost it, or it expired): everything in the new epoch is news,
            // and its members resync.
            Some(_) => {
                self.shared.counters.resyncs.fetch_add(1, Ordering::Relaxed);
                0
            }
            None => next,
        };
        *slot = Some(Cursor { epoch, next: start });
        let backfill = tail.into_iter().filter_map(|mut entry| {
            let offset = entry.offset()?;
            let except = entry.except();
            (offset < start && entry.number("e") == Some(epoch)).then_some(())?;
            Some((offset, take_message(&mut entry)?, except))
        });
        remote.rebase(
            &topic,
            Position {
                epoch,
                offset: start,
            },
            backfill,
        );
    }
}

/// The message of an entry, from its kind and payload fields.
fn take_message(entry: &mut Entry) -> Option<Message> {
    let kind = entry.take("k")?;
    let payload = entry.take("m")?;
    wire::decode(&kind, payload)
}

#[cfg(test)]
mod tests {
    //! The reading side against a real hub, with entries written by hand
    //! instead of read from Redis.

    use std::sync::Mutex;

    use hub::{Backplane, Event, Hub, Metadata, TryRecvError};
    use tokio::sync::mpsc::UnboundedReceiver;

    use super::*;
    use crate::link::Command;

    /// A backplane that only hands over the hub's [`Remote`].
    #[derive(Debug, Default)]
    struct Stub(Mutex<Option<Remote>>);

    impl Backplane for Stub {
        fn node(&self) -> u32 {
            1
        }
        fn start(&self, remote: Remote) {
            *self.0.lock().unwrap() = Some(remote);
        }
        fn publish(&self, publication: Publication) -> Result<(), Publication> {
            Err(publication)
        }
        fn watch(&self, _: &Topic) {}
        fn unwatch(&self, _: &Topic) {}
    }

    struct Harness {
        hub: Hub,
        follow: Follow,
        keys: Keys,
        commands: UnboundedReceiver<Command>,
    }

    /// A hub of node 1, and its reading side with room `r` placed at
    /// epoch 7, offset 0.
    fn harness() -> Harness {
        let stub = Arc::new(Stub::default());
        let hub = Hub::builder().backplane(Arc::clone(&stub) as _).build();
        let (shared, _, commands) = Shared::new(1 << 20);
        let keys = Keys::new("t", 16);
        let mut follow = Follow::new(keys.clone(), shared, 1);
        follow.remote = stub.0.lock().unwrap().take();
        follow.watched.insert(room(), None);
        Harness {
            hub,
            follow,
            keys,
            commands,
        }
    }

    impl Harness {
        fn place(&mut self) {
            let placed = wire::Placed {
                epoch: 7,
                next: 0,
                tail: Vec::new(),
            };
            self.follow.place(room(), placed);
        }

        fn take_in(&mut self, stream: String, entries: Vec<Entry>) {
            self.follow.take_in(vec![(stream.into_bytes(), entries)]);
        }

        fn room_stream(&self) -> String {
            self.keys.stream(&room())
        }
    }

    fn room() -> Topic {
        Topic::Room("r".into())
    }

    /// A room entry at `offset` of `epoch`.
    fn line(epoch: u64, offset: u64, fields: &[(&str, &[u8])]) -> Entry {
        let epoch = epoch.to_string();
        let mut all = vec![("e", epoch.as_bytes())];
        all.extend_from_slice(fields);
        Entry::new((0, offset + 1), &all)
    }

    fn text(epoch: u64, offset: u64, text: &str) -> Entry {
        line(epoch, offset, &[("k", b"t"), ("m", text.as_bytes())])
    }

    fn broadcast(event: Result<Event, TryRecvError>) -> (u64, String) {
        match event {
            Ok(Event::Broadcast(b)) => (b.offset(), b.message().as_text().unwrap().to_owned()),
            other => panic!("expected a broadcast, got {other:?}"),
        }
    }

    #[test]
    fn lines_are_delivered_once_each_in_order() {
        let mut h = harness();
        let mut member = h.hub.connect().unwrap();
        h.hub.join(member.id(), "r").unwrap();
        h.place();
        let stream = h.room_stream();
        let entries = vec![
            text(7, 0, "a"),
            text(7, 1, "b"),
            text(7, 1, "b again"),
            text(7, 2, "c"),
        ];
        h.take_in(stream, entries);
        for expected in [(0, "a"), (1, "b"), (2, "c")] {
            let got = broadcast(member.try_recv());
            assert_eq!((got.0, got.1.as_str()), expected);
        }
        assert_eq!(member.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(h.follow.watched[&room()].map(|c| c.next), Some(3));
    }

    #[test]
    fn notices_tell_what_another_node_lost_and_nothing_of_ours() {
        let mut h = harness();
        let mut member = h.hub.connect().unwrap();
        h.hub.join(member.id(), "r").unwrap();
        h.place();
        let stream = h.room_stream();
        let theirs = line(7, 0, &[("k", MISSED.as_bytes()), ("n", b"2"), ("m", b"5")]);
        let ours = line(7, 1, &[("k", MISSED.as_bytes()), ("n", b"1"), ("m", b"9")]);
        h.take_in(stream, vec![theirs, ours, text(7, 2, "after")]);
        match member.try_recv() {
            Ok(Event::Resync { topic, missed }) => assert_eq!((topic, missed), (room(), Some(5))),
            other => panic!("expected a resync, got {other:?}"),
        }
        assert_eq!(broadcast(member.try_recv()), (2, "after".to_owned()));
        assert_eq!(member.try_recv(), Err(TryRecvError::Empty));
    }

    #[test]
    fn offsets_a_failover_skipped_are_told_once_where_they_are() {
        let mut h = harness();
        let mut member = h.hub.connect().unwrap();
        h.hub.join(member.id(), "r").unwrap();
        h.place();
        let stream = h.room_stream();
        // The new master lacked the lines from offset 1 on; this node had
        // delivered offset 1 already. The notice sits at 1 + 100.
        let skipped = line(
            7,
            101,
            &[
                ("k", MISSED.as_bytes()),
                ("n", b"0"),
                ("m", b"100"),
                ("f", b"1"),
            ],
        );
        let entries = vec![text(7, 0, "a"), text(7, 1, "b"), skipped, text(7, 102, "c")];
        h.take_in(stream, entries);
        assert_eq!(broadcast(member.try_recv()), (0, "a".to_owned()));
        assert_eq!(broadcast(member.try_recv()), (1, "b".to_owned()));
        match member.try_recv() {
            // Offsets 2 to 100.
            Ok(Event::Resync { missed, .. }) => assert_eq!(missed, Some(99)),
            other => panic!("expected a resync, got {other:?}"),
        }
        assert_eq!(broadcast(member.try_recv()), (102, "c".to_owned()));
        assert_eq!(member.try_recv(), Err(TryRecvError::Empty));
    }

    #[test]
    fn a_client_resuming_ahead_of_this_node_gets_what_follows_once() {
        let mut h = harness();
        let member = h.hub.connect().unwrap();
        h.hub.join(member.id(), "r").unwrap();
        h.place();
        let stream = h.room_stream();
        h.take_in(stream.clone(), vec![text(7, 0, "a"), text(7, 1, "b")]);
        // It saw up to offset 3 on a node that had read further.
        let mut back = h.hub.connect().unwrap();
        let ahead = hub::Position {
            epoch: 7,
            offset: 3,
        };
        h.hub.resume(back.id(), "r", ahead).unwrap();
        let rest = vec![text(7, 2, "c"), text(7, 3, "d"), text(7, 4, "e")];
        h.take_in(stream, rest);
        assert_eq!(broadcast(back.try_recv()), (4, "e".to_owned()));
        assert_eq!(back.try_recv(), Err(TryRecvError::Empty));
    }

    #[test]
    fn a_line_of_another_epoch_places_the_topic_again() {
        let mut h = harness();
        let mut member = h.hub.connect().unwrap();
        h.hub.join(member.id(), "r").unwrap();
        h.place();
        let stream = h.room_stream();
        h.take_in(stream, vec![text(8, 0, "elsewhere")]);
        assert_eq!(member.try_recv(), Err(TryRecvError::Empty));
        match h.commands.try_recv() {
            Ok(Command::Refork(topic)) => assert_eq!(topic, room()),
            other => panic!("expected a refork, got {other:?}"),
        }
    }

    #[test]
    fn a_malformed_line_is_skipped_and_never_read_again() {
        let mut h = harness();
        let mut member = h.hub.connect().unwrap();
        h.hub.join(member.id(), "r").unwrap();
        h.place();
        let stream = h.room_stream();
        let no_epoch = Entry::new((0, 1), &[("k", b"t"), ("m", b"x")]);
        let bad_kind = line(7, 1, &[("k", b"?"), ("m", b"x")]);
        h.take_in(stream, vec![no_epoch, bad_kind, text(7, 2, "fine")]);
        // Each is a gap of one, told as such: the line without an epoch
        // never reaches the hub, the unreadable one arrives as a notice.
        for _ in 0..2 {
            match member.try_recv() {
                Ok(Event::Resync { missed, .. }) => assert_eq!(missed, Some(1)),
                other => panic!("expected a resync, got {other:?}"),
            }
        }
        assert_eq!(broadcast(member.try_recv()), (2, "fine".to_owned()));
        assert_eq!(h.follow.watched[&room()].map(|c| c.next), Some(3));
    }

    #[test]
    fn user_lines_skip_this_nodes_own_and_the_connections_excepted() {
        let mut h = harness();
        let ann = Metadata::new().with_user("ann");
        let mut tab1 = h.hub.connect_with(ann.clone()).unwrap();
        let mut tab2 = h.hub.connect_with(ann).unwrap();
        let skipped = tab2.id().get().to_string();
        let from_node_2 = Entry::new(
            (5, 0),
            &[
                ("u", b"ann"),
                ("n", b"2"),
                ("x", skipped.as_bytes()),
                ("k", b"t"),
                ("m", b"hi"),
            ],
        );
        let ours = Entry::new(
            (5, 1),
            &[("u", b"ann"), ("n", b"1"), ("k", b"t"), ("m", b"echo")],
        );
        let users = h.keys.users(h.keys.user_partition("ann"));
        h.follow.start(4);
        h.take_in(users.clone(), vec![from_node_2, ours]);
        assert_eq!(tab1.try_recv(), Ok(Event::Personal(Message::text("hi"))));
        assert_eq!(tab1.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(tab2.try_recv(), Err(TryRecvError::Empty));
        assert_eq!(h.follow.position(users.as_bytes()), (5, 1));
    }
}
