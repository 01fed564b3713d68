//! Borrowing the bytes of Python objects through the buffer protocol, as `socket.send` (`y*`)
//! and `socket.recv_into` (`w*`) do: any C-contiguous bytes-like object, whatever its item
//! format (`PyBUF_SIMPLE`), so `memoryview(array('i'))` works as it does with asyncio.
//!
//! Invariant: the slice lent to the closure lives exactly as long as the buffer view, which is
//! released when the closure returns; the closure must not run Python code (the exporter could
//! be resized or freed otherwise — `bytearray` refuses to resize while exported, but a closure
//! that calls Python could still drop the last reference to a view's owner).

use pyo3::exceptions::{PyBufferError, PyTypeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// An acquired buffer view, released on drop.
struct View(ffi::Py_buffer);

impl Drop for View {
    fn drop(&mut self) {
        // SAFETY: the view was filled by a successful PyObject_GetBuffer and is released once,
        // here, with the GIL held (views live only inside the functions below, which hold it).
        unsafe { ffi::PyBuffer_Release(&mut self.0) }
    }
}

fn get(obj: &Bound<'_, PyAny>, flags: std::os::raw::c_int) -> PyResult<View> {
    // SAFETY: an all-zero Py_buffer is a valid "empty" value for GetBuffer to fill.
    let mut view: ffi::Py_buffer = unsafe { std::mem::zeroed() };
    // SAFETY: GIL held (we have a bound object); `view` is a live, writable Py_buffer. On
    // failure GetBuffer sets an exception and leaves nothing to release.
    if unsafe { ffi::PyObject_GetBuffer(obj.as_ptr(), &mut view, flags) } != 0 {
        return Err(PyErr::fetch(obj.py()));
    }
    Ok(View(view))
}

/// Runs `f` on the bytes of a bytes-like object (`bytes` without acquiring a view).
pub fn with_readable<R>(obj: &Bound<'_, PyAny>, f: impl FnOnce(&[u8]) -> R) -> PyResult<R> {
    if let Ok(bytes) = obj.cast::<PyBytes>() {
        return Ok(f(bytes.as_bytes()));
    }
    let view = get(obj, ffi::PyBUF_SIMPLE)?;
    let len = usize::try_from(view.0.len).unwrap_or(0);
    let data = if len == 0 {
        &[][..]
    } else {
        // SAFETY: a PyBUF_SIMPLE view is one C-contiguous block of `len` bytes at `buf`, valid
        // until the view is released, which happens after `f` returns.
        unsafe { std::slice::from_raw_parts(view.0.buf as *const u8, len) }
    };
    Ok(f(data))
}

/// Runs `f` on the writable bytes of a buffer (`recv_into`'s target). A read-only object fails
/// with the `TypeError` `socket.recv_into` gives.
pub fn with_writable<R>(obj: &Bound<'_, PyAny>, f: impl FnOnce(&mut [u8]) -> R) -> PyResult<R> {
    let view = get(obj, ffi::PyBUF_WRITABLE).map_err(|err| {
        if err.is_instance_of::<PyBufferError>(obj.py()) {
            let name = obj
                .get_type()
                .name()
                .map(|n| n.to_string())
                .unwrap_or_default();
            PyTypeError::new_err(format!(
                "recv_into() argument 1 must be read-write bytes-like object, not {name}"
            ))
        } else {
            err
        }
    })?;
    let len = usize::try_from(view.0.len).unwrap_or(0);
    let data = if len == 0 {
        &mut [][..]
    } else {
        // SAFETY: a PyBUF_WRITABLE view is one writable C-contiguous block of `len` bytes at
        // `buf`, valid until the view is released after `f` returns; nothing else aliases it
        // while `f` runs, since `f` runs no Python code.
        unsafe { std::slice::from_raw_parts_mut(view.0.buf as *mut u8, len) }
    };
    Ok(f(data))
}
