//! The `bytes` a stream transport hands to `protocol.data_received`, recycled when the
//! protocol did not keep it.
//!
//! A receive of more than 512 bytes makes a `bytes` that pymalloc does not serve: glibc's
//! `malloc` and `free` then cost about 550 instructions per message (a 1 KiB `bytes` is
//! 1057 bytes, past the 1032-byte tcache), a sixth of the echo server's userland work per
//! message (callgrind, Protocol echo over a Unix socket). Most protocols parse the data and
//! drop it, so when `data_received` returns the transport often holds the only reference:
//! that object is kept here and filled with the next receive instead of allocating a new one.
//!
//! Invariants:
//! - an object is refilled only while its reference count is 1 (the reference held here), so
//!   no Python code can see its contents change; a protocol that keeps `data` (or a write
//!   buffer that queued it) raises the count and the object is left alone;
//! - a refilled object's length never exceeds the capacity it was allocated with, and is at
//!   least half of it (so a small receive does not pin a large allocation); its cached hash is
//!   reset and its trailing NUL rewritten, as `bytes` requires;
//! - only receives above pymalloc's limit are recycled: below it a fresh `bytes` is as cheap;
//! - one object is kept for the whole process (the GIL serialises access), and it is taken
//!   out of the slot while in use, so two transports never share it.

use crate::gil_cell::GilCell;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;

/// pymalloc serves objects up to this size; smaller `bytes` are not worth recycling.
const SMALL_REQUEST_THRESHOLD: usize = 512;

/// A received `bytes` and the length it was allocated with.
pub struct Received<'py> {
    pub bytes: Bound<'py, PyBytes>,
    capacity: usize,
}

/// The spare object and its allocated length.
static SPARE: GilCell<Option<(Py<PyBytes>, usize)>> = GilCell::new(None);

/// A `bytes` holding `data`: the spare one refilled when it is unreferenced and fits,
/// otherwise a new one.
pub fn received<'py>(py: Python<'py>, data: &[u8]) -> PyResult<Received<'py>> {
    let n = data.len();
    if n > SMALL_REQUEST_THRESHOLD {
        let spare = SPARE.with(py, Option::take)?;
        if let Some((bytes, capacity)) = spare {
            let bytes = bytes.into_bound(py);
            if n <= capacity && capacity <= 2 * n && is_sole_reference(&bytes) {
                // SAFETY: the reference count is 1 and that reference is `bytes`, so no other
                // code can observe the object while it changes; `n` is at most the length the
                // object was allocated with (`capacity`), whose storage holds `capacity + 1`
                // bytes, so the copy and the trailing NUL stay inside it; `data` is a distinct
                // Rust buffer, so the ranges do not overlap.
                unsafe {
                    let object = bytes.as_ptr().cast::<ffi::PyBytesObject>();
                    let sval = std::ptr::addr_of_mut!((*object).ob_sval).cast::<u8>();
                    std::ptr::copy_nonoverlapping(data.as_ptr(), sval, n);
                    *sval.add(n) = 0;
                    (*object).ob_base.ob_size = n as ffi::Py_ssize_t;
                    // Deprecated for extensions, but CPython's `bytes.__hash__` still caches the
                    // hash there: a stale one would outlive the old contents.
                    #[allow(deprecated)]
                    {
                        (*object).ob_shash = -1;
                    }
                }
                return Ok(Received { bytes, capacity });
            }
        }
    }
    Ok(Received {
        bytes: PyBytes::new(py, data),
        capacity: n,
    })
}

/// Whether `bytes` (a reference the caller holds) is the only reference to its object.
fn is_sole_reference(bytes: &Bound<'_, PyBytes>) -> bool {
    // SAFETY: `bytes` is a live object and the GIL is held (a `Bound` proves both).
    unsafe { ffi::Py_REFCNT(bytes.as_ptr()) == 1 }
}

/// Keeps `received` as the spare when nothing else references it any more.
pub fn recycle(py: Python<'_>, received: Received<'_>) -> PyResult<()> {
    if received.capacity > SMALL_REQUEST_THRESHOLD && is_sole_reference(&received.bytes) {
        let old = SPARE.with(py, |slot| {
            slot.replace((received.bytes.unbind(), received.capacity))
        })?;
        drop(old); // outside the cell: a `bytes` has no finaliser, but keep the rule simple
    }
    Ok(())
}
