//! What the session driver reads and writes, whatever carries it (this
//! crate's own framing, or axum's socket): [`Frame`]s in, [`Frame`]s out,
//! read errors sorted by the close code they deserve.

use bytes::Bytes;
use hub::Message;

use crate::Close;

/// One WebSocket message or control frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    Message(Message),
    Ping(Bytes),
    Pong(Bytes),
    Close(Option<Close>),
}

/// Why reading from a client failed, by the close code it deserves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReadError {
    /// 1009.
    TooBig,
    /// 1007.
    InvalidUtf8,
    /// 1002.
    Protocol,
    /// The connection is gone; no close frame can be sent.
    Lost,
    /// 1011.
    #[cfg_attr(not(any(feature = "axum", feature = "tungstenite")), allow(dead_code))]
    Other,
}

/// The read buffer of a socket framed by tungstenite (axum's, or one from
/// tokio-tungstenite): small keeps idle connections cheap; it grows for
/// large messages as needed.
#[cfg(any(feature = "axum", feature = "tungstenite"))]
pub(crate) const READ_BUFFER: usize = 4 << 10;
/// Such a socket flushes once this much is buffered.
#[cfg(any(feature = "axum", feature = "tungstenite"))]
pub(crate) const WRITE_BUFFER: usize = 64 << 10;

/// What a tungstenite error means for the session, and its close code.
#[cfg(any(feature = "axum", feature = "tungstenite"))]
impl From<&tokio_tungstenite::tungstenite::Error> for ReadError {
    fn from(error: &tokio_tungstenite::tungstenite::Error) -> Self {
        use tokio_tungstenite::tungstenite::error::{Error, ProtocolError};
        match error {
            Error::Capacity(_) => Self::TooBig,
            Error::Utf8(_) => Self::InvalidUtf8,
            Error::Protocol(ProtocolError::ResetWithoutClosingHandshake) => Self::Lost,
            Error::Protocol(_) => Self::Protocol,
            Error::ConnectionClosed | Error::AlreadyClosed | Error::Io(_) => Self::Lost,
            _ => Self::Other,
        }
    }
}
