//! A connection's life in the hub: registering, joining and leaving
//! rooms, renaming, and removal (asked for, shed over the budget, or at
//! shutdown).

use std::collections::HashSet;
use std::num::NonZeroU64;
use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::error::{ConnectError, JoinError, RecvError};
use crate::inner::{Inner, LOCAL_MASK};
use crate::mailbox::{Control, Membership, Removal};
use crate::presence::PresenceKind;
use crate::registry::Entry;
use crate::room::Subscribed;
use crate::stats::Counters;
use crate::{ConnId, Metadata, Resume, RoomName, Topic};

/// A connection just registered: what its [`Connection`](crate::Connection)
/// is made of.
pub(crate) struct Registered {
    pub(crate) id: ConnId,
    pub(crate) membership: Arc<Membership>,
    /// Its subscription to [`Topic::All`].
    pub(crate) all: Subscribed,
}

impl Inner {
    /// Registers a connection carrying `metadata`.
    pub(crate) fn register(&self, metadata: &Metadata) -> Result<Registered, ConnectError> {
        let mut registry = self.lock();
        if registry.shut_down {
            return Err(ConnectError::Shutdown);
        }
        let count = self.next_id.fetch_add(1, Ordering::Relaxed) & LOCAL_MASK;
        let raw = self.node_bits | count;
        let id = ConnId::new(NonZeroU64::new(raw).unwrap_or(NonZeroU64::MIN));
        let membership = Arc::new(Membership::new(self.queue_capacity, self.budget.shares()));
        registry.insert(
            id,
            Entry {
                metadata: metadata.clone(),
                rooms: HashSet::new(),
                membership: Arc::clone(&membership),
            },
        );
        // Subscribing under the registry lock orders this connection after
        // every broadcast that completed before `connect` returned.
        let all = self.all.subscribe(None, None);
        self.announce(PresenceKind::Joined, Topic::All, id, metadata);
        drop(registry);
        Counters::add(&self.counters.connected_total, 1);
        Ok(Registered {
            id,
            membership,
            all,
        })
    }

    /// Joins (or, with `from`, resumes) a room; `None` if already a member
    /// and not resuming.
    pub(crate) fn join(
        &self,
        id: ConnId,
        name: RoomName,
        from: Option<(u64, u64)>,
    ) -> Result<Option<Resume>, JoinError> {
        let mut registry = self.lock();
        let Some(entry) = registry.get_mut(id) else {
            return Err(JoinError::UnknownConnection { id });
        };
        let already = entry.rooms.contains(&name);
        if already && from.is_none() {
            return Ok(None);
        }
        let (room, subscribed) = self.rooms.open(&name, from, id);
        let resume = Resume::from(&subscribed);
        entry.rooms.insert(name.clone());
        entry
            .membership
            .controls
            .send(Control::Join { room, subscribed });
        entry.membership.notify();
        if !already {
            Counters::add(&self.counters.joins, 1);
            // Under the registry lock, so presence events keep their order.
            self.announce(PresenceKind::Joined, Topic::Room(name), id, &entry.metadata);
        }
        Ok(Some(resume))
    }

    /// Restarts a connection's stream of [`Topic::All`] from `from`.
    pub(crate) fn resubscribe_all(
        &self,
        id: ConnId,
        from: (u64, u64),
    ) -> Result<Resume, JoinError> {
        let registry = self.lock();
        let Some(entry) = registry.get(id) else {
            return Err(JoinError::UnknownConnection { id });
        };
        let subscribed = self.all.subscribe(Some(from), None);
        let resume = Resume::from(&subscribed);
        entry.membership.controls.send(Control::Join {
            room: Arc::clone(&self.all),
            subscribed,
        });
        entry.membership.notify();
        Ok(resume)
    }

    /// Takes a connection out of a room; whether it was a member.
    pub(crate) fn leave(&self, id: ConnId, room: &str) -> bool {
        let mut registry = self.lock();
        let Some(entry) = registry.get_mut(id) else {
            return false;
        };
        let Some(room) = entry.rooms.take(room) else {
            return false;
        };
        entry
            .membership
            .controls
            .send(Control::Leave(Topic::Room(room.clone())));
        entry.membership.notify();
        // Under the registry lock: a join of the same id cannot slip in
        // between, and presence events keep their order.
        self.leave_room(id, &room);
        let metadata = entry.metadata.clone();
        self.announce(PresenceKind::Left, Topic::Room(room), id, &metadata);
        true
    }

    /// Takes `id` out of a room's members.
    fn leave_room(&self, id: ConnId, name: &RoomName) {
        if self.rooms.leave(id, name) {
            Counters::add(&self.counters.leaves, 1);
        }
    }

    /// Replaces the metadata of `id`; whether it is registered.
    pub(crate) fn set_metadata(&self, id: ConnId, metadata: Metadata) -> bool {
        let mut registry = self.lock();
        if registry.set_metadata(id, metadata.clone()).is_none() {
            return false;
        }
        // Under the registry lock, so presence events keep their order.
        self.announce(PresenceKind::Updated, Topic::All, id, &metadata);
        true
    }

    /// The members of `room` on this node, with their metadata, in id
    /// order.
    pub(crate) fn members(&self, room: &str) -> Vec<(ConnId, Metadata)> {
        let ids = (self.room(room)).map_or_else(Vec::new, |room| room.member_ids());
        // The registry owns the metadata; a member gone meanwhile is left
        // out.
        let registry = self.lock();
        (ids.into_iter())
            .filter_map(|id| Some((id, registry.get(id)?.metadata.clone())))
            .collect()
    }

    /// The rooms `id` is in, sorted by name.
    pub(crate) fn rooms_of(&self, id: ConnId) -> Vec<RoomName> {
        let mut rooms: Vec<_> = (self.lock().get(id))
            .map(|entry| entry.rooms.iter().cloned().collect())
            .unwrap_or_default();
        rooms.sort();
        rooms
    }

    /// Removes `id` if registered, recording why. Returns whether it was.
    pub(crate) fn remove(&self, id: ConnId, reason: RecvError) -> bool {
        let entry = self.lock().remove(id);
        match entry {
            Some(entry) => {
                self.retire(id, entry, reason, None);
                true
            }
            None => false,
        }
    }

    /// Removes this node's connections of `user` with
    /// [`RecvError::Removed`]; returns how many there were.
    pub(crate) fn remove_user_local(&self, user: &str, code: u16, farewell: &Arc<str>) -> usize {
        let removed: Vec<(ConnId, Entry)> = {
            let mut registry = self.lock();
            let ids: Vec<ConnId> = registry.of_user(user).map(|(id, _)| id).collect();
            (ids.into_iter())
                .filter_map(|id| Some((id, registry.remove(id)?)))
                .collect()
        };
        let count = removed.len();
        for (id, entry) in removed {
            let reason = RecvError::Removed { code };
            self.retire(id, entry, reason, Some(Arc::clone(farewell)));
        }
        count
    }

    /// Disconnects the connections holding the most queued bytes until the
    /// hub is back under its budget.
    pub(crate) fn shed(&self) {
        // One caller sheds at a time; its pass covers everyone's messages.
        let Ok(_shedding) = self.shedding.try_lock() else {
            return;
        };
        if !self.budget.is_over() {
            return;
        }
        // One look at every connection, under the lock once: those holding
        // something, the most first.
        let mut holders: Vec<(usize, ConnId, Arc<Membership>)> = {
            let registry = self.lock();
            (registry.iter())
                .filter_map(|(id, entry)| {
                    let bytes = entry.membership.personal.queued();
                    (bytes > 0).then(|| (bytes, id, Arc::clone(&entry.membership)))
                })
                .collect()
        };
        holders.sort_unstable_by_key(|(bytes, _, _)| std::cmp::Reverse(*bytes));
        for (_, id, membership) in holders {
            if !self.budget.is_over() {
                break;
            }
            // Emptied its queue meanwhile: it reads, and holds nothing.
            if membership.personal.queued() == 0 {
                continue;
            }
            let queued = membership.personal.detach();
            if self.remove(id, RecvError::Overloaded { queued }) {
                Counters::add(&self.counters.shed, 1);
            }
        }
    }

    /// Refuses new connections and retires up to `batch` open ones (all of
    /// them without a batch); returns how many are left.
    pub(crate) fn shutdown_some(&self, batch: Option<usize>) -> usize {
        let (removed, left) = {
            let mut registry = self.lock();
            registry.shut_down = true;
            let removed = registry.remove_some(batch.unwrap_or(usize::MAX));
            (removed, registry.len())
        };
        for (id, entry) in removed {
            self.retire(id, entry, RecvError::Shutdown, None);
        }
        left
    }

    /// Finishes removing a connection taken out of the registry.
    fn retire(&self, id: ConnId, entry: Entry, reason: RecvError, farewell: Option<Arc<str>>) {
        // Read after the removal: every broadcast that completed before it
        // has a lower offset.
        let (epoch, next, _) = self.all.position();
        let mut cutoffs = vec![(Topic::All, epoch, next)];
        for name in &entry.rooms {
            if let Some(room) = self.room(name.as_str()) {
                let (epoch, next, _) = room.position();
                cutoffs.push((room.topic.clone(), epoch, next));
            }
        }
        entry.membership.remove(Removal {
            reason,
            farewell,
            cutoffs,
        });
        for room in &entry.rooms {
            self.leave_room(id, room);
            self.announce(
                PresenceKind::Left,
                Topic::Room(room.clone()),
                id,
                &entry.metadata,
            );
        }
        self.announce(PresenceKind::Left, Topic::All, id, &entry.metadata);
    }
}

impl From<&Subscribed> for Resume {
    fn from(subscribed: &Subscribed) -> Self {
        if subscribed.pending {
            return Resume::Pending;
        }
        let replayed = subscribed.replayed;
        match subscribed.missed {
            None => Resume::CaughtUp { replayed },
            Some(missed) => Resume::Resync { missed, replayed },
        }
    }
}
