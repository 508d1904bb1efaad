//! One topic's fan-out channel, history and members.

use std::collections::{HashSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{broadcast, Notify};

use crate::builder::SlowConsumer;
use crate::history::{HistoryBudget, HistoryLimits, Kept};
use crate::topic::new_epoch;
use crate::{Broadcast, ConnId, Except, HistoryPage, Message, Position, Topic};

/// What travels through a topic's channel, and what its history keeps.
#[derive(Clone, Debug)]
pub(crate) struct Envelope {
    pub(crate) payload: Payload,
    /// Connections that must not receive this message.
    pub(crate) except: Except,
    /// Place in the topic.
    pub(crate) epoch: u64,
    pub(crate) offset: u64,
}

/// What an offset of a topic holds.
#[derive(Clone, Debug)]
pub(crate) enum Payload {
    /// A message, as every connection it reaches shares it.
    Message(Broadcast),
    /// A notice from the backplane: this many messages published elsewhere
    /// never reached this topic's stream (0: nothing to tell here).
    Missed(u64),
    /// Not a message: the backplane placed the room, and its next message
    /// will have this envelope's epoch and offset. Never in history.
    Placed,
}

impl Payload {
    fn len(&self) -> usize {
        match self {
            Self::Message(broadcast) => broadcast.message().len(),
            Self::Missed(_) | Self::Placed => 0,
        }
    }
}

/// What the backplane places at an offset of a topic.
#[derive(Debug)]
pub(crate) enum Placing {
    Message(Message),
    /// See [`Payload::Missed`].
    Missed(u64),
}

/// The epoch of a mirrored room whose position the backplane has not
/// given yet. Real epochs are never zero.
pub(crate) const PENDING: u64 = 0;

/// How many slots a topic's channel has at first, and how many it may
/// grow to.
///
/// Each slot costs about 100 bytes, allocated up front. When history backs
/// a room, a reader further behind than the channel is refilled from
/// history, in order, on the same connection, so the channel only needs to
/// cover the readers that keep up: it starts at 2 slots and doubles, up to
/// 16, each time a reader falls behind it. A quiet room's channel costs a
/// few hundred bytes, against about 100 KB for the default capacity.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Window {
    first: usize,
    most: usize,
}

impl Window {
    const FIRST: usize = 2;
    const MOST: usize = 16;

    /// Always `capacity` slots.
    pub(crate) fn fixed(capacity: usize) -> Self {
        Self {
            first: capacity,
            most: capacity,
        }
    }

    /// The window of a room whose readers may fall `capacity` messages
    /// behind: small when history reaches at least that far back and a
    /// reader behind the channel is repaired from it. Under the other
    /// policies falling behind the channel is what they act on, so it keeps
    /// `capacity` slots.
    pub(crate) fn live(capacity: usize, history: HistoryLimits, policy: SlowConsumer) -> Self {
        if policy == SlowConsumer::Repair && history.enabled() && history.messages >= capacity {
            Self {
                first: capacity.min(Self::FIRST),
                most: capacity.min(Self::MOST),
            }
        } else {
            Self::fixed(capacity)
        }
    }
}

/// A topic: its channel, history and members.
#[derive(Debug)]
pub(crate) struct Room {
    pub(crate) topic: Topic,
    state: Mutex<RoomState>,
    /// Under a lock of its own (taken after `state` when both are):
    /// readers refilling from it do not wait while a publisher, holding
    /// `state`, wakes the channel's readers.
    history: Mutex<History>,
    /// Woken when the backplane places the room.
    placed: Notify,
    /// The [`HistoryBudget`]'s clock when the topic was last used
    /// (published to or subscribed).
    last_used: AtomicU64,
}

#[derive(Debug)]
struct RoomState {
    sender: broadcast::Sender<Envelope>,
    /// The channel's slots now, and the most it may have.
    slots: usize,
    most_slots: usize,
    /// Counts the channel's replacements: a receiver of an older one is
    /// closed once it has read what that channel carried.
    generation: u64,
    epoch: u64,
    /// Offsets come from a backplane ([`Room::publish_at`]) rather than
    /// from this room ([`Room::publish`]).
    mirrored: bool,
    next_offset: u64,
    /// Where the current epoch was first placed: a member that joined
    /// before it was placed receives everything from there on.
    placed_from: u64,
    /// What rendered forms of its messages count toward.
    budget: Arc<HistoryBudget>,
    /// The members' ids; their metadata has one owner, the hub's
    /// registry.
    members: HashSet<ConnId>,
}

/// A topic's recent messages: increasing offsets of the current epoch,
/// oldest first.
#[derive(Debug)]
struct History {
    messages: VecDeque<Envelope>,
    bytes: usize,
    /// Counts `bytes` hub-wide.
    budget: Arc<HistoryBudget>,
}

/// A new subscription to a room: its receiver, the offset it starts at,
/// and what it asked history for.
pub(crate) struct Subscribed {
    pub(crate) receiver: broadcast::Receiver<Envelope>,
    /// The channel's generation `receiver` belongs to.
    pub(crate) generation: u64,
    /// The epoch the subscriber follows ([`PENDING`] if not known yet).
    pub(crate) epoch: u64,
    /// The room has no place in its backplane's stream yet.
    pub(crate) pending: bool,
    pub(crate) next_offset: u64,
    /// Where the replay from history starts (in this room's epoch):
    /// offsets `first..next_offset` are replayed, as history still has
    /// them when they are read.
    pub(crate) first: u64,
    /// How many messages history held from `first` on.
    pub(crate) replayed: u64,
    /// Requested messages history no longer has (`None`: epoch changed).
    pub(crate) missed: Option<Option<u64>>,
}

/// Where a [`Room::history_chunk`] ended.
pub(crate) struct Chunk {
    /// The offset after the chunk: where the next one starts.
    pub(crate) next: u64,
    /// Offsets of the chunk history no longer has.
    pub(crate) missing: u64,
}

impl Room {
    /// A room that numbers its own messages, or, `mirrored`, one whose
    /// offsets a backplane gives ([`PENDING`] until it does).
    pub(crate) fn new(
        topic: Topic,
        window: Window,
        mirrored: bool,
        budget: Arc<HistoryBudget>,
    ) -> Self {
        let (sender, _) = broadcast::channel(window.first);
        let last_used = AtomicU64::new(budget.tick());
        Self {
            topic,
            state: Mutex::new(RoomState {
                sender,
                slots: window.first,
                most_slots: window.most,
                generation: 0,
                epoch: if mirrored { PENDING } else { new_epoch() },
                mirrored,
                next_offset: 0,
                placed_from: 0,
                budget: Arc::clone(&budget),
                members: HashSet::new(),
            }),
            history: Mutex::new(History {
                messages: VecDeque::new(),
                bytes: 0,
                budget,
            }),
            placed: Notify::new(),
            last_used,
        }
    }

    fn used(&self, state: &RoomState) {
        self.last_used.store(state.budget.tick(), Ordering::Relaxed);
    }

    /// Waits until the room has a place in its backplane's stream (at
    /// once for a room that numbers its own messages).
    pub(crate) async fn until_placed(&self) {
        loop {
            let placed = self.placed.notified();
            tokio::pin!(placed);
            // Registered before the check: a placing in between wakes it.
            placed.as_mut().enable();
            if self.lock().epoch != PENDING {
                return;
            }
            placed.await;
        }
    }

    fn lock(&self) -> MutexGuard<'_, RoomState> {
        // Every step leaves the state consistent; a panic elsewhere while
        // holding the lock does not invalidate it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    fn history(&self) -> MutexGuard<'_, History> {
        lock_history(&self.history)
    }

    /// Numbers, records and sends a message; returns how many members it
    /// reached (for [`Topic::All`], how many connections are subscribed,
    /// before `except` is skipped), and where it was placed.
    ///
    /// A mirrored room numbering a message itself (its backplane is out of
    /// reach) forks: it starts an epoch of its own, which its members see
    /// as a [`Resync`](crate::Event::Resync), until [`rebase`](Self::rebase).
    pub(crate) fn publish(
        &self,
        message: Message,
        except: &Except,
        limits: HistoryLimits,
    ) -> (usize, Position) {
        let mut state = self.lock();
        self.used(&state);
        if state.mirrored {
            state.mirrored = false;
            state.epoch = new_epoch();
            state.next_offset = 0;
            state.placed_from = 0;
            self.history().clear();
        }
        let offset = state.next_offset;
        let placing = Placing::Message(message);
        let position = Position {
            epoch: state.epoch,
            offset,
        };
        let reached = state.send(&self.topic, &self.history, placing, except, offset, limits);
        (reached, position)
    }

    /// Records and sends what the backplane placed at `epoch`/`offset`.
    /// Offsets already seen are skipped; a jump is a gap the members
    /// repair from history or report. Returns how many members it reached,
    /// as [`publish`](Self::publish) does; 0 if it was not for this room's
    /// current epoch.
    pub(crate) fn publish_at(
        &self,
        epoch: u64,
        offset: u64,
        placing: Placing,
        except: &Except,
        limits: HistoryLimits,
    ) -> usize {
        let mut state = self.lock();
        if !state.mirrored || state.epoch != epoch || offset < state.next_offset {
            return 0;
        }
        self.used(&state);
        state.send(&self.topic, &self.history, placing, except, offset, limits)
    }

    /// Follows the backplane from `epoch`/`next` on, with `backfill` (its
    /// messages before `next`, oldest first) as history. Members see the
    /// change of epoch, if any, with the next message.
    pub(crate) fn rebase(
        &self,
        epoch: u64,
        next: u64,
        backfill: impl IntoIterator<Item = (u64, Message, Except)>,
        limits: HistoryLimits,
    ) {
        let mut state = self.lock();
        state.mirrored = true;
        if state.epoch != epoch {
            state.placed_from = next;
        }
        state.epoch = epoch;
        state.next_offset = next;
        let mut history = self.history();
        history.clear();
        let backfill = backfill.into_iter().filter(|_| limits.enabled());
        for (offset, message, except) in backfill {
            if offset >= next || (history.messages.back()).is_some_and(|last| last.offset >= offset)
            {
                continue;
            }
            let budget = Arc::clone(&state.budget);
            let broadcast = Broadcast::new(self.topic.clone(), (epoch, offset), message, budget);
            history.remember(
                &Envelope {
                    payload: Payload::Message(broadcast),
                    except,
                    epoch,
                    offset,
                },
                limits,
            );
        }
        drop(history);
        // Members learn the place now, not with the next message: one that
        // resumed before the room was placed gets its replay at once.
        let _ = state.sender.send(Envelope {
            payload: Payload::Placed,
            except: Except::none(),
            epoch,
            offset: next,
        });
        drop(state);
        self.placed.notify_waiters();
    }

    /// Where epoch `epoch` was first placed, if it is the room's epoch: a
    /// subscriber that joined before the room was placed, and did not see
    /// the place go by, starts there.
    pub(crate) fn placed_from(&self, epoch: u64) -> Option<u64> {
        let state = self.lock();
        (state.epoch == epoch).then_some(state.placed_from)
    }

    /// Whether this room follows a backplane (rather than a fork of its own).
    pub(crate) fn is_mirrored(&self) -> bool {
        self.lock().mirrored
    }

    /// Subscribes; with `from`, also returns the history from that position
    /// on. Adds `member` to the members when given.
    pub(crate) fn subscribe(&self, from: Option<(u64, u64)>, member: Option<ConnId>) -> Subscribed {
        let mut state = self.lock();
        self.used(&state);
        if let Some(id) = member {
            state.members.insert(id);
        }
        let receiver = state.sender.subscribe();
        let generation = state.generation;
        let next_offset = state.next_offset;
        if state.epoch == PENDING {
            // The backplane has not placed this room yet: a resuming
            // subscriber keeps its place and meets the first message (and
            // the history that came with the room's position) with it.
            let (epoch, next) = from.unwrap_or((PENDING, 0));
            return Subscribed {
                receiver,
                generation,
                epoch,
                next_offset: next,
                first: next,
                replayed: 0,
                missed: None,
                pending: true,
            };
        }
        let (first, replayed, missed) = match from {
            None => (next_offset, 0, None),
            Some((epoch, first)) => {
                let history = self.history();
                let oldest = (history.messages.front()).map_or(next_offset, |stored| stored.offset);
                let (first, missed) = if epoch != state.epoch {
                    (oldest, Some(None))
                } else if first < oldest {
                    (oldest, Some(Some(oldest - first)))
                } else if state.mirrored {
                    // The backplane numbers: the client may have seen, on
                    // a node ahead of this one, offsets not read here yet.
                    (first, None)
                } else {
                    (first.min(next_offset), None)
                };
                let start = (history.messages).partition_point(|stored| stored.offset < first);
                (first, (history.messages.len() - start) as u64, missed)
            }
        };
        Subscribed {
            receiver,
            generation,
            epoch: state.epoch,
            next_offset,
            first,
            replayed,
            missed,
            pending: false,
        }
    }

    /// A receiver of the current channel, for a member whose receiver
    /// belonged to a replaced one: it and its generation, the epoch, and the
    /// offset its first message will have.
    pub(crate) fn resubscribe(&self) -> (broadcast::Receiver<Envelope>, u64, u64, u64) {
        let state = self.lock();
        let receiver = state.sender.subscribe();
        (receiver, state.generation, state.epoch, state.next_offset)
    }

    /// A reader of channel `generation` fell behind it: unless the channel
    /// was replaced since, or is as large as it may be, it is replaced by
    /// one twice its size. Its readers finish reading the old one, then
    /// [`resubscribe`](Self::resubscribe) and refill from history what
    /// went by in between.
    pub(crate) fn widen(&self, generation: u64) {
        let mut state = self.lock();
        if state.generation != generation || state.slots >= state.most_slots {
            return;
        }
        state.slots = (state.slots * 2).min(state.most_slots);
        state.sender = broadcast::channel(state.slots).0;
        state.generation += 1;
    }

    /// Hands `each` the history from offset `from` up to `to` (excluded),
    /// oldest first, at most `max` messages of it (under the room's lock:
    /// `each` only takes what it is given). Returns where the chunk ended,
    /// and how many offsets of that stretch history no longer has.
    pub(crate) fn history_chunk(
        &self,
        (from, to): (u64, u64),
        max: usize,
        mut each: impl FnMut(&Envelope),
    ) -> Chunk {
        if from >= to {
            return Chunk {
                next: to,
                missing: 0,
            };
        }
        let history = self.history();
        // Offsets increase along history.
        let start = (history.messages).partition_point(|stored| stored.offset < from);
        let mut found = 0;
        let mut last = from;
        for stored in history.messages.range(start..) {
            if stored.offset >= to || found == max {
                break;
            }
            each(stored);
            found += 1;
            last = stored.offset;
        }
        let next = if found == max { last + 1 } else { to };
        Chunk {
            next,
            missing: (next - from).saturating_sub(found as u64),
        }
    }

    /// Up to `limit` lines of history from offset `from` on.
    pub(crate) fn page(&self, from: u64, limit: usize) -> HistoryPage {
        let (epoch, end, _) = self.position();
        let from = from.min(end);
        let (mut lines, mut noticed) = (Vec::new(), 0);
        let chunk = self.history_chunk((from, end), limit, |stored| match &stored.payload {
            Payload::Message(line) => lines.push(line.clone()),
            Payload::Missed(missed) => noticed += missed,
            Payload::Placed => {}
        });
        HistoryPage {
            epoch,
            lines,
            missed: chunk.missing + noticed,
            next: chunk.next,
            end,
        }
    }

    /// Removes a member; returns how many remain, or `None` if it was not one.
    pub(crate) fn remove_member(&self, id: ConnId) -> Option<usize> {
        let mut state = self.lock();
        state.members.remove(&id).then(|| state.members.len())
    }

    /// The members' ids, in order.
    pub(crate) fn member_ids(&self) -> Vec<ConnId> {
        let mut members: Vec<_> = self.lock().members.iter().copied().collect();
        members.sort_unstable();
        members
    }

    /// How many members a broadcast skipping `except` reaches.
    pub(crate) fn reach(&self, except: &Except) -> usize {
        self.lock().reach(except)
    }

    pub(crate) fn member_count(&self) -> usize {
        self.lock().members.len()
    }

    /// The epoch, the next offset and the history's size in bytes.
    pub(crate) fn position(&self) -> (u64, u64, usize) {
        let (epoch, next) = {
            let state = self.lock();
            (state.epoch, state.next_offset)
        };
        (epoch, next, self.history().bytes)
    }
}

impl Kept for Room {
    fn last_used(&self) -> u64 {
        self.last_used.load(Ordering::Relaxed)
    }

    fn drop_history(&self, bytes: usize) {
        let mut history = self.history();
        let mut freed = 0;
        while freed < bytes {
            match history.drop_oldest() {
                Some(len) => freed += len,
                None => break,
            }
        }
        if history.messages.is_empty() {
            // Give the storage back too.
            history.messages = VecDeque::new();
        }
    }
}

impl RoomState {
    /// Records and sends the message at `offset`, the next one from now on.
    fn send(
        &mut self,
        topic: &Topic,
        history: &Mutex<History>,
        placing: Placing,
        except: &Except,
        offset: u64,
        limits: HistoryLimits,
    ) -> usize {
        self.next_offset = offset + 1;
        let payload = match placing {
            Placing::Message(message) => {
                let budget = Arc::clone(&self.budget);
                let place = (self.epoch, offset);
                Payload::Message(Broadcast::new(topic.clone(), place, message, budget))
            }
            Placing::Missed(missed) => Payload::Missed(missed),
        };
        let envelope = Envelope {
            payload,
            except: except.clone(),
            epoch: self.epoch,
            offset,
        };
        if limits.enabled() {
            lock_history(history).remember(&envelope, limits);
        }
        // Numbered and sent under the lock: each channel carries its
        // messages in offset order.
        let receivers = self.sender.send(envelope).unwrap_or(0);
        if *topic == Topic::All {
            receivers
        } else {
            self.reach(except)
        }
    }

    /// How many members a broadcast skipping `except` reaches.
    fn reach(&self, except: &Except) -> usize {
        let skipped = except.iter().filter(|id| self.members.contains(id));
        self.members.len() - skipped.count()
    }
}

fn lock_history(history: &Mutex<History>) -> MutexGuard<'_, History> {
    // Every step leaves it consistent, as the room's state.
    history.lock().unwrap_or_else(PoisonError::into_inner)
}

impl History {
    /// Keeps `envelope`, the newest message, dropping the oldest past
    /// `limits`.
    fn remember(&mut self, envelope: &Envelope, limits: HistoryLimits) {
        let len = envelope.payload.len();
        self.bytes += len;
        self.budget.add(len);
        self.messages.push_back(envelope.clone());
        while self.messages.len() > limits.messages || self.bytes > limits.bytes {
            if self.drop_oldest().is_none() {
                break;
            }
        }
    }

    /// Drops the oldest message; returns its size, or `None` if there was
    /// none.
    fn drop_oldest(&mut self) -> Option<usize> {
        let len = self.messages.pop_front()?.payload.len();
        self.bytes -= len;
        self.budget.remove(len);
        Some(len)
    }

    fn clear(&mut self) {
        self.budget.remove(self.bytes);
        self.messages = VecDeque::new();
        self.bytes = 0;
    }
}

impl Drop for History {
    fn drop(&mut self) {
        self.clear();
    }
}
