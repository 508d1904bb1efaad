//! What the backplane keeps in Redis, and how it reads it back.
//!
//! Keys live in partitions ([`Keys`]), each with its hash tag `{TAG}`.
//! Per topic, a hash `PREFIX:{TAG}:room:NAME:meta` (`PREFIX:{TAG}:all:meta`
//! for the topic of everyone) holds the topic's `epoch` and `next`
//! offset, and a stream `PREFIX:{TAG}:room:NAME:stream` holds its recent
//! messages, the one at offset `o` under the entry id `0-(o+1)`: offsets
//! are consecutive, shared by every node, and a range of them is a range
//! of ids. Both are written by one script, so numbering and storing are
//! one atomic step. Personal messages go to the addressee node's inbox
//! stream `PREFIX:{TAG}:inbox:NODE`, user messages to the user stream of
//! the user's partition, `PREFIX:{TAG}:users`; the hash `STREAM:size`
//! beside each counts its payload bytes.
//!
//! The braces are Redis Cluster hash tags: the keys one script touches
//! (a topic's hash, stream and size, or a stream and its size) are in one
//! partition, so they share a hash slot, and rooms spread over the
//! partitions by name.

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

/// Lua: `moved(meta, stream, margin)`, on a cluster (`margin` > 0),
/// notices that a topic was numbered by another master than this one: a
/// replica promoted in a failover (which may lack the latest lines, as
/// replication is asynchronous), or a master the topic's slot moved from.
/// Lines may have been lost, and other nodes may have seen them at offsets
/// this master would give again; so `margin` offsets are skipped, and a
/// notice stored at the last of them says which (field `f`, the first).
/// The notice holds nothing for connections: each is told, by its hub,
/// the gap it sees. The master's id is kept in the meta hash (`server`).
macro_rules! moved_lua {
    () => {
        r"
local function moved(meta, stream, margin)
  if margin == 0 then return end
  local here = redis.call('CLUSTER', 'MYID')
  local was = redis.call('HGET', meta, 'server')
  if was and was ~= here then
    local first = tonumber(redis.call('HGET', meta, 'next') or '0')
    local last = first + margin
    redis.call('XADD', stream, '0-' .. (last + 1), 'e', redis.call('HGET', meta, 'epoch'),
      'n', 0, 'x', 0, 'k', 'g', 'm', margin, 'f', first)
    redis.call('HSET', meta, 'next', last + 1)
    redis.call('HINCRBY', meta, 'bytes', #tostring(margin))
  end
  if was ~= here then redis.call('HSET', meta, 'server', here) end
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
/// kind, payload, failover margin (0 on one Redis). Returns the epoch and
/// the offset given.
pub(crate) const PUBLISH: &str = concat!(
    trim_lua!(),
    moved_lua!(),
    r"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if not epoch then
  epoch = ARGV[1]
  redis.call('DEL', KEYS[2])
  redis.call('HSET', KEYS[1], 'epoch', epoch, 'next', 0, 'bytes', 0)
end
moved(KEYS[1], KEYS[2], tonumber(ARGV[9]))
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
/// live, the epoch and next offset a node has read up to (0 0 if none),
/// and the failover margin (0 on one Redis). If Redis is behind that node
/// in the same epoch (it restarted from a snapshot that lacks the latest
/// writes, or more lines were lost in a failover than the margin skips),
/// the topic starts a new epoch: reusing offsets would give one offset two
/// meanings. Returns the epoch, the next offset and up to that many
/// entries, newest first.
pub(crate) const PLACE: &str = concat!(
    moved_lua!(),
    r"
local epoch = redis.call('HGET', KEYS[1], 'epoch')
if epoch then moved(KEYS[1], KEYS[2], tonumber(ARGV[6])) end
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
"
);

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

/// Default number of partitions: see [`Keys`].
pub(crate) const DEFAULT_PARTITIONS: usize = 16;
/// Hash slots in a Redis Cluster.
pub(crate) const SLOTS: usize = 16_384;

/// The Redis keys of one deployment.
///
/// Keys are spread over a fixed number of partitions. Every key of a
/// partition carries the partition's hash tag, so on a Redis Cluster a
/// partition is one hash slot: one `XREAD` can read every stream of it
/// (a cluster refuses commands whose keys lie in several slots), and a
/// node needs one reader per partition, however many rooms it follows.
/// The tags are chosen so that the partitions' slots are evenly spaced:
/// a cluster whose masters hold equal ranges of slots (what
/// `redis-cli --cluster create` makes) holds equal numbers of partitions.
///
/// A room is in the partition its name hashes to (FNV-1a), so rooms
/// spread over the partitions by name; the topic of everyone is in partition 0. Each
/// partition has its own user and presence streams (a user's messages go
/// to the partition of the user's name), so no one key carries all of
/// that traffic; a node's inbox is in partition `node % partitions`.
#[derive(Clone, Debug)]
pub(crate) struct Keys {
    prefix: String,
    /// Per partition, `PREFIX:{TAG}`.
    heads: Vec<String>,
}

impl Keys {
    /// The keys under `prefix`, over `partitions` partitions (1 to
    /// [`SLOTS`]).
    pub(crate) fn new(prefix: &str, partitions: usize) -> Self {
        let partitions = partitions.clamp(1, SLOTS);
        let heads = (0..partitions)
            .map(|partition| format!("{prefix}:{{{}}}", tag(partition, partitions)))
            .collect();
        Self {
            prefix: prefix.to_owned(),
            heads,
        }
    }

    pub(crate) fn partitions(&self) -> usize {
        self.heads.len()
    }

    /// The partition of a name, by its FNV-1a hash: names that differ
    /// in a digit or two (`room-1`, `room-2`, …) spread more evenly than by
    /// the low bits of their CRC16.
    fn partition_of(&self, name: &str) -> usize {
        let hash = (name.bytes()).fold(0xcbf2_9ce4_8422_2325_u64, |hash, byte| {
            (hash ^ u64::from(byte)).wrapping_mul(0x0000_0100_0000_01b3)
        });
        usize::try_from(hash % self.heads.len() as u64).unwrap_or(0)
    }

    /// The partition of a topic's keys.
    pub(crate) fn partition(&self, topic: &Topic) -> usize {
        match topic {
            Topic::All => 0,
            Topic::Room(room) => self.partition_of(room.as_str()),
        }
    }

    /// The partition of a user's messages.
    pub(crate) fn user_partition(&self, user: &str) -> usize {
        self.partition_of(user)
    }

    /// The partition of a node's inbox.
    pub(crate) fn node_partition(&self, node: u32) -> usize {
        usize::try_from(node).unwrap_or(0) % self.heads.len()
    }

    fn topic_key(&self, topic: &Topic, kind: &str) -> String {
        let head = &self.heads[self.partition(topic)];
        match topic {
            Topic::All => format!("{head}:all:{kind}"),
            Topic::Room(room) => format!("{head}:room:{room}:{kind}"),
        }
    }

    pub(crate) fn meta(&self, topic: &Topic) -> String {
        self.topic_key(topic, "meta")
    }

    pub(crate) fn stream(&self, topic: &Topic) -> String {
        self.topic_key(topic, "stream")
    }

    /// The topic whose stream `key` is ([`stream`](Self::stream) the
    /// other way round), without listing every topic's key.
    pub(crate) fn stream_topic(&self, key: &[u8]) -> Option<Topic> {
        let key = std::str::from_utf8(key).ok()?;
        let rest = key.strip_prefix(self.prefix.as_str())?.strip_prefix(":{")?;
        let (_, rest) = rest.split_once("}:")?;
        let topic = match rest.strip_suffix(":stream")? {
            "all" => Topic::All,
            room => Topic::Room(room.strip_prefix("room:")?.into()),
        };
        (self.stream(&topic) == key).then_some(topic)
    }

    pub(crate) fn inbox(&self, node: u32) -> String {
        format!("{}:inbox:{node}", self.heads[self.node_partition(node)])
    }

    /// The user stream of a partition.
    pub(crate) fn users(&self, partition: usize) -> String {
        format!("{}:users", self.heads[partition])
    }

    /// The presence stream of a partition.
    pub(crate) fn presence(&self, partition: usize) -> String {
        format!("{}:presence", self.heads[partition])
    }

    /// A node's bell in a partition: a stream the node writes to wake its
    /// own reader of that partition, to read a new set of streams.
    pub(crate) fn bell(&self, partition: usize, node: u32) -> String {
        format!("{}:bell:{node}", self.heads[partition])
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

    pub(crate) fn nodes(&self) -> String {
        format!("{}:nodes", self.prefix)
    }
}

/// The hash tag of partition `partition` of `partitions`: the first of
/// `p{partition}.0`, `p{partition}.1`, … whose slot lies in the
/// partition's share of the slots (one share when there are more
/// partitions than slots per share allow, which `Keys::new` prevents).
fn tag(partition: usize, partitions: usize) -> String {
    let share = SLOTS / partitions;
    let range = partition * share..(partition + 1) * share;
    // A share of `s` slots is hit once in `16384 / s` tries on average;
    // the bound is far past any share's need.
    (0..1 << 20)
        .map(|k| format!("p{partition}.{k}"))
        .find(|candidate| range.contains(&usize::from(slot(candidate.as_bytes()))))
        .unwrap_or_else(|| format!("p{partition}"))
}

/// CRC16 (XMODEM), as Redis Cluster hashes keys.
pub(crate) fn crc16(bytes: &[u8]) -> u16 {
    bytes.iter().fold(0, |crc, byte| {
        (crc << 8) ^ CRC16[usize::from((crc >> 8) as u8 ^ byte)]
    })
}

/// [`crc16`]'s table: the CRC of each byte alone.
static CRC16: [u16; 256] = {
    let mut table = [0u16; 256];
    let mut byte = 0;
    while byte < 256 {
        let mut crc = (byte as u16) << 8;
        let mut bit = 0;
        while bit < 8 {
            crc = if crc & 0x8000 != 0 {
                (crc << 1) ^ 0x1021
            } else {
                crc << 1
            };
            bit += 1;
        }
        table[byte] = crc;
        byte += 1;
    }
    table
};

/// The Redis Cluster hash slot of `key`: CRC16 of its hash tag (the text
/// in its first `{…}`, when not empty) or of all of it, modulo 16 384.
pub(crate) fn slot(key: &[u8]) -> u16 {
    let tagged = (key.iter().position(|b| *b == b'{')).and_then(|open| {
        let rest = &key[open + 1..];
        let close = rest.iter().position(|b| *b == b'}')?;
        (close > 0).then(|| &rest[..close])
    });
    crc16(tagged.unwrap_or(key)) % 16_384
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

    fn slot_of(key: &str) -> usize {
        usize::from(slot(key.as_bytes()))
    }

    #[test]
    fn the_keys_of_one_partition_share_a_slot_and_partitions_spread_evenly() {
        // Redis's own examples (cluster spec): "123456789" hashes to
        // 0x31C3, and a tag decides alone.
        assert_eq!(slot_of("123456789"), 0x31C3);
        assert_eq!(
            slot_of("{user1000}.following"),
            slot_of("{user1000}.followers")
        );
        assert_eq!(slot_of("a{}b"), usize::from(crc16(b"a{}b")) % SLOTS);
        let keys = Keys::new("hub", 16);
        let share = SLOTS / 16;
        for partition in 0..16 {
            let users = keys.users(partition);
            assert_eq!(slot_of(&users) / share, partition, "{users}");
            for key in [keys.presence(partition), keys.bell(partition, 3)] {
                assert_eq!(slot_of(&key), slot_of(&users), "{key}");
            }
        }
        // Three masters holding equal ranges hold 5 or 6 partitions each.
        let mut per_master = [0; 3];
        for partition in 0..16 {
            per_master[slot_of(&keys.users(partition)) * 3 / SLOTS] += 1;
        }
        per_master.sort_unstable();
        assert_eq!(per_master, [5, 5, 6]);
        let mut partitions = std::collections::HashSet::new();
        for topic in [
            Topic::All,
            "lobby".into(),
            "rust".into(),
            "a}b".into(),
            "{x}".into(),
        ] {
            let (meta, stream) = (keys.meta(&topic), keys.stream(&topic));
            let home = keys.users(keys.partition(&topic));
            assert_eq!(slot_of(&meta), slot_of(&home), "{meta}");
            assert_eq!(slot_of(&stream), slot_of(&home), "{stream}");
            assert_eq!(slot_of(&Keys::size_of(&stream)), slot_of(&home));
            partitions.insert(keys.partition(&topic));
        }
        assert!(
            partitions.len() >= 3,
            "rooms spread by name: {partitions:?}"
        );
        // A hundred rooms named alike spread over the partitions, and so
        // over three masters, within a third of the mean.
        let mut per_master = [0; 3];
        for i in 0..100 {
            let stream = keys.stream(&format!("r{i}").as_str().into());
            per_master[slot_of(&stream) * 3 / SLOTS] += 1;
        }
        assert!(
            per_master.iter().all(|n| (22..=44).contains(n)),
            "{per_master:?}"
        );
        for node in [1, 16, 17] {
            let inbox = keys.inbox(node);
            let home = keys.users(keys.node_partition(node));
            assert_eq!(slot_of(&inbox), slot_of(&home), "{inbox}");
            assert_eq!(slot_of(&Keys::size_of(&inbox)), slot_of(&inbox));
        }
        assert_eq!(keys.node_partition(17), 1);
        for topic in [
            Topic::All,
            "lobby".into(),
            "a:b}c{d".into(),
            ":stream".into(),
        ] {
            let stream = keys.stream(&topic);
            assert_eq!(keys.stream_topic(stream.as_bytes()), Some(topic));
        }
        for other in [keys.users(3), keys.meta(&"lobby".into()), keys.inbox(2)] {
            assert_eq!(keys.stream_topic(other.as_bytes()), None, "{other}");
        }
        // A room's key under another partition's tag is no room's stream.
        let lobby = keys.stream(&"lobby".into());
        let elsewhere = lobby.replacen(
            &keys.heads[keys.partition(&"lobby".into())],
            &keys.heads[(keys.partition(&"lobby".into()) + 1) % 16],
            1,
        );
        assert_eq!(keys.stream_topic(elsewhere.as_bytes()), None);
        assert!(keys.stream(&"lobby".into()).ends_with(":room:lobby:stream"));
        // One partition is one Redis: every key still has a tag.
        assert_eq!(Keys::new("hub", 0).partitions(), 1);
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
