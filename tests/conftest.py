"""Shared fixtures for the ferroloop behaviour tests.

Every loop-level test is written once and runs against both stdlib asyncio (the oracle) and
ferroloop.  The ``ferroloop`` parameter is skipped only when ``import ferroloop`` fails *and*
``FERROLOOP_ALLOW_MISSING=1`` is set; otherwise a missing ferroloop is a hard error.
"""

from __future__ import annotations

import asyncio
import faulthandler
import gc
import hashlib
import os
import random
import time

import pytest

try:
    import ferroloop as _ferroloop
except ImportError as exc:  # pragma: no cover - depends on machine state
    _ferroloop = None
    _FERROLOOP_IMPORT_ERROR: BaseException | None = exc
else:
    _FERROLOOP_IMPORT_ERROR = None

ALLOW_MISSING = os.environ.get("FERROLOOP_ALLOW_MISSING") == "1"
LOOP_KINDS = ["asyncio", "ferroloop"]
# Hard per-test watchdog: a hung event loop must not hang CI forever.
WATCHDOG_SECONDS = 60


def require_ferroloop():
    """Return the ferroloop module, or skip/fail according to FERROLOOP_ALLOW_MISSING."""
    if _ferroloop is None:
        if ALLOW_MISSING:
            pytest.skip(f"ferroloop not importable (allowed): {_FERROLOOP_IMPORT_ERROR!r}")
        pytest.fail(
            f"ferroloop is not importable: {_FERROLOOP_IMPORT_ERROR!r} "
            "(set FERROLOOP_ALLOW_MISSING=1 to skip the ferroloop cases)",
            pytrace=False,
        )
    return _ferroloop


def make_loop(kind: str) -> asyncio.AbstractEventLoop:
    if kind == "asyncio":
        return asyncio.SelectorEventLoop()
    if kind == "ferroloop":
        return require_ferroloop().new_event_loop()
    raise AssertionError(kind)


class HandlerRecorder:
    """A strict exception handler: records every call; unconsumed calls fail the test."""

    def __init__(self):
        self.calls: list[tuple[object, dict]] = []
        self._consumed = 0

    def __call__(self, loop, context):
        self.calls.append((loop, context))

    @property
    def pending(self) -> list[dict]:
        return [ctx for _, ctx in self.calls[self._consumed :]]

    def consume(self, n: int | None = None) -> list[dict]:
        """Return the not-yet-consumed contexts and mark them as expected.

        With ``n``, assert that exactly ``n`` unconsumed calls were recorded.
        """
        pending = self.pending
        if n is not None:
            assert len(pending) == n, f"expected {n} exception-handler call(s), got {pending!r}"
        self._consumed = len(self.calls)
        return pending


def _cancel_all_tasks(loop, recorder):
    tasks = [t for t in asyncio.all_tasks(loop) if not t.done()]
    if not tasks:
        return
    for t in tasks:
        t.cancel()
    loop.run_until_complete(asyncio.gather(*tasks, return_exceptions=True))
    for t in tasks:
        if t.cancelled():
            continue
        if t.exception() is not None:
            recorder(
                loop,
                {
                    "message": "unhandled exception in a task left pending by the test",
                    "exception": t.exception(),
                    "task": t,
                },
            )


def finalize_loop(loop, recorder):
    """Cancel leftovers like asyncio.run() does, then close the loop and check it is closed."""
    try:
        if not loop.is_closed():
            assert not loop.is_running(), "loop still running at teardown"
            try:
                _cancel_all_tasks(loop, recorder)
                loop.run_until_complete(loop.shutdown_asyncgens())
                loop.run_until_complete(loop.shutdown_default_executor())
            finally:
                loop.close()
    finally:
        asyncio.set_event_loop(None)
    assert loop.is_closed()
    # Objects that die now (e.g. a pending task) report through the exception handler.
    gc.collect()


def strict_loop(kind: str):
    loop = make_loop(kind)
    recorder = HandlerRecorder()
    loop.set_exception_handler(recorder)
    return loop, recorder


def _check_recorder(recorder):
    pending = recorder.pending
    if pending:
        pytest.fail(f"unexpected exception-handler call(s): {pending!r}", pytrace=False)


@pytest.fixture(autouse=True)
def _watchdog():
    faulthandler.dump_traceback_later(WATCHDOG_SECONDS, exit=True)
    yield
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(params=LOOP_KINDS)
def loop_kind(request):
    if request.param == "ferroloop":
        require_ferroloop()
    return request.param


@pytest.fixture
def loop_factory(loop_kind):
    """Factory for *unmanaged* loops of the current kind (the test must close them)."""
    return lambda: make_loop(loop_kind)


@pytest.fixture
def ferroloop_mod():
    """The ferroloop module, for ferroloop-only tests."""
    return require_ferroloop()


@pytest.fixture
def _loop_and_recorder(loop_kind):
    loop, recorder = strict_loop(loop_kind)
    yield loop, recorder
    finalize_loop(loop, recorder)
    _check_recorder(recorder)


@pytest.fixture
def loop(_loop_and_recorder):
    """A fresh event loop (asyncio or ferroloop) with a strict exception handler."""
    return _loop_and_recorder[0]


@pytest.fixture
def exc_handler(_loop_and_recorder):
    """The recorder installed as the loop's exception handler; use ``.consume(n)``."""
    return _loop_and_recorder[1]


@pytest.fixture
def new_loop(loop_kind):
    """Factory for additional strict loops of the same kind; all are closed and checked."""
    made = []

    def factory():
        lp, rec = strict_loop(loop_kind)
        made.append((lp, rec))
        return lp

    yield factory
    for lp, rec in made:
        finalize_loop(lp, rec)
    for _, rec in made:
        _check_recorder(rec)


def run_coro(loop, coro, timeout: float = 10.0):
    """Run ``coro`` to completion on ``loop``, failing with TimeoutError after ``timeout``."""

    async def _guarded():
        async with asyncio.timeout(timeout):
            return await coro

    return loop.run_until_complete(_guarded())


@pytest.fixture
def run(loop):
    """``run(coro, timeout=10)`` runs a coroutine on the test loop with a timeout."""

    def _run(coro, timeout: float = 10.0):
        return run_coro(loop, coro, timeout)

    return _run


def run_iterations(loop, n: int) -> None:
    """Run exactly ``n`` loop iterations (each iteration runs one tick callback)."""
    assert n >= 1

    def tick(remaining):
        if remaining <= 1:
            loop.stop()
        else:
            loop.call_soon(tick, remaining - 1)

    loop.call_soon(tick, n)
    guard = loop.call_later(10, loop.stop)
    try:
        loop.run_forever()
    finally:
        guard.cancel()


@pytest.fixture
def spin(loop):
    """``spin(n)`` runs ``n`` iterations of the test loop."""
    return lambda n=1: run_iterations(loop, n)


# --------------------------------------------------------------------------- shared test helpers


def payload(n: int, seed: int = 0) -> bytes:
    """``n`` pseudo-random bytes, the same for the same seed."""
    return random.Random(seed).randbytes(n)


def digest(data) -> str:
    return hashlib.sha256(data).hexdigest()


async def until(predicate, what: str = "condition", timeout: float = 5.0) -> None:
    """Poll ``predicate`` while the loop runs; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.001)


async def iterations(n: int = 10) -> None:
    """Let the loop run ``n`` iterations (each polls for I/O)."""
    for _ in range(n):
        await asyncio.sleep(0)
