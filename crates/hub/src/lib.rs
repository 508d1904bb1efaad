//! A transport-agnostic broadcast hub.
//!
//! A [`Hub`] keeps a registry of [`Connection`]s. It sends one connection a
//! personal message, broadcasts to all of them (or all but one), broadcasts
//! to rooms, tells who is where, and tells each connection why it was
//! closed. It knows nothing about sockets: a WebSocket adapter, a
//! Server-Sent-Events endpoint or a test drives each connection by reading
//! what the hub delivers to it.
//!
//! ```
//! use hub::{Hub, Message};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let hub = Hub::new();
//! let mut reader = hub.connect()?;
//! let writer = hub.connect()?;
//!
//! // One connection says something; everyone else hears it.
//! hub.except(writer.id()).broadcast(format!("Client says: {}", "hi"));
//! let heard = reader.recv().await?.into_message();
//! assert_eq!(heard, Some(Message::text("Client says: hi")));
//!
//! // A connection leaves; the rest are told.
//! drop(writer);
//! hub.broadcast("A client disconnected");
//! let heard = reader.recv().await?.into_message();
//! assert_eq!(heard, Some(Message::text("A client disconnected")));
//! # Ok(())
//! # }
//! ```
//!
//! # Topics, rooms and offsets
//!
//! Every connection is in [`Topic::All`], which [`Hub::broadcast`] reaches,
//! and in any rooms it [joins](Hub::join) ([`Hub::broadcast_room`]). Each
//! topic numbers its messages with consecutive offsets within an epoch,
//! and every [`Event::Broadcast`] carries its topic, epoch and offset. A
//! client that remembers the last [`Position`] it saw can come back on a new
//! connection and [resume](Hub::resume): it gets what it missed from the
//! topic's history, then live messages, with no gap and no duplicate, or a
//! [`Resync`](Event::Resync) notice when history does not reach back far
//! enough.
//!
//! Rooms come into being on the first join and go with the last leave;
//! an emptied room's history is kept for a while
//! ([`Builder::idle_rooms`]) so its members can resume. [`Hub::members`]
//! lists who is in a room with their [`Metadata`], [`Hub::presence`]
//! reports joins, leaves and renames, and [`Hub::send_to_user`] reaches
//! every connection of one person.
//!
//! # Delivery guarantees
//!
//! - Each topic is one [`tokio::sync::broadcast`] channel. A message is
//!   stored once and shared by every receiver: delivering to N connections
//!   costs N reference counts, never N copies.
//! - A broadcast never waits. A connection that falls more than
//!   [`capacity`](Builder::capacity) messages behind a topic meets the
//!   [`SlowConsumer`] policy. By default ([`SlowConsumer::Repair`]) the gap is
//!   refilled from the topic's history on the same connection, in order, so
//!   a reader that catches up loses nothing; only a gap older than history
//!   is announced with [`Event::Resync`]. [`SlowConsumer::Skip`] announces
//!   the gap ([`Event::Lagged`]) and moves on; [`SlowConsumer::Disconnect`]
//!   closes the connection with [`RecvError::Lagged`]. It is never silently
//!   behind.
//! - Personal messages wait in a bounded per-connection queue.
//!   [`Hub::try_send_personal`] fails fast with the message handed back when
//!   the queue is full; [`Hub::send_personal`] waits for room.
//!
//! # Choosing capacities
//!
//! - `capacity` (per topic, default [`Builder::DEFAULT_CAPACITY`]): how far a reader
//!   may fall behind before the slow-consumer policy acts. Under
//!   [`SlowConsumer::Repair`] with enough history (the defaults), a room's
//!   channel is small (2 to 16 slots, about 100 bytes each) and readers
//!   further behind are refilled from history; otherwise each topic
//!   allocates `capacity` slots up front.
//! - `history` (per topic, default [`Builder::DEFAULT_HISTORY`] messages and
//!   [`Builder::DEFAULT_HISTORY_BYTES`]): how far back repair and resume reach. It
//!   grows only with traffic. Memory: about the retained payload plus ~64
//!   bytes a message.
//! - `history_budget` (all topics together, default
//!   [`Builder::DEFAULT_HISTORY_BUDGET`]): the most history the hub holds, whatever
//!   the number of topics; past it, the topics used longest ago lose
//!   theirs first.
//! - `queue_capacity` (per connection, default [`Builder::DEFAULT_QUEUE_CAPACITY`]):
//!   personal messages in flight.
#![doc(test(attr(deny(warnings))))]

mod audience;
pub mod backplane;
mod bridge;
mod budget;
mod builder;
mod connection;
pub mod error;
mod event;
mod events;
mod except;
mod histogram;
mod history;
mod hub;
mod id;
mod inner;
mod lifecycle;
mod mailbox;
mod message;
mod personal;
mod presence;
mod registry;
mod room;
mod rooms;
mod stats;
mod subscription;
mod topic;

pub use audience::Audience;
pub use backplane::{Backplane, Placed, Publication, Remote};
pub use builder::{Builder, SlowConsumer};
pub use connection::Connection;
pub use error::{
    ConnectError, JoinError, PresenceError, PublishError, RecvError, SendError, TryRecvError,
};
pub use event::{Broadcast, Event};
pub use events::Events;
pub use except::Except;
pub use histogram::{Distribution, Histogram, Run, LATENCY_NS, MAX_BOUNDS};
pub use hub::Hub;
pub use id::{ConnId, Metadata};
pub use message::{Message, Text};
pub use presence::{Presence, PresenceEvent, PresenceKind};
pub use stats::Stats;
pub use topic::{HistoryPage, Position, Resume, RoomName, Topic};

/// The crate README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
