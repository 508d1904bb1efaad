//! The hub-wide budget for bytes waiting in personal queues.
//!
//! Broadcasts live once in their topic's channel and history, both bounded
//! per topic. Personal messages are copied into each connection's own
//! queue: bounded in count per connection, but not in bytes across a hub
//! of many connections. This counts those bytes, hub-wide and per
//! connection, so the hub can shed the connections holding the most when
//! the total goes over the budget.

use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};

/// Set in a connection's count once its bytes no longer count toward the
/// hub's total (it was shed, or dropped).
const DETACHED: usize = 1 << (usize::BITS - 1);

/// Bytes queued for one connection.
#[derive(Debug, Default)]
pub(crate) struct Queued(AtomicUsize);

impl Queued {
    /// Bytes queued for the connection now (0 once detached).
    pub(crate) fn bytes(&self) -> usize {
        let queued = self.0.load(Relaxed);
        if queued & DETACHED == 0 {
            queued
        } else {
            0
        }
    }
}

/// The hub's total, and its limit.
#[derive(Debug)]
pub(crate) struct Budget {
    limit: usize,
    total: AtomicUsize,
}

impl Budget {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit,
            total: AtomicUsize::new(0),
        }
    }

    /// Counts `bytes` about to be queued for a connection (count before the
    /// message becomes visible to the connection, so that taking it never
    /// precedes counting it). Returns whether the hub is now over budget.
    pub(crate) fn add(&self, queued: &Queued, bytes: usize) -> bool {
        let before = queued.0.fetch_add(bytes, Relaxed);
        if before & DETACHED == 0 {
            let total = self.total.fetch_add(bytes, Relaxed) + bytes;
            total > self.limit
        } else {
            false
        }
    }

    /// Uncounts `bytes` taken from (or never placed in) a connection's
    /// queue.
    pub(crate) fn remove(&self, queued: &Queued, bytes: usize) {
        let before = queued.0.fetch_sub(bytes, Relaxed);
        if before & DETACHED == 0 {
            self.total.fetch_sub(bytes, Relaxed);
        }
    }

    /// Stops counting a connection's bytes (it is being shed or dropped);
    /// returns how many it held.
    pub(crate) fn detach(&self, queued: &Queued) -> usize {
        let before = queued.0.fetch_or(DETACHED, Relaxed);
        if before & DETACHED == 0 {
            self.total.fetch_sub(before, Relaxed);
            before
        } else {
            0
        }
    }

    pub(crate) fn total(&self) -> usize {
        self.total.load(Relaxed)
    }

    pub(crate) fn is_over(&self) -> bool {
        self.total() > self.limit
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_add_remove_and_detach() {
        let budget = Budget::new(100);
        let (a, b) = (Queued::default(), Queued::default());
        assert!(!budget.add(&a, 60));
        assert!(budget.add(&b, 50));
        assert_eq!(budget.total(), 110);
        budget.remove(&a, 20);
        assert_eq!((budget.total(), a.bytes()), (90, 40));
        assert_eq!(budget.detach(&b), 50);
        assert_eq!((budget.total(), b.bytes()), (40, 0));
        // Whatever happens to a detached connection no longer counts.
        assert!(!budget.add(&b, 1000));
        budget.remove(&b, 1000);
        budget.remove(&b, 50);
        assert_eq!(budget.detach(&b), 0);
        assert_eq!(budget.total(), 40);
        budget.remove(&a, 40);
        assert_eq!(budget.total(), 0);
    }
}
