//! Drives one WebSocket session: a reader feeding the handler and a writer
//! draining the hub, in one task.

use std::fmt;
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::AtomicU64;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use futures_util::{Sink, SinkExt, Stream, StreamExt};
use hub::{Connection, Event, RecvError, Run, TryRecvError};
use tokio::time::{self, Instant};

use crate::frame::{Frame, ReadError};
use crate::rate::{Bucket, Verdict};
use crate::stats::{Counters, Waiting};
use crate::{Close, CloseCode, Config, Ended, Handler, Session};

/// Most hub messages written to the socket before one flush.
const MAX_BATCH: usize = 256;

/// A finished session: how it ended, and the deadline for closing the
/// transport underneath gracefully.
pub(crate) struct Finished {
    pub(crate) ended: Ended,
    pub(crate) deadline: Instant,
}

/// Serves one session until it ends, then closes it: the connection leaves
/// the hub, our close frame (or the reply to the client's) goes out, the
/// handler's `on_close` runs, and the client's close frame is awaited, all
/// within the close timeout (but for `on_close` itself).
///
/// Not an `async fn`: an `async fn` keeps each argument it takes by value
/// twice, once as taken and once where its body moves it, and this future
/// is most of what an idle connection costs. An `async move` block keeps
/// them once.
#[allow(
    clippy::manual_async_fn,
    reason = "an async fn stores its arguments twice"
)]
pub(crate) fn drive<'a, S, E, H>(
    socket: &'a Shared<S>,
    mut connection: Connection,
    session: Session,
    handler: &'a H,
    config: &'a Config,
    counters: &'a Counters,
) -> impl Future<Output = Finished> + 'a
where
    S: Stream<Item = Result<Frame, ReadError>> + Sink<Frame, Error = E> + Unpin,
    E: fmt::Display,
    H: Handler,
{
    async move {
        let mut half = Half(socket);
        handler.on_open(&session).await;
        let heard = Heard::new();
        let ended = {
            let mut reader = pin!(read_loop(
                Half(socket),
                &heard,
                &session,
                handler,
                config,
                counters
            ));
            let waiting = counters.waiting(connection.id());
            let mut writer = pin!(write_loop(
                socket,
                &mut connection,
                &session,
                handler,
                (config, counters),
                (heard.start.into_std(), &waiting),
            ));
            let mut keeper = pin!(keep_alive(socket, &heard, &session, config));
            // The first of the three to end ends the session. Each is a loop
            // that ends only with it, so the order of polling is not a matter
            // of fairness.
            std::future::poll_fn(|cx| {
                if let Poll::Ready(ended) = reader.as_mut().poll(cx) {
                    return Poll::Ready(ended);
                }
                if let Poll::Ready(ended) = writer.as_mut().poll(cx) {
                    return Poll::Ready(ended);
                }
                keeper.as_mut().poll(cx)
            })
            .await
        };
        let deadline = Instant::now() + config.close_timeout;
        if let Ended::ServerClosed(_) = ended {
            // What was already queued for the client (replies, notices) goes
            // out before the close frame.
            let _ = time::timeout_at(
                deadline,
                flush_queued(&mut half, &mut connection, &session, handler, counters),
            )
            .await;
        }
        drop(connection);
        counters.ended(&ended);
        tracing::debug!(id = %session.id(), ?ended, "session ended");
        let sent = time::timeout_at(deadline, send_close(&mut half, &ended)).await;
        handler.on_close(&session, &ended).await;
        if matches!(sent, Ok(true)) {
            // The client answers our close frame with its own.
            let _ = time::timeout_at(deadline, await_close(&mut half)).await;
        }
        Finished { ended, deadline }
    }
}

/// Closes a session the hub did not take: our close frame goes out, within
/// `timeout`.
pub(crate) async fn refuse<S: Sink<Frame> + Unpin>(
    socket: &Shared<S>,
    close: Close,
    timeout: Duration,
) -> Finished {
    let deadline = Instant::now() + timeout;
    let ended = Ended::ServerClosed(close);
    let _ = time::timeout_at(deadline, send_close(&mut Half(socket), &ended)).await;
    Finished { ended, deadline }
}

/// The socket, shared by the session's reader and writer. They run in one
/// task and never at once, so the lock is never contended; it is taken
/// once per read and once per batch of writes (a split sink would take it
/// once per frame).
pub(crate) struct Shared<S>(Mutex<S>);

impl<S> Shared<S> {
    pub(crate) fn new(socket: S) -> Self {
        Self(Mutex::new(socket))
    }

    fn lock(&self) -> MutexGuard<'_, S> {
        // A panic under the lock ends the task that holds the socket.
        self.0.lock().unwrap_or_else(PoisonError::into_inner)
    }

    pub(crate) fn into_inner(self) -> S {
        self.0.into_inner().unwrap_or_else(PoisonError::into_inner)
    }
}

/// The shared socket as a `Stream` and a `Sink`, one lock per call.
struct Half<'a, S>(&'a Shared<S>);

impl<S: Stream + Unpin> Stream for Half<'_, S> {
    type Item = S::Item;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<S::Item>> {
        self.0.lock().poll_next_unpin(cx)
    }
}

impl<S: Sink<Frame> + Unpin> Sink<Frame> for Half<'_, S> {
    type Error = S::Error;

    fn poll_ready(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.lock().poll_ready_unpin(cx)
    }

    fn start_send(self: Pin<&mut Self>, frame: Frame) -> Result<(), S::Error> {
        self.0.lock().start_send_unpin(frame)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.lock().poll_flush_unpin(cx)
    }

    fn poll_close(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.0.lock().poll_close_unpin(cx)
    }
}

async fn read_loop<R, E, H>(
    mut stream: R,
    heard: &Heard,
    session: &Session,
    handler: &H,
    config: &Config,
    counters: &Counters,
) -> Ended
where
    R: Stream<Item = Result<Frame, ReadError>> + Sink<Frame, Error = E> + Unpin,
    E: fmt::Display,
    H: Handler,
{
    let mut bucket = config.rate_limit.map(Bucket::new);
    let mut read_since_turn = 0;
    loop {
        let frame = match stream.next().await {
            None => return Ended::Lost,
            Some(Err(error)) => return ended_by_read_error(error),
            Some(Ok(frame)) => frame,
        };
        // Any frame counts as a sign of life for the idle timeout.
        heard.now();
        let message = match frame {
            Frame::Message(message) => message,
            // Pings are answered by the socket, but count against the rate
            // limit so a ping flood is bounded too.
            Frame::Ping(_) => {
                if let Some(Verdict::Close) = bucket.as_mut().map(Bucket::take) {
                    return server_close(CloseCode::POLICY, "too many messages");
                }
                // Nothing more is read until the pong is written: a client
                // that sends pings and never reads meets backpressure, and
                // is closed like any client that stops reading.
                match within(config.write_timeout, pin!(stream.flush())).await {
                    Ok(Ok(())) => continue,
                    Ok(Err(error)) => return write_failed(session.id(), error),
                    Err(_) => return writes_timed_out(),
                }
            }
            Frame::Pong(_) => continue,
            Frame::Close(close) => {
                return Ended::ClientClosed {
                    code: close.as_ref().map(Close::code),
                    reason: close.map(|c| c.reason().to_owned()).unwrap_or_default(),
                }
            }
        };
        match bucket.as_mut().map_or(Verdict::Pass, Bucket::take) {
            Verdict::Pass => {}
            Verdict::Drop(dropped) => {
                counters.throttled();
                // Never waits: a flooding client is not owed backpressure.
                if let Some(notice) = handler.on_throttled(session, dropped) {
                    let _ = session.hub().try_send_personal(session.id(), notice);
                }
                continue;
            }
            Verdict::Close => return server_close(CloseCode::POLICY, "too many messages"),
        }
        counters.message_in(&message);
        let len = message.len();
        // While the handler has the message, nothing is read: the client
        // is not idle, however long that takes.
        heard.busy();
        if let Err(close) = handler.on_message(session, message).await {
            return Ended::ServerClosed(close);
        }
        heard.now();
        // The writer's turn after every so many bytes read: a client's
        // burst of large messages does not run far ahead of what is
        // written to it (its own lines coming back through a room, say).
        // Small messages are read in batches, as they are written.
        read_since_turn += len;
        if read_since_turn >= TURN_BYTES {
            read_since_turn = 0;
            tokio::task::yield_now().await;
        }
    }
}

/// Bytes of messages a session reads before its writer gets a turn.
const TURN_BYTES: usize = 64 * 1024;

/// Writes what the hub has for the client, batch after batch. `started`
/// is when the session began: latency is measured from it for messages
/// broadcast before (history replayed to a resuming client).
async fn write_loop<S, E, H>(
    socket: &Shared<S>,
    connection: &mut Connection,
    session: &Session,
    handler: &H,
    (config, counters): (&Config, &Counters),
    (started, waiting): (std::time::Instant, &Waiting<'_>),
) -> Ended
where
    S: Sink<Frame, Error = E> + Unpin,
    E: fmt::Display,
    H: Handler,
{
    let mut writes: u32 = 0;
    loop {
        let event = match connection.recv().await {
            Ok(event) => event,
            Err(closed) => return ended_by_hub(closed, connection.farewell()),
        };
        let batch = WriteBatch::new(socket, connection, event, session, handler, counters);
        let batch = match counters.measuring {
            true => batch.measured(Measure {
                started,
                waiting,
                sampled: writes % SAMPLE_EVERY == 0,
            }),
            false => batch,
        };
        writes = writes.wrapping_add(1);
        match within(config.write_timeout, pin!(batch)).await {
            Ok(Ok(None)) => {}
            Ok(Ok(Some(closed))) => return ended_by_hub(closed, connection.farewell()),
            Ok(Err(error)) => return write_failed(connection.id(), error),
            Err(_) => return writes_timed_out(),
        }
    }
}

/// When the client was last heard from: the time of the latest frame read.
/// Kept as an offset from the session's start, so that the reader can
/// note it without touching a timer.
struct Heard {
    start: Instant,
    /// Milliseconds from `start`, or [`BUSY`](Self::BUSY).
    last: AtomicU64,
}

impl Heard {
    /// The reader is busy with a message, and reads nothing meanwhile.
    const BUSY: u64 = u64::MAX;

    fn new() -> Self {
        Self {
            start: Instant::now(),
            last: AtomicU64::new(0),
        }
    }

    /// A frame was read, or the reader is ready to read again.
    fn now(&self) {
        let since = self.start.elapsed().as_millis();
        let since = u64::try_from(since).unwrap_or(Self::BUSY - 1);
        self.last.store(since.min(Self::BUSY - 1), Relaxed);
    }

    fn busy(&self) {
        self.last.store(Self::BUSY, Relaxed);
    }

    /// When the client was last heard from; now while the reader is busy.
    fn last(&self) -> Instant {
        match self.last.load(Relaxed) {
            Self::BUSY => Instant::now(),
            since => self.start + Duration::from_millis(since),
        }
    }
}

/// Pings the client every ping interval and closes it once it has been
/// silent for the idle timeout, on one timer. Frames read move the idle
/// deadline without touching the timer: when it fires early, it is set
/// again for the later deadline. The same timer bounds a ping's write,
/// when the socket does not take it at once.
async fn keep_alive<S>(
    socket: &Shared<S>,
    heard: &Heard,
    session: &Session,
    config: &Config,
) -> Ended
where
    S: Sink<Frame> + Unpin,
    S::Error: fmt::Display,
{
    let mut next_ping = Instant::now() + config.ping_interval;
    // A ping being written: the time by which it must be, and whether it
    // is queued yet.
    let mut writing: Option<(Instant, bool)> = None;
    let mut timer = pin!(time::sleep_until(next_ping));
    std::future::poll_fn(|cx| loop {
        if let Some((_, queued)) = &mut writing {
            match poll_ping(socket, queued, cx) {
                Poll::Ready(Ok(())) => writing = None,
                Poll::Ready(Err(error)) => return Poll::Ready(write_failed(session.id(), error)),
                Poll::Pending => {}
            }
        }
        let idle_at = heard.last() + config.idle_timeout;
        let wake_at = match writing {
            Some((by, _)) => by.min(idle_at),
            None => next_ping.min(idle_at),
        };
        if timer.deadline() != wake_at {
            timer.as_mut().reset(wake_at);
        }
        ready!(timer.as_mut().poll(cx));
        let now = Instant::now();
        if now >= heard.last() + config.idle_timeout {
            return Poll::Ready(server_close(CloseCode::GOING_AWAY, "idle timeout"));
        }
        match writing {
            Some((by, _)) if now >= by => return Poll::Ready(writes_timed_out()),
            Some(_) => {}
            None if now >= next_ping => {
                // A late ping does not bring the next one forward.
                next_ping = now + config.ping_interval;
                writing = Some((now + config.write_timeout, false));
            }
            None => {}
        }
    })
    .await
}

/// Queues a ping (once: `queued` says it was) and flushes it.
fn poll_ping<S: Sink<Frame> + Unpin>(
    socket: &Shared<S>,
    queued: &mut bool,
    cx: &mut Context<'_>,
) -> Poll<Result<(), S::Error>> {
    let mut sink = socket.lock();
    if !*queued {
        ready!(sink.poll_ready_unpin(cx))?;
        sink.start_send_unpin(Frame::Ping(Bytes::new()))?;
        *queued = true;
    }
    sink.poll_flush_unpin(cx)
}

fn write_failed(id: hub::ConnId, error: impl fmt::Display) -> Ended {
    tracing::debug!(%id, %error, "write failed");
    Ended::Lost
}

fn writes_timed_out() -> Ended {
    server_close(
        CloseCode::TRY_AGAIN_LATER,
        "client is not reading; writes timed out",
    )
}

/// `future`'s output, or [`Elapsed`](time::error::Elapsed) if it takes
/// longer than `limit`. A future that completes at its first poll (a write
/// the socket takes at once, the usual case) never arms a timer: arming
/// and disarming one per write costs more than the write's own work.
async fn within<F: Future>(
    limit: Duration,
    mut future: Pin<&mut F>,
) -> Result<F::Output, time::error::Elapsed> {
    let first = std::future::poll_fn(|cx| Poll::Ready(future.as_mut().poll(cx))).await;
    match first {
        Poll::Ready(output) => Ok(output),
        // Boxed: a timer kept in the session's future would cost every
        // connection its size while idle.
        Poll::Pending => Box::pin(time::timeout(limit, future)).await,
    }
}

/// Writes `first` and whatever else is ready (up to [`MAX_BATCH`]), then
/// flushes once. Returns the hub's close reason if it came up meanwhile.
/// The socket is locked once per poll, for the whole batch.
///
/// A hand-written future rather than an `async fn`: it lives in every
/// session's task, and this way it holds only what it needs.
struct WriteBatch<'a, S, H> {
    socket: &'a Shared<S>,
    connection: &'a mut Connection,
    session: &'a Session,
    handler: &'a H,
    counters: &'a Counters,
    /// Taken from the hub, not yet rendered.
    next: Option<Event>,
    /// Rendered, waiting for the socket to take it.
    held: Option<hub::Message>,
    /// The hub closed the connection meanwhile.
    closed: Option<RecvError>,
    /// Events taken so far.
    taken: usize,
    /// Messages and bytes queued, counted once the batch is.
    messages: u64,
    bytes: u64,
    /// Their sizes, counted a run at a time (in sampled writes).
    sizes: Run,
    /// What is measured of this write, if anything.
    measure: Option<Measure<'a>>,
    /// When the oldest broadcast written was sent (or the session started,
    /// if later): the write's latency, counted once it is flushed.
    oldest: Option<std::time::Instant>,
    /// The socket made the write wait: the session's queue-wait slot is
    /// set.
    waited: bool,
    /// Every message is queued: flushing.
    queued: bool,
}

/// A session's writes measured in full: one in this many (the first of
/// each run of them), so that a clock read and a few shared atomic
/// additions are spread over many writes.
const SAMPLE_EVERY: u32 = 64;

/// What a write measures: the session's start (latency counts from it for
/// messages sent before, replayed on resume), its queue-wait slot, set
/// when the socket makes the write wait, and whether this write is one of
/// the sampled ones (latency and sizes).
#[derive(Clone, Copy)]
struct Measure<'a> {
    started: std::time::Instant,
    waiting: &'a Waiting<'a>,
    sampled: bool,
}

impl<'a, S, H> WriteBatch<'a, S, H> {
    fn new(
        socket: &'a Shared<S>,
        connection: &'a mut Connection,
        first: Event,
        session: &'a Session,
        handler: &'a H,
        counters: &'a Counters,
    ) -> Self {
        Self {
            socket,
            connection,
            session,
            handler,
            counters,
            next: Some(first),
            held: None,
            closed: None,
            taken: 0,
            messages: 0,
            bytes: 0,
            sizes: Run::default(),
            measure: None,
            oldest: None,
            waited: false,
            queued: false,
        }
    }

    fn measured(mut self, measure: Measure<'a>) -> Self {
        self.measure = Some(measure);
        self
    }

    /// The socket makes the write wait: from now until it is done, the
    /// session shows in the queue waits.
    fn waits(&mut self) {
        if let (Some(measure), Some(oldest), false) = (self.measure, self.oldest, self.waited) {
            measure.waiting.since(oldest);
            self.waited = true;
        }
    }
}

impl<S, H> Future for WriteBatch<'_, S, H>
where
    S: Sink<Frame> + Unpin,
    H: Handler,
{
    type Output = Result<Option<RecvError>, S::Error>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.get_mut();
        let mut sink = this.socket.lock();
        while !this.queued {
            if this.held.is_none() {
                let Some(event) = this.next.take() else {
                    this.queued = true;
                    this.counters.messages_out(this.messages, this.bytes);
                    this.counters.sizes_out.end(&mut this.sizes);
                    break;
                };
                if let Event::Lagged { topic, missed }
                | Event::Resync {
                    topic,
                    missed: Some(missed),
                } = &event
                {
                    let id = this.connection.id();
                    tracing::debug!(%id, %topic, missed, "connection has a gap");
                }
                let sent_at = match (&event, this.measure) {
                    (Event::Broadcast(broadcast), Some(measure)) => {
                        Some(broadcast.sent_at().max(measure.started))
                    }
                    _ => None,
                };
                this.held = this.handler.render(this.session, event);
                if let (Some(at), true) = (sent_at, this.held.is_some()) {
                    this.oldest = Some(this.oldest.map_or(at, |oldest| oldest.min(at)));
                }
                this.taken += 1;
                if this.taken < MAX_BATCH {
                    match this.connection.try_recv() {
                        Ok(event) => this.next = Some(event),
                        Err(TryRecvError::Closed(reason)) => this.closed = Some(reason),
                        Err(_) => {}
                    }
                }
            }
            let Some(message) = this.held.take() else {
                continue;
            };
            match sink.poll_ready_unpin(cx) {
                Poll::Ready(Ok(())) => {}
                Poll::Ready(Err(error)) => return Poll::Ready(Err(error)),
                Poll::Pending => {
                    this.held = Some(message);
                    this.waits();
                    return Poll::Pending;
                }
            }
            this.messages += 1;
            this.bytes += message.len() as u64;
            if this.measure.is_some_and(|m| m.sampled) {
                (this.counters.sizes_out).observe_in(&mut this.sizes, message.len() as u64);
            }
            sink.start_send_unpin(Frame::Message(message))?;
        }
        if sink.poll_flush_unpin(cx)?.is_pending() {
            this.waits();
            return Poll::Pending;
        }
        if let Some(measure) = this.measure {
            if let (Some(oldest), true) = (this.oldest, measure.sampled) {
                this.counters.delivered(oldest);
            }
            if this.waited {
                measure.waiting.clear();
            }
        }
        Poll::Ready(Ok(this.closed.take()))
    }
}

fn server_close(code: CloseCode, reason: &'static str) -> Ended {
    Ended::ServerClosed(Close::new(code, reason))
}

/// How the session ends when the hub closed its connection; `farewell`
/// is the reason given to [`hub::Hub::disconnect_user`].
fn ended_by_hub(closed: RecvError, farewell: Option<&str>) -> Ended {
    match closed {
        RecvError::Removed { code } => Ended::ServerClosed(Close::new(
            CloseCode(code).sendable(),
            farewell.unwrap_or("disconnected by the server").to_owned(),
        )),
        RecvError::Shutdown => server_close(CloseCode::GOING_AWAY, "server shutting down"),
        RecvError::Lagged { missed } => Ended::ServerClosed(Close::new(
            CloseCode::TRY_AGAIN_LATER,
            format!("fell {missed} messages behind; reconnect"),
        )),
        RecvError::Overloaded { .. } => server_close(
            CloseCode::TRY_AGAIN_LATER,
            "server overloaded: too much queued for this client; reconnect",
        ),
        _ => server_close(CloseCode::NORMAL, "disconnected by the server"),
    }
}

fn ended_by_read_error(error: ReadError) -> Ended {
    match error {
        ReadError::TooBig => server_close(CloseCode::TOO_BIG, "message too big"),
        ReadError::InvalidUtf8 => server_close(CloseCode::INVALID_DATA, "invalid UTF-8"),
        ReadError::Protocol => server_close(CloseCode::PROTOCOL, "protocol error"),
        ReadError::Lost => Ended::Lost,
        ReadError::Other => server_close(CloseCode::INTERNAL, "internal error"),
    }
}

/// Writes what is ready for the client now, without waiting for more.
async fn flush_queued<W, H>(
    sink: &mut W,
    connection: &mut Connection,
    session: &Session,
    handler: &H,
    counters: &Counters,
) -> Result<(), W::Error>
where
    W: Sink<Frame> + Unpin,
    H: Handler,
{
    while let Ok(event) = connection.try_recv() {
        if let Some(message) = handler.render(session, event) {
            counters.messages_out(1, message.len() as u64);
            if counters.measuring {
                counters.sizes_out.observe(message.len() as u64);
            }
            sink.feed(Frame::Message(message)).await?;
        }
    }
    sink.flush().await
}

/// Sends our close frame, or flushes the reply to the client's. Returns
/// whether the client still owes us its close frame.
async fn send_close<W: Sink<Frame> + Unpin>(sink: &mut W, ended: &Ended) -> bool {
    match ended {
        Ended::Lost => false,
        // Our reply was queued when the client's frame was read.
        Ended::ClientClosed { .. } => {
            let _ = sink.close().await;
            false
        }
        Ended::ServerClosed(close) => sink.send(Frame::Close(Some(close.clone()))).await.is_ok(),
    }
}

/// Reads (and drops) what the client still sends, up to its close frame.
async fn await_close<R>(stream: &mut R)
where
    R: Stream<Item = Result<Frame, ReadError>> + Unpin,
{
    while let Some(Ok(frame)) = stream.next().await {
        if matches!(frame, Frame::Close(_)) {
            break;
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};
    use std::task::{Context, Poll};
    use std::time::Duration;

    use hub::{Hub, Message, Metadata};
    use tokio::sync::mpsc::{unbounded_channel, UnboundedReceiver, UnboundedSender};

    use super::*;

    /// Bound on every wait; longer than the protocol timers so that tests
    /// with paused time reach them first.
    const WAIT: Duration = Duration::from_secs(120);

    /// A socket made of two channels: what the "client" sends, and what the
    /// server wrote.
    struct FakeSocket {
        incoming: UnboundedReceiver<Result<Frame, ReadError>>,
        outgoing: UnboundedSender<Frame>,
    }

    impl Stream for FakeSocket {
        type Item = Result<Frame, ReadError>;

        fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
            self.incoming.poll_recv(cx)
        }
    }

    impl Sink<Frame> for FakeSocket {
        type Error = &'static str;

        fn poll_ready(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn start_send(self: Pin<&mut Self>, item: Frame) -> Result<(), Self::Error> {
            self.outgoing.send(item).map_err(|_| "closed")
        }

        fn poll_flush(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn poll_close(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }
    }

    /// Echoes text back, "slow" after 55 s; closes with 1008 on
    /// "forbidden"; records whether
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
            if message.as_text() == Some("slow") {
                tokio::time::sleep(Duration::from_secs(55)).await;
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
        client: UnboundedSender<Result<Frame, ReadError>>,
        written: UnboundedReceiver<Frame>,
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
        let socket = Shared::new(FakeSocket { incoming, outgoing });
        let task = tokio::spawn(async move {
            drive(
                &socket,
                connection,
                session,
                &handler,
                &config,
                &Counters::default(),
            )
            .await
            .ended
        });
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
        async fn next_written(&mut self) -> Frame {
            tokio::time::timeout(WAIT, self.written.recv())
                .await
                .expect("nothing written")
                .expect("socket dropped")
        }

        async fn next_close(&mut self) -> (u16, String) {
            loop {
                if let Frame::Close(Some(close)) = self.next_written().await {
                    return (close.code().0, close.reason().to_owned());
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

    fn text(s: &str) -> Frame {
        Frame::Message(Message::text(s.to_owned()))
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
        h.client.send(Ok(Frame::Close(None))).unwrap();
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
        let hub = Hub::builder()
            .capacity(2)
            .slow_consumer(hub::SlowConsumer::Disconnect)
            .build();
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
        h.client.send(Err(ReadError::TooBig)).unwrap();
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

    #[tokio::test]
    async fn render_decides_what_the_client_sees() {
        struct Notice;

        impl Handler for Notice {
            async fn on_message(&self, _: &Session, _: Message) -> Result<(), Close> {
                Ok(())
            }

            fn render(&self, _: &Session, event: Event) -> Option<Message> {
                match event {
                    Event::Lagged { missed, .. } => Some(Message::text(format!("missed {missed}"))),
                    other => other.into_message(),
                }
            }
        }

        let hub = Hub::builder()
            .capacity(2)
            .slow_consumer(hub::SlowConsumer::Skip)
            .build();
        let (_client, incoming) = unbounded_channel();
        let (outgoing, mut written) = unbounded_channel();
        let connection = hub.connect().unwrap();
        let session = Session::new(connection.id(), hub.clone(), Metadata::new(), None);
        for i in 0..5 {
            hub.broadcast(format!("{i}"));
        }
        let socket = Shared::new(FakeSocket { incoming, outgoing });
        tokio::spawn(async move {
            drive(
                &socket,
                connection,
                session,
                &Notice,
                &Config::default(),
                &Counters::default(),
            )
            .await
        });
        for expected in ["missed 3", "3", "4"] {
            let frame = tokio::time::timeout(WAIT, written.recv()).await.unwrap();
            assert_eq!(frame, Some(text(expected)));
        }
    }

    #[tokio::test(start_paused = true)]
    async fn pings_quiet_clients_and_closes_idle_ones() {
        let config = Config::default()
            .ping_interval(Duration::from_secs(10))
            .idle_timeout(Duration::from_secs(25));
        let mut h = start(Hub::new(), config);
        assert_eq!(h.next_written().await, Frame::Ping(Bytes::new()));
        // A pong is a sign of life: the idle clock restarts.
        h.client.send(Ok(Frame::Pong(Bytes::new()))).unwrap();
        assert_eq!(h.next_written().await, Frame::Ping(Bytes::new()));
        assert_eq!(h.next_close().await, (1001, "idle timeout".into()));
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_handler_does_not_make_the_client_idle() {
        let config = Config::default()
            .ping_interval(Duration::from_secs(10))
            .idle_timeout(Duration::from_secs(25));
        let mut h = start(Hub::new(), config);
        h.client.send(Ok(text("slow"))).unwrap();
        // Pings go out while the handler takes 55 s, and nothing closes.
        let mut pings = 0;
        loop {
            match h.next_written().await {
                Frame::Ping(_) => pings += 1,
                frame => {
                    assert_eq!(frame, text("slow"));
                    break;
                }
            }
        }
        assert_eq!(pings, 5);
        // The idle clock starts again once the reader is free.
        let before = tokio::time::Instant::now();
        assert_eq!(h.next_close().await, (1001, "idle timeout".into()));
        assert_eq!(before.elapsed(), Duration::from_secs(25));
    }
}
