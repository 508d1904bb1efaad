//! Chains: broadcasts deflated against a window that many clients share.
//!
//! Unless the server promised `server_no_context_takeover`, a client
//! inflates every message with one sliding window: what it holds is the
//! messages that came compressed (RSV1 set), in order. Messages sent as
//! they are never enter it. Clients that got the same messages compressed,
//! in the same order, hold the same window. A message deflated against that
//! window (with back references into the messages before it) is good for
//! all of them, and is made once. That is a chain: a compressor fed, in
//! order, the messages it was extended with. Each message's form in its
//! chain is kept with the message, as its [`Link`].
//!
//! Every compressing socket knows what its client's window ends with (its
//! [`Place`]). A message goes out in its chain form only when the socket
//! is in step: the window ends with the chain's message before it and
//! holds, in a row, at least the last [`WINDOW`] bytes the chain fed its
//! compressor (or all of them). Any other socket gets the message deflated
//! on its own, which inflates the same whatever the window holds, and
//! steps into the chain: after [`WINDOW`] bytes of the chain in a row it is
//! in step. So what a client inflates never depends on a guess; a wrong
//! guess only costs compression.
//!
//! In a room every member gets the same lines in the same order, so its
//! members step into one chain within a few lines of joining, and each
//! line is deflated once for all of them with the room's recent lines as
//! its context: a JSON chat line of 340 bytes goes out as about 110,
//! against 230 deflated on its own.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use flate2::{Compress, Compression};

use super::cache::{flushed, Slot};

/// The window bits of a chain's compressor. A smaller window makes a
/// socket in step sooner after it joins or falls out, and a chain cheaper
/// to keep; chat lines find most of what they repeat within a few lines.
/// Clients that allow the server fewer bits are never put in a chain.
pub(crate) const CHAIN_BITS: u8 = 12;
/// Bytes of the chain's past a back reference can reach.
pub(crate) const WINDOW: u64 = 1 << CHAIN_BITS;
/// Chains a server keeps at once. Each holds a compressor of about
/// 150 KiB.
const CHAINS: usize = 16;
/// A new chain takes the place of the one that grew least recently, if
/// that one did not grow for this many messages of every chain: a burst of
/// one-off messages does not push out the chain of a room that is talking.
const IDLE: u64 = 4 * CHAINS as u64;

/// A message's place in a chain, and its form there.
#[derive(Debug)]
pub(crate) struct Link {
    /// The chain's slot, and the chain (slots are reused; chains are not).
    at: usize,
    chain: u64,
    /// The message's number in the chain, from 0.
    seq: u64,
    /// Bytes the chain fed its compressor before this message.
    start: u64,
    /// Deflated against the chain's window, without the flush marker.
    form: Bytes,
}

/// A server's chains.
#[derive(Debug)]
pub(crate) struct Chains {
    slots: Box<[Mutex<Chain>]>,
    /// When each slot's chain last grew, by `clock`.
    grown: Box<[AtomicU64]>,
    clock: AtomicU64,
    /// The last chain id given out.
    ids: AtomicU64,
}

#[derive(Debug, Default)]
struct Chain {
    /// 0 for none: a chain that lost a race for a message is dropped.
    id: u64,
    /// Made on the slot's first use and reset for each new chain.
    compress: Option<Box<Compress>>,
    /// Messages fed so far.
    fed: u64,
    /// Their bytes.
    bytes: u64,
}

impl Default for Chains {
    fn default() -> Self {
        Self {
            slots: (0..CHAINS).map(|_| Mutex::default()).collect(),
            grown: (0..CHAINS).map(|_| AtomicU64::new(0)).collect(),
            clock: AtomicU64::new(0),
            ids: AtomicU64::new(0),
        }
    }
}

impl Link {
    pub(crate) fn form(&self) -> &Bytes {
        &self.form
    }
}

impl Chains {
    /// Makes `slot`'s message the next of chain `chain` (in slot `at`),
    /// if the chain's last message is `seq`; `None` if the chain moved on
    /// or is gone. A message already in a chain keeps its link.
    fn extend<'a>(&self, at: usize, chain: u64, seq: u64, slot: &'a Slot) -> Option<&'a Link> {
        let mut state = self.slots[at]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if slot.link.get().is_none() && state.id == chain && state.fed == seq + 1 {
            self.feed(at, &mut state, slot);
        }
        slot.link.get()
    }

    /// Starts a chain with `slot`'s message, in the slot whose chain grew
    /// least recently, if it is idle.
    fn start<'a>(&self, slot: &'a Slot) -> Option<&'a Link> {
        if let Some(link) = slot.link.get() {
            return Some(link);
        }
        let (at, grown) = (0..CHAINS)
            .map(|at| (at, self.grown[at].load(Ordering::Relaxed)))
            .min_by_key(|&(_, grown)| grown)?;
        if grown != 0 && self.clock.load(Ordering::Relaxed).saturating_sub(grown) < IDLE {
            return None;
        }
        let mut state = self.slots[at]
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if slot.link.get().is_none() {
            state.id = self.ids.fetch_add(1, Ordering::Relaxed) + 1;
            (state.fed, state.bytes) = (0, 0);
            match state.compress.as_mut() {
                Some(compress) => compress.reset(),
                None => {
                    state.compress = Some(Box::new(Compress::new_with_window_bits(
                        Compression::default(),
                        false,
                        CHAIN_BITS,
                    )));
                }
            }
            self.feed(at, &mut state, slot);
        }
        slot.link.get()
    }

    /// Feeds `slot`'s message to the chain and links it there. The chain
    /// is dropped if deflate fails, or if the message was linked elsewhere
    /// meanwhile: its compressor then holds a message no socket can follow.
    fn feed(&self, at: usize, state: &mut Chain, slot: &Slot) {
        let Some(compress) = state.compress.as_deref_mut() else {
            return self.drop_chain(at, state);
        };
        let payload = &slot.original;
        // Deflate's worst case is a few bytes per 16 KiB over the input.
        let form = flushed(compress, payload, payload.len() + payload.len() / 64 + 64);
        let Some(form) = form else {
            return self.drop_chain(at, state);
        };
        let link = Link {
            at,
            chain: state.id,
            seq: state.fed,
            start: state.bytes,
            form: Bytes::from(form),
        };
        if slot.link.set(link).is_err() {
            return self.drop_chain(at, state);
        }
        state.fed += 1;
        state.bytes += payload.len() as u64;
        let now = self.clock.fetch_add(1, Ordering::Relaxed) + 1;
        self.grown[at].store(now, Ordering::Relaxed);
    }

    /// Frees the slot for the next chain to start.
    fn drop_chain(&self, at: usize, state: &mut Chain) {
        state.id = 0;
        self.grown[at].store(0, Ordering::Relaxed);
    }
}

/// What a compressing client's window ends with, as far as the chains go.
#[derive(Debug, Default)]
pub(crate) enum Place {
    /// Nothing known: the next message in a chain goes out on its own.
    #[default]
    Lost,
    /// Message `seq` of chain `chain`, after `run` bytes of that chain in
    /// a row (counting it).
    On {
        at: usize,
        chain: u64,
        seq: u64,
        run: u64,
    },
    /// A message sent on its own before any chain had it; it may be put
    /// in one later, by another socket. Its slot is kept, and with it the
    /// message's buffer, whose address must not be reused meanwhile.
    Pending(Arc<Slot>),
}

impl Place {
    /// What to send for `slot`'s message: its form in a chain, deflated
    /// on its own, or `None` to send it as it is; the place moves on to
    /// what the client's window will end with. `shared` is whether the
    /// message goes to other sockets too (only those start or extend a
    /// chain: a personal message would take a chain away from everyone
    /// else).
    pub(crate) fn next<'a>(
        &mut self,
        slot: &'a Arc<Slot>,
        shared: bool,
        chains: &Chains,
    ) -> Option<&'a Bytes> {
        if let Place::Pending(pending) = self {
            *self = match pending.link.get() {
                Some(link) => Place::On {
                    at: link.at,
                    chain: link.chain,
                    seq: link.seq,
                    run: pending.original.len() as u64,
                },
                None => Place::Lost,
            };
        }
        let len = slot.original.len() as u64;
        let link = match (slot.link.get(), &*self) {
            (Some(link), _) => Some(link),
            (None, _) if !shared => None,
            (None, &Place::On { at, chain, seq, .. }) => chains.extend(at, chain, seq, slot),
            (None, _) => chains.start(slot),
        };
        let Some(link) = link else {
            // In no chain: on its own if that shrinks it.
            let alone = slot.alone();
            if alone.is_some() {
                *self = Place::Pending(Arc::clone(slot));
            }
            return alone;
        };
        // The chain's bytes in a row that the window ends with, before
        // this message.
        let before = match *self {
            Place::On {
                chain, seq, run, ..
            } if chain == link.chain && seq + 1 == link.seq => run,
            _ => 0,
        };
        let in_step = link.start == 0 || before >= link.start.min(WINDOW);
        let form = match in_step {
            true => &link.form,
            // On its own, it goes into the window all the same.
            false => slot.alone()?,
        };
        let run = before.saturating_add(len);
        *self = Place::On {
            at: link.at,
            chain: link.chain,
            seq: link.seq,
            run,
        };
        Some(form)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deflate::{Agreed, Inflater};

    /// A client: its place, as the server sees it, and its window.
    struct Client {
        place: Place,
        inflater: Inflater,
        chained: usize,
    }

    impl Client {
        fn new() -> Self {
            let agreed = Agreed {
                server_bits: 15,
                client_no_context: false,
                server_no_context: false,
            };
            Self {
                place: Place::Lost,
                inflater: Inflater::new(agreed),
                chained: 0,
            }
        }

        /// Sends `message` the way a socket does, and checks that the
        /// client reads it back.
        fn send(&mut self, message: &Bytes, shared: bool, chains: &Chains) {
            let slot = Arc::new(Slot::new(message.clone(), 15));
            self.send_slot(&slot, shared, chains);
        }

        fn send_slot(&mut self, slot: &Arc<Slot>, shared: bool, chains: &Chains) {
            let form = self.place.next(slot, shared, chains).cloned();
            if let Some(link) = slot.link.get() {
                self.chained += usize::from(form.as_ref() == Some(&link.form));
            }
            if let Some(form) = form {
                let inflated = self.inflater.inflate(&form, 1 << 20).unwrap();
                assert_eq!(inflated, slot.original, "what was sent inflates back");
            }
        }
    }

    fn line(n: u64) -> Bytes {
        Bytes::from(format!(
            r#"{{"type":"message","room":"lobby","offset":{n},"data":{{"from":"guest-{}","text":"line {n}: the build broke again after the merge, anyone?"}}}}"#,
            n % 7
        ))
    }

    #[test]
    fn clients_in_step_share_each_line_and_inflate_it() {
        let chains = Chains::default();
        let mut clients: Vec<Client> = (0..5).map(|_| Client::new()).collect();
        let mut bytes = (0, 0);
        for n in 0..200 {
            let slot = Arc::new(Slot::new(line(n), 15));
            for client in &mut clients {
                client.send_slot(&slot, true, &chains);
            }
            let link = slot.link.get().expect("in a chain");
            bytes.0 += slot.original.len();
            bytes.1 += link.form.len();
        }
        for client in &clients {
            assert_eq!(client.chained, 200, "every line in its chain form");
        }
        assert!(bytes.1 * 10 < bytes.0 * 4, "{bytes:?}: under 0.4x");
    }

    #[test]
    fn a_late_joiner_steps_in_after_a_window() {
        let chains = Chains::default();
        let slots: Vec<_> = (0..300).map(|n| Arc::new(Slot::new(line(n), 15))).collect();
        let mut early = Client::new();
        let mut late = Client::new();
        for (n, slot) in slots.iter().enumerate() {
            early.send_slot(slot, true, &chains);
            if n >= 100 {
                late.send_slot(slot, true, &chains);
            }
        }
        assert_eq!(early.chained, 300);
        let window_lines = (WINDOW as usize).div_ceil(line(0).len());
        assert!(
            (200 - window_lines - 1..200).contains(&late.chained),
            "in step after about {window_lines} lines: {}",
            late.chained
        );
    }

    #[test]
    fn personal_and_missed_messages_never_break_what_a_client_reads() {
        let chains = Chains::default();
        let mut clients: Vec<Client> = (0..4).map(|_| Client::new()).collect();
        // xorshift: which client misses a line, or gets one of its own.
        let mut state = 0x2545_F491_4F6C_DD1Du64;
        for n in 0..2_000 {
            let slot = Arc::new(Slot::new(line(n), 15));
            for (i, client) in clients.iter_mut().enumerate() {
                state ^= state << 13;
                state ^= state >> 7;
                state ^= state << 17;
                match state % 256 {
                    0 => {} // missed (skipped, or lagged)
                    1 => {
                        let own = format!("a line for client {i} alone, number {n}, long enough");
                        client.send(&Bytes::from(own.repeat(2)), false, &chains);
                        client.send_slot(&slot, true, &chains);
                    }
                    // Sent as it is: the window does not change.
                    2..=31 => {
                        client.send(&Bytes::from_static(b"short"), false, &chains);
                        client.send_slot(&slot, true, &chains);
                    }
                    _ => client.send_slot(&slot, true, &chains),
                }
            }
        }
        for client in &clients {
            assert!(client.chained > 1_400, "mostly in step: {}", client.chained);
        }
    }

    #[test]
    fn clients_in_different_orders_read_what_was_sent() {
        // Two rooms whose lines reach a member of both in another order
        // than the members of one; and more chains than the server keeps.
        let chains = Chains::default();
        let mut a = Client::new();
        let mut b = Client::new();
        let mut both = Client::new();
        for n in 0..500 {
            let (x, y) = (
                Arc::new(Slot::new(line(n), 15)),
                Arc::new(Slot::new(line(n + 1_000_000), 15)),
            );
            a.send_slot(&x, true, &chains);
            b.send_slot(&y, true, &chains);
            if n % 2 == 0 {
                both.send_slot(&y, true, &chains);
                both.send_slot(&x, true, &chains);
            } else {
                both.send_slot(&x, true, &chains);
                both.send_slot(&y, true, &chains);
            }
            for k in 0..CHAINS as u64 * 2 {
                Client::new().send(&line(n * 100 + k), true, &chains);
            }
        }
        assert!(
            a.chained > 400 && b.chained > 400,
            "{} {}",
            a.chained,
            b.chained
        );
    }
}
