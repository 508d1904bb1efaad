//! The task that talks to Redis: writes what the hub publishes, reads what
//! every node published, and reconnects.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use hub::backplane::new_epoch;
use hub::{ConnId, Message, Position, PresenceEvent, PresenceKind, Publication, Remote, Topic};
use redis::aio::MultiplexedConnection;
use redis::{AsyncConnectionConfig, Client, Pipeline, RedisError, Value};
use tokio::sync::mpsc;
use tokio::time::{timeout, Instant};

use crate::presence::{self, Member};
use crate::wire::{self, Entry, Keys, MISSED};
use crate::{Config, Shared};

/// What the hub asks of the link, in the order it asked.
#[derive(Debug)]
pub(crate) enum Command {
    Start(Remote),
    /// Start following a room this node began to keep.
    Watch(Topic),
    Unwatch(Topic),
    Publish(Publication),
    /// The topic forked while connected: report and place it again.
    Refork(Topic),
    /// A room member of this node joined, left or changed.
    Presence(PresenceEvent),
}

/// How far this node has read a topic's stream.
#[derive(Clone, Copy, Debug)]
struct Cursor {
    epoch: u64,
    next: u64,
}

/// Commands taken from the queue per pipeline.
const BATCH: usize = 256;
/// Entries read per stream per `XREAD`.
const READ_COUNT: usize = 512;
/// How long one `XREAD` blocks.
const BLOCK: Duration = Duration::from_secs(2);
/// How long any other command may take.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(5);
/// How long a personal or user message waits in its stream, in seconds.
const INBOX_TTL: u64 = 3600;
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
    remote: Option<Remote>,
    /// The topics this node keeps; `None` until placed.
    watched: HashMap<Topic, Option<Cursor>>,
    /// Where this node reads its inbox, the user and presence streams
    /// (stream ids).
    inbox: Option<(u64, u64)>,
    users: Option<(u64, u64)>,
    presence: Option<(u64, u64)>,
    /// This node's room members, as the other nodes should see them.
    mine: HashMap<(Topic, ConnId), Member>,
    /// Nodes whose members to read again (they wrote them anew).
    reload: Vec<u32>,
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
    Publish(Publication),
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
        let mut watched = HashMap::new();
        watched.insert(Topic::All, None);
        Self {
            client,
            keys,
            config,
            shared,
            node,
            commands,
            remote: None,
            watched,
            inbox: None,
            users: None,
            presence: None,
            mine: HashMap::new(),
            reload: Vec::new(),
            retry: Vec::new(),
        }
    }

    pub(crate) async fn run(mut self) {
        // Nothing to do until the hub is built.
        loop {
            match self.commands.recv().await {
                Some(Command::Start(remote)) => {
                    self.remote = Some(remote);
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
            Command::Start(remote) => self.remote = Some(remote),
            Command::Watch(topic) => {
                self.watched.entry(topic).or_insert(None);
            }
            Command::Unwatch(topic) => {
                self.watched.remove(&topic);
            }
            Command::Refork(_) => {}
            Command::Presence(event) => {
                // Written in full once Redis is back.
                self.remember(&event);
            }
            Command::Publish(publication) => {
                (self.shared.queued).fetch_sub(crate::cost(&publication), Ordering::AcqRel);
                self.give_back(publication);
            }
        }
    }

    /// A publication taken but not written: a broadcast is delivered here
    /// alone (and reported to the other nodes once Redis is back); personal
    /// and user messages for other nodes are lost, and counted.
    fn give_back(&self, publication: Publication) {
        match publication {
            Publication::Broadcast {
                topic,
                message,
                except,
            } => {
                self.shared.fork(&topic);
                if let Some(remote) = &self.remote {
                    remote.deliver_here(&topic, message, except);
                }
            }
            other => {
                tracing::warn!(publication = ?other, "Redis lost before a message for another node was written; dropped");
                self.shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
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
        }
        match self.serve(&mut session).await {
            Ok(()) => Ended::Closed,
            Err(lost) => Ended::Lost(lost),
        }
    }

    /// Starts reading the inbox and user streams (from now, the first
    /// time), reports forks and places every topic kept.
    async fn resume(&mut self, session: &mut Session) -> Result<(), Lost> {
        if self.inbox.is_none() || self.users.is_none() {
            let (seconds, micros): (u64, u64) =
                redis::cmd("TIME").query_async(&mut session.writer).await?;
            // Node numbers are never reused: all of the inbox is for this
            // node. Of the user stream, what is stored from this
            // millisecond on (ids name the millisecond they were stored in).
            let ms = seconds * 1000 + micros / 1000;
            self.inbox.get_or_insert((0, 0));
            self.users.get_or_insert((ms.saturating_sub(1), u64::MAX));
            self.presence
                .get_or_insert((ms.saturating_sub(1), u64::MAX));
        }
        let Some(remote) = self.remote.clone() else {
            return Ok(());
        };
        let topics = remote.topics();
        self.watched.retain(|topic, _| topics.contains(topic));
        for topic in &topics {
            self.watched.entry(topic.clone()).or_insert(None);
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

    /// Reads every other node's members anew.
    async fn reload_all(&mut self, session: &mut Session) -> Result<(), Lost> {
        let own = self.keys.members(self.node);
        let mut cursor: u64 = 0;
        let mut keys = Vec::new();
        // SCAN ends when its cursor comes back to 0; bounded all the same.
        for _ in 0..10_000 {
            let (next, found): (u64, Vec<String>) = bounded(
                redis::cmd("SCAN")
                    .arg(cursor)
                    .arg("MATCH")
                    .arg(self.keys.members_pattern())
                    .arg("COUNT")
                    .arg(1000)
                    .query_async(&mut session.writer),
            )
            .await?;
            keys.extend(found.into_iter().filter(|key| *key != own));
            cursor = next;
            if cursor == 0 {
                break;
            }
        }
        for key in keys {
            let Some(node) = key.rsplit(':').next().and_then(|n| n.parse().ok()) else {
                continue;
            };
            self.reload(session, node).await?;
        }
        Ok(())
    }

    /// Reads node `node`'s members anew.
    async fn reload(&mut self, session: &mut Session, node: u32) -> Result<(), Lost> {
        let fields: HashMap<String, String> = bounded(
            redis::cmd("HGETALL")
                .arg(self.keys.members(node))
                .query_async(&mut session.writer),
        )
        .await?;
        let members = (fields.iter())
            .filter_map(|(field, value)| {
                Some((presence::parse_field(field)?, Member::decode(value)?))
            })
            .collect();
        let events = self.shared.roster().replace(node, members);
        self.announce(events);
        Ok(())
    }

    fn announce(&self, events: Vec<PresenceEvent>) {
        if let Some(remote) = &self.remote {
            for event in events {
                remote.announce(event);
            }
        }
    }

    /// Records a change of this node's members; returns the hash fields
    /// to write (`Some` value) or delete (`None`).
    fn remember(&mut self, event: &PresenceEvent) -> Vec<(String, Option<String>)> {
        let member = Member::of(&event.metadata);
        let mut changes = Vec::new();
        match (&event.kind, &event.topic) {
            (PresenceKind::Joined, Topic::Room(room)) => {
                changes.push((
                    presence::field(room.as_str(), event.id),
                    Some(member.encode()),
                ));
                self.mine.insert((event.topic.clone(), event.id), member);
            }
            (PresenceKind::Left, Topic::Room(room)) => {
                changes.push((presence::field(room.as_str(), event.id), None));
                self.mine.remove(&(event.topic.clone(), event.id));
            }
            (PresenceKind::Updated, _) => {
                for ((topic, id), known) in &mut self.mine {
                    if let (Topic::Room(room), true) = (topic, *id == event.id) {
                        *known = member.clone();
                        changes.push((presence::field(room.as_str(), *id), Some(member.encode())));
                    }
                }
            }
            _ => {}
        }
        changes
    }

    /// Adds an entry of kind `kind` to the presence stream.
    fn presence_entry(&self, pipe: &mut Pipeline, kind: &str, fields: &[(&str, &[u8])]) {
        pipe.cmd("XADD")
            .arg(self.keys.presence())
            .arg("MAXLEN")
            .arg("~")
            .arg(INBOX_LENGTH)
            .arg("*")
            .arg("n")
            .arg(self.node)
            .arg("k")
            .arg(kind);
        for (name, value) in fields {
            pipe.arg(*name).arg(*value);
        }
    }

    /// A heartbeat, and this node's members kept from expiring.
    fn heartbeat_commands(&self, pipe: &mut Pipeline) {
        let seconds = self.config.presence_ttl.as_millis();
        self.presence_entry(pipe, "h", &[]);
        pipe.ignore();
        pipe.cmd("PEXPIRE")
            .arg(self.keys.members(self.node))
            .arg(u64::try_from(seconds).unwrap_or(u64::MAX))
            .ignore();
    }

    async fn heartbeat(&mut self, session: &mut Session) -> Result<(), Lost> {
        let mut pipe = redis::pipe();
        self.heartbeat_commands(&mut pipe);
        bounded(pipe.query_async::<()>(&mut session.writer)).await?;
        let gone = self.shared.roster().expire(self.config.presence_ttl);
        self.announce(gone);
        Ok(())
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
                    self.take_in(news)?;
                    for node in std::mem::take(&mut self.reload) {
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
        for topic in self.watched.keys() {
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
        let following = self.remote.as_ref().map(|remote| {
            (self.watched.iter())
                .filter(|(topic, _)| remote.is_following(topic))
                .filter_map(|(topic, cursor)| cursor.map(|c| (topic.clone(), c)))
                .collect::<Vec<_>>()
        });
        for (topic, cursor) in following.unwrap_or_default() {
            cmd.arg(self.keys.stream(&topic));
            ids.push(format!("0-{}", cursor.next));
        }
        let (inbox, users) = (
            self.inbox.unwrap_or_default(),
            self.users.unwrap_or_default(),
        );
        let presence = self.presence.unwrap_or_default();
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

    /// Delivers what an `XREAD` brought. An unreadable reply ends the
    /// session (reading it again at once would loop).
    fn take_in(&mut self, news: Value) -> Result<(), Lost> {
        let streams = wire::streams(news)?;
        let inbox = self.keys.inbox(self.node).into_bytes();
        let users = self.keys.users().into_bytes();
        let presence = self.keys.presence().into_bytes();
        let topics: HashMap<Vec<u8>, Topic> = (self.watched.keys())
            .map(|topic| (self.keys.stream(topic).into_bytes(), topic.clone()))
            .collect();
        for (key, entries) in streams {
            if key == inbox {
                for entry in entries {
                    self.inbox = Some(entry.id);
                    self.personal(entry);
                }
            } else if key == users {
                for entry in entries {
                    self.users = Some(entry.id);
                    self.user(entry);
                }
            } else if key == presence {
                for entry in entries {
                    self.presence = Some(entry.id);
                    self.presence_change(entry);
                }
            } else if let Some(topic) = topics.get(&key) {
                for entry in entries {
                    self.broadcast(topic, entry);
                }
            }
        }
        Ok(())
    }

    fn personal(&self, mut entry: Entry) {
        let (Some(remote), Some(to)) = (&self.remote, entry.number("c").and_then(ConnId::from_raw))
        else {
            return;
        };
        let Some(message) = take_message(&mut entry) else {
            return;
        };
        if let Err(error) = remote.send_personal(to, message) {
            tracing::debug!(%error, "a personal message from another node was not queued");
            self.shared.counters.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    fn user(&self, mut entry: Entry) {
        let Some(remote) = &self.remote else { return };
        if entry.number("n") == Some(u64::from(self.node)) {
            return;
        }
        let Some(user) = entry.take("u").and_then(|u| String::from_utf8(u).ok()) else {
            return;
        };
        let except = entry.except();
        if let Some(message) = take_message(&mut entry) {
            remote.send_to_user(&user, message, &except);
        }
    }

    /// Another node's join, leave, change, heartbeat or new list.
    fn presence_change(&mut self, mut entry: Entry) {
        let Some(node) = entry.number("n").and_then(|n| u32::try_from(n).ok()) else {
            return;
        };
        if node == self.node {
            return;
        }
        let kind = match entry.field("k") {
            Some(b"j") => PresenceKind::Joined,
            Some(b"l") => PresenceKind::Left,
            Some(b"u") => PresenceKind::Updated,
            Some(b"s") => {
                self.reload.push(node);
                return;
            }
            _ => {
                self.shared.roster().heard(node);
                return;
            }
        };
        let field = entry.take("f").and_then(|f| String::from_utf8(f).ok());
        let member = entry.take("a").and_then(|a| String::from_utf8(a).ok());
        let Some((topic, id)) = field.as_deref().and_then(presence::parse_field) else {
            return;
        };
        let member = member
            .as_deref()
            .and_then(Member::decode)
            .unwrap_or_default();
        let event = self.shared.roster().apply(node, kind, topic, id, member);
        self.announce(event.into_iter().collect());
    }

    fn broadcast(&mut self, topic: &Topic, mut entry: Entry) {
        let Some(remote) = self.remote.clone() else {
            return;
        };
        let Some(Some(cursor)) = self.watched.get_mut(topic) else {
            return;
        };
        let (Some(offset), Some(epoch)) = (entry.offset(), entry.number("e")) else {
            // Not ours to read, but never to be read again either.
            tracing::warn!(%topic, id = ?entry.id, "skipped a malformed entry");
            if entry.id.0 == 0 {
                cursor.next = cursor.next.max(entry.id.1);
            }
            return;
        };
        if epoch != cursor.epoch {
            // The topic started over in Redis (its keys expired, say): place
            // it again; the cursor, kept, says it is news from its start.
            tracing::info!(%topic, "topic restarted in Redis; placing it again");
            self.shared.refork(topic);
            return;
        }
        if !remote.is_following(topic) {
            // Forked since the read began: read again once placed.
            return;
        }
        cursor.next = cursor.next.max(offset + 1);
        self.shared
            .counters
            .delivered
            .fetch_add(1, Ordering::Relaxed);
        let position = Position { epoch, offset };
        if entry.field("k") == Some(MISSED.as_bytes()) {
            let missed = if entry.number("n") == Some(u64::from(self.node)) {
                0
            } else {
                entry.number("m").unwrap_or(0)
            };
            remote.deliver_missed(topic, position, missed);
            return;
        }
        let except = entry.except();
        if let Some(message) = take_message(&mut entry) {
            remote.deliver(topic, position, message, except);
        } else {
            remote.deliver_missed(topic, position, 1);
        }
    }

    /// Writes the changes not taken yet, `first` and whatever else is
    /// queued, in one pipeline. Returns whether the set of streams to read
    /// changed.
    async fn write(&mut self, session: &mut Session, first: Option<Command>) -> Result<bool, Lost> {
        let mut pipe = redis::pipe();
        let mut steps = Vec::new();
        let mut changed = false;
        // Changes made before a command (following a topic, say, before
        // publishing to it) come before it.
        let mut queue = VecDeque::from(self.shared.take_changes());
        queue.extend(first);
        loop {
            let command = match queue.pop_front() {
                Some(command) => command,
                None if steps.len() >= BATCH => break,
                None => match self.commands.try_recv() {
                    Ok(command) => {
                        queue.extend(self.shared.take_changes());
                        queue.push_back(command);
                        continue;
                    }
                    Err(_) => break,
                },
            };
            match command {
                Command::Start(remote) => self.remote = Some(remote),
                Command::Watch(topic) => {
                    self.watched.entry(topic.clone()).or_insert(None);
                    self.place_command(&mut pipe, session, &topic);
                    steps.push(Step::Place(topic));
                    changed = true;
                }
                Command::Refork(topic) => {
                    if let Some(missed) = self.shared.take_fork(&topic) {
                        self.missed_notice(&mut pipe, session, &topic, missed);
                        steps.push(Step::Notice(topic.clone(), missed));
                    }
                    if self.watched.contains_key(&topic) {
                        self.place_command(&mut pipe, session, &topic);
                        steps.push(Step::Place(topic));
                        changed = true;
                    }
                }
                Command::Unwatch(topic) => {
                    changed |= self.watched.remove(&topic).is_some();
                }
                Command::Publish(publication) => {
                    (self.shared.queued).fetch_sub(crate::cost(&publication), Ordering::AcqRel);
                    self.publish_command(&mut pipe, session, publication, &mut steps);
                }
                Command::Presence(event) => {
                    let kind = match event.kind {
                        PresenceKind::Joined => "j",
                        PresenceKind::Left => "l",
                        _ => "u",
                    };
                    let members = self.keys.members(self.node);
                    for (field, value) in self.remember(&event) {
                        match &value {
                            Some(value) => pipe.cmd("HSET").arg(&members).arg(&field).arg(value),
                            None => pipe.cmd("HDEL").arg(&members).arg(&field),
                        };
                        pipe.ignore();
                        let value = value.unwrap_or_default();
                        self.presence_entry(
                            &mut pipe,
                            kind,
                            &[("f", field.as_bytes()), ("a", value.as_bytes())],
                        );
                        steps.push(Step::Plain);
                    }
                }
            }
        }
        self.execute(session, pipe, steps).await?;
        Ok(changed)
    }

    fn publish_command(
        &self,
        pipe: &mut Pipeline,
        session: &Session,
        publication: Publication,
        steps: &mut Vec<Step>,
    ) {
        match &publication {
            Publication::Broadcast {
                topic,
                message,
                except,
            } => {
                let (kind, payload) = wire::encode(message);
                self.script(pipe, &session.publish, topic)
                    .arg(self.config.history)
                    .arg(self.config.history_bytes)
                    .arg(self.config.ttl.as_secs())
                    .arg(self.node)
                    .arg(wire::except(except))
                    .arg(kind)
                    .arg(payload);
                steps.push(Step::Publish(publication));
            }
            Publication::Personal { to, message } => {
                let (kind, payload) = wire::encode(message);
                self.append(pipe, session, &self.keys.inbox(to.node()))
                    .arg("c")
                    .arg(to.get())
                    .arg("k")
                    .arg(kind)
                    .arg("m")
                    .arg(payload);
                steps.push(Step::Direct(publication));
            }
            Publication::User {
                user,
                message,
                except,
            } => {
                let (kind, payload) = wire::encode(message);
                self.append(pipe, session, &self.keys.users())
                    .arg("u")
                    .arg(user.as_bytes())
                    .arg("n")
                    .arg(self.node)
                    .arg("x")
                    .arg(wire::except(except))
                    .arg("k")
                    .arg(kind)
                    .arg("m")
                    .arg(payload);
                steps.push(Step::Direct(publication));
            }
            _ => {}
        }
    }

    /// Starts an `EVALSHA` of [`wire::APPEND`] on `stream`, up to the
    /// entry's fields.
    fn append<'p>(
        &self,
        pipe: &'p mut Pipeline,
        session: &Session,
        stream: &str,
    ) -> &'p mut Pipeline {
        pipe.cmd("EVALSHA")
            .arg(&session.append)
            .arg(2)
            .arg(stream)
            .arg(Keys::size_of(stream))
            .arg(INBOX_LENGTH)
            .arg(INBOX_BYTES)
            .arg(INBOX_TTL)
    }

    /// Starts an `EVALSHA` of `sha` on `topic`'s keys, with a fresh epoch
    /// as the first argument.
    fn script<'p>(&self, pipe: &'p mut Pipeline, sha: &str, topic: &Topic) -> &'p mut Pipeline {
        pipe.cmd("EVALSHA")
            .arg(sha)
            .arg(2)
            .arg(self.keys.meta(topic))
            .arg(self.keys.stream(topic))
            .arg(new_epoch())
    }

    fn missed_notice(&self, pipe: &mut Pipeline, session: &Session, topic: &Topic, missed: u64) {
        tracing::info!(%topic, missed, "telling the other nodes what they missed from this one");
        self.shared.counters.notices.fetch_add(1, Ordering::Relaxed);
        self.script(pipe, &session.publish, topic)
            .arg(self.config.history)
            .arg(self.config.history_bytes)
            .arg(self.config.ttl.as_secs())
            .arg(self.node)
            .arg(0)
            .arg(MISSED)
            .arg(missed);
    }

    /// Places `topic`, with its latest entries unless this node follows
    /// it already (then only a change of epoch matters, and it needs no
    /// history: the node reads the new epoch from its start).
    fn place_command(&self, pipe: &mut Pipeline, session: &Session, topic: &Topic) {
        let cursor = self.watched.get(topic).copied().flatten();
        let following = self.remote.as_ref().is_some_and(|r| r.is_following(topic));
        let tail = match cursor {
            Some(_) if following => 0,
            _ => self.config.history,
        };
        let (epoch, next) = cursor.map_or((0, 0), |c| (c.epoch, c.next));
        self.script(pipe, &session.place, topic)
            .arg(tail)
            .arg(self.config.ttl.as_secs())
            .arg(epoch)
            .arg(next);
    }

    /// Runs a pipeline and acts on its replies. If Redis is lost first,
    /// its publications are given back. Scripts Redis no longer knows are
    /// loaded again, and their steps run once more.
    async fn execute(
        &mut self,
        session: &mut Session,
        pipe: Pipeline,
        steps: Vec<Step>,
    ) -> Result<(), Lost> {
        let unknown_script = self.execute_once(session, pipe, steps).await?;
        if unknown_script.is_empty() {
            return Ok(());
        }
        tracing::warn!(
            steps = unknown_script.len(),
            "Redis lost the scripts (SCRIPT FLUSH or a restart); loading them again"
        );
        self.shared
            .counters
            .script_reloads
            .fetch_add(1, Ordering::Relaxed);
        (session.publish, session.place, session.append) =
            Self::load_scripts(&mut session.writer).await?;
        let mut pipe = redis::pipe();
        let mut steps = Vec::new();
        for step in unknown_script {
            match step {
                Step::Publish(publication) | Step::Direct(publication) => {
                    self.publish_command(&mut pipe, session, publication, &mut steps);
                }
                Step::Place(topic) => {
                    self.place_command(&mut pipe, session, &topic);
                    steps.push(Step::Place(topic));
                }
                Step::Notice(topic, missed) => {
                    self.missed_notice(&mut pipe, session, &topic, missed);
                    steps.push(Step::Notice(topic, missed));
                }
                other => self.not_done(other),
            }
        }
        // Lost again right away: given up like any other refusal.
        for step in self.execute_once(session, pipe, steps).await? {
            self.not_done(step);
        }
        Ok(())
    }

    /// [`execute`](Self::execute) without the retry: returns the steps
    /// whose script Redis did not know.
    async fn execute_once(
        &mut self,
        session: &mut Session,
        mut pipe: Pipeline,
        steps: Vec<Step>,
    ) -> Result<Vec<Step>, Lost> {
        let mut unknown_script = Vec::new();
        if steps.is_empty() {
            return Ok(unknown_script);
        }
        // One failed command must not fail the others.
        pipe.ignore_errors();
        let replies = match bounded(pipe.query_async::<Vec<Value>>(&mut session.writer)).await {
            Ok(replies) => replies,
            Err(lost) => {
                for step in steps {
                    self.not_done(step);
                }
                return Err(lost);
            }
        };
        let mut steps = steps.into_iter();
        for reply in replies {
            let Some(step) = steps.next() else { break };
            if let Value::ServerError(error) = &reply {
                if error.code() == "NOSCRIPT" {
                    unknown_script.push(step);
                    continue;
                }
                tracing::warn!(%error, "Redis refused a command");
                self.not_done(step);
                continue;
            }
            match step {
                Step::Place(topic) => {
                    let placed = wire::place(reply)?;
                    self.place(topic, placed);
                }
                Step::Publish(publication) => {
                    let counters = &self.shared.counters;
                    counters.published.fetch_add(1, Ordering::Relaxed);
                    // The epoch it was numbered in: another one than the
                    // one followed means the topic started over in Redis.
                    if let (Some(topic), Some(epoch)) =
                        (publication.topic(), wire::first_number(reply))
                    {
                        self.check_epoch(topic, epoch);
                    }
                }
                Step::Direct(..) | Step::Notice(..) | Step::Plain => {}
            }
        }
        // Steps without a reply (cannot happen with a complete pipeline).
        for step in steps {
            self.not_done(step);
        }
        Ok(unknown_script)
    }

    /// A step that did not happen: its publication is given back, its
    /// notice kept for later, its topic placed again later.
    fn not_done(&mut self, step: Step) {
        match step {
            Step::Publish(publication) => self.give_back(publication),
            Step::Direct(publication) => self.give_back(publication),
            Step::Notice(topic, missed) => self.shared.restore_fork(topic, missed),
            Step::Place(topic) => self.retry.push(topic),
            Step::Plain => {}
        }
    }

    /// Places `topic` again if Redis numbers it in another epoch than the
    /// one this node follows.
    fn check_epoch(&mut self, topic: &Topic, epoch: u64) {
        if let Some(Some(cursor)) = self.watched.get(topic) {
            if cursor.epoch != epoch {
                tracing::info!(%topic, "topic started over in Redis; placing it again");
                self.shared.refork(topic);
            }
        }
    }

    /// Checks that every topic followed is still in the epoch followed, and
    /// places again those whose placing failed.
    async fn check_epochs(&mut self, session: &mut Session) -> Result<(), Lost> {
        for topic in std::mem::take(&mut self.retry) {
            self.shared.refork(&topic);
        }
        let followed: Vec<(Topic, u64)> = (self.watched.iter())
            .filter_map(|(topic, cursor)| cursor.map(|c| (topic.clone(), c.epoch)))
            .collect();
        for chunk in followed.chunks(PLACE_BATCH) {
            let mut pipe = redis::pipe();
            for (topic, _) in chunk {
                pipe.cmd("HGET").arg(self.keys.meta(topic)).arg("epoch");
            }
            let epochs: Vec<Option<u64>> = bounded(pipe.query_async(&mut session.writer)).await?;
            for ((topic, followed), epoch) in chunk.iter().zip(epochs) {
                if epoch != Some(*followed) {
                    tracing::info!(%topic, "topic started over in Redis; placing it again");
                    self.shared.refork(topic);
                }
            }
        }
        Ok(())
    }

    /// Follows `topic` from where Redis says it stands: from this node's
    /// cursor if it follows the same epoch, from the start of a new epoch,
    /// or, for a topic new here, from the next message, with the stream's
    /// latest entries before that as history. (What this node publishes
    /// after asking is numbered after that: its members get every message
    /// that follows anything they were seen to do.)
    fn place(&mut self, topic: Topic, placed: wire::Placed) {
        let wire::Placed { epoch, next, tail } = placed;
        let Some(remote) = self.remote.clone() else {
            return;
        };
        let Some(slot) = self.watched.get_mut(&topic) else {
            // Unwatched meanwhile.
            return;
        };
        let following = remote.is_following(&topic);
        let start = match *slot {
            Some(cursor) if cursor.epoch == epoch => {
                if following {
                    return;
                }
                cursor.next
            }
            // The topic started over while this node followed it (Redis
            // lost it, or it expired): everything in the new epoch is news.
            Some(_) => 0,
            None => next,
        };
        *slot = Some(Cursor { epoch, next: start });
        let backfill = tail.into_iter().filter_map(|mut entry| {
            let offset = entry.offset()?;
            let except = entry.except();
            (offset < start && entry.number("e") == Some(epoch)).then_some(())?;
            Some((offset, take_message(&mut entry)?, except))
        });
        remote.rebase(
            &topic,
            Position {
                epoch,
                offset: start,
            },
            backfill,
        );
    }
}

/// The message of an entry, from its kind and payload fields.
fn take_message(entry: &mut Entry) -> Option<Message> {
    let kind = entry.take("k")?;
    let payload = entry.take("m")?;
    wire::decode(&kind, payload)
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
