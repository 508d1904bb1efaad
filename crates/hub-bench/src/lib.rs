//! Load generator for WebSocket broadcast servers running on this machine,
//! such as the chat server's `/ws` (every text is broadcast to every
//! client, the sender included, as `Client says: {text}`) or `/echo`.
//!
//! [`Broadcast`] connects many clients, has a few of them send numbered,
//! timestamped messages, and checks that every client receives every
//! message exactly once: deliveries per second, latency percentiles, losses
//! and duplicates, and the CPU and memory of this tool and of the server.
//! [`Idle`] connects many clients and holds them, to measure what a
//! connection costs the server. [`Bare`] is a broadcast server that does
//! nothing but one write per client per message: the baseline to measure
//! a server against on the same machine.
//!
//! Targets must be on this machine: `ws://` URLs whose host is in
//! `127.0.0.0/8`, `::1` or `localhost`; anything else is refused with
//! [`UrlError::NotLoopback`].
//!
//! ```no_run
//! # #[tokio::main(flavor = "current_thread")]
//! # async fn main() -> Result<(), hub_bench::Error> {
//! let report = hub_bench::Broadcast::new("ws://127.0.0.1:8000/ws")
//!     .clients(1000)
//!     .senders(1)
//!     .messages(2000)
//!     .size(32)
//!     .run()
//!     .await?;
//! println!("{report}");
//! println!("{}", report.to_json());
//! # Ok(())
//! # }
//! ```
//!
//! The `hub-bench` binary wraps both behind a command line; run
//! `hub-bench --help`.
#![doc(test(attr(deny(warnings))))]

mod bare;
mod broadcast;
mod common;
mod connect;
mod error;
mod idle;
mod latency;
mod payload;
pub mod plot;
mod proc;
mod progress;
mod report;
mod stop;
mod ws;

pub use bare::Bare;
pub use broadcast::Broadcast;
pub use error::{ConnectError, Error, UrlError};
pub use idle::Idle;
pub use payload::Padding;
pub use report::{
    BroadcastReport, CloseReport, ConnectReport, Cpu, Deliveries, IdleReport, IdleServer, Latency,
    ServerUsage, Spread,
};
pub use ws::HandshakeError;
