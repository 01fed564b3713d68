//! `Handle` and `TimerHandle`: what `call_soon` / `call_later` return, mirroring
//! `asyncio.events.Handle` and `asyncio.events.TimerHandle`.
//!
//! Invariants:
//! - a handle is frozen (no PyO3 borrow flag): flags are atomics, and the only mutable part, the
//!   callback and its arguments, sits in a [`GilCell`] that is never entered while Python runs
//!   (clones are taken inside, calls and drops happen after it is left);
//! - `cancel()` clears the callback and arguments (as asyncio does, to break reference cycles)
//!   and, for a timer still in the heap, reports itself to the heap's cancel counter once;
//! - `scheduled` is true exactly while a timer sits in its loop's timer heap;
//! - a one-shot handle (`call_soon`, `call_later`, `call_at`) gives up its callback and
//!   arguments when it runs, and every handle gives them up when cancelled or when its loop
//!   closes or is dropped. A handle therefore holds its callback only while the loop holds the
//!   handle, which is what lets handles stay outside the cyclic garbage collector (they are
//!   untracked at creation): a cycle through a pending handle is alive anyway, and a handle
//!   that ran or was cancelled references nothing that could form one;
//! - [`live_handles`] counts handles alive in this process, so tests can detect leaks.

use crate::context;
use crate::gil_cell::GilCell;
use crate::py_helpers;
use crate::transports::ReaderKind;
use ferroloop_core::timers::CancelCounter;
use pyo3::prelude::*;
use pyo3::pyclass::CompareOp;
use pyo3::types::{PyFloat, PyTuple};
use std::mem::ManuallyDrop;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

static LIVE_HANDLES: AtomicUsize = AtomicUsize::new(0);

/// Number of `Handle`/`TimerHandle` objects alive in this process (for leak tests).
#[pyfunction]
pub fn live_handles() -> usize {
    LIVE_HANDLES.load(Ordering::Relaxed)
}

/// Adjusts the live-handle count. Handles are created and destroyed with the GIL held, so a
/// plain load and store (no locked instruction) cannot lose an update.
#[inline]
fn count_live(delta: isize) {
    let n = LIVE_HANDLES.load(Ordering::Relaxed);
    LIVE_HANDLES.store(n.wrapping_add_signed(delta), Ordering::Relaxed);
}

/// The callback and its positional arguments.
pub struct Payload {
    pub callback: Py<PyAny>,
    pub args: Py<PyTuple>,
}

/// Mirrors `asyncio.events.Handle`: a callback, its arguments and its context.
#[pyclass(frozen, subclass, weakref, module = "ferroloop._ferroloop")]
pub struct Handle {
    payload: GilCell<Option<Payload>>,
    /// Released by hand in `Drop` (see there).
    context: ManuallyDrop<Py<PyAny>>,
    cancelled: AtomicBool,
    /// Deadline of a timer; NaN for a plain handle.
    when: f64,
    scheduled: AtomicBool,
    cancel_counter: Option<CancelCounter>,
    /// Present in debug mode only (boxed: most handles are not made in debug mode).
    debug: Option<Box<DebugInfo>>,
    /// Runs once (`call_soon`, timers) rather than on every readiness (`add_reader`).
    oneshot: bool,
    invoke: Invoke,
    /// `context` is the handle's own copy, made by [`context::copy_current_private`] (so it
    /// must be published before it is shared or released); false for a caller's `context=`.
    private_context: bool,
}

/// What running a handle calls.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Invoke {
    /// `callback(*args)`, as asyncio.
    Python,
    /// A native transport's reader: the callback is the transport's core, whose `_read_ready`
    /// is called from Rust (no bound-method object per connection, no Python call per event).
    Reader(ReaderKind),
}

/// What a handle made in debug mode carries besides.
struct DebugInfo {
    /// Where the handle was made (`Handle._source_traceback`).
    source_traceback: Py<PyAny>,
    /// `cancel()` keeps the repr as it was before the callback was cleared.
    repr_cache: GilCell<Option<String>>,
}

/// Mirrors `asyncio.events.TimerHandle`: a [`Handle`] with a deadline.
#[pyclass(frozen, extends = Handle, module = "ferroloop._ferroloop")]
pub struct TimerHandle;

/// What a new handle needs, gathered by the loop method that creates it.
pub struct NewHandle {
    pub callback: Py<PyAny>,
    pub args: Py<PyTuple>,
    /// `None`: copy the current context, as asyncio does.
    pub context: Option<Py<PyAny>>,
    pub debug: bool,
    /// False for `add_reader`/`add_writer` handles, which run on every readiness.
    pub oneshot: bool,
    pub invoke: Invoke,
    /// A context copied for the handle is kept out of the GC (worth it when many handles are
    /// pending, and for long-lived readers).
    pub untrack_context: bool,
}

/// A callback that raised: the exception and what was called.
pub struct Failure {
    pub err: PyErr,
    pub callback: Py<PyAny>,
    pub args: Py<PyTuple>,
}

/// Takes a new handle out of the cyclic GC's lists (see the module's invariants).
fn untrack(obj: &Bound<'_, PyAny>) {
    // SAFETY: `obj` is a live object of a GC type (PyO3 gives every pyclass Py_TPFLAGS_HAVE_GC)
    // that was tracked when it was allocated; untracking is idempotent, and PyO3's dealloc
    // untracks again safely.
    unsafe { pyo3::ffi::PyObject_GC_UnTrack(obj.as_ptr().cast()) }
}

impl Handle {
    #[inline(always)]
    fn build(
        py: Python<'_>,
        new: NewHandle,
        when: f64,
        counter: Option<CancelCounter>,
    ) -> PyResult<Self> {
        let (context, private_context) = match new.context {
            Some(ctx) if !ctx.is_none(py) => (ctx, false),
            _ if new.untrack_context => (context::copy_current_private(py)?, true),
            _ => (context::copy_current(py)?, false),
        };
        let debug = if new.debug {
            Some(Box::new(DebugInfo {
                source_traceback: py_helpers::extract_stack(py)?,
                repr_cache: GilCell::new(None),
            }))
        } else {
            None
        };
        count_live(1);
        Ok(Handle {
            payload: GilCell::new(Some(Payload {
                callback: new.callback,
                args: new.args,
            })),
            context: ManuallyDrop::new(context),
            cancelled: AtomicBool::new(false),
            when,
            scheduled: AtomicBool::new(counter.is_some()),
            cancel_counter: counter,
            debug,
            oneshot: new.oneshot,
            invoke: new.invoke,
            private_context,
        })
    }

    /// A plain handle (`call_soon`, `add_reader`).
    #[inline]
    pub fn new_plain(py: Python<'_>, new: NewHandle) -> PyResult<Py<Handle>> {
        let handle = Py::new(py, Self::build(py, new, f64::NAN, None)?)?;
        untrack(handle.bind(py).as_any());
        Ok(handle)
    }

    /// A timer handle, marked as scheduled in the heap that owns `counter`.
    pub fn new_timer(
        py: Python<'_>,
        new: NewHandle,
        when: f64,
        counter: CancelCounter,
    ) -> PyResult<(Py<TimerHandle>, Py<Handle>)> {
        let init = PyClassInitializer::from(Self::build(py, new, when, Some(counter))?)
            .add_subclass(TimerHandle);
        let timer = Bound::new(py, init)?;
        untrack(timer.as_any());
        let base = timer.clone().into_super().unbind();
        Ok((timer.unbind(), base))
    }

    #[inline]
    pub fn is_cancelled(&self) -> bool {
        self.cancelled.load(Ordering::Relaxed)
    }

    /// The deadline given to `call_at`.
    pub fn when(&self) -> f64 {
        self.when
    }

    /// Marks a timer as no longer in the heap (popped as due, or dropped as cancelled).
    pub fn set_unscheduled(&self) {
        self.scheduled.store(false, Ordering::Relaxed);
    }

    pub fn source_traceback(&self) -> Option<&Py<PyAny>> {
        self.debug.as_ref().map(|d| &d.source_traceback)
    }

    /// New references to the callback and arguments, unless the handle was cancelled.
    pub fn payload(&self, py: Python<'_>) -> Option<(Py<PyAny>, Py<PyTuple>)> {
        self.payload
            .with(py, |p| {
                p.as_ref()
                    .map(|p| (p.callback.clone_ref(py), p.args.clone_ref(py)))
            })
            .ok()
            .flatten()
    }

    /// Runs the callback in the handle's context (`Handle._run` without the error reporting,
    /// which the loop does). A one-shot handle gives up its callback and arguments first; a
    /// cancelled handle does nothing. On error, the callback and arguments come back with the
    /// exception, for the message asyncio puts in the exception handler's context.
    /// With `keep`, a one-shot handle keeps them until [`Handle::finish`] (debug mode formats
    /// the handle after the call).
    #[inline(always)]
    pub fn run(&self, py: Python<'_>, keep: bool) -> Result<(), Failure> {
        let payload = if self.oneshot && !keep {
            self.payload
                .with(py, Option::take)
                .ok()
                .flatten()
                .map(|p| (p.callback, p.args))
        } else {
            self.payload(py)
        };
        let Some((callback, args)) = payload else {
            return Ok(());
        };
        let result = match self.invoke {
            Invoke::Python => {
                context::run_in_context(py, &self.context, callback.bind(py), args.bind(py))
            }
            Invoke::Reader(kind) => {
                context::run_native(py, &self.context, || kind.read_ready(callback.bind(py)))
            }
        };
        let Err(err) = result else {
            return Ok(());
        };
        // The exception handler's message names the callback as Python sees it.
        let shown = self.shown_callback(callback.bind(py).clone());
        Err(Failure {
            err,
            callback: shown.map_or(callback, Bound::unbind),
            args,
        })
    }

    /// After `run(py, keep = true)`: a one-shot handle now gives up its callback.
    pub fn finish(&self, py: Python<'_>) {
        if self.oneshot {
            self.release(py);
        }
    }

    /// Releases the callback and arguments without cancelling (the loop closed or dropped).
    pub fn release(&self, py: Python<'_>) {
        // Dropped after the cell is left: releasing the callback may run Python code.
        let cleared = self.payload.with(py, Option::take);
        drop(cleared);
    }

    fn do_cancel(&self, py: Python<'_>, slf: &Bound<'_, PyAny>) -> PyResult<()> {
        if self.cancelled.swap(true, Ordering::Relaxed) {
            return Ok(());
        }
        if self.scheduled.load(Ordering::Relaxed) {
            if let Some(counter) = &self.cancel_counter {
                counter.note_cancelled();
            }
        }
        // As asyncio: in debug mode the repr is kept, taken after the flag is set and before
        // the callback is released, so it reads `<Handle cancelled callback(...) ...>`.
        let kept_repr = if self.debug.is_some() {
            Some(slf.repr().map(|r| r.to_string()))
        } else {
            None
        };
        self.release(py);
        if let (Some(text), Some(debug)) = (kept_repr, &self.debug) {
            let text = text?;
            debug.repr_cache.with(py, |cache| *cache = Some(text))?;
        }
        Ok(())
    }

    /// The callback as Python sees it: a native reader's is its core's `_read_ready`.
    fn shown_callback<'py>(&self, callback: Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>> {
        match self.invoke {
            Invoke::Python => Ok(callback),
            Invoke::Reader(_) => callback.getattr(pyo3::intern!(callback.py(), "_read_ready")),
        }
    }

    /// The parts of asyncio's `Handle._repr_info()`, with `when=` for timers.
    fn repr_info(&self, py: Python<'_>, class_name: &str) -> PyResult<String> {
        if let Some(debug) = &self.debug {
            if let Some(text) = debug.repr_cache.with(py, |cache| cache.clone())? {
                return Ok(text);
            }
        }
        let mut info = vec![class_name.to_owned()];
        if self.is_cancelled() {
            info.push("cancelled".to_owned());
        }
        if !self.when.is_nan() {
            info.push(format!("when={}", PyFloat::new(py, self.when).repr()?));
        }
        if let Some((callback, args)) = self.payload(py) {
            info.push(py_helpers::format_callback_source(
                py,
                &self.shown_callback(callback.into_bound(py))?,
                args.bind(py),
            )?);
        }
        if let Some(tb) = self.source_traceback() {
            if let Ok(frame) = tb.bind(py).get_item(-1) {
                let (file, line): (String, i64) =
                    (frame.get_item(0)?.extract()?, frame.get_item(1)?.extract()?);
                info.push(format!("created at {file}:{line}"));
            }
        }
        Ok(format!("<{}>", info.join(" ")))
    }
}

/// Drops a strong reference at once (the caller holds the GIL), not through PyO3's pool.
fn release_now(obj: Py<PyAny>) {
    // SAFETY: the GIL is held (see `Handle::drop`); `into_ptr` gives up the reference, so this
    // is the only decrement.
    unsafe { pyo3::ffi::Py_DECREF(obj.into_ptr()) };
}

impl Drop for Handle {
    /// Releases the context and any callback left at once. PyO3 would defer these decrements
    /// to its next entry point when the handle is freed by plain Python code (`del handle`),
    /// and a reference held in that pool would keep a cycle through the context from being
    /// collected by a `gc.collect()` made in between.
    fn drop(&mut self) {
        count_live(-1);
        // SAFETY: a `Handle` value is dropped only with the GIL held: by its type's tp_dealloc,
        // or by `Py::new` failing inside a method that holds `py`.
        let py = unsafe { Python::assume_attached() };
        // SAFETY: `drop` runs once, and `context` is not used after this.
        let context = unsafe { ManuallyDrop::take(&mut self.context) };
        if self.private_context {
            context::publish(py, &context);
        }
        release_now(context.into_any());
        if let Some(payload) = self.payload.get_mut().take() {
            release_now(payload.callback);
            release_now(payload.args.into_any());
        }
    }
}

#[pymethods]
impl Handle {
    /// `Handle.cancel()`: the callback will not run; its references are released.
    fn cancel(slf: &Bound<'_, Self>) -> PyResult<()> {
        Self::cancel_py(slf)
    }

    /// `Handle.cancelled()`.
    fn cancelled(&self) -> bool {
        self.is_cancelled()
    }

    /// `Handle.get_context()`.
    fn get_context(&self, py: Python<'_>) -> Py<PyAny> {
        if self.private_context {
            context::publish(py, &self.context);
        }
        self.context.clone_ref(py)
    }

    #[getter]
    fn _callback(&self, py: Python<'_>) -> PyResult<Option<Py<PyAny>>> {
        self.payload(py)
            .map(|(cb, _)| self.shown_callback(cb.into_bound(py)).map(Bound::unbind))
            .transpose()
    }

    #[getter]
    fn _args(&self, py: Python<'_>) -> Option<Py<PyTuple>> {
        self.payload(py).map(|(_, args)| args)
    }

    #[getter]
    fn _cancelled(&self) -> bool {
        self.is_cancelled()
    }

    #[getter]
    fn _context(&self, py: Python<'_>) -> Py<PyAny> {
        self.get_context(py)
    }

    #[getter]
    fn _source_traceback(&self, py: Python<'_>) -> Option<Py<PyAny>> {
        self.source_traceback().map(|tb| tb.clone_ref(py))
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        slf.get().repr_info(slf.py(), "Handle")
    }
}

#[pymethods]
impl TimerHandle {
    /// `TimerHandle.when()`: the absolute deadline on the loop's clock.
    fn when(slf: &Bound<'_, Self>) -> f64 {
        slf.as_super().get().when
    }

    #[getter]
    fn _when(slf: &Bound<'_, Self>) -> f64 {
        slf.as_super().get().when
    }

    #[getter]
    fn _scheduled(slf: &Bound<'_, Self>) -> bool {
        slf.as_super().get().scheduled.load(Ordering::Relaxed)
    }

    fn __repr__(slf: &Bound<'_, Self>) -> PyResult<String> {
        slf.as_super().get().repr_info(slf.py(), "TimerHandle")
    }

    fn __hash__(slf: &Bound<'_, Self>) -> u64 {
        slf.as_super().get().when.to_bits()
    }

    /// Timers compare by deadline, as asyncio's do.
    fn __richcmp__(
        slf: &Bound<'_, Self>,
        other: &Bound<'_, PyAny>,
        op: CompareOp,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let Ok(other) = other.cast::<TimerHandle>() else {
            return Ok(py.NotImplemented());
        };
        let (a, b) = (slf.as_super().get(), other.as_super().get());
        let same = a.when == b.when
            && a.is_cancelled() == b.is_cancelled()
            && match (a.payload(py), b.payload(py)) {
                (Some((ca, aa)), Some((cb, ab))) => {
                    ca.bind(py).eq(cb.bind(py))? && aa.bind(py).eq(ab.bind(py))?
                }
                (None, None) => true,
                _ => false,
            };
        let result = match op {
            CompareOp::Lt => a.when < b.when,
            CompareOp::Le => a.when < b.when || same,
            CompareOp::Gt => a.when > b.when,
            CompareOp::Ge => a.when > b.when || same,
            CompareOp::Eq => same,
            CompareOp::Ne => !same,
        };
        Ok(pyo3::types::PyBool::new(py, result)
            .to_owned()
            .into_any()
            .unbind())
    }
}

impl Handle {
    /// `handle.cancel()` from Rust (replaced or removed readers and writers).
    pub fn cancel_py(slf: &Bound<'_, Handle>) -> PyResult<()> {
        slf.get().do_cancel(slf.py(), slf.as_any())
    }
}
