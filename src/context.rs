//! Running a callback inside its `contextvars.Context`, as `Context.run` does, without the
//! method lookup: `PyContext_Enter`, the call, `PyContext_Exit`.

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyTuple;

/// `contextvars.copy_context()`.
pub fn copy_current(py: Python<'_>) -> PyResult<Py<PyAny>> {
    // SAFETY: called with the GIL held (we have `py`); returns a new reference or NULL with an
    // exception set, which `from_owned_ptr_or_err` turns into `PyErr`.
    unsafe { Bound::from_owned_ptr_or_err(py, ffi::PyContext_CopyCurrent()).map(Bound::unbind) }
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
    // SAFETY: GIL held; `context` is a live object. PyContext_Enter type-checks its argument
    // and returns -1 with an exception set on failure.
    if unsafe { ffi::PyContext_Enter(context.as_ptr()) } != 0 {
        return Err(PyErr::fetch(py));
    }
    let result = if args.is_empty() {
        callback.call0()
    } else {
        callback.call1(args)
    };
    // SAFETY: GIL held; the context was entered just above by this thread and is still alive
    // (we hold a reference), so exiting it cannot fail.
    let _ = unsafe { ffi::PyContext_Exit(context.as_ptr()) };
    result.map(drop)
}
