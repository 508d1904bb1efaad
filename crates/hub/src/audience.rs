//! Who a broadcast reaches: [`Audience`], the one way to address one.

use std::fmt;
use std::sync::Arc;

use crate::inner::Inner;
use crate::{ConnId, Except, Message, RoomName, Topic};

/// The addressees of a broadcast, built as a chain and sent with
/// [`broadcast`](Self::broadcast).
///
/// Start one from the hub with [`Hub::to`](crate::Hub::to) (a room), [`Hub::to_user`](crate::Hub::to_user) (a
/// user's connections) or [`Hub::except`](crate::Hub::except) (everyone but some); add rooms,
/// users and skipped connections in any order. With no room and no user it
/// reaches every connection, as [`Hub::broadcast`](crate::Hub::broadcast) does.
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
    hub: &'a Inner,
    rooms: Vec<RoomName>,
    users: Vec<Arc<str>>,
    except: Vec<ConnId>,
}

impl<'a> Audience<'a> {
    pub(crate) fn new(hub: &'a Inner) -> Self {
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
