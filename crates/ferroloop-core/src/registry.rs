//! The fd registry: which reader and which writer callback each descriptor has.
//!
//! Invariants:
//! - a descriptor counts as registered exactly while its slot has a reader or a writer (or
//!   both); `len()` is the number of such descriptors;
//! - the [`Interest`] registered with the poller for a descriptor is always
//!   [`Slot::interest`] of its entry; [`crate::selector::Selector`] keeps the two in step;
//! - replaced and removed callbacks are returned to the caller, never dropped here.

use crate::fd_table::FdTable;
use crate::poller::Interest;
use std::os::fd::RawFd;

/// The callbacks of one descriptor.
#[derive(Debug)]
pub struct Slot<T> {
    /// Runs when the descriptor is readable.
    pub reader: Option<T>,
    /// Runs when the descriptor is writable.
    pub writer: Option<T>,
}

impl<T> Slot<T> {
    /// What the poller must watch this descriptor for.
    pub fn interest(&self) -> Interest {
        Interest {
            readable: self.reader.is_some(),
            writable: self.writer.is_some(),
        }
    }
}

/// Which side of a descriptor a callback serves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Side {
    /// `add_reader` / `remove_reader`.
    Read,
    /// `add_writer` / `remove_writer`.
    Write,
}

/// How the poller registration of a descriptor must change after an update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Change {
    /// The descriptor is new: register it with this interest.
    Add(Interest),
    /// The descriptor stays: change its interest.
    Modify(Interest),
    /// The descriptor has no callbacks left: deregister it.
    Delete,
    /// Nothing to tell the poller.
    None,
}

/// Map from descriptor to its [`Slot`]: an [`FdTable`], an empty slot meaning "not registered".
#[derive(Debug)]
pub struct Registry<T> {
    slots: FdTable<Slot<T>>,
    /// Descriptors with at least one callback.
    count: usize,
}

impl<T> Default for Slot<T> {
    fn default() -> Self {
        Self {
            reader: None,
            writer: None,
        }
    }
}

impl<T> Default for Registry<T> {
    fn default() -> Self {
        Self {
            slots: FdTable::default(),
            count: 0,
        }
    }
}

impl<T> Registry<T> {
    /// An empty registry.
    pub fn new() -> Self {
        Self::default()
    }

    /// Number of descriptors with at least one callback.
    pub fn len(&self) -> usize {
        self.count
    }

    /// Whether no descriptor is registered.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// The callbacks of `fd`, if any.
    pub fn get(&self, fd: RawFd) -> Option<&Slot<T>> {
        self.slots
            .get(fd)
            .filter(|slot| !slot.interest().is_empty())
    }

    /// Sets the `side` callback of `fd`; returns the one it replaces and the poller change.
    /// A negative `fd` cannot be registered: the item comes back with [`Change::None`].
    pub fn set(&mut self, fd: RawFd, side: Side, item: T) -> (Option<T>, Change) {
        let Some(slot) = self.slots.slot(fd) else {
            return (Some(item), Change::None);
        };
        let before = slot.interest();
        let old = match side {
            Side::Read => slot.reader.replace(item),
            Side::Write => slot.writer.replace(item),
        };
        let after = slot.interest();
        let change = if before.is_empty() {
            self.count += 1;
            Change::Add(after)
        } else if before == after {
            Change::None
        } else {
            Change::Modify(after)
        };
        (old, change)
    }

    /// Removes the `side` callback of `fd`; returns it and the poller change.
    pub fn remove(&mut self, fd: RawFd, side: Side) -> (Option<T>, Change) {
        let Some(slot) = self.slots.get_mut(fd) else {
            return (None, Change::None);
        };
        let old = match side {
            Side::Read => slot.reader.take(),
            Side::Write => slot.writer.take(),
        };
        if old.is_none() {
            return (None, Change::None);
        }
        let interest = slot.interest();
        if interest.is_empty() {
            self.count -= 1;
            (old, Change::Delete)
        } else {
            (old, Change::Modify(interest))
        }
    }

    /// Frees the table beyond the highest registered descriptor (see [`FdTable::trim`]).
    pub fn trim(&mut self) {
        self.slots.trim(|slot| slot.interest().is_empty());
    }

    /// Slots allocated (for tests).
    pub fn capacity(&self) -> usize {
        self.slots.capacity()
    }

    /// Checks that `len()` counts exactly the descriptors with a callback; panics if not.
    pub fn check_invariants(&self) {
        let registered = self
            .slots
            .iter()
            .filter(|(_, slot)| !slot.interest().is_empty())
            .count();
        assert_eq!(registered, self.count, "count out of step with the slots");
    }

    /// Removes every entry (`close()`); the caller drops the callbacks.
    pub fn drain_all(&mut self) -> Vec<T> {
        self.count = 0;
        let mut out = Vec::new();
        for slot in self.slots.take_all() {
            out.extend(slot.reader);
            out.extend(slot.writer);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_modify_delete_sequence() {
        let mut r = Registry::new();
        assert_eq!(r.set(5, Side::Read, 1), (None, Change::Add(Interest::READ)));
        assert_eq!(r.set(5, Side::Read, 2), (Some(1), Change::None));
        let both = Interest {
            readable: true,
            writable: true,
        };
        assert_eq!(r.set(5, Side::Write, 3), (None, Change::Modify(both)));
        assert_eq!(
            r.remove(5, Side::Read),
            (Some(2), Change::Modify(Interest::WRITE))
        );
        assert_eq!(r.remove(5, Side::Read), (None, Change::None));
        assert_eq!(r.remove(5, Side::Write), (Some(3), Change::Delete));
        assert!(r.is_empty());
        assert_eq!(r.remove(9, Side::Write), (None, Change::None));
        r.check_invariants();
    }
}
