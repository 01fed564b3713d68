//! `loop.sock_recv`, `sock_recv_into` and `sock_sendall` with their system calls and their
//! readiness callbacks in Rust, mirroring `BaseSelectorEventLoop`'s methods of the same names.
//!
//! The public methods stay coroutines (`python/ferroloop/_loop.py`: users pass them to
//! `create_task`); each awaits what the native `_sock_*_native` method returns:
//! - the result itself when the system call succeeded at once (asyncio's fast path);
//! - a future, when the socket was not ready: the fd gets a reader (or writer) whose callback is
//!   a native [`SockRecv`]/[`SockSendAll`], and the future a done-callback ([`FdDone`]) that
//!   unregisters it — on success, error or cancellation alike, so a cancelled operation leaves
//!   the socket usable and unregistered, as in asyncio;
//! - `NotImplemented` for what the native path does not cover (a subclass of `socket.socket`,
//!   a socket with a timeout, a non-contiguous buffer): the caller then runs asyncio's own code.
//!
//! Invariant: an operation's callback touches the socket only through the descriptor number it
//! started with, and only while `sock.fileno()` still returns that number (a closed socket's
//! number may already belong to another one).

use crate::buffers;
use crate::errors::os_error;
use crate::event_loop::LoopCore;
use crate::handles::{Handle, Invoke};
use crate::transports::{is_retry, MAX_SIZE};
use ferroloop_core::registry::Side;
use ferroloop_core::sys;
use pyo3::exceptions::PyValueError;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PyTuple, PyType};
use std::os::fd::RawFd;

static SOCKET_TYPE: PyOnceLock<Py<PyType>> = PyOnceLock::new();

/// The descriptor of `sock` if the native path applies: an exact `socket.socket` in
/// non-blocking mode (timeout 0). In debug mode a socket with a timeout raises asyncio's
/// `ValueError`; otherwise `None` sends the caller to asyncio's implementation.
fn native_fd(event_loop: &Bound<'_, LoopCore>, sock: &Bound<'_, PyAny>) -> PyResult<Option<RawFd>> {
    let py = sock.py();
    let socket_type = SOCKET_TYPE.get_or_try_init(py, || {
        Ok::<_, PyErr>(
            py.import("socket")?
                .getattr("socket")?
                .cast_into::<PyType>()?
                .unbind(),
        )
    })?;
    if !sock.get_type().is(socket_type.bind(py)) {
        return Ok(None);
    }
    let timeout = sock.call_method0(intern!(py, "gettimeout"))?;
    if !timeout.eq(0.0)? {
        if LoopCore::debug(event_loop)? {
            return Err(PyValueError::new_err("the socket must be non-blocking"));
        }
        return Ok(None);
    }
    Ok(Some(sock.call_method0(intern!(py, "fileno"))?.extract()?))
}

/// Receives up to `n` bytes into a new `bytes` (`sock.recv(n)`).
fn recv_bytes(py: Python<'_>, fd: RawFd, n: usize) -> PyResult<std::io::Result<Py<PyBytes>>> {
    if n <= MAX_SIZE {
        crate::transports::with_read_buffer(py, |buf| {
            sys::recv(fd, &mut buf[..n]).map(|got| PyBytes::new(py, &buf[..got]).unbind())
        })
    } else {
        let mut buf = vec![0u8; n];
        Ok(sys::recv(fd, &mut buf).map(|got| PyBytes::new(py, &buf[..got]).unbind()))
    }
}

/// Registers `op` as the reader or writer of `fd` and arranges for the future to remove it.
fn wait_for(
    event_loop: &Bound<'_, LoopCore>,
    fd: RawFd,
    side: Side,
    future: &Bound<'_, PyAny>,
    op: Bound<'_, PyAny>,
) -> PyResult<()> {
    let py = event_loop.py();
    event_loop.call_method1(intern!(py, "_ensure_fd_no_transport"), (fd,))?;
    let handle = LoopCore::add_fd_callback(
        event_loop,
        fd,
        side,
        &op,
        &PyTuple::empty(py),
        Invoke::Python,
    )?;
    let done = FdDone {
        event_loop: event_loop.clone().unbind(),
        fd,
        side,
        handle,
    };
    future.call_method1(intern!(py, "add_done_callback"), (done,))?;
    Ok(())
}

/// The reader of a pending `sock_recv`/`sock_recv_into` (`_sock_recv`/`_sock_recv_into`).
#[pyclass(frozen, module = "ferroloop._ferroloop")]
pub struct SockRecv {
    future: Py<PyAny>,
    sock: Py<PyAny>,
    fd: RawFd,
    target: RecvTarget,
}

/// Where a receive puts the data: a new `bytes` of at most `n` bytes (`sock_recv`), or the
/// caller's buffer (`sock_recv_into`, which returns the byte count).
enum RecvTarget {
    Bytes(usize),
    Into(Py<PyAny>),
}

impl RecvTarget {
    /// One `recv`: the result `sock_recv`/`sock_recv_into` return, or the OS error.
    fn attempt(&self, py: Python<'_>, fd: RawFd) -> PyResult<std::io::Result<Py<PyAny>>> {
        Ok(match self {
            RecvTarget::Bytes(n) => recv_bytes(py, fd, *n)?.map(Py::into_any),
            RecvTarget::Into(buf) => buffers::with_writable(buf.bind(py), |b| sys::recv(fd, b))?
                .map(|n| {
                    n.into_pyobject(py)
                        .map(|n| n.into_any().unbind())
                        .unwrap_or_else(|e| match e {})
                }),
        })
    }
}

/// `sock_recv`/`sock_recv_into`: the result at once, or a future and a native reader.
fn recv_native(
    slf: &Bound<'_, LoopCore>,
    sock: &Bound<'_, PyAny>,
    target: RecvTarget,
) -> PyResult<Py<PyAny>> {
    let py = slf.py();
    let Some(fd) = native_fd(slf, sock)? else {
        return Ok(py.NotImplemented());
    };
    match target.attempt(py, fd)? {
        Ok(result) => return Ok(result),
        Err(err) if is_retry(&err) => {}
        Err(err) => return Err(os_error(err)),
    }
    let future = slf.call_method0(intern!(py, "create_future"))?;
    let op = SockRecv {
        future: future.clone().unbind(),
        sock: sock.clone().unbind(),
        fd,
        target,
    };
    wait_for(slf, fd, Side::Read, &future, Bound::new(py, op)?.into_any())?;
    Ok(future.unbind())
}

/// The writer of a pending `sock_sendall` (`_sock_sendall`).
#[pyclass(frozen, module = "ferroloop._ferroloop")]
pub struct SockSendAll {
    future: Py<PyAny>,
    sock: Py<PyAny>,
    fd: RawFd,
    /// `memoryview(data)`, as asyncio keeps it (a `bytearray` cannot be resized meanwhile).
    view: Py<PyAny>,
    sent: crate::gil_cell::GilCell<usize>,
}

/// The future's done-callback: unregisters the operation's reader or writer unless it was
/// replaced (`_sock_read_done`/`_sock_write_done`).
#[pyclass(frozen, module = "ferroloop._ferroloop")]
pub struct FdDone {
    event_loop: Py<LoopCore>,
    fd: RawFd,
    side: Side,
    handle: Py<Handle>,
}

/// Whether the operation is over: its future is done, or its socket no longer has `fd`.
fn finished(future: &Bound<'_, PyAny>, sock: &Bound<'_, PyAny>, fd: RawFd) -> PyResult<bool> {
    let py = future.py();
    if future.call_method0(intern!(py, "done"))?.is_truthy()? {
        return Ok(true);
    }
    let current: RawFd = sock.call_method0(intern!(py, "fileno"))?.extract()?;
    if current != fd {
        // Closed (or detached) under the operation: fail it as `sock.recv` would.
        let err = os_error(std::io::Error::from_raw_os_error(sys::EBADF));
        future.call_method1(intern!(py, "set_exception"), (err.into_value(py),))?;
        return Ok(true);
    }
    Ok(false)
}

fn settle(future: &Bound<'_, PyAny>, result: PyResult<Py<PyAny>>) -> PyResult<()> {
    let py = future.py();
    match result {
        Ok(value) => future.call_method1(intern!(py, "set_result"), (value,))?,
        Err(err) => future.call_method1(intern!(py, "set_exception"), (err.into_value(py),))?,
    };
    Ok(())
}

#[pymethods]
impl SockRecv {
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        let future = self.future.bind(py);
        if finished(future, self.sock.bind(py), self.fd)? {
            return Ok(());
        }
        match self.target.attempt(py, self.fd)? {
            Err(err) if is_retry(&err) => Ok(()),
            Err(err) => settle(future, Err(os_error(err))),
            Ok(value) => settle(future, Ok(value)),
        }
    }
}

#[pymethods]
impl SockSendAll {
    fn __call__(&self, py: Python<'_>) -> PyResult<()> {
        let future = self.future.bind(py);
        if finished(future, self.sock.bind(py), self.fd)? {
            return Ok(());
        }
        let start = self.sent.with(py, |sent| *sent)?;
        let outcome = buffers::with_readable(self.view.bind(py), |bytes| {
            sys::send(self.fd, &bytes[start..]).map(|n| (start + n, bytes.len()))
        })?;
        match outcome {
            Err(err) if is_retry(&err) => Ok(()),
            Err(err) => settle(future, Err(os_error(err))),
            Ok((sent, total)) if sent == total => settle(future, Ok(py.None())),
            Ok((sent, _)) => self.sent.with(py, |s| *s = sent),
        }
    }
}

#[pymethods]
impl FdDone {
    fn __call__(&self, py: Python<'_>, _future: &Bound<'_, PyAny>) -> PyResult<()> {
        if !self.handle.get().is_cancelled() {
            LoopCore::remove_fd(self.event_loop.bind(py), self.fd, self.side)?;
        }
        Ok(())
    }
}

/// The native halves of the `sock_*` coroutines (see the module documentation), called by
/// `LoopCore`'s `_sock_*_native` methods.
impl LoopCore {
    /// `sock_recv(sock, n)`: `bytes`, a future, or `NotImplemented`.
    pub fn sock_recv_native(
        slf: &Bound<'_, Self>,
        sock: &Bound<'_, PyAny>,
        n: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        match n.extract::<usize>() {
            Ok(n) => recv_native(slf, sock, RecvTarget::Bytes(n)),
            Err(_) => Ok(slf.py().NotImplemented()),
        }
    }

    /// `sock_recv_into(sock, buf)`: the byte count, a future, or `NotImplemented`.
    pub fn sock_recv_into_native(
        slf: &Bound<'_, Self>,
        sock: &Bound<'_, PyAny>,
        buf: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        recv_native(slf, sock, RecvTarget::Into(buf.clone().unbind()))
    }

    /// `sock_sendall(sock, data)`: `None` when all was sent at once, a future, or
    /// `NotImplemented`.
    pub fn sock_sendall_native(
        slf: &Bound<'_, Self>,
        sock: &Bound<'_, PyAny>,
        data: &Bound<'_, PyAny>,
    ) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        let Some(fd) = native_fd(slf, sock)? else {
            return Ok(py.NotImplemented());
        };
        let Ok(outcome) = buffers::with_readable(data, |bytes| {
            let sent = match sys::send(fd, bytes) {
                Ok(n) => n,
                Err(err) if is_retry(&err) => 0,
                Err(err) => return Err(err),
            };
            Ok((sent, bytes.len()))
        }) else {
            // Not a contiguous bytes-like object: asyncio's code gives its exact error.
            return Ok(py.NotImplemented());
        };
        let (sent, total) = outcome.map_err(os_error)?;
        if sent == total {
            return Ok(py.None());
        }
        let future = slf.call_method0(intern!(py, "create_future"))?;
        let view = pyo3::types::PyMemoryView::from(data)?;
        let op = SockSendAll {
            future: future.clone().unbind(),
            sock: sock.clone().unbind(),
            fd,
            view: view.into_any().unbind(),
            sent: crate::gil_cell::GilCell::new(sent),
        };
        wait_for(
            slf,
            fd,
            Side::Write,
            &future,
            Bound::new(py, op)?.into_any(),
        )?;
        Ok(future.unbind())
    }
}
