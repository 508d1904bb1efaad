//! Sockets of other WebSocket libraries (axum's, tokio-tungstenite's)
//! seen as [`Frame`]s, converting their messages one for one.

use std::pin::Pin;
use std::task::{ready, Context, Poll};

use futures_util::{Sink, Stream};

use crate::frame::{Frame, ReadError};

/// A socket that reads and writes messages of its own library's type.
pub(crate) trait MessageSocket:
    Stream<Item = Result<Self::Message, Self::ReadError>> + Sink<Self::Message> + Unpin
{
    type Message;
    type ReadError;

    /// A message read, or the error reading it, as a frame.
    fn incoming(item: Result<Self::Message, Self::ReadError>) -> Result<Frame, ReadError>;

    /// A frame to write, as a message.
    fn outgoing(frame: Frame) -> Self::Message;
}

/// A [`MessageSocket`] as a stream and sink of frames.
pub(crate) struct Adapted<S>(pub(crate) S);

impl<S: MessageSocket> Stream for Adapted<S> {
    type Item = Result<Frame, ReadError>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let item = ready!(Pin::new(&mut self.0).poll_next(cx));
        Poll::Ready(item.map(S::incoming))
    }
}

impl<S: MessageSocket> Sink<Frame> for Adapted<S> {
    type Error = <S as Sink<S::Message>>::Error;

    fn poll_ready(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.0).poll_ready(cx)
    }

    fn start_send(mut self: Pin<&mut Self>, frame: Frame) -> Result<(), Self::Error> {
        Pin::new(&mut self.0).start_send(S::outgoing(frame))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_close(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Pin::new(&mut self.0).poll_close(cx)
    }
}
