//! The data pump of ferroloop's `SSLProtocol` (`python/ferroloop/_tls.py`): the loops over
//! `ssl.SSLObject` that asyncio's `sslproto` runs in Python once per received chunk and once
//! per write, and the flush of the records to the transport.
//!
//! A connection is pumped through one of two channels:
//! - **direct**, when its `SSL` reads and writes through ferroloop's BIOs ([`bio::TlsBio`],
//!   installed by `tls_install_bios` before the handshake): the pump calls OpenSSL itself
//!   (`openssl.rs`), with the GIL held, decrypting into the bytes object it hands to
//!   `data_received`; a received chunk is lent to OpenSSL instead of copied into a BIO, and
//!   the records go to ferroloop's socket transport as a slice;
//! - **Python**, otherwise (asyncio's `MemoryBIO`s, or OpenSSL out of reach): the pump calls
//!   the C object behind `ssl.SSLObject` (its `_sslobj`, an `_ssl._SSLSocket`), skipping the
//!   Python wrapper methods of `SSLObject`.
//!
//! Invariants:
//! - the results and the exceptions are those of asyncio's loops: `SSLWantReadError` and
//!   `SSLSyscallError` (asyncio's `SSLAgainErrors`) end a loop quietly, any other exception
//!   propagates and drops what the loop had gathered, as in asyncio;
//! - the direct channel handles only the outcomes it can tell apart without `_ssl`: data,
//!   "want read", and a clean close_notify (`SSL_ERROR_ZERO_RETURN` with exactly
//!   `SSL_RECEIVED_SHUTDOWN`, as `_ssl` tests it). Any other outcome is handed to the Python
//!   channel, whose `_ssl` call meets the same condition (OpenSSL's error queue and the
//!   connection's error state are left as they were) and raises the exception `_ssl` raises;
//! - reading stops without another read once neither the incoming BIO nor the `SSL` holds
//!   bytes (see `_tls.py` for why that is safe), so the common path raises no
//!   `SSLWantReadError` at all.

mod bio;
mod openssl;

pub use bio::{live_tls_bios, tls_install_bios, TlsBio};

use crate::buffers;
use crate::transports::socket::SocketTransportCore;
use openssl::{Api, Ssl};
use pyo3::exceptions::{PyOverflowError, PyValueError};
use pyo3::ffi;
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::{PyBytes, PySlice, PyType};
use std::ffi::c_void;

/// `ssl.SSLWantReadError` and `ssl.SSLSyscallError`: asyncio's `sslproto.SSLAgainErrors`.
static AGAIN_ERRORS: PyOnceLock<(Py<PyType>, Py<PyType>)> = PyOnceLock::new();

fn is_again(py: Python<'_>, err: &PyErr) -> PyResult<bool> {
    let (want_read, syscall) = AGAIN_ERRORS.get_or_try_init(py, || {
        let ssl = py.import("ssl")?;
        Ok::<_, PyErr>((
            ssl.getattr("SSLWantReadError")?
                .cast_into::<PyType>()?
                .unbind(),
            ssl.getattr("SSLSyscallError")?
                .cast_into::<PyType>()?
                .unbind(),
        ))
    })?;
    Ok(err.is_instance(py, want_read.bind(py)) || err.is_instance(py, syscall.bind(py)))
}

/// The `_ssl._SSLSocket` behind an `ssl.SSLObject`.
fn native<'py>(sslobj: &Bound<'py, PyAny>) -> Bound<'py, PyAny> {
    sslobj
        .getattr(intern!(sslobj.py(), "_sslobj"))
        .unwrap_or_else(|_| sslobj.clone())
}

/// Whether a `read()` could return anything: bytes in the incoming BIO or decrypted ones.
fn readable(ssl: &Bound<'_, PyAny>, incoming: &Bound<'_, PyAny>) -> PyResult<bool> {
    Ok(pending(incoming)? > 0 || ssl_pending(ssl)? > 0)
}

/// A connection on the direct channel: its `SSL` and one of its [`TlsBio`]s.
struct Direct<'a, 'py> {
    py: Python<'py>,
    api: &'static Api,
    ssl: *mut Ssl,
    bio: &'a TlsBio,
}

/// How one direct call ended when it moved no bytes.
enum Stop {
    /// Nothing more now, or the peer's close_notify.
    Read(More),
    /// An outcome for `_ssl` to report (see the module invariants).
    Delegate,
}

impl<'a, 'py> Direct<'a, 'py> {
    /// The direct channel for `ssl` (an `_ssl._SSLSocket`) if `bio` is one of its `TlsBio`s.
    fn of(ssl: &Bound<'py, PyAny>, bio: &'a Bound<'py, PyAny>) -> Option<Self> {
        let bio = bio.cast::<TlsBio>().ok()?.get();
        let py = ssl.py();
        let loaded = openssl::api(py)?;
        let ssl = openssl::ssl_of(loaded, ssl)?;
        Some(Self {
            py,
            api: &loaded.api,
            ssl,
            bio,
        })
    }

    /// Ciphertext in the incoming BIO plus plaintext OpenSSL has decrypted but not handed out.
    fn held(&self) -> PyResult<usize> {
        // SAFETY: `ssl` is the live `SSL` of an `_ssl._SSLSocket` the caller holds.
        let decrypted = unsafe { (self.api.ssl_pending)(self.ssl) };
        Ok(self.bio.pending_len(self.py)? + usize::try_from(decrypted).unwrap_or(0))
    }

    /// One `SSL_read_ex` into `out`; the byte count, or why none came.
    fn read_once(&self, out: *mut u8, len: usize) -> Result<usize, Stop> {
        let mut n = 0;
        // SAFETY: `ssl` is live (see `held`); `out` is writable for `len` bytes (the caller's
        // bytes writer). No Python code runs: the direct channel is only installed for
        // contexts without Python callbacks on reads (`_tls.py`).
        unsafe {
            let ok = (self.api.ssl_read_ex)(self.ssl, out.cast::<c_void>(), len, &mut n);
            if ok == 1 {
                return Ok(n);
            }
            match (self.api.ssl_get_error)(self.ssl, ok) {
                openssl::SSL_ERROR_WANT_READ => Err(Stop::Read(More::No)),
                openssl::SSL_ERROR_ZERO_RETURN
                    if (self.api.ssl_get_shutdown)(self.ssl) == openssl::SSL_RECEIVED_SHUTDOWN =>
                {
                    Err(Stop::Read(More::Eof))
                }
                _ => Err(Stop::Delegate),
            }
        }
    }

    /// Reads all that is held into `chunks` (usually one bytes object sized by what is held);
    /// `None` if an outcome must be left to `_ssl`.
    fn read(&self, chunks: &mut Vec<Bound<'py, PyBytes>>) -> PyResult<Option<More>> {
        let py = self.py;
        loop {
            let held = self.held()?;
            if held == 0 {
                return Ok(Some(More::No));
            }
            // The plaintext is shorter than the ciphertext held, plus at most one record that
            // OpenSSL may have taken from the BIO earlier and still be waiting to complete.
            let size = held + MAX_RECORD;
            let mut writer = BytesWriter::new(py, size)?;
            let mut filled = 0;
            let stop = loop {
                if filled == size {
                    break None;
                }
                if filled > 0 && self.held()? == 0 {
                    break Some(Stop::Read(More::No));
                }
                match self.read_once(writer.data(filled), size - filled) {
                    Ok(n) => filled += n.min(size - filled),
                    Err(stop) => break Some(stop),
                }
            };
            chunks.extend(writer.finish(py, filled)?);
            match stop {
                None => continue,
                Some(Stop::Read(more)) => return Ok(Some(more)),
                Some(Stop::Delegate) => return Ok(None),
            }
        }
    }

    /// One `SSL_write_ex` of `data`: the count written, or why none was.
    fn write_once(&self, data: &[u8]) -> Result<usize, Stop> {
        if data.is_empty() {
            return Err(Stop::Delegate);
        }
        let mut n = 0;
        // SAFETY: `ssl` is live (see `held`); `data` is readable for its length.
        unsafe {
            let ok = (self.api.ssl_write_ex)(
                self.ssl,
                data.as_ptr().cast::<c_void>(),
                data.len(),
                &mut n,
            );
            if ok == 1 {
                return Ok(n);
            }
            match (self.api.ssl_get_error)(self.ssl, ok) {
                openssl::SSL_ERROR_WANT_READ => Err(Stop::Read(More::No)),
                _ => Err(Stop::Delegate),
            }
        }
    }
}

/// `SSLProtocol._do_read__copied`'s loop: reads what the incoming BIO holds, after
/// `buffer[:received]` (a chunk just received, not yet in the BIO), and returns the decrypted
/// bytes joined (`None` if there were none) and whether the peer's close_notify came.
#[pyfunction]
#[pyo3(signature = (sslobj, incoming, max_size, buffer = None, received = 0))]
pub fn tls_read<'py>(
    sslobj: &Bound<'py, PyAny>,
    incoming: &Bound<'py, PyAny>,
    max_size: usize,
    buffer: Option<&Bound<'py, PyAny>>,
    received: usize,
) -> PyResult<(Option<Bound<'py, PyBytes>>, bool)> {
    let py = sslobj.py();
    let ssl = native(sslobj);
    let buffer = buffer.filter(|_| received > 0);
    let mut chunks: Vec<Bound<'py, PyBytes>> = Vec::new();
    if let Some(direct) = Direct::of(&ssl, incoming) {
        let stop = match buffer {
            Some(buffer) => buffers::with_readable(buffer, |bytes| {
                let chunk = bytes.get(..received).ok_or_else(|| {
                    PyValueError::new_err("received more bytes than the buffer holds")
                })?;
                direct.bio.lend(py, chunk, || direct.read(&mut chunks))
            })???,
            None => direct.read(&mut chunks)?,
        };
        if let Some(more) = stop {
            return Ok((join(py, chunks)?, more == More::Eof));
        }
        // An outcome for `_ssl`: its read meets the same condition (OpenSSL may have consumed
        // the bytes behind it, so the BIOs can look empty now) and raises what it raises.
        match ssl.call_method1(intern!(py, "read"), (MAX_RECORD,)) {
            Ok(chunk) => {
                let chunk = chunk.cast_into::<PyBytes>()?;
                if chunk.as_bytes().is_empty() {
                    return Ok((join(py, chunks)?, true));
                }
                chunks.push(chunk);
            }
            Err(err) if is_again(py, &err)? => return Ok((join(py, chunks)?, false)),
            Err(err) => return Err(err),
        }
    } else if let Some(buffer) = buffer {
        let view = pyo3::types::PyMemoryView::from(buffer)?;
        incoming.call_method1(
            intern!(py, "write"),
            (view.get_item(PySlice::new(py, 0, received as isize, 1))?,),
        )?;
    }
    python_read(&ssl, incoming, max_size, chunks)
}

/// The Python channel of [`tls_read`], after `chunks` came from the direct one.
///
/// When the BIOs hold more than one record, the records are decrypted straight into the bytes
/// object handed to the protocol, sized by what the BIOs hold (ciphertext is longer than its
/// plaintext), instead of one bytes object per record joined afterwards: that saves a copy of
/// every byte of a bulk transfer. A single record is returned as `read()` made it.
fn python_read<'py>(
    ssl: &Bound<'py, PyAny>,
    incoming: &Bound<'py, PyAny>,
    max_size: usize,
    mut chunks: Vec<Bound<'py, PyBytes>>,
) -> PyResult<(Option<Bound<'py, PyBytes>>, bool)> {
    let py = ssl.py();
    let held = pending(incoming)? + ssl_pending(ssl)?;
    if held == 0 {
        return Ok((join(py, chunks)?, false));
    }
    let mut more = More::Maybe;
    if held >= MAX_RECORD {
        // Several records: decrypt them into one object. OpenSSL may also hold the start of a
        // record taken from the BIO by an earlier read that then lacked the rest: up to one
        // record's plaintext more than the BIOs show.
        let (first, stop) = read_into_new(ssl, incoming, held + MAX_RECORD)?;
        chunks.extend(first);
        more = stop;
    }
    // Less than a record's worth, or (TLS 1.2 compression, off by default) more plaintext
    // than the bound: record by record. One read returns one record's plaintext at most, so
    // it asks for no more than that: the bytes object `_ssl` allocates (then shrinks) stays on
    // the heap, where a `max_size` (256 KiB) request costs an mmap, an mremap and an munmap per
    // read with glibc.
    let record_size = max_size.min(MAX_RECORD);
    // `held` showed bytes to read unless the writer path above already consumed them.
    let mut known_readable = held < MAX_RECORD;
    while more == More::Maybe && (std::mem::take(&mut known_readable) || readable(ssl, incoming)?) {
        match ssl.call_method1(intern!(py, "read"), (record_size,)) {
            Ok(chunk) => {
                let chunk = chunk.cast_into::<PyBytes>()?;
                if chunk.as_bytes().is_empty() {
                    more = More::Eof;
                } else {
                    chunks.push(chunk);
                }
            }
            Err(err) if is_again(py, &err)? => break,
            Err(err) => return Err(err),
        }
    }
    Ok((join(py, chunks)?, more == More::Eof))
}

/// `SSLProtocol._do_write`'s loop: encrypts the protocol's `_write_backlog` into its outgoing
/// BIO and keeps its `_write_buffer_size` up to date, as asyncio's loop does item by item.
#[pyfunction]
pub fn tls_write(protocol: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = protocol.py();
    let backlog = protocol.getattr(intern!(py, "_write_backlog"))?;
    let ssl = native(&protocol.getattr(intern!(py, "_sslobj"))?);
    let outgoing = protocol.getattr(intern!(py, "_outgoing"))?;
    let direct = Direct::of(&ssl, &outgoing);
    let mut size: isize = protocol
        .getattr(intern!(py, "_write_buffer_size"))?
        .extract()?;
    let result = write_backlog(&ssl, direct.as_ref(), &backlog, &mut size);
    protocol.setattr(intern!(py, "_write_buffer_size"), size)?;
    result
}

/// Writes the backlog until it is empty or OpenSSL asks to wait; `size` follows each write.
fn write_backlog(
    ssl: &Bound<'_, PyAny>,
    direct: Option<&Direct<'_, '_>>,
    backlog: &Bound<'_, PyAny>,
    size: &mut isize,
) -> PyResult<()> {
    let py = ssl.py();
    while backlog.len()? > 0 {
        let data = backlog.get_item(0)?;
        let direct_result = match direct {
            Some(direct) => buffers::with_readable(&data, |bytes| direct.write_once(bytes))
                .unwrap_or(Err(Stop::Delegate)),
            None => Err(Stop::Delegate),
        };
        let count: isize = match direct_result {
            Ok(count) => isize::try_from(count).unwrap_or(isize::MAX),
            Err(Stop::Read(_)) => return Ok(()),
            Err(Stop::Delegate) => match ssl.call_method1(intern!(py, "write"), (&data,)) {
                Ok(count) => count.extract()?,
                Err(err) if is_again(py, &err)? => return Ok(()),
                Err(err) => return Err(err),
            },
        };
        let data_len = isize::try_from(data.len()?).unwrap_or(isize::MAX);
        if count < data_len {
            let rest = data.get_item(PySlice::new(py, count, data_len, 1))?;
            backlog.set_item(0, rest)?;
            *size -= count;
        } else {
            backlog.call_method0(intern!(py, "popleft"))?;
            *size -= data_len;
        }
    }
    Ok(())
}

/// `SSLProtocol._process_outgoing`'s flush: what the outgoing BIO holds goes to `transport`.
/// From a [`TlsBio`] to ferroloop's socket transport the records go as a slice (no bytes
/// object; sent at once when nothing is buffered, as `write` does).
#[pyfunction]
pub fn tls_flush(outgoing: &Bound<'_, PyAny>, transport: &Bound<'_, PyAny>) -> PyResult<()> {
    let py = outgoing.py();
    let Ok(bio) = outgoing.cast::<TlsBio>() else {
        let data = outgoing.call_method0(intern!(py, "read"))?;
        if data.len()? > 0 {
            transport.call_method1(intern!(py, "write"), (data,))?;
        }
        return Ok(());
    };
    let bio = bio.get();
    let data = bio.take_output(py)?;
    let result = if data.is_empty() {
        Ok(())
    } else if let Ok(core) = transport.cast::<SocketTransportCore>() {
        // Python code may run in there (pause_writing) and write more records: they queue
        // behind these, in the BIO.
        SocketTransportCore::write_slice(core, &data)
    } else {
        transport
            .call_method1(intern!(py, "write"), (PyBytes::new(py, &data),))
            .map(drop)
    };
    bio.give_back(py, data);
    result
}

/// The largest plaintext of one TLS record (RFC 8446, 5.1).
const MAX_RECORD: usize = 16 * 1024;

/// Why [`read_into_new`] stopped.
#[derive(Clone, Copy, PartialEq, Eq)]
enum More {
    /// Nothing more to read now (`SSLWantReadError`, or both BIOs empty).
    No,
    /// The peer's close_notify came.
    Eof,
    /// The buffer filled up: there may be more.
    Maybe,
}

/// Reads up to `size` decrypted bytes into a new bytes object (`None` if none came).
fn read_into_new<'py>(
    ssl: &Bound<'py, PyAny>,
    incoming: &Bound<'py, PyAny>,
    size: usize,
) -> PyResult<(Option<Bound<'py, PyBytes>>, More)> {
    let py = ssl.py();
    let mut writer = BytesWriter::new(py, size)?;
    let mut filled = 0;
    let more = loop {
        if filled == size {
            break More::Maybe;
        }
        if filled > 0 && !readable(ssl, incoming)? {
            break More::No;
        }
        let view = writer.view_from(py, filled)?;
        let result = ssl.call_method1(intern!(py, "read"), (size - filled, &view));
        // Nothing may use the view once the writer is finished; `read()` keeps no reference,
        // and a released memoryview refuses every access even if something did.
        view.call_method0(intern!(py, "release"))?;
        match result {
            Ok(count) => match count.extract::<usize>()? {
                0 => break More::Eof,
                n => filled += n.min(size - filled),
            },
            Err(err) if is_again(py, &err)? => break More::No,
            Err(err) => return Err(err),
        }
    };
    Ok((writer.finish(py, filled)?, more))
}

/// A bytes object under construction (CPython's `PyBytesWriter`, through PyO3's
/// compatibility shim before 3.15): discarded on drop unless finished.
struct BytesWriter {
    raw: *mut ffi::compat::PyBytesWriter,
    size: usize,
}

impl BytesWriter {
    fn new(py: Python<'_>, size: usize) -> PyResult<Self> {
        let len = ffi::Py_ssize_t::try_from(size)
            .map_err(|_| PyOverflowError::new_err("TLS read buffer too large"))?;
        // SAFETY: the GIL is held (`py`); the result is a writer or NULL with an exception.
        let raw = unsafe { ffi::compat::PyBytesWriter_Create(len) };
        if raw.is_null() {
            return Err(PyErr::fetch(py));
        }
        Ok(Self { raw, size })
    }

    /// The writer's bytes from `offset` on (`size - offset` of them), for OpenSSL to fill.
    fn data(&mut self, offset: usize) -> *mut u8 {
        // SAFETY: `raw` is a live writer of `size` bytes (created in `new`, not finished) and
        // `offset <= size`; the buffer stays put until the writer is finished or discarded.
        unsafe {
            ffi::compat::PyBytesWriter_GetData(self.raw)
                .cast::<u8>()
                .add(offset)
        }
    }

    /// A writable memoryview of the writer's bytes from `offset` to the end.
    fn view_from<'py>(&mut self, py: Python<'py>, offset: usize) -> PyResult<Bound<'py, PyAny>> {
        let len = self.size - offset;
        // SAFETY: `raw` is a live writer of `size` bytes (created in `new`, not finished);
        // `offset < size`, so the range `offset..size` lies inside its buffer, which stays put
        // until the writer is finished or discarded (the caller releases the view before).
        let view = unsafe {
            let data = ffi::compat::PyBytesWriter_GetData(self.raw).cast::<std::os::raw::c_char>();
            ffi::PyMemoryView_FromMemory(data.add(offset), len as ffi::Py_ssize_t, ffi::PyBUF_WRITE)
        };
        // SAFETY: GIL held; `view` is a new reference or NULL with an exception set.
        unsafe { Bound::from_owned_ptr_or_err(py, view) }
    }

    /// The first `filled` bytes as a bytes object, or `None` if `filled` is 0.
    fn finish<'py>(
        mut self,
        py: Python<'py>,
        filled: usize,
    ) -> PyResult<Option<Bound<'py, PyBytes>>> {
        if filled == 0 {
            return Ok(None);
        }
        let raw = std::mem::replace(&mut self.raw, std::ptr::null_mut());
        // SAFETY: `raw` is a live writer, consumed here (set to NULL above so `Drop` skips it);
        // `filled <= size` bytes of it were written by `read()`. Returns a new reference or
        // NULL with an exception.
        let bytes = unsafe {
            Bound::from_owned_ptr_or_err(
                py,
                ffi::compat::PyBytesWriter_FinishWithSize(raw, filled as ffi::Py_ssize_t),
            )?
        };
        Ok(Some(bytes.cast_into::<PyBytes>()?))
    }
}

impl Drop for BytesWriter {
    fn drop(&mut self) {
        if !self.raw.is_null() {
            // SAFETY: a live writer that was not finished; writers only exist while the GIL is
            // held (they are created and dropped inside `tls_read`).
            unsafe { ffi::compat::PyBytesWriter_Discard(self.raw) }
        }
    }
}

/// `MemoryBIO.pending`.
fn pending(bio: &Bound<'_, PyAny>) -> PyResult<usize> {
    bio.getattr(intern!(bio.py(), "pending"))?.extract()
}

/// `SSLObject.pending()`: decrypted bytes not read yet.
fn ssl_pending(ssl: &Bound<'_, PyAny>) -> PyResult<usize> {
    ssl.call_method0(intern!(ssl.py(), "pending"))?.extract()
}

/// `b''.join(chunks)`, without a copy for a single chunk; `None` for none.
fn join<'py>(
    py: Python<'py>,
    mut chunks: Vec<Bound<'py, PyBytes>>,
) -> PyResult<Option<Bound<'py, PyBytes>>> {
    if chunks.len() <= 1 {
        return Ok(chunks.pop());
    }
    let mut parts = Vec::with_capacity(chunks.len());
    for chunk in &chunks {
        parts.push(chunk.as_bytes());
    }
    Ok(Some(PyBytes::new(py, &parts.concat())))
}
