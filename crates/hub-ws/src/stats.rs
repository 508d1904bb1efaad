//! Counters kept by a server: sessions, traffic, refusals and closes.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, PoisonError};

use hub::{ConnId, Distribution, Histogram, Message, LATENCY_NS};

use crate::deflate::DeflateCounters;
use crate::{CloseCode, Ended, UpgradeError};

/// A snapshot of a server's counters, from
/// [`WsServer::stats`](crate::WsServer::stats). The hub's own counters
/// (connections, deliveries, lag...) are in [`hub::Hub::stats`].
///
/// Totals only grow; `sessions` is the number running now.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct WsStats {
    /// Sessions running now.
    pub sessions: usize,
    /// Sessions ever started.
    pub opened: u64,
    /// Messages read from clients and handed to the handler.
    pub messages_in: u64,
    /// Payload bytes of those messages.
    pub bytes_in: u64,
    /// Messages written to clients.
    pub messages_out: u64,
    /// Payload bytes of those messages.
    pub bytes_out: u64,
    /// Messages from clients dropped by the [rate limit](crate::RateLimit).
    pub throttled: u64,
    /// Handshakes refused, by [`UpgradeError::reason`]; every reason is
    /// listed, in a fixed order.
    pub refused: Vec<(&'static str, u64)>,
    /// Sessions the client closed.
    pub closed_by_client: u64,
    /// Sessions whose connection was lost without a close handshake.
    pub lost: u64,
    /// Sessions the server closed, by close code (codes seen so far, in
    /// order).
    pub closed_by_server: Vec<(CloseCode, u64)>,
    /// Sessions that agreed on `permessage-deflate` (see
    /// [`Config::compression`](crate::Config::compression)).
    pub compressed_sessions: u64,
    /// Payload bytes of the messages written to compressing sockets, before
    /// compression.
    pub deflate_bytes_in: u64,
    /// Payload bytes written for them: deflated, or as they are when
    /// deflate would not shrink them.
    pub deflate_bytes_out: u64,
    /// Of those messages, the ones written deflated against the window of
    /// the messages before them, made once for every socket in step (see
    /// [`Config::compression`](crate::Config::compression)).
    pub deflate_chained: u64,
    /// Payload bytes of compressed messages from clients, as they came.
    pub inflate_bytes_in: u64,
    /// The same messages, inflated.
    pub inflate_bytes_out: u64,
    /// How long handshakes took, in nanoseconds: from the request's check
    /// (from the connection's accept in [`WsServer::serve_tcp`]) to the
    /// upgraded connection being served. Sockets the caller upgraded
    /// ([`WsServer::serve_upgraded`]) are not counted.
    ///
    /// [`WsServer::serve_tcp`]: crate::WsServer::serve_tcp
    /// [`WsServer::serve_upgraded`]: crate::WsServer::serve_upgraded
    pub handshakes: Distribution,
    /// Sizes of the messages read from clients, in bytes (inflated).
    pub sizes_in: Distribution,
    /// Sizes of the messages written to clients, in bytes (before
    /// compression): those of every 64th write of each session (its first
    /// write, its 65th...), all of that write's messages.
    pub sizes_out: Distribution,
    /// How long broadcasts took to reach the socket, in nanoseconds: from
    /// [`Broadcast::sent_at`](hub::Broadcast::sent_at) (or the session's
    /// start, for messages sent before it: history replayed on resume) to
    /// the socket taking the frame, flushed. One sample per sampled write
    /// (as for [`sizes_out`](Self::sizes_out)): its oldest broadcast. So a
    /// session writing one message at a time has every 64th timed, and
    /// under load, when writes carry more, the slowest of each sampled one.
    pub latency: Distribution,
    /// How long each session that the socket is making wait has waited, in
    /// nanoseconds, read when the stats are taken: from the oldest
    /// broadcast of the write in progress being sent. Sessions whose
    /// socket takes what they write are not counted; a client that does
    /// not read shows here, its wait growing, until the write timeout
    /// closes it.
    pub queue_waits: Distribution,
}

/// Bounds of the size buckets, in bytes: 64 B to 16 MiB, by fours past
/// 1 KiB (chat lines fall in the first few).
static SIZES: [u64; 11] = [
    64, 128, 256, 512, 1024, 4096, 16_384, 65_536, 262_144, 1_048_576, 16_777_216,
];

#[derive(Debug)]
pub(crate) struct Counters {
    opened: AtomicU64,
    messages_in: AtomicU64,
    bytes_in: AtomicU64,
    messages_out: AtomicU64,
    bytes_out: AtomicU64,
    throttled: AtomicU64,
    refused: [AtomicU64; UpgradeError::REASONS.len()],
    closed_by_client: AtomicU64,
    lost: AtomicU64,
    /// Closes are rare next to messages: a lock per close is cheap.
    closed_by_server: Mutex<BTreeMap<CloseCode, u64>>,
    pub(crate) compressed_sessions: AtomicU64,
    /// Shared with the compressing sockets.
    pub(crate) deflate: Arc<DeflateCounters>,
    handshakes: Histogram,
    sizes_in: Histogram,
    pub(crate) sizes_out: Histogram,
    latency: Histogram,
    waits: Waits,
    /// Whether the histograms are measured ([`Config::histograms`]).
    ///
    /// [`Config::histograms`]: crate::Config::histograms
    pub(crate) measuring: bool,
}

/// Each session's oldest broadcast in the write in progress, read when the
/// stats are taken.
#[derive(Debug)]
struct Waits {
    /// What the slots count from.
    epoch: std::time::Instant,
    slots: Mutex<HashMap<ConnId, Arc<AtomicU64>>>,
}

/// A session's slot in [`Waits`]: 0 while it has nothing to write, else
/// one more than the nanoseconds from the epoch to its oldest broadcast
/// being sent. Taken out when dropped, with the session.
#[derive(Debug)]
pub(crate) struct Waiting<'a> {
    waits: &'a Waits,
    id: ConnId,
    slot: Arc<AtomicU64>,
}

impl Waiting<'_> {
    /// The write in progress holds a broadcast sent at `at`.
    pub(crate) fn since(&self, at: std::time::Instant) {
        let nanos = at.saturating_duration_since(self.waits.epoch).as_nanos();
        let nanos = u64::try_from(nanos).unwrap_or(u64::MAX - 1);
        self.slot.store(nanos + 1, Relaxed);
    }

    /// The write is done.
    pub(crate) fn clear(&self) {
        self.slot.store(0, Relaxed);
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        lock(&self.waits.slots).remove(&self.id);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            opened: AtomicU64::default(),
            messages_in: AtomicU64::default(),
            bytes_in: AtomicU64::default(),
            messages_out: AtomicU64::default(),
            bytes_out: AtomicU64::default(),
            throttled: AtomicU64::default(),
            refused: Default::default(),
            closed_by_client: AtomicU64::default(),
            lost: AtomicU64::default(),
            closed_by_server: Mutex::default(),
            compressed_sessions: AtomicU64::default(),
            deflate: Arc::default(),
            handshakes: Histogram::new(&LATENCY_NS),
            sizes_in: Histogram::new(&SIZES),
            sizes_out: Histogram::new(&SIZES),
            latency: Histogram::new(&LATENCY_NS),
            waits: Waits {
                epoch: std::time::Instant::now(),
                slots: Mutex::default(),
            },
            measuring: true,
        }
    }
}

/// Nanoseconds since `since`, saturating.
fn nanos_since(since: std::time::Instant) -> u64 {
    u64::try_from(since.elapsed().as_nanos()).unwrap_or(u64::MAX)
}

impl Counters {
    /// Measures the histograms, or not.
    pub(crate) fn measuring(mut self, on: bool) -> Self {
        self.measuring = on;
        self
    }

    /// Session `id`'s slot for [`WsStats::queue_waits`], for as long as
    /// the session lasts.
    pub(crate) fn waiting(&self, id: ConnId) -> Waiting<'_> {
        let slot = Arc::new(AtomicU64::new(0));
        lock(&self.waits.slots).insert(id, Arc::clone(&slot));
        Waiting {
            waits: &self.waits,
            id,
            slot,
        }
    }

    /// The sessions' waits, now.
    fn queue_waits(&self) -> Distribution {
        let waits = Histogram::new(&LATENCY_NS);
        let now = self.waits.epoch.elapsed().as_nanos();
        let now = u64::try_from(now).unwrap_or(u64::MAX);
        for slot in lock(&self.waits.slots).values() {
            if let Some(since) = slot.load(Relaxed).checked_sub(1) {
                waits.observe(now.saturating_sub(since));
            }
        }
        waits.snapshot()
    }

    /// A handshake that began at `began` is done.
    pub(crate) fn handshake(&self, began: std::time::Instant) {
        if self.measuring {
            self.handshakes.observe(nanos_since(began));
        }
    }

    /// A batch whose oldest broadcast was sent at `oldest` was written.
    pub(crate) fn delivered(&self, oldest: std::time::Instant) {
        self.latency.observe(nanos_since(oldest));
    }

    pub(crate) fn opened(&self) {
        self.opened.fetch_add(1, Relaxed);
    }

    pub(crate) fn message_in(&self, message: &Message) {
        self.messages_in.fetch_add(1, Relaxed);
        self.bytes_in.fetch_add(message.len() as u64, Relaxed);
        if self.measuring {
            self.sizes_in.observe(message.len() as u64);
        }
    }

    /// Written messages, counted once per batch.
    pub(crate) fn messages_out(&self, messages: u64, bytes: u64) {
        if messages > 0 {
            self.messages_out.fetch_add(messages, Relaxed);
            self.bytes_out.fetch_add(bytes, Relaxed);
        }
    }

    pub(crate) fn throttled(&self) {
        self.throttled.fetch_add(1, Relaxed);
    }

    pub(crate) fn refused(&self, error: &UpgradeError) {
        self.refused[error.index()].fetch_add(1, Relaxed);
    }

    pub(crate) fn ended(&self, ended: &Ended) {
        match ended {
            Ended::ClientClosed { .. } => {
                self.closed_by_client.fetch_add(1, Relaxed);
            }
            Ended::Lost => {
                self.lost.fetch_add(1, Relaxed);
            }
            Ended::ServerClosed(close) => {
                let mut by_code = self
                    .closed_by_server
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner);
                *by_code.entry(close.code()).or_default() += 1;
            }
        }
    }

    pub(crate) fn snapshot(&self, sessions: usize) -> WsStats {
        let closed_by_server = self
            .closed_by_server
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|(code, n)| (*code, *n))
            .collect();
        WsStats {
            sessions,
            opened: self.opened.load(Relaxed),
            messages_in: self.messages_in.load(Relaxed),
            bytes_in: self.bytes_in.load(Relaxed),
            messages_out: self.messages_out.load(Relaxed),
            bytes_out: self.bytes_out.load(Relaxed),
            throttled: self.throttled.load(Relaxed),
            refused: UpgradeError::REASONS
                .iter()
                .zip(&self.refused)
                .map(|(reason, n)| (*reason, n.load(Relaxed)))
                .collect(),
            closed_by_client: self.closed_by_client.load(Relaxed),
            lost: self.lost.load(Relaxed),
            closed_by_server,
            compressed_sessions: self.compressed_sessions.load(Relaxed),
            deflate_bytes_in: self.deflate.out_before.load(Relaxed),
            deflate_bytes_out: self.deflate.out_after.load(Relaxed),
            deflate_chained: self.deflate.chained.load(Relaxed),
            inflate_bytes_in: self.deflate.in_compressed.load(Relaxed),
            inflate_bytes_out: self.deflate.in_inflated.load(Relaxed),
            handshakes: self.handshakes.snapshot(),
            sizes_in: self.sizes_in.snapshot(),
            sizes_out: self.sizes_out.snapshot(),
            latency: self.latency.snapshot(),
            queue_waits: self.queue_waits(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Close, Refusal};

    #[test]
    fn counts_refusals_by_reason_and_closes_by_code() {
        let counters = Counters::default();
        counters.refused(&UpgradeError::ForbiddenOrigin);
        counters.refused(&UpgradeError::ForbiddenOrigin);
        counters.refused(&UpgradeError::Refused(Refusal::unauthorized("no")));
        counters.ended(&Ended::ServerClosed(Close::new(CloseCode::TOO_BIG, "")));
        counters.ended(&Ended::ServerClosed(Close::new(CloseCode::POLICY, "")));
        counters.ended(&Ended::ServerClosed(Close::new(CloseCode::TOO_BIG, "")));
        counters.ended(&Ended::Lost);
        let stats = counters.snapshot(0);
        let refused = |reason| {
            stats
                .refused
                .iter()
                .find(|(r, _)| *r == reason)
                .map(|r| r.1)
        };
        assert_eq!(refused("origin"), Some(2));
        assert_eq!(refused("unauthenticated"), Some(1));
        assert_eq!(refused("full"), Some(0));
        assert_eq!(stats.refused.len(), UpgradeError::REASONS.len());
        assert_eq!(
            stats.closed_by_server,
            [(CloseCode::POLICY, 1), (CloseCode::TOO_BIG, 2)]
        );
        assert_eq!((stats.lost, stats.closed_by_client), (1, 0));
    }

    #[test]
    fn sessions_mid_write_show_how_long_they_waited_until_done() {
        let mut counters = Counters::default();
        // As if the server had started a minute ago.
        counters.waits.epoch -= std::time::Duration::from_secs(60);
        let (a, b) = (ConnId::from_raw(1).unwrap(), ConnId::from_raw(2).unwrap());
        let (first, second) = (counters.waiting(a), counters.waiting(b));
        assert_eq!(counters.snapshot(2).queue_waits.count(), 0);
        // One write holds a broadcast sent a second ago.
        let sent = std::time::Instant::now() - std::time::Duration::from_secs(1);
        first.since(sent);
        let waits = counters.snapshot(2).queue_waits;
        assert_eq!(waits.count(), 1);
        assert!(waits.sum >= 1_000_000_000, "{waits:?}");
        // The bucket up to 1 s holds nothing; the one up to 2.5 s, it.
        let index = LATENCY_NS.iter().position(|b| *b == 2_500_000_000).unwrap();
        assert_eq!(waits.counts[index], 1, "{waits:?}");
        first.clear();
        second.since(sent);
        drop(second);
        assert_eq!(counters.snapshot(1).queue_waits.count(), 0);
        drop(first);
        assert!(lock(&counters.waits.slots).is_empty());
    }

    #[test]
    fn every_error_has_its_own_reason() {
        let errors = [
            UpgradeError::MethodNotGet,
            UpgradeError::NotWebSocket,
            UpgradeError::UnsupportedVersion,
            UpgradeError::BadKey,
            UpgradeError::ShuttingDown,
            UpgradeError::ForbiddenOrigin,
            UpgradeError::TooManyConnections,
            UpgradeError::TooManyFromAddress,
            UpgradeError::Refused(Refusal::unauthorized("who?")),
            UpgradeError::Refused(Refusal::forbidden("no")),
        ];
        assert_eq!(errors.len(), UpgradeError::REASONS.len());
        for (i, error) in errors.iter().enumerate() {
            assert_eq!(error.index(), i);
            assert_eq!(error.reason(), UpgradeError::REASONS[i]);
        }
    }
}
