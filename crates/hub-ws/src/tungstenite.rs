//! Sessions on a `tokio_tungstenite::WebSocketStream` the caller already
//! holds (feature `tungstenite`, on by default).

use std::future::Future;
use std::net::SocketAddr;

use bytes::Bytes;
use hub::{Message, Metadata, Text};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio_tungstenite::tungstenite::error::Error as WsError;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::frame::{CloseFrame, Utf8Bytes};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message as WsMessage;
use tokio_tungstenite::WebSocketStream;

use crate::adapted::{Adapted, MessageSocket};
use crate::frame::{Frame, ReadError, READ_BUFFER, WRITE_BUFFER};
use crate::handshake::Handshake;
use crate::session::Shared;
use crate::{Close, CloseCode, Ended, Handler, ServeError, WsServer};

impl<S: AsyncRead + AsyncWrite + Unpin> MessageSocket for WebSocketStream<S> {
    type Message = WsMessage;
    type ReadError = WsError;

    fn incoming(item: Result<WsMessage, WsError>) -> Result<Frame, ReadError> {
        item.map_err(|error| ReadError::from(&error))
            .and_then(incoming)
    }

    fn outgoing(frame: Frame) -> WsMessage {
        outgoing(frame)
    }
}

fn incoming(message: WsMessage) -> Result<Frame, ReadError> {
    Ok(match message {
        // tungstenite has checked it is UTF-8; the hub's text type checks
        // again.
        WsMessage::Text(utf8) => Text::try_from(Bytes::from(utf8))
            .map(|text| Frame::Message(Message::Text(text)))
            .map_err(|_| ReadError::InvalidUtf8)?,
        WsMessage::Binary(bytes) => Frame::Message(Message::Binary(bytes)),
        WsMessage::Ping(bytes) => Frame::Ping(bytes),
        WsMessage::Pong(bytes) => Frame::Pong(bytes),
        WsMessage::Close(frame) => Frame::Close(frame.map(|frame| {
            Close::new(
                CloseCode(frame.code.into()),
                frame.reason.as_str().to_owned(),
            )
        })),
        // Never read: tungstenite hands raw frames to writers only.
        WsMessage::Frame(_) => return Err(ReadError::Protocol),
    })
}

fn outgoing(frame: Frame) -> WsMessage {
    match frame {
        Frame::Message(Message::Text(text)) => {
            let bytes = text.into_bytes();
            // Always taken: a hub text is UTF-8.
            Utf8Bytes::try_from(bytes.clone())
                .map_or_else(|_| WsMessage::Binary(bytes), WsMessage::Text)
        }
        Frame::Message(Message::Binary(bytes)) => WsMessage::Binary(bytes),
        Frame::Message(other) => WsMessage::Binary(Bytes::copy_from_slice(other.as_bytes())),
        Frame::Ping(bytes) => WsMessage::Ping(bytes),
        Frame::Pong(bytes) => WsMessage::Pong(bytes),
        Frame::Close(close) => WsMessage::Close(close.map(|close| CloseFrame {
            code: WsCloseCode::from(close.code().sendable().0),
            reason: close.reason().into(),
        })),
    }
}

impl<H: Handler> WsServer<H> {
    /// tungstenite's settings with this server's limits: the largest
    /// message and frame, and small buffers, so that idle connections stay
    /// cheap. Pass it to the handshake (`accept_hdr_async_with_config`) of
    /// a stream you then hand to [`serve_tungstenite`](Self::serve_tungstenite).
    #[cfg_attr(docsrs, doc(cfg(feature = "tungstenite")))]
    #[must_use]
    pub fn tungstenite_config(&self) -> WebSocketConfig {
        let config = &self.inner.config;
        WebSocketConfig::default()
            .max_message_size(Some(config.max_message_size))
            .max_frame_size(Some(config.max_frame_size.min(config.max_message_size)))
            .read_buffer_size(READ_BUFFER)
            .write_buffer_size(WRITE_BUFFER)
    }

    /// Serves a session on a WebSocket that tokio-tungstenite has already
    /// accepted (from `accept_hdr_async`, or a framework built on it);
    /// returns how it ended.
    ///
    /// The session is the one [`upgrade`](Self::upgrade) and
    /// [`serve_tcp`](Self::serve_tcp) run: the same handler, keep-alive,
    /// rate limits and close codes. What comes before it is the caller's:
    /// [`accept_tungstenite`](Self::accept_tungstenite) checks the request
    /// as `upgrade` does (origin, the handler's
    /// [`authenticate`](Handler::authenticate), session limits). A caller
    /// running its own handshake accepts with
    /// [`tungstenite_config`](Self::tungstenite_config), so that this
    /// server's size limits hold (1009 past them).
    ///
    /// The built-in codec of `upgrade` and `serve_tcp` remains the faster
    /// path: it writes each broadcast's bytes, shared by every socket,
    /// behind a per-socket header, where tungstenite copies every message
    /// into each socket's buffer.
    ///
    /// ```no_run
    /// use hub::{Hub, Message, Metadata};
    /// use hub_ws::{Close, Handler, Session, WsServer};
    ///
    /// struct Echo;
    ///
    /// impl Handler for Echo {
    ///     async fn on_message(&self, session: &Session, message: Message) -> Result<(), Close> {
    ///         // A full queue drops the echo; the session goes on.
    ///         let _ = session.send(message).await;
    ///         Ok(())
    ///     }
    /// }
    ///
    /// # async fn run() -> std::io::Result<()> {
    /// let server = WsServer::new(Hub::new(), Echo);
    /// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    /// loop {
    ///     let (tcp, peer) = listener.accept().await?;
    ///     let server = server.clone();
    ///     tokio::spawn(async move {
    ///         let config = Some(server.tungstenite_config());
    ///         if let Ok(ws) = tokio_tungstenite::accept_async_with_config(tcp, config).await {
    ///             server.serve_tungstenite(ws, Metadata::new(), Some(peer)).await;
    ///         }
    ///     });
    /// }
    /// # }
    /// # fn main() { let _ = run; }
    /// ```
    #[cfg_attr(docsrs, doc(cfg(feature = "tungstenite")))]
    pub fn serve_tungstenite<S>(
        &self,
        socket: WebSocketStream<S>,
        metadata: Metadata,
        peer: Option<SocketAddr>,
    ) -> impl Future<Output = Ended> + '_
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        // Not an `async fn`, which would keep the socket twice for the
        // session's life (as taken, and where its body moves it).
        let socket = Shared::new(Adapted(socket));
        async move {
            let session = self.run(&socket, metadata, peer);
            self.inner.sessions.track_future(session).await.ended
        }
    }

    /// Accepts a WebSocket on `stream` through tokio-tungstenite, checking
    /// the request as [`upgrade`](Self::upgrade) does (origin, the
    /// handler's [`authenticate`](Handler::authenticate), session limits)
    /// with this server's size limits, and serves its session; returns how
    /// it ended.
    ///
    /// # Errors
    ///
    /// [`ServeError::Refused`] if the request was answered with an error
    /// (the client got its status), [`ServeError::Handshake`] if the
    /// handshake failed.
    #[cfg_attr(docsrs, doc(cfg(feature = "tungstenite")))]
    pub async fn accept_tungstenite<S>(
        &self,
        stream: S,
        peer: Option<SocketAddr>,
    ) -> Result<Ended, ServeError>
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let mut decided = None;
        // The callback's error type is tungstenite's: an HTTP response.
        #[allow(clippy::result_large_err)]
        let admit = |request: &Request, response: Response| {
            let handshake = Handshake::new(request.uri(), request.headers(), peer);
            match self.admit(&handshake, Metadata::new()) {
                Ok(admitted) => {
                    decided = Some(Ok(admitted));
                    Ok(response)
                }
                Err(refused) => {
                    let answer: ErrorResponse = refused.to_response();
                    decided = Some(Err(refused));
                    Err(answer)
                }
            }
        };
        let config = Some(self.tungstenite_config());
        let accepted = tokio_tungstenite::accept_hdr_async_with_config(stream, admit, config).await;
        match (accepted, decided) {
            (_, Some(Err(refused))) => Err(ServeError::Refused(refused)),
            (Ok(socket), Some(Ok((_admitted, metadata)))) => {
                Ok(self.serve_tungstenite(socket, metadata, peer).await)
            }
            (Ok(_), None) => Err(ServeError::Handshake("the request was not checked".into())),
            (Err(error), _) => Err(ServeError::Handshake(Box::new(error))),
        }
    }
}
