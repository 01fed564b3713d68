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

use crate::buffers;
use crate::errors::os_error;
use crate::event_loop::LoopCore;
use crate::gil_cell::GilCell;
use crate::py_helpers;
use crate::transports::{
    self, escapes, is_retry, FlowControl, LOG_THRESHOLD_FOR_CONNLOST_WRITES, MAX_SIZE,
};
use ferroloop_core::registry::Side;
use ferroloop_core::sys;
use ferroloop_core::transports::WriteBuffer;
use pyo3::exceptions::{PyConnectionError, PyRuntimeError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyDict, PyTuple};
use pyo3::{PyTraverseError, PyVisit};
use std::os::fd::RawFd;

/// One receive buffer for all transports: a `recv` fills it and its bytes are copied into the
/// `bytes` handed to `data_received`, so an idle connection holds no receive memory.
static READ_BUFFER: GilCell<Vec<u8>> = GilCell::new(Vec::new());

/// Runs `f` on the shared receive buffer (at least `MAX_SIZE` bytes). `f` must not run Python
/// code; making a `bytes` is fine (it is not tracked by the GC, so it cannot trigger a
/// collection).
pub fn with_read_buffer<R>(py: Python<'_>, f: impl FnOnce(&mut [u8]) -> R) -> PyResult<R> {
    READ_BUFFER.with(py, |buf| {
        if buf.len() < MAX_SIZE {
            buf.resize(MAX_SIZE, 0);
        }
        f(buf)
    })
}

struct State {
    /// The Python `SocketTransport` users hold; `None` once `connection_lost` ran.
    transport: Option<Py<PyAny>>,
    /// `None` once `connection_lost` ran, as asyncio clears `_loop`.
    event_loop: Option<Py<LoopCore>>,
    sock: Option<Py<PyAny>>,
    protocol: Option<Py<PyAny>>,
    /// The protocol is a `BufferedProtocol`.
    buffered: bool,
    protocol_connected: bool,
    server: Option<Py<PyAny>>,
    extra: Py<PyDict>,
    buffer: WriteBuffer,
    conn_lost: u32,
    closing: bool,
    paused: bool,
    eof: bool,
    empty_waiter: Option<Py<PyAny>>,
    flow: FlowControl,
}

/// The native core of `ferroloop._transports.SocketTransport`.
#[pyclass(frozen, module = "ferroloop._ferroloop")]
pub struct SocketTransportCore {
    fd: RawFd,
    st: GilCell<State>,
}

type Slf<'a, 'py> = &'a Bound<'py, SocketTransportCore>;

impl SocketTransportCore {
    fn with<R>(slf: Slf<'_, '_>, f: impl FnOnce(&mut State) -> R) -> PyResult<R> {
        slf.get().st.with(slf.py(), f)
    }

    fn event_loop<'py>(slf: Slf<'_, 'py>) -> PyResult<Option<Bound<'py, LoopCore>>> {
        let py = slf.py();
        Self::with(slf, |s| s.event_loop.as_ref().map(|l| l.bind(py).clone()))
    }

    /// The Python transport (the core itself once `connection_lost` ran).
    fn transport<'py>(slf: Slf<'_, 'py>) -> PyResult<Bound<'py, PyAny>> {
        let py = slf.py();
        let transport = Self::with(slf, |s| s.transport.as_ref().map(|t| t.bind(py).clone()))?;
        Ok(transport.unwrap_or_else(|| slf.clone().into_any()))
    }

    fn protocol<'py>(slf: Slf<'_, 'py>) -> PyResult<Option<Bound<'py, PyAny>>> {
        let py = slf.py();
        Self::with(slf, |s| s.protocol.as_ref().map(|p| p.bind(py).clone()))
    }

    fn remove(slf: Slf<'_, '_>, side: Side) -> PyResult<()> {
        if let Some(lp) = Self::event_loop(slf)? {
            LoopCore::remove_fd(&lp, slf.get().fd, side)?;
        }
        Ok(())
    }

    fn add(
        slf: Slf<'_, '_>,
        side: Side,
        method: &Bound<'_, pyo3::types::PyString>,
    ) -> PyResult<()> {
        if let Some(lp) = Self::event_loop(slf)? {
            let callback = slf.getattr(method)?;
            LoopCore::add_fd_callback(
                &lp,
                slf.get().fd,
                side,
                &callback,
                &PyTuple::empty(slf.py()),
            )?;
        }
        Ok(())
    }

    fn call_soon(slf: Slf<'_, '_>, method: &str, args: &Bound<'_, PyTuple>) -> PyResult<()> {
        if let Some(lp) = Self::event_loop(slf)? {
            let callback = slf.getattr(method)?;
            LoopCore::call_soon_native(&lp, &callback, args)?;
        }
        Ok(())
    }

    /// `logger.debug(fmt, self)` when the loop is in debug mode.
    fn debug_log(slf: Slf<'_, '_>, fmt: &str) -> PyResult<()> {
        if let Some(lp) = Self::event_loop(slf)? {
            if LoopCore::debug(&lp)? {
                let transport = Self::transport(slf)?;
                py_helpers::logger(slf.py())?.call_method1("debug", (fmt, transport))?;
            }
        }
        Ok(())
    }

    /// `self._fatal_error(exc, message)` (Python, in the subclass), unless `err` must escape.
    fn fatal(slf: Slf<'_, '_>, err: PyErr, message: &str) -> PyResult<()> {
        let py = slf.py();
        if escapes(py, &err) {
            return Err(err);
        }
        Self::transport(slf)?
            .call_method1(intern!(py, "_fatal_error"), (err.into_value(py), message))
            .map(drop)
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
            Err(err) => Self::fatal(slf, err, message).map(|()| None),
        }
    }

    fn read_data_received(slf: Slf<'_, '_>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        let fd = slf.get().fd;
        let received = with_read_buffer(py, |buf| {
            sys::recv(fd, buf).map(|n| PyBytes::new(py, &buf[..n]))
        })?;
        let data = match received {
            Ok(data) => data,
            Err(err) if is_retry(&err) => return Ok(()),
            Err(err) => {
                return Self::fatal(slf, os_error(err), "Fatal read error on socket transport")
            }
        };
        if data.as_bytes().is_empty() {
            return Self::read_eof(slf, protocol);
        }
        Self::call_protocol(
            slf,
            protocol,
            |p| p.call_method1(intern!(py, "data_received"), (data,)),
            "Fatal error: protocol.data_received() call failed.",
        )
        .map(drop)
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
            Err(err) => return Self::fatal(slf, err, "Fatal read error on socket transport"),
        };
        let n = match received {
            Ok(n) => n,
            Err(err) if is_retry(&err) => return Ok(()),
            Err(err) => {
                return Self::fatal(slf, os_error(err), "Fatal read error on socket transport")
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
        Self::debug_log(slf, "%r received EOF")?;
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
            Self::remove(slf, Side::Read)
        } else {
            Self::close(slf)
        }
    }

    /// `_FlowControlMixin._maybe_pause_protocol`.
    fn maybe_pause_protocol(slf: Slf<'_, '_>) -> PyResult<()> {
        if Self::with(slf, |s| s.flow.pause_needed(s.buffer.len()))? {
            Self::flow_call(slf, "pause_writing")?;
        }
        Ok(())
    }

    /// `_FlowControlMixin._maybe_resume_protocol`.
    fn maybe_resume_protocol(slf: Slf<'_, '_>) -> PyResult<()> {
        if Self::with(slf, |s| s.flow.resume_needed(s.buffer.len()))? {
            Self::flow_call(slf, "resume_writing")?;
        }
        Ok(())
    }

    fn flow_call(slf: Slf<'_, '_>, method: &str) -> PyResult<()> {
        let Some(protocol) = Self::protocol(slf)? else {
            return Ok(());
        };
        let event_loop = Self::event_loop(slf)?.map(Bound::into_any);
        transports::flow_call(
            event_loop.as_ref(),
            &Self::transport(slf)?,
            &protocol,
            method,
        )
    }

    /// The write path after the checks: send now if nothing is buffered, buffer the rest.
    fn write_bytes(slf: Slf<'_, '_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let fd = slf.get().fd;
        let buffered_before = Self::with(slf, |s| !s.buffer.is_empty())?;
        if buffered_before {
            let pushed =
                buffers::with_readable(data, |bytes| Self::with(slf, |s| s.buffer.push(bytes)));
            match pushed {
                Ok(done) => done?,
                // A non-contiguous memoryview: asyncio's bytearray.extend() takes it too.
                Err(_) => {
                    let copy = data.call_method0(intern!(slf.py(), "tobytes"))?;
                    let copy = copy.cast::<PyBytes>()?;
                    Self::with(slf, |s| s.buffer.push(copy.as_bytes()))?;
                }
            }
            return Self::maybe_pause_protocol(slf);
        }
        // Optimization (asyncio's): try to send now.
        let outcome = buffers::with_readable(data, |bytes| match sys::send(fd, bytes) {
            Ok(n) if n == bytes.len() => Ok(None),
            Ok(n) => Ok(Some(bytes[n..].to_vec())),
            Err(err) if is_retry(&err) => Ok(Some(bytes.to_vec())),
            Err(err) => Err(err),
        });
        let outcome = match outcome {
            Ok(outcome) => outcome,
            // `socket.send` refuses a non-contiguous buffer the same way.
            Err(err) => {
                return Self::fatal(slf, err, "Fatal write error on socket transport");
            }
        };
        let rest = match outcome {
            Ok(None) => return Ok(()),
            Ok(Some(rest)) => rest,
            Err(err) => {
                return Self::fatal(slf, os_error(err), "Fatal write error on socket transport")
            }
        };
        // Not all was written; register the write handler.
        Self::add(slf, Side::Write, intern!(slf.py(), "_write_ready"))?;
        Self::with(slf, |s| s.buffer.push(&rest))?;
        Self::maybe_pause_protocol(slf)
    }

    fn shutdown_write(slf: Slf<'_, '_>) -> PyResult<()> {
        sys::shutdown_write(slf.get().fd).map_err(os_error)
    }
}

#[pymethods]
impl SocketTransportCore {
    #[new]
    #[pyo3(signature = (transport, event_loop, sock, protocol, extra))]
    fn py_new(
        transport: &Bound<'_, PyAny>,
        event_loop: &Bound<'_, PyAny>,
        sock: &Bound<'_, PyAny>,
        protocol: &Bound<'_, PyAny>,
        extra: &Bound<'_, PyDict>,
    ) -> PyResult<Self> {
        let event_loop = event_loop.cast::<LoopCore>()?.clone().unbind();
        let fd: RawFd = sock.call_method0("fileno")?.extract()?;
        let buffered = py_helpers::is_buffered_protocol(protocol)?;
        let flow = FlowControl::new(protocol.py())?;
        Ok(SocketTransportCore {
            fd,
            st: GilCell::new(State {
                transport: Some(transport.clone().unbind()),
                event_loop: Some(event_loop),
                sock: Some(sock.clone().unbind()),
                protocol: Some(protocol.clone().unbind()),
                buffered,
                protocol_connected: true,
                server: None,
                extra: extra.clone().unbind(),
                buffer: WriteBuffer::new(),
                conn_lost: 0,
                closing: false,
                paused: false,
                eof: false,
                empty_waiter: None,
                flow,
            }),
        })
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        let Some(s) = self.st.peek_for_traverse() else {
            return Ok(());
        };
        visit.call(&s.transport)?;
        visit.call(&s.event_loop)?;
        visit.call(&s.sock)?;
        visit.call(&s.protocol)?;
        visit.call(&s.server)?;
        visit.call(&s.extra)?;
        visit.call(&s.empty_waiter)?;
        Ok(())
    }

    fn __clear__(&self) {
        // The collector runs with the GIL held; `attach` only hands us the token.
        Python::attach(|py| {
            let taken = self.st.with(py, |s| {
                (
                    s.transport.take(),
                    s.event_loop.take(),
                    s.protocol.take(),
                    s.server.take(),
                    s.empty_waiter.take(),
                )
            });
            drop(taken);
        });
    }

    /// `_read_ready()`: the reader callback.
    fn _read_ready(slf: Slf<'_, '_>) -> PyResult<()> {
        let py = slf.py();
        let (lost, buffered, protocol) = Self::with(slf, |s| {
            (
                s.conn_lost != 0,
                s.buffered,
                s.protocol.as_ref().map(|p| p.clone_ref(py)),
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
            if s.conn_lost != 0 || s.buffer.is_empty() {
                return None;
            }
            Some(s.buffer.send_to(fd))
        })?;
        match sent {
            None => Ok(()),
            Some(Err(err)) if is_retry(&err) => Ok(()),
            Some(Err(err)) => {
                Self::remove(slf, Side::Write)?;
                Self::with(slf, |s| s.buffer.clear())?;
                let exc = os_error(err);
                let value = exc.value(py).clone();
                Self::fatal(slf, exc, "Fatal write error on socket transport")?;
                let waiter = Self::with(slf, |s| s.empty_waiter.as_ref().map(|w| w.clone_ref(py)))?;
                if let Some(waiter) = waiter {
                    waiter.call_method1(py, intern!(py, "set_exception"), (value,))?;
                }
                Ok(())
            }
            Some(Ok(_)) => {
                Self::maybe_resume_protocol(slf)?; // May append to the buffer.
                let (empty, waiter, closing, eof) = Self::with(slf, |s| {
                    (
                        s.buffer.is_empty(),
                        s.empty_waiter.as_ref().map(|w| w.clone_ref(py)),
                        s.closing,
                        s.eof,
                    )
                })?;
                if !empty {
                    return Ok(());
                }
                Self::remove(slf, Side::Write)?;
                if let Some(waiter) = waiter {
                    waiter.call_method1(py, intern!(py, "set_result"), (py.None(),))?;
                }
                if closing {
                    Self::_call_connection_lost(slf, py.None().bind(py))
                } else if eof {
                    Self::shutdown_write(slf)
                } else {
                    Ok(())
                }
            }
        }
    }

    /// `write(data)`: any bytes-like object (`bytes`, `bytearray`, `memoryview`).
    fn write(slf: Slf<'_, '_>, data: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        transports::check_bytes_like(data)?;
        let (eof, sendfile, lost) =
            Self::with(slf, |s| (s.eof, s.empty_waiter.is_some(), s.conn_lost))?;
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
        if !data.is_truthy()? {
            return Ok(());
        }
        if lost != 0 {
            if lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES {
                py_helpers::logger(py)?
                    .call_method1("warning", ("socket.send() raised exception.",))?;
            }
            Self::with(slf, |s| s.conn_lost += 1)?;
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
            if s.closing || s.eof {
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

    /// `close()`: stop reading; once the buffer is flushed, call `connection_lost(None)`.
    fn close(slf: Slf<'_, '_>) -> PyResult<()> {
        let flushed = Self::with(slf, |s| {
            if s.closing {
                return None;
            }
            s.closing = true;
            let flushed = s.buffer.is_empty();
            if flushed {
                s.conn_lost += 1;
            }
            Some(flushed)
        })?;
        let Some(flushed) = flushed else {
            return Ok(());
        };
        Self::remove(slf, Side::Read)?;
        if flushed {
            Self::remove(slf, Side::Write)?;
            Self::call_soon(
                slf,
                "_call_connection_lost",
                &PyTuple::new(slf.py(), [slf.py().None()])?,
            )?;
        }
        Ok(())
    }

    /// `abort()`: drop the buffer and close at once.
    fn abort(slf: Slf<'_, '_>) -> PyResult<()> {
        Self::_force_close(slf, slf.py().None().bind(slf.py()))
    }

    fn _force_close(slf: Slf<'_, '_>, exc: &Bound<'_, PyAny>) -> PyResult<()> {
        let (had_buffer, was_closing) = match Self::with(slf, |s| {
            if s.conn_lost != 0 {
                return None;
            }
            let had_buffer = !s.buffer.is_empty();
            s.buffer.clear();
            let was_closing = std::mem::replace(&mut s.closing, true);
            s.conn_lost += 1;
            Some((had_buffer, was_closing))
        })? {
            Some(flags) => flags,
            None => return Ok(()),
        };
        if had_buffer {
            Self::remove(slf, Side::Write)?;
        }
        if !was_closing {
            Self::remove(slf, Side::Read)?;
        }
        Self::call_soon(
            slf,
            "_call_connection_lost",
            &PyTuple::new(slf.py(), [exc])?,
        )
    }

    /// `_call_connection_lost(exc)`: tell the protocol, close the socket, detach the server.
    fn _call_connection_lost(slf: Slf<'_, '_>, exc: &Bound<'_, PyAny>) -> PyResult<()> {
        let py = slf.py();
        // The `extra` entry asyncio makes from the socket (`TransportSocket`) is made before it
        // closes.
        let transport = Self::transport(slf)?;
        if !transport.is(slf) {
            transport.call_method0(intern!(py, "_fill_extra"))?;
        }
        let (connected, protocol) = Self::with(slf, |s| {
            (
                s.protocol_connected,
                s.protocol.as_ref().map(|p| p.clone_ref(py)),
            )
        })?;
        let result = match protocol {
            Some(protocol) if connected => protocol
                .call_method1(py, intern!(py, "connection_lost"), (exc,))
                .map(drop),
            _ => Ok(()),
        };
        let (sock, protocol, event_loop, server, transport_ref) = Self::with(slf, |s| {
            // The socket closes now: from here on, writes are dropped (and counted) as after
            // any lost connection, and nothing may touch the descriptor number again.
            s.conn_lost = s.conn_lost.max(1);
            (
                s.sock.take(),
                s.protocol.take(),
                s.event_loop.take(),
                s.server.take(),
                s.transport.take(),
            )
        })?;
        let closed = match &sock {
            Some(sock) => sock.call_method0(py, intern!(py, "close")).map(drop),
            None => Ok(()),
        };
        drop((sock, protocol, event_loop));
        let detached = match server {
            Some(server) => server.call_method0(py, intern!(py, "_detach")).map(drop),
            None => Ok(()),
        };
        result?;
        closed?;
        detached?;
        let waiter = Self::with(slf, |s| s.empty_waiter.as_ref().map(|w| w.clone_ref(py)))?;
        if let Some(waiter) = waiter {
            let err = PyConnectionError::new_err("Connection is closed by peer");
            waiter.call_method1(py, intern!(py, "set_exception"), (err.into_value(py),))?;
        }
        drop((transport, transport_ref));
        Ok(())
    }

    fn pause_reading(slf: Slf<'_, '_>) -> PyResult<()> {
        let paused = Self::with(slf, |s| {
            if s.closing || s.paused {
                return false;
            }
            s.paused = true;
            true
        })?;
        if paused {
            Self::remove(slf, Side::Read)?;
            Self::debug_log(slf, "%r pauses reading")?;
        }
        Ok(())
    }

    fn resume_reading(slf: Slf<'_, '_>) -> PyResult<()> {
        let resumed = Self::with(slf, |s| {
            if s.closing || !s.paused {
                return false;
            }
            s.paused = false;
            true
        })?;
        if resumed {
            Self::_start_reading(slf)?;
            Self::debug_log(slf, "%r resumes reading")?;
        }
        Ok(())
    }

    /// `_add_reader(fd, self._read_ready)`: registers the reader unless reading is paused or
    /// the transport is closing.
    fn _start_reading(slf: Slf<'_, '_>) -> PyResult<()> {
        if Self::is_reading(slf)? {
            Self::add(slf, Side::Read, intern!(slf.py(), "_read_ready"))?;
        }
        Ok(())
    }

    fn is_reading(slf: Slf<'_, '_>) -> PyResult<bool> {
        Self::with(slf, |s| !s.closing && !s.paused)
    }

    fn is_closing(slf: Slf<'_, '_>) -> PyResult<bool> {
        Self::with(slf, |s| s.closing)
    }

    fn set_protocol(slf: Slf<'_, '_>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
        let buffered = py_helpers::is_buffered_protocol(protocol)?;
        let old = Self::with(slf, |s| {
            s.buffered = buffered;
            s.protocol_connected = true;
            s.protocol.replace(protocol.clone().unbind())
        })?;
        drop(old);
        Ok(())
    }

    fn get_protocol(slf: Slf<'_, '_>) -> PyResult<Option<Py<PyAny>>> {
        Ok(Self::protocol(slf)?.map(Bound::unbind))
    }

    fn get_write_buffer_size(slf: Slf<'_, '_>) -> PyResult<usize> {
        Self::with(slf, |s| s.buffer.len())
    }

    fn get_write_buffer_limits(slf: Slf<'_, '_>) -> PyResult<(Py<PyAny>, Py<PyAny>)> {
        let py = slf.py();
        Self::with(slf, |s| {
            (s.flow.low.clone_ref(py), s.flow.high.clone_ref(py))
        })
    }

    /// `set_write_buffer_limits(high=None, low=None)` with `_FlowControlMixin`'s defaults.
    #[pyo3(signature = (high = None, low = None))]
    fn set_write_buffer_limits(
        slf: Slf<'_, '_>,
        high: Option<&Bound<'_, PyAny>>,
        low: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let (high, low) = transports::parse_limits(slf.py(), high, low)?;
        let flow = FlowControl::with_limits(high, low)?;
        let old = Self::with(slf, |s| {
            let paused = s.flow.paused;
            std::mem::replace(&mut s.flow, FlowControl { paused, ..flow })
        })?;
        drop(old);
        Self::maybe_pause_protocol(slf)
    }

    fn _make_empty_waiter(slf: Slf<'_, '_>) -> PyResult<Py<PyAny>> {
        let py = slf.py();
        if Self::with(slf, |s| s.empty_waiter.is_some())? {
            return Err(PyRuntimeError::new_err("Empty waiter is already set"));
        }
        let Some(lp) = Self::event_loop(slf)? else {
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
    fn _loop(slf: Slf<'_, '_>) -> PyResult<Option<Py<PyAny>>> {
        Ok(Self::event_loop(slf)?.map(|l| l.into_any().unbind()))
    }

    #[getter]
    fn _sock(slf: Slf<'_, '_>) -> PyResult<Option<Py<PyAny>>> {
        Self::with(slf, |s| s.sock.as_ref().map(|x| x.clone_ref(slf.py())))
    }

    #[getter]
    fn _sock_fd(&self) -> RawFd {
        self.fd
    }

    #[getter]
    fn _protocol(slf: Slf<'_, '_>) -> PyResult<Option<Py<PyAny>>> {
        Self::get_protocol(slf)
    }

    #[getter]
    fn _extra(slf: Slf<'_, '_>) -> PyResult<Py<PyDict>> {
        Self::with(slf, |s| s.extra.clone_ref(slf.py()))
    }

    #[getter]
    fn _server(slf: Slf<'_, '_>) -> PyResult<Option<Py<PyAny>>> {
        Self::with(slf, |s| s.server.as_ref().map(|x| x.clone_ref(slf.py())))
    }

    #[setter(_server)]
    fn set_server(slf: Slf<'_, '_>, server: Option<Py<PyAny>>) -> PyResult<()> {
        let old = Self::with(slf, |s| std::mem::replace(&mut s.server, server))?;
        drop(old);
        Ok(())
    }

    #[getter]
    fn _closing(slf: Slf<'_, '_>) -> PyResult<bool> {
        Self::with(slf, |s| s.closing)
    }

    #[getter]
    fn _conn_lost(slf: Slf<'_, '_>) -> PyResult<u32> {
        Self::with(slf, |s| s.conn_lost)
    }

    #[getter]
    fn _eof(slf: Slf<'_, '_>) -> PyResult<bool> {
        Self::with(slf, |s| s.eof)
    }

    #[getter]
    fn _paused(slf: Slf<'_, '_>) -> PyResult<bool> {
        Self::with(slf, |s| s.paused)
    }

    #[getter]
    fn _protocol_paused(slf: Slf<'_, '_>) -> PyResult<bool> {
        Self::with(slf, |s| s.flow.paused)
    }

    #[getter]
    fn _empty_waiter(slf: Slf<'_, '_>) -> PyResult<Option<Py<PyAny>>> {
        Self::with(slf, |s| {
            s.empty_waiter.as_ref().map(|x| x.clone_ref(slf.py()))
        })
    }
}
