//! The writing side of the link: what the hub publishes and follows,
//! written to Redis in pipelines, and what each reply means.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use hub::backplane::new_epoch;
use hub::{Placed, PresenceKind, Publication, Topic};
use redis::{Pipeline, Value};

use super::batch::{Batch, Group};
use super::{
    bounded, Command, Link, Lost, Session, Step, INBOX_BYTES, INBOX_LENGTH, INBOX_TTL, PLACE_BATCH,
};
use crate::wire::{self, Keys, MISSED};

/// Commands taken from the queue per batch.
const BATCH: usize = 256;

impl Link {
    /// Writes the changes not taken yet, `first` and whatever else is
    /// queued, in one batch, and wakes the readers whose set of streams
    /// changed.
    pub(super) async fn write(
        &mut self,
        session: &mut Session,
        first: Option<Command>,
    ) -> Result<(), Lost> {
        let mut batch = session.batch();
        // Changes made before a command (following a topic, say, before
        // publishing to it) come before it.
        let mut queue = VecDeque::from(self.shared.take_changes());
        queue.extend(first);
        loop {
            let command = match queue.pop_front() {
                Some(command) => command,
                None if batch.steps() >= BATCH => break,
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
                Command::Start(remote) => self.follow.remote = Some(remote),
                Command::Watch(topic) => {
                    self.follow.watched.entry(topic.clone()).or_insert(None);
                    self.place_command(&mut batch, session, &topic);
                    self.stale.insert(self.keys.partition(&topic));
                }
                Command::Refork(topic) => {
                    if let Some(missed) = self.shared.take_fork(&topic) {
                        self.missed_notice(&mut batch, session, &topic, missed);
                    }
                    if self.follow.watched.contains_key(&topic) {
                        self.place_command(&mut batch, session, &topic);
                        self.stale.insert(self.keys.partition(&topic));
                    }
                }
                Command::Unwatch(topic) => {
                    if self.follow.watched.remove(&topic).is_some() {
                        self.stale.insert(self.keys.partition(&topic));
                    }
                }
                Command::Publish(publication, placed) => {
                    (self.shared.queued).fetch_sub(crate::cost(&publication), Ordering::AcqRel);
                    self.publish_command(&mut batch, session, (publication, placed));
                }
                Command::Presence(event) => {
                    let kind = match event.kind {
                        PresenceKind::Joined => "j",
                        PresenceKind::Left => "l",
                        _ => "u",
                    };
                    let members = self.keys.members(self.node);
                    for (topic, field, value) in self.remember(&event) {
                        let pipe = &mut batch.on(&members).pipe;
                        match &value {
                            Some(value) => pipe.cmd("HSET").arg(&members).arg(&field).arg(value),
                            None => pipe.cmd("HDEL").arg(&members).arg(&field),
                        };
                        pipe.ignore();
                        let value = value.unwrap_or_default();
                        self.presence_entry(
                            &mut batch,
                            self.keys.partition(&topic),
                            kind,
                            &[("f", field.as_bytes()), ("a", value.as_bytes())],
                        );
                    }
                }
            }
        }
        self.ring(&mut batch, session);
        self.execute(session, batch).await
    }

    fn publish_command(
        &self,
        batch: &mut Batch,
        session: &Session,
        (publication, placed): (Publication, Option<Placed>),
    ) {
        match &publication {
            Publication::Broadcast {
                topic,
                message,
                except,
            } => {
                let (kind, payload) = wire::encode(message);
                let group = batch.on(&self.keys.meta(topic));
                self.script(&mut group.pipe, &session.publish, topic)
                    .arg(self.config.history)
                    .arg(self.config.history_bytes)
                    .arg(self.config.ttl.as_secs())
                    .arg(self.node)
                    .arg(wire::except(except))
                    .arg(kind)
                    .arg(payload)
                    .arg(session.margin);
                group.steps.push(Step::Publish(publication, placed));
            }
            Publication::Personal { to, message } => {
                let (kind, payload) = wire::encode(message);
                let group = batch.on(&self.keys.inbox(to.node()));
                self.append(&mut group.pipe, session, &self.keys.inbox(to.node()))
                    .arg("c")
                    .arg(to.get())
                    .arg("k")
                    .arg(kind)
                    .arg("m")
                    .arg(payload);
                group.steps.push(Step::Direct(publication));
            }
            Publication::Disconnect { user, code, reason } => {
                let users = self.keys.users(self.keys.user_partition(user));
                let group = batch.on(&users);
                self.append(&mut group.pipe, session, &users)
                    .arg("u")
                    .arg(user.as_bytes())
                    .arg("n")
                    .arg(self.node)
                    .arg("d")
                    .arg(*code)
                    .arg("r")
                    .arg(reason.as_bytes());
                group.steps.push(Step::Direct(publication));
            }
            Publication::User {
                user,
                message,
                except,
            } => {
                let (kind, payload) = wire::encode(message);
                let users = self.keys.users(self.keys.user_partition(user));
                let group = batch.on(&users);
                self.append(&mut group.pipe, session, &users)
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
                group.steps.push(Step::Direct(publication));
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

    pub(super) fn missed_notice(
        &self,
        batch: &mut Batch,
        session: &Session,
        topic: &Topic,
        missed: u64,
    ) {
        tracing::info!(%topic, missed, "telling the other nodes what they missed from this one");
        self.shared.counters.notices.fetch_add(1, Ordering::Relaxed);
        let group = batch.on(&self.keys.meta(topic));
        self.script(&mut group.pipe, &session.publish, topic)
            .arg(self.config.history)
            .arg(self.config.history_bytes)
            .arg(self.config.ttl.as_secs())
            .arg(self.node)
            .arg(0)
            .arg(MISSED)
            .arg(missed)
            .arg(session.margin);
        group.steps.push(Step::Notice(topic.clone(), missed));
    }

    /// Places `topic`, with its latest entries unless this node follows
    /// it already (then only a change of epoch matters, and it needs no
    /// history: the node reads the new epoch from its start).
    pub(super) fn place_command(&self, batch: &mut Batch, session: &Session, topic: &Topic) {
        let cursor = self.follow.watched.get(topic).copied().flatten();
        let following = self
            .follow
            .remote
            .as_ref()
            .is_some_and(|r| r.is_following(topic));
        let tail = match cursor {
            Some(_) if following => 0,
            _ => self.config.history,
        };
        let (epoch, next) = cursor.map_or((0, 0), |c| (c.epoch, c.next));
        let group = batch.on(&self.keys.meta(topic));
        self.script(&mut group.pipe, &session.place, topic)
            .arg(tail)
            .arg(self.config.ttl.as_secs())
            .arg(epoch)
            .arg(next)
            .arg(session.margin);
        group.steps.push(Step::Place(topic.clone()));
    }

    /// Runs a batch and acts on its replies. If Redis is lost first, its
    /// publications are given back. Scripts Redis no longer knows are
    /// loaded again, and their steps run once more.
    pub(super) async fn execute(
        &mut self,
        session: &mut Session,
        batch: Batch,
    ) -> Result<(), Lost> {
        let unknown_script = self.execute_once(session, batch).await?;
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
        let mut batch = session.batch();
        for step in unknown_script {
            match step {
                Step::Publish(publication, placed) => {
                    self.publish_command(&mut batch, session, (publication, placed));
                }
                Step::Direct(publication) => {
                    self.publish_command(&mut batch, session, (publication, None));
                }
                Step::Place(topic) => {
                    self.place_command(&mut batch, session, &topic);
                    // Its reader may have read on without it meanwhile.
                    self.stale.insert(self.keys.partition(&topic));
                }
                Step::Notice(topic, missed) => {
                    self.missed_notice(&mut batch, session, &topic, missed);
                }
                other => self.not_done(other),
            }
        }
        self.ring(&mut batch, session);
        // Lost again right away: given up like any other refusal.
        for step in self.execute_once(session, batch).await? {
            self.not_done(step);
        }
        Ok(())
    }

    /// [`execute`](Self::execute) without the retry: returns the steps
    /// whose script Redis did not know. The groups (one per slot on a
    /// cluster) go at once; what one of them did is acted on even if
    /// another failed.
    async fn execute_once(
        &mut self,
        session: &mut Session,
        batch: Batch,
    ) -> Result<Vec<Step>, Lost> {
        let mut groups = batch.into_groups();
        groups.retain(|group| !group.pipe.is_empty());
        if groups.is_empty() {
            return Ok(Vec::new());
        }
        let sent = std::time::Instant::now();
        let writer = &session.writer;
        let replies = futures_util::future::join_all(groups.iter_mut().map(|group| {
            // One failed command must not fail the others.
            group.pipe.ignore_errors();
            let pipe = &group.pipe;
            let mut writer = writer.clone();
            async move { bounded(pipe.query_async::<Vec<Value>>(&mut writer)).await }
        }))
        .await;
        let took = u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX);
        let mut unknown_script = Vec::new();
        let mut lost = None;
        for (Group { steps, .. }, replies) in groups.into_iter().zip(replies) {
            let counters = &self.shared.counters;
            counters.pipelines.observe(steps.len() as u64);
            counters.round_trips.observe(took);
            match replies {
                Ok(replies) => self.act(steps, replies, &mut unknown_script)?,
                Err(error) => {
                    for step in steps {
                        self.not_done(step);
                    }
                    lost = Some(error);
                }
            }
        }
        match lost {
            Some(lost) => Err(lost),
            None => Ok(unknown_script),
        }
    }

    /// Acts on the replies of one pipeline, step by step; keeps the steps
    /// whose script Redis did not know.
    fn act(
        &mut self,
        steps: Vec<Step>,
        replies: Vec<Value>,
        unknown_script: &mut Vec<Step>,
    ) -> Result<(), Lost> {
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
                    self.follow.place(topic, placed);
                }
                Step::Publish(publication, placed) => {
                    let counters = &self.shared.counters;
                    counters.published.fetch_add(1, Ordering::Relaxed);
                    let position = wire::position(reply);
                    // The epoch it was numbered in: another one than the
                    // one followed means the topic started over in Redis.
                    if let (Some(topic), Some(position)) = (publication.topic(), position) {
                        self.follow.check_epoch(topic, position.epoch);
                    }
                    if let (Some(placed), Some(position)) = (placed, position) {
                        placed.report(position);
                    }
                }
                Step::Epoch(topic, followed) => {
                    if wire::number(reply).ok() != Some(followed) {
                        tracing::info!(%topic, "topic started over in Redis; placing it again");
                        self.shared.refork(&topic);
                    }
                }
                Step::Direct(..) | Step::Notice(..) => {}
            }
        }
        // Steps without a reply (cannot happen with a complete pipeline).
        for step in steps {
            self.not_done(step);
        }
        Ok(())
    }

    /// A step that did not happen: its publication is given back, its
    /// notice kept for later, its topic placed again later.
    fn not_done(&mut self, step: Step) {
        match step {
            Step::Publish(publication, _) => self.follow.give_back(publication),
            Step::Direct(publication) => self.follow.give_back(publication),
            Step::Notice(topic, missed) => self.shared.restore_fork(topic, missed),
            Step::Place(topic) => self.retry.push(topic),
            Step::Epoch(..) => {}
        }
    }

    /// Checks that every topic followed is still in the epoch followed, and
    /// places again those whose placing failed.
    pub(super) async fn check_epochs(&mut self, session: &mut Session) -> Result<(), Lost> {
        for topic in std::mem::take(&mut self.retry) {
            self.shared.refork(&topic);
        }
        let followed: Vec<(Topic, u64)> = (self.follow.watched.iter())
            .filter_map(|(topic, cursor)| cursor.map(|c| (topic.clone(), c.epoch)))
            .collect();
        for chunk in followed.chunks(PLACE_BATCH) {
            let mut batch = session.batch();
            for (topic, epoch) in chunk {
                let meta = self.keys.meta(topic);
                let group = batch.on(&meta);
                group.pipe.cmd("HGET").arg(&meta).arg("epoch");
                group.steps.push(Step::Epoch(topic.clone(), *epoch));
            }
            self.execute(session, batch).await?;
        }
        Ok(())
    }
}
