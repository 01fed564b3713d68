//! The few OpenSSL functions the TLS pump calls itself, found at run time in the OpenSSL that
//! CPython's `_ssl` module is linked to, and the `SSL *` inside an `_ssl._SSLSocket`.
//!
//! ferroloop links no OpenSSL of its own: the `SSL` objects are `_ssl`'s, so the functions
//! must be those of the very library `_ssl` loaded. They are looked up through a handle on
//! `_ssl`'s shared object (`dlopen` with `RTLD_NOLOAD`: the module is already loaded, nothing
//! new is mapped), whose dependency list is where `dlsym` searches.
//!
//! Invariants:
//! - [`api`] is `None` unless every symbol was found; callers then keep asyncio's
//!   `MemoryBIO`s and `SSLObject` methods (the pump in `mod.rs` works with either);
//! - [`ssl_of`] hands out the `SSL *` of an object only on CPython 3.8 to 3.14 (whose
//!   `PySSLSocket` starts with the same three fields), only if its type is exactly
//!   `_ssl._SSLSocket`, and only if that `SSL` names the object as its application data
//!   (CPython's `SSL_set_app_data(ssl, self)`).

use pyo3::ffi;
use pyo3::prelude::*;
use pyo3::sync::PyOnceLock;
use pyo3::types::PyType;
use std::ffi::{c_char, c_int, c_long, c_void, CString};

/// OpenSSL's `SSL` (opaque).
pub enum Ssl {}
/// OpenSSL's `BIO` (opaque).
pub enum Bio {}
/// OpenSSL's `BIO_METHOD` (opaque).
pub enum BioMethod {}

pub type BioReadEx = unsafe extern "C" fn(*mut Bio, *mut c_char, usize, *mut usize) -> c_int;
pub type BioWriteEx = unsafe extern "C" fn(*mut Bio, *const c_char, usize, *mut usize) -> c_int;
pub type BioCtrl = unsafe extern "C" fn(*mut Bio, c_int, c_long, *mut c_void) -> c_long;
pub type BioDestroy = unsafe extern "C" fn(*mut Bio) -> c_int;

// `SSL_get_error` results (ssl.h).
pub const SSL_ERROR_WANT_READ: c_int = 2;
pub const SSL_ERROR_ZERO_RETURN: c_int = 6;
// `SSL_get_shutdown` bits (ssl.h).
pub const SSL_RECEIVED_SHUTDOWN: c_int = 2;
// BIO flags and controls (bio.h).
pub const BIO_FLAGS_READ: c_int = 0x01;
pub const BIO_FLAGS_RWS: c_int = 0x07;
pub const BIO_FLAGS_SHOULD_RETRY: c_int = 0x08;
pub const BIO_TYPE_SOURCE_SINK: c_int = 0x0400;
pub const BIO_CTRL_EOF: c_int = 2;
pub const BIO_CTRL_PENDING: c_int = 10;
pub const BIO_CTRL_FLUSH: c_int = 11;
pub const BIO_CTRL_WPENDING: c_int = 13;

/// Declares [`Api`], one field per OpenSSL function with its C signature (OpenSSL 1.1.1 and
/// 3.x, the versions CPython 3.10+ builds against), and `resolve`, which looks each one up.
macro_rules! openssl_api {
    ($($field:ident = $name:literal: fn($($arg:ty),*) $(-> $ret:ty)?;)*) => {
        /// The OpenSSL functions the TLS pump calls.
        pub struct Api {
            $(pub $field: unsafe extern "C" fn($($arg),*) $(-> $ret)?,)*
        }

        fn resolve(find: impl Fn(&str) -> Option<*mut c_void>) -> Option<Api> {
            Some(Api {
                $(
                    // SAFETY: the symbol is OpenSSL's function of that name, whose C signature
                    // is the field's type.
                    $field: unsafe {
                        std::mem::transmute::<
                            *mut c_void,
                            unsafe extern "C" fn($($arg),*) $(-> $ret)?,
                        >(find($name)?)
                    },
                )*
            })
        }
    };
}

openssl_api! {
    ssl_read_ex = "SSL_read_ex": fn(*mut Ssl, *mut c_void, usize, *mut usize) -> c_int;
    ssl_write_ex = "SSL_write_ex": fn(*mut Ssl, *const c_void, usize, *mut usize) -> c_int;
    ssl_get_error = "SSL_get_error": fn(*const Ssl, c_int) -> c_int;
    ssl_get_shutdown = "SSL_get_shutdown": fn(*const Ssl) -> c_int;
    ssl_pending = "SSL_pending": fn(*const Ssl) -> c_int;
    ssl_get_ex_data = "SSL_get_ex_data": fn(*const Ssl, c_int) -> *mut c_void;
    ssl_set0_rbio = "SSL_set0_rbio": fn(*mut Ssl, *mut Bio);
    ssl_set0_wbio = "SSL_set0_wbio": fn(*mut Ssl, *mut Bio);
    bio_get_new_index = "BIO_get_new_index": fn() -> c_int;
    bio_meth_new = "BIO_meth_new": fn(c_int, *const c_char) -> *mut BioMethod;
    bio_meth_set_read_ex = "BIO_meth_set_read_ex": fn(*mut BioMethod, BioReadEx) -> c_int;
    bio_meth_set_write_ex = "BIO_meth_set_write_ex": fn(*mut BioMethod, BioWriteEx) -> c_int;
    bio_meth_set_ctrl = "BIO_meth_set_ctrl": fn(*mut BioMethod, BioCtrl) -> c_int;
    bio_meth_set_destroy = "BIO_meth_set_destroy": fn(*mut BioMethod, BioDestroy) -> c_int;
    bio_new = "BIO_new": fn(*const BioMethod) -> *mut Bio;
    bio_free = "BIO_free": fn(*mut Bio) -> c_int;
    bio_up_ref = "BIO_up_ref": fn(*mut Bio) -> c_int;
    bio_set_data = "BIO_set_data": fn(*mut Bio, *mut c_void);
    bio_get_data = "BIO_get_data": fn(*mut Bio) -> *mut c_void;
    bio_set_init = "BIO_set_init": fn(*mut Bio, c_int);
    bio_set_flags = "BIO_set_flags": fn(*mut Bio, c_int);
    bio_clear_flags = "BIO_clear_flags": fn(*mut Bio, c_int);
}

/// The functions plus the type of `_ssl._SSLSocket` they apply to.
pub struct Loaded {
    pub api: Api,
    ssl_socket_type: Py<PyType>,
}

static LOADED: PyOnceLock<Option<Loaded>> = PyOnceLock::new();

/// The OpenSSL functions, or `None` where they cannot be found (a `_ssl` linked statically,
/// a platform without `dlopen`).
pub fn api(py: Python<'_>) -> Option<&'static Loaded> {
    LOADED.get_or_init(py, || load(py).ok().flatten()).as_ref()
}

fn load(py: Python<'_>) -> PyResult<Option<Loaded>> {
    let version = py.version_info();
    if (version.major, version.minor) < (3, 8) || (version.major, version.minor) > (3, 14) {
        return Ok(None);
    }
    let module = py.import("_ssl")?;
    let path: String = module.getattr("__file__")?.extract()?;
    let ssl_socket_type = module
        .getattr("_SSLSocket")?
        .cast_into::<PyType>()?
        .unbind();
    let Ok(path) = CString::new(path) else {
        return Ok(None);
    };
    // SAFETY: `path` is a NUL-terminated string; RTLD_NOLOAD only returns a handle on an
    // object that is already loaded (`_ssl`, imported above), so no initialiser runs. The
    // handle is never closed: `_ssl` stays loaded for the life of the process.
    let handle = unsafe { libc::dlopen(path.as_ptr(), libc::RTLD_NOW | libc::RTLD_NOLOAD) };
    if handle.is_null() {
        return Ok(None);
    }
    let find = |name: &str| -> Option<*mut c_void> {
        let name = CString::new(name).ok()?;
        // SAFETY: `handle` is a live handle from dlopen, `name` a NUL-terminated string.
        let symbol = unsafe { libc::dlsym(handle, name.as_ptr()) };
        (!symbol.is_null()).then_some(symbol)
    };
    let Some(api) = resolve(find) else {
        return Ok(None);
    };
    Ok(Some(Loaded {
        api,
        ssl_socket_type,
    }))
}

/// CPython's `PySSLSocket` up to the field ferroloop reads (Modules/_ssl.c, unchanged from
/// 3.7 to 3.14): the object header, the weak reference to the socket, the `SSL *`.
#[repr(C)]
struct PySslSocketHead {
    ob_base: ffi::PyObject,
    socket: *mut ffi::PyObject,
    ssl: *mut Ssl,
}

/// The `SSL *` of `obj` if it is an `_ssl._SSLSocket` (see the module invariants).
///
/// The pointer is valid while `obj` is alive: `_ssl` frees the `SSL` in its deallocator.
pub fn ssl_of(loaded: &Loaded, obj: &Bound<'_, PyAny>) -> Option<*mut Ssl> {
    if !obj.get_type().is(loaded.ssl_socket_type.bind(obj.py())) {
        return None;
    }
    let head = obj.as_ptr().cast::<PySslSocketHead>();
    // SAFETY: `obj` is exactly an `_ssl._SSLSocket` (checked above), whose C struct starts
    // with the fields of `PySslSocketHead`; the object is alive (we hold a reference).
    let ssl = unsafe { (*head).ssl };
    if ssl.is_null() {
        return None;
    }
    // SAFETY: `ssl` is the `SSL` that `_ssl` created for this object; index 0 is its
    // application data, which CPython sets to the object itself.
    let app_data = unsafe { (loaded.api.ssl_get_ex_data)(ssl, 0) };
    (app_data == obj.as_ptr().cast::<c_void>()).then_some(ssl)
}
