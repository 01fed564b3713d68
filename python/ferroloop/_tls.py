"""TLS for ferroloop: asyncio's `SSLProtocol` with a leaner data phase.

The state machine (handshake, flushing, shutdown, timeouts, flow control) is asyncio's own,
inherited unchanged. What changes is the pump of the WRAPPED state, the part that runs once
per received chunk and once per `write()`:

- reading stops when neither the incoming BIO nor the `SSLObject` holds bytes, instead of
  calling `SSLObject.read()` until it raises `SSLWantReadError`. Raising that exception costs
  about as much as decrypting 4 KiB (`_ssl` formats a message and builds an exception object
  with its attributes), and asyncio's read loop ends with one on every received chunk;
- the native `_ferroloop.tls_read` runs the `SSLObject.read()` loop: several records are
  decrypted straight into the one bytes object handed to `data_received`, and a single record
  is read with a 16 KiB request instead of `max_size` (256 KiB), which glibc would serve with
  an mmap, an mremap and an munmap per read;
- `_ferroloop.tls_write` encrypts the write backlog in one call;
- every connection of a loop receives into one shared buffer instead of its own zeroed 256 KiB
  (see `SSLProtocol.__init__`);
- the `SSLObject` reads and writes through ferroloop's BIOs (`_ferroloop.TlsBio`, with
  `MemoryBIO`'s methods) instead of a pair of `MemoryBIO`s, which zero-fill every byte written
  into them: a received chunk is lent to OpenSSL straight from the receive buffer, OpenSSL is
  called directly (no `SSLObject.read`/`write` call per record), and the records go to
  ferroloop's socket transport without a bytes object. That needs the OpenSSL `_ssl` uses and a
  context without Python callbacks that run while data is read or written (`_msg_callback`,
  `keylog_filename`); otherwise the `MemoryBIO`s stay and the pump calls `_sslobj`'s methods.

Invariant (why the early stop is safe): CPython never turns on OpenSSL's read-ahead, so
OpenSSL takes from the incoming BIO only the record it is working on; bytes that could still
decrypt to data or to a close_notify are then either in the BIO (`MemoryBIO.pending`) or
already decrypted (`SSLObject.pending()`). With both at 0 a `read()` can only raise
`SSLWantReadError`.
"""

from __future__ import annotations

from asyncio import sslproto

from . import _ferroloop

__all__ = ["SSLProtocol"]


def _receive_buffer(loop: object) -> bytearray:
    """The receive buffer all of `loop`'s TLS connections share (see `SSLProtocol.__init__`)."""
    buffer = getattr(loop, "_tls_receive_buffer", None)
    if buffer is None:
        buffer = bytearray(sslproto.SSLProtocol.max_size)
        loop._tls_receive_buffer = buffer  # type: ignore[attr-defined]
    return buffer


_WRAPPED = sslproto.SSLProtocolState.WRAPPED
_FLUSHING = sslproto.SSLProtocolState.FLUSHING


class SSLProtocol(sslproto.SSLProtocol):
    """`asyncio.sslproto.SSLProtocol` with the native pump (see the module docstring).

    The overrides keep asyncio's order of operations; the flow-control helpers
    (`_control_app_writing`, `_control_ssl_reading`) are called only when a water mark is
    crossed, with the same test asyncio makes inside them.
    """

    def __init__(self, loop: object, *args: object, **kwargs: object) -> None:
        # asyncio gives every connection its own 256 KiB receive buffer, zeroed at creation
        # (a quarter of a megabyte written per handshake, and kept for the connection's life).
        # `max_size` sizes it: 0 while asyncio's __init__ runs, then the class value again.
        self.max_size = 0
        try:
            super().__init__(loop, *args, **kwargs)
        finally:
            del self.max_size
        # One buffer per loop serves all its connections instead: a transport fills what
        # `get_buffer` returns and calls `buffer_updated` right away, which hands the chunk to
        # OpenSSL (or copies it into the connection's incoming BIO) before it returns; a loop
        # runs one callback at a time.
        self._ssl_buffer = _receive_buffer(loop)
        self._ssl_buffer_view = memoryview(self._ssl_buffer)
        # Before the handshake, while both BIOs are empty (it starts in connection_made).
        context = self._sslcontext
        if context._msg_callback is None and getattr(context, "keylog_filename", None) is None:
            bios = _ferroloop.tls_install_bios(self._sslobj)
            if bios is not None:
                self._incoming, self._outgoing = bios

    def buffer_updated(self, nbytes: int) -> None:
        if self._state is not _WRAPPED:  # handshake, flush, shutdown: asyncio's dispatch
            super().buffer_updated(nbytes)
        elif self._app_reading_paused or self._app_protocol_is_buffer:
            self._incoming.write(self._ssl_buffer_view[:nbytes])
            self._do_read()
        else:
            # The chunk goes to `_do_read__copied`, which hands it to OpenSSL.
            self._do_read(nbytes)

    def _do_read(self, received: int = 0) -> None:
        """asyncio's `_do_read`; `received` bytes at the start of the receive buffer have not
        been written to the incoming BIO yet (only from `buffer_updated`, in the WRAPPED state,
        with reading not paused and a protocol that is not buffered)."""
        state = self._state
        if state is not _WRAPPED and state is not _FLUSHING:
            return
        try:
            if not self._app_reading_paused:
                if self._app_protocol_is_buffer:
                    self._do_read__buffered()
                else:
                    self._do_read__copied(received)
                if self._write_backlog:
                    self._do_write()
                else:
                    self._process_outgoing()
            size = self._incoming.pending
            paused = self._ssl_reading_paused
            if (size >= self._incoming_high_water and not paused) or (
                size <= self._incoming_low_water and paused
            ):
                self._control_ssl_reading()
        except Exception as ex:
            self._fatal_error(ex, "Fatal error on SSL protocol")

    def _do_read__copied(self, received: int = 0) -> None:
        data, eof = _ferroloop.tls_read(
            self._sslobj, self._incoming, self.max_size, self._ssl_buffer, received
        )
        if data is not None:
            self._app_protocol.data_received(data)
        if eof:
            # close_notify
            self._call_eof_received()
            self._start_shutdown()

    def _write_appdata(self, list_of_data: object) -> None:
        if self._state is not _WRAPPED:
            super()._write_appdata(list_of_data)
            return
        for data in list_of_data:  # type: ignore[attr-defined]
            self._write_backlog.append(data)
            self._write_buffer_size += len(data)
        try:
            self._do_write()
        except Exception as ex:
            self._fatal_error(ex, "Fatal error on SSL protocol")

    def _do_write(self) -> None:
        _ferroloop.tls_write(self)
        self._process_outgoing()

    def _process_outgoing(self) -> None:
        if not self._ssl_writing_paused:
            _ferroloop.tls_flush(self._outgoing, self._transport)
        size = self._outgoing.pending + self._write_buffer_size
        paused = self._app_writing_paused
        if (size >= self._outgoing_high_water and not paused) or (
            size <= self._outgoing_low_water and paused
        ):
            self._control_app_writing()
