//! A connection's personal messages: a bounded queue that counts what it
//! holds toward the hub's [budget](crate::budget).

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicUsize, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::Notify;

use crate::budget::{Charge, Shares};
use crate::Message;

/// A connection's personal messages: bounded, and, unlike a channel,
/// allocating nothing until something is queued.
pub(crate) struct Personal {
    state: Mutex<PersonalState>,
    /// A place came free, or the queue closed.
    room: Notify,
    /// What the queued messages count toward.
    shares: Arc<Shares>,
    /// Bytes of the queued messages, while they count (0 once detached):
    /// the hub sheds the connections holding the most first.
    queued: AtomicUsize,
}

struct PersonalState {
    /// Each with what it counts toward the budget (nothing once detached).
    messages: VecDeque<(Message, Option<Charge>)>,
    capacity: usize,
    closed: bool,
    /// No longer counted toward the budget: the connection was shed, or
    /// is gone.
    detached: bool,
}

/// Why a personal message was not queued; the message comes back.
pub(crate) enum Refused {
    Full(Message),
    Closed(Message),
}

impl Personal {
    pub(crate) fn new(capacity: usize, shares: Arc<Shares>) -> Self {
        Self {
            state: Mutex::new(PersonalState {
                messages: VecDeque::new(),
                capacity,
                closed: false,
                detached: false,
            }),
            room: Notify::new(),
            shares,
            queued: AtomicUsize::new(0),
        }
    }

    /// Queues `message` if there is room, counting it toward the budget.
    pub(crate) fn try_send(&self, message: Message) -> Result<(), Refused> {
        let mut state = self.lock();
        if state.closed {
            return Err(Refused::Closed(message));
        }
        if state.messages.len() >= state.capacity {
            return Err(Refused::Full(message));
        }
        // Counted under the lock, with the message: detaching takes back
        // exactly what the queue holds.
        let charge = (!state.detached).then(|| {
            self.queued.fetch_add(message.len(), Relaxed);
            self.shares.charge(&message)
        });
        state.messages.push_back((message, charge));
        Ok(())
    }

    /// Queues `message` once there is room; gives it back if the queue
    /// closes first. Dropped early, it has not queued the message.
    pub(crate) async fn send(&self, mut message: Message) -> Result<(), Message> {
        loop {
            // Registered before the attempt: a place freed in between
            // still wakes this sender.
            let room = self.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            match self.try_send(message) {
                Ok(()) => return Ok(()),
                Err(Refused::Closed(back)) => return Err(back),
                Err(Refused::Full(back)) => {
                    message = back;
                    room.await;
                }
            }
        }
    }

    /// No more messages: senders waiting for room give up, and the
    /// connection takes what is queued, then learns the queue is closed.
    pub(crate) fn close(&self) {
        self.lock().closed = true;
        self.room.notify_waiters();
    }

    /// The next message; `Err(true)` once the queue is closed and empty.
    pub(crate) fn try_recv(&self) -> Result<Message, bool> {
        let (message, charge) = {
            let mut state = self.lock();
            match state.messages.pop_front() {
                Some((message, charge)) => {
                    if state.messages.is_empty() && state.messages.capacity() > 64 {
                        // A burst is over: give its memory back.
                        state.messages = VecDeque::new();
                    }
                    if charge.is_some() {
                        self.queued.fetch_sub(message.len(), Relaxed);
                    }
                    (message, charge)
                }
                None => return Err(state.closed),
            }
        };
        // The charge goes back outside the lock.
        drop(charge);
        self.room.notify_one();
        Ok(message)
    }

    /// Bytes queued and counted toward the budget.
    pub(crate) fn queued(&self) -> usize {
        self.queued.load(Relaxed)
    }

    /// Stops counting this queue toward the budget (the connection is
    /// being shed, or is gone); returns how many bytes it held. What is
    /// queued stays queued, uncounted.
    pub(crate) fn detach(&self) -> usize {
        let (held, charges): (usize, Vec<Charge>) = {
            let mut state = self.lock();
            if state.detached {
                return 0;
            }
            state.detached = true;
            let charges = (state.messages.iter_mut())
                .filter_map(|(_, charge)| charge.take())
                .collect();
            (self.queued.swap(0, Relaxed), charges)
        };
        // Given back outside the lock.
        drop(charges);
        held
    }

    fn lock(&self) -> MutexGuard<'_, PersonalState> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

impl fmt::Debug for Personal {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let state = self.lock();
        f.debug_struct("Personal")
            .field("queued", &state.messages.len())
            .field("bytes", &self.queued())
            .field("capacity", &state.capacity)
            .field("closed", &state.closed)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::{Personal, Refused};
    use crate::budget::Budget;
    use crate::Message;

    #[tokio::test]
    async fn a_full_queue_makes_senders_wait_and_closing_gives_messages_back() {
        let queue = Arc::new(Personal::new(1, Budget::new(100).shares()));
        assert!(queue.try_send(Message::text("one")).is_ok());
        assert!(matches!(
            queue.try_send(Message::text("x")),
            Err(Refused::Full(_))
        ));
        let waiting = tokio::spawn({
            let queue = Arc::clone(&queue);
            async move { queue.send(Message::text("two")).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        // Taking one makes room for the waiting sender.
        assert_eq!(queue.try_recv().ok(), Some(Message::text("one")));
        let sent = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert!(matches!(sent, Ok(Ok(Ok(())))));
        // A sender still waiting when the queue closes gets its message back;
        // what was queued is still read, then the end.
        let waiting = tokio::spawn({
            let queue = Arc::clone(&queue);
            async move { queue.send(Message::text("three")).await }
        });
        tokio::task::yield_now().await;
        queue.close();
        let back = tokio::time::timeout(Duration::from_secs(5), waiting).await;
        assert!(matches!(back, Ok(Ok(Err(m))) if m == Message::text("three")));
        assert_eq!(queue.try_recv().ok(), Some(Message::text("two")));
        assert!(matches!(queue.try_recv(), Err(true)), "closed and empty");
        assert!(matches!(
            queue.try_send(Message::text("late")),
            Err(Refused::Closed(_))
        ));
    }

    #[test]
    fn a_detached_queue_keeps_its_messages_and_counts_nothing() {
        let budget = Budget::new(1 << 20);
        let (a, b) = (
            Personal::new(8, budget.shares()),
            Personal::new(8, budget.shares()),
        );
        let list = Message::text("n".repeat(2000));
        for queue in [&a, &b] {
            assert!(queue.try_send(list.clone()).is_ok());
            assert!(queue.try_send(Message::text("hi")).is_ok());
        }
        // The list is one buffer in two queues; each queue holds it.
        assert_eq!(budget.total(), 2000 + 2 * 2);
        assert_eq!((a.queued(), b.queued()), (2002, 2002));
        assert_eq!(a.detach(), 2002);
        assert_eq!(a.detach(), 0, "detached once");
        assert_eq!(budget.total(), 2000 + 2);
        // Still queued, and no longer counted when taken or added.
        assert!(a.try_send(Message::text("late")).is_ok());
        assert_eq!(a.try_recv().ok(), Some(list.clone()));
        assert_eq!(budget.total(), 2000 + 2);
        assert_eq!(b.try_recv().ok(), Some(list));
        assert_eq!((budget.total(), b.queued()), (2, 2));
        drop(b);
        assert_eq!(budget.total(), 0);
    }
}
