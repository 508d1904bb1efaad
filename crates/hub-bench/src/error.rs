//! What can go wrong: the target URL ([`UrlError`]), one client's
//! connection ([`ConnectError`]) and a whole run ([`Error`]).

use std::io;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use tokio_tungstenite::tungstenite;

use crate::ws::HandshakeError;

/// Why a target URL was refused.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum UrlError {
    /// Not a URL at all.
    #[error("{url:?} is not a valid URL; expected e.g. ws://127.0.0.1:8000/ws")]
    Invalid {
        /// The URL given.
        url: String,
        /// What the parser said.
        #[source]
        source: tungstenite::http::uri::InvalidUri,
    },
    /// A scheme other than `ws://` (TLS is not supported).
    #[error("{url:?} is not a ws:// URL; expected e.g. ws://127.0.0.1:8000/ws")]
    Scheme {
        /// The URL given.
        url: String,
    },
    /// No host in the URL.
    #[error("{url:?} has no host; expected e.g. ws://127.0.0.1:8000/ws")]
    NoHost {
        /// The URL given.
        url: String,
    },
    /// The host is not this machine.
    #[error(
        "{host} is not a loopback address: hub-bench only loads servers on this \
         machine (127.0.0.0/8, ::1 or localhost)"
    )]
    NotLoopback {
        /// The host of the URL.
        host: String,
    },
}

/// Why one client could not connect.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ConnectError {
    /// The TCP connection failed (refused, out of ports or file descriptors).
    #[error("TCP connection from {from} failed")]
    Tcp {
        /// The local address the client was bound to.
        from: IpAddr,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The server refused or botched the WebSocket handshake.
    #[error("WebSocket handshake failed")]
    Handshake(#[source] HandshakeError),
    /// No answer in time.
    #[error("no WebSocket handshake within {0:?}")]
    TimedOut(Duration),
}

impl ConnectError {
    /// What to do about it, when there is something obvious.
    #[must_use]
    pub fn advice(&self) -> Option<&'static str> {
        match self {
            Self::Tcp { source, .. } => match (source.kind(), source.raw_os_error()) {
                (io::ErrorKind::ConnectionRefused, _) => {
                    Some("is the server running at this address?")
                }
                // EMFILE, ENFILE
                (_, Some(24 | 23)) => Some("out of file descriptors: raise `ulimit -n`"),
                (io::ErrorKind::AddrNotAvailable | io::ErrorKind::AddrInUse, _) => {
                    Some("out of local ports: spread over more --source-ips")
                }
                _ => None,
            },
            Self::Handshake(HandshakeError::Status { status: 503 }) => {
                Some("the server is full: raise its connection limit")
            }
            Self::Handshake(HandshakeError::Status { status: 429 }) => {
                Some("the server limits clients per address: use more --source-ips")
            }
            Self::Handshake(_) => None,
            Self::TimedOut(_) => Some("the server is too busy accepting: retry with fewer clients"),
        }
    }
}

/// Why a run could not be carried out (a run that was carried out reports
/// its losses in its report instead).
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The target URL is not usable.
    #[error(transparent)]
    Url(#[from] UrlError),
    /// An option is out of range.
    #[error("--{option}: {problem}")]
    Option {
        /// The option's flag, without `--`.
        option: &'static str,
        /// What is wrong with it and what would do.
        problem: String,
    },
    /// The payload size cannot hold the marker.
    #[error(
        "--size {size} is too small: the marker takes {needed} bytes with these \
         --senders and --messages; use --size {needed} or more"
    )]
    SizeTooSmall {
        /// The size asked for.
        size: usize,
        /// The smallest size that works.
        needed: usize,
    },
    /// A sender could not connect, so the run cannot send what it should.
    #[error("sender {index} could not connect")]
    SenderConnect {
        /// The sender's index.
        index: usize,
        /// Why.
        #[source]
        source: ConnectError,
    },
    /// Not every client heard every sender's warm-up in time.
    #[error(
        "only {ready} of {connected} clients received every sender's warm-up within \
         {timeout:?}: the server does not broadcast to all of them; check its logs, \
         or retry with fewer --clients or a longer --timeout"
    )]
    WarmUp {
        /// Clients that heard every sender.
        ready: usize,
        /// Clients connected.
        connected: usize,
        /// The --timeout.
        timeout: Duration,
    },
    /// The server's process cannot be read.
    #[error(
        "cannot read /proc/{pid}: is --server-pid the id of a running process on this machine?"
    )]
    ServerPid {
        /// The process id given.
        pid: u32,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The bare server cannot listen on its address.
    #[error("cannot listen on {addr}: is the port free?")]
    Listen {
        /// The address asked for.
        addr: std::net::SocketAddr,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The JSON report could not be written.
    #[error("cannot write the JSON report to {}", path.display())]
    WriteJson {
        /// Where it should have gone.
        path: PathBuf,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
}
