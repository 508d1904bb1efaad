//! Sessions from axum's own [`WebSocketUpgrade`] extractor (feature `axum`).

use std::net::SocketAddr;

use axum::extract::ws::{CloseFrame, Message as AxumMessage, WebSocket, WebSocketUpgrade};
use axum::extract::ConnectInfo;
use axum::http::request::Parts;
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use hub::{Message, Metadata};
use tokio_tungstenite::tungstenite::{Error as WsError, Message as WsMessage};

use crate::frame::{text, utf8, Frame, Framed, Outgoing, ReadError, Wire};
use crate::{Close, CloseCode, Ended, Handler, Handshake, PeerAddr, WsServer};

impl Wire for AxumMessage {
    type Error = axum::Error;

    fn into_frame(self) -> Result<Option<Frame>, ReadError> {
        Ok(Some(match self {
            Self::Text(utf8) => text(Bytes::from(utf8))?,
            Self::Binary(bytes) => Frame::Message(Message::Binary(bytes)),
            Self::Ping(bytes) => Frame::Ping(bytes),
            Self::Pong(bytes) => Frame::Pong(bytes),
            Self::Close(frame) => {
                Frame::Close(frame.map(|frame| {
                    Close::new(CloseCode(frame.code), frame.reason.as_str().to_owned())
                }))
            }
        }))
    }

    fn from_frame(frame: Frame) -> Self {
        match frame.outgoing() {
            Outgoing::Text(text) => utf8(text).map_or_else(Self::Binary, Self::Text),
            Outgoing::Binary(bytes) => Self::Binary(bytes),
            Outgoing::Ping(bytes) => Self::Ping(bytes),
            Outgoing::Pong(bytes) => Self::Pong(bytes),
            Outgoing::Close(close) => Self::Close(close.map(|(code, reason)| CloseFrame {
                code,
                reason: reason.into(),
            })),
        }
    }

    fn classify(error: axum::Error) -> ReadError {
        // axum wraps the tungstenite error it got; this crate uses the same
        // tungstenite, so the kind of error (and its close code) survives.
        match error.into_inner().downcast::<WsError>() {
            Ok(error) => WsMessage::classify(*error),
            Err(_) => ReadError::Lost,
        }
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
            .read_buffer_size(config.read_buffer_size())
            .write_buffer_size(config.write_buffer_size())
            .on_upgrade(move |socket| async move {
                let _admitted = admitted;
                server.serve_axum(socket, metadata, peer).await;
            })
    }

    /// Serves a session on a socket axum has already upgraded; returns how
    /// it ended. Prefer [`axum_upgrade`](Self::axum_upgrade), which also
    /// applies this server's message size limits.
    #[cfg_attr(docsrs, doc(cfg(feature = "axum")))]
    pub async fn serve_axum(
        &self,
        socket: WebSocket,
        metadata: Metadata,
        peer: Option<SocketAddr>,
    ) -> Ended {
        let socket = Framed::<_, AxumMessage>::new(socket);
        let session = self.run(socket, metadata, peer);
        self.inner.sessions.track_future(session).await.ended
    }
}
