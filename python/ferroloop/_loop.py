"""`ferroloop.Loop`: the asyncio event loop class.

The hot half of the loop is native (`_ferroloop.LoopCore`, first in the MRO): the ready queue,
timers, the poller, `call_soon`/`call_later`/`call_at`/`call_soon_threadsafe`, fd callbacks
(`_add_reader` and friends), `time()`, and the `_run_once` iteration. Everything else is
inherited unchanged from asyncio's own Unix selector loop (`unix_events.SelectorEventLoop`), so it
behaves exactly as asyncio's: `run_until_complete`, tasks and futures, the exception-handler API,
the executor, async generators, and — on top of the native fd callbacks — sockets, transports,
servers, streams, TLS (`sslproto`), pipes, subprocesses and signal handlers. This class supplies
only what ties the two together; later work replaces hot parts (transports) with native code.
"""

from __future__ import annotations

import contextvars
import errno
import selectors
import sys
import threading
import warnings
import weakref
from asyncio import constants, coroutines, events, trsock, unix_events
from asyncio.base_events import ssl
from asyncio.log import logger

from . import _ferroloop, _subprocess, _tls
from ._transports import (
    DatagramTransport,
    ReadPipeTransport,
    SocketTransport,
    _NativeTransport,
)

__all__ = ["Loop"]


class _SelectorView:
    """A read-only stand-in for `loop._selector`.

    asyncio's transports ask the selector which events an fd is polled for (in their reprs);
    this answers from the native fd registry. The loop itself never polls through it.
    """

    def __init__(self, loop: Loop) -> None:
        self._loop = weakref.ref(loop)

    def get_key(self, fileobj: object) -> selectors.SelectorKey:
        loop = self._loop()
        fd = fileobj if isinstance(fileobj, int) else fileobj.fileno()  # type: ignore[attr-defined]
        key = loop._fd_key(fd) if loop is not None else None
        if key is None:
            raise KeyError(f"{fileobj!r} is not registered")
        mask, reader, writer = key
        return selectors.SelectorKey(fileobj, fd, mask, (reader, writer))

    def close(self) -> None:
        pass


def _run_stdlib_handle(handle: events.Handle) -> None:
    # A stdlib `asyncio.Handle` (signal handlers create those) runs its own error reporting.
    if not handle._cancelled:
        handle._run()


# Connections accepted per readiness of a listening socket, at most. asyncio accepts up to
# `backlog` (often thousands) in one callback; the rest of a burst waits for the next iteration
# here (the socket stays readable), so a burst neither holds the loop for long nor piles up
# thousands of pending callbacks whose memory the allocator keeps afterwards.
_ACCEPT_BATCH = 128


class _TransportMap(weakref.WeakValueDictionary):
    """`loop._transports`, asyncio's map of descriptors to the transports that own them (what
    `_ensure_fd_no_transport` reads, and `_sendfile_native` takes out and puts back). ferroloop's
    own transports are kept by the loop natively (`LoopCore._set_transport`: one plain weak
    reference per connection); any other transport (asyncio's `_SelectorTransport`) lands in
    the `WeakValueDictionary` as in asyncio."""

    def __init__(self, loop) -> None:
        super().__init__()
        self._native_get = loop._transport_of
        self._native_set = loop._set_transport
        self._native_del = loop._del_transport

    def __getitem__(self, fd):
        transport = self._native_get(fd)
        return super().__getitem__(fd) if transport is None else transport

    def get(self, fd, default=None):
        transport = self._native_get(fd)
        return super().get(fd, default) if transport is None else transport

    def __contains__(self, fd) -> bool:
        return self._native_get(fd) is not None or super().__contains__(fd)

    def __setitem__(self, fd, transport) -> None:
        if isinstance(transport, _NativeTransport):
            super().pop(fd, None)
            self._native_set(fd, transport)
        else:
            self._native_del(fd)
            super().__setitem__(fd, transport)

    def __delitem__(self, fd) -> None:
        if not self._native_del(fd):
            super().__delitem__(fd)


class Loop(_ferroloop.LoopCore, unix_events.SelectorEventLoop):
    """A drop-in replacement for asyncio's default event loop."""

    def __init__(self) -> None:
        # The attributes `BaseEventLoop.__init__` sets, except those `LoopCore` keeps natively
        # (`_ready`, `_scheduled`, `_closed`, `_stopping`, `_thread_id`, `_debug`,
        # `slow_callback_duration`, `_current_handle`, `_clock_resolution`, `_task_factory`).
        self._timer_cancelled_count = 0
        self._default_executor = None
        # asyncio counts its self-pipe here; ferroloop's equivalent is the native eventfd waker.
        self._internal_fds = 1
        self._exception_handler = None
        self._task_factory = None
        self._coroutine_origin_tracking_enabled = False
        self._coroutine_origin_tracking_saved_depth = None
        self._asyncgens = weakref.WeakSet()
        self._asyncgens_shutdown_called = False
        self._executor_shutdown_called = False
        # `BaseSelectorEventLoop.__init__`'s: the native poller replaces the selector, and the
        # self-pipe (only needed as the wakeup fd of signal handlers) is made on first use.
        self._selector = _SelectorView(self)
        self._ssock = self._csock = None
        self._transports = _TransportMap(self)
        # `_UnixSelectorEventLoop.__init__`'s.
        self._signal_handlers = {}
        # Children watched by pidfd (`_subprocess`): pidfd -> (pid, transport).
        self._pidfd_children = {}
        self.set_debug(coroutines._is_debug_mode())
        # CPython's C `Task` and `Future` look `call_soon` up on the loop at every step and
        # every callback (to pass `context=` as a keyword), which builds and frees a bound
        # method each time. One kept in the instance dict is found there instead (~300
        # instructions less per `await asyncio.sleep(0)`, measured by callgrind). A subclass
        # that overrides `call_soon` keeps the plain lookup, so its method stays the one
        # the class has at each call.
        if type(self).call_soon is _ferroloop.LoopCore.call_soon:
            self.call_soon = self.call_soon

    def run_forever(self) -> None:
        """Run until stop() is called (`BaseEventLoop.run_forever`, native inner loop)."""
        self._check_closed()
        self._check_running()
        self._set_coroutine_origin_tracking(self._debug)
        old_agen_hooks = sys.get_asyncgen_hooks()
        try:
            self._thread_id = threading.get_ident()
            sys.set_asyncgen_hooks(
                firstiter=self._asyncgen_firstiter_hook,
                finalizer=self._asyncgen_finalizer_hook,
            )
            events._set_running_loop(self)
            self._run_until_stopped()
        finally:
            self._stopping = False
            self._thread_id = None
            events._set_running_loop(None)
            self._set_coroutine_origin_tracking(False)
            sys.set_asyncgen_hooks(*old_agen_hooks)

    def close(self) -> None:
        """Close the loop: drop queued callbacks, close the poller, shut the executor down,
        restore signal handlers. Like asyncio, this does not wait for the executor's threads.
        """
        if self.is_running():
            raise RuntimeError("Cannot close a running event loop")
        if self._closed:
            return
        self._close_self_pipe()
        _subprocess.close(self)
        if self._debug:
            logger.debug("Close %r", self)
        self._close_core()
        self._internal_fds -= 1  # the waker
        self._selector = None  # as asyncio: transports' reprs then report "open"/"closed"
        self._executor_shutdown_called = True
        executor = self._default_executor
        if executor is not None:
            self._default_executor = None
            executor.shutdown(wait=False)
        # As `_UnixSelectorEventLoop.close`.
        if not sys.is_finalizing():
            for sig in list(self._signal_handlers):
                self.remove_signal_handler(sig)
        elif self._signal_handlers:
            warnings.warn(
                f"Closing the loop {self!r} on interpreter shutdown "
                f"stage, skipping signal handlers removal",
                ResourceWarning,
                source=self,
                stacklevel=2,
            )
            self._signal_handlers.clear()

    def add_signal_handler(self, sig, callback, *args):
        """`loop.add_signal_handler`: makes the self-pipe (the wakeup fd) on first use."""
        if self._ssock is None and not self._closed:
            self._make_self_pipe()
        return super().add_signal_handler(sig, callback, *args)

    def _close_self_pipe(self) -> None:
        if self._ssock is not None:
            super()._close_self_pipe()

    def _accept_connection(
        self,
        protocol_factory,
        sock,
        sslcontext=None,
        server=None,
        backlog=100,
        ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout=constants.SSL_SHUTDOWN_TIMEOUT,
    ):
        """asyncio's accept loop, except that a plain connection's protocol and transport are
        made at once, in a copy of the context, instead of in a task per connection
        (`_accept_connection2`): a burst of connections costs no tasks, coroutines and waiters,
        and each connection is served an iteration sooner. TLS connections keep asyncio's path
        (their handshake needs the task)."""
        if sslcontext is not None:
            return super()._accept_connection(
                protocol_factory, sock, sslcontext, server, backlog,
                ssl_handshake_timeout, ssl_shutdown_timeout,
            )  # fmt: skip
        for _ in range(min(backlog, _ACCEPT_BATCH)):
            try:
                conn, addr = sock.accept()
                if self._debug:
                    logger.debug("%r got a new connection from %r: %r", server, addr, conn)
                conn.setblocking(False)
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return None  # The accept queue is empty.
            except OSError as exc:
                if exc.errno not in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    raise  # The event loop logs it.
                # As asyncio: report, stop accepting for a while (the listening socket stays
                # readable), then try again.
                self.call_exception_handler(
                    {
                        "message": "socket.accept() out of system resource",
                        "exception": exc,
                        "socket": trsock.TransportSocket(sock),
                    }
                )
                self._remove_reader(sock.fileno())
                self.call_later(
                    constants.ACCEPT_RETRY_DELAY, self._start_serving,
                    protocol_factory, sock, sslcontext, server, backlog,
                    ssl_handshake_timeout, ssl_shutdown_timeout,
                )  # fmt: skip
            else:
                contextvars.copy_context().run(
                    self._accept_plain, protocol_factory, conn, addr, server
                )
        return None

    def _accept_plain(self, protocol_factory, conn, addr, server) -> None:
        # `_accept_connection2` without the task: failures are reported in debug mode only, as
        # there; unlike there, the socket is closed at once rather than left to the GC.
        protocol = transport = None
        try:
            protocol = protocol_factory()
            transport = self._make_socket_transport(
                conn, protocol, extra={"peername": addr}, server=server
            )
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException as exc:
            conn.close()
            if self._debug:
                context = {
                    "message": "Error on transport creation for incoming connection",
                    "exception": exc,
                }
                if protocol is not None:
                    context["protocol"] = protocol
                if transport is not None:
                    context["transport"] = transport
                self.call_exception_handler(context)

    def _make_ssl_transport(
        self,
        rawsock,
        protocol,
        sslcontext,
        waiter=None,
        *,
        server_side=False,
        server_hostname=None,
        extra=None,
        server=None,
        ssl_handshake_timeout=constants.SSL_HANDSHAKE_TIMEOUT,
        ssl_shutdown_timeout=constants.SSL_SHUTDOWN_TIMEOUT,
    ):
        """asyncio's, over the native transport: `ssl=` on `create_connection`, `create_server`
        and the Unix variants gets ferroloop's `SSLProtocol` (asyncio's with a native data pump,
        `_tls.py`) on a `SocketTransport` (asyncio builds its own `_SelectorSocketTransport`
        here rather than calling `_make_socket_transport`)."""
        ssl_protocol = _tls.SSLProtocol(
            self, protocol, sslcontext, waiter, server_side, server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
        )  # fmt: skip
        SocketTransport(self, rawsock, ssl_protocol, None, extra, server)
        return ssl_protocol._app_transport

    async def start_tls(
        self,
        transport,
        protocol,
        sslcontext,
        *,
        server_side=False,
        server_hostname=None,
        ssl_handshake_timeout=None,
        ssl_shutdown_timeout=None,
    ):
        """Upgrade `transport` to TLS; returns the transport `protocol` uses from now on.

        asyncio's `BaseEventLoop.start_tls` step for step, with ferroloop's `SSLProtocol`
        (native data pump, `_tls.py`) where asyncio builds its own class by name: database
        drivers (asyncpg) and STARTTLS protocols upgrade this way."""
        if ssl is None:
            raise RuntimeError("Python ssl module is not available")
        if not isinstance(sslcontext, ssl.SSLContext):
            raise TypeError(
                f"sslcontext is expected to be an instance of ssl.SSLContext, got {sslcontext!r}"
            )
        if not getattr(transport, "_start_tls_compatible", False):
            raise TypeError(f"transport {transport!r} is not supported by start_tls()")
        waiter = self.create_future()
        ssl_protocol = _tls.SSLProtocol(
            self, protocol, sslcontext, waiter, server_side, server_hostname,
            ssl_handshake_timeout=ssl_handshake_timeout,
            ssl_shutdown_timeout=ssl_shutdown_timeout,
            call_connection_made=False,
        )  # fmt: skip
        # Pause early so that "ssl_protocol.data_received()" doesn't
        # have a chance to get called before "ssl_protocol.connection_made()".
        transport.pause_reading()
        transport.set_protocol(ssl_protocol)
        conmade_cb = self.call_soon(ssl_protocol.connection_made, transport)
        resume_cb = self.call_soon(transport.resume_reading)
        try:
            await waiter
        except BaseException:
            transport.close()
            conmade_cb.cancel()
            resume_cb.cancel()
            raise
        return ssl_protocol._app_transport

    def _make_socket_transport(self, sock, protocol, waiter=None, *, extra=None, server=None):
        """The transport of a connected stream socket: native data path (`SocketTransport`)."""
        self._ensure_fd_no_transport(sock)
        return SocketTransport(self, sock, protocol, waiter, extra, server)

    # `sock_recv`, `sock_recv_into`, `sock_sendall`: the same coroutines as asyncio's, with the
    # system calls and the readiness callbacks native (`src/sock_ops.rs`). The native half
    # returns the result, a future to await, or `NotImplemented` for what it does not cover
    # (a `socket.socket` subclass such as `SSLSocket`, a socket with a timeout, ...), which
    # asyncio's own implementation then handles.

    async def sock_recv(self, sock, n):
        """Receive up to `n` bytes from the non-blocking socket `sock`."""
        result = self._sock_recv_native(sock, n)
        if result.__class__ is bytes:
            return result
        if result is NotImplemented:
            return await super().sock_recv(sock, n)
        return await result

    async def sock_recv_into(self, sock, buf):
        """Receive into the writable buffer `buf`; returns the number of bytes received."""
        result = self._sock_recv_into_native(sock, buf)
        if result.__class__ is int:
            return result
        if result is NotImplemented:
            return await super().sock_recv_into(sock, buf)
        return await result

    async def sock_sendall(self, sock, data):
        """Send all of `data` on the non-blocking socket `sock`."""
        result = self._sock_sendall_native(sock, data)
        if result is None:
            return None
        if result is NotImplemented:
            return await super().sock_sendall(sock, data)
        return await result

    async def _make_subprocess_transport(
        self, protocol, args, shell, stdin, stdout, stderr, bufsize, extra=None, **kwargs
    ):
        """asyncio's, with the child watched by a pidfd on the loop's poller (`_subprocess`);
        asyncio's child watcher where pidfds are missing or the user installed a watcher."""
        if not _subprocess.uses_pidfd():
            return await super()._make_subprocess_transport(
                protocol, args, shell, stdin, stdout, stderr, bufsize, extra=extra, **kwargs
            )
        waiter = self.create_future()
        transp = unix_events._UnixSubprocessTransport(
            self, protocol, args, shell, stdin, stdout, stderr, bufsize,
            waiter=waiter, extra=extra, **kwargs,
        )  # fmt: skip
        if not _subprocess.start(self, transp):
            with events.get_child_watcher() as watcher:
                watcher.add_child_handler(transp.get_pid(), self._child_watcher_callback, transp)
        try:
            await waiter
        except (SystemExit, KeyboardInterrupt):
            raise
        except BaseException:
            transp.close()
            await transp._wait()
            raise
        return transp

    def _make_read_pipe_transport(self, pipe, protocol, waiter=None, extra=None):
        """asyncio's read-pipe transport with native reads (`ReadPipeTransport`)."""
        return ReadPipeTransport(self, pipe, protocol, waiter, extra)

    def _make_datagram_transport(self, sock, protocol, address=None, waiter=None, extra=None):
        """The transport of a datagram socket: native data path (`DatagramTransport`)."""
        return DatagramTransport(self, sock, protocol, address, waiter, extra)

    def _add_callback(self, handle):
        # `BaseEventLoop._add_callback` appends a stdlib handle to `_ready`, which is native here.
        if not handle._cancelled:
            self.call_soon(_run_stdlib_handle, handle)
