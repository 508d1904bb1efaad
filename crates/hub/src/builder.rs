//! How a hub is configured: [`Builder`], its defaults, and the
//! [`SlowConsumer`] policy.

use std::sync::Arc;

use crate::backplane::Backplane;
use crate::history::HistoryLimits;

/// What happens to a connection that falls further behind a topic's
/// channel than its [capacity](Builder::capacity).
///
/// The fan-out never waits for a slow connection: the others keep receiving
/// at full speed, and the slow one loses its place in the channel. This
/// policy decides what happens then.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub enum SlowConsumer {
    /// The gap is refilled from the topic's [history](Builder::history), in
    /// order, on the same connection: it loses nothing. Only when the gap
    /// reaches further back than history does the connection receive
    /// [`Event::Resync`](crate::Event::Resync), then what history has.
    #[default]
    Repair,
    /// The connection receives one [`Event::Lagged`](crate::Event::Lagged)
    /// saying how many messages it missed, then continues.
    Skip,
    /// The connection is removed from the hub and its
    /// [`recv`](crate::Connection::recv) returns [`RecvError::Lagged`](crate::RecvError::Lagged). A WebSocket
    /// adapter closes it with 1013 (try again later).
    Disconnect,
}

/// Configures and builds a [`Hub`](crate::Hub).
///
/// ```
/// use hub::{Hub, SlowConsumer};
///
/// let hub = Hub::builder()
///     .capacity(512)
///     .queue_capacity(64)
///     .history(1000, 1 << 20)
///     .slow_consumer(SlowConsumer::Repair)
///     .build();
/// assert!(hub.is_empty());
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct Builder {
    pub(crate) capacity: usize,
    pub(crate) queue_capacity: usize,
    pub(crate) history: HistoryLimits,
    pub(crate) history_budget: usize,
    pub(crate) idle_rooms: usize,
    pub(crate) slow_consumer: SlowConsumer,
    pub(crate) queue_budget: usize,
    pub(crate) backplane: Option<Arc<dyn Backplane>>,
}

impl Default for Builder {
    fn default() -> Self {
        Self {
            capacity: Builder::DEFAULT_CAPACITY,
            queue_capacity: Builder::DEFAULT_QUEUE_CAPACITY,
            history: HistoryLimits {
                messages: Builder::DEFAULT_HISTORY,
                bytes: Builder::DEFAULT_HISTORY_BYTES,
            },
            history_budget: Builder::DEFAULT_HISTORY_BUDGET,
            idle_rooms: Builder::DEFAULT_IDLE_ROOMS,
            slow_consumer: SlowConsumer::default(),
            queue_budget: Builder::DEFAULT_QUEUE_BUDGET,
            backplane: None,
        }
    }
}

impl Builder {
    /// Default number of messages a topic's channel holds for connections that
    /// have not read them yet.
    pub const DEFAULT_CAPACITY: usize = 1024;
    /// Default number of personal messages queued per connection.
    pub const DEFAULT_QUEUE_CAPACITY: usize = 256;
    /// Default number of recent messages each topic keeps in its history.
    pub const DEFAULT_HISTORY: usize = 8192;
    /// Default size limit of each topic's history, in payload bytes.
    pub const DEFAULT_HISTORY_BYTES: usize = 8 << 20;
    /// Default limit on the history of all topics together, in payload bytes:
    /// 256 MiB.
    pub const DEFAULT_HISTORY_BUDGET: usize = 256 << 20;
    /// Default number of empty rooms whose history is kept for clients that
    /// come back.
    pub const DEFAULT_IDLE_ROOMS: usize = 64;
    /// Default hub-wide budget for bytes waiting in personal queues: 256 MiB.
    pub const DEFAULT_QUEUE_BUDGET: usize = 256 << 20;
    /// Largest accepted capacity; larger requests are lowered to this.
    pub const MAX_CAPACITY: usize = 1 << 24;

    /// How many messages each topic's channel holds for connections that
    /// have not read them yet (default [`Builder::DEFAULT_CAPACITY`]). A connection
    /// further behind meets the [slow-consumer policy](SlowConsumer).
    ///
    /// A channel allocates its slots up front, about 100 bytes each. Under
    /// [`SlowConsumer::Repair`] with history reaching at least `capacity`
    /// messages back (the defaults), a room's channel starts with 2 slots
    /// and doubles, up to 16, when a reader falls behind it: readers further
    /// behind are refilled from history, so they may still fall `capacity`
    /// messages behind without loss, and a quiet room costs a few hundred
    /// bytes. The broadcast-to-all topic, and rooms under the other
    /// policies, get `capacity` slots. Values are clamped to
    /// `1..=Builder::MAX_CAPACITY`.
    pub fn capacity(mut self, capacity: usize) -> Self {
        self.capacity = capacity.clamp(1, Builder::MAX_CAPACITY);
        self
    }

    /// How many personal messages may wait for each connection (default
    /// [`Builder::DEFAULT_QUEUE_CAPACITY`]). Values are clamped to `1..=Builder::MAX_CAPACITY`.
    pub fn queue_capacity(mut self, capacity: usize) -> Self {
        self.queue_capacity = capacity.clamp(1, Builder::MAX_CAPACITY);
        self
    }

    /// How many recent messages, and how many payload bytes, each topic
    /// keeps for [resume](crate::Hub::resume) and [repair](SlowConsumer::Repair)
    /// (defaults [`Builder::DEFAULT_HISTORY`] and [`Builder::DEFAULT_HISTORY_BYTES`]); the
    /// oldest go first when either limit is reached. `0` disables history.
    pub fn history(mut self, messages: usize, bytes: usize) -> Self {
        self.history = HistoryLimits { messages, bytes };
        self
    }

    /// How many payload bytes the history of all topics may hold together
    /// (default [`Builder::DEFAULT_HISTORY_BUDGET`]), whatever the number of topics.
    ///
    /// Past it, history goes from the topics used longest ago (published
    /// to or joined), oldest messages first, until the total is an eighth
    /// under the budget; an emptied room that has lost its history goes
    /// too. A connection resuming from history that was dropped receives
    /// [`Event::Resync`](crate::Event::Resync), as for history that aged
    /// out. Values under 1 are raised to 1.
    pub fn history_budget(mut self, bytes: usize) -> Self {
        self.history_budget = bytes;
        self
    }

    /// How many empty rooms keep their history for members that come back
    /// (default [`Builder::DEFAULT_IDLE_ROOMS`]); beyond that, the longest empty go
    /// first, and their epoch with them.
    pub fn idle_rooms(mut self, rooms: usize) -> Self {
        self.idle_rooms = rooms;
        self
    }

    /// What happens to a connection that falls behind (default
    /// [`SlowConsumer::Repair`]).
    pub fn slow_consumer(mut self, policy: SlowConsumer) -> Self {
        self.slow_consumer = policy;
        self
    }

    /// How many bytes of personal messages may wait in the queues of all
    /// connections together (default [`Builder::DEFAULT_QUEUE_BUDGET`]).
    ///
    /// Broadcasts are stored once per topic, bounded by the channel
    /// capacity and history; personal messages are queued per connection,
    /// and a crowd of clients that stop reading could otherwise hold
    /// [`queue_capacity`](Self::queue_capacity) messages each. Past the
    /// budget, the hub disconnects the connection holding the most
    /// ([`RecvError::Overloaded`](crate::RecvError::Overloaded)), then the next, until the total is back
    /// under it; [`Stats::shed`](crate::Stats::shed) counts them.
    ///
    /// The budget counts memory, not copies: one message of 1 KiB or more
    /// queued for many connections (the same buffer, cloned), such as a
    /// member list for every joiner, counts once, until the last queue
    /// holding it lets it go. Smaller ones count once per queue.
    ///
    /// Personal messages have no
    /// history to refill them from, so whatever the
    /// [slow-consumer policy](SlowConsumer), shedding disconnects rather
    /// than drop messages unannounced: the client can reconnect and resume
    /// its rooms. A shed connection's queue is freed when it is dropped.
    pub fn queue_budget(mut self, bytes: usize) -> Self {
        self.queue_budget = bytes;
        self
    }

    /// Shares this hub's broadcasts, personal and user messages with the
    /// hubs of other nodes through `backplane` (see the
    /// [`backplane`](crate::backplane) module). Without one (the default),
    /// the hub serves its own connections only and needs nothing else.
    ///
    /// With a backplane, the count a broadcast returns is the connections
    /// of this node it will reach, and rooms are numbered by the backplane:
    /// a room's [`position`](crate::Hub::position) is known once the backplane
    /// has placed it.
    pub fn backplane(mut self, backplane: Arc<dyn Backplane>) -> Self {
        self.backplane = Some(backplane);
        self
    }
}
