//! A connection's mailbox: what the hub queues for one connection besides
//! broadcasts (personal messages, joins and leaves, its removal), and the
//! signal that tells the connection to look.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use futures_util::task::AtomicWaker;

use crate::budget::Shares;
use crate::error::RecvError;
use crate::personal::Personal;
use crate::room::{Room, Subscribed};
use crate::Topic;

/// A change to a connection's topics, sent by the hub.
pub(crate) enum Control {
    /// Start (or restart) a topic's stream.
    Join {
        room: Arc<Room>,
        subscribed: Subscribed,
    },
    Leave(Topic),
}

/// A connection's joins and leaves, queued by the hub. Unlike a channel,
/// it allocates nothing until something is queued: most connections never
/// join anything after connecting.
///
/// The hub signals the connection ([`Membership::notify`]) after queueing.
#[derive(Default)]
pub(crate) struct Controls {
    queue: Mutex<VecDeque<Control>>,
}

impl Controls {
    pub(crate) fn send(&self, control: Control) {
        self.lock().push_back(control);
    }

    pub(crate) fn try_recv(&self) -> Option<Control> {
        self.lock().pop_front()
    }

    fn lock(&self) -> MutexGuard<'_, VecDeque<Control>> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for Controls {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Controls")
            .field("queued", &self.lock().len())
            .finish()
    }
}

/// Shared by a registry entry and its connection: how the connection left.
#[derive(Debug)]
pub(crate) struct Membership {
    removal: OnceLock<Removal>,
    /// Set after anything is queued for the connection besides broadcasts
    /// (a personal message, a join or leave, the removal): the connection
    /// looks at its queues only when this is set.
    signal: AtomicBool,
    /// Joins and leaves for the connection.
    pub(crate) controls: Controls,
    /// Personal messages for the connection.
    pub(crate) personal: Personal,
    /// The connection waiting for the signal, if it is.
    waker: AtomicWaker,
}

/// Why and when a connection was removed.
#[derive(Clone, Debug)]
pub(crate) struct Removal {
    pub(crate) reason: RecvError,
    /// Said with [`RecvError::Removed`].
    pub(crate) farewell: Option<Arc<str>>,
    /// For each topic the connection was in, the epoch and offset of the
    /// first message sent after the removal: earlier ones are still
    /// delivered.
    pub(crate) cutoffs: Vec<(Topic, u64, u64)>,
}

impl Removal {
    pub(crate) fn cutoff(&self, topic: &Topic) -> Option<(u64, u64)> {
        self.cutoffs
            .iter()
            .find(|(t, _, _)| t == topic)
            .map(|(_, epoch, offset)| (*epoch, *offset))
    }
}

impl Membership {
    pub(crate) fn new(queue_capacity: usize, shares: Arc<Shares>) -> Self {
        Self {
            removal: OnceLock::new(),
            signal: AtomicBool::new(false),
            controls: Controls::default(),
            personal: Personal::new(queue_capacity, shares),
            waker: AtomicWaker::new(),
        }
    }

    pub(crate) fn remove(&self, removal: Removal) {
        let _ = self.removal.set(removal);
        // Senders waiting for room give up; what is queued is still read.
        self.personal.close();
        self.notify();
    }

    /// Something was queued for the connection.
    pub(crate) fn notify(&self) {
        self.signal.store(true, Ordering::Release);
        self.waker.wake();
    }

    /// Whether the signal is up; if not, `cx` is woken when it goes up.
    pub(crate) fn is_signalled(&self, cx: &std::task::Context<'_>) -> bool {
        // Registered before the check: a signal in between still wakes.
        self.waker.register(cx.waker());
        self.signal.load(Ordering::Acquire)
    }

    /// Whether the signal is up, without taking it.
    #[inline]
    pub(crate) fn is_raised(&self) -> bool {
        self.signal.load(Ordering::Relaxed)
    }

    /// Takes the signal: whether anything was queued since the last take.
    pub(crate) fn take_signal(&self) -> bool {
        // Read first: most calls find nothing, and a read leaves the cache
        // line shared where a swap would take it.
        self.signal.load(Ordering::Relaxed) && self.signal.swap(false, Ordering::Acquire)
    }

    pub(crate) fn removal(&self) -> Option<&Removal> {
        self.removal.get()
    }
}
