//! What the backplane keeps in Redis, and how it reads it back.
//!
//! Per topic, a hash `PREFIX:{room:NAME}:meta` (`PREFIX:{*}:meta` for the
//! topic of everyone) holds the topic's `epoch` and `next` offset, and a
//! stream `PREFIX:{room:NAME}:stream` holds its recent messages, the one at
//! offset `o` under the entry id `0-(o+1)`: offsets are consecutive,
//! shared by every node, and a range of them is a range of ids. Both are
//! written by one script, so numbering and storing are one atomic step.
//! Personal messages go to the addressee node's inbox stream
//! `PREFIX:{inbox:NODE}`, user messages to `PREFIX:{users}`; the hash
//! `STREAM:size` beside each counts its payload bytes.
//!
//! The braces are Redis Cluster hash tags: the keys one script touches
//! (a topic's hash, stream and size, or a stream and its size) share a tag,
//! so they share a hash slot, and different rooms spread over the slots.

use bytes::Bytes;
use hub::{ConnId, Except, Message, Position, Topic};
use redis::Value;

/// Lua: `trim(stream, counter, most, limit)` takes the oldest entries
/// out of `stream` until it has at most `most` entries and its payloads
/// (field `m`) at most `limit` bytes, keeping the newest entry whatever
/// its size (other nodes still have to read it). `counter` is the hash
/// whose field `bytes` holds the payload bytes in the stream.
macro_rules! trim_lua {
    () => {
        r"
local function trim(stream, counter, most, limit)
  local bytes = tonumber(redis.call('HGET', counter, 'bytes') or '0')
  local count = redis.call('XLEN', stream)
  while count > 1 and (count > most or bytes > limit) do
    local oldest = redis.call('XRANGE', stream, '-', '+', 'COUNT', 1)[1]
    if not oldest then break end
    local fields = oldest[2]
    for i = 1, #fields - 1, 2 do
      if fields[i] == 'm' then bytes = bytes - #fields[i + 1] end
    end
    redis.call('XDEL', stream, oldest[1])
    count = count - 1
  end
  if count == 0 or bytes < 0 then bytes = 0 end
  redis.call('HSET', counter, 'bytes', bytes)
end
"
    };
}

/// Numbers a message and stores it in the topic's stream; creates the
/// topic (with the epoch offered, and an empty stream) if Redis does not
/// know it. The stream keeps at most its length and its bytes of
/// payloads, the meta hash counting the bytes.
///
/// KEYS: meta, stream. ARGV: epoch offered, stream length, stream bytes,
/// time to live (seconds, 0 for none), origin node, excluded connection,
/// kind, payload. Returns the epoch and the offset given.
pub(crate) const PUBLISH: &str = concat!(
    trim_lua!(),
    r"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'next', 0, 'bytes', 0)
end
local offset = redis.call('HINCRBY', KEYS[1], 'next', 1) - 1
redis.call('XADD', KEYS[2], '0-' .. (offset + 1),
  'e', epoch, 'n', ARGV[5], 'x', ARGV[6], 'k', ARGV[7], 'm', ARGV[8])
redis.call('HINCRBY', KEYS[1], 'bytes', #ARGV[8])
trim(KEYS[2], KEYS[1], tonumber(ARGV[2]), tonumber(ARGV[3]))
if tonumber(ARGV[4]) > 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[4])
  redis.call('EXPIRE', KEYS[2], ARGV[4])
end
return {epoch, offset}
"
);

/// Appends an entry to a stream of messages for nodes (an inbox, the user
/// stream), bounded like a topic's: at most a length and bytes of
/// payloads, counted in the hash `counter`; both keys expire after the
/// time to live.
///
/// KEYS: stream, counter. ARGV: length, bytes, time to live (seconds),
/// then the entry's fields and values. Returns the entry's id.
pub(crate) const APPEND: &str = concat!(
    trim_lua!(),
    r"
local fields = {}
local size = 0
for i = 4, #ARGV - 1, 2 do
  fields[#fields + 1] = ARGV[i]
  fields[#fields + 1] = ARGV[i + 1]
  if ARGV[i] == 'm' then size = size + #ARGV[i + 1] end
end
local id = redis.call('XADD', KEYS[1], '*', unpack(fields))
redis.call('HINCRBY', KEYS[2], 'bytes', size)
trim(KEYS[1], KEYS[2], tonumber(ARGV[1]), tonumber(ARGV[2]))
redis.call('EXPIRE', KEYS[1], ARGV[3])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return id
"
);

/// Where a topic stands, creating it if needed, with its latest messages.
///
/// KEYS: meta, stream. ARGV: epoch offered, how many messages, time to
/// live, and the epoch and next offset a node has read up to (0 0 if
/// none). If Redis is behind that node in the same epoch (it restarted
/// from a snapshot that lacks the latest writes), the topic starts a new
/// epoch: reusing offsets would give one offset two meanings. Returns the
/// epoch, the next offset and up to that many entries, newest first.
pub(crate) const PLACE: &str = r"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
local next = tonumber(redis.call('HGET', KEYS[1], 'next') or '0')
if epoch and epoch == ARGV[4] and next < tonumber(ARGV[5]) then
  epoch = nil
end
if not epoch then
  epoch = ARGV[1]
  next = 0
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'next', 0, 'bytes', 0)
end
if tonumber(ARGV[3]) > 0 then
  redis.call('EXPIRE', KEYS[1], ARGV[3])
  redis.call('EXPIRE', KEYS[2], ARGV[3])
end
local tail = {}
if tonumber(ARGV[2]) > 0 then
  tail = redis.call('XREVRANGE', KEYS[2], '+', '-', 'COUNT', ARGV[2])
end
return {epoch, next, tail}
";

/// Raises the node counter to at least a node's number, so that nodes
/// started after Redis lost its data do not take the numbers of nodes
/// still running. KEYS: the counter. ARGV: the node's number.
pub(crate) const CLAIM: &str = r"
local count = tonumber(redis.call('GET', KEYS[1]) or '0')
if count < tonumber(ARGV[1]) then
  redis.call('SET', KEYS[1], ARGV[1])
end
return 0
";

/// Keeps a node in the registry of live nodes for `ttl` more
/// milliseconds, by Redis's clock, and drops the nodes whose time is up.
/// KEYS: the registry (a sorted set: node, by when it expires). ARGV: the
/// node's number, the ttl in milliseconds.
pub(crate) const LIVE: &str = r"
local now = redis.call('TIME')
local ms = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000)
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', ms)
redis.call('ZADD', KEYS[1], ms + tonumber(ARGV[2]), ARGV[1])
return 0
";

/// Kinds of topic entries.
pub(crate) const TEXT: &str = "t";
pub(crate) const BINARY: &str = "b";
/// A notice: this many messages published on the origin node never
/// reached the stream.
pub(crate) const MISSED: &str = "g";

/// The Redis keys of one deployment.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    prefix: String,
}

impl Keys {
    pub(crate) fn new(prefix: &str) -> Self {
        Self {
            prefix: prefix.to_owned(),
        }
    }

    /// A topic's hash tag: every key of the topic carries it.
    fn topic_tag(topic: &Topic) -> String {
        match topic {
            Topic::All => "{*}".to_owned(),
            Topic::Room(room) => format!("{{room:{room}}}"),
        }
    }

    pub(crate) fn meta(&self, topic: &Topic) -> String {
        format!("{}:{}:meta", self.prefix, Self::topic_tag(topic))
    }

    pub(crate) fn stream(&self, topic: &Topic) -> String {
        format!("{}:{}:stream", self.prefix, Self::topic_tag(topic))
    }

    pub(crate) fn inbox(&self, node: u32) -> String {
        format!("{}:{{inbox:{node}}}", self.prefix)
    }

    pub(crate) fn users(&self) -> String {
        format!("{}:{{users}}", self.prefix)
    }

    /// The hash counting the payload bytes in a stream of [`APPEND`].
    pub(crate) fn size_of(stream: &str) -> String {
        format!("{stream}:size")
    }

    pub(crate) fn members(&self, node: u32) -> String {
        format!("{}:members:{node}", self.prefix)
    }

    /// The registry of live nodes, read by name: nothing scans for keys.
    pub(crate) fn live(&self) -> String {
        format!("{}:live", self.prefix)
    }

    pub(crate) fn presence(&self) -> String {
        format!("{}:presence", self.prefix)
    }

    pub(crate) fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }
}

/// A message as a kind and payload.
pub(crate) fn encode(message: &Message) -> (&'static str, &[u8]) {
    match message {
        Message::Text(text) => (TEXT, text.as_bytes()),
        _ => (BINARY, message.as_bytes()),
    }
}

/// A message from a kind and payload; `None` for text that is not UTF-8
/// or an unknown kind.
pub(crate) fn decode(kind: &[u8], payload: Vec<u8>) -> Option<Message> {
    match kind {
        b"t" => String::from_utf8(payload).ok().map(Message::text),
        b"b" => Some(Message::binary(Bytes::from(payload))),
        _ => None,
    }
}

/// Connections a message skips, as a stream field: their raw ids joined
/// by commas, or 0 for none.
pub(crate) fn except(except: &Except) -> String {
    if except.is_empty() {
        return "0".to_owned();
    }
    let ids: Vec<String> = except.iter().map(|id| id.get().to_string()).collect();
    ids.join(",")
}

/// One stream entry: its id and fields.
#[derive(Debug, Default)]
pub(crate) struct Entry {
    /// The id's two parts.
    pub(crate) id: (u64, u64),
    fields: Vec<(Vec<u8>, Vec<u8>)>,
}

impl Entry {
    /// An entry with this id and these fields, as Redis would give it.
    #[cfg(test)]
    pub(crate) fn new(id: (u64, u64), fields: &[(&str, &[u8])]) -> Self {
        let fields = (fields.iter())
            .map(|(name, value)| (name.as_bytes().to_vec(), value.to_vec()))
            .collect();
        Self { id, fields }
    }

    pub(crate) fn field(&self, name: &str) -> Option<&[u8]> {
        self.fields
            .iter()
            .find(|(key, _)| key == name.as_bytes())
            .map(|(_, value)| value.as_slice())
    }

    pub(crate) fn take(&mut self, name: &str) -> Option<Vec<u8>> {
        let index = self
            .fields
            .iter()
            .position(|(key, _)| key == name.as_bytes())?;
        Some(self.fields.swap_remove(index).1)
    }

    pub(crate) fn number(&self, name: &str) -> Option<u64> {
        std::str::from_utf8(self.field(name)?).ok()?.parse().ok()
    }

    /// The connections the entry's message skips (field `x`, as
    /// [`except`] writes it); an id that does not read is left out.
    pub(crate) fn except(&self) -> Except {
        let field = self.field("x").and_then(|x| std::str::from_utf8(x).ok());
        (field.unwrap_or_default().split(','))
            .filter_map(|raw| raw.parse().ok().and_then(ConnId::from_raw))
            .collect()
    }

    /// For a topic entry: its offset (the id's sequence minus one).
    pub(crate) fn offset(&self) -> Option<u64> {
        (self.id.0 == 0 && self.id.1 > 0).then(|| self.id.1 - 1)
    }
}

/// Why a reply could not be read.
#[derive(Debug, thiserror::Error)]
#[error("unexpected reply from Redis: {0}")]
pub(crate) struct Unexpected(pub(crate) &'static str);

pub(crate) fn bytes(value: Value) -> Result<Vec<u8>, Unexpected> {
    match value {
        Value::BulkString(bytes) => Ok(bytes),
        Value::SimpleString(text) => Ok(text.into_bytes()),
        Value::Int(n) => Ok(n.to_string().into_bytes()),
        _ => Err(Unexpected("expected a string")),
    }
}

/// The first element of an array reply, as a number.
/// Where the `PUBLISH` script placed a message: its reply, `{epoch,
/// offset}`.
pub(crate) fn position(value: Value) -> Option<Position> {
    let mut values = array(value).ok()?.into_iter().map(|v| number(v).ok());
    Some(Position {
        epoch: values.next()??,
        offset: values.next()??,
    })
}

pub(crate) fn number(value: Value) -> Result<u64, Unexpected> {
    let bytes = bytes(value)?;
    std::str::from_utf8(&bytes)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or(Unexpected("expected a number"))
}

fn array(value: Value) -> Result<Vec<Value>, Unexpected> {
    match value {
        Value::Array(items) | Value::Set(items) => Ok(items),
        Value::Nil => Ok(Vec::new()),
        _ => Err(Unexpected("expected an array")),
    }
}

/// A stream id, `ms-seq`.
pub(crate) fn parse_id(id: &[u8]) -> Option<(u64, u64)> {
    let text = std::str::from_utf8(id).ok()?;
    let (ms, seq) = text.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// One entry, `[id, [field, value, ...]]`.
pub(crate) fn entry(value: Value) -> Result<Entry, Unexpected> {
    let mut parts = array(value)?.into_iter();
    let (Some(id), Some(fields)) = (parts.next(), parts.next()) else {
        return Err(Unexpected("expected an entry"));
    };
    let id = parse_id(&bytes(id)?).ok_or(Unexpected("expected an entry id"))?;
    let mut flat = array(fields)?.into_iter();
    let mut fields = Vec::new();
    while let (Some(key), Some(value)) = (flat.next(), flat.next()) {
        fields.push((bytes(key)?, bytes(value)?));
    }
    Ok(Entry { id, fields })
}

/// An `XREAD` reply: for each stream with news, its key and entries.
/// `Nil` (timed out or unblocked) is no news.
/// Each stream's key and entries.
pub(crate) type Streams = Vec<(Vec<u8>, Vec<Entry>)>;

pub(crate) fn streams(value: Value) -> Result<Streams, Unexpected> {
    let mut out = Vec::new();
    match value {
        Value::Map(pairs) => {
            for (key, entries) in pairs {
                let entries = array(entries)?.into_iter().map(entry);
                out.push((bytes(key)?, entries.collect::<Result<_, _>>()?));
            }
        }
        other => {
            for stream in array(other)? {
                let mut parts = array(stream)?.into_iter();
                let (Some(key), Some(entries)) = (parts.next(), parts.next()) else {
                    return Err(Unexpected("expected a stream"));
                };
                let entries = array(entries)?.into_iter().map(entry);
                out.push((bytes(key)?, entries.collect::<Result<_, _>>()?));
            }
        }
    }
    Ok(out)
}

/// A [`PLACE`] reply.
#[derive(Debug)]
pub(crate) struct Placed {
    pub(crate) epoch: u64,
    pub(crate) next: u64,
    /// The latest entries, oldest first.
    pub(crate) tail: Vec<Entry>,
}

pub(crate) fn place(value: Value) -> Result<Placed, Unexpected> {
    let mut parts = array(value)?.into_iter();
    let (Some(epoch), Some(next), Some(tail)) = (parts.next(), parts.next(), parts.next()) else {
        return Err(Unexpected("expected epoch, next and entries"));
    };
    let mut tail = array(tail)?
        .into_iter()
        .map(entry)
        .collect::<Result<Vec<_>, _>>()?;
    tail.reverse();
    Ok(Placed {
        epoch: number(epoch)?,
        next: number(next)?,
        tail,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(text: &str) -> Value {
        Value::BulkString(text.as_bytes().to_vec())
    }

    /// The Redis Cluster hash slot of `key`: CRC16 (XMODEM) of its hash
    /// tag (the text in its first `{…}`, when not empty) or of all of it,
    /// modulo 16 384.
    fn slot(key: &str) -> u16 {
        let tag = (key.find('{'))
            .and_then(|open| {
                let close = key[open + 1..].find('}')?;
                (close > 0).then(|| &key[open + 1..open + 1 + close])
            })
            .unwrap_or(key);
        let mut crc: u16 = 0;
        for byte in tag.bytes() {
            crc ^= u16::from(byte) << 8;
            for _ in 0..8 {
                crc = if crc & 0x8000 != 0 {
                    (crc << 1) ^ 0x1021
                } else {
                    crc << 1
                };
            }
        }
        crc % 16_384
    }

    #[test]
    fn the_keys_of_one_script_share_a_slot_and_rooms_spread() {
        // Redis's own examples (cluster spec): "123456789" hashes to
        // 0x31C3, and a tag decides alone.
        assert_eq!(slot("123456789"), 0x31C3);
        assert_eq!(slot("{user1000}.following"), slot("{user1000}.followers"));
        let keys = Keys::new("hub");
        let mut slots = std::collections::HashSet::new();
        for topic in [Topic::All, "lobby".into(), "rust".into(), "a}b".into()] {
            let (meta, stream) = (keys.meta(&topic), keys.stream(&topic));
            assert_eq!(slot(&meta), slot(&stream), "{meta} {stream}");
            assert_eq!(slot(&stream), slot(&Keys::size_of(&stream)), "{stream}");
            slots.insert(slot(&stream));
        }
        assert_eq!(slots.len(), 4, "four topics, four slots: {slots:?}");
        for stream in [keys.inbox(3), keys.users()] {
            assert_eq!(slot(&stream), slot(&Keys::size_of(&stream)), "{stream}");
        }
        assert_ne!(slot(&keys.inbox(1)), slot(&keys.inbox(2)));
        assert_eq!(keys.stream(&"lobby".into()), "hub:{room:lobby}:stream");
    }

    #[test]
    fn entries_are_read_with_their_offsets_and_fields() {
        let reply = Value::Array(vec![Value::Array(vec![
            bulk("hub:{*}:stream"),
            Value::Array(vec![Value::Array(vec![
                bulk("0-8"),
                Value::Array(vec![bulk("e"), bulk("42"), bulk("m"), bulk("hi")]),
            ])]),
        ])]);
        let mut streams = streams(reply).unwrap_or_default();
        assert_eq!(streams.len(), 1);
        let (key, mut entries) = streams.remove(0);
        assert_eq!(key, b"hub:{*}:stream");
        let entry = &mut entries[0];
        assert_eq!(entry.offset(), Some(7));
        assert_eq!(entry.number("e"), Some(42));
        assert_eq!(entry.take("m"), Some(b"hi".to_vec()));
        assert_eq!(entry.field("m"), None);
        assert!(streams_of_nil_are_empty());
    }

    fn streams_of_nil_are_empty() -> bool {
        matches!(streams(Value::Nil), Ok(found) if found.is_empty())
    }

    #[test]
    fn malformed_replies_are_errors_not_panics() {
        assert!(streams(bulk("nope")).is_err());
        assert!(place(Value::Array(vec![bulk("1")])).is_err());
        assert!(entry(Value::Array(vec![bulk("x-y"), Value::Array(vec![])])).is_err());
        assert_eq!(parse_id(b"12-3"), Some((12, 3)));
        assert_eq!(parse_id(b"12"), None);
    }

    #[test]
    fn messages_survive_encoding() {
        for message in [Message::text("héllo"), Message::binary(vec![0, 159, 146])] {
            let (kind, payload) = encode(&message);
            assert_eq!(decode(kind.as_bytes(), payload.to_vec()), Some(message));
        }
        assert_eq!(decode(b"t", vec![0xff]), None);
        assert_eq!(decode(b"?", vec![]), None);
    }
}
