//! The hub: a registry of connections and a fan-out channel.

use std::collections::HashMap;
use std::fmt;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock, PoisonError};

use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::CancellationToken;

use crate::connection::Connection;
use crate::error::{ConnectError, RecvError, SendError};
use crate::stats::{Counters, Stats};
use crate::{ConnId, Message, Metadata};

/// Default number of broadcast messages a connection may fall behind by.
pub const DEFAULT_CAPACITY: usize = 8192;
/// Default number of personal messages queued per connection.
pub const DEFAULT_QUEUE_CAPACITY: usize = 256;
/// Largest accepted capacity; larger requests are lowered to this.
pub const MAX_CAPACITY: usize = 1 << 24;

/// What happens to a connection that falls further behind the fan-out than
/// the hub's [capacity](Builder::capacity).
///
/// The fan-out never waits for a slow connection: the others keep receiving
/// at full speed, and the slow one loses the oldest messages it had not read.
/// This policy decides how it learns about that.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlowConsumer {
    /// The connection is removed from the hub and its
    /// [`recv`](Connection::recv) returns [`RecvError::Lagged`]. A WebSocket
    /// adapter closes it with 1013 (try again later) so the client reconnects.
    #[default]
    Disconnect,
    /// The connection stays registered and its `recv` yields one
    /// [`Event::Lagged`](crate::Event::Lagged) saying how many messages it
    /// missed, then continues with the oldest message still available.
    Skip,
}

/// Configures and builds a [`Hub`].
///
/// ```
/// use hub::{Hub, SlowConsumer};
///
/// let hub = Hub::builder()
///     .capacity(1024)
///     .queue_capacity(64)
///     .slow_consumer(SlowConsumer::Skip)
///     .build();
/// assert!(hub.is_empty());
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct Builder {
    capacity: usize,
    queue_capacity: usize,
    slow_consumer: SlowConsumer,
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            capacity: DEFAULT_CAPACITY,
            queue_capacity: DEFAULT_QUEUE_CAPACITY,
            slow_consumer: SlowConsumer::default(),
        }
    }
}

impl Builder {
    /// How many broadcast messages the hub retains for connections that have
    /// not read them yet (default [`DEFAULT_CAPACITY`]). A connection further
    /// behind than this meets the [slow-consumer policy](SlowConsumer).
    ///
    /// Memory held by the fan-out is at most `capacity` messages. Values are
    /// clamped to `1..=MAX_CAPACITY`.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.clamp(1, MAX_CAPACITY);
        self
    }

    /// How many personal messages may wait for each connection (default
    /// [`DEFAULT_QUEUE_CAPACITY`]). Values are clamped to `1..=MAX_CAPACITY`.
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = capacity.clamp(1, MAX_CAPACITY);
        self
    }

    /// What happens to a connection that falls behind (default
    /// [`SlowConsumer::Disconnect`]).
    pub fn slow_consumer(mut self, policy: SlowConsumer) -> Self {
        self.slow_consumer = policy;
        self
    }

    /// Builds the hub.
    pub fn build(self) -> Hub {
        let (fanout, _) = broadcast::channel(self.capacity);
        let inner = Arc::new(Inner {
            fanout,
            next_seq: AtomicU64::new(0),
            registry: Mutex::new(Registry::default()),
            next_id: AtomicU64::new(1),
            queue_capacity: self.queue_capacity,
            slow_consumer: self.slow_consumer,
            counters: Counters::default(),
        });
        Hub {
            _last_handle: Arc::new(LastHandle(Arc::clone(&inner))),
            inner,
        }
    }
}

/// A broadcast hub: connections register with it, and it delivers personal
/// messages to one of them or broadcasts to all.
///
/// `Hub` is a cheap handle: clone it into every task that needs it. It has
/// no notion of sockets; a transport (such as `hub-ws`) or a test drives each
/// [`Connection`] by reading what the hub delivers to it.
///
/// # Examples
///
/// ```
/// use hub::{Event, Hub, Message};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let hub = Hub::new();
/// let mut alice = hub.connect()?;
/// let mut bob = hub.connect()?;
///
/// assert_eq!(hub.broadcast("hello"), 2);
/// assert_eq!(alice.recv().await?, Event::Message(Message::text("hello")));
/// assert_eq!(bob.recv().await?, Event::Message(Message::text("hello")));
///
/// hub.try_send_personal(bob.id(), "just for you")?;
/// assert_eq!(bob.recv().await?, Event::Message(Message::text("just for you")));
///
/// drop(alice); // dropping a connection disconnects it
/// assert_eq!(hub.len(), 1);
/// # Ok(())
/// # }
/// ```
///
/// When the last `Hub` handle is dropped, the hub shuts down: every
/// connection still open receives [`RecvError::Shutdown`].
#[derive(Clone)]
pub struct Hub {
    inner: Arc<Inner>,
    /// Shared by the handles (not by connections); shuts the hub down when
    /// the last one goes, so no connection waits forever for a hub nobody
    /// can reach.
    _last_handle: Arc<LastHandle>,
}

struct LastHandle(Arc<Inner>);

impl Drop for LastHandle {
    fn drop(&mut self) {
        self.0.shutdown();
    }
}

pub(crate) struct Inner {
    pub(crate) fanout: broadcast::Sender<Envelope>,
    /// Sequence number of the next broadcast; see [`Removal::cutoff`].
    next_seq: AtomicU64,
    registry: Mutex<Registry>,
    next_id: AtomicU64,
    queue_capacity: usize,
    pub(crate) slow_consumer: SlowConsumer,
    pub(crate) counters: Counters,
}

#[derive(Default)]
struct Registry {
    conns: HashMap<ConnId, Entry>,
    shut_down: bool,
}

struct Entry {
    personal: mpsc::Sender<Message>,
    metadata: Metadata,
    membership: Arc<Membership>,
}

/// Shared by a registry entry and its connection: how the connection left.
#[derive(Debug, Default)]
pub(crate) struct Membership {
    removal: OnceLock<Removal>,
    /// Cancelled on removal, waking senders that wait for queue room.
    removed: CancellationToken,
}

/// Why and when a connection was removed.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Removal {
    pub(crate) reason: RecvError,
    /// Broadcasts numbered below this were sent before the removal and are
    /// still delivered; later ones are not.
    pub(crate) cutoff: u64,
}

impl Membership {
    fn remove(&self, reason: RecvError, cutoff: u64) {
        let _ = self.removal.set(Removal { reason, cutoff });
        self.removed.cancel();
    }

    pub(crate) fn removal(&self) -> Option<Removal> {
        self.removal.get().copied()
    }
}

/// What travels through the fan-out channel.
#[derive(Clone, Debug)]
pub(crate) struct Envelope {
    pub(crate) message: Message,
    /// A connection that must not receive this message.
    pub(crate) except: Option<ConnId>,
    /// Order of the broadcast, for a removed connection's cutoff.
    pub(crate) seq: u64,
}

impl Default for Hub {
    fn default() -> Self {
        Self::new()
    }
}

impl fmt::Debug for Hub {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Hub")
            .field("connections", &self.len())
            .field("queued", &self.inner.fanout.len())
            .field("slow_consumer", &self.inner.slow_consumer)
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// A hub with default settings; see [`Builder`] to change them.
    #[must_use]
    pub fn new() -> Self {
        Builder::default().build()
    }

    /// Starts configuring a hub.
    pub fn builder() -> Builder {
        Builder::default()
    }

    /// Registers an anonymous connection.
    ///
    /// # Errors
    ///
    /// [`ConnectError::Shutdown`] once the hub has been shut down.
    pub fn connect(&self) -> Result<Connection, ConnectError> {
        self.connect_with(Metadata::new())
    }

    /// Registers a connection carrying `metadata`.
    ///
    /// The connection receives every broadcast sent after this returns, and
    /// every personal message addressed to its [id](Connection::id).
    ///
    /// # Errors
    ///
    /// [`ConnectError::Shutdown`] once the hub has been shut down.
    pub fn connect_with(&self, metadata: Metadata) -> Result<Connection, ConnectError> {
        let inner = &self.inner;
        let mut registry = inner.lock();
        if registry.shut_down {
            return Err(ConnectError::Shutdown);
        }
        let raw = inner.next_id.fetch_add(1, Ordering::Relaxed);
        let id = ConnId::new(NonZeroU64::new(raw).unwrap_or(NonZeroU64::MIN));
        let (personal, personal_rx) = mpsc::channel(inner.queue_capacity);
        let membership = Arc::new(Membership::default());
        registry.conns.insert(
            id,
            Entry {
                personal,
                metadata: metadata.clone(),
                membership: Arc::clone(&membership),
            },
        );
        // Subscribing under the lock orders this connection after every
        // broadcast that completed before `connect` returned.
        let fanout = inner.fanout.subscribe();
        drop(registry);
        Counters::add(&inner.counters.connected_total, 1);
        Ok(Connection::new(
            id,
            metadata,
            Arc::clone(inner),
            fanout,
            personal_rx,
            membership,
        ))
    }

    /// Removes a connection. Its [`Connection::recv`] returns what was sent
    /// to it before the removal, then [`RecvError::Disconnected`]; a
    /// [`send_personal`](Self::send_personal) waiting for room in its queue
    /// gives up with [`SendError::UnknownConnection`].
    ///
    /// Returns whether the connection was registered. Calling it again, or
    /// with an unknown id, does nothing and returns `false`.
    pub fn disconnect(&self, id: ConnId) -> bool {
        self.inner.remove(id, RecvError::Disconnected)
    }

    /// Removes every connection and refuses new ones. Idempotent.
    ///
    /// Each connection's `recv` returns what was sent to it before the
    /// shutdown, then [`RecvError::Shutdown`].
    pub fn shutdown(&self) {
        self.inner.shutdown();
    }

    /// Whether [`shutdown`](Self::shutdown) has been called.
    #[must_use]
    pub fn is_shut_down(&self) -> bool {
        self.inner.lock().shut_down
    }

    /// Queues `message` for one connection, without waiting.
    ///
    /// # Errors
    ///
    /// - [`SendError::UnknownConnection`] if `id` is not registered (never
    ///   was, or has disconnected).
    /// - [`SendError::QueueFull`] if the connection's personal queue is full.
    ///
    /// Both give the message back.
    pub fn try_send_personal(
        &self,
        id: ConnId,
        message: impl Into<Message>,
    ) -> Result<(), SendError> {
        let message = message.into();
        let registry = self.inner.lock();
        let Some(entry) = registry.conns.get(&id) else {
            return Err(SendError::UnknownConnection { id, message });
        };
        match entry.personal.try_send(message) {
            Ok(()) => {
                Counters::add(&self.inner.counters.personal, 1);
                Ok(())
            }
            Err(mpsc::error::TrySendError::Full(message)) => {
                Err(SendError::QueueFull { id, message })
            }
            Err(mpsc::error::TrySendError::Closed(message)) => {
                Err(SendError::UnknownConnection { id, message })
            }
        }
    }

    /// Queues `message` for one connection, waiting while its personal queue
    /// is full.
    ///
    /// This waits for that one connection only; nothing else is held up. If
    /// the connection may stall, prefer [`try_send_personal`](Self::try_send_personal)
    /// or wrap this in a timeout.
    ///
    /// # Errors
    ///
    /// [`SendError::UnknownConnection`] if `id` is not registered, or goes
    /// away while waiting; the message is given back.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if the future is dropped before completing, the message
    /// was not queued.
    pub async fn send_personal(
        &self,
        id: ConnId,
        message: impl Into<Message>,
    ) -> Result<(), SendError> {
        let message = message.into();
        let found = (self.inner.lock().conns.get(&id))
            .map(|e| (e.personal.clone(), Arc::clone(&e.membership)));
        let Some((sender, membership)) = found else {
            return Err(SendError::UnknownConnection { id, message });
        };
        tokio::select! {
            biased;
            () = membership.removed.cancelled() => Err(SendError::UnknownConnection { id, message }),
            permit = sender.reserve() => match permit {
                Ok(permit) => {
                    permit.send(message);
                    Counters::add(&self.inner.counters.personal, 1);
                    Ok(())
                }
                Err(_) => Err(SendError::UnknownConnection { id, message }),
            },
        }
    }

    /// Sends `message` to every connection; returns how many it reached.
    ///
    /// Never waits: a connection that does not keep up meets the
    /// [slow-consumer policy](SlowConsumer) instead of holding the others
    /// back. With no connection it returns 0 and the message is dropped.
    pub fn broadcast(&self, message: impl Into<Message>) -> usize {
        self.fan_out(message.into(), None)
    }

    /// Sends `message` to every connection except `except` (typically the
    /// sender); returns how many it reached.
    pub fn broadcast_except(&self, except: ConnId, message: impl Into<Message>) -> usize {
        self.fan_out(message.into(), Some(except))
    }

    fn fan_out(&self, message: Message, except: Option<ConnId>) -> usize {
        let counters = &self.inner.counters;
        Counters::add(&counters.broadcasts, 1);
        let excluded = except.map_or(0, |id| usize::from(self.contains(id)));
        let seq = self.inner.next_seq.fetch_add(1, Ordering::SeqCst);
        let envelope = Envelope {
            message,
            except,
            seq,
        };
        let reached = match self.inner.fanout.send(envelope) {
            Ok(receivers) => receivers.saturating_sub(excluded),
            Err(_) => 0,
        };
        Counters::add(&counters.deliveries, reached as u64);
        reached
    }

    /// Whether `id` is registered.
    #[must_use]
    pub fn contains(&self, id: ConnId) -> bool {
        self.inner.lock().conns.contains_key(&id)
    }

    /// The metadata `id` connected with, if it is registered.
    #[must_use]
    pub fn metadata(&self, id: ConnId) -> Option<Metadata> {
        self.inner.lock().conns.get(&id).map(|e| e.metadata.clone())
    }

    /// Ids of the registered connections, in no particular order.
    #[must_use]
    pub fn connections(&self) -> Vec<ConnId> {
        self.inner.lock().conns.keys().copied().collect()
    }

    /// Number of registered connections.
    #[must_use]
    pub fn len(&self) -> usize {
        self.inner.lock().conns.len()
    }

    /// Whether no connection is registered.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// A snapshot of the hub's counters.
    #[must_use]
    pub fn stats(&self) -> Stats {
        self.inner.counters.snapshot(self.len())
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        // The registry is left consistent at every step, so a panic in
        // another thread while holding the lock does not invalidate it.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Removes `id` if registered, recording why. Returns whether it was.
    pub(crate) fn remove(&self, id: ConnId, reason: RecvError) -> bool {
        let entry = self.lock().conns.remove(&id);
        match entry {
            Some(entry) => {
                // Read after the removal: every broadcast that completed
                // before it has a lower number.
                let cutoff = self.next_seq.load(Ordering::SeqCst);
                entry.membership.remove(reason, cutoff);
                true
            }
            None => false,
        }
    }

    fn shutdown(&self) {
        let removed: Vec<Entry> = {
            let mut registry = self.lock();
            registry.shut_down = true;
            registry.conns.drain().map(|(_, entry)| entry).collect()
        };
        let cutoff = self.next_seq.load(Ordering::SeqCst);
        for entry in removed {
            entry.membership.remove(RecvError::Shutdown, cutoff);
        }
    }
}
