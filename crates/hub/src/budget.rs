//! The hub-wide budget for bytes waiting in personal queues.
//!
//! Broadcasts live once in their topic's channel and history, both bounded
//! per topic. Personal messages wait in each connection's own queue:
//! bounded in count per connection, but not in bytes across a hub of many
//! connections. The budget counts the memory those queues hold, so the hub
//! can shed the connections holding the most when the total goes over it.
//!
//! It counts memory, not copies: one message queued for many connections
//! (the same member list for every joiner, a line for every connection of a
//! user) is one buffer, counted once, until the last queue holding it lets
//! it go. Messages of [`SHARED_FROM`] bytes or more are recognised by their
//! buffer; smaller ones are counted once per queue (the excess is at most
//! `SHARED_FROM` bytes per queued message).

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

use crate::Message;

/// From this size on, a message queued for several connections counts
/// once.
pub(crate) const SHARED_FROM: usize = 1024;

/// The hub's total, and its limit.
#[derive(Debug)]
pub(crate) struct Budget {
    limit: usize,
    shares: Arc<Shares>,
}

/// What the queues hold, hub-wide.
#[derive(Default)]
pub(crate) struct Shares {
    total: AtomicUsize,
    /// The buffers of large messages queued, by address and length: the
    /// queues holding one share its charge.
    held: Mutex<HashMap<(usize, usize), Weak<Held>>>,
}

/// One large buffer counted toward the total while a queue holds it.
struct Held {
    key: (usize, usize),
    shares: Arc<Shares>,
}

/// What one queued message counts toward the budget; given back when
/// dropped (the last queue holding a shared buffer gives it back).
pub(crate) struct Charge(Counted);

enum Counted {
    /// Counted on its own.
    Bytes(usize, Arc<Shares>),
    /// A buffer shared by every queue holding it; given back with the
    /// last.
    Shared { _held: Arc<Held> },
}

impl Budget {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit,
            shares: Arc::default(),
        }
    }

    /// What a connection's queue counts its messages toward.
    pub(crate) fn shares(&self) -> Arc<Shares> {
        Arc::clone(&self.shares)
    }

    pub(crate) fn total(&self) -> usize {
        self.shares.total()
    }

    pub(crate) fn is_over(&self) -> bool {
        self.total() > self.limit
    }
}

impl Shares {
    pub(crate) fn total(&self) -> usize {
        self.total.load(Relaxed)
    }

    /// Counts `message`, about to be queued: its bytes, unless a queue
    /// holds its buffer already.
    pub(crate) fn charge(self: &Arc<Self>, message: &Message) -> Charge {
        let bytes = message.len();
        if bytes < SHARED_FROM {
            self.total.fetch_add(bytes, Relaxed);
            return Charge(Counted::Bytes(bytes, Arc::clone(self)));
        }
        let key = (message.as_bytes().as_ptr() as usize, bytes);
        let mut held = self.held();
        if let Some(shared) = held.get(&key).and_then(Weak::upgrade) {
            return Charge(Counted::Shared { _held: shared });
        }
        self.total.fetch_add(bytes, Relaxed);
        let shared = Arc::new(Held {
            key,
            shares: Arc::clone(self),
        });
        held.insert(key, Arc::downgrade(&shared));
        Charge(Counted::Shared { _held: shared })
    }

    fn held(&self) -> MutexGuard<'_, HashMap<(usize, usize), Weak<Held>>> {
        // Every step leaves the map consistent.
        self.held.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.shares.total.fetch_sub(self.key.1, Relaxed);
        let mut held = self.shares.held();
        // A buffer queued again after the last holder let go has a new
        // entry: only this one's is removed.
        if held
            .get(&self.key)
            .is_some_and(|entry| std::ptr::eq(entry.as_ptr(), self))
        {
            held.remove(&self.key);
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if let Counted::Bytes(bytes, shares) = &self.0 {
            shares.total.fetch_sub(*bytes, Relaxed);
        }
    }
}

impl fmt::Debug for Shares {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shares")
            .field("total", &self.total())
            .finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_buffer_queued_many_times_counts_once_until_the_last_lets_go() {
        let budget = Budget::new(5000);
        let shares = budget.shares();
        let list = Message::text("n".repeat(3000));
        let mut charges: Vec<_> = (0..100).map(|_| shares.charge(&list.clone())).collect();
        assert_eq!(budget.total(), 3000);
        assert!(!budget.is_over());
        // Another buffer of the same bytes is other memory.
        let copy = Message::text("n".repeat(3000));
        let other = shares.charge(&copy);
        assert_eq!(budget.total(), 6000);
        assert!(budget.is_over());
        drop(other);
        // Held while any queue holds it.
        let last = charges.pop();
        drop(charges);
        assert_eq!(budget.total(), 3000);
        drop(last);
        assert_eq!(budget.total(), 0);
        // Queued again after the last let go: counted again, once.
        let again = [shares.charge(&list), shares.charge(&list)];
        assert_eq!(budget.total(), 3000);
        drop(again);
        assert_eq!((budget.total(), shares.held().len()), (0, 0));
    }

    #[test]
    fn small_messages_count_once_per_queue() {
        let budget = Budget::new(100);
        let shares = budget.shares();
        let line = Message::text("hello");
        let charges = [shares.charge(&line), shares.charge(&line)];
        assert_eq!(budget.total(), 10);
        drop(charges);
        assert_eq!(budget.total(), 0);
    }
}
