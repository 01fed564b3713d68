//! The ready queue: callbacks that run in the next iteration, in FIFO order.
//!
//! Invariants:
//! - items leave in the order they were pushed;
//! - [`ReadyQueue::take_batch`] takes exactly the items present when it is called; items pushed
//!   while that batch runs wait for the next iteration (CPython's `ntodo` snapshot);
//! - [`ReadyQueue::restore_front`] puts back the unrun rest of a batch ahead of anything pushed
//!   meanwhile, so an interrupted iteration (KeyboardInterrupt) loses and reorders nothing.

use std::collections::VecDeque;

/// FIFO of items ready to run. Generic so that tests use integers and the binding uses handles.
#[derive(Debug)]
pub struct ReadyQueue<T> {
    items: VecDeque<T>,
}

impl<T> Default for ReadyQueue<T> {
    fn default() -> Self {
        Self {
            items: VecDeque::new(),
        }
    }
}

impl<T> ReadyQueue<T> {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Appends one item (`call_soon`).
    #[inline]
    pub fn push(&mut self, item: T) {
        self.items.push_back(item);
    }

    /// Number of queued items.
    #[inline]
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing is queued.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Moves every item queued now into `batch` (which must be empty), oldest first.
    pub fn take_batch(&mut self, batch: &mut VecDeque<T>) {
        debug_assert!(batch.is_empty());
        std::mem::swap(&mut self.items, batch);
    }

    /// Puts the unrun rest of a batch back in front of the items pushed since it was taken.
    pub fn restore_front(&mut self, rest: &mut VecDeque<T>) {
        if rest.is_empty() {
            return;
        }
        let newer = std::mem::take(&mut self.items);
        self.items = std::mem::take(rest);
        self.items.extend(newer);
    }

    /// Removes everything (used by `close()`); the caller drops the items.
    pub fn drain_all(&mut self) -> VecDeque<T> {
        std::mem::take(&mut self.items)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn batch_is_a_snapshot() {
        let mut q = ReadyQueue::new();
        q.push(1);
        q.push(2);
        let mut batch = VecDeque::new();
        q.take_batch(&mut batch);
        q.push(3); // pushed while the batch runs
        assert_eq!(batch.pop_front(), Some(1));
        // Interrupted after the first item: 2 must come back before 3.
        q.restore_front(&mut batch);
        assert_eq!(q.drain_all().into_iter().collect::<Vec<_>>(), vec![2, 3]);
        assert!(q.is_empty());
    }
}
