//! The hub: a registry of connections, rooms and their fan-out channels.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::num::NonZeroU64;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::broadcast;

use crate::audience::{Audience, Except};
use crate::backplane::{Backplane, Publication, Remote, LOCAL_BITS, MAX_NODE};
use crate::budget::Budget;
use crate::builder::{Builder, SlowConsumer};
use crate::connection::Connection;
use crate::error::{ConnectError, JoinError, RecvError, SendError};
use crate::mailbox::{Control, Membership, Removal};
use crate::personal::Refused;
use crate::presence::{Presence, PresenceEvent, PresenceKind};
use crate::room::{HistoryBudget, HistoryLimits, Placing, Room, Window, PENDING};
use crate::rooms::Rooms;
use crate::stats::{Counters, Stats};
use crate::{ConnId, Message, Metadata, Position, RoomName, Topic};

/// The bits of a connection id that count this node's connections.
const LOCAL_MASK: u64 = (1 << LOCAL_BITS) - 1;

/// Presence events kept for slow subscribers.
const PRESENCE_CAPACITY: usize = 1024;

/// A broadcast hub: connections register with it, join rooms, and receive
/// personal messages, broadcasts to everyone and broadcasts to their rooms.
///
/// `Hub` is a cheap handle: clone it into every task that needs it. It has
/// no notion of sockets; a transport (such as `hub-ws`) or a test drives each
/// [`Connection`] by reading what the hub delivers to it.
///
/// # Examples
///
/// ```
/// use hub::{Hub, Message};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let hub = Hub::new();
/// let mut alice = hub.connect()?;
/// let mut bob = hub.connect()?;
///
/// assert_eq!(hub.broadcast("hello"), 2);
/// assert_eq!(alice.recv().await?.into_message(), Some(Message::text("hello")));
/// assert_eq!(bob.recv().await?.into_message(), Some(Message::text("hello")));
///
/// hub.join(bob.id(), "rust")?;
/// assert_eq!(hub.to("rust").broadcast("just the rustaceans"), 1);
/// assert_eq!(bob.recv().await?.into_message(), Some(Message::text("just the rustaceans")));
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
    /// The topic every connection is in.
    all: Arc<Room>,
    rooms: Rooms,
    registry: Mutex<Registry>,
    next_id: AtomicU64,
    presence: broadcast::Sender<PresenceEvent>,
    capacity: usize,
    queue_capacity: usize,
    history: HistoryLimits,
    /// Counts the history of every topic, and trims it past its limit.
    history_budget: Arc<HistoryBudget>,
    pub(crate) slow_consumer: SlowConsumer,
    pub(crate) counters: Counters,
    pub(crate) budget: Budget,
    /// Held by the one caller shedding connections over the budget.
    shedding: Mutex<()>,
    /// This node's number, placed where connection ids carry it.
    node_bits: u64,
    backplane: Option<Arc<dyn Backplane>>,
}

#[derive(Default)]
struct Registry {
    conns: HashMap<ConnId, Entry>,
    users: HashMap<Arc<str>, HashSet<ConnId>>,
    shut_down: bool,
}

struct Entry {
    metadata: Metadata,
    rooms: HashSet<RoomName>,
    membership: Arc<Membership>,
}

/// How a [`Hub::resume`] went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Resume {
    /// Every message after the given position follows, from history, then
    /// live ones: no gap, no duplicate.
    CaughtUp {
        /// How many came from history.
        replayed: u64,
    },
    /// History does not reach back to the given position, or the epoch
    /// changed: the connection receives [`Event::Resync`](crate::Event::Resync),
    /// then what history has, then live messages. The client should reload
    /// its state.
    Resync {
        /// How many messages are lost, when known.
        missed: Option<u64>,
        /// How many came from history.
        replayed: u64,
    },
    /// The hub's [backplane](Builder::backplane) has not placed the room
    /// yet (it was just created on this node): what history has after the
    /// given position follows among the events, or a
    /// [`Resync`](crate::Event::Resync) if it does not reach back that far.
    Pending,
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
            .field("capacity", &self.inner.capacity)
            .field("slow_consumer", &self.inner.slow_consumer)
            .finish_non_exhaustive()
    }
}

impl Hub {
    /// The hub `builder` describes.
    pub(crate) fn from_builder(builder: Builder) -> Hub {
        let (presence, _) = broadcast::channel(PRESENCE_CAPACITY);
        let mirrored = builder.backplane.is_some();
        let node = (builder.backplane.as_ref()).map_or(0, |b| b.node().clamp(1, MAX_NODE));
        let history_budget = Arc::new(HistoryBudget::new(builder.history_budget));
        let inner = Arc::new(Inner {
            all: Arc::new(Room::new(
                Topic::All,
                Window::fixed(builder.capacity),
                mirrored,
                Arc::clone(&history_budget),
            )),
            rooms: Rooms::new(
                Window::live(builder.capacity, builder.history, builder.slow_consumer),
                (builder.idle_rooms, builder.history.enabled()),
                Arc::clone(&history_budget),
                builder.backplane.clone(),
            ),
            history_budget,
            registry: Mutex::new(Registry::default()),
            next_id: AtomicU64::new(1),
            presence,
            capacity: builder.capacity,
            queue_capacity: builder.queue_capacity,
            history: builder.history,
            slow_consumer: builder.slow_consumer,
            counters: Counters::default(),
            budget: Budget::new(builder.queue_budget),
            shedding: Mutex::new(()),
            node_bits: u64::from(node) << LOCAL_BITS,
            backplane: builder.backplane,
        });
        if let Some(backplane) = &inner.backplane {
            backplane.start(Remote::new(&inner));
        }
        Hub {
            _last_handle: Arc::new(LastHandle(Arc::clone(&inner))),
            inner,
        }
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
    /// The connection receives every broadcast to all sent after this
    /// returns, every personal message addressed to its
    /// [id](Connection::id), and the broadcasts of the rooms it joins.
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
        let count = inner.next_id.fetch_add(1, Ordering::Relaxed) & LOCAL_MASK;
        let raw = inner.node_bits | count;
        let id = ConnId::new(NonZeroU64::new(raw).unwrap_or(NonZeroU64::MIN));
        let membership = Arc::new(Membership::new(inner.queue_capacity, inner.budget.shares()));
        if let Some(user) = metadata.user_arc() {
            registry.users.entry(user).or_default().insert(id);
        }
        registry.conns.insert(
            id,
            Entry {
                metadata: metadata.clone(),
                rooms: HashSet::new(),
                membership: Arc::clone(&membership),
            },
        );
        // Subscribing under the registry lock orders this connection after
        // every broadcast that completed before `connect` returned.
        let all = inner.all.subscribe(None, None);
        inner.announce(PresenceKind::Joined, Topic::All, id, &metadata);
        drop(registry);
        Counters::add(&inner.counters.connected_total, 1);
        Ok(Connection::new(
            id,
            metadata,
            Arc::clone(inner),
            (Arc::clone(&inner.all), all),
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

    /// Shuts down a little at a time: refuses new connections (as
    /// [`shutdown`](Self::shutdown) does) and closes up to `batch` of the
    /// open ones with [`RecvError::Shutdown`]; returns how many are still
    /// open. Call it again, with a pause, until it returns 0, so that a
    /// crowd of clients is not told to reconnect elsewhere all at once.
    ///
    /// ```
    /// # fn main() -> Result<(), hub::ConnectError> {
    /// let hub = hub::Hub::new();
    /// let _a = hub.connect()?;
    /// let _b = hub.connect()?;
    /// let _c = hub.connect()?;
    /// assert_eq!(hub.shutdown_some(2), 1);
    /// assert!(hub.is_shut_down());
    /// assert!(hub.connect().is_err());
    /// assert_eq!(hub.shutdown_some(2), 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn shutdown_some(&self, batch: usize) -> usize {
        self.inner.shutdown_some(batch)
    }

    /// Whether [`shutdown`](Self::shutdown) (or
    /// [`shutdown_some`](Self::shutdown_some)) has been called.
    #[must_use]
    pub fn is_shut_down(&self) -> bool {
        self.inner.lock().shut_down
    }

    /// Adds a connection to a room (creating the room if needed): it
    /// receives the room's broadcasts sent after this returns. Returns
    /// `false` if it was already a member.
    ///
    /// # Errors
    ///
    /// [`JoinError::UnknownConnection`] if `id` is not registered.
    pub fn join(&self, id: ConnId, room: impl Into<RoomName>) -> Result<bool, JoinError> {
        self.inner
            .join(id, room.into(), None)
            .map(|joined| joined.is_some())
    }

    /// Adds a connection to a topic from a position it saw before (typically
    /// on a previous connection): it receives every message after
    /// `position` from the topic's history, then live ones, in order, with
    /// no gap and no duplicate. If history does not reach back that far, or
    /// the epoch differs, it receives [`Event::Resync`](crate::Event::Resync)
    /// first, and the answer says so.
    ///
    /// For a room the connection is not in, this joins it; for a room it is
    /// in, or [`Topic::All`], the topic's stream restarts from `position`.
    /// Call it before reading the connection's events.
    ///
    /// # Errors
    ///
    /// [`JoinError::UnknownConnection`] if `id` is not registered.
    pub fn resume(
        &self,
        id: ConnId,
        topic: impl Into<Topic>,
        position: Position,
    ) -> Result<Resume, JoinError> {
        let from = (position.epoch, position.offset.saturating_add(1));
        let resumed = match topic.into() {
            Topic::Room(room) => self.inner.join(id, room, Some(from))?,
            Topic::All => self.inner.resubscribe_all(id, from)?,
        };
        Ok(resumed.unwrap_or(Resume::CaughtUp { replayed: 0 }))
    }

    /// Removes a connection from a room; the room goes away with its last
    /// member (its history stays for a while, see
    /// [`Builder::idle_rooms`]). Returns whether it was a member.
    pub fn leave(&self, id: ConnId, room: &str) -> bool {
        {
            let mut registry = self.inner.lock();
            let Some(entry) = registry.conns.get_mut(&id) else {
                return false;
            };
            let Some(room) = entry.rooms.take(room) else {
                return false;
            };
            entry
                .membership
                .controls
                .send(Control::Leave(Topic::Room(room.clone())));
            entry.membership.notify();
            // Under the registry lock: a join of the same id cannot slip in
            // between, and presence events keep their order.
            self.inner.leave_room(id, &room);
            let metadata = entry.metadata.clone();
            self.inner
                .announce(PresenceKind::Left, Topic::Room(room), id, &metadata);
        }
        true
    }

    /// Queues `message` for one connection, without waiting.
    ///
    /// # Errors
    ///
    /// - [`SendError::UnknownConnection`] if `id` is not registered (never
    ///   was, or has disconnected).
    /// - [`SendError::QueueFull`] if the connection's personal queue is full.
    /// - [`SendError::Unreachable`] if `id` is on another node (see
    ///   [`Builder::backplane`]) and the backplane cannot reach it now. A
    ///   message the backplane takes is queued there if the connection is
    ///   still open and its queue has room.
    ///
    /// All give the message back.
    pub fn try_send_personal(
        &self,
        id: ConnId,
        message: impl Into<Message>,
    ) -> Result<(), SendError> {
        let message = message.into();
        if let Some(backplane) = self.inner.backplane_of(id) {
            return self.inner.send_remote(backplane, id, message);
        }
        self.inner.send_personal_local(id, message)
    }

    /// Queues `message` for one connection, waiting while its personal queue
    /// is full.
    ///
    /// This waits for that one connection only; nothing else is held up. If
    /// the connection may stall, prefer [`try_send_personal`](Self::try_send_personal)
    /// or wrap this in a timeout. A connection of another node (see
    /// [`Builder::backplane`]) is handed its message without waiting; that
    /// node drops it if the connection is gone or its queue is full.
    ///
    /// # Errors
    ///
    /// - [`SendError::UnknownConnection`] if `id` is not registered, or is
    ///   removed while waiting.
    /// - [`SendError::Unreachable`] if `id` is on another node and the
    ///   backplane cannot reach it now.
    ///
    /// Both give the message back.
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
        if let Some(backplane) = self.inner.backplane_of(id) {
            return self.inner.send_remote(backplane, id, message);
        }
        let found = (self.inner.lock().conns.get(&id)).map(|e| Arc::clone(&e.membership));
        let Some(membership) = found else {
            return Err(SendError::UnknownConnection { id, message });
        };
        match membership.personal.send(message).await {
            Ok(()) => {
                membership.notify();
                Counters::add(&self.inner.counters.personal, 1);
                if self.inner.budget.is_over() {
                    self.inner.shed();
                }
                Ok(())
            }
            Err(message) => Err(SendError::UnknownConnection { id, message }),
        }
    }

    /// Sends `message` to every connection; returns how many it reached.
    ///
    /// Never waits: a connection that does not keep up meets the
    /// [slow-consumer policy](SlowConsumer) instead of holding the others
    /// back. With no connection it returns 0. For any other audience (a
    /// room, several, a user, everyone but the sender), see [`to`](Self::to)
    /// and [`Audience`].
    pub fn broadcast(&self, message: impl Into<Message>) -> usize {
        self.publish(Topic::All, message.into(), Except::none())
    }

    /// The members of `room`, as an [`Audience`] to add to or
    /// [`broadcast`](Audience::broadcast) to.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let hub = hub::Hub::new();
    /// let ann = hub.connect()?;
    /// hub.join(ann.id(), "rust")?;
    /// assert_eq!(hub.to("rust").broadcast("just the rustaceans"), 1);
    /// assert_eq!(hub.to("rust").to("go").broadcast("both rooms"), 1);
    /// assert_eq!(hub.to("rust").except(ann.id()).broadcast("not ann"), 0);
    /// # Ok(())
    /// # }
    /// ```
    pub fn to(&self, room: impl Into<RoomName>) -> Audience<'_> {
        Audience::new(self).to(room)
    }

    /// Every connection of `user` (see [`Metadata::with_user`]), on every
    /// node, as an [`Audience`]: each receives the message as a personal
    /// one, and one whose queue is full is skipped.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use hub::Metadata;
    ///
    /// let hub = hub::Hub::new();
    /// let tab = hub.connect_with(Metadata::default().with_user("ann"))?;
    /// let _other_tab = hub.connect_with(Metadata::default().with_user("ann"))?;
    /// assert_eq!(hub.to_user("ann").broadcast("to every tab"), 2);
    /// assert_eq!(hub.to_user("ann").except(tab.id()).broadcast("to the others"), 1);
    /// # Ok(())
    /// # }
    /// ```
    pub fn to_user(&self, user: &str) -> Audience<'_> {
        Audience::new(self).to_user(user)
    }

    /// Every connection but `id` (typically the sender), as an
    /// [`Audience`].
    pub fn except(&self, id: ConnId) -> Audience<'_> {
        Audience::new(self).except(id)
    }

    /// Sends `message` to every connection except `except`.
    #[deprecated(since = "0.2.0", note = "use `hub.except(id).broadcast(message)`")]
    pub fn broadcast_except(&self, except: ConnId, message: impl Into<Message>) -> usize {
        self.except(except).broadcast(message)
    }

    /// Sends `message` to the members of `room`.
    #[deprecated(since = "0.2.0", note = "use `hub.to(room).broadcast(message)`")]
    pub fn broadcast_room(&self, room: &str, message: impl Into<Message>) -> usize {
        self.to(room).broadcast(message)
    }

    /// Sends `message` to the members of `room` except `except`.
    #[deprecated(
        since = "0.2.0",
        note = "use `hub.to(room).except(id).broadcast(message)`"
    )]
    pub fn broadcast_room_except(
        &self,
        room: &str,
        except: ConnId,
        message: impl Into<Message>,
    ) -> usize {
        self.to(room).except(except).broadcast(message)
    }

    /// Sends `message` to each of `rooms`.
    #[deprecated(
        since = "0.2.0",
        note = "use `hub.to(a).to(b).broadcast(message)`, adding each room"
    )]
    pub fn broadcast_rooms<R: AsRef<str>>(
        &self,
        rooms: &[R],
        message: impl Into<Message>,
    ) -> usize {
        if rooms.is_empty() {
            return 0;
        }
        (rooms.iter())
            .fold(Audience::new(self), |to, room| to.to(room.as_ref()))
            .broadcast(message)
    }

    /// Queues `message` for every connection of `user`.
    #[deprecated(since = "0.2.0", note = "use `hub.to_user(user).broadcast(message)`")]
    pub fn send_to_user(&self, user: &str, message: impl Into<Message>) -> usize {
        self.to_user(user).broadcast(message)
    }

    /// Broadcasts to a topic: through the backplane if there is one, and
    /// it takes the message, or else to this node's connections.
    pub(crate) fn publish(&self, topic: Topic, message: Message, except: Except) -> usize {
        self.inner.broadcast(topic, message, except)
    }

    /// Queues `message` for this node's connections of `user`, and hands
    /// it to the backplane for the others.
    pub(crate) fn publish_to_user(
        &self,
        user: Arc<str>,
        message: Message,
        except: &Except,
    ) -> usize {
        let sent = self.inner.send_to_user_local(&user, &message, except);
        if let Some(backplane) = &self.inner.backplane {
            // Given back when out of reach: then it stays local.
            let _ = backplane.publish(Publication::User {
                user,
                message,
                except: except.clone(),
            });
        }
        sent
    }

    /// The members of `room` with their metadata, in id order. With a
    /// [backplane](Builder::backplane), those of the other nodes are
    /// listed too, as the backplane last heard of them (with their name and
    /// user).
    #[must_use]
    pub fn members(&self, room: &str) -> Vec<(ConnId, Metadata)> {
        let ids = (self.inner.room(room)).map_or_else(Vec::new, |room| room.member_ids());
        // The registry owns the metadata; a member gone meanwhile is left
        // out.
        let mut members: Vec<_> = {
            let registry = self.inner.lock();
            (ids.into_iter())
                .filter_map(|id| Some((id, registry.conns.get(&id)?.metadata.clone())))
                .collect()
        };
        if let Some(backplane) = &self.inner.backplane {
            members.extend(backplane.members(&Topic::Room(room.into())));
            members.sort_by_key(|(id, _)| *id);
        }
        members
    }

    /// The rooms that have members, sorted by name.
    #[must_use]
    pub fn rooms(&self) -> Vec<RoomName> {
        self.inner.rooms.with_members()
    }

    /// The rooms `id` is in, sorted by name.
    #[must_use]
    pub fn rooms_of(&self, id: ConnId) -> Vec<RoomName> {
        let registry = self.inner.lock();
        let mut rooms: Vec<_> = registry
            .conns
            .get(&id)
            .map(|entry| entry.rooms.iter().cloned().collect())
            .unwrap_or_default();
        rooms.sort();
        rooms
    }

    /// Where `topic` stands: its epoch and the offset its next message will
    /// get. `None` for a room that does not exist (anymore), or that the
    /// hub's [backplane](Builder::backplane) has not placed yet.
    #[must_use]
    pub fn position(&self, topic: &Topic) -> Option<Position> {
        let (epoch, offset, _) = self.inner.topic(topic)?.position();
        (epoch != PENDING).then_some(Position { epoch, offset })
    }

    /// Whether a [backplane](Builder::backplane) shares this hub's traffic
    /// with other nodes.
    #[must_use]
    pub fn is_shared(&self) -> bool {
        self.inner.backplane.is_some()
    }

    /// Waits until `topic` has its place in the [backplane](Builder::backplane)'s
    /// stream; at once without a backplane, for a topic placed already, or
    /// for a room that does not exist.
    ///
    /// A room new on this node is placed shortly after its first
    /// [`join`](Self::join). Its members receive what the backplane numbers
    /// after that: every broadcast made after they were seen to join (a
    /// broadcast of this node after the join, and whatever follows it, is
    /// numbered after the placing), while a broadcast from another node at
    /// the same moment as the join may come before or after the place.
    /// Wait for this where "after the join" must also hold across nodes
    /// with no message in between (in tests, say), or before reading the
    /// room's [`position`](Self::position).
    pub async fn until_placed(&self, topic: &Topic) {
        if let Some(room) = self.inner.topic(topic) {
            room.until_placed().await;
        }
    }

    /// Joins and leaves of every topic ([`Topic::All`] for connects and
    /// disconnects) from now on, and metadata changes. With a
    /// [backplane](Builder::backplane), those of the other nodes too, as
    /// the backplane hears of them (a node that stops answering has its
    /// members leave).
    ///
    /// A subscriber that falls more than 1 024 events behind is told how
    /// many it missed ([`PresenceError::Missed`](crate::PresenceError::Missed)),
    /// then continues.
    #[must_use]
    pub fn presence(&self) -> Presence {
        Presence::new(self.inner.presence.subscribe())
    }

    /// Replaces the metadata of `id` (a rename, say), everywhere it is
    /// listed. Returns whether `id` is registered.
    pub fn set_metadata(&self, id: ConnId, metadata: Metadata) -> bool {
        {
            let mut registry = self.inner.lock();
            let Some(entry) = registry.conns.get_mut(&id) else {
                return false;
            };
            let old_user = entry.metadata.user_arc();
            entry.metadata = metadata.clone();
            let new_user = metadata.user_arc();
            if old_user != new_user {
                if let Some(old) = old_user {
                    registry.remove_user(&old, id);
                }
                if let Some(new) = new_user {
                    registry.users.entry(new).or_default().insert(id);
                }
            }
            // Under the registry lock, so presence events keep their order.
            self.inner
                .announce(PresenceKind::Updated, Topic::All, id, &metadata);
        }
        true
    }

    /// Whether `id` is registered.
    #[must_use]
    pub fn contains(&self, id: ConnId) -> bool {
        self.inner.lock().conns.contains_key(&id)
    }

    /// The metadata of `id`, if it is registered.
    #[must_use]
    pub fn metadata(&self, id: ConnId) -> Option<Metadata> {
        self.inner.lock().conns.get(&id).map(|e| e.metadata.clone())
    }

    /// Ids of the registered connections, in id order.
    #[must_use]
    pub fn connections(&self) -> Vec<ConnId> {
        let mut ids: Vec<_> = self.inner.lock().conns.keys().copied().collect();
        ids.sort();
        ids
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
        let rooms = self.rooms().len();
        let history_bytes = self.inner.history_budget.held();
        self.inner
            .counters
            .snapshot(self.len(), rooms, history_bytes, self.inner.budget.total())
    }
}

impl Registry {
    fn remove_user(&mut self, user: &Arc<str>, id: ConnId) {
        if let Some(ids) = self.users.get_mut(user) {
            ids.remove(&id);
            if ids.is_empty() {
                self.users.remove(user);
            }
        }
    }
}

impl Inner {
    fn lock(&self) -> MutexGuard<'_, Registry> {
        // The registry is left consistent at every step, so a panic in
        // another thread while holding the lock does not invalidate it.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn room(&self, name: &str) -> Option<Arc<Room>> {
        self.rooms.get(name)
    }

    fn topic(&self, topic: &Topic) -> Option<Arc<Room>> {
        match topic {
            Topic::All => Some(Arc::clone(&self.all)),
            Topic::Room(name) => self.room(name.as_str()),
        }
    }

    pub(crate) fn is_shut_down(&self) -> bool {
        self.lock().shut_down
    }

    /// Broadcasts through the backplane if there is one and it takes the
    /// message, or else to this node's connections.
    fn broadcast(&self, topic: Topic, message: Message, except: Except) -> usize {
        Counters::add(&self.counters.broadcasts, 1);
        let room = self.topic(&topic);
        let message = match &self.backplane {
            None => message,
            Some(backplane) => {
                let reach = room.as_ref().map_or(0, |room| self.reach(room, &except));
                let publication = Publication::Broadcast {
                    topic,
                    message,
                    except: except.clone(),
                };
                match backplane.publish(publication) {
                    // Counted as delivered when it comes back.
                    Ok(()) => return reach,
                    Err(back) => back.into_message(),
                }
            }
        };
        match room {
            Some(room) => self.publish_local(&room, message, except),
            None => 0,
        }
    }

    /// Numbers and delivers a broadcast on this node alone.
    fn publish_local(&self, room: &Room, message: Message, except: Except) -> usize {
        let reached = room.publish(message, &except, self.history);
        self.within_history_budget();
        self.delivered(room, reached, &except)
    }

    /// Trims history back under the hub-wide budget, if it is over, and
    /// retires empty rooms left with no history to keep.
    fn within_history_budget(&self) {
        if !self.history_budget.is_over() {
            return;
        }
        let mut topics = self.rooms.all();
        topics.push(Arc::clone(&self.all));
        self.history_budget.trim(topics.iter().map(|room| &**room));
        drop(topics);
        self.rooms.forget_spent();
    }

    pub(crate) fn publish_here(&self, topic: &Topic, message: Message, except: Except) -> usize {
        (self.topic(topic)).map_or(0, |room| self.publish_local(&room, message, except))
    }

    /// Delivers what the backplane placed at `position` of `topic`.
    pub(crate) fn deliver(
        &self,
        topic: &Topic,
        position: Position,
        placing: Placing,
        except: Except,
    ) -> usize {
        let Some(room) = self.topic(topic) else {
            return 0;
        };
        let is_message = matches!(placing, Placing::Message(..));
        let reached = room.publish_at(
            position.epoch,
            position.offset,
            placing,
            &except,
            self.history,
        );
        self.within_history_budget();
        if is_message {
            self.delivered(&room, reached, &except)
        } else {
            0
        }
    }

    /// Counts the deliveries of a message sent to `reached` subscribers of
    /// `room` (for everyone, `except` is among them).
    fn delivered(&self, room: &Room, reached: usize, except: &Except) -> usize {
        let excluded = match &room.topic {
            Topic::All if !except.is_empty() => {
                let registry = self.lock();
                except
                    .iter()
                    .filter(|id| registry.conns.contains_key(id))
                    .count()
            }
            _ => 0,
        };
        let reached = reached.saturating_sub(excluded);
        Counters::add(&self.counters.deliveries, reached as u64);
        reached
    }

    /// How many of this node's connections a broadcast to `room` reaches.
    fn reach(&self, room: &Room, except: &Except) -> usize {
        match &room.topic {
            Topic::All => {
                let registry = self.lock();
                let excluded = except.iter().filter(|id| registry.conns.contains_key(id));
                registry.conns.len() - excluded.count()
            }
            Topic::Room(_) => room.reach(except),
        }
    }

    pub(crate) fn rebase(
        &self,
        topic: &Topic,
        next: Position,
        backfill: impl IntoIterator<Item = (u64, Message, Except)>,
    ) {
        if let Some(room) = self.topic(topic) {
            room.rebase(next.epoch, next.offset, backfill, self.history);
            self.within_history_budget();
        }
    }

    pub(crate) fn is_following(&self, topic: &Topic) -> bool {
        self.topic(topic).is_some_and(|room| room.is_mirrored())
    }

    pub(crate) fn topics(&self) -> Vec<Topic> {
        let names = self.rooms.names();
        let mut topics = Vec::with_capacity(names.len() + 1);
        topics.push(Topic::All);
        topics.extend(names.into_iter().map(Topic::Room));
        topics
    }

    /// The backplane to reach `id` through, if it belongs to another node.
    fn backplane_of(&self, id: ConnId) -> Option<&dyn Backplane> {
        let backplane = self.backplane.as_deref()?;
        (id.get() & !LOCAL_MASK != self.node_bits).then_some(backplane)
    }

    fn send_remote(
        &self,
        backplane: &dyn Backplane,
        id: ConnId,
        message: Message,
    ) -> Result<(), SendError> {
        match backplane.publish(Publication::Personal { to: id, message }) {
            Ok(()) => Ok(()),
            Err(back) => Err(SendError::Unreachable {
                id,
                message: back.into_message(),
            }),
        }
    }

    pub(crate) fn send_personal_local(
        &self,
        id: ConnId,
        message: Message,
    ) -> Result<(), SendError> {
        let registry = self.lock();
        let Some(entry) = registry.conns.get(&id) else {
            return Err(SendError::UnknownConnection { id, message });
        };
        let sent = match entry.membership.personal.try_send(message) {
            Ok(()) => {
                entry.membership.notify();
                Counters::add(&self.counters.personal, 1);
                Ok(())
            }
            Err(Refused::Full(message)) => Err(SendError::QueueFull { id, message }),
            Err(Refused::Closed(message)) => Err(SendError::UnknownConnection { id, message }),
        };
        drop(registry);
        if sent.is_ok() && self.budget.is_over() {
            self.shed();
        }
        sent
    }

    pub(crate) fn send_to_user_local(
        &self,
        user: &str,
        message: &Message,
        except: &Except,
    ) -> usize {
        let registry = self.lock();
        let Some(ids) = registry.users.get(user) else {
            return 0;
        };
        let sent = ids
            .iter()
            .filter(|id| !except.contains(**id))
            .filter_map(|id| registry.conns.get(id))
            .filter(|entry| {
                let sent = entry.membership.personal.try_send(message.clone()).is_ok();
                if sent {
                    entry.membership.notify();
                }
                sent
            })
            .count();
        drop(registry);
        Counters::add(&self.counters.personal, sent as u64);
        if sent > 0 && self.budget.is_over() {
            self.shed();
        }
        sent
    }

    fn announce(&self, kind: PresenceKind, topic: Topic, id: ConnId, metadata: &Metadata) {
        let event = PresenceEvent {
            kind,
            topic,
            id,
            metadata: metadata.clone(),
        };
        if let Some(backplane) = &self.backplane {
            backplane.announce(&event);
        }
        let _ = self.presence.send(event);
    }

    /// Passes on a presence event of another node.
    pub(crate) fn announce_remote(&self, event: PresenceEvent) {
        let _ = self.presence.send(event);
    }

    /// Joins (or, with `from`, resumes) a room; `None` if already a member
    /// and not resuming.
    fn join(
        &self,
        id: ConnId,
        name: RoomName,
        from: Option<(u64, u64)>,
    ) -> Result<Option<Resume>, JoinError> {
        let mut registry = self.lock();
        let Some(entry) = registry.conns.get_mut(&id) else {
            return Err(JoinError::UnknownConnection { id });
        };
        let already = entry.rooms.contains(&name);
        if already && from.is_none() {
            return Ok(None);
        }
        let (room, subscribed) = self.rooms.open(&name, from, id);
        let resume = resume_outcome(&subscribed);
        entry.rooms.insert(name.clone());
        entry
            .membership
            .controls
            .send(Control::Join { room, subscribed });
        entry.membership.notify();
        if !already {
            Counters::add(&self.counters.joins, 1);
            // Under the registry lock, so presence events keep their order.
            self.announce(PresenceKind::Joined, Topic::Room(name), id, &entry.metadata);
        }
        Ok(Some(resume))
    }

    fn resubscribe_all(&self, id: ConnId, from: (u64, u64)) -> Result<Option<Resume>, JoinError> {
        let registry = self.lock();
        let Some(entry) = registry.conns.get(&id) else {
            return Err(JoinError::UnknownConnection { id });
        };
        let subscribed = self.all.subscribe(Some(from), None);
        let resume = resume_outcome(&subscribed);
        entry.membership.controls.send(Control::Join {
            room: Arc::clone(&self.all),
            subscribed,
        });
        entry.membership.notify();
        Ok(Some(resume))
    }

    /// Takes `id` out of a room's members.
    fn leave_room(&self, id: ConnId, name: &RoomName) {
        if self.rooms.leave(id, name) {
            Counters::add(&self.counters.leaves, 1);
        }
    }

    /// Removes `id` if registered, recording why. Returns whether it was.
    pub(crate) fn remove(&self, id: ConnId, reason: RecvError) -> bool {
        let entry = {
            let mut registry = self.lock();
            let entry = registry.conns.remove(&id);
            if let Some(user) = entry.as_ref().and_then(|e| e.metadata.user_arc()) {
                registry.remove_user(&user, id);
            }
            entry
        };
        match entry {
            Some(entry) => {
                self.retire(id, entry, reason);
                true
            }
            None => false,
        }
    }

    /// Disconnects the connections holding the most queued bytes until the
    /// hub is back under its budget.
    fn shed(&self) {
        // One caller sheds at a time; its pass covers everyone's messages.
        let Ok(_shedding) = self.shedding.try_lock() else {
            return;
        };
        if !self.budget.is_over() {
            return;
        }
        // One look at every connection, under the lock once: those holding
        // something, the most first.
        let mut holders: Vec<(usize, ConnId, Arc<Membership>)> = {
            let registry = self.lock();
            (registry.conns.iter())
                .filter_map(|(id, entry)| {
                    let bytes = entry.membership.personal.queued();
                    (bytes > 0).then(|| (bytes, *id, Arc::clone(&entry.membership)))
                })
                .collect()
        };
        holders.sort_unstable_by_key(|(bytes, _, _)| std::cmp::Reverse(*bytes));
        for (_, id, membership) in holders {
            if !self.budget.is_over() {
                break;
            }
            // Emptied its queue meanwhile: it reads, and holds nothing.
            if membership.personal.queued() == 0 {
                continue;
            }
            let queued = membership.personal.detach();
            if self.remove(id, RecvError::Overloaded { queued }) {
                Counters::add(&self.counters.shed, 1);
            }
        }
    }

    /// Refuses new connections and retires up to `batch` open ones;
    /// returns how many are left.
    fn shutdown_some(&self, batch: usize) -> usize {
        let (removed, left) = {
            let mut registry = self.lock();
            registry.shut_down = true;
            let ids: Vec<ConnId> = registry.conns.keys().take(batch).copied().collect();
            let mut removed = Vec::with_capacity(ids.len());
            for id in ids {
                if let Some(entry) = registry.conns.remove(&id) {
                    if let Some(user) = entry.metadata.user_arc() {
                        registry.remove_user(&user, id);
                    }
                    removed.push((id, entry));
                }
            }
            (removed, registry.conns.len())
        };
        for (id, entry) in removed {
            self.retire(id, entry, RecvError::Shutdown);
        }
        left
    }

    fn shutdown(&self) {
        let removed: Vec<(ConnId, Entry)> = {
            let mut registry = self.lock();
            registry.shut_down = true;
            registry.users.clear();
            registry.conns.drain().collect()
        };
        for (id, entry) in removed {
            self.retire(id, entry, RecvError::Shutdown);
        }
    }

    /// Finishes removing a connection taken out of the registry.
    fn retire(&self, id: ConnId, entry: Entry, reason: RecvError) {
        // Read after the removal: every broadcast that completed before it
        // has a lower offset.
        let (epoch, next, _) = self.all.position();
        let mut cutoffs = vec![(Topic::All, epoch, next)];
        for name in &entry.rooms {
            if let Some(room) = self.room(name.as_str()) {
                let (epoch, next, _) = room.position();
                cutoffs.push((room.topic.clone(), epoch, next));
            }
        }
        entry.membership.remove(Removal { reason, cutoffs });
        for room in &entry.rooms {
            self.leave_room(id, room);
            self.announce(
                PresenceKind::Left,
                Topic::Room(room.clone()),
                id,
                &entry.metadata,
            );
        }
        self.announce(PresenceKind::Left, Topic::All, id, &entry.metadata);
    }
}

fn resume_outcome(subscribed: &crate::room::Subscribed) -> Resume {
    if subscribed.pending {
        return Resume::Pending;
    }
    let replayed = subscribed.replayed;
    match subscribed.missed {
        None => Resume::CaughtUp { replayed },
        Some(missed) => Resume::Resync { missed, replayed },
    }
}
