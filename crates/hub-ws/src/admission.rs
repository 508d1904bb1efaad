//! Who may open a session: the Origin check and connection limits, decided
//! before the upgrade.

use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use hyper::header::{self, HeaderMap};

use crate::UpgradeError;

/// Which `Origin` headers a handshake may carry.
///
/// Browsers send `Origin` on every WebSocket handshake and let any page
/// open a socket to any server, with the user's cookies: without this
/// check, any web page could talk to the server as its visitor
/// (cross-site WebSocket hijacking). Clients that are not browsers send no
/// `Origin` and are always let in.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origins {
    /// The default (with no patterns): the origin must be the server's own
    /// (its host and port those of the request's `Host`, default ports
    /// included, and its scheme the one clients reach the server by, where
    /// that is known: see
    /// [`Config::served_over_tls`](crate::Config::served_over_tls)), or
    /// match one of these patterns: an exact origin
    /// (`https://app.example.com`) or a wildcard subdomain
    /// (`*.example.com`, any scheme and port). Add patterns with
    /// [`allow`](Self::allow).
    SameOrAllowed(Vec<String>),
    /// Any origin (for servers that authenticate otherwise).
    Any,
}

impl Default for Origins {
    fn default() -> Self {
        Self::SameOrAllowed(Vec::new())
    }
}

impl Origins {
    /// Also lets in handshakes from `pattern`: an exact origin
    /// (`https://app.example.com`) or a wildcard subdomain
    /// (`*.example.com`). Spaces around the pattern and a trailing `/` do
    /// not count; an empty pattern allows nothing, and so does any pattern
    /// added to [`Origins::Any`], which lets everyone in already.
    ///
    /// ```
    /// use hub_ws::{Config, Origins};
    ///
    /// let origins = Origins::default()
    ///     .allow("https://app.example.com")
    ///     .allow("*.example.org");
    /// let config = Config::default().origins(origins);
    /// # let _ = config;
    /// ```
    #[must_use]
    pub fn allow(mut self, pattern: impl Into<String>) -> Self {
        let pattern = pattern.into();
        let pattern = pattern.trim().trim_end_matches('/');
        if let (Self::SameOrAllowed(allowed), false) = (&mut self, pattern.is_empty()) {
            allowed.push(pattern.to_owned());
        }
        self
    }
}

/// Checks the `Origin` of a handshake. `tls` says whether clients reach
/// the server over TLS, if that is known.
pub(crate) fn check_origin(
    headers: &HeaderMap,
    origins: &Origins,
    tls: Option<bool>,
) -> Result<(), UpgradeError> {
    let allowed = match origins {
        Origins::Any => return Ok(()),
        Origins::SameOrAllowed(allowed) => allowed,
    };
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().map_err(|_| UpgradeError::ForbiddenOrigin)?;
    let authority = origin
        .split_once("://")
        .map_or("", |(_, rest)| rest)
        .trim_end_matches('/');
    if is_same_origin(origin, headers, tls)
        || allowed
            .iter()
            .any(|pattern| matches(pattern, origin, authority))
    {
        Ok(())
    } else {
        Err(UpgradeError::ForbiddenOrigin)
    }
}

/// Whether `origin` is the server's own: the same scheme (where known),
/// host and port (default ports included) as the request.
fn is_same_origin(origin: &str, headers: &HeaderMap, tls: Option<bool>) -> bool {
    let Some((scheme, authority)) = origin.split_once("://") else {
        return false;
    };
    let secure = if scheme.eq_ignore_ascii_case("https") {
        true
    } else if scheme.eq_ignore_ascii_case("http") {
        false
    } else {
        return false;
    };
    // A proxy in front that terminates TLS says how the client came in; a
    // page cannot set this header on a WebSocket handshake.
    let forwarded = headers
        .get("x-forwarded-proto")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.split(',').next())
        .map(|proto| proto.trim().eq_ignore_ascii_case("https"));
    if forwarded.or(tls).is_some_and(|tls| tls != secure) {
        return false;
    }
    let Some(host) = headers.get(header::HOST).and_then(|h| h.to_str().ok()) else {
        return false;
    };
    // Without a port, each means the scheme's default (the Host's scheme
    // is the origin's, or the check above refused it).
    let default_port = if secure { 443 } else { 80 };
    match (
        host_and_port(authority.trim_end_matches('/'), default_port),
        host_and_port(host, default_port),
    ) {
        (Some((a, port_a)), Some((b, port_b))) => port_a == port_b && a.eq_ignore_ascii_case(b),
        _ => false,
    }
}

/// The host and port of an authority (`host`, `host:port`, `[v6]:port`).
fn host_and_port(authority: &str, default_port: u16) -> Option<(&str, u16)> {
    if authority.is_empty() || authority.contains(['/', '@', '?', '#', ' ']) {
        return None;
    }
    let (host, port) = match authority.strip_prefix('[') {
        Some(rest) => {
            let (host, after) = rest.split_once(']')?;
            // Brackets hold an IPv6 address, nothing else: `[e]` is not the
            // host `e`.
            host.parse::<std::net::Ipv6Addr>().ok()?;
            match after {
                "" => (host, None),
                _ => (host, Some(after.strip_prefix(':')?)),
            }
        }
        None => match authority.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (authority, None),
        },
    };
    let port = match port {
        None => default_port,
        Some(port) => port.parse().ok()?,
    };
    (!host.is_empty()).then_some((host, port))
}

fn matches(pattern: &str, origin: &str, authority: &str) -> bool {
    match pattern.trim().strip_prefix("*.") {
        Some(domain) => {
            let host = authority
                .rsplit_once(':')
                .map_or(authority, |(host, _)| host);
            host.len() > domain.len()
                && host
                    .to_ascii_lowercase()
                    .ends_with(&format!(".{}", domain.to_ascii_lowercase()))
        }
        None => {
            let pattern = pattern.trim().trim_end_matches('/');
            !pattern.is_empty() && pattern.eq_ignore_ascii_case(origin)
        }
    }
}

/// The address a client is counted under: IPv6 clients by their /64 (one
/// subscriber's network, which hands its hosts any address in it), IPv4
/// clients (mapped into IPv6 or not) by their address.
fn counted_as(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V4(_) => ip,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => IpAddr::V4(v4),
            None => IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !u128::from(u64::MAX))),
        },
    }
}

/// How many sessions may be open at once, counted across every server
/// configured with this limit or a clone of it: one limit covers several
/// endpoints when they are given the same one, and only then.
///
/// ```
/// use hub::Hub;
/// use hub_ws::{Config, SessionLimit, WsServer};
/// # #[derive(Clone)] struct Chat;
/// # impl hub_ws::Handler for Chat {
/// #     async fn on_message(&self, _: &hub_ws::Session, _: hub::Message) -> Result<(), hub_ws::Close> { Ok(()) }
/// # }
///
/// // 10 000 sessions in all over both endpoints, 50 from one address.
/// let limit = SessionLimit::new().max(10_000).per_ip(50);
/// let config = Config::default().session_limit(limit.clone());
/// let chat = WsServer::with_config(Hub::new(), Chat, config.clone());
/// let echo = WsServer::with_config(Hub::new(), Chat, config);
/// assert_eq!(limit.open(), 0);
/// # let _ = (chat, echo);
/// ```
#[derive(Clone, Debug, Default)]
#[must_use]
pub struct SessionLimit {
    max: Option<usize>,
    per_ip: Option<usize>,
    gate: Arc<Gate>,
}

impl SessionLimit {
    /// No limit yet: sessions are counted, and none is refused.
    pub fn new() -> Self {
        Self::default()
    }

    /// At most this many sessions at once; more are refused with 503
    /// before the upgrade.
    pub fn max(mut self, sessions: usize) -> Self {
        self.max = Some(sessions);
        self
    }

    /// At most this many sessions at once from one client address (an
    /// IPv6 client's /64); more are refused with 429 before the upgrade.
    pub fn per_ip(mut self, sessions: usize) -> Self {
        self.per_ip = Some(sessions);
        self
    }

    /// Sessions open now under this limit, all servers sharing it together.
    #[must_use]
    pub fn open(&self) -> usize {
        self.gate.open()
    }

    /// Takes a place, if the limits allow one more session (from `ip`).
    pub(crate) fn admit(&self, ip: Option<IpAddr>) -> Result<Admitted, UpgradeError> {
        self.gate.admit(ip, self.max, self.per_ip)
    }
}

/// Counts open sessions, in all and by client address.
#[derive(Debug, Default)]
pub(crate) struct Gate {
    open: AtomicUsize,
    by_ip: Mutex<HashMap<IpAddr, usize>>,
}

/// A place taken in the [`Gate`]; given back when dropped.
#[derive(Debug)]
pub(crate) struct Admitted {
    gate: Arc<Gate>,
    ip: Option<IpAddr>,
}

impl Gate {
    /// Takes a place, if the limits allow one more session (from `ip`).
    pub(crate) fn admit(
        self: &Arc<Self>,
        ip: Option<IpAddr>,
        max: Option<usize>,
        max_per_ip: Option<usize>,
    ) -> Result<Admitted, UpgradeError> {
        let open = self.open.fetch_add(1, Ordering::AcqRel) + 1;
        let mut admitted = Admitted {
            gate: Arc::clone(self),
            ip: None,
        };
        if max.is_some_and(|max| open > max) {
            return Err(UpgradeError::TooManyConnections);
        }
        let (Some(ip), Some(limit)) = (ip, max_per_ip) else {
            return Ok(admitted);
        };
        let ip = counted_as(ip);
        let mut by_ip = self.by_ip.lock().unwrap_or_else(PoisonError::into_inner);
        // Looked up before any entry is made: a refused address leaves none.
        if by_ip.get(&ip).copied().unwrap_or(0) >= limit {
            return Err(UpgradeError::TooManyFromAddress);
        }
        *by_ip.entry(ip).or_default() += 1;
        admitted.ip = Some(ip);
        Ok(admitted)
    }

    pub(crate) fn open(&self) -> usize {
        self.open.load(Ordering::Acquire)
    }
}

impl Drop for Admitted {
    fn drop(&mut self) {
        self.gate.open.fetch_sub(1, Ordering::AcqRel);
        if let Some(ip) = self.ip {
            let mut by_ip = self
                .gate
                .by_ip
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if let Some(count) = by_ip.get_mut(&ip) {
                *count -= 1;
                if *count == 0 {
                    by_ip.remove(&ip);
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use hyper::header::HeaderValue;

    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut map = HeaderMap::new();
        for (name, value) in pairs {
            map.insert(
                header::HeaderName::from_bytes(name.as_bytes()).unwrap(),
                HeaderValue::from_str(value).unwrap(),
            );
        }
        map
    }

    const DEFAULT: Origins = Origins::SameOrAllowed(Vec::new());

    /// The default, with these patterns as given.
    fn allowing(patterns: &[String]) -> Origins {
        Origins::SameOrAllowed(patterns.to_vec())
    }

    #[test]
    fn same_origin_and_no_origin_pass() {
        let same = headers(&[
            ("host", "127.0.0.1:8000"),
            ("origin", "http://127.0.0.1:8000"),
        ]);
        assert_eq!(check_origin(&same, &DEFAULT, None), Ok(()));
        let none = headers(&[("host", "127.0.0.1:8000")]);
        assert_eq!(check_origin(&none, &DEFAULT, None), Ok(()));
    }

    #[test]
    fn other_origins_need_a_pattern() {
        let evil = headers(&[
            ("host", "chat.example.com"),
            ("origin", "https://evil.example"),
        ]);
        assert_eq!(
            check_origin(&evil, &DEFAULT, None),
            Err(UpgradeError::ForbiddenOrigin)
        );
        assert_eq!(check_origin(&evil, &Origins::Any, None), Ok(()));
        let app = headers(&[
            ("host", "api.example.com"),
            ("origin", "https://app.example.com"),
        ]);
        let exact = ["https://app.example.com".to_owned()];
        assert_eq!(check_origin(&app, &allowing(&exact), None), Ok(()));
        let wildcard = ["*.example.com".to_owned()];
        assert_eq!(check_origin(&app, &allowing(&wildcard), None), Ok(()));
        // The bare domain and look-alikes do not match a wildcard.
        let bare = headers(&[("host", "x"), ("origin", "https://example.com")]);
        assert!(check_origin(&bare, &allowing(&wildcard), None).is_err());
        let lookalike = headers(&[("host", "x"), ("origin", "https://evilexample.com")]);
        assert!(check_origin(&lookalike, &allowing(&wildcard), None).is_err());
        let null = headers(&[("host", "x"), ("origin", "null")]);
        assert!(check_origin(&null, &DEFAULT, None).is_err());
    }

    #[test]
    fn the_gate_counts_and_gives_back() {
        let gate = Arc::new(Gate::default());
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        let first = gate.admit(Some(ip), Some(2), Some(1)).unwrap();
        assert_eq!(
            gate.admit(Some(ip), Some(2), Some(1)).unwrap_err(),
            UpgradeError::TooManyFromAddress
        );
        let other: IpAddr = "127.0.0.2".parse().unwrap();
        let second = gate.admit(Some(other), Some(2), Some(1)).unwrap();
        assert_eq!(
            gate.admit(None, Some(2), None).unwrap_err(),
            UpgradeError::TooManyConnections
        );
        drop((first, second));
        assert_eq!(gate.open(), 0);
        assert!(gate.by_ip.lock().unwrap().is_empty());
        assert!(gate.admit(Some(ip), Some(2), Some(1)).is_ok());
    }

    #[test]
    fn brackets_hold_only_ipv6_addresses() {
        assert_eq!(host_and_port("[::1]:8000", 80), Some(("::1", 8000)));
        assert_eq!(host_and_port("[::1]", 80), Some(("::1", 80)));
        assert_eq!(host_and_port("[e]", 443), None);
        assert_eq!(host_and_port("[]:80", 80), None);
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("e"));
        assert!(!is_same_origin("https://[e]", &headers, None));
    }

    #[test]
    fn same_origin_means_same_scheme_host_and_port() {
        let check = |origin: &str, host: &str, tls: Option<bool>| {
            check_origin(
                &headers(&[("host", host), ("origin", origin)]),
                &DEFAULT,
                tls,
            )
            .is_ok()
        };
        // Default ports are the same as none.
        assert!(check("https://h", "h:443", Some(true)));
        assert!(check("https://h:443", "h", Some(true)));
        assert!(check("http://h", "h:80", Some(false)));
        assert!(check("http://h:80", "h", None));
        assert!(!check("https://h", "h:80", None));
        assert!(!check("http://h", "h:443", None));
        assert!(!check("http://h:8000", "h:8001", None));
        // The scheme must be the one clients reach the server by.
        assert!(!check("http://h:8443", "h:8443", Some(true)));
        assert!(!check("https://h:8000", "h:8000", Some(false)));
        assert!(check("https://h:8000", "h:8000", None));
        // IPv6 literals, and case.
        assert!(check("http://[::1]:8000", "[::1]:8000", Some(false)));
        assert!(check("http://[::1]", "[::1]:80", None));
        assert!(!check("http://[::1]:8000", "[::2]:8000", None));
        assert!(check("HTTP://Chat.Example.com", "chat.example.COM", None));
        // Anything else is not an origin of ours.
        for origin in [
            "null",
            "file://",
            "ws://h",
            "https://",
            "https://h:x",
            "https://u@h",
        ] {
            assert!(!check(origin, "h", None), "{origin}");
        }
        assert!(!check("https://h", "", None));
    }

    #[test]
    fn a_proxy_says_how_the_client_came_in() {
        let proxied = |origin: &str, proto: &str, tls: Option<bool>| {
            let mut map = headers(&[("host", "h"), ("origin", origin)]);
            map.insert("x-forwarded-proto", HeaderValue::from_str(proto).unwrap());
            check_origin(&map, &DEFAULT, tls).is_ok()
        };
        // A plain server behind a proxy that terminates TLS.
        assert!(proxied("https://h", "https", Some(false)));
        assert!(!proxied("http://h", "https", None));
        assert!(proxied("http://h", "http, https", None));
    }

    #[test]
    fn patterns_are_trimmed() {
        let app = headers(&[("host", "x"), ("origin", "https://b.example")]);
        let listed = [
            " https://a.example".to_owned(),
            " https://b.example/ ".to_owned(),
        ];
        assert_eq!(check_origin(&app, &allowing(&listed), None), Ok(()));
        let wildcard = [" *.example ".to_owned()];
        assert_eq!(check_origin(&app, &allowing(&wildcard), None), Ok(()));
        let empty = headers(&[("host", "x"), ("origin", "")]);
        assert!(check_origin(&empty, &allowing(&[String::new()]), None).is_err());
    }

    #[test]
    fn ipv6_clients_count_by_their_64() {
        let gate = Arc::new(Gate::default());
        let first: IpAddr = "2001:db8:1:2::1".parse().unwrap();
        let same_64: IpAddr = "2001:db8:1:2:ffff::9".parse().unwrap();
        let other_64: IpAddr = "2001:db8:1:3::1".parse().unwrap();
        let held = gate.admit(Some(first), None, Some(1)).unwrap();
        assert_eq!(
            gate.admit(Some(same_64), None, Some(1)).unwrap_err(),
            UpgradeError::TooManyFromAddress
        );
        let other = gate.admit(Some(other_64), None, Some(1)).unwrap();
        // An IPv4 client counts as itself, mapped into IPv6 or not.
        let v4: IpAddr = "192.0.2.7".parse().unwrap();
        let mapped: IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        let v4_held = gate.admit(Some(v4), None, Some(1)).unwrap();
        assert!(gate.admit(Some(mapped), None, Some(1)).is_err());
        drop((held, other, v4_held));
        assert!(gate.by_ip.lock().unwrap().is_empty());
    }

    #[test]
    fn refused_addresses_leave_nothing_behind() {
        let gate = Arc::new(Gate::default());
        for i in 0..1000u32 {
            let ip = IpAddr::from(std::net::Ipv4Addr::from(0x0A00_0000 + i));
            assert!(gate.admit(Some(ip), None, Some(0)).is_err());
        }
        assert!(gate.by_ip.lock().unwrap().is_empty());
        assert_eq!(gate.open(), 0);
    }
}
