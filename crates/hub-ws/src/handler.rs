//! What the application does with a connection.

use std::future::Future;
use std::net::SocketAddr;

use hub::{ConnId, Event, Hub, Message, Metadata, SendError};

use crate::{Close, Ended, Handshake, Refusal};

/// The application's side of a WebSocket session: what incoming messages
/// mean, and what happens when a client arrives or leaves.
///
/// The same adapter serves a chat broadcast, an echo endpoint or any other
/// protocol; only the handler differs. Methods may be written as `async fn`.
///
/// ```
/// use hub::Message;
/// use hub_ws::{Close, Ended, Handler, Session};
///
/// /// Broadcast every message; tell the others when someone leaves.
/// struct Chat;
///
/// impl Handler for Chat {
///     async fn on_message(&self, session: &Session, message: Message) -> Result<(), Close> {
///         if let Some(text) = message.as_text() {
///             session.hub().broadcast(format!("Client says: {text}"));
///         }
///         Ok(())
///     }
///
///     async fn on_close(&self, session: &Session, _ended: &Ended) {
///         session.hub().broadcast("A client disconnected");
///     }
/// }
/// # let _ = hub_ws::WsServer::new(hub::Hub::new(), Chat);
/// ```
pub trait Handler: Send + Sync + 'static {
    /// Decides, before the upgrade, whether a handshake may open a session
    /// and who the client is: return the metadata to register the
    /// connection with (typically `metadata` with the user id and name
    /// from a verified token), or a [`Refusal`] (`401`, `403`...) sent
    /// instead of `101 Switching Protocols`.
    ///
    /// `metadata` is what the caller of [`WsServer::upgrade`] (or
    /// [`serve_tcp`](crate::WsServer::serve_tcp)...) passed. Runs after the
    /// Origin check and before the connection limits are counted, on the
    /// task answering the request: keep it quick and non-blocking (check a
    /// signature, not a database; an application that must look a
    /// credential up can do it before calling `upgrade`). The default
    /// accepts everyone as they are.
    ///
    /// [`WsServer::upgrade`]: crate::WsServer::upgrade
    ///
    /// ```
    /// use hub::{Message, Metadata};
    /// use hub_ws::{Close, Handler, Handshake, Refusal, Session};
    ///
    /// struct Members;
    ///
    /// impl Handler for Members {
    ///     fn authenticate(
    ///         &self,
    ///         handshake: &Handshake<'_>,
    ///         metadata: Metadata,
    ///     ) -> Result<Metadata, Refusal> {
    ///         match handshake.query("key").as_deref() {
    ///             Some("letmein") => Ok(metadata.with_user("member")),
    ///             Some(_) => Err(Refusal::forbidden("unknown key")),
    ///             None => Err(Refusal::unauthorized("a key is required")),
    ///         }
    ///     }
    ///
    ///     async fn on_message(&self, session: &Session, message: Message) -> Result<(), Close> {
    ///         session.hub().broadcast(message);
    ///         Ok(())
    ///     }
    /// }
    /// # let _ = hub_ws::WsServer::new(hub::Hub::new(), Members);
    /// ```
    fn authenticate(
        &self,
        handshake: &Handshake<'_>,
        metadata: Metadata,
    ) -> Result<Metadata, Refusal> {
        let _ = handshake;
        Ok(metadata)
    }

    /// Called once the connection is registered with the hub, before its
    /// first message is read.
    fn on_open(&self, session: &Session) -> impl Future<Output = ()> + Send {
        let _ = session;
        async {}
    }

    /// Called for each text or binary message, in order; the next message is
    /// not read until this returns (backpressure on that client only).
    /// Return `Err(close)` to close the connection with that frame.
    ///
    /// # Cancel safety
    ///
    /// When the session ends from the other side (the hub disconnects the
    /// client or shuts down, or writes to the client time out), a call still
    /// running is dropped at its next `.await`. Keep each step of it safe to
    /// stop, as in any `tokio::select!` branch.
    fn on_message(
        &self,
        session: &Session,
        message: Message,
    ) -> impl Future<Output = Result<(), Close>> + Send;

    /// Called when a message from this client was dropped by the
    /// [rate limit](crate::Config::rate_limit); `dropped` counts the drops
    /// in a row. The message returned, if any, is queued for the client
    /// (without waiting). The default tells it nothing.
    fn on_throttled(&self, session: &Session, dropped: u32) -> Option<Message> {
        let _ = (session, dropped);
        None
    }

    /// Turns what the hub delivers to this client into the message written
    /// to its socket, or `None` to write nothing. Called in the writer, for
    /// every event, in order.
    ///
    /// The default writes the message of personal messages and broadcasts as
    /// it is, and nothing for notices ([`Event::Lagged`], [`Event::Resync`]).
    /// Override it to frame messages (say, as JSON with their topic and
    /// offset) or to tell the client it has a gap.
    fn render(&self, session: &Session, event: Event) -> Option<Message> {
        let _ = session;
        event.into_message()
    }

    /// Called once when the session ends, after the connection has left the
    /// hub (so a broadcast from here does not reach it) and the server's
    /// close frame, if any, was sent. The close handshake waits for it: keep
    /// it short.
    fn on_close(&self, session: &Session, ended: &Ended) -> impl Future<Output = ()> + Send {
        let _ = (session, ended);
        async {}
    }
}

/// One client's session, as its [`Handler`] sees it.
#[derive(Clone, Debug)]
pub struct Session {
    id: ConnId,
    hub: Hub,
    metadata: Metadata,
    peer: Option<SocketAddr>,
}

impl Session {
    pub(crate) fn new(id: ConnId, hub: Hub, metadata: Metadata, peer: Option<SocketAddr>) -> Self {
        Self {
            id,
            hub,
            metadata,
            peer,
        }
    }

    /// The connection's id in the hub.
    #[must_use]
    pub fn id(&self) -> ConnId {
        self.id
    }

    /// The hub the connection belongs to.
    #[must_use]
    pub fn hub(&self) -> &Hub {
        &self.hub
    }

    /// The metadata the connection was registered with.
    #[must_use]
    pub fn metadata(&self) -> &Metadata {
        &self.metadata
    }

    /// The client's address, when the transport knows it.
    #[must_use]
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.peer
    }

    /// Sends `message` to this client alone, waiting while its personal
    /// queue is full. Waiting holds up only this client's next read.
    ///
    /// # Errors
    ///
    /// [`SendError::UnknownConnection`] if the connection has already left
    /// the hub.
    ///
    /// # Cancel safety
    ///
    /// Cancel safe: if dropped early, the message was not queued.
    pub async fn send(&self, message: impl Into<Message>) -> Result<(), SendError> {
        self.hub.send_personal(self.id, message).await
    }
}
