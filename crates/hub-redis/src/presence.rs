//! Who is in which room on the other nodes.
//!
//! Each node keeps its room members in a hash `{prefix}:members:{node}`
//! (field: topic and connection id; value: name and user), which lives
//! [`Builder::presence_ttl`](crate::Builder::presence_ttl) past the node's
//! last heartbeat, and writes each join, leave and change, and a
//! heartbeat every third of that time, to the stream `{prefix}:presence`.
//! Each heartbeat also keeps the node for the time to live in the sorted
//! set `{prefix}:live`, through which a node (re)starting finds the others'
//! hashes by name, with no key scan. Every node keeps a roster of the
//! others from that stream; a node not heard from for the time to live is
//! dropped from it, and its members announced as gone.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use hub::{ConnId, Metadata, PresenceEvent, PresenceKind, Topic};
use tokio::time::Instant;

/// Separates the parts of a field or value.
const SEPARATOR: char = '\u{1f}';

/// A member's name and user, the part of its metadata other nodes see.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub(crate) struct Member {
    pub(crate) name: Option<Arc<str>>,
    pub(crate) user: Option<Arc<str>>,
}

impl Member {
    pub(crate) fn of(metadata: &Metadata) -> Self {
        Self {
            name: metadata.name().map(Arc::from),
            user: metadata.user().map(Arc::from),
        }
    }

    fn metadata(&self) -> Metadata {
        let mut metadata = Metadata::new();
        if let Some(name) = &self.name {
            metadata = metadata.with_name(Arc::clone(name));
        }
        if let Some(user) = &self.user {
            metadata = metadata.with_user(Arc::clone(user));
        }
        metadata
    }

    /// The name, then the user, each as `{length}:{text}` or `-`.
    pub(crate) fn encode(&self) -> String {
        let part = |value: &Option<Arc<str>>| match value {
            Some(value) => format!("{}:{value}", value.len()),
            None => "-".to_owned(),
        };
        format!("{}{}", part(&self.name), part(&self.user))
    }

    pub(crate) fn decode(text: &str) -> Option<Self> {
        fn part(text: &str) -> Option<(Option<Arc<str>>, &str)> {
            if let Some(rest) = text.strip_prefix('-') {
                return Some((None, rest));
            }
            let (length, rest) = text.split_once(':')?;
            let length: usize = length.parse().ok()?;
            let value = rest.get(..length)?;
            Some((Some(Arc::from(value)), &rest[length..]))
        }
        let (name, rest) = part(text)?;
        let (user, rest) = part(rest)?;
        rest.is_empty().then_some(Self { name, user })
    }
}

/// A room and a connection, as a hash field.
pub(crate) fn field(room: &str, id: ConnId) -> String {
    format!("{room}{SEPARATOR}{}", id.get())
}

pub(crate) fn parse_field(field: &str) -> Option<(Topic, ConnId)> {
    let (room, id) = field.rsplit_once(SEPARATOR)?;
    let id = ConnId::from_raw(id.parse().ok()?)?;
    Some((Topic::Room(room.into()), id))
}

/// What this node knows of the others' rooms.
#[derive(Debug, Default)]
pub(crate) struct Roster {
    nodes: HashMap<u32, Node>,
}

#[derive(Debug)]
struct Node {
    heard: Instant,
    members: HashMap<(Topic, ConnId), Member>,
}

impl Roster {
    /// Node `node` was heard from.
    pub(crate) fn heard(&mut self, node: u32) {
        let now = Instant::now();
        self.nodes
            .entry(node)
            .and_modify(|n| n.heard = now)
            .or_insert_with(|| Node {
                heard: now,
                members: HashMap::new(),
            });
    }

    /// Records a change; returns the event to announce, if it changed
    /// anything.
    pub(crate) fn apply(
        &mut self,
        node: u32,
        kind: PresenceKind,
        topic: Topic,
        id: ConnId,
        member: Member,
    ) -> Option<PresenceEvent> {
        self.heard(node);
        let members = &mut self.nodes.get_mut(&node)?.members;
        let key = (topic.clone(), id);
        let changed = match kind {
            PresenceKind::Left => members.remove(&key).is_some(),
            _ => members.insert(key, member.clone()).as_ref() != Some(&member),
        };
        changed.then(|| event(kind, topic, id, &member))
    }

    /// Replaces what is known of `node`; returns the events that tell the
    /// difference.
    pub(crate) fn replace(
        &mut self,
        node: u32,
        members: HashMap<(Topic, ConnId), Member>,
    ) -> Vec<PresenceEvent> {
        self.heard(node);
        let Some(known) = self.nodes.get_mut(&node) else {
            return Vec::new();
        };
        let old = std::mem::replace(&mut known.members, members);
        let mut events = Vec::new();
        for ((topic, id), member) in &old {
            if !known.members.contains_key(&(topic.clone(), *id)) {
                events.push(event(PresenceKind::Left, topic.clone(), *id, member));
            }
        }
        for ((topic, id), member) in &known.members {
            match old.get(&(topic.clone(), *id)) {
                Some(before) if before == member => {}
                Some(_) => events.push(event(PresenceKind::Updated, topic.clone(), *id, member)),
                None => events.push(event(PresenceKind::Joined, topic.clone(), *id, member)),
            }
        }
        events
    }

    /// Drops the nodes not heard from within `ttl`; returns their members'
    /// departures.
    pub(crate) fn expire(&mut self, ttl: Duration) -> Vec<PresenceEvent> {
        let now = Instant::now();
        let gone: Vec<u32> = (self.nodes.iter())
            .filter(|(_, node)| now.duration_since(node.heard) > ttl)
            .map(|(number, _)| *number)
            .collect();
        let mut events = Vec::new();
        for number in gone {
            if let Some(node) = self.nodes.remove(&number) {
                tracing::info!(node = number, "node not heard from; its members left");
                for ((topic, id), member) in node.members {
                    events.push(event(PresenceKind::Left, topic, id, &member));
                }
            }
        }
        events
    }

    pub(crate) fn members(&self, topic: &Topic) -> Vec<(ConnId, Metadata)> {
        (self.nodes.values())
            .flat_map(|node| node.members.iter())
            .filter(|((t, _), _)| t == topic)
            .map(|((_, id), member)| (*id, member.metadata()))
            .collect()
    }

    /// The topics with members, and how many each has.
    pub(crate) fn occupancy(&self) -> Vec<(Topic, usize)> {
        let mut counts: HashMap<&Topic, usize> = HashMap::new();
        for (topic, _) in self.nodes.values().flat_map(|node| node.members.keys()) {
            *counts.entry(topic).or_default() += 1;
        }
        (counts.into_iter())
            .map(|(topic, members)| (topic.clone(), members))
            .collect()
    }

    /// How many connections `user` has, each counted once however many
    /// rooms it is in.
    pub(crate) fn connections_of(&self, user: &str) -> usize {
        (self.nodes.values())
            .map(|node| {
                let mut ids: Vec<ConnId> = (node.members.iter())
                    .filter(|(_, member)| member.user.as_deref() == Some(user))
                    .map(|((_, id), _)| *id)
                    .collect();
                ids.sort_unstable();
                ids.dedup();
                ids.len()
            })
            .sum()
    }
}

fn event(kind: PresenceKind, topic: Topic, id: ConnId, member: &Member) -> PresenceEvent {
    PresenceEvent::new(kind, topic, id, member.metadata())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(raw: u64) -> ConnId {
        ConnId::from_raw(raw).unwrap_or_else(|| unreachable!())
    }

    #[test]
    fn members_survive_encoding() {
        for member in [
            Member::default(),
            Member {
                name: Some("al:ice-5:".into()),
                user: None,
            },
            Member {
                name: Some("bøb".into()),
                user: Some("u-1".into()),
            },
        ] {
            assert_eq!(Member::decode(&member.encode()), Some(member));
        }
        for bad in ["x", "3:ab", "-", "--x", "9999999999999999999999:a-"] {
            assert_eq!(Member::decode(bad), None, "{bad}");
        }
        assert_eq!(
            parse_field(&field("a\u{1f}b", id(7))),
            Some((Topic::Room("a\u{1f}b".into()), id(7)))
        );
    }

    #[test]
    fn a_silent_node_expires_with_its_members() {
        let mut roster = Roster::default();
        let member = Member::default();
        let joined = roster.apply(3, PresenceKind::Joined, "r".into(), id(9), member.clone());
        assert!(joined.is_some());
        assert_eq!(roster.members(&"r".into()).len(), 1);
        assert!(roster.expire(Duration::from_secs(60)).is_empty());
        let left = roster.expire(Duration::ZERO);
        assert_eq!(left.len(), 1);
        assert_eq!(left[0].kind, PresenceKind::Left);
        assert!(roster.members(&"r".into()).is_empty());
    }

    #[test]
    fn rooms_and_users_are_counted_over_every_node() {
        let mut roster = Roster::default();
        let ann = Member {
            name: Some("ann".into()),
            user: Some("ann".into()),
        };
        for (node, room, conn) in [(1, "a", 1), (1, "b", 1), (1, "a", 2), (2, "a", 1)] {
            roster.apply(
                node,
                PresenceKind::Joined,
                room.into(),
                id(conn),
                ann.clone(),
            );
        }
        roster.apply(
            2,
            PresenceKind::Joined,
            "b".into(),
            id(5),
            Member::default(),
        );
        let mut rooms = roster.occupancy();
        rooms.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(rooms, [("a".into(), 3), ("b".into(), 2)]);
        // Node 1's connection 1 is in two rooms: one connection.
        assert_eq!(roster.connections_of("ann"), 3);
        assert_eq!(roster.connections_of("bob"), 0);
        roster.apply(1, PresenceKind::Left, "a".into(), id(2), ann);
        assert_eq!(roster.connections_of("ann"), 2);
    }
}
