//! Who joined and left what.

use std::fmt;

use tokio::sync::broadcast;

use crate::error::PresenceError;
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

/// Joins, leaves and metadata changes from [`Hub::presence`](crate::Hub::presence)
/// on, in the order they happened.
///
/// ```
/// use hub::{Hub, PresenceKind, Topic};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let hub = Hub::new();
/// let mut presence = hub.presence();
/// let connection = hub.connect()?;
/// let event = presence.recv().await?;
/// assert_eq!((event.kind, event.topic), (PresenceKind::Joined, Topic::All));
/// assert_eq!(event.id, connection.id());
/// # Ok(())
/// # }
/// ```
pub struct Presence {
    events: broadcast::Receiver<PresenceEvent>,
}

impl Presence {
    pub(crate) fn new(events: broadcast::Receiver<PresenceEvent>) -> Self {
        Self { events }
    }

    /// Waits for the next event.
    ///
    /// # Errors
    ///
    /// [`PresenceError::Missed`] once if this subscriber fell more than
    /// 1 024 events behind (the next call goes on from the oldest event
    /// still kept); [`PresenceError::Closed`] once the hub is gone.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if used in `tokio::select!` and another branch wins, no
    /// event is lost.
    pub async fn recv(&mut self) -> Result<PresenceEvent, PresenceError> {
        self.events.recv().await.map_err(|error| match error {
            broadcast::error::RecvError::Lagged(missed) => PresenceError::Missed { missed },
            broadcast::error::RecvError::Closed => PresenceError::Closed,
        })
    }

    /// The next event if there is one, without waiting.
    ///
    /// # Errors
    ///
    /// [`PresenceError::Empty`] when none is waiting; otherwise as
    /// [`recv`](Self::recv).
    pub fn try_recv(&mut self) -> Result<PresenceEvent, PresenceError> {
        self.events.try_recv().map_err(|error| match error {
            broadcast::error::TryRecvError::Lagged(missed) => PresenceError::Missed { missed },
            broadcast::error::TryRecvError::Closed => PresenceError::Closed,
            broadcast::error::TryRecvError::Empty => PresenceError::Empty,
        })
    }
}

impl fmt::Debug for Presence {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Presence")
            .field("waiting", &self.events.len())
            .finish()
    }
}
