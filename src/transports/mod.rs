//! Native transports: the objects asyncio's `_make_socket_transport` returns, with the data
//! path (receive, the protocol's callbacks, sending, flushing) in Rust. Each mirrors its asyncio counterpart in `selector_events.py` and
//! sits behind a Python class in `python/ferroloop/_transports.py` that is a real
//! `asyncio.Transport`. This module holds what the transports share: asyncio's flow control
//! (`_FlowControlMixin`), the split between errors that end a connection and those that leave
//! the loop, and the checks on written data.

pub mod socket;

use pyo3::exceptions::{PyKeyboardInterrupt, PySystemExit, PyTypeError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyDict, PyMemoryView};
use std::io;

/// `_SelectorTransport.max_size`: the most one receive reads.
pub const MAX_SIZE: usize = 256 * 1024;

/// `constants.LOG_THRESHOLD_FOR_CONNLOST_WRITES`.
pub const LOG_THRESHOLD_FOR_CONNLOST_WRITES: u32 = 5;

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

/// `_FlowControlMixin`'s state: the water marks and whether the protocol was paused.
pub struct FlowControl {
    pub high: usize,
    pub low: usize,
    pub paused: bool,
}

impl Default for FlowControl {
    fn default() -> Self {
        Self {
            high: 64 * 1024,
            low: 16 * 1024,
            paused: false,
        }
    }
}

impl FlowControl {
    /// `_maybe_pause_protocol`: true (and now paused) when `pause_writing()` must be called.
    pub fn pause_needed(&mut self, buffered: usize) -> bool {
        let pause = buffered > self.high && !self.paused;
        self.paused |= pause;
        pause
    }

    /// `_maybe_resume_protocol`: true (and no longer paused) when `resume_writing()` is due.
    pub fn resume_needed(&mut self, buffered: usize) -> bool {
        let resume = self.paused && buffered <= self.low;
        if resume {
            self.paused = false;
        }
        resume
    }
}

/// `_FlowControlMixin._set_write_buffer_limits(high, low)`: the defaults and the check, with
/// asyncio's `ValueError` message.
pub fn parse_limits(
    py: Python<'_>,
    high: Option<&Bound<'_, PyAny>>,
    low: Option<&Bound<'_, PyAny>>,
) -> PyResult<(usize, usize)> {
    let high = high.filter(|v| !v.is_none());
    let low = low.filter(|v| !v.is_none());
    let high: Bound<'_, PyAny> = match (high, low) {
        (Some(high), _) => high.clone(),
        (None, Some(low)) => low.mul(4)?,
        (None, None) => (64usize * 1024).into_pyobject(py)?.into_any(),
    };
    let low: Bound<'_, PyAny> = match low {
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
    Ok((high.extract()?, low.extract()?))
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
