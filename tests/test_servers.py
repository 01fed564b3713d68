"""Servers, connections and socket operations: `sock_*`, name resolution, `create_connection`,
`create_server` / `Server`, Unix sockets, many connections, faults (RST, EMFILE) and leaks.

asyncio's `SelectorEventLoop` is the oracle: every test runs on both loops.
"""

from __future__ import annotations

import asyncio
import errno
import gc
import io
import os
import resource
import socket
import stat
import struct
import sys
import weakref

import pytest
from conftest import run_coro

HOST = "127.0.0.1"
ABSTRACT_OK = sys.platform.startswith("linux")


# --------------------------------------------------------------------------------------------
# helpers


def _open_fds() -> set[str]:
    return set(os.listdir("/proc/self/fd"))


def _free_port() -> int:
    """A TCP port on 127.0.0.1 nobody listens on (bound, never listened, closed)."""
    with socket.socket() as s:
        s.bind((HOST, 0))
        return s.getsockname()[1]


def _nonblocking(*socks):
    for s in socks:
        s.setblocking(False)
    return socks


@pytest.fixture
def tcp_pair():
    """A connected pair of non-blocking TCP sockets on 127.0.0.1."""
    with socket.create_server((HOST, 0)) as listener:
        a = socket.create_connection(listener.getsockname())
        b, _ = listener.accept()
    _nonblocking(a, b)
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def udp_pair():
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    a.bind((HOST, 0))
    b.bind((HOST, 0))
    _nonblocking(a, b)
    yield a, b
    a.close()
    b.close()


@pytest.fixture
def listener():
    """A non-blocking listening TCP socket on 127.0.0.1."""
    s = socket.create_server((HOST, 0))
    s.setblocking(False)
    yield s
    s.close()


async def _until(predicate, interval=0.001):
    """Poll ``predicate`` (the caller's run() timeout bounds the wait)."""
    while not predicate():
        await asyncio.sleep(interval)


async def _recv_exactly(loop, sock, n) -> bytes:
    buf = bytearray()
    while len(buf) < n:
        chunk = await loop.sock_recv(sock, n - len(buf))
        assert chunk, f"EOF after {len(buf)} of {n} bytes"
        buf += chunk
    return bytes(buf)


class ServerLog:
    """What the server-side protocols of one server saw."""

    def __init__(self):
        self.made = 0
        self.lost = []  # the exception of each connection_lost, in order
        self.events = []  # per-connection event lists
        self.peernames = []
        self.protocols = []
        self.tags = []


class EchoServer(asyncio.Protocol):
    """Echoes everything; closes on EOF (eof_received returns None)."""

    def __init__(self, log: ServerLog, tag=None):
        self.log = log
        self.tag = tag
        self.events = []
        self.received = bytearray()
        log.events.append(self.events)
        log.protocols.append(self)

    def connection_made(self, transport):
        self.transport = transport
        self.log.made += 1
        self.log.peernames.append(transport.get_extra_info("peername"))
        self.log.tags.append(self.tag)
        self.events.append("made")

    def data_received(self, data):
        self.received += data
        self.transport.write(data)

    def eof_received(self):
        self.events.append("eof")

    def connection_lost(self, exc):
        self.events.append(f"lost:{type(exc).__name__ if exc is not None else None}")
        self.log.lost.append(exc)


class Collector(asyncio.Protocol):
    """Client protocol: collects data; futures for connection_made / connection_lost."""

    def __init__(self, loop):
        self.data = bytearray()
        self.eof = False
        self.made = loop.create_future()
        self.lost = loop.create_future()

    def connection_made(self, transport):
        self.transport = transport
        self.made.set_result(transport)

    def data_received(self, data):
        self.data += data

    def eof_received(self):
        self.eof = True

    def connection_lost(self, exc):
        self.lost.set_result(exc)


async def _echo_server(loop, *args, **kwargs):
    log = ServerLog()
    if not args and "sock" not in kwargs:
        args = (HOST, 0)
    server = await loop.create_server(lambda: EchoServer(log), *args, **kwargs)
    return server, log


async def _close_server(server):
    server.close()
    await server.wait_closed()


async def _echo_roundtrip(loop, addr, payload=b"ping", family=socket.AF_INET):
    """Connect a raw socket to ``addr``, send ``payload`` and return what comes back."""
    with socket.socket(family, socket.SOCK_STREAM) as c:
        c.setblocking(False)
        await loop.sock_connect(c, addr)
        await loop.sock_sendall(c, payload)
        return await _recv_exactly(loop, c, len(payload))


# --------------------------------------------------------------------------------------------
# 1. socket operations


def test_sock_recv_and_sendall(loop, run, tcp_pair):
    a, b = tcp_pair

    async def main():
        pending = loop.create_task(loop.sock_recv(b, 100))
        await asyncio.sleep(0.01)
        assert not pending.done()  # nothing to read yet: waits on the reader
        assert await loop.sock_sendall(a, b"hello") is None
        assert await pending == b"hello"
        # Data already there: returns at once, at most n bytes.
        await loop.sock_sendall(a, bytearray(b"abcdef"))
        await asyncio.sleep(0.01)
        assert await loop.sock_recv(b, 4) == b"abcd"
        assert await loop.sock_recv(b, 100) == b"ef"
        await loop.sock_sendall(a, memoryview(b"xyz")[1:])
        assert await loop.sock_recv(b, 100) == b"yz"
        a.shutdown(socket.SHUT_WR)
        assert await loop.sock_recv(b, 100) == b""  # EOF

    run(main())


def test_sock_recv_into(loop, run, tcp_pair):
    a, b = tcp_pair

    async def main():
        buf = bytearray(10)
        pending = loop.create_task(loop.sock_recv_into(b, buf))
        await asyncio.sleep(0.01)
        assert not pending.done()
        await loop.sock_sendall(a, b"abcdef")
        assert await pending == 6
        assert buf == b"abcdef\0\0\0\0"
        await loop.sock_sendall(a, b"XYZW")
        await asyncio.sleep(0.01)
        assert await loop.sock_recv_into(b, memoryview(buf)[2:5]) == 3
        assert buf == b"abXYZf\0\0\0\0"
        assert await loop.sock_recv(b, 10) == b"W"

    run(main())


def test_sock_sendall_large_payload_to_slow_reader(loop, run, tcp_pair):
    a, b = tcp_pair
    a.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 32 * 1024)
    b.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 32 * 1024)
    payload = os.urandom(6 * 1024 * 1024)

    async def main():
        sender = loop.create_task(loop.sock_sendall(a, payload))
        await asyncio.sleep(0.05)
        # The kernel buffers cannot hold 6 MiB: sendall is waiting for the reader.
        assert not sender.done()
        received = bytearray()
        reads = 0
        while len(received) < len(payload):
            chunk = await loop.sock_recv(b, 64 * 1024)
            assert chunk
            received += chunk
            reads += 1
            if reads % 8 == 0 and reads < 400:
                await asyncio.sleep(0.001)  # a slow reader
        assert await sender is None
        assert len(received) == len(payload)
        assert received == payload
        a.close()
        assert await loop.sock_recv(b, 10) == b""

    run(main(), timeout=20)


def test_sock_udp_sendto_recvfrom(loop, run, udp_pair):
    a, b = udp_pair

    async def main():
        pending = loop.create_task(loop.sock_recvfrom(b, 100))
        await asyncio.sleep(0.01)
        assert not pending.done()
        assert await loop.sock_sendto(a, b"ping", b.getsockname()) == 4
        assert await pending == (b"ping", a.getsockname())

        buf = bytearray(16)
        pending = loop.create_task(loop.sock_recvfrom_into(a, buf))
        await asyncio.sleep(0.01)
        assert not pending.done()
        assert await loop.sock_sendto(b, b"pong!", a.getsockname()) == 5
        assert await pending == (5, b.getsockname())
        assert buf[:5] == b"pong!"

        # nbytes limits the read; the rest of the datagram is discarded.
        await loop.sock_sendto(b, b"0123456789", a.getsockname())
        await asyncio.sleep(0.01)
        buf = bytearray(16)
        assert await loop.sock_recvfrom_into(a, buf, 3) == (3, b.getsockname())
        assert buf[:4] == b"012\0"
        # bufsize limits sock_recvfrom the same way.
        await loop.sock_sendto(a, b"abcdef", b.getsockname())
        assert await loop.sock_recvfrom(b, 2) == (b"ab", a.getsockname())

    run(main())


def test_sock_connect_resolves_localhost_and_sock_accept(loop, run, listener):
    port = listener.getsockname()[1]

    async def main():
        client = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        client.setblocking(False)
        with client:
            # 'localhost' is resolved for the socket's family, as asyncio's _ensure_resolved.
            assert await loop.sock_connect(client, ("localhost", port)) is None
            assert client.getpeername() == (HOST, port)
            conn, addr = await loop.sock_accept(listener)
            with conn:
                assert addr == client.getsockname()
                assert conn.getblocking() is False
                await loop.sock_sendall(client, b"hi")
                assert await loop.sock_recv(conn, 10) == b"hi"

    run(main())


def test_sock_accept_waits_for_a_client(loop, run, listener):
    async def main():
        pending = loop.create_task(loop.sock_accept(listener))
        await asyncio.sleep(0.01)
        assert not pending.done()
        client = socket.socket()
        client.setblocking(False)
        with client:
            await loop.sock_connect(client, listener.getsockname())
            conn, addr = await pending
            with conn:
                assert addr == client.getsockname()
                assert conn.getpeername() == client.getsockname()
        # The listener is unregistered: a raw reader can be added and removed.
        assert loop.remove_reader(listener.fileno()) is False

    run(main())


def test_sock_connect_refused(loop, run):
    port = _free_port()

    async def main():
        with socket.socket() as s:
            s.setblocking(False)
            with pytest.raises(ConnectionRefusedError):
                await loop.sock_connect(s, (HOST, port))
            assert loop.remove_writer(s.fileno()) is False

    run(main())


def test_sock_sendfile_regular_file(loop, run, tcp_pair, tmp_path):
    a, b = tcp_pair
    data = os.urandom(300_000)
    path = tmp_path / "payload.bin"
    path.write_bytes(data)

    async def main():
        with open(path, "rb") as f:
            reader = loop.create_task(_recv_exactly(loop, b, 200_000))
            sent = await loop.sock_sendfile(a, f, offset=1000, count=200_000)
            assert sent == 200_000
            assert await reader == data[1000:201_000]
            # The file position is left after the sent bytes.
            assert f.tell() == 201_000

            reader = loop.create_task(_recv_exactly(loop, b, len(data)))
            assert await loop.sock_sendfile(a, f) == len(data)
            assert await reader == data
            assert f.tell() == len(data)

            # Only SOCK_STREAM sockets; counts must be positive.
            with pytest.raises(ValueError, match="count must be a positive integer"):
                await loop.sock_sendfile(a, f, 0, 0)
            with pytest.raises(ValueError, match="offset must be a non-negative integer"):
                await loop.sock_sendfile(a, f, -1)

    run(main())


def test_sock_sendfile_fallback_for_non_file(loop, run, tcp_pair):
    a, b = tcp_pair
    data = bytes(range(256)) * 100
    bio = io.BytesIO(data)

    async def main():
        # A BytesIO has no fileno(): os.sendfile is impossible.
        with pytest.raises(asyncio.SendfileNotAvailableError):
            await loop.sock_sendfile(a, bio, fallback=False)
        reader = loop.create_task(_recv_exactly(loop, b, 5000))
        assert await loop.sock_sendfile(a, bio, 10, 5000, fallback=True) == 5000
        assert await reader == data[10:5010]
        assert bio.tell() == 5010

    run(main())


@pytest.mark.parametrize("op", ["sock_recv", "sock_recv_into"])
def test_cancelled_sock_recv_leaves_socket_usable(loop, run, tcp_pair, op):
    a, b = tcp_pair

    async def main():
        if op == "sock_recv":
            task = loop.create_task(loop.sock_recv(b, 100))
        else:
            task = loop.create_task(loop.sock_recv_into(b, bytearray(100)))
        await asyncio.sleep(0.01)
        assert not task.done()
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        # Unregistered: no reader left behind.
        assert loop.remove_reader(b.fileno()) is False

        got = loop.create_future()
        loop.add_reader(b.fileno(), lambda: got.done() or got.set_result(b.recv(100)))
        await loop.sock_sendall(a, b"one")
        assert await got == b"one"
        assert loop.remove_reader(b.fileno()) is True

        again = loop.create_task(loop.sock_recv(b, 100))
        await asyncio.sleep(0.01)
        await loop.sock_sendall(a, b"two")
        assert await again == b"two"
        assert loop.remove_reader(b.fileno()) is False

    run(main())


def test_blocking_socket_rejected_in_debug_mode(loop, run, tmp_path):
    loop.set_debug(True)  # asyncio checks the socket's mode only in debug mode
    msg = "the socket must be non-blocking"
    path = tmp_path / "f.bin"
    path.write_bytes(b"x" * 10)

    async def main():
        with socket.create_server((HOST, 0)) as lst:
            a = socket.create_connection(lst.getsockname())
            b, _ = lst.accept()
            u = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            c = socket.socket()
            with a, b, u, c, open(path, "rb") as f:
                assert a.getblocking() and lst.getblocking()
                with pytest.raises(ValueError, match=msg):
                    await loop.sock_recv(b, 10)
                with pytest.raises(ValueError, match=msg):
                    await loop.sock_recv_into(b, bytearray(10))
                with pytest.raises(ValueError, match=msg):
                    await loop.sock_sendall(a, b"x")
                with pytest.raises(ValueError, match=msg):
                    await loop.sock_connect(c, lst.getsockname())
                with pytest.raises(ValueError, match=msg):
                    await loop.sock_accept(lst)
                with pytest.raises(ValueError, match=msg):
                    await loop.sock_recvfrom(u, 10)
                with pytest.raises(ValueError, match=msg):
                    await loop.sock_recvfrom_into(u, bytearray(10))
                with pytest.raises(ValueError, match=msg):
                    await loop.sock_sendto(u, b"x", (HOST, 9))
                with pytest.raises(ValueError, match=msg):
                    await loop.sock_sendfile(a, f)

    run(main())


def test_transport_fd_rejects_raw_callbacks(loop, run):
    """A transport's fd is registered in loop._transports: add_reader/add_writer refuse it."""

    async def main():
        server, _ = await _echo_server(loop)
        port = server.sockets[0].getsockname()[1]
        tr, pr = await loop.create_connection(lambda: Collector(loop), HOST, port)
        fd = tr.get_extra_info("socket").fileno()
        assert loop._transports[fd] is tr
        with pytest.raises(RuntimeError, match="is used by transport"):
            loop.add_reader(fd, lambda: None)
        with pytest.raises(RuntimeError, match="is used by transport"):
            loop.add_writer(fd, lambda: None)
        with pytest.raises(RuntimeError, match="is used by transport"):
            loop.remove_reader(fd)
        # Paused (no reader registered), the transport still owns its fd.
        tr.pause_reading()
        with pytest.raises(RuntimeError, match="is used by transport"):
            loop.add_reader(fd, lambda: None)
        tr.resume_reading()
        # What `_sendfile_native` does: take the entry out, put it back.
        del loop._transports[fd]
        assert fd not in loop._transports
        loop.add_writer(fd, lambda: None)
        assert loop.remove_writer(fd)
        loop._transports[fd] = tr
        assert loop._transports.get(fd) is tr
        tr.close()
        assert await pr.lost is None
        # Once closed, the fd is free for raw callbacks again.
        assert loop._transports.get(fd) is None or loop._transports[fd].is_closing()
        await _close_server(server)

    run(main())


# --------------------------------------------------------------------------------------------
# 2. name resolution


def test_getaddrinfo_and_getnameinfo_numeric(loop, run):
    async def main():
        assert await loop.getaddrinfo("127.0.0.1", 80) == socket.getaddrinfo("127.0.0.1", 80)
        assert await loop.getaddrinfo("127.0.0.1", 80, type=socket.SOCK_STREAM) == [
            (socket.AF_INET, socket.SOCK_STREAM, socket.IPPROTO_TCP, "", ("127.0.0.1", 80))
        ]
        assert await loop.getaddrinfo(
            "::1", "80", family=socket.AF_INET6, type=socket.SOCK_DGRAM
        ) == [(socket.AF_INET6, socket.SOCK_DGRAM, socket.IPPROTO_UDP, "", ("::1", 80, 0, 0))]
        assert await loop.getaddrinfo(
            None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        ) == socket.getaddrinfo(None, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        with pytest.raises(socket.gaierror):
            await loop.getaddrinfo("127.0.0.1", "no-such-service-ferroloop")

        flags = socket.NI_NUMERICHOST | socket.NI_NUMERICSERV
        assert await loop.getnameinfo(("127.0.0.1", 80), flags) == ("127.0.0.1", "80")
        assert await loop.getnameinfo(("127.0.0.1", 80)) == socket.getnameinfo(("127.0.0.1", 80), 0)

    run(main())


# --------------------------------------------------------------------------------------------
# 3. create_connection


def test_create_connection_host_port(loop, run):
    async def main():
        server, log = await _echo_server(loop)
        port = server.sockets[0].getsockname()[1]
        tr, pr = await loop.create_connection(lambda: Collector(loop), HOST, port)
        assert isinstance(tr, asyncio.Transport)
        assert pr.made.done() and pr.transport is tr
        assert tr.get_protocol() is pr
        assert tr.get_extra_info("peername") == (HOST, port)
        sock = tr.get_extra_info("socket")
        assert tr.get_extra_info("sockname") == sock.getsockname()
        assert sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0
        tr.write(b"hello ")
        tr.writelines([b"wor", b"ld"])
        await _until(lambda: pr.data == b"hello world")
        await _until(lambda: log.made == 1)
        assert log.peernames == [tr.get_extra_info("sockname")]
        tr.close()
        assert tr.is_closing()
        assert await pr.lost is None
        await _until(lambda: len(log.lost) == 1)
        assert log.lost == [None]
        assert log.events == [["made", "eof", "lost:None"]]
        await _close_server(server)

    run(main())


def test_create_connection_local_addr(loop, run):
    async def main():
        server, log = await _echo_server(loop)
        port = server.sockets[0].getsockname()[1]
        local = (HOST, _free_port())
        tr, pr = await loop.create_connection(lambda: Collector(loop), HOST, port, local_addr=local)
        assert tr.get_extra_info("sockname") == local
        await _until(lambda: log.made == 1)
        assert log.peernames == [local]
        tr.write(b"x")
        await _until(lambda: pr.data == b"x")
        tr.close()
        assert await pr.lost is None
        await _close_server(server)

    run(main())


def test_create_connection_sock(loop, run):
    async def main():
        server, log = await _echo_server(loop)
        addr = server.sockets[0].getsockname()
        raw = socket.create_connection(addr)
        assert raw.getblocking()
        with pytest.raises(ValueError, match="host/port and sock"):
            await loop.create_connection(lambda: Collector(loop), HOST, addr[1], sock=raw)
        tr, pr = await loop.create_connection(lambda: Collector(loop), sock=raw)
        assert raw.getblocking() is False
        assert tr.get_extra_info("socket").fileno() == raw.fileno()
        assert tr.get_extra_info("peername") == addr
        tr.write(b"via sock")
        await _until(lambda: pr.data == b"via sock")
        tr.close()
        assert await pr.lost is None
        assert raw.fileno() == -1  # the transport closed the socket
        await _close_server(server)

    run(main())


def test_create_connection_refused(loop, run):
    port = _free_port()

    async def main():
        before = _open_fds()
        with pytest.raises(ConnectionRefusedError) as info:
            await loop.create_connection(lambda: Collector(loop), HOST, port)
        assert isinstance(info.value, OSError)
        assert info.value.errno == errno.ECONNREFUSED
        with pytest.raises(OSError) as info:
            await loop.create_connection(
                lambda: Collector(loop), "localhost", port, happy_eyeballs_delay=0.05
            )
        # One address: its error; several (IPv4 and IPv6): "Multiple exceptions".
        assert info.value.errno == errno.ECONNREFUSED or "Multiple exceptions" in str(info.value)
        assert _open_fds() == before  # failed sockets are closed

    run(main())


def test_create_connection_happy_eyeballs(loop, run):
    async def main():
        before = _open_fds()
        server, log = await _echo_server(loop, "localhost", 0)
        port = server.sockets[0].getsockname()[1]
        tr, pr = await loop.create_connection(
            lambda: Collector(loop),
            "localhost",
            port,
            happy_eyeballs_delay=0.1,
            interleave=1,
        )
        tr.write(b"eyeballs")
        await _until(lambda: pr.data == b"eyeballs")
        await asyncio.sleep(0.15)  # any staggered attempt would have started by now
        assert log.made == 1
        tr.close()
        assert await pr.lost is None
        await _until(lambda: len(log.lost) == 1)
        await _close_server(server)
        await asyncio.sleep(0)
        assert _open_fds() == before

    run(main())


def test_create_unix_connection(loop, run, tmp_path):
    path = str(tmp_path / "echo.sock")

    async def main():
        log = ServerLog()
        server = await loop.create_unix_server(lambda: EchoServer(log), path)
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        tr, pr = await loop.create_unix_connection(lambda: Collector(loop), path)
        assert tr.get_extra_info("peername") == path
        assert tr.get_extra_info("socket").family == socket.AF_UNIX
        tr.write(b"unix")
        await _until(lambda: pr.data == b"unix")
        tr.close()
        assert await pr.lost is None
        # A path-like object works too.
        tr, pr = await loop.create_unix_connection(lambda: Collector(loop), tmp_path / "echo.sock")
        tr.write(b"again")
        await _until(lambda: pr.data == b"again")
        tr.write_eof()
        await _until(lambda: pr.eof)
        assert await pr.lost is None
        await _until(lambda: len(log.lost) == 2)
        assert log.lost == [None, None]
        assert log.peernames == ["", ""]  # accept() of an unbound Unix client
        await _close_server(server)

    run(main())


def test_connect_accepted_socket(loop, run):
    async def main():
        log = ServerLog()
        with socket.create_server((HOST, 0)) as lst:
            client = socket.create_connection(lst.getsockname())
            conn, _ = lst.accept()
        client.setblocking(False)
        with client:
            tr, pr = await loop.connect_accepted_socket(lambda: EchoServer(log), conn)
            assert isinstance(pr, EchoServer) and pr.transport is tr
            assert conn.getblocking() is False
            assert tr.get_extra_info("peername") == client.getsockname()
            await loop.sock_sendall(client, b"accepted by hand")
            assert await _recv_exactly(loop, client, 16) == b"accepted by hand"
            client.shutdown(socket.SHUT_WR)
            await _until(lambda: log.lost)
            assert await loop.sock_recv(client, 10) == b""
        assert log.events == [["made", "eof", "lost:None"]]
        assert conn.fileno() == -1

    run(main())


class Sink(asyncio.Protocol):
    """Server protocol that collects everything; can start with reading paused."""

    def __init__(self, log: ServerLog, paused=False):
        self.data = bytearray()
        self.paused = paused
        self.lost = None
        log.protocols.append(self)

    def connection_made(self, transport):
        self.transport = transport
        if self.paused:
            transport.pause_reading()

    def data_received(self, data):
        self.data += data

    def connection_lost(self, exc):
        self.lost = exc


def test_loop_sendfile_over_connection(loop, run, tmp_path):
    data = os.urandom(8 * 1024 * 1024)
    path = tmp_path / "big.bin"
    path.write_bytes(data)

    async def main():
        log = ServerLog()
        server = await loop.create_server(lambda: Sink(log, paused=True), HOST, 0)
        port = server.sockets[0].getsockname()[1]
        tr, pr = await loop.create_connection(lambda: Collector(loop), HOST, port)
        tr.get_extra_info("socket").setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * 1024)
        fd = tr.get_extra_info("socket").fileno()
        await _until(lambda: log.protocols)
        (sink,) = log.protocols
        tr.write(b"head")
        with open(path, "rb") as f:
            task = loop.create_task(loop.sendfile(tr, f, offset=100, count=len(data) - 200))
            await asyncio.sleep(0.05)
            assert not task.done()  # the peer does not read
            with pytest.raises(RuntimeError, match="sendfile is in progress"):
                tr.write(b"x")
            assert not tr.is_reading()  # paused for the sendfile
            sink.transport.resume_reading()
            assert await task == len(data) - 200
            assert f.tell() == len(data) - 100
        assert tr.is_reading()
        assert loop._transports[fd] is tr
        tr.write(b"tail")
        expected = b"head" + data[100:-100] + b"tail"
        await _until(lambda: len(sink.data) >= len(expected))
        assert sink.data == expected

        # Not a regular file: the fallback writes through the transport.
        sink.data.clear()
        blob = io.BytesIO(data[: 2 * 1024 * 1024])
        with pytest.raises(asyncio.SendfileNotAvailableError):
            await loop.sendfile(tr, blob, fallback=False)
        assert await loop.sendfile(tr, blob, 10) == 2 * 1024 * 1024 - 10
        assert tr.get_protocol() is pr  # the fallback restored the protocol
        assert tr.is_reading()
        tr.write(b"end")
        expected = data[10 : 2 * 1024 * 1024] + b"end"
        await _until(lambda: len(sink.data) >= len(expected))
        assert sink.data == expected
        tr.close()
        assert await pr.lost is None
        await _close_server(server)

    run(main(), timeout=20)


def test_server_replies_after_client_write_eof(loop, run):
    class Upper(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            self.buf = bytearray()

        def data_received(self, data):
            self.buf += data

        def eof_received(self):
            self.transport.write(bytes(self.buf).upper())
            self.transport.close()
            return True  # keep the transport open to write the reply

    async def main():
        server = await loop.create_server(Upper, HOST, 0)
        port = server.sockets[0].getsockname()[1]
        tr, pr = await loop.create_connection(lambda: Collector(loop), HOST, port)
        assert tr.can_write_eof()
        tr.write(b"half ")
        tr.write(b"closed")
        tr.write_eof()
        with pytest.raises(RuntimeError, match="after write_eof"):
            tr.write(b"more")
        assert await pr.lost is None
        assert pr.data == b"HALF CLOSED"
        assert pr.eof
        await _close_server(server)

    run(main())


# --------------------------------------------------------------------------------------------
# 4. create_server and Server


def test_create_server_several_hosts(loop, run):
    hosts = ["127.0.0.1", "localhost"]

    async def main():
        # asyncio binds one socket per distinct address info of all hosts.
        expected = {
            (ai[0], ai[4][0])
            for h in hosts
            for ai in socket.getaddrinfo(h, 0, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
        }
        server, log = await _echo_server(loop, hosts, 0)
        got = {(s.family, s.getsockname()[0]) for s in server.sockets}
        assert got == expected
        assert len(server.sockets) == len(expected)
        for s in server.sockets:
            assert await _echo_roundtrip(loop, s.getsockname()[:2], family=s.family) == b"ping"
        await _close_server(server)

        server, log = await _echo_server(loop, ["127.0.0.1", "::1"], 0)
        families = sorted(s.family for s in server.sockets)
        assert families == [socket.AF_INET, socket.AF_INET6]
        for s in server.sockets:
            if s.family == socket.AF_INET6:
                assert s.getsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY) == 1
            assert await _echo_roundtrip(loop, s.getsockname()[:2], b"v", s.family) == b"v"
        await _until(lambda: len(log.lost) == 2)
        await _close_server(server)

    run(main())


def test_create_server_reuse_address(loop, run):
    async def main():
        server, _ = await _echo_server(loop)  # posix default: reuse_address=True
        assert server.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) != 0
        await _close_server(server)
        server, _ = await _echo_server(loop, HOST, 0, reuse_address=False)
        assert server.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR) == 0
        await _close_server(server)

    run(main())


def test_create_server_reuse_port(loop, run):
    async def main():
        log = ServerLog()
        s1 = await loop.create_server(lambda: EchoServer(log, 1), HOST, 0, reuse_port=True)
        port = s1.sockets[0].getsockname()[1]
        # Without SO_REUSEPORT the port is taken.
        with pytest.raises(OSError) as info:
            await loop.create_server(lambda: EchoServer(log, 0), HOST, port)
        assert info.value.errno == errno.EADDRINUSE
        s2 = await loop.create_server(lambda: EchoServer(log, 2), HOST, port, reuse_port=True)
        for s in (s1, s2):
            assert s.sockets[0].getsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT) != 0
            assert s.sockets[0].getsockname() == (HOST, port)
        for i in range(64):
            assert await _echo_roundtrip(loop, (HOST, port), b"%d" % i) == b"%d" % i
            if {1, 2} <= set(log.tags):
                break
        # The kernel spreads connections over both listeners: both accept.
        assert {1, 2} <= set(log.tags)
        await _close_server(s1)
        await _close_server(s2)

    run(main())


def _listen_backlog(sock) -> int:
    """The listen() backlog of a listening TCP socket (Linux: tcp_info.tcpi_sacked)."""
    info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 104)
    return struct.unpack_from("I", info, 28)[0]


def test_create_server_backlog(loop, run):
    async def main():
        server, _ = await _echo_server(loop, HOST, 0, backlog=7)
        assert _listen_backlog(server.sockets[0]) == 7
        assert await _echo_roundtrip(loop, server.sockets[0].getsockname()) == b"ping"
        await _close_server(server)
        server, _ = await _echo_server(loop)
        assert _listen_backlog(server.sockets[0]) == 100  # asyncio's default
        await _close_server(server)

    run(main())


def test_create_server_start_serving_false(loop, run):
    async def main():
        server, log = await _echo_server(loop, HOST, 0, start_serving=False)
        addr = server.sockets[0].getsockname()
        assert not server.is_serving()
        # Bound but not listening yet.
        with pytest.raises(ConnectionRefusedError):
            await _echo_roundtrip(loop, addr)
        await server.start_serving()
        assert server.is_serving()
        await server.start_serving()  # idempotent
        assert await _echo_roundtrip(loop, addr, b"now") == b"now"
        await _until(lambda: log.lost)
        assert log.made == 1
        await _close_server(server)

    run(main())


def test_create_server_sock(loop, run):
    async def main():
        sock = socket.socket()
        sock.bind((HOST, 0))
        addr = sock.getsockname()
        with pytest.raises(ValueError, match="host/port and sock"):
            await loop.create_server(lambda: EchoServer(ServerLog()), HOST, 0, sock=sock)
        server, log = await _echo_server(loop, sock=sock)
        assert sock.getblocking() is False
        assert [s.fileno() for s in server.sockets] == [sock.fileno()]
        assert await _echo_roundtrip(loop, addr, b"sock=") == b"sock="
        await _until(lambda: log.lost)
        await _close_server(server)
        assert sock.fileno() == -1

    run(main())


def test_server_object(loop, run):
    async def main():
        server, log = await _echo_server(loop)
        assert server.get_loop() is loop
        assert server.is_serving()
        socks = server.sockets
        assert isinstance(socks, tuple) and len(socks) == 1
        assert isinstance(socks[0], asyncio.trsock.TransportSocket)
        addr = socks[0].getsockname()

        # An open connection is counted while it lives (the transport attaches to the server).
        tr, pr = await loop.create_connection(lambda: Collector(loop), *addr)
        await _until(lambda: log.made == 1)
        assert server._active_count == 1

        server.close()
        assert not server.is_serving()
        assert server.sockets == ()
        await server.wait_closed()
        with pytest.raises(ConnectionRefusedError):
            await _echo_roundtrip(loop, addr)
        # asyncio 3.11 does not close open connections with the server.
        tr.write(b"still here")
        await _until(lambda: pr.data == b"still here")
        tr.close()
        assert await pr.lost is None
        await _until(lambda: len(log.lost) == 1)
        assert server._active_count == 0
        await server.wait_closed()

    run(main())


def test_serve_forever_cancelled(loop, run):
    async def main():
        server, log = await _echo_server(loop, HOST, 0, start_serving=False)
        addr = server.sockets[0].getsockname()
        task = loop.create_task(server.serve_forever())
        await asyncio.sleep(0.01)
        assert server.is_serving()
        with pytest.raises(RuntimeError, match="already being awaited"):
            await server.serve_forever()
        assert await _echo_roundtrip(loop, addr, b"forever") == b"forever"
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not server.is_serving()
        assert server.sockets == ()
        with pytest.raises(ConnectionRefusedError):
            await _echo_roundtrip(loop, addr)
        with pytest.raises(RuntimeError, match="is closed"):
            await server.serve_forever()

    run(main())


def test_server_async_with(loop, run):
    async def main():
        server, _ = await _echo_server(loop)
        addr = server.sockets[0].getsockname()
        async with server as entered:
            assert entered is server
            assert server.is_serving()
            assert await _echo_roundtrip(loop, addr, b"with") == b"with"
        assert not server.is_serving()
        assert server.sockets == ()
        with pytest.raises(ConnectionRefusedError):
            await _echo_roundtrip(loop, addr)

    run(main())


def test_create_unix_server_paths(loop, run, tmp_path):
    async def main():
        # A stale socket file (its socket closed) is removed and the path reused.
        path = tmp_path / "stale.sock"
        stale = socket.socket(socket.AF_UNIX)
        stale.bind(str(path))
        stale.close()
        assert stat.S_ISSOCK(os.stat(path).st_mode)
        log = ServerLog()
        server = await loop.create_unix_server(lambda: EchoServer(log), path)  # a PathLike
        assert server.sockets[0].getsockname() == str(path)
        assert await _echo_roundtrip(loop, str(path), b"stale", socket.AF_UNIX) == b"stale"
        await _until(lambda: log.lost)
        await _close_server(server)
        if sys.version_info < (3, 13):
            assert os.path.exists(path)  # asyncio < 3.13 leaves the file behind

        # A regular file is never removed: the bind fails with EADDRINUSE.
        regular = tmp_path / "regular"
        regular.write_bytes(b"keep me")
        with pytest.raises(OSError) as info:
            await loop.create_unix_server(lambda: EchoServer(log), str(regular))
        assert info.value.errno == errno.EADDRINUSE
        assert str(regular) in str(info.value)
        assert regular.read_bytes() == b"keep me"

        with pytest.raises(ValueError, match="path and sock"):
            await loop.create_unix_server(
                lambda: EchoServer(log), str(path), sock=socket.socket(socket.AF_UNIX)
            )

        if ABSTRACT_OK:
            name = f"\0ferroloop-test-{os.getpid()}-{id(loop)}"
            server = await loop.create_unix_server(lambda: EchoServer(log), name)
            assert await _echo_roundtrip(loop, name, b"abstract", socket.AF_UNIX) == b"abstract"
            await _close_server(server)

    run(main())


# --------------------------------------------------------------------------------------------
# 5. many connections


def _msg_size(cid, k):
    # Every 10th client sends one message larger than the transports' high-water mark.
    big = 300 * 1024 if cid % 10 == 0 and k == 2 else 0
    return cid * 37 + k * 1000 + 1 + big


def test_300_concurrent_echo_clients(loop, run):
    n_clients = 300
    n_messages = 5

    async def main():
        server, log = await _echo_server(loop, HOST, 0, backlog=1024)
        addr = server.sockets[0].getsockname()
        connected = 0
        all_connected = asyncio.Event()

        async def client(cid):
            nonlocal connected
            reader, writer = await asyncio.open_connection(*addr)
            connected += 1
            if connected == n_clients:
                all_connected.set()
            await all_connected.wait()  # every connection is open at the same time
            for k in range(n_messages):
                msg = bytes([(cid + k) % 256]) * _msg_size(cid, k)
                writer.write(b"%d:%d:" % (cid, k) + msg)
                expected = b"%d:%d:" % (cid, k) + msg
                assert await reader.readexactly(len(expected)) == expected
            writer.close()
            await writer.wait_closed()
            return cid

        results = await asyncio.gather(*(client(i) for i in range(n_clients)))
        assert results == list(range(n_clients))
        await _until(lambda: len(log.lost) == n_clients)
        assert log.made == n_clients
        assert log.lost == [None] * n_clients
        assert server._active_count == 0
        total = sum(len(p.received) for p in log.protocols)
        assert total == sum(
            len(b"%d:%d:" % (c, k)) + _msg_size(c, k)
            for c in range(n_clients)
            for k in range(n_messages)
        )
        await _close_server(server)

    run(main(), timeout=30)


# --------------------------------------------------------------------------------------------
# 6. faults

LINGER_RST = struct.pack("ii", 1, 0)


def test_peer_reset_reaches_server_connection_lost(loop, run):
    async def main():
        server, log = await _echo_server(loop)
        addr = server.sockets[0].getsockname()
        c = socket.socket()
        c.setblocking(False)
        await loop.sock_connect(c, addr)
        await loop.sock_sendall(c, b"hi")
        assert await _recv_exactly(loop, c, 2) == b"hi"
        c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        c.close()  # RST
        await _until(lambda: log.lost)
        (exc,) = log.lost
        assert type(exc) is ConnectionResetError
        assert exc.errno == errno.ECONNRESET
        assert log.events == [["made", "lost:ConnectionResetError"]]
        assert server._active_count == 0
        await _close_server(server)

    run(main())


def test_peer_reset_while_server_has_buffered_writes(loop, run):
    class Flood(EchoServer):
        def data_received(self, data):
            self.received += data
            self.transport.write(b"z" * (16 * 1024 * 1024))  # far more than the socket takes

    async def main():
        log = ServerLog()
        server = await loop.create_server(lambda: Flood(log), HOST, 0)
        c = socket.socket()
        c.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 16 * 1024)
        c.setblocking(False)
        with c:
            await loop.sock_connect(c, server.sockets[0].getsockname())
            await loop.sock_sendall(c, b"go")
            await _until(lambda: log.protocols and log.protocols[0].received)
            (proto,) = log.protocols
            await _until(lambda: proto.transport.get_write_buffer_size() > 0)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
        await _until(lambda: log.lost)
        (exc,) = log.lost
        assert type(exc) is ConnectionResetError
        assert proto.transport.get_write_buffer_size() == 0
        assert proto.transport.is_closing()
        assert server._active_count == 0
        await _close_server(server)

    run(main())


def test_server_abort_with_rst_reaches_client(loop, run):
    class AbortingServer(EchoServer):
        def data_received(self, data):
            self.transport.get_extra_info("socket").setsockopt(
                socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST
            )
            self.transport.abort()

    async def main():
        log = ServerLog()
        server = await loop.create_server(lambda: AbortingServer(log), HOST, 0)
        port = server.sockets[0].getsockname()[1]
        tr, pr = await loop.create_connection(lambda: Collector(loop), HOST, port)
        tr.write(b"go")
        exc = await pr.lost
        assert type(exc) is ConnectionResetError
        assert tr.is_closing()
        await _until(lambda: log.lost)
        assert log.lost == [None]  # abort() itself: connection_lost(None)
        await _close_server(server)

    run(main())


def test_clients_that_close_at_once(loop, run):
    async def main():
        server, log = await _echo_server(loop)
        addr = server.sockets[0].getsockname()
        # Connected and closed before the server accepted them (the loop does not run).
        for _ in range(20):
            socket.create_connection(addr).close()
        for _ in range(5):
            c = socket.create_connection(addr)
            c.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, LINGER_RST)
            c.close()
        await _until(lambda: len(log.lost) == 25)
        events = sorted(map(tuple, log.events))
        assert events.count(("made", "eof", "lost:None")) == 20
        assert events.count(("made", "lost:ConnectionResetError")) == 5
        assert server._active_count == 0
        assert all(t.is_closing() for t in loop._transports.values())
        await _close_server(server)

    run(main())


@pytest.mark.parametrize("how", ["close", "abort"])
def test_server_rejects_in_connection_made(loop, run, how):
    """A server protocol that closes each connection at once: the transport must not start
    reading a socket it already closed, and nothing leaks."""

    class Reject(EchoServer):
        def connection_made(self, transport):
            super().connection_made(transport)
            getattr(transport, how)()
            assert transport.is_closing()

    async def main():
        log = ServerLog()
        server = await loop.create_server(lambda: Reject(log), HOST, 0, backlog=512)
        port = server.sockets[0].getsockname()[1]

        async def client():
            tr, pr = await loop.create_connection(lambda: Collector(loop), HOST, port)
            exc = await pr.lost
            return exc, pr.eof, bytes(pr.data)

        results = await asyncio.gather(*(client() for _ in range(200)))
        assert results == [(None, True, b"")] * 200
        await _until(lambda: len(log.lost) == 200)
        assert log.events == [["made", "lost:None"]] * 200
        assert server._active_count == 0
        await _close_server(server)
        await asyncio.sleep(0)

    gc.collect()
    fds_before = _open_fds()
    run(main())
    gc.collect()
    assert len(loop._transports) == 0
    assert _open_fds() == fds_before


@pytest.mark.parametrize("where", ["connection_made", "connection_lost"])
def test_server_protocol_error_goes_to_handler(loop, run, exc_handler, where):
    class Faulty(EchoServer):
        def connection_made(self, transport):
            super().connection_made(transport)
            if where == "connection_made":
                raise ZeroDivisionError(where)

        def connection_lost(self, exc):
            super().connection_lost(exc)
            if where == "connection_lost":
                raise ZeroDivisionError(where)

    async def main():
        log = ServerLog()
        server = await loop.create_server(lambda: Faulty(log), HOST, 0)
        addr = server.sockets[0].getsockname()
        # The connection still works (the error is the callback's, not the transport's).
        assert await _echo_roundtrip(loop, addr, b"one") == b"one"
        await _until(lambda: len(log.lost) == 1)
        await asyncio.sleep(0.01)
        (ctx,) = exc_handler.consume(1)
        assert ctx["message"].startswith("Exception in callback")
        assert type(ctx["exception"]) is ZeroDivisionError
        assert ctx["exception"].args == (where,)
        assert log.lost == [None]
        assert server._active_count == 0
        assert all(p.transport.get_extra_info("socket").fileno() == -1 for p in log.protocols)
        # The server goes on serving.
        assert await _echo_roundtrip(loop, addr, b"two") == b"two"
        await _until(lambda: len(log.lost) == 2)
        exc_handler.consume(1)
        await _close_server(server)

    run(main())


_conn_var = __import__("contextvars").ContextVar("conn_var", default=None)


def test_each_connection_gets_its_own_context(loop, run):
    """The protocol factory and the protocol's callbacks run in a copy of the context the
    server was started in, one per connection: what one connection sets, no other sees."""
    seen = []

    class Tagging(asyncio.Protocol):
        def __init__(self):
            seen.append(("factory", _conn_var.get()))
            _conn_var.set(len(seen))

        def connection_made(self, transport):
            self.transport = transport
            seen.append(("made", _conn_var.get()))

        def data_received(self, data):
            seen.append(("data", _conn_var.get()))
            _conn_var.set("data")
            self.transport.write(data)

    async def main():
        _conn_var.set("server")
        server = await loop.create_server(Tagging, HOST, 0)
        addr = server.sockets[0].getsockname()
        for _ in range(2):
            assert await _echo_roundtrip(loop, addr, b"x") == b"x"
        await _close_server(server)
        assert _conn_var.get() == "server"

    run(main())
    # The factory's set() is not visible to connection_made, which runs in its own copy (as
    # every call_soon callback does); data_received sees its reader's context.
    assert seen == [
        ("factory", "server"),
        ("made", 1),
        ("data", 1),
        ("factory", "server"),
        ("made", 4),
        ("data", 4),
    ], seen


@pytest.mark.parametrize("where", ["factory", "connection_made"])
def test_failing_protocol_factory_leaks_nothing(loop, run, exc_handler, where):
    calls = []

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            self.transport = transport
            if where == "connection_made" and len(calls) == 1:
                raise ZeroDivisionError(where)

        def data_received(self, data):
            self.transport.write(data)

    def factory():
        calls.append(None)
        if where == "factory" and len(calls) == 1:
            raise ZeroDivisionError(where)
        return Echo()

    async def main():
        server = await loop.create_server(factory, HOST, 0)
        addr = server.sockets[0].getsockname()
        fds = _open_fds()
        client = socket.create_connection(addr)
        client.setblocking(False)
        await _until(lambda: len(calls) == 1)
        await asyncio.sleep(0.05)
        # The server goes on serving the next client.
        assert await _echo_roundtrip(loop, addr, b"next") == b"next"
        client.close()
        if where == "connection_made" or loop.get_debug():
            # A failing factory is reported in debug mode only, as asyncio does.
            (ctx,) = exc_handler.consume(1)
            assert type(ctx["exception"]) is ZeroDivisionError
            # asyncio leaves the accepted socket to the GC, and this traceback holds it.
            ctx["exception"].__traceback__ = None
        await _close_server(server)
        gc.collect()
        await asyncio.sleep(0.01)
        return fds

    fds = run(main())
    gc.collect()
    assert _open_fds() <= fds


def test_emfile_on_accept_keeps_server_alive(loop, run, exc_handler):
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    backlog = 3

    async def main():
        server, log = await _echo_server(loop, HOST, 0, backlog=backlog)
        addr = server.sockets[0].getsockname()
        first, second = socket.socket(), socket.socket()  # made before the limit drops
        _nonblocking(first, second)
        with first, second:
            probe = os.open(os.devnull, os.O_RDONLY)  # the lowest free fd
            os.close(probe)
            resource.setrlimit(resource.RLIMIT_NOFILE, (probe, hard))
            try:
                await loop.sock_connect(first, addr)
                await _until(lambda: exc_handler.pending, 0.005)
                await asyncio.sleep(0.05)
                assert server.is_serving()
                assert log.made == 0
            finally:
                resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))
            # asyncio tries accept() `backlog` times per readiness, reporting each failure.
            contexts = exc_handler.consume(backlog)
            for ctx in contexts:
                assert ctx["message"] == "socket.accept() out of system resource"
                assert isinstance(ctx["exception"], OSError)
                assert ctx["exception"].errno == errno.EMFILE
                assert ctx["socket"].fileno() == server.sockets[0].fileno()
            # After ACCEPT_RETRY_DELAY the queued connection is accepted, and new ones too.
            await loop.sock_sendall(first, b"queued")
            assert await _recv_exactly(loop, first, 6) == b"queued"
            await loop.sock_connect(second, addr)
            await loop.sock_sendall(second, b"new")
            assert await _recv_exactly(loop, second, 3) == b"new"
            assert log.made == 2
        await _until(lambda: len(log.lost) == 2)
        await _close_server(server)

    try:
        run(main())
    finally:
        resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


# --------------------------------------------------------------------------------------------
# 7. leaks: many connections opened and closed

LIVE: weakref.WeakSet = weakref.WeakSet()
STYLES = ["client_close", "client_abort", "server_close", "streams"]


class LeakServer(asyncio.Protocol):
    def __init__(self, counter, style):
        LIVE.add(self)
        self.counter = counter
        self.style = style

    def connection_made(self, transport):
        LIVE.add(transport)
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)
        if self.style == "server_close":
            self.transport.close()

    def eof_received(self):
        return None  # close

    def connection_lost(self, exc):
        self.counter.done(exc)


class LeakClient(asyncio.Protocol):
    def __init__(self, loop, style):
        LIVE.add(self)
        self.style = style
        self.lost = loop.create_future()
        self.data = b""

    def connection_made(self, transport):
        LIVE.add(transport)
        self.transport = transport
        transport.write(b"ping")

    def data_received(self, data):
        self.data += data
        if self.data == b"ping":
            if self.style == "client_close":
                self.transport.close()
            elif self.style == "client_abort":
                self.transport.abort()
            # server_close: wait for the server's EOF.

    def connection_lost(self, exc):
        self.lost.set_result((exc, self.data))


class Counter:
    def __init__(self):
        self.n = 0
        self.errors = []

    def done(self, exc):
        self.n += 1
        if exc is not None:
            self.errors.append(exc)


async def _churn(loop, style, total, batch):
    counter = Counter()
    if style == "streams":

        async def handle(reader, writer):
            LIVE.add(writer)
            LIVE.add(writer.transport)
            LIVE.add(writer.transport.get_protocol())
            try:
                writer.write(await reader.readexactly(4))
                await writer.drain()
                assert await reader.read() == b""
                writer.close()
                await writer.wait_closed()
            finally:
                counter.done(None)

        server = await asyncio.start_server(handle, HOST, 0, backlog=1024)
    else:
        server = await loop.create_server(lambda: LeakServer(counter, style), HOST, 0, backlog=1024)
    addr = server.sockets[0].getsockname()

    async def one():
        if style == "streams":
            reader, writer = await asyncio.open_connection(*addr)
            LIVE.add(writer)
            LIVE.add(writer.transport)
            LIVE.add(writer.transport.get_protocol())
            writer.write(b"ping")
            assert await reader.readexactly(4) == b"ping"
            writer.close()
            await writer.wait_closed()
            return None, b"ping"
        _, proto = await loop.create_connection(lambda: LeakClient(loop, style), *addr)
        return await proto.lost

    done = 0
    while done < total:
        n = min(batch, total - done)
        results = await asyncio.gather(*(one() for _ in range(n)))
        assert results == [(None, b"ping")] * n
        done += n
    await _until(lambda: counter.n == total)
    assert counter.errors == []
    await _close_server(server)
    for _ in range(5):
        await asyncio.sleep(0)


def _check_no_leaks(loop, fds_before):
    gc.collect()
    assert len(LIVE) == 0, f"{len(LIVE)} protocols/transports alive: {list(LIVE)[:5]!r}"
    assert len(loop._transports) == 0, dict(loop._transports)
    after = _open_fds()
    assert len(after) == len(fds_before), (sorted(after - fds_before), sorted(fds_before - after))
    assert after == fds_before


@pytest.mark.parametrize("style", STYLES)
def test_connections_do_not_leak(loop, run, style):
    gc.collect()
    fds_before = _open_fds()
    run(_churn(loop, style, total=1000, batch=200), timeout=30)
    _check_no_leaks(loop, fds_before)


def test_10000_connections_do_not_leak(loop, run):
    gc.collect()
    fds_before = _open_fds()

    async def main():
        for style in STYLES:
            await _churn(loop, style, total=2500, batch=200)

    run(main(), timeout=50)
    _check_no_leaks(loop, fds_before)


# --------------------------------------------------------------------------- sock_* edge cases
# ferroloop runs sock_recv/sock_recv_into/sock_sendall natively for plain non-blocking
# `socket.socket`s and hands everything else to asyncio's code: both paths must answer alike.


class _SubSocket(socket.socket):
    """A socket subclass (like ssl.SSLSocket, it does not take the native path)."""

    def recv(self, n, *args):
        return b"<" + super().recv(n, *args) + b">"


def test_sock_ops_on_a_socket_subclass_use_its_methods(loop, tcp_pair):
    a, b = tcp_pair
    sub = _SubSocket(fileno=os.dup(b.fileno()))
    sub.setblocking(False)

    async def main():
        reader = asyncio.ensure_future(loop.sock_recv(sub, 100))
        await asyncio.sleep(0.01)
        await loop.sock_sendall(a, b"data")
        return await reader

    try:
        assert run_coro(loop, main()) == b"<data>"
    finally:
        sub.close()


def test_sock_recv_size_edge_cases(loop, tcp_pair):
    a, b = tcp_pair

    async def main():
        a.send(b"xyz")
        await asyncio.sleep(0.01)
        assert await loop.sock_recv(b, 0) == b""
        with pytest.raises(ValueError, match="negative buffersize"):
            await loop.sock_recv(b, -1)
        assert await loop.sock_recv(b, 2) == b"xy"
        assert await loop.sock_recv(b, 2) == b"z"

    run_coro(loop, main())


def test_sock_recv_into_read_only_buffer_is_type_error(loop, tcp_pair):
    a, b = tcp_pair

    async def main():
        a.send(b"x")
        await asyncio.sleep(0.01)
        with pytest.raises(TypeError):
            await loop.sock_recv_into(b, b"read-only")

    run_coro(loop, main())


def test_sock_sendall_bytes_like_objects(loop, tcp_pair):
    import array

    a, b = tcp_pair
    items = [
        bytearray(b"ba"),
        memoryview(b"mv"),
        array.array("b", b"ar"),
        memoryview(b"a-b-c-")[::2],  # non-contiguous: asyncio's socket.send rejects it
    ]

    async def main():
        got = []
        for item in items:
            try:
                await loop.sock_sendall(a, item)
            except (TypeError, BufferError) as exc:
                got.append(type(exc).__name__)
        await asyncio.sleep(0.01)
        got.append(b.recv(100))
        return got

    assert run_coro(loop, main()) == ["BufferError", b"bamvar"]


def test_sock_ops_with_a_timeout_socket_outside_debug_mode(loop, tcp_pair):
    a, b = tcp_pair
    b.settimeout(5.0)
    loop.set_debug(False)  # in debug mode both loops refuse the socket

    async def main():
        a.send(b"ready")
        await asyncio.sleep(0.01)
        return await loop.sock_recv(b, 100)

    assert run_coro(loop, main()) == b"ready"


def test_sock_recv_on_a_closed_socket_is_ebadf(loop, tcp_pair):
    a, b = tcp_pair
    b.close()

    async def main():
        with pytest.raises(OSError) as info:
            await loop.sock_recv(b, 10)
        return info.value.errno

    assert run_coro(loop, main()) == errno.EBADF
