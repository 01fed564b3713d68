#!/usr/bin/env python3
"""Run CPython's own ``test.test_asyncio`` against ferroloop.

Every test module runs in its own child process (this same file, ``--child``) with
asyncio's default policy redirected to ``ferroloop.EventLoopPolicy`` *before* the test
module is imported, so loops made through ``asyncio.new_event_loop()``, the policy,
``asyncio.run()``, ``asyncio.Runner`` and ``unittest.IsolatedAsyncioTestCase`` are
ferroloop loops, even after a test module resets the policy with
``set_event_loop_policy(None)``.  Test classes that hard-code one of the stdlib loops
(``asyncio.SelectorEventLoop(...)`` in ``test_events``, ``test_sock_lowlevel``, ...) are
replaced by one ferroloop variant each (see ``ADAPTERS``).

The child writes one JSON line per event to a results file, so a crash or a hang of one
test is attributed to that test and the module is resumed after it.  The parent compares
the outcomes with ``expected_failures.txt`` and ``not_applicable.txt`` (beside this file),
prints a per-module summary and a last line ``N passed, M failed`` where M counts new
failures, expected failures that now pass, stale list entries and broken modules.

``--target asyncio`` runs the same harness against asyncio's own loop (a counting
subclass of ``asyncio.SelectorEventLoop``) to validate the harness itself; the two lists
are ignored in that mode.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import fnmatch
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXPECTED_FILE = HERE / "expected_failures.txt"
NOT_APPLICABLE_FILE = HERE / "not_applicable.txt"
PKG = "test.test_asyncio"
PREFIX = PKG + "."

PASS = "pass"
FAIL = "fail"
ERROR = "error"
SKIP = "skip"
XFAIL = "expected-failure"  # a unittest @expectedFailure that failed
XPASS = "unexpected-success"  # a unittest @expectedFailure that passed
BAD = (FAIL, ERROR, XPASS)

# Exit status of a child whose watchdog found a test hanging.
HANG_EXIT = 70

# ---------------------------------------------------------------------------
# Modules
# ---------------------------------------------------------------------------


@dataclass
class ModuleInfo:
    # The module must create at least one loop of the target (proof of redirection).
    expect_loops: bool = True
    # Not run at all; the reason is printed in the summary.
    excluded: str = ""
    note: str = ""


MODULES: dict[str, ModuleInfo] = {
    "test_selector_events": ModuleInfo(
        excluded="unit tests of asyncio.selector_events' own classes with mocked selectors"
    ),
    "test_proactor_events": ModuleInfo(excluded="Windows proactor loop internals"),
    "test_windows_events": ModuleInfo(excluded="Windows only"),
    "test_windows_utils": ModuleInfo(excluded="Windows only"),
    "test_protocols": ModuleInfo(expect_loops=False, note="abstract protocol classes, no loop"),
    "test_transports": ModuleInfo(expect_loops=False, note="abstract transport classes, no loop"),
}

# Rough cost order (slowest first) so the two workers finish together.
SLOW_FIRST = [
    "test_events",
    "test_tasks",
    "test_subprocess",
    "test_ssl",
    "test_streams",
    "test_base_events",
    "test_unix_events",
    "test_sendfile",
    "test_sock_lowlevel",
    "test_sslproto",
    "test_locks",
    "test_waitfor",
    "test_queues",
    "test_taskgroups",
    "test_futures",
    "test_runners",
]


def discover_modules() -> list[str]:
    import importlib.util

    try:
        spec = importlib.util.find_spec(PKG)
    except ImportError:
        spec = None
    if spec is None or not spec.submodule_search_locations:
        return []
    folder = Path(list(spec.submodule_search_locations)[0])
    return sorted(p.stem for p in folder.glob("test_*.py"))


# ---------------------------------------------------------------------------
# Expected failures / not applicable lists
# ---------------------------------------------------------------------------


@dataclass
class Entry:
    pattern: str
    reason: str
    source: str  # "file:line"
    is_glob: bool = False
    matched: list[str] = field(default_factory=list)

    @property
    def module(self) -> str:
        return self.pattern.split(".", 1)[0]

    def matches(self, test_id: str) -> bool:
        if self.is_glob:
            return fnmatch.fnmatchcase(test_id, self.pattern)
        return test_id == self.pattern


def load_entries(path: Path) -> list[Entry]:
    entries: list[Entry] = []
    if not path.exists():
        return entries
    seen: dict[str, str] = {}
    for lineno, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        where = f"{path.name}:{lineno}"
        pattern, sep, reason = line.partition("#")
        pattern, reason = pattern.strip(), reason.strip()
        if not sep or not reason:
            raise SystemExit(f"error: {where}: entry {pattern!r} has no '# reason'")
        if " " in pattern:
            raise SystemExit(f"error: {where}: malformed test id {pattern!r}")
        if pattern in seen:
            raise SystemExit(f"error: {where}: duplicate entry (first at {seen[pattern]})")
        seen[pattern] = where
        is_glob = any(c in pattern for c in "*?[")
        entries.append(Entry(pattern, reason, where, is_glob))
    return entries


def find_entry(entries: list[Entry], test_id: str) -> Entry | None:
    # An exact entry wins over a glob.
    for e in entries:
        if not e.is_glob and e.matches(test_id):
            return e
    for e in entries:
        if e.is_glob and e.matches(test_id):
            return e
    return None


# ---------------------------------------------------------------------------
# Child: run one module
# ---------------------------------------------------------------------------


class Target:
    def __init__(self, name: str) -> None:
        self.name = name
        import asyncio

        if name == "ferroloop":
            import ferroloop
            import ferroloop._ferroloop as native

            self.factory = ferroloop.new_event_loop
            self.policy_cls = ferroloop.EventLoopPolicy
            self.loops_created = native.loops_created
            self.live_handles = getattr(native, "live_handles", lambda: None)
        elif name == "asyncio":
            base = asyncio.SelectorEventLoop

            class CountingLoop(base):  # type: ignore[valid-type, misc]
                created = 0

                def __init__(self, *args, **kwargs):
                    CountingLoop.created += 1
                    super().__init__(*args, **kwargs)

            class CountingPolicy(asyncio.DefaultEventLoopPolicy):
                _loop_factory = CountingLoop

            self.factory = CountingLoop
            self.policy_cls = CountingPolicy
            self.loops_created = lambda: CountingLoop.created
            self.live_handles = lambda: None
        else:
            raise SystemExit(f"unknown target {name!r}")

    def redirect_policy(self) -> None:
        import asyncio
        import asyncio.events
        import asyncio.unix_events

        # events._init_event_loop_policy() does `from . import DefaultEventLoopPolicy`,
        # so the attribute of the asyncio package is what set_event_loop_policy(None)
        # falls back to.
        asyncio.DefaultEventLoopPolicy = self.policy_cls
        asyncio.events.DefaultEventLoopPolicy = self.policy_cls
        asyncio.unix_events.DefaultEventLoopPolicy = self.policy_cls
        asyncio.set_event_loop_policy(self.policy_cls())


def patch_test_utils() -> None:
    """test_utils.TestCase.close_loop reads ``loop._default_executor`` (a private
    attribute of BaseEventLoop).  For a loop without it, do the same cleanup through the
    public API instead; loops that have the attribute keep the original code."""
    import asyncio

    from test import support
    from test.test_asyncio import utils as test_utils

    original = test_utils.TestCase.close_loop

    def close_loop(loop):
        if hasattr(loop, "_default_executor"):
            return original(loop)
        if not loop.is_closed():
            loop.run_until_complete(loop.shutdown_default_executor())
        loop.close()
        policy = support.maybe_get_event_loop_policy()
        if policy is not None:
            try:
                watcher = policy.get_child_watcher()
            except NotImplementedError:
                return
            if isinstance(watcher, asyncio.ThreadedChildWatcher):
                for thread in list(watcher._threads.values()):
                    thread.join(timeout=support.SHORT_TIMEOUT)
                    if thread.is_alive():
                        raise RuntimeError(f"thread {thread} still alive: subprocess still running")

    test_utils.TestCase.close_loop = staticmethod(close_loop)


def _own(mod, cls):
    """Make a class defined here look like it belongs to the test module."""
    cls.__module__ = mod.__name__
    cls.__qualname__ = cls.__name__
    setattr(mod, cls.__name__, cls)
    return cls


def replace_loop_classes(names, new_name, method, primary=None):
    """Drop the module's classes `names` (one per stdlib loop flavour) and add `new_name`,
    a subclass of the first existing of `primary` (default: `names`) whose `method`
    returns a loop of the target."""

    def adapt(mod, target):
        bases = [getattr(mod, n) for n in (primary or names) if hasattr(mod, n)]
        if not bases:
            raise RuntimeError(f"{mod.__name__}: none of {names} found")
        base = bases[0]

        def make_loop(self):
            return target.factory()

        cls = type(new_name, (base,), {method: make_loop})
        for n in names:
            if hasattr(mod, n):
                delattr(mod, n)
        _own(mod, cls)

    return adapt


def adapt_test_events(mod, target):

    from test.test_asyncio import utils as test_utils

    for n in (
        "KqueueEventLoopTests",
        "EPollEventLoopTests",
        "PollEventLoopTests",
        "SelectEventLoopTests",
        "ProactorEventLoopTests",
    ):
        if hasattr(mod, n):
            delattr(mod, n)

    # The same bases as CPython's own Unix classes (SelectEventLoopTests & co.).
    class FerroloopEventLoopTests(
        mod.UnixEventLoopTestsMixin, mod.SubprocessTestsMixin, test_utils.TestCase
    ):
        def create_event_loop(self):
            return target.factory()

    _own(mod, FerroloopEventLoopTests)


def adapt_test_unix_events(mod, target):
    from test.test_asyncio import utils as test_utils

    base = mod.SelectorEventLoopUnixSocketTests

    class FerroloopUnixSocketTests(base):
        def setUp(self):
            test_utils.TestCase.setUp(self)
            self.loop = target.factory()
            self.set_event_loop(self.loop)

    del mod.SelectorEventLoopUnixSocketTests
    _own(mod, FerroloopUnixSocketTests)


def adapt_test_pep492(mod, target):
    # BaseTest uses asyncio.BaseEventLoop() with a mocked selector as a null loop.
    from test.test_asyncio import utils as test_utils

    def setUp(self):
        test_utils.TestCase.setUp(self)
        self.loop = target.factory()
        self.set_event_loop(self.loop)

    mod.BaseTest.setUp = setUp


def adapt_test_runners(mod, target):
    # BaseTest.new_loop builds asyncio.BaseEventLoop() with a mocked selector and records
    # that shutdown_asyncgens() ran; keep the recording, use a real loop of the target.
    def new_loop(self):
        loop = target.factory()
        loop.shutdown_ag_run = False
        real = loop.shutdown_asyncgens

        async def shutdown_asyncgens():
            loop.shutdown_ag_run = True
            await real()

        loop.shutdown_asyncgens = shutdown_asyncgens
        return loop

    mod.BaseTest.new_loop = new_loop


def adapt_test_futures(mod, target):
    # The future tests take a plain loop from new_test_loop() (TestLoop, stdlib); when
    # no time generator is given nothing depends on virtual time, so use a target loop.
    from test.test_asyncio import utils as test_utils

    def plain_loop(self, gen=None):
        if gen is not None:
            return test_utils.TestCase.new_test_loop(self, gen)
        loop = target.factory()
        self.set_event_loop(loop)
        return loop

    for name in (
        "DuckTests",
        "BaseFutureTests",
        "BaseFutureDoneCallbackTests",
        "BaseFutureInheritanceTests",
    ):
        getattr(mod, name).new_test_loop = plain_loop


ADAPTERS = {
    "test_events": adapt_test_events,
    "test_sock_lowlevel": replace_loop_classes(
        [
            "EPollEventLoopTests",
            "KqueueEventLoopTests",
            "PollEventLoopTests",
            "SelectEventLoopTests",
            "ProactorEventLoopTests",
        ],
        "FerroloopSockTests",
        "create_event_loop",
    ),
    "test_sendfile": replace_loop_classes(
        [
            "EPollEventLoopTests",
            "KqueueEventLoopTests",
            "PollEventLoopTests",
            "SelectEventLoopTests",
            "ProactorEventLoopTests",
        ],
        "FerroloopSendfileTests",
        "create_event_loop",
    ),
    "test_server": replace_loop_classes(
        ["SelectorStartServerTests", "ProactorStartServerTests"],
        "FerroloopStartServerTests",
        "new_loop",
    ),
    "test_buffered_proto": replace_loop_classes(
        ["BufferedProtocolSelectorTests", "BufferedProtocolProactorTests"],
        "BufferedProtocolFerroloopTests",
        "new_loop",
    ),
    "test_sslproto": replace_loop_classes(
        ["SelectorStartTLSTests", "ProactorStartTLSTests"],
        "FerroloopStartTLSTests",
        "new_loop",
    ),
    "test_unix_events": adapt_test_unix_events,
    "test_pep492": adapt_test_pep492,
    "test_runners": adapt_test_runners,
    "test_futures": adapt_test_futures,
}


def short_id(test_id: str) -> str:
    # "setUpClass (test.test_asyncio.test_x.Cls)" -> "test_x.Cls.setUpClass"
    if " (" in test_id and test_id.endswith(")"):
        what, _, where = test_id[:-1].partition(" (")
        test_id = f"{where}.{what}"
    if test_id.startswith(PREFIX):
        test_id = test_id[len(PREFIX) :]
    return test_id


def iter_tests(suite):
    import unittest

    for t in suite:
        if isinstance(t, unittest.TestSuite):
            yield from iter_tests(t)
        else:
            yield t


def child_main(args) -> int:
    import faulthandler
    import unittest

    out = open(args.out, "a", buffering=1)
    lock = threading.Lock()

    def emit(**ev):
        with lock:
            out.write(json.dumps(ev) + "\n")
            out.flush()

    faulthandler.enable()
    # Importing the package runs its checks (working sockets, concurrent.futures).
    import test.test_asyncio  # noqa: F401

    target = Target(args.target)
    target.redirect_policy()
    patch_test_utils()

    import importlib

    name = args.module[0]
    try:
        mod = importlib.import_module(PREFIX + name)
        adapter = ADAPTERS.get(name)
        if adapter is not None:
            adapter(mod, target)
        suite = unittest.defaultTestLoader.loadTestsFromModule(mod)
    except unittest.SkipTest as exc:
        emit(ev="result", id=f"{name}.<import>", outcome=SKIP, detail=str(exc), ferro=0)
        emit(ev="done", loops=target.loops_created(), live_handles=target.live_handles())
        return 0
    except BaseException:
        emit(
            ev="result",
            id=f"{name}.<import>",
            outcome=ERROR,
            detail=traceback.format_exc(),
            ferro=0,
        )
        emit(ev="done", loops=target.loops_created(), live_handles=target.live_handles())
        return 0

    skip = set()
    only = None
    if args.skip_file:
        skip = set(json.loads(Path(args.skip_file).read_text()))
    if args.only_file:
        only = set(json.loads(Path(args.only_file).read_text()))
    tests = []
    for t in iter_tests(suite):
        tid = short_id(t.id())
        if tid in skip or (only is not None and tid not in only):
            continue
        tests.append(t)

    hang_patterns = json.loads(Path(args.hang_file).read_text()) if args.hang_file else []

    def limit_for(tid: str) -> float:
        if any(fnmatch.fnmatchcase(tid, p) for p in hang_patterns):
            return min(args.hang_timeout, args.test_timeout)
        return args.test_timeout

    state = {"test": None, "since": 0.0, "limit": args.test_timeout}

    def watchdog():
        while True:
            time.sleep(1.0)
            with lock:
                current, since, limit = state["test"], state["since"], state["limit"]
            if current is not None and time.monotonic() - since > limit:
                msg = f"hung: no result after {limit:.0f} s (killed by watchdog)"
                emit(ev="result", id=current, outcome=ERROR, detail=msg, hang=True, ferro=0)
                sys.stderr.write(f"\n*** {current}: {msg}; thread stacks:\n")
                faulthandler.dump_traceback(file=sys.stderr, all_threads=True)
                sys.stderr.flush()
                os._exit(HANG_EXIT)

    threading.Thread(target=watchdog, daemon=True, name="conformance-watchdog").start()

    class Result(unittest.TestResult):
        def __init__(self):
            super().__init__()
            self._outcome: dict[str, tuple[str, str]] = {}
            self._loops_at_start = 0
            self._t0 = 0.0

        def _set(self, test, outcome, detail=""):
            tid = short_id(test.id())
            prev = self._outcome.get(tid)
            if prev is not None and prev[0] in BAD and outcome not in BAD:
                return
            if prev is not None and prev[0] in BAD and outcome in BAD:
                detail = prev[1] + "\n" + detail
            self._outcome[tid] = (outcome, detail)
            if tid != state["test"]:
                # Fixture errors (setUpClass, tearDownModule, ...) have no start/stop.
                emit(ev="result", id=tid, outcome=outcome, detail=detail, ferro=0)
                self._outcome.pop(tid, None)

        def startTest(self, test):
            super().startTest(test)
            tid = short_id(test.id())
            self._loops_at_start = target.loops_created()
            self._t0 = time.monotonic()
            with lock:
                state["test"], state["since"], state["limit"] = tid, self._t0, limit_for(tid)
            emit(ev="start", id=tid)

        def stopTest(self, test):
            super().stopTest(test)
            tid = short_id(test.id())
            outcome, detail = self._outcome.pop(tid, (PASS, ""))
            loops = target.loops_created()
            with lock:
                state["test"] = None
            emit(
                ev="result",
                id=tid,
                outcome=outcome,
                detail=detail,
                ferro=loops - self._loops_at_start,
                loops=loops,
                secs=round(time.monotonic() - self._t0, 3),
            )

        def addSuccess(self, test):
            super().addSuccess(test)
            self._set(test, PASS)

        def addError(self, test, err):
            super().addError(test, err)
            self._set(test, ERROR, self._exc_info_to_string(err, test))

        def addFailure(self, test, err):
            super().addFailure(test, err)
            self._set(test, FAIL, self._exc_info_to_string(err, test))

        def addSkip(self, test, reason):
            super().addSkip(test, reason)
            self._set(test, SKIP, reason)

        def addExpectedFailure(self, test, err):
            super().addExpectedFailure(test, err)
            self._set(test, XFAIL, self._exc_info_to_string(err, test))

        def addUnexpectedSuccess(self, test):
            super().addUnexpectedSuccess(test)
            self._set(test, XPASS, "unexpected success")

        def addSubTest(self, test, subtest, err):
            super().addSubTest(test, subtest, err)
            if err is not None:
                kind = FAIL if issubclass(err[0], test.failureException) else ERROR
                text = f"[subtest {subtest._subDescription()}]\n"
                self._set(test, kind, text + self._exc_info_to_string(err, test))

    result = Result()
    unittest.TestSuite(tests).run(result)
    import gc

    gc.collect()
    emit(ev="done", loops=target.loops_created(), live_handles=target.live_handles())
    out.close()
    sys.stdout.flush()
    sys.stderr.flush()
    # Every outcome is recorded; skip interpreter teardown (nothing left to report).
    os._exit(0)


# ---------------------------------------------------------------------------
# Parent
# ---------------------------------------------------------------------------


@dataclass
class TestOutcome:
    id: str
    outcome: str
    detail: str = ""
    ferro: int = 0
    hang: bool = False
    crash: bool = False
    flaky: bool = False
    secs: float = 0.0


@dataclass
class ModuleRun:
    name: str
    info: ModuleInfo
    tests: dict[str, TestOutcome] = field(default_factory=dict)
    loops: int = 0
    live_handles: int | None = None
    problem: str = ""  # module-level failure (timeout, crash outside a test, no loops)
    secs: float = 0.0
    attempts: int = 0
    log: str = ""
    complete: bool = False  # all tests ran (entries of this module can be checked)


def run_child(
    args, module: str, workdir: Path, tag: str, skip: set[str], only: set[str] | None, budget
):
    out = workdir / f"{module}.{tag}.jsonl"
    log = workdir / f"{module}.log"
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--child",
        "--target",
        args.target,
        "--module",
        module,
        "--out",
        str(out),
        "--test-timeout",
        str(args.test_timeout),
    ]
    if skip:
        f = workdir / f"{module}.{tag}.skip.json"
        f.write_text(json.dumps(sorted(skip)))
        cmd += ["--skip-file", str(f)]
    if args.hang_patterns:
        f = workdir / f"{module}.hang.json"
        f.write_text(json.dumps(args.hang_patterns))
        cmd += ["--hang-file", str(f), "--hang-timeout", str(args.hang_timeout)]
    if only is not None:
        f = workdir / f"{module}.{tag}.only.json"
        f.write_text(json.dumps(sorted(only)))
        cmd += ["--only-file", str(f)]
    env = dict(os.environ, PYTHONFAULTHANDLER="1", PYTHONDONTWRITEBYTECODE="1")
    with open(log, "a") as logf:
        logf.write(f"\n===== {' '.join(cmd)}\n")
        logf.flush()
        proc = subprocess.Popen(
            cmd,
            stdin=subprocess.DEVNULL,
            stdout=logf,
            stderr=subprocess.STDOUT,
            env=env,
            cwd=str(workdir),
            start_new_session=True,
        )
        timed_out = False
        try:
            rc = proc.wait(timeout=max(budget, 1.0))
        except subprocess.TimeoutExpired:
            timed_out = True
            try:
                os.killpg(proc.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            rc = proc.wait()
    events = []
    if out.exists():
        for line in out.read_text().splitlines():
            try:
                events.append(json.loads(line))
            except json.JSONDecodeError:
                pass  # a line cut by a kill
    return rc, timed_out, events


def run_module(args, name: str, info: ModuleInfo, workdir: Path) -> ModuleRun:
    run = ModuleRun(name, info, log=str(workdir / f"{name}.log"))
    t0 = time.monotonic()
    deadline = t0 + args.timeout
    skip: set[str] = set()
    while True:
        run.attempts += 1
        budget = deadline - time.monotonic()
        rc, timed_out, events = run_child(
            args, name, workdir, f"a{run.attempts}", skip, None, budget
        )
        current = None
        done = False
        attempt_loops = 0
        for ev in events:
            kind = ev.get("ev")
            if kind == "start":
                current = ev["id"]
            elif kind == "result":
                tid = ev["id"]
                if tid == current:
                    current = None
                run.tests[tid] = TestOutcome(
                    tid,
                    ev["outcome"],
                    ev.get("detail", ""),
                    ev.get("ferro", 0),
                    hang=bool(ev.get("hang")),
                    secs=ev.get("secs", 0.0),
                )
                attempt_loops = max(attempt_loops, ev.get("loops", 0))
                skip.add(tid)
            elif kind == "done":
                done = True
                attempt_loops = max(attempt_loops, ev.get("loops", 0))
                run.live_handles = ev.get("live_handles")
        run.loops += attempt_loops
        if done and not timed_out:
            run.complete = True
            break
        if timed_out:
            what = f"module timed out after {args.timeout:.0f} s"
            if current is not None:
                run.tests[current] = TestOutcome(current, ERROR, what + " in this test", hang=True)
            run.problem = what
            break
        hung = rc == HANG_EXIT
        if current is not None:
            # Crashed (or hung, see the watchdog) inside a test: blame it, resume after it.
            if rc < 0:
                how = f"crashed: killed by signal {signal.Signals(-rc).name}"
            else:
                how = f"crashed: child exited with status {rc}"
            run.tests[current] = TestOutcome(current, ERROR, how, crash=True)
            skip.add(current)
        elif not hung:
            run.problem = f"child died outside a test (exit status {rc}); see {run.log}"
            break
        if run.attempts >= args.max_restarts + 1:
            run.problem = f"gave up after {run.attempts} crashed/hung attempts"
            break
    run.secs = time.monotonic() - t0
    return run


def retry_failures(args, run: ModuleRun, ids: set[str], workdir: Path) -> None:
    """Run once more, in a fresh process, tests that failed and are not listed."""
    rc, timed_out, events = run_child(args, run.name, workdir, "retry", set(), ids, 120.0)
    for ev in events:
        if ev.get("ev") == "result" and ev["id"] in ids and ev["outcome"] == PASS:
            t = run.tests[ev["id"]]
            t.flaky = True
            t.detail = f"passed on retry; first run:\n{t.detail}"
            t.outcome = PASS


@dataclass
class Verdict:
    passed: int = 0
    failed: int = 0  # new failures + unexpected passes
    xfailed: int = 0
    na: int = 0
    skipped: int = 0
    on_loop: int = 0  # passed tests that created at least one target loop


def classify(runs, expected, not_applicable, use_lists, target_name):
    """Returns (verdicts per module, problems: list of (kind, text))."""
    verdicts: dict[str, Verdict] = {}
    problems: list[tuple[str, str, str]] = []  # (kind, id, text)
    for run in runs:
        v = verdicts.setdefault(run.name, Verdict())
        for tid in sorted(run.tests):
            t = run.tests[tid]
            if t.outcome == SKIP:
                v.skipped += 1
                if use_lists:
                    # A listed test skipped here is not stale (skips depend on the host).
                    for e in (find_entry(not_applicable, tid), find_entry(expected, tid)):
                        if e is not None:
                            e.matched += [tid, "!skip"]
                continue
            bad = t.outcome in BAD
            na = find_entry(not_applicable, tid) if use_lists else None
            xf = find_entry(expected, tid) if use_lists else None
            if na is not None and xf is not None:
                problems.append(("conflict", tid, f"in both lists ({na.source}, {xf.source})"))
                v.failed += 1
                continue
            entry = na or xf
            if entry is not None:
                entry.matched.append(tid)
            if na is not None:
                v.na += 1
                if not bad:
                    problems.append(
                        ("unexpected-pass", tid, f"listed not applicable ({na.source}) but passes")
                    )
                    v.failed += 1
                    entry.matched.append("!pass")
                else:
                    entry.matched.append("!fail")
                continue
            if xf is not None:
                if bad:
                    v.xfailed += 1
                    xf.matched.append("!fail")
                elif xf.is_glob:
                    xf.matched.append("!pass")
                    v.passed += 1
                    v.on_loop += t.ferro > 0
                else:
                    v.failed += 1
                    problems.append(
                        ("unexpected-pass", tid, f"listed in {xf.source} but passes now")
                    )
                continue
            if bad:
                v.failed += 1
                problems.append(("new-failure", tid, t.detail))
            else:
                v.passed += 1
                v.on_loop += t.ferro > 0
        if run.problem:
            problems.append(("module", run.name, run.problem))
        elif run.info.expect_loops and run.loops == 0:
            problems.append(
                ("module", run.name, f"created no {target_name} loop: redirection failed")
            )
    # Stale entries: exact ids that did not run, globs with no failing match.
    if use_lists:
        complete = {r.name for r in runs if r.complete}
        for entries in (expected, not_applicable):
            for e in entries:
                if e.module not in complete:
                    continue
                real = [m for m in e.matched if not m.startswith("!")]
                if not real:
                    problems.append(("stale", e.pattern, f"{e.source}: matches no test that ran"))
                elif e.is_glob and "!fail" not in e.matched and "!pass" in e.matched:
                    problems.append(("stale", e.pattern, f"{e.source}: every matching test passes"))
    return verdicts, problems


def first_lines(text: str, limit: int) -> str:
    lines = text.rstrip().splitlines()
    if len(lines) > limit:
        lines = lines[:3] + ["    ..."] + lines[-(limit - 4) :]
    return "\n".join("      " + ln for ln in lines)


def key_line(detail: str) -> str:
    lines = [ln for ln in detail.strip().splitlines() if ln.strip()]
    return lines[-1].strip() if lines else ""


def parent_main(args) -> int:
    started = time.monotonic()
    available = discover_modules()
    if not available:
        print(
            f"error: this interpreter ({sys.executable}) has no {PKG}; "
            "install CPython's test suite (e.g. Debian's libpython3.X-testsuite)",
            file=sys.stderr,
        )
        print("0 passed, 1 failed")
        return 2
    if args.target == "ferroloop":
        probe = subprocess.run(
            [sys.executable, "-c", "import ferroloop; ferroloop.new_event_loop().close()"],
            capture_output=True,
            text=True,
        )
        if probe.returncode != 0:
            print("error: cannot create a ferroloop loop:\n" + probe.stderr, file=sys.stderr)
            print("0 passed, 1 failed")
            return 2

    use_lists = args.target == "ferroloop" or args.apply_lists
    expected = load_entries(Path(args.expected_file))
    not_applicable = load_entries(Path(args.not_applicable_file))

    # Listed tests known to hang get a short watchdog limit instead of --test-timeout.
    args.hang_patterns = [e.pattern for e in expected if "[hang]" in e.reason] if use_lists else []

    wanted = args.module or available
    unknown = [m for m in wanted if m not in available]
    if unknown:
        print(f"error: no such module in {PKG}: {', '.join(unknown)}", file=sys.stderr)
        return 2
    excluded = [m for m in wanted if MODULES.get(m, ModuleInfo()).excluded]
    to_run = [m for m in wanted if m not in excluded]
    order = {m: i for i, m in enumerate(SLOW_FIRST)}
    to_run.sort(key=lambda m: (order.get(m, len(order)), m))

    workdir = Path(args.log_dir) if args.log_dir else Path(tempfile.mkdtemp(prefix="conformance-"))
    workdir.mkdir(parents=True, exist_ok=True)
    for stale in workdir.glob("*.jsonl"):
        stale.unlink()
    for stale in workdir.glob("*.log"):
        stale.unlink()

    print(
        f"conformance: {PKG} against {args.target} ({sys.executable}, "
        f"{len(to_run)} modules, {args.jobs} jobs, logs in {workdir})",
        flush=True,
    )
    runs: list[ModuleRun] = []
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futs = {
            pool.submit(run_module, args, m, MODULES.get(m, ModuleInfo()), workdir): m
            for m in to_run
        }
        for fut in concurrent.futures.as_completed(futs):
            run = fut.result()
            runs.append(run)
            if not args.no_retry:
                retry = {
                    tid
                    for tid, t in run.tests.items()
                    if t.outcome in BAD
                    and not t.hang
                    and not t.crash
                    and not (
                        use_lists and (find_entry(expected, tid) or find_entry(not_applicable, tid))
                    )
                }
                if 0 < len(retry) <= 20:
                    retry_failures(args, run, retry, workdir)
            bad = sum(t.outcome in BAD for t in run.tests.values())
            print(
                f"  {run.name:<22} {len(run.tests):5d} tests {bad:4d} not passing "
                f"{run.loops:6d} loops {run.secs:6.1f} s"
                + (f"  [{run.problem}]" if run.problem else ""),
                flush=True,
            )
    runs.sort(key=lambda r: r.name)
    verdicts, problems = classify(runs, expected, not_applicable, use_lists, args.target)

    # Details.
    flaky = [(r.name, t) for r in runs for t in r.tests.values() if t.flaky]
    for _name, t in flaky:
        print(f"\nFLAKY (failed, then passed on retry): {t.id}")
        if args.verbose:
            print(first_lines(t.detail, 60))
    by_id = {t.id: t for r in runs for t in r.tests.values()}
    for kind, tid, text in problems:
        print(f"\n{kind.upper()}: {tid}")
        print(first_lines(text, 200 if args.verbose else 25))
    if args.verbose and use_lists:
        for r in runs:
            for t in r.tests.values():
                entry = find_entry(expected, t.id)
                if entry is not None and t.outcome in BAD:
                    print(f"\nexpected failure: {t.id}  # {entry.reason}")
                    print(first_lines(t.detail, 12))

    if args.update_expected:
        print("\n--- expected_failures.txt: entries to add ---")
        for kind, tid, text in problems:
            if kind == "new-failure":
                t = by_id.get(tid)
                why = key_line(t.detail if t else text)[:90]
                print(f"{tid}  # TODO: {why}")
        print("--- entries to remove (expected_failures.txt / not_applicable.txt) ---")
        for kind, tid, text in problems:
            if kind in ("unexpected-pass", "stale"):
                print(f"{tid}  # {text}")

    # Summary table.
    print()
    head = (
        f"{'module':<22} {'passed':>6} {'failed':>6} {'xfail':>6} {'n/a':>5} "
        f"{'skip':>5} {'on-loop':>7} {'loops':>6}  status"
    )
    print(head)
    print("-" * len(head))
    tot = Verdict()
    module_failures = 0
    total_loops = 0
    for r in runs:
        v = verdicts[r.name]
        mod_problems = [p for p in problems if p[0] == "module" and p[1] == r.name]
        module_failures += len(mod_problems)
        status = "; ".join(p[2] for p in mod_problems) or ("ok" if v.failed == 0 else "FAILED")
        if r.info.note and not mod_problems:
            status += f" ({r.info.note})"
        print(
            f"{r.name:<22} {v.passed:6d} {v.failed:6d} {v.xfailed:6d} {v.na:5d} "
            f"{v.skipped:5d} {v.on_loop:7d} {r.loops:6d}  {status}"
        )
        for f_ in ("passed", "failed", "xfailed", "na", "skipped", "on_loop"):
            setattr(tot, f_, getattr(tot, f_) + getattr(v, f_))
        total_loops += r.loops
    print("-" * len(head))
    print(
        f"{'total':<22} {tot.passed:6d} {tot.failed:6d} {tot.xfailed:6d} {tot.na:5d} "
        f"{tot.skipped:5d} {tot.on_loop:7d} {total_loops:6d}"
    )
    for m in excluded:
        print(f"excluded: {m} ({MODULES[m].excluded})")
    stale = sum(1 for p in problems if p[0] == "stale")
    bugs = sum(1 for e in expected if e.reason.startswith("BUG:"))
    if use_lists:
        print(
            f"lists: {len(expected)} expected-failure entries ({bugs} BUG:), "
            f"{len(not_applicable)} not-applicable entries; {stale} stale"
        )
    else:
        print("lists: ignored for --target asyncio (see --apply-lists)")
    print(f"wall time {time.monotonic() - started:.0f} s; logs in {workdir}")
    failed = tot.failed + stale + module_failures
    if args.json:
        report = {
            "target": args.target,
            "passed": tot.passed,
            "failed": failed,
            "modules": {
                r.name: {
                    "loops_created": r.loops,
                    "live_handles": r.live_handles,
                    "problem": r.problem,
                    "seconds": round(r.secs, 1),
                    "tests": {
                        t.id: {"outcome": t.outcome, "flaky": t.flaky, "ferroloop_loops": t.ferro}
                        for t in sorted(r.tests.values(), key=lambda t: t.id)
                    },
                }
                for r in runs
            },
            "problems": [{"kind": k, "id": i, "detail": d} for k, i, d in problems],
        }
        Path(args.json).write_text(json.dumps(report, indent=1) + "\n")
    print(f"{tot.passed} passed, {failed} failed")
    return 1 if failed else 0


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--target", choices=("ferroloop", "asyncio"), default="ferroloop")
    p.add_argument("--module", action="append", help="run only this module (repeatable)")
    p.add_argument("--jobs", "-j", type=int, default=2, help="parallel modules (default 2)")
    p.add_argument("--timeout", type=float, default=300.0, help="seconds per module")
    p.add_argument("--test-timeout", type=float, default=60.0, help="seconds per test")
    p.add_argument(
        "--hang-timeout",
        type=float,
        default=10.0,
        help="seconds per test for expected failures marked [hang] (default 10)",
    )
    p.add_argument("--max-restarts", type=int, default=10, help="resumes after crash/hang")
    p.add_argument("--update-expected", action="store_true", help="print list changes")
    p.add_argument("--no-retry", action="store_true", help="do not rerun new failures once")
    p.add_argument("--expected-file", default=str(EXPECTED_FILE), help=argparse.SUPPRESS)
    p.add_argument(
        "--not-applicable-file", default=str(NOT_APPLICABLE_FILE), help=argparse.SUPPRESS
    )
    p.add_argument(
        "--apply-lists", action="store_true", help="apply the lists with --target asyncio too"
    )
    p.add_argument("--log-dir", help="where child logs go (default: a new temp dir)")
    p.add_argument("--json", help="also write per-test outcomes to this JSON file")
    p.add_argument("-v", "--verbose", action="store_true")
    # Internal: run one module in this process.
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    p.add_argument("--out", help=argparse.SUPPRESS)
    p.add_argument("--skip-file", help=argparse.SUPPRESS)
    p.add_argument("--only-file", help=argparse.SUPPRESS)
    p.add_argument("--hang-file", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.module:
        args.module = [m if m.startswith("test_") else f"test_{m}" for m in args.module]
    if args.child:
        return child_main(args) or 0
    args.jobs = max(1, args.jobs)
    return parent_main(args)


if __name__ == "__main__":
    sys.exit(main())
