//! Contexts of handles: the copy a handle takes when it is scheduled, and running a callback
//! inside it as `Context.run` does, without the method lookup (`PyContext_Enter`, the call,
//! `PyContext_Exit`).
//!
//! A copy made for a handle ([`copy_current_private`]) is taken out of the cyclic GC while only
//! that handle can reach it (for `call_soon`/`call_later` only once many callbacks are pending,
//! see `UNTRACK_BACKLOG` in `event_loop.rs`; always for readers, which live as long as their
//! connection). Every scheduled callback copies a context, and thousands of pending
//! handles (a producer thread ahead of the loop, far-future timers) would otherwise be promoted
//! through the GC's generations and traversed by every full collection: about half the CPU time
//! of a `call_soon_threadsafe` benchmark went there.
//!
//! Invariant: such a copy is untracked only while the handle is its sole owner that Python code
//! can reach. [`publish`] re-tracks it before it is handed out (`get_context`) and before the
//! handle releases it, so any reference cycle it later takes part in is visible to the GC. While
//! untracked it is reachable from a pending handle (so alive anyway); the only way code running
//! inside it can reference it is a `ContextVar.set` token, and such a cycle is collected once the
//! handle lets go. Contexts passed in by the caller (`context=`) are never untracked.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

/// `contextvars.copy_context()`.
pub fn copy_current(py: Python<'_>) -> PyResult<Py<PyAny>> {
    // SAFETY: called with the GIL held (we have `py`); returns a new reference or NULL with an
    // exception set, which `from_owned_ptr_or_err` turns into `PyErr`.
    unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyContext_CopyCurrent()).map(Bound::unbind) }
}

/// `contextvars.copy_context()`, untracked by the GC (see the module's invariant: the caller must
/// [`publish`] it before sharing or releasing it).
pub fn copy_current_private(py: Python<'_>) -> PyResult<Py<PyAny>> {
    let copy = copy_current(py)?;
    // SAFETY: GIL held; a Context is a GC type, freshly created and tracked; untracking a tracked
    // object is always allowed.
    unsafe { ffi::PyObject_GC_UnTrack(copy.as_ptr().cast()) };
    Ok(copy)
}

/// Puts `context` back under the GC if [`copy_current_private`] took it out; a no-op otherwise.
pub fn publish(py: Python<'_>, context: &Py<PyAny>) {
    let _ = py;
    let ptr = context.as_ptr();
    // SAFETY: GIL held (we have `py`); `context` is a live GC object (a Context, or an object of
    // the caller's that is tracked already), and tracking is done only when it is untracked,
    // which is what PyObject_GC_Track requires.
    unsafe {
        if ffi::PyObject_GC_IsTracked(ptr) == 0 {
            ffi::PyObject_GC_Track(ptr.cast());
        }
    }
}

/// `context.run(callback, *args)`, discarding the result.
///
/// Fails with `TypeError` if `context` is not a `contextvars.Context`, and with `RuntimeError`
/// if it is already entered, exactly as `Context.run` does.
pub fn run_in_context(
    py: Python<'_>,
    context: &Py<PyAny>,
    callback: &Bound<'_, PyAny>,
    args: &Bound<'_, PyTuple>,
) -> PyResult<()> {
    run_native(py, context, || {
        let result = if args.is_empty() {
            callback.call0()
        } else {
            callback.call1(args)
        };
        result.map(drop)
    })
}

/// Runs `f` inside `context`: `PyContext_Enter`, `f`, `PyContext_Exit` (a Python callback, or
/// a native one such as a transport's reader).
pub fn run_native(
    py: Python<'_>,
    context: &Py<PyAny>,
    f: impl FnOnce() -> PyResult<()>,
) -> PyResult<()> {
    // SAFETY: GIL held; `context` is a live object. PyContext_Enter type-checks its argument
    // and returns -1 with an exception set on failure.
    if unsafe { ffi::PyContext_Enter(context.as_ptr()) } != 0 {
        return Err(PyErr::fetch(py));
    }
    let result = f();
    // SAFETY: GIL held; the context was entered just above by this thread and is still alive
    // (we hold a reference), so exiting it cannot fail.
    let _ = unsafe { ffi::PyContext_Exit(context.as_ptr()) };
    result
}
