//! WebSocket adapter for the [`hub`] crate.
//!
//! [`WsServer`] turns each WebSocket client into a [`hub::Connection`]: a
//! reader feeds the client's messages to your [`Handler`], and a writer
//! drains what the hub delivers to the client into its socket. Both end
//! cleanly on close, error, idle timeout or hub shutdown, and the hub
//! forgets the connection.
//!
//! # Quick start
//!
//! The handler gives messages their meaning; the server does the rest.
//! Here, the FastAPI tutorial's chat: every message goes to everyone, and
//! the others hear when a client leaves.
//!
//! ```no_run
//! use hub::{Hub, Message, Metadata};
//! use hub_ws::{Close, CloseCode, Ended, Handler, Session, WsServer};
//!
//! struct Chat;
//!
//! impl Handler for Chat {
//!     async fn on_message(&self, session: &Session, message: Message) -> Result<(), Close> {
//!         let Some(text) = message.as_text() else {
//!             return Err(Close::new(CloseCode::UNSUPPORTED, "text only"));
//!         };
//!         session.hub().broadcast(format!("Client says: {text}"));
//!         Ok(())
//!     }
//!
//!     async fn on_close(&self, session: &Session, _ended: &Ended) {
//!         session.hub().broadcast("A client disconnected");
//!     }
//! }
//!
//! # #[tokio::main]
//! # async fn main() -> std::io::Result<()> {
//! let chat = WsServer::new(Hub::new(), Chat);
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
//! loop {
//!     let (stream, _) = listener.accept().await?;
//!     let chat = chat.clone();
//!     tokio::spawn(async move { chat.serve_tcp(stream, Metadata::new()).await });
//! }
//! # }
//! ```
//!
//! # Where sessions come from
//!
//! - hyper 1.x: answer the request with [`WsServer::upgrade`] (serve the
//!   connection `with_upgrades()`); see `examples/hyper.rs`.
//! - axum (feature `axum`): `WsServer::axum_upgrade` takes axum's own
//!   `WebSocketUpgrade` extractor; see `examples/axum.rs`.
//! - Plain TCP: [`WsServer::serve_tcp`] runs the handshake itself.
//! - Any stream already upgraded elsewhere: [`WsServer::serve_upgraded`].
//!
//! # Delivery and slow clients
//!
//! Messages the hub delivers to a client are written in order, in batches
//! flushed once. A client that falls behind the hub's channel is handled
//! by the hub's [`SlowConsumer`](hub::SlowConsumer) policy: refilled from
//! history by default, told of the gap ([`Handler::render`] decides how it
//! looks on the wire), or closed with 1013. A client whose socket accepts
//! nothing for the [write timeout](Config::write_timeout) is closed with
//! 1013 too. None of this slows anyone else.
//!
//! # Close codes
//!
//! | code | when |
//! |---|---|
//! | 1000 | the application disconnected the client ([`hub::Hub::disconnect`]) |
//! | 1001 | the server is shutting down, or the client was idle past the timeout |
//! | 1002 | the client broke the protocol |
//! | 1007 | a text message was not UTF-8 |
//! | 1008 | the client kept sending past its [rate limit](Config::rate_limit) |
//! | 1009 | a message or frame exceeded [`Config::max_message_size`] (64 KiB by default) |
//! | 1011 | an unexpected server error |
//! | 1013 | the client stopped reading, or fell behind under [`SlowConsumer::Disconnect`](hub::SlowConsumer::Disconnect): reconnect |
//!
//! A [`Handler`] may close with any code of its own through [`Close`].
#![doc(test(attr(deny(warnings))))]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(any(feature = "axum", feature = "tungstenite"))]
mod adapted;
mod admission;
#[cfg(feature = "axum")]
mod axum;
mod close;
mod codec;
mod config;
mod deflate;
mod frame;
mod handler;
mod handshake;
mod rate;
mod server;
mod session;
mod stats;
mod throttle;
#[cfg(feature = "tungstenite")]
mod tungstenite;
mod upgrade;
pub mod wire;

pub use admission::{Origins, SessionLimit};
pub use close::{Close, CloseCode, Ended};
pub use config::{Config, DEFAULT_MAX_MESSAGE_SIZE};
pub use handler::{Handler, Session};
pub use handshake::{Handshake, Refusal};
pub use rate::RateLimit;
pub use server::{PeerAddr, ServeError, WsServer};
pub use stats::WsStats;
pub use upgrade::{is_upgrade_request, UpgradeError};

/// Entry points for the fuzz targets under `fuzz/` (built by `cargo fuzz`,
/// which passes `--cfg fuzzing`): the parsers of client input, with the
/// invariants their callers rely on asserted. Not part of the API.
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing;

/// The crate README's example, compiled as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct CrateReadmeDoctests;
