"""TLS benchmark: an echo Protocol behind `create_server(..., ssl=...)` on ferroloop, asyncio,
uvloop and rloop, measured per server CPU-second; plus the full-handshake rate.

Same method as run.py: every measurement starts a fresh server process pinned to one core
and a separate load generator pinned to another; the server's CPU time is read from
/proc/PID/stat (utime + stime, all threads); loops are interleaved (order rotated) within
each repetition and the tables show medians (ratios: medians of per-repetition ratios).

    python3 bench/net/tls.py --quick    # 2 repetitions, 0.3 s + 0.7 s windows: ~40 s
    python3 bench/net/tls.py            # 5 repetitions, 0.4 s + 1.5 s windows: ~2.5 min
    python3 bench/net/tls.py [--quick] [--loops ferroloop,asyncio,uvloop,rloop]
        [--sizes 1k,64k,256k] [--no-handshake] [--connections N]
        [--duration S] [--warmup S] [--repeat R] [--cert PEM]

Rows:
- `echo <size>`: N connections (default 4) each send S bytes and read exactly S bytes back,
  over and over; every echo is compared byte for byte with what was sent (four rotating
  random messages). One round trip = S bytes each way; MB/s counts S (one direction).
- `handshake`: N connection slots, each in a loop: TCP connect, full TLS handshake (no
  session is resumed), a 1-byte echo, close. One round trip = one connection.

The server is `loop.create_server(EchoProtocol, '127.0.0.1', 0, ssl=ctx)` with CPython's
test certificate `test/certdata/keycert.pem` (RSA 3072; `test/keycert.pem` on older
layouts; `--cert` overrides); the client does not verify it. The load generator is the same
for every server: one thread, an epoll loop over non-blocking sockets with an `ssl.SSLObject`
on memory BIOs per connection (no GIL hand-offs between client threads).

The pieces run on their own too (e.g. to profile one server with `perf record -p PID`):

    python3 bench/net/tls.py --serve LOOP CORE CERT      # prints READY <port>
    python3 bench/net/tls.py --load MODE 127.0.0.1:PORT CONNECTIONS WARMUP DURATION PID CORE

(MODE is a size in bytes or `handshake`; the load generator prints one JSON line.)
"""

import argparse
import asyncio
import datetime
import json
import os
import select
import socket
import ssl
import statistics
import subprocess
import sys
import time
import traceback

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.dirname(HERE)
sys.path.insert(0, HERE)

from load import CLK_TCK, proc_cpu  # noqa: E402
from run import (  # noqa: E402
    LOAD_BOUND,
    fmt,
    launch,
    machine,
    paired_ratio,
    parse_size,
    per_rep,
    run_against,
    size_label,
)
from servers import QUIET, make_loop, set_nodelay  # noqa: E402

LOOPS = ["ferroloop", "asyncio", "uvloop", "rloop"]
STALL_SECONDS = 3.0  # no progress on a connection for this long: the server hangs
WITHIN = 0.90  # "within 10 %": ferroloop's round trips per CPU-s at least 0.9x uvloop's
HANDSHAKE = "handshake"
RECV_SIZE = 256 * 1024
EPOLLIN, EPOLLOUT = select.EPOLLIN, select.EPOLLOUT
IN_ERR = select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP


def find_cert(path=None):
    """CPython's test certificate+key (PEM), located via the `test` package; fail loudly."""
    if path:
        candidates = [path]
    else:
        import test

        base = os.path.dirname(test.__file__)
        # 3.11.7 and 3.12+ keep the files in test/certdata/; older releases in test/.
        candidates = [os.path.join(base, "certdata", "keycert.pem")]
        candidates.append(os.path.join(base, "keycert.pem"))
    for candidate in candidates:
        if os.path.isfile(candidate):
            return candidate
    sys.exit(
        f"tls.py: certificate not found (tried {', '.join(candidates)}); "
        "install CPython's test package or pass --cert PEM (certificate and key)"
    )


# --- server --------------------------------------------------------------------------


class EchoProtocol(asyncio.Protocol):
    """Writes back whatever it receives (behind sslproto: the decrypted data)."""

    transport = None

    def connection_made(self, transport):
        self.transport = transport
        set_nodelay(transport.get_extra_info("socket"))

    def data_received(self, data):
        self.transport.write(data)

    def connection_lost(self, exc):
        self.transport = None


def serve(loop_name, core, cert):
    os.sched_setaffinity(0, {int(core)})
    try:
        loop = make_loop(loop_name)
        asyncio.set_event_loop(loop)
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(cert)
        coro = loop.create_server(EchoProtocol, "127.0.0.1", 0, ssl=ctx)
        server = loop.run_until_complete(coro)
        port = server.sockets[0].getsockname()[1]
    except Exception as exc:
        traceback.print_exc()
        where = traceback.extract_tb(exc.__traceback__)[-1].name
        text = f"{type(exc).__name__} in {where}(): {exc}".splitlines()[0]
        print(f"SETUP-ERROR {text.rstrip(': ')}", flush=True)
        sys.exit(3)
    print(f"READY {port}", flush=True)

    def report(loop, context):
        exc = context.get("exception")
        if isinstance(exc, QUIET):
            return
        loop.default_exception_handler(context)  # to stderr, which the driver reports

    loop.set_exception_handler(report)
    loop.run_forever()
    del server


# --- load generator ------------------------------------------------------------------


class Failure(Exception):
    pass


def client_context():
    ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    return ctx


class Conn:
    """One client connection: a non-blocking socket and an `SSLObject` over memory BIOs."""

    __slots__ = ("slot", "sock", "fd", "tls", "inc", "out", "pending", "want_out", "phase")
    __slots__ += ("k", "buf", "view", "got", "msg")


class Load:
    """A single-threaded epoll loop (like load.py) over N TLS connections.

    Echo mode: each connection sends S bytes and waits for exactly those S bytes back, over
    and over. Handshake mode: each connection slot connects, does a full handshake (nothing
    is resumed: no session is passed), echoes one byte, closes, and starts again.
    """

    def __init__(self, mode, host, port, nconn):
        self.ctx = client_context()
        self.host, self.port = host, port
        self.handshake = mode == HANDSHAKE
        self.size = 1 if self.handshake else mode
        if self.handshake:
            self.msgs = [bytes([65 + i]) for i in range(26)]
        else:
            self.msgs = [os.urandom(self.size) for _ in range(4)]
        self.ep = select.epoll()
        self.by_fd = {}
        self.counts = [0] * nconn
        self.sessions = set()
        for slot in range(nconn):
            self.open(slot)

    def open(self, slot):
        sock = socket.create_connection((self.host, self.port), timeout=STALL_SECONDS)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        sock.setblocking(False)
        c = Conn()
        c.slot, c.sock, c.fd, c.phase, c.k = slot, sock, sock.fileno(), 0, slot
        c.pending, c.want_out = None, False
        c.inc, c.out = ssl.MemoryBIO(), ssl.MemoryBIO()
        c.tls = self.ctx.wrap_bio(c.inc, c.out, server_side=False)
        c.buf = bytearray(self.size)
        c.view = memoryview(c.buf)
        self.by_fd[c.fd] = c
        self.ep.register(c.fd, EPOLLIN)
        self.advance(c)

    def flush(self, c):
        """Send the ciphertext the TLS object produced; what the socket refuses waits."""
        data = c.out.read()
        if data:
            c.pending = memoryview(data if c.pending is None else bytes(c.pending) + data)
        if c.pending is None:
            return
        try:
            n = c.sock.send(c.pending)
        except BlockingIOError:
            n = 0
        if n == len(c.pending):
            c.pending = None
            if c.want_out:
                self.ep.modify(c.fd, EPOLLIN)
                c.want_out = False
        else:
            c.pending = c.pending[n:]
            if not c.want_out:
                self.ep.modify(c.fd, EPOLLIN | EPOLLOUT)
                c.want_out = True

    def start(self, c):
        """Send the next message (the TLS object encrypts all of it at once)."""
        c.k = (c.k + 1) % len(self.msgs)
        c.msg = self.msgs[c.k]
        c.got = 0
        c.tls.write(c.msg)

    def advance(self, c):
        """Progress `c` after new ciphertext came in (or at the start)."""
        if c.phase == 0:  # handshaking
            try:
                c.tls.do_handshake()
            except ssl.SSLWantReadError:
                self.flush(c)
                return
            c.phase = 1
            if len(self.sessions) < 4:
                self.sessions.add(f"{c.tls.version()} {c.tls.cipher()[0]}")
            self.start(c)
        else:
            size = self.size
            while True:
                try:
                    n = c.tls.read(size - c.got, c.view[c.got :])
                except ssl.SSLWantReadError:
                    break
                if n == 0:
                    raise Failure(f"server closed a connection after {self.counts[c.slot]}")
                c.got += n
                if c.got < size:
                    continue
                if c.buf != c.msg:
                    bad = next(j for j in range(size) if c.buf[j] != c.msg[j])
                    raise Failure(
                        f"wrong bytes: echo {self.counts[c.slot] + 1} of a connection differs"
                        f" at offset {bad} of {size} (got {bytes(c.buf[bad : bad + 8])!r},"
                        f" expected {bytes(c.msg[bad : bad + 8])!r})"
                    )
                self.counts[c.slot] += 1
                if self.handshake:  # done with this connection: close it, open the next
                    self.close(c)
                    self.open(c.slot)
                    return
                self.start(c)
                break
        self.flush(c)

    def close(self, c):
        self.ep.unregister(c.fd)
        del self.by_fd[c.fd]
        c.sock.close()

    def run(self, warmup, duration, server_pid, cores):
        t0 = time.perf_counter()
        warm_end, end = t0 + warmup, t0 + warmup + duration
        mark = None  # (time, counts, server cpu, own cpu) at the end of the warm-up
        last_progress = t0
        poll, by_fd, perf_counter = self.ep.poll, self.by_fd, time.perf_counter
        rbuf = bytearray(RECV_SIZE)  # one receive buffer: no 256 KiB allocation per recv
        rview = memoryview(rbuf)
        while True:
            events = poll(0.25)
            now = perf_counter()
            if not events and now - last_progress > STALL_SECONDS:
                raise Failure(f"stalled: no response for {STALL_SECONDS:.0f} s")
            for fd, ev in events:
                c = by_fd.get(fd)
                if c is None:  # closed earlier in this batch (handshake mode)
                    continue
                if ev & EPOLLOUT and c.pending is not None:
                    self.flush(c)
                if ev & IN_ERR:
                    try:
                        n = c.sock.recv_into(rbuf)
                    except BlockingIOError:
                        continue
                    if not n:
                        raise Failure(
                            f"server closed a connection (after {self.counts[c.slot]} round"
                            f" trips on its slot, {'handshaking' if c.phase == 0 else 'echoing'})"
                        )
                    c.inc.write(rview[:n])
                    self.advance(c)
            if events:
                last_progress = now
            if mark is None:
                if now >= warm_end:
                    counts, server_cpu = list(self.counts), proc_cpu(server_pid)
                    mark = (now, counts, server_cpu, time.process_time(), cores_busy(cores))
            elif now >= end:
                server_cpu, own_cpu = proc_cpu(server_pid), time.process_time()
                busy = cores_busy(cores)
                break
        for c in list(by_fd.values()):
            self.close(c)
        self.ep.close()
        per_conn = [b - a for a, b in zip(mark[1], self.counts, strict=True)]
        if min(per_conn) == 0:
            raise Failure(f"a connection made no progress in the window: {per_conn}")
        return {
            "requests": sum(per_conn),
            "wall": now - mark[0],
            "server_cpu": server_cpu - mark[2],
            "load_cpu": own_cpu - mark[3],
            "other_cpu": max(0.0, busy - mark[4] - (server_cpu - mark[2]) - (own_cpu - mark[3])),
            "per_conn_min": min(per_conn),
            "per_conn_max": max(per_conn),
            "tls": ", ".join(sorted(self.sessions)),
        }


def cores_busy(cores):
    """CPU seconds the given cores spent busy so far (user, nice, system, irq, softirq).

    Minus what the server and the load generator used, it is what other processes took on
    "our" cores during the window: a noise indicator on a shared machine.
    """
    busy = 0
    with open("/proc/stat") as f:
        for line in f:
            name, *fields = line.split()
            if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in cores:
                user, nice, system, _idle, _iowait, irq, softirq = map(int, fields[:7])
                busy += user + nice + system + irq + softirq
    return busy / CLK_TCK


def load(mode, addr, nconn, warmup, duration, server_pid, core):
    os.sched_setaffinity(0, {int(core)})
    host, port = addr.rsplit(":", 1)
    cores = os.sched_getaffinity(server_pid) | {int(core)}
    return Load(mode, host, int(port), nconn).run(warmup, duration, server_pid, cores)


# --- driver --------------------------------------------------------------------------


def start_server(loop_name, core, cert, errfile):
    cmd = [sys.executable, os.path.abspath(__file__), "--serve", loop_name, str(core), cert]
    proc, port = launch(cmd, core, errfile)
    return proc, f"127.0.0.1:{port}"


def measure(loop_name, mode, opts):
    """One (loop, row) measurement: a dict with the figures, or status na/err (a server
    that does not do TLS at all fails its load generator's handshake)."""

    def start(errfile):
        return start_server(loop_name, opts.server_core, opts.cert, errfile)

    def load_args(proc, target):
        cmd = [sys.executable, os.path.abspath(__file__), "--load", str(mode), target]
        cmd += [str(opts.connections), str(opts.warmup), str(opts.duration)]
        return cmd + [str(proc.pid), str(opts.load_core)]

    return run_against(start, load_args, opts.warmup + opts.duration + 30)


def probe(loop_name):
    """({type, version}, None) or (None, reason): can the loop be imported at all?"""
    code = (
        "import json, sys; sys.path.insert(0, sys.argv[1]); from servers import make_loop;"
        "loop = make_loop(sys.argv[2]); loop.close();"
        "print(json.dumps(f'{type(loop).__module__}.{type(loop).__qualname__}'))"
    )
    for _attempt in range(2):  # the native module may be rebuilt under us: retry once
        proc = subprocess.run(
            [sys.executable, "-c", code, HERE, loop_name], capture_output=True, text=True
        )
        if proc.returncode == 0:
            break
    if proc.returncode != 0:
        return None, (proc.stderr.strip().splitlines() or ["probe failed"])[-1]
    if loop_name == "asyncio":
        version = sys.version.split()[0]
    else:
        from importlib.metadata import version as dist_version

        version = dist_version(loop_name)
    return {"type": json.loads(proc.stdout.strip().splitlines()[-1]), "version": version}, None


def row_label(mode):
    return HANDSHAKE if mode == HANDSHAKE else f"echo {size_label(mode)}"


def run_all(opts, loops):
    modes = list(opts.sizes) + [HANDSHAKE] * opts.handshake
    runs, count, total = [], 0, opts.repeat * len(modes) * len(loops)
    skip = set()  # loops found n/a: TLS setup raised; no point retrying
    for rep in range(opts.repeat):
        for i, mode in enumerate(modes):
            shift = (rep + i) % len(loops)
            for loop_name in loops[shift:] + loops[:shift]:
                count += 1
                label = row_label(mode)
                if loop_name in skip:
                    res = {"status": "na", "error": "see first run"}
                else:
                    res = measure(loop_name, mode, opts)
                    if res["status"] != "ok" and rebuilt_under_us(res):
                        res = measure(loop_name, mode, opts)  # the native module was rebuilt
                    if res["status"] == "na":
                        skip.add(loop_name)
                res.update(loop=loop_name, row=label, mode=mode, rep=rep)
                runs.append(res)
                log(count, total, label, loop_name, res)
    return [(row_label(m), m) for m in modes], runs


def rebuilt_under_us(res):
    """Did the server fail to import its loop (a native module being rebuilt)? Then retry."""
    text = f"{res.get('error', '')} {res.get('server_stderr', '')}"
    signs = ("ImportError", "ModuleNotFoundError", "undefined symbol", "shared object")
    return any(sign in text for sign in signs)


def log(count, total, label, loop_name, res):
    head = f"[{count}/{total}] {label:<10} {loop_name:<10}"
    if res["status"] == "ok":
        wall, n = res["wall"], res["requests"]
        print(
            f"{head} {n / wall:>8.0f} rt/s {n / res['server_cpu']:>8.0f} rt/CPU-s"
            f"  server {100 * res['server_cpu'] / wall:3.0f}%"
            f"  load {100 * res['load_cpu'] / wall:3.0f}%"
            f"  others {100 * res['other_cpu'] / wall:3.0f}%  {res['tls']}",
            file=sys.stderr,
            flush=True,
        )
    else:
        print(f"{head} {res['status'].upper()}: {res['error']}", file=sys.stderr, flush=True)
    if res.get("server_stderr"):
        print(f"    server stderr: {res['server_stderr'][-600:]}", file=sys.stderr, flush=True)


def summarize(rows, runs, loops):
    summary = {}
    for label, mode in rows:
        cells = {}
        for loop_name in loops:
            mine = [r for r in runs if r["loop"] == loop_name and r["row"] == label]
            bad = [r for r in mine if r["status"] != "ok"]
            if bad:
                first = next((r for r in bad if r["error"] != "see first run"), bad[0])
                cells[loop_name] = {"status": first["status"], "error": first["error"]}
                continue
            size = 0 if mode == HANDSHAKE else mode
            cells[loop_name] = {
                "status": "ok",
                "rps": statistics.median(r["requests"] / r["wall"] for r in mine),
                "mbps": statistics.median(r["requests"] * size / r["wall"] / 1e6 for r in mine),
                "per_cpu": statistics.median(r["requests"] / r["server_cpu"] for r in mine),
                "by_rep": per_rep(mine),
                "server_util": statistics.median(r["server_cpu"] / r["wall"] for r in mine),
                "load_util": max(r["load_cpu"] / r["wall"] for r in mine),
                "other_util": statistics.median(r["other_cpu"] / r["wall"] for r in mine),
                "spread": (
                    min(r["requests"] / r["server_cpu"] for r in mine),
                    max(r["requests"] / r["server_cpu"] for r in mine),
                ),
                "stderr": any(r.get("server_stderr") for r in mine),
                "tls": sorted({r["tls"] for r in mine}),
                "n": len(mine),
            }
        summary[label] = cells
    return summary


def status_text(c):
    return {"na": "n/a", "err": "ERR"}.get(c["status"], "-") if c else "-"


def ratio(cells, a, b):
    return paired_ratio(cells.get(a), cells.get(b))


def tables(rows, summary, loops):
    fl = "ferroloop"
    others = [s for s in loops if s != fl]
    # Long table: one line per (row, loop).
    head = ["row", "loop", "rt/s", "MB/s", "server CPU %", "load CPU %", "others CPU %"]
    head += ["rt/CPU-s"]
    head += ["min-max rt/CPU-s"] + ([f"{fl}/loop (CPU)"] if fl in loops else [])
    detail = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, mode in rows:
        for loop_name in loops:
            c = summary[label].get(loop_name)
            if not (c and c["status"] == "ok"):
                line = [label, loop_name] + [status_text(c)] * (len(head) - 2)
                detail.append("| " + " | ".join(line) + " |")
                continue
            mark = "†" if c["load_util"] >= LOAD_BOUND else ""
            mark += "!" if c["stderr"] else ""
            r = ratio(summary[label], fl, loop_name)
            line = [
                label,
                loop_name,
                fmt(c["rps"]) + mark,
                "-" if mode == HANDSHAKE else f"{c['mbps']:.0f}",
                f"{100 * c['server_util']:.0f}",
                f"{100 * c['load_util']:.0f}",
                f"{100 * c['other_util']:.0f}",
                fmt(c["per_cpu"]),
                f"{fmt(c['spread'][0])}-{fmt(c['spread'][1])}",
            ]
            if fl in loops:
                line.append("n/a" if r is None else f"{r:.2f}")
            detail.append("| " + " | ".join(line) + " |")
    # Summary: round trips per server CPU-second and ferroloop's ratios.
    head = ["row"] + [f"{s} rt/CPU-s" for s in loops]
    if fl in loops:
        head += [f"{fl}/{s}" for s in others]
        if "uvloop" in loops:
            head.append(f"within 10% of uvloop (>= {WITHIN:.2f})")
    brief = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, _ in rows:
        cells = summary[label]
        line = [label]
        for s in loops:
            c = cells.get(s)
            line.append(fmt(c["per_cpu"]) if c and c["status"] == "ok" else status_text(c))
        if fl in loops:
            rs = {s: ratio(cells, fl, s) for s in others}
            line += ["n/a" if rs[s] is None else f"{rs[s]:.2f}" for s in others]
            if "uvloop" in loops:
                r = rs["uvloop"]
                line.append("n/a" if r is None else ("yes" if r >= WITHIN else "no"))
        brief.append("| " + " | ".join(line) + " |")
    return "\n".join(brief), "\n".join(detail)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--serve":
        return serve(*sys.argv[2:5])
    if len(sys.argv) > 1 and sys.argv[1] == "--load":
        mode, addr, nconn, warmup, duration, pid, core = sys.argv[2:9]
        mode = mode if mode == HANDSHAKE else int(mode)
        try:
            result = load(mode, addr, int(nconn), float(warmup), float(duration), int(pid), core)
        except (Failure, OSError, ssl.SSLError) as exc:
            result = {"error": f"{type(exc).__name__}: {exc}"}
        print(json.dumps(result), flush=True)
        return None

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="2 repetitions, short windows (~40 s)")
    ap.add_argument("--loops", default=",".join(LOOPS))
    ap.add_argument("--sizes", default="1k,64k,256k", help="echo message sizes (bytes or Nk)")
    ap.add_argument("--no-handshake", dest="handshake", action="store_false")
    ap.add_argument("--connections", type=int, default=4)
    ap.add_argument("--duration", type=float, help="measured seconds per run (default 1.5)")
    ap.add_argument("--warmup", type=float, help="warm-up seconds per run (default 0.4)")
    ap.add_argument("--repeat", type=int, help="repetitions, median reported (default 5)")
    ap.add_argument("--cert", help="PEM with certificate and key (default: CPython's test cert)")
    ap.add_argument("--server-core", type=int, default=0)
    ap.add_argument("--load-core", type=int, default=1)
    opts = ap.parse_args()
    loops = [x.strip() for x in opts.loops.split(",") if x.strip()]
    bad = [x for x in loops if x not in LOOPS]
    if bad:
        sys.exit(f"unknown loop: {', '.join(bad)} (choose from {', '.join(LOOPS)})")
    opts.sizes = [parse_size(x) for x in opts.sizes.split(",") if x.strip()]
    opts.duration = opts.duration or (0.7 if opts.quick else 1.5)
    opts.warmup = opts.warmup if opts.warmup is not None else (0.3 if opts.quick else 0.4)
    opts.repeat = opts.repeat or (2 if opts.quick else 5)
    opts.cert = find_cert(opts.cert)
    if opts.server_core == opts.load_core or max(opts.server_core, opts.load_core) >= (
        os.cpu_count() or 1
    ):
        print("warning: server and load generator do not get separate cores", file=sys.stderr)
    os.sched_setaffinity(0, {opts.load_core})  # the driver mostly sleeps; keep it off core 0

    t_start = time.monotonic()
    versions, available = {}, []
    for loop_name in loops:
        info, err = probe(loop_name)
        if info is None:
            print(f"{loop_name}: not available: {err}", file=sys.stderr)
            versions[loop_name] = {"error": err}
        else:
            versions[loop_name] = info
            available.append(loop_name)
    rows, runs = run_all(opts, available)
    summary = summarize(rows, runs, available)
    brief, detail = tables(rows, summary, available)
    elapsed = time.monotonic() - t_start

    tls = sorted(
        {t for cells in summary.values() for c in cells.values() for t in c.get("tls", [])}
    )
    print(
        f"\n## TLS benchmark ({opts.connections} connections, {opts.duration:g} s measured after"
        f" {opts.warmup:g} s warm-up, median of {opts.repeat}; {elapsed:.0f} s total)\n"
    )
    print(f"{ssl.OPENSSL_VERSION}; negotiated: {'; '.join(tls) or '-'};")
    print(f"certificate: {opts.cert}\n")
    print(brief)
    print(
        "\nrt/CPU-s = round trips (handshake: connections) per server CPU-second; ratios ="
        " ferroloop's rt/CPU-s over the other loop's (above 1: ferroloop cheaper).\n"
    )
    print(detail)
    print(
        "\nrt/s = round trips per wall second (echo: S bytes each way; handshake: connect +"
        " full handshake + 1-byte echo + close); MB/s = S x rt/s (one direction);"
        "\nCPU % = CPU time / wall: server median, load generator max, others = median of what"
        " other processes used on\nthe two cores (a shared machine's noise; up to 200);"
        " min-max = range of rt/CPU-s over the repetitions."
        f"\n† load generator at >= {100 * LOAD_BOUND:.0f}% of its core (it may be the limit);"
        " ! the server wrote to stderr (see JSON)."
    )
    problems = {}
    for r in runs:
        if (r["status"] != "ok" and r["error"] != "see first run") or r.get("server_stderr"):
            k = f"{r['loop']} / {r['row']}"
            problems.setdefault(k, r.get("error") or r["server_stderr"].splitlines()[-1])
    if problems:
        print("\nNot available / errors:\n")
        for k, v in problems.items():
            print(f"- {k}: {v}")

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    outdir = os.path.join(BENCH, "results")
    os.makedirs(outdir, exist_ok=True)
    path = os.path.join(outdir, f"tls-{stamp}.json")
    with open(path, "w") as f:
        json.dump(
            {
                "config": vars(opts),
                "machine": machine(),
                "openssl": ssl.OPENSSL_VERSION,
                "versions": versions,
                "elapsed_s": elapsed,
                "summary": summary,
                "runs": runs,
                "table": brief,
                "detail_table": detail,
            },
            f,
            indent=1,
        )
    print(f"\nraw results: {os.path.relpath(path)}", file=sys.stderr)
    return None


if __name__ == "__main__":
    main()
