//! HTTP routing: the page, the two WebSocket endpoints, health and metrics.

use std::convert::Infallible;
use std::fmt::Write;

use bytes::Bytes;
use http_body_util::Full;
use hub::Metadata;
use hub_ws::{PeerAddr, UpgradeError, WsServer};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::chat::{Chat, Echo, RoomChat};
use crate::protocol::parse_options;

/// The chat page, embedded in the binary.
pub(crate) const PAGE: &str = include_str!("page.html");

/// The endpoints, shared by every HTTP connection.
#[derive(Clone, Debug)]
pub(crate) struct Routes {
    pub(crate) chat: WsServer<Chat>,
    pub(crate) rooms: WsServer<RoomChat>,
    pub(crate) echo: WsServer<Echo>,
}

type Body = Full<Bytes>;

impl Routes {
    pub(crate) async fn handle(
        &self,
        mut request: Request<Incoming>,
        peer: std::net::SocketAddr,
    ) -> Result<Response<Body>, Infallible> {
        request.extensions_mut().insert(PeerAddr(peer));
        let path = request.uri().path().to_owned();
        let response = match path.as_str() {
            "/ws" => self.chat_upgrade(None, request),
            room if room.starts_with("/ws/") => self.chat_upgrade(Some(&room[4..]), request),
            "/echo" => upgrade(&self.echo, request, Metadata::new()),
            "/" | "/index.html" | "/static/index.html" => get_only(&request, || {
                respond(StatusCode::OK, "text/html; charset=utf-8", PAGE)
            }),
            "/healthz" => get_only(&request, || {
                if self.chat.hub().is_shut_down() {
                    respond(StatusCode::SERVICE_UNAVAILABLE, TEXT, "shutting down\n")
                } else {
                    respond(StatusCode::OK, TEXT, "ok\n")
                }
            }),
            "/metrics" => get_only(&request, || {
                respond(
                    StatusCode::OK,
                    "text/plain; version=0.0.4; charset=utf-8",
                    self.metrics(),
                )
            }),
            _ => respond(StatusCode::NOT_FOUND, TEXT, "not found\n"),
        };
        Ok(response)
    }

    /// `/ws` and `/ws/{room}`: the classic chat without parameters, the
    /// room chat with them; bad parameters get a 400 before any upgrade.
    fn chat_upgrade(&self, path_room: Option<&str>, request: Request<Incoming>) -> Response<Body> {
        match parse_options(path_room, request.uri().query()) {
            Ok(None) => upgrade(&self.chat, request, Metadata::new()),
            Ok(Some(options)) => {
                let mut metadata = Metadata::new();
                if let Some(name) = &options.name {
                    metadata = metadata.with_name(name.as_str()).with_user(name.as_str());
                }
                upgrade(&self.rooms, request, metadata.with_data(options))
            }
            Err(error) => respond(StatusCode::BAD_REQUEST, TEXT, format!("{error}\n")),
        }
    }

    /// The hubs' counters in the Prometheus text format.
    fn metrics(&self) -> String {
        let stats = [
            ("ws", self.chat.hub().stats()),
            ("rooms", self.rooms.hub().stats()),
            ("echo", self.echo.hub().stats()),
        ];
        let mut out = String::new();
        for (name, kind, help, value) in SERIES {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (endpoint, stats) in &stats {
                let _ = writeln!(out, "{name}{{endpoint=\"{endpoint}\"}} {}", value(stats));
            }
        }
        out
    }
}

/// One Prometheus series per hub counter: name, type, help, value.
type Series = (
    &'static str,
    &'static str,
    &'static str,
    fn(&hub::Stats) -> u64,
);

const SERIES: [Series; 12] = [
    ("hub_connections", "gauge", "Connections open now.", |s| {
        s.connections as u64
    }),
    ("hub_rooms", "gauge", "Rooms with members now.", |s| {
        s.rooms as u64
    }),
    (
        "hub_history_bytes",
        "gauge",
        "Payload bytes kept in history.",
        |s| s.history_bytes as u64,
    ),
    (
        "hub_connected_total",
        "counter",
        "Connections ever opened.",
        |s| s.connected_total,
    ),
    ("hub_broadcasts_total", "counter", "Broadcasts sent.", |s| {
        s.broadcasts
    }),
    (
        "hub_deliveries_total",
        "counter",
        "Messages handed to connections by broadcasts.",
        |s| s.deliveries,
    ),
    (
        "hub_personal_total",
        "counter",
        "Personal messages queued.",
        |s| s.personal,
    ),
    (
        "hub_lagged_total",
        "counter",
        "Times a connection fell behind.",
        |s| s.lagged,
    ),
    (
        "hub_missed_total",
        "counter",
        "Broadcast messages lagging connections did not get.",
        |s| s.missed,
    ),
    (
        "hub_repaired_total",
        "counter",
        "Broadcast messages refilled from history.",
        |s| s.repaired,
    ),
    (
        "hub_replayed_total",
        "counter",
        "Messages replayed to resuming connections.",
        |s| s.replayed,
    ),
    (
        "hub_resyncs_total",
        "counter",
        "Gaps history could not fill.",
        |s| s.resyncs,
    ),
];

const TEXT: &str = "text/plain; charset=utf-8";

fn upgrade<H: hub_ws::Handler>(
    server: &WsServer<H>,
    request: Request<Incoming>,
    metadata: Metadata,
) -> Response<Body> {
    server
        .upgrade(request, metadata)
        .unwrap_or_else(|error: UpgradeError| error.to_response())
}

fn get_only(
    request: &Request<Incoming>,
    respond_ok: impl FnOnce() -> Response<Body>,
) -> Response<Body> {
    match *request.method() {
        Method::GET | Method::HEAD => respond_ok(),
        _ => {
            let mut response =
                respond(StatusCode::METHOD_NOT_ALLOWED, TEXT, "method not allowed\n");
            response
                .headers_mut()
                .insert(header::ALLOW, HeaderValue::from_static("GET, HEAD"));
            response
        }
    }
}

fn respond(
    status: StatusCode,
    content_type: &'static str,
    body: impl Into<Bytes>,
) -> Response<Body> {
    let mut response = Response::new(Full::new(body.into()));
    *response.status_mut() = status;
    response
        .headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    response
}
