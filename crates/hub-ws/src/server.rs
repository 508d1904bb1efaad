//! Serving sessions: from a hyper upgrade, a raw upgraded stream or TCP.

use std::fmt;
use std::future::Future;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::task::{ready, Poll};

use std::convert::Infallible;
use std::sync::{Mutex, PoisonError};

use futures_util::future::Either;
use futures_util::{Sink, Stream};
use hub::{Hub, Metadata};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::upgrade::OnUpgrade;
use hyper::{Request, Response};
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::time::{self, Instant};
use tokio_util::task::TaskTracker;

use crate::admission::{check_origin, Admitted, SessionLimit};
use crate::codec::Socket;
use crate::deflate::{self, Agreed, Deflated};
use crate::frame::{Frame, ReadError};
use crate::session::{drive, refuse, Finished, Shared};
use crate::stats::{Counters, WsStats};
use crate::throttle::LogThrottle;
use crate::upgrade::{accept_key, switching_protocols};
use crate::{Close, CloseCode, Config, Ended, Handler, Handshake, Session, UpgradeError};

/// The client's address, as a request extension.
///
/// Insert it into a request's extensions before [`WsServer::upgrade`] to
/// make it available as [`Session::peer_addr`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PeerAddr(pub SocketAddr);

/// Why [`WsServer::serve_tcp`] could not start a session.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ServeError {
    /// The client did not complete the HTTP handshake in time.
    #[error("the WebSocket handshake timed out")]
    HandshakeTimeout,
    /// The HTTP handshake failed (a malformed request or an I/O error).
    #[error("the WebSocket handshake failed")]
    Handshake(#[source] Box<dyn std::error::Error + Send + Sync>),
    /// The request was answered with an error instead of an upgrade: not a
    /// WebSocket handshake, or refused (origin, limits, the handler...).
    #[error("the WebSocket handshake was refused: {0}")]
    Refused(UpgradeError),
}

/// Serves WebSocket sessions: each client becomes a connection of `hub`,
/// its messages go to the handler `H`, and what the hub delivers to it is
/// written to its socket.
///
/// Cheap to clone; clones share the hub, handler, configuration and the set
/// of running sessions.
///
/// Where thousands of clients may connect at once (say, all reconnecting
/// after a restart), listen with a larger backlog than
/// `TcpListener::bind`'s 128, through [`TcpSocket::listen`](tokio::net::TcpSocket::listen):
/// connections beyond the backlog wait a second or more for a
/// retransmitted handshake.
///
/// # Examples
///
/// A server without hyper, on plain TCP:
///
/// ```no_run
/// use hub::{Hub, Message, Metadata};
/// use hub_ws::{Close, Handler, Session, WsServer};
///
/// struct Echo;
///
/// impl Handler for Echo {
///     async fn on_message(&self, session: &Session, message: Message) -> Result<(), Close> {
///         let _ = session.send(message).await;
///         Ok(())
///     }
/// }
///
/// # #[tokio::main]
/// # async fn main() -> std::io::Result<()> {
/// let server = WsServer::new(Hub::new(), Echo);
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
/// loop {
///     let (stream, _) = listener.accept().await?;
///     let server = server.clone();
///     tokio::spawn(async move { server.serve_tcp(stream, Metadata::new()).await });
/// }
/// # }
/// ```
pub struct WsServer<H> {
    pub(crate) inner: Arc<Inner<H>>,
}

pub(crate) struct Inner<H> {
    hub: Hub,
    handler: H,
    pub(crate) config: Config,
    /// The configuration's session limit, or one of this server's own.
    session_limit: SessionLimit,
    pub(crate) sessions: TaskTracker,
    counters: Counters,
    /// Deflated forms of recent messages, shared by the compressing
    /// sockets.
    deflated: Arc<Deflated>,
    /// Refused handshakes are logged at this rate at most.
    refusals_logged: LogThrottle,
}

impl<H> Clone for WsServer<H> {
    fn clone(&self) -> Self {
        Self {
            inner: Arc::clone(&self.inner),
        }
    }
}

impl<H> fmt::Debug for WsServer<H> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("WsServer")
            .field("hub", &self.inner.hub)
            .field("config", &self.inner.config)
            .field("sessions", &self.inner.sessions.len())
            .finish_non_exhaustive()
    }
}

impl<H: Handler> WsServer<H> {
    /// A server with the default [`Config`].
    pub fn new(hub: Hub, handler: H) -> Self {
        Self::with_config(hub, handler, Config::default())
    }

    /// A server with the given limits and timers.
    pub fn with_config(hub: Hub, handler: H, config: Config) -> Self {
        Self {
            inner: Arc::new(Inner {
                hub,
                handler,
                session_limit: config.session_limit.clone().unwrap_or_default(),
                counters: Counters::default().measuring(config.histograms),
                config,
                sessions: TaskTracker::new(),
                deflated: Arc::default(),
                refusals_logged: LogThrottle::default(),
            }),
        }
    }

    /// The hub the sessions join.
    #[must_use]
    pub fn hub(&self) -> &Hub {
        &self.inner.hub
    }

    /// Sessions running now.
    #[must_use]
    pub fn sessions(&self) -> usize {
        self.inner.sessions.len()
    }

    /// This server's counters: sessions, messages in and out, refused
    /// handshakes by reason, closes by code.
    #[must_use]
    pub fn stats(&self) -> WsStats {
        self.inner.counters.snapshot(self.inner.sessions.len())
    }

    /// Sessions admitted and not yet ended, under this server's
    /// [`SessionLimit`] (all the servers sharing it together).
    #[must_use]
    pub fn admitted(&self) -> usize {
        self.inner.session_limit.open()
    }

    /// Answers a hyper request that asks for a WebSocket: returns the
    /// `101 Switching Protocols` response to send, and spawns the session,
    /// which starts once hyper hands over the connection.
    ///
    /// The connection must be served with upgrades enabled
    /// (`http1::Builder::serve_connection(..).with_upgrades()`). The response
    /// body type is any `Default` body (`Empty`, `Full`, `String`...).
    ///
    /// # Errors
    ///
    /// An [`UpgradeError`] when the request is not a valid WebSocket
    /// handshake, or the hub is shut down; answer with
    /// [`UpgradeError::to_response`].
    pub fn upgrade<B, R: Default>(
        &self,
        mut request: Request<B>,
        metadata: Metadata,
    ) -> Result<Response<R>, UpgradeError> {
        let accepted = self.accept(&mut request, metadata)?;
        let session = self.clone().serve_accepted(accepted.upgrade);
        self.inner.sessions.spawn(session);
        Ok(accepted.response)
    }

    /// Checks a handshake and admits it: the `101` to answer with, and what
    /// serving the session needs once hyper hands the connection over.
    fn accept<B, R: Default>(
        &self,
        request: &mut Request<B>,
        metadata: Metadata,
    ) -> Result<Accepted<R>, UpgradeError> {
        let began = std::time::Instant::now();
        let accept = accept_key(request).inspect_err(|error| self.inner.counters.refused(error))?;
        let peer = request.extensions().get::<PeerAddr>().map(|p| p.0);
        let handshake = Handshake::new(request.uri(), request.headers(), peer);
        let (admitted, metadata) = self.admit(&handshake, metadata)?;
        let mut response = switching_protocols(accept);
        let deflate = match self.inner.config.compression {
            true => deflate::negotiate(request.headers()),
            false => None,
        };
        let deflate = deflate.map(|(agreed, answer)| {
            (response.headers_mut()).insert(hyper::header::SEC_WEBSOCKET_EXTENSIONS, answer);
            agreed
        });
        Ok(Accepted {
            response,
            upgrade: Upgrade {
                deflate,
                on_upgrade: hyper::upgrade::on(request),
                _admitted: admitted,
                metadata,
                peer,
                began,
            },
        })
    }

    /// Serves an admitted session once its connection is upgraded.
    /// Serves an admitted session once its connection is upgraded. Takes
    /// the server by value, to be spawned as it is.
    ///
    /// This and [`serve_io`](Self::serve_io) are not `async fn`s: an `async
    /// fn` keeps each argument it takes by value twice (as taken, and
    /// where its body moves it), in a future that lives as long as the
    /// session. An `async move` block keeps them once.
    #[allow(
        clippy::manual_async_fn,
        reason = "an async fn stores its arguments twice"
    )]
    fn serve_accepted(self, upgrade: Upgrade) -> impl Future<Output = Option<Ended>> {
        async move {
            // Named so that the block takes the place with it: a block
            // captures only the fields it uses.
            let _admitted = &upgrade._admitted;
            match upgrade.on_upgrade.await {
                Ok(upgraded) => {
                    self.inner.counters.handshake(upgrade.began);
                    let io = TokioIo::new(upgraded);
                    let served = self.serve_io(io, upgrade.metadata, upgrade.peer, upgrade.deflate);
                    Some(served.await)
                }
                // Typically the connection was not served `with_upgrades()`.
                Err(error) => {
                    tracing::warn!(%error, "the HTTP upgrade did not complete");
                    None
                }
            }
        }
    }

    /// Decides whether a handshake may open a session: the hub is running,
    /// the origin is accepted, the handler accepts the client (and gives
    /// its metadata) and the connection limits allow one more. The place
    /// taken is given back when the returned guard drops.
    pub(crate) fn admit(
        &self,
        handshake: &Handshake<'_>,
        metadata: Metadata,
    ) -> Result<(Admitted, Metadata), UpgradeError> {
        let inner = &*self.inner;
        let config = &inner.config;
        let headers = handshake.headers();
        let peer = handshake.peer_addr();
        let decided = if inner.hub.is_shut_down() {
            Err(UpgradeError::ShuttingDown)
        } else {
            check_origin(headers, &config.origins, config.tls)
                .and_then(|()| {
                    inner
                        .handler
                        .authenticate(handshake, metadata)
                        .map_err(UpgradeError::Refused)
                })
                .and_then(|metadata| {
                    let ip = peer.map(|peer| peer.ip());
                    let place = inner.session_limit.admit(ip)?;
                    Ok((place, metadata))
                })
        };
        if let Err(refused) = &decided {
            inner.counters.refused(refused);
            // Counted always; logged at a bounded rate, since clients
            // decide how many refusals there are.
            if let Some(left_out) = inner.refusals_logged.admit() {
                let origin = headers
                    .get(hyper::header::ORIGIN)
                    .and_then(|o| o.to_str().ok());
                let status = refused.status().as_u16();
                tracing::warn!(
                    ?peer,
                    origin,
                    status,
                    %refused,
                    left_out,
                    "refused a WebSocket handshake (left_out: refusals not logged since the last line)"
                );
            }
        }
        decided
    }

    /// Serves a session on a stream whose HTTP upgrade has already been
    /// answered with `101 Switching Protocols`; returns how it ended. The
    /// Origin check and connection limits are the caller's: they belong
    /// before the upgrade.
    pub async fn serve_upgraded<S>(
        &self,
        io: S,
        metadata: Metadata,
        peer: Option<SocketAddr>,
    ) -> Ended
    where
        S: AsyncRead + AsyncWrite + Unpin + Send,
    {
        let session = self.serve_io(io, metadata, peer, None);
        self.inner.sessions.track_future(session).await
    }

    /// Serves a session over this crate's own framing, then closes the
    /// transport gracefully.
    fn serve_io<'a, S>(
        &'a self,
        io: S,
        metadata: Metadata,
        peer: Option<SocketAddr>,
        deflate: Option<Agreed>,
    ) -> impl Future<Output = Ended> + 'a
    where
        S: AsyncRead + AsyncWrite + Unpin + 'a,
    {
        let config = &self.inner.config;
        let mut socket = Socket::new(io, config.max_message_size, config.max_frame_size);
        if let Some(agreed) = deflate {
            let counters = &self.inner.counters;
            counters.compressed_sessions.fetch_add(1, Ordering::Relaxed);
            let (shared, counted) = (&self.inner.deflated, &counters.deflate);
            socket = socket.with_deflate(agreed, Arc::clone(shared), Arc::clone(counted));
        }
        let socket = Shared::new(socket);
        async move {
            let finished = self.run(&socket, metadata, peer).await;
            if finished.ended != Ended::Lost {
                let mut io = socket.into_inner().into_inner();
                linger(&mut io, finished.deadline).await;
            }
            finished.ended
        }
    }

    /// Runs the HTTP handshake on a plain TCP stream (through hyper, as
    /// [`upgrade`](Self::upgrade) would), then serves the session; returns
    /// how it ended. For servers without hyper.
    ///
    /// # Errors
    ///
    /// [`ServeError`] if the handshake fails, times out or is refused; no
    /// session was started then. A refused client was answered with the
    /// error's status.
    pub async fn serve_tcp(
        &self,
        stream: TcpStream,
        metadata: Metadata,
    ) -> Result<Ended, ServeError> {
        let began = std::time::Instant::now();
        let peer = stream.peer_addr().ok();
        let _ = stream.set_nodelay(true);
        // The one request's outcome: an admitted upgrade or the refusal.
        let outcome: Mutex<Option<Result<Upgrade, UpgradeError>>> = Mutex::new(None);
        let metadata = Mutex::new(Some(metadata));
        let service = service_fn(|mut request: Request<hyper::body::Incoming>| {
            if let Some(peer) = peer {
                request.extensions_mut().insert(PeerAddr(peer));
            }
            let metadata = lock(&metadata).take().unwrap_or_default();
            let response = match self.accept::<_, String>(&mut request, metadata) {
                Ok(accepted) => {
                    *lock(&outcome) = Some(Ok(accepted.upgrade));
                    accepted.response
                }
                Err(refused) => {
                    let response = refused.to_response();
                    *lock(&outcome) = Some(Err(refused));
                    response
                }
            };
            async move { Ok::<_, Infallible>(response) }
        });
        let config = &self.inner.config;
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(config.handshake_timeout)
            .max_header_size(config.max_request_head)
            .max_buf_size(config.max_request_head.max(MIN_HTTP_BUFFER))
            .keep_alive(false)
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        time::timeout(self.inner.config.handshake_timeout, connection)
            .await
            .map_err(|_| ServeError::HandshakeTimeout)?
            .map_err(|error| ServeError::Handshake(Box::new(error)))?;
        let outcome = lock(&outcome).take();
        match outcome {
            Some(Ok(upgrade)) => {
                let upgrade = Upgrade { began, ..upgrade };
                let session = self.clone().serve_accepted(upgrade);
                match self.inner.sessions.track_future(session).await {
                    Some(ended) => Ok(ended),
                    None => Err(ServeError::Handshake("the upgrade did not complete".into())),
                }
            }
            Some(Err(refused)) => Err(ServeError::Refused(refused)),
            None => Err(ServeError::Handshake("the client sent no request".into())),
        }
    }

    /// Registers the client with the hub and drives its session over a
    /// socket already adapted to frames. Not an `async fn`: the connection
    /// and session are made here and moved into the session's future once,
    /// rather than kept in a future of this function as well.
    pub(crate) fn run<'a, S, E>(
        &'a self,
        socket: &'a Shared<S>,
        metadata: Metadata,
        peer: Option<SocketAddr>,
    ) -> impl Future<Output = Finished> + 'a
    where
        S: Stream<Item = Result<Frame, ReadError>> + Sink<Frame, Error = E> + Unpin + 'a,
        E: fmt::Display + 'a,
    {
        let inner = &*self.inner;
        match inner.hub.connect_with(metadata.clone()) {
            Ok(connection) => {
                inner.counters.opened();
                let session = Session::new(connection.id(), inner.hub.clone(), metadata, peer);
                Either::Left(drive(
                    socket,
                    connection,
                    session,
                    &inner.handler,
                    &inner.config,
                    &inner.counters,
                ))
            }
            // The hub shut down since the handshake was admitted.
            Err(_) => {
                let close = Close::new(CloseCode::GOING_AWAY, "server shutting down");
                Either::Right(refuse(socket, close, inner.config.close_timeout))
            }
        }
    }

    /// Shuts the hub down (every client is closed with 1001), refuses new
    /// sessions, and waits until every session has finished its close
    /// handshake. Bound the wait with a timeout for a deadline.
    pub async fn shutdown(&self) {
        self.inner.hub.shutdown();
        self.inner.sessions.close();
        self.inner.sessions.wait().await;
    }

    /// Shuts down like [`shutdown`](Self::shutdown), but closes the
    /// clients `batch` at a time, `pause` apart ([`Hub::shutdown_some`]),
    /// so that they do not all reconnect elsewhere at the same instant. New
    /// sessions are refused from the start.
    pub async fn shutdown_in_batches(&self, batch: usize, pause: std::time::Duration) {
        self.inner.sessions.close();
        while self.inner.hub.shutdown_some(batch.max(1)) > 0 {
            time::sleep(pause).await;
        }
        self.inner.sessions.wait().await;
    }
}

/// An admitted handshake whose connection hyper has yet to hand over.
struct Upgrade {
    on_upgrade: OnUpgrade,
    /// `permessage-deflate`, if agreed.
    deflate: Option<Agreed>,
    /// The place the session takes; given back when this drops, with the
    /// session's future.
    _admitted: Admitted,
    metadata: Metadata,
    peer: Option<SocketAddr>,
    /// When the handshake began, for [`WsStats::handshakes`].
    began: std::time::Instant,
}

/// [`Upgrade`] and the `101` response that starts it.
struct Accepted<R> {
    response: Response<R>,
    upgrade: Upgrade,
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The smallest read buffer hyper accepts (`http1::Builder::max_buf_size`
/// panics below it).
const MIN_HTTP_BUFFER: usize = 8 << 10;

/// Most bytes read and dropped while waiting for a client to close.
const LINGER_BYTES: usize = 1 << 20;

/// Closes our side of the transport, then reads and drops what the client
/// still sends until it closes too (bounded in time and bytes). Closing a
/// socket with unread input resets it, and a reset can destroy our close
/// frame before the client reads it: after a 1009, say, the rest of the
/// oversized message is usually still unread.
async fn linger<S: AsyncRead + AsyncWrite + Unpin>(io: &mut S, deadline: Instant) {
    let drain = async {
        let _ = io.shutdown().await;
        let mut left = LINGER_BYTES;
        while left > 0 {
            match discard(io).await {
                Ok(0) | Err(_) => break,
                Ok(n) => left = left.saturating_sub(n),
            }
        }
    };
    let _ = time::timeout_at(deadline, drain).await;
}

/// Reads once and drops what was read. The buffer lives on the stack of
/// one poll, not in the session's future: a future is as large as its
/// largest state for its whole life, so a buffer kept across an `.await`
/// here would cost every connection 4 KiB while it is idle.
async fn discard<S: AsyncRead + Unpin>(io: &mut S) -> std::io::Result<usize> {
    std::future::poll_fn(|cx| {
        let mut chunk = [MaybeUninit::<u8>::uninit(); 4096];
        let mut buf = ReadBuf::uninit(&mut chunk);
        ready!(Pin::new(&mut *io).poll_read(cx, &mut buf))?;
        Poll::Ready(Ok(buf.filled().len()))
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Nothing;

    impl Handler for Nothing {
        async fn on_message(&self, _: &Session, _: hub::Message) -> Result<(), crate::Close> {
            Ok(())
        }
    }

    #[test]
    fn handles_are_send_sync() {
        fn is_send_sync<T: Send + Sync>() {}
        is_send_sync::<WsServer<Nothing>>();
        is_send_sync::<Session>();
        is_send_sync::<ServeError>();
        is_send_sync::<UpgradeError>();
        is_send_sync::<Ended>();
    }

    fn handshake_request(uri: &str) -> Request<()> {
        Request::get(uri)
            .header("connection", "upgrade")
            .header("upgrade", "websocket")
            .header("sec-websocket-version", "13")
            .header("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ==")
            .body(())
            .unwrap()
    }

    /// A session's future is allocated whole when its task is spawned and
    /// is as large as its largest state, for as long as the connection
    /// lives: it is most of what an idle connection costs. It was 5.4 KB
    /// with a 4 KiB buffer kept across an `.await` and arguments stored
    /// twice by nested `async fn`s; it is under 2 KiB without them.
    #[test]
    fn a_session_task_stays_small() {
        let server = WsServer::new(Hub::new(), Nothing);
        let mut request = handshake_request("/ws");
        let accepted = server.accept::<_, String>(&mut request, Metadata::new());
        let task = server.clone().serve_accepted(accepted.unwrap().upgrade);
        let size = std::mem::size_of_val(&task);
        assert!(size <= 2560, "a session's task takes {size} bytes");
    }

    #[tokio::test]
    async fn upgrade_is_refused_once_the_hub_is_shut_down() {
        let server = WsServer::new(Hub::new(), Nothing);
        server.shutdown().await;
        let refused = server.upgrade::<_, String>(handshake_request("/ws"), Metadata::new());
        assert_eq!(refused.unwrap_err(), UpgradeError::ShuttingDown);
    }

    /// Lets in `?key=open` only, and takes no place when it refuses.
    struct Keyed;

    impl Handler for Keyed {
        fn authenticate(
            &self,
            handshake: &Handshake<'_>,
            metadata: Metadata,
        ) -> Result<Metadata, crate::Refusal> {
            match handshake.query("key").as_deref() {
                Some("open") => Ok(metadata.with_user("keyholder")),
                _ => Err(crate::Refusal::unauthorized("no key")),
            }
        }

        async fn on_message(&self, _: &Session, _: hub::Message) -> Result<(), crate::Close> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn the_handler_refuses_before_a_place_is_taken() {
        let config = Config::default().session_limit(SessionLimit::new().max(1));
        let server = WsServer::with_config(Hub::new(), Keyed, config);
        for _ in 0..3 {
            let refused = server
                .upgrade::<_, String>(handshake_request("/ws?key=wrong"), Metadata::new())
                .unwrap_err();
            assert_eq!(refused.status(), hyper::StatusCode::UNAUTHORIZED);
            let response = refused.to_response::<String>();
            assert_eq!(response.headers()["www-authenticate"], "Bearer");
            assert_eq!(response.body(), "no key\n");
        }
        assert_eq!(server.admitted(), 0);
        let accepted =
            server.upgrade::<_, String>(handshake_request("/ws?key=open"), Metadata::new());
        assert_eq!(
            accepted.unwrap().status(),
            hyper::StatusCode::SWITCHING_PROTOCOLS
        );
        assert_eq!(server.admitted(), 1);
    }

    #[tokio::test]
    async fn a_session_limit_is_shared_only_by_the_servers_given_it() {
        let open = |server: &WsServer<Keyed>| {
            let request = handshake_request("/ws?key=open");
            server.upgrade::<_, String>(request, Metadata::new())
        };
        // Cloned configurations without a limit: each server its own count.
        let config = Config::default();
        let (a, b) = (
            WsServer::with_config(Hub::new(), Keyed, config.clone()),
            WsServer::with_config(Hub::new(), Keyed, config),
        );
        assert!(open(&a).is_ok());
        assert_eq!((a.admitted(), b.admitted()), (1, 0));
        // The same limit: one count, one limit, over both.
        let limit = SessionLimit::new().max(2);
        let config = Config::default().session_limit(limit.clone());
        let (a, b) = (
            WsServer::with_config(Hub::new(), Keyed, config.clone()),
            WsServer::with_config(Hub::new(), Keyed, config),
        );
        assert!(open(&a).is_ok());
        assert!(open(&b).is_ok());
        assert_eq!((a.admitted(), b.admitted(), limit.open()), (2, 2, 2));
        let refused = open(&a).unwrap_err();
        assert_eq!(refused.status(), hyper::StatusCode::SERVICE_UNAVAILABLE);
    }

    /// What `serve_tcp` answers to `request` from a client on loopback,
    /// read until the server closes, and how `serve_tcp` ended.
    async fn serve_tcp_answer(
        config: Config,
        request: Vec<u8>,
    ) -> (String, Result<Ended, ServeError>) {
        use tokio::io::AsyncReadExt;
        let wait = std::time::Duration::from_secs(10);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = WsServer::with_config(Hub::new(), Nothing, config);
        let served = tokio::spawn(async move {
            let (stream, _) = listener.accept().await.unwrap();
            server.serve_tcp(stream, Metadata::new()).await
        });
        let (mut read, mut write) = tokio::net::TcpStream::connect(addr)
            .await
            .unwrap()
            .into_split();
        // Dropping the write half would shut it down: kept until the end.
        let writer = tokio::spawn(async move {
            let _ = write.write_all(&request).await;
            write
        });
        let mut answer = Vec::new();
        let _ = time::timeout(wait, read.read_to_end(&mut answer))
            .await
            .unwrap();
        writer.abort();
        let ended = time::timeout(wait, served).await.unwrap().unwrap();
        (String::from_utf8_lossy(&answer).into_owned(), ended)
    }

    #[tokio::test]
    async fn serve_tcp_answers_a_head_past_the_limit_with_431() {
        let endless = format!("GET /ws?{}", "a".repeat(100_000)).into_bytes();
        let (answer, ended) = serve_tcp_answer(Config::default(), endless).await;
        assert!(
            answer.starts_with("HTTP/1.1 431 Request Header Fields Too Large\r\n"),
            "{answer}"
        );
        assert!(matches!(ended, Err(ServeError::Handshake(_))), "{ended:?}");

        let head = |filler: usize| {
            format!(
                "GET /ws HTTP/1.1\r\nHost: h\r\nX-Filler: {}\r\n\r\n",
                "a".repeat(filler)
            )
            .into_bytes()
        };
        let config = || Config::default().max_request_head(2 << 10);
        let (answer, _) = serve_tcp_answer(config(), head(3 << 10)).await;
        assert!(answer.starts_with("HTTP/1.1 431 "), "{answer}");
        // Under the limit, the request is read and answered: not an upgrade.
        let (answer, ended) = serve_tcp_answer(config(), head(1 << 10)).await;
        assert!(answer.starts_with("HTTP/1.1 426 "), "{answer}");
        assert!(matches!(ended, Err(ServeError::Refused(_))), "{ended:?}");
    }
}
