//! A connection as a [`Stream`] of events.

use std::fmt;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures_core::Stream;
use tokio_util::sync::ReusableBoxFuture;

use crate::error::RecvError;
use crate::{ConnId, Connection, Event};

impl Connection {
    /// Turns the connection into a [`Stream`] of events. The stream yields
    /// the closing [`RecvError`] once, then ends.
    ///
    /// ```
    /// use futures_util::StreamExt;
    /// use hub::{Hub, Message, RecvError};
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
    /// let first = events.next().await.and_then(|e| e.ok()?.into_message());
    /// assert_eq!(first, Some(Message::text("one")));
    /// assert_eq!(events.next().await, Some(Err(RecvError::Disconnected)));
    /// assert_eq!(events.next().await, None);
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn into_stream(self) -> Events {
        Events {
            id: self.id(),
            next: Some(ReusableBoxFuture::new(next_event(self))),
        }
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
