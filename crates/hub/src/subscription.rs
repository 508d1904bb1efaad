//! A connection's subscription to one topic: where it stands in the
//! topic's stream, and the refill from history that repairs a gap.

use std::future::Future;
use std::sync::Arc;
use std::task::Poll;

use tokio::sync::broadcast;
use tokio::sync::broadcast::error::RecvError as ChannelRecvError;

use crate::room::{Envelope, Payload, Room, Subscribed};
use crate::stats::Counters;
use crate::{ConnId, Event, Topic};

/// One topic's stream as this connection reads it.
pub(crate) struct Sub {
    pub(crate) room: Arc<Room>,
    pub(crate) receiver: broadcast::Receiver<Envelope>,
    /// The generation of the room's channel `receiver` belongs to.
    pub(crate) generation: u64,
    /// The epoch this connection follows ([`PENDING`]: none yet).
    pub(crate) epoch: u64,
    /// The offset this connection expects next.
    pub(crate) next: u64,
    /// Being read from history rather than from the channel (boxed: a
    /// connection has a `Sub` per room, and rarely a refill).
    pub(crate) refill: Option<Box<Refill>>,
    /// While draining: reached the removal cutoff.
    pub(crate) done: bool,
}

impl Sub {
    pub(crate) fn new(room: Arc<Room>, subscribed: Subscribed) -> Self {
        let refill = (subscribed.first < subscribed.next_offset)
            .then(|| Refill::replay(subscribed.next_offset));
        Self {
            room,
            receiver: subscribed.receiver,
            generation: subscribed.generation,
            epoch: subscribed.epoch,
            next: subscribed.first,
            refill,
            done: false,
        }
    }
}

/// Offsets `Sub::next..to` of a topic, read from its history a chunk at a
/// time: a reader far behind holds one chunk, not the whole gap.
pub(crate) struct Refill {
    pub(crate) to: u64,
    /// Asked for (a resume), rather than repairing a gap.
    pub(crate) replay: bool,
    /// The message that showed the gap, delivered after it.
    pub(crate) held: Option<Envelope>,
}

impl Refill {
    pub(crate) fn replay(to: u64) -> Box<Self> {
        Box::new(Self {
            to,
            replay: true,
            held: None,
        })
    }
}

/// Messages read from history at a time.
pub(crate) const REFILL_CHUNK: usize = 64;

/// What an envelope of `topic` means to connection `id`, if anything.
pub(crate) fn event(
    id: ConnId,
    counters: &Counters,
    topic: &Topic,
    envelope: Envelope,
) -> Option<Event> {
    if envelope.except.contains(id) {
        return None;
    }
    match envelope.payload {
        Payload::Message(broadcast) => Some(Event::Broadcast(broadcast)),
        Payload::Missed(0) | Payload::Placed => None,
        Payload::Missed(missed) => {
            Counters::add(&counters.missed, missed);
            Counters::add(&counters.resyncs, 1);
            Some(Event::Resync {
                topic: topic.clone(),
                missed: Some(missed),
            })
        }
    }
}

/// Waits for the first of several topics to deliver.
pub(crate) async fn recv_any(subs: &mut [Sub]) -> (usize, Result<Envelope, ChannelRecvError>) {
    match subs {
        [] => std::future::pending().await,
        [only] => (0, only.receiver.recv().await),
        many => {
            let mut waiting: Vec<_> = many
                .iter_mut()
                .map(|sub| Box::pin(sub.receiver.recv()))
                .collect();
            std::future::poll_fn(|cx| {
                for (index, future) in waiting.iter_mut().enumerate() {
                    if let Poll::Ready(received) = future.as_mut().poll(cx) {
                        return Poll::Ready((index, received));
                    }
                }
                Poll::Pending
            })
            .await
        }
    }
}
