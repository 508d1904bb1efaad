//! Optional sign-in: HMAC-signed tokens (JWT, HS256) checked before the
//! upgrade. The token's subject becomes the client's user id and name.
//!
//! A client presents its token as `?token=` (what browsers can do), an
//! `Authorization: Bearer` header or, where the Origin check is on, a
//! `token` cookie. Without a secret configured, everyone is let in and
//! names are what clients ask for.

use std::fmt;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hub::Metadata;
use hub_ws::{Handshake, Refusal};
use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};

use crate::protocol::valid_name;

/// The query parameter (and cookie) that carries a token.
pub(crate) const TOKEN_PARAM: &str = "token";

/// The shortest secret [`Auth::hs256`] accepts, in bytes: HS256 is only
/// as strong as its key, and a short one can be guessed offline from any
/// token.
pub const MIN_SECRET_LEN: usize = 32;

/// Clock skew tolerated on `exp` and `nbf`.
const LEEWAY: Duration = Duration::from_secs(30);

/// The claims the server reads. `exp` is required; `nbf` is checked when
/// present.
#[derive(Debug, Serialize, Deserialize)]
struct Claims {
    sub: String,
    exp: u64,
}

/// Who may connect: everyone (the default) or holders of a token signed
/// with the server's secret.
#[derive(Clone)]
pub struct Auth {
    tokens: Option<Arc<Tokens>>,
    /// Whether a `token` cookie counts.
    cookie: bool,
}

struct Tokens {
    decoding: DecodingKey,
    encoding: EncodingKey,
    validation: Validation,
}

impl fmt::Debug for Auth {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never print the secret.
        f.debug_struct("Auth")
            .field("tokens", &self.tokens.as_ref().map(|_| "HS256"))
            .field("cookie", &self.cookie)
            .finish()
    }
}

/// Why [`Auth::hs256`] refused a secret.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[non_exhaustive]
pub enum SecretError {
    /// Shorter than [`MIN_SECRET_LEN`] bytes (an empty one included).
    #[error(
        "the token secret (--jwt-secret, CHAT_JWT_SECRET) is {len} bytes long; \
         give at least 32 random bytes, e.g. the output of `openssl rand -base64 32`"
    )]
    TooShort {
        /// The secret's length in bytes.
        len: usize,
    },
}

/// Why [`Auth::issue`] could not make a token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum IssueError {
    /// No secret is configured: the server does not use tokens.
    #[error("no token secret is configured; pass --jwt-secret")]
    NoSecret,
    /// The user id is not a valid chat name.
    #[error("user ids are 1 to 32 characters, without spaces or control characters")]
    BadUser,
    /// Signing failed.
    #[error("could not sign the token")]
    Sign(#[source] jsonwebtoken::errors::Error),
}

impl Default for Auth {
    fn default() -> Self {
        Self {
            tokens: None,
            cookie: true,
        }
    }
}

impl Auth {
    /// Everyone may connect.
    #[must_use]
    pub fn open() -> Self {
        Self::default()
    }

    /// Clients need a token signed (HS256) with `secret`, by query, header
    /// or cookie.
    ///
    /// # Errors
    ///
    /// [`SecretError::TooShort`] for a secret under [`MIN_SECRET_LEN`]
    /// bytes.
    pub fn hs256(secret: &[u8]) -> Result<Self, SecretError> {
        if secret.len() < MIN_SECRET_LEN {
            return Err(SecretError::TooShort { len: secret.len() });
        }
        let mut validation = Validation::new(Algorithm::HS256);
        validation.leeway = LEEWAY.as_secs();
        validation.validate_nbf = true;
        validation.set_required_spec_claims(&["exp", "sub"]);
        Ok(Self {
            tokens: Some(Arc::new(Tokens {
                decoding: DecodingKey::from_secret(secret),
                encoding: EncodingKey::from_secret(secret),
                validation,
            })),
            cookie: true,
        })
    }

    /// Whether a `token` cookie counts (it does by default). Browsers send
    /// cookies with a WebSocket handshake from any page: count them only
    /// where the server refuses pages of other origins, or any page could
    /// act as its visitor (cross-site WebSocket hijacking).
    #[must_use]
    pub fn with_cookie(mut self, cookie: bool) -> Self {
        self.cookie = cookie;
        self
    }

    /// Whether clients need a token.
    #[must_use]
    pub fn is_required(&self) -> bool {
        self.tokens.is_some()
    }

    /// A token for `user`, valid for `ttl` from now.
    ///
    /// # Errors
    ///
    /// [`IssueError`] without a secret, or for a user id that is not a
    /// valid chat name.
    pub fn issue(&self, user: &str, ttl: Duration) -> Result<String, IssueError> {
        let tokens = self.tokens.as_ref().ok_or(IssueError::NoSecret)?;
        if !valid_name(user) {
            return Err(IssueError::BadUser);
        }
        let claims = Claims {
            sub: user.to_owned(),
            exp: unix_now().saturating_add(ttl.as_secs()),
        };
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), &claims, &tokens.encoding)
            .map_err(IssueError::Sign)
    }

    /// Checks a handshake: with tokens required, its token must be valid,
    /// and its subject becomes the user id and the name.
    pub(crate) fn check(
        &self,
        handshake: &Handshake<'_>,
        metadata: Metadata,
    ) -> Result<Metadata, Refusal> {
        let Some(tokens) = &self.tokens else {
            return Ok(metadata);
        };
        let query = handshake.query(TOKEN_PARAM);
        let token = query
            .as_deref()
            .or_else(|| handshake.bearer_token())
            .or_else(|| self.cookie.then(|| handshake.cookie(TOKEN_PARAM)).flatten())
            .ok_or_else(|| {
                Refusal::unauthorized(if self.cookie {
                    "a token is required: pass ?token=, an Authorization: Bearer header \
                     or a token cookie"
                } else {
                    "a token is required: pass ?token= or an Authorization: Bearer header"
                })
            })?;
        let claims = jsonwebtoken::decode::<Claims>(token, &tokens.decoding, &tokens.validation)
            .map_err(|error| {
                // The reason stays in the log; the client learns only that
                // the token was refused.
                // At debug: clients decide how many of these there are (the
                // refusal itself is counted, and logged at a bounded rate).
                tracing::debug!(peer = ?handshake.peer_addr(), %error, "refused a token");
                Refusal::unauthorized("the token is not valid")
            })?
            .claims;
        if !valid_name(&claims.sub) {
            return Err(Refusal::forbidden(
                "the token's subject is not a valid chat name",
            ));
        }
        Ok(metadata.with_user(&*claims.sub).with_name(claims.sub))
    }
}

fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

#[cfg(test)]
mod tests {
    use hyper::StatusCode;

    use super::*;

    fn check(auth: &Auth, uri: &str, headers: &[(&str, &str)]) -> Result<Metadata, Refusal> {
        let mut request = hyper::Request::get(uri);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(()).unwrap();
        auth.check(
            &Handshake::new(request.uri(), request.headers(), None),
            Metadata::new().with_name("asked-for"),
        )
    }

    const SECRET: &[u8] = b"a secret of at least thirty-two bytes";

    #[test]
    fn open_lets_everyone_in_as_they_are() {
        let metadata = check(&Auth::open(), "/ws", &[]).unwrap();
        assert_eq!(metadata.name(), Some("asked-for"));
        assert!(Auth::open()
            .issue("alice", Duration::from_secs(60))
            .is_err());
    }

    #[test]
    fn a_valid_token_names_the_client_wherever_it_is() {
        let auth = Auth::hs256(SECRET).unwrap();
        let token = auth.issue("alice", Duration::from_secs(60)).unwrap();
        let bearer = format!("Bearer {token}");
        let cookie = format!("theme=dark; token={token}");
        for (uri, headers) in [
            (format!("/ws?token={token}"), vec![]),
            ("/ws".to_owned(), vec![("authorization", bearer.as_str())]),
            ("/ws".to_owned(), vec![("cookie", cookie.as_str())]),
        ] {
            let metadata = check(&auth, &uri, &headers).unwrap();
            assert_eq!(metadata.user(), Some("alice"));
            assert_eq!(metadata.name(), Some("alice"));
        }
        // Where the Origin check is off, a cookie does not count: any page
        // could send it.
        let no_cookie = auth.with_cookie(false);
        let refused = check(&no_cookie, "/ws", &[("cookie", cookie.as_str())]).unwrap_err();
        assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
        assert_eq!(
            refused.message(),
            "a token is required: pass ?token= or an Authorization: Bearer header"
        );
        assert!(check(&no_cookie, &format!("/ws?token={token}"), &[]).is_ok());
    }

    #[test]
    fn bad_tokens_are_refused_with_401() {
        let auth = Auth::hs256(SECRET).unwrap();
        let other = Auth::hs256(b"another secret, also 32 bytes long").unwrap();
        let foreign = other.issue("alice", Duration::from_secs(60)).unwrap();
        for uri in [
            "/ws".to_owned(),
            "/ws?token=".to_owned(),
            "/ws?token=not.a.jwt".to_owned(),
            format!("/ws?token={foreign}"),
        ] {
            let refused = check(&auth, &uri, &[]).unwrap_err();
            assert_eq!(refused.status(), StatusCode::UNAUTHORIZED, "{uri}");
        }
        assert_eq!(
            check(&auth, "/ws", &[]).unwrap_err().message(),
            "a token is required: pass ?token=, an Authorization: Bearer header or a token cookie"
        );
    }

    #[test]
    fn secrets_are_not_printed() {
        let auth = Auth::hs256(b"hunter2 hunter2 hunter2 hunter2 h").unwrap();
        assert!(!format!("{auth:?}").contains("hunter2"));
    }

    #[test]
    fn short_secrets_are_refused() {
        for secret in [&b""[..], b"secret", &[7; MIN_SECRET_LEN - 1]] {
            assert_eq!(
                Auth::hs256(secret).unwrap_err(),
                SecretError::TooShort { len: secret.len() }
            );
        }
        assert!(Auth::hs256(&[7; MIN_SECRET_LEN]).is_ok());
    }
}
