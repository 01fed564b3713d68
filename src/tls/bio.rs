//! `TlsBio`: the BIOs a ferroloop TLS connection reads and writes its records through, in
//! place of asyncio's pair of `ssl.MemoryBIO`s.
//!
//! OpenSSL's memory BIO zero-fills every byte it is given before copying it in, and asyncio
//! copies every received chunk into it and every record out of it. A `TlsBio` is a plain byte
//! queue: nothing is zero-filled, a received chunk can be lent to OpenSSL for the length of one
//! pump call instead of copied in ([`TlsBio::lend`]), and the records OpenSSL writes can be
//! handed to ferroloop's socket transport as a slice ([`TlsBio::take_output`]). The Python
//! methods are `MemoryBIO`'s (`write`, `write_eof`, `read`, `pending`, `eof`), so asyncio's
//! `SSLProtocol` state machine uses it unchanged.
//!
//! Invariants:
//! - the queue lives in the BIO (its data pointer, a `GilCell<Queue>`), freed by the BIO's
//!   destroy callback when OpenSSL and the Python object have both dropped their reference;
//! - the queue is touched only with the GIL held: the pump holds it while it calls OpenSSL
//!   (no atomic operation per callback), and a callback from a `_ssl` method, which releases
//!   the GIL around OpenSSL, takes it back first;
//! - a lent chunk is referenced only between [`TlsBio::lend`]'s start and end, while the lending
//!   thread holds the GIL and the buffer export; whatever OpenSSL did not consume is copied into
//!   the queue before `lend` returns, so no pointer to it outlives the call;
//! - reads serve the queue before the lent chunk: bytes leave in the order they came;
//! - an empty queue holds no buffer: its vector goes to the process's one spare, which the next
//!   queue to get bytes takes (a `MemoryBIO` keeps its largest size for the connection's life);
//! - an empty BIO asks OpenSSL to retry, unless `write_eof` was called: then it reports EOF
//!   (`BIO_eof`), exactly as a `MemoryBIO` after `write_eof()`.

use super::openssl::{self, Api, Bio, BioMethod};
use crate::buffers;
use crate::gil_cell::GilCell;
use pyo3::exceptions::{PyOverflowError, PyRuntimeError};
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyBytes;
use std::ffi::{c_char, c_int, c_long, c_void};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;

/// Queues alive (made by `TlsBio::new`, not yet freed by `bio_destroy`), for leak tests.
static LIVE_QUEUES: AtomicUsize = AtomicUsize::new(0);

/// Number of ferroloop TLS BIOs alive in this process (two per connection on the direct
/// channel), for leak tests: each is freed once neither its `SSL` nor its Python object holds it.
#[pyfunction]
pub fn live_tls_bios() -> usize {
    LIVE_QUEUES.load(Ordering::Relaxed)
}

/// Bytes not read yet: `data[start..]`, then the lent chunk.
#[derive(Default)]
struct Queue {
    data: Vec<u8>,
    start: usize,
    lent: Option<(*const u8, usize)>,
    eof: bool,
}

// SAFETY: `lent` points into a buffer exported by the thread that set it, for the duration of
// `TlsBio::lend`, which clears it before returning (see the module invariants); every other
// field is owned data. Access is serialised by the GIL (the `GilCell` around the queue).
unsafe impl Send for Queue {}

impl Queue {
    fn len(&self) -> usize {
        self.data.len() - self.start + self.lent.map_or(0, |(_, len)| len)
    }

    fn push(&mut self, py: Python<'_>, bytes: &[u8]) {
        if self.start == self.data.len() {
            self.data.clear();
            self.start = 0;
        }
        if self.data.capacity() == 0 {
            self.data = take_spare(py);
        }
        self.data.extend_from_slice(bytes);
    }

    /// Moves up to `out.len()` bytes into `out`; returns how many.
    fn read_into(&mut self, py: Python<'_>, out: &mut [u8]) -> usize {
        let queued = &self.data[self.start..];
        let n = queued.len().min(out.len());
        out[..n].copy_from_slice(&queued[..n]);
        self.start += n;
        if self.start == self.data.len() {
            self.start = 0;
            keep_spare(py, std::mem::take(&mut self.data));
        }
        let mut total = n;
        if let Some((ptr, len)) = self.lent {
            let m = len.min(out.len() - total);
            if m > 0 {
                // SAFETY: `ptr..ptr+len` is the unconsumed part of the lent chunk, alive while
                // `lent` is set (module invariants).
                let chunk = unsafe { std::slice::from_raw_parts(ptr, len) };
                out[total..total + m].copy_from_slice(&chunk[..m]);
                // SAFETY: `m <= len`, so the new pointer stays within (or one past) the chunk.
                self.lent = Some((unsafe { ptr.add(m) }, len - m));
                total += m;
            }
        }
        total
    }
}

/// One spare vector for every queue of the process: a queue's vector goes to it as soon as the
/// queue is empty, and the next queue to get bytes takes it. So an idle connection holds no
/// buffer (a `MemoryBIO` keeps the largest size it ever held for the connection's life), and a
/// busy one reuses the same allocation from message to message.
static SPARE: GilCell<Vec<u8>> = GilCell::new(Vec::new());

/// The largest vector worth keeping as the spare.
const KEEP: usize = 256 * 1024;

fn take_spare(py: Python<'_>) -> Vec<u8> {
    SPARE.with(py, std::mem::take).unwrap_or_default()
}

/// Keeps `data` (emptied) as the spare if it is larger than the one kept; drops it otherwise.
fn keep_spare(py: Python<'_>, mut data: Vec<u8>) {
    if data.capacity() == 0 || data.capacity() > KEEP {
        return;
    }
    data.clear();
    let _ = SPARE.with(py, |spare| {
        if spare.capacity() < data.capacity() {
            *spare = data;
        }
    });
}

/// The BIO method, built once, and the functions its callbacks need.
struct Method {
    method: *mut BioMethod,
    get_data: unsafe extern "C" fn(*mut Bio) -> *mut c_void,
    set_data: unsafe extern "C" fn(*mut Bio, *mut c_void),
    set_flags: unsafe extern "C" fn(*mut Bio, c_int),
    clear_flags: unsafe extern "C" fn(*mut Bio, c_int),
}

// SAFETY: the method table is immutable once built and OpenSSL reads it from any thread; the
// function pointers are plain code addresses.
unsafe impl Send for Method {}
// SAFETY: as above: shared read-only.
unsafe impl Sync for Method {}

static METHOD: OnceLock<Option<Method>> = OnceLock::new();

fn method(api: &Api) -> Option<&'static Method> {
    METHOD
        .get_or_init(|| {
            // SAFETY: OpenSSL functions called with valid arguments: a type made of a fresh
            // index and the source/sink flag, a NUL-terminated name that lives forever, and
            // callbacks with the signatures OpenSSL expects.
            unsafe {
                let kind = (api.bio_get_new_index)();
                if kind < 0 {
                    return None;
                }
                let method = (api.bio_meth_new)(
                    kind | openssl::BIO_TYPE_SOURCE_SINK,
                    c"ferroloop TLS".as_ptr(),
                );
                if method.is_null()
                    || (api.bio_meth_set_read_ex)(method, bio_read_ex) != 1
                    || (api.bio_meth_set_write_ex)(method, bio_write_ex) != 1
                    || (api.bio_meth_set_ctrl)(method, bio_ctrl) != 1
                    || (api.bio_meth_set_destroy)(method, bio_destroy) != 1
                {
                    return None;
                }
                Some(Method {
                    method,
                    get_data: api.bio_get_data,
                    set_data: api.bio_set_data,
                    set_flags: api.bio_set_flags,
                    clear_flags: api.bio_clear_flags,
                })
            }
        })
        .as_ref()
}

/// The queue behind one of our BIOs.
///
/// # Safety
/// `bio` must be a live BIO created by [`TlsBio::new`] (its data is a `GilCell<Queue>` until
/// the destroy callback runs, which happens only once no reference is left).
unsafe fn queue_of<'a>(method: &Method, bio: *mut Bio) -> &'a GilCell<Queue> {
    // SAFETY: per the contract, the data pointer is a live `Box<GilCell<Queue>>`.
    unsafe { &*(method.get_data)(bio).cast::<GilCell<Queue>>() }
}

/// Runs `f` on the queue of one of our BIOs from an OpenSSL callback: at once when this thread
/// holds the GIL (the pump's direct calls), after taking it otherwise (a `_ssl` method —
/// handshake, shutdown, the Python channel — which releases the GIL around OpenSSL). `None`
/// on a re-entrant access, which cannot happen: `f` calls neither OpenSSL nor Python.
///
/// # Safety
/// As for [`queue_of`].
unsafe fn with_queue<R>(
    method: &Method,
    bio: *mut Bio,
    f: impl FnOnce(&mut Queue, Python<'_>) -> R,
) -> Option<R> {
    // SAFETY: per the contract.
    let cell = unsafe { queue_of(method, bio) };
    // SAFETY: both only read the interpreter's and this thread's state, with or without the
    // GIL. The thread state holding the GIL is this thread's own exactly when this thread holds
    // it (`PyGILState_Check`'s test, without its shortcut that answers "yes" to every thread
    // once a subinterpreter exists).
    let holds_gil = unsafe {
        let current = ffi::compat::PyThreadState_GetUnchecked();
        !current.is_null() && current == ffi::PyGILState_GetThisThreadState()
    };
    if holds_gil {
        // SAFETY: this thread holds the GIL (checked just above).
        let py = unsafe { Python::assume_attached() };
        cell.with(py, |queue| f(queue, py)).ok()
    } else {
        // CPython's own calls, not `Python::attach`: PyO3 counts this thread as attached
        // whenever a Rust frame up the stack entered from Python (`_read_ready` calling the
        // protocol, which calls `_ssl`), and would not take the GIL that `_ssl` released.
        // SAFETY: this thread does not hold the GIL (checked above) and has a thread state
        // (`_ssl` released it), which PyGILState_Ensure attaches; Release gives the GIL back.
        unsafe {
            let state = ffi::PyGILState_Ensure();
            let py = Python::assume_attached();
            let result = cell.with(py, |queue| f(queue, py)).ok();
            ffi::PyGILState_Release(state);
            result
        }
    }
}

/// The start of a read or write callback: the method, and the BIO's retry flags cleared (a
/// memory BIO does the same).
///
/// # Safety
/// `bio` must be a live BIO of ours.
unsafe fn begin_io(bio: *mut Bio) -> Option<&'static Method> {
    let method = METHOD.get()?.as_ref()?;
    // SAFETY: per the contract.
    unsafe {
        (method.clear_flags)(
            bio,
            openssl::BIO_FLAGS_RWS | openssl::BIO_FLAGS_SHOULD_RETRY,
        )
    };
    Some(method)
}

unsafe extern "C" fn bio_read_ex(
    bio: *mut Bio,
    out: *mut c_char,
    len: usize,
    read: *mut usize,
) -> c_int {
    // SAFETY: OpenSSL calls this on one of our live BIOs with a writable `out` of `len` bytes
    // and a valid `read`.
    unsafe {
        let Some(method) = begin_io(bio) else {
            return 0;
        };
        *read = 0;
        let outcome = with_queue(method, bio, |queue, py| {
            let n = if len == 0 {
                0
            } else {
                queue.read_into(py, std::slice::from_raw_parts_mut(out.cast::<u8>(), len))
            };
            (n, queue.eof)
        });
        let Some((n, eof)) = outcome else {
            return 0;
        };
        *read = n;
        if n > 0 {
            return 1;
        }
        if !eof {
            (method.set_flags)(
                bio,
                openssl::BIO_FLAGS_READ | openssl::BIO_FLAGS_SHOULD_RETRY,
            );
        }
        0
    }
}

unsafe extern "C" fn bio_write_ex(
    bio: *mut Bio,
    data: *const c_char,
    len: usize,
    written: *mut usize,
) -> c_int {
    // SAFETY: OpenSSL calls this on one of our live BIOs with `len` readable bytes at `data`
    // and a valid `written`.
    unsafe {
        let Some(method) = begin_io(bio) else {
            return 0;
        };
        *written = 0;
        if len > 0 {
            let bytes = std::slice::from_raw_parts(data.cast::<u8>(), len);
            if with_queue(method, bio, |queue, py| queue.push(py, bytes)).is_none() {
                return 0;
            }
        }
        *written = len;
    }
    1
}

unsafe extern "C" fn bio_ctrl(
    bio: *mut Bio,
    cmd: c_int,
    _num: c_long,
    _ptr: *mut c_void,
) -> c_long {
    let Some(Some(method)) = METHOD.get() else {
        return 0;
    };
    match cmd {
        // SAFETY: OpenSSL calls this on one of our live BIOs.
        openssl::BIO_CTRL_EOF => unsafe {
            with_queue(method, bio, |queue, _| {
                c_long::from(queue.eof && queue.len() == 0)
            })
            .unwrap_or(0)
        },
        // SAFETY: as above.
        openssl::BIO_CTRL_PENDING => unsafe {
            with_queue(method, bio, |queue, _| {
                c_long::try_from(queue.len()).unwrap_or(c_long::MAX)
            })
            .unwrap_or(0)
        },
        // OpenSSL flushes after every record it writes: nothing to do.
        openssl::BIO_CTRL_FLUSH => 1,
        // Nothing waits to be written below this BIO (a memory BIO says the same).
        openssl::BIO_CTRL_WPENDING => 0,
        // Push/pop, kTLS queries, the rest: not supported, as for a memory BIO.
        _ => 0,
    }
}

unsafe extern "C" fn bio_destroy(bio: *mut Bio) -> c_int {
    let Some(Some(method)) = METHOD.get() else {
        return 0;
    };
    // SAFETY: OpenSSL calls this once, when the last reference to one of our BIOs is freed;
    // its data is the `Box<GilCell<Queue>>` made in `TlsBio::new` (or NULL if already taken).
    // Nothing else can reach the queue any more, so dropping it needs no GIL.
    unsafe {
        let queue = (method.get_data)(bio).cast::<GilCell<Queue>>();
        if !queue.is_null() {
            drop(Box::from_raw(queue));
            LIVE_QUEUES.fetch_sub(1, Ordering::Relaxed);
            (method.set_data)(bio, std::ptr::null_mut());
        }
    }
    1
}

/// One reference to one of our BIOs.
struct BioRef {
    bio: *mut Bio,
    free: unsafe extern "C" fn(*mut Bio) -> c_int,
    method: &'static Method,
}

// SAFETY: OpenSSL's BIO reference count is atomic, and the queue behind the BIO is guarded by
// the GIL; the pointer itself is only passed to OpenSSL.
unsafe impl Send for BioRef {}
// SAFETY: as above.
unsafe impl Sync for BioRef {}

impl Drop for BioRef {
    fn drop(&mut self) {
        // SAFETY: this reference was taken in `TlsBio::new` and is dropped once, here.
        unsafe { (self.free)(self.bio) };
    }
}

/// A `MemoryBIO` lookalike over a ferroloop BIO (see the module doc).
#[pyclass(module = "ferroloop._ferroloop", frozen)]
pub struct TlsBio {
    bio: BioRef,
}

/// The `ssl.SSLError` for writing after `write_eof()`, as `MemoryBIO.write` raises it.
static SSL_ERROR: PyOnceLock<Py<PyAny>> = PyOnceLock::new();

impl TlsBio {
    fn new(api: &Api, method: &'static Method) -> Option<Self> {
        // SAFETY: `method.method` is a complete BIO method; the new BIO gets a boxed queue as
        // its data (freed by `bio_destroy`) and is marked initialised, as BIO_read requires.
        unsafe {
            let bio = (api.bio_new)(method.method);
            if bio.is_null() {
                return None;
            }
            let queue = Box::into_raw(Box::new(GilCell::new(Queue::default())));
            LIVE_QUEUES.fetch_add(1, Ordering::Relaxed);
            (api.bio_set_data)(bio, queue.cast::<c_void>());
            (api.bio_set_init)(bio, 1);
            Some(Self {
                bio: BioRef {
                    bio,
                    free: api.bio_free,
                    method,
                },
            })
        }
    }

    fn queue(&self) -> &GilCell<Queue> {
        // SAFETY: `self.bio` holds a reference, so the BIO and its queue are alive.
        unsafe { queue_of(self.bio.method, self.bio.bio) }
    }

    /// Bytes waiting to be read.
    pub fn pending_len(&self, py: Python<'_>) -> PyResult<usize> {
        self.queue().with(py, |queue| queue.len())
    }

    /// Runs `f` with `chunk` readable after the queued bytes; what OpenSSL did not take is
    /// copied into the queue before returning. `f` must not release the GIL.
    pub fn lend<R>(&self, py: Python<'_>, chunk: &[u8], f: impl FnOnce() -> R) -> PyResult<R> {
        struct EndLoan<'a, 'py>(&'a GilCell<Queue>, Python<'py>);
        impl Drop for EndLoan<'_, '_> {
            fn drop(&mut self) {
                // Cannot fail: nothing else has the queue entered at this point.
                let _ = self.0.with(self.1, |queue| {
                    if let Some((ptr, len)) = queue.lent.take() {
                        // SAFETY: the unconsumed rest of the chunk, still lent (the caller's
                        // borrow of `chunk` outlives this guard).
                        let rest = unsafe { std::slice::from_raw_parts(ptr, len) };
                        if !rest.is_empty() {
                            queue.push(self.1, rest);
                        }
                    }
                });
            }
        }
        let queue = self.queue();
        queue.with(py, |queue| queue.lent = Some((chunk.as_ptr(), chunk.len())))?;
        let _end = EndLoan(queue, py);
        Ok(f())
    }

    /// The queued bytes, leaving the queue empty; give the vector back with
    /// [`TlsBio::give_back`] to keep its capacity.
    pub fn take_output(&self, py: Python<'_>) -> PyResult<Vec<u8>> {
        self.queue().with(py, |queue| {
            let mut data = std::mem::take(&mut queue.data);
            data.drain(..std::mem::take(&mut queue.start));
            data
        })
    }

    /// Returns a vector from [`TlsBio::take_output`] for reuse (as the spare).
    pub fn give_back(&self, py: Python<'_>, data: Vec<u8>) {
        keep_spare(py, data);
    }
}

#[pymethods]
impl TlsBio {
    /// `MemoryBIO.pending`.
    #[getter]
    fn pending(&self, py: Python<'_>) -> PyResult<usize> {
        self.pending_len(py)
    }

    /// `MemoryBIO.eof`: `write_eof()` was called and nothing is left to read.
    #[getter]
    fn eof(&self, py: Python<'_>) -> PyResult<bool> {
        self.queue().with(py, |queue| queue.eof && queue.len() == 0)
    }

    /// `MemoryBIO.read(size=-1)`.
    #[pyo3(signature = (size = -1), text_signature = "($self, /, size=-1)")]
    fn read<'py>(&self, py: Python<'py>, size: isize) -> PyResult<Bound<'py, PyBytes>> {
        let available = self.pending_len(py)?;
        let n = usize::try_from(size).map_or(available, |size| size.min(available));
        PyBytes::new_with(py, n, |out| {
            self.queue().with(py, |queue| queue.read_into(py, out))?;
            Ok(())
        })
    }

    /// `MemoryBIO.write(data)`: any C-contiguous bytes-like object; returns its length.
    fn write(&self, py: Python<'_>, data: &Bound<'_, PyAny>) -> PyResult<usize> {
        if self.queue().with(py, |queue| queue.eof)? {
            let error = SSL_ERROR.get_or_try_init(py, || {
                py.import("ssl")?.getattr("SSLError").map(Bound::unbind)
            })?;
            return Err(PyErr::from_value(
                error
                    .bind(py)
                    .call1(("cannot write() after write_eof()",))?,
            ));
        }
        buffers::with_readable(data, |bytes| {
            if c_int::try_from(bytes.len()).is_err() {
                return Err(PyOverflowError::new_err(format!(
                    "string longer than {} bytes",
                    c_int::MAX
                )));
            }
            self.queue().with(py, |queue| queue.push(py, bytes))?;
            Ok(bytes.len())
        })?
    }

    /// `MemoryBIO.write_eof()`.
    fn write_eof(&self, py: Python<'_>) -> PyResult<()> {
        self.queue().with(py, |queue| queue.eof = true)
    }
}

/// Gives the `SSL` behind `sslobj` (an `ssl.SSLObject` or its `_ssl._SSLSocket`) a pair of
/// new [`TlsBio`]s in place of its memory BIOs, and returns them (incoming, outgoing); `None`
/// where OpenSSL cannot be reached (see `openssl.rs`). Call it before the handshake: bytes
/// left in the old BIOs are not moved.
#[pyfunction]
pub fn tls_install_bios<'py>(
    sslobj: &Bound<'py, PyAny>,
) -> PyResult<Option<(Bound<'py, TlsBio>, Bound<'py, TlsBio>)>> {
    let py = sslobj.py();
    let Some(loaded) = openssl::api(py) else {
        return Ok(None);
    };
    let native = super::native(sslobj);
    let Some(ssl) = openssl::ssl_of(loaded, &native) else {
        return Ok(None);
    };
    let api = &loaded.api;
    let Some(method) = method(api) else {
        return Ok(None);
    };
    let (Some(incoming), Some(outgoing)) = (TlsBio::new(api, method), TlsBio::new(api, method))
    else {
        return Err(PyRuntimeError::new_err("cannot create a TLS BIO"));
    };
    // SAFETY: `ssl` is the live `SSL` of `native` (held); each BIO gets one more reference,
    // which `SSL_set0_*` takes over (freeing the memory BIO's reference the SSL held; the
    // `MemoryBIO` objects keep their own).
    unsafe {
        (api.bio_up_ref)(incoming.bio.bio);
        (api.ssl_set0_rbio)(ssl, incoming.bio.bio);
        (api.bio_up_ref)(outgoing.bio.bio);
        (api.ssl_set0_wbio)(ssl, outgoing.bio.bio);
    }
    Ok(Some((Bound::new(py, incoming)?, Bound::new(py, outgoing)?)))
}
