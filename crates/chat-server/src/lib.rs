//! The chat server as a library: [`Server::bind`] then [`Server::run`].
//!
//! The binary wraps this with flags and signal handling; tests start it
//! in-process on port 0.

mod args;
mod chat;
mod protocol;
mod routes;

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::time::Duration;

use hub::Hub;
use hub_ws::{Config, Origins, RateLimit, WsServer};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

pub use args::Args;
pub use chat::{Chat, Echo, RoomChat};

use routes::Routes;

/// How long an HTTP client may take to send its request headers.
const HEADER_READ_TIMEOUT: Duration = Duration::from_secs(10);

/// A bound, not yet running, chat server.
#[derive(Debug)]
pub struct Server {
    listener: TcpListener,
    routes: Routes,
    grace: Duration,
}

impl Server {
    /// Binds the listening socket as `args` say.
    ///
    /// # Errors
    ///
    /// The I/O error if the address cannot be bound (in use, not local...).
    pub async fn bind(args: &Args) -> io::Result<Self> {
        let listener = TcpListener::bind((args.host, args.port)).await?;
        let mut config = Config::default()
            .max_message_size(args.max_message_size)
            .max_frame_size(args.max_message_size)
            .ping_interval(args.ping_interval)
            .idle_timeout(args.idle_timeout)
            .write_timeout(args.write_timeout)
            .max_sessions(args.max_connections);
        if let Some(per_ip) = args.max_connections_per_ip {
            config = config.max_sessions_per_ip(per_ip);
        }
        if let Some(per_second) = args.rate_limit {
            let burst = args.rate_burst.unwrap_or((per_second * 2.0).ceil() as u32);
            let limit = RateLimit::new(per_second, burst).close_after(args.rate_limit_close_after);
            config = config.rate_limit(limit);
        }
        if args.any_origin {
            config = config.origins(Origins::Any);
        }
        for origin in &args.allowed_origins {
            config = config.allow_origin(origin.as_str());
        }
        let hub = |args: &Args| {
            Hub::builder()
                .capacity(args.capacity)
                .queue_capacity(args.queue_capacity)
                .history(args.history, args.history_bytes)
                .build()
        };
        Ok(Self {
            listener,
            routes: Routes {
                chat: WsServer::with_config(hub(args), Chat, config.clone()),
                rooms: WsServer::with_config(hub(args), RoomChat, config.clone()),
                echo: WsServer::with_config(hub(args), Echo, config),
            },
            grace: args.shutdown_grace,
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
    /// WebSocket client with 1001 and idle HTTP connections, and waits up to
    /// the shutdown grace period for all of them to finish.
    pub async fn run(self, shutdown: impl Future<Output = ()>) {
        let Self {
            listener,
            routes,
            grace,
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
                    let routes = routes.clone();
                    let stopping = stopping.clone();
                    http.spawn(async move {
                        let service = service_fn(move |request| {
                            let routes = routes.clone();
                            async move { routes.handle(request, peer).await }
                        });
                        let connection = http1::Builder::new()
                            .timer(TokioTimer::new())
                            .header_read_timeout(HEADER_READ_TIMEOUT)
                            .serve_connection(TokioIo::new(stream), service)
                            .with_upgrades();
                        tokio::pin!(connection);
                        // An upgraded connection has left hyper by then and
                        // is closed by its WebSocket session instead.
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
                    });
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
                routes.chat.shutdown(),
                routes.rooms.shutdown(),
                routes.echo.shutdown(),
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
