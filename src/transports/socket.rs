//! `SocketTransportCore`: the native half of ferroloop's stream-socket transport (TCP and Unix),
//! mirroring `asyncio.selector_events._SelectorSocketTransport` method for method. Users hold
//! the Python `ferroloop._transports.SocketTransport`, a real `asyncio.Transport` (and
//! `_FlowControlMixin`) whose methods forward here — `write` is its core's bound method itself —
//! and which adds construction, `__repr__`, `__del__` and `_fatal_error`. The core keeps a
//! reference to that wrapper (`transport`) to hand it to the protocol and the exception handler;
//! the reference, like asyncio's `_protocol`, is dropped when `connection_lost` has run.
//!
//! The data path is native: the loop's reader handle calls [`SocketTransportCore::_read_ready`],
//! which `recv`s and calls `protocol.data_received(bytes)` (or `get_buffer`/`buffer_updated`
//! for a `BufferedProtocol`, receiving straight into the protocol's buffer); `write()` sends at
//! once when nothing is buffered and buffers the rest in a [`WriteBuffer`], which the writer
//! handle flushes with gathered sends.
//!
//! Invariants (asyncio's):
//! - a writer is registered exactly while the buffer holds bytes and the connection lives;
//! - `conn_lost` becomes non-zero when `connection_lost` is scheduled, which happens once;
//! - bytes accepted by `write()` leave the buffer only by being sent, or all at once when the
//!   connection is lost (`abort()`, a fatal error);
//! - no state borrow is held across a call into Python: values are cloned out, the protocol is
//!   called, then the state is entered again.

use super::common::{self, Common, Core};
use super::ReaderKind;
use crate::buffers;
use crate::errors::os_error;
use crate::gil_cell::GilCell;
use crate::py_helpers;
use crate::transports::{self, is_retry, recycled_bytes, LOG_THRESHOLD_FOR_CONNLOST_WRITES};
use ferroloop_core::registry::Side;
use ferroloop_core::sys;
use ferroloop_core::transports::WriteBuffer;
use pyo3::exceptions::{PyConnectionError, PyRuntimeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use pyo3::{PyTraverseError, PyVisit};
use std::os::fd::RawFd;

/// The stream transport's state: `_SelectorSocketTransport`'s attributes.
pub struct State {
    common: Common,
    buffer: WriteBuffer,
    eof: bool,
    empty_waiter: Option<Py<PyAny>>,
}

/// How `send_or_buffer` left a write.
enum Sent {
    /// All of it went out.
    All,
    /// Appended to what was already buffered.
    AddedToBuffer,
    /// Part or none went out; the rest is the first buffered data (the writer is needed).
    StartedBuffer,
}

/// The native core of `ferroloop._transports.SocketTransport`.
#[pyclass(frozen, module = "ferroloop._ferroloop")]
pub struct SocketTransportCore {
    fd: RawFd,
    st: GilCell<State>,
}

impl Core for SocketTransportCore {
    type State = State;
    const READER: ReaderKind = ReaderKind::Socket;

    fn fd(&self) -> RawFd {
        self.fd
    }

    fn cell(&self) -> &GilCell<State> {
        &self.st
    }

    fn common(st: &mut State) -> &mut Common {
        &mut st.common
    }

    fn buffered(st: &State) -> usize {
        st.buffer.len()
    }

    type Cleared = ();

    fn clear_buffer(st: &mut State) {
        st.buffer.clear();
    }

    /// `_SelectorSocketTransport._call_connection_lost`: a pending `sendfile` fails.
    fn after_connection_lost(slf: &Bound<'_, Self>) -> PyResult<()> {
        let py = slf.py();
        let waiter = common::with(slf, |s| s.empty_waiter.as_ref().map(|w| w.clone_ref(py)))?;
        if let Some(waiter) = waiter {
            let err = PyConnectionError::new_err("Connection is closed by peer");
            waiter.call_method1(py, intern!(py, "set_exception"), (err.into_value(py),))?;
        }
        Ok(())
    }
}

type Slf<'a, 'py> = &'a Bound<'py, SocketTransportCore>;

impl SocketTransportCore {
    fn with<R>(slf: Slf<'_, '_>, f: impl FnOnce(&mut State) -> R) -> PyResult<R> {
        common::with(slf, f)
    }

    /// A protocol call: fatal error on failure, `None` returned then.
    fn call_protocol<'py>(
        slf: Slf<'_, 'py>,
        protocol: &Bound<'py, PyAny>,
        call: impl FnOnce(&Bound<'py, PyAny>) -> PyResult<Bound<'py, PyAny>>,
        message: &str,
    ) -> PyResult<Option<Bound<'py, PyAny>>> {
        match call(protocol) {
            Ok(value) => Ok(Some(value)),
            Err(err) => common::fatal(slf, err, message).map(|()| None),
        }
    }

    fn read_data_received(slf: Slf<'_, '_>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let fd = slf.get().fd;
        let received = recycled_bytes::receive(py, |bufs| sys::recv_vectored(fd, bufs))?;
        let data = match received {
            Ok(data) => data,
            Err(err) if is_retry(&err) => return Ok(()),
            Err(err) => {
                return common::fatal(slf, os_error(err), "Fatal read error on socket transport")
            }
        };
        if data.bytes.as_bytes().is_empty() {
            return Self::read_eof(slf, protocol);
        }
        Self::call_protocol(
            slf,
            protocol,
            |p| p.call_method1(intern!(py, "data_received"), (&data.bytes,)),
            "Fatal error: protocol.data_received() call failed.",
        )?;
        recycled_bytes::recycle(py, data)
    }

    fn read_get_buffer(slf: Slf<'_, '_>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let buf = Self::call_protocol(
            slf,
            protocol,
            |p| {
                let buf = p.call_method1(intern!(py, "get_buffer"), (-1,))?;
                if buf.len()? == 0 {
                    return Err(PyRuntimeError::new_err(
                        "get_buffer() returned an empty buffer",
                    ));
                }
                Ok(buf)
            },
            "Fatal error: protocol.get_buffer() call failed.",
        )?;
        let Some(buf) = buf else { return Ok(()) };
        let fd = slf.get().fd;
        let received = match buffers::with_writable(&buf, |bytes| sys::recv(fd, bytes)) {
            Ok(received) => received,
            Err(err) => return common::fatal(slf, err, "Fatal read error on socket transport"),
        };
        let n = match received {
            Ok(n) => n,
            Err(err) if is_retry(&err) => return Ok(()),
            Err(err) => {
                return common::fatal(slf, os_error(err), "Fatal read error on socket transport")
            }
        };
        if n == 0 {
            return Self::read_eof(slf, protocol);
        }
        Self::call_protocol(
            slf,
            protocol,
            |p| p.call_method1(intern!(py, "buffer_updated"), (n,)),
            "Fatal error: protocol.buffer_updated() call failed.",
        )
        .map(drop)
    }

    /// `_read_ready__on_eof`.
    fn read_eof(slf: Slf<'_, '_>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        common::debug_log(slf, "%r received EOF")?;
        let keep_open = Self::call_protocol(
            slf,
            protocol,
            |p| p.call_method0(intern!(py, "eof_received")),
            "Fatal error: protocol.eof_received() call failed.",
        )?;
        let Some(keep_open) = keep_open else {
            return Ok(());
        };
        if keep_open.is_truthy()? {
            common::remove(slf, Side::Read)
        } else {
            common::close(slf)
        }
    }

    /// The write path after the checks: send now if nothing is buffered, buffer the rest.
    fn write_bytes(slf: Slf<'_, '_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        match buffers::with_readable(data, |bytes| Self::send_or_buffer(slf, bytes)) {
            Ok(outcome) => Self::after_send(slf, outcome?),
            // A non-contiguous memoryview: asyncio's bytearray.extend() takes it while data is
            // buffered; `socket.send` refuses it otherwise.
            Err(err) => {
                if !Self::with(slf, |s| !s.buffer.is_empty())? {
                    return common::fatal(slf, err, "Fatal write error on socket transport");
                }
                let copy = data.call_method0(intern!(slf.py(), "tobytes"))?;
                let copy = copy.cast::<PyBytes>()?;
                Self::with(slf, |s| s.buffer.push(copy.as_bytes()))?;
                common::maybe_pause_protocol(slf)
            }
        }
    }

    /// `write` of bytes ferroloop holds itself (the records of a TLS connection, see
    /// `tls::tls_flush`): `write`'s checks, then the same path as `write_bytes`.
    pub(crate) fn write_slice(slf: Slf<'_, '_>, bytes: &[u8]) -> PyResult<()> {
        if !Self::write_allowed(slf, || Ok(bytes.is_empty()))? {
            return Ok(());
        }
        let outcome = Self::send_or_buffer(slf, bytes)?;
        Self::after_send(slf, outcome)
    }

    /// The send-or-buffer step, pure Rust (it runs while a buffer view is held): sends at once
    /// if nothing is buffered (asyncio's optimization), buffers what is not sent.
    fn send_or_buffer(slf: Slf<'_, '_>, bytes: &[u8]) -> PyResult<Result<Sent, std::io::Error>> {
        let fd = slf.get().fd;
        if Self::with(slf, |s| !s.buffer.is_empty())? {
            Self::with(slf, |s| s.buffer.push(bytes))?;
            return Ok(Ok(Sent::AddedToBuffer));
        }
        let rest = match sys::send(fd, bytes) {
            Ok(n) if n == bytes.len() => return Ok(Ok(Sent::All)),
            Ok(n) => &bytes[n..],
            Err(err) if is_retry(&err) => bytes,
            Err(err) => return Ok(Err(err)),
        };
        Self::with(slf, |s| s.buffer.push(rest))?;
        Ok(Ok(Sent::StartedBuffer))
    }

    /// The Python half of a write: the writer, flow control, or the fatal error.
    fn after_send(slf: Slf<'_, '_>, outcome: Result<Sent, std::io::Error>) -> PyResult<()> {
        match outcome {
            Ok(Sent::All) => Ok(()),
            Ok(Sent::AddedToBuffer) => common::maybe_pause_protocol(slf),
            Ok(Sent::StartedBuffer) => {
                // Not all was written; register the write handler.
                common::add(slf, Side::Write, intern!(slf.py(), "_write_ready"))?;
                common::maybe_pause_protocol(slf)
            }
            Err(err) => common::fatal(slf, os_error(err), "Fatal write error on socket transport"),
        }
    }

    /// `write`'s checks after the type check: errors after `write_eof()` and during `sendfile`;
    /// `false` for nothing to write and for a lost connection (counted, and logged past
    /// asyncio's threshold).
    fn write_allowed(slf: Slf<'_, '_>, empty: impl FnOnce() -> PyResult<bool>) -> PyResult<bool> {
        let py = slf.py();
        let (eof, sendfile, lost) = Self::with(slf, |s| {
            (s.eof, s.empty_waiter.is_some(), s.common.conn_lost)
        })?;
        if eof {
            return Err(PyRuntimeError::new_err(
                "Cannot call write() after write_eof()",
            ));
        }
        if sendfile {
            return Err(PyRuntimeError::new_err(
                "unable to write; sendfile is in progress",
            ));
        }
        if empty()? {
            return Ok(false);
        }
        if lost != 0 {
            if lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES {
                py_helpers::logger(py)?
                    .call_method1("warning", ("socket.send() raised exception.",))?;
            }
            Self::with(slf, |s| s.common.conn_lost += 1)?;
            return Ok(false);
        }
        Ok(true)
    }

    fn shutdown_write(slf: Slf<'_, '_>) -> PyResult<()> {
        sys::shutdown_write(slf.get().fd).map_err(os_error)
    }

    /// `_write_ready` after a failed send: drop the buffer, end the connection, fail `sendfile`.
    fn write_failed(slf: Slf<'_, '_>, err: std::io::Error) -> PyResult<()> {
        let py = slf.py();
        common::remove(slf, Side::Write)?;
        Self::with(slf, |s| s.buffer.clear())?;
        let exc = os_error(err);
        let value = exc.value(py).clone();
        common::fatal(slf, exc, "Fatal write error on socket transport")?;
        let waiter = Self::with(slf, |s| s.empty_waiter.as_ref().map(|w| w.clone_ref(py)))?;
        if let Some(waiter) = waiter {
            waiter.call_method1(py, intern!(py, "set_exception"), (value,))?;
        }
        Ok(())
    }
}

common::transport_pymethods!(SocketTransportCore {
    #[new]
    #[pyo3(signature = (transport, event_loop, sock, protocol))]
    fn py_new(
        transport: &Bound<'_, PyAny>,
        event_loop: &Bound<'_, PyAny>,
        sock: &Bound<'_, PyAny>,
        protocol: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        let fd: RawFd = sock.call_method0("fileno")?.extract()?;
        Ok(SocketTransportCore {
            fd,
            st: GilCell::new(State {
                common: Common::new(transport, event_loop, sock, protocol)?,
                buffer: WriteBuffer::new(),
                eof: false,
                empty_waiter: None,
            }),
        })
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        let Some(s) = self.st.peek_for_traverse() else {
            return Ok(());
        };
        s.common.traverse(&visit)?;
        visit.call(&s.empty_waiter)
    }

    /// `_read_ready()`: the reader callback.
    pub(crate) fn _read_ready(slf: Slf<'_, '_>) -> PyResult<()> {
        let py = slf.py();
        let (lost, buffered, protocol) = common::with_common(slf, |c| {
            (
                c.conn_lost != 0,
                c.buffered,
                c.protocol.as_ref().map(|p| p.clone_ref(py)),
            )
        })?;
        let Some(protocol) = protocol.filter(|_| !lost) else {
            return Ok(());
        };
        let protocol = protocol.into_bound(py);
        if buffered {
            Self::read_get_buffer(slf, &protocol)
        } else {
            Self::read_data_received(slf, &protocol)
        }
    }

    /// `_write_ready()`: the writer callback, flushing the buffer.
    fn _write_ready(slf: Slf<'_, '_>) -> PyResult<()> {
        let py = slf.py();
        let fd = slf.get().fd;
        let sent = Self::with(slf, |s| {
            if s.common.conn_lost != 0 || s.buffer.is_empty() {
                return None;
            }
            Some(s.buffer.send_to(fd))
        })?;
        match sent {
            None => return Ok(()),
            Some(Err(err)) if is_retry(&err) => return Ok(()),
            Some(Err(err)) => return Self::write_failed(slf, err),
            Some(Ok(_)) => {}
        }
        common::maybe_resume_protocol(slf)?; // May append to the buffer.
        let (empty, waiter, closing, eof) = Self::with(slf, |s| {
            (
                s.buffer.is_empty(),
                s.empty_waiter.as_ref().map(|w| w.clone_ref(py)),
                s.common.closing,
                s.eof,
            )
        })?;
        if !empty {
            return Ok(());
        }
        common::remove(slf, Side::Write)?;
        if let Some(waiter) = waiter {
            waiter.call_method1(py, intern!(py, "set_result"), (py.None(),))?;
        }
        if closing {
            common::call_connection_lost(slf, py.None().bind(py))
        } else if eof {
            Self::shutdown_write(slf)
        } else {
            Ok(())
        }
    }

    /// `write(data)`: any bytes-like object (`bytes`, `bytearray`, `memoryview`).
    fn write(slf: Slf<'_, '_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        transports::check_bytes_like(data)?;
        if !Self::write_allowed(slf, || Ok(!data.is_truthy()?))? {
            return Ok(());
        }
        Self::write_bytes(slf, data)
    }

    /// `writelines(list_of_data)`: one write of the joined data, as asyncio 3.11 does.
    fn writelines(slf: Slf<'_, '_>, list_of_data: &Bound<'_, PyAny>) -> PyResult<()> {
        let data = PyBytes::new(slf.py(), b"").call_method1("join", (list_of_data,))?;
        Self::write(slf, &data)
    }

    fn write_eof(slf: Slf<'_, '_>) -> PyResult<()> {
        let shutdown = Self::with(slf, |s| {
            if s.common.closing || s.eof {
                return false;
            }
            s.eof = true;
            s.buffer.is_empty()
        })?;
        if shutdown {
            Self::shutdown_write(slf)?;
        }
        Ok(())
    }

    fn can_write_eof(&self) -> bool {
        true
    }

    fn _make_empty_waiter(slf: Slf<'_, '_>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        if Self::with(slf, |s| s.empty_waiter.is_some())? {
            return Err(PyRuntimeError::new_err("Empty waiter is already set"));
        }
        let Some(lp) = common::event_loop(slf)? else {
            return Err(PyRuntimeError::new_err("transport is closed"));
        };
        let waiter = lp.call_method0(intern!(py, "create_future"))?;
        let empty = Self::with(slf, |s| {
            s.empty_waiter = Some(waiter.clone().unbind());
            s.buffer.is_empty()
        })?;
        if empty {
            waiter.call_method1(intern!(py, "set_result"), (py.None(),))?;
        }
        Ok(waiter.unbind())
    }

    fn _reset_empty_waiter(slf: Slf<'_, '_>) -> PyResult<()> {
        let old = Self::with(slf, |s| s.empty_waiter.take())?;
        drop(old);
        Ok(())
    }

    #[getter]
    fn _server(slf: Slf<'_, '_>) -> PyResult<Option<Py<PyAny>>> {
        common::server(slf)
    }

    #[setter(_server)]
    fn set_server(slf: Slf<'_, '_>, server: Option<Py<PyAny>>) -> PyResult<()> {
        common::set_server(slf, server)
    }

    #[getter]
    fn _eof(slf: Slf<'_, '_>) -> PyResult<bool> {
        Self::with(slf, |s| s.eof)
    }

    #[getter]
    fn _empty_waiter(slf: Slf<'_, '_>) -> PyResult<Option<Py<PyAny>>> {
        Self::with(slf, |s| {
            s.empty_waiter.as_ref().map(|x| x.clone_ref(slf.py()))
        })
    }
});
