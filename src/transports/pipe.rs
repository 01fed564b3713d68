//! Pipe reads for asyncio's Unix pipe transports.
//!
//! `os.read(fd, 256 KiB)`, as `_UnixReadPipeTransport` calls it, allocates a 256 KiB `bytes`
//! and shrinks it to what was read: above glibc's mmap threshold, so every read maps and unmaps
//! fresh pages (measured: page faults and zeroing were a third of the CPU of piping data through
//! `cat`). [`read_pipe`] reads into the receive buffer the transports share and copies only what
//! arrived. `ferroloop._transports.ReadPipeTransport` is asyncio's transport with this read.

use crate::errors::os_error;
use crate::transports::{with_read_buffer, MAX_SIZE};
use ferroloop_core::sys;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::os::fd::RawFd;

/// `os.read(fd, n)` through the shared receive buffer: the same `bytes`, the same `OSError`s
/// (`BlockingIOError` when nothing is there).
#[pyfunction]
pub fn read_pipe(py: Python<'_>, fd: RawFd, n: usize) -> PyResult<Py<PyBytes>> {
    if n > MAX_SIZE {
        let mut buf = vec![0u8; n];
        let got = sys::read(fd, &mut buf).map_err(os_error)?;
        return Ok(PyBytes::new(py, &buf[..got]).unbind());
    }
    with_read_buffer(py, |buf| {
        sys::read(fd, &mut buf[..n]).map(|got| PyBytes::new(py, &buf[..got]).unbind())
    })?
    .map_err(os_error)
}
