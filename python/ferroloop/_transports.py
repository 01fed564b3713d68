"""ferroloop's transports: native data paths behind asyncio's own transport classes.

`SocketTransport` is what `loop._make_socket_transport` returns for TCP and Unix stream
sockets, so `create_connection`, `create_server`, `create_unix_*`, `connect_accepted_socket`,
asyncio's streams and `start_tls` all get it; `DatagramTransport` is what
`loop._make_datagram_transport` returns (`create_datagram_endpoint`). Both are real
`asyncio.Transport`s (through `transports._FlowControlMixin`, as asyncio's
`_SelectorSocketTransport` and `_SelectorDatagramTransport`), so `isinstance` checks and
`loop.sendfile`'s fallback work. The data path is each one's native core
(`_ferroloop.SocketTransportCore`, `_ferroloop.DatagramTransportCore`): the loop's reader calls
the core, which receives and calls the protocol directly; `transport.write` /
`transport.sendto` *is* the core's bound method (a slot), so a protocol's write costs no Python
frame. The other methods forward to the core.
"""

from __future__ import annotations

import selectors
import warnings
from asyncio import base_events, constants, futures, transports, trsock, unix_events
from asyncio.log import logger

from . import _ferroloop

__all__ = ["DatagramTransport", "ReadPipeTransport", "SocketTransport"]


def _polling(loop, fd: int, event: int) -> bool:
    try:
        key = loop._selector.get_key(fd)
    except (KeyError, AttributeError):
        return False
    return bool(key.events & event)


# Address values seen lately, so that many connections share one equal object: a server's
# local address is the same for every connection it accepts, and its clients' hosts repeat.
# Bounded: emptied when full.
_SHARED: dict = {}
_SHARED_MAX = 4096


def _shared(value):
    try:
        kept = _SHARED.get(value)
    except TypeError:  # not hashable
        return value
    if kept is None:
        if len(_SHARED) >= _SHARED_MAX:
            _SHARED.clear()
        _SHARED[value] = kept = value
    return kept


def _peer(addr):
    """`addr` with its host string shared (the port differs from connection to connection)."""
    if type(addr) is tuple and addr and type(addr[0]) is str:
        host = _shared(addr[0])
        if host is not addr[0]:
            return (host, *addr[1:])
    return addr


def _addresses(transport, sock, extra) -> None:
    """What `_SelectorTransport.__init__` takes from the socket at once: the addresses (after a
    reset the socket no longer knows its peer). They are kept in slots, with the socket itself
    (for the 'socket' entry, which outlives the connection as in asyncio), and `_extra` is made
    only when asked for (an idle connection pays for no dict); a caller's `extra` with more than
    the peer address is kept, as asyncio keeps it."""
    try:
        sockname = _shared(sock.getsockname())
    except OSError:
        sockname = None
    if extra and "peername" in extra:
        peername = _peer(extra["peername"])
    else:
        try:
            peername = _peer(sock.getpeername())
        except OSError:
            peername = None
    transport._socket = sock
    transport._sockname = sockname
    transport._peername = peername
    if extra is not None and extra.keys() - {"peername"}:
        extra["sockname"] = sockname
        extra["peername"] = peername
        transport._extra_dict = extra
    else:
        transport._extra_dict = None


class _NativeTransport(transports._FlowControlMixin, transports.Transport):
    """What ferroloop's transports share: asyncio's `_SelectorTransport`, over a native core."""

    # `_core` (and each subclass's bound write method) are slots, so an idle connection pays
    # for no instance dict (`__dict__` stays available for users who set attributes, as on
    # asyncio's transports).
    __slots__ = (
        "_core",
        "_socket",
        "_sockname",
        "_peername",
        "_extra_dict",
        "__dict__",
        "__weakref__",
    )

    max_size = 256 * 1024  # The most one receive reads (fixed in the core).

    def _start(self, loop, protocol, waiter) -> None:
        loop._set_transport(self._core._sock_fd, self)  # `loop._transports[fd] = self`
        loop.call_soon(protocol.connection_made, self)
        # Only start reading when connection_made() has been called.
        loop.call_soon(self._core._start_reading)
        if waiter is not None:
            # Only wake up the waiter when connection_made() has been called.
            loop.call_soon(futures._set_result_unless_cancelled, waiter, None)

    # The attributes asyncio's transports have, read from the core. They replace the slots of
    # `_FlowControlMixin`, whose state lives in the core.
    _loop = property(lambda self: self._core._loop)
    _sock = property(lambda self: self._core._sock)
    _sock_fd = property(lambda self: self._core._sock_fd)
    _protocol = property(lambda self: self._core._protocol)
    _closing = property(lambda self: self._core._closing)
    _conn_lost = property(lambda self: self._core._conn_lost)
    _paused = property(lambda self: self._core._paused)
    _protocol_paused = property(lambda self: self._core._protocol_paused)
    _high_water = property(lambda self: self._core.get_write_buffer_limits()[1])
    _low_water = property(lambda self: self._core.get_write_buffer_limits()[0])

    def close(self) -> None:
        self._core.close()

    def abort(self) -> None:
        self._core.abort()

    def is_closing(self) -> bool:
        return self._core.is_closing()

    def is_reading(self) -> bool:
        return self._core.is_reading()

    def pause_reading(self) -> None:
        self._core.pause_reading()

    def resume_reading(self) -> None:
        self._core.resume_reading()

    def set_protocol(self, protocol) -> None:
        self._core.set_protocol(protocol)

    def get_protocol(self):
        return self._core.get_protocol()

    def get_write_buffer_size(self) -> int:
        return self._core.get_write_buffer_size()

    def get_write_buffer_limits(self) -> tuple[int, int]:
        return self._core.get_write_buffer_limits()

    def set_write_buffer_limits(self, high=None, low=None) -> None:
        self._core.set_write_buffer_limits(high, low)

    def _force_close(self, exc) -> None:
        self._core._force_close(exc)

    def get_extra_info(self, name, default=None):
        if self._extra_dict is None:
            if name == "peername":
                return self._peername
            if name == "sockname":
                return self._sockname
            if name != "socket":
                return default
        return self._extra.get(name, default)

    @property
    def _extra(self) -> dict:
        """asyncio's `BaseTransport._extra`, with the 'socket' entry `_SelectorTransport`
        makes, built on first use."""
        extra = self._extra_dict
        if extra is None:
            extra = self._extra_dict = {"sockname": self._sockname, "peername": self._peername}
        if "socket" not in extra:
            extra["socket"] = trsock.TransportSocket(self._socket)
        return extra

    def __repr__(self) -> str:
        core = self._core
        info = [self.__class__.__name__]
        if core._sock is None:
            info.append("closed")
        elif core._closing:
            info.append("closing")
        info.append(f"fd={core._sock_fd}")
        loop = core._loop
        if loop is not None and not loop.is_closed():
            reading = _polling(loop, core._sock_fd, selectors.EVENT_READ)
            info.append("read=polling" if reading else "read=idle")
            writing = _polling(loop, core._sock_fd, selectors.EVENT_WRITE)
            state = "polling" if writing else "idle"
            info.append(f"write=<{state}, bufsize={core.get_write_buffer_size()}>")
        return "<{}>".format(" ".join(info))

    def __del__(self, _warn=warnings.warn) -> None:
        core = getattr(self, "_core", None)
        sock = core._sock if core is not None else None
        if sock is not None:
            _warn(f"unclosed transport {self!r}", ResourceWarning, source=self)
            sock.close()

    def _fatal_error(self, exc, message="Fatal error on transport"):
        # As `_SelectorTransport._fatal_error`: OS errors are expected (peers go away) and
        # only logged in debug mode; anything else goes to the exception handler.
        if isinstance(exc, OSError):
            if self._loop.get_debug():
                logger.debug("%r: %s", self, message, exc_info=exc)
        else:
            self._loop.call_exception_handler(
                {
                    "message": message,
                    "exception": exc,
                    "transport": self,
                    "protocol": self._protocol,
                }
            )
        self._force_close(exc)


class SocketTransport(_NativeTransport):
    """A stream-socket transport (`asyncio.selector_events._SelectorSocketTransport`)."""

    __slots__ = ("write",)

    _start_tls_compatible = True
    _sendfile_compatible = constants._SendfileMode.TRY_NATIVE

    def __init__(self, loop, sock, protocol, waiter=None, extra=None, server=None) -> None:
        _addresses(self, sock, extra)
        core = _ferroloop.SocketTransportCore(self, loop, sock, protocol)
        self._core = core
        self.write = core.write
        core._server = server
        if server is not None:
            server._attach()
        # Disable the Nagle algorithm, as asyncio does: small writes go out at once.
        base_events._set_nodelay(sock)
        self._start(loop, protocol, waiter)

    _server = property(lambda self: self._core._server)
    _eof = property(lambda self: self._core._eof)
    _empty_waiter = property(lambda self: self._core._empty_waiter)

    def writelines(self, list_of_data) -> None:
        self._core.writelines(list_of_data)

    def write_eof(self) -> None:
        self._core.write_eof()

    def can_write_eof(self) -> bool:
        return True

    def _make_empty_waiter(self):
        return self._core._make_empty_waiter()

    def _reset_empty_waiter(self) -> None:
        self._core._reset_empty_waiter()


class DatagramTransport(_NativeTransport):
    """A datagram transport (`asyncio.selector_events._SelectorDatagramTransport`)."""

    __slots__ = ("sendto",)

    def __init__(self, loop, sock, protocol, address=None, waiter=None, extra=None) -> None:
        _addresses(self, sock, extra)
        core = _ferroloop.DatagramTransportCore(self, loop, sock, protocol, self._peername, address)
        self._core = core
        self.sendto = core.sendto
        self._start(loop, protocol, waiter)

    _address = property(lambda self: self._core._address)


class ReadPipeTransport(unix_events._UnixReadPipeTransport):
    """asyncio's read-pipe transport, reading through the native shared receive buffer
    (`_ferroloop.read_pipe`) instead of `os.read`, whose 256 KiB `bytes` per read costs fresh
    pages every time. `_read_ready` is asyncio's, with that one call changed."""

    def _read_ready(self):
        try:
            data = _ferroloop.read_pipe(self._fileno, self.max_size)
        except (BlockingIOError, InterruptedError):
            pass
        except OSError as exc:
            self._fatal_error(exc, "Fatal read error on pipe transport")
        else:
            if data:
                self._protocol.data_received(data)
            else:
                if self._loop.get_debug():
                    logger.info("%r was closed by peer", self)
                self._closing = True
                self._loop._remove_reader(self._fileno)
                self._loop.call_soon(self._protocol.eof_received)
                self._loop.call_soon(self._call_connection_lost, None)
