//! Python functions the binding borrows from asyncio, imported once and cached.
//!
//! These are used for formatting (reprs, error messages, debug logging) and for the protocol
//! check when a transport gets a protocol; per-callback paths never call them.

use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyTuple;

static FORMAT_CALLBACK_SOURCE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static FORMAT_HANDLE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static EXTRACT_STACK: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static GETFRAME: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static TASKS_MODULE: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

fn cached<'py>(
    py: Python<'py>,
    cell: &'static PyOnceLock<Py<PyAny>>,
    module: &str,
    name: &str,
) -> PyResult<Bound<'py, PyAny>> {
    cell.get_or_try_init(py, || Ok(py.import(module)?.getattr(name)?.unbind()))
        .map(|f| f.bind(py).clone())
}

/// `asyncio.format_helpers._format_callback_source(callback, args)`.
pub fn format_callback_source(
    py: Python<'_>,
    callback: &Bound<'_, PyAny>,
    args: &Bound<'_, PyTuple>,
) -> PyResult<String> {
    let f = cached(
        py,
        &FORMAT_CALLBACK_SOURCE,
        "asyncio.format_helpers",
        "_format_callback_source",
    )?;
    f.call1((callback, args))?.extract()
}

/// `asyncio.base_events._format_handle(handle)`: the task's repr for task steps.
pub fn format_handle(py: Python<'_>, handle: &Bound<'_, PyAny>) -> PyResult<String> {
    cached(py, &FORMAT_HANDLE, "asyncio.base_events", "_format_handle")?
        .call1((handle,))?
        .extract()
}

/// `format_helpers.extract_stack(sys._getframe(0))`: where a handle was created, for debug mode.
/// Called from Rust, frame 0 is the Python code that called the loop method.
pub fn extract_stack(py: Python<'_>) -> PyResult<Py<PyAny>> {
    let frame = cached(py, &GETFRAME, "sys", "_getframe")?.call1((0,))?;
    Ok(cached(
        py,
        &EXTRACT_STACK,
        "asyncio.format_helpers",
        "extract_stack",
    )?
    .call1((frame,))?
    .unbind())
}

/// `asyncio.log.logger.warning('Executing %s took %.3f seconds', handle_text, seconds)`.
pub fn log_slow_callback(py: Python<'_>, handle_text: String, seconds: f64) -> PyResult<()> {
    logger(py)?
        .call_method1(
            "warning",
            ("Executing %s took %.3f seconds", handle_text, seconds),
        )
        .map(drop)
}

/// `asyncio.tasks`, whose `Task` and `_set_task_name` are looked up at each use (tests and
/// libraries patch `asyncio.tasks.Task`).
pub fn tasks_module(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    TASKS_MODULE
        .get_or_try_init(py, || Ok(py.import("asyncio.tasks")?.into_any().unbind()))
        .map(|m| m.bind(py).clone())
}

static LOGGER: PyOnceLock<Py<PyAny>> = PyOnceLock::new();
static BUFFERED_PROTOCOL: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

/// `asyncio.log.logger`.
pub fn logger(py: Python<'_>) -> PyResult<Bound<'_, PyAny>> {
    cached(py, &LOGGER, "asyncio.log", "logger")
}

/// `isinstance(protocol, asyncio.BufferedProtocol)`: transports pick their read path by it.
pub fn is_buffered_protocol(protocol: &Bound<'_, PyAny>) -> PyResult<bool> {
    let class = cached(
        protocol.py(),
        &BUFFERED_PROTOCOL,
        "asyncio.protocols",
        "BufferedProtocol",
    )?;
    protocol.is_instance(&class)
}
