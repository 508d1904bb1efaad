//! The task that talks to Redis: writes what the hub publishes, reads what
//! every node published, and reconnects.
//!
//! This module is the task itself: its sessions, reconnecting, and what it
//! does while Redis is out of reach. `read.rs` delivers what is read (with
//! no Redis in it, so tests drive it with entries of their own),
//! `write.rs` writes pipelines and acts on their replies, `batch.rs`
//! groups them (by hash slot, on a cluster), and `members.rs` keeps this
//! node's room members in Redis.
//!
//! Reading: one `XREAD` per reader, blocking until any of its streams has
//! news. On one Redis, one reader reads every partition; on a cluster,
//! each partition has its reader (a cluster reads one slot per command).
//! When the streams a reader should read change (a room followed), the
//! link rings the reader's bell, a stream of its own among those it reads,
//! and the reader comes back to read the new set.

mod batch;
mod members;
mod read;
mod write;

use std::collections::{BTreeSet, HashMap};
use std::ops::Range;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use futures_util::stream::{FuturesUnordered, StreamExt};
use hub::backplane::new_epoch;
use hub::{ConnId, Placed, PresenceEvent, Publication, Remote, Topic};
use redis::{RedisError, Value};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};

use crate::presence::{self, Member};
use crate::target::{Connection, Target};
use crate::wire::{self, Keys};
use crate::{Config, Shared};
use batch::Batch;
use read::Follow;

/// What the hub asks of the link, in the order it asked.
#[derive(Debug)]
pub(crate) enum Command {
    Start(Remote),
    /// Start following a room this node began to keep.
    Watch(Topic),
    Unwatch(Topic),
    /// With where its publisher waits to learn its position.
    Publish(Publication, Option<Placed>),
    /// The topic forked while connected: report and place it again.
    Refork(Topic),
    /// A room member of this node joined, left or changed.
    Presence(PresenceEvent),
}

/// Entries read per stream per `XREAD`.
const READ_COUNT: usize = 512;
/// How long one `XREAD` blocks.
const BLOCK: Duration = Duration::from_secs(2);
/// How long any other command may take.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// Length of the inbox, user and presence streams.
const INBOX_LENGTH: usize = 10_000;
/// Payload bytes each inbox, and the user stream, keeps at most.
const INBOX_BYTES: usize = 64 << 20;
/// How long a personal or user message, or a bell, waits in its stream,
/// in seconds.
const INBOX_TTL: u64 = 3600;

pub(crate) struct Link {
    target: Target,
    keys: Keys,
    config: Config,
    shared: Arc<Shared>,
    node: u32,
    commands: mpsc::UnboundedReceiver<Command>,
    /// What this node follows, and delivering what it reads.
    follow: Follow,
    /// This node's room members, as the other nodes should see them.
    mine: HashMap<(Topic, ConnId), Member>,
    /// Topics to place again at the next heartbeat (placing failed).
    retry: Vec<Topic>,
    /// Partitions whose reader should read a new set of streams.
    stale: BTreeSet<usize>,
}

/// Why a session ended.
enum Ended {
    /// The hub is gone.
    Closed,
    Lost(Lost),
}

#[derive(Debug, thiserror::Error)]
enum Lost {
    #[error(transparent)]
    Redis(#[from] RedisError),
    #[error(transparent)]
    Reply(#[from] wire::Unexpected),
    #[error("Redis did not answer in time")]
    Timeout,
}

/// One pipelined command and what to do with its reply.
enum Step {
    Publish(Publication, Option<Placed>),
    /// A personal or user message, for other nodes.
    Direct(Publication),
    /// Placing a topic.
    Place(Topic),
    /// A missed-messages notice for a topic, and its count.
    Notice(Topic, u64),
    /// Reading the epoch of a topic followed in this one.
    Epoch(Topic, u64),
}

/// Topics placed per pipeline when placing them all.
const PLACE_BATCH: usize = 128;
/// Offsets a topic skips when it is numbered by another master of a
/// cluster than before (a failover): see [`wire::PUBLISH`].
const FAILOVER_MARGIN: u64 = 100;

/// The connections of one session.
struct Session {
    writer: Connection,
    readers: Vec<Reader>,
    /// Whether pipelines go by hash slot (a cluster).
    sharded: bool,
    /// The failover margin: 0 on one Redis.
    margin: u64,
    publish: String,
    place: String,
    append: String,
}

impl Session {
    fn batch(&self) -> Batch {
        Batch::new(self.sharded)
    }

    /// The reader of a partition.
    fn reader_of(&self, partition: usize) -> usize {
        if self.readers.len() == 1 {
            0
        } else {
            partition
        }
    }
}

/// A connection blocked in `XREAD` of the streams of some partitions.
struct Reader {
    connection: Connection,
    partitions: Range<usize>,
}

impl Link {
    pub(crate) fn new(
        target: Target,
        keys: Keys,
        config: Config,
        shared: Arc<Shared>,
        node: u32,
        commands: mpsc::UnboundedReceiver<Command>,
    ) -> Self {
        Self {
            target,
            follow: Follow::new(keys.clone(), Arc::clone(&shared), node),
            keys,
            config,
            shared,
            node,
            commands,
            mine: HashMap::new(),
            retry: Vec::new(),
            stale: BTreeSet::new(),
        }
    }

    pub(crate) async fn run(mut self) {
        // Nothing to do until the hub is built.
        loop {
            match self.commands.recv().await {
                Some(Command::Start(remote)) => {
                    self.follow.remote = Some(remote);
                    break;
                }
                Some(command) => self.offline(command),
                None => return,
            }
        }
        let mut failures: u32 = 0;
        loop {
            let started = Instant::now();
            match self.session().await {
                Ended::Closed => return,
                Ended::Lost(lost) => {
                    let was_up = self.shared.set_up(false);
                    if was_up {
                        tracing::warn!(error = %lost, "lost Redis; delivering locally until it is back");
                        self.shared
                            .counters
                            .disconnects
                            .fetch_add(1, Ordering::Relaxed);
                    } else {
                        tracing::debug!(error = %lost, "Redis still out of reach");
                    }
                }
            }
            // A session that lasted resets the backoff.
            if started.elapsed() > self.config.backoff.1 {
                failures = 0;
            }
            let delay = backoff(self.config.backoff, failures);
            failures = failures.saturating_add(1);
            if !self.wait_offline(delay).await {
                return;
            }
        }
    }

    /// Waits `delay`, handling commands and changes meanwhile; `false`
    /// once the hub is gone.
    async fn wait_offline(&mut self, delay: Duration) -> bool {
        let until = Instant::now() + delay;
        loop {
            tokio::select! {
                () = tokio::time::sleep_until(until) => return true,
                () = self.shared.changed.notified() => self.take_changes_offline(),
                command = self.commands.recv() => match command {
                    Some(command) => {
                        // Changes made before the command come before it.
                        self.take_changes_offline();
                        self.offline(command);
                    }
                    None => return false,
                },
            }
        }
    }

    fn take_changes_offline(&mut self) {
        for change in self.shared.take_changes() {
            self.offline(change);
        }
    }

    /// Handles a command while Redis is out of reach.
    fn offline(&mut self, command: Command) {
        match command {
            Command::Start(remote) => self.follow.remote = Some(remote),
            Command::Watch(topic) => {
                self.follow.watched.entry(topic).or_insert(None);
            }
            Command::Unwatch(topic) => {
                self.follow.watched.remove(&topic);
            }
            Command::Refork(_) => {}
            Command::Presence(event) => {
                // Written in full once Redis is back.
                self.remember(&event);
            }
            // The publisher learns it was not placed (`Placed` dropped).
            Command::Publish(publication, _) => {
                (self.shared.queued).fetch_sub(crate::cost(&publication), Ordering::AcqRel);
                self.follow.give_back(publication);
            }
        }
    }

    /// Loads the scripts (again, after Redis lost them: a `SCRIPT FLUSH`,
    /// or a restart the connection did not notice) and keeps their hashes.
    /// On a cluster, each `SCRIPT LOAD` goes to every master.
    async fn load_scripts(writer: &mut Connection) -> Result<(String, String, String), Lost> {
        let mut hashes = Vec::new();
        for script in [wire::PUBLISH, wire::PLACE, wire::APPEND] {
            let load = redis::cmd("SCRIPT").arg("LOAD").arg(script).to_owned();
            hashes.push(bounded(load.query_async::<String>(writer)).await?);
        }
        let [publish, place, append] = <[String; 3]>::try_from(hashes)
            .map_err(|_| Lost::Reply(wire::Unexpected("expected three script hashes")))?;
        Ok((publish, place, append))
    }

    async fn connect(&self) -> Result<Session, Lost> {
        let mut writer = self.target.connect(Some(RESPONSE_TIMEOUT)).await?;
        // Readers block in XREAD; their own timeout guards them.
        let partitions = self.keys.partitions();
        let ranges: Vec<Range<usize>> = if self.target.is_cluster() {
            (0..partitions).map(|p| p..p + 1).collect()
        } else {
            std::iter::once(0..partitions).collect()
        };
        let connections = futures_util::future::try_join_all(
            ranges
                .iter()
                .map(|_| self.target.connect(Some(BLOCK + RESPONSE_TIMEOUT))),
        )
        .await?;
        let readers = (connections.into_iter().zip(ranges))
            .map(|(connection, partitions)| Reader {
                connection,
                partitions,
            })
            .collect();
        let (publish, place, append) = Self::load_scripts(&mut writer).await?;
        Ok(Session {
            writer,
            readers,
            sharded: self.target.is_cluster(),
            margin: if self.target.is_cluster() {
                FAILOVER_MARGIN
            } else {
                0
            },
            publish,
            place,
            append,
        })
    }

    async fn session(&mut self) -> Ended {
        let mut session = match self.connect().await {
            Ok(session) => session,
            Err(lost) => return Ended::Lost(lost),
        };
        if let Err(lost) = self.resume(&mut session).await {
            return Ended::Lost(lost);
        }
        self.shared.set_up(true);
        if self.shared.counters.disconnects.load(Ordering::Relaxed) > 0 {
            tracing::info!("Redis is back; sharing again");
            (self.shared.counters.reconnects).fetch_add(1, Ordering::Relaxed);
        }
        match self.serve(&mut session).await {
            Ok(()) => Ended::Closed,
            Err(lost) => Ended::Lost(lost),
        }
    }

    /// Starts reading the inbox, user and presence streams (from now, the
    /// first time), reports forks and places every topic kept.
    async fn resume(&mut self, session: &mut Session) -> Result<(), Lost> {
        if !self.follow.started() {
            let (seconds, micros): (u64, u64) =
                bounded(redis::cmd("TIME").query_async(&mut session.writer)).await?;
            self.follow.start(seconds * 1000 + micros / 1000);
        }
        let Some(remote) = self.follow.remote.clone() else {
            return Ok(());
        };
        let topics = remote.topics();
        self.follow
            .watched
            .retain(|topic, _| topics.contains(topic));
        for topic in &topics {
            self.follow.watched.entry(topic.clone()).or_insert(None);
        }
        let mut batch = session.batch();
        for (topic, missed) in self.shared.take_forks() {
            self.missed_notice(&mut batch, session, &topic, missed);
        }
        for topic in topics {
            self.place_command(&mut batch, session, &topic);
            if batch.steps() >= PLACE_BATCH {
                let full = std::mem::replace(&mut batch, session.batch());
                self.execute(session, full).await?;
            }
        }
        // Nodes started from now on take higher numbers than this one.
        let nodes = self.keys.nodes();
        batch
            .on(&nodes)
            .pipe
            .cmd("EVAL")
            .arg(wire::CLAIM)
            .arg(1)
            .arg(&nodes)
            .arg(self.node)
            .ignore();
        // This node's members, in full (Redis may have lost them).
        let members = self.keys.members(self.node);
        let pipe = &mut batch.on(&members).pipe;
        pipe.cmd("DEL").arg(&members).ignore();
        for ((topic, id), member) in &self.mine {
            if let Topic::Room(room) = topic {
                let field = presence::field(room.as_str(), *id);
                pipe.cmd("HSET")
                    .arg(&members)
                    .arg(field)
                    .arg(member.encode())
                    .ignore();
            }
        }
        self.execute(session, batch).await?;
        // Then, once they are written, a word to the others to read them
        // again.
        let mut batch = session.batch();
        self.presence_entry(&mut batch, self.keys.node_partition(self.node), "s", &[]);
        self.heartbeat_commands(&mut batch);
        self.execute(session, batch).await?;
        self.reload_all(session).await
    }

    /// Writes and reads until Redis is lost (`Err`) or the hub is gone.
    async fn serve(&mut self, session: &mut Session) -> Result<(), Lost> {
        // Four times per ttl: what this node follows never expires.
        let refresh_every = (self.config.ttl / 4).max(Duration::from_millis(50));
        let mut refresh = tokio::time::interval_at(Instant::now() + refresh_every, refresh_every);
        let mut reads: FuturesUnordered<_> = (0..session.readers.len())
            .map(|reader| self.read(session, reader))
            .collect();
        let beat = self.config.presence_ttl / 3;
        let mut heartbeat = tokio::time::interval_at(Instant::now() + beat, beat);
        loop {
            tokio::select! {
                biased;
                Some((reader, got)) = reads.next() => {
                    let news = got?;
                    // An unreadable reply ends the session (reading it
                    // again at once would loop).
                    self.follow.take_in(wire::streams(news)?);
                    for node in std::mem::take(&mut self.follow.reload) {
                        self.reload(session, node).await?;
                    }
                    reads.push(self.read(session, reader));
                }
                first = self.commands.recv() => {
                    let Some(first) = first else { return Ok(()) };
                    self.write(session, Some(first)).await?;
                }
                () = self.shared.changed.notified() => self.write(session, None).await?,
                _ = refresh.tick() => self.refresh(session).await?,
                _ = heartbeat.tick() => {
                    self.heartbeat(session).await?;
                    self.check_epochs(session).await?;
                }
            }
        }
    }

    /// Wakes the readers of the partitions whose streams changed, to read
    /// the new set: rings their bells.
    fn ring(&mut self, batch: &mut Batch, session: &Session) {
        let readers: BTreeSet<usize> = (self.stale.iter())
            .map(|partition| session.reader_of(*partition))
            .collect();
        self.stale.clear();
        for reader in readers {
            let bell = self.bell(session, reader);
            batch
                .on(&bell)
                .pipe
                .cmd("XADD")
                .arg(&bell)
                .arg("MAXLEN")
                .arg(1)
                .arg("*")
                .arg("w")
                .arg(1)
                .ignore()
                .cmd("EXPIRE")
                .arg(&bell)
                .arg(INBOX_TTL)
                .ignore();
        }
    }

    /// The bell of a reader: in its first partition.
    fn bell(&self, session: &Session, reader: usize) -> String {
        let partition = session.readers[reader].partitions.start;
        self.keys.bell(partition, self.node)
    }

    /// Keeps the topics this node follows from expiring.
    async fn refresh(&mut self, session: &mut Session) -> Result<(), Lost> {
        let seconds = self.config.ttl.as_secs();
        if seconds == 0 {
            return Ok(());
        }
        let mut batch = session.batch();
        for topic in self.follow.watched.keys() {
            for key in [self.keys.meta(topic), self.keys.stream(topic)] {
                batch
                    .on(&key)
                    .pipe
                    .cmd("EXPIRE")
                    .arg(&key)
                    .arg(seconds)
                    .ignore();
            }
        }
        self.execute(session, batch).await
    }

    /// The next `XREAD` of every stream reader `reader` reads, and the
    /// reader's number.
    fn read(
        &self,
        session: &Session,
        reader: usize,
    ) -> impl std::future::Future<Output = (usize, Result<Value, Lost>)> + 'static {
        let Reader {
            connection,
            partitions,
        } = &session.readers[reader];
        let mut connection = connection.clone();
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(READ_COUNT)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS");
        let mut ids = Vec::new();
        let mut own = vec![self.bell(session, reader)];
        for partition in partitions.clone() {
            own.push(self.keys.users(partition));
            own.push(self.keys.presence(partition));
        }
        if partitions.contains(&self.keys.node_partition(self.node)) {
            own.push(self.keys.inbox(self.node));
        }
        for key in own {
            let (ms, seq) = self.follow.position(key.as_bytes());
            ids.push(format!("{ms}-{seq}"));
            cmd.arg(key);
        }
        let every = partitions.len() == self.keys.partitions();
        for (topic, cursor) in self.follow.following() {
            if every || partitions.contains(&self.keys.partition(&topic)) {
                cmd.arg(self.keys.stream(&topic));
                ids.push(format!("0-{}", cursor.next));
            }
        }
        cmd.arg(ids);
        async move {
            let read = timeout(
                BLOCK + RESPONSE_TIMEOUT,
                cmd.query_async::<Value>(&mut connection),
            );
            let got = match read.await {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(error)) => Err(Lost::Redis(error)),
                Err(_) => Err(Lost::Timeout),
            };
            (reader, got)
        }
    }
}

/// A command's result, or `Lost::Timeout` past the response timeout.
async fn bounded<T>(
    query: impl std::future::Future<Output = Result<T, RedisError>>,
) -> Result<T, Lost> {
    match timeout(RESPONSE_TIMEOUT, query).await {
        Ok(result) => Ok(result?),
        Err(_) => Err(Lost::Timeout),
    }
}

/// The delay before reconnect attempt `failures`: doubling from the
/// minimum to the maximum, with up to a quarter of jitter.
fn backoff((min, max): (Duration, Duration), failures: u32) -> Duration {
    let base = min.saturating_mul(1 << failures.min(16)).min(max);
    let jitter = u64::try_from(base.as_micros() / 4).unwrap_or(0);
    // Any random number will do.
    let random = new_epoch() % jitter.max(1);
    base + Duration::from_micros(random)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_maximum_with_bounded_jitter() {
        let limits = (Duration::from_millis(100), Duration::from_secs(2));
        for failures in 0..40 {
            let delay = backoff(limits, failures);
            let base = Duration::from_millis(100 * (1u64 << failures.min(16))).min(limits.1);
            assert!(
                delay >= base && delay <= base + base / 4,
                "{failures}: {delay:?}"
            );
        }
    }
}
