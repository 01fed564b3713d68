//! [`FdTable`]: values indexed by descriptor number.
//!
//! Descriptors are small, dense integers (the kernel hands out the lowest free one), so a
//! vector indexed by the number is both faster and smaller than a hash map: 8–16 bytes per
//! descriptor up to the highest one seen, no hashing, no rehash that briefly holds two tables.
//! This is how libuv keeps its watchers.
//!
//! Invariants:
//! - a slot at or beyond `len` reads as `T::default()`: the table grows on the first write to
//!   a descriptor and never shrinks until [`FdTable::take_all`];
//! - negative descriptors have no slot: reads give `None`, writes are refused.

/// A `T` per descriptor number, `T::default()` meaning "nothing".
#[derive(Debug)]
pub struct FdTable<T> {
    slots: Vec<T>,
}

impl<T> Default for FdTable<T> {
    fn default() -> Self {
        Self { slots: Vec::new() }
    }
}

impl<T: Default> FdTable<T> {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// The slot of `fd`, if the table reaches that far.
    pub fn get(&self, fd: i32) -> Option<&T> {
        self.slots.get(usize::try_from(fd).ok()?)
    }

    /// The slot of `fd` to change, if the table reaches that far (no growth).
    pub fn get_mut(&mut self, fd: i32) -> Option<&mut T> {
        self.slots.get_mut(usize::try_from(fd).ok()?)
    }

    /// The slot of `fd` to write, growing the table up to it; `None` for a negative `fd`.
    pub fn slot(&mut self, fd: i32) -> Option<&mut T> {
        let index = usize::try_from(fd).ok()?;
        if index >= self.slots.len() {
            self.slots.resize_with(index + 1, T::default);
        }
        Some(&mut self.slots[index])
    }

    /// Every slot, with its descriptor number.
    pub fn iter(&self) -> impl Iterator<Item = (i32, &T)> {
        // A slot exists only for an index that came from a non-negative i32.
        self.slots
            .iter()
            .enumerate()
            .map(|(i, slot)| (i32::try_from(i).unwrap_or(i32::MAX), slot))
    }

    /// Drops the empty slots at the end and frees the memory they held: after a registration
    /// that failed (a bogus, huge descriptor number) grew the table for nothing.
    pub fn trim(&mut self, is_empty: impl Fn(&T) -> bool) {
        while self.slots.last().is_some_and(&is_empty) {
            self.slots.pop();
        }
        if self.slots.capacity() > 2 * self.slots.len() + 64 {
            self.slots.shrink_to_fit();
        }
    }

    /// Slots allocated (for tests).
    pub fn capacity(&self) -> usize {
        self.slots.capacity()
    }

    /// Empties the table (and frees it), returning the slots.
    pub fn take_all(&mut self) -> Vec<T> {
        std::mem::take(&mut self.slots)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grows_on_write_and_reads_default_beyond() {
        let mut t: FdTable<Option<u32>> = FdTable::new();
        assert_eq!(t.get(3), None);
        *t.slot(3).unwrap() = Some(7);
        assert_eq!(t.get(3), Some(&Some(7)));
        assert_eq!(t.get(1), Some(&None));
        assert_eq!(t.get(4), None);
        assert!(t.slot(-1).is_none());
        assert_eq!(t.get(-1), None);
        assert_eq!(t.take_all().into_iter().flatten().collect::<Vec<_>>(), [7]);
        assert_eq!(t.get(3), None);
    }
}
