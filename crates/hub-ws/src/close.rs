//! Close codes and how a session ended.

use std::borrow::Cow;
use std::fmt;

/// A WebSocket close code (RFC 6455, section 7.4).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct CloseCode(pub u16);

impl CloseCode {
    /// 1000: the purpose of the connection was fulfilled.
    pub const NORMAL: Self = Self(1000);
    /// 1001: the server is going away (shutting down) or the peer went idle.
    pub const GOING_AWAY: Self = Self(1001);
    /// 1002: the peer broke the WebSocket protocol.
    pub const PROTOCOL: Self = Self(1002);
    /// 1003: the peer sent a kind of data the endpoint does not accept.
    pub const UNSUPPORTED: Self = Self(1003);
    /// 1007: a text message was not valid UTF-8.
    pub const INVALID_DATA: Self = Self(1007);
    /// 1008: the peer violated the endpoint's policy.
    pub const POLICY: Self = Self(1008);
    /// 1009: a message or frame was larger than allowed.
    pub const TOO_BIG: Self = Self(1009);
    /// 1011: the server met an unexpected condition.
    pub const INTERNAL: Self = Self(1011);
    /// 1013: try again later: the client fell behind and should reconnect.
    pub const TRY_AGAIN_LATER: Self = Self(1013);
}

impl CloseCode {
    /// Whether a server may send this code: 1000-1003, 1007-1014 and the
    /// application ranges 3000-4999. Others (1005, 1006, 1015...) are
    /// reserved by RFC 6455.
    #[must_use]
    pub fn is_sendable(self) -> bool {
        matches!(self.0, 1000..=1003 | 1007..=1014 | 3000..=4999)
    }

    /// This code if it may be sent, otherwise 1011.
    pub(crate) fn sendable(self) -> Self {
        if self.is_sendable() {
            self
        } else {
            Self::INTERNAL
        }
    }
}

impl fmt::Display for CloseCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.0, f)
    }
}

impl From<CloseCode> for u16 {
    fn from(code: CloseCode) -> Self {
        code.0
    }
}

/// A close frame the server sends: a code and a short reason for people.
///
/// Return one from [`Handler::on_message`](crate::Handler::on_message) to
/// close the connection. A code that may not be sent (see
/// [`CloseCode::is_sendable`]) goes out as 1011.
///
/// ```
/// use hub_ws::{Close, CloseCode};
///
/// let close = Close::new(CloseCode::POLICY, "no spam");
/// assert_eq!(close.code(), CloseCode::POLICY);
/// assert_eq!(close.reason(), "no spam");
/// ```
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Close {
    code: CloseCode,
    reason: Cow<'static, str>,
}

/// Close reasons must fit a control frame: 125 bytes minus the code.
const MAX_REASON: usize = 123;

impl Close {
    /// A close frame. A reason longer than a control frame allows (123
    /// bytes) is cut at a character boundary.
    #[must_use]
    pub fn new(code: CloseCode, reason: impl Into<Cow<'static, str>>) -> Self {
        let mut reason = reason.into();
        if reason.len() > MAX_REASON {
            let mut end = MAX_REASON;
            while !reason.is_char_boundary(end) {
                end -= 1;
            }
            reason.to_mut().truncate(end);
        }
        Self { code, reason }
    }

    /// The close code.
    #[must_use]
    pub fn code(&self) -> CloseCode {
        self.code
    }

    /// The reason.
    #[must_use]
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for Close {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} ({})", self.code, self.reason)
    }
}

/// How a WebSocket session ended; given to
/// [`Handler::on_close`](crate::Handler::on_close) and returned by the serve
/// methods.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Ended {
    /// The client sent a close frame (`code` is `None` if it had no code).
    ClientClosed {
        /// The client's close code.
        code: Option<CloseCode>,
        /// The client's close reason.
        reason: String,
    },
    /// The server closed the connection with this frame: a limit was
    /// exceeded, the client went idle or fell behind, the hub shut down or
    /// disconnected it, or the handler asked to close.
    ServerClosed(Close),
    /// The connection dropped without a close handshake (reset, end of
    /// stream or I/O error).
    Lost,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_reasons_are_cut_on_a_char_boundary() {
        let close = Close::new(CloseCode::NORMAL, "é".repeat(100));
        assert!(close.reason().len() <= MAX_REASON);
        assert_eq!(close.reason().len(), 122);
        assert_eq!(Close::new(CloseCode::NORMAL, "ok").reason(), "ok");
    }

    #[test]
    fn reserved_codes_are_not_sent() {
        for code in [999, 1004, 1005, 1006, 1015, 2000, 5000] {
            assert!(!CloseCode(code).is_sendable(), "{code}");
            assert_eq!(CloseCode(code).sendable(), CloseCode::INTERNAL);
        }
        for code in [1000, 1003, 1007, 1013, 3000, 4999] {
            assert_eq!(CloseCode(code).sendable(), CloseCode(code));
        }
    }
}
