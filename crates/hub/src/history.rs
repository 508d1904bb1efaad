//! How much history is kept: by each topic ([`HistoryLimits`]) and by the
//! whole hub ([`HistoryBudget`]).

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;

/// How much history each topic keeps.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HistoryLimits {
    pub(crate) messages: usize,
    pub(crate) bytes: usize,
}

impl HistoryLimits {
    pub(crate) fn enabled(&self) -> bool {
        self.messages > 0 && self.bytes > 0
    }
}

/// The hub-wide limit on history: every topic's history counts toward it,
/// and past it the history of the topics used longest ago goes first.
#[derive(Debug)]
pub(crate) struct HistoryBudget {
    limit: usize,
    /// Payload bytes in every topic's history.
    held: AtomicUsize,
    /// Ticks at every use of a topic: a topic's last tick says how long
    /// ago it was used, relative to the others.
    clock: AtomicU64,
    /// Held by the one caller trimming.
    trimming: Mutex<()>,
}

impl HistoryBudget {
    pub(crate) fn new(limit: usize) -> Self {
        Self {
            limit: limit.max(1),
            held: AtomicUsize::new(0),
            clock: AtomicU64::new(0),
            trimming: Mutex::new(()),
        }
    }

    pub(crate) fn held(&self) -> usize {
        self.held.load(Ordering::Relaxed)
    }

    pub(crate) fn add(&self, bytes: usize) {
        self.held.fetch_add(bytes, Ordering::Relaxed);
    }

    pub(crate) fn remove(&self, bytes: usize) {
        self.held.fetch_sub(bytes, Ordering::Relaxed);
    }

    pub(crate) fn is_over(&self) -> bool {
        self.held() > self.limit
    }

    /// What trimming brings history down to: an eighth under the limit,
    /// so that the next messages do not each trim again.
    fn low_water(&self) -> usize {
        self.limit - self.limit / 8
    }

    pub(crate) fn tick(&self) -> u64 {
        self.clock.fetch_add(1, Ordering::Relaxed)
    }

    /// Drops history from `topics`, those used longest ago first and the
    /// oldest messages of each first, until the total is back under the
    /// limit (an eighth under it). One caller trims at a time; others go on.
    pub(crate) fn trim<'a, T: Kept + 'a>(&self, topics: impl IntoIterator<Item = &'a T>) {
        let Ok(_trimming) = self.trimming.try_lock() else {
            return;
        };
        let mut topics: Vec<_> = topics
            .into_iter()
            .map(|room| (room.last_used(), room))
            .collect();
        topics.sort_unstable_by_key(|(last_used, _)| *last_used);
        let target = self.low_water();
        for (_, room) in topics {
            let held = self.held();
            if held <= target {
                break;
            }
            room.drop_history(held - target);
        }
    }
}

/// A topic's history, as the hub-wide budget trims it.
pub(crate) trait Kept {
    /// The budget's clock when the topic was last used.
    fn last_used(&self) -> u64;
    /// Drops its oldest history until `bytes` are freed or none is left.
    fn drop_history(&self, bytes: usize);
}
