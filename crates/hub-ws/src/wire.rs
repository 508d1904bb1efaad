//! WebSocket frame headers (RFC 6455, section 5.2), read and written the
//! same way by both ends: this crate's server codec, and the load tool's
//! client and bare server.
//!
//! ```
//! use hub_ws::wire::{self, Opcode};
//!
//! // A client's frame: masked.
//! let mask = [1, 2, 3, 4];
//! let mut frame = Vec::new();
//! wire::put_header(&mut frame, (true, false), Opcode::Text, Some(mask), 2);
//! let start = frame.len();
//! frame.extend_from_slice(b"hi");
//! wire::apply_mask(&mut frame[start..], mask);
//!
//! let header = wire::read_header(&frame, true)?.expect("a whole header");
//! assert_eq!((header.fin, header.opcode, header.len), (true, Opcode::Text, 2));
//! assert_eq!(header.mask, Some(mask));
//! let mut payload = frame[header.size..].to_vec();
//! wire::apply_mask(&mut payload, mask);
//! assert_eq!(payload, b"hi");
//! # Ok::<(), wire::HeaderError>(())
//! ```

use bytes::BufMut;

/// What a frame carries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opcode {
    /// The next fragment of a message.
    Continuation,
    /// A text message (or its first fragment).
    Text,
    /// A binary message (or its first fragment).
    Binary,
    /// The closing handshake.
    Close,
    /// A ping, to be answered with a pong.
    Ping,
    /// A pong.
    Pong,
}

impl Opcode {
    /// The opcode's 4 bits.
    #[must_use]
    pub const fn bits(self) -> u8 {
        match self {
            Self::Continuation => 0x0,
            Self::Text => 0x1,
            Self::Binary => 0x2,
            Self::Close => 0x8,
            Self::Ping => 0x9,
            Self::Pong => 0xA,
        }
    }

    /// Close, ping or pong: never fragmented, at most 125 bytes.
    #[must_use]
    pub const fn is_control(self) -> bool {
        self.bits() & 0x8 != 0
    }

    fn from_bits(bits: u8) -> Option<Self> {
        Some(match bits {
            0x0 => Self::Continuation,
            0x1 => Self::Text,
            0x2 => Self::Binary,
            0x8 => Self::Close,
            0x9 => Self::Ping,
            0xA => Self::Pong,
            _ => return None,
        })
    }
}

/// One frame's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// The last frame of its message.
    pub fin: bool,
    /// RSV1: the message is compressed (`permessage-deflate`); set on its
    /// first frame only.
    pub compressed: bool,
    /// What the frame carries.
    pub opcode: Opcode,
    /// The masking key, for a frame from a client; `None` until its bytes
    /// have arrived.
    pub mask: Option<[u8; 4]>,
    /// The payload's length, as the header claims it.
    pub len: u64,
    /// The header's bytes, masking key included: the payload starts here.
    pub size: usize,
}

impl Header {
    /// The whole frame's length, if it fits in memory.
    #[must_use]
    pub fn frame_len(&self) -> Option<usize> {
        usize::try_from(self.len).ok()?.checked_add(self.size)
    }
}

/// Why a frame header breaks the protocol (close code 1002).
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HeaderError {
    /// RSV2 or RSV3 is set, which no extension here gives a meaning, or
    /// RSV1 on a control frame or a continuation.
    #[error("reserved bits set")]
    Reserved,
    /// A client's frame is not masked, or a server's frame is.
    #[error("a frame masked the wrong way for its sender")]
    Masking,
    /// The opcode is not one RFC 6455 defines.
    #[error("unknown opcode")]
    Opcode,
    /// A close, ping or pong is fragmented or longer than 125 bytes.
    #[error("a control frame fragmented or longer than 125 bytes")]
    Control,
    /// A 64-bit length with its top bit set.
    #[error("a frame length past 2^63")]
    Length,
}

/// Reads the header at the start of `buf`: `Ok(None)` if its length bytes
/// have not all arrived. `masked` says whether the sender masks its
/// frames (a client does, a server does not). The masking key may still
/// be missing (`mask` is then `None` though `masked`): the length is known
/// as soon as it has arrived, so that a frame too large can be refused at
/// once.
///
/// # Errors
///
/// [`HeaderError`] for a header that breaks the protocol.
pub fn read_header(buf: &[u8], masked: bool) -> Result<Option<Header>, HeaderError> {
    let [first, second, ..] = *buf else {
        return Ok(None);
    };
    if first & 0x30 != 0 {
        return Err(HeaderError::Reserved);
    }
    if (second & 0x80 != 0) != masked {
        return Err(HeaderError::Masking);
    }
    let fin = first & 0x80 != 0;
    let opcode = Opcode::from_bits(first & 0x0F).ok_or(HeaderError::Opcode)?;
    let compressed = first & 0x40 != 0;
    if compressed
        && matches!(
            opcode,
            Opcode::Continuation | Opcode::Close | Opcode::Ping | Opcode::Pong
        )
    {
        return Err(HeaderError::Reserved);
    }
    let (len, at) = match second & 0x7F {
        126 => match buf.get(2..4) {
            Some(raw) => (u64::from(u16::from_be_bytes([raw[0], raw[1]])), 4),
            None => return Ok(None),
        },
        127 => match buf.get(2..10).and_then(|raw| <[u8; 8]>::try_from(raw).ok()) {
            Some(raw) => (u64::from_be_bytes(raw), 10),
            None => return Ok(None),
        },
        short => (u64::from(short), 2),
    };
    if len >> 63 != 0 {
        return Err(HeaderError::Length);
    }
    if opcode.is_control() && (!fin || len > 125) {
        return Err(HeaderError::Control);
    }
    let (mask, size) = if masked {
        let mask = (buf.get(at..at + 4)).and_then(|raw| <[u8; 4]>::try_from(raw).ok());
        (mask, at + 4)
    } else {
        (None, at)
    };
    Ok(Some(Header {
        fin,
        compressed,
        opcode,
        mask,
        len,
        size,
    }))
}

/// Writes a frame's header: FIN, RSV1 if the message is `compressed`
/// (first frame only), the opcode, the payload's length and, for a client,
/// the masking key (the payload is then the caller's to mask with
/// [`apply_mask`]).
pub fn put_header(
    out: &mut impl BufMut,
    (fin, compressed): (bool, bool),
    opcode: Opcode,
    mask: Option<[u8; 4]>,
    len: usize,
) {
    let mask_bit = if mask.is_some() { 0x80 } else { 0 };
    let rsv1 = if compressed { 0x40 } else { 0 };
    out.put_u8(if fin { 0x80 } else { 0 } | rsv1 | opcode.bits());
    match len {
        // Each arm's range fits its cast.
        0..=125 => out.put_u8(mask_bit | len as u8),
        126..=0xFFFF => {
            out.put_u8(mask_bit | 126);
            out.put_u16(len as u16);
        }
        _ => {
            out.put_u8(mask_bit | 127);
            out.put_u64(len as u64);
        }
    }
    if let Some(mask) = mask {
        out.put_slice(&mask);
    }
}

/// Masks or unmasks `payload` with `mask` (the same operation), eight
/// bytes at a time.
pub fn apply_mask(payload: &mut [u8], mask: [u8; 4]) {
    let word = u64::from_ne_bytes([
        mask[0], mask[1], mask[2], mask[3], mask[0], mask[1], mask[2], mask[3],
    ]);
    let mut chunks = payload.chunks_exact_mut(8);
    for chunk in &mut chunks {
        let mut raw = [0u8; 8];
        raw.copy_from_slice(chunk);
        chunk.copy_from_slice(&(u64::from_ne_bytes(raw) ^ word).to_ne_bytes());
    }
    for (i, byte) in chunks.into_remainder().iter_mut().enumerate() {
        *byte ^= mask[i % 4];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn header(buf: &[u8], masked: bool) -> Result<Option<Header>, HeaderError> {
        read_header(buf, masked)
    }

    #[test]
    fn headers_are_read_only_when_their_length_is_there() {
        assert_eq!(header(&[], false), Ok(None));
        assert_eq!(header(&[0x81], false), Ok(None));
        let short = header(&[0x81, 3], false).unwrap().unwrap();
        assert_eq!((short.len, short.size, short.mask), (3, 2, None));
        assert_eq!(header(&[0x02, 126, 1], false), Ok(None));
        let medium = header(&[0x02, 126, 1, 0], false).unwrap().unwrap();
        assert_eq!((medium.fin, medium.opcode), (false, Opcode::Binary));
        assert_eq!((medium.len, medium.size), (256, 4));
        let mut long = vec![0x82, 0xFF];
        long.extend_from_slice(&70_000u64.to_be_bytes());
        let long = header(&long, true).unwrap().unwrap();
        assert_eq!((long.len, long.size, long.mask), (70_000, 14, None));
        assert_eq!(long.frame_len(), Some(70_014));
    }

    #[test]
    fn what_is_written_reads_back() {
        for len in [0, 125, 126, 0xFFFF, 0x10000] {
            for mask in [None, Some([9, 8, 7, 6])] {
                let mut out = Vec::new();
                put_header(&mut out, (len % 2 == 0, false), Opcode::Binary, mask, len);
                let read = header(&out, mask.is_some()).unwrap().unwrap();
                assert_eq!(read.len, len as u64);
                assert_eq!(
                    (read.mask, read.size, read.fin),
                    (mask, out.len(), len % 2 == 0)
                );
            }
        }
    }

    #[test]
    fn broken_headers_are_refused() {
        assert_eq!(header(&[0xA1, 0x80], true), Err(HeaderError::Reserved));
        assert_eq!(header(&[0x91, 0x80], true), Err(HeaderError::Reserved));
        // RSV1 is for the first frame of a data message only.
        assert_eq!(header(&[0xC9, 0x80], true), Err(HeaderError::Reserved));
        assert_eq!(header(&[0xC0, 0x80], true), Err(HeaderError::Reserved));
        assert!(header(&[0xC1, 0x80], true).unwrap().unwrap().compressed);
        assert_eq!(header(&[0x81, 0x02], true), Err(HeaderError::Masking));
        assert_eq!(header(&[0x81, 0x83], false), Err(HeaderError::Masking));
        assert_eq!(header(&[0x83, 0x80], true), Err(HeaderError::Opcode));
        assert_eq!(header(&[0x09, 0x80], true), Err(HeaderError::Control));
        assert_eq!(
            header(&[0x89, 0xFE, 0, 126], true),
            Err(HeaderError::Control)
        );
        let mut huge = vec![0x82, 127, 0xFF];
        huge.extend_from_slice(&[0; 7]);
        assert_eq!(header(&huge, false), Err(HeaderError::Length));
    }

    #[test]
    fn masking_twice_gives_the_payload_back() {
        let text: Vec<u8> = (0..=255).collect();
        for len in [0, 1, 7, 8, 9, 256] {
            let mut masked = text[..len].to_vec();
            apply_mask(&mut masked, [0x12, 0x34, 0x56, 0x78]);
            let expected: Vec<u8> = (text[..len].iter().enumerate())
                .map(|(i, b)| b ^ [0x12, 0x34, 0x56, 0x78][i % 4])
                .collect();
            assert_eq!(masked, expected);
            apply_mask(&mut masked, [0x12, 0x34, 0x56, 0x78]);
            assert_eq!(masked, &text[..len]);
        }
    }
}
