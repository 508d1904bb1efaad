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
    /// Connections ever registered.
    pub connected_total: u64,
    /// Calls to a broadcast method.
    pub broadcasts: u64,
    /// Messages handed to connections by broadcasts: the sum of what each
    /// broadcast reached.
    pub deliveries: u64,
    /// Personal messages queued.
    pub personal: u64,
    /// Times a connection fell behind the fan-out capacity.
    pub lagged: u64,
    /// Broadcast messages missed by lagging connections, in total.
    pub missed: u64,
}

#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub(crate) connected_total: AtomicU64,
    pub(crate) broadcasts: AtomicU64,
    pub(crate) deliveries: AtomicU64,
    pub(crate) personal: AtomicU64,
    pub(crate) lagged: AtomicU64,
    pub(crate) missed: AtomicU64,
}

impl Counters {
    pub(crate) fn add(counter: &AtomicU64, n: u64) {
        counter.fetch_add(n, Relaxed);
    }

    pub(crate) fn snapshot(&self, connections: usize) -> Stats {
        Stats {
            connections,
            connected_total: self.connected_total.load(Relaxed),
            broadcasts: self.broadcasts.load(Relaxed),
            deliveries: self.deliveries.load(Relaxed),
            personal: self.personal.load(Relaxed),
            lagged: self.lagged.load(Relaxed),
            missed: self.missed.load(Relaxed),
        }
    }
}
