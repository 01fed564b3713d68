//! One iteration of the loop: `BaseEventLoop._run_once`, phase by phase.
//!
//! 1. drop cancelled timers (lazy cancellation, compaction at >100 timers and >50 % cancelled);
//! 2. compute the poll timeout: 0 if a callback is ready or the loop is stopping, otherwise up to
//!    the next deadline, rounded up to whole milliseconds;
//! 3. poll: the GIL is released while the poller blocks; a 0-timeout poll with no descriptor
//!    registered is skipped (there is nothing it could report: cross-thread wakeups already
//!    put their handles in the ready queue);
//! 4. move ready I/O callbacks, then due timers, to the ready queue;
//! 5. run exactly the callbacks that were ready at that point, each in its own context.
//!    `KeyboardInterrupt`/`SystemExit` leave the iteration; the unrun rest of the batch goes
//!    back to the front of the queue.
//!
//! With no timer, no registered descriptor and a callback ready (or the loop stopping), phases
//! 1–4 have nothing to do: one state entry takes the batch (`run_once_then_stopping`).
//!
//! The loop state is entered only between Python calls; handles that leave it (dropped timers,
//! stale readers) are dropped after it is released.

use crate::errors::os_error;
use crate::event_loop::{LoopCore, LoopState};
use crate::handles::{Failure, Handle};
use crate::py_helpers;
use ferroloop_core::clock;
use ferroloop_core::poller::{Events, Poller};
use ferroloop_core::registry::Side;
use ferroloop_core::waker::{Waker, WAKER_TOKEN};
use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::Arc;

/// What phase 3 needs, taken out of the state so the poller can block without it.
struct PollPlan {
    poller: Arc<Poller>,
    waker: Arc<Waker>,
    events: Events,
    timeout_ms: i32,
}

/// Runs one iteration.
pub fn run_once(slf: &Bound<'_, LoopCore>) -> PyResult<()> {
    run_once_then_stopping(slf).map(drop)
}

/// Runs one iteration; returns whether the loop is stopping at its end (`run_forever`'s test,
/// read in the state entry that ends the iteration).
pub fn run_once_then_stopping(slf: &Bound<'_, LoopCore>) -> PyResult<bool> {
    // Fast path: with no timer scheduled, no descriptor registered and a callback ready (or the
    // loop stopping), phases 1–4 have nothing to do (no cancelled timer to drop, a 0 timeout
    // and so no poll, nothing to collect): one state entry takes the batch.
    let fast = LoopCore::state(slf, |st| {
        let idle = st.timers.is_empty()
            && (!st.ready.is_empty() || st.stopping)
            && st.selector.as_ref().is_none_or(|s| s.is_empty());
        idle.then(|| take_batch(st))
    })?;
    let (mut batch, debug) = match fast {
        Some(taken) => taken,
        None => {
            poll_and_collect(slf)?;
            LoopCore::state(slf, take_batch)?
        }
    };
    let result = run_batch(slf, &mut batch, debug);
    let stopping = LoopCore::state(slf, |st| {
        if result.is_err() {
            st.ready.restore_front(&mut batch);
        }
        // `batch` is empty here either way: keep its buffer for the next iteration.
        std::mem::swap(&mut st.batch, &mut batch);
        st.stopping
    })?;
    // What `st.batch` held while the batch ran: an empty queue, without a buffer unless a
    // nested iteration left its own there; only that case has anything to free.
    if batch.capacity() == 0 {
        std::mem::forget(batch);
    } else {
        drop(batch);
    }
    result.map(|()| stopping)
}

/// Phase 5's start: the callbacks ready now (the state keeps the batch buffer between
/// iterations), and whether the loop is in debug mode.
fn take_batch(st: &mut LoopState) -> (VecDeque<Py<Handle>>, bool) {
    let mut batch = std::mem::take(&mut st.batch);
    st.ready.take_batch(&mut batch);
    (batch, st.debug)
}

/// Drops handles that left the state (after leaving it). Most iterations have none, and the
/// vector then never allocated: skipping its drop glue is measurably cheaper per iteration.
fn drop_outside<T>(handles: Vec<T>) {
    if handles.capacity() == 0 {
        std::mem::forget(handles);
    } else {
        drop(handles);
    }
}

/// Phases 1–2: drops cancelled timers and decides whether and how long to poll.
fn plan_poll(slf: &Bound<'_, LoopCore>) -> PyResult<Option<PollPlan>> {
    let (plan, dropped) = LoopCore::state(slf, |st| {
        let mut dropped = Vec::new();
        st.timers.drop_cancelled(&mut dropped);
        for timer in &dropped {
            timer.0.get().set_unscheduled();
        }
        let timeout = if !st.ready.is_empty() || st.stopping {
            Some(0.0)
        } else {
            st.timers.next_deadline().map(|when| when - clock::now())
        };
        let timeout_ms = clock::timeout_millis(timeout);
        let plan = match (&st.selector, &st.waker) {
            (Some(selector), Some(waker)) if timeout_ms != 0 || !selector.is_empty() => {
                Some(PollPlan {
                    poller: selector.poller().clone(),
                    waker: waker.clone(),
                    events: st.events.take().unwrap_or_default(),
                    timeout_ms,
                })
            }
            _ => None,
        };
        (plan, dropped)
    })?;
    drop_outside(dropped);
    Ok(plan)
}

/// Phases 1–4: timers, timeout, poll, and filling the ready queue.
fn poll_and_collect(slf: &Bound<'_, LoopCore>) -> PyResult<()> {
    let py = slf.py();
    let events = match plan_poll(slf)? {
        Some(mut plan) => {
            let result = if plan.timeout_ms == 0 {
                plan.poller.wait(&mut plan.events, 0)
            } else {
                plan.waker.before_sleep();
                let (poller, events, ms) = (&plan.poller, &mut plan.events, plan.timeout_ms);
                let r = py.detach(|| poller.wait(events, ms));
                plan.waker.after_sleep();
                r
            };
            if let Err(err) = result {
                plan.events.clear();
                LoopCore::state(slf, |st| st.events = Some(plan.events))?;
                if err.kind() == std::io::ErrorKind::Interrupted {
                    // PEP 475: run the signal handlers (KeyboardInterrupt leaves from here).
                    return py.check_signals();
                }
                return Err(os_error(err));
            }
            if plan.events.iter().any(|ev| ev.token == WAKER_TOKEN) {
                plan.waker.drain();
            }
            Some(plan.events)
        }
        None => None,
    };
    let dropped = LoopCore::state(slf, |st| {
        let mut dropped: Vec<Py<Handle>> = Vec::new();
        if let Some(events) = events {
            let mut stale: Vec<(RawFd, Side)> = Vec::new();
            if let Some(selector) = &st.selector {
                let ready = &mut st.ready;
                selector.dispatch(
                    &events,
                    |fd, side, handle| {
                        if handle.get().is_cancelled() {
                            stale.push((fd, side));
                        } else {
                            ready.push(handle.clone_ref(py));
                        }
                    },
                    |_| {},
                );
            }
            if let Some(selector) = st.selector.as_mut() {
                for (fd, side) in stale {
                    dropped.extend(selector.remove(fd, side));
                }
            }
            st.events = Some(events);
        }
        if !st.timers.is_empty() {
            let end_time = clock::now() + clock::RESOLUTION;
            let ready = &mut st.ready;
            st.timers.pop_due(end_time, |timer| {
                timer.0.get().set_unscheduled();
                ready.push(timer.0);
            });
        }
        dropped
    })?;
    drop_outside(dropped);
    Ok(())
}

/// Phase 5: runs the batch; stops at KeyboardInterrupt/SystemExit with the rest left in `batch`.
fn run_batch(
    slf: &Bound<'_, LoopCore>,
    batch: &mut VecDeque<Py<Handle>>,
    debug: bool,
) -> PyResult<()> {
    let py = slf.py();
    while let Some(handle) = batch.pop_front() {
        let h = handle.get();
        if h.is_cancelled() {
            continue;
        }
        let result = if debug {
            run_debug(slf, &handle)?
        } else {
            h.run(py, false)
        };
        if let Err(failure) = result {
            let err = &failure.err;
            if err.is_instance_of::<PyKeyboardInterrupt>(py)
                || err.is_instance_of::<PySystemExit>(py)
            {
                return Err(failure.err);
            }
            report_callback_error(slf, &handle, failure)?;
        }
    }
    Ok(())
}

/// Debug mode: `_current_handle` is set while the callback runs, and a callback slower than
/// `slow_callback_duration` is logged as asyncio logs it.
fn run_debug(slf: &Bound<'_, LoopCore>, handle: &Py<Handle>) -> PyResult<Result<(), Failure>> {
    let py = slf.py();
    let current = handle.clone_ref(py).into_any();
    let previous = LoopCore::state(slf, |st| st.current_handle.replace(current))?;
    drop(previous);
    let t0 = clock::now();
    let result = handle.get().run(py, true);
    let dt = clock::now() - t0;
    let (old, slow) = LoopCore::state(slf, |st| {
        (st.current_handle.take(), st.slow_callback_duration)
    })?;
    drop(old);
    if dt >= slow {
        let text = py_helpers::format_handle(py, handle.bind(py).as_any())?;
        py_helpers::log_slow_callback(py, text, dt)?;
    }
    handle.get().finish(py);
    Ok(result)
}

/// `Handle._run`'s error path: the exception goes to `loop.call_exception_handler`.
fn report_callback_error(
    slf: &Bound<'_, LoopCore>,
    handle: &Py<Handle>,
    failure: Failure,
) -> PyResult<()> {
    let py = slf.py();
    let h = handle.get();
    let Failure {
        err,
        callback,
        args,
    } = failure;
    let source = py_helpers::format_callback_source(py, callback.bind(py), args.bind(py))?;
    let context = PyDict::new(py);
    context.set_item("message", format!("Exception in callback {source}"))?;
    context.set_item("exception", err.into_value(py))?;
    context.set_item("handle", handle)?;
    if let Some(tb) = h.source_traceback() {
        context.set_item("source_traceback", tb)?;
    }
    slf.call_method1("call_exception_handler", (context,))
        .map(drop)
}
