//! Where a broadcast goes: everyone, or one room.

use std::borrow::Borrow;
use std::collections::hash_map::RandomState;
use std::fmt;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

/// The name of a room. Cheap to clone.
///
/// ```
/// use hub::RoomName;
///
/// let room = RoomName::from("rust");
/// assert_eq!(room.as_str(), "rust");
/// assert_eq!(room.to_string(), "rust");
/// ```
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RoomName(Arc<str>);

impl RoomName {
    /// The name as a string slice.
    #[must_use]
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(&*self.0, f)
    }
}

impl fmt::Display for RoomName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl From<&str> for RoomName {
    fn from(name: &str) -> Self {
        Self(name.into())
    }
}

impl From<String> for RoomName {
    fn from(name: String) -> Self {
        Self(name.into())
    }
}

impl From<&String> for RoomName {
    fn from(name: &String) -> Self {
        Self(name.as_str().into())
    }
}

impl From<&RoomName> for RoomName {
    fn from(name: &RoomName) -> Self {
        name.clone()
    }
}

impl Borrow<str> for RoomName {
    fn borrow(&self) -> &str {
        &self.0
    }
}

/// A stream of broadcasts a connection receives: the one every connection
/// is in, or a room.
///
/// Each topic numbers its messages with consecutive offsets, within an
/// epoch (see [`Position`]).
#[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Topic {
    /// Broadcasts to every connection ([`Hub::broadcast`](crate::Hub::broadcast)).
    All,
    /// Broadcasts to the members of one room.
    Room(RoomName),
}

impl fmt::Display for Topic {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::All => f.write_str("*"),
            Self::Room(room) => write!(f, "room {room}"),
        }
    }
}

impl From<RoomName> for Topic {
    fn from(room: RoomName) -> Self {
        Self::Room(room)
    }
}

impl From<&str> for Topic {
    fn from(room: &str) -> Self {
        Self::Room(room.into())
    }
}

/// A place in a topic's stream: its epoch and an offset in it.
///
/// Offsets count up from 0 within an epoch. A topic's epoch changes when
/// the continuity of its history is broken (a restart, or an idle room's
/// history evicted), so offsets of different epochs cannot be compared.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Position {
    /// The topic's epoch.
    pub epoch: u64,
    /// An offset within the epoch.
    pub offset: u64,
}

/// A stretch of a room's history, as [`Hub::history`](crate::Hub::history)
/// reads it.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct HistoryPage {
    /// The room's epoch: the lines' offsets count within it.
    pub epoch: u64,
    /// The lines, oldest first.
    pub lines: Vec<crate::Broadcast>,
    /// Lines of the stretch read that history no longer holds (dropped by
    /// its limits), or that never reached this room's stream.
    pub missed: u64,
    /// The offset to read from next.
    pub next: u64,
    /// The offset the room's next line will have: there is more to read
    /// while `next` is below it.
    pub end: u64,
}

/// How a [`Hub::resume`](crate::Hub::resume) went.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Resume {
    /// Every message after the given position follows, from history, then
    /// live ones: no gap, no duplicate.
    CaughtUp {
        /// How many came from history.
        replayed: u64,
    },
    /// History does not reach back to the given position, or the epoch
    /// changed: the connection receives [`Event::Resync`](crate::Event::Resync),
    /// then what history has, then live messages. The client should reload
    /// its state.
    Resync {
        /// How many messages are lost, when known.
        missed: Option<u64>,
        /// How many came from history.
        replayed: u64,
    },
    /// The hub's [backplane](crate::Builder::backplane) has not placed the room
    /// yet (it was just created on this node): what history has after the
    /// given position follows among the events, or a
    /// [`Resync`](crate::Event::Resync) if it does not reach back that far.
    Pending,
}

/// A new epoch: random, never zero, and below 2^53, so that it stays exact
/// wherever numbers are doubles (Lua in Redis, JavaScript). A process-random
/// hash of the time and a counter: unlikely to repeat across restarts or
/// nodes. Backplanes use it for a topic their store does not know yet.
#[must_use]
pub fn new_epoch() -> u64 {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let mut hasher = RandomState::new().build_hasher();
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_nanos());
    hasher.write_u128(nanos);
    hasher.write_u64(COUNTER.fetch_add(1, Ordering::Relaxed));
    (hasher.finish() >> 11).max(1)
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::new_epoch;

    #[test]
    fn epochs_are_distinct_and_exact_as_doubles() {
        let epochs: HashSet<u64> = (0..1000).map(|_| new_epoch()).collect();
        assert_eq!(epochs.len(), 1000);
        // A plain 64-bit hash would exceed 2^53 in all but a few of 1 000.
        assert!(epochs.iter().all(|&e| e != 0 && e < 1 << 53));
    }
}
