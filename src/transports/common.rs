//! What every native transport shares: asyncio's `_SelectorTransport` — its state ([`Common`])
//! and its lifecycle (`close`, `abort`, `_force_close`, `_call_connection_lost`, reading
//! paused and resumed, the protocol swapped, flow control) — written once, generic over the
//! transport's core type ([`Core`]). Each core's `#[pymethods]` forward to these functions.
//!
//! Invariants:
//! - `conn_lost` becomes non-zero when `connection_lost` is scheduled (or runs, for a flushing
//!   `close()`), after which nothing touches the descriptor again;
//! - `transport`, `event_loop`, `protocol`, `sock` and `server` are let go of once
//!   `connection_lost` ran (the protocol ↔ transport cycle ends there);
//! - no state borrow is held across a call into Python: values are cloned out, Python is
//!   called, then the state is entered again; objects taken out are dropped after leaving it.

use super::{escapes, FlowControl, ReaderKind};
use crate::event_loop::LoopCore;
use crate::gil_cell::GilCell;
use crate::handles::Invoke;
use crate::py_helpers;
use ferroloop_core::registry::Side;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyString, PyTuple};
use pyo3::{PyClass, PyTraverseError, PyVisit};
use std::os::fd::RawFd;

/// `_SelectorTransport`'s state.
pub struct Common {
    /// The Python transport users hold; `None` once `connection_lost` ran.
    pub transport: Option<Py<PyAny>>,
    /// `None` once `connection_lost` ran, as asyncio clears `_loop`.
    pub event_loop: Option<Py<LoopCore>>,
    pub sock: Option<Py<PyAny>>,
    pub protocol: Option<Py<PyAny>>,
    /// The protocol is a `BufferedProtocol` (stream transports read into its buffer).
    pub buffered: bool,
    pub protocol_connected: bool,
    pub server: Option<Py<PyAny>>,
    pub conn_lost: u32,
    pub closing: bool,
    pub paused: bool,
    pub flow: FlowControl,
}

impl Common {
    /// The state of a new transport.
    pub fn new(
        transport: &Bound<'_, PyAny>,
        event_loop: &Bound<'_, PyAny>,
        sock: &Bound<'_, PyAny>,
        protocol: &Bound<'_, PyAny>,
    ) -> PyResult<Self> {
        Ok(Self {
            transport: Some(transport.clone().unbind()),
            event_loop: Some(event_loop.cast::<LoopCore>()?.clone().unbind()),
            sock: Some(sock.clone().unbind()),
            protocol: Some(protocol.clone().unbind()),
            buffered: py_helpers::is_buffered_protocol(protocol)?,
            protocol_connected: true,
            server: None,
            conn_lost: 0,
            closing: false,
            paused: false,
            flow: FlowControl::new(transport.py())?,
        })
    }

    /// The GC's view of the references (`__traverse__`).
    pub fn traverse(&self, visit: &PyVisit<'_>) -> Result<(), PyTraverseError> {
        visit.call(&self.transport)?;
        visit.call(&self.event_loop)?;
        visit.call(&self.sock)?;
        visit.call(&self.protocol)?;
        visit.call(&self.server)
    }

    /// Takes out what `__clear__` and `_call_connection_lost` let go of (dropped by the caller,
    /// outside the state).
    pub fn take_references(&mut self) -> References {
        (
            self.transport.take(),
            self.event_loop.take(),
            self.protocol.take(),
            self.server.take(),
            self.sock.take(),
        )
    }
}

/// What [`Common::take_references`] takes out.
pub type References = (
    Option<Py<PyAny>>,
    Option<Py<LoopCore>>,
    Option<Py<PyAny>>,
    Option<Py<PyAny>>,
    Option<Py<PyAny>>,
);

/// A native transport core: a frozen pyclass whose state holds a [`Common`] and a write buffer.
pub trait Core: PyClass<Frozen = pyo3::pyclass::boolean_struct::True> + Sync {
    type State: Send;
    /// How the loop calls this core's `_read_ready` (registered as a native reader).
    const READER: ReaderKind;
    /// The socket's descriptor.
    fn fd(&self) -> RawFd;
    fn cell(&self) -> &GilCell<Self::State>;
    fn common(st: &mut Self::State) -> &mut Common;
    /// Bytes accepted by a write and not sent yet.
    fn buffered(st: &Self::State) -> usize;
    /// What [`Core::clear_buffer`] takes out, dropped after the state is left.
    type Cleared;
    /// Empties the buffer (the connection is lost).
    fn clear_buffer(st: &mut Self::State) -> Self::Cleared;
    /// After `connection_lost` ran and the socket closed (`sendfile`'s waiter, for streams).
    fn after_connection_lost(_slf: &Bound<'_, Self>) -> PyResult<()> {
        Ok(())
    }
}

pub fn with<T: Core, R>(slf: &Bound<'_, T>, f: impl FnOnce(&mut T::State) -> R) -> PyResult<R> {
    slf.get().cell().with(slf.py(), f)
}

pub fn with_common<T: Core, R>(
    slf: &Bound<'_, T>,
    f: impl FnOnce(&mut Common) -> R,
) -> PyResult<R> {
    with(slf, |s| f(T::common(s)))
}

pub fn event_loop<'py, T: Core>(slf: &Bound<'py, T>) -> PyResult<Option<Bound<'py, LoopCore>>> {
    let py = slf.py();
    with_common(slf, |c| c.event_loop.as_ref().map(|l| l.bind(py).clone()))
}

/// The Python transport (the core itself once `connection_lost` ran).
pub fn transport<'py, T: Core>(slf: &Bound<'py, T>) -> PyResult<Bound<'py, PyAny>> {
    let py = slf.py();
    let transport = with_common(slf, |c| c.transport.as_ref().map(|t| t.bind(py).clone()))?;
    Ok(transport.unwrap_or_else(|| slf.clone().into_any()))
}

pub fn protocol<'py, T: Core>(slf: &Bound<'py, T>) -> PyResult<Option<Bound<'py, PyAny>>> {
    let py = slf.py();
    with_common(slf, |c| c.protocol.as_ref().map(|p| p.bind(py).clone()))
}

pub fn sock<'py, T: Core>(slf: &Bound<'py, T>) -> PyResult<Option<Bound<'py, PyAny>>> {
    let py = slf.py();
    with_common(slf, |c| c.sock.as_ref().map(|s| s.bind(py).clone()))
}

pub fn server<T: Core>(slf: &Bound<'_, T>) -> PyResult<Option<Py<PyAny>>> {
    let py = slf.py();
    with_common(slf, |c| c.server.as_ref().map(|s| s.clone_ref(py)))
}

pub fn set_server<T: Core>(slf: &Bound<'_, T>, server: Option<Py<PyAny>>) -> PyResult<()> {
    let old = with_common(slf, |c| std::mem::replace(&mut c.server, server))?;
    drop(old);
    Ok(())
}

/// `loop._remove_reader(fd)` / `_remove_writer(fd)`.
pub fn remove<T: Core>(slf: &Bound<'_, T>, side: Side) -> PyResult<()> {
    if let Some(lp) = event_loop(slf)? {
        LoopCore::remove_fd(&lp, slf.get().fd(), side)?;
    }
    Ok(())
}

/// `loop._add_reader(fd, self.<method>)` / `_add_writer`.
pub fn add<T: Core>(slf: &Bound<'_, T>, side: Side, method: &Bound<'_, PyString>) -> PyResult<()> {
    if let Some(lp) = event_loop(slf)? {
        let callback = slf.as_any().getattr(method)?;
        LoopCore::add_fd_callback(
            &lp,
            slf.get().fd(),
            side,
            &callback,
            &PyTuple::empty(slf.py()),
            Invoke::Python,
        )?;
    }
    Ok(())
}

/// `loop.call_soon(self.<method>, *args)`.
pub fn call_soon<T: Core>(
    slf: &Bound<'_, T>,
    method: &Bound<'_, PyString>,
    args: &Bound<'_, PyTuple>,
) -> PyResult<()> {
    if let Some(lp) = event_loop(slf)? {
        let callback = slf.as_any().getattr(method)?;
        LoopCore::call_soon_native(&lp, &callback, args)?;
    }
    Ok(())
}

/// `logger.debug(fmt, self)` when the loop is in debug mode.
pub fn debug_log<T: Core>(slf: &Bound<'_, T>, fmt: &str) -> PyResult<()> {
    if let Some(lp) = event_loop(slf)? {
        if LoopCore::debug(&lp)? {
            let transport = transport(slf)?;
            py_helpers::logger(slf.py())?.call_method1("debug", (fmt, transport))?;
        }
    }
    Ok(())
}

/// `self._fatal_error(exc, message)` (the Python transport's), unless `err` must escape.
pub fn fatal<T: Core>(slf: &Bound<'_, T>, err: PyErr, message: &str) -> PyResult<()> {
    let py = slf.py();
    if escapes(py, &err) {
        return Err(err);
    }
    transport(slf)?
        .call_method1(intern!(py, "_fatal_error"), (err.into_value(py), message))
        .map(drop)
}

/// `_FlowControlMixin._maybe_pause_protocol`.
pub fn maybe_pause_protocol<T: Core>(slf: &Bound<'_, T>) -> PyResult<()> {
    if with(slf, |s| {
        let size = T::buffered(s);
        T::common(s).flow.pause_needed(size)
    })? {
        flow_call(slf, "pause_writing")?;
    }
    Ok(())
}

/// `_FlowControlMixin._maybe_resume_protocol`.
pub fn maybe_resume_protocol<T: Core>(slf: &Bound<'_, T>) -> PyResult<()> {
    if with(slf, |s| {
        let size = T::buffered(s);
        T::common(s).flow.resume_needed(size)
    })? {
        flow_call(slf, "resume_writing")?;
    }
    Ok(())
}

fn flow_call<T: Core>(slf: &Bound<'_, T>, method: &str) -> PyResult<()> {
    let Some(protocol) = protocol(slf)? else {
        return Ok(());
    };
    let event_loop = event_loop(slf)?.map(Bound::into_any);
    super::flow_call(event_loop.as_ref(), &transport(slf)?, &protocol, method)
}

/// `set_write_buffer_limits(high=None, low=None)`.
pub fn set_write_buffer_limits<T: Core>(
    slf: &Bound<'_, T>,
    high: Option<&Bound<'_, PyAny>>,
    low: Option<&Bound<'_, PyAny>>,
) -> PyResult<()> {
    let (high, low) = super::parse_limits(slf.py(), high, low)?;
    let flow = FlowControl::with_limits(high, low)?;
    let old = with_common(slf, |c| {
        let paused = c.flow.paused;
        std::mem::replace(&mut c.flow, FlowControl { paused, ..flow })
    })?;
    drop(old);
    maybe_pause_protocol(slf)
}

/// `get_write_buffer_limits()`: `(low, high)`.
pub fn get_write_buffer_limits<T: Core>(slf: &Bound<'_, T>) -> PyResult<(Py<PyAny>, Py<PyAny>)> {
    let py = slf.py();
    with_common(slf, |c| {
        (c.flow.low.clone_ref(py), c.flow.high.clone_ref(py))
    })
}

/// `close()`: stop reading; once the buffer is flushed, call `connection_lost(None)`.
pub fn close<T: Core>(slf: &Bound<'_, T>) -> PyResult<()> {
    let flushed = with(slf, |s| {
        let empty = T::buffered(s) == 0;
        let c = T::common(s);
        if c.closing {
            return None;
        }
        c.closing = true;
        if empty {
            c.conn_lost += 1;
        }
        Some(empty)
    })?;
    let Some(flushed) = flushed else {
        return Ok(());
    };
    let py = slf.py();
    remove(slf, Side::Read)?;
    if flushed {
        remove(slf, Side::Write)?;
        let args = PyTuple::new(py, [py.None()])?;
        call_soon(slf, intern!(py, "_call_connection_lost"), &args)?;
    }
    Ok(())
}

/// `_force_close(exc)`: drop the buffer, stop reading, schedule `connection_lost(exc)`.
pub fn force_close<T: Core>(slf: &Bound<'_, T>, exc: &Bound<'_, PyAny>) -> PyResult<()> {
    let flags = with(slf, |s| {
        if T::common(s).conn_lost != 0 {
            return None;
        }
        let had_buffer = T::buffered(s) != 0;
        let cleared = T::clear_buffer(s);
        let c = T::common(s);
        let was_closing = std::mem::replace(&mut c.closing, true);
        c.conn_lost += 1;
        Some((had_buffer, was_closing, cleared))
    })?;
    let Some((had_buffer, was_closing, cleared)) = flags else {
        return Ok(());
    };
    drop(cleared);
    if had_buffer {
        remove(slf, Side::Write)?;
    }
    if !was_closing {
        remove(slf, Side::Read)?;
    }
    let py = slf.py();
    call_soon(
        slf,
        intern!(py, "_call_connection_lost"),
        &PyTuple::new(py, [exc])?,
    )
}

/// `_call_connection_lost(exc)`: tell the protocol, close the socket, detach the server, let
/// go of everything.
pub fn call_connection_lost<T: Core>(slf: &Bound<'_, T>, exc: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = slf.py();
    let transport = transport(slf)?;
    let (connected, protocol) = with_common(slf, |c| {
        (
            c.protocol_connected,
            c.protocol.as_ref().map(|p| p.clone_ref(py)),
        )
    })?;
    let result = match protocol {
        Some(protocol) if connected => protocol
            .call_method1(py, intern!(py, "connection_lost"), (exc,))
            .map(drop),
        _ => Ok(()),
    };
    if let Some(lp) = event_loop(slf)? {
        LoopCore::forget_transport(&lp, slf.get().fd(), &transport)?;
    }
    let (sock, server) = with_common(slf, |c| {
        // The socket closes now: from here on, writes are dropped (and counted) as after any
        // lost connection, and nothing may touch the descriptor number again.
        c.conn_lost = c.conn_lost.max(1);
        (c.sock.take(), c.server.take())
    })?;
    let closed = match &sock {
        Some(sock) => sock.call_method0(py, intern!(py, "close")).map(drop),
        None => Ok(()),
    };
    let detached = match &server {
        Some(server) => server.call_method0(py, intern!(py, "_detach")).map(drop),
        None => Ok(()),
    };
    drop((sock, server));
    let references = with_common(slf, Common::take_references)?;
    result?;
    closed?;
    detached?;
    T::after_connection_lost(slf)?;
    drop((references, transport));
    Ok(())
}

pub fn pause_reading<T: Core>(slf: &Bound<'_, T>) -> PyResult<()> {
    let paused = with_common(slf, |c| {
        let pause = !c.closing && !c.paused;
        c.paused |= pause;
        pause
    })?;
    if paused {
        remove(slf, Side::Read)?;
        debug_log(slf, "%r pauses reading")?;
    }
    Ok(())
}

pub fn resume_reading<T: Core>(slf: &Bound<'_, T>) -> PyResult<()> {
    let resumed = with_common(slf, |c| {
        let resume = !c.closing && c.paused;
        if resume {
            c.paused = false;
        }
        resume
    })?;
    if resumed {
        start_reading(slf)?;
        debug_log(slf, "%r resumes reading")?;
    }
    Ok(())
}

/// `_add_reader(fd, self._read_ready)`: registers the reader unless reading is paused or the
/// transport is closing.
pub fn start_reading<T: Core>(slf: &Bound<'_, T>) -> PyResult<()> {
    if is_reading(slf)? {
        if let Some(lp) = event_loop(slf)? {
            LoopCore::add_fd_callback(
                &lp,
                slf.get().fd(),
                Side::Read,
                slf.as_any(),
                &PyTuple::empty(slf.py()),
                Invoke::Reader(T::READER),
            )?;
        }
    }
    Ok(())
}

pub fn is_reading<T: Core>(slf: &Bound<'_, T>) -> PyResult<bool> {
    with_common(slf, |c| !c.closing && !c.paused)
}

pub fn set_protocol<T: Core>(slf: &Bound<'_, T>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
    let buffered = py_helpers::is_buffered_protocol(protocol)?;
    let old = with_common(slf, |c| {
        c.buffered = buffered;
        c.protocol_connected = true;
        c.protocol.replace(protocol.clone().unbind())
    })?;
    drop(old);
    Ok(())
}

/// `__clear__`: lets go of the references a cycle may run through.
pub fn clear<T: Core>(core: &T) {
    // The collector runs with the GIL held; `attach` only hands us the token.
    Python::attach(|py| {
        let taken = core.cell().with(py, |s| T::common(s).take_references());
        drop(taken);
    });
}

/// The `#[pymethods]` block of a transport core: asyncio's `_SelectorTransport` methods and
/// attributes (forwarding to the functions above), followed by the core's own methods.
/// (PyO3 takes one `#[pymethods]` block per class, so the shared part is spliced in here.)
macro_rules! transport_pymethods {
    ($ty:ty { $($own:tt)* }) => {
        #[pyo3::pymethods]
        impl $ty {
            $($own)*

            fn __clear__(&self) {
                $crate::transports::common::clear(self);
            }

            /// `close()`: stop reading; once the buffer is flushed, `connection_lost(None)`.
            fn close(slf: &Bound<'_, Self>) -> PyResult<()> {
                $crate::transports::common::close(slf)
            }

            /// `abort()`: drop the buffer and close at once.
            fn abort(slf: &Bound<'_, Self>) -> PyResult<()> {
                $crate::transports::common::force_close(slf, slf.py().None().bind(slf.py()))
            }

            fn _force_close(slf: &Bound<'_, Self>, exc: &Bound<'_, PyAny>) -> PyResult<()> {
                $crate::transports::common::force_close(slf, exc)
            }

            fn _call_connection_lost(
                slf: &Bound<'_, Self>,
                exc: &Bound<'_, PyAny>,
            ) -> PyResult<()> {
                $crate::transports::common::call_connection_lost(slf, exc)
            }

            fn pause_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
                $crate::transports::common::pause_reading(slf)
            }

            fn resume_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
                $crate::transports::common::resume_reading(slf)
            }

            fn _start_reading(slf: &Bound<'_, Self>) -> PyResult<()> {
                $crate::transports::common::start_reading(slf)
            }

            fn is_reading(slf: &Bound<'_, Self>) -> PyResult<bool> {
                $crate::transports::common::is_reading(slf)
            }

            fn is_closing(slf: &Bound<'_, Self>) -> PyResult<bool> {
                $crate::transports::common::with_common(slf, |c| c.closing)
            }

            fn set_protocol(slf: &Bound<'_, Self>, protocol: &Bound<'_, PyAny>) -> PyResult<()> {
                $crate::transports::common::set_protocol(slf, protocol)
            }

            fn get_protocol(slf: &Bound<'_, Self>) -> PyResult<Option<Py<PyAny>>> {
                Ok($crate::transports::common::protocol(slf)?.map(Bound::unbind))
            }

            fn get_write_buffer_size(slf: &Bound<'_, Self>) -> PyResult<usize> {
                $crate::transports::common::with(slf, |s| {
                    <Self as $crate::transports::common::Core>::buffered(s)
                })
            }

            fn get_write_buffer_limits(
                slf: &Bound<'_, Self>,
            ) -> PyResult<(Py<PyAny>, Py<PyAny>)> {
                $crate::transports::common::get_write_buffer_limits(slf)
            }

            /// `set_write_buffer_limits(high=None, low=None)` with `_FlowControlMixin`'s
            /// defaults.
            #[pyo3(signature = (high = None, low = None))]
            fn set_write_buffer_limits(
                slf: &Bound<'_, Self>,
                high: Option<&Bound<'_, PyAny>>,
                low: Option<&Bound<'_, PyAny>>,
            ) -> PyResult<()> {
                $crate::transports::common::set_write_buffer_limits(slf, high, low)
            }

            #[getter]
            fn _loop(slf: &Bound<'_, Self>) -> PyResult<Option<Py<PyAny>>> {
                Ok($crate::transports::common::event_loop(slf)?.map(|l| l.into_any().unbind()))
            }

            #[getter]
            fn _sock(slf: &Bound<'_, Self>) -> PyResult<Option<Py<PyAny>>> {
                Ok($crate::transports::common::sock(slf)?.map(Bound::unbind))
            }

            #[getter]
            fn _sock_fd(&self) -> std::os::fd::RawFd {
                <Self as $crate::transports::common::Core>::fd(self)
            }

            #[getter]
            fn _protocol(slf: &Bound<'_, Self>) -> PyResult<Option<Py<PyAny>>> {
                Ok($crate::transports::common::protocol(slf)?.map(Bound::unbind))
            }

            #[getter]
            fn _closing(slf: &Bound<'_, Self>) -> PyResult<bool> {
                $crate::transports::common::with_common(slf, |c| c.closing)
            }

            #[getter]
            fn _conn_lost(slf: &Bound<'_, Self>) -> PyResult<u32> {
                $crate::transports::common::with_common(slf, |c| c.conn_lost)
            }

            #[getter]
            fn _paused(slf: &Bound<'_, Self>) -> PyResult<bool> {
                $crate::transports::common::with_common(slf, |c| c.paused)
            }

            #[getter]
            fn _protocol_paused(slf: &Bound<'_, Self>) -> PyResult<bool> {
                $crate::transports::common::with_common(slf, |c| c.flow.paused)
            }
        }
    };
}

pub(crate) use transport_pymethods;
