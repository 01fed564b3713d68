//! Native transports: the objects asyncio's `_make_socket_transport` and
//! `_make_datagram_transport` return, with the data path (receive, the protocol's callbacks, sending, flushing) in Rust. Each mirrors its asyncio counterpart in `selector_events.py` and
//! sits behind a Python class in `python/ferroloop/_transports.py` that is a real
//! `asyncio.Transport`. This module holds what the transports share: asyncio's flow control
//! (`_FlowControlMixin`), the split between errors that end a connection and those that leave
//! the loop, and the checks on written data.

pub mod common;
pub mod datagram;
pub mod pipe;
pub mod recycled_bytes;
pub mod socket;

use crate::gil_cell::GilCell;
use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyMemoryView};
use std::io;

/// `_SelectorTransport.max_size`: the most one receive reads.
pub const MAX_SIZE: usize = 256 * 1024;

/// `constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES`.
pub const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u32 = 5;

/// One receive buffer for all transports and `sock_recv`: a receive fills it and its bytes are
/// copied into the `bytes` handed to the protocol, so an idle connection holds no receive
/// memory.
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

/// Whether an exception must leave the loop (`SystemExit`, `KeyboardInterrupt`) rather than be
/// handled as a fatal transport error.
pub fn escapes(py: Python<'_>, err: &PyErr) -> bool {
    err.is_instance_of::<PyKeyboardInterrupt>(py) || err.is_instance_of::<PySystemExit>(py)
}

/// `BlockingIOError`/`InterruptedError`: try again at the next readiness.
pub fn is_retry(err: &io::Error) -> bool {
    matches!(
        err.kind(),
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted
    )
}

/// asyncio's check on `write`/`sendto` data: `bytes`, `bytearray` or `memoryview`.
pub fn check_bytes_like(data: &Bound<'_, PyAny>) -> PyResult<()> {
    if data.is_instance_of::<PyBytes>()
        || data.is_instance_of::<PyByteArray>()
        || data.is_instance_of::<PyMemoryView>()
    {
        return Ok(());
    }
    Err(PyTypeError::new_err(format!(
        "data argument must be a bytes-like object, not {}",
        data.get_type().name()?.repr()?
    )))
}

/// Which native transport a reader handle calls (`handles::Invoke::Reader`): the handle's
/// callback is that transport's core.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReaderKind {
    Socket,
    Datagram,
}

impl ReaderKind {
    /// `core._read_ready()`, called from Rust.
    pub fn read_ready(self, core: &Bound<'_, PyAny>) -> PyResult<()> {
        match self {
            ReaderKind::Socket => socket::SocketTransportCore::_read_ready(core.cast()?),
            ReaderKind::Datagram => datagram::DatagramTransportCore::_read_ready(core.cast()?),
        }
    }
}

/// `_FlowControlMixin`'s state: the water marks and whether the protocol was paused. The marks
/// are kept as given (asyncio accepts any number, `1e6` or `2**70` alike) and compared as `f64`.
pub struct FlowControl {
    pub high: Py<PyAny>,
    pub low: Py<PyAny>,
    high_f: f64,
    low_f: f64,
    pub paused: bool,
}

impl FlowControl {
    /// The defaults: 64 KiB high, 16 KiB low (one pair of `int`s shared by all transports).
    pub fn new(py: Python<'_>) -> PyResult<Self> {
        static DEFAULTS: PyOnceLock<(Py<PyAny>, Py<PyAny>)> = PyOnceLock::new();
        let (high, low) = DEFAULTS.get_or_try_init(py, || {
            parse_limits(py, None, None).map(|(high, low)| (high.unbind(), low.unbind()))
        })?;
        Self::with_limits(high.bind(py).clone(), low.bind(py).clone())
    }

    /// Marks from [`parse_limits`].
    pub fn with_limits(high: Bound<'_, PyAny>, low: Bound<'_, PyAny>) -> PyResult<Self> {
        Ok(Self {
            high_f: high.extract()?,
            low_f: low.extract()?,
            high: high.unbind(),
            low: low.unbind(),
            paused: false,
        })
    }

    /// `_maybe_pause_protocol`: true (and now paused) when `pause_writing()` must be called.
    pub fn pause_needed(&mut self, buffered: usize) -> bool {
        let pause = buffered as f64 > self.high_f && !self.paused;
        self.paused |= pause;
        pause
    }

    /// `_maybe_resume_protocol`: true (and no longer paused) when `resume_writing()` is due.
    pub fn resume_needed(&mut self, buffered: usize) -> bool {
        let resume = self.paused && buffered as f64 <= self.low_f;
        if resume {
            self.paused = false;
        }
        resume
    }
}

/// `_FlowControlMixin._set_write_buffer_limits(high, low)`: the defaults and the check, with
/// asyncio's `ValueError` message. Returns `(high, low)` as Python numbers.
pub fn parse_limits<'py>(
    py: Python<'py>,
    high: Option<&Bound<'py, PyAny>>,
    low: Option<&Bound<'py, PyAny>>,
) -> PyResult<(Bound<'py, PyAny>, Bound<'py, PyAny>)> {
    let high = high.filter(|v| !v.is_none());
    let low = low.filter(|v| !v.is_none());
    let high: Bound<'py, PyAny> = match (high, low) {
        (Some(high), _) => high.clone(),
        (None, Some(low)) => low.mul(4)?,
        (None, None) => (64usize * 1024).into_pyobject(py)?.into_any(),
    };
    let low: Bound<'py, PyAny> = match low {
        Some(low) => low.clone(),
        None => high.floor_div(4)?,
    };
    if !(high.ge(&low)? && low.ge(0)?) {
        return Err(PyValueError::new_err(format!(
            "high ({}) must be >= low ({}) must be >= 0",
            high.repr()?,
            low.repr()?
        )));
    }
    Ok((high, low))
}

/// Calls `protocol.pause_writing()`/`resume_writing()`; a failure goes to the loop's exception
/// handler with asyncio's message, except `SystemExit`/`KeyboardInterrupt`, which propagate.
pub fn flow_call(
    event_loop: Option<&Bound<'_, PyAny>>,
    transport: &Bound<'_, PyAny>,
    protocol: &Bound<'_, PyAny>,
    method: &str,
) -> PyResult<()> {
    let py = transport.py();
    let Err(err) = protocol.call_method0(method) else {
        return Ok(());
    };
    if escapes(py, &err) {
        return Err(err);
    }
    let context = PyDict::new(py);
    context.set_item("message", format!("protocol.{method}() failed"))?;
    context.set_item("exception", err.into_value(py))?;
    context.set_item("transport", transport)?;
    context.set_item("protocol", protocol)?;
    if let Some(lp) = event_loop {
        lp.call_method1(intern!(py, "call_exception_handler"), (context,))?;
    }
    Ok(())
}
