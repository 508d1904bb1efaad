//! Limits and timers of a WebSocket session.

use std::time::Duration;

use crate::admission::SessionLimit;
use crate::{Origins, RateLimit};

/// Longest accepted timer; longer ones are lowered to it.
const MAX_TIMER: Duration = Duration::from_secs(365 * 24 * 60 * 60);

/// Default largest message and frame: 64 KiB.
pub const DEFAULT_MAX_MESSAGE_SIZE: usize = 64 << 10;

/// Default largest HTTP request head that
/// [`WsServer::serve_tcp`](crate::WsServer::serve_tcp) reads: 16 KiB.
const DEFAULT_MAX_REQUEST_HEAD: usize = 16 << 10;

/// Limits and timers for every session a [`WsServer`](crate::WsServer) serves.
///
/// ```
/// use std::time::Duration;
/// use hub_ws::Config;
///
/// let config = Config::default()
///     .max_message_size(16 * 1024)
///     .ping_interval(Duration::from_secs(10))
///     .idle_timeout(Duration::from_secs(30));
/// # let _ = config;
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct Config {
    pub(crate) max_message_size: usize,
    pub(crate) max_frame_size: usize,
    pub(crate) ping_interval: Duration,
    pub(crate) idle_timeout: Duration,
    pub(crate) write_timeout: Duration,
    pub(crate) close_timeout: Duration,
    pub(crate) handshake_timeout: Duration,
    pub(crate) max_request_head: usize,
    pub(crate) origins: Origins,
    /// Whether clients reach the server over TLS, if known.
    pub(crate) tls: Option<bool>,
    /// Shared on purpose, by the servers given the same one; without one,
    /// each server counts its own sessions, without a limit.
    pub(crate) session_limit: Option<SessionLimit>,
    pub(crate) rate_limit: Option<RateLimit>,
    pub(crate) compression: bool,
    pub(crate) histograms: bool,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            max_message_size: DEFAULT_MAX_MESSAGE_SIZE,
            max_frame_size: DEFAULT_MAX_MESSAGE_SIZE,
            ping_interval: Duration::from_secs(30),
            idle_timeout: Duration::from_secs(75),
            write_timeout: Duration::from_secs(10),
            close_timeout: Duration::from_secs(3),
            handshake_timeout: Duration::from_secs(10),
            max_request_head: DEFAULT_MAX_REQUEST_HEAD,
            origins: Origins::default(),
            tls: None,
            session_limit: None,
            rate_limit: None,
            compression: false,
            histograms: true,
        }
    }
}

impl Config {
    /// Largest message accepted from a client, in bytes (default 64 KiB).
    /// A larger one closes the connection with 1009.
    pub fn max_message_size(mut self, bytes: usize) -> Self {
        self.max_message_size = bytes.max(1);
        self
    }

    /// Largest single frame accepted from a client, in bytes (default 64 KiB).
    /// A larger one closes the connection with 1009.
    pub fn max_frame_size(mut self, bytes: usize) -> Self {
        self.max_frame_size = bytes.max(1);
        self
    }

    /// How often the server pings an otherwise quiet client (default 30 s).
    pub fn ping_interval(mut self, interval: Duration) -> Self {
        self.ping_interval = interval.clamp(Duration::from_millis(1), MAX_TIMER);
        self
    }

    /// How long a client may send nothing at all, pongs included, before it
    /// is closed with 1001 (default 75 s). Keep it above the ping interval.
    pub fn idle_timeout(mut self, timeout: Duration) -> Self {
        self.idle_timeout = timeout.clamp(Duration::from_millis(1), MAX_TIMER);
        self
    }

    /// How long one write to a client may take before the client is
    /// considered stalled and dropped (default 10 s).
    pub fn write_timeout(mut self, timeout: Duration) -> Self {
        self.write_timeout = timeout.clamp(Duration::from_millis(1), MAX_TIMER);
        self
    }

    /// How long to wait for the client's side of the close handshake
    /// (default 3 s).
    pub fn close_timeout(mut self, timeout: Duration) -> Self {
        self.close_timeout = timeout.min(MAX_TIMER);
        self
    }

    /// How long [`WsServer::serve_tcp`](crate::WsServer::serve_tcp) waits
    /// for the HTTP handshake (default 10 s).
    pub fn handshake_timeout(mut self, timeout: Duration) -> Self {
        self.handshake_timeout = timeout.clamp(Duration::from_millis(1), MAX_TIMER);
        self
    }

    /// Largest HTTP request head (request line and headers) that
    /// [`WsServer::serve_tcp`](crate::WsServer::serve_tcp) reads, in bytes
    /// (default 16 KiB). A longer one is answered with 431 and the
    /// connection closed, so a client that never finishes its request holds
    /// no more than this. Servers that run hyper themselves set the same
    /// limit with `http1::Builder::max_header_size`.
    pub fn max_request_head(mut self, bytes: usize) -> Self {
        self.max_request_head = bytes.max(1);
        self
    }

    /// Whether clients reach this server over TLS (`https://` pages,
    /// `wss://`), for the same-origin check: a page of the other scheme is
    /// another origin. Unset (the default), either scheme passes, as for a
    /// plain server behind a proxy that terminates TLS. Either way, a
    /// proxy's `X-Forwarded-Proto` header, where present, says which
    /// scheme the client used.
    pub fn served_over_tls(mut self, tls: bool) -> Self {
        self.tls = Some(tls);
        self
    }

    /// Which origins may open sessions (default: the server's own, and
    /// clients that send no `Origin`; see [`Origins`]). A refused handshake
    /// gets 403.
    pub fn origins(mut self, origins: Origins) -> Self {
        self.origins = origins;
        self
    }

    /// Limits the sessions open at once (default: no limit), counted
    /// across every server given `limit` or a clone of it; see
    /// [`SessionLimit`].
    pub fn session_limit(mut self, limit: SessionLimit) -> Self {
        self.session_limit = Some(limit);
        self
    }

    /// Limits how fast each client may send messages (default: no limit);
    /// see [`RateLimit`].
    pub fn rate_limit(mut self, limit: RateLimit) -> Self {
        self.rate_limit = Some(limit);
        self
    }

    /// Offers `permessage-deflate` (RFC 7692) to clients that ask for it
    /// (default: off). Off, the server answers without the extension.
    ///
    /// On, a broadcast is deflated once for every compressing socket, and
    /// its compressed frame shared by them, as its plain frame is by the
    /// others. Sockets that got the same messages in the same order (the
    /// members of a room) share a window: each message is deflated once
    /// against the messages before it, which roughly halves a chat line
    /// deflated on its own. A socket joins such a chain a few kilobytes
    /// after it connects or falls out of step; until then, and for
    /// clients that ask for `server_no_context_takeover`, messages are
    /// deflated on their own. Messages under 64 bytes, and those deflate
    /// would not shrink outside a chain, go out as they are.
    ///
    /// Client messages are inflated with the context the client keeps
    /// (from scratch for each message if it offered
    /// `client_no_context_takeover`, which is then agreed and costs the
    /// socket no memory between messages), and never past
    /// [`max_message_size`](Self::max_message_size) (1009).
    ///
    /// Only the built-in codec compresses ([`WsServer::upgrade`](crate::WsServer::upgrade)
    /// and [`WsServer::serve_tcp`](crate::WsServer::serve_tcp)).
    pub fn compression(mut self, on: bool) -> Self {
        self.compression = on;
        self
    }

    /// Whether to measure the distributions in
    /// [`WsStats`](crate::WsStats) (on by default): handshake times,
    /// message sizes, delivery latency and queue waits. Off, they stay
    /// empty and the counters are kept as ever. On, they cost a clock read
    /// and a few relaxed atomic additions per batch of frames written
    /// (BENCHMARKS.md measures it).
    pub fn histograms(mut self, on: bool) -> Self {
        self.histograms = on;
        self
    }
}
