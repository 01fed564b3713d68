"""Memory per idle connection: server RSS growth per accepted, idle TCP connection.

    python3 bench/net/idle_memory.py [--connections N] [--repeat R]
        [--loops ferroloop,asyncio,uvloop,rloop] [--tls SIZE]

For each loop, a fresh server process (a `create_server` with a minimal echo `Protocol`) accepts
500 warm-up connections, then N more from a client process; the figure is
(RSS after - RSS before) / N, measured after a `gc.collect()` once all N protocols saw
`connection_made`. The client holds its sockets open without sending, so every connection is
idle. Kernel socket memory is not in the RSS; everything the loop, the transport, the protocol
and the socket objects cost is. How the allocator's pools happen to fill moves one process's
figure by up to ~15 %, so each loop is measured R times (fresh processes, interleaved) and the
median is reported with the range.

With `--tls SIZE` the server is `create_server(..., ssl=...)` (CPython's test certificate) and
each client connection does the TLS handshake and one echo of SIZE bytes before going idle
(counted once the server has echoed all SIZE bytes): what a TLS connection keeps after traffic,
not only after its handshake. Use fewer connections (a full handshake each): `--connections
1000`.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import os
import resource
import socket
import ssl
import statistics
import subprocess
import sys
import time

WARMUP = 500


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def _connect(port: int, tls_size: int) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port))
    if tls_size < 0:
        return sock
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    tls = ctx.wrap_socket(sock)
    if tls_size:
        tls.sendall(b"x" * tls_size)
        got = 0
        while got < tls_size:
            got += len(tls.recv(tls_size - got))
    return tls


def serve(loop_name: str, n: int, tls_size: int = -1) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard < n + WARMUP + 100:
        raise SystemExit(f"RLIMIT_NOFILE hard limit {hard} is too low for {n} connections")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    made = 0

    class Echo(asyncio.Protocol):
        def connection_made(self, transport):
            nonlocal made
            made += 1
            self.transport = transport

        def data_received(self, data):
            self.transport.write(data)

    class TlsEcho(asyncio.Protocol):
        """Counted once it has echoed `tls_size` bytes (the plain Echo keeps one attribute
        only, so that the plain figure stays comparable with earlier runs)."""

        def connection_made(self, transport):
            nonlocal made
            self.transport = transport
            self.echoed = 0
            if tls_size == 0:
                made += 1

        def data_received(self, data):
            nonlocal made
            self.transport.write(data)
            self.echoed += len(data)
            if self.echoed == tls_size:
                made += 1

    async def wait_for(count):
        while made < count:
            await asyncio.sleep(0.01)

    async def main():
        loop = asyncio.get_running_loop()
        ctx = None
        if tls_size >= 0:
            ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            from tls import find_cert  # bench/net/tls.py: CPython's test certificate

            ctx.load_cert_chain(find_cert())
        protocol = Echo if ctx is None else TlsEcho
        server = await loop.create_server(protocol, "127.0.0.1", 0, backlog=4096, ssl=ctx)
        port = server.sockets[0].getsockname()[1]
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the client: connect, then hold the sockets open
            socks = [_connect(port, tls_size) for _ in range(WARMUP)]
            os.read(go_r, 1)
            socks += [_connect(port, tls_size) for _ in range(n)]
            time.sleep(120)
            os._exit(0)
        try:
            await wait_for(WARMUP)
            await asyncio.sleep(0.3)
            gc.collect()
            before = rss()
            os.write(go_w, b"x")
            await wait_for(WARMUP + n)
            await asyncio.sleep(0.5)
            gc.collect()
            print((rss() - before) / n)
        finally:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
            server.close()

    module = importlib.import_module(loop_name)
    loop = module.new_event_loop()
    try:
        loop.run_until_complete(main())
    finally:
        loop.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--connections", type=int, default=8000)
    parser.add_argument("--loops", default="ferroloop,asyncio,uvloop,rloop")
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--tls", type=int, default=-1, metavar="SIZE")
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.serve:
        serve(opts.serve, opts.connections, opts.tls)
        return
    what = "" if opts.tls < 0 else f", TLS, after one {opts.tls}-byte echo each"
    print(f"## Memory per idle connection ({opts.connections} connections{what}, server RSS)\n")
    names = opts.loops.split(",")
    figures: dict[str, list[float]] = {name: [] for name in names}
    errors: dict[str, str] = {}
    for _ in range(opts.repeat):
        for name in names:
            if name in errors:
                continue
            cmd = [
                sys.executable,
                __file__,
                "--serve",
                name,
                "--connections",
                str(opts.connections),
                "--tls",
                str(opts.tls),
            ]
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
            if out.returncode != 0:
                errors[name] = (
                    out.stderr.strip().splitlines()[-1] if out.stderr else str(out.returncode)
                )
            else:
                figures[name].append(float(out.stdout.split()[-1]))
    print(f"| loop | bytes per idle connection (median of {opts.repeat}) | range |")
    print("|---|---|---|")
    for name in names:
        if name in errors:
            print(f"| {name} | n/a ({errors[name]}) | |")
            continue
        values = sorted(figures[name])
        median = statistics.median(values)
        print(f"| {name} | {median:.0f} | {values[0]:.0f}–{values[-1]:.0f} |")


if __name__ == "__main__":
    main()
