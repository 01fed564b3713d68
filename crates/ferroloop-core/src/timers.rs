//! The timer heap: `call_later`/`call_at` callbacks ordered by deadline.
//!
//! Ground rules:
//! - entries are ordered by `(when, seq)`; `seq` grows with every push, so timers with equal
//!   deadlines fire in the order they were scheduled (FIFO), which asyncio does not promise
//!   but ferroloop does;
//! - cancellation is lazy, as in CPython: a cancelled item stays in the heap, and the binding
//!   reports it through [`CancelCounter::note_cancelled`]; [`TimerHeap::drop_cancelled`] then
//!   either pops cancelled items off the top or, when more than [`MIN_SCHEDULED_TIMERS`] are
//!   scheduled and more than [`MIN_CANCELLED_FRACTION`] of them are cancelled, rebuilds the heap
//!   without them (CPython's `_MIN_SCHEDULED_TIMER_HANDLES` / `_MIN_CANCELLED_TIMER_HANDLES_FRACTION`);
//! - removed items are handed back to the caller instead of being dropped here, because dropping
//!   a Python handle can run arbitrary code that re-enters the loop.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::sync::atomic::{AtomicUsize, Ordering as AtomicOrdering};
use std::sync::Arc;

/// Compaction needs more than this many scheduled timers (CPython: 100).
pub const MIN_SCHEDULED_TIMERS: usize = 100;
/// Compaction needs more than this fraction of them cancelled (CPython: 0.5).
pub const MIN_CANCELLED_FRACTION: f64 = 0.5;

/// What the heap needs to know about an item: whether it was cancelled.
pub trait TimerItem {
    /// True once the item was cancelled; it is then skipped and eventually dropped.
    fn is_cancelled(&self) -> bool;
}

/// Shared count of cancelled-but-still-scheduled timers; handles keep a clone so that
/// `TimerHandle.cancel()` can report itself without touching the heap.
#[derive(Clone, Debug, Default)]
pub struct CancelCounter(Arc<AtomicUsize>);

impl CancelCounter {
    /// Records that one scheduled timer was cancelled.
    #[inline]
    pub fn note_cancelled(&self) {
        self.0.fetch_add(1, AtomicOrdering::Relaxed);
    }

    fn get(&self) -> usize {
        self.0.load(AtomicOrdering::Relaxed)
    }

    fn decrement(&self) {
        // Saturating: a count can only be reported once per handle, but never underflow.
        let _ = self
            .0
            .fetch_update(AtomicOrdering::Relaxed, AtomicOrdering::Relaxed, |n| {
                n.checked_sub(1)
            });
    }

    fn reset(&self) {
        self.0.store(0, AtomicOrdering::Relaxed);
    }
}

struct Entry<T> {
    when: f64,
    seq: u64,
    item: T,
}

impl<T> Entry<T> {
    fn key_cmp(&self, other: &Self) -> Ordering {
        self.when
            .total_cmp(&other.when)
            .then(self.seq.cmp(&other.seq))
    }
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.key_cmp(other) == Ordering::Equal
    }
}
impl<T> Eq for Entry<T> {}
impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl<T> Ord for Entry<T> {
    // Reversed: `BinaryHeap` is a max-heap and the earliest deadline must be on top.
    fn cmp(&self, other: &Self) -> Ordering {
        other.key_cmp(self)
    }
}

/// A min-heap of timers by `(when, seq)` with lazy cancellation.
pub struct TimerHeap<T> {
    heap: BinaryHeap<Entry<T>>,
    next_seq: u64,
    cancelled: CancelCounter,
}

impl<T: TimerItem> Default for TimerHeap<T> {
    fn default() -> Self {
        Self {
            heap: BinaryHeap::new(),
            next_seq: 0,
            cancelled: CancelCounter::default(),
        }
    }
}

impl<T: TimerItem> TimerHeap<T> {
    /// An empty heap.
    pub fn new() -> Self {
        Self::default()
    }

    /// The counter that items of this heap report their cancellation to.
    pub fn cancel_counter(&self) -> &CancelCounter {
        &self.cancelled
    }

    /// Schedules `item` at `when` (seconds on the loop clock).
    pub fn push(&mut self, when: f64, item: T) {
        let seq = self.next_seq;
        self.next_seq += 1;
        self.heap.push(Entry { when, seq, item });
    }

    /// Number of scheduled items, cancelled ones included (CPython's `len(loop._scheduled)`).
    pub fn len(&self) -> usize {
        self.heap.len()
    }

    /// Whether nothing is scheduled.
    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// Cancelled items still in the heap, as reported to the counter.
    pub fn cancelled_count(&self) -> usize {
        self.cancelled.get()
    }

    /// Deadline of the earliest item, cancelled or not.
    pub fn next_deadline(&self) -> Option<f64> {
        self.heap.peek().map(|e| e.when)
    }

    /// Phase 1 of an iteration: removes cancelled items, into `removed`.
    ///
    /// Rebuilds the heap when it holds more than [`MIN_SCHEDULED_TIMERS`] items and more than
    /// [`MIN_CANCELLED_FRACTION`] of them are cancelled; otherwise pops cancelled items off the top.
    pub fn drop_cancelled(&mut self, removed: &mut Vec<T>) {
        let len = self.heap.len();
        if len > MIN_SCHEDULED_TIMERS
            && self.cancelled.get() as f64 / len as f64 > MIN_CANCELLED_FRACTION
        {
            let (keep, gone): (Vec<_>, Vec<_>) = std::mem::take(&mut self.heap)
                .into_iter()
                .partition(|e| !e.item.is_cancelled());
            self.heap = BinaryHeap::from(keep);
            removed.extend(gone.into_iter().map(|e| e.item));
            self.cancelled.reset();
        } else {
            while self.heap.peek().is_some_and(|e| e.item.is_cancelled()) {
                if let Some(entry) = self.heap.pop() {
                    self.cancelled.decrement();
                    removed.push(entry.item);
                }
            }
        }
    }

    /// Phase 4 of an iteration: moves every item with `when < end_time` to `due`, earliest first.
    /// Cancelled items go too; the ready queue skips them (as CPython does).
    pub fn pop_due(&mut self, end_time: f64, mut due: impl FnMut(T)) {
        while self.heap.peek().is_some_and(|e| e.when < end_time) {
            if let Some(entry) = self.heap.pop() {
                if entry.item.is_cancelled() {
                    self.cancelled.decrement();
                }
                due(entry.item);
            }
        }
    }

    /// Removes everything (`close()`); the caller drops the items.
    pub fn drain_all(&mut self) -> Vec<T> {
        self.cancelled.reset();
        std::mem::take(&mut self.heap)
            .into_iter()
            .map(|e| e.item)
            .collect()
    }

    /// Checks the heap property and the sequence numbering; panics with a reason if broken.
    pub fn check_invariants(&self) {
        let entries = self.heap.as_slice();
        for (i, e) in entries.iter().enumerate().skip(1) {
            let parent = &entries[(i - 1) / 2];
            assert!(
                parent.key_cmp(e) != Ordering::Greater,
                "heap order broken at index {i}"
            );
        }
        assert!(
            entries.iter().all(|e| e.seq < self.next_seq),
            "sequence number from the future"
        );
        let cancelled = entries.iter().filter(|e| e.item.is_cancelled()).count();
        assert!(
            self.cancelled.get() <= entries.len().max(cancelled),
            "cancel count too large"
        );
    }
}

#[cfg(test)]
mod tests;
