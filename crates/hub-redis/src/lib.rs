//! A Redis [backplane](hub::backplane) for the broadcast hub: several
//! nodes, each with its own [`Hub`](hub::Hub), behave as one.
//!
//! ```no_run
//! use hub::Hub;
//! use hub_redis::RedisBackplane;
//!
//! # #[tokio::main]
//! # async fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let backplane = RedisBackplane::connect("redis://127.0.0.1:6379").await?;
//! let hub = Hub::builder().backplane(backplane.clone()).build();
//! // Reaches the connections of every node sharing this Redis.
//! hub.broadcast("hello, everyone");
//! # Ok(())
//! # }
//! ```
//!
//! # What it keeps in Redis
//!
//! Each topic (everyone, and each room) is numbered by Redis: a small hash
//! holds its epoch and next offset, and a stream holds its latest messages
//! ([`Builder::history`] of them, and [`Builder::history_bytes`] of
//! payload at most). A broadcast is numbered and stored by
//! one script, in one step; every node, the sender's included, reads the
//! stream and delivers each message to its own connections at the same
//! offset. So offsets mean the same on every node: a client can resume on
//! any of them, and a node that reconnects reads on from where it was,
//! without gap or duplicate. Personal messages go to the addressee's node
//! through that node's inbox stream ([`hub::ConnId::node`] tells which),
//! user messages through a stream every node reads; each of those keeps
//! at most 10 000 messages and 64 MiB of payload, for an hour.
//!
//! Everything expires: a topic's keys [`Builder::ttl`] (ten minutes)
//! after the last node that followed it stopped (nodes keep the topics
//! they follow alive), inboxes and the user stream an hour after their
//! last message. Scripts that Redis lost (a `SCRIPT FLUSH`, or a restart
//! the connection did not notice) are loaded again, and what needed them
//! runs again ([`Stats::script_reloads`]).
//!
//! Node numbers come from a counter in Redis, so connection ids are unique
//! across nodes.
//!
//! # When Redis is out of reach
//!
//! - Local delivery goes on: each node delivers its own broadcasts to its
//!   own connections, in an epoch of its own; personal messages to other
//!   nodes fail with [`SendError::Unreachable`](hub::SendError::Unreachable).
//! - The link retries with exponential backoff ([`Builder::backoff`]),
//!   logs the loss and the return, and [`Stats`] counts them.
//! - Once back, each node places its topics again and reads on from its
//!   cursor: messages other nodes stored meanwhile are delivered, after a
//!   [`Resync`](hub::Event::Resync) (the local epoch ends). What a node
//!   delivered only locally is reported to the other nodes' connections as
//!   a `Resync` with the count missed. Nothing is claimed delivered that
//!   was not.
//!
//! A broadcast in flight when the connection breaks may have been stored
//! or not; it is delivered locally, and if Redis did store it, this node's
//! connections receive it again after the `Resync`.
//!
//! # When a topic starts over in Redis
//!
//! A topic's keys can vanish (they expire [`Builder::ttl`] after no node
//! follows them, Redis may evict them, or it may restart empty), and Redis may
//! restart from a snapshot that lacks its latest messages. Either way the
//! topic starts a new epoch rather than give an offset a second meaning.
//! Nodes notice at once when they publish to it, and otherwise at their
//! next check (every third of [`Builder::presence_ttl`]); their
//! connections get a `Resync`, then the new epoch's messages from its
//! start.
//!
//! Node numbers are taken from a counter that every node raises back to
//! its own number when it reconnects. A node started while Redis is back
//! but before the older nodes have reconnected (a few seconds at most)
//! could take a number in use: start nodes after Redis has been back for
//! longer than [`Builder::backoff`]'s maximum.
//!
//! # Past one Redis
//!
//! [`RedisBackplane::cluster`] shares the work over a Redis Cluster's
//! masters. Keys are spread over [partitions](Builder::partitions), each
//! one hash slot (its keys share a hash tag), the slots evenly spaced so
//! that the masters hold equal shares; a room is in the partition its name
//! hashes to, so rooms spread over the masters by name. Writes go as one
//! pipeline per slot, all at once. A cluster runs a command only on keys
//! of one slot, so a node reads each partition with a connection of its
//! own, one `XREAD` blocking for everything of that partition it needs:
//! the rooms it follows there (none of the others), and the partition's
//! user and presence streams. Nothing scans keys.
//!
//! When a master fails and a replica takes over, the nodes lose their
//! connections to it, deliver locally meanwhile (as in an outage, above),
//! and come back on the new slot map. Replication is asynchronous: the
//! replica may lack the last lines the old master numbered, lines some
//! clients may have seen. What is promised, and tested with a master
//! killed mid-traffic:
//!
//! - Lines the new master holds keep their epoch and offsets.
//! - A topic numbered by another master than before skips 100 offsets
//!   (the scripts keep `CLUSTER MYID` in the topic's hash), so offsets the
//!   old master gave are not given again to other lines, as long as it gave
//!   at most 100 the replica lacks. A node that read further places the
//!   topic in a new epoch instead.
//! - Every connection is told what it did not receive: a
//!   [`Resync`](hub::Event::Resync) with the count of offsets it did not
//!   get. That count covers the skipped offsets whether or not a line had
//!   taken them: it is at most 100 more than the lines lost. Nothing is
//!   skipped without a word.
//! - A publisher may have been told a position ([`hub::Hub::publish`]) for
//!   a line that was then lost.
//!
//! A manual failover or a slot moved to another master (resharding) loses
//! nothing but is seen the same way: its topics skip 100 offsets, told as
//! a resync. While a slot moves, a pipeline that meets `ASK` is sent again
//! whole, so a message in it may be stored twice. A whole cluster that
//! restarts empty starts every topic over in a new epoch, as one Redis
//! does.
#![doc(test(attr(deny(warnings))))]

mod link;
mod presence;
mod target;
mod wire;

use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hub::backplane::MAX_NODE;
use hub::{
    Backplane, ConnId, Distribution, Histogram, Metadata, Placed, PresenceEvent, PresenceKind,
    Publication, Remote, Topic, LATENCY_NS,
};
use tokio::sync::{mpsc, watch, Notify};

use crate::link::{Command, Link};
use crate::presence::Roster;
use crate::target::Target;
use crate::wire::Keys;

/// Default prefix of every key the backplane uses.
pub const DEFAULT_PREFIX: &str = "hub";
/// Default number of messages each topic's stream keeps, for nodes that
/// catch up and clients that resume.
pub const DEFAULT_HISTORY: usize = hub::Builder::DEFAULT_HISTORY;
/// Default time a topic's keys live once no node follows it: ten minutes.
pub const DEFAULT_TTL: Duration = Duration::from_secs(10 * 60);
/// Default size limit of each topic's stream, in payload bytes.
pub const DEFAULT_HISTORY_BYTES: usize = hub::Builder::DEFAULT_HISTORY_BYTES;
/// Default time after which a node that stopped answering has its room
/// members dropped by the others.
pub const DEFAULT_PRESENCE_TTL: Duration = Duration::from_secs(15);
/// Default size of the publications waiting to be written: 64 MiB.
pub const DEFAULT_QUEUE: usize = 64 << 20;
/// Default number of partitions the keys of a Redis Cluster are spread
/// over; see [`Builder::partitions`].
pub const DEFAULT_PARTITIONS: usize = wire::DEFAULT_PARTITIONS;

/// Why the backplane could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The URL is not a Redis URL.
    #[error("invalid Redis URL {url:?}: {source}")]
    Url {
        /// The URL given.
        url: String,
        /// What is wrong with it.
        source: redis::RedisError,
    },
    /// Redis did not answer. A node needs Redis to start (to get its node
    /// number); once started, it rides out outages.
    #[error("cannot reach Redis at {url}: {source}; is redis-server running?")]
    Connect {
        /// The URL given.
        url: String,
        /// What went wrong.
        source: redis::RedisError,
    },
    /// The Redis given as one Redis is a node of a Redis Cluster, which
    /// would refuse most of what the backplane asks of it.
    #[error(
        "Redis at {url} is a node of a Redis Cluster: connect with \
         RedisBackplane::cluster (chat-server: --redis-cluster)"
    )]
    ClusterNode {
        /// The URL given.
        url: String,
    },
    /// A seed given for a Redis Cluster is one Redis without cluster
    /// support.
    #[error(
        "Redis at {url} is not a node of a Redis Cluster: connect with \
         RedisBackplane::connect (chat-server: --redis-url)"
    )]
    NotACluster {
        /// The seed that answered as one Redis.
        url: String,
    },
}

/// Configures a [`RedisBackplane`].
///
/// ```
/// use std::time::Duration;
///
/// let builder = hub_redis::RedisBackplane::builder("redis://127.0.0.1:6379")
///     .prefix("chat")
///     .history(1000)
///     .ttl(Duration::from_secs(3600))
///     .backoff(Duration::from_millis(50), Duration::from_secs(2));
/// # drop(builder);
/// ```
#[derive(Clone, Debug)]
#[must_use]
pub struct Builder {
    /// One Redis's URL, or a cluster's seed nodes.
    urls: Vec<String>,
    cluster: bool,
    prefix: String,
    partitions: usize,
    config: Config,
}

#[derive(Clone, Debug)]
pub(crate) struct Config {
    pub(crate) history: usize,
    pub(crate) history_bytes: usize,
    pub(crate) ttl: Duration,
    pub(crate) queue: usize,
    pub(crate) backoff: (Duration, Duration),
    pub(crate) presence_ttl: Duration,
}

impl Builder {
    /// Prefix of every key (default [`DEFAULT_PREFIX`]): deployments with
    /// different prefixes share nothing.
    pub fn prefix(mut self, prefix: impl Into<String>) -> Self {
        self.prefix = prefix.into();
        self
    }

    /// How many partitions the keys are spread over (1 to 16 384; by
    /// default [`DEFAULT_PARTITIONS`] on a cluster, 1 on one Redis); every
    /// node of a deployment must use the same number.
    ///
    /// Each partition is one hash slot of a Redis Cluster, and its slots
    /// are spread evenly over the 16 384, so partitions divide among the
    /// masters as slots do: have at least as many partitions as masters,
    /// better a few times as many. Rooms go to partitions by their names.
    /// A node of a cluster keeps one reading connection per partition. On
    /// one Redis, one connection reads every partition, and more of them
    /// only add streams to its reads.
    pub fn partitions(mut self, partitions: usize) -> Self {
        self.partitions = partitions.clamp(1, wire::SLOTS);
        self
    }

    /// How many messages each topic's stream keeps (default
    /// [`DEFAULT_HISTORY`]). Give it the hub's
    /// [history](hub::Builder::history), so a node that places a topic
    /// has what resume needs.
    pub fn history(mut self, messages: usize) -> Self {
        self.config.history = messages;
        self
    }

    /// How many payload bytes each topic's stream keeps (default
    /// [`DEFAULT_HISTORY_BYTES`]); the oldest entries go first when either
    /// this or [`history`](Self::history) is reached. Give it the hub's
    /// history bytes.
    pub fn history_bytes(mut self, bytes: usize) -> Self {
        self.config.history_bytes = bytes;
        self
    }

    /// How long a topic's keys live in Redis once no node follows it
    /// (default [`DEFAULT_TTL`]): nodes that follow a topic keep its keys
    /// alive. Zero keeps them forever. A topic that expires starts a new
    /// epoch.
    pub fn ttl(mut self, ttl: Duration) -> Self {
        self.config.ttl = ttl;
        self
    }

    /// How many bytes of publications may wait to be written (default
    /// [`DEFAULT_QUEUE`]; each counts its message and 64 bytes). Past
    /// that, Redis is not keeping up: broadcasts are delivered locally and
    /// reported as missed to the other nodes, as during an outage, and
    /// personal messages to other nodes are refused.
    pub fn queue(mut self, bytes: usize) -> Self {
        self.config.queue = bytes.max(1);
        self
    }

    /// The delays between reconnect attempts: doubling from `min` up to
    /// `max` (defaults 100 ms and 5 s), with some jitter.
    pub fn backoff(mut self, min: Duration, max: Duration) -> Self {
        self.config.backoff = (min, max.max(min));
        self
    }

    /// How long the other nodes keep listing this node's room members
    /// after its last heartbeat (default [`DEFAULT_PRESENCE_TTL`], at
    /// least a second). Heartbeats go every third of it, so a node that
    /// dies has its members leave the others' lists within this time plus
    /// a third.
    pub fn presence_ttl(mut self, ttl: Duration) -> Self {
        self.config.presence_ttl = ttl.max(Duration::from_millis(300));
        self
    }

    /// Connects to Redis, takes a node number, and starts the link task
    /// (on the current tokio runtime). Give the result to
    /// [`hub::Builder::backplane`].
    ///
    /// # Errors
    ///
    /// [`Error::Url`] for a bad URL, [`Error::Connect`] if Redis does not
    /// answer, [`Error::ClusterNode`] if one Redis was asked for and a node
    /// of a cluster answered, [`Error::NotACluster`] the other way round.
    pub async fn connect(self) -> Result<Arc<RedisBackplane>, Error> {
        let url = self.urls.join(", ");
        let target = Target::new(&self.urls, self.cluster).map_err(|source| Error::Url {
            url: url.clone(),
            source,
        })?;
        let keys = Keys::new(&self.prefix, self.partitions);
        let connect = |source| Error::Connect {
            url: url.clone(),
            source,
        };
        let mut connection = match target.connect(Some(Duration::from_secs(5))).await {
            Ok(connection) => connection,
            Err(error) if target.is_cluster() => {
                return Err(match Target::first_standalone(&self.urls).await {
                    Some(url) => Error::NotACluster { url },
                    None => connect(error),
                });
            }
            Err(error) => return Err(connect(error)),
        };
        if !target.is_cluster()
            && Target::cluster_enabled(&mut connection)
                .await
                .map_err(connect)?
        {
            return Err(Error::ClusterNode { url });
        }
        let count: u64 = redis::cmd("INCR")
            .arg(keys.nodes())
            .query_async(&mut connection)
            .await
            .map_err(connect)?;
        let node = u32::try_from((count.max(1) - 1) % u64::from(MAX_NODE) + 1).unwrap_or(1);
        let (shared, commands, receiver) = Shared::new(self.config.queue);
        let link = Link::new(
            target,
            keys,
            self.config,
            Arc::clone(&shared),
            node,
            receiver,
        );
        tokio::spawn(link.run());
        let cluster = self.cluster;
        tracing::info!(node, url = %url, cluster, "joined the Redis backplane");
        Ok(Arc::new(RedisBackplane {
            node,
            shared,
            commands,
        }))
    }
}

/// Shares a hub's traffic with the other nodes through Redis; see the
/// [crate docs](crate).
pub struct RedisBackplane {
    node: u32,
    shared: Arc<Shared>,
    commands: mpsc::UnboundedSender<Command>,
}

impl fmt::Debug for RedisBackplane {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RedisBackplane")
            .field("node", &self.node)
            .field("up", &self.is_up())
            .finish_non_exhaustive()
    }
}

impl Drop for RedisBackplane {
    fn drop(&mut self) {
        // The link holds a sender too (to ask itself to place a topic);
        // dropping it lets the link end.
        self.shared.commands().take();
    }
}

impl RedisBackplane {
    /// Starts configuring a backplane on the Redis at `url`
    /// (`redis://host:port/db`).
    pub fn builder(url: impl Into<String>) -> Builder {
        Self::builder_for(vec![url.into()], false)
    }

    /// Starts configuring a backplane on a Redis Cluster, known by one or
    /// more of its nodes (`redis://host:port`): the others, and which
    /// holds which slots, are learnt from them, and followed as they
    /// change (`MOVED` and `ASK` redirections, a replica promoted in a
    /// failover). See [Past one Redis](crate#past-one-redis).
    ///
    /// ```no_run
    /// # #[tokio::main]
    /// # async fn main() -> Result<(), hub_redis::Error> {
    /// let seeds = ["redis://10.0.0.1:7000", "redis://10.0.0.2:7000"];
    /// let backplane = hub_redis::RedisBackplane::cluster(seeds).connect().await?;
    /// let hub = hub::Hub::builder().backplane(backplane).build();
    /// # drop(hub);
    /// # Ok(())
    /// # }
    /// ```
    pub fn cluster<I>(seeds: I) -> Builder
    where
        I: IntoIterator,
        I::Item: Into<String>,
    {
        Self::builder_for(seeds.into_iter().map(Into::into).collect(), true)
    }

    fn builder_for(urls: Vec<String>, cluster: bool) -> Builder {
        Builder {
            urls,
            cluster,
            // One Redis reads everything in one XREAD: the fewer keys it
            // blocks on, the less each wake-up costs.
            partitions: if cluster { DEFAULT_PARTITIONS } else { 1 },
            prefix: DEFAULT_PREFIX.to_owned(),
            config: Config {
                history: DEFAULT_HISTORY,
                history_bytes: DEFAULT_HISTORY_BYTES,
                ttl: DEFAULT_TTL,
                queue: DEFAULT_QUEUE,
                backoff: (Duration::from_millis(100), Duration::from_secs(5)),
                presence_ttl: DEFAULT_PRESENCE_TTL,
            },
        }
    }

    /// A backplane with default settings; see [`builder`](Self::builder).
    ///
    /// # Errors
    ///
    /// As [`Builder::connect`].
    pub async fn connect(url: impl Into<String>) -> Result<Arc<Self>, Error> {
        Self::builder(url).connect().await
    }

    /// Whether Redis is reachable and this node shares its traffic.
    #[must_use]
    pub fn is_up(&self) -> bool {
        self.shared.up.load(Ordering::Acquire)
    }

    /// Waits until this node shares its traffic through Redis: connected,
    /// with [`Topic::All`] and its rooms placed. A hub serves its own
    /// connections before that; use this as a readiness check.
    pub async fn until_up(&self) {
        self.until(true).await;
    }

    /// Waits until this node has lost Redis (and delivers locally only).
    pub async fn until_down(&self) {
        self.until(false).await;
    }

    async fn until(&self, up: bool) {
        let mut signal = self.shared.signal.subscribe();
        // Fails only once the link is gone: then it is down for good.
        if signal.wait_for(|now| *now == up).await.is_err() && up {
            std::future::pending::<()>().await;
        }
    }

    /// A snapshot of the backplane's counters.
    #[must_use]
    pub fn stats(&self) -> Stats {
        let c = &self.shared.counters;
        Stats {
            node: self.node,
            up: self.is_up(),
            disconnects: c.disconnects.load(Ordering::Relaxed),
            published: c.published.load(Ordering::Relaxed),
            delivered: c.delivered.load(Ordering::Relaxed),
            local_only: c.local_only.load(Ordering::Relaxed),
            notices: c.notices.load(Ordering::Relaxed),
            dropped: c.dropped.load(Ordering::Relaxed),
            script_reloads: c.script_reloads.load(Ordering::Relaxed),
            reconnects: c.reconnects.load(Ordering::Relaxed),
            resyncs: c.resyncs.load(Ordering::Relaxed),
            queued: self.shared.queued.load(Ordering::Relaxed),
            round_trips: c.round_trips.snapshot(),
            pipelines: c.pipelines.snapshot(),
        }
    }

    /// Queues a publication for the link, or gives it back if Redis is
    /// out of reach or the queue is full.
    fn send_publication(
        &self,
        publication: Publication,
        placed: Option<Placed>,
    ) -> Result<(), Publication> {
        let shared = &self.shared;
        let cost = cost(&publication);
        let queued = shared.queued.fetch_add(cost, Ordering::AcqRel);
        if !shared.up.load(Ordering::Acquire) || queued + cost > shared.limit {
            shared.queued.fetch_sub(cost, Ordering::AcqRel);
            if let Some(topic) = publication.topic() {
                shared.fork(topic);
            }
            return Err(publication);
        }
        match self.commands.send(Command::Publish(publication, placed)) {
            // The link is gone (its runtime is shutting down).
            Err(mpsc::error::SendError(Command::Publish(publication, _))) => {
                shared.queued.fetch_sub(cost, Ordering::AcqRel);
                Err(publication)
            }
            _ => Ok(()),
        }
    }
}

impl Backplane for RedisBackplane {
    fn node(&self) -> u32 {
        self.node
    }

    fn start(&self, remote: Remote) {
        let _ = self.commands.send(Command::Start(remote));
    }

    fn publish(&self, publication: Publication) -> Result<(), Publication> {
        self.send_publication(publication, None)
    }

    /// Reports the position the `PUBLISH` script gives a broadcast.
    fn publish_placed(&self, publication: Publication, placed: Placed) -> Result<(), Publication> {
        self.send_publication(publication, Some(placed))
    }

    fn watch(&self, topic: &Topic) {
        self.shared.change(|changes| changes.follow(topic, true));
    }

    fn unwatch(&self, topic: &Topic) {
        self.shared.change(|changes| changes.follow(topic, false));
    }

    /// Room joins and leaves, and changes of name or user, are shared;
    /// connects and disconnects are not.
    fn announce(&self, event: &PresenceEvent) {
        let shared = matches!(event.topic, Topic::Room(_)) || event.kind == PresenceKind::Updated;
        let gone = event.kind == PresenceKind::Left && event.topic == Topic::All;
        if shared || gone {
            self.shared.change(|changes| changes.presence(event));
        }
    }

    fn members(&self, topic: &Topic) -> Vec<(ConnId, Metadata)> {
        self.shared.roster().members(topic)
    }

    fn occupancy(&self) -> Vec<(Topic, usize)> {
        self.shared.roster().occupancy()
    }

    fn connections_of(&self, user: &str) -> usize {
        self.shared.roster().connections_of(user)
    }
}

/// What a queued publication counts toward [`Builder::queue`].
pub(crate) fn cost(publication: &Publication) -> usize {
    let carried = match publication {
        Publication::Disconnect { reason, .. } => reason.len(),
        other => other.message().map_or(0, hub::Message::len),
    };
    carried + 64
}

/// A snapshot of a [`RedisBackplane`]'s counters.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct Stats {
    /// This node's number.
    pub node: u32,
    /// Whether Redis is reachable now.
    pub up: bool,
    /// Times the connection to Redis was lost.
    pub disconnects: u64,
    /// Broadcasts written to Redis.
    pub published: u64,
    /// Topic entries read from Redis (this node's own included).
    pub delivered: u64,
    /// Broadcasts delivered on this node only (Redis out of reach, or the
    /// queue full).
    pub local_only: u64,
    /// Missed-messages notices written for the other nodes.
    pub notices: u64,
    /// Personal and user messages lost: taken but not written before
    /// Redis went, or read for a connection that is gone or full.
    pub dropped: u64,
    /// Times Redis had lost the scripts (a `SCRIPT FLUSH`, or a restart
    /// the connection did not notice) and they were loaded again.
    pub script_reloads: u64,
    /// Times the link was back after losing Redis.
    pub reconnects: u64,
    /// Gaps told to this node's connections as resyncs: messages numbered
    /// in Redis that never reached its stream, and topics that started
    /// over in Redis (lost or expired) while this node followed them.
    pub resyncs: u64,
    /// Publications waiting for the link now.
    pub queued: usize,
    /// How long Redis took to answer each pipeline of writes, in
    /// nanoseconds: 50 µs to 10 s.
    pub round_trips: Distribution,
    /// How many commands each of those pipelines carried: 1 to 4096.
    pub pipelines: Distribution,
}

/// Bounds of the pipeline buckets, in commands: powers of two to 4096.
static PIPELINE: [u64; 13] = [1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048, 4096];

#[derive(Debug)]
pub(crate) struct Counters {
    pub(crate) disconnects: AtomicU64,
    pub(crate) published: AtomicU64,
    pub(crate) delivered: AtomicU64,
    pub(crate) local_only: AtomicU64,
    pub(crate) notices: AtomicU64,
    pub(crate) dropped: AtomicU64,
    pub(crate) script_reloads: AtomicU64,
    pub(crate) reconnects: AtomicU64,
    pub(crate) resyncs: AtomicU64,
    pub(crate) round_trips: Histogram,
    pub(crate) pipelines: Histogram,
}

impl Default for Counters {
    fn default() -> Self {
        Self {
            disconnects: AtomicU64::default(),
            published: AtomicU64::default(),
            delivered: AtomicU64::default(),
            local_only: AtomicU64::default(),
            notices: AtomicU64::default(),
            dropped: AtomicU64::default(),
            script_reloads: AtomicU64::default(),
            reconnects: AtomicU64::default(),
            resyncs: AtomicU64::default(),
            round_trips: Histogram::new(&LATENCY_NS),
            pipelines: Histogram::new(&PIPELINE),
        }
    }
}

/// State shared by the backplane handle and its link task.
pub(crate) struct Shared {
    up: AtomicBool,
    /// `up`, for those who wait for it.
    signal: watch::Sender<bool>,
    pub(crate) queued: AtomicUsize,
    limit: usize,
    /// Topics delivered locally, with how many broadcasts, not yet
    /// reported.
    forks: Mutex<HashMap<Topic, u64>>,
    /// The other nodes' room members.
    roster: Mutex<Roster>,
    pub(crate) counters: Counters,
    /// For the link to queue commands to itself; emptied when the handle
    /// goes.
    commands: Mutex<Option<mpsc::UnboundedSender<Command>>>,
    /// Follows and presence changes the link has not taken yet.
    changes: Mutex<Changes>,
    /// Woken when `changes` gains one.
    pub(crate) changed: Notify,
}

/// Changes of state for the link: which topics this node follows, and its
/// room members. Only the latest per topic and per member is kept (a
/// member who joined and left meanwhile is no change at all), so however
/// far behind the link falls, they take no more room than the state they
/// describe. Publications, which are events, go through the command queue,
/// bounded in bytes.
#[derive(Debug, Default)]
pub(crate) struct Changes {
    /// Per topic: follow it, or not.
    topics: HashMap<Topic, bool>,
    /// Per room member: how its pending changes began, and the latest.
    members: HashMap<(Topic, ConnId), (PresenceKind, PresenceEvent)>,
    /// Per connection: its latest change of name or user.
    updates: HashMap<ConnId, PresenceEvent>,
}

impl Changes {
    fn follow(&mut self, topic: &Topic, follow: bool) {
        self.topics.insert(topic.clone(), follow);
    }

    fn presence(&mut self, event: &PresenceEvent) {
        match (&event.kind, &event.topic) {
            (PresenceKind::Updated, _) => {
                self.updates.insert(event.id, event.clone());
            }
            // Gone: its updates no longer matter (it left its rooms first).
            (PresenceKind::Left, Topic::All) => {
                self.updates.remove(&event.id);
            }
            (PresenceKind::Joined | PresenceKind::Left, Topic::Room(_)) => {
                let key = (event.topic.clone(), event.id);
                match self.members.get_mut(&key) {
                    // Joined and left before the link knew: nothing to tell.
                    Some((PresenceKind::Joined, _)) if event.kind == PresenceKind::Left => {
                        self.members.remove(&key);
                    }
                    Some((_, latest)) => *latest = event.clone(),
                    None => {
                        self.members.insert(key, (event.kind, event.clone()));
                    }
                }
            }
            _ => {}
        }
    }

    fn is_empty(&self) -> bool {
        self.topics.is_empty() && self.members.is_empty() && self.updates.is_empty()
    }

    /// The changes as commands: follows, then joins and leaves, then
    /// updates (which apply to the rooms joined by then).
    fn take(&mut self) -> Vec<Command> {
        let topics = self.topics.drain().map(|(topic, follow)| {
            if follow {
                Command::Watch(topic)
            } else {
                Command::Unwatch(topic)
            }
        });
        let members = self
            .members
            .drain()
            .map(|(_, (_, event))| Command::Presence(event));
        let updates = self
            .updates
            .drain()
            .map(|(_, event)| Command::Presence(event));
        topics.chain(members).chain(updates).collect()
    }
}

impl Shared {
    /// The state of a new backplane, whose link reads its commands from
    /// the receiver.
    pub(crate) fn new(
        queue: usize,
    ) -> (
        Arc<Self>,
        mpsc::UnboundedSender<Command>,
        mpsc::UnboundedReceiver<Command>,
    ) {
        let (commands, receiver) = mpsc::unbounded_channel();
        let shared = Arc::new(Shared {
            up: AtomicBool::new(false),
            signal: watch::channel(false).0,
            queued: AtomicUsize::new(0),
            limit: queue,
            forks: Mutex::new(HashMap::new()),
            roster: Mutex::new(Roster::default()),
            counters: Counters::default(),
            commands: Mutex::new(Some(commands.clone())),
            changes: Mutex::new(Changes::default()),
            changed: Notify::new(),
        });
        (shared, commands, receiver)
    }

    pub(crate) fn set_up(&self, up: bool) -> bool {
        let was = self.up.swap(up, Ordering::AcqRel);
        self.signal.send_replace(up);
        was
    }

    fn commands(&self) -> MutexGuard<'_, Option<mpsc::UnboundedSender<Command>>> {
        self.commands.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn changes(&self) -> MutexGuard<'_, Changes> {
        self.changes.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Records a change for the link, and wakes it.
    fn change(&self, record: impl FnOnce(&mut Changes)) {
        record(&mut self.changes());
        self.changed.notify_one();
    }

    /// The changes not taken yet, as commands (see [`Changes::take`]).
    pub(crate) fn take_changes(&self) -> Vec<Command> {
        let mut changes = self.changes();
        if changes.is_empty() {
            return Vec::new();
        }
        changes.take()
    }

    pub(crate) fn roster(&self) -> MutexGuard<'_, Roster> {
        self.roster.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn forks(&self) -> MutexGuard<'_, HashMap<Topic, u64>> {
        self.forks.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A broadcast to `topic` was delivered locally only. The first one
    /// asks the link to report it and place the topic again.
    pub(crate) fn fork(&self, topic: &Topic) {
        self.counters.local_only.fetch_add(1, Ordering::Relaxed);
        let first = {
            let mut forks = self.forks();
            let count = forks.entry(topic.clone()).or_insert(0);
            *count += 1;
            *count == 1
        };
        if first {
            self.refork(topic);
        }
    }

    /// Asks the link to place `topic` again.
    pub(crate) fn refork(&self, topic: &Topic) {
        if let Some(commands) = self.commands().as_ref() {
            let _ = commands.send(Command::Refork(topic.clone()));
        }
    }

    /// Puts back a count whose notice could not be written.
    pub(crate) fn restore_fork(&self, topic: Topic, missed: u64) {
        *self.forks().entry(topic).or_insert(0) += missed;
    }

    pub(crate) fn take_fork(&self, topic: &Topic) -> Option<u64> {
        self.forks().remove(topic)
    }

    pub(crate) fn take_forks(&self) -> Vec<(Topic, u64)> {
        self.forks().drain().collect()
    }
}

#[cfg(test)]
mod tests {
    use hub::Metadata;

    use super::*;

    fn event(kind: PresenceKind, topic: Topic, id: u64) -> PresenceEvent {
        let id = ConnId::from_raw(id).unwrap();
        PresenceEvent::new(kind, topic, id, Metadata::new().with_name("n"))
    }

    fn room(name: &str) -> Topic {
        Topic::Room(name.into())
    }

    #[test]
    fn changes_keep_only_the_latest_state() {
        let mut changes = Changes::default();
        // A churn of members joining and leaving before the link looks.
        for id in 1..=100_000 {
            changes.presence(&event(PresenceKind::Joined, room("r"), id));
            changes.presence(&event(PresenceKind::Updated, Topic::All, id));
            changes.presence(&event(PresenceKind::Left, room("r"), id));
            changes.presence(&event(PresenceKind::Left, Topic::All, id));
        }
        // And of rooms followed, then not.
        for i in 0..1000 {
            changes.follow(&room(&format!("r{i}")), true);
            changes.follow(&room(&format!("r{i}")), false);
        }
        assert!(changes.members.is_empty());
        assert!(changes.updates.is_empty());
        assert_eq!(changes.topics.len(), 1000);
        let taken = changes.take();
        assert!(taken.iter().all(|c| matches!(c, Command::Unwatch(_))));
        assert!(changes.is_empty());
    }

    #[test]
    fn a_member_the_link_may_know_is_told_to_leave() {
        let mut changes = Changes::default();
        // Left (the link knew it), came back, left again: it left.
        changes.presence(&event(PresenceKind::Left, room("r"), 7));
        changes.presence(&event(PresenceKind::Joined, room("r"), 7));
        changes.presence(&event(PresenceKind::Left, room("r"), 7));
        changes.presence(&event(PresenceKind::Joined, room("s"), 8));
        changes.presence(&event(PresenceKind::Updated, Topic::All, 8));
        let taken = changes.take();
        let kinds: Vec<_> = taken
            .iter()
            .map(|c| match c {
                Command::Presence(e) => (e.kind, e.topic.clone(), e.id.get()),
                other => panic!("{other:?}"),
            })
            .collect();
        assert_eq!(kinds.len(), 3);
        assert!(kinds.contains(&(PresenceKind::Left, room("r"), 7)));
        assert!(kinds.contains(&(PresenceKind::Joined, room("s"), 8)));
        // Updates come after the joins they apply to.
        assert_eq!(kinds[2], (PresenceKind::Updated, Topic::All, 8));
    }
}

/// The crate README's example, compiled as a doctest.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
