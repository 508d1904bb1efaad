//! WebSocket adapter for the [`hub`] crate.
//!
//! [`WsServer`] turns each WebSocket client into a [`hub::Connection`]: a
//! reader feeds the client's messages to your [`Handler`], and a writer
//! drains what the hub delivers to the client into its socket. Both end
//! cleanly on close, error, idle timeout or hub shutdown, and the hub
//! forgets the connection.
//!
//! Sessions start from a hyper 1.x upgrade ([`WsServer::upgrade`]), a plain
//! TCP stream ([`WsServer::serve_tcp`]) or any already-upgraded stream
//! ([`WsServer::serve_upgraded`]).
//!
//! # Close codes
//!
//! | code | when |
//! |---|---|
//! | 1000 | the application disconnected the client ([`hub::Hub::disconnect`]) |
//! | 1001 | the server is shutting down, or the client was idle past the timeout |
//! | 1002 | the client broke the protocol |
//! | 1007 | a text message was not UTF-8 |
//! | 1009 | a message or frame exceeded [`Config::max_message_size`] (64 KiB by default) |
//! | 1011 | an unexpected server error |
//! | 1013 | the client fell behind the hub, or stopped reading: reconnect |
//!
//! A [`Handler`] may close with any code of its own through [`Close`].
#![doc(test(attr(deny(warnings))))]
#![cfg_attr(docsrs, feature(doc_cfg))]

#[cfg(feature = "axum")]
mod axum;
mod close;
mod config;
mod frame;
mod handler;
mod server;
mod session;
mod upgrade;

pub use close::{Close, CloseCode, Ended};
pub use config::{Config, DEFAULT_MAX_MESSAGE_SIZE};
pub use handler::{Handler, Session};
pub use server::{PeerAddr, ServeError, WsServer};
pub use upgrade::{is_upgrade_request, UpgradeError};

/// The README's examples, compiled and run as doctests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
struct ReadmeDoctests;
