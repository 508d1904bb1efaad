//! The hub: a registry of connections, rooms and their fan-out channels.

use std::fmt;
use std::sync::Arc;

use crate::audience::Audience;
use crate::backplane::Remote;
use crate::builder::Builder;
use crate::connection::Connection;
use crate::error::{ConnectError, JoinError, PublishError, RecvError, SendError};
use crate::inner::Inner;
use crate::presence::Presence;
use crate::room::PENDING;
use crate::stats::Stats;
use crate::{ConnId, Except, HistoryPage, Message, Metadata, Position, Resume, RoomName, Topic};

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
        self.0.shutdown_some(None);
    }
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

impl Builder {
    /// Builds the hub.
    pub fn build(self) -> Hub {
        let inner = Arc::new(Inner::new(self));
        if let Some(backplane) = &inner.backplane {
            backplane.start(Remote::new(Arc::downgrade(&inner) as _));
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
        let registered = self.inner.register(&metadata)?;
        Ok(Connection::new(
            registered.id,
            metadata,
            Arc::clone(&self.inner),
            (Arc::clone(&self.inner.all), registered.all),
            registered.membership,
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

    /// Removes every connection of `user` (see [`Metadata::with_user`]),
    /// on every node: each receives what was sent to it before, then
    /// [`RecvError::Removed`] with `code`, and
    /// [`Connection::farewell`] gives `reason` (a WebSocket transport
    /// closes with both). Returns how many were on this node.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use hub::{Metadata, RecvError, TryRecvError};
    ///
    /// let hub = hub::Hub::new();
    /// let mut tab = hub.connect_with(Metadata::default().with_user("ann"))?;
    /// assert_eq!(hub.disconnect_user("ann", 4001, "account closed"), 1);
    /// let closed = TryRecvError::Closed(RecvError::Removed { code: 4001 });
    /// assert_eq!(tab.try_recv(), Err(closed));
    /// assert_eq!(tab.farewell(), Some("account closed"));
    /// # Ok(())
    /// # }
    /// ```
    pub fn disconnect_user(&self, user: &str, code: u16, reason: &str) -> usize {
        self.inner.disconnect_user(user, code, reason)
    }

    /// Removes every connection and refuses new ones. Idempotent.
    ///
    /// Each connection's `recv` returns what was sent to it before the
    /// shutdown, then [`RecvError::Shutdown`].
    pub fn shutdown(&self) {
        self.inner.shutdown_some(None);
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
        self.inner.shutdown_some(Some(batch))
    }

    /// Whether [`shutdown`](Self::shutdown) (or
    /// [`shutdown_some`](Self::shutdown_some)) has been called.
    #[must_use]
    pub fn is_shut_down(&self) -> bool {
        self.inner.is_shut_down()
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
    /// With a [backplane](Builder::backplane), a client may come back with a
    /// position this node has not read up to yet (it saw it on a node that
    /// was ahead): it receives what follows that position once this node
    /// gets there. Without one, a position past the topic's last message
    /// resumes from its end.
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
            Topic::All => Some(self.inner.resubscribe_all(id, from)?),
        };
        Ok(resumed.unwrap_or(Resume::CaughtUp { replayed: 0 }))
    }

    /// Removes a connection from a room; the room goes away with its last
    /// member (its history stays for a while, see
    /// [`Builder::idle_rooms`]). Returns whether it was a member.
    pub fn leave(&self, id: ConnId, room: &str) -> bool {
        self.inner.leave(id, room)
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
        self.inner.try_send_personal(id, message.into())
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
        self.inner.send_personal(id, message.into()).await
    }

    /// Sends `message` to every connection; returns how many it reached.
    ///
    /// Never waits: a connection that does not keep up meets the
    /// [slow-consumer policy](crate::SlowConsumer) instead of holding the others
    /// back. With no connection it returns 0. For any other audience (a
    /// room, several, a user, everyone but the sender), see [`to`](Self::to)
    /// and [`Audience`].
    pub fn broadcast(&self, message: impl Into<Message>) -> usize {
        self.inner
            .publish(Topic::All, message.into(), Except::none())
    }

    /// Publishes `message` to `room`, as [`to(room)`](Self::to)`.broadcast`
    /// does, and returns where it was placed: the epoch and offset a
    /// client resumes after (see [`resume`](Self::resume)). Unlike a
    /// broadcast, the message is numbered and kept in history even when
    /// no member of the room is on this node (if rooms keep history; see
    /// [`Builder::idle_rooms`]): what a backend pushing into a room needs.
    ///
    /// With a [backplane](crate::Builder::backplane), waits until the
    /// backplane has numbered it.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let hub = hub::Hub::new();
    /// let first = hub.publish("news", "kept for whoever joins").await?;
    /// let second = hub.publish("news", "and this one").await?;
    /// assert_eq!(second.offset, first.offset + 1);
    /// # Ok(())
    /// # }
    /// ```
    ///
    /// # Errors
    ///
    /// [`PublishError::Shutdown`] once the hub is shut down;
    /// [`PublishError::Unreachable`] if the backplane is out of reach and
    /// no member of the room is on this node; [`PublishError::Unplaced`]
    /// if the backplane took the message but did not tell where it placed
    /// it.
    pub async fn publish(
        &self,
        room: impl Into<RoomName>,
        message: impl Into<Message>,
    ) -> Result<Position, PublishError> {
        match self.inner.publish_placed(room.into(), message.into())? {
            Ok(position) => Ok(position),
            Err(placed) => placed.await.map_err(|_| PublishError::Unplaced),
        }
    }

    /// Up to `limit` lines of `room`'s history, from offset `from` on, in
    /// the room's current epoch; `None` if rooms keep no history (see
    /// [`Builder::idle_rooms`]). A room with no member on this node is
    /// kept among the idle rooms from then on; with a
    /// [backplane](crate::Builder::backplane), it is placed first, which
    /// loads the backplane's history of it, so every node reads the same
    /// lines. That takes a round trip, or waits while the backplane is out
    /// of reach: bound the wait with a timeout.
    ///
    /// ```
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let hub = hub::Hub::new();
    /// for line in ["one", "two", "three"] {
    ///     hub.publish("news", line).await?;
    /// }
    /// let page = hub.history("news", 1, 10).await.expect("history is kept");
    /// let lines: Vec<_> = page.lines.iter().map(|l| l.message().as_text()).collect();
    /// assert_eq!(lines, [Some("two"), Some("three")]);
    /// assert_eq!((page.missed, page.next, page.end), (0, 3, 3));
    /// # Ok(())
    /// # }
    /// ```
    pub async fn history(
        &self,
        room: impl Into<RoomName>,
        from: u64,
        limit: usize,
    ) -> Option<HistoryPage> {
        let room = self.inner.rooms.keep(&room.into())?;
        room.until_placed().await;
        Some(room.page(from, limit))
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
        Audience::new(&self.inner).to(room)
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
        Audience::new(&self.inner).to_user(user)
    }

    /// Every connection but `id` (typically the sender), as an
    /// [`Audience`].
    pub fn except(&self, id: ConnId) -> Audience<'_> {
        Audience::new(&self.inner).except(id)
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
            .fold(Audience::new(&self.inner), |to, room| to.to(room.as_ref()))
            .broadcast(message)
    }

    /// Queues `message` for every connection of `user`.
    #[deprecated(since = "0.2.0", note = "use `hub.to_user(user).broadcast(message)`")]
    pub fn send_to_user(&self, user: &str, message: impl Into<Message>) -> usize {
        self.to_user(user).broadcast(message)
    }

    /// The members of `room` with their metadata, in id order. With a
    /// [backplane](Builder::backplane), those of the other nodes are
    /// listed too, as the backplane last heard of them (with their name and
    /// user).
    #[must_use]
    pub fn members(&self, room: &str) -> Vec<(ConnId, Metadata)> {
        let mut members = self.inner.members(room);
        if let Some(backplane) = &self.inner.backplane {
            members.extend(backplane.members(&Topic::Room(room.into())));
            members.sort_by_key(|(id, _)| *id);
        }
        members
    }

    /// The rooms that have members on this node, sorted by name (see
    /// [`Hub::occupancy`] for every node's).
    #[must_use]
    pub fn rooms(&self) -> Vec<RoomName> {
        (self.inner.rooms.occupied().into_iter())
            .map(|(room, _)| room)
            .collect()
    }

    /// Every room with members, sorted by name, with how many: this
    /// node's, and with a [backplane](Builder::backplane), the other
    /// nodes' as the backplane last heard of them.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use hub::{Hub, RoomName};
    ///
    /// let hub = Hub::new();
    /// let (ann, bob) = (hub.connect()?, hub.connect()?);
    /// hub.join(ann.id(), "rust")?;
    /// hub.join(bob.id(), "rust")?;
    /// hub.join(bob.id(), "go")?;
    /// assert_eq!(
    ///     hub.occupancy(),
    ///     [(RoomName::from("go"), 1), (RoomName::from("rust"), 2)]
    /// );
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn occupancy(&self) -> Vec<(RoomName, usize)> {
        let mut rooms = self.inner.rooms.occupied();
        if let Some(backplane) = &self.inner.backplane {
            let mut counts: std::collections::BTreeMap<RoomName, usize> =
                rooms.into_iter().collect();
            for (topic, members) in backplane.occupancy() {
                if let Topic::Room(room) = topic {
                    *counts.entry(room).or_default() += members;
                }
            }
            rooms = counts.into_iter().collect();
        }
        rooms
    }

    /// How many connections `user` has (see [`Metadata::with_user`]): this
    /// node's, and with a [backplane](Builder::backplane), those the other
    /// nodes have in rooms, as the backplane last heard of them.
    ///
    /// ```
    /// # fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// use hub::{Hub, Metadata};
    ///
    /// let hub = Hub::new();
    /// let _tab = hub.connect_with(Metadata::new().with_user("ann"))?;
    /// let _phone = hub.connect_with(Metadata::new().with_user("ann"))?;
    /// assert_eq!(hub.connections_of("ann"), 2);
    /// assert_eq!(hub.connections_of("bob"), 0);
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn connections_of(&self, user: &str) -> usize {
        let here = self.inner.lock().of_user(user).count();
        let elsewhere = (self.inner.backplane.as_ref()).map_or(0, |b| b.connections_of(user));
        here + elsewhere
    }

    /// The rooms `id` is in, sorted by name.
    #[must_use]
    pub fn rooms_of(&self, id: ConnId) -> Vec<RoomName> {
        self.inner.rooms_of(id)
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
        self.inner.set_metadata(id, metadata)
    }

    /// Whether `id` is registered.
    #[must_use]
    pub fn contains(&self, id: ConnId) -> bool {
        self.inner.lock().contains(id)
    }

    /// The metadata of `id`, if it is registered.
    #[must_use]
    pub fn metadata(&self, id: ConnId) -> Option<Metadata> {
        self.inner.lock().get(id).map(|e| e.metadata.clone())
    }

    /// Ids of the registered connections, in id order.
    #[must_use]
    pub fn connections(&self) -> Vec<ConnId> {
        let mut ids: Vec<_> = self.inner.lock().iter().map(|(id, _)| id).collect();
        ids.sort();
        ids
    }

    /// Number of registered connections.
    #[must_use]
    pub fn len(&self) -> usize {
        self.inner.lock().len()
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
