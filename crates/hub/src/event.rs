//! What a connection receives.

use crate::{Message, Topic};

/// A message broadcast to a topic, with its place in that topic's stream.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Broadcast {
    /// Where it was broadcast.
    pub topic: Topic,
    /// The topic's epoch when it was sent.
    pub epoch: u64,
    /// Its offset in the topic; consecutive within an epoch.
    pub offset: u64,
    /// The message.
    pub message: Message,
}

/// What a connection receives from the hub.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A message sent to this connection alone.
    Personal(Message),
    /// A message broadcast to everyone or to a room this connection is in.
    Broadcast(Broadcast),
    /// Under [`SlowConsumer::Skip`](crate::SlowConsumer::Skip): the
    /// connection fell behind in `topic` and `missed` messages were skipped.
    Lagged {
        /// Where the messages were missed.
        topic: Topic,
        /// How many.
        missed: u64,
    },
    /// Messages of `topic` are missing before the ones that follow and
    /// cannot be recovered: the connection fell further behind than the
    /// topic's history reaches, or resumed from an older or different epoch.
    /// `missed` counts them when known (`None` when the epoch changed). The
    /// receiver should reload its state.
    Resync {
        /// Where the gap is.
        topic: Topic,
        /// How many messages are missing, when known.
        missed: Option<u64>,
    },
}

impl Event {
    /// The message carried, for personal and broadcast events.
    #[must_use]
    pub fn message(&self) -> Option<&Message> {
        match self {
            Self::Personal(message) => Some(message),
            Self::Broadcast(broadcast) => Some(&broadcast.message),
            _ => None,
        }
    }

    /// The message carried, for personal and broadcast events.
    #[must_use]
    pub fn into_message(self) -> Option<Message> {
        match self {
            Self::Personal(message) => Some(message),
            Self::Broadcast(broadcast) => Some(broadcast.message),
            _ => None,
        }
    }
}
