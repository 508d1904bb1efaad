//! What the API takes and answers, as types: handlers build their answers
//! from them, and the OpenAPI description (`/api/openapi.json`) is
//! generated from them and from the handlers' `#[utoipa::path]`s.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
use utoipa::{Modify, OpenApi, ToSchema};

/// A line or an application event for a room.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct PublishRequest {
    /// The room: 1 to 64 letters, digits, `-`, `_` or `.`.
    pub(crate) room: String,
    /// Who it is from, as a member's name: 1 to 32 characters, without
    /// spaces or control characters.
    pub(crate) from: String,
    /// A chat line (made one line); give this or `data`.
    pub(crate) text: Option<String>,
    /// An application event, any JSON value: JSON clients receive it as
    /// `{"kind":"data","data":…}`, text clients nothing.
    #[schema(value_type = Option<Object>)]
    pub(crate) data: Option<Value>,
}

/// Where a published line was placed: what a client resumes after.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Placed {
    /// The room's epoch (a string: it does not fit a JavaScript number).
    pub(crate) epoch: String,
    /// The line's offset in the epoch.
    pub(crate) offset: u64,
}

/// A line for every classic `/ws` client.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct BroadcastRequest {
    /// The line, as it is.
    pub(crate) text: String,
}

/// A private line for every connection of a user.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct SendRequest {
    /// The user (a room-chat client's name, or its token's `sub`).
    pub(crate) user: String,
    /// Who it is from (`server` if not given).
    pub(crate) from: Option<String>,
    /// The line.
    pub(crate) text: String,
}

/// How many connections of this node a message was queued for.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Reached {
    /// Connections of this node (those of other nodes get it too).
    pub(crate) reached: usize,
}

/// Every connection of a user to close, on every node.
#[derive(Debug, Deserialize, ToSchema)]
pub(crate) struct DisconnectRequest {
    /// The user.
    pub(crate) user: String,
    /// The close code: 1000 (the default), or 3000 to 4999.
    pub(crate) code: Option<u16>,
    /// The close reason, at most 123 bytes.
    pub(crate) reason: Option<String>,
}

/// How many connections of this node were closed.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Disconnected {
    /// On this node (the other nodes close theirs).
    pub(crate) disconnected: usize,
}

/// The rooms with members.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Rooms {
    /// By name.
    pub(crate) rooms: Vec<RoomCount>,
}

/// A room and how many members it has, on every node.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct RoomCount {
    pub(crate) room: String,
    pub(crate) members: usize,
}

/// A room's members.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Members {
    pub(crate) room: String,
    /// By name.
    pub(crate) members: Vec<Member>,
}

/// One connection in a room.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Member {
    /// Its name in the room.
    pub(crate) name: String,
    /// Its user, if it has one.
    pub(crate) user: Option<String>,
    /// Its connection id (the node is in its top bits).
    pub(crate) connection: u64,
}

/// A stretch of a room's history.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct History {
    pub(crate) room: String,
    /// The room's epoch: offsets count within it.
    pub(crate) epoch: String,
    /// Oldest first.
    pub(crate) lines: Vec<Line>,
    /// Lines of the stretch that history no longer holds.
    pub(crate) missed: u64,
    /// The offset to read from next.
    pub(crate) next: u64,
    /// The offset of the room's next line: there is more while `next` is
    /// below it.
    pub(crate) end: u64,
}

/// One line from history.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct Line {
    pub(crate) offset: u64,
    /// The line as clients get it in `data`: `kind`, `time`, and the
    /// kind's fields (`from`, `text`...).
    #[schema(value_type = Object)]
    pub(crate) data: Value,
}

/// Why a call failed.
#[derive(Debug, Serialize, ToSchema)]
pub(crate) struct ApiError {
    /// One line, naming the field at fault.
    pub(crate) error: String,
}

/// The API's description, generated from the handlers and the types above.
#[derive(OpenApi)]
#[openapi(
    info(
        title = "chat-server API",
        description = "How a backend reaches the chat's clients without holding a WebSocket. \
                       Every call takes `Authorization: Bearer KEY` (the server's --api-key)."
    ),
    paths(
        super::publish,
        super::broadcast,
        super::send,
        super::disconnect,
        super::rooms,
        super::members,
        super::history
    ),
    modifiers(&BearerKey),
    security(("api_key" = []))
)]
pub(crate) struct ApiDoc;

/// Declares the bearer key the `security` requirement names.
struct BearerKey;

impl Modify for BearerKey {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "api_key",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}
