//! Connection identity and metadata.

use std::any::Any;
use std::fmt;
use std::num::NonZeroU64;
use std::sync::Arc;

/// The largest node number; connection ids carry it in their top bits.
pub const MAX_NODE: u32 = (1 << NODE_BITS) - 1;

/// Bits of a connection id that hold the node number.
const NODE_BITS: u32 = 20;
/// Bits of a connection id that count the node's connections.
pub(crate) const LOCAL_BITS: u32 = 64 - NODE_BITS;

/// The unique id of a connection within a hub.
///
/// Ids are never reused by the hub that issued them (and hubs sharing a
/// [`Backplane`](crate::Backplane) issue different ones), so a stale id can
/// only ever address nothing (and [`Hub::try_send_personal`](crate::Hub::try_send_personal)
/// says so), never a newer connection.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ConnId(NonZeroU64);

impl ConnId {
    pub(crate) fn new(raw: NonZeroU64) -> Self {
        Self(raw)
    }

    /// The id as a number (never zero).
    #[must_use]
    pub fn get(self) -> u64 {
        self.0.get()
    }

    /// The number of the node whose hub issued this id (see
    /// [`Backplane::node`](crate::Backplane::node)); 0 for a hub without a
    /// backplane.
    ///
    /// ```
    /// # fn main() -> Result<(), hub::ConnectError> {
    /// let hub = hub::Hub::new();
    /// assert_eq!(hub.connect()?.id().node(), 0);
    /// # Ok(())
    /// # }
    /// ```
    #[must_use]
    pub fn node(self) -> u32 {
        // The shift leaves at most 20 bits.
        u32::try_from(self.0.get() >> LOCAL_BITS).unwrap_or(u32::MAX)
    }

    /// The id with this raw value (as [`get`](Self::get) returns it), for a
    /// backplane carrying ids between nodes; `None` for 0.
    #[must_use]
    pub fn from_raw(raw: u64) -> Option<Self> {
        NonZeroU64::new(raw).map(Self)
    }
}

impl fmt::Display for ConnId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// What the application knows about a connection, given at
/// [`Hub::connect_with`](crate::Hub::connect_with) and readable by anyone
/// holding the hub.
///
/// ```
/// use hub::Metadata;
///
/// let meta = Metadata::new().with_name("alice").with_user("user-17");
/// assert_eq!(meta.name(), Some("alice"));
/// assert_eq!(meta.user(), Some("user-17"));
/// assert_eq!(Metadata::new().name(), None);
/// ```
#[derive(Clone, Default)]
#[non_exhaustive]
pub struct Metadata {
    name: Option<Arc<str>>,
    user: Option<Arc<str>>,
    data: Option<Arc<dyn Any + Send + Sync>>,
}

impl fmt::Debug for Metadata {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Metadata")
            .field("name", &self.name)
            .field("user", &self.user)
            .field("data", &self.data.as_ref().map(|_| ".."))
            .finish()
    }
}

/// Equal names and users, and the same application data (by identity).
impl PartialEq for Metadata {
    fn eq(&self, other: &Self) -> bool {
        let same_data = match (&self.data, &other.data) {
            (None, None) => true,
            (Some(a), Some(b)) => Arc::ptr_eq(a, b),
            _ => false,
        };
        self.name == other.name && self.user == other.user && same_data
    }
}

impl Eq for Metadata {}

impl Metadata {
    /// Empty metadata: an anonymous connection.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets a display name.
    #[must_use]
    pub fn with_name(mut self, name: impl Into<Arc<str>>) -> Self {
        self.name = Some(name.into());
        self
    }

    /// The display name, if any.
    #[must_use]
    pub fn name(&self) -> Option<&str> {
        self.name.as_deref()
    }

    /// Sets the identity of the person behind the connection: every
    /// connection with the same user (two tabs, say) is reached by
    /// [`Hub::send_to_user`](crate::Hub::send_to_user).
    #[must_use]
    pub fn with_user(mut self, user: impl Into<Arc<str>>) -> Self {
        self.user = Some(user.into());
        self
    }

    /// The user identity, if any.
    #[must_use]
    pub fn user(&self) -> Option<&str> {
        self.user.as_deref()
    }

    /// Attaches the application's own data about the connection (the
    /// options it connected with, say), shared by every copy of this
    /// metadata.
    ///
    /// ```
    /// use hub::Metadata;
    ///
    /// struct Options { room: &'static str }
    ///
    /// let meta = Metadata::new().with_data(Options { room: "rust" });
    /// assert_eq!(meta.data::<Options>().map(|o| o.room), Some("rust"));
    /// assert!(meta.data::<String>().is_none());
    /// ```
    #[must_use]
    pub fn with_data<T: Any + Send + Sync>(mut self, data: T) -> Self {
        self.data = Some(Arc::new(data));
        self
    }

    /// The application data, if it is a `T`.
    #[must_use]
    pub fn data<T: Any + Send + Sync>(&self) -> Option<&T> {
        self.data.as_deref()?.downcast_ref()
    }

    pub(crate) fn user_arc(&self) -> Option<Arc<str>> {
        self.user.clone()
    }
}
