//! The hub as its backplane sees it: what a [`Remote`](crate::Remote)
//! delivers, placed where the backplane numbered it.

use std::sync::Arc;

use crate::backplane::Sink;
use crate::inner::Inner;
use crate::presence::PresenceEvent;
use crate::room::Placing;
use crate::{ConnId, Except, Message, Position, SendError, Topic};

impl Sink for Inner {
    fn is_shut_down(&self) -> bool {
        Inner::is_shut_down(self)
    }

    fn deliver(
        &self,
        topic: &Topic,
        position: Position,
        message: Result<Message, u64>,
        except: Except,
    ) -> usize {
        let Some(room) = self.topic(topic) else {
            return 0;
        };
        let placing = match message {
            Ok(message) => Placing::Message(message),
            Err(missed) => Placing::Missed(missed),
        };
        let is_message = matches!(placing, Placing::Message(..));
        let reached = room.publish_at(
            position.epoch,
            position.offset,
            placing,
            &except,
            self.history,
        );
        self.within_history_budget();
        if is_message {
            self.delivered(&room, reached, &except)
        } else {
            0
        }
    }

    fn rebase(
        &self,
        topic: &Topic,
        next: Position,
        backfill: &mut dyn Iterator<Item = (u64, Message, Except)>,
    ) {
        if let Some(room) = self.topic(topic) {
            room.rebase(next.epoch, next.offset, backfill, self.history);
            self.within_history_budget();
        }
    }

    fn is_following(&self, topic: &Topic) -> bool {
        self.topic(topic).is_some_and(|room| room.is_mirrored())
    }

    fn deliver_here(&self, topic: &Topic, message: Message, except: Except) -> usize {
        (self.topic(topic)).map_or(0, |room| self.publish_local(&room, message, except))
    }

    fn send_personal(&self, to: ConnId, message: Message) -> Result<(), SendError> {
        self.send_personal_local(to, message)
    }

    fn send_to_user(&self, user: &str, message: &Message, except: &Except) -> usize {
        self.send_to_user_local(user, message, except)
    }

    fn disconnect_user(&self, user: &str, code: u16, reason: &Arc<str>) -> usize {
        self.remove_user_local(user, code, reason)
    }

    fn announce(&self, event: PresenceEvent) {
        let _ = self.presence.send(event);
    }

    fn topics(&self) -> Vec<Topic> {
        let names = self.rooms.names();
        let mut topics = Vec::with_capacity(names.len() + 1);
        topics.push(Topic::All);
        topics.extend(names.into_iter().map(Topic::Room));
        topics
    }
}
