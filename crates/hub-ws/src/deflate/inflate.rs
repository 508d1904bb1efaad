//! Client messages inflated, within the message size limit.

use flate2::{Decompress, FlushDecompress};

use super::{Agreed, TAIL};
use crate::frame::ReadError;

/// A client's messages, inflated.
#[derive(Debug, Default)]
pub(crate) struct Inflater {
    /// Kept between messages only when the client takes its context over.
    state: Option<Box<Decompress>>,
    keep: bool,
}

impl Inflater {
    pub(crate) fn new(agreed: Agreed) -> Self {
        Self {
            state: None,
            keep: !agreed.client_no_context,
        }
    }

    /// Inflates one message (the RFC 7692 tail is put back here), up to
    /// `limit` bytes.
    ///
    /// # Errors
    ///
    /// [`ReadError::TooBig`] past the limit (nothing past it is
    /// allocated), [`ReadError::Protocol`] for data that is not deflate.
    pub(crate) fn inflate(&mut self, data: &[u8], limit: usize) -> Result<Vec<u8>, ReadError> {
        let state = self
            .state
            .get_or_insert_with(|| Box::new(Decompress::new_with_window_bits(false, 15)));
        let mut out = Vec::with_capacity(data.len().saturating_mul(3).min(limit).max(64));
        let result = inflate_into(state, data, &mut out, limit)
            .and_then(|()| inflate_into(state, &TAIL, &mut out, limit));
        if !self.keep || result.is_err() {
            self.state = None;
        }
        result.map(|()| out)
    }
}

/// Feeds `input` to `state`, appending what comes out to `out`, never
/// past `limit` bytes.
fn inflate_into(
    state: &mut Decompress,
    input: &[u8],
    out: &mut Vec<u8>,
    limit: usize,
) -> Result<(), ReadError> {
    let start = state.total_in();
    loop {
        let consumed = usize::try_from(state.total_in() - start).unwrap_or(usize::MAX);
        if consumed >= input.len() && out.len() < out.capacity() {
            return Ok(());
        }
        if out.len() == out.capacity() {
            if out.len() >= limit {
                // Full at the limit with more to come: one byte more
                // would be too many.
                let mut probe = [0u8; 1];
                let before = state.total_out();
                let rest = input.get(consumed..).unwrap_or_default();
                state
                    .decompress(rest, &mut probe, FlushDecompress::Sync)
                    .map_err(|_| ReadError::Protocol)?;
                if state.total_out() > before {
                    return Err(ReadError::TooBig);
                }
                let done = state.total_in() - start >= input.len() as u64;
                if done || state.total_in() == consumed as u64 + start {
                    return Ok(());
                }
                continue;
            }
            let room = out.capacity().max(64).min(limit - out.len());
            out.reserve_exact(room);
        }
        let rest = input.get(consumed..).unwrap_or_default();
        let before = (state.total_in(), state.total_out());
        state
            .decompress_vec(rest, out, FlushDecompress::Sync)
            .map_err(|_| ReadError::Protocol)?;
        if (state.total_in(), state.total_out()) == before && out.len() < out.capacity() {
            // No progress with room to spare: the input is spent.
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::deflate::cache::deflate;
    use crate::deflate::tests::PLAIN;
    use flate2::{Compress, Compression, FlushCompress};

    #[test]
    fn inflating_stops_at_the_limit() {
        let big = vec![b'a'; 1 << 20];
        let deflated = deflate(&big, 15).unwrap();
        assert!(deflated.len() < 2048, "a bomb: {} bytes", deflated.len());
        let mut inflater = Inflater::new(PLAIN);
        assert_eq!(
            inflater.inflate(&deflated, (1 << 20) - 1),
            Err(ReadError::TooBig)
        );
        assert_eq!(inflater.inflate(&deflated, 1 << 20).unwrap().len(), 1 << 20);
        assert_eq!(
            inflater.inflate(b"\xff\xff\xff", 100),
            Err(ReadError::Protocol)
        );
    }

    #[test]
    fn a_kept_context_spans_messages() {
        // A client taking its context over: its second message refers to
        // the first.
        let mut compress = Compress::new(Compression::default(), false);
        let mut wire = Vec::new();
        let mut messages = Vec::new();
        for text in [
            "the same words again and again",
            "the same words again and again!",
        ] {
            let mut out = Vec::with_capacity(256);
            compress
                .compress_vec(text.as_bytes(), &mut out, FlushCompress::Sync)
                .unwrap();
            out.truncate(out.len() - 4);
            wire.push(out);
            messages.push(text);
        }
        let mut kept = Inflater::new(PLAIN);
        for (data, text) in wire.iter().zip(&messages) {
            assert_eq!(kept.inflate(data, 1024).unwrap(), text.as_bytes());
        }
        assert!(kept.state.is_some());
        let mut fresh = Inflater::new(Agreed {
            client_no_context: true,
            ..PLAIN
        });
        assert_eq!(
            fresh.inflate(&wire[0], 1024).unwrap(),
            messages[0].as_bytes()
        );
        assert!(fresh.state.is_none(), "nothing kept between messages");
    }
}
