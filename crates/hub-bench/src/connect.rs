//! Where clients connect to (a loopback URL), where from (loopback source
//! addresses), and the handshakes and closes themselves.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};

use tokio::net::TcpSocket;
use tokio::sync::{mpsc, Semaphore};
use tokio::task::JoinSet;
use tokio_tungstenite::tungstenite::http::Uri;

use crate::error::{ConnectError, Error, UrlError};
use crate::latency;
use crate::progress::Progress;
use crate::report::{seconds, ConnectReport, Spread};
use crate::stop::Stop;
use crate::ws::{self, Offer, Reader, Status, Writer};

/// A connected client: its reading and writing halves.
pub(crate) type Ws = (Reader, Writer);

/// Handshakes in flight at once.
const HANDSHAKES_IN_FLIGHT: usize = 256;

/// Clients per source address by default: Linux hands out about 28 000
/// ephemeral ports per local address, so this leaves room for others.
const CLIENTS_PER_SOURCE: usize = 20_000;

/// How long a client waits for the server to answer its close frame.
pub(crate) const CLOSE_TIMEOUT: Duration = Duration::from_secs(5);

/// A validated target: `ws://` on this machine.
#[derive(Clone, Debug)]
pub(crate) struct Target {
    /// The request target (path and query), where `{i}` stands for the
    /// client's number.
    path: String,
    /// The `Host` header.
    host: String,
    addr: SocketAddr,
}

impl Target {
    /// Checks that `url` is a `ws://` URL whose host is a loopback address
    /// (`127.0.0.0/8`, `::1`) or `localhost` (taken as `127.0.0.1`; no name
    /// is ever resolved). In the path or query, `{i}` stands for each
    /// client's number (0, 1, ...) and `{i%N}` for it modulo N:
    /// `?room=r{i}` puts each client in a room of its own, `?room=r{i%100}`
    /// spreads them over 100 rooms.
    pub(crate) fn parse(url: &str) -> Result<Self, UrlError> {
        let uri: Uri = numbered(url, 0)
            .parse()
            .map_err(|source| UrlError::Invalid {
                url: url.to_owned(),
                source,
            })?;
        if uri.scheme_str() != Some("ws") {
            return Err(UrlError::Scheme {
                url: url.to_owned(),
            });
        }
        let host = uri.host().filter(|host| !host.is_empty());
        let host = host.ok_or_else(|| UrlError::NoHost {
            url: url.to_owned(),
        })?;
        let not_loopback = || UrlError::NotLoopback {
            host: host.to_owned(),
        };
        let ip = if host.eq_ignore_ascii_case("localhost") {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            let bare = host.trim_start_matches('[').trim_end_matches(']');
            bare.parse::<IpAddr>().map_err(|_| not_loopback())?
        }
        .to_canonical();
        if !ip.is_loopback() {
            return Err(not_loopback());
        }
        let port = uri.port_u16().unwrap_or(80);
        let authority = uri.authority().map_or(host, |a| a.as_str()).to_owned();
        // The path as given, `{i}` and all: after the authority.
        let path = url
            .split_once("://")
            .and_then(|(_, rest)| rest.find('/').map(|at| rest[at..].to_owned()))
            .unwrap_or_else(|| "/".to_owned());
        Ok(Self {
            addr: SocketAddr::new(ip, port),
            path,
            host: authority,
        })
    }

    /// The request target of client `index`.
    fn path_for(&self, index: usize) -> String {
        numbered(&self.path, index)
    }
}

/// `text` with `{i}` replaced by `index`, and `{i%N}` by `index % N`
/// (left as is when N is not a positive number).
fn numbered(text: &str, index: usize) -> String {
    let mut out = String::with_capacity(text.len() + 8);
    let mut rest = text;
    while let Some(start) = rest.find("{i") {
        out.push_str(&rest[..start]);
        let tail = &rest[start..];
        let Some(end) = tail.find('}') else {
            rest = tail;
            break;
        };
        let number = match &tail[2..end] {
            "" => Some(index),
            modulus => (modulus.strip_prefix('%'))
                .and_then(|n| n.parse::<usize>().ok())
                .filter(|&n| n > 0)
                .map(|n| index % n),
        };
        match number {
            Some(number) => out.push_str(&number.to_string()),
            None => out.push_str(&tail[..=end]),
        }
        rest = &tail[end + 1..];
    }
    out.push_str(rest);
    out
}

/// The default number of source addresses for `clients` clients.
pub(crate) fn default_source_ips(clients: usize) -> usize {
    clients.div_ceil(CLIENTS_PER_SOURCE).max(1)
}

/// `count` loopback addresses to connect from: 127.0.0.1, 127.0.0.2... for
/// an IPv4 target, ::1 for an IPv6 one.
pub(crate) fn source_ips(target: &Target, count: usize) -> Result<Vec<IpAddr>, Error> {
    let problem = |problem: &str| Error::Option {
        option: "source-ips",
        problem: problem.to_owned(),
    };
    match target.addr.ip() {
        IpAddr::V6(ip) => {
            if count != 1 {
                return Err(problem(
                    "IPv6 has a single loopback address (::1); use 1, or an IPv4 URL",
                ));
            }
            Ok(vec![IpAddr::V6(ip)])
        }
        IpAddr::V4(_) => {
            // 127.0.0.1 to 127.255.255.254.
            let first = u32::from(Ipv4Addr::new(127, 0, 0, 1));
            let count = u32::try_from(count)
                .ok()
                .filter(|count| (1..(1 << 24) - 1).contains(count))
                .ok_or_else(|| problem("use between 1 and 16777214 addresses"))?;
            Ok((0..count)
                .map(|i| IpAddr::V4(Ipv4Addr::from(first + i)))
                .collect())
        }
    }
}

/// Opens clients to one target, spread over source addresses, a bounded
/// number of handshakes at a time.
#[derive(Debug)]
pub(crate) struct Dialer {
    /// Never empty: client `i` goes to `targets[(i / spread) % len]`.
    targets: Vec<Target>,
    /// Consecutive clients that go to the same target (see
    /// [`spread`](Self::spread)).
    spread: usize,
    sources: Vec<IpAddr>,
    permits: Semaphore,
    timeout: Duration,
    offer: Offer,
}

impl Dialer {
    /// Clients to `targets` (not empty; in turn) from `sources` (not
    /// empty), each handshake bounded by `timeout`.
    pub(crate) fn new(targets: Vec<Target>, sources: Vec<IpAddr>, timeout: Duration) -> Self {
        Self {
            targets,
            spread: 1,
            sources,
            permits: Semaphore::new(HANDSHAKES_IN_FLIGHT),
            timeout,
            offer: Offer::Nothing,
        }
    }

    /// What the clients offer of `permessage-deflate`.
    pub(crate) fn offer(mut self, offer: Offer) -> Self {
        self.offer = offer;
        self
    }

    /// Sends clients to the targets `groups` at a time: with clients in
    /// `groups` groups (client `i` in group `i % groups`), each group's
    /// clients then alternate over the targets, whatever their number.
    pub(crate) fn spread(mut self, groups: usize) -> Self {
        self.spread = groups.max(1);
        self
    }

    /// The number of source addresses.
    pub(crate) fn source_count(&self) -> usize {
        self.sources.len()
    }

    /// Connects client `index` and returns it with the time its TCP
    /// connection and handshake took (not counting the wait for a turn).
    pub(crate) async fn dial(&self, index: usize) -> Result<(Ws, Duration), ConnectError> {
        let from = self
            .sources
            .get(index % self.sources.len().max(1))
            .copied()
            .unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
        // The semaphore is never closed; without a permit, go anyway.
        let _permit = self.permits.acquire().await.ok();
        let started = Instant::now();
        let target = &self.targets[(index / self.spread) % self.targets.len().max(1)];
        let ws = tokio::time::timeout(self.timeout, self.handshake(target, index, from))
            .await
            .map_err(|_| ConnectError::TimedOut(self.timeout))??;
        Ok((ws, started.elapsed()))
    }

    async fn handshake(
        &self,
        target: &Target,
        index: usize,
        from: IpAddr,
    ) -> Result<Ws, ConnectError> {
        let tcp = |source| ConnectError::Tcp { from, source };
        let socket = match from {
            IpAddr::V4(_) => TcpSocket::new_v4(),
            IpAddr::V6(_) => TcpSocket::new_v6(),
        }
        .map_err(tcp)?;
        socket.set_nodelay(true).map_err(tcp)?;
        // From one address, leave the address and port to `connect`: a
        // port chosen by `bind` must be free of every other socket, one
        // that `connect` chooses only of the same address pair. 19 500
        // clients took 31 s to connect through `bind`, 5.5 s without.
        if self.sources.len() > 1 {
            socket.bind(SocketAddr::new(from, 0)).map_err(tcp)?;
        }
        let stream = socket.connect(target.addr).await.map_err(tcp)?;
        ws::handshake(stream, &target.host, &target.path_for(index), self.offer)
            .await
            .map_err(ConnectError::Handshake)
    }
}

/// How one client's connection went, sent to whoever gathers them.
#[derive(Debug)]
pub(crate) struct Outcome {
    /// The client's index.
    pub(crate) index: usize,
    /// The handshake's duration, or why it failed.
    pub(crate) result: Result<Duration, ConnectError>,
}

/// Connects client `index` and tells `outcomes` how it went.
pub(crate) async fn dial_and_tell(
    dialer: &Dialer,
    index: usize,
    outcomes: mpsc::Sender<Outcome>,
) -> Option<Ws> {
    let (ws, result) = match dialer.dial(index).await {
        Ok((ws, took)) => (Some(ws), Ok(took)),
        Err(error) => (None, Err(error)),
    };
    // The gatherer only goes away when the run is being torn down.
    let _ = outcomes.send(Outcome { index, result }).await;
    ws
}

/// The connect phase, gathered.
#[derive(Debug)]
pub(crate) struct Connected {
    /// For the report.
    pub(crate) report: ConnectReport,
    /// The clients that failed, by index, with why.
    pub(crate) failures: Vec<(usize, ConnectError)>,
}

/// Waits for the outcome of every client's connection (bounded: each
/// handshake has a timeout, and the channel closes when every client task
/// has reported or ended).
pub(crate) async fn gather(
    mut outcomes: mpsc::Receiver<Outcome>,
    clients: usize,
    source_ips: usize,
    progress: Progress,
) -> Connected {
    let started = Instant::now();
    let bar = progress.bar(clients as u64, "connecting");
    let mut handshakes = latency::histogram();
    let mut failures = Vec::new();
    let mut heard = 0;
    while heard < clients {
        let Some(outcome) = outcomes.recv().await else {
            break;
        };
        heard += 1;
        bar.inc(1);
        match outcome.result {
            Ok(took) => {
                let micros = u64::try_from(took.as_micros()).unwrap_or(u64::MAX);
                handshakes.saturating_record(micros);
            }
            Err(error) => failures.push((outcome.index, error)),
        }
    }
    bar.finish_and_clear();
    let first_error = failures
        .first()
        .map(|(index, error)| describe(*index, error));
    Connected {
        report: ConnectReport {
            seconds: seconds(started.elapsed()),
            source_ips,
            connected: usize::try_from(handshakes.len()).unwrap_or(usize::MAX),
            failed: clients - usize::try_from(handshakes.len()).unwrap_or(clients),
            handshake_ms: Spread::of(&handshakes),
            first_error,
        },
        failures,
    }
}

/// One line about a failed client: the error, its causes, and advice.
fn describe(index: usize, error: &ConnectError) -> String {
    let mut text = format!("client {index}: {error}");
    let mut source = std::error::Error::source(error);
    while let Some(cause) = source {
        text.push_str(": ");
        text.push_str(&cause.to_string());
        source = cause.source();
    }
    if let Some(advice) = error.advice() {
        text.push_str(" (");
        text.push_str(advice);
        text.push(')');
    }
    text
}

/// Closes a client properly: a close frame (1000), then reads until the
/// server's answer, within [`CLOSE_TIMEOUT`]. Returns whether the server
/// answered.
pub(crate) async fn close(reader: &mut Reader, writer: &mut Writer) -> bool {
    let handshake = async move {
        if writer.close(ws::NORMAL, "benchmark over").await.is_err() {
            return false;
        }
        loop {
            match reader.read(|_| {}).await {
                Ok(Status::Closed(_)) => return true,
                // Our close frame is out: pings go unanswered.
                Ok(Status::Open | Status::Ping(_)) => {}
                Err(_) => return false,
            }
        }
    };
    tokio::time::timeout(CLOSE_TIMEOUT, handshake)
        .await
        .unwrap_or(false)
}

/// Raises `stop` and waits for every client task to close, at most a
/// little more than [`CLOSE_TIMEOUT`]; tasks still running then are
/// aborted. Returns what the tasks that ended returned.
pub(crate) async fn close_all<T: 'static>(
    stop: &Stop,
    mut tasks: JoinSet<T>,
    progress: Progress,
) -> Vec<T> {
    stop.raise();
    let bar = progress.bar(tasks.len() as u64, "closing");
    let mut ended = Vec::with_capacity(tasks.len());
    let deadline = tokio::time::Instant::now() + CLOSE_TIMEOUT + Duration::from_secs(5);
    while let Ok(Some(joined)) = tokio::time::timeout_at(deadline, tasks.join_next()).await {
        bar.inc(1);
        // A panicked task has nothing to report.
        if let Ok(value) = joined {
            ended.push(value);
        }
    }
    tasks.shutdown().await;
    bar.finish_and_clear();
    ended
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(url: &str) -> UrlError {
        match Target::parse(url) {
            Ok(target) => panic!("{url} accepted as {target:?}"),
            Err(error) => error,
        }
    }

    #[test]
    fn client_numbers_in_urls() {
        assert_eq!(numbered("/ws?room=r{i}", 7), "/ws?room=r7");
        assert_eq!(
            numbered("/ws?room=r{i%3}&name=n{i}", 7),
            "/ws?room=r1&name=n7"
        );
        assert_eq!(numbered("/ws?x={i%0}{j}{i", 7), "/ws?x={i%0}{j}{i");
        let target = Target::parse("ws://127.0.0.1:9/ws?room=r{i%2}").unwrap();
        assert_eq!(target.path_for(5), "/ws?room=r1");
        assert_eq!(target.host, "127.0.0.1:9");
    }

    #[test]
    fn loopback_targets() {
        for (url, addr) in [
            ("ws://127.0.0.1:8000/ws", "127.0.0.1:8000"),
            ("ws://127.1.2.3:9/echo", "127.1.2.3:9"),
            ("ws://localhost:8000/ws", "127.0.0.1:8000"),
            ("ws://LocalHost/ws", "127.0.0.1:80"),
            ("ws://[::1]:8000/ws", "[::1]:8000"),
            ("ws://[::ffff:127.0.0.1]:8000/ws", "127.0.0.1:8000"),
        ] {
            let target = Target::parse(url).map(|t| t.addr.to_string());
            assert_eq!(target.ok().as_deref(), Some(addr), "{url}");
        }
    }

    #[test]
    fn other_targets_are_refused() {
        for url in [
            "ws://10.0.0.1:8000/ws",
            "ws://192.168.1.1/ws",
            "ws://example.com/ws",
            "ws://localhost.example.com/ws",
            "ws://[::2]:8000/ws",
            "ws://0.0.0.0:8000/ws",
        ] {
            let error = refused(url);
            assert!(matches!(error, UrlError::NotLoopback { .. }), "{url}");
            assert!(
                error.to_string().contains("not a loopback address"),
                "{error}"
            );
        }
        assert!(matches!(
            refused("wss://127.0.0.1/ws"),
            UrlError::Scheme { .. }
        ));
        assert!(matches!(
            refused("http://127.0.0.1/ws"),
            UrlError::Scheme { .. }
        ));
        assert!(matches!(refused("127.0.0.1:8000"), UrlError::Scheme { .. }));
        assert!(matches!(
            refused("ws://127.0.0.1:8000 /ws"),
            UrlError::Invalid { .. }
        ));
    }

    #[test]
    fn source_addresses() {
        let v4 = Target::parse("ws://127.0.0.1:8000/ws");
        let Ok(v4) = v4 else { panic!("{v4:?}") };
        let ips = source_ips(&v4, 3).ok().unwrap_or_default();
        let ips: Vec<String> = ips.iter().map(ToString::to_string).collect();
        assert_eq!(ips, ["127.0.0.1", "127.0.0.2", "127.0.0.3"]);
        let ips = source_ips(&v4, 300).ok().unwrap_or_default();
        assert_eq!(
            ips.last().map(ToString::to_string).as_deref(),
            Some("127.0.1.44")
        );
        assert!(source_ips(&v4, 0).is_err());

        let v6 = Target::parse("ws://[::1]:8000/ws");
        let Ok(v6) = v6 else { panic!("{v6:?}") };
        assert_eq!(source_ips(&v6, 1).ok().map(|ips| ips.len()), Some(1));
        assert!(source_ips(&v6, 2).is_err());

        assert_eq!(default_source_ips(1), 1);
        assert_eq!(default_source_ips(10_000), 1);
        assert_eq!(default_source_ips(20_001), 2);
        assert_eq!(default_source_ips(100_000), 5);
    }
}
