//! What `/ws` and `/echo` do with messages.
//!
//! `/ws` without parameters is the classic chat ([`Chat`]), with the
//! FastAPI tutorial's texts exactly. With a room, a name or the JSON format
//! it is the room chat ([`RoomChat`], in a hub of its own): named lines,
//! joins and leaves, commands, members and resumable positions (see
//! [`crate::protocol`]).

use std::sync::Arc;
use std::time::Duration;

use hub::{
    Event, Hub, Message, Metadata, Position, PresenceError, PresenceKind, Resume, RoomName, Topic,
};
use hub_ws::{Close, CloseCode, Ended, Handler, Handshake, Refusal, Session};
use serde_json::json;

use crate::auth::Auth;
use crate::presence::{names_of, Presences};
use crate::protocol::{self, parse_command, payload, ChatOptions, Command, Format, Framed};

fn text_only() -> Close {
    Close::new(CloseCode::UNSUPPORTED, "only text messages are supported")
}

/// How long a join waits for a room new on this node to be placed by the
/// other nodes (see [`Hub::until_placed`]) before welcoming the client.
const PLACE_WITHIN: Duration = Duration::from_secs(5);

fn slow_down(dropped: u32) -> String {
    format!("slow down: {dropped} message(s) dropped")
}

/// `/ws`: the classic broadcast chat. Every text message reaches every
/// client (the sender included) as `Client says: {text}`; when a client
/// leaves, the others are told.
#[derive(Clone, Debug, Default)]
pub struct Chat {
    auth: Auth,
}

impl Chat {
    /// The endpoint, letting in whom `auth` accepts.
    #[must_use]
    pub fn new(auth: Auth) -> Self {
        Self { auth }
    }
}

impl Handler for Chat {
    fn authenticate(
        &self,
        handshake: &Handshake<'_>,
        metadata: Metadata,
    ) -> Result<Metadata, Refusal> {
        self.auth.check(handshake, metadata)
    }

    async fn on_message(&self, session: &Session, message: Message) -> Result<(), Close> {
        let text = message.as_text().ok_or_else(text_only)?;
        session
            .hub()
            .broadcast(protocol::concat(&["Client says: ", text]));
        Ok(())
    }

    fn on_throttled(&self, _session: &Session, dropped: u32) -> Option<Message> {
        Some(Message::text(slow_down(dropped)))
    }

    async fn on_close(&self, session: &Session, _ended: &Ended) {
        // When the whole server is going away nobody is "leaving".
        if !session.hub().is_shut_down() {
            session.hub().broadcast("A client disconnected");
        }
    }
}

/// `/ws` with parameters: the room chat, in its own hub. Named lines,
/// joins and leaves, commands, member lists, resumable positions.
#[derive(Clone, Debug, Default)]
pub struct RoomChat {
    auth: Auth,
    presences: Arc<Presences>,
    framed: Arc<Framed>,
}

impl RoomChat {
    /// The endpoint, letting in whom `auth` accepts.
    #[must_use]
    pub fn new(auth: Auth) -> Self {
        Self {
            auth,
            presences: Arc::default(),
            framed: Arc::default(),
        }
    }

    /// How long joins and leaves wait after a presence line to go out
    /// together (100 ms by default; zero: each at once).
    #[must_use]
    pub fn with_presence_burst(mut self, burst: Duration) -> Self {
        self.presences = Arc::new(Presences::new(burst));
        self
    }
}

impl Handler for RoomChat {
    fn authenticate(
        &self,
        handshake: &Handshake<'_>,
        metadata: Metadata,
    ) -> Result<Metadata, Refusal> {
        self.auth.check(handshake, metadata)
    }

    async fn on_open(&self, session: &Session) {
        let Some(options) = session.metadata().data::<ChatOptions>() else {
            return;
        };
        let hub = session.hub();
        let id = session.id();
        let name = current_name(hub, session);
        if session.metadata().name().is_none() {
            // Anonymous room-chat clients get a guest name.
            rename(hub, session, &name);
        } else {
            remember_name(session, &name);
        }
        let topic = Topic::Room(options.room.clone());
        let before = hub.position(&topic);
        let joined = match options.resume {
            Some(position) => hub.resume(id, options.room.clone(), position),
            None => hub
                .join(id, options.room.clone())
                .map(|_| Resume::CaughtUp { replayed: 0 }),
        };
        let Ok(joined) = joined else { return };
        if hub.is_shared() {
            // A room new on this node gets its place from the other nodes
            // first; meanwhile this client is a member and misses nothing.
            let _ = tokio::time::timeout(PLACE_WITHIN, hub.until_placed(&topic)).await;
        }
        // Where the room stood when this client joined: lines from `next`
        // on reach it (a room created by this join starts at 0, or, shared
        // with other nodes, where it was placed).
        let position = hub.position(&topic).map(|after| match before {
            Some(before) if before.epoch == after.epoch => before,
            _ if hub.is_shared() => after,
            _ => Position {
                epoch: after.epoch,
                offset: 0,
            },
        });
        let resumed = match (options.resume, joined) {
            (None, _) => json!(null),
            (Some(_), Resume::CaughtUp { replayed }) => json!({ "replayed": replayed }),
            (Some(_), Resume::Resync { missed, replayed }) => {
                json!({ "replayed": replayed, "resync": { "missed": missed } })
            }
            // The room is new on this node: the replay follows.
            (Some(_), Resume::Pending) => json!({ "pending": true }),
            (Some(_), _) => json!(null),
        };
        let welcome = payload(
            "welcome",
            json!({
                "room": options.room.as_str(),
                "name": name,
                "epoch": position.map(|p| p.epoch.to_string()),
                "next": position.map(|p| p.offset),
                "resumed": resumed,
            }),
        );
        // Never waits: the session's writer is not running yet.
        let _ = hub.try_send_personal(id, welcome);
        // The whole list to the joiner alone; the others learn the change
        // from the line announcing it (see `presence`). Text clients are
        // shown no list: they get none.
        if options.format == Format::Json {
            let _ = hub.try_send_personal(id, self.presences.list(hub, &options.room));
        }
        self.presences.joined(hub, &options.room, &name);
    }

    async fn on_message(&self, session: &Session, message: Message) -> Result<(), Close> {
        let text = message.as_text().ok_or_else(text_only)?;
        let Some(options) = session.metadata().data::<ChatOptions>() else {
            return Ok(());
        };
        let hub = session.hub();
        let name = current_name(hub, session);
        match parse_command(text) {
            None => {
                let text = protocol::one_line(text);
                announce(hub, options, "chat", json!({ "from": name, "text": text }));
            }
            Some(command) => {
                let signed_in = self.auth.is_required();
                let presences = &self.presences;
                run(command, hub, session, options, &name, signed_in, presences).await;
            }
        }
        Ok(())
    }

    fn on_throttled(&self, _session: &Session, dropped: u32) -> Option<Message> {
        Some(Message::text(payload(
            "info",
            json!({ "text": slow_down(dropped) }),
        )))
    }

    fn render(&self, session: &Session, event: Event) -> Option<Message> {
        let options = session.metadata().data::<ChatOptions>()?;
        self.framed.render(options.format, event)
    }

    async fn on_close(&self, session: &Session, _ended: &Ended) {
        let hub = session.hub();
        // When the whole server is going away nobody is "leaving".
        if hub.is_shut_down() {
            return;
        }
        if let Some(options) = session.metadata().data::<ChatOptions>() {
            // The hub has already forgotten the connection.
            let name = last_name(session).unwrap_or_else(|| "someone".to_owned());
            self.presences.left(hub, &options.room, &name);
        }
    }
}

/// Runs a room-chat command; replies go to the sender alone.
async fn run(
    command: Command<'_>,
    hub: &Hub,
    session: &Session,
    options: &ChatOptions,
    name: &str,
    signed_in: bool,
    presences: &Presences,
) {
    let info = |text: String| payload("info", json!({ "text": text }));
    let reply = match command {
        Command::Msg { to, text } => {
            let line = payload("private", json!({ "from": name, "to": to, "text": text }));
            // Reached here, or connected to another node (as the nodes
            // last told each other), which the line went to as well.
            let here = hub.to_user(to).broadcast(line.clone());
            if here == 0 && hub.connections_of(to) == 0 {
                Some(info(format!("no one called {to} is connected")))
            } else if to == name {
                None
            } else {
                Some(line)
            }
        }
        Command::Who => {
            let names = member_names(hub, options);
            Some(info(format!("in {}: {}", options.room, names.join(", "))))
        }
        Command::Nick(_) if signed_in => {
            Some(info("your name is your user id, from your token".into()))
        }
        Command::Nick(new) if !protocol::valid_name(new) => Some(info(
            "names are 1 to 32 characters, without spaces or control characters".into(),
        )),
        Command::Nick(new) if new == name => Some(info(format!("you are already {new}"))),
        Command::Nick(new) => {
            rename(hub, session, new);
            presences.renamed(hub, &options.room, name, new);
            None
        }
        Command::Usage(usage) => Some(info(usage.to_owned())),
        Command::Unknown(word) => Some(info(format!(
            "unknown command /{word}; try /msg NAME text, /who or /nick NAME"
        ))),
    };
    if let Some(reply) = reply {
        let _ = session.send(reply).await;
    }
}

/// The connection's name now (it may have changed with /nick).
fn current_name(hub: &Hub, session: &Session) -> String {
    hub.metadata(session.id())
        .and_then(|m| m.name().map(str::to_owned))
        .unwrap_or_else(|| format!("guest-{}", session.id().get()))
}

/// The name the connection had last, kept for its goodbye.
fn last_name(session: &Session) -> Option<String> {
    session
        .metadata()
        .data::<ChatOptions>()
        .and_then(|options| options.last_name.lock().ok()?.clone())
}

fn rename(hub: &Hub, session: &Session, name: &str) {
    if let Some(metadata) = hub.metadata(session.id()) {
        let renamed: Metadata = metadata.with_name(name).with_user(name);
        hub.set_metadata(session.id(), renamed);
    }
    remember_name(session, name);
}

fn remember_name(session: &Session, name: &str) {
    if let Some(options) = session.metadata().data::<ChatOptions>() {
        if let Ok(mut last) = options.last_name.lock() {
            *last = Some(name.to_owned());
        }
    }
}

fn announce(hub: &Hub, options: &ChatOptions, kind: &str, fields: serde_json::Value) {
    hub.to(&options.room).broadcast(payload(kind, fields));
}

fn member_names(hub: &Hub, options: &ChatOptions) -> Vec<String> {
    names_of(&hub.members(options.room.as_str()))
}

/// Tells this node's members of `room` that `name` (of another node) is
/// gone, if no connection of that name is left.
fn tell_departure(hub: &Hub, room: &RoomName, name: &str, node: u32) {
    let members = hub.members(room.as_str());
    if names_of(&members).iter().any(|present| present == name) {
        return;
    }
    let fields = json!({ "room": room.as_str(), "joins": [], "leaves": [name] });
    let diff = Message::text(payload("presence", fields));
    for (id, _) in members.into_iter().filter(|(id, _)| id.node() == node) {
        let _ = hub.try_send_personal(id, diff.clone());
    }
}

/// With several nodes: when members of another node leave without a word
/// (that node died, and its members expired), tells this node's members
/// of the room who is left. Ends when the hub shuts down.
pub(crate) async fn follow_departures(hub: Hub, node: u32) {
    let mut events = hub.presence();
    loop {
        match events.recv().await {
            Ok(event) if event.kind == PresenceKind::Left && event.id.node() != node => {
                if let (Topic::Room(room), Some(name)) = (&event.topic, event.metadata.name()) {
                    tell_departure(&hub, room, name, node);
                }
            }
            Ok(_) | Err(PresenceError::Missed { .. }) => {}
            Err(_) => return,
        }
        if hub.is_shut_down() {
            return;
        }
    }
}

/// `/echo`: replies `Message text was: {text}` to the sender alone.
#[derive(Clone, Debug, Default)]
pub struct Echo {
    auth: Auth,
}

impl Echo {
    /// The endpoint, letting in whom `auth` accepts.
    #[must_use]
    pub fn new(auth: Auth) -> Self {
        Self { auth }
    }
}

impl Handler for Echo {
    fn authenticate(
        &self,
        handshake: &Handshake<'_>,
        metadata: Metadata,
    ) -> Result<Metadata, Refusal> {
        self.auth.check(handshake, metadata)
    }

    async fn on_message(&self, session: &Session, message: Message) -> Result<(), Close> {
        let text = message.as_text().ok_or_else(text_only)?;
        // Waits while this client's reply queue is full: a client that does
        // not read its replies slows only its own reads. An error means the
        // session is already ending.
        let _ = session
            .send(protocol::concat(&["Message text was: ", text]))
            .await;
        Ok(())
    }

    fn on_throttled(&self, _session: &Session, dropped: u32) -> Option<Message> {
        Some(Message::text(slow_down(dropped)))
    }
}
