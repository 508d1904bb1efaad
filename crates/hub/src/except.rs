//! The connections a broadcast skips.

use std::fmt;
use std::sync::Arc;

use crate::ConnId;

/// The connections a broadcast skips: none, one (the sender, most often)
/// or several. Cheap to clone.
///
/// ```
/// use hub::{ConnId, Except};
///
/// let [a, b] = [1, 2].map(|raw| ConnId::from_raw(raw).unwrap());
/// let except: Except = [b, a, b].into_iter().collect();
/// assert!(except.contains(a) && except.contains(b));
/// assert_eq!(except.iter().collect::<Vec<_>>(), [a, b]);
/// assert!(Except::none().is_empty());
/// ```
#[derive(Clone, Default, PartialEq, Eq, Hash)]
pub struct Except(Skip);

#[derive(Clone, Default, PartialEq, Eq, Hash)]
enum Skip {
    #[default]
    Nobody,
    One(ConnId),
    /// Two or more, sorted, each once.
    Many(Arc<Vec<ConnId>>),
}

impl Except {
    /// Skips no connection.
    #[must_use]
    pub fn none() -> Self {
        Self(Skip::Nobody)
    }

    /// Whether `id` is skipped.
    #[inline]
    #[must_use]
    pub fn contains(&self, id: ConnId) -> bool {
        match &self.0 {
            Skip::Nobody => false,
            Skip::One(one) => *one == id,
            Skip::Many(many) => many.binary_search(&id).is_ok(),
        }
    }

    /// Whether no connection is skipped.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        matches!(self.0, Skip::Nobody)
    }

    /// The skipped connections, in id order.
    pub fn iter(&self) -> impl Iterator<Item = ConnId> + '_ {
        let ids: &[ConnId] = match &self.0 {
            Skip::Nobody => &[],
            Skip::One(one) => std::slice::from_ref(one),
            Skip::Many(many) => many,
        };
        ids.iter().copied()
    }
}

impl From<ConnId> for Except {
    fn from(id: ConnId) -> Self {
        Self(Skip::One(id))
    }
}

impl From<Option<ConnId>> for Except {
    fn from(id: Option<ConnId>) -> Self {
        id.map_or_else(Self::none, Self::from)
    }
}

impl FromIterator<ConnId> for Except {
    fn from_iter<I: IntoIterator<Item = ConnId>>(ids: I) -> Self {
        let mut ids: Vec<ConnId> = ids.into_iter().collect();
        ids.sort_unstable();
        ids.dedup();
        match ids[..] {
            [] => Self::none(),
            [one] => Self::from(one),
            _ => Self(Skip::Many(Arc::new(ids))),
        }
    }
}

impl fmt::Debug for Except {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(raw: u64) -> ConnId {
        ConnId::from_raw(raw).unwrap()
    }

    #[test]
    fn except_keeps_each_id_once_in_order() {
        let except: Except = [id(9), id(3), id(9), id(5)].into_iter().collect();
        assert_eq!(except.iter().collect::<Vec<_>>(), [id(3), id(5), id(9)]);
        assert!(except.contains(id(5)));
        assert!(!except.contains(id(4)));
        assert_eq!(format!("{except:?}"), "{ConnId(3), ConnId(5), ConnId(9)}");
    }

    #[test]
    fn except_of_one_or_none_needs_no_list() {
        let one: Except = [id(7), id(7)].into_iter().collect();
        assert_eq!(one, Except::from(id(7)));
        assert!(one.contains(id(7)) && !one.contains(id(8)));
        assert_eq!(std::iter::empty().collect::<Except>(), Except::none());
        assert_eq!(Except::from(None), Except::none());
        assert!(!Except::none().contains(id(1)));
    }

    #[test]
    fn an_except_is_two_words() {
        assert_eq!(std::mem::size_of::<Except>(), 16);
    }
}
