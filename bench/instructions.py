"""Instructions per operation, counted by callgrind: a deterministic companion to run.py.

Each (loop, scenario) runs twice in a fresh child process (bench/_child.py) under
``valgrind --tool=callgrind``, with N1 and N2 = N1 + D operations and the same fixed
warm-up. The figure is (I2 - I1) / (ops2 - ops1): the instructions one more operation
costs, with interpreter start-up, imports, loop creation and warm-up cancelled out.

    python3 bench/instructions.py [--quick] [--loops ferroloop,asyncio,uvloop,rloop]
                                  [--scenarios a,b,...] [--repeat N] [--jobs N]
"""

import argparse
import concurrent.futures
import datetime
import json
import os
import platform
import queue
import re
import shutil
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from run import DEFAULT_LOOPS, run_child  # noqa: E402
from scenarios import SCENARIOS  # noqa: E402

CHILD = os.path.join(HERE, "_child.py")
# The real interpreter: `python3` may be a pyenv shim (a shell script valgrind would trace).
PYTHON = os.path.realpath(sys.executable)
# scenario -> N1 for a full run; D = N1, so the second run does N2 = 2 * N1 operations.
# Sized so that the slowest loop (asyncio) spends ~5 s on top of valgrind's ~8 s start-up
# (start-up is ~300 M instructions, mostly `import asyncio`); --quick uses a fifth.
PLAN = {
    "call_soon_chain": 10_000,
    "call_soon_batch": 30_000,
    "call_later_cancel": 5_000,
    "call_soon_threadsafe": 10_000,
    "sleep0_pingpong": 15_000,
    "future_roundtrip": 5_000,
    "create_task_gather": 4_000,
    "queue_prodcons": 25_000,
    "run_in_executor": 1_000,
    "timeout_blocks": 4_000,
}
QUICK_SCALE = 0.2
# Extra keyword arguments for the scenario. call_later_cancel: let every deadline pass
# before running the loop, else how many timers fire per iteration depends on the clock
# (seen: asyncio's figure moving by 30 % from run to run).
KWARGS = {"call_later_cancel": {"settle": True}}
# Two threads: valgrind runs them one at a time, but where it switches still depends on
# timing, so these rows vary from run to run: run_in_executor by up to ~0.6 %,
# call_soon_threadsafe by up to ~3 % (so it is measured only when asked for).
THREADED = {"call_soon_threadsafe", "run_in_executor"}
DEFAULT_SCENARIOS = [s for s in PLAN if s != "call_soon_threadsafe"]
# idle_timers is not measured: its metric is idle CPU per wall-second, not work per op.
VALGRIND_TIMEOUT = 600
COLLECTED = re.compile(r"^==\d+== Collected : (\d+)\s*$", re.M)
REFS = re.compile(r"^==\d+== I\s+refs:\s+([\d,]+)\s*$", re.M)


def valgrind_child(loop, scenario, n, warmup, core):
    """Run one child under callgrind; return (result dict, None) or (None, error text)."""
    cmd = [
        "valgrind",
        "--tool=callgrind",
        "--callgrind-out-file=/dev/null",
        PYTHON,
        CHILD,
        loop,
        scenario,
        str(n),
        str(core),
        f"--warmup={warmup}",
    ]
    if scenario in KWARGS:
        cmd.append("--kwargs=" + json.dumps(KWARGS[scenario]))
    # Same str hashes (dict/set layouts) in every run; never write .pyc files, so that the
    # first run of a pair cannot pay for compiling a module the second one then reads.
    env = dict(os.environ, PYTHONHASHSEED="0", PYTHONDONTWRITEBYTECODE="1")
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, env=env, timeout=VALGRIND_TIMEOUT
        )
    except subprocess.TimeoutExpired:
        return None, f"timed out after {VALGRIND_TIMEOUT} s"
    seconds = time.perf_counter() - t0
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if not ln.startswith("==")]
        return None, (lines or [f"exit code {proc.returncode}"])[-1]
    match = COLLECTED.search(proc.stderr) or REFS.search(proc.stderr)
    if not match:
        return None, "no instruction count in valgrind's output"
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    return {
        "ops": result["ops"],
        "instructions": int(match.group(1).replace(",", "")),
        "seconds": seconds,
    }, None


def fmt_ir(value):
    return "ERR" if value is None else f"{value:,.0f}"


def ratio(other, ferro):
    """other / ferroloop: above 1.00x ferroloop executes fewer instructions."""
    return f"{other / ferro:.2f}x" if other is not None and ferro else "n/a"


def table(scenarios, loops, available, summary):
    fl = "ferroloop"
    head = ["scenario", "N1 → N2"] + loops
    if fl in loops:
        head += ["uvloop/ferro", "rloop/ferro", "best(uv,r)/ferro"]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for scenario in scenarios:
        cells = summary[scenario]

        def fig(name, cells=cells):
            return cells[name]["ir_per_op"] if name in cells else None

        any_cell = next(iter(cells.values()), {})
        mark = " *" if scenario in THREADED else ""
        row = [scenario + mark, f"{any_cell.get('n1', 0):,} → {any_cell.get('n2', 0):,}"]
        row += [fmt_ir(fig(n)) if n in available else "n/a" for n in loops]
        if fl in loops:
            others = [fig(n) for n in ("uvloop", "rloop") if fig(n) is not None]
            best = min(others) if others else None
            row += [ratio(fig("uvloop"), fig(fl)), ratio(fig("rloop"), fig(fl))]
            row.append(ratio(best, fig(fl)))
        rows.append("| " + " | ".join(row) + " |")
    return "\n".join(rows)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="a fifth of the work (~5-8 min)")
    p.add_argument("--loops", default=DEFAULT_LOOPS, help=f"default: {DEFAULT_LOOPS}")
    p.add_argument(
        "--scenarios",
        default=",".join(DEFAULT_SCENARIOS),
        help="default: all but idle_timers (not measurable) and call_soon_threadsafe (noisy)",
    )
    p.add_argument("--repeat", type=int, default=1, help="repetitions of each pair (default 1)")
    p.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="parallel valgrinds")
    p.add_argument("--scale", type=float, default=None, help="multiply every N1 by this")
    args = p.parse_args(argv)
    args.loops = [x for x in args.loops.split(",") if x]
    args.scenarios = [x for x in args.scenarios.split(",") if x]
    bad = [s for s in args.scenarios if s not in PLAN]
    if bad:
        unknown = [s for s in bad if s not in SCENARIOS]
        why = f"unknown scenarios {unknown}" if unknown else f"no instruction plan for {bad}"
        p.error(f"{why}; supported: {', '.join(PLAN)}")
    if args.scale is None:
        args.scale = QUICK_SCALE if args.quick else 1.0
    return args


def main(argv=None):
    args = parse_args(argv)
    log = sys.stderr
    if not shutil.which("valgrind"):
        sys.exit("instructions: valgrind is not installed")
    vg_version = subprocess.run(["valgrind", "--version"], capture_output=True, text=True)
    loop_info, available = {}, []
    for name in args.loops:
        info, err = run_child(name, "-", 0, 0, probe=True)
        loop_info[name] = info or {"loop": name, "error": err}
        if info:
            available.append(name)
        print(f"{name}: {info['version'] if info else 'n/a (' + err + ')'}", file=log)
    if "ferroloop" in args.loops and "ferroloop" not in available:
        sys.exit("instructions: ferroloop is not usable here (see above); install it first")

    sizes = {}
    for scenario in args.scenarios:
        n1 = max(10, int(PLAN[scenario] * args.scale))
        sizes[scenario] = (n1, 2 * n1, max(1, n1 // 10))  # N1, N2, fixed warm-up
    tasks = [
        (rep, scenario, name, which)
        for rep in range(args.repeat)
        for scenario in args.scenarios
        for name in available
        for which in (0, 1)
    ]
    cores = queue.Queue()
    for i in range(max(1, args.jobs)):
        cores.put(i % (os.cpu_count() or 1))

    def work(task):
        rep, scenario, name, which = task
        core = cores.get()
        try:
            n1, n2, warmup = sizes[scenario]
            return valgrind_child(name, scenario, (n1, n2)[which], warmup, core)
        finally:
            cores.put(core)

    t_start = time.perf_counter()
    raw = {}
    with concurrent.futures.ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
        futures = {pool.submit(work, t): t for t in tasks}
        for done, fut in enumerate(concurrent.futures.as_completed(futures), 1):
            task = futures[fut]
            raw[task] = fut.result()
            result, err = raw[task]
            rep, scenario, name, which = task
            what = err if err else f"{result['instructions']:,} Ir, {result['seconds']:.1f} s"
            n = sizes[scenario][which]
            print(f"[{done}/{len(tasks)}] {scenario} {name} N={n} rep {rep}: {what}", file=log)
    elapsed = time.perf_counter() - t_start

    runs, summary = [], {}
    for scenario in args.scenarios:
        n1, n2, warmup = sizes[scenario]
        summary[scenario] = {}
        for name in available:
            per_op, errors = [], []
            for rep in range(args.repeat):
                pair = [raw[(rep, scenario, name, which)] for which in (0, 1)]
                for which, (result, err) in enumerate(pair):
                    runs.append(
                        {
                            "scenario": scenario,
                            "loop": name,
                            "rep": rep,
                            "n": (n1, n2)[which],
                            "warmup": warmup,
                            "result": result,
                            "error": err,
                        }
                    )
                    if err:
                        errors.append(err)
                if not errors:
                    (r1, _), (r2, _) = pair
                    ir = (r2["instructions"] - r1["instructions"]) / (r2["ops"] - r1["ops"])
                    per_op.append(ir)
            med = statistics.median(per_op) if per_op and not errors else None
            spread = (max(per_op) - min(per_op)) / med if med and len(per_op) > 1 else None
            summary[scenario][name] = {
                "ir_per_op": med,
                "per_rep": per_op,
                "spread": spread,
                "n1": n1,
                "n2": n2,
                "warmup": warmup,
                "errors": errors,
            }
            for err in errors:
                print(f"  {scenario} {name}: ERROR {err}", file=log)

    md = table(args.scenarios, args.loops, available, summary)
    notes = [
        "Instructions per operation counted by callgrind (lower is better); ratio columns",
        "are other/ferroloop, so above 1.00x ferroloop executes FEWER instructions per op.",
    ]
    if THREADED & set(args.scenarios):
        notes.append(
            "* two threads: where valgrind switches threads varies, and so does the count"
            " (run_in_executor ~0.6 %, call_soon_threadsafe ~3 %)."
        )
    if args.repeat > 1:
        spreads = [
            (cell["spread"], scenario, name)
            for scenario, cells in summary.items()
            for name, cell in cells.items()
            if cell["spread"] is not None
        ]
        if spreads:
            worst = max(spreads)
            notes.append(
                f"Median of {args.repeat} repetitions; largest spread (max-min)/median: "
                f"{100 * worst[0]:.2f} % ({worst[1]}, {worst[2]})."
            )
    print(md)
    print()
    print("\n".join(notes))
    print(f"\ntotal {elapsed:.0f} s for {len(tasks)} valgrind runs", file=log)

    out_dir = os.path.join(HERE, "results")
    os.makedirs(out_dir, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = os.path.join(out_dir, f"instructions-{stamp}{'-quick' if args.quick else ''}.json")
    meta = {
        "argv": sys.argv,
        "python": sys.version,
        "interpreter": PYTHON,
        "valgrind": vg_version.stdout.strip(),
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "jobs": args.jobs,
        "repeat": args.repeat,
        "quick": args.quick,
        "scale": args.scale,
        "elapsed_s": elapsed,
        "loops": loop_info,
    }
    with open(out, "w") as f:
        json.dump({"meta": meta, "summary": summary, "runs": runs, "table": md}, f, indent=1)
    print(f"raw results: {os.path.relpath(out)}", file=log)


if __name__ == "__main__":
    main()
