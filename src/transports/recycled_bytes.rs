//! The `bytes` a transport hands to `protocol.data_received` (stream sockets) or
//! `datagram_received` (IPv4 and Unix datagram sockets): received in place into the previous
//! one when the protocol did not keep it.
//!
//! A receive of more than 512 bytes makes a `bytes` that pymalloc does not serve: glibc's
//! `malloc` and `free` then cost about 550 instructions per message (a 1 KiB `bytes` is
//! 1057 bytes, past the 1032-byte tcache), and copying the data out of the shared receive
//! buffer costs a pass over every byte. Most protocols parse the data and drop it, so when
//! `data_received` returns the transport often holds the only reference: that object becomes
//! the spare, and the next receive is a scattered read into the spare first and the shared
//! buffer after it. A message that fits lands in the spare, which is handed over as is.
//! Callgrind, server userland per round trip of a Protocol echo over a Unix socket: 3 349
//! instructions at 1 KiB with a new `bytes` per message, 2 412 now; at 10 KiB 12 641 when the
//! data was still copied into the recycled object, 2 429 now (`bench/net/instructions.py`).
//!
//! Invariants:
//! - the spare is written only while its reference count is 1 (the reference held here), so
//!   no Python code can see its contents change; a protocol that keeps `data` (or a write
//!   buffer that queued it) raises the count and the object is never made the spare;
//! - a delivered spare's length is at most the capacity it was allocated with and at least
//!   half of it (a smaller message is copied out, so a small `bytes` does not pin a large
//!   allocation); its cached hash is reset and its trailing NUL rewritten, as `bytes` requires;
//! - a message longer than the spare is assembled into a new `bytes` from the spare's part and
//!   the shared buffer's, and the spare stays; the two parts together never exceed
//!   `MAX_SIZE`, asyncio's `max_size`;
//! - only objects above pymalloc's limit become the spare: below it a fresh `bytes` is as cheap;
//! - one spare exists for the whole process (the GIL serialises access), taken out of its slot
//!   while a receive uses it, so two transports never share it.

use super::{with_read_buffer, MAX_SIZE};
use crate::gil_cell::GilCell;
use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::types::PyBytes;
use std::io::{self, IoSliceMut};

/// pymalloc serves objects up to this size; smaller `bytes` are not worth recycling.
const SMALL_REQUEST_THRESHOLD: usize = 512;

/// A received `bytes` and the length it was allocated with.
pub struct Received<'py> {
    pub bytes: Bound<'py, PyBytes>,
    capacity: usize,
}

impl<'py> From<Bound<'py, PyBytes>> for Received<'py> {
    /// A `bytes` made elsewhere: its length is a safe lower bound of its allocation.
    fn from(bytes: Bound<'py, PyBytes>) -> Self {
        let capacity = bytes.as_bytes().len();
        Self { bytes, capacity }
    }
}

/// The spare object and its allocated length.
static SPARE: GilCell<Option<(Py<PyBytes>, usize)>> = GilCell::new(None);

/// One receive through `recv` (a scattered read: the slices are filled in order), delivered
/// as a `bytes`. With a spare object the data lands in it first and the shared receive buffer
/// takes the rest: when everything fits (and fills at least half of it) the spare itself is
/// returned, without a copy; otherwise a new `bytes` is made from the two parts and the spare
/// is kept. Without a spare it is a plain receive into the shared buffer, copied out.
pub fn receive<'py>(
    py: Python<'py>,
    recv: impl FnOnce(&mut [IoSliceMut<'_>]) -> io::Result<usize>,
) -> PyResult<io::Result<Received<'py>>> {
    let spare = SPARE
        .with(py, Option::take)?
        .map(|(bytes, capacity)| (bytes.into_bound(py), capacity))
        .filter(|(bytes, _)| is_sole_reference(bytes));
    let Some((spare, capacity)) = spare else {
        return with_read_buffer(py, |buf| {
            recv(&mut [IoSliceMut::new(buf)]).map(|n| PyBytes::new(py, &buf[..n]).into())
        });
    };
    let object = spare.as_ptr().cast::<ffi::PyBytesObject>();
    // SAFETY: `spare` is the only reference to the object (checked above), so nothing else
    // reads or writes its storage while this slice lives; that storage holds the `capacity`
    // bytes it was allocated with (plus the NUL), and the slice ends before `spare` is used
    // again below.
    let storage = unsafe {
        std::slice::from_raw_parts_mut(
            std::ptr::addr_of_mut!((*object).ob_sval).cast::<u8>(),
            capacity,
        )
    };
    let outcome = with_read_buffer(py, |buf| {
        let rest = &mut buf[..MAX_SIZE.saturating_sub(capacity)];
        let n = recv(&mut [IoSliceMut::new(storage), IoSliceMut::new(rest)])?;
        if n > capacity {
            let bytes = PyBytes::new_with(py, n, |out| {
                out[..capacity].copy_from_slice(storage);
                out[capacity..].copy_from_slice(&rest[..n - capacity]);
                Ok(())
            });
            return Ok(bytes.map(|bytes| (Some(bytes), n)));
        }
        if 2 * n < capacity {
            return Ok(Ok((Some(PyBytes::new(py, &storage[..n])), n)));
        }
        Ok(Ok((None, n)))
    })?;
    let (fresh, n) = match outcome {
        Ok(Ok(pair)) => pair,
        Ok(Err(err)) => {
            keep(py, spare, capacity)?;
            return Err(err);
        }
        Err(err) => {
            keep(py, spare, capacity)?;
            return Ok(Err(err));
        }
    };
    if let Some(bytes) = fresh {
        keep(py, spare, capacity)?;
        return Ok(Ok(bytes.into()));
    }
    // SAFETY: still the only reference; `n <= capacity`, so the NUL at `n` is inside the
    // storage. The length, NUL and cached hash are what a `bytes` of these contents has.
    unsafe {
        *std::ptr::addr_of_mut!((*object).ob_sval)
            .cast::<u8>()
            .add(n) = 0;
        (*object).ob_base.ob_size = n as ffi::Py_ssize_t;
        // Deprecated for extensions, but CPython's `bytes.__hash__` still caches the hash
        // there: a stale one would outlive the old contents.
        #[allow(deprecated)]
        {
            (*object).ob_shash = -1;
        }
    }
    Ok(Ok(Received {
        bytes: spare,
        capacity,
    }))
}

/// Makes `bytes` (allocated with `capacity` bytes) the spare, releasing the previous one.
fn keep(py: Python<'_>, bytes: Bound<'_, PyBytes>, capacity: usize) -> PyResult<()> {
    let old = SPARE.with(py, |slot| slot.replace((bytes.unbind(), capacity)))?;
    drop(old); // outside the cell: a `bytes` has no finaliser, but keep the rule simple
    Ok(())
}

/// Whether `bytes` (a reference the caller holds) is the only reference to its object.
fn is_sole_reference(bytes: &Bound<'_, PyBytes>) -> bool {
    // SAFETY: `bytes` is a live object and the GIL is held (a `Bound` proves both).
    unsafe { ffi::Py_REFCNT(bytes.as_ptr()) == 1 }
}

/// Keeps `received` as the spare when nothing else references it any more.
pub fn recycle(py: Python<'_>, received: Received<'_>) -> PyResult<()> {
    if received.capacity > SMALL_REQUEST_THRESHOLD && is_sole_reference(&received.bytes) {
        keep(py, received.bytes, received.capacity)?;
    }
    Ok(())
}
