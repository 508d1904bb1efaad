//! A transport-agnostic broadcast hub.
//!
//! A [`Hub`] keeps a registry of [`Connection`]s. It can send one connection
//! a personal message, broadcast to all of them (or all but one), and tells
//! each connection why it was closed. It knows nothing about sockets: a
//! WebSocket adapter, a Server-Sent-Events endpoint or a test drives each
//! connection by reading what the hub delivers to it.
//!
//! ```
//! use hub::{Event, Hub, Message};
//!
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let hub = Hub::new();
//! let mut reader = hub.connect()?;
//! let writer = hub.connect()?;
//!
//! // One connection says something; everyone else hears it.
//! hub.broadcast_except(writer.id(), format!("Client says: {}", "hi"));
//! assert_eq!(reader.recv().await?, Event::Message(Message::text("Client says: hi")));
//!
//! // A connection leaves; the rest are told.
//! drop(writer);
//! hub.broadcast("A client disconnected");
//! assert_eq!(reader.recv().await?, Event::Message(Message::text("A client disconnected")));
//! # Ok(())
//! # }
//! ```
//!
//! # Delivery guarantees
//!
//! - Broadcasts go through one [`tokio::sync::broadcast`] channel. Each
//!   message is stored once and shared by every connection: delivering to N
//!   connections costs N reference counts, never N copies.
//! - A broadcast never waits. A connection that falls more than
//!   [`capacity`](Builder::capacity) messages behind loses the oldest ones and
//!   meets the [`SlowConsumer`] policy: by default it is disconnected with
//!   [`RecvError::Lagged`], or, with [`SlowConsumer::Skip`], told how many it
//!   missed through [`Event::Lagged`]. It is never silently behind.
//! - Personal messages wait in a bounded per-connection queue.
//!   [`Hub::try_send_personal`] fails fast with the message handed back when
//!   the queue is full; [`Hub::send_personal`] waits for room.
//! - Memory is bounded: at most `capacity` broadcast messages plus
//!   `queue_capacity` personal messages per connection.
//!
//! # Choosing capacities
//!
//! `capacity` is how far (in messages) a connection may fall behind during a
//! burst before the policy applies. The default, [`DEFAULT_CAPACITY`],
//! absorbs a burst of several thousand messages for a client that keeps
//! reading; lower it when messages are large and memory is tight.
#![doc(test(attr(deny(warnings))))]

mod connection;
pub mod error;
mod hub;
mod id;
mod message;
mod stats;

pub use connection::{Connection, Event, Events};
pub use error::{ConnectError, RecvError, SendError, TryRecvError};
pub use hub::{Builder, Hub, SlowConsumer, DEFAULT_CAPACITY, DEFAULT_QUEUE_CAPACITY, MAX_CAPACITY};
pub use id::{ConnId, Metadata};
pub use message::{Message, Text};
pub use stats::Stats;

/// The crate README's example, compiled and run as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
