//! Drives one WebSocket session: a reader feeding the handler and a writer
//! draining the hub, in one task.

use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use hub::{Connection, Event, Message, RecvError, Text, TryRecvError};
use tokio::time::{self, Instant, MissedTickBehavior};
use tokio_tungstenite::tungstenite::error::{Error as WsError, ProtocolError};
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode as WsCloseCode;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::{Message as WsMessage, Utf8Bytes};

use crate::{Close, CloseCode, Config, Ended, Handler, Session};

/// Most hub messages written to the socket before one flush.
const MAX_BATCH: usize = 64;

/// Serves one session until it ends; the connection leaves the hub before
/// `on_close` runs.
pub(crate) async fn drive<S, H>(
    socket: S,
    connection: Connection,
    session: Session,
    handler: &H,
    config: &Config,
) -> Ended
where
    S: Stream<Item = Result<WsMessage, WsError>> + Sink<WsMessage, Error = WsError> + Unpin,
    H: Handler,
{
    let (mut sink, mut stream) = socket.split();
    let mut connection = connection;
    handler.on_open(&session).await;
    let ended = {
        let reader = read_loop(&mut stream, &session, handler, config);
        let writer = write_loop(&mut sink, &mut connection, config);
        tokio::select! {
            ended = reader => ended,
            ended = writer => ended,
        }
    };
    drop(connection);
    tracing::debug!(id = %session.id(), ?ended, "session ended");
    handler.on_close(&session, &ended).await;
    finish_close(&mut sink, &mut stream, &ended, config).await;
    ended
}

async fn read_loop<R, H>(stream: &mut R, session: &Session, handler: &H, config: &Config) -> Ended
where
    R: Stream<Item = Result<WsMessage, WsError>> + Unpin,
    H: Handler,
{
    loop {
        let frame = match time::timeout(config.idle_timeout, stream.next()).await {
            Err(_) => return server_close(CloseCode::GOING_AWAY, "idle timeout"),
            Ok(None) => return Ended::Lost,
            Ok(Some(Err(error))) => return ended_by_error(error),
            Ok(Some(Ok(frame))) => frame,
        };
        let message = match frame {
            WsMessage::Text(text) => match Text::try_from(Bytes::from(text)) {
                Ok(text) => Message::Text(text),
                Err(_) => return server_close(CloseCode::INVALID_DATA, "invalid UTF-8"),
            },
            WsMessage::Binary(bytes) => Message::Binary(bytes),
            // Pongs to our pings are answered automatically; any frame
            // counts as a sign of life for the idle timeout.
            WsMessage::Ping(_) | WsMessage::Pong(_) | WsMessage::Frame(_) => continue,
            WsMessage::Close(frame) => {
                return match frame {
                    Some(frame) => Ended::ClientClosed {
                        code: Some(CloseCode(u16::from(frame.code))),
                        reason: frame.reason.as_str().to_owned(),
                    },
                    None => Ended::ClientClosed {
                        code: None,
                        reason: String::new(),
                    },
                }
            }
        };
        if let Err(close) = handler.on_message(session, message).await {
            return Ended::ServerClosed(close);
        }
    }
}

async fn write_loop<W>(sink: &mut W, connection: &mut Connection, config: &Config) -> Ended
where
    W: Sink<WsMessage, Error = WsError> + Unpin,
{
    let period = config.ping_interval;
    let mut ping = time::interval_at(Instant::now() + period, period);
    ping.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        let write = tokio::select! {
            event = connection.recv() => match event {
                Ok(event) => time::timeout(config.write_timeout, write_batch(sink, connection, event)).await,
                Err(closed) => return ended_by_hub(closed),
            },
            _ = ping.tick() => {
                time::timeout(config.write_timeout, sink.send(WsMessage::Ping(Bytes::new())))
                    .await
                    .map(|sent| sent.map(|()| None))
            }
        };
        match write {
            Ok(Ok(None)) => {}
            Ok(Ok(Some(closed))) => return ended_by_hub(closed),
            Ok(Err(error)) => return ended_by_error(error),
            Err(_) => {
                return server_close(
                    CloseCode::TRY_AGAIN_LATER,
                    "client is not reading; writes timed out",
                )
            }
        }
    }
}

/// Writes `first` and whatever else is ready (up to [`MAX_BATCH`]), then
/// flushes once. Returns the hub's close reason if it came up meanwhile.
async fn write_batch<W>(
    sink: &mut W,
    connection: &mut Connection,
    first: Event,
) -> Result<Option<RecvError>, WsError>
where
    W: Sink<WsMessage, Error = WsError> + Unpin,
{
    let mut next = Some(first);
    let mut closed = None;
    let mut written = 0;
    while let Some(event) = next.take() {
        match event {
            Event::Message(message) => sink.feed(to_frame(message)).await?,
            Event::Lagged { missed } => {
                tracing::warn!(id = %connection.id(), missed, "connection lagged; skipped messages");
            }
            _ => {}
        }
        written += 1;
        if written == MAX_BATCH {
            break;
        }
        match connection.try_recv() {
            Ok(event) => next = Some(event),
            Err(TryRecvError::Closed(reason)) => closed = Some(reason),
            Err(_) => {}
        }
    }
    sink.flush().await?;
    Ok(closed)
}

fn to_frame(message: Message) -> WsMessage {
    match message {
        Message::Text(text) => match Utf8Bytes::try_from(text.into_bytes()) {
            Ok(text) => WsMessage::Text(text),
            // `Text` is always UTF-8; this arm is unreachable in practice.
            Err(_) => WsMessage::Binary(Bytes::new()),
        },
        Message::Binary(bytes) => WsMessage::Binary(bytes),
        other => WsMessage::Binary(Bytes::copy_from_slice(other.as_bytes())),
    }
}

fn server_close(code: CloseCode, reason: &'static str) -> Ended {
    Ended::ServerClosed(Close::new(code, reason))
}

fn ended_by_hub(closed: RecvError) -> Ended {
    match closed {
        RecvError::Shutdown => server_close(CloseCode::GOING_AWAY, "server shutting down"),
        RecvError::Lagged { missed } => Ended::ServerClosed(Close::new(
            CloseCode::TRY_AGAIN_LATER,
            format!("fell {missed} messages behind; reconnect"),
        )),
        _ => server_close(CloseCode::NORMAL, "disconnected by the server"),
    }
}

fn ended_by_error(error: WsError) -> Ended {
    match error {
        WsError::Capacity(_) => server_close(CloseCode::TOO_BIG, "message too big"),
        WsError::Utf8(_) => server_close(CloseCode::INVALID_DATA, "invalid UTF-8"),
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => Ended::Lost,
        WsError::Protocol(_) => server_close(CloseCode::PROTOCOL, "protocol error"),
        WsError::ConnectionClosed | WsError::AlreadyClosed | WsError::Io(_) => Ended::Lost,
        _ => server_close(CloseCode::INTERNAL, "internal error"),
    }
}

/// Completes the close handshake, bounded by the close timeout.
async fn finish_close<W, R>(sink: &mut W, stream: &mut R, ended: &Ended, config: &Config)
where
    W: Sink<WsMessage, Error = WsError> + Unpin,
    R: Stream<Item = Result<WsMessage, WsError>> + Unpin,
{
    let handshake = async {
        match ended {
            Ended::Lost => {}
            // Our reply was queued when the client's frame was read.
            Ended::ClientClosed { .. } => {
                let _ = sink.close().await;
            }
            Ended::ServerClosed(close) => {
                let frame = CloseFrame {
                    code: WsCloseCode::from(close.code().0),
                    reason: Utf8Bytes::from(close.reason()),
                };
                if sink.send(WsMessage::Close(Some(frame))).await.is_ok() {
                    // Wait for the client's close frame (or the end).
                    while let Some(Ok(frame)) = stream.next().await {
                        if matches!(frame, WsMessage::Close(_)) {
                            break;
                        }
                    }
                }
            }
        }
    };
    let _ = time::timeout(config.close_timeout, handshake).await;
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};
    use std::time::Duration;

    use hub::{Hub, Metadata};
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};
    use tokio_tungstenite::tungstenite::error::CapacityError;

    use super::*;

    /// Bound on every wait; longer than the protocol timers so that tests
    /// with paused time reach them first.
    const WAIT: Duration = Duration::from_secs(120);

    /// A socket made of two channels: what the "client" sends, and what the
    /// server wrote.
    struct FakeSocket {
        incoming: UnboundedReceiver<Result<WsMessage, WsError>>,
        outgoing: UnboundedSender<WsMessage>,
    }

    impl Stream for FakeSocket {
        type Item = Result<WsMessage, WsError>;

        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.incoming.poll_recv(cx)
        }
    }

    impl Sink<WsMessage> for FakeSocket {
        type Error = WsError;

        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            Poll::Ready(Ok(()))
        }

        fn start_send(self: Pin<&mut Self>, item: WsMessage) -> Result<(), WsError> {
            self.outgoing
                .send(item)
                .map_err(|_| WsError::ConnectionClosed)
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), WsError>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Echoes text back; closes with 1008 on "forbidden"; records whether
    /// the connection was still in the hub when `on_close` ran.
    #[derive(Default)]
    struct Probe {
        registered_at_close: Mutex<Option<bool>>,
    }

    impl Handler for Arc<Probe> {
        async fn on_message(&self, session: &Session, message: Message) -> Result<(), Close> {
            if message.as_text() == Some("forbidden") {
                return Err(Close::new(CloseCode::POLICY, "forbidden"));
            }
            let _ = session.send(message).await;
            Ok(())
        }

        async fn on_close(&self, session: &Session, _ended: &Ended) {
            let registered = session.hub().contains(session.id());
            *self.registered_at_close.lock().unwrap() = Some(registered);
        }
    }

    struct Harness {
        client: UnboundedSender<Result<WsMessage, WsError>>,
        written: UnboundedReceiver<WsMessage>,
        hub: Hub,
        id: hub::ConnId,
        probe: Arc<Probe>,
        task: tokio::task::JoinHandle<Ended>,
    }

    fn start(hub: Hub, config: Config) -> Harness {
        let (client, incoming) = unbounded_channel();
        let (outgoing, written) = unbounded_channel();
        let connection = hub.connect().unwrap();
        let id = connection.id();
        let session = Session::new(id, hub.clone(), Metadata::new(), None);
        let probe = Arc::new(Probe::default());
        let handler = Arc::clone(&probe);
        let socket = FakeSocket { incoming, outgoing };
        let task =
            tokio::spawn(
                async move { drive(socket, connection, session, &handler, &config).await },
            );
        Harness {
            client,
            written,
            hub,
            id,
            probe,
            task,
        }
    }

    impl Harness {
        async fn next_written(&mut self) -> WsMessage {
            tokio::time::timeout(WAIT, self.written.recv())
                .await
                .expect("nothing written")
                .expect("socket dropped")
        }

        async fn next_close(&mut self) -> (u16, String) {
            loop {
                if let WsMessage::Close(Some(frame)) = self.next_written().await {
                    return (u16::from(frame.code), frame.reason.as_str().to_owned());
                }
            }
        }

        async fn end(self) -> (Ended, Option<bool>, bool) {
            let ended = tokio::time::timeout(WAIT, self.task)
                .await
                .expect("session did not end")
                .unwrap();
            let registered = *self.probe.registered_at_close.lock().unwrap();
            (ended, registered, self.hub.contains(self.id))
        }
    }

    fn text(s: &str) -> WsMessage {
        WsMessage::text(s.to_owned())
    }

    #[tokio::test]
    async fn writes_everything_in_order_across_batches() {
        let mut h = start(Hub::new(), Config::default());
        for i in 0..(MAX_BATCH * 3 + 5) {
            h.hub.broadcast(format!("{i}"));
        }
        for i in 0..(MAX_BATCH * 3 + 5) {
            assert_eq!(h.next_written().await, text(&i.to_string()));
        }
        // The handler's reply goes through the same writer.
        h.client.send(Ok(text("echo me"))).unwrap();
        assert_eq!(h.next_written().await, text("echo me"));
        h.client.send(Ok(WsMessage::Close(None))).unwrap();
        let (ended, registered, still) = h.end().await;
        assert_eq!(
            ended,
            Ended::ClientClosed {
                code: None,
                reason: String::new()
            }
        );
        assert_eq!((registered, still), (Some(false), false));
    }

    #[tokio::test]
    async fn lagging_closes_with_1013() {
        let hub = Hub::builder().capacity(2).build();
        // Messages pile up before the session starts reading.
        let mut h = start(hub.clone(), Config::default());
        for i in 0..10 {
            hub.broadcast(format!("{i}"));
        }
        let (code, reason) = h.next_close().await;
        assert_eq!(code, 1013);
        assert!(reason.starts_with("fell ") && reason.ends_with(" messages behind; reconnect"));
        let (ended, registered, _) = h.end().await;
        assert!(matches!(ended, Ended::ServerClosed(c) if c.code() == CloseCode::TRY_AGAIN_LATER));
        assert_eq!(registered, Some(false));
    }

    #[tokio::test]
    async fn hub_disconnect_closes_with_1000_and_shutdown_with_1001() {
        let mut h = start(Hub::new(), Config::default());
        assert!(h.hub.disconnect(h.id));
        assert_eq!(
            h.next_close().await,
            (1000, "disconnected by the server".into())
        );
        let mut h = start(Hub::new(), Config::default());
        h.hub.shutdown();
        assert_eq!(h.next_close().await, (1001, "server shutting down".into()));
    }

    #[tokio::test]
    async fn handler_close_read_errors_and_end_of_stream() {
        let mut h = start(Hub::new(), Config::default());
        h.client.send(Ok(text("forbidden"))).unwrap();
        assert_eq!(h.next_close().await, (1008, "forbidden".into()));

        let mut h = start(Hub::new(), Config::default());
        let too_long = CapacityError::MessageTooLong {
            size: 10,
            max_size: 5,
        };
        h.client.send(Err(WsError::Capacity(too_long))).unwrap();
        assert_eq!(h.next_close().await, (1009, "message too big".into()));

        // End of stream: lost, no close frame, and the hub forgot it.
        let Harness {
            client,
            task,
            hub,
            id,
            ..
        } = start(Hub::new(), Config::default());
        drop(client);
        let ended = tokio::time::timeout(WAIT, task).await.unwrap().unwrap();
        assert_eq!(ended, Ended::Lost);
        assert!(!hub.contains(id));
    }

    #[tokio::test(start_paused = true)]
    async fn pings_quiet_clients_and_closes_idle_ones() {
        let config = Config::default()
            .ping_interval(Duration::from_secs(10))
            .idle_timeout(Duration::from_secs(25));
        let mut h = start(Hub::new(), config);
        assert_eq!(h.next_written().await, WsMessage::Ping(Bytes::new()));
        // A pong is a sign of life: the idle clock restarts.
        h.client.send(Ok(WsMessage::Pong(Bytes::new()))).unwrap();
        assert_eq!(h.next_written().await, WsMessage::Ping(Bytes::new()));
        assert_eq!(h.next_close().await, (1001, "idle timeout".into()));
    }
}
