//! One connection's end of the hub.

use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::sync::Arc;
use std::task::{ready, Poll};

use tokio::sync::broadcast::error::{
    RecvError as ChannelRecvError, TryRecvError as ChannelTryRecvError,
};

use crate::builder::SlowConsumer;
use crate::error::{RecvError, TryRecvError};
use crate::inner::Inner;
use crate::mailbox::{Control, Membership};
use crate::room::{Envelope, Payload, Room, Subscribed, PENDING};
use crate::stats::Counters;
use crate::subscription::{event, recv_any, Refill, Sub, REFILL_CHUNK};
use crate::{ConnId, Event, Metadata, Topic};

/// A connection registered with a [`Hub`](crate::Hub): it receives what the
/// hub delivers to it.
///
/// Read with [`recv`](Self::recv) (or [`try_recv`](Self::try_recv), or as a
/// [`Stream`](futures_core::Stream) through [`into_stream`](Self::into_stream)). Personal messages
/// come before broadcasts that are waiting at the same time; each topic's
/// broadcasts arrive in offset order, without gaps or duplicates, or with
/// the gap announced ([`Event::Lagged`], [`Event::Resync`]).
///
/// Dropping the connection disconnects it.
pub struct Connection {
    id: ConnId,
    metadata: Metadata,
    inner: Arc<Inner>,
    subs: Vec<Sub>,
    /// Events decided but not yet handed out (history replays, notices).
    pending: VecDeque<Event>,
    membership: Arc<Membership>,
    /// Removed from the hub: hand out what was sent before, then close.
    draining: bool,
    closed: Option<RecvError>,
    /// Which topic to look at first next time, for fairness.
    turn: usize,
}

/// What woke a waiting `recv`.
enum Woke {
    /// The membership's signal: something was queued, or the removal.
    Signal,
    Topic(usize, Result<Envelope, ChannelRecvError>),
}

impl Connection {
    pub(crate) fn new(
        id: ConnId,
        metadata: Metadata,
        inner: Arc<Inner>,
        all: (Arc<Room>, Subscribed),
        membership: Arc<Membership>,
    ) -> Self {
        let (room, subscribed) = all;
        Self {
            id,
            metadata,
            inner,
            subs: vec![Sub::new(room, subscribed)],
            pending: VecDeque::new(),
            membership,
            draining: false,
            closed: None,
            turn: 0,
        }
    }

    /// This connection's id, for [`Hub::try_send_personal`](crate::Hub::try_send_personal),
    /// [`Hub::join`](crate::Hub::join) and the like.
    #[must_use]
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// The metadata this connection was registered with.
    #[must_use]
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The reason given when the connection was removed with
    /// [`Hub::disconnect_user`](crate::Hub::disconnect_user) (its
    /// [`RecvError::Removed`](crate::RecvError::Removed) has the code).
    #[must_use]
    pub fn farewell(&self) -> Option<&str> {
        self.membership.removal()?.farewell.as_deref()
    }

    /// Waits for the next event.
    ///
    /// # Errors
    ///
    /// Once the connection is closed — by [`Hub::disconnect`](crate::Hub::disconnect), by
    /// [`Hub::shutdown`](crate::Hub::shutdown), or for lagging under
    /// [`SlowConsumer::Disconnect`] — returns why, now and on every later call.
    /// Messages sent to the connection before it was removed are received
    /// first: nothing the hub accepted for it is dropped silently.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if used in `tokio::select!` and another branch wins, no
    /// message is lost.
    pub async fn recv(&mut self) -> Result<Event, RecvError> {
        loop {
            match self.try_recv() {
                Ok(event) => return Ok(event),
                Err(TryRecvError::Closed(closed)) => return Err(closed),
                Err(_) => {}
            }
            let woke = self.wait().await;
            if let Some(result) = self.take(woke) {
                return result;
            }
        }
    }

    /// Takes the next event if one is ready, without waiting.
    ///
    /// Useful to batch: after `recv` returned one event, drain what else is
    /// ready before flushing a socket.
    ///
    /// # Errors
    ///
    /// [`TryRecvError::Empty`] when nothing is ready; otherwise as
    /// [`recv`](Self::recv).
    #[inline]
    pub fn try_recv(&mut self) -> Result<Event, TryRecvError> {
        // The common case is a stream of broadcasts with nothing else
        // queued: then only the topics are looked at.
        if self.closed.is_some() || !self.pending.is_empty() || self.membership.is_raised() {
            if let Some(result) = self.try_recv_queued() {
                return result;
            }
        }
        self.try_recv_topics()
    }

    /// The closing error, a personal message, or an event decided earlier,
    /// before any broadcast. Joins, leaves and the removal are applied on
    /// the way.
    #[cold]
    #[inline(never)]
    fn try_recv_queued(&mut self) -> Option<Result<Event, TryRecvError>> {
        if let Some(closed) = self.closed {
            return Some(Err(closed.into()));
        }
        // Personal messages, joins, leaves and the removal raise a signal;
        // without it the queues are not looked at.
        if self.membership.take_signal() {
            while let Some(control) = self.membership.controls.try_recv() {
                self.apply(control);
            }
            if self.membership.removal().is_some() {
                self.draining = true;
            }
            match self.membership.personal.try_recv() {
                Ok(message) => {
                    // More may be queued: look again next time.
                    self.membership.notify();
                    return Some(Ok(Event::Personal(message)));
                }
                Err(true) => self.draining = true,
                Err(false) => {}
            }
        }
        self.pending.pop_front().map(Ok)
    }

    /// The next broadcast of the topics, in turn.
    #[inline]
    fn try_recv_topics(&mut self) -> Result<Event, TryRecvError> {
        let count = self.subs.len();
        let mut index = if self.turn < count { self.turn } else { 0 };
        for _ in 0..count {
            loop {
                if self.subs[index].refill.is_some() {
                    self.refill(index);
                    if let Some(event) = self.pending.pop_front() {
                        self.turn = index + 1;
                        return Ok(event);
                    }
                    continue;
                }
                if self.subs[index].done {
                    break;
                }
                let received = self.subs[index].receiver.try_recv();
                let result = match received {
                    Ok(envelope) => match self.next_in_line(index, envelope) {
                        Ok(event) => {
                            self.turn = index + 1;
                            return Ok(event);
                        }
                        Err(envelope) => self.accept(index, envelope),
                    },
                    Err(ChannelTryRecvError::Lagged(missed)) => self.lagged(index, missed),
                    Err(ChannelTryRecvError::Closed) => {
                        self.resubscribe(index);
                        continue;
                    }
                    Err(ChannelTryRecvError::Empty) => break,
                };
                if let Some(result) = result {
                    self.turn = index + 1;
                    return result.map_err(TryRecvError::from);
                }
            }
            index += 1;
            if index == count {
                index = 0;
            }
        }
        if self.draining {
            let reason = (self.membership.removal()).map_or(RecvError::Disconnected, |r| r.reason);
            return Err(self.close(reason).into());
        }
        Err(TryRecvError::Empty)
    }

    /// Waits until something arrives; what arrived is handed to `take`.
    async fn wait(&mut self) -> Woke {
        // Personal messages, joins, leaves and the removal all raise the
        // membership's signal: one waker for all of them, lock-free, rather
        // than a waiter on each queue.
        // The signal is looked at first, at every wake.
        let membership = &self.membership;
        let mut topics = std::pin::pin!(recv_any(&mut self.subs));
        std::future::poll_fn(|cx| {
            if membership.is_signalled(cx) {
                return Poll::Ready(Woke::Signal);
            }
            let (index, received) = ready!(topics.as_mut().poll(cx));
            Poll::Ready(Woke::Topic(index, received))
        })
        .await
    }

    fn take(&mut self, woke: Woke) -> Option<Result<Event, RecvError>> {
        match woke {
            // `try_recv` takes what the signal was for.
            Woke::Signal => {}
            Woke::Topic(index, Ok(envelope)) => {
                return match self.next_in_line(index, envelope) {
                    Ok(event) => Some(Ok(event)),
                    Err(envelope) => self.accept(index, envelope),
                }
            }
            Woke::Topic(index, Err(ChannelRecvError::Lagged(missed))) => {
                return self.lagged(index, missed)
            }
            // `try_recv` takes what went by meanwhile.
            Woke::Topic(index, Err(ChannelRecvError::Closed)) => self.resubscribe(index),
        }
        None
    }

    fn apply(&mut self, control: Control) {
        match control {
            Control::Join { room, subscribed } => {
                let topic = room.topic.clone();
                self.forget(&topic);
                if let Some(missed) = subscribed.missed {
                    Counters::add(&self.inner.counters.resyncs, 1);
                    self.pending.push_back(Event::Resync {
                        topic: topic.clone(),
                        missed,
                    });
                }
                self.subs.push(Sub::new(room, subscribed));
            }
            Control::Leave(topic) => self.forget(&topic),
        }
    }

    /// Stops reading `topic`, dropping what was pending for it.
    fn forget(&mut self, topic: &Topic) {
        self.subs.retain(|sub| &sub.room.topic != topic);
        self.pending.retain(|event| match event {
            Event::Broadcast(broadcast) => broadcast.topic() != topic,
            Event::Lagged { topic: t, .. } | Event::Resync { topic: t, .. } => t != topic,
            Event::Personal(_) => true,
        });
        self.turn = 0;
    }

    /// The common case, without the bookkeeping of [`accept`](Self::accept):
    /// the message topic `index` expects next, for this connection, with
    /// nothing else waiting. Anything else is handed back.
    #[inline]
    fn next_in_line(&mut self, index: usize, envelope: Envelope) -> Result<Event, Envelope> {
        let sub = &mut self.subs[index];
        let in_line = !self.draining
            && self.pending.is_empty()
            && envelope.epoch == sub.epoch
            && envelope.offset == sub.next
            && !envelope.except.contains(self.id);
        if in_line {
            if let Payload::Message(broadcast) = envelope.payload {
                sub.next += 1;
                return Ok(Event::Broadcast(broadcast));
            }
        }
        Err(envelope)
    }

    /// Takes in a message from topic `index`: skips duplicates and messages
    /// not for this connection, handles a gap by the slow-consumer policy.
    #[cold]
    #[inline(never)]
    fn accept(&mut self, index: usize, envelope: Envelope) -> Option<Result<Event, RecvError>> {
        if self.draining {
            let sub = &self.subs[index];
            let topic = &sub.room.topic;
            let cutoff = (self.membership.removal()).and_then(|removal| removal.cutoff(topic));
            let (epoch, cutoff) = cutoff.unwrap_or((envelope.epoch, 0));
            if envelope.epoch != epoch || envelope.offset >= cutoff {
                // What was sent before the removal and went by unseen is a
                // gap like any other.
                let from = sub.next;
                let same_epoch = sub.epoch == epoch;
                self.subs[index].done = true;
                self.subs[index].next = cutoff.max(from);
                if same_epoch && from < cutoff {
                    self.subs[index].next = from;
                    if let Err(closed) = self.fill_gap(index, from, cutoff, None) {
                        return Some(Err(closed));
                    }
                }
                return self.pending.pop_front().map(Ok);
            }
        }
        if matches!(envelope.payload, Payload::Placed) {
            return self.placed(index, &envelope).map(Ok);
        }
        let sub = &mut self.subs[index];
        if envelope.epoch != sub.epoch {
            // The topic's numbering started over (a backplane that came
            // back, or one this room follows for the first time).
            let known = sub.epoch != PENDING;
            sub.epoch = envelope.epoch;
            // One that joined before the room was placed, and fell so far
            // behind that the place went by unseen, still starts at the
            // place: what came since is a gap to repair.
            sub.next = match known {
                true => envelope.offset,
                false => (sub.room.placed_from(envelope.epoch))
                    .map_or(envelope.offset, |from| from.min(envelope.offset)),
            };
            if known {
                let topic = sub.room.topic.clone();
                Counters::add(&self.inner.counters.resyncs, 1);
                self.pending.push_back(Event::Resync {
                    topic,
                    missed: None,
                });
            }
        }
        let sub = &mut self.subs[index];
        if envelope.offset < sub.next {
            return None;
        }
        if envelope.offset > sub.next {
            let (from, to) = (sub.next, envelope.offset);
            match self.fill_gap(index, from, to, Some(envelope)) {
                Err(closed) => return Some(Err(closed)),
                // Held until the gap is refilled.
                Ok(None) => return self.pending.pop_front().map(Ok),
                Ok(Some(envelope)) => return self.deliver(index, envelope),
            }
        }
        self.deliver(index, envelope)
    }

    /// Hands out `envelope`, the message topic `index` expects next, after
    /// what is pending.
    fn deliver(&mut self, index: usize, envelope: Envelope) -> Option<Result<Event, RecvError>> {
        self.subs[index].next = envelope.offset + 1;
        let Some(event) = self.event(&self.subs[index].room.topic, envelope) else {
            return self.pending.pop_front().map(Ok);
        };
        if self.pending.is_empty() {
            return Some(Ok(event));
        }
        self.pending.push_back(event);
        self.pending.pop_front().map(Ok)
    }

    /// The backplane placed topic `index`: its next message has the
    /// envelope's epoch and offset.
    fn placed(&mut self, index: usize, envelope: &Envelope) -> Option<Event> {
        let sub = &mut self.subs[index];
        let (epoch, next) = (envelope.epoch, envelope.offset);
        if sub.epoch == epoch {
            // Resuming: what history has up to the place comes first, as
            // a replay (not a gap: the connection asked for it).
            if sub.next < next {
                sub.refill = Some(Refill::replay(next));
                self.refill(index);
            }
        } else if sub.epoch != PENDING {
            Counters::add(&self.inner.counters.resyncs, 1);
            self.pending.push_back(Event::Resync {
                topic: sub.room.topic.clone(),
                missed: None,
            });
        }
        let sub = &mut self.subs[index];
        // A resuming connection may already be past the place; one still
        // replaying gets there through the refill.
        if sub.refill.is_none() {
            sub.next = if sub.epoch == epoch {
                sub.next.max(next)
            } else {
                next
            };
        }
        sub.epoch = epoch;
        self.pending.pop_front()
    }

    /// What an envelope of `topic` means to this connection, if anything.
    fn event(&self, topic: &Topic, envelope: Envelope) -> Option<Event> {
        event(self.id, &self.inner.counters, topic, envelope)
    }

    /// Offsets `from..to` of topic `index` went by unseen, before
    /// `revealed` (if any): handles the gap by the slow-consumer policy.
    /// Gives `revealed` back to be delivered now, or `None` when it follows
    /// the gap's refill from history.
    fn fill_gap(
        &mut self,
        index: usize,
        from: u64,
        to: u64,
        revealed: Option<Envelope>,
    ) -> Result<Option<Envelope>, RecvError> {
        let counters = &self.inner.counters;
        match self.inner.slow_consumer {
            SlowConsumer::Disconnect => {
                let missed = to - from;
                Counters::add(&counters.missed, missed);
                let closed = RecvError::Lagged { missed };
                self.inner.remove(self.id, closed);
                return Err(self.close(closed));
            }
            SlowConsumer::Skip => {
                Counters::add(&counters.missed, to - from);
                self.pending.push_back(Event::Lagged {
                    topic: self.subs[index].room.topic.clone(),
                    missed: to - from,
                });
                self.subs[index].next = to;
                return Ok(revealed);
            }
            _ => {}
        }
        let sub = &mut self.subs[index];
        sub.next = from;
        sub.refill = Some(Box::new(Refill {
            to,
            replay: false,
            held: revealed,
        }));
        // The revealing message follows the refill's last chunk.
        self.refill(index);
        Ok(None)
    }

    /// Queues the next chunk of what topic `index` is refilling from
    /// history, after a [`Resync`](Event::Resync) for what history no
    /// longer has. The message that showed the gap follows its last chunk.
    fn refill(&mut self, index: usize) {
        let sub = &mut self.subs[index];
        let Some(refill) = &sub.refill else {
            return;
        };
        let (from, to, replay) = (sub.next, refill.to, refill.replay);
        let room = Arc::clone(&sub.room);
        let topic = &room.topic;
        let (id, counters) = (self.id, &self.inner.counters);
        let (pending, mut found) = (&mut self.pending, 0);
        // What history no longer has (its oldest messages, trimmed) or
        // never had (offsets a backplane skipped) is told where it is.
        let gap = |pending: &mut VecDeque<Event>, missed: u64| {
            if missed > 0 {
                Counters::add(&counters.missed, missed);
                Counters::add(&counters.resyncs, 1);
                pending.push_back(Event::Resync {
                    topic: topic.clone(),
                    missed: Some(missed),
                });
            }
        };
        let mut expected = from;
        let chunk = room.history_chunk((from, to), REFILL_CHUNK, |stored| {
            found += 1;
            gap(pending, stored.offset.saturating_sub(expected));
            expected = stored.offset + 1;
            pending.extend(event(id, counters, topic, stored.clone()));
        });
        gap(pending, chunk.next.saturating_sub(expected));
        Counters::add(
            if replay {
                &counters.replayed
            } else {
                &counters.repaired
            },
            found,
        );
        let sub = &mut self.subs[index];
        sub.next = chunk.next;
        if chunk.next >= to {
            if let Some(held) = sub.refill.take().and_then(|refill| refill.held) {
                sub.next = held.offset + 1;
                if let Some(event) = self.event(topic, held) {
                    self.pending.push_back(event);
                }
            }
        }
    }

    /// The channel overwrote messages this connection had not read.
    #[cold]
    #[inline(never)]
    fn lagged(&mut self, index: usize, missed: u64) -> Option<Result<Event, RecvError>> {
        Counters::add(&self.inner.counters.lagged, 1);
        let sub = &self.subs[index];
        sub.room.widen(sub.generation);
        if self.inner.slow_consumer == SlowConsumer::Disconnect {
            Counters::add(&self.inner.counters.missed, missed);
            let closed = RecvError::Lagged { missed };
            self.inner.remove(self.id, closed);
            return Some(Err(self.close(closed)));
        }
        // Otherwise the gap shows with the next message, and is handled there.
        None
    }

    /// The room replaced topic `index`'s channel, and this connection has
    /// read everything the old one carried: it reads the new one, after
    /// what went by on it meanwhile, from history.
    #[cold]
    #[inline(never)]
    fn resubscribe(&mut self, index: usize) {
        let sub = &mut self.subs[index];
        let (receiver, generation, epoch, next) = sub.room.resubscribe();
        sub.receiver = receiver;
        sub.generation = generation;
        if epoch != sub.epoch || sub.next >= next || sub.refill.is_some() {
            // A new epoch shows with the next message.
            return;
        }
        let mut to = next;
        if self.draining {
            let cutoff = (self.membership.removal()).and_then(|r| r.cutoff(&sub.room.topic));
            if let Some((cutoff_epoch, cutoff)) = cutoff {
                if cutoff_epoch == epoch {
                    to = to.min(cutoff);
                }
            }
        }
        if sub.next < to {
            sub.refill = Some(Box::new(Refill {
                to,
                replay: false,
                held: None,
            }));
        }
    }

    #[cold]
    #[inline(never)]
    fn close(&mut self, closed: RecvError) -> RecvError {
        self.closed = Some(closed);
        self.pending.clear();
        closed
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
        // What is still queued goes with the queue.
        self.membership.personal.detach();
        self.inner.remove(self.id, RecvError::Disconnected);
    }
}

impl fmt::Debug for Connection {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Connection")
            .field("id", &self.id)
            .field("metadata", &self.metadata)
            .field("closed", &self.closed)
            .finish_non_exhaustive()
    }
}
