//! One topic's fan-out channel, history and members.

use std::collections::hash_map::RandomState;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};

use tokio::sync::broadcast;

use crate::{ConnId, Message, Metadata, Topic};

/// What travels through a topic's channel.
#[derive(Clone, Debug)]
pub(crate) struct Envelope {
    pub(crate) message: Message,
    /// A connection that must not receive this message.
    pub(crate) except: Option<ConnId>,
    /// Place in the topic.
    pub(crate) offset: u64,
}

/// How much history each topic keeps.
#[derive(Clone, Copy, Debug)]
pub(crate) struct HistoryLimits {
    pub(crate) messages: usize,
    pub(crate) bytes: usize,
}

impl HistoryLimits {
    pub(crate) fn enabled(&self) -> bool {
        self.messages > 0 && self.bytes > 0
    }
}

/// A topic: its channel, history and members.
#[derive(Debug)]
pub(crate) struct Room {
    pub(crate) topic: Topic,
    pub(crate) epoch: u64,
    state: Mutex<RoomState>,
}

#[derive(Debug)]
struct RoomState {
    sender: broadcast::Sender<Envelope>,
    next_offset: u64,
    /// Consecutive offsets, oldest first, with the connection each one
    /// was not for.
    history: VecDeque<Stored>,
    history_bytes: usize,
    members: HashMap<ConnId, Metadata>,
}

/// A message kept in history.
#[derive(Clone, Debug)]
pub(crate) struct Stored {
    pub(crate) offset: u64,
    pub(crate) message: Message,
    pub(crate) except: Option<ConnId>,
}

/// A new subscription to a room: its receiver, the offset it starts at,
/// and what history had from the requested offset on.
pub(crate) struct Subscribed {
    pub(crate) receiver: broadcast::Receiver<Envelope>,
    pub(crate) next_offset: u64,
    pub(crate) backlog: Vec<Stored>,
    /// The first offset the subscriber wants (in this room's epoch).
    pub(crate) first: u64,
    /// Requested messages history no longer has (`None`: epoch changed).
    pub(crate) missed: Option<Option<u64>>,
}

/// What [`Room::history_range`] found.
pub(crate) struct Range {
    pub(crate) found: Vec<Stored>,
    pub(crate) missing: u64,
}

impl Room {
    pub(crate) fn new(topic: Topic, capacity: usize) -> Self {
        let (sender, _) = broadcast::channel(capacity);
        Self {
            topic,
            epoch: new_epoch(),
            state: Mutex::new(RoomState {
                sender,
                next_offset: 0,
                history: VecDeque::new(),
                history_bytes: 0,
                members: HashMap::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, RoomState> {
        // Every step leaves the state consistent; a panic elsewhere while
        // holding the lock does not invalidate it.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Numbers, records and sends a message; returns how many members it
    /// reached (for [`Topic::All`], how many connections are subscribed,
    /// before `except` is skipped).
    pub(crate) fn publish(
        &self,
        message: Message,
        except: Option<ConnId>,
        limits: HistoryLimits,
    ) -> usize {
        let mut state = self.lock();
        let offset = state.next_offset;
        state.next_offset += 1;
        if limits.enabled() {
            state.history_bytes += message.len();
            state.history.push_back(Stored {
                offset,
                message: message.clone(),
                except,
            });
            while state.history.len() > limits.messages || state.history_bytes > limits.bytes {
                match state.history.pop_front() {
                    Some(old) => state.history_bytes -= old.message.len(),
                    None => break,
                }
            }
        }
        // Numbered and sent under the lock: each channel carries its
        // messages in offset order.
        let envelope = Envelope {
            message,
            except,
            offset,
        };
        let receivers = state.sender.send(envelope).unwrap_or(0);
        match self.topic {
            Topic::All => receivers,
            Topic::Room(_) => {
                let skipped = except.is_some_and(|id| state.members.contains_key(&id));
                state.members.len() - usize::from(skipped)
            }
        }
    }

    /// Subscribes; with `from`, also returns the history from that position
    /// on. Adds `member` to the members when given.
    pub(crate) fn subscribe(
        &self,
        from: Option<(u64, u64)>,
        member: Option<(ConnId, Metadata)>,
    ) -> Subscribed {
        let mut state = self.lock();
        if let Some((id, metadata)) = member {
            state.members.insert(id, metadata);
        }
        let receiver = state.sender.subscribe();
        let next_offset = state.next_offset;
        let (backlog, first, missed) = match from {
            None => (Vec::new(), next_offset, None),
            Some((epoch, first)) => {
                let first = if epoch == self.epoch { first } else { 0 };
                let oldest = state
                    .history
                    .front()
                    .map_or(next_offset, |stored| stored.offset);
                let backlog: Vec<_> = state
                    .history
                    .iter()
                    .filter(|stored| stored.offset >= first)
                    .cloned()
                    .collect();
                let missed = if epoch != self.epoch {
                    Some(None)
                } else if first < oldest {
                    Some(Some(oldest - first))
                } else {
                    None
                };
                (backlog, first, missed)
            }
        };
        Subscribed {
            receiver,
            next_offset,
            backlog,
            first,
            missed,
        }
    }

    /// The messages with offsets in `from..to` that history still has, and
    /// how many of them it no longer has.
    pub(crate) fn history_range(&self, from: u64, to: u64) -> Range {
        let state = self.lock();
        let found: Vec<_> = state
            .history
            .iter()
            .filter(|stored| (from..to).contains(&stored.offset))
            .cloned()
            .collect();
        let missing = (to.saturating_sub(from)).saturating_sub(found.len() as u64);
        Range { found, missing }
    }

    /// Removes a member; returns how many remain, or `None` if it was not one.
    pub(crate) fn remove_member(&self, id: ConnId) -> Option<usize> {
        let mut state = self.lock();
        state.members.remove(&id).map(|_| state.members.len())
    }

    pub(crate) fn set_member(&self, id: ConnId, metadata: Metadata) {
        if let Some(slot) = self.lock().members.get_mut(&id) {
            *slot = metadata;
        }
    }

    pub(crate) fn members(&self) -> Vec<(ConnId, Metadata)> {
        let mut members: Vec<_> = self
            .lock()
            .members
            .iter()
            .map(|(id, metadata)| (*id, metadata.clone()))
            .collect();
        members.sort_by_key(|(id, _)| *id);
        members
    }

    pub(crate) fn member_count(&self) -> usize {
        self.lock().members.len()
    }

    /// The next offset and the history's size in bytes.
    pub(crate) fn position(&self) -> (u64, usize) {
        let state = self.lock();
        (state.next_offset, state.history_bytes)
    }
}

/// An epoch unlikely to repeat across restarts: process-random hash of the
/// time and a counter. Never zero.
fn new_epoch() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    hasher.finish().max(1)
}
