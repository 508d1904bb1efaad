//! Where a broadcast goes: everyone, or one room.

use std::borrow::Borrow;
use std::fmt;
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
