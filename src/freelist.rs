//! Allocation and deallocation of `Handle` and `TimerHandle` objects: freelists guarded by the
//! GIL, and a `tp_dealloc` without PyO3's trampoline.
//!
//! Every `call_soon` allocates a handle and every run frees one. Keeping freed objects for
//! reuse skips the allocator and the cyclic GC's allocation count (a GC-type allocation counts
//! towards the next collection, a reuse does not). PyO3's built-in `freelist` option guards its
//! list with a mutex, which profiling showed costing ~11 % of a `call_soon` benchmark; these
//! lists use a [`GilCell`] instead, since CPython calls `tp_alloc`/`tp_free` with the GIL held.
//!
//! Invariants:
//! - a list holds only objects of exactly its type, whose `tp_dealloc` has run to completion
//!   (contents dropped, untracked by the GC, weak references cleared) and that nothing
//!   references: they are memory awaiting `PyObject_Init`, as with PyO3's own freelists;
//! - objects of other types (Python subclasses) go to and come from the normal allocator;
//! - at most [`CAPACITY`] objects are kept per type; the rest are freed with `PyObject_GC_Del`;
//! - `tp_dealloc` is PyO3's own layout deallocation (drop the Rust value, clear weak references,
//!   `tp_free`, release the type), called directly: it relies on PyO3 0.30's `impl_` layout API,
//!   which `Cargo.lock` pins and the test suite exercises on every handle.

use crate::gil_cell::GilCell;
use crate::handles::{Handle, TimerHandle};
use pyo3::ffi;
use pyo3::impl_::pycell::PyClassObjectBaseLayout;
use pyo3::impl_::pyclass::PyClassImpl;
use pyo3::prelude::*;
use pyo3::types::PyType;
use std::ffi::c_void;
use std::sync::atomic::{AtomicPtr, Ordering};

/// Objects kept per type.
pub const CAPACITY: usize = 1024;

/// Index 0: `Handle`; 1: `TimerHandle`. Object addresses are kept as `usize` (plain data).
static LISTS: [GilCell<Vec<usize>>; 2] = [GilCell::new(Vec::new()), GilCell::new(Vec::new())];
static TYPES: [AtomicPtr<ffi::PyTypeObject>; 2] = [
    AtomicPtr::new(std::ptr::null_mut()),
    AtomicPtr::new(std::ptr::null_mut()),
];

/// `tp_alloc` of list `K`'s type: a kept object if there is one, else `PyType_GenericAlloc`.
unsafe extern "C" fn alloc<const K: usize>(
    subtype: *mut ffi::PyTypeObject,
    nitems: ffi::Py_ssize_t,
) -> *mut ffi::PyObject {
    // SAFETY: CPython calls tp_alloc with the GIL held.
    let py = unsafe { Python::assume_attached() };
    if nitems == 0 && std::ptr::eq(subtype, TYPES[K].load(Ordering::Relaxed)) {
        if let Ok(Some(addr)) = LISTS[K].with(py, Vec::pop) {
            let obj = addr as *mut ffi::PyObject;
            // SAFETY: `obj` is a fully deallocated object of exactly `subtype` (the list's
            // invariant), so its memory has the right size; PyObject_Init sets the type and a
            // reference count of 1 (and takes a reference to the heap type).
            unsafe { ffi::PyObject_Init(obj, subtype) };
            return obj;
        }
    }
    // SAFETY: the standard allocator for a type, called with the GIL held.
    unsafe { ffi::PyType_GenericAlloc(subtype, nitems) }
}

/// `tp_free` of list `K`'s type: keeps the memory of an exact-type object while there is room.
unsafe extern "C" fn free<const K: usize>(obj: *mut c_void) {
    // SAFETY: CPython calls tp_free with the GIL held.
    let py = unsafe { Python::assume_attached() };
    let object = obj.cast::<ffi::PyObject>();
    // SAFETY: tp_free receives a deallocated object whose header (and type) is still intact.
    let ty = unsafe { ffi::Py_TYPE(object) };
    if std::ptr::eq(ty, TYPES[K].load(Ordering::Relaxed)) {
        let kept = LISTS[K].with(py, |list| {
            if list.len() < CAPACITY {
                list.push(object as usize);
                true
            } else {
                false
            }
        });
        if matches!(kept, Ok(true)) {
            return;
        }
    }
    // SAFETY: these are GC types, allocated by PyType_GenericAlloc: this is their free function.
    unsafe { ffi::PyObject_GC_Del(obj) }
}

/// `tp_dealloc` of a handle type: PyO3's own deallocation of the object, without PyO3's
/// trampoline around it (which maintains a thread-local attach count and a panic guard; a
/// handle's drop cannot panic). `Handle`'s `Drop` releases its context, callback and arguments
/// itself; only a debug-mode creation traceback, dropped here while PyO3's attach count is zero
/// (a handle released by pure Python code), has its decrement deferred to PyO3's pool, which
/// PyO3 drains at its next entry point.
unsafe extern "C" fn dealloc<T: PyClassImpl + pyo3::PyTypeInfo>(obj: *mut ffi::PyObject) {
    // SAFETY: CPython calls tp_dealloc with the GIL held on an object of this type with no
    // references left; untracking first is what tp_dealloc of a GC type must do.
    unsafe {
        ffi::PyObject_GC_UnTrack(obj.cast());
        let py = Python::assume_attached();
        <T::Layout as PyClassObjectBaseLayout<T>>::tp_dealloc(py, obj);
    }
}

/// Installs the freelists as `tp_alloc`/`tp_free` of the two handle types. Must run right after
/// the types are created, before any instance exists.
pub fn install(handle: &Bound<'_, PyType>, timer: &Bound<'_, PyType>) {
    for (k, ty) in [handle, timer].into_iter().enumerate() {
        let raw = ty.as_type_ptr();
        TYPES[k].store(raw, Ordering::Relaxed);
        let (a, f, d): (ffi::allocfunc, ffi::freefunc, ffi::destructor) = if k == 0 {
            (alloc::<0>, free::<0>, dealloc::<Handle>)
        } else {
            (alloc::<1>, free::<1>, dealloc::<TimerHandle>)
        };
        // SAFETY: `raw` is a live heap type created by PyO3 with no instances yet; replacing
        // its allocation slots is what PyType_Ready-time slot definitions would have done.
        unsafe {
            (*raw).tp_alloc = Some(a);
            (*raw).tp_free = Some(f);
            (*raw).tp_dealloc = Some(d);
        }
    }
}
