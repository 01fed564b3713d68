//! Raw `METH_FASTCALL | METH_KEYWORDS` entry points for the scheduling methods.
//!
//! `call_soon` is the most-called method of an event loop: every task step and every future
//! callback goes through it, with `context=` passed as a keyword by CPython's C `Task`/`Future`.
//! PyO3's generic argument extraction for `(callback, *args, context=None)` costs about as much
//! as the rest of `call_soon` together (measured with callgrind: ~290 of ~760 instructions per
//! call). These entry points parse the vectorcall arguments directly and then call the same
//! Rust implementation as before; they are installed on `LoopCore` as method descriptors at
//! module initialisation.
//!
//! Invariants:
//! - the argument rules are Python's for `def call_soon(self, callback, *args, context=None)`
//!   (fixed parameters may also come as keywords); the `TypeError` messages are the ones
//!   asyncio's `BaseEventLoop` methods give, qualified name included;
//! - no panic crosses the C boundary (`catch_unwind`), and every error is raised as a Python
//!   exception with NULL returned.

use crate::event_loop::LoopCore;
use pyo3::exceptions::{PySystemError, PyTypeError};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple, PyType};
use std::ffi::CStr;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicPtr, Ordering};

/// At most this many parameters come before `*args`.
pub const MAX_FIXED: usize = 2;

/// The parameters before `*args`; the first `fixed.len()` of the entry are always `Some`.
/// Borrowed from the caller's argument array for the call (no reference counting).
pub type Fixed<'a, 'py> = [Option<Borrowed<'a, 'py, PyAny>>; MAX_FIXED];

/// The Rust implementation behind an entry: `(loop, fixed args, *args, context)`.
type Impl = for<'a, 'py> fn(
    &Bound<'py, LoopCore>,
    &Fixed<'a, 'py>,
    &Bound<'py, PyTuple>,
    Option<Py<PyAny>>,
) -> PyResult<Py<PyAny>>;

/// Fixed parameter `i`, which the parser guarantees is present.
#[inline]
pub fn fixed_arg<'b, 'py>(fixed: &'b Fixed<'_, 'py>, i: usize) -> PyResult<&'b Bound<'py, PyAny>> {
    match fixed.get(i) {
        Some(Some(arg)) => Ok(arg),
        _ => Err(PySystemError::new_err("ferroloop: missing fixed argument")),
    }
}

/// One method: its name, docstring, fixed parameters and implementation.
pub struct Entry {
    name: &'static CStr,
    doc: &'static CStr,
    fixed: &'static [&'static str],
    run: Impl,
    trampoline: ffi::PyCFunctionFastWithKeywords,
}

macro_rules! entry {
    ($ident:ident, $tramp:ident, $name:literal, $doc:literal, [$($fixed:literal),*], $run:path) => {
        unsafe extern "C" fn $tramp(
            slf: *mut ffi::PyObject,
            args: *const *mut ffi::PyObject,
            nargsf: ffi::Py_ssize_t,
            kwnames: *mut ffi::PyObject,
        ) -> *mut ffi::PyObject {
            // SAFETY: CPython calls this with the GIL held and the vectorcall arguments laid out
            // as `dispatch` documents.
            unsafe { dispatch(&$ident, slf, args, nargsf, kwnames) }
        }
        static $ident: Entry = Entry {
            name: $name,
            doc: $doc,
            fixed: &[$($fixed),*],
            run: $run,
            trampoline: $tramp,
        };
    };
}

entry!(CALL_SOON, call_soon_fast, c"call_soon",
    c"call_soon($self, callback, *args, context=None)\n--\n\nArrange for a callback to be called as soon as possible.",
    ["callback"], LoopCore::call_soon_impl);
entry!(CALL_SOON_THREADSAFE, call_soon_threadsafe_fast, c"call_soon_threadsafe",
    c"call_soon_threadsafe($self, callback, *args, context=None)\n--\n\nLike call_soon(), but thread-safe: wakes the loop.",
    ["callback"], LoopCore::call_soon_threadsafe_impl);
entry!(CALL_LATER, call_later_fast, c"call_later",
    c"call_later($self, delay, callback, *args, context=None)\n--\n\nArrange for a callback to be called after `delay` seconds.",
    ["delay", "callback"], LoopCore::call_later_impl);
entry!(CALL_AT, call_at_fast, c"call_at",
    c"call_at($self, when, callback, *args, context=None)\n--\n\nLike call_later(), but uses an absolute time (loop.time()).",
    ["when", "callback"], LoopCore::call_at_impl);

static ENTRIES: [&Entry; 4] = [&CALL_SOON, &CALL_SOON_THREADSAFE, &CALL_LATER, &CALL_AT];

/// Installs the entry points on `LoopCore` as method descriptors.
pub fn install(py: Python<'_>, ty: &Bound<'_, PyType>) -> PyResult<()> {
    for entry in ENTRIES {
        let def = Box::leak(Box::new(ffi::PyMethodDef {
            ml_name: entry.name.as_ptr(),
            ml_meth: ffi::PyMethodDefPointer {
                PyCFunctionFastWithKeywords: entry.trampoline,
            },
            ml_flags: ffi::METH_FASTCALL | ffi::METH_KEYWORDS,
            ml_doc: entry.doc.as_ptr(),
        }));
        // SAFETY: `ty` is a live type object and `def` is leaked, so it lives as long as the
        // descriptor (CPython keeps a pointer to it); the result is a new reference or NULL.
        let descr = unsafe {
            Bound::from_owned_ptr_or_err(py, ffi::PyDescr_NewMethod(ty.as_type_ptr(), def))?
        };
        ty.setattr(entry.name.to_str().unwrap_or_default(), descr)?;
    }
    Ok(())
}

/// Runs `entry` for one call; converts errors and panics into a raised exception.
///
/// # Safety
/// The GIL must be held; `slf` must be a live object; `args` must point to
/// `PyVectorcall_NARGS(nargsf)` positional arguments followed by one value per name in
/// `kwnames` (a tuple of strings, or NULL), all borrowed references valid for the call.
unsafe fn dispatch(
    entry: &Entry,
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> *mut ffi::PyObject {
    // SAFETY: the caller guarantees the GIL is held.
    let py = unsafe { Python::assume_attached() };
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        // SAFETY: forwarded from this function's contract.
        unsafe { parse_and_run(py, entry, slf, args, nargsf, kwnames) }
    }));
    let result = outcome.unwrap_or_else(|_| {
        Err(PySystemError::new_err(format!(
            "ferroloop: internal panic in {}()",
            entry.name.to_string_lossy()
        )))
    });
    match result {
        Ok(value) => value.into_ptr(),
        Err(err) => {
            err.restore(py);
            std::ptr::null_mut()
        }
    }
}

/// Borrowed views of the vectorcall arguments.
///
/// # Safety
/// As for [`dispatch`].
unsafe fn arg_slices<'a>(
    args: *const *mut ffi::PyObject,
    nargs: usize,
    nkw: usize,
) -> (&'a [*mut ffi::PyObject], &'a [*mut ffi::PyObject]) {
    if nargs + nkw == 0 || args.is_null() {
        return (&[], &[]);
    }
    // SAFETY: `args` points to `nargs + nkw` valid pointers (the caller's contract).
    let all = unsafe { std::slice::from_raw_parts(args, nargs + nkw) };
    all.split_at(nargs)
}

/// # Safety
/// As for [`dispatch`].
unsafe fn parse_and_run(
    py: Python<'_>,
    entry: &Entry,
    slf: *mut ffi::PyObject,
    args: *const *mut ffi::PyObject,
    nargsf: ffi::Py_ssize_t,
    kwnames: *mut ffi::PyObject,
) -> PyResult<Py<PyAny>> {
    // SAFETY: `slf` is a live borrowed reference for the call (the caller's contract), and the
    // method descriptor these entries are installed as checks that it is an instance of
    // `LoopCore` (a subclass included) before calling.
    let slf = unsafe { Borrowed::from_ptr(py, slf).cast_unchecked::<LoopCore>() };
    let slf: &Bound<'_, LoopCore> = &slf;
    // SAFETY: PyVectorcall_NARGS only masks a flag bit off an integer.
    let nargs = unsafe { ffi::PyVectorcall_NARGS(nargsf as usize) } as usize;
    let nkw = if kwnames.is_null() {
        0
    } else {
        // SAFETY: a non-NULL `kwnames` is a live tuple of strings (the caller's contract).
        unsafe { ffi::PyTuple_GET_SIZE(kwnames) as usize }
    };
    // SAFETY: forwarded from this function's contract.
    let (positional, kwvalues) = unsafe { arg_slices(args, nargs, nkw) };
    // SAFETY: every pointer in the slices is a live borrowed reference for this call.
    let borrow = |p: *mut ffi::PyObject| unsafe { Borrowed::from_ptr(py, p) };

    let nfixed = entry.fixed.len();
    let mut fixed: Fixed<'_, '_> = [None, None];
    for (slot, &p) in fixed.iter_mut().zip(positional.iter().take(nfixed)) {
        *slot = Some(borrow(p));
    }
    let mut context = None;
    let context_name = intern!(py, "context").as_ptr();
    for (i, &value) in kwvalues.iter().enumerate() {
        // SAFETY: `i < nkw`, the size of the live `kwnames` tuple; the item is borrowed.
        let key = unsafe { ffi::PyTuple_GET_ITEM(kwnames, i as ffi::Py_ssize_t) };
        // Code objects pass interned names (identity); C `Task` passes its own "context"
        // string. Keyword names are always `str` (CPython checks that before the call).
        let is_context =
            key == context_name || key == FOREIGN_CONTEXT_NAME.load(Ordering::Relaxed) || {
                // SAFETY: `key` is a live `str`; the C string is NUL-terminated ASCII.
                let equal =
                    unsafe { ffi::PyUnicode_CompareWithASCIIString(key, c"context".as_ptr()) == 0 };
                if equal {
                    // SAFETY: the GIL is held and `key` is a live `str` equal to "context".
                    unsafe { remember_foreign_context_name(key) };
                }
                equal
            };
        if is_context {
            context = Some(borrow(value).to_owned().unbind());
            continue;
        }
        let key = borrow(key).to_owned().cast_into::<PyString>()?;
        let key = key.to_str()?;
        match entry.fixed.iter().position(|f| *f == key) {
            Some(slot) if fixed[slot].is_none() => fixed[slot] = Some(borrow(value)),
            Some(_) => {
                return Err(PyTypeError::new_err(format!(
                    "BaseEventLoop.{}() got multiple values for argument '{key}'",
                    entry.name.to_string_lossy()
                )))
            }
            None => {
                return Err(PyTypeError::new_err(format!(
                    "BaseEventLoop.{}() got an unexpected keyword argument '{key}'",
                    entry.name.to_string_lossy()
                )))
            }
        }
    }
    if fixed[..nfixed].iter().any(Option::is_none) {
        return Err(missing_arguments(entry, &fixed));
    }
    let extra = if positional.len() > nfixed {
        PyTuple::new(py, positional[nfixed..].iter().map(|&p| borrow(p)))?
    } else {
        PyTuple::empty(py)
    };
    (entry.run)(slf, &fixed, &extra, context)
}

/// The `"context"` keyword name of CPython's C `Task` and `Future`: a string they build once
/// (not the interned one), passed at every task step and future callback. Remembered the first
/// time it is seen, so later calls recognise it by identity instead of comparing characters.
/// Holds a strong reference (never released), so the address cannot be reused by another object.
static FOREIGN_CONTEXT_NAME: AtomicPtr<ffi::PyObject> = AtomicPtr::new(std::ptr::null_mut());

/// # Safety
/// The GIL must be held and `key` must be a live `str` equal to `"context"`.
unsafe fn remember_foreign_context_name(key: *mut ffi::PyObject) {
    if FOREIGN_CONTEXT_NAME.load(Ordering::Relaxed).is_null() {
        // SAFETY: `key` is live and the GIL is held (this function's contract); the reference
        // taken here is the one `FOREIGN_CONTEXT_NAME` keeps.
        unsafe { ffi::Py_IncRef(key) };
        FOREIGN_CONTEXT_NAME.store(key, Ordering::Relaxed);
    }
}

/// Python's `TypeError` for missing positional arguments.
fn missing_arguments(entry: &Entry, fixed: &Fixed<'_, '_>) -> PyErr {
    let missing: Vec<String> = entry
        .fixed
        .iter()
        .zip(fixed)
        .filter(|(_, v)| v.is_none())
        .map(|(f, _)| format!("'{f}'"))
        .collect();
    let plural = if missing.len() == 1 { "" } else { "s" };
    PyTypeError::new_err(format!(
        "BaseEventLoop.{}() missing {} required positional argument{plural}: {}",
        entry.name.to_string_lossy(),
        missing.len(),
        missing.join(" and ")
    ))
}
