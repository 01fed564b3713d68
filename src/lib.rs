//! `ferroloop._ferroloop`: the binding between Python and `ferroloop-core`.
//!
//! This crate only translates. It owns no scheduling logic of its own: the containers, the
//! poller and the waker come from `ferroloop-core`; this crate fills them with Python handles and
//! drives one iteration in [`run_once`]. The Python package (`python/ferroloop/`) puts the
//! asyncio-facing `Loop` class on top of [`event_loop::LoopCore`].
//!
//! Ground rule of every module here: **no borrow of loop state is held while Python code may
//! run** — and dropping a Python object counts as running Python code (`__del__`, weakref
//! callbacks, the garbage collector). State is borrowed for pure-Rust steps only; handles that
//! leave the state are dropped after the borrow ends.
#![deny(unsafe_op_in_unsafe_fn)]

mod buffers;
mod context;
mod errors;
mod event_loop;
mod fastcall;
mod freelist;
mod gil_cell;
mod handles;
mod py_helpers;
mod run_once;
mod sock_ops;
mod tls;
mod transports;

use pyo3::prelude::*;

/// The native module. Mirrors the private half of `asyncio.base_events`.
#[pymodule]
fn _ferroloop(m: &Bound<'_, PyModule>) -> PyResult<()> {
    refuse_free_threading(m.py())?;
    m.add_class::<event_loop::LoopCore>()?;
    fastcall::install(m.py(), &m.py().get_type::<event_loop::LoopCore>())?;
    m.add_class::<handles::Handle>()?;
    m.add_class::<handles::TimerHandle>()?;
    freelist::install(
        &m.py().get_type::<handles::Handle>(),
        &m.py().get_type::<handles::TimerHandle>(),
    );
    m.add_class::<transports::socket::SocketTransportCore>()?;
    m.add_class::<transports::datagram::DatagramTransportCore>()?;
    m.add_function(wrap_pyfunction!(transports::pipe::read_pipe, m)?)?;
    m.add_function(wrap_pyfunction!(tls::tls_read, m)?)?;
    m.add_function(wrap_pyfunction!(tls::tls_write, m)?)?;
    m.add_function(wrap_pyfunction!(tls::tls_flush, m)?)?;
    m.add_function(wrap_pyfunction!(tls::tls_install_bios, m)?)?;
    m.add_function(wrap_pyfunction!(tls::live_tls_bios, m)?)?;
    m.add_class::<tls::TlsBio>()?;
    m.add_function(wrap_pyfunction!(handles::live_handles, m)?)?;
    m.add_function(wrap_pyfunction!(event_loop::loops_created, m)?)?;
    Ok(())
}

/// `GilCell` relies on the GIL to serialise access: refuse to load where there is none.
fn refuse_free_threading(py: Python<'_>) -> PyResult<()> {
    let sys = py.import("sys")?;
    if let Ok(is_gil_enabled) = sys.getattr("_is_gil_enabled") {
        if !is_gil_enabled.call0()?.is_truthy()? {
            return Err(pyo3::exceptions::PyImportError::new_err(
                "ferroloop needs the GIL: it does not support free-threaded CPython yet",
            ));
        }
    }
    Ok(())
}
