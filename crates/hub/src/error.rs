//! Errors returned by the hub.

use crate::{ConnId, Message};

/// Why [`Hub::connect`](crate::Hub::connect) failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The hub was shut down with [`Hub::shutdown`](crate::Hub::shutdown);
    /// it accepts no new connections.
    #[error("the hub is shut down and accepts no new connections")]
    Shutdown,
}

/// Why a connection could not join a room.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum JoinError {
    /// No connection with this id is registered.
    #[error("no connection {id} is registered with the hub (it may have disconnected)")]
    UnknownConnection {
        /// The id that was addressed.
        id: ConnId,
    },
}

/// Why [`Hub::publish`](crate::Hub::publish) could not tell where a
/// message was placed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PublishError {
    /// The hub was shut down; the message was not published.
    #[error("the hub is shut down; nothing was published")]
    Shutdown,
    /// The backplane is out of reach and this node has no such room: the
    /// message reached no one. Try again once the backplane is back.
    #[error("the backplane is out of reach and no member of the room is on this node; nothing was published")]
    Unreachable,
    /// The backplane took the message but did not say where it placed it
    /// (it does not report positions, or it gave up on the message after
    /// taking it). The message may have reached the room.
    #[error(
        "the backplane did not report where the message was placed; it may have been delivered"
    )]
    Unplaced,
}

/// Why a personal message could not be queued.
///
/// The message is handed back so the caller can retry, log or drop it.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SendError {
    /// No connection with this id is registered: it never existed, or it
    /// has disconnected.
    #[error("no connection {id} is registered with the hub (it may have disconnected)")]
    UnknownConnection {
        /// The id that was addressed.
        id: ConnId,
        /// The message that was not sent.
        message: Message,
    },
    /// The connection's personal queue is full: it is not reading fast
    /// enough. Retry later, or use the waiting
    /// [`Hub::send_personal`](crate::Hub::send_personal).
    #[error("the personal queue of connection {id} is full; the connection is not keeping up")]
    QueueFull {
        /// The id that was addressed.
        id: ConnId,
        /// The message that was not sent.
        message: Message,
    },
    /// The connection belongs to another node ([`ConnId::node`]), and the
    /// [backplane](crate::Backplane) cannot reach it now. Retry once it is
    /// back.
    #[error("connection {id} is on node {node}, which cannot be reached now", node = id.node())]
    Unreachable {
        /// The id that was addressed.
        id: ConnId,
        /// The message that was not sent.
        message: Message,
    },
}

impl SendError {
    /// The message that could not be sent.
    #[must_use]
    pub fn into_message(self) -> Message {
        match self {
            Self::UnknownConnection { message, .. }
            | Self::QueueFull { message, .. }
            | Self::Unreachable { message, .. } => message,
        }
    }
}

/// Why a [`Connection`](crate::Connection) stopped receiving.
///
/// Once a connection has returned one of these it returns the same value
/// from every later call.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum RecvError {
    /// The connection was removed with [`Hub::disconnect`](crate::Hub::disconnect).
    #[error("the connection was disconnected from the hub")]
    Disconnected,
    /// The hub was shut down with [`Hub::shutdown`](crate::Hub::shutdown).
    #[error("the hub is shutting down")]
    Shutdown,
    /// The connection's user was removed with
    /// [`Hub::disconnect_user`](crate::Hub::disconnect_user), with this
    /// code (a WebSocket transport closes with it) and a reason that
    /// [`Connection::farewell`](crate::Connection::farewell) gives.
    #[error("the connection was removed by the server (code {code})")]
    Removed {
        /// The code given.
        code: u16,
    },
    /// The connection fell further behind a topic's channel than its
    /// capacity allows and the slow-consumer policy is
    /// [`SlowConsumer::Disconnect`](crate::SlowConsumer::Disconnect).
    #[error(
        "the connection fell {missed} messages behind and was disconnected; reconnect to catch up"
    )]
    Lagged {
        /// How many broadcast messages the connection missed.
        missed: u64,
    },
    /// The hub's [queue budget](crate::Builder::queue_budget) was exceeded
    /// and this connection had the most bytes waiting in its queue.
    #[error("the server had too much queued ({queued} bytes for this connection); reconnect")]
    Overloaded {
        /// The bytes that were waiting for the connection.
        queued: usize,
    },
}

/// Why [`Connection::try_recv`](crate::Connection::try_recv) returned nothing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TryRecvError {
    /// Nothing is ready right now; the connection is still open.
    #[error("no message is ready")]
    Empty,
    /// The connection has stopped receiving.
    #[error(transparent)]
    Closed(#[from] RecvError),
}

/// Why [`Presence::recv`](crate::Presence::recv) or
/// [`try_recv`](crate::Presence::try_recv) returned no event.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum PresenceError {
    /// This subscriber fell too far behind and `missed` events went by
    /// unseen; reading goes on after them. Take a fresh list
    /// ([`Hub::members`](crate::Hub::members)) if it matters.
    #[error("fell behind the presence events: {missed} were missed")]
    Missed {
        /// How many.
        missed: u64,
    },
    /// No event is waiting ([`try_recv`](crate::Presence::try_recv) only).
    #[error("no presence event is waiting")]
    Empty,
    /// The hub is gone: no more events will come.
    #[error("the hub is gone; no more presence events")]
    Closed,
}
