//! The writing side of the link: what the hub publishes and follows,
//! written to Redis in pipelines, and what each reply means.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;

use hub::backplane::new_epoch;
use hub::{Placed, PresenceKind, Publication, Topic};
use redis::{Pipeline, Value};

use super::{bounded, Command, Link, Lost, Session, Step, INBOX_BYTES, INBOX_LENGTH, PLACE_BATCH};
use crate::wire::{self, Keys, MISSED};

/// Commands taken from the queue per pipeline.
const BATCH: usize = 256;
/// How long a personal or user message waits in its stream, in seconds.
const INBOX_TTL: u64 = 3600;

impl Link {
    /// Writes the changes not taken yet, `first` and whatever else is
    /// queued, in one pipeline. Returns whether the set of streams to read
    /// changed.
    pub(super) async fn write(
        &mut self,
        session: &mut Session,
        first: Option<Command>,
    ) -> Result<bool, Lost> {
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
                Command::Start(remote) => self.follow.remote = Some(remote),
                Command::Watch(topic) => {
                    self.follow.watched.entry(topic.clone()).or_insert(None);
                    self.place_command(&mut pipe, session, &topic);
                    steps.push(Step::Place(topic));
                    changed = true;
                }
                Command::Refork(topic) => {
                    if let Some(missed) = self.shared.take_fork(&topic) {
                        self.missed_notice(&mut pipe, session, &topic, missed);
                        steps.push(Step::Notice(topic.clone(), missed));
                    }
                    if self.follow.watched.contains_key(&topic) {
                        self.place_command(&mut pipe, session, &topic);
                        steps.push(Step::Place(topic));
                        changed = true;
                    }
                }
                Command::Unwatch(topic) => {
                    changed |= self.follow.watched.remove(&topic).is_some();
                }
                Command::Publish(publication, placed) => {
                    (self.shared.queued).fetch_sub(crate::cost(&publication), Ordering::AcqRel);
                    self.publish_command(&mut pipe, session, (publication, placed), &mut steps);
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
        (publication, placed): (Publication, Option<Placed>),
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
                steps.push(Step::Publish(publication, placed));
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
            Publication::Disconnect { user, code, reason } => {
                self.append(pipe, session, &self.keys.users())
                    .arg("u")
                    .arg(user.as_bytes())
                    .arg("n")
                    .arg(self.node)
                    .arg("d")
                    .arg(*code)
                    .arg("r")
                    .arg(reason.as_bytes());
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

    pub(super) fn missed_notice(
        &self,
        pipe: &mut Pipeline,
        session: &Session,
        topic: &Topic,
        missed: u64,
    ) {
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
    pub(super) fn place_command(&self, pipe: &mut Pipeline, session: &Session, topic: &Topic) {
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
        self.script(pipe, &session.place, topic)
            .arg(tail)
            .arg(self.config.ttl.as_secs())
            .arg(epoch)
            .arg(next);
    }

    /// Runs a pipeline and acts on its replies. If Redis is lost first,
    /// its publications are given back. Scripts Redis no longer knows are
    /// loaded again, and their steps run once more.
    pub(super) async fn execute(
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
                Step::Publish(publication, placed) => {
                    self.publish_command(&mut pipe, session, (publication, placed), &mut steps);
                }
                Step::Direct(publication) => {
                    self.publish_command(&mut pipe, session, (publication, None), &mut steps);
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
        let counters = &self.shared.counters;
        counters.pipelines.observe(steps.len() as u64);
        let sent = std::time::Instant::now();
        let replies = bounded(pipe.query_async::<Vec<Value>>(&mut session.writer)).await;
        let took = u64::try_from(sent.elapsed().as_nanos()).unwrap_or(u64::MAX);
        counters.round_trips.observe(took);
        let replies = match replies {
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
            Step::Publish(publication, _) => self.follow.give_back(publication),
            Step::Direct(publication) => self.follow.give_back(publication),
            Step::Notice(topic, missed) => self.shared.restore_fork(topic, missed),
            Step::Place(topic) => self.retry.push(topic),
            Step::Plain => {}
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
}
