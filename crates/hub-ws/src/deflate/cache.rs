//! Messages deflated once for every socket they go to: on their own, and
//! in a chain.

use std::cell::RefCell;
use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use bytes::Bytes;
use flate2::{Compress, Compression, FlushCompress, Status};

use super::chain::{Chains, Link, Place};
use super::{MIN_DEFLATE, TAIL};

/// Recent messages whose deflated form is kept, per shard: readers of a
/// busy room are thousands of messages apart, and each should find the
/// form the first one made.
const SHARD_ENTRIES: usize = 4096;
/// Bytes of originals kept per shard (their deflated forms are smaller).
/// The originals are mostly held by history anyway; what the cache adds
/// is their deflated forms, up to 16 MiB in all.
const SHARD_BYTES: usize = 1 << 20;
/// Shards of the cache: sockets on different threads rarely wait for one
/// another.
const SHARDS: usize = 16;
/// Answers each thread keeps in front of the shared cache.
const RECENT_ENTRIES: usize = 1024;

/// `payload` deflated on its own (no context taken over) with a window of
/// `bits`, without the flush marker; `None` when that would not be
/// shorter, or cannot be done within the window.
pub(crate) fn deflate(payload: &[u8], bits: u8) -> Option<Bytes> {
    if payload.len() < MIN_DEFLATE || !(9..=15).contains(&bits) {
        return None;
    }
    thread_local! {
        /// A compressor per window size, reset for each message: making
        /// one allocates a few hundred kilobytes.
        static COMPRESSORS: RefCell<[Option<Compress>; 7]> = const { RefCell::new([const { None }; 7]) };
    }
    COMPRESSORS.with(|compressors| {
        let mut compressors = compressors.borrow_mut();
        let slot = &mut compressors[usize::from(bits - 9)];
        let compress = slot.get_or_insert_with(|| {
            Compress::new_with_window_bits(Compression::default(), false, bits)
        });
        compress.reset();
        let out = flushed(compress, payload, payload.len())?;
        (out.len() < payload.len()).then(|| Bytes::from(out))
    })
}

/// `payload` through `compress` with a sync flush, without the flush
/// marker; `None` past `limit` bytes, or if deflate fails.
pub(super) fn flushed(compress: &mut Compress, payload: &[u8], limit: usize) -> Option<Vec<u8>> {
    let start = compress.total_in();
    let mut out = Vec::with_capacity(payload.len().min(limit) + 16);
    loop {
        let consumed = usize::try_from(compress.total_in() - start).ok()?;
        let status = compress
            .compress_vec(payload.get(consumed..)?, &mut out, FlushCompress::Sync)
            .ok()?;
        let done = compress.total_in() - start == payload.len() as u64
            && out.len() < out.capacity()
            && status != Status::BufError;
        if done {
            break;
        }
        if out.len() > limit + TAIL.len() {
            return None;
        }
        out.reserve(256);
    }
    if !out.ends_with(&TAIL) {
        return None;
    }
    out.truncate(out.len() - TAIL.len());
    Some(out)
}

/// Deflated forms of recent messages, shared by every socket of a server:
/// a broadcast to N compressing clients is deflated once on its own, and
/// once in its chain.
///
/// An entry is found by the message's buffer (its address and length)
/// and keeps that buffer, so the address cannot be reused by another
/// message while the entry lives. Each shard keeps its most recent
/// entries, a bounded number and size of them; a reader far behind may
/// find its message gone and deflate it again. In front of it, each
/// thread keeps its last few entries, which serve the sockets of a fan-out
/// without taking a lock.
#[derive(Debug)]
pub(crate) struct Deflated {
    shards: Box<[Mutex<Shard>]>,
    chains: Chains,
}

#[derive(Debug, Default)]
struct Shard {
    /// By the message buffer's address, length and window bits.
    entries: HashMap<Key, Arc<Slot>, BuildHasherDefault<KeyHasher>>,
    /// The entries' keys, oldest first.
    order: VecDeque<Key>,
    /// Bytes of the originals kept.
    bytes: usize,
}

/// A message buffer's address and length, and the window bits.
type Key = (usize, usize, u8);

/// One message's deflated forms, each made once.
#[derive(Debug)]
pub(crate) struct Slot {
    /// Kept, so that its address is not reused while the slot lives.
    pub(super) original: Bytes,
    bits: u8,
    alone: OnceLock<Option<Bytes>>,
    /// Its place and form in a chain, once it is in one.
    pub(super) link: OnceLock<Link>,
}

impl Slot {
    pub(super) fn new(original: Bytes, bits: u8) -> Self {
        Self {
            original,
            bits,
            alone: OnceLock::new(),
            link: OnceLock::new(),
        }
    }

    /// Deflated on its own; `None` if that does not shrink it. Made by
    /// the first socket that asks; the others wait for it.
    pub(super) fn alone(&self) -> Option<&Bytes> {
        (self.alone)
            .get_or_init(|| deflate(&self.original, self.bits))
            .as_ref()
    }
}

/// A thread's latest slots, by key.
#[derive(Debug, Default)]
struct Recent {
    slots: HashMap<Key, Arc<Slot>, BuildHasherDefault<KeyHasher>>,
    order: VecDeque<Key>,
}

impl Recent {
    fn insert(&mut self, key: Key, slot: &Arc<Slot>) {
        if self.order.len() >= RECENT_ENTRIES {
            if let Some(old) = self.order.pop_front() {
                self.slots.remove(&old);
            }
        }
        if (self.slots.insert(key, Arc::clone(slot))).is_none() {
            self.order.push_back(key);
        }
    }
}

/// Hashes a key of addresses and lengths, which need no defence against
/// chosen collisions (clients choose neither), in a few instructions.
#[derive(Debug, Default)]
struct KeyHasher(u64);

impl Hasher for KeyHasher {
    fn write(&mut self, bytes: &[u8]) {
        for byte in bytes {
            self.write_u64(u64::from(*byte));
        }
    }

    fn write_u8(&mut self, n: u8) {
        self.write_u64(u64::from(n));
    }

    fn write_usize(&mut self, n: usize) {
        self.write_u64(n as u64);
    }

    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7C_C1_B7_27_22_0A_95);
    }

    fn finish(&self) -> u64 {
        self.0
    }
}

impl Default for Deflated {
    fn default() -> Self {
        Self {
            shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
            chains: Chains::default(),
        }
    }
}

impl Deflated {
    /// `payload` deflated on its own with a window of `bits`, made once
    /// for every socket that asks while it is kept; `None` to send it as
    /// it is.
    #[cfg(test)]
    pub(crate) fn get(&self, payload: &Bytes, bits: u8) -> Option<Bytes> {
        self.with(payload, bits, None, |deflated, _| deflated.cloned())
    }

    /// Calls `f` with what to send for `payload`, to a client that allows
    /// a window of `bits`: its form in a chain if the client is in step
    /// with one at `place` (`None`: the client takes no context over),
    /// else deflated on its own, else `None` to send it as it is; and
    /// whether that is the chain's form. Each
    /// form is made once for every socket that asks while it is kept, and
    /// lent rather than cloned: a socket that copies a short frame does
    /// not touch the buffer's reference count, which every other socket of
    /// the fan-out would contend for.
    pub(crate) fn with<R>(
        &self,
        payload: &Bytes,
        bits: u8,
        place: Option<&mut Place>,
        f: impl FnOnce(Option<&Bytes>, bool) -> R,
    ) -> R {
        // Sent as it is, a short message leaves the client's window (and
        // so the socket's place) as it was.
        if bits < 9 || payload.len() < MIN_DEFLATE {
            return f(None, false);
        }
        // Asked before the cache keeps a reference of its own.
        let shared = !payload.is_unique();
        let slot = self.slot(payload, bits);
        match place {
            Some(place) => {
                let form = place.next(&slot, shared, &self.chains);
                let link = slot.link.get().map(Link::form);
                let chained = form.is_some_and(|form| link.is_some_and(|l| std::ptr::eq(form, l)));
                f(form, chained)
            }
            None => f(slot.alone(), false),
        }
    }

    /// The message's slot: from this thread's recent ones (no lock: the
    /// sockets of a fan-out ask for the same few messages), or from the
    /// cache every thread shares.
    fn slot(&self, payload: &Bytes, bits: u8) -> Arc<Slot> {
        thread_local! {
            static RECENT: RefCell<Recent> = RefCell::default();
        }
        let key = (payload.as_ptr() as usize, payload.len(), bits);
        if let Some(slot) = RECENT.with_borrow(|recent| recent.slots.get(&key).cloned()) {
            return slot;
        }
        let slot = self.shared(key, payload, bits);
        RECENT.with_borrow_mut(|recent| recent.insert(key, &slot));
        slot
    }

    fn shared(&self, key: Key, payload: &Bytes, bits: u8) -> Arc<Slot> {
        let shard = &self.shards[(key.0 >> 6) % SHARDS];
        let mut shard = shard.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(slot) = shard.entries.get(&key) {
            return Arc::clone(slot);
        }
        let slot = Arc::new(Slot::new(payload.clone(), bits));
        shard.entries.insert(key, Arc::clone(&slot));
        shard.order.push_back(key);
        shard.bytes += payload.len();
        while shard.order.len() > SHARD_ENTRIES || shard.bytes > SHARD_BYTES {
            let Some(old) = shard.order.pop_front() else {
                break;
            };
            if let Some(old) = shard.entries.remove(&old) {
                shard.bytes -= old.original.len().min(shard.bytes);
            }
        }
        slot
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deflate::tests::PLAIN;
    use crate::deflate::Inflater;

    #[test]
    fn deflated_messages_inflate_back_whatever_the_window() {
        let text = br#"{"type":"message","room":"lobby","epoch":"12345","offset":7,"from":"ann","text":"hello hello hello","time":1700000000}"#;
        for bits in 9..=15 {
            let deflated = deflate(text, bits).expect("shorter");
            assert!(deflated.len() < text.len());
            let mut inflater = Inflater::new(PLAIN);
            assert_eq!(inflater.inflate(&deflated, 1 << 20).unwrap(), text);
        }
        // Too short, or not shorter: sent as it is.
        assert_eq!(deflate(b"hi", 15), None);
        let noise: Vec<u8> = (0..200u32)
            .map(|i| (i.wrapping_mul(2_654_435_761) >> 24) as u8)
            .collect();
        assert_eq!(deflate(&noise, 15), None);
        assert_eq!(deflate(text, 8), None);
    }

    #[test]
    fn a_message_is_deflated_once_for_every_socket() {
        let cache = Deflated::default();
        let line = Bytes::from(vec![b'x'; 500]);
        let first = cache.get(&line, 15).unwrap();
        let again = cache.get(&line.clone(), 15).unwrap();
        assert_eq!(first.as_ptr(), again.as_ptr(), "shared, not made twice");
        // Another buffer with the same bytes is another message.
        let copy = Bytes::from(line.to_vec());
        assert_ne!(cache.get(&copy, 15).unwrap().as_ptr(), first.as_ptr());
        assert_eq!(cache.get(&Bytes::from_static(b"short"), 15), None);
        // Bounded: old entries go.
        for _ in 0..20_000 {
            cache.get(&Bytes::from(vec![b'y'; 1000]), 15);
        }
        let kept: usize = cache
            .shards
            .iter()
            .map(|s| s.lock().unwrap().entries.len())
            .sum();
        assert!(kept <= SHARDS * SHARD_ENTRIES);
    }
}
