//! Counters kept by the hub.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

/// A snapshot of a hub's counters, from [`Hub::stats`](crate::Hub::stats).
///
/// Totals only grow; `connections` is the number registered right now.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// Connections registered now.
    pub connections: usize,
    /// Rooms with members now.
    pub rooms: usize,
    /// Bytes held in history, all topics together: payloads, and the forms
    /// rendered from them ([`Broadcast::render`](crate::Broadcast::render)).
    pub history_bytes: usize,
    /// Connections ever registered.
    pub connected_total: u64,
    /// Calls to a broadcast method.
    pub broadcasts: u64,
    /// Messages handed to connections by broadcasts: the sum of what each
    /// broadcast reached.
    pub deliveries: u64,
    /// Personal messages queued.
    pub personal: u64,
    /// Times a connection fell behind a topic's channel capacity.
    pub lagged: u64,
    /// Broadcast messages lagging connections did not get at all.
    pub missed: u64,
    /// Broadcast messages refilled from history for lagging connections.
    pub repaired: u64,
    /// Messages replayed from history to resuming connections.
    pub replayed: u64,
    /// Resync notices: gaps history could not fill.
    pub resyncs: u64,
    /// Times a connection joined a room.
    pub joins: u64,
    /// Times a connection left a room (disconnecting included).
    pub leaves: u64,
    /// Bytes of personal messages queued now, all connections together, a
    /// buffer queued for several connections counted once (see
    /// [`Builder::queue_budget`](crate::Builder::queue_budget)).
    pub queued_bytes: usize,
    /// Connections disconnected for holding the most when the queue budget
    /// was exceeded.
    pub shed: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) connected_total: AtomicU64,
    pub(crate) broadcasts: AtomicU64,
    pub(crate) deliveries: AtomicU64,
    pub(crate) personal: AtomicU64,
    pub(crate) lagged: AtomicU64,
    pub(crate) missed: AtomicU64,
    pub(crate) repaired: AtomicU64,
    pub(crate) replayed: AtomicU64,
    pub(crate) resyncs: AtomicU64,
    pub(crate) joins: AtomicU64,
    pub(crate) leaves: AtomicU64,
    pub(crate) shed: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub(crate) fn snapshot(
        &self,
        connections: usize,
        rooms: usize,
        history_bytes: usize,
        queued_bytes: usize,
    ) -> Stats {
        Stats {
            queued_bytes,
            shed: self.shed.load(Relaxed),
            connections,
            rooms,
            history_bytes,
            connected_total: self.connected_total.load(Relaxed),
            broadcasts: self.broadcasts.load(Relaxed),
            deliveries: self.deliveries.load(Relaxed),
            personal: self.personal.load(Relaxed),
            lagged: self.lagged.load(Relaxed),
            missed: self.missed.load(Relaxed),
            repaired: self.repaired.load(Relaxed),
            replayed: self.replayed.load(Relaxed),
            resyncs: self.resyncs.load(Relaxed),
            joins: self.joins.load(Relaxed),
            leaves: self.leaves.load(Relaxed),
        }
    }
}
