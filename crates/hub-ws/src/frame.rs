//! What the session driver reads and writes, whatever WebSocket library
//! carries it: [`Frame`]s in, [`Frame`]s out, read errors sorted by the close
//! code they deserve.

use std::fmt;
use std::marker::PhantomData;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use bytes::Bytes;
use futures_util::{Sink, Stream};
use hub::{Message, Text};
use tokio_tungstenite::tungstenite::error::{Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::Message as WsMessage;

use crate::{Close, CloseCode};

/// One WebSocket message or control frame.
#[derive(Clone, Debug, PartialEq, Eq)]
pub(crate) enum Frame {
    Message(Message),
    Ping(Bytes),
    Pong(Bytes),
    Close(Option<Close>),
}

/// Why reading from a client failed, by the close code it deserves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum ReadError {
    /// 1009.
    TooBig,
    /// 1007.
    InvalidUtf8,
    /// 1002.
    Protocol,
    /// The connection is gone; no close frame can be sent.
    Lost,
    /// 1011.
    Other,
}

/// A WebSocket library's message and error types, seen as [`Frame`]s.
pub(crate) trait Wire: Sized {
    /// The library's read and write error.
    type Error: fmt::Display;

    /// `None` for frames the driver never sees (raw frames).
    fn into_frame(self) -> Result<Option<Frame>, ReadError>;

    fn from_frame(frame: Frame) -> Self;

    fn classify(error: Self::Error) -> ReadError;
}

/// Adapts a library's socket (a `Stream` and `Sink` of its messages) to
/// [`Frame`]s.
pub(crate) struct Framed<S, M> {
    inner: S,
    wire: PhantomData<fn(M) -> M>,
}

impl<S, M> Framed<S, M> {
    pub(crate) fn new(inner: S) -> Self {
        Self {
            inner,
            wire: PhantomData,
        }
    }

    pub(crate) fn into_inner(self) -> S {
        self.inner
    }
}

impl<S, M> Stream for Framed<S, M>
where
    S: Stream<Item = Result<M, M::Error>> + Unpin,
    M: Wire,
{
    type Item = Result<Frame, ReadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        loop {
            let item = match ready!(Pin::new(&mut self.inner).poll_next(cx)) {
                None => return Poll::Ready(None),
                Some(Err(error)) => Err(M::classify(error)),
                Some(Ok(message)) => match message.into_frame() {
                    Ok(Some(frame)) => Ok(frame),
                    Ok(None) => continue,
                    Err(error) => Err(error),
                },
            };
            return Poll::Ready(Some(item));
        }
    }
}

impl<S, M> Sink<Frame> for Framed<S, M>
where
    S: Sink<M, Error = M::Error> + Unpin,
    M: Wire,
{
    type Error = M::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_ready(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, frame: Frame) -> Result<(), Self::Error> {
        Pin::new(&mut self.inner).start_send(M::from_frame(frame))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.inner).poll_close(cx)
    }
}

/// A frame to write, in the shape every WebSocket library's message has.
pub(crate) enum Outgoing {
    /// UTF-8 bytes (a library's own UTF-8 type accepts them unchanged).
    Text(Bytes),
    Binary(Bytes),
    Ping(Bytes),
    Pong(Bytes),
    /// A code that may be sent, and the reason.
    Close(Option<(u16, String)>),
}

impl Frame {
    pub(crate) fn outgoing(self) -> Outgoing {
        match self {
            Self::Message(Message::Text(text)) => Outgoing::Text(text.into_bytes()),
            Self::Message(Message::Binary(bytes)) => Outgoing::Binary(bytes),
            Self::Message(other) => Outgoing::Binary(Bytes::copy_from_slice(other.as_bytes())),
            Self::Ping(bytes) => Outgoing::Ping(bytes),
            Self::Pong(bytes) => Outgoing::Pong(bytes),
            Self::Close(close) => Outgoing::Close(
                close.map(|close| (close.code().sendable().0, close.reason().to_owned())),
            ),
        }
    }
}

/// A library's UTF-8 type from bytes that are UTF-8 already; the fallback
/// (an empty binary message) is never taken, as `Text` is always UTF-8.
pub(crate) fn utf8<U: TryFrom<Bytes>>(bytes: Bytes) -> Result<U, Bytes> {
    U::try_from(bytes).map_err(|_| Bytes::new())
}

/// Text from the wire; the library has already checked it is UTF-8.
pub(crate) fn text(bytes: Bytes) -> Result<Frame, ReadError> {
    Text::try_from(bytes)
        .map(|text| Frame::Message(Message::Text(text)))
        .map_err(|_| ReadError::InvalidUtf8)
}

impl Wire for WsMessage {
    type Error = WsError;

    fn into_frame(self) -> Result<Option<Frame>, ReadError> {
        Ok(Some(match self {
            Self::Text(utf8) => text(Bytes::from(utf8))?,
            Self::Binary(bytes) => Frame::Message(Message::Binary(bytes)),
            Self::Ping(bytes) => Frame::Ping(bytes),
            Self::Pong(bytes) => Frame::Pong(bytes),
            Self::Close(frame) => Frame::Close(frame.map(|frame| {
                Close::new(
                    CloseCode(u16::from(frame.code)),
                    frame.reason.as_str().to_owned(),
                )
            })),
            Self::Frame(_) => return Ok(None),
        }))
    }

    fn from_frame(frame: Frame) -> Self {
        match frame.outgoing() {
            Outgoing::Text(text) => utf8(text).map_or_else(Self::Binary, Self::Text),
            Outgoing::Binary(bytes) => Self::Binary(bytes),
            Outgoing::Ping(bytes) => Self::Ping(bytes),
            Outgoing::Pong(bytes) => Self::Pong(bytes),
            Outgoing::Close(close) => Self::Close(close.map(|(code, reason)| CloseFrame {
                code: WsCloseCode::from(code),
                reason: reason.into(),
            })),
        }
    }

    fn classify(error: WsError) -> ReadError {
        match error {
            WsError::Capacity(_) => ReadError::TooBig,
            WsError::Utf8(_) => ReadError::InvalidUtf8,
            WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => ReadError::Lost,
            WsError::Protocol(_) => ReadError::Protocol,
            WsError::ConnectionClosed | WsError::AlreadyClosed | WsError::Io(_) => ReadError::Lost,
            _ => ReadError::Other,
        }
    }
}
