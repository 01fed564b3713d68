//! `GilCell<T>`: interior mutability for state that is only ever touched with the GIL held.
//!
//! PyO3's own borrow flags are atomic (they are built for free-threaded Python too), and the
//! loop state and every handle's callback slot are borrowed several times per callback; a
//! plain flag serialised by the GIL does the same job without locked instructions.
//!
//! Ground rules:
//! - access goes only through [`GilCell::with`], which takes a `Python<'_>` token (proof that
//!   this thread holds the GIL) and a closure that must not run Python code — neither calls
//!   nor drops of Python objects, which can run `__del__`;
//! - a re-entrant access (the closure somehow reaching the same cell) fails with
//!   `RuntimeError` instead of aliasing a `&mut`;
//! - ferroloop refuses to import on a free-threaded interpreter (see `lib.rs`), where the GIL
//!   would not serialise access.

use pyo3::exceptions::PyRuntimeError;
use pyo3::{PyResult, Python};
use std::cell::{Cell, UnsafeCell};

/// A value guarded by the GIL plus a re-entrancy flag.
pub struct GilCell<T> {
    busy: Cell<bool>,
    value: UnsafeCell<T>,
}

// SAFETY: `value` and `busy` are only accessed in `with`, which requires the GIL (a `Python`
// token). The GIL admits one thread at a time and its release/acquire orders memory between
// threads; ferroloop does not load on free-threaded CPython. `T: Send` because the value may be
// used from whichever thread holds the GIL.
unsafe impl<T: Send> Sync for GilCell<T> {}

/// Clears the busy flag when the closure returns or panics.
struct Release<'a>(&'a Cell<bool>);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.0.set(false);
    }
}

impl<T> GilCell<T> {
    /// A new cell.
    pub const fn new(value: T) -> Self {
        Self {
            busy: Cell::new(false),
            value: UnsafeCell::new(value),
        }
    }

    /// Runs `f` with exclusive access to the value.
    #[inline(always)]
    pub fn with<R>(&self, _py: Python<'_>, f: impl FnOnce(&mut T) -> R) -> PyResult<R> {
        if self.busy.replace(true) {
            return Err(PyRuntimeError::new_err(
                "ferroloop: re-entrant access to loop state (a destructor ran during a loop call)",
            ));
        }
        let _release = Release(&self.busy);
        // SAFETY: the GIL is held (we have a `Python` token) so no other thread is here, and
        // `busy` was false, so no other `&mut` to the value exists on this thread; the
        // reference does not outlive `f`.
        Ok(f(unsafe { &mut *self.value.get() }))
    }

    /// Shared access for the garbage collector's `__traverse__`, which runs with the GIL held
    /// but gets no `Python` token; `None` while the cell is entered (the collector then skips
    /// the value's references, which only delays collecting a cycle).
    pub fn peek_for_traverse(&self) -> Option<&T> {
        if self.busy.get() {
            return None;
        }
        // SAFETY: traversal runs with the GIL held, so no other thread is in `with`; `busy` is
        // false, so no `&mut` exists on this thread; the collector's visit callbacks run no
        // Python code, so no `with` can start while the reference lives.
        Some(unsafe { &*self.value.get() })
    }

    /// Exclusive access through `&mut self` (e.g. in `Drop`): no flag needed.
    pub fn get_mut(&mut self) -> &mut T {
        self.value.get_mut()
    }
}
