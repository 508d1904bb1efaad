//! HTTP routing: the pages and the client module, the WebSocket endpoints,
//! health, metrics and the server API.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hub::Metadata;
use hub_redis::RedisBackplane;
use hub_ws::{PeerAddr, UpgradeError, WsServer};
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};

use crate::api::{Api, Hubs};
use crate::chat::{Chat, Echo, RoomChat};
use crate::metrics::{self, Endpoint};
use crate::protocol::parse_options;

/// The room chat's page, embedded in the binary like the others.
const ROOMS_PAGE: &str = include_str!("pages/rooms.html");
/// The FastAPI tutorial's page: the classic broadcast chat on `/ws`.
const TUTORIAL_PAGE: &str = include_str!("pages/tutorial.html");
/// The look both pages share.
const STYLE: &str = include_str!("pages/style.css");
/// The script both pages share.
const SCRIPT: &str = include_str!("pages/page.js");
/// The room chat's client, an ES module for any page (ours uses it too).
const CLIENT: &str = include_str!("pages/client.js");

/// The endpoints, shared by every HTTP connection.
#[derive(Clone, Debug)]
pub(crate) struct Routes {
    pub(crate) chat: WsServer<Chat>,
    pub(crate) rooms: WsServer<RoomChat>,
    pub(crate) echo: WsServer<Echo>,
    /// With `--redis-url`: the backplane of each endpoint that has one.
    pub(crate) backplanes: Vec<(&'static str, Arc<RedisBackplane>)>,
    /// With `--api-key`: the server API.
    pub(crate) api: Option<Api>,
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
            "/" | "/index.html" => get_only(&request, || respond(StatusCode::OK, HTML, ROOMS_PAGE)),
            "/static/index.html" => {
                get_only(&request, || respond(StatusCode::OK, HTML, TUTORIAL_PAGE))
            }
            "/static/style.css" => get_only(&request, || {
                respond(StatusCode::OK, "text/css; charset=utf-8", STYLE)
            }),
            "/static/page.js" => get_only(&request, || respond(StatusCode::OK, JAVASCRIPT, SCRIPT)),
            // Any page may import it, from any origin: what it connects
            // to is still subject to the Origin check.
            "/client.js" => get_only(&request, || {
                let mut response = respond(StatusCode::OK, JAVASCRIPT, CLIENT);
                response.headers_mut().insert(
                    header::ACCESS_CONTROL_ALLOW_ORIGIN,
                    HeaderValue::from_static("*"),
                );
                response
            }),
            "/healthz" => get_only(&request, || {
                if self.chat.hub().is_shut_down() {
                    respond(StatusCode::SERVICE_UNAVAILABLE, TEXT, "shutting down\n")
                } else if self.backplanes.iter().any(|(_, b)| !b.is_up()) {
                    // Still serving: this node's clients reach each other.
                    let body = "ok; Redis out of reach, serving this node's clients only\n";
                    respond(StatusCode::OK, TEXT, body)
                } else {
                    respond(StatusCode::OK, TEXT, "ok\n")
                }
            }),
            "/metrics" => get_only(&request, || {
                let accept = request.headers().get(header::ACCEPT);
                let format = metrics::Format::preferred(accept.and_then(|a| a.to_str().ok()));
                let api = self.api.as_ref().map(Api::calls);
                let text = metrics::render(self.endpoints(), self.backplane_stats(), api, format);
                respond(StatusCode::OK, format.content_type(), text)
            }),
            api if api.starts_with("/api/") => match &self.api {
                Some(server_api) => {
                    let hubs = Hubs {
                        chat: self.chat.hub(),
                        rooms: self.rooms.hub(),
                    };
                    server_api.handle(hubs, request).await
                }
                None => respond(
                    StatusCode::NOT_FOUND,
                    "application/json",
                    "{\"error\":\"the server API is off; start the server with --api-key\"}\n",
                ),
            },
            _ => respond(StatusCode::NOT_FOUND, TEXT, "not found\n"),
        };
        Ok(response)
    }

    /// Each endpoint's counters, for `/metrics`.
    fn endpoints(&self) -> Vec<Endpoint> {
        vec![
            Endpoint::of("ws", &self.chat),
            Endpoint::of("rooms", &self.rooms),
            Endpoint::of("echo", &self.echo),
        ]
    }

    /// Each backplane's counters, for `/metrics`.
    fn backplane_stats(&self) -> Vec<(&'static str, hub_redis::Stats)> {
        (self.backplanes.iter())
            .map(|(endpoint, backplane)| (*endpoint, backplane.stats()))
            .collect()
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
}

const TEXT: &str = "text/plain; charset=utf-8";
const HTML: &str = "text/html; charset=utf-8";
const JAVASCRIPT: &str = "text/javascript; charset=utf-8";

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
