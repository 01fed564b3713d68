"""Datagram transports (UDP over IPv4 and IPv6, Unix datagram sockets).

The specification is asyncio's ``selector_events._SelectorDatagramTransport`` and
``base_events.create_datagram_endpoint``; every test also runs on stdlib asyncio, the oracle.

Each test drives an endpoint the loop made (``loop.create_datagram_endpoint``) against plain
non-blocking sockets that the test polls itself, so the peer does not depend on the loop under
test. Addresses are compared with what the socket module itself reports (``getsockname()`` of
the sender, or ``recvfrom()`` of a plain socket receiving from the same sender).
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import errno
import gc
import logging
import os
import random
import socket
import time
import uuid
import weakref

import pytest
from conftest import iterations, run_coro, until

KiB = 1024
LOCALHOST = "127.0.0.1"


# --------------------------------------------------------------------------- helpers


async def quiet(seconds: float = 0.05) -> None:
    """Let the loop run for a while (for checks that something does *not* happen)."""
    await iterations(10)
    await asyncio.sleep(seconds)
    await iterations(10)


def udp_socket(family=socket.AF_INET, host=LOCALHOST) -> socket.socket:
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((host, 0))
    sock.setblocking(False)
    return sock


def unix_socket(path=None) -> socket.socket:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    if path is not None:
        sock.bind(str(path))
    sock.setblocking(False)
    return sock


async def peer_recvfrom(sock: socket.socket, timeout: float = 5.0):
    """One datagram from a plain non-blocking socket: ``(data, addr)``."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return sock.recvfrom(65536)
        except BlockingIOError:
            if time.monotonic() > deadline:
                raise AssertionError("timed out waiting for a datagram") from None
            await asyncio.sleep(0.001)


def drain(sock: socket.socket) -> list:
    """Every datagram queued on a plain non-blocking socket right now."""
    got = []
    while True:
        try:
            got.append(sock.recvfrom(65536))
        except BlockingIOError:
            return got


def fd_count() -> int:
    return len(os.listdir("/proc/self/fd"))


def ipv6_available() -> bool:
    if not socket.has_ipv6:
        return False
    try:
        with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as s:
            s.bind(("::1", 0))
    except OSError:
        return False
    return True


def unix_dgram_can_block() -> bool:
    """Whether a datagram sender here can get EAGAIN (the receiver's queue is full)."""
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    with a, b:
        a.setblocking(False)
        try:
            for _ in range(10_000):
                a.send(b"x" * 512)
        except BlockingIOError:
            return True
    return False


def udp_can_block() -> bool:
    """Whether a UDP sender with a tiny send buffer can get EAGAIN on this kernel."""
    rx = udp_socket()
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with rx, tx:
        tx.setblocking(False)
        tx.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1024)
        try:
            for _ in range(20_000):
                tx.sendto(b"x" * 1000, rx.getsockname())
        except BlockingIOError:
            return True
    return False


# --------------------------------------------------------------------------- protocols


class Rec(asyncio.DatagramProtocol):
    """Records every callback."""

    def __init__(self):
        self.transport = None
        self.events: list[str] = []
        self.received: list[tuple[object, object]] = []
        self.errors: list[Exception] = []
        self.lost_calls: list[BaseException | None] = []
        self.pause_sizes: list[int] = []
        self.resume_sizes: list[int] = []

    def connection_made(self, transport):
        self.transport = transport
        self.events.append("made")

    def datagram_received(self, data, addr):
        self.received.append((data, addr))
        if not self.events or self.events[-1] != "data":
            self.events.append("data")

    def error_received(self, exc):
        self.errors.append(exc)
        self.events.append("error")

    def connection_lost(self, exc):
        self.lost_calls.append(exc)
        self.events.append("lost")

    def pause_writing(self):
        self.pause_sizes.append(self.transport.get_write_buffer_size())
        self.events.append("pause")

    def resume_writing(self):
        self.resume_sizes.append(self.transport.get_write_buffer_size())
        self.events.append("resume")


class Echo(Rec):
    """Answers every datagram to its sender."""

    def datagram_received(self, data, addr):
        super().datagram_received(data, addr)
        self.transport.sendto(data, addr)


# --------------------------------------------------------------------------- 1. UDP over IPv4


def test_udp_echo_ipv4_many_clients(loop):
    """datagram_received gets bytes and the sender's (host, port) exactly as the socket module
    reports it; each answer goes back to its own sender, in order."""

    async def main():
        transport, proto = await loop.create_datagram_endpoint(Echo, local_addr=(LOCALHOST, 0))
        server_addr = transport.get_extra_info("sockname")
        assert server_addr[0] == LOCALHOST and server_addr[1] > 0
        clients = [udp_socket() for _ in range(4)]
        try:
            expected = {c.getsockname(): [] for c in clients}
            # Interleave the senders so that consecutive datagrams come from different peers.
            for i in range(25):
                for n, c in enumerate(clients):
                    payload = f"client {n} datagram {i}".encode() * (1 + i % 3)
                    c.sendto(payload, server_addr)
                    expected[c.getsockname()].append(payload)
                await iterations(2)
            total = sum(map(len, expected.values()))
            await until(lambda: len(proto.received) == total, "all datagrams")

            by_sender = {}
            for data, addr in proto.received:
                assert type(data) is bytes
                assert type(addr) is tuple and len(addr) == 2
                assert type(addr[0]) is str and type(addr[1]) is int
                by_sender.setdefault(addr, []).append(data)
            assert by_sender == expected

            for c in clients:
                answers = [await peer_recvfrom(c) for _ in expected[c.getsockname()]]
                assert [a for _, a in answers] == [server_addr] * len(answers)
                assert [d for d, _ in answers] == expected[c.getsockname()]
                assert drain(c) == []
        finally:
            for c in clients:
                c.close()
            transport.close()

    run_coro(loop, main())


def test_udp_sender_address_matches_recvfrom(loop):
    """A sender bound to the wildcard address: the address is the one recvfrom reports (the
    real source address, not the sender's getsockname())."""

    async def main():
        transport, proto = await loop.create_datagram_endpoint(Rec, local_addr=(LOCALHOST, 0))
        server_addr = transport.get_extra_info("sockname")
        oracle = udp_socket()
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            sender.bind(("0.0.0.0", 0))
            sender.sendto(b"to oracle", oracle.getsockname())
            _, expected_addr = await peer_recvfrom(oracle)
            assert expected_addr == (LOCALHOST, sender.getsockname()[1])
            sender.sendto(b"to endpoint", server_addr)
            await until(lambda: proto.received, "datagram")
            assert proto.received == [(b"to endpoint", expected_addr)]
        finally:
            oracle.close()
            sender.close()
            transport.close()

    run_coro(loop, main())


@pytest.mark.parametrize("size", [0, 1, 1472, 9000, 65507])
def test_udp_datagram_sizes(loop, size):
    """Datagrams arrive whole, including an empty one and the largest IPv4 UDP payload."""

    async def main():
        transport, proto = await loop.create_datagram_endpoint(Echo, local_addr=(LOCALHOST, 0))
        client = udp_socket()
        try:
            payload = os.urandom(size)
            client.sendto(payload, transport.get_extra_info("sockname"))
            await until(lambda: proto.received, "datagram")
            assert proto.received == [(payload, client.getsockname())]
            assert type(proto.received[0][0]) is bytes
            if size:
                echoed = await peer_recvfrom(client)
                assert echoed == (payload, transport.get_extra_info("sockname"))
            else:  # the echo is sendto(b"", addr): a no-op
                await quiet(0.01)
                assert drain(client) == []
        finally:
            client.close()
            transport.close()

    run_coro(loop, main())


@pytest.mark.parametrize("family", ["udp", "unix"])
def test_datagrams_stay_intact_when_kept_or_hashed(loop, tmp_path, family):
    """ferroloop receives into the `bytes` of the previous `datagram_received` when the
    protocol dropped it. A datagram the protocol keeps must never change afterwards, a hashed
    one must hash by its new contents, and each arrives with its own sender."""
    sizes = [600, 600, 1024, 1024, 700, 2000, 1500, 513, 512, 4000, 4000, 1100, 900, 0, 3000]
    payloads = [bytes(random.Random(i).randbytes(n)) for i, n in enumerate(sizes)]

    class Keeper(Rec):
        def __init__(self):
            super().__init__()
            self.copies = []
            self.kept = []
            self.mismatches = []

        def datagram_received(self, data, addr):
            copy = bytes(bytearray(data))
            if hash(data) != hash(copy) or {data: 1}.get(copy) != 1:
                self.mismatches.append(len(self.copies))
            if len(self.copies) % 3 == 0:
                self.kept.append(data)
            self.copies.append((copy, addr))

    async def main():
        if family == "udp":
            transport, proto = await loop.create_datagram_endpoint(
                Keeper, local_addr=(LOCALHOST, 0)
            )
            client = udp_socket()
        else:
            transport, proto = await loop.create_datagram_endpoint(
                Keeper, local_addr=str(tmp_path / "srv.sock"), family=socket.AF_UNIX
            )
            client = unix_socket(tmp_path / "cli.sock")
        try:
            target = transport.get_extra_info("sockname")
            for i, payload in enumerate(payloads):
                client.sendto(payload, target)
                await until(lambda i=i: len(proto.copies) > i, f"datagram {i}")
            sender = client.getsockname()
            assert proto.copies == [(payload, sender) for payload in payloads]
            assert proto.kept == payloads[::3]
            assert proto.mismatches == []
        finally:
            client.close()
            transport.close()

    run_coro(loop, main())


def test_udp_replies_reach_each_of_many_peers(loop):
    """More peers than ferroloop's address cache holds (256), twice over: every reply, whether
    sent to the received address object or to an equal tuple built anew, reaches its sender."""

    async def main():
        transport, proto = await loop.create_datagram_endpoint(Echo, local_addr=(LOCALHOST, 0))
        server_addr = transport.get_extra_info("sockname")
        clients = [udp_socket() for _ in range(300)]
        try:
            sent = 0
            for round_ in range(2):
                # In batches: a burst of 300 would overflow the server's receive queue.
                for i, c in enumerate(clients):
                    c.sendto(f"{round_}:{i}".encode(), server_addr)
                    sent += 1
                    if sent % 50 == 0:
                        await until(lambda n=sent: len(proto.received) == n, "a batch")
            # Replies to equal tuples that are not the objects the transport handed out.
            for i, c in enumerate(clients):
                host, port = c.getsockname()
                transport.sendto(f"direct:{i}".encode(), (str(host), int(port)))
            await asyncio.sleep(0.05)
            for i, c in enumerate(clients):
                got = []
                while True:
                    try:
                        data, addr = c.recvfrom(100)
                    except BlockingIOError:
                        break
                    assert addr == server_addr
                    got.append(data)
                assert got == [f"0:{i}".encode(), f"1:{i}".encode(), f"direct:{i}".encode()]
        finally:
            for c in clients:
                c.close()
            transport.close()

    run_coro(loop, main())


# --------------------------------------------------------------------------- 2. UDP over IPv6


def test_udp_echo_ipv6(loop):
    if not ipv6_available():
        pytest.skip("IPv6 is not available on this machine (cannot bind '::1')")

    async def main():
        transport, proto = await loop.create_datagram_endpoint(Echo, local_addr=("::1", 0))
        server_addr = transport.get_extra_info("sockname")
        assert len(server_addr) == 4 and server_addr[0] == "::1"
        assert transport.get_extra_info("socket").family == socket.AF_INET6
        clients = [udp_socket(socket.AF_INET6, "::1") for _ in range(2)]
        try:
            for i in range(10):
                for c in clients:
                    c.sendto(b"v6 %d" % i, server_addr)
            await until(lambda: len(proto.received) == 20, "all datagrams")
            for c in clients:
                mine = [(d, a) for d, a in proto.received if a == c.getsockname()]
                assert mine == [(b"v6 %d" % i, c.getsockname()) for i in range(10)]
                assert all(type(a) is tuple and len(a) == 4 for _, a in mine)
                answers = [await peer_recvfrom(c) for _ in range(10)]
                assert answers == [(b"v6 %d" % i, server_addr) for i in range(10)]
        finally:
            for c in clients:
                c.close()
            transport.close()

    run_coro(loop, main())


# --------------------------------------------------------------------------- 3. Unix datagrams


def test_unix_datagram_echo(loop, tmp_path):
    async def main():
        server_path = str(tmp_path / "srv.sock")
        transport, proto = await loop.create_datagram_endpoint(
            Echo, local_addr=server_path, family=socket.AF_UNIX
        )
        assert transport.get_extra_info("sockname") == server_path
        assert transport.get_extra_info("socket").family == socket.AF_UNIX
        bound = unix_socket(tmp_path / "cli.sock")
        unbound = unix_socket()
        oracle = unix_socket(tmp_path / "oracle.sock")
        try:
            for i in range(5):
                bound.sendto(b"bound %d" % i, server_path)
            await until(lambda: len(proto.received) == 5, "bound client's datagrams")
            client_path = str(tmp_path / "cli.sock")
            assert proto.received == [(b"bound %d" % i, client_path) for i in range(5)]
            assert all(type(d) is bytes for d, _ in proto.received)
            answers = [await peer_recvfrom(bound) for _ in range(5)]
            assert answers == [(b"bound %d" % i, server_path) for i in range(5)]

            # An unbound sender: whatever recvfrom reports for it (asyncio passes it on).
            unbound.sendto(b"probe", oracle.getsockname())
            _, unbound_addr = await peer_recvfrom(oracle)
            del proto.received[:]
            proto.__class__ = Rec  # no answer possible to an unbound sender
            unbound.sendto(b"anonymous", server_path)
            await until(lambda: proto.received, "unbound client's datagram")
            assert proto.received == [(b"anonymous", unbound_addr)]
        finally:
            for s in (bound, unbound, oracle):
                s.close()
            transport.close()

    run_coro(loop, main())


def test_unix_datagram_abstract_names(loop):
    """Linux abstract names: bound with a leading NUL, reported as bytes by the socket module."""
    if not hasattr(socket, "AF_UNIX") or os.uname().sysname != "Linux":
        pytest.skip("abstract Unix names are Linux-only")

    async def main():
        name = "\0ferroloop-test-" + uuid.uuid4().hex
        transport, proto = await loop.create_datagram_endpoint(
            Echo, local_addr=name, family=socket.AF_UNIX
        )
        client = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        try:
            client.bind("\0ferroloop-client-" + uuid.uuid4().hex)
            client.setblocking(False)
            client.sendto(b"abstract", name)
            await until(lambda: proto.received, "datagram")
            assert proto.received == [(b"abstract", client.getsockname())]
            assert await peer_recvfrom(client) == (b"abstract", name.encode())
        finally:
            client.close()
            transport.close()

    run_coro(loop, main())


# --------------------------------------------------------------------------- 4. connected endpoints


def test_connected_endpoint_sendto(loop):
    async def main():
        peer = udp_socket()
        other = udp_socket()
        peer_addr = peer.getsockname()
        transport, proto = await loop.create_datagram_endpoint(Rec, remote_addr=peer_addr)
        try:
            assert transport.get_extra_info("peername") == peer_addr
            local = transport.get_extra_info("sockname")
            assert local == transport.get_extra_info("socket").getsockname()

            transport.sendto(b"no address")
            assert await peer_recvfrom(peer) == (b"no address", local)

            with pytest.raises(ValueError) as info:
                transport.sendto(b"elsewhere", other.getsockname())
            assert str(info.value) == f"Invalid address: must be None or {peer_addr}"

            transport.sendto(b"same address", peer_addr)
            transport.sendto(bytearray(b"equal address"), tuple(list(peer_addr)))
            transport.sendto(memoryview(b"explicit None"), None)
            assert [await peer_recvfrom(peer) for _ in range(3)] == [
                (b"same address", local),
                (b"equal address", local),
                (b"explicit None", local),
            ]
            await quiet(0.01)
            assert drain(other) == []

            peer.sendto(b"reply", local)
            await until(lambda: proto.received, "reply")
            assert proto.received == [(b"reply", peer_addr)]
            assert proto.errors == [] and not transport.is_closing()
        finally:
            peer.close()
            other.close()
            transport.close()

    run_coro(loop, main())


def test_connected_unix_endpoint(loop, tmp_path):
    async def main():
        peer_path = str(tmp_path / "peer.sock")
        peer = unix_socket(peer_path)
        transport, proto = await loop.create_datagram_endpoint(
            Rec, remote_addr=peer_path, family=socket.AF_UNIX
        )
        try:
            assert transport.get_extra_info("peername") == peer_path
            transport.sendto(b"one")
            transport.sendto(b"two", peer_path)
            with pytest.raises(ValueError) as info:
                transport.sendto(b"three", str(tmp_path / "elsewhere.sock"))
            assert str(info.value) == f"Invalid address: must be None or {peer_path}"
            got = [await peer_recvfrom(peer) for _ in range(2)]
            assert [d for d, _ in got] == [b"one", b"two"]
            await quiet(0.01)
            assert drain(peer) == []
        finally:
            peer.close()
            transport.close()

    run_coro(loop, main())


def test_sock_argument_connected_socket(loop):
    """create_datagram_endpoint(sock=a connected socket): no remote address, but sends go
    out with send() (the address argument is not checked)."""

    async def main():
        peer = udp_socket()
        other = udp_socket()
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect(peer.getsockname())
        transport, proto = await loop.create_datagram_endpoint(Rec, sock=sock)
        try:
            assert transport.get_extra_info("peername") == peer.getsockname()
            assert not sock.getblocking()
            transport.sendto(b"a")
            transport.sendto(b"b", other.getsockname())  # ignored: the socket is connected
            assert [await peer_recvfrom(peer) for _ in range(2)] == [
                (b"a", sock.getsockname()),
                (b"b", sock.getsockname()),
            ]
            await quiet(0.01)
            assert drain(other) == []
        finally:
            peer.close()
            other.close()
            transport.close()

    run_coro(loop, main())


# --------------------------------------------------------------------------- 5. errors


def test_connected_udp_to_closed_port_error_received(loop):
    """ICMP port unreachable: error_received(ConnectionRefusedError); the transport stays open
    and works once something listens on the port."""

    async def main():
        closed = udp_socket()
        addr = closed.getsockname()
        closed.close()
        transport, proto = await loop.create_datagram_endpoint(Rec, remote_addr=addr)
        try:
            for _ in range(200):
                transport.sendto(b"anyone?")
                await asyncio.sleep(0.005)
                if proto.errors:
                    break
            assert proto.errors, "error_received was never called"
            exc = proto.errors[0]
            assert type(exc) is ConnectionRefusedError
            assert exc.errno == errno.ECONNREFUSED
            assert exc.strerror == os.strerror(errno.ECONNREFUSED)
            assert not transport.is_closing()
            assert proto.lost_calls == []
            assert "lost" not in proto.events

            # Still open and working: a listener appears on the port.
            listener = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                listener.bind(addr)
            except OSError as e:  # pragma: no cover - the port was taken meanwhile
                pytest.skip(f"port reused meanwhile: {e}")
            listener.setblocking(False)
            with listener:
                errors_before = len(proto.errors)
                transport.sendto(b"now?")
                data, _ = await peer_recvfrom(listener)
                assert data == b"now?"
                listener.sendto(b"yes", transport.get_extra_info("sockname"))
                await until(lambda: proto.received, "reply")
                assert proto.received == [(b"yes", addr)]
                assert len(proto.errors) == errors_before
        finally:
            transport.close()

    run_coro(loop, main())


@pytest.mark.parametrize(
    ("data", "target"),
    [(b"x", ("255.255.255.255", 9)), (b"x" * 70_000, (LOCALHOST, 9))],
    ids=["broadcast-without-SO_BROADCAST", "too-big"],
)
def test_send_error_goes_to_error_received(loop, data, target):
    """An OSError from sendto (EACCES for a broadcast without SO_BROADCAST, EMSGSIZE) goes to
    error_received, with the type and errno the socket module raises; the transport stays
    open."""

    async def main():
        oracle = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        with oracle:
            oracle.bind((LOCALHOST, 0))
            try:
                oracle.sendto(data, target)
            except OSError as e:
                expected = e
            else:  # pragma: no cover - depends on the kernel
                pytest.skip(f"this kernel accepts sendto({len(data)} bytes, {target})")
        transport, proto = await loop.create_datagram_endpoint(Rec, local_addr=(LOCALHOST, 0))
        rx = udp_socket()
        try:
            transport.sendto(data, target)
            assert len(proto.errors) == 1
            exc = proto.errors[0]
            assert type(exc) is type(expected)
            assert exc.errno == expected.errno
            assert not transport.is_closing()
            transport.sendto(b"still works", rx.getsockname())
            assert await peer_recvfrom(rx) == (b"still works", transport.get_extra_info("sockname"))
        finally:
            rx.close()
            transport.close()

    run_coro(loop, main())


@pytest.mark.parametrize("addr", ["omitted", "not-a-tuple", ("127.0.0.1", "port")])
def test_sendto_bad_address_is_fatal(loop, exc_handler, addr):
    """A non-OSError from the socket's sendto (no address on an unconnected endpoint, a bad
    address) is a fatal write error: exception handler, then connection_lost(exc)."""

    async def main():
        transport, proto = await loop.create_datagram_endpoint(Rec, local_addr=(LOCALHOST, 0))
        if addr == "omitted":
            transport.sendto(b"x")
        else:
            transport.sendto(b"x", addr)
        [ctx] = exc_handler.consume(1)
        assert ctx["message"] == "Fatal write error on datagram transport"
        assert isinstance(ctx["exception"], TypeError)
        assert ctx["transport"] is transport and ctx["protocol"] is proto
        assert transport.is_closing()
        await until(lambda: proto.lost_calls, "connection_lost")
        assert proto.lost_calls == [ctx["exception"]]

    run_coro(loop, main())


# --------------------------------------------------------------------------- 6. sendto arguments


def test_sendto_host_name_and_bytes_like(loop):
    async def main():
        transport, proto = await loop.create_datagram_endpoint(Rec, local_addr=(LOCALHOST, 0))
        rx = udp_socket()
        local = transport.get_extra_info("sockname")
        port = rx.getsockname()[1]
        try:
            transport.sendto(data=b"numeric", addr=(LOCALHOST, port))
            transport.sendto(b"host name", ("localhost", port))
            transport.sendto(bytearray(b"bytearray"), (LOCALHOST, port))
            big = bytearray(b"..memoryview slice..")
            transport.sendto(memoryview(big)[2:-2], (LOCALHOST, port))
            big[:] = b"X" * len(big)  # sent at once: mutating afterwards changes nothing
            ints = array.array("i", [1, 2, 3])
            transport.sendto(memoryview(ints), (LOCALHOST, port))  # all 12 bytes
            got = [await peer_recvfrom(rx) for _ in range(5)]
            assert got == [
                (b"numeric", local),
                (b"host name", local),
                (b"bytearray", local),
                (b"memoryview slice", local),
                (ints.tobytes(), local),
            ]
            assert proto.errors == [] and not transport.is_closing()
        finally:
            rx.close()
            transport.close()

    run_coro(loop, main())


@pytest.mark.parametrize(
    ("bad", "name"),
    [
        ("text", "str"),
        (42, "int"),
        (None, "NoneType"),
        ([b"a"], "list"),
        (type("Custom", (), {"__qualname__": "Outer.Custom"})(), "Custom"),
    ],
)
def test_sendto_rejects_non_bytes(loop, bad, name):
    async def main():
        transport, proto = await loop.create_datagram_endpoint(Rec, local_addr=(LOCALHOST, 0))
        rx = udp_socket()
        try:
            with pytest.raises(TypeError) as info:
                transport.sendto(bad, rx.getsockname())
            assert str(info.value) == f"data argument must be a bytes-like object, not {name!r}"
            assert not transport.is_closing()
            await quiet(0.01)
            assert drain(rx) == []
        finally:
            rx.close()
            transport.close()

    run_coro(loop, main())


def test_sendto_array_is_rejected(loop):
    """Only bytes, bytearray and memoryview are accepted (as asyncio checks), not every object
    with the buffer protocol."""

    async def main():
        transport, _ = await loop.create_datagram_endpoint(Rec, local_addr=(LOCALHOST, 0))
        try:
            with pytest.raises(TypeError, match="not 'array'"):
                transport.sendto(array.array("b", b"abc"), (LOCALHOST, 9))
        finally:
            transport.close()

    run_coro(loop, main())


def test_sendto_non_contiguous_memoryview_is_fatal(loop, exc_handler):
    """The socket module refuses a non-contiguous buffer (BufferError): a fatal write error."""

    async def main():
        transport, proto = await loop.create_datagram_endpoint(Rec, local_addr=(LOCALHOST, 0))
        rx = udp_socket()
        try:
            transport.sendto(memoryview(b"abcdef")[::2], rx.getsockname())
            [ctx] = exc_handler.consume(1)
            assert ctx["message"] == "Fatal write error on datagram transport"
            assert isinstance(ctx["exception"], BufferError)
            await until(lambda: proto.lost_calls, "connection_lost")
            assert proto.lost_calls == [ctx["exception"]]
            assert drain(rx) == []
        finally:
            rx.close()

    run_coro(loop, main())


@pytest.mark.parametrize("empty", [b"", bytearray(), memoryview(b"")])
def test_sendto_empty_is_noop(loop, empty):
    """Empty data sends nothing (not even an empty datagram) and checks no address."""

    async def main():
        transport, proto = await loop.create_datagram_endpoint(Rec, local_addr=(LOCALHOST, 0))
        rx = udp_socket()
        try:
            transport.sendto(empty, rx.getsockname())
            transport.sendto(empty, "not an address")
            transport.sendto(empty)
            transport.sendto(b"marker", rx.getsockname())
            assert await peer_recvfrom(rx) == (b"marker", transport.get_extra_info("sockname"))
            await quiet(0.01)
            assert drain(rx) == []
            assert not transport.is_closing() and proto.errors == []
        finally:
            rx.close()
            transport.close()

    run_coro(loop, main())


# --------------------------------------------------------------------------- 7. socket options


def test_allow_broadcast_sets_so_broadcast(loop):
    async def main():
        plain, _ = await loop.create_datagram_endpoint(Rec, local_addr=(LOCALHOST, 0))
        bcast, _ = await loop.create_datagram_endpoint(
            Rec, local_addr=(LOCALHOST, 0), allow_broadcast=True
        )
        try:
            sock = bcast.get_extra_info("socket")
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST) != 0
            sock = plain.get_extra_info("socket")
            assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_BROADCAST) == 0
        finally:
            plain.close()
            bcast.close()

    run_coro(loop, main())


def test_allow_broadcast_with_remote_addr_is_not_connected(loop):
    """With allow_broadcast, remote_addr is not connected: peername is None and datagrams go
    out with sendto(data, remote_addr)."""

    async def main():
        peer = udp_socket()
        transport, proto = await loop.create_datagram_endpoint(
            Rec, remote_addr=peer.getsockname(), allow_broadcast=True
        )
        try:
            assert transport.get_extra_info("peername") is None
            transport.sendto(b"to the remote address")
            data, addr = await peer_recvfrom(peer)
            assert data == b"to the remote address"
            # Bound implicitly by the first sendto (the 'sockname' entry predates it).
            assert transport.get_extra_info("sockname") == ("0.0.0.0", 0)
            assert addr[1] == transport.get_extra_info("socket").getsockname()[1]
            with pytest.raises(ValueError, match="^Invalid address: must be None or "):
                transport.sendto(b"x", (LOCALHOST, 9))
        finally:
            peer.close()
            transport.close()

    run_coro(loop, main())


@pytest.mark.skipif(not hasattr(socket, "SO_REUSEPORT"), reason="no SO_REUSEPORT")
def test_reuse_port(loop):
    async def main():
        first, _ = await loop.create_datagram_endpoint(
            Rec, local_addr=(LOCALHOST, 0), reuse_port=True
        )
        addr = first.get_extra_info("sockname")
        try:
            second, _ = await loop.create_datagram_endpoint(Rec, local_addr=addr, reuse_port=True)
            try:
                assert second.get_extra_info("sockname") == addr
                for t in (first, second):
                    sock = t.get_extra_info("socket")
                    assert sock.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) != 0
            finally:
                second.close()
            with pytest.raises(OSError) as info:
                await loop.create_datagram_endpoint(Rec, local_addr=addr)
            assert info.value.errno == errno.EADDRINUSE
        finally:
            first.close()

    run_coro(loop, main())


# --------------------------------------------------------------------------- 8. buffering


def test_write_buffer_limits(loop):
    async def main():
        transport, _ = await loop.create_datagram_endpoint(Rec, local_addr=(LOCALHOST, 0))
        try:
            assert transport.get_write_buffer_limits() == (16 * KiB, 64 * KiB)
            transport.set_write_buffer_limits(high=100)
            assert transport.get_write_buffer_limits() == (25, 100)
            transport.set_write_buffer_limits(low=10)
            assert transport.get_write_buffer_limits() == (10, 40)
            transport.set_write_buffer_limits(high=0)
            assert transport.get_write_buffer_limits() == (0, 0)
            with pytest.raises(ValueError) as info:
                transport.set_write_buffer_limits(high=1, low=2)
            assert str(info.value) == "high (1) must be >= low (2) must be >= 0"
            assert transport.get_write_buffer_limits() == (0, 0)
            transport.set_write_buffer_limits()
            assert transport.get_write_buffer_limits() == (16 * KiB, 64 * KiB)
        finally:
            transport.close()

    run_coro(loop, main())


def _blast_udp(transport, rx, count: int):
    sizes = []
    for i in range(count):
        transport.sendto(b"%05d" % i + b"." * 995, rx.getsockname())
        sizes.append(transport.get_write_buffer_size())
    return sizes


async def _collect_udp(transport, rx, count: int):
    got = []
    deadline = time.monotonic() + 5
    while len(got) < count and time.monotonic() < deadline:
        await asyncio.sleep(0.005)
        batch = drain(rx)
        got.extend(batch)
        if not batch and transport.get_write_buffer_size() == 0:
            break
    seqs = [int(d[:5]) for d, _ in got]
    assert got, "nothing arrived"
    assert all(len(d) == 1000 for d, _ in got)
    assert seqs == sorted(set(seqs)), "datagrams reordered or duplicated"
    return seqs


def test_udp_tiny_send_buffer(loop):
    """A tiny SO_SNDBUF and a burst of datagrams: what arrives arrives whole and in order, and
    the write buffer is empty afterwards (whether sends were buffered depends on the kernel)."""

    async def main():
        transport, proto = await loop.create_datagram_endpoint(Rec, local_addr=(LOCALHOST, 0))
        rx = udp_socket()
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        try:
            sock = transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1024)
            sizes = _blast_udp(transport, rx, 300)
            assert all(size % 1000 == 0 for size in sizes)
            await _collect_udp(transport, rx, 300)
            await until(lambda: transport.get_write_buffer_size() == 0, "empty buffer")
            assert proto.errors == [] and not transport.is_closing()
        finally:
            rx.close()
            transport.close()

    run_coro(loop, main())


def test_udp_send_buffering(loop):
    """When the kernel returns EAGAIN for UDP, datagrams are buffered and flushed in order."""
    if not udp_can_block():
        pytest.skip(
            "UDP sendto never returns EAGAIN on this kernel even with SO_SNDBUF=1024, so UDP "
            "datagrams are never buffered; buffering is covered over Unix datagram sockets"
        )

    async def main():
        transport, proto = await loop.create_datagram_endpoint(Rec, local_addr=(LOCALHOST, 0))
        rx = udp_socket()
        rx.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)
        try:
            sock = transport.get_extra_info("socket")
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1024)
            sizes = _blast_udp(transport, rx, 300)
            assert max(sizes) > 0
            await _collect_udp(transport, rx, 300)
            await until(lambda: transport.get_write_buffer_size() == 0, "empty buffer")
            assert proto.errors == [] and not transport.is_closing()
        finally:
            rx.close()
            transport.close()

    run_coro(loop, main())


@pytest.fixture
def blocking_unix_peer(tmp_path):
    """A bound Unix datagram socket that the test does not read yet (its queue fills)."""
    if not unix_dgram_can_block():
        pytest.skip("Unix datagram sends never return EAGAIN on this kernel: no buffering")
    path = str(tmp_path / "slow.sock")
    sock = unix_socket(path)
    yield path, sock
    sock.close()


def _fill_unix(transport, count: int, size: int = 500):
    payloads = []
    for i in range(count):
        data = bytearray(b"%05d" % i + b"=" * (size - 5))
        transport.sendto(data)
        payloads.append(bytes(data))
        data[:5] = b"XXXXX"  # buffered datagrams are copies
    return payloads


def test_buffering_and_flow_control(loop, blocking_unix_peer):
    """A connected Unix endpoint whose peer's queue is full: datagrams are buffered (in order,
    whole, as copies), pause_writing/resume_writing follow the water marks, and everything
    arrives once the peer reads."""
    path, peer = blocking_unix_peer

    async def main():
        transport, proto = await loop.create_datagram_endpoint(
            Rec, remote_addr=path, family=socket.AF_UNIX
        )
        try:
            transport.set_write_buffer_limits(high=4000, low=1000)
            payloads = _fill_unix(transport, 100)
            buffered = transport.get_write_buffer_size()
            assert buffered > 4000
            assert buffered % 500 == 0
            assert proto.pause_sizes and proto.pause_sizes[0] > 4000
            assert proto.pause_sizes[0] <= 4500
            assert len(proto.pause_sizes) == 1
            await quiet(0.02)
            assert transport.get_write_buffer_size() == buffered  # the peer is still full

            got = []
            deadline = time.monotonic() + 5
            while len(got) < len(payloads) and time.monotonic() < deadline:
                got.extend(d for d, _ in drain(peer))
                await asyncio.sleep(0.001)
            assert got == payloads
            await until(lambda: transport.get_write_buffer_size() == 0, "empty buffer")
            assert len(proto.resume_sizes) == 1 and proto.resume_sizes[0] <= 1000
            assert proto.events[:1] == ["made"]
            assert proto.events[1:] == ["pause", "resume"]
            assert proto.errors == [] and not transport.is_closing()
        finally:
            transport.close()

    run_coro(loop, main())


def test_close_flushes_buffer_first(loop, blocking_unix_peer):
    path, peer = blocking_unix_peer

    async def main():
        transport, proto = await loop.create_datagram_endpoint(
            Rec, remote_addr=path, family=socket.AF_UNIX
        )
        payloads = _fill_unix(transport, 60)
        assert transport.get_write_buffer_size() > 0
        transport.close()
        assert transport.is_closing()
        await quiet(0.02)
        assert proto.lost_calls == []  # waits for the buffer to drain
        got = []
        deadline = time.monotonic() + 5
        while len(got) < len(payloads) and time.monotonic() < deadline:
            got.extend(d for d, _ in drain(peer))
            await asyncio.sleep(0.001)
        assert got == payloads
        await until(lambda: proto.lost_calls, "connection_lost")
        assert proto.lost_calls == [None]
        assert transport.get_write_buffer_size() == 0

    run_coro(loop, main())


def test_abort_drops_buffer(loop, blocking_unix_peer):
    path, peer = blocking_unix_peer

    async def main():
        transport, proto = await loop.create_datagram_endpoint(
            Rec, remote_addr=path, family=socket.AF_UNIX
        )
        payloads = _fill_unix(transport, 60)
        assert transport.get_write_buffer_size() > 0
        transport.abort()
        assert transport.is_closing()
        await until(lambda: proto.lost_calls, "connection_lost")
        assert proto.lost_calls == [None]
        got = [d for d, _ in drain(peer)]
        assert 0 < len(got) < len(payloads)
        assert got == payloads[: len(got)]
        await quiet(0.01)
        assert drain(peer) == []

    run_coro(loop, main())


# --------------------------------------------------------------------------- 9. closing


@pytest.mark.parametrize("how", ["close", "abort"])
def test_close_then_sendto_is_dropped_and_counted(loop, caplog, how):
    async def main():
        peer = udp_socket()
        transport, proto = await loop.create_datagram_endpoint(Rec, remote_addr=peer.getsockname())
        sock = transport.get_extra_info("socket")
        try:
            assert not transport.is_closing()
            getattr(transport, how)()
            assert transport.is_closing()
            getattr(transport, how)()  # idempotent
            transport.close()
            await until(lambda: proto.lost_calls, "connection_lost")
            await quiet(0.01)
            assert proto.lost_calls == [None]
            assert proto.events == ["made", "lost"]
            assert sock.fileno() == -1
            assert transport.get_extra_info("socket") is not None

            caplog.clear()
            with caplog.at_level(logging.WARNING, logger="asyncio"):
                for _ in range(4):
                    transport.sendto(b"dropped")
                assert [r for r in caplog.records if r.name == "asyncio"] == []
                transport.sendto(b"dropped")
                transport.sendto(b"dropped", peer.getsockname())
            warnings = [r.getMessage() for r in caplog.records if r.name == "asyncio"]
            assert warnings == ["socket.send() raised exception."] * 2
            assert all(r.levelno == logging.WARNING for r in caplog.records)
            # The address is still checked first.
            with pytest.raises(ValueError, match="^Invalid address"):
                transport.sendto(b"x", (LOCALHOST, 9))
            await quiet(0.01)
            assert drain(peer) == []
            assert proto.lost_calls == [None]
        finally:
            peer.close()

    run_coro(loop, main())


def test_close_from_connection_made_and_datagram_received(loop):
    class CloseOnFirst(Rec):
        def datagram_received(self, data, addr):
            super().datagram_received(data, addr)
            self.transport.close()

    async def main():
        transport, proto = await loop.create_datagram_endpoint(
            CloseOnFirst, local_addr=(LOCALHOST, 0)
        )
        client = udp_socket()
        try:
            for i in range(5):
                client.sendto(b"%d" % i, transport.get_extra_info("sockname"))
            await until(lambda: proto.lost_calls, "connection_lost")
            await quiet(0.01)
            assert proto.received == [(b"0", client.getsockname())]
            assert proto.lost_calls == [None]
        finally:
            client.close()

    run_coro(loop, main())


@pytest.mark.parametrize("connected", [False, True], ids=["unconnected", "sock-connected"])
def test_sendto_after_close_reaches_no_other_socket(loop, connected):
    """After connection_lost the socket is closed. A later sendto on an endpoint without a
    remote address (which asyncio does not count as a lost-connection write) must not reach
    whatever socket reuses the fd number. (asyncio raises an AttributeError from sendto()
    here; ferroloop may drop or raise, but never send.)"""

    async def main():
        rx = udp_socket()
        if connected:
            sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            sock.connect(rx.getsockname())
            transport, proto = await loop.create_datagram_endpoint(Rec, sock=sock)
        else:
            transport, proto = await loop.create_datagram_endpoint(Rec, local_addr=(LOCALHOST, 0))
        fd = transport.get_extra_info("socket").fileno()
        transport.close()
        await until(lambda: proto.lost_calls, "connection_lost")
        others = []
        try:
            # Sockets made now take the lowest free fd numbers: one gets the endpoint's old one.
            for _ in range(5):
                others.append(udp_socket())
                if others[-1].fileno() == fd:
                    break
            assert others[-1].fileno() == fd, "fd not reused"
            if connected:
                others[-1].connect(rx.getsockname())
            with contextlib.suppress(Exception):  # asyncio raises AttributeError
                transport.sendto(b"LEAK", rx.getsockname())
            await quiet(0.02)
            assert drain(rx) == []
        finally:
            for s in others:
                s.close()
            rx.close()

    run_coro(loop, main())


# --------------------------------------------------------------------------- 10. reading


def test_pause_and_resume_reading(loop):
    async def main():
        transport, proto = await loop.create_datagram_endpoint(Rec, local_addr=(LOCALHOST, 0))
        client = udp_socket()
        addr = transport.get_extra_info("sockname")
        try:
            assert transport.is_reading()
            transport.pause_reading()
            assert not transport.is_reading()
            transport.pause_reading()  # no-op
            assert not transport.is_reading()
            for i in range(5):
                client.sendto(b"queued %d" % i, addr)
            await quiet(0.05)
            assert proto.received == []

            transport.resume_reading()
            assert transport.is_reading()
            transport.resume_reading()  # no-op
            await until(lambda: len(proto.received) == 5, "queued datagrams")
            assert proto.received == [(b"queued %d" % i, client.getsockname()) for i in range(5)]

            # Paused from inside datagram_received: the rest stays queued.
            def pause_after_first(data, addr, _orig=proto.datagram_received):
                _orig(data, addr)
                transport.pause_reading()

            proto.datagram_received = pause_after_first
            for i in range(3):
                client.sendto(b"again %d" % i, addr)
            await until(lambda: len(proto.received) == 6, "first datagram")
            await quiet(0.03)
            assert len(proto.received) == 6
            del proto.datagram_received
            transport.resume_reading()
            await until(lambda: len(proto.received) == 8, "the rest")
            assert [d for d, _ in proto.received[5:]] == [b"again 0", b"again 1", b"again 2"]

            transport.close()
            assert not transport.is_reading()
            transport.resume_reading()  # no-op once closing
            assert not transport.is_reading()
            await until(lambda: proto.lost_calls, "connection_lost")
        finally:
            client.close()

    run_coro(loop, main())


def test_set_protocol_routes_later_datagrams(loop):
    async def main():
        transport, first = await loop.create_datagram_endpoint(Rec, local_addr=(LOCALHOST, 0))
        client = udp_socket()
        addr = transport.get_extra_info("sockname")
        try:
            assert transport.get_protocol() is first
            client.sendto(b"one", addr)
            await until(lambda: first.received, "first datagram")
            second = Rec()
            transport.set_protocol(second)
            assert transport.get_protocol() is second
            client.sendto(b"two", addr)
            await until(lambda: second.received, "second datagram")
            assert [d for d, _ in first.received] == [b"one"]
            assert [d for d, _ in second.received] == [b"two"]
            transport.close()
            await until(lambda: second.lost_calls, "connection_lost")
            assert first.lost_calls == []
        finally:
            client.close()

    run_coro(loop, main())


# --------------------------------------------------------------------------- 11. exceptions


def test_datagram_received_raising_goes_to_exception_handler(loop, exc_handler):
    raised = []

    class Boom(Rec):
        def datagram_received(self, data, addr):
            super().datagram_received(data, addr)
            if data == b"boom":
                exc = RuntimeError("boom")
                raised.append(exc)
                raise exc

    async def main():
        transport, proto = await loop.create_datagram_endpoint(Boom, local_addr=(LOCALHOST, 0))
        client = udp_socket()
        addr = transport.get_extra_info("sockname")
        try:
            client.sendto(b"boom", addr)
            await until(lambda: exc_handler.pending, "exception handler call")
            [ctx] = exc_handler.consume(1)
            assert ctx["exception"] is raised[0]
            assert not transport.is_closing()
            client.sendto(b"fine", addr)
            await until(lambda: len(proto.received) == 2, "next datagram")
            assert [d for d, _ in proto.received] == [b"boom", b"fine"]
            transport.sendto(b"reply", client.getsockname())
            assert await peer_recvfrom(client) == (b"reply", addr)
            assert proto.lost_calls == []
        finally:
            client.close()
            transport.close()

    run_coro(loop, main())


def test_error_received_raising_goes_to_exception_handler(loop, exc_handler):
    """An exception from error_received (called for a send error) propagates out of
    sendto(), as asyncio calls it directly there."""

    class Boom(Rec):
        def error_received(self, exc):
            super().error_received(exc)
            raise KeyError("from error_received")

    async def main():
        transport, proto = await loop.create_datagram_endpoint(Boom, local_addr=(LOCALHOST, 0))
        try:
            with pytest.raises(KeyError):
                transport.sendto(b"x", ("255.255.255.255", 9))
            assert len(proto.errors) == 1 and isinstance(proto.errors[0], OSError)
            assert not transport.is_closing()
        finally:
            transport.close()

    run_coro(loop, main())


def test_error_received_raising_from_read_goes_to_exception_handler(loop, exc_handler):
    """error_received raising while reading (ICMP port unreachable): the exception handler gets
    the exception and the transport stays open."""
    raised = []

    class Boom(Rec):
        def error_received(self, exc):
            super().error_received(exc)
            err = KeyError("from error_received")
            raised.append(err)
            raise err

    async def main():
        closed = udp_socket()
        addr = closed.getsockname()
        closed.close()
        transport, proto = await loop.create_datagram_endpoint(Boom, remote_addr=addr)
        try:
            for _ in range(200):
                transport.sendto(b"anyone?")
                await asyncio.sleep(0.005)
                if proto.errors:
                    break
            await until(lambda: exc_handler.pending, "exception handler call")
            ctxs = exc_handler.consume()
            assert [c["exception"] for c in ctxs] == raised
            assert all(isinstance(e, ConnectionRefusedError) for e in proto.errors)
            assert not transport.is_closing() and proto.lost_calls == []
        finally:
            transport.close()

    run_coro(loop, main())


def test_system_exit_from_datagram_received_escapes(loop):
    protos = []

    class Exit(Rec):
        def __init__(self):
            super().__init__()
            protos.append(self)

        def datagram_received(self, data, addr):
            super().datagram_received(data, addr)
            raise SystemExit(3)

    client = udp_socket()

    async def main():
        transport, _ = await loop.create_datagram_endpoint(Exit, local_addr=(LOCALHOST, 0))
        client.sendto(b"x", transport.get_extra_info("sockname"))
        await asyncio.sleep(5)

    try:
        with pytest.raises(SystemExit):
            run_coro(loop, main())
        [proto] = protos
        assert proto.received == [(b"x", client.getsockname())]
        assert not proto.transport.is_closing()  # not handled as a fatal error
        assert proto.lost_calls == []
        proto.transport.close()
        run_coro(loop, until(lambda: proto.lost_calls, "connection_lost"))
    finally:
        client.close()


# --------------------------------------------------------------------------- 12. the object


def test_transport_is_an_asyncio_datagram_transport(loop):
    async def main():
        transport, proto = await loop.create_datagram_endpoint(Rec, local_addr=(LOCALHOST, 0))
        try:
            assert proto.transport is transport
            assert proto.events == ["made"]
            assert isinstance(transport, asyncio.BaseTransport)
            # asyncio's _SelectorDatagramTransport is a Transport, not a DatagramTransport.
            assert isinstance(transport, asyncio.Transport)
            sock = transport.get_extra_info("socket")
            assert sock is not None
            assert sock.family == socket.AF_INET and sock.type == socket.SOCK_DGRAM
            assert transport.get_extra_info("sockname") == sock.getsockname()
            assert transport.get_extra_info("sockname")[0] == LOCALHOST
            assert transport.get_extra_info("peername") is None
            assert transport.get_extra_info("no such key") is None
            assert transport.get_extra_info("no such key", 42) == 42
            assert transport.get_write_buffer_size() == 0
            fd = sock.fileno()
            with pytest.raises(RuntimeError, match=f"^File descriptor {fd} is used by transport"):
                loop.add_reader(fd, lambda: None)
        finally:
            transport.close()
        await until(lambda: proto.lost_calls, "connection_lost")

    run_coro(loop, main())


# --------------------------------------------------------------------------- 13. leaks


def test_many_endpoints_do_not_leak(loop):
    async def main():
        protocols = weakref.WeakSet()
        transports = weakref.WeakSet()
        rx = udp_socket()

        async def one_batch(n):
            pairs = await asyncio.gather(
                *(loop.create_datagram_endpoint(Rec, local_addr=(LOCALHOST, 0)) for _ in range(n))
            )
            for t, p in pairs:
                protocols.add(p)
                transports.add(t)
                t.sendto(b"hello", rx.getsockname())
            for t, _ in pairs:
                t.close()
            await until(lambda: all(p.lost_calls == [None] for _, p in pairs), "closed")
            got = drain(rx)
            while len(got) < n:
                await asyncio.sleep(0.001)
                got.extend(drain(rx))
            senders = sorted(t.get_extra_info("sockname") for t, _ in pairs)
            assert sorted(a for _, a in got) == senders

        try:
            await one_batch(20)  # warm-up
            gc.collect()
            before = fd_count()
            for _ in range(20):
                await one_batch(100)
            await iterations(5)
            gc.collect()
            assert fd_count() == before
            assert len(protocols) == 0
            assert len(transports) == 0
        finally:
            rx.close()

    run_coro(loop, main(), timeout=30)


def test_unclosed_transport_warns(loop):
    """An endpoint dropped without close(): ResourceWarning 'unclosed transport' and the socket
    is closed."""

    async def main():
        transport, proto = await loop.create_datagram_endpoint(Rec, local_addr=(LOCALHOST, 0))
        sock = transport.get_extra_info("socket")
        ref = weakref.ref(transport)
        # Forget the reader too, as a loop being torn down would.
        loop._remove_reader(sock.fileno())
        del transport, proto
        with pytest.warns(ResourceWarning, match="unclosed transport"):
            gc.collect()
        assert ref() is None
        assert sock.fileno() == -1

    run_coro(loop, main())
