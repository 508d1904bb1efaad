//! The chat server as a library: [`Server::bind`] then [`Server::run`].
//!
//! The binary wraps this with flags and signal handling; tests start it
//! in-process on port 0.

mod api;
mod args;
mod auth;
mod chat;
mod metrics;
mod presence;
mod protocol;
mod routes;
mod tls;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use hub::{Backplane, Hub};
use hub_redis::RedisBackplane;
use hub_ws::{Config, Origins, RateLimit, SessionLimit, WsServer};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use args::Args;
pub use auth::{Auth, IssueError, SecretError, MIN_SECRET_LEN};
pub use chat::{Chat, Echo, RoomChat};

use routes::Routes;

/// Entry points for the fuzz targets under `fuzz/` (built by `cargo fuzz`,
/// which passes `--cfg fuzzing`): the parsers of client input, with the
/// invariants their callers rely on asserted. Not part of the API.
#[cfg(fuzzing)]
#[doc(hidden)]
pub mod fuzzing;

/// How long an HTTP client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The smallest read buffer hyper accepts (`http1::Builder::max_buf_size`
/// panics below it).
const MIN_HTTP_BUFFER: usize = 8 << 10;

/// A bound, not yet running, chat server.
pub struct Server {
    listener: TcpListener,
    tls: Option<TlsAcceptor>,
    routes: Routes,
    grace: Duration,
    /// Clients closed at a time on shutdown, and the pause between.
    batches: (usize, Duration),
    /// Largest request head read from a client.
    max_request_head: usize,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("listener", &self.listener)
            .field("tls", &self.tls.is_some())
            .field("routes", &self.routes)
            .field("grace", &self.grace)
            .field("batches", &self.batches)
            .field("max_request_head", &self.max_request_head)
            .finish()
    }
}

/// How long [`Server::bind`] waits for a backplane to be ready.
const READY_WITHIN: Duration = Duration::from_secs(10);

/// Why [`Server::bind`] could not start a server.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum StartError {
    /// The address could not be bound (in use, not local...).
    #[error("cannot listen on {addr}: {source}")]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// The operating system's error.
        #[source]
        source: io::Error,
    },
    /// The TLS certificate or key could not be used.
    #[error("TLS: {0}")]
    Tls(String),
    /// The token secret cannot be used.
    #[error(transparent)]
    Secret(#[from] SecretError),
    /// Redis (`--redis-url`, `--redis-cluster`) could not be reached.
    #[error(transparent)]
    Redis(#[from] hub_redis::Error),
    /// The API key (`--api-key`) is too short to keep callers out.
    #[error("the API key has {len} bytes; give at least 32 (try `openssl rand -hex 32`)")]
    ApiKeyTooShort {
        /// Its length.
        len: usize,
    },
}

/// A listening socket with room for `backlog` connections waiting to be
/// accepted. `TcpListener::bind` leaves room for 128, which a burst of
/// reconnecting clients overflows.
fn listen(addr: SocketAddr, backlog: u32) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(backlog)
}

impl Server {
    /// Binds the listening socket as `args` say, and loads the TLS
    /// certificate if there is one.
    ///
    /// # Errors
    ///
    /// [`StartError`] if the address cannot be bound, or the certificate
    /// or key cannot be read or do not go together.
    pub async fn bind(args: &Args) -> Result<Self, StartError> {
        let tls = match (&args.tls_cert, &args.tls_key) {
            (Some(cert), Some(key)) => Some(tls::acceptor(cert, key)?),
            _ => None,
        };
        let addr = SocketAddr::new(args.host, args.port);
        let listener =
            listen(addr, args.backlog).map_err(|source| StartError::Listen { addr, source })?;
        let mut config = Config::default()
            .max_message_size(args.max_message_size)
            .max_frame_size(args.max_message_size)
            .ping_interval(args.ping_interval)
            .idle_timeout(args.idle_timeout)
            .write_timeout(args.write_timeout)
            .max_request_head(args.max_request_head)
            .compression(args.compression)
            .histograms(!args.no_histograms);
        // One limit over every endpoint.
        let mut limit = SessionLimit::new().max(args.max_connections);
        if let Some(per_ip) = args.max_connections_per_ip {
            limit = limit.per_ip(per_ip);
        }
        config = config.session_limit(limit);
        if let Some(per_second) = args.rate_limit {
            let burst = args.rate_burst.unwrap_or((per_second * 2.0).ceil() as u32);
            let limit = RateLimit::new(per_second, burst).close_after(args.rate_limit_close_after);
            config = config.rate_limit(limit);
        }
        let origins = if args.any_origin {
            Origins::Any
        } else {
            (args.allowed_origins.iter()).fold(Origins::default(), |origins, origin| {
                origins.allow(origin.as_str())
            })
        };
        config = config.origins(origins);
        if tls.is_some() {
            // Pages of this server are https ones: an http page is another
            // origin. Without TLS here, a proxy in front may terminate it.
            config = config.served_over_tls(true);
        }
        let auth = args.auth()?;
        let api = match args.api_key.as_deref() {
            Some(key) if key.len() < api::MIN_API_KEY_LEN => {
                return Err(StartError::ApiKeyTooShort { len: key.len() });
            }
            Some(key) => Some(api::Api::new(key, args.max_message_size)),
            None => None,
        };
        let builder = || {
            Hub::builder()
                .capacity(args.capacity)
                .queue_capacity(args.queue_capacity)
                .history(args.history, args.history_bytes)
                .history_budget(args.history_budget)
                .queue_budget(args.queue_budget)
        };
        // `/ws` and the rooms share fan-out with other nodes, each under its
        // own prefix; echo replies never leave the node.
        let mut backplanes = Vec::new();
        let shared = |endpoint: &'static str| {
            let builder = builder();
            let (url, cluster) = (args.redis_url.clone(), args.redis_cluster.clone());
            let prefix = format!("{}:{endpoint}", args.redis_prefix);
            let (history, history_bytes) = (args.history, args.history_bytes);
            let (presence_ttl, ttl) = (args.presence_ttl, args.redis_ttl);
            async move {
                let backplane = match url {
                    _ if !cluster.is_empty() => RedisBackplane::cluster(cluster),
                    Some(url) => RedisBackplane::builder(url),
                    None => return Ok::<_, StartError>((builder.build(), None)),
                };
                let backplane = backplane
                    .prefix(prefix)
                    .history(history)
                    .history_bytes(history_bytes)
                    .presence_ttl(presence_ttl)
                    .ttl(ttl)
                    .connect()
                    .await?;
                let hub = builder.backplane(backplane.clone()).build();
                // Ready once placed, so the first clients already share
                // fan-out; if that takes too long, serve locally meanwhile.
                let up = tokio::time::timeout(READY_WITHIN, backplane.until_up()).await;
                if up.is_err() {
                    tracing::warn!(
                        endpoint,
                        "Redis not ready yet; serving this node's clients meanwhile"
                    );
                }
                Ok((hub, Some((endpoint, backplane))))
            }
        };
        let (chat_hub, chat_backplane) = shared("ws").await?;
        let (rooms_hub, rooms_backplane) = shared("rooms").await?;
        if let Some((_, backplane)) = &rooms_backplane {
            tokio::spawn(chat::follow_departures(rooms_hub.clone(), backplane.node()));
        }
        backplanes.extend(chat_backplane);
        backplanes.extend(rooms_backplane);
        Ok(Self {
            listener,
            tls,
            routes: Routes {
                chat: WsServer::with_config(chat_hub, Chat::new(auth.clone()), config.clone()),
                rooms: WsServer::with_config(
                    rooms_hub,
                    RoomChat::new(auth.clone()).with_presence_burst(args.presence_burst),
                    config.clone(),
                ),
                echo: WsServer::with_config(builder().build(), Echo::new(auth), config),
                backplanes,
                api,
            },
            grace: args.shutdown_grace,
            batches: (args.shutdown_batch, args.shutdown_batch_interval),
            max_request_head: args.max_request_head,
        })
    }

    /// The address actually bound (useful with port 0).
    ///
    /// # Errors
    ///
    /// The I/O error from the operating system, if any.
    pub fn local_addr(&self) -> io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Whether clients connect over TLS (`https://`, `wss://`).
    #[must_use]
    pub fn is_tls(&self) -> bool {
        self.tls.is_some()
    }

    /// The hub behind the classic chat (`/ws` without parameters).
    #[must_use]
    pub fn chat_hub(&self) -> &Hub {
        self.routes.chat.hub()
    }

    /// The hub behind the room chat (`/ws` with parameters).
    #[must_use]
    pub fn rooms_hub(&self) -> &Hub {
        self.routes.rooms.hub()
    }

    /// Serves until `shutdown` completes, then stops accepting, closes every
    /// WebSocket client with 1001 (in batches) and idle HTTP connections,
    /// and waits up to the shutdown grace period for all of them to finish.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Self {
            listener,
            tls,
            routes,
            grace,
            batches: (batch, pause),
            max_request_head,
        } = self;
        tokio::pin!(shutdown);
        // Plain HTTP connections (keep-alive included), to close on shutdown.
        let http = TaskTracker::new();
        let stopping = CancellationToken::new();
        loop {
            let accepted = tokio::select! {
                accepted = listener.accept() => accepted,
                () = &mut shutdown => break,
            };
            match accepted {
                Ok((stream, peer)) => {
                    let _ = stream.set_nodelay(true);
                    let connection = Connection {
                        routes: routes.clone(),
                        peer,
                        stopping: stopping.clone(),
                        max_request_head,
                    };
                    match &tls {
                        None => http.spawn(connection.serve(stream)),
                        Some(tls) => http.spawn(connection.serve_tls(tls.clone(), stream)),
                    };
                }
                Err(error) => {
                    // Out of file descriptors and the like: back off and go on.
                    tracing::warn!(%error, "accept failed; retrying shortly");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
        drop(listener);
        tracing::info!(
            sessions = routes.chat.sessions() + routes.rooms.sessions() + routes.echo.sessions(),
            "shutting down: closing WebSocket clients"
        );
        stopping.cancel();
        http.close();
        let drained = async {
            tokio::join!(
                routes.chat.shutdown_in_batches(batch, pause),
                routes.rooms.shutdown_in_batches(batch, pause),
                routes.echo.shutdown_in_batches(batch, pause),
                http.wait()
            );
        };
        if tokio::time::timeout(grace, drained).await.is_err() {
            tracing::warn!(
                remaining =
                    routes.chat.sessions() + routes.rooms.sessions() + routes.echo.sessions(),
                "shutdown grace period over; dropping remaining clients"
            );
        }
    }
}

/// One accepted TCP connection, served as HTTP/1.1 (with upgrades).
struct Connection {
    routes: Routes,
    peer: SocketAddr,
    /// Cancelled when the server shuts down.
    stopping: CancellationToken,
    /// Longer request heads are answered with 431 and the connection closed.
    max_request_head: usize,
}

impl Connection {
    /// Runs the TLS handshake (bounded like the request headers), then
    /// serves HTTP over it.
    async fn serve_tls(self, tls: TlsAcceptor, stream: TcpStream) {
        let handshake = tokio::time::timeout(HEADER_READ_TIMEOUT, tls.accept(stream));
        let accepted = tokio::select! {
            accepted = handshake => accepted,
            () = self.stopping.cancelled() => return,
        };
        match accepted {
            Ok(Ok(stream)) => self.serve(stream).await,
            Ok(Err(error)) => {
                tracing::debug!(peer = %self.peer, %error, "TLS handshake failed");
            }
            Err(_) => tracing::debug!(peer = %self.peer, "TLS handshake timed out"),
        }
    }

    async fn serve<S>(self, stream: S)
    where
        S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
    {
        let Self {
            routes,
            peer,
            stopping,
            max_request_head,
        } = self;
        let service = service_fn(move |request| {
            let routes = routes.clone();
            async move { routes.handle(request, peer).await }
        });
        let connection = http1::Builder::new()
            .timer(TokioTimer::new())
            .header_read_timeout(HEADER_READ_TIMEOUT)
            // The head is read into one buffer no larger than the limit:
            // a client that never ends its request holds at most that.
            .max_header_size(max_request_head)
            .max_buf_size(max_request_head.max(MIN_HTTP_BUFFER))
            .serve_connection(TokioIo::new(stream), service)
            .with_upgrades();
        tokio::pin!(connection);
        // An upgraded connection has left hyper by then and is closed by its
        // WebSocket session instead.
        let ended = tokio::select! {
            ended = connection.as_mut() => ended,
            () = stopping.cancelled() => {
                connection.as_mut().graceful_shutdown();
                connection.await
            }
        };
        if let Err(error) = ended {
            tracing::debug!(%peer, %error, "HTTP connection ended with an error");
        }
    }
}
