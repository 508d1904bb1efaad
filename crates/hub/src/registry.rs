//! The registry: every connection of this node, with its metadata, its
//! rooms and its mailbox, and the connections of each user.

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use crate::mailbox::Membership;
use crate::{ConnId, Metadata, RoomName};

/// The connections of this node. Kept under the hub's registry lock, and
/// consistent at every step.
#[derive(Default)]
pub(crate) struct Registry {
    conns: HashMap<ConnId, Entry>,
    users: HashMap<Arc<str>, HashSet<ConnId>>,
    /// The hub refuses new connections.
    pub(crate) shut_down: bool,
}

/// One connection, as the registry keeps it.
pub(crate) struct Entry {
    pub(crate) metadata: Metadata,
    /// The rooms it is in: the one list of its memberships, which its
    /// rooms' member sets follow.
    pub(crate) rooms: HashSet<RoomName>,
    pub(crate) membership: Arc<Membership>,
}

impl Registry {
    pub(crate) fn insert(&mut self, id: ConnId, entry: Entry) {
        if let Some(user) = entry.metadata.user_arc() {
            self.users.entry(user).or_default().insert(id);
        }
        self.conns.insert(id, entry);
    }

    /// Takes `id` out, if it is registered.
    pub(crate) fn remove(&mut self, id: ConnId) -> Option<Entry> {
        let entry = self.conns.remove(&id)?;
        if let Some(user) = entry.metadata.user_arc() {
            self.forget_user(&user, id);
        }
        Some(entry)
    }

    /// Takes out up to `batch` connections, any of them.
    pub(crate) fn remove_some(&mut self, batch: usize) -> Vec<(ConnId, Entry)> {
        let ids: Vec<ConnId> = self.conns.keys().take(batch).copied().collect();
        (ids.into_iter())
            .filter_map(|id| Some((id, self.remove(id)?)))
            .collect()
    }

    pub(crate) fn get(&self, id: ConnId) -> Option<&Entry> {
        self.conns.get(&id)
    }

    pub(crate) fn get_mut(&mut self, id: ConnId) -> Option<&mut Entry> {
        self.conns.get_mut(&id)
    }

    /// Replaces the metadata of `id`, following a change of user; `None`
    /// if it is not registered.
    pub(crate) fn set_metadata(&mut self, id: ConnId, metadata: Metadata) -> Option<&Entry> {
        let entry = self.conns.get_mut(&id)?;
        let old_user = entry.metadata.user_arc();
        let new_user = metadata.user_arc();
        entry.metadata = metadata;
        if old_user != new_user {
            if let Some(old) = old_user {
                self.forget_user(&old, id);
            }
            if let Some(new) = new_user {
                self.users.entry(new).or_default().insert(id);
            }
        }
        self.conns.get(&id)
    }

    /// The connections of `user`.
    pub(crate) fn of_user<'a>(&'a self, user: &str) -> impl Iterator<Item = (ConnId, &'a Entry)> {
        (self.users.get(user).into_iter().flatten())
            .filter_map(|id| Some((*id, self.conns.get(id)?)))
    }

    pub(crate) fn contains(&self, id: ConnId) -> bool {
        self.conns.contains_key(&id)
    }

    pub(crate) fn len(&self) -> usize {
        self.conns.len()
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (ConnId, &Entry)> {
        self.conns.iter().map(|(id, entry)| (*id, entry))
    }

    fn forget_user(&mut self, user: &Arc<str>, id: ConnId) {
        if let Some(ids) = self.users.get_mut(user) {
            ids.remove(&id);
            if ids.is_empty() {
                self.users.remove(user);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::budget::Budget;

    fn entry(metadata: Metadata) -> Entry {
        Entry {
            metadata,
            rooms: HashSet::new(),
            membership: Arc::new(Membership::new(4, Budget::new(1024).shares())),
        }
    }

    fn id(raw: u64) -> ConnId {
        ConnId::from_raw(raw).unwrap()
    }

    fn users(registry: &Registry, user: &str) -> Vec<ConnId> {
        let mut ids: Vec<_> = registry.of_user(user).map(|(id, _)| id).collect();
        ids.sort();
        ids
    }

    #[test]
    fn users_follow_inserts_renames_and_removals() {
        let mut registry = Registry::default();
        registry.insert(id(1), entry(Metadata::new().with_user("ann")));
        registry.insert(id(2), entry(Metadata::new().with_user("ann")));
        registry.insert(id(3), entry(Metadata::new()));
        assert_eq!(users(&registry, "ann"), [id(1), id(2)]);

        registry.set_metadata(id(2), Metadata::new().with_user("bo"));
        assert_eq!(users(&registry, "ann"), [id(1)]);
        assert_eq!(users(&registry, "bo"), [id(2)]);
        assert!(registry.set_metadata(id(9), Metadata::new()).is_none());

        assert!(registry.remove(id(1)).is_some());
        assert!(registry.remove(id(1)).is_none());
        assert_eq!(users(&registry, "ann"), []);
        assert!(!registry.users.contains_key("ann"), "no empty user left");
        assert_eq!(registry.remove_some(5).len(), 2);
        assert_eq!((registry.len(), registry.users.len()), (0, 0));
    }
}
