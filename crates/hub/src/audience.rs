//! Who a broadcast reaches: [`Audience`], the one way to address one, and
//! [`Except`], the connections it skips.

use std::fmt;
use std::sync::Arc;

use crate::{ConnId, Hub, Message, RoomName, Topic};

/// The addressees of a broadcast, built as a chain and sent with
/// [`broadcast`](Self::broadcast).
///
/// Start one from the hub with [`Hub::to`] (a room), [`Hub::to_user`] (a
/// user's connections) or [`Hub::except`] (everyone but some); add rooms,
/// users and skipped connections in any order. With no room and no user it
/// reaches every connection, as [`Hub::broadcast`] does.
///
/// Each room numbers the message in its own stream and keeps it in its
/// history; a user's connections receive it as a personal message
/// ([`Event::Personal`](crate::Event::Personal)). A connection reached
/// through two of the targets receives it once through each.
///
/// # Examples
///
/// ```
/// use hub::{Hub, Message};
///
/// # #[tokio::main(flavor = "current_thread")]
/// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
/// let hub = Hub::new();
/// let mut ann = hub.connect()?;
/// let mut bob = hub.connect()?;
/// hub.join(ann.id(), "rust")?;
/// hub.join(bob.id(), "rust")?;
///
/// // Everyone in the room but the sender.
/// assert_eq!(hub.to("rust").except(ann.id()).broadcast("hi"), 1);
/// assert_eq!(bob.recv().await?.into_message(), Some(Message::text("hi")));
///
/// // Everyone but bob, whatever their rooms.
/// assert_eq!(hub.except(bob.id()).broadcast("psst"), 1);
/// assert_eq!(ann.recv().await?.into_message(), Some(Message::text("psst")));
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
#[must_use = "an audience sends nothing until `broadcast` is called"]
pub struct Audience<'a> {
    hub: &'a Hub,
    rooms: Vec<RoomName>,
    users: Vec<Arc<str>>,
    except: Vec<ConnId>,
}

impl<'a> Audience<'a> {
    pub(crate) fn new(hub: &'a Hub) -> Self {
        Self {
            hub,
            rooms: Vec::new(),
            users: Vec::new(),
            except: Vec::new(),
        }
    }

    /// Adds the members of `room`.
    pub fn to(mut self, room: impl Into<RoomName>) -> Self {
        let room = room.into();
        if !self.rooms.contains(&room) {
            self.rooms.push(room);
        }
        self
    }

    /// Adds every connection of `user` (see
    /// [`Metadata::with_user`](crate::Metadata::with_user)), on every node.
    pub fn to_user(mut self, user: &str) -> Self {
        if !self.users.iter().any(|known| &**known == user) {
            self.users.push(user.into());
        }
        self
    }

    /// Skips connection `id` (typically the sender's), on whichever target
    /// would reach it.
    pub fn except(mut self, id: ConnId) -> Self {
        self.except.push(id);
        self
    }

    /// Sends `message` to the audience; returns how many deliveries that
    /// made on this node.
    ///
    /// Never waits: a connection that does not keep up meets the
    /// [slow-consumer policy](crate::SlowConsumer), and one whose personal
    /// queue is full is skipped, instead of holding the others back. With
    /// a [backplane](crate::Builder::backplane), the connections of the
    /// other nodes receive it too.
    pub fn broadcast(self, message: impl Into<Message>) -> usize {
        let message = message.into();
        let except: Except = self.except.into_iter().collect();
        if self.rooms.is_empty() && self.users.is_empty() {
            return self.hub.publish(Topic::All, message, except);
        }
        let rooms = (self.rooms.into_iter()).map(|room| {
            self.hub
                .publish(Topic::Room(room), message.clone(), except.clone())
        });
        let rooms: usize = rooms.sum();
        let users = (self.users.into_iter())
            .map(|user| self.hub.publish_to_user(user, message.clone(), &except));
        rooms + users.sum::<usize>()
    }
}

impl fmt::Debug for Audience<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Audience")
            .field("rooms", &self.rooms)
            .field("users", &self.users)
            .field("except", &self.except)
            .finish_non_exhaustive()
    }
}

/// The connections a broadcast skips: none, one (the sender, most often)
/// or several. Cheap to clone.
///
/// ```
/// use hub::{ConnId, Except};
///
/// let [a, b] = [1, 2].map(|raw| ConnId::from_raw(raw).unwrap());
/// let except: Except = [b, a, b].into_iter().collect();
/// assert!(except.contains(a) && except.contains(b));
/// assert_eq!(except.iter().collect::<Vec<_>>(), [a, b]);
/// assert!(Except::none().is_empty());
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Except(Skip);

#[derive(Clone, Default, PartialEq, Eq, Hash)]
enum Skip {
    #[default]
    Nobody,
    One(ConnId),
    /// Two or more, sorted, each once.
    Many(Arc<Vec<ConnId>>),
}

impl Except {
    /// Skips no connection.
    #[must_use]
    pub fn none() -> Self {
        Self(Skip::Nobody)
    }

    /// Whether `id` is skipped.
    #[inline]
    #[must_use]
    pub fn contains(&self, id: ConnId) -> bool {
        match &self.0 {
            Skip::Nobody => false,
            Skip::One(one) => *one == id,
            Skip::Many(many) => many.binary_search(&id).is_ok(),
        }
    }

    /// Whether no connection is skipped.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        matches!(self.0, Skip::Nobody)
    }

    /// The skipped connections, in id order.
    pub fn iter(&self) -> impl Iterator<Item = ConnId> + '_ {
        let ids: &[ConnId] = match &self.0 {
            Skip::Nobody => &[],
            Skip::One(one) => std::slice::from_ref(one),
            Skip::Many(many) => many,
        };
        ids.iter().copied()
    }
}

impl From<ConnId> for Except {
    fn from(id: ConnId) -> Self {
        Self(Skip::One(id))
    }
}

impl From<Option<ConnId>> for Except {
    fn from(id: Option<ConnId>) -> Self {
        id.map_or_else(Self::none, Self::from)
    }
}

impl FromIterator<ConnId> for Except {
    fn from_iter<I: IntoIterator<Item = ConnId>>(ids: I) -> Self {
        let mut ids: Vec<ConnId> = ids.into_iter().collect();
        ids.sort_unstable();
        ids.dedup();
        match ids[..] {
            [] => Self::none(),
            [one] => Self::from(one),
            _ => Self(Skip::Many(Arc::new(ids))),
        }
    }
}

impl fmt::Debug for Except {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(raw: u64) -> ConnId {
        ConnId::from_raw(raw).unwrap()
    }

    #[test]
    fn except_keeps_each_id_once_in_order() {
        let except: Except = [id(9), id(3), id(9), id(5)].into_iter().collect();
        assert_eq!(except.iter().collect::<Vec<_>>(), [id(3), id(5), id(9)]);
        assert!(except.contains(id(5)));
        assert!(!except.contains(id(4)));
        assert_eq!(format!("{except:?}"), "{ConnId(3), ConnId(5), ConnId(9)}");
    }

    #[test]
    fn except_of_one_or_none_needs_no_list() {
        let one: Except = [id(7), id(7)].into_iter().collect();
        assert_eq!(one, Except::from(id(7)));
        assert!(one.contains(id(7)) && !one.contains(id(8)));
        assert_eq!(std::iter::empty().collect::<Except>(), Except::none());
        assert_eq!(Except::from(None), Except::none());
        assert!(!Except::none().contains(id(1)));
    }

    #[test]
    fn an_except_is_two_words() {
        assert_eq!(std::mem::size_of::<Except>(), 16);
    }
}
