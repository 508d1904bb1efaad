//! One connection's end of the hub.

use std::fmt;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use futures_core::Stream;
use tokio::sync::broadcast::error::{
    RecvError as BroadcastRecvError, TryRecvError as BroadcastTryRecvError,
};
use tokio::sync::mpsc::error::TryRecvError as MpscTryRecvError;
use tokio::sync::{broadcast, mpsc};
use tokio_util::sync::ReusableBoxFuture;

use crate::error::{RecvError, TryRecvError};
use crate::hub::{Envelope, Inner, Membership, SlowConsumer};
use crate::stats::Counters;
use crate::{ConnId, Message, Metadata};

/// What a connection receives from the hub.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum Event {
    /// A broadcast or personal message.
    Message(Message),
    /// The connection fell behind and missed `missed` broadcast messages;
    /// it continues with the oldest one still available. Only under
    /// [`SlowConsumer::Skip`].
    Lagged {
        /// How many broadcast messages were missed.
        missed: u64,
    },
}

/// A connection registered with a [`Hub`](crate::Hub): it receives what the
/// hub delivers to it.
///
/// Read with [`recv`](Self::recv) (or [`try_recv`](Self::try_recv), or as a
/// [`Stream`] through [`into_stream`](Self::into_stream)). Personal messages
/// come before broadcasts that are waiting at the same time; each kind
/// arrives in the order it was sent.
///
/// Dropping the connection disconnects it.
pub struct Connection {
    id: ConnId,
    metadata: Metadata,
    inner: Arc<Inner>,
    fanout: broadcast::Receiver<Envelope>,
    personal: mpsc::Receiver<Message>,
    membership: Arc<Membership>,
    /// Removed from the hub: hand out the broadcasts already waiting, then
    /// close.
    draining: bool,
    closed: Option<RecvError>,
}

enum Step {
    Deliver(Message),
    Skip,
    Lagged(u64),
    Closed(RecvError),
}

impl Connection {
    pub(crate) fn new(
        id: ConnId,
        metadata: Metadata,
        inner: Arc<Inner>,
        fanout: broadcast::Receiver<Envelope>,
        personal: mpsc::Receiver<Message>,
        membership: Arc<Membership>,
    ) -> Self {
        Self {
            id,
            metadata,
            inner,
            fanout,
            personal,
            membership,
            draining: false,
            closed: None,
        }
    }

    /// This connection's id, for [`Hub::try_send_personal`](crate::Hub::try_send_personal)
    /// and [`Hub::broadcast_except`](crate::Hub::broadcast_except).
    #[must_use]
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// The metadata this connection was registered with.
    #[must_use]
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
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
        if let Some(closed) = self.closed {
            return Err(closed);
        }
        loop {
            if self.draining {
                let step = self.drain_step();
                if let Some(result) = self.finish(step) {
                    return result;
                }
                continue;
            }
            let step = tokio::select! {
                biased;
                personal = self.personal.recv() => match personal {
                    Some(message) => Step::Deliver(message),
                    None => {
                        self.draining = true;
                        Step::Skip
                    }
                },
                fanout = self.fanout.recv() => match fanout {
                    Ok(envelope) => self.accept(envelope),
                    Err(BroadcastRecvError::Lagged(missed)) => Step::Lagged(missed),
                    Err(BroadcastRecvError::Closed) => Step::Closed(RecvError::Shutdown),
                },
            };
            if let Some(result) = self.finish(step) {
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
    pub fn try_recv(&mut self) -> Result<Event, TryRecvError> {
        if let Some(closed) = self.closed {
            return Err(closed.into());
        }
        loop {
            let step = match self.personal.try_recv() {
                Ok(message) => Step::Deliver(message),
                Err(MpscTryRecvError::Disconnected) => {
                    self.draining = true;
                    self.drain_step()
                }
                Err(MpscTryRecvError::Empty) => match self.fanout.try_recv() {
                    Ok(envelope) => self.accept(envelope),
                    Err(BroadcastTryRecvError::Empty) => return Err(TryRecvError::Empty),
                    Err(BroadcastTryRecvError::Lagged(missed)) => Step::Lagged(missed),
                    Err(BroadcastTryRecvError::Closed) => Step::Closed(RecvError::Shutdown),
                },
            };
            if let Some(result) = self.finish(step) {
                return result.map_err(TryRecvError::from);
            }
        }
    }

    /// Turns the connection into a [`Stream`] of events. The stream yields
    /// the closing [`RecvError`] once, then ends.
    ///
    /// ```
    /// use futures_util::StreamExt;
    /// use hub::{Event, Hub, Message, RecvError};
    ///
    /// # #[tokio::main(flavor = "current_thread")]
    /// # async fn main() -> Result<(), Box<dyn std::error::Error>> {
    /// let hub = Hub::new();
    /// let connection = hub.connect()?;
    /// let id = connection.id();
    /// let mut events = connection.into_stream();
    ///
    /// hub.broadcast("one");
    /// hub.disconnect(id);
    /// assert_eq!(events.next().await, Some(Ok(Event::Message(Message::text("one")))));
    /// assert_eq!(events.next().await, Some(Err(RecvError::Disconnected)));
    /// assert_eq!(events.next().await, None);
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn into_stream(self) -> Events {
        Events {
            id: self.id,
            next: Some(ReusableBoxFuture::new(next_event(self))),
        }
    }

    /// After removal: the next broadcast sent before the removal, or the
    /// close.
    fn drain_step(&mut self) -> Step {
        let (reason, cutoff) = match self.membership.removal() {
            Some(removal) => (removal.reason, removal.cutoff),
            None => (RecvError::Disconnected, 0),
        };
        match self.fanout.try_recv() {
            Ok(envelope) if envelope.seq < cutoff => self.accept(envelope),
            Err(BroadcastTryRecvError::Lagged(missed)) => Step::Lagged(missed),
            Ok(_) | Err(BroadcastTryRecvError::Empty | BroadcastTryRecvError::Closed) => {
                Step::Closed(reason)
            }
        }
    }

    fn accept(&self, envelope: Envelope) -> Step {
        if envelope.except == Some(self.id) {
            Step::Skip
        } else {
            Step::Deliver(envelope.message)
        }
    }

    /// Applies a step: `None` means "keep reading".
    fn finish(&mut self, step: Step) -> Option<Result<Event, RecvError>> {
        match step {
            Step::Deliver(message) => Some(Ok(Event::Message(message))),
            Step::Skip => None,
            Step::Lagged(missed) => {
                Counters::add(&self.inner.counters.lagged, 1);
                Counters::add(&self.inner.counters.missed, missed);
                match self.inner.slow_consumer {
                    SlowConsumer::Skip => Some(Ok(Event::Lagged { missed })),
                    SlowConsumer::Disconnect => {
                        let closed = RecvError::Lagged { missed };
                        self.inner.remove(self.id, closed);
                        self.closed = Some(closed);
                        Some(Err(closed))
                    }
                }
            }
            Step::Closed(closed) => {
                self.closed = Some(closed);
                Some(Err(closed))
            }
        }
    }
}

impl Drop for Connection {
    fn drop(&mut self) {
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

type Next = (Result<Event, RecvError>, Connection);

async fn next_event(mut connection: Connection) -> Next {
    let result = connection.recv().await;
    (result, connection)
}

/// A [`Connection`] as a [`Stream`] of events; see
/// [`Connection::into_stream`]. Dropping it disconnects the connection.
pub struct Events {
    id: ConnId,
    next: Option<ReusableBoxFuture<'static, Next>>,
}

impl Events {
    /// The id of the underlying connection.
    #[must_use]
    pub fn id(&self) -> ConnId {
        self.id
    }
}

impl Stream for Events {
    type Item = Result<Event, RecvError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let Some(next) = self.next.as_mut() else {
            return Poll::Ready(None);
        };
        let (result, connection) = ready!(next.poll(cx));
        match result {
            Ok(_) => next.set(next_event(connection)),
            Err(_) => self.next = None,
        }
        Poll::Ready(Some(result))
    }
}

impl fmt::Debug for Events {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Events")
            .field("id", &self.id)
            .field("ended", &self.next.is_none())
            .finish()
    }
}
