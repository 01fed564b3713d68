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

use crate::errors::os_error;
use crate::event_loop::LoopCore;
use crate::handles::{Failure, Handle};
use crate::py_helpers;
use ferroloop_core::clock;
use ferroloop_core::registry::Side;
use ferroloop_core::waker::WAKER_TOKEN;
use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit};
use pyo3::prelude::*;
use pyo3::types::PyDict;
use std::collections::VecDeque;
use std::os::fd::RawFd;

/// Runs one iteration.
pub fn run_once(slf: &Bound<'_, LoopCore>) -> PyResult<()> {
    let py = slf.py();
    poll_and_collect(slf)?;
    let (mut batch, debug) = {
        let mut this = slf.borrow_mut();
        let st = &mut this.st;
        let mut batch = std::mem::take(&mut st.batch);
        st.ready.take_batch(&mut batch);
        (batch, st.debug)
    };
    let result = run_batch(slf, &mut batch, debug);
    let mut this = slf.borrow_mut();
    if result.is_err() {
        this.st.ready.restore_front(&mut batch);
    }
    // `batch` is empty here either way: keep its buffer for the next iteration.
    this.st.batch = batch;
    drop(this);
    let _ = py;
    result
}

/// Phases 1–4: timers, timeout, poll, and filling the ready queue.
fn poll_and_collect(slf: &Bound<'_, LoopCore>) -> PyResult<()> {
    let py = slf.py();
    let mut dropped: Vec<Py<Handle>> = Vec::new();
    let prepared = {
        let mut this = slf.borrow_mut();
        let st = &mut this.st;
        let mut removed = Vec::new();
        st.timers.drop_cancelled(&mut removed);
        for timer in removed {
            timer.0.get().set_unscheduled();
            dropped.push(timer.0);
        }
        let timeout = if !st.ready.is_empty() || st.stopping {
            Some(0.0)
        } else {
            st.timers.next_deadline().map(|when| when - clock::now())
        };
        let timeout_ms = clock::timeout_millis(timeout);
        match (&st.selector, &st.waker) {
            (Some(selector), Some(waker)) if timeout_ms != 0 || !selector.is_empty() => Some((
                selector.poller().clone(),
                waker.clone(),
                st.events.take().unwrap_or_default(),
                timeout_ms,
            )),
            _ => None,
        }
    };
    drop(dropped);

    let mut woke = false;
    let mut events = None;
    if let Some((poller, waker, mut evs, timeout_ms)) = prepared {
        let result = if timeout_ms == 0 {
            poller.wait(&mut evs, 0)
        } else {
            waker.before_sleep();
            let r = py.detach(|| poller.wait(&mut evs, timeout_ms));
            waker.after_sleep();
            r
        };
        if let Err(err) = result {
            evs.clear();
            slf.borrow_mut().st.events = Some(evs);
            if err.kind() == std::io::ErrorKind::Interrupted {
                // PEP 475: run the signal handlers (KeyboardInterrupt leaves from here), go on.
                return py.check_signals();
            }
            return Err(os_error(err));
        }
        for ev in evs.iter() {
            woke |= ev.token == WAKER_TOKEN;
        }
        if woke {
            waker.drain();
        }
        events = Some(evs);
    }

    let mut stale: Vec<(RawFd, Side)> = Vec::new();
    let mut dropped: Vec<Py<Handle>> = Vec::new();
    let mut this = slf.borrow_mut();
    let st = &mut this.st;
    if let Some(evs) = events {
        if let Some(selector) = &st.selector {
            let ready = &mut st.ready;
            selector.dispatch(
                &evs,
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
        st.events = Some(evs);
    }
    if !st.timers.is_empty() {
        let end_time = clock::now() + clock::RESOLUTION;
        let ready = &mut st.ready;
        st.timers.pop_due(end_time, |timer| {
            timer.0.get().set_unscheduled();
            ready.push(timer.0);
        });
    }
    drop(this);
    drop(dropped);
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
    let previous = slf
        .borrow_mut()
        .st
        .current_handle
        .replace(handle.clone_ref(py).into_any());
    drop(previous);
    let t0 = clock::now();
    let result = handle.get().run(py, true);
    let dt = clock::now() - t0;
    let old = slf.borrow_mut().st.current_handle.take();
    drop(old);
    let slow = slf.borrow().st.slow_callback_duration;
    if dt >= slow {
        let text = py_helpers::format_handle(py, handle.bind(py).as_any())?;
        py_helpers::log_slow_callback(py, text, dt)?;
    }
    handle.get().finish();
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
