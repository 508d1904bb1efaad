//! The task that talks to Redis: writes what the hub publishes, reads what
//! every node published, and reconnects.
//!
//! This module is the task itself: its sessions, reconnecting, and what it
//! does while Redis is out of reach. `read.rs` delivers what is read (with
//! no Redis in it, so tests drive it with entries of their own),
//! `write.rs` writes pipelines and acts on their replies, and `members.rs`
//! keeps this node's room members in Redis.

mod members;
mod read;
mod write;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hub::backplane::new_epoch;
use hub::{ConnId, Placed, PresenceEvent, Publication, Remote, Topic};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, RedisError, Value};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};

use crate::presence::{self, Member};
use crate::wire::{self, Keys};
use crate::{Config, Shared};
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

pub(crate) struct Link {
    client: Client,
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
    Plain,
}

/// Topics placed per pipeline when placing them all.
const PLACE_BATCH: usize = 128;

/// The connections of one session.
struct Session {
    writer: MultiplexedConnection,
    reader: MultiplexedConnection,
    reader_id: i64,
    publish: String,
    place: String,
    append: String,
}

impl Link {
    pub(crate) fn new(
        client: Client,
        keys: Keys,
        config: Config,
        shared: Arc<Shared>,
        node: u32,
        commands: mpsc::UnboundedReceiver<Command>,
    ) -> Self {
        Self {
            client,
            follow: Follow::new(keys.clone(), Arc::clone(&shared), node),
            keys,
            config,
            shared,
            node,
            commands,
            mine: HashMap::new(),
            retry: Vec::new(),
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
    async fn load_scripts(
        writer: &mut MultiplexedConnection,
    ) -> Result<(String, String, String), Lost> {
        let mut pipe = redis::pipe();
        for script in [wire::PUBLISH, wire::PLACE, wire::APPEND] {
            pipe.cmd("SCRIPT").arg("LOAD").arg(script);
        }
        bounded(pipe.query_async(writer)).await
    }

    async fn connect(&self) -> Result<Session, Lost> {
        let config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(RESPONSE_TIMEOUT))
            .set_response_timeout(Some(RESPONSE_TIMEOUT));
        let mut writer = (self.client)
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        // The reader blocks in XREAD; its own timeout guards it.
        let reader_config = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(RESPONSE_TIMEOUT))
            .set_response_timeout(None);
        let mut reader = (self.client)
            .get_multiplexed_async_connection_with_config(&reader_config)
            .await?;
        let reader_id: i64 = redis::cmd("CLIENT")
            .arg("ID")
            .query_async(&mut reader)
            .await?;
        let (publish, place, append) = Self::load_scripts(&mut writer).await?;
        Ok(Session {
            writer,
            reader,
            reader_id,
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

    /// Starts reading the inbox and user streams (from now, the first
    /// time), reports forks and places every topic kept.
    async fn resume(&mut self, session: &mut Session) -> Result<(), Lost> {
        if self.follow.inbox.is_none() || self.follow.users.is_none() {
            let (seconds, micros): (u64, u64) =
                redis::cmd("TIME").query_async(&mut session.writer).await?;
            // Node numbers are never reused: all of the inbox is for this
            // node. Of the user stream, what is stored from this
            // millisecond on (ids name the millisecond they were stored in).
            let ms = seconds * 1000 + micros / 1000;
            self.follow.inbox.get_or_insert((0, 0));
            self.follow
                .users
                .get_or_insert((ms.saturating_sub(1), u64::MAX));
            self.follow
                .presence
                .get_or_insert((ms.saturating_sub(1), u64::MAX));
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
        let mut pipe = redis::pipe();
        let mut steps = Vec::new();
        for (topic, missed) in self.shared.take_forks() {
            self.missed_notice(&mut pipe, session, &topic, missed);
            steps.push(Step::Notice(topic, missed));
        }
        for topic in topics {
            self.place_command(&mut pipe, session, &topic);
            steps.push(Step::Place(topic));
            if steps.len() >= PLACE_BATCH {
                let full = std::mem::replace(&mut pipe, redis::pipe());
                self.execute(session, full, std::mem::take(&mut steps))
                    .await?;
            }
        }
        // Nodes started from now on take higher numbers than this one.
        pipe.cmd("EVAL")
            .arg(wire::CLAIM)
            .arg(1)
            .arg(self.keys.nodes())
            .arg(self.node)
            .ignore();
        // This node's members, in full (Redis may have lost them), and a
        // word to the others to read them again.
        let members = self.keys.members(self.node);
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
        self.presence_entry(&mut pipe, "s", &[]);
        steps.push(Step::Plain);
        self.heartbeat_commands(&mut pipe);
        self.execute(session, pipe, steps).await?;
        self.reload_all(session).await
    }

    /// Writes and reads until Redis is lost (`Err`) or the hub is gone.
    async fn serve(&mut self, session: &mut Session) -> Result<(), Lost> {
        // Four times per ttl: what this node follows never expires.
        let refresh_every = (self.config.ttl / 4).max(Duration::from_millis(50));
        let mut refresh = tokio::time::interval_at(Instant::now() + refresh_every, refresh_every);
        let mut read = Box::pin(self.read(session));
        // Set while the set of streams read changed and the read in flight
        // still uses the old one.
        let mut stale = false;
        let mut nudge = tokio::time::interval(Duration::from_millis(10));
        let beat = self.config.presence_ttl / 3;
        let mut heartbeat = tokio::time::interval_at(Instant::now() + beat, beat);
        loop {
            tokio::select! {
                biased;
                got = &mut read => {
                    let news = got?;
                    // An unreadable reply ends the session (reading it
                    // again at once would loop).
                    self.follow.take_in(wire::streams(news)?);
                    for node in std::mem::take(&mut self.follow.reload) {
                        self.reload(session, node).await?;
                    }
                    stale = false;
                    read = Box::pin(self.read(session));
                }
                first = self.commands.recv() => {
                    let Some(first) = first else { return Ok(()) };
                    let changed = self.write(session, Some(first)).await?;
                    stale |= changed;
                    if changed {
                        self.unblock(session).await?;
                    }
                }
                () = self.shared.changed.notified() => {
                    let changed = self.write(session, None).await?;
                    stale |= changed;
                    if changed {
                        self.unblock(session).await?;
                    }
                }
                _ = nudge.tick(), if stale => self.unblock(session).await?,
                _ = refresh.tick() => self.refresh(session).await?,
                _ = heartbeat.tick() => {
                    self.heartbeat(session).await?;
                    self.check_epochs(session).await?;
                }
            }
        }
    }

    /// Wakes the reader from its blocking read, to read a new set of streams.
    async fn unblock(&self, session: &mut Session) -> Result<(), Lost> {
        let _: i64 = redis::cmd("CLIENT")
            .arg("UNBLOCK")
            .arg(session.reader_id)
            .query_async(&mut session.writer)
            .await?;
        Ok(())
    }

    /// Keeps the topics this node follows from expiring.
    async fn refresh(&self, session: &mut Session) -> Result<(), Lost> {
        let seconds = self.config.ttl.as_secs();
        if seconds == 0 {
            return Ok(());
        }
        let mut pipe = redis::pipe();
        for topic in self.follow.watched.keys() {
            pipe.cmd("EXPIRE")
                .arg(self.keys.meta(topic))
                .arg(seconds)
                .ignore();
            pipe.cmd("EXPIRE")
                .arg(self.keys.stream(topic))
                .arg(seconds)
                .ignore();
        }
        bounded(pipe.query_async::<()>(&mut session.writer)).await
    }

    /// The next `XREAD` of every stream this node follows.
    fn read(
        &self,
        session: &Session,
    ) -> impl std::future::Future<Output = Result<Value, Lost>> + 'static {
        let mut reader = session.reader.clone();
        let mut cmd = redis::cmd("XREAD");
        cmd.arg("COUNT")
            .arg(READ_COUNT)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS");
        let mut ids = Vec::new();
        for (topic, cursor) in self.follow.following() {
            cmd.arg(self.keys.stream(&topic));
            ids.push(format!("0-{}", cursor.next));
        }
        let (inbox, users) = (
            self.follow.inbox.unwrap_or_default(),
            self.follow.users.unwrap_or_default(),
        );
        let presence = self.follow.presence.unwrap_or_default();
        cmd.arg(self.keys.inbox(self.node))
            .arg(self.keys.users())
            .arg(self.keys.presence());
        for (ms, seq) in [inbox, users, presence] {
            ids.push(format!("{ms}-{seq}"));
        }
        cmd.arg(ids);
        async move {
            match timeout(
                BLOCK + RESPONSE_TIMEOUT,
                cmd.query_async::<Value>(&mut reader),
            )
            .await
            {
                Ok(Ok(value)) => Ok(value),
                Ok(Err(error)) => Err(Lost::Redis(error)),
                Err(_) => Err(Lost::Timeout),
            }
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
