"""The benchmark's own Python, alone: CPU per request of the `protocol`, `http` and `streams`
servers' code with no event loop, no transport and no socket.

Every loop that runs these servers runs this code once per request, on top of the system calls
that rust-echo makes too. So `1 / (rust-echo's CPU per request + this)` bounds from above the
req/CPU-s that any event loop can reach on those rows, however fast its own part.

    python3 bench/net/floor.py [--n 300000] [--repeat 7] [--core 0] [--sizes 1k,10k,100k]
    python3 bench/net/floor.py --count [--n 2000]   # instructions, by callgrind: ~2 min

The protocols are servers.py's `EchoProtocol` and `HttpProtocol` (httptools), fed what the
load generator sends (one message per `data_received`, as the servers receive them at 10
connections), writing to a stand-in transport whose `write` is the C builtin `len` (the
loop's transport work is left out, so the figure is a floor).

`streams` is servers.py's `stream_echo` on asyncio's own `StreamReaderProtocol`,
`StreamReader` and `StreamWriter`, run by CPython's C `Task` and `Future` on a stand-in loop:
`call_soon` appends to a deque, and the driver runs what is queued, each callback in its
context, after every message (one task wake-up per message). That stand-in is itself loop
work, so its cost per callback (`call_soon` plus the dispatch, measured alone on a no-op
callback) is subtracted.

Reports the least process CPU time per request over `--repeat` runs, in ns (this machine's
neighbours only ever add time; the stand-in's cost subtracted is its least too). These times
move by a third from run to run on this machine; `--count` gives the deterministic companion,
userland instructions per request under callgrind (the difference between n and 2n requests
over n), comparable with instructions.py's per-message figures for each loop.
"""

import argparse
import asyncio
import collections
import contextvars
import functools
import os
import re
import subprocess
import sys
import tempfile
import time
import types

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

import servers  # noqa: E402
from load import HTTP_REQUEST  # noqa: E402


def stand_in_transport():
    return types.SimpleNamespace(write=len, close=lambda: None)


def per_request_ns(protocol, data, n):
    """CPU ns per `protocol.data_received(data)`, over n calls."""
    feed = protocol.data_received
    t0 = time.process_time_ns()
    for _ in range(n):
        feed(data)
    return (time.process_time_ns() - t0) / n


class StandInLoop:
    """What asyncio's streams, C Task and C Future call on their loop, and nothing else.

    `create_future` and `get_debug` are C callables, so the floor carries no Python frame of
    the stand-in's own beyond `call_soon`, whose cost is measured and subtracted.
    """

    get_debug = bool  # bool() is False

    def __init__(self):
        self.ready = collections.deque()
        self.create_future = functools.partial(asyncio.Future, loop=self)

    def call_soon(self, callback, *args, context=None):
        self.ready.append((callback, args, context))

    def create_task(self, coro):
        return asyncio.Task(coro, loop=self)

    def is_closed(self):
        return False

    def run_ready(self):
        ready = self.ready
        while ready:
            callback, args, context = ready.popleft()
            context.run(callback, *args)


class StandInTransport:
    write = len

    def get_extra_info(self, name, default=None):
        return default

    def is_closing(self):
        return False

    def close(self):
        pass


def dispatch_ns(n):
    """CPU ns of one stand-in `call_soon` plus its dispatch, on a no-op callback."""
    loop, ctx, noop = StandInLoop(), contextvars.copy_context(), int
    call_soon, run_ready = loop.call_soon, loop.run_ready
    t0 = time.process_time_ns()
    for _ in range(n):
        call_soon(noop, context=ctx)
        run_ready()
    return (time.process_time_ns() - t0) / n


def streams_ns(data, n):
    """CPU ns per message of `stream_echo` on asyncio's streams, stand-in loop cost included."""
    loop = StandInLoop()
    reader = asyncio.StreamReader(limit=2**16, loop=loop)
    protocol = asyncio.StreamReaderProtocol(reader, servers.stream_echo, loop=loop)
    protocol.connection_made(StandInTransport())
    loop.run_ready()  # the echo task starts and waits in reader.read
    feed, run_ready = protocol.data_received, loop.run_ready
    t0 = time.process_time_ns()
    for _ in range(n):
        feed(data)
        run_ready()
    elapsed = time.process_time_ns() - t0
    protocol.eof_received()  # the echo task reads b"" and closes its writer
    loop.run_ready()
    protocol.connection_lost(None)
    return elapsed / n


def make(kind):
    proto = servers.HttpProtocol() if kind == "http" else servers.EchoProtocol()
    proto.transport = stand_in_transport()  # connection_made would set TCP_NODELAY on it
    return proto


def parse_size(text):
    return int(float(text[:-1]) * 1024) if text.endswith("k") else int(text)


def row_runner(label):
    """`label` ("http", "protocol 1k", "streams 10k", "dispatch") as a function n -> ns."""
    if label == "dispatch":
        return dispatch_ns
    if label == "http":
        proto = make("http")
        return lambda n: per_request_ns(proto, HTTP_REQUEST, n)
    style, size = label.split()
    data = os.urandom(parse_size(size))
    if style == "streams":
        return lambda n: streams_ns(data, n)
    proto = make("protocol")
    return lambda n: per_request_ns(proto, data, n)


def instructions(label, n):
    """Instructions per request of `label`: callgrind over n and 2n requests, differenced."""
    total = {}
    for runs in (n, 2 * n):
        with tempfile.TemporaryDirectory() as tmp:
            out = os.path.join(tmp, "cg.out")
            cmd = ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}"]
            cmd += [sys.executable, os.path.abspath(__file__), "--run", label, str(runs)]
            subprocess.run(cmd, check=True, capture_output=True)
            with open(out) as f:
                total[runs] = int(re.search(r"^summary: (\d+)", f.read(), re.M).group(1))
    return (total[2 * n] - total[n]) / n


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, help="requests per run (default 300000; --count 2000)")
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--core", type=int, default=0, help="the core the servers run on")
    ap.add_argument("--sizes", default="1k,10k,100k", help="echo message sizes")
    ap.add_argument("--count", action="store_true", help="instructions by callgrind, not time")
    ap.add_argument("--run", nargs=2, metavar=("ROW", "N"), help=argparse.SUPPRESS)
    opts = ap.parse_args()
    if opts.run:  # one row under callgrind, for --count
        row_runner(opts.run[0])(int(opts.run[1]))
        return
    os.sched_setaffinity(0, {opts.core})
    sizes = opts.sizes.split(",")
    labels = ["http"] + [f"protocol {x}" for x in sizes] + [f"streams {x}" for x in sizes]
    if opts.count:
        n = opts.n or 2000
        dispatch = instructions("dispatch", n)
        unit = "instructions"
    else:
        n = opts.n or 300_000
        dispatch = min(dispatch_ns(n) for _ in range(opts.repeat))
        unit = "ns"
    print(f"| row | benchmark Python per request ({unit}) |\n|---|---|")
    for label in labels:
        if opts.count:
            cost = instructions(label, n)
        else:
            run = row_runner(label)
            run(n // 10)  # warm-up
            cost = min(run(n) for _ in range(opts.repeat))
        if label.startswith("streams"):
            cost -= dispatch
        print(f"| {label} | {cost:.0f} |")
    print(f"\n(streams: the stand-in loop's {dispatch:.0f} {unit} per callback subtracted)")


if __name__ == "__main__":
    main()
