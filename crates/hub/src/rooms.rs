//! The hub's rooms by name: made on the first join, kept while they have
//! members and, once empty, while their history is worth keeping (the
//! idle rooms), and followed through the backplane while they exist.

use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use crate::backplane::Backplane;
use crate::history::HistoryBudget;
use crate::room::{Room, Subscribed, Window};
use crate::{ConnId, RoomName, Topic};

pub(crate) struct Rooms {
    table: Mutex<Table>,
    /// The channel a new room gets.
    window: Window,
    /// Empty rooms kept for their history, at most.
    idle_rooms: usize,
    /// Whether rooms keep history at all.
    keep_history: bool,
    history_budget: Arc<HistoryBudget>,
    backplane: Option<Arc<dyn Backplane>>,
}

#[derive(Default)]
struct Table {
    by_name: HashMap<RoomName, Arc<Room>>,
    /// Empty rooms kept for their history, longest empty first.
    idle: VecDeque<RoomName>,
}

impl Rooms {
    pub(crate) fn new(
        window: Window,
        (idle_rooms, keep_history): (usize, bool),
        history_budget: Arc<HistoryBudget>,
        backplane: Option<Arc<dyn Backplane>>,
    ) -> Self {
        Self {
            table: Mutex::default(),
            window,
            idle_rooms,
            keep_history,
            history_budget,
            backplane,
        }
    }

    fn lock(&self) -> MutexGuard<'_, Table> {
        // Left consistent at every step.
        self.table.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn get(&self, name: &str) -> Option<Arc<Room>> {
        self.lock().by_name.get(name).cloned()
    }

    /// Every room.
    pub(crate) fn all(&self) -> Vec<Arc<Room>> {
        self.lock().by_name.values().cloned().collect()
    }

    /// The names of every room, in no order.
    pub(crate) fn names(&self) -> Vec<RoomName> {
        self.lock().by_name.keys().cloned().collect()
    }

    /// The rooms that have members, with how many, sorted by name.
    pub(crate) fn occupied(&self) -> Vec<(RoomName, usize)> {
        let mut rooms: Vec<_> = (self.lock().by_name.iter())
            .map(|(name, room)| (name.clone(), room.member_count()))
            .filter(|(_, members)| *members > 0)
            .collect();
        rooms.sort_unstable();
        rooms
    }

    /// Subscribes `member` to the room called `name`, made if needed (or
    /// brought back from the idle rooms). Under the table's lock, so the
    /// room cannot be retired between being found and gaining its member.
    pub(crate) fn open(
        &self,
        name: &RoomName,
        from: Option<(u64, u64)>,
        member: ConnId,
    ) -> (Arc<Room>, Subscribed) {
        let mut table = self.lock();
        let room = match table.by_name.get(name).cloned() {
            Some(room) => {
                table.idle.retain(|idle| idle != name);
                room
            }
            None => {
                let topic = Topic::Room(name.clone());
                let mirrored = self.backplane.is_some();
                let budget = Arc::clone(&self.history_budget);
                let room = Arc::new(Room::new(topic, self.window, mirrored, budget));
                table.by_name.insert(name.clone(), Arc::clone(&room));
                if let Some(backplane) = &self.backplane {
                    backplane.watch(&room.topic);
                }
                room
            }
        };
        let subscribed = room.subscribe(from, Some(member));
        (room, subscribed)
    }

    /// The room called `name`, made if needed with no member on this node
    /// (a message published to it, its history read): a room made so is
    /// kept among the idle rooms, for its history, and followed through
    /// the backplane, if rooms keep history. If they do not, it is not
    /// kept at all (`None`).
    pub(crate) fn keep(&self, name: &RoomName) -> Option<Arc<Room>> {
        let mut table = self.lock();
        if let Some(room) = table.by_name.get(name) {
            return Some(Arc::clone(room));
        }
        if !self.keep_history || self.idle_rooms == 0 {
            return None;
        }
        let topic = Topic::Room(name.clone());
        let budget = Arc::clone(&self.history_budget);
        let mirrored = self.backplane.is_some();
        let room = Arc::new(Room::new(topic, self.window, mirrored, budget));
        table.by_name.insert(name.clone(), Arc::clone(&room));
        if let Some(backplane) = &self.backplane {
            backplane.watch(&room.topic);
        }
        self.make_idle(&mut table, name.clone());
        Some(room)
    }

    /// Puts an empty room among the idle ones, retiring the longest idle
    /// past the limit (never one that has gained members meanwhile).
    fn make_idle(&self, table: &mut Table, name: RoomName) {
        table.idle.push_back(name);
        while table.idle.len() > self.idle_rooms {
            let Some(evicted) = table.idle.pop_front() else {
                break;
            };
            if (table.by_name.get(&evicted)).is_some_and(|r| r.member_count() == 0) {
                table.by_name.remove(&evicted);
                self.unwatch(evicted);
            }
        }
    }

    /// Takes `id` out of the room's members; an emptied room goes, or waits
    /// among the idle rooms if it has history to keep. Returns whether `id`
    /// was a member.
    pub(crate) fn leave(&self, id: ConnId, name: &RoomName) -> bool {
        let mut table = self.lock();
        let Some(room) = table.by_name.get(name).cloned() else {
            return false;
        };
        let left = room.remove_member(id);
        if left != Some(0) {
            return left.is_some();
        }
        if self.keep_history && self.idle_rooms > 0 && room.position().2 > 0 {
            self.make_idle(&mut table, name.clone());
        } else {
            table.by_name.remove(name);
            self.unwatch(name.clone());
        }
        true
    }

    /// Retires the idle rooms whose history is gone (trimmed to the
    /// budget), unless they have gained members.
    pub(crate) fn forget_spent(&self) {
        let mut table = self.lock();
        let Table { by_name, idle } = &mut *table;
        idle.retain(|name| {
            let keep = (by_name.get(name))
                .is_some_and(|room| room.member_count() > 0 || room.position().2 > 0);
            if !keep && by_name.remove(name).is_some() {
                self.unwatch(name.clone());
            }
            keep
        });
    }

    fn unwatch(&self, room: RoomName) {
        if let Some(backplane) = &self.backplane {
            backplane.unwatch(&Topic::Room(room));
        }
    }
}
