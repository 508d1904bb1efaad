//! Sharing a hub's traffic with other nodes.
//!
//! A single hub needs nothing here: it numbers each topic's messages itself
//! and delivers them in-process. Several hubs (one per server, behind a
//! load balancer) behave as one when they share a [`Backplane`]: every
//! broadcast is handed to it, it gives each message its place in the
//! topic's stream (one authority per topic, shared by all nodes), and every
//! node delivers what it reads back through its [`Remote`] handle, at the
//! same offsets. Clients can then resume on any node.
//!
//! While the backplane is out of reach, [`Backplane::publish`] gives the
//! publication back and the hub delivers it to its own connections in an
//! epoch of its own (a fork), so local delivery never stops. When the
//! backplane returns it [rebases](Remote::rebase) the topic; the node's
//! connections see the change of epoch as a [`Resync`](crate::Event::Resync)
//! and then receive what other nodes published meanwhile, and the other
//! nodes' connections are told, with a [missed-messages
//! notice](Remote::deliver_missed), what they did not get from this one.
//!
//! `hub-redis` implements this trait over Redis.

use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use crate::hub::Inner;
use crate::room::Placing;
use crate::{ConnId, Except, Message, Metadata, Position, PresenceEvent, SendError, Topic};

/// The largest node number; connection ids carry it in their top bits.
pub const MAX_NODE: u32 = (1 << NODE_BITS) - 1;

/// Bits of a connection id that hold the node number.
const NODE_BITS: u32 = 20;
/// Bits of a connection id that count the node's connections.
pub(crate) const LOCAL_BITS: u32 = 64 - NODE_BITS;

/// What a hub hands to its backplane to share with the other nodes.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Publication {
    /// A broadcast to a topic, to be numbered and delivered on every node
    /// (this one included, through [`Remote::deliver`]).
    Broadcast {
        /// Where.
        topic: Topic,
        /// What.
        message: Message,
        /// Connections that must not receive it.
        except: Except,
    },
    /// A personal message for a connection of another node
    /// ([`ConnId::node`]), to be handed to [`Remote::send_personal`] there.
    Personal {
        /// The addressee.
        to: ConnId,
        /// What.
        message: Message,
    },
    /// A message for every connection of a user, on every other node
    /// ([`Remote::send_to_user`]); this node has delivered it already.
    User {
        /// The user (see [`Metadata::with_user`](crate::Metadata::with_user)).
        user: Arc<str>,
        /// What.
        message: Message,
        /// Connections that must not receive it.
        except: Except,
    },
}

impl Publication {
    /// The message carried.
    #[must_use]
    pub fn message(&self) -> &Message {
        match self {
            Self::Broadcast { message, .. }
            | Self::Personal { message, .. }
            | Self::User { message, .. } => message,
        }
    }

    /// The message carried.
    #[must_use]
    pub fn into_message(self) -> Message {
        match self {
            Self::Broadcast { message, .. }
            | Self::Personal { message, .. }
            | Self::User { message, .. } => message,
        }
    }

    /// The topic of a broadcast.
    #[must_use]
    pub fn topic(&self) -> Option<&Topic> {
        match self {
            Self::Broadcast { topic, .. } => Some(topic),
            _ => None,
        }
    }
}

/// Connects hubs on several nodes; see the [module docs](self).
///
/// A hub calls these methods from whatever thread uses it, sometimes under
/// its own locks: an implementation must never wait in them, nor call its
/// [`Remote`] from them (that would deadlock); it hands the work to a task
/// of its own. It must keep [`watch`](Self::watch),
/// [`unwatch`](Self::unwatch) and [`publish`](Self::publish) calls in the
/// order they were made.
///
/// With a backplane, a broadcast is sent when the backplane has numbered
/// it: a connection removed right after a broadcast call may not receive
/// it, and one added right after may.
pub trait Backplane: fmt::Debug + Send + Sync + 'static {
    /// This node's number, `1..=MAX_NODE`, unique among the nodes sharing
    /// the backplane; the hub puts it in every [`ConnId`] it issues.
    fn node(&self) -> u32;

    /// Called once, when the hub is built: the handle through which the
    /// backplane delivers to this hub. The backplane should watch
    /// [`Topic::All`] from now on.
    fn start(&self, remote: Remote);

    /// Shares a publication. Gives it back if the backplane cannot take it
    /// now (out of reach, or too far behind): the hub then delivers a
    /// broadcast to its own connections only, fails a personal message with
    /// [`SendError::Unreachable`], and keeps a user message local. The
    /// backplane is expected to report a broadcast given back, once it
    /// can, with [`Remote::rebase`] here and a missed-messages notice for
    /// the other nodes.
    ///
    /// # Errors
    ///
    /// The publication, given back.
    fn publish(&self, publication: Publication) -> Result<(), Publication>;

    /// The hub has connections in a room from now on: deliver its messages
    /// (after placing it with [`Remote::rebase`]).
    fn watch(&self, topic: &Topic);

    /// The hub no longer keeps a room: stop delivering its messages.
    fn unwatch(&self, topic: &Topic);

    /// A connection of this node joined, left or changed: tell the other
    /// nodes (they pass it to [`Remote::announce`]). By default, nothing.
    fn announce(&self, event: &PresenceEvent) {
        let _ = event;
    }

    /// The members of `topic` on the other nodes, as last heard of, for
    /// [`Hub::members`](crate::Hub::members). By default, none.
    fn members(&self, topic: &Topic) -> Vec<(ConnId, Metadata)> {
        let _ = topic;
        Vec::new()
    }
}

/// A backplane's handle on its hub, given by [`Backplane::start`]. It does
/// not keep the hub alive: once the hub is gone, every call does nothing.
#[derive(Clone)]
pub struct Remote {
    inner: Weak<Inner>,
}

impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote")
            .field("open", &self.is_open())
            .finish()
    }
}

impl Remote {
    pub(crate) fn new(inner: &Arc<Inner>) -> Self {
        Self {
            inner: Arc::downgrade(inner),
        }
    }

    /// Whether the hub still exists and has not been shut down.
    #[must_use]
    pub fn is_open(&self) -> bool {
        self.inner
            .upgrade()
            .is_some_and(|inner| !inner.is_shut_down())
    }

    /// Delivers the message the backplane placed at `position` of `topic`
    /// to this node's connections in it; returns how many it reached.
    ///
    /// Positions already delivered are skipped; a position beyond the next
    /// one leaves a gap, which connections repair from history or report.
    /// Nothing happens for a topic this node does not keep, or one not
    /// placed at `position.epoch` (see [`rebase`](Self::rebase)).
    pub fn deliver(
        &self,
        topic: &Topic,
        position: Position,
        message: Message,
        except: Except,
    ) -> usize {
        self.inner.upgrade().map_or(0, |inner| {
            inner.deliver(topic, position, Placing::Message(message), except)
        })
    }

    /// Fills `position` of `topic` with a notice that `missed` messages
    /// published elsewhere never reached the topic's stream: connections
    /// receive [`Event::Resync`](crate::Event::Resync) with that count. A
    /// notice of 0 only takes the position, silently.
    pub fn deliver_missed(&self, topic: &Topic, position: Position, missed: u64) {
        if let Some(inner) = self.inner.upgrade() {
            inner.deliver(topic, position, Placing::Missed(missed), Except::none());
        }
    }

    /// Places `topic` at `next`: messages are delivered from that offset
    /// of that epoch on, and `backfill` (the topic's messages before
    /// `next`, oldest first, as offset, message and excluded connection)
    /// becomes its history, for repair and resume. Connections that
    /// followed another epoch receive [`Event::Resync`](crate::Event::Resync)
    /// with the next message. Does nothing for a topic this node does not
    /// keep.
    pub fn rebase(
        &self,
        topic: &Topic,
        next: Position,
        backfill: impl IntoIterator<Item = (u64, Message, Except)>,
    ) {
        if let Some(inner) = self.inner.upgrade() {
            inner.rebase(topic, next, backfill);
        }
    }

    /// Whether `topic` follows the backplane's numbering: `false` for a
    /// topic this node does not keep, one not placed yet counts as
    /// following, and one that forked (see [`Backplane::publish`]) does
    /// not until it is [rebased](Self::rebase).
    #[must_use]
    pub fn is_following(&self, topic: &Topic) -> bool {
        self.inner
            .upgrade()
            .is_some_and(|inner| inner.is_following(topic))
    }

    /// Delivers a broadcast the backplane took but could not share after
    /// all (it lost its connection first) to this node's connections only,
    /// as the hub does with one [given back](Backplane::publish): the topic
    /// forks until it is [rebased](Self::rebase). Returns how many it
    /// reached.
    pub fn deliver_here(&self, topic: &Topic, message: Message, except: Except) -> usize {
        self.inner
            .upgrade()
            .map_or(0, |inner| inner.publish_here(topic, message, except))
    }

    /// Queues a personal message from another node for a connection of
    /// this one, without waiting.
    ///
    /// # Errors
    ///
    /// As [`Hub::try_send_personal`](crate::Hub::try_send_personal).
    pub fn send_personal(&self, to: ConnId, message: Message) -> Result<(), SendError> {
        match self.inner.upgrade() {
            Some(inner) => inner.send_personal_local(to, message),
            None => Err(SendError::UnknownConnection { id: to, message }),
        }
    }

    /// Queues a user message from another node for this node's connections
    /// of `user`, but those in `except`; returns how many it was queued
    /// for.
    pub fn send_to_user(&self, user: &str, message: Message, except: &Except) -> usize {
        self.inner
            .upgrade()
            .map_or(0, |inner| inner.send_to_user_local(user, &message, except))
    }

    /// Passes a presence event of another node to this hub's
    /// [`presence`](crate::Hub::presence) subscribers.
    pub fn announce(&self, event: PresenceEvent) {
        if let Some(inner) = self.inner.upgrade() {
            inner.announce_remote(event);
        }
    }

    /// The topics this node keeps ([`Topic::All`] and its rooms), for a
    /// backplane that has to watch them again after a reconnect.
    #[must_use]
    pub fn topics(&self) -> Vec<Topic> {
        self.inner
            .upgrade()
            .map(|inner| inner.topics())
            .unwrap_or_default()
    }
}

/// A new epoch: random, never zero, and below 2^53, so that it stays exact
/// wherever numbers are doubles (Lua in Redis, JavaScript). A process-random
/// hash of the time and a counter: unlikely to repeat across restarts or
/// nodes. Backplanes use it for a topic their store does not know yet.
#[must_use]
pub fn new_epoch() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    (hasher.finish() >> 11).max(1)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::new_epoch;

    #[test]
    fn epochs_are_distinct_and_exact_as_doubles() {
        let epochs: HashSet<u64> = (0..1000).map(|_| new_epoch()).collect();
        assert_eq!(epochs.len(), 1000);
        // A plain 64-bit hash would exceed 2^53 in all but a few of 1 000.
        assert!(epochs.iter().all(|&e| e != 0 && e < 1 << 53));
    }
}
