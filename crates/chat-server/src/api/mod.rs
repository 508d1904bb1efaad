//! The server API under `/api/`: how a backend reaches clients without
//! holding a WebSocket. Off unless a key is set (`--api-key`); callers
//! send `Authorization: Bearer KEY`.
//!
//! Bodies and answers are JSON. Anything malformed gets 400 and a one-line
//! `{"error": "..."}` that names the field at fault.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use http_body_util::{BodyExt, Full, Limited};
use hub::Hub;
use hyper::body::Incoming;
use hyper::header::{self, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Map, Value};

use crate::protocol::{self, payload};

mod schema;

use schema::{
    ApiError, BroadcastRequest, DisconnectRequest, Disconnected, History, Line, Member, Members,
    Placed, PublishRequest, Reached, RoomCount, SendRequest,
};

/// The shortest key the server accepts.
pub(crate) const MIN_API_KEY_LEN: usize = 32;

type Body = Full<Bytes>;

/// The API's key, body limit and counters.
#[derive(Clone)]
pub(crate) struct Api {
    key: Arc<[u8]>,
    max_body: usize,
    /// Calls by endpoint and status.
    calls: Arc<Mutex<BTreeMap<(&'static str, u16), u64>>>,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never the key.
        f.debug_struct("Api")
            .field("max_body", &self.max_body)
            .finish_non_exhaustive()
    }
}

/// The hubs the API reaches into.
pub(crate) struct Hubs<'a> {
    /// The classic chat (`/ws`).
    pub(crate) chat: &'a Hub,
    /// The room chat.
    pub(crate) rooms: &'a Hub,
}

/// An answer other than success: its status and what to say.
#[derive(Debug)]
struct Failure {
    status: StatusCode,
    message: String,
}

impl Failure {
    fn bad(message: impl Into<String>) -> Self {
        Self {
            status: StatusCode::BAD_REQUEST,
            message: message.into(),
        }
    }
}

impl Api {
    /// An API that takes `key` (at least [`MIN_API_KEY_LEN`] bytes; the
    /// arguments check it) and bodies of up to `max_body` bytes.
    pub(crate) fn new(key: &str, max_body: usize) -> Self {
        Self {
            key: Arc::from(key.as_bytes()),
            max_body,
            calls: Arc::default(),
        }
    }

    /// Calls so far, by endpoint and status.
    pub(crate) fn calls(&self) -> Vec<(&'static str, u16, u64)> {
        let calls = self.calls.lock().unwrap_or_else(PoisonError::into_inner);
        calls.iter().map(|(&(e, s), &n)| (e, s, n)).collect()
    }

    /// Answers one request under `/api/`.
    pub(crate) async fn handle(
        &self,
        hubs: Hubs<'_>,
        request: Request<Incoming>,
    ) -> Response<Body> {
        let path = request.uri().path().to_owned();
        let method = request.method().clone();
        let endpoint = endpoint(&method, &path);
        let name = endpoint.as_ref().map_or("unknown", Endpoint::name);
        let answer = match (&endpoint, self.authorized(&request)) {
            // The description is no secret: tools read it without a key.
            (Some(Endpoint::Description), _) => description(),
            (_, Err(failure)) => Err(failure),
            (_, Ok(())) => self.answer(endpoint, hubs, request).await,
        };
        let (status, body) = match answer {
            Ok(value) => (StatusCode::OK, value),
            Err(failure) => (failure.status, json!({ "error": failure.message })),
        };
        *(self.calls.lock().unwrap_or_else(PoisonError::into_inner))
            .entry((name, status.as_u16()))
            .or_default() += 1;
        let mut response = Response::new(Full::new(Bytes::from(body.to_string() + "\n")));
        *response.status_mut() = status;
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        if status == StatusCode::UNAUTHORIZED {
            headers.insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"api\""),
            );
        }
        response
    }

    /// Checks `Authorization: Bearer KEY`, comparing in constant time.
    fn authorized(&self, request: &Request<Incoming>) -> Result<(), Failure> {
        let given = (request.headers().get(header::AUTHORIZATION))
            .and_then(|value| value.as_bytes().strip_prefix(b"Bearer "));
        match given {
            Some(given) if same(given, &self.key) => Ok(()),
            Some(_) => Err(Failure {
                status: StatusCode::UNAUTHORIZED,
                message: "wrong API key".into(),
            }),
            None => Err(Failure {
                status: StatusCode::UNAUTHORIZED,
                message: "send the API key as Authorization: Bearer KEY".into(),
            }),
        }
    }

    async fn answer(
        &self,
        endpoint: Option<Endpoint>,
        hubs: Hubs<'_>,
        request: Request<Incoming>,
    ) -> Result<Value, Failure> {
        let Some(endpoint) = endpoint else {
            return Err(Failure {
                status: StatusCode::NOT_FOUND,
                message: format!(
                    "no endpoint {} {}; the README lists the API's endpoints",
                    request.method(),
                    request.uri().path()
                ),
            });
        };
        match endpoint {
            Endpoint::Rooms => rooms(hubs.rooms),
            Endpoint::Description => description(),
            Endpoint::Members(room) => members(hubs.rooms, &room),
            Endpoint::History(room) => {
                let query = request.uri().query().unwrap_or_default().to_owned();
                history(hubs.rooms, &room, &query).await
            }
            Endpoint::Publish => publish(hubs.rooms, self.body(request).await?).await,
            Endpoint::Broadcast => broadcast(hubs.chat, self.body(request).await?),
            Endpoint::Send => send(hubs.rooms, self.body(request).await?),
            Endpoint::Disconnect => disconnect(&hubs, self.body(request).await?),
        }
    }

    /// The request's body as a JSON object, within the size limit.
    async fn body(&self, request: Request<Incoming>) -> Result<Fields, Failure> {
        let limit = self.max_body;
        let bytes = match Limited::new(request.into_body(), limit).collect().await {
            Ok(collected) => collected.to_bytes(),
            Err(error) if error.is::<http_body_util::LengthLimitError>() => {
                return Err(Failure::bad(format!("the body is over {limit} bytes")));
            }
            Err(_) => return Err(Failure::bad("the body could not be read")),
        };
        match serde_json::from_slice::<Value>(&bytes) {
            Ok(Value::Object(fields)) => Ok(Fields(fields)),
            Ok(_) => Err(Failure::bad("the body must be a JSON object")),
            Err(error) => Err(Failure::bad(format!("the body is not JSON: {error}"))),
        }
    }
}

/// The API's endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Endpoint {
    Publish,
    Broadcast,
    Send,
    Disconnect,
    Rooms,
    Members(String),
    History(String),
    /// `/api/openapi.json`.
    Description,
}

impl Endpoint {
    /// Its name in `/metrics`.
    fn name(&self) -> &'static str {
        match self {
            Self::Publish => "publish",
            Self::Broadcast => "broadcast",
            Self::Send => "send",
            Self::Disconnect => "disconnect",
            Self::Rooms => "rooms",
            Self::Members(_) => "members",
            Self::History(_) => "history",
            Self::Description => "openapi",
        }
    }
}

fn endpoint(method: &Method, path: &str) -> Option<Endpoint> {
    let rest = path.strip_prefix("/api/")?;
    match (method, rest) {
        (&Method::POST, "publish") => Some(Endpoint::Publish),
        (&Method::POST, "broadcast") => Some(Endpoint::Broadcast),
        (&Method::POST, "send") => Some(Endpoint::Send),
        (&Method::POST, "disconnect") => Some(Endpoint::Disconnect),
        (&Method::GET, "rooms") => Some(Endpoint::Rooms),
        (&Method::GET, "openapi.json") => Some(Endpoint::Description),
        (&Method::GET, rest) => {
            let (room, what) = rest.strip_prefix("rooms/")?.split_once('/')?;
            match what {
                "members" => Some(Endpoint::Members(room.to_owned())),
                "history" => Some(Endpoint::History(room.to_owned())),
                _ => None,
            }
        }
        _ => None,
    }
}

/// Equal, in a time that depends on the lengths only.
fn same(given: &[u8], key: &[u8]) -> bool {
    let differ = (given.iter().zip(key)).fold(0u8, |acc, (a, b)| acc | (a ^ b));
    std::hint::black_box(differ) == 0 && given.len() == key.len()
}

/// A request body's fields.
struct Fields(Map<String, Value>);

impl Fields {
    /// Refuses fields other than `known`.
    fn only(&self, known: &[&str]) -> Result<(), Failure> {
        match self.0.keys().find(|key| !known.contains(&key.as_str())) {
            Some(unknown) => Err(Failure::bad(format!(
                "unknown field {unknown:?}; expected {}",
                known.join(", ")
            ))),
            None => Ok(()),
        }
    }

    fn get(&self, name: &str) -> Option<&Value> {
        self.0.get(name).filter(|value| !value.is_null())
    }

    /// A string field that must be there.
    fn string(&self, name: &str) -> Result<&str, Failure> {
        match self.get(name) {
            Some(Value::String(text)) => Ok(text),
            Some(_) => Err(Failure::bad(format!("{name} must be a string"))),
            None => Err(Failure::bad(format!("{name} is missing"))),
        }
    }

    /// Checks that `name` is a chat text: a non-empty string.
    fn text(&self, name: &str) -> Result<(), Failure> {
        if self.string(name)?.is_empty() {
            return Err(Failure::bad(format!("{name} is empty")));
        }
        Ok(())
    }

    /// Checks that `name` is a room name, as clients give them.
    fn room(&self, name: &str) -> Result<(), Failure> {
        room_name(self.string(name)?).map(drop)
    }

    /// Checks that `name` is a chat name.
    fn name(&self, name: &str) -> Result<(), Failure> {
        if !protocol::valid_name(self.string(name)?) {
            return Err(Failure::bad(format!(
                "{name}: names are 1 to 32 characters, without spaces or control characters"
            )));
        }
        Ok(())
    }
}

fn room_name(room: &str) -> Result<String, Failure> {
    if !protocol::valid_room(room) {
        return Err(Failure::bad(
            "room: room names are 1 to 64 letters, digits, '-', '_' or '.'",
        ));
    }
    Ok(room.to_owned())
}

/// The API's OpenAPI description, generated from the handlers and types.
fn description() -> Result<Value, Failure> {
    use utoipa::OpenApi;
    answer(schema::ApiDoc::openapi())
}

/// `value` as JSON.
fn answer(value: impl serde::Serialize) -> Result<Value, Failure> {
    serde_json::to_value(value).map_err(|error| Failure {
        status: StatusCode::INTERNAL_SERVER_ERROR,
        message: format!("the answer could not be written: {error}"),
    })
}

/// Checked fields, as the request type they make.
fn request<T: serde::de::DeserializeOwned>(body: Fields) -> Result<T, Failure> {
    serde_json::from_value(Value::Object(body.0))
        .map_err(|error| Failure::bad(format!("the body does not fit: {error}")))
}

/// A chat line (`text`) or an application event (`data`) in a room, as if
/// its member `from` had sent it. It gets an offset, lands in history
/// (even in a room nobody is in) and reaches the room's members on every
/// node.
#[utoipa::path(
    post,
    path = "/api/publish",
    request_body = PublishRequest,
    responses(
        (status = 200, description = "Placed: where clients resume after it", body = Placed),
        (status = 400, description = "A malformed body", body = ApiError),
        (status = 401, description = "No key, or a wrong one", body = ApiError),
        (status = 503, description = "Redis out of reach and no member here, or shutting down", body = ApiError)
    )
)]
async fn publish(rooms: &Hub, body: Fields) -> Result<Value, Failure> {
    body.only(&["room", "from", "text", "data"])?;
    body.room("room")?;
    body.name("from")?;
    match (body.get("text"), body.get("data")) {
        (Some(_), None) => body.text("text")?,
        (None, Some(_)) => {}
        (Some(_), Some(_)) => return Err(Failure::bad("give text or data, not both")),
        (None, None) => return Err(Failure::bad("text is missing (or give data)")),
    }
    let request: PublishRequest = request(body)?;
    let from = request.from;
    let line = match (request.text, request.data) {
        (Some(text), _) => {
            let text = protocol::one_line(&text);
            payload("chat", json!({ "from": from, "text": text }))
        }
        (None, data) => payload("data", json!({ "from": from, "data": data })),
    };
    match rooms.publish(request.room, line).await {
        Ok(position) => answer(Placed {
            epoch: position.epoch.to_string(),
            offset: position.offset,
        }),
        // Shut down, or Redis out of reach: worth trying again later.
        Err(error) => Err(Failure {
            status: StatusCode::SERVICE_UNAVAILABLE,
            message: error.to_string(),
        }),
    }
}

/// A line to every classic `/ws` client, as it is.
#[utoipa::path(
    post,
    path = "/api/broadcast",
    request_body = BroadcastRequest,
    responses(
        (status = 200, description = "Queued for this node's clients (and sent to the others)", body = Reached),
        (status = 400, description = "A malformed body", body = ApiError),
        (status = 401, description = "No key, or a wrong one", body = ApiError)
    )
)]
fn broadcast(chat: &Hub, body: Fields) -> Result<Value, Failure> {
    body.only(&["text"])?;
    body.text("text")?;
    let request: BroadcastRequest = request(body)?;
    answer(Reached {
        reached: chat.broadcast(protocol::one_line(&request.text)),
    })
}

/// A private line to every connection of a user, on every node.
#[utoipa::path(
    post,
    path = "/api/send",
    request_body = SendRequest,
    responses(
        (status = 200, description = "Queued for the user's connections on every node; how many the nodes last told each other of", body = Reached),
        (status = 400, description = "A malformed body", body = ApiError),
        (status = 401, description = "No key, or a wrong one", body = ApiError)
    )
)]
fn send(rooms: &Hub, body: Fields) -> Result<Value, Failure> {
    body.only(&["user", "from", "text"])?;
    body.name("user")?;
    if body.get("from").is_some() {
        body.name("from")?;
    }
    body.text("text")?;
    let request: SendRequest = request(body)?;
    let from = request.from.unwrap_or_else(|| "server".to_owned());
    let text = protocol::one_line(&request.text);
    let line = payload(
        "private",
        json!({ "from": from, "to": request.user, "text": text }),
    );
    rooms.to_user(&request.user).broadcast(line);
    answer(Reached {
        reached: rooms.connections_of(&request.user),
    })
}

/// Longest close reason: a close frame's payload is at most 125 bytes,
/// two of them the code.
const MAX_REASON: usize = 123;

/// Closes every connection of a user, on every node, with a close code
/// and reason.
#[utoipa::path(
    post,
    path = "/api/disconnect",
    request_body = DisconnectRequest,
    responses(
        (status = 200, description = "Closed on every node; how many were open, as the nodes last told each other", body = Disconnected),
        (status = 400, description = "A malformed body", body = ApiError),
        (status = 401, description = "No key, or a wrong one", body = ApiError)
    )
)]
fn disconnect(hubs: &Hubs<'_>, body: Fields) -> Result<Value, Failure> {
    body.only(&["user", "code", "reason"])?;
    body.name("user")?;
    if let Some(code) = body.get("code") {
        (code.as_u64())
            .and_then(|code| u16::try_from(code).ok())
            .filter(|code| *code == 1000 || (3000..=4999).contains(code))
            .ok_or_else(|| Failure::bad("code must be 1000, or 3000 to 4999"))?;
    }
    if body.get("reason").is_some() && body.string("reason")?.len() > MAX_REASON {
        return Err(Failure::bad(format!(
            "reason must be at most {MAX_REASON} bytes"
        )));
    }
    let request: DisconnectRequest = request(body)?;
    let code = request.code.unwrap_or(1000);
    let reason = (request.reason.as_deref()).unwrap_or("disconnected by the server");
    // This node's classic connections, and the room chat's on every node.
    let closed = hubs.chat.disconnect_user(&request.user, code, reason)
        + hubs.rooms.connections_of(&request.user);
    hubs.rooms.disconnect_user(&request.user, code, reason);
    answer(Disconnected {
        disconnected: closed,
    })
}

/// The rooms with members on any node, and how many each has.
#[utoipa::path(
    get,
    path = "/api/rooms",
    responses(
        (status = 200, description = "By name", body = schema::Rooms),
        (status = 401, description = "No key, or a wrong one", body = ApiError)
    )
)]
fn rooms(rooms: &Hub) -> Result<Value, Failure> {
    let list = (rooms.occupancy().into_iter())
        .map(|(room, members)| RoomCount {
            room: room.as_str().to_owned(),
            members,
        })
        .collect();
    answer(schema::Rooms { rooms: list })
}

/// A room's members, on every node.
#[utoipa::path(
    get,
    path = "/api/rooms/{room}/members",
    params(("room" = String, Path, description = "The room")),
    responses(
        (status = 200, description = "By name", body = Members),
        (status = 400, description = "Not a room name", body = ApiError),
        (status = 401, description = "No key, or a wrong one", body = ApiError)
    )
)]
fn members(rooms: &Hub, room: &str) -> Result<Value, Failure> {
    let room = room_name(room)?;
    let mut members: Vec<Member> = (rooms.members(&room).into_iter())
        .map(|(id, metadata)| Member {
            name: (metadata.name().map(str::to_owned))
                .unwrap_or_else(|| format!("guest-{}", id.get())),
            user: metadata.user().map(str::to_owned),
            connection: id.get(),
        })
        .collect();
    members.sort_by(|a, b| a.name.cmp(&b.name));
    answer(Members { room, members })
}

/// Lines a history request returns unless it asks for fewer, and at most.
const HISTORY_LIMIT: (usize, usize) = (100, 1000);
/// How long a history request waits for Redis to place a room new to
/// this node.
const PLACING: std::time::Duration = std::time::Duration::from_secs(5);

/// Lines from a room's history, from offset `since` on, with how many of
/// that stretch history no longer holds. Every node reads the same.
#[utoipa::path(
    get,
    path = "/api/rooms/{room}/history",
    params(
        ("room" = String, Path, description = "The room"),
        ("since" = Option<u64>, Query, description = "The first offset wanted (0 if not given)"),
        ("limit" = Option<u64>, Query, description = "Lines at most: 100 if not given, up to 1000")
    ),
    responses(
        (status = 200, description = "Oldest first", body = History),
        (status = 400, description = "Not a room name, or a bad parameter", body = ApiError),
        (status = 401, description = "No key, or a wrong one", body = ApiError),
        (status = 404, description = "The server keeps no history", body = ApiError),
        (status = 503, description = "Redis did not answer in time", body = ApiError)
    )
)]
async fn history(rooms: &Hub, room: &str, query: &str) -> Result<Value, Failure> {
    let room = room_name(room)?;
    let (mut since, mut limit) = (0, HISTORY_LIMIT.0);
    for (key, value) in form_urlencoded::parse(query.as_bytes()) {
        let number = |max: u64| {
            value
                .parse::<u64>()
                .ok()
                .filter(|n| *n <= max)
                .ok_or_else(|| Failure::bad(format!("{key} must be a whole number up to {max}")))
        };
        match &*key {
            "since" => since = number(u64::MAX)?,
            "limit" => limit = number(HISTORY_LIMIT.1 as u64)? as usize,
            _ => {
                return Err(Failure::bad(format!(
                    "unknown parameter {key:?}; use since, limit"
                )))
            }
        }
    }
    let page = match tokio::time::timeout(PLACING, rooms.history(room.as_str(), since, limit)).await
    {
        Ok(Some(page)) => page,
        Ok(None) => {
            return Err(Failure {
                status: StatusCode::NOT_FOUND,
                message: "this server keeps no history".into(),
            })
        }
        Err(_) => {
            return Err(Failure {
                status: StatusCode::SERVICE_UNAVAILABLE,
                message: "Redis did not answer in time; try again".into(),
            })
        }
    };
    let lines = (page.lines.iter())
        .map(|line| Line {
            offset: line.offset(),
            data: (line.message().as_text())
                .and_then(|text| serde_json::from_str::<Value>(text).ok())
                .unwrap_or(Value::Null),
        })
        .collect();
    answer(History {
        room,
        epoch: page.epoch.to_string(),
        lines,
        missed: page.missed,
        next: page.next,
        end: page.end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_compare_whole() {
        let key = b"0123456789abcdef0123456789abcdef";
        assert!(same(key, key));
        assert!(!same(&key[..31], key));
        assert!(!same(b"0123456789abcdef0123456789abcdeF", key));
        assert!(!same(b"", key));
        let mut longer = key.to_vec();
        longer.push(b'x');
        assert!(!same(&longer, key));
    }

    #[test]
    fn paths_find_their_endpoint() {
        assert_eq!(
            endpoint(&Method::POST, "/api/publish"),
            Some(Endpoint::Publish)
        );
        assert_eq!(endpoint(&Method::GET, "/api/publish"), None);
        assert_eq!(endpoint(&Method::GET, "/api/rooms"), Some(Endpoint::Rooms));
        assert_eq!(
            endpoint(&Method::GET, "/api/rooms/news/members"),
            Some(Endpoint::Members("news".into()))
        );
        assert_eq!(endpoint(&Method::GET, "/api/rooms/news"), None);
        assert_eq!(endpoint(&Method::GET, "/apix/rooms"), None);
    }
}
