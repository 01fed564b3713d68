"""Stream-socket transports (TCP and Unix): protocol callbacks, writes, flow control, closing.

The specification is asyncio's ``selector_events._SelectorSocketTransport`` (and
``transports._FlowControlMixin``); every test also runs on stdlib asyncio, the oracle.

Each test drives a transport the loop made (``create_server``/``create_unix_server`` on the
accepting side, ``create_connection``/``create_unix_connection`` on the connecting side) against
a plain non-blocking socket peer that the test polls itself, so the peer does not depend on the
loop under test.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import gc
import hashlib
import logging
import os
import random
import socket
import ssl
import struct
import tempfile
import weakref

import pytest
from conftest import digest as _digest
from conftest import iterations, until
from conftest import payload as _payload

KiB = 1024
MiB = 1024 * KiB

FAMILIES = ["tcp", "unix"]
SIDES = ["accepted", "connected"]


# --------------------------------------------------------------------------- polling helpers


async def peer_send(sock: socket.socket, data) -> None:
    view = memoryview(data)
    while view:
        try:
            n = sock.send(view)
        except BlockingIOError:
            await asyncio.sleep(0.001)
            continue
        view = view[n:]


async def peer_recv(sock: socket.socket, n: int) -> bytes:
    """Exactly ``n`` bytes from the peer socket (fails on a premature EOF)."""
    buf = bytearray()
    while len(buf) < n:
        try:
            chunk = sock.recv(min(n - len(buf), 256 * KiB))
        except BlockingIOError:
            await asyncio.sleep(0.001)
            continue
        if not chunk:
            raise AssertionError(f"EOF after {len(buf)} of {n} bytes")
        buf += chunk
    return bytes(buf)


async def peer_recv_to_eof(sock: socket.socket) -> bytes:
    buf = bytearray()
    while True:
        try:
            chunk = sock.recv(256 * KiB)
        except BlockingIOError:
            await asyncio.sleep(0.001)
            continue
        if not chunk:
            return bytes(buf)
        buf += chunk


def peer_reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: a TCP peer sends RST instead of FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def fill(transport, min_buffered: int, chunk: int = 64 * KiB, seed: int = 1) -> bytes:
    """Write distinct chunks (the peer not reading) until the transport buffers
    ``min_buffered`` bytes; return everything written."""
    written = []
    rng = random.Random(seed)
    for _ in range(2000):
        if transport.get_write_buffer_size() >= min_buffered:
            return b"".join(written)
        data = rng.randbytes(chunk)
        transport.write(data)
        written.append(data)
    raise AssertionError(f"the transport never buffered {min_buffered} bytes")


# --------------------------------------------------------------------------- protocols


class Rec(asyncio.Protocol):
    """Records every callback."""

    def __init__(self, eof_result=None):
        self.transport = None
        self.events: list[str] = []
        self.data = bytearray()
        self.types: list[type] = []
        self.lost_calls: list[BaseException | None] = []
        self.eof_result = eof_result
        self.pause_sizes: list[int] = []
        self.resume_sizes: list[int] = []

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")

    def data_received(self, data):
        self.types.append(type(data))
        self.data += data
        if not self.events or self.events[-1] != "data":
            self.events.append("data")

    def eof_received(self):
        self.events.append("eof")
        return self.eof_result

    def connection_lost(self, exc):
        self.lost_calls.append(exc)
        self.events.append("lost")

    def pause_writing(self):
        self.pause_sizes.append(self.transport.get_write_buffer_size())
        self.events.append("pause")

    def resume_writing(self):
        self.resume_sizes.append(self.transport.get_write_buffer_size())
        self.events.append("resume")


class BufRec(asyncio.BufferedProtocol):
    """A BufferedProtocol receiving into a window of its own ``storage``.

    ``kind``: "bytearray" hands out ``storage`` itself; "window" a memoryview of
    ``storage[offset:offset + size]`` (the bytes around it must stay untouched);
    "int-array" an ``array('i')`` of ``size // 4`` items.
    """

    SENTINEL = 0xA5

    def __init__(self, kind: str = "window", size: int = 1000, offset: int = 7):
        self.kind = kind
        self.size = size
        self.offset = offset if kind == "window" else 0
        if kind == "int-array":
            self.storage = array.array("i", [0] * (size // 4))
        elif kind == "bytearray":
            self.storage = bytearray(size)
        else:
            self.storage = bytearray([self.SENTINEL]) * (self.offset + size + 13)
        self.transport = None
        self.events: list[str] = []
        self.hints: list[object] = []
        self.updates: list[int] = []
        self.data = bytearray()
        self.lost_calls: list[BaseException | None] = []

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")

    def get_buffer(self, sizehint):
        self.hints.append(sizehint)
        if self.kind == "window":
            return memoryview(self.storage)[self.offset : self.offset + self.size]
        return self.storage

    def buffer_updated(self, nbytes):
        self.updates.append(nbytes)
        raw = self.storage.tobytes() if self.kind == "int-array" else bytes(self.storage)
        self.data += raw[self.offset : self.offset + nbytes]
        if not self.events or self.events[-1] != "data":
            self.events.append("data")

    def eof_received(self):
        self.events.append("eof")

    def connection_lost(self, exc):
        self.lost_calls.append(exc)
        self.events.append("lost")


# --------------------------------------------------------------------------- connections


class Net:
    """Opens a loop transport connected to a raw non-blocking peer socket."""

    def __init__(self, loop, family: str, tmp_path):
        self.loop = loop
        self.family = family
        self.tmp_path = tmp_path
        self.peers: list[socket.socket] = []
        self.transports: list[asyncio.BaseTransport] = []
        self._n = 0

    def path(self) -> str:
        self._n += 1
        path = str(self.tmp_path / f"s{self._n}")
        if len(path) >= 100:  # sun_path is 108 bytes
            path = tempfile.mktemp(prefix="fl-t", dir="/tmp")
        return path

    async def open(self, protocol, side: str = "accepted"):
        """Return ``(transport, peer)``; ``protocol.connection_made`` has run."""
        if side == "accepted":
            transport, peer = await self._accepted(protocol)
        else:
            transport, peer = await self._connected(protocol)
        peer.setblocking(False)
        self.peers.append(peer)
        self.transports.append(transport)
        return transport, peer

    async def _accepted(self, protocol):
        loop = self.loop
        if self.family == "tcp":
            server = await loop.create_server(lambda: protocol, "127.0.0.1", 0)
            peer = socket.create_connection(server.sockets[0].getsockname())
        else:
            path = self.path()
            server = await loop.create_unix_server(lambda: protocol, path)
            peer = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            peer.connect(path)
        try:
            await until(lambda: protocol.transport is not None, "connection_made")
        finally:
            server.close()
        return protocol.transport, peer

    async def _connected(self, protocol):
        loop = self.loop
        if self.family == "tcp":
            with socket.create_server(("127.0.0.1", 0)) as listener:
                transport, proto = await loop.create_connection(
                    lambda: protocol, *listener.getsockname()
                )
                peer, _ = listener.accept()
        else:
            path = self.path()
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as listener:
                listener.bind(path)
                listener.listen()
                transport, proto = await loop.create_unix_connection(lambda: protocol, path)
                peer, _ = listener.accept()
        assert proto is protocol
        assert protocol.transport is transport
        return transport, peer

    def cleanup(self):
        for peer in self.peers:
            peer.close()
        open_transports = [t for t in self.transports if not t.is_closing()]
        for transport in open_transports:
            transport.abort()
        if open_transports and not self.loop.is_closed():
            self.loop.run_until_complete(asyncio.sleep(0.001))


@pytest.fixture(params=FAMILIES)
def family(request):
    return request.param


@pytest.fixture
def net(loop, family, tmp_path):
    n = Net(loop, family, tmp_path)
    yield n
    n.cleanup()


# --------------------------------------------------------------------------- 1. reading


@pytest.mark.parametrize("side", SIDES)
def test_data_received_gets_bytes_in_order(loop, run, net, side):
    payload = _payload(4 * MiB)

    async def main():
        proto = Rec()
        transport, peer = await net.open(proto, side)
        await peer_send(peer, payload)
        await until(lambda: len(proto.data) >= len(payload), "all data")
        assert len(proto.data) == len(payload)
        assert _digest(proto.data) == _digest(payload)
        assert len(proto.types) > 1  # several chunks
        assert all(t is bytes for t in proto.types), set(proto.types)
        assert proto.events == ["made", "data"]
        assert proto.lost_calls == []
        peer.shutdown(socket.SHUT_WR)
        await until(lambda: proto.lost_calls, "connection_lost")
        assert proto.events == ["made", "data", "eof", "lost"]
        assert proto.lost_calls == [None]

    run(main())


def test_data_received_bytes_stay_intact_when_kept_or_hashed(loop, run, net):
    """ferroloop receives into the `bytes` of the previous `data_received` when the protocol
    dropped it. A chunk the protocol keeps must never change afterwards, and a chunk it hashed
    (the hash is cached in the object) must hash by its new contents when it comes back."""
    # Sizes around pymalloc's 512-byte limit, repeats of one size (received in place), larger
    # ones (split between the old object and the shared buffer) and ones under half the old
    # object (copied out of it).
    sizes = [600, 600, 1024, 1024, 700, 2000, 1500, 513, 512, 4000, 4000, 1100, 900, 3000]
    chunks = [bytes(random.Random(i).randbytes(n)) for i, n in enumerate(sizes)]

    class Keeper(Rec):
        def __init__(self):
            super().__init__()
            self.received = []  # (a copy made on arrival, the object when it was kept)
            self.mismatches = []

        def data_received(self, data):
            copy = bytes(bytearray(data))
            if hash(data) != hash(copy) or {data: 1}.get(copy) != 1:
                self.mismatches.append(len(self.received))
            # Keep every third chunk itself; drop the others (they may be refilled).
            kept = data if len(self.received) % 3 == 0 else None
            self.received.append((copy, kept))

    async def main():
        proto = Keeper()
        transport, peer = await net.open(proto)
        for i, chunk in enumerate(chunks):
            await peer_send(peer, chunk)  # one chunk at a time: one receive each
            await until(lambda i=i: len(proto.received) > i, f"chunk {i}")
        peer.shutdown(socket.SHUT_WR)  # EOF read while a refillable object is kept
        await until(lambda: proto.lost_calls, "connection_lost")
        assert proto.events == ["made", "eof", "lost"]
        assert [copy for copy, _ in proto.received] == chunks
        assert [kept for _, kept in proto.received[::3]] == chunks[::3]
        assert proto.mismatches == []

    run(main())


def test_reader_toggled_from_data_received(loop, run, net):
    """pause_reading() + resume_reading() inside data_received() (the reader is removed and
    re-added from its own callback) loses nothing."""
    payload = _payload(2 * MiB, seed=16)

    class Toggler(Rec):
        def data_received(self, data):
            super().data_received(data)
            self.transport.pause_reading()
            self.transport.resume_reading()

    async def main():
        proto = Toggler()
        transport, peer = await net.open(proto)
        await peer_send(peer, payload)
        peer.shutdown(socket.SHUT_WR)
        await until(lambda: proto.lost_calls, "connection_lost")
        assert _digest(proto.data) == _digest(payload)
        assert proto.events == ["made", "data", "eof", "lost"]

    run(main())


# --------------------------------------------------------------------------- 2. BufferedProtocol


@pytest.mark.parametrize("kind", ["window", "bytearray"])
def test_buffered_protocol_receives_into_its_buffer(loop, run, net, kind):
    payload = _payload(300 * KiB, seed=3)

    async def main():
        proto = BufRec(kind, size=1000)
        transport, peer = await net.open(proto)
        await peer_send(peer, payload)
        await until(lambda: len(proto.data) >= len(payload), "all data")
        assert bytes(proto.data) == payload
        assert len(proto.updates) >= len(payload) // 1000
        assert len(proto.hints) == len(proto.updates)
        assert all(isinstance(h, int) for h in proto.hints)
        assert all(0 < n <= 1000 for n in proto.updates)
        assert sum(proto.updates) == len(payload)
        if kind == "window":
            # Only the window handed out was written to.
            before = proto.storage[: proto.offset]
            after = proto.storage[proto.offset + proto.size :]
            assert set(before) == set(after) == {BufRec.SENTINEL}
        peer.shutdown(socket.SHUT_WR)
        await until(lambda: proto.lost_calls, "connection_lost")
        assert proto.events == ["made", "data", "eof", "lost"]
        assert proto.lost_calls == [None]

    run(main())


def test_buffered_protocol_buffer_size_counts_bytes(loop, run, net):
    """A buffer of 64 ints holds 256 bytes: recv_into fills bytes, not items."""
    payload = _payload(50 * KiB, seed=4)

    async def main():
        proto = BufRec("int-array", size=256)
        transport, peer = await net.open(proto)
        await peer_send(peer, payload)
        await until(lambda: len(proto.data) >= len(payload), "all data")
        assert bytes(proto.data) == payload
        assert max(proto.updates) <= 256
        assert max(proto.updates) > 64

    run(main())


@pytest.mark.parametrize(
    "empty", [bytearray(), memoryview(bytearray(10))[:0], b""], ids=["bytearray", "mv", "bytes"]
)
def test_get_buffer_empty_is_fatal(loop, run, net, exc_handler, empty):
    class Empty(BufRec):
        def get_buffer(self, sizehint):
            self.hints.append(sizehint)
            return empty

    async def main():
        proto = Empty()
        transport, peer = await net.open(proto)
        peer.send(b"data")
        await until(lambda: proto.lost_calls, "connection_lost")
        (ctx,) = exc_handler.consume(1)
        assert ctx["message"] == "Fatal error: protocol.get_buffer() call failed."
        exc = ctx["exception"]
        assert type(exc) is RuntimeError
        assert str(exc) == "get_buffer() returned an empty buffer"
        assert ctx["transport"] is transport
        assert ctx["protocol"] is proto
        assert proto.lost_calls == [exc]
        assert proto.updates == []
        assert transport.is_closing()
        await iterations(5)
        assert proto.lost_calls == [exc]

    run(main())


@pytest.mark.parametrize(
    "method, message",
    [
        ("get_buffer", "Fatal error: protocol.get_buffer() call failed."),
        ("buffer_updated", "Fatal error: protocol.buffer_updated() call failed."),
    ],
)
def test_buffered_protocol_callback_raising_is_fatal(loop, run, net, exc_handler, method, message):
    err = LookupError("raised by the protocol")

    class Raising(BufRec):
        def get_buffer(self, sizehint):
            if method == "get_buffer":
                raise err
            return super().get_buffer(sizehint)

        def buffer_updated(self, nbytes):
            super().buffer_updated(nbytes)
            raise err

    async def main():
        proto = Raising()
        transport, peer = await net.open(proto)
        peer.send(b"data")
        await until(lambda: proto.lost_calls, "connection_lost")
        (ctx,) = exc_handler.consume(1)
        assert ctx["message"] == message
        assert ctx["exception"] is err
        assert ctx["transport"] is transport
        assert ctx["protocol"] is proto
        assert proto.lost_calls == [err]
        assert transport.is_closing()

    run(main())


def test_get_buffer_read_only_is_fatal_read_error(loop, run, net, exc_handler):
    class ReadOnly(BufRec):
        def get_buffer(self, sizehint):
            return b"read-only buffer"

    async def main():
        proto = ReadOnly()
        transport, peer = await net.open(proto)
        peer.send(b"data")
        await until(lambda: proto.lost_calls, "connection_lost")
        (ctx,) = exc_handler.consume(1)
        assert ctx["message"] == "Fatal read error on socket transport"
        assert isinstance(ctx["exception"], TypeError)
        assert proto.lost_calls == [ctx["exception"]]
        assert proto.updates == []

    run(main())


# --------------------------------------------------------------------------- 3. eof_received


@pytest.mark.parametrize("eof_result", [None, False, 0], ids=repr)
def test_eof_received_falsy_closes(loop, run, net, eof_result):
    async def main():
        proto = Rec(eof_result)
        transport, peer = await net.open(proto)
        peer.send(b"hello")
        peer.shutdown(socket.SHUT_WR)
        await until(lambda: proto.lost_calls, "connection_lost")
        assert proto.events == ["made", "data", "eof", "lost"]
        assert proto.data == b"hello"
        assert proto.lost_calls == [None]
        assert transport.is_closing()
        assert await peer_recv_to_eof(peer) == b""

    run(main())


@pytest.mark.parametrize("side", SIDES)
def test_eof_received_true_keeps_transport_writable(loop, run, net, side):
    class Replier(Rec):
        def eof_received(self):
            super().eof_received()
            self.transport.write(b"reply to " + bytes(self.data))
            return True

    async def main():
        proto = Replier()
        transport, peer = await net.open(proto, side)
        peer.send(b"question")
        peer.shutdown(socket.SHUT_WR)
        await until(lambda: "eof" in proto.events, "eof_received")
        await iterations(20)
        # Still open; EOF is reported once (the reader is removed, not polled again).
        assert proto.events == ["made", "data", "eof"]
        assert proto.lost_calls == []
        assert not transport.is_closing()
        transport.write(b", and more")
        expected = b"reply to question, and more"
        assert await peer_recv(peer, len(expected)) == expected
        transport.close()
        assert await peer_recv_to_eof(peer) == b""
        await until(lambda: proto.lost_calls, "connection_lost")
        assert proto.events == ["made", "data", "eof", "lost"]
        assert proto.lost_calls == [None]

    run(main())


def test_reply_written_in_eof_received_is_flushed_before_close(loop, run, net):
    """The HTTP/1.0 pattern: write the reply in eof_received() and return None: close()
    flushes it, then the peer sees EOF."""
    reply = _payload(1 * MiB, seed=17)

    class Server(Rec):
        def eof_received(self):
            super().eof_received()
            self.transport.write(reply)

    async def main():
        proto = Server()
        transport, peer = await net.open(proto)
        peer.send(b"request")
        peer.shutdown(socket.SHUT_WR)
        got = await peer_recv_to_eof(peer)
        assert _digest(got) == _digest(reply)
        await until(lambda: proto.lost_calls, "connection_lost")
        assert proto.lost_calls == [None]
        assert [e for e in proto.events if e in ("data", "eof", "lost")] == ["data", "eof", "lost"]

    run(main())


# --------------------------------------------------------------------------- 4. connection_lost


@pytest.mark.parametrize(
    "ending",
    [
        "close",
        "abort",
        "peer_close",
        "peer_reset",
        "close_then_abort",
        "close_then_peer_reset",
        "close_flushing",
    ],
)
def test_connection_lost_called_exactly_once(loop, run, net, family, ending):
    async def main():
        proto = Rec()
        transport, peer = await net.open(proto)
        expected: type | None = None
        if ending == "close":
            transport.close()
        elif ending == "abort":
            transport.abort()
        elif ending == "peer_close":
            peer.close()
        elif ending == "peer_reset":
            peer_reset(peer)
            # asyncio: a TCP reset is a ConnectionResetError from recv(); a Unix socket has
            # no reset, the peer's close is an EOF.
            expected = ConnectionResetError if family == "tcp" else None
        elif ending == "close_then_abort":
            fill(transport, 256 * KiB)
            transport.close()
            await iterations(3)
            assert proto.lost_calls == []
            transport.abort()
        elif ending == "close_then_peer_reset":
            fill(transport, 256 * KiB)
            transport.close()
            await iterations(3)
            peer_reset(peer)
            expected = ConnectionResetError if family == "tcp" else BrokenPipeError
        elif ending == "close_flushing":
            sent = fill(transport, 256 * KiB)
            transport.close()
            assert _digest(await peer_recv_to_eof(peer)) == _digest(sent)
        await until(lambda: proto.lost_calls, "connection_lost")
        assert transport.is_closing()
        # More endings after the first change nothing. (Not abort() after a close() that
        # flushed: asyncio's _write_ready() then calls connection_lost without counting it,
        # and a later abort() fails on the cleared loop.)
        transport.close()
        if ending != "close_flushing":
            transport.abort()
            transport.close()
        await iterations(10)
        assert len(proto.lost_calls) == 1, proto.lost_calls
        (exc,) = proto.lost_calls
        assert type(exc) is (type(None) if expected is None else expected), exc
        assert proto.events.count("lost") == 1
        assert proto.events[-1] == "lost"
        assert transport.get_protocol() is None  # released, as asyncio does
        eofs = 1 if ending == "peer_close" or (ending == "peer_reset" and family == "unix") else 0
        assert proto.events.count("eof") == eofs
        assert transport.get_write_buffer_size() == 0

    run(main())


def test_no_data_received_after_close(loop, run, net):
    class CloseOnData(Rec):
        def data_received(self, data):
            super().data_received(data)
            self.transport.close()

    async def main():
        proto = CloseOnData()
        transport, peer = await net.open(proto)
        peer.send(b"first")
        await until(lambda: proto.lost_calls, "connection_lost")
        assert proto.data == b"first"
        assert proto.events == ["made", "data", "lost"]
        assert proto.lost_calls == [None]

    run(main())


@pytest.mark.parametrize("via", ["close", "flush"])
def test_connection_lost_raising(loop, run, net, exc_handler, via):
    """An exception from connection_lost() is reported like any failing callback, and the
    socket is closed anyway."""
    err = ArithmeticError("from connection_lost")

    class Boom(Rec):
        def connection_lost(self, exc):
            super().connection_lost(exc)
            raise err

    async def main():
        proto = Boom()
        transport, peer = await net.open(proto)
        sent = fill(transport, 256 * KiB) if via == "flush" else b""
        transport.close()
        assert _digest(await peer_recv_to_eof(peer)) == _digest(sent)
        await until(lambda: proto.lost_calls, "connection_lost")
        await iterations(3)
        (ctx,) = exc_handler.consume(1)
        assert ctx["exception"] is err
        assert ctx["message"].startswith("Exception in callback")
        assert proto.lost_calls == [None]
        assert transport.get_extra_info("socket").fileno() == -1  # closed

    run(main())


def test_transport_and_protocol_released_after_close(loop, run, net):
    async def main():
        proto = Rec()
        transport, peer = await net.open(proto)
        net.transports.remove(transport)
        refs = [weakref.ref(transport), weakref.ref(proto)]
        transport.write(b"bye")
        transport.close()
        await until(lambda: proto.lost_calls, "connection_lost")
        await iterations(3)
        return refs

    refs = run(main())
    gc.collect()
    assert [r() for r in refs] == [None, None]


# --------------------------------------------------------------------------- 5. writes


@pytest.mark.parametrize("side", SIDES)
def test_write_multi_megabyte_arrives_intact(loop, run, net, side):
    payload = _payload(5 * MiB + 12345, seed=2)

    async def main():
        proto = Rec()
        transport, peer = await net.open(proto, side)
        view = memoryview(payload)
        for start in range(0, len(payload), 100_003):  # odd sizes
            transport.write(view[start : start + 100_003])
        got = await peer_recv(peer, len(payload))
        assert _digest(got) == _digest(payload)
        await until(lambda: transport.get_write_buffer_size() == 0, "drained")
        transport.close()
        assert await peer_recv_to_eof(peer) == b""
        await until(lambda: proto.lost_calls, "connection_lost")
        assert proto.lost_calls == [None]

    run(main())


@pytest.mark.parametrize("side", SIDES)
def test_write_accepts_bytes_like(loop, run, net, side):
    ints = array.array("i", [1, -2, 3, 0x01020304])

    async def main():
        proto = Rec()
        transport, peer = await net.open(proto, side)
        transport.write(b"bytes|")
        transport.write(bytearray(b"bytearray|"))
        transport.write(memoryview(b"memoryview|"))
        transport.write(memoryview(b"xxsliced|xx")[2:-2])
        transport.write(memoryview(ints))
        transport.writelines([b"|a", bytearray(b"b"), memoryview(b"c"), memoryview(ints)])
        transport.writelines(iter([b"|gen", b"erator"]))
        transport.writelines([])
        expected = (
            b"bytes|bytearray|memoryview|sliced|"
            + ints.tobytes()
            + b"|abc"
            + ints.tobytes()
            + b"|generator"
        )
        assert await peer_recv(peer, len(expected)) == expected
        await iterations(5)
        assert transport.get_write_buffer_size() == 0

    run(main())


def test_write_while_buffered_copies_and_counts_bytes(loop, run, net):
    """Data written behind buffered data: sizes count bytes, and the caller's object is
    copied (mutating it afterwards does not change what is sent)."""
    ints = array.array("i", range(1000))

    async def main():
        proto = Rec()
        transport, peer = await net.open(proto)
        transport.set_write_buffer_limits(high=64 * MiB)
        sent = fill(transport, 1)
        size = transport.get_write_buffer_size()
        assert size > 0
        mutable = bytearray(b"original")
        transport.write(mutable)
        mutable[:] = b"MUTATED!"
        assert transport.get_write_buffer_size() == size + 8
        transport.write(memoryview(ints))
        assert transport.get_write_buffer_size() == size + 8 + 4000
        transport.writelines([b"x", bytearray(b"yz")])
        assert transport.get_write_buffer_size() == size + 8 + 4000 + 3
        transport.write(b"")
        transport.write(bytearray())
        transport.write(memoryview(b""))
        transport.writelines([])
        assert transport.get_write_buffer_size() == size + 8 + 4000 + 3
        expected = sent + b"original" + ints.tobytes() + b"xyz"
        got = await peer_recv(peer, len(expected))
        assert _digest(got) == _digest(expected)
        await until(lambda: transport.get_write_buffer_size() == 0, "drained")
        assert proto.events == ["made"]  # never paused

    run(main())


@pytest.mark.parametrize(
    "bad, name",
    [("str", "str"), (123, "int"), (None, "NoneType"), (array.array("b", b"ab"), "array")],
    ids=["str", "int", "None", "array"],
)
def test_write_rejects_non_bytes(loop, run, net, bad, name):
    async def main():
        proto = Rec()
        transport, peer = await net.open(proto)
        with pytest.raises(TypeError) as info:
            transport.write(bad)
        assert str(info.value) == f"data argument must be a bytes-like object, not '{name}'"
        with pytest.raises(TypeError):
            transport.writelines([b"ok", "str"])
        transport.write(b"still fine")
        assert await peer_recv(peer, 10) == b"still fine"
        assert not transport.is_closing()

    run(main())


def test_write_str_message(loop, run, net):
    async def main():
        transport, _ = await net.open(Rec())
        with pytest.raises(
            TypeError, match=r"^data argument must be a bytes-like object, not 'str'$"
        ):
            transport.write("str")

    run(main())


def test_write_non_contiguous_memoryview(loop, run, net, exc_handler):
    """asyncio hands the memoryview to sock.send(), which needs a contiguous buffer: the
    BufferError is a fatal write error (exception handler, transport closed)."""

    async def main():
        proto = Rec()
        transport, peer = await net.open(proto)
        transport.write(memoryview(b"abcdef")[::2])
        await until(lambda: proto.lost_calls, "connection_lost")
        (ctx,) = exc_handler.consume(1)
        assert ctx["message"] == "Fatal write error on socket transport"
        assert isinstance(ctx["exception"], BufferError)
        assert proto.lost_calls == [ctx["exception"]]

    run(main())


@pytest.mark.parametrize("buffered", [False, True], ids=["empty", "buffered"])
def test_write_eof(loop, run, net, buffered):
    async def main():
        proto = Rec()
        transport, peer = await net.open(proto)
        assert transport.can_write_eof() is True
        transport.set_write_buffer_limits(high=64 * MiB)
        sent = fill(transport, 256 * KiB) if buffered else b""
        transport.write(b"last")
        transport.write_eof()
        transport.write_eof()  # harmless
        for data in (b"more", b"", bytearray(b"x")):
            with pytest.raises(RuntimeError, match=r"^Cannot call write\(\) after write_eof\(\)$"):
                transport.write(data)
        with pytest.raises(RuntimeError, match=r"^Cannot call write\(\) after write_eof\(\)$"):
            transport.writelines([b"a"])
        assert not transport.is_closing()
        # The peer gets everything, then EOF (after the buffer is flushed).
        got = await peer_recv_to_eof(peer)
        assert _digest(got) == _digest(sent + b"last")
        # Half-closed: the transport still reads.
        peer.send(b"late reply")
        await until(lambda: proto.data == b"late reply", "data after write_eof")
        assert proto.lost_calls == []
        peer.shutdown(socket.SHUT_WR)
        await until(lambda: proto.lost_calls, "connection_lost")
        assert proto.lost_calls == [None]
        assert proto.events == ["made", "data", "eof", "lost"]

    run(main())


def test_empty_write_is_noop(loop, run, net):
    async def main():
        proto = Rec()
        transport, peer = await net.open(proto)
        for empty in (b"", bytearray(), memoryview(b""), memoryview(b"abc")[3:]):
            transport.write(empty)
        transport.writelines([b"", b""])
        assert transport.get_write_buffer_size() == 0
        await iterations(5)
        with pytest.raises(BlockingIOError):
            peer.recv(10)
        transport.close()
        assert await peer_recv_to_eof(peer) == b""

    run(main())


@pytest.mark.parametrize("method", ["write", "writelines"])
def test_write_after_flushed_close_reaches_no_other_socket(loop, run, net, method):
    """close() with buffered data: once flushed, connection_lost runs and the socket is closed.
    A later write must not reach whatever socket reuses the fd number. (asyncio raises an
    AttributeError from write() here; ferroloop may drop or raise, but never send.)"""

    async def main():
        proto = Rec()
        transport, peer = await net.open(proto)
        fd = transport.get_extra_info("socket").fileno()
        sent = fill(transport, 256 * KiB)
        transport.close()
        assert _digest(await peer_recv_to_eof(peer)) == _digest(sent)
        await until(lambda: proto.lost_calls, "connection_lost")
        assert proto.lost_calls == [None]
        # Sockets made now take the lowest free fd numbers: one gets the transport's old one.
        others = []
        try:
            for _ in range(5):
                others.extend(socket.socketpair())
                if fd in (s.fileno() for s in others):
                    break
            assert fd in (s.fileno() for s in others), "fd not reused"
            for s in others:
                s.setblocking(False)
            with contextlib.suppress(Exception):  # asyncio raises AttributeError
                if method == "write":
                    transport.write(b"LEAK")
                else:
                    transport.writelines([b"LE", b"AK"])
            await iterations(3)
            leaked = []
            for s in others:
                try:
                    leaked.append(s.recv(100))
                except BlockingIOError:
                    pass
            assert leaked == []
        finally:
            for s in others:
                s.close()

    run(main())


# --------------------------------------------------------------------------- 6. flow control


@pytest.mark.parametrize("family", ["tcp"])
def test_write_buffer_limits(loop, run, net):
    async def main():
        transport, _ = await net.open(Rec())
        assert transport.get_write_buffer_limits() == (16 * KiB, 64 * KiB)
        transport.set_write_buffer_limits(high=None, low=1000)
        assert transport.get_write_buffer_limits() == (1000, 4000)
        transport.set_write_buffer_limits(high=100)
        assert transport.get_write_buffer_limits() == (25, 100)
        transport.set_write_buffer_limits(high=10, low=10)
        assert transport.get_write_buffer_limits() == (10, 10)
        transport.set_write_buffer_limits(low=0)
        assert transport.get_write_buffer_limits() == (0, 0)
        cases = [
            ({"high": 1, "low": 2}, "high (1) must be >= low (2) must be >= 0"),
            ({"low": -1}, "high (-4) must be >= low (-1) must be >= 0"),
            ({"high": -1}, "high (-1) must be >= low (-1) must be >= 0"),
        ]
        for kwargs, message in cases:
            with pytest.raises(ValueError) as info:
                transport.set_write_buffer_limits(**kwargs)
            assert str(info.value) == message
            assert transport.get_write_buffer_limits() == (0, 0)  # unchanged
        transport.set_write_buffer_limits()
        assert transport.get_write_buffer_limits() == (16 * KiB, 64 * KiB)

    run(main())


@pytest.mark.parametrize(
    "kwargs, limits",
    [
        ({"high": 1e6}, (250_000, 1_000_000)),
        ({"low": 1000.0}, (1000, 4000)),
        ({"high": float("inf"), "low": 0}, (0, float("inf"))),
        ({"high": 2**70}, (2**68, 2**70)),
    ],
    ids=["float-high", "float-low", "inf", "huge-int"],
)
@pytest.mark.parametrize("family", ["tcp"])
def test_write_buffer_limits_accept_any_number(loop, run, net, kwargs, limits):
    async def main():
        proto = Rec()
        transport, peer = await net.open(proto)
        transport.set_write_buffer_limits(**kwargs)
        assert transport.get_write_buffer_limits() == limits
        sent = fill(transport, 256 * KiB)
        if limits[1] > 1 * MiB:
            assert "pause" not in proto.events
        assert _digest(await peer_recv(peer, len(sent))) == _digest(sent)

    run(main())


@pytest.mark.parametrize("side", SIDES)
def test_pause_and_resume_writing(loop, run, net, side):
    async def main():
        proto = Rec()
        transport, peer = await net.open(proto, side)
        sent = []
        rng = random.Random(5)
        for _ in range(2000):
            if "pause" in proto.events:
                break
            chunk = rng.randbytes(16 * KiB)
            transport.write(chunk)
            sent.append(chunk)
        assert proto.events == ["made", "pause"]
        assert proto.pause_sizes[0] > 64 * KiB
        assert transport.get_write_buffer_size() > 64 * KiB
        # Writes while paused are buffered; pause_writing is not called again.
        for _ in range(8):
            chunk = rng.randbytes(16 * KiB)
            transport.write(chunk)
            sent.append(chunk)
        await asyncio.sleep(0.02)
        assert proto.events == ["made", "pause"]
        expected = b"".join(sent)
        got = await peer_recv(peer, len(expected))
        assert _digest(got) == _digest(expected)
        await until(lambda: transport.get_write_buffer_size() == 0, "drained")
        assert proto.events == ["made", "pause", "resume"]
        assert proto.resume_sizes[0] <= 16 * KiB

    run(main())


def test_pause_writing_threshold_is_exact(loop, run, net):
    """pause_writing() is called when the buffer exceeds high (not when it equals it), and
    set_write_buffer_limits() pauses at once when the buffer is already above the new high."""

    async def main():
        proto = Rec()
        transport, peer = await net.open(proto)
        transport.set_write_buffer_limits(high=64 * MiB)
        sent = fill(transport, 1)
        size = transport.get_write_buffer_size()
        transport.set_write_buffer_limits(high=size + 100)
        transport.write(b"a" * 100)
        assert transport.get_write_buffer_size() == size + 100
        assert proto.events == ["made"]
        transport.write(b"b")
        assert proto.events == ["made", "pause"]
        assert proto.pause_sizes == [size + 101]
        # Already paused: lowering the limit does not call pause_writing() again.
        transport.set_write_buffer_limits(high=10)
        assert proto.events == ["made", "pause"]
        expected = sent + b"a" * 100 + b"b"
        assert _digest(await peer_recv(peer, len(expected))) == _digest(expected)
        await until(lambda: "resume" in proto.events, "resume_writing")
        assert proto.resume_sizes[0] <= 2
        # Now not paused: a new limit below the buffered size pauses at once.
        transport.set_write_buffer_limits(high=64 * MiB)
        more = fill(transport, 1, seed=7)
        size = transport.get_write_buffer_size()
        transport.set_write_buffer_limits(high=size)
        assert proto.events == ["made", "pause", "resume"]
        transport.set_write_buffer_limits(high=size - 1)
        assert proto.events == ["made", "pause", "resume", "pause"]
        assert _digest(await peer_recv(peer, len(more))) == _digest(more)
        await until(lambda: proto.events.count("resume") == 2, "second resume_writing")

    run(main())


def test_producer_driven_by_flow_control(loop, run, net):
    """A producer writing from resume_writing() (which may append to the buffer while the
    transport flushes it) delivers every byte in order."""
    total = 6 * MiB
    payload = _payload(total, seed=12)

    class Producer(Rec):
        def __init__(self):
            super().__init__()
            self.pos = 0
            self.paused = False

        def produce(self):
            while not self.paused and self.pos < total:
                self.transport.write(payload[self.pos : self.pos + 50_000])
                self.pos += 50_000

        def connection_made(self, transport):
            super().connection_made(transport)
            transport.set_write_buffer_limits(high=200 * KiB)

        def pause_writing(self):
            super().pause_writing()
            self.paused = True

        def resume_writing(self):
            super().resume_writing()
            self.paused = False
            self.produce()

    async def main():
        proto = Producer()
        transport, peer = await net.open(proto)
        proto.produce()
        got = await peer_recv(peer, total)
        assert _digest(got) == _digest(payload)
        assert proto.pos >= total
        # (Not closed from resume_writing(): asyncio's _write_ready() would then call
        # connection_lost twice if the buffer happened to be empty.)
        transport.close()
        assert await peer_recv_to_eof(peer) == b""
        await until(lambda: proto.lost_calls, "connection_lost")
        assert proto.lost_calls == [None]
        assert proto.events.count("pause") == proto.events.count("resume") >= 1
        assert all(size <= 50 * KiB for size in proto.resume_sizes)

    run(main())


def test_abort_from_pause_writing(loop, run, net, caplog):
    """abort() from pause_writing() (called inside write()): the buffer is dropped, and the
    later writes are dropped (the fifth one onwards logs a warning)."""
    caplog.set_level(logging.WARNING, logger="asyncio")

    class Aborter(Rec):
        def pause_writing(self):
            super().pause_writing()
            self.transport.abort()

    async def main():
        proto = Aborter()
        transport, peer = await net.open(proto)
        written = 0
        while "pause" not in proto.events:
            transport.write(b"x" * 64 * KiB)
            written += 64 * KiB
        assert transport.is_closing()
        assert transport.get_write_buffer_size() == 0
        caplog.clear()
        for _ in range(5):
            transport.write(b"dropped")
        assert [r.getMessage() for r in caplog.records if r.name == "asyncio"] == [
            "socket.send() raised exception."
        ]
        await until(lambda: proto.lost_calls, "connection_lost")
        assert proto.lost_calls == [None]
        got = await peer_recv_to_eof(peer)
        assert 0 < len(got) < written
        assert got == b"x" * len(got)

    run(main())


# --------------------------------------------------------------------------- 7. pause_reading


def test_pause_and_resume_reading(loop, run, net):
    async def main():
        proto = Rec()
        transport, peer = await net.open(proto)
        assert transport.is_reading()
        transport.pause_reading()
        assert not transport.is_reading()
        transport.pause_reading()  # idempotent
        assert not transport.is_reading()
        peer.send(b"while paused")
        peer.shutdown(socket.SHUT_WR)
        await asyncio.sleep(0.03)
        assert proto.events == ["made"]  # neither data nor EOF
        transport.resume_reading()
        assert transport.is_reading()
        transport.resume_reading()  # idempotent
        assert transport.is_reading()
        await until(lambda: proto.lost_calls, "connection_lost")
        assert proto.data == b"while paused"
        assert proto.events == ["made", "data", "eof", "lost"]
        assert not transport.is_reading()

    run(main())


def test_pause_reading_in_callbacks(loop, run, net):
    """Paused in connection_made(): nothing is read; paused in data_received(): no further
    data_received() until resumed."""

    class Pauser(Rec):
        def connection_made(self, transport):
            super().connection_made(transport)
            transport.pause_reading()

        def data_received(self, data):
            super().data_received(data)
            self.transport.pause_reading()

    async def main():
        proto = Pauser()
        transport, peer = await net.open(proto)
        peer.send(b"x" * 1000)
        await asyncio.sleep(0.02)
        assert proto.data == b""
        assert not transport.is_reading()
        transport.resume_reading()
        await until(lambda: proto.data, "data")
        n = len(proto.types)
        assert n == 1
        assert not transport.is_reading()
        peer.send(b"y" * 1000)
        await asyncio.sleep(0.02)
        assert len(proto.types) == 1
        got = len(proto.data)
        assert got <= 1000
        transport.resume_reading()
        await until(lambda: len(proto.types) == 2, "second data_received")

    run(main())


def test_reading_state_after_close(loop, run, net):
    async def main():
        proto = Rec()
        transport, peer = await net.open(proto)
        transport.pause_reading()
        transport.close()
        assert not transport.is_reading()
        transport.resume_reading()  # no-op once closing
        assert not transport.is_reading()
        transport.pause_reading()
        assert not transport.is_reading()
        await until(lambda: proto.lost_calls, "connection_lost")
        assert not transport.is_reading()
        assert proto.lost_calls == [None]

        proto2 = Rec()
        transport2, _ = await net.open(proto2)
        assert transport2.is_reading()
        transport2.abort()
        assert not transport2.is_reading()

    run(main())


# --------------------------------------------------------------------------- 8. close / abort


@pytest.mark.parametrize("side", SIDES)
def test_close_flushes_buffer_first(loop, run, net, side):
    async def main():
        proto = Rec()
        transport, peer = await net.open(proto, side)
        sent = fill(transport, 1 * MiB)
        transport.close()
        assert transport.is_closing()
        assert not transport.is_reading()
        transport.close()  # harmless
        await asyncio.sleep(0.02)
        assert proto.lost_calls == []  # not before the buffer is flushed
        assert transport.get_write_buffer_size() > 0
        got = await peer_recv_to_eof(peer)
        assert _digest(got) == _digest(sent)
        await until(lambda: proto.lost_calls, "connection_lost")
        assert proto.lost_calls == [None]
        assert transport.get_write_buffer_size() == 0

    run(main())


@pytest.mark.parametrize("side", SIDES)
def test_abort_drops_buffer(loop, run, net, side):
    async def main():
        proto = Rec()
        transport, peer = await net.open(proto, side)
        sent = fill(transport, 1 * MiB)
        transport.abort()
        assert transport.is_closing()
        assert transport.get_write_buffer_size() == 0
        transport.abort()
        transport.close()
        await iterations(3)  # promptly, without the peer reading anything
        assert proto.lost_calls == [None]
        got = await peer_recv_to_eof(peer)
        assert len(got) < len(sent)
        assert got == sent[: len(got)]

    run(main())


# --------------------------------------------------------------------------- 9. set_protocol


@pytest.mark.parametrize(
    "first, second",
    [("plain", "plain"), ("plain", "buffered"), ("buffered", "plain"), ("buffered", "buffered")],
)
def test_set_protocol_routes_later_data(loop, run, net, first, second):
    def make(kind):
        return Rec() if kind == "plain" else BufRec("window", size=100)

    async def main():
        a = make(first)
        transport, peer = await net.open(a)
        assert transport.get_protocol() is a
        peer.send(b"first")
        await until(lambda: a.data == b"first", "first protocol's data")
        b = make(second)
        transport.set_protocol(b)
        assert transport.get_protocol() is b
        payload = _payload(10 * KiB, seed=8)
        peer.send(payload)
        await until(lambda: len(b.data) >= len(payload), "second protocol's data")
        assert bytes(b.data) == payload
        assert a.data == b"first"
        if second == "buffered":
            assert b.updates and sum(b.updates) == len(payload)
        peer.shutdown(socket.SHUT_WR)
        await until(lambda: b.lost_calls, "connection_lost")
        assert b.lost_calls == [None]
        assert a.lost_calls == []
        assert "eof" in b.events
        assert "eof" not in a.events

    run(main())


# ------------------------------------------------------------ 10, 11. extra info, TCP_NODELAY, repr


@pytest.mark.parametrize("side", SIDES)
def test_get_extra_info(loop, run, net, family, side):
    async def main():
        transport, peer = await net.open(Rec(), side)
        sock = transport.get_extra_info("socket")
        assert sock.family == peer.family
        assert sock.family == (socket.AF_INET if family == "tcp" else socket.AF_UNIX)
        assert sock.type == socket.SOCK_STREAM
        assert sock.fileno() >= 0
        assert sock.fileno() != peer.fileno()
        assert transport.get_extra_info("sockname") == sock.getsockname() == peer.getpeername()
        assert transport.get_extra_info("peername") == sock.getpeername() == peer.getsockname()
        if family == "tcp":
            assert transport.get_extra_info("sockname")[0] == "127.0.0.1"
        assert transport.get_extra_info("no such key") is None
        assert transport.get_extra_info("no such key", 42) == 42
        sentinel = object()
        assert transport.get_extra_info("sslcontext", sentinel) is sentinel

    run(main())


@pytest.mark.parametrize("family", ["tcp"])
@pytest.mark.parametrize("side", SIDES)
def test_tcp_nodelay_is_on(loop, run, net, side):
    async def main():
        transport, peer = await net.open(Rec(), side)
        sock = transport.get_extra_info("socket")
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        # The peer is a plain socket: Nagle is on there (the check can tell them apart).
        assert peer.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) == 0

    run(main())


def test_repr_reflects_state(loop, run, net):
    async def main():
        proto = Rec()
        transport, peer = await net.open(proto)
        fd = transport.get_extra_info("socket").fileno()
        text = repr(transport)
        assert f"fd={fd}" in text
        assert "read=polling" in text
        assert "write=<idle, bufsize=0>" in text
        transport.pause_reading()
        assert "read=idle" in repr(transport)
        transport.resume_reading()
        fill(transport, 1)
        size = transport.get_write_buffer_size()
        assert f"write=<polling, bufsize={size}>" in repr(transport)
        transport.abort()
        assert "closing" in repr(transport)
        await until(lambda: proto.lost_calls, "connection_lost")
        assert "closed" in repr(transport)

    run(main())


# -------------------------------------------------------------- 12. asyncio APIs over the transport


def test_transport_is_an_asyncio_transport(loop, run, net):
    async def main():
        transport, _ = await net.open(Rec())
        assert isinstance(transport, asyncio.Transport)
        assert isinstance(transport, asyncio.ReadTransport)
        assert isinstance(transport, asyncio.WriteTransport)
        assert isinstance(transport, asyncio.BaseTransport)

    run(main())


def test_streams_round_trip(loop, run, net, family):
    payload = _payload(2 * MiB, seed=9)

    async def handle(reader, writer):
        try:
            n = int.from_bytes(await reader.readexactly(4), "big")
            data = await reader.readexactly(n)
            writer.write(hashlib.sha256(data).digest())
            writer.write(data[::-1])
            await writer.drain()
        finally:
            writer.close()
            await writer.wait_closed()

    async def main():
        if family == "tcp":
            server = await asyncio.start_server(handle, "127.0.0.1", 0)
            reader, writer = await asyncio.open_connection(*server.sockets[0].getsockname())
        else:
            path = net.path()
            server = await asyncio.start_unix_server(handle, path)
            reader, writer = await asyncio.open_unix_connection(path)
        try:
            assert isinstance(writer.transport, asyncio.Transport)
            writer.write(len(payload).to_bytes(4, "big"))
            writer.write(payload)
            await writer.drain()
            digest = await reader.readexactly(32)
            back = await reader.readexactly(len(payload))
            assert digest == hashlib.sha256(payload).digest()
            assert back == payload[::-1]
            assert await reader.read() == b""
            writer.close()
            await writer.wait_closed()
            assert writer.transport.is_closing()
        finally:
            server.close()
            await server.wait_closed()

    run(main())


def _certfile():
    path = os.path.join(
        os.path.dirname(asyncio.__file__), os.pardir, "test", "certdata", "keycert.pem"
    )
    if not os.path.exists(path):
        pytest.skip("CPython's test certificates are not installed")
    return path


@pytest.mark.parametrize("family", ["tcp"])
@pytest.mark.parametrize("how", ["ssl", "start_tls"])
def test_tls_streams_over_transport(loop, run, net, how):
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(_certfile())
    client_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_ctx.check_hostname = False
    client_ctx.verify_mode = ssl.CERT_NONE
    payload = _payload(1 * MiB, seed=14)

    async def handle(reader, writer):
        try:
            if how == "start_tls":
                assert await reader.readexactly(8) == b"STARTTLS"
                writer.write(b"GO")  # the client starts its handshake only after this
                await writer.drain()
                await writer.start_tls(server_ctx)
            data = await reader.readexactly(len(payload))
            writer.write(hashlib.sha256(data).digest())
            await writer.drain()
        finally:
            writer.close()

    async def main():
        ssl_arg = server_ctx if how == "ssl" else None
        server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=ssl_arg)
        addr = server.sockets[0].getsockname()
        try:
            if how == "ssl":
                reader, writer = await asyncio.open_connection(*addr, ssl=client_ctx)
            else:
                reader, writer = await asyncio.open_connection(*addr)
                writer.write(b"STARTTLS")
                await writer.drain()
                assert await reader.readexactly(2) == b"GO"
                await writer.start_tls(client_ctx)
            assert writer.get_extra_info("cipher") is not None
            writer.write(payload)
            await writer.drain()
            assert await reader.readexactly(32) == hashlib.sha256(payload).digest()
            writer.close()
            await writer.wait_closed()
        finally:
            server.close()
            await server.wait_closed()

    run(main())


def test_sendfile_over_transport(loop, run, net, tmp_path):
    content = _payload(3 * MiB + 7, seed=13)
    path = tmp_path / "file.bin"
    path.write_bytes(content)

    async def main():
        proto = Rec()
        transport, peer = await net.open(proto)
        head = fill(transport, 1)  # the file is sent after the buffered data
        with open(path, "rb") as f:
            task = asyncio.ensure_future(loop.sendfile(transport, f))
            await asyncio.sleep(0)
            with pytest.raises(RuntimeError, match="^unable to write; sendfile is in progress$"):
                transport.write(b"x")
            expected = head + content
            got = await peer_recv(peer, len(expected))
            assert await task == len(content)
        assert _digest(got) == _digest(expected)
        transport.write(b"after")
        assert await peer_recv(peer, 5) == b"after"
        assert transport.is_reading()
        peer.send(b"ping")
        await until(lambda: proto.data == b"ping", "data after sendfile")

    run(main())


def test_connect_accepted_socket_pair(loop, run):
    """Two transports of the same loop talking to each other over a socketpair."""
    payload = _payload(2 * MiB, seed=15)

    class Echo(Rec):
        def data_received(self, data):
            super().data_received(data)
            self.transport.write(data)

    async def main():
        a, b = socket.socketpair()
        echo = Echo()
        client = Rec()
        t_echo, _ = await loop.connect_accepted_socket(lambda: echo, a)
        t_client, _ = await loop.connect_accepted_socket(lambda: client, b)
        assert t_echo is echo.transport and t_client is client.transport
        t_client.write(payload)
        t_client.write_eof()
        await until(lambda: client.lost_calls and echo.lost_calls, "both connection_lost")
        assert _digest(client.data) == _digest(payload)
        assert client.events[-2:] == ["eof", "lost"]
        assert client.lost_calls == [None]
        assert echo.lost_calls == [None]

    run(main())


def test_many_connections_do_not_cross(loop, run, family, tmp_path):
    n = 40

    async def handle(reader, writer):
        line = await reader.readline()
        writer.write(line.upper() * 3)
        await writer.drain()
        writer.close()

    async def client(i, connect):
        reader, writer = await connect()
        msg = f"client {i}\n".encode()
        writer.write(msg)
        data = await reader.read()
        writer.close()
        await writer.wait_closed()
        return data == msg.upper() * 3

    async def main():
        if family == "tcp":
            server = await asyncio.start_server(handle, "127.0.0.1", 0, backlog=n)
            addr = server.sockets[0].getsockname()

            def connect():
                return asyncio.open_connection(*addr)

        else:
            path = Net(loop, family, tmp_path).path()
            server = await asyncio.start_unix_server(handle, path, backlog=n)

            def connect():
                return asyncio.open_unix_connection(path)

        try:
            results = await asyncio.gather(*(client(i, connect) for i in range(n)))
        finally:
            server.close()
            await server.wait_closed()
        assert results == [True] * n

    run(main())


def test_server_wait_closed_waits_for_its_connections(loop, run, net, family):
    """A server's transports attach to it: wait_closed() (started before close()) returns
    only when the last connection is lost."""

    async def main():
        protos = [Rec(), Rec()]
        factory = iter(protos).__next__
        if family == "tcp":
            server = await loop.create_server(factory, "127.0.0.1", 0)
            addr = server.sockets[0].getsockname()
            peers = [socket.create_connection(addr) for _ in protos]
        else:
            path = net.path()
            server = await loop.create_unix_server(factory, path)
            peers = []
            for _ in protos:
                peers.append(socket.socket(socket.AF_UNIX, socket.SOCK_STREAM))
                peers[-1].connect(path)
        net.peers.extend(peers)
        await until(lambda: all(p.transport for p in protos), "connection_made")
        net.transports.extend(p.transport for p in protos)
        waiter = asyncio.ensure_future(server.wait_closed())
        await iterations(2)
        server.close()
        await asyncio.sleep(0.02)
        assert not waiter.done()
        protos[0].transport.close()
        await until(lambda: protos[0].lost_calls, "first connection_lost")
        await asyncio.sleep(0.02)
        assert not waiter.done()
        peers[1].close()  # the second ends from the peer's side
        await until(lambda: protos[1].lost_calls, "second connection_lost")
        await asyncio.wait_for(waiter, 2)

    run(main())


def test_transport_fd_is_reserved(loop, run, net):
    """The loop refuses add_reader/add_writer/sock_* on a live transport's socket."""

    async def main():
        proto = Rec()
        transport, peer = await net.open(proto)
        sock = transport.get_extra_info("socket")
        fd = sock.fileno()
        for method in (loop.add_reader, loop.add_writer):
            with pytest.raises(RuntimeError, match=f"^File descriptor {fd} is used by transport"):
                method(fd, lambda: None)
        with pytest.raises(RuntimeError, match="is used by transport"):
            loop.remove_reader(fd)
        transport.close()
        await until(lambda: proto.lost_calls, "connection_lost")
        assert sock.fileno() == -1

    run(main())


# ----------------------------------------------------------------- 13. exceptions from the protocol


def test_data_received_raising_is_fatal(loop, run, net, exc_handler):
    class Boom(Rec):
        def data_received(self, data):
            super().data_received(data)
            self.err = ZeroDivisionError("boom")
            raise self.err

    async def main():
        proto = Boom()
        transport, peer = await net.open(proto)
        peer.send(b"x")
        await until(lambda: proto.lost_calls, "connection_lost")
        (ctx,) = exc_handler.consume(1)
        assert ctx["message"] == "Fatal error: protocol.data_received() call failed."
        assert ctx["exception"] is proto.err
        assert ctx["transport"] is transport
        assert ctx["protocol"] is proto
        assert {"message", "exception", "transport", "protocol"} <= set(ctx)
        assert transport.is_closing()
        assert proto.lost_calls == [proto.err]
        assert await peer_recv_to_eof(peer) == b""

    run(main())


def test_data_received_raising_oserror_closes_silently(loop, run, net, exc_handler):
    """An OSError is an expected error for asyncio's _fatal_error: closed, not reported."""

    class Boom(Rec):
        def data_received(self, data):
            super().data_received(data)
            self.err = ConnectionAbortedError("protocol gave up")
            raise self.err

    async def main():
        proto = Boom()
        transport, peer = await net.open(proto)
        peer.send(b"x")
        await until(lambda: proto.lost_calls, "connection_lost")
        assert exc_handler.consume() == []
        assert proto.lost_calls == [proto.err]
        assert transport.is_closing()

    run(main())


def test_eof_received_raising_is_fatal(loop, run, net, exc_handler):
    err = KeyError("eof")

    class Boom(Rec):
        def eof_received(self):
            super().eof_received()
            raise err

    async def main():
        proto = Boom()
        transport, peer = await net.open(proto)
        peer.shutdown(socket.SHUT_WR)
        await until(lambda: proto.lost_calls, "connection_lost")
        (ctx,) = exc_handler.consume(1)
        assert ctx["message"] == "Fatal error: protocol.eof_received() call failed."
        assert ctx["exception"] is err
        assert ctx["protocol"] is proto
        assert proto.lost_calls == [err]

    run(main())


@pytest.mark.parametrize("method", ["pause_writing", "resume_writing"])
def test_flow_control_callback_raising(loop, run, net, exc_handler, method):
    err = ValueError(method)

    class Bad(Rec):
        def pause_writing(self):
            super().pause_writing()
            if method == "pause_writing":
                raise err

        def resume_writing(self):
            super().resume_writing()
            if method == "resume_writing":
                raise err

    async def main():
        proto = Bad()
        transport, peer = await net.open(proto)
        sent = fill(transport, 128 * KiB)
        assert proto.events == ["made", "pause"]
        if method == "pause_writing":
            (ctx,) = exc_handler.consume(1)
            assert ctx["message"] == "protocol.pause_writing() failed"
            assert ctx["exception"] is err
            assert ctx["transport"] is transport
            assert ctx["protocol"] is proto
        # Not fatal: the transport keeps going, and pause_writing is not called again.
        more = fill(transport, transport.get_write_buffer_size() + 1, seed=11)
        assert proto.events == ["made", "pause"]
        assert not transport.is_closing()
        expected = sent + more
        assert _digest(await peer_recv(peer, len(expected))) == _digest(expected)
        await until(lambda: transport.get_write_buffer_size() == 0, "drained")
        assert proto.events == ["made", "pause", "resume"]
        if method == "resume_writing":
            (ctx,) = exc_handler.consume(1)
            assert ctx["message"] == "protocol.resume_writing() failed"
            assert ctx["exception"] is err
            assert ctx["transport"] is transport
        assert not transport.is_closing()
        assert proto.lost_calls == []

    run(main())


def test_system_exit_from_data_received_escapes(loop, run, net):
    class Exit(Rec):
        def data_received(self, data):
            super().data_received(data)
            raise SystemExit(3)

    async def main():
        proto = Exit()
        transport, peer = await net.open(proto)
        peer.send(b"x")
        await asyncio.sleep(5)

    with pytest.raises(SystemExit):
        run(main())
    proto = net.transports[0].get_protocol()
    assert proto.data == b"x"
    assert not net.transports[0].is_closing()  # not handled as a fatal error
    assert proto.lost_calls == []


# --------------------------------------------------------------------------- 14. vanishing peer


def test_peer_vanishes_mid_write(loop, run, net, exc_handler, caplog):
    caplog.set_level(logging.WARNING, logger="asyncio")

    def warnings():
        return [
            r.getMessage()
            for r in caplog.records
            if r.name == "asyncio" and r.levelno == logging.WARNING
        ]

    async def main():
        proto = Rec()
        transport, peer = await net.open(proto)
        fill(transport, 2 * MiB)
        peer.close()  # unread data: the kernel resets the connection
        await until(lambda: proto.lost_calls, "connection_lost")
        (exc,) = proto.lost_calls
        # asyncio (TCP and Unix alike): ConnectionResetError.
        assert type(exc) is ConnectionResetError, exc
        assert transport.is_closing()
        assert transport.get_write_buffer_size() == 0
        assert exc_handler.consume() == []
        caplog.clear()
        for _ in range(4):
            transport.write(b"dropped")
        transport.write(b"")  # empty writes are not counted
        assert warnings() == []
        assert transport.get_write_buffer_size() == 0
        transport.write(b"dropped")
        assert warnings() == ["socket.send() raised exception."]
        transport.writelines([b"dropped"])
        assert warnings() == ["socket.send() raised exception."] * 2
        assert transport.get_write_buffer_size() == 0
        await iterations(5)
        assert len(proto.lost_calls) == 1

    run(main())


def test_write_to_vanished_peer(loop, run, net, family, exc_handler):
    """The first send() fails (the peer is gone and reading is paused, so only write() can
    notice): no exception from write(), no handler call, connection_lost(exc) once."""

    async def main():
        proto = Rec()
        transport, peer = await net.open(proto)
        transport.pause_reading()
        peer.send(b"unread")  # left unread by the transport: its close would be a reset
        peer_reset(peer)
        await asyncio.sleep(0.01)
        transport.write(b"into the void")
        await until(lambda: proto.lost_calls, "connection_lost")
        (exc,) = proto.lost_calls
        # asyncio: TCP reports the reset, a Unix socket a broken pipe.
        expected = ConnectionResetError if family == "tcp" else BrokenPipeError
        assert type(exc) is expected, exc
        assert exc_handler.consume() == []
        assert transport.is_closing()
        assert transport.get_write_buffer_size() == 0
        await iterations(5)
        assert proto.lost_calls == [exc]

    run(main())


# --------------------------------------------------------------------------- debug mode


def test_debug_mode_logs(loop, run, net, family, caplog):
    caplog.set_level(logging.DEBUG, logger="asyncio")
    loop.set_debug(True)
    loop.slow_callback_duration = 10

    def messages():
        return [r.getMessage() for r in caplog.records if r.name == "asyncio"]

    async def main():
        proto = Rec()
        transport, peer = await net.open(proto)
        caplog.clear()
        transport.pause_reading()
        transport.pause_reading()
        transport.resume_reading()
        logged = messages()
        assert [m.endswith(" pauses reading") for m in logged] == [True, False]
        assert logged[1].endswith(" resumes reading")
        assert logged[0].startswith("<") and repr(transport).split()[0] in logged[0]
        caplog.clear()
        peer.shutdown(socket.SHUT_WR)
        await until(lambda: proto.lost_calls, "connection_lost")
        assert any(m.endswith(" received EOF") for m in messages())

        proto2 = Rec()
        transport2, peer2 = await net.open(proto2)
        caplog.clear()
        peer_reset(peer2)
        await until(lambda: proto2.lost_calls, "connection_lost")
        if family == "tcp":
            records = [
                r
                for r in caplog.records
                if "Fatal read error on socket transport" in r.getMessage()
            ]
            assert len(records) == 1
            assert records[0].levelno == logging.DEBUG
            assert records[0].exc_info[1] is proto2.lost_calls[0]

    run(main())
