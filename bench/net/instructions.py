"""Server instructions per message, counted by callgrind: a deterministic companion to run.py.

For each (loop, style, transport, size) the server of run.py (servers.py) runs twice under
``valgrind --tool=callgrind``, and a client in this process (not under valgrind) does N1,
then N2 = 2 * N1 request/response round trips over one connection. The figure is
(I2 - I1) / (N2 - N1): the server's userland instructions per message, with start-up,
imports and the connection's set-up and teardown cancelled out. One connection keeps the
count deterministic (one poll per message on every loop); the kernel's share (recv, send,
epoll), the same syscalls on every loop, is not counted.

    python3 bench/net/instructions.py [--loops ferroloop,asyncio,uvloop,rloop]
        [--styles sock,streams,protocol,http] [--transports unix,tcp] [--sizes 1k,10k]
        [--n N1] [--jobs J]
"""

import argparse
import concurrent.futures
import datetime
import importlib.util
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)


def _load(name, path):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


# bench/instructions.py (same file name as this one, so loaded by path): the valgrind
# invocation details and the table's formatting are shared with the scheduler counts.
_counts = _load("bench_instructions", os.path.join(os.path.dirname(HERE), "instructions.py"))
COLLECTED, PYTHON, REFS = _counts.COLLECTED, _counts.PYTHON, _counts.REFS
fmt_ir, ratio = _counts.fmt_ir, _counts.ratio

from load import HTTP_REQUEST  # noqa: E402
from servers import RESPONSE  # noqa: E402

SERVERS = os.path.join(HERE, "servers.py")
READY_TIMEOUT = 120  # valgrind start-up plus imports, on a loaded machine
ROUND_TRIP_TIMEOUT = 60


def client(transport, where, mode, n):
    """n round trips over one connection: send a message (or the HTTP request), read the
    whole echo (or response) back and check it."""
    if transport == "tcp":
        sock = socket.create_connection(("127.0.0.1", int(where)))
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    else:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.connect(where)
    sock.settimeout(ROUND_TRIP_TIMEOUT)
    request = HTTP_REQUEST if mode == "http" else os.urandom(mode)
    expected = RESPONSE if mode == "http" else request
    with sock:
        for _ in range(n):
            sock.sendall(request)
            got = bytearray()
            while len(got) < len(expected):
                chunk = sock.recv(len(expected) - len(got))
                if not chunk:
                    raise RuntimeError(f"server closed after {len(got)} bytes")
                got += chunk
            if got != expected:
                raise RuntimeError("wrong bytes echoed")


def count(loop, style, transport, mode, n, tmpdir):
    """Instructions of one server run that serves n round trips; (count, None) or (None, err)."""
    path = os.path.join(tmpdir, f"{loop}-{style}-{mode}-{n}")  # runs go in parallel
    addr = "127.0.0.1" if transport == "tcp" else path
    cmd = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null", PYTHON]
    cmd += [SERVERS, loop, style, transport, addr, "0"]
    env = dict(os.environ, PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1")
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        deadline = time.monotonic() + READY_TIMEOUT
        line = ""
        while not line.startswith(("READY", "SETUP-ERROR")) and time.monotonic() < deadline:
            line = proc.stdout.readline()
            if not line and proc.poll() is not None:
                break
        if not line.startswith("READY"):
            return None, line.strip() or "server did not start"
        client(transport, line.split()[1], mode, n)
    except (OSError, RuntimeError) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    finally:
        proc.send_signal(signal.SIGTERM)  # valgrind reports the count as the guest dies
        _, stderr = proc.communicate(timeout=READY_TIMEOUT)
    match = COLLECTED.search(stderr) or REFS.search(stderr)
    if not match:
        return None, "no instruction count in valgrind's output"
    return int(match.group(1).replace(",", "")), None


def _size(text):
    return int(text[:-1]) * 1024 if text.endswith("k") else int(text)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--loops", default="ferroloop,asyncio,uvloop,rloop")
    p.add_argument("--styles", default="sock,streams,protocol,http")
    p.add_argument("--transports", default="unix")
    p.add_argument("--sizes", default="1k,10k", help="echo sizes (bytes or Nk); http has none")
    p.add_argument("--n", type=int, default=2000, help="N1 round trips (N2 = 2 * N1)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel valgrinds")
    return p.parse_args(argv)


def main(argv=None):
    args = parse_args(argv)
    loops = args.loops.split(",")
    rows = []
    for style in args.styles.split(","):
        for transport in args.transports.split(","):
            sizes = args.sizes.split(",")
            modes = ["http"] if style == "http" else [_size(s) for s in sizes]
            rows += [(style, transport, mode) for mode in modes]
    n1, n2 = args.n, 2 * args.n
    t0 = time.perf_counter()
    with (
        tempfile.TemporaryDirectory() as tmpdir,
        concurrent.futures.ThreadPoolExecutor(args.jobs) as pool,
    ):
        futures = {
            (loop, row, n): pool.submit(count, loop, *row, n, tmpdir)
            for row in rows
            for loop in loops
            for n in (n1, n2)
        }
        results = {key: future.result() for key, future in futures.items()}
    per_msg, errors = {}, {}
    for row in rows:
        for loop in loops:
            (i1, e1), (i2, e2) = results[(loop, row, n1)], results[(loop, row, n2)]
            if e1 or e2:
                errors[(loop, row)] = e1 or e2
            else:
                per_msg[(loop, row)] = (i2 - i1) / (n2 - n1)

    def name(row):
        style, transport, mode = row
        return f"{style} {transport}" + ("" if mode == "http" else f" {mode // 1024}k")

    head = ["row"] + loops + (["uvloop/ferro", "rloop/ferro"] if "ferroloop" in loops else [])
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        cells = [name(row)] + [
            fmt_ir(per_msg.get((loop, row))) if (loop, row) not in errors else "n/a"
            for loop in loops
        ]
        if "ferroloop" in loops:
            ferro = per_msg.get(("ferroloop", row))
            cells += [ratio(per_msg.get((other, row)), ferro) for other in ("uvloop", "rloop")]
        lines.append("| " + " | ".join(cells) + " |")
    print("\n".join(lines))
    print(
        f"\nServer userland instructions per round trip (callgrind, one connection, "
        f"N {n1:,} → {n2:,}); lower is better. Ratio columns: other/ferroloop, so above "
        f"1.00x ferroloop executes fewer instructions. {time.perf_counter() - t0:.0f} s."
    )
    for (loop, row), err in errors.items():
        print(f"- {loop} / {name(row)}: {err}")
    os.makedirs(os.path.join(os.path.dirname(HERE), "results"), exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    path = os.path.join(os.path.dirname(HERE), "results", f"net-instructions-{stamp}.json")
    with open(path, "w") as f:
        json.dump(
            {
                "config": vars(args),
                "per_message": {f"{loop} | {name(row)}": v for (loop, row), v in per_msg.items()},
                "errors": {f"{loop} | {name(row)}": e for (loop, row), e in errors.items()},
            },
            f,
            indent=1,
        )
    print(f"raw results: {os.path.relpath(path)}")


if __name__ == "__main__":
    main()
