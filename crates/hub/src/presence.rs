//! Who joined and left what.

use crate::{ConnId, Metadata, Topic};

/// What happened, in a [`PresenceEvent`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum PresenceKind {
    /// Joined the topic ([`Topic::All`]: connected).
    Joined,
    /// Left the topic ([`Topic::All`]: disconnected).
    Left,
    /// Changed metadata ([`Hub::set_metadata`](crate::Hub::set_metadata)).
    Updated,
}

/// A join, leave or metadata change, from [`Hub::presence`](crate::Hub::presence).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct PresenceEvent {
    /// What happened.
    pub kind: PresenceKind,
    /// Where.
    pub topic: Topic,
    /// To which connection.
    pub id: ConnId,
    /// The connection's metadata (after the change, for `Updated`).
    pub metadata: Metadata,
}

impl PresenceEvent {
    /// An event, for a [backplane](crate::Backplane) passing on another
    /// node's ([`Remote::announce`](crate::Remote::announce)).
    #[must_use]
    pub fn new(kind: PresenceKind, topic: Topic, id: ConnId, metadata: Metadata) -> Self {
        Self {
            kind,
            topic,
            id,
            metadata,
        }
    }
}
