//! Who is in each room, as the room chat tells it: a joiner gets the whole
//! member list, everyone else a line for each change (`joined`, `left`,
//! `nick`) carrying a presence diff, the way Phoenix's `presence_diff`
//! works.
//!
//! Changes that come in a burst share lines: the first change in a quiet
//! room goes out at once, and the ones that follow within the burst
//! (100 ms by default, `--presence-burst`) go out
//! together when it ends, one line for each run of joins or of leaves. A
//! join storm into a room of N members then costs the room one line, and
//! N deliveries, per burst rather than per join. Joiners between two lines
//! share one member list, made once.
//!
//! A diff is worked out when its line goes out, against the room as it is
//! then: `joins` are the line's names present in the room, `leaves` those
//! gone from it. A client applies the diffs of the lines from its list's
//! position (`at`) on, leaves then joins, to a set of names; applying a
//! change its list already has changes nothing.

use std::collections::{BTreeSet, HashMap};
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::time::Duration;

use hub::{ConnId, Hub, Message, Metadata, RoomName, Topic};
use serde::Serialize;
use serde_json::json;
use tokio::time::Instant;

use crate::protocol::payload;

/// How long after a line the next changes wait, to go out together, by
/// default.
const BURST: Duration = Duration::from_millis(100);

/// A room's lines wait this long per member besides: every line goes to
/// every member, so a room of N members gets a line at most every N × 25
/// µs (40 000 deliveries a second, whatever its size), and a join storm
/// costs each join a bounded number of deliveries rather than a number
/// that grows with the room (10 000 members: a line every 250 ms).
const PER_MEMBER: Duration = Duration::from_micros(25);

/// The longest wait between two lines, whatever the room's size.
const MOST_BURST: Duration = Duration::from_secs(2);

/// Every room's presence lines and member list.
pub(crate) struct Presences {
    rooms: Mutex<HashMap<RoomName, Arc<Mutex<RoomPresence>>>>,
    /// How long after a line the next changes wait.
    burst: Duration,
}

impl Default for Presences {
    fn default() -> Self {
        Self::new(BURST)
    }
}

#[derive(Default)]
struct RoomPresence {
    /// When the last line went out.
    last: Option<Instant>,
    /// Changes waiting for the next line, oldest first.
    pending: Vec<Change>,
    /// The end of the burst is awaited.
    scheduled: bool,
    /// The member list as of the last line (with the position read before
    /// it was taken), shared by every joiner until the next line.
    list: Option<Message>,
    /// Forgotten (the room emptied): whoever held on to it looks again.
    retired: bool,
    /// Members at the last line.
    members: usize,
}

#[derive(Clone, Debug, PartialEq, Eq)]
enum Change {
    Joined(String),
    Left(String),
}

/// How a room's names changed, as a line tells it.
#[derive(Debug, Default, Serialize, PartialEq, Eq)]
pub(crate) struct Diff {
    joins: Vec<String>,
    leaves: Vec<String>,
}

impl Presences {
    pub(crate) fn new(burst: Duration) -> Self {
        Self {
            rooms: Mutex::default(),
            burst,
        }
    }

    /// `name` joined `room` (already a member of the hub's room).
    pub(crate) fn joined(self: &Arc<Self>, hub: &Hub, room: &RoomName, name: &str) {
        self.change(hub, room, Change::Joined(name.to_owned()));
    }

    /// `name` left `room` (no longer a member of the hub's room).
    pub(crate) fn left(self: &Arc<Self>, hub: &Hub, room: &RoomName, name: &str) {
        self.change(hub, room, Change::Left(name.to_owned()));
    }

    /// `from` is now called `to` in `room`: told at once, after the changes
    /// waiting, so that lines keep the order of the changes.
    pub(crate) fn renamed(&self, hub: &Hub, room: &RoomName, from: &str, to: &str) {
        self.with_room(room, |_, presence| {
            presence.flush(hub, room);
            let names = present(hub, room);
            let diff = Diff {
                joins: names
                    .contains(to)
                    .then(|| to.to_owned())
                    .into_iter()
                    .collect(),
                leaves: (!names.contains(from))
                    .then(|| from.to_owned())
                    .into_iter()
                    .collect(),
            };
            let line = payload("nick", json!({ "from": from, "to": to, "presence": diff }));
            hub.to(room).broadcast(line);
            presence.sent();
        });
    }

    /// The member list a client joining `room` gets: the names, and the
    /// position from which the lines' diffs apply to it. The client is a
    /// member of the hub's room already.
    pub(crate) fn list(&self, hub: &Hub, room: &RoomName) -> Message {
        self.with_room(room, |_, presence| presence.list(hub, room))
    }

    fn change(self: &Arc<Self>, hub: &Hub, room: &RoomName, change: Change) {
        self.with_room(room, |entry, presence| {
            presence.pending.push(change);
            if presence.scheduled {
                return;
            }
            let now = Instant::now();
            let burst = presence.burst(self.burst);
            let quiet = presence.last.is_none_or(|last| now >= last + burst);
            if quiet {
                let empty = presence.flush(hub, room);
                self.forget_if_empty(hub, room, entry, presence, empty);
                return;
            }
            presence.scheduled = true;
            let at = presence.last.map_or(now, |last| last + burst);
            let (presences, hub, room) = (Arc::clone(self), hub.clone(), room.clone());
            let entry = Arc::clone(entry);
            tokio::spawn(async move {
                tokio::time::sleep_until(at).await;
                let mut presence = lock(&entry);
                presence.scheduled = false;
                let empty = presence.flush(&hub, &room);
                presences.forget_if_empty(&hub, &room, &entry, &mut presence, empty);
            });
        });
    }

    /// Runs `f` on the room's presence, locked.
    fn with_room<R>(
        &self,
        room: &RoomName,
        f: impl FnOnce(&Arc<Mutex<RoomPresence>>, &mut RoomPresence) -> R,
    ) -> R {
        let fetch = || {
            let mut rooms = self.rooms.lock().unwrap_or_else(PoisonError::into_inner);
            Arc::clone(rooms.entry(room.clone()).or_default())
        };
        let mut entry = fetch();
        // One forgotten while this waited for it is gone from the map: the
        // next look finds a new one. Bounded: the room must empty again for
        // each round.
        for _ in 0..16 {
            if !lock(&entry).retired {
                break;
            }
            entry = fetch();
        }
        let mut presence = lock(&entry);
        if presence.retired {
            // Emptied sixteen times meanwhile: this one is the room's again.
            presence.retired = false;
            let mut rooms = self.rooms.lock().unwrap_or_else(PoisonError::into_inner);
            rooms.insert(room.clone(), Arc::clone(&entry));
        }
        f(&entry, &mut presence)
    }

    /// A room nobody is in, with nothing waiting, is forgotten (a room
    /// name that comes back starts afresh). `empty`: whether the flush just
    /// made found it empty, if it looked.
    fn forget_if_empty(
        &self,
        hub: &Hub,
        room: &RoomName,
        entry: &Arc<Mutex<RoomPresence>>,
        presence: &mut RoomPresence,
        empty: Option<bool>,
    ) {
        if presence.pending.is_empty()
            && !presence.scheduled
            && empty.unwrap_or_else(|| hub.members(room.as_str()).is_empty())
        {
            let mut rooms = self.rooms.lock().unwrap_or_else(PoisonError::into_inner);
            if rooms.get(room).is_some_and(|kept| Arc::ptr_eq(kept, entry)) {
                rooms.remove(room);
            }
            presence.retired = true;
        }
    }

    /// Rooms whose presence is kept.
    #[cfg(test)]
    fn rooms(&self) -> usize {
        self.rooms
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }
}

impl RoomPresence {
    /// How long after a line the next changes wait: `least`, or longer in
    /// a large room (see [`PER_MEMBER`]).
    fn burst(&self, least: Duration) -> Duration {
        let per_members =
            PER_MEMBER.saturating_mul(u32::try_from(self.members).unwrap_or(u32::MAX));
        least.max(per_members.min(MOST_BURST))
    }

    /// The list for a joiner: the one taken since the last line, or a new
    /// one.
    fn list(&mut self, hub: &Hub, room: &RoomName) -> Message {
        // Between two lines the list stays true for every joiner: a change
        // since it was taken has a line still to come, which every joiner
        // gets. With other nodes, whose lines arrive from elsewhere, it is
        // taken each time.
        if let (Some(list), false) = (&self.list, hub.is_shared()) {
            return list.clone();
        }
        let topic = Topic::Room(room.clone());
        // Read before the list: every change with a line from here on is
        // applied to it.
        let at = hub.position(&topic);
        let members = hub.members(room.as_str());
        let list = Message::text(payload(
            "members",
            json!({
                "room": room.as_str(),
                "members": names_of(&members),
                "epoch": at.map(|p| p.epoch.to_string()),
                "at": at.map(|p| p.offset),
            }),
        ));
        self.list = Some(list.clone());
        list
    }

    /// Sends the lines for the changes waiting: one for each run of joins
    /// or of leaves. Returns whether the room is empty, if it looked.
    fn flush(&mut self, hub: &Hub, room: &RoomName) -> Option<bool> {
        if self.pending.is_empty() {
            return None;
        }
        let names = present(hub, room);
        self.members = names.len();
        let pending = std::mem::take(&mut self.pending);
        let same_kind = |a: &Change, b: &Change| {
            matches!(
                (a, b),
                (Change::Joined(_), Change::Joined(_)) | (Change::Left(_), Change::Left(_))
            )
        };
        for run in pending.chunk_by(same_kind) {
            let joined = matches!(run[0], Change::Joined(_));
            let mut seen = BTreeSet::new();
            let who: Vec<&str> = (run.iter())
                .map(|change| match change {
                    Change::Joined(name) | Change::Left(name) => name.as_str(),
                })
                .filter(|name| seen.insert(*name))
                .collect();
            // Present now and joined, or gone now and left.
            let changed = (who.iter())
                .filter(|name| names.contains(**name) == joined)
                .map(|name| (*name).to_owned());
            let (kind, diff) = if joined {
                (
                    "joined",
                    Diff {
                        joins: changed.collect(),
                        leaves: Vec::new(),
                    },
                )
            } else {
                (
                    "left",
                    Diff {
                        joins: Vec::new(),
                        leaves: changed.collect(),
                    },
                )
            };
            let mut fields = json!({ "from": who[0], "presence": diff });
            if who.len() > 1 {
                fields["names"] = json!(who);
            }
            hub.to(room).broadcast(payload(kind, fields));
        }
        self.sent();
        Some(names.is_empty())
    }

    /// A line went out: the list is no longer true for the next joiner.
    fn sent(&mut self) {
        self.last = Some(Instant::now());
        self.list = None;
    }
}

/// The names in `room` now.
fn present(hub: &Hub, room: &RoomName) -> BTreeSet<String> {
    names_of(&hub.members(room.as_str())).into_iter().collect()
}

/// The members' names, sorted, each once.
pub(crate) fn names_of(members: &[(ConnId, Metadata)]) -> Vec<String> {
    let mut names: Vec<_> = (members.iter())
        .filter_map(|(_, metadata)| metadata.name().map(str::to_owned))
        .collect();
    names.sort();
    names.dedup();
    names
}

fn lock(entry: &Mutex<RoomPresence>) -> MutexGuard<'_, RoomPresence> {
    // Every step leaves the state consistent.
    entry.lock().unwrap_or_else(PoisonError::into_inner)
}

impl fmt::Debug for Presences {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Presences").finish_non_exhaustive()
    }
}

#[cfg(test)]
mod tests {
    use hub::{Connection, Event, TryRecvError};

    use super::*;

    /// The next room line's JSON.
    async fn line(conn: &mut Connection) -> serde_json::Value {
        match tokio::time::timeout(Duration::from_secs(5), conn.recv()).await {
            Ok(Ok(Event::Broadcast(b))) => {
                serde_json::from_str(b.message().as_text().unwrap()).unwrap()
            }
            other => panic!("expected a room line, got {other:?}"),
        }
    }

    fn member(hub: &Hub, name: &str) -> Connection {
        let conn = hub.connect_with(Metadata::new().with_name(name)).unwrap();
        hub.join(conn.id(), "r").unwrap();
        conn
    }

    #[test]
    fn large_rooms_wait_longer_between_lines() {
        let room = |members| RoomPresence {
            members,
            ..RoomPresence::default()
        };
        let least = Duration::from_millis(100);
        assert_eq!(room(0).burst(least), least);
        assert_eq!(room(1_000).burst(least), least);
        assert_eq!(room(10_000).burst(least), Duration::from_millis(250));
        assert_eq!(room(10_000_000).burst(least), MOST_BURST);
        assert_eq!(
            room(1_000).burst(Duration::from_secs(3)),
            Duration::from_secs(3)
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_burst_shares_one_line_per_run_and_joiners_share_one_list() {
        let hub = Hub::new();
        let presences = Arc::new(Presences::default());
        let room = RoomName::from("r");
        let mut watcher = member(&hub, "w");
        presences.joined(&hub, &room, "w");
        // A quiet room: at once.
        let first = line(&mut watcher).await;
        assert_eq!(
            (first["kind"].as_str(), first["from"].as_str()),
            (Some("joined"), Some("w"))
        );
        assert_eq!(first["presence"], json!({ "joins": ["w"], "leaves": [] }));
        assert!(first.get("names").is_none());
        // Four more within the burst: nothing until it ends, then one line.
        let mut joiners: Vec<Connection> = Vec::new();
        let mut lists = Vec::new();
        for name in ["a", "b", "a", "c"] {
            joiners.push(member(&hub, name));
            lists.push(presences.list(&hub, &room));
            presences.joined(&hub, &room, name);
        }
        assert_eq!(watcher.try_recv(), Err(TryRecvError::Empty));
        // Made once for all four joiners: the list as of the last line,
        // whose diffs they apply from `at` on.
        assert!(lists
            .iter()
            .all(|list| list.as_bytes().as_ptr() == lists[0].as_bytes().as_ptr()));
        let list: serde_json::Value = serde_json::from_str(lists[0].as_text().unwrap()).unwrap();
        assert_eq!(list["members"], json!(["a", "w"]));
        let burst = line(&mut watcher).await;
        assert_eq!(
            (burst["kind"].as_str(), burst["from"].as_str()),
            (Some("joined"), Some("a"))
        );
        assert_eq!(burst["names"], json!(["a", "b", "c"]));
        assert_eq!(
            burst["presence"],
            json!({ "joins": ["a", "b", "c"], "leaves": [] })
        );
        assert_eq!(watcher.try_recv(), Err(TryRecvError::Empty));
        // A line went out: the next joiner gets a new list.
        let fresh = presences.list(&hub, &room);
        assert_ne!(fresh.as_bytes().as_ptr(), lists[0].as_bytes().as_ptr());
        // Leaves and a join, in one burst: a line per run, in order. "a"
        // has a second connection, so its leave changes no name.
        let (c, a) = (joiners.pop().unwrap(), joiners.remove(0));
        let (c_id, a_id) = (c.id(), a.id());
        drop((c, a));
        assert!(!hub.contains(c_id) && !hub.contains(a_id));
        presences.left(&hub, &room, "c");
        presences.left(&hub, &room, "a");
        let _d = member(&hub, "d");
        presences.joined(&hub, &room, "d");
        let left = line(&mut watcher).await;
        assert_eq!(
            (left["kind"].as_str(), left["names"].clone()),
            (Some("left"), json!(["c", "a"]))
        );
        assert_eq!(left["presence"], json!({ "joins": [], "leaves": ["c"] }));
        let joined = line(&mut watcher).await;
        assert_eq!(joined["presence"], json!({ "joins": ["d"], "leaves": [] }));
        // A rename goes out at once, after anything waiting.
        hub.set_metadata(_d.id(), Metadata::new().with_name("e"));
        presences.renamed(&hub, &room, "d", "e");
        let nick = line(&mut watcher).await;
        assert_eq!(nick["presence"], json!({ "joins": ["e"], "leaves": ["d"] }));
        // Everyone gone: the room's presence is forgotten.
        drop((watcher, joiners, _d));
        tokio::time::sleep(BURST).await;
        presences.left(&hub, &room, "w");
        assert_eq!(presences.rooms(), 0);
    }
}
