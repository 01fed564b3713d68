"""Run one (loop, scenario) measurement in this fresh process; print one JSON line.

Usage: python3 bench/_child.py LOOP SCENARIO N CORE [--probe] [--warmup=W] [--kwargs=JSON]

The warm-up runs a tenth of the work (N // 10), or W operations with ``--warmup=W``;
``--kwargs`` passes extra keyword arguments to the scenario function (warm-up and measured
run). bench/run.py uses neither; bench/instructions.py uses a fixed W so that runs with
different N share it.
"""

import asyncio
import gc
import importlib
import json
import os
import resource
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

from scenarios import SCENARIOS, Meter  # noqa: E402

FACTORIES = {
    "asyncio": ("asyncio", "new_event_loop"),
    "uvloop": ("uvloop", "new_event_loop"),
    "rloop": ("rloop", "new_event_loop"),
    "ferroloop": ("ferroloop", "new_event_loop"),
    "veloxloop": ("veloxloop", "new_event_loop"),
}


def make_loop(name):
    module_name, attr = FACTORIES[name]
    module = importlib.import_module(module_name)
    loop = getattr(module, attr)()
    # Make sure the factory really gave us the loop we mean to measure.
    if name == "asyncio":
        assert type(loop) is asyncio.SelectorEventLoop, type(loop)
    else:  # not the stdlib loop (a subclass is fine), and a class of the loop's package
        assert type(loop) is not asyncio.SelectorEventLoop, type(loop)
        mods = {c.__module__.split(".")[0] for c in type(loop).__mro__}
        assert module_name in mods or type(loop).__module__ == "builtins", type(loop)
    return module, loop


def probe(name):
    module, loop = make_loop(name)
    loop.close()
    version = getattr(module, "__version__", None)
    if version is None:
        from importlib.metadata import version as dist_version

        version = dist_version(name) if name != "asyncio" else sys.version.split()[0]
    loop_type = f"{type(loop).__module__}.{type(loop).__qualname__}"
    return {"loop": name, "type": loop_type, "version": version}


def measure(name, scenario, n, warmup=None, kwargs=None):
    fn, _, unit = SCENARIOS[scenario]
    _, loop = make_loop(name)
    asyncio.set_event_loop(loop)
    try:
        # Warm-up on the same loop: a tenth of the work or --warmup=W (idle: a short sleep).
        warm = {"seconds": 0.05} if scenario == "idle_timers" else {}
        kwargs = kwargs or {}
        fn(loop, max(1, n // 10 if warmup is None else warmup), Meter(), **warm, **kwargs)
        gc.collect()
        meter = Meter()
        ops = fn(loop, n, meter, **kwargs)
    finally:
        loop.run_until_complete(loop.shutdown_asyncgens())
        loop.run_until_complete(loop.shutdown_default_executor())
        asyncio.set_event_loop(None)
        loop.close()
    maxrss_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "ops": ops,
        "cpu": meter.cpu,
        "wall": meter.wall,
        "unit": unit,
        "maxrss_mib": maxrss_kib / 1024,
    }


def main(argv):
    name, scenario, n, core = argv[:4]
    os.sched_setaffinity(0, {int(core)})  # before any thread starts, so all inherit it
    opts = dict(a[2:].split("=", 1) for a in argv[4:] if a.startswith("--") and "=" in a)
    if "--probe" in argv:
        result = probe(name)
    else:
        warmup = int(opts["warmup"]) if "warmup" in opts else None
        kwargs = json.loads(opts["kwargs"]) if "kwargs" in opts else None
        result = measure(name, scenario, int(n), warmup, kwargs)
    print(json.dumps(result))


if __name__ == "__main__":
    main(sys.argv[1:])
