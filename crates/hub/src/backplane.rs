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

use std::fmt;
use std::sync::{Arc, Weak};

use crate::{ConnId, Except, Message, Metadata, Position, PresenceEvent, SendError, Topic};

pub use crate::id::MAX_NODE;
pub use crate::topic::new_epoch;

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
    /// Every connection of a user is to be removed, on every other node
    /// ([`Remote::disconnect_user`]); this node has removed its own.
    Disconnect {
        /// The user.
        user: Arc<str>,
        /// The code and reason to remove them with.
        code: u16,
        /// Why.
        reason: Arc<str>,
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
    /// The message carried, if any ([`Disconnect`](Self::Disconnect)
    /// carries none).
    #[must_use]
    pub fn message(&self) -> Option<&Message> {
        match self {
            Self::Broadcast { message, .. }
            | Self::Personal { message, .. }
            | Self::User { message, .. } => Some(message),
            Self::Disconnect { .. } => None,
        }
    }

    /// The message carried, if any.
    #[must_use]
    pub fn into_message(self) -> Option<Message> {
        match self {
            Self::Broadcast { message, .. }
            | Self::Personal { message, .. }
            | Self::User { message, .. } => Some(message),
            Self::Disconnect { .. } => None,
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

    /// Shares a broadcast as [`publish`](Self::publish) does, and reports
    /// where it was placed through `placed` once it is numbered (what
    /// [`Hub::publish`](crate::Hub::publish) answers). By default the
    /// position is never reported: `placed` is dropped, and the publisher
    /// learns that the message was shared, not where.
    ///
    /// # Errors
    ///
    /// The publication, given back (`placed` is dropped).
    fn publish_placed(&self, publication: Publication, placed: Placed) -> Result<(), Publication> {
        drop(placed);
        self.publish(publication)
    }

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

    /// The topics with members on the other nodes, with how many, as last
    /// heard of, for [`Hub::occupancy`](crate::Hub::occupancy). By
    /// default, none.
    fn occupancy(&self) -> Vec<(Topic, usize)> {
        Vec::new()
    }

    /// How many connections `user` has in rooms on the other nodes, as
    /// last heard of, for [`Hub::connections_of`](crate::Hub::connections_of).
    /// By default, none.
    fn connections_of(&self, user: &str) -> usize {
        let _ = user;
        0
    }
}

/// Where a broadcast handed to [`Backplane::publish_placed`] was placed,
/// for its publisher: the backplane reports the position once the
/// message is numbered, or drops this if it never is.
#[derive(Debug)]
pub struct Placed(tokio::sync::oneshot::Sender<Position>);

impl Placed {
    /// A report, and where the publisher awaits it.
    pub(crate) fn new() -> (Self, tokio::sync::oneshot::Receiver<Position>) {
        let (sender, receiver) = tokio::sync::oneshot::channel();
        (Self(sender), receiver)
    }

    /// Tells the publisher that the message was placed at `position`.
    pub fn report(self, position: Position) {
        // The publisher may have stopped waiting.
        let _ = self.0.send(position);
    }
}

/// What a [`Remote`] delivers into: the hub, seen from its backplane (see
/// `bridge.rs`).
pub(crate) trait Sink: Send + Sync {
    fn is_shut_down(&self) -> bool;
    /// A message (or, with none, a notice of `missed` messages) placed at
    /// `position` of `topic`.
    fn deliver(
        &self,
        topic: &Topic,
        position: Position,
        message: Result<Message, u64>,
        except: Except,
    ) -> usize;
    fn rebase(
        &self,
        topic: &Topic,
        next: Position,
        backfill: &mut dyn Iterator<Item = (u64, Message, Except)>,
    );
    fn is_following(&self, topic: &Topic) -> bool;
    fn deliver_here(&self, topic: &Topic, message: Message, except: Except) -> usize;
    fn send_personal(&self, to: ConnId, message: Message) -> Result<(), SendError>;
    fn send_to_user(&self, user: &str, message: &Message, except: &Except) -> usize;
    fn disconnect_user(&self, user: &str, code: u16, reason: &Arc<str>) -> usize;
    fn announce(&self, event: PresenceEvent);
    fn topics(&self) -> Vec<Topic>;
}

/// A backplane's handle on its hub, given by [`Backplane::start`]. It does
/// not keep the hub alive: once the hub is gone, every call does nothing.
#[derive(Clone)]
pub struct Remote {
    inner: Weak<dyn Sink>,
}

impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote")
            .field("open", &self.is_open())
            .finish()
    }
}

impl Remote {
    pub(crate) fn new(inner: Weak<dyn Sink>) -> Self {
        Self { inner }
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
        (self.inner.upgrade()).map_or(0, |inner| {
            inner.deliver(topic, position, Ok(message), except)
        })
    }

    /// Fills `position` of `topic` with a notice that `missed` messages
    /// published elsewhere never reached the topic's stream: connections
    /// receive [`Event::Resync`](crate::Event::Resync) with that count. A
    /// notice of 0 only takes the position, silently.
    pub fn deliver_missed(&self, topic: &Topic, position: Position, missed: u64) {
        if let Some(inner) = self.inner.upgrade() {
            inner.deliver(topic, position, Err(missed), Except::none());
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
            inner.rebase(topic, next, &mut backfill.into_iter());
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
            .map_or(0, |inner| inner.deliver_here(topic, message, except))
    }

    /// Queues a personal message from another node for a connection of
    /// this one, without waiting.
    ///
    /// # Errors
    ///
    /// As [`Hub::try_send_personal`](crate::Hub::try_send_personal).
    pub fn send_personal(&self, to: ConnId, message: Message) -> Result<(), SendError> {
        match self.inner.upgrade() {
            Some(inner) => inner.send_personal(to, message),
            None => Err(SendError::UnknownConnection { id: to, message }),
        }
    }

    /// Queues a user message from another node for this node's connections
    /// of `user`, but those in `except`; returns how many it was queued
    /// for.
    pub fn send_to_user(&self, user: &str, message: Message, except: &Except) -> usize {
        self.inner
            .upgrade()
            .map_or(0, |inner| inner.send_to_user(user, &message, except))
    }

    /// Removes this node's connections of `user`, as another node asked
    /// (see [`Hub::disconnect_user`](crate::Hub::disconnect_user)); returns
    /// how many there were.
    pub fn disconnect_user(&self, user: &str, code: u16, reason: &Arc<str>) -> usize {
        self.inner
            .upgrade()
            .map_or(0, |inner| inner.disconnect_user(user, code, reason))
    }

    /// Passes a presence event of another node to this hub's
    /// [`presence`](crate::Hub::presence) subscribers.
    pub fn announce(&self, event: PresenceEvent) {
        if let Some(inner) = self.inner.upgrade() {
            inner.announce(event);
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
