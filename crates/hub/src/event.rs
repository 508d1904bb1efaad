//! What a connection receives.

use std::fmt;
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use crate::history::HistoryBudget;
use crate::{Message, Topic};

/// A message broadcast to a topic, with its place in that topic's stream.
///
/// Cheap to clone: every connection a broadcast reaches holds the same one,
/// through a reference count.
///
/// Two broadcasts are equal when their topic, place and message are.
#[derive(Clone)]
pub struct Broadcast(Arc<Sent>);

/// What every reader of one broadcast shares.
///
/// Aligned to a cache line: the reference count, which every delivery
/// changes, sits on a line of its own (the `Arc`'s header), and readers
/// reading the fields on another core do not miss on it.
#[repr(C, align(64))]
struct Sent {
    /// The forms made by [`Broadcast::render`], made on first use. First,
    /// next to the topic: a reader of a form made reads one line of this.
    forms: OnceLock<Box<Forms>>,
    topic: Topic,
    epoch: u64,
    offset: u64,
    message: Message,
    /// When this node's hub numbered it.
    sent_at: Instant,
    /// Counts the bytes of the forms made.
    budget: Arc<HistoryBudget>,
}

impl Broadcast {
    /// How many forms of a broadcast [`render`](Self::render) keeps.
    pub const FORMS: usize = 4;

    pub(crate) fn new(
        topic: Topic,
        (epoch, offset): (u64, u64),
        message: Message,
        budget: Arc<HistoryBudget>,
    ) -> Self {
        Self(Arc::new(Sent {
            forms: OnceLock::new(),
            topic,
            epoch,
            offset,
            message,
            sent_at: Instant::now(),
            budget,
        }))
    }

    /// When this node's hub numbered it: for a message from another node,
    /// when it arrived here. Transports measure delivery latency from it.
    #[must_use]
    pub fn sent_at(&self) -> Instant {
        self.0.sent_at
    }

    /// Where it was broadcast.
    #[must_use]
    pub fn topic(&self) -> &Topic {
        &self.0.topic
    }

    /// The topic's epoch when it was sent.
    #[must_use]
    pub fn epoch(&self) -> u64 {
        self.0.epoch
    }

    /// Its offset in the topic; consecutive within an epoch.
    #[must_use]
    pub fn offset(&self) -> u64 {
        self.0.offset
    }

    /// The message.
    #[must_use]
    pub fn message(&self) -> &Message {
        &self.0.message
    }

    /// The message, shared rather than copied.
    #[must_use]
    pub fn into_message(self) -> Message {
        self.0.message.clone()
    }

    /// The broadcast in form `form` (below [`FORMS`](Self::FORMS)), made by `render` for
    /// the first reader that asks and shared by every other reader.
    ///
    /// Use it to frame a broadcast once for all its readers (as JSON with
    /// its topic and offset, say) rather than once per reader. A form made
    /// once is shared by every reader of the broadcast for as long as the
    /// hub keeps it, history replays and repairs included; the forms count
    /// toward the hub's [history budget](crate::Builder::history_budget)
    /// while they are kept. With `form` out of range, `render` runs every
    /// time.
    ///
    /// ```
    /// use hub::{Event, Hub, Message};
    ///
    /// /// The form readers who want capitals get.
    /// const SHOUTED: usize = 0;
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let hub = Hub::new();
    /// let mut a = hub.connect()?;
    /// let mut b = hub.connect()?;
    /// hub.broadcast("hello");
    /// let mut frames = Vec::new();
    /// for connection in [&mut a, &mut b] {
    ///     let Event::Broadcast(broadcast) = connection.recv().await? else {
    ///         unreachable!()
    ///     };
    ///     let frame = broadcast.render(SHOUTED, |b| {
    ///         Some(Message::text(b.message().as_text()?.to_uppercase()))
    ///     });
    ///     frames.extend(frame);
    /// }
    /// assert_eq!(frames[0], Message::text("HELLO"));
    /// // Made once: both readers hold the same buffer.
    /// assert_eq!(frames[0].as_bytes().as_ptr(), frames[1].as_bytes().as_ptr());
    /// # Ok(())
    /// # }
    /// ```
    pub fn render(
        &self,
        form: usize,
        render: impl FnOnce(&Self) -> Option<Message>,
    ) -> Option<Message> {
        let slots = self.0.forms.get_or_init(Box::default);
        match slots.0.get(form) {
            Some(slot) => slot
                .get_or_init(|| {
                    let made = render(self);
                    self.0.budget.add(made.as_ref().map_or(0, Message::len));
                    made
                })
                .clone(),
            None => render(self),
        }
    }
}

/// How many forms of a broadcast [`Broadcast::render`] keeps.
const FORMS: usize = Broadcast::FORMS;

/// The forms of a broadcast, on cache lines of their own: what is
/// allocated next to them (reference counts, say) does not make every
/// reader miss.
#[derive(Default)]
#[repr(align(64))]
struct Forms([OnceLock<Option<Message>>; FORMS]);

impl Drop for Sent {
    fn drop(&mut self) {
        let made = self.forms.get().map_or(0, |slots| {
            (slots.0.iter())
                .filter_map(|slot| slot.get()?.as_ref().map(Message::len))
                .sum()
        });
        self.budget.remove(made);
    }
}

impl PartialEq for Broadcast {
    fn eq(&self, other: &Self) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
            || (self.topic() == other.topic()
                && self.epoch() == other.epoch()
                && self.offset() == other.offset()
                && self.message() == other.message())
    }
}

impl Eq for Broadcast {}

impl fmt::Debug for Broadcast {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Broadcast")
            .field("topic", self.topic())
            .field("epoch", &self.epoch())
            .field("offset", &self.offset())
            .field("message", self.message())
            .finish()
    }
}

/// What a connection receives from the hub.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A message sent to this connection alone.
    Personal(Message),
    /// A message broadcast to everyone or to a room this connection is in.
    Broadcast(Broadcast),
    /// Under [`SlowConsumer::Skip`](crate::SlowConsumer::Skip): the
    /// connection fell behind in `topic` and `missed` messages were skipped.
    Lagged {
        /// Where the messages were missed.
        topic: Topic,
        /// How many.
        missed: u64,
    },
    /// Messages of `topic` are missing before the ones that follow and
    /// cannot be recovered: the connection fell further behind than the
    /// topic's history reaches, or resumed from an older or different epoch.
    /// `missed` counts them when known (`None` when the epoch changed). The
    /// receiver should reload its state.
    Resync {
        /// Where the gap is.
        topic: Topic,
        /// How many messages are missing, when known.
        missed: Option<u64>,
    },
}

impl Event {
    /// The message carried, for personal and broadcast events.
    #[must_use]
    pub fn message(&self) -> Option<&Message> {
        match self {
            Self::Personal(message) => Some(message),
            Self::Broadcast(broadcast) => Some(broadcast.message()),
            _ => None,
        }
    }

    /// The message carried, for personal and broadcast events.
    #[must_use]
    pub fn into_message(self) -> Option<Message> {
        match self {
            Self::Personal(message) => Some(message),
            Self::Broadcast(broadcast) => Some(broadcast.into_message()),
            _ => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_readers_share_fits_two_cache_lines() {
        assert_eq!(std::mem::size_of::<Sent>(), 128);
    }
}
