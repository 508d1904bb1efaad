//! Who may open a session: the Origin check and connection limits, decided
//! before the upgrade.

use std::collections::HashMap;
use std::net::IpAddr;
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
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum Origins {
    /// The default: the origin's host and port must be the request's `Host`,
    /// or match one of these patterns: an exact origin
    /// (`https://app.example.com`) or a wildcard subdomain
    /// (`*.example.com`, any scheme and port).
    #[default]
    SameOrAllowed,
    /// Any origin (for servers that authenticate otherwise).
    Any,
}

/// Checks the `Origin` of a handshake.
pub(crate) fn check_origin(
    headers: &HeaderMap,
    origins: &Origins,
    allowed: &[String],
) -> Result<(), UpgradeError> {
    if *origins == Origins::Any {
        return Ok(());
    }
    let Some(origin) = headers.get(header::ORIGIN) else {
        return Ok(());
    };
    let origin = origin.to_str().map_err(|_| UpgradeError::ForbiddenOrigin)?;
    let authority = origin
        .split_once("://")
        .map_or("", |(_, rest)| rest)
        .trim_end_matches('/');
    let same = headers
        .get(header::HOST)
        .and_then(|host| host.to_str().ok())
        .is_some_and(|host| !authority.is_empty() && host.eq_ignore_ascii_case(authority));
    if same
        || allowed
            .iter()
            .any(|pattern| matches(pattern, origin, authority))
    {
        Ok(())
    } else {
        Err(UpgradeError::ForbiddenOrigin)
    }
}

fn matches(pattern: &str, origin: &str, authority: &str) -> bool {
    match pattern.strip_prefix("*.") {
        Some(domain) => {
            let host = authority
                .rsplit_once(':')
                .map_or(authority, |(host, _)| host);
            host.len() > domain.len()
                && host
                    .to_ascii_lowercase()
                    .ends_with(&format!(".{}", domain.to_ascii_lowercase()))
        }
        None => pattern.trim_end_matches('/').eq_ignore_ascii_case(origin),
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
        let mut by_ip = self.by_ip.lock().unwrap_or_else(PoisonError::into_inner);
        let count = by_ip.entry(ip).or_default();
        if *count >= limit {
            return Err(UpgradeError::TooManyFromAddress);
        }
        *count += 1;
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

    const DEFAULT: Origins = Origins::SameOrAllowed;

    #[test]
    fn same_origin_and_no_origin_pass() {
        let same = headers(&[
            ("host", "127.0.0.1:8000"),
            ("origin", "http://127.0.0.1:8000"),
        ]);
        assert_eq!(check_origin(&same, &DEFAULT, &[]), Ok(()));
        let none = headers(&[("host", "127.0.0.1:8000")]);
        assert_eq!(check_origin(&none, &DEFAULT, &[]), Ok(()));
    }

    #[test]
    fn other_origins_need_a_pattern() {
        let evil = headers(&[
            ("host", "chat.example.com"),
            ("origin", "https://evil.example"),
        ]);
        assert_eq!(
            check_origin(&evil, &DEFAULT, &[]),
            Err(UpgradeError::ForbiddenOrigin)
        );
        assert_eq!(check_origin(&evil, &Origins::Any, &[]), Ok(()));
        let app = headers(&[
            ("host", "api.example.com"),
            ("origin", "https://app.example.com"),
        ]);
        let exact = ["https://app.example.com".to_owned()];
        assert_eq!(check_origin(&app, &DEFAULT, &exact), Ok(()));
        let wildcard = ["*.example.com".to_owned()];
        assert_eq!(check_origin(&app, &DEFAULT, &wildcard), Ok(()));
        // The bare domain and look-alikes do not match a wildcard.
        let bare = headers(&[("host", "x"), ("origin", "https://example.com")]);
        assert!(check_origin(&bare, &DEFAULT, &wildcard).is_err());
        let lookalike = headers(&[("host", "x"), ("origin", "https://evilexample.com")]);
        assert!(check_origin(&lookalike, &DEFAULT, &wildcard).is_err());
        let null = headers(&[("host", "x"), ("origin", "null")]);
        assert!(check_origin(&null, &DEFAULT, &[]).is_err());
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
}
