//! The HTTP side of a WebSocket upgrade through hyper 1.x.

use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{Method, Request, Response, StatusCode, Version};
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;

use crate::Refusal;

/// Why a request could not be upgraded to a WebSocket.
///
/// [`status`](Self::status) and [`to_response`](Self::to_response) give the
/// answer to send instead of `101 Switching Protocols`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum UpgradeError {
    /// The request method was not `GET`.
    #[error("a WebSocket handshake must use GET")]
    MethodNotGet,
    /// The request did not ask for a WebSocket upgrade (`Connection: upgrade`
    /// and `Upgrade: websocket`): a plain HTTP request.
    #[error("this endpoint speaks WebSocket only; connect with a WebSocket client")]
    NotWebSocket,
    /// `Sec-WebSocket-Version` was missing or not 13.
    #[error("unsupported WebSocket version; this server speaks version 13")]
    UnsupportedVersion,
    /// `Sec-WebSocket-Key` was missing or malformed.
    #[error("missing or malformed Sec-WebSocket-Key header")]
    BadKey,
    /// The hub was shut down: the server is going away.
    #[error("the server is shutting down")]
    ShuttingDown,
    /// The page that opened the socket is from an origin this server does
    /// not accept (see [`Origins`](crate::Origins)).
    #[error("this origin may not open WebSockets here")]
    ForbiddenOrigin,
    /// The server has as many sessions as it accepts
    /// ([`SessionLimit::max`](crate::SessionLimit::max)).
    #[error("too many connections; try again later")]
    TooManyConnections,
    /// This client address has as many sessions as one address may have
    /// ([`SessionLimit::per_ip`](crate::SessionLimit::per_ip)).
    #[error("too many connections from this address")]
    TooManyFromAddress,
    /// The application refused the handshake
    /// ([`Handler::authenticate`](crate::Handler::authenticate)).
    #[error("{0}")]
    Refused(Refusal),
}

impl UpgradeError {
    /// The HTTP status to answer with.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        match self {
            Self::MethodNotGet => StatusCode::METHOD_NOT_ALLOWED,
            Self::NotWebSocket | Self::UnsupportedVersion => StatusCode::UPGRADE_REQUIRED,
            Self::BadKey => StatusCode::BAD_REQUEST,
            Self::ShuttingDown | Self::TooManyConnections => StatusCode::SERVICE_UNAVAILABLE,
            Self::ForbiddenOrigin => StatusCode::FORBIDDEN,
            Self::TooManyFromAddress => StatusCode::TOO_MANY_REQUESTS,
            Self::Refused(refusal) => refusal.status(),
        }
    }

    /// Every [`reason`](Self::reason), in a fixed order.
    pub const REASONS: [&'static str; 10] = [
        "method",
        "not_websocket",
        "version",
        "key",
        "shutting_down",
        "origin",
        "full",
        "full_address",
        "unauthenticated",
        "forbidden",
    ];

    /// A short, stable name for why the handshake was refused, for logs and
    /// metrics labels: `origin`, `full` (too many connections),
    /// `full_address` (too many from one address), `unauthenticated` (the
    /// handler refused with 401), `forbidden` (it refused with another
    /// status)... see [`REASONS`](Self::REASONS).
    #[must_use]
    pub fn reason(&self) -> &'static str {
        Self::REASONS[self.index()]
    }

    pub(crate) fn index(&self) -> usize {
        match self {
            Self::MethodNotGet => 0,
            Self::NotWebSocket => 1,
            Self::UnsupportedVersion => 2,
            Self::BadKey => 3,
            Self::ShuttingDown => 4,
            Self::ForbiddenOrigin => 5,
            Self::TooManyConnections => 6,
            Self::TooManyFromAddress => 7,
            Self::Refused(refusal) if refusal.status() == StatusCode::UNAUTHORIZED => 8,
            Self::Refused(_) => 9,
        }
    }

    /// A complete response: the status, the headers the RFC asks for, and
    /// this error's message as a short plain-text body.
    #[must_use]
    pub fn to_response<B: From<String>>(&self) -> Response<B> {
        let mut response = Response::new(B::from(format!("{self}\n")));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        match self {
            Self::NotWebSocket | Self::UnsupportedVersion => {
                headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
                headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
                headers.insert(
                    header::SEC_WEBSOCKET_VERSION,
                    HeaderValue::from_static("13"),
                );
            }
            Self::MethodNotGet => {
                headers.insert(header::ALLOW, HeaderValue::from_static("GET"));
            }
            Self::Refused(refusal) => refusal.add_headers(headers),
            _ => {}
        }
        response
    }
}

/// Whether `request` asks for a WebSocket upgrade (whatever else is wrong
/// with it). Useful to route one path to both a page and a socket.
#[must_use]
pub fn is_upgrade_request<B>(request: &Request<B>) -> bool {
    has_token(request.headers(), header::CONNECTION, "upgrade")
        && has_token(request.headers(), header::UPGRADE, "websocket")
}

/// Checks the handshake headers; returns the `Sec-WebSocket-Accept` value.
pub(crate) fn accept_key<B>(request: &Request<B>) -> Result<HeaderValue, UpgradeError> {
    if request.method() != Method::GET {
        return Err(UpgradeError::MethodNotGet);
    }
    if request.version() < Version::HTTP_11 || !is_upgrade_request(request) {
        return Err(UpgradeError::NotWebSocket);
    }
    let headers = request.headers();
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .map(HeaderValue::as_bytes)
        != Some(b"13")
    {
        return Err(UpgradeError::UnsupportedVersion);
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .map(HeaderValue::as_bytes)
        .filter(|key| is_valid_key(key))
        .ok_or(UpgradeError::BadKey)?;
    HeaderValue::from_str(&derive_accept_key(key)).map_err(|_| UpgradeError::BadKey)
}

/// The 101 response that completes the handshake.
pub(crate) fn switching_protocols<B: Default>(accept: HeaderValue) -> Response<B> {
    let mut response = Response::new(B::default());
    *response.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = response.headers_mut();
    headers.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
    headers.insert(header::CONNECTION, HeaderValue::from_static("upgrade"));
    headers.insert(header::SEC_WEBSOCKET_ACCEPT, accept);
    response
}

/// A key is 16 random bytes in base64: 24 characters ending in `==`.
fn is_valid_key(key: &[u8]) -> bool {
    key.len() == 24
        && key.ends_with(b"==")
        && key[..22]
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || *b == b'+' || *b == b'/')
}

fn has_token(headers: &HeaderMap, name: header::HeaderName, token: &str) -> bool {
    headers.get_all(name).iter().any(|value| {
        value
            .to_str()
            .map(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
            .unwrap_or(false)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(headers: &[(&str, &str)]) -> Request<()> {
        let mut builder = Request::get("/ws");
        for (name, value) in headers {
            builder = builder.header(*name, *value);
        }
        builder.body(()).unwrap()
    }

    const GOOD: &[(&str, &str)] = &[
        ("connection", "keep-alive, Upgrade"),
        ("upgrade", "WebSocket"),
        ("sec-websocket-version", "13"),
        ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
    ];

    #[test]
    fn accepts_the_rfc_example() {
        // RFC 6455, section 1.3.
        let accept = accept_key(&request(GOOD)).unwrap();
        assert_eq!(accept, "s3pPLMBiTxaQ9kYGzzhZRbK+xOo=");
    }

    #[test]
    fn refuses_plain_http() {
        assert_eq!(accept_key(&request(&[])), Err(UpgradeError::NotWebSocket));
        let post = Request::post("/ws").body(()).unwrap();
        assert_eq!(accept_key(&post), Err(UpgradeError::MethodNotGet));
    }

    #[test]
    fn refuses_bad_versions_and_keys() {
        let mut headers = GOOD.to_vec();
        headers[2] = ("sec-websocket-version", "8");
        assert_eq!(
            accept_key(&request(&headers)),
            Err(UpgradeError::UnsupportedVersion)
        );
        let mut headers = GOOD.to_vec();
        headers[3] = ("sec-websocket-key", "short");
        assert_eq!(accept_key(&request(&headers)), Err(UpgradeError::BadKey));
        headers.pop();
        assert_eq!(accept_key(&request(&headers)), Err(UpgradeError::BadKey));
    }

    #[test]
    fn error_responses_carry_status_and_headers() {
        let response: Response<String> = UpgradeError::NotWebSocket.to_response();
        assert_eq!(response.status(), StatusCode::UPGRADE_REQUIRED);
        assert_eq!(response.headers()[header::SEC_WEBSOCKET_VERSION], "13");
        assert_eq!(
            response.body(),
            "this endpoint speaks WebSocket only; connect with a WebSocket client\n"
        );
        let response: Response<String> = UpgradeError::ShuttingDown.to_response();
        assert_eq!(response.status(), StatusCode::SERVICE_UNAVAILABLE);
    }
}
