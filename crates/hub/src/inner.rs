//! What every handle of a hub, and every connection, shares: the topics,
//! the registry, the budgets and counters, and the backplane. Publishing
//! and personal messages are here; a connection's life (registering,
//! rooms, removal) is in `lifecycle.rs`, what the backplane delivers in
//! `bridge.rs`.

use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use tokio::sync::{broadcast, oneshot};

use crate::backplane::{Backplane, Placed, Publication};
use crate::budget::Budget;
use crate::builder::{Builder, SlowConsumer};
use crate::error::{PublishError, SendError};
use crate::history::{HistoryBudget, HistoryLimits};
use crate::id::{LOCAL_BITS, MAX_NODE};
use crate::personal::Refused;
use crate::presence::{PresenceEvent, PresenceKind};
use crate::registry::Registry;
use crate::room::{Room, Window};
use crate::rooms::Rooms;
use crate::stats::Counters;
use crate::{ConnId, Except, Message, Metadata, Position, RoomName, Topic};

/// The bits of a connection id that count this node's connections.
pub(crate) const LOCAL_MASK: u64 = (1 << LOCAL_BITS) - 1;

/// Presence events kept for slow subscribers.
const PRESENCE_CAPACITY: usize = 1024;

pub(crate) struct Inner {
    /// The topic every connection is in.
    pub(crate) all: Arc<Room>,
    pub(crate) rooms: Rooms,
    registry: Mutex<Registry>,
    pub(crate) next_id: AtomicU64,
    pub(crate) presence: broadcast::Sender<PresenceEvent>,
    pub(crate) capacity: usize,
    pub(crate) queue_capacity: usize,
    pub(crate) history: HistoryLimits,
    /// Counts the history of every topic, and trims it past its limit.
    pub(crate) history_budget: Arc<HistoryBudget>,
    pub(crate) slow_consumer: SlowConsumer,
    pub(crate) counters: Counters,
    pub(crate) budget: Budget,
    /// Held by the one caller shedding connections over the budget.
    pub(crate) shedding: Mutex<()>,
    /// This node's number, placed where connection ids carry it.
    pub(crate) node_bits: u64,
    pub(crate) backplane: Option<Arc<dyn Backplane>>,
}

impl Inner {
    /// What `builder` describes; the backplane is not started yet.
    pub(crate) fn new(builder: Builder) -> Self {
        let (presence, _) = broadcast::channel(PRESENCE_CAPACITY);
        let mirrored = builder.backplane.is_some();
        let node = (builder.backplane.as_ref()).map_or(0, |b| b.node().clamp(1, MAX_NODE));
        let history_budget = Arc::new(HistoryBudget::new(builder.history_budget));
        Inner {
            all: Arc::new(Room::new(
                Topic::All,
                Window::fixed(builder.capacity),
                mirrored,
                Arc::clone(&history_budget),
            )),
            rooms: Rooms::new(
                Window::live(builder.capacity, builder.history, builder.slow_consumer),
                (builder.idle_rooms, builder.history.enabled()),
                Arc::clone(&history_budget),
                builder.backplane.clone(),
            ),
            history_budget,
            registry: Mutex::new(Registry::default()),
            next_id: AtomicU64::new(1),
            presence,
            capacity: builder.capacity,
            queue_capacity: builder.queue_capacity,
            history: builder.history,
            slow_consumer: builder.slow_consumer,
            counters: Counters::default(),
            budget: Budget::new(builder.queue_budget),
            shedding: Mutex::new(()),
            node_bits: u64::from(node) << LOCAL_BITS,
            backplane: builder.backplane,
        }
    }

    pub(crate) fn lock(&self) -> MutexGuard<'_, Registry> {
        // The registry is left consistent at every step, so a panic in
        // another thread while holding the lock does not invalidate it.
        self.registry.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn room(&self, name: &str) -> Option<Arc<Room>> {
        self.rooms.get(name)
    }

    pub(crate) fn topic(&self, topic: &Topic) -> Option<Arc<Room>> {
        match topic {
            Topic::All => Some(Arc::clone(&self.all)),
            Topic::Room(name) => self.room(name.as_str()),
        }
    }

    pub(crate) fn is_shut_down(&self) -> bool {
        self.lock().shut_down
    }

    /// Broadcasts through the backplane if there is one and it takes the
    /// message, or else to this node's connections.
    pub(crate) fn publish(&self, topic: Topic, message: Message, except: Except) -> usize {
        Counters::add(&self.counters.broadcasts, 1);
        let room = self.topic(&topic);
        let message = match &self.backplane {
            None => message,
            Some(backplane) => {
                let reach = room.as_ref().map_or(0, |room| self.reach(room, &except));
                let publication = Publication::Broadcast {
                    topic,
                    message,
                    except: except.clone(),
                };
                match backplane.publish(publication) {
                    // Counted as delivered when it comes back.
                    Ok(()) => return reach,
                    Err(back) => match back.into_message() {
                        Some(message) => message,
                        // Not what was handed over: nothing to deliver.
                        None => return 0,
                    },
                }
            }
        };
        match room {
            Some(room) => self.publish_local(&room, message, except),
            None => 0,
        }
    }

    /// Numbers and delivers a broadcast on this node alone.
    pub(crate) fn publish_local(&self, room: &Room, message: Message, except: Except) -> usize {
        self.publish_local_at(room, message, except).0
    }

    /// [`publish_local`](Self::publish_local), and where it was placed.
    fn publish_local_at(&self, room: &Room, message: Message, except: Except) -> (usize, Position) {
        let (reached, position) = room.publish(message, &except, self.history);
        self.within_history_budget();
        (self.delivered(room, reached, &except), position)
    }

    /// Publishes to `room` as [`publish`](Self::publish) does, and tells
    /// where the message was placed: at once on this node alone (the room
    /// is kept even with no member here, for its history), or once the
    /// backplane numbered it.
    pub(crate) fn publish_placed(
        &self,
        room: RoomName,
        message: Message,
    ) -> Result<Result<Position, oneshot::Receiver<Position>>, PublishError> {
        if self.is_shut_down() {
            return Err(PublishError::Shutdown);
        }
        Counters::add(&self.counters.broadcasts, 1);
        let message = match &self.backplane {
            None => message,
            Some(backplane) => {
                let (placed, receiver) = Placed::new();
                let publication = Publication::Broadcast {
                    topic: Topic::Room(room.clone()),
                    message,
                    except: Except::none(),
                };
                match backplane.publish_placed(publication, placed) {
                    Ok(()) => return Ok(Err(receiver)),
                    // Out of reach: this node's members get it, as with
                    // any broadcast, in the room's own numbering.
                    Err(back) => match (self.room(room.as_str()), back.into_message()) {
                        (Some(kept), Some(message)) => {
                            return Ok(Ok(self.publish_local_at(&kept, message, Except::none()).1));
                        }
                        _ => return Err(PublishError::Unreachable),
                    },
                }
            }
        };
        Ok(Ok(match self.rooms.keep(&room) {
            Some(kept) => self.publish_local_at(&kept, message, Except::none()).1,
            // Kept nowhere, heard by no one: numbered in a room of its own.
            None => Position {
                epoch: crate::topic::new_epoch(),
                offset: 0,
            },
        }))
    }

    /// Trims history back under the hub-wide budget, if it is over, and
    /// retires empty rooms left with no history to keep.
    pub(crate) fn within_history_budget(&self) {
        if !self.history_budget.is_over() {
            return;
        }
        let mut topics = self.rooms.all();
        topics.push(Arc::clone(&self.all));
        self.history_budget.trim(topics.iter().map(|room| &**room));
        drop(topics);
        self.rooms.forget_spent();
    }

    /// Counts the deliveries of a message sent to `reached` subscribers of
    /// `room` (for everyone, `except` is among them).
    pub(crate) fn delivered(&self, room: &Room, reached: usize, except: &Except) -> usize {
        let excluded = match &room.topic {
            Topic::All if !except.is_empty() => {
                let registry = self.lock();
                except.iter().filter(|id| registry.contains(*id)).count()
            }
            _ => 0,
        };
        let reached = reached.saturating_sub(excluded);
        Counters::add(&self.counters.deliveries, reached as u64);
        reached
    }

    /// How many of this node's connections a broadcast to `room` reaches.
    fn reach(&self, room: &Room, except: &Except) -> usize {
        match &room.topic {
            Topic::All => {
                let registry = self.lock();
                let excluded = except.iter().filter(|id| registry.contains(*id));
                registry.len() - excluded.count()
            }
            Topic::Room(_) => room.reach(except),
        }
    }

    /// Removes this node's connections of `user`, and asks the other nodes
    /// to do the same.
    pub(crate) fn disconnect_user(&self, user: &str, code: u16, reason: &str) -> usize {
        let reason: Arc<str> = Arc::from(reason);
        let removed = self.remove_user_local(user, code, &reason);
        if let Some(backplane) = &self.backplane {
            // Out of reach, the other nodes cannot be told; their
            // connections of the user stay.
            let _ = backplane.publish(Publication::Disconnect {
                user: Arc::from(user),
                code,
                reason,
            });
        }
        removed
    }

    /// Queues `message` for this node's connections of `user`, and hands
    /// it to the backplane for the others.
    pub(crate) fn publish_to_user(
        &self,
        user: Arc<str>,
        message: Message,
        except: &Except,
    ) -> usize {
        let sent = self.send_to_user_local(&user, &message, except);
        if let Some(backplane) = &self.backplane {
            // Given back when out of reach: then it stays local.
            let _ = backplane.publish(Publication::User {
                user,
                message,
                except: except.clone(),
            });
        }
        sent
    }

    /// Queues `message` for one connection, without waiting.
    pub(crate) fn try_send_personal(&self, id: ConnId, message: Message) -> Result<(), SendError> {
        if let Some(backplane) = self.backplane_of(id) {
            return send_remote(backplane, id, message);
        }
        self.send_personal_local(id, message)
    }

    /// Queues `message` for one connection, waiting while its queue is
    /// full.
    pub(crate) async fn send_personal(
        &self,
        id: ConnId,
        message: Message,
    ) -> Result<(), SendError> {
        if let Some(backplane) = self.backplane_of(id) {
            return send_remote(backplane, id, message);
        }
        let found = (self.lock().get(id)).map(|e| Arc::clone(&e.membership));
        let Some(membership) = found else {
            return Err(SendError::UnknownConnection { id, message });
        };
        match membership.personal.send(message).await {
            Ok(()) => {
                membership.notify();
                self.queued(1);
                Ok(())
            }
            Err(message) => Err(SendError::UnknownConnection { id, message }),
        }
    }

    /// The backplane to reach `id` through, if it belongs to another node.
    fn backplane_of(&self, id: ConnId) -> Option<&dyn Backplane> {
        let backplane = self.backplane.as_deref()?;
        (id.get() & !LOCAL_MASK != self.node_bits).then_some(backplane)
    }

    pub(crate) fn send_personal_local(
        &self,
        id: ConnId,
        message: Message,
    ) -> Result<(), SendError> {
        let registry = self.lock();
        let Some(entry) = registry.get(id) else {
            return Err(SendError::UnknownConnection { id, message });
        };
        let sent = match entry.membership.personal.try_send(message) {
            Ok(()) => {
                entry.membership.notify();
                Ok(())
            }
            Err(Refused::Full(message)) => Err(SendError::QueueFull { id, message }),
            Err(Refused::Closed(message)) => Err(SendError::UnknownConnection { id, message }),
        };
        drop(registry);
        if sent.is_ok() {
            self.queued(1);
        }
        sent
    }

    pub(crate) fn send_to_user_local(
        &self,
        user: &str,
        message: &Message,
        except: &Except,
    ) -> usize {
        let registry = self.lock();
        let sent = (registry.of_user(user))
            .filter(|(id, entry)| {
                let sent = !except.contains(*id)
                    && entry.membership.personal.try_send(message.clone()).is_ok();
                if sent {
                    entry.membership.notify();
                }
                sent
            })
            .count();
        drop(registry);
        if sent > 0 {
            self.queued(sent);
        }
        sent
    }

    /// Counts `sent` personal messages just queued, and sheds if the
    /// queues are over their budget.
    fn queued(&self, sent: usize) {
        Counters::add(&self.counters.personal, sent as u64);
        if self.budget.is_over() {
            self.shed();
        }
    }

    pub(crate) fn announce(
        &self,
        kind: PresenceKind,
        topic: Topic,
        id: ConnId,
        metadata: &Metadata,
    ) {
        let event = PresenceEvent {
            kind,
            topic,
            id,
            metadata: metadata.clone(),
        };
        if let Some(backplane) = &self.backplane {
            backplane.announce(&event);
        }
        let _ = self.presence.send(event);
    }
}

fn send_remote(backplane: &dyn Backplane, id: ConnId, message: Message) -> Result<(), SendError> {
    match backplane.publish(Publication::Personal { to: id, message }) {
        Ok(()) => Ok(()),
        Err(back) => Err(SendError::Unreachable {
            id,
            message: (back.into_message()).unwrap_or_else(|| Message::text(String::new())),
        }),
    }
}
