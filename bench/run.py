"""Side-by-side event-loop benchmark: ferroloop vs asyncio, uvloop and rloop.

Every (loop, scenario) measurement runs in a fresh subprocess (bench/_child.py) pinned to
one core; loops are interleaved within each repetition. The table gives each loop's median
figure, and ferroloop's ratios as the median of per-repetition ratios (see `paired_ratio`).

    python3 bench/run.py [--quick] [--loops ferroloop,asyncio,uvloop,rloop]
                         [--scenarios a,b,...] [--repeat N] [--core N]
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import subprocess
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

from scenarios import SCENARIOS  # noqa: E402

CHILD = os.path.join(HERE, "_child.py")
DEFAULT_LOOPS = "ferroloop,asyncio,uvloop,rloop"
QUICK_SCALE = 0.2  # --quick: a fifth of the work per run
UNSCALED = {"idle_timers"}  # the 10 000 timers and the 1 s sleep are the scenario itself
CHILD_TIMEOUT = 120


def run_child(loop, scenario, n, core, probe=False):
    """Run one child; return (result dict, None) or (None, error text)."""
    cmd = [sys.executable, CHILD, loop, scenario, str(n), str(core)] + (["--probe"] * probe)
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=CHILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        return None, f"timed out after {CHILD_TIMEOUT} s"
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines() or [f"exit code {proc.returncode}"]
        return None, lines[-1]
    return json.loads(proc.stdout.strip().splitlines()[-1]), None


def figure(result):
    """The scenario's figure: ops per CPU-second, or idle CPU-ms per wall-second."""
    if result["unit"] == "CPU-ms/s":
        return 1000.0 * result["cpu"] / result["wall"]
    return result["ops"] / result["cpu"]


def fmt_fig(value, unit):
    if value is None:
        return "ERR"
    if unit == "CPU-ms/s":
        return f"{value:.2f}"
    for div, suffix in ((1e6, "M"), (1e3, "k")):
        if value >= div:
            return f"{value / div:.2f}{suffix}"
    return f"{value:.0f}"


def paired_ratio(mine, others, lower_is_better):
    """Median over the repetitions of ferroloop's figure against the best of `others` in the
    same repetition, oriented so that above 1 means ferroloop is better; None without a pair.

    The loops of one repetition run back to back, so they share the machine's state; on a
    shared machine whose speed shifts between phases, the ratio of two medians taken
    separately can set one loop's fast phase against another's slow one."""
    pairs = []
    for rep, f in enumerate(mine):
        theirs = [o[rep] for o in others if rep < len(o) and o[rep] is not None]
        if f is None or not f or not theirs:
            continue
        if lower_is_better:
            pairs.append(min(theirs) / f)
        else:
            pairs.append(f / max(theirs))
    return statistics.median(pairs) if pairs else None


def table(scenarios, loops, available, summary):
    """Markdown table: figures (medians), ferroloop's paired ratios, peak RSS."""
    fl = "ferroloop"
    head = ["scenario", "unit"] + loops
    if fl in loops:
        head += ["ferro/uvloop", "ferro/rloop", "ferro/best(uv,r)"]
    head += [f"RSS MiB {name}" for name in loops]
    rows = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for scenario in scenarios:
        unit = SCENARIOS[scenario][2]
        cells = summary[scenario]

        def fig(name, cells=cells):
            return cells[name]["median"] if name in cells else None

        def by_rep(name, cells=cells):
            return cells[name]["by_rep"] if name in cells and fig(name) is not None else []

        row = [scenario, unit]
        row += [fmt_fig(fig(n), unit) if n in available else "n/a" for n in loops]
        if fl in loops:
            lower_is_better = unit == "CPU-ms/s"
            mine = by_rep(fl) if fig(fl) is not None else []

            def better(*names, mine=mine, lower_is_better=lower_is_better):
                # Above 1: ferroloop is better, whichever way the unit points.
                others = [by_rep(n) for n in names if by_rep(n)]
                r = paired_ratio(mine, others, lower_is_better) if others else None
                return f"{r:.2f}x" if r is not None else "n/a"

            row += [better("uvloop"), better("rloop"), better("uvloop", "rloop")]
        for name in loops:
            rss = cells.get(name, {}).get("maxrss_mib")
            row.append(f"{rss:.1f}" if rss is not None else "n/a")
        rows.append("| " + " | ".join(row) + " |")
    return "\n".join(rows)


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smoke run (~1 min): less work, 3 reps")
    p.add_argument("--loops", default=DEFAULT_LOOPS, help=f"default: {DEFAULT_LOOPS}")
    p.add_argument("--scenarios", default=",".join(SCENARIOS), help="default: all")
    p.add_argument("--repeat", type=int, default=None, help="repetitions (default 5, quick 3)")
    p.add_argument("--core", type=int, default=0, help="CPU core to pin children to")
    args = p.parse_args(argv)
    args.loops = [x for x in args.loops.split(",") if x]
    args.scenarios = [x for x in args.scenarios.split(",") if x]
    unknown = [s for s in args.scenarios if s not in SCENARIOS]
    if unknown:
        p.error(f"unknown scenarios {unknown}; known: {', '.join(SCENARIOS)}")
    if args.repeat is None:
        args.repeat = 3 if args.quick else 5
    return args


def main(argv=None):
    args = parse_args(argv)
    log = sys.stderr
    loop_info, available = {}, []
    for name in args.loops:
        info, err = run_child(name, "-", 0, args.core, probe=True)
        loop_info[name] = info or {"loop": name, "error": err}
        if info:
            available.append(name)
        print(f"{name}: {info['version'] if info else 'n/a (' + err + ')'}", file=log)
    if "ferroloop" in args.loops and "ferroloop" not in available:
        sys.exit("bench: ferroloop is not usable here (see above); install it first")

    runs, summary = [], {}
    for scenario in args.scenarios:
        _, n, unit = SCENARIOS[scenario]
        if args.quick and scenario not in UNSCALED:
            n = max(1, int(n * QUICK_SCALE))
        figs = {name: [] for name in available}
        by_rep = {name: [None] * args.repeat for name in available}
        rss = {name: [] for name in available}
        failed = set()
        for rep in range(args.repeat):
            order = available[rep % len(available) :] + available[: rep % len(available)]
            for name in order:
                if name in failed:  # one failure is enough: don't wait out more timeouts
                    continue
                result, err = run_child(name, scenario, n, args.core)
                runs.append(
                    {
                        "scenario": scenario,
                        "loop": name,
                        "rep": rep,
                        "n": n,
                        "result": result,
                        "error": err,
                    }
                )
                if err:
                    failed.add(name)
                    print(f"  {scenario} {name} rep {rep}: ERROR {err}", file=log)
                    continue
                figs[name].append(figure(result))
                by_rep[name][rep] = figs[name][-1]
                rss[name].append(result["maxrss_mib"])
        summary[scenario] = {}
        for name in available:
            ok = name not in failed and figs[name]
            summary[scenario][name] = {
                "median": statistics.median(figs[name]) if ok else None,
                "figures": figs[name],
                "by_rep": by_rep[name],
                "maxrss_mib": statistics.median(rss[name]) if rss[name] else None,
                "n": n,
                "unit": unit,
            }
        line = ", ".join(f"{k}={fmt_fig(v['median'], unit)}" for k, v in summary[scenario].items())
        print(f"{scenario} [{unit}]: {line}", file=log)

    md = table(args.scenarios, args.loops, available, summary)
    print(md)
    out_dir = os.path.join(HERE, "results")
    os.makedirs(out_dir, exist_ok=True)
    stamp = datetime.datetime.now().strftime("%Y%m%d-%H%M%S")
    out = os.path.join(out_dir, f"bench-{stamp}{'-quick' if args.quick else ''}.json")
    meta = {
        "argv": sys.argv,
        "python": sys.version,
        "platform": platform.platform(),
        "cpu_count": os.cpu_count(),
        "core": args.core,
        "repeat": args.repeat,
        "quick": args.quick,
        "loops": loop_info,
    }
    with open(out, "w") as f:
        json.dump({"meta": meta, "summary": summary, "runs": runs, "table": md}, f, indent=1)
    print(f"\nraw results: {os.path.relpath(out)}", file=log)


if __name__ == "__main__":
    main()
