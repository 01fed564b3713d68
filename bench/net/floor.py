"""The benchmark's own Python, alone: CPU per request of the `protocol` and `http` servers'
protocol code with no loop, no transport and no socket.

Every loop that runs these servers runs this code once per request, on top of the system calls
that rust-echo makes too. So `1 / (rust-echo's CPU per request + this)` bounds from above the
req/CPU-s that any event loop can reach on those rows, however fast its own part.

    python3 bench/net/floor.py [--n 300000] [--repeat 5] [--core 0] [--sizes 1k,10k,100k]

The protocols are servers.py's `EchoProtocol` and `HttpProtocol` (httptools), fed what the
load generator sends (one message per `data_received`, as the servers receive them at 10
connections), writing to a stand-in transport whose `write` is the C builtin `len` (the
loop's transport work is left out, so the figure is a floor). Reports the median over
`--repeat` runs of process CPU time per request, in ns.
"""

import argparse
import os
import statistics
import sys
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


def make(kind):
    proto = servers.HttpProtocol() if kind == "http" else servers.EchoProtocol()
    proto.transport = stand_in_transport()  # connection_made would set TCP_NODELAY on it
    return proto


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--n", type=int, default=300_000, help="requests per run")
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--core", type=int, default=0, help="the core the servers run on")
    ap.add_argument("--sizes", default="1k,10k,100k", help="echo message sizes")
    opts = ap.parse_args()
    os.sched_setaffinity(0, {opts.core})
    rows = [("http", HTTP_REQUEST)]
    for text in opts.sizes.split(","):
        size = int(float(text[:-1]) * 1024) if text.endswith("k") else int(text)
        rows.append((f"protocol {text}", os.urandom(size)))
    print("| row | benchmark Python per request (ns) |\n|---|---|")
    for label, data in rows:
        kind = "http" if label == "http" else "protocol"
        proto = make(kind)
        per_request_ns(proto, data, opts.n // 10)  # warm-up
        runs = [per_request_ns(proto, data, opts.n) for _ in range(opts.repeat)]
        print(f"| {label} | {statistics.median(runs):.0f} |")


if __name__ == "__main__":
    main()
