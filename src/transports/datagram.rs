//! `DatagramTransportCore`: the native half of ferroloop's datagram transport (UDP over IPv4 and
//! IPv6, Unix datagram sockets), mirroring `asyncio.selector_events._SelectorDatagramTransport`.
//! Users hold the Python `ferroloop._transports.DatagramTransport`, a real
//! `asyncio.DatagramTransport` whose `sendto` is this core's bound method.
//!
//! The control flow is native. On IPv4 and Unix datagram sockets the system calls are native
//! too, and addresses are made as CPython's `socket` module makes them: `(host, port)` for IPv4
//! (recent peers' tuples are reused), the path (`str`, file-system decoded) or abstract name
//! (`bytes`) for Unix sockets; `sendto` to a numeric IPv4 pair or to a `bytes`/ASCII path skips
//! the socket module. Everything else — IPv6 (scope ids), host names, non-ASCII paths, errors
//! in addresses — goes through the socket's own `recvfrom`, `sendto` and `send`, as in asyncio.
//!
//! Invariants (asyncio's):
//! - a writer is registered exactly while datagrams wait in the buffer;
//! - buffered datagrams are immutable copies (`bytes`), sent in order, whole or not at all;
//! - an `OSError` from a send or a receive goes to `protocol.error_received(exc)` and the
//!   transport stays open; other exceptions end it (`_fatal_error`).

use super::common::{self, Common, Core};
use super::ReaderKind;
use crate::buffers;
use crate::errors::os_error;
use crate::gil_cell::GilCell;
use crate::py_helpers;
use crate::transports::recycled_bytes::{self, Received};
use crate::transports::{self, LOG_THRESHOLD_FOR_CONNLOST_WRITES, MAX_SIZE};
use ferroloop_core::registry::Side;
use ferroloop_core::sys;
use pyo3::exceptions::{PyBlockingIOError, PyInterruptedError, PyOSError, PyValueError};
use pyo3::intern;
use pyo3::prelude::*;
use pyo3::types::{PyBytes, PyString, PyTuple};
use pyo3::{PyTraverseError, PyVisit};
use std::collections::{HashMap, VecDeque};
use std::ffi::OsStr;
use std::net::{Ipv4Addr, SocketAddrV4};
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;

/// Where the datagram path is native.
#[derive(Clone, Copy)]
enum Family {
    Inet4,
    Unix,
    /// IPv6 and the rest: the socket module's methods.
    Other,
}

/// `addr` as the bytes of a Unix socket path: `bytes` as they are, an ASCII `str` as its bytes
/// (what any file-system encoding makes of it); `None` sends the caller to the socket module.
fn unix_path(addr: &Bound<'_, PyAny>) -> Option<Vec<u8>> {
    if let Ok(bytes) = addr.cast::<PyBytes>() {
        return Some(bytes.as_bytes().to_vec());
    }
    let text = addr.cast::<PyString>().ok()?.to_str().ok()?;
    text.is_ascii().then(|| text.as_bytes().to_vec())
}

/// The Python `(host, port)` tuples of recent IPv4 peers, both ways: a datagram from a known peer
/// reuses its tuple (no string formatting, no allocation), and `sendto` given one of these very
/// tuples — an echo, a reply — skips parsing it. Bounded: emptied when it reaches
/// [`PeerCache::CAPACITY`] peers. The tuples are held, so an address object seen by identity
/// is always the one recorded.
#[derive(Default)]
struct PeerCache {
    by_peer: HashMap<SocketAddrV4, Py<PyTuple>>,
    by_object: HashMap<usize, SocketAddrV4>,
}

impl PeerCache {
    const CAPACITY: usize = 256;

    fn tuple(&self, py: Python<'_>, peer: SocketAddrV4) -> Option<Py<PyTuple>> {
        self.by_peer.get(&peer).map(|t| t.clone_ref(py))
    }

    /// The peer of `addr` if it is one of the cached tuples themselves.
    fn address(&self, addr: &Bound<'_, PyAny>) -> Option<SocketAddrV4> {
        self.by_object.get(&(addr.as_ptr() as usize)).copied()
    }

    /// Records `tuple` for `peer`; returns what was evicted, to be dropped outside the state.
    fn insert(
        &mut self,
        py: Python<'_>,
        peer: SocketAddrV4,
        tuple: &Py<PyTuple>,
    ) -> Vec<Py<PyTuple>> {
        let mut evicted = Vec::new();
        if self.by_peer.len() >= Self::CAPACITY {
            self.by_object.clear();
            evicted.extend(self.by_peer.drain().map(|(_, t)| t));
        }
        self.by_object.insert(tuple.as_ptr() as usize, peer);
        if let Some(old) = self.by_peer.insert(peer, tuple.clone_ref(py)) {
            self.by_object.remove(&(old.as_ptr() as usize));
            evicted.push(old);
        }
        evicted
    }
}

/// `addr` as an IPv4 address when it is a numeric `(host, port)` pair; `None` sends the caller
/// to the socket module (host names, `''`, `'<broadcast>'`, malformed addresses and their
/// exact errors).
fn numeric_v4(addr: &Bound<'_, PyAny>) -> Option<SocketAddrV4> {
    let pair = addr.cast::<PyTuple>().ok()?;
    if pair.len() != 2 {
        return None;
    }
    let host = pair.get_item(0).ok()?;
    let host: Ipv4Addr = host.cast::<PyString>().ok()?.to_str().ok()?.parse().ok()?;
    let port: u16 = pair.get_item(1).ok()?.extract().ok()?;
    Some(SocketAddrV4::new(host, port))
}

/// The datagram transport's state: `_SelectorDatagramTransport`'s attributes.
pub struct State {
    common: Common,
    /// `remote_addr` of a connected endpoint (`_address`).
    address: Option<Py<PyAny>>,
    /// `extra['peername']` was set: the socket is connected, datagrams go out with `send`.
    connected: bool,
    buffer: VecDeque<(Py<PyBytes>, Py<PyAny>)>,
    buffer_size: usize,
    /// The socket's family, where receives and sends take the native path.
    family: Family,
    /// Python addresses of recent IPv4 peers (see [`PeerCache`]).
    peers: PeerCache,
}

/// The native core of `ferroloop._transports.DatagramTransport`.
#[pyclass(frozen, module = "ferroloop._ferroloop")]
pub struct DatagramTransportCore {
    fd: RawFd,
    st: GilCell<State>,
}

impl Core for DatagramTransportCore {
    type State = State;
    const READER: ReaderKind = ReaderKind::Datagram;

    fn fd(&self) -> RawFd {
        self.fd
    }

    fn cell(&self) -> &GilCell<State> {
        &self.st
    }

    fn common(st: &mut State) -> &mut Common {
        &mut st.common
    }

    fn buffered(st: &State) -> usize {
        st.buffer_size
    }

    type Cleared = VecDeque<(Py<PyBytes>, Py<PyAny>)>;

    fn clear_buffer(st: &mut State) -> Self::Cleared {
        st.buffer_size = 0;
        std::mem::take(&mut st.buffer)
    }
}

type Slf<'a, 'py> = &'a Bound<'py, DatagramTransportCore>;

/// How a send or a receive through the socket's method ended.
enum Outcome<T> {
    Done(T),
    /// `BlockingIOError`/`InterruptedError`: try again at the next readiness.
    Retry,
    /// An `OSError`: for `protocol.error_received`.
    OsError(PyErr),
    /// Anything else: fatal (or escaping, for `SystemExit`/`KeyboardInterrupt`).
    Other(PyErr),
}

fn classify<T>(py: Python<'_>, result: PyResult<T>) -> Outcome<T> {
    match result {
        Ok(value) => Outcome::Done(value),
        Err(err)
            if err.is_instance_of::<PyBlockingIOError>(py)
                || err.is_instance_of::<PyInterruptedError>(py) =>
        {
            Outcome::Retry
        }
        Err(err) if err.is_instance_of::<PyOSError>(py) => Outcome::OsError(err),
        Err(err) => Outcome::Other(err),
    }
}

impl DatagramTransportCore {
    fn with<R>(slf: Slf<'_, '_>, f: impl FnOnce(&mut State) -> R) -> PyResult<R> {
        common::with(slf, f)
    }

    /// `sock.send(data)` on a connected socket, `sock.sendto(data, addr)` otherwise.
    fn send_one(
        slf: Slf<'_, '_>,
        data: &Bound<'_, PyAny>,
        addr: &Bound<'_, PyAny>,
    ) -> PyResult<Outcome<()>> {
        let py = slf.py();
        let (connected, family, known) =
            Self::with(slf, |s| (s.connected, s.family, s.peers.address(addr)))?;
        let fd = slf.get().fd;
        let native = match family {
            _ if connected => buffers::with_readable(data, |bytes| sys::send(fd, bytes)).ok(),
            Family::Inet4 => match known.or_else(|| numeric_v4(addr)) {
                Some(to) => buffers::with_readable(data, |b| sys::sendto_v4(fd, b, to)).ok(),
                None => None,
            },
            Family::Unix => match unix_path(addr) {
                Some(path) => buffers::with_readable(data, |b| sys::sendto_unix(fd, b, &path))
                    .ok()
                    .flatten(),
                None => None,
            },
            Family::Other => None,
        };
        if let Some(sent) = native {
            return Ok(match sent {
                Ok(_) => Outcome::Done(()),
                Err(err) if transports::is_retry(&err) => Outcome::Retry,
                Err(err) => Outcome::OsError(os_error(err)),
            });
        }
        let Some(sock) = common::sock(slf)? else {
            return Ok(Outcome::Done(()));
        };
        let result = if connected {
            sock.call_method1(intern!(py, "send"), (data,))
        } else {
            sock.call_method1(intern!(py, "sendto"), (data, addr))
        };
        Ok(classify(py, result.map(drop)))
    }

    /// One `recvfrom` on a Unix datagram socket: the data and the sender's address as CPython's
    /// `makesockaddr` gives it (`None` without one, `bytes` for an abstract name, else the path
    /// decoded with the file-system encoding).
    fn recv_unix<'py>(slf: Slf<'_, 'py>) -> PyResult<Outcome<(Received<'py>, Py<PyAny>)>> {
        let py = slf.py();
        let fd = slf.get().fd;
        let mut sender = None;
        let received = recycled_bytes::receive(py, |bufs| {
            sys::recvfrom_unix(fd, bufs).map(|(n, from)| {
                sender = Some(from);
                n
            })
        })?;
        let data = match received {
            Ok(data) => data,
            Err(err) if transports::is_retry(&err) => return Ok(Outcome::Retry),
            Err(err) => return Ok(Outcome::OsError(os_error(err))),
        };
        let Some(from) = sender else {
            return Ok(Outcome::Done((data, py.None())));
        };
        let len = from.path_len();
        let addr = if from.len == 0 {
            py.None()
        } else if len > 0 && from.path[0] == 0 {
            PyBytes::new(py, &from.path[..len.min(from.path.len())])
                .into_any()
                .unbind()
        } else {
            let end = from
                .path
                .iter()
                .position(|b| *b == 0)
                .unwrap_or(from.path.len());
            OsStr::from_bytes(&from.path[..end])
                .into_pyobject(py)?
                .into_any()
                .unbind()
        };
        Ok(Outcome::Done((data, addr)))
    }

    /// One `recvfrom` on an IPv4 socket: the data and the sender's `(host, port)`.
    fn recv_v4<'py>(slf: Slf<'_, 'py>) -> PyResult<Outcome<(Received<'py>, Py<PyAny>)>> {
        let py = slf.py();
        let fd = slf.get().fd;
        let mut sender = None;
        let received = recycled_bytes::receive(py, |bufs| {
            sys::recvfrom_v4(fd, bufs).map(|(n, from)| {
                sender = from;
                n
            })
        })?;
        let data = match received {
            Ok(data) => data,
            Err(err) if transports::is_retry(&err) => return Ok(Outcome::Retry),
            Err(err) => return Ok(Outcome::OsError(os_error(err))),
        };
        let Some(from) = sender else {
            return Ok(Outcome::Done((data, py.None())));
        };
        let cached = Self::with(slf, |s| s.peers.tuple(py, from))?;
        let addr = match cached {
            Some(tuple) => tuple,
            None => {
                let tuple = PyTuple::new(
                    py,
                    [
                        PyString::new(py, &from.ip().to_string()).into_any(),
                        from.port().into_pyobject(py)?.into_any(),
                    ],
                )?
                .unbind();
                let evicted = Self::with(slf, |s| s.peers.insert(py, from, &tuple))?;
                drop(evicted);
                tuple
            }
        };
        Ok(Outcome::Done((data, addr.into_any())))
    }

    /// `protocol.error_received(exc)`; its own exceptions propagate, as in asyncio.
    fn error_received(slf: Slf<'_, '_>, err: PyErr) -> PyResult<()> {
        let py = slf.py();
        if let Some(protocol) = common::protocol(slf)? {
            protocol.call_method1(intern!(py, "error_received"), (err.into_value(py),))?;
        }
        Ok(())
    }
}

common::transport_pymethods!(DatagramTransportCore {
    #[new]
    #[pyo3(signature = (transport, event_loop, sock, protocol, peername, address))]
    fn py_new(
        transport: &Bound<'_, PyAny>,
        event_loop: &Bound<'_, PyAny>,
        sock: &Bound<'_, PyAny>,
        protocol: &Bound<'_, PyAny>,
        peername: &Bound<'_, PyAny>,
        address: Option<Py<PyAny>>,
    ) -> PyResult<Self> {
        let fd: RawFd = sock.call_method0("fileno")?.extract()?;
        let family: i32 = sock.getattr("family")?.extract()?;
        let connected = peername.is_truthy()?;
        Ok(DatagramTransportCore {
            fd,
            st: GilCell::new(State {
                common: Common::new(transport, event_loop, sock, protocol)?,
                address: address.filter(|a| !a.is_none(transport.py())),
                connected,
                buffer: VecDeque::new(),
                buffer_size: 0,
                family: match family {
                    sys::AF_INET => Family::Inet4,
                    sys::AF_UNIX => Family::Unix,
                    _ => Family::Other,
                },
                peers: PeerCache::default(),
            }),
        })
    }

    fn __traverse__(&self, visit: PyVisit<'_>) -> Result<(), PyTraverseError> {
        let Some(s) = self.st.peek_for_traverse() else {
            return Ok(());
        };
        s.common.traverse(&visit)?;
        visit.call(&s.address)
    }

    /// `_read_ready()`: one `recvfrom`, then `datagram_received(data, addr)`.
    pub(crate) fn _read_ready(slf: Slf<'_, '_>) -> PyResult<()> {
        let py = slf.py();
        let (lost, sock) = common::with_common(slf, |c| {
            (c.conn_lost != 0, c.sock.as_ref().map(|s| s.clone_ref(py)))
        })?;
        let Some(sock) = sock.filter(|_| !lost) else {
            return Ok(());
        };
        let received = match Self::with(slf, |s| s.family)? {
            Family::Inet4 => Self::recv_v4(slf)?,
            Family::Unix => Self::recv_unix(slf)?,
            Family::Other => {
                let pair = sock.call_method1(py, intern!(py, "recvfrom"), (MAX_SIZE,));
                let pair = pair.and_then(|p| p.into_bound(py).extract::<(Bound<PyBytes>, Py<PyAny>)>());
                classify(py, pair.map(|(data, addr)| (Received::from(data), addr)))
            }
        };
        match received {
            Outcome::Retry => Ok(()),
            Outcome::OsError(err) => Self::error_received(slf, err),
            Outcome::Other(err) => {
                common::fatal(slf, err, "Fatal read error on datagram transport")
            }
            Outcome::Done((data, addr)) => {
                if let Some(protocol) = common::protocol(slf)? {
                    protocol.call_method1(intern!(py, "datagram_received"), (&data.bytes, addr))?;
                }
                recycled_bytes::recycle(py, data)
            }
        }
    }

    /// `sendto(data, addr=None)`: sent at once when nothing is buffered, buffered otherwise.
    #[pyo3(signature = (data, addr = None))]
    fn sendto(
        slf: Slf<'_, '_>,
        data: &Bound<'_, PyAny>,
        addr: Option<&Bound<'_, PyAny>>,
    ) -> PyResult<()> {
        let py = slf.py();
        transports::check_bytes_like(data)?;
        if !data.is_truthy()? {
            return Ok(());
        }
        let none = py.None().into_bound(py);
        let mut addr = addr.cloned().unwrap_or(none);
        let address = Self::with(slf, |s| s.address.as_ref().map(|a| a.clone_ref(py)))?;
        if let Some(address) = &address {
            let address = address.bind(py);
            if !addr.is_none() && !addr.is(address) && !addr.eq(address)? {
                return Err(PyValueError::new_err(format!(
                    "Invalid address: must be None or {}",
                    address.str()?
                )));
            }
            addr = address.clone();
        }
        let (lost, empty, closed) = Self::with(slf, |s| {
            (s.common.conn_lost, s.buffer.is_empty(), s.common.sock.is_none())
        })?;
        // asyncio drops (and counts) datagrams of a lost connected endpoint; once the socket is
        // closed, ferroloop drops every datagram the same way (asyncio fails on the `None`
        // socket) — the descriptor number may already belong to another socket.
        if lost != 0 && (address.is_some() || closed) {
            if lost >= LOG_THRESHOLD_FOR_CONNLOST_WRITES {
                py_helpers::logger(py)?
                    .call_method1("warning", ("socket.send() raised exception.",))?;
            }
            Self::with(slf, |s| s.common.conn_lost += 1)?;
            return Ok(());
        }
        if empty {
            // Attempt to send it right away first.
            match Self::send_one(slf, data, &addr)? {
                Outcome::Done(()) => return Ok(()),
                Outcome::Retry => {
                    common::add(slf, Side::Write, intern!(py, "_sendto_ready"))?;
                }
                Outcome::OsError(err) => return Self::error_received(slf, err),
                Outcome::Other(err) => {
                    return common::fatal(slf, err, "Fatal write error on datagram transport")
                }
            }
        }
        // Ensure that what we buffer is immutable.
        let copy = PyBytes::new(py, &buffers::with_readable(data, <[u8]>::to_vec)?);
        let size = copy.as_bytes().len();
        Self::with(slf, |s| {
            s.buffer.push_back((copy.unbind(), addr.unbind()));
            s.buffer_size += size;
        })?;
        common::maybe_pause_protocol(slf)
    }

    /// `_sendto_ready()`: the writer callback, sending buffered datagrams in order.
    fn _sendto_ready(slf: Slf<'_, '_>) -> PyResult<()> {
        let py = slf.py();
        loop {
            let Some((data, addr)) = Self::with(slf, |s| {
                let item = s.buffer.pop_front();
                if let Some((data, _)) = &item {
                    s.buffer_size -= data.bind(py).as_bytes().len();
                }
                item
            })?
            else {
                break;
            };
            match Self::send_one(slf, data.bind(py).as_any(), addr.bind(py))? {
                Outcome::Done(()) => {}
                Outcome::Retry => {
                    // Try again later.
                    let size = data.bind(py).as_bytes().len();
                    Self::with(slf, |s| {
                        s.buffer.push_front((data, addr));
                        s.buffer_size += size;
                    })?;
                    break;
                }
                Outcome::OsError(err) => return Self::error_received(slf, err),
                Outcome::Other(err) => {
                    return common::fatal(slf, err, "Fatal write error on datagram transport");
                }
            }
        }
        common::maybe_resume_protocol(slf)?; // May append to the buffer.
        let (empty, closing) = Self::with(slf, |s| (s.buffer.is_empty(), s.common.closing))?;
        if empty {
            common::remove(slf, Side::Write)?;
            if closing {
                common::call_connection_lost(slf, py.None().bind(py))?;
            }
        }
        Ok(())
    }

    #[getter]
    fn _address(slf: Slf<'_, '_>) -> PyResult<Option<Py<PyAny>>> {
        let py = slf.py();
        Self::with(slf, |s| s.address.as_ref().map(|a| a.clone_ref(py)))
    }
});
