//! `LoopCore`: the native base of `ferroloop.Loop`, mirroring the scheduling half of
//! `asyncio.BaseEventLoop` and the fd half of `asyncio.selector_events.BaseSelectorEventLoop`.
//!
//! Invariants:
//! - `LoopState` lives in a [`GilCell`] and is entered only for pure-Rust steps (see the
//!   crate's ground rule): every method that creates a Python object does so before entering,
//!   and every handle removed from the state is dropped after leaving it;
//! - after `close()`, `selector` and `waker` are `None` and the queues are empty: the epoll fd
//!   and the eventfd are closed exactly once, by that drop;
//! - `thread_id` is `Some` exactly while `run_forever` runs (asyncio's `is_running()`).

use crate::errors::{loop_closed, os_error};
use crate::fastcall::{fixed_arg, Fixed};
use crate::gil_cell::GilCell;
use crate::handles::{Handle, Invoke, NewHandle, TimerHandle};
use crate::py_helpers;
use crate::run_once;
use ferroloop_core::clock;
use ferroloop_core::fd_table::FdTable;
use ferroloop_core::poller::Events;
use ferroloop_core::ready::ReadyQueue;
use ferroloop_core::registry::Side;
use ferroloop_core::selector::Selector;
use ferroloop_core::timers::{TimerHeap, TimerItem};
use ferroloop_core::waker::Waker;
use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyDict, PyTuple, PyWeakrefReference};
use std::collections::VecDeque;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;

static LOOPS_CREATED: AtomicUsize = AtomicUsize::new(0);

/// How many ferroloop loops this process has created (proves the conformance run uses them).
#[pyfunction]
pub fn loops_created() -> usize {
    LOOPS_CREATED.load(Ordering::Relaxed)
}

/// A timer in the heap: the base-class view of a `TimerHandle`.
pub struct Scheduled(pub Py<Handle>);

impl TimerItem for Scheduled {
    #[inline]
    fn is_cancelled(&self) -> bool {
        self.0.get().is_cancelled()
    }
}

/// Everything the loop mutates. Borrowed briefly, never across Python code.
pub struct LoopState {
    pub ready: ReadyQueue<Py<Handle>>,
    /// The batch of the running iteration; kept here between iterations to reuse its buffer.
    pub batch: VecDeque<Py<Handle>>,
    pub timers: TimerHeap<Scheduled>,
    pub selector: Option<Selector<Py<Handle>>>,
    pub waker: Option<Arc<Waker>>,
    /// The poller's event buffer; taken out while the loop waits without the state borrowed.
    pub events: Option<Events>,
    pub stopping: bool,
    pub closed: bool,
    pub debug: bool,
    pub slow_callback_duration: f64,
    pub thread_id: Option<Py<PyAny>>,
    pub current_handle: Option<Py<PyAny>>,
    /// `loop._task_factory`, read by `create_task` on every call.
    pub task_factory: Option<Py<PyAny>>,
    /// ferroloop's own transports by descriptor, for `loop._transports` (asyncio's
    /// `WeakValueDictionary`): a plain weak reference to each Python transport, keyed by the fd
    /// number, which costs an idle connection less than a `KeyedRef` and a dict entry.
    pub transports: FdTable<Option<Py<PyWeakrefReference>>>,
}

/// Ready callbacks at which a `call_soon_threadsafe` caller on another thread lets the running
/// loop take the GIL (and again at every multiple).
const THREADSAFE_BACKLOG: usize = 1024;

/// Callbacks pending (ready and timers) from which `call_soon`/`call_later` take the new
/// handle's context copy out of the GC (see `context.rs`). Below it the GC has little to
/// traverse, and the untrack/re-track pair would cost more than it saves.
const UNTRACK_BACKLOG: usize = 256;

/// The native base class of `ferroloop.Loop`.
#[pyclass(frozen, subclass, module = "ferroloop._ferroloop")]
pub struct LoopCore {
    st: GilCell<LoopState>,
}

impl LoopState {
    /// Empties the ready queue, the batch, the timer heap and the fd registry; returns every
    /// handle they held, timers marked unscheduled. The caller releases their callbacks and
    /// drops them outside the state (`close()` and the loop's `Drop`).
    fn drain_handles(&mut self) -> Vec<Py<Handle>> {
        let mut handles: Vec<Py<Handle>> = self.ready.drain_all().into_iter().collect();
        handles.extend(self.batch.drain(..));
        for timer in self.timers.drain_all() {
            timer.0.get().set_unscheduled();
            handles.push(timer.0);
        }
        if let Some(selector) = self.selector.as_mut() {
            handles.extend(selector.drain_all());
        }
        handles
    }
}

/// Releases the callbacks of handles taken out of a loop (see [`Handle::release`]).
fn release_all(py: Python<'_>, handles: &[Py<Handle>]) {
    for handle in handles {
        handle.get().release(py);
    }
}

impl Drop for LoopCore {
    /// A loop dropped without `close()` releases the callbacks of its pending handles, so a
    /// handle the user still holds cannot keep a reference cycle alive.
    fn drop(&mut self) {
        let handles = self.st.get_mut().drain_handles();
        if !handles.is_empty() {
            // Deallocation runs with the GIL held; `attach` only hands us the token.
            Python::attach(|py| release_all(py, &handles));
        }
    }
}

/// Converts an `add_reader` argument to a descriptor, as `selectors._fileobj_to_fd` does.
fn fileobj_to_fd(obj: &Bound<'_, PyAny>) -> PyResult<RawFd> {
    let fd: i64 = if let Ok(fd) = obj.extract::<i64>() {
        fd
    } else {
        let fileno = obj
            .call_method0("fileno")
            .and_then(|n| n.call_method0("__index__"))
            .and_then(|n| n.extract::<i64>());
        match fileno {
            Ok(fd) => fd,
            Err(_) => {
                return Err(PyValueError::new_err(format!(
                    "Invalid file object: {}",
                    obj.repr()?
                )))
            }
        }
    };
    if fd < 0 {
        return Err(PyValueError::new_err(format!(
            "Invalid file descriptor: {fd}"
        )));
    }
    RawFd::try_from(fd).map_err(|_| PyValueError::new_err(format!("Invalid file descriptor: {fd}")))
}

/// `TypeError` for a non-callable, with `_check_callback`'s message.
#[inline(always)]
fn check_callable(callback: &Bound<'_, PyAny>, method: &str) -> PyResult<()> {
    if callback.is_callable() {
        return Ok(());
    }
    not_callable(callback, method)
}

#[cold]
#[inline(never)]
fn not_callable(callback: &Bound<'_, PyAny>, method: &str) -> PyResult<()> {
    Err(PyTypeError::new_err(format!(
        "a callable object was expected by {method}(), got {}",
        callback.repr()?
    )))
}

impl LoopCore {
    /// Runs `f` on the loop state (pure Rust only: see [`GilCell::with`]).
    #[inline]
    pub fn state<R>(slf: &Bound<'_, Self>, f: impl FnOnce(&mut LoopState) -> R) -> PyResult<R> {
        slf.get().st.with(slf.py(), f)
    }

    /// `_check_closed()` plus the callback checks: the callable check always (it is nearly free
    /// here), and in debug mode asyncio's own `_check_thread`/`_check_callback`. Returns `debug`.
    fn check_schedule(
        slf: &Bound<'_, Self>,
        callback: &Bound<'_, PyAny>,
        method: &str,
        check_thread: bool,
    ) -> PyResult<bool> {
        Self::check_schedule_backlog(slf, callback, method, check_thread).map(|(debug, _)| debug)
    }

    /// [`Self::check_schedule`], also returning whether many callbacks are pending (see
    /// [`UNTRACK_BACKLOG`]).
    #[inline(always)]
    fn check_schedule_backlog(
        slf: &Bound<'_, Self>,
        callback: &Bound<'_, PyAny>,
        method: &str,
        check_thread: bool,
    ) -> PyResult<(bool, bool)> {
        let (closed, debug, backlog) = Self::state(slf, |st| {
            let pending = st.ready.len() + st.timers.len();
            (st.closed, st.debug, pending >= UNTRACK_BACKLOG)
        })?;
        if closed {
            return Err(loop_closed());
        }
        if debug {
            if check_thread {
                slf.call_method0("_check_thread")?;
            }
            slf.call_method1("_check_callback", (callback, method))?;
        } else {
            check_callable(callback, method)?;
        }
        Ok((debug, backlog))
    }

    fn new_handle(
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<Py<PyAny>>,
        debug: bool,
    ) -> NewHandle {
        NewHandle {
            callback: callback.clone().unbind(),
            args: args.clone().unbind(),
            context,
            debug,
            oneshot: true,
            invoke: Invoke::Python,
            untrack_context: true,
        }
    }

    /// Removes `transport`'s entry from `loop._transports` (its connection is lost and its
    /// socket about to close: the descriptor number may belong to someone else next).
    pub fn forget_transport(
        slf: &Bound<'_, Self>,
        fd: RawFd,
        transport: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let py = slf.py();
        let old = Self::state(slf, |st| {
            let slot = st.transports.get_mut(fd)?;
            slot.take_if(|w| w.bind(py).upgrade().is_some_and(|t| t.is(transport)))
        })?;
        drop(old);
        Ok(())
    }

    /// Queues `handle`; with `wake`, also wakes a loop blocked in the poller.
    /// Returns the number of callbacks now waiting in the ready queue.
    #[inline(always)]
    fn push_ready(slf: &Bound<'_, Self>, handle: &Py<Handle>, wake: bool) -> PyResult<usize> {
        let queued = handle.clone_ref(slf.py());
        let outcome = Self::state(slf, |st| {
            if st.closed {
                return Err(queued);
            }
            st.ready.push(queued);
            if wake {
                if let Some(waker) = &st.waker {
                    // Like asyncio's `_write_to_self`, a failed wakeup is not the caller's error.
                    let _ = waker.wake();
                }
            }
            Ok(st.ready.len())
        })?;
        outcome.map_err(|handle| {
            drop(handle);
            loop_closed()
        })
    }

    /// Called by `call_soon_threadsafe` once [`THREADSAFE_BACKLOG`] callbacks wait: a thread
    /// that is that far ahead of the running loop releases the GIL for a moment, so the loop's
    /// thread (woken, waiting for the GIL) runs them now. Otherwise a producer holds the GIL
    /// for the interpreter's whole switch interval (5 ms) and queues tens of thousands of
    /// callbacks, whose memory (a handle and a context each) is then kept by the allocator.
    fn yield_to_running_loop(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let loop_thread = Self::state(slf, |st| st.thread_id.as_ref().map(|t| t.clone_ref(py)))?;
        let Some(loop_thread) = loop_thread else {
            return Ok(()); // not running: nobody would take the callbacks
        };
        let loop_thread: std::os::raw::c_ulong = loop_thread.extract(py)?;
        // SAFETY: a plain query of the calling thread's identifier, with the GIL held.
        let this_thread = unsafe { pyo3::ffi::PyThread_get_thread_ident() };
        if this_thread != loop_thread {
            py.detach(std::thread::yield_now);
        }
        Ok(())
    }

    fn schedule_at(
        slf: &Bound<'_, Self>,
        when: f64,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<Py<PyAny>>,
        method: &str,
    ) -> PyResult<Py<TimerHandle>> {
        let py = slf.py();
        let (debug, backlog) = Self::check_schedule_backlog(slf, callback, method, true)?;
        let counter = Self::state(slf, |st| st.timers.cancel_counter().clone())?;
        let (timer, base) = Handle::new_timer(
            py,
            NewHandle {
                untrack_context: backlog,
                ..Self::new_handle(callback, args, context, debug)
            },
            when,
            counter,
        )?;
        let rejected = Self::state(slf, |st| {
            if st.closed {
                return Some(base);
            }
            st.timers.push(when, Scheduled(base));
            None
        })?;
        match rejected {
            Some(base) => {
                base.get().set_unscheduled();
                drop(base);
                Err(loop_closed())
            }
            None => Ok(timer),
        }
    }

    fn set_fd_callback(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        side: Side,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<Py<Handle>> {
        Self::add_fd_callback(
            slf,
            fileobj_to_fd(fd)?,
            side,
            callback,
            args,
            Invoke::Python,
        )
    }

    /// `_add_reader`/`_add_writer` on a descriptor number (also used by the native transports,
    /// which register their core as a native reader: `invoke` is then `Invoke::Reader`).
    pub fn add_fd_callback(
        slf: &Bound<'_, Self>,
        fd: RawFd,
        side: Side,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        invoke: Invoke,
    ) -> PyResult<Py<Handle>> {
        let py = slf.py();
        let method = if side == Side::Read {
            "add_reader"
        } else {
            "add_writer"
        };
        let debug = match invoke {
            Invoke::Python => Self::check_schedule(slf, callback, method, false)?,
            Invoke::Reader(_) => Self::state(slf, |st| {
                if st.closed {
                    Err(loop_closed())
                } else {
                    Ok(st.debug)
                }
            })??,
        };
        let new = NewHandle {
            oneshot: false,
            invoke,
            ..Self::new_handle(callback, args, None, debug)
        };
        let handle = Handle::new_plain(py, new)?;
        // `handle` keeps a reference of its own, so a registration rolled back inside the
        // state only decrements the count and cannot run Python code there.
        let registered = handle.clone_ref(py);
        let outcome = Self::state(slf, |st| match st.selector.as_mut() {
            Some(selector) => selector.set(fd, side, registered).map_err(os_error),
            None => Err(loop_closed()),
        })?;
        if let Some(old) = outcome? {
            Handle::cancel_py(old.bind(py))?;
        }
        Ok(handle)
    }

    fn remove_fd_callback(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        side: Side,
    ) -> PyResult<bool> {
        Self::remove_fd(slf, fileobj_to_fd(fd)?, side)
    }

    /// `_remove_reader`/`_remove_writer` on a descriptor number: whether there was one.
    pub fn remove_fd(slf: &Bound<'_, Self>, fd: RawFd, side: Side) -> PyResult<bool> {
        let removed = Self::state(slf, |st| {
            st.selector.as_mut().and_then(|sel| sel.remove(fd, side))
        })?;
        match removed {
            Some(handle) => {
                Handle::cancel_py(handle.bind(slf.py()))?;
                Ok(true)
            }
            None => Ok(false),
        }
    }

    /// `loop.call_soon(callback, *args)` from Rust (the native transports).
    pub fn call_soon_native(
        slf: &Bound<'_, Self>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<()> {
        Self::soon(slf, callback, args, None, false).map(drop)
    }

    /// Whether the loop is in debug mode (`get_debug()`).
    pub fn debug(slf: &Bound<'_, Self>) -> PyResult<bool> {
        Self::state(slf, |st| st.debug)
    }
}

/// The scheduling methods, called from the raw entry points in `fastcall.rs` (which parse the
/// arguments): `fixed` holds the parameters before `*args`.
impl LoopCore {
    /// `loop.call_soon(callback, *args, context=None)`.
    pub fn call_soon_impl(
        slf: &Bound<'_, Self>,
        fixed: &Fixed<'_, '_>,
        args: &Bound<'_, PyTuple>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        Self::soon(slf, fixed_arg(fixed, 0)?, args, context, false)
    }

    /// `loop.call_soon_threadsafe(callback, *args, context=None)`: `call_soon` plus a wakeup of
    /// a loop blocked in the poller. Other Python threads hold the GIL when they call this, so
    /// the handle goes straight into the ready queue, in order, as in asyncio.
    pub fn call_soon_threadsafe_impl(
        slf: &Bound<'_, Self>,
        fixed: &Fixed<'_, '_>,
        args: &Bound<'_, PyTuple>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        Self::soon(slf, fixed_arg(fixed, 0)?, args, context, true)
    }

    /// Both `call_soon` flavours; the threadsafe one skips the debug thread check and wakes.
    #[inline(always)]
    fn soon(
        slf: &Bound<'_, Self>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
        context: Option<Py<PyAny>>,
        threadsafe: bool,
    ) -> PyResult<Py<PyAny>> {
        let method = if threadsafe {
            "call_soon_threadsafe"
        } else {
            "call_soon"
        };
        let (debug, backlog) = Self::check_schedule_backlog(slf, callback, method, !threadsafe)?;
        let new = NewHandle {
            untrack_context: backlog,
            ..Self::new_handle(callback, args, context, debug)
        };
        let handle = Handle::new_plain(slf.py(), new)?;
        let pending = Self::push_ready(slf, &handle, threadsafe)?;
        if threadsafe && pending % THREADSAFE_BACKLOG == 0 {
            Self::yield_to_running_loop(slf)?;
        }
        Ok(handle.into_any())
    }

    /// `loop.call_later(delay, callback, *args, context=None)`.
    pub fn call_later_impl(
        slf: &Bound<'_, Self>,
        fixed: &Fixed<'_, '_>,
        args: &Bound<'_, PyTuple>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let (delay, callback) = (fixed_arg(fixed, 0)?, fixed_arg(fixed, 1)?);
        if delay.is_none() {
            return Err(PyTypeError::new_err("delay must not be None"));
        }
        let when = clock::now() + delay.extract::<f64>()?;
        Self::schedule_at(slf, when, callback, args, context, "call_at").map(Py::into_any)
    }

    /// `loop.call_at(when, callback, *args, context=None)`.
    pub fn call_at_impl(
        slf: &Bound<'_, Self>,
        fixed: &Fixed<'_, '_>,
        args: &Bound<'_, PyTuple>,
        context: Option<Py<PyAny>>,
    ) -> PyResult<Py<PyAny>> {
        let (when, callback) = (fixed_arg(fixed, 0)?, fixed_arg(fixed, 1)?);
        if when.is_none() {
            return Err(PyTypeError::new_err("when cannot be None"));
        }
        let when = when.extract::<f64>()?;
        Self::schedule_at(slf, when, callback, args, context, "call_at").map(Py::into_any)
    }
}

#[pymethods]
impl LoopCore {
    #[new]
    #[pyo3(signature = (*_args, **_kwargs))]
    fn py_new(_args: &Bound<'_, PyTuple>, _kwargs: Option<&Bound<'_, PyAny>>) -> PyResult<Self> {
        let selector = Selector::new().map_err(os_error)?;
        let waker = Waker::new(selector.poller()).map_err(os_error)?;
        LOOPS_CREATED.fetch_add(1, Ordering::Relaxed);
        Ok(LoopCore {
            st: GilCell::new(LoopState {
                ready: ReadyQueue::new(),
                batch: VecDeque::new(),
                timers: TimerHeap::new(),
                selector: Some(selector),
                waker: Some(Arc::new(waker)),
                events: Some(Events::default()),
                stopping: false,
                closed: false,
                debug: false,
                slow_callback_duration: 0.1,
                thread_id: None,
                current_handle: None,
                task_factory: None,
                transports: FdTable::new(),
            }),
        })
    }

    /// `loop.time()`: `time.monotonic()`.
    fn time(&self) -> f64 {
        clock::now()
    }

    /// Native half of `sock_recv` (`sock_ops.rs`).
    fn _sock_recv_native(
        slf: &Bound<'_, Self>,
        sock: &Bound<'_, PyAny>,
        n: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        Self::sock_recv_native(slf, sock, n)
    }

    /// Native half of `sock_recv_into` (`sock_ops.rs`).
    fn _sock_recv_into_native(
        slf: &Bound<'_, Self>,
        sock: &Bound<'_, PyAny>,
        buf: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        Self::sock_recv_into_native(slf, sock, buf)
    }

    /// Native half of `sock_sendall` (`sock_ops.rs`).
    fn _sock_sendall_native(
        slf: &Bound<'_, Self>,
        sock: &Bound<'_, PyAny>,
        data: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        Self::sock_sendall_native(slf, sock, data)
    }

    /// `loop.create_task(coro, *, name=None, context=None)`, as `BaseEventLoop.create_task`.
    #[pyo3(signature = (coro, *, name = None, context = None))]
    fn create_task<'py>(
        slf: &Bound<'py, Self>,
        coro: &Bound<'py, PyAny>,
        name: Option<&Bound<'py, PyAny>>,
        context: Option<&Bound<'py, PyAny>>,
    ) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let (closed, factory, debug) = Self::state(slf, |st| {
            (
                st.closed,
                st.task_factory.as_ref().map(|f| f.clone_ref(py)),
                st.debug,
            )
        })?;
        if closed {
            return Err(loop_closed());
        }
        let tasks = py_helpers::tasks_module(py)?;
        let context = context.filter(|c| !c.is_none());
        match factory {
            None => {
                let kwargs = PyDict::new(py);
                kwargs.set_item(intern!(py, "loop"), slf)?;
                if let Some(name) = name {
                    kwargs.set_item(intern!(py, "name"), name)?;
                }
                if let Some(context) = context {
                    kwargs.set_item(intern!(py, "context"), context)?;
                }
                let task = tasks
                    .getattr(intern!(py, "Task"))?
                    .call((coro,), Some(&kwargs))?;
                if debug {
                    let tb = task.getattr(intern!(py, "_source_traceback"))?;
                    if tb.is_truthy()? {
                        tb.del_item(-1)?;
                    }
                }
                Ok(task)
            }
            Some(factory) => {
                let factory = factory.bind(py);
                let task = match context {
                    None => factory.call1((slf, coro))?,
                    Some(context) => {
                        let kwargs = PyDict::new(py);
                        kwargs.set_item(intern!(py, "context"), context)?;
                        factory.call((slf, coro), Some(&kwargs))?
                    }
                };
                tasks
                    .getattr(intern!(py, "_set_task_name"))?
                    .call1((&task, name))?;
                Ok(task)
            }
        }
    }

    #[getter]
    fn _task_factory(slf: &Bound<'_, Self>) -> PyResult<Option<Py<PyAny>>> {
        Self::state(slf, |st| {
            st.task_factory.as_ref().map(|f| f.clone_ref(slf.py()))
        })
    }

    #[setter(_task_factory)]
    fn set_task_factory_attr(slf: &Bound<'_, Self>, value: Option<Py<PyAny>>) -> PyResult<()> {
        let value = value.filter(|v| !v.is_none(slf.py()));
        let old = Self::state(slf, |st| std::mem::replace(&mut st.task_factory, value))?;
        drop(old);
        Ok(())
    }

    /// `BaseSelectorEventLoop._add_reader(fd, callback, *args)`: registers a level-triggered
    /// reader (replacing and cancelling the previous one) and returns its handle. The public
    /// `add_reader` (Python, inherited) first checks that no transport owns the fd.
    #[pyo3(signature = (fd, callback, *args))]
    fn _add_reader(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<Py<Handle>> {
        Self::set_fd_callback(slf, fd, Side::Read, callback, args)
    }

    /// `BaseSelectorEventLoop._remove_reader(fd)`: True if a reader was removed.
    fn _remove_reader(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        Self::remove_fd_callback(slf, fd, Side::Read)
    }

    /// `BaseSelectorEventLoop._add_writer(fd, callback, *args)`.
    #[pyo3(signature = (fd, callback, *args))]
    fn _add_writer(
        slf: &Bound<'_, Self>,
        fd: &Bound<'_, PyAny>,
        callback: &Bound<'_, PyAny>,
        args: &Bound<'_, PyTuple>,
    ) -> PyResult<Py<Handle>> {
        Self::set_fd_callback(slf, fd, Side::Write, callback, args)
    }

    /// `BaseSelectorEventLoop._remove_writer(fd)`: True if a writer was removed.
    fn _remove_writer(slf: &Bound<'_, Self>, fd: &Bound<'_, PyAny>) -> PyResult<bool> {
        Self::remove_fd_callback(slf, fd, Side::Write)
    }

    /// What `selectors.BaseSelector.get_key(fd)` would say: `(events mask, reader, writer)`
    /// (mask bit 1 = read, 2 = write), or `None` if the fd is not registered.
    #[allow(clippy::type_complexity)]
    fn _fd_key(
        slf: &Bound<'_, Self>,
        fd: RawFd,
    ) -> PyResult<Option<(u8, Option<Py<Handle>>, Option<Py<Handle>>)>> {
        let py = slf.py();
        Self::state(slf, |st| {
            let slot = st.selector.as_ref()?.get(fd)?;
            let interest = slot.interest();
            let mask = u8::from(interest.readable) | (u8::from(interest.writable) << 1);
            let reader = slot.reader.as_ref().map(|h| h.clone_ref(py));
            let writer = slot.writer.as_ref().map(|h| h.clone_ref(py));
            Some((mask, reader, writer))
        })
    }

    /// `loop.stop()`: `run_forever` returns after the current iteration.
    fn stop(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::state(slf, |st| st.stopping = true)
    }

    /// `loop.is_running()`.
    fn is_running(slf: &Bound<'_, Self>) -> PyResult<bool> {
        Self::state(slf, |st| st.thread_id.is_some())
    }

    /// `loop.is_closed()`.
    fn is_closed(slf: &Bound<'_, Self>) -> PyResult<bool> {
        Self::state(slf, |st| st.closed)
    }

    /// `loop.get_debug()`.
    fn get_debug(slf: &Bound<'_, Self>) -> PyResult<bool> {
        Self::state(slf, |st| st.debug)
    }

    /// `BaseEventLoop._check_closed()`.
    fn _check_closed(slf: &Bound<'_, Self>) -> PyResult<()> {
        if Self::state(slf, |st| st.closed)? {
            Err(loop_closed())
        } else {
            Ok(())
        }
    }

    /// `BaseEventLoop._write_to_self()`: wakes the loop if it is blocked in the poller.
    fn _write_to_self(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::state(slf, |st| {
            if let Some(waker) = &st.waker {
                // Like asyncio, a failed wakeup write is not an error of the caller.
                let _ = waker.wake();
            }
        })
    }

    /// `BaseEventLoop._run_once()`: one iteration (see `docs/design.md`).
    fn _run_once(slf: &Bound<'_, Self>) -> PyResult<()> {
        run_once::run_once(slf)
    }

    /// The `while True: _run_once(); if _stopping: break` part of `run_forever`, in Rust.
    /// `_stopping` is reset when it returns, by stop or by exception, as in asyncio.
    fn _run_until_stopped(slf: &Bound<'_, Self>) -> PyResult<()> {
        let result = loop {
            match run_once::run_once_then_stopping(slf) {
                Ok(true) => break Ok(()),
                Ok(false) => {}
                Err(err) => break Err(err),
            }
        };
        Self::state(slf, |st| st.stopping = false)?;
        result
    }

    /// The native half of `close()`: empties the queues and closes the poller and the waker.
    fn _close_core(slf: &Bound<'_, Self>) -> PyResult<()> {
        let (handles, selector, waker, transports) = Self::state(slf, |st| {
            st.closed = true;
            (
                st.drain_handles(),
                st.selector.take(),
                st.waker.take(),
                st.transports.take_all(),
            )
        })?;
        release_all(slf.py(), &handles);
        // Dropping the selector and the waker closes the epoll fd and the eventfd.
        drop((handles, selector, waker, transports));
        Ok(())
    }

    /// `loop._transports[fd]` for ferroloop's transports: the live transport registered for
    /// `fd`, or `None` (a dead entry is removed).
    fn _transport_of(slf: &Bound<'_, Self>, fd: RawFd) -> PyResult<Option<Py<PyAny>>> {
        let py = slf.py();
        let weak = Self::state(slf, |st| {
            st.transports
                .get(fd)
                .and_then(Option::as_ref)
                .map(|w| w.clone_ref(py))
        })?;
        let Some(weak) = weak else {
            return Ok(None);
        };
        match weak.bind(py).upgrade() {
            Some(transport) => Ok(Some(transport.unbind())),
            None => {
                let dead = Self::state(slf, |st| {
                    let slot = st.transports.get_mut(fd)?;
                    slot.take_if(|w| w.is(&weak))
                })?;
                drop((dead, weak));
                Ok(None)
            }
        }
    }

    /// `loop._transports[fd] = transport` for ferroloop's transports.
    fn _set_transport(
        slf: &Bound<'_, Self>,
        fd: RawFd,
        transport: &Bound<'_, PyAny>,
    ) -> PyResult<()> {
        let weak = PyWeakrefReference::new(transport)?.unbind();
        let old = Self::state(slf, |st| {
            st.transports
                .slot(fd)
                .ok_or_else(|| PyValueError::new_err(format!("Invalid file descriptor: {fd}")))
                .map(|slot| slot.replace(weak))
        })??;
        drop(old);
        Ok(())
    }

    /// `del loop._transports[fd]` for ferroloop's transports: whether there was an entry.
    fn _del_transport(slf: &Bound<'_, Self>, fd: RawFd) -> PyResult<bool> {
        let old = Self::state(slf, |st| st.transports.get_mut(fd).and_then(Option::take))?;
        Ok(old.is_some())
    }

    #[getter]
    fn _closed(slf: &Bound<'_, Self>) -> PyResult<bool> {
        Self::state(slf, |st| st.closed)
    }

    #[getter]
    fn _stopping(slf: &Bound<'_, Self>) -> PyResult<bool> {
        Self::state(slf, |st| st.stopping)
    }

    #[setter(_stopping)]
    fn set_stopping_flag(slf: &Bound<'_, Self>, value: bool) -> PyResult<()> {
        Self::state(slf, |st| st.stopping = value)
    }

    #[getter]
    fn _debug(slf: &Bound<'_, Self>) -> PyResult<bool> {
        Self::state(slf, |st| st.debug)
    }

    #[setter(_debug)]
    fn set_debug_flag(slf: &Bound<'_, Self>, value: &Bound<'_, PyAny>) -> PyResult<()> {
        let value = value.is_truthy()?;
        Self::state(slf, |st| st.debug = value)
    }

    #[getter]
    fn slow_callback_duration(slf: &Bound<'_, Self>) -> PyResult<f64> {
        Self::state(slf, |st| st.slow_callback_duration)
    }

    #[setter]
    fn set_slow_callback_duration(slf: &Bound<'_, Self>, value: f64) -> PyResult<()> {
        Self::state(slf, |st| st.slow_callback_duration = value)
    }

    #[getter]
    fn _thread_id(slf: &Bound<'_, Self>) -> PyResult<Option<Py<PyAny>>> {
        Self::state(slf, |st| {
            st.thread_id.as_ref().map(|t| t.clone_ref(slf.py()))
        })
    }

    #[setter(_thread_id)]
    fn set_thread_id(slf: &Bound<'_, Self>, value: Option<Py<PyAny>>) -> PyResult<()> {
        let value = value.filter(|v| !v.is_none(slf.py()));
        let old = Self::state(slf, |st| std::mem::replace(&mut st.thread_id, value))?;
        drop(old);
        Ok(())
    }

    #[getter]
    fn _current_handle(slf: &Bound<'_, Self>) -> PyResult<Option<Py<PyAny>>> {
        Self::state(slf, |st| {
            st.current_handle.as_ref().map(|h| h.clone_ref(slf.py()))
        })
    }

    #[getter]
    fn _clock_resolution(&self) -> f64 {
        clock::RESOLUTION
    }

    /// Descriptors the loop itself opened (epoll, eventfd); empty after `close()`.
    fn _native_fds(slf: &Bound<'_, Self>) -> PyResult<Vec<RawFd>> {
        Self::state(slf, |st| {
            let mut fds = Vec::new();
            if let Some(selector) = &st.selector {
                fds.push(selector.poller().as_raw_fd());
            }
            if let Some(waker) = &st.waker {
                fds.push(waker.as_raw_fd());
            }
            fds
        })
    }

    /// Counts for tests and debugging: (ready, scheduled timers, cancelled timers, fds).
    fn _stats(slf: &Bound<'_, Self>) -> PyResult<(usize, usize, usize, usize)> {
        Self::state(slf, |st| {
            (
                st.ready.len(),
                st.timers.len(),
                st.timers.cancelled_count(),
                st.selector.as_ref().map_or(0, |s| s.len()),
            )
        })
    }
}
