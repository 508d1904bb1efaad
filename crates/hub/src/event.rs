//! What a connection receives.

use std::fmt;
use std::sync::{Arc, OnceLock};

use crate::room::HistoryBudget;
use crate::{Message, Topic};

/// A message broadcast to a topic, with its place in that topic's stream.
///
/// Two broadcasts are equal when their topic, place and message are.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Broadcast {
    /// Where it was broadcast.
    pub topic: Topic,
    /// The topic's epoch when it was sent.
    pub epoch: u64,
    /// Its offset in the topic; consecutive within an epoch.
    pub offset: u64,
    /// The message.
    pub message: Message,
    pub(crate) shared: Shared,
}

impl Broadcast {
    /// How many forms of a broadcast [`render`](Self::render) keeps.
    pub const FORMS: usize = 4;

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
    ///         Some(Message::text(b.message.as_text()?.to_uppercase()))
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
        match self.shared.form(form) {
            Some((slot, shared)) => slot
                .get_or_init(|| {
                    let made = render(self);
                    shared.count(made.as_ref().map_or(0, Message::len));
                    made
                })
                .clone(),
            None => render(self),
        }
    }
}

/// How many forms of a broadcast [`Broadcast::render`] keeps.
const FORMS: usize = Broadcast::FORMS;

/// The forms of one broadcast, shared by every connection it reaches
/// ([`Broadcast::render`]); empty for a broadcast nothing keeps.
#[derive(Clone, Default)]
pub(crate) struct Shared(Option<Arc<Forms>>);

struct Forms {
    forms: OnceLock<Box<[OnceLock<Option<Message>>; FORMS]>>,
    /// Counts the bytes of the forms made.
    budget: Arc<HistoryBudget>,
}

impl Shared {
    /// Forms counted toward `budget`.
    pub(crate) fn counted(budget: Arc<HistoryBudget>) -> Self {
        Self(Some(Arc::new(Forms {
            forms: OnceLock::new(),
            budget,
        })))
    }

    fn form(&self, form: usize) -> Option<(&OnceLock<Option<Message>>, &Forms)> {
        let forms = self.0.as_deref()?;
        let slots = forms.forms.get_or_init(Box::default);
        Some((slots.get(form)?, forms))
    }
}

impl Forms {
    fn count(&self, bytes: usize) {
        self.budget.add(bytes);
    }
}

impl Drop for Forms {
    fn drop(&mut self) {
        let made = self.forms.get().map_or(0, |slots| {
            (slots.iter())
                .filter_map(|slot| slot.get()?.as_ref().map(Message::len))
                .sum()
        });
        self.budget.remove(made);
    }
}

impl PartialEq for Shared {
    /// Not part of a broadcast's identity.
    fn eq(&self, _: &Self) -> bool {
        true
    }
}

impl Eq for Shared {}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Shared")
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
            Self::Broadcast(broadcast) => Some(&broadcast.message),
            _ => None,
        }
    }

    /// The message carried, for personal and broadcast events.
    #[must_use]
    pub fn into_message(self) -> Option<Message> {
        match self {
            Self::Personal(message) => Some(message),
            Self::Broadcast(broadcast) => Some(broadcast.message),
            _ => None,
        }
    }
}
