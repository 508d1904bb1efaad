//! Sessions from axum's own [`WebSocketUpgrade`] extractor (feature `axum`).

use std::future::Future;
use std::net::SocketAddr;

use axum::extract::ws::{
    CloseFrame, Message as AxumMessage, Utf8Bytes, WebSocket, WebSocketUpgrade,
};
use axum::extract::ConnectInfo;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hub::{Message, Metadata, Text};
use tokio_tungstenite::tungstenite::error::Error as WsError;

use crate::adapted::{Adapted, MessageSocket};
use crate::frame::{Frame, ReadError, READ_BUFFER, WRITE_BUFFER};
use crate::session::Shared;
use crate::{Close, CloseCode, Ended, Handler, Handshake, PeerAddr, WsServer};

impl MessageSocket for WebSocket {
    type Message = AxumMessage;
    type ReadError = axum::Error;

    fn incoming(item: Result<AxumMessage, axum::Error>) -> Result<Frame, ReadError> {
        item.map_err(classify).and_then(incoming)
    }

    fn outgoing(frame: Frame) -> AxumMessage {
        outgoing(frame)
    }
}

fn incoming(message: AxumMessage) -> Result<Frame, ReadError> {
    Ok(match message {
        // axum has checked it is UTF-8; the hub's text type checks again.
        AxumMessage::Text(utf8) => Text::try_from(Bytes::from(utf8))
            .map(|text| Frame::Message(Message::Text(text)))
            .map_err(|_| ReadError::InvalidUtf8)?,
        AxumMessage::Binary(bytes) => Frame::Message(Message::Binary(bytes)),
        AxumMessage::Ping(bytes) => Frame::Ping(bytes),
        AxumMessage::Pong(bytes) => Frame::Pong(bytes),
        AxumMessage::Close(frame) => Frame::Close(
            frame.map(|frame| Close::new(CloseCode(frame.code), frame.reason.as_str().to_owned())),
        ),
    })
}

fn outgoing(frame: Frame) -> AxumMessage {
    match frame {
        Frame::Message(Message::Text(text)) => {
            let bytes = text.into_bytes();
            // Always taken: a hub text is UTF-8.
            Utf8Bytes::try_from(bytes.clone())
                .map_or_else(|_| AxumMessage::Binary(bytes), AxumMessage::Text)
        }
        Frame::Message(Message::Binary(bytes)) => AxumMessage::Binary(bytes),
        Frame::Message(other) => AxumMessage::Binary(Bytes::copy_from_slice(other.as_bytes())),
        Frame::Ping(bytes) => AxumMessage::Ping(bytes),
        Frame::Pong(bytes) => AxumMessage::Pong(bytes),
        Frame::Close(close) => AxumMessage::Close(close.map(|close| CloseFrame {
            code: close.code().sendable().0,
            reason: close.reason().into(),
        })),
    }
}

/// axum wraps the tungstenite error it got; this crate uses the same
/// tungstenite, so the kind of error (and its close code) survives.
fn classify(error: axum::Error) -> ReadError {
    match error.into_inner().downcast::<WsError>() {
        Ok(error) => ReadError::from(&*error),
        Err(_) => ReadError::Lost,
    }
}

impl<H: Handler> WsServer<H> {
    /// Answers axum's [`WebSocketUpgrade`] extractor: checks the request
    /// (pass its [`Parts`], an axum extractor too) for its `Origin`, the
    /// handler's [`authenticate`](Handler::authenticate) and the connection
    /// limits, applies this server's message limits, and serves the session
    /// once the connection is upgraded. Return the response from your axum
    /// handler.
    ///
    /// The client's address comes from axum's [`ConnectInfo`] (serve with
    /// `into_make_service_with_connect_info::<SocketAddr>()`) or a
    /// [`PeerAddr`] extension; without either, per-address limits do not
    /// apply.
    ///
    /// ```
    /// use axum::extract::{State, WebSocketUpgrade};
    /// use axum::http::request::Parts;
    /// use axum::response::Response;
    /// use axum::routing::get;
    /// use axum::Router;
    /// use hub::{Hub, Message, Metadata};
    /// use hub_ws::{Close, Handler, Session, WsServer};
    ///
    /// struct Chat;
    ///
    /// impl Handler for Chat {
    ///     async fn on_message(&self, session: &Session, message: Message) -> Result<(), Close> {
    ///         session.hub().broadcast(message);
    ///         Ok(())
    ///     }
    /// }
    ///
    /// async fn ws(
    ///     upgrade: WebSocketUpgrade,
    ///     State(chat): State<WsServer<Chat>>,
    ///     parts: Parts,
    /// ) -> Response {
    ///     chat.axum_upgrade(upgrade, &parts, Metadata::new())
    /// }
    ///
    /// let app: Router = Router::new()
    ///     .route("/ws", get(ws))
    ///     .with_state(WsServer::new(Hub::new(), Chat));
    /// # let _ = app;
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
    pub fn axum_upgrade(
        &self,
        upgrade: WebSocketUpgrade,
        parts: &Parts,
        metadata: Metadata,
    ) -> Response {
        let extensions = &parts.extensions;
        let peer = extensions.get::<PeerAddr>().map(|peer| peer.0).or_else(|| {
            extensions
                .get::<ConnectInfo<SocketAddr>>()
                .map(|info| info.0)
        });
        let handshake = Handshake::new(&parts.uri, &parts.headers, peer);
        let (admitted, metadata) = match self.admit(&handshake, metadata) {
            Ok(admitted) => admitted,
            Err(refused) => return refused.to_response::<String>().into_response(),
        };
        let config = &self.inner.config;
        let server = self.clone();
        upgrade
            .max_message_size(config.max_message_size)
            .max_frame_size(config.max_frame_size.min(config.max_message_size))
            .read_buffer_size(READ_BUFFER)
            .write_buffer_size(WRITE_BUFFER)
            .on_upgrade(move |socket| async move {
                let _admitted = admitted;
                server.serve_axum(socket, metadata, peer).await;
            })
    }

    /// Serves a session on a socket axum has already upgraded; returns how
    /// it ended. Prefer [`axum_upgrade`](Self::axum_upgrade), which also
    /// applies this server's message size limits.
    #[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
    pub fn serve_axum(
        &self,
        socket: WebSocket,
        metadata: Metadata,
        peer: Option<SocketAddr>,
    ) -> impl Future<Output = Ended> + '_ {
        // Not an `async fn`, which would keep the socket twice for the
        // session's life (as taken, and where its body moves it).
        let socket = Shared::new(Adapted(socket));
        async move {
            let session = self.run(&socket, metadata, peer);
            self.inner.sessions.track_future(session).await.ended
        }
    }
}
