//! What the application sees of a handshake before it is accepted, and how
//! it refuses one.

use std::borrow::Cow;
use std::fmt;
use std::net::SocketAddr;

use hyper::header::{self, HeaderMap, HeaderValue};
use hyper::{StatusCode, Uri};

/// A WebSocket handshake request, as [`Handler::authenticate`] sees it:
/// the request's URI and headers and the client's address, before any
/// session exists.
///
/// [`Handler::authenticate`]: crate::Handler::authenticate
///
/// ```
/// use hub_ws::Handshake;
///
/// let request = hyper::Request::get("/ws?token=abc%20d")
///     .header("cookie", "theme=dark; session=s3cr3t")
///     .header("authorization", "Bearer t0ken")
///     .body(())
///     .unwrap();
/// let handshake = Handshake::new(request.uri(), request.headers(), None);
/// assert_eq!(handshake.query("token").as_deref(), Some("abc d"));
/// assert_eq!(handshake.cookie("session"), Some("s3cr3t"));
/// assert_eq!(handshake.bearer_token(), Some("t0ken"));
/// ```
#[derive(Clone, Copy, Debug)]
pub struct Handshake<'a> {
    uri: &'a Uri,
    headers: &'a HeaderMap,
    peer: Option<SocketAddr>,
}

impl<'a> Handshake<'a> {
    /// A view of a request's URI and headers, from `peer` if known.
    #[must_use]
    pub fn new(uri: &'a Uri, headers: &'a HeaderMap, peer: Option<SocketAddr>) -> Self {
        Self { uri, headers, peer }
    }

    /// The request's URI (path and query).
    #[must_use]
    pub fn uri(&self) -> &'a Uri {
        self.uri
    }

    /// The request's headers.
    #[must_use]
    pub fn headers(&self) -> &'a HeaderMap {
        self.headers
    }

    /// The client's address, when the transport knows it.
    #[must_use]
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// The first value of a query parameter, percent-decoded. Browsers
    /// cannot set headers on a WebSocket handshake, so a token often comes
    /// this way (or in a cookie).
    #[must_use]
    pub fn query(&self, name: &str) -> Option<Cow<'a, str>> {
        let query = self.uri.query()?;
        form_urlencoded::parse(query.as_bytes())
            .find(|(key, _)| key == name)
            .map(|(_, value)| value)
    }

    /// The value of a cookie sent with the request.
    #[must_use]
    pub fn cookie(&self, name: &str) -> Option<&'a str> {
        self.headers
            .get_all(header::COOKIE)
            .iter()
            .filter_map(|value| value.to_str().ok())
            .flat_map(|value| value.split(';'))
            .filter_map(|pair| pair.trim().split_once('='))
            .find(|(key, _)| *key == name)
            .map(|(_, value)| value.trim_matches('"'))
    }

    /// The token of an `Authorization: Bearer <token>` header.
    #[must_use]
    pub fn bearer_token(&self) -> Option<&'a str> {
        let value = self.headers.get(header::AUTHORIZATION)?.to_str().ok()?;
        let (scheme, token) = value.trim().split_once(' ')?;
        scheme
            .eq_ignore_ascii_case("bearer")
            .then(|| token.trim())
            .filter(|token| !token.is_empty())
    }
}

/// A handshake refused by the application: the HTTP status and the short
/// message the client gets instead of `101 Switching Protocols`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refusal {
    status: StatusCode,
    message: Cow<'static, str>,
}

impl Refusal {
    /// A refusal with `status` (a client or server error; any other status
    /// becomes `403 Forbidden`) and a message for the client. Do not put
    /// secrets or the reason a credential failed in detail in it.
    #[must_use]
    pub fn new(status: StatusCode, message: impl Into<Cow<'static, str>>) -> Self {
        let status = if status.is_client_error() || status.is_server_error() {
            status
        } else {
            StatusCode::FORBIDDEN
        };
        Self {
            status,
            message: message.into(),
        }
    }

    /// `401 Unauthorized`: the client sent no credentials, or ones that are
    /// not valid (expired, badly signed...). The response asks for a bearer
    /// token.
    #[must_use]
    pub fn unauthorized(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::UNAUTHORIZED, message)
    }

    /// `403 Forbidden`: the client is known but may not connect.
    #[must_use]
    pub fn forbidden(message: impl Into<Cow<'static, str>>) -> Self {
        Self::new(StatusCode::FORBIDDEN, message)
    }

    /// The HTTP status to answer with.
    #[must_use]
    pub fn status(&self) -> StatusCode {
        self.status
    }

    /// The message for the client.
    #[must_use]
    pub fn message(&self) -> &str {
        &self.message
    }

    /// Headers the status calls for: a 401 names the scheme it expects.
    pub(crate) fn add_headers(&self, headers: &mut HeaderMap) {
        if self.status == StatusCode::UNAUTHORIZED {
            headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
    }
}

impl fmt::Display for Refusal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handshake_of(request: &hyper::Request<()>) -> Handshake<'_> {
        Handshake::new(request.uri(), request.headers(), None)
    }

    #[test]
    fn reads_query_parameters() {
        let request = hyper::Request::get("/ws?a=1&token=x%2By&token=second&plus=a+b")
            .body(())
            .unwrap();
        let handshake = handshake_of(&request);
        assert_eq!(handshake.query("token").as_deref(), Some("x+y"));
        assert_eq!(handshake.query("plus").as_deref(), Some("a b"));
        assert_eq!(handshake.query("missing"), None);
        let bare = hyper::Request::get("/ws").body(()).unwrap();
        assert_eq!(handshake_of(&bare).query("token"), None);
    }

    #[test]
    fn reads_cookies_across_headers() {
        let request = hyper::Request::get("/ws")
            .header("cookie", "a=1; b=2")
            .header("cookie", "token=\"quoted\"")
            .body(())
            .unwrap();
        let handshake = handshake_of(&request);
        assert_eq!(handshake.cookie("b"), Some("2"));
        assert_eq!(handshake.cookie("token"), Some("quoted"));
        assert_eq!(handshake.cookie("c"), None);
    }

    #[test]
    fn reads_bearer_tokens_only() {
        for (value, token) in [
            ("Bearer abc", Some("abc")),
            ("bearer  abc ", Some("abc")),
            ("Basic dXNlcjpwYXNz", None),
            ("Bearer ", None),
            ("Bearer", None),
        ] {
            let request = hyper::Request::get("/ws")
                .header("authorization", value)
                .body(())
                .unwrap();
            assert_eq!(handshake_of(&request).bearer_token(), token, "{value:?}");
        }
    }

    #[test]
    fn refusals_are_errors() {
        assert_eq!(
            Refusal::unauthorized("no").status(),
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            Refusal::new(StatusCode::OK, "odd").status(),
            StatusCode::FORBIDDEN
        );
        assert_eq!(
            Refusal::new(StatusCode::TOO_MANY_REQUESTS, "later").to_string(),
            "later"
        );
    }
}
