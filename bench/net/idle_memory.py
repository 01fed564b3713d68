"""Memory per idle connection: server RSS growth per accepted, idle TCP connection.

    python3 bench/net/idle_memory.py [--connections N] [--repeat R]
        [--loops ferroloop,asyncio,uvloop,rloop]

For each loop, a fresh server process (a `create_server` with a minimal echo `Protocol`) accepts
500 warm-up connections, then N more from a client process; the figure is
(RSS after - RSS before) / N, measured after a `gc.collect()` once all N protocols saw
`connection_made`. The client holds its sockets open without sending, so every connection is
idle. Kernel socket memory is not in the RSS; everything the loop, the transport, the protocol
and the socket objects cost is. How the allocator's pools happen to fill moves one process's
figure by up to ~15 %, so each loop is measured R times (fresh processes, interleaved) and the
median is reported with the range.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import importlib
import os
import resource
import socket
import statistics
import subprocess
import sys
import time

WARMUP = 500


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def serve(loop_name: str, n: int) -> None:
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

    async def wait_for(count):
        while made < count:
            await asyncio.sleep(0.01)

    async def main():
        loop = asyncio.get_running_loop()
        server = await loop.create_server(Echo, "127.0.0.1", 0, backlog=4096)
        port = server.sockets[0].getsockname()[1]
        go_r, go_w = os.pipe()
        pid = os.fork()
        if pid == 0:  # the client: connect, then hold the sockets open
            socks = [socket.create_connection(("127.0.0.1", port)) for _ in range(WARMUP)]
            os.read(go_r, 1)
            socks += [socket.create_connection(("127.0.0.1", port)) for _ in range(n)]
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
    parser.add_argument("--serve", help=argparse.SUPPRESS)
    opts = parser.parse_args()
    if opts.serve:
        serve(opts.serve, opts.connections)
        return
    print(f"## Memory per idle connection ({opts.connections} connections, server RSS)\n")
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
