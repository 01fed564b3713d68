"""Load generator of the network benchmark: N connections doing request/response round trips.

Usage: python3 bench/net/load.py TRANSPORT ADDR MODE CONNECTIONS WARMUP DURATION SERVER_PID CORE

MODE is a message size in bytes (echo: send S bytes, wait until the same S bytes came back)
or `http` (send a keep-alive GET, wait for the complete fixed response; no pipelining).
A single-threaded epoll loop over non-blocking sockets, pinned to CORE: it connects all
connections, runs WARMUP seconds, then measures DURATION seconds: round trips completed,
wall time, the server's CPU time (utime+stime of /proc/SERVER_PID/stat, all threads) and
its own CPU time. Every response is compared byte for byte with what was expected (four
rotating random messages per connection, so a stale or misrouted echo fails). Prints one
JSON line; on a wrong byte, a closed connection or a stall it prints `{"error": ...}`.

TRANSPORT udp (ADDR = HOST:PORT) or unixdgram (ADDR = the server's socket path; each client
binds ADDR.c<i> next to it) runs N datagram sockets instead, each keeping one datagram of
MODE bytes in flight: send it, wait for the echo (one datagram, compared byte for byte with
that socket's own four rotating messages), send the next. A datagram not echoed within
RESEND_SECONDS is sent again and counted as a resend; a late echo of a resent datagram is
ignored (counted as stale). A send refused with EAGAIN (unixdgram: the server's queue holds
net.unix.max_dgram_qlen datagrams) waits for EPOLLOUT instead. After the window it waits
briefly for echoes still in flight.
"""

import errno
import json
import os
import select
import socket
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from servers import RESPONSE  # noqa: E402

HTTP_REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: ferroloop-bench\r\n\r\n"
STALL_SECONDS = 3.0  # no response at all for this long: the server hangs
RESEND_SECONDS = 0.2  # datagram modes: no echo after this long, send the datagram again
DRAIN_SECONDS = 0.5  # datagram modes: at most this long waiting for echoes after the window
DATAGRAM = ("udp", "unixdgram")
CLK_TCK = os.sysconf("SC_CLK_TCK")
EPOLLIN, EPOLLOUT = select.EPOLLIN, select.EPOLLOUT
IN_ERR = select.EPOLLIN | select.EPOLLERR | select.EPOLLHUP


class Failure(Exception):
    pass


def proc_cpu(pid):
    """CPU seconds (user + system, all threads) of process `pid` so far."""
    with open(f"/proc/{pid}/stat") as f:
        stat = f.read()
    fields = stat[stat.rindex(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


class Conn:
    __slots__ = ("sock", "fd", "k", "buf", "view", "got", "size", "expected", "out", "count")


def main():
    transport, addr, mode = sys.argv[1:4]
    nconn, warmup, duration = int(sys.argv[4]), float(sys.argv[5]), float(sys.argv[6])
    server_pid, core = int(sys.argv[7]), int(sys.argv[8])
    os.sched_setaffinity(0, {core})
    if mode == "http":
        requests, expected = [HTTP_REQUEST], [RESPONSE]
    else:
        requests = expected = [os.urandom(int(mode)) for _ in range(4)]
    nmsg = len(requests)
    try:
        if transport in DATAGRAM:  # its own messages, per socket
            result = run_dgram(transport, addr, int(mode), nconn, warmup, duration, server_pid)
        else:
            args = (requests, expected, nmsg, nconn, warmup, duration, server_pid)
            result = run(transport, addr, *args)
    except (Failure, OSError) as exc:
        result = {"error": f"{type(exc).__name__}: {exc}" if isinstance(exc, OSError) else str(exc)}
    print(json.dumps(result), flush=True)


def run(transport, addr, requests, expected, nmsg, nconn, warmup, duration, server_pid):
    ep = select.epoll()
    by_fd = {}
    for i in range(nconn):
        if transport == "tcp":
            host, port = addr.rsplit(":", 1)
            sock = socket.create_connection((host, int(port)))
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        else:
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            sock.connect(addr)
        sock.setblocking(False)
        c = Conn()
        c.sock, c.fd, c.k, c.count, c.out = sock, sock.fileno(), i % nmsg, 0, None
        by_fd[c.fd] = c
        ep.register(c.fd, EPOLLIN)

    def start(c):
        """Send the next request on `c` (what the socket does not take waits for EPOLLOUT)."""
        c.k = k = (c.k + 1) % nmsg
        c.expected = exp = expected[k]
        if c.size != len(exp):
            c.size = len(exp)
            c.buf = bytearray(c.size)
            c.view = memoryview(c.buf)
        c.got = 0
        msg = requests[k]
        try:
            n = c.sock.send(msg)
        except BlockingIOError:
            n = 0
        if n < len(msg):
            c.out = memoryview(msg)[n:]
            ep.modify(c.fd, EPOLLIN | EPOLLOUT)

    t0 = time.perf_counter()
    warm_end, end = t0 + warmup, t0 + warmup + duration
    for c in by_fd.values():
        c.size = -1
        start(c)
    done = 0
    mark = None  # (time, done, server cpu, own cpu, per-connection counts) at warm-up end
    last_progress = t0
    poll = ep.poll
    perf_counter = time.perf_counter
    while True:
        events = poll(0.25)
        now = perf_counter()
        if not events and now - last_progress > STALL_SECONDS:
            raise Failure(
                f"stalled: no response for {STALL_SECONDS:.0f} s ({done} round trips done)"
            )
        for fd, ev in events:
            c = by_fd[fd]
            if ev & EPOLLOUT and c.out is not None:
                try:
                    n = c.sock.send(c.out)
                except BlockingIOError:
                    n = 0
                c.out = c.out[n:]
                if not c.out:
                    c.out = None
                    ep.modify(fd, EPOLLIN)
            if ev & IN_ERR:
                try:
                    n = c.sock.recv_into(c.view[c.got :])
                except BlockingIOError:
                    continue
                if n == 0:
                    raise Failure(f"server closed a connection after {c.count} responses")
                c.got += n
                if c.got == c.size:
                    if c.buf != c.expected:
                        bad = next(i for i in range(c.size) if c.buf[i] != c.expected[i])
                        raise Failure(
                            f"wrong bytes: response {c.count + 1} of a connection differs "
                            f"at offset {bad} of {c.size} (got {bytes(c.buf[bad : bad + 8])!r}, "
                            f"expected {bytes(c.expected[bad : bad + 8])!r})"
                        )
                    c.count += 1
                    done += 1
                    start(c)
        if events:
            last_progress = now
        if mark is None:
            if now >= warm_end:
                counts = [c.count for c in by_fd.values()]
                mark = (now, done, proc_cpu(server_pid), time.process_time(), counts)
        elif now >= end:
            server_cpu, own_cpu = proc_cpu(server_pid), time.process_time()
            break
    per_conn = [c.count - n0 for c, n0 in zip(by_fd.values(), mark[4], strict=True)]
    for c in by_fd.values():
        c.sock.close()
    ep.close()
    if min(per_conn) == 0:
        raise Failure(f"a connection made no progress in the window: {per_conn}")
    wall = now - mark[0]
    return {
        "requests": done - mark[1],
        "wall": wall,
        "server_cpu": server_cpu - mark[2],
        "load_cpu": own_cpu - mark[3],
        "per_conn_min": min(per_conn),
        "per_conn_max": max(per_conn),
    }


# --- datagram modes: udp, unixdgram --------------------------------------------------------


class Dgram:
    __slots__ = (
        "sock",
        "fd",
        "path",
        "msgs",
        "k",
        "expected",
        "sent_at",
        "count",
        "extra",
        "blocked",
    )


def wrong_datagram(c, data):
    exp = c.expected
    if len(data) != len(exp):
        what = f"is {len(data)} bytes, expected {len(exp)}"
    else:
        bad = next(i for i in range(len(exp)) if data[i] != exp[i])
        what = (
            f"differs at offset {bad} of {len(exp)} (got {data[bad : bad + 8]!r}, "
            f"expected {exp[bad : bad + 8]!r})"
        )
    return Failure(f"wrong bytes: echo {c.count + 1} of a socket {what}")


def run_dgram(transport, addr, size, nconn, warmup, duration, server_pid):
    ep = select.epoll()
    by_fd = {}
    conns = []
    try:
        for i in range(nconn):
            c = Dgram()
            c.path = None
            if transport == "udp":
                host, port = addr.rsplit(":", 1)
                sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
                c.sock = sock
                sock.connect((host, int(port)))
            else:
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
                c.sock = sock
                c.path = f"{addr}.c{i}"
                if os.path.exists(c.path):
                    os.unlink(c.path)
                sock.bind(c.path)  # the server needs an address to echo to
                sock.connect(addr)
            sock.setblocking(False)
            # Distinct messages per socket: an echo sent to the wrong client fails the run.
            c.msgs = [os.urandom(size) for _ in range(4)]
            c.fd, c.k, c.count, c.extra, c.sent_at = sock.fileno(), 0, 0, 0, 0.0
            c.blocked = False
            c.expected = c.msgs[0]
            conns.append(c)
            by_fd[c.fd] = c
            ep.register(c.fd, EPOLLIN)
        return dgram_loop(ep, by_fd, conns, size, warmup, duration, server_pid)
    finally:
        for c in conns:
            c.sock.close()
            if c.path is not None and os.path.exists(c.path):
                os.unlink(c.path)
        ep.close()


def dgram_loop(ep, by_fd, conns, size, warmup, duration, server_pid):
    def send(c, now):
        try:
            c.sock.send(c.expected)
        except BlockingIOError:
            # unixdgram: the server's receive queue is full (net.unix.max_dgram_qlen).
            # Not a loss: send it once the socket is writable again.
            if not c.blocked:
                c.blocked = True
                ep.modify(c.fd, EPOLLIN | EPOLLOUT)
            return
        except OSError as exc:
            if exc.errno != errno.ENOBUFS:  # ENOBUFS: dropped, resent after the timeout
                raise
        c.sent_at = now
        if c.blocked:
            c.blocked = False
            ep.modify(c.fd, EPOLLIN)

    t0 = time.perf_counter()
    warm_end, end = t0 + warmup, t0 + warmup + duration
    for c in conns:
        send(c, t0)
    done = resends = stale = 0
    mark = None  # (time, done, server cpu, own cpu, per-socket counts, resends) at warm-up end
    last_progress = next_check = t0
    bufsize = size + 1  # a longer datagram shows up as size + 1 bytes instead of truncated
    poll = ep.poll
    perf_counter = time.perf_counter
    while True:
        events = poll(0.05)
        now = perf_counter()
        for fd, ev in events:
            c = by_fd[fd]
            if ev & EPOLLOUT and c.blocked:
                send(c, now)
            if not ev & IN_ERR:
                continue
            try:
                data = c.sock.recv(bufsize)
            except BlockingIOError:
                continue
            if data == c.expected:
                c.count += 1
                done += 1
                c.k = k = (c.k + 1) & 3
                c.expected = c.msgs[k]
                last_progress = now
                send(c, now)
            elif c.extra and data in c.msgs:
                c.extra -= 1  # the second echo of a datagram sent twice
                stale += 1
            else:
                raise wrong_datagram(c, data)
        if now >= next_check:
            next_check = now + RESEND_SECONDS / 4
            if now - last_progress > STALL_SECONDS:
                raise Failure(
                    f"stalled: no echo for {STALL_SECONDS:.0f} s ({done} round trips done, "
                    f"{resends} datagrams resent)"
                )
            for c in conns:
                if now - c.sent_at >= RESEND_SECONDS and not c.blocked:
                    c.extra += 1
                    resends += 1
                    send(c, now)
        if mark is None:
            if now >= warm_end:
                counts = [c.count for c in conns]
                mark = (now, done, proc_cpu(server_pid), time.process_time(), counts, resends)
        elif now >= end:
            server_cpu, own_cpu = proc_cpu(server_pid), time.process_time()
            break
    per_conn = [c.count - n0 for c, n0 in zip(conns, mark[4], strict=True)]
    # Wait for the echoes still in flight, so the server does not send to closed sockets.
    pending = {c.fd for c in conns}
    drain_end = perf_counter() + DRAIN_SECONDS
    while pending and perf_counter() < drain_end:
        for fd, _ in ep.poll(0.05):
            try:
                data = by_fd[fd].sock.recv(bufsize)
            except BlockingIOError:
                continue
            if data == by_fd[fd].expected:
                pending.discard(fd)
    if done == 0:
        raise Failure(f"no datagram was echoed ({len(conns)} sent, {resends} resent)")
    if min(per_conn) == 0:
        raise Failure(f"a socket made no progress in the window: {per_conn}")
    return {
        "requests": done - mark[1],
        "wall": now - mark[0],
        "server_cpu": server_cpu - mark[2],
        "load_cpu": own_cpu - mark[3],
        "per_conn_min": min(per_conn),
        "per_conn_max": max(per_conn),
        "resends": resends - mark[5],
        "resends_total": resends,
        "stale": stale,
        "unanswered_at_end": len(pending),
    }


if __name__ == "__main__":
    main()
