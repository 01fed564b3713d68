//! The one place where Rust errors become Python exceptions, with asyncio's exact messages.

use pyo3::exceptions::{PyOSError, PyRuntimeError};
use pyo3::PyErr;
use std::io;

/// `RuntimeError('Event loop is closed')`, as `BaseEventLoop._check_closed` raises it.
pub fn loop_closed() -> PyErr {
    PyRuntimeError::new_err("Event loop is closed")
}

/// `OSError(errno, strerror)`: calling `OSError` with both arguments lets CPython pick the
/// subclass (`FileNotFoundError`, `PermissionError`, …) and sets `.errno`, as the `select` and
/// `os` modules do.
pub fn os_error(err: io::Error) -> PyErr {
    match err.raw_os_error() {
        Some(errno) => PyOSError::new_err((errno, strerror(&err))),
        None => PyOSError::new_err(err.to_string()),
    }
}

/// The C library's message for an OS error, without Rust's " (os error N)" suffix.
fn strerror(err: &io::Error) -> String {
    let text = err.to_string();
    match text.rfind(" (os error ") {
        Some(cut) => text[..cut].to_owned(),
        None => text,
    }
}
