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
    #[cfg_attr(not(feature = "axum"), allow(dead_code))]
    Other,
}
