"""Network benchmark: echo servers (sock_*, streams, Protocol), a keep-alive HTTP/1.1 server
and a UDP echo server (DatagramProtocol) on ferroloop, asyncio, uvloop and rloop, with a
pure-Rust echo server as the ceiling.

Every measurement starts a fresh server process pinned to one core (servers.py, or the
rust-echo binary) and a separate load generator process pinned to another core (N
connections doing request/response round trips: rust-load for the stream rows, built with
rust-echo, so that the Python servers, not the client, are the bottleneck; load.py for the
datagram rows and with `--load python`); it reports round trips per second and per server
CPU-second. Loops are interleaved within each repetition; figures are medians,
ferroloop's ratios medians of per-repetition ratios (`paired_ratio`).

    python3 bench/net/run.py [--quick] [--loops ferroloop,asyncio,uvloop,rloop,rust]
        [--styles sock,streams,protocol,http,udp] [--sizes 1k,10k,100k]
        [--transports tcp,unix,udp,unixdgram] [--duration S] [--warmup S] [--connections N]
        [--repeat R] [--load rust|python]

The udp style runs on the datagram transports (udp, unixdgram), the other styles on the
stream ones (tcp, unix). Default sizes: 1k,10k,100k for the stream styles, 64,1k for udp;
an explicit --sizes applies to all styles.
"""

import argparse
import datetime
import json
import os
import platform
import select
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
BENCH = os.path.dirname(HERE)
SERVERS = os.path.join(HERE, "servers.py")
LOAD = os.path.join(HERE, "load.py")
CRATE = os.path.join(HERE, "rust-echo")
RUST_BIN = os.path.join(CRATE, "target", "release", "rust-echo")
RUST_LOAD = os.path.join(CRATE, "target", "release", "rust-load")

PY_LOOPS = ["ferroloop", "asyncio", "uvloop", "rloop"]
ALL_SERVERS = PY_LOOPS + ["rust"]
STYLES = ["sock", "streams", "protocol", "http", "udp"]
STREAM_TRANSPORTS = ["tcp", "unix"]
DGRAM_TRANSPORTS = ["udp", "unixdgram"]  # the udp style's transports
TRANSPORTS = STREAM_TRANSPORTS + DGRAM_TRANSPORTS
STREAM_SIZES = "1k,10k,100k"
DGRAM_SIZES = "64,1k"
MAX_UDP_SIZE = 65507  # largest UDP payload over IPv4
LOAD_BOUND = 0.90  # load generator CPU / wall at or above this: it may be the bottleneck
READY_TIMEOUT = 20.0


def parse_size(text):
    text = text.strip().lower()
    if text.endswith("k"):
        return int(float(text[:-1]) * 1024)
    return int(text)


def size_label(size):
    return f"{size // 1024}k" if size % 1024 == 0 else f"{size}B"


def csv(text, allowed, what):
    items = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in items if x not in allowed]
    if bad:
        sys.exit(f"unknown {what}: {', '.join(bad)} (choose from {', '.join(allowed)})")
    return items


# --- one measurement -------------------------------------------------------------------


def pin(core):
    return lambda: os.sched_setaffinity(0, {core})


def launch(cmd, core, errfile):
    """Start a server process pinned to `core`; return (process, what its READY line gave:
    a port or a path) or raise NotAvailable (SETUP-ERROR) / Failed."""
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=errfile, text=True, preexec_fn=pin(core)
    )
    ready, _, _ = select.select([proc.stdout], [], [], READY_TIMEOUT)
    line = proc.stdout.readline().strip() if ready else ""
    if line.startswith("READY "):
        return proc, line.split(" ", 1)[1]
    proc.kill()
    proc.wait()
    if line.startswith("SETUP-ERROR "):
        raise NotAvailable(line.split(" ", 1)[1])
    raise Failed(f"server did not start ({line or 'no READY line'}; exit {proc.returncode})")


def start_server(server, style, transport, addr, core, errfile):
    """Start a server; return (process, address for the load generator) or raise NA/Err."""
    if server == "rust":
        if transport in ("tcp", "udp"):
            cmd = [RUST_BIN, f"--{transport}", f"{addr}:0"]
        else:
            cmd = [RUST_BIN, f"--{transport}", addr]
        cmd += ["--http"] * (style == "http")
    else:
        cmd = [sys.executable, SERVERS, server, style, transport, addr, str(core)]
    proc, value = launch(cmd, core, errfile)
    return proc, (f"{addr}:{value}" if transport in ("tcp", "udp") else value)


class NotAvailable(Exception):
    """The loop raised while setting the server up: that API is not supported."""


class Failed(Exception):
    """The run failed: wrong bytes, stall, crash, timeout."""


def run_against(start, load_args, timeout):
    """One measurement: `start(errfile)` starts a server and returns (process, target);
    `load_args(process, target)` gives the load generator's command line, which must print its
    result as a JSON line within `timeout` seconds. Returns that result with status ok, or
    {status: na/err, error}; `server_stderr` holds what the server wrote to stderr."""
    with tempfile.TemporaryFile(mode="w+") as errfile:
        proc = None
        try:
            proc, target = start(errfile)
            cmd = load_args(proc, target)
            try:
                load = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
            except subprocess.TimeoutExpired:
                raise Failed(f"load generator hung (> {timeout:.0f} s)")
            lines = load.stdout.strip().splitlines()
            if load.returncode != 0 or not lines:
                tail = (load.stderr.strip().splitlines() or [f"exit {load.returncode}"])[-1]
                raise Failed(f"load generator failed: {tail}")
            result = json.loads(lines[-1])
            if "error" in result:  # e.g. wrong bytes, a stall, a failed TLS handshake
                raise Failed(result["error"])
            time.sleep(0.05)  # let the server see the connections close
            if proc.poll() is not None:
                raise Failed(f"server exited with status {proc.returncode}")
            result["status"] = "ok"
        except NotAvailable as exc:
            result = {"status": "na", "error": str(exc)}
        except Failed as exc:
            result = {"status": "err", "error": str(exc)}
        finally:
            if proc is not None and proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            errfile.seek(0)
            stderr = errfile.read().strip()
    if stderr and result["status"] != "na":
        result["server_stderr"] = stderr[-4000:]
    return result


def measure(server, style, transport, size, opts, tmpdir):
    """One (server, scenario) measurement: a dict with the figures, or status na/err."""
    inet = transport in ("tcp", "udp")
    addr = "127.0.0.1" if inet else os.path.join(tmpdir, f"{server}-{style}.sock")
    mode = "http" if style == "http" else str(size)

    def start(errfile):
        return start_server(server, style, transport, addr, opts.server_core, errfile)

    def load_args(proc, target):
        if transport in STREAM_TRANSPORTS and opts.load == "rust":
            cmd = [RUST_LOAD, transport, target, mode, str(opts.connections)]
        else:
            cmd = [sys.executable, LOAD, transport, target, mode, str(opts.connections)]
        return cmd + [str(opts.warmup), str(opts.duration), str(proc.pid), str(opts.load_core)]

    result = run_against(start, load_args, opts.warmup + opts.duration + 30)
    if not inet and os.path.exists(addr):
        os.unlink(addr)
    return result


# --- the run -----------------------------------------------------------------------------


def build_rust():
    """Build rust-echo in release; return None or the error text."""
    cmd = ["cargo", "build", "--release", "--manifest-path", os.path.join(CRATE, "Cargo.toml")]
    cmd += ["--target-dir", os.path.join(CRATE, "target")]
    if shutil.which("cargo") is None:
        return "cargo not found"
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        return (proc.stderr.strip().splitlines() or ["cargo build failed"])[-1]
    return None


def probe(server):
    """Return ({type, version}, None) or (None, reason) for one server."""
    if server == "rust":
        err = build_rust()
        return (None, err) if err else ({"type": "rust-echo (epoll)", "version": "-"}, None)
    proc = subprocess.run(
        [sys.executable, SERVERS, "--probe", server], capture_output=True, text=True
    )
    if proc.returncode != 0:
        return None, (proc.stderr.strip().splitlines() or ["probe failed"])[-1]
    return json.loads(proc.stdout.strip().splitlines()[-1]), None


def scenarios(opts):
    """[(label, style, transport, size)] in run order; http has no size.

    udp rows run on the datagram transports and are labelled `<transport> <size>` (`udp 64B`,
    `unixdgram 1k`); the other styles run on the stream transports.
    """
    out = []
    for style in opts.styles:
        dgram = style == "udp"
        transports = [t for t in opts.transports if (t in DGRAM_TRANSPORTS) == dgram]
        if not transports:
            kinds = ", ".join(DGRAM_TRANSPORTS if dgram else STREAM_TRANSPORTS)
            print(f"warning: style {style} runs on {kinds}: not in --transports", file=sys.stderr)
        sizes = opts.sizes or [
            parse_size(x) for x in (DGRAM_SIZES if dgram else STREAM_SIZES).split(",")
        ]
        for transport in transports:
            if style == "http":
                out.append((f"http {transport}", style, transport, None))
                continue
            for size in sizes:
                if transport == "udp" and size > MAX_UDP_SIZE:
                    print(f"warning: no udp row for {size} B (max {MAX_UDP_SIZE})", file=sys.stderr)
                    continue
                prefix = transport if dgram else f"{style} {transport}"
                out.append((f"{prefix} {size_label(size)}", style, transport, size))
    return out


def rust_key(style, transport, size):
    """The Rust server does not care about the Python style: one run serves all echo rows."""
    kind = style if style in ("http", "udp") else "echo"
    return (kind, transport, size)


def run_all(opts, servers):
    rows = scenarios(opts)
    if not rows:
        sys.exit("nothing to run: no scenario for these --styles, --transports and --sizes")
    runs = []
    total = opts.repeat * sum(
        len([s for s in servers if s != "rust"]) for _ in rows
    ) + opts.repeat * ("rust" in servers) * len({rust_key(*r[1:]) for r in rows})
    count = 0
    with tempfile.TemporaryDirectory(prefix="ferroloop-net-") as tmpdir:
        for rep in range(opts.repeat):
            rust_done = set()
            for i, (label, style, transport, size) in enumerate(rows):
                order = [s for s in servers if s != "rust"]
                key = rust_key(style, transport, size)
                if "rust" in servers and key not in rust_done:
                    order.append("rust")
                    rust_done.add(key)
                shift = (rep + i) % len(order)
                for server in order[shift:] + order[:shift]:
                    count += 1
                    res = measure(server, style, transport, size, opts, tmpdir)
                    res.update(server=server, row=label, rep=rep, rust_key=list(key))
                    runs.append(res)
                    log(count, total, label, server, res)
    return rows, runs


def log(count, total, label, server, res):
    head = f"[{count}/{total}] {label:<20} {server:<10}"
    if res["status"] == "ok":
        wall, n = res["wall"], res["requests"]
        print(
            f"{head} {n / wall:>9.0f} req/s {n / res['server_cpu']:>9.0f} req/CPU-s"
            f"  server {100 * res['server_cpu'] / wall:3.0f}%"
            f"  load {100 * res['load_cpu'] / wall:3.0f}%"
            + (f"  resent {res['resends_total']}" if "resends_total" in res else ""),
            file=sys.stderr,
            flush=True,
        )
    else:
        print(f"{head} {res['status'].upper()}: {res['error']}", file=sys.stderr, flush=True)
    if res.get("server_stderr"):
        print(f"    server stderr: {res['server_stderr'][-600:]}", file=sys.stderr, flush=True)


def summarize(rows, runs, servers):
    """{row: {server: cell}}: medians over repetitions, or the failure."""
    summary = {}
    for label, style, transport, size in rows:
        cells = {}
        for server in servers:
            if server == "rust":
                key = list(rust_key(style, transport, size))
                mine = [r for r in runs if r["server"] == "rust" and r["rust_key"] == key]
            else:
                mine = [r for r in runs if r["server"] == server and r["row"] == label]
            if not mine:
                continue
            bad = [r for r in mine if r["status"] != "ok"]
            if bad:
                cells[server] = {"status": bad[0]["status"], "error": bad[0]["error"]}
                continue
            cells[server] = {
                "status": "ok",
                "rps": statistics.median(r["requests"] / r["wall"] for r in mine),
                "per_cpu": statistics.median(r["requests"] / r["server_cpu"] for r in mine),
                "by_rep": per_rep(mine),
                "server_util": statistics.median(r["server_cpu"] / r["wall"] for r in mine),
                "load_util": max(r["load_cpu"] / r["wall"] for r in mine),
                "stderr": any(r.get("server_stderr") for r in mine),
                "n": len(mine),
            }
            if style == "udp":  # datagrams resent after a timeout, all repetitions, whole runs
                cells[server]["resends"] = sum(r["resends_total"] for r in mine)
        summary[label] = cells
    return summary


def fmt(value):
    for div, suffix in ((1e6, "M"), (1e3, "k")):
        if value >= div:
            return f"{value / div:.1f}{suffix}"
    return f"{value:.0f}"


def cell(c, key, mark_load=False):
    if c is None:
        return "-"
    if c["status"] == "na":
        return "n/a"
    if c["status"] == "err":
        return "ERR"
    text = fmt(c[key])
    if mark_load and c["load_util"] >= LOAD_BOUND:
        text += "†"
    if c["stderr"]:
        text += "!"
    return text


def per_rep(runs):
    """{repetition: round trips per server CPU-second} of one cell's runs."""
    return {r["rep"]: r["requests"] / r["server_cpu"] for r in runs}


def paired_ratio(ca, cb):
    """`a` over `b` in round trips per server CPU-second: the median of the ratios within each
    repetition (the servers of one repetition run back to back, so they share the machine's
    state; the ratio of two separately taken medians can set one server's fast phase against
    the other's slow one). None unless both cells are ok."""
    if not (ca and cb and ca["status"] == cb["status"] == "ok"):
        return None
    common = sorted(set(ca["by_rep"]) & set(cb["by_rep"]))
    if not common:
        return ca["per_cpu"] / cb["per_cpu"]
    return statistics.median(ca["by_rep"][k] / cb["by_rep"][k] for k in common)


def ratio(cells, a, b):
    r = paired_ratio(cells.get(a), cells.get(b))
    return "n/a" if r is None else f"{r:.2f}"


def tables(rows, summary, servers):
    fl = "ferroloop"
    head = ["scenario"] + [f"{s} req/s" for s in servers] + [f"{s} req/CPU-s" for s in servers]
    others = [s for s in ("asyncio", "uvloop", "rloop", "rust") if s in servers]
    if fl in servers:
        head += [f"ferro/{s} (CPU)" for s in others]
    main = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, *_ in rows:
        cells = summary[label]
        line = [label] + [cell(cells.get(s), "rps", True) for s in servers]
        line += [cell(cells.get(s), "per_cpu") for s in servers]
        if fl in servers:
            line += [ratio(cells, fl, s) for s in others]
        main.append("| " + " | ".join(line) + " |")

    head = ["scenario"] + servers
    diag = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for label, *_ in rows:
        line = [label]
        for s in servers:
            c = summary[label].get(s)
            ok = c and c["status"] == "ok"
            line.append(f"{100 * c['server_util']:.0f}/{100 * c['load_util']:.0f}" if ok else "-")
        diag.append("| " + " | ".join(line) + " |")
    return "\n".join(main), "\n".join(diag)


def resend_table(rows, summary, servers):
    """udp rows: datagrams resent (not echoed within load.py's RESEND_SECONDS)."""
    udp = [label for label, style, *_ in rows if style == "udp"]
    if not udp:
        return None
    lines = ["| scenario | " + " | ".join(servers) + " |", "|" + "---|" * (len(servers) + 1)]
    for label in udp:
        line = [label]
        for s in servers:
            c = summary[label].get(s)
            line.append(str(c["resends"]) if c and c["status"] == "ok" else "-")
        lines.append("| " + " | ".join(line) + " |")
    return "\n".join(lines)


def machine():
    model = ""
    try:
        with open("/proc/cpuinfo") as f:
            model = next((ln.split(":", 1)[1].strip() for ln in f if "model name" in ln), "")
    except OSError:
        pass
    return {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpu": model,
        "cpus": os.cpu_count(),
        "loadavg": os.getloadavg(),
    }


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="1 repetition, short windows (~2.5 min)")
    ap.add_argument("--loops", default=",".join(ALL_SERVERS), help="servers to run")
    ap.add_argument("--styles", default=",".join(STYLES))
    ap.add_argument(
        "--sizes",
        help=f"echo message sizes, bytes or Nk (default {STREAM_SIZES}; udp: {DGRAM_SIZES})",
    )
    ap.add_argument("--transports", default=",".join(TRANSPORTS))
    ap.add_argument("--duration", type=float, help="measured seconds per run (default 1.5)")
    ap.add_argument("--warmup", type=float, help="warm-up seconds per run (default 0.5)")
    ap.add_argument("--connections", type=int, default=10)
    ap.add_argument("--repeat", type=int, help="repetitions, median reported (default 3)")
    ap.add_argument("--server-core", type=int, default=0)
    ap.add_argument("--load-core", type=int, default=1)
    ap.add_argument(
        "--load",
        choices=["rust", "python"],
        default="rust",
        help="load generator of the stream rows: rust-load (default; falls back to python"
        " when it cannot be built) or load.py (the datagram rows always use load.py)",
    )
    opts = ap.parse_args()
    opts.loops = csv(opts.loops, ALL_SERVERS, "loop")
    opts.styles = csv(opts.styles, STYLES, "style")
    opts.transports = csv(opts.transports, TRANSPORTS, "transport")
    opts.sizes = [parse_size(x) for x in (opts.sizes or "").split(",") if x.strip()]
    quick = opts.quick
    opts.duration = opts.duration or (0.7 if quick else 1.5)
    opts.warmup = opts.warmup if opts.warmup is not None else (0.3 if quick else 0.5)
    opts.repeat = opts.repeat or (1 if quick else 3)
    if opts.server_core == opts.load_core or max(opts.server_core, opts.load_core) >= (
        os.cpu_count() or 1
    ):
        print("warning: server and load generator do not get separate cores", file=sys.stderr)
    os.sched_setaffinity(0, {opts.load_core})  # the driver mostly sleeps; keep it off core 0

    t_start = time.monotonic()
    if opts.load == "rust":
        err = build_rust()
        if err:
            print(f"rust-load not available ({err}): load.py runs every row", file=sys.stderr)
            opts.load = "python"
    versions, servers = {}, []
    for server in opts.loops:
        info, err = probe(server)
        if info is None:
            print(f"{server}: not available: {err}", file=sys.stderr)
            versions[server] = {"error": err}
        else:
            versions[server] = info
            servers.append(server)
    rows, runs = run_all(opts, servers)
    summary = summarize(rows, runs, servers)
    main_table, diag_table = tables(rows, summary, servers)
    elapsed = time.monotonic() - t_start

    config = {k: v for k, v in vars(opts).items()}
    print(
        f"\n## Network benchmark ({opts.connections} connections, {opts.duration:g} s measured"
        f" after {opts.warmup:g} s warm-up, median of {opts.repeat}; {elapsed:.0f} s total)\n"
    )
    print(main_table)
    print(
        "\nreq/s = round trips per wall second; req/CPU-s = round trips per server CPU-second;"
        "\nratios = ferroloop's req/CPU-s over the other's (above 1: ferroloop cheaper)."
        f"\n† load generator at >= {100 * LOAD_BOUND:.0f}% of its core (it may be the limit);"
        " ! the server wrote to stderr (see JSON).\n"
    )
    print("Server / load-generator CPU, % of wall (median / max):\n")
    print(diag_table)
    resends = resend_table(rows, summary, servers)
    if resends:
        print(
            "\nudp rows: datagrams resent (no echo within 200 ms; loss), sum over repetitions"
            " (warm-up and window):\n"
        )
        print(resends)
    problems = {}
    for r in runs:
        if r["status"] != "ok" or r.get("server_stderr"):
            k = f"{r['server']} / {r['row']}"
            text = r.get("error") or r["server_stderr"].splitlines()[-1]
            if r.get("error") and r.get("server_stderr"):
                text += f" (server stderr: {r['server_stderr'].splitlines()[-1]})"
            problems.setdefault(k, text)
    if problems:
        print("\nNot available / errors:\n")
        for k, v in problems.items():
            print(f"- {k}: {v}")

    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    outdir = os.path.join(BENCH, "results")
    os.makedirs(outdir, exist_ok=True)
    path = os.path.join(outdir, f"net-{stamp}.json")
    with open(path, "w") as f:
        json.dump(
            {
                "config": config,
                "machine": machine(),
                "versions": versions,
                "elapsed_s": elapsed,
                "summary": summary,
                "runs": runs,
                "table": main_table,
                "cpu_table": diag_table,
            },
            f,
            indent=1,
        )
    print(f"\nraw results: {os.path.relpath(path)}", file=sys.stderr)


if __name__ == "__main__":
    main()
