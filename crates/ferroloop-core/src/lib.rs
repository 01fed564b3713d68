//! ferroloop-core: the engine of ferroloop's event loop, in plain Rust.
//!
//! Nothing in this crate knows about Python. The binding crate (`ferroloop._ferroloop`) plugs
//! Python handles into the generic containers defined here and drives one loop iteration in the
//! order CPython's `BaseEventLoop._run_once` does (see `docs/design.md`):
//!
//! 1. [`timers::TimerHeap::drop_cancelled`] — lazy cancellation, compaction when more than
//!    100 timers are scheduled and over half of them are cancelled;
//! 2. timeout — 0 when the [`ready::ReadyQueue`] is not empty, otherwise up to the next
//!    deadline, rounded *up* to the poller's resolution ([`clock::timeout_millis`]);
//! 3. [`selector::Selector::select`] — level-triggered readiness from the [`poller`];
//! 4. due timers move to the ready queue ([`timers::TimerHeap::pop_due`]);
//! 5. exactly the callbacks that were ready at the start of step 5 run
//!    ([`ready::ReadyQueue::take_batch`]).
//!
//! Cross-thread wakeups go through the [`waker::Waker`], which writes its eventfd only when the
//! loop is blocked (or about to block) in the poller and no wakeup is already pending.
//!
//! Stream transports keep their unsent bytes in a [`transports::WriteBuffer`].
//!
//! All `unsafe` code (system calls) lives in [`sys`].
#![deny(unsafe_op_in_unsafe_fn)]
#![warn(missing_docs)]

pub mod clock;
pub mod fd_table;
pub mod poller;
pub mod ready;
pub mod registry;
pub mod selector;
pub mod sys;
pub mod timers;
pub mod transports;
pub mod waker;
