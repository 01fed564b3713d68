//! Unit tests and a property test of [`TimerHeap`] against a simple model.

use super::*;
use proptest::prelude::*;
use std::cell::Cell;
use std::rc::Rc;

/// A test timer: an id and a shared cancelled flag.
#[derive(Clone, Debug)]
struct Timer {
    id: usize,
    cancelled: Rc<Cell<bool>>,
}

impl TimerItem for Timer {
    fn is_cancelled(&self) -> bool {
        self.cancelled.get()
    }
}

fn timer(id: usize) -> Timer {
    Timer {
        id,
        cancelled: Rc::new(Cell::new(false)),
    }
}

fn fire_due(heap: &mut TimerHeap<Timer>, now: f64) -> Vec<usize> {
    let mut removed = Vec::new();
    heap.drop_cancelled(&mut removed);
    let mut fired = Vec::new();
    heap.pop_due(now, |t| {
        if !t.is_cancelled() {
            fired.push(t.id)
        }
    });
    heap.check_invariants();
    fired
}

#[test]
fn equal_deadlines_fire_fifo() {
    let mut heap = TimerHeap::new();
    for id in 0..50 {
        heap.push(1.0, timer(id));
    }
    assert_eq!(fire_due(&mut heap, 2.0), (0..50).collect::<Vec<_>>());
}

#[test]
fn due_means_strictly_before_end_time() {
    let mut heap = TimerHeap::new();
    heap.push(1.0, timer(0));
    assert!(fire_due(&mut heap, 1.0).is_empty());
    assert_eq!(fire_due(&mut heap, 1.0 + 1e-9), vec![0]);
}

#[test]
fn compaction_when_most_are_cancelled() {
    let mut heap = TimerHeap::new();
    let timers: Vec<_> = (0..200).map(timer).collect();
    for (i, t) in timers.iter().enumerate() {
        heap.push(10.0 + i as f64, t.clone());
    }
    // Cancel 150 of 200 (75 %), none of them at the top.
    for t in &timers[50..] {
        t.cancelled.set(true);
        heap.cancel_counter().note_cancelled();
    }
    let mut removed = Vec::new();
    heap.drop_cancelled(&mut removed);
    assert_eq!(removed.len(), 150);
    assert_eq!(heap.len(), 50);
    assert_eq!(heap.cancelled_count(), 0);
    heap.check_invariants();
}

#[test]
fn no_compaction_below_threshold_only_top_is_dropped() {
    let mut heap = TimerHeap::new();
    let timers: Vec<_> = (0..50).map(timer).collect();
    for (i, t) in timers.iter().enumerate() {
        heap.push(i as f64, t.clone());
    }
    for t in timers.iter().step_by(2) {
        t.cancelled.set(true);
        heap.cancel_counter().note_cancelled();
    }
    let mut removed = Vec::new();
    heap.drop_cancelled(&mut removed);
    // Only timer 0 was on top and cancelled.
    assert_eq!(removed.iter().map(|t| t.id).collect::<Vec<_>>(), vec![0]);
    assert_eq!(heap.cancelled_count(), 24);
}

#[derive(Debug, Clone)]
enum Op {
    Schedule(u8),
    Cancel(usize),
    Advance(u8),
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0u8..20).prop_map(Op::Schedule),
        2 => (0usize..1000).prop_map(Op::Cancel),
        1 => (0u8..10).prop_map(Op::Advance),
    ]
}

proptest! {
    /// Random schedule/cancel/advance sequences fire exactly what a sorted-list model fires,
    /// in the same order, and the heap's invariants hold throughout.
    #[test]
    fn heap_matches_model(ops in proptest::collection::vec(op(), 1..400)) {
        let mut heap = TimerHeap::new();
        // Model: every scheduled timer (when, id, cancelled?) not yet fired.
        let mut model: Vec<(f64, usize)> = Vec::new();
        let mut all: Vec<Timer> = Vec::new();
        let mut now = 0.0;
        for op in ops {
            match op {
                Op::Schedule(delay) => {
                    let t = timer(all.len());
                    let when = now + f64::from(delay);
                    heap.push(when, t.clone());
                    model.push((when, t.id));
                    all.push(t);
                }
                Op::Cancel(i) if !all.is_empty() => {
                    let t = &all[i % all.len()];
                    let still_scheduled = model.iter().any(|&(_, id)| id == t.id);
                    if !t.cancelled.get() && still_scheduled {
                        heap.cancel_counter().note_cancelled();
                    }
                    t.cancelled.set(true);
                    model.retain(|&(_, id)| id != t.id);
                }
                Op::Cancel(_) => {}
                Op::Advance(step) => {
                    now += f64::from(step);
                    let fired = fire_due(&mut heap, now);
                    // Model: stable sort by deadline keeps scheduling order for equal deadlines.
                    let mut due: Vec<_> = model.iter().copied().filter(|&(w, _)| w < now).collect();
                    due.sort_by(|a, b| a.0.total_cmp(&b.0));
                    model.retain(|&(w, _)| w >= now);
                    prop_assert_eq!(fired, due.into_iter().map(|(_, id)| id).collect::<Vec<_>>());
                }
            }
            prop_assert!(heap.cancelled_count() <= heap.len());
            heap.check_invariants();
        }
    }
}
