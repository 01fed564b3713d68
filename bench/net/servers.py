"""The Python servers of the network benchmark, one per (style, transport), on any loop.

Usage: python3 bench/net/servers.py LOOP STYLE TRANSPORT ADDR CORE
       python3 bench/net/servers.py --probe LOOP

LOOP is ferroloop, asyncio, uvloop or rloop (the loop comes from that package's
`new_event_loop`); STYLE is sock, streams, protocol, http or udp; TRANSPORT is tcp (ADDR is
the host, the port is chosen by the kernel) or unix (ADDR is the socket path), and for the
udp style udp (IPv4, ADDR is the host) or unixdgram (ADDR is the socket path). The process
pins itself to CORE, starts the server, prints `READY <port|path>` and serves until killed.
Setup errors print `SETUP-ERROR <exception>` and exit with status 3 (shown as n/a); any
error while serving is printed to stderr, which run.py reports.
"""

import asyncio
import importlib
import json
import os
import socket
import sys
import traceback

READ_SIZE = 256 * 1024  # like asyncio's transports (max_size); vmbench reads 1 MB in sock_*
# Must stay byte-identical to RESPONSE in rust-echo/src/main.rs.
RESPONSE = b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 13\r\n\r\nHello, world!"
# The peer going away is normal at the end of a run; anything else is reported.
QUIET = (ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


def make_loop(name):
    module = importlib.import_module(name)
    loop = module.new_event_loop()
    # Make sure the factory really gave us the loop we mean to measure.
    if name == "asyncio":
        assert type(loop) is asyncio.SelectorEventLoop, type(loop)
    else:  # not the stdlib loop itself (a subclass is fine), a class of the loop's package
        assert type(loop) is not asyncio.SelectorEventLoop, type(loop)
        mods = {c.__module__.split(".")[0] for c in type(loop).__mro__}
        assert name in mods, type(loop)
    return loop


def set_nodelay(sock):
    """TCP_NODELAY, as asyncio's and uvloop's transports set it; sock_* does it by hand."""
    if sock is not None and sock.family in (socket.AF_INET, socket.AF_INET6):
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)


def listening_socket(transport, addr):
    if transport == "tcp":
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((addr, 0))
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(addr)
    sock.listen(128)
    sock.setblocking(False)
    return sock


# --- sock_*: loop.sock_accept / sock_recv / sock_sendall (vmbench's echo_server) --------


async def sock_echo(loop, conn):
    try:
        while True:
            data = await loop.sock_recv(conn, READ_SIZE)
            if not data:
                break
            await loop.sock_sendall(conn, data)
    except QUIET:
        pass
    finally:
        conn.close()


async def start_sock(loop, transport, addr):
    lsock = listening_socket(transport, addr)
    tasks = set()

    async def acceptor():
        while True:
            conn, _ = await loop.sock_accept(lsock)
            conn.setblocking(False)
            set_nodelay(conn)
            task = loop.create_task(sock_echo(loop, conn))
            tasks.add(task)
            task.add_done_callback(tasks.discard)

    task = loop.create_task(acceptor())
    await asyncio.sleep(0)  # let a broken sock_accept raise during setup
    if task.done():
        task.result()
    return lsock.getsockname(), task


# --- streams: asyncio.start_server, reader.read / writer.write + drain ----------------


async def stream_echo(reader, writer):
    set_nodelay(writer.get_extra_info("socket"))
    try:
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                break
            writer.write(data)
            await writer.drain()
    except QUIET:
        pass
    finally:
        writer.close()


async def start_streams(loop, transport, addr):
    if transport == "tcp":
        server = await asyncio.start_server(stream_echo, addr, 0)
    else:
        server = await asyncio.start_unix_server(stream_echo, addr)
    return server.sockets[0].getsockname(), server


# --- protocol: loop.create_server with a Protocol echoing in data_received ------------


class EchoProtocol(asyncio.Protocol):
    transport = None

    def connection_made(self, transport):
        self.transport = transport
        set_nodelay(transport.get_extra_info("socket"))

    def data_received(self, data):
        self.transport.write(data)

    def connection_lost(self, exc):
        self.transport = None


# --- udp: loop.create_datagram_endpoint with a DatagramProtocol echoing each datagram ----


class EchoDatagramProtocol(asyncio.DatagramProtocol):
    transport = None

    def connection_made(self, transport):
        self.transport = transport

    def datagram_received(self, data, addr):
        self.transport.sendto(data, addr)

    def error_received(self, exc):
        print(f"udp: error_received: {exc!r}", file=sys.stderr)

    def connection_lost(self, exc):
        self.transport = None


async def start_udp(loop, transport, addr):
    if transport == "udp":
        dgram, _ = await loop.create_datagram_endpoint(EchoDatagramProtocol, local_addr=(addr, 0))
    else:
        dgram, _ = await loop.create_datagram_endpoint(
            EchoDatagramProtocol, local_addr=addr, family=socket.AF_UNIX
        )
    return dgram.get_extra_info("sockname"), dgram


# --- http: minimal keep-alive HTTP/1.1 server, httptools parser + Protocol -------------


class HttpProtocol(asyncio.Protocol):
    transport = None

    def __init__(self):
        import httptools

        self.parser = httptools.HttpRequestParser(self)
        self.error = httptools.HttpParserError

    def connection_made(self, transport):
        self.transport = transport
        set_nodelay(transport.get_extra_info("socket"))

    def data_received(self, data):
        try:
            self.parser.feed_data(data)
        except self.error as exc:
            print(f"http: bad request: {exc!r}", file=sys.stderr)
            self.transport.close()

    def on_message_complete(self):
        self.transport.write(RESPONSE)
        if not self.parser.should_keep_alive():
            self.transport.close()

    def connection_lost(self, exc):
        self.transport = None


async def start_protocol(loop, transport, addr, factory):
    if transport == "tcp":
        server = await loop.create_server(factory, addr, 0)
    else:
        server = await loop.create_unix_server(factory, addr)
    return server.sockets[0].getsockname(), server


def probe(name):
    """Print the loop's class and version as one JSON line (run.py calls this once per loop)."""
    loop = make_loop(name)
    loop.close()
    if name == "asyncio":
        version = sys.version.split()[0]
    else:
        from importlib.metadata import version as dist_version

        version = dist_version(name)
    loop_type = f"{type(loop).__module__}.{type(loop).__qualname__}"
    print(json.dumps({"type": loop_type, "version": version}))


def main():
    if sys.argv[1] == "--probe":
        return probe(sys.argv[2])
    loop_name, style, transport, addr, core = sys.argv[1:6]
    os.sched_setaffinity(0, {int(core)})
    try:
        loop = make_loop(loop_name)
        asyncio.set_event_loop(loop)
        if style == "sock":
            coro = start_sock(loop, transport, addr)
        elif style == "streams":
            coro = start_streams(loop, transport, addr)
        elif style == "protocol":
            coro = start_protocol(loop, transport, addr, EchoProtocol)
        elif style == "http":
            coro = start_protocol(loop, transport, addr, HttpProtocol)
        elif style == "udp":
            coro = start_udp(loop, transport, addr)
        else:
            raise ValueError(f"unknown style {style!r}")
        sockname, keep = loop.run_until_complete(coro)
    except Exception as exc:
        traceback.print_exc()
        where = traceback.extract_tb(exc.__traceback__)[-1].name
        text = f"{type(exc).__name__} in {where}(): {exc}".splitlines()[0]
        print(f"SETUP-ERROR {text.rstrip(': ')}", flush=True)
        sys.exit(3)
    ready = sockname[1] if transport in ("tcp", "udp") else sockname
    print(f"READY {ready}", flush=True)

    def report(loop, context):
        exc = context.get("exception")
        if isinstance(exc, QUIET):
            return
        loop.default_exception_handler(context)  # to stderr, which run.py reports

    loop.set_exception_handler(report)
    loop.run_forever()
    del keep


if __name__ == "__main__":
    main()
