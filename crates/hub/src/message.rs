//! Messages that travel through the hub.

use std::fmt;
use std::ops::Deref;

use bytes::Bytes;

/// UTF-8 text backed by shared [`Bytes`].
///
/// Cloning a `Text` never copies the characters: every connection a message
/// is delivered to shares the same allocation.
///
/// ```
/// use hub::Text;
///
/// let text = Text::from("hello");
/// assert_eq!(text.as_str(), "hello");
/// assert_eq!(&*text, "hello");
/// ```
#[derive(Clone, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Text(Bytes);

impl Text {
    /// Text from a `'static` string, without allocating.
    #[must_use]
    pub const fn from_static(text: &'static str) -> Self {
        Self(Bytes::from_static(text.as_bytes()))
    }

    /// The text as a string slice.
    #[must_use]
    pub fn as_str(&self) -> &str {
        // The bytes were checked (or came from a `str`) when this value was
        // built, so this never fails; the fallback keeps the code panic-free.
        std::str::from_utf8(&self.0).unwrap_or_default()
    }

    /// The underlying shared bytes.
    #[must_use]
    pub fn as_bytes(&self) -> &Bytes {
        &self.0
    }

    /// Unwraps the shared bytes.
    #[must_use]
    pub fn into_bytes(self) -> Bytes {
        self.0
    }
}

impl Deref for Text {
    type Target = str;

    fn deref(&self) -> &str {
        self.as_str()
    }
}

impl AsRef<str> for Text {
    fn as_ref(&self) -> &str {
        self.as_str()
    }
}

impl fmt::Debug for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Debug::fmt(self.as_str(), f)
    }
}

impl fmt::Display for Text {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl From<String> for Text {
    /// Takes the string's buffer as is, without copying it, but gives back
    /// spare capacity first: a message may be kept for long, and its
    /// buffer with it.
    fn from(text: String) -> Self {
        Self(Bytes::from(tight(text.into_bytes())))
    }
}

/// `bytes` without much spare capacity. A message may be kept for long (in
/// history, say) and its buffer with it, capacity included: a string
/// grown by doubling can hold twice what it says. Giving back the rest
/// shrinks the allocation in place, or copies it where the allocator
/// cannot; a little spare is left alone.
fn tight(mut bytes: Vec<u8>) -> Vec<u8> {
    let spare = bytes.capacity() - bytes.len();
    if spare > 64 && spare > bytes.len() / 8 {
        bytes.shrink_to_fit();
    }
    bytes
}

impl From<&'static str> for Text {
    fn from(text: &'static str) -> Self {
        Self::from_static(text)
    }
}

impl TryFrom<Bytes> for Text {
    type Error = std::str::Utf8Error;

    /// Checks that `bytes` are UTF-8, without copying them.
    fn try_from(bytes: Bytes) -> Result<Self, Self::Error> {
        std::str::from_utf8(&bytes)?;
        Ok(Self(bytes))
    }
}

impl TryFrom<Vec<u8>> for Text {
    type Error = std::string::FromUtf8Error;

    fn try_from(bytes: Vec<u8>) -> Result<Self, Self::Error> {
        String::from_utf8(bytes).map(Self::from)
    }
}

impl From<Text> for Bytes {
    fn from(text: Text) -> Self {
        text.0
    }
}

impl PartialEq<str> for Text {
    fn eq(&self, other: &str) -> bool {
        self.as_str() == other
    }
}

impl PartialEq<&str> for Text {
    fn eq(&self, other: &&str) -> bool {
        self.as_str() == *other
    }
}

/// A message delivered by the hub: text or binary, over shared bytes.
///
/// Cloning is cheap (a reference count), which is what makes fan-out to
/// thousands of connections affordable.
///
/// ```
/// use hub::Message;
///
/// let text = Message::text("hi");
/// assert_eq!(text.as_text(), Some("hi"));
///
/// let binary = Message::binary(vec![1, 2, 3]);
/// assert_eq!(binary.len(), 3);
/// assert_eq!(binary.as_text(), None);
/// ```
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Message {
    /// UTF-8 text.
    Text(Text),
    /// Arbitrary bytes.
    Binary(Bytes),
}

impl Message {
    /// A text message.
    #[must_use]
    pub fn text(text: impl Into<Text>) -> Self {
        Self::Text(text.into())
    }

    /// A binary message.
    #[must_use]
    pub fn binary(bytes: impl Into<Bytes>) -> Self {
        Self::Binary(bytes.into())
    }

    /// The text, if this is a text message.
    #[must_use]
    pub fn as_text(&self) -> Option<&str> {
        match self {
            Self::Text(text) => Some(text.as_str()),
            Self::Binary(_) => None,
        }
    }

    /// The payload bytes, whatever the kind.
    #[must_use]
    pub fn as_bytes(&self) -> &[u8] {
        match self {
            Self::Text(text) => text.as_bytes(),
            Self::Binary(bytes) => bytes,
        }
    }

    /// Payload length in bytes.
    #[must_use]
    pub fn len(&self) -> usize {
        self.as_bytes().len()
    }

    /// Whether the payload is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl From<Text> for Message {
    fn from(text: Text) -> Self {
        Self::Text(text)
    }
}

impl From<String> for Message {
    fn from(text: String) -> Self {
        Self::Text(text.into())
    }
}

impl From<&'static str> for Message {
    fn from(text: &'static str) -> Self {
        Self::Text(text.into())
    }
}

impl From<Bytes> for Message {
    fn from(bytes: Bytes) -> Self {
        Self::Binary(bytes)
    }
}

impl From<Vec<u8>> for Message {
    /// Takes the vector's buffer as is, but gives back spare capacity first,
    /// as for text.
    fn from(bytes: Vec<u8>) -> Self {
        Self::Binary(tight(bytes).into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spare_capacity_is_given_back() {
        // A string grown by doubling past its contents.
        let mut grown = Vec::with_capacity(120_000);
        grown.extend_from_slice(&[b'x'; 60_000]);
        assert_eq!(tight(grown).capacity(), 60_000);
        assert!(tight(Vec::with_capacity(1000)).capacity() < 64);
        // A little spare is left alone.
        let mut small = Vec::with_capacity(100);
        small.extend_from_slice(&[1; 90]);
        assert_eq!(tight(small).capacity(), 100);
        let mut large = Vec::with_capacity(10_500);
        large.extend_from_slice(&[1; 10_000]);
        assert_eq!(tight(large).capacity(), 10_500);
    }

    #[test]
    fn text_checks_utf8() {
        assert!(Text::try_from(Bytes::from_static(&[0xff, 0xfe])).is_err());
        assert!(Text::try_from(vec![0xc3, 0x28]).is_err());
        let text = Text::try_from(Bytes::from_static("héllo".as_bytes())).unwrap();
        assert_eq!(text, "héllo");
    }

    #[test]
    fn clones_share_the_payload() {
        let message = Message::text(String::from("shared"));
        let copy = message.clone();
        assert_eq!(message.as_bytes().as_ptr(), copy.as_bytes().as_ptr());
    }

    #[test]
    fn kinds_and_lengths() {
        assert_eq!(Message::from("abc").len(), 3);
        assert!(Message::from(Vec::new()).is_empty());
        assert_eq!(Message::from(Bytes::from_static(b"xy")).as_text(), None);
        assert_eq!(format!("{}", Text::from("a")), "a");
        assert_eq!(format!("{:?}", Text::from("a")), "\"a\"");
    }
}
