"""The TLS data pump alone: asyncio's `sslproto.SSLProtocol` against ferroloop's, in one process.

A server-side protocol with an echo app gets a client's TLS records through `get_buffer` /
`buffer_updated` (in pieces of CHUNK bytes) from a fake transport that keeps what the server
writes; the client decrypts the echo and checks it. No sockets and no scheduling, so the figure
is the pump's own cost, and under callgrind it is deterministic (tls.py's per-CPU figures move
by ±20 % on a shared machine):

    python3 bench/net/tls_pump.py SIZE CHUNK N {asyncio,ferroloop,floor}
    python3 bench/net/tls_pump.py --count SIZE CHUNK
        # instructions per message (client included) for each, by callgrind:
        # (I(3N) - I(N)) / 2N with N = 100

`floor` is no protocol at all: the server's `SSLObject` decrypts what arrives and encrypts it
back in a plain loop over asyncio's `MemoryBIO`s, so `asyncio - floor` is what asyncio's protocol
machinery costs per message. ferroloop's protocol runs on its own BIOs (no zero-filling, no copy
into or out of a BIO object), so it can come out below the floor.

Without --count it prints the server's CPU microseconds per message (noisy).
"""

import asyncio
import os
import re
import ssl
import subprocess
import sys
import time
from asyncio import sslproto

HERE = os.path.abspath(__file__)
PYTHON = os.path.realpath(sys.executable)


def contexts():
    import test

    cert = os.path.join(os.path.dirname(test.__file__), "certdata", "keycert.pem")
    server = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server.load_cert_chain(cert)
    client = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client.check_hostname = False
    client.verify_mode = ssl.CERT_NONE
    return server, client


class Collect(asyncio.Transport):
    """The server's transport: keeps what it is given."""

    def __init__(self):
        super().__init__()
        self.out = []

    def write(self, data):
        self.out.append(bytes(data))

    def get_extra_info(self, name, default=None):
        return default

    def is_closing(self):
        return False

    def pause_reading(self):
        pass

    def resume_reading(self):
        pass


class Floor:
    """The least a server can do per chunk: decrypt it and encrypt it back, no protocol."""

    def __init__(self, loop, app, context, waiter, server_side):
        self.incoming, self.outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
        self.sslobj = context.wrap_bio(self.incoming, self.outgoing, server_side=True)
        self.buffer = bytearray(256 * 1024)
        self.handshaken = False

    def connection_made(self, transport):
        self.transport = transport

    def get_buffer(self, n):
        return memoryview(self.buffer)

    def buffer_updated(self, n):
        self.incoming.write(memoryview(self.buffer)[:n])
        try:
            if not self.handshaken:
                self.sslobj.do_handshake()
                self.handshaken = True
            data = []
            try:
                while True:
                    data.append(self.sslobj.read(16 * 1024))
            except ssl.SSLWantReadError:
                pass
            if data:
                self.sslobj.write(b"".join(data))
        except ssl.SSLWantReadError:
            pass
        out = self.outgoing.read()
        if out:
            self.transport.write(out)


class Echo(asyncio.Protocol):
    def connection_made(self, transport):
        self.transport = transport

    def data_received(self, data):
        self.transport.write(data)


def run(protocol_class, size, chunk, n):
    """Microseconds of server CPU per echoed message."""
    import ferroloop

    server_ctx, client_ctx = contexts()
    loop = ferroloop.new_event_loop()
    asyncio.set_event_loop(loop)
    proto = protocol_class(loop, Echo(), server_ctx, loop.create_future(), server_side=True)
    transport = Collect()
    proto.connection_made(transport)
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = client_ctx.wrap_bio(incoming, outgoing, server_side=False)

    def feed(data):
        for i in range(0, len(data), chunk):
            part = data[i : i + chunk]
            buf = proto.get_buffer(len(part))
            buf[: len(part)] = part
            proto.buffer_updated(len(part))

    def back():
        for data in transport.out:
            incoming.write(data)
        transport.out.clear()

    for _ in range(10):
        try:
            client.do_handshake()
            break
        except ssl.SSLWantReadError:
            pass
        feed(outgoing.read())
        back()
        loop.run_until_complete(asyncio.sleep(0))
    message = os.urandom(size)
    server_cpu = 0.0
    for _ in range(n):
        client.write(message)
        records = outgoing.read()
        t0 = time.process_time()
        feed(records)
        server_cpu += time.process_time() - t0
        back()
        echoed = b""
        while len(echoed) < size:
            echoed += client.read(size)
        assert echoed == message
    loop.close()
    return server_cpu / n * 1e6


def count(size, chunk):
    """Instructions per message for each class, counted by callgrind."""
    for name in ("asyncio", "ferroloop", "floor"):
        total = {}
        for n in (100, 300):
            out = f"/tmp/tls_pump.{name}.{n}.cg"
            subprocess.run(
                ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", PYTHON, HERE]
                + [str(size), str(chunk), str(n), name],
                check=True,
                capture_output=True,
            )
            with open(out) as f:
                total[n] = int(re.search(r"^summary: (\d+)", f.read(), re.M).group(1))
        print(f"{name}: {(total[300] - total[100]) // 200} instructions per message")


def main(argv):
    if argv[:1] == ["--count"]:
        count(int(argv[1]), int(argv[2]))
        return
    size, chunk, n, name = int(argv[0]), int(argv[1]), int(argv[2]), argv[3]
    if name == "ferroloop":
        from ferroloop._tls import SSLProtocol as cls
    elif name == "floor":
        cls = Floor
    else:
        cls = sslproto.SSLProtocol
    print(f"{name}: {run(cls, size, chunk, n):.1f} us of server CPU per message")


if __name__ == "__main__":
    main(sys.argv[1:])
